//! Helpers: NATS discovery, nodes, a TCP proxy that sees the node's
//! subscriptions and can cut its connections, an own nats-server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::Cable;
use cable_nats::{NatsConfig, NatsPubSub, NatsStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub use cable_adapter_kit::conformance::{
    chat_node, connected_node, delivery_survives_an_outage, own_node, shared_server,
    starts_before_its_own_server, subscribe_fails_during_a_long_outage, unique_prefix,
    until_connected, LocalClient as Client, OwnServer,
};

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A plain client for raw publishes, or None if NATS is unreachable.
pub async fn try_plain(url: &str) -> Option<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url);
    let client = tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .ok()?
        .ok()?;
    client.flush().await.ok()?;
    Some(client)
}

/// The shared NATS, or None after printing why the test is skipped (a
/// failure instead when `CI` is set).
pub async fn shared_nats() -> Option<(String, async_nats::Client)> {
    shared_server("nats (set NATS_URL)", nats_url(), try_plain).await
}

/// The subject of `stream` under `prefix`, as the adapter names it.
pub fn subject(prefix: &str, stream: &str) -> String {
    format!("{prefix}.{}", cable_nats::subject::token(stream))
}

/// A node: a Cable on NATS with `prefix`, users identified by `?user=`.
pub fn node(url: &str, prefix: &str) -> (Cable, NatsStatus) {
    node_with(
        NatsConfig::new(url)
            .subject_prefix(prefix)
            .connection_name(format!("{prefix}-node")),
    )
}

/// A node as [`node`], with these adapter settings.
pub fn node_with(config: NatsConfig) -> (Cable, NatsStatus) {
    chat_node(
        |d| NatsPubSub::new(config, d).expect("valid nats config"),
        NatsPubSub::status,
    )
}

/// A node on the shared NATS on a prefix of its own, once connected:
/// (a plain client for raw publishes, prefix, cable, status), or None
/// after a skip.
pub async fn shared_node() -> Option<(async_nats::Client, String, Cable, NatsStatus)> {
    let (url, plain) = shared_nats().await?;
    let (prefix, cable, status) = connected_node(|prefix| node(&url, prefix)).await;
    Some((plain, prefix, cable, status))
}

/// `host:port` of a `nats://[user:pass@]host[:port]` URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:4222")
    }
}

/// A TCP proxy in front of a NATS server for one node: it reads the
/// client-to-server protocol going through (`SUB <subject> [queue] <sid>`,
/// `UNSUB <sid>`, payloads of `PUB`/`HPUB` skipped) to count the node's
/// subscriptions as the server received them (nats-server 2.9 lists
/// them only on a monitoring port), and [`Proxy::cut`] drops every
/// connection as a server restart does, the other tests' untouched.
pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<Link>>>,
    accept: JoinHandle<()>,
}

struct Link {
    tasks: [JoinHandle<()>; 2],
    /// sid -> subject of this connection's live subscriptions.
    subs: Arc<Mutex<HashMap<String, String>>>,
}

impl Proxy {
    /// Starts a proxy to the server of `url`; needs a runtime.
    pub fn start(url: &str) -> Proxy {
        let upstream = host_port(url);
        let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std.set_nonblocking(true).expect("nonblocking");
        let port = std.local_addr().expect("addr").port();
        let listener = TcpListener::from_std(std).expect("tokio listener");
        let conns: Arc<Mutex<Vec<Link>>> = Arc::default();
        let accept = tokio::spawn({
            let conns = conns.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        continue;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let subs: Arc<Mutex<HashMap<String, String>>> = Arc::default();
                    let up = tokio::spawn({
                        let subs = subs.clone();
                        async move {
                            let mut parser = Parser::default();
                            let mut buf = vec![0u8; 64 << 10];
                            while let Ok(n) = cr.read(&mut buf).await {
                                if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                                parser.feed(&buf[..n], &subs);
                            }
                        }
                    });
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    conns.lock().unwrap_or_else(|e| e.into_inner()).push(Link {
                        tasks: [up, down],
                        subs,
                    });
                }
            }
        });
        Proxy {
            port,
            conns,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Subscriptions on `subject` over the node's open connections.
    pub fn subscriptions(&self, subject: &str) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .iter()
            .filter(|l| !l.tasks[0].is_finished())
            .map(|l| {
                let subs = l.subs.lock().unwrap_or_else(|e| e.into_inner());
                subs.values().filter(|s| *s == subject).count()
            })
            .sum()
    }

    /// Drops every connection through the proxy (new ones are still let in).
    pub fn cut(&self) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!conns.is_empty(), "no connection to cut");
        for link in conns.drain(..) {
            for t in link.tasks {
                t.abort();
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            for t in link.tasks {
                t.abort();
            }
        }
    }
}

/// The client-to-server half of the NATS protocol, as far as SUB/UNSUB.
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
    /// Payload bytes (with their CRLF) still to skip.
    skip: usize,
}

impl Parser {
    fn feed(&mut self, data: &[u8], subs: &Mutex<HashMap<String, String>>) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    break;
                }
            }
            let Some(end) = self.buf[at..].windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.buf[at..at + end]).into_owned();
            at += end + 2;
            let words: Vec<&str> = line.split_ascii_whitespace().collect();
            let size = |w: Option<&&str>| w.and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
            match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
                Some("PUB") | Some("HPUB") => self.skip = size(words.last()) + 2,
                Some("SUB") if words.len() >= 3 => {
                    let sid = words[words.len() - 1].to_owned();
                    subs.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(sid, words[1].to_owned());
                }
                Some("UNSUB") if words.len() >= 2 => {
                    subs.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(words[1]);
                }
                _ => {}
            }
        }
        self.buf.drain(..at);
    }
}

/// A nats-server of our own on a free port, so that an outage harms no one
/// else. Killed on drop.
pub type OwnNats = OwnServer;

/// Starts an [`OwnNats`] with `extra` arguments, or None (after printing
/// why) if `nats-server` is missing; a failure instead when `CI` is set.
pub async fn own_nats(extra: &[&str]) -> Option<OwnNats> {
    Some(own_nats_stopped(extra)?.started().await)
}

/// A free port for an [`OwnNats`], not started yet.
pub fn own_nats_stopped(extra: &[&str]) -> Option<OwnNats> {
    let mut args = vec!["-a", "127.0.0.1", "-p", "{port}"];
    args.extend(extra);
    // With auth, "answering" is accepting TCP (it refuses a bare client).
    let probe: cable_adapter_kit::conformance::Probe = if extra.contains(&"--user") {
        |url| Box::pin(async move { std::net::TcpStream::connect(host_port(&url)).is_ok() })
    } else {
        |url| Box::pin(async move { try_plain(&url).await.is_some() })
    };
    OwnServer::stopped("nats-server", "nats", &args, probe)
}
