//! Helpers: the two shared backends (Redis, PostgreSQL) as one [`Kind`],
//! `chat` nodes on them, bare subscribers and command-line publishers as
//! Rails' side would use, and a client that connects as the JS client does.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::sync::mpsc;

// The adapters' own raw probes, the same code their tests use.
#[path = "../../../adapters/postgres/tests/it/probe.rs"]
mod postgres_probe;
#[path = "../../../adapters/redis/tests/it/probe.rs"]
mod redis_probe;

pub use redis_probe::numsub;

/// Whether a `redis-server` binary is on `PATH`.
pub fn redis_server_found() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok()
}

pub use crate::chat_process::{chat_exit, Chat};
pub use crate::process::{run_with_timeout, skip, tool, Server, START_WAIT};
pub use cable_test::frames::message;
pub use cable_test::{eventually, WAIT};

/// `ChatChannel` in room `lobby`, as the JS client sends it.
pub const LOBBY: &str = r#"{"channel":"ChatChannel","room":"lobby"}"#;

pub fn room(r: &str) -> String {
    format!(r#"{{"channel":"ChatChannel","room":"{r}"}}"#)
}

/// The pub/sub backends chat nodes (and Rails) share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Redis,
    Postgres,
}

/// Expands to one `#[tokio::test]` per backend calling `body(Kind)`:
/// `both!(name)` makes `name::redis` and `name::postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name(super::Kind::Redis).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Kind::Postgres).await;
            }
        }
    )*};
}
pub(crate) use both;

/// A plain connection to a backend, for raw commands and queries.
pub enum Plain {
    Redis(redis::aio::MultiplexedConnection),
    Postgres(tokio_postgres::Client),
}

/// A backend reachable at `url`, with a channel prefix of this test's own.
pub struct Shared {
    pub kind: Kind,
    pub url: String,
    pub prefix: String,
    pub plain: Plain,
}

impl Kind {
    /// `REDIS_URL` / `DATABASE_URL`, or the local defaults.
    pub fn url(self) -> String {
        let (var, default) = match self {
            Kind::Redis => ("REDIS_URL", "redis://127.0.0.1:6379"),
            Kind::Postgres => ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// The shared backend and two chat nodes on it, or None after printing
    /// why the test is skipped.
    pub async fn two_chats(self) -> Option<(Shared, Chat, Chat)> {
        let shared = self.shared().await?;
        let (a, b) = shared.two_nodes().await;
        Some((shared, a, b))
    }

    /// The shared backend, or None after printing why the test is skipped
    /// (a failure instead when `CI` is set).
    pub async fn shared(self) -> Option<Shared> {
        let url = self.url();
        let plain = match self {
            Kind::Redis => redis_probe::try_plain(&url).await.map(Plain::Redis),
            Kind::Postgres => postgres_probe::try_plain(&url).await.map(Plain::Postgres),
        };
        let Some(plain) = plain else {
            let hint = match self {
                Kind::Redis => "start redis-server or set REDIS_URL",
                Kind::Postgres => "set DATABASE_URL",
            };
            return skip(&format!("{self:?} not reachable at {url} ({hint})"));
        };
        Some(Shared {
            kind: self,
            url,
            prefix: unique_prefix(),
            plain,
        })
    }
}

impl Shared {
    /// The plain Redis connection (a Redis backend only).
    pub fn redis(&self) -> redis::aio::MultiplexedConnection {
        match &self.plain {
            Plain::Redis(conn) => conn.clone(),
            Plain::Postgres(_) => panic!("not a Redis backend"),
        }
    }

    /// The plain PostgreSQL session (a PostgreSQL backend only).
    pub fn postgres(&self) -> &tokio_postgres::Client {
        match &self.plain {
            Plain::Postgres(client) => client,
            Plain::Redis(_) => panic!("not a PostgreSQL backend"),
        }
    }

    /// The backend's name for stream `stream` under this prefix.
    pub fn channel(&self, stream: &str) -> String {
        format!("{}:{stream}", self.prefix)
    }

    /// A `chat` node on this backend and prefix, admin endpoints on.
    pub async fn node(&self) -> Chat {
        let args = [
            "--admin",
            "--adapter",
            &self.url,
            "--channel-prefix",
            &self.prefix,
        ];
        Chat::start(&args).await
    }

    /// Two nodes on this backend and prefix.
    pub async fn two_nodes(&self) -> (Chat, Chat) {
        tokio::join!(self.node(), self.node())
    }

    /// Publishes `payload` on `channel` (the backend's name, prefix
    /// included) the way a Rails app does, with the backend's own
    /// command-line client (`redis-cli PUBLISH`, `psql -c NOTIFY`); None
    /// (after printing why) when that client is not installed. Panics unless
    /// it succeeds.
    pub async fn cli_publish(&self, channel: &str, payload: &str) -> Option<Output> {
        let out = match self.kind {
            Kind::Redis => {
                tool("redis-cli", &["-u", &self.url, "PUBLISH", channel, payload]).await?
            }
            Kind::Postgres => {
                let sql = format!("NOTIFY \"{channel}\", '{}'", payload.replace('\'', "''"));
                tool("psql", &[&self.url, "-v", "ON_ERROR_STOP=1", "-c", &sql]).await?
            }
        };
        assert!(
            out.status.success(),
            "{:?} publish: {}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out)
    }

    /// A bare subscriber on `channels` (backend names), as Rails' adapter
    /// has: what it receives, as (channel, payload).
    pub async fn raw_subscriber(&self, channels: &[&str]) -> RawSubscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut keep = None;
        match self.kind {
            Kind::Redis => {
                let mut raw = redis::Client::open(self.url.as_str())
                    .expect("url")
                    .get_async_pubsub()
                    .await
                    .expect("pubsub connection");
                for c in channels {
                    raw.subscribe(*c).await.expect("SUBSCRIBE");
                }
                tokio::spawn(async move {
                    let mut raw = raw.into_on_message();
                    while let Some(msg) = raw.next().await {
                        let payload: String = msg.get_payload().expect("text payload");
                        let _ = tx.send((msg.get_channel_name().to_owned(), payload));
                    }
                });
            }
            Kind::Postgres => {
                let (raw, mut connection) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                        .await
                        .expect("raw session");
                tokio::spawn(async move {
                    while let Some(Ok(m)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        if let tokio_postgres::AsyncMessage::Notification(n) = m {
                            let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                        }
                    }
                });
                let listen: String = channels
                    .iter()
                    .map(|c| format!("LISTEN \"{c}\";"))
                    .collect();
                raw.batch_execute(&listen).await.expect("LISTEN");
                // Dropping the client would end the session.
                keep = Some(raw);
            }
        }
        RawSubscriber { rx, _keep: keep }
    }

    /// Waits until the other nodes' subscriptions to `channel` number `n`,
    /// where the backend can tell (Redis' `PUBSUB NUMSUB`). PostgreSQL shows
    /// no other session's LISTENs; there the confirmation order is the
    /// guarantee (a node LISTENs on a user's channel before its welcome).
    pub async fn until_subscribed(&self, channel: &str, n: i64) {
        if self.kind == Kind::Redis {
            until_numsub(&self.redis(), channel, n).await;
        }
    }
}

/// What a bare subscriber received.
pub struct RawSubscriber {
    rx: mpsc::UnboundedReceiver<(String, String)>,
    _keep: Option<tokio_postgres::Client>,
}

impl RawSubscriber {
    /// The next (channel, payload), within [`WAIT`].
    pub async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("nothing published within 5s")
            .expect("raw subscriber ended")
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

/// A raw actioncable-v1-json client (`cable_test::Client`), connected as
/// the JS client connects: same-origin `Origin`, both subprotocols offered,
/// the user in `?user=`. It speaks to any ActionCable server (the Rails
/// interop tests point it at Rails).
/// Failures name it by its user, or `user@server` when the server was named.
pub struct Client(cable_test::Client);

newtype_deref!(mut Client => cable_test::Client);

/// `user`'s chat message `body` (no characters JSON escapes) in room
/// `identifier` is the next frame each of `clients` gets.
pub async fn all_hear(clients: &mut [&mut Client], identifier: &str, user: &str, body: &str) {
    let frame = message(
        identifier,
        &format!(r#"{{"user":"{user}","body":"{body}"}}"#),
    );
    for c in clients {
        c.expect(&frame).await;
    }
}

impl Client {
    /// Connects to `chat` as `user` and reads the welcome.
    pub async fn connect(chat: &Server, user: &str) -> Client {
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
        let mut client = Client(inner);
        client.expect(cable_test::frames::WELCOME).await;
        client
    }

    /// Connects as `user` and joins `identifier` (confirmation awaited).
    pub async fn joined(chat: &Server, user: &str, identifier: &str) -> Client {
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
        self.0.subscribe(identifier).await;
    }

    /// Performs `speak` with `body` in the room of `identifier`.
    pub async fn speak(&mut self, identifier: &str, body: &str) {
        let data = serde_json::json!({"action": "speak", "body": body});
        self.0.perform(identifier, data).await;
    }

    /// Closes the socket and waits for the server's side of the close.
    pub async fn leave(self) {
        self.0.leave().await;
    }
}
