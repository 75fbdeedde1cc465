//! The pub/sub conformance suite: the adapter contract of
//! `cable_core::pubsub::PubSub`, as code, run by every adapter against its
//! real server.
//!
//! An adapter's test implements [`Conformance`] (make an adapter for a node,
//! count backend subscriptions, break connections, name its payload limit)
//! and expands [`conformance_tests!`](crate::conformance_tests), which
//! makes one `#[tokio::test]` per property; a property added here runs for
//! every adapter. Nodes are real servers ([`cable_test::TestServer`]) with
//! real WebSocket clients; each test uses a channel prefix of its own, so
//! tests run in parallel against one server. Without a reachable server
//! [`Conformance::setup`] prints `SKIPPED: …` (see [`skip`]) and the test
//! passes, unless `CI` is set.
//!
//! ```ignore
//! struct Redis { /* a plain connection for probes */ }
//! #[async_trait]
//! impl Conformance for Redis { /* ... */ }
//! cable_adapter_kit::conformance_tests!(Redis);
//! ```

use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cable_core::pubsub::{Delivery, PubSub};
use cable_core::transport::{Inbound, Outbox, Outgoing};
use cable_core::{
    authenticate_with, Cable, CableBuilder, CableConfig, Channel, ChannelError, ConnectRequest,
    Context, Identifiers, PubSubError, Unauthorized,
};
pub use cable_test::{eventually, frames, TestServer};
use serde_json::json;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use crate::own::{own_node, starts_before_its_own_server, OwnServer, Probe};
use crate::ACK_TIMEOUT;

/// What an adapter's test supplies to the suite.
#[async_trait]
pub trait Conformance: Sized + Send + Sync + 'static {
    /// The adapter under test.
    type Adapter: PubSub;
    /// What the probes need to know of one node (its status handle, its
    /// connection names).
    type Node: Send + Sync + 'static;

    /// Connects to the real server for probes, or None after [`skip`].
    async fn setup() -> Option<Self>;
    /// An adapter for node `node` on channel prefix `prefix` (nodes sharing
    /// a prefix hear each other), delivering through `delivery`.
    fn adapter(&self, prefix: &str, node: &str, delivery: Delivery) -> (Self::Adapter, Self::Node);
    /// An adapter pointed at a backend that is not there (a closed port).
    fn unreachable(&self, prefix: &str, delivery: Delivery) -> Self::Adapter;
    /// How many backend subscriptions carry `stream` of `prefix`, over
    /// `nodes`, which are every node of the test on `prefix` (Redis: `PUBSUB NUMSUB`; PostgreSQL: each listener's
    /// `pg_listening_channels()`).
    async fn backend_subscriptions(
        &self,
        nodes: &[&Self::Node],
        prefix: &str,
        stream: &str,
    ) -> usize;
    /// Kills the node's backend connections from the server side, as a
    /// backend restart does.
    async fn break_connections(&self, node: &Self::Node);
    /// The largest payload the backend takes, if it has a limit.
    fn payload_limit(&self) -> Option<usize>;
}

/// Expands to one `#[tokio::test]` per property of the suite, for `$impl`
/// (a [`Conformance`] type).
#[macro_export]
macro_rules! conformance_tests {
    ($impl:ty) => {
        $crate::suite_tests!(conformance, $impl;
            ack_before_confirmation,
            one_backend_subscription_per_stream,
            ordering_from_one_publisher,
            remote_disconnect_across_nodes,
            delivery_resumes_after_connections_are_killed,
            publish_errors_while_unreachable,
            payload_limit,
        );
    };
}

/// One `#[tokio::test]` per `$property`, each running
/// `$crate::$module::$property::<$impl>()`: the expansion behind
/// [`conformance_tests!`](crate::conformance_tests) and
/// [`broker_conformance_tests!`](crate::broker_conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! suite_tests {
    ($module:ident, $impl:ty; $($property:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $property() {
                $crate::$module::$property::<$impl>().await;
            }
        )*
    };
}

/// Whether a test may go on: true when `reachable`; otherwise prints
/// `SKIPPED: …` and returns false, or panics when `CI` is set.
pub fn skip(what: &str, url: &str, reachable: bool) -> bool {
    if !reachable {
        skip_because(&format!("{what} not reachable at {url}"));
    }
    reachable
}

/// Prints `SKIPPED: <why>`, or panics with `why` when `CI` is set (where a
/// missing service or tool is a failure).
pub fn skip_because(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why} (CI is set, so this is a failure)"
    );
    println!("SKIPPED: {why}");
}

/// The shared server at `url`, probed with `connect` (a plain connection
/// for raw commands, None when unreachable): the url and that connection,
/// or None after [`skip`] (`what` names the server and how to set it).
pub async fn shared_server<T>(
    what: &str,
    url: String,
    connect: impl AsyncFnOnce(&str) -> Option<T>,
) -> Option<(String, T)> {
    let conn = connect(&url).await;
    skip(what, &url, conn.is_some());
    conn.map(|c| (url, c))
}

/// A node `make` builds on a prefix of its own, once its adapter is
/// connected: the prefix, the cable and what `make` returned with it (the
/// adapter's status handle).
pub async fn connected_node<S>(make: impl FnOnce(&str) -> (Cable, S)) -> (String, Cable, S) {
    let prefix = unique_prefix();
    let (cable, status) = make(&prefix);
    until_healthy(&cable, true).await;
    (prefix, cable, status)
}

/// A channel prefix no other test (or test run) uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("cable_it_{:016x}", h.finish())
}

/// `ChatChannel`: streams from `chat_<room>` (room defaults to "lobby").
#[derive(Default, Debug)]
pub struct ChatChannel;

#[async_trait]
impl Channel for ChatChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
        ctx.stream_from(format!("chat_{room}"));
        Ok(())
    }
}

/// A cable on `adapter`, `ChatChannel` mounted, users identified by
/// `?user=` (`current_user`).
pub fn chat_builder<P: PubSub>(
    config: CableConfig,
    adapter: impl FnOnce(Delivery) -> P,
) -> CableBuilder {
    Cable::builder()
        .config(config)
        .channel("ChatChannel", ChatChannel::default)
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .try_pubsub(|d| Ok::<_, Infallible>(adapter(d)))
        .unwrap_or_else(|never| match never {})
}

/// A node of an adapter's own tests: a [`chat_builder`] cable on the adapter
/// `make` builds, and what `status` reads off that adapter (its status
/// handle) before the cable takes it.
///
/// Logs go to the test's output with `RUST_LOG` set (and `--nocapture`),
/// e.g. `RUST_LOG=cable_redis=debug,cable_adapter_kit=debug`.
pub fn chat_node<P: PubSub, S>(
    make: impl FnOnce(Delivery) -> P,
    status: impl FnOnce(&P) -> S,
) -> (Cable, S) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut seen = None;
    let cable = chat_builder(CableConfig::default(), |d| {
        let adapter = make(d);
        seen = Some(status(&adapter));
        adapter
    })
    .build();
    let Some(seen) = seen else {
        unreachable!("the adapter factory runs in try_pubsub")
    };
    (cable, seen)
}

/// Waits until an adapter's subscriber `status` says connected.
pub async fn until_connected(status: &crate::Status) {
    eventually("the subscriber connected", || {
        let s = status.clone();
        async move { s.is_connected() }
    })
    .await;
}

/// A real server on `adapter`, as [`chat_builder`] makes it.
pub async fn serve<P: PubSub>(
    config: CableConfig,
    adapter: impl FnOnce(Delivery) -> P,
) -> TestServer {
    TestServer::start(chat_builder(config, adapter)).await
}

/// A node of the suite: a server on the adapter, and what the probes need.
pub struct Node<C: Conformance> {
    /// The server.
    pub server: TestServer,
    /// The probe's view of it.
    pub probe: C::Node,
}

impl<C: Conformance> std::ops::Deref for Node<C> {
    type Target = Cable;
    fn deref(&self) -> &Cable {
        &self.server.cable
    }
}

async fn node<C: Conformance>(c: &C, prefix: &str, name: &str, config: CableConfig) -> Node<C> {
    let mut probe = None;
    let server = serve(config, |d| {
        let (adapter, node) = c.adapter(prefix, name, d);
        probe = Some(node);
        adapter
    })
    .await;
    let Some(probe) = probe else {
        unreachable!("the adapter factory runs in build")
    };
    eventually("the adapter connected", || {
        let up = server.cable.is_healthy();
        async move { up }
    })
    .await;
    Node { server, probe }
}

/// A WebSocket client of a suite's server, connected as `user`, welcome read.
pub async fn client(server: &TestServer, user: &str) -> cable_test::Client {
    let url = server.url(&format!("/cable?user={user}"));
    let mut c = cable_test::Client::connect(&url, &[("Origin", server.origin())])
        .await
        .named(user.to_owned());
    c.expect(frames::WELCOME).await;
    c
}

/// The identifier of `ChatChannel` in `room`.
pub fn room(room: &str) -> String {
    json!({"channel": "ChatChannel", "room": room}).to_string()
}

async fn until_count<C: Conformance>(
    c: &C,
    nodes: &[&Node<C>],
    prefix: &str,
    stream: &str,
    want: usize,
) {
    let probes: Vec<&C::Node> = nodes.iter().map(|n| &n.probe).collect();
    let deadline = Instant::now() + cable_test::WAIT;
    loop {
        let got = c.backend_subscriptions(&probes, prefix, stream).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stream}: {got} backend subscriptions, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The suite's probe, a fresh prefix and two nodes A and B on it, or None
/// after [`skip`].
async fn two_nodes<C: Conformance>() -> Option<(C, String, Node<C>, Node<C>)> {
    let c = C::setup().await?;
    let prefix = unique_prefix();
    let a = node(&c, &prefix, &format!("{prefix}-a"), CableConfig::default()).await;
    let b = node(&c, &prefix, &format!("{prefix}-b"), CableConfig::default()).await;
    Some((c, prefix, a, b))
}

/// A client's `confirm_subscription` on node A means the backend
/// subscription is live: a broadcast on node B right after reaches it.
pub async fn ack_before_confirmation<C: Conformance>() {
    let Some((_c, _prefix, a, b)) = two_nodes::<C>().await else {
        return;
    };
    let mut ann = client(&a.server, "ann").await;
    for i in 0..20 {
        let id = room(&format!("r{i}"));
        ann.subscribe(&id).await;
        b.broadcaster()
            .broadcast_raw(&format!("chat_r{i}"), &format!(r#"{{"i":{i}}}"#))
            .await
            .expect("broadcast");
        ann.expect(&frames::message(&id, &format!(r#"{{"i":{i}}}"#)))
            .await;
    }
}

/// One backend subscription per stream per process however many local
/// subscribers; none after the last leaves.
pub async fn one_backend_subscription_per_stream<C: Conformance>() {
    let Some((c, prefix, a, b)) = two_nodes::<C>().await else {
        return;
    };
    let lobby = room("lobby");
    let mut on_a = Vec::new();
    for user in ["a1", "a2", "a3"] {
        let mut cl = client(&a.server, user).await;
        cl.subscribe(&lobby).await;
        on_a.push(cl);
    }
    let mut b1 = client(&b.server, "b1").await;
    b1.subscribe(&lobby).await;
    // Counted over both nodes: one each.
    until_count(&c, &[&a, &b], &prefix, "chat_lobby", 2).await;
    // Every local subscriber hears one broadcast exactly once.
    b.broadcaster()
        .broadcast_raw("chat_lobby", r#"{"n":1}"#)
        .await
        .expect("broadcast");
    for cl in on_a.iter_mut().chain([&mut b1]) {
        cl.expect(&frames::message(&lobby, r#"{"n":1}"#)).await;
        cl.expect_silence(Duration::from_millis(100)).await;
    }
    let last = on_a.pop().expect("three clients");
    for cl in on_a {
        cl.leave().await;
    }
    until_count(&c, &[&a, &b], &prefix, "chat_lobby", 2).await;
    last.leave().await;
    until_count(&c, &[&a, &b], &prefix, "chat_lobby", 1).await;
    b1.leave().await;
    until_count(&c, &[&a, &b], &prefix, "chat_lobby", 0).await;
}

/// Many messages from one publisher arrive in the order sent.
pub async fn ordering_from_one_publisher<C: Conformance>() {
    const N: usize = 300;
    let Some((_c, _prefix, a, b)) = two_nodes::<C>().await else {
        return;
    };
    let mut ann = client(&a.server, "ann").await;
    let lobby = room("lobby");
    ann.subscribe(&lobby).await;
    let broadcaster = b.broadcaster();
    for n in 0..N {
        broadcaster
            .broadcast_raw("chat_lobby", &format!(r#"{{"n":{n}}}"#))
            .await
            .expect("broadcast");
    }
    for n in 0..N {
        ann.expect(&frames::message(&lobby, &format!(r#"{{"n":{n}}}"#)))
            .await;
    }
}

/// `remote_disconnect` on node A closes the user's connections on node B
/// (the internal `action_cable/<id>` stream crosses the backend).
pub async fn remote_disconnect_across_nodes<C: Conformance>() {
    let Some((c, prefix, a, b)) = two_nodes::<C>().await else {
        return;
    };
    let mut alice = client(&b.server, "alice").await;
    let mut bob = client(&b.server, "bob").await;
    // The welcome does not wait for the internal stream.
    until_count(&c, &[&a, &b], &prefix, "action_cable/alice", 1).await;
    a.remote_disconnect(&Identifiers::new().with("current_user", "alice"), false)
        .await
        .expect("remote disconnect");
    let close = tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal;
    assert_eq!(
        alice.expect_close(close).await,
        vec![frames::disconnect("remote", false)]
    );
    bob.expect_silence(Duration::from_millis(200)).await;
    until_count(&c, &[&a, &b], &prefix, "action_cable/alice", 0).await;
}

/// Backend connections killed: reconnects are counted and delivery is back
/// within 5 s, every stream subscribed again.
pub async fn delivery_resumes_after_connections_are_killed<C: Conformance>() {
    let Some(c) = C::setup().await else { return };
    let prefix = unique_prefix();
    let a = node(&c, &prefix, &format!("{prefix}-a"), CableConfig::default()).await;
    let mut ann = client(&a.server, "ann").await;
    let lobby = room("lobby");
    ann.subscribe(&lobby).await;
    a.broadcaster()
        .broadcast_raw("chat_lobby", r#"{"n":0}"#)
        .await
        .expect("broadcast while up");
    ann.expect(&frames::message(&lobby, r#"{"n":0}"#)).await;
    assert_eq!(a.stats().adapter_reconnects, 0);

    c.break_connections(&a.probe).await;
    let killed = Instant::now();
    eventually("the adapter reconnected", || {
        let back = a.stats().adapter_reconnects >= 1 && a.is_healthy();
        async move { back }
    })
    .await;
    until_count(&c, &[&a], &prefix, "chat_lobby", 1).await;
    let mut n = 1;
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "delivery did not resume within 5 s"
        );
        // The publisher notices its lost connection when it next publishes
        // (an Unavailable) and reconnects on the next broadcast.
        match a
            .broadcaster()
            .broadcast_raw("chat_lobby", &format!(r#"{{"n":{n}}}"#))
            .await
        {
            Ok(()) => break,
            Err(e) => assert!(matches!(e, PubSubError::Unavailable(_)), "{e:?}"),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.expect(&frames::message(&lobby, &format!(r#"{{"n":{n}}}"#)))
        .await;
}

/// While the backend is unreachable, broadcasts fail with
/// [`PubSubError::Unavailable`] within a bound, subscribes fail after
/// [`ACK_TIMEOUT`], and nothing panics.
pub async fn publish_errors_while_unreachable<C: Conformance>() {
    let Some(c) = C::setup().await else { return };
    let adapter = c.unreachable(&unique_prefix(), Delivery::detached());
    for _ in 0..3 {
        let started = Instant::now();
        let err = adapter
            .broadcast("chat_lobby", "{}")
            .await
            .expect_err("nothing to publish to");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    }
    assert!(!adapter.is_connected());
    let started = Instant::now();
    let err = adapter
        .subscribe("chat_lobby")
        .await
        .expect_err("nothing to subscribe on");
    assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < ACK_TIMEOUT + Duration::from_secs(1));
    assert_eq!(adapter.unsubscribe("chat_lobby").await, Ok(()));
}

/// A backend with a limit refuses larger payloads with
/// [`PubSubError::PayloadTooLarge`] before sending and delivers one at the
/// limit whole; one without takes 1 MiB.
pub async fn payload_limit<C: Conformance>() {
    let Some(c) = C::setup().await else { return };
    let prefix = unique_prefix();
    let mut config = CableConfig::default();
    config.max_outbound_message_bytes = 4 << 20;
    config.outbound_queue_bytes = 16 << 20;
    let a = node(&c, &prefix, &format!("{prefix}-a"), config).await;
    let mut ann = client(&a.server, "ann").await;
    let lobby = room("lobby");
    ann.subscribe(&lobby).await;
    // {"body":"xxx…"}: 11 bytes around the body.
    let payload = |size: usize| format!(r#"{{"body":"{}"}}"#, "x".repeat(size - 11));
    let fits = match c.payload_limit() {
        Some(limit) => {
            let err = a
                .broadcaster()
                .broadcast_raw("chat_lobby", &payload(limit + 1))
                .await
                .expect_err("over the limit");
            assert!(
                matches!(err, PubSubError::PayloadTooLarge { size, limit: l, .. } if size == limit + 1 && l == limit),
                "{err:?}"
            );
            limit
        }
        None => 1 << 20,
    };
    a.broadcaster()
        .broadcast_raw("chat_lobby", &payload(fits))
        .await
        .expect("a payload within the limit");
    ann.expect(&frames::message(&lobby, &payload(fits))).await;
}

/// Waits until the cable's adapter says connected (`up`) or not.
async fn until_healthy(cable: &Cable, up: bool) {
    let what = if up {
        "adapter connected"
    } else {
        "outage noticed"
    };
    eventually(what, || {
        let healthy = cable.is_healthy();
        async move { healthy == up }
    })
    .await;
}

/// Delivery survives an outage: broadcasts fail promptly with
/// [`PubSubError::Unavailable`] while the backend is away (`failing` of
/// them), a subscribe made meanwhile is confirmed once it is back, delivery
/// resumes on its own within 5 s, and the reconnection is counted.
/// `during` runs once the outage is noticed, `after` once delivery resumed
/// (what the adapter can say of its subscriptions then). `set_up(false)`
/// takes the backend away (kills the server, cuts the network),
/// `set_up(true)` brings it back. The adapter's state is read through the
/// cable (`is_healthy`, `stats`), which reads the adapter's status.
pub async fn delivery_survives_an_outage(
    cable: &Cable,
    failing: u64,
    mut set_up: impl AsyncFnMut(bool),
    during: impl AsyncFn(),
    after: impl AsyncFn(),
) {
    let (mut client, id) = LocalClient::in_lobby(cable, "u1").await;
    cable
        .broadcast("chat_lobby", &json!({"n": 1}))
        .await
        .expect("broadcast while up");
    client.expect_message(&id, r#"{"n":1}"#).await;
    assert_eq!(cable.stats().adapter_reconnects, 0);

    set_up(false).await;
    until_healthy(cable, false).await;
    for n in 2..2 + failing {
        let started = Instant::now();
        let err = cable
            .broadcast("chat_lobby", &json!({"n": n}))
            .await
            .expect_err("broadcast during the outage fails");
        assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    }
    during().await;

    // A subscribe during the outage is applied (and confirmed) once it is over.
    let mut late = LocalClient::connect(cable, "u2").await;
    let late_id = late.start_subscribe("late");
    tokio::time::sleep(Duration::from_millis(500)).await;
    set_up(true).await;
    let ended = Instant::now();
    late.expect_confirm(&late_id).await;

    // Delivery resumes on its own.
    client
        .until_delivery_resumes(cable, &id, 2 + failing, ended)
        .await;
    assert!(cable.stats().adapter_reconnects >= 1);
    assert!(cable.is_healthy());
    after().await;
    cable
        .broadcast("chat_late", &json!({"late": true}))
        .await
        .expect("broadcast after the outage");
    late.expect_message(&late_id, r#"{"late":true}"#).await;
}

/// A subscribe during an outage longer than [`ACK_TIMEOUT`] gets no
/// confirmation (the core drops the subscription when its Ack fails); once
/// the backend is back, `after` checks the dropped subscription was not
/// made again, the client's retry is confirmed, and `publish(stream,
/// payload)` from the backend's side reaches it. `set_up` as for
/// [`delivery_survives_an_outage`].
pub async fn subscribe_fails_during_a_long_outage(
    cable: &Cable,
    mut set_up: impl AsyncFnMut(bool),
    after: impl AsyncFn(),
    publish: impl AsyncFn(&str, &str),
) {
    until_healthy(cable, true).await;
    set_up(false).await;
    until_healthy(cable, false).await;

    let mut client = LocalClient::connect(cable, "u1").await;
    let id = client.start_subscribe("lobby");
    assert!(client.quiet_for(Duration::from_millis(5500)).await);

    set_up(true).await;
    until_healthy(cable, true).await;
    after().await;
    // The client's retry succeeds.
    client.send(json!({"command": "subscribe", "identifier": id}));
    client.expect_confirm(&id).await;
    publish("chat_lobby", r#"{"ok":1}"#).await;
    client.expect_message(&id, r#"{"ok":1}"#).await;
}

/// An adapter made while its backend is away: broadcasts fail with
/// [`PubSubError::Unavailable`] (`check` looks at the first error too), and
/// once `set_up(true)` brings the backend back the adapter connects (no
/// reconnection counted) and broadcasts go through.
pub async fn starts_while_the_backend_is_away(
    cable: &Cable,
    mut set_up: impl AsyncFnMut(bool),
    check: impl Fn(&PubSubError),
) {
    let err = cable
        .broadcast("chat_lobby", &json!({}))
        .await
        .expect_err("nothing to connect to");
    assert!(matches!(err, PubSubError::Unavailable(_)), "{err:?}");
    check(&err);
    assert!(!cable.is_healthy());

    set_up(true).await;
    until_healthy(cable, true).await;
    assert_eq!(
        cable.stats().adapter_reconnects,
        0,
        "a first connection is no reconnect"
    );
    let (mut client, id) = LocalClient::in_lobby(cable, "u1").await;
    // The publisher connects on demand; for 100 ms after a failed attempt it
    // answers with that failure instead of trying again, and the jittered
    // subscriber may be back sooner than that.
    eventually("a broadcast goes through", || async {
        match cable.broadcast("chat_lobby", &json!({"up": true})).await {
            Ok(()) => true,
            Err(e) => {
                assert!(matches!(e, PubSubError::Unavailable(_)), "{e:?}");
                false
            }
        }
    })
    .await;
    client.expect_message(&id, r#"{"up":true}"#).await;
    assert!(client.quiet_for(Duration::from_millis(200)).await);
}

/// A client driven through `run_connection`, with no socket, for
/// adapter tests that need no transport; users as [`serve`] identifies them.
pub struct LocalClient {
    tx: Option<mpsc::UnboundedSender<Inbound>>,
    outbox: Arc<Outbox>,
    task: JoinHandle<()>,
    pending: std::collections::VecDeque<Outgoing>,
}

impl LocalClient {
    /// Broadcasts `{"n": from}`, `{"n": from + 1}`… on `chat_lobby` every
    /// 100 ms until one reaches this client's subscription `identifier`
    /// (which is in the lobby): delivery has resumed after an outage. Panics
    /// unless it does within 5 s of `since`.
    pub async fn until_delivery_resumes(
        &mut self,
        cable: &Cable,
        identifier: &str,
        from: u64,
        since: Instant,
    ) {
        for n in from.. {
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "delivery did not resume within 5 s of the end of the outage"
            );
            if cable
                .broadcast("chat_lobby", &json!({ "n": n }))
                .await
                .is_ok()
            {
                let expected = message_frame(identifier, &format!(r#"{{"n":{n}}}"#));
                if let Ok(Outgoing::Text(f)) =
                    tokio::time::timeout(Duration::from_millis(300), self.next()).await
                {
                    assert_eq!(f.as_str(), expected);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects as `user` and subscribes to the lobby (`chat_lobby`):
    /// the client and its subscription's identifier.
    pub async fn in_lobby(cable: &Cable, user: &str) -> (LocalClient, String) {
        let mut client = LocalClient::connect(cable, user).await;
        let id = client.subscribe("lobby").await;
        (client, id)
    }

    /// Connects as `user` and reads the welcome.
    pub async fn connect(cable: &Cable, user: &str) -> LocalClient {
        let (tx, mut rx) = mpsc::unbounded_channel::<Inbound>();
        let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let outbox = cable_core::transport::new_outbox(cable);
        let request = ConnectRequest::new("/cable", Some(&format!("user={user}")), vec![], None);
        let task = tokio::spawn({
            let cable = cable.clone();
            let outbox = outbox.clone();
            async move { cable_core::transport::run_connection(&cable, request, inbound, outbox).await }
        });
        let mut client = LocalClient {
            tx: Some(tx),
            outbox,
            task,
            pending: Default::default(),
        };
        assert_eq!(client.next_text().await, r#"{"type":"welcome"}"#);
        client
    }

    /// Sends `command` as a text frame.
    pub fn send(&self, command: Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Inbound::Text(command.to_string()));
        }
    }

    /// Subscribes to `ChatChannel` in `room`; returns the identifier. Does not
    /// wait for the confirmation.
    pub fn start_subscribe(&self, room: &str) -> String {
        let identifier = json!({"channel": "ChatChannel", "room": room}).to_string();
        self.send(json!({"command": "subscribe", "identifier": identifier}));
        identifier
    }

    /// Subscribes and waits for `confirm_subscription`.
    pub async fn subscribe(&mut self, room: &str) -> String {
        let identifier = self.start_subscribe(room);
        self.expect_confirm(&identifier).await;
        identifier
    }

    /// Asserts that the next frame confirms `identifier`.
    pub async fn expect_confirm(&mut self, identifier: &str) {
        let confirm = json!({"identifier": identifier, "type": "confirm_subscription"}).to_string();
        assert_eq!(self.next_text().await, confirm);
    }

    /// Asserts that the next frame is `message_json` on `identifier`.
    pub async fn expect_message(&mut self, identifier: &str, message_json: &str) {
        assert_eq!(
            self.next_text().await,
            message_frame(identifier, message_json)
        );
    }

    /// The next item the connection sends, within [`cable_test::WAIT`]; pings skipped.
    pub async fn next(&mut self) -> Outgoing {
        tokio::time::timeout(cable_test::WAIT, self.next_inner())
            .await
            .expect("no frame within 5s")
    }

    async fn next_inner(&mut self) -> Outgoing {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let Outgoing::Text(f) = &item {
                    if f.as_str().contains(r#""type":"ping""#) {
                        continue;
                    }
                }
                return item;
            }
            let mut buf = Vec::new();
            if !self.outbox.pop_batch(&mut buf, 64).await {
                std::future::pending::<()>().await;
            }
            self.pending.extend(buf);
        }
    }

    /// The next text frame.
    pub async fn next_text(&mut self) -> String {
        match self.next().await {
            Outgoing::Text(f) => f.as_str().to_owned(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Whether anything arrives within `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, self.next_inner()).await.is_err()
    }

    /// Closes the socket side and waits for the connection to end.
    pub async fn leave(mut self) {
        self.tx = None;
        let _ = tokio::time::timeout(cable_test::WAIT, &mut self.task).await;
    }
}

/// `{"identifier":…,"message":…}` as the core frames it.
pub fn message_frame(identifier: &str, message_json: &str) -> String {
    format!(
        r#"{{"identifier":{},"message":{}}}"#,
        serde_json::to_string(identifier).expect("string"),
        message_json
    )
}
