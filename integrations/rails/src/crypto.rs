//! Rails' building blocks: `KeyGenerator` (PBKDF2), `MessageVerifier`
//! (HMAC, `base64--hex`) and `MessageEncryptor` (AES-256-GCM,
//! `base64--base64--base64`).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use crate::error::CookieError;

/// `Debug` for a type with key material in the field named `$secret` and a
/// `digest`: shows the digest, never the key.
macro_rules! debug_redacted {
    ($type:ident, $secret:literal) => {
        impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($type))
                    .field($secret, &"[redacted]")
                    .field("digest", &self.digest)
                    .finish()
            }
        }
    };
}

/// `Display` (the upper-case name) and `FromStr` (any case, dashes ignored:
/// `sha-256`) for a digest enum; `$what` and `$choices` make the error.
macro_rules! digest_names {
    ($type:ident, $what:literal, $choices:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($type::$variant => $name,)+
                })
            }
        }

        impl std::str::FromStr for $type {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_uppercase().replace('-', "").as_str() {
                    $($name => Ok($type::$variant),)+
                    _ => Err(format!(concat!("unknown ", $what, " `{}` (", $choices, ")"), s)),
                }
            }
        }
    };
}

/// Rails' PBKDF2 iteration count (`Rails.application.key_generator`).
pub const ITERATIONS: u32 = 1000;

/// The hash PBKDF2 uses to derive keys from `secret_key_base`
/// (`config.active_support.key_generator_hash_digest_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDigest {
    /// Rails up to 6.1, and apps upgraded without `load_defaults 7.0`.
    Sha1,
    /// `load_defaults 7.0` and later.
    Sha256,
}

impl KeyDigest {
    /// Both, newest first: what an app of unknown vintage may use.
    pub const ALL: [KeyDigest; 2] = [KeyDigest::Sha256, KeyDigest::Sha1];
}

digest_names!(KeyDigest, "key derivation digest", "SHA1 or SHA256",
    Sha1 => "SHA1",
    Sha256 => "SHA256",
);

/// The HMAC of a `MessageVerifier` (`config.action_dispatch.signed_cookie_digest`
/// for signed cookies, SHA1 unless set; Turbo and AnyCable use SHA256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HmacDigest {
    /// HMAC-SHA1, 40 hex characters. Rails' default for signed cookies.
    Sha1,
    /// HMAC-SHA256, 64 hex characters.
    Sha256,
    /// HMAC-SHA384, 96 hex characters.
    Sha384,
    /// HMAC-SHA512, 128 hex characters.
    Sha512,
}

digest_names!(HmacDigest, "HMAC digest", "SHA1, SHA256, SHA384 or SHA512",
    Sha1 => "SHA1",
    Sha256 => "SHA256",
    Sha384 => "SHA384",
    Sha512 => "SHA512",
);

/// Rails' `ActiveSupport::KeyGenerator`: PBKDF2-HMAC over `secret_key_base`
/// (its text, as bytes), 1000 iterations.
///
/// ```
/// use cable_rails::{KeyDigest, KeyGenerator};
/// let keys = KeyGenerator::new("0".repeat(128), KeyDigest::Sha1);
/// let key = keys.generate_key("authenticated encrypted cookie", 32);
/// assert_eq!(key[..4], [0xf3, 0xc5, 0x95, 0x1e]);
/// ```
#[derive(Clone)]
pub struct KeyGenerator {
    secret: Vec<u8>,
    digest: KeyDigest,
}

debug_redacted!(KeyGenerator, "secret");

impl KeyGenerator {
    /// A generator for `secret_key_base` with `digest`.
    pub fn new(secret_key_base: impl AsRef<[u8]>, digest: KeyDigest) -> Self {
        KeyGenerator {
            secret: secret_key_base.as_ref().to_vec(),
            digest,
        }
    }

    /// The PBKDF2 digest.
    pub fn digest(&self) -> KeyDigest {
        self.digest
    }

    /// `generate_key(salt, len)`: 64 bytes for verifiers, 32 for AES-256-GCM.
    pub fn generate_key(&self, salt: &str, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        match self.digest {
            KeyDigest::Sha1 => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(
                &self.secret,
                salt.as_bytes(),
                ITERATIONS,
                &mut out,
            ),
            KeyDigest::Sha256 => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                &self.secret,
                salt.as_bytes(),
                ITERATIONS,
                &mut out,
            ),
        }
        out
    }
}

/// Base64 decoding as lenient as it can safely be: the standard alphabet
/// (Rails' `strict_encode64`) or the URL-safe one (AnyCable's gem), padded or
/// not. What is decoded has been authenticated first, so leniency costs nothing.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const CONFIG: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    if text.is_empty() {
        return None;
    }
    STD.decode(text).or_else(|_| URL.decode(text)).ok()
}

/// Lowercase hex, as Ruby's `OpenSSL::HMAC.hexdigest`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn hmac_hex(digest: HmacDigest, key: &[u8], data: &[u8]) -> String {
    fn mac<M: Mac + hmac::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    let raw = match digest {
        HmacDigest::Sha1 => mac::<Hmac<sha1::Sha1>>(key, data),
        HmacDigest::Sha256 => mac::<Hmac<sha2::Sha256>>(key, data),
        HmacDigest::Sha384 => mac::<Hmac<sha2::Sha384>>(key, data),
        HmacDigest::Sha512 => mac::<Hmac<sha2::Sha512>>(key, data),
    };
    hex(&raw)
}

/// Rails' `ActiveSupport::MessageVerifier` without a serializer:
/// `strict_base64(data) + "--" + hex(HMAC(key, strict_base64(data)))`.
///
/// ```
/// use cable_rails::{HmacDigest, MessageVerifier};
/// let v = MessageVerifier::new(b"secret".to_vec(), HmacDigest::Sha256);
/// let token = v.generate(br#""chat/1""#);
/// assert_eq!(v.verify(&token).unwrap(), br#""chat/1""#);
/// assert!(v.verify(&token.replace("--", "--0")).is_err());
/// ```
#[derive(Clone)]
pub struct MessageVerifier {
    key: Vec<u8>,
    digest: HmacDigest,
}

debug_redacted!(MessageVerifier, "key");

impl MessageVerifier {
    /// A verifier with `key` (raw bytes: a derived key, or a secret used as is).
    pub fn new(key: Vec<u8>, digest: HmacDigest) -> Self {
        MessageVerifier { key, digest }
    }

    /// The HMAC digest.
    pub fn digest(&self) -> HmacDigest {
        self.digest
    }

    /// Signs `data` (already serialized: JSON text, an envelope...).
    pub fn generate(&self, data: &[u8]) -> String {
        let encoded = STANDARD.encode(data);
        let digest = hmac_hex(self.digest, &self.key, encoded.as_bytes());
        format!("{encoded}--{digest}")
    }

    /// Checks the signature (constant time) and returns the decoded data.
    pub fn verify(&self, signed: &str) -> Result<Vec<u8>, CookieError> {
        let (data, digest) = signed.rsplit_once("--").ok_or(CookieError::Malformed)?;
        if data.is_empty() || digest.is_empty() {
            return Err(CookieError::Malformed);
        }
        let expected = hmac_hex(self.digest, &self.key, data.as_bytes());
        let same = expected.len() == digest.len()
            && bool::from(expected.as_bytes().ct_eq(digest.as_bytes()));
        if !same {
            return Err(CookieError::InvalidSignature);
        }
        decode_base64(data).ok_or(CookieError::Malformed)
    }
}

/// Rails' `ActiveSupport::MessageEncryptor` with `aes-256-gcm`:
/// `base64(ciphertext)--base64(iv)--base64(tag)`, 12-byte IV, 16-byte tag,
/// empty associated data.
#[derive(Clone)]
pub struct MessageEncryptor {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MessageEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageEncryptor")
            .field("cipher", &"aes-256-gcm")
            .finish_non_exhaustive()
    }
}

impl MessageEncryptor {
    /// An encryptor with a 32-byte key; `None` for any other length.
    pub fn new(key: &[u8]) -> Option<Self> {
        Aes256Gcm::new_from_slice(key)
            .ok()
            .map(|cipher| MessageEncryptor { cipher })
    }

    /// Decrypts and authenticates a message (the tag is checked in constant
    /// time by AES-GCM).
    pub fn decrypt(&self, message: &str) -> Result<Vec<u8>, CookieError> {
        let mut parts = message.split("--");
        let (Some(data), Some(iv), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CookieError::Malformed);
        };
        let mut data = if data.is_empty() {
            Vec::new()
        } else {
            decode_base64(data).ok_or(CookieError::Malformed)?
        };
        let iv = decode_base64(iv).ok_or(CookieError::Malformed)?;
        let tag = decode_base64(tag).ok_or(CookieError::Malformed)?;
        let nonce = Nonce::try_from(iv.as_slice()).map_err(|_| CookieError::Malformed)?;
        let tag = Tag::try_from(tag.as_slice()).map_err(|_| CookieError::Malformed)?;
        self.cipher
            .decrypt_inout_detached(&nonce, b"", data.as_mut_slice().into(), &tag)
            .map_err(|_| CookieError::InvalidSignature)?;
        Ok(data)
    }

    /// Encrypts `plaintext` with the caller's `iv`, which must never be used
    /// twice with one key (take it from a CSPRNG). For tests and tools that
    /// write cookies a Rails app reads.
    pub fn encrypt_with_iv(&self, plaintext: &[u8], iv: [u8; 12]) -> String {
        let mut data = plaintext.to_vec();
        let nonce = Nonce::from(iv);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, b"", data.as_mut_slice().into())
            .expect("a cookie is far below AES-GCM's length limit");
        format!(
            "{}--{}--{}",
            STANDARD.encode(&data),
            STANDARD.encode(iv),
            STANDARD.encode(tag.as_slice())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn derives_the_reference_keys() {
        // shared/reference/actioncable-protocol.md, appendix.
        let zero = "0".repeat(128);
        let sha1 = KeyGenerator::new(&zero, KeyDigest::Sha1);
        let sha256 = KeyGenerator::new(&zero, KeyDigest::Sha256);
        assert_eq!(
            hex(&sha1.generate_key("signed cookie", 64)[..16]),
            "96c72d48dfef8c2339fc5405eb71fccc"
        );
        assert_eq!(
            hex(&sha256.generate_key("signed cookie", 64)[..16]),
            "6d04193018f7cd6dea0f0bbd75c126df"
        );
        assert_eq!(
            hex(&sha1.generate_key("authenticated encrypted cookie", 32)),
            "f3c5951eb4f0cbcf21d6263ba1ab91796c876c18f9b27b1df887a62caca9001f"
        );
        assert_eq!(
            hex(&sha256.generate_key("authenticated encrypted cookie", 32)),
            "1e4ed67d72f108a753afe3539684e7688bfa2ef580adfe5d272b8e863a3da430"
        );
    }

    #[test]
    fn signs_like_the_reference() {
        let zero = "0".repeat(128);
        let envelope = br#"{"_rails":{"message":"NDI=","exp":null,"pur":"cookie.user_id"}}"#;
        for (digest, mac) in [
            (KeyDigest::Sha1, "4ba8f1f899702c9f6a58bf43ca231c8a81f34b6c"),
            (
                KeyDigest::Sha256,
                "f2b2674c675c1fc3891d2e21edfbb429facff314",
            ),
        ] {
            let key = KeyGenerator::new(&zero, digest).generate_key("signed cookie", 64);
            let v = MessageVerifier::new(key, HmacDigest::Sha1);
            let token = v.generate(envelope);
            assert_eq!(token.rsplit_once("--").unwrap().1, mac);
            assert_eq!(v.verify(&token).unwrap(), envelope);
        }
    }

    #[test]
    fn refuses_bad_signatures() {
        let v = MessageVerifier::new(b"k".to_vec(), HmacDigest::Sha1);
        let good = v.generate(b"42");
        let (data, mac) = good.rsplit_once("--").unwrap();
        assert_eq!(v.verify(&good).unwrap(), b"42");
        for bad in [
            format!("{data}--{}", &mac[..39]),
            format!("{data}--{}", mac.to_uppercase()),
            format!("{data}x--{mac}"),
            format!("--{mac}"),
            format!("{data}--"),
            data.to_owned(),
            String::new(),
        ] {
            assert!(v.verify(&bad).is_err(), "accepted {bad:?}");
        }
        // Another digest or key does not verify.
        let v256 = MessageVerifier::new(b"k".to_vec(), HmacDigest::Sha256);
        assert_eq!(v256.verify(&good), Err(CookieError::InvalidSignature));
        let other = MessageVerifier::new(b"j".to_vec(), HmacDigest::Sha1);
        assert_eq!(other.verify(&good), Err(CookieError::InvalidSignature));
    }

    #[test]
    fn decrypts_the_reference_sample() {
        let key = unhex("f3c5951eb4f0cbcf21d6263ba1ab91796c876c18f9b27b1df887a62caca9001f");
        let e = MessageEncryptor::new(&key).unwrap();
        let sample = "ZeBNbn8C/JCInLe4ZLK6IyPMXF67XQ3RjvqH8LRi54PGCTMz9MyMKuZnnIvHNkNabkqIeaTX0YCzQqKMZgtCFltuz2IUVcM+ErFFw84B/WkhWE10ALypVv9blklyEjj//C3lsrznSFUrschjtivP--QUn8g48y8L7Whluu--53r2SM8OTOyNXHhE4hAmDQ==";
        let plain = String::from_utf8(e.decrypt(sample).unwrap()).unwrap();
        assert!(
            plain.contains(r#""pur":"cookie._my_app_session""#),
            "{plain}"
        );
    }

    #[test]
    fn encrypts_what_it_decrypts() {
        let e = MessageEncryptor::new(&[7u8; 32]).unwrap();
        let token = e.encrypt_with_iv(b"hello", [1; 12]);
        assert_eq!(e.decrypt(&token).unwrap(), b"hello");
        let mut parts: Vec<String> = token.split("--").map(str::to_owned).collect();
        parts[2] = STANDARD.encode([0u8; 16]);
        assert_eq!(
            e.decrypt(&parts.join("--")),
            Err(CookieError::InvalidSignature)
        );
        assert_eq!(
            e.decrypt(&parts[..2].join("--")),
            Err(CookieError::Malformed)
        );
        assert!(MessageEncryptor::new(&[0u8; 16]).is_none());
    }
}
