//! The publishing side: one connection shared by every broadcast, opened on
//! first use and replaced after a connection failure.

use std::time::Duration;

use crate::slot::{ConnSlot, Failure, Late};
use crate::PUBLISH_TIMEOUT;
use async_trait::async_trait;
use cable_core::PubSubError;

/// After a failed connect, broadcasts fail at once for this long instead of
/// each trying again: a burst of broadcasts during an outage must not become a
/// burst of connection attempts.
pub const RETRY_HOLDOFF: Duration = Duration::from_millis(100);

/// A failed publish: the error for the caller, and whether the connection
/// must be replaced (an I/O error) or is still good (the backend refused
/// this one message).
pub type PublishFailure = Failure<PubSubError>;

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
        self.slot.fmt_as(f, "LazyPublisher")
    }
}

impl<P: Publish> LazyPublisher<P> {
    /// A publisher that connects on the first [`publish`](Self::publish).
    pub fn new(backend: P) -> Self {
        LazyPublisher {
            backend,
            slot: ConnSlot::new((P::NAME, "publisher"), PUBLISH_TIMEOUT, P::is_closed),
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
        self.slot
            .request(
                || self.backend.connect(),
                |conn| async move { self.backend.publish(&conn, channel, payload).await },
                |late| {
                    let secs = PUBLISH_TIMEOUT.as_secs();
                    PubSubError::Unavailable(match late {
                        Late::Connecting => {
                            format!("could not connect to {} within {secs}s", P::NAME)
                        }
                        Late::Replying => {
                            format!("no reply to {} from {} within {secs}s", P::COMMAND, P::NAME)
                        }
                    })
                },
            )
            .await
    }
}
