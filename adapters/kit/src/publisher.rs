//! The publishing side: one connection shared by every broadcast, opened on
//! first use and replaced after a connection failure.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use cable_core::PubSubError;
use tokio::time::{timeout_at, Instant};

use crate::PUBLISH_TIMEOUT;

/// After a failed connect, broadcasts fail at once for this long instead of
/// each trying again: a burst of broadcasts during an outage must not become a
/// burst of connection attempts.
pub const RETRY_HOLDOFF: Duration = Duration::from_millis(100);

/// A failed publish: the error for the caller, and whether the connection
/// must be replaced (an I/O error) or is still good (the backend refused
/// this one message).
#[derive(Debug)]
pub struct PublishFailure {
    /// What the broadcaster gets.
    pub error: PubSubError,
    /// The connection is unusable: the next broadcast opens a new one.
    pub broken: bool,
}

/// A backend's publishing connection.
#[async_trait]
pub trait Publish: Send + Sync + 'static {
    /// A connection, cheap to clone (a multiplexed client, an `Arc`).
    type Conn: Clone + Send + Sync + 'static;
    /// The backend's name for messages ("redis", "postgres").
    const NAME: &'static str;
    /// The publishing command for messages ("PUBLISH", "pg_notify").
    const COMMAND: &'static str;
    /// Opens a connection.
    async fn connect(&self) -> Result<Self::Conn, PubSubError>;
    /// Sends `payload` on backend `channel`.
    async fn publish(
        &self,
        conn: &Self::Conn,
        channel: &str,
        payload: &str,
    ) -> Result<(), PublishFailure>;
    /// Whether `conn` is known to be closed (checked before reuse).
    fn is_closed(_conn: &Self::Conn) -> bool {
        false
    }
}

/// A lazily opened, self-repairing publishing connection: a broadcast
/// connects if needed, fails within [`PUBLISH_TIMEOUT`] all told, never
/// panics, and a broken connection is replaced by the next broadcast.
pub struct LazyPublisher<P: Publish> {
    backend: P,
    slot: Mutex<Slot<P::Conn>>,
    /// Serializes connection attempts; never held while publishing.
    connecting: tokio::sync::Mutex<()>,
}

impl<P: Publish> std::fmt::Debug for LazyPublisher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPublisher")
            .field("backend", &P::NAME)
            .finish()
    }
}

struct Slot<C> {
    conn: Option<C>,
    /// Bumped for every new connection, so that a caller that saw the old one
    /// fail cannot discard its replacement.
    generation: u64,
    last_failure: Option<(Instant, PubSubError)>,
}

impl<P: Publish> LazyPublisher<P> {
    /// A publisher that connects on the first [`publish`](Self::publish).
    pub fn new(backend: P) -> Self {
        LazyPublisher {
            backend,
            slot: Mutex::new(Slot {
                conn: None,
                generation: 0,
                last_failure: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<P::Conn>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `payload` on backend `channel` within [`PUBLISH_TIMEOUT`],
    /// connecting included.
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), PubSubError> {
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let (generation, conn) = match timeout_at(deadline, self.connection()).await {
            Ok(found) => found?,
            Err(_) => {
                return Err(PubSubError::Unavailable(format!(
                    "could not connect to {} within {}s",
                    P::NAME,
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        };
        match timeout_at(deadline, self.backend.publish(&conn, channel, payload)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => {
                if failure.broken {
                    self.discard(generation);
                }
                Err(failure.error)
            }
            Err(_) => {
                self.discard(generation);
                Err(PubSubError::Unavailable(format!(
                    "no reply to {} from {} within {}s",
                    P::COMMAND,
                    P::NAME,
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn connection(&self) -> Result<(u64, P::Conn), PubSubError> {
        if let Some(found) = self.current() {
            return Ok(found);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(found) = self.current() {
            return Ok(found);
        }
        if let Some((at, error)) = &self.slot().last_failure {
            if at.elapsed() < RETRY_HOLDOFF {
                return Err(error.clone());
            }
        }
        match self.backend.connect().await {
            Ok(conn) => {
                let mut slot = self.slot();
                slot.generation += 1;
                slot.conn = Some(conn.clone());
                slot.last_failure = None;
                Ok((slot.generation, conn))
            }
            Err(error) => {
                tracing::debug!(adapter = P::NAME, error = %error, "publisher could not connect");
                self.slot().last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The connection in the slot, unless it is known to be closed.
    fn current(&self) -> Option<(u64, P::Conn)> {
        let mut slot = self.slot();
        match &slot.conn {
            Some(conn) if !P::is_closed(conn) => Some((slot.generation, conn.clone())),
            Some(_) => {
                slot.conn = None;
                None
            }
            None => None,
        }
    }

    fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.conn = None;
        }
    }
}
