//! The `chat` binary as several real processes sharing one Redis or one
//! PostgreSQL database, driven by raw actioncable-v1-json WebSocket clients,
//! asserting exact frames. What holds on both backends is written once and
//! run on each (`both!`); `postgres` has what is PostgreSQL's own; `nats`
//! runs chat processes on one nats-server (`NATS_URL`);
//! `rails_interop` puts a real Rails ActionCable server beside `chat`.
//! Reliable streams (AnyCable's extended protocol) use in-process nodes:
//! `reliable` resumes a client on another node with its missed history,
//! `restart` restarts a backend of the test's own under a node.
//!
//! Redis is `REDIS_URL` (default `redis://127.0.0.1:6379`), PostgreSQL
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`); each
//! test uses its own channel prefix. Without a reachable backend its tests
//! print `SKIPPED: …` and pass, unless `CI` is set. Startup tests need
//! neither.

mod nats;
mod postgres;
mod rails_interop;
mod reliable;
mod restart;
mod support;

use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

both!(
    speak_on_one_node_reaches_room_members_on_both,
    remote_disconnect_via_one_node_closes_the_user_on_the_other,
    rails_publish_with_the_backends_cli_reaches_subscribers,
    speak_and_remote_disconnect_are_published_as_rails_publishes_them,
    the_adapter_in_use_is_logged_and_the_backend_need_not_be_up,
);

async fn speak_on_one_node_reaches_room_members_on_both(kind: Kind) {
    let Some((_shared, a, b)) = kind.two_chats().await else {
        return;
    };
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
    all_hear(
        &mut [&mut alice, &mut dave, &mut bob, &mut carol],
        LOBBY,
        "bob",
        "from b",
    )
    .await;
    // Another room on B heard none of it: B has already delivered the lobby
    // messages, so erin's next frame is her own.
    erin.speak(&attic, "anyone?").await;
    erin.expect(&message(&attic, r#"{"user":"erin","body":"anyone?"}"#))
        .await;
}

async fn remote_disconnect_via_one_node_closes_the_user_on_the_other(kind: Kind) {
    let Some((shared, a, b)) = kind.two_chats().await else {
        return;
    };
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    let mut bob1 = Client::joined(&b, "bob", LOBBY).await;
    let mut bob2 = Client::joined(&b, "bob", LOBBY).await;
    let mut carol = Client::joined(&b, "carol", LOBBY).await;
    // B listens on bob's internal channel (once for both connections).
    let bobs_channel = shared.channel("action_cable/bob");
    shared.until_subscribed(&bobs_channel, 1).await;

    a.disconnect_user("bob", true).await;
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(
            bob.expect_close(CloseCode::Normal).await,
            vec![r#"{"type":"disconnect","reason":"remote","reconnect":true}"#]
        );
    }
    shared.until_subscribed(&bobs_channel, 0).await;

    // Everyone else is still connected, on both nodes.
    alice.speak(LOBBY, "bye bob").await;
    all_hear(&mut [&mut alice, &mut carol], LOBBY, "alice", "bye bob").await;

    // reconnect:false crosses too.
    a.disconnect_user("carol", false).await;
    assert_eq!(
        carol.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":false}"#]
    );
    alice.speak(LOBBY, "alone").await;
    alice
        .expect(&message(LOBBY, r#"{"user":"alice","body":"alone"}"#))
        .await;
}

async fn rails_publish_with_the_backends_cli_reaches_subscribers(kind: Kind) {
    let Some((shared, a, b)) = kind.two_chats().await else {
        return;
    };
    let mut clients = vec![
        Client::joined(&a, "ann", LOBBY).await,
        Client::joined(&b, "ben", LOBBY).await,
        Client::joined(&b, "bea", LOBBY).await,
    ];
    let lobby = shared.channel("chat_lobby");

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")`
    // sends through Rails' adapter with this channel_prefix.
    let Some(out) = shared
        .cli_publish(&lobby, r#"{"user":"rails","body":"hi"}"#)
        .await
    else {
        return;
    };
    if kind == Kind::Redis {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "2",
            "receivers: one subscription per process"
        );
    }
    for c in &mut clients {
        c.expect(r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"lobby\"}","message":{"user":"rails","body":"hi"}}"#)
            .await;
    }

    // Without the prefix it is another channel: the next frame is the one
    // published after it, with the prefix.
    let lost = r#"{"user":"rails","body":"lost"}"#;
    shared
        .cli_publish("chat_lobby", lost)
        .await
        .expect("ran before");
    let quoted = r#"{"user":"rails","body":"it's 2"}"#;
    shared
        .cli_publish(&lobby, quoted)
        .await
        .expect("ran before");
    for c in &mut clients {
        c.expect(&message(LOBBY, quoted)).await;
    }
}

async fn speak_and_remote_disconnect_are_published_as_rails_publishes_them(kind: Kind) {
    let Some(shared) = kind.shared().await else {
        return;
    };
    let lobby = shared.channel("chat_lobby");
    let internal = shared.channel("action_cable/ann");
    let mut raw = shared.raw_subscriber(&[&lobby, &internal]).await;

    let a = shared.node().await;
    let mut ann = Client::joined(&a, "ann", LOBBY).await;
    ann.speak(LOBBY, "yo").await;
    assert_eq!(
        raw.next().await,
        (lobby.clone(), r#"{"user":"ann","body":"yo"}"#.to_owned())
    );
    ann.expect(&message(LOBBY, r#"{"user":"ann","body":"yo"}"#))
        .await;

    a.disconnect_user("ann", false).await;
    assert_eq!(
        raw.next().await,
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

async fn the_adapter_in_use_is_logged_and_the_backend_need_not_be_up(kind: Kind) {
    // Nothing listens on port 1: the subscriber retries in the background
    // and the server starts anyway.
    let urls: &[(&str, &str)] = match kind {
        Kind::Redis => &[(
            "redis://:hunter2@127.0.0.1:1/0",
            "redis://:***@127.0.0.1:1/0",
        )],
        Kind::Postgres => &[
            (
                "postgres://app:hunter2@127.0.0.1:1/app",
                "postgres://app:***@127.0.0.1:1/app",
            ),
            (
                "postgresql://app:hunter2@127.0.0.1:1/app",
                "postgresql://app:***@127.0.0.1:1/app",
            ),
        ],
    };
    for (url, shown) in urls {
        let chat = Chat::start(&["--adapter", url, "--channel-prefix", "myapp"]).await;
        let log = chat.log_text();
        let (name, connection) = match kind {
            Kind::Redis => ("redis", "connection name"),
            Kind::Postgres => ("postgres", "application name"),
        };
        let wanted = format!(
            r#"pub/sub adapter: {name} at {shown} (channel prefix "myapp", {connection} ActionCable-PID-{})"#,
            chat.pid()
        );
        assert!(log.contains(&wanted), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
        // It serves clients meanwhile.
        Client::connect(&chat, "early").await.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redis_subscription_per_process_while_clients_come_and_go() {
    let Some((shared, a, b)) = Kind::Redis.two_chats().await else {
        return;
    };
    let mut plain = shared.redis();
    let prefix = &shared.prefix;
    let lobby = shared.channel("chat_lobby");
    let internal = |user: &str| shared.channel(&format!("action_cable/{user}"));
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
            &["--adapter", "amqp://localhost:5672"],
            r#"--adapter "amqp://localhost:5672": unknown adapter"#,
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
            r#"--channel-prefix "myapp" only applies to the redis, postgres and nats adapters"#,
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
async fn the_memory_adapter_is_the_default_and_logged() {
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
}
