//! The publishing side: one multiplexed connection shared by every
//! broadcast, opened on first use and replaced after a connection failure.

use std::sync::Mutex;
use std::time::Duration;

use cable_core::PubSubError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};
use tokio::time::{timeout_at, Instant};

use crate::PUBLISH_TIMEOUT;

/// After a failed connect, broadcasts fail at once for this long instead of
/// each trying again: a burst of broadcasts during an outage must not become a
/// burst of connection attempts.
const RETRY_HOLDOFF: Duration = Duration::from_millis(100);

pub(crate) struct Publisher {
    client: redis::Client,
    name: String,
    slot: Mutex<Slot>,
    /// Serializes connection attempts; never held while publishing.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Slot {
    conn: Option<MultiplexedConnection>,
    /// Bumped for every new connection, so that a caller that saw the old one
    /// fail cannot discard its replacement.
    generation: u64,
    last_failure: Option<(Instant, PubSubError)>,
}

impl Publisher {
    pub(crate) fn new(client: redis::Client, name: String) -> Self {
        Publisher {
            client,
            name,
            slot: Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `PUBLISH channel payload`, within [`PUBLISH_TIMEOUT`] all told.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> Result<(), PubSubError> {
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let (generation, mut conn) = match timeout_at(deadline, self.connection()).await {
            Ok(found) => found?,
            Err(_) => {
                return Err(PubSubError::Unavailable(format!(
                    "could not connect to redis within {}s",
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        match timeout_at(deadline, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(_receivers)) => Ok(()),
            Ok(Err(e)) => {
                // A server error leaves the connection usable; anything else
                // (I/O, protocol) means it must be replaced.
                if !matches!(e.kind(), ErrorKind::Server(_)) {
                    self.discard(generation);
                }
                Err(to_pubsub_error(&e))
            }
            Err(_) => {
                self.discard(generation);
                Err(PubSubError::Unavailable(format!(
                    "no reply to PUBLISH from redis within {}s",
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// The current connection, connecting if there is none.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), PubSubError> {
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
        match self.connect().await {
            Ok(conn) => {
                let mut slot = self.slot();
                slot.generation += 1;
                slot.conn = Some(conn.clone());
                slot.last_failure = None;
                Ok((slot.generation, conn))
            }
            Err(e) => {
                let error = to_pubsub_error(&e);
                tracing::debug!(error = %e, "redis publisher could not connect");
                self.slot().last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        let slot = self.slot();
        slot.conn.clone().map(|c| (slot.generation, c))
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PUBLISH_TIMEOUT))
            .set_response_timeout(Some(PUBLISH_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        set_name(&mut conn, &self.name).await;
        Ok(conn)
    }

    fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.conn = None;
        }
    }
}

/// `CLIENT SETNAME name`. A server that refuses it (some proxies do) is still
/// usable, so a failure is only logged.
pub(crate) async fn set_name(conn: &mut MultiplexedConnection, name: &str) {
    let mut cmd = redis::cmd("CLIENT");
    cmd.arg("SETNAME").arg(name);
    if let Err(e) = cmd.exec_async(conn).await {
        tracing::warn!(error = %e, name, "redis refused CLIENT SETNAME");
    }
}

/// Connection-level and transient server errors are `Unavailable` (retrying
/// later may work); other errors are `Backend`.
pub(crate) fn to_pubsub_error(e: &RedisError) -> PubSubError {
    match e.kind() {
        ErrorKind::Io
        | ErrorKind::Parse
        | ErrorKind::ClusterConnectionNotFound
        | ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown,
        ) => PubSubError::Unavailable(format!("redis: {e}")),
        _ => PubSubError::Backend(format!("redis: {e}")),
    }
}
