//! The subscribing side: one task owning one dedicated connection.
//!
//! Commands arrive over an mpsc queue in call order and are applied in that
//! order: whatever is queued when the task wakes is sent as one pipeline (so a
//! burst of subscribes costs one round trip) and each command's [`Command::reply`]
//! is answered from Redis' reply to it. Incoming messages wait in the
//! connection's [`Inbox`] (bounded in bytes) and the task hands them to the
//! [`Delivery`] whenever it is not sending, and also while it waits for
//! Redis' replies, so a slow (UN)SUBSCRIBE does not hold messages back.
//!
//! The command queue itself is unbounded but is fed by the hub, not by Redis:
//! one subscribe per stream's first local subscriber, whose confirmation
//! waits for the reply, and one unsubscribe per last one leaving. It holds at
//! most a few commands per connection, and while Redis is down they are
//! folded into `wanted` as they arrive.
//!
//! The task owns the set of channels that should be subscribed (`wanted`),
//! updated by every command whether or not Redis is reachable, so a new
//! connection simply subscribes that set.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cable_core::pubsub::{Backoff, Delivery};
use cable_core::PubSubError;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, ErrorKind, ProtocolVersion, RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::inbox::{Inbox, Message, PushSender};
use crate::publisher::{set_name, to_pubsub_error};

/// Bound on one connection attempt (TCP, TLS, HELLO/AUTH, SETNAME).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on Redis' replies to one pipeline of (UN)SUBSCRIBEs; past it the
/// connection is considered dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an otherwise quiet connection is checked with PING: a peer that
/// vanished without closing TCP (network partition, VM pause) is noticed
/// within `PING_INTERVAL + REPLY_TIMEOUT`.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Most commands sent in one pipeline.
const MAX_BATCH: usize = 1024;

/// State shared with [`crate::RedisPubSub`].
#[derive(Default)]
pub(crate) struct State {
    pub(crate) connected: AtomicBool,
    pub(crate) reconnects: AtomicU64,
    /// Messages in an [`Inbox`] now.
    pub(crate) backlog: AtomicU64,
    /// Messages an [`Inbox`] had no room for, since start.
    pub(crate) dropped: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Subscribe,
    Unsubscribe,
}

impl Op {
    pub(crate) fn command(self) -> &'static str {
        match self {
            Op::Subscribe => "SUBSCRIBE",
            Op::Unsubscribe => "UNSUBSCRIBE",
        }
    }
}

type Reply = oneshot::Sender<Result<(), PubSubError>>;

/// One `subscribe` or `unsubscribe` call, with the full Redis channel name.
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) channel: String,
    pub(crate) reply: Reply,
}

pub(crate) struct Subscriber {
    /// For the RESP3 connection (preferred: it can be named and pinged).
    resp3: redis::Client,
    /// For the RESP2 fallback on servers without HELLO.
    resp2: redis::Client,
    name: String,
    /// The URL without password, for logs.
    url: String,
    out: Deliverer,
    state: Arc<State>,
    /// Bound of each connection's [`Inbox`], in bytes.
    max_backlog_bytes: usize,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Channels that should be subscribed, per the commands so far.
    wanted: HashSet<String>,
    /// Replies to subscribes made while disconnected, answered once a
    /// connection has subscribed them.
    waiting: Vec<(String, Reply)>,
    /// `waiting` is pruned of abandoned replies when it reaches this length.
    prune_at: usize,
    /// Delays between connection attempts while the backend is unreachable.
    backoff: Backoff,
}

impl Subscriber {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: redis::Client,
        name: String,
        prefix: Option<String>,
        url: String,
        delivery: Delivery,
        state: Arc<State>,
        max_backlog_bytes: usize,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let with = |protocol| {
            let info = client.get_connection_info().clone();
            let settings = info.redis_settings().clone().set_protocol(protocol);
            // Re-opening a ConnectionInfo that came from a valid client cannot
            // fail; fall back to the original client all the same.
            redis::Client::open(info.set_redis_settings(settings)).unwrap_or(client.clone())
        };
        Subscriber {
            resp3: with(ProtocolVersion::RESP3),
            resp2: with(ProtocolVersion::RESP2),
            name,
            url,
            out: Deliverer { prefix, delivery },
            state,
            max_backlog_bytes,
            commands,
            wanted: HashSet::new(),
            waiting: Vec::new(),
            prune_at: 64,
            backoff: Backoff::default(),
        }
    }

    /// Runs until the [`crate::RedisPubSub`] is dropped.
    pub(crate) async fn run(mut self) {
        // When the last connection was lost; None until the first one is up.
        let mut lost_at: Option<Instant> = None;
        let mut first = true;
        loop {
            let Some(conn) = self.until_connected(first).await else {
                return;
            };
            self.state.connected.store(true, Ordering::Release);
            match lost_at.take() {
                Some(at) => {
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = %self.url,
                        gap_ms = at.elapsed().as_millis() as u64,
                        streams = self.wanted.len(),
                        "redis subscriber reconnected and re-subscribed; messages published \
                         during the gap were lost"
                    );
                }
                None => tracing::info!(
                    url = %self.url,
                    streams = self.wanted.len(),
                    "redis subscriber connected"
                ),
            }
            first = false;
            let reason = self.serve(conn).await;
            self.state.connected.store(false, Ordering::Release);
            let Some(reason) = reason else {
                return;
            };
            tracing::warn!(
                url = %self.url,
                reason = %reason,
                "redis subscriber connection lost; reconnecting. Messages published until it \
                 is back are lost"
            );
            lost_at = Some(Instant::now());
        }
    }

    /// Connects (with backoff) and subscribes every wanted channel, recording
    /// commands meanwhile. None when the adapter was dropped.
    async fn until_connected(&mut self, first: bool) -> Option<Conn> {
        // The first connection is tried at once; after a loss, the delay is
        // jittered so that a fleet does not reconnect in lockstep.
        let mut delay = if first {
            Duration::ZERO
        } else {
            self.backoff.next_delay()
        };
        let mut failures = 0u32;
        loop {
            let (limit, state) = (self.max_backlog_bytes, self.state.clone());
            let attempt = connect(
                self.resp3.clone(),
                self.resp2.clone(),
                self.name.clone(),
                move || Inbox::new(limit, state.clone()),
                delay,
            );
            tokio::pin!(attempt);
            let result = loop {
                tokio::select! {
                    command = self.commands.recv() => match command {
                        Some(c) => self.record_offline(c),
                        None => return None,
                    },
                    result = &mut attempt => break result,
                }
            };
            let error = match result {
                Ok(mut conn) => match self.resubscribe(&mut conn).await {
                    Ok(()) => {
                        self.backoff.reset();
                        return Some(conn);
                    }
                    Err(reason) => reason,
                },
                Err(reason) => reason,
            };
            failures += 1;
            // One warning per outage; the retries themselves are debug noise.
            if failures == 1 {
                tracing::warn!(url = %self.url, error = %error, "redis subscriber cannot connect; retrying with backoff");
            } else {
                tracing::debug!(url = %self.url, error = %error, failures, "redis subscriber still cannot connect");
            }
            delay = self.backoff.next_delay();
        }
    }

    /// While disconnected: the command changes `wanted` now; a subscribe is
    /// answered once a connection has subscribed it, an unsubscribe at once
    /// (a new connection starts with no subscriptions).
    fn record_offline(&mut self, command: Command) {
        match command.op {
            Op::Subscribe => {
                self.wanted.insert(command.channel.clone());
                self.waiting.push((command.channel, command.reply));
                if self.waiting.len() >= self.prune_at {
                    // Acks time out after a few seconds; drop the abandoned.
                    self.waiting.retain(|(_, reply)| !reply.is_closed());
                    self.prune_at = (self.waiting.len() * 2).max(64);
                }
            }
            Op::Unsubscribe => {
                self.wanted.remove(&command.channel);
                let _ = command.reply.send(Ok(()));
            }
        }
    }

    /// Subscribes every wanted channel on a new connection and answers the
    /// subscribes that waited for it. Err (with the reason) if the connection
    /// failed meanwhile.
    async fn resubscribe(&mut self, conn: &mut Conn) -> Result<(), String> {
        let channels: Vec<String> = self.wanted.iter().cloned().collect();
        let mut refused: Vec<(String, PubSubError)> = Vec::new();
        for chunk in channels.chunks(MAX_BATCH) {
            let ops: Vec<(Op, &str)> = chunk.iter().map(|c| (Op::Subscribe, c.as_str())).collect();
            let inbox = conn.inbox.clone();
            let results = self
                .out
                .while_awaiting(&inbox, conn.exec_within(&ops))
                .await?;
            for (channel, result) in chunk.iter().zip(results) {
                if let Err(e) = result {
                    tracing::error!(channel = %channel, error = %e, "redis refused SUBSCRIBE");
                    self.wanted.remove(channel);
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

    /// Applies commands and delivers messages until the connection is lost
    /// (Some(reason)) or the adapter is dropped (None).
    async fn serve(&mut self, mut conn: Conn) -> Option<String> {
        let inbox = conn.inbox.clone();
        let reason = self.serve_until_lost(&mut conn, &inbox).await;
        if reason.is_some() {
            // What the connection received before it failed is still good.
            while let Some(m) = inbox.try_pop() {
                self.out.deliver(&m);
            }
        }
        reason
    }

    async fn serve_until_lost(&mut self, conn: &mut Conn, inbox: &Inbox) -> Option<String> {
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    // None: the adapter was dropped.
                    let first = command?;
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match self.commands.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    if let Err(reason) = self.apply(conn, inbox, batch).await {
                        return Some(reason);
                    }
                }
                message = inbox.pop() => match message {
                    Some(m) => self.out.deliver(&m),
                    None => return Some("connection closed".to_owned()),
                },
                _ = ping.tick() => {
                    if let Err(reason) = self.out.while_awaiting(inbox, conn.ping_within()).await {
                        return Some(reason);
                    }
                }
            }
        }
    }

    /// Sends `batch` as one pipeline, in order, and answers each command.
    async fn apply(
        &mut self,
        conn: &mut Conn,
        inbox: &Inbox,
        batch: Vec<Command>,
    ) -> Result<(), String> {
        for c in &batch {
            match c.op {
                Op::Subscribe => self.wanted.insert(c.channel.clone()),
                Op::Unsubscribe => self.wanted.remove(&c.channel),
            };
        }
        let ops: Vec<(Op, &str)> = batch.iter().map(|c| (c.op, c.channel.as_str())).collect();
        match self.out.while_awaiting(inbox, conn.exec_within(&ops)).await {
            Ok(results) => {
                for (c, result) in batch.into_iter().zip(results) {
                    if let Err(e) = &result {
                        tracing::error!(channel = %c.channel, error = %e, "redis refused {}", c.op.command());
                        if c.op == Op::Subscribe {
                            self.wanted.remove(&c.channel);
                        }
                    }
                    let _ = c.reply.send(result);
                }
                Ok(())
            }
            Err(reason) => {
                // `wanted` already reflects the batch; the next connection
                // applies it, and the subscribes are answered then.
                for c in batch {
                    self.record_offline_reply(c);
                }
                Err(reason)
            }
        }
    }

    fn record_offline_reply(&mut self, command: Command) {
        match command.op {
            Op::Subscribe => self.waiting.push((command.channel, command.reply)),
            Op::Unsubscribe => {
                let _ = command.reply.send(Ok(()));
            }
        }
    }
}

/// Hands messages to the hub, without the channel prefix.
struct Deliverer {
    /// `<prefix>:`, stripped from incoming channel names.
    prefix: Option<String>,
    delivery: Delivery,
}

impl Deliverer {
    fn deliver(&self, message: &Message) {
        let channel = message.channel.as_str();
        let stream = match &self.prefix {
            Some(prefix) => match channel.strip_prefix(prefix.as_str()) {
                Some(stream) => stream,
                None => {
                    tracing::debug!(channel, "message on a channel without our prefix; ignored");
                    return;
                }
            },
            None => channel,
        };
        self.delivery.deliver(stream, &message.payload);
    }

    /// Awaits `work` (a round trip to Redis) while delivering whatever
    /// arrives meanwhile.
    async fn while_awaiting<T>(&self, inbox: &Inbox, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                message = inbox.pop(), if open => match message {
                    Some(m) => self.deliver(&m),
                    // The connection ended; `work` fails or times out soon.
                    None => open = false,
                },
            }
        }
    }
}

/// The subscriber connection: RESP3 when the server speaks it, else RESP2;
/// its messages arrive in `inbox`.
struct Conn {
    link: Link,
    inbox: Arc<Inbox>,
    /// RESP2: the task moving messages from redis-rs' stream to the inbox.
    _pump: Option<AbortOnDrop>,
}

enum Link {
    Resp3(MultiplexedConnection),
    Resp2(PubSubSink),
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits `delay`, then opens a subscriber connection. RESP3 first, because
/// only a RESP3 connection can send CLIENT SETNAME and PING while subscribed
/// with redis-rs; RESP2 if the server has no HELLO (Redis < 6).
async fn connect(
    resp3: redis::Client,
    resp2: redis::Client,
    name: String,
    new_inbox: impl Fn() -> Arc<Inbox>,
    delay: Duration,
) -> Result<Conn, String> {
    tokio::time::sleep(delay).await;
    let attempt = async {
        let inbox = new_inbox();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Replies are bounded by our own timeouts; an idle subscriber
            // connection waits for messages indefinitely.
            .set_response_timeout(None)
            .set_push_sender(PushSender(inbox.clone()));
        match resp3
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(mut conn) => {
                set_name(&mut conn, &name).await;
                Ok(Conn {
                    link: Link::Resp3(conn),
                    inbox: inbox.clone(),
                    _pump: None,
                })
            }
            // The server answered HELLO with an error: no RESP3 (Redis < 6,
            // HELLO renamed or denied by an ACL). Any real problem (a wrong
            // password) makes the RESP2 attempt fail too, with its own error.
            Err(e)
                if e.kind() == ErrorKind::RESP3NotSupported
                    || matches!(e.kind(), ErrorKind::Server(_)) =>
            {
                tracing::info!(
                    error = %e,
                    "redis refused HELLO 3: the subscriber connection uses RESP2 and cannot be named"
                );
                // The RESP3 attempt's sender is gone, and its drop closed
                // that inbox: a new one.
                let inbox = new_inbox();
                let (sink, mut stream) = resp2.get_async_pubsub().await?.split();
                // redis-rs queues RESP2 messages without bound; this task
                // only moves them into the bounded inbox, so they never wait
                // there for long.
                let pump = {
                    let inbox = inbox.clone();
                    tokio::spawn(async move {
                        while let Some(msg) = stream.next().await {
                            if let Ok(channel) = msg.get_channel::<Vec<u8>>() {
                                let payload = msg.get_payload_bytes().to_vec();
                                if let Some(m) = Message::from_bytes(channel, payload) {
                                    inbox.push(m);
                                }
                            }
                        }
                        inbox.close();
                    })
                };
                Ok(Conn {
                    link: Link::Resp2(sink),
                    inbox: inbox.clone(),
                    _pump: Some(AbortOnDrop(pump)),
                })
            }
            Err(e) => Err(e),
        }
    };
    match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result.map_err(|e: RedisError| e.to_string()),
        Err(_) => Err(format!(
            "no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

impl Conn {
    /// Runs `ops` in order within [`REPLY_TIMEOUT`]: one result per op, or
    /// Err(reason) if the connection failed.
    async fn exec_within(
        &mut self,
        ops: &[(Op, &str)],
    ) -> Result<Vec<Result<(), PubSubError>>, String> {
        match timeout(REPLY_TIMEOUT, self.exec(ops)).await {
            Ok(Ok(results)) if results.len() == ops.len() => Ok(results),
            Ok(Ok(results)) => Err(format!(
                "{} replies to {} commands",
                results.len(),
                ops.len()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no reply to (UN)SUBSCRIBE within {}s",
                REPLY_TIMEOUT.as_secs()
            )),
        }
    }

    async fn exec(&mut self, ops: &[(Op, &str)]) -> RedisResult<Vec<Result<(), PubSubError>>> {
        let outcome = |r: RedisResult<Value>| r.map(drop).map_err(|e| to_pubsub_error(&e));
        match &mut self.link {
            Link::Resp3(conn) => {
                let mut pipe = redis::pipe();
                for (op, channel) in ops {
                    pipe.cmd(op.command()).arg(*channel);
                }
                // Per-command results: a refused channel (ACL) fails alone.
                pipe.ignore_errors();
                let results: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
                Ok(results.into_iter().map(outcome).collect())
            }
            // The RESP2 sink has no pipelines; one round trip per command.
            Link::Resp2(sink) => {
                let mut results = Vec::with_capacity(ops.len());
                for (op, channel) in ops {
                    let result = match op {
                        Op::Subscribe => sink.subscribe(*channel).await,
                        Op::Unsubscribe => sink.unsubscribe(*channel).await,
                    };
                    match result {
                        Err(e) if !matches!(e.kind(), ErrorKind::Server(_)) => return Err(e),
                        other => results.push(outcome(other.map(|()| Value::Okay))),
                    }
                }
                Ok(results)
            }
        }
    }

    /// PING within [`REPLY_TIMEOUT`]; Err(reason) if the connection is dead.
    async fn ping_within(&mut self) -> Result<(), String> {
        let ping = async {
            match &mut self.link {
                Link::Resp3(conn) => redis::cmd("PING").query_async::<Value>(conn).await,
                Link::Resp2(sink) => sink.ping::<Value>().await,
            }
        };
        match timeout(REPLY_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            // An error reply still proves the connection is alive.
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::Server(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no reply to PING within {}s",
                REPLY_TIMEOUT.as_secs()
            )),
        }
    }
}
