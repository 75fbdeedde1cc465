//! One connection's life: authenticate, welcome, then commands in and frames
//! out until the socket closes or the server ends it.
//!
//! The session owns its subscriptions and runs every channel callback on its
//! own task, so commands of one connection are handled strictly in order.
//! Frames leave only through the connection's [`Outbox`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::auth::{ConnectRequest, Identifiers};
use crate::cable::{ConnHandle, Inner};
use crate::channel::{Channel, ChannelError, Context, Params, SubState};
use crate::hub::{Control, Target};
use crate::mailbox::{mailbox, Mailbox};
use crate::outbox::{Outbox, CLOSE_NORMAL, CLOSE_TOO_BIG};
use crate::protocol::{Command, CommandError, DisconnectReason, Frame};

/// How long a subscription waits for the adapter to acknowledge its streams
/// before it is dropped (the client's subscribe retry then tries again).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a transport hands the session from the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// A binary frame (ignored, as Rails does), with its length.
    Binary(usize),
    /// A message over the size limit arrived; the connection is closed with 1009.
    TooLarge {
        /// The size announced or read so far.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// State shared by the session and the contexts it lends to channels.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) cable: Arc<Inner>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) identifiers: Identifiers,
    pub(crate) connection_identifier: String,
    pub(crate) ctl: Mailbox,
}

struct Subscription {
    state: SubState,
    channel: Box<dyn Channel>,
}

fn internal_channel(connection_identifier: &str) -> String {
    format!("action_cable/{connection_identifier}")
}

/// Runs a connection to its end. See [`crate::Cable::run_connection`].
pub(crate) async fn run<S>(
    cable: Arc<Inner>,
    request: Box<ConnectRequest>,
    mut inbound: S,
    outbox: Arc<Outbox>,
) where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    if cable.is_shutting_down() {
        outbox.close(
            Some(Frame::disconnect(
                Some(DisconnectReason::ServerRestart),
                true,
            )),
            CLOSE_NORMAL,
            "",
        );
        return;
    }
    let identifiers = match cable.auth.connect(&request).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::info!(reason = %e.reason, "An unauthorized connection attempt was rejected");
            cable.counters.unauthorized.inc();
            outbox.close(
                Some(Frame::disconnect(
                    Some(DisconnectReason::Unauthorized),
                    false,
                )),
                CLOSE_NORMAL,
                "",
            );
            return;
        }
    };
    // Channels never see the request: free its headers now rather than keep
    // them for the connection's lifetime.
    drop(request);
    let (ctl_tx, mut ctl_rx) = mailbox();
    let conn = ConnShared {
        id: cable.next_id(),
        connection_identifier: identifiers.connection_identifier(),
        identifiers,
        cable: cable.clone(),
        outbox: outbox.clone(),
        ctl: ctl_tx.clone(),
    };
    let internal = (!conn.connection_identifier.is_empty())
        .then(|| internal_channel(&conn.connection_identifier));
    if let Some(ch) = &internal {
        // Rails does not make the welcome wait for the internal channel.
        let ack = cable.hub.add(
            ch,
            &Arc::from(""),
            conn.id,
            Target::Internal(ctl_tx.clone()),
        );
        let ch = ch.clone();
        tokio::spawn(async move {
            if let Err(e) = ack.await {
                tracing::warn!(channel = %ch, error = %e, "could not subscribe to the internal channel; remote disconnects will not reach this connection");
            }
        });
    }
    tracing::info!("Registered connection ({})", conn.connection_identifier);
    let _ = outbox.push(Frame::welcome());
    cable.register(
        conn.id,
        ConnHandle {
            outbox: outbox.clone(),
            ctl: ctl_tx,
        },
    );

    let mut session = Session {
        conn,
        subs: HashMap::new(),
    };
    loop {
        tokio::select! {
            biased;
            _ = outbox.closed() => break,
            ctl = ctl_rx.recv() => {
                // Boxed (as are commands and close): the session future
                // lives as long as the connection, and its size is that of
                // its largest await; idle connections should not pay for it.
                if Box::pin(session.control(ctl)).await {
                    break;
                }
            }
            frame = inbound.next() => match frame {
                Some(Inbound::Text(text)) => {
                    cable.counters.messages_received.inc();
                    Box::pin(session.command(&text)).await;
                }
                Some(Inbound::Binary(len)) => {
                    tracing::error!("Couldn't handle non-string message: binary frame of {len} bytes");
                }
                Some(Inbound::TooLarge { size, max }) => {
                    tracing::warn!(size, max, "Closing connection ({}): message of {size} bytes is over the limit of {max} bytes", session.conn.connection_identifier);
                    outbox.close(None, CLOSE_TOO_BIG, "Message too big");
                    break;
                }
                None => break,
            },
        }
    }
    Box::pin(session.close()).await;
    if let Some(ch) = &internal {
        cable.hub.remove(ch, "", session.conn.id);
    }
    cable.deregister(session.conn.id);
    cable.auth.disconnect(&session.conn.identifiers).await;
    // Whatever ended the session, make sure the writer finishes.
    outbox.close(None, CLOSE_NORMAL, "");
}

struct Session {
    conn: ConnShared,
    // Boxed: the map's spare slots then cost a pointer, not a Subscription.
    subs: HashMap<Arc<str>, Box<Subscription>>,
}

impl Session {
    /// Handles a control message; true when the connection must end.
    async fn control(&mut self, ctl: Control) -> bool {
        match ctl {
            Control::Timer { serial, name } => {
                let Some(sub) = self.subs.values_mut().find(|s| s.state.serial == serial) else {
                    return false;
                };
                let mut ctx = Context {
                    conn: &self.conn,
                    sub: &mut sub.state,
                };
                if let Err(e) = sub.channel.timer(&mut ctx, &name).await {
                    tracing::error!("{} timer {} failed: {}", sub.state.class, name, e);
                }
                if let Err((stream, e)) = settle_pending(&mut sub.state).await {
                    tracing::error!(
                        "{} could not stream from {}: {}",
                        sub.state.class,
                        stream,
                        e
                    );
                }
                false
            }
            Control::RemoteDisconnect { reconnect } => {
                tracing::info!("Removing connection ({})", self.conn.connection_identifier);
                self.conn.outbox.close(
                    Some(Frame::disconnect(Some(DisconnectReason::Remote), reconnect)),
                    CLOSE_NORMAL,
                    "",
                );
                true
            }
            Control::Shutdown => {
                self.conn.outbox.close(
                    Some(Frame::disconnect(
                        Some(DisconnectReason::ServerRestart),
                        true,
                    )),
                    CLOSE_NORMAL,
                    "",
                );
                true
            }
        }
    }

    async fn command(&mut self, text: &str) {
        match Command::parse(text) {
            Ok(Command::Subscribe { identifier }) => self.subscribe(identifier).await,
            Ok(Command::Unsubscribe { identifier }) => self.unsubscribe(&identifier).await,
            Ok(Command::Message { identifier, data }) => {
                self.message(&identifier, data, text).await
            }
            Err(CommandError::Malformed(e)) => {
                tracing::error!("There was an exception - JSON::ParserError({e}) in {text:?}");
            }
            Err(CommandError::Unrecognized) => {
                tracing::error!("Received unrecognized command in {text}");
            }
            Err(e) => {
                tracing::error!("Could not execute command from ({text}) [{e}]");
            }
        }
    }

    async fn subscribe(&mut self, identifier: String) {
        if self.subs.contains_key(identifier.as_str()) {
            // The JS client re-sends subscribe until confirmed: ignore quietly.
            return;
        }
        let params: Params = match serde_json::from_str::<Value>(&identifier) {
            Ok(Value::Object(m)) => m,
            _ => {
                tracing::error!("Could not execute command from ({identifier}) [identifier is not a JSON object]");
                return;
            }
        };
        let Some(class) = params.get("channel").and_then(Value::as_str) else {
            tracing::error!(
                "Could not execute command from ({identifier}) [identifier has no channel]"
            );
            return;
        };
        let cable = &self.conn.cable;
        let Some((class, factory)) = cable.channels.get_key_value(class) else {
            tracing::error!("Subscription class not found: {class:?}");
            if cable.config.reject_unknown_channels {
                let _ = self.conn.outbox.push(Frame::reject(&identifier));
            }
            return;
        };
        if let Some(max) = cable.config.max_subscriptions_per_connection {
            if self.subs.len() >= max {
                tracing::warn!(
                    "{class} subscription rejected: connection has {max} subscriptions, the limit"
                );
                let _ = self.conn.outbox.push(Frame::reject(&identifier));
                return;
            }
        }
        let identifier: Arc<str> = identifier.into();
        let mut sub = Subscription {
            state: SubState::new(identifier.clone(), class.clone(), params, cable.next_id()),
            channel: factory(),
        };
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        if let Err(e) = sub.channel.subscribed(&mut ctx).await {
            tracing::error!(
                "Could not execute command from ({identifier}) [{class}#subscribed: {e}]"
            );
            sub.state.stop(&self.conn);
            return;
        }
        if sub.state.rejected {
            let mut ctx = Context {
                conn: &self.conn,
                sub: &mut sub.state,
            };
            sub.channel.unsubscribed(&mut ctx).await;
            sub.state.stop(&self.conn);
            tracing::info!("{class} is transmitting the subscription rejection");
            let _ = self.conn.outbox.push(Frame::reject(&identifier));
            return;
        }
        if let Err((stream, e)) = settle_pending(&mut sub.state).await {
            tracing::error!("{class} could not stream from {stream}: {e}; subscription dropped, the client will retry");
            sub.state.stop(&self.conn);
            return;
        }
        tracing::info!("{class} is transmitting the subscription confirmation");
        let _ = self.conn.outbox.push(Frame::confirm(&identifier));
        self.subs.insert(identifier, Box::new(sub));
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn unsubscribe(&mut self, identifier: &str) {
        let Some(mut sub) = self.subs.remove(identifier).inspect(|_| {
            self.conn
                .cable
                .counters
                .subscriptions
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }) else {
            tracing::error!("Could not execute command from ({identifier}) [RuntimeError - Unable to find subscription with identifier: {identifier}]");
            return;
        };
        tracing::info!("Unsubscribing from channel: {identifier}");
        end(&self.conn, &mut sub).await;
    }

    async fn message(&mut self, identifier: &str, data: Option<Value>, text: &str) {
        let Some(sub) = self.subs.get_mut(identifier) else {
            tracing::error!("Could not execute command from ({text}) [RuntimeError - Unable to find subscription with identifier: {identifier}]");
            return;
        };
        let data = match data {
            Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    tracing::error!(
                        "Could not execute command from ({text}) [data is not a JSON object]"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(
                        "Could not execute command from ({text}) [JSON::ParserError - {e}]"
                    );
                    return;
                }
            },
            _ => {
                tracing::error!("Could not execute command from ({text}) [data is missing or not a JSON string]");
                return;
            }
        };
        let action = data
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("receive")
            .to_owned();
        let class = sub.state.class.clone();
        tracing::debug!("{class}#{action}({data})");
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        match sub.channel.perform(&mut ctx, &action, data).await {
            Ok(()) => {}
            Err(ChannelError::UnknownAction(a)) => {
                tracing::error!("Unable to process {class}#{a}({text})");
            }
            Err(e) => {
                tracing::error!("Could not execute command from ({text}) [{class}#{action}: {e}]");
            }
        }
        if let Err((stream, e)) = settle_pending(&mut sub.state).await {
            tracing::error!("{class} could not stream from {stream}: {e}");
        }
    }

    /// Ends every subscription (socket closed or connection ended).
    async fn close(&mut self) {
        let subs: Vec<_> = self.subs.drain().collect();
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_sub(subs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for (_, mut sub) in subs {
            end(&self.conn, &mut sub).await;
        }
    }
}

/// Runs `unsubscribed`, then stops the subscription's streams and timers.
async fn end(conn: &ConnShared, sub: &mut Subscription) {
    let mut ctx = Context {
        conn,
        sub: &mut sub.state,
    };
    sub.channel.unsubscribed(&mut ctx).await;
    sub.state.stop(conn);
}

/// Waits for the adapter to acknowledge every stream started since the last
/// call. Returns the first failure.
async fn settle_pending(state: &mut SubState) -> Result<(), (String, crate::pubsub::PubSubError)> {
    let pending = std::mem::take(&mut state.pending);
    for (stream, ack) in pending {
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((stream, e)),
            Err(_) => {
                return Err((
                    stream,
                    crate::pubsub::PubSubError::Unavailable(format!(
                        "no acknowledgement within {}s",
                        ACK_TIMEOUT.as_secs()
                    )),
                ))
            }
        }
    }
    Ok(())
}
