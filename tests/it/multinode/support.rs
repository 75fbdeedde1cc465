//! Helpers: real `chat` processes, a raw actioncable-v1-json WebSocket client,
//! Redis discovery and `PUBSUB` queries.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::ops::{Deref, DerefMut};

pub use crate::chat_process::{chat_exit, Chat, START_WAIT};
/// How long a test waits for anything that should happen.
pub use cable_test::WAIT;

/// `ChatChannel` in room `lobby`, as the JS client sends it.
pub const LOBBY: &str = r#"{"channel":"ChatChannel","room":"lobby"}"#;

pub fn room(r: &str) -> String {
    format!(r#"{{"channel":"ChatChannel","room":"{r}"}}"#)
}

pub use cable_test::frames::message;

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

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

/// The shared Redis at `REDIS_URL`, or None after printing why the test is
/// skipped (a failure instead when `CI` is set).
pub async fn shared_redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
    let url = redis_url();
    match try_plain(&url).await {
        Some(conn) => Some((url, conn)),
        None if std::env::var_os("CI").is_some() => {
            panic!("Redis not reachable at {url} (CI is set, so this is a failure)")
        }
        None => {
            println!("SKIPPED: Redis not reachable at {url} (start redis-server or set REDIS_URL)");
            None
        }
    }
}

/// A channel prefix no other test, or test run, uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "cable-test-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub use cable_test::eventually;

pub async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .expect("PUBSUB NUMSUB");
    reply.first().map_or(0, |(_, n)| *n)
}

/// Waits until `PUBSUB NUMSUB channel` is `n`.
pub async fn until_numsub(conn: &redis::aio::MultiplexedConnection, channel: &str, n: i64) {
    eventually(&format!("PUBSUB NUMSUB {channel} = {n}"), || {
        let mut conn = conn.clone();
        async move { numsub(&mut conn, channel).await == n }
    })
    .await;
}

pub async fn channels(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut list: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg(pattern)
        .query_async(conn)
        .await
        .expect("PUBSUB CHANNELS");
    list.sort();
    list
}

/// Runs the real `redis-cli` with `args`, or None (after printing why) when
/// the binary is missing; a failure instead when `CI` is set.
pub async fn redis_cli(args: Vec<String>) -> Option<Output> {
    let run = tokio::task::spawn_blocking(move || Command::new("redis-cli").args(&args).output());
    let run = tokio::time::timeout(WAIT, run)
        .await
        .expect("redis-cli did not finish within 5s")
        .expect("redis-cli task");
    match run {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-cli not found (CI is set, so this is a failure)"
            );
            println!("SKIPPED: redis-cli not found on PATH");
            None
        }
        Err(e) => panic!("cannot run redis-cli: {e}"),
    }
}

/// A node on `url` with `prefix`, admin endpoints on.
pub async fn redis_node(url: &str, prefix: &str) -> Chat {
    Chat::start(&["--admin", "--adapter", url, "--channel-prefix", prefix]).await
}

/// A raw actioncable-v1-json client (`cable_test::Client`), connected as
/// the JS client connects: same-origin `Origin`, both subprotocols offered,
/// the user in `?user=`. It speaks to any ActionCable server (the Rails
/// interop tests point it at Rails).
/// Failures name it by its user, or `user@server` when the server was named.
pub struct Client {
    inner: cable_test::Client,
}

impl Deref for Client {
    type Target = cable_test::Client;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

impl Client {
    /// Connects to `chat` as `user` and reads the welcome.
    pub async fn connect(chat: &Chat, user: &str) -> Client {
        Client::connect_to(None, chat.addr, user).await
    }

    /// Connects to the ActionCable server at `addr` (named `server` in
    /// failure messages) as `user` and reads the welcome.
    pub async fn connect_to(server: Option<&str>, addr: SocketAddr, user: &str) -> Client {
        let name = match server {
            Some(s) => format!("{user}@{s}"),
            None => user.to_owned(),
        };
        let origin = format!("http://{addr}");
        let inner = cable_test::Client::connect(
            &format!("ws://{addr}/cable?user={user}"),
            &[("Origin", &origin), cable_test::JS_CLIENT_PROTOCOLS],
        )
        .await
        .named(name);
        assert_eq!(
            inner.protocol.as_deref(),
            Some("actioncable-v1-json"),
            "{}: subprotocol",
            inner.name
        );
        let mut client = Client { inner };
        client.expect(cable_test::frames::WELCOME).await;
        client
    }

    /// Connects as `user` and joins `identifier` (confirmation awaited).
    pub async fn joined(chat: &Chat, user: &str, identifier: &str) -> Client {
        let mut c = Client::connect(chat, user).await;
        c.join(identifier).await;
        c
    }

    /// [`Client::connect_to`], then joins `identifier`.
    pub async fn joined_to(server: &str, addr: SocketAddr, user: &str, identifier: &str) -> Client {
        let mut c = Client::connect_to(Some(server), addr, user).await;
        c.join(identifier).await;
        c
    }

    /// Subscribes and waits for `confirm_subscription`, which the server sends
    /// only once the adapter acknowledged the subscription.
    pub async fn join(&mut self, identifier: &str) {
        self.inner.subscribe(identifier).await;
    }

    /// Performs `speak` with `body` in the room of `identifier`.
    pub async fn speak(&mut self, identifier: &str, body: &str) {
        let data = serde_json::json!({"action": "speak", "body": body});
        self.inner.perform(identifier, data).await;
    }

    /// Closes the socket and waits for the server's side of the close.
    pub async fn leave(self) {
        self.inner.leave().await;
    }
}
