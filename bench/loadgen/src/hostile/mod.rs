//! `hostile`: a canary client echoes every 50 ms while other sockets attack
//! the server, one case after another, each for a bounded time with bounded
//! counts:
//!
//! - `subscribe_flood`: subscribe commands as fast as the sockets take them
//!   (new rooms, the same identifier again, subscribe/unsubscribe toggles);
//! - `action_flood`: `echo`, `speak` and performs on an identifier never
//!   subscribed, as fast as possible;
//! - `ping_flood`: WebSocket ping frames, from sockets that read the pongs
//!   and sockets that never do;
//! - `subscriptions`: 20,000 distinct subscriptions on one socket;
//! - `big_identifiers`: identifiers near the 64 KiB inbound limit, 2,000 of
//!   4 KiB, and one command past the limit;
//! - `big_broadcast`: 1.5 MiB through `POST /admin/broadcast` to a room of 20,
//!   then a small broadcast that all 20 must still be connected to receive;
//! - `half_open`: hundreds of TCP connections holding half a request;
//! - `slow_readers`: members of a busy room stop reading.
//!
//! Every case records the canary's round trips (worst, p99) and losses, the
//! server's RSS before, after and at its peak (from `/proc`, with
//! `--server-pid`), whether a fresh client can connect, subscribe and echo
//! afterwards, and what the attacking sockets saw (answers, disconnect
//! reasons, close codes). [`shutdown`] sends SIGTERM with half-sent requests
//! open and measures how long the process takes to exit.
//!
//! The target is a server with the chat example's `ChatChannel` (`echo`,
//! `speak`; rooms by the `room` param) and, for `big_broadcast`, its
//! loopback-only admin endpoint.

mod canary;
mod cases;
pub mod sock;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::{json, Value};

pub use canary::CanaryReport;
pub use sock::Fresh;
use sock::Observed;

use crate::client::Target;
use crate::modes::{Common, RunResult};
use crate::procfs;

/// Every case, in the order they run.
pub const CASES: &[&str] = &[
    "subscribe_flood",
    "action_flood",
    "ping_flood",
    "subscriptions",
    "big_identifiers",
    "big_broadcast",
    "half_open",
    "slow_readers",
];

/// What one sentence says a case does (for the summary and the report).
pub fn describe(case: &str) -> &'static str {
    match case {
        "subscribe_flood" => "subscribe commands as fast as possible (new rooms, repeats, toggles)",
        "action_flood" => "echo, speak and unsubscribed performs as fast as possible",
        "ping_flood" => "WebSocket pings as fast as possible (half the sockets never read)",
        "subscriptions" => "distinct subscriptions on one socket",
        "big_identifiers" => "identifiers near the 64 KiB limit, many of a few KiB, one past it",
        "big_broadcast" => "a big broadcast to a room, then a small one",
        "half_open" => "TCP connections holding half a request",
        "slow_readers" => "members of a busy room stop reading",
        _ => "",
    }
}

/// The hostile run's settings (its command-line flags).
#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct HostileOpts {
    /// Comma-separated cases, or `all`: subscribe_flood, action_flood,
    /// ping_flood, subscriptions, big_identifiers, big_broadcast,
    /// half_open, slow_readers (run in this order).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub cases: Vec<String>,
    /// Seconds each flood, hold or busy phase lasts.
    #[arg(long, default_value_t = 3.0)]
    pub case_secs: f64,
    /// Admin endpoints (`POST /admin/broadcast`) as http://host:port;
    /// default: the --url's host and port.
    #[arg(long)]
    pub admin_url: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub canary_interval_ms: u64,
    /// An echo not back within this counts as lost.
    #[arg(long, default_value_t = 5000)]
    pub echo_grace_ms: u64,
    #[arg(long, default_value_t = 3)]
    pub flood_sockets: usize,
    /// Most frames one flooding socket sends.
    #[arg(long, default_value_t = 200_000)]
    pub flood_max_commands: u64,
    #[arg(long, default_value_t = 20_000)]
    pub subscriptions: usize,
    #[arg(long, default_value_t = 20)]
    pub big_identifiers: usize,
    /// Size of each near-limit subscribe command.
    #[arg(long, default_value_t = 65_000)]
    pub big_identifier_bytes: usize,
    #[arg(long, default_value_t = 2_000)]
    pub medium_identifiers: usize,
    #[arg(long, default_value_t = 4096)]
    pub medium_identifier_bytes: usize,
    #[arg(long, default_value_t = 20)]
    pub room_size: usize,
    #[arg(long, default_value_t = 1536 * 1024)]
    pub big_broadcast_bytes: usize,
    #[arg(long, default_value_t = 500)]
    pub half_open: usize,
    #[arg(long, default_value_t = 10)]
    pub slow_readers: usize,
    /// Broadcasts per second in the busy room.
    #[arg(long, default_value_t = 200.0)]
    pub slow_rate: f64,
    /// Bytes of each busy-room broadcast's body.
    #[arg(long, default_value_t = 16_000)]
    pub slow_payload: usize,
    /// The canary's worst round trip allowed in any case (0: not judged).
    #[arg(long, default_value_t = 100)]
    pub rtt_limit_ms: u64,
    /// Most the server's RSS may grow during one case (peak over its
    /// level before the case).
    #[arg(long, default_value_t = 64)]
    pub rss_limit_mib: u64,
}

impl Default for HostileOpts {
    fn default() -> Self {
        HostileOpts {
            cases: CASES.iter().map(|c| c.to_string()).collect(),
            case_secs: 3.0,
            canary_interval_ms: 50,
            echo_grace_ms: 5000,
            flood_sockets: 3,
            flood_max_commands: 200_000,
            subscriptions: 20_000,
            big_identifiers: 20,
            big_identifier_bytes: 65_000,
            medium_identifiers: 2_000,
            medium_identifier_bytes: 4096,
            room_size: 20,
            big_broadcast_bytes: 1536 * 1024,
            half_open: 500,
            slow_readers: 10,
            slow_rate: 200.0,
            slow_payload: 16_000,
            admin_url: None,
            rtt_limit_ms: 100,
            rss_limit_mib: 64,
        }
    }
}

/// One judged property of a case.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: &str, ok: bool, detail: String) -> Self {
        Check {
            name: name.to_owned(),
            ok,
            detail,
        }
    }
}

/// Server memory over one case, in bytes.
#[derive(Clone, Debug, Serialize)]
pub struct Rss {
    pub before: u64,
    pub after: u64,
    pub peak: u64,
    /// Peak over the level before the first case.
    pub peak_over_baseline: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub description: String,
    pub secs: f64,
    pub canary: CanaryReport,
    pub rss: Option<Rss>,
    pub fresh: Fresh,
    /// What the attacking sockets experienced.
    pub attack: Value,
    /// Set when the case could not run its attack (the server refused it
    /// outright, or something it needs is missing).
    pub error: Option<String>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

impl CaseResult {
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// What a case function gets.
pub struct Ctx {
    pub target: Target,
    pub opts: HostileOpts,
    pub admin: Option<SocketAddr>,
    /// Makes rooms unique to this run.
    pub nonce: u64,
    ids: AtomicUsize,
}

impl Ctx {
    /// A new client number (users are `{i}` in the URL).
    pub fn next_id(&self) -> usize {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// `n` consecutive client numbers; returns the first.
    pub fn next_ids(&self, n: usize) -> usize {
        self.ids.fetch_add(n, Ordering::Relaxed)
    }

    pub fn case_time(&self) -> Duration {
        Duration::from_secs_f64(self.opts.case_secs)
    }
}

/// Reads the server's RSS every 20 ms on a thread of its own.
struct Sampler {
    pid: u32,
    peak: Arc<AtomicU64>,
    gone: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let gone = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, gone, stop) = (peak.clone(), gone.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match procfs::rss_bytes(pid) {
                        Ok(r) => {
                            peak.fetch_max(r, Ordering::Relaxed);
                        }
                        Err(_) => gone.store(true, Ordering::SeqCst),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Sampler {
            pid,
            peak,
            gone,
            stop,
            thread: Some(thread),
        }
    }

    fn now(&self) -> u64 {
        procfs::rss_bytes(self.pid).unwrap_or(0)
    }

    /// Starts a new peak from the current level.
    fn reset(&self) -> u64 {
        let now = self.now();
        self.peak.store(now, Ordering::Relaxed);
        now
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).max(self.now())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether process `pid` is gone (no `/proc` entry, or a zombie).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

fn admin_addr(common: &Common, o: &HostileOpts) -> Result<SocketAddr> {
    let hostport = match &o.admin_url {
        Some(u) => u
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--admin-url must be http://host:port: {u}"))?
            .trim_end_matches('/')
            .to_owned(),
        None => common.target.addr()?.1,
    };
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|_| anyhow!("admin address {hostport:?} is not an IP:port"))?;
    if !addr.ip().is_loopback() {
        bail!("the hostile run only targets loopback addresses, not {addr}");
    }
    Ok(addr)
}

fn validate(common: &Common, o: &HostileOpts) -> Result<()> {
    let (addr, _) = common.target.addr()?;
    if !addr.ip().is_loopback() {
        bail!("the hostile run only targets loopback addresses, not {addr}");
    }
    for c in &o.cases {
        if !CASES.contains(&c.as_str()) {
            bail!("unknown case {c:?}; cases: {}", CASES.join(", "));
        }
    }
    // Both processes stay well under the 20,000 open files per process.
    if o.half_open > 10_000 || o.room_size + o.slow_readers + o.flood_sockets > 5_000 {
        bail!("socket counts too high: keep every case under 10,000 sockets");
    }
    if o.case_secs <= 0.0 || o.case_secs > 120.0 {
        bail!("--case-secs must be within (0, 120]");
    }
    if o.canary_interval_ms == 0 || o.slow_rate <= 0.0 || o.slow_rate > 10_000.0 {
        bail!("--canary-interval-ms must be above 0 and --slow-rate within (0, 10000]");
    }
    Ok(())
}

async fn run_case(name: &str, ctx: &Ctx) -> Result<cases::Outcome> {
    let bound = ctx.case_time() + Duration::from_secs(90);
    let fut = async {
        match name {
            "subscribe_flood" => cases::subscribe_flood(ctx).await,
            "action_flood" => cases::action_flood(ctx).await,
            "ping_flood" => cases::ping_flood(ctx).await,
            "subscriptions" => cases::subscriptions(ctx).await,
            "big_identifiers" => cases::big_identifiers(ctx).await,
            "big_broadcast" => cases::big_broadcast(ctx).await,
            "half_open" => cases::half_open(ctx).await,
            "slow_readers" => cases::slow_readers(ctx).await,
            other => bail!("unknown case {other}"),
        }
    };
    tokio::time::timeout(bound, fut)
        .await
        .map_err(|_| anyhow!("case did not finish within {bound:?}"))?
}

/// Every case's result, and the canary and server alone before the first.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub baseline_canary: CanaryReport,
    pub baseline_rss: Option<u64>,
    pub cases: Vec<CaseResult>,
    /// Why cases were not run (the server died).
    pub errors: Vec<String>,
}

impl Report {
    pub fn case(&self, name: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.name == name)
    }
}

/// Runs the cases against a running server and returns the `hostile` result.
pub async fn run(common: &Common, o: &HostileOpts) -> Result<RunResult> {
    let report = run_report(common, o).await?;
    let results = &report.cases;
    let mut errors = report.errors.clone();
    for r in results {
        for c in r.checks.iter().filter(|c| !c.ok) {
            errors.push(format!("{}: {}: {}", r.name, c.name, c.detail));
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    let worst = results
        .iter()
        .map(|r| r.canary.worst_ms)
        .fold(0.0f64, f64::max);
    let peak_growth = results
        .iter()
        .filter_map(|r| r.rss.as_ref().map(|x| x.peak_over_baseline))
        .max();
    println!("{}", summary_table(results));
    println!(
        "hostile: {passed} of {} cases passed; canary worst {worst:.1} ms{}",
        results.len(),
        peak_growth
            .map(|g| format!(
                "; server RSS peak {:.1} MiB over its level before the first case",
                g as f64 / 1048576.0
            ))
            .unwrap_or_default()
    );
    Ok(RunResult {
        mode: "hostile".into(),
        server: common.server.clone(),
        ok: errors.is_empty() && passed == o.cases.len(),
        params: serde_json::to_value(o)?,
        metrics: json!({
            "baseline": {"canary": report.baseline_canary, "rss_bytes": report.baseline_rss},
            "cases": results,
            "cases_run": results.len(),
            "cases_passed": passed,
            "canary_worst_ms": worst,
            "rss_peak_growth_bytes": peak_growth,
        }),
        errors,
    })
}

/// [`run`], returning the results as they are.
pub async fn run_report(common: &Common, o: &HostileOpts) -> Result<Report> {
    validate(common, o)?;
    let admin = admin_addr(common, o).ok();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        % 1_000_000_000;
    let ctx = Ctx {
        target: common.target.clone(),
        opts: o.clone(),
        admin,
        nonce,
        ids: AtomicUsize::new(1000),
    };
    let pid = common.server_pids.first().copied();
    let sampler = pid.map(Sampler::start);
    let interval = Duration::from_millis(o.canary_interval_ms);
    let grace = Duration::from_millis(o.echo_grace_ms);
    let target = common.target.clone();
    let canary =
        tokio::task::spawn_blocking(move || canary::Canary::start(&target, 1, interval, grace))
            .await??;

    // Window 0: the canary alone, for half a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    canary.settle(0).await;
    let baseline_canary = canary.report(0);
    let baseline_rss = sampler.as_ref().map(|s| s.now());
    println!(
        "hostile: baseline canary p99 {:.1} ms, worst {:.1} ms{}",
        baseline_canary.p99_ms,
        baseline_canary.worst_ms,
        baseline_rss
            .map(|r| format!("; server RSS {:.1} MiB", r as f64 / 1048576.0))
            .unwrap_or_default()
    );

    let mut results: Vec<CaseResult> = Vec::new();
    let mut errors = Vec::new();
    for (k, name) in o.cases.iter().enumerate() {
        let w = k + 1;
        if sampler
            .as_ref()
            .is_some_and(|s| s.gone.load(Ordering::SeqCst))
        {
            errors.push(format!(
                "server process is gone; {name} and later cases not run"
            ));
            break;
        }
        let before = sampler.as_ref().map(|s| s.reset());
        canary.begin_window(w);
        let started = Instant::now();
        let outcome = run_case(name, &ctx).await;
        canary.settle(w).await;
        let fresh = sock::fresh_client(&ctx.target, ctx.next_id(), Duration::from_secs(10)).await;
        // Let freed memory show before reading "after".
        tokio::time::sleep(Duration::from_millis(300)).await;
        let secs = started.elapsed().as_secs_f64();
        let rss = sampler.as_ref().map(|s| {
            let peak = s.peak();
            Rss {
                before: before.unwrap_or(0),
                after: s.now(),
                peak,
                peak_over_baseline: peak.saturating_sub(baseline_rss.unwrap_or(0)),
            }
        });
        let report = canary.report(w);
        let (attack, mut checks, error) = match outcome {
            Ok(out) => (out.attack, out.checks, None),
            Err(e) => (Value::Null, vec![], Some(format!("{e:#}"))),
        };
        let canary_ok = report.lost == 0 && report.duplicated == 0 && report.disconnects == 0;
        checks.insert(
            0,
            Check::new(
                "canary_lost_nothing",
                canary_ok,
                format!(
                    "{} echoes sent, {} back, {} lost, {} duplicated, {} reconnects",
                    report.sent, report.echoed, report.lost, report.duplicated, report.disconnects
                ),
            ),
        );
        if o.rtt_limit_ms > 0 {
            checks.push(Check::new(
                "canary_rtt",
                report.worst_ms <= o.rtt_limit_ms as f64 && report.echoed > 0,
                format!(
                    "worst round trip {:.1} ms (limit {} ms; sent {:.1} s into the case, whose attack lasts {} s before teardown), p99 {:.1} ms",
                    report.worst_ms,
                    o.rtt_limit_ms,
                    report.worst_sent_at_ms / 1e3,
                    o.case_secs,
                    report.p99_ms
                ),
            ));
        }
        if let Some(r) = &rss {
            let limit = o.rss_limit_mib << 20;
            let growth = r.peak.saturating_sub(r.before);
            checks.push(Check::new(
                "rss_bounded",
                growth <= limit,
                format!(
                    "peak {:.1} MiB over the level before the case (limit {} MiB), {:+.1} MiB left after it; {:.1} MiB over the run's baseline",
                    growth as f64 / 1048576.0,
                    o.rss_limit_mib,
                    (r.after as f64 - r.before as f64) / 1048576.0,
                    r.peak_over_baseline as f64 / 1048576.0,
                ),
            ));
        }
        checks.push(Check::new(
            "fresh_client",
            fresh.ok,
            match &fresh.error {
                None => format!("connected, subscribed and echoed in {:.1} ms", fresh.ms),
                Some(e) => e.clone(),
            },
        ));
        if let Some(e) = &error {
            checks.push(Check::new("attack_ran", false, e.clone()));
        }
        let passed = checks.iter().all(|c| c.ok);
        let result = CaseResult {
            name: name.clone(),
            description: describe(name).to_owned(),
            secs,
            canary: report,
            rss,
            fresh,
            attack,
            error,
            checks,
            passed,
        };
        println!("{}", case_line(&result));
        results.push(result);
    }
    drop(canary);
    drop(sampler);
    Ok(Report {
        baseline_canary,
        baseline_rss,
        cases: results,
        errors,
    })
}

fn count(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// `{"close 1000": 3}` as `close 1000 ×3`; empty maps as `none`.
fn tally(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".into(),
    }
}

fn observed_summary(v: &Value) -> String {
    let mut got = Vec::new();
    for (key, what) in [
        ("confirms", "confirmations"),
        ("rejects", "rejections"),
        ("messages", "messages"),
        ("pongs", "pongs"),
    ] {
        let n = count(v, key);
        if n > 0 {
            got.push(format!("{n} {what}"));
        }
    }
    let mut s = format!(
        "{} sockets sent {}; got {}",
        count(v, "sockets"),
        count(v, "sent"),
        if got.is_empty() {
            "nothing".to_owned()
        } else {
            got.join(", ")
        }
    );
    let ended = count(v, "ended_by_server");
    if ended > 0 {
        s.push_str(&format!(
            "; {ended} ended by the server ({}; disconnect reasons: {})",
            tally(&v["endings"]),
            tally(&v["disconnect_reasons"])
        ));
    } else {
        s.push_str("; none ended by the server");
    }
    s
}

/// One line on what a case's attacking sockets experienced.
pub fn attack_summary(case: &str, a: &Value) -> String {
    if a.is_null() {
        return "attack did not run".into();
    }
    match case {
        "subscriptions" => format!(
            "{} subscribes: {} answered ({} confirmed, {} rejected){}; socket {}",
            count(a, "subscribes_sent"),
            count(a, "answered"),
            count(a, "confirms"),
            count(a, "rejects"),
            a["ms_to_last_answer"]
                .as_f64()
                .map(|ms| format!(" within {ms:.0} ms"))
                .unwrap_or_default(),
            a["socket_ending"].as_str().unwrap_or("stayed open")
        ),
        "big_identifiers" => {
            let part = |k: &str| {
                let p = &a[k];
                let told = &p["observed"]["disconnect_reasons"];
                format!(
                    "{} of {} B: {} answered, socket {}{}",
                    count(p, "sent"),
                    count(p, "command_bytes"),
                    count(p, "answered"),
                    p["socket_ending"].as_str().unwrap_or("stayed open"),
                    if told.as_object().is_some_and(|m| !m.is_empty()) {
                        format!(" (told {})", tally(told))
                    } else {
                        String::new()
                    }
                )
            };
            format!(
                "{}; {}; one of {} B: socket {}",
                part("near_limit"),
                part("few_kib"),
                count(&a["over_limit"], "command_bytes"),
                a["over_limit"]["socket_ending"]
                    .as_str()
                    .unwrap_or("stayed open")
            )
        }
        "big_broadcast" => format!(
            "{} members, {} B broadcast (POST {}): {} got it; small one (POST {}): {} got it; {} still connected; ended: {}; disconnect reasons: {}",
            count(a, "members"),
            count(a, "broadcast_bytes"),
            a["big_post"],
            count(a, "got_big"),
            a["small_post"],
            count(a, "got_small"),
            count(a, "still_connected"),
            tally(&a["endings"]),
            tally(&a["disconnect_reasons"])
        ),
        "half_open" => format!(
            "{} held {:.1} s: {} closed by the server ({}); a new client meanwhile: {}",
            count(a, "opened"),
            a["held_secs"].as_f64().unwrap_or(0.0),
            count(a, "closed_by_server"),
            tally(&a["server_answers"]),
            if a["fresh_client_during"]["ok"] == true {
                format!("ok in {} ms", a["fresh_client_during"]["ms"])
            } else {
                format!(
                    "FAILED ({})",
                    a["fresh_client_during"]["error"].as_str().unwrap_or("?")
                )
            }
        ),
        "slow_readers" => format!(
            "{} broadcasts of {} B; {} stalled: {} dropped ({} told too_slow; ended: {}); {} readers got {:?}",
            count(a, "broadcasts_sent"),
            count(a, "payload_bytes"),
            count(a, "slow_readers"),
            count(a, "slow_dropped"),
            count(a, "slow_told_too_slow"),
            tally(&a["slow_observed"]["endings"]),
            count(a, "readers"),
            a["readers_received"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
                .unwrap_or_default()
        ),
        _ => observed_summary(a),
    }
}

fn mib(b: i64) -> String {
    format!("{:+.1}", b as f64 / 1048576.0)
}

fn case_line(r: &CaseResult) -> String {
    let failed: Vec<&str> = r
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    format!(
        "case {:<16} canary worst {:>7.1} ms p99 {:>7.1} ms lost {} dup {}  rss peak {} MiB  fresh {}  {}",
        r.name,
        r.canary.worst_ms,
        r.canary.p99_ms,
        r.canary.lost,
        r.canary.duplicated,
        r.rss
            .as_ref()
            .map(|x| mib(x.peak as i64 - x.before as i64))
            .unwrap_or_else(|| "?".into()),
        if r.fresh.ok { "ok" } else { "FAILED" },
        if failed.is_empty() {
            "passed".to_owned()
        } else {
            format!("FAILED: {}", failed.join(", "))
        }
    )
}

/// A plain-text table of the cases, with every failed check spelt out.
pub fn summary_table(results: &[CaseResult]) -> String {
    let mut s = String::from(
        "\ncase              worst ms   p99 ms  lost  dup  RSS peak/after MiB  fresh  verdict\n",
    );
    for r in results {
        let rss = r
            .rss
            .as_ref()
            .map(|x| {
                format!(
                    "{}/{}",
                    mib(x.peak as i64 - x.before as i64),
                    mib(x.after as i64 - x.before as i64)
                )
            })
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<16} {:>9.1} {:>8.1} {:>5} {:>4}  {:>18}  {:>5}  {}\n",
            r.name,
            r.canary.worst_ms,
            r.canary.p99_ms,
            r.canary.lost,
            r.canary.duplicated,
            rss,
            if r.fresh.ok { "ok" } else { "no" },
            if r.passed { "passed" } else { "FAILED" }
        ));
    }
    for r in results {
        s.push_str(&format!(
            "  {}: {}\n",
            r.name,
            attack_summary(&r.name, &r.attack)
        ));
        for c in r.checks.iter().filter(|c| !c.ok) {
            s.push_str(&format!("    FAILED {}: {}\n", c.name, c.detail));
        }
    }
    s
}

// ---------------------------------------------------------------- shutdown

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct ShutdownOpts {
    #[arg(long, default_value_t = 200)]
    pub half_open: usize,
    /// The server's drain timeout (chat's --shutdown-timeout).
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_timeout_secs: f64,
    /// Give up waiting for the exit after this long.
    #[arg(long, default_value_t = 20.0)]
    pub wait_secs: f64,
}

impl Default for ShutdownOpts {
    fn default() -> Self {
        ShutdownOpts {
            half_open: 200,
            shutdown_timeout_secs: 10.0,
            wait_secs: 20.0,
        }
    }
}

/// With `half_open` half-sent requests and one subscribed client open,
/// sends SIGTERM to `pid` and measures how long until the process is gone
/// (no `/proc` entry, or a zombie its parent has not reaped yet). Passes
/// when it exits within the drain timeout plus 5 s.
pub async fn shutdown(common: &Common, pid: u32, o: &ShutdownOpts) -> Result<RunResult> {
    if process_gone(pid) {
        bail!("process {pid} is not running");
    }
    let target = &common.target;
    let held = sock::HalfOpen::open(target, 500_000, o.half_open).await?;
    let obs = Observed::new();
    let mut live = sock::connect(target, 600_000, None, &obs, Arc::new(Vec::new())).await?;
    let subscribed = live
        .subscribe(&sock::chat_identifier("shutdown"), Duration::from_secs(5))
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed_before = held.closed();
    let started = Instant::now();
    // SAFETY: kill(2) with a plain signal number has no memory effects.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc != 0 {
        bail!("kill -TERM {pid}: {}", std::io::Error::last_os_error());
    }
    let wait = Duration::from_secs_f64(o.wait_secs);
    let mut exited = None;
    while started.elapsed() < wait {
        if process_gone(pid) {
            exited = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limit = o.shutdown_timeout_secs + 5.0;
    let exit_secs = exited.map(|d| d.as_secs_f64());
    let within = exit_secs.is_some_and(|s| s <= limit);
    let live_disconnect = live.state.disconnect.lock().expect("sock lock").clone();
    let live_ending = live.state.ending.lock().expect("sock lock").clone();
    let mut metrics = json!({
        "exited": exited.is_some(),
        "exit_secs": exit_secs,
        "limit_secs": limit,
        "within_limit": within,
        "half_open": held.summary(),
        "half_open_closed_before_sigterm": closed_before,
        "live_client_subscribed": subscribed,
        "live_client_disconnect": live_disconnect,
        "live_client_ending": live_ending,
    });
    metrics["half_open"]["closed_by_server"] = json!(held.closed());
    held.close();
    sock::close_all(vec![live], &obs).await;
    let verdict = match exit_secs {
        Some(s) => format!("exited {s:.2} s after SIGTERM (limit {limit:.0} s)"),
        None => format!(
            "still running {:.0} s after SIGTERM (limit {limit:.0} s)",
            o.wait_secs
        ),
    };
    println!(
        "shutdown: {} half-sent requests open: {verdict}; a subscribed client got {}, its socket ended with {}",
        o.half_open,
        metrics["live_client_disconnect"].as_str().unwrap_or("nothing"),
        metrics["live_client_ending"].as_str().unwrap_or("nothing")
    );
    Ok(RunResult {
        mode: "hostile-shutdown".into(),
        server: common.server.clone(),
        ok: within,
        params: serde_json::to_value(o)?,
        metrics,
        errors: if within { vec![] } else { vec![verdict] },
    })
}
