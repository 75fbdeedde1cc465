//! The publishing side: one connection shared by every broadcast (tokio-postgres
//! pipelines concurrent queries on it), opened on first use and replaced after
//! a connection failure. It never LISTENs, so it is driven as a plain future.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::PubSubError;
use tokio::time::{timeout_at, Instant};
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{describe, is_connection_error, to_pubsub_error};
use crate::PUBLISH_TIMEOUT;

/// After a failed connect, broadcasts fail at once for this long instead of
/// each trying again: a burst of broadcasts during an outage must not become a
/// burst of connection attempts.
const RETRY_HOLDOFF: Duration = Duration::from_millis(100);

/// `pg_notify` is `NOTIFY` with the channel and payload as parameters: no
/// quoting or escaping of either.
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

pub(crate) struct Publisher {
    config: tokio_postgres::Config,
    /// The URL without password, for logs.
    url: String,
    slot: Mutex<Slot>,
    /// Serializes connection attempts; never held while publishing.
    connecting: tokio::sync::Mutex<()>,
}

/// A connection and its prepared `pg_notify`, so a broadcast is one round trip.
struct Conn {
    client: Client,
    notify: Statement,
}

#[derive(Default)]
struct Slot {
    conn: Option<Arc<Conn>>,
    /// Bumped for every new connection, so that a caller that saw the old one
    /// fail cannot discard its replacement.
    generation: u64,
    last_failure: Option<(Instant, PubSubError)>,
}

impl Publisher {
    pub(crate) fn new(config: tokio_postgres::Config, url: String) -> Self {
        Publisher {
            config,
            url,
            slot: Mutex::new(Slot::default()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `SELECT pg_notify(channel, payload)`, within [`PUBLISH_TIMEOUT`] all told.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> Result<(), PubSubError> {
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let (generation, conn) = match timeout_at(deadline, self.connection()).await {
            Ok(found) => found?,
            Err(_) => {
                return Err(PubSubError::Unavailable(format!(
                    "could not connect to postgres within {}s",
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &payload];
        let notify = conn.client.execute(&conn.notify, &params);
        match timeout_at(deadline, notify).await {
            Ok(Ok(_rows)) => Ok(()),
            Ok(Err(e)) => {
                // An error the server answered leaves the connection usable;
                // anything else means it must be replaced.
                if is_connection_error(&e) || conn.client.is_closed() {
                    self.discard(generation);
                }
                Err(to_pubsub_error(&e))
            }
            Err(_) => {
                self.discard(generation);
                Err(PubSubError::Unavailable(format!(
                    "no reply to pg_notify from postgres within {}s",
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        }
    }

    /// The current connection, connecting if there is none (or it closed).
    async fn connection(&self) -> Result<(u64, Arc<Conn>), PubSubError> {
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
                let conn = Arc::new(conn);
                let mut slot = self.slot();
                slot.generation += 1;
                slot.conn = Some(conn.clone());
                slot.last_failure = None;
                Ok((slot.generation, conn))
            }
            Err(e) => {
                let error = to_pubsub_error(&e);
                tracing::debug!(url = %self.url, error = %describe(&e), "postgres publisher could not connect");
                self.slot().last_failure = Some((Instant::now(), error.clone()));
                Err(error)
            }
        }
    }

    /// The connection in the slot, unless it is known to be closed.
    fn current(&self) -> Option<(u64, Arc<Conn>)> {
        let mut slot = self.slot();
        match &slot.conn {
            Some(conn) if !conn.client.is_closed() => Some((slot.generation, conn.clone())),
            Some(_) => {
                slot.conn = None;
                None
            }
            None => None,
        }
    }

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(url = %url, error = %describe(&e), "postgres publisher connection ended");
            }
        });
        let notify = client.prepare(NOTIFY).await?;
        Ok(Conn { client, notify })
    }

    fn discard(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.conn = None;
        }
    }
}
