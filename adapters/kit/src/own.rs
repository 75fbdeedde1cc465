//! A backend server process of a test's own ([`OwnServer`]): a
//! redis-server or nats-server on a free port that a test may kill and
//! restart without harming the other tests, which share the machine's
//! server.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};

use crate::conformance::{eventually, skip_because};

/// Whether the server at a URL answers: a client's probe (a PING, a NATS
/// flush), or a TCP connect where a bare client is refused.
pub type Probe = fn(String) -> Pin<Box<dyn Future<Output = bool> + Send>>;

/// A server program run by a test on a free port of 127.0.0.1. Killed
/// (SIGKILL, so clients see their connections drop) on drop.
///
/// ```ignore
/// let mut redis = OwnServer::start("redis-server", "redis", &["--port", "{port}"], probe).await?;
/// redis.kill();          // an outage
/// redis.restart().await; // same port; back once the probe answers
/// ```
pub struct OwnServer {
    /// The port it listens on, the same across restarts.
    pub port: u16,
    program: &'static str,
    scheme: &'static str,
    args: Vec<String>,
    probe: Probe,
    child: Option<Child>,
}

impl OwnServer {
    /// Starts `program` with `args` (each `{port}` in them replaced by the
    /// port) and waits until `probe` says it answers. None (after printing
    /// why) when the program is not installed; a failure instead when `CI`
    /// is set.
    pub async fn start(
        program: &'static str,
        scheme: &'static str,
        args: &[&str],
        probe: Probe,
    ) -> Option<OwnServer> {
        Some(
            OwnServer::stopped(program, scheme, args, probe)?
                .started()
                .await,
        )
    }

    /// Like [`OwnServer::start`], but not started yet: a URL on which
    /// nothing answers until [`OwnServer::restart`].
    pub fn stopped(
        program: &'static str,
        scheme: &'static str,
        args: &[&str],
        probe: Probe,
    ) -> Option<OwnServer> {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            skip_because(&format!(
                "{program} binary not found; cannot simulate an outage"
            ));
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let args = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        Some(OwnServer {
            port,
            program,
            scheme,
            args,
            probe,
            child: None,
        })
    }

    /// [`OwnServer::restart`]ed, for a chain after [`OwnServer::stopped`].
    pub async fn started(mut self) -> OwnServer {
        self.restart().await;
        self
    }

    /// `<scheme>://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program));
        self.child = Some(child);
        let (url, probe) = (self.url(), self.probe);
        eventually(&format!("own {} answering", self.program), || {
            probe(url.clone())
        })
        .await;
    }

    /// Restarts (`up`) or kills the server.
    pub async fn set_up(&mut self, up: bool) {
        if up {
            self.restart().await
        } else {
            self.kill()
        }
    }

    /// Kills the server (SIGKILL: clients see their connections drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node made by `node` (given a URL and a channel prefix) on `server`
/// under a prefix of its own: (server, prefix, node, what `node` returned
/// with it), or None when there is no server (its start was skipped).
pub fn own_node<S>(
    server: Option<OwnServer>,
    node: impl FnOnce(&str, &str) -> (cable_core::Cable, S),
) -> Option<(OwnServer, String, cable_core::Cable, S)> {
    let server = server?;
    let prefix = crate::conformance::unique_prefix();
    let (cable, status) = node(&server.url(), &prefix);
    Some((server, prefix, cable, status))
}

/// [`starts_while_the_backend_is_away`](crate::conformance::starts_while_the_backend_is_away)
/// for a node `node` makes on `server`, a server not started yet
/// ([`OwnServer::stopped`]); passes (skipped) without one.
pub async fn starts_before_its_own_server<S>(
    server: Option<OwnServer>,
    node: impl FnOnce(&str, &str) -> (cable_core::Cable, S),
) {
    let Some((mut server, _, cable, _)) = own_node(server, node) else {
        return;
    };
    let set_up = async |up| server.set_up(up).await;
    crate::conformance::starts_while_the_backend_is_away(&cable, set_up, |_| {}).await;
}
