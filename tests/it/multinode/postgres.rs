//! What is PostgreSQL's own when several `chat` processes share one
//! database through `--adapter postgres://…`: one listening session per
//! process, and NOTIFY's payload limit.

use super::support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_one_listening_connection_per_process() {
    let Some((shared, a, b)) = Kind::Postgres.two_chats().await else {
        return;
    };
    let plain = shared.postgres();
    let name = |chat: &Chat| format!("ActionCable-PID-{}", chat.pid());
    // The listener connects in the background: wait for it.
    for chat in [&a, &b] {
        let name = name(chat);
        eventually(&format!("{name} in pg_stat_activity"), || {
            let name = name.clone();
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
    assert_eq!(sessions_named(plain, &name(&a)).await, 1);
    assert_eq!(sessions_named(plain, &name(&b)).await, 1);
    assert_eq!(
        sessions_named(plain, &format!("{}-publisher", name(&a))).await,
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
    let Some((_shared, a, b)) = Kind::Postgres.two_chats().await else {
        return;
    };
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
    all_hear(&mut [&mut ann, &mut ben], LOBBY, "ann", "still here").await;
    let log = a.log_text();
    assert!(log.contains("broadcast refused"), "{log}");
    assert!(
        log.contains("over the postgres adapter's limit of 7999 bytes"),
        "{log}"
    );
    // And the other node serves too.
    ben.speak(LOBBY, "me too").await;
    all_hear(&mut [&mut ann, &mut ben], LOBBY, "ben", "me too").await;
}
