//! JWT identification with AnyCable's token layout.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cable_core::{AllowAll, Authenticate, ConnectRequest, Identifiers, Unauthorized};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The subprotocol `@anycable/web` offers to carry the token, followed by
/// it: `anycable-token.<token>`.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "anycable-token.";

/// Settings of a [`JwtAuth`], with AnyCable's names and defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The HMAC key (`jwt_secret`, which falls back to `secret` in
    /// AnyCable's settings), used as it is.
    pub secret: Vec<u8>,
    /// The query parameter carrying the token (`jwt_param`, default `jid`);
    /// the header is `X-` and this name.
    pub param: String,
    /// Refuse connections without a token (`enforce_jwt`), instead of
    /// handing them to the fallback hook.
    pub enforce: bool,
}

impl JwtConfig {
    /// Settings with `secret`, the `jid` parameter and no enforcement.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        JwtConfig {
            secret: secret.as_ref().to_vec(),
            param: "jid".to_owned(),
            enforce: false,
        }
    }

    /// Sets the query parameter (and so the header) carrying the token.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = param.into();
        self
    }

    /// Sets whether a connection without a token is refused.
    pub fn enforce(mut self, enforce: bool) -> Self {
        self.enforce = enforce;
        self
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &"[redacted]")
            .field("param", &self.param)
            .field("enforce", &self.enforce)
            .finish()
    }
}

/// Why a [`JwtConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// An empty key would accept tokens anyone can make.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// The parameter is also a header name (`X-<param>`), so it must be a
    /// non-empty token of letters, digits, `-` and `_`.
    #[error("the JWT parameter {0:?} is not a usable query parameter and header name")]
    BadParam(String),
    /// The key was refused.
    #[error("unusable JWT key")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// Making a token failed.
    #[error("could not sign a JWT")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// A connection hook that identifies connections by AnyCable's JWT, and
/// hands those without a token to `A` (unless the token is enforced).
/// See the crate docs.
#[derive(Clone)]
pub struct JwtAuth<A = AllowAll> {
    config: JwtConfig,
    header: String,
    key: DecodingKey,
    validation: Validation,
    fallback: A,
}

/// The claims this hook reads and [`JwtAuth::issue`] writes.
#[derive(Serialize, Deserialize)]
struct Claims {
    /// The identifiers, a JSON object encoded as a string.
    ext: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

impl JwtAuth<AllowAll> {
    /// A hook with `config`, accepting connections without a token (with
    /// no identifiers) unless `config.enforce`.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        if config.secret.is_empty() {
            return Err(JwtConfigError::EmptySecret);
        }
        let param_ok = !config.param.is_empty()
            && config
                .param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !param_ok {
            return Err(JwtConfigError::BadParam(config.param));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        // As AnyCable: `exp` is checked when present, to the second, and no
        // other registered claim is required or checked.
        validation.leeway = 0;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = false;
        let key = DecodingKey::from_secret(&config.secret).map_err(JwtConfigError::Key)?;
        Ok(JwtAuth {
            header: format!("x-{}", config.param.to_ascii_lowercase()),
            key,
            validation,
            config,
            fallback: AllowAll,
        })
    }
}

impl<A> JwtAuth<A> {
    /// Hands connections without a token to `fallback` (a cookie or session
    /// hook, say) instead of accepting them unidentified. Ignored when the
    /// token is enforced.
    pub fn or_else<B: Authenticate>(self, fallback: B) -> JwtAuth<B> {
        JwtAuth {
            config: self.config,
            header: self.header,
            key: self.key,
            validation: self.validation,
            fallback,
        }
    }

    /// The settings.
    pub fn config(&self) -> &JwtConfig {
        &self.config
    }

    /// The token `request` carries, if any: the `X-<param>` header, else
    /// the `<param>` query parameter, else an `anycable-token.<token>`
    /// subprotocol.
    pub fn token<'r>(&self, request: &'r ConnectRequest) -> Option<&'r str> {
        let offered = || {
            request
                .header("sec-websocket-protocol")?
                .split(',')
                .find_map(|p| p.trim().strip_prefix(TOKEN_SUBPROTOCOL_PREFIX))
        };
        request
            .header(&self.header)
            .or_else(|| request.query(&self.config.param))
            .or_else(offered)
            .filter(|t| !t.is_empty())
    }

    /// The identifiers in `token`, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Identifiers, Unauthorized> {
        let data = jsonwebtoken::decode::<Claims>(token.as_bytes(), &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Unauthorized::token_expired("the JWT has expired"),
                _ => Unauthorized::because(format!("invalid JWT: {e}")),
            })?;
        let ext = match data.claims.ext {
            Some(Value::String(ext)) => ext,
            Some(_) => return Err(Unauthorized::because("the JWT's ext claim is not a string")),
            None => return Err(Unauthorized::because("the JWT has no ext claim")),
        };
        // Strings as they are (`"42"` is `42`'s GlobalID-less id too);
        // anything else as its JSON text.
        Identifiers::from_json(&ext).map_err(|e| {
            Unauthorized::because(format!("the JWT's ext claim is not a JSON object: {}", e.0))
        })
    }

    /// A token for `identifiers` that expires after `ttl`, in AnyCable's
    /// layout (HS256), as an app hands it to its front end.
    pub fn issue(
        &self,
        identifiers: &Identifiers,
        ttl: Duration,
    ) -> Result<String, JwtConfigError> {
        let ext: Map<String, Value> = identifiers
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            ext: Some(Value::String(Value::Object(ext).to_string())),
            exp: Some(now.saturating_add(ttl).as_secs()),
        };
        let key = EncodingKey::from_secret(&self.config.secret).map_err(JwtConfigError::Key)?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
            .map_err(JwtConfigError::Sign)
    }
}

impl<A> std::fmt::Debug for JwtAuth<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<A: Authenticate> Authenticate for JwtAuth<A> {
    async fn connect(&self, request: &ConnectRequest) -> Result<Identifiers, Unauthorized> {
        match self.token(request) {
            Some(token) => self.verify(token),
            None if self.config.enforce => Err(Unauthorized::because(
                "no JWT (enforce_jwt is on): give it as ?jid=, X-JID or the anycable-token subprotocol",
            )),
            None => self.fallback.connect(request).await,
        }
    }

    async fn disconnect(&self, identifiers: &Identifiers) {
        self.fallback.disconnect(identifiers).await;
    }
}
