//! For transports (the WebSocket server, an SSE endpoint, a test driver):
//! what drives a [`Cable`]'s connections. Applications do not need this
//! module; they build a `Cable` and hand it to a transport.
//!
//! A transport, per client: takes a slot ([`try_transport_guard`]), builds a
//! [`ConnectRequest`] from the handshake (with the
//! negotiated subprotocol, [`ConnectRequest::with_subprotocol`](crate::ConnectRequest::with_subprotocol):
//! the extended protocol reads `?sid=` and `X-ANYCABLE-RESTORE-SID` from the
//! request itself), makes an
//! [`Outbox`] ([`new_outbox`]), runs [`run_connection`] with a stream of
//! [`Inbound`] items, and writes whatever [`Outbox::pop_batch`] gives until
//! the final `Outgoing::Close`. Per server: [`start_heartbeat`] once, and
//! on shutdown [`begin_shutdown`] then [`drain`].
//!
//! ```
//! use cable_core::transport::{self, Inbound, Outgoing};
//! use cable_core::{Cable, ConnectRequest};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cable = Cable::builder().build();
//! let outbox = transport::new_outbox(&cable);
//! // A client that sends nothing and goes away.
//! let inbound = futures_util::stream::empty::<Inbound>();
//! transport::run_connection(&cable, ConnectRequest::default(), inbound, outbox.clone()).await;
//! let mut sent = Vec::new();
//! while outbox.pop_batch(&mut sent, 64).await {}
//! assert!(matches!(&sent[0], Outgoing::Text(f) if f.as_str() == r#"{"type":"welcome"}"#));
//! assert!(matches!(sent.last(), Some(Outgoing::Close { .. })));
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;

use crate::connection::Hello;
use crate::{Cable, ConnectRequest, Identifiers};

pub use crate::cable::TransportGuard;
pub use crate::connection::{Inbound, Probe, ProbeAnswer, Snapshot, SubscriptionSnapshot};
pub use crate::outbox::{Outbox, Outgoing, Popped, PushError, Ready, CLOSE_NORMAL, CLOSE_TOO_BIG};

/// A new outbound queue sized by
/// [`CableConfig::outbound_queue_bytes`](crate::CableConfig::outbound_queue_bytes).
pub fn new_outbox(cable: &Cable) -> Arc<Outbox> {
    cable.new_outbox()
}

/// Runs one connection to its end: authenticates `request`, sends the
/// welcome, then handles frames from `inbound` until it ends, the server
/// ends the connection, or `outbox` closes. Everything to send goes to
/// `outbox`, which the transport drains; the last item is always a close.
/// Frames that arrive before the welcome wait in `inbound` and are handled
/// in order after it.
pub fn run_connection<S>(
    cable: &Cable,
    request: impl Into<Box<ConnectRequest>>,
    inbound: S,
    outbox: Arc<Outbox>,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    // Boxed before the future is built: an async fn keeps room for its
    // arguments for its whole life, and this one lives as long as the
    // connection while the request is dropped after authentication.
    cable.run_connection(Hello::Request(request.into()), inbound, outbox)
}

/// Like [`run_connection`], for a client the transport identified itself
/// (a test driver stubbing the connection, as Rails' `stub_connection`; a
/// transport behind an authenticating proxy): the connect hook does not
/// run, the session starts with `identifiers` and the welcome. The
/// disconnect hook still runs at the end.
pub fn run_identified_connection<S>(
    cable: &Cable,
    identifiers: Identifiers,
    inbound: S,
    outbox: Arc<Outbox>,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    cable.run_connection(Hello::Identified(identifiers), inbound, outbox)
}

/// Starts the server's heartbeat: one ping to every welcomed connection
/// every `every`. Only the first call starts it (one heartbeat per server,
/// however many transports or routers share it); the task holds no strong
/// reference and ends once the last `Cable` clone is dropped.
pub fn start_heartbeat(cable: &Cable, every: Duration) {
    cable.start_heartbeat(every)
}

/// Sends one ping to every welcomed connection now. Returns the number of
/// connections pinged. ([`start_heartbeat`] calls it on a timer.)
pub fn beat(cable: &Cable) -> usize {
    cable.beat()
}

/// Starts a shutdown: new connections are refused and every open one is
/// sent `{"type":"disconnect","reason":"server_restart","reconnect":true}`
/// and closed.
pub fn begin_shutdown(cable: &Cable) {
    cable.begin_shutdown()
}

/// Waits until every connection has ended and every transport socket (see
/// [`transport_guard`]) is closed, at most `timeout`. Returns the number of
/// connections or sockets still open.
pub async fn drain(cable: &Cable, timeout: Duration) -> usize {
    cable.drain(timeout).await
}

/// Marks one transport socket open until the guard is dropped; see
/// [`TransportGuard`].
pub fn transport_guard(cable: &Cable) -> TransportGuard {
    cable.transport_guard()
}

/// Like [`transport_guard`], but only while fewer than `max` sockets are
/// open (a transport's `max_connections`); `None` at the limit.
pub fn try_transport_guard(cable: &Cable, max: usize) -> Option<TransportGuard> {
    cable.try_transport_guard(max)
}

/// Counts a handshake the transport refused before the upgrade (for example
/// at its connection limit); see
/// [`Stats::refused_handshakes`](crate::Stats::refused_handshakes).
pub fn count_refused_handshake(cable: &Cable) {
    cable.count_refused_handshake()
}
