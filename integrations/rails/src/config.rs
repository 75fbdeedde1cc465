//! [`RailsConfig`], the built [`Rails`] integration and its connection hook.

use std::sync::Arc;
use std::time::SystemTime;

use cable_core::{
    async_trait, Authenticate, CableBuilder, ConnectRequest, Identifiers, Unauthorized,
};
use serde_json::Value;

use crate::cookies::CookieJar;
use crate::crypto::{HmacDigest, KeyDigest};
use crate::error::{ConfigError, CookieError};
use crate::session::{Session, SessionIdentifier};
use crate::streams::{
    PubSubChannel, StreamVerifier, TurboStreamsChannel, PUBSUB_CHANNEL, TURBO_CHANNEL,
};

/// How to work beside a Rails app: its secrets, its session cookie, which
/// identifiers to take from the session, and which Rails-side channels to
/// serve.
///
/// ```
/// use cable_rails::{RailsConfig, SessionIdentifier, KeyDigest};
/// let mut config = RailsConfig::new("0".repeat(128));
/// config.key_derivation = vec![KeyDigest::Sha1];          // a Rails 6.1 app
/// config.session_cookie = Some("_my_app_session".into());
/// config.identifiers = vec!["current_user=user_id".parse().unwrap()];
/// config.turbo = true;
/// let rails = config.build().unwrap();
/// # let _ = rails;
/// ```
///
/// It is also what a settings file holds (serde, any format; the
/// standalone server reads it from TOML and `CABLE_*` variables). Lists
/// are arrays or comma-separated text; absent keys take the defaults of
/// [`RailsConfig::default`]; unknown keys are refused. Secrets
/// (`secret_key_base`, `streams_secret`, `turbo_verifier_key`) are read but
/// never serialised.
///
/// ```
/// # use cable_rails::{RailsConfig, KeyDigest};
/// let config: RailsConfig = serde_json::from_str(r#"{
///     "secret_key_base": "0000000000000000000000000000000000000000",
///     "key_derivation": "sha1",
///     "session_cookie": "_my_app_session",
///     "session_identifiers": ["current_user=user_id"],
///     "turbo_streams": true
/// }"#).unwrap();
/// assert_eq!(config.key_derivation, [KeyDigest::Sha1]);
/// assert!(config.turbo && config.validate().is_ok());
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RailsConfig {
    /// The app's `secret_key_base` (the text, usually 128 hex characters),
    /// then any older ones still to accept (rotation). The first one signs.
    #[serde(skip_serializing, deserialize_with = "text::list")]
    pub secret_key_base: Vec<String>,
    /// PBKDF2 digests to derive keys with, tried in order: SHA1 for Rails 6.1
    /// and apps without `load_defaults 7.0`; SHA256 from 7.0. Default: both,
    /// SHA256 first.
    #[serde(deserialize_with = "text::list")]
    pub key_derivation: Vec<KeyDigest>,
    /// The HMAC of `cookies.signed` (`config.action_dispatch.signed_cookie_digest`).
    /// Default SHA1, whatever the key derivation (Rails' default).
    #[serde(deserialize_with = "text::one")]
    pub signed_cookie_digest: HmacDigest,
    /// The session cookie (`config.session_store :cookie_store, key: ...`),
    /// `_<app>_session` by default in Rails, e.g. `_my_app_session` for
    /// `MyApp`. `None`: connections are not authenticated by the session.
    pub session_cookie: Option<String>,
    /// The connection identifiers, taken from the session in this order
    /// (`session_identifiers` in a settings file).
    #[serde(rename = "session_identifiers", deserialize_with = "text::list")]
    pub identifiers: Vec<SessionIdentifier>,
    /// Accept connections without a (valid) session, or whose session lacks
    /// an identifier, with whatever identifiers could be read. Default false:
    /// such connections are refused as unauthorized, as a Rails
    /// `connect` that calls `reject_unauthorized_connection` does.
    pub allow_anonymous: bool,
    /// The app's `config.global_id.app` (`my-app` for `MyApp`), for
    /// identifiers mapped to a GlobalID.
    pub global_id_app: Option<String>,
    /// Serve `Turbo::StreamsChannel` (`turbo_streams` in a settings file).
    #[serde(rename = "turbo_streams")]
    pub turbo: bool,
    /// `config.turbo.signed_stream_verifier_key`, when the app sets one;
    /// otherwise the key is derived from `secret_key_base`.
    #[serde(skip_serializing)]
    pub turbo_verifier_key: Option<String>,
    /// Serve `$pubsub` with `signed_stream_name`.
    pub pubsub_signed: bool,
    /// Serve `$pubsub` with a plain `stream_name`: anyone may then listen to
    /// any stream they can name. Default false.
    pub pubsub_public: bool,
    /// Subscribers of signed `$pubsub` streams may whisper (AnyCable's
    /// `streams_whisper`; public streams always may). Default false.
    pub pubsub_signed_whispers: bool,
    /// The secret of signed `$pubsub` names (AnyCable's `streams_secret`,
    /// used as it is). Default: `secret_key_base` itself, as anycable-rails
    /// falls back to.
    #[serde(skip_serializing)]
    pub streams_secret: Option<String>,
}

/// Secrets are redacted.
impl std::fmt::Debug for RailsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "[redacted]");
        f.debug_struct("RailsConfig")
            .field(
                "secret_key_base",
                &format_args!("[{} redacted]", self.secret_key_base.len()),
            )
            .field("key_derivation", &self.key_derivation)
            .field("signed_cookie_digest", &self.signed_cookie_digest)
            .field("session_cookie", &self.session_cookie)
            .field("identifiers", &self.identifiers)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("global_id_app", &self.global_id_app)
            .field("turbo", &self.turbo)
            .field("turbo_verifier_key", &redacted(&self.turbo_verifier_key))
            .field("pubsub_signed", &self.pubsub_signed)
            .field("pubsub_public", &self.pubsub_public)
            .field("pubsub_signed_whispers", &self.pubsub_signed_whispers)
            .field("streams_secret", &redacted(&self.streams_secret))
            .finish()
    }
}

/// No secret, Rails' defaults elsewhere, nothing enabled.
impl Default for RailsConfig {
    fn default() -> Self {
        RailsConfig {
            secret_key_base: Vec::new(),
            key_derivation: KeyDigest::ALL.to_vec(),
            signed_cookie_digest: HmacDigest::Sha1,
            session_cookie: None,
            identifiers: Vec::new(),
            allow_anonymous: false,
            global_id_app: None,
            turbo: false,
            turbo_verifier_key: None,
            pubsub_signed: false,
            pubsub_public: false,
            pubsub_signed_whispers: false,
            streams_secret: None,
        }
    }
}

impl RailsConfig {
    /// A configuration for `secret_key_base`, with Rails' defaults elsewhere
    /// and nothing enabled.
    pub fn new(secret_key_base: impl Into<String>) -> Self {
        RailsConfig {
            secret_key_base: vec![secret_key_base.into()],
            ..RailsConfig::default()
        }
    }

    /// Whether anything is asked of the integration: a secret, the session,
    /// Turbo or `$pubsub`. A settings file without Rails keys gives `false`.
    pub fn enabled(&self) -> bool {
        !self.secret_key_base.is_empty()
            || self.session_cookie.is_some()
            || self.turbo
            || self.pubsub_signed
            || self.pubsub_public
    }

    /// Checks the configuration. Without a `secret_key_base` only what
    /// needs no key derived from it works: public `$pubsub` streams, signed
    /// ones with `streams_secret`, Turbo with `turbo_verifier_key` (as an
    /// AnyCable deployment configures them); the session always needs it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let own_keys_only = (self.pubsub_public || self.pubsub_signed || self.turbo)
            && (!self.pubsub_signed || self.streams_secret.is_some())
            && (!self.turbo || self.turbo_verifier_key.is_some())
            && self.session_cookie.is_none();
        if (self.secret_key_base.is_empty() && !own_keys_only)
            || self.secret_key_base.iter().any(String::is_empty)
        {
            return Err(ConfigError::MissingSecret);
        }
        if let Some(short) = self.secret_key_base.iter().find(|s| s.len() < 30) {
            return Err(ConfigError::ShortSecret(short.len()));
        }
        if self.key_derivation.is_empty() {
            return Err(ConfigError::NoKeyDigest);
        }
        if !self.identifiers.is_empty() && self.session_cookie.is_none() {
            return Err(ConfigError::IdentifiersWithoutSession);
        }
        if self.session_cookie.as_deref() == Some("") {
            return Err(ConfigError::EmptyKey("session_cookie"));
        }
        for (i, id) in self.identifiers.iter().enumerate() {
            if self.identifiers[..i].iter().any(|o| o.name == id.name) {
                return Err(ConfigError::DuplicateIdentifier(id.name.clone()));
            }
            if id.global_id_model.is_some()
                && self.global_id_app.as_deref().unwrap_or("").is_empty()
            {
                return Err(ConfigError::GlobalIdWithoutApp(id.name.clone()));
            }
        }
        if self.turbo_verifier_key.as_deref() == Some("") {
            return Err(ConfigError::EmptyKey("turbo_verifier_key"));
        }
        if self.streams_secret.as_deref() == Some("") {
            return Err(ConfigError::EmptyKey("streams_secret"));
        }
        Ok(())
    }

    /// Validates and derives every key (PBKDF2 runs here, once).
    pub fn build(self) -> Result<Rails, ConfigError> {
        Rails::new(self)
    }
}

/// Settings-file forms: a value from its text (`FromStr`), and a list from
/// an array or from comma-separated text (what an environment variable
/// holds).
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::{Deserializer, Error, Unexpected};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    fn parse<T: FromStr<Err: Display>, E: Error>(s: &str) -> Result<T, E> {
        s.trim()
            .parse()
            .map_err(|e: T::Err| E::invalid_value(Unexpected::Str(s), &e.to_string().as_str()))
    }

    pub(super) fn one<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        d: D,
    ) -> Result<T, D::Error> {
        parse(&String::deserialize(d)?)
    }

    pub(super) fn list<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        let items = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => s
                .split(',')
                .filter(|i| !i.trim().is_empty())
                .map(str::to_owned)
                .collect(),
            OneOrMany::Many(v) => v,
        };
        items.iter().map(|i| parse(i)).collect()
    }
}

// Debug shows no secret: the config and every key type redact theirs.
#[derive(Debug)]
struct Inner {
    config: RailsConfig,
    cookies: CookieJar,
    turbo: Arc<StreamVerifier>,
    pubsub: Arc<StreamVerifier>,
}

/// The Rails integration, built from a [`RailsConfig`] with every key
/// derived. Cheap to clone.
///
/// - [`Rails::install`] puts everything enabled into a `CableBuilder`;
/// - or take the parts: [`Rails::authenticator`], [`Rails::turbo_channel`],
///   [`Rails::pubsub_channel`];
/// - and read cookies yourself: [`Rails::session`], [`Rails::cookies`].
#[derive(Clone, Debug)]
pub struct Rails {
    inner: Arc<Inner>,
}

impl Rails {
    /// Validates `config` and derives the keys.
    pub fn new(config: RailsConfig) -> Result<Rails, ConfigError> {
        config.validate()?;
        let cookies = CookieJar::new(
            &config.secret_key_base,
            &config.key_derivation,
            config.signed_cookie_digest,
        );
        let turbo = match &config.turbo_verifier_key {
            Some(key) => StreamVerifier::with_keys(&[key]),
            None => StreamVerifier::turbo(&config.secret_key_base, &config.key_derivation),
        };
        let pubsub = match &config.streams_secret {
            Some(secret) => StreamVerifier::with_keys(&[secret]),
            None => StreamVerifier::with_keys(&config.secret_key_base),
        };
        Ok(Rails {
            inner: Arc::new(Inner {
                config,
                cookies,
                turbo: Arc::new(turbo),
                pubsub: Arc::new(pubsub),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RailsConfig {
        &self.inner.config
    }

    /// Registers what the configuration enables: the session hook (when
    /// `session_cookie` is set), `Turbo::StreamsChannel` (when `turbo`) and
    /// `$pubsub` (when `pubsub_signed` or `pubsub_public`). A later
    /// `.authenticate(...)` on the builder replaces the session hook.
    pub fn install(&self, mut builder: CableBuilder) -> CableBuilder {
        let c = &self.inner.config;
        if c.session_cookie.is_some() {
            builder = builder.authenticate(self.authenticator());
        }
        if c.turbo {
            builder = builder.channel(TURBO_CHANNEL, self.turbo_channel());
        }
        if c.pubsub_signed || c.pubsub_public {
            builder = builder.channel(PUBSUB_CHANNEL, self.pubsub_channel());
        }
        builder
    }

    /// The connection hook: reads the session cookie and sets the configured
    /// identifiers from it.
    pub fn authenticator(&self) -> RailsAuth {
        RailsAuth {
            rails: self.clone(),
        }
    }

    /// A factory of [`TurboStreamsChannel`]s, for
    /// `builder.channel(TURBO_CHANNEL, rails.turbo_channel())`.
    pub fn turbo_channel(&self) -> impl Fn() -> TurboStreamsChannel + Send + Sync + 'static {
        let verifier = self.inner.turbo.clone();
        move || TurboStreamsChannel::new(verifier.clone())
    }

    /// A factory of [`PubSubChannel`]s as configured (`pubsub_signed`,
    /// `pubsub_public`, `pubsub_signed_whispers`), for `builder.channel(PUBSUB_CHANNEL, rails.pubsub_channel())`.
    pub fn pubsub_channel(&self) -> impl Fn() -> PubSubChannel + Send + Sync + 'static {
        let signed = self
            .inner
            .config
            .pubsub_signed
            .then(|| self.inner.pubsub.clone());
        let public = self.inner.config.pubsub_public;
        let whispers = self.inner.config.pubsub_signed_whispers;
        move || PubSubChannel::new(signed.clone(), public).signed_whispers(whispers)
    }

    /// Turbo's verifier (to sign names from Rust: `turbo_verifier().sign(name)`).
    pub fn turbo_verifier(&self) -> &StreamVerifier {
        &self.inner.turbo
    }

    /// The `$pubsub` verifier (to hand clients signed names).
    pub fn pubsub_verifier(&self) -> &StreamVerifier {
        &self.inner.pubsub
    }

    /// The app's `cookies.signed` / `cookies.encrypted`.
    pub fn cookies(&self) -> &CookieJar {
        &self.inner.cookies
    }

    /// `cookies.signed[name]` of the request; `Ok(None)` without that cookie.
    pub fn signed_cookie(
        &self,
        request: &ConnectRequest,
        name: &str,
    ) -> Result<Option<Value>, CookieError> {
        self.read_cookie(request, name, CookieJar::signed)
    }

    /// `cookies.encrypted[name]` of the request; `Ok(None)` without that cookie.
    pub fn encrypted_cookie(
        &self,
        request: &ConnectRequest,
        name: &str,
    ) -> Result<Option<Value>, CookieError> {
        self.read_cookie(request, name, CookieJar::encrypted)
    }

    /// The request's cookie `name` read by `read`; `Ok(None)` without it.
    fn read_cookie(
        &self,
        request: &ConnectRequest,
        name: &str,
        read: fn(&CookieJar, &str, &str) -> Result<Value, CookieError>,
    ) -> Result<Option<Value>, CookieError> {
        request
            .cookie(name)
            .map(|v| read(&self.inner.cookies, name, v))
            .transpose()
    }

    /// The request's session; `Ok(None)` without a session cookie (or when
    /// `session_cookie` is not configured).
    pub fn session(&self, request: &ConnectRequest) -> Result<Option<Session>, CookieError> {
        let Some(name) = &self.inner.config.session_cookie else {
            return Ok(None);
        };
        request
            .cookie(name)
            .map(|v| self.read_session(v))
            .transpose()
    }

    /// Decrypts a session cookie value (percent-decoded).
    pub fn read_session(&self, value: &str) -> Result<Session, CookieError> {
        self.read_session_at(value, SystemTime::now())
    }

    /// [`Rails::read_session`] with expiry (`expire_after`) checked against `now`.
    pub fn read_session_at(&self, value: &str, now: SystemTime) -> Result<Session, CookieError> {
        let name = self.inner.config.session_cookie.as_deref().unwrap_or("");
        match self.inner.cookies.encrypted_at(name, value, now)? {
            Value::Object(map) => Ok(Session::new(map)),
            _ => Err(CookieError::NotASession),
        }
    }

    /// The configured identifiers of `session`. Missing ones are left out.
    pub fn identifiers_for(&self, session: &Session) -> Identifiers {
        let c = &self.inner.config;
        let mut ids = Identifiers::new();
        for mapping in &c.identifiers {
            if let Some(v) = mapping.value(session, c.global_id_app.as_deref()) {
                ids.insert(mapping.name.clone(), v);
            }
        }
        ids
    }
}

/// The connection hook built by [`Rails::authenticator`]: decrypts the session
/// cookie and identifies the connection from it, as the Rails app's
/// `ApplicationCable::Connection#connect` would. No session, an invalid one,
/// or a missing identifier refuses the connection (`unauthorized`) unless
/// `allow_anonymous` is set.
#[derive(Clone, Debug)]
pub struct RailsAuth {
    rails: Rails,
}

#[async_trait]
impl Authenticate for RailsAuth {
    async fn connect(&self, request: &ConnectRequest) -> Result<Identifiers, Unauthorized> {
        let c = &self.rails.inner.config;
        let name = c.session_cookie.as_deref().unwrap_or("");
        let session = match self.rails.session(request) {
            Ok(Some(s)) => s,
            Ok(None) if c.allow_anonymous => return Ok(Identifiers::new()),
            Ok(None) => return Err(Unauthorized::because(format!("no session cookie {name}"))),
            Err(e) => {
                if e == CookieError::MarshalSerialized {
                    tracing::warn!("session cookie {name}: {e}");
                }
                if c.allow_anonymous {
                    tracing::debug!("session cookie {name} ignored: {e}");
                    return Ok(Identifiers::new());
                }
                return Err(Unauthorized::because(format!("session cookie {name}: {e}")));
            }
        };
        let ids = self.rails.identifiers_for(&session);
        if !c.allow_anonymous {
            if let Some(missing) = c.identifiers.iter().find(|m| ids.get(&m.name).is_none()) {
                return Err(Unauthorized::because(format!(
                    "the session has no {} (for identifier {})",
                    missing.source, missing.name
                )));
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates() {
        let ok = RailsConfig::new("x".repeat(64));
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.secret_key_base.clear();
        assert_eq!(c.validate(), Err(ConfigError::MissingSecret));
        let c = RailsConfig::new("short");
        assert_eq!(c.validate(), Err(ConfigError::ShortSecret(5)));
        let mut c = ok.clone();
        c.key_derivation.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoKeyDigest));
        let mut c = ok.clone();
        c.identifiers = vec![SessionIdentifier::key("u", "user_id")];
        assert_eq!(c.validate(), Err(ConfigError::IdentifiersWithoutSession));
        c.session_cookie = Some("_s".into());
        assert!(c.validate().is_ok());
        c.identifiers.push(SessionIdentifier::key("u", "other"));
        assert_eq!(
            c.validate(),
            Err(ConfigError::DuplicateIdentifier("u".into()))
        );
        c.identifiers = vec![SessionIdentifier::key("u", "user_id").as_global_id("User")];
        assert_eq!(
            c.validate(),
            Err(ConfigError::GlobalIdWithoutApp("u".into()))
        );
        c.global_id_app = Some("my-app".into());
        assert!(c.validate().is_ok());
        c.streams_secret = Some(String::new());
        assert_eq!(c.validate(), Err(ConfigError::EmptyKey("streams_secret")));
        c.streams_secret = Some("hush-hush".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("xxxx") && !shown.contains("hush"),
            "{shown}"
        );
        let shown = format!("{:?}", Rails::new(c.clone()).expect("valid"));
        assert!(
            shown.contains("[redacted]") && !shown.contains("xxxx") && !shown.contains("hush"),
            "{shown}"
        );
    }

    #[test]
    fn deserialises_settings_and_never_serialises_secrets() {
        let c: RailsConfig = serde_json::from_value(serde_json::json!({
            "secret_key_base": "a".repeat(40) + ", " + &"b".repeat(40),
            "key_derivation": ["SHA1", "sha256"],
            "signed_cookie_digest": "SHA256",
            "session_cookie": "_s",
            "session_identifiers": "current_user=warden:user as User",
            "global_id_app": "my-app",
            "turbo_streams": true,
            "streams_secret": "hush-hush",
        }))
        .unwrap();
        assert_eq!(c.secret_key_base, ["a".repeat(40), "b".repeat(40)]);
        assert_eq!(c.key_derivation, [KeyDigest::Sha1, KeyDigest::Sha256]);
        assert_eq!(c.signed_cookie_digest, HmacDigest::Sha256);
        assert_eq!(c.identifiers[0].global_id_model.as_deref(), Some("User"));
        assert!(c.turbo && c.validate().is_ok());
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            !shown.contains("aaaa") && !shown.contains("hush"),
            "{shown}"
        );
        assert!(shown.contains(r#""session_identifiers":["current_user=warden:user as User"]"#));
        // Defaults when absent; unknown keys and bad values refused.
        let d: RailsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(d, RailsConfig::default());
        assert!(!d.enabled());
        assert!(serde_json::from_str::<RailsConfig>(r#"{"turbo": true}"#).is_err());
        let e = serde_json::from_str::<RailsConfig>(r#"{"key_derivation": "md5"}"#).unwrap_err();
        assert!(e.to_string().contains("SHA1 or SHA256"), "{e}");
        // Public `$pubsub` streams alone need no secret_key_base.
        let mut p = RailsConfig {
            pubsub_public: true,
            ..RailsConfig::default()
        };
        assert!(p.enabled() && p.validate().is_ok());
        p.pubsub_signed = true;
        assert_eq!(p.validate(), Err(ConfigError::MissingSecret));
        // Signed `$pubsub` and Turbo with keys of their own need none either.
        p.streams_secret = Some("streams".into());
        assert!(p.validate().is_ok());
        p.turbo = true;
        assert_eq!(p.validate(), Err(ConfigError::MissingSecret));
        p.turbo_verifier_key = Some("turbo".into());
        assert!(p.validate().is_ok());
        p.session_cookie = Some("_app_session".into());
        assert_eq!(p.validate(), Err(ConfigError::MissingSecret));
    }
}
