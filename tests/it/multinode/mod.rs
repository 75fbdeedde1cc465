//! The `chat` binary as several real processes sharing one Redis (here) or
//! one PostgreSQL database (`postgres`), driven by raw actioncable-v1-json
//! WebSocket clients, asserting exact frames.
//!
//! Redis is `REDIS_URL` (default `redis://127.0.0.1:6379`); each test uses
//! its own channel prefix. Without a reachable Redis the Redis tests print
//! `SKIPPED: …` and pass, unless `CI` is set. Startup tests need no Redis.
//! `rails_interop`: a real Rails ActionCable server beside `chat` on each.

mod postgres;
mod rails_interop;
mod support;

use futures_util::StreamExt;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The next message a bare Redis subscriber gets: (channel, payload).
async fn next_raw(
    raw: &mut (impl futures_util::Stream<Item = redis::Msg> + Unpin),
) -> (String, String) {
    let msg = tokio::time::timeout(WAIT, raw.next())
        .await
        .expect("nothing published within 5s")
        .expect("pubsub stream ended");
    let payload: String = msg.get_payload().expect("text payload");
    (msg.get_channel_name().to_owned(), payload)
}

/// Two nodes on the same Redis and prefix, with admin endpoints.
async fn two_nodes(url: &str, prefix: &str) -> (Chat, Chat) {
    tokio::join!(redis_node(url, prefix), redis_node(url, prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_on_one_node_reaches_room_members_on_both() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    let mut dave = Client::joined(&a, "dave", LOBBY).await;
    let mut bob = Client::joined(&b, "bob", LOBBY).await;
    let mut carol = Client::joined(&b, "carol", LOBBY).await;
    let attic = room("attic");
    let mut erin = Client::joined(&b, "erin", &attic).await;

    alice.speak(LOBBY, "hello").await;
    alice.speak(LOBBY, "again").await;
    let hello = r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"lobby\"}","message":{"user":"alice","body":"hello"}}"#;
    // Everyone in the room, the speaker included, gets each message once, in order.
    for c in [&mut alice, &mut dave, &mut bob, &mut carol] {
        c.expect(hello).await;
        c.expect(&message(LOBBY, r#"{"user":"alice","body":"again"}"#))
            .await;
    }
    // And the other way round.
    bob.speak(LOBBY, "from b").await;
    for c in [&mut alice, &mut dave, &mut bob, &mut carol] {
        c.expect(&message(LOBBY, r#"{"user":"bob","body":"from b"}"#))
            .await;
    }
    // Another room on B heard none of it: B has already delivered the lobby
    // messages, so erin's next frame is her own.
    erin.speak(&attic, "anyone?").await;
    erin.expect(&message(&attic, r#"{"user":"erin","body":"anyone?"}"#))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_disconnect_via_one_node_closes_the_user_on_the_other() {
    let Some((url, plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    let mut bob1 = Client::joined(&b, "bob", LOBBY).await;
    let mut bob2 = Client::joined(&b, "bob", LOBBY).await;
    let mut carol = Client::joined(&b, "carol", LOBBY).await;
    // B listens on bob's internal channel (once for both connections).
    let bobs_channel = format!("{prefix}:action_cable/bob");
    until_numsub(&plain, &bobs_channel, 1).await;

    let (status, body) = a.post("/admin/disconnect", r#"{"user":"bob"}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(
            bob.expect_close(CloseCode::Normal).await,
            vec![r#"{"type":"disconnect","reason":"remote","reconnect":true}"#]
        );
    }
    until_numsub(&plain, &bobs_channel, 0).await;

    // Everyone else is still connected, on both nodes.
    alice.speak(LOBBY, "bye bob").await;
    for c in [&mut alice, &mut carol] {
        c.expect(&message(LOBBY, r#"{"user":"alice","body":"bye bob"}"#))
            .await;
    }

    // reconnect:false crosses too.
    let (status, _) = a
        .post("/admin/disconnect", r#"{"user":"carol","reconnect":false}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        carol.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":false}"#]
    );
    alice.speak(LOBBY, "alone").await;
    alice
        .expect(&message(LOBBY, r#"{"user":"alice","body":"alone"}"#))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_publish_with_redis_cli_reaches_subscribers() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut clients = vec![
        Client::joined(&a, "ann", LOBBY).await,
        Client::joined(&b, "ben", LOBBY).await,
        Client::joined(&b, "bea", LOBBY).await,
    ];
    let publish = |channel: String, payload: &str| {
        let args = ["-u", &url, "PUBLISH", &channel, payload].map(str::to_owned);
        redis_cli(args.to_vec())
    };

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")`
    // sends through Rails' redis adapter with this channel_prefix.
    let Some(out) = publish(
        format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"hi"}"#,
    )
    .await
    else {
        return;
    };
    assert!(
        out.status.success(),
        "redis-cli PUBLISH: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2",
        "receivers: one subscription per process"
    );
    for c in &mut clients {
        c.expect(r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"lobby\"}","message":{"user":"rails","body":"hi"}}"#)
            .await;
    }

    // Without the prefix it is another channel: the next frame is the one
    // published after it, with the prefix.
    let out = publish("chat_lobby".to_owned(), r#"{"user":"rails","body":"lost"}"#)
        .await
        .expect("redis-cli ran before");
    assert!(out.status.success());
    let out = publish(
        format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"2"}"#,
    )
    .await
    .expect("redis-cli ran before");
    assert!(out.status.success());
    for c in &mut clients {
        c.expect(&message(LOBBY, r#"{"user":"rails","body":"2"}"#))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_and_remote_disconnect_are_published_as_rails_publishes_them() {
    let Some((url, _)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let lobby = format!("{prefix}:chat_lobby");
    let internal = format!("{prefix}:action_cable/ann");
    // A bare Redis subscriber, as Rails' adapter is.
    let mut raw = redis::Client::open(url.as_str())
        .expect("url")
        .get_async_pubsub()
        .await
        .expect("pubsub connection");
    raw.subscribe(&lobby).await.expect("SUBSCRIBE");
    raw.subscribe(&internal).await.expect("SUBSCRIBE");
    let mut raw = raw.into_on_message();

    let a = redis_node(&url, &prefix).await;
    let mut ann = Client::joined(&a, "ann", LOBBY).await;
    ann.speak(LOBBY, "yo").await;
    assert_eq!(
        next_raw(&mut raw).await,
        (lobby.clone(), r#"{"user":"ann","body":"yo"}"#.to_owned())
    );
    ann.expect(&message(LOBBY, r#"{"user":"ann","body":"yo"}"#))
        .await;

    let (status, _) = a
        .post("/admin/disconnect", r#"{"user":"ann","reconnect":false}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_raw(&mut raw).await,
        (
            internal,
            r#"{"type":"disconnect","reconnect":false}"#.to_owned()
        )
    );
    assert_eq!(
        ann.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":false}"#]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_process_while_clients_come_and_go() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let lobby = format!("{prefix}:chat_lobby");
    let internal = |user: &str| format!("{prefix}:action_cable/{user}");
    assert_eq!(numsub(&mut plain, &lobby).await, 0);

    // The confirmation follows Redis' SUBSCRIBE reply: no waiting needed.
    let a1 = Client::joined(&a, "a1", LOBBY).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 1);
    let a2 = Client::joined(&a, "a2", LOBBY).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 1, "one per process");
    let b1 = Client::joined(&b, "b1", LOBBY).await;
    let b2 = Client::joined(&b, "b2", LOBBY).await;
    let b3 = Client::joined(&b, "b3", LOBBY).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 2, "one per process");
    assert_eq!(
        channels(&mut plain, &format!("{prefix}:chat_*")).await,
        std::slice::from_ref(&lobby)
    );

    // A keeps its subscription while a2 is there. Once A has dropped a1's
    // internal channel it is done with a1 (its streams are released first,
    // and the subscriber sends commands in order), so the count is final.
    a1.leave().await;
    until_numsub(&plain, &internal("a1"), 0).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 2);
    a2.leave().await;
    until_numsub(&plain, &lobby, 1).await;

    b1.leave().await;
    b2.leave().await;
    until_numsub(&plain, &internal("b1"), 0).await;
    until_numsub(&plain, &internal("b2"), 0).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 1, "b3 is still on B");

    // A subscribes again for a newcomer.
    let a3 = Client::joined(&a, "a3", LOBBY).await;
    assert_eq!(numsub(&mut plain, &lobby).await, 2);
    a3.leave().await;
    b3.leave().await;
    until_numsub(&plain, &lobby, 0).await;
    // Nothing of this prefix is left subscribed, internal channels included.
    let pattern = format!("{prefix}:*");
    eventually(&format!("PUBSUB CHANNELS {pattern} empty"), || {
        let (mut plain, pattern) = (plain.clone(), pattern.clone());
        async move { channels(&mut plain, &pattern).await.is_empty() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_adapter_settings_stop_chat_at_startup() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--adapter", "nats://localhost:4222"],
            r#"--adapter "nats://localhost:4222": unknown adapter"#,
        ),
        (
            &["--adapter", "redis://127.0.0.1:notaport"],
            "--adapter: invalid redis url redis://127.0.0.1:notaport",
        ),
        (
            &["--adapter", "redis://:hunter2@127.0.0.1:notaport"],
            "--adapter: invalid redis url redis://:***@127.0.0.1:notaport",
        ),
        (
            &["--adapter", "postgres://:hunter2@127.0.0.1:notaport/app"],
            "--adapter: invalid postgres url postgres://:***@127.0.0.1:notaport/app",
        ),
        (
            &["--adapter", "postgresql://localhost/app?sslmode=require"],
            "--adapter: postgres url postgresql://localhost/app?sslmode=require asks for \
             sslmode=require, but the postgres adapter does not support TLS yet",
        ),
        (
            &["--channel-prefix", "myapp"],
            r#"--channel-prefix "myapp" only applies to the redis and postgres adapters"#,
        ),
    ];
    for (args, wanted) in cases {
        let args = [&["--bind", "127.0.0.1:0"][..], args].concat();
        let (status, stderr) = chat_exit(&args).await;
        assert_eq!(status.code(), Some(2), "chat {args:?}: {stderr}");
        assert!(stderr.contains(wanted), "chat {args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "password shown: {stderr}");
        assert!(!stderr.contains("listening"), "chat {args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_in_use_is_logged_and_redis_need_not_be_up() {
    for args in [
        &[][..],
        &["--adapter", "memory"],
        &["--adapter", "memory://"],
    ] {
        let chat = Chat::start(args).await;
        assert!(
            chat.log_text()
                .contains("pub/sub adapter: memory (this process only)"),
            "chat {args:?}:\n{}",
            chat.log_text()
        );
    }
    // Nothing listens on port 1: the subscriber retries in the background
    // and the server starts anyway.
    let chat = Chat::start(&[
        "--adapter",
        "redis://:hunter2@127.0.0.1:1/0",
        "--channel-prefix",
        "myapp",
    ])
    .await;
    let log = chat.log_text();
    let wanted = format!(
        r#"pub/sub adapter: redis at redis://:***@127.0.0.1:1/0 (channel prefix "myapp", connection name ActionCable-PID-{})"#,
        chat.pid()
    );
    assert!(log.contains(&wanted), "{log}");
    assert!(!log.contains("hunter2"), "{log}");
    // It serves clients meanwhile.
    Client::connect(&chat, "early").await.leave().await;
}
