//! Helpers: Redis discovery, socket-free clients, an own redis-server.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cable_core::transport::{Inbound, Outbox, Outgoing};
use cable_core::{
    async_trait, authenticate_with, Cable, Channel, ChannelError, ConnectRequest, Context,
    Identifiers, Unauthorized,
};
use cable_redis::{RedisConfig, RedisPubSub, RedisStatus};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

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

/// The shared Redis, or None after printing why the test is skipped (a
/// failure instead when `CI` is set).
pub async fn shared_redis() -> Option<(String, redis::aio::MultiplexedConnection)> {
    let url = redis_url();
    match try_plain(&url).await {
        Some(conn) => Some((url, conn)),
        None if std::env::var_os("CI").is_some() => {
            panic!("redis not reachable at {url} (CI is set, so this is a failure)")
        }
        None => {
            println!("SKIPPED: redis not reachable at {url} (set REDIS_URL)");
            None
        }
    }
}

/// A channel prefix no other test (or test run) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("cable_it_{:016x}", h.finish())
}

/// `ChatChannel`: streams from `chat_<room>` (room defaults to "lobby").
#[derive(Default)]
pub struct ChatChannel;

#[async_trait]
impl Channel for ChatChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
        ctx.stream_from(format!("chat_{room}"));
        Ok(())
    }
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
    let status = Arc::new(OnceLock::new());
    let slot = status.clone();
    let cable = Cable::builder()
        .channel("ChatChannel", ChatChannel::default)
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .pubsub(move |d| {
            let redis = RedisPubSub::new(config, d).expect("valid redis config");
            let _ = slot.set(redis.status());
            redis
        })
        .build();
    let status = status.get().cloned().expect("pubsub factory ran");
    (cable, status)
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

/// A client driven through `run_connection`, with no socket.
pub struct Client {
    tx: Option<mpsc::UnboundedSender<Inbound>>,
    outbox: Arc<Outbox>,
    task: JoinHandle<()>,
    pending: std::collections::VecDeque<Outgoing>,
}

impl Client {
    /// Connects as `user` and reads the welcome.
    pub async fn connect(cable: &Cable, user: &str) -> Client {
        let (tx, mut rx) = mpsc::unbounded_channel::<Inbound>();
        let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let outbox = cable_core::transport::new_outbox(cable);
        let request = ConnectRequest::new("/cable", Some(&format!("user={user}")), vec![], None);
        let task = tokio::spawn({
            let cable = cable.clone();
            let outbox = outbox.clone();
            async move { cable_core::transport::run_connection(&cable, request, inbound, outbox).await }
        });
        let mut client = Client {
            tx: Some(tx),
            outbox,
            task,
            pending: Default::default(),
        };
        assert_eq!(client.next_text().await, r#"{"type":"welcome"}"#);
        client
    }

    pub fn send(&self, command: Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Inbound::Text(command.to_string()));
        }
    }

    /// Subscribes to `ChatChannel` in `room`; returns the identifier. Does not
    /// wait for the confirmation.
    pub fn start_subscribe(&self, room: &str) -> String {
        let identifier = json!({"channel": "ChatChannel", "room": room}).to_string();
        self.send(json!({"command": "subscribe", "identifier": identifier}));
        identifier
    }

    /// Subscribes and waits for `confirm_subscription`.
    pub async fn subscribe(&mut self, room: &str) -> String {
        let identifier = self.start_subscribe(room);
        self.expect_confirm(&identifier).await;
        identifier
    }

    pub async fn expect_confirm(&mut self, identifier: &str) {
        let confirm = json!({"identifier": identifier, "type": "confirm_subscription"}).to_string();
        assert_eq!(self.next_text().await, confirm);
    }

    /// The next item the connection sends, within [`WAIT`]; pings skipped.
    pub async fn next(&mut self) -> Outgoing {
        tokio::time::timeout(WAIT, self.next_inner())
            .await
            .expect("no frame within 5s")
    }

    async fn next_inner(&mut self) -> Outgoing {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let Outgoing::Text(f) = &item {
                    if f.as_str().contains(r#""type":"ping""#) {
                        continue;
                    }
                }
                return item;
            }
            let mut buf = Vec::new();
            if !self.outbox.pop_batch(&mut buf, 64).await {
                std::future::pending::<()>().await;
            }
            self.pending.extend(buf);
        }
    }

    /// The next text frame.
    pub async fn next_text(&mut self) -> String {
        match self.next().await {
            Outgoing::Text(f) => f.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Whether anything arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.next_inner()).await.is_err()
    }

    /// Closes the socket side and waits for the connection to end.
    pub async fn leave(mut self) {
        self.tx = None;
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
    }
}

/// `{"identifier":…,"message":…}` as the core frames it.
pub fn message_frame(identifier: &str, message_json: &str) -> String {
    format!(
        r#"{{"identifier":{},"message":{}}}"#,
        serde_json::to_string(identifier).expect("string"),
        message_json
    )
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
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server binary not found (CI is set, so this is a failure)"
            );
            println!("SKIPPED: redis-server binary not found; cannot simulate an outage");
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
