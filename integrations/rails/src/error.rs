//! Errors at the crate's boundary.

/// Why a Rails cookie (or a signed stream name) was not accepted. Rails reads
/// all of these as `nil`; the variants say why, for the log. None of them
/// carries the cookie's content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CookieError {
    /// Not the `data--digest` or `data--iv--tag` shape, or bad base64.
    #[error("malformed value (not Rails' signed or encrypted format)")]
    Malformed,
    /// The HMAC or the AES-GCM tag does not match under any configured key:
    /// tampered, or made with another `secret_key_base` or digest.
    #[error(
        "signature does not verify (tampered, or made with another secret_key_base or digest)"
    )]
    InvalidSignature,
    /// The `_rails` envelope names another purpose (another cookie's value).
    #[error("made for purpose {found:?}, not {expected:?}")]
    WrongPurpose {
        /// `cookie.<name>` for the cookie read.
        expected: String,
        /// What the envelope says.
        found: String,
    },
    /// The `_rails` envelope's `exp` has passed.
    #[error("expired at {0}")]
    Expired(String),
    /// The `_rails` envelope is not what Rails writes.
    #[error("malformed _rails envelope: {0}")]
    BadEnvelope(String),
    /// The value is Ruby Marshal data: the app writes cookies with the
    /// `:marshal` serializer, which only Ruby can read.
    #[error(
        "the value is Marshal-serialized, which only Ruby can read; switch the Rails app to JSON \
         cookies with `Rails.application.config.action_dispatch.cookies_serializer = :json` \
         (or `:hybrid` to convert existing cookies as they are next read), then log in again"
    )]
    MarshalSerialized,
    /// The value is not JSON (another serializer, such as `:message_pack`).
    #[error(
        "the value is not JSON ({0}); the Rails app must use \
         `config.action_dispatch.cookies_serializer = :json`"
    )]
    NotJson(String),
    /// The session cookie's value is not a JSON object.
    #[error("the session is not a JSON object")]
    NotASession,
}

/// A [`RailsConfig`](crate::RailsConfig) that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No `secret_key_base`, or an empty one.
    #[error(
        "secret_key_base is missing or empty (session_cookie needs the app's secret, \
         turbo_streams too without turbo_verifier_key, pubsub_signed without streams_secret)"
    )]
    MissingSecret,
    /// `secret_key_base` is shorter than Rails accepts in production.
    #[error("secret_key_base is {0} bytes; Rails makes 128 hex characters (`bin/rails secret`) and refuses fewer than 30 in production")]
    ShortSecret(usize),
    /// `key_derivation` is empty.
    #[error("key_derivation lists no digest (SHA1 for Rails <= 6.1 defaults, SHA256 from 7.0)")]
    NoKeyDigest,
    /// A session identifier is mapped to a GlobalID without an app name.
    #[error("identifier `{0}` is mapped to a GlobalID but global_id_app is not set (the Rails app's `config.global_id.app`, e.g. `my-app` for MyApp)")]
    GlobalIdWithoutApp(String),
    /// Two session identifiers have the same name.
    #[error("identifier `{0}` is mapped twice")]
    DuplicateIdentifier(String),
    /// Identifiers are mapped but no session cookie is named.
    #[error("identifiers are taken from the session but session_cookie is not set (e.g. `_my_app_session`)")]
    IdentifiersWithoutSession,
    /// An empty custom key or secret.
    #[error("{0} is empty")]
    EmptyKey(&'static str),
}
