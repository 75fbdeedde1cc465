//! Server-Sent Events (AnyCable's SSE transport) over a real socket: the
//! same connect hook, origin rules, channels and history as a WebSocket,
//! with AnyCable's answers (401, 400, `id:`, `retry:`, `server_restart`).

use std::time::Duration;

use cable_core::Identifiers;
use cable_test::{eventually, SseClient, SseEvent, TestServer};
use serde_json::{json, Value};

/// [`news_cable`](crate::support::news_cable) served with SSE at `/events`.
async fn server() -> TestServer {
    let cable = crate::support::news_cable();
    TestServer::serve(
        cable_server::router(cable.clone(), TestServer::config()),
        cable,
    )
    .await
}

fn news() -> String {
    json!({"channel": "NewsChannel", "stream": "news"}).to_string()
}

/// `/events?user=<user>&identifier=<news>` plus `extra`.
fn news_path(user: &str, extra: &str) -> String {
    let id: String = form_urlencoded::byte_serialize(news().as_bytes()).collect();
    format!("/events?user={user}&identifier={id}{extra}")
}

async fn publish(server: &TestServer, n: u64) {
    server
        .cable
        .broadcast("news", &json!({ "n": n }))
        .await
        .unwrap();
}

async fn open(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut all = vec![("Origin", server.origin())];
    all.extend_from_slice(headers);
    SseClient::get(server.addr, path, &all).await
}

/// The welcome and the confirmation, as events.
async fn welcomed_and_confirmed(sse: &mut SseClient) {
    let welcome = sse.next_non_ping().await;
    assert_eq!(welcome.event.as_deref(), Some("welcome"), "{welcome:?}");
    let confirm = sse.next_non_ping().await;
    assert_eq!(confirm.event.as_deref(), Some("confirm_subscription"));
    let frame: Value = serde_json::from_str(&confirm.data).unwrap();
    assert_eq!(frame["identifier"], news());
}

/// A broadcast's event: its message and position (`n`, id).
async fn positioned(sse: &mut SseClient) -> (u64, String) {
    let e = sse.next_non_ping().await;
    assert_eq!(e.event, None, "a broadcast is a plain message event: {e:?}");
    let message: Value = serde_json::from_str(&e.data).unwrap();
    (message["n"].as_u64().unwrap(), e.id.unwrap_or_default())
}

#[tokio::test]
async fn a_get_subscribes_and_streams_broadcasts_with_their_positions() {
    let server = server().await;
    let mut sse = open(&server, &news_path("ann", ""), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some(server.origin())
    );
    welcomed_and_confirmed(&mut sse).await;
    assert_eq!(server.cable.stats().connections, 1, "counted as a session");
    publish(&server, 1).await;
    let (n, id) = positioned(&mut sse).await;
    assert_eq!(n, 1);
    let (offset, rest) = id.split_once('/').unwrap();
    assert_eq!(offset, "1");
    assert!(rest.ends_with("/news"), "{id}");
    // The heartbeat is an event too (the core's ping).
    let ping = sse.next_event().await;
    assert_eq!(ping.event.as_deref(), Some("ping"), "{ping:?}");
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_replays_exactly_what_was_missed() {
    let server = server().await;
    let mut sse = open(&server, &news_path("ann", ""), &[]).await;
    welcomed_and_confirmed(&mut sse).await;
    for n in 1..=2 {
        publish(&server, n).await;
    }
    assert_eq!(positioned(&mut sse).await.0, 1);
    let (_, last) = positioned(&mut sse).await;
    drop(sse);
    eventually("the first response's session ended", || async {
        server.cable.stats().connections == 0
    })
    .await;
    for n in 3..=4 {
        publish(&server, n).await;
    }

    let mut back = open(&server, &news_path("ann", ""), &[("Last-Event-ID", &last)]).await;
    assert_eq!(back.status, 200);
    welcomed_and_confirmed(&mut back).await;
    assert_eq!(positioned(&mut back).await.0, 3);
    assert_eq!(positioned(&mut back).await.0, 4);
    let confirmed = back.next_non_ping().await;
    assert_eq!(confirmed.event.as_deref(), Some("confirm_history"));
    publish(&server, 5).await;
    let (n, id) = positioned(&mut back).await;
    assert_eq!(n, 5);
    assert!(id.starts_with("5/"), "{id}");
}

#[tokio::test]
async fn refusals_get_anycables_statuses() {
    let server = server().await;
    // The connect hook refuses: 401.
    let sse = open(&server, &news_path("", "").replace("user=&", ""), &[]).await;
    assert_eq!(sse.status, 401);
    // A subscription the server rejects (no such channel): 400.
    let unknown: String = form_urlencoded::byte_serialize(br#"{"channel":"Nope"}"#).collect();
    let sse = open(
        &server,
        &format!("/events?user=ann&identifier={unknown}"),
        &[],
    )
    .await;
    assert_eq!(sse.status, 400);
    // No subscription named, params that are no object, a bad Last-Event-ID.
    for (path, headers) in [
        ("/events?user=ann".to_owned(), vec![]),
        (
            "/events?user=ann&channel=C&params=%5B1%5D".to_owned(),
            vec![],
        ),
        (news_path("ann", ""), vec![("Last-Event-ID", "x/e/news")]),
    ] {
        let sse = open(&server, &path, &headers).await;
        assert_eq!(sse.status, 400, "{path} {headers:?}");
        assert!(!sse.body.is_empty(), "says why");
    }
    // An origin the WebSocket would refuse: refused the same way.
    let sse = SseClient::get(
        server.addr,
        &news_path("ann", ""),
        &[("Origin", "http://evil.test")],
    )
    .await;
    assert_eq!(sse.status, 404);
    let (status, _) = cable_test::http(
        server.addr,
        "PUT",
        "/events",
        &[("Origin", server.origin())],
        None,
    )
    .await;
    assert_eq!(status, 405);
    eventually("no session left behind", || async {
        server.cable.stats().connections == 0
    })
    .await;
}

#[tokio::test]
async fn raw_mode_sends_broadcasts_only_and_heartbeat_comments() {
    let server = server().await;
    let mut sse = open(&server, &news_path("ann", "&raw=1"), &[]).await;
    assert_eq!(sse.status, 200);
    // Nothing typed: the first event is the heartbeat comment (300 ms).
    let first = sse.next_event().await;
    assert_eq!(first.comment.as_deref(), Some("ping"), "{first:?}");
    publish(&server, 1).await;
    let mut e = sse.next_event().await;
    while e.comment.is_some() {
        e = sse.next_event().await;
    }
    assert_eq!((e.event, e.data.as_str()), (None, r#"{"n":1}"#));
}

#[tokio::test]
async fn a_post_of_jsonl_commands_subscribes_and_performs() {
    let server = server().await;
    let subscribe = json!({"command": "subscribe", "identifier": news()});
    let perform = json!({
        "command": "message",
        "identifier": news(),
        "data": json!({"action": "ping"}).to_string(),
    });
    let body = format!("{subscribe}\n{perform}\n");
    let mut sse = SseClient::post(
        server.addr,
        "/events?user=ann",
        &[("Origin", server.origin())],
        &body,
    )
    .await;
    assert_eq!(sse.status, 200);
    welcomed_and_confirmed(&mut sse).await;
    // A POST gets whole frames.
    let pong = sse.next_non_ping().await;
    let frame: Value = serde_json::from_str(&pong.data).unwrap();
    assert_eq!(
        frame,
        json!({"identifier": news(), "message": {"pong": true}})
    );
    let bad = SseClient::post(
        server.addr,
        "/events?user=ann",
        &[("Origin", server.origin())],
        "nope\n",
    )
    .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn a_remote_disconnect_without_reconnect_says_retry_in_a_year() {
    let server = server().await;
    let mut sse = open(&server, &news_path("ann", ""), &[]).await;
    welcomed_and_confirmed(&mut sse).await;
    server
        .cable
        .remote_disconnect(&Identifiers::new().with("current_user", "ann"), false)
        .await
        .unwrap();
    let e: SseEvent = sse.next_non_ping().await;
    assert_eq!(e.event.as_deref(), Some("disconnect"));
    assert_eq!(e.retry.as_deref(), Some("31536000000"));
    assert!(sse.ends_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn shutdown_sends_server_restart_and_ends_the_stream() {
    let mut server = server().await;
    let mut sse = open(&server, &news_path("ann", ""), &[]).await;
    welcomed_and_confirmed(&mut sse).await;
    let (_, shut) = tokio::join!(
        async {
            let e = sse.next_non_ping().await;
            assert_eq!(e.event.as_deref(), Some("disconnect"));
            let frame: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(frame["reason"], "server_restart");
            assert_eq!(frame["reconnect"], true);
            assert_eq!(e.retry, None);
            assert!(sse.ends_within(Duration::from_secs(5)).await);
        },
        server.shutdown()
    );
    let _: () = shut;
}

#[tokio::test]
async fn a_client_that_goes_away_ends_its_session() {
    let server = server().await;
    let mut sse = open(&server, &news_path("ann", ""), &[]).await;
    welcomed_and_confirmed(&mut sse).await;
    assert_eq!(server.cable.stats().connections, 1);
    drop(sse);
    eventually("the session ended with the response", || async {
        server.cable.stats().connections == 0 && server.cable.stats().streams == 0
    })
    .await;
}
