//! The Redis broadcast intakes against a real Redis: AnyCable's `redis`
//! (`PUBLISH __anycable__`) and `redisx` (`XADD __anycable__`). Each test
//! uses a channel or stream key of its own.

use std::time::Duration;

use cable_core::pubsub::MemoryPubSub;
use cable_core::Cable;
use cable_redis::{RedisIntake, RedisIntakeConfig};

use crate::support::*;

/// A chat node on the in-memory adapter (this process only).
fn memory_node() -> Cable {
    chat_node(MemoryPubSub::new, |_| ()).0
}

async fn until_intake_up(intake: &RedisIntake) {
    eventually("intake connected", || async { intake.is_connected() }).await;
}

/// Two chat nodes on one Redis, under a prefix of their own, each with the
/// intake `start` makes for it (given the key, the node and a consumer name)
/// connected: the prefix, the intakes' key (`<prefix>:__anycable__`), and
/// each node with its intake.
async fn two_nodes(
    url: &str,
    start: impl Fn(&str, &Cable, &str) -> RedisIntake,
) -> (String, String, (Cable, RedisIntake), (Cable, RedisIntake)) {
    let prefix = unique_prefix();
    let key = format!("{prefix}:__anycable__");
    let (a, _) = node(url, &prefix);
    let (b, _) = node(url, &prefix);
    let on_a = start(&key, &a, "node-a");
    let on_b = start(&key, &b, "node-b");
    until_intake_up(&on_a).await;
    until_intake_up(&on_b).await;
    (prefix, key, (a, on_a), (b, on_b))
}

async fn cmd(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(conn).await.expect(args[0])
}

fn int(v: redis::Value) -> i64 {
    match v {
        redis::Value::Int(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// Every node subscribed to the channel gets every message (AnyCable's
/// legacy broadcaster) and delivers it to its own clients: on nodes that
/// share the Redis pub/sub adapter too, each client gets it once. Meta,
/// batches and the disconnect command work, and what is no broadcast
/// message is dropped without harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_intake_applies_what_is_published_on_every_node() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let (prefix, channel, (a, on_a), (b, on_b)) = two_nodes(&url, |channel, cable, _| {
        let config = RedisIntakeConfig::new(&url).channel(channel);
        RedisIntake::pubsub(config, cable.broadcaster()).unwrap()
    })
    .await;
    eventually("both subscribed", || {
        let mut plain = plain.clone();
        let channel = channel.clone();
        async move { numsub(&mut plain, &channel).await == 2 }
    })
    .await;
    let (mut ann, id_a) = Client::in_lobby(&a, "ann").await;
    let (mut bob, id_b) = Client::in_lobby(&b, "bob").await;

    for junk in [
        "not json",
        r#"{"stream":"chat_lobby"}"#,
        r#"{"command":"x"}"#,
    ] {
        publish(&mut plain, &channel, junk).await;
    }
    publish(
        &mut plain,
        &channel,
        r#"{"stream":"chat_lobby","data":"{\"n\":1}","meta":{"broadcast_type":"x","transient":true}}"#,
    )
    .await;
    publish(
        &mut plain,
        &channel,
        r#"[{"stream":"chat_lobby","data":"{\"n\":2}"},{"stream":"elsewhere","data":"0"}]"#,
    )
    .await;
    for (c, id) in [(&mut ann, &id_a), (&mut bob, &id_b)] {
        c.expect_message(id, r#"{"n":1}"#).await;
        c.expect_message(id, r#"{"n":2}"#).await;
    }
    eventually("5 handled on each node", || async {
        on_a.handled() == 5 && on_b.handled() == 5
    })
    .await;
    // Once per client, not once per node.
    assert!(ann.quiet_for(Duration::from_millis(300)).await);
    assert!(bob.quiet_for(Duration::from_millis(50)).await);
    eventually("ann's internal channel subscribed", || {
        let mut plain = plain.clone();
        let internal = format!("{prefix}:action_cable/ann");
        async move { numsub(&mut plain, &internal).await == 1 }
    })
    .await;

    publish(
        &mut plain,
        &channel,
        r#"{"command":"disconnect","payload":{"identifier":"{\"current_user\":\"ann\"}","reconnect":true}}"#,
    )
    .await;
    assert!(
        ann.next_text().await.contains(r#""type":"disconnect""#),
        "ann is disconnected"
    );
    assert!(bob.quiet_for(Duration::from_millis(200)).await);
}

/// Two nodes in one consumer group, sharing the Redis pub/sub adapter: one
/// XADD is handled by one node only, acknowledged and deleted, and reaches
/// each subscriber on both nodes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisx_intake_handles_each_entry_once_across_nodes() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let (prefix, stream, (a, on_a), (b, on_b)) = two_nodes(&url, |stream, cable, consumer| {
        let config = RedisIntakeConfig::new(&url)
            .channel(stream)
            .consumer(consumer)
            .block(Duration::from_millis(500));
        RedisIntake::streams(config, cable.broadcaster()).unwrap()
    })
    .await;
    let (mut ann, id_a) = Client::in_lobby(&a, "ann").await;
    let (mut bob, id_b) = Client::in_lobby(&b, "bob").await;
    eventually("the lobby subscribed on both nodes", || {
        let mut plain = plain.clone();
        let channel = format!("{prefix}:chat_lobby");
        async move { numsub(&mut plain, &channel).await == 2 }
    })
    .await;

    // Not broadcast messages: dropped, and acknowledged all the same.
    cmd(&mut plain, &["XADD", &stream, "*", "payload", "not json"]).await;
    cmd(&mut plain, &["XADD", &stream, "*", "other", "field"]).await;
    for n in 1..=3 {
        let payload = format!(r#"{{"stream":"chat_lobby","data":"{{\"n\":{n}}}"}}"#);
        cmd(&mut plain, &["XADD", &stream, "*", "payload", &payload]).await;
    }
    // Entries handled by different nodes may arrive in either order.
    for (c, id) in [(&mut ann, &id_a), (&mut bob, &id_b)] {
        let mut got = Vec::new();
        for _ in 1..=3 {
            got.push(c.next_text().await);
        }
        got.sort();
        let want: Vec<String> = (1..=3)
            .map(|n| message_frame(id, &format!(r#"{{"n":{n}}}"#)))
            .collect();
        assert_eq!(got, want);
    }
    // Once per subscriber, not once per node.
    assert!(ann.quiet_for(Duration::from_millis(700)).await);
    assert!(bob.quiet_for(Duration::from_millis(100)).await);
    eventually("4 entries handled in all (one without payload)", || async {
        on_a.handled() + on_b.handled() == 4
    })
    .await;
    eventually("every entry acknowledged and deleted", || {
        let mut plain = plain.clone();
        let stream = stream.clone();
        async move {
            let len = int(cmd(&mut plain, &["XLEN", &stream]).await);
            let pending = match cmd(&mut plain, &["XPENDING", &stream, "bx"]).await {
                redis::Value::Array(v) => v.into_iter().next().map(int),
                _ => None,
            };
            len == 0 && pending == Some(0)
        }
    })
    .await;
    cmd(&mut plain, &["DEL", &stream]).await;
}

/// An entry a consumer took and never acknowledged (it died) is claimed
/// by a live node once idle for the block time, and handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisx_intake_claims_what_a_dead_consumer_left_pending() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let stream = format!("{}:__anycable__", unique_prefix());
    cmd(
        &mut plain,
        &["XGROUP", "CREATE", &stream, "bx", "$", "MKSTREAM"],
    )
    .await;
    let payload = r#"{"stream":"chat_lobby","data":"{\"left\":\"pending\"}"}"#;
    cmd(&mut plain, &["XADD", &stream, "*", "payload", payload]).await;
    // The dead consumer reads it and is gone.
    let taken = cmd(
        &mut plain,
        &["XREADGROUP", "GROUP", "bx", "dead", "STREAMS", &stream, ">"],
    )
    .await;
    assert!(
        matches!(taken, redis::Value::Array(ref v) if !v.is_empty()),
        "{taken:?}"
    );
    let cable = memory_node();
    let (mut ann, id) = Client::in_lobby(&cable, "ann").await;
    let config = RedisIntakeConfig::new(&url)
        .channel(&stream)
        .block(Duration::from_millis(300));
    let intake = RedisIntake::streams(config, cable.broadcaster()).unwrap();
    ann.expect_message(&id, r#"{"left":"pending"}"#).await;
    eventually("acknowledged and deleted", || {
        let mut plain = plain.clone();
        let stream = stream.clone();
        async move { int(cmd(&mut plain, &["XLEN", &stream]).await) == 0 }
    })
    .await;
    assert_eq!(intake.handled(), 1);
    cmd(&mut plain, &["DEL", &stream]).await;
}
