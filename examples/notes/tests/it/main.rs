//! The notes example's tests (issue 18): the channel with the test kit (no
//! sockets), then the whole app on a real port: login by session, the
//! connection hook reading that session, the typed action and the handler
//! that broadcasts after a write.

use std::net::SocketAddr;

use cable_core::Identifiers;
use cable_test::{frames, Client, TestCable};
use notes_example::{all_notes, cable_builder, open_database, Note, User};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn note(id: i64, author: &str, body: &str) -> serde_json::Value {
    serde_json::to_value(Note {
        id,
        author: author.into(),
        body: body.into(),
    })
    .expect("a note encodes")
}

/// The channel as Rails' `ChannelTestCase` would test it.
#[tokio::test]
async fn the_add_action_writes_and_broadcasts_and_refuses_bad_data() {
    let db = open_database("sqlite::memory:").await.expect("database");
    let cable = TestCable::new(cable_builder(db.clone()));
    let ann = Identifiers::new()
        .with("current_user", "ann")
        .with_data(User { name: "ann".into() });
    let conn = cable.stub_connection(ann).await;
    let sub = conn.subscribe("NotesChannel", json!({})).await;
    sub.assert_confirmed();
    sub.assert_has_stream("notes");

    sub.perform("add", json!({"body": "  buy milk "})).await;
    cable.assert_broadcast_on("notes", note(1, "ann", "buy milk"));
    // Data that does not decode, and a body the app refuses: nothing
    // written, nothing broadcast.
    sub.perform("add", json!({"text": "no body"})).await;
    sub.perform("add", json!({"body": 7})).await;
    sub.perform("add", json!({"body": "   "})).await;
    sub.perform("remove", json!({"id": 1})).await;
    assert_eq!(cable.broadcasts().on("notes").len(), 1);
    let stored = all_notes(&db).await.expect("notes");
    assert_eq!(
        stored,
        [Note {
            id: 1,
            author: "ann".into(),
            body: "buy milk".into()
        }]
    );
}

/// A bare HTTP/1.1 request with a form body; returns the status, the
/// `Set-Cookie` value (name=value) if any, and the body.
async fn form(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    let method = if body.is_empty() { "GET" } else { "POST" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Content-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    (status, set_cookie, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_in_pages_get_notes_live_from_the_channel_and_the_handler() {
    let db = open_database("sqlite::memory:").await.expect("database");
    let cable = cable_builder(db.clone()).build();
    let app = notes_example::app(db, cable.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum_serve(listener, app).await });
    let origin = format!("http://{addr}");
    let url = format!("ws://{addr}/cable");

    // Not logged in: the hook refuses the socket.
    let mut anon = Client::connect(&url, &[("Origin", &origin)]).await;
    assert_eq!(
        anon.expect_close(cable_test::CloseCode::Normal).await,
        vec![frames::disconnect("unauthorized", false)]
    );

    let (status, cookie, _) = form(addr, "/login", None, "name=ann").await;
    assert_eq!(status, 303);
    let cookie = cookie.expect("a session cookie");
    let mut ann = Client::connect(&url, &[("Origin", &origin), ("Cookie", &cookie)]).await;
    ann.expect(r#"{"type":"welcome"}"#).await;
    let id = r#"{"channel":"NotesChannel"}"#;
    ann.subscribe(id).await;

    // The typed action, as the page sends it.
    ann.perform(id, json!({"action": "add", "body": "from the cable"}))
        .await;
    ann.expect(&frames::message(
        id,
        &note(1, "ann", "from the cable").to_string(),
    ))
    .await;
    // The form handler writes, then broadcasts.
    let (status, _, _) = form(addr, "/notes", Some(&cookie), "body=from+a+form").await;
    assert_eq!(status, 303);
    ann.expect(&frames::message(
        id,
        &note(2, "ann", "from a form").to_string(),
    ))
    .await;
    // Without the session the handler refuses.
    let (status, _, _) = form(addr, "/notes", None, "body=x").await;
    assert_eq!(status, 401);
    // The page lists what is stored.
    let (status, _, page) = form(addr, "/", Some(&cookie), "").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#""body":"from a form""#), "{page}");
}

async fn axum_serve(listener: tokio::net::TcpListener, app: axum::Router) {
    let _ = axum::serve(listener, app).await;
}
