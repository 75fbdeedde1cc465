//! The publishing side for the kit's [`LazyPublisher`](cable_adapter_kit::LazyPublisher):
//! one connection shared by every broadcast (tokio-postgres pipelines
//! concurrent queries on it). It never LISTENs, so it is driven as a plain
//! future.

use std::sync::Arc;

use cable_adapter_kit::{async_trait, Publish, PublishFailure};
use cable_core::PubSubError;
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{describe, is_connection_error, to_pubsub_error};

/// `pg_notify` is `NOTIFY` with the channel and payload as parameters: no
/// quoting or escaping of either.
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Where a connection goes: its settings, and the URL without password
/// for logs.
pub(crate) struct Endpoint {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) url: String,
}

impl Endpoint {
    /// Connects and drives the connection in a task of its own, which logs
    /// (at debug) how it ended; `what` names the connection.
    pub(crate) async fn connect(
        &self,
        what: &'static str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(url = %url, error = %describe(&e), "{what} connection ended");
            }
        });
        Ok(client)
    }
}

pub(crate) struct PgPublish(pub(crate) Endpoint);

/// A connection and its prepared `pg_notify`, so a broadcast is one round trip.
pub(crate) struct Conn {
    client: Client,
    notify: Statement,
}

#[async_trait]
impl Publish for PgPublish {
    type Conn = Arc<Conn>;
    const NAME: &'static str = "postgres";
    const COMMAND: &'static str = "pg_notify";

    async fn connect(&self) -> Result<Arc<Conn>, PubSubError> {
        let client = self
            .0
            .connect("postgres publisher")
            .await
            .map_err(|e| to_pubsub_error(&e))?;
        let notify = client
            .prepare(NOTIFY)
            .await
            .map_err(|e| to_pubsub_error(&e))?;
        Ok(Arc::new(Conn { client, notify }))
    }

    async fn publish(
        &self,
        conn: &Arc<Conn>,
        channel: &str,
        payload: &str,
    ) -> Result<(), PublishFailure> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &payload];
        match conn.client.execute(&conn.notify, &params).await {
            Ok(_rows) => Ok(()),
            Err(e) => Err(PublishFailure {
                error: to_pubsub_error(&e),
                // An error the server answered leaves the connection usable.
                broken: is_connection_error(&e) || conn.client.is_closed(),
            }),
        }
    }

    fn is_closed(conn: &Arc<Conn>) -> bool {
        conn.client.is_closed()
    }
}
