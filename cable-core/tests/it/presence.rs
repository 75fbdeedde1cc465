//! AnyCable's presence on the memory broker: `join`, `leave` and
//! `presence` commands, join/leave events to every subscriber of the
//! stream (first session of an id joins, last one leaving or running out
//! leaves), one id per session per stream, the presence TTL after a
//! disconnect, and the app's view (`Cable::presence`).

use std::time::Duration;

use cable_core::broker::PresenceRecord;
use cable_core::{
    async_trait, Cable, CableConfig, Channel, ChannelError, ChannelResult, Context, StreamOptions,
};
use cable_test::{Connection, Request, TestCable};
use serde_json::{json, Value};

/// Streams from `room_<room>` with presence.
struct Room;

#[async_trait]
impl Channel for Room {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        let stream = format!("room_{}", ctx.param_str("room").unwrap_or("lobby"));
        ctx.stream_from_with(stream, StreamOptions::new().presence());
        Ok(())
    }

    /// `who`: transmits the ids present, as the channel sees them.
    async fn perform(&mut self, ctx: &mut Context<'_>, _: &str, _: Value) -> ChannelResult {
        let info = ctx.presence().await.map_err(ChannelError::other)?;
        let ids: Vec<String> = info.records.into_iter().map(|r| r.id).collect();
        ctx.transmit(&json!({ "present": ids }))
    }
}

const ROOM: &str = r#"{"channel":"RoomChannel","room":"1"}"#;

fn cable_with(config: CableConfig) -> TestCable {
    TestCable::new(
        Cable::builder()
            .channel("RoomChannel", || Room)
            .config(config),
    )
}

fn cable() -> TestCable {
    cable_with(CableConfig::default())
}

async fn member(cable: &TestCable) -> Connection {
    let conn = cable.connect(Request::new().ext()).await.expect("welcomed");
    conn.subscribe_to(ROOM).await.assert_confirmed();
    conn
}

fn join(conn: &Connection, id: &str, info: Value) {
    conn.send(json!({"command": "join", "identifier": ROOM, "presence": {"id": id, "info": info}}));
}

/// The presence messages this connection got, in order.
fn presence(conn: &Connection) -> Vec<Value> {
    conn.frames()
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(f).ok())
        .filter(|f| f["type"] == "presence")
        .map(|f| {
            assert_eq!(f["identifier"], ROOM, "{f}");
            f["message"].clone()
        })
        .collect()
}

async fn info(conn: &Connection) -> Value {
    conn.send(json!({"command": "presence", "identifier": ROOM, "data": {}}));
    conn.settle().await;
    presence(conn)
        .into_iter()
        .rev()
        .find(|m| m["type"] == "info" || m["type"] == "error")
        .expect("an info reply")
}

#[tokio::test]
async fn joins_and_leaves_are_told_once_per_member_to_every_subscriber() {
    let cable = cable();
    let (ann, ann2, bob) = (
        member(&cable).await,
        member(&cable).await,
        member(&cable).await,
    );
    join(&ann, "1", json!({"name": "Ann"}));
    ann.settle().await;
    join(&ann2, "1", json!({"name": "Ann"}));
    ann2.settle().await;
    join(&bob, "2", json!({"name": "Bob"}));
    bob.settle().await;
    let ann_joined = json!({"type": "join", "id": "1", "info": {"name": "Ann"}});
    let bob_joined = json!({"type": "join", "id": "2", "info": {"name": "Bob"}});
    for c in [&ann, &ann2, &bob] {
        assert_eq!(presence(c), [ann_joined.clone(), bob_joined.clone()]);
    }
    assert_eq!(
        info(&bob).await,
        json!({"type": "info", "total": 2, "records": [
            {"id": "1", "info": {"name": "Ann"}}, {"id": "2", "info": {"name": "Bob"}}]})
    );
    bob.send(json!({"command": "message", "identifier": ROOM,
        "data": json!({"action": "who"}).to_string()}));
    bob.settle().await;
    assert!(
        bob.frames()
            .last()
            .unwrap()
            .contains(r#""message":{"present":["1","2"]}"#),
        "{:?}",
        bob.frames().last()
    );
    assert_eq!(
        cable.cable().presence("room_1").await.unwrap().records,
        [
            PresenceRecord {
                id: "1".into(),
                info: r#"{"name":"Ann"}"#.into()
            },
            PresenceRecord {
                id: "2".into(),
                info: r#"{"name":"Bob"}"#.into()
            },
        ]
    );

    // Ann's first session leaves: Ann is still there through the second.
    ann.send(json!({"command": "leave", "identifier": ROOM}));
    ann.settle().await;
    assert_eq!(presence(&bob).len(), 3, "only the info reply is new");
    // The last one unsubscribes: Ann has left.
    ann2.send(json!({"command": "unsubscribe", "identifier": ROOM}));
    ann2.settle().await;
    bob.settle().await;
    assert_eq!(
        presence(&bob).last(),
        Some(&json!({"type": "leave", "id": "1"}))
    );
    assert_eq!(info(&bob).await["total"], 1);
}

#[tokio::test]
async fn a_session_is_one_id_per_stream() {
    let cable = cable();
    let bob = member(&cable).await;
    join(&bob, "2", json!(null));
    join(&bob, "3", json!(null));
    join(&bob, "2", json!({"again": true}));
    bob.settle().await;
    let got = info(&bob).await;
    assert_eq!(got["total"], 1, "{got}");
    assert_eq!(got["records"][0]["id"], "2");
    assert!(!bob.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_session_that_went_away_leaves_after_the_presence_ttl() {
    let mut config = CableConfig::default();
    config.presence_ttl = Duration::from_secs(15);
    let cable = cable_with(config);
    let (watcher, bob) = (member(&cable).await, member(&cable).await);
    join(&bob, "2", json!(null));
    bob.settle().await;
    bob.disconnect().await;
    // Within the TTL: still present, and heartbeats do not end it early.
    for _ in 0..4 {
        watcher.advance(Duration::from_secs(3)).await;
        cable_core::transport::beat(cable.cable());
        watcher.settle().await;
    }
    assert_eq!(info(&watcher).await["total"], 1);
    watcher.advance(Duration::from_secs(4)).await;
    cable_core::transport::beat(cable.cable());
    // The sweep runs in the background: let it publish.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    watcher.settle().await;
    assert_eq!(
        presence(&watcher).last(),
        Some(&json!({"type": "leave", "id": "2"}))
    );
    assert_eq!(info(&watcher).await, json!({"type": "info", "total": 0}));
}

#[tokio::test(start_paused = true)]
async fn a_connected_session_is_renewed_and_a_resumed_one_never_leaves() {
    let cable = cable();
    let (watcher, bob) = (member(&cable).await, member(&cable).await);
    join(&bob, "2", json!(null));
    bob.settle().await;
    let sid = bob.sid().expect("ext sid");
    for _ in 0..10 {
        watcher.advance(Duration::from_secs(3)).await;
        cable_core::transport::beat(cable.cable());
    }
    assert_eq!(info(&watcher).await["total"], 1, "renewed while connected");
    bob.disconnect().await;
    let back = cable.resume(&sid).await;
    // @anycable/web joins again after a restore.
    join(&back, "2", json!(null));
    back.settle().await;
    for _ in 0..10 {
        watcher.advance(Duration::from_secs(3)).await;
        cable_core::transport::beat(cable.cable());
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    watcher.settle().await;
    let events: Vec<Value> = presence(&watcher)
        .into_iter()
        .filter(|m| m["type"] != "info")
        .collect();
    assert_eq!(
        events,
        [json!({"type": "join", "id": "2", "info": null})],
        "no leave, no second join"
    );
    assert_eq!(info(&watcher).await["total"], 1);
}

#[tokio::test]
async fn a_subscribe_carrying_presence_joins_after_the_confirmation() {
    let cable = cable();
    let watcher = member(&cable).await;
    let bob = cable.connect(Request::new().ext()).await.unwrap();
    bob.send(json!({"command": "subscribe", "identifier": ROOM,
        "presence": {"id": "2", "info": {"name": "Bob"}}}));
    bob.settle().await;
    let frames = bob.frames();
    assert!(frames[1].contains("confirm_subscription"), "{frames:?}");
    assert_eq!(
        presence(&bob),
        [json!({"type": "join", "id": "2", "info": {"name": "Bob"}})]
    );
    watcher.settle().await;
    assert_eq!(presence(&watcher).len(), 1);
}

#[tokio::test]
async fn without_presence_the_info_request_gets_an_error() {
    let cable = TestCable::new(Cable::builder().channel("RoomChannel", || Room).no_broker());
    let bob = member(&cable).await;
    join(&bob, "2", json!(null));
    assert_eq!(info(&bob).await, json!({"type": "error"}));
    assert!(cable.cable().presence("room_1").await.is_err());
}

/// Streams from `room_<room>` with presence, present as the `as` param.
struct Assigned;

#[async_trait]
impl Channel for Assigned {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        let who = ctx.param_str("as").unwrap_or("nobody").to_owned();
        ctx.stream_from_with("room_assigned", StreamOptions::new().presence());
        ctx.present_as(who.clone(), json!({ "name": who }));
        Ok(())
    }
}

#[tokio::test]
async fn who_the_channel_made_a_subscription_present_as_survives_a_resume() {
    let cable = TestCable::new(Cable::builder().channel("Assigned", || Assigned));
    let ident = json!({"channel": "Assigned", "as": "boss"}).to_string();
    let join_as_me = json!({"command": "join", "identifier": ident,
        "presence": {"id": "me", "info": {}}});
    let a = cable.connect(Request::new().ext()).await.expect("welcomed");
    a.subscribe_to(&ident).await.assert_confirmed();
    a.send(join_as_me.clone());
    a.settle().await;
    let ids = |c: &TestCable| {
        let cable = c.cable().clone();
        async move {
            let info = cable.presence("room_assigned").await.unwrap();
            info.records.into_iter().map(|r| r.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&cable).await, ["boss"]);
    let welcome: Value = serde_json::from_str(&a.frames()[0]).unwrap();
    let sid = welcome["sid"].as_str().unwrap().to_owned();
    a.disconnect().await;

    // Restored without `subscribed`: the channel's choice came back with it.
    let b = cable.resume(&sid).await;
    b.send(join_as_me);
    b.settle().await;
    assert_eq!(ids(&cable).await, ["boss"]);
    assert!(
        !b.frames().iter().any(|f| f.contains("mismatch")),
        "{:?}",
        b.frames()
    );
}
