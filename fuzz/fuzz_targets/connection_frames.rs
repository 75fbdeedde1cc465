//! One connection of a `Cable`, driven by steps decoded from the fuzz input:
//! text frames biased towards commands that look valid (subscribe /
//! unsubscribe / message with identifiers from a small set), garbage text,
//! binary frames, oversized messages, pauses that let `periodically` timers
//! fire, and events from outside the connection (heartbeat, broadcasts,
//! remote disconnect, shutdown).
//!
//! The connection, its channels and the invariants checked are the test
//! kit's model (`cable_test::model`), which the property tests of cable-core
//! drive too: no panic; every text frame is a JSON object of a known shape;
//! the outbox ends with exactly one close; an identifier is confirmed or
//! rejected at most once per subscribe command; data frames only name
//! identifiers the client subscribed with; nothing is left behind.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use cable_test::model::{self, Payload as ModelPayload, Setup, Step as ModelStep, IDENTIFIERS, STREAMS};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[derive(Arbitrary, Clone, Debug)]
struct Input {
    /// Bits as `Setup::from_bits` reads them.
    flags: u8,
    steps: Vec<Step>,
}

/// An entry of one of the model's lists (index modulo its length), or any
/// text.
#[derive(Arbitrary, Clone, Debug)]
enum Pick {
    Known(u8),
    Other(String),
}

impl Pick {
    fn from(&self, list: &[&str]) -> String {
        match self {
            Pick::Known(i) => list[*i as usize % list.len()].to_owned(),
            Pick::Other(s) => s.clone(),
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
        stream: Pick,
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
    Subscribe(Pick),
    Unsubscribe(Pick),
    Message(Pick, Data),
    /// Another command name, or none.
    Command(String, Pick),
    Garbage(String),
    Binary(u16),
    TooLarge,
    /// Sleep this many 100 ms (timers fire meanwhile).
    Sleep(u8),
    Beat,
    Broadcast(Pick, Payload),
    RemoteDisconnect(bool),
    Shutdown,
}

fn action_json(action: &Action, stream: &Pick, n: u16, body: &str) -> Value {
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
    json!({"action": name, "stream": stream.from(STREAMS), "n": n, "body": body})
}

/// The model's step for a fuzzer's step.
fn model_step(step: &Step) -> ModelStep {
    let id = |p: &Pick| p.from(IDENTIFIERS);
    match step {
        Step::Subscribe(i) => ModelStep::command("subscribe", &id(i)),
        Step::Unsubscribe(i) => ModelStep::command("unsubscribe", &id(i)),
        Step::Message(i, data) => ModelStep::message(
            &id(i),
            match data {
                Data::Action {
                    action,
                    stream,
                    n,
                    body,
                } => Some(json!(action_json(action, stream, *n, body).to_string())),
                Data::Object(action) => Some(action_json(action, &Pick::Known(0), 1, "x")),
                Data::Text(s) => Some(json!(s)),
                Data::Missing => None,
            },
        ),
        Step::Command(name, i) => ModelStep::command(name, &id(i)),
        Step::Garbage(s) => ModelStep::Text(s.clone()),
        Step::Binary(n) => ModelStep::Binary(*n as usize),
        Step::TooLarge => ModelStep::TooLarge,
        Step::Sleep(n) => ModelStep::Sleep(Duration::from_millis(100 * (*n as u64 % 50))),
        Step::Beat => ModelStep::Beat,
        Step::Broadcast(stream, payload) => ModelStep::Broadcast(
            stream.from(STREAMS),
            match payload {
                Payload::Json(s) => ModelPayload::Json(json!({"news": s})),
                Payload::Raw(s) => ModelPayload::Raw(s.clone()),
                Payload::Disconnect(r) => {
                    ModelPayload::Raw(format!(r#"{{"type":"disconnect","reconnect":{r}}}"#))
                }
            },
        ),
        Step::RemoteDisconnect(r) => ModelStep::RemoteDisconnect(*r),
        Step::Shutdown => ModelStep::Shutdown,
    }
}

/// `CABLE_FUZZ_DEBUG=1` prints each input's steps and frames (to see what a
/// corpus entry does: run the target binary on that file).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("CABLE_FUZZ_DEBUG").is_some())
}

fn run(input: Input) {
    let setup = Setup::from_bits(input.flags);
    let steps: Vec<ModelStep> = input.steps.iter().take(256).map(model_step).collect();
    let run = model::run(setup, &steps);
    if debug() {
        eprintln!("setup {setup:?}\nsteps {steps:#?}");
        for o in &run.out {
            eprintln!("  out {o:?}");
        }
        eprintln!("stats {:?}", run.stats);
    }
    if let Err(broken) = model::check(setup, &steps, &run) {
        panic!("{broken}");
    }
}

fuzz_target!(|input: Input| run(input));
