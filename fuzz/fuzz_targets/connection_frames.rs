//! One connection of a `Cable` with two small test channels, driven by a
//! sequence of inbound items decoded from the fuzz input: text frames biased
//! towards commands that look valid (subscribe / unsubscribe / message with
//! identifiers from a small set), garbage text, binary frames, oversized
//! messages, pauses that let `periodically` timers fire, and events from
//! outside the connection (heartbeat, broadcasts, remote disconnect,
//! shutdown). Time is paused, so timers cost nothing.
//!
//! Invariants checked: no panic; every text frame is a JSON object of a known
//! shape; the outbox ends with exactly one close; an identifier is confirmed
//! or rejected at most once per subscribe command, and confirmed at most once
//! more than it was unsubscribed; data frames only name identifiers the
//! client subscribed with; after the connection ends, `cable.stats()` shows
//! no connection, subscription or stream.

#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use cable_core::{async_trait, authenticate_with, Cable, CableConfig, Channel, ChannelError, ConnectRequest, Context, Identifiers, Unauthorized};
use cable_core::transport::{Inbound, Outgoing};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

/// Identifiers the client picks from (index modulo the length).
const IDENTIFIERS: &[&str] = &[
    r#"{"channel":"RoomChannel","room":"a"}"#,
    // The same params in another order: another identifier, the same stream.
    r#"{"room":"a","channel":"RoomChannel"}"#,
    r#"{"channel":"RoomChannel","room":"b","tick":1}"#,
    r#"{"channel":"RoomChannel","room":"a","reject":true}"#,
    r#"{"channel":"RoomChannel","room":"b","fail":true}"#,
    r#"{"channel":"RoomChannel","tick":0}"#,
    r#"{"channel":"RoomChannel","room":"a","tick":3}"#,
    r#"{"channel":"RoomChannel","room":"<&>\u2028"}"#,
    r#"{"channel":"EchoChannel"}"#,
    r#"{"channel":"Nope"}"#,
    r#"{"channel":42}"#,
    r#"{"room":"a"}"#,
    r#"[1,2]"#,
    "not json",
    "",
];

/// Streams actions and outside broadcasts name.
const STREAMS: &[&str] = &[
    "room_a",
    "room_b",
    "room_lobby",
    "room_<&>\u{2028}",
    "action_cable/alice",
    "elsewhere",
    "",
];

#[derive(Arbitrary, Clone, Debug)]
struct Input {
    /// Bit 0: authenticated as alice (else refused); bit 1: reject unknown
    /// channels; bits 2 and 6 both: a tiny outbound queue (too_slow); bit 3:
    /// at most two subscriptions; bit 4: the writer drains only after the
    /// session ends.
    flags: u8,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Clone, Debug)]
enum Ident {
    Known(u8),
    Other(String),
}

impl Ident {
    fn text(&self) -> String {
        match self {
            Ident::Known(i) => IDENTIFIERS[*i as usize % IDENTIFIERS.len()].to_owned(),
            Ident::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Clone, Debug)]
enum Stream {
    Known(u8),
    Other(String),
}

impl Stream {
    fn name(&self) -> String {
        match self {
            Stream::Known(i) => STREAMS[*i as usize % STREAMS.len()].to_owned(),
            Stream::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Clone, Debug)]
enum Action {
    Speak,
    Echo,
    Follow,
    Unfollow,
    StopAll,
    Tick,
    Shout,
    Big,
    Fail,
    /// No `action`: dispatched to `receive`.
    Receive,
    Named(String),
}

#[derive(Arbitrary, Clone, Debug)]
enum Data {
    /// `data` is a JSON string holding an object, as the JS client sends.
    Action {
        action: Action,
        stream: Stream,
        n: u16,
        body: String,
    },
    /// `data` is an object rather than a string holding one.
    Object(Action),
    /// A JSON string holding something else.
    Text(String),
    Missing,
}

#[derive(Arbitrary, Clone, Debug)]
enum Payload {
    Json(String),
    Raw(String),
    Disconnect(bool),
}

#[derive(Arbitrary, Clone, Debug)]
enum Step {
    Subscribe(Ident),
    Unsubscribe(Ident),
    Message(Ident, Data),
    /// Another command name, or none.
    Command(String, Ident),
    Garbage(String),
    Binary(u16),
    TooLarge,
    /// Sleep this many 100 ms (timers fire meanwhile).
    Sleep(u8),
    Beat,
    Broadcast(Stream, Payload),
    RemoteDisconnect(bool),
    Shutdown,
}

fn action_json(action: &Action, stream: &Stream, n: u16, body: &str) -> Value {
    let name = match action {
        Action::Speak => "speak",
        Action::Echo => "echo",
        Action::Follow => "follow",
        Action::Unfollow => "unfollow",
        Action::StopAll => "stop_all",
        Action::Tick => "tick",
        Action::Shout => "shout",
        Action::Big => "big",
        Action::Fail => "fail",
        Action::Receive => return json!({"body": body}),
        Action::Named(s) => s,
    };
    json!({"action": name, "stream": stream.name(), "n": n, "body": body})
}

/// The text frame a step sends, if it sends one.
fn frame_text(step: &Step) -> Option<String> {
    let cmd =
        |command: &str, ident: &Ident| json!({"command": command, "identifier": ident.text()});
    Some(match step {
        Step::Subscribe(i) => cmd("subscribe", i).to_string(),
        Step::Unsubscribe(i) => cmd("unsubscribe", i).to_string(),
        Step::Message(i, data) => {
            let mut c = cmd("message", i);
            match data {
                Data::Action {
                    action,
                    stream,
                    n,
                    body,
                } => c["data"] = json!(action_json(action, stream, *n, body).to_string()),
                Data::Object(action) => c["data"] = action_json(action, &Stream::Known(0), 1, "x"),
                Data::Text(s) => c["data"] = json!(s),
                Data::Missing => {}
            }
            c.to_string()
        }
        Step::Command(name, i) => cmd(name, i).to_string(),
        Step::Garbage(s) => s.clone(),
        _ => return None,
    })
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
            // A zero period is refused: subscribed fails after streaming.
            ctx.periodically("tick", Duration::from_secs(secs))?;
        }
        if ctx.param("reject") == Some(&json!(true)) {
            ctx.reject();
        }
        if ctx.param("fail") == Some(&json!(true)) {
            return Err(ChannelError::other("subscribed failed on purpose"));
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
            "big" => {
                let n = data["n"].as_u64().unwrap_or(0).min(4096) as usize;
                ctx.transmit(&"x".repeat(n))
            }
            "fail" => Err(ChannelError::InvalidData("failed on purpose".into())),
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

fn build_cable(flags: u8) -> Cable {
    let mut config = CableConfig::default();
    config.reject_unknown_channels = flags & 2 != 0;
    if flags & 0x44 == 0x44 {
        config.outbound_queue_bytes = 400;
    }
    if flags & 8 != 0 {
        config.max_subscriptions_per_connection = Some(2);
    }
    Cable::builder()
        .channel("RoomChannel", RoomChannel::default)
        .channel("EchoChannel", EchoChannel::default)
        .authenticate(authenticate_with(|req: ConnectRequest| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .config(config)
        .build()
}

/// `CABLE_FUZZ_DEBUG=1` prints each input's steps and frames (to see what a
/// corpus entry does: run the target binary on that file).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("CABLE_FUZZ_DEBUG").is_some())
}

fn run(input: Input) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let steps: Vec<Step> = input.steps.into_iter().take(256).collect();
    let flags = input.flags;
    let out = rt.block_on(drive(flags, &steps));
    if debug() {
        eprintln!("flags {flags:#07b}\nsteps {steps:#?}");
        for o in &out.0 {
            eprintln!("  out {o:?}");
        }
        eprintln!("stats {:?}", out.1);
    }
    check(flags, &steps, &out.0, &out.1);
}

async fn drive(flags: u8, steps: &[Step]) -> (Vec<Outgoing>, cable_core::Stats) {
    let cable = build_cable(flags);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Inbound>();
    let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let outbox = cable_core::transport::new_outbox(&cable);
    let query = if flags & 1 != 0 { "user=alice" } else { "" };
    let request = ConnectRequest::new("/cable", Some(query), vec![], None);

    let late = flags & 16 != 0;
    let writer_outbox = outbox.clone();
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        if late {
            let _ = start_rx.await;
        }
        let mut all = Vec::new();
        let mut buf = Vec::new();
        while writer_outbox.pop_batch(&mut buf, 8).await {
            all.append(&mut buf);
        }
        all.append(&mut buf);
        all
    });

    let feeder_cable = cable.clone();
    let owned: Vec<Step> = steps.to_vec();
    let feeder = tokio::spawn(async move {
        let cable = feeder_cable;
        for step in &owned {
            if let Some(text) = frame_text(step) {
                let _ = tx.send(Inbound::Text(text));
            }
            match step {
                Step::Binary(n) => {
                    let _ = tx.send(Inbound::Binary(*n as usize));
                }
                Step::TooLarge => {
                    let _ = tx.send(Inbound::TooLarge {
                        size: 70_000,
                        max: 65_536,
                    });
                }
                Step::Sleep(n) => {
                    tokio::time::sleep(Duration::from_millis(100 * (*n as u64 % 50))).await
                }
                Step::Beat => {
                    cable_core::transport::beat(&cable);
                }
                Step::Broadcast(stream, payload) => {
                    let stream = stream.name();
                    let _ = match payload {
                        Payload::Json(s) => cable.broadcast(&stream, &json!({"news": s})).await,
                        Payload::Raw(s) => cable.broadcaster().broadcast_raw(&stream, s).await,
                        Payload::Disconnect(r) => {
                            let p = format!(r#"{{"type":"disconnect","reconnect":{r}}}"#);
                            cable.broadcaster().broadcast_raw(&stream, &p).await
                        }
                    };
                }
                Step::RemoteDisconnect(r) => {
                    let ids = Identifiers::new().with("current_user", "alice");
                    let _ = cable.remote_disconnect(&ids, *r).await;
                }
                Step::Shutdown => cable_core::transport::begin_shutdown(&cable),
                _ => {}
            }
            // Let the session catch up, so outside events land between frames.
            tokio::task::yield_now().await;
        }
        // Dropping the sender ends the inbound stream: the client hangs up.
    });

    cable_core::transport::run_connection(&cable, request, inbound, outbox).await;
    let _ = start_tx.send(());
    let out = writer.await.expect("writer task");
    // The feeder may still be sleeping; it has nothing left to deliver.
    feeder.abort();
    let _ = feeder.await;
    // Let spawned unsubscribe acknowledgements run.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    (out, cable.stats())
}

fn check(flags: u8, steps: &[Step], out: &[Outgoing], stats: &cable_core::Stats) {
    // What the server was sent, as it parses it.
    let mut subscribes: HashMap<String, usize> = HashMap::new();
    let mut unsubscribes: HashMap<String, usize> = HashMap::new();
    for text in steps.iter().filter_map(frame_text) {
        match cable_core::protocol::Command::parse(&text) {
            Ok(cable_core::protocol::Command::Subscribe { identifier, .. }) => {
                *subscribes.entry(identifier).or_default() += 1
            }
            Ok(cable_core::protocol::Command::Unsubscribe { identifier }) => {
                *unsubscribes.entry(identifier).or_default() += 1
            }
            _ => {}
        }
    }

    let closes = out
        .iter()
        .filter(|o| matches!(o, Outgoing::Close { .. }))
        .count();
    assert_eq!(closes, 1, "exactly one close: {out:?}");
    assert!(
        matches!(out.last(), Some(Outgoing::Close { .. })),
        "the close comes last: {out:?}"
    );

    let mut confirms: HashMap<String, usize> = HashMap::new();
    let mut answers: HashMap<String, usize> = HashMap::new();
    let frames: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Outgoing::Text(f) => Some(f.as_str()),
            Outgoing::Close { .. } => None,
        })
        .collect();
    for (i, text) in frames.iter().enumerate() {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("frame {text:?} is not JSON: {e}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("frame {text:?} is not an object"));
        match obj.get("type").and_then(Value::as_str) {
            Some("welcome") => assert_eq!(i, 0, "welcome first: {frames:?}"),
            Some("ping") => assert!(obj["message"].is_u64(), "{text}"),
            Some(kind @ ("confirm_subscription" | "reject_subscription")) => {
                let id = obj["identifier"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no identifier in {text}"));
                let id = id.to_owned();
                if kind == "confirm_subscription" {
                    *confirms.entry(id.clone()).or_default() += 1;
                }
                *answers.entry(id).or_default() += 1;
            }
            Some("disconnect") => {
                assert!(obj["reconnect"].is_boolean(), "{text}");
                assert!(
                    obj["reason"].is_string() || obj["reason"].is_null(),
                    "{text}"
                );
                assert_eq!(
                    i,
                    frames.len() - 1,
                    "disconnect is the last frame: {frames:?}"
                );
            }
            Some(other) => panic!("unknown frame type {other:?} in {text}"),
            None => {
                let id = obj["identifier"]
                    .as_str()
                    .unwrap_or_else(|| panic!("data frame without identifier: {text}"));
                assert!(obj.contains_key("message"), "{text}");
                assert_eq!(obj.len(), 2, "{text}");
                assert!(
                    subscribes.contains_key(id),
                    "data frame for {id:?}, never subscribed: {frames:?}"
                );
            }
        }
    }

    if flags & 1 == 0 {
        assert_eq!(
            frames,
            [r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#],
            "refused connection"
        );
    } else {
        let first = frames.first().copied().unwrap_or_default();
        assert!(
            first == r#"{"type":"welcome"}"#
                || first == r#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#,
            "first frame {first:?}"
        );
    }

    for (id, n) in &answers {
        let sent = subscribes.get(id).copied().unwrap_or(0);
        assert!(
            *n <= sent,
            "{id:?} answered {n} times for {sent} subscribes: {frames:?}"
        );
    }
    for (id, n) in &confirms {
        let unsent = unsubscribes.get(id).copied().unwrap_or(0);
        assert!(
            *n <= unsent + 1,
            "{id:?} confirmed {n} times with {unsent} unsubscribes: {frames:?}"
        );
    }

    assert_eq!(stats.connections, 0, "{stats:?}");
    assert_eq!(stats.subscriptions, 0, "{stats:?}");
    assert_eq!(stats.streams, 0, "{stats:?}");
}

fuzz_target!(|input: Input| run(input));
