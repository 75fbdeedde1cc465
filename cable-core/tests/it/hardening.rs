//! What no client, adapter or channel code may do to the server: panics,
//! slow callbacks, floods, oversized messages, piled-up timers.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cable_core::pubsub::{Ack, Delivery, MemoryPubSub, PubSub};
use cable_core::transport::{Inbound, Outgoing};
use cable_core::{
    async_trait, authenticate_with, Cable, CableConfig, Channel, ChannelError, CommandRate,
    ConnectRequest, Context, Identifiers, PubSubError, Unauthorized,
};
use serde_json::{json, Value};

use super::{sub, Conn};

/// The in-memory adapter, counting the streams it is subscribed to, handing
/// out its delivery handle, and noting when it is dropped.
struct Counting {
    inner: MemoryPubSub,
    subscribed: Arc<AtomicI64>,
    dropped: Arc<AtomicBool>,
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl PubSub for Counting {
    async fn broadcast(&self, stream: &str, payload: &str) -> Result<(), PubSubError> {
        self.inner.broadcast(stream, payload).await
    }
    fn subscribe(&self, stream: &str) -> Ack {
        self.subscribed.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribe(stream)
    }
    fn unsubscribe(&self, stream: &str) -> Ack {
        self.subscribed.fetch_sub(1, Ordering::SeqCst);
        self.inner.unsubscribe(stream)
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

#[derive(Default, Clone)]
struct Probe {
    subscribed: Arc<AtomicI64>,
    dropped: Arc<AtomicBool>,
    delivery: Arc<Mutex<Option<Delivery>>>,
    timer_calls: Arc<Mutex<Vec<Instant>>>,
}

/// A channel that misbehaves on request: `{"channel":"Bad","in":"subscribed"}`
/// panics in `subscribed`, action `panic` panics, action `sleep` never
/// returns, `in: timer` panics in its timer, `in: unsubscribed` there.
struct Bad {
    probe: Probe,
    panic_in: String,
}

#[async_trait]
impl Channel for Bad {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        self.panic_in = ctx.param_str("in").unwrap_or("").to_owned();
        ctx.stream_from(format!("bad_{}", self.panic_in));
        ctx.stream_from("bad_all");
        match self.panic_in.as_str() {
            "subscribed" => panic!("boom in subscribed"),
            "sleep_subscribed" => std::future::pending::<()>().await,
            "timer" => ctx.periodically("t", Duration::from_millis(30))?,
            "slow_timer" => ctx.periodically("t", Duration::from_millis(20))?,
            _ => {}
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, _ctx: &mut Context<'_>) {
        if self.panic_in == "unsubscribed" {
            panic!("boom in unsubscribed");
        }
    }

    async fn perform(
        &mut self,
        ctx: &mut Context<'_>,
        action: &str,
        data: Value,
    ) -> Result<(), ChannelError> {
        match action {
            "panic" => panic!("boom in perform"),
            "sleep" => {
                std::future::pending::<()>().await;
                Ok(())
            }
            "busy" => {
                tokio::time::sleep(Duration::from_millis(data["ms"].as_u64().unwrap_or(0))).await;
                ctx.transmit(&json!({"busy": "done"}))
            }
            "big" => {
                ctx.transmit(&json!({"pad": "x".repeat(data["n"].as_u64().unwrap_or(0) as usize)}))
            }
            "echo" => ctx.transmit(&data),
            _ => Err(ChannelError::UnknownAction(action.into())),
        }
    }

    async fn timer(&mut self, _ctx: &mut Context<'_>, _name: &str) -> Result<(), ChannelError> {
        self.probe.timer_calls.lock().unwrap().push(Instant::now());
        if self.panic_in == "timer" {
            panic!("boom in timer");
        }
        Ok(())
    }
}

fn bad_cable(probe: &Probe, config: CableConfig) -> Cable {
    let p = probe.clone();
    let p2 = probe.clone();
    Cable::builder()
        .channel("Bad", move || Bad {
            probe: p.clone(),
            panic_in: String::new(),
        })
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            match req.query("user") {
                Some("panic") => panic!("boom in connect"),
                Some("sleep") => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Some(u) => Ok(Identifiers::new().with("current_user", u)),
                None => Err(Unauthorized::because("anonymous")),
            }
        }))
        .pubsub(move |d: Delivery| {
            *p2.delivery.lock().unwrap() = Some(d.clone());
            Counting {
                inner: MemoryPubSub::new(d),
                subscribed: p2.subscribed.clone(),
                dropped: p2.dropped.clone(),
            }
        })
        .config(config)
        .build()
}

fn id(panic_in: &str) -> String {
    json!({"channel": "Bad", "in": panic_in}).to_string()
}

fn msg(identifier: &str, data: Value) -> Value {
    json!({"command": "message", "identifier": identifier, "data": data.to_string()})
}

fn confirm(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        serde_json::to_string(identifier).unwrap()
    )
}

fn reject(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        serde_json::to_string(identifier).unwrap()
    )
}

async fn echo_ok(c: &mut Conn, identifier: &str, n: u64) {
    c.send(msg(identifier, json!({"action": "echo", "n": n})));
    let want = format!(
        r#"{{"identifier":{},"message":{{"action":"echo","n":{n}}}}}"#,
        serde_json::to_string(identifier).unwrap()
    );
    assert_eq!(c.text().await, want);
}

/// Everything a connection held is given back.
async fn assert_released(cable: &Cable, probe: &Probe) {
    for _ in 0..100 {
        let s = cable.stats();
        if s.connections == 0
            && s.subscriptions == 0
            && s.streams == 0
            && probe.subscribed.load(Ordering::SeqCst) == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "not released: {:?}, adapter subscriptions {}",
        cable.stats(),
        probe.subscribed.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_panic_in_subscribed_rejects_and_leaks_nothing() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let good = id("none");
    c.send(sub(&good));
    assert_eq!(c.text().await, confirm(&good));
    let bad = id("subscribed");
    c.send(sub(&bad));
    assert_eq!(c.text().await, reject(&bad));
    assert_eq!(cable.stats().callback_panics, 1);
    // Only the good subscription's streams and the internal channel remain.
    assert_eq!(cable.stats().subscriptions, 1);
    assert_eq!(cable.stats().streams, 3);
    assert_eq!(probe.subscribed.load(Ordering::SeqCst), 3);
    echo_ok(&mut c, &good, 1).await;
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_perform_or_timer_keeps_the_subscription() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("timer");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.send(msg(&s, json!({"action": "panic"})));
    echo_ok(&mut c, &s, 2).await;
    // Let the timer panic a few times; the subscription goes on.
    tokio::time::sleep(Duration::from_millis(150)).await;
    echo_ok(&mut c, &s, 3).await;
    let panics = cable.stats().callback_panics;
    assert!(
        panics >= 3,
        "perform + at least two timer panics, got {panics}"
    );
    assert!(probe.timer_calls.lock().unwrap().len() >= 2);
    assert_eq!(cable.stats().subscriptions, 1);
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_unsubscribed_still_cleans_up() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("unsubscribed");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.send(json!({"command": "unsubscribe", "identifier": s}));
    let other = id("none");
    c.send(sub(&other));
    assert_eq!(c.text().await, confirm(&other));
    assert_eq!(cable.stats().callback_panics, 1);
    assert_eq!(cable.stats().subscriptions, 1);
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_unsubscribed_on_hang_up_cleans_up() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("unsubscribed");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.hang_up().await;
    assert_eq!(cable.stats().callback_panics, 1);
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_panicking_or_hanging_connect_hook_is_unauthorized() {
    let probe = Probe::default();
    let mut config = CableConfig::default();
    config.connect_timeout = Duration::from_millis(200);
    let cable = bad_cable(&probe, config);
    for user in ["panic", "sleep"] {
        let mut c = Conn::open(&cable, &format!("user={user}"));
        assert_eq!(
            c.text().await,
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert!(matches!(c.next().await, Outgoing::Close { code: 1000, .. }));
        c.hang_up().await;
    }
    let s = cable.stats();
    assert_eq!(s.callback_panics, 1);
    assert_eq!(s.callback_timeouts, 1);
    assert_eq!(s.unauthorized, 2);
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_hanging_callback_times_out_and_the_connection_goes_on() {
    let probe = Probe::default();
    let mut config = CableConfig::default();
    config.callback_timeout = Duration::from_millis(200);
    let cable = bad_cable(&probe, config);
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("none");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.send(msg(&s, json!({"action": "sleep"})));
    echo_ok(&mut c, &s, 4).await;
    assert_eq!(cable.stats().callback_timeouts, 1);
    let hanging = id("sleep_subscribed");
    c.send(sub(&hanging));
    assert_eq!(c.text().await, reject(&hanging));
    assert_eq!(cable.stats().callback_timeouts, 2);
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_client_that_leaves_during_a_callback_is_noticed_at_once() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("none");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.send(msg(&s, json!({"action": "sleep"})));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The callback timeout is 30 s: hang_up waits at most 5 s.
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn shutdown_and_remote_disconnects_are_not_held_up_by_a_callback() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let s = id("none");
    let mut a = Conn::open(&cable, "user=a");
    let mut b = Conn::open(&cable, "user=b");
    for c in [&mut a, &mut b] {
        c.text().await;
        c.send(sub(&s));
        assert_eq!(c.text().await, confirm(&s));
        c.send(msg(&s, json!({"action": "sleep"})));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    cable
        .remote_disconnect(&Identifiers::new().with("current_user", "a"), false)
        .await
        .unwrap();
    assert_eq!(
        a.text().await,
        r#"{"type":"disconnect","reason":"remote","reconnect":false}"#
    );
    assert!(matches!(a.next().await, Outgoing::Close { .. }));
    cable_core::transport::begin_shutdown(&cable);
    assert_eq!(
        b.text().await,
        r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#
    );
    assert!(matches!(b.next().await, Outgoing::Close { .. }));
    assert_eq!(
        cable_core::transport::drain(&cable, Duration::from_secs(5)).await,
        0
    );
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn subscriptions_are_capped_by_default() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let cap = CableConfig::default()
        .max_subscriptions_per_connection
        .expect("a default cap");
    assert!(
        (100..=1000).contains(&cap),
        "hundreds, not unlimited: {cap}"
    );
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    for n in 0..cap {
        let s = json!({"channel": "Bad", "n": n}).to_string();
        c.send(sub(&s));
        assert_eq!(c.text().await, confirm(&s));
    }
    let over = json!({"channel": "Bad", "n": cap}).to_string();
    c.send(sub(&over));
    assert_eq!(c.text().await, reject(&over));
    assert_eq!(cable.stats().subscriptions, cap as u64);
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn an_oversized_identifier_is_rejected() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let max = CableConfig::default().max_identifier_bytes;
    assert!((1024..=16 * 1024).contains(&max), "a few KiB: {max}");
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let big = json!({"channel": "Bad", "pad": "p".repeat(max)}).to_string();
    c.send(sub(&big));
    assert_eq!(c.text().await, reject(&big));
    assert_eq!(cable.stats().subscriptions, 0);
    let s = id("none");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    c.hang_up().await;
}

#[tokio::test]
async fn a_command_flood_is_disconnected_and_counted() {
    let probe = Probe::default();
    let mut config = CableConfig::default();
    config.command_rate = Some(CommandRate {
        burst: 20,
        per_second: 10,
    });
    let cable = bad_cable(&probe, config);
    let mut quiet = Conn::open(&cable, "user=quiet");
    quiet.text().await;
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    // Pings count too.
    for _ in 0..10 {
        c.send_inbound(Inbound::Control);
    }
    for _ in 0..30 {
        c.send(json!({"command": "nonsense"}));
    }
    assert_eq!(
        c.text().await,
        r#"{"type":"disconnect","reason":"rate_limited","reconnect":true}"#
    );
    assert!(matches!(c.next().await, Outgoing::Close { code: 1000, .. }));
    assert_eq!(cable.stats().rate_limited_disconnects, 1);
    // Within the rate nothing happens.
    let s = id("none");
    quiet.send(sub(&s));
    assert_eq!(quiet.text().await, confirm(&s));
    for n in 0..15 {
        echo_ok(&mut quiet, &s, n).await;
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    assert_eq!(cable.stats().rate_limited_disconnects, 1);
    quiet.hang_up().await;
}

#[tokio::test]
async fn messages_too_big_for_a_client_are_refused_and_nobody_is_dropped() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let limit = CableConfig::default().max_outbound_message_bytes;
    assert!(limit <= CableConfig::default().outbound_queue_bytes);
    let s = id("none");
    let mut room = Vec::new();
    for i in 0..5 {
        let mut c = Conn::open(&cable, &format!("user=u{i}"));
        c.text().await;
        c.send(sub(&s));
        assert_eq!(c.text().await, confirm(&s));
        room.push(c);
    }
    let big = json!({"pad": "x".repeat(1536 * 1024)});
    match cable.broadcast("bad_all", &big).await {
        Err(PubSubError::MessageTooLarge { size, limit: l }) => {
            assert!(size > 1536 * 1024);
            assert_eq!(l, limit);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The same from an adapter (a Rails app publishing to Redis, say):
    // dropped, counted, nobody disconnected.
    let delivery = probe.delivery.lock().unwrap().clone().unwrap();
    delivery.deliver("bad_all", &big.to_string());
    assert_eq!(cable.stats().oversized_dropped, 1);
    // Escaping can grow a payload past the limit: measured after re-encoding.
    delivery.deliver(
        "bad_all",
        &json!({"pad": "<".repeat(limit / 3)}).to_string(),
    );
    assert_eq!(cable.stats().oversized_dropped, 2);
    cable.broadcast("bad_all", &json!({"n": 1})).await.unwrap();
    for c in &mut room {
        assert!(c.text().await.ends_with(r#""message":{"n":1}}"#));
    }
    // A transmit over the limit is an error for the channel, not a drop.
    let first = &mut room[0];
    first.send(msg(&s, json!({"action": "big", "n": limit + 1})));
    echo_ok(first, &s, 5).await;
    for c in room {
        c.hang_up().await;
    }
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn timer_ticks_do_not_pile_up_while_a_subscription_is_busy() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    let s = id("slow_timer");
    c.send(sub(&s));
    assert_eq!(c.text().await, confirm(&s));
    // 20 ms ticks while the subscription is busy for 600 ms: ~30 ticks fire.
    c.send(msg(&s, json!({"action": "busy", "ms": 600})));
    let busy_done = loop {
        let t = c.text().await;
        if t.contains("busy") {
            break Instant::now();
        }
    };
    tokio::time::sleep(Duration::from_millis(15)).await;
    let calls = probe.timer_calls.lock().unwrap().clone();
    let burst = calls
        .iter()
        .filter(|t| **t + Duration::from_millis(5) >= busy_done)
        .count();
    assert!(
        burst <= 2,
        "{burst} timer calls right after the busy action: ticks piled up"
    );
    c.hang_up().await;
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn one_heartbeat_per_cable_and_it_ends_with_the_cable() {
    let probe = Probe::default();
    let cable = bad_cable(&probe, CableConfig::default());
    cable_core::transport::start_heartbeat(&cable, Duration::from_millis(100));
    cable_core::transport::start_heartbeat(&cable, Duration::from_millis(100));
    cable_core::transport::start_heartbeat(&cable.clone(), Duration::from_millis(10));
    let mut c = Conn::open(&cable, "user=a");
    c.text().await;
    tokio::time::sleep(Duration::from_millis(550)).await;
    let mut pings = 0;
    while let Ok(true) =
        tokio::time::timeout(Duration::from_millis(5), c.outbox.pop_batch(&mut c.buf, 64)).await
    {
        pings += c
            .buf
            .drain(..)
            .filter(
                |o| matches!(o, Outgoing::Text(f) if f.as_str().starts_with(r#"{"type":"ping""#)),
            )
            .count();
    }
    assert!(
        (4..=6).contains(&pings),
        "one 100 ms heartbeat: {pings} pings"
    );
    c.hang_up().await;
    assert!(!probe.dropped.load(Ordering::SeqCst));
    drop(cable);
    // The heartbeat task holds no Cable: the adapter goes with the last one.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        probe.dropped.load(Ordering::SeqCst),
        "the adapter outlived its Cable"
    );
}

/// A log line a client can provoke is short, escaped and rate-limited.
#[test]
fn client_payloads_in_logs_are_cut_escaped_and_rate_limited() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let probe = Probe::default();
            let cable = bad_cable(&probe, CableConfig::default());
            let mut c = Conn::open(&cable, "user=a");
            c.text().await;
            let forged = format!(
                "{}\n2026-12-01T00:00:00Z ERROR admin logged in{}",
                "{oops",
                "z".repeat(50_000)
            );
            for _ in 0..200 {
                c.send_inbound(Inbound::Text(forged.clone()));
            }
            let s = id("none");
            c.send(sub(&s));
            assert_eq!(c.text().await, confirm(&s));
            c.hang_up().await;
        })
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        !out.lines()
            .any(|l| l.starts_with("2026-12-01T00:00:00Z ERROR admin")),
        "a client forged a log line"
    );
    let longest = out.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
    let errors = out
        .lines()
        .filter(|l| l.contains("JSON::ParserError"))
        .count();
    assert!(
        (1..=25).contains(&errors),
        "{errors} error lines for 200 bad frames"
    );
}
