//! The `actioncable-v1-json` wire format: commands a client sends and the
//! frames a server sends, encoded with the exact bytes Rails emits.

use bytes::Bytes;
use serde_json::Value;

use crate::json;

/// The subprotocol every `@rails/actioncable` client offers first.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// The second protocol the JS client offers; choosing it tells the client the
/// server does not speak its protocol.
pub const UNSUPPORTED_SUBPROTOCOL: &str = "actioncable-unsupported";
/// The protocols a server accepts, in Rails' order.
pub const SERVER_SUBPROTOCOLS: [&str; 2] = [SUBPROTOCOL, UNSUPPORTED_SUBPROTOCOL];

/// Why a server ends a connection; sent as `reason` in a `disconnect` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The connection hook rejected the request (`reconnect: false`).
    Unauthorized,
    /// Rails' `invalid_request`, kept for completeness.
    InvalidRequest,
    /// The server is restarting or shutting down (`reconnect: true`).
    ServerRestart,
    /// A remote disconnect for this connection's identifiers arrived.
    Remote,
    /// The client did not read fast enough and its outbound queue overflowed.
    /// Not a Rails reason: AnyCable's, for the same situation.
    TooSlow,
    /// The client sent commands faster than the server's rate limit allows
    /// (`reconnect: true`). Not a Rails reason: cable's own.
    RateLimited,
}

impl DisconnectReason {
    /// The string that goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::InvalidRequest => "invalid_request",
            Self::ServerRestart => "server_restart",
            Self::Remote => "remote",
            Self::TooSlow => "too_slow",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// An encoded server frame: UTF-8 JSON text in a cheaply clonable buffer.
///
/// Invariant: the bytes are always valid UTF-8 (frames are only ever built
/// from `String`s), so transports may send them as text without checking.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    fn from_vec(v: Vec<u8>) -> Self {
        debug_assert!(std::str::from_utf8(&v).is_ok());
        Frame(Bytes::from(v))
    }

    fn from_static(s: &'static str) -> Self {
        Frame(Bytes::from_static(s.as_bytes()))
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Frames are only built from valid UTF-8 (see the type's invariant);
        // the fallback can never be taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The frame's bytes, valid UTF-8.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the frame is empty (never true for a frame built here).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `{"type":"welcome"}`
    pub fn welcome() -> Self {
        Self::from_static(r#"{"type":"welcome"}"#)
    }

    /// `{"type":"ping","message":<unix seconds>}`
    pub fn ping(unix_secs: u64) -> Self {
        Self::from_vec(format!(r#"{{"type":"ping","message":{unix_secs}}}"#).into_bytes())
    }

    /// `{"identifier":…,"type":"confirm_subscription"}`
    pub fn confirm(identifier: &str) -> Self {
        Self::with_identifier(identifier, r#","type":"confirm_subscription"}"#)
    }

    /// `{"identifier":…,"type":"reject_subscription"}`
    pub fn reject(identifier: &str) -> Self {
        Self::with_identifier(identifier, r#","type":"reject_subscription"}"#)
    }

    /// `{"type":"disconnect","reason":…,"reconnect":…}`
    pub fn disconnect(reason: Option<DisconnectReason>, reconnect: bool) -> Self {
        let reason = match reason {
            Some(r) => format!("\"{}\"", r.as_str()),
            None => "null".to_owned(),
        };
        Self::from_vec(
            format!(r#"{{"type":"disconnect","reason":{reason},"reconnect":{reconnect}}}"#)
                .into_bytes(),
        )
    }

    /// `{"identifier":…,"message":<message>}`, where `message_json` is already
    /// encoded JSON (see [`crate::json`]).
    pub fn message(identifier: &str, message_json: &str) -> Self {
        let mut out = Vec::with_capacity(identifier.len() + message_json.len() + 40);
        out.extend_from_slice(br#"{"identifier":"#);
        json::write_str(&mut out, identifier);
        out.extend_from_slice(br#","message":"#);
        out.extend_from_slice(message_json.as_bytes());
        out.push(b'}');
        Self::from_vec(out)
    }

    fn with_identifier(identifier: &str, tail: &str) -> Self {
        let mut out = Vec::with_capacity(identifier.len() + 48);
        out.extend_from_slice(br#"{"identifier":"#);
        json::write_str(&mut out, identifier);
        out.extend_from_slice(tail.as_bytes());
        Self::from_vec(out)
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Frame").field(&self.as_str()).finish()
    }
}

/// A command from the client.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `{"command":"subscribe","identifier":…}`
    Subscribe {
        /// The identifier string, exactly as sent.
        identifier: String,
    },
    /// `{"command":"unsubscribe","identifier":…}`
    Unsubscribe {
        /// The identifier string, exactly as sent.
        identifier: String,
    },
    /// `{"command":"message","identifier":…,"data":…}`
    Message {
        /// The identifier string, exactly as sent.
        identifier: String,
        /// The `data` field as sent; Rails requires a JSON string holding an object.
        data: Option<Value>,
    },
}

/// Why a text frame is not a command. Rails logs these and sends nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The frame is not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The frame is JSON but not an object.
    #[error("not a command object")]
    NotAnObject,
    /// `command` is missing or not one of subscribe, unsubscribe, message.
    #[error("unrecognized command")]
    Unrecognized,
    /// `identifier` is missing or not a string.
    #[error("identifier missing or not a string")]
    BadIdentifier,
}

impl Command {
    /// Parses one text frame.
    ///
    /// ```
    /// use cable_core::protocol::Command;
    /// let c = Command::parse(r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}"#).unwrap();
    /// assert_eq!(c, Command::Subscribe { identifier: r#"{"channel":"ChatChannel"}"#.into() });
    /// ```
    pub fn parse(text: &str) -> Result<Command, CommandError> {
        let mut map = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(CommandError::NotAnObject),
            Err(e) => return Err(CommandError::Malformed(e)),
        };
        let command = match map.remove("command") {
            Some(Value::String(s)) => s,
            _ => return Err(CommandError::Unrecognized),
        };
        if !matches!(command.as_str(), "subscribe" | "unsubscribe" | "message") {
            return Err(CommandError::Unrecognized);
        }
        let identifier = match map.remove("identifier") {
            Some(Value::String(s)) => s,
            _ => return Err(CommandError::BadIdentifier),
        };
        Ok(match command.as_str() {
            "subscribe" => Command::Subscribe { identifier },
            "unsubscribe" => Command::Unsubscribe { identifier },
            _ => Command::Message {
                identifier,
                data: map.remove("data"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_rails_bytes() {
        let id = r#"{"channel":"ChatChannel","room":"1"}"#;
        assert_eq!(Frame::welcome().as_str(), r#"{"type":"welcome"}"#);
        assert_eq!(
            Frame::ping(1718000000).as_str(),
            r#"{"type":"ping","message":1718000000}"#
        );
        assert_eq!(
            Frame::confirm(id).as_str(),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","type":"confirm_subscription"}"#
        );
        assert_eq!(
            Frame::reject(id).as_str(),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","type":"reject_subscription"}"#
        );
        assert_eq!(
            Frame::disconnect(Some(DisconnectReason::Unauthorized), false).as_str(),
            r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#
        );
        assert_eq!(
            Frame::disconnect(None, true).as_str(),
            r#"{"type":"disconnect","reason":null,"reconnect":true}"#
        );
        assert_eq!(
            Frame::message(id, r#"{"a":1}"#).as_str(),
            r#"{"identifier":"{\"channel\":\"ChatChannel\",\"room\":\"1\"}","message":{"a":1}}"#
        );
        // The identifier is escaped like any Rails string.
        assert_eq!(
            Frame::confirm(r#"{"channel":"C","x":"<&>"}"#).as_str(),
            r#"{"identifier":"{\"channel\":\"C\",\"x\":\"\u003c\u0026\u003e\"}","type":"confirm_subscription"}"#
        );
    }

    #[test]
    fn parses_and_classifies_commands() {
        assert!(matches!(
            Command::parse("{oops"),
            Err(CommandError::Malformed(_))
        ));
        assert!(matches!(
            Command::parse("[1,2]"),
            Err(CommandError::NotAnObject)
        ));
        assert!(matches!(
            Command::parse("42"),
            Err(CommandError::NotAnObject)
        ));
        assert!(matches!(
            Command::parse(r#"{"command":"dance","identifier":"x"}"#),
            Err(CommandError::Unrecognized)
        ));
        assert!(matches!(
            Command::parse(r#"{"identifier":"x"}"#),
            Err(CommandError::Unrecognized)
        ));
        assert!(matches!(
            Command::parse(r#"{"command":"subscribe","identifier":{"channel":"X"}}"#),
            Err(CommandError::BadIdentifier)
        ));
        assert_eq!(
            Command::parse(r#"{"command":"message","identifier":"i","data":"{}","extra":1}"#)
                .unwrap(),
            Command::Message {
                identifier: "i".into(),
                data: Some(Value::String("{}".into()))
            }
        );
    }
}
