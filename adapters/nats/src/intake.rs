//! AnyCable's NATS broadcaster, received: messages a publisher (Rails'
//! `anycable` gem with `broadcast_adapter: nats`, `nats pub`) puts on the
//! subject `__anycable__` are parsed ([`cable_core::intake`]) and applied
//! through a [`Broadcaster`].
//!
//! Every node subscribes (no queue group, as AnyCable does), so every node
//! gets every message and delivers it to its own subscribers only
//! ([`Message::apply_locally`]): a pub/sub adapter shared by the nodes
//! then does not hand it to each subscriber once per node. A stream with
//! history on a shared broker is appended once per node.
//!
//! The intake runs on a task of its own, reconnects with jittered backoff
//! ([`Backoff`]) after any failure (one reconnection policy for every
//! connection of this crate; async-nats' own is cut to one attempt), and
//! never panics on what NATS or a publisher sends. Dropping the
//! [`NatsIntake`] stops the task.

use std::sync::Arc;

use async_nats::Event;
use cable_adapter_kit::intake::{IntakeState, IntakeTask};
use cable_adapter_kit::CONNECT_TIMEOUT;
use cable_core::intake::Message;
use cable_core::{redact_url, Broadcaster};
use futures_util::StreamExt;

use crate::{NatsConfig, NatsConfigError};

/// AnyCable's subject of the NATS broadcaster (`nats_channel`):
/// `__anycable__`.
pub const DEFAULT_INTAKE_SUBJECT: &str = "__anycable__";

/// Settings of a [`NatsIntake`], with AnyCable's defaults.
///
/// ```
/// use cable_nats::NatsIntakeConfig;
/// let config = NatsIntakeConfig::new("nats://127.0.0.1:4222");
/// assert_eq!(config.subject, "__anycable__");
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsIntakeConfig {
    /// The NATS URL (or several, comma-separated), as [`NatsConfig::url`].
    pub url: String,
    /// The subject publishers send broadcasts to (AnyCable's
    /// `nats_channel`). Default [`DEFAULT_INTAKE_SUBJECT`].
    pub subject: String,
    /// Name the connection gives the server. Default `cable-intake-PID-<pid>`.
    pub connection_name: String,
}

impl NatsIntakeConfig {
    /// AnyCable's defaults at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsIntakeConfig {
            url: url.into(),
            subject: DEFAULT_INTAKE_SUBJECT.to_owned(),
            connection_name: format!("cable-intake-PID-{}", std::process::id()),
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the subject.
        subject(subject: impl Into<String>) => subject = subject.into();
        /// Sets the connection name.
        connection_name(name: impl Into<String>) => connection_name = name.into();
    }
}

cable_adapter_kit::debug_redacting_url!(NatsIntakeConfig, subject, connection_name);

/// A running intake; see the module docs. Stops when dropped.
pub struct NatsIntake {
    task: IntakeTask,
}

impl std::fmt::Debug for NatsIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (connected, handled) = (self.is_connected(), self.handled());
        write!(
            f,
            "NatsIntake {{ connected: {connected}, handled: {handled} }}"
        )
    }
}

impl NatsIntake {
    /// Validates `config`, then subscribes to its subject in the background
    /// and applies every message published on it. Needs a tokio runtime.
    pub fn subscribe(
        config: NatsIntakeConfig,
        broadcaster: Broadcaster,
    ) -> Result<Self, NatsConfigError> {
        let problem = match config.subject.as_str() {
            "" => Some("it is empty"),
            subject => crate::subject::prefix_problem(subject),
        };
        if let Some(reason) = problem {
            return Err(NatsConfigError::InvalidSubject {
                subject: config.subject.clone(),
                reason,
            });
        }
        let target = NatsConfig::new(config.url.clone()).target()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(NatsConfigError::NoRuntime)?;
        let task = IntakeTask::spawn(&runtime, |state| run(target, config, broadcaster, state));
        Ok(NatsIntake { task })
    }

    /// Whether it is connected and subscribed.
    pub fn is_connected(&self) -> bool {
        self.task.state().is_connected()
    }

    /// Messages received and applied (or dropped as malformed) so far.
    pub fn handled(&self) -> u64 {
        self.task.state().handled()
    }

    /// Times a connection that was up was lost (and a reconnection began).
    pub fn reconnects(&self) -> u64 {
        self.task.state().reconnects()
    }
}

async fn run(
    target: crate::Target,
    config: NatsIntakeConfig,
    broadcaster: Broadcaster,
    state: Arc<IntakeState>,
) {
    let url = redact_url(&config.url);
    state
        .reconnecting("nats", &url, || {
            session(&target, &config, &broadcaster, &state, &url)
        })
        .await
}

/// One connection: subscribes, applies messages until the connection is
/// lost. Returns whether it had been up, and why it ended.
async fn session(
    target: &crate::Target,
    config: &NatsIntakeConfig,
    broadcaster: &Broadcaster,
    state: &IntakeState,
    url: &str,
) -> (bool, String) {
    let (events, mut lost) = tokio::sync::mpsc::unbounded_channel();
    let options = crate::backend::options(&config.connection_name, CONNECT_TIMEOUT, &target.auth)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                if matches!(event, Event::Disconnected | Event::Closed) {
                    let _ = events.send(event);
                }
            }
        });
    let connect = options.connect(target.addrs.as_slice());
    let client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return (false, e.to_string()),
        Err(_) => return (false, "connect timed out".to_owned()),
    };
    let mut messages = match client.subscribe(config.subject.clone()).await {
        Ok(sub) => sub,
        Err(e) => return (false, e.to_string()),
    };
    // The SUB is in effect once the server has answered a PING after it.
    if let Err(e) = tokio::time::timeout(CONNECT_TIMEOUT, client.flush()).await {
        return (false, format!("no answer to a flush: {e}"));
    }
    state.up("nats", url, &format!("subject {}", config.subject));
    loop {
        tokio::select! {
            msg = messages.next() => match msg {
                // At most once: a message the adapter refuses is not retried.
                Some(msg) => handle(&msg.payload, broadcaster, state).await,
                None => return (true, "subscription closed".to_owned()),
            },
            event = lost.recv() => {
                let why = event.map_or("connection closed".to_owned(), |e| e.to_string());
                return (true, why);
            }
        }
    }
}

/// Applies `payload` to this node's subscribers.
async fn handle(payload: &[u8], broadcaster: &Broadcaster, state: &IntakeState) {
    match Message::parse(payload) {
        Ok(message) => {
            if let Err(e) = message.apply_locally(broadcaster).await {
                tracing::error!(intake = "nats", error = %e, cause = %e.source, "broadcast refused");
            }
        }
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            tracing::warn!(intake = "nats", error = %e, cause, "not a broadcast message; dropped");
        }
    }
    state.handled_one();
}
