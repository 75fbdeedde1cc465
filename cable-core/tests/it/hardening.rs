//! What no client, adapter or channel code may do to the server: panics,
//! slow callbacks, floods, oversized messages, piled-up timers.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cable_core::pubsub::{Ack, Delivery, MemoryPubSub, PubSub};
use cable_core::transport::{Inbound, Outgoing};
use cable_core::{
    async_trait, authenticate_with, Cable, CableConfig, CommandRate, ConnectRequest, Identifiers,
    PubSubError, Unauthorized,
};
use cable_test::channels::Faulty;
use cable_test::{frames, Connection, Request, Subscription, TestCable};
use serde_json::{json, Value};

use super::open;

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

/// A cable of `config` with `Faulty` as `Bad`, a connect hook that panics
/// for `?user=panic` and hangs for `?user=sleep`, and the counting adapter;
/// the probe into both.
fn bad_cable(config: CableConfig) -> (TestCable, Probe) {
    let probe = Probe::default();
    let p = probe.clone();
    let p2 = probe.clone();
    let cable = Cable::builder()
        .channel("Bad", move || {
            Faulty::recording_timers(p.timer_calls.clone())
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
        .build();
    (TestCable::from_cable(cable), probe)
}

/// User `user`'s connection with a confirmed `{"channel":"Bad","in":in}`.
async fn subscribed(cable: &TestCable, user: &str, panic_in: &str) -> (Connection, Subscription) {
    let c = open(cable, user).await;
    let s = c.subscribe("Bad", json!({"in": panic_in})).await;
    s.assert_confirmed();
    (c, s)
}

/// A `bad_cable` of the default config, and user `a`'s connection with a
/// confirmed `{"channel":"Bad","in":in}`.
async fn bad_subscription(panic_in: &str) -> (TestCable, Probe, Connection, Subscription) {
    let (cable, probe) = bad_cable(CableConfig::default());
    let (c, s) = subscribed(&cable, "a", panic_in).await;
    (cable, probe, c, s)
}

/// The subscription still answers.
async fn echo_ok(s: &Subscription, n: u64) {
    s.perform("echo", json!({"n": n})).await;
    s.assert_transmitted(json!({"action": "echo", "n": n}));
}

/// Disconnects `c`; then everything connections held is given back.
async fn hang_up(c: &Connection, cable: &TestCable, probe: &Probe) {
    c.disconnect().await;
    assert_released(cable, probe).await;
}

/// Everything a connection held is given back.
async fn assert_released(cable: &TestCable, probe: &Probe) {
    let what = || {
        format!(
            "everything released: {:?}, adapter subscriptions {}",
            cable.cable().stats(),
            probe.subscribed.load(Ordering::SeqCst)
        )
    };
    cable_test::eventually(&what(), || async {
        let s = cable.cable().stats();
        s.connections == 0
            && s.subscriptions == 0
            && s.streams == 0
            && probe.subscribed.load(Ordering::SeqCst) == 0
    })
    .await;
}

#[tokio::test]
async fn a_panic_in_subscribed_rejects_and_leaks_nothing() {
    let (cable, probe, c, good) = bad_subscription("none").await;
    c.subscribe("Bad", json!({"in": "subscribed"}))
        .await
        .assert_rejected();
    let stats = cable.cable().stats();
    assert_eq!(stats.callback_panics, 1);
    // Only the good subscription's streams and the internal channel remain.
    assert_eq!(stats.subscriptions, 1);
    assert_eq!(stats.streams, 3);
    assert_eq!(probe.subscribed.load(Ordering::SeqCst), 3);
    echo_ok(&good, 1).await;
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_perform_or_timer_keeps_the_subscription() {
    let (cable, probe, c, s) = bad_subscription("timer").await;
    s.perform("panic", Value::Null).await;
    echo_ok(&s, 2).await;
    // Let the timer panic a few times; the subscription goes on.
    tokio::time::sleep(Duration::from_millis(150)).await;
    echo_ok(&s, 3).await;
    let panics = cable.cable().stats().callback_panics;
    assert!(
        panics >= 3,
        "perform + at least two timer panics, got {panics}"
    );
    assert!(probe.timer_calls.lock().unwrap().len() >= 2);
    assert_eq!(cable.cable().stats().subscriptions, 1);
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_unsubscribed_still_cleans_up() {
    let (cable, probe, c, s) = bad_subscription("unsubscribed").await;
    s.unsubscribe().await;
    s.assert_no_streams();
    c.subscribe("Bad", json!({"in": "none"}))
        .await
        .assert_confirmed();
    assert_eq!(cable.cable().stats().callback_panics, 1);
    assert_eq!(cable.cable().stats().subscriptions, 1);
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn a_panic_in_unsubscribed_on_hang_up_cleans_up() {
    let (cable, probe, c, _s) = bad_subscription("unsubscribed").await;
    hang_up(&c, &cable, &probe).await;
    assert_eq!(cable.cable().stats().callback_panics, 1);
}

#[tokio::test]
async fn a_panicking_or_hanging_connect_hook_is_unauthorized() {
    let mut config = CableConfig::default();
    config.connect_timeout = Duration::from_millis(200);
    let (cable, probe) = bad_cable(config);
    for user in ["panic", "sleep"] {
        let rejected = cable
            .connect(Request::new().query("user", user))
            .await
            .unwrap_err();
        assert_eq!(rejected.frames, [frames::disconnect("unauthorized", false)]);
        assert_eq!(rejected.close_code, Some(1000));
    }
    let s = cable.cable().stats();
    assert_eq!(s.callback_panics, 1);
    assert_eq!(s.callback_timeouts, 1);
    assert_eq!(s.unauthorized, 2);
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn a_hanging_callback_times_out_and_the_connection_goes_on() {
    let mut config = CableConfig::default();
    config.callback_timeout = Duration::from_millis(200);
    let (cable, probe) = bad_cable(config);
    let (c, s) = subscribed(&cable, "a", "none").await;
    s.perform("sleep", Value::Null).await;
    echo_ok(&s, 4).await;
    assert_eq!(cable.cable().stats().callback_timeouts, 1);
    c.subscribe("Bad", json!({"in": "sleep_subscribed"}))
        .await
        .assert_rejected();
    assert_eq!(cable.cable().stats().callback_timeouts, 2);
    hang_up(&c, &cable, &probe).await;
}

/// Sends action `sleep` (which never returns) without waiting for it.
fn start_sleeping(c: &Connection, s: &Subscription) {
    c.send(json!({
        "command": "message",
        "identifier": s.identifier(),
        "data": json!({"action": "sleep"}).to_string(),
    }));
}

#[tokio::test]
async fn a_client_that_leaves_during_a_callback_is_noticed_at_once() {
    let (cable, probe, c, s) = bad_subscription("none").await;
    start_sleeping(&c, &s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The callback timeout is 30 s: disconnect waits at most 5 s.
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn shutdown_and_remote_disconnects_are_not_held_up_by_a_callback() {
    let (cable, probe, a, sa) = bad_subscription("none").await;
    let (b, sb) = subscribed(&cable, "b", "none").await;
    start_sleeping(&a, &sa);
    start_sleeping(&b, &sb);
    tokio::time::sleep(Duration::from_millis(50)).await;
    cable.remote_disconnect_user("a", false).await;
    a.ended().await;
    assert_eq!(
        a.frames().last(),
        Some(&frames::disconnect("remote", false))
    );
    cable_core::transport::begin_shutdown(cable.cable());
    b.ended().await;
    assert_eq!(
        b.frames().last(),
        Some(&frames::disconnect("server_restart", true))
    );
    assert_eq!(
        cable_core::transport::drain(cable.cable(), Duration::from_secs(5)).await,
        0
    );
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn subscriptions_are_capped_by_default() {
    let (cable, probe) = bad_cable(CableConfig::default());
    let cap = CableConfig::default()
        .max_subscriptions_per_connection
        .expect("a default cap");
    assert!(
        (100..=1000).contains(&cap),
        "hundreds, not unlimited: {cap}"
    );
    let c = open(&cable, "a").await;
    for n in 0..cap {
        c.subscribe("Bad", json!({"n": n})).await.assert_confirmed();
    }
    c.subscribe("Bad", json!({"n": cap}))
        .await
        .assert_rejected();
    assert_eq!(cable.cable().stats().subscriptions, cap as u64);
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn an_oversized_identifier_is_rejected() {
    let (cable, _) = bad_cable(CableConfig::default());
    let max = CableConfig::default().max_identifier_bytes;
    assert!((1024..=16 * 1024).contains(&max), "a few KiB: {max}");
    let c = open(&cable, "a").await;
    c.subscribe("Bad", json!({"pad": "p".repeat(max)}))
        .await
        .assert_rejected();
    assert_eq!(cable.cable().stats().subscriptions, 0);
    c.subscribe("Bad", json!({"in": "none"}))
        .await
        .assert_confirmed();
    c.disconnect().await;
}

#[tokio::test]
async fn a_command_flood_is_disconnected_and_counted() {
    let mut config = CableConfig::default();
    config.command_rate = Some(CommandRate {
        burst: 20,
        per_second: 10,
    });
    let (cable, _) = bad_cable(config);
    let quiet = open(&cable, "quiet").await;
    let c = open(&cable, "a").await;
    // Pings count too.
    for _ in 0..10 {
        c.send_inbound(Inbound::Control);
    }
    for _ in 0..30 {
        c.send(json!({"command": "nonsense"}));
    }
    assert_eq!(
        c.next_text().await,
        frames::disconnect("rate_limited", true)
    );
    assert!(matches!(
        c.next_frame().await,
        Outgoing::Close { code: 1000, .. }
    ));
    assert_eq!(cable.cable().stats().rate_limited_disconnects, 1);
    // Within the rate nothing happens.
    let s = quiet.subscribe("Bad", json!({"in": "none"})).await;
    s.assert_confirmed();
    for n in 0..15 {
        echo_ok(&s, n).await;
        tokio::time::sleep(Duration::from_millis(110)).await;
    }
    assert_eq!(cable.cable().stats().rate_limited_disconnects, 1);
    quiet.disconnect().await;
}

#[tokio::test]
async fn messages_too_big_for_a_client_are_refused_and_nobody_is_dropped() {
    let (cable, probe) = bad_cable(CableConfig::default());
    let limit = CableConfig::default().max_outbound_message_bytes;
    assert!(limit <= CableConfig::default().outbound_queue_bytes);
    let mut room = Vec::new();
    for i in 0..5 {
        room.push(subscribed(&cable, &format!("u{i}"), "none").await);
    }
    let big = json!({"pad": "x".repeat(1536 * 1024)});
    match cable.cable().broadcast("faulty_all", &big).await {
        Err(PubSubError::MessageTooLarge { size, limit: l }) => {
            assert!(size > 1536 * 1024);
            assert_eq!(l, limit);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // The same from an adapter (a Rails app publishing to Redis, say):
    // dropped, counted, nobody disconnected.
    let delivery = probe.delivery.lock().unwrap().clone().unwrap();
    delivery.deliver("faulty_all", &big.to_string());
    assert_eq!(cable.cable().stats().oversized_dropped, 1);
    // Escaping can grow a payload past the limit: measured after re-encoding.
    delivery.deliver(
        "faulty_all",
        &json!({"pad": "<".repeat(limit / 3)}).to_string(),
    );
    assert_eq!(cable.cable().stats().oversized_dropped, 2);
    cable
        .cable()
        .broadcast("faulty_all", &json!({"n": 1}))
        .await
        .unwrap();
    for (c, s) in &room {
        assert!(!c.is_closed());
        assert_eq!(s.transmissions(), [json!({"n": 1})]);
    }
    // A transmit over the limit is an error for the channel, not a drop.
    let (_, first) = &room[0];
    first.perform("big", json!({"n": limit + 1})).await;
    echo_ok(first, 5).await;
    assert_eq!(first.transmissions().len(), 2);
    for (c, _) in room {
        c.disconnect().await;
    }
    assert_released(&cable, &probe).await;
}

#[tokio::test]
async fn timer_ticks_do_not_pile_up_while_a_subscription_is_busy() {
    let (cable, probe, c, s) = bad_subscription("slow_timer").await;
    // 20 ms ticks while the subscription is busy for 600 ms: ~30 ticks fire.
    s.perform("busy", json!({"ms": 600})).await;
    let busy_done = Instant::now();
    s.assert_transmitted(json!({"busy": "done"}));
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
    hang_up(&c, &cable, &probe).await;
}

#[tokio::test]
async fn one_heartbeat_per_cable_and_it_ends_with_the_cable() {
    let (cable, probe) = bad_cable(CableConfig::default());
    let cable_ref = cable.cable();
    cable_core::transport::start_heartbeat(cable_ref, Duration::from_millis(100));
    cable_core::transport::start_heartbeat(cable_ref, Duration::from_millis(100));
    cable_core::transport::start_heartbeat(&cable_ref.clone(), Duration::from_millis(10));
    let c = open(&cable, "a").await;
    tokio::time::sleep(Duration::from_millis(550)).await;
    let pings = c.frames().iter().filter(|f| frames::is_ping(f)).count();
    assert!(
        (4..=6).contains(&pings),
        "one 100 ms heartbeat: {pings} pings"
    );
    c.disconnect().await;
    drop(c);
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
            let (cable, _) = bad_cable(CableConfig::default());
            let c = open(&cable, "a").await;
            let forged = format!(
                "{}\n2026-12-01T00:00:00Z ERROR admin logged in{}",
                "{oops",
                "z".repeat(50_000)
            );
            for _ in 0..200 {
                c.send_inbound(Inbound::Text(forged.clone()));
            }
            c.subscribe("Bad", json!({"in": "none"}))
                .await
                .assert_confirmed();
            c.disconnect().await;
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
