//! Bounded property tests, run by every `cargo test` (a few thousand cases
//! in all, seconds in a debug build). They check what the cargo-fuzz targets
//! in `fuzz/` check, on inputs proptest makes: `Command::parse` never panics;
//! re-encoding any JSON value gives JSON that decodes to the same value; a
//! connection fed any sequence of frames and outside events answers in
//! well-formed frames, confirms or rejects at most once per subscribe, and
//! leaves no connection, subscription or stream behind.

use std::time::Duration;

use cable_core::json;
use cable_core::protocol::Command;
use cable_test::model::{self, Payload, Setup, Step, ACTIONS, IDENTIFIERS, STREAMS};
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
    let command = select(
        &[
            "subscribe",
            "unsubscribe",
            "message",
            "history",
            "ping",
            "pong",
            "dance",
            "",
        ][..],
    );
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
// A connection driven by generated steps: the test kit's model, which the
// fuzz target `connection_frames` drives too.

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
    let command = |name: &'static str| identifier().prop_map(move |id| Step::command(name, &id));
    prop_oneof![
        6 => command("subscribe"),
        2 => command("unsubscribe"),
        6 => (identifier(), data()).prop_map(|(id, data)| Step::message(&id, data)),
        1 => frame_text().prop_map(Step::Text),
        1 => (0usize..64).prop_map(Step::Binary),
        1 => Just(Step::TooLarge),
        2 => (0u64..30).prop_map(|n| Step::Sleep(Duration::from_millis(100 * n))),
        1 => Just(Step::Beat),
        2 => (stream(), prop_oneof![
            json_value().prop_map(Payload::Json),
            json_value().prop_map(|v| Payload::Raw(v.to_string())),
            text(8).prop_map(Payload::Raw),
            any::<bool>().prop_map(|r| Payload::Raw(format!(r#"{{"type":"disconnect","reconnect":{r}}}"#))),
        ]).prop_map(|(s, p)| Step::Broadcast(s, p)),
        1 => any::<bool>().prop_map(Step::RemoteDisconnect),
        1 => Just(Step::Shutdown),
    ]
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn a_connection_keeps_its_invariants(
        setup in setup(),
        steps in prop::collection::vec(step(), 0..40),
    ) {
        let run = model::run(setup, &steps);
        model::check(setup, &steps, &run).map_err(TestCaseError::fail)?;
    }
}

/// The generator reaches what it is meant to: subscriptions confirmed and
/// rejected, timers firing, broadcasts delivered, remote disconnects.
#[test]
fn the_connection_generator_reaches_every_path() {
    let setup = Setup {
        authorized: true,
        reject_unknown: true,
        ..Setup::default()
    };
    let speak = json!({"action": "speak", "body": "hi"}).to_string();
    let steps = vec![
        Step::subscribe(IDENTIFIERS[0]),
        Step::subscribe(IDENTIFIERS[2]),
        Step::subscribe(IDENTIFIERS[3]),
        Step::subscribe(r#"{"channel":"Nope"}"#),
        Step::message(IDENTIFIERS[0], Some(json!(speak))),
        Step::Sleep(Duration::from_millis(2500)),
        Step::Broadcast("room_a".into(), Payload::Raw(r#"{"x":1}"#.into())),
        Step::RemoteDisconnect(false),
    ];
    let run = model::run(setup, &steps);
    model::check(setup, &steps, &run).unwrap();
    let all: Vec<String> = run.out.iter().map(|o| format!("{o:?}")).collect();
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
