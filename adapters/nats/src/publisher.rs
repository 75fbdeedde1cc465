//! The publishing side for the kit's [`LazyPublisher`](cable_adapter_kit::LazyPublisher):
//! one client shared by every broadcast.

use async_nats::connection::State;
use async_nats::{Client, ConnectErrorKind, PublishErrorKind};
use cable_adapter_kit::{async_trait, Publish, PublishFailure, PUBLISH_TIMEOUT};
use cable_core::PubSubError;

use crate::backend::options;
use crate::subject::MAX_SUBJECT_BYTES;
use crate::Target;

pub(crate) struct NatsPublish {
    pub(crate) target: Target,
    pub(crate) name: String,
}

fn refused(error: PubSubError) -> PublishFailure {
    PublishFailure {
        error,
        broken: false,
    }
}

fn broken(error: PubSubError) -> PublishFailure {
    PublishFailure {
        error,
        broken: true,
    }
}

#[async_trait]
impl Publish for NatsPublish {
    type Conn = Client;
    const NAME: &'static str = "nats";
    const COMMAND: &'static str = "PUB";

    async fn connect(&self) -> Result<Client, PubSubError> {
        options(&self.name, PUBLISH_TIMEOUT, &self.target.auth)
            .connect(self.target.addrs.as_slice())
            .await
            .map_err(|e| match e.kind() {
                ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                    PubSubError::Backend(format!("nats: {e}"))
                }
                _ => PubSubError::Unavailable(format!("nats: {e}")),
            })
    }

    /// `PUB subject payload`, the payload's bytes as given. NATS does not
    /// answer a PUB, so success means it was written to the socket: a
    /// flush, which fails (or is timed out by the kit) when it cannot be.
    async fn publish(
        &self,
        conn: &Client,
        subject: &str,
        payload: &str,
    ) -> Result<(), PublishFailure> {
        // A server closes the connection on a PUB over its max_payload.
        let limit = conn.server_info().max_payload;
        if payload.len() > limit {
            return Err(refused(PubSubError::PayloadTooLarge {
                adapter: "nats",
                size: payload.len(),
                limit,
            }));
        }
        if subject.len() > MAX_SUBJECT_BYTES {
            return Err(refused(PubSubError::Backend(format!(
                "nats: the subject of this stream would be {} bytes, over the \
                 {MAX_SUBJECT_BYTES} a NATS protocol line takes",
                subject.len()
            ))));
        }
        // While async-nats reconnects it would buffer the message and send
        // it later: a broadcast reported failed must not arrive after all.
        if conn.connection_state() != State::Connected {
            return Err(broken(PubSubError::Unavailable(
                "nats: publisher connection lost".into(),
            )));
        }
        let bytes = bytes::Bytes::copy_from_slice(payload.as_bytes());
        conn.publish(subject.to_owned(), bytes)
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => refused(PubSubError::PayloadTooLarge {
                    adapter: "nats",
                    size: payload.len(),
                    limit,
                }),
                PublishErrorKind::InvalidSubject => {
                    refused(PubSubError::Backend(format!("nats: {e}")))
                }
                PublishErrorKind::Send => broken(PubSubError::Unavailable(format!("nats: {e}"))),
            })?;
        conn.flush()
            .await
            .map_err(|e| broken(PubSubError::Unavailable(format!("nats: {e}"))))
    }

    fn is_closed(conn: &Client) -> bool {
        conn.connection_state() == State::Disconnected
    }
}
