//! Issue 18, embedding: cable inside an axum app of the usual shape. The
//! app has a state type of its own and its own auth middleware; cable's
//! router merges into its `Router<AppState>`, the operator router is
//! nested under a prefix the app chose, the connection hook reads what the
//! middleware put on the request and the builder's app state, a channel
//! reads the app state, and the app is served by plain `axum::serve` with
//! `cable_server::shutdown` in its graceful-shutdown future.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cable_core::{
    async_trait, authenticate_with, Cable, Channel, ChannelResult, Context, Identifiers,
    Unauthorized,
};
use cable_server::{HttpExtensions, OpsConfig, ServerConfig};
use cable_test::{frames, Client};
use serde_json::json;

use crate::support::http;

/// The app's own state, as axum apps have.
#[derive(Clone)]
struct AppState {
    name: &'static str,
}

/// Put on the request by the app's auth middleware (as axum-login would).
#[derive(Clone)]
struct LoggedIn(String);

/// Builder state the channel and the hook read.
struct Motd(&'static str);

/// The app's middleware: `?login=NAME` logs in.
async fn login(mut req: Request, next: Next) -> Response {
    let user = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "login")
            .map(|(_, v)| v.into_owned())
    });
    if let Some(user) = user {
        req.extensions_mut().insert(LoggedIn(user));
    }
    next.run(req).await
}

#[derive(Default)]
struct Lobby;

#[async_trait]
impl Channel for Lobby {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        let motd = ctx.state::<Motd>().map_or("none", |m| m.0);
        let user = ctx
            .identifiers()
            .get("current_user")
            .unwrap_or("")
            .to_owned();
        ctx.transmit(&json!({ "motd": motd, "user": user }))?;
        Ok(())
    }
}

fn cable() -> Cable {
    Cable::builder()
        .state(Motd("hello from the builder"))
        .channel("LobbyChannel", Lobby::default)
        .authenticate(authenticate_with(|req| async move {
            // The builder's state reaches the hook too.
            assert!(req.state::<Motd>().is_some(), "app state in the hook");
            match req.http_extension::<LoggedIn>() {
                Some(LoggedIn(user)) => Ok(Identifiers::new().with("current_user", user.clone())),
                None => Err(Unauthorized::because("not logged in")),
            }
        }))
        .build()
}

async fn home(State(state): State<AppState>) -> String {
    format!("home of {}", state.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cable_embeds_into_an_app_with_state_middleware_and_its_own_serve() {
    let cable = cable();
    let mut config = ServerConfig::default();
    config.sse_path = Some("/events".into());
    let app: Router<AppState> = Router::new()
        .route("/", get(home))
        .merge(cable_server::router(cable.clone(), config))
        .nest(
            "/ops",
            cable_server::ops_router(cable.clone(), OpsConfig::default()),
        );
    let app = app
        .layer(axum::middleware::from_fn(login))
        .with_state(AppState { name: "the app" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shut = cable.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
            cable_server::shutdown(&shut, Duration::from_secs(5)).await;
        })
        .await
    });

    assert_eq!(
        http(addr, "GET", "/", None).await,
        (200, "home of the app".to_owned())
    );
    let (status, stats) = http(addr, "GET", "/ops/stats", None).await;
    assert_eq!(status, 200, "{stats}");
    assert!(stats.contains("connections"), "{stats}");

    let origin = format!("http://{addr}");
    let headers = [("Origin", origin.as_str())];
    // Not logged in: the hook refuses, as Rails' reject_unauthorized_connection.
    let mut anon = Client::connect(&format!("ws://{addr}/cable"), &headers).await;
    anon.expect_close(tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal)
        .await;

    let mut ann = Client::connect(&format!("ws://{addr}/cable?login=ann"), &headers).await;
    ann.expect(r#"{"type":"welcome"}"#).await;
    let id = r#"{"channel":"LobbyChannel"}"#;
    ann.send_json(json!({"command": "subscribe", "identifier": id}))
        .await;
    // Transmitted in `subscribed`: before the confirmation, as in Rails.
    ann.expect(&frames::message(
        id,
        r#"{"motd":"hello from the builder","user":"ann"}"#,
    ))
    .await;
    ann.expect(&frames::confirm(id)).await;

    // The app's own metrics recorder gets cable's figures.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        cable_server::describe_metrics();
        cable_server::record_metrics(&cable);
    });
    let rendered = recorder.handle().render();
    assert!(rendered.contains("cable_connections 1"), "{rendered}");
    assert!(rendered.contains("# HELP cable_connections "), "{rendered}");

    // Over SSE too: the hook sees the middleware's extension.
    let mut sse =
        cable_test::SseClient::get(addr, "/events?login=bob&channel=LobbyChannel", &headers).await;
    assert_eq!(sse.status, 200);
    let mut data = Vec::new();
    for _ in 0..3 {
        data.push(sse.next_non_ping().await.data);
    }
    assert!(
        data.iter()
            .any(|d| d.contains(r#"{"motd":"hello from the builder","user":"bob"}"#)),
        "{data:?}"
    );
    let refused = cable_test::SseClient::get(addr, "/events?channel=LobbyChannel", &headers).await;
    assert_eq!(refused.status, 401, "not logged in");

    // The app's own serve, shut down with cable's call: clients are told
    // to reconnect, and serve returns.
    stop.send(()).expect("server running");
    ann.expect(&frames::disconnect("server_restart", true))
        .await;
    let served = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returned after the shutdown")
        .expect("server task");
    served.expect("serve");
}
