//! Raw access to Redis for tests, without the adapter: a plain
//! connection, `PUBSUB NUMSUB`, whether `redis-server` is installed. Shared
//! by this crate's tests and the workspace's multinode tests (`#[path]`).

use std::process::{Command, Stdio};
use std::time::Duration;

/// A plain connection for raw commands, or None if Redis is unreachable.
pub async fn try_plain(url: &str) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let connect = client.get_multiplexed_async_connection();
    let mut conn = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .ok()?
        .ok()?;
    let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
    pong.ok().map(|_| conn)
}

pub async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    reply.first().map_or(0, |(_, n)| *n)
}

/// Whether a `redis-server` binary is on `PATH`.
pub fn redis_server_found() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
}
