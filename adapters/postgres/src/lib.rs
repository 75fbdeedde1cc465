//! `cable-postgres`: a PostgreSQL `LISTEN`/`NOTIFY` adapter for
//! [`cable_core`], wire-compatible with Rails' ActionCable `postgresql`
//! adapter, and a history broker for reliable streams ([`PostgresBroker`],
//! see "History broker").
//!
//! For teams that run PostgreSQL and no Redis. A Rails app and cable servers
//! can share one database: a broadcast from
//! `ActionCable.server.broadcast("chat_lobby", {...})` reaches clients of a
//! cable server, and the other way round, as long as both use the same
//! `channel_prefix`.
//!
//! # Wire format
//! - A stream `s` is the PostgreSQL channel `<channel_prefix>:s`, or just `s`
//!   without a prefix (Rails joins `[prefix, s].compact` with `:`, so an empty
//!   prefix gives `:s`, as in Rails).
//! - If that name has more than 63 characters (PostgreSQL's identifier limit,
//!   `NAMEDATALEN - 1`), the channel is its SHA1 in 40 lowercase hex
//!   characters instead, as Rails' `channel_identifier`. See
//!   [`PostgresConfig::pg_channel`].
//! - `LISTEN`/`UNLISTEN` always quote the channel (`LISTEN "myapp:chat_lobby"`,
//!   embedded `"` doubled), so it is case-sensitive and exact, as Rails'
//!   `escape_identifier`.
//! - A broadcast is `SELECT pg_notify($1, $2)` with the channel and the
//!   payload (JSON text, exactly as given) as parameters: the same as Rails'
//!   `NOTIFY "<channel>", '<payload>'`, with nothing to escape. Notifications
//!   are handed to [`Delivery::deliver`] with the stream name and the payload
//!   untouched.
//! - Remote disconnects need nothing special: the core listens on each
//!   connection's `action_cable/<id>` like any other stream.
//!
//! # Payload limit
//! PostgreSQL refuses `NOTIFY` payloads of 8000 bytes or more ("payload string
//! too long"). A broadcast whose payload has [`MAX_PAYLOAD_BYTES`] + 1 bytes or
//! more is refused before it is sent, with
//! [`PubSubError::PayloadTooLarge`] (which names the size and the limit) and a
//! warning in the log; it is never truncated. Rails does not check this: its
//! broadcast raises `PG::InvalidParameterValue`. Send large data another way
//! (store it, broadcast an id).
//!
//! # Connections
//! Each [`PostgresPubSub`] keeps two connections:
//! - one dedicated **listening** connection with `application_name`
//!   [`PostgresConfig::application_name`] (`ActionCable-PID-<pid>` by
//!   default, the name Rails gives its own), so
//!   `SELECT * FROM pg_stat_activity WHERE application_name = 'ActionCable-PID-42'`
//!   finds it. A task drives it with tokio-postgres'
//!   `Connection::poll_message` (awaiting the connection as a future would
//!   drop notifications) and delivers notifications as they arrive; another
//!   applies `LISTEN`/`UNLISTEN` strictly in call order and resolves each
//!   [`Ack`] once PostgreSQL has run it. The core's hub subscribes a stream
//!   when its first local subscriber arrives and unsubscribes it when the last
//!   leaves, so each stream is `LISTEN`ed once per process, and a client's
//!   `confirm_subscription` follows the `LISTEN`. [`PostgresStatus::listening_channels`]
//!   runs `SELECT pg_listening_channels()` on that connection.
//! - one **publishing** connection, `application_name`
//!   `<application_name>-publisher`, opened on the first broadcast and
//!   replaced after a failure; concurrent broadcasts are pipelined on it, and
//!   it never holds up the listening connection. A broadcast fails with
//!   [`PubSubError::Unavailable`] (connection problems, or no reply within
//!   2 s) or [`PubSubError::Backend`] (PostgreSQL refused it); it never hangs
//!   and never panics.
//!
//! Nothing connects in [`PostgresPubSub::new`]: a server can start while the
//! database is down and the listener connects in the background.
//!
//! TLS is not supported yet: the adapter connects without it (`NoTls`), and a
//! URL with `sslmode=require` is refused by [`PostgresConfig::validate`]
//! (`sslmode=prefer`, the default, and `disable` connect in plain text). Use
//! a Unix socket (`postgres:///db?host=/var/run/postgresql`) or a private
//! network.
//!
//! # Outages
//! When the listening connection drops (PostgreSQL restarts, the backend is
//! terminated, the network fails) the task reconnects with exponential
//! backoff with jitter ([`cable_core::pubsub::Backoff`]: a random delay in the upper
//! half of a ceiling of 100 ms doubling to 5 s, so a fleet of servers does not
//! reconnect in lockstep), `LISTEN`s every active channel again and logs the
//! gap with `tracing::warn!`: PostgreSQL keeps no notifications for a session
//! that is gone, so whatever was sent during the gap is lost.
//! [`PostgresPubSub::reconnects`] counts the reconnections and
//! [`PostgresPubSub::is_connected`] tells whether the listener is up. A quiet
//! connection is checked with `SELECT 1` every 15 s, so a server that vanished
//! without closing TCP is noticed within 20 s.
//!
//! # Backlog
//! Notifications are not queued in this process: the driver reads one,
//! hands it to the hub and only then reads the next, so when delivery is
//! slower than PostgreSQL the rest wait in the socket and in PostgreSQL's
//! notification queue (8 GB by default, shared by the database cluster; once
//! it is full, `NOTIFY` fails, and so do broadcasts, with an error).
//! [`PubSub::backlog`] and [`PubSub::dropped`] are therefore always 0; the
//! server's own view of that queue is `SELECT pg_notification_queue_usage()`.
//!
//! A `subscribe` called during an outage is recorded at once and applied when
//! the connection is back. Its [`Ack`] resolves `Ok` if that happens within
//! 5 s, and otherwise fails with [`PubSubError::Unavailable`], so the
//! subscribing client gets no `confirm_subscription` for a stream that is not
//! live. The stream stays recorded either way, until it is unsubscribed: it is
//! listened to as soon as the database is back, so a subscriber that stays
//! (such as a connection's internal channel) receives notifications again
//! after the outage. An `unsubscribe` during an outage resolves `Ok` at once:
//! a new session starts with no `LISTEN`s.
//!
//! # History broker
//! [`PostgresBroker`] is a `cable_core::broker::Broker` on PostgreSQL: the
//! history and sessions behind reliable streams (AnyCable's extended
//! protocol), shared by every node on the same database and tables. It has
//! its own connection (`application_name` `cable-broker-PID-<pid>` by
//! default). Its tables, in [`PostgresBrokerConfig::schema`] (`public` by
//! default) and named with [`PostgresBrokerConfig::table_prefix`]
//! (`cable_` by default), are created with the schema on first connection
//! if missing (under an advisory lock, so nodes starting together do not
//! race; nothing is created when they exist, so a role without `CREATE`
//! works on tables made beforehand):
//!
//! | table | columns | |
//! | --- | --- | --- |
//! | `cable_streams` | `stream` (key), `epoch`, `last_offset`, `history_limit`, `ttl_ms`, `expires_at` | one row per stream: its epoch and latest offset |
//! | `cable_history` | `stream`, `epoch`, `"offset"` (key: all three), `at`, `payload` | one row per kept entry |
//! | `cable_sessions` | `sid` (key), `state`, `expires_at` | sessions |
//! | `cable_history_marks` | `stream` (key), `history_limit`, `ttl_ms`, `expires_at` | `enable_history` |
//! | `cable_presence` | `stream`, `sid` (key: both), `id`, `expires_at` | a session present on a stream as member `id` (indexes on `sid` and `expires_at`) |
//! | `cable_presence_members` | `stream`, `id` (key: both), `info`, `sessions`, `seq` | a member: its info, how many sessions, its join order |
//!
//! - An append is one statement: `INSERT … ON CONFLICT (stream) DO UPDATE
//!   … RETURNING` on the stream's row gives the next offset under the row's
//!   lock (so nodes never give an offset twice), and data-modifying `WITH`
//!   parts insert the entry and delete what is over the limit or of an older
//!   epoch. A missing or expired stream row (no append for `ttl`: the TTL
//!   expires the whole stream, as in AnyCable) starts a new epoch (a random
//!   16-hex-digit name) at offset 1. Times are the database's clock.
//! - Reads never return what expired or is over the limit, whenever it is
//!   deleted. `history_from` serves the entries after an offset only while
//!   the entry at that offset is still kept.
//! - Expired rows are deleted every [`PostgresBrokerConfig::cleanup_interval`]
//!   (60 s by default) by a task of the broker, in statements that skip rows
//!   an append holds, so the sweep never waits for an append;
//!   [`PostgresBroker::cleanup`] runs it at once.
//! - If the tables disappear under a connected broker (the schema dropped,
//!   the database recreated), the statement that finds them gone drops the
//!   connection and runs once more on a new one, which creates them again;
//!   the streams start new epochs. PostgreSQL's commits survive a restart,
//!   so a restart keeps the epochs. Restoring an older backup is not
//!   noticed: after one, `TRUNCATE cable_streams, cable_history` (clients
//!   holding positions then get `reject_history` and reload).
//! - One connection (tokio-postgres pipelines concurrent calls on it),
//!   opened on first use and replaced after a failure; every call,
//!   connecting included, is bounded by [`PostgresBrokerConfig::timeout`]
//!   (2 s by default) and fails with
//!   `BrokerError::Unavailable` while the database is unreachable, and works
//!   again once it is back.
//! - Presence (`Broker::presence_*`) is shared by every node. A join, a
//!   leave and a sweep are one statement each: the session's row is
//!   upserted or deleted and its member's `sessions` count changed under
//!   the member's row lock, so the first session of an id joining and the
//!   last leaving are told apart also when two nodes act at once. The sweep
//!   (`presence_expire`, on every heartbeat of each node) deletes sessions
//!   past `expires_at` with `FOR UPDATE SKIP LOCKED … RETURNING`, so each
//!   is removed, and its member's leave reported, by one node. A statement
//!   aborted by a deadlock (two sweeps locking members in another order) is
//!   run again. Members at 0 sessions are deleted by the cleanup; sessions
//!   are left to the sweep, which reports their leaves (after every node
//!   was down, the first node up reports them).
//!
//! ```no_run
//! use cable_core::broker::{Broker, HistoryPolicy};
//! use cable_postgres::{PostgresBroker, PostgresBrokerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = PostgresBroker::new(
//!     PostgresBrokerConfig::new("postgres://app@127.0.0.1:5432/app_production").schema("cable"),
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
//! # Example
//! ```no_run
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_postgres::{PostgresConfig, PostgresPubSub};
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
//! let config = PostgresConfig::new("postgres://app:secret@127.0.0.1:5432/app_production")
//!     .channel_prefix("myapp_production");
//! // A bad URL or setting is an error here, before anything is served.
//! let cable = Cable::builder()
//!     .channel("ChatChannel", ChatChannel::default)
//!     .try_pubsub(move |delivery| PostgresPubSub::new(config, delivery))?
//!     .build();
//! // SELECT pg_notify('myapp_production:chat_lobby', '{"body":"hi"}')
//! cable.broadcast("chat_lobby", &serde_json::json!({"body": "hi"})).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod broker;
mod error;
mod listener;
mod naming;
mod publisher;

use std::time::Duration;

use async_trait::async_trait;
use cable_adapter_kit::{Status, Wiring};
use cable_core::pubsub::{Ack, Delivery, PubSub};
use cable_core::{redact_url, PubSubError};
use tokio_postgres::config::SslMode;

use crate::naming::{channel_name, unusable, MAX_IDENTIFIER};

pub use crate::broker::{PostgresBroker, PostgresBrokerConfig, DEFAULT_CLEANUP_INTERVAL};

/// How long a subscribe or unsubscribe may wait for PostgreSQL to run the
/// `LISTEN`/`UNLISTEN` (including for the connection to come back) before its
/// [`Ack`] fails.
pub use cable_adapter_kit::ACK_TIMEOUT;
/// How long a broadcast may take, connecting included, before it fails.
pub use cable_adapter_kit::PUBLISH_TIMEOUT;
/// The largest broadcast payload, in bytes: PostgreSQL refuses `NOTIFY`
/// payloads of 8000 bytes or more (`BLCKSZ - NAMEDATALEN - 128` with the
/// default build settings).
pub const MAX_PAYLOAD_BYTES: usize = 7999;
/// Bound on connecting (TCP, startup, authentication) when the URL sets no
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to the application name for the publishing connection.
const PUBLISHER_SUFFIX: &str = "-publisher";

/// Settings of a [`PostgresPubSub`].
///
/// ```
/// use cable_postgres::PostgresConfig;
/// let config = PostgresConfig::new("postgres://app:secret@db.example:5432/app_production")
///     .channel_prefix("myapp_production")
///     .application_name("cable-web-1");
/// assert_eq!(config.pg_channel("chat_lobby"), "myapp_production:chat_lobby");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres://[user[:password]@]host[:port][/dbname][?param=value&…]`
    /// (`postgresql://` too), or a libpq `key=value` string, as tokio-postgres
    /// parses them. `host` may be a Unix socket directory
    /// (`postgres:///app?host=/var/run/postgresql`). TLS is not supported:
    /// `sslmode=require` is refused.
    pub url: String,
    /// Rails' `channel_prefix` from `cable.yml`. Must match the Rails app's to
    /// interoperate.
    pub channel_prefix: Option<String>,
    /// `application_name` of the listening connection (the publishing one gets
    /// `<application_name>-publisher`); replaces any `application_name` in
    /// the URL. Printable ASCII, at most 63 bytes. Default
    /// `ActionCable-PID-<pid>`, as Rails.
    pub application_name: String,
}

impl PostgresConfig {
    /// Settings for `url` with no channel prefix and the default application
    /// name.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            channel_prefix: None,
            application_name: format!("ActionCable-PID-{}", std::process::id()),
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the channel prefix.
        channel_prefix(prefix: impl Into<String>) => channel_prefix = Some(prefix.into());
        /// Sets the listening connection's application name.
        application_name(name: impl Into<String>) => application_name = name.into();
    }

    /// Checks the URL (TLS included) and the application name, as
    /// [`PostgresPubSub::new`] does, without connecting.
    pub fn validate(&self) -> Result<(), PostgresConfigError> {
        self.connection_configs().map(drop)
    }

    /// The URL with any password (in the user info or a `password`
    /// parameter) replaced by `***`, for logs.
    ///
    /// ```
    /// # use cable_postgres::PostgresConfig;
    /// let config = PostgresConfig::new("postgres://app:s3cret@db/app?sslmode=disable");
    /// assert_eq!(config.redacted_url(), "postgres://app:***@db/app?sslmode=disable");
    /// ```
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// The PostgreSQL channel for `stream`, as Rails names it:
    /// `<prefix>:<stream>` (or `stream` without a prefix), or the SHA1 of that
    /// in 40 lowercase hex characters if it has more than 63 characters.
    ///
    /// A name of at most 63 characters but more than 63 bytes (non-ASCII) is
    /// cut at the last character boundary within 63 bytes, which is what
    /// PostgreSQL does to Rails' quoted identifier, so both meet on the same
    /// channel.
    ///
    /// ```
    /// # use cable_postgres::PostgresConfig;
    /// let config = PostgresConfig::new("postgres://localhost/app").channel_prefix("app");
    /// assert_eq!(config.pg_channel("room"), "app:room");
    /// let long = "x".repeat(60); // "app:" + 60 characters = 64 > 63
    /// assert_eq!(config.pg_channel(&long), "2f5413f316a436d2adb96e20c451304bec0efb5a");
    /// ```
    pub fn pg_channel(&self, stream: &str) -> String {
        channel_name(self.channel_prefix.as_deref(), stream)
    }

    /// The tokio-postgres settings of the listening and the publishing
    /// connection.
    fn connection_configs(
        &self,
    ) -> Result<(tokio_postgres::Config, tokio_postgres::Config), PostgresConfigError> {
        let name = &self.application_name;
        if name.is_empty()
            || name.len() > MAX_IDENTIFIER
            || !name.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            return Err(PostgresConfigError::InvalidApplicationName(name.clone()));
        }
        let invalid = |reason: String| PostgresConfigError::InvalidUrl {
            url: redact_url(&self.url),
            reason,
        };
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e: tokio_postgres::Error| {
                // The parser's messages never repeat a password.
                invalid(error::describe(&e))
            })?;
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(invalid(
                "no host (for a Unix socket, add ?host=/var/run/postgresql)".to_owned(),
            ));
        }
        match config.get_ssl_mode() {
            SslMode::Disable | SslMode::Prefer => {}
            other => {
                return Err(PostgresConfigError::TlsNotSupported {
                    url: redact_url(&self.url),
                    sslmode: format!("{other:?}").to_ascii_lowercase(),
                })
            }
        }
        // `prefer` may fall back to plain text: without TLS support, do so
        // at once.
        config.ssl_mode(SslMode::Disable);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        let mut publisher = config.clone();
        config.application_name(name.as_str());
        let mut publisher_name = name.clone();
        while publisher_name.len() + PUBLISHER_SUFFIX.len() > MAX_IDENTIFIER {
            publisher_name.pop();
        }
        publisher_name.push_str(PUBLISHER_SUFFIX);
        publisher.application_name(publisher_name);
        Ok((config, publisher))
    }
}

cable_adapter_kit::debug_redacting_url!(PostgresConfig, channel_prefix, application_name);

/// Why a [`PostgresPubSub`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresConfigError {
    /// The URL cannot be parsed, or names no host.
    #[error("invalid postgres url {url}: {reason}")]
    InvalidUrl {
        /// The URL, its secrets masked ([`cable_core::redact_url`]).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL asks for TLS, which this adapter does not support yet.
    #[error(
        "postgres url {url} asks for sslmode={sslmode}, but the postgres adapter does not \
         support TLS yet (use sslmode=disable or prefer, a Unix socket or a private network)"
    )]
    TlsNotSupported {
        /// The URL, its secrets masked ([`cable_core::redact_url`]).
        url: String,
        /// The `sslmode` asked for.
        sslmode: String,
    },
    /// PostgreSQL keeps application names of printable ASCII, up to 63 bytes.
    #[error("invalid postgres application name {0:?}: must be 1 to 63 printable ASCII characters")]
    InvalidApplicationName(String),
    /// [`PostgresPubSub::new`] (and [`PostgresBroker::new`] with a cleanup
    /// interval) spawns a background task and needs a runtime.
    #[error(
        "PostgresPubSub::new and PostgresBroker::new must be called from inside a tokio runtime"
    )]
    NoRuntime,
    /// A schema or table name PostgreSQL cannot take: empty, over 63 bytes
    /// (the table prefix with its longest suffix), or with a NUL.
    #[error("invalid postgres {what} name {name:?}: must be 1 to 63 bytes, without NUL")]
    InvalidName {
        /// "schema" or "table".
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// The PostgreSQL adapter. Build it in [`cable_core::CableBuilder::pubsub`].
///
/// Dropping it (with the [`cable_core::Cable`] that owns it) stops its
/// background tasks and closes both connections.
pub struct PostgresPubSub {
    wiring: Wiring<publisher::PgPublish>,
    config: PostgresConfig,
}

impl std::fmt::Debug for PostgresPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.wiring.fmt_adapter(f, "PostgresPubSub", &self.config)
    }
}

impl PostgresPubSub {
    /// Validates `config` and starts the listener task on the current tokio
    /// runtime. Connects nothing yet: the listener connects in the background
    /// (retrying while the database is down) and the publisher on the first
    /// broadcast.
    pub fn new(config: PostgresConfig, delivery: Delivery) -> Result<Self, PostgresConfigError> {
        let (listen, publish) = config.connection_configs()?;
        let url = redact_url(&config.url);
        let backend = listener::PgBackend { config: listen };
        let publish = publisher::PgPublish(publisher::Endpoint {
            config: publish,
            url: url.clone(),
        });
        let wiring = Wiring::spawn(backend, delivery, url, publish)
            .map_err(|_| PostgresConfigError::NoRuntime)?;
        Ok(PostgresPubSub { wiring, config })
    }

    /// The PostgreSQL channel for `stream`; see [`PostgresConfig::pg_channel`].
    pub fn pg_channel(&self, stream: &str) -> String {
        self.config.pg_channel(stream)
    }

    /// How many times the listening connection was re-established after it
    /// had been up and was lost. The first connection does not count.
    pub fn reconnects(&self) -> u64 {
        self.wiring.status.reconnects()
    }

    /// Whether the listening connection is up and has `LISTEN`ed every active
    /// channel.
    pub fn is_connected(&self) -> bool {
        self.wiring.status.is_connected()
    }

    /// A cloneable handle on the listening connection, to keep for health
    /// checks and metrics once the adapter has moved into the `Cable`.
    pub fn status(&self) -> PostgresStatus {
        PostgresStatus {
            status: self.wiring.status.clone(),
        }
    }

    /// The settings this adapter was built with.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// See [`PostgresStatus::listening_channels`].
    pub async fn listening_channels(&self) -> Result<Vec<String>, PubSubError> {
        self.status().listening_channels().await
    }

    /// The channel for `stream`, or why PostgreSQL cannot take it.
    fn checked_channel(&self, stream: &str) -> Result<String, PubSubError> {
        let channel = self.pg_channel(stream);
        match unusable(&channel) {
            None => Ok(channel),
            Some(what) => Err(PubSubError::Backend(format!(
                "stream {stream:?} cannot be a PostgreSQL channel: it maps to {what}"
            ))),
        }
    }

    /// A LISTEN or UNLISTEN for the kit's subscriber, or why the stream
    /// cannot be a channel.
    fn queue(&self, listen: bool, stream: &str) -> Ack {
        match self.checked_channel(stream) {
            Ok(channel) if listen => self.wiring.subscriber.subscribe(stream, channel),
            Ok(channel) => self.wiring.subscriber.unsubscribe(stream, channel),
            // Nothing was listened to, so there is nothing to unlisten.
            Err(_) if !listen => ready(Ok(())),
            Err(e) => {
                tracing::error!(stream, error = %e, "cannot LISTEN");
                ready(Err(e))
            }
        }
    }
}

fn ready(result: Result<(), PubSubError>) -> Ack {
    Box::pin(std::future::ready(result))
}

#[async_trait]
impl PubSub for PostgresPubSub {
    async fn broadcast(&self, stream: &str, payload: &str) -> Result<(), PubSubError> {
        let channel = self.checked_channel(stream)?;
        if payload.len() > MAX_PAYLOAD_BYTES {
            let error = PubSubError::PayloadTooLarge {
                adapter: "postgres",
                size: payload.len(),
                limit: MAX_PAYLOAD_BYTES,
            };
            tracing::warn!(
                stream,
                channel = %channel,
                error = %error,
                "broadcast refused: PostgreSQL NOTIFY payloads must be under 8000 bytes"
            );
            return Err(error);
        }
        self.wiring.publisher.publish(&channel, payload).await
    }

    fn subscribe(&self, stream: &str) -> Ack {
        self.queue(true, stream)
    }

    fn unsubscribe(&self, stream: &str) -> Ack {
        self.queue(false, stream)
    }

    fn reconnects(&self) -> u64 {
        PostgresPubSub::reconnects(self)
    }

    fn is_connected(&self) -> bool {
        PostgresPubSub::is_connected(self)
    }

    /// Always 0: notifications wait in PostgreSQL, not here (crate docs,
    /// "Backlog").
    fn backlog(&self) -> u64 {
        0
    }

    /// Always 0: nothing is dropped for lack of room.
    fn dropped(&self) -> u64 {
        0
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// A view of a [`PostgresPubSub`]'s listening connection that outlives the
/// borrow of the adapter (the `Cable` owns the adapter itself). It does not
/// keep the adapter alive.
///
/// ```no_run
/// # use cable_core::Cable;
/// # use cable_postgres::{PostgresConfig, PostgresPubSub};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cable_postgres::PostgresConfigError> {
/// let mut status = None;
/// let cable = Cable::builder()
///     .try_pubsub(|d| {
///         let pg = PostgresPubSub::new(PostgresConfig::new("postgres://localhost/app"), d)?;
///         status = Some(pg.status());
///         Ok::<_, cable_postgres::PostgresConfigError>(pg)
///     })?
///     .build();
/// let reconnects = status.map_or(0, |s| s.reconnects());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStatus {
    status: Status,
}

impl PostgresStatus {
    /// See [`PostgresPubSub::is_connected`].
    pub fn is_connected(&self) -> bool {
        self.status.is_connected()
    }

    /// See [`PostgresPubSub::reconnects`].
    pub fn reconnects(&self) -> u64 {
        self.status.reconnects()
    }

    /// The channels the listening connection is listening to, sorted, as
    /// PostgreSQL reports them (`SELECT pg_listening_channels()`, run on that
    /// connection after every subscribe and unsubscribe called before). For
    /// diagnostics and tests: it should match the streams with local
    /// subscribers, mapped by [`PostgresConfig::pg_channel`].
    ///
    /// Fails with [`PubSubError::Unavailable`] while the listener is not
    /// connected, and with [`PubSubError::Closed`] once the adapter is gone.
    pub async fn listening_channels(&self) -> Result<Vec<String>, PubSubError> {
        self.status.subscriptions().await
    }
}

impl std::fmt::Debug for PostgresStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStatus")
            .field("connected", &self.is_connected())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_application_name_is_rails() {
        let c = PostgresConfig::new("postgres://localhost/app");
        assert_eq!(
            c.application_name,
            format!("ActionCable-PID-{}", std::process::id())
        );
        let (listen, publish) = c.connection_configs().expect("valid");
        assert_eq!(
            listen.get_application_name(),
            Some(c.application_name.as_str())
        );
        assert_eq!(
            publish.get_application_name(),
            Some(format!("{}-publisher", c.application_name).as_str())
        );
        assert_eq!(listen.get_ssl_mode(), SslMode::Disable);
        assert_eq!(listen.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        let mut secret = c;
        secret.url = "postgres://u:hunter2@h/db".into();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn long_application_names_leave_room_for_the_suffix() {
        let name = "n".repeat(63);
        let c = PostgresConfig::new("postgres://localhost/app").application_name(name.clone());
        let (listen, publish) = c.connection_configs().expect("valid");
        assert_eq!(listen.get_application_name(), Some(name.as_str()));
        let publisher = publish.get_application_name().expect("set");
        assert_eq!(publisher.len(), 63);
        assert!(publisher.ends_with("-publisher"), "{publisher}");
    }

    #[tokio::test]
    async fn validates_without_connecting() {
        assert!(PostgresConfig::new("postgres://h:5432/db")
            .validate()
            .is_ok());
        assert!(PostgresConfig::new("postgresql://u@h/db?sslmode=disable")
            .validate()
            .is_ok());
        assert!(PostgresConfig::new("host=/var/run/postgresql dbname=app")
            .validate()
            .is_ok());
        let err = PostgresConfig::new("postgres://u:hunter2@h:notaport/db")
            .validate()
            .expect_err("bad port");
        let msg = err.to_string();
        assert!(
            msg.starts_with("invalid postgres url postgres://u:***@h:notaport/db"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(matches!(
            PostgresConfig::new("postgres:///db").validate(),
            Err(PostgresConfigError::InvalidUrl { .. })
        ));
        let tls = PostgresConfig::new("postgres://h/db?sslmode=require").validate();
        assert!(
            matches!(&tls, Err(PostgresConfigError::TlsNotSupported { sslmode, .. }) if sslmode == "require"),
            "{tls:?}"
        );
        for bad in ["", "a\nb", "é", &"n".repeat(64)] {
            let r = PostgresConfig::new("postgres://h/db")
                .application_name(bad)
                .validate();
            assert!(
                matches!(r, Err(PostgresConfigError::InvalidApplicationName(_))),
                "{bad:?}"
            );
        }

        // Nothing listens on port 1: creation still succeeds.
        let ok = PostgresPubSub::new(
            PostgresConfig::new("postgres://postgres@127.0.0.1:1/test").channel_prefix("p"),
            Delivery::detached(),
        )
        .expect("valid config");
        assert_eq!(ok.pg_channel("room"), "p:room");
        assert!(!ok.is_connected());
        let err = ok
            .broadcast("room", "{}")
            .await
            .expect_err("postgres is down");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
        let err = ok.listening_channels().await.expect_err("not connected");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn oversized_payloads_and_unusable_streams_fail_before_connecting() {
        let pg = PostgresPubSub::new(
            PostgresConfig::new("postgres://postgres@127.0.0.1:1/test"),
            Delivery::detached(),
        )
        .expect("valid config");
        let err = pg
            .broadcast("room", &"x".repeat(8000))
            .await
            .expect_err("too large");
        assert_eq!(
            err,
            PubSubError::PayloadTooLarge {
                adapter: "postgres",
                size: 8000,
                limit: 7999
            }
        );
        assert_eq!(
            err.to_string(),
            "payload of 8000 bytes is over the postgres adapter's limit of 7999 bytes"
        );
        let err = pg.broadcast("", "{}").await.expect_err("empty channel");
        assert!(matches!(err, PubSubError::Backend(_)), "{err:?}");
        let err = pg.subscribe("a\0b").await.expect_err("NUL");
        assert!(err.to_string().contains("NUL"), "{err}");
        assert_eq!(pg.unsubscribe("a\0b").await, Ok(()));
    }

    #[test]
    fn needs_a_runtime() {
        let r = PostgresPubSub::new(
            PostgresConfig::new("postgres://localhost/app"),
            Delivery::detached(),
        );
        assert!(matches!(r, Err(PostgresConfigError::NoRuntime)));
    }
}
