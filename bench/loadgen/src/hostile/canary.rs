//! The canary: one ChatChannel client that performs `echo` every 50 ms with
//! a sequence number and checks that every echo comes back, in order, once.
//!
//! It runs on a thread of its own with its own single-threaded runtime, so
//! the attackers' tasks on the generator's runtime do not delay its sends or
//! reads: its round trips measure the server. Results are kept per window
//! (the harness opens one per case); an echo counts in the window it was
//! sent in. Echoes not back within the grace period count as lost; so do
//! those outstanding when the canary's connection drops (it then reconnects
//! and goes on, counting the disconnect).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::sock::{chat_identifier, perform_command, subscribe_command};
use crate::client::{self, classify, histogram, Kind, Target};

/// One window's figures.
#[derive(Clone, Debug, Serialize)]
pub struct CanaryReport {
    pub sent: u64,
    pub echoed: u64,
    /// Not back within the grace period, skipped by a later echo, or
    /// outstanding when the connection dropped.
    pub lost: u64,
    /// An echo that came back twice, or after a later one.
    pub duplicated: u64,
    /// Came back after it had been counted lost (also in `lost`).
    pub late: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub worst_ms: f64,
    /// When the echo with the worst round trip was sent, in ms since the
    /// window opened (the case's start).
    pub worst_sent_at_ms: f64,
    /// Times the canary's connection ended and it reconnected.
    pub disconnects: u64,
    pub notes: Vec<String>,
}

struct Window {
    sent: u64,
    echoed: u64,
    lost: u64,
    duplicated: u64,
    late: u64,
    rtt: Histogram<u64>,
    worst: Duration,
    worst_sent_at: Duration,
    started: Instant,
    disconnects: u64,
    notes: Vec<String>,
}

impl Window {
    fn new() -> Self {
        Window {
            sent: 0,
            echoed: 0,
            lost: 0,
            duplicated: 0,
            late: 0,
            rtt: histogram(),
            worst: Duration::ZERO,
            worst_sent_at: Duration::ZERO,
            started: Instant::now(),
            disconnects: 0,
            notes: Vec::new(),
        }
    }

    fn note(&mut self, n: String) {
        if self.notes.len() < 5 {
            self.notes.push(n);
        }
    }
}

struct Pending {
    seq: u64,
    sent: Instant,
    window: usize,
}

struct State {
    current: usize,
    windows: Vec<Window>,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Highest sequence number that came back.
    highest: Option<u64>,
}

impl State {
    fn window(&mut self, w: usize) -> &mut Window {
        while self.windows.len() <= w {
            self.windows.push(Window::new());
        }
        &mut self.windows[w]
    }

    fn lose_pending_older_than(&mut self, grace: Duration) {
        while let Some(p) = self.pending.front() {
            if p.sent.elapsed() < grace {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let w = self.window(p.window);
            w.lost += 1;
            w.note(format!("echo {} not back within {grace:?}", p.seq));
        }
    }

    fn lose_all_pending(&mut self, why: &str) {
        while let Some(p) = self.pending.pop_front() {
            let w = self.window(p.window);
            w.lost += 1;
            w.note(format!("echo {} lost: {why}", p.seq));
        }
    }

    fn echoed(&mut self, seq: u64, at: Instant) {
        if self.highest.is_some_and(|h| seq <= h) {
            let current = self.current;
            let w = self.window(current);
            w.duplicated += 1;
            w.note(format!("echo {seq} again or out of order"));
            return;
        }
        self.highest = Some(seq);
        // Echoes come back in order: anything before `seq` is not coming.
        while let Some(p) = self.pending.front() {
            if p.seq >= seq {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let w = self.window(p.window);
            w.lost += 1;
            w.note(format!("echo {} skipped (echo {seq} came first)", p.seq));
        }
        match self.pending.front() {
            Some(p) if p.seq == seq => {
                let p = self.pending.pop_front().expect("front exists");
                let rtt = at.saturating_duration_since(p.sent);
                let w = self.window(p.window);
                w.echoed += 1;
                w.rtt.saturating_record((rtt.as_micros() as u64).max(1));
                if rtt > w.worst {
                    w.worst = rtt;
                    w.worst_sent_at = p.sent.saturating_duration_since(w.started);
                }
            }
            _ => {
                // Already counted lost after the grace period.
                let current = self.current;
                self.window(current).late += 1;
            }
        }
    }
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

/// A running canary.
pub struct Canary {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
}

impl Canary {
    /// Starts the canary as client `id` and waits until it is subscribed.
    pub fn start(target: &Target, id: usize, interval: Duration, grace: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                current: 0,
                windows: vec![Window::new()],
                pending: VecDeque::new(),
                next_seq: 1,
                highest: None,
            }),
            stop: AtomicBool::new(false),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("canary".into()).spawn({
            let (shared, target) = (shared.clone(), target.clone());
            move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("canary runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(run(target, id, interval, grace, shared, ready_tx));
            }
        })?;
        let mut canary = Canary {
            shared,
            thread: Some(thread),
            grace,
        };
        match ready_rx.recv_timeout(Duration::from_secs(15)) {
            Ok(Ok(())) => Ok(canary),
            Ok(Err(e)) => {
                canary.stop();
                Err(e.context("canary could not subscribe"))
            }
            Err(_) => {
                canary.stop();
                bail!("canary not subscribed within 15 s")
            }
        }
    }

    /// Opens window `w`: echoes sent from now on count there.
    pub fn begin_window(&self, w: usize) {
        let mut s = self.shared.state.lock().expect("canary lock");
        s.window(w).started = Instant::now();
        s.current = w;
    }

    /// Waits until no echo sent in window `w` or before is outstanding (at
    /// most the grace period and a second).
    pub async fn settle(&self, w: usize) {
        let deadline = Instant::now() + self.grace + Duration::from_secs(1);
        while Instant::now() < deadline {
            let outstanding = {
                let s = self.shared.state.lock().expect("canary lock");
                s.pending.iter().any(|p| p.window <= w)
            };
            if !outstanding {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn report(&self, w: usize) -> CanaryReport {
        let mut s = self.shared.state.lock().expect("canary lock");
        let win = s.window(w);
        let us = |v: u64| v as f64 / 1e3;
        CanaryReport {
            sent: win.sent,
            echoed: win.echoed,
            lost: win.lost,
            duplicated: win.duplicated,
            late: win.late,
            p50_ms: us(win.rtt.value_at_quantile(0.5)),
            p99_ms: us(win.rtt.value_at_quantile(0.99)),
            worst_ms: us(win.rtt.max()),
            worst_sent_at_ms: crate::modes::ms(win.worst_sent_at),
            disconnects: win.disconnects,
            notes: win.notes.clone(),
        }
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run(
    target: Target,
    id: usize,
    interval: Duration,
    grace: Duration,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let identifier = chat_identifier(&format!("canary-{id}"));
    let mut ready = Some(ready);
    while !shared.stop.load(Ordering::SeqCst) {
        let opened = tokio::time::timeout(Duration::from_secs(5), open(&target, id, &identifier))
            .await
            .map_err(|_| anyhow!("no confirm_subscription within 5 s"))
            .and_then(|r| r);
        let ws = match opened {
            Ok(ws) => ws,
            Err(e) => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(e));
                    return;
                }
                {
                    let mut s = shared.state.lock().expect("canary lock");
                    let current = s.current;
                    s.window(current).note(format!("reconnect failed: {e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(()));
        }
        let why = session(ws, &identifier, interval, grace, &shared).await;
        let mut s = shared.state.lock().expect("canary lock");
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        s.lose_all_pending(&why);
        let current = s.current;
        let w = s.window(current);
        w.disconnects += 1;
        w.note(format!("canary connection ended: {why}"));
    }
}

async fn open(target: &Target, id: usize, identifier: &str) -> Result<client::Ws> {
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) = client::handshake(target, id, None, config).await?;
    ws.send(Message::text(subscribe_command(identifier)))
        .await?;
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        match classify(t.as_bytes()) {
            Kind::Confirm => return Ok(ws),
            Kind::Reject => bail!("canary subscription rejected"),
            Kind::Disconnect { .. } => bail!("disconnected: {}", t.as_str()),
            _ => {}
        }
    }
    bail!("connection ended before confirm_subscription")
}

/// Echoes until the connection ends or the canary is stopped; returns why
/// it ended.
async fn session(
    ws: client::Ws,
    identifier: &str,
    interval: Duration,
    grace: Duration,
    shared: &Shared,
) -> String {
    let (mut sink, mut stream) = ws.split();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            let _ =
                tokio::time::timeout(Duration::from_millis(500), sink.send(Message::Close(None)))
                    .await;
            return "stopped".into();
        }
        tokio::select! {
            _ = tick.tick() => {
                let frame = {
                    let mut s = shared.state.lock().expect("canary lock");
                    s.lose_pending_older_than(grace);
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    let window = s.current;
                    s.window(window).sent += 1;
                    s.pending.push_back(Pending { seq, sent: Instant::now(), window });
                    perform_command(identifier, &json!({"action": "echo", "seq": seq}))
                };
                match tokio::time::timeout(grace, sink.send(Message::text(frame))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("send failed: {e}"),
                    Err(_) => return format!("send blocked for {grace:?}"),
                }
            }
            m = stream.next() => {
                let at = Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => match classify(t.as_bytes()) {
                        Kind::Ping | Kind::Confirm | Kind::Welcome => {}
                        Kind::Disconnect { .. } => {
                            let mut s = shared.state.lock().expect("canary lock");
                            let current = s.current;
                            s.window(current).note(format!("canary got {}", t.as_str()));
                        }
                        _ => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                            let mut s = shared.state.lock().expect("canary lock");
                            if v["identifier"].as_str() != Some(identifier) {
                                let current = s.current;
                                s.window(current).note(format!("unexpected frame: {:.200}", t.as_str()));
                            } else if let Some(seq) = v["message"]["seq"].as_u64() {
                                s.echoed(seq, at);
                            }
                        }
                    },
                    Some(Ok(Message::Close(c))) => return format!("closed by the server: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return format!("read failed: {e}"),
                    None => return "connection ended".into(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            current: 0,
            windows: vec![Window::new()],
            pending: VecDeque::new(),
            next_seq: 1,
            highest: None,
        }
    }

    fn send(s: &mut State, window: usize) -> u64 {
        let seq = s.next_seq;
        s.next_seq += 1;
        s.window(window).sent += 1;
        s.pending.push_back(Pending {
            seq,
            sent: Instant::now(),
            window,
        });
        seq
    }

    #[test]
    fn in_order_echoes_count_once_in_their_window() {
        let mut s = state();
        let a = send(&mut s, 0);
        s.current = 1;
        let b = send(&mut s, 1);
        s.echoed(a, Instant::now());
        s.echoed(b, Instant::now());
        assert_eq!((s.windows[0].echoed, s.windows[1].echoed), (1, 1));
        assert_eq!(s.windows[1].lost + s.windows[1].duplicated, 0);
    }

    #[test]
    fn skipped_duplicated_and_late_echoes() {
        let mut s = state();
        let a = send(&mut s, 0);
        let b = send(&mut s, 0);
        s.echoed(b, Instant::now());
        assert_eq!(s.windows[0].lost, 1, "a was skipped");
        s.echoed(b, Instant::now());
        assert_eq!(s.windows[0].duplicated, 1);
        s.echoed(a, Instant::now());
        assert_eq!(s.windows[0].duplicated, 2, "a after b is out of order");
        let c = send(&mut s, 0);
        s.lose_pending_older_than(Duration::ZERO);
        assert_eq!(s.windows[0].lost, 2);
        s.echoed(c, Instant::now());
        assert_eq!(s.windows[0].late, 1);
        assert_eq!(s.windows[0].echoed, 1);
    }
}
