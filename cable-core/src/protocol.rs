//! The `actioncable-v1-json` wire format: commands a client sends and the
//! frames a server sends, encoded with the exact bytes Rails emits.

use bytes::Bytes;
use serde_json::Value;

use crate::broker::Position;
use crate::json;

/// The subprotocol every `@rails/actioncable` client offers first.
pub const SUBPROTOCOL: &str = "actioncable-v1-json";
/// AnyCable's extended protocol (`@anycable/web`'s `actioncable-v1-ext-json`):
/// session ids and resume, stream positions and history, pongs.
pub const EXT_SUBPROTOCOL: &str = "actioncable-v1-ext-json";
/// The second protocol the JS client offers; choosing it tells the client the
/// server does not speak its protocol.
pub const UNSUPPORTED_SUBPROTOCOL: &str = "actioncable-unsupported";
/// The protocols a server accepts. The client's order of preference
/// decides among them (the first it offers that is here wins).
pub const SERVER_SUBPROTOCOLS: [&str; 3] = [SUBPROTOCOL, EXT_SUBPROTOCOL, UNSUPPORTED_SUBPROTOCOL];

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
    /// The client sent nothing (no pong) within the pong timeout, extended
    /// protocol only (`reconnect: true`). AnyCable's reason.
    NoPong,
    /// The connection's token has expired (`reconnect: false`): AnyCable's
    /// reason for an expired JWT, on which `@anycable/web`'s token
    /// refresher fetches a new one.
    TokenExpired,
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
            Self::NoPong => "no_pong",
            Self::TokenExpired => "token_expired",
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

    /// The frame's bytes, valid UTF-8 (no check: what a transport writes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
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

    /// `{"type":"welcome","sid":…}`, the extended protocol's welcome; with
    /// `restored`, `,"restored":true,"restored_ids":[…]` follows.
    pub fn welcome_ext(sid: &str, restored: Option<&[&str]>) -> Self {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(br#"{"type":"welcome","sid":"#);
        json::write_str(&mut out, sid);
        if let Some(ids) = restored {
            out.extend_from_slice(br#","restored":true,"restored_ids":["#);
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::write_str(&mut out, id);
            }
            out.push(b']');
        }
        out.push(b'}');
        Self::from_vec(out)
    }

    /// `{"type":"pong"}`, the answer to a client's `ping` command.
    pub fn pong() -> Self {
        Self::from_static(r#"{"type":"pong"}"#)
    }

    /// `{"type":"confirm_history","identifier":…}`
    pub fn confirm_history(identifier: &str) -> Self {
        Self::typed("confirm_history", identifier)
    }

    /// `{"type":"reject_history","identifier":…}`
    pub fn reject_history(identifier: &str) -> Self {
        Self::typed("reject_history", identifier)
    }

    fn typed(kind: &str, identifier: &str) -> Self {
        let mut out = Vec::with_capacity(identifier.len() + 48);
        out.extend_from_slice(br#"{"type":""#);
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(br#"","identifier":"#);
        json::write_str(&mut out, identifier);
        out.push(b'}');
        Self::from_vec(out)
    }

    /// A broadcast with its place in the stream's history:
    /// `{"identifier":…,"message":…,"stream_id":…,"epoch":…,"offset":…}`
    /// (AnyCable's order). An offset of 0 is left out, as AnyCable does.
    pub fn message_at(
        identifier: &str,
        message_json: &str,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Self {
        let mut out = Vec::with_capacity(identifier.len() + message_json.len() + stream.len() + 80);
        out.extend_from_slice(br#"{"identifier":"#);
        json::write_str(&mut out, identifier);
        out.extend_from_slice(br#","message":"#);
        out.extend_from_slice(message_json.as_bytes());
        out.extend_from_slice(br#","stream_id":"#);
        json::write_str(&mut out, stream);
        out.extend_from_slice(br#","epoch":"#);
        json::write_str(&mut out, epoch);
        if offset > 0 {
            out.extend_from_slice(format!(r#","offset":{offset}"#).as_bytes());
        }
        out.push(b'}');
        Self::from_vec(out)
    }

    /// `{"type":"presence","identifier":…,"message":<message>}` (AnyCable's
    /// presence events and info replies), `message_json` already encoded.
    pub fn presence(identifier: &str, message_json: &str) -> Self {
        let mut out = Vec::with_capacity(identifier.len() + message_json.len() + 48);
        out.extend_from_slice(br#"{"type":"presence","identifier":"#);
        json::write_str(&mut out, identifier);
        out.extend_from_slice(br#","message":"#);
        out.extend_from_slice(message_json.as_bytes());
        out.push(b'}');
        Self::from_vec(out)
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
#[non_exhaustive]
pub enum Command {
    /// `{"command":"subscribe","identifier":…}`, with the extended
    /// protocol's optional `history` (served after the confirmation).
    Subscribe {
        /// The identifier string, exactly as sent.
        identifier: String,
        /// What the client missed and wants replayed, if it asked.
        history: Option<HistoryRequest>,
        /// The presence it joins with once confirmed (`@anycable/web`
        /// resubscribing), if any.
        presence: Option<PresenceJoin>,
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
    /// `{"command":"history","identifier":…,"history":{"since":…,"streams":{…}}}`
    /// (AnyCable's extended protocol).
    History {
        /// The identifier string, exactly as sent.
        identifier: String,
        /// What to replay.
        history: HistoryRequest,
    },
    /// `{"command":"whisper","identifier":…,"data":{…}}` (AnyCable): `data`
    /// (any JSON, not stringified) goes to the subscription's whisper stream,
    /// to everyone but the sender.
    Whisper {
        /// The identifier string, exactly as sent.
        identifier: String,
        /// The `data` field as sent (`null` when absent).
        data: Value,
    },
    /// `{"command":"join","identifier":…,"presence":{"id":…,"info":…}}`
    /// (AnyCable): the session joins the subscription's presence stream.
    Join {
        /// The identifier string, exactly as sent.
        identifier: String,
        /// Who joins.
        presence: PresenceJoin,
    },
    /// `{"command":"leave","identifier":…}` (AnyCable): the session leaves
    /// the subscription's presence stream.
    Leave {
        /// The identifier string, exactly as sent.
        identifier: String,
    },
    /// `{"command":"presence","identifier":…,"data":{…}}` (AnyCable): asks
    /// who is present on the subscription's presence stream.
    PresenceInfo {
        /// The identifier string, exactly as sent.
        identifier: String,
    },
    /// `{"command":"ping"}`: answered with `{"type":"pong"}`.
    Ping,
    /// `{"command":"pong"}`: the client is alive (resets the pong timeout).
    Pong,
}

/// A presence join: `{"id":…,"info":…}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceJoin {
    /// The member id (a string; a number is taken as its digits).
    pub id: String,
    /// What others see of this member (`null` when absent).
    pub info: Value,
}

impl PresenceJoin {
    fn parse(v: Option<Value>) -> Option<PresenceJoin> {
        let Some(Value::Object(mut p)) = v else {
            return None;
        };
        let id = match p.remove("id") {
            Some(Value::String(id)) if !id.is_empty() => id,
            Some(Value::Number(n)) => n.to_string(),
            _ => return None,
        };
        Some(PresenceJoin {
            id,
            info: p.remove("info").unwrap_or(Value::Null),
        })
    }
}

/// What a client asks to have replayed: per stream, the entries after a
/// position it holds; for the other streams of the subscription, those
/// since a time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Unix seconds; entries at or after it, for streams not in `streams`.
    pub since: Option<u64>,
    /// The last position the client holds, per stream.
    pub streams: Vec<(String, Position)>,
}

impl HistoryRequest {
    /// Reads a `history` object; `None` when it asks for nothing (neither
    /// a positive `since` nor a stream) or is malformed.
    fn parse(v: &Value) -> Option<HistoryRequest> {
        let map = v.as_object()?;
        let since = match map.get("since") {
            None | Some(Value::Null) => None,
            Some(n) => Some(
                n.as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?,
            ),
        }
        .filter(|s| *s > 0);
        let mut streams = Vec::new();
        match map.get("streams") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (stream, pos) in m {
                    let epoch = pos.get("epoch")?.as_str()?.to_owned();
                    let offset = pos.get("offset")?.as_u64()?;
                    streams.push((stream.clone(), Position { epoch, offset }));
                }
            }
            Some(_) => return None,
        }
        (since.is_some() || !streams.is_empty()).then_some(HistoryRequest { since, streams })
    }
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
    /// `command` is missing or not one this server knows.
    #[error("unrecognized command")]
    Unrecognized,
    /// `identifier` is missing or not a string.
    #[error("identifier missing or not a string")]
    BadIdentifier,
    /// A `history` command without a usable `history` (neither `since` nor
    /// `streams`, or malformed): no reply, as AnyCable.
    #[error("history request has neither since nor streams, or is malformed")]
    BadHistory,
    /// A `join` without a `presence` object holding a non-empty `id`.
    #[error("join without presence.id")]
    BadPresence,
}

impl Command {
    /// Parses one text frame.
    ///
    /// ```
    /// use cable_core::protocol::Command;
    /// let c = Command::parse(r#"{"command":"subscribe","identifier":"{\"channel\":\"ChatChannel\"}"}"#).unwrap();
    /// assert_eq!(c, Command::Subscribe { identifier: r#"{"channel":"ChatChannel"}"#.into(), history: None, presence: None });
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
        match command.as_str() {
            "ping" => return Ok(Command::Ping),
            "pong" => return Ok(Command::Pong),
            "subscribe" | "unsubscribe" | "message" | "history" | "whisper" | "join" | "leave"
            | "presence" => {}
            _ => return Err(CommandError::Unrecognized),
        }
        let identifier = match map.remove("identifier") {
            Some(Value::String(s)) => s,
            _ => return Err(CommandError::BadIdentifier),
        };
        Ok(match command.as_str() {
            "subscribe" => Command::Subscribe {
                identifier,
                history: map.get("history").and_then(HistoryRequest::parse),
                presence: PresenceJoin::parse(map.remove("presence")),
            },
            "unsubscribe" => Command::Unsubscribe { identifier },
            "whisper" => Command::Whisper {
                identifier,
                data: map.remove("data").unwrap_or(Value::Null),
            },
            "join" => Command::Join {
                identifier,
                presence: PresenceJoin::parse(map.remove("presence"))
                    .ok_or(CommandError::BadPresence)?,
            },
            "leave" => Command::Leave { identifier },
            "presence" => Command::PresenceInfo { identifier },
            "history" => Command::History {
                identifier,
                history: map
                    .get("history")
                    .and_then(HistoryRequest::parse)
                    .ok_or(CommandError::BadHistory)?,
            },
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
    fn extended_frames_have_anycable_bytes() {
        let id = r#"{"channel":"C"}"#;
        assert_eq!(
            Frame::welcome_ext("s1", None).as_str(),
            r#"{"type":"welcome","sid":"s1"}"#
        );
        assert_eq!(
            Frame::welcome_ext("s2", Some(&[id])).as_str(),
            r#"{"type":"welcome","sid":"s2","restored":true,"restored_ids":["{\"channel\":\"C\"}"]}"#
        );
        assert_eq!(
            Frame::message_at(id, r#"{"a":1}"#, "chat_1", "x1", 3).as_str(),
            r#"{"identifier":"{\"channel\":\"C\"}","message":{"a":1},"stream_id":"chat_1","epoch":"x1","offset":3}"#
        );
        assert_eq!(
            Frame::confirm_history(id).as_str(),
            r#"{"type":"confirm_history","identifier":"{\"channel\":\"C\"}"}"#
        );
        assert_eq!(
            Frame::reject_history(id).as_str(),
            r#"{"type":"reject_history","identifier":"{\"channel\":\"C\"}"}"#
        );
        assert_eq!(
            Frame::disconnect(Some(DisconnectReason::NoPong), true).as_str(),
            r#"{"type":"disconnect","reason":"no_pong","reconnect":true}"#
        );
    }

    #[test]
    fn parses_extended_commands() {
        assert_eq!(
            Command::parse(r#"{"command":"pong"}"#).unwrap(),
            Command::Pong
        );
        assert_eq!(
            Command::parse(r#"{"command":"ping"}"#).unwrap(),
            Command::Ping
        );
        let c = Command::parse(
            r#"{"command":"history","identifier":"i","history":{"since":1681828329,"streams":{"chat_42":{"offset":32,"epoch":"x123"}}}}"#,
        )
        .unwrap();
        assert_eq!(
            c,
            Command::History {
                identifier: "i".into(),
                history: HistoryRequest {
                    since: Some(1681828329),
                    streams: vec![(
                        "chat_42".into(),
                        Position {
                            epoch: "x123".into(),
                            offset: 32
                        }
                    )],
                }
            }
        );
        assert!(matches!(
            Command::parse(r#"{"command":"history","identifier":"i","history":{}}"#),
            Err(CommandError::BadHistory)
        ));
        assert!(matches!(
            Command::parse(r#"{"command":"history","identifier":"i"}"#),
            Err(CommandError::BadHistory)
        ));
        assert_eq!(
            Command::parse(r#"{"command":"subscribe","identifier":"i","history":{"since":5}}"#)
                .unwrap(),
            Command::Subscribe {
                identifier: "i".into(),
                history: Some(HistoryRequest {
                    since: Some(5),
                    streams: vec![]
                }),
                presence: None,
            }
        );
        assert_eq!(
            Command::parse(
                r#"{"command":"join","identifier":"i","presence":{"id":42,"info":{"name":"Ann"}}}"#
            )
            .unwrap(),
            Command::Join {
                identifier: "i".into(),
                presence: PresenceJoin {
                    id: "42".into(),
                    info: serde_json::json!({"name": "Ann"})
                }
            }
        );
        for bad in [
            r#"{"command":"join","identifier":"i"}"#,
            r#"{"command":"join","identifier":"i","presence":{"info":{}}}"#,
            r#"{"command":"join","identifier":"i","presence":{"id":""}}"#,
        ] {
            assert!(
                matches!(Command::parse(bad), Err(CommandError::BadPresence)),
                "{bad}"
            );
        }
        assert_eq!(
            Command::parse(r#"{"command":"whisper","identifier":"i","data":{"event":"typing"}}"#)
                .unwrap(),
            Command::Whisper {
                identifier: "i".into(),
                data: serde_json::json!({"event": "typing"})
            }
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
