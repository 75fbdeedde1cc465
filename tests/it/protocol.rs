//! Commands in, exact frames out.

use std::time::Duration;

use cable_core::{async_trait, authenticate_with, Channel, ChannelError, Context, Identifiers};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn subscribe_confirm_and_reject() {
    let server = TestServer::chat().await;
    let mut c = Client::connect(&server, "alice").await;
    c.send(&format!(
        r#"{{"command":"subscribe","identifier":{}}}"#,
        serde_json::to_string(&room("1")).unwrap()
    ))
    .await;
    c.expect(r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","type":"confirm_subscription"}"#)
        .await;
    c.send_json(json!({"command": "subscribe", "identifier": room("forbidden")}))
        .await;
    c.expect(r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"forbidden\"}","type":"reject_subscription"}"#)
        .await;
    c.assert_alive(&room("1")).await;
}

#[tokio::test]
async fn speak_reaches_the_room_and_only_the_room() {
    let server = TestServer::chat().await;
    let mut alice = Client::joined(&server, "alice", &room("lobby")).await;
    let mut bob = Client::joined(&server, "bob", &room("lobby")).await;
    let mut carol = Client::joined(&server, "carol", &room("other")).await;
    alice
        .perform(
            &room("lobby"),
            json!({"body": "hi <all> & you", "action": "speak"}),
        )
        .await;
    // Rails' encoder escapes < > & in strings.
    let expected = message(
        &room("lobby"),
        r#"{"user":"alice","body":"hi \u003call\u003e \u0026 you"}"#,
    );
    alice.expect(&expected).await;
    bob.expect(&expected).await;
    carol.expect_silence(SHORT).await;
}

#[tokio::test]
async fn echo_returns_the_whole_data() {
    let server = TestServer::chat().await;
    let mut c = Client::joined(&server, "alice", &room("1")).await;
    c.send(&format!(
        r#"{{"command":"message","identifier":{},"data":"{{\"text\":\"hi\",\"action\":\"echo\"}}"}}"#,
        serde_json::to_string(&room("1")).unwrap()
    ))
    .await;
    c.expect(&message(&room("1"), r#"{"text":"hi","action":"echo"}"#))
        .await;
}

#[tokio::test]
async fn duplicate_subscribe_is_ignored() {
    let server = TestServer::chat().await;
    let mut c = Client::joined(&server, "alice", &room("1")).await;
    c.send_json(json!({"command": "subscribe", "identifier": room("1")}))
        .await;
    c.expect_silence(SHORT).await;
    // Still one subscription: a broadcast arrives once.
    server.broadcast("chat_1", &json!({"n": 1})).await;
    c.expect(&message(&room("1"), r#"{"n":1}"#)).await;
    c.expect_silence(SHORT).await;
    // Same content, other key order: a different subscription, as in Rails.
    let other = r#"{"room":"1","channel":"ChatChannel"}"#;
    c.subscribe(other).await;
}

#[tokio::test]
async fn unsubscribe_stops_deliveries() {
    let server = TestServer::chat().await;
    let mut c = Client::joined(&server, "alice", &room("1")).await;
    c.subscribe(&room("2")).await;
    c.send_json(json!({"command": "unsubscribe", "identifier": room("1")}))
        .await;
    c.expect_silence(SHORT).await;
    server.broadcast("chat_1", &json!({"n": 1})).await;
    server.broadcast("chat_2", &json!({"n": 2})).await;
    c.expect(&message(&room("2"), r#"{"n":2}"#)).await;
    c.expect_silence(SHORT).await;
    // Only room 2's stream is left in the registry.
    assert_eq!(server.cable.stats().streams, 2); // chat_2 + action_cable/alice
}

#[tokio::test]
async fn commands_for_unknown_subscriptions_and_garbage_are_ignored() {
    let server = TestServer::chat().await;
    let mut c = Client::connect(&server, "alice").await;
    let mut other = Client::joined(&server, "bob", &room("1")).await;
    c.subscribe(&room("1")).await;
    for frame in [
        // message to an identifier that is not subscribed
        json!({"command": "message", "identifier": room("2"), "data": "{\"action\":\"echo\"}"})
            .to_string(),
        // unsubscribe from one that is not subscribed
        json!({"command": "unsubscribe", "identifier": room("9")}).to_string(),
        // unknown channel
        json!({"command": "subscribe", "identifier": "{\"channel\":\"NopeChannel\"}"}).to_string(),
        // identifier that is not JSON / has no channel
        json!({"command": "subscribe", "identifier": "nope"}).to_string(),
        json!({"command": "subscribe", "identifier": "{\"room\":1}"}).to_string(),
        // malformed JSON, non-objects, unknown or missing command
        "{\"command\":".to_owned(),
        "[1,2,3]".to_owned(),
        "\"hello\"".to_owned(),
        json!({"command": "dance", "identifier": room("1")}).to_string(),
        json!({"identifier": room("1")}).to_string(),
        // data missing, not a string, not JSON, not an object
        json!({"command": "message", "identifier": room("1")}).to_string(),
        json!({"command": "message", "identifier": room("1"), "data": {"action": "echo"}})
            .to_string(),
        json!({"command": "message", "identifier": room("1"), "data": "{nope"}).to_string(),
        json!({"command": "message", "identifier": room("1"), "data": "[1]"}).to_string(),
        // missing action (-> receive, which ChatChannel lacks) and unknown action
        json!({"command": "message", "identifier": room("1"), "data": "{}"}).to_string(),
        json!({"command": "message", "identifier": room("1"), "data": "{\"action\":\"fly\"}"})
            .to_string(),
    ] {
        c.send(&frame).await;
    }
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1u8, 2, 3,
    ]))
    .await
    .unwrap();
    c.expect_silence(SHORT).await;
    other.expect_silence(Duration::from_millis(50)).await;
    c.assert_alive(&room("1")).await;
    other.assert_alive(&room("1")).await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn oversized_message_closes_only_that_connection() {
    let server = TestServer::chat().await;
    let mut big = Client::connect(&server, "alice").await;
    let mut other = Client::joined(&server, "bob", &room("1")).await;
    let body = "x".repeat(70 * 1024);
    big.perform(&room("1"), json!({"body": body, "action": "speak"}))
        .await;
    assert!(big.expect_close(CloseCode::Size).await.is_empty());
    other.expect_silence(SHORT).await;
    other.assert_alive(&room("1")).await;
    // A message just under the limit is fine.
    let mut ok = Client::joined(&server, "carol", &room("1")).await;
    let body = "y".repeat(60 * 1024);
    ok.perform(&room("1"), json!({"body": body, "action": "speak"}))
        .await;
    let frame = other.recv().await;
    assert!(frame.len() > 60 * 1024);
}

#[derive(Default)]
struct GreeterChannel;

#[async_trait]
impl Channel for GreeterChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let user = ctx
            .identified("current_user")
            .unwrap_or_default()
            .to_owned();
        ctx.transmit(&json!({"hello": user}))?;
        ctx.stream_for(&user);
        Ok(())
    }
    async fn unsubscribed(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx
            .broadcast("greeter_log", &json!({"left": ctx.identifier()}))
            .await;
    }
}

#[tokio::test]
async fn transmit_in_subscribed_arrives_before_the_confirmation() {
    let server = TestServer::start(
        chat_example::cable_builder().channel("GreeterChannel", GreeterChannel::default),
    )
    .await;
    let mut c = Client::connect(&server, "alice").await;
    let id = r#"{"channel":"GreeterChannel"}"#;
    c.send_json(json!({"command": "subscribe", "identifier": id}))
        .await;
    c.expect(&message(id, r#"{"hello":"alice"}"#)).await;
    c.expect(&confirm(id)).await;
    // stream_for uses Rails' broadcasting_for naming: greeter:<param>.
    server
        .broadcast("greeter:alice", &json!({"to": "alice"}))
        .await;
    c.expect(&message(id, r#"{"to":"alice"}"#)).await;
}

#[tokio::test]
async fn commands_sent_before_the_welcome_are_processed_in_order_after_it() {
    let builder = chat_example::cable_builder().authenticate(authenticate_with(|req| async move {
        // A slow hook, so the commands below surely arrive before the welcome.
        tokio::time::sleep(Duration::from_millis(300)).await;
        chat_example::identify(req).await
    }));
    let server = TestServer::start(builder).await;
    let mut c = Client::connect_raw(&server.url("?user=alice"), &[("Origin", ORIGIN)])
        .await
        .unwrap();
    c.send_json(json!({"command": "subscribe", "identifier": room("1")}))
        .await;
    c.perform(&room("1"), json!({"n": 1, "action": "echo"}))
        .await;
    c.send_json(json!({"command": "subscribe", "identifier": room("forbidden")}))
        .await;
    c.expect(r#"{"type":"welcome"}"#).await;
    c.expect(&confirm(&room("1"))).await;
    c.expect(&message(&room("1"), r#"{"n":1,"action":"echo"}"#))
        .await;
    c.expect(&reject(&room("forbidden"))).await;
    let _ = Identifiers::new();
}

#[tokio::test]
async fn admin_broadcast_reaches_subscribers() {
    let server = TestServer::chat().await;
    let mut c = Client::joined(&server, "alice", &room("news")).await;
    let body = r#"{"stream":"chat_news","message":{"user":"admin","body":"hello"}}"#;
    let (status, _) = server.post("/admin/broadcast", body).await;
    assert_eq!(status, 200);
    c.expect(&message(
        &room("news"),
        r#"{"user":"admin","body":"hello"}"#,
    ))
    .await;
}

#[tokio::test]
async fn benchmark_channel_echo_and_broadcast() {
    let server = TestServer::chat().await;
    let id = r#"{"channel":"BenchmarkChannel"}"#;
    let mut a = Client::connect(&server, "a").await;
    let mut b = Client::connect(&server, "b").await;
    a.subscribe(id).await;
    b.subscribe(id).await;
    a.perform(id, json!({"action": "echo", "payload": {"t": 1}}))
        .await;
    a.expect(&message(id, r#"{"action":"echo","payload":{"t":1}}"#))
        .await;
    b.expect_silence(SHORT).await;
    a.perform(id, json!({"action": "broadcast", "payload": {"t": 2}}))
        .await;
    let all = message(id, r#"{"action":"broadcast","payload":{"t":2}}"#);
    a.expect(&all).await;
    a.expect(&message(
        id,
        r#"{"action":"broadcastResult","payload":{"t":2}}"#,
    ))
    .await;
    b.expect(&all).await;
    b.expect_silence(SHORT).await;
}
