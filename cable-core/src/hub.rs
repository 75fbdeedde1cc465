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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{FutureExt, Shared};

use crate::json;
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::pubsub::{Ack, PubSub};

const SHARDS: usize = 16;

/// Messages to a connection's session that do not come from its socket.
#[derive(Clone, Debug)]
pub(crate) enum Control {
    /// A `periodically` timer fired for subscription `serial`.
    Timer { serial: u64, name: Arc<str> },
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
    /// The connection's internal channel (`action_cable/<id>`).
    Internal(crate::mailbox::Mailbox),
}

struct Entry {
    /// Subscribers grouped by subscription identifier (empty for internal).
    groups: Groups,
    ack: Shared<Ack>,
}

/// Subscribers of one stream by identifier. Most streams (a user's, a
/// connection's internal channel) have one subscriber with one identifier:
/// that case allocates no maps.
enum Groups {
    One(Arc<str>, Subs),
    Many(HashMap<Arc<str>, Subs>),
}

/// Subscribers of one stream with one identifier, by connection.
enum Subs {
    One(u64, Target),
    Many(HashMap<u64, Target>),
}

impl Subs {
    fn insert(&mut self, conn: u64, target: Target) {
        match self {
            Subs::One(c, t) if *c == conn => *t = target,
            Subs::One(..) => {
                let Subs::One(c, t) = std::mem::replace(self, Subs::Many(HashMap::new())) else {
                    unreachable!("matched One above")
                };
                if let Subs::Many(m) = self {
                    m.insert(c, t);
                    m.insert(conn, target);
                }
            }
            Subs::Many(m) => {
                m.insert(conn, target);
            }
        }
    }

    /// Removes `conn`; true when no subscriber is left.
    fn remove(&mut self, conn: u64) -> bool {
        match self {
            Subs::One(c, _) => *c == conn,
            Subs::Many(m) => {
                m.remove(&conn);
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
            Groups::One(..) => {
                let Groups::One(id, subs) = std::mem::replace(self, Groups::Many(HashMap::new()))
                else {
                    unreachable!("matched One above")
                };
                if let Groups::Many(m) = self {
                    m.insert(id, subs);
                    m.insert(identifier.clone(), Subs::One(conn, target));
                }
            }
            Groups::Many(m) => match m.get_mut(identifier) {
                Some(subs) => subs.insert(conn, target),
                None => {
                    m.insert(identifier.clone(), Subs::One(conn, target));
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
                if let Some(subs) = m.get_mut(identifier) {
                    if subs.remove(conn) {
                        m.remove(identifier);
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
}

impl Hub {
    pub(crate) fn new(pubsub: Arc<dyn PubSub>) -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            pubsub,
            delivered: AtomicU64::new(0),
            broadcasts_received: AtomicU64::new(0),
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
                // A failed subscribe is retried by the next subscriber.
                if matches!(e.ack.peek(), Some(Err(_))) {
                    e.ack = self.pubsub.subscribe(stream).shared();
                }
                e.groups.insert(identifier, conn, target);
                e.ack.clone()
            }
            MapEntry::Vacant(v) => v
                .insert(Entry {
                    groups: Groups::new(identifier, conn, target),
                    ack: self.pubsub.subscribe(stream).shared(),
                })
                .ack
                .clone(),
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

    /// Fans `payload`, published on `stream`, out to local subscribers.
    pub(crate) fn deliver(&self, stream: &str, payload: &str) {
        self.broadcasts_received.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(stream);
        let Some(entry) = shard.get(stream) else {
            return;
        };
        let mut encoded: Option<String> = None;
        let mut undecodable = false;
        let mut sent = 0u64;
        entry.groups.for_each(|identifier, subs| {
            if identifier.is_empty() {
                let Some(ctl) = internal_message(payload) else {
                    tracing::debug!(stream, payload, "ignoring internal message");
                    return;
                };
                subs.for_each(|target| {
                    if let Target::Internal(tx) = target {
                        let _ = tx.send(ctl.clone());
                    }
                });
                return;
            }
            if undecodable {
                return;
            }
            let message = match &encoded {
                Some(m) => m,
                None => match json::reencode(payload) {
                    Ok(m) => encoded.insert(m),
                    Err(e) => {
                        // Rails' stream handler raises on a payload it cannot
                        // decode; nothing reaches the clients.
                        tracing::error!(stream, error = %e, "could not decode broadcast payload; dropped");
                        undecodable = true;
                        return;
                    }
                },
            };
            let frame = Frame::message(identifier, message);
            subs.for_each(|target| {
                if let Target::Frames(outbox) = target {
                    if outbox.push(frame.clone()).is_ok() {
                        sent += 1;
                    }
                }
            });
        });
        self.delivered.fetch_add(sent, Ordering::Relaxed);
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
