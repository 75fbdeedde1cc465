//! The publishing side: one connection shared by every broadcast, opened on
//! first use and replaced after a connection failure.

use std::time::Duration;

use async_trait::async_trait;
use cable_core::PubSubError;
use tokio::time::{timeout_at, Instant};

use crate::slot::ConnSlot;
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
    slot: ConnSlot<P::Conn, PubSubError>,
}

impl<P: Publish> std::fmt::Debug for LazyPublisher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPublisher")
            .field("backend", &P::NAME)
            .finish()
    }
}

impl<P: Publish> LazyPublisher<P> {
    /// A publisher that connects on the first [`publish`](Self::publish).
    pub fn new(backend: P) -> Self {
        LazyPublisher {
            backend,
            slot: ConnSlot::new(),
        }
    }

    /// Publishes `payload` on backend `channel` within [`PUBLISH_TIMEOUT`],
    /// connecting included.
    ///
    /// A connection that died while idle (the server restarted, a proxy
    /// dropped it) is found out by its first use: then the broadcast is
    /// sent once more on a fresh connection, as Rails' redis client
    /// reconnects once. (A command that reached the server just before the
    /// connection broke may so be sent twice; a lost broadcast is worse.)
    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), PubSubError> {
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        loop {
            let connection = self.slot.get_reused(
                || self.backend.connect(),
                P::is_closed,
                (P::NAME, "publisher"),
            );
            let (generation, conn, reused) = match timeout_at(deadline, connection).await {
                Ok(found) => found?,
                Err(_) => {
                    return Err(PubSubError::Unavailable(format!(
                        "could not connect to {} within {}s",
                        P::NAME,
                        PUBLISH_TIMEOUT.as_secs()
                    )))
                }
            };
            let failure =
                match timeout_at(deadline, self.backend.publish(&conn, channel, payload)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(failure)) => failure,
                    Err(_) => {
                        self.slot.discard(generation);
                        return Err(PubSubError::Unavailable(format!(
                            "no reply to {} from {} within {}s",
                            P::COMMAND,
                            P::NAME,
                            PUBLISH_TIMEOUT.as_secs()
                        )));
                    }
                };
            if failure.broken {
                self.slot.discard(generation);
                if reused {
                    tracing::debug!(adapter = P::NAME, error = %failure.error, "publisher connection found dead; publishing again on a new one");
                    continue;
                }
            }
            return Err(failure.error);
        }
    }
}
