//! `cable-server`: serves a [`cable_core::Cable`] over WebSockets with axum
//! and tokio-tungstenite, the way Rails' ActionCable server does.
//!
//! - [`router`] gives an axum `Router` answering on the mount path (default
//!   `/cable`), to merge into your own app;
//! - [`serve_standalone`] runs cable alone on its own port;
//! - [`serve`] runs a router (yours, or the cable one alone) on a listener with
//!   Rails-style graceful shutdown: every client is told `server_restart` and
//!   the server drains before returning.
//!
//! What the handshake does, in Rails' order: a request that is not a
//! WebSocket upgrade, or whose `Origin` is not allowed, gets HTTP 404 `Page not
//! found`; otherwise the answer is 101 with `Sec-WebSocket-Protocol:
//! actioncable-v1-json` when the client offered it (and none when it offered
//! nothing we know; the connection still works). Authentication runs after the
//! upgrade, as in Rails.
//!
//! ```no_run
//! use cable_core::Cable;
//! use cable_server::{router, serve, shutdown_signal, ServerConfig};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let cable = Cable::builder().build();
//! let app = axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hello" }))
//!     .merge(router(cable.clone(), ServerConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! serve(listener, app, cable, shutdown_signal(), std::time::Duration::from_secs(10)).await
//! # }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod close_code;
mod http;
mod ops;
mod origin;
mod sse;
#[doc(hidden)]
pub use crate::sse::fuzzing as sse_fuzzing;
mod wire;
mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::any;
use axum::Router;
use cable_core::Cable;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use crate::http::ServeOptions;
pub use crate::ops::{
    broadcast_router, describe_metrics, health_router, ops_router, record_metrics, OpsConfig,
};
pub use crate::origin::{AllowedOrigin, OriginPolicy};

/// What axum middleware stored on the HTTP request (tower-sessions'
/// session, axum-login's user, anything in `http::Extensions`), read by the
/// connection hook. cable-server attaches the request's extensions to
/// every [`ConnectRequest`](cable_core::ConnectRequest) it makes, WebSocket
/// or SSE; a request made otherwise (a test) has none.
///
/// ```
/// use cable_core::{authenticate_with, Identifiers, Unauthorized};
/// use cable_server::HttpExtensions;
/// #[derive(Clone)]
/// struct LoggedIn(String); // put there by the app's own auth middleware
/// let hook = authenticate_with(|req| async move {
///     match req.http_extension::<LoggedIn>() {
///         Some(user) => Ok(Identifiers::new().with("current_user", user.0.clone())),
///         None => Err(Unauthorized::because("not logged in")),
///     }
/// });
/// # drop(hook);
/// ```
pub trait HttpExtensions {
    /// The value of type `T` in the HTTP request's extensions.
    fn http_extension<T: Clone + Send + Sync + 'static>(&self) -> Option<&T>;
}

impl HttpExtensions for cable_core::ConnectRequest {
    fn http_extension<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions().get::<::http::Extensions>()?.get::<T>()
    }
}

/// Transport settings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Where the WebSocket endpoint answers. Default `/cable`.
    pub mount_path: String,
    /// Which origins may connect.
    pub origins: OriginPolicy,
    /// Largest inbound message, in bytes; a larger one closes the connection
    /// with code 1009. Default 64 KiB.
    pub max_message_size: usize,
    /// Per-connection read buffer. Default 128 bytes (tungstenite's default
    /// is 128 KiB). A longer message still arrives whole: the buffer grows
    /// to fit a frame once its header has been read (one more read for a
    /// command over 128 bytes; ActionCable's subscribe and unsubscribe are
    /// shorter). On [`serve`]'s TCP sockets it exists only while a frame is
    /// being read, and is then at least 4 KiB (tungstenite reads at most the
    /// buffer's size per call): an idle connection has none. With other
    /// streams (your own listener, TLS) every connection keeps one of this
    /// size.
    pub read_buffer_size: usize,
    /// Bytes buffered before tungstenite writes to the socket. Default 8 KiB.
    pub write_buffer_size: usize,
    /// How long one batch of writes may take before the client is dropped.
    /// Default 2 s.
    pub write_timeout: Duration,
    /// Heartbeat period. Default 3 s (Rails' `BEAT_INTERVAL`).
    pub ping_interval: Duration,
    /// Most WebSocket connections open at once; further handshakes get HTTP
    /// 503 before the upgrade (counted in `Stats::refused_handshakes`).
    /// SSE responses count against the same limit. Default: no limit.
    pub max_connections: Option<usize>,
    /// Where Server-Sent Events answer (AnyCable's SSE transport: GET and
    /// POST; see the crate docs, "Server-Sent Events"), or None for no SSE.
    /// Default None: like AnyCable's `--sse`, it is asked for (usually
    /// `/events`, [`DEFAULT_SSE_PATH`]). Two routers merged into one app
    /// must not both serve it on one path (axum refuses two routes there).
    pub sse_path: Option<String>,
}

/// AnyCable's SSE path: `/events`.
pub const DEFAULT_SSE_PATH: &str = "/events";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            mount_path: "/cable".to_owned(),
            origins: OriginPolicy::default(),
            max_message_size: 64 * 1024,
            read_buffer_size: 128,
            write_buffer_size: 8 * 1024,
            write_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(3),
            max_connections: None,
            sse_path: None,
        }
    }
}

impl ServerConfig {
    /// `largest_frame`: the most one frame can hold (the outbox capacity).
    /// The write buffer must take any frame the core lets through, or
    /// tungstenite fails the write and the client is dropped.
    pub(crate) fn websocket_config(&self, largest_frame: usize) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .write_buffer_size(self.write_buffer_size)
            .max_write_buffer_size(self.write_buffer_size + largest_frame + 64 * 1024)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// An axum router serving `cable` at `config.mount_path`, for an app of
/// any state type `S` (it carries its own state, so it merges into a
/// `Router<AppState>` as it is, before or after the app's `with_state`).
///
/// [`serve`] sets `TCP_NODELAY` on every accepted socket; with your own
/// `axum::serve`, do the same (`listener.tap_io(|tcp| tcp.set_nodelay(true))`
/// with `axum::serve::ListenerExt`), or small frames can wait up to 40 ms for
/// a delayed ACK.
pub fn router<S>(cable: Cable, config: ServerConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = config.mount_path.clone();
    let sse = config.sse_path.clone();
    let state = Arc::new(ws::ServerState::new(cable, config));
    let mut router = Router::new().route(&path, any(ws::handle));
    match sse {
        Some(sse) if sse.starts_with('/') && sse != path => {
            router = router.route(&sse, any(sse::handle));
        }
        Some(sse) => tracing::error!(
            "sse_path {sse:?} must start with / and differ from the mount path {path:?}: no SSE"
        ),
        None => {}
    }
    router.with_state(state)
}

/// Serves `app` on `listener` until `shutdown` resolves, then shuts `cable`
/// down: new connections are refused, every client is sent
/// `{"type":"disconnect","reason":"server_restart","reconnect":true}`, and the
/// call returns once all connections closed or `drain_timeout` passed.
/// [`ServeOptions`]' other defaults apply; see [`serve_with`].
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    cable: Cable,
    shutdown: F,
    drain_timeout: Duration,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(
        listener,
        app,
        cable,
        shutdown,
        ServeOptions::with_drain_timeout(drain_timeout),
    )
    .await
}

/// [`serve`] with every HTTP option: the header read timeout and the bound
/// on connections that have not become WebSockets (half-sent requests), so
/// neither slow clients nor a flood of them can hold the server's file
/// descriptors or its shutdown. Shutdown takes at most
/// `options.drain_timeout` (plus the time to close sockets).
pub async fn serve_with<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    cable: Cable,
    shutdown: F,
    options: ServeOptions,
) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let c = cable.clone();
    let began = http::accept_loop(listener, app, shutdown, &options, move || {
        tracing::info!("Shutting down: telling clients to reconnect (server_restart)");
        cable_core::transport::begin_shutdown(&c);
    })
    .await?;
    // Upgraded sockets are not tracked by the HTTP side: drain them here,
    // within what is left of the drain timeout.
    let left_time = options.drain_timeout.saturating_sub(began.elapsed());
    let left = cable_core::transport::drain(&cable, left_time).await;
    if left > 0 {
        tracing::warn!(
            "{left} connections still open after {:?}; exiting anyway",
            options.drain_timeout
        );
    }
    Ok(())
}

/// Shuts `cable` down when the app is served by your own `axum::serve`
/// rather than [`serve`]: new connections are refused, every client (WebSocket
/// or SSE) is sent `server_restart` and closed, and the call returns once
/// they all closed or `drain_timeout` passed, with the number still open.
/// Await it inside the graceful-shutdown future, so that axum stops only
/// after the sockets it no longer tracks (upgraded ones) are drained:
///
/// ```no_run
/// # use std::time::Duration;
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let cable = cable_core::Cable::builder().build();
/// let app = axum::Router::new().merge(cable_server::router(cable.clone(), Default::default()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// axum::serve(listener, app)
///     .with_graceful_shutdown(async move {
///         cable_server::shutdown_signal().await;
///         cable_server::shutdown(&cable, Duration::from_secs(10)).await;
///     })
///     .await
/// # }
/// ```
pub async fn shutdown(cable: &Cable, drain_timeout: Duration) -> usize {
    tracing::info!("Shutting down: telling clients to reconnect (server_restart)");
    cable_core::transport::begin_shutdown(cable);
    let left = cable_core::transport::drain(cable, drain_timeout).await;
    if left > 0 {
        tracing::warn!("{left} connections still open after {drain_timeout:?}; going on anyway");
    }
    left
}

/// Standalone mode: serves `cable` alone on `addr` (like Rails' `bin/cable`)
/// until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve_standalone(
    addr: SocketAddr,
    cable: Cable,
    config: ServerConfig,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "cable listening on ws://{}{}",
        listener.local_addr()?,
        config.mount_path
    );
    let app = router(cable.clone(), config);
    serve(listener, app, cable, shutdown_signal(), drain_timeout).await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
