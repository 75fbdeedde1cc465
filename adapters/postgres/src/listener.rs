//! The listening side: one task owning one dedicated connection, plus a driver
//! task per connection.
//!
//! - The **driver** owns the tokio-postgres `Connection` and polls
//!   [`Connection::poll_message`] in a loop: that both moves the listener's
//!   queries along and yields the notifications, which it hands to the
//!   [`Delivery`] at once (awaiting the connection as a future would drop
//!   them). It returns, with the reason, when the connection ends.
//! - The **listener** receives `LISTEN`/`UNLISTEN` commands in call order and
//!   applies them in that order on the connection's `Client`: whatever is
//!   queued when it wakes is sent as one multi-statement query (so a burst of
//!   subscribes costs one round trip) and each command's reply is answered
//!   once it has run. It never waits on the driver, and the driver never waits
//!   on it: listening goes on while a `LISTEN` is in flight.
//!
//! The driver delivers each notification before it reads the next, so
//! nothing from the server queues up here (TCP and PostgreSQL's own bounded
//! queue hold the rest). The command queue is unbounded but fed by the hub,
//! not by the server: a LISTEN per stream's first local subscriber (whose
//! confirmation waits for it) and an UNLISTEN per last one leaving.
//!
//! [`Routes`] (channel to streams) is shared by both: the listener updates it
//! with every command, connected or not, so a new connection simply LISTENs
//! every channel in it; the driver looks notifications up in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::pubsub::{Backoff, Delivery};
use cable_core::PubSubError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls, SimpleQueryMessage, Socket};

use crate::error::{describe, is_connection_error, to_pubsub_error};
use crate::naming::quote_identifier;

/// Bound on one connection attempt (TCP, startup, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the reply to one batch of LISTEN/UNLISTEN (or a ping); past it
/// the connection is considered dead.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an otherwise quiet connection is checked with `SELECT 1`: a
/// server that vanished without closing TCP (network partition, VM pause) is
/// noticed within `PING_INTERVAL + REPLY_TIMEOUT`.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Most statements sent in one query.
const MAX_BATCH: usize = 512;

/// State shared with [`crate::PostgresPubSub`] and [`crate::PostgresStatus`].
#[derive(Default)]
pub(crate) struct State {
    pub(crate) connected: AtomicBool,
    pub(crate) reconnects: AtomicU64,
}

type Reply = oneshot::Sender<Result<(), PubSubError>>;
pub(crate) type ChannelsReply = oneshot::Sender<Result<Vec<String>, PubSubError>>;

/// One call on the adapter, with the PostgreSQL channel already computed.
pub(crate) enum Command {
    Listen {
        stream: Arc<str>,
        channel: String,
        reply: Reply,
    },
    Unlisten {
        stream: Arc<str>,
        channel: String,
        reply: Reply,
    },
    /// `SELECT pg_listening_channels()` on the listening connection.
    Channels { reply: ChannelsReply },
}

/// Which local streams each channel carries. Usually one; several only when
/// streams share a channel name (names cut to 63 bytes, or a SHA1 collision),
/// and then a notification goes to all of them, as PostgreSQL cannot tell
/// them apart either.
#[derive(Default)]
pub(crate) struct Routes(Mutex<HashMap<String, Vec<Arc<str>>>>);

impl Routes {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<str>>>> {
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

pub(crate) struct Listener {
    /// With the application name set and TLS off.
    config: tokio_postgres::Config,
    /// The URL without password, for logs.
    url: String,
    delivery: Delivery,
    state: Arc<State>,
    routes: Arc<Routes>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Replies to LISTENs made while disconnected, answered once a connection
    /// has listened to them.
    waiting: Vec<(String, Reply)>,
    /// `waiting` is pruned of abandoned replies when it reaches this length.
    prune_at: usize,
    /// Delays between connection attempts while the backend is unreachable.
    backoff: Backoff,
}

/// The listening connection: its client, and the task driving it.
struct Conn {
    client: Client,
    /// Returns why the connection ended.
    driver: JoinHandle<String>,
}

/// A LISTEN or UNLISTEN of the batch being applied.
struct Pending {
    listen: bool,
    stream: Arc<str>,
    channel: String,
    /// None for an UNLISTEN of a channel another stream still uses.
    sql: Option<String>,
    reply: Reply,
}

impl Listener {
    pub(crate) fn new(
        config: tokio_postgres::Config,
        url: String,
        delivery: Delivery,
        state: Arc<State>,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Listener {
            config,
            url,
            delivery,
            state,
            routes: Arc::default(),
            commands,
            waiting: Vec::new(),
            prune_at: 64,
            backoff: Backoff::default(),
        }
    }

    /// Runs until the [`crate::PostgresPubSub`] is dropped.
    pub(crate) async fn run(mut self) {
        let name = self.config.get_application_name().unwrap_or("").to_owned();
        // When the last connection was lost; None until the first one is up.
        let mut lost_at: Option<Instant> = None;
        let mut first = true;
        loop {
            let Some(mut conn) = self.until_connected(first).await else {
                return;
            };
            self.state.connected.store(true, Ordering::Release);
            match lost_at.take() {
                Some(at) => {
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        url = %self.url,
                        application_name = %name,
                        gap_ms = at.elapsed().as_millis() as u64,
                        channels = self.routes.len(),
                        "postgres listener reconnected and ran LISTEN again; notifications sent \
                         during the gap were lost"
                    );
                }
                None => tracing::info!(
                    url = %self.url,
                    application_name = %name,
                    channels = self.routes.len(),
                    "postgres listener connected"
                ),
            }
            first = false;
            let reason = self.serve(&mut conn).await;
            self.state.connected.store(false, Ordering::Release);
            let Some(reason) = reason else {
                // The adapter was dropped: dropping the client lets the driver
                // close the connection politely.
                return;
            };
            conn.driver.abort();
            tracing::warn!(
                url = %self.url,
                reason = %reason,
                "postgres listener connection lost; reconnecting. Notifications sent until it \
                 is back are lost"
            );
            lost_at = Some(Instant::now());
        }
    }

    /// Connects (with backoff) and LISTENs every channel, recording commands
    /// meanwhile. None when the adapter was dropped.
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
            let attempt = connect(
                self.config.clone(),
                delay,
                self.routes.clone(),
                self.delivery.clone(),
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
                Ok(conn) => match self.relisten(&conn.client).await {
                    Ok(()) => {
                        self.backoff.reset();
                        return Some(conn);
                    }
                    Err(reason) => {
                        conn.driver.abort();
                        reason
                    }
                },
                Err(reason) => reason,
            };
            failures += 1;
            // One warning per outage; the retries themselves are debug noise.
            if failures == 1 {
                tracing::warn!(url = %self.url, error = %error, "postgres listener cannot connect; retrying with backoff");
            } else {
                tracing::debug!(url = %self.url, error = %error, failures, "postgres listener still cannot connect");
            }
            delay = self.backoff.next_delay();
        }
    }

    /// While disconnected: the command changes the routes now; a LISTEN is
    /// answered once a connection has run it, an UNLISTEN at once (a new
    /// connection starts with no channels), a channel list with an error.
    fn record_offline(&mut self, command: Command) {
        match command {
            Command::Listen {
                stream,
                channel,
                reply,
            } => {
                self.routes.add(&channel, stream);
                self.wait(channel, reply);
            }
            Command::Unlisten {
                stream,
                channel,
                reply,
            } => {
                self.routes.remove(&channel, &stream);
                let _ = reply.send(Ok(()));
            }
            Command::Channels { reply } => {
                let _ = reply.send(Err(not_connected()));
            }
        }
    }

    fn wait(&mut self, channel: String, reply: Reply) {
        self.waiting.push((channel, reply));
        if self.waiting.len() >= self.prune_at {
            // Acks time out after a few seconds; drop the abandoned.
            self.waiting.retain(|(_, reply)| !reply.is_closed());
            self.prune_at = (self.waiting.len() * 2).max(64);
        }
    }

    /// LISTENs every routed channel on a new connection and answers the
    /// LISTENs that waited for it. Err (with the reason) if the connection
    /// failed meanwhile.
    async fn relisten(&mut self, client: &Client) -> Result<(), String> {
        let channels = self.routes.channels();
        let mut refused: Vec<(String, PubSubError)> = Vec::new();
        for chunk in channels.chunks(MAX_BATCH) {
            let sqls: Vec<String> = chunk.iter().map(|c| listen_sql(true, c)).collect();
            let results = run_statements(client, &sqls).await?;
            for (channel, result) in chunk.iter().zip(results) {
                if let Err(e) = result {
                    tracing::error!(channel = %channel, error = %e, "postgres refused LISTEN");
                    for stream in self.routes.streams(channel) {
                        self.routes.remove(channel, &stream);
                    }
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

    /// Applies commands until the connection is lost (Some(reason)) or the
    /// adapter is dropped (None).
    async fn serve(&mut self, conn: &mut Conn) -> Option<String> {
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
                    if let Err(reason) = self.apply(&conn.client, batch).await {
                        return Some(reason);
                    }
                }
                ended = &mut conn.driver => {
                    return Some(match ended {
                        Ok(reason) => reason,
                        Err(e) => format!("connection task failed: {e}"),
                    });
                }
                _ = ping.tick() => {
                    if let Err(reason) = ping_within(&conn.client).await {
                        return Some(reason);
                    }
                }
            }
        }
    }

    /// Applies `batch` in order: consecutive LISTEN/UNLISTENs as one query, a
    /// channel list after everything queued before it. On a lost connection
    /// the rest is recorded for the next one.
    async fn apply(&mut self, client: &Client, batch: Vec<Command>) -> Result<(), String> {
        let mut segment: Vec<Pending> = Vec::new();
        let mut commands = batch.into_iter();
        while let Some(command) = commands.next() {
            let outcome = match command {
                Command::Listen {
                    stream,
                    channel,
                    reply,
                } => {
                    self.routes.add(&channel, stream.clone());
                    segment.push(Pending {
                        listen: true,
                        sql: Some(listen_sql(true, &channel)),
                        stream,
                        channel,
                        reply,
                    });
                    Ok(())
                }
                Command::Unlisten {
                    stream,
                    channel,
                    reply,
                } => {
                    let unused = self.routes.remove(&channel, &stream);
                    segment.push(Pending {
                        listen: false,
                        sql: unused.then(|| listen_sql(false, &channel)),
                        stream,
                        channel,
                        reply,
                    });
                    Ok(())
                }
                Command::Channels { reply } => {
                    match self.flush(client, std::mem::take(&mut segment)).await {
                        Ok(()) => match listening_channels(client).await {
                            Ok(channels) => {
                                let _ = reply.send(Ok(channels));
                                Ok(())
                            }
                            Err((error, lost)) => {
                                let _ = reply.send(Err(error));
                                lost.map_or(Ok(()), Err)
                            }
                        },
                        Err(reason) => {
                            let _ = reply.send(Err(not_connected()));
                            Err(reason)
                        }
                    }
                }
            };
            if let Err(reason) = outcome {
                for rest in commands.by_ref() {
                    self.record_offline(rest);
                }
                return Err(reason);
            }
        }
        self.flush(client, segment).await
    }

    /// Runs the statements of `segment` and answers each command.
    async fn flush(&mut self, client: &Client, segment: Vec<Pending>) -> Result<(), String> {
        if segment.is_empty() {
            return Ok(());
        }
        let sqls: Vec<String> = segment.iter().filter_map(|p| p.sql.clone()).collect();
        match run_statements(client, &sqls).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for p in segment {
                    let result = match p.sql {
                        Some(_) => results.next().unwrap_or(Ok(())),
                        None => Ok(()),
                    };
                    if let Err(e) = &result {
                        let command = if p.listen { "LISTEN" } else { "UNLISTEN" };
                        tracing::error!(channel = %p.channel, stream = %p.stream, error = %e, "postgres refused {command}");
                        if p.listen {
                            self.routes.remove(&p.channel, &p.stream);
                        }
                    }
                    let _ = p.reply.send(result);
                }
                Ok(())
            }
            Err(reason) => {
                // The routes already reflect the segment; the next connection
                // applies them, and the LISTENs are answered then.
                for p in segment {
                    if p.listen {
                        self.wait(p.channel, p.reply);
                    } else {
                        let _ = p.reply.send(Ok(()));
                    }
                }
                Err(reason)
            }
        }
    }
}

fn not_connected() -> PubSubError {
    PubSubError::Unavailable("postgres listener is not connected".into())
}

fn listen_sql(listen: bool, channel: &str) -> String {
    let command = if listen { "LISTEN" } else { "UNLISTEN" };
    format!("{command} {}", quote_identifier(channel))
}

/// Waits `delay`, then opens the listening connection and starts its driver.
async fn connect(
    config: tokio_postgres::Config,
    delay: Duration,
    routes: Arc<Routes>,
    delivery: Delivery,
) -> Result<Conn, String> {
    tokio::time::sleep(delay).await;
    match timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
        Ok(Ok((client, connection))) => {
            let driver = tokio::spawn(drive(connection, routes, delivery));
            Ok(Conn { client, driver })
        }
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "no connection within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Drives the connection with `poll_message` and delivers notifications,
/// until the connection ends; returns why.
async fn drive(
    mut connection: Connection<Socket, NoTlsStream>,
    routes: Arc<Routes>,
    delivery: Delivery,
) -> String {
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let streams = routes.streams(n.channel());
                if streams.is_empty() {
                    tracing::debug!(
                        channel = n.channel(),
                        "notification on a channel no stream uses; ignored"
                    );
                }
                for stream in streams {
                    delivery.deliver(&stream, n.payload());
                }
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(notice = %notice, "postgres notice on the listening connection");
            }
            Some(Ok(_)) => {}
            // Terminal, per tokio-postgres.
            Some(Err(e)) => return describe(&e),
            None => return "connection closed".to_owned(),
        }
    }
}

/// Runs `sqls` in order, within [`REPLY_TIMEOUT`] per query: one result per
/// statement, or Err(reason) if the connection failed.
///
/// They go as one multi-statement query, which PostgreSQL runs as one
/// implicit transaction: if it refuses one statement none takes effect, so
/// they are then run one at a time to find which (LISTEN and UNLISTEN can
/// safely run twice).
async fn run_statements(
    client: &Client,
    sqls: &[String],
) -> Result<Vec<Result<(), PubSubError>>, String> {
    if sqls.is_empty() {
        return Ok(Vec::new());
    }
    match execute_within(client, &sqls.join(";\n")).await? {
        Ok(()) => Ok(vec![Ok(()); sqls.len()]),
        Err(e) if sqls.len() == 1 => Ok(vec![Err(e)]),
        Err(_) => {
            let mut results = Vec::with_capacity(sqls.len());
            for sql in sqls {
                results.push(execute_within(client, sql).await?);
            }
            Ok(results)
        }
    }
}

/// Ok(outcome) when the server answered (Ok, or the error it refused the
/// query with); Err(reason) when the connection is unusable.
async fn execute_within(client: &Client, sql: &str) -> Result<Result<(), PubSubError>, String> {
    match timeout(REPLY_TIMEOUT, client.batch_execute(sql)).await {
        Ok(Ok(())) => Ok(Ok(())),
        Ok(Err(e)) if is_connection_error(&e) || client.is_closed() => Err(describe(&e)),
        Ok(Err(e)) => Ok(Err(to_pubsub_error(&e))),
        Err(_) => Err(format!(
            "no reply to LISTEN/UNLISTEN within {}s",
            REPLY_TIMEOUT.as_secs()
        )),
    }
}

/// `SELECT pg_listening_channels()`, sorted. On failure: the error for the
/// caller, and Some(reason) if the connection is unusable.
async fn listening_channels(client: &Client) -> Result<Vec<String>, (PubSubError, Option<String>)> {
    let query = client.simple_query("SELECT pg_listening_channels()");
    match timeout(REPLY_TIMEOUT, query).await {
        Ok(Ok(messages)) => {
            let mut channels: Vec<String> = messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                    _ => None,
                })
                .collect();
            channels.sort();
            Ok(channels)
        }
        Ok(Err(e)) => {
            let lost = (is_connection_error(&e) || client.is_closed()).then(|| describe(&e));
            Err((to_pubsub_error(&e), lost))
        }
        Err(_) => {
            let reason = format!(
                "no reply to pg_listening_channels() within {}s",
                REPLY_TIMEOUT.as_secs()
            );
            Err((PubSubError::Unavailable(reason.clone()), Some(reason)))
        }
    }
}

/// `SELECT 1` within [`REPLY_TIMEOUT`]; Err(reason) if the connection is dead.
async fn ping_within(client: &Client) -> Result<(), String> {
    match timeout(REPLY_TIMEOUT, client.simple_query("SELECT 1")).await {
        Ok(Ok(_)) => Ok(()),
        // An error reply still proves the connection is alive.
        Ok(Err(e)) if !(is_connection_error(&e) || client.is_closed()) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "no reply to SELECT 1 within {}s",
            REPLY_TIMEOUT.as_secs()
        )),
    }
}
