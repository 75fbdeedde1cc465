//! The listening connection for the kit's [`Subscriber`](cable_adapter_kit::Subscriber).
//!
//! A **driver** task per connection owns the tokio-postgres `Connection` and
//! polls [`Connection::poll_message`] in a loop: that both moves the
//! session's queries along and yields the notifications, which it hands to
//! [`Incoming::deliver`] at once (awaiting the connection as a future would
//! drop them). Each notification is delivered before the next is read, so
//! nothing from the server queues up here (TCP and PostgreSQL's own bounded
//! queue hold the rest). LISTEN/UNLISTEN run on the connection's `Client`,
//! which never waits on the driver: listening goes on while a `LISTEN` is in
//! flight.

use cable_adapter_kit::{async_trait, Backend, Incoming, Op, Session};
use cable_core::PubSubError;
use tokio::task::JoinHandle;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, SimpleQueryMessage, Socket};

use crate::error::{describe, is_connection_error, to_pubsub_error};
use crate::naming::quote_identifier;

pub(crate) struct PgBackend {
    /// With the application name set and TLS off.
    pub(crate) config: tokio_postgres::Config,
}

pub(crate) struct PgSession {
    client: Client,
    driver: JoinHandle<()>,
}

impl Drop for PgSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[async_trait]
impl Backend for PgBackend {
    type Session = PgSession;
    const NAME: &'static str = "postgres";
    const ROLE: &'static str = "listener";
    const VERBS: [&'static str; 2] = ["LISTEN", "UNLISTEN"];

    async fn connect(&self, incoming: Incoming) -> Result<PgSession, String> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(|e| describe(&e))?;
        let driver = tokio::spawn(drive(connection, incoming));
        Ok(PgSession { client, driver })
    }
}

/// Drives the connection with `poll_message` and delivers notifications,
/// until the connection ends; then reports why.
async fn drive(mut connection: Connection<Socket, NoTlsStream>, incoming: Incoming) {
    let reason = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => incoming.deliver(n.channel(), n.payload()),
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(notice = %notice, "postgres notice on the listening connection");
            }
            Some(Ok(_)) => {}
            // Terminal, per tokio-postgres.
            Some(Err(e)) => break describe(&e),
            None => break "connection closed".to_owned(),
        }
    };
    incoming.lost(reason);
}

fn listen_sql(op: Op, channel: &str) -> String {
    format!("{} {}", PgBackend::verb(op), quote_identifier(channel))
}

#[async_trait]
impl Session for PgSession {
    /// The statements go as one multi-statement query, which PostgreSQL runs
    /// as one implicit transaction: if it refuses one statement none takes
    /// effect, so they are then run one at a time to find which (LISTEN and
    /// UNLISTEN can safely run twice).
    async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String> {
        let sqls: Vec<String> = ops.iter().map(|(op, c)| listen_sql(*op, c)).collect();
        match execute(&self.client, &sqls.join(";\n")).await? {
            Ok(()) => Ok(vec![Ok(()); sqls.len()]),
            Err(e) if sqls.len() == 1 => Ok(vec![Err(e)]),
            Err(_) => {
                let mut results = Vec::with_capacity(sqls.len());
                for sql in &sqls {
                    results.push(execute(&self.client, sql).await?);
                }
                Ok(results)
            }
        }
    }

    /// `SELECT 1`.
    async fn ping(&mut self) -> Result<(), String> {
        match self.client.simple_query("SELECT 1").await {
            Ok(_) => Ok(()),
            // An error reply still proves the connection is alive.
            Err(e) if !(is_connection_error(&e) || self.client.is_closed()) => Ok(()),
            Err(e) => Err(describe(&e)),
        }
    }

    /// `SELECT pg_listening_channels()`, sorted.
    async fn subscriptions(&mut self) -> Result<Vec<String>, (PubSubError, Option<String>)> {
        match self
            .client
            .simple_query("SELECT pg_listening_channels()")
            .await
        {
            Ok(messages) => {
                let mut channels: Vec<String> = messages
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .collect();
                channels.sort();
                Ok(channels)
            }
            Err(e) => {
                let lost =
                    (is_connection_error(&e) || self.client.is_closed()).then(|| describe(&e));
                Err((to_pubsub_error(&e), lost))
            }
        }
    }
}

/// Ok(outcome) when the server answered (Ok, or the error it refused the
/// query with); Err(reason) when the connection is unusable.
async fn execute(client: &Client, sql: &str) -> Result<Result<(), PubSubError>, String> {
    match client.batch_execute(sql).await {
        Ok(()) => Ok(Ok(())),
        Err(e) if is_connection_error(&e) || client.is_closed() => Err(describe(&e)),
        Err(e) => Ok(Err(to_pubsub_error(&e))),
    }
}
