//! The attacking side's sockets: ChatChannel clients whose reader counts
//! what the server sends (confirmations, rejections, messages, pongs,
//! disconnect reasons, how the socket ended), raw TCP connections that send
//! half a request and stall, a fresh-client probe and a minimal HTTP POST
//! for the admin endpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use memchr::memmem;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, classify, Kind, Target, Ws};

/// `{"channel":"ChatChannel","room":ROOM}`.
pub fn chat_identifier(room: &str) -> String {
    json!({"channel": "ChatChannel", "room": room}).to_string()
}

pub fn subscribe_command(identifier: &str) -> String {
    json!({"command": "subscribe", "identifier": identifier}).to_string()
}

pub fn unsubscribe_command(identifier: &str) -> String {
    json!({"command": "unsubscribe", "identifier": identifier}).to_string()
}

/// A `message` command: `data` (an object with `action`) as a JSON string.
pub fn perform_command(identifier: &str, data: &Value) -> String {
    json!({"command": "message", "identifier": identifier, "data": data.to_string()}).to_string()
}

/// What one group of attacking sockets experienced, summed.
#[derive(Default)]
pub struct Observed {
    pub sockets: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Commands or frames the attackers sent.
    pub sent: AtomicU64,
    pub confirms: AtomicU64,
    pub rejects: AtomicU64,
    pub messages: AtomicU64,
    pub pings: AtomicU64,
    pub pongs: AtomicU64,
    pub bytes: AtomicU64,
    /// Sockets the server ended (close frame, EOF or reset) before teardown.
    pub ended_by_server: AtomicU64,
    /// Set when the harness starts closing the sockets itself.
    pub teardown: AtomicBool,
    disconnects: Mutex<BTreeMap<String, u64>>,
    endings: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<Vec<String>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().expect("observed lock").entry(key).or_default() += 1;
}

impl Observed {
    pub fn new() -> Arc<Self> {
        Arc::new(Observed::default())
    }

    pub fn error(&self, e: String) {
        let mut errs = self.errors.lock().expect("observed lock");
        if errs.len() < 20 {
            errs.push(e);
        }
    }

    pub fn summary(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "sockets": n(&self.sockets),
            "connect_failures": n(&self.connect_failures),
            "sent": n(&self.sent),
            "confirms": n(&self.confirms),
            "rejects": n(&self.rejects),
            "messages": n(&self.messages),
            "pings": n(&self.pings),
            "pongs": n(&self.pongs),
            "bytes_received": n(&self.bytes),
            "ended_by_server": n(&self.ended_by_server),
            "disconnect_reasons": *self.disconnects.lock().expect("observed lock"),
            "endings": *self.endings.lock().expect("observed lock"),
            "errors": *self.errors.lock().expect("observed lock"),
        })
    }
}

/// One socket's own view, for the cases that judge sockets one by one.
#[derive(Default)]
pub struct SockState {
    pub confirms: AtomicU64,
    pub rejects: AtomicU64,
    pub messages: AtomicU64,
    /// Bit k set: a message containing marker k arrived.
    pub marks: AtomicU64,
    pub closed: AtomicBool,
    pub too_slow: AtomicBool,
    /// How the socket ended (`close 1000`, `eof`, `error: …`).
    pub ending: Mutex<Option<String>>,
    pub disconnect: Mutex<Option<String>>,
    paused: AtomicBool,
    resume: Notify,
}

impl SockState {
    pub fn answers(&self) -> u64 {
        self.confirms.load(Ordering::Relaxed) + self.rejects.load(Ordering::Relaxed)
    }

    pub fn has_mark(&self, k: u32) -> bool {
        self.marks.load(Ordering::Relaxed) & (1 << k) != 0
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Stops reading the socket (the server's writes back up), or resumes.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.resume.notify_one();
        }
    }
}

/// An attacking WebSocket: the write half, and a task reading the other.
pub struct Sock {
    pub id: usize,
    pub sink: Option<SplitSink<Ws, Message>>,
    pub state: Arc<SockState>,
    reader: JoinHandle<()>,
}

/// Write buffering for attackers: frames are fed in batches and written on
/// flush, so a flood costs the generator one syscall per batch.
fn attack_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(16 << 20)
}

/// Opens client `i` up to the welcome and starts its reader. `markers` are
/// searched in the first 512 bytes of every message.
pub async fn connect(
    target: &Target,
    i: usize,
    rcvbuf: Option<u32>,
    obs: &Arc<Observed>,
    markers: Arc<Vec<Vec<u8>>>,
) -> Result<Sock> {
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client::handshake(target, i, rcvbuf, attack_config()),
    )
    .await
    .map_err(|_| anyhow!("no welcome within 10 s"))
    .and_then(|r| r);
    let ws = match res {
        Ok((ws, _)) => ws,
        Err(e) => {
            obs.connect_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e.context(format!("client {i}")));
        }
    };
    obs.sockets.fetch_add(1, Ordering::Relaxed);
    let (sink, stream) = ws.split();
    let state = Arc::new(SockState::default());
    let reader = tokio::spawn(read_loop(stream, obs.clone(), state.clone(), markers));
    Ok(Sock {
        id: i,
        sink: Some(sink),
        state,
        reader,
    })
}

/// Opens `ids.len()` sockets, `concurrency` at a time.
pub async fn connect_many(
    target: &Target,
    ids: Vec<usize>,
    concurrency: usize,
    obs: &Arc<Observed>,
    markers: Arc<Vec<Vec<u8>>>,
    rcvbuf: impl Fn(usize) -> Option<u32>,
) -> (Vec<Sock>, Vec<String>) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(ids.len());
    for i in ids {
        let (sem, target, obs, markers) =
            (sem.clone(), target.clone(), obs.clone(), markers.clone());
        let buf = rcvbuf(i);
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            connect(&target, i, buf, &obs, markers).await
        }));
    }
    let mut socks = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => socks.push(s),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(e) => failures.push(format!("connect task: {e}")),
        }
    }
    (socks, failures)
}

fn describe_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => format!("error: io {:?}", io.kind()),
        E::Protocol(p) => format!("error: protocol ({p})"),
        E::Capacity(c) => format!("error: capacity ({c})"),
        E::ConnectionClosed | E::AlreadyClosed => "eof".into(),
        other => format!("error: {other}"),
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    obs: Arc<Observed>,
    state: Arc<SockState>,
    markers: Arc<Vec<Vec<u8>>>,
) {
    let ending = loop {
        if state.paused.load(Ordering::SeqCst) {
            state.resume.notified().await;
            continue;
        }
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = state.resume.notified() => continue,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let b = t.as_bytes();
                obs.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                match classify(b) {
                    Kind::Ping => {
                        obs.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Confirm => {
                        obs.confirms.fetch_add(1, Ordering::Relaxed);
                        state.confirms.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Reject => {
                        obs.rejects.fetch_add(1, Ordering::Relaxed);
                        state.rejects.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Disconnect { too_slow } => {
                        let reason = serde_json::from_slice::<Value>(b)
                            .ok()
                            .and_then(|v| v["reason"].as_str().map(str::to_owned))
                            .unwrap_or_else(|| "?".into());
                        if too_slow {
                            state.too_slow.store(true, Ordering::SeqCst);
                        }
                        *state.disconnect.lock().expect("sock lock") = Some(reason.clone());
                        if !obs.teardown.load(Ordering::SeqCst) {
                            bump(&obs.disconnects, reason);
                        }
                    }
                    Kind::Welcome => {}
                    _ => {
                        obs.messages.fetch_add(1, Ordering::Relaxed);
                        state.messages.fetch_add(1, Ordering::Relaxed);
                        let head = &b[..b.len().min(512)];
                        for (k, m) in markers.iter().enumerate().take(64) {
                            if memmem::find(head, m).is_some() {
                                state.marks.fetch_or(1 << k, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            Some(Ok(Message::Pong(_))) => {
                obs.pongs.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(c))) => {
                break match c {
                    Some(f) => format!("close {}", u16::from(f.code)),
                    None => "close without code".into(),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break describe_error(&e),
            None => break "eof".into(),
        }
    };
    state.closed.store(true, Ordering::SeqCst);
    *state.ending.lock().expect("sock lock") = Some(ending.clone());
    if !obs.teardown.load(Ordering::SeqCst) {
        obs.ended_by_server.fetch_add(1, Ordering::Relaxed);
        bump(&obs.endings, ending);
    }
}

impl Sock {
    /// Sends one text frame now.
    pub async fn send(&mut self, text: String) -> Result<()> {
        let sink = self.sink.as_mut().ok_or_else(|| anyhow!("writer busy"))?;
        tokio::time::timeout(Duration::from_secs(5), sink.send(Message::text(text)))
            .await
            .map_err(|_| anyhow!("send blocked for 5 s"))??;
        Ok(())
    }

    /// Subscribes to `identifier` and waits for the answer (confirm or
    /// reject); false if none came within `wait`.
    pub async fn subscribe(&mut self, identifier: &str, wait: Duration) -> Result<bool> {
        let before = self.state.answers();
        self.send(subscribe_command(identifier)).await?;
        Ok(wait_until(wait, || {
            self.state.answers() > before || self.state.is_closed()
        })
        .await
            && !self.state.is_closed())
    }
}

/// Polls `done` every 10 ms until it holds or `wait` passes.
pub async fn wait_until(wait: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes the sockets (close frame, then the reader gets a second to see the
/// server's answer) without counting what follows as the server's doing.
pub async fn close_all(socks: Vec<Sock>, obs: &Observed) {
    obs.teardown.store(true, Ordering::SeqCst);
    let mut tasks = Vec::with_capacity(socks.len());
    for mut s in socks {
        s.state.pause(false);
        tasks.push(tokio::spawn(async move {
            if let Some(mut sink) = s.sink.take() {
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    sink.send(Message::Close(None)),
                )
                .await;
            }
            let state = s.state.clone();
            wait_until(Duration::from_secs(1), || state.is_closed()).await;
            s.reader.abort();
        }));
    }
    let all = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
}

/// Sends frames from `next(n)` as fast as the socket takes them, in batches
/// of 32 per flush, until `deadline` or `max` frames. Returns the sink (None
/// when it failed) and how many frames went out.
pub async fn flood(
    mut sink: SplitSink<Ws, Message>,
    deadline: Instant,
    max: u64,
    obs: Arc<Observed>,
    mut next: impl FnMut(u64) -> Message,
) -> (Option<SplitSink<Ws, Message>>, u64) {
    let mut n = 0u64;
    let res = tokio::time::timeout_at((deadline + Duration::from_secs(2)).into(), async {
        while n < max && Instant::now() < deadline {
            for _ in 0..32 {
                sink.feed(next(n)).await?;
                n += 1;
                obs.sent.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
            }
            sink.flush().await?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    })
    .await;
    match res {
        Ok(Ok(())) => (Some(sink), n),
        Ok(Err(e)) => {
            if !obs.teardown.load(Ordering::SeqCst) {
                obs.error(format!("flood write: {}", describe_error(&e)));
            }
            (None, n)
        }
        Err(_) => {
            obs.error("flood write blocked past the deadline (the server stopped reading)".into());
            (Some(sink), n)
        }
    }
}

// ------------------------------------------------------------ half-sent

/// Raw TCP connections holding a partial HTTP request open.
pub struct HalfOpen {
    pub opened: usize,
    pub failures: Vec<String>,
    pub closed_by_server: Arc<AtomicU64>,
    /// What the server answered before closing, by status line start.
    pub answers: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Milliseconds from the partial write to the server's close.
    pub close_ms: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The partial requests, in turn: headers without their blank line, half a
/// request line, and full headers with half the announced body.
pub fn partial_request(kind: usize, hostport: &str, user: &str) -> String {
    match kind % 3 {
        0 => format!(
            "GET /cable?user={user} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ),
        1 => "GE".to_owned(),
        _ => format!(
            "POST /admin/broadcast HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{\"stream\":\"half\","
        ),
    }
}

impl HalfOpen {
    /// Opens `n` connections (ids from `first`), each writing a partial
    /// request and then reading until the server closes.
    pub async fn open(target: &Target, first: usize, n: usize) -> Result<HalfOpen> {
        if n > 10_000 {
            bail!("{n} half-sent requests: keep it under 10,000 (open-files limit)");
        }
        let (_, hostport) = target.addr()?;
        let closed_by_server = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let close_ms = Arc::new(Mutex::new(Vec::new()));
        let sem = Arc::new(Semaphore::new(64));
        let mut tasks = Vec::with_capacity(n);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
        for k in 0..n {
            let i = first + k;
            let (target, sem, tx) = (target.clone(), sem.clone(), tx.clone());
            let (closed, answers, close_ms) =
                (closed_by_server.clone(), answers.clone(), close_ms.clone());
            let req = partial_request(k, &hostport, &format!("half{i}"));
            tasks.push(tokio::spawn(async move {
                let permit = sem.acquire_owned().await;
                let opened = async {
                    let mut tcp = client::tcp_connect(&target, i, None).await?;
                    tcp.write_all(req.as_bytes()).await?;
                    Ok::<_, anyhow::Error>(tcp)
                };
                let mut tcp = match tokio::time::timeout(Duration::from_secs(10), opened).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = tx.send(Err(anyhow!("connect timed out")));
                        return;
                    }
                };
                drop(permit);
                let _ = tx.send(Ok(()));
                drop(tx);
                let sent_at = Instant::now();
                let mut buf = [0u8; 256];
                let mut head = Vec::new();
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            if head.len() < 12 {
                                head.extend_from_slice(&buf[..k.min(12 - head.len())]);
                            }
                        }
                    }
                }
                closed.fetch_add(1, Ordering::Relaxed);
                close_ms
                    .lock()
                    .expect("half lock")
                    .push(sent_at.elapsed().as_millis() as u64);
                let key = if head.is_empty() {
                    "closed without an answer".to_owned()
                } else {
                    String::from_utf8_lossy(&head).into_owned()
                };
                bump(&answers, key);
            }));
        }
        drop(tx);
        let mut opened = 0;
        let mut failures = Vec::new();
        for _ in 0..n {
            let Some(r) = rx.recv().await else { break };
            match r {
                Ok(()) => opened += 1,
                Err(e) => {
                    if failures.len() < 10 {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
        }
        Ok(HalfOpen {
            opened,
            failures,
            closed_by_server,
            answers,
            close_ms,
            tasks,
        })
    }

    pub fn closed(&self) -> u64 {
        self.closed_by_server.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> Value {
        let mut ms = self.close_ms.lock().expect("half lock").clone();
        ms.sort_unstable();
        json!({
            "opened": self.opened,
            "connect_failures": self.failures,
            "closed_by_server": self.closed(),
            "server_answers": *self.answers.lock().expect("half lock"),
            "first_close_ms": ms.first(),
            "last_close_ms": ms.last(),
        })
    }

    /// Drops every connection.
    pub fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

// ------------------------------------------------------------ probes

/// A new client's experience: connect, subscribe, echo.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fresh {
    pub ok: bool,
    pub ms: f64,
    pub error: Option<String>,
}

/// Connects client `i`, subscribes to ChatChannel room `fresh`, performs
/// `echo` and waits for it to come back; all within `wait`.
pub async fn fresh_client(target: &Target, i: usize, wait: Duration) -> Fresh {
    let started = Instant::now();
    let probe = async {
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (mut ws, _) = client::handshake(target, i, None, config).await?;
        let id = chat_identifier("fresh");
        ws.send(Message::text(subscribe_command(&id))).await?;
        let marker = format!("\"fresh\":{i}");
        let mut confirmed = false;
        while let Some(m) = ws.next().await {
            let Message::Text(t) = m? else { continue };
            match classify(t.as_bytes()) {
                Kind::Confirm if !confirmed => {
                    confirmed = true;
                    let data = json!({"action": "echo", "fresh": i});
                    ws.send(Message::text(perform_command(&id, &data))).await?;
                }
                Kind::Reject => bail!("subscription rejected"),
                Kind::Disconnect { .. } => bail!("disconnected: {}", t.as_str()),
                _ if confirmed && t.as_str().contains(&marker) => {
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                _ => {}
            }
        }
        bail!("connection ended before the echo")
    };
    let res = tokio::time::timeout(wait, probe).await;
    let error = match res {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(_) => Some(format!("no echo within {wait:?}")),
    };
    Fresh {
        ok: error.is_none(),
        ms: crate::modes::ms(started.elapsed()),
        error,
    }
}

/// `POST path` with a JSON body over a new connection; (status, body).
pub async fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {:?}", &text[..text.len().min(80)]))?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| anyhow!("POST {path}: no answer within 15 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_actioncable_json() {
        let id = chat_identifier("a");
        assert_eq!(id, r#"{"channel":"ChatChannel","room":"a"}"#);
        assert_eq!(
            subscribe_command(&id),
            r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\",\"room\":\"a\"}"}"#
        );
        assert_eq!(
            perform_command(&id, &json!({"action": "echo", "seq": 1})),
            r#"{"command":"message","identifier":"{\"channel\":\"ChatChannel\",\"room\":\"a\"}","data":"{\"action\":\"echo\",\"seq\":1}"}"#
        );
    }

    #[test]
    fn partial_requests_never_end_their_headers() {
        for k in 0..3 {
            let r = partial_request(k, "127.0.0.1:1", "u");
            if k % 3 == 2 {
                // Headers complete, body short of its Content-Length.
                let body = r.split("\r\n\r\n").nth(1).unwrap();
                assert!(body.len() < 1000);
            } else {
                assert!(!r.contains("\r\n\r\n"), "{r:?}");
            }
        }
    }
}
