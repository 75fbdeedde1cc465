//! Operator endpoints: the HTTP broadcast API, presence, health, stats and
//! Prometheus metrics.
//!
//! - `POST /_broadcast`: AnyCable's broadcast messages
//!   ([`cable_core::intake`]): a publication
//!   `{"stream": "...", "data": "<JSON text>", "meta": {...}}`, an array of
//!   them, or the command `{"command": "disconnect", "payload":
//!   {"identifier": "<identifiers JSON>", "reconnect": false}}`, with
//!   `Authorization: Bearer <key>`. `meta` may hold `exclude_socket` (a
//!   session id) and `transient`; other fields are ignored. The
//!   `X-Socket-ID` header (AnyCable's `to_others`, sent by Rails and
//!   `@anycable/turbo-stream`) excludes that session from every publication
//!   that excludes none itself. 201 when everything was handed to the
//!   adapter; 401 without the right key; 422 for a body that is no
//!   broadcast message (nothing is sent then: a batch is checked whole
//!   first); 413 for a message over the size limit; 503 when the adapter
//!   refused (its error in the body; publications before it went out).
//! - `GET /api/presence/{stream}/users`: who is present on `stream`, as
//!   AnyCable's REST API answers it (`{"type":"info","total":N,"records":
//!   [...]}`), with `Authorization: Bearer <api key>`
//!   ([`OpsConfig::api_key`]). 501 when the broker keeps no presence, 400
//!   when it failed; off (404) without a key.
//! - `GET /health`: 200 `ok` while the pub/sub adapter is connected and the
//!   server is not shutting down, 503 otherwise.
//! - `GET /stats`: the [`cable_core::Stats`] figures as JSON.
//! - `GET /metrics`: the same figures in Prometheus' text format.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cable_core::intake::{Message, ParseError};
use cable_core::{Cable, Stats};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::{respond, text};

/// Settings of the operator endpoints.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct OpsConfig {
    /// The bearer key `POST /_broadcast` requires. `None` disables the
    /// endpoint (404): an unauthenticated broadcast API is never served.
    pub broadcast_key: Option<String>,
    /// The bearer key of AnyCable's REST API (`GET
    /// /api/presence/{stream}/users`), AnyCable's `api_secret`. `None`
    /// disables it (404).
    pub api_key: Option<String>,
}

impl OpsConfig {
    /// Settings with `POST /_broadcast` enabled for `key`.
    pub fn with_broadcast_key(key: impl Into<String>) -> Self {
        OpsConfig {
            broadcast_key: Some(key.into()),
            api_key: None,
        }
    }

    /// Sets the REST API's key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

struct OpsState {
    cable: Cable,
    /// From `OpsConfig::broadcast_key`; None: `/_broadcast` is off.
    broadcast_key: Option<BroadcastKey>,
    /// From `OpsConfig::api_key`; None: the REST API is off.
    api_key: Option<BroadcastKey>,
    recorder: PrometheusRecorder,
}

/// An axum router with `/_broadcast`, `/api/presence/{stream}/users`,
/// `/health`, `/stats` and `/metrics`.
///
/// Serve it on a private address. `/stats` and `/metrics` answer anyone,
/// and `/_broadcast` reaches every client with the right key, so merging it
/// into a public router puts all three on the internet; the standalone
/// server does so only with `ops_on_public_port = true`.
///
/// It carries its own state, so it merges or nests into a `Router<S>` of
/// any state, under a prefix of your choosing:
/// `app.nest("/ops", ops_router(cable, OpsConfig::default()))` serves
/// `/ops/stats`, `/ops/metrics`, …. The same figures can go to your app's own
/// `metrics` recorder instead: [`record_metrics`].
pub fn ops_router<S>(cable: Cable, config: OpsConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/_broadcast", post(broadcast))
        .route(PRESENCE_PATH, get(presence))
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .with_state(ops_state(&cable, &config))
        .merge(health_router(cable))
}

/// `POST /_broadcast` and the presence endpoint alone: where AnyCable
/// serves them when it has a key, beside the WebSocket endpoint, without
/// `/stats` and `/metrics`.
pub fn broadcast_router<S>(cable: Cable, config: OpsConfig) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/_broadcast", post(broadcast))
        .route(PRESENCE_PATH, get(presence))
        .with_state(ops_state(&cable, &config))
}

fn ops_state(cable: &Cable, config: &OpsConfig) -> Arc<OpsState> {
    Arc::new(OpsState {
        cable: cable.clone(),
        broadcast_key: config.broadcast_key.as_deref().map(BroadcastKey::new),
        api_key: config.api_key.as_deref().map(BroadcastKey::new),
        recorder: recorder(),
    })
}

/// `/health` alone: what the public address serves by default, for load
/// balancers and probes.
pub fn health_router<S>(cable: Cable) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/health", get(health))
        .with_state(cable)
}

/// AnyCable's presence endpoint.
const PRESENCE_PATH: &str = "/api/presence/{stream}/users";

/// The broadcast key as the endpoint keeps it: only its SHA-256 digest.
///
/// A request's key is digested too and the two digests are compared in
/// constant time. Comparing digests instead of the keys means the time taken
/// depends neither on how much of the key a guess got right nor on the key's
/// length (a plain constant-time comparison returns early on a length
/// mismatch, and an attacker could find the length first).
struct BroadcastKey([u8; 32]);

impl BroadcastKey {
    fn new(key: &str) -> Self {
        BroadcastKey(digest(key.as_bytes()))
    }

    fn matches(&self, given: &[u8]) -> bool {
        self.0.ct_eq(&digest(given)).into()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(bytes));
    out
}

async fn broadcast(
    State(state): State<Arc<OpsState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = authorize(state.broadcast_key.as_ref(), &headers, "broadcast API") {
        return refused;
    }
    let mut message = match Message::parse(&body) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("broadcast API: not a broadcast message: {}", chain(&e));
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "expected {{\"stream\": \"...\", \"data\": \"<JSON text>\", \"meta\": {{...}}}}, \
                     an array of them or {{\"command\": \"disconnect\", ...}}: {}",
                    chain(&e)
                ),
            );
        }
    };
    // AnyCable's `to_others`: the publisher names the session that caused it.
    if let Some(sid) = headers.get("x-socket-id").and_then(|v| v.to_str().ok()) {
        message.exclude_by_default(sid.trim());
    }
    if let Err(e) = message.apply(&state.cable.broadcaster()).await {
        tracing::error!(error = %e, cause = %e.source, "broadcast API: refused by the adapter");
        let status = match &e.source {
            // No client could be sent it: the caller's mistake, not an outage.
            cable_core::PubSubError::MessageTooLarge { .. }
            | cable_core::PubSubError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        return text(status, format!("{e}: {}", e.source));
    }
    StatusCode::CREATED.into_response()
}

/// `None` when `headers` carry `key` as a bearer token, else the 401; the
/// 404 without a key (the endpoint is off).
fn authorize(key: Option<&BroadcastKey>, headers: &HeaderMap, what: &str) -> Option<Response> {
    let Some(key) = key else {
        return Some(text(StatusCode::NOT_FOUND, "Not found"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| key.matches(g.as_bytes())) {
        return None;
    }
    tracing::warn!("{what}: request without the right bearer key refused");
    Some(respond(
        StatusCode::UNAUTHORIZED,
        (header::WWW_AUTHENTICATE, "Bearer"),
        "Unauthorized",
    ))
}

/// An error and its sources, `: `-joined.
fn chain(e: &ParseError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn presence(
    State(state): State<Arc<OpsState>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize(state.api_key.as_ref(), &headers, "presence API") {
        return refused;
    }
    match state.cable.presence(&stream).await {
        Ok(info) => ([(header::CONTENT_TYPE, "application/json")], info.to_json()).into_response(),
        Err(e @ cable_core::broker::BrokerError::Unsupported { .. }) => {
            text(StatusCode::NOT_IMPLEMENTED, e.to_string())
        }
        Err(e) => {
            tracing::warn!(stream, error = %e, "presence API: the broker failed");
            text(StatusCode::BAD_REQUEST, e.to_string())
        }
    }
}

async fn health(State(cable): State<Cable>) -> Response {
    if cable.is_shutting_down() {
        text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !cable.is_healthy() {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pub/sub adapter ({}) not connected", cable.adapter_name()),
        )
    } else {
        text(StatusCode::OK, "ok")
    }
}

async fn stats(State(state): State<Arc<OpsState>>) -> Response {
    let mut v = serde_json::to_value(state.cable.stats()).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        map.insert("adapter".into(), state.cable.adapter_name().into());
        map.insert("adapter_connected".into(), state.cable.is_healthy().into());
        map.insert("broker".into(), state.cable.broker_name().into());
    }
    axum::Json(v).into_response()
}

/// One exported figure.
enum Figure {
    Gauge(f64),
    Counter(u64),
}

/// Every figure `/metrics` exports: name, help, value.
/// What the process has open: tokio tasks alive on the runtime that serves
/// (every connection holds some; a leak shows as growth) and file
/// descriptors (Linux: `/proc/self/fd`; 0 elsewhere).
#[derive(Default)]
struct Process {
    tasks: usize,
    fds: usize,
}

impl Process {
    fn now() -> Self {
        let tasks =
            tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        Process { tasks, fds }
    }
}

fn figures(
    s: &Stats,
    adapter_connected: bool,
    p: &Process,
) -> [(&'static str, &'static str, Figure); 27] {
    use Figure::{Counter, Gauge};
    [
        (
            "cable_tokio_alive_tasks",
            "Tokio tasks alive on the serving runtime (connections hold some; growth with a steady load is a leak)",
            Gauge(p.tasks as f64),
        ),
        (
            "cable_open_fds",
            "File descriptors the process has open (Linux; 0 elsewhere)",
            Gauge(p.fds as f64),
        ),
        (
            "cable_connections",
            "Open, welcomed WebSocket connections",
            Gauge(s.connections as f64),
        ),
        (
            "cable_subscriptions",
            "Confirmed subscriptions open now",
            Gauge(s.subscriptions as f64),
        ),
        (
            "cable_streams",
            "Streams with at least one local subscriber",
            Gauge(s.streams as f64),
        ),
        (
            "cable_adapter_connected",
            "1 while the pub/sub adapter is connected",
            Gauge(if adapter_connected { 1.0 } else { 0.0 }),
        ),
        (
            "cable_connections_total",
            "Connections welcomed since start",
            Counter(s.connections_total),
        ),
        (
            "cable_unauthorized_total",
            "Connections refused by the connection hook",
            Counter(s.unauthorized),
        ),
        (
            "cable_messages_received_total",
            "Commands received from clients",
            Counter(s.messages_received),
        ),
        (
            "cable_messages_sent_total",
            "Frames handed to sockets",
            Counter(s.messages_sent),
        ),
        (
            "cable_broadcasts_total",
            "Broadcasts received from the adapter",
            Counter(s.broadcasts),
        ),
        (
            "cable_deliveries_total",
            "Data frames queued to clients from broadcasts",
            Counter(s.deliveries),
        ),
        (
            "cable_too_slow_disconnects_total",
            "Clients dropped for an overflowing outbound queue",
            Counter(s.too_slow_disconnects),
        ),
        (
            "cable_adapter_reconnects_total",
            "Reconnections of the pub/sub adapter",
            Counter(s.adapter_reconnects),
        ),
        (
            "cable_refused_handshakes_total",
            "Handshakes refused at max_connections",
            Counter(s.refused_handshakes),
        ),
        (
            "cable_rate_limited_disconnects_total",
            "Connections closed for sending commands faster than command_rate",
            Counter(s.rate_limited_disconnects),
        ),
        (
            "cable_callback_panics_total",
            "Panics caught in the connection hook or channel callbacks",
            Counter(s.callback_panics),
        ),
        (
            "cable_callback_timeouts_total",
            "Connection hooks and channel callbacks abandoned at their timeout",
            Counter(s.callback_timeouts),
        ),
        (
            "cable_oversized_dropped_total",
            "Messages from the adapter dropped for being over max_outbound_message_size",
            Counter(s.oversized_dropped),
        ),
        (
            "cable_adapter_backlog",
            "Messages received from the backend and not yet delivered",
            Gauge(s.adapter_backlog as f64),
        ),
        (
            "cable_adapter_dropped_total",
            "Messages the adapter dropped because its backlog was full",
            Counter(s.adapter_dropped),
        ),
        (
            "cable_history_appends_total",
            "Broadcasts appended to the broker's history (given a position)",
            Counter(s.history_appends),
        ),
        (
            "cable_history_append_failures_total",
            "Broadcasts the broker failed to append (delivered live without a position)",
            Counter(s.history_append_failures),
        ),
        (
            "cable_history_reads_total",
            "History requests served (confirm_history)",
            Counter(s.history_reads),
        ),
        (
            "cable_history_misses_total",
            "History requests that could not be served (reject_history)",
            Counter(s.history_misses),
        ),
        (
            "cable_restored_sessions_total",
            "Sessions restored from a session id without the connect hook",
            Counter(s.restored_sessions),
        ),
        (
            "cable_uptime_seconds",
            "Seconds since the server started",
            Gauge(s.uptime_secs as f64),
        ),
    ]
}

/// A recorder with every figure described (once, not per scrape).
fn recorder() -> PrometheusRecorder {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, describe_metrics);
    recorder
}

/// Describes cable's figures (names, help texts) to the current `metrics`
/// recorder: your app's, installed with `metrics::set_global_recorder` (or
/// an exporter's `install`). Call it once, then [`record_metrics`].
pub fn describe_metrics() {
    for (name, help, figure) in figures(&Stats::default(), false, &Process::default()) {
        match figure {
            Figure::Gauge(_) => metrics::describe_gauge!(name, help),
            Figure::Counter(_) => metrics::describe_counter!(name, help),
        }
    }
}

/// Sets every figure `/metrics` serves (the same names: `cable_connections`,
/// `cable_broadcasts_total`, …) on the current `metrics` recorder, so they
/// go wherever your app's metrics go instead of (or beside) cable's own
/// `/metrics`. Counters are set to their absolute value; call it on a timer
/// or before each scrape:
///
/// ```no_run
/// # async fn run(cable: cable_core::Cable) {
/// cable_server::describe_metrics();
/// let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
/// loop {
///     every.tick().await;
///     cable_server::record_metrics(&cable);
/// }
/// # }
/// ```
pub fn record_metrics(cable: &Cable) {
    for (name, _, figure) in figures(&cable.stats(), cable.is_healthy(), &Process::now()) {
        match figure {
            Figure::Gauge(v) => metrics::gauge!(name).set(v),
            Figure::Counter(v) => metrics::counter!(name).absolute(v),
        }
    }
}

async fn prometheus(State(state): State<Arc<OpsState>>) -> Response {
    metrics::with_local_recorder(&state.recorder, || record_metrics(&state.cable));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.recorder.handle().render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::BroadcastKey;

    #[test]
    fn keys_compare_whole() {
        let key = BroadcastKey::new("secret-key-0123456789");
        assert!(key.matches(b"secret-key-0123456789"));
        for wrong in [
            &b"secret-key-012345678"[..],
            b"secret-key-01234567890",
            b"Secret-key-0123456789",
            b"secret-key-0123456788",
            b"",
            &[0u8; 32],
        ] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn only_a_fixed_size_digest_of_the_key_is_kept() {
        // Whatever the key's length, what is compared is 32 bytes: the
        // comparison cannot stop early on a length mismatch.
        for key in ["k".repeat(16), "k".repeat(1000)] {
            let kept = BroadcastKey::new(&key);
            assert_eq!(std::mem::size_of_val(&kept.0), 32);
            assert_ne!(&kept.0[..16], &key.as_bytes()[..16], "not the key itself");
            assert!(kept.matches(key.as_bytes()));
        }
    }
}
