//! Reliable streams and AnyCable's extended protocol (`actioncable-v1-ext-json`):
//! positions on streams with history, the `history` command, session ids and
//! resume, ping/pong and the pong timeout. The plain protocol is unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cable_core::broker::{Broker, BrokerError, History, HistoryPolicy, MemoryBroker, Position};
use cable_core::{
    async_trait, authenticate_with, Cable, CableBuilder, CableConfig, Channel, ChannelError,
    Context, Identifiers, Unauthorized,
};
use cable_test::channels::Feed;
use cable_test::{Connection, Request, TestCable};
use serde_json::{json, Value};

/// Counts of the connect hook's and `subscribed`'s calls.
#[derive(Clone, Default)]
struct Calls {
    connect: Arc<AtomicUsize>,
    subscribed: Arc<AtomicUsize>,
}

/// A cable with the kit's `Feed` and a connect hook that identifies `?user=`.
fn builder(calls: &Calls) -> CableBuilder {
    let subscribed = calls.subscribed.clone();
    let connect = calls.connect.clone();
    Cable::builder()
        .channel("Feed", move || Feed::counting(subscribed.clone()))
        .authenticate(authenticate_with(move |req| {
            let connect = connect.clone();
            async move {
                connect.fetch_add(1, Ordering::SeqCst);
                req.query("user")
                    .map(|u| Identifiers::new().with("current_user", u))
                    .ok_or_else(|| Unauthorized::because("no user"))
            }
        }))
}

fn cable() -> (TestCable, Calls) {
    let calls = Calls::default();
    (TestCable::new(builder(&calls)), calls)
}

/// `?user=<user>` over the extended protocol.
fn ext_request(user: &str) -> Request {
    Request::new().ext().query("user", user)
}

async fn ext(cable: &TestCable, user: &str) -> Connection {
    cable.connect(ext_request(user)).await.unwrap()
}

fn welcome(conn: &Connection) -> Value {
    serde_json::from_str(&conn.frames()[0]).unwrap()
}

fn sid(conn: &Connection) -> String {
    welcome(conn)["sid"].as_str().unwrap().to_owned()
}

fn id(room: &str) -> String {
    json!({"channel": "Feed", "stream": format!("feed_{room}")}).to_string()
}

/// The frames after the first `skip`, parsed.
fn frames_after(conn: &Connection, skip: usize) -> Vec<Value> {
    conn.frames()[skip..]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Broadcasts `n` messages `{"n":1}`, `{"n":2}`.. on `stream`.
async fn publish(cable: &TestCable, stream: &str, n: u64) {
    for i in 1..=n {
        cable
            .cable()
            .broadcast(stream, &json!({ "n": i }))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_plain_protocol_is_byte_for_byte_rails() {
    let (cable, _) = cable();
    let conn = cable
        .connect(Request::new().query("user", "u"))
        .await
        .unwrap();
    assert_eq!(conn.frames(), [r#"{"type":"welcome"}"#]);
    let plain = json!({"channel": "Feed", "stream": "feed_p1", "plain": true}).to_string();
    conn.subscribe_to(&plain).await.assert_confirmed();
    publish(&cable, "feed_p1", 1).await;
    conn.settle().await;
    let expected = format!(
        r#"{{"identifier":{},"message":{{"n":1}}}}"#,
        serde_json::to_string(&plain).unwrap()
    );
    assert_eq!(conn.frames().last().unwrap(), &expected);
    // The same stream to an extended-protocol client: the same bytes.
    let e = ext(&cable, "e").await;
    e.subscribe_to(&plain).await.assert_confirmed();
    publish(&cable, "feed_p1", 1).await;
    e.settle().await;
    assert_eq!(e.frames().last().unwrap(), &expected);
    assert_eq!(cable.cable().stats().history_appends, 0);
}

#[tokio::test]
async fn the_extended_welcome_carries_a_session_id_or_the_request_id() {
    let (cable, _) = cable();
    let a = ext(&cable, "a").await;
    let w = welcome(&a);
    assert_eq!(w.as_object().unwrap().len(), 2, "{w}");
    assert_eq!(w["type"], "welcome");
    assert_eq!(sid(&a).len(), 21);
    assert_ne!(sid(&a), sid(&ext(&cable, "b").await));
    let c = cable
        .connect(ext_request("c").header("X-Request-ID", "req-42"))
        .await
        .unwrap();
    assert_eq!(c.frames()[0], r#"{"type":"welcome","sid":"req-42"}"#);
}

#[tokio::test]
async fn broadcasts_on_streams_with_history_carry_their_position() {
    let (cable, _) = cable();
    // Positions go to both protocols, as AnyCable.
    for conn in [
        ext(&cable, "a").await,
        cable
            .connect(Request::new().query("user", "b"))
            .await
            .unwrap(),
    ] {
        conn.subscribe_to(&id("h1")).await.assert_confirmed();
        let before = conn.frames().len();
        let n = cable.cable().stats().history_appends;
        publish(&cable, "feed_h1", 2).await;
        conn.settle().await;
        let got = frames_after(&conn, before);
        assert_eq!(got.len(), 2);
        let epoch = got[0]["epoch"].as_str().unwrap().to_owned();
        assert_eq!(got[1]["epoch"], epoch.as_str());
        assert_eq!(got[0]["offset"], n + 1);
        assert_eq!(got[1]["offset"], n + 2);
        // AnyCable's key order, byte for byte.
        assert_eq!(
            conn.frames()[before + 1],
            format!(
                r#"{{"identifier":{},"message":{{"n":2}},"stream_id":"feed_h1","epoch":"{epoch}","offset":{}}}"#,
                serde_json::to_string(&id("h1")).unwrap(),
                n + 2
            )
        );
    }
    assert_eq!(cable.cable().stats().history_appends, 4);
    // What was broadcast is the message (the position travels beside it).
    cable.assert_broadcast_on("feed_h1", json!({"n": 2}));
}

/// A cable, and `a` (extended protocol) subscribed to `identifier` and
/// sent `n` messages published on `stream`; their epoch.
async fn published(identifier: &str, stream: &str, n: u64) -> (TestCable, Connection, String) {
    let (cable, _) = cable();
    let a = ext(&cable, "a").await;
    a.subscribe_to(identifier).await.assert_confirmed();
    publish(&cable, stream, n).await;
    a.settle().await;
    let epoch = last_epoch(&a);
    (cable, a, epoch)
}

/// The epoch of `stream`'s last message seen by `conn`.
fn last_epoch(conn: &Connection) -> String {
    frames_after(conn, 0)
        .iter()
        .rev()
        .find_map(|f| f["epoch"].as_str().map(str::to_owned))
        .expect("a positioned frame")
}

#[tokio::test]
async fn history_by_offset_and_by_time_replays_then_confirms() {
    let (cable, _a, epoch) = published(&id("r1"), "feed_r1", 3).await;

    let b = ext(&cable, "b").await;
    b.subscribe_to(&id("r1")).await.assert_confirmed();
    let before = b.frames().len();
    b.send(json!({"command": "history", "identifier": id("r1"),
        "history": {"streams": {"feed_r1": {"epoch": epoch, "offset": 1}}}}));
    b.settle().await;
    let got = frames_after(&b, before);
    let offsets: Vec<_> = got[..2].iter().map(|f| f["offset"].clone()).collect();
    assert_eq!(offsets, [json!(2), json!(3)]);
    assert_eq!(got[0]["message"], json!({"n": 2}));
    assert_eq!(got[0]["identifier"], id("r1"));
    assert_eq!(
        b.frames().last().unwrap(),
        &format!(
            r#"{{"type":"confirm_history","identifier":{}}}"#,
            serde_json::to_string(&id("r1")).unwrap()
        )
    );
    assert_eq!(got.len(), 3);

    // At the latest offset: nothing to replay, and a confirmation.
    let before = b.frames().len();
    b.send(json!({"command": "history", "identifier": id("r1"),
        "history": {"streams": {"feed_r1": {"epoch": epoch, "offset": 3}}}}));
    b.settle().await;
    let got = frames_after(&b, before);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["type"], "confirm_history");

    // By time: everything from a minute ago.
    let before = b.frames().len();
    b.send(json!({"command": "history", "identifier": id("r1"),
        "history": {"since": unix_now() - 60}}));
    b.settle().await;
    let got = frames_after(&b, before);
    let ns: Vec<_> = got.iter().map(|f| f["message"]["n"].clone()).collect();
    assert_eq!(ns, [json!(1), json!(2), json!(3), Value::Null]);
    assert_eq!(got[3]["type"], "confirm_history");
    // In the future: nothing, confirmed.
    let before = b.frames().len();
    b.send(json!({"command": "history", "identifier": id("r1"),
        "history": {"since": unix_now() + 3600}}));
    b.settle().await;
    assert_eq!(frames_after(&b, before).len(), 1);
    assert_eq!(cable.cable().stats().history_reads, 4);
    assert_eq!(cable.cable().stats().history_misses, 0);
}

fn reject_history(identifier: &str) -> String {
    format!(
        r#"{{"type":"reject_history","identifier":{}}}"#,
        serde_json::to_string(identifier).unwrap()
    )
}

/// Sends a history request for `stream` from `(epoch, offset)` and returns
/// the frames it brought.
async fn ask(
    conn: &Connection,
    identifier: &str,
    stream: &str,
    epoch: &str,
    offset: u64,
) -> Vec<String> {
    let before = conn.frames().len();
    conn.send(json!({"command": "history", "identifier": identifier,
        "history": {"streams": {stream: {"epoch": epoch, "offset": offset}}}}));
    conn.settle().await;
    conn.frames()[before..].to_vec()
}

#[tokio::test]
async fn history_that_cannot_be_served_is_rejected_alone() {
    let small = json!({"channel": "Feed", "stream": "feed_small", "limit": 2}).to_string();
    let (cable, a, epoch) = published(&small, "feed_small", 4).await;
    // Kept: 3 and 4. From 3 is servable (the client's last entry is still
    // kept), from 2 is not (2 was evicted).
    assert_eq!(ask(&a, &small, "feed_small", &epoch, 3).await.len(), 2);
    assert_eq!(
        ask(&a, &small, "feed_small", &epoch, 2).await,
        [reject_history(&small)]
    );
    // An epoch that is not the stream's.
    assert_eq!(
        ask(&a, &small, "feed_small", "bogus", 3).await,
        [reject_history(&small)]
    );
    // A stream without history.
    let plain = json!({"channel": "Feed", "stream": "feed_p", "plain": true}).to_string();
    a.subscribe_to(&plain).await.assert_confirmed();
    publish(&cable, "feed_p", 1).await;
    assert_eq!(
        ask(&a, &plain, "feed_p", &epoch, 0).await,
        [reject_history(&plain)]
    );
    // A subscription the client does not hold.
    assert_eq!(
        ask(&a, &id("nope"), "feed_nope", &epoch, 0).await,
        [reject_history(&id("nope"))]
    );
    // Neither since nor streams: an error, and no reply at all.
    let before = a.frames().len();
    a.send(json!({"command": "history", "identifier": small, "history": {}}));
    a.settle().await;
    assert_eq!(a.frames().len(), before);
    assert_eq!(cable.cable().stats().history_misses, 4);
    assert_eq!(cable.cable().stats().history_reads, 1);
}

#[tokio::test]
async fn without_a_broker_history_is_rejected_and_broadcasts_have_no_position() {
    let calls = Calls::default();
    let cable = TestCable::new(builder(&calls).no_broker());
    let a = ext(&cable, "a").await;
    a.subscribe_to(&id("n1")).await.assert_confirmed();
    publish(&cable, "feed_n1", 1).await;
    a.settle().await;
    let last: Value = serde_json::from_str(a.frames().last().unwrap()).unwrap();
    assert_eq!(last.as_object().unwrap().len(), 2, "{last}");
    let before = a.frames().len();
    a.send(json!({"command": "history", "identifier": id("n1"), "history": {"since": 1}}));
    a.settle().await;
    assert_eq!(a.frames()[before..], [reject_history(&id("n1"))]);
}

#[tokio::test]
async fn subscribe_with_history_confirms_then_replays_then_confirms_history() {
    let (cable, _a, epoch) = published(&id("s1"), "feed_s1", 2).await;

    let b = ext(&cable, "b").await;
    b.send(json!({"command": "subscribe", "identifier": id("s1"),
        "history": {"since": unix_now() - 60, "streams": {"feed_s1": {"epoch": epoch, "offset": 1}}}}));
    b.settle().await;
    let got = frames_after(&b, 1);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0]["type"], "confirm_subscription");
    assert_eq!(got[1]["offset"], 2);
    assert_eq!(got[1]["message"], json!({"n": 2}));
    assert_eq!(got[2]["type"], "confirm_history");
}

#[tokio::test]
async fn a_session_resumes_with_its_identifiers_and_streams_without_the_hooks() {
    let (cable, calls) = cable();
    let a = ext(&cable, "alice").await;
    a.subscribe_to(&id("x")).await.assert_confirmed();
    let plain = json!({"channel": "Feed", "stream": "feed_y", "plain": true}).to_string();
    let x = a.subscribe_to(&plain).await;
    x.assert_confirmed();
    // A stream started by an action is part of the session too.
    x.perform("follow", json!({"stream": "feed_extra"})).await;
    let old = sid(&a);
    a.disconnect().await;
    assert_eq!(calls.connect.load(Ordering::SeqCst), 1);
    assert_eq!(calls.subscribed.load(Ordering::SeqCst), 2);

    let b = cable
        .connect(Request::new().ext().query("sid", &old))
        .await
        .unwrap();
    let w = welcome(&b);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["restored"], true);
    let new = w["sid"].as_str().unwrap();
    assert_ne!(new, old);
    let mut restored: Vec<String> = w["restored_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    restored.sort();
    let mut expected = vec![id("x"), plain.clone()];
    expected.sort();
    assert_eq!(restored, expected);
    // Neither the connect hook nor `subscribed` ran again.
    assert_eq!(calls.connect.load(Ordering::SeqCst), 1);
    assert_eq!(calls.subscribed.load(Ordering::SeqCst), 2);
    assert_eq!(b.identified("current_user").as_deref(), Some("alice"));
    assert_eq!(cable.cable().stats().restored_sessions, 1);
    assert_eq!(cable.cable().stats().subscriptions, 2);

    // The streams are back on the hub: broadcasts reach the new socket
    // (once its history is asked for: live frames wait for that replay),
    // and the history stream still keeps positions.
    for identifier in [id("x"), plain.clone()] {
        b.send(json!({"command": "history", "identifier": identifier,
            "history": {"since": unix_now()}}));
    }
    b.settle().await;
    let before = b.frames().len();
    publish(&cable, "feed_x", 1).await;
    publish(&cable, "feed_y", 1).await;
    publish(&cable, "feed_extra", 1).await;
    b.settle().await;
    let got = frames_after(&b, before);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2]["identifier"], plain);
    assert_eq!(got[2]["stream_id"], "feed_extra");
    assert_eq!(got[0]["identifier"], id("x"));
    assert_eq!(got[0]["stream_id"], "feed_x");
    assert_eq!(got[1]["identifier"], plain);
    assert!(got[1].get("offset").is_none());
    // The restored subscriptions behave as before: unsubscribe works.
    b.send(json!({"command": "unsubscribe", "identifier": plain}));
    b.settle().await;
    assert_eq!(cable.cable().stats().subscriptions, 1);

    // The new sid holds the session as it is now; the header wins over
    // the query.
    let new = new.to_owned();
    b.disconnect().await;
    let c = cable
        .connect(
            Request::new()
                .ext()
                .query("sid", "bogus")
                .header("X-ANYCABLE-RESTORE-SID", &new),
        )
        .await
        .unwrap();
    assert_eq!(welcome(&c)["restored_ids"], json!([id("x")]));
    assert_eq!(calls.connect.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unknown_sid_or_the_plain_protocol_connects_normally() {
    let (cable, calls) = cable();
    let a = cable
        .connect(ext_request("a").query("sid", "unknown"))
        .await
        .unwrap();
    assert_eq!(calls.connect.load(Ordering::SeqCst), 1);
    assert!(welcome(&a).get("restored").is_none());
    a.subscribe_to(&id("z")).await.assert_confirmed();
    let old = sid(&a);
    a.disconnect().await;
    // Plain protocol: no restore, whatever the query says.
    let p = cable
        .connect(Request::new().query("user", "p").query("sid", &old))
        .await
        .unwrap();
    assert_eq!(p.frames(), [r#"{"type":"welcome"}"#]);
    assert_eq!(calls.connect.load(Ordering::SeqCst), 2);
    // And an unknown sid without credentials is refused by the hook.
    cable
        .assert_reject_connection(Request::new().ext().query("sid", "unknown"))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_session_is_restorable_for_the_session_ttl_only() {
    let calls = Calls::default();
    let mut config = CableConfig::default();
    config.session_ttl = Duration::from_secs(30);
    let cable = TestCable::new(builder(&calls).config(config));
    let a = ext(&cable, "a").await;
    let old = sid(&a);
    a.disconnect().await;
    tokio::time::advance(Duration::from_secs(31)).await;
    cable
        .assert_reject_connection(Request::new().ext().query("sid", &old))
        .await;
}

#[tokio::test]
async fn a_remotely_disconnected_session_cannot_be_resumed() {
    let (cable, _) = cable();
    let a = ext(&cable, "a").await;
    let old = sid(&a);
    cable.remote_disconnect_user("a", true).await;
    a.ended().await;
    cable
        .assert_reject_connection(Request::new().ext().query("sid", &old))
        .await;
}

#[tokio::test(start_paused = true)]
async fn ping_is_answered_and_silence_past_the_pong_timeout_ends_the_connection() {
    let calls = Calls::default();
    let mut config = CableConfig::default();
    config.pong_timeout = Some(Duration::from_secs(5));
    let cable = TestCable::new(builder(&calls).config(config));
    let a = ext(&cable, "a").await;
    let plain = cable
        .connect(Request::new().query("user", "p"))
        .await
        .unwrap();
    a.send(json!({"command": "ping"}));
    a.settle().await;
    assert_eq!(a.frames().last().unwrap(), r#"{"type":"pong"}"#);
    for _ in 0..3 {
        a.advance(Duration::from_secs(4)).await;
        a.send(json!({"command": "pong"}));
        a.settle().await;
        assert!(!a.is_closed());
    }
    a.advance(Duration::from_secs(6)).await;
    a.ended().await;
    assert_eq!(
        a.frames().last().unwrap(),
        r#"{"type":"disconnect","reason":"no_pong","reconnect":true}"#
    );
    // The plain protocol has no pong timeout.
    assert!(!plain.is_closed());
}

#[tokio::test]
async fn a_stream_marked_on_one_node_keeps_history_for_broadcasts_from_another() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let calls = Calls::default();
    let a = TestCable::new(builder(&calls).shared_broker(broker.clone()));
    let b = TestCable::new(builder(&calls).shared_broker(broker.clone()));
    let conn = ext(&a, "a").await;
    conn.subscribe_to(&id("m")).await.assert_confirmed();
    publish(&b, "feed_m", 1).await;
    assert_eq!(b.cable().stats().history_appends, 1);
    publish(&b, "feed_other", 1).await;
    assert_eq!(b.cable().stats().history_appends, 1);
    let h = broker.history_since("feed_m", 0).await.unwrap();
    assert_eq!(h.entries.len(), 1);
    assert_eq!(h.entries[0].payload, r#"{"n":1}"#);
}

#[tokio::test]
async fn history_for_every_stream_by_setting() {
    let calls = Calls::default();
    let mut config = CableConfig::default();
    config.history_all_streams = true;
    let cable = TestCable::new(builder(&calls).config(config));
    let a = ext(&cable, "a").await;
    let plain = json!({"channel": "Feed", "stream": "feed_g", "plain": true}).to_string();
    a.subscribe_to(&plain).await.assert_confirmed();
    publish(&cable, "feed_g", 1).await;
    a.settle().await;
    let last: Value = serde_json::from_str(a.frames().last().unwrap()).unwrap();
    assert_eq!(last["offset"], 1);
}

/// A broker whose appends fail; everything else is a memory broker's.
struct FailingAppends(MemoryBroker);

#[async_trait]
impl Broker for FailingAppends {
    async fn append(&self, _: &str, _: &str, _: HistoryPolicy) -> Result<Position, BrokerError> {
        Err(BrokerError::Unavailable("down".into()))
    }
    async fn history_from(&self, s: &str, e: &str, o: u64) -> Result<History, BrokerError> {
        self.0.history_from(s, e, o).await
    }
    async fn history_since(&self, s: &str, since: u64) -> Result<History, BrokerError> {
        self.0.history_since(s, since).await
    }
    async fn enable_history(&self, s: &str, p: HistoryPolicy) -> Result<(), BrokerError> {
        self.0.enable_history(s, p).await
    }
    async fn history_policy(&self, s: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        self.0.history_policy(s).await
    }
    async fn store_session(&self, sid: &str, st: &str, ttl: Duration) -> Result<(), BrokerError> {
        self.0.store_session(sid, st, ttl).await
    }
    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        self.0.fetch_session(sid).await
    }
    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        self.0.remove_session(sid).await
    }
    fn name(&self) -> &'static str {
        "failing"
    }
}

#[tokio::test]
async fn a_failed_append_is_delivered_live_without_a_position() {
    let calls = Calls::default();
    let cable = TestCable::new(builder(&calls).broker(FailingAppends(MemoryBroker::new())));
    let a = ext(&cable, "a").await;
    a.subscribe_to(&id("f")).await.assert_confirmed();
    publish(&cable, "feed_f", 1).await;
    a.settle().await;
    let last: Value = serde_json::from_str(a.frames().last().unwrap()).unwrap();
    assert_eq!(last, json!({"identifier": id("f"), "message": {"n": 1}}));
    assert_eq!(cable.cable().stats().history_append_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_renews_the_marks_of_streams_still_subscribed() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let calls = Calls::default();
    let cable = TestCable::new(builder(&calls).shared_broker(broker.clone()));
    let a = ext(&cable, "a").await;
    let short = json!({"channel": "Feed", "stream": "feed_k", "limit": 5}).to_string();
    a.subscribe_to(&short).await.assert_confirmed();
    let gone = json!({"channel": "Feed", "stream": "feed_g", "limit": 5}).to_string();
    let g = a.subscribe_to(&gone).await;
    g.assert_confirmed();
    g.unsubscribe().await;
    // The marks last the policy's ttl (300 s); beats past half of it renew
    // those with a subscriber and let the others run out.
    for _ in 0..4 {
        tokio::time::advance(Duration::from_secs(100)).await;
        cable_core::transport::beat(cable.cable());
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    assert!(broker.history_policy("feed_k").await.unwrap().is_some());
    assert!(broker.history_policy("feed_g").await.unwrap().is_none());
    publish(&cable, "feed_k", 1).await;
    publish(&cable, "feed_g", 1).await;
    assert_eq!(cable.cable().stats().history_appends, 1);
}

/// TTLs too long for the clock (from settings or channel code) mean "for
/// ever", never a panic: a history policy, the session TTL, the pong
/// timeout.
#[tokio::test(start_paused = true)]
async fn durations_past_the_clock_are_for_ever() {
    let calls = Calls::default();
    let mut config = CableConfig::default();
    config.pong_timeout = Some(Duration::MAX);
    config.session_ttl = Duration::MAX;
    config.history_policy = HistoryPolicy {
        limit: usize::MAX,
        ttl: Duration::MAX,
    };
    let cable = TestCable::new(builder(&calls).config(config));
    let a = ext(&cable, "a").await;
    let feed = a.subscribe("Feed", json!({"stream": "feed_forever"})).await;
    feed.assert_confirmed();
    publish(&cable, "feed_forever", 2).await;
    a.settle().await;
    a.advance(Duration::from_secs(3600)).await;
    assert!(!a.is_closed());
    let frames = frames_after(&a, 2);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[1]["offset"], 2);
}

/// Transmits `ctx.extended_protocol()` on subscribe.
struct Which;

#[async_trait]
impl Channel for Which {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        ctx.stream_from("which");
        ctx.transmit(&json!({ "extended": ctx.extended_protocol() }))
    }
}

#[tokio::test]
async fn a_channel_can_tell_an_extended_protocol_client_from_a_plain_one() {
    let cable = TestCable::new(builder(&Calls::default()).channel("Which", || Which));
    let plain = cable
        .connect(Request::new().query("user", "p"))
        .await
        .unwrap();
    let sub = plain.subscribe("Which", json!({})).await;
    sub.assert_transmitted(json!({"extended": false}));
    let e = ext(&cable, "e").await;
    let sub = e.subscribe("Which", json!({})).await;
    sub.assert_transmitted(json!({"extended": true}));
}

/// The `n`s and offsets of the broadcast frames among `frames`, in order.
fn ns(frames: &[Value]) -> Vec<(u64, u64)> {
    frames
        .iter()
        .filter(|f| f.get("message").is_some())
        .map(|f| {
            (
                f["message"]["n"].as_u64().unwrap(),
                f["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Resumes `old`'s session on a new connection (welcome only, so far).
async fn resume(cable: &TestCable, old: &str) -> Connection {
    let b = cable
        .connect(Request::new().ext().query("sid", old))
        .await
        .unwrap();
    assert_eq!(welcome(&b)["restored"], true);
    b
}

#[tokio::test]
async fn a_resumed_subscription_holds_live_frames_until_its_history_is_replayed() {
    let (cable, a, epoch) = published(&id("hold"), "feed_hold", 2).await;
    let old = sid(&a);
    a.disconnect().await;
    publish(&cable, "feed_hold", 1).await; // n=1, offset 3: missed

    let b = resume(&cable, &old).await;
    // Broadcast after the resume, before the client's history request:
    // held, not sent ahead of the replay.
    publish(&cable, "feed_hold", 2).await; // offsets 4 and 5
    b.settle().await;
    assert_eq!(frames_after(&b, 1), Vec::<Value>::new());
    let got = ask(&b, &id("hold"), "feed_hold", &epoch, 2).await;
    let got: Vec<Value> = got
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    // The replay (3, 4, 5), then nothing twice, then the confirmation.
    assert_eq!(ns(&got), [(1, 3), (1, 4), (2, 5)], "{got:?}");
    assert_eq!(got.last().unwrap()["type"], "confirm_history");
    // Live again, straight through.
    publish(&cable, "feed_hold", 1).await;
    b.settle().await;
    assert_eq!(ns(&frames_after(&b, 1 + got.len())), [(1, 6)]);
}

#[tokio::test(start_paused = true)]
async fn held_frames_go_out_by_themselves_when_no_history_is_asked_for() {
    let (cable, _) = cable();
    let a = ext(&cable, "a").await;
    a.subscribe_to(&id("quiet")).await.assert_confirmed();
    let old = sid(&a);
    a.disconnect().await;
    let b = resume(&cable, &old).await;
    publish(&cable, "feed_quiet", 2).await;
    b.settle().await;
    assert_eq!(frames_after(&b, 1).len(), 0, "held");
    b.advance(Duration::from_secs(3)).await;
    b.settle().await;
    assert_eq!(ns(&frames_after(&b, 1)), [(1, 1), (2, 2)]);
}

#[tokio::test]
async fn a_subscribe_with_history_sends_the_replay_and_live_frames_once_in_order() {
    let (cable, _a, epoch) = published(&id("sub"), "feed_sub", 3).await;
    // A new connection (no resume) subscribing from offset 1: the replay
    // (2, 3) and what is broadcast meanwhile (4), each once, in order.
    let b = ext(&cable, "b").await;
    b.send(json!({"command": "subscribe", "identifier": id("sub"),
        "history": {"streams": {"feed_sub": {"epoch": epoch, "offset": 1}}}}));
    publish(&cable, "feed_sub", 1).await;
    b.settle().await;
    let got = frames_after(&b, 1);
    assert_eq!(got[0]["type"], "confirm_subscription", "{got:?}");
    assert!(
        got.iter().any(|f| f["type"] == "confirm_history"),
        "{got:?}"
    );
    let offsets: Vec<u64> = ns(&got).iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, [2, 3, 4], "{got:?}");
}

/// Issue 18: the connection hook's typed data (the user record) reaches
/// channels, and a session resumed by `?sid=` (no hook) has it again, from
/// the JSON kept with the session.
#[tokio::test]
async fn connection_data_reaches_channels_and_survives_a_resume() {
    use cable_core::{ChannelResult, ConnectRequest};

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct User {
        id: u64,
        name: String,
    }

    #[derive(Default)]
    struct Profile;

    #[async_trait]
    impl Channel for Profile {
        async fn perform(
            &mut self,
            ctx: &mut Context<'_>,
            _action: &str,
            _data: Value,
        ) -> ChannelResult {
            let user = ctx.connection_data::<User>();
            let name = user.as_ref().map(|u| u.name.as_str());
            ctx.transmit(&json!({ "name": name, "id": user.as_ref().map(|u| u.id) }))?;
            // Another type than the hook's: none.
            assert!(ctx.connection_data::<String>().is_none());
            Ok(())
        }
    }

    let cable = TestCable::new(
        Cable::builder()
            .channel("Profile", Profile::default)
            .authenticate(authenticate_with(|req: ConnectRequest| async move {
                let name = req.query("user").unwrap_or("anon").to_owned();
                Ok(Identifiers::new()
                    .with("current_user", name.clone())
                    .with_data(User { id: 7, name }))
            })),
    );
    let a = ext(&cable, "ann").await;
    let sub = a.subscribe_to(r#"{"channel":"Profile"}"#).await;
    sub.perform("who", json!({})).await;
    assert_eq!(sub.transmissions(), [json!({"name": "ann", "id": 7})]);
    let old = sid(&a);
    a.disconnect().await;

    let b = cable.resume(&old).await;
    b.send(
        json!({"command": "message", "identifier": r#"{"channel":"Profile"}"#,
        "data": json!({"action": "who"}).to_string()}),
    );
    b.settle().await;
    let last: Value = serde_json::from_str(b.frames().last().expect("a frame")).unwrap();
    assert_eq!(last["message"], json!({"name": "ann", "id": 7}), "{last}");
}
