//! One connection driven by a list of [`Step`]s, and the invariants it must
//! keep whatever the steps are: what the property tests of `cable-core` and
//! the cargo-fuzz target `connection_frames` share. They differ only in how
//! they make the steps.
//!
//! The cable ([`model_cable`]) has the [`RoomChannel`] and the
//! [`EchoChannel`]; time is paused, so timers cost nothing. [`check`] holds a
//! run to these invariants: every text frame is a JSON object of a known
//! shape; the outbox ends with exactly one close; the welcome comes first and
//! a disconnect last; an identifier is confirmed or rejected at most once per
//! subscribe command, and confirmed at most once more than it was
//! unsubscribed; data frames only name identifiers the client subscribed
//! with; afterwards `cable.stats()` shows no connection, subscription or
//! stream.
//!
//! ```
//! use cable_test::model::{self, Setup, Step};
//!
//! let setup = Setup { authorized: true, ..Setup::default() };
//! let id = model::IDENTIFIERS[0];
//! let steps = vec![Step::subscribe(id), Step::Beat, Step::Shutdown];
//! let run = model::run(setup, &steps);
//! model::check(setup, &steps, &run).unwrap();
//! ```

use std::collections::HashMap;
use std::time::Duration;

use cable_core::protocol::Command;
use cable_core::transport::{self, Inbound, Outgoing};
use cable_core::{
    authenticate_with, Cable, CableConfig, ConnectRequest, Identifiers, Stats, Unauthorized,
};
use serde_json::{json, Value};

pub use crate::channels::{EchoChannel, RoomChannel};

/// Identifiers worth trying: valid, reordered, rejecting, failing, ticking,
/// with characters Rails escapes, unknown channels and broken ones.
pub const IDENTIFIERS: &[&str] = &[
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
    "[1,2]",
    "not json",
    "",
];

/// Streams that actions and outside broadcasts name.
pub const STREAMS: &[&str] = &[
    "room_a",
    "room_b",
    "room_lobby",
    "room_<&>\u{2028}",
    "action_cable/alice",
    "elsewhere",
    "",
];

/// The actions of the [`RoomChannel`], and one it does not know.
pub const ACTIONS: &[&str] = &[
    "speak", "shout", "echo", "follow", "unfollow", "stop_all", "tick", "big", "fail", "what",
];

/// How the cable and the connection are set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// The connection is accepted as alice (else refused).
    pub authorized: bool,
    /// `reject_unknown_channels`.
    pub reject_unknown: bool,
    /// A 400-byte outbound queue: a subscriber soon too slow.
    pub tiny_queue: bool,
    /// At most two subscriptions.
    pub two_subscriptions: bool,
    /// The writer drains the outbox only after the session has ended.
    pub drain_late: bool,
}

impl Setup {
    /// From bits, as a fuzzer hands them out: bit 0 authorized, bit 1
    /// reject_unknown, bits 2 and 6 together tiny_queue, bit 3
    /// two_subscriptions, bit 4 drain_late.
    pub fn from_bits(bits: u8) -> Self {
        Self {
            authorized: bits & 1 != 0,
            reject_unknown: bits & 2 != 0,
            tiny_queue: bits & 0x44 == 0x44,
            two_subscriptions: bits & 8 != 0,
            drain_late: bits & 16 != 0,
        }
    }
}

/// What an outside broadcast carries.
#[derive(Clone, Debug)]
pub enum Payload {
    /// A value, encoded by the cable.
    Json(Value),
    /// Text published as it is (perhaps not JSON, perhaps a disconnect).
    Raw(String),
}

/// One thing that happens to the connection.
#[derive(Clone, Debug)]
pub enum Step {
    /// A text frame from the client.
    Text(String),
    /// A binary frame of this many bytes.
    Binary(usize),
    /// A message over the transport's size limit.
    TooLarge,
    /// Time passes (timers fire meanwhile).
    Sleep(Duration),
    /// The server's heartbeat.
    Beat,
    /// A broadcast on a stream, from outside the connection.
    Broadcast(String, Payload),
    /// Rails' remote disconnect of alice, with `reconnect`.
    RemoteDisconnect(bool),
    /// The server begins to shut down.
    Shutdown,
}

impl Step {
    /// A subscribe command for `identifier`.
    pub fn subscribe(identifier: &str) -> Self {
        Self::command("subscribe", identifier)
    }

    /// A command without data.
    pub fn command(command: &str, identifier: &str) -> Self {
        Self::Text(json!({"command": command, "identifier": identifier}).to_string())
    }

    /// A message command; `data` as given (the JS client sends a string
    /// holding JSON), or none.
    pub fn message(identifier: &str, data: Option<Value>) -> Self {
        let mut c = json!({"command": "message", "identifier": identifier});
        if let Some(d) = data {
            c["data"] = d;
        }
        Self::Text(c.to_string())
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Run {
    /// Everything the connection put in its outbox, in order.
    pub out: Vec<Outgoing>,
    /// The cable's stats after the connection ended.
    pub stats: Stats,
}

impl Run {
    /// The text frames, in order.
    pub fn frames(&self) -> Vec<&str> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Text(f) => Some(f.as_str()),
                Outgoing::Close { .. } => None,
            })
            .collect()
    }
}

/// The model's cable: [`RoomChannel`] and [`EchoChannel`], a connect hook
/// that takes `?user=`, and `setup`'s limits.
pub fn model_cable(setup: Setup) -> Cable {
    let mut config = CableConfig::default();
    config.reject_unknown_channels = setup.reject_unknown;
    if setup.tiny_queue {
        config.outbound_queue_bytes = 400;
    }
    if setup.two_subscriptions {
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

/// Runs one connection through `steps` on a fresh current-thread runtime
/// with time paused. The client hangs up after the last step.
pub fn run(setup: Setup, steps: &[Step]) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(drive(setup, steps.to_vec()))
}

async fn drive(setup: Setup, steps: Vec<Step>) -> Run {
    let cable = model_cable(setup);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let inbound = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let outbox = transport::new_outbox(&cable);
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
            // A send fails once the session has ended: nothing to do then.
            match step {
                Step::Text(t) => drop(tx.send(Inbound::Text(t))),
                Step::Binary(n) => drop(tx.send(Inbound::Binary(n))),
                Step::TooLarge => drop(tx.send(Inbound::TooLarge {
                    size: 70_000,
                    max: 65_536,
                })),
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Beat => drop(transport::beat(&c)),
                Step::Broadcast(s, Payload::Json(v)) => drop(c.broadcast(&s, &v).await),
                Step::Broadcast(s, Payload::Raw(p)) => {
                    drop(c.broadcaster().broadcast_raw(&s, &p).await)
                }
                Step::RemoteDisconnect(r) => {
                    let ids = Identifiers::new().with("current_user", "alice");
                    drop(c.remote_disconnect(&ids, r).await);
                }
                Step::Shutdown => transport::begin_shutdown(&c),
            }
            // Let the session catch up, so outside events land between frames.
            tokio::task::yield_now().await;
        }
        // Dropping the sender ends the inbound stream: the client hangs up.
    });

    transport::run_connection(&cable, request, inbound, outbox).await;
    let _ = go.send(());
    let out = writer.await.unwrap_or_default();
    // The feeder may still be sleeping; it has nothing left to deliver.
    feeder.abort();
    let _ = feeder.await;
    // Let spawned unsubscribe acknowledgements run.
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
    Run {
        out,
        stats: cable.stats(),
    }
}

/// Holds `run` to the invariants (see the [module docs](self)); the error
/// says which one broke and shows the frames.
pub fn check(setup: Setup, steps: &[Step], run: &Run) -> Result<(), String> {
    let mut subscribes: HashMap<String, usize> = HashMap::new();
    let mut unsubscribes: HashMap<String, usize> = HashMap::new();
    for step in steps {
        let Step::Text(t) = step else { continue };
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
    let out = &run.out;
    let closes = out
        .iter()
        .filter(|o| matches!(o, Outgoing::Close { .. }))
        .count();
    ensure(closes == 1, || format!("exactly one close: {out:?}"))?;
    ensure(matches!(out.last(), Some(Outgoing::Close { .. })), || {
        format!("the close comes last: {out:?}")
    })?;

    let frames = run.frames();
    let mut confirms: HashMap<&str, usize> = HashMap::new();
    let mut answers: HashMap<&str, usize> = HashMap::new();
    let values: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(f).map_err(|e| format!("frame {f:?} is not JSON: {e}")))
        .collect::<Result<_, _>>()?;
    for (i, (frame, v)) in frames.iter().zip(&values).enumerate() {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("frame {frame:?} is not an object"))?;
        let identifier = obj.get("identifier").and_then(Value::as_str);
        match obj.get("type").and_then(Value::as_str) {
            Some("welcome") => ensure(i == 0, || format!("welcome first: {frames:?}"))?,
            Some("ping") => ensure(obj["message"].is_u64(), || frame.to_string())?,
            // The answer to a client's ping (AnyCable's extension).
            Some("pong") => ensure(obj.len() == 1, || frame.to_string())?,
            // A history command's answer (AnyCable's extension); the model
            // keeps no history, so a request is rejected.
            Some("confirm_history" | "reject_history") => {
                ensure(identifier.is_some(), || format!("no identifier in {frame}"))?
            }
            Some(kind @ ("confirm_subscription" | "reject_subscription")) => {
                let id = identifier.ok_or_else(|| format!("no identifier in {frame}"))?;
                if kind == "confirm_subscription" {
                    *confirms.entry(id).or_default() += 1;
                }
                *answers.entry(id).or_default() += 1;
            }
            Some("disconnect") => {
                ensure(obj["reconnect"].is_boolean(), || frame.to_string())?;
                ensure(obj["reason"].is_string() || obj["reason"].is_null(), || {
                    frame.to_string()
                })?;
                ensure(i == frames.len() - 1, || {
                    format!("disconnect is the last frame: {frames:?}")
                })?;
            }
            Some(other) => return Err(format!("unknown frame type {other:?} in {frame}")),
            None => {
                let id =
                    identifier.ok_or_else(|| format!("data frame without identifier: {frame}"))?;
                ensure(obj.contains_key("message") && obj.len() == 2, || {
                    frame.to_string()
                })?;
                ensure(subscribes.contains_key(id), || {
                    format!("data frame for {id:?}, never subscribed: {frames:?}")
                })?;
            }
        }
    }

    if setup.authorized {
        let first = frames.first().copied().unwrap_or_default();
        ensure(
            first == r#"{"type":"welcome"}"#
                || first == r#"{"type":"disconnect","reason":"too_slow","reconnect":true}"#,
            || format!("first frame {first:?}"),
        )?;
    } else {
        ensure(
            frames == [r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#],
            || format!("refused connection: {frames:?}"),
        )?;
    }
    for (id, n) in &answers {
        let sent = subscribes.get(*id).copied().unwrap_or(0);
        ensure(*n <= sent, || {
            format!("{id:?} answered {n} times for {sent} subscribes: {frames:?}")
        })?;
    }
    for (id, n) in &confirms {
        let unsent = unsubscribes.get(*id).copied().unwrap_or(0);
        ensure(*n <= unsent + 1, || {
            format!("{id:?} confirmed {n} times with {unsent} unsubscribes: {frames:?}")
        })?;
    }
    let stats = &run.stats;
    ensure(
        stats.connections == 0 && stats.subscriptions == 0 && stats.streams == 0,
        || format!("everything released: {stats:?}"),
    )
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}
