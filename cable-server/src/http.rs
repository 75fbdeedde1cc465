//! The HTTP accept loop behind [`crate::serve`]: HTTP/1.1 with upgrades,
//! bounded in time and number before the upgrade, and bounded at shutdown.
//!
//! axum's own `serve` has neither a header read timeout nor a bound on
//! connections that never finish their request, and its graceful shutdown
//! waits for every such connection for ever; a few hundred half-sent
//! requests (slowloris) would hold file descriptors and block SIGTERM.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A `status` answer with `body` and one header (name and value).
pub(crate) fn respond(
    status: StatusCode,
    header: (HeaderName, &'static str),
    body: impl Into<String>,
) -> Response {
    (status, [header], body.into()).into_response()
}

/// A plain-text `status` answer.
pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    respond(
        status,
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        body,
    )
}

/// How [`crate::serve_with`] runs the HTTP side.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long shutdown waits for clients to leave (after `server_restart`
    /// was sent) and for HTTP requests in progress, in all. Default 10 s.
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers (also the
    /// longest a keep-alive connection may sit idle). Default 10 s.
    pub header_read_timeout: Duration,
    /// Most connections that have not (yet) become WebSockets: requests in
    /// progress, half-sent requests, idle keep-alive connections. Past it
    /// the oldest is closed to make room, so a flood of half-sent requests
    /// cannot lock fresh clients out. Default 1024.
    pub max_pending_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            drain_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_pending_connections: 1024,
        }
    }
}

impl ServeOptions {
    /// Options with this drain timeout and the other defaults.
    pub fn with_drain_timeout(drain_timeout: Duration) -> Self {
        ServeOptions {
            drain_timeout,
            ..Self::default()
        }
    }
}

/// Connections not upgraded yet, oldest first.
#[derive(Default)]
struct Pending {
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, CancellationToken>>,
    evicted: AtomicU64,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, evicting the oldest past `max`.
    fn admit(&self, max: usize) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut open = self.lock();
        open.insert(id, token.clone());
        while open.len() > max.max(1) {
            if let Some((_, oldest)) = open.pop_first() {
                oldest.cancel();
                let n = self.evicted.fetch_add(1, Ordering::Relaxed);
                // One line per 100 evictions: a flood must not flood the log.
                if n.is_multiple_of(100) {
                    tracing::warn!(
                        "{max} HTTP connections without a finished request are open (max_pending_connections); closing the oldest ({} so far)",
                        n + 1
                    );
                }
            }
        }
        (id, token)
    }

    fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn cancel_all(&self) {
        for (_, t) in std::mem::take(&mut *self.lock()) {
            t.cancel();
        }
    }
}

/// Accepts and serves HTTP connections until `shutdown` resolves, then
/// calls `on_shutdown`, lets requests in progress finish until `deadline`
/// and closes whatever is left. Returns the time shutdown began.
pub(crate) async fn accept_loop<F>(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: F,
    options: &ServeOptions,
    on_shutdown: impl FnOnce(),
) -> std::io::Result<tokio::time::Instant>
where
    F: Future<Output = ()> + Send + 'static,
{
    let pending = Arc::new(Pending::default());
    // Dropped senders tell connection tasks to shut down gracefully; the
    // receiver count tells when they are all gone.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Frames are small and latency matters: no Nagle delay (with
                // delayed ACKs it holds a lone frame back by up to 40 ms).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::trace!("could not set TCP_NODELAY: {e}");
                }
                let (id, evict) = pending.admit(options.max_pending_connections);
                tokio::spawn(serve_one(
                    tcp,
                    peer,
                    app.clone(),
                    options.header_read_timeout,
                    ConnGuard { pending: pending.clone(), id },
                    evict,
                    stop_rx.clone(),
                ));
            }
        }
    }
    let began = tokio::time::Instant::now();
    drop(listener);
    on_shutdown();
    let _ = stop_tx.send(true);
    let deadline = began + options.drain_timeout;
    // Requests in progress may finish; idle and half-sent connections are
    // closed by hyper's graceful shutdown or, at the deadline, by us.
    while pending.len() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pending.cancel_all();
    Ok(began)
}

/// Takes the connection off the pending list when its HTTP part ends
/// (upgraded, closed or evicted).
struct ConnGuard {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.pending.leave(self.id);
    }
}

async fn serve_one(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    header_read_timeout: Duration,
    _guard: ConnGuard,
    evict: CancellationToken,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let res = app.oneshot(req.map(axum::body::Body::new)).await;
            Ok::<_, Infallible>(match res {
                Ok(r) => r,
                Err(never) => match never {},
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = *stop.borrow();
    if stopping {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("HTTP connection from {peer} ended: {e}");
                }
                return;
            }
            _ = evict.cancelled() => return,
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_evicts_the_oldest_past_the_limit() {
        let p = Pending::default();
        let (a, ta) = p.admit(2);
        let (_b, tb) = p.admit(2);
        assert!(!ta.is_cancelled());
        let (_c, tc) = p.admit(2);
        assert!(ta.is_cancelled(), "the oldest goes");
        assert!(!tb.is_cancelled() && !tc.is_cancelled());
        assert_eq!(p.len(), 2);
        p.leave(a);
        assert_eq!(p.len(), 2, "already gone");
        p.cancel_all();
        assert!(tb.is_cancelled() && tc.is_cancelled());
        assert_eq!(p.len(), 0);
    }
}
