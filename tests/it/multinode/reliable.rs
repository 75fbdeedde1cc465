//! Reliable streams across nodes, on real Redis and PostgreSQL (one body
//! per backend, `::redis` and `::postgres`):
//!
//! - `positions_cross_nodes_through_the_adapter`: two in-process nodes
//!   sharing one broker; a stream marked by a channel on one node keeps
//!   history when the other broadcasts, and the position travels with the
//!   payload through the adapter (the positioned envelope) into the first
//!   node's frames.
//! - `a_client_resumes_on_the_other_node_and_misses_nothing`: two nodes as
//!   deployed (each with the backend's adapter and a broker of its own on
//!   that backend, served on a real port). A client of node A subscribes
//!   over `actioncable-v1-ext-json`, gets 1–2, its socket drops, 3–5 are
//!   published (on A and B in turn); it reconnects to node B with
//!   `?sid=<old sid>` (`restored:true`, the same `restored_ids`) and asks
//!   `history` from the last position it holds: it gets 3–5, then
//!   `confirm_history`, then live 6–7, then nothing. The whole sequence of
//!   bodies and positions is asserted: one epoch, offsets 1–7, each once,
//!   in order.
//! - `without_history_a_dropped_client_loses_what_was_published_meanwhile`:
//!   the same drop and resume on a plain stream (`stream_from`): the
//!   subscription is restored on B, but what was published while the
//!   socket was down (2–3) is gone; the next frame is live 4.

use std::sync::Arc;
use std::time::Duration;

use cable_core::broker::{Broker, MemoryBroker};
use cable_core::{authenticate_with, Cable, CableBuilder, Identifiers, Unauthorized};
use cable_postgres::{PostgresBroker, PostgresBrokerConfig, PostgresConfig, PostgresPubSub};
use cable_redis::{RedisBroker, RedisBrokerConfig, RedisConfig, RedisPubSub};
use cable_test::channels::Feed;
use cable_test::{Request, TestCable, TestServer, EXT_CLIENT_PROTOCOLS};
use serde_json::{json, Value};

use super::support::*;

fn node(shared: &Shared, broker: Arc<dyn Broker>) -> Cable {
    let builder = Cable::builder()
        .channel("NewsChannel", Feed::default)
        .shared_broker(broker);
    with_adapter(builder, shared.kind, &shared.url, &shared.prefix).build()
}

/// `builder` with the backend's pub/sub adapter under `prefix`.
fn with_adapter(builder: CableBuilder, kind: Kind, url: &str, prefix: &str) -> CableBuilder {
    match kind {
        Kind::Redis => {
            let config = RedisConfig::new(url).channel_prefix(prefix);
            builder
                .try_pubsub(move |d| RedisPubSub::new(config, d))
                .unwrap()
        }
        Kind::Postgres => {
            let config = PostgresConfig::new(url).channel_prefix(prefix);
            builder
                .try_pubsub(move |d| PostgresPubSub::new(config, d))
                .unwrap()
        }
    }
}

both!(positions_cross_nodes_through_the_adapter);

async fn positions_cross_nodes_through_the_adapter(kind: Kind) {
    let Some(shared) = kind.shared().await else {
        return;
    };
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let a = TestCable::from_cable(node(&shared, broker.clone()));
    let b = node(&shared, broker.clone());
    let stream = format!("news_{}", shared.prefix);
    let conn = a.connect(Request::new().ext()).await.unwrap();
    let sub = conn
        .subscribe("NewsChannel", json!({ "stream": stream }))
        .await;
    sub.assert_confirmed();
    for n in 1..=2 {
        b.broadcast(&stream, &json!({ "n": n })).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame: Value = serde_json::from_str(&conn.next_text().await).unwrap();
        if frame.get("message").is_some() {
            got.push(frame);
        }
    }
    assert_eq!(got[0]["message"], json!({"n": 1}));
    assert_eq!(got[0]["stream_id"], stream.as_str());
    assert_eq!(got[0]["offset"], 1);
    assert_eq!(got[1]["offset"], 2);
    assert_eq!(got[0]["epoch"], got[1]["epoch"]);
    assert_eq!(b.stats().history_appends, 2);
    // What node A's clients can ask for later is what B published.
    let h = broker.history_since(&stream, 0).await.unwrap();
    assert_eq!(h.entries.len(), 2);
    assert_eq!(h.epoch, got[0]["epoch"].as_str().unwrap());
}

/// This backend's own broker, under this test's prefix: keys
/// `<prefix>:…` on Redis, schema `<prefix>` on PostgreSQL. Each node gets
/// one of its own, as separate processes would.
pub(super) fn backend_broker(kind: Kind, url: &str, prefix: &str) -> Arc<dyn Broker> {
    match kind {
        Kind::Redis => Arc::new(
            RedisBroker::new(RedisBrokerConfig::new(url).key_prefix(format!("{prefix}:"))).unwrap(),
        ),
        Kind::Postgres => {
            Arc::new(PostgresBroker::new(PostgresBrokerConfig::new(url).schema(prefix)).unwrap())
        }
    }
}

/// A node as a deployment runs it: the backend's pub/sub adapter and its
/// broker, `NewsChannel` and `PlainChannel`, users from `?user=`, served
/// on a free port.
pub(super) async fn served_node(kind: Kind, url: &str, prefix: &str) -> TestServer {
    let builder = Cable::builder()
        .channel("NewsChannel", Feed::default)
        .channel("PlainChannel", Feed::default)
        .authenticate(authenticate_with(|req| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .shared_broker(backend_broker(kind, url, prefix));
    TestServer::start(with_adapter(builder, kind, url, prefix)).await
}

/// An `@anycable/web` client on `server` at `path_and_query`: the
/// extended protocol, the welcome read and returned.
pub(super) async fn ext_client(server: &TestServer, path_and_query: &str) -> (Ws, Value) {
    let mut c = cable_test::Client::connect(
        &server.url(path_and_query),
        &[EXT_CLIENT_PROTOCOLS, ("Origin", server.origin())],
    )
    .await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-ext-json"));
    let welcome: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (c, welcome)
}

pub(super) type Ws = cable_test::Client;

/// The `NewsChannel` identifier for `stream`.
pub(super) fn news(stream: &str) -> String {
    json!({"channel": "NewsChannel", "stream": stream}).to_string()
}

/// A message frame as (`n` of its body, epoch, offset); panics on any
/// other frame.
pub(super) async fn positioned(c: &mut Ws) -> (u64, String, u64) {
    let text = c.recv().await;
    let f: Value = serde_json::from_str(&text).unwrap();
    let (Some(n), Some(epoch), Some(offset)) = (
        f["message"]["n"].as_u64(),
        f["epoch"].as_str(),
        f["offset"].as_u64(),
    ) else {
        panic!("{}: not a positioned message: {text}", c.name);
    };
    (n, epoch.to_owned(), offset)
}

/// Sends `history` for `identifier`'s `stream` from `(epoch, offset)`.
pub(super) async fn ask_history(
    c: &mut Ws,
    identifier: &str,
    stream: &str,
    epoch: &str,
    offset: u64,
) {
    c.send_json(json!({"command": "history", "identifier": identifier,
        "history": {"streams": {stream: {"epoch": epoch, "offset": offset}}}}))
        .await;
}

/// `{"type":"<kind>","identifier":…}`, as the server writes it.
pub(super) fn typed(kind: &str, identifier: &str) -> String {
    json!({"type": kind, "identifier": identifier}).to_string()
}

both!(
    a_client_resumes_on_the_other_node_and_misses_nothing,
    without_history_a_dropped_client_loses_what_was_published_meanwhile,
);

/// Publishes `{"n":n}` on `stream`, from node A for odd `n`, B for even.
async fn publish_alternately(
    a: &TestServer,
    b: &TestServer,
    stream: &str,
    ns: std::ops::RangeInclusive<u64>,
) {
    for n in ns {
        let node = if n % 2 == 1 { a } else { b };
        node.cable
            .broadcast(stream, &json!({ "n": n }))
            .await
            .unwrap();
    }
}

/// Two served nodes on `kind`'s shared backend, or None (skipped).
async fn two_nodes(kind: Kind) -> Option<(Shared, TestServer, TestServer)> {
    let shared = kind.shared().await?;
    let p = &shared.prefix;
    let (a, b) = tokio::join!(
        served_node(kind, &shared.url, p),
        served_node(kind, &shared.url, p)
    );
    Some((shared, a, b))
}

/// Ann on `node` over the extended protocol, subscribed to `id`, and her
/// session id.
async fn ann_subscribed(node: &TestServer, id: &str) -> (Ws, String) {
    let (mut c, welcome) = ext_client(node, "/cable?user=ann").await;
    let sid = welcome["sid"].as_str().unwrap().to_owned();
    c.subscribe(id).await;
    (c, sid)
}

async fn a_client_resumes_on_the_other_node_and_misses_nothing(kind: Kind) {
    let Some((shared, a, b)) = two_nodes(kind).await else {
        return;
    };
    let stream = format!("news_{}", shared.prefix);
    let id = news(&stream);
    let (mut c, sid) = ann_subscribed(&a, &id).await;
    let mut seen = Vec::new();
    publish_alternately(&a, &b, &stream, 1..=2).await;
    for _ in 1..=2 {
        seen.push(positioned(&mut c).await);
    }
    // The socket drops (no close handshake) and the stream goes on.
    drop(c);
    publish_alternately(&a, &b, &stream, 3..=5).await;

    let (mut back, welcome) = ext_client(&b, &format!("/cable?sid={sid}")).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_eq!(welcome["restored_ids"], json!([id]), "{welcome}");
    let (_, epoch, offset) = seen.last().cloned().unwrap();
    ask_history(&mut back, &id, &stream, &epoch, offset).await;
    for _ in 3..=5 {
        seen.push(positioned(&mut back).await);
    }
    back.expect(&typed("confirm_history", &id)).await;
    publish_alternately(&a, &b, &stream, 6..=7).await;
    for _ in 6..=7 {
        seen.push(positioned(&mut back).await);
    }
    back.expect_silence(Duration::from_millis(500)).await;

    let want: Vec<_> = (1..=7).map(|n| (n, epoch.clone(), n)).collect();
    assert_eq!(seen, want, "bodies and positions, in order, once each");
    drop_schema(&shared).await;
}

async fn without_history_a_dropped_client_loses_what_was_published_meanwhile(kind: Kind) {
    let Some((shared, a, b)) = two_nodes(kind).await else {
        return;
    };
    let stream = format!("plain_{}", shared.prefix);
    let id = json!({"channel": "PlainChannel", "stream": stream, "plain": true}).to_string();
    let (mut c, sid) = ann_subscribed(&a, &id).await;
    let plain = |n: u64| message(&id, &json!({ "n": n }).to_string());
    publish_alternately(&a, &b, &stream, 1..=1).await;
    c.expect(&plain(1)).await;
    drop(c);
    publish_alternately(&a, &b, &stream, 2..=3).await;

    // Resumed on B: the subscription is back, but 2 and 3 are gone.
    let (mut back, welcome) = ext_client(&b, &format!("/cable?sid={sid}")).await;
    assert_eq!(welcome["restored"], true, "{welcome}");
    back.perform(&id, json!({"action": "ping"})).await;
    back.expect(&message(&id, r#"{"pong":true}"#)).await;
    publish_alternately(&a, &b, &stream, 4..=4).await;
    back.expect(&plain(4)).await;
    back.expect_silence(Duration::from_millis(300)).await;
    drop_schema(&shared).await;
}

/// Removes a PostgreSQL test's broker schema (Redis keys expire).
pub(super) async fn drop_schema(shared: &Shared) {
    if shared.kind == Kind::Postgres {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", shared.prefix);
        shared.postgres().batch_execute(&sql).await.unwrap();
    }
}
