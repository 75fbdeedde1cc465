//! Integration tests against a real redis-server: `REDIS_URL`, default
//! `redis://127.0.0.1:6379`. Each test uses its own channel prefix. Without a
//! reachable Redis the tests print `SKIPPED: …` and pass, unless `CI` is set.
//! The outage tests start their own redis-server on a free port.

mod broker;
mod conformance;
mod intake;
mod probe;
mod support;

use std::time::Duration;

use cable_core::PubSubError;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publish_from_rails_reaches_subscribers() {
    let Some((mut plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    let (mut client, id) = Client::in_lobby(&cable, "ann").await;

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")` sends.
    let hi = r#"{"user":"rails","body":"hi"}"#;
    publish(&mut plain, &format!("{prefix}:chat_lobby"), hi).await;
    client.expect_message(&id, hi).await;
    // A broadcast published without the prefix is another channel.
    publish(&mut plain, "chat_lobby", r#"{"user":"x"}"#).await;
    assert!(client.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_connections_are_named() {
    let Some((mut plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    // The publisher connects on first use.
    cable
        .broadcast("nobody_listens", &json!({}))
        .await
        .expect("broadcast");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut plain)
        .await
        .expect("CLIENT LIST");
    let ours: Vec<&str> = list
        .lines()
        .filter(|l| l.contains(&format!(" name={prefix}-node ")))
        .collect();
    assert_eq!(ours.len(), 2, "publisher and subscriber: {ours:#?}");
    assert_eq!(
        ours.iter().filter(|l| l.contains(" resp=3")).count(),
        1,
        "the subscriber speaks RESP3: {ours:#?}"
    );
}

/// An old server, simulated: HELLO renamed away, so the subscriber falls
/// back to RESP2.
const NO_HELLO: &[&str] = &["--rename-command", "HELLO", "\"\""];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart() {
    restart_scenario(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_over_resp2() {
    restart_scenario(NO_HELLO).await;
}

async fn restart_scenario(server_args: &[&str]) {
    let Some((mut redis, _, cable, status)) = own_node(own_redis(server_args).await, node) else {
        return;
    };
    until_connected(&status).await;
    delivery_survives_an_outage(
        &cable,
        1,
        async |up| redis.set_up(up).await,
        async || {},
        async || {},
    )
    .await;
    assert_eq!(cable.stats().adapter_reconnects, status.reconnects());
    assert!(status.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_after_five_seconds_of_outage_then_recovers() {
    let Some((mut redis, prefix, cable, _)) = own_node(own_redis(&[]).await, node) else {
        return;
    };
    let url = redis.url();
    let plain = async || try_plain(&url).await.expect("own redis is up");
    subscribe_fails_during_a_long_outage(
        &cable,
        async |up| redis.set_up(up).await,
        // The dropped subscription was unsubscribed, not re-subscribed.
        async || {
            assert_eq!(
                numsub(&mut plain().await, &format!("{prefix}:chat_lobby")).await,
                0
            )
        },
        async |stream, payload| {
            publish(&mut plain().await, &format!("{prefix}:{stream}"), payload).await
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_resp2_without_hello() {
    let Some((redis, prefix, a, status_a)) = own_node(own_redis(NO_HELLO).await, node) else {
        return;
    };
    let (b, status_b) = node(&redis.url(), &prefix);
    until_connected(&status_a).await;
    until_connected(&status_b).await;
    let mut plain = try_plain(&redis.url()).await.expect("own redis is up");

    let mut client = Client::connect(&b, "u1").await;
    let id = client.start_subscribe("lobby");
    client.expect_confirm(&id).await;
    assert_eq!(numsub(&mut plain, &format!("{prefix}:chat_lobby")).await, 1);
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut plain)
        .await
        .expect("CLIENT LIST");
    // Node B's subscriber (the only one with subscriptions): RESP2, unnamed.
    let subscribers: Vec<&str> = list.lines().filter(|l| !l.contains(" sub=0 ")).collect();
    assert_eq!(subscribers.len(), 1, "{subscribers:#?}");
    assert!(
        subscribers[0].contains(" resp=2") && subscribers[0].contains(" name= "),
        "{subscribers:#?}"
    );
    a.broadcast("chat_lobby", &json!({"via": "resp2"}))
        .await
        .expect("broadcast");
    client.expect_message(&id, r#"{"via":"resp2"}"#).await;
    client.leave().await;
    eventually("unsubscribed over RESP2", || {
        let mut plain = plain.clone();
        let channel = format!("{prefix}:chat_lobby");
        async move { numsub(&mut plain, &channel).await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_against_a_plain_server_fails_cleanly() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    let Some(tls_url) = url
        .strip_prefix("redis://")
        .map(|rest| format!("rediss://{rest}"))
    else {
        println!("SKIPPED: REDIS_URL is not redis://");
        return;
    };
    // TLS is set up (crypto provider and all) but the handshake fails: an
    // error value, never a panic or a hang.
    let (cable, status) = node(&tls_url, &unique_prefix());
    let started = tokio::time::Instant::now();
    let err = cable
        .broadcast("x", &json!({}))
        .await
        .expect_err("no TLS on a plain port");
    assert!(started.elapsed() <= Duration::from_millis(2500), "bounded");
    assert!(
        matches!(err, PubSubError::Unavailable(_) | PubSubError::Backend(_)),
        "{err:?}"
    );
    assert!(!status.is_connected());
}

/// A burst larger than the backlog's bound: what does not fit is dropped and
/// counted, every message is either delivered or counted, and delivery goes
/// on afterwards. On one thread, redis-rs reads a whole burst before the
/// subscriber task runs again, so a 4 KiB bound must overflow.
async fn burst_scenario(url: &str) {
    const BURST: u64 = 3000;
    let prefix = unique_prefix();
    let (cable, status) = node_with(
        cable_redis::RedisConfig::new(url)
            .channel_prefix(&prefix)
            .connection_name(format!("{prefix}-node"))
            .max_backlog_bytes(4096),
    );
    until_connected(&status).await;
    let (mut client, id) = Client::in_lobby(&cable, "u1").await;
    let mut plain = try_plain(url).await.expect("redis is up");
    let channel = format!("{prefix}:chat_lobby");
    let mut pipe = redis::pipe();
    for n in 0..BURST {
        let payload = json!({"n": n, "pad": "x".repeat(64)}).to_string();
        pipe.cmd("PUBLISH").arg(&channel).arg(payload).ignore();
    }
    pipe.query_async::<()>(&mut plain).await.expect("burst");
    eventually("every message delivered or dropped", || {
        let (cable, status) = (cable.clone(), status.clone());
        async move { cable.stats().broadcasts + status.dropped() == BURST }
    })
    .await;
    let dropped = status.dropped();
    assert!(dropped > 0, "a 4 KiB backlog held a burst of {BURST}");
    assert_eq!(status.backlog(), 0);
    // Through the adapter trait too (what Cable's stats can read).
    publish(&mut plain, &channel, r#"{"last":true}"#).await;
    let mut frames = 0;
    loop {
        let text = client.next_text().await;
        if text == message_frame(&id, r#"{"last":true}"#) {
            break;
        }
        frames += 1;
    }
    assert_eq!(
        frames,
        BURST - dropped,
        "each delivered message reached the client"
    );
    assert_eq!(status.dropped(), dropped, "nothing dropped once caught up");
}

#[tokio::test]
async fn a_burst_past_the_backlog_bound_is_dropped_and_counted() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    burst_scenario(&url).await;
}

#[tokio::test]
async fn a_burst_past_the_backlog_bound_is_dropped_and_counted_over_resp2() {
    let Some(redis) = own_redis(NO_HELLO).await else {
        return;
    };
    burst_scenario(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down() {
    starts_before_its_own_server(own_redis_stopped(&[]), node).await;
}
