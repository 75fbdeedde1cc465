//! `Command::parse` on arbitrary UTF-8, and the wire round trips that hang
//! off it: whatever parses must encode back into frames that are valid JSON
//! and carry the identifier unchanged; any JSON text re-encodes
//! (`cable_core::json::reencode`) to JSON that decodes to the same value.

#![no_main]

use cable_core::json;
use cable_core::protocol::{Command, CommandError};
use cable_core::protocol::Frame;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text);
});

fn check(text: &str) {
    let decoded = serde_json::from_str::<Value>(text);
    let parsed = Command::parse(text);

    // Errors agree with what serde_json makes of the text.
    match (&decoded, &parsed) {
        (Err(_), Err(CommandError::Malformed(_))) => {}
        (Err(e), other) => panic!("serde_json refused {text:?} ({e}) but parse gave {other:?}"),
        (Ok(Value::Object(_)), Err(CommandError::Malformed(_) | CommandError::NotAnObject)) => {
            panic!("an object was not parsed as one: {text:?}")
        }
        (Ok(v), Err(CommandError::Malformed(_))) => panic!("valid JSON {v} called malformed"),
        (Ok(v), Ok(_)) if !v.is_object() => panic!("a non-object became a command: {text:?}"),
        _ => {}
    }

    if let Ok(value) = &decoded {
        // Re-encoding any JSON value gives JSON meaning the same thing.
        let again = json::reencode(text).expect("valid JSON re-encodes");
        let back: Value = serde_json::from_str(&again).expect("re-encoded text is JSON");
        assert_eq!(&back, value, "reencode changed {text:?} into {again:?}");
        assert!(
            !again.contains(['<', '>', '&', '\u{2028}', '\u{2029}']),
            "unescaped character in {again:?}"
        );
    }

    let Ok(command) = parsed else {
        return;
    };
    let Ok(Value::Object(fields)) = &decoded else {
        unreachable!("checked above");
    };
    let (name, identifier) = match &command {
        Command::Subscribe { identifier, .. } => ("subscribe", identifier),
        Command::Unsubscribe { identifier } => ("unsubscribe", identifier),
        Command::Message { identifier, .. } => ("message", identifier),
        Command::History { identifier, .. } => ("history", identifier),
        _ => return,
    };
    assert_eq!(fields.get("command"), Some(&json!(name)));
    assert_eq!(fields.get("identifier"), Some(&json!(identifier)));
    if let Command::Message { data, .. } = &command {
        assert_eq!(data.as_ref(), fields.get("data"));
    }

    // The command re-encoded (as a client would send it) parses to itself.
    let mut resent = json!({"command": name, "identifier": identifier});
    if let Command::Message { data: Some(d), .. } = &command {
        resent["data"] = d.clone();
    }
    let resent = json::encode(&resent).expect("a Value encodes");
    assert_eq!(
        Command::parse(&resent).ok().as_ref(),
        Some(&command),
        "{resent}"
    );

    // Frames built for the identifier are JSON and carry it unchanged.
    let message = match &command {
        Command::Message { data: Some(d), .. } => json::encode(d).expect("a Value encodes"),
        _ => "null".to_owned(),
    };
    for frame in [
        Frame::confirm(identifier),
        Frame::reject(identifier),
        Frame::message(identifier, &message),
    ] {
        let v: Value = serde_json::from_str(frame.as_str())
            .unwrap_or_else(|e| panic!("frame {frame:?} is not JSON: {e}"));
        assert_eq!(v["identifier"].as_str(), Some(identifier.as_str()));
    }
}
