//! The HTTP side: origin, subprotocol, non-WebSocket requests, auth, shutdown.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::*;

#[tokio::test]
async fn welcome_and_subprotocol() {
    let server = TestServer::chat().await;
    let c = Client::connect(&server, "alice").await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-json"));
}

#[tokio::test]
async fn no_subprotocol_offered_still_connects() {
    let server = TestServer::chat().await;
    let mut c = Client::connect_raw(&server.url("?user=alice"), &[("Origin", ORIGIN)])
        .await
        .unwrap();
    assert_eq!(c.protocol, None);
    c.expect(r#"{"type":"welcome"}"#).await;
}

#[tokio::test]
async fn bad_origin_gets_404() {
    let server = TestServer::chat().await;
    for headers in [
        vec![("Origin", "http://evil.test")],
        vec![], // no Origin at all
    ] {
        let mut h = headers.clone();
        h.push(("Cookie", "user=alice"));
        match Client::connect_raw(&server.url(""), &h).await {
            Err(WsError::Http(resp)) => {
                assert_eq!(resp.status(), 404);
                assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
                assert_eq!(resp.body().as_deref(), Some(&b"Page not found"[..]));
            }
            Err(e) => panic!("expected HTTP 404, got {e}"),
            Ok(_) => panic!("expected HTTP 404, got an upgrade"),
        }
    }
}

#[tokio::test]
async fn same_origin_as_host_is_allowed() {
    let server = TestServer::chat().await;
    let origin = format!("http://{}", server.addr);
    let mut c = Client::connect_raw(&server.url("?user=a"), &[("Origin", &origin)])
        .await
        .unwrap();
    c.expect(r#"{"type":"welcome"}"#).await;
}

#[tokio::test]
async fn non_websocket_request_gets_404() {
    let server = TestServer::chat().await;
    let (status, body) = http(server.addr, "GET", "/cable", None).await;
    assert_eq!((status, body.as_str()), (404, "Page not found"));
    let (status, _) = http(server.addr, "POST", "/cable", Some("{}")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn unauthorized_connection_is_told_and_closed() {
    let server = TestServer::chat().await;
    for (url, headers) in [
        (server.url(""), vec![("Origin", ORIGIN)]),
        (
            server.url(""),
            vec![("Origin", ORIGIN), ("Cookie", "user=banned")],
        ),
        (server.url("?user=banned"), vec![("Origin", ORIGIN)]),
    ] {
        let mut c = Client::connect_raw(&url, &headers).await.unwrap();
        // 101 first, then the disconnect frame and a 1000 close; no welcome.
        let texts = c.expect_close(CloseCode::Normal).await;
        assert_eq!(
            texts,
            vec![r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#]
        );
    }
    assert_eq!(server.cable.stats().unauthorized, 3);
}

#[tokio::test]
async fn ping_every_interval_with_unix_seconds() {
    let server = TestServer::chat().await;
    let mut c = Client::connect(&server, "alice").await;
    let mut pings = Vec::new();
    while pings.len() < 2 {
        match c.next_message().await {
            Some(tokio_tungstenite::tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(v["type"], "ping", "unexpected frame {t}");
                // Exactly two keys, in Rails' order.
                let secs = v["message"].as_u64().expect("integer seconds");
                assert_eq!(t.as_str(), format!(r#"{{"type":"ping","message":{secs}}}"#));
                pings.push(secs);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(pings.iter().all(|p| now.abs_diff(*p) <= 5));
}

#[tokio::test]
async fn shutdown_sends_server_restart_to_everyone() {
    let mut server = TestServer::chat().await;
    let mut a = Client::connect(&server, "alice").await;
    let mut b = Client::connect(&server, "bob").await;
    a.subscribe(&room("lobby")).await;
    server.shutdown().await;
    for c in [&mut a, &mut b] {
        let texts = c.expect_close(CloseCode::Normal).await;
        assert_eq!(
            texts,
            vec![r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#]
        );
    }
    assert_eq!(server.cable.stats().connections, 0);
    // New connections are refused once the server is down.
    assert!(
        Client::connect_raw(&server.url("?user=x"), &[("Origin", ORIGIN)])
            .await
            .is_err()
    );
}

#[tokio::test]
async fn remote_disconnect_through_admin_endpoint() {
    let server = TestServer::chat().await;
    let mut a1 = Client::connect(&server, "alice").await;
    let mut a2 = Client::connect(&server, "alice").await;
    let mut b = Client::connect(&server, "bob").await;
    let (status, _) = server
        .post("/admin/disconnect", r#"{"user":"alice"}"#)
        .await;
    assert_eq!(status, 200);
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            c.expect_close(CloseCode::Normal).await,
            vec![r#"{"type":"disconnect","reason":"remote","reconnect":true}"#]
        );
    }
    b.expect_silence(Duration::from_millis(300)).await;
    b.subscribe(&room("lobby")).await;
    b.assert_alive(&room("lobby")).await;

    // reconnect:false is passed through.
    let mut a3 = Client::connect(&server, "alice").await;
    server
        .cable
        .remote_disconnect(
            &cable_core::Identifiers::new().with("current_user", "alice"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        a3.expect_close(CloseCode::Normal).await,
        vec![r#"{"type":"disconnect","reason":"remote","reconnect":false}"#]
    );
}
