//! A `Cable` served in-process on a free port.

use std::net::SocketAddr;
use std::time::Duration;

use cable_core::{Cable, CableBuilder};
use cable_server::{router, serve, AllowedOrigin, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The Origin [`TestServer::start`] allows.
const ORIGIN: &str = "http://allowed.test";

/// A server on `127.0.0.1` at a free port, with graceful shutdown on
/// [`TestServer::shutdown`] (aborted on drop otherwise).
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The cable it serves.
    pub cable: Cable,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// The transport settings [`start`](Self::start) uses: [`origin`](Self::origin)
    /// allowed, a 300 ms heartbeat (so tests see pings quickly), and
    /// Server-Sent Events at `/events`.
    pub fn config() -> ServerConfig {
        let mut c = ServerConfig::default();
        c.origins.allowed.push(AllowedOrigin::from(ORIGIN));
        c.ping_interval = Duration::from_millis(300);
        c.sse_path = Some(cable_server::DEFAULT_SSE_PATH.to_owned());
        c
    }

    /// Builds the cable and serves `cable_server::router` alone, with
    /// [`config`](Self::config).
    pub async fn start(builder: CableBuilder) -> TestServer {
        let cable = builder.build();
        let app = router(cable.clone(), Self::config());
        Self::serve(app, cable).await
    }

    /// Serves `app` (an axum app with cable's router merged in) for `cable`.
    pub async fn serve(app: axum::Router, cable: Cable) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, rx) = oneshot::channel::<()>();
        let c = cable.clone();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = rx.await;
            };
            serve(listener, app, c, stopped, Duration::from_secs(5))
                .await
                .expect("serve");
        });
        TestServer {
            addr,
            cable,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// The Origin header that [`config`](Self::config) allows.
    pub fn origin(&self) -> &'static str {
        ORIGIN
    }

    /// `ws://ADDR` followed by `path_and_query` (for example `/cable?user=a`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Starts a graceful shutdown (clients are told `server_restart`) and
    /// waits for the server to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server did not stop within 10 s")
                .expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
