//! AnyCable's extended protocol over a real WebSocket: negotiated as
//! `actioncable-v1-ext-json`, a session id in the welcome, and a resume by
//! `?sid=` on a new socket.

use serde_json::{json, Value};

/// Broadcasts `{"n": n}` on `news`.
async fn publish(server: &cable_test::TestServer, n: u64) {
    server
        .cable
        .broadcast("news", &json!({ "n": n }))
        .await
        .unwrap();
}

/// `@anycable/web`'s offer.
const EXT: (&str, &str) = cable_test::EXT_CLIENT_PROTOCOLS;

#[tokio::test]
async fn the_extended_protocol_is_negotiated_and_a_session_resumes_by_sid() {
    let cable = crate::support::news_cable();
    let app = cable_server::router(cable.clone(), cable_test::TestServer::config())
        .merge(cable_server::ops_router(cable.clone(), Default::default()));
    let server = cable_test::TestServer::serve(app, cable).await;
    let origin = ("Origin", server.origin());
    let mut c = cable_test::Client::connect(&server.url("/cable?user=ann"), &[EXT, origin]).await;
    assert_eq!(c.protocol.as_deref(), Some("actioncable-v1-ext-json"));
    let welcome: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(welcome["type"], "welcome");
    let sid = welcome["sid"].as_str().unwrap().to_owned();
    assert_eq!(sid.len(), 21);
    let id = json!({"channel": "NewsChannel", "stream": "news"}).to_string();
    c.subscribe(&id).await;
    publish(&server, 1).await;
    let first: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(first["offset"], 1);
    assert_eq!(first["stream_id"], "news");
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    c.leave().await;

    // Missed while away.
    publish(&server, 2).await;

    // Back with the sid and no credentials: restored, no connect hook.
    let mut back =
        cable_test::Client::connect(&server.url(&format!("/cable?sid={sid}")), &[EXT, origin])
            .await;
    let welcome: Value = serde_json::from_str(&back.recv().await).unwrap();
    assert_eq!(welcome["restored"], true, "{welcome}");
    assert_eq!(welcome["restored_ids"], json!([id]));
    assert_ne!(welcome["sid"], sid.as_str());
    back.send_json(json!({"command": "history", "identifier": id,
        "history": {"streams": {"news": {"epoch": epoch, "offset": 1}}}}))
        .await;
    back.expect(&format!(
        r#"{{"identifier":{},"message":{{"n":2}},"stream_id":"news","epoch":"{epoch}","offset":2}}"#,
        serde_json::to_string(&id).unwrap()
    ))
    .await;
    back.expect(&format!(
        r#"{{"type":"confirm_history","identifier":{}}}"#,
        serde_json::to_string(&id).unwrap()
    ))
    .await;
    // And live broadcasts reach the restored subscription.
    publish(&server, 3).await;
    let live: Value = serde_json::from_str(&back.recv().await).unwrap();
    assert_eq!(live["offset"], 3);

    // The figures: three appends, one history read, one restored session.
    let (_, stats) = cable_test::http(server.addr, "GET", "/stats", &[], None).await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["history_appends"], 3, "{stats}");
    assert_eq!(stats["history_reads"], 1);
    assert_eq!(stats["history_misses"], 0);
    assert_eq!(stats["restored_sessions"], 1);
    assert_eq!(stats["broker"], "memory");
    let (_, metrics) = cable_test::http(server.addr, "GET", "/metrics", &[], None).await;
    for line in [
        "cable_history_appends_total 3",
        "cable_history_reads_total 1",
        "cable_history_misses_total 0",
        "cable_restored_sessions_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The plain protocol on the same server: Rails' welcome.
    let mut plain = cable_test::Client::connect(
        &server.url("/cable?user=bob"),
        &[cable_test::JS_CLIENT_PROTOCOLS, origin],
    )
    .await;
    assert_eq!(plain.protocol.as_deref(), Some("actioncable-v1-json"));
    plain.expect(r#"{"type":"welcome"}"#).await;
}
