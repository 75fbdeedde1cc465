//! `cookies.signed` and `cookies.encrypted`: the keys, the `_rails`
//! envelope, the JSON serializer, key rotation.

use std::time::SystemTime;

use serde_json::Value;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::OffsetDateTime;

use crate::crypto::{decode_base64, HmacDigest, KeyGenerator, MessageEncryptor, MessageVerifier};
use crate::error::CookieError;

/// Salt of `cookies.signed` (`config.action_dispatch.signed_cookie_salt`).
pub const SIGNED_COOKIE_SALT: &str = "signed cookie";
/// Salt of `cookies.encrypted` with AES-256-GCM
/// (`config.action_dispatch.authenticated_encrypted_cookie_salt`).
pub const ENCRYPTED_COOKIE_SALT: &str = "authenticated encrypted cookie";

/// Ruby's `Marshal` format starts with version 4.8.
const MARSHAL_SIGNATURE: &[u8] = b"\x04\x08";

/// Reads a Rails app's `cookies.signed[...]` and `cookies.encrypted[...]`.
///
/// Holds one verifier and one encryptor per configured key (every
/// `secret_key_base` × every key-derivation digest), tried in order, like
/// Rails' cookie rotations. Values must be JSON-serialized
/// (`cookies_serializer = :json`, or `:hybrid` once rewritten).
///
/// ```
/// use cable_rails::{CookieJar, KeyDigest, HmacDigest};
/// let secret = "0".repeat(128);
/// let jar = CookieJar::new(&[secret], &[KeyDigest::Sha1], HmacDigest::Sha1);
/// // `cookies.signed[:user_id] = 42` in a Rails 6.1 app (shared reference vector):
/// let cookie = "eyJfcmFpbHMiOnsibWVzc2FnZSI6Ik5EST0iLCJleHAiOm51bGwsInB1ciI6ImNvb2tpZS51c2VyX2lkIn19--4ba8f1f899702c9f6a58bf43ca231c8a81f34b6c";
/// assert_eq!(jar.signed("user_id", cookie).unwrap(), 42);
/// assert!(jar.signed("other", cookie).is_err()); // another cookie's purpose
/// ```
#[derive(Clone, Debug)]
pub struct CookieJar {
    verifiers: Vec<MessageVerifier>,
    encryptors: Vec<MessageEncryptor>,
}

impl CookieJar {
    /// Keys for every secret × digest, in that order (the first secret and
    /// digest are tried first). `signed_digest` is the HMAC of signed cookies.
    pub fn new<S: AsRef<[u8]>>(
        secret_key_bases: &[S],
        key_digests: &[crate::KeyDigest],
        signed_digest: HmacDigest,
    ) -> Self {
        let mut jar = CookieJar {
            verifiers: Vec::new(),
            encryptors: Vec::new(),
        };
        for secret in secret_key_bases {
            for &digest in key_digests {
                let keys = KeyGenerator::new(secret, digest);
                jar.verifiers.push(MessageVerifier::new(
                    keys.generate_key(SIGNED_COOKIE_SALT, 64),
                    signed_digest,
                ));
                jar.encryptors.push(
                    MessageEncryptor::new(&keys.generate_key(ENCRYPTED_COOKIE_SALT, 32))
                        .expect("32-byte key"),
                );
            }
        }
        jar
    }

    /// A jar from explicit verifiers and encryptors (custom rotations).
    pub fn from_parts(verifiers: Vec<MessageVerifier>, encryptors: Vec<MessageEncryptor>) -> Self {
        CookieJar {
            verifiers,
            encryptors,
        }
    }

    /// `cookies.signed[name]`: `value` is the cookie as the browser sent it,
    /// percent-decoded (as [`cable_core::ConnectRequest::cookie`] gives it).
    pub fn signed(&self, name: &str, value: &str) -> Result<Value, CookieError> {
        self.signed_at(name, value, SystemTime::now())
    }

    /// [`CookieJar::signed`] with expiry checked against `now`.
    pub fn signed_at(
        &self,
        name: &str,
        value: &str,
        now: SystemTime,
    ) -> Result<Value, CookieError> {
        let payload = first_valid(&self.verifiers, |v| v.verify(value))?;
        read_payload(&payload, name, now)
    }

    /// `cookies.encrypted[name]` (also the session cookie).
    pub fn encrypted(&self, name: &str, value: &str) -> Result<Value, CookieError> {
        self.encrypted_at(name, value, SystemTime::now())
    }

    /// [`CookieJar::encrypted`] with expiry checked against `now`.
    pub fn encrypted_at(
        &self,
        name: &str,
        value: &str,
        now: SystemTime,
    ) -> Result<Value, CookieError> {
        let payload = first_valid(&self.encryptors, |e| e.decrypt(value))?;
        read_payload(&payload, name, now)
    }
}

/// The first key that authenticates the value wins: only one of them can
/// have made it, so later keys are not tried once one matched.
fn first_valid<K>(
    keys: &[K],
    open: impl Fn(&K) -> Result<Vec<u8>, CookieError>,
) -> Result<Vec<u8>, CookieError> {
    let mut error = CookieError::InvalidSignature;
    for key in keys {
        match open(key) {
            Ok(payload) => return Ok(payload),
            // Malformed is the same under every key; say so rather than
            // "invalid signature".
            Err(e @ CookieError::Malformed) => return Err(e),
            Err(e) => error = e,
        }
    }
    Err(error)
}

/// Envelope, purpose and expiry, then the JSON value.
fn read_payload(payload: &[u8], name: &str, now: SystemTime) -> Result<Value, CookieError> {
    let purpose = format!("cookie.{name}");
    let message = open_envelope(payload, Some(&purpose), now)?;
    deserialize(&message)
}

/// Rails' `Messages::Metadata.verify`, as the cookie jars call it: a value
/// with a `_rails` envelope must name `purpose` (or none) and be fresh; a
/// value without one (written before `use_cookies_with_metadata`) passes.
pub(crate) fn open_envelope(
    payload: &[u8],
    purpose: Option<&str>,
    now: SystemTime,
) -> Result<Vec<u8>, CookieError> {
    let Ok(Value::Object(outer)) = serde_json::from_slice::<Value>(payload) else {
        return Ok(payload.to_vec());
    };
    let Some(meta) = outer.get("_rails") else {
        return Ok(payload.to_vec());
    };
    let bad = |why: &str| CookieError::BadEnvelope(why.to_owned());
    let meta = meta.as_object().ok_or_else(|| bad("not an object"))?;
    let message = meta
        .get("message")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no message"))?;
    let message = decode_base64(message).ok_or_else(|| bad("message is not base64"))?;

    // The jar reads with purpose `cookie.<name>`, then again with none: an
    // envelope passes with that purpose or with no purpose at all.
    let found = match meta.get("pur") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if !found.is_empty() && Some(found.as_str()) != purpose {
        return Err(CookieError::WrongPurpose {
            expected: purpose.unwrap_or_default().to_owned(),
            found,
        });
    }

    match meta.get("exp") {
        None | Some(Value::Null) => {}
        Some(Value::String(exp)) => {
            let at = OffsetDateTime::parse(exp, &Rfc3339)
                .or_else(|_| OffsetDateTime::parse(exp, &Iso8601::DEFAULT))
                .map_err(|_| bad("exp is not an ISO 8601 time"))?;
            if OffsetDateTime::from(now) >= at {
                return Err(CookieError::Expired(exp.clone()));
            }
        }
        Some(_) => return Err(bad("exp is not a string")),
    }
    Ok(message)
}

/// The `:json` cookie serializer (`ActiveSupport::JSON.decode`; scalars
/// allowed). Marshal data is recognised and refused with advice.
pub(crate) fn deserialize(message: &[u8]) -> Result<Value, CookieError> {
    if message.starts_with(MARSHAL_SIGNATURE) {
        return Err(CookieError::MarshalSerialized);
    }
    serde_json::from_slice(message).map_err(|e| CookieError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyDigest;
    use base64::{engine::general_purpose::STANDARD, Engine};
    use std::time::Duration;

    fn envelope(message: &[u8], exp: Option<&str>, pur: Option<&str>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"_rails": {
            "message": STANDARD.encode(message), "exp": exp, "pur": pur,
        }}))
        .unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn envelope_purpose_and_expiry() {
        // 2030-01-01T00:00:00Z
        let exp = "2030-01-01T00:00:00.000Z";
        let t = 1_893_456_000;
        let e = envelope(b"42", Some(exp), Some("cookie.user_id"));
        let purpose = Some("cookie.user_id");
        assert_eq!(open_envelope(&e, purpose, at(t - 1)).unwrap(), b"42");
        assert_eq!(
            open_envelope(&e, purpose, at(t)),
            Err(CookieError::Expired(exp.into()))
        );
        assert!(matches!(
            open_envelope(&e, Some("cookie.other"), at(0)),
            Err(CookieError::WrongPurpose { .. })
        ));
        // No purpose in the envelope: accepted (Rails' second read).
        let e = envelope(b"42", None, None);
        assert_eq!(open_envelope(&e, purpose, at(0)).unwrap(), b"42");
        // No envelope at all: the payload is the message.
        assert_eq!(open_envelope(b"42", purpose, at(0)).unwrap(), b"42");
        assert_eq!(
            open_envelope(br#"{"a":1}"#, purpose, at(0)).unwrap(),
            br#"{"a":1}"#
        );
        // Offsets other than Z.
        let e = envelope(b"1", Some("2030-01-01T01:00:00+01:00"), None);
        assert!(open_envelope(&e, purpose, at(t - 1)).is_ok());
        assert!(open_envelope(&e, purpose, at(t)).is_err());
        // Garbage.
        let e = envelope(b"1", Some("soon"), None);
        assert!(matches!(
            open_envelope(&e, purpose, at(0)),
            Err(CookieError::BadEnvelope(_))
        ));
        assert!(matches!(
            open_envelope(br#"{"_rails":{"message":"%%%"}}"#, purpose, at(0)),
            Err(CookieError::BadEnvelope(_))
        ));
    }

    #[test]
    fn json_only() {
        assert_eq!(deserialize(b"42").unwrap(), 42);
        assert_eq!(deserialize(br#""alice""#).unwrap(), "alice");
        assert_eq!(
            deserialize(b"\x04\x08i/"),
            Err(CookieError::MarshalSerialized)
        );
        assert!(matches!(
            deserialize(b"\x82\xa1a"),
            Err(CookieError::NotJson(_))
        ));
        let advice = CookieError::MarshalSerialized.to_string();
        assert!(advice.contains("cookies_serializer = :json"), "{advice}");
    }

    #[test]
    fn rotation_tries_every_key() {
        let old = "1".repeat(128);
        let new = "2".repeat(128);
        let writer = CookieJar::new(&[&old], &[KeyDigest::Sha1], HmacDigest::Sha1);
        let encryptor = writer.encryptors[0].clone();
        let cookie = encryptor.encrypt_with_iv(&envelope(b"7", None, Some("cookie.id")), [3; 12]);
        let signed = writer.verifiers[0].generate(&envelope(b"7", None, Some("cookie.id")));

        let rotated = CookieJar::new(&[&new, &old], &KeyDigest::ALL, HmacDigest::Sha1);
        assert_eq!(rotated.encrypted("id", &cookie).unwrap(), 7);
        assert_eq!(rotated.signed("id", &signed).unwrap(), 7);

        let only_new = CookieJar::new(&[&new], &KeyDigest::ALL, HmacDigest::Sha1);
        assert_eq!(
            only_new.encrypted("id", &cookie),
            Err(CookieError::InvalidSignature)
        );
        assert_eq!(
            only_new.signed("id", &signed),
            Err(CookieError::InvalidSignature)
        );
        let wrong_digest = CookieJar::new(&[&old], &[KeyDigest::Sha256], HmacDigest::Sha1);
        assert!(wrong_digest.encrypted("id", &cookie).is_err());
        assert!(only_new.signed("id", "garbage").is_err());
        assert_eq!(
            only_new.encrypted("id", "a--b"),
            Err(CookieError::Malformed)
        );
    }
}
