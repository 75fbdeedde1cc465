//! Messages received on the subscriber connection and not yet delivered.
//!
//! redis-rs reads the socket on its own task and hands every message over
//! at once, without waiting (its push sender must not block, and its RESP2
//! pub/sub stream is an unbounded channel). If delivery falls behind, say
//! the fan-out is CPU-bound, something has to give. This queue is bounded in
//! bytes ([`crate::RedisConfig::max_backlog_bytes`]): a message that does not
//! fit is dropped, counted ([`crate::RedisPubSub::dropped`]) and logged once
//! per burst. Redis pub/sub itself drops messages for a subscriber that
//! cannot keep up (`client-output-buffer-limit pubsub`) by closing its
//! connection; dropping here instead keeps the connection and every
//! subscription, and loses only the overflow.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::subscriber::State;

/// Counted on top of channel and payload per queued message: the two
/// `String`s and the queue slot.
const OVERHEAD: usize = 64;

/// One message as Redis sent it: the full channel name and the payload.
pub(crate) struct Message {
    pub(crate) channel: String,
    pub(crate) payload: String,
}

impl Message {
    fn size(&self) -> usize {
        self.channel.len() + self.payload.len() + OVERHEAD
    }

    /// A message, if channel and payload are UTF-8 (the core works on text;
    /// Rails would fail to decode such a payload too).
    pub(crate) fn from_bytes(channel: Vec<u8>, payload: Vec<u8>) -> Option<Message> {
        match (String::from_utf8(channel), String::from_utf8(payload)) {
            (Ok(channel), Ok(payload)) => Some(Message { channel, payload }),
            (channel, _) => {
                tracing::warn!(
                    channel = ?channel.as_deref().ok(),
                    "dropped a redis message that is not UTF-8"
                );
                None
            }
        }
    }
}

/// The queue of one subscriber connection. Many producers (redis-rs' reader)
/// never wait; one consumer (the subscriber task) waits in [`Inbox::pop`].
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    notify: Notify,
    state: Arc<State>,
    limit: usize,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Message>,
    bytes: usize,
    /// The connection ended: nothing more will come.
    closed: bool,
    /// Dropped since the last message that fitted (for one log per burst).
    dropping: u64,
}

impl Inbox {
    /// A queue holding at most `limit` bytes (or one message, if a single
    /// message is larger: it has been read already, and refusing it would
    /// make it undeliverable however idle the node).
    pub(crate) fn new(limit: usize, state: Arc<State>) -> Arc<Inbox> {
        Arc::new(Inbox {
            queue: Mutex::default(),
            notify: Notify::new(),
            state,
            limit,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `message`, or drops it if the queue is full. Never waits.
    pub(crate) fn push(&self, message: Message) {
        let size = message.size();
        let mut q = self.lock();
        if q.closed {
            return;
        }
        if !q.items.is_empty() && q.bytes + size > self.limit {
            q.dropping += 1;
            let first = q.dropping == 1;
            drop(q);
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            if first {
                tracing::warn!(
                    limit_bytes = self.limit,
                    "redis subscriber backlog is full: dropping messages until delivery catches up"
                );
            }
            return;
        }
        let recovered = std::mem::take(&mut q.dropping);
        q.bytes += size;
        q.items.push_back(message);
        drop(q);
        self.state.backlog.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
        if recovered > 0 {
            tracing::warn!(
                dropped = recovered,
                "redis subscriber backlog has room again; messages were dropped"
            );
        }
    }

    /// No more messages will come; [`Inbox::pop`] returns None once the
    /// queue is empty.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    /// The next message, or None when the connection has ended and every
    /// message is taken. Cancel-safe: a message leaves the queue only in the
    /// call that returns it.
    pub(crate) async fn pop(&self) -> Option<Message> {
        loop {
            {
                let mut q = self.lock();
                if let Some(m) = self.take(&mut q) {
                    return Some(m);
                }
                if q.closed {
                    return None;
                }
            }
            // A push between the unlock and here leaves a permit: no wake-up
            // is lost.
            self.notify.notified().await;
        }
    }

    /// The next message if there is one, without waiting.
    pub(crate) fn try_pop(&self) -> Option<Message> {
        let mut q = self.lock();
        self.take(&mut q)
    }

    fn take(&self, q: &mut Queue) -> Option<Message> {
        let m = q.items.pop_front()?;
        q.bytes -= m.size();
        self.state.backlog.fetch_sub(1, Ordering::Relaxed);
        Some(m)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let left = self.lock().items.len() as u64;
        self.state.backlog.fetch_sub(left, Ordering::Relaxed);
    }
}

/// What redis-rs pushes into on a RESP3 connection: messages into the
/// inbox, the end of the connection as [`Inbox::close`]; everything else
/// (subscribe confirmations come as replies) is of no use here.
pub(crate) struct PushSender(pub(crate) Arc<Inbox>);

impl AsyncPushSender for PushSender {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match info.kind {
            PushKind::Message => {
                let mut data = info.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if let Some(m) = Message::from_bytes(channel, payload) {
                        self.0.push(m);
                    }
                }
            }
            PushKind::Disconnection => self.0.close(),
            _ => {}
        }
        Ok(())
    }
}

impl Drop for PushSender {
    /// redis-rs dropped its end: the connection is gone even if no
    /// disconnection was pushed.
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &str) -> Message {
        Message {
            channel: "c".into(),
            payload: payload.into(),
        }
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_counted() {
        let state = Arc::new(State::default());
        let one = msg("x").size();
        let inbox = Inbox::new(one * 3, state.clone());
        for _ in 0..10 {
            inbox.push(msg("x"));
        }
        assert_eq!(state.backlog.load(Ordering::Relaxed), 3);
        assert_eq!(state.dropped.load(Ordering::Relaxed), 7);
        assert!(inbox.pop().await.is_some());
        inbox.push(msg("y"));
        assert_eq!(state.backlog.load(Ordering::Relaxed), 3);
        // A message larger than the bound still gets into an empty queue.
        while inbox.try_pop().is_some() {}
        inbox.push(msg(&"z".repeat(one * 10)));
        assert_eq!(state.backlog.load(Ordering::Relaxed), 1);
        inbox.push(msg("x"));
        assert_eq!(state.dropped.load(Ordering::Relaxed), 8);
        inbox.close();
        assert!(inbox.pop().await.is_some(), "queued before the close");
        assert!(inbox.pop().await.is_none());
        inbox.push(msg("late"));
        assert!(inbox.try_pop().is_none(), "nothing after the close");
    }

    #[tokio::test]
    async fn dropping_the_inbox_takes_its_messages_off_the_gauge() {
        let state = Arc::new(State::default());
        let inbox = Inbox::new(1 << 20, state.clone());
        let sender = PushSender(inbox.clone());
        inbox.push(msg("a"));
        inbox.push(msg("b"));
        assert_eq!(state.backlog.load(Ordering::Relaxed), 2);
        drop(sender);
        let waiter = tokio::spawn({
            let inbox = inbox.clone();
            async move { (inbox.pop().await.is_some(), inbox.pop().await.is_some()) }
        });
        assert_eq!(waiter.await.unwrap(), (true, true));
        assert!(inbox.pop().await.is_none(), "the sender's drop closed it");
        let other = Inbox::new(1 << 20, state.clone());
        other.push(msg("c"));
        other.push(msg("d"));
        assert_eq!(state.backlog.load(Ordering::Relaxed), 2);
        drop(other);
        assert_eq!(state.backlog.load(Ordering::Relaxed), 0);
    }
}
