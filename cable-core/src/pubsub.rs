//! For adapter authors: the pub/sub adapter contract (Rails' `SubscriptionAdapter`),
//! the in-memory adapter, and the reconnect [`Backoff`] adapters share.
//!
//! An adapter moves broadcasts between processes. The local [`Hub`](crate::hub)
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

/// Marks a positioned payload on the pub/sub wire; see [`encode_positioned`].
const POSITION_MARK: char = '\u{1e}';

#[derive(serde::Serialize, serde::Deserialize)]
struct PositionHeader<'a> {
    #[serde(borrow)]
    epoch: std::borrow::Cow<'a, str>,
    offset: u64,
}

/// The pub/sub payload of a broadcast that has a place in its stream's
/// history: `\u{1e}{"epoch":E,"offset":O}\u{1e}` followed by the payload
/// as broadcast.
///
/// The position must travel with the payload so that every node puts it
/// into its frames. The record separator (U+001E) cannot start JSON text,
/// so a payload Rails (or anyone) publishes is never mistaken for one of
/// these, and unpositioned payloads stay exactly as they are today. The
/// header is JSON, so the separator inside an epoch is escaped and the
/// second separator ends the header.
///
/// ```
/// use cable_core::broker::Position;
/// use cable_core::pubsub::{decode_positioned, encode_positioned};
///
/// let pos = Position { epoch: "ab0".into(), offset: 7 };
/// let wire = encode_positioned(&pos, r#"{"text":"hi"}"#);
/// assert_eq!(wire, "\u{1e}{\"epoch\":\"ab0\",\"offset\":7}\u{1e}{\"text\":\"hi\"}");
/// assert_eq!(decode_positioned(&wire).unwrap(), (Some(pos), r#"{"text":"hi"}"#));
/// assert_eq!(decode_positioned(r#"{"a":1}"#).unwrap(), (None, r#"{"a":1}"#));
/// ```
pub fn encode_positioned(position: &Position, payload: &str) -> String {
    let header = PositionHeader {
        epoch: std::borrow::Cow::Borrowed(&position.epoch),
        offset: position.offset,
    };
    // A struct of a string and a number always serialises.
    let header = serde_json::to_string(&header).unwrap_or_default();
    let mut out = String::with_capacity(header.len() + payload.len() + 2);
    out.push(POSITION_MARK);
    out.push_str(&header);
    out.push(POSITION_MARK);
    out.push_str(payload);
    out
}

/// A positioned payload whose header cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed position header on a pub/sub payload: {0}")]
pub struct EnvelopeError(String);

/// Splits a pub/sub payload into its position (if it was published with
/// one, see [`encode_positioned`]) and the payload as broadcast. A payload
/// without the mark is returned whole: costs one byte comparison.
pub fn decode_positioned(payload: &str) -> Result<(Option<Position>, &str), EnvelopeError> {
    let Some(rest) = payload.strip_prefix(POSITION_MARK) else {
        return Ok((None, payload));
    };
    let Some((header, body)) = rest.split_once(POSITION_MARK) else {
        return Err(EnvelopeError("no end of header".into()));
    };
    let header: PositionHeader<'_> =
        serde_json::from_str(header).map_err(|e| EnvelopeError(e.to_string()))?;
    Ok((
        Some(Position {
            epoch: header.epoch.into_owned(),
            offset: header.offset,
        }),
        body,
    ))
}
