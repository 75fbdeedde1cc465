//! `#[channel]` and `#[action]` (issue 18): dispatch by name with typed,
//! serde-decoded data, driven through the test kit as a client would; the
//! errors and log lines of an unknown action and of data that does not
//! decode; and the compile errors of the mistakes a user can make
//! (trybuild, `tests/ui`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use cable_core::{async_trait, channel, Cable, Channel, ChannelResult, Context, Identifiers};
use cable_test::TestCable;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Speak {
    body: String,
    #[serde(default)]
    loud: bool,
}

#[derive(Default)]
struct ChatChannel {
    said: usize,
}

#[channel]
#[async_trait]
impl Channel for ChatChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        ctx.stream_from("chat");
        Ok(())
    }

    #[action]
    async fn speak(&mut self, ctx: &mut Context<'_>, data: Speak) -> ChannelResult {
        self.said += 1;
        let body = if data.loud {
            data.body.to_uppercase()
        } else {
            data.body
        };
        ctx.broadcast("chat", &json!({ "body": body, "n": self.said }))
            .await
    }

    #[action(name = "sendTyping")]
    async fn typing(&mut self, ctx: &mut Context<'_>) -> ChannelResult {
        ctx.transmit(&json!({ "typing": true }))
    }

    /// Rails' `receive(data)`: a `send` without an action.
    #[action]
    async fn receive(&mut self, ctx: &mut Context<'_>, data: serde_json::Value) -> ChannelResult {
        ctx.transmit(&json!({ "echo": data }))
    }
}

/// Log lines written while `f` runs (this thread's tracing output).
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || Logs(writer.clone()))
        .finish();
    (buf, tracing::subscriber::set_default(subscriber))
}

fn text(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

#[tokio::test]
async fn actions_run_with_typed_data_and_tell_their_errors_apart() {
    let (logs, _guard) = capture();
    let cable = TestCable::new(Cable::builder().channel("ChatChannel", ChatChannel::default));
    let conn = cable.stub_connection(Identifiers::new()).await;
    let sub = conn.subscribe("ChatChannel", json!({})).await;
    sub.assert_confirmed();

    sub.perform("speak", json!({"body": "hi"})).await;
    sub.perform("speak", json!({"body": "hey", "loud": true}))
        .await;
    assert_eq!(
        cable.broadcasts().on("chat"),
        [
            json!({"body": "hi", "n": 1}),
            json!({"body": "HEY", "n": 2})
        ]
    );
    // Renamed: the client's name, not the method's.
    sub.perform("sendTyping", json!({})).await;
    sub.perform("typing", json!({})).await;
    // Data that does not decode: the action does not run, and the log
    // says why (not "could not encode JSON").
    sub.perform("speak", json!({"body": 7})).await;
    sub.perform("speak", json!({})).await;
    assert_eq!(cable.broadcasts().on("chat").len(), 2, "speak did not run");
    let transmitted = sub.transmissions();
    assert!(
        transmitted.contains(&json!({"typing": true})),
        "{transmitted:?}"
    );
    assert_eq!(
        transmitted
            .iter()
            .filter(|t| t.get("typing").is_some())
            .count(),
        1,
        "`typing` is no action name: {transmitted:?}"
    );

    let log = text(&logs);
    assert!(
        log.contains(r#"Unable to process ChatChannel#"typing"("#),
        "an unknown action is Rails' line: {log}"
    );
    assert!(
        log.contains(
            r#"[ChatChannel#"speak": invalid data: invalid type: integer `7`, expected a string (action `speak` takes Speak)]"#
        ),
        "{log}"
    );
    assert!(
        log.contains(r#"[ChatChannel#"speak": invalid data: missing field `body` (action `speak` takes Speak)]"#),
        "{log}"
    );
    assert!(!log.contains("could not encode JSON"), "{log}");
}

#[tokio::test]
async fn receive_takes_what_a_send_without_an_action_sends() {
    let cable = TestCable::new(Cable::builder().channel("ChatChannel", ChatChannel::default));
    let conn = cable.stub_connection(Identifiers::new()).await;
    let sub = conn.subscribe("ChatChannel", json!({})).await;
    // The kit's perform names the action; `receive` is the name Rails gives
    // data without one.
    sub.perform("receive", json!({"x": 1})).await;
    assert_eq!(sub.transmissions(), [json!({"echo": {"x": 1}})]);
}

/// The mistakes a user can make, each with the message it gets
/// (`tests/ui/*.stderr`; `TRYBUILD=overwrite` writes them anew).
#[test]
fn mistakes_fail_to_compile_with_these_messages() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
