//! The subscriber connection for the kit's [`Subscriber`](cable_adapter_kit::Subscriber).
//!
//! async-nats reads the socket on a task of its own and hands each
//! subscription's messages to a channel of its own, so here one small task
//! per subscription moves them into the kit's [`Inbox`], bounded in bytes
//! ([`crate::NatsConfig::max_backlog_bytes`]). The kit owns reconnection
//! (one backoff, one resubscription, one count for every adapter), so the
//! client's own reconnection is cut to a single attempt and the first
//! `Disconnected` event ends the session.
//!
//! NATS acknowledges neither `SUB` nor `UNSUB`. A server handles one
//! connection's protocol in order, so a message this connection publishes
//! to a private inbox subject of its own and receives back proves that
//! everything sent before it is in effect: that round trip is the
//! acknowledgement of a batch, and the ping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use cable_adapter_kit::{async_trait, Backend, Inbox, Incoming, Op, Session, CONNECT_TIMEOUT};
use cable_core::PubSubError;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::subject::MAX_SUBJECT_BYTES;
use crate::{Credentials, Target};

/// Messages async-nats queues per subscription before it drops (and
/// reports a slow consumer); the pump empties it into the inbox at once.
const SUBSCRIPTION_CAPACITY: usize = 4096;

/// Options of every connection this crate opens: named, each attempt
/// bounded, and at most one reconnection attempt inside async-nats (0
/// would mean "unlimited" to it), made at once. A client handle that was
/// dropped while async-nats reconnects so ends instead of retrying forever.
pub(crate) fn options(name: &str, timeout: Duration, auth: &Option<Credentials>) -> ConnectOptions {
    let options = match auth.clone() {
        Some(Credentials::UserPassword(user, pass)) => {
            ConnectOptions::with_user_and_password(user, pass)
        }
        Some(Credentials::Token(token)) => ConnectOptions::with_token(token),
        None => ConnectOptions::new(),
    };
    options
        .name(name)
        .connection_timeout(timeout)
        .max_reconnects(1)
        .reconnect_delay_callback(|_| Duration::ZERO)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
}

pub(crate) struct NatsBackend {
    pub(crate) target: Target,
    pub(crate) name: String,
    pub(crate) max_backlog_bytes: usize,
}

pub(crate) struct NatsSession {
    client: Client,
    inbox: Arc<Inbox>,
    /// Subject to its pump; the kit re-sends a subscribe it already made
    /// (a harmless repeat for Redis), and a second NATS subscription on one
    /// subject would deliver every message twice.
    subs: HashMap<String, Pump>,
    probe: Probe,
}

struct Pump {
    /// Asks the pump to unsubscribe; it answers once the UNSUB is queued.
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The round trip through the server: see the module docs.
struct Probe {
    subject: String,
    sub: async_nats::Subscriber,
    sent: u64,
}

impl Drop for NatsSession {
    fn drop(&mut self) {
        for pump in self.subs.values() {
            pump.task.abort();
        }
        self.inbox.close();
    }
}

#[async_trait]
impl Backend for NatsBackend {
    type Session = NatsSession;
    const NAME: &'static str = "nats";
    const VERBS: [&'static str; 2] = ["SUB", "UNSUB"];

    async fn connect(&self, incoming: Incoming) -> Result<NatsSession, String> {
        let inbox = incoming.queue(self.max_backlog_bytes);
        let events = inbox.clone();
        let options =
            options(&self.name, CONNECT_TIMEOUT, &self.target.auth).event_callback(move |event| {
                let inbox = events.clone();
                async move { on_event(&inbox, event) }
            });
        let client = options
            .connect(self.target.addrs.as_slice())
            .await
            .map_err(|e| e.to_string())?;
        let subject = client.new_inbox();
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut session = NatsSession {
            client,
            inbox,
            subs: HashMap::new(),
            probe: Probe {
                subject,
                sub,
                sent: 0,
            },
        };
        // Connected means the server answers.
        session.round_trip().await?;
        Ok(session)
    }
}

/// What async-nats reports besides messages: a lost connection ends the
/// session (closing the inbox tells the kit), the rest is logged.
fn on_event(inbox: &Inbox, event: Event) {
    match event {
        Event::Disconnected | Event::Closed => inbox.close(),
        // async-nats gave up its one reconnection attempt.
        Event::ClientError(async_nats::ClientError::MaxReconnects) => inbox.close(),
        Event::ClientError(e) => tracing::warn!(adapter = "nats", error = %e, "nats client error"),
        Event::SlowConsumer(sid) => tracing::warn!(
            adapter = "nats",
            sid,
            "nats client dropped messages of a subscription that was not read fast enough"
        ),
        Event::ServerError(e) => {
            tracing::warn!(adapter = "nats", error = %e, "nats server error")
        }
        Event::LameDuckMode => {
            tracing::info!(adapter = "nats", "nats server entering lame duck mode")
        }
        Event::Connected | Event::Draining => {}
    }
}

impl NatsSession {
    /// Publishes a sequence number to the probe subject and waits for it
    /// to come back: everything sent before is in effect on the server.
    async fn round_trip(&mut self) -> Result<(), String> {
        self.probe.sent += 1;
        let want = self.probe.sent.to_string();
        self.client
            .publish(self.probe.subject.clone(), want.clone().into())
            .await
            .map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())?;
        loop {
            match self.probe.sub.next().await {
                // An older probe's answer, late after a timeout.
                Some(m) if m.payload.as_ref() != want.as_bytes() => continue,
                Some(_) => return Ok(()),
                None => return Err("nats connection closed".to_owned()),
            }
        }
    }

    async fn subscribe(&mut self, subject: &str) -> Result<Result<(), PubSubError>, String> {
        if self.subs.contains_key(subject) {
            return Ok(Ok(()));
        }
        if subject.len() > MAX_SUBJECT_BYTES {
            return Ok(Err(too_long(subject)));
        }
        let mut sub = match self.client.subscribe(subject.to_owned()).await {
            Ok(sub) => sub,
            Err(e) if e.kind() == async_nats::SubscribeErrorKind::InvalidSubject => {
                return Ok(Err(PubSubError::Backend(format!(
                    "nats: invalid subject {subject:?}: {e}"
                ))))
            }
            Err(e) => return Err(e.to_string()),
        };
        let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<()>>();
        let inbox = self.inbox.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    message = sub.next() => match message {
                        Some(m) => push(&inbox, m),
                        // The client is gone: so is the connection.
                        None => return inbox.close(),
                    },
                    done = &mut stopped => {
                        // Queued before the batch's round trip is sent.
                        let _ = sub.unsubscribe().await;
                        if let Ok(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                }
            }
        });
        self.subs.insert(subject.to_owned(), Pump { stop, task });
        Ok(Ok(()))
    }

    async fn unsubscribe(&mut self, subject: &str) {
        let Some(pump) = self.subs.remove(subject) else {
            return;
        };
        let (done, queued) = oneshot::channel();
        if pump.stop.send(done).is_ok() {
            let _ = queued.await;
        }
    }
}

fn too_long(subject: &str) -> PubSubError {
    PubSubError::Backend(format!(
        "nats: the subject of this stream would be {} bytes, over the {MAX_SUBJECT_BYTES} a \
         NATS protocol line takes",
        subject.len()
    ))
}

/// Queues a message whose payload is UTF-8 (the core works on text).
fn push(inbox: &Inbox, message: async_nats::Message) {
    match String::from_utf8(message.payload.to_vec()) {
        Ok(payload) => inbox.push(message.subject.to_string(), payload),
        Err(_) => tracing::warn!(
            adapter = "nats",
            subject = %message.subject,
            "dropped a nats message that is not UTF-8"
        ),
    }
}

#[async_trait]
impl Session for NatsSession {
    async fn apply(&mut self, ops: &[(Op, &str)]) -> Result<Vec<Result<(), PubSubError>>, String> {
        let mut results = Vec::with_capacity(ops.len());
        for (op, subject) in ops {
            match op {
                Op::Subscribe => results.push(self.subscribe(subject).await?),
                Op::Unsubscribe => {
                    self.unsubscribe(subject).await;
                    results.push(Ok(()));
                }
            }
        }
        self.round_trip().await?;
        Ok(results)
    }

    async fn ping(&mut self) -> Result<(), String> {
        self.round_trip().await
    }

    /// This connection's subscriptions as the adapter made them (NATS has
    /// no command listing them).
    async fn subscriptions(&mut self) -> Result<Vec<String>, (PubSubError, Option<String>)> {
        self.round_trip()
            .await
            .map_err(|r| (PubSubError::Unavailable(format!("nats: {r}")), Some(r)))?;
        Ok(self.subs.keys().cloned().collect())
    }
}
