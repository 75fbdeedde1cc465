//! The publishing side for the kit's [`LazyPublisher`](cable_adapter_kit::LazyPublisher):
//! one multiplexed connection shared by every broadcast.

use std::time::Duration;

use cable_adapter_kit::{async_trait, Publish, PublishFailure, PUBLISH_TIMEOUT};
use cable_core::PubSubError;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};

pub(crate) struct RedisPublish {
    pub(crate) client: redis::Client,
    pub(crate) name: String,
}

#[async_trait]
impl Publish for RedisPublish {
    type Conn = MultiplexedConnection;
    const NAME: &'static str = "redis";
    const COMMAND: &'static str = "PUBLISH";

    async fn connect(&self) -> Result<MultiplexedConnection, PubSubError> {
        open(&self.client, &self.name, PUBLISH_TIMEOUT)
            .await
            .map_err(|e| to_pubsub_error(&e))
    }

    /// `PUBLISH channel payload`, as Rails sends it.
    async fn publish(
        &self,
        conn: &MultiplexedConnection,
        channel: &str,
        payload: &str,
    ) -> Result<(), PublishFailure> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        match cmd.query_async::<redis::Value>(&mut conn.clone()).await {
            Ok(_receivers) => Ok(()),
            Err(e) => Err(PublishFailure {
                error: to_pubsub_error(&e),
                // A server error leaves the connection usable; anything else
                // (I/O, protocol) means it must be replaced.
                broken: !matches!(e.kind(), ErrorKind::Server(_)),
            }),
        }
    }
}

/// A multiplexed connection to `client`, connecting and each reply bounded
/// by `timeout`, named `name` ([`set_name`]).
pub(crate) async fn open(
    client: &redis::Client,
    name: &str,
    timeout: Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    set_name(&mut conn, name).await;
    Ok(conn)
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

/// Connection-level and transient server errors: retrying later may work.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Io
            | ErrorKind::Parse
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown,
            )
    )
}

/// [`is_transient`] errors are `Unavailable`; other errors are `Backend`.
pub(crate) fn to_pubsub_error(e: &RedisError) -> PubSubError {
    if is_transient(e) {
        PubSubError::Unavailable(format!("redis: {e}"))
    } else {
        PubSubError::Backend(format!("redis: {e}"))
    }
}
