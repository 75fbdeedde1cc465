//! A connection's control mailbox: the rare messages its session gets from
//! elsewhere (timer ticks, remote disconnects, shutdown).
//!
//! A tokio mpsc channel would do, but it allocates a 32-slot block for every
//! connection up front; idle connections are the common case, so this queue
//! allocates nothing until a message is sent.
//!
//! It is bounded without a limit to pick: a message equal to one already
//! waiting is dropped. Remote disconnects come from the pub/sub backend
//! (anyone who can publish on `action_cable/<id>` can send thousands), and
//! timer ticks keep coming while a channel callback is slow; the first
//! disconnect or shutdown ends the session anyway, and a timer that is
//! behind fires once when the session is free, not once per missed period.
//! So the queue holds at most one shutdown, one remote disconnect and one
//! tick per timer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::hub::Control;

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<VecDeque<Control>>,
    /// The session's task, woken by a send (one receiver: no list of waiters).
    waker: AtomicWaker,
    /// The receiving session has ended; sends fail.
    closed: AtomicBool,
}

/// The sending side; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Mailbox {
    inner: Arc<Inner>,
}

/// The receiving side, owned by the session.
#[derive(Debug)]
pub(crate) struct MailboxReceiver {
    inner: Arc<Inner>,
}

pub(crate) fn mailbox() -> (Mailbox, MailboxReceiver) {
    let inner = Arc::new(Inner::default());
    (
        Mailbox {
            inner: inner.clone(),
        },
        MailboxReceiver { inner },
    )
}

impl Mailbox {
    /// Queues `ctl`, unless the same message is already waiting (see the
    /// module docs); gives it back if the session has ended.
    pub(crate) fn send(&self, ctl: Control) -> Result<(), Control> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ctl);
        }
        let mut queue = self.inner.queue.lock().unwrap_or_else(|e| e.into_inner());
        if queue.iter().any(|queued| same_kind(queued, &ctl)) {
            return Ok(());
        }
        queue.push_back(ctl);
        drop(queue);
        self.inner.waker.wake();
        Ok(())
    }
}

/// Whether `b` adds nothing to `a` already waiting: both shutdowns, both
/// remote disconnects (the first ends the session), or ticks of one timer.
fn same_kind(a: &Control, b: &Control) -> bool {
    match (a, b) {
        (Control::Shutdown, Control::Shutdown) => true,
        (Control::RemoteDisconnect { .. }, Control::RemoteDisconnect { .. }) => true,
        (
            Control::Timer { serial, name, .. },
            Control::Timer {
                serial: serial_b,
                name: name_b,
                ..
            },
        ) => serial == serial_b && name == name_b,
        _ => false,
    }
}

impl MailboxReceiver {
    /// The next message. Cancel-safe: a message is only taken from the queue
    /// by the call that returns it.
    pub(crate) async fn recv(&mut self) -> Control {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next message, or the task woken when one comes.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Control> {
        let pop = || {
            self.inner
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
        };
        if let Some(c) = pop() {
            return Poll::Ready(c);
        }
        self.inner.waker.register(cx.waker());
        // A send between the first look and the registration woke nobody.
        match pop() {
            Some(c) => Poll::Ready(c),
            None => Poll::Pending,
        }
    }
}

impl Drop for MailboxReceiver {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_refuses_after_the_receiver_is_gone() {
        let (tx, mut rx) = mailbox();
        tx.send(Control::Shutdown).unwrap();
        tx.send(Control::RemoteDisconnect { reconnect: false })
            .unwrap();
        assert!(matches!(rx.recv().await, Control::Shutdown));
        assert!(matches!(
            rx.recv().await,
            Control::RemoteDisconnect { reconnect: false }
        ));
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx2.send(Control::Shutdown).unwrap();
        assert!(matches!(waiter.await.unwrap(), Control::Shutdown));
        let (tx, rx) = mailbox();
        drop(rx);
        assert!(tx.send(Control::Shutdown).is_err());
    }

    #[tokio::test]
    async fn a_flood_of_repeats_keeps_one_of_each() {
        let (tx, mut rx) = mailbox();
        let tick = |serial: u64, name: &str| Control::Timer {
            serial,
            name: name.into(),
            pending: Default::default(),
        };
        for i in 0..10_000 {
            tx.send(Control::RemoteDisconnect {
                reconnect: i % 2 == 0,
            })
            .unwrap();
            tx.send(tick(1, "a")).unwrap();
            tx.send(tick(1, "b")).unwrap();
            tx.send(tick(2, "a")).unwrap();
            tx.send(Control::Shutdown).unwrap();
        }
        let queued = rx.inner.queue.lock().unwrap().len();
        assert_eq!(queued, 5);
        // The first of each, in arrival order.
        assert!(matches!(
            rx.recv().await,
            Control::RemoteDisconnect { reconnect: true }
        ));
        assert!(matches!(rx.recv().await, Control::Timer { serial: 1, name, .. } if &*name == "a"));
        assert!(matches!(rx.recv().await, Control::Timer { serial: 1, name, .. } if &*name == "b"));
        assert!(matches!(rx.recv().await, Control::Timer { serial: 2, .. }));
        assert!(matches!(rx.recv().await, Control::Shutdown));
        // Once taken, the same message queues again.
        tx.send(tick(1, "a")).unwrap();
        assert!(matches!(rx.recv().await, Control::Timer { serial: 1, .. }));
    }
}
