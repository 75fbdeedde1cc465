//! `cable-anycable`: what an AnyCable deployment without RPC expects of its
//! WebSocket server, on cable.
//!
//! - **JWT identification.** [`JwtAuth`] identifies a connection from a
//!   token laid out as AnyCable's: HMAC-signed (HS256, HS384, HS512), the
//!   identifiers as a JSON-encoded string in the `ext` claim, the expiry in
//!   `exp`. The token comes as the `jid` query parameter, the `X-JID`
//!   header or the `anycable-token.<token>` WebSocket subprotocol. An
//!   expired token is refused with `token_expired` (`reconnect: false`),
//!   on which `@anycable/web`'s token refresher fetches a new one; any
//!   other bad token with `unauthorized`.
//!
//! ```
//! use std::time::Duration;
//! use cable_anycable::{JwtAuth, JwtConfig};
//! use cable_core::{Cable, Identifiers};
//!
//! let jwt = JwtAuth::new(JwtConfig::new("my-anycable-secret").enforce(true))?;
//! // What the app hands its front end (AnyCable's Ruby `AnyCable::JWT.encode`):
//! let token = jwt.issue(&Identifiers::new().with("user_id", "42"), Duration::from_secs(3600))?;
//! assert_eq!(token.split('.').count(), 3);
//! let cable = Cable::builder().authenticate(jwt).build();
//! # drop(cable);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Connections without a token go to another hook unless the token is
//! enforced ([`JwtAuth::or_else`]):
//!
//! ```
//! use cable_anycable::{JwtAuth, JwtConfig};
//! use cable_core::{authenticate_with, Identifiers, Unauthorized};
//! let cookie_hook = authenticate_with(|req| async move {
//!     match req.cookie("user") {
//!         Some(u) => Ok(Identifiers::new().with("user_id", u)),
//!         None => Err(Unauthorized::because("no token and no user cookie")),
//!     }
//! });
//! let auth = JwtAuth::new(JwtConfig::new("secret"))?.or_else(cookie_hook);
//! # drop(auth);
//! # Ok::<(), cable_anycable::JwtConfigError>(())
//! ```
//!
//! **Derived keys.** [`broadcast_key`] is the bearer key of
//! `POST /_broadcast` that AnyCable derives from its application secret.

mod jwt;
mod keys;

pub use jwt::{JwtAuth, JwtConfig, JwtConfigError, TOKEN_SUBPROTOCOL_PREFIX};
pub use keys::{api_key, broadcast_key};
