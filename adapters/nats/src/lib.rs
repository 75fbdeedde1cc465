//! `cable-nats`: a NATS pub/sub adapter for [`cable_core`], on the shared
//! adapter skeleton `cable-adapter-kit`; [`NatsBroker`], the history and
//! session store of reliable streams on JetStream; and [`NatsIntake`],
//! AnyCable's NATS broadcaster received.
//!
//! Every cable server on the same NATS (and the same subject prefix) hears
//! every other's broadcasts; a raw NATS client publishing on a stream's
//! subject reaches that stream's subscribers too.
//!
//! # Subjects
//! - A stream `s` is the subject `<subject_prefix>.<token(s)>`, or
//!   `token(s)` alone without a prefix ([`NatsConfig::subject_prefix`];
//!   none by default, so a plain stream name is its own subject, as
//!   AnyCable uses it). [`NatsPubSub::subject`] tells a stream's subject.
//! - `token(s)` is `s` itself when `s` is made of printable ASCII other
//!   than `.`, `*`, `>` and `%` (`chat_lobby`, `chat:1`,
//!   `action_cable/gid://app/User/1`). Otherwise those four characters,
//!   spaces, control characters and the bytes of non-ASCII characters are
//!   written `%XX` (upper-case hex), and the empty stream is `%`: `a.b` is
//!   `a%2Eb`, `with space` is `with%20space`, `100%` is `100%25`. Every
//!   stream is exactly one token, never a wildcard, and distinct streams
//!   never share a subject (the encoding can be undone:
//!   [`subject::stream_of`]).
//! - A subject over [`subject::MAX_SUBJECT_BYTES`] is refused (the
//!   subscribe's `Ack` and the broadcast fail with
//!   [`PubSubError::Backend`](cable_core::PubSubError::Backend)): nats-server closes a connection that sends
//!   a protocol line over its `max_control_line` (4 KiB by default).
//! - Payloads are published as their bytes, unchanged, and delivered the
//!   same way; a message that is not UTF-8 (only a foreign publisher can
//!   send one) is dropped with a warning. A payload over the server's
//!   `max_payload` (1 MiB by default, read from the server's `INFO`) is
//!   refused before sending with [`PubSubError::PayloadTooLarge`](cable_core::PubSubError::PayloadTooLarge), as
//!   nats-server would close the connection.
//! - Remote disconnects need nothing special: the core subscribes each
//!   connection's internal stream `action_cable/<id>`, which becomes a
//!   subject under the prefix like any other stream.
//!
//! # Connections
//! Each [`NatsPubSub`] keeps two NATS connections, both named
//! [`NatsConfig::connection_name`]:
//! - a **subscriber**, owned by the kit's task: `SUB`/`UNSUB` in call
//!   order, each batch acknowledged by a round trip through the server (NATS
//!   answers neither: a message this connection publishes to an inbox of
//!   its own and receives back proves the server has applied everything
//!   sent before it). The same round trip pings the connection every 15 s.
//!   Messages go through a queue bounded in bytes
//!   ([`NatsConfig::max_backlog_bytes`]); what does not fit is dropped and
//!   counted ([`NatsStatus::dropped`]). Before that queue, async-nats holds
//!   up to 4096 messages per subscription, which a task empties into it at
//!   once; should that task fall behind, async-nats drops the excess itself
//!   (logged as a slow consumer, not counted in `dropped`).
//! - a **publisher**, opened on the first broadcast and replaced after a
//!   failure. NATS does not answer a `PUB` either: a broadcast succeeds once
//!   it is written to the socket, fails with [`PubSubError::Unavailable`](cable_core::PubSubError::Unavailable)
//!   when it cannot be within 2 s, and never hangs or panics.
//!
//! Nothing connects in [`NatsPubSub::new`]: a server can start while NATS
//! is down.
//!
//! # Outages
//! When the subscriber connection is lost (say nats-server restarts), the
//! kit reconnects with jittered exponential backoff, subscribes every
//! active stream again and logs the gap: core NATS keeps no messages, so
//! what was published during the gap is lost. async-nats' own reconnection
//! is cut to one attempt, as the kit does it (one backoff and one
//! resubscription for every adapter). [`NatsStatus::reconnects`] counts the
//! reconnections. A `subscribe` during an outage is applied once NATS is
//! back; its `Ack` fails after 5 s, as with every adapter on the kit.
//!
//! # History broker
//! [`NatsBroker`] keeps the history and sessions of reliable streams in
//! JetStream (nats-server 2.9 or later, started with `-js`), shared by
//! every node on the server or cluster. It creates what it needs on first
//! use, named by [`NatsBrokerConfig::name`] (`cable` by default):
//! - the stream `cable_history` on the subjects `cable.history.>`, one
//!   subject per cable stream, `cable.history.<key>` where the key is the
//!   stream's bytes in unpadded URL-safe base64 (`=` for the empty stream;
//!   [`NatsBrokerConfig::subject`] tells it). Each entry is one message:
//!   the payload as given, and the headers `Cable-Epoch`, `Cable-Offset`,
//!   `Cable-Prev` (the stream sequence of the entry before it),
//!   `Cable-Limit` and `Cable-Ttl-Ms`;
//! - the key-value bucket `cable_broker` (one revision per key): sessions
//!   under `session.<key>`, history marks under `mark.<key>`, each value
//!   `<deadline in Unix ms> <value>`.
//!
//! An append is one conditional publish: `Nats-Expected-Last-Subject-Sequence`
//! names the sequence of the subject's last entry, so when two nodes append
//! after the same entry JetStream stores one and refuses the other, which
//! reads the new last entry and tries again. Offsets therefore never repeat
//! and have no gaps, with no second write that a crash could leave undone.
//! A node appends to one stream one call at a time and remembers the last
//! entry it wrote, so its next append is a single round trip.
//!
//! The epoch travels with the entries, not in a key of its own (a
//! deliberate difference from AnyCable's NATS broker, which keeps one epoch
//! for everything in a bucket): when the subject has no entry (never
//! written, purged, lost with a JetStream store) or its last entry is older
//! than its TTL, the next append starts a new epoch at offset 1, and the
//! old epoch's entries are purged.
//!
//! History is read backwards from the subject's last entry by its
//! `Cable-Prev` links, one request per entry returned, so a client that
//! missed three messages costs four requests whatever the limit. The limit
//! is kept as the readers count (entries more than `limit` behind the last
//! are not served) and physically by a purge that keeps the last `limit`
//! entries, every `limit / 4` appends. Entry times are JetStream's
//! (the server clock); TTLs are judged against this process's clock, so keep
//! the nodes' clocks in step with NATS (NTP).
//!
//! Limits of this design: the stream's and bucket's `max_age`
//! ([`NatsBrokerConfig::max_age`], a day by default) caps every TTL and
//! clears subjects nobody appends to; they are set when the broker creates
//! them (change them with `nats stream edit` afterwards).
//!
//! # Presence
//! Unlike AnyCable's NATS broker, this one keeps presence, shared by every
//! node: the key-value bucket `cable_presence` holds a record per stream
//! (`stream.<key>`: its members, oldest first, with their info and
//! sessions) and one per session (`session.<key>`: its deadline and the
//! streams it is present on). Every change is a publish conditional on the
//! record's revision, retried when another node changed it first, so
//! concurrent joins and leaves on several nodes lose nothing. The sweep
//! ([`Broker::presence_expire`](cable_core::broker::Broker::presence_expire))
//! reads every session record and deletes the ones past their deadline
//! conditionally on the revision it read: only the node whose delete is
//! stored reports the leaves, so each is reported once, and a session
//! renewed meanwhile stays. The sweep reads every present session on each
//! heartbeat of each node: fine for thousands of present sessions, the
//! Redis broker's sorted set scales further. Presence TTLs are capped at 15
//! minutes (the bucket's `max_age` is an hour).
//!
//! ```no_run
//! use cable_nats::{NatsBroker, NatsBrokerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let builder = cable_core::Cable::builder()
//!     .try_broker(|| NatsBroker::new(NatsBrokerConfig::new("nats://127.0.0.1:4222")))?;
//! # drop(builder); Ok(()) }
//! ```
//!
//! # Example
//! ```no_run
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_nats::{NatsConfig, NatsPubSub};
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
//! let config = NatsConfig::new("nats://127.0.0.1:4222").subject_prefix("myapp.cable");
//! // A bad URL or prefix is an error here, before anything is served.
//! let cable = Cable::builder()
//!     .channel("ChatChannel", ChatChannel::default)
//!     .try_pubsub(move |delivery| NatsPubSub::new(config, delivery))?
//!     .build();
//! // PUB myapp.cable.chat_lobby {"body":"hi"}
//! cable.broadcast("chat_lobby", &serde_json::json!({"body": "hi"})).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod backend;
mod broker;
mod intake;
mod presence;
mod publisher;
pub mod subject;

pub use crate::broker::{NatsBroker, NatsBrokerConfig, DEFAULT_BROKER_NAME, DEFAULT_MAX_AGE};
pub use crate::intake::{NatsIntake, NatsIntakeConfig, DEFAULT_INTAKE_SUBJECT};

use async_nats::ServerAddr;
use cable_adapter_kit::Wiring;
use cable_core::pubsub::Delivery;
use cable_core::redact_url;

/// How long a subscribe or unsubscribe may wait for the server (including
/// for the connection to come back) before its [`Ack`](cable_core::pubsub::Ack) fails.
pub use cable_adapter_kit::ACK_TIMEOUT;
/// How long a broadcast may take, connecting included, before it fails.
pub use cable_adapter_kit::PUBLISH_TIMEOUT;
/// Default of [`NatsConfig::max_backlog_bytes`]: 64 MiB.
pub const DEFAULT_MAX_BACKLOG_BYTES: usize = 64 << 20;

/// Settings of a [`NatsPubSub`].
///
/// ```
/// use cable_nats::NatsConfig;
/// let config = NatsConfig::new("nats://user:secret@nats.example:4222")
///     .subject_prefix("myapp.cable")
///     .connection_name("cable-web-1");
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsConfig {
    /// `nats://[user:password@]host[:port]`, `tls://…` for TLS, or several
    /// of them separated by commas (a cluster's seed servers).
    pub url: String,
    /// Subject tokens put before every stream's token (`myapp.cable`); None
    /// (the default) for the stream's token alone. See the crate docs,
    /// "Subjects".
    pub subject_prefix: Option<String>,
    /// Name both connections give the server (shown by its monitoring).
    /// Default `cable-PID-<pid>`.
    pub connection_name: String,
    /// Most bytes of received messages waiting for delivery; past it new
    /// messages are dropped and counted. Default [`DEFAULT_MAX_BACKLOG_BYTES`].
    pub max_backlog_bytes: usize,
}

impl NatsConfig {
    /// Settings for `url` with no prefix and the default connection name.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            subject_prefix: None,
            connection_name: format!("cable-PID-{}", std::process::id()),
            max_backlog_bytes: DEFAULT_MAX_BACKLOG_BYTES,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the subject prefix.
        subject_prefix(prefix: impl Into<String>) => subject_prefix = Some(prefix.into());
        /// Sets the name given to the connections.
        connection_name(name: impl Into<String>) => connection_name = name.into();
        /// Sets the bound of the backlog of received messages, in bytes.
        max_backlog_bytes(bytes: usize) => max_backlog_bytes = bytes;
    }

    /// Checks the URL and the prefix, as [`NatsPubSub::new`] does, without
    /// connecting.
    pub fn validate(&self) -> Result<(), NatsConfigError> {
        self.target().map(drop)
    }

    fn target(&self) -> Result<Target, NatsConfigError> {
        if let Some(prefix) = &self.subject_prefix {
            if let Some(reason) = subject::prefix_problem(prefix) {
                return Err(NatsConfigError::InvalidPrefix {
                    prefix: prefix.clone(),
                    reason,
                });
            }
        }
        let invalid = |source| NatsConfigError::InvalidUrl {
            url: redact_url(&self.url),
            source,
        };
        let mut target = Target::default();
        for url in self.url.split(',') {
            let addr = url.trim().parse::<ServerAddr>().map_err(invalid)?;
            // async-nats neither sends a URL's credentials nor masks them
            // in its debug logs: they go to the CONNECT options instead,
            // and the address keeps none.
            if target.auth.is_none() {
                target.auth = match (addr.username(), addr.password()) {
                    (Some(user), Some(pass)) => {
                        Some(Credentials::UserPassword(unescape(user), unescape(pass)))
                    }
                    (Some(token), None) => Some(Credentials::Token(unescape(token))),
                    _ => None,
                };
            }
            let host = addr.host();
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            let bare = format!("{}://{host}:{}", addr.scheme(), addr.port());
            target
                .addrs
                .push(bare.parse::<ServerAddr>().map_err(invalid)?);
        }
        Ok(target)
    }
}

cable_adapter_kit::debug_redacting_url!(
    NatsConfig,
    subject_prefix,
    connection_name,
    max_backlog_bytes
);

/// Where to connect: the servers, without credentials, and the URL's
/// credentials (`user:password@`, or a lone `token@`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Target {
    pub(crate) addrs: Vec<ServerAddr>,
    pub(crate) auth: Option<Credentials>,
}

#[derive(Clone)]
pub(crate) enum Credentials {
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::UserPassword(..) => "UserPassword(***)",
            Credentials::Token(_) => "Token(***)",
        })
    }
}

/// A URL's percent-encoded user or password, decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = s
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a [`NatsPubSub`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsConfigError {
    /// The URL cannot be parsed or names an unsupported scheme.
    #[error("invalid nats url {url}")]
    InvalidUrl {
        /// The URL, its secrets masked ([`cable_core::redact_url`]).
        url: String,
        /// What async-nats found wrong with it.
        #[source]
        source: std::io::Error,
    },
    /// The subject prefix is not a valid literal subject.
    #[error("invalid nats subject prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The intake's subject is not a valid literal subject.
    #[error("invalid nats intake subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The subject as given.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`NatsPubSub::new`] spawns its background task and needs a runtime.
    #[error("NatsPubSub::new must be called from inside a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

/// The NATS adapter. Build it in [`cable_core::CableBuilder::pubsub`].
///
/// Dropping it (with the [`cable_core::Cable`] that owns it) stops its
/// background task and closes both connections.
pub struct NatsPubSub {
    wiring: Wiring<publisher::NatsPublish>,
    config: NatsConfig,
}

impl std::fmt::Debug for NatsPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.wiring.fmt_adapter(f, "NatsPubSub", &self.config)
    }
}

impl NatsPubSub {
    /// Validates `config` and starts the subscriber task on the current
    /// tokio runtime. Connects nothing yet: the subscriber connects in the
    /// background (retrying while NATS is down), the publisher on the first
    /// broadcast.
    pub fn new(config: NatsConfig, delivery: Delivery) -> Result<Self, NatsConfigError> {
        let target = config.target()?;
        let backend = backend::NatsBackend {
            target: target.clone(),
            name: config.connection_name.clone(),
            max_backlog_bytes: config.max_backlog_bytes,
        };
        let publish = publisher::NatsPublish {
            target,
            name: config.connection_name.clone(),
        };
        let wiring = Wiring::spawn(backend, delivery, redact_url(&config.url), publish)
            .map_err(NatsConfigError::NoRuntime)?;
        Ok(NatsPubSub { wiring, config })
    }

    /// The subject of `stream`: `<prefix>.<token>`, or the token alone
    /// without a prefix (see the crate docs, "Subjects").
    pub fn subject(&self, stream: &str) -> String {
        let token = subject::token(stream);
        match &self.config.subject_prefix {
            Some(p) => format!("{p}.{token}"),
            None => token,
        }
    }

    /// A cloneable handle on the connection state, to keep for health checks
    /// and tests once the adapter has moved into the `Cable`.
    pub fn status(&self) -> NatsStatus {
        self.wiring.status.clone()
    }

    /// The settings this adapter was built with.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }
}

cable_adapter_kit::wired_pubsub!(NatsPubSub, subject, "nats");

/// A view of a [`NatsPubSub`]'s subscriber connection that outlives the
/// borrow of the adapter (the `Cable` owns the adapter itself).
pub type NatsStatus = cable_adapter_kit::Status;

#[cfg(test)]
mod tests {
    use super::*;
    use cable_core::pubsub::PubSub;
    use cable_core::PubSubError;

    #[tokio::test]
    async fn validates_without_connecting() {
        assert!(NatsConfig::new("nats://h:4222").validate().is_ok());
        assert!(NatsConfig::new("nats://a:4222,nats://b:4222")
            .validate()
            .is_ok());
        let err = NatsConfig::new("nats://u:hunter2@h:4222 x")
            .validate()
            .expect_err("a space in the url");
        assert!(matches!(err, NatsConfigError::InvalidUrl { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(matches!(
            NatsConfig::new("redis://h").validate(),
            Err(NatsConfigError::InvalidUrl { .. })
        ));
        assert!(matches!(
            NatsConfig::new("nats://h").subject_prefix("a.*").validate(),
            Err(NatsConfigError::InvalidPrefix { .. })
        ));
        // Nothing listens on port 1: creation still succeeds.
        let ok = NatsPubSub::new(
            NatsConfig::new("nats://127.0.0.1:1").subject_prefix("p.q"),
            Delivery::detached(),
        )
        .expect("valid config");
        assert_eq!(ok.subject("room"), "p.q.room");
        assert_eq!(ok.subject("a.b c"), "p.q.a%2Eb%20c");
        assert!(!ok.is_connected());
        let err = ok.broadcast("room", "{}").await.expect_err("nats is down");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
        let bare = NatsPubSub::new(NatsConfig::new("nats://127.0.0.1:1"), Delivery::detached())
            .expect("valid config");
        assert_eq!(bare.subject("chat_lobby"), "chat_lobby");
        assert_eq!(bare.subject(""), "%");
    }

    #[test]
    fn credentials_leave_the_address() {
        let t = NatsConfig::new("nats://u%40x:p%3Aw@h:4223,nats://h2")
            .target()
            .expect("valid");
        assert!(
            matches!(&t.auth, Some(Credentials::UserPassword(u, p)) if u == "u@x" && p == "p:w")
        );
        let shown = format!("{:?}", t.addrs);
        assert!(
            !shown.contains("p%3Aw") && !shown.contains("u%40x"),
            "{shown}"
        );
        assert_eq!(t.addrs[0].port(), 4223);
        assert_eq!(t.addrs[1].host(), "h2");
        let t = NatsConfig::new("nats://s3cret@h").target().expect("valid");
        assert!(matches!(&t.auth, Some(Credentials::Token(k)) if k == "s3cret"));
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = NatsConfig::new("nats://[::1]:4222")
            .target()
            .expect("valid");
        assert!(t.auth.is_none());
        assert_eq!(t.addrs[0].port(), 4222);
    }

    #[test]
    fn needs_a_runtime() {
        let r = NatsPubSub::new(NatsConfig::new("nats://localhost"), Delivery::detached());
        assert!(matches!(r, Err(NatsConfigError::NoRuntime(_))));
    }
}
