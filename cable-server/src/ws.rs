//! The WebSocket handshake (Rails' checks and answers) and the socket pumps.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use cable_core::protocol::SERVER_SUBPROTOCOLS;
use cable_core::transport::{Inbound, Outbox, Outgoing};
use cable_core::{Cable, ConnectRequest};
use futures_util::{SinkExt, Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::close_code::CloseCodeFix;
use crate::http::{respond, text};
use crate::wire::{Flusher, Lane, Reader, Wire};
use crate::ServerConfig;

/// Most frames handed to the socket between two flushes.
const WRITE_BATCH: usize = 64;

pub(crate) struct ServerState {
    pub(crate) cable: Cable,
    pub(crate) config: ServerConfig,
    /// Started with the first WebSocket on a TCP socket.
    flusher: std::sync::OnceLock<Flusher>,
    /// Shared by every connection's reader.
    ws_config: Arc<WebSocketConfig>,
    /// The same for `serve`'s TCP sockets, whose reader holds its buffer
    /// only while a frame is being read: there it reads at least
    /// [`TCP_READ_CHUNK`] bytes at a time (tungstenite reads at most the
    /// buffer size per call, so a 32 KB command would take 250 reads of
    /// 128 bytes).
    tcp_ws_config: Arc<WebSocketConfig>,
}

/// Least read size of the TCP path's reader (see `tcp_ws_config`).
const TCP_READ_CHUNK: usize = 4096;

impl ServerState {
    pub(crate) fn new(cable: Cable, config: ServerConfig) -> Self {
        let ws = config.websocket_config(cable.config().outbound_queue_bytes);
        let tcp_ws_config =
            Arc::new(ws.read_buffer_size(config.read_buffer_size.max(TCP_READ_CHUNK)));
        let ws_config = Arc::new(ws);
        ServerState {
            cable,
            config,
            flusher: std::sync::OnceLock::new(),
            ws_config,
            tcp_ws_config,
        }
    }

    /// One timer for all connections of the `Cable` (however many routers
    /// share it), started with the first request as Rails starts its
    /// heartbeat on the first request.
    pub(crate) fn ensure_heartbeat(&self) {
        cable_core::transport::start_heartbeat(&self.cable, self.config.ping_interval);
    }
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// websocket-driver's `websocket?`: GET, `Connection: upgrade`, `Upgrade: websocket`.
fn is_websocket(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
}

pub(crate) fn forwarded_https(headers: &HeaderMap) -> bool {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.split(',').next())
            .map(|s| s.trim().to_ascii_lowercase())
    };
    first("x-forwarded-proto").as_deref() == Some("https")
        || first("x-forwarded-scheme").as_deref() == Some("https")
        || first("x-forwarded-ssl").as_deref() == Some("on")
}

/// The first protocol, in the client's order, that the server accepts.
fn choose_subprotocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| SERVER_SUBPROTOCOLS.iter().copied().find(|s| *s == p))
}

/// Rails' `respond_to_invalid_request`.
fn page_not_found() -> Response {
    text(StatusCode::NOT_FOUND, "Page not found")
}

/// The peer's address (when the server recorded it) and its IP for logs.
pub(crate) fn peer_of(req: &Request) -> (Option<SocketAddr>, String) {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let shown = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
    (peer, shown)
}

pub(crate) async fn handle(State(state): State<Arc<ServerState>>, mut req: Request) -> Response {
    state.ensure_heartbeat();
    let (peer, peer_s) = peer_of(&req);
    let path = req.uri().path().to_owned();
    let headers = req.headers();
    if !is_websocket(req.method(), headers) {
        tracing::info!(
            "Started {} {path:?}[non-WebSocket] for {peer_s}",
            req.method()
        );
        tracing::error!(
            "Failed to upgrade to WebSocket (REQUEST_METHOD: {}, HTTP_CONNECTION: {}, HTTP_UPGRADE: {})",
            req.method(),
            header_str(headers, header::CONNECTION).unwrap_or(""),
            header_str(headers, header::UPGRADE).unwrap_or("")
        );
        tracing::info!("Finished {path:?}[non-WebSocket] for {peer_s}");
        return page_not_found();
    }
    tracing::info!("Started GET {path:?} [WebSocket] for {peer_s}");
    let origin = header_str(headers, header::ORIGIN);
    let host = header_str(headers, header::HOST);
    if !state
        .config
        .origins
        .allows(origin, host, forwarded_https(headers))
    {
        tracing::error!("Request origin not allowed: {}", origin.unwrap_or(""));
        tracing::error!(
            "Failed to upgrade to WebSocket (REQUEST_METHOD: GET, HTTP_CONNECTION: {}, HTTP_UPGRADE: {})",
            header_str(headers, header::CONNECTION).unwrap_or(""),
            header_str(headers, header::UPGRADE).unwrap_or("")
        );
        tracing::info!("Finished {path:?} [WebSocket] for {peer_s}");
        return page_not_found();
    }
    if state.cable.is_shutting_down() {
        tracing::warn!("Refusing connection from {peer_s}: server is shutting down");
        return (StatusCode::SERVICE_UNAVAILABLE, "Server is restarting").into_response();
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = header_str(headers, header::SEC_WEBSOCKET_VERSION) == Some("13");
    let Some(key) = key.filter(|_| version_ok) else {
        tracing::error!("Failed to upgrade to WebSocket: missing Sec-WebSocket-Key or unsupported Sec-WebSocket-Version");
        return respond(
            StatusCode::BAD_REQUEST,
            (header::SEC_WEBSOCKET_VERSION, "13"),
            "Unsupported WebSocket handshake",
        );
    };
    // The slot counts the Cable's open sockets, whichever router or
    // transport holds them, from the upgrade until the socket is closed;
    // shutdown's drain waits for it too.
    let max = state.config.max_connections.unwrap_or(usize::MAX);
    let Some(guard) = cable_core::transport::try_transport_guard(&state.cable, max) else {
        cable_core::transport::count_refused_handshake(&state.cable);
        tracing::warn!(
            "Refusing connection from {peer_s}: {max} connections open, the limit (max_connections)"
        );
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            (header::RETRY_AFTER, "5"),
            "Too many connections",
        );
    };
    let protocol = choose_subprotocol(headers);
    let request = ConnectRequest::new(
        path.clone(),
        req.uri().query(),
        crate::sse::connect_headers(headers),
        peer,
    )
    // Core speaks the extended protocol (session ids, resume by `?sid=` or
    // `X-ANYCABLE-RESTORE-SID`, pongs) when it was negotiated.
    .with_subprotocol(protocol);
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        tracing::error!("Failed to upgrade to WebSocket: the HTTP server does not support upgrades on this connection");
        return page_not_found();
    };
    // What middleware put on the request, for the connection hook
    // (`HttpExtensions::http_extension`).
    let request = Box::new(request.with_extension(std::mem::take(req.extensions_mut())));

    let accepted = Box::new(Accepted {
        cable: state.cable.clone(),
        request,
        ws_config: state.ws_config.clone(),
        tcp_ws_config: state.tcp_ws_config.clone(),
        write_timeout: state.config.write_timeout,
        lane: state.flusher.get_or_init(Flusher::start).lane(),
        end: Box::new(End {
            _guard: guard,
            path,
            peer_s,
        }),
    });
    tokio::spawn(connection(on_upgrade, accepted));

    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    res
}

enum Step {
    Item(Inbound),
    Skip,
    End,
}

/// RFC 6455 close code for invalid data in a text frame.
const CLOSE_INVALID_DATA: u16 = 1007;
/// RFC 6455 close code for a protocol violation.
const CLOSE_PROTOCOL: u16 = 1002;

/// The close reason for a protocol violation, in websocket-driver's (Rails')
/// words where it has them.
fn protocol_reason(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::NonZeroReservedBits => "One or more reserved bits are on",
        ProtocolError::UnmaskedFrameFromClient => "Received unmasked frame",
        ProtocolError::FragmentedControlFrame => "Received fragmented control frame",
        ProtocolError::ControlFrameTooBig => "Received control frame having too long payload",
        ProtocolError::UnknownControlFrameType(op)
        | ProtocolError::UnknownDataFrameType(op)
        | ProtocolError::InvalidOpcode(op) => unrecognized_opcode(*op),
        ProtocolError::UnexpectedContinueFrame => "Received unexpected continuation frame",
        ProtocolError::ExpectedFragment(_) => {
            "Received new data frame but previous continuous frame is unfinished"
        }
        _ => "Protocol error",
    }
}

/// websocket-driver's `Unrecognized frame opcode: N` (reasons are static).
fn unrecognized_opcode(op: u8) -> &'static str {
    const REASONS: [&str; 16] = [
        "Unrecognized frame opcode: 0",
        "Unrecognized frame opcode: 1",
        "Unrecognized frame opcode: 2",
        "Unrecognized frame opcode: 3",
        "Unrecognized frame opcode: 4",
        "Unrecognized frame opcode: 5",
        "Unrecognized frame opcode: 6",
        "Unrecognized frame opcode: 7",
        "Unrecognized frame opcode: 8",
        "Unrecognized frame opcode: 9",
        "Unrecognized frame opcode: 10",
        "Unrecognized frame opcode: 11",
        "Unrecognized frame opcode: 12",
        "Unrecognized frame opcode: 13",
        "Unrecognized frame opcode: 14",
        "Unrecognized frame opcode: 15",
    ];
    REASONS
        .get(usize::from(op))
        .copied()
        .unwrap_or("Unrecognized frame opcode")
}

fn inbound_step(msg: Result<Message, WsError>) -> Step {
    match msg {
        Ok(Message::Text(t)) => Step::Item(Inbound::Text(t.as_str().to_owned())),
        Ok(Message::Binary(b)) => Step::Item(Inbound::Binary(b.len())),
        Ok(Message::Ping(_) | Message::Pong(_)) => Step::Item(Inbound::Control),
        Ok(Message::Frame(_)) => Step::Skip,
        // tungstenite has queued the echo of the client's close (its code and
        // reason); the writer flushes it once the session has ended.
        Ok(Message::Close(_)) => Step::End,
        Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
            Step::Item(Inbound::TooLarge {
                size,
                max: max_size,
            })
        }
        Err(WsError::Utf8(_)) => Step::Item(Inbound::Invalid {
            code: CLOSE_INVALID_DATA,
            reason: "Could not decode a text frame as UTF-8",
        }),
        Err(WsError::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::ReceivedAfterClosing,
        )) => Step::End,
        Err(WsError::Protocol(e)) => {
            tracing::debug!("WebSocket protocol violation: {e}");
            Step::Item(Inbound::Invalid {
                code: CLOSE_PROTOCOL,
                reason: protocol_reason(&e),
            })
        }
        Err(e) => {
            tracing::debug!("WebSocket read ended: {e}");
            Step::End
        }
    }
}

fn inbound_stream<S>(stream: S) -> impl Stream<Item = Inbound> + Send + Unpin
where
    S: Stream<Item = Result<Message, WsError>> + Send + Unpin,
{
    stream
        .map(inbound_step)
        .take_while(|s| std::future::ready(!matches!(s, Step::End)))
        .filter_map(|s| {
            std::future::ready(match s {
                Step::Item(i) => Some(i),
                _ => None,
            })
        })
}

/// Runs one upgraded connection. The request and the stream come boxed: an
/// async fn keeps room for its arguments as long as it lives (here, the
/// connection's life), so large ones would cost every idle connection.
async fn drive<S>(
    cable: Cable,
    request: Box<ConnectRequest>,
    ws: Box<WebSocketStream<S>>,
    write_timeout: std::time::Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = (*ws).split();
    let outbox = cable_core::transport::new_outbox(&cable);
    let writer = tokio::spawn(write_loop(sink, outbox.clone(), write_timeout));
    let mut inbound = Box::pin(inbound_stream(stream));
    cable_core::transport::run_connection(&cable, request, &mut inbound, outbox.clone()).await;
    let _ = writer.await;
    read_until_closed(&mut inbound).await;
}

/// What a connection needs once upgraded, in one allocation: the
/// connection's future keeps a pointer, not the fields.
struct Accepted {
    cable: Cable,
    request: Box<ConnectRequest>,
    ws_config: Arc<WebSocketConfig>,
    tcp_ws_config: Arc<WebSocketConfig>,
    write_timeout: std::time::Duration,
    lane: Lane,
    end: Box<End>,
}

/// Held until the socket is closed.
struct End {
    _guard: cable_core::transport::TransportGuard,
    path: String,
    peer_s: String,
}

impl Drop for End {
    fn drop(&mut self) {
        tracing::info!("Finished {:?} [WebSocket] for {}", self.path, self.peer_s);
    }
}

/// One upgraded connection, from the upgrade to the socket's close.
async fn connection(on_upgrade: hyper::upgrade::OnUpgrade, accepted: Box<Accepted>) {
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!("WebSocket upgrade failed: {e}");
            return;
        }
    };
    tracing::info!("Successfully upgraded to WebSocket (REQUEST_METHOD: GET, HTTP_CONNECTION: Upgrade, HTTP_UPGRADE: websocket)");
    // `serve`'s sockets are plain TCP: the flusher writes to them
    // (wire.rs). Any other stream (an app's own listener, TLS) gets a
    // writer task.
    match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => on_tcp(accepted, parts).await,
        Err(upgraded) => {
            // Boxed: its state must not size every TCP connection's task.
            Box::pin(async move {
                let Accepted {
                    cable,
                    request,
                    ws_config,
                    write_timeout,
                    end,
                    ..
                } = *accepted;
                let ws = WebSocketStream::from_raw_socket(
                    CloseCodeFix::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(*ws_config),
                )
                .await;
                drive(cable, request, Box::new(ws), write_timeout).await;
                drop(end);
            })
            .await;
        }
    }
}

/// Runs one connection on a TCP socket: tungstenite reads, the flusher
/// writes (see wire.rs). The setup is done here, before the future exists,
/// so that the future holds only what the session needs.
// Boxed in, so that the box is freed here rather than with the caller's
// future at the connection's end.
#[allow(clippy::boxed_local)]
fn on_tcp(
    accepted: Box<Accepted>,
    parts: hyper::upgrade::Parts<TokioIo<tokio::net::TcpStream>>,
) -> impl std::future::Future<Output = ()> + Send {
    let Accepted {
        cable,
        request,
        tcp_ws_config,
        write_timeout,
        lane,
        end,
        ..
    } = *accepted;
    // Taken apart now: hyper's read buffer (8 KiB) must not live as long as
    // the connection.
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let pre = read_buf.to_vec();
    drop(read_buf);
    let outbox = cable_core::transport::new_outbox(&cable);
    // A batch's tail (at most the outbox's capacity) and a few pongs.
    let max_pending = cable.config().outbound_queue_bytes + 64 * 1024;
    let wire = Wire::new(io.into_inner(), outbox.clone(), write_timeout, max_pending);
    wire.attach(lane);
    let echo = wire.clone();
    let mut inbound = Box::pin(inbound_stream(
        Reader::new(wire.clone(), pre, tcp_ws_config).inspect(move |m| {
            if let Ok(Message::Close(frame)) = m {
                echo.peer_closed(frame.as_ref());
            }
        }),
    ));
    async move {
        cable_core::transport::run_connection(&cable, request, &mut inbound, outbox).await;
        Box::pin(async move {
            wire.finished().await;
            read_until_closed(&mut inbound).await;
            // The socket closes with the last reference to the wire.
            drop(inbound);
            drop(wire);
            drop(end);
        })
        .await;
    }
}

/// Reads until the client answers our close (or goes away), at most 2 s,
/// so the socket is not torn down with unread data, which can make the peer
/// lose our last frames.
async fn read_until_closed<S: Stream + Unpin>(inbound: &mut S) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while inbound.next().await.is_some() {}
    })
    .await;
}

/// How a write batch ended.
enum Written {
    /// More to come.
    Open,
    /// The close frame went out (ours, or the echo of the client's).
    Closed,
}

async fn write_batch<K>(sink: &mut K, batch: &mut Vec<Outgoing>) -> Result<Written, WsError>
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    for item in batch.drain(..) {
        let res = match item {
            Outgoing::Text(frame) => {
                // SAFETY: `Frame` guarantees its bytes are valid UTF-8
                // (it is only ever built from Rust strings).
                let text = unsafe { Utf8Bytes::from_bytes_unchecked(frame.into_bytes()) };
                sink.feed(Message::Text(text)).await
            }
            Outgoing::Close { code, reason } => {
                match sink
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    })))
                    .await
                {
                    Ok(()) => return Ok(Written::Closed),
                    Err(e) => Err(e),
                }
            }
        };
        match res {
            Ok(()) => {}
            // The client closed first: tungstenite refuses our frames and
            // holds the echo of its close; flushing sends it (and then
            // reports the connection closed, which is the point).
            Err(WsError::Protocol(ProtocolError::SendAfterClosing)) => {
                return match sink.flush().await {
                    Ok(()) | Err(WsError::ConnectionClosed) => Ok(Written::Closed),
                    Err(e) => Err(e),
                };
            }
            Err(e) => return Err(e),
        }
    }
    sink.flush().await?;
    Ok(Written::Open)
}

async fn write_loop<K>(mut sink: K, outbox: Arc<Outbox>, write_timeout: std::time::Duration)
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    // Grows to the largest batch this connection has seen; an idle
    // connection keeps a few slots, not WRITE_BATCH.
    let mut batch = Vec::new();
    loop {
        if !outbox.pop_batch(&mut batch, WRITE_BATCH).await {
            break;
        }
        let res = tokio::time::timeout(write_timeout, write_batch(&mut sink, &mut batch)).await;
        batch.clear();
        match res {
            Ok(Ok(Written::Open)) => {}
            Ok(Ok(Written::Closed)) => break,
            Ok(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                outbox.abort();
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!("WebSocket write failed: {e}; dropping the connection");
                outbox.abort();
                break;
            }
            Err(_) => {
                tracing::warn!(
                    "WebSocket write timed out after {:?}; dropping the connection",
                    write_timeout
                );
                outbox.abort();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_offered_protocol_the_server_knows() {
        let mut h = HeaderMap::new();
        for (offered, chosen) in [
            (
                "foo, actioncable-v1-json, actioncable-unsupported",
                Some("actioncable-v1-json"),
            ),
            (
                "actioncable-unsupported,actioncable-v1-json",
                Some("actioncable-unsupported"),
            ),
            ("x", None),
            // @anycable/web offers the extended protocol first.
            (
                "actioncable-v1-ext-json, actioncable-unsupported",
                Some("actioncable-v1-ext-json"),
            ),
            (
                "actioncable-v1-json, actioncable-v1-ext-json",
                Some("actioncable-v1-json"),
            ),
        ] {
            h.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(offered),
            );
            assert_eq!(choose_subprotocol(&h), chosen, "{offered}");
        }
    }
}
