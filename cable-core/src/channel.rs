//! User channels (Rails' `ActionCable::Channel::Base`) and the context they
//! work through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::{FutureExt, Shared};
use serde::Serialize;
use serde_json::Value;
use tokio::task::AbortHandle;

use crate::auth::Identifiers;
use crate::broker::HistoryPolicy;
use crate::cable::Broadcaster;
use crate::connection::ConnShared;
use crate::hub::{Control, Target};
use crate::json;
use crate::naming::{broadcasting_for, ToParam};
use crate::protocol::Frame;
use crate::pubsub::{Ack, PubSubError};

/// A subscription's parameters: the decoded identifier, `channel` included.
pub type Params = serde_json::Map<String, Value>;

/// An error from channel code. The client is sent nothing (as in Rails); the
/// server logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// No action of that name (Rails: `Unable to process ChatChannel#name`).
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    /// The data sent does not fit what the action expects.
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// A value could not be encoded as JSON, or decoded from it (channel
    /// code's own `serde_json` calls; the data of an `#[action]` that does
    /// not decode is [`ChannelError::InvalidData`]).
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// A transmitted message is larger than a client may be sent
    /// ([`crate::CableConfig::max_outbound_message_bytes`]).
    #[error("message of {size} bytes is over the limit of {limit} bytes a client may be sent")]
    MessageTooLarge {
        /// The message's size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A broadcast failed in the pub/sub adapter.
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    /// Anything else.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// The data of a typed action (an `#[action]` method's last argument):
/// anything serde decodes from JSON. Implemented for every
/// `DeserializeOwned` type; named so that a type that cannot be one says so.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the data of an #[action]: it does not implement serde's `Deserialize`",
    label = "the data of this action",
    note = "derive it: `#[derive(serde::Deserialize)]` on `{Self}`"
)]
pub trait ActionData: serde::de::DeserializeOwned {}

impl<T: serde::de::DeserializeOwned> ActionData for T {}

/// What channel code returns: `Ok` or a [`ChannelError`] (logged, the client
/// is sent nothing).
pub type ChannelResult<T = ()> = Result<T, ChannelError>;

impl ChannelError {
    /// Wraps any error (or message) as [`ChannelError::Other`].
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ChannelError::Other(e.into())
    }
}

/// A channel: one instance per subscription, like a Rails channel object.
///
/// All methods run on the connection's task, one at a time, so `&mut self`
/// state needs no locking. Actions are dispatched by name through
/// [`Channel::perform`]; an action the channel does not know should return
/// [`ChannelError::UnknownAction`] (the default does).
///
/// ```
/// use cable_core::{async_trait, Channel, ChannelError, Context};
/// use serde_json::{json, Value};
///
/// #[derive(Default)]
/// struct EchoChannel;
///
/// #[async_trait]
/// impl Channel for EchoChannel {
///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
///         let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
///         ctx.stream_from(format!("echo_{room}"));
///         Ok(())
///     }
///     async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> Result<(), ChannelError> {
///         match action {
///             "ping" => ctx.transmit(&json!({"pong": data["n"]})),
///             _ => Err(ChannelError::UnknownAction(action.into())),
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait Channel: Send + 'static {
    /// Runs when the client subscribes. Call [`Context::stream_from`] here, or
    /// [`Context::reject`] to refuse the subscription.
    async fn subscribed(&mut self, _ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        Ok(())
    }

    /// Runs when the subscription ends (unsubscribe, rejection or socket close),
    /// before its streams and timers are stopped.
    async fn unsubscribed(&mut self, _ctx: &mut Context<'_>) {}

    /// Runs action `action` (`data["action"]`, or `"receive"` when absent) with
    /// the whole decoded data object, `action` included.
    async fn perform(
        &mut self,
        _ctx: &mut Context<'_>,
        action: &str,
        _data: Value,
    ) -> ChannelResult {
        Err(ChannelError::UnknownAction(action.to_owned()))
    }

    /// Runs when a timer set with [`Context::periodically`] fires.
    async fn timer(&mut self, _ctx: &mut Context<'_>, _name: &str) -> Result<(), ChannelError> {
        Ok(())
    }
}

/// How [`Context::stream_from_with`] streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    history: StreamHistory,
    whisper: bool,
    presence: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum StreamHistory {
    #[default]
    Off,
    Default,
    Policy(HistoryPolicy),
}

impl StreamOptions {
    /// A plain stream, as [`Context::stream_from`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The stream keeps history under the cable's policy, as
    /// [`Context::stream_from_with_history`].
    pub fn history(mut self) -> Self {
        self.history = StreamHistory::Default;
        self
    }

    /// The stream keeps history under `policy`, as
    /// [`Context::stream_from_with_policy`].
    pub fn history_policy(mut self, policy: HistoryPolicy) -> Self {
        self.history = StreamHistory::Policy(policy);
        self
    }

    /// The subscription's `whisper` commands go to this stream (AnyCable's
    /// whispers, Rails' `stream_from s, whisper: true`): every other
    /// subscriber gets them, on any node; the sender does not; they are
    /// never stored in history. One whisper stream per subscription: the
    /// last one started wins.
    pub fn whisper(mut self) -> Self {
        self.whisper = true;
        self
    }

    /// The subscription's presence commands (`join`, `leave`, `presence`)
    /// work on this stream (AnyCable's presence): its subscribers are told
    /// who joins and leaves, on every node sharing the broker. One presence
    /// stream per subscription: the last one started wins.
    pub fn presence(mut self) -> Self {
        self.presence = true;
        self
    }
}

/// Per-subscription state the context works on.
pub(crate) struct SubState {
    pub(crate) identifier: Arc<str>,
    pub(crate) class: Arc<str>,
    /// The decoded identifier. Dropped once the subscription is confirmed
    /// and decoded again if channel code asks later (then kept): an idle
    /// subscription does not keep a parsed copy of its identifier.
    params: std::sync::OnceLock<Params>,
    pub(crate) serial: u64,
    pub(crate) streams: Vec<String>,
    pub(crate) pending: Vec<(String, Shared<Ack>)>,
    pub(crate) timers: Vec<AbortHandle>,
    pub(crate) rejected: bool,
    pub(crate) stopped: bool,
    /// Streams started with history, and their policies.
    pub(crate) history: Vec<(String, HistoryPolicy)>,
    /// Streams changed since the session was last stored.
    pub(crate) dirty: bool,
    /// Set while a history replay is due: live frames wait in it (a resumed
    /// session's subscription, or a subscribe with history).
    pub(crate) hold: Option<Arc<crate::hub::Hold>>,
    /// Where `whisper` commands go ([`StreamOptions::whisper`]).
    pub(crate) whisper: Option<String>,
    /// Where presence commands work ([`StreamOptions::presence`]).
    pub(crate) presence: Option<String>,
    /// This subscription joined its presence stream (and has not left).
    pub(crate) joined: bool,
    /// Who the subscription is present as when it joins, whatever id the
    /// client gives ([`Context::present_as`]).
    /// Boxed: rare, and it would make every subscription 88 bytes larger.
    pub(crate) present_as: Option<Box<crate::protocol::PresenceJoin>>,
}

/// Pushes without the doubling's spare slots while the vector is small: a
/// subscription mostly has one or two streams, kept for its life.
fn push_small<T>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() && v.len() < 4 {
        v.reserve_exact(1);
    }
    v.push(item);
}

/// Params rebuilt at their exact size: the parser's map keeps room for
/// several keys (some 400 bytes for a one-key identifier).
pub(crate) fn compact_params(params: Params) -> Params {
    params.into_iter().collect()
}

impl SubState {
    pub(crate) fn new(identifier: Arc<str>, class: Arc<str>, params: Params, serial: u64) -> Self {
        SubState {
            identifier,
            class,
            params: params.into(),
            serial,
            streams: Vec::new(),
            pending: Vec::new(),
            timers: Vec::new(),
            rejected: false,
            stopped: false,
            history: Vec::new(),
            dirty: false,
            hold: None,
            whisper: None,
            presence: None,
            joined: false,
            present_as: None,
        }
    }

    /// The params, decoded again from the identifier if they were dropped.
    pub(crate) fn params(&self) -> &Params {
        self.params
            .get_or_init(|| match serde_json::from_str(&self.identifier) {
                Ok(Value::Object(m)) => compact_params(m),
                // It was decoded as an object when the subscription was made.
                _ => Params::new(),
            })
    }

    /// Drops the decoded params (see the field).
    pub(crate) fn forget_params(&mut self) {
        self.params.take();
    }

    pub(crate) fn stream_from(&mut self, conn: &ConnShared, stream: String) {
        if self.stopped || self.streams.contains(&stream) {
            return;
        }
        tracing::info!("{} is streaming from {}", self.class, stream);
        let ack = conn.cable.hub.add(
            &stream,
            &self.identifier,
            conn.id,
            match &self.hold {
                Some(hold) => Target::Held(hold.clone()),
                None => Target::Frames(conn.outbox.clone()),
            },
        );
        self.pending.push((stream.clone(), ack));
        push_small(&mut self.streams, stream);
        self.dirty = true;
    }

    /// [`SubState::stream_from`], with the stream keeping history under
    /// `policy`: marked on this node at once and in the broker before the
    /// confirmation (a failed mark is logged and does not fail the
    /// subscription: live delivery does not need it).
    pub(crate) fn stream_from_with_history(
        &mut self,
        conn: &ConnShared,
        stream: String,
        policy: HistoryPolicy,
    ) {
        if self.stopped {
            return;
        }
        let mark = conn.cable.reliable.mark(&stream, policy);
        match self.history.iter_mut().find(|(s, _)| *s == stream) {
            Some(entry) => entry.1 = policy,
            None => self.history.push((stream.clone(), policy)),
        }
        self.dirty = true;
        self.stream_from(conn, stream.clone());
        if let Some(mark) = mark {
            let ack: Ack = Box::pin(async move {
                mark.await;
                Ok(())
            });
            self.pending.push((stream, ack.shared()));
        }
    }

    pub(crate) fn stop_stream_from(&mut self, conn: &ConnShared, stream: &str) {
        if let Some(i) = self.streams.iter().position(|s| s == stream) {
            self.streams.swap_remove(i);
            self.pending.retain(|(s, _)| s != stream);
            self.history.retain(|(s, _)| s != stream);
            if self.whisper.as_deref() == Some(stream) {
                self.whisper = None;
            }

            self.dirty = true;
            tracing::info!("{} stopped streaming from {}", self.class, stream);
            conn.cable.hub.remove(stream, &self.identifier, conn.id);
        }
    }

    pub(crate) fn stop_all_streams(&mut self, conn: &ConnShared) {
        self.pending.clear();
        self.history.clear();
        self.whisper = None;
        self.dirty = true;
        for stream in self.streams.drain(..) {
            tracing::info!("{} stopped streaming from {}", self.class, stream);
            conn.cable.hub.remove(&stream, &self.identifier, conn.id);
        }
    }

    /// Stops streams and timers; later `stream_from` calls are no-ops.
    pub(crate) fn stop(&mut self, conn: &ConnShared) {
        self.stopped = true;
        self.stop_all_streams(conn);
        for t in self.timers.drain(..) {
            t.abort();
        }
    }
}

/// What channel code can do: read params and identifiers, stream, transmit,
/// reject, broadcast, set timers. Borrowed for the length of one callback.
///
/// ```
/// use cable_core::{async_trait, Cable, Channel, ChannelResult, Context};
/// use serde_json::json;
///
/// struct Greeting(&'static str); // app state, given to the builder
///
/// #[derive(Default)]
/// struct RoomChannel;
///
/// #[async_trait]
/// impl Channel for RoomChannel {
///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
///         // `{"channel":"RoomChannel","room":"42"}`
///         let Some(room) = ctx.param_str("room").map(str::to_owned) else {
///             ctx.reject();
///             return Ok(());
///         };
///         let user = ctx.identified("current_user").unwrap_or("guest").to_owned();
///         ctx.stream_from(format!("room_{room}"));
///         let hello = ctx.state::<Greeting>().map_or("hi", |g| g.0);
///         ctx.transmit(&json!({ "hello": hello, "user": user }))
///     }
/// }
///
/// let cable = Cable::builder()
///     .state(Greeting("welcome"))
///     .channel("RoomChannel", RoomChannel::default)
///     .build();
/// # drop(cable);
/// ```
pub struct Context<'a> {
    pub(crate) conn: &'a ConnShared,
    pub(crate) sub: &'a mut SubState,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("identifier", &self.sub.identifier)
            .field("connection", &self.conn.connection_identifier)
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// The application state of type `T` given to
    /// [`CableBuilder::state`](crate::CableBuilder::state) (see its example).
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.conn.cable.state.get()
    }

    /// The connection's typed data, put there by the connection hook with
    /// [`Identifiers::with_data`](crate::Identifiers::with_data) (the user
    /// record): `ctx.connection_data::<User>()`.
    pub fn connection_data<T>(&self) -> Option<std::sync::Arc<T>>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.conn.identifiers.data()
    }

    /// The subscription's params (the decoded identifier, `channel` included).
    pub fn params(&self) -> &Params {
        self.sub.params()
    }

    /// Param `name`.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.sub.params().get(name)
    }

    /// Param `name` when it is a string.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.param(name).and_then(Value::as_str)
    }

    /// The subscription identifier exactly as the client sent it.
    pub fn identifier(&self) -> &str {
        &self.sub.identifier
    }

    /// The registered channel name (`"ChatChannel"`).
    pub fn channel_class(&self) -> &str {
        &self.sub.class
    }

    /// The connection's identifiers (from the connection hook).
    pub fn identifiers(&self) -> &Identifiers {
        &self.conn.identifiers
    }

    /// Identifier `name` of the connection (`current_user`, ...).
    pub fn identified(&self, name: &str) -> Option<&str> {
        self.conn.identifiers.get(name)
    }

    /// Rails' `connection_identifier`.
    pub fn connection_identifier(&self) -> &str {
        &self.conn.connection_identifier
    }

    /// Whether the client speaks AnyCable's extended protocol
    /// (`actioncable-v1-ext-json`: session ids, resume, positions it can ask
    /// history by), as `@anycable/web` does; false for `@rails/actioncable`.
    /// A channel can stream with history for such clients only, so that the
    /// frames a plain client gets stay Rails' (positions ride on every frame
    /// of a stream with history, on any protocol).
    pub fn extended_protocol(&self) -> bool {
        self.conn.extended
    }

    /// Streams broadcasts on `stream` to this subscription. Inside `subscribed`,
    /// the confirmation waits until the adapter has acknowledged every stream.
    /// A no-op after the subscription ended (as in Rails 7.2+).
    pub fn stream_from(&mut self, stream: impl Into<String>) {
        self.sub.stream_from(self.conn, stream.into());
    }

    /// Like [`stream_from`](Self::stream_from), and `stream` keeps history
    /// ([`CableConfig::history_policy`](crate::CableConfig::history_policy)):
    /// its broadcasts, from any node sharing the broker, carry `stream_id`,
    /// `epoch` and `offset`, and a client that was away can ask for what it
    /// missed (AnyCable's reliable streams).
    pub fn stream_from_with_history(&mut self, stream: impl Into<String>) {
        let policy = self.conn.cable.reliable.default_policy;
        self.stream_from_with_policy(stream, policy);
    }

    /// Like [`stream_from_with_history`](Self::stream_from_with_history),
    /// keeping what `policy` says for this stream.
    pub fn stream_from_with_policy(&mut self, stream: impl Into<String>, policy: HistoryPolicy) {
        self.sub
            .stream_from_with_history(self.conn, stream.into(), policy);
    }

    /// [`stream_from`](Self::stream_from) with options: history, whispers.
    ///
    /// ```
    /// # use cable_core::{async_trait, Channel, ChannelError, Context, StreamOptions};
    /// # struct Room;
    /// # #[async_trait]
    /// # impl Channel for Room {
    /// async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
    ///     // Messages keep history; `whisper` commands ("typing…") reach
    ///     // the room's other subscribers, never stored.
    ///     ctx.stream_from_with("room:1", StreamOptions::new().history().whisper());
    ///     Ok(())
    /// }
    /// # }
    /// ```
    pub fn stream_from_with(&mut self, stream: impl Into<String>, options: StreamOptions) {
        let stream = stream.into();
        match options.history {
            StreamHistory::Off => self.sub.stream_from(self.conn, stream.clone()),
            StreamHistory::Default => self.stream_from_with_history(stream.clone()),
            StreamHistory::Policy(p) => self.stream_from_with_policy(stream.clone(), p),
        }
        if self.sub.stopped {
            return;
        }
        if options.presence {
            self.sub.presence = Some(stream.clone());
            self.sub.dirty = true;
        }
        if options.whisper {
            self.sub.whisper = Some(stream);
            self.sub.dirty = true;
        }
    }

    /// Decides who this subscription is present as on its presence stream
    /// ([`StreamOptions::presence`]): when the client joins (the `join`
    /// command, or a `subscribe` carrying presence), it joins as `id` with
    /// `info`, whatever id and info it sent, so nobody can be listed as
    /// someone else. Nothing is joined until the client asks, so clients
    /// that never join see no presence traffic of their own making. Call it
    /// in [`Channel::subscribed`]; it is stored with the session, so a
    /// resumed subscription (where `subscribed` does not run) keeps it.
    ///
    /// ```
    /// use cable_core::{async_trait, Cable, Channel, ChannelError, Context, Identifiers, StreamOptions};
    /// use cable_test::TestCable;
    /// use serde_json::{json, Value};
    ///
    /// struct Room;
    /// #[async_trait]
    /// impl Channel for Room {
    ///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
    ///         ctx.stream_from_with("room", StreamOptions::new().presence());
    ///         let user = ctx.identified("user").unwrap_or_default().to_owned();
    ///         ctx.present_as(user.clone(), json!({ "name": user }));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cable = TestCable::new(Cable::builder().channel("Room", || Room));
    /// let id = r#"{"channel":"Room"}"#;
    /// let presence = |c: &cable_test::Connection| -> Vec<Value> {
    ///     c.frames().iter().filter_map(|f| serde_json::from_str::<Value>(f).ok())
    ///         .filter(|f| f["type"] == "presence").map(|f| f["message"].clone()).collect()
    /// };
    /// let ann = cable.stub_connection(Identifiers::new().with("user", "ann")).await;
    /// ann.subscribe_to(id).await.assert_confirmed();
    /// assert_eq!(presence(&ann), [] as [Value; 0], "not present before joining");
    /// ann.send(json!({"command": "join", "identifier": id, "presence": {"id": "x"}}));
    /// ann.settle().await;
    /// assert_eq!(presence(&ann), [json!({"type": "join", "id": "ann", "info": {"name": "ann"}})]);
    ///
    /// // Bob's client asks to be present as ann, on subscribe: he joins as bob.
    /// let bob = cable.stub_connection(Identifiers::new().with("user", "bob")).await;
    /// bob.send(json!({"command": "subscribe", "identifier": id,
    ///                 "presence": {"id": "ann", "info": {"name": "ann"}}}));
    /// bob.send(json!({"command": "presence", "identifier": id, "data": {}}));
    /// bob.settle().await;
    /// let info = presence(&bob).pop().unwrap();
    /// assert_eq!(info["total"], 2);
    /// assert_eq!(info["records"][1], json!({"id": "bob", "info": {"name": "bob"}}));
    /// # }
    /// ```
    pub fn present_as(&mut self, id: impl Into<String>, info: Value) {
        self.sub.present_as = Some(Box::new(crate::protocol::PresenceJoin {
            id: id.into(),
            info,
        }));
    }

    /// Who is present on this subscription's presence stream
    /// ([`StreamOptions::presence`]), on every node sharing the broker.
    /// [`BrokerError::Unsupported`](crate::broker::BrokerError::Unsupported)
    /// without a presence stream or a broker that keeps presence.
    pub async fn presence(
        &self,
    ) -> Result<crate::broker::PresenceInfo, crate::broker::BrokerError> {
        let unsupported = crate::broker::BrokerError::Unsupported {
            broker: "none",
            what: "presence without a presence stream",
        };
        let (Some(stream), Some(broker)) = (&self.sub.presence, &self.conn.cable.reliable.broker)
        else {
            return Err(unsupported);
        };
        broker.presence_info(stream).await
    }

    /// Streams from Rails' `broadcasting_for(key)` of this channel, e.g.
    /// `chat:42` for `ChatChannel` and key `42`.
    pub fn stream_for<K: ToParam + ?Sized>(&mut self, key: &K) {
        let name = broadcasting_for(&self.sub.class, key);
        self.stream_from(name);
    }

    /// Stops streaming from `stream`.
    pub fn stop_stream_from(&mut self, stream: &str) {
        self.sub.stop_stream_from(self.conn, stream);
    }

    /// Stops streaming from `broadcasting_for(key)`.
    pub fn stop_stream_for<K: ToParam + ?Sized>(&mut self, key: &K) {
        let name = broadcasting_for(&self.sub.class, key);
        self.stop_stream_from(&name);
    }

    /// Stops every stream of this subscription.
    pub fn stop_all_streams(&mut self) {
        self.sub.stop_all_streams(self.conn);
    }

    /// The streams this subscription listens to.
    pub fn streams(&self) -> &[String] {
        &self.sub.streams
    }

    /// Sends `{"identifier":…,"message":<message>}` to this client only.
    /// A message over [`crate::CableConfig::max_outbound_message_bytes`] is
    /// refused with [`ChannelError::MessageTooLarge`].
    pub fn transmit<T: Serialize + ?Sized>(&self, message: &T) -> Result<(), ChannelError> {
        let encoded = json::encode(message)?;
        let limit = self.conn.cable.config.max_outbound_message_bytes;
        if encoded.len() > limit {
            return Err(ChannelError::MessageTooLarge {
                size: encoded.len(),
                limit,
            });
        }
        tracing::debug!(
            "{} transmitting {}",
            self.sub.class,
            crate::logging::Snip(&encoded)
        );
        // A closed or overflowing outbox ends the connection on its own; the
        // channel has nothing to do about it.
        let _ = self
            .conn
            .outbox
            .push(Frame::message(&self.sub.identifier, &encoded));
        Ok(())
    }

    /// Refuses the subscription (call from `subscribed`): the client gets
    /// `reject_subscription` after `unsubscribed` has run.
    pub fn reject(&mut self) {
        self.sub.rejected = true;
    }

    /// Whether [`Context::reject`] was called.
    pub fn is_rejected(&self) -> bool {
        self.sub.rejected
    }

    /// A handle to broadcast from anywhere (clone it into tasks).
    pub fn broadcaster(&self) -> Broadcaster {
        self.conn.cable.broadcaster()
    }

    /// Broadcasts `message` on `stream` through the pub/sub adapter.
    pub async fn broadcast<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        message: &T,
    ) -> Result<(), ChannelError> {
        Ok(self
            .conn
            .cable
            .broadcaster()
            .broadcast(stream, message)
            .await?)
    }

    /// Calls [`Channel::timer`] with `name` every `every`, until the
    /// subscription ends (Rails' `periodically`). A zero period is refused.
    pub fn periodically(&mut self, name: &str, every: Duration) -> Result<(), ChannelError> {
        if every.is_zero() {
            return Err(ChannelError::InvalidData(
                "periodically: the period must be positive".into(),
            ));
        }
        if self.sub.stopped {
            return Ok(());
        }
        let tx = self.conn.ctl.clone();
        let serial = self.sub.serial;
        let name: Arc<str> = name.into();
        // Set while a tick waits in the session's mailbox: a busy
        // subscription gets at most one pending tick per timer, not a pile.
        let pending = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if pending.swap(true, Ordering::AcqRel) {
                    continue;
                }
                if tx
                    .send(Control::Timer {
                        serial,
                        name: name.clone(),
                        pending: pending.clone(),
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        self.sub.timers.push(task.abort_handle());
        Ok(())
    }
}
