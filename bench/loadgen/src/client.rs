//! One benchmark client: a WebSocket speaking `actioncable-v1-json` to the
//! websocket-shootout `BenchmarkChannel`, driven by its own task.
//!
//! Frames are classified by cheap byte searches, not parsed: thousands of
//! clients share two cores with the server under test, and a client that
//! spends its time in a JSON parser measures itself, not the server.

use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use memchr::memmem;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The subscription every client makes, as websocket-shootout's client does.
pub const IDENTIFIER: &str = r#"{"channel":"BenchmarkChannel"}"#;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Microseconds since this process's benchmark epoch; payload `sendTime`s
/// carry it, so latencies are measured on one monotonic clock.
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Where clients connect and from which source addresses.
#[derive(Clone, Debug)]
pub struct Target {
    /// `ws://host:port/path?query`; `{i}` is replaced by the client's number.
    pub url: String,
    /// Source addresses, used round-robin (127.0.0.2-127.0.0.9 by default) so
    /// that each gets its own ephemeral port range.
    pub sources: Vec<IpAddr>,
}

impl Target {
    pub fn new(url: impl Into<String>) -> Self {
        Target {
            url: url.into(),
            sources: (2..=9)
                .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
                .collect(),
        }
    }

    /// The server's address and its `host:port` as written in the URL.
    pub fn addr(&self) -> Result<(SocketAddr, String)> {
        let rest = self
            .url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("only ws:// URLs are supported: {}", self.url))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{hostport:?} is not an IP:port"))?;
        Ok((addr, hostport.to_owned()))
    }
}

/// `{"command":"subscribe","identifier":"{\"channel\":\"BenchmarkChannel\"}"}`
pub fn subscribe_frame() -> String {
    serde_json::json!({"command": "subscribe", "identifier": IDENTIFIER}).to_string()
}

/// A `message` command performing `action` with websocket-shootout's payload.
pub fn perform_frame(action: &str, send_time_us: u64, padding: &str) -> String {
    let mut payload = serde_json::Map::new();
    payload.insert("sendTime".into(), send_time_us.to_string().into());
    if !padding.is_empty() {
        payload.insert("padding".into(), padding.into());
    }
    let data = serde_json::json!({"action": action, "payload": payload}).to_string();
    serde_json::json!({"command": "message", "identifier": IDENTIFIER, "data": data}).to_string()
}

/// websocket-shootout's padding: `1234567890` repeated, cut to `len`.
pub fn padding(len: usize) -> String {
    "1234567890".repeat(len / 10 + 1)[..len].to_owned()
}

/// What one frame from the server is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    Ping,
    Confirm,
    Reject,
    Disconnect {
        too_slow: bool,
    },
    /// A BenchmarkChannel `broadcast` message, with its `sendTime`.
    Broadcast(Option<u64>),
    /// A `broadcastResult` (or `echo`) for this client, with its `sendTime`.
    Result(Option<u64>),
    Other,
}

pub fn classify(frame: &[u8]) -> Kind {
    if frame.starts_with(br#"{"type":"#) {
        let rest = &frame[8..];
        return if rest.starts_with(br#""ping""#) {
            Kind::Ping
        } else if rest.starts_with(br#""welcome""#) {
            Kind::Welcome
        } else if rest.starts_with(br#""confirm_subscription""#) {
            Kind::Confirm
        } else if rest.starts_with(br#""reject_subscription""#) {
            Kind::Reject
        } else if rest.starts_with(br#""disconnect""#) {
            Kind::Disconnect {
                too_slow: memmem::find(frame, b"too_slow").is_some(),
            }
        } else {
            Kind::Other
        };
    }
    if frame.ends_with(br#""type":"confirm_subscription"}"#) {
        return Kind::Confirm;
    }
    if frame.ends_with(br#""type":"reject_subscription"}"#) {
        return Kind::Reject;
    }
    // Every frame of a fan-out comes through here: one scan finds the
    // action, and the byte after `broadcast` tells a result from a
    // broadcast (the finders are built once).
    static ACTION: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(br#""action":"broadcast"#));
    static ECHO: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(br#""action":"echo""#));
    if let Some(at) = ACTION.find(frame) {
        let rest = &frame[at + ACTION.needle().len()..];
        if rest.starts_with(b"\"") {
            return Kind::Broadcast(send_time(rest));
        }
        if rest.starts_with(br#"Result""#) {
            return Kind::Result(send_time(rest));
        }
    }
    if ECHO.find(frame).is_some() {
        return Kind::Result(send_time(frame));
    }
    Kind::Other
}

fn send_time(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""sendTime":""#;
    static SEND_TIME: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(KEY));
    let start = SEND_TIME.find(frame)? + KEY.len();
    let digits = &frame[start..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

pub type Ws = WebSocketStream<TcpStream>;

/// Timings of one connection's start.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub welcome: Duration,
    pub confirm: Duration,
}

/// Opens client `i`: TCP from its source address, the WebSocket handshake
/// with the `actioncable-v1-json` subprotocol, the welcome, then the
/// BenchmarkChannel subscription and its confirmation.
pub async fn open(target: &Target, i: usize, rcvbuf: Option<u32>) -> Result<(Ws, Opened)> {
    let started = Instant::now();
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    let (mut ws, welcome) = handshake(target, i, rcvbuf, config).await?;
    ws.send(Message::text(subscribe_frame())).await?;
    let confirm = loop {
        match next_kind(&mut ws).await? {
            Kind::Confirm => break started.elapsed(),
            Kind::Ping => {}
            Kind::Reject => bail!("subscription rejected"),
            k => bail!("expected confirm_subscription, got {k:?}"),
        }
    };
    Ok((ws, Opened { welcome, confirm }))
}

/// A TCP connection for client `i` to the target's host and port, from the
/// client's source address (and with a receive buffer of `rcvbuf` bytes).
pub async fn tcp_connect(target: &Target, i: usize, rcvbuf: Option<u32>) -> Result<TcpStream> {
    let (addr, _) = target.addr()?;
    let socket = TcpSocket::new_v4()?;
    if !target.sources.is_empty() {
        let src = target.sources[i % target.sources.len()];
        socket
            .bind(SocketAddr::new(src, 0))
            .with_context(|| format!("bind {src}"))?;
    }
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n)?;
    }
    let tcp = socket
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Client `i`'s connection up to the welcome: TCP ([`tcp_connect`]), the
/// WebSocket handshake offering `actioncable-v1-json` with a same-origin
/// `Origin`, then the `welcome` (pings before it are skipped). Returns the
/// socket and the time to the welcome.
pub async fn handshake(
    target: &Target,
    i: usize,
    rcvbuf: Option<u32>,
    config: WebSocketConfig,
) -> Result<(Ws, Duration)> {
    let started = Instant::now();
    let (_, hostport) = target.addr()?;
    let tcp = tcp_connect(target, i, rcvbuf).await?;
    let url = target.url.replace("{i}", &i.to_string());
    let mut req = url.as_str().into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("actioncable-v1-json"),
    );
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://{hostport}"))?,
    );
    let (mut ws, _resp) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config))
        .await
        .context("WebSocket handshake")?;
    loop {
        match next_kind(&mut ws).await? {
            Kind::Welcome => break,
            Kind::Ping => {}
            Kind::Disconnect { .. } => bail!("disconnected before the welcome"),
            k => bail!("expected a welcome, got {k:?}"),
        }
    }
    Ok((ws, started.elapsed()))
}

async fn next_kind(ws: &mut Ws) -> Result<Kind> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(classify(t.as_bytes())),
            Some(Ok(Message::Close(c))) => bail!("closed by the server: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection closed"),
        }
    }
}

/// Latency histogram in microseconds (1 µs to 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// What every client of a run shares.
pub struct Shared {
    /// RTTs of `broadcastResult`s, to the ladder's coordinator.
    pub rtt_tx: mpsc::UnboundedSender<Duration>,
    /// Deliveries of broadcasts sent at or after this `now_us()` count in
    /// `latency`; earlier ones are a previous step's.
    pub window_start_us: AtomicU64,
    /// The window's latencies, one histogram per runtime thread (see
    /// [`Shared::record_delivery`]); their counts are the deliveries.
    pub latency: Vec<Mutex<Histogram<u64>>>,
    pub closed: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Duration>) {
        let (rtt_tx, rtt_rx) = mpsc::unbounded_channel();
        let shards = 8;
        (
            Arc::new(Shared {
                rtt_tx,
                window_start_us: AtomicU64::new(u64::MAX),
                latency: (0..shards).map(|_| Mutex::new(histogram())).collect(),
                closed: AtomicU64::new(0),
                errors: Mutex::new(Vec::new()),
            }),
            rtt_rx,
        )
    }

    /// Starts a measurement window: clears the histograms, so the count.
    pub fn start_window(&self) -> u64 {
        let now = now_us();
        for h in &self.latency {
            h.lock().expect("histogram lock").reset();
        }
        self.window_start_us.store(now, Ordering::SeqCst);
        now
    }

    /// A broadcast sent at `sent` (`now_us()`) arrived: its latency counts
    /// if it belongs to the window. Each runtime thread records into a
    /// histogram of its own, so at a million deliveries a second the two
    /// cores neither wait for each other's lock nor pass a shared counter's
    /// cache line back and forth.
    pub fn record_delivery(&self, sent: u64) {
        if sent >= self.window_start_us.load(Ordering::Relaxed) {
            let lat = now_us().saturating_sub(sent).max(1);
            if let Ok(mut h) = self.latency[thread_shard() % self.latency.len()].lock() {
                h.saturating_record(lat);
            }
        }
    }

    /// Deliveries counted in the window so far.
    pub fn delivered(&self) -> u64 {
        self.latency
            .iter()
            .map(|h| h.lock().map_or(0, |h| h.len()))
            .sum()
    }

    /// The window's latencies merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.latency {
            all.add(&*h.lock().expect("histogram lock"))
                .expect("same bounds");
        }
        all
    }

    pub fn error_count(&self) -> usize {
        self.errors.lock().expect("errors lock").len()
    }

    pub(crate) fn error(&self, e: String) {
        let mut errs = self.errors.lock().expect("errors lock");
        if errs.len() < 1000 {
            errs.push(e);
        }
    }
}

/// This thread's histogram shard: threads take shards in turn as they
/// first record.
fn thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|s| {
        s.get().unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(Some(n));
            n
        })
    })
}

/// Per-client state the coordinator reads.
#[derive(Default)]
pub struct State {
    pub broadcasts: AtomicU64,
    pub results: AtomicU64,
    pub pings: AtomicU64,
    pub closed: AtomicBool,
    pub too_slow: AtomicBool,
    paused: AtomicBool,
    resume: Notify,
}

/// A running client.
pub struct Client {
    pub id: usize,
    pub state: Arc<State>,
    tx: mpsc::UnboundedSender<Message>,
}

impl Client {
    pub(crate) fn new(id: usize, state: Arc<State>, tx: mpsc::UnboundedSender<Message>) -> Self {
        Client { id, state, tx }
    }

    /// Sends a `broadcast` action stamped now; false if the client is gone.
    pub fn broadcast(&self, padding: &str) -> bool {
        self.send(perform_frame("broadcast", now_us(), padding))
    }

    pub fn send(&self, text: String) -> bool {
        self.tx.send(Message::text(text)).is_ok()
    }

    /// Stops reading the socket (the server's writes back up), or resumes.
    pub fn pause(&self, paused: bool) {
        self.state.paused.store(paused, Ordering::SeqCst);
        if !paused {
            self.state.resume.notify_one();
        }
    }

    pub fn close(&self) {
        let _ = self.tx.send(Message::Close(None));
    }
}

/// Runs an opened connection in its own task.
pub fn spawn(id: usize, ws: Ws, shared: Arc<Shared>) -> Client {
    let state = Arc::new(State::default());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(id, ws, shared, state.clone(), rx));
    Client { id, state, tx }
}

async fn run(
    id: usize,
    mut ws: Ws,
    shared: Arc<Shared>,
    state: Arc<State>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut closing = false;
    loop {
        if state.paused.load(Ordering::SeqCst) {
            // A resume that came while this client was not waiting left a
            // permit: the loop then only comes round once more.
            state.resume.notified().await;
            continue;
        }
        // `biased`: no per-turn random order. What the client is told to
        // send comes first: a publisher that reads a frame every turn
        // would otherwise keep its broadcasts waiting.
        tokio::select! {
            biased;
            out = rx.recv(), if !closing => match out {
                Some(m) => {
                    closing = matches!(m, Message::Close(_));
                    if let Err(e) = ws.send(m).await {
                        if !closing {
                            shared.error(format!("client {id}: send: {e}"));
                        }
                        break;
                    }
                }
                None => closing = true,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match classify(t.as_bytes()) {
                    Kind::Broadcast(Some(sent)) => {
                        state.broadcasts.fetch_add(1, Ordering::Relaxed);
                        shared.record_delivery(sent);
                    }
                    Kind::Result(Some(sent)) => {
                        state.results.fetch_add(1, Ordering::Relaxed);
                        let _ = shared
                            .rtt_tx
                            .send(Duration::from_micros(now_us().saturating_sub(sent)));
                    }
                    Kind::Disconnect { too_slow } => {
                        if too_slow {
                            state.too_slow.store(true, Ordering::SeqCst);
                        }
                    }
                    Kind::Ping => {
                        state.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Confirm | Kind::Welcome => {}
                    k => shared.error(format!("client {id}: unexpected frame {k:?}: {t}")),
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    if !closing {
                        shared.error(format!("client {id}: {e}"));
                    }
                    break;
                }
            },
        }
    }
    state.closed.store(true, Ordering::SeqCst);
    shared.closed.fetch_add(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rails_frames() {
        assert_eq!(classify(br#"{"type":"ping","message":1}"#), Kind::Ping);
        assert_eq!(classify(br#"{"type":"welcome"}"#), Kind::Welcome);
        assert_eq!(
            classify(br#"{"identifier":"{\"channel\":\"BenchmarkChannel\"}","type":"confirm_subscription"}"#),
            Kind::Confirm
        );
        assert_eq!(
            classify(br#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#),
            Kind::Disconnect { too_slow: true }
        );
        let b = br#"{"identifier":"{\"channel\":\"BenchmarkChannel\"}","message":{"action":"broadcast","payload":{"sendTime":"123","padding":"12"}}}"#;
        assert_eq!(classify(b), Kind::Broadcast(Some(123)));
        let r = br#"{"identifier":"{\"channel\":\"BenchmarkChannel\"}","message":{"action":"broadcastResult","payload":{"sendTime":"9"}}}"#;
        assert_eq!(classify(r), Kind::Result(Some(9)));
        let e = br#"{"identifier":"{\"channel\":\"BenchmarkChannel\"}","message":{"action":"echo","payload":{"sendTime":"4"}}}"#;
        assert_eq!(classify(e), Kind::Result(Some(4)));
        // A broadcast whose padding happens to hold the word is still one.
        let p = br#"{"identifier":"{\"channel\":\"BenchmarkChannel\"}","message":{"action":"broadcast","payload":{"sendTime":"8","padding":"broadcastResult"}}}"#;
        assert_eq!(classify(p), Kind::Broadcast(Some(8)));
        assert_eq!(
            classify(br#"{"identifier":"x","message":{"action":"other"}}"#),
            Kind::Other
        );
    }

    #[test]
    fn perform_frame_is_websocket_shootouts() {
        assert_eq!(
            perform_frame("broadcast", 5, "12"),
            r#"{"command":"message","identifier":"{\"channel\":\"BenchmarkChannel\"}","data":"{\"action\":\"broadcast\",\"payload\":{\"sendTime\":\"5\",\"padding\":\"12\"}}"}"#
        );
        assert_eq!(padding(12), "123456789012");
    }
}
