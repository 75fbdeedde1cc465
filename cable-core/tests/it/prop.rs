//! Bounded property tests, run by every `cargo test` (a few thousand cases
//! in all, seconds in a debug build). They check what the cargo-fuzz targets
//! in `fuzz/` check, on inputs proptest makes: `Command::parse` never panics;
//! re-encoding any JSON value gives JSON that decodes to the same value; a
//! connection fed any sequence of frames and outside events answers in
//! well-formed frames, confirms or rejects at most once per subscribe, and
//! leaves no connection, subscription or stream behind.

use std::collections::HashMap;
use std::time::Duration;

use cable_core::json;
use cable_core::protocol::Command;
use cable_core::transport::{Inbound, Outgoing};
use cable_core::{
    async_trait, authenticate_with, Cable, CableConfig, Channel, ChannelError, ConnectRequest,
    Context, Identifiers, Stats, Unauthorized,
};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

/// Characters that matter to JSON and to Rails' escaping, mixed into
/// otherwise arbitrary strings.
const SPECIAL: &[char] = &[
    '<', '>', '&', '\u{2028}', '\u{2029}', '"', '\\', '\n', '\u{1}', '\u{7f}', 'é', '😀', '{', '}',
    '[', ']', ':', ',', ' ', '0', '1', 'e', '-', '.', 'u',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![2 => select(SPECIAL), 1 => any::<char>()],
        0..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // non-finite becomes null
        (-40i32..40, any::<u16>()).prop_map(|(e, m)| json!(f64::from(m) * 10f64.powi(e))),
        text(12).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((text(6), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Text frames as a client, a broken client or an attacker might send them.
fn frame_text() -> impl Strategy<Value = String> {
    let command = select(&["subscribe", "unsubscribe", "message", "dance", ""][..]);
    prop_oneof![
        text(40),
        json_value().prop_map(|v| v.to_string()),
        (command.clone(), json_value(), json_value()).prop_map(|(c, id, data)| {
            json!({"command": c, "identifier": id, "data": data}).to_string()
        }),
        (command, text(20), json_value()).prop_map(|(c, id, data)| {
            json!({"command": c, "identifier": id, "data": data.to_string()}).to_string()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn command_parse_never_panics(text in frame_text(), cut in any::<prop::sample::Index>()) {
        // Whole, and cut short at a character boundary.
        let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        for t in [text.as_str(), &text[..bounds[cut.index(bounds.len())]]] {
            let parsed = Command::parse(t);
            if let Ok(command) = parsed {
                let v: Value = serde_json::from_str(t).unwrap();
                let identifier = match &command {
                    Command::Subscribe { identifier, .. }
                    | Command::Unsubscribe { identifier }
                    | Command::Message { identifier, .. }
                    | Command::History { identifier, .. } => identifier,
                    _ => continue,
                };
                prop_assert_eq!(v["identifier"].as_str(), Some(identifier.as_str()));
            }
        }
    }

    #[test]
    fn reencoding_json_keeps_the_value(value in json_value(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&value).unwrap()
        } else {
            serde_json::to_string(&value).unwrap()
        };
        let decoded: Value = serde_json::from_str(&text).unwrap();
        let again = json::reencode(&text).unwrap();
        prop_assert_eq!(&json::encode(&value).unwrap(), &again);
        let back: Value = serde_json::from_str(&again)
            .map_err(|e| TestCaseError::fail(format!("{again:?} is not JSON: {e}")))?;
        prop_assert_eq!(&back, &decoded, "{} became {}", text, again);
        prop_assert!(!again.contains(['<', '>', '&', '\u{2028}', '\u{2029}']), "{}", again);
    }
}

// ---------------------------------------------------------------------------
// A connection driven by generated steps.

const IDENTIFIERS: &[&str] = &[
    r#"{"channel":"RoomChannel","room":"a"}"#,
    r#"{"room":"a","channel":"RoomChannel"}"#,
    r#"{"channel":"RoomChannel","room":"b","tick":1}"#,
    r#"{"channel":"RoomChannel","room":"a","reject":true}"#,
    r#"{"channel":"RoomChannel","room":"b","fail":true}"#,
    r#"{"channel":"RoomChannel","tick":0}"#,
    r#"{"channel":"RoomChannel","room":"<&>"}"#,
    r#"{"channel":"EchoChannel"}"#,
    r#"{"channel":"Nope"}"#,
    r#"{"room":"a"}"#,
    "[1]",
    "nope",
];

const STREAMS: &[&str] = &[
    "room_a",
    "room_b",
    "room_<&>",
    "action_cable/alice",
    "other",
];

const ACTIONS: &[&str] = &[
    "speak", "shout", "echo", "follow", "unfollow", "stop_all", "tick", "big", "fail", "what",
];

#[derive(Clone, Debug)]
enum Step {
    Text(String),
    Binary,
    TooLarge,
    Sleep(u64),
    Beat,
    Broadcast(String, String),
    RemoteDisconnect(bool),
    Shutdown,
}

fn identifier() -> impl Strategy<Value = String> {
    prop_oneof![9 => select(IDENTIFIERS).prop_map(str::to_owned), 1 => text(10)]
}

fn stream() -> impl Strategy<Value = String> {
    prop_oneof![9 => select(STREAMS).prop_map(str::to_owned), 1 => text(6)]
}

fn action() -> impl Strategy<Value = Value> {
    (select(ACTIONS), stream(), 0u64..600, text(8))
        .prop_map(|(a, s, n, b)| json!({"action": a, "stream": s, "n": n, "body": b}))
}

fn data() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => action().prop_map(|a| Some(json!(a.to_string()))),
        1 => action().prop_map(Some),
        1 => text(8).prop_map(|t| Some(json!(t))),
        1 => Just(Some(json!(r#"{"body":"no action"}"#))),
        1 => Just(None),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let command = |name: &'static str| {
        identifier()
            .prop_map(move |id| Step::Text(json!({"command": name, "identifier": id}).to_string()))
    };
    prop_oneof![
        6 => command("subscribe"),
        2 => command("unsubscribe"),
        6 => (identifier(), data()).prop_map(|(id, data)| {
            let mut c = json!({"command": "message", "identifier": id});
            if let Some(d) = data {
                c["data"] = d;
            }
            Step::Text(c.to_string())
        }),
        1 => frame_text().prop_map(Step::Text),
        1 => Just(Step::Binary),
        1 => Just(Step::TooLarge),
        2 => (0u64..30).prop_map(Step::Sleep),
        1 => Just(Step::Beat),
        2 => (stream(), prop_oneof![
            json_value().prop_map(|v| v.to_string()),
            text(8),
            any::<bool>().prop_map(|r| format!(r#"{{"type":"disconnect","reconnect":{r}}}"#)),
        ]).prop_map(|(s, p)| Step::Broadcast(s, p)),
        1 => any::<bool>().prop_map(Step::RemoteDisconnect),
        1 => Just(Step::Shutdown),
    ]
}

#[derive(Default)]
struct RoomChannel {
    stream: String,
    ticks: u64,
}

#[async_trait]
impl Channel for RoomChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let room = ctx.param_str("room").unwrap_or("lobby").to_owned();
        self.stream = format!("room_{room}");
        ctx.transmit(&json!({"hello": room}))?;
        ctx.stream_from(self.stream.clone());
        if let Some(secs) = ctx.param("tick").and_then(Value::as_u64) {
            ctx.periodically("tick", Duration::from_secs(secs))?;
        }
        if ctx.param("reject") == Some(&json!(true)) {
            ctx.reject();
        }
        if ctx.param("fail") == Some(&json!(true)) {
            return Err(ChannelError::other("failing on purpose"));
        }
        Ok(())
    }

    async fn unsubscribed(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx.transmit(&json!({"bye": self.stream}));
    }

    async fn perform(
        &mut self,
        ctx: &mut Context<'_>,
        action: &str,
        data: Value,
    ) -> Result<(), ChannelError> {
        let stream = data["stream"].as_str().unwrap_or_default().to_owned();
        match action {
            "speak" => {
                ctx.broadcast(&self.stream, &json!({"body": data["body"]}))
                    .await
            }
            "shout" => {
                ctx.broadcast(&stream, &json!({"shout": data["body"]}))
                    .await
            }
            "echo" => ctx.transmit(&data),
            "follow" => {
                ctx.stream_from(stream);
                Ok(())
            }
            "unfollow" => {
                ctx.stop_stream_from(&stream);
                Ok(())
            }
            "stop_all" => {
                ctx.stop_all_streams();
                Ok(())
            }
            "tick" => ctx.periodically("tick", Duration::from_millis(700)),
            "big" => ctx.transmit(&"x".repeat(data["n"].as_u64().unwrap_or(0) as usize)),
            "fail" => Err(ChannelError::InvalidData("failing on purpose".into())),
            _ => Err(ChannelError::UnknownAction(action.to_owned())),
        }
    }

    async fn timer(&mut self, ctx: &mut Context<'_>, name: &str) -> Result<(), ChannelError> {
        self.ticks += 1;
        ctx.transmit(&json!({"timer": name, "n": self.ticks}))?;
        ctx.broadcast(&self.stream, &json!({"ticked": self.ticks}))
            .await
    }
}

#[derive(Default)]
struct EchoChannel;

#[async_trait]
impl Channel for EchoChannel {
    async fn perform(
        &mut self,
        ctx: &mut Context<'_>,
        action: &str,
        data: Value,
    ) -> Result<(), ChannelError> {
        ctx.transmit(&json!({"action": action, "data": data}))
    }
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    authorized: bool,
    reject_unknown: bool,
    tiny_queue: bool,
    two_subscriptions: bool,
    drain_late: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::bool::weighted(0.9),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(a, r, t, s, d)| Setup {
            authorized: a,
            reject_unknown: r,
            tiny_queue: t,
            two_subscriptions: s,
            drain_late: d,
        })
}

fn run(setup: Setup, steps: &[Step]) -> (Vec<Outgoing>, Stats) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(drive(setup, steps.to_vec()))
}

async fn drive(setup: Setup, steps: Vec<Step>) -> (Vec<Outgoing>, Stats) {
    let mut config = CableConfig::default();
    config.reject_unknown_channels = setup.reject_unknown;
    if setup.tiny_queue {
        config.outbound_queue_bytes = 400;
    }
    if setup.two_subscriptions {
        config.max_subscriptions_per_connection = Some(2);
    }
    let cable = Cable::builder()
        .channel("RoomChannel", RoomChannel::default)
        .channel("EchoChannel", EchoChannel::default)
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("anonymous"))
        }))
        .config(config)
        .build();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let outbox = cable_core::transport::new_outbox(&cable);
    let query = if setup.authorized { "user=alice" } else { "" };
    let request = ConnectRequest::new("/cable", Some(query), vec![], None);

    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let ob = outbox.clone();
    let writer = tokio::spawn(async move {
        if setup.drain_late {
            let _ = wait.await;
        }
        let (mut all, mut buf) = (Vec::new(), Vec::new());
        while ob.pop_batch(&mut buf, 8).await {
            all.append(&mut buf);
        }
        all.append(&mut buf);
        all
    });

    let c = cable.clone();
    let feeder = tokio::spawn(async move {
        for step in steps {
            match step {
                Step::Text(t) => drop(tx.send(Inbound::Text(t))),
                Step::Binary => drop(tx.send(Inbound::Binary(3))),
                Step::TooLarge => drop(tx.send(Inbound::TooLarge {
                    size: 70_000,
                    max: 65_536,
                })),
                Step::Sleep(n) => tokio::time::sleep(Duration::from_millis(100 * n)).await,
                Step::Beat => drop(cable_core::transport::beat(&c)),
                Step::Broadcast(s, p) => drop(c.broadcaster().broadcast_raw(&s, &p).await),
                Step::RemoteDisconnect(r) => {
                    let ids = Identifiers::new().with("current_user", "alice");
                    drop(c.remote_disconnect(&ids, r).await);
                }
                Step::Shutdown => cable_core::transport::begin_shutdown(&c),
            }
            tokio::task::yield_now().await;
        }
    });

    cable_core::transport::run_connection(&cable, request, inbound, outbox).await;
    let _ = go.send(());
    let out = writer.await.unwrap();
    feeder.abort();
    let _ = feeder.await;
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    (out, cable.stats())
}

fn check(
    setup: Setup,
    steps: &[Step],
    out: &[Outgoing],
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let mut subscribes: HashMap<String, usize> = HashMap::new();
    let mut unsubscribes: HashMap<String, usize> = HashMap::new();
    for step in steps {
        if let Step::Text(t) = step {
            match Command::parse(t) {
                Ok(Command::Subscribe { identifier, .. }) => {
                    *subscribes.entry(identifier).or_default() += 1
                }
                Ok(Command::Unsubscribe { identifier }) => {
                    *unsubscribes.entry(identifier).or_default() += 1
                }
                _ => {}
            }
        }
    }
    let closes = out
        .iter()
        .filter(|o| matches!(o, Outgoing::Close { .. }))
        .count();
    prop_assert_eq!(closes, 1, "{:?}", out);
    prop_assert!(
        matches!(out.last(), Some(Outgoing::Close { .. })),
        "{:?}",
        out
    );
    let frames: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Outgoing::Text(f) => Some(f.as_str()),
            Outgoing::Close { .. } => None,
        })
        .collect();

    let mut confirms: HashMap<String, usize> = HashMap::new();
    let mut answers: HashMap<String, usize> = HashMap::new();
    for (i, frame) in frames.iter().enumerate() {
        let v: Value = serde_json::from_str(frame)
            .map_err(|e| TestCaseError::fail(format!("{frame:?} is not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| TestCaseError::fail(format!("{frame} is not an object")))?;
        match obj.get("type").and_then(Value::as_str) {
            Some("welcome") => prop_assert_eq!(i, 0, "{:?}", frames),
            Some("ping") => prop_assert!(obj["message"].is_u64(), "{}", frame),
            Some(kind @ ("confirm_subscription" | "reject_subscription")) => {
                let id = obj["identifier"].as_str().unwrap_or_default().to_owned();
                if kind == "confirm_subscription" {
                    *confirms.entry(id.clone()).or_default() += 1;
                }
                *answers.entry(id).or_default() += 1;
            }
            Some("disconnect") => {
                prop_assert!(obj["reconnect"].is_boolean(), "{}", frame);
                prop_assert_eq!(i, frames.len() - 1, "disconnect comes last: {:?}", frames);
            }
            Some(other) => prop_assert!(false, "frame type {} in {}", other, frame),
            None => {
                let id = obj["identifier"].as_str().unwrap_or_default();
                prop_assert_eq!(obj.len(), 2, "{}", frame);
                prop_assert!(obj.contains_key("message"), "{}", frame);
                prop_assert!(
                    subscribes.contains_key(id),
                    "{} never subscribed: {:?}",
                    id,
                    frames
                );
            }
        }
    }
    if !setup.authorized {
        prop_assert_eq!(
            &frames,
            &vec![r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#]
        );
    } else {
        let first = frames.first().copied().unwrap_or_default();
        prop_assert!(
            first == r#"{"type":"welcome"}"#
                || first == r#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#,
            "first frame {}",
            first
        );
    }
    for (id, n) in &answers {
        let sent = subscribes.get(id).copied().unwrap_or(0);
        prop_assert!(
            *n <= sent,
            "{} answered {} times for {} subscribes: {:?}",
            id,
            n,
            sent,
            frames
        );
    }
    for (id, n) in &confirms {
        let unsubs = unsubscribes.get(id).copied().unwrap_or(0);
        prop_assert!(
            *n <= unsubs + 1,
            "{} confirmed {} times, {} unsubscribes: {:?}",
            id,
            n,
            unsubs,
            frames
        );
    }
    prop_assert_eq!(stats.connections, 0, "{:?}", stats);
    prop_assert_eq!(stats.subscriptions, 0, "{:?}", stats);
    prop_assert_eq!(stats.streams, 0, "{:?}", stats);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_connection_keeps_its_invariants(
        setup in setup(),
        steps in prop::collection::vec(step(), 0..40),
    ) {
        let (out, stats) = run(setup, &steps);
        check(setup, &steps, &out, &stats)?;
    }
}

/// The generator reaches what it is meant to: subscriptions confirmed and
/// rejected, timers firing, broadcasts delivered, remote disconnects.
#[test]
fn the_connection_generator_reaches_every_path() {
    let setup = Setup {
        authorized: true,
        reject_unknown: true,
        tiny_queue: false,
        two_subscriptions: false,
        drain_late: false,
    };
    let sub = |id: &str| Step::Text(json!({"command": "subscribe", "identifier": id}).to_string());
    let speak = |id: &str| {
        Step::Text(
            json!({"command": "message", "identifier": id,
                   "data": json!({"action": "speak", "body": "hi"}).to_string()})
            .to_string(),
        )
    };
    let steps = vec![
        sub(IDENTIFIERS[0]),
        sub(IDENTIFIERS[2]),
        sub(IDENTIFIERS[3]),
        sub(IDENTIFIERS[8]),
        speak(IDENTIFIERS[0]),
        Step::Sleep(25),
        Step::Broadcast("room_a".into(), r#"{"x":1}"#.into()),
        Step::RemoteDisconnect(false),
    ];
    let (out, stats) = run(setup, &steps);
    check(setup, &steps, &out, &stats).unwrap();
    let all: Vec<String> = out.iter().map(|o| format!("{o:?}")).collect();
    let all = all.join("\n");
    for needle in [
        "confirm_subscription",
        "reject_subscription",
        r#"\"timer\":\"tick\""#,
        r#"\"body\":\"hi\""#,
        r#"\"x\":1"#,
        r#"\"reason\":\"remote\",\"reconnect\":false"#,
    ] {
        assert!(all.contains(needle), "no {needle} in\n{all}");
    }
}
