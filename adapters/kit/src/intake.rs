//! What every broadcast intake shares (a task that receives AnyCable's
//! broadcast messages from a backend and applies them: Redis' `PUBLISH` and
//! `XADD`, NATS' subject): the task, aborted when its handle is dropped; its
//! counters; and the reconnect loop, with backoff and an outage logged
//! once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cable_core::pubsub::Backoff;
use tokio::task::JoinHandle;

/// An intake's counters, shared by its task and its handle.
#[derive(Debug, Default)]
pub struct IntakeState {
    connected: AtomicBool,
    handled: AtomicU64,
    lost: AtomicU64,
}

impl IntakeState {
    /// Marks the intake receiving, and logs it once per connection: `kind`
    /// names the intake (`redis`, `redisx`, `nats`), `what` its source
    /// (`channel __anycable__`).
    pub fn up(&self, kind: &str, url: &str, what: &str) {
        self.connected.store(true, Ordering::Release);
        tracing::info!(intake = kind, url, "receiving broadcasts from {what}");
    }

    /// Counts one message received and applied (or dropped as malformed).
    pub fn handled_one(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether it is connected and receiving.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Messages received and applied (or dropped as malformed) so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Times a connection that was up was lost (and a reconnection began).
    pub fn reconnects(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Runs `session` over and over, with jittered backoff between
    /// attempts; a session returns whether it had been up ([`up`](Self::up))
    /// and why it ended. An outage is logged once (a warning), not per
    /// attempt; the backoff starts over after a connection that was up.
    pub async fn reconnecting<F, Fut>(&self, kind: &str, url: &str, mut session: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (bool, String)>,
    {
        let mut backoff = Backoff::new(Backoff::DEFAULT_FIRST, Backoff::DEFAULT_MAX);
        let mut logged = false;
        loop {
            let (was_up, reason) = session().await;
            self.connected.store(false, Ordering::Release);
            if was_up {
                backoff.reset();
                self.lost.fetch_add(1, Ordering::Relaxed);
                logged = false;
            }
            if logged {
                tracing::debug!(intake = kind, url, reason, "{kind} intake still down");
            } else {
                tracing::warn!(
                    intake = kind,
                    url,
                    reason,
                    "{kind} intake down; reconnecting"
                );
                logged = true;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// A running intake's task and state. Dropping it stops the task.
#[derive(Debug)]
pub struct IntakeTask {
    task: JoinHandle<()>,
    state: Arc<IntakeState>,
}

impl IntakeTask {
    /// Spawns `run` (given the state to count in) on `runtime`.
    pub fn spawn<F, Fut>(runtime: &tokio::runtime::Handle, run: F) -> Self
    where
        F: FnOnce(Arc<IntakeState>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let state = Arc::new(IntakeState::default());
        let task = runtime.spawn(run(state.clone()));
        IntakeTask { task, state }
    }

    /// Its counters.
    pub fn state(&self) -> &IntakeState {
        &self.state
    }
}

impl Drop for IntakeTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
