//! `cable-rails`' public decoders on arbitrary input, with the secret of its
//! reference vectors (`integrations/rails/tests/vectors/*.json`, "current"):
//! signed and encrypted cookies, the session cookie and the connection hook
//! built on it, signed stream names (Turbo and `$pubsub`), GlobalIDs and
//! session identifier mappings.
//!
//! Most random cookies fail their signature, so the target also signs or
//! encrypts the fuzz bytes with the real keys first: the envelope, expiry and
//! JSON code behind the signature check then sees arbitrary input too.
//!
//! Invariant: no panic; every failure is an `Err`. Where a value was made
//! with the right key, the signature must verify, and encodings round-trip.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use cable_core::{Authenticate, ConnectRequest};
use cable_rails::{
    CookieError, GlobalId, HmacDigest, KeyDigest, KeyGenerator, MessageEncryptor, MessageVerifier,
    Rails, RailsConfig, SessionIdentifier, StreamVerifier, ENCRYPTED_COOKIE_SALT,
    SIGNED_COOKIE_SALT,
};
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// `secrets.current` of the reference vectors.
const SECRET: &str = "172e61e1f68f4652d36366ba4b96cb40702a56339c084ff146dc9c5924f387180e34b9cb28801a3c2173d8a0dcff752e826b2b5b623772e333a91330ee235bfc";
const SESSION_COOKIE: &str = "_my_app_session";

struct Keys {
    rails: Rails,
    /// Signs and encrypts the way the Rails 6.1 app of the vectors does (SHA1
    /// key derivation).
    signer: MessageVerifier,
    encryptor: MessageEncryptor,
    turbo_signer: MessageVerifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut config = RailsConfig::new(SECRET);
        config.session_cookie = Some(SESSION_COOKIE.into());
        config.identifiers = vec![
            "current_user=user_id as User".parse().expect("mapping"),
            "admin=warden:admin".parse().expect("mapping"),
        ];
        config.global_id_app = Some("my-app".into());
        config.turbo = true;
        config.pubsub_signed = true;
        config.pubsub_public = true;
        config.streams_secret = Some("anycable-streams-secret".into());
        let rails = config.build().expect("valid config");
        let gen = KeyGenerator::new(SECRET, KeyDigest::Sha1);
        Keys {
            rails,
            signer: MessageVerifier::new(
                gen.generate_key(SIGNED_COOKIE_SALT, 64),
                HmacDigest::Sha1,
            ),
            encryptor: MessageEncryptor::new(&gen.generate_key(ENCRYPTED_COOKIE_SALT, 32))
                .expect("32-byte key"),
            turbo_signer: MessageVerifier::new(
                gen.generate_key(cable_rails::TURBO_KEY_SALT, 64),
                HmacDigest::Sha256,
            ),
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Envelope {
    message: Vec<u8>,
    /// Sent as the raw JSON of `exp` when set (a string, a number, garbage).
    exp: Option<String>,
    exp_raw: bool,
    pur: Option<String>,
}

impl Envelope {
    fn to_bytes(&self) -> Vec<u8> {
        use base64::Engine as _;
        let message = base64::engine::general_purpose::STANDARD.encode(&self.message);
        let exp = match (&self.exp, self.exp_raw) {
            (Some(e), true) => e.clone(),
            (Some(e), false) => json!(e).to_string(),
            (None, _) => "null".into(),
        };
        format!(
            r#"{{"_rails":{{"message":{},"exp":{exp},"pur":{}}}}}"#,
            json!(message),
            json!(self.pur)
        )
        .into_bytes()
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Signed {
        name: String,
        value: String,
    },
    Encrypted {
        name: String,
        value: String,
    },
    Session(String),
    /// A `Cookie:` header for the connection hook.
    Connect(String),
    /// Arbitrary bytes signed / encrypted with the app's real keys.
    SignedPayload {
        name: String,
        payload: Vec<u8>,
    },
    EncryptedPayload {
        name: String,
        payload: Vec<u8>,
        iv: [u8; 12],
    },
    /// A `_rails` envelope of fuzzed fields, signed and encrypted.
    Envelope {
        name: String,
        envelope: Envelope,
        iv: [u8; 12],
    },
    StreamName(String),
    StreamPayload(Vec<u8>),
    SignStream(String),
    GlobalId(String),
    GlobalIdParam(String),
    NewGlobalId {
        app: String,
        model: String,
        id: String,
    },
    Mapping(String),
    Digest(String),
}

fn not_forged(r: &Result<serde_json::Value, CookieError>, what: &str) {
    assert!(
        !matches!(
            r,
            Err(CookieError::InvalidSignature | CookieError::Malformed)
        ),
        "{what} made with the app's key was refused: {r:?}"
    );
}

fn run(op: Op) {
    let k = keys();
    let rails = &k.rails;
    let jar = rails.cookies();
    match op {
        Op::Signed { name, value } => {
            let _ = jar.signed(&name, &value);
        }
        Op::Encrypted { name, value } => {
            let _ = jar.encrypted(&name, &value);
        }
        Op::Session(value) => {
            if let Ok(session) = rails.read_session(&value) {
                let _ = rails.identifiers_for(&session);
            }
        }
        Op::Connect(cookie) => {
            let req = ConnectRequest::new("/cable", None, vec![("Cookie".into(), cookie)], None);
            let _ = rails.session(&req);
            let _ = rails.signed_cookie(&req, "user_id");
            let _ = rails.encrypted_cookie(&req, "user_id");
            // The hook does no I/O: it completes on its first poll.
            let done = rails.authenticator().connect(&req).now_or_never();
            assert!(done.is_some(), "the session hook waited");
        }
        Op::SignedPayload { name, payload } => {
            let token = k.signer.generate(&payload);
            let r = jar.signed(&name, &token);
            if !payload.is_empty() {
                not_forged(&r, "a signed cookie");
            }
        }
        Op::EncryptedPayload { name, payload, iv } => {
            let token = k.encryptor.encrypt_with_iv(&payload, iv);
            not_forged(&jar.encrypted(&name, &token), "an encrypted cookie");
            if let Ok(session) = rails.read_session(&token) {
                let _ = rails.identifiers_for(&session);
                let _ = (session.user_id(), session.warden_user_id("admin"));
                let _ = session.warden_salt("admin");
            }
        }
        Op::Envelope { name, envelope, iv } => {
            let bytes = envelope.to_bytes();
            let signed = jar.signed(&name, &k.signer.generate(&bytes));
            not_forged(&signed, "a signed envelope");
            let token = k.encryptor.encrypt_with_iv(&bytes, iv);
            let encrypted = jar.encrypted(&name, &token);
            not_forged(&encrypted, "an encrypted envelope");
            assert_eq!(signed, encrypted, "signed and encrypted read differently");
            let _ = rails.read_session(&token);
        }
        Op::StreamName(signed) => {
            let _ = rails.turbo_verifier().verify(&signed);
            let _ = rails.pubsub_verifier().verify(&signed);
        }
        Op::StreamPayload(payload) => {
            let token = k.turbo_signer.generate(&payload);
            let r = rails.turbo_verifier().verify(&token);
            if !payload.is_empty() {
                assert!(
                    !matches!(
                        r,
                        Err(CookieError::InvalidSignature | CookieError::Malformed)
                    ),
                    "a stream name signed with turbo's key was refused: {r:?}"
                );
            }
        }
        Op::SignStream(stream) => {
            for v in [rails.turbo_verifier(), rails.pubsub_verifier()] {
                let signed = v.sign(&stream);
                assert_eq!(v.verify(&signed).as_deref(), Ok(stream.as_str()));
            }
            let raw = StreamVerifier::with_keys(&[b"k"]);
            assert_eq!(
                raw.verify(&raw.sign(&stream)).as_deref(),
                Ok(stream.as_str())
            );
        }
        Op::GlobalId(text) => {
            if let Ok(gid) = text.parse::<GlobalId>() {
                let again: GlobalId = gid.to_string().parse().expect("a GlobalID re-parses");
                assert_eq!(again, gid);
                assert_eq!(GlobalId::from_param(&gid.to_param()), Some(gid));
            }
        }
        Op::GlobalIdParam(param) => {
            if let Some(gid) = GlobalId::from_param(&param) {
                assert_eq!(GlobalId::from_param(&gid.to_param()), Some(gid));
            }
        }
        Op::NewGlobalId { app, model, id } => {
            let gid = GlobalId::new(app.as_str(), model.as_str(), &id);
            let _ = cable_core::broadcasting_for("ChatChannel", &gid);
            let plain = |s: &str| !s.is_empty() && !s.contains(['/', '?']);
            if plain(&app) && plain(&model) && !id.is_empty() {
                assert_eq!(gid.to_string().parse::<GlobalId>().as_ref(), Ok(&gid));
                assert_eq!(GlobalId::from_param(&gid.to_param()), Some(gid));
            }
        }
        Op::Mapping(text) => {
            if let Ok(m) = text.parse::<SessionIdentifier>() {
                let again: SessionIdentifier = m.to_string().parse().expect("a mapping re-parses");
                assert_eq!(again, m);
            }
        }
        Op::Digest(text) => {
            let _ = text.parse::<KeyDigest>();
            let _ = text.parse::<HmacDigest>();
        }
    }
}

fuzz_target!(|op: Op| run(op));
