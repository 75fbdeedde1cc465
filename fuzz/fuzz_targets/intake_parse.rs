//! `cable_core::intake::Message::parse` (AnyCable's broadcast messages, as
//! every intake receives them) on arbitrary bytes: no panic; only JSON is
//! ever accepted; what parses is well formed (streams not empty, data JSON
//! text, no empty `exclude_socket`, identifiers not empty) and, re-encoded
//! in AnyCable's format, parses to itself; `exclude_by_default` fills in
//! exactly the publications that excluded none.

#![no_main]

use cable_core::intake::{Message, ParseError};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    check(data);
});

fn check(data: &[u8]) {
    let decoded = serde_json::from_slice::<Value>(data);
    let parsed = Message::parse(data);
    if decoded.is_err() {
        assert!(
            matches!(
                parsed,
                Err(ParseError::Malformed(_) | ParseError::NotUtf8(_))
            ),
            "not JSON, yet {parsed:?}"
        );
        return;
    }
    let Ok(message) = parsed else {
        return;
    };
    let again = match &message {
        Message::Broadcasts(all) => {
            let items: Vec<Value> = all
                .iter()
                .map(|b| {
                    assert!(!b.stream.is_empty());
                    serde_json::from_str::<Value>(&b.data).expect("data is JSON text");
                    assert_ne!(b.options.exclude_socket.as_deref(), Some(""));
                    json!({"stream": b.stream, "data": b.data, "meta": {
                        "exclude_socket": b.options.exclude_socket,
                        "transient": b.options.transient,
                        "broadcast_type": "fuzz",
                    }})
                })
                .collect();
            Value::Array(items)
        }
        Message::Disconnect(d) => {
            assert!(!d.identifiers.is_empty());
            let ids: serde_json::Map<String, Value> = d
                .identifiers
                .iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect();
            json!({"command": "disconnect", "payload": {
                "identifier": Value::Object(ids).to_string(),
                "reconnect": d.reconnect,
            }})
        }
        _ => return,
    };
    let text = again.to_string();
    match Message::parse(text.as_bytes()) {
        Ok(back) => assert_eq!(back, message, "{text}"),
        Err(e) => panic!("re-encoded {text} refused: {e:?}"),
    }

    let before = message.clone();
    let mut after = message;
    after.exclude_by_default("sid-fuzz");
    if let (Message::Broadcasts(was), Message::Broadcasts(now)) = (&before, &after) {
        for (w, n) in was.iter().zip(now) {
            let expected = w.options.exclude_socket.as_deref().unwrap_or("sid-fuzz");
            assert_eq!(n.options.exclude_socket.as_deref(), Some(expected));
            assert_eq!(
                (&w.stream, &w.data, w.options.transient),
                (&n.stream, &n.data, n.options.transient)
            );
        }
    } else {
        assert_eq!(before, after);
    }
}
