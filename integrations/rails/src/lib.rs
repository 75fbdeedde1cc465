//! `cable-rails`: run cable beside a Rails app, with nothing to add on the
//! Rails side.
//!
//! - **Sessions and cookies.** Reads the app's encrypted session cookie
//!   (`_my_app_session`), `cookies.signed[...]` and `cookies.encrypted[...]`
//!   exactly as Rails writes them: keys derived from `secret_key_base` by
//!   PBKDF2 (SHA1 up to Rails 6.1 defaults, SHA256 from 7.0; several secrets
//!   and digests for rotation), HMAC `data--digest` and AES-256-GCM
//!   `data--iv--tag` formats, the `_rails` envelope with its purpose and
//!   expiry, JSON values. Marshal-serialized cookies are refused with advice.
//! - **Identifiers.** [`RailsAuth`] identifies a connection from the session
//!   (`user_id`, Warden/Devise's `warden.user.user.key`), optionally as the
//!   record's GlobalID param, as `identified_by :current_user` would.
//! - **Turbo Streams.** [`TurboStreamsChannel`] serves
//!   `Turbo::StreamsChannel`: the `signed_stream_name` a `turbo_stream_from`
//!   tag carries is verified with turbo-rails' key, the client streams from
//!   the name inside, and `Turbo::StreamsChannel.broadcast_*` calls in the app
//!   reach it through the shared Redis or PostgreSQL adapter.
//! - **Signed and public streams.** [`PubSubChannel`] serves AnyCable's
//!   `$pubsub` channel (`signed_stream_name`, and `stream_name` when enabled).
//! - **Names.** [`GlobalId`] is a [`cable_core::ToParam`], so
//!   `cable_core::broadcasting_for` and `Context::stream_for` give Rails'
//!   names for records; [`turbo_stream_name`] gives Turbo's.
//!
//! ```no_run
//! use cable_core::Cable;
//! use cable_rails::RailsConfig;
//! use cable_server::{router, serve, shutdown_signal, ServerConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = RailsConfig::new(std::env::var("SECRET_KEY_BASE")?);
//! config.session_cookie = Some("_my_app_session".into());
//! // identified_by :current_user, where the app logs in with Devise:
//! config.identifiers = vec!["current_user=warden:user as User".parse()?];
//! config.global_id_app = Some("my-app".into());
//! config.turbo = true;
//! let rails = config.build()?;
//!
//! let cable = rails.install(Cable::builder()).build();
//! let app = router(cable.clone(), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3334").await?;
//! serve(listener, app, cable, shutdown_signal(), std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Reading a session in your own connection hook instead:
//!
//! ```
//! use cable_core::{authenticate_with, Identifiers, Unauthorized};
//! # let mut config = cable_rails::RailsConfig::new("0".repeat(128));
//! # config.session_cookie = Some("_my_app_session".into());
//! # let rails = config.build().unwrap();
//! let hook = authenticate_with(move |req| {
//!     let rails = rails.clone();
//!     async move {
//!         let session = rails.session(&req).map_err(|e| Unauthorized::because(e.to_string()))?;
//!         let user = session.and_then(|s| s.user_id()).ok_or_else(|| Unauthorized::because("not logged in"))?;
//!         Ok(Identifiers::new().with("current_user", user))
//!     }
//! });
//! # let _ = hook;
//! ```

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod config;
mod cookies;
mod crypto;
mod error;
mod global_id;
mod session;
mod streams;

pub use crate::config::{Rails, RailsAuth, RailsConfig};
pub use crate::cookies::{CookieJar, ENCRYPTED_COOKIE_SALT, SIGNED_COOKIE_SALT};
pub use crate::crypto::{
    HmacDigest, KeyDigest, KeyGenerator, MessageEncryptor, MessageVerifier, ITERATIONS,
};
pub use crate::error::{ConfigError, CookieError};
pub use crate::global_id::{GlobalId, InvalidGlobalId};
pub use crate::session::{InvalidSessionIdentifier, Session, SessionIdentifier, SessionSource};
pub use crate::streams::{
    turbo_stream_name, PubSubChannel, StreamVerifier, TurboStreamsChannel, PUBSUB_CHANNEL,
    TURBO_CHANNEL, TURBO_KEY_SALT,
};
