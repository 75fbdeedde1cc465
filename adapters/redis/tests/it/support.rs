//! Helpers: Redis discovery, socket-free clients, an own redis-server.

pub use crate::probe::{numsub, try_plain};

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
    let config = RedisConfig::new(url).channel_prefix(prefix);
    node_with(config.connection_name(format!("{prefix}-node")))
}

/// A node as [`node`], with these adapter settings.
pub fn node_with(config: RedisConfig) -> (Cable, RedisStatus) {
    chat_node(
        |d| RedisPubSub::new(config, d).expect("valid redis config"),
        RedisPubSub::status,
    )
}

pub use cable_test::eventually;

pub use cable_adapter_kit::conformance::{
    chat_node, connected_node, delivery_survives_an_outage, message_frame, own_node, shared_server,
    starts_before_its_own_server, subscribe_fails_during_a_long_outage, unique_prefix,
    until_connected, LocalClient as Client, OwnServer,
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
pub type OwnRedis = OwnServer;

/// Starts an [`OwnRedis`] (no persistence, plus `extra` arguments), or None
/// (after printing why) if `redis-server` is missing; a failure instead
/// when `CI` is set.
pub async fn own_redis(extra: &[&str]) -> Option<OwnRedis> {
    Some(own_redis_stopped(extra)?.started().await)
}

/// A free port for an [`OwnRedis`], not started yet.
pub fn own_redis_stopped(extra: &[&str]) -> Option<OwnRedis> {
    let mut args = vec!["--port", "{port}", "--bind", "127.0.0.1", "--save", ""];
    args.extend(["--appendonly", "no", "--daemonize", "no"]);
    args.extend(extra);
    OwnServer::stopped("redis-server", "redis", &args, |url| {
        Box::pin(async move { try_plain(&url).await.is_some() })
    })
}
