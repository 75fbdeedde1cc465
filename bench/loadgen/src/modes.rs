//! The runs: `broadcast` (websocket-shootout's ladder), `fanout`, `connect`,
//! `idle`, `slow`, and `count` (a fixed workload for instruction counts).
//! Each returns a [`RunResult`] that is written as JSON.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use crate::client::{self, histogram, Client, Opened, Shared, Target};
use crate::procfs;

/// One run's outcome, as written to `--out`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub mode: String,
    /// Label of the server under test (`cable`, `b1`, `rails`, ...).
    pub server: String,
    pub ok: bool,
    pub params: Value,
    pub metrics: Value,
    pub errors: Vec<String>,
}

impl RunResult {
    /// A run of `mode` with options `params`, ok when `errors` is empty.
    pub fn new(
        mode: &str,
        common: &Common,
        params: &impl Serialize,
        metrics: Value,
        errors: Vec<String>,
    ) -> Result<RunResult> {
        Ok(RunResult {
            mode: mode.into(),
            server: common.server.clone(),
            ok: errors.is_empty(),
            params: serde_json::to_value(params)?,
            metrics,
            errors,
        })
    }
}

/// Options every mode shares.
#[derive(Clone, Debug)]
pub struct Common {
    pub target: Target,
    pub server: String,
    /// Server processes whose CPU and memory are read from `/proc`.
    pub server_pids: Vec<u32>,
    pub progress: bool,
    /// Connections opened at once while a run sets up its clients.
    pub connect_concurrency: usize,
}

pub(crate) fn bar(common: &Common, len: u64, what: &str) -> ProgressBar {
    if !common.progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:24} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1e3
}

pub(crate) fn summary(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "min_ms": us_to_ms(h.min()),
        "p50_ms": us_to_ms(h.value_at_quantile(0.50)),
        "p95_ms": us_to_ms(h.value_at_quantile(0.95)),
        "p99_ms": us_to_ms(h.value_at_quantile(0.99)),
        "max_ms": us_to_ms(h.max()),
    })
}

/// A client that opened, before its task runs.
enum Opening {
    Ws(Box<client::Ws>),
    Raw(tokio::net::TcpStream, Vec<u8>),
}

/// Opens the clients numbered `ids`, `common.connect_concurrency` at a time,
/// behind a progress bar labelled `what`; `rcvbuf` gives a client's receive buffer
/// size (a small one makes a client that stops reading back up the server
/// quickly; `None` is the system's).
/// Returns the clients that opened, their timings and the failures.
pub async fn open_many(
    common: &Common,
    ids: Range<usize>,
    shared: &Arc<Shared>,
    what: &str,
    rcvbuf: impl Fn(usize) -> Option<u32>,
) -> (Vec<Client>, Vec<Opened>, Vec<String>) {
    open_clients(common, ids, shared, what, rcvbuf, false).await
}

/// [`open_many`], the clients read with [`crate::rawws`] when `raw` (fan-out
/// subscribers; `rcvbuf` does not apply to them).
async fn open_clients(
    common: &Common,
    ids: Range<usize>,
    shared: &Arc<Shared>,
    what: &str,
    rcvbuf: impl Fn(usize) -> Option<u32>,
    raw: bool,
) -> (Vec<Client>, Vec<Opened>, Vec<String>) {
    let n = ids.len();
    let pb = bar(common, n as u64, what);
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for i in ids {
        let sem = sem.clone();
        let tx = tx.clone();
        let target = common.target.clone();
        let buf = rcvbuf(i);
        tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else {
                return;
            };
            let open = async {
                if raw {
                    let (socket, rest, opened) = crate::rawws::open(&target, i).await?;
                    Ok((Opening::Raw(socket, rest), opened))
                } else {
                    let (ws, opened) = client::open(&target, i, buf).await?;
                    Ok((Opening::Ws(Box::new(ws)), opened))
                }
            };
            let res = match tokio::time::timeout(Duration::from_secs(30), open).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no confirm_subscription within 30 s")),
            };
            let _ = tx.send((i, res));
        });
    }
    drop(tx);
    let mut clients = Vec::with_capacity(n);
    let mut timings = Vec::with_capacity(n);
    let mut failures = Vec::new();
    while let Some((i, res)) = rx.recv().await {
        pb.inc(1);
        match res {
            Ok((opening, opened)) => {
                timings.push(opened);
                clients.push(match opening {
                    Opening::Ws(ws) => client::spawn(i, *ws, shared.clone()),
                    Opening::Raw(socket, rest) => {
                        crate::rawws::spawn(i, socket, rest, shared.clone())
                    }
                });
            }
            Err(e) => failures.push(format!("client {i}: {e:#}")),
        }
    }
    pb.finish_and_clear();
    clients.sort_by_key(|c| c.id);
    (clients, timings, failures)
}

/// `n` SSE subscribers ([`crate::sse`]), opened `connect_concurrency` at a
/// time; returns how many.
async fn open_sse(common: &Common, n: usize, shared: &Arc<Shared>) -> Result<u64> {
    let pb = bar(common, n as u64, "SSE subscribers connecting");
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (sem, target) = (sem.clone(), common.target.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            tokio::time::timeout(Duration::from_secs(30), crate::sse::open(&target, i))
                .await
                .ok()
                .map(|r| r.map(|(socket, rest)| (i, socket, rest)))
        }));
    }
    let mut opened = 0;
    for task in tasks {
        pb.inc(1);
        match task.await.ok().flatten() {
            Some(Ok((_, socket, rest))) => {
                crate::sse::spawn(socket, rest, shared.clone());
                opened += 1;
            }
            Some(Err(e)) => bail!("an SSE subscriber failed: {e:#}"),
            None => bail!("an SSE subscriber did not open within 30 s"),
        }
    }
    pb.finish_and_clear();
    Ok(opened)
}

/// Sends `total` broadcasts from `publisher`, `rate` a second counted from
/// `started`, on a 5 ms tick (missed ticks catch up); `each_tick` sees the
/// count sent after each tick. Returns the count sent.
pub(crate) async fn publish_paced(
    publisher: &Client,
    padding: &str,
    rate: f64,
    total: u64,
    started: Instant,
    pb: &ProgressBar,
    mut each_tick: impl FnMut(u64),
) -> u64 {
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while sent < due {
            publisher.broadcast(padding);
            sent += 1;
        }
        pb.set_position(sent);
        each_tick(sent);
    }
    sent
}

pub(crate) async fn close_all(clients: &[Client], shared: &Shared) {
    let before = shared.closed.load(Ordering::SeqCst) as usize;
    for c in clients {
        c.close();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (shared.closed.load(Ordering::SeqCst) as usize) < before + clients.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- broadcast

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct LadderOpts {
    /// Broadcasts in flight at once.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub concurrent: usize,
    /// RTT samples per step.
    #[arg(short = 's', long, default_value_t = 100)]
    pub sample_size: usize,
    /// Clients added per step.
    #[arg(long, default_value_t = 1000)]
    pub step_size: usize,
    /// Clients connected before the first step.
    #[arg(long, default_value_t = 0)]
    pub initial_clients: usize,
    /// Stop after this many steps (0: when the RTT limit is passed).
    #[arg(long, default_value_t = 0)]
    pub total_steps: usize,
    /// Padding bytes in every payload.
    #[arg(long, default_value_t = 0)]
    pub payload_padding: usize,
    /// Stop when the percentile RTT passes this (e.g. 500ms, 1s).
    #[arg(long = "limit-rtt", value_name = "LIMIT_RTT", default_value = "500ms", value_parser = parse_ms)]
    pub limit_rtt_ms: u64,
    /// The percentile held to --limit-rtt.
    #[arg(long, default_value_t = 95)]
    pub limit_percentile: u8,
}

/// A duration such as `500ms`, `1.5s` or `800us` (a bare number is in
/// milliseconds), in whole milliseconds.
fn parse_ms(s: &str) -> Result<u64, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "ms"));
    let n: f64 = num.parse().map_err(|_| format!("{s:?}: not a duration"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "us" => n / 1e6,
        _ => return Err(format!("{s:?}: use ms, s or us")),
    };
    Ok(Duration::from_secs_f64(secs).as_millis() as u64)
}

/// websocket-shootout's broadcast ladder in its `actioncable` mode.
pub async fn broadcast(common: &Common, o: &LadderOpts) -> Result<RunResult> {
    let (shared, mut rtt_rx) = Shared::new();
    let padding = client::padding(o.payload_padding);
    let mut clients: Vec<Client> = Vec::new();
    // Number of broadcasts sent before each client subscribed.
    let mut base: Vec<u64> = Vec::new();
    let mut sent_total: u64 = 0;
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let mut passed_limit = false;
    let mut step = 0;
    loop {
        let add = if step == 0 {
            o.initial_clients + o.step_size
        } else {
            o.step_size
        };
        let (new, _, failures) = open_many(
            common,
            clients.len()..clients.len() + add,
            &shared,
            &format!("step {}: connecting", step + 1),
            |_| None,
        )
        .await;
        if !failures.is_empty() {
            errors.extend(failures.into_iter().take(20));
            errors.push(format!("step {}: clients failed to connect", step + 1));
            break;
        }
        base.extend(std::iter::repeat_n(sent_total, new.len()));
        clients.extend(new);

        let mut rtts = histogram();
        let mut in_progress = 0usize;
        let send_one = |clients: &[Client]| {
            let c = &clients[fastrand::usize(..clients.len())];
            c.broadcast(&padding)
        };
        for _ in 0..o.concurrent.min(o.sample_size) {
            send_one(&clients);
            in_progress += 1;
        }
        let mut lost = false;
        while (rtts.len() as usize) < o.sample_size {
            match tokio::time::timeout(Duration::from_secs(30), rtt_rx.recv()).await {
                Ok(Some(rtt)) => {
                    rtts.saturating_record((rtt.as_micros() as u64).max(1));
                    in_progress -= 1;
                    if rtts.len() as usize + in_progress < o.sample_size {
                        send_one(&clients);
                        in_progress += 1;
                    }
                }
                _ => {
                    lost = true;
                    break;
                }
            }
        }
        sent_total += (rtts.len() as usize + in_progress) as u64;
        if lost {
            errors.push(format!(
                "step {}: no broadcastResult within 30 s ({} of {} received)",
                step + 1,
                rtts.len(),
                o.sample_size
            ));
            break;
        }
        let q = o.limit_percentile as f64 / 100.0;
        let line = format!(
            "clients: {:>6}    {}per-rtt: {:>5}ms    min-rtt: {:>5}ms    median-rtt: {:>5}ms    max-rtt: {:>5}ms",
            clients.len(),
            o.limit_percentile,
            rtts.value_at_quantile(q) / 1000,
            rtts.min() / 1000,
            rtts.value_at_quantile(0.5) / 1000,
            rtts.max() / 1000
        );
        println!("{line}");
        let within = rtts.value_at_quantile(q) <= o.limit_rtt_ms * 1000;
        steps.push(json!({
            "clients": clients.len(),
            "rtt": summary(&rtts),
            "within_limit": within,
        }));
        if shared.error_count() > 0 {
            break;
        }
        step += 1;
        if !within {
            passed_limit = true;
            break;
        }
        if o.total_steps > 0 && step >= o.total_steps {
            break;
        }
    }

    // Every client must see every broadcast sent after it subscribed, once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (missing, extra) = loop {
        let mut settled = true;
        let (mut missing, mut extra) = (0u64, 0u64);
        for (c, b) in clients.iter().zip(&base) {
            let want = sent_total - b;
            let got = c.state.broadcasts.load(Ordering::Relaxed);
            if got < want {
                missing += want - got;
                settled = false;
            } else if got > want {
                extra += got - want;
            }
        }
        if settled || Instant::now() > deadline {
            break (missing, extra);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if missing > 0 || extra > 0 {
        errors.push(format!(
            "{missing} broadcast deliveries missing and {extra} extra across {} clients",
            clients.len()
        ));
    }
    errors.extend(shared.errors.lock().expect("errors lock").iter().cloned());
    let max_within = steps
        .iter()
        .filter(|s| s["within_limit"] == true)
        .map(|s| s["clients"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let deliveries: u64 = base.iter().map(|b| sent_total - b).sum();
    close_all(&clients, &shared).await;
    RunResult::new(
        "broadcast",
        common,
        o,
        json!({
            "steps": steps,
            "max_clients_within_limit": max_within,
            "passed_limit": passed_limit,
            "broadcasts_sent": sent_total,
            "deliveries_checked": deliveries,
            "missing": missing,
            "extra": extra,
        }),
        errors,
    )
}

// ---------------------------------------------------------------- fanout

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct FanoutOpts {
    #[arg(long, default_value_t = 10_000)]
    pub subscribers: usize,
    /// First rate, broadcasts per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate_start: f64,
    /// Each step multiplies the rate by this.
    #[arg(long, default_value_t = 1.5)]
    pub rate_factor: f64,
    #[arg(long, default_value_t = 10_000.0)]
    pub rate_max: f64,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    #[arg(long, default_value_t = 200)]
    pub payload_padding: usize,
    /// Highest p99 delivery latency a rate may have to count.
    #[arg(long, default_value_t = 100)]
    pub p99_limit_ms: u64,
    /// Publisher's server, when it is another node than the subscribers'.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Subscribers over Server-Sent Events (`/events` on the URL's server)
    /// instead of WebSockets; the publisher stays a WebSocket client.
    #[arg(long)]
    pub sse: bool,
    /// WebSocket subscribers through tokio-tungstenite, a message object
    /// per frame, as before 2026-12-04; by default they read frames in
    /// place ([`crate::rawws`]), which costs the shared cores less.
    #[arg(long)]
    pub library_client: bool,
}

/// N subscribers of one stream; one publisher sweeps the broadcast rate.
pub async fn fanout(common: &Common, o: &FanoutOpts) -> Result<RunResult> {
    let (shared, _rtt) = Shared::new();
    let (subs, n) = if o.sse {
        (Vec::new(), open_sse(common, o.subscribers, &shared).await?)
    } else {
        let (subs, _, failures) = open_clients(
            common,
            0..o.subscribers,
            &shared,
            "subscribers connecting",
            |_| None,
            !o.library_client,
        )
        .await;
        if !failures.is_empty() {
            bail!("{} subscribers failed: {}", failures.len(), failures[0]);
        }
        let n = subs.len() as u64;
        (subs, n)
    };
    // The publisher is a BenchmarkChannel client too; what it receives is not
    // counted.
    let (pub_shared, _rtt2) = Shared::new();
    let mut pub_target = common.target.clone();
    if let Some(u) = &o.publish_url {
        pub_target.url = u.clone();
    }
    let (ws, _) = client::open(&pub_target, o.subscribers, None).await?;
    let publisher = client::spawn(o.subscribers, ws, pub_shared);
    let padding = client::padding(o.payload_padding);
    // Let the subscriptions settle (adapter acks, cross-node subscribes).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let mut best_complete: Option<Value> = None;
    let mut rate = o.rate_start;
    while rate <= o.rate_max {
        let cpu0 = procfs::cpu_split_all(&common.server_pids).unwrap_or((0, 0));
        let own0 = procfs::cpu_split_us(std::process::id()).ok();
        let started = Instant::now();
        shared.start_window();
        let total = (rate * o.step_secs).round() as u64;
        let pb = bar(common, total, &format!("{rate:.0} broadcasts/s"));
        let sent = publish_paced(&publisher, &padding, rate, total, started, &pb, |_| {}).await;
        let expected = sent * n;
        let drain_deadline = Instant::now() + Duration::from_secs(3);
        while shared.delivered() < expected && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        pb.finish_and_clear();
        let cpu1 = procfs::cpu_split_all(&common.server_pids).unwrap_or((0, 0));
        let own1 = procfs::cpu_split_us(std::process::id()).ok();
        let delivered = shared.delivered();
        let lat = shared.merged();
        let p99 = lat.value_at_quantile(0.99);
        let complete = delivered as f64 >= expected as f64 * 0.999;
        let ok = complete && p99 <= o.p99_limit_ms * 1000;
        // Deliveries over the nominal sending time: the offered rate times N when
        // everything arrived (the latency limit says whether it kept up).
        let per_sec = delivered as f64 / (sent as f64 / rate);
        let per = |us: u64| (delivered > 0).then(|| us as f64 / delivered as f64);
        let server = |us: u64| per(us).filter(|_| !common.server_pids.is_empty());
        let (user, kernel) = (cpu1.0.saturating_sub(cpu0.0), cpu1.1.saturating_sub(cpu0.1));
        let (cpu_per, user_per, kernel_per) = (server(user + kernel), server(user), server(kernel));
        // The load generator's own CPU: on a shared machine it is most of
        // the total, so it bounds what any server can be seen to sustain.
        let own = own0
            .zip(own1)
            .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
        let own_per = own.and_then(|(u, k)| per(u + k));
        let own_user_per = own.and_then(|(u, _)| per(u));
        let row = json!({
            "rate": rate,
            "sent": sent,
            "expected": expected,
            "delivered": delivered,
            "deliveries_per_sec": per_sec.round(),
            "latency": summary(&lat),
            "server_cpu_us_per_delivery": cpu_per,
            "server_user_us_per_delivery": user_per,
            "server_kernel_us_per_delivery": kernel_per,
            "loadgen_cpu_us_per_delivery": own_per,
            "loadgen_user_us_per_delivery": own_user_per,
            "server_cpu_percent": if common.server_pids.is_empty() { None } else {
                Some(((user + kernel) as f64 / elapsed.as_secs_f64() / 1e4).round())
            },
            "ok": ok,
        });
        println!(
            "rate: {rate:>8.1}/s  deliveries/s: {:>10.0}  p50: {:>7.2}ms  p99: {:>8.2}ms  delivered: {delivered}/{expected}  cpu/delivery: {} (user {}, kernel {}; loadgen {}, user {})  {}",
            per_sec,
            us_to_ms(lat.value_at_quantile(0.5)),
            us_to_ms(p99),
            cpu_per.map(|c| format!("{c:.2}us")).unwrap_or_else(|| "-".into()),
            user_per.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
            kernel_per.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
            own_per.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
            own_user_per.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into()),
            if ok { "ok" } else { "over" }
        );
        steps.push(row.clone());
        if complete {
            best_complete = Some(row.clone());
        }
        if ok {
            best = Some(row);
        }
        // Past the latency limit the sweep goes on while everything still
        // arrives (raw throughput, for servers that never meet the limit),
        // up to ten times the limit.
        if !complete || p99 > 10 * o.p99_limit_ms * 1000 {
            break;
        }
        rate *= o.rate_factor;
        // Let a step's stragglers arrive before the next window opens.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut errors: Vec<String> = shared.errors.lock().expect("errors lock").clone();
    if best_complete.is_none() {
        errors.push("no rate had every delivery made".into());
    }
    publisher.close();
    close_all(&subs, &shared).await;
    RunResult::new(
        "fanout",
        common,
        o,
        json!({"steps": steps, "best": best, "best_complete": best_complete}),
        errors,
    )
}

// ---------------------------------------------------------------- connect

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ConnectOpts {
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
}

/// N connections opened at concurrency C: time to welcome and to confirm.
pub async fn connect(common: &Common, o: &ConnectOpts) -> Result<RunResult> {
    let (shared, _rtt) = Shared::new();
    let at_once = Common {
        connect_concurrency: o.concurrency,
        ..common.clone()
    };
    let started = Instant::now();
    let (clients, timings, failures) =
        open_many(&at_once, 0..o.connections, &shared, "connecting", |_| None).await;
    let wall = started.elapsed();
    let mut welcome = histogram();
    let mut confirm = histogram();
    for t in &timings {
        welcome.saturating_record((t.welcome.as_micros() as u64).max(1));
        confirm.saturating_record((t.confirm.as_micros() as u64).max(1));
    }
    let rss = procfs::rss_all(&common.server_pids).ok();
    println!(
        "connections: {}  failures: {}  welcome p50/p95/p99/max: {:.1}/{:.1}/{:.1}/{:.1}ms  confirm p50/p95/p99/max: {:.1}/{:.1}/{:.1}/{:.1}ms  wall: {:.2}s",
        timings.len(),
        failures.len(),
        us_to_ms(welcome.value_at_quantile(0.5)),
        us_to_ms(welcome.value_at_quantile(0.95)),
        us_to_ms(welcome.value_at_quantile(0.99)),
        us_to_ms(welcome.max()),
        us_to_ms(confirm.value_at_quantile(0.5)),
        us_to_ms(confirm.value_at_quantile(0.95)),
        us_to_ms(confirm.value_at_quantile(0.99)),
        us_to_ms(confirm.max()),
        wall.as_secs_f64()
    );
    close_all(&clients, &shared).await;
    let mut errors: Vec<String> = failures.iter().take(20).cloned().collect();
    errors.extend(shared.errors.lock().expect("errors lock").iter().cloned());
    // Errors from the server do not fail a connect run; failing to connect does.
    Ok(RunResult {
        ok: failures.is_empty(),
        ..RunResult::new(
            "connect",
            common,
            o,
            json!({
                "connected": timings.len(),
                "failures": failures.len(),
                "welcome": summary(&welcome),
                "confirm": summary(&confirm),
                "wall_secs": wall.as_secs_f64(),
                "per_sec": (timings.len() as f64 / wall.as_secs_f64()).round(),
                "server_rss_bytes": rss,
            }),
            errors,
        )?
    })
}

// ---------------------------------------------------------------- idle

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct IdleOpts {
    /// Two sizes; memory per connection is the slope between them.
    #[arg(long, default_value_t = 5_000)]
    pub low: usize,
    #[arg(long, default_value_t = 15_000)]
    pub high: usize,
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
}

async fn settled_rss(pids: &[u32], settle: f64) -> Result<u64> {
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    // The smallest of a few readings: a transient buffer is not per-connection
    // memory.
    let mut best = u64::MAX;
    for _ in 0..5 {
        best = best.min(procfs::rss_all(pids)?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(best)
}

/// N subscribed idle clients; server RSS per connection.
pub async fn idle(common: &Common, o: &IdleOpts) -> Result<RunResult> {
    if common.server_pids.is_empty() {
        bail!("idle needs --server-pid");
    }
    let (shared, _rtt) = Shared::new();
    let before = settled_rss(&common.server_pids, 0.0).await?;
    let (mut clients, _, f1) =
        open_many(common, 0..o.low, &shared, "connecting (low)", |_| None).await;
    let rss_low = settled_rss(&common.server_pids, o.settle_secs).await?;
    let (more, _, f2) = open_many(common, o.low..o.high, &shared, "connecting (high)", |_| {
        None
    })
    .await;
    clients.extend(more);
    let rss_high = settled_rss(&common.server_pids, o.settle_secs).await?;
    let slope = (rss_high as f64 - rss_low as f64) / (o.high - o.low) as f64;
    println!(
        "idle: rss before {:.1} MiB, at {} clients {:.1} MiB, at {} clients {:.1} MiB; {:.0} bytes per connection",
        before as f64 / 1048576.0,
        o.low,
        rss_low as f64 / 1048576.0,
        o.high,
        rss_high as f64 / 1048576.0,
        slope
    );
    close_all(&clients, &shared).await;
    let mut errors: Vec<String> = f1.into_iter().chain(f2).take(20).collect();
    errors.extend(shared.errors.lock().expect("errors lock").iter().cloned());
    RunResult::new(
        "idle",
        common,
        o,
        json!({
            "rss_before_bytes": before,
            "rss_low_bytes": rss_low,
            "rss_high_bytes": rss_high,
            "bytes_per_connection": slope.round(),
        }),
        errors,
    )
}

// ---------------------------------------------------------------- slow

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct SlowOpts {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Fraction of clients that stop reading, in percent.
    #[arg(long, default_value_t = 1.0)]
    pub slow_percent: f64,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 4000)]
    pub payload_padding: usize,
    /// Length of the phase before and of the phase with stalled clients.
    #[arg(long, default_value_t = 10.0)]
    pub phase_secs: f64,
    /// The server's per-connection outbound queue limit.
    #[arg(long, default_value_t = 1 << 20)]
    pub queue_limit_bytes: u64,
}

/// 1% of clients stop reading while broadcasts go on: the server's memory
/// must stay bounded and the others' latency must not move.
pub async fn slow(common: &Common, o: &SlowOpts) -> Result<RunResult> {
    let (shared, _rtt) = Shared::new();
    let n_slow = ((o.clients as f64 * o.slow_percent / 100.0).round() as usize).max(1);
    // Spread the slow ones; client 0 publishes and always reads.
    let stride = (o.clients / n_slow).max(1);
    let slow_ids: Vec<usize> = (0..n_slow).map(|k| 1 + k * stride).collect();
    let (clients, _, failures) = open_many(
        common,
        0..o.clients,
        &shared,
        "connecting",
        // A small receive window: a stalled client backs up the server's
        // socket within the run instead of parking megabytes in the kernel.
        |i| slow_ids.contains(&i).then_some(4096),
    )
    .await;
    if !failures.is_empty() || clients.len() != o.clients {
        bail!("{} clients failed: {:?}", failures.len(), failures.first());
    }
    let padding = client::padding(o.payload_padding);
    let publisher = &clients[0];

    async fn phase(
        common: &Common,
        shared: &Shared,
        publisher: &Client,
        padding: &str,
        rate: f64,
        secs: f64,
        label: &str,
    ) -> (Histogram<u64>, u64, u64) {
        shared.start_window();
        let started = Instant::now();
        let total = (rate * secs).round() as u64;
        let pb = bar(common, total, label);
        let mut max_rss = 0;
        let sent = publish_paced(publisher, padding, rate, total, started, &pb, |sent| {
            if sent % 10 == 0 {
                max_rss = max_rss.max(procfs::rss_all(&common.server_pids).unwrap_or(0));
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        max_rss = max_rss.max(procfs::rss_all(&common.server_pids).unwrap_or(0));
        pb.finish_and_clear();
        (shared.merged(), sent, max_rss)
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let run_phase = |label| {
        phase(
            common,
            &shared,
            publisher,
            &padding,
            o.rate,
            o.phase_secs,
            label,
        )
    };
    let (lat_a, sent_a, rss_a) = run_phase("all reading").await;
    for &i in &slow_ids {
        clients[i].pause(true);
    }
    // Stalled clients read nothing during the phase, so its latencies are
    // the readers' alone.
    let (lat_b, sent_b, rss_b) = run_phase("1% stalled").await;
    // Let the stalled clients read what reached them: a too_slow disconnect
    // (or a plain close) should be there.
    for &i in &slow_ids {
        clients[i].pause(false);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_ids
        .iter()
        .any(|&i| !clients[i].state.closed.load(Ordering::SeqCst))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dropped = slow_ids
        .iter()
        .filter(|&&i| clients[i].state.closed.load(Ordering::SeqCst))
        .count();
    let told_too_slow = slow_ids
        .iter()
        .filter(|&&i| clients[i].state.too_slow.load(Ordering::SeqCst))
        .count();
    let readers_closed = clients
        .iter()
        .filter(|c| !slow_ids.contains(&c.id) && c.state.closed.load(Ordering::SeqCst))
        .count();
    let bound = rss_a + o.queue_limit_bytes * n_slow as u64;
    println!(
        "slow: {} of {} stalled; p99 before {:.2}ms, during {:.2}ms; rss before {:.1} MiB, max during {:.1} MiB (bound {:.1} MiB); stalled dropped {dropped} (told too_slow {told_too_slow}); readers dropped {readers_closed}",
        n_slow,
        clients.len(),
        us_to_ms(lat_a.value_at_quantile(0.99)),
        us_to_ms(lat_b.value_at_quantile(0.99)),
        rss_a as f64 / 1048576.0,
        rss_b as f64 / 1048576.0,
        bound as f64 / 1048576.0
    );
    let mut errors: Vec<String> = Vec::new();
    if readers_closed > 0 {
        errors.push(format!(
            "{readers_closed} reading clients were disconnected"
        ));
    }
    let server_errors: Vec<String> = shared
        .errors
        .lock()
        .expect("errors lock")
        .iter()
        .filter(|e| {
            // A stalled client's connection being cut is the expected outcome.
            !slow_ids
                .iter()
                .any(|i| e.starts_with(&format!("client {i}:")))
        })
        .cloned()
        .collect();
    errors.extend(server_errors);
    let bounded = rss_b <= bound;
    close_all(&clients, &shared).await;
    RunResult::new(
        "slow",
        common,
        o,
        json!({
            "stalled": n_slow,
            "before": {"sent": sent_a, "latency": summary(&lat_a), "max_rss_bytes": rss_a},
            "during": {"sent": sent_b, "latency": summary(&lat_b), "max_rss_bytes": rss_b},
            "rss_bound_bytes": bound,
            "rss_bounded": bounded,
            "stalled_dropped": dropped,
            "stalled_told_too_slow": told_too_slow,
            "readers_dropped": readers_closed,
        }),
        errors,
    )
}

// ---------------------------------------------------------------- count

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct CountOpts {
    /// Clients, opened one at a time (TCP, WebSocket handshake, welcome,
    /// subscribe, confirm).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Broadcasts from client 0 once every client is open, one at a time:
    /// the next is sent when every client has the last one and client 0
    /// its broadcastResult. With 0, each client is closed as soon as it is
    /// confirmed, before the next one opens.
    #[arg(long, default_value_t = 0)]
    pub broadcasts: u64,
    #[arg(long, default_value_t = 200)]
    pub payload_padding: usize,
}

/// A fixed, deterministic workload for counting a server's instructions
/// (scripts/callgrind runs the server under valgrind): the same frames in
/// the same order every time, nothing paced by the clock, so two runs of
/// different sizes differ by the work of the extra connections or
/// deliveries alone.
pub async fn count(common: &Common, o: &CountOpts) -> Result<RunResult> {
    let started = Instant::now();
    let mut errors = Vec::new();
    let (shared, _rtt) = Shared::new();
    let (mut delivered, mut results, mut pings) = (0, 0, 0);
    if o.broadcasts == 0 {
        // Each connection's whole life, one after the other.
        let pb = bar(common, o.clients as u64, "connecting one at a time");
        for i in 0..o.clients {
            let opened = tokio::time::timeout(
                Duration::from_secs(30),
                client::open(&common.target, i, None),
            )
            .await;
            let mut ws = match opened {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => bail!("client {i}: {e:#}"),
                Err(_) => bail!("client {i}: no confirm_subscription within 30 s"),
            };
            ws.close(None).await?;
            // Until the server has closed its end too.
            let drained = tokio::time::timeout(Duration::from_secs(30), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            if drained.is_err() {
                bail!("client {i}: the server did not close within 30 s");
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
    } else {
        let one_at_a_time = Common {
            connect_concurrency: 1,
            ..common.clone()
        };
        let (clients, _, failures) =
            open_many(&one_at_a_time, 0..o.clients, &shared, "connecting", |_| {
                None
            })
            .await;
        if !failures.is_empty() {
            bail!("{} clients failed: {}", failures.len(), failures[0]);
        }
        let n = clients.len() as u64;
        let padding = client::padding(o.payload_padding);
        let publisher = &clients[0];
        shared.start_window();
        let pb = bar(common, o.broadcasts, "broadcasting one at a time");
        for k in 1..=o.broadcasts {
            publisher.broadcast(&padding);
            let deadline = Instant::now() + Duration::from_secs(30);
            while shared.delivered() < k * n || publisher.state.results.load(Ordering::Relaxed) < k
            {
                if Instant::now() > deadline || shared.error_count() > 0 {
                    errors.push(format!(
                        "broadcast {k}: {} of {} deliveries and {} of {k} broadcastResults within 30 s",
                        shared.delivered(),
                        k * n,
                        publisher.state.results.load(Ordering::Relaxed)
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            pb.inc(1);
            if !errors.is_empty() {
                break;
            }
        }
        pb.finish_and_clear();
        delivered = shared.delivered();
        results = publisher.state.results.load(Ordering::Relaxed);
        pings = clients
            .iter()
            .map(|c| c.state.pings.load(Ordering::Relaxed))
            .sum();
        close_all(&clients, &shared).await;
    }
    errors.extend(shared.errors.lock().expect("errors lock").iter().cloned());
    let secs = started.elapsed().as_secs_f64();
    println!(
        "count: {} clients, {} broadcasts: {delivered} deliveries, {results} broadcastResults, {pings} pings in {secs:.2}s",
        o.clients, o.broadcasts
    );
    RunResult::new(
        "count",
        common,
        o,
        json!({
            "clients": o.clients,
            "broadcasts": o.broadcasts,
            "deliveries": delivered,
            "broadcast_results": results,
            "pings_received": pings,
            "secs": secs,
        }),
        errors,
    )
}
