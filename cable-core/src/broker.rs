//! For broker authors: the history and session store behind reliable streams
//! (AnyCable's "broker"), beside the [`pubsub`](crate::pubsub) adapter.
//!
//! A pub/sub adapter moves a broadcast to every node that is listening now; a
//! broker remembers. For a stream with history, the node that publishes a
//! broadcast first [`append`](Broker::append)s it, which gives it a
//! [`Position`] (the stream's epoch and an offset counted from 1), and then
//! publishes it with that position through the pub/sub adapter. A client that
//! was away asks for what it missed by position or by time
//! ([`Broker::history_from`], [`Broker::history_since`]) and the broker answers
//! from what it kept: at most [`HistoryPolicy::limit`] entries per stream,
//! none older than [`HistoryPolicy::ttl`].
//!
//! The broker also keeps sessions: what a connection was (its identifiers and
//! subscriptions, as opaque text the connection writes) under its session id
//! for a while ([`Broker::store_session`]), so that a client reconnecting with
//! `?sid=` gets them back without running the connect hook again.
//!
//! Contract for implementors (checked as code by the broker conformance suite
//! of `cable-adapter-kit`, feature `conformance`):
//! - Offsets of one stream within one epoch start at 1 and grow by 1 with each
//!   append, on every node that shares the backend. Two appends never get the
//!   same position, also across a restart of the backend or of this process.
//! - The epoch names one unbroken history. When the history of a stream may
//!   have been lost (the backend restarted without it, the stream expired),
//!   the next append starts a new epoch, so that a client holding an old
//!   position learns it cannot be served ([`BrokerError::HistoryNotFound`])
//!   rather than get a silent gap.
//! - [`Broker::history_from`] returns the entries after an offset, oldest
//!   first; an offset equal to the latest returns nothing. The entry at the
//!   offset (the client's last) must still be kept, so that what follows is
//!   known to be complete (as AnyCable's brokers): an unknown stream, another
//!   epoch, an offset whose entry was evicted or expired, 0, or one newer
//!   than the latest is [`BrokerError::HistoryNotFound`].
//! - Presence (for a broker whose [`Broker::supports_presence`] is true) is
//!   one store for every node on the backend: a join on one node is in
//!   [`Broker::presence_info`] on all, and of nodes calling
//!   [`Broker::presence_expire`] at once exactly one reports each leave.
//! - Errors are values: a backend outage must not panic or block callers
//!   forever.

use std::time::Duration;

use async_trait::async_trait;

mod memory;
mod presence;

pub use memory::MemoryBroker;
pub use presence::{MemoryPresence, PresenceInfo, PresenceLeft, PresenceRecord};

/// Where an appended message stands in its stream's history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's current epoch: names one unbroken history.
    pub epoch: String,
    /// Counted from 1 within the epoch.
    pub offset: u64,
}

/// One message kept in a stream's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its offset in the epoch the answer names.
    pub offset: u64,
    /// When it was appended, in Unix seconds.
    pub timestamp: u64,
    /// The payload, exactly as appended (JSON text).
    pub payload: String,
}

/// An answer to a history request: the entries, oldest first, all of one
/// epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The epoch the entries belong to.
    pub epoch: String,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

/// How much of a stream's history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// At most this many entries per stream (older ones are evicted).
    pub limit: usize,
    /// Entries older than this are dropped.
    pub ttl: Duration,
}

impl Default for HistoryPolicy {
    /// AnyCable's defaults: 100 messages for 300 s.
    fn default() -> Self {
        Self {
            limit: 100,
            ttl: Duration::from_secs(300),
        }
    }
}

/// A session joining a stream's presence ([`Broker::presence_join`]).
/// Named fields, as a session id and a member id are both text and must
/// not be swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Join<'a> {
    /// The stream whose presence it joins.
    pub stream: &'a str,
    /// The session joining.
    pub sid: &'a str,
    /// The member id it joins as.
    pub id: &'a str,
    /// What others see of it (JSON text).
    pub info: &'a str,
    /// How long it stays present without being renewed.
    pub ttl: Duration,
}

/// A broker failure, returned to whoever asked; never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The history asked for cannot be served: unknown stream, another
    /// epoch, or an offset evicted or never reached. The client gets
    /// `reject_history`.
    #[error("history not found for stream {stream:?}: {reason}")]
    HistoryNotFound {
        /// The stream asked about.
        stream: String,
        /// Why, for logs.
        reason: String,
    },
    /// The backend cannot be reached right now.
    #[error("broker backend unavailable: {0}")]
    Unavailable(String),
    /// Any other backend error, as text.
    #[error("broker backend error: {0}")]
    Backend(String),
    /// This broker does not do what was asked (presence, say).
    #[error("the {broker} broker does not support {what}")]
    Unsupported {
        /// The broker's name.
        broker: &'static str,
        /// What it was asked for.
        what: &'static str,
    },
    /// A session that is present on a stream as one id tried to join it as
    /// another (AnyCable's "presence ID mismatch").
    #[error("presence ID mismatch")]
    PresenceIdMismatch,
}

impl BrokerError {
    /// A [`BrokerError::HistoryNotFound`] for `stream`.
    pub fn not_found(stream: &str, reason: impl Into<String>) -> Self {
        Self::HistoryNotFound {
            stream: stream.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A history and session store. See the [module docs](self) for the contract.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Appends `payload` to `stream`'s history, keeping what `policy` says,
    /// and returns its position.
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError>;

    /// The entries of `stream` after `offset` in `epoch`, oldest first.
    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError>;

    /// The entries of `stream` appended at or after `since` (Unix seconds),
    /// oldest first; none (and the current epoch, if any) when there are none.
    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError>;

    /// Records that `stream` keeps history under `policy`, for `policy.ttl`
    /// from now (each call renews it). A channel's
    /// `stream_from_with_history` calls it, so that a broadcast published on
    /// any node sharing the backend is appended.
    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError>;

    /// The policy recorded for `stream` by [`Broker::enable_history`], if it
    /// has not run out.
    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError>;

    /// Stores a session's state (opaque text) under `sid` for `ttl`,
    /// replacing what was there.
    async fn store_session(&self, sid: &str, state: &str, ttl: Duration)
        -> Result<(), BrokerError>;

    /// The state stored under `sid`, if it is there and has not expired.
    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError>;

    /// Forgets `sid`'s state (a restored session's old id, a clean logout).
    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError>;

    /// Session `join.sid` joins `join.stream`'s presence as member
    /// `join.id`, showing `join.info` (JSON text; the latest join's wins),
    /// and stays present while [`Broker::presence_touch`] renews it within
    /// `join.ttl`. Returns true when the id was not present before (the
    /// stream's subscribers are told it joined). A session present as
    /// another id on the stream is [`BrokerError::PresenceIdMismatch`].
    async fn presence_join(&self, _join: Join<'_>) -> Result<bool, BrokerError> {
        Err(self.no_presence())
    }

    /// Session `sid` leaves `stream`'s presence. Returns the member id when
    /// it was that id's last session (the stream's subscribers are told it
    /// left); None when the session was not present or the id stays.
    async fn presence_leave(
        &self,
        _stream: &str,
        _sid: &str,
    ) -> Result<Option<String>, BrokerError> {
        Err(self.no_presence())
    }

    /// Who is present on `stream`: every member once, oldest first.
    async fn presence_info(&self, _stream: &str) -> Result<PresenceInfo, BrokerError> {
        Err(self.no_presence())
    }

    /// Keeps sessions `sids` present for another `ttl` (every node renews
    /// its connected sessions on each heartbeat; a session that went away
    /// is no longer renewed and expires).
    async fn presence_touch(&self, _sids: &[String], _ttl: Duration) -> Result<(), BrokerError> {
        Err(self.no_presence())
    }

    /// Removes the sessions whose presence ran out and returns the members
    /// that left with them, each once across every node sharing the
    /// backend (the caller tells the streams' subscribers).
    async fn presence_expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        Err(self.no_presence())
    }

    /// Whether this broker keeps presence. The presence methods of one that
    /// does not answer [`BrokerError::Unsupported`].
    fn supports_presence(&self) -> bool {
        false
    }

    /// A short name for logs ("memory", "redis", "postgres").
    fn name(&self) -> &'static str;

    /// The error of a presence call on a broker without presence.
    #[doc(hidden)]
    fn no_presence(&self) -> BrokerError {
        BrokerError::Unsupported {
            broker: self.name(),
            what: "presence",
        }
    }
}
