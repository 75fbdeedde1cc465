//! The `chat` binary as several real processes sharing one PostgreSQL
//! database through `--adapter postgres://…`.
//!
//! PostgreSQL is `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test uses its own channel
//! prefix. Without a reachable database the tests print `SKIPPED: …` and
//! pass, unless `CI` is set.

use std::process::{Command, Output};

use tokio_postgres::{AsyncMessage, NoTls};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::support::*;

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A plain session for raw SQL, or None if PostgreSQL is unreachable.
async fn try_plain(url: &str) -> Option<tokio_postgres::Client> {
    let connect = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(std::time::Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    tokio::spawn(connection);
    client.simple_query("SELECT 1").await.ok()?;
    Some(client)
}

/// The shared database at `DATABASE_URL`, or None after printing why the test
/// is skipped (a failure instead when `CI` is set).
async fn shared_postgres() -> Option<(String, tokio_postgres::Client)> {
    let url = database_url();
    match try_plain(&url).await {
        Some(client) => Some((url, client)),
        None if std::env::var_os("CI").is_some() => {
            panic!("PostgreSQL not reachable at {url} (CI is set, so this is a failure)")
        }
        None => {
            println!("SKIPPED: PostgreSQL not reachable at {url} (set DATABASE_URL)");
            None
        }
    }
}

/// A node on `url` with `prefix`, admin endpoints on.
async fn pg_node(url: &str, prefix: &str) -> Chat {
    Chat::start(&["--admin", "--adapter", url, "--channel-prefix", prefix]).await
}

/// Two nodes on the same database and prefix.
async fn two_nodes(url: &str, prefix: &str) -> (Chat, Chat) {
    tokio::join!(pg_node(url, prefix), pg_node(url, prefix))
}

/// How many sessions have `application_name` = `name`.
async fn sessions_named(client: &tokio_postgres::Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Runs the real `psql` with `args`, or None (after printing why) when the
/// binary is missing; a failure instead when `CI` is set.
async fn psql(args: Vec<String>) -> Option<Output> {
    let run = tokio::task::spawn_blocking(move || Command::new("psql").args(&args).output());
    let run = tokio::time::timeout(WAIT, run)
        .await
        .expect("psql did not finish within 5s")
        .expect("psql task");
    match run {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "psql not found (CI is set, so this is a failure)"
            );
            println!("SKIPPED: psql not found on PATH");
            None
        }
        Err(e) => panic!("cannot run psql: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_speak_on_one_node_reaches_room_members_on_both() {
    let Some((url, _)) = shared_postgres().await else {
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
    // Everyone in the room, the speaker included, gets each message once, in order.
    for c in [&mut alice, &mut dave, &mut bob, &mut carol] {
        c.expect(&message(LOBBY, r#"{"user":"alice","body":"hello"}"#))
            .await;
        c.expect(&message(LOBBY, r#"{"user":"alice","body":"again"}"#))
            .await;
    }
    // And the other way round.
    bob.speak(LOBBY, "from b").await;
    for c in [&mut alice, &mut dave, &mut bob, &mut carol] {
        c.expect(&message(LOBBY, r#"{"user":"bob","body":"from b"}"#))
            .await;
    }
    // Another room on B heard none of it.
    erin.speak(&attic, "anyone?").await;
    erin.expect(&message(&attic, r#"{"user":"erin","body":"anyone?"}"#))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_remote_disconnect_via_one_node_closes_the_user_on_the_other() {
    let Some((url, _)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut alice = Client::joined(&a, "alice", LOBBY).await;
    // B LISTENs on a user's internal channel before the welcome; it runs the
    // LISTENs in order, so the room's confirmation means it is done.
    let mut bob1 = Client::joined(&b, "bob", LOBBY).await;
    let mut bob2 = Client::joined(&b, "bob", LOBBY).await;
    let mut carol = Client::joined(&b, "carol", LOBBY).await;

    let (status, body) = a.post("/admin/disconnect", r#"{"user":"bob"}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"ok":true}"#));
    for bob in [&mut bob1, &mut bob2] {
        assert_eq!(
            bob.expect_close(CloseCode::Normal).await,
            vec![r#"{"type":"disconnect","reason":"remote","reconnect":true}"#]
        );
    }

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rails_notify_with_psql_reaches_subscribers() {
    let Some((url, _)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut clients = vec![
        Client::joined(&a, "ann", LOBBY).await,
        Client::joined(&b, "ben", LOBBY).await,
        Client::joined(&b, "bea", LOBBY).await,
    ];
    let notify = |channel: String, payload: &str| {
        let sql = format!("NOTIFY \"{channel}\", '{}'", payload.replace('\'', "''"));
        let args = [url.as_str(), "-v", "ON_ERROR_STOP=1", "-c", sql.as_str()].map(str::to_owned);
        psql(args.to_vec())
    };

    // What `ActionCable.server.broadcast("chat_lobby", user: "rails", body: "hi")`
    // runs through Rails' postgresql adapter with this channel_prefix.
    let Some(out) = notify(
        format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"hi"}"#,
    )
    .await
    else {
        return;
    };
    assert!(
        out.status.success(),
        "psql NOTIFY: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for c in &mut clients {
        c.expect(&message(LOBBY, r#"{"user":"rails","body":"hi"}"#))
            .await;
    }

    // Without the prefix it is another channel: the next frame is the one
    // sent after it, with the prefix.
    let out = notify("chat_lobby".to_owned(), r#"{"user":"rails","body":"lost"}"#)
        .await
        .expect("psql ran before");
    assert!(out.status.success());
    let out = notify(
        format!("{prefix}:chat_lobby"),
        r#"{"user":"rails","body":"it's 2"}"#,
    )
    .await
    .expect("psql ran before");
    assert!(out.status.success());
    for c in &mut clients {
        c.expect(&message(LOBBY, r#"{"user":"rails","body":"it's 2"}"#))
            .await;
    }
}

/// The next notification a bare session got: (channel, payload).
async fn next_raw(
    notifications: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> (String, String) {
    tokio::time::timeout(WAIT, notifications.recv())
        .await
        .expect("nothing notified within 5s")
        .expect("raw session ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_speak_and_remote_disconnect_are_notified_as_rails_sends_them() {
    let Some((url, _)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let lobby = format!("{prefix}:chat_lobby");
    let internal = format!("{prefix}:action_cable/ann");
    // A bare listening session, as Rails' adapter has.
    let (raw, mut connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("raw session");
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    raw.batch_execute(&format!("LISTEN \"{lobby}\"; LISTEN \"{internal}\""))
        .await
        .expect("LISTEN");

    let a = pg_node(&url, &prefix).await;
    let mut ann = Client::joined(&a, "ann", LOBBY).await;
    ann.speak(LOBBY, "yo").await;
    assert_eq!(
        next_raw(&mut notifications).await,
        (lobby.clone(), r#"{"user":"ann","body":"yo"}"#.to_owned())
    );
    ann.expect(&message(LOBBY, r#"{"user":"ann","body":"yo"}"#))
        .await;

    let (status, _) = a
        .post("/admin/disconnect", r#"{"user":"ann","reconnect":false}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next_raw(&mut notifications).await,
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
async fn pg_one_listening_connection_per_process() {
    let Some((url, plain)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let name = |chat: &Chat| format!("ActionCable-PID-{}", chat.pid());
    // The listener connects in the background: wait for it.
    for chat in [&a, &b] {
        let name = name(chat);
        eventually(&format!("{name} in pg_stat_activity"), || {
            let (plain, name) = (&plain, name.clone());
            async move { sessions_named(plain, &name).await == 1 }
        })
        .await;
    }
    let mut clients = Vec::new();
    for (i, chat) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let r = room(&format!("r{i}"));
        clients.push(Client::joined(chat, &format!("u{i}"), LOBBY).await);
        clients.last_mut().expect("pushed").join(&r).await;
    }
    clients[0].speak(LOBBY, "hi").await;
    for c in &mut clients {
        c.expect(&message(LOBBY, r#"{"user":"u0","body":"hi"}"#))
            .await;
    }
    // Still one listening connection per process, plus A's publisher.
    assert_eq!(sessions_named(&plain, &name(&a)).await, 1);
    assert_eq!(sessions_named(&plain, &name(&b)).await, 1);
    assert_eq!(
        sessions_named(&plain, &format!("{}-publisher", name(&a))).await,
        1
    );
    assert!(
        a.log_text().contains("postgres listener connected"),
        "{}",
        a.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_oversized_broadcast_is_refused_and_chat_keeps_serving() {
    let Some((url, _)) = shared_postgres().await else {
        return;
    };
    let prefix = unique_prefix();
    let (a, b) = two_nodes(&url, &prefix).await;
    let mut ann = Client::joined(&a, "ann", LOBBY).await;
    let mut ben = Client::joined(&b, "ben", LOBBY).await;
    let refusal = "payload of 9000 bytes is over the postgres adapter's limit of 7999 bytes";

    // {"body":"…"} of 9000 bytes, through the admin endpoint: a 502 naming
    // the size and the limit.
    let body = "x".repeat(9000 - r#"{"body":""}"#.len());
    let request = serde_json::json!({"stream": "chat_lobby", "message": {"body": body}});
    let (status, text) = a.post("/admin/broadcast", &request.to_string()).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains(refusal), "{text}");

    // Through a speak: logged, nothing delivered (the next frames are the
    // ones after it).
    ann.speak(LOBBY, &"y".repeat(9000)).await;
    ann.speak(LOBBY, "still here").await;
    for c in [&mut ann, &mut ben] {
        c.expect(&message(LOBBY, r#"{"user":"ann","body":"still here"}"#))
            .await;
    }
    let log = a.log_text();
    assert!(log.contains("broadcast refused"), "{log}");
    assert!(
        log.contains("over the postgres adapter's limit of 7999 bytes"),
        "{log}"
    );
    // And the other node serves too.
    ben.speak(LOBBY, "me too").await;
    for c in [&mut ann, &mut ben] {
        c.expect(&message(LOBBY, r#"{"user":"ben","body":"me too"}"#))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_adapter_is_logged_and_the_database_need_not_be_up() {
    // Nothing listens on port 1: the listener retries in the background and
    // the server starts anyway.
    for scheme in ["postgres", "postgresql"] {
        let url = format!("{scheme}://app:hunter2@127.0.0.1:1/app");
        let chat = Chat::start(&["--adapter", &url, "--channel-prefix", "myapp"]).await;
        let log = chat.log_text();
        let wanted = format!(
            r#"pub/sub adapter: postgres at {scheme}://app:***@127.0.0.1:1/app (channel prefix "myapp", application name ActionCable-PID-{})"#,
            chat.pid()
        );
        assert!(log.contains(&wanted), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
        // It serves clients meanwhile.
        Client::connect(&chat, "early").await.leave().await;
    }
}
