//! For adapter authors: the pub/sub adapter contract (Rails' `SubscriptionAdapter`),
//! the in-memory adapter, and the reconnect [`Backoff`] adapters share.
//!
//! An adapter moves broadcasts between processes. The local hub
//! is its only subscriber: the hub counts local subscribers per stream and asks
//! the adapter to `subscribe` a stream when the first arrives and to
//! `unsubscribe` it when the last leaves, so an adapter sees each stream at most
//! once per process (a subscribe that failed is retried by the next local
//! subscriber). Incoming messages go back through the [`Delivery`] handle
//! the adapter was built with.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;

use crate::broker::Position;
use crate::hub::Hub;

pub use crate::backoff::Backoff;

/// The outcome of a subscribe or unsubscribe, resolved when the backend has
/// acknowledged it (Redis' SUBSCRIBE reply, PostgreSQL's LISTEN).
pub type Ack = Pin<Box<dyn Future<Output = Result<(), PubSubError>> + Send + 'static>>;

/// An adapter failure, returned to whoever asked (a broadcaster, a subscribing
/// channel); never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// The backend cannot be reached right now.
    #[error("pub/sub backend unavailable: {0}")]
    Unavailable(String),
    /// The payload is larger than the backend accepts.
    #[error("payload of {size} bytes is over the {adapter} adapter's limit of {limit} bytes")]
    PayloadTooLarge {
        /// Which adapter refused it.
        adapter: &'static str,
        /// The payload's size in bytes.
        size: usize,
        /// The largest payload accepted, in bytes.
        limit: usize,
    },
    /// The message is larger than any client may be sent
    /// ([`crate::CableConfig::max_outbound_message_bytes`]).
    #[error("message of {size} bytes is over the limit of {limit} bytes a client may be sent (max_outbound_message_bytes)")]
    MessageTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The adapter has been shut down.
    #[error("pub/sub adapter is shut down")]
    Closed,
    /// Any other backend error, as text.
    #[error("pub/sub backend error: {0}")]
    Backend(String),
}

/// A pub/sub backend.
///
/// The contract below is checked as code by the conformance suite of
/// `cable-adapter-kit` (feature `conformance`), which every adapter runs
/// against its real server; the kit's skeleton (command loop, reconnection,
/// bounded inbox, lazy publisher) implements most of it for a new adapter.
///
/// Contract for implementors:
/// - `subscribe` and `unsubscribe` take effect in call order: the command is
///   queued before the method returns; the returned [`Ack`] only reports the
///   outcome, and dropping it cancels nothing.
/// - `subscribe` may be called again for a stream whose earlier subscribe
///   failed, with no `unsubscribe` in between: treat a repeat as harmless.
/// - Incoming messages are handed to [`Delivery::deliver`] with the stream name
///   as broadcast (without any channel prefix the adapter adds) and the payload
///   text exactly as published.
/// - Errors are values; a backend outage must not panic or block callers forever.
/// - Messages from the backend must not pile up without bound when delivery
///   is slower than the backend: either leave them with the backend (read
///   one, deliver it, read the next: TCP holds the rest back) or queue them
///   with a bound, drop past it with a warning, and report both through
///   [`PubSub::backlog`] and [`PubSub::dropped`].
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// Publishes `payload` (JSON text) on `stream` to every process.
    async fn broadcast(&self, stream: &str, payload: &str) -> Result<(), PubSubError>;
    /// Starts receiving `stream`.
    fn subscribe(&self, stream: &str) -> Ack;
    /// Stops receiving `stream`.
    fn unsubscribe(&self, stream: &str) -> Ack;
    /// How many times the backend connection was re-established (for stats).
    fn reconnects(&self) -> u64 {
        0
    }
    /// Whether the backend connection is up (for health checks).
    fn is_connected(&self) -> bool {
        true
    }
    /// Messages received from the backend and not yet delivered, now (a
    /// gauge, for stats: a growing backlog means delivery cannot keep up).
    fn backlog(&self) -> u64 {
        0
    }
    /// Messages received from the backend and dropped undelivered because
    /// the backlog was full, since start (a counter, for stats).
    fn dropped(&self) -> u64 {
        0
    }
    /// A short name for logs ("memory", "redis", "postgres").
    fn name(&self) -> &'static str;
}

/// The handle an adapter uses to hand incoming messages to this process's
/// subscribers.
///
/// It is made before the hub it delivers to (an adapter is built first, and
/// [`CableBuilder::try_pubsub`](crate::CableBuilder::try_pubsub) may refuse
/// it), and is bound to the hub when the [`Cable`](crate::Cable) is built;
/// until then, and after the `Cable` is gone, deliveries are dropped (there
/// is nobody to deliver to).
#[derive(Clone, Debug)]
pub struct Delivery {
    hub: Arc<OnceLock<Weak<Hub>>>,
}

impl Delivery {
    /// Delivers `payload` (JSON text) published on `stream` to local subscribers.
    /// Never waits on a socket: slow clients are dealt with by their own queue.
    pub fn deliver(&self, stream: &str, payload: &str) {
        if let Some(hub) = self.hub.get().and_then(Weak::upgrade) {
            hub.deliver(stream, payload);
        }
    }

    /// A delivery handle that drops everything (for adapters under test).
    pub fn detached() -> Self {
        Delivery {
            hub: Arc::new(OnceLock::new()),
        }
    }

    /// Binds this handle (and its clones) to `hub`; later calls do nothing.
    pub(crate) fn bind(&self, hub: Weak<Hub>) {
        let _ = self.hub.set(hub);
    }
}

fn ready() -> Ack {
    Box::pin(std::future::ready(Ok(())))
}

/// The in-process adapter (Rails' `async`): broadcasts reach subscribers of
/// this process only. The default.
#[derive(Debug)]
pub struct MemoryPubSub {
    delivery: Delivery,
}

impl MemoryPubSub {
    /// An in-memory adapter delivering through `delivery`.
    pub fn new(delivery: Delivery) -> Self {
        MemoryPubSub { delivery }
    }
}

#[async_trait]
impl PubSub for MemoryPubSub {
    async fn broadcast(&self, stream: &str, payload: &str) -> Result<(), PubSubError> {
        self.delivery.deliver(stream, payload);
        Ok(())
    }

    fn subscribe(&self, _stream: &str) -> Ack {
        ready()
    }

    fn unsubscribe(&self, _stream: &str) -> Ack {
        ready()
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// Marks a payload with an envelope on the pub/sub wire; see [`encode_with_meta`].
const POSITION_MARK: char = '\u{1e}';

/// What travels with a broadcast beside its payload, in the envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Its place in the stream's history, when the stream keeps one.
    pub position: Option<Position>,
    /// The session (its `sid`, AnyCable's `exclude_socket`) that must not
    /// get it: a whisper's sender, or the client of a `to_others` broadcast.
    pub exclude_socket: Option<String>,
    /// A presence event (AnyCable's `broadcast_type: presence`): its
    /// frames are `{"type":"presence","identifier":…,"message":…}`.
    pub presence: bool,
}

impl Meta {
    /// Meta with only a position.
    pub fn at(position: Position) -> Self {
        Meta {
            position: Some(position),
            ..Meta::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.position.is_none() && self.exclude_socket.is_none() && !self.presence
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    exclude_socket: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    presence: bool,
}

/// The pub/sub payload of a broadcast with [`Meta`]: the payload as it is
/// when there is none, else `\u{1e}{"epoch":E,"offset":O,"exclude_socket":S,"presence":true}\u{1e}`
/// (each field only when set) followed by the payload as broadcast.
///
/// The meta must travel with the payload so that every node puts the
/// position into its frames and skips the excluded session. The record
/// separator (U+001E) cannot start JSON text, so a payload Rails (or
/// anyone) publishes is never mistaken for one of these, and payloads
/// without meta stay exactly as Rails publishes them. The header is JSON,
/// so a separator inside a value is escaped and the second one ends it.
///
/// ```
/// use cable_core::broker::Position;
/// use cable_core::pubsub::{decode_with_meta, encode_with_meta, Meta};
///
/// let pos = Position { epoch: "ab0".into(), offset: 7 };
/// let wire = encode_with_meta(&Meta::at(pos.clone()), r#"{"text":"hi"}"#);
/// assert_eq!(wire, "\u{1e}{\"epoch\":\"ab0\",\"offset\":7}\u{1e}{\"text\":\"hi\"}");
/// assert_eq!(decode_with_meta(&wire).unwrap(), (Meta::at(pos), r#"{"text":"hi"}"#));
/// let whisper = Meta { exclude_socket: Some("sid-1".into()), ..Meta::default() };
/// let wire = encode_with_meta(&whisper, r#"{"event":"typing"}"#);
/// assert_eq!(wire, "\u{1e}{\"exclude_socket\":\"sid-1\"}\u{1e}{\"event\":\"typing\"}");
/// assert_eq!(decode_with_meta(r#"{"a":1}"#).unwrap(), (Meta::default(), r#"{"a":1}"#));
/// assert_eq!(encode_with_meta(&Meta::default(), r#"{"a":1}"#), r#"{"a":1}"#);
/// ```
pub fn encode_with_meta(meta: &Meta, payload: &str) -> String {
    if meta.is_empty() {
        return payload.to_owned();
    }
    let header = Header {
        epoch: meta
            .position
            .as_ref()
            .map(|p| std::borrow::Cow::Borrowed(p.epoch.as_str())),
        offset: meta.position.as_ref().map(|p| p.offset),
        exclude_socket: meta
            .exclude_socket
            .as_deref()
            .map(std::borrow::Cow::Borrowed),
        presence: meta.presence,
    };
    // Strings and a number always serialise.
    let header = serde_json::to_string(&header).unwrap_or_default();
    let mut out = String::with_capacity(header.len() + payload.len() + 2);
    out.push(POSITION_MARK);
    out.push_str(&header);
    out.push(POSITION_MARK);
    out.push_str(payload);
    out
}

/// A payload whose envelope cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed envelope on a pub/sub payload: {0}")]
pub struct EnvelopeError(String);

/// Splits a pub/sub payload into its [`Meta`] (see [`encode_with_meta`])
/// and the payload as broadcast. A payload without the mark is returned
/// whole, with empty meta: costs one byte comparison.
pub fn decode_with_meta(payload: &str) -> Result<(Meta, &str), EnvelopeError> {
    let Some(rest) = payload.strip_prefix(POSITION_MARK) else {
        return Ok((Meta::default(), payload));
    };
    let Some((header, body)) = rest.split_once(POSITION_MARK) else {
        return Err(EnvelopeError("no end of header".into()));
    };
    let header: Header<'_> =
        serde_json::from_str(header).map_err(|e| EnvelopeError(e.to_string()))?;
    let position = match (header.epoch, header.offset) {
        (Some(epoch), Some(offset)) => Some(Position {
            epoch: epoch.into_owned(),
            offset,
        }),
        (None, None) => None,
        _ => {
            return Err(EnvelopeError(
                "an epoch without an offset, or the reverse".into(),
            ))
        }
    };
    Ok((
        Meta {
            position,
            exclude_socket: header.exclude_socket.map(std::borrow::Cow::into_owned),
            presence: header.presence,
        },
        body,
    ))
}
