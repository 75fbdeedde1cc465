//! Helpers: Redis discovery, socket-free clients, an own redis-server.

pub use crate::probe::{numsub, redis_server_found, try_plain};

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use cable_core::Cable;
use cable_redis::{RedisConfig, RedisPubSub, RedisStatus};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The shared Redis, or None after printing why the test is skipped (a
/// failure instead when `CI` is set).
pub async fn shared_redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
    shared_server("redis (set REDIS_URL)", redis_url(), try_plain).await
}

/// A [`node`] on the shared Redis on a prefix of its own, once connected:
/// (a plain connection for raw commands, prefix, cable, status), or None
/// after a skip.
pub async fn shared_node() -> Option<(
    redis::aio::MultiplexedConnection,
    String,
    Cable,
    RedisStatus,
)> {
    let (url, plain) = shared_redis().await?;
    let (prefix, cable, status) = connected_node(|prefix| node(&url, prefix)).await;
    Some((plain, prefix, cable, status))
}

/// A node: a Cable on Redis with `prefix`, users identified by `?user=`.
pub fn node(url: &str, prefix: &str) -> (Cable, RedisStatus) {
    node_with(
        RedisConfig::new(url)
            .channel_prefix(prefix)
            .connection_name(format!("{prefix}-node")),
    )
}

/// A node as [`node`], with these adapter settings.
pub fn node_with(config: RedisConfig) -> (Cable, RedisStatus) {
    // Logs with RUST_LOG=cable_redis=debug (and --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    chat_node(
        |d| RedisPubSub::new(config, d).expect("valid redis config"),
        RedisPubSub::status,
    )
}

/// Waits until `status` says connected.
pub async fn until_connected(status: &RedisStatus) {
    eventually("redis subscriber connected", || {
        let s = status.clone();
        async move { s.is_connected() }
    })
    .await;
}

pub use cable_test::eventually;

pub use cable_adapter_kit::conformance::{
    chat_node, connected_node, delivery_survives_an_outage, message_frame, shared_server,
    skip_because, starts_while_the_backend_is_away, subscribe_fails_during_a_long_outage,
    unique_prefix, LocalClient as Client,
};

pub async fn publish(conn: &mut redis::aio::MultiplexedConnection, channel: &str, payload: &str) {
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(conn)
        .await
        .expect("PUBLISH");
}

/// A redis-server of our own on a free port, so that an outage harms no one
/// else. Killed on drop.
pub struct OwnRedis {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one, or None (after printing why) if `redis-server` is missing;
    /// a failure instead when `CI` is set.
    pub async fn start(extra: &[&str]) -> Option<OwnRedis> {
        let mut redis = OwnRedis::stopped(extra)?;
        redis.restart().await;
        Some(redis)
    }

    /// A free port for one, not started yet.
    pub fn stopped(extra: &[&str]) -> Option<OwnRedis> {
        if !redis_server_found() {
            skip_because("redis-server binary not found; cannot simulate an outage");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Some(OwnRedis {
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let url = self.url();
        eventually("own redis-server answering", || {
            let url = url.clone();
            async move { try_plain(&url).await.is_some() }
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

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
