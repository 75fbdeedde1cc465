//! The JetStream history broker: every stream's entries on one JetStream
//! stream, a subject per cable stream; sessions and history marks in a
//! JetStream key-value bucket. See the crate docs ("History broker").
//!
//! An append is one conditional write: the entry is published with
//! `Nats-Expected-Last-Subject-Sequence` set to the sequence of the
//! subject's last entry, so of two nodes appending after the same entry
//! one is stored and the other is refused, reads the new last entry and
//! tries again. The offset and epoch travel in the entry's headers, with
//! the sequence of the entry before it, so history is read backwards from
//! the last entry, one request per entry returned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, HeaderMap};
use async_trait::async_trait;
use base64::Engine;
use cable_adapter_kit::broker::{
    mark_text, new_epoch, parse_mark, CallFailure, Connect, LazyConnection, BROKER_TIMEOUT,
};
use cable_core::broker::{
    Broker, BrokerError, Entry, History, HistoryPolicy, Join, Position, PresenceInfo, PresenceLeft,
};
use tokio::sync::Mutex;

use crate::backend::options;
use crate::subject::MAX_SUBJECT_BYTES;
use crate::{NatsConfig, NatsConfigError, Target};

/// Default of [`NatsBrokerConfig::name`].
pub const DEFAULT_BROKER_NAME: &str = "cable";

/// Default of [`NatsBrokerConfig::max_age`]: a day.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Settings of a [`NatsBroker`].
///
/// ```
/// use cable_nats::NatsBrokerConfig;
/// let config = NatsBrokerConfig::new("nats://127.0.0.1:4222").name("myapp");
/// assert_eq!(config.stream_name(), "myapp_history");
/// assert_eq!(config.subject("chat_42"), "myapp.history.Y2hhdF80Mg");
/// assert_eq!(config.bucket_name(), "myapp_broker");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsBrokerConfig {
    /// The NATS URL (or several, comma-separated), as [`NatsConfig::url`].
    pub url: String,
    /// Names what the broker creates: the JetStream stream
    /// `<name>_history` on the subjects `<name>.history.>`, and the
    /// key-value bucket `<name>_broker`. Letters, digits, `_` and `-`.
    /// Default [`DEFAULT_BROKER_NAME`] (`cable`).
    pub name: String,
    /// The longest anything is kept: the stream's and the bucket's
    /// `max_age`, which also clears out streams nobody appends to any
    /// more. History, session and mark TTLs are capped at it. Applied when
    /// the broker creates them; an existing stream or bucket is used as it
    /// is. Default [`DEFAULT_MAX_AGE`] (a day).
    pub max_age: Duration,
    /// Where JetStream keeps them when the broker creates them: on disk
    /// (the default) or in memory (lost when nats-server restarts; the
    /// next append of each stream then starts a new epoch).
    pub memory_storage: bool,
    /// Name the connection gives the server. Default `cable-broker-PID-<pid>`.
    pub connection_name: String,
    /// Bound on each call, connecting included. Default [`BROKER_TIMEOUT`].
    pub timeout: Duration,
}

impl NatsBrokerConfig {
    /// Settings for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        NatsBrokerConfig {
            url: url.into(),
            name: DEFAULT_BROKER_NAME.to_owned(),
            max_age: DEFAULT_MAX_AGE,
            memory_storage: false,
            connection_name: format!("cable-broker-PID-{}", std::process::id()),
            timeout: BROKER_TIMEOUT,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the name of the stream, its subjects and the bucket.
        name(name: impl Into<String>) => name = name.into();
        /// Sets the longest anything is kept.
        max_age(max_age: Duration) => max_age = max_age;
        /// Keeps what the broker creates in memory instead of on disk.
        memory_storage(memory: bool) => memory_storage = memory;
        /// Sets the connection name.
        connection_name(name: impl Into<String>) => connection_name = name.into();
        /// Sets the bound on each call.
        timeout(timeout: Duration) => timeout = timeout;
    }

    /// Checks the URL and the name, as [`NatsBroker::new`] does, without
    /// connecting.
    pub fn validate(&self) -> Result<(), NatsConfigError> {
        self.target().map(drop)
    }

    fn target(&self) -> Result<Target, NatsConfigError> {
        let valid = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(NatsConfigError::InvalidPrefix {
                prefix: self.name.clone(),
                reason: "a broker name is letters, digits, `_` and `-`",
            });
        }
        NatsConfig::new(self.url.clone()).target()
    }

    /// The JetStream stream holding every stream's entries: `<name>_history`.
    pub fn stream_name(&self) -> String {
        format!("{}_history", self.name)
    }

    /// The subject of `stream`'s entries: `<name>.history.<key(stream)>`,
    /// where the key is the stream's bytes in unpadded URL-safe base64
    /// (`=` for the empty stream).
    pub fn subject(&self, stream: &str) -> String {
        format!("{}.history.{}", self.name, key(stream))
    }

    /// The key-value bucket of sessions and history marks: `<name>_broker`.
    pub fn bucket_name(&self) -> String {
        format!("{}_broker", self.name)
    }

    /// The key-value bucket of presence: `<name>_presence`.
    pub fn presence_bucket_name(&self) -> String {
        format!("{}_presence", self.name)
    }
}

cable_adapter_kit::debug_redacting_url!(
    NatsBrokerConfig,
    name,
    max_age,
    memory_storage,
    connection_name,
    timeout
);

/// A subject token and key-value key for any text: unpadded URL-safe
/// base64 (`A-Z a-z 0-9 - _`), `=` for the empty text, so distinct texts
/// never share one.
pub(crate) fn key(text: &str) -> String {
    if text.is_empty() {
        return "=".to_owned();
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

// Headers of an entry.
const EPOCH: &str = "Cable-Epoch";
const OFFSET: &str = "Cable-Offset";
/// The stream sequence of the entry before this one on its subject (0 for
/// the first of an epoch): the link history is read by.
const PREV: &str = "Cable-Prev";
const LIMIT: &str = "Cable-Limit";
const TTL: &str = "Cable-Ttl-Ms";
/// JetStream's own: deduplicates a resend within the stream's window.
const MSG_ID: &str = "Nats-Msg-Id";

/// Most tries of one append refused because another node appended first.
const MAX_APPEND_TRIES: usize = 32;

/// A JetStream history and session store. Cheap to share (`Arc`); nothing
/// connects until the first call. See the crate docs ("History broker").
pub struct NatsBroker {
    pub(crate) config: NatsBrokerConfig,
    pub(crate) conn: LazyConnection<JsConnect>,
    /// Per stream, the appends of this node one at a time (others would
    /// only be refused by the conditional write), with the last entry this
    /// node wrote or read, so that its next append needs no read.
    streams: SyncMutex<HashMap<String, Arc<Mutex<Option<Last>>>>>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Past this many streams in [`NatsBroker::streams`], those no call holds
/// are forgotten.
const STREAMS_KEPT: usize = 4096;

impl NatsBroker {
    /// A broker on `config` (checked here; nothing connects yet).
    pub fn new(config: NatsBrokerConfig) -> Result<Self, NatsConfigError> {
        let target = config.target()?;
        let connect = JsConnect {
            target,
            config: config.clone(),
        };
        Ok(NatsBroker {
            conn: LazyConnection::with_timeout(connect, config.timeout),
            config,
            streams: SyncMutex::new(HashMap::new()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &NatsBrokerConfig {
        &self.config
    }

    fn subject(&self, stream: &str) -> Result<String, BrokerError> {
        let subject = self.config.subject(stream);
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(BrokerError::Backend(format!(
                "nats: the history subject of this stream would be {} bytes, over the \
                 {MAX_SUBJECT_BYTES} a NATS protocol line takes",
                subject.len()
            )));
        }
        Ok(subject)
    }

    fn slot(&self, stream: &str) -> Arc<Mutex<Option<Last>>> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() > STREAMS_KEPT {
            streams.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        streams.entry(stream.to_owned()).or_default().clone()
    }

    fn cap(&self, ttl: Duration) -> Duration {
        ttl.min(self.config.max_age).max(Duration::from_millis(1))
    }

    /// The last entry of `subject` and its payload, if there is one.
    async fn last(&self, subject: &str) -> Result<Option<(Last, StreamMessage)>, BrokerError> {
        self.conn
            .call("STREAM.MSG.GET (last)", |js| async move {
                match js.stream.get_last_raw_message_by_subject(subject).await {
                    Ok(m) => Ok(Some((Last::of_any(&m), m))),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(get_failure(&e, e.kind())),
                }
            })
            .await
    }

    /// The entry stored at `seq`, if it is still there (and is one).
    async fn at(&self, seq: u64) -> Result<Option<(Last, StreamMessage)>, BrokerError> {
        self.conn
            .call("STREAM.MSG.GET", |js| async move {
                match js.stream.get_raw_message(seq).await {
                    Ok(m) => Ok(Last::of(&m).ok().map(|last| (last, m))),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                    Err(e) => Err(get_failure(&e, e.kind())),
                }
            })
            .await
    }

    /// Publishes one entry on `subject` if its last entry is still at
    /// sequence `expect` (0: none); Ok(None) when it is not.
    async fn put(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: &str,
    ) -> Result<Option<u64>, BrokerError> {
        let bytes = bytes::Bytes::copy_from_slice(payload.as_bytes());
        self.publish_if("PUB (append)", subject, headers, bytes)
            .await
    }

    /// Publishes `payload` on `subject` with `headers`, which name the
    /// subject's expected last sequence: its stream sequence, or Ok(None)
    /// when another publish came first (`wrong last sequence`).
    pub(crate) async fn publish_if(
        &self,
        what: &str,
        subject: &str,
        headers: HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<Option<u64>, BrokerError> {
        self.conn
            .call(what, |js| {
                let (headers, payload) = (headers.clone(), payload.clone());
                async move {
                    let ack = js
                        .js
                        .publish_with_headers(subject.to_owned(), headers, payload)
                        .await
                        .map_err(|e| publish_failure(&e, e.kind()))?;
                    match ack.await {
                        Ok(ack) => Ok(Some(ack.sequence)),
                        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
                        Err(e) => Err(publish_failure(&e, e.kind())),
                    }
                }
            })
            .await
    }

    /// Entries of the history that `last` (with its message `m`) ends,
    /// newest first, walking back while `keep` says so of each; the entry
    /// `keep` refused ends the walk and is returned too (None when the walk
    /// reached the epoch's first entry or a gap: an entry no longer
    /// stored).
    async fn walk(
        &self,
        (last, m): (Last, StreamMessage),
        stream: &str,
        mut keep: impl FnMut(&Last) -> bool,
    ) -> Result<(Vec<Entry>, Option<Last>), BrokerError> {
        let mut entries = Vec::new();
        let (mut cur, mut m) = (last, m);
        loop {
            if !keep(&cur) {
                return Ok((entries, Some(cur)));
            }
            entries.push(Entry {
                offset: cur.offset,
                timestamp: cur.time_ms / 1000,
                payload: text_of(&m, stream)?,
            });
            if cur.prev == 0 || cur.offset <= 1 {
                return Ok((entries, None));
            }
            match self.at(cur.prev).await? {
                Some((prev, pm)) if prev.epoch == cur.epoch && prev.offset + 1 == cur.offset => {
                    (cur, m) = (prev, pm);
                }
                _ => return Ok((entries, None)),
            }
        }
    }

    async fn kv_put(&self, key: String, value: String) -> Result<(), BrokerError> {
        let bytes = bytes::Bytes::from(value);
        self.conn
            .call("KV PUT", |js| {
                let (key, bytes) = (key.clone(), bytes.clone());
                async move {
                    js.kv
                        .put(key, bytes)
                        .await
                        .map(drop)
                        .map_err(|e| kv_failure(&e))
                }
            })
            .await
    }

    /// The value under `key` with its deadline passed over, None if it is
    /// not there or its deadline has passed.
    async fn kv_get(&self, key: String) -> Result<Option<String>, BrokerError> {
        let value = self
            .conn
            .call("KV GET", |js| {
                let key = key.clone();
                async move { js.kv.get(key).await.map_err(|e| kv_failure(&e)) }
            })
            .await?;
        let Some(value) = value else { return Ok(None) };
        let text = String::from_utf8_lossy(&value);
        let Some((deadline, rest)) = text.split_once(' ') else {
            return Err(BrokerError::Backend(format!(
                "nats: key {key:?} is not `<deadline_ms> <value>`"
            )));
        };
        match deadline.parse::<u64>() {
            Ok(d) if d > now_ms() => Ok(Some(rest.to_owned())),
            Ok(_) => Ok(None),
            Err(_) => Err(BrokerError::Backend(format!(
                "nats: key {key:?} has no deadline"
            ))),
        }
    }

    async fn kv_delete(&self, key: String) -> Result<(), BrokerError> {
        self.conn
            .call("KV DEL", |js| {
                let key = key.clone();
                async move { js.kv.delete(key).await.map_err(|e| kv_failure(&e)) }
            })
            .await
    }

    /// Clears what an append made stale: the previous epoch's entries (on
    /// a new epoch) or those past the limit. Failures are only logged: the
    /// readers never serve those entries anyway.
    async fn tidy(&self, subject: &str, pos: &Position, seq: u64, policy: HistoryPolicy) {
        let limit = u64::try_from(policy.limit).unwrap_or(u64::MAX).max(1);
        let every = (limit / 4).max(1);
        // Before the new epoch's first entry, or all but the last `limit`.
        let (what, before) = if pos.offset == 1 {
            ("the previous epoch", Some(seq))
        } else if pos.offset > limit && pos.offset.is_multiple_of(every) {
            ("entries past the limit", None)
        } else {
            return;
        };
        let result = self
            .conn
            .call("STREAM.PURGE", |js| async move {
                let purge = js.stream.purge().filter(subject);
                let done = match before {
                    Some(seq) => purge.sequence(seq).await,
                    None => purge.keep(limit).await,
                };
                done.map(drop).map_err(|e| refused_text(&e))
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(subject, error = %e, "nats broker: could not purge {what}");
        }
    }
}

/// What the broker knows of an entry from its headers and metadata.
#[derive(Clone, Debug)]
struct Last {
    /// Its `Nats-Msg-Id`: `<nonce>-<offset>`, the nonce drawn by the
    /// append call that wrote it.
    msg_id: String,
    epoch: String,
    offset: u64,
    seq: u64,
    prev: u64,
    limit: u64,
    ttl_ms: u64,
    /// When JetStream stored it, Unix ms.
    time_ms: u64,
}

impl Last {
    fn of(m: &StreamMessage) -> Result<Last, BrokerError> {
        let h = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let n = |name: &str| h(name).and_then(|v| v.parse::<u64>().ok());
        let bad = || {
            BrokerError::Backend(format!(
                "nats: message {} on {} is no history entry (headers {EPOCH}, {OFFSET}, \
                 {PREV}, {LIMIT}, {TTL} missing or not numbers)",
                m.sequence, m.subject
            ))
        };
        let nanos = m.time.unix_timestamp_nanos();
        Ok(Last {
            msg_id: h(MSG_ID).unwrap_or_default(),
            epoch: h(EPOCH).filter(|e| !e.is_empty()).ok_or_else(bad)?,
            offset: n(OFFSET).filter(|&o| o > 0).ok_or_else(bad)?,
            prev: n(PREV).ok_or_else(bad)?,
            limit: n(LIMIT).filter(|&l| l > 0).ok_or_else(bad)?,
            ttl_ms: n(TTL).ok_or_else(bad)?,
            seq: m.sequence,
            time_ms: u64::try_from(nanos / 1_000_000).unwrap_or(0),
        })
    }

    /// `m` as an entry, or, for a message on the subject that is not one
    /// (published there by something else), an entry that has expired:
    /// never served, and the next append starts a new epoch after it.
    fn of_any(m: &StreamMessage) -> Last {
        Last::of(m).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "nats broker: a foreign message ends a history");
            Last {
                msg_id: String::new(),
                epoch: String::new(),
                offset: 0,
                seq: m.sequence,
                prev: 0,
                limit: 1,
                ttl_ms: 0,
                time_ms: 0,
            }
        })
    }

    /// Whether this entry is older than its TTL at `now_ms`.
    fn expired(&self, now_ms: u64) -> bool {
        self.time_ms.saturating_add(self.ttl_ms) <= now_ms
    }

    /// Whether the entry at `offset` of this history is still served:
    /// within the limit counted back from this, the last entry.
    fn within_limit(&self, offset: u64) -> bool {
        offset > self.offset.saturating_sub(self.limit)
    }
}

fn text_of(m: &StreamMessage, stream: &str) -> Result<String, BrokerError> {
    String::from_utf8(m.payload.to_vec()).map_err(|_| {
        BrokerError::Backend(format!(
            "nats: an entry of {stream:?} (sequence {}) is not UTF-8",
            m.sequence
        ))
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn refused(error: BrokerError) -> CallFailure {
    CallFailure {
        error,
        broken: false,
    }
}

pub(crate) fn refused_text(e: &dyn std::fmt::Display) -> CallFailure {
    refused(BrokerError::Backend(format!("nats: {e}")))
}

fn broken(e: &dyn std::fmt::Display) -> CallFailure {
    CallFailure {
        error: BrokerError::Unavailable(format!("nats: {e}")),
        broken: true,
    }
}

/// A request that timed out or could not be sent breaks the connection; an
/// answer from JetStream refusing it does not.
pub(crate) fn get_failure(e: &dyn std::fmt::Display, kind: LastRawMessageErrorKind) -> CallFailure {
    match kind {
        LastRawMessageErrorKind::JetStream(_) | LastRawMessageErrorKind::InvalidSubject => {
            refused_text(e)
        }
        _ => broken(e),
    }
}

fn publish_failure(e: &dyn std::fmt::Display, kind: PublishErrorKind) -> CallFailure {
    match kind {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => broken(e),
        // No stream on the subject: someone deleted it; connecting again
        // creates it.
        PublishErrorKind::StreamNotFound => broken(e),
        _ => refused_text(e),
    }
}

fn kv_failure(e: &dyn std::fmt::Display) -> CallFailure {
    // The key-value errors do not tell a timeout from a refusal in a way
    // that holds across versions: a failure replaces the connection, which
    // costs one reconnect at worst.
    broken(e)
}

#[async_trait]
impl Broker for NatsBroker {
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let subject = self.subject(stream)?;
        let slot = self.slot(stream);
        let mut known = slot.lock().await;
        let limit = u64::try_from(policy.limit).unwrap_or(u64::MAX).max(1);
        let ttl_ms = millis(self.cap(policy.ttl));
        // Names this call's publishes (`Nats-Msg-Id`), so that one stored
        // whose acknowledgement was lost is known as ours when read back
        // (and JetStream drops a resend of it as a duplicate).
        let nonce = new_epoch();
        for _ in 0..MAX_APPEND_TRIES {
            let last = match known.take() {
                Some(last) => Some(last),
                None => self.last(&subject).await?.map(|(last, _)| last),
            };
            if let Some(l) = last.as_ref().filter(|l| l.msg_id.starts_with(&nonce)) {
                let pos = Position {
                    epoch: l.epoch.clone(),
                    offset: l.offset,
                };
                *known = last;
                return Ok(pos);
            }
            let now = now_ms();
            let (epoch, offset, expect) = match &last {
                Some(l) if !l.expired(now) => (l.epoch.clone(), l.offset + 1, l.seq),
                Some(l) => (new_epoch(), 1, l.seq),
                None => (new_epoch(), 1, 0),
            };
            let mut headers = HeaderMap::new();
            headers.insert(EPOCH, epoch.as_str());
            headers.insert(OFFSET, offset.to_string().as_str());
            headers.insert(
                PREV,
                if offset == 1 { 0 } else { expect }.to_string().as_str(),
            );
            headers.insert(LIMIT, limit.to_string().as_str());
            headers.insert(TTL, ttl_ms.to_string().as_str());
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expect.to_string().as_str(),
            );
            let msg_id = format!("{nonce}-{offset}");
            headers.insert(MSG_ID, msg_id.as_str());
            // Another node appended since `last`: read again.
            let Some(seq) = self.put(&subject, headers, payload).await? else {
                continue;
            };
            *known = Some(Last {
                msg_id,
                epoch: epoch.clone(),
                offset,
                seq,
                prev: expect,
                limit,
                ttl_ms,
                time_ms: now,
            });
            drop(known);
            let pos = Position { epoch, offset };
            if expect > 0 {
                self.tidy(&subject, &pos, seq, policy).await;
            }
            return Ok(pos);
        }
        Err(BrokerError::Unavailable(format!(
            "nats: {MAX_APPEND_TRIES} appends to {stream:?} in a row were refused because \
             other nodes appended first"
        )))
    }

    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError> {
        let subject = self.subject(stream)?;
        let Some(found) = self.last(&subject).await? else {
            return Err(BrokerError::not_found(stream, "no history"));
        };
        let last = found.0.clone();
        let now = now_ms();
        let refuse = |why: &str| Err(BrokerError::not_found(stream, why));
        if last.expired(now) {
            return refuse("the history expired");
        }
        if last.epoch != epoch {
            return refuse("another epoch");
        }
        if offset == 0 || offset > last.offset {
            return refuse("no such offset in this epoch");
        }
        if !last.within_limit(offset) {
            return refuse("the offset was evicted (history limit)");
        }
        let (mut entries, stop) = self.walk(found, stream, |e| e.offset > offset).await?;
        // The entry at the offset must still be there and unexpired, so
        // that what follows it is known to be complete.
        match stop {
            Some(at) if at.offset == offset && !at.expired(now) => {}
            _ => return refuse("the entry at the offset expired or is gone"),
        }
        entries.reverse();
        Ok(History {
            epoch: last.epoch,
            entries,
        })
    }

    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError> {
        let subject = self.subject(stream)?;
        let Some(found) = self.last(&subject).await? else {
            return Ok(History::default());
        };
        let last = found.0.clone();
        let now = now_ms();
        if last.expired(now) {
            return Ok(History::default());
        }
        let (mut entries, _) = self
            .walk(found, stream, |e| {
                last.within_limit(e.offset) && !e.expired(now) && e.time_ms / 1000 >= since
            })
            .await?;
        entries.reverse();
        Ok(History {
            epoch: last.epoch,
            entries,
        })
    }

    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError> {
        let ttl = millis(self.cap(policy.ttl));
        let deadline = now_ms().saturating_add(ttl);
        let value = format!("{deadline} {}", mark_text(policy, ttl));
        self.kv_put(format!("mark.{}", key(stream)), value).await
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let Some(value) = self.kv_get(format!("mark.{}", key(stream))).await? else {
            return Ok(None);
        };
        parse_mark("nats", stream, &value).map(Some)
    }

    async fn store_session(
        &self,
        sid: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let deadline = now_ms().saturating_add(millis(self.cap(ttl)));
        self.kv_put(
            format!("session.{}", key(sid)),
            format!("{deadline} {state}"),
        )
        .await
    }

    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        self.kv_get(format!("session.{}", key(sid))).await
    }

    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        self.kv_delete(format!("session.{}", key(sid))).await
    }

    async fn presence_join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        self.join(join).await
    }

    async fn presence_leave(&self, stream: &str, sid: &str) -> Result<Option<String>, BrokerError> {
        self.leave(stream, sid).await
    }

    async fn presence_info(&self, stream: &str) -> Result<PresenceInfo, BrokerError> {
        self.info(stream).await
    }

    async fn presence_touch(&self, sids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.touch(sids, ttl).await
    }

    async fn presence_expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        self.expire().await
    }

    fn supports_presence(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

/// Opens the broker's connection: a NATS client, the history stream and
/// the bucket, each created if missing.
pub(crate) struct JsConnect {
    target: Target,
    config: NatsBrokerConfig,
}

/// One connection's handles.
#[derive(Clone)]
pub(crate) struct Js {
    client: Client,
    pub(crate) js: Context,
    stream: stream::Stream,
    kv: kv::Store,
    /// The presence bucket's stream (read and written as a key-value
    /// bucket is, with conditional publishes: see `presence.rs`).
    pub(crate) presence: stream::Stream,
}

impl Js {
    /// A fresh inbox subject on this connection (a push consumer's).
    pub(crate) fn client_inbox(&self) -> String {
        self.client.new_inbox()
    }
}

/// A key-value bucket's stream, made as a bucket is (async-nats' own bucket
/// creation first asks for account details nats-server 2.9 does not answer
/// in the shape it expects): one revision per key.
async fn bucket_stream(
    js: &Context,
    bucket: &str,
    max_age: Duration,
    storage: StorageType,
    what: &str,
) -> Result<stream::Stream, BrokerError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        description: Some(format!("cable: {what}")),
        ..Default::default()
    })
    .await
    .map_err(|e| BrokerError::Unavailable(format!("nats: bucket {bucket}: {e}")))
}

#[async_trait]
impl Connect for JsConnect {
    type Conn = Js;
    const NAME: &'static str = "nats";

    async fn connect(&self) -> Result<Js, BrokerError> {
        let c = &self.config;
        let unavailable =
            |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("nats: {e}"));
        let client = options(&c.connection_name, c.timeout, &self.target.auth)
            .connect(self.target.addrs.as_slice())
            .await
            .map_err(|e| unavailable(&e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(c.timeout);
        let storage = if c.memory_storage {
            StorageType::Memory
        } else {
            StorageType::File
        };
        let stream = js
            .get_or_create_stream(stream::Config {
                name: c.stream_name(),
                subjects: vec![format!("{}.history.>", c.name)],
                max_age: c.max_age,
                storage,
                discard: DiscardPolicy::Old,
                description: Some("cable: history of reliable streams".to_owned()),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "nats: stream {} (is JetStream enabled?): {e}",
                    c.stream_name()
                ))
            })?;
        let bucket = c.bucket_name();
        bucket_stream(
            &js,
            &bucket,
            c.max_age,
            storage,
            "sessions and history marks",
        )
        .await?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("nats: bucket {bucket}: {e}")))?;
        let presence = bucket_stream(
            &js,
            &c.presence_bucket_name(),
            crate::presence::MAX_AGE,
            storage,
            "presence",
        )
        .await?;
        Ok(Js {
            client,
            js,
            stream,
            kv,
            presence,
        })
    }

    fn is_closed(conn: &Js) -> bool {
        conn.client.connection_state() == State::Disconnected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tokens_and_distinct() {
        assert_eq!(key(""), "=");
        assert_eq!(key("chat_42"), "Y2hhdF80Mg");
        for s in ["a.b", "with space", "ü>*", "a/b"] {
            let k = key(s);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{k}"
            );
        }
        assert_ne!(key("a"), key("a\0"));
    }

    #[test]
    fn names_are_checked() {
        assert!(NatsBrokerConfig::new("nats://h")
            .name("a.b")
            .validate()
            .is_err());
        assert!(NatsBrokerConfig::new("nats://h")
            .name("")
            .validate()
            .is_err());
        assert!(NatsBrokerConfig::new("nats://h")
            .name("app-1_x")
            .validate()
            .is_ok());
        assert!(NatsBrokerConfig::new("http://h").validate().is_err());
    }
}
