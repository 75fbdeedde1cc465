//! Integration tests against a real nats-server: `NATS_URL`, default
//! `nats://127.0.0.1:4222`. Each test uses its own subject prefix. Without
//! a reachable NATS the tests print `SKIPPED: …` and pass, unless `CI` is
//! set. The outage tests start their own nats-server on a free port.

mod broker;
mod conformance;
mod intake;
mod support;

use std::time::Duration;

use cable_core::PubSubError;
use futures_util::StreamExt;
use serde_json::json;
use support::*;

pub async fn raw_publish(client: &async_nats::Client, subject: &str, payload: &str) {
    client
        .publish(subject.to_owned(), payload.to_owned().into())
        .await
        .expect("publish");
    client.flush().await.expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_nats_publish_reaches_subscribers() {
    let Some((plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    let (mut client, id) = Client::in_lobby(&cable, "ann").await;
    // What `nats pub <prefix>.chat_lobby '…'` sends.
    let body = r#"{"user":"nats","body":"hi"}"#;
    raw_publish(&plain, &format!("{prefix}.chat_lobby"), body).await;
    client.expect_message(&id, body).await;
    // Another subject under the prefix, or the stream without it, is
    // another stream.
    raw_publish(&plain, "chat_lobby", r#"{"x":1}"#).await;
    raw_publish(&plain, &format!("{prefix}.chat_lobby.more"), r#"{"x":2}"#).await;
    assert!(client.quiet_for(Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_nats_byte_for_byte() {
    let Some((plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    let mut sub = plain
        .subscribe(format!("{prefix}.chat_lobby"))
        .await
        .expect("subscribe");
    plain.flush().await.expect("flush");
    // Not re-encoded on the way: escapes, number formats, the envelope's
    // record separator, non-ASCII.
    let payload = "{\"body\":\"h\\u00e9 \u{2713} \u{1e}\",\"n\":1.50}";
    cable
        .broadcaster()
        .broadcast_raw("chat_lobby", payload)
        .await
        .expect("broadcast");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("subscription open");
    assert_eq!(got.payload.as_ref(), payload.as_bytes());
}

/// The next frame `c` gets, which must be its confirmation (the
/// identifier's escaping is the core's business, not this test's).
async fn confirmed(c: &mut Client) {
    let frame = c.next_text().await;
    assert!(
        frame.ends_with(r#""type":"confirm_subscription"}"#),
        "{frame}"
    );
}

/// The next frame `c` gets, which must carry `message`.
async fn got(c: &mut Client, message: &str) {
    let frame = c.next_text().await;
    assert!(
        frame.ends_with(&format!(r#","message":{message}}}"#)),
        "{frame}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_nats_subjects_cannot_take_stay_apart() {
    let Some((plain, prefix, cable, _)) = shared_node().await else {
        return;
    };
    // Rooms stream from `chat_<room>`: dots (empty tokens too), wildcards
    // (as subjects, `chat_x.>` and `chat_x.*` would catch `chat_x.y`),
    // spaces, the escape character itself, and what the escape gives.
    let rooms = ["x.y", "x.>", "x.*", "a%2Eb", "a.b", "..", "x y", "%", "é"];
    let mut clients = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let mut c = Client::connect(&cable, &format!("u{i}")).await;
        c.start_subscribe(room);
        confirmed(&mut c).await;
        clients.push(c);
    }
    for (i, room) in rooms.iter().enumerate() {
        let message = json!({ "i": i });
        cable
            .broadcast(&format!("chat_{room}"), &message)
            .await
            .expect("broadcast");
        got(&mut clients[i], &message.to_string()).await;
    }
    for c in &mut clients {
        assert!(c.quiet_for(Duration::from_millis(100)).await, "one each");
    }
    // A raw client reaches room `x.y` on its documented subject.
    raw_publish(&plain, &format!("{prefix}.chat_x%2Ey"), r#"{"raw":1}"#).await;
    got(&mut clients[0], r#"{"raw":1}"#).await;
    for c in &mut clients {
        assert!(c.quiet_for(Duration::from_millis(100)).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_too_long_for_a_subject_is_refused_and_the_rest_goes_on() {
    let Some((_plain, _prefix, cable, status)) = shared_node().await else {
        return;
    };
    // 2000 bytes of room (within the core's identifier limit) but 6000 of
    // subject (`%C3%A9` each), past the 4 KiB protocol line with which the
    // server would close the connection.
    let long = "\u{e9}".repeat(1000);
    let err = cable
        .broadcast(&format!("chat_{long}"), &json!({}))
        .await
        .expect_err("subject too long");
    assert!(matches!(err, PubSubError::Backend(_)), "{err:?}");
    let mut c = Client::connect(&cable, "u1").await;
    // Its Ack failed: the core drops the subscription unconfirmed (the
    // client retries), as during an outage.
    c.start_subscribe(&long);
    assert!(c.quiet_for(Duration::from_millis(500)).await);
    // The connection every other stream uses is still up.
    let (mut ann, lobby) = Client::in_lobby(&cable, "ann").await;
    cable
        .broadcast("chat_lobby", &json!({"ok": true}))
        .await
        .expect("broadcast");
    ann.expect_message(&lobby, r#"{"ok":true}"#).await;
    assert_eq!(status.reconnects(), 0);
}

/// Issue 17: a nats-server restart mid-test: delivery resumes within 5 s,
/// and every subscription is back on the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_nats_server_restart() {
    let Some((mut nats, prefix, cable, status)) = own_node(own_nats(&[]).await, node) else {
        return;
    };
    until_connected(&status).await;
    delivery_survives_an_outage(
        &cable,
        1,
        async |up| nats.set_up(up).await,
        async || {},
        async || {
            // Delivery on the lobby (subscribed before the restart) and on
            // the late room proves the server has both again; the adapter
            // says so too.
            let subjects = status.subscriptions().await.expect("connected");
            let want = [
                subject(&prefix, "chat_late"),
                subject(&prefix, "chat_lobby"),
            ];
            for s in want {
                assert!(subjects.contains(&s), "{s} in {subjects:?}");
            }
        },
    )
    .await;
    assert_eq!(cable.stats().adapter_reconnects, status.reconnects());
    assert!(status.reconnects() >= 1);
    assert!(status.is_connected());
}

/// The URL's `user:password@` is what the server checks (async-nats
/// ignores a URL's credentials: the adapter passes them on itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_the_urls_user_and_password() {
    let Some(nats) = own_nats(&["--user", "cable", "--pass", "s3:cr@t"]).await else {
        return;
    };
    let url = format!("nats://cable:s3%3Acr%40t@127.0.0.1:{}", nats.port);
    let (cable, status) = node(&url, &unique_prefix());
    until_connected(&status).await;
    let (mut client, id) = Client::in_lobby(&cable, "u1").await;
    cable
        .broadcast("chat_lobby", &json!({"authed": true}))
        .await
        .expect("the publisher authenticates too");
    client.expect_message(&id, r#"{"authed":true}"#).await;

    let wrong = format!("nats://cable:nope@127.0.0.1:{}", nats.port);
    let (cable, status) = node(&wrong, &unique_prefix());
    let err = cable
        .broadcast("chat_lobby", &json!({}))
        .await
        .expect_err("a wrong password");
    assert!(matches!(err, PubSubError::Backend(_)), "{err:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!status.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_nats_is_down() {
    starts_before_its_own_server(own_nats_stopped(&[]), node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_fails_after_five_seconds_of_outage_then_recovers() {
    let Some((mut nats, prefix, cable, status)) = own_node(own_nats(&[]).await, node) else {
        return;
    };
    let url = nats.url();
    subscribe_fails_during_a_long_outage(
        &cable,
        async |up| nats.set_up(up).await,
        // The dropped subscription was not made again.
        async || {
            let subjects = status.subscriptions().await.expect("connected");
            assert!(
                !subjects.contains(&subject(&prefix, "chat_lobby")),
                "{subjects:?}"
            );
        },
        async |stream, payload| {
            let plain = try_plain(&url).await.expect("own nats is up");
            raw_publish(&plain, &subject(&prefix, stream), payload).await
        },
    )
    .await;
}
