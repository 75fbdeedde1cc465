//! The SSE transport's parsers and encoder (`cable_server::sse_fuzzing`)
//! on arbitrary input: no panic; a subscribe built from a query is a JSON
//! `subscribe` command with a string identifier, and a `Last-Event-ID`
//! that parses becomes that stream's position; a POST body's commands are
//! JSON objects; an encoded frame, read back with the SSE spec's line
//! rules (CR, LF and CRLF all end a line), is at most one event, holds only
//! the fields cable writes, and its data is the frame's text (or its
//! message's) with the line ends made LF.

#![no_main]

use arbitrary::Arbitrary;
use cable_server::sse_fuzzing;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    query: &'a str,
    last_event_id: Option<&'a str>,
    body: &'a [u8],
    frame: &'a str,
    message: &'a str,
    mode: u8,
}

fuzz_target!(|input: Input| {
    check_query(input.query, input.last_event_id);
    if let Ok(commands) = sse_fuzzing::commands(input.body) {
        assert!(!commands.is_empty());
        for c in commands {
            assert!(matches!(serde_json::from_str::<Value>(&c), Ok(Value::Object(_))), "{c}");
        }
    }
    check_encode(input.frame, input.mode);
    // A broadcast whose message is arbitrary text, as a chat's would be.
    let frame = serde_json::json!({"identifier": "i", "message": input.message}).to_string();
    let events = check_encode(&frame, 0);
    if let [(_, data)] = events.as_slice() {
        let normalized = input.message.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(data, &normalized);
    }
});

fn check_query(query: &str, last_event_id: Option<&str>) {
    let Ok(command) = sse_fuzzing::subscribe(query, last_event_id) else {
        return;
    };
    let v: Value = serde_json::from_str(&command).expect("the command is JSON");
    assert_eq!(v["command"], "subscribe");
    assert!(v["identifier"].is_string(), "{command}");
    if let Some(id) = last_event_id.filter(|id| !id.is_empty()) {
        let stream = id.splitn(3, '/').nth(2).expect("a position parsed");
        assert!(v["history"]["streams"][stream]["offset"].is_u64(), "{command}");
    }
}

/// The events in `frame`'s SSE text, as a browser reads them: (event name,
/// data).
fn check_encode(frame: &str, mode: u8) -> Vec<(Option<String>, String)> {
    let text = sse_fuzzing::encode(frame, mode);
    let mut events = Vec::new();
    let (mut event, mut data, mut any) = (None, Vec::new(), false);
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in normalized.split('\n') {
        if line.is_empty() {
            if any {
                events.push((event.take(), data.join("\n")));
                data.clear();
                any = false;
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => data.push(value.to_owned()),
            "id" | "retry" => {}
            other => panic!("field {other:?} in {text:?}"),
        }
        any = true;
    }
    assert!(!any, "an event left open: {text:?}");
    assert!(events.len() <= 1, "one frame, {} events: {text:?}", events.len());
    events
}
