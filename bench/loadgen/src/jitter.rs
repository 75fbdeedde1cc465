//! `jitter`: AnyCable's jitter test for reliable streams.
//!
//! N clients subscribe to one room; a publisher sends R numbered messages a
//! second through the chat example's `POST /admin/broadcast`; every second
//! P% of the clients lose their socket (closed without a close frame) and
//! reconnect. With history (`actioncable-v1-ext-json`) a client comes back
//! with `?sid=` and asks `history` from the last `{epoch, offset}` it holds,
//! dropping offsets it has seen, as @anycable/web does; without
//! (`--no-history`, plain `actioncable-v1-json`) it only subscribes again,
//! and what was broadcast meanwhile is lost. At the end every client's
//! sequence numbers are counted: received once, missing, duplicated.
//!
//! Frames are parsed with serde here (unlike [`crate::client`]): the rate is
//! a few thousand frames a second, and the client needs the positions.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{histogram, tcp_connect, Target, Ws};
use crate::hostile::sock::http_post;
use crate::modes::{Common, RunResult};
use crate::procfs;

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct JitterOpts {
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing (and dropping).
    #[arg(long, default_value_t = 30.0)]
    pub secs: f64,
    /// Clients dropped every second, in percent of those connected.
    #[arg(long, default_value_t = 10.0)]
    pub drop_percent: f64,
    /// A dropped client waits a random 0..=this many ms before reconnecting.
    #[arg(long, default_value_t = 200)]
    pub reconnect_delay_ms: u64,
    /// Longest wait after the last broadcast for the clients to catch up.
    #[arg(long, default_value_t = 10.0)]
    pub drain_secs: f64,
    /// The subscription every client makes.
    #[arg(long, default_value = r#"{"channel":"ChatChannel","room":"jitter"}"#)]
    pub identifier: String,
    /// The stream that subscription streams from (the publisher's target).
    #[arg(long, default_value = "chat_jitter")]
    pub stream: String,
    /// The chat's admin endpoint, http://host:port (default: --url's).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Plain `actioncable-v1-json` clients that only subscribe again.
    #[arg(long)]
    pub no_history: bool,
}

/// What the coordinator tells a client.
enum Ctl {
    /// Lose the socket, wait this long, reconnect.
    Drop(Duration),
    /// Close and hand in the tally.
    Finish,
}

/// One client's outcome.
#[derive(Default)]
struct Tally {
    /// Times each sequence number was handed on (after the offset dedupe).
    counts: Vec<u32>,
    /// Frames dropped because their offset had been seen.
    deduped: u64,
    reconnects: u64,
    restored: u64,
    history_rejected: u64,
    /// Reconnect start to `confirm_history` (history) or
    /// `confirm_subscription` (no history), microseconds.
    recovery: Vec<u64>,
    errors: Vec<String>,
}

impl Tally {
    fn count(&mut self, seq: u64) -> bool {
        let i = seq as usize;
        if self.counts.len() <= i {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += 1;
        self.counts[i] == 1
    }
}

/// The frames a client reads; everything else is ignored.
#[derive(Deserialize)]
pub(crate) struct Frame {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) identifier: Option<String>,
    pub(crate) message: Option<Value>,
    pub(crate) sid: Option<String>,
    #[serde(default)]
    pub(crate) restored: bool,
    #[serde(default)]
    pub(crate) restored_ids: Vec<String>,
    pub(crate) epoch: Option<String>,
    pub(crate) offset: Option<u64>,
}

/// What the run's clients share.
struct Shared {
    opts: JitterOpts,
    target: Target,
    /// Clients holding every sequence number of the run.
    complete: AtomicU64,
    /// Broadcasts of the run (known before the start).
    total: u64,
}

struct Handle {
    tx: mpsc::UnboundedSender<Ctl>,
    online: Arc<AtomicBool>,
    done: tokio::task::JoinHandle<Tally>,
}

/// The subscribe command, with a `history` request when `history` is set.
pub(crate) fn subscribe_command(identifier: &str, history: Option<Value>) -> String {
    let mut c = json!({"command": "subscribe", "identifier": identifier});
    if let Some(h) = history {
        c["history"] = h;
    }
    c.to_string()
}

/// `{"streams":{S:{"epoch":E,"offset":O}}}`, or `since` the run's start when
/// the client holds no position yet.
fn history_request(stream: &str, pos: &Option<(String, u64)>, since: u64) -> Value {
    match pos {
        Some((epoch, offset)) => {
            json!({"streams": {stream: {"epoch": epoch, "offset": offset}}})
        }
        None => json!({"since": since}),
    }
}

/// Client `i`'s URL, with `sid` when it resumes a session.
fn url_for(base: &str, i: usize, sid: Option<&str>) -> String {
    let url = base.replace("{i}", &i.to_string());
    match sid {
        Some(s) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}sid={s}")
        }
        None => url,
    }
}

pub(crate) async fn next_frame(ws: &mut Ws) -> Result<Frame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).with_context(|| format!("frame {t}"))
            }
            Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// TCP, the handshake with the run's subprotocol, the welcome.
async fn connect(sh: &Shared, i: usize, sid: Option<&str>) -> Result<(Ws, Frame)> {
    let proto = if sh.opts.no_history {
        "actioncable-v1-json"
    } else {
        "actioncable-v1-ext-json"
    };
    connect_with(&sh.target, i, sid, proto).await
}

/// Client `i`'s TCP connection, the handshake offering `proto` (resuming
/// session `sid` if given), the welcome.
pub(crate) async fn connect_with(
    target: &Target,
    i: usize,
    sid: Option<&str>,
    proto: &'static str,
) -> Result<(Ws, Frame)> {
    let (_, hostport) = target.addr()?;
    let tcp = tcp_connect(target, i, None).await?;
    let url = url_for(&target.url, i, sid);
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(proto));
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://{hostport}"))?,
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    loop {
        let f = next_frame(&mut ws).await?;
        match f.kind.as_deref() {
            Some("welcome") => return Ok((ws, f)),
            Some("ping") => {}
            other => bail!("expected a welcome, got {other:?}"),
        }
    }
}

/// Runs client `i` until `Finish`: the first connection and subscription
/// (then `ready`), then drops and recoveries as told.
async fn client(
    sh: Arc<Shared>,
    i: usize,
    mut rx: mpsc::UnboundedReceiver<Ctl>,
    online: Arc<AtomicBool>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    since: u64,
) -> Tally {
    let mut t = Tally::default();
    let mut sid: Option<String> = None;
    let mut pos: Option<(String, u64)> = None;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut distinct = 0u64;
    // When the current recovery started (None: the first connection).
    let mut recovering: Option<Instant> = None;
    let mut failures = 0u32;
    'connections: loop {
        let opened = tokio::time::timeout(Duration::from_secs(30), connect(&sh, i, sid.as_deref()))
            .await
            .map_err(|_| anyhow!("no welcome within 30 s"))
            .and_then(|r| r);
        let (mut ws, welcome) = match opened {
            Ok(x) => x,
            Err(e) => {
                if recovering.is_none() {
                    let _ = ready.send(Err(format!("client {i}: {e:#}")));
                    return t;
                }
                failures += 1;
                if failures > 20 {
                    t.errors
                        .push(format!("client {i}: gave up reconnecting: {e:#}"));
                    // Wait for Finish so the tally still counts.
                    while let Some(c) = rx.recv().await {
                        if matches!(c, Ctl::Finish) {
                            return t;
                        }
                    }
                    return t;
                }
                tokio::time::sleep(Duration::from_millis(100 * failures as u64)).await;
                continue;
            }
        };
        failures = 0;
        let restored = welcome.restored && welcome.restored_ids.contains(&sh.opts.identifier);
        if welcome.sid.is_some() {
            sid = welcome.sid;
        }
        let first = recovering.is_none();
        let cmd = if sh.opts.no_history || first {
            subscribe_command(&sh.opts.identifier, None)
        } else if restored {
            t.restored += 1;
            json!({
                "command": "history",
                "identifier": sh.opts.identifier,
                "history": history_request(&sh.opts.stream, &pos, since),
            })
            .to_string()
        } else {
            subscribe_command(
                &sh.opts.identifier,
                Some(history_request(&sh.opts.stream, &pos, since)),
            )
        };
        // A restored subscription is there already: only history is asked.
        let mut confirmed = restored;
        if let Err(e) = ws.send(Message::text(cmd)).await {
            t.errors.push(format!("client {i}: send: {e}"));
        }
        online.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                ctl = rx.recv() => {
                    online.store(false, Ordering::SeqCst);
                    match ctl {
                        Some(Ctl::Drop(delay)) => {
                            // No close frame: the socket just goes.
                            drop(ws);
                            t.reconnects += 1;
                            tokio::time::sleep(delay).await;
                            recovering = Some(Instant::now());
                            continue 'connections;
                        }
                        Some(Ctl::Finish) | None => {
                            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                            return t;
                        }
                    }
                }
                frame = next_frame(&mut ws) => {
                    let f = match frame {
                        Ok(f) => f,
                        Err(e) => {
                            online.store(false, Ordering::SeqCst);
                            t.errors.push(format!("client {i}: {e:#}"));
                            recovering = Some(Instant::now());
                            continue 'connections;
                        }
                    };
                    match f.kind.as_deref() {
                        Some("confirm_subscription") if !confirmed => {
                            confirmed = true;
                            match recovering {
                                None => {
                                    let _ = ready.send(Ok(()));
                                }
                                Some(at) if sh.opts.no_history => {
                                    t.recovery.push(at.elapsed().as_micros() as u64);
                                }
                                Some(_) => {}
                            }
                        }
                        Some("confirm_history") => {
                            if let Some(at) = recovering {
                                t.recovery.push(at.elapsed().as_micros() as u64);
                            }
                        }
                        Some("reject_history") => t.history_rejected += 1,
                        Some("reject_subscription") => {
                            t.errors.push(format!("client {i}: subscription rejected"));
                            if first {
                                let _ = ready.send(Err(format!("client {i}: rejected")));
                                return t;
                            }
                        }
                        Some("disconnect") => {
                            t.errors.push(format!("client {i}: disconnected by the server"));
                        }
                        Some(_) => {}
                        None => {
                            if f.identifier.as_deref() != Some(sh.opts.identifier.as_str()) {
                                continue;
                            }
                            let Some(seq) = f.message.as_ref().and_then(|m| m["seq"].as_u64())
                            else {
                                continue;
                            };
                            if let (Some(epoch), Some(offset)) = (f.epoch, f.offset) {
                                if pos.as_ref().is_some_and(|(e, _)| *e != epoch) {
                                    // A new epoch: earlier offsets mean nothing.
                                    seen.clear();
                                }
                                if !seen.insert(offset) {
                                    t.deduped += 1;
                                    continue;
                                }
                                pos = Some((epoch, offset));
                            }
                            if t.count(seq) {
                                distinct += 1;
                                if distinct == sh.total {
                                    sh.complete.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn summary(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1e3;
    json!({
        "count": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.50)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

/// `--admin-url`'s address, or the WebSocket target's.
pub(crate) fn admin_addr(common: &Common, admin_url: Option<&str>) -> Result<SocketAddr> {
    match admin_url {
        Some(u) => {
            let hostport = u
                .strip_prefix("http://")
                .ok_or_else(|| anyhow!("--admin-url must be http://host:port: {u}"))?
                .trim_end_matches('/');
            hostport
                .parse()
                .map_err(|_| anyhow!("admin address {hostport:?} is not an IP:port"))
        }
        None => Ok(common.target.addr()?.0),
    }
}

/// The jitter run; see the module docs.
pub async fn jitter(common: &Common, o: &JitterOpts) -> Result<RunResult> {
    if !(0.0..=100.0).contains(&o.drop_percent) || o.rate <= 0.0 || o.secs <= 0.0 {
        bail!("--drop-percent must be 0..=100, --rate and --secs above 0");
    }
    let admin = admin_addr(common, o.admin_url.as_deref())?;
    let total = (o.rate * o.secs).round() as u64;
    let sh = Arc::new(Shared {
        opts: o.clone(),
        target: common.target.clone(),
        complete: AtomicU64::new(0),
        total,
    });
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    // Every client subscribes before the first broadcast, so each should get
    // all of them.
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let sem = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut clients = Vec::with_capacity(o.clients);
    for i in 0..o.clients {
        let (tx, rx) = mpsc::unbounded_channel();
        let online = Arc::new(AtomicBool::new(false));
        let (sh, ready, sem, on) = (sh.clone(), ready_tx.clone(), sem.clone(), online.clone());
        let done = tokio::spawn(async move {
            // The permit is held until the subscription is confirmed.
            let (gate_tx, mut gate_rx) = mpsc::unbounded_channel();
            let permit = sem.acquire_owned().await;
            let task = tokio::spawn(client(sh, i, rx, on, gate_tx, since));
            let first = gate_rx.recv().await;
            drop(permit);
            let _ = ready.send(first.unwrap_or_else(|| Err(format!("client {i}: ended"))));
            task.await.unwrap_or_default()
        });
        clients.push(Handle { tx, online, done });
    }
    drop(ready_tx);
    let mut failures = Vec::new();
    for _ in 0..o.clients {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => failures.push(e),
            None => break,
        }
    }
    if !failures.is_empty() {
        for c in &clients {
            let _ = c.tx.send(Ctl::Finish);
        }
        bail!("{} clients failed: {}", failures.len(), failures[0]);
    }
    // Let the subscriptions settle (adapter acks).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu0 = procfs::cpu_us_all(&common.server_pids).ok();
    let started = Instant::now();
    let stream = o.stream.clone();
    let rate = o.rate;
    let publisher = tokio::spawn(async move {
        let mut post = histogram();
        let mut errors = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut seq = 0u64;
        while seq < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while seq < due {
                seq += 1;
                let body = json!({"stream": stream, "message": {"seq": seq}}).to_string();
                let t0 = Instant::now();
                match http_post(admin, "/admin/broadcast", body.as_bytes()).await {
                    Ok((200, _)) => {
                        post.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Ok((status, b)) => errors.push(format!("broadcast {seq}: HTTP {status}: {b}")),
                    Err(e) => errors.push(format!("broadcast {seq}: {e:#}")),
                }
            }
        }
        (post, errors)
    });

    // The drops: once a second, P% of the clients that are connected.
    let mut drops = 0u64;
    let mut second = 1u64;
    while !publisher.is_finished() {
        let next = started + Duration::from_secs(second);
        tokio::time::sleep_until(next.into()).await;
        if publisher.is_finished() {
            break;
        }
        let mut online: Vec<&Handle> = clients
            .iter()
            .filter(|c| c.online.load(Ordering::SeqCst))
            .collect();
        fastrand::shuffle(&mut online);
        let n = (online.len() as f64 * o.drop_percent / 100.0).round() as usize;
        for c in online.into_iter().take(n) {
            let delay = Duration::from_millis(fastrand::u64(0..=o.reconnect_delay_ms));
            if c.tx.send(Ctl::Drop(delay)).is_ok() {
                drops += 1;
            }
        }
        second += 1;
    }
    let (post, mut errors) = publisher.await.context("publisher task")?;
    let published_in = started.elapsed();

    // Drain: until every client holds every message (history) or the time
    // is up (without history they never will).
    let drain_deadline = Instant::now() + Duration::from_secs_f64(o.drain_secs);
    while (sh.complete.load(Ordering::SeqCst) as usize) < o.clients
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu1 = procfs::cpu_us_all(&common.server_pids).ok();

    for c in &clients {
        let _ = c.tx.send(Ctl::Finish);
    }
    let mut tallies = Vec::with_capacity(clients.len());
    for c in clients {
        tallies.push(c.done.await.unwrap_or_default());
    }

    let mut recovery = histogram();
    let (mut full, mut delivered, mut missing, mut duplicates) = (0usize, 0u64, 0u64, 0u64);
    let (mut deduped, mut reconnects, mut restored, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    for t in &tallies {
        let got = (1..=total as usize)
            .filter(|&s| t.counts.get(s).is_some_and(|&c| c > 0))
            .count() as u64;
        let dup: u64 = t
            .counts
            .iter()
            .map(|&c| u64::from(c.saturating_sub(1)))
            .sum();
        if got == total {
            full += 1;
        }
        delivered += got;
        missing += total - got;
        duplicates += dup;
        deduped += t.deduped;
        reconnects += t.reconnects;
        restored += t.restored;
        rejected += t.history_rejected;
        for &us in &t.recovery {
            recovery.saturating_record(us.max(1));
        }
        errors.extend(t.errors.iter().take(3).cloned());
    }
    errors.truncate(200);
    let n = tallies.len().max(1);
    let expected = total * n as u64;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) if !common.server_pids.is_empty() => Some(b.saturating_sub(a)),
        _ => None,
    };
    let cpu_per = cpu.map(|c| c as f64 / total.max(1) as f64);
    let full_pct = full as f64 * 100.0 / n as f64;
    let delivered_pct = delivered as f64 * 100.0 / expected.max(1) as f64;
    println!(
        "jitter ({}): {n} clients, {total} broadcasts, {drops} drops; 100% delivery: {full_pct:.1}% of clients; delivered {delivered_pct:.2}%; missing {missing}; duplicates {duplicates} (deduped by offset {deduped}); recovery p50/p99 {:.1}/{:.1} ms; server CPU per broadcast {}",
        if o.no_history { "no history" } else { "history" },
        recovery.value_at_quantile(0.5) as f64 / 1e3,
        recovery.value_at_quantile(0.99) as f64 / 1e3,
        cpu_per.map(|c| format!("{c:.0} µs")).unwrap_or_else(|| "-".into()),
    );
    // With history every client must end with every message exactly once;
    // without, losses are the finding, not a failure.
    if !o.no_history && (full < n || duplicates > 0) {
        errors.insert(
            0,
            format!(
                "{} of {n} clients without every message exactly once ({missing} missing, {duplicates} duplicated)",
                n - full
            ),
        );
    }
    let ok = errors.is_empty();
    Ok(RunResult {
        mode: "jitter".into(),
        server: common.server.clone(),
        ok,
        params: serde_json::to_value(o)?,
        metrics: json!({
            "history": !o.no_history,
            "clients": n,
            "broadcasts": total,
            "publish_secs": published_in.as_secs_f64(),
            "drops": drops,
            "reconnects": reconnects,
            "restored": restored,
            "history_rejected": rejected,
            "clients_full_delivery": full,
            "clients_full_delivery_percent": full_pct,
            "delivered": delivered,
            "expected": expected,
            "delivered_percent": delivered_pct,
            "missing": missing,
            "duplicates": duplicates,
            "deduped_by_offset": deduped,
            "recovery": summary(&recovery),
            "broadcast_post": summary(&post),
            "server_cpu_us": cpu,
            "server_cpu_us_per_broadcast": cpu_per,
        }),
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_requests_are_anycables() {
        let pos = Some(("x1".to_owned(), 32));
        assert_eq!(
            history_request("chat_42", &pos, 7),
            json!({"streams": {"chat_42": {"epoch": "x1", "offset": 32}}})
        );
        assert_eq!(history_request("chat_42", &None, 7), json!({"since": 7}));
        assert_eq!(
            subscribe_command(r#"{"channel":"C"}"#, Some(json!({"since": 7}))),
            r#"{"command":"subscribe","identifier":"{\"channel\":\"C\"}","history":{"since":7}}"#
        );
    }

    #[test]
    fn a_resuming_client_appends_its_sid() {
        assert_eq!(
            url_for("ws://h/cable?user=u{i}", 3, Some("abc")),
            "ws://h/cable?user=u3&sid=abc"
        );
        assert_eq!(
            url_for("ws://h/cable", 3, Some("abc")),
            "ws://h/cable?sid=abc"
        );
        assert_eq!(url_for("ws://h/cable", 3, None), "ws://h/cable");
    }

    #[test]
    fn the_tally_counts_repeats() {
        let mut t = Tally::default();
        assert!(t.count(2));
        assert!(!t.count(2));
        assert_eq!(t.counts, vec![0, 0, 2]);
    }
}
