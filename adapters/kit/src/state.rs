//! Connection state shared by the subscriber task, the inbox and the
//! adapter's status handles.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counters and flags of one adapter's subscriber connection.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) connected: AtomicBool,
    pub(crate) reconnects: AtomicU64,
    /// Messages in an [`Inbox`](crate::Inbox) now.
    pub(crate) backlog: AtomicU64,
    /// Messages an [`Inbox`](crate::Inbox) had no room for, since start.
    pub(crate) dropped: AtomicU64,
}

impl State {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
