//! The stream registry of one process: which local subscriptions listen to
//! which streams, and the fan-out of incoming broadcasts to them.
//!
//! Fan-out encodes once: the payload is re-encoded once per broadcast (Rails
//! decodes and re-encodes it) and the data frame is built once per distinct
//! subscription identifier; every subscriber with that identifier gets a clone
//! of the same bytes. Delivery pushes into each connection's [`Outbox`] and
//! never waits on a socket.

use std::collections::hash_map::{DefaultHasher, Entry as MapEntry};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{FutureExt, Shared};

use crate::json;
use crate::logging::Snip;
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::pubsub::{decode_with_meta, Ack, PubSub};

const SHARDS: usize = 16;

/// Messages to a connection's session that do not come from its socket.
#[derive(Clone, Debug)]
pub(crate) enum Control {
    /// A `periodically` timer fired for subscription `serial`; the session
    /// clears `pending` when it takes the tick.
    Timer {
        serial: u64,
        name: Arc<str>,
        pending: Arc<std::sync::atomic::AtomicBool>,
    },
    /// A remote disconnect arrived on the connection's internal channel.
    RemoteDisconnect { reconnect: bool },
    /// The server is shutting down.
    Shutdown,
}

/// Where a subscriber's messages go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A channel subscription: data frames into the connection's outbox.
    Frames(Arc<Outbox>),
    /// A channel subscription whose live frames wait while the history a
    /// client asked for is read (see [`Hold`]).
    Held(Arc<Hold>),
    /// The connection's internal channel (`action_cable/<id>`).
    Internal(crate::mailbox::Mailbox),
}

/// Live frames held back from one subscription until its history replay
/// has been sent, so that a broadcast landing while the history is read
/// goes out once and after the older replayed ones (a resumed session or a
/// subscribe with history). Bounded: past [`HOLD_MAX`] frames, or
/// [`HOLD_TIMEOUT`] after it began, it lets everything through.
pub(crate) struct Hold {
    outbox: Arc<Outbox>,
    /// `Some` while holding: the frames, with their stream and offset.
    held: Mutex<Option<Vec<HeldFrame>>>,
    /// Cleared once the held frames are out: the subscription keeps its
    /// `Hold` for life, and its later deliveries skip the lock.
    holding: AtomicBool,
}

/// A frame held back, with its stream and offset (none without history).
type HeldFrame = (Arc<str>, Option<u64>, Frame);

/// Most frames one subscription holds back.
pub(crate) const HOLD_MAX: usize = 1024;
/// Longest a subscription holds frames back: a resumed client asks for its
/// history one round trip after the welcome; one that never asks gets its
/// live frames this late (and one slower than this may get some twice).
pub(crate) const HOLD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold").finish_non_exhaustive()
    }
}

impl Hold {
    /// Starts holding frames for `outbox`; lets them through by itself after
    /// [`HOLD_TIMEOUT`].
    pub(crate) fn start(outbox: Arc<Outbox>) -> Arc<Hold> {
        let hold = Arc::new(Hold {
            outbox,
            held: Mutex::new(Some(Vec::new())),
            holding: AtomicBool::new(true),
        });
        let weak = Arc::downgrade(&hold);
        tokio::spawn(async move {
            tokio::time::sleep(HOLD_TIMEOUT).await;
            if let Some(hold) = weak.upgrade() {
                hold.release(&[]);
            }
        });
        hold
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<HeldFrame>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `frame` (of `stream`, at `offset`) or, when no longer holding,
    /// pushes it; false when the outbox refused it.
    fn push(&self, stream: &str, offset: Option<u64>, frame: Frame) -> bool {
        // Cleared only after the held frames were pushed (under the lock),
        // so a frame that sees it cleared comes after them.
        if !self.holding.load(Ordering::Acquire) {
            return self.outbox.push(frame).is_ok();
        }
        let mut held = self.lock();
        match held.as_mut() {
            Some(frames) if frames.len() < HOLD_MAX => {
                frames.push((stream.into(), offset, frame));
                true
            }
            Some(_) => {
                tracing::warn!(
                    "over {HOLD_MAX} live frames held back during a history replay; sending them"
                );
                self.flush(&mut held, &[]);
                self.outbox.push(frame).is_ok()
            }
            None => self.outbox.push(frame).is_ok(),
        }
    }

    /// Stops holding: pushes the held frames, in order, except those the
    /// replay already sent (offset at or below `replayed`'s for its stream).
    pub(crate) fn release(&self, replayed: &[(String, u64)]) {
        let mut held = self.lock();
        self.flush(&mut held, replayed);
    }

    fn flush(&self, held: &mut Option<Vec<HeldFrame>>, replayed: &[(String, u64)]) {
        // Pushed under the lock: a frame delivered meanwhile waits, so
        // nothing overtakes the held ones.
        for (stream, offset, frame) in held.take().unwrap_or_default() {
            let sent = offset.is_some_and(|o| {
                replayed
                    .iter()
                    .any(|(s, last)| **s == *stream && o <= *last)
            });
            if !sent {
                let _ = self.outbox.push(frame);
            }
        }
        self.holding.store(false, Ordering::Release);
    }
}

struct Entry {
    /// Subscribers grouped by subscription identifier (empty for internal).
    groups: Groups,
    /// The adapter's acknowledgement while it is pending (or failed); None
    /// once it succeeded, so a stream does not keep the shared future (a
    /// few hundred bytes) for its whole life.
    ack: Option<Shared<Ack>>,
}

/// The adapter's subscription to a new stream: None when it succeeded at
/// once (the memory adapter), else the shared acknowledgement.
fn subscribe_ack(pubsub: &dyn PubSub, stream: &str) -> Option<Shared<Ack>> {
    let mut ack = pubsub.subscribe(stream);
    match (&mut ack).now_or_never() {
        Some(Ok(())) => None,
        Some(Err(e)) => Some((Box::pin(async move { Err(e) }) as Ack).shared()),
        None => Some(ack.shared()),
    }
}

/// An acknowledgement that has succeeded.
fn done_ack() -> Shared<Ack> {
    (Box::pin(async { Ok(()) }) as Ack).shared()
}

/// Forgets an acknowledgement that has succeeded.
fn settle(ack: &mut Option<Shared<Ack>>) {
    if matches!(ack.as_ref().and_then(|a| a.peek()), Some(Ok(()))) {
        *ack = None;
    }
}

/// Subscribers of one stream by identifier. Most streams (a user's, a
/// connection's internal channel) have one subscriber with one identifier:
/// that case allocates no maps. The maps sit behind `Arc`s so that a
/// delivery takes a snapshot (a reference count) under the shard lock and
/// fans out after releasing it; a change while a snapshot is out copies the
/// map (`Arc::make_mut`), which costs far less than the fan-out it spares
/// the other streams of the shard from waiting on.
#[derive(Clone)]
enum Groups {
    One(Arc<str>, Subs),
    Many(Arc<HashMap<Arc<str>, Subs>>),
}

/// Subscribers of one stream with one identifier, by connection.
#[derive(Clone)]
enum Subs {
    One(u64, Target),
    Many(Arc<HashMap<u64, Target>>),
}

impl Subs {
    fn insert(&mut self, conn: u64, target: Target) {
        match self {
            Subs::One(c, t) if *c == conn => *t = target,
            Subs::One(c, t) => {
                let mut m = HashMap::with_capacity(2);
                m.insert(*c, t.clone());
                m.insert(conn, target);
                *self = Subs::Many(Arc::new(m));
            }
            Subs::Many(m) => {
                Arc::make_mut(m).insert(conn, target);
            }
        }
    }

    /// Removes `conn`; true when no subscriber is left.
    fn remove(&mut self, conn: u64) -> bool {
        match self {
            Subs::One(c, _) => *c == conn,
            Subs::Many(m) => {
                if m.contains_key(&conn) {
                    Arc::make_mut(m).remove(&conn);
                }
                m.is_empty()
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Target)) {
        match self {
            Subs::One(_, t) => f(t),
            Subs::Many(m) => m.values().for_each(f),
        }
    }
}

impl Groups {
    fn new(identifier: &Arc<str>, conn: u64, target: Target) -> Self {
        Groups::One(identifier.clone(), Subs::One(conn, target))
    }

    fn insert(&mut self, identifier: &Arc<str>, conn: u64, target: Target) {
        match self {
            Groups::One(id, subs) if **id == **identifier => subs.insert(conn, target),
            Groups::One(id, subs) => {
                let mut m = HashMap::with_capacity(2);
                m.insert(id.clone(), subs.clone());
                m.insert(identifier.clone(), Subs::One(conn, target));
                *self = Groups::Many(Arc::new(m));
            }
            Groups::Many(m) => match Arc::make_mut(m).get_mut(identifier) {
                Some(subs) => subs.insert(conn, target),
                None => {
                    Arc::make_mut(m).insert(identifier.clone(), Subs::One(conn, target));
                }
            },
        }
    }

    /// Removes `conn`'s subscription with `identifier`; true when the stream
    /// has no subscriber left.
    fn remove(&mut self, identifier: &str, conn: u64) -> bool {
        match self {
            Groups::One(id, subs) => **id == *identifier && subs.remove(conn),
            Groups::Many(m) => {
                if m.contains_key(identifier) {
                    let m = Arc::make_mut(m);
                    if let Some(subs) = m.get_mut(identifier) {
                        if subs.remove(conn) {
                            m.remove(identifier);
                        }
                    }
                }
                m.is_empty()
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<str>, &Subs)) {
        match self {
            Groups::One(id, subs) => f(id, subs),
            Groups::Many(m) => m.iter().for_each(|(id, subs)| f(id, subs)),
        }
    }
}

pub(crate) struct Hub {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    pub(crate) pubsub: Arc<dyn PubSub>,
    pub(crate) delivered: AtomicU64,
    pub(crate) broadcasts_received: AtomicU64,
    /// Largest message a client may be sent (`max_outbound_message_bytes`).
    max_message: usize,
    pub(crate) oversized_dropped: AtomicU64,
}

impl Hub {
    pub(crate) fn new(pubsub: Arc<dyn PubSub>, max_message: usize) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pubsub,
            delivered: AtomicU64::new(0),
            broadcasts_received: AtomicU64::new(0),
            max_message,
            oversized_dropped: AtomicU64::new(0),
        }
    }

    fn shard(&self, stream: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let mut h = DefaultHasher::new();
        stream.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber. Returns the adapter acknowledgement for the stream
    /// (already resolved if the stream was subscribed before).
    pub(crate) fn add(
        &self,
        stream: &str,
        identifier: &Arc<str>,
        conn: u64,
        target: Target,
    ) -> Shared<Ack> {
        let mut shard = self.shard(stream);
        match shard.entry(stream.to_owned()) {
            MapEntry::Occupied(o) => {
                let e = o.into_mut();
                settle(&mut e.ack);
                // A failed subscribe is retried by the next subscriber.
                if matches!(e.ack.as_ref().and_then(|a| a.peek()), Some(Err(_))) {
                    e.ack = subscribe_ack(&*self.pubsub, stream);
                }
                e.groups.insert(identifier, conn, target);
                e.ack.clone().unwrap_or_else(done_ack)
            }
            MapEntry::Vacant(v) => v
                .insert(Entry {
                    groups: Groups::new(identifier, conn, target),
                    ack: subscribe_ack(&*self.pubsub, stream),
                })
                .ack
                .clone()
                .unwrap_or_else(done_ack),
        }
    }

    /// Removes a subscriber; unsubscribes the adapter when it was the last.
    pub(crate) fn remove(&self, stream: &str, identifier: &str, conn: u64) {
        let mut shard = self.shard(stream);
        let Some(entry) = shard.get_mut(stream) else {
            return;
        };
        if entry.groups.remove(identifier, conn) {
            shard.remove(stream);
            // Queued now, under the shard lock, so it cannot overtake a later
            // subscribe of the same stream.
            let ack = self.pubsub.unsubscribe(stream);
            drop(shard);
            let stream = stream.to_owned();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::warn!(stream = %stream, error = %e, "unsubscribe failed");
                    }
                });
            }
        }
    }

    /// Fans `payload`, published on `stream`, out to local subscribers. The
    /// shard lock is held only to take a snapshot of the subscribers.
    pub(crate) fn deliver(&self, stream: &str, payload: &str) {
        self.broadcasts_received.fetch_add(1, Ordering::Relaxed);
        let Some(groups) = self.shard(stream).get_mut(stream).map(|e| {
            settle(&mut e.ack);
            e.groups.clone()
        }) else {
            return;
        };
        // A broadcast of a stream with history carries its position; a
        // whisper or a `to_others` broadcast the session to skip.
        let (meta, payload) = match decode_with_meta(payload) {
            Ok(split) => split,
            Err(e) => {
                tracing::error!(stream, error = %e, payload = %Snip(payload), "could not read a broadcast's envelope; dropped");
                return;
            }
        };
        let position = meta.position;
        let excluded = |outbox: &Outbox| {
            meta.exclude_socket.is_some() && outbox.socket_id() == meta.exclude_socket.as_deref()
        };
        let mut encoded: Option<String> = None;
        let mut dropped = false;
        let mut sent = 0u64;
        groups.for_each(|identifier, subs| {
            if identifier.is_empty() {
                let Some(ctl) = internal_message(payload) else {
                    tracing::debug!(stream, payload = %Snip(payload), "ignoring internal message");
                    return;
                };
                subs.for_each(|target| {
                    if let Target::Internal(tx) = target {
                        let _ = tx.send(ctl.clone());
                    }
                });
                return;
            }
            if dropped {
                return;
            }
            let message = match &encoded {
                Some(m) => m,
                None => match self.encode(stream, payload) {
                    Some(m) => encoded.insert(m),
                    None => {
                        dropped = true;
                        return;
                    }
                },
            };
            let frame = match &position {
                _ if meta.presence => Frame::presence(identifier, message),
                Some(p) => Frame::message_at(identifier, message, stream, &p.epoch, p.offset),
                None => Frame::message(identifier, message),
            };
            subs.for_each(|target| {
                let pushed = match target {
                    Target::Frames(outbox) if excluded(outbox) => false,
                    Target::Held(hold) if excluded(&hold.outbox) => false,
                    Target::Frames(outbox) => outbox.push(frame.clone()).is_ok(),
                    Target::Held(hold) => {
                        hold.push(stream, position.as_ref().map(|p| p.offset), frame.clone())
                    }
                    Target::Internal(_) => false,
                };
                if pushed {
                    sent += 1;
                }
            });
        });
        self.delivered.fetch_add(sent, Ordering::Relaxed);
    }

    /// Re-encodes a broadcast payload as Rails does; None (logged) when it
    /// cannot be decoded or is too large for any client.
    fn encode(&self, stream: &str, payload: &str) -> Option<String> {
        let too_large = |size: usize| {
            self.oversized_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream,
                size,
                limit = self.max_message,
                "broadcast on {stream:?} of {size} bytes is over the limit of {} bytes a client may be sent (max_outbound_message_bytes); dropped",
                self.max_message
            );
        };
        if payload.len() > self.max_message {
            too_large(payload.len());
            return None;
        }
        match json::reencode(payload) {
            // Escaping can make the text longer than what was published.
            Ok(m) if m.len() > self.max_message => {
                too_large(m.len());
                None
            }
            Ok(m) => Some(m),
            Err(e) => {
                // Rails' stream handler raises on a payload it cannot decode;
                // nothing reaches the clients.
                tracing::error!(stream, error = %e, payload = %Snip(payload), "could not decode broadcast payload; dropped");
                None
            }
        }
    }

    /// The frame of a history entry of `stream` for subscription
    /// `identifier`, re-encoded and size-checked as a live broadcast; `None`
    /// (logged) when it cannot be sent.
    pub(crate) fn history_frame(
        &self,
        stream: &str,
        identifier: &str,
        epoch: &str,
        offset: u64,
        payload: &str,
    ) -> Option<Frame> {
        let message = self.encode(stream, payload)?;
        Some(Frame::message_at(
            identifier, &message, stream, epoch, offset,
        ))
    }

    /// Whether `stream` has a local subscriber.
    pub(crate) fn has_stream(&self, stream: &str) -> bool {
        self.shard(stream).contains_key(stream)
    }

    /// Number of streams with at least one local subscriber.
    pub(crate) fn stream_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// Decodes a message on a connection's internal channel. Rails handles only
/// `{"type":"disconnect"}`; `reconnect` defaults to true when absent (6.1/7.0
/// publishers do not send it).
fn internal_message(payload: &str) -> Option<Control> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    if v.get("type")?.as_str()? != "disconnect" {
        return None;
    }
    let reconnect = v.get("reconnect").and_then(|r| r.as_bool()).unwrap_or(true);
    Some(Control::RemoteDisconnect { reconnect })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_grow_from_one_subscriber_and_shrink_to_none() {
        let (tx, _rx) = crate::mailbox::mailbox();
        let t = || Target::Internal(tx.clone());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let mut g = Groups::new(&a, 1, t());
        g.insert(&a, 2, t());
        g.insert(&b, 3, t());
        g.insert(&b, 3, t());
        let mut n = 0;
        g.for_each(|_, subs| subs.for_each(|_| n += 1));
        assert_eq!(n, 3);
        assert!(!g.remove("a", 1));
        assert!(!g.remove("x", 2));
        assert!(!g.remove("b", 3));
        assert!(g.remove("a", 2));

        let mut one = Groups::new(&a, 1, t());
        assert!(!one.remove("a", 9));
        assert!(!one.remove("b", 1));
        assert!(one.remove("a", 1));
    }

    /// A fan-out in progress (here stuck on one subscriber's queue) must not
    /// hold its shard: subscribes and unsubscribes on other streams of the
    /// same shard go through.
    #[test]
    fn fan_out_does_not_hold_the_shard_lock() {
        let hub = Arc::new(Hub::new(
            Arc::new(crate::pubsub::MemoryPubSub::new(
                crate::pubsub::Delivery::detached(),
            )),
            1 << 20,
        ));
        let id: Arc<str> = "i".into();
        let stuck = Outbox::new(1 << 20);
        for conn in 0..10_000u64 {
            let target = if conn == 5_000 {
                stuck.clone()
            } else {
                Outbox::new(1 << 20)
            };
            drop(hub.add("big", &id, conn, Target::Frames(target)));
        }
        // Another stream in the same shard as "big".
        let shard_of = |s: &str| {
            let mut h = DefaultHasher::new();
            s.hash(&mut h);
            (h.finish() as usize) % SHARDS
        };
        let other = (0..)
            .map(|n| format!("other{n}"))
            .find(|s| shard_of(s) == shard_of("big"))
            .unwrap();
        let held = stuck.hold_lock();
        let h = hub.clone();
        let fan = std::thread::spawn(move || h.deliver("big", r#"{"n":1}"#));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        let h = hub.clone();
        let o = other.clone();
        std::thread::spawn(move || {
            drop(h.add(&o, &"j".into(), 1, Target::Frames(Outbox::new(64))));
            h.remove(&o, "j", 1);
            drop(h.add(&o, &"j".into(), 2, Target::Frames(Outbox::new(64))));
            let _ = tx.send(());
        });
        let went_through = rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok();
        drop(held);
        fan.join().unwrap();
        assert!(
            went_through,
            "a subscribe waited for another stream's fan-out"
        );
        assert_eq!(hub.delivered.load(Ordering::Relaxed), 10_000);
    }

    #[test]
    fn internal_messages_follow_rails() {
        assert!(matches!(
            internal_message(r#"{"type":"disconnect"}"#),
            Some(Control::RemoteDisconnect { reconnect: true })
        ));
        assert!(matches!(
            internal_message(r#"{"type":"disconnect","reconnect":false}"#),
            Some(Control::RemoteDisconnect { reconnect: false })
        ));
        assert!(internal_message(r#"{"type":"other"}"#).is_none());
        assert!(internal_message("nope").is_none());
    }
}
