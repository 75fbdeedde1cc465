//! A connection's control mailbox: the rare messages its session gets from
//! elsewhere (timer ticks, remote disconnects, shutdown).
//!
//! A tokio mpsc channel would do, but it allocates a 32-slot block for every
//! connection up front; idle connections are the common case, so this queue
//! allocates nothing until a message is sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::hub::Control;

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<VecDeque<Control>>,
    notify: Notify,
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
    /// Queues `ctl`; gives it back if the session has ended.
    pub(crate) fn send(&self, ctl: Control) -> Result<(), Control> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ctl);
        }
        self.inner
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(ctl);
        self.inner.notify.notify_one();
        Ok(())
    }
}

impl MailboxReceiver {
    /// The next message. Cancel-safe: a message is only taken from the queue
    /// by the call that returns it.
    pub(crate) async fn recv(&mut self) -> Control {
        loop {
            if let Some(c) = self
                .inner
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            {
                return c;
            }
            self.inner.notify.notified().await;
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
}
