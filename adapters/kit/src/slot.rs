//! The connection slot shared by [`LazyPublisher`](crate::LazyPublisher)
//! and [`LazyConnection`](crate::broker::LazyConnection): one connection,
//! opened by the first caller that needs it, replaced after a failure,
//! with a hold-off after a failed connect, and the bounded request loop
//! both run on it.

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{timeout_at, Instant};

use crate::RETRY_HOLDOFF;

/// A failed request: the error for the caller, and whether the connection
/// must be replaced (an I/O error) or is still good (the backend refused
/// this one request).
#[derive(Debug)]
pub struct Failure<E> {
    /// What the caller gets.
    pub error: E,
    /// The connection is unusable: the next request opens a new one.
    pub broken: bool,
}

/// Where a request ran out of time.
pub(crate) enum Late {
    /// No connection within the bound.
    Connecting,
    /// Connected, but no reply within the bound.
    Replying,
}

pub(crate) struct ConnSlot<T, E> {
    slot: Mutex<Slot<T, E>>,
    /// Serializes connection attempts; never held while the connection is
    /// used.
    connecting: tokio::sync::Mutex<()>,
    /// Backend and role, naming the connection in logs ("redis", "publisher").
    names: (&'static str, &'static str),
    /// Bound on one request, connecting included.
    timeout: Duration,
    /// Whether a connection is known to be closed (checked before reuse).
    is_closed: fn(&T) -> bool,
    /// Within the hold-off, wait for its end rather than fail at once
    /// (see [`ConnSlot::get`]).
    wait_out_holdoff: bool,
}

struct Slot<T, E> {
    conn: Option<T>,
    /// Bumped for every new connection, so that a caller that saw the old one
    /// fail cannot discard its replacement.
    generation: u64,
    last_failure: Option<(Instant, E)>,
}
impl<T: Clone, E: Clone + Display> ConnSlot<T, E> {
    pub(crate) fn new(
        names: (&'static str, &'static str),
        timeout: Duration,
        is_closed: fn(&T) -> bool,
    ) -> Self {
        ConnSlot {
            slot: Mutex::new(Slot {
                conn: None,
                generation: 0,
                last_failure: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
            names,
            timeout,
            is_closed,
            wait_out_holdoff: false,
        }
    }

    /// A caller within the hold-off waits for its end and then gets a fresh
    /// answer (the connection someone opened meanwhile, a failure newer
    /// than the one it waited out, or its own attempt) instead of the old
    /// failure at once. For brokers: an append right after the backend is
    /// back must not fail on a failure of an idle timer's call made just
    /// before; it costs a call during an outage at most the hold-off.
    pub(crate) fn waiting_out_holdoff(mut self) -> Self {
        self.wait_out_holdoff = true;
        self
    }

    /// The bound on one request.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `Name { backend, timeout }`, for the Debug of what owns the slot.
    pub(crate) fn fmt_as(&self, f: &mut std::fmt::Formatter<'_>, name: &str) -> std::fmt::Result {
        f.debug_struct(name)
            .field("backend", &self.names.0)
            .field("timeout", &self.timeout)
            .finish()
    }

    /// Runs `request` on the connection (opened with `connect` if needed)
    /// within the timeout, connecting included; `late` makes the error when
    /// time runs out. A connection that died while idle is found out by its
    /// first use: a broken failure on a reused connection runs `request`
    /// once more on a fresh one.
    pub(crate) async fn request<R, C, Q>(
        &self,
        connect: impl Fn() -> C,
        request: impl Fn(T) -> Q,
        late: impl Fn(Late) -> E,
    ) -> Result<R, E>
    where
        C: Future<Output = Result<T, E>>,
        Q: Future<Output = Result<R, Failure<E>>>,
    {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (generation, conn, reused) =
                match timeout_at(deadline, self.get_reused(&connect)).await {
                    Ok(found) => found?,
                    Err(_) => return Err(late(Late::Connecting)),
                };
            let failure = match timeout_at(deadline, request(conn)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => {
                    // A reply that did not come in time may still come, and
                    // would be read as the next request's: start afresh.
                    self.discard(generation);
                    return Err(late(Late::Replying));
                }
            };
            if failure.broken {
                self.discard(generation);
                if reused {
                    let (backend, role) = self.names;
                    tracing::debug!(adapter = backend, error = %failure.error, "{role} connection found dead; trying again on a new one");
                    continue;
                }
            }
            return Err(failure.error);
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<T, E>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Like [`get`](Self::get), also telling whether the connection was
    /// already there (reused) rather than opened by this call.
    async fn get_reused<F, Fut>(&self, connect: F) -> Result<(u64, T, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((generation, conn)) = self.current() {
            return Ok((generation, conn, true));
        }
        let (generation, conn) = self.get(connect).await?;
        Ok((generation, conn, false))
    }

    /// The connection and its generation: the one in the slot unless it is
    /// known to be closed, else a new one from `connect` (one caller
    /// connects, the others wait for it). Within [`RETRY_HOLDOFF`] of a
    /// failed connect, that failure again without trying, or, when waiting
    /// out the hold-off, the answer after it.
    async fn get<F, Fut>(&self, connect: F) -> Result<(u64, T), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut waited = false;
        let _connecting = loop {
            if let Some(found) = self.current() {
                return Ok(found);
            }
            let connecting = self.connecting.lock().await;
            if let Some(found) = self.current() {
                return Ok(found);
            }
            let held = self
                .slot()
                .last_failure
                .clone()
                .filter(|(at, _)| at.elapsed() < RETRY_HOLDOFF);
            match held {
                None => break connecting,
                // The failure waited out was replaced by a newer one: that
                // is a fresh answer.
                Some((_, error)) if waited || !self.wait_out_holdoff => return Err(error),
                Some((at, _)) => {
                    drop(connecting);
                    tokio::time::sleep(RETRY_HOLDOFF.saturating_sub(at.elapsed())).await;
                    waited = true;
                }
            }
        };
        match connect().await {
            Ok(conn) => {
                let mut slot = self.slot();
                slot.generation += 1;
                slot.conn = Some(conn.clone());
                slot.last_failure = None;
                Ok((slot.generation, conn))
            }
            Err(error) => {
                let (backend, role) = self.names;
                tracing::debug!(adapter = backend, error = %error, "{role} could not connect");
                self.slot().last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The connection in the slot, unless it is known to be closed.
    fn current(&self) -> Option<(u64, T)> {
        let mut slot = self.slot();
        match &slot.conn {
            Some(conn) if !(self.is_closed)(conn) => Some((slot.generation, conn.clone())),
            Some(_) => {
                slot.conn = None;
                None
            }
            None => None,
        }
    }

    /// Empties the slot if it still holds connection `generation`.
    fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.conn = None;
        }
    }
}
