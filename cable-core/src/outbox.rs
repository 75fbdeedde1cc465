//! A connection's outbound queue: bounded in bytes, never awaited by producers.
//!
//! Everything a connection sends (welcome, pings, confirmations, transmits and
//! broadcasts) goes through its `Outbox`, so frames leave in the order they
//! were produced. Producers (the stream hub, the heartbeat, the session) push
//! without awaiting the socket; a transport's writer task drains the queue.
//! When a client stops reading and the queue grows past its byte capacity, the
//! queue is dropped and replaced by a `too_slow` disconnect (AnyCable's policy):
//! memory per connection stays bounded and nobody else waits for that client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::protocol::{DisconnectReason, Frame};

/// WebSocket close code for a normal closure (what Rails always sends).
pub const CLOSE_NORMAL: u16 = 1000;
/// WebSocket close code for a message larger than the server accepts.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// What a transport writes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A text frame.
    Text(Frame),
    /// A close frame; nothing follows it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason (short, ASCII).
        reason: &'static str,
    },
}

/// Why a push was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The outbox is closing or closed; the frame was dropped.
    #[error("connection is closing")]
    Closed,
    /// The frame did not fit: the client was disconnected as too slow.
    #[error("client too slow: outbound queue overflowed")]
    Overflow,
}

/// A FIFO whose first item is held inline: a connection mostly has one
/// frame queued at a time, which then costs no allocation, and an idle one
/// keeps no slots.
#[derive(Default)]
struct Queue {
    head: Option<Outgoing>,
    rest: VecDeque<Outgoing>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    fn push_back(&mut self, item: Outgoing) {
        if self.head.is_none() {
            self.head = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<Outgoing> {
        let item = self.head.take();
        self.head = self.rest.pop_front();
        item
    }

    fn clear(&mut self) {
        self.head = None;
        self.rest.clear();
    }

    /// Gives back a burst's slots once drained.
    fn shrink_if_empty(&mut self) {
        if self.head.is_none() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

#[derive(Default)]
struct State {
    queue: Queue,
    bytes: usize,
    /// No more pushes are accepted (a close is queued or the writer failed).
    closing: bool,
    /// The close frame has been handed to the writer.
    finished: bool,
    /// The ready hook has fired and nothing has emptied the queue since
    /// (only with [`Outbox::set_ready_hook`]).
    signalled: bool,
}

/// Told when an outbox has something to write (see [`Outbox::set_ready_hook`]).
pub trait Ready: Send + Sync {
    /// The outbox went from nothing to write to something to write. Called
    /// without the outbox's lock held; must not block.
    fn ready(&self);
}

/// What [`Outbox::try_pop_batch`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Popped {
    /// Items were moved into the buffer.
    Items,
    /// Nothing queued; the ready hook fires on the next push.
    Empty,
    /// The close frame was taken earlier, or the outbox was aborted: nothing
    /// more will come.
    Finished,
}

/// A bounded, byte-counted outbound queue for one connection.
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    /// No more pushes are accepted (read without the lock).
    closed: std::sync::atomic::AtomicBool,
    /// Wakes [`Outbox::closed`]'s waiters.
    closed_notify: Notify,
    /// The session's task, woken when the outbox closes ([`Outbox::poll_closed`]).
    closed_waker: futures_util::task::AtomicWaker,
    capacity: usize,
    overflows: Option<Arc<AtomicU64>>,
    /// Frames handed to the writer, for the server's stats.
    sent: Option<Arc<AtomicU64>>,
    /// The connection's session id, by which a broadcast may exclude it
    /// (a whisper's sender, `exclude_socket`): the welcome's `sid`, or one
    /// made when a session without one first needs it.
    socket_id: std::sync::OnceLock<Box<str>>,
    /// A transport that writes from its own task rather than awaiting
    /// [`Outbox::pop_batch`] (the WebSocket transport's flusher).
    ready: std::sync::OnceLock<Box<dyn Ready>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// An outbox that holds at most `capacity` bytes of queued text.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_counters(capacity, None, None)
    }

    pub(crate) fn with_counters(
        capacity: usize,
        overflows: Option<Arc<AtomicU64>>,
        sent: Option<Arc<AtomicU64>>,
    ) -> Arc<Self> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
            closed_notify: Notify::new(),
            closed_waker: futures_util::task::AtomicWaker::new(),
            capacity,
            overflows,
            sent,
            socket_id: std::sync::OnceLock::new(),
            ready: std::sync::OnceLock::new(),
        })
    }

    /// Makes `hook` the way this outbox announces work, instead of waking
    /// [`Outbox::pop_batch`]: it is called once when the queue goes from
    /// empty to not empty (or the outbox closes or aborts), and not again
    /// until [`Outbox::try_pop_batch`] has found the queue empty. The
    /// transport then drains with `try_pop_batch`, never `pop_batch`. Only
    /// the first hook set counts; false if one was set before.
    pub fn set_ready_hook(&self, hook: Box<dyn Ready>) -> bool {
        let set = self.ready.set(hook).is_ok();
        // Anything queued before the hook (the welcome) must be announced.
        let st = self.lock();
        if !st.queue.is_empty() || st.finished {
            self.wake(st);
        }
        set
    }

    /// Tells the writer there is work, by the hook or the notify; consumes
    /// the guard so the hook runs unlocked.
    fn wake(&self, mut st: MutexGuard<'_, State>) {
        match self.ready.get() {
            Some(hook) => {
                let fire = !st.signalled;
                st.signalled = true;
                drop(st);
                if fire {
                    hook.ready();
                }
            }
            None => {
                drop(st);
                self.notify.notify_one();
            }
        }
    }

    /// The session id broadcasts may exclude this connection by, if it has one.
    pub(crate) fn socket_id(&self) -> Option<&str> {
        self.socket_id.get().map(|s| &**s)
    }

    /// The session id, set to `sid` (or a random one) unless it is set.
    pub(crate) fn socket_id_or(&self, sid: impl FnOnce() -> String) -> &str {
        self.socket_id.get_or_init(|| sid().into_boxed_str())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent
        // in a way that matters more than losing the connection; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the queue's lock (tests: a push blocks until it is released).
    #[cfg(test)]
    pub(crate) fn hold_lock(&self) -> impl Drop + '_ {
        self.lock()
    }

    /// Queues a text frame. Never waits.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closing {
            return Err(PushError::Closed);
        }
        if st.bytes + frame.len() > self.capacity && !st.queue.is_empty() {
            st.queue.clear();
            let notice = Frame::disconnect(Some(DisconnectReason::TooSlow), true);
            st.bytes = notice.len();
            st.queue.push_back(Outgoing::Text(notice));
            st.queue.push_back(Outgoing::Close {
                code: CLOSE_NORMAL,
                reason: "",
            });
            st.closing = true;
            if let Some(c) = &self.overflows {
                c.fetch_add(1, Ordering::Relaxed);
            }
            self.cancel();
            self.wake(st);
            return Err(PushError::Overflow);
        }
        st.bytes += frame.len();
        st.queue.push_back(Outgoing::Text(frame));
        self.wake(st);
        Ok(())
    }

    /// Queues an optional last frame and a close frame; later pushes are refused.
    /// Returns false if the outbox was already closing.
    pub fn close(&self, last: Option<Frame>, code: u16, reason: &'static str) -> bool {
        let mut st = self.lock();
        if st.closing {
            return false;
        }
        st.closing = true;
        if let Some(f) = last {
            st.bytes += f.len();
            st.queue.push_back(Outgoing::Text(f));
        }
        st.queue.push_back(Outgoing::Close { code, reason });
        self.cancel();
        self.wake(st);
        true
    }

    /// The transport failed: drop whatever is queued and stop.
    pub fn abort(&self) {
        let mut st = self.lock();
        st.closing = true;
        st.finished = true;
        st.queue.clear();
        st.bytes = 0;
        self.cancel();
        self.wake(st);
    }

    fn cancel(&self) {
        self.closed.store(true, Ordering::Release);
        self.closed_notify.notify_waiters();
        self.closed_waker.wake();
    }

    /// Ready once the outbox stops accepting frames; the future-free form
    /// of [`Outbox::closed`] for one task's poll loop (it keeps one waker).
    pub fn poll_closed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.closed.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        self.closed_waker.register(cx.waker());
        if self.closed.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Whether the outbox accepts no more frames.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the outbox stops accepting frames.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Moves up to `max` queued items into `buf`, waiting while the queue is
    /// empty. Returns false once the close frame has been taken (or the outbox
    /// was aborted): the writer should stop. Meant for a single consumer.
    pub async fn pop_batch(&self, buf: &mut Vec<Outgoing>, max: usize) -> bool {
        loop {
            match self.try_pop_batch(buf, max) {
                Popped::Items => return true,
                Popped::Finished => return false,
                Popped::Empty => self.notify.notified().await,
            }
        }
    }

    /// Moves up to `max` queued items into `buf` without waiting. A close
    /// frame is always the last item moved.
    pub fn try_pop_batch(&self, buf: &mut Vec<Outgoing>, max: usize) -> Popped {
        let mut st = self.lock();
        if st.finished && st.queue.is_empty() {
            return Popped::Finished;
        }
        if st.queue.is_empty() {
            st.signalled = false;
            return Popped::Empty;
        }
        let before = buf.len();
        while buf.len() < max {
            match st.queue.pop_front() {
                Some(Outgoing::Text(f)) => {
                    st.bytes -= f.len();
                    buf.push(Outgoing::Text(f));
                }
                Some(close @ Outgoing::Close { .. }) => {
                    st.finished = true;
                    st.queue.clear();
                    st.bytes = 0;
                    buf.push(close);
                    break;
                }
                None => break,
            }
        }
        st.queue.shrink_if_empty();
        drop(st);
        if let Some(sent) = &self.sent {
            sent.fetch_add((buf.len() - before) as u64, Ordering::Relaxed);
        }
        Popped::Items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_replaces_queue_with_too_slow() {
        let ob = Outbox::new(100);
        ob.push(Frame::message("i", &"x".repeat(40))).unwrap();
        assert_eq!(
            ob.push(Frame::message("i", &"y".repeat(40))),
            Err(PushError::Overflow)
        );
        assert!(ob.is_closed());
        assert_eq!(ob.push(Frame::welcome()), Err(PushError::Closed));
        let mut buf = Vec::new();
        assert!(ob.pop_batch(&mut buf, 16).await);
        assert_eq!(
            buf,
            vec![
                Outgoing::Text(Frame::disconnect(Some(DisconnectReason::TooSlow), true)),
                Outgoing::Close {
                    code: CLOSE_NORMAL,
                    reason: ""
                }
            ]
        );
        buf.clear();
        assert!(!ob.pop_batch(&mut buf, 16).await);
    }

    #[tokio::test]
    async fn a_single_large_frame_is_accepted_into_an_empty_queue() {
        let ob = Outbox::new(10);
        ob.push(Frame::message("i", &"x".repeat(40))).unwrap();
        assert_eq!(
            ob.queued_bytes(),
            Frame::message("i", &"x".repeat(40)).len()
        );
    }
}
