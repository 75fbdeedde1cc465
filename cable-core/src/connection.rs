//! One connection's life: authenticate, welcome, then commands in and frames
//! out until the socket closes or the server ends it.
//!
//! The session owns its subscriptions and runs every channel callback on its
//! own task, so commands of one connection are handled strictly in order.
//! Frames leave only through the connection's [`Outbox`].
//!
//! User code is guarded: every callback (the connect hook included) runs
//! under `catch_unwind` and a timeout, and while it runs the session keeps
//! watching the socket, its mailbox and its outbox, so a client that leaves,
//! a shutdown or a remote disconnect is acted on at once (the callback is
//! then dropped). Whatever ends the session, drop guards give back its hub
//! entries, timers and registration.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, Stream, StreamExt};
use serde_json::Value;

use crate::auth::{ConnectRequest, Identifiers};
use crate::broker::{BrokerError, HistoryPolicy};
use crate::cable::{CommandRate, ConnHandle, Inner};
use crate::channel::{compact_params, Channel, ChannelError, Context, Params, SubState};
use crate::hub::{Control, Hold, Target};
use crate::logging::{LogLimiter, Snip};
use crate::mailbox::{mailbox, Mailbox, MailboxReceiver};
use crate::outbox::{Outbox, CLOSE_NORMAL, CLOSE_TOO_BIG};
use crate::protocol::{
    Command, CommandError, DisconnectReason, Frame, HistoryRequest, PresenceJoin, EXT_SUBPROTOCOL,
};
use crate::small_map::SmallMap;

/// Logs an error the client caused, within the connection's log budget.
macro_rules! client_error {
    ($session:expr, $($arg:tt)*) => {
        if $session.log.allow(&$session.conn.connection_identifier) {
            tracing::error!($($arg)*);
        }
    };
}

/// How long a subscription waits for the adapter to acknowledge its streams
/// before it is dropped (the client's subscribe retry then tries again).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames read and kept while a callback runs. Past this the session stops
/// reading until the callback is done (TCP then pushes back on the client).
const BACKLOG_MAX: usize = 32;

/// What a transport hands the session from the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A text frame.
    Text(String),
    /// A binary frame (ignored, as Rails does), with its length.
    Binary(usize),
    /// A control frame (ping or pong). Nothing to do but count it against
    /// the connection's command rate.
    Control,
    /// A message over the size limit arrived; the connection is closed with 1009.
    TooLarge {
        /// The size announced or read so far.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The peer broke the transport's protocol (invalid UTF-8 in a text
    /// frame, a bad frame): the connection is closed with `code` and `reason`.
    Invalid {
        /// The close code (1007 invalid data, 1002 protocol error).
        code: u16,
        /// The close reason (short, ASCII).
        reason: &'static str,
    },
    /// Not from a socket: a test driver's question, answered with a
    /// [`Snapshot`] once every item before it has been handled. See
    /// [`Probe`].
    Probe(Probe),
}

/// A test driver's question to a session (sent as [`Inbound::Probe`]):
/// what are you identified as, which subscriptions do you hold and which
/// streams does each have?
///
/// It exists because a session's state lives on its own task and frames
/// alone do not say when a command has been handled (a perform that
/// transmits nothing sends nothing). The session answers a probe in order
/// with the frames around it, after the callbacks of every earlier command
/// have finished, so the answer is both a barrier and a look inside.
/// Probes do not count against the command rate. The SSE transport sends
/// one after the commands that came with its request, to answer the
/// request once they are handled; WebSocket transports never send one.
#[derive(Clone)]
pub struct Probe(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Snapshot>>>>);

/// The answer to a [`Probe`]: which subscriptions are held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The connection's identifiers.
    pub identifiers: Identifiers,
    /// The confirmed subscriptions, sorted by identifier.
    pub subscriptions: Vec<SubscriptionSnapshot>,
}

/// One subscription in a [`Snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionSnapshot {
    /// The identifier as the client sent it.
    pub identifier: String,
    /// Its streams (the order is not significant).
    pub streams: Vec<String>,
    /// How many periodic timers it has.
    pub timers: usize,
}

/// Where a [`Probe`]'s answer arrives.
#[derive(Debug)]
pub struct ProbeAnswer(tokio::sync::oneshot::Receiver<Snapshot>);

impl Probe {
    /// A probe and where its answer will arrive.
    pub fn new() -> (Probe, ProbeAnswer) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Probe(Arc::new(std::sync::Mutex::new(Some(tx)))),
            ProbeAnswer(rx),
        )
    }

    fn answer(&self, snapshot: Snapshot) {
        let tx = self.0.lock().ok().and_then(|mut slot| slot.take());
        if let Some(tx) = tx {
            // The driver may have stopped waiting: nothing to do then.
            let _ = tx.send(snapshot);
        }
    }
}

impl ProbeAnswer {
    /// The snapshot, or `None` when the session ended without answering.
    pub async fn recv(self) -> Option<Snapshot> {
        self.0.await.ok()
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Probe")
    }
}

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Probe {}

/// Who a connection is: a request for the connect hook to judge, or
/// identifiers the transport established itself.
pub(crate) enum Hello {
    Request(Box<ConnectRequest>),
    Identified(Identifiers),
}

/// What the extended protocol adds to a session, when it is spoken.
struct Ext {
    /// The session id sent in the welcome; sessions are stored under it
    /// when `store` is set.
    sid: String,
    /// Store the session (a broker, and a positive session TTL).
    store: bool,
    /// A session restored from a stored one: its subscriptions.
    restored: Option<Vec<StoredSub>>,
    /// The client can answer pings: the pong timeout applies (not over a
    /// one-way transport, [`ConnectRequest::one_way`]).
    pongs: bool,
}

/// A session as stored in the broker (opaque text to it): identifiers, and
/// per subscription its identifier and streams. Channel instance state
/// (fields) is not kept: a restore recreates each channel with its factory
/// and does not run `subscribed`, as AnyCable.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSession {
    ids: Vec<(String, String)>,
    subs: Vec<StoredSub>,
    /// The connection data's JSON ([`Identifiers::with_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSub {
    id: String,
    streams: Vec<String>,
    /// Streams with history: name, limit, ttl in seconds.
    #[serde(default)]
    history: Vec<(String, usize, u64)>,
    /// The whisper stream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    whisper: Option<String>,
    /// The presence stream, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<String>,
    /// Who the channel said the subscription is present as: id and info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    present_as: Option<(String, serde_json::Value)>,
}

/// Longest `X-Request-ID` taken as a session id.
const MAX_REQUEST_ID: usize = 128;
/// How long a session store or fetch may take before it is given up.
const SESSION_IO_TIMEOUT: Duration = Duration::from_secs(2);

/// State shared by the session and the contexts it lends to channels.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) cable: Arc<Inner>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) identifiers: Identifiers,
    pub(crate) connection_identifier: String,
    pub(crate) ctl: Mailbox,
    /// Set when a remote disconnect ended the connection: its stored
    /// session is forgotten, so that it cannot be resumed.
    pub(crate) kicked: std::sync::atomic::AtomicBool,
    /// The client speaks AnyCable's extended protocol
    /// (`actioncable-v1-ext-json`); see [`Context::extended_protocol`].
    pub(crate) extended: bool,
}

struct Subscription {
    state: SubState,
    channel: Box<dyn Channel>,
}

fn internal_channel(connection_identifier: &str) -> String {
    format!("action_cable/{connection_identifier}")
}

/// How a guarded callback ended.
enum Outcome<T> {
    Done(T),
    Panicked(String),
    TimedOut,
    /// The connection is ending (client gone, shutdown, remote disconnect,
    /// protocol error): the callback was dropped.
    Interrupted,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs user code with a panic guard and a timeout, nothing else.
async fn contained<F: Future>(timeout: Duration, fut: F) -> Outcome<F::Output> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Ok(Ok(v)) => Outcome::Done(v),
        Ok(Err(p)) => Outcome::Panicked(panic_message(&*p)),
        Err(_) => Outcome::TimedOut,
    }
}

/// Deregisters the connection and leaves its internal channel however the
/// session ends (a panic that escaped included).
struct Registration {
    cable: Arc<Inner>,
    id: u64,
    internal: Option<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(ch) = &self.internal {
            self.cable.hub.remove(ch, "", self.id);
        }
        self.cable.deregister(self.id);
    }
}

/// Runs a connection to its end. See [`crate::Cable::run_connection`].
pub(crate) async fn run<S>(cable: Arc<Inner>, hello: Hello, inbound: S, outbox: Arc<Outbox>)
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    // Whatever ends this function (a panic included), the writer finishes.
    let _close_outbox = CloseOnDrop(outbox.clone());
    // Both boxed: this future lives as long as the connection, and would
    // otherwise keep room for the authentication's state beside the
    // session's (and a task's memory is rounded up to 128 bytes).
    let Some((identifiers, ext)) = Box::pin(authenticate(&cable, hello, &outbox)).await else {
        return;
    };
    Box::pin(run_session(cable, identifiers, inbound, outbox, ext)).await;
}

/// The identifiers (and the extended protocol's part) a session starts
/// with, or None when the connection was refused (the outbox says why).
async fn authenticate(
    cable: &Arc<Inner>,
    hello: Hello,
    outbox: &Outbox,
) -> Option<(Identifiers, Option<Box<Ext>>)> {
    if cable.is_shutting_down() {
        outbox.close(
            Some(Frame::disconnect(
                Some(DisconnectReason::ServerRestart),
                true,
            )),
            CLOSE_NORMAL,
            "",
        );
        return None;
    }
    let request = match hello {
        Hello::Request(request) => request,
        Hello::Identified(ids) => return Some((ids, None)),
    };
    let mut ext = ext_for(cable, &request);
    if let Some(ext) = ext.as_mut().filter(|e| e.pongs) {
        if let Some((ids, subs)) = restore(cable, &request).await {
            drop(request);
            ext.restored = Some(subs);
            return Some((ids, Some(Box::new(ext.take()))));
        }
    }
    let mut request = request;
    request.set_state(cable.state.clone());
    let outcome = contained(cable.config.connect_timeout, cable.auth.connect(&request)).await;
    let identifiers = match outcome {
        Outcome::Done(Ok(ids)) => ids,
        other => {
            let mut told = DisconnectReason::Unauthorized;
            match other {
                Outcome::Done(Err(e)) => {
                    told = e.disconnect_reason();
                    tracing::info!(reason = %e.reason, told = told.as_str(), "An unauthorized connection attempt was rejected");
                }
                Outcome::Panicked(msg) => {
                    cable.counters.panics.inc();
                    tracing::error!(
                        "The connection hook panicked: {}; connection refused as unauthorized",
                        Snip(&msg)
                    );
                }
                _ => {
                    cable.counters.timeouts.inc();
                    tracing::error!(
                        "The connection hook did not finish within {:?}; connection refused as unauthorized",
                        cable.config.connect_timeout
                    );
                }
            }
            cable.counters.unauthorized.inc();
            outbox.close(Some(Frame::disconnect(Some(told), false)), CLOSE_NORMAL, "");
            return None;
        }
    };
    // Channels never see the request: free its headers now rather than keep
    // them for the connection's lifetime.
    drop(request);
    Some((identifiers, ext.map(Box::new)))
}

impl Ext {
    fn take(&mut self) -> Ext {
        Ext {
            sid: std::mem::take(&mut self.sid),
            store: self.store,
            restored: self.restored.take(),
            pongs: self.pongs,
        }
    }
}

/// The extended protocol's part of a session, when the transport
/// negotiated it: the session id is the `X-Request-ID` header when there
/// is a reasonable one, else 21 random characters.
fn ext_for(cable: &Inner, request: &ConnectRequest) -> Option<Ext> {
    if request.subprotocol() != Some(EXT_SUBPROTOCOL) {
        return None;
    }
    let sid = request
        .header("x-request-id")
        .filter(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID)
        .map_or_else(|| crate::ids::random_id(21), str::to_owned);
    // A one-way client (SSE) cannot resume a session: it reconnects with
    // Last-Event-ID instead, so storing its session would be waste.
    let two_way = !request.is_one_way();
    Some(Ext {
        sid,
        store: two_way && cable.reliable.broker.is_some() && !cable.config.session_ttl.is_zero(),
        restored: None,
        pongs: two_way,
    })
}

/// The stored session a reconnecting client names (header
/// `X-ANYCABLE-RESTORE-SID`, else `?sid=`), if it is there: its
/// identifiers and subscriptions. Anything else (no sid, unknown or
/// expired, unreadable, a broker failure) means a normal connect.
async fn restore(cable: &Inner, request: &ConnectRequest) -> Option<(Identifiers, Vec<StoredSub>)> {
    let broker = cable.reliable.broker.as_ref()?;
    if cable.config.session_ttl.is_zero() {
        return None;
    }
    let sid = request
        .header("x-anycable-restore-sid")
        .or_else(|| request.query("sid"))
        .filter(|s| !s.is_empty() && s.len() <= MAX_REQUEST_ID)?;
    let text = match tokio::time::timeout(SESSION_IO_TIMEOUT, broker.fetch_session(sid)).await {
        Ok(Ok(Some(text))) => text,
        Ok(Ok(None)) => {
            tracing::debug!("session {} not found; connecting anew", Snip(sid));
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not fetch session {}; connecting anew", Snip(sid));
            return None;
        }
        Err(_) => {
            tracing::warn!("fetching session {} timed out; connecting anew", Snip(sid));
            return None;
        }
    };
    let stored: StoredSession = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "stored session {} is unreadable; connecting anew", Snip(sid));
            return None;
        }
    };
    let mut ids = Identifiers::new();
    for (k, v) in stored.ids {
        ids.insert(k, v);
    }
    let ids = ids.with_data_json(stored.data);
    cable
        .reliable
        .counters
        .restored_sessions
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        "Restored session {} ({})",
        Snip(sid),
        ids.connection_identifier()
    );
    Some((ids, stored.subs))
}

/// The welcomed part of a connection: from the welcome to the disconnect
/// hook. Not an async fn: the setup runs before the future exists, and the
/// future ([`live`]) holds one pointer to the session's state; an async fn
/// would keep its arguments and every local of the setup for the
/// connection's life.
fn run_session<S>(
    cable: Arc<Inner>,
    identifiers: Identifiers,
    inbound: S,
    outbox: Arc<Outbox>,
    mut ext: Option<Box<Ext>>,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    let (ctl_tx, ctl_rx) = mailbox();
    // Kept for the connection's life, whichever way it was identified
    // (the hook, a restored session, a stubbed connection).
    let mut identifiers = identifiers;
    identifiers.shrink_to_fit();
    let conn = ConnShared {
        id: cable.next_id(),
        connection_identifier: identifiers.connection_identifier(),
        identifiers,
        cable: cable.clone(),
        outbox: outbox.clone(),
        ctl: ctl_tx.clone(),
        kicked: std::sync::atomic::AtomicBool::new(false),
        extended: ext.is_some(),
    };
    let internal = (!conn.connection_identifier.is_empty())
        .then(|| internal_channel(&conn.connection_identifier));
    if let Some(ch) = &internal {
        // Rails does not make the welcome wait for the internal channel.
        // One empty identifier for every connection's internal stream.
        static INTERNAL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
        let ack = cable.hub.add(
            ch,
            INTERNAL.get_or_init(|| Arc::from("")),
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
    // A restored session's subscriptions are made before the welcome (it
    // names them) and start streaming after it (no message may precede it).
    let restored = ext
        .as_mut()
        .and_then(|e| e.restored.take())
        .map(|subs| recreate(&conn, subs));
    let welcome = match (&ext, &restored) {
        (None, _) => Frame::welcome(),
        (Some(e), None) => Frame::welcome_ext(&e.sid, None),
        (Some(e), Some(subs)) => {
            let ids: Vec<&str> = subs.iter().map(|(s, _)| &*s.state.identifier).collect();
            Frame::welcome_ext(&e.sid, Some(&ids))
        }
    };
    let _ = outbox.push(welcome);
    if let Some(e) = &ext {
        // Broadcasts name the session to skip by the sid the client has.
        outbox.socket_id_or(|| e.sid.clone());
    }
    cable.register(
        conn.id,
        ConnHandle {
            outbox: outbox.clone(),
            ctl: ctl_tx,
        },
    );
    let registration = Registration {
        cable: cable.clone(),
        id: conn.id,
        internal,
    };

    let pong_timeout = ext
        .as_ref()
        .filter(|e| e.pongs)
        .and(cable.config.pong_timeout);
    let session = Session {
        bucket: cable.config.command_rate.map(Bucket::new),
        conn,
        subs: SmallMap::default(),
        log: LogLimiter::new(),
        sid: ext.filter(|e| e.store).map(|e| e.sid),
        changed: true,
    };
    live(Box::new(Live {
        cable,
        outbox,
        session,
        registration,
        io: Io {
            inbound,
            ctl: ctl_rx,
            waiting: None,
            ended: false,
        },
        pong_timeout,
        restored,
    }))
}

/// A session's state, in one allocation (the future keeps a pointer).
struct Live<S> {
    cable: Arc<Inner>,
    outbox: Arc<Outbox>,
    session: Session,
    registration: Registration,
    io: Io<S>,
    pong_timeout: Option<Duration>,
    restored: Option<Vec<(Box<Subscription>, StoredSub)>>,
}

/// Runs a session to its end.
async fn live<S>(live: Box<Live<S>>)
where
    S: Stream<Item = Inbound> + Unpin + Send,
{
    let mut live = live;
    let Live {
        cable,
        outbox,
        session,
        io,
        pong_timeout,
        restored,
        ..
    } = &mut *live;
    let (cable, outbox, pong_timeout) = (&*cable, &*outbox, *pong_timeout);
    if let Some(subs) = restored.take() {
        Box::pin(session.restore(io, subs)).await;
    }
    // Only for clients that answer pings (boxed: most have no timer).
    let mut pong = pong_timeout.map(|t| {
        Box::pin(tokio::time::sleep_until(crate::reliable::later(
            tokio::time::Instant::now(),
            t,
        )))
    });
    loop {
        if outbox.is_closed() {
            break;
        }
        if session.sid.is_some() {
            Box::pin(session.store_if_changed(io)).await;
        }
        let event = if let Some(ctl) = io.take_waiting(|w| w.deferred.pop_front()) {
            Event::Control(ctl)
        } else if let Some(item) = io.take_waiting(|w| w.backlog.pop_front()) {
            Event::Frame(Some(item))
        } else if io.ended {
            Event::Frame(None)
        } else {
            // By hand rather than `select!`: no branch future to keep
            // between polls, so an idle session holds only its state.
            let next = std::future::poll_fn(|cx| {
                if outbox.poll_closed(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if let Poll::Ready(ctl) = io.ctl.poll_recv(cx) {
                    return Poll::Ready(Some(Event::Control(ctl)));
                }
                if let Poll::Ready(frame) = io.inbound.poll_next_unpin(cx) {
                    return Poll::Ready(Some(Event::Frame(frame)));
                }
                if let Some(pong) = pong.as_mut() {
                    if pong.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Event::NoPong));
                    }
                }
                Poll::Pending
            })
            .await;
            match next {
                Some(event) => event,
                None => break,
            }
        };
        match event {
            Event::Control(ctl) => {
                // Boxed (as are commands and close): the session future
                // lives as long as the connection, and its size is that of
                // its largest await; idle connections should not pay for it.
                if Box::pin(session.control(io, ctl)).await {
                    break;
                }
            }
            Event::Frame(None) => break,
            Event::NoPong => {
                tracing::info!(
                    "Closing connection ({}): nothing received within the pong timeout of {:?}",
                    session.conn.connection_identifier,
                    pong_timeout.unwrap_or_default()
                );
                outbox.close(
                    Some(Frame::disconnect(Some(DisconnectReason::NoPong), true)),
                    CLOSE_NORMAL,
                    "",
                );
                break;
            }
            Event::Frame(Some(Inbound::Probe(probe))) => probe.answer(session.snapshot()),
            Event::Frame(Some(item)) => {
                if let (Some(pong), Some(t)) = (&mut pong, pong_timeout) {
                    pong.as_mut()
                        .reset(crate::reliable::later(tokio::time::Instant::now(), t));
                }
                if ends_connection(&session.conn, &item) {
                    break;
                }
                if !session.take_token() {
                    break;
                }
                match item {
                    Inbound::Text(text) => {
                        cable.counters.messages_received.inc();
                        Box::pin(session.command(io, &text)).await;
                    }
                    Inbound::Binary(len) => {
                        client_error!(
                            session,
                            "Couldn't handle non-string message: binary frame of {len} bytes"
                        );
                    }
                    _ => {}
                }
            }
        }
    }
    // The socket is done with: let the writer answer the client's close (or
    // send ours) now, not after the `unsubscribed` callbacks.
    if io.ended {
        outbox.close(None, CLOSE_NORMAL, "");
    }
    let Live {
        cable,
        session,
        registration,
        io,
        ..
    } = *live;
    // The mailbox closes before the `unsubscribed` callbacks, as before.
    drop(io);
    // Boxed: the connection's future must not keep room for its ending.
    Box::pin(end_session(cable, session, registration)).await;
}

/// The end of a session: its stored state, the `unsubscribed` callbacks,
/// the registration, then the disconnect hook.
async fn end_session(cable: Arc<Inner>, mut session: Session, registration: Registration) {
    if session.sid.is_some() {
        // The TTL counts from the disconnect: the client has that long to
        // come back.
        Box::pin(session.store_at_end()).await;
    }
    Box::pin(session.close()).await;
    drop(registration);
    let identifiers = std::mem::take(&mut session.conn.identifiers);
    drop(session);
    let timeout = cable.config.callback_timeout;
    match contained(timeout, cable.auth.disconnect(&identifiers)).await {
        Outcome::Done(()) | Outcome::Interrupted => {}
        Outcome::Panicked(msg) => {
            cable.counters.panics.inc();
            tracing::error!("The disconnect hook panicked: {}", Snip(&msg));
        }
        Outcome::TimedOut => {
            cable.counters.timeouts.inc();
            tracing::error!("The disconnect hook did not finish within {timeout:?}");
        }
    }
}

/// Closes the outbox when dropped (the writer must always get its close).
struct CloseOnDrop(Arc<Outbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(None, CLOSE_NORMAL, "");
    }
}

enum Event {
    Control(Control),
    Frame(Option<Inbound>),
    /// The pong timeout ran out.
    NoPong,
}

/// The channel instances of a restored session's subscriptions, made with
/// their factories (not `subscribed`), with the streams to start. Those
/// whose identifier is unreadable or whose channel is not registered any
/// more are left out (logged).
fn recreate(conn: &ConnShared, stored: Vec<StoredSub>) -> Vec<(Box<Subscription>, StoredSub)> {
    let cable = &conn.cable;
    let max = cable
        .config
        .max_subscriptions_per_connection
        .unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for sub in stored {
        if out.len() >= max {
            break;
        }
        let params = match serde_json::from_str::<Value>(&sub.id) {
            Ok(Value::Object(m)) => compact_params(m),
            _ => continue,
        };
        let Some(class) = params.get("channel").and_then(Value::as_str) else {
            continue;
        };
        let Some((class, factory)) = cable.channels.get_key_value(class) else {
            tracing::warn!(
                "Not restoring {}: subscription class not found",
                Snip(&sub.id)
            );
            continue;
        };
        let identifier: Arc<str> = sub.id.as_str().into();
        let state = SubState::new(identifier, class.clone(), params, cable.next_id());
        out.push((
            Box::new(Subscription {
                state,
                channel: factory(),
            }),
            sub,
        ));
    }
    out
}

/// Closes the connection for frames that end it; true when it did.
fn ends_connection(conn: &ConnShared, item: &Inbound) -> bool {
    match item {
        Inbound::TooLarge { size, max } => {
            tracing::warn!(
                size,
                max,
                "Closing connection ({}): message of {size} bytes is over the limit of {max} bytes",
                conn.connection_identifier
            );
            conn.outbox
                .close(None, CLOSE_TOO_BIG, "WebSocket frame length too large");
            true
        }
        Inbound::Invalid { code, reason } => {
            tracing::warn!(
                "Closing connection ({}) with {code}: {reason}",
                conn.connection_identifier
            );
            conn.outbox.close(None, *code, reason);
            true
        }
        _ => false,
    }
}

/// What the session reads besides its own state: the socket's frames and
/// the control mailbox, plus what arrived while a callback ran.
struct Io<S> {
    inbound: S,
    ctl: MailboxReceiver,
    /// What arrived while a callback ran; boxed (and freed once empty):
    /// most sessions never have any, and two empty queues cost 64 bytes.
    waiting: Option<Box<Waiting>>,
    /// The socket ended.
    ended: bool,
}

/// Frames and timer ticks that came while a callback ran, handled after it,
/// in order (ticks first).
#[derive(Default)]
struct Waiting {
    backlog: VecDeque<Inbound>,
    deferred: VecDeque<Control>,
}

impl<S> Io<S> {
    fn waiting(&mut self) -> &mut Waiting {
        self.waiting.get_or_insert_with(Box::default)
    }

    fn backlog_len(&self) -> usize {
        self.waiting.as_ref().map_or(0, |w| w.backlog.len())
    }

    /// Takes from what waited (`take`), freeing it once empty.
    fn take_waiting<T>(&mut self, take: impl FnOnce(&mut Waiting) -> Option<T>) -> Option<T> {
        let w = self.waiting.as_mut()?;
        let item = take(w);
        if w.backlog.is_empty() && w.deferred.is_empty() {
            self.waiting = None;
        }
        item
    }
}

impl<S: Stream<Item = Inbound> + Unpin> Io<S> {
    /// Runs a callback of `conn` guarded: panics caught, bounded by the
    /// callback timeout, and dropped as soon as the connection is ending.
    async fn guarded<F: Future>(&mut self, conn: &ConnShared, fut: F) -> Outcome<F::Output> {
        let fut = AssertUnwindSafe(fut).catch_unwind();
        let sleep = tokio::time::sleep(conn.cable.config.callback_timeout);
        tokio::pin!(fut, sleep);
        loop {
            tokio::select! {
                biased;
                r = &mut fut => {
                    return match r {
                        Ok(v) => Outcome::Done(v),
                        Err(p) => Outcome::Panicked(panic_message(&*p)),
                    }
                }
                _ = conn.outbox.closed() => return Outcome::Interrupted,
                ctl = self.ctl.recv() => match ctl {
                    Control::Timer { .. } => self.waiting().deferred.push_back(ctl),
                    other => {
                        end_by_control(conn, other);
                        return Outcome::Interrupted;
                    }
                },
                item = self.inbound.next(), if !self.ended && self.backlog_len() < BACKLOG_MAX => {
                    match item {
                        None => {
                            self.ended = true;
                            return Outcome::Interrupted;
                        }
                        Some(item) => {
                            if ends_connection(conn, &item) {
                                return Outcome::Interrupted;
                            }
                            self.waiting().backlog.push_back(item);
                        }
                    }
                }
                _ = &mut sleep => return Outcome::TimedOut,
            }
        }
    }
}

/// Ends the connection for a remote disconnect or a shutdown; false for
/// other control messages.
fn end_by_control(conn: &ConnShared, ctl: Control) -> bool {
    let (reason, reconnect) = match ctl {
        Control::RemoteDisconnect { reconnect } => {
            tracing::info!("Removing connection ({})", conn.connection_identifier);
            conn.kicked.store(true, Ordering::Relaxed);
            (DisconnectReason::Remote, reconnect)
        }
        Control::Shutdown => (DisconnectReason::ServerRestart, true),
        Control::Timer { .. } => return false,
    };
    conn.outbox.close(
        Some(Frame::disconnect(Some(reason), reconnect)),
        CLOSE_NORMAL,
        "",
    );
    true
}

/// A token bucket over a connection's frames.
struct Bucket {
    rate: CommandRate,
    tokens: f32,
    last: Instant,
}

impl Bucket {
    fn new(rate: CommandRate) -> Self {
        Bucket {
            rate,
            tokens: rate.burst as f32,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f32() * self.rate.per_second as f32;
        self.tokens = (self.tokens + refill).min(self.rate.burst as f32);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Session {
    conn: ConnShared,
    // Boxed: the map's spare slots then cost a pointer, not a Subscription.
    subs: SmallMap<Box<Subscription>>,
    bucket: Option<Bucket>,
    log: LogLimiter,
    /// The session id this session is stored under (extended protocol,
    /// with a broker and a session TTL).
    sid: Option<String>,
    /// Subscriptions came or went since the last store.
    changed: bool,
}

impl Drop for Session {
    /// A backstop for sessions that end without `close` (a panic outside
    /// the guarded callbacks): streams and timers are given back anyway.
    fn drop(&mut self) {
        if self.subs.is_empty() {
            return;
        }
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_sub(self.subs.len() as u64, Ordering::Relaxed);
        for (_, mut sub) in self.subs.drain() {
            sub.state.stop(&self.conn);
        }
    }
}

/// Logs what a guarded callback's failure was; true when it did not finish.
fn report<T>(conn: &ConnShared, class: &str, callback: &str, outcome: &Outcome<T>) -> bool {
    match outcome {
        Outcome::Done(_) => false,
        Outcome::Panicked(msg) => {
            conn.cable.counters.panics.inc();
            tracing::error!(
                "{class}#{callback} panicked: {} (connection {})",
                Snip(msg),
                conn.connection_identifier
            );
            true
        }
        Outcome::TimedOut => {
            conn.cable.counters.timeouts.inc();
            tracing::error!(
                "{class}#{callback} did not finish within {:?}; abandoned (connection {})",
                conn.cable.config.callback_timeout,
                conn.connection_identifier
            );
            true
        }
        Outcome::Interrupted => true,
    }
}

impl Session {
    /// What a [`Probe`] is told.
    fn snapshot(&self) -> Snapshot {
        let mut subscriptions: Vec<SubscriptionSnapshot> = self
            .subs
            .values()
            .map(|s| SubscriptionSnapshot {
                identifier: s.state.identifier.to_string(),
                streams: s.state.streams.clone(),
                timers: s.state.timers.len(),
            })
            .collect();
        subscriptions.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        Snapshot {
            identifiers: self.conn.identifiers.clone(),
            subscriptions,
        }
    }

    /// Takes one token of the command rate; when there is none the client is
    /// disconnected and false returned.
    fn take_token(&mut self) -> bool {
        let Some(bucket) = &mut self.bucket else {
            return true;
        };
        if bucket.take() {
            return true;
        }
        let rate = bucket.rate;
        self.conn.cable.counters.rate_limited.inc();
        tracing::warn!(
            "Closing connection ({}): more commands than the limit of {} at once and {} per second (command_rate)",
            self.conn.connection_identifier,
            rate.burst,
            rate.per_second
        );
        self.conn.outbox.close(
            Some(Frame::disconnect(Some(DisconnectReason::RateLimited), true)),
            CLOSE_NORMAL,
            "",
        );
        false
    }

    /// Handles a control message; true when the connection must end.
    async fn control<S>(&mut self, io: &mut Io<S>, ctl: Control) -> bool
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Control::Timer {
            serial,
            name,
            pending,
        } = ctl
        else {
            return end_by_control(&self.conn, ctl);
        };
        pending.store(false, Ordering::Release);
        let Some(sub) = self.subs.values_mut().find(|s| s.state.serial == serial) else {
            return false;
        };
        let class = sub.state.class.clone();
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        let outcome = io
            .guarded(&self.conn, sub.channel.timer(&mut ctx, &name))
            .await;
        if let Outcome::Done(Err(e)) = &outcome {
            tracing::error!("{class} timer {name} failed: {e}");
        }
        if report(&self.conn, &class, "timer", &outcome) {
            return false;
        }
        // Most actions start no stream: skip the guard (and its timer) then.
        if sub.state.pending.is_empty() {
            return false;
        }
        if let Outcome::Done(Err((stream, e))) =
            io.guarded(&self.conn, settle_pending(&mut sub.state)).await
        {
            tracing::error!("{class} could not stream from {stream}: {e}");
        }
        false
    }

    async fn command<S>(&mut self, io: &mut Io<S>, text: &str)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        match Command::parse(text) {
            Ok(Command::Subscribe {
                identifier,
                history,
                presence,
            }) => {
                // History is served after the confirmation, as AnyCable;
                // a presence the client held is joined after that.
                let id = identifier.clone();
                if self.subscribe(io, identifier, history.is_some()).await {
                    if let Some(history) = history {
                        self.history(io, &id, history).await;
                    }
                    if let Some(presence) = presence {
                        self.join(io, &id, presence).await;
                    }
                }
            }
            Ok(Command::Unsubscribe { identifier }) => self.unsubscribe(io, &identifier).await,
            Ok(Command::Message { identifier, data }) => {
                self.message(io, &identifier, data, text).await
            }
            Ok(Command::History {
                identifier,
                history,
            }) => self.history(io, &identifier, history).await,
            Ok(Command::Whisper { identifier, data }) => self.whisper(io, &identifier, data).await,
            Ok(Command::Join {
                identifier,
                presence,
            }) => self.join(io, &identifier, presence).await,
            Ok(Command::Leave { identifier }) => self.leave(io, &identifier).await,
            Ok(Command::PresenceInfo { identifier }) => self.presence_info(io, &identifier).await,
            Ok(Command::Ping) => {
                let _ = self.conn.outbox.push(Frame::pong());
            }
            // Any frame resets the pong timeout; a pong does nothing else.
            Ok(Command::Pong) => {}
            Err(CommandError::Malformed(e)) => {
                client_error!(
                    self,
                    "There was an exception - JSON::ParserError({e}) in {}",
                    Snip(text)
                );
            }
            Err(CommandError::Unrecognized) => {
                client_error!(self, "Received unrecognized command in {}", Snip(text));
            }
            Err(e) => {
                client_error!(
                    self,
                    "Could not execute command from ({}) [{e}]",
                    Snip(text)
                );
            }
        }
    }

    /// Subscribes; true when the subscription was confirmed now.
    /// Subscribes to `identifier`; with `hold`, its live frames wait for
    /// the history replay that follows.
    async fn subscribe<S>(&mut self, io: &mut Io<S>, identifier: String, hold: bool) -> bool
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        if self.subs.contains_key(identifier.as_str()) {
            // The JS client re-sends subscribe until confirmed: ignore quietly.
            return false;
        }
        let max_id = self.conn.cable.config.max_identifier_bytes;
        if identifier.len() > max_id {
            if self.log.allow(&self.conn.connection_identifier) {
                tracing::warn!(
                    "Subscription rejected: identifier of {} bytes is over the limit of {max_id} bytes (max_identifier_bytes): {}",
                    identifier.len(),
                    Snip(&identifier)
                );
            }
            let _ = self.conn.outbox.push(Frame::reject(&identifier));
            return false;
        }
        let params: Params = match serde_json::from_str::<Value>(&identifier) {
            Ok(Value::Object(m)) => compact_params(m),
            _ => {
                client_error!(
                    self,
                    "Could not execute command from ({}) [identifier is not a JSON object]",
                    Snip(&identifier)
                );
                return false;
            }
        };
        let Some(class) = params.get("channel").and_then(Value::as_str) else {
            client_error!(
                self,
                "Could not execute command from ({}) [identifier has no channel]",
                Snip(&identifier)
            );
            return false;
        };
        let cable = self.conn.cable.clone();
        let Some((class, factory)) = cable.channels.get_key_value(class) else {
            client_error!(self, "Subscription class not found: {}", Snip(class));
            if cable.config.reject_unknown_channels {
                let _ = self.conn.outbox.push(Frame::reject(&identifier));
            }
            return false;
        };
        if let Some(max) = cable.config.max_subscriptions_per_connection {
            if self.subs.len() >= max {
                if self.log.allow(&self.conn.connection_identifier) {
                    tracing::warn!(
                        "{class} subscription rejected: connection ({}) has {max} subscriptions, the limit (max_subscriptions_per_connection)",
                        self.conn.connection_identifier
                    );
                }
                let _ = self.conn.outbox.push(Frame::reject(&identifier));
                return false;
            }
        }
        let identifier: Arc<str> = identifier.into();
        let mut sub = Box::new(Subscription {
            state: SubState::new(identifier.clone(), class.clone(), params, cable.next_id()),
            channel: factory(),
        });
        if hold {
            sub.state.hold = Some(Hold::start(self.conn.outbox.clone()));
        }
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        let outcome = io
            .guarded(&self.conn, sub.channel.subscribed(&mut ctx))
            .await;
        match &outcome {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err(e)) => {
                tracing::error!(
                    "Could not execute command from ({}) [{class}#subscribed: {e}]",
                    Snip(&identifier)
                );
                sub.state.stop(&self.conn);
                return false;
            }
            Outcome::Interrupted => {
                sub.state.stop(&self.conn);
                return false;
            }
            Outcome::Panicked(_) | Outcome::TimedOut => {
                report(&self.conn, class, "subscribed", &outcome);
                sub.state.stop(&self.conn);
                tracing::info!("{class} is transmitting the subscription rejection");
                let _ = self.conn.outbox.push(Frame::reject(&identifier));
                return false;
            }
        }
        if sub.state.rejected {
            let mut ctx = Context {
                conn: &self.conn,
                sub: &mut sub.state,
            };
            let outcome = io
                .guarded(&self.conn, sub.channel.unsubscribed(&mut ctx))
                .await;
            report(&self.conn, class, "unsubscribed", &outcome);
            sub.state.stop(&self.conn);
            tracing::info!("{class} is transmitting the subscription rejection");
            let _ = self.conn.outbox.push(Frame::reject(&identifier));
            return false;
        }
        match io.guarded(&self.conn, settle_pending(&mut sub.state)).await {
            Outcome::Done(Ok(())) => {}
            Outcome::Done(Err((stream, e))) => {
                tracing::error!("{class} could not stream from {stream}: {e}; subscription dropped, the client will retry");
                sub.state.stop(&self.conn);
                return false;
            }
            _ => {
                sub.state.stop(&self.conn);
                return false;
            }
        }
        tracing::info!("{class} is transmitting the subscription confirmation");
        let _ = self.conn.outbox.push(Frame::confirm(&identifier));
        sub.state.forget_params();
        self.subs.insert(identifier, sub);
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_add(1, Ordering::Relaxed);
        self.changed = true;
        true
    }

    async fn unsubscribe<S>(&mut self, io: &mut Io<S>, identifier: &str)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Some(mut sub) = self.subs.remove(identifier) else {
            client_error!(
                self,
                "Could not execute command from ({}) [RuntimeError - Unable to find subscription with identifier: {}]",
                Snip(identifier),
                Snip(identifier)
            );
            return;
        };
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
        self.changed = true;
        tracing::info!("Unsubscribing from channel: {}", Snip(identifier));
        let class = sub.state.class.clone();
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        let outcome = io
            .guarded(&self.conn, sub.channel.unsubscribed(&mut ctx))
            .await;
        report(&self.conn, &class, "unsubscribed", &outcome);
        if sub.state.joined {
            let left = leave_presence(&self.conn, &mut sub.state);
            let _ = io.guarded(&self.conn, left).await;
        }
        sub.state.stop(&self.conn);
    }

    async fn message<S>(
        &mut self,
        io: &mut Io<S>,
        identifier: &str,
        data: Option<Value>,
        text: &str,
    ) where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Some(sub) = self.subs.get_mut(identifier) else {
            client_error!(
                self,
                "Could not execute command from ({}) [RuntimeError - Unable to find subscription with identifier: {}]",
                Snip(text),
                Snip(identifier)
            );
            return;
        };
        let data = match data {
            Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) => Err("data is not a JSON object".to_owned()),
                Err(e) => Err(format!("JSON::ParserError - {e}")),
            },
            _ => Err("data is missing or not a JSON string".to_owned()),
        };
        let data = match data {
            Ok(d) => d,
            Err(why) => {
                client_error!(
                    self,
                    "Could not execute command from ({}) [{why}]",
                    Snip(text)
                );
                return;
            }
        };
        let action = data
            .get("action")
            .and_then(Value::as_str)
            .unwrap_or("receive")
            .to_owned();
        let class = sub.state.class.clone();
        tracing::debug!("{class}#{}({})", Snip(&action), Snip(text));
        let mut ctx = Context {
            conn: &self.conn,
            sub: &mut sub.state,
        };
        let outcome = io
            .guarded(&self.conn, sub.channel.perform(&mut ctx, &action, data))
            .await;
        let failed = match &outcome {
            Outcome::Done(Ok(())) => None,
            Outcome::Done(Err(ChannelError::UnknownAction(a))) => Some(format!(
                "Unable to process {class}#{}({})",
                Snip(a),
                Snip(text)
            )),
            Outcome::Done(Err(e)) => Some(format!(
                "Could not execute command from ({}) [{class}#{}: {e}]",
                Snip(text),
                Snip(&action)
            )),
            _ => None,
        };
        if report(&self.conn, &class, "perform", &outcome) && failed.is_none() {
            return;
        }
        if let Some(line) = failed {
            client_error!(self, "{line}");
        }
        let Some(sub) = self.subs.get_mut(identifier) else {
            return;
        };
        // Most actions start no stream: skip the guard (and its timer) then.
        if sub.state.pending.is_empty() {
            return;
        }
        if let Outcome::Done(Err((stream, e))) =
            io.guarded(&self.conn, settle_pending(&mut sub.state)).await
        {
            tracing::error!("{class} could not stream from {stream}: {e}");
        }
    }

    /// Publishes a whisper on the subscription's whisper stream, to every
    /// subscriber but this session and never into history. Ignored (logged)
    /// without a whisper stream, as AnyCable.
    async fn whisper<S>(&mut self, io: &mut Io<S>, identifier: &str, data: Value)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Some(sub) = self.subs.get(identifier) else {
            client_error!(
                self,
                "Could not whisper to ({}): no subscription with that identifier",
                Snip(identifier)
            );
            return;
        };
        let Some(stream) = sub.state.whisper.clone() else {
            tracing::debug!(
                "Ignoring a whisper to {}: the subscription has no whisper stream",
                Snip(identifier)
            );
            return;
        };
        let sid = self
            .conn
            .outbox
            .socket_id_or(|| crate::ids::random_id(21))
            .to_owned();
        let payload = data.to_string();
        let broadcaster = self.conn.cable.broadcaster();
        let publication = crate::cable::Publication::default()
            .excluding(sid)
            .transient();
        let sent = io
            .guarded(
                &self.conn,
                broadcaster.broadcast_with(&stream, &payload, &publication),
            )
            .await;
        match sent {
            Outcome::Done(Ok(())) => {
                tracing::debug!("Whisper to {stream} from {}", Snip(identifier));
            }
            Outcome::Done(Err(e)) => {
                tracing::warn!(stream = %stream, error = %e, "a whisper could not be published");
            }
            _ => {}
        }
    }

    /// The broker, when it keeps presence, and the subscription's presence
    /// stream; None (logged) otherwise.
    fn presence_target(
        &mut self,
        identifier: &str,
    ) -> Option<(Arc<dyn crate::broker::Broker>, String)> {
        let Some(sub) = self.subs.get(identifier) else {
            client_error!(
                self,
                "Could not execute a presence command for ({}): no subscription with that identifier",
                Snip(identifier)
            );
            return None;
        };
        let Some(stream) = sub.state.presence.clone() else {
            tracing::debug!(
                "Ignoring a presence command for {}: the subscription has no presence stream",
                Snip(identifier)
            );
            return None;
        };
        match self.conn.cable.reliable.broker.clone() {
            Some(b) if b.supports_presence() => Some((b, stream)),
            _ => {
                tracing::warn!(
                    "Ignoring a presence command for {}: the broker keeps no presence",
                    Snip(identifier)
                );
                None
            }
        }
    }

    /// The `join` command: this session joins the subscription's presence
    /// stream as `presence.id`; the stream hears of it when the id is new.
    async fn join<S>(&mut self, io: &mut Io<S>, identifier: &str, presence: PresenceJoin)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Some((broker, stream)) = self.presence_target(identifier) else {
            return;
        };
        // The channel may have decided who this subscription is present as.
        let presence = self
            .subs
            .get(identifier)
            .and_then(|sub| sub.state.present_as.as_deref().cloned())
            .unwrap_or(presence);
        let sid = self
            .conn
            .outbox
            .socket_id_or(|| crate::ids::random_id(21))
            .to_owned();
        let ttl = self.conn.cable.presence.ttl;
        let broadcaster = self.conn.cable.broadcaster();
        let joined = async {
            let info = presence.info.to_string();
            let first = broker
                .presence_join(crate::broker::Join {
                    stream: &stream,
                    sid: &sid,
                    id: &presence.id,
                    info: &info,
                    ttl,
                })
                .await?;
            if first {
                let event = crate::presence::join_event(&presence.id, &presence.info);
                crate::presence::publish(&broadcaster, &stream, &event).await;
            }
            Ok::<bool, BrokerError>(first)
        };
        match io.guarded(&self.conn, joined).await {
            Outcome::Done(Ok(first)) => {
                tracing::debug!(stream = %stream, id = %presence.id, first, "presence join");
                if let Some(sub) = self.subs.get_mut(identifier) {
                    if !std::mem::replace(&mut sub.state.joined, true) {
                        self.conn.cable.presence.add(&sid);
                    }
                }
            }
            Outcome::Done(Err(BrokerError::PresenceIdMismatch)) => {
                client_error!(
                    self,
                    "Could not join presence of {}: presence ID mismatch (this session is present there as another id)",
                    Snip(identifier)
                );
            }
            Outcome::Done(Err(e)) => {
                tracing::warn!(stream = %stream, error = %e, "a presence join failed");
            }
            _ => {}
        }
    }

    /// The `leave` command: this session leaves the subscription's presence
    /// stream now.
    async fn leave<S>(&mut self, io: &mut Io<S>, identifier: &str)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let Some(sub) = self.subs.get_mut(identifier) else {
            client_error!(
                self,
                "Could not leave presence of ({}): no subscription with that identifier",
                Snip(identifier)
            );
            return;
        };
        if !sub.state.joined {
            return;
        }
        let left = leave_presence(&self.conn, &mut sub.state);
        let _ = io.guarded(&self.conn, left).await;
    }

    /// The `presence` command: who is on the subscription's presence stream,
    /// sent to this client only (`{"type":"error"}` when it cannot be read).
    async fn presence_info<S>(&mut self, io: &mut Io<S>, identifier: &str)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        if !self.subs.contains_key(identifier) {
            client_error!(
                self,
                "Could not read presence of ({}): no subscription with that identifier",
                Snip(identifier)
            );
            return;
        }
        let message = match self.presence_target(identifier) {
            Some((broker, stream)) => {
                match io.guarded(&self.conn, broker.presence_info(&stream)).await {
                    Outcome::Done(Ok(info)) => crate::presence::info_message(&info),
                    Outcome::Done(Err(e)) => {
                        tracing::warn!(stream = %stream, error = %e, "could not read presence");
                        crate::presence::INFO_ERROR.to_owned()
                    }
                    _ => crate::presence::INFO_ERROR.to_owned(),
                }
            }
            None => crate::presence::INFO_ERROR.to_owned(),
        };
        let _ = self.conn.outbox.push(Frame::presence(identifier, &message));
    }

    /// Starts the streams of a restored session's subscriptions (after the
    /// welcome) and keeps them; `subscribed` does not run.
    async fn restore<S>(&mut self, io: &mut Io<S>, subs: Vec<(Box<Subscription>, StoredSub)>)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        for (mut sub, stored) in subs {
            // The client asks for what it missed right after the welcome:
            // live frames wait for that replay.
            if !stored.history.is_empty() {
                sub.state.hold = Some(Hold::start(self.conn.outbox.clone()));
            }
            for stream in stored.streams {
                let policy =
                    stored
                        .history
                        .iter()
                        .find(|(s, _, _)| *s == stream)
                        .map(|(_, limit, ttl)| HistoryPolicy {
                            limit: *limit,
                            ttl: Duration::from_secs(*ttl),
                        });
                match policy {
                    Some(p) => sub.state.stream_from_with_history(&self.conn, stream, p),
                    None => sub.state.stream_from(&self.conn, stream),
                }
            }
            sub.state.whisper = stored.whisper;
            sub.state.presence = stored.presence;
            sub.state.present_as = stored
                .present_as
                .map(|(id, info)| Box::new(crate::protocol::PresenceJoin { id, info }));
            let class = sub.state.class.clone();
            match io.guarded(&self.conn, settle_pending(&mut sub.state)).await {
                Outcome::Done(Ok(())) => {}
                Outcome::Done(Err((stream, e))) => {
                    tracing::error!("{class} could not stream from {stream} on restore: {e}");
                }
                _ => {
                    sub.state.stop(&self.conn);
                    return;
                }
            }
            tracing::info!(
                "{class} subscription restored: {}",
                Snip(&sub.state.identifier)
            );
            self.conn
                .cable
                .counters
                .subscriptions
                .fetch_add(1, Ordering::Relaxed);
            sub.state.forget_params();
            self.subs.insert(sub.state.identifier.clone(), sub);
        }
        self.changed = true;
    }

    /// Replays what a client missed on the streams of subscription
    /// `identifier`, then `confirm_history`; when any of it cannot be
    /// served, only `reject_history`.
    async fn history<S>(&mut self, io: &mut Io<S>, identifier: &str, request: HistoryRequest)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let counters = &self.conn.cable.reliable.counters;
        // Cloned: no borrow of the subscriptions may live across the await.
        let Some(streams) = self.subs.get(identifier).map(|s| s.state.streams.clone()) else {
            client_error!(
                self,
                "Could not execute command from ({}) [history: no subscription with this identifier]",
                Snip(identifier)
            );
            counters.history_misses.fetch_add(1, Ordering::Relaxed);
            let _ = self.conn.outbox.push(Frame::reject_history(identifier));
            return;
        };
        let outcome = io
            .guarded(
                &self.conn,
                read_history(&self.conn, identifier, &streams, &request),
            )
            .await;
        // Held live frames go out after the replay, less those it sent.
        let hold = self
            .subs
            .get_mut(identifier)
            .and_then(|s| s.state.hold.take());
        let release = |replayed: &[(String, u64)]| {
            if let Some(hold) = &hold {
                hold.release(replayed);
            }
        };
        match outcome {
            Outcome::Done(Ok((frames, replayed))) => {
                counters.history_reads.fetch_add(1, Ordering::Relaxed);
                for frame in frames {
                    let _ = self.conn.outbox.push(frame);
                }
                release(&replayed);
                let _ = self.conn.outbox.push(Frame::confirm_history(identifier));
            }
            Outcome::Done(Err(e)) => {
                tracing::info!("History for {} rejected: {e}", Snip(identifier));
                counters.history_misses.fetch_add(1, Ordering::Relaxed);
                release(&[]);
                let _ = self.conn.outbox.push(Frame::reject_history(identifier));
            }
            Outcome::Interrupted => release(&[]),
            Outcome::Panicked(_) | Outcome::TimedOut => {
                tracing::warn!("History for {} not read in time", Snip(identifier));
                counters.history_misses.fetch_add(1, Ordering::Relaxed);
                release(&[]);
                let _ = self.conn.outbox.push(Frame::reject_history(identifier));
            }
        }
    }

    /// What is stored under the session id.
    fn stored(&self) -> String {
        let mut subs: Vec<StoredSub> = self
            .subs
            .values()
            .map(|s| StoredSub {
                id: s.state.identifier.to_string(),
                streams: s.state.streams.clone(),
                history: s
                    .state
                    .history
                    .iter()
                    .map(|(stream, p)| (stream.clone(), p.limit, p.ttl.as_secs()))
                    .collect(),
                whisper: s.state.whisper.clone(),
                presence: s.state.presence.clone(),
                present_as: s
                    .state
                    .present_as
                    .as_ref()
                    .map(|p| (p.id.clone(), p.info.clone())),
            })
            .collect();
        subs.sort_by(|a, b| a.id.cmp(&b.id));
        let stored = StoredSession {
            ids: self
                .conn
                .identifiers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            subs,
            data: self.conn.identifiers.data_json().map(str::to_owned),
        };
        // Strings and numbers only: serialising cannot fail.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// Stores the session when its subscriptions or streams changed since
    /// the last store (so a client whose node died can resume it). The
    /// store runs guarded, so a slow broker does not keep the session from
    /// noticing a client that left.
    async fn store_if_changed<S>(&mut self, io: &mut Io<S>)
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let dirty = self.changed || self.subs.values().any(|s| s.state.dirty);
        if !dirty {
            return;
        }
        self.changed = false;
        for sub in self.subs.values_mut() {
            sub.state.dirty = false;
        }
        if let Some(store) = self.store_call() {
            io.guarded(&self.conn, store).await;
        }
    }

    /// At the end of the connection: stored again (its TTL starts now), or
    /// forgotten when a remote disconnect ended it.
    async fn store_at_end(&mut self) {
        if self.conn.kicked.load(Ordering::Relaxed) {
            if let (Some(sid), Some(broker)) = (&self.sid, &self.conn.cable.reliable.broker) {
                let _ = tokio::time::timeout(SESSION_IO_TIMEOUT, broker.remove_session(sid)).await;
            }
            return;
        }
        self.store().await;
    }

    async fn store(&mut self) {
        if let Some(store) = self.store_call() {
            store.await;
        }
    }

    /// The broker call that stores the session as it is now (bounded by
    /// [`SESSION_IO_TIMEOUT`], failures logged); owns what it needs.
    fn store_call(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let sid = self.sid.clone()?;
        let broker = self.conn.cable.reliable.broker.clone()?;
        let state = self.stored();
        let ttl = self.conn.cable.config.session_ttl;
        Some(async move {
            match tokio::time::timeout(SESSION_IO_TIMEOUT, broker.store_session(&sid, &state, ttl))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not store session {}", Snip(&sid)),
                Err(_) => tracing::warn!("storing session {} timed out", Snip(&sid)),
            }
        })
    }

    /// Ends every subscription (socket closed or connection ended). The
    /// `unsubscribed` callbacks run even though the socket is gone, each
    /// guarded and bounded by the callback timeout.
    async fn close(&mut self) {
        let subs = self.subs.drain();
        self.conn
            .cable
            .counters
            .subscriptions
            .fetch_sub(subs.len() as u64, Ordering::Relaxed);
        let timeout = self.conn.cable.config.callback_timeout;
        for (_, mut sub) in subs {
            let class = sub.state.class.clone();
            let mut ctx = Context {
                conn: &self.conn,
                sub: &mut sub.state,
            };
            let outcome = contained(timeout, sub.channel.unsubscribed(&mut ctx)).await;
            report(&self.conn, &class, "unsubscribed", &outcome);
            if sub.state.joined {
                // Not renewed from now on: the session's presence runs out
                // after the presence TTL, unless it comes back and joins.
                if let Some(sid) = self.conn.outbox.socket_id() {
                    self.conn.cable.presence.remove(sid);
                }
            }
            sub.state.stop(&self.conn);
        }
    }
}

/// Takes subscription `state`'s session off its presence stream; the
/// stream hears of it when that was the id's last session. A failure is
/// logged (the presence then runs out with the TTL).
fn leave_presence(
    conn: &ConnShared,
    state: &mut SubState,
) -> impl Future<Output = ()> + Send + 'static {
    state.joined = false;
    let sid = conn.outbox.socket_id().map(str::to_owned);
    if let Some(sid) = &sid {
        conn.cable.presence.remove(sid);
    }
    let broker = conn.cable.reliable.broker.clone();
    let stream = state.presence.clone();
    let broadcaster = conn.cable.broadcaster();
    async move {
        let (Some(sid), Some(broker), Some(stream)) = (sid, broker, stream) else {
            return;
        };
        match broker.presence_leave(&stream, &sid).await {
            Ok(Some(id)) => {
                tracing::debug!(stream = %stream, id = %id, "presence leave");
                crate::presence::publish(&broadcaster, &stream, &crate::presence::leave_event(&id))
                    .await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(stream = %stream, error = %e, "a presence leave failed"),
        }
    }
}

/// The frames of what a history request asks for on `streams`, in stream
/// order, oldest first within a stream.
async fn read_history(
    conn: &ConnShared,
    identifier: &str,
    streams: &[String],
    request: &HistoryRequest,
) -> Result<(Vec<Frame>, Vec<(String, u64)>), BrokerError> {
    let Some(broker) = &conn.cable.reliable.broker else {
        return Err(BrokerError::Unavailable(
            "no broker: history is not kept".into(),
        ));
    };
    let hub = &conn.cable.hub;
    let mut frames = Vec::new();
    // The last offset replayed per stream.
    let mut replayed = Vec::new();
    for stream in streams {
        let position = request
            .streams
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, p)| p);
        let history = match (position, request.since) {
            (Some(p), _) => broker.history_from(stream, &p.epoch, p.offset).await?,
            (None, Some(since)) => broker.history_since(stream, since).await?,
            (None, None) => continue,
        };
        for e in &history.entries {
            if let Some(frame) =
                hub.history_frame(stream, identifier, &history.epoch, e.offset, &e.payload)
            {
                frames.push(frame);
            }
        }
        // What the client holds counts as sent too.
        let held_by_client = position.map(|p| p.offset);
        if let Some(last) = history
            .entries
            .iter()
            .map(|e| e.offset)
            .chain(held_by_client)
            .max()
        {
            replayed.push((stream.clone(), last));
        }
    }
    Ok((frames, replayed))
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

#[cfg(test)]
mod size_guard {
    /// An idle connection's memory is mostly these futures (they live as
    /// long as the socket): the setup's locals and the callbacks' state are
    /// kept out of them (boxed, or built before the future exists). The
    /// bounds leave room for compiler changes; a jump past them means a
    /// large local now lives across the session's await.
    #[tokio::test]
    async fn a_sessions_futures_stay_small() {
        let cable = crate::Cable::builder().build();
        let outbox = cable.new_outbox();
        let inbound = futures_util::stream::empty::<super::Inbound>();
        let run = super::run(
            cable.inner.clone(),
            super::Hello::Request(Box::default()),
            inbound,
            outbox.clone(),
        );
        assert!(
            std::mem::size_of_val(&run) <= 256,
            "{}",
            std::mem::size_of_val(&run)
        );
        let inbound = futures_util::stream::empty::<super::Inbound>();
        let live = super::run_session(
            cable.inner.clone(),
            Default::default(),
            inbound,
            outbox,
            None,
        );
        assert!(
            std::mem::size_of_val(&live) <= 512,
            "{}",
            std::mem::size_of_val(&live)
        );
    }
}
