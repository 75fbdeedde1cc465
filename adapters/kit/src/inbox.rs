//! Messages received on a subscriber connection and not yet delivered, for
//! drivers that hand messages over without waiting (redis-rs' push sender
//! must not block).
//!
//! If delivery falls behind, say the fan-out is CPU-bound, something has to
//! give. This queue is bounded in bytes: a message that does not fit is
//! dropped, counted ([`PubSub::dropped`](cable_core::pubsub::PubSub::dropped))
//! and logged once per burst. Dropping here keeps the connection and every
//! subscription, and loses only the overflow. A driver that can leave
//! messages with the backend (read one, deliver it, read the next) should use
//! [`Incoming::deliver`](crate::Incoming::deliver) instead.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::state::State;

/// Counted on top of channel and payload per queued message: the two
/// `String`s and the queue slot.
const OVERHEAD: usize = 64;

/// One message as the backend sent it: the backend channel and the payload.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) channel: String,
    pub(crate) payload: String,
}

impl Message {
    fn size(&self) -> usize {
        self.channel.len() + self.payload.len() + OVERHEAD
    }
}

/// The queue of one subscriber connection, made by
/// [`Incoming::queue`](crate::Incoming::queue). Producers (the driver) never
/// wait; the kit's delivery task is the one consumer. Closing it
/// ([`Inbox::close`]) tells the kit the connection is gone.
pub struct Inbox {
    queue: Mutex<Queue>,
    notify: Notify,
    state: Arc<State>,
    limit: usize,
    name: &'static str,
    /// Called once when the inbox closes: the connection is lost.
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("Inbox")
            .field("messages", &q.items.len())
            .field("bytes", &q.bytes)
            .field("limit", &self.limit)
            .field("closed", &q.closed)
            .finish()
    }
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
    pub(crate) fn new(
        limit: usize,
        state: Arc<State>,
        name: &'static str,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> Arc<Inbox> {
        Arc::new(Inbox {
            queue: Mutex::default(),
            notify: Notify::new(),
            state,
            limit,
            name,
            on_close: Mutex::new(Some(on_close)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message received on backend `channel`, or drops it if the
    /// queue is full. Never waits.
    pub fn push(&self, channel: String, payload: String) {
        let message = Message { channel, payload };
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
                    adapter = self.name,
                    limit_bytes = self.limit,
                    "subscriber backlog is full: dropping messages until delivery catches up"
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
                adapter = self.name,
                dropped = recovered,
                "subscriber backlog has room again; messages were dropped"
            );
        }
    }

    /// The connection ended: nothing more will be queued, what is queued is
    /// still delivered, and the kit reconnects. Idempotent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
        let hook = self
            .on_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(hook) = hook {
            hook();
        }
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

    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn inbox(limit: usize, state: &Arc<State>) -> Arc<Inbox> {
        Inbox::new(limit, state.clone(), "test", Box::new(|| {}))
    }

    fn size(payload: &str) -> usize {
        Message {
            channel: "c".into(),
            payload: payload.into(),
        }
        .size()
    }

    #[tokio::test]
    async fn bounded_in_bytes_and_counted() {
        let state = Arc::new(State::default());
        let one = size("x");
        let inbox = inbox(one * 3, &state);
        for _ in 0..10 {
            inbox.push("c".into(), "x".into());
        }
        assert_eq!(state.backlog(), 3);
        assert_eq!(state.dropped(), 7);
        assert!(inbox.pop().await.is_some());
        inbox.push("c".into(), "y".into());
        assert_eq!(state.backlog(), 3);
        // A message larger than the bound still gets into an empty queue.
        while inbox.try_pop().is_some() {}
        inbox.push("c".into(), "z".repeat(one * 10));
        assert_eq!(state.backlog(), 1);
        inbox.push("c".into(), "x".into());
        assert_eq!(state.dropped(), 8);
        inbox.close();
        assert!(inbox.pop().await.is_some(), "queued before the close");
        assert!(inbox.pop().await.is_none());
        inbox.push("c".into(), "late".into());
        assert!(inbox.try_pop().is_none(), "nothing after the close");
    }

    #[tokio::test]
    async fn closing_runs_the_hook_once_and_dropping_clears_the_gauge() {
        let state = Arc::new(State::default());
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let inbox = Inbox::new(
            1 << 20,
            state.clone(),
            "test",
            Box::new(move || assert!(!flag.swap(true, Ordering::SeqCst), "hook ran twice")),
        );
        inbox.push("c".into(), "a".into());
        inbox.push("c".into(), "b".into());
        inbox.close();
        inbox.close();
        assert!(fired.load(Ordering::SeqCst));
        assert_eq!(state.backlog(), 2);
        drop(inbox);
        assert_eq!(state.backlog(), 0);
    }
}
