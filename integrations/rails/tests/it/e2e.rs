//! The whole path over real sockets: cable-server's router in-process, raw
//! WebSocket clients carrying cookies and signed names that Ruby made.

use cable_core::{async_trait, Cable, CableConfig, Channel, ChannelError, Context};
use cable_rails::{GlobalId, RailsConfig, PUBSUB_CHANNEL, TURBO_CHANNEL};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::*;

const UNAUTHORIZED: &str = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;

/// Transmits what the connection was identified as.
#[derive(Default)]
struct WhoAmIChannel;

#[async_trait]
impl Channel for WhoAmIChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let ids: serde_json::Map<String, Value> = ctx
            .identifiers()
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::from(v)))
            .collect();
        ctx.transmit(&json!({
            "identifiers": ids,
            "connection_identifier": ctx.connection_identifier(),
        }))
    }
}

fn who_am_i() -> Value {
    json!({"channel": "WhoAmIChannel"})
}

/// Everything on: the session with `identifiers`, Turbo, $pubsub signed
/// (with AnyCable's secret) and public as `public` says.
async fn rails_server(identifiers: &[&str], public: bool) -> TestServer {
    let mut c = RailsConfig::new(current_secret());
    c.session_cookie = Some(SESSION_COOKIE.into());
    c.identifiers = identifiers.iter().map(|s| s.parse().unwrap()).collect();
    c.global_id_app = Some("my-app".into());
    c.turbo = true;
    c.pubsub_signed = true;
    c.pubsub_public = public;
    c.streams_secret = Some("anycable-streams-secret".into());
    let rails = c.build().unwrap();
    let mut core = CableConfig::default();
    core.reject_unknown_channels = true;
    let builder = rails
        .install(Cable::builder().config(core))
        .channel("WhoAmIChannel", WhoAmIChannel::default);
    TestServer::start(builder).await
}

/// A server identifying `current_user` by the session's `user_id` (public
/// pubsub streams if `public`) and a client signed in as user 1.
async fn signed_in(public: bool) -> (TestServer, Client) {
    let server = rails_server(&["current_user=user_id"], public).await;
    let client = server
        .connect_welcomed(Some(&session_cookie("user_id")))
        .await;
    (server, client)
}

/// Subscribes `client` to `identifier` and expects what is broadcast on
/// `stream` to arrive on that subscription.
async fn receives_broadcasts(
    server: &TestServer,
    client: &mut Client,
    identifier: &Value,
    stream: &str,
    message: Value,
) {
    client.expect_confirm(identifier).await;
    server.cable.broadcast(stream, &message).await.unwrap();
    assert_eq!(
        client.recv_json().await,
        json!({"identifier": identifier.to_string(), "message": message})
    );
}

fn session_cookie(case: &str) -> String {
    let v = find(&sessions()["vectors"], |v| v["case"] == case);
    format!(
        "theme=dark; {SESSION_COOKIE}={}",
        str_of(v, "cookie_header_value")
    )
}

async fn identified_as(server: &TestServer, cookie: &str) -> Value {
    let mut client = server.connect_welcomed(Some(cookie)).await;
    let identifier = who_am_i().to_string();
    client
        .send_json(json!({"command": "subscribe", "identifier": identifier}))
        .await;
    // What `subscribed` transmits comes before the confirmation, as in Rails.
    let msg = client.recv_json().await;
    assert_eq!(msg["identifier"], identifier);
    let confirm = client.recv_json().await;
    assert_eq!(confirm["type"], "confirm_subscription");
    msg["message"].clone()
}

async fn expect_unauthorized(server: &TestServer, cookie: Option<&str>) {
    let mut client = server.connect(cookie).await;
    let frames = client.expect_close(CloseCode::Normal).await;
    assert_eq!(frames, [UNAUTHORIZED], "cookie {cookie:?}");
}

#[tokio::test]
async fn rails_session_cookie_identifies_the_user() {
    let server = rails_server(&["current_user=user_id"], false).await;
    let me = identified_as(&server, &session_cookie("user_id")).await;
    assert_eq!(
        me,
        json!({"identifiers": {"current_user": "1"}, "connection_identifier": "1"})
    );
}

#[tokio::test]
async fn devise_session_identifies_the_user_by_global_id() {
    let server = rails_server(&["current_user=warden:user as User"], false).await;
    let me = identified_as(&server, &session_cookie("warden")).await;
    let gid = GlobalId::new("my-app", "User", 42).to_param();
    // What Rails' connection_identifier is for `identified_by :current_user`
    // with current_user = User.find(42): remote disconnects from the Rails
    // app (`remote_connections.where(current_user: user)`) reach this one.
    assert_eq!(
        me,
        json!({"identifiers": {"current_user": gid}, "connection_identifier": gid})
    );
}

#[tokio::test]
async fn bad_or_missing_session_cookies_are_unauthorized() {
    let server = rails_server(&["current_user=user_id"], false).await;
    let good = find(&sessions()["vectors"], |v| v["case"] == "user_id");
    let value = str_of(good, "cookie_header_value");
    // One character of the ciphertext changed.
    let mut tampered = value.to_owned();
    let c = if tampered.starts_with('A') { "B" } else { "A" };
    tampered.replace_range(0..1, c);
    for cookie in [
        Some(format!("{SESSION_COOKIE}={tampered}")),
        Some(format!("{SESSION_COOKIE}=nonsense")),
        Some(format!("other_session={value}")),
        // Made by Rails with the default (Marshal) serializer.
        Some(session_cookie("marshal")),
        // A valid session without user_id.
        Some(session_cookie("warden")),
        None,
    ] {
        expect_unauthorized(&server, cookie.as_deref()).await;
    }
    assert!(server.cable.stats().unauthorized >= 6);
}

#[tokio::test]
async fn anonymous_allowed_when_configured() {
    let mut c = RailsConfig::new(current_secret());
    c.session_cookie = Some(SESSION_COOKIE.into());
    c.identifiers = vec!["current_user=user_id".parse().unwrap()];
    c.allow_anonymous = true;
    let rails = c.build().unwrap();
    let server = TestServer::start(
        rails
            .install(Cable::builder())
            .channel("WhoAmIChannel", WhoAmIChannel::default),
    )
    .await;
    let anon = identified_as(&server, "_my_app_session=garbage").await;
    assert_eq!(
        anon,
        json!({"identifiers": {}, "connection_identifier": ""})
    );
    let me = identified_as(&server, &session_cookie("user_id")).await;
    assert_eq!(me["identifiers"]["current_user"], "1");
}

fn turbo_vector(case: &str) -> &'static Value {
    find(&streams()["turbo"], |v| {
        v["case"] == case && (v["kdf"] == "SHA256" || v["expect"] == "invalid")
    })
}

#[tokio::test]
async fn turbo_subscription_with_a_rails_signed_name_receives_broadcasts() {
    let (server, mut client) = signed_in(false).await;
    let v = turbo_vector("model_and_symbol");
    let identifier =
        json!({"channel": TURBO_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")});
    let stream = str_of(v, "stream_name");
    assert_eq!(stream, "Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages");
    // What Turbo::StreamsChannel.broadcast_append_to(room, :messages, ...) publishes.
    let html = r#"<turbo-stream action="append" target="messages"><template><p>hi</p></template></turbo-stream>"#;
    receives_broadcasts(&server, &mut client, &identifier, stream, json!(html)).await;
}

#[tokio::test]
async fn forged_turbo_names_are_rejected() {
    let (server, mut client) = signed_in(false).await;
    // The connection's own internal stream (action_cable/1) is all there is.
    let streams = server.cable.stats().streams;
    for case in [
        "forged_name",
        "other_secret",
        "tampered_digest",
        "sha1_digest",
        "no_separator",
    ] {
        let v = turbo_vector(case);
        assert_eq!(v["expect"], "invalid");
        let id = json!({"channel": TURBO_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")});
        client.expect_reject(&id).await;
    }
    client
        .expect_reject(&json!({"channel": TURBO_CHANNEL}))
        .await;
    // A plain stream name is not a signed one.
    client
        .expect_reject(&json!({"channel": TURBO_CHANNEL, "signed_stream_name": "messages"}))
        .await;
    assert_eq!(server.cable.stats().streams, streams);
}

#[tokio::test]
async fn pubsub_signed_and_public_streams() {
    let (server, mut client) = signed_in(true).await;

    let v = find(&streams()["pubsub"], |v| {
        v["case"] == "urlsafe_base64" && v["stream_name"] == "ü?>>~"
    });
    let signed =
        json!({"channel": PUBSUB_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")});
    receives_broadcasts(&server, &mut client, &signed, "ü?>>~", json!({"n": 1})).await;

    let public = json!({"channel": PUBSUB_CHANNEL, "stream_name": "news"});
    receives_broadcasts(&server, &mut client, &public, "news", json!({"n": 2})).await;

    let forged = find(&streams()["pubsub"], |v| v["case"] == "other_secret");
    client
        .expect_reject(&json!({"channel": PUBSUB_CHANNEL, "signed_stream_name": str_of(forged, "signed_stream_name")}))
        .await;
    client
        .expect_reject(&json!({"channel": PUBSUB_CHANNEL}))
        .await;
}

#[tokio::test]
async fn pubsub_public_streams_are_refused_unless_enabled() {
    let (_server, mut client) = signed_in(false).await;
    client
        .expect_reject(&json!({"channel": PUBSUB_CHANNEL, "stream_name": "news"}))
        .await;
    let v = find(&streams()["pubsub"], |v| {
        v["case"] == "strict_base64" && v["stream_name"] == "chat/2024"
    });
    client
        .expect_confirm(&json!({"channel": PUBSUB_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")}))
        .await;
}

#[tokio::test]
async fn install_registers_only_what_is_enabled() {
    let mut c = RailsConfig::new(current_secret());
    c.turbo = false;
    let rails = c.build().unwrap();
    let mut core = CableConfig::default();
    core.reject_unknown_channels = true;
    let server = TestServer::start(rails.install(Cable::builder().config(core))).await;
    // No session_cookie: no hook, so anyone connects (cable's default).
    let mut client = server.connect_welcomed(None).await;
    let v = turbo_vector("model_and_symbol");
    client
        .expect_reject(&json!({"channel": TURBO_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")}))
        .await;
    client
        .expect_reject(&json!({"channel": PUBSUB_CHANNEL, "stream_name": "news"}))
        .await;
}

/// A whisper on `identifier` from `from` reaches `to` when `reaches`, never
/// `from` itself.
async fn whisper(from: &mut Client, to: &mut Client, identifier: &Value, reaches: bool) {
    let id = identifier.to_string();
    from.send_json(json!({"command": "whisper", "identifier": id, "data": {"event": "typing"}}))
        .await;
    if reaches {
        assert_eq!(
            to.recv_json().await,
            json!({"identifier": id, "message": {"event": "typing"}})
        );
    } else {
        to.expect_silence(std::time::Duration::from_millis(300))
            .await;
    }
    from.expect_silence(std::time::Duration::from_millis(100))
        .await;
}

#[tokio::test]
async fn pubsub_public_streams_take_whispers_and_signed_ones_only_when_allowed() {
    for signed_whispers in [false, true] {
        let mut c = RailsConfig::new(current_secret());
        c.pubsub_signed = true;
        c.pubsub_public = true;
        c.pubsub_signed_whispers = signed_whispers;
        c.streams_secret = Some("anycable-streams-secret".into());
        let server = TestServer::start(c.build().unwrap().install(Cable::builder())).await;
        let mut ann = server.connect_welcomed(None).await;
        let mut bob = server.connect_welcomed(None).await;

        let public = json!({"channel": PUBSUB_CHANNEL, "stream_name": "news"});
        let v = find(&streams()["pubsub"], |v| {
            v["case"] == "strict_base64" && v["stream_name"] == "chat/2024"
        });
        let signed = json!({"channel": PUBSUB_CHANNEL, "signed_stream_name": str_of(v, "signed_stream_name")});
        for identifier in [&public, &signed] {
            for c in [&mut ann, &mut bob] {
                c.expect_confirm(identifier).await;
            }
        }
        whisper(&mut ann, &mut bob, &public, true).await;
        whisper(&mut ann, &mut bob, &signed, signed_whispers).await;

        // Presence is on for every $pubsub stream.
        let id = signed.to_string();
        ann.send_json(json!({"command": "join", "identifier": id, "presence": {"id": "ann", "info": {"name": "Ann"}}}))
            .await;
        let join = json!({"type": "presence", "identifier": id, "message": {"type": "join", "id": "ann", "info": {"name": "Ann"}}});
        assert_eq!(bob.recv_json().await, join);
        assert_eq!(ann.recv_json().await, join);
    }
}
