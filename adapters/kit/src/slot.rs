//! The connection slot shared by [`LazyPublisher`](crate::LazyPublisher)
//! and [`LazyConnection`](crate::broker::LazyConnection): one connection,
//! opened by the first caller that needs it, replaced after a failure,
//! with a hold-off after a failed connect.

use std::fmt::Display;
use std::future::Future;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::RETRY_HOLDOFF;

pub(crate) struct ConnSlot<T, E> {
    slot: Mutex<Slot<T, E>>,
    /// Serializes connection attempts; never held while the connection is
    /// used.
    connecting: tokio::sync::Mutex<()>,
}

struct Slot<T, E> {
    conn: Option<T>,
    /// Bumped for every new connection, so that a caller that saw the old one
    /// fail cannot discard its replacement.
    generation: u64,
    last_failure: Option<(Instant, E)>,
}

impl<T: Clone, E: Clone + Display> ConnSlot<T, E> {
    pub(crate) fn new() -> Self {
        ConnSlot {
            slot: Mutex::new(Slot {
                conn: None,
                generation: 0,
                last_failure: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<T, E>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Like [`get`](Self::get), also telling whether the connection was
    /// already there (reused) rather than opened by this call.
    pub(crate) async fn get_reused<F, Fut>(
        &self,
        connect: F,
        is_closed: impl Fn(&T) -> bool,
        names: (&'static str, &'static str),
    ) -> Result<(u64, T, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some((generation, conn)) = self.current(&is_closed) {
            return Ok((generation, conn, true));
        }
        let (generation, conn) = self.get(connect, is_closed, names).await?;
        Ok((generation, conn, false))
    }

    /// The connection and its generation: the one in the slot unless
    /// `is_closed` says it is, else a new one from `connect` (one caller
    /// connects, the others wait for it). Within [`RETRY_HOLDOFF`] of a
    /// failed connect, that failure again without trying. `backend` and
    /// `role` name the connection in logs ("redis", "publisher").
    pub(crate) async fn get<F, Fut>(
        &self,
        connect: F,
        is_closed: impl Fn(&T) -> bool,
        (backend, role): (&'static str, &'static str),
    ) -> Result<(u64, T), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(found) = self.current(&is_closed) {
            return Ok(found);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(found) = self.current(&is_closed) {
            return Ok(found);
        }
        if let Some((at, error)) = &self.slot().last_failure {
            if at.elapsed() < RETRY_HOLDOFF {
                return Err(error.clone());
            }
        }
        match connect().await {
            Ok(conn) => {
                let mut slot = self.slot();
                slot.generation += 1;
                slot.conn = Some(conn.clone());
                slot.last_failure = None;
                Ok((slot.generation, conn))
            }
            Err(error) => {
                tracing::debug!(adapter = backend, error = %error, "{role} could not connect");
                self.slot().last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The connection in the slot, unless it is known to be closed.
    fn current(&self, is_closed: impl Fn(&T) -> bool) -> Option<(u64, T)> {
        let mut slot = self.slot();
        match &slot.conn {
            Some(conn) if !is_closed(conn) => Some((slot.generation, conn.clone())),
            Some(_) => {
                slot.conn = None;
                None
            }
            None => None,
        }
    }

    /// Empties the slot if it still holds connection `generation`.
    pub(crate) fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.conn = None;
        }
    }
}
