//! The chat example as a library, so tests can run it in-process.
//!
//! - `ChatChannel` (`{"channel":"ChatChannel","room":R}`): streams `chat_<room>`
//!   (with history for clients on AnyCable's extended protocol, so that
//!   `@anycable/web` resumes with what it missed), with presence (who is in
//!   the room: a page that joins is present as its user) and whispers ("ann
//!   is typing…") on it, for AnyCable's `join`, `leave`, `presence` and
//!   `whisper` commands; rejects room `forbidden`; `speak` broadcasts `{"user","body"}` to the room,
//!   `echo` transmits the data back (the whole object, as Rails does).
//! - `BenchmarkChannel`: the websocket-shootout server's channel: a private
//!   stream plus `all`; `echo` and `broadcast` (then `broadcastResult`).
//! - Users come from the `user` cookie or `?user=NAME`; none, or `banned`, is
//!   refused.
//!
//! Each piece is documented with its test, written with `cable-test` as the
//! Rails guides write channel tests (`assert_has_stream`,
//! `assert_broadcast_on`, `assert_reject_connection`): see [`ChatChannel`],
//! [`BenchmarkChannel`] and [`identify`]. They run as doc tests, without
//! sockets.

pub mod cli;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cable_core::{
    async_trait, authenticate_with, Cable, Channel, ChannelError, ChannelResult, ConnectRequest,
    Context, Identifiers, StreamOptions, Unauthorized,
};
use cable_server::ServerConfig;
use serde::Deserialize;
use serde_json::{json, Value};

const PAGE: &str = include_str!("../assets/index.html");
const ACTIONCABLE_JS: &str = include_str!("../assets/vendor/actioncable.esm.js");
/// The same chat page on `@cable-rs/client` (js-client/), served at
/// `/cable-client`: made from [`PAGE`], so that only the import (and the
/// title and the line saying which client it is) differs.
static CABLE_CLIENT_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    PAGE.replacen("<title>cable chat</title>", "<title>cable chat (@cable-rs/client)</title>", 1)
        .replacen(
            "the client is the unmodified <code>@rails/actioncable</code>.",
            "the client is <code>@cable-rs/client</code> (<code>js-client/</code>), a drop-in for \
             <code>@rails/actioncable</code>: only the import differs from <a href=\"/\">the other page</a>.",
            1,
        )
        .replacen("/assets/actioncable.esm.js", "/assets/cable-client.esm.js", 1)
});
/// js-client's single-file build (`npm run build:asset` in js-client).
const CABLE_CLIENT_JS: &str = include_str!("../assets/vendor/cable-client.esm.js");

/// `ChatChannel`: one room per subscription.
///
/// ```
/// use cable_core::Identifiers;
/// use cable_test::{Request, TestCable};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cable = TestCable::new(chat_example::cable_builder());
/// let conn = cable
///     .stub_connection(Identifiers::new().with("current_user", "alice"))
///     .await;
///
/// // Subscribing streams from the room.
/// let room = conn.subscribe("ChatChannel", json!({"room": "15"})).await;
/// room.assert_confirmed();
/// room.assert_has_stream("chat_15");
///
/// // `speak` broadcasts to the room, saying who spoke.
/// room.perform("speak", json!({"body": "hello"})).await;
/// cable.assert_broadcast_on("chat_15", json!({"user": "alice", "body": "hello"}));
///
/// // `echo` transmits the data back to this subscriber only, action included.
/// room.perform("echo", json!({"n": 1})).await;
/// room.assert_transmitted(json!({"action": "echo", "n": 1}));
/// cable.assert_broadcasts("chat_15", 1);
///
/// // No room, or the forbidden one: rejected, with no stream left behind.
/// conn.subscribe("ChatChannel", json!({})).await.assert_rejected();
/// let forbidden = conn.subscribe("ChatChannel", json!({"room": "forbidden"})).await;
/// forbidden.assert_rejected();
/// forbidden.assert_no_streams();
///
/// // Leaving stops the stream.
/// room.unsubscribe().await;
/// room.assert_no_streams();
///
/// // On AnyCable's extended protocol (`@anycable/web`) the room keeps
/// // history: its broadcasts carry their position, to resume from.
/// let ext = cable.connect(Request::new().ext().query("user", "bob")).await.unwrap();
/// ext.subscribe("ChatChannel", json!({"room": "16"})).await.assert_confirmed();
/// cable.cable().broadcast("chat_16", &json!({"body": "hi"})).await.unwrap();
/// ext.settle().await;
/// let last: serde_json::Value = serde_json::from_str(ext.frames().last().unwrap()).unwrap();
/// assert_eq!((last["stream_id"].as_str(), last["offset"].as_u64()), (Some("chat_16"), Some(1)));
///
/// // Presence and whispers (AnyCable's commands, on either protocol): the
/// // page joins the room's presence (as its user, whatever id it sends),
/// // and whispers while typing.
/// let frames = |c: &cable_test::Connection| -> Vec<serde_json::Value> {
///     c.frames().iter().filter_map(|f| serde_json::from_str(f).ok()).collect()
/// };
/// let id = r#"{"channel":"ChatChannel","room":"17"}"#;
/// let ann = cable.connect(Request::new().ext().query("user", "ann")).await.unwrap();
/// let bob = cable.connect(Request::new().query("user", "bob")).await.unwrap();
/// ann.subscribe_to(id).await.assert_confirmed();
/// bob.subscribe_to(id).await.assert_confirmed();
/// for c in [&ann, &bob] {
///     c.send(json!({"command": "join", "identifier": id, "presence": {"id": "me"}}));
///     c.settle().await;
/// }
/// ann.settle().await;
/// let joined = json!({"type": "presence", "identifier": id,
///                     "message": {"type": "join", "id": "bob", "info": {"name": "bob"}}});
/// assert!(frames(&ann).contains(&joined));
/// bob.send(json!({"command": "presence", "identifier": id, "data": {}}));
/// bob.settle().await;
/// let info = frames(&bob).into_iter().rev().find(|f| f["message"]["type"] == "info").unwrap();
/// assert_eq!(info["message"]["total"], 2);
/// assert_eq!(info["message"]["records"][0], json!({"id": "ann", "info": {"name": "ann"}}));
/// // A whisper reaches bob, not ann; bob's leave is told to ann at once.
/// let typing = json!({"event": "typing", "user": "ann"});
/// ann.send(json!({"command": "whisper", "identifier": id, "data": typing}));
/// ann.settle().await;
/// bob.settle().await;
/// assert!(frames(&bob).contains(&json!({"identifier": id, "message": typing})));
/// assert!(!frames(&ann).iter().any(|f| f["message"] == typing));
/// bob.send(json!({"command": "unsubscribe", "identifier": id}));
/// bob.settle().await;
/// ann.settle().await;
/// let left = json!({"type": "presence", "identifier": id, "message": {"type": "leave", "id": "bob"}});
/// assert!(frames(&ann).contains(&left));
/// # }
/// ```
#[derive(Default)]
pub struct ChatChannel;

/// The room's stream, from the subscription's params: not kept in a field,
/// because a session restored by sid recreates the channel without running
/// `subscribed` (its fields are not restored, its params are).
fn room_stream(ctx: &Context<'_>) -> Option<String> {
    param_to_string(ctx.param("room")).map(|room| format!("chat_{room}"))
}

fn param_to_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Channel for ChatChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        let Some(stream) = room_stream(ctx).filter(|s| s != "chat_forbidden") else {
            ctx.reject();
            return Ok(());
        };
        // The room is also where presence (who is in it) and whispers
        // ("ann is typing") go. History only for clients that can use it
        // (`@anycable/web`, on the extended protocol): they resume after a
        // reconnect with what they missed; a plain `@rails/actioncable`
        // client's room frames stay Rails' byte for byte.
        let mut options = StreamOptions::new().presence().whisper();
        if ctx.extended_protocol() {
            options = options.history();
        }
        ctx.stream_from_with(stream, options);
        // A page that joins is present as its identified user, whatever id
        // it sends, so nobody is listed under another's name. Nothing is
        // joined unless the page asks: plain clients that never join get
        // Rails' frames only.
        let user = ctx
            .identified("current_user")
            .unwrap_or_default()
            .to_owned();
        ctx.present_as(user.clone(), json!({ "name": user }));
        Ok(())
    }

    async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> ChannelResult {
        match action {
            "speak" => {
                let user = ctx.identified("current_user").unwrap_or_default();
                let msg =
                    json!({"user": user, "body": data.get("body").cloned().unwrap_or(Value::Null)});
                let stream = room_stream(ctx).unwrap_or_default();
                ctx.broadcast(&stream, &msg).await
            }
            "echo" => ctx.transmit(&data),
            _ => Err(ChannelError::UnknownAction(action.to_owned())),
        }
    }
}

static BENCH_IDS: AtomicU64 = AtomicU64::new(1);

/// `BenchmarkChannel`, as in websocket-shootout's ActionCable server.
///
/// ```
/// use cable_core::Identifiers;
/// use cable_test::TestCable;
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cable = TestCable::new(chat_example::cable_builder());
/// let conn = cable.stub_connection(Identifiers::new().with("current_user", "bench")).await;
/// let sub = conn.subscribe("BenchmarkChannel", json!({})).await;
/// sub.assert_has_stream("all");
/// let own = sub.streams().into_iter().find(|s| s.starts_with("benchmark:")).unwrap();
///
/// // `broadcast` goes to everyone, then `broadcastResult` to the sender.
/// sub.perform("broadcast", json!({"payload": "x"})).await;
/// cable.assert_broadcast_on("all", json!({"action": "broadcast", "payload": "x"}));
/// cable.assert_broadcast_on(&own, json!({"action": "broadcastResult", "payload": "x"}));
///
/// // `echo` comes back on the private stream only.
/// sub.perform("echo", json!({"payload": "y"})).await;
/// cable.assert_broadcasts("all", 1);
/// sub.assert_transmitted(json!({"action": "echo", "payload": "y"}));
/// # }
/// ```
#[derive(Default)]
pub struct BenchmarkChannel {
    id: String,
}

#[async_trait]
impl Channel for BenchmarkChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        self.id = format!("benchmark:{}", BENCH_IDS.fetch_add(1, Ordering::Relaxed));
        ctx.stream_from(self.id.clone());
        ctx.stream_from("all");
        Ok(())
    }

    async fn perform(
        &mut self,
        ctx: &mut Context<'_>,
        action: &str,
        mut data: Value,
    ) -> ChannelResult {
        match action {
            "echo" => ctx.broadcast(&self.id, &data).await,
            "broadcast" => {
                ctx.broadcast("all", &data).await?;
                data["action"] = Value::from("broadcastResult");
                ctx.broadcast(&self.id, &data).await
            }
            _ => Err(ChannelError::UnknownAction(action.to_owned())),
        }
    }
}

/// The connection hook: `user` cookie, else `?user=`; `banned` is refused.
///
/// ```
/// use cable_test::{Request, TestCable};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cable = TestCable::new(chat_example::cable_builder());
/// let conn = cable.connect(Request::new().cookie("user", "alice")).await.unwrap();
/// assert_eq!(conn.identified("current_user").as_deref(), Some("alice"));
/// // The cookie wins over the query.
/// let conn = cable
///     .connect(Request::new().cookie("user", "alice").query("user", "bob"))
///     .await
///     .unwrap();
/// assert_eq!(conn.identified("current_user").as_deref(), Some("alice"));
///
/// cable.assert_reject_connection(Request::new()).await;
/// cable.assert_reject_connection(Request::new().query("user", "")).await;
/// cable.assert_reject_connection(Request::new().query("user", "banned")).await;
/// # }
/// ```
pub async fn identify(req: ConnectRequest) -> Result<Identifiers, Unauthorized> {
    let user = req
        .cookie("user")
        .or_else(|| req.query("user"))
        .filter(|u| !u.is_empty());
    match user {
        None => Err(Unauthorized::because("no user cookie or ?user=")),
        Some("banned") => Err(Unauthorized::because("user is banned")),
        Some(u) => Ok(Identifiers::new().with("current_user", u)),
    }
}

/// A cable builder with the example's channels and connection hook (add an
/// adapter or config before building).
pub fn cable_builder() -> cable_core::CableBuilder {
    Cable::builder()
        .channel("ChatChannel", ChatChannel::default)
        .channel("BenchmarkChannel", BenchmarkChannel::default)
        .authenticate(authenticate_with(identify))
}

/// Options of the example app.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Transport settings (origins, limits, mount path).
    pub server: ServerConfig,
    /// Serve `/admin/broadcast` and `/admin/disconnect` to loopback clients.
    pub admin: bool,
}

/// The whole app: the page on the vendored `@rails/actioncable` (`/`), the same
/// page on js-client's `@cable-rs/client` (`/cable-client`), `/cable`,
/// optional admin endpoints.
pub fn app(cable: Cable, opts: &Options) -> Router {
    let mut router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/cable-client",
            get(|| async { Html(CABLE_CLIENT_PAGE.as_str()) }),
        )
        .route(
            "/assets/actioncable.esm.js",
            get(|| async { javascript(ACTIONCABLE_JS) }),
        )
        .route(
            "/assets/cable-client.esm.js",
            get(|| async { javascript(CABLE_CLIENT_JS) }),
        )
        .merge(cable_server::router(cable.clone(), opts.server.clone()));
    if opts.admin {
        router = router.merge(
            Router::new()
                .route("/admin/broadcast", post(admin_broadcast))
                .route("/admin/disconnect", post(admin_disconnect))
                .route_layer(axum::middleware::from_fn(loopback_only))
                .with_state(cable),
        );
    }
    router
}

/// The operator endpoints (`cable_server::ops_router`: `/metrics`,
/// `/stats`, `/health`) for loopback callers only, as the admin endpoints:
/// what `chat --ops` merges into [`app`], so a benchmark can watch the
/// server's tasks, descriptors and streams. `/_broadcast` and the presence
/// API stay off (no keys).
pub fn ops(cable: Cable) -> Router {
    cable_server::ops_router(cable, cable_server::OpsConfig::default())
        .route_layer(axum::middleware::from_fn(loopback_only))
}

fn javascript(source: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
}

#[derive(Deserialize)]
struct BroadcastBody {
    stream: String,
    message: Value,
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    #[serde(default = "yes")]
    reconnect: bool,
}

fn yes() -> bool {
    true
}

/// Admin endpoints answer loopback callers only; anyone else gets 403
/// before the body is read.
async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !peer.ip().is_loopback() {
        return (StatusCode::FORBIDDEN, "admin endpoints are loopback only").into_response();
    }
    next.run(request).await
}

/// An admin endpoint's answer: `{"ok":true}`, 413 for a message no client
/// could be sent, 502 when the adapter failed.
fn admin_answer(result: Result<(), cable_core::PubSubError>) -> Response {
    match result {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e @ cable_core::PubSubError::MessageTooLarge { .. }) => {
            (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn admin_broadcast(State(cable): State<Cable>, Json(body): Json<BroadcastBody>) -> Response {
    admin_answer(cable.broadcast(&body.stream, &body.message).await)
}

async fn admin_disconnect(
    State(cable): State<Cable>,
    Json(body): Json<DisconnectBody>,
) -> Response {
    let ids = Identifiers::new().with("current_user", body.user);
    admin_answer(cable.remote_disconnect(&ids, body.reconnect).await)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cable_client_page_differs_from_the_page_in_its_import_only() {
        let page = super::CABLE_CLIENT_PAGE.as_str();
        assert!(page.contains(r#"from "/assets/cable-client.esm.js""#));
        assert!(!page.contains("actioncable.esm.js"));
        assert!(page.contains("<title>cable chat (@cable-rs/client)</title>"));
        assert!(page.contains("<code>@cable-rs/client</code>"));
        let changed = page
            .lines()
            .zip(super::PAGE.lines())
            .filter(|(a, b)| a != b);
        assert_eq!(
            changed.count(),
            3,
            "title, the line naming the client, the import"
        );
    }

    /// The admin endpoints' answer to `body` from `peer`.
    async fn admin_status(peer: &str, body: &str) -> u16 {
        use tower::ServiceExt;
        let opts = super::Options {
            server: Default::default(),
            admin: true,
        };
        let cable = super::cable_builder().build();
        let mut request = axum::http::Request::post("/admin/broadcast")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let response = super::app(cable, &opts).oneshot(request).await.unwrap();
        response.status().as_u16()
    }

    /// `GET path` from `peer` to the app, with the ops endpoints when
    /// `ops`: the status and the body.
    async fn get(ops: bool, peer: &str, path: &str) -> (u16, String) {
        use tower::ServiceExt;
        let cable = super::cable_builder().build();
        let mut app = super::app(cable.clone(), &super::Options::default());
        if ops {
            app = app.merge(super::ops(cable));
        }
        let mut request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let response = app.oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn ops_endpoints_are_off_by_default_and_loopback_only() {
        let (status, metrics) = get(true, "127.0.0.1:5000", "/metrics").await;
        assert_eq!(status, 200);
        for figure in ["cable_tokio_alive_tasks", "cable_open_fds", "cable_streams"] {
            assert!(
                metrics.contains(&format!("\n{figure} ")),
                "{figure}: {metrics}"
            );
        }
        assert_eq!(get(true, "[::1]:5000", "/stats").await.0, 200);
        assert_eq!(get(true, "127.0.0.1:5000", "/health").await.0, 200);
        assert_eq!(get(true, "10.0.0.7:5000", "/metrics").await.0, 403);
        assert_eq!(get(true, "10.0.0.7:5000", "/health").await.0, 403);
        // No keys: the broadcast API stays off.
        assert_eq!(get(true, "127.0.0.1:5000", "/_broadcast").await.0, 405);
        assert_eq!(get(false, "127.0.0.1:5000", "/metrics").await.0, 404);
    }

    #[tokio::test]
    async fn admin_endpoints_answer_loopback_callers_only() {
        let ok = r#"{"stream":"chat_lobby","message":{"body":"hi"}}"#;
        assert_eq!(admin_status("127.0.0.1:5000", ok).await, 200);
        assert_eq!(admin_status("[::1]:5000", ok).await, 200);
        assert_eq!(admin_status("10.0.0.7:5000", ok).await, 403);
        // Refused before the body is read: no hint about what it should be.
        assert_eq!(admin_status("10.0.0.7:5000", "not json").await, 403);
        assert_eq!(admin_status("127.0.0.1:5000", "not json").await, 400);
    }
}
