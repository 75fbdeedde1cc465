//! Socket-free connections and subscriptions: Rails' `Connection::TestCase`
//! and `Channel::TestCase` for a [`Cable`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cable_core::transport::{self, Inbound, Outbox, Outgoing, Probe, Snapshot};
use cable_core::{broadcasting_for, Cable, CableBuilder, Identifiers, ToParam};
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::recording::{json_list, Broadcasts, RecordingPubSub};
use crate::{frames, Request, WAIT};

/// A [`Cable`] under test, with every broadcast recorded: the place to open
/// socket-free connections from.
///
/// It builds your [`CableBuilder`] (channels, connect hook, config) with a
/// [`RecordingPubSub`] in place of whatever adapter it had, so that
/// [`assert_broadcast_on`](Self::assert_broadcast_on) sees what channels
/// and the application broadcast. Connections run the real session code of
/// `cable-core`: the same parsing, ordering, limits and guards as over a
/// socket.
///
/// ```
/// use cable_core::{async_trait, Cable, Channel, ChannelError, Context, Identifiers};
/// use cable_test::TestCable;
/// use serde_json::{json, Value};
///
/// #[derive(Default)]
/// struct RoomChannel;
///
/// #[async_trait]
/// impl Channel for RoomChannel {
///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
///         match ctx.param_str("room") {
///             Some(room) => ctx.stream_from(format!("room_{room}")),
///             None => ctx.reject(),
///         }
///         Ok(())
///     }
///     async fn perform(&mut self, ctx: &mut Context<'_>, action: &str, data: Value) -> Result<(), ChannelError> {
///         match action {
///             "speak" => {
///                 let room = ctx.param_str("room").unwrap_or_default().to_owned();
///                 ctx.broadcast(&format!("room_{room}"), &json!({"body": data["body"]})).await
///             }
///             "whoami" => ctx.transmit(&json!({"user": ctx.identified("user")})),
///             _ => Err(ChannelError::UnknownAction(action.into())),
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cable = TestCable::new(Cable::builder().channel("RoomChannel", RoomChannel::default));
/// let conn = cable.stub_connection(Identifiers::new().with("user", "alice")).await;
///
/// let sub = conn.subscribe("RoomChannel", json!({"room": "1"})).await;
/// sub.assert_confirmed();
/// sub.assert_has_stream("room_1");
///
/// sub.perform("speak", json!({"body": "hi"})).await;
/// cable.assert_broadcast_on("room_1", json!({"body": "hi"}));
///
/// sub.perform("whoami", json!({})).await;
/// sub.assert_transmitted(json!({"user": "alice"}));
///
/// conn.subscribe("RoomChannel", json!({})).await.assert_rejected();
///
/// sub.unsubscribe().await;
/// sub.assert_no_streams();
/// conn.disconnect().await;
/// assert_eq!(cable.cable().stats().streams, 0);
/// # }
/// ```
#[derive(Debug)]
pub struct TestCable {
    cable: Cable,
    broadcasts: Broadcasts,
}

/// The connect hook refused the connection (Rails'
/// `assert_reject_connection`).
#[derive(Debug, thiserror::Error)]
#[error("connection rejected; the server sent {frames:?}")]
pub struct Rejected {
    /// The text frames sent before the close (the `unauthorized`
    /// disconnect, byte for byte).
    pub frames: Vec<String>,
    /// The close code that followed.
    pub close_code: Option<u16>,
}

impl TestCable {
    /// Drives `cable` as it is, with its own adapter: nothing is recorded
    /// (the broadcast assertions see no broadcasts). For tests of an
    /// adapter or of the cable itself.
    pub fn from_cable(cable: Cable) -> TestCable {
        TestCable {
            cable,
            broadcasts: Broadcasts::default(),
        }
    }

    /// Builds `builder` with a [`RecordingPubSub`] as its adapter.
    pub fn new(builder: CableBuilder) -> TestCable {
        let broadcasts = Broadcasts::default();
        let record = broadcasts.clone();
        let cable = builder
            .pubsub(move |d| RecordingPubSub::new(d, record))
            .build();
        TestCable { cable, broadcasts }
    }

    /// The cable, for `broadcast`, `stats` and the transport functions.
    pub fn cable(&self) -> &Cable {
        &self.cable
    }

    /// What was broadcast so far.
    pub fn broadcasts(&self) -> &Broadcasts {
        &self.broadcasts
    }

    /// See [`Broadcasts::assert_broadcast_on`].
    #[track_caller]
    pub fn assert_broadcast_on(&self, stream: &str, message: Value) {
        self.broadcasts.assert_broadcast_on(stream, message)
    }

    /// See [`Broadcasts::assert_broadcasts`].
    #[track_caller]
    pub fn assert_broadcasts(&self, stream: &str, n: usize) {
        self.broadcasts.assert_broadcasts(stream, n)
    }

    /// Ends `current_user` `user`'s connections as Rails'
    /// `remote_connections.where(current_user: user).disconnect(reconnect:)`
    /// does; panics if the pub/sub adapter fails.
    pub async fn remote_disconnect_user(&self, user: &str, reconnect: bool) {
        let identifiers = Identifiers::new().with("current_user", user);
        let sent = self.cable.remote_disconnect(&identifiers, reconnect).await;
        sent.unwrap_or_else(|e| panic!("remote disconnect of {user}: {e}"));
    }

    /// Opens a connection that runs the real connect hook on `request`
    /// (Rails' `connect`): the connection once welcomed, or [`Rejected`].
    ///
    /// ```
    /// use cable_core::{authenticate_with, Cable, Identifiers, Unauthorized};
    /// use cable_test::{Request, TestCable};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cable = TestCable::new(Cable::builder().authenticate(authenticate_with(|req| async move {
    ///     match req.cookie("user_id") {
    ///         Some(id) => Ok(Identifiers::new().with("current_user", id)),
    ///         None => Err(Unauthorized::because("no cookie")),
    ///     }
    /// })));
    /// let conn = cable.connect(Request::new().cookie("user_id", "42")).await.unwrap();
    /// assert_eq!(conn.identified("current_user").as_deref(), Some("42"));
    /// cable.assert_reject_connection(Request::new()).await;
    /// # }
    /// ```
    pub async fn connect(&self, request: Request) -> Result<Connection, Rejected> {
        let (tx, inbound) = inbound();
        let outbox = transport::new_outbox(&self.cable);
        let task = tokio::spawn(transport::run_connection(
            &self.cable,
            request.build(),
            inbound,
            outbox.clone(),
        ));
        let conn = Connection::new(self.cable.clone(), tx, outbox, task);
        conn.welcomed().await?;
        Ok(conn)
    }

    /// Reconnects as session `sid` with AnyCable's extended protocol (as
    /// @anycable/web does after a drop); panics unless the server restores
    /// it (`"restored": true` in the welcome).
    pub async fn resume(&self, sid: &str) -> Connection {
        let conn = self
            .connect(Request::new().ext().query("sid", sid))
            .await
            .expect("resumed");
        let welcome = conn.welcome();
        assert_eq!(welcome["restored"], json!(true), "{welcome}");
        conn
    }

    /// Panics unless the connect hook refuses `request`.
    #[track_caller]
    pub fn assert_reject_connection(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            if let Ok(conn) = self.connect(request).await {
                panic!(
                    "expected the connection to be rejected (at {caller}); it was identified as {:?}",
                    conn.identifiers()
                );
            }
        }
    }

    /// Opens a connection already identified by `identifiers`, without the
    /// connect hook (Rails' `stub_connection`).
    pub async fn stub_connection(&self, identifiers: Identifiers) -> Connection {
        let (tx, inbound) = inbound();
        let outbox = transport::new_outbox(&self.cable);
        let task = tokio::spawn(transport::run_identified_connection(
            &self.cable,
            identifiers,
            inbound,
            outbox.clone(),
        ));
        let conn = Connection::new(self.cable.clone(), tx, outbox, task);
        if let Err(e) = conn.welcomed().await {
            panic!("a stubbed connection was not welcomed: {e}");
        }
        conn
    }
}

type Inbox = std::pin::Pin<Box<dyn futures_util::Stream<Item = Inbound> + Send>>;

fn inbound() -> (mpsc::UnboundedSender<Inbound>, Inbox) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    (
        tx,
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))),
    )
}

/// State shared by a connection and its subscriptions.
#[derive(Debug)]
struct Shared {
    cable: Cable,
    tx: Mutex<Option<mpsc::UnboundedSender<Inbound>>>,
    outbox: Arc<Outbox>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Everything the server sent, in order.
    sent: Mutex<Vec<Outgoing>>,
    /// How many of `sent` [`Connection::next_frame`] has handed out.
    cursor: Mutex<usize>,
    /// The session's state at the last settle.
    snapshot: Mutex<Snapshot>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // One failed assertion must not turn every later call into a
    // poisoned-lock panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn send(&self, item: Inbound) {
        if let Some(tx) = &*lock(&self.tx) {
            // The session may have ended; what it would do with this is
            // then nothing, which the caller sees in the frames.
            let _ = tx.send(item);
        }
    }

    /// Moves whatever the outbox holds now into `sent`, without waiting.
    fn drain(&self) {
        let mut sent = lock(&self.sent);
        loop {
            let mut buf = Vec::new();
            let more = self.outbox.pop_batch(&mut buf, 256).now_or_never();
            sent.append(&mut buf);
            if more != Some(true) {
                break;
            }
        }
    }

    /// Waits until the session has handled everything sent so far, and
    /// records its state. A session that ended holds nothing.
    async fn settle(&self) {
        let (probe, answer) = Probe::new();
        self.send(Inbound::Probe(probe));
        let snapshot = match tokio::time::timeout(WAIT, answer.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => Snapshot::default(),
            Err(_) => panic!(
                "the session did not handle its commands within {WAIT:?}; sent so far: {:?}",
                self.texts()
            ),
        };
        *lock(&self.snapshot) = snapshot;
        self.drain();
    }

    fn texts(&self) -> Vec<String> {
        self.drain();
        lock(&self.sent)
            .iter()
            .filter_map(|o| match o {
                Outgoing::Text(f) => Some(f.as_str().to_owned()),
                _ => None,
            })
            .collect()
    }
}

/// A connection without a socket, driven through `cable-core`'s transport
/// API. Subscriptions made from it share it; it ends on
/// [`disconnect`](Self::disconnect) or when it and its subscriptions are
/// dropped.
///
/// Besides the Rails-style helpers it gives the wire: [`send`](Self::send)
/// any command, read [`frames`](Self::frames) or wait for the
/// [`next_frame`](Self::next_frame).
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    fn new(
        cable: Cable,
        tx: mpsc::UnboundedSender<Inbound>,
        outbox: Arc<Outbox>,
        task: JoinHandle<()>,
    ) -> Connection {
        Connection {
            shared: Arc::new(Shared {
                cable,
                tx: Mutex::new(Some(tx)),
                outbox,
                task: Mutex::new(Some(task)),
                sent: Mutex::new(Vec::new()),
                cursor: Mutex::new(0),
                snapshot: Mutex::new(Snapshot::default()),
            }),
        }
    }

    /// Waits for the first frame: the welcome, or the refusal.
    async fn welcomed(&self) -> Result<(), Rejected> {
        let first = self.next_frame().await;
        match first {
            Outgoing::Text(f) if is_welcome(f.as_str()) => {
                self.shared.settle().await;
                Ok(())
            }
            _ => {
                self.ended().await;
                let close_code = lock(&self.shared.sent).iter().find_map(|o| match o {
                    Outgoing::Close { code, .. } => Some(*code),
                    _ => None,
                });
                Err(Rejected {
                    frames: self.frames(),
                    close_code,
                })
            }
        }
    }

    /// The session id of an extended-protocol welcome
    /// (`{"type":"welcome","sid":…}`, see [`Request::ext`](crate::Request::ext)),
    /// `None` on the plain protocol.
    ///
    /// ```
    /// use cable_core::Cable;
    /// use cable_test::{Request, TestCable};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cable = TestCable::new(Cable::builder());
    /// let conn = cable.connect(Request::new().ext()).await.unwrap();
    /// let sid = conn.sid().unwrap();
    /// conn.disconnect().await;
    /// let back = cable.connect(Request::new().ext().query("sid", &sid)).await.unwrap();
    /// assert_eq!(back.welcome()["restored"], true);
    /// assert!(cable.connect(Request::new()).await.unwrap().sid().is_none());
    /// # }
    /// ```
    pub fn sid(&self) -> Option<String> {
        self.welcome()
            .get("sid")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }

    /// The welcome frame, parsed.
    pub fn welcome(&self) -> Value {
        self.frames()
            .first()
            .and_then(|f| serde_json::from_str(f).ok())
            .unwrap_or(Value::Null)
    }

    /// The connection's identifiers (from the connect hook or the stub).
    pub fn identifiers(&self) -> Identifiers {
        lock(&self.shared.snapshot).identifiers.clone()
    }

    /// Identifier `name` (Rails' `connection.current_user`).
    pub fn identified(&self, name: &str) -> Option<String> {
        self.identifiers().get(name).map(str::to_owned)
    }

    /// Subscribes to `channel` with `params` (a JSON object, or `null`)
    /// and waits until the subscription is handled; check the outcome with
    /// [`Subscription::assert_confirmed`] or
    /// [`Subscription::assert_rejected`]. The identifier is
    /// `{"channel":…}` followed by `params` in their order, as the JS
    /// client builds it.
    pub async fn subscribe(&self, channel: &str, params: Value) -> Subscription {
        let mut identifier = json!({ "channel": channel });
        match params {
            Value::Object(map) => identifier
                .as_object_mut()
                .expect("built as an object")
                .extend(map),
            Value::Null => {}
            other => panic!("subscription params must be a JSON object, got {other}"),
        }
        self.subscribe_to(&identifier.to_string()).await
    }

    /// Subscribes with `identifier` exactly as given.
    pub async fn subscribe_to(&self, identifier: &str) -> Subscription {
        let from = lock(&self.shared.sent).len();
        self.send(json!({"command": "subscribe", "identifier": identifier}));
        self.shared.settle().await;
        let reply = lock(&self.shared.sent)[from..]
            .iter()
            .find_map(|o| match o {
                Outgoing::Text(f) if f.as_str() == frames::confirm(identifier) => {
                    Some(Reply::Confirmed)
                }
                Outgoing::Text(f) if f.as_str() == frames::reject(identifier) => {
                    Some(Reply::Rejected)
                }
                _ => None,
            })
            .unwrap_or(Reply::None);
        let channel = serde_json::from_str::<Value>(identifier)
            .ok()
            .and_then(|v| v.get("channel")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Subscription {
            shared: self.shared.clone(),
            identifier: identifier.to_owned(),
            channel,
            reply,
        }
    }

    /// Sends `command` as a text frame. Nothing waits: call
    /// [`settle`](Self::settle) to wait until it is handled.
    pub fn send(&self, command: Value) {
        self.send_inbound(Inbound::Text(command.to_string()));
    }

    /// Hands `item` to the session as if the socket had read it.
    pub fn send_inbound(&self, item: Inbound) {
        self.shared.send(item);
    }

    /// Waits until the session has handled everything sent so far
    /// (timer ticks already due included).
    pub async fn settle(&self) {
        self.shared.settle().await;
    }

    /// Moves the clock on by `by` and lets the periodic timers that are
    /// due run, then settles. Each timer fires at most once per call (its
    /// missed ticks are delayed, not replayed): advance by one period per
    /// tick you expect.
    ///
    /// Needs tokio's paused clock: `#[tokio::test(start_paused = true)]`
    /// (or `tokio::time::pause()`) on a current-thread runtime, with
    /// tokio's `test-util` feature; tokio panics otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cable_core::{async_trait, Cable, Channel, ChannelError, Context, Identifiers};
    /// use cable_test::TestCable;
    /// use serde_json::json;
    ///
    /// #[derive(Default)]
    /// struct Clock(u32);
    ///
    /// #[async_trait]
    /// impl Channel for Clock {
    ///     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
    ///         ctx.periodically("tick", Duration::from_secs(5))
    ///     }
    ///     async fn timer(&mut self, ctx: &mut Context<'_>, _name: &str) -> Result<(), ChannelError> {
    ///         self.0 += 1;
    ///         ctx.transmit(&json!({"tick": self.0}))
    ///     }
    /// }
    ///
    /// # fn main() {
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// // In a test: #[tokio::test(start_paused = true)]
    /// let cable = TestCable::new(Cable::builder().channel("Clock", Clock::default));
    /// let conn = cable.stub_connection(Identifiers::new()).await;
    /// let sub = conn.subscribe("Clock", json!({})).await;
    /// conn.advance(Duration::from_secs(4)).await;
    /// sub.assert_no_transmissions();
    /// conn.advance(Duration::from_secs(1)).await;
    /// conn.advance(Duration::from_secs(5)).await;
    /// assert_eq!(sub.transmissions(), [json!({"tick": 1}), json!({"tick": 2})]);
    /// sub.unsubscribe().await;
    /// conn.advance(Duration::from_secs(5)).await;
    /// assert_eq!(sub.transmissions().len(), 2, "timers stop with the subscription");
    /// # });
    /// # }
    /// ```
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
        // Let the woken timer tasks post their ticks before the probe goes
        // in: the session handles ticks ahead of frames.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        self.shared.settle().await;
    }

    /// Every text frame the server sent so far, exactly, the welcome
    /// included.
    pub fn frames(&self) -> Vec<String> {
        self.shared.texts()
    }

    /// The next frame (text or close) not yet returned by this method,
    /// waiting for it at most [`WAIT`].
    pub async fn next_frame(&self) -> Outgoing {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.shared.drain();
            {
                let sent = lock(&self.shared.sent);
                let mut cursor = lock(&self.shared.cursor);
                if let Some(o) = sent.get(*cursor) {
                    *cursor += 1;
                    return o.clone();
                }
            }
            let mut buf = Vec::new();
            match tokio::time::timeout_at(deadline, self.shared.outbox.pop_batch(&mut buf, 256))
                .await
            {
                Ok(_) if !buf.is_empty() => lock(&self.shared.sent).append(&mut buf),
                Ok(_) => panic!(
                    "the connection ended; nothing follows {:?}",
                    self.shared.texts()
                ),
                Err(_) => panic!(
                    "no frame within {WAIT:?}; sent so far: {:?}",
                    self.shared.texts()
                ),
            }
        }
    }

    /// The next text frame, as [`next_frame`](Self::next_frame); panics on
    /// a close.
    pub async fn next_text(&self) -> String {
        match self.next_frame().await {
            Outgoing::Text(f) => f.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Panics if a frame beyond those [`next_frame`](Self::next_frame)
    /// returned arrives within `within`.
    pub async fn assert_silent(&self, within: Duration) {
        tokio::time::sleep(within).await;
        self.shared.drain();
        let sent = lock(&self.shared.sent);
        let cursor = *lock(&self.shared.cursor);
        assert!(
            sent.len() <= cursor,
            "expected nothing within {within:?}, got {:?}",
            &sent[cursor..]
        );
    }

    /// Whether the server has closed the connection (its close is queued
    /// or sent).
    pub fn is_closed(&self) -> bool {
        self.shared.outbox.is_closed()
    }

    /// Leaves like a client whose socket closed: the session runs every
    /// `unsubscribed` and the disconnect hook; returns once it has ended.
    pub async fn disconnect(&self) {
        lock(&self.shared.tx).take();
        self.ended().await;
    }

    /// Waits (at most [`WAIT`]) until the session has ended on its own: a
    /// close by the server (too slow, rate limited, shut down, remote
    /// disconnect) and everything after it (the `unsubscribed` callbacks,
    /// the disconnect hook).
    pub async fn ended(&self) {
        let task = lock(&self.shared.task).take();
        if let Some(task) = task {
            match tokio::time::timeout(WAIT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the session task failed: {e}"),
                Err(_) => panic!("the session did not end within {WAIT:?}"),
            }
        }
        self.shared.drain();
        // Ended: it holds no subscriptions, and still is who it was.
        lock(&self.shared.snapshot).subscriptions.clear();
    }

    /// The cable this connection runs on.
    pub fn cable(&self) -> &Cable {
        &self.shared.cable
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Confirmed,
    Rejected,
    /// Neither: `subscribed` failed, or the channel is unknown.
    None,
}

/// One subscription of a [`Connection`] (Rails' `subscription` in a
/// channel test). What it reports about streams is the session's state at
/// the last command any handle of the connection waited for.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    identifier: String,
    channel: String,
    reply: Reply,
}

impl Subscription {
    /// The identifier sent.
    pub fn identifier(&self) -> &str {
        &self.identifier
    }

    /// Whether the server confirmed it.
    pub fn is_confirmed(&self) -> bool {
        self.reply == Reply::Confirmed
    }

    /// Whether the server rejected it.
    pub fn is_rejected(&self) -> bool {
        self.reply == Reply::Rejected
    }

    /// Panics unless the server confirmed it.
    #[track_caller]
    pub fn assert_confirmed(&self) {
        assert!(
            self.is_confirmed(),
            "expected {} to be confirmed; it was {:?}; frames: {:?}",
            self.identifier,
            self.reply,
            self.shared.texts()
        );
    }

    /// Panics unless the server rejected it.
    #[track_caller]
    pub fn assert_rejected(&self) {
        assert!(
            self.is_rejected(),
            "expected {} to be rejected; it was {:?}; frames: {:?}",
            self.identifier,
            self.reply,
            self.shared.texts()
        );
    }

    /// Performs `action` with `data` (a JSON object; `action` is added to
    /// it, as the JS client's `perform` does) and waits until it is
    /// handled.
    pub async fn perform(&self, action: &str, data: Value) {
        let mut data = match data {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => panic!("perform data must be a JSON object, got {other}"),
        };
        data.insert("action".into(), action.into());
        self.shared.send(Inbound::Text(
            json!({
                "command": "message",
                "identifier": self.identifier,
                "data": Value::Object(data).to_string(),
            })
            .to_string(),
        ));
        self.shared.settle().await;
    }

    /// Unsubscribes and waits until `unsubscribed` has run and the streams
    /// and timers are stopped.
    pub async fn unsubscribe(&self) {
        self.shared.send(Inbound::Text(
            json!({"command": "unsubscribe", "identifier": self.identifier}).to_string(),
        ));
        self.shared.settle().await;
    }

    /// Every message this subscription was sent so far, in order: its own
    /// `transmit`s and the broadcasts on its streams (Rails'
    /// `transmissions`).
    pub fn transmissions(&self) -> Vec<Value> {
        self.shared
            .texts()
            .iter()
            .filter_map(|t| {
                let mut frame: Value = serde_json::from_str(t).ok()?;
                if frame.get("identifier")?.as_str()? != self.identifier {
                    return None;
                }
                frame.get_mut("message").map(Value::take)
            })
            .collect()
    }

    /// Panics unless `message` is among the [`transmissions`](Self::transmissions).
    #[track_caller]
    pub fn assert_transmitted(&self, message: Value) {
        let got = self.transmissions();
        assert!(
            got.contains(&message),
            "expected {} to be sent {message}; it was sent {}",
            self.identifier,
            json_list(&got)
        );
    }

    /// Panics if this subscription was sent any message.
    #[track_caller]
    pub fn assert_no_transmissions(&self) {
        let got = self.transmissions();
        assert!(
            got.is_empty(),
            "expected no messages for {}, got {}",
            self.identifier,
            json_list(&got)
        );
    }

    /// Its streams (empty once it has ended or if it was never confirmed).
    pub fn streams(&self) -> Vec<String> {
        self.held().map(|s| s.streams).unwrap_or_default()
    }

    /// How many periodic timers it has (0 once it has ended).
    pub fn timers(&self) -> usize {
        self.held().map(|s| s.timers).unwrap_or_default()
    }

    /// Whether the session holds it (confirmed and not ended).
    pub fn is_subscribed(&self) -> bool {
        self.held().is_some()
    }

    fn held(&self) -> Option<transport::SubscriptionSnapshot> {
        lock(&self.shared.snapshot)
            .subscriptions
            .iter()
            .find(|s| s.identifier == self.identifier)
            .cloned()
    }

    /// Panics unless it streams from `stream` (Rails' `assert_has_stream`).
    #[track_caller]
    pub fn assert_has_stream(&self, stream: &str) {
        self.assert_stream(stream, true);
    }

    /// Panics unless it streams from `broadcasting_for(key)` of its
    /// channel (Rails' `assert_has_stream_for`).
    #[track_caller]
    pub fn assert_has_stream_for<K: ToParam + ?Sized>(&self, key: &K) {
        self.assert_has_stream(&broadcasting_for(&self.channel, key));
    }

    /// Panics if it streams from `stream` (Rails' `assert_has_no_stream`).
    #[track_caller]
    pub fn assert_has_no_stream(&self, stream: &str) {
        self.assert_stream(stream, false);
    }

    #[track_caller]
    fn assert_stream(&self, stream: &str, wanted: bool) {
        let streams = self.streams();
        assert!(
            streams.iter().any(|s| s == stream) == wanted,
            "expected {} {}to stream from {stream:?}; its streams: {streams:?}",
            self.identifier,
            if wanted { "" } else { "not " }
        );
    }

    /// Panics if it has any stream (Rails' `assert_no_streams`).
    #[track_caller]
    pub fn assert_no_streams(&self) {
        let streams = self.streams();
        assert!(
            streams.is_empty(),
            "expected {} to have no streams; it has {streams:?}",
            self.identifier
        );
    }
}

/// A welcome: Rails' exact bytes, or the extended protocol's (with a
/// session id, perhaps restored).
fn is_welcome(text: &str) -> bool {
    text == frames::WELCOME
        || serde_json::from_str::<Value>(text)
            .is_ok_and(|v| v.get("type").and_then(Value::as_str) == Some("welcome"))
}
