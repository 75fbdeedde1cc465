//! Integration tests against a real redis-server: `REDIS_URL`, default
//! `redis://127.0.0.1:6379`. Each test uses its own channel prefix. Without a
//! reachable Redis the tests print `SKIPPED: …` and pass, unless `CI` is set.
//! The outage tests start their own redis-server on a free port.

mod conformance;
mod support;

use std::time::Duration;

use cable_core::transport::Outgoing;
use cable_core::{Identifiers, PubSubError};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_on_one_node_reaches_subscribers_on_another() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, status_a) = node(&url, &prefix);
    let (b, status_b) = node(&url, &prefix);
    // Same streams, other prefix: must not hear anything.
    let (other, status_other) = node(&url, &unique_prefix());
    until_connected(&status_a).await;
    until_connected(&status_b).await;
    until_connected(&status_other).await;

    let mut bob = Client::connect(&b, "bob").await;
    let id = bob.subscribe("lobby").await;
    let mut carol = Client::connect(&a, "carol").await;
    carol.subscribe("lobby").await;
    let mut eve = Client::connect(&other, "eve").await;
    eve.subscribe("lobby").await;

    a.broadcast("chat_lobby", &json!({"user": "alice", "body": "hi"}))
        .await
        .expect("broadcast");
    let expected = message_frame(&id, r#"{"user":"alice","body":"hi"}"#);
    assert_eq!(bob.next_text().await, expected);
    // The sender's own node hears it back through Redis, exactly once.
    assert_eq!(carol.next_text().await, expected);
    assert!(carol.quiet_for(Duration::from_millis(200)).await);
    assert!(eve.quiet_for(Duration::from_millis(200)).await);
    assert_eq!(b.adapter_name(), "redis");
    assert!(b.is_healthy());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publish_from_rails_reaches_subscribers() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&url, &prefix);
    until_connected(&status).await;
    let mut client = Client::connect(&cable, "ann").await;
    let id = client.subscribe("lobby").await;

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")` sends.
    publish(
        &mut plain,
        &format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"hi"}"#,
    )
    .await;
    assert_eq!(
        client.next_text().await,
        message_frame(&id, r#"{"user":"rails","body":"hi"}"#)
    );
    // A broadcast published without the prefix is another channel.
    publish(&mut plain, "chat_lobby", r#"{"user":"x"}"#).await;
    assert!(client.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_node_per_stream() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, status_a) = node(&url, &prefix);
    let (b, status_b) = node(&url, &prefix);
    until_connected(&status_a).await;
    until_connected(&status_b).await;
    let lobby = format!("{prefix}:chat_lobby");

    let mut on_a = Vec::new();
    for user in ["a1", "a2", "a3"] {
        let mut c = Client::connect(&a, user).await;
        c.subscribe("lobby").await;
        on_a.push(c);
    }
    assert_eq!(numsub(&mut plain, &lobby).await, 1);
    let mut on_b = Vec::new();
    for user in ["b1", "b2"] {
        let mut c = Client::connect(&b, user).await;
        c.subscribe("lobby").await;
        on_b.push(c);
    }
    assert_eq!(numsub(&mut plain, &lobby).await, 2, "one per node");

    // Every connection's internal channel plus the one shared stream.
    let mut expected: Vec<String> = ["a1", "a2", "a3", "b1", "b2"]
        .iter()
        .map(|u| format!("{prefix}:action_cable/{u}"))
        .chain([lobby.clone()])
        .collect();
    expected.sort();
    let pattern = format!("{prefix}:*");
    eventually("PUBSUB CHANNELS lists every stream", || {
        let mut plain = plain.clone();
        let (pattern, expected) = (pattern.clone(), expected.clone());
        async move { channels(&mut plain, &pattern).await == expected }
    })
    .await;

    // Node A keeps its subscription while any local client remains.
    let last_a = on_a.pop().expect("three clients");
    for c in on_a {
        c.leave().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 2);
    last_a.leave().await;
    eventually("node A unsubscribed", || {
        let mut plain = plain.clone();
        let lobby = lobby.clone();
        async move { numsub(&mut plain, &lobby).await == 1 }
    })
    .await;
    for c in on_b {
        c.leave().await;
    }
    eventually("no subscriptions left", || {
        let mut plain = plain.clone();
        let (lobby, pattern) = (lobby.clone(), pattern.clone());
        async move {
            numsub(&mut plain, &lobby).await == 0 && channels(&mut plain, &pattern).await.is_empty()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_disconnect_across_nodes() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, status_a) = node(&url, &prefix);
    let (b, status_b) = node(&url, &prefix);
    until_connected(&status_a).await;
    until_connected(&status_b).await;

    let mut alice = Client::connect(&b, "alice").await;
    let mut bob = Client::connect(&b, "bob").await;
    let mut dave = Client::connect(&b, "dave").await;
    // The welcome does not wait for the internal channel; Redis must have it
    // before a disconnect can arrive.
    for user in ["alice", "bob", "dave"] {
        let channel = format!("{prefix}:action_cable/{user}");
        eventually("internal channel subscribed", || {
            let mut plain = plain.clone();
            let channel = channel.clone();
            async move { numsub(&mut plain, &channel).await == 1 }
        })
        .await;
    }

    // Rails 7.1+: remote_connections.where(current_user: alice).disconnect(reconnect: false)
    a.remote_disconnect(&Identifiers::new().with("current_user", "alice"), false)
        .await
        .expect("remote disconnect");
    assert_eq!(
        alice.next_text().await,
        r#"{"type":"disconnect","reason":"remote","reconnect":false}"#
    );
    assert!(matches!(alice.next().await, Outgoing::Close { .. }));
    assert!(bob.quiet_for(Duration::from_millis(200)).await);

    // Rails 6.1/7.0 publish no `reconnect`, which means true.
    publish(
        &mut plain,
        &format!("{prefix}:action_cable/dave"),
        r#"{"type":"disconnect"}"#,
    )
    .await;
    assert_eq!(
        dave.next_text().await,
        r#"{"type":"disconnect","reason":"remote","reconnect":true}"#
    );
    assert!(matches!(dave.next().await, Outgoing::Close { .. }));
    assert!(bob.quiet_for(Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_waits_for_redis_subscribe() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&url, &prefix);
    until_connected(&status).await;
    let mut client = Client::connect(&cable, "zed").await;
    for i in 0..20 {
        let id = client.start_subscribe(&format!("r{i}"));
        client.expect_confirm(&id).await;
        assert_eq!(
            numsub(&mut plain, &format!("{prefix}:chat_r{i}")).await,
            1,
            "confirm_subscription for r{i} before Redis acknowledged SUBSCRIBE"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_connections_are_named() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&url, &prefix);
    until_connected(&status).await;
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
    let Some(mut redis) = OwnRedis::start(server_args).await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&redis.url(), &prefix);
    until_connected(&status).await;
    let mut client = Client::connect(&cable, "u1").await;
    let id = client.subscribe("lobby").await;
    cable
        .broadcast("chat_lobby", &json!({"n": 1}))
        .await
        .expect("broadcast while up");
    assert_eq!(client.next_text().await, message_frame(&id, r#"{"n":1}"#));
    assert_eq!(status.reconnects(), 0);

    redis.kill();
    eventually("outage noticed", || {
        let status = status.clone();
        async move { !status.is_connected() }
    })
    .await;
    assert!(!cable.is_healthy());
    let started = tokio::time::Instant::now();
    let err = cable
        .broadcast("chat_lobby", &json!({"n": 2}))
        .await
        .expect_err("broadcast during the outage fails");
    assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "bounded");

    // A subscribe during the outage is applied (and confirmed) once Redis is back.
    let mut late = Client::connect(&cable, "u2").await;
    let late_id = late.start_subscribe("late");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let restarted = tokio::time::Instant::now();
    late.expect_confirm(&late_id).await;

    // Delivery resumes on its own.
    let mut n = 3;
    loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "delivery did not resume within 5s of the restart"
        );
        if cable
            .broadcast("chat_lobby", &json!({"n": n}))
            .await
            .is_ok()
        {
            let expected = message_frame(&id, &format!(r#"{{"n":{n}}}"#));
            if let Ok(Outgoing::Text(f)) =
                tokio::time::timeout(Duration::from_millis(300), client.next()).await
            {
                assert_eq!(f.as_str(), expected);
                break;
            }
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.reconnects() >= 1);
    assert_eq!(cable.stats().adapter_reconnects, status.reconnects());
    assert!(status.is_connected() && cable.is_healthy());
    cable
        .broadcast("chat_late", &json!({"late": true}))
        .await
        .expect("broadcast after restart");
    assert_eq!(
        late.next_text().await,
        message_frame(&late_id, r#"{"late":true}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down() {
    let Some(mut redis) = OwnRedis::stopped(&[]) else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&redis.url(), &prefix);
    let err = cable
        .broadcast("chat_lobby", &json!({}))
        .await
        .expect_err("redis is not running");
    assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    assert!(!status.is_connected());

    redis.restart().await;
    until_connected(&status).await;
    assert_eq!(status.reconnects(), 0, "a first connection is no reconnect");
    let mut client = Client::connect(&cable, "u1").await;
    let id = client.subscribe("lobby").await;
    // The publisher fails fast for 100 ms after its failed connect; the
    // jittered subscriber may be back sooner than that.
    eventually("a broadcast once redis is up", || {
        let cable = cable.clone();
        async move {
            cable
                .broadcast("chat_lobby", &json!({"up": true}))
                .await
                .is_ok()
        }
    })
    .await;
    assert_eq!(
        client.next_text().await,
        message_frame(&id, r#"{"up":true}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_after_five_seconds_of_outage_then_recovers() {
    let Some(mut redis) = OwnRedis::start(&[]).await else {
        return;
    };
    let prefix = unique_prefix();
    let (cable, status) = node(&redis.url(), &prefix);
    until_connected(&status).await;
    redis.kill();
    eventually("outage noticed", || {
        let status = status.clone();
        async move { !status.is_connected() }
    })
    .await;

    // No confirmation for a stream that is not live: the core drops the
    // subscription when the Ack fails (after 5 s) and the client retries.
    let mut client = Client::connect(&cable, "u1").await;
    let id = client.start_subscribe("lobby");
    assert!(client.quiet_for(Duration::from_millis(5500)).await);

    redis.restart().await;
    until_connected(&status).await;
    let mut plain = try_plain(&redis.url()).await.expect("own redis is up");
    // The dropped subscription was unsubscribed, not re-subscribed.
    assert_eq!(numsub(&mut plain, &format!("{prefix}:chat_lobby")).await, 0);
    // The client's retry succeeds.
    client.send(json!({"command": "subscribe", "identifier": id}));
    client.expect_confirm(&id).await;
    publish(&mut plain, &format!("{prefix}:chat_lobby"), r#"{"ok":1}"#).await;
    assert_eq!(client.next_text().await, message_frame(&id, r#"{"ok":1}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_resp2_without_hello() {
    let Some(redis) = OwnRedis::start(NO_HELLO).await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, status_a) = node(&redis.url(), &prefix);
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
    assert_eq!(
        client.next_text().await,
        message_frame(&id, r#"{"via":"resp2"}"#)
    );
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
    let mut client = Client::connect(&cable, "u1").await;
    let id = client.subscribe("lobby").await;
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
    let Some(redis) = OwnRedis::start(NO_HELLO).await else {
        return;
    };
    burst_scenario(&redis.url()).await;
}
