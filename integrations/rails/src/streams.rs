//! Signed stream names: `Turbo::StreamsChannel` and AnyCable's `$pubsub`.

use std::sync::Arc;
use std::time::SystemTime;

use cable_core::{async_trait, Channel, ChannelError, Context, StreamOptions, ToParam};
use serde_json::Value;

use crate::cookies::open_envelope;
use crate::crypto::{HmacDigest, KeyGenerator, MessageVerifier};
use crate::error::CookieError;

/// The channel name turbo-rails' JavaScript subscribes to.
pub const TURBO_CHANNEL: &str = "Turbo::StreamsChannel";
/// AnyCable's channel for signed and public streams.
pub const PUBSUB_CHANNEL: &str = "$pubsub";
/// The salt turbo-rails derives its verifier key with
/// (`Rails.application.key_generator.generate_key(...)`).
pub const TURBO_KEY_SALT: &str = "turbo/signed_stream_verifier_key";

/// Verifies (and makes) signed stream names: a `MessageVerifier` with
/// HMAC-SHA256 and a JSON serializer, as turbo-rails'
/// `Turbo.signed_stream_verifier` and AnyCable's signed streams use. Several
/// keys may be given for rotation; the first one signs.
///
/// ```
/// use cable_rails::{KeyDigest, StreamVerifier};
/// // turbo-rails with the key derived from secret_key_base (shared reference vector)
/// let turbo = StreamVerifier::turbo(&["0".repeat(128)], &[KeyDigest::Sha256]);
/// let signed = "IloybGtPaTh2YlhrdFlYQndMMUp2YjIwdk1ROm1lc3NhZ2VzIg==--809b7467cb675e7aa1dc41eb9f8dad968645c8434080a0a7654d291b864259d9";
/// assert_eq!(turbo.verify(signed).unwrap(), "Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages");
/// assert_eq!(turbo.sign("Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages"), signed);
/// ```
#[derive(Clone, Debug)]
pub struct StreamVerifier {
    verifiers: Vec<MessageVerifier>,
}

impl StreamVerifier {
    /// Verifiers with these raw keys (a secret used as it is: turbo-rails'
    /// `config.turbo.signed_stream_verifier_key`, AnyCable's `streams_secret`).
    pub fn with_keys<K: AsRef<[u8]>>(keys: &[K]) -> Self {
        StreamVerifier {
            verifiers: keys
                .iter()
                .map(|k| MessageVerifier::new(k.as_ref().to_vec(), HmacDigest::Sha256))
                .collect(),
        }
    }

    /// turbo-rails' default: the key derived from each `secret_key_base` with
    /// each digest and salt `turbo/signed_stream_verifier_key`, 64 bytes.
    pub fn turbo<S: AsRef<[u8]>>(secret_key_bases: &[S], key_digests: &[crate::KeyDigest]) -> Self {
        let mut keys = Vec::new();
        for secret in secret_key_bases {
            for &digest in key_digests {
                keys.push(KeyGenerator::new(secret, digest).generate_key(TURBO_KEY_SALT, 64));
            }
        }
        Self::with_keys(&keys)
    }

    /// The stream name inside `signed`, if one of the keys signed it.
    pub fn verify(&self, signed: &str) -> Result<String, CookieError> {
        let mut error = CookieError::InvalidSignature;
        for v in &self.verifiers {
            match v.verify(signed) {
                Ok(payload) => return decode_stream_name(&payload),
                Err(e @ CookieError::Malformed) => return Err(e),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    /// Signs `stream` with the first key, as `Turbo::StreamsChannel.signed_stream_name`
    /// (or `AnyCable::Streams.signed`) would: for `turbo_stream_from` tags
    /// rendered by Rust code, or `$pubsub` names handed to clients.
    pub fn sign(&self, stream: &str) -> String {
        let json = serde_json::to_vec(stream).expect("a string encodes");
        self.verifiers
            .first()
            .expect("a StreamVerifier has at least one key")
            .generate(&json)
    }
}

/// The JSON value inside a verified token: a string (Turbo's and AnyCable's
/// names), or a number, which Rails' `stream_from` would turn into a string.
/// A `_rails` envelope without purpose is accepted, as Rails 7.1+'s
/// verifier would.
fn decode_stream_name(payload: &[u8]) -> Result<String, CookieError> {
    let inner = open_envelope(payload, None, SystemTime::now())?;
    match serde_json::from_slice::<Value>(&inner) {
        Ok(Value::String(s)) => Ok(s),
        Ok(Value::Number(n)) => Ok(n.to_string()),
        Ok(_) => Err(CookieError::NotJson("not a stream name".into())),
        Err(e) => Err(CookieError::NotJson(e.to_string())),
    }
}

/// turbo-rails' `stream_name_from(streamables)`: the parts joined with `:`,
/// records as their GlobalID param (pass [`GlobalId`](crate::GlobalId)s).
///
/// ```
/// use cable_rails::{turbo_stream_name, GlobalId};
/// let room = GlobalId::new("my-app", "Room", 1);
/// assert_eq!(turbo_stream_name(&(&room, "messages")), "Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages");
/// assert_eq!(turbo_stream_name("messages"), "messages");
/// ```
pub fn turbo_stream_name<K: ToParam + ?Sized>(streamables: &K) -> String {
    let mut out = String::new();
    streamables.write_param(&mut out);
    out
}

/// turbo-rails' `Turbo::StreamsChannel`: subscribes with
/// `{"channel":"Turbo::StreamsChannel","signed_stream_name":"..."}`, streams
/// from the verified name, and rejects the subscription when the name does
/// not verify. `Turbo::StreamsChannel.broadcast_*` in the Rails app (through
/// the shared Redis or PostgreSQL adapter), or `cable.broadcast(name, ...)`,
/// then reaches the client.
#[derive(Clone, Debug)]
pub struct TurboStreamsChannel {
    verifier: Arc<StreamVerifier>,
}

impl TurboStreamsChannel {
    /// A channel checking names with `verifier`.
    pub fn new(verifier: Arc<StreamVerifier>) -> Self {
        TurboStreamsChannel { verifier }
    }
}

#[async_trait]
impl Channel for TurboStreamsChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let verified = match ctx.param_str("signed_stream_name") {
            Some(signed) => self.verifier.verify(signed),
            None => Err(CookieError::Malformed),
        };
        match verified {
            Ok(stream) => ctx.stream_from(stream),
            Err(e) => {
                tracing::info!("Turbo::StreamsChannel rejected: signed_stream_name {e}");
                ctx.reject();
            }
        }
        Ok(())
    }
}

/// AnyCable's `$pubsub` channel: `{"channel":"$pubsub","signed_stream_name":...}`
/// (verified like Turbo's, with the streams secret) and, when public streams
/// are enabled, `{"channel":"$pubsub","stream_name":...}`. Anything else is
/// rejected.
///
/// As in AnyCable, every `$pubsub` stream takes presence commands, public
/// streams take whispers, and signed ones only with
/// [`PubSubChannel::signed_whispers`] (AnyCable's `streams_whisper`).
#[derive(Clone, Debug)]
pub struct PubSubChannel {
    signed: Option<Arc<StreamVerifier>>,
    public: bool,
    signed_whispers: bool,
}

impl PubSubChannel {
    /// `signed`: the verifier for signed names (`None` refuses them);
    /// `public`: whether plain `stream_name`s are allowed.
    pub fn new(signed: Option<Arc<StreamVerifier>>, public: bool) -> Self {
        PubSubChannel {
            signed,
            public,
            signed_whispers: false,
        }
    }

    /// Whether subscribers of signed streams may whisper (public streams
    /// always may).
    pub fn signed_whispers(mut self, allowed: bool) -> Self {
        self.signed_whispers = allowed;
        self
    }
}

#[async_trait]
impl Channel for PubSubChannel {
    async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
        let public = ctx
            .param_str("stream_name")
            .filter(|s| self.public && !s.is_empty())
            .map(str::to_owned);
        let whisper = public.is_some() || self.signed_whispers;
        let stream = match (public, ctx.param_str("signed_stream_name"), &self.signed) {
            (Some(name), _, _) => Ok(name),
            (None, Some(signed), Some(verifier)) => {
                verifier.verify(signed).map_err(|e| e.to_string())
            }
            (None, Some(_), None) => Err("signed streams are disabled".to_owned()),
            (None, None, _) if ctx.param_str("stream_name").is_some() => {
                Err("public streams are disabled".to_owned())
            }
            (None, None, _) => Err("no stream_name or signed_stream_name".to_owned()),
        };
        match stream {
            Ok(stream) => {
                let mut options = StreamOptions::new().presence();
                if whisper {
                    options = options.whisper();
                }
                ctx.stream_from_with(stream, options);
            }
            Err(why) => {
                tracing::info!("$pubsub subscription rejected: {why}");
                ctx.reject();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyDigest;

    #[test]
    fn reference_turbo_vectors() {
        // shared/reference/actioncable-protocol.md, appendix.
        let zero = "0".repeat(128);
        let data = "IloybGtPaTh2YlhrdFlYQndMMUp2YjIwdk1ROm1lc3NhZ2VzIg==";
        for (digest, mac) in [
            (
                KeyDigest::Sha1,
                "869c01ac7441c3becc15e03e7ca8446f7f23e89addc40ab32df16db244257395",
            ),
            (
                KeyDigest::Sha256,
                "809b7467cb675e7aa1dc41eb9f8dad968645c8434080a0a7654d291b864259d9",
            ),
        ] {
            let v = StreamVerifier::turbo(&[&zero], &[digest]);
            let signed = format!("{data}--{mac}");
            assert_eq!(
                v.verify(&signed).unwrap(),
                "Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages"
            );
            assert_eq!(v.sign("Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages"), signed);
            // Both digests configured: either verifies.
            let both = StreamVerifier::turbo(&[&zero], &KeyDigest::ALL);
            assert!(both.verify(&signed).is_ok());
        }
    }

    #[test]
    fn only_names() {
        let v = StreamVerifier::with_keys(&["k"]);
        let mv = MessageVerifier::new(b"k".to_vec(), HmacDigest::Sha256);
        assert_eq!(v.verify(&mv.generate(b"17")).unwrap(), "17");
        assert!(v.verify(&mv.generate(b"[1,2]")).is_err());
        assert!(v.verify(&mv.generate(b"\x04\x08")).is_err());
        assert!(v.verify(&mv.generate(br#"{"a":1}"#)).is_err());
        // An envelope with another purpose is refused.
        let env = br#"{"_rails":{"message":"ImEi","exp":null,"pur":"x"}}"#;
        assert!(v.verify(&mv.generate(env)).is_err());
        let env = br#"{"_rails":{"message":"ImEi","exp":null,"pur":null}}"#;
        assert_eq!(v.verify(&mv.generate(env)).unwrap(), "a");
    }
}
