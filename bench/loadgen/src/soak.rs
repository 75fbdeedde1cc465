//! `soak`: minutes of churn while the server's figures are sampled, to find
//! what a long-lived process leaks.
//!
//! `--clients` clients are present at any time: as many slots, each living
//! one short life after another. A life connects as a user of its own (`{i}`
//! in the URL is the life's serial number, so its internal
//! `action_cable/<id>` stream is new too), subscribes to a `ChatChannel`
//! room, maybe (`--resubscribe-percent`) unsubscribes midway and subscribes
//! to another room, and leaves: with a close frame, or (`--abrupt-percent`)
//! by dropping the socket without one. Rooms come and go: their names carry
//! a generation that moves on every `--room-secs`, so the older rooms empty
//! as their clients' lives end. A publisher sends `--rate` broadcasts a
//! second through the chat's `POST /admin/broadcast`, each to a room of the
//! current generation.
//!
//! Every `--sample-secs` the server's RSS and open descriptors are read from
//! `/proc` (`--server-pid`), and its tokio tasks, connections,
//! subscriptions and hub streams from its Prometheus endpoint
//! (`--metrics-url`, `chat --ops`). Adapter subscriptions: cable's hub asks
//! the adapter for one subscription per stream (`Hub::add` subscribes when a
//! stream gets its first local subscriber, `Hub::remove` unsubscribes when
//! the last leaves), so the hub's stream count is what cable holds on the
//! adapter; what the backend holds is read only from Redis (`--redis-url`
//! and `--channel-prefix`: `PUBSUB CHANNELS PREFIX:*`). PostgreSQL has no
//! view of another session's `LISTEN`s and the memory adapter keeps none,
//! so it is not recorded there.
//!
//! The baseline is taken before the clients come, after one probe client
//! has lived a life and received a broadcast (so that connections an adapter
//! opens on first use are in it). At the end every client leaves and the
//! figures are read every half second until they are back or
//! `--return-secs` has passed.
//!
//! Verdicts (`verdicts`):
//! - `rss_slope`: the least-squares slope of RSS over the samples after
//!   `--warmup-secs`, in MiB per 10 minutes, below `--rss-slope-limit-mib`
//!   (0: recorded, not judged: too short a run says nothing about it);
//! - `*_returned`: descriptors and tasks at most `--fd-tolerance` /
//!   `--task-tolerance` above their baseline once the clients left;
//!   connections, subscriptions, hub streams and Redis' channel count not
//!   above it at all. The tolerances: 2 by default, which absorbs an
//!   adapter or broker connection opened late (a reconnect, a second
//!   publish connection) and one scrape in flight, while a leak of one
//!   descriptor or task per so many lives (a 20-minute run has some 80,000)
//!   stands out by tens to thousands;
//! - `lives_failed`: every life connected, was confirmed and was not cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, classify, histogram, now_us, Kind, Target, Ws};
use crate::hostile::sock::{chat_identifier, http_post, subscribe_command, unsubscribe_command};
use crate::modes::{Common, RunResult};
use crate::procfs;

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct SoakOpts {
    /// Clients present at any time.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Seconds of churn.
    #[arg(long, default_value_t = 1200.0)]
    pub secs: f64,
    /// Seconds at the start left out of the RSS slope.
    #[arg(long, default_value_t = 300.0)]
    pub warmup_secs: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// Shortest life of a client, seconds (lives are uniform between the two).
    #[arg(long, default_value_t = 2.0)]
    pub life_min_secs: f64,
    /// Longest life of a client, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub life_max_secs: f64,
    /// Lives that unsubscribe midway and subscribe to another room, percent.
    #[arg(long, default_value_t = 50.0)]
    pub resubscribe_percent: f64,
    /// Lives that end by dropping the socket without a close frame, percent.
    #[arg(long, default_value_t = 20.0)]
    pub abrupt_percent: f64,
    /// Rooms of a generation.
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Seconds a generation of room names lasts.
    #[arg(long, default_value_t = 60.0)]
    pub room_secs: f64,
    /// Broadcasts per second (POST /admin/broadcast).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 200)]
    pub payload_padding: usize,
    /// The chat's admin endpoint, http://host:port (default: --url's).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// The server's Prometheus endpoint (`chat --ops`:
    /// http://127.0.0.1:PORT/metrics); without it tasks and streams are not
    /// recorded.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// The Redis the server's adapter is on, `redis://HOST[:PORT]`: adapter
    /// subscriptions are counted there (with --channel-prefix).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The adapter's channel prefix (`chat --channel-prefix`).
    #[arg(long)]
    pub channel_prefix: Option<String>,
    /// Highest RSS slope after the warm-up, MiB per 10 minutes (0: not judged).
    #[arg(long, default_value_t = 1.0)]
    pub rss_slope_limit_mib: f64,
    /// Descriptors the server may hold above its baseline once the clients left.
    #[arg(long, default_value_t = 2)]
    pub fd_tolerance: u64,
    /// Tasks the server may hold above its baseline once the clients left.
    #[arg(long, default_value_t = 2)]
    pub task_tolerance: u64,
    /// Longest wait, after the clients left, for the figures to return.
    #[arg(long, default_value_t = 20.0)]
    pub return_secs: f64,
}

/// One reading of the server's figures, and of the run's at that moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the churn began (negative: the baseline).
    pub t_secs: f64,
    pub rss_bytes: u64,
    /// `/proc/PID/fd` entries.
    pub fds: u64,
    /// `cable_tokio_alive_tasks`.
    pub tasks: Option<u64>,
    /// `cable_connections`.
    pub connections: Option<u64>,
    /// `cable_subscriptions`.
    pub subscriptions: Option<u64>,
    /// `cable_streams`: streams with a local subscriber, each one adapter
    /// subscription.
    pub streams: Option<u64>,
    /// Channels under the prefix with a subscriber, as Redis counts them.
    pub adapter_subscriptions: Option<u64>,
    /// Clients connected (welcomed, not yet gone) on the load generator's side.
    pub present: u64,
    /// Lives begun so far.
    pub lives: u64,
    pub broadcasts: u64,
    pub deliveries: u64,
}

/// One verdict: `ok` is true when it passed or was not judged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub judged: bool,
    pub ok: bool,
    pub detail: String,
}

impl Verdict {
    fn judged(name: &str, ok: bool, detail: String) -> Self {
        Verdict {
            name: name.into(),
            judged: true,
            ok,
            detail,
        }
    }

    fn not_judged(name: &str, detail: String) -> Self {
        Verdict {
            name: name.into(),
            judged: false,
            ok: true,
            detail,
        }
    }
}

/// The least-squares slope of `points` (x, y): y's change per unit of x.
/// None for fewer than two points or when every x is the same.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// The slope of `figure` over the samples at or after `from_secs`, per 10
/// minutes; None with fewer than three such samples.
pub fn slope_per_10_min(
    samples: &[Sample],
    from_secs: f64,
    figure: impl Fn(&Sample) -> Option<f64>,
) -> Option<f64> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t_secs >= from_secs)
        .filter_map(|s| figure(s).map(|y| (s.t_secs, y)))
        .collect();
    if points.len() < 3 {
        return None;
    }
    slope(&points).map(|per_sec| per_sec * 600.0)
}

const MIB: f64 = 1048576.0;

/// RSS in MiB per 10 minutes after the warm-up, against `limit_mib` (0:
/// not judged).
pub fn rss_verdict(samples: &[Sample], warmup_secs: f64, limit_mib: f64) -> (Option<f64>, Verdict) {
    let s = slope_per_10_min(samples, warmup_secs, |s| Some(s.rss_bytes as f64 / MIB));
    let v = match s {
        None => Verdict::not_judged(
            "rss_slope",
            format!("fewer than 3 samples after the {warmup_secs} s warm-up"),
        ),
        Some(x) if limit_mib <= 0.0 => Verdict::not_judged(
            "rss_slope",
            format!("{x:+.3} MiB per 10 min after the warm-up (no limit set)"),
        ),
        Some(x) => Verdict::judged(
            "rss_slope",
            x < limit_mib,
            format!("{x:+.3} MiB per 10 min after the warm-up (limit {limit_mib})"),
        ),
    };
    (s, v)
}

/// What may be left above the baseline once the clients left.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub fds: u64,
    pub tasks: u64,
}

/// Whether each figure of `after` is back within `tol` of `baseline`
/// (being below it is fine: an adapter connection closed, say).
pub fn returned(baseline: &Sample, after: &Sample, tol: Tolerance) -> Vec<Verdict> {
    let figures: [(&str, Option<u64>, Option<u64>, u64); 6] = [
        ("fds_returned", Some(baseline.fds), Some(after.fds), tol.fds),
        ("tasks_returned", baseline.tasks, after.tasks, tol.tasks),
        (
            "connections_returned",
            baseline.connections,
            after.connections,
            0,
        ),
        (
            "subscriptions_returned",
            baseline.subscriptions,
            after.subscriptions,
            0,
        ),
        ("streams_returned", baseline.streams, after.streams, 0),
        (
            "adapter_subscriptions_returned",
            baseline.adapter_subscriptions,
            after.adapter_subscriptions,
            0,
        ),
    ];
    figures
        .into_iter()
        .map(|(name, b, a, t)| match (b, a) {
            (Some(b), Some(a)) => Verdict::judged(
                name,
                a <= b + t,
                format!("baseline {b}, after leaving {a} (tolerance {t})"),
            ),
            _ => Verdict::not_judged(name, "not available".into()),
        })
        .collect()
}

/// The value of the unlabelled series `name` in Prometheus' text format.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == name).then(|| parts.next()?.parse().ok())?
    })
}

/// `http://IP:PORT/PATH` as the address and the path.
fn http_addr(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: expected http://IP:PORT[/PATH]"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport
        .parse()
        .map_err(|_| anyhow!("{url}: {hostport:?} is not an IP:port"))?;
    Ok((addr, path.to_owned()))
}

/// `GET path` over a connection of its own (`Connection: close`): the
/// status and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow!("GET {path}: no answer within 10 s"))?
}

/// `redis://HOST[:PORT][/DB]` as an address to connect to (no password:
/// the benchmark's Redis has none).
async fn redis_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("--redis-url {url}: expected redis://HOST[:PORT]"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    if hostport.contains('@') {
        bail!("--redis-url: a password is not supported here");
    }
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:6379")
    };
    let found = tokio::net::lookup_host(hostport.as_str()).await?.next();
    found.ok_or_else(|| anyhow!("--redis-url: {hostport} resolves to nothing"))
}

/// A command in RESP, Redis' protocol.
fn resp_command(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        s.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s
}

/// The element count of a RESP array reply (`*N\r\n...`).
fn resp_array_len(reply: &[u8]) -> Result<u64> {
    let line = reply
        .split(|&b| b == b'\r')
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    match line.strip_prefix('*') {
        Some(n) => n.parse().with_context(|| format!("odd reply {line:?}")),
        None => bail!("Redis answered {line:?}"),
    }
}

/// How many channels matching `PREFIX:*` have a subscriber on Redis.
async fn redis_channels(addr: SocketAddr, prefix: &str) -> Result<u64> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let pattern = format!("{prefix}:*");
        let mut cmd = resp_command(&["PUBSUB", "CHANNELS", &pattern]);
        // Redis answers both and closes: the reply is read to its end.
        cmd.push_str(&resp_command(&["QUIT"]));
        s.write_all(cmd.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        resp_array_len(&out)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow!("PUBSUB CHANNELS: no answer within 10 s"))?
}

/// What the lives, the publisher and the sampler share.
struct Soak {
    opts: SoakOpts,
    target: Target,
    started: Instant,
    /// Connections being opened at once.
    connecting: Semaphore,
    serial: AtomicU64,
    present: AtomicU64,
    lives: AtomicU64,
    lives_ended: AtomicU64,
    resubscribed: AtomicU64,
    abrupt: AtomicU64,
    failed: AtomicU64,
    broadcasts: AtomicU64,
    broadcast_failures: AtomicU64,
    deliveries: AtomicU64,
    unexpected_frames: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
}

impl Soak {
    fn error(&self, e: String) {
        let mut errs = self.errors.lock().expect("errors lock");
        if errs.len() < 20 {
            errs.push(e);
        }
    }

    /// A room of the current generation, never `not`.
    fn room(&self, not: Option<&str>) -> String {
        let generation = (self.started.elapsed().as_secs_f64() / self.opts.room_secs) as u64;
        let rooms = self.opts.rooms.max(1);
        let mut k = fastrand::usize(..rooms);
        let name = |k: usize| format!("soak-{generation}-{k}");
        if not == Some(name(k).as_str()) {
            k = (k + 1) % rooms;
        }
        name(k)
    }
}

/// How one life goes.
struct Plan {
    life: Duration,
    resubscribe_at: Option<Duration>,
    abrupt: bool,
}

impl Plan {
    /// A life; the first of a slot is anywhere up to the longest, so that
    /// the first lives do not all end together.
    fn new(o: &SoakOpts, first: bool) -> Plan {
        let lo = if first {
            o.life_min_secs.min(1.0)
        } else {
            o.life_min_secs
        };
        let secs = lo + fastrand::f64() * (o.life_max_secs - lo).max(0.0);
        let life = Duration::from_secs_f64(secs);
        let resubscribe_at = (fastrand::f64() * 100.0 < o.resubscribe_percent)
            .then(|| life.mul_f64(0.3 + 0.4 * fastrand::f64()));
        Plan {
            life,
            resubscribe_at,
            abrupt: fastrand::f64() * 100.0 < o.abrupt_percent,
        }
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
}

async fn send(ws: &mut Ws, text: String) -> Result<()> {
    ws.send(Message::text(text)).await.context("send")
}

/// Handles one frame of a live client; Ok(true) when it was the awaited
/// confirmation.
fn frame(sh: &Soak, serial: u64, text: &str, awaiting: bool) -> Result<bool> {
    match classify(text.as_bytes()) {
        Kind::Broadcast(sent) => {
            sh.deliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(sent) = sent {
                let lat = now_us().saturating_sub(sent).max(1);
                sh.latency
                    .lock()
                    .expect("latency lock")
                    .saturating_record(lat);
            }
        }
        Kind::Confirm if awaiting => return Ok(true),
        Kind::Ping | Kind::Welcome => {}
        Kind::Reject => bail!("subscription rejected"),
        Kind::Disconnect { .. } => bail!("disconnected by the server: {text}"),
        _ => {
            if sh.unexpected_frames.fetch_add(1, Ordering::Relaxed) < 5 {
                sh.error(format!("life {serial}: unexpected frame {text}"));
            }
        }
    }
    Ok(false)
}

/// One life; see the module docs.
async fn life(sh: &Soak, plan: Plan, stop: &mut watch::Receiver<bool>) -> Result<()> {
    let serial = sh.serial.fetch_add(1, Ordering::Relaxed);
    sh.lives.fetch_add(1, Ordering::Relaxed);
    let born = Instant::now();
    let permit = sh.connecting.acquire().await?;
    let opening = async {
        let (mut ws, _) = client::handshake(&sh.target, serial as usize, None, config()).await?;
        let id = chat_identifier(&sh.room(None));
        send(&mut ws, subscribe_command(&id)).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if frame(sh, serial, t.as_str(), true)? {
                        break;
                    }
                }
                Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection closed before the confirmation"),
            }
        }
        Ok::<_, anyhow::Error>((ws, id))
    };
    let (mut ws, mut id) = tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .map_err(|_| anyhow!("not subscribed within 30 s"))??;
    drop(permit);
    sh.present.fetch_add(1, Ordering::Relaxed);
    let lived = live(sh, serial, &mut ws, &mut id, &plan, born, stop).await;
    sh.present.fetch_sub(1, Ordering::Relaxed);
    lived?;
    if plan.abrupt {
        // No close frame: the socket is dropped (the kernel sends a FIN).
        sh.abrupt.fetch_add(1, Ordering::Relaxed);
        drop(ws);
    } else {
        ws.close(None).await.context("close")?;
        // Until the server's close frame and the end of the stream.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    sh.lives_ended.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// A subscribed life until its end (or the run's).
async fn live(
    sh: &Soak,
    serial: u64,
    ws: &mut Ws,
    id: &mut String,
    plan: &Plan,
    born: Instant,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let end = born + plan.life;
    let mut resubscribe_at = plan.resubscribe_at.map(|d| born + d);
    let mut awaiting = false;
    loop {
        if *stop.borrow() {
            break;
        }
        let next = resubscribe_at.map_or(end, |r| r.min(end));
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {
                if Instant::now() >= end {
                    break;
                }
                resubscribe_at = None;
                send(ws, unsubscribe_command(id)).await?;
                let room = sh.room(serde_json::from_str::<Value>(id).ok()
                    .and_then(|v| v["room"].as_str().map(str::to_owned)).as_deref());
                *id = chat_identifier(&room);
                send(ws, subscribe_command(id)).await?;
                sh.resubscribed.fetch_add(1, Ordering::Relaxed);
                awaiting = true;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if frame(sh, serial, t.as_str(), awaiting)? {
                        awaiting = false;
                    }
                }
                Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection closed by the server"),
            },
            _ = stop.changed() => {}
        }
    }
    if awaiting && !*stop.borrow() {
        bail!("the second subscription was not confirmed before the life ended");
    }
    Ok(())
}

/// One slot: lives back to back until the run stops.
async fn slot(sh: Arc<Soak>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    while !*stop.borrow() {
        let plan = Plan::new(&sh.opts, first);
        first = false;
        if let Err(e) = life(&sh, plan, &mut stop).await {
            if sh.failed.fetch_add(1, Ordering::Relaxed) < 10 {
                sh.error(format!("a life failed: {e:#}"));
            }
            // Not a tight loop of failures against a server that is down.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The broadcasts: `--rate` a second, each to a room of the current
/// generation, until the run stops.
async fn publish(sh: Arc<Soak>, admin: SocketAddr, stop: watch::Receiver<bool>) {
    let padding = client::padding(sh.opts.payload_padding);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !*stop.borrow() {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * sh.opts.rate) as u64 + 1;
        // Behind by more than a second (a slow answer): skip, keep the rate.
        if due > sent + sh.opts.rate.max(1.0) as u64 {
            sent = due - 1;
        }
        while sent < due && !*stop.borrow() {
            sent += 1;
            let stream = format!("chat_{}", sh.room(None));
            let body = json!({"stream": stream, "message": {
                "action": "broadcast",
                "sendTime": now_us().to_string(),
                "seq": sent,
                "padding": padding,
            }})
            .to_string();
            match http_post(admin, "/admin/broadcast", body.as_bytes()).await {
                Ok((200, _)) => {
                    sh.broadcasts.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, b)) => {
                    if sh.broadcast_failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        sh.error(format!("broadcast: HTTP {status}: {b}"));
                    }
                }
                Err(e) => {
                    if sh.broadcast_failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        sh.error(format!("broadcast: {e:#}"));
                    }
                }
            }
        }
    }
}

/// Where the figures are read.
struct Probes {
    pid: u32,
    metrics: Option<(SocketAddr, String)>,
    redis: Option<(SocketAddr, String)>,
}

impl Probes {
    /// One sample; a figure that cannot be read is None (and noted once
    /// per kind in `errors`).
    async fn sample(&self, sh: &Soak, t_secs: f64, errors: &mut Vec<String>) -> Result<Sample> {
        let mut s = Sample {
            t_secs,
            present: sh.present.load(Ordering::Relaxed),
            lives: sh.lives.load(Ordering::Relaxed),
            broadcasts: sh.broadcasts.load(Ordering::Relaxed),
            deliveries: sh.deliveries.load(Ordering::Relaxed),
            ..Default::default()
        };
        let mut note = |e: String| {
            if errors.len() < 10 {
                errors.push(e);
            }
        };
        // The scrape first: its connection is closed before /proc is read.
        if let Some((addr, path)) = &self.metrics {
            match http_get(*addr, path).await {
                Ok((200, text)) => {
                    let v = |name| prometheus_value(&text, name).map(|x| x as u64);
                    s.tasks = v("cable_tokio_alive_tasks");
                    s.connections = v("cable_connections");
                    s.subscriptions = v("cable_subscriptions");
                    s.streams = v("cable_streams");
                }
                Ok((status, _)) => note(format!("t={t_secs:.0}s: GET {path}: HTTP {status}")),
                Err(e) => note(format!("t={t_secs:.0}s: GET {path}: {e:#}")),
            }
        }
        if let Some((addr, prefix)) = &self.redis {
            match redis_channels(*addr, prefix).await {
                Ok(n) => s.adapter_subscriptions = Some(n),
                Err(e) => note(format!("t={t_secs:.0}s: PUBSUB CHANNELS: {e:#}")),
            }
        }
        s.rss_bytes = procfs::rss_bytes(self.pid)?;
        s.fds = procfs::fd_count(self.pid)?;
        Ok(s)
    }
}

fn print(s: &Sample, label: &str) {
    let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "{label:>8} t={:>6.0}s present {:>5} lives {:>7} rss {:>7.1} MiB fds {:>5} tasks {:>5} conns {:>5} subs {:>5} streams {:>5} adapter {:>5} broadcasts {:>6} deliveries {:>8}",
        s.t_secs,
        s.present,
        s.lives,
        s.rss_bytes as f64 / MIB,
        s.fds,
        opt(s.tasks),
        opt(s.connections),
        opt(s.subscriptions),
        opt(s.streams),
        opt(s.adapter_subscriptions),
        s.broadcasts,
        s.deliveries,
    );
}

fn admin_addr(common: &Common, o: &SoakOpts) -> Result<SocketAddr> {
    match &o.admin_url {
        Some(u) => Ok(http_addr(u)?.0),
        None => Ok(common.target.addr()?.0),
    }
}

/// The probe: one life in a room of its own that receives one broadcast,
/// so that whatever the adapter opens on first use is open before the
/// baseline.
async fn probe(sh: &Soak, admin: SocketAddr) -> Result<()> {
    let (mut ws, _) = client::handshake(&sh.target, usize::MAX / 2, None, config()).await?;
    let id = chat_identifier("soak-probe");
    send(&mut ws, subscribe_command(&id)).await?;
    let body = json!({"stream": "chat_soak-probe", "message": {"action": "broadcast", "sendTime": now_us().to_string()}}).to_string();
    let mut posted = false;
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match classify(t.as_bytes()) {
                    Kind::Confirm if !posted => {
                        posted = true;
                        match http_post(admin, "/admin/broadcast", body.as_bytes()).await? {
                            (200, _) => {}
                            (status, b) => {
                                bail!("POST /admin/broadcast: HTTP {status}: {b} (chat --admin?)")
                            }
                        }
                    }
                    Kind::Broadcast(_) => return Ok(()),
                    Kind::Reject => bail!("the probe's subscription was rejected"),
                    _ => {}
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("the probe's connection closed"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the probe got no broadcast within 10 s"))?;
    got?;
    ws.close(None).await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// The soak run; see the module docs.
pub async fn soak(common: &Common, o: &SoakOpts) -> Result<RunResult> {
    let [pid] = common.server_pids[..] else {
        bail!("soak needs exactly one --server-pid");
    };
    if o.secs <= 0.0 || o.sample_secs <= 0.0 || o.room_secs <= 0.0 || o.rate <= 0.0 {
        bail!("--secs, --sample-secs, --room-secs and --rate must be above 0");
    }
    if o.life_min_secs <= 0.0 || o.life_max_secs < o.life_min_secs {
        bail!("--life-min-secs must be above 0 and at most --life-max-secs");
    }
    if o.redis_url.is_some() != o.channel_prefix.is_some() {
        bail!("--redis-url and --channel-prefix go together");
    }
    let admin = admin_addr(common, o)?;
    let probes = Probes {
        pid,
        metrics: o.metrics_url.as_deref().map(http_addr).transpose()?,
        redis: match (&o.redis_url, &o.channel_prefix) {
            (Some(u), Some(p)) => Some((redis_addr(u).await?, p.clone())),
            _ => None,
        },
    };
    let sh = Arc::new(Soak {
        opts: o.clone(),
        target: common.target.clone(),
        started: Instant::now(),
        connecting: Semaphore::new(common.connect_concurrency.max(1)),
        serial: AtomicU64::new(0),
        present: AtomicU64::new(0),
        lives: AtomicU64::new(0),
        lives_ended: AtomicU64::new(0),
        resubscribed: AtomicU64::new(0),
        abrupt: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        broadcasts: AtomicU64::new(0),
        broadcast_failures: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        unexpected_frames: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
        errors: Mutex::new(Vec::new()),
    });
    let mut errors: Vec<String> = Vec::new();
    let mut scrape_errors: Vec<String> = Vec::new();

    probe(&sh, admin).await.context("probe client")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = probes.sample(&sh, 0.0, &mut scrape_errors).await?;
    print(&baseline, "baseline");

    // The churn.
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let slots: Vec<_> = (0..o.clients)
        .map(|_| tokio::spawn(slot(sh.clone(), stop_rx.clone())))
        .collect();
    let publisher = tokio::spawn(publish(sh.clone(), admin, stop_rx.clone()));
    let mut samples = Vec::new();
    let mut k = 1u32;
    loop {
        let at = started + Duration::from_secs_f64(o.sample_secs * k as f64);
        if at > started + Duration::from_secs_f64(o.secs) {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let s = probes
            .sample(&sh, started.elapsed().as_secs_f64(), &mut scrape_errors)
            .await?;
        print(&s, "");
        samples.push(s);
        k += 1;
    }
    tokio::time::sleep_until((started + Duration::from_secs_f64(o.secs)).into()).await;

    // Everyone leaves.
    let _ = stop_tx.send(true);
    let churn_secs = started.elapsed().as_secs_f64();
    let leaving = Instant::now();
    for s in slots {
        if tokio::time::timeout(Duration::from_secs(40), s)
            .await
            .is_err()
        {
            errors.push("a client did not leave within 40 s".into());
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(20), publisher).await;
    let left_secs = leaving.elapsed().as_secs_f64();
    let tol = Tolerance {
        fds: o.fd_tolerance,
        tasks: o.task_tolerance,
    };
    // Read every half second until everything is back or time is up.
    let deadline = Instant::now() + Duration::from_secs_f64(o.return_secs);
    let (after, back) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = probes
            .sample(&sh, started.elapsed().as_secs_f64(), &mut scrape_errors)
            .await?;
        let back = returned(&baseline, &s, tol).iter().all(|v| v.ok);
        if back || Instant::now() >= deadline {
            break (s, back);
        }
    };
    let returned_after = back.then(|| leaving.elapsed().as_secs_f64() - left_secs);
    print(&after, "after");

    let (rss_slope, rss) = rss_verdict(&samples, o.warmup_secs, o.rss_slope_limit_mib);
    let mut verdicts = vec![rss];
    verdicts.extend(returned(&baseline, &after, tol));
    let failed = sh.failed.load(Ordering::Relaxed);
    verdicts.push(Verdict::judged(
        "lives_failed",
        failed == 0,
        format!(
            "{failed} of {} lives failed",
            sh.lives.load(Ordering::Relaxed)
        ),
    ));
    if probes.metrics.is_some() && baseline.tasks.is_none() {
        errors.push("the baseline's /metrics scrape failed: tasks and streams unjudged".into());
    }
    for v in &verdicts {
        println!(
            "verdict {:<32} {:<10} {}",
            v.name,
            if !v.judged {
                "not judged"
            } else if v.ok {
                "ok"
            } else {
                "FAILED"
            },
            v.detail
        );
        if !v.ok {
            errors.push(format!("{}: {}", v.name, v.detail));
        }
    }
    let broadcast_failures = sh.broadcast_failures.load(Ordering::Relaxed);
    if broadcast_failures > 0 {
        errors.push(format!("{broadcast_failures} broadcasts failed"));
    }
    errors.extend(sh.errors.lock().expect("errors lock").iter().cloned());
    let lat = sh.latency.lock().expect("latency lock").clone();
    let ms = |us: u64| us as f64 / 1e3;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let info_slope = |f: fn(&Sample) -> Option<f64>| slope_per_10_min(&samples, o.warmup_secs, f);
    RunResult::new(
        "soak",
        common,
        o,
        json!({
            "baseline": baseline,
            "after": after,
            "samples": samples,
            "verdicts": verdicts,
            "rss_slope_mib_per_10_min": rss_slope,
            // Not judged: how the other figures moved after the warm-up,
            // per 10 minutes, with the clients present.
            "slopes_per_10_min": {
                "fds": info_slope(|s| Some(s.fds as f64)),
                "tasks": info_slope(|s| s.tasks.map(|v| v as f64)),
                "streams": info_slope(|s| s.streams.map(|v| v as f64)),
                "adapter_subscriptions": info_slope(|s| s.adapter_subscriptions.map(|v| v as f64)),
            },
            "adapter_subscriptions_source": if probes.redis.is_some() {
                "Redis PUBSUB CHANNELS PREFIX:*"
            } else {
                "not available: the hub's streams (cable_streams) are its adapter subscriptions"
            },
            "churn_secs": churn_secs,
            "leave_secs": left_secs,
            "returned_after_secs": returned_after,
            "lives": n(&sh.lives),
            "lives_ended": n(&sh.lives_ended),
            "lives_failed": failed,
            "resubscribed": n(&sh.resubscribed),
            "abrupt": n(&sh.abrupt),
            "broadcasts": n(&sh.broadcasts),
            "broadcast_failures": broadcast_failures,
            "deliveries": n(&sh.deliveries),
            "unexpected_frames": n(&sh.unexpected_frames),
            "latency": {
                "count": lat.len(),
                "p50_ms": ms(lat.value_at_quantile(0.5)),
                "p99_ms": ms(lat.value_at_quantile(0.99)),
                "max_ms": ms(lat.max()),
            },
            "scrape_errors": scrape_errors,
        }),
        errors,
    )
}

/// The soak section of BENCHMARKS.md: one row per `soak` run.
pub fn report_section(runs: &crate::report::Runs) -> String {
    use std::fmt::Write as _;
    let soaks: Vec<_> = runs.values().filter(|r| r.mode == "soak").collect();
    if soaks.is_empty() {
        return "No soak runs in this result set.\n".into();
    }
    let mut s = String::new();
    if let Some(r) = soaks.first() {
        let p = &r.params;
        let _ = writeln!(
            s,
            "{} clients present at any time for {} s, each living {}-{} s (connect, subscribe \
             to a ChatChannel room, {}% unsubscribe and subscribe to another room midway, \
             leave; {}% drop the socket without a close frame); rooms renamed every {} s, so \
             streams come and go; {} broadcasts/s through `POST /admin/broadcast`. Samples \
             every {} s; the RSS slope is the least-squares fit after a {} s warm-up ({}). \
             Baselines are taken before the clients come, the \
             figures after they all left (descriptors and tasks may be {} and {} above; the \
             rest not at all). Adapter subscriptions: Redis' count of the prefix's channels; \
             elsewhere the hub's streams are them (one adapter subscription per stream).\n",
            p["clients"],
            p["secs"],
            p["life_min_secs"],
            p["life_max_secs"],
            p["resubscribe_percent"],
            p["abrupt_percent"],
            p["room_secs"],
            p["rate"],
            p["sample_secs"],
            p["warmup_secs"],
            match p["rss_slope_limit_mib"].as_f64() {
                Some(l) if l > 0.0 => format!("limit: below {l} MiB per 10 min"),
                _ => "not judged: too short a run".to_owned(),
            },
            p["fd_tolerance"],
            p["task_tolerance"],
        );
    }
    s.push_str(
        "| run | lives | RSS MiB: baseline / warm-up end / end / after leaving | RSS slope MiB per 10 min | fds: baseline → after | tasks | connections | streams | adapter subscriptions | back after s | delivery p50 / p99 ms | verdict |\n\
         |---|---:|---|---:|---|---|---|---|---|---:|---|---|\n",
    );
    for r in soaks {
        let m = &r.metrics;
        let (b, a) = (&m["baseline"], &m["after"]);
        let pair = |k: &str| match (b[k].as_u64(), a[k].as_u64()) {
            (Some(x), Some(y)) => format!("{x} → {y}"),
            _ => "—".into(),
        };
        let samples = m["samples"].as_array().cloned().unwrap_or_default();
        let warm = r.params["warmup_secs"].as_f64().unwrap_or(0.0);
        let mib = |v: &Value| v["rss_bytes"].as_f64().map(|x| format!("{:.1}", x / MIB));
        let at_warm = samples
            .iter()
            .find(|x| x["t_secs"].as_f64().unwrap_or(0.0) >= warm)
            .and_then(mib);
        let at_end = samples.last().and_then(mib);
        let rss = [mib(b), at_warm, at_end, mib(a)]
            .map(|x| x.unwrap_or_else(|| "—".into()))
            .join(" / ");
        let failed: Vec<&str> = m["verdicts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["ok"] != true)
            .filter_map(|v| v["name"].as_str())
            .collect();
        let verdict = if r.ok {
            "ok".to_owned()
        } else if failed.is_empty() {
            format!("FAILED: {}", r.errors.first().cloned().unwrap_or_default())
        } else {
            format!("FAILED: {}", failed.join(", "))
        };
        let judged = m["verdicts"][0]["judged"] == true;
        let _ = writeln!(
            s,
            "| {} | {} | {rss} | {}{} | {} | {} | {} | {} | {} | {} | {:.1} / {:.1} | {} |",
            r.server,
            m["lives"],
            m["rss_slope_mib_per_10_min"]
                .as_f64()
                .map_or("—".into(), |x| format!("{x:+.2}")),
            if judged { "" } else { " (not judged)" },
            pair("fds"),
            pair("tasks"),
            pair("connections"),
            pair("streams"),
            pair("adapter_subscriptions"),
            m["returned_after_secs"]
                .as_f64()
                .map_or("never".into(), |x| format!("{x:.1}")),
            m["latency"]["p50_ms"].as_f64().unwrap_or(f64::NAN),
            m["latency"]["p99_ms"].as_f64().unwrap_or(f64::NAN),
            verdict,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: f64, rss_mib: f64) -> Sample {
        Sample {
            t_secs: t,
            rss_bytes: (rss_mib * MIB) as u64,
            ..Default::default()
        }
    }

    #[test]
    fn least_squares_slope() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        // Noise around a flat line: no slope.
        let s = slope(&[(0.0, 1.0), (1.0, 2.0), (2.0, 1.0), (3.0, 2.0)]).unwrap();
        assert!((s - 0.2).abs() < 1e-9, "{s}");
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn rss_slope_leaves_out_the_warm_up_and_is_per_10_minutes() {
        // Steep during the first 60 s, then 0.5 MiB per 10 min.
        let mut samples: Vec<Sample> = (0..12).map(|k| at(k as f64 * 5.0, k as f64)).collect();
        samples.extend(
            (0..=60).map(|k| at(60.0 + k as f64 * 10.0, 12.0 + k as f64 * 10.0 * 0.5 / 600.0)),
        );
        let (s, v) = rss_verdict(&samples, 60.0, 1.0);
        assert!((s.unwrap() - 0.5).abs() < 1e-3, "{s:?}");
        assert!(v.judged && v.ok, "{v:?}");
        // With the warm-up in, it fails.
        let (_, v) = rss_verdict(&samples, 0.0, 1.0);
        assert!(v.judged && !v.ok, "{v:?}");
        // Limit 0: recorded, not judged.
        let (s, v) = rss_verdict(&samples, 0.0, 0.0);
        assert!(s.is_some() && !v.judged && v.ok, "{v:?}");
        // Too few samples after the warm-up.
        let (s, v) = rss_verdict(&samples[..13], 60.0, 1.0);
        assert!(s.is_none() && !v.judged && v.ok, "{v:?}");
    }

    #[test]
    fn figures_must_return_to_their_baseline() {
        let baseline = Sample {
            fds: 20,
            tasks: Some(10),
            connections: Some(0),
            subscriptions: Some(0),
            streams: Some(0),
            adapter_subscriptions: None,
            ..Default::default()
        };
        let tol = Tolerance { fds: 2, tasks: 2 };
        let mut after = baseline.clone();
        after.fds = 22;
        after.tasks = Some(9);
        let v = returned(&baseline, &after, tol);
        assert!(v.iter().all(|v| v.ok), "{v:?}");
        let skipped: Vec<&str> = v
            .iter()
            .filter(|v| !v.judged)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(skipped, ["adapter_subscriptions_returned"]);
        after.fds = 23;
        after.streams = Some(1);
        let failed: Vec<String> = returned(&baseline, &after, tol)
            .into_iter()
            .filter(|v| !v.ok)
            .map(|v| v.name)
            .collect();
        assert_eq!(failed, ["fds_returned", "streams_returned"]);
        // A figure missing after leaving is not judged rather than passed.
        after.tasks = None;
        let v = returned(&baseline, &after, tol);
        assert!(!v[1].judged && v[1].detail == "not available", "{:?}", v[1]);
    }

    #[test]
    fn reads_prometheus_text_and_redis_replies() {
        let text = "# HELP cable_streams Streams\n# TYPE cable_streams gauge\ncable_streams 12\ncable_streams_total 3\ncable_open_fds 40\n";
        assert_eq!(prometheus_value(text, "cable_streams"), Some(12.0));
        assert_eq!(prometheus_value(text, "cable_open_fds"), Some(40.0));
        assert_eq!(prometheus_value(text, "cable_tokio_alive_tasks"), None);
        assert_eq!(
            resp_command(&["PUBSUB", "CHANNELS", "p:*"]),
            "*3\r\n$6\r\nPUBSUB\r\n$8\r\nCHANNELS\r\n$3\r\np:*\r\n"
        );
        assert_eq!(
            resp_array_len(b"*2\r\n$3\r\np:a\r\n$3\r\np:b\r\n+OK\r\n").unwrap(),
            2
        );
        assert_eq!(resp_array_len(b"*0\r\n+OK\r\n").unwrap(), 0);
        assert!(resp_array_len(b"-ERR unknown\r\n").is_err());
        assert_eq!(
            http_addr("http://127.0.0.1:3000/metrics").unwrap(),
            ("127.0.0.1:3000".parse().unwrap(), "/metrics".to_owned())
        );
    }

    #[test]
    fn the_section_has_a_row_per_run() {
        let run = RunResult {
            mode: "soak".into(),
            server: "soak-memory".into(),
            ok: false,
            params: json!({"clients": 1000, "secs": 1200.0, "warmup_secs": 10.0}),
            metrics: json!({
                "baseline": {"rss_bytes": 8388608, "fds": 20, "tasks": 9, "connections": 0, "streams": 0, "adapter_subscriptions": null},
                "after": {"rss_bytes": 12582912, "fds": 21, "tasks": 30, "connections": 0, "streams": 0, "adapter_subscriptions": null},
                "samples": [{"t_secs": 5.0, "rss_bytes": 10485760}, {"t_secs": 10.0, "rss_bytes": 11534336}, {"t_secs": 15.0, "rss_bytes": 12582912}],
                "verdicts": [{"name": "rss_slope", "judged": true, "ok": true}, {"name": "tasks_returned", "judged": true, "ok": false}],
                "rss_slope_mib_per_10_min": 0.25,
                "returned_after_secs": null,
                "lives": 80000,
                "latency": {"p50_ms": 1.5, "p99_ms": 9.0},
            }),
            errors: vec!["tasks_returned: ...".into()],
        };
        let runs: crate::report::Runs = std::collections::BTreeMap::from([(
            ("soak-memory".to_owned(), "soak".to_owned()),
            run,
        )]);
        let t = report_section(&runs);
        assert!(
            t.contains("| soak-memory | 80000 | 8.0 / 11.0 / 12.0 / 12.0 | +0.25 | 20 → 21 | 9 → 30 | 0 → 0 | 0 → 0 | — | never | 1.5 / 9.0 | FAILED: tasks_returned |"),
            "{t}"
        );
    }
}
