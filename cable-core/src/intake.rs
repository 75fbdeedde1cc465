//! AnyCable's broadcast messages, parsed once for every intake (`POST
//! /_broadcast`, the Redis channel `__anycable__`, the Redis stream
//! `__anycable__`) and applied through a [`Broadcaster`].
//!
//! The formats (AnyCable's `PubSubMessageFromJSON`):
//! - one publication: `{"stream":"s","data":"<JSON text>","meta":{...}}`;
//! - a batch: a JSON array of publications;
//! - a command: `{"command":"disconnect","payload":{"identifier":"<JSON
//!   object text>","reconnect":false}}`, which ends every connection whose
//!   identifiers are that object ([`Identifiers::from_json`]).
//!
//! `meta` may carry `exclude_socket` (a session id that must not get it)
//! and `transient` (kept out of history). Every other field, in `meta` or at
//! the top, is ignored, as AnyCable's decoder ignores it: publishers send
//! `broadcast_type` and may send more in newer versions. `data` must be a
//! string holding JSON text, since it reaches clients as the frame's
//! `message`.
//!
//! ```
//! use cable_core::intake::Message;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cable = cable_core::Cable::builder().build();
//! let body = br#"{"stream":"chat","data":"{\"hi\":1}","meta":{"exclude_socket":"sid-1"}}"#;
//! let mut message = Message::parse(body).unwrap();
//! message.exclude_by_default("sid-2"); // X-Socket-ID: this one has its own
//! message.apply(&cable.broadcaster()).await.unwrap();
//! # }
//! ```

use serde::Deserialize;

use crate::auth::{Identifiers, IdentifiersJsonError};
use crate::cable::{Broadcaster, Publication};
use crate::pubsub::PubSubError;

/// One publication: a stream, its payload and AnyCable's `meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// The stream, never empty.
    pub stream: String,
    /// The payload, valid JSON text.
    pub data: String,
    /// `exclude_socket` and `transient`.
    pub options: Publication,
}

/// The `disconnect` command: ends every connection with these identifiers,
/// on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// The connections' identifiers, never empty.
    pub identifiers: Identifiers,
    /// Whether the clients are told they may reconnect.
    pub reconnect: bool,
}

/// One broadcast message as a publisher sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// One publication (a batch of one) or a batch, in order.
    Broadcasts(Vec<Broadcast>),
    /// The `disconnect` command.
    Disconnect(Disconnect),
}

/// Why a text is not an AnyCable broadcast message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Not UTF-8 (JSON text is; checked first, as serde_json does not
    /// look inside the fields it skips).
    #[error("not UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// Not JSON, or a field of the wrong type (`data` not a string, ...).
    #[error("not a broadcast message")]
    Malformed(#[source] serde_json::Error),
    /// A publication without a stream (or an empty one) and no command.
    #[error("publication {index}: no stream")]
    NoStream {
        /// Its place in the batch (0 for a single one).
        index: usize,
    },
    /// A publication without `data`.
    #[error("publication {index}: no data")]
    NoData {
        /// Its place in the batch.
        index: usize,
    },
    /// `data` is a string but not JSON text: no client could decode it.
    #[error("publication {index}: data is not JSON text")]
    DataNotJson {
        /// Its place in the batch.
        index: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A batch holds publications only, as in AnyCable.
    #[error("element {index} of the batch is a command; a batch holds publications only")]
    CommandInBatch {
        /// Its place in the batch.
        index: usize,
    },
    /// A command other than `disconnect`.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// `disconnect` without `payload.identifier`.
    #[error("disconnect: no payload.identifier")]
    NoIdentifier,
    /// `payload.identifier` is not a JSON object's text.
    #[error("disconnect: bad payload.identifier")]
    Identifiers(#[source] IdentifiersJsonError),
    /// `payload.identifier` is `{}`: it would match anonymous connections,
    /// which have no connection identifier to be found by.
    #[error("disconnect: payload.identifier has no identifiers")]
    EmptyIdentifiers,
}

/// A message the adapter refused part of.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed ({index} before it were applied)")]
pub struct ApplyError {
    /// How many publications before it were applied.
    pub index: usize,
    what: String,
    /// What the adapter said.
    #[source]
    pub source: PubSubError,
}

/// The wire shape, lenient: unknown fields are ignored.
#[derive(Deserialize)]
struct RawItem {
    stream: Option<String>,
    data: Option<String>,
    meta: Option<RawMeta>,
    command: Option<String>,
    payload: Option<RawPayload>,
}

#[derive(Deserialize)]
struct RawMeta {
    exclude_socket: Option<String>,
    transient: Option<bool>,
}

#[derive(Deserialize)]
struct RawPayload {
    identifier: Option<String>,
    reconnect: Option<bool>,
}

impl Message {
    /// Parses one message (UTF-8 JSON text).
    pub fn parse(bytes: &[u8]) -> Result<Message, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(ParseError::NotUtf8)?;
        if text.trim_start().starts_with('[') {
            let items: Vec<RawItem> = serde_json::from_str(text).map_err(ParseError::Malformed)?;
            let broadcasts = items
                .into_iter()
                .enumerate()
                .map(|(index, item)| match item.stream.as_deref() {
                    Some(s) if !s.is_empty() => publication(index, item),
                    _ if item.command.is_some() => Err(ParseError::CommandInBatch { index }),
                    _ => Err(ParseError::NoStream { index }),
                })
                .collect::<Result<_, _>>()?;
            return Ok(Message::Broadcasts(broadcasts));
        }
        let item: RawItem = serde_json::from_str(text).map_err(ParseError::Malformed)?;
        match (item.stream.as_deref(), item.command.as_deref()) {
            (Some(s), _) if !s.is_empty() => Ok(Message::Broadcasts(vec![publication(0, item)?])),
            (_, Some("disconnect")) => {
                let payload = item.payload.ok_or(ParseError::NoIdentifier)?;
                let ids = payload.identifier.ok_or(ParseError::NoIdentifier)?;
                let identifiers = Identifiers::from_json(&ids).map_err(ParseError::Identifiers)?;
                if identifiers.is_empty() {
                    return Err(ParseError::EmptyIdentifiers);
                }
                Ok(Message::Disconnect(Disconnect {
                    identifiers,
                    reconnect: payload.reconnect.unwrap_or(false),
                }))
            }
            (_, Some(other)) => Err(ParseError::UnknownCommand(other.to_owned())),
            (_, None) => Err(ParseError::NoStream { index: 0 }),
        }
    }

    /// AnyCable's `to_others` (the `X-Socket-ID` header): excludes session
    /// `sid` from every publication that excludes none of its own.
    pub fn exclude_by_default(&mut self, sid: &str) {
        if sid.is_empty() {
            return;
        }
        if let Message::Broadcasts(all) = self {
            for b in all
                .iter_mut()
                .filter(|b| b.options.exclude_socket.is_none())
            {
                b.options.exclude_socket = Some(sid.to_owned());
            }
        }
    }

    /// Publications (or commands) in it.
    pub fn len(&self) -> usize {
        match self {
            Message::Broadcasts(all) => all.len(),
            Message::Disconnect(_) => 1,
        }
    }

    /// Whether it is an empty batch.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Publishes every publication in order, or sends the disconnect. Stops
    /// at the first the adapter refuses: those before it went out.
    pub async fn apply(&self, broadcaster: &Broadcaster) -> Result<(), ApplyError> {
        self.apply_to(broadcaster, false).await
    }

    /// [`Message::apply`] to this process's subscribers and connections
    /// only ([`Broadcaster::broadcast_locally_with`]): for an intake every
    /// node receives itself, such as AnyCable's Redis pub/sub broadcaster.
    pub async fn apply_locally(&self, broadcaster: &Broadcaster) -> Result<(), ApplyError> {
        self.apply_to(broadcaster, true).await
    }

    async fn apply_to(&self, broadcaster: &Broadcaster, local: bool) -> Result<(), ApplyError> {
        match self {
            Message::Broadcasts(all) => {
                for (index, b) in all.iter().enumerate() {
                    let sent = if local {
                        broadcaster
                            .broadcast_locally_with(&b.stream, &b.data, &b.options)
                            .await
                    } else {
                        broadcaster
                            .broadcast_with(&b.stream, &b.data, &b.options)
                            .await
                    };
                    sent.map_err(|source| ApplyError {
                        index,
                        what: format!("publication {index} (stream {:?})", b.stream),
                        source,
                    })?;
                }
                Ok(())
            }
            Message::Disconnect(d) if local => {
                broadcaster.disconnect_locally(&d.identifiers, d.reconnect);
                Ok(())
            }
            Message::Disconnect(d) => broadcaster
                .remote_disconnect(&d.identifiers, d.reconnect)
                .await
                .map_err(|source| ApplyError {
                    index: 0,
                    what: "disconnect".to_owned(),
                    source,
                }),
        }
    }
}

fn publication(index: usize, item: RawItem) -> Result<Broadcast, ParseError> {
    let stream = item.stream.unwrap_or_default();
    let data = item.data.ok_or(ParseError::NoData { index })?;
    serde_json::from_str::<serde::de::IgnoredAny>(&data)
        .map_err(|source| ParseError::DataNotJson { index, source })?;
    let meta = item.meta.unwrap_or(RawMeta {
        exclude_socket: None,
        transient: None,
    });
    Ok(Broadcast {
        stream,
        data,
        options: Publication {
            exclude_socket: meta.exclude_socket.filter(|s| !s.is_empty()),
            transient: meta.transient.unwrap_or(false),
            ..Publication::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(b: &Message) -> &Broadcast {
        match b {
            Message::Broadcasts(all) if all.len() == 1 => &all[0],
            other => panic!("not one publication: {other:?}"),
        }
    }

    #[test]
    fn a_single_publication_with_meta() {
        let m = Message::parse(
            br#"{"stream":"s","data":"{\"a\":1}","meta":{"exclude_socket":"sid-1","transient":true}}"#,
        )
        .unwrap();
        let b = one(&m);
        assert_eq!((b.stream.as_str(), b.data.as_str()), ("s", r#"{"a":1}"#));
        assert_eq!(b.options.exclude_socket.as_deref(), Some("sid-1"));
        assert!(b.options.transient);
    }

    #[test]
    fn unknown_fields_and_meta_are_ignored() {
        let m = Message::parse(
            br#" {"stream":"s","data":"1","meta":{"broadcast_type":"presence","future":{"x":[1]},"exclude_socket":null,"transient":null},"epoch":"e","offset":3}"#,
        )
        .unwrap();
        let b = one(&m);
        assert_eq!(b.options, Publication::default());
        // Without meta, and with an empty exclude_socket (Go's zero value).
        let m =
            Message::parse(br#"{"stream":"s","data":"1","meta":{"exclude_socket":""}}"#).unwrap();
        assert_eq!(one(&m).options.exclude_socket, None);
    }

    #[test]
    fn a_batch_in_order() {
        let m = Message::parse(
            br#"[{"stream":"a","data":"1"},{"stream":"b","data":"\"x\"","meta":{"transient":true}}]"#,
        )
        .unwrap();
        let Message::Broadcasts(all) = &m else {
            panic!("{m:?}")
        };
        let streams: Vec<_> = all.iter().map(|b| b.stream.as_str()).collect();
        assert_eq!(streams, ["a", "b"]);
        assert!(!all[0].options.transient && all[1].options.transient);
        assert!(Message::parse(b"[]").unwrap().is_empty());
    }

    #[test]
    fn the_disconnect_command() {
        let m = Message::parse(
            br#"{"command":"disconnect","payload":{"identifier":"{\"user_id\":\"42\",\"n\":7}","reconnect":true}}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            Message::Disconnect(Disconnect {
                identifiers: Identifiers::new().with("user_id", "42").with("n", "7"),
                reconnect: true,
            })
        );
        let m =
            Message::parse(br#"{"command":"disconnect","payload":{"identifier":"{\"u\":\"1\"}"}}"#)
                .unwrap();
        assert!(matches!(
            m,
            Message::Disconnect(Disconnect {
                reconnect: false,
                ..
            })
        ));
    }

    #[test]
    fn what_is_refused_and_why() {
        type Expected = fn(&ParseError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("not json", |e| matches!(e, ParseError::Malformed(_))),
            ("42", |e| matches!(e, ParseError::Malformed(_))),
            (r#"{"stream":"s"}"#, |e| {
                matches!(e, ParseError::NoData { index: 0 })
            }),
            (r#"{"stream":"s","data":{"a":1}}"#, |e| {
                matches!(e, ParseError::Malformed(_))
            }),
            (r#"{"stream":"s","data":"{no"}"#, |e| {
                matches!(e, ParseError::DataNotJson { index: 0, .. })
            }),
            (r#"{"stream":"","data":"1"}"#, |e| {
                matches!(e, ParseError::NoStream { index: 0 })
            }),
            (r#"{"data":"1"}"#, |e| {
                matches!(e, ParseError::NoStream { index: 0 })
            }),
            (r#"[{"stream":"s","data":"1"},{"data":"1"}]"#, |e| {
                matches!(e, ParseError::NoStream { index: 1 })
            }),
            (r#"[{"command":"disconnect"}]"#, |e| {
                matches!(e, ParseError::CommandInBatch { index: 0 })
            }),
            (
                r#"{"stream":"s","data":"1","meta":{"exclude_socket":5}}"#,
                |e| matches!(e, ParseError::Malformed(_)),
            ),
            (
                r#"{"command":"restart"}"#,
                |e| matches!(e, ParseError::UnknownCommand(c) if c == "restart"),
            ),
            (r#"{"command":"disconnect"}"#, |e| {
                matches!(e, ParseError::NoIdentifier)
            }),
            (
                r#"{"command":"disconnect","payload":{"reconnect":true}}"#,
                |e| matches!(e, ParseError::NoIdentifier),
            ),
            (
                r#"{"command":"disconnect","payload":{"identifier":"42"}}"#,
                |e| matches!(e, ParseError::Identifiers(_)),
            ),
            (
                r#"{"command":"disconnect","payload":{"identifier":"{}"}}"#,
                |e| matches!(e, ParseError::EmptyIdentifiers),
            ),
        ];
        for (text, expected) in cases {
            let err = Message::parse(text.as_bytes()).expect_err(text);
            assert!(expected(&err), "{text}: {err:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_refused_even_in_an_ignored_field() {
        // Found by the intake_parse fuzz target: serde_json skips an
        // unknown field's string without checking its UTF-8.
        let bytes = b"{\"x\":\"\xff\",\"stream\":\"s\",\"data\":\"1\"}";
        let err = Message::parse(bytes).expect_err("not UTF-8");
        assert!(matches!(err, ParseError::NotUtf8(_)), "{err:?}");
    }

    #[test]
    fn to_others_fills_in_only_where_none_is_set() {
        let mut m = Message::parse(
            br#"[{"stream":"a","data":"1"},{"stream":"b","data":"1","meta":{"exclude_socket":"own"}}]"#,
        )
        .unwrap();
        m.exclude_by_default("header");
        let Message::Broadcasts(all) = &m else {
            panic!()
        };
        assert_eq!(all[0].options.exclude_socket.as_deref(), Some("header"));
        assert_eq!(all[1].options.exclude_socket.as_deref(), Some("own"));
        let mut m = Message::parse(br#"{"stream":"a","data":"1"}"#).unwrap();
        m.exclude_by_default("");
        assert_eq!(one(&m).options.exclude_socket, None);
    }
}
