//! The subscribing side: one task owning one connection at a time.
//!
//! Commands arrive over an mpsc queue in call order and are applied in that
//! order: whatever is queued when the task wakes goes to the backend as one
//! batch (so a burst of subscribes costs one round trip) and each command is
//! answered from the backend's result for it. Messages never pass through
//! this task: the driver delivers them itself ([`Incoming::deliver`]) or
//! through an [`Inbox`] drained by a task of its own, so they keep flowing
//! while a (UN)SUBSCRIBE waits for its reply.
//!
//! The command queue itself is unbounded but is fed by the hub, not by the
//! backend: one subscribe per stream's first local subscriber, whose
//! confirmation waits for the reply, and one unsubscribe per last one
//! leaving. While the backend is down commands are folded into the routes as
//! they arrive.
//!
//! The [`Routes`] (backend channel to streams) are updated by every command
//! whether or not the backend is reachable, so a new connection simply
//! subscribes every channel in them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cable_core::pubsub::{Ack, Backoff, Delivery};
use cable_core::PubSubError;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, Instant};

use crate::inbox::Inbox;
use crate::state::State;
use crate::{Backend, Op, Session, ACK_TIMEOUT, CONNECT_TIMEOUT, PING_INTERVAL, REPLY_TIMEOUT};

type Reply = oneshot::Sender<Result<(), PubSubError>>;
type ListReply = oneshot::Sender<Result<Vec<String>, PubSubError>>;

pub(crate) enum Command {
    Op {
        op: Op,
        stream: Arc<str>,
        channel: String,
        reply: Reply,
    },
    /// [`Session::subscriptions`] after everything queued before.
    List { reply: ListReply },
}

/// Which local streams each backend channel carries. Usually one; several
/// only when streams share a channel name (PostgreSQL's cut or hashed
/// names), and then a message goes to all of them, as the backend cannot
/// tell them apart either.
#[derive(Default, Debug)]
pub(crate) struct Routes(Mutex<HashMap<String, Vec<Arc<str>>>>);

impl Routes {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<str>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, channel: &str, stream: Arc<str>) {
        let mut map = self.map();
        let streams = map.entry(channel.to_owned()).or_default();
        if !streams.contains(&stream) {
            streams.push(stream);
        }
    }

    /// Removes `stream` from `channel`; true when no stream is left on it.
    fn remove(&self, channel: &str, stream: &str) -> bool {
        let mut map = self.map();
        let Some(streams) = map.get_mut(channel) else {
            return true;
        };
        streams.retain(|s| &**s != stream);
        if streams.is_empty() {
            map.remove(channel);
            return true;
        }
        false
    }

    fn drop_channel(&self, channel: &str) {
        self.map().remove(channel);
    }

    fn streams(&self, channel: &str) -> Vec<Arc<str>> {
        self.map().get(channel).cloned().unwrap_or_default()
    }

    fn channels(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    fn len(&self) -> usize {
        self.map().len()
    }
}

/// Why a connection ended, set once by whoever notices first.
#[derive(Debug, Default)]
struct LostSignal {
    reason: Mutex<Option<String>>,
    /// Bumped by every [`Incoming::queue`].
    generation: std::sync::atomic::AtomicU64,
    notify: Notify,
}

impl LostSignal {
    fn set(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            self.notify.notify_one();
        }
    }

    /// Forgets any loss reported so far and returns the new generation.
    fn renew(&self) -> u64 {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1
    }

    fn set_for(&self, generation: u64, reason: String) {
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            self.set(reason);
        }
    }

    async fn wait(&self) -> String {
        loop {
            if let Some(r) = self
                .reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                return r;
            }
            self.notify.notified().await;
        }
    }
}

/// What a [`Backend`] driver hands incoming messages to, and tells when its
/// connection has ended. One per connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct Incoming {
    routes: Arc<Routes>,
    delivery: Delivery,
    state: Arc<State>,
    lost: Arc<LostSignal>,
    name: &'static str,
}

impl Incoming {
    /// Delivers a message received on backend `channel` to the streams
    /// subscribed on it, now. For drivers that read one message, deliver it
    /// and only then read the next (the backend holds the rest back).
    pub fn deliver(&self, channel: &str, payload: &str) {
        let streams = self.routes.streams(channel);
        if streams.is_empty() {
            tracing::debug!(
                adapter = self.name,
                channel,
                "message on a channel no stream uses; ignored"
            );
        }
        for stream in streams {
            self.delivery.deliver(&stream, payload);
        }
    }

    /// A queue bounded at `max_bytes` for drivers that must not wait (see
    /// [`Inbox`]); a task of the kit delivers from it until it is closed and
    /// empty. Closing it reports the connection lost.
    ///
    /// A driver that falls back to another kind of connection within one
    /// [`Backend::connect`] may call it again: the new queue starts the
    /// connection afresh, and the loss the old one reported is forgotten.
    pub fn queue(&self, max_bytes: usize) -> Arc<Inbox> {
        let generation = self.lost.renew();
        let lost = self.lost.clone();
        let inbox = Inbox::new(
            max_bytes,
            self.state.clone(),
            self.name,
            // A queue replaced by a later one reports nothing.
            Box::new(move || lost.set_for(generation, "connection closed".to_owned())),
        );
        let (out, queue) = (self.clone(), inbox.clone());
        tokio::spawn(async move {
            while let Some(m) = queue.pop().await {
                out.deliver(&m.channel, &m.payload);
            }
        });
        inbox
    }

    /// The connection has ended (the kit reconnects). The first reason wins.
    pub fn lost(&self, reason: impl Into<String>) {
        self.lost.set(reason.into());
    }
}

/// The handle an adapter keeps: queues commands for the subscriber task.
///
/// Dropping it (with the adapter) stops the task and closes the connection.
#[derive(Debug)]
pub struct Subscriber {
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<State>,
    name: &'static str,
    verbs: [&'static str; 2],
}

/// A view of a [`Subscriber`]'s connection that outlives the borrow of the
/// adapter and does not keep it alive: what adapters hand out for health
/// checks and metrics once the adapter has moved into the `Cable`
/// (`RedisStatus` and `NatsStatus` are this type).
#[derive(Clone)]
pub struct Status {
    state: Arc<State>,
    commands: mpsc::WeakUnboundedSender<Command>,
    name: &'static str,
}

impl Subscriber {
    /// Starts the subscriber task for `backend` on the current tokio runtime.
    /// Connects at once in the background, retrying with [`Backoff`] while
    /// the backend is down. `url` (secrets masked) is for logs.
    ///
    /// Fails when called outside a tokio runtime.
    pub fn spawn<B: Backend>(
        backend: B,
        delivery: Delivery,
        url: String,
    ) -> Result<Subscriber, tokio::runtime::TryCurrentError> {
        let runtime = tokio::runtime::Handle::try_current()?;
        let state = Arc::new(State::default());
        let (commands, rx) = mpsc::unbounded_channel();
        let task = Task {
            backend,
            url,
            delivery,
            state: state.clone(),
            routes: Arc::default(),
            commands: rx,
            waiting: Vec::new(),
            prune_at: 64,
            backoff: Backoff::default(),
        };
        runtime.spawn(task.run());
        Ok(Subscriber {
            commands,
            state,
            name: B::NAME,
            verbs: [B::verb(Op::Subscribe), B::verb(Op::Unsubscribe)],
        })
    }

    /// Queues a subscribe of `stream` on backend `channel` now (so calls take
    /// effect in order) and returns a future for the backend's reply, bounded
    /// by [`ACK_TIMEOUT`] from this call.
    pub fn subscribe(&self, stream: &str, channel: String) -> Ack {
        self.queue(Op::Subscribe, stream, channel)
    }

    /// As [`subscribe`](Self::subscribe), for an unsubscribe. The backend
    /// channel is unsubscribed only when no stream is left on it.
    pub fn unsubscribe(&self, stream: &str, channel: String) -> Ack {
        self.queue(Op::Unsubscribe, stream, channel)
    }

    /// A status handle.
    pub fn status(&self) -> Status {
        Status {
            state: self.state.clone(),
            commands: self.commands.downgrade(),
            name: self.name,
        }
    }

    fn queue(&self, op: Op, stream: &str, channel: String) -> Ack {
        let (reply, rx) = oneshot::channel();
        let command = Command::Op {
            op,
            stream: stream.into(),
            channel,
            reply,
        };
        if self.commands.send(command).is_err() {
            return Box::pin(std::future::ready(Err(PubSubError::Closed)));
        }
        // Counted from the call, not from the first poll of the Ack.
        let deadline = Instant::now() + ACK_TIMEOUT;
        let (name, verb) = (self.name, self.verbs[op as usize]);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(PubSubError::Closed),
                Err(_) => Err(PubSubError::Unavailable(format!(
                    "{name} did not acknowledge {verb} within {}s (not connected?); \
                     it still takes effect once the connection is back",
                    ACK_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

impl Status {
    /// Whether the connection is up and has subscribed every active channel.
    pub fn is_connected(&self) -> bool {
        self.state.is_connected()
    }

    /// How many times the connection was re-established after it had been
    /// up and was lost. The first connection does not count.
    pub fn reconnects(&self) -> u64 {
        self.state.reconnects()
    }

    /// Messages in the [`Inbox`] now (0 for drivers that deliver directly).
    pub fn backlog(&self) -> u64 {
        self.state.backlog()
    }

    /// Messages the [`Inbox`] had no room for, since start.
    pub fn dropped(&self) -> u64 {
        self.state.dropped()
    }

    /// What the backend says the connection is subscribed to
    /// ([`Session::subscriptions`]), after every command queued before.
    /// [`PubSubError::Unavailable`] while not connected,
    /// [`PubSubError::Closed`] once the adapter is gone.
    pub async fn subscriptions(&self) -> Result<Vec<String>, PubSubError> {
        let Some(commands) = self.commands.upgrade() else {
            return Err(PubSubError::Closed);
        };
        let (reply, rx) = oneshot::channel();
        if commands.send(Command::List { reply }).is_err() {
            return Err(PubSubError::Closed);
        }
        drop(commands);
        match timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PubSubError::Closed),
            Err(_) => Err(PubSubError::Unavailable(format!(
                "no answer from the {} subscriber within {}s",
                self.name,
                ACK_TIMEOUT.as_secs()
            ))),
        }
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (connected, reconnects) = (self.is_connected(), self.reconnects());
        let (backlog, dropped) = (self.backlog(), self.dropped());
        write!(f, "Status {{ backend: {:?}, connected: {connected}, reconnects: {reconnects}, backlog: {backlog}, dropped: {dropped} }}", self.name)
    }
}

struct Task<B: Backend> {
    backend: B,
    /// The URL without secrets, for logs.
    url: String,
    delivery: Delivery,
    state: Arc<State>,
    routes: Arc<Routes>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Replies to subscribes made while disconnected, answered once a
    /// connection has subscribed them.
    waiting: Vec<(String, Reply)>,
    /// `waiting` is pruned of abandoned replies when it reaches this length.
    prune_at: usize,
    backoff: Backoff,
}

/// A subscribe or unsubscribe of the batch being applied.
struct Pending {
    op: Op,
    stream: Arc<str>,
    channel: String,
    /// False for an unsubscribe of a channel another stream still uses.
    send: bool,
    reply: Reply,
}

fn not_connected(name: &str) -> PubSubError {
    PubSubError::Unavailable(format!("{name} subscriber is not connected"))
}

/// `work` within `limit`, the timeout as a lost connection.
async fn within<T>(
    limit: Duration,
    what: impl std::fmt::Display,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(format!("no reply to {what} within {}s", limit.as_secs())),
    }
}

impl<B: Backend> Task<B> {
    async fn run(mut self) {
        // When the last connection was lost; None until the first one is up.
        let mut lost_at: Option<Instant> = None;
        let mut first = true;
        loop {
            let Some((mut session, lost)) = self.until_connected(first).await else {
                return;
            };
            self.state
                .connected
                .store(true, std::sync::atomic::Ordering::Release);
            let channels = self.routes.len();
            match lost_at.take() {
                Some(at) => {
                    self.state
                        .reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        adapter = B::NAME,
                        url = %self.url,
                        gap_ms = at.elapsed().as_millis() as u64,
                        channels,
                        "subscriber reconnected and subscribed every channel again; messages \
                         published during the gap were lost"
                    );
                }
                None => {
                    tracing::info!(adapter = B::NAME, url = %self.url, channels, "{} {} connected", B::NAME, B::ROLE)
                }
            }
            first = false;
            let reason = self.serve(&mut session, &lost).await;
            self.state
                .connected
                .store(false, std::sync::atomic::Ordering::Release);
            let Some(reason) = reason else {
                return;
            };
            tracing::warn!(
                adapter = B::NAME,
                url = %self.url,
                reason = %reason,
                "subscriber connection lost; reconnecting. Messages published until it is back \
                 are lost"
            );
            lost_at = Some(Instant::now());
        }
    }

    /// Connects (with backoff) and subscribes every routed channel, recording
    /// commands meanwhile. None when the adapter was dropped.
    async fn until_connected(&mut self, first: bool) -> Option<(B::Session, Arc<LostSignal>)> {
        // The first connection is tried at once; after a loss, the delay is
        // jittered so that a fleet does not reconnect in lockstep.
        let mut delay = if first {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        };
        let mut failures = 0u32;
        loop {
            let lost = Arc::new(LostSignal::default());
            let incoming = Incoming {
                routes: self.routes.clone(),
                delivery: self.delivery.clone(),
                state: self.state.clone(),
                lost: lost.clone(),
                name: B::NAME,
            };
            let result = {
                let backend = &self.backend;
                let attempt = async move {
                    tokio::time::sleep(delay).await;
                    within(CONNECT_TIMEOUT, "connect", backend.connect(incoming)).await
                };
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        command = self.commands.recv() => match command {
                            Some(c) => record_offline(&self.routes, &mut self.waiting, &mut self.prune_at, c),
                            None => return None,
                        },
                        result = &mut attempt => break result,
                    }
                }
            };
            let error = match result {
                Ok(mut session) => match self.resubscribe(&mut session).await {
                    Ok(()) => {
                        self.backoff.reset();
                        return Some((session, lost));
                    }
                    Err(reason) => reason,
                },
                Err(reason) => reason,
            };
            failures += 1;
            // One warning per outage; the retries themselves are debug noise.
            if failures == 1 {
                tracing::warn!(adapter = B::NAME, url = %self.url, error = %error, "subscriber cannot connect; retrying with backoff");
            } else {
                tracing::debug!(adapter = B::NAME, url = %self.url, error = %error, failures, "subscriber still cannot connect");
            }
            delay = self.backoff.next_delay();
        }
    }

    /// Subscribes every routed channel on a new connection and answers the
    /// subscribes that waited for it. Err (with the reason) if the connection
    /// failed meanwhile.
    async fn resubscribe(&mut self, session: &mut B::Session) -> Result<(), String> {
        let channels = self.routes.channels();
        let mut refused: Vec<(String, PubSubError)> = Vec::new();
        for chunk in channels.chunks(B::MAX_BATCH.max(1)) {
            let ops: Vec<(Op, &str)> = chunk.iter().map(|c| (Op::Subscribe, c.as_str())).collect();
            let results = self.exec(session, &ops).await?;
            for (channel, result) in chunk.iter().zip(results) {
                if let Err(e) = result {
                    tracing::error!(adapter = B::NAME, channel = %channel, error = %e, "backend refused {}", B::verb(Op::Subscribe));
                    self.routes.drop_channel(channel);
                    refused.push((channel.clone(), e));
                }
            }
        }
        for (channel, reply) in self.waiting.drain(..) {
            let result = match refused.iter().find(|(c, _)| *c == channel) {
                Some((_, e)) => Err(e.clone()),
                None => Ok(()),
            };
            let _ = reply.send(result);
        }
        self.prune_at = 64;
        Ok(())
    }

    /// `ops` on the session within [`REPLY_TIMEOUT`], one result per op.
    async fn exec(
        &self,
        session: &mut B::Session,
        ops: &[(Op, &str)],
    ) -> Result<Vec<Result<(), PubSubError>>, String> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let verbs = format!("{}/{}", B::verb(Op::Subscribe), B::verb(Op::Unsubscribe));
        let results = within(REPLY_TIMEOUT, verbs, session.apply(ops)).await?;
        if results.len() != ops.len() {
            return Err(format!(
                "{} results for {} commands",
                results.len(),
                ops.len()
            ));
        }
        Ok(results)
    }

    /// Applies commands until the connection is lost (Some(reason)) or the
    /// adapter is dropped (None).
    async fn serve(&mut self, session: &mut B::Session, lost: &LostSignal) -> Option<String> {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    // None: the adapter was dropped.
                    let first = command?;
                    let mut batch = vec![first];
                    while batch.len() < B::MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Err(reason) = self.apply(session, batch).await {
                        return Some(reason);
                    }
                }
                reason = lost.wait() => return Some(reason),
                _ = ping.tick() => {
                    if let Err(reason) = within(REPLY_TIMEOUT, "ping", session.ping()).await {
                        return Some(reason);
                    }
                }
            }
        }
    }

    /// Applies `batch` in order: consecutive (un)subscribes as one call, a
    /// listing after everything queued before it. On a lost connection the
    /// rest is recorded for the next one.
    async fn apply(&mut self, session: &mut B::Session, batch: Vec<Command>) -> Result<(), String> {
        let mut segment: Vec<Pending> = Vec::new();
        let mut commands = batch.into_iter();
        while let Some(command) = commands.next() {
            let outcome = match command {
                Command::Op {
                    op,
                    stream,
                    channel,
                    reply,
                } => {
                    let send = match op {
                        // A repeat is harmless, and retries a failed one.
                        Op::Subscribe => {
                            self.routes.add(&channel, stream.clone());
                            true
                        }
                        Op::Unsubscribe => self.routes.remove(&channel, &stream),
                    };
                    segment.push(Pending {
                        op,
                        stream,
                        channel,
                        send,
                        reply,
                    });
                    Ok(())
                }
                Command::List { reply } => {
                    match self.flush(session, std::mem::take(&mut segment)).await {
                        Ok(()) => {
                            let listed = timeout(REPLY_TIMEOUT, session.subscriptions()).await;
                            let (answer, lost) = match listed {
                                Ok(Ok(list)) => (Ok(list), None),
                                Ok(Err((error, lost))) => (Err(error), lost),
                                Err(_) => {
                                    let reason = format!(
                                        "no reply to a subscription listing within {}s",
                                        REPLY_TIMEOUT.as_secs()
                                    );
                                    (Err(PubSubError::Unavailable(reason.clone())), Some(reason))
                                }
                            };
                            let _ = reply.send(answer);
                            lost.map_or(Ok(()), Err)
                        }
                        Err(reason) => {
                            let _ = reply.send(Err(not_connected(B::NAME)));
                            Err(reason)
                        }
                    }
                }
            };
            if let Err(reason) = outcome {
                for rest in commands.by_ref() {
                    record_offline(&self.routes, &mut self.waiting, &mut self.prune_at, rest);
                }
                return Err(reason);
            }
        }
        self.flush(session, segment).await
    }

    /// Runs the backend operations of `segment` and answers each command.
    async fn flush(
        &mut self,
        session: &mut B::Session,
        segment: Vec<Pending>,
    ) -> Result<(), String> {
        if segment.is_empty() {
            return Ok(());
        }
        let ops: Vec<(Op, &str)> = segment
            .iter()
            .filter(|p| p.send)
            .map(|p| (p.op, p.channel.as_str()))
            .collect();
        match self.exec(session, &ops).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for p in segment {
                    let result = if p.send {
                        results.next().unwrap_or(Ok(()))
                    } else {
                        Ok(())
                    };
                    if let Err(e) = &result {
                        tracing::error!(adapter = B::NAME, channel = %p.channel, stream = %p.stream, error = %e, "backend refused {}", B::verb(p.op));
                        if p.op == Op::Subscribe {
                            self.routes.remove(&p.channel, &p.stream);
                        }
                    }
                    let _ = p.reply.send(result);
                }
                Ok(())
            }
            Err(reason) => {
                // The routes already reflect the segment; the next connection
                // applies them, and the subscribes are answered then.
                for p in segment {
                    match p.op {
                        Op::Subscribe => {
                            wait(&mut self.waiting, &mut self.prune_at, p.channel, p.reply)
                        }
                        Op::Unsubscribe => {
                            let _ = p.reply.send(Ok(()));
                        }
                    }
                }
                Err(reason)
            }
        }
    }
}

/// While disconnected: the command changes the routes now; a subscribe is
/// answered once a connection has subscribed it, an unsubscribe at once (a
/// new connection starts with no subscriptions), a listing with an error.
fn record_offline(
    routes: &Routes,
    waiting: &mut Vec<(String, Reply)>,
    prune_at: &mut usize,
    command: Command,
) {
    match command {
        Command::Op {
            op: Op::Subscribe,
            stream,
            channel,
            reply,
        } => {
            routes.add(&channel, stream);
            wait(waiting, prune_at, channel, reply);
        }
        Command::Op {
            op: Op::Unsubscribe,
            stream,
            channel,
            reply,
        } => {
            routes.remove(&channel, &stream);
            let _ = reply.send(Ok(()));
        }
        Command::List { reply } => {
            let _ = reply.send(Err(PubSubError::Unavailable(
                "the subscriber is not connected".into(),
            )));
        }
    }
}

fn wait(waiting: &mut Vec<(String, Reply)>, prune_at: &mut usize, channel: String, reply: Reply) {
    waiting.push((channel, reply));
    if waiting.len() >= *prune_at {
        // Acks time out after a few seconds; drop the abandoned.
        waiting.retain(|(_, reply)| !reply.is_closed());
        *prune_at = (waiting.len() * 2).max(64);
    }
}
