//! `cable-redis`: a Redis pub/sub adapter for [`cable_core`], wire-compatible
//! with Rails' ActionCable `redis` adapter, and a history broker for
//! reliable streams ([`RedisBroker`], see "History broker").
//!
//! A Rails app and cable servers can share one Redis: a broadcast from
//! `ActionCable.server.broadcast("chat_lobby", {...})` reaches clients of a
//! cable server, and the other way round, as long as both use the same
//! `channel_prefix`.
//!
//! # Wire format
//! - A stream `s` is the Redis channel `<channel_prefix>:s`, or just `s`
//!   without a prefix (Rails joins `[prefix, s].compact` with `:`, so an empty
//!   prefix gives `:s`, as in Rails).
//! - A broadcast is `PUBLISH <channel> <payload>` with the payload (JSON text)
//!   exactly as given; incoming messages are handed to
//!   [`Delivery::deliver`] with the prefix removed and the payload untouched.
//! - Remote disconnects need nothing special: the core subscribes each
//!   connection's `action_cable/<id>` like any other stream.
//!
//! # Connections
//! Both are driven by `cable-adapter-kit`, the skeleton shared by every
//! adapter; this crate supplies only what is Redis about them.
//!
//! Each [`RedisPubSub`] keeps two connections, both named with `CLIENT SETNAME`
//! ([`RedisConfig::connection_name`], `ActionCable-PID-<pid>` by default, as
//! Rails does):
//! - one dedicated **subscriber** connection, owned by a background task that
//!   applies `SUBSCRIBE`/`UNSUBSCRIBE` strictly in call order and resolves each
//!   [`Ack`](cable_core::pubsub::Ack) when Redis has replied. It speaks RESP3 (Redis 6+), which lets it
//!   send `CLIENT SETNAME` and health-check `PING`s; on a server without
//!   `HELLO` it falls back to a RESP2 pub/sub connection, which cannot be named.
//! - one multiplexed **publisher** connection, opened on first use and
//!   replaced after a failure. A broadcast fails with
//!   [`PubSubError::Unavailable`](cable_core::PubSubError::Unavailable) (connection problems, or no reply within
//!   2 s) or [`PubSubError::Backend`](cable_core::PubSubError::Backend) (Redis answered with an error); it never
//!   hangs and never panics.
//!
//! Nothing connects in [`RedisPubSub::new`]: a server can start while Redis
//! is down and the subscriber connects in the background.
//!
//! # Outages
//! When the subscriber connection drops (say `redis-server` restarts) the task
//! reconnects with jittered exponential backoff ([`cable_core::pubsub::Backoff`]: a
//! random delay in the upper half of a ceiling of 100 ms doubling to 5 s, so a
//! fleet of servers does not reconnect in lockstep), re-subscribes every
//! active stream and logs the gap with `tracing::warn!`: Redis pub/sub does
//! not keep messages, so whatever was published during the gap is lost.
//! [`RedisStatus::reconnects`] counts the reconnections and
//! [`RedisStatus::is_connected`] tells whether the subscriber is up.
//!
//! # Backlog
//! Messages wait between the socket and the hub in a queue bounded in bytes
//! ([`RedisConfig::max_backlog_bytes`], 64 MiB by default, counting channel,
//! payload and 64 bytes of bookkeeping per message). It is drained
//! continuously, also while a `SUBSCRIBE` waits for its reply, so it only
//! fills when the fan-out cannot keep up with Redis. A message that does not
//! fit is dropped, counted in [`RedisStatus::dropped`] and logged (one
//! warning when dropping starts, one when it stops); [`RedisStatus::backlog`]
//! is the queue's length now. Dropping keeps the connection and every
//! subscription, where Redis' own limit for slow subscribers
//! (`client-output-buffer-limit pubsub`) closes the connection and loses
//! everything until the reconnection.
//!
//! A `subscribe` called during an outage is recorded at once and applied when
//! the connection is back. Its [`Ack`](cable_core::pubsub::Ack) resolves `Ok` if that happens within
//! 5 s, and otherwise fails with [`PubSubError::Unavailable`](cable_core::PubSubError::Unavailable), so the
//! subscribing client gets no `confirm_subscription` for a stream that is not
//! live. The stream stays recorded either way, until it is unsubscribed: it is
//! subscribed as soon as Redis is back, so a subscriber that stays (such as a
//! connection's internal channel) receives messages again after the outage. An
//! `unsubscribe` during an outage resolves `Ok` at once: a new connection
//! starts with no subscriptions.
//!
//! # History broker
//! [`RedisBroker`] is a `cable_core::broker::Broker` on Redis: the history
//! and sessions behind reliable streams (AnyCable's extended protocol),
//! shared by every node on the same Redis and key prefix. It is separate
//! from the pub/sub adapter and may use another Redis. Keys, with
//! [`RedisBrokerConfig::key_prefix`] (`cable:` by default) in front:
//!
//! | key | type | holds | expires |
//! | --- | --- | --- | --- |
//! | `history:<stream>` | stream | one entry per append, ID `<offset>-0`, fields `d` (payload) and `t` (server time, ms) | `ttl` after the last append |
//! | `meta:<stream>` | hash | `epoch`, `offset` (the latest), `limit`, `ttl` (ms), `run` (the run mark: `durable`, or the server's `run_id`) | with the stream |
//! | `policy:<stream>` | string | `<limit> <ttl_ms>`, written by `enable_history` | its `ttl` |
//! | `session:<sid>` | string | the session's state | the session TTL |
//! | `presence:<stream>` | hash | presence: `s:<sid>` (the session's member id), `n:<id>` (its sessions), `i:<id>` (info), `o:<id>` (join order), `seq` | a minute after the last deadline of its sessions |
//! | `presence-sid:<sid>` | hash | the streams the session is present on (stream -> member id) | the same |
//! | `presence-deadlines` | sorted set | every present session by deadline (server time, ms) | the same |
//!
//! - Every append is one Lua script (`EVALSHA`, `EVAL` when Redis does not
//!   know it): it increments the offset, `XADD`s with `MAXLEN <limit>` and
//!   renews both keys' expiry, atomically, so nodes never give an offset
//!   twice. The TTL expires the whole stream, as in AnyCable; entries older
//!   than the TTL inside a living stream are filtered out on read.
//! - A new epoch (a random 16-hex-digit name) starts, at offset 1, when the
//!   stream's keys are gone (expired, deleted, `FLUSHALL`, a restart without
//!   persistence) or were written under another run mark. A server that
//!   cannot lose an acknowledged write (`appendonly yes` with
//!   `appendfsync always`, read with `CONFIG GET` on every connect) marks
//!   its streams `durable`: they keep their epoch through restarts, and
//!   history from before a restart is still served. Any other server marks
//!   them with its `run_id`, which changes with every start: a restart that
//!   reloaded an RDB snapshot or an `everysec` AOF may have lost the latest
//!   appends, whose offsets would otherwise be given again, so the first
//!   append after it starts a new epoch and clients holding old positions
//!   get `reject_history` and reload, rather than miss messages. (A server
//!   that refuses `INFO` is noticed by lost keys only.) A failover is
//!   noticed the same way (the promoted replica has its own `run_id`)
//!   unless both servers are durable: replication is asynchronous, so the
//!   replica may lack the latest appends, and their offsets would be given
//!   again. With durable replicas, delete the broker's `meta:*` keys after
//!   a failover.
//! - `history_from` serves the entries after an offset only while the
//!   entry at that offset is still kept (not trimmed, not older than the
//!   TTL); reads run in a script too, so they see one consistent state.
//! - One multiplexed connection, opened on first use and replaced after a
//!   failure; every call, connecting included, is bounded by
//!   [`RedisBrokerConfig::timeout`] (2 s by default) and fails
//!   with `BrokerError::Unavailable` while Redis is unreachable, and works
//!   again once it is back. Redis Cluster is not supported (a stream's two
//!   keys would hash to different slots, and the presence scripts reach
//!   keys by name).
//! - Presence (`Broker::presence_*`) is shared by every node: each join,
//!   leave, renewal (`presence_touch`, on every heartbeat of each node) and
//!   sweep (`presence_expire`) is one Lua script, so one id per session per
//!   stream is checked, the first session of an id joining and the last
//!   leaving are told apart, and of nodes sweeping at once exactly one
//!   removes each session that ran out and reports its member's leave.
//!   Deadlines are Redis' clock. The keys outlive their deadlines by a
//!   minute (room for a sweep) and then expire, so nothing is left when
//!   every node is gone.
//!
//! ```no_run
//! use cable_core::broker::{Broker, HistoryPolicy};
//! use cable_redis::{RedisBroker, RedisBrokerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = RedisBroker::new(
//!     RedisBrokerConfig::new("redis://127.0.0.1:6379/0").key_prefix("myapp:cable:"),
//! )?;
//! let position = broker
//!     .append("chat_42", r#"{"body":"hi"}"#, HistoryPolicy::default())
//!     .await?;
//! // What a client that saw nothing after `offset - 1` missed:
//! let missed = broker
//!     .history_from("chat_42", &position.epoch, position.offset - 1)
//!     .await?;
//! assert_eq!(missed.entries.len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Broadcast intakes
//! [`RedisIntake`] receives AnyCable's Redis broadcasts and applies them
//! through a `Broadcaster` (see `cable_core::intake` for the formats):
//! [`RedisIntake::pubsub`] subscribes to `__anycable__` (AnyCable's legacy
//! `redis` broadcaster: `PUBLISH __anycable__ <json>`, every node gets
//! every message), [`RedisIntake::streams`] reads the stream
//! `__anycable__` in the consumer group `bx` (AnyCable's `redisx`: `XADD
//! __anycable__ * payload <json>`, one node handles each message, then
//! `XACK` and `XDEL`; `XAUTOCLAIM` takes over what a dead node left
//! pending). Both reconnect with backoff.
//!
//! ```no_run
//! use cable_redis::{RedisIntake, RedisIntakeConfig};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cable_redis::RedisConfigError> {
//! let cable = cable_core::Cable::builder().build();
//! let intake = RedisIntake::streams(
//!     RedisIntakeConfig::new("redis://127.0.0.1:6379"),
//!     cable.broadcaster(),
//! )?;
//! // Keep `intake` as long as the server runs: dropping it stops it.
//! # drop(intake);
//! # Ok(()) }
//! ```
//!
//! # Example
//! ```no_run
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_redis::{RedisConfig, RedisPubSub};
//!
//! #[derive(Default)]
//! struct ChatChannel;
//!
//! #[async_trait]
//! impl Channel for ChatChannel {
//!     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
//!         ctx.stream_from("chat_lobby");
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = RedisConfig::new("redis://127.0.0.1:6379/1").channel_prefix("myapp_production");
//! // A bad URL or setting is an error here, before anything is served.
//! let cable = Cable::builder()
//!     .channel("ChatChannel", ChatChannel::default)
//!     .try_pubsub(move |delivery| RedisPubSub::new(config, delivery))?
//!     .build();
//! // PUBLISH myapp_production:chat_lobby {"body":"hi"}
//! cable.broadcast("chat_lobby", &serde_json::json!({"body": "hi"})).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
mod broker;
mod intake;
mod publisher;

use cable_adapter_kit::Wiring;
use cable_core::pubsub::Delivery;
use cable_core::redact_url;

pub use crate::broker::{RedisBroker, RedisBrokerConfig, DEFAULT_KEY_PREFIX};
pub use crate::intake::{
    RedisIntake, RedisIntakeConfig, DEFAULT_INTAKE_BLOCK, DEFAULT_INTAKE_CHANNEL,
    DEFAULT_INTAKE_GROUP,
};

/// How long a subscribe or unsubscribe may wait for Redis' reply (including
/// for the connection to come back) before its [`Ack`](cable_core::pubsub::Ack) fails.
pub use cable_adapter_kit::ACK_TIMEOUT;
/// How long a broadcast may take, connecting included, before it fails.
pub use cable_adapter_kit::PUBLISH_TIMEOUT;
/// Default of [`RedisConfig::max_backlog_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 64 << 20;

/// Settings of a [`RedisPubSub`].
///
/// ```
/// use cable_redis::RedisConfig;
/// let config = RedisConfig::new("rediss://:secret@redis.example:6380/0")
///     .channel_prefix("myapp_production")
///     .connection_name("cable-web-1");
/// assert_eq!(config.channel_prefix.as_deref(), Some("myapp_production"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `redis+unix:///path/to/socket`. The database number does not matter
    /// for pub/sub (which is why the prefix exists).
    pub url: String,
    /// Rails' `channel_prefix` from `cable.yml`. Must match the Rails app's to
    /// interoperate.
    pub channel_prefix: Option<String>,
    /// Name given to both connections with `CLIENT SETNAME` (no spaces).
    /// Default `ActionCable-PID-<pid>`, as Rails.
    pub connection_name: String,
    /// Most bytes of received messages waiting for delivery; past it new
    /// messages are dropped and counted (see the crate docs, "Backlog").
    /// Default [`DEFAULT_MAX_BACKLOG_BYTES`].
    pub max_backlog_bytes: usize,
}

impl RedisConfig {
    /// Settings for `url` with no channel prefix and the default connection name.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            channel_prefix: None,
            connection_name: format!("ActionCable-PID-{}", std::process::id()),
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the channel prefix.
        channel_prefix(prefix: impl Into<String>) => channel_prefix = Some(prefix.into());
        /// Sets the name given to the connections.
        connection_name(name: impl Into<String>) => connection_name = name.into();
        /// Sets the bound of the backlog of received messages, in bytes.
        max_backlog_bytes(bytes: usize) => max_backlog_bytes = bytes;
    }

    /// Checks the URL and the connection name, as [`RedisPubSub::new`] does,
    /// without connecting.
    pub fn validate(&self) -> Result<(), RedisConfigError> {
        self.client().map(drop)
    }

    fn client(&self) -> Result<redis::Client, RedisConfigError> {
        let name = &self.connection_name;
        if name.is_empty() || name.chars().any(|c| c == ' ' || c.is_control()) {
            return Err(RedisConfigError::InvalidConnectionName(name.clone()));
        }
        redis::Client::open(self.url.as_str()).map_err(|e| RedisConfigError::InvalidUrl {
            url: redact_url(&self.url),
            reason: e.to_string(),
        })
    }
}

cable_adapter_kit::debug_redacting_url!(
    RedisConfig,
    channel_prefix,
    connection_name,
    max_backlog_bytes
);

/// Why a [`RedisPubSub`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The URL cannot be parsed or names an unsupported scheme.
    #[error("invalid redis url {url}: {reason}")]
    InvalidUrl {
        /// The URL, its secrets masked ([`cable_core::redact_url`]).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Redis rejects client names that are empty or contain spaces or
    /// control characters.
    #[error("invalid redis connection name {0:?}: must be non-empty, without spaces")]
    InvalidConnectionName(String),
    /// [`RedisPubSub::new`] spawns its background task and needs a runtime.
    #[error("RedisPubSub::new must be called from inside a tokio runtime")]
    NoRuntime,
}

/// The Redis adapter. Build it in [`cable_core::CableBuilder::pubsub`].
///
/// Dropping it (with the [`cable_core::Cable`] that owns it) stops its
/// background task and closes both connections.
pub struct RedisPubSub {
    wiring: Wiring<publisher::RedisPublish>,
    config: RedisConfig,
}

impl std::fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.wiring.fmt_adapter(f, "RedisPubSub", &self.config)
    }
}

impl RedisPubSub {
    /// Validates `config` and starts the subscriber task on the current tokio
    /// runtime. Connects nothing yet: the subscriber connects in the
    /// background (retrying while Redis is down) and the publisher on the
    /// first broadcast.
    pub fn new(config: RedisConfig, delivery: Delivery) -> Result<Self, RedisConfigError> {
        let client = config.client()?;
        if matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            install_tls_provider();
        }
        let backend = backend::RedisBackend::new(
            &client,
            config.connection_name.clone(),
            config.max_backlog_bytes,
        );
        let publish = publisher::RedisPublish {
            client,
            name: config.connection_name.clone(),
        };
        let wiring = Wiring::spawn(backend, delivery, redact_url(&config.url), publish)
            .map_err(|_| RedisConfigError::NoRuntime)?;
        Ok(RedisPubSub { wiring, config })
    }

    /// The Redis channel for `stream`: `<prefix>:<stream>`, or `stream`
    /// without a prefix.
    pub fn redis_channel(&self, stream: &str) -> String {
        match &self.config.channel_prefix {
            Some(p) => format!("{p}:{stream}"),
            None => stream.to_owned(),
        }
    }

    /// A cloneable handle on the connection state, to keep for health checks
    /// and metrics once the adapter has moved into the `Cable`.
    pub fn status(&self) -> RedisStatus {
        self.wiring.status.clone()
    }

    /// The settings this adapter was built with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}

cable_adapter_kit::wired_pubsub!(RedisPubSub, redis_channel, "redis");

/// A view of a [`RedisPubSub`]'s subscriber connection that outlives the
/// borrow of the adapter (the `Cable` owns the adapter itself).
///
/// ```no_run
/// # use cable_core::Cable;
/// # use cable_redis::{RedisConfig, RedisPubSub};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cable_redis::RedisConfigError> {
/// let mut status = None;
/// let cable = Cable::builder()
///     .try_pubsub(|d| {
///         let redis = RedisPubSub::new(RedisConfig::new("redis://127.0.0.1"), d)?;
///         status = Some(redis.status());
///         Ok::<_, cable_redis::RedisConfigError>(redis)
///     })?
///     .build();
/// let reconnects = status.map_or(0, |s| s.reconnects());
/// # Ok(()) }
/// ```
pub type RedisStatus = cable_adapter_kit::Status;

/// rustls needs a process-wide crypto provider; install ring unless the
/// application already chose one (installing a second one would fail).
fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cable_core::pubsub::PubSub;
    use cable_core::PubSubError;

    #[test]
    fn default_connection_name_is_rails() {
        let c = RedisConfig::new("redis://localhost");
        assert_eq!(
            c.connection_name,
            format!("ActionCable-PID-{}", std::process::id())
        );
        let mut secret = c;
        secret.url = "redis://:hunter2@h".into();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn validates_without_connecting() {
        assert!(RedisConfig::new("redis://h:6379/0").validate().is_ok());
        assert!(RedisConfig::new("not a url").validate().is_err());
        let bad = RedisPubSub::new(RedisConfig::new("http://x"), Delivery::detached());
        assert!(matches!(bad, Err(RedisConfigError::InvalidUrl { .. })));
        let bad = RedisPubSub::new(
            RedisConfig::new("redis://127.0.0.1:1").connection_name("a b"),
            Delivery::detached(),
        );
        assert!(matches!(
            bad,
            Err(RedisConfigError::InvalidConnectionName(_))
        ));
        // Nothing listens on port 1: creation still succeeds.
        let ok = RedisPubSub::new(
            RedisConfig::new("redis://127.0.0.1:1").channel_prefix("p"),
            Delivery::detached(),
        )
        .expect("valid config");
        assert_eq!(ok.redis_channel("room"), "p:room");
        assert!(!ok.is_connected());
        assert_eq!((PubSub::backlog(&ok), PubSub::dropped(&ok)), (0, 0));
        assert_eq!(ok.config().max_backlog_bytes, DEFAULT_MAX_BACKLOG_BYTES);
        let err = ok.broadcast("room", "{}").await.expect_err("redis is down");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn needs_a_runtime() {
        let r = RedisPubSub::new(RedisConfig::new("redis://localhost"), Delivery::detached());
        assert!(matches!(r, Err(RedisConfigError::NoRuntime)));
    }

    #[tokio::test]
    async fn empty_prefix_is_rails_compact_join() {
        let c = RedisConfig::new("redis://localhost").channel_prefix("");
        let redis = RedisPubSub::new(c, Delivery::detached()).expect("valid config");
        assert_eq!(redis.redis_channel("room"), ":room");
    }
}
