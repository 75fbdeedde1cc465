//! The frames an ActionCable server sends, byte for byte as Rails encodes
//! them (key order, the identifier as a JSON string).
//!
//! ```
//! use cable_test::frames;
//! let id = r#"{"channel":"ChatChannel","room":"1"}"#;
//! assert_eq!(
//!     frames::confirm(id),
//!     r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","type":"confirm_subscription"}"#
//! );
//! assert_eq!(frames::WELCOME, r#"{"type":"welcome"}"#);
//! ```

/// The welcome frame.
pub const WELCOME: &str = r#"{"type":"welcome"}"#;

/// `identifier` encoded as a JSON string.
fn quoted(identifier: &str) -> String {
    serde_json::Value::from(identifier).to_string()
}

/// `confirm_subscription` for `identifier`.
pub fn confirm(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        quoted(identifier)
    )
}

/// `reject_subscription` for `identifier`.
pub fn reject(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        quoted(identifier)
    )
}

/// A data frame for `identifier` carrying `message_json` (JSON text, as the
/// server encodes it).
pub fn message(identifier: &str, message_json: &str) -> String {
    format!(
        r#"{{"identifier":{},"message":{message_json}}}"#,
        quoted(identifier)
    )
}

/// A `disconnect` frame.
pub fn disconnect(reason: &str, reconnect: bool) -> String {
    format!(r#"{{"type":"disconnect","reason":"{reason}","reconnect":{reconnect}}}"#)
}

/// Whether `frame` is a heartbeat ping.
pub fn is_ping(frame: &str) -> bool {
    frame.starts_with(r#"{"type":"ping""#)
}
