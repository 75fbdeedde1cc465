//! The server object: channels, the connection hook, the pub/sub adapter, the
//! stream hub and the registry of live connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::Stream;
use serde::Serialize;
use tokio::sync::Notify;

use crate::auth::{AllowAll, Authenticate, Identifiers};
use crate::broker::{Broker, HistoryPolicy, MemoryBroker};
use crate::channel::Channel;
use crate::connection::{self, Inbound};
use crate::hub::{Control, Hub};
use crate::json;
use crate::outbox::Outbox;
use crate::protocol::Frame;
use crate::pubsub::{Delivery, MemoryPubSub, PubSub, PubSubError};
use crate::reliable::Reliable;
use crate::Extensions;

pub(crate) type ChannelFactory = Box<dyn Fn() -> Box<dyn Channel> + Send + Sync>;

/// Core settings. Transport settings (origins, buffer sizes) live in the server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CableConfig {
    /// Bytes a connection may have queued for sending before it is
    /// disconnected as `too_slow`. Default 1 MiB.
    pub outbound_queue_bytes: usize,
    /// Send `reject_subscription` for an unknown channel. Rails sends nothing
    /// (and the JS client retries forever); default false, as Rails.
    pub reject_unknown_channels: bool,
    /// Most subscriptions one connection may hold; further subscribes get
    /// `reject_subscription` and a warning. Default 256 (Rails: no limit);
    /// `None` turns the limit off.
    pub max_subscriptions_per_connection: Option<usize>,
    /// Longest subscription identifier accepted, in bytes; a longer one gets
    /// `reject_subscription`. Default 4 KiB (Rails: no limit).
    pub max_identifier_bytes: usize,
    /// Commands (and control frames) a connection may send: a token bucket.
    /// Past it the connection gets `{"type":"disconnect","reason":
    /// "rate_limited","reconnect":true}` and is closed. Default: a burst of
    /// 300, then 100 per second (Rails: no limit); `None` turns it off.
    pub command_rate: Option<CommandRate>,
    /// Largest message (the JSON of one broadcast or transmit) a client may be
    /// sent, in bytes. Bigger broadcasts and transmits return an error;
    /// bigger messages arriving from the adapter are dropped with a warning.
    /// Default 512 KiB; never more than `outbound_queue_bytes`.
    pub max_outbound_message_bytes: usize,
    /// How long the connection hook may take before the connection is
    /// refused as unauthorized. Default 10 s.
    pub connect_timeout: Duration,
    /// How long one channel callback (`subscribed`, `perform`, `timer`,
    /// `unsubscribed`) may take before it is abandoned and logged. Default 30 s.
    pub callback_timeout: Duration,
    /// Keep history for every stream, not only those a channel streams from
    /// with history ([`Context::stream_from_with_history`](crate::Context::stream_from_with_history)).
    /// Default false: a stream without history costs nothing extra.
    pub history_all_streams: bool,
    /// The history kept per stream unless a channel passes its own policy:
    /// default 100 messages for 300 s (AnyCable's).
    pub history_policy: HistoryPolicy,
    /// How long a session (identifiers and subscriptions) stays restorable
    /// after its last change or its disconnect, extended protocol only.
    /// Default 300 s; zero turns session restore off.
    pub session_ttl: Duration,
    /// Extended protocol only: a client that sends nothing (no command, no
    /// `pong`) for this long gets `{"type":"disconnect","reason":"no_pong",
    /// "reconnect":true}` and is closed. Set it above the ping interval (3 s)
    /// plus a round trip. Default `None` (off), as AnyCable.
    pub pong_timeout: Option<Duration>,
    /// How long a session stays present on a stream after its connection
    /// went away without leaving (AnyCable's `presence_ttl`): a client that
    /// reconnects within it never appears to leave. Default 15 s.
    pub presence_ttl: Duration,
}

/// A token bucket for a connection's commands: `burst` at once, refilled at
/// `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandRate {
    /// Commands that may arrive at once.
    pub burst: u32,
    /// Commands per second sustained.
    pub per_second: u32,
}

impl Default for CommandRate {
    fn default() -> Self {
        CommandRate {
            burst: 300,
            per_second: 100,
        }
    }
}

impl Default for CableConfig {
    fn default() -> Self {
        CableConfig {
            outbound_queue_bytes: 1 << 20,
            reject_unknown_channels: false,
            max_subscriptions_per_connection: Some(256),
            max_identifier_bytes: 4096,
            command_rate: Some(CommandRate::default()),
            max_outbound_message_bytes: 512 * 1024,
            connect_timeout: Duration::from_secs(10),
            callback_timeout: Duration::from_secs(30),
            history_all_streams: false,
            history_policy: HistoryPolicy::default(),
            session_ttl: Duration::from_secs(300),
            pong_timeout: None,
            presence_ttl: Duration::from_secs(15),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) messages_received: Counter,
    pub(crate) unauthorized: Counter,
    pub(crate) connections_total: Counter,
    pub(crate) too_slow: Arc<AtomicU64>,
    pub(crate) sent: Arc<AtomicU64>,
    /// Confirmed subscriptions open now.
    pub(crate) subscriptions: AtomicU64,
    pub(crate) refused_handshakes: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) panics: Counter,
    pub(crate) timeouts: Counter,
}

/// A snapshot of the server's figures.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Open, welcomed connections.
    pub connections: usize,
    /// Connections welcomed since start.
    pub connections_total: u64,
    /// Connections refused by the connection hook.
    pub unauthorized: u64,
    /// Confirmed subscriptions open now.
    pub subscriptions: u64,
    /// Streams with at least one local subscriber.
    pub streams: usize,
    /// Commands received from clients.
    pub messages_received: u64,
    /// Frames handed to transports for sending (all kinds, pings included).
    pub messages_sent: u64,
    /// Broadcasts that reached this process from the adapter.
    pub broadcasts: u64,
    /// Data frames queued to clients from broadcasts.
    pub deliveries: u64,
    /// Connections dropped because their outbound queue overflowed.
    pub too_slow_disconnects: u64,
    /// Times the pub/sub adapter re-established its backend connection.
    pub adapter_reconnects: u64,
    /// Handshakes a transport refused before the upgrade (server full).
    pub refused_handshakes: u64,
    /// Connections closed for sending commands faster than
    /// [`CableConfig::command_rate`].
    pub rate_limited_disconnects: u64,
    /// Panics caught in the connection hook or in channel callbacks.
    pub callback_panics: u64,
    /// Connection hooks and channel callbacks abandoned at their timeout.
    pub callback_timeouts: u64,
    /// Messages from the adapter dropped for being over
    /// [`CableConfig::max_outbound_message_bytes`].
    pub oversized_dropped: u64,
    /// Messages the adapter received from its backend and has not delivered
    /// yet ([`PubSub::backlog`]).
    pub adapter_backlog: u64,
    /// Messages the adapter dropped because its backlog was full
    /// ([`PubSub::dropped`]).
    pub adapter_dropped: u64,
    /// Broadcasts appended to the broker (given a position in their
    /// stream's history).
    pub history_appends: u64,
    /// Broadcasts of streams with history that the broker failed to append
    /// (delivered live without a position).
    pub history_append_failures: u64,
    /// History requests served (`confirm_history`).
    pub history_reads: u64,
    /// History requests that could not be served (`reject_history`).
    pub history_misses: u64,
    /// Sessions restored from a session id (`?sid=`), without the connect
    /// hook.
    pub restored_sessions: u64,
    /// Seconds since the server was built.
    pub uptime_secs: u64,
}

pub(crate) struct ConnHandle {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) ctl: crate::mailbox::Mailbox,
}

pub(crate) struct Inner {
    pub(crate) hub: Arc<Hub>,
    pub(crate) reliable: Arc<Reliable>,
    pub(crate) presence: crate::presence::Local,
    pub(crate) channels: HashMap<Arc<str>, ChannelFactory>,
    pub(crate) auth: Arc<dyn Authenticate>,
    pub(crate) config: CableConfig,
    pub(crate) counters: Counters,
    connections: Mutex<HashMap<u64, ConnHandle>>,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    drained: Notify,
    started: Instant,
    /// Sockets a transport still has open (see [`TransportGuard`]).
    transports: AtomicU64,
    /// Set once the heartbeat task runs (one per server).
    heartbeat: std::sync::OnceLock<()>,
    /// The application state ([`CableBuilder::state`]).
    pub(crate) state: Arc<Extensions>,
}

/// Held by a transport while one of its sockets is open, so that
/// [`transport::drain`](crate::transport::drain) also waits for the last frames (the `server_restart`
/// notice, the close) to be written: a session ends before its writer does.
#[derive(Debug)]
#[must_use = "the socket counts as open only while the guard lives"]
pub struct TransportGuard {
    cable: Cable,
}

impl Drop for TransportGuard {
    fn drop(&mut self) {
        if self.cable.inner.transports.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.cable.inner.drained.notify_waiters();
        }
    }
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, ConnHandle>> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(&self, id: u64, handle: ConnHandle) {
        self.counters.connections_total.inc();
        let ctl = handle.ctl.clone();
        self.conns().insert(id, handle);
        // A shutdown that started while this connection was being welcomed
        // must still reach it.
        if self.is_shutting_down() {
            let _ = ctl.send(Control::Shutdown);
        }
    }

    pub(crate) fn deregister(&self, id: u64) {
        let mut conns = self.conns();
        conns.remove(&id);
        if conns.is_empty() {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub(crate) fn broadcaster(&self) -> Broadcaster {
        Broadcaster {
            hub: Arc::downgrade(&self.hub),
            pubsub: self.hub.pubsub.clone(),
            reliable: self.reliable.clone(),
            limit: self.config.max_outbound_message_bytes,
        }
    }
}

/// Broadcasts from anywhere: an axum handler, a background job, a channel.
/// Cheap to clone.
#[derive(Clone)]
pub struct Broadcaster {
    /// For deliveries to this process only; weak, as channels keep
    /// broadcasters and the hub keeps channels' subscriptions.
    hub: std::sync::Weak<Hub>,
    pubsub: Arc<dyn PubSub>,
    reliable: Arc<Reliable>,
    /// [`CableConfig::max_outbound_message_bytes`].
    limit: usize,
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("adapter", &self.pubsub.name())
            .finish()
    }
}

/// How a broadcast is published beyond its stream and payload: AnyCable's
/// broadcast `meta` ([`Broadcaster::broadcast_with`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication {
    /// The session id (`sid`) of a session that must not get it.
    pub exclude_socket: Option<String>,
    /// Delivered live only, never stored in the stream's history.
    pub transient: bool,
    /// A presence event (sent as `type: presence`; always transient).
    pub(crate) presence: bool,
}

impl Publication {
    /// Excludes session `sid`.
    pub fn excluding(mut self, sid: impl Into<String>) -> Self {
        self.exclude_socket = Some(sid.into());
        self
    }

    /// Keeps it out of history.
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }
}

impl Broadcaster {
    /// Rails' `ActionCable.server.broadcast(stream, message)`: encodes
    /// `message` as Rails does and publishes it on `stream`. A message over
    /// [`CableConfig::max_outbound_message_bytes`] is refused with
    /// [`PubSubError::MessageTooLarge`]: no client could be sent it.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        message: &T,
    ) -> Result<(), PubSubError> {
        let payload = json::encode(message)
            .map_err(|e| PubSubError::Backend(format!("could not encode message: {e}")))?;
        self.broadcast_raw(stream, &payload).await
    }

    /// Publishes JSON text as it is (it must be valid JSON: subscribers drop
    /// payloads they cannot decode, as Rails does). Size limit as
    /// [`Broadcaster::broadcast`].
    ///
    /// When `stream` keeps history, the message is first appended to the
    /// broker and published with its position
    /// ([`pubsub::encode_with_meta`](crate::pubsub::encode_with_meta)), so
    /// every node's subscribers get `stream_id`, `epoch` and `offset`. If
    /// the broker fails, it is published without a position (logged): the
    /// live message is never lost.
    pub async fn broadcast_raw(&self, stream: &str, json_text: &str) -> Result<(), PubSubError> {
        self.broadcast_with(stream, json_text, &Publication::default())
            .await
    }

    /// [`Broadcaster::broadcast_raw`] with AnyCable's broadcast options: a
    /// session that must not get it (`exclude_socket`, a `to_others`
    /// broadcast) and whether it stays out of history (`transient`).
    pub async fn broadcast_with(
        &self,
        stream: &str,
        json_text: &str,
        options: &Publication,
    ) -> Result<(), PubSubError> {
        let wire = self.prepare(stream, json_text, options).await?;
        self.pubsub.broadcast(stream, &wire).await
    }

    /// [`Broadcaster::broadcast_with`] to this process's subscribers only,
    /// not through the adapter: for an intake that every node receives
    /// itself (AnyCable's Redis pub/sub broadcaster), so that a shared
    /// adapter does not hand it to each subscriber once per node. A stream
    /// with history is appended by each node that receives it.
    pub async fn broadcast_locally_with(
        &self,
        stream: &str,
        json_text: &str,
        options: &Publication,
    ) -> Result<(), PubSubError> {
        let wire = self.prepare(stream, json_text, options).await?;
        if let Some(hub) = self.hub.upgrade() {
            hub.deliver(stream, &wire);
        }
        Ok(())
    }

    /// [`Broadcaster::remote_disconnect`] of this process's connections only
    /// (see [`Broadcaster::broadcast_locally_with`]).
    pub fn disconnect_locally(&self, identifiers: &Identifiers, reconnect: bool) {
        if let Some(hub) = self.hub.upgrade() {
            let (channel, payload) = disconnect_message(identifiers, reconnect);
            hub.deliver(&channel, &payload);
        }
    }

    /// The size check, the history append and the envelope of a broadcast.
    async fn prepare(
        &self,
        stream: &str,
        json_text: &str,
        options: &Publication,
    ) -> Result<String, PubSubError> {
        if json_text.len() > self.limit {
            return Err(PubSubError::MessageTooLarge {
                size: json_text.len(),
                limit: self.limit,
            });
        }
        let mut meta = crate::pubsub::Meta {
            position: None,
            exclude_socket: options.exclude_socket.clone(),
            presence: options.presence,
        };
        if !options.transient && !options.presence {
            if let Some(policy) = self.reliable.policy_for(stream).await {
                meta.position = self.reliable.append(stream, json_text, policy).await;
            }
        }
        Ok(crate::pubsub::encode_with_meta(&meta, json_text))
    }

    /// Rails' `remote_connections.where(...).disconnect(reconnect:)`: ends
    /// every connection, on every node, whose identifiers are exactly these.
    pub async fn remote_disconnect(
        &self,
        identifiers: &Identifiers,
        reconnect: bool,
    ) -> Result<(), PubSubError> {
        let (channel, payload) = disconnect_message(identifiers, reconnect);
        self.pubsub.broadcast(&channel, &payload).await
    }
}

/// Rails' remote disconnect: the connection's internal channel and message.
fn disconnect_message(identifiers: &Identifiers, reconnect: bool) -> (String, String) {
    let channel = format!("action_cable/{}", identifiers.connection_identifier());
    let payload = format!(r#"{{"type":"disconnect","reconnect":{reconnect}}}"#);
    (channel, payload)
}

/// The cable server core. Cheap to clone; all clones share one server.
///
/// ```
/// use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
///
/// #[derive(Default)]
/// struct Lobby;
///
/// #[async_trait]
/// impl Channel for Lobby {
///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
///         ctx.stream_from("lobby");
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cable = Cable::builder().channel("LobbyChannel", Lobby::default).build();
/// cable.broadcast("lobby", &serde_json::json!({"hello": "world"})).await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct Cable {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cable")
            .field("adapter", &self.inner.hub.pubsub.name())
            .field("channels", &self.inner.channels.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The adapter, made by [`CableBuilder::try_pubsub`] with the delivery handle
/// it was given (bound to the hub by `build`), or a factory still to run.
enum PubSubSlot {
    Made(Delivery, Arc<dyn PubSub>),
    Factory(Box<dyn FnOnce(Delivery) -> Arc<dyn PubSub>>),
}

/// Builds a [`Cable`].
pub struct CableBuilder {
    channels: HashMap<Arc<str>, ChannelFactory>,
    auth: Arc<dyn Authenticate>,
    pubsub: PubSubSlot,
    /// `None`: no broker at all (history requests are rejected, sessions
    /// are not kept).
    broker: Option<Arc<dyn Broker>>,
    config: CableConfig,
    state: Extensions,
}

impl std::fmt::Debug for CableBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CableBuilder").finish_non_exhaustive()
    }
}

impl CableBuilder {
    /// Adds application state: a database pool, a config, a client of
    /// another service. Channels read it with
    /// [`Context::state`](crate::Context::state), the connection hook with
    /// [`ConnectRequest::state`](crate::ConnectRequest::state), anything
    /// holding the `Cable` with [`Cable::state`]; one value per type (wrap
    /// two of one type in types of their own), no globals.
    ///
    /// ```
    /// use cable_core::{async_trait, Cable, Channel, ChannelResult, Context};
    /// struct Motd(String);
    /// #[derive(Default)]
    /// struct Lobby;
    /// #[async_trait]
    /// impl Channel for Lobby {
    ///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
    ///         let motd = ctx.state::<Motd>().map(|m| m.0.clone()).unwrap_or_default();
    ///         ctx.transmit(&serde_json::json!({ "motd": motd }));
    ///         Ok(())
    ///     }
    /// }
    /// let cable = Cable::builder()
    ///     .state(Motd("welcome".into()))
    ///     .channel("LobbyChannel", Lobby::default)
    ///     .build();
    /// assert_eq!(cable.state::<Motd>().map(|m| m.0.as_str()), Some("welcome"));
    /// ```
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// Registers a channel under its Rails class name (`"ChatChannel"`); a new
    /// instance is made by `factory` for every subscription.
    pub fn channel<C, F>(mut self, name: &str, factory: F) -> Self
    where
        C: Channel,
        F: Fn() -> C + Send + Sync + 'static,
    {
        self.channels
            .insert(name.into(), Box::new(move || Box::new(factory())));
        self
    }

    /// Sets the connection hook. Default: [`AllowAll`].
    pub fn authenticate(mut self, auth: impl Authenticate) -> Self {
        self.auth = Arc::new(auth);
        self
    }

    /// Sets the pub/sub adapter. `make` receives the [`Delivery`] handle the
    /// adapter must hand incoming messages to. Default: [`MemoryPubSub`].
    pub fn pubsub<P, F>(mut self, make: F) -> Self
    where
        P: PubSub,
        F: FnOnce(Delivery) -> P + 'static,
    {
        self.pubsub = PubSubSlot::Factory(Box::new(move |d| Arc::new(make(d))));
        self
    }

    /// Sets the pub/sub adapter with a constructor that may refuse (a bad
    /// URL, a setting out of range): the error comes back here, before
    /// anything is served, instead of a panic in [`build`](Self::build).
    /// `make` runs now; messages it delivers before `build` are dropped
    /// (nobody is subscribed yet).
    ///
    /// ```
    /// use cable_core::Cable;
    /// use cable_core::pubsub::{Delivery, MemoryPubSub};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("no such backend: {0}")]
    /// struct BadUrl(String);
    ///
    /// fn adapter(url: &str, d: Delivery) -> Result<MemoryPubSub, BadUrl> {
    ///     if url == "memory:" { Ok(MemoryPubSub::new(d)) } else { Err(BadUrl(url.into())) }
    /// }
    ///
    /// let err = Cable::builder().try_pubsub(|d| adapter("nats://x", d)).unwrap_err();
    /// assert_eq!(err.to_string(), "no such backend: nats://x");
    /// let cable = Cable::builder().try_pubsub(|d| adapter("memory:", d))?.build();
    /// # drop(cable);
    /// # Ok::<(), BadUrl>(())
    /// ```
    pub fn try_pubsub<P, E, F>(mut self, make: F) -> Result<Self, E>
    where
        P: PubSub,
        F: FnOnce(Delivery) -> Result<P, E>,
    {
        let delivery = Delivery::detached();
        let adapter = make(delivery.clone())?;
        self.pubsub = PubSubSlot::Made(delivery, Arc::new(adapter));
        Ok(self)
    }

    /// Sets the broker, the history and session store behind reliable
    /// streams. Default: a [`MemoryBroker`] (this process only).
    pub fn broker(mut self, broker: impl Broker) -> Self {
        self.broker = Some(Arc::new(broker));
        self
    }

    /// Sets a broker that is shared (several `Cable`s on one store, as
    /// nodes on one backend).
    pub fn shared_broker(mut self, broker: Arc<dyn Broker>) -> Self {
        self.broker = Some(broker);
        self
    }

    /// Sets the broker with a constructor that may refuse (a bad URL, a
    /// setting out of range): the error comes back here, before anything
    /// is served. See [`try_pubsub`](Self::try_pubsub).
    pub fn try_broker<B, E, F>(mut self, make: F) -> Result<Self, E>
    where
        B: Broker,
        F: FnOnce() -> Result<B, E>,
    {
        self.broker = Some(Arc::new(make()?));
        Ok(self)
    }

    /// No broker: no stream keeps history (history requests get
    /// `reject_history`) and sessions cannot be restored.
    pub fn no_broker(mut self) -> Self {
        self.broker = None;
        self
    }

    /// Sets the core settings.
    pub fn config(mut self, config: CableConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the server.
    pub fn build(mut self) -> Cable {
        if self.config.max_outbound_message_bytes > self.config.outbound_queue_bytes {
            tracing::warn!(
                "max_outbound_message_bytes ({}) is over outbound_queue_bytes ({}); using {}",
                self.config.max_outbound_message_bytes,
                self.config.outbound_queue_bytes,
                self.config.outbound_queue_bytes
            );
            self.config.max_outbound_message_bytes = self.config.outbound_queue_bytes;
        }
        let (delivery, adapter) = match self.pubsub {
            PubSubSlot::Made(delivery, adapter) => (delivery, adapter),
            PubSubSlot::Factory(make) => {
                let delivery = Delivery::detached();
                let adapter = make(delivery.clone());
                (delivery, adapter)
            }
        };
        let max_message = self.config.max_outbound_message_bytes;
        let hub = Arc::new_cyclic(|weak| {
            delivery.bind(weak.clone());
            Hub::new(adapter, max_message)
        });
        let reliable = Arc::new(Reliable::new(
            self.broker,
            self.config.history_all_streams,
            self.config.history_policy,
        ));
        let presence = crate::presence::Local::new(self.config.presence_ttl);
        Cable {
            inner: Arc::new(Inner {
                hub,
                reliable,
                presence,
                channels: self.channels,
                auth: self.auth,
                config: self.config,
                counters: Counters::default(),
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                drained: Notify::new(),
                started: Instant::now(),
                transports: AtomicU64::new(0),
                heartbeat: std::sync::OnceLock::new(),
                state: Arc::new(self.state),
            }),
        }
    }
}

impl Cable {
    /// Starts building a server.
    pub fn builder() -> CableBuilder {
        CableBuilder {
            channels: HashMap::new(),
            auth: Arc::new(AllowAll),
            pubsub: PubSubSlot::Factory(Box::new(|d| Arc::new(MemoryPubSub::new(d)))),
            broker: Some(Arc::new(MemoryBroker::new())),
            config: CableConfig::default(),
            state: Extensions::new(),
        }
    }

    /// The application state of type `T` given to [`CableBuilder::state`].
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.state.get()
    }

    /// Who is present on `stream` (AnyCable's presence), on every node
    /// sharing the broker; [`BrokerError::Unsupported`](crate::broker::BrokerError::Unsupported)
    /// when the broker keeps no presence (or there is none).
    pub async fn presence(
        &self,
        stream: &str,
    ) -> Result<crate::broker::PresenceInfo, crate::broker::BrokerError> {
        match &self.inner.reliable.broker {
            Some(b) => b.presence_info(stream).await,
            None => Err(crate::broker::BrokerError::Unsupported {
                broker: "none",
                what: "presence",
            }),
        }
    }

    /// A handle to broadcast from anywhere.
    pub fn broadcaster(&self) -> Broadcaster {
        self.inner.broadcaster()
    }

    /// See [`Broadcaster::broadcast`].
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        message: &T,
    ) -> Result<(), PubSubError> {
        self.broadcaster().broadcast(stream, message).await
    }

    /// See [`Broadcaster::remote_disconnect`].
    pub async fn remote_disconnect(
        &self,
        identifiers: &Identifiers,
        reconnect: bool,
    ) -> Result<(), PubSubError> {
        self.broadcaster()
            .remote_disconnect(identifiers, reconnect)
            .await
    }

    /// The settings this server was built with.
    pub fn config(&self) -> &CableConfig {
        &self.inner.config
    }

    /// A new outbound queue sized by [`CableConfig::outbound_queue_bytes`].
    pub(crate) fn new_outbox(&self) -> Arc<Outbox> {
        Outbox::with_counters(
            self.inner.config.outbound_queue_bytes,
            Some(self.inner.counters.too_slow.clone()),
            Some(self.inner.counters.sent.clone()),
        )
    }

    /// Runs one connection to its end: authenticates it (unless the
    /// transport did), sends the welcome, then handles frames from `inbound`
    /// until it ends, the server ends the connection, or `outbox` closes.
    /// Everything to send goes to `outbox`, which a transport drains; the
    /// last item is always a close. Frames that arrive before the welcome
    /// wait in `inbound` and are handled in order after it.
    pub(crate) fn run_connection<S>(
        &self,
        hello: connection::Hello,
        inbound: S,
        outbox: Arc<Outbox>,
    ) -> impl std::future::Future<Output = ()> + Send
    where
        S: Stream<Item = Inbound> + Unpin + Send,
    {
        connection::run(self.inner.clone(), hello, inbound, outbox)
    }

    /// Starts the server's heartbeat: one ping to every welcomed connection
    /// every `every`. Only the first call starts it (one heartbeat per
    /// server, however many transports or routers share it); the task holds
    /// no strong reference and ends once the last `Cable` clone is dropped.
    pub(crate) fn start_heartbeat(&self, every: Duration) {
        self.inner.heartbeat.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { break };
                    Cable { inner }.beat();
                }
            });
        });
    }

    /// Sends one ping to every welcomed connection (call every 3 s from a
    /// single timer). Returns the number of connections pinged.
    pub(crate) fn beat(&self) -> usize {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let frame = Frame::ping(secs);
        let hub = &self.inner.hub;
        self.inner.reliable.renew(|stream| hub.has_stream(stream));
        self.inner
            .presence
            .on_beat(self.inner.reliable.broker.as_ref(), self.broadcaster());
        let conns = self.inner.conns();
        for c in conns.values() {
            let _ = c.outbox.push(frame.clone());
        }
        conns.len()
    }

    /// Starts a shutdown: new connections are refused and every open one is
    /// sent `{"type":"disconnect","reason":"server_restart","reconnect":true}`
    /// and closed.
    pub(crate) fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        for c in self.inner.conns().values() {
            let _ = c.ctl.send(Control::Shutdown);
        }
    }

    /// Whether [`transport::begin_shutdown`](crate::transport::begin_shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.is_shutting_down()
    }

    /// Marks one transport socket open until the guard is dropped; see
    /// [`TransportGuard`].
    pub(crate) fn transport_guard(&self) -> TransportGuard {
        self.inner.transports.fetch_add(1, Ordering::AcqRel);
        TransportGuard {
            cable: self.clone(),
        }
    }

    /// Like [`transport_guard`](Cable::transport_guard), but only while fewer than `max`
    /// sockets are open (a transport's `max_connections`); None at the limit.
    pub(crate) fn try_transport_guard(&self, max: usize) -> Option<TransportGuard> {
        self.inner
            .transports
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                ((n as usize) < max).then_some(n + 1)
            })
            .ok()
            .map(|_| TransportGuard {
                cable: self.clone(),
            })
    }

    /// Waits until every connection has ended and every transport socket
    /// (see [`transport::transport_guard`](crate::transport::transport_guard)) is closed, at most `timeout`. Returns
    /// the number of connections or sockets still open.
    pub(crate) async fn drain(&self, timeout: Duration) -> usize {
        let deadline = crate::reliable::later(tokio::time::Instant::now(), timeout);
        let open = || {
            self.inner
                .conns()
                .len()
                .max(self.inner.transports.load(Ordering::Acquire) as usize)
        };
        loop {
            let notified = self.inner.drained.notified();
            if open() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return open();
            }
        }
    }

    /// Counts a handshake the transport refused before the upgrade (for
    /// example at its connection limit); see [`Stats::refused_handshakes`].
    pub(crate) fn count_refused_handshake(&self) {
        self.inner.counters.refused_handshakes.inc();
    }

    /// Whether the pub/sub adapter is connected.
    pub fn is_healthy(&self) -> bool {
        self.inner.hub.pubsub.is_connected()
    }

    /// The pub/sub adapter's name.
    pub fn adapter_name(&self) -> &'static str {
        self.inner.hub.pubsub.name()
    }

    /// The broker's name (`"memory"`, ...), `None` without a broker.
    pub fn broker_name(&self) -> Option<&'static str> {
        self.inner.reliable.broker.as_ref().map(|b| b.name())
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let r = &self.inner.reliable.counters;
        Stats {
            connections: self.inner.conns().len(),
            connections_total: c.connections_total.get(),
            subscriptions: c.subscriptions.load(Ordering::Relaxed),
            messages_sent: c.sent.load(Ordering::Relaxed),
            refused_handshakes: c.refused_handshakes.get(),
            rate_limited_disconnects: c.rate_limited.get(),
            callback_panics: c.panics.get(),
            callback_timeouts: c.timeouts.get(),
            oversized_dropped: self.inner.hub.oversized_dropped.load(Ordering::Relaxed),
            adapter_backlog: self.inner.hub.pubsub.backlog(),
            adapter_dropped: self.inner.hub.pubsub.dropped(),
            unauthorized: c.unauthorized.get(),
            streams: self.inner.hub.stream_count(),
            messages_received: c.messages_received.get(),
            broadcasts: self.inner.hub.broadcasts_received.load(Ordering::Relaxed),
            deliveries: self.inner.hub.delivered.load(Ordering::Relaxed),
            too_slow_disconnects: c.too_slow.load(Ordering::Relaxed),
            adapter_reconnects: self.inner.hub.pubsub.reconnects(),
            history_appends: r.appends.load(Ordering::Relaxed),
            history_append_failures: r.append_failures.load(Ordering::Relaxed),
            history_reads: r.history_reads.load(Ordering::Relaxed),
            history_misses: r.history_misses.load(Ordering::Relaxed),
            restored_sessions: r.restored_sessions.load(Ordering::Relaxed),
            uptime_secs: self.inner.started.elapsed().as_secs(),
        }
    }
}
