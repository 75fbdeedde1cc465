//! AnyCable's whispers: the `whisper` command goes to the subscription's
//! whisper stream, reaches every other subscriber and never the sender,
//! and is never stored in history; `Broadcaster::broadcast_with` skips the
//! session it names.

use std::time::Duration;

use cable_core::broker::MemoryBroker;
use cable_core::{async_trait, Cable, Channel, ChannelError, Context, Publication, StreamOptions};
use cable_test::{Connection, Request, TestCable};
use serde_json::{json, Value};

/// Streams from `room_<room>`: with whispers unless `mute`, with history
/// when `history`.
struct Room;

#[async_trait]
impl Channel for Room {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let stream = format!("room_{}", ctx.param_str("room").unwrap_or("lobby"));
        let mut options = StreamOptions::new();
        if ctx.param("mute").is_none() {
            options = options.whisper();
        }
        if ctx.param("history").is_some() {
            options = options.history();
        }
        ctx.stream_from_with(stream, options);
        Ok(())
    }
}

fn cable() -> TestCable {
    TestCable::new(
        Cable::builder()
            .channel("RoomChannel", || Room)
            .broker(MemoryBroker::new()),
    )
}

async fn join(cable: &TestCable, request: Request, params: Value) -> (Connection, String) {
    let conn = cable.connect(request).await.expect("welcomed");
    let sub = conn.subscribe("RoomChannel", params).await;
    sub.assert_confirmed();
    let id = sub.identifier().to_owned();
    (conn, id)
}

fn whisper(conn: &Connection, identifier: &str, data: Value) {
    conn.send(json!({"command": "whisper", "identifier": identifier, "data": data}));
}

/// The frames after the welcome and the confirmation.
fn later_frames(conn: &Connection) -> Vec<Value> {
    conn.frames()
        .iter()
        .skip(2)
        .map(|f| serde_json::from_str(f).expect("JSON frame"))
        .collect()
}

#[tokio::test]
async fn a_whisper_reaches_the_others_and_not_the_sender_on_either_protocol() {
    let cable = cable();
    let params = json!({"room": "1"});
    for sender_request in [Request::new().ext(), Request::new()] {
        let (sender, id) = join(&cable, sender_request, params.clone()).await;
        let (other, _) = join(&cable, Request::new().ext(), params.clone()).await;
        let (plain, _) = join(&cable, Request::new(), params.clone()).await;
        whisper(&sender, &id, json!({"event": "typing", "name": "ann"}));
        sender.settle().await;
        let frame = json!({"identifier": id, "message": {"event": "typing", "name": "ann"}});
        assert_eq!(later_frames(&other), std::slice::from_ref(&frame));
        assert_eq!(later_frames(&plain), [frame]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(later_frames(&sender).is_empty(), "{:?}", sender.frames());
        for c in [sender, other, plain] {
            c.disconnect().await;
        }
    }
}

#[tokio::test]
async fn a_whisper_is_never_stored_and_carries_no_position() {
    let cable = cable();
    let params = json!({"room": "2", "history": true});
    let (sender, id) = join(&cable, Request::new().ext(), params.clone()).await;
    let (other, _) = join(&cable, Request::new().ext(), params.clone()).await;
    whisper(&sender, &id, json!({"event": "typing"}));
    sender.settle().await;
    cable
        .cable()
        .broadcast("room_2", &json!({"text": "hi"}))
        .await
        .unwrap();
    other.settle().await;
    let got = later_frames(&other);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0],
        json!({"identifier": id, "message": {"event": "typing"}})
    );
    assert_eq!(got[1]["message"], json!({"text": "hi"}));
    assert_eq!(got[1]["offset"], json!(1), "the whisper took no offset");
    // Asking for everything since the epoch began replays the broadcast only.
    let epoch = got[1]["epoch"].clone();
    let (late, _) = join(&cable, Request::new().ext(), params).await;
    late.send(json!({"command": "history", "identifier": id,
        "history": {"since": 1}}));
    late.settle().await;
    let replayed = later_frames(&late);
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    assert_eq!(replayed[0]["message"], json!({"text": "hi"}));
    assert_eq!(replayed[0]["epoch"], epoch);
    assert_eq!(replayed[1]["type"], json!("confirm_history"));
    assert_eq!(cable.cable().stats().history_appends, 1);
}

#[tokio::test]
async fn without_a_whisper_stream_or_subscription_a_whisper_is_dropped() {
    let cable = cable();
    let params = json!({"room": "3", "mute": true});
    let (sender, id) = join(&cable, Request::new().ext(), params.clone()).await;
    let (other, _) = join(&cable, Request::new().ext(), params).await;
    whisper(&sender, &id, json!({"event": "typing"}));
    whisper(&sender, r#"{"channel":"Nope"}"#, json!({"event": "typing"}));
    sender.settle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(later_frames(&other).is_empty());
    assert!(
        !sender.is_closed(),
        "a stray whisper does not end the connection"
    );
}

#[tokio::test]
async fn a_broadcast_excluding_a_session_skips_it_only() {
    let cable = cable();
    let params = json!({"room": "4"});
    let (skipped, id) = join(&cable, Request::new().ext(), params.clone()).await;
    let (other, _) = join(&cable, Request::new().ext(), params).await;
    let sid = skipped.sid().expect("an ext session has a sid");
    cable
        .cable()
        .broadcaster()
        .broadcast_with(
            "room_4",
            r#"{"text":"to others"}"#,
            &Publication::default().excluding(sid),
        )
        .await
        .unwrap();
    other.settle().await;
    assert_eq!(
        later_frames(&other),
        [json!({"identifier": id, "message": {"text": "to others"}})]
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(later_frames(&skipped).is_empty());
}

#[tokio::test]
async fn a_resumed_session_keeps_its_whisper_stream() {
    let cable = cable();
    let params = json!({"room": "5"});
    let (first, id) = join(&cable, Request::new().ext(), params.clone()).await;
    let sid = first.sid().unwrap();
    first.settle().await;
    first.disconnect().await;
    let resumed = cable.resume(&sid).await;
    let (other, _) = join(&cable, Request::new().ext(), params).await;
    whisper(&resumed, &id, json!({"event": "back"}));
    resumed.settle().await;
    assert_eq!(
        later_frames(&other),
        [json!({"identifier": id, "message": {"event": "back"}})]
    );
}
