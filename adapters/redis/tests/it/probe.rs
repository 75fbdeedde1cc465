//! Raw access to Redis for tests, without the adapter: a plain
//! connection and `PUBSUB NUMSUB`. Shared
//! by this crate's tests and the workspace's multinode tests (`#[path]`).

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
