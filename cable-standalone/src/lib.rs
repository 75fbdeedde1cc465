//! `cable-standalone`: cable as a server process of its own, the library
//! behind the `cable-server` binary (a thin `main.rs` over it, as ripgrep
//! does it). Your channels and connection hook, everything else from
//! [`Settings`] (adapter, origins, limits, operator endpoints, Rails
//! integration, graceful shutdown), read from a TOML file, `CABLE_*`
//! variables and flags.
//!
//! The transport itself is `cable-server`, which knows nothing of adapters,
//! settings files or Rails; an axum app that mounts its router needs only
//! that crate.
//!
//! ```no_run
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_standalone::Settings;
//!
//! #[derive(Default)]
//! struct ChatChannel;
//!
//! #[async_trait]
//! impl Channel for ChatChannel {
//!     async fn subscribed(&mut self, ctx: &mut Context<'_>) -> Result<(), ChannelError> {
//!         ctx.stream_from("chat_lobby");
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::default();
//! cable_standalone::run(settings, Cable::builder().channel("ChatChannel", ChatChannel::default)).await?;
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::net::SocketAddr;

use cable_core::broker::HistoryPolicy;
use cable_core::{redact_url, CableBuilder, CableConfig, CommandRate};
use tokio::net::TcpListener;

use cable_server::{
    broadcast_router, health_router, ops_router, router, serve_with, shutdown_signal,
    AllowedOrigin, OpsConfig, ServeOptions, ServerConfig,
};

pub mod settings;
pub use settings::Settings;

/// An error from a crate this one wires up (an adapter's settings, Rails'
/// key derivation, a regex).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a standalone server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandaloneError {
    /// The adapter's settings were refused.
    #[error("adapter: {source}")]
    Adapter {
        /// The adapter URL, password masked.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The adapter URL names a backend this build does not have.
    #[error("adapter: {scheme}:// is not supported by this build (adapter {url})")]
    UnsupportedAdapter {
        /// The URL's scheme.
        scheme: String,
        /// The adapter URL, password masked.
        url: String,
    },
    /// The broker's settings were refused.
    #[error("broker: {source}")]
    Broker {
        /// The broker URL, password masked.
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The broker URL names a backend this build does not have.
    #[error("broker: {scheme}:// is not supported by this build (broker {url})")]
    UnsupportedBroker {
        /// The URL's scheme.
        scheme: String,
        /// The broker URL, password masked.
        url: String,
    },
    /// The Rails integration could not be built from the settings.
    #[error("rails: {source}")]
    Rails {
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The JWT settings were refused.
    #[error("jwt: {source}")]
    Jwt {
        /// Why.
        #[source]
        source: cable_anycable::JwtConfigError,
    },
    /// A broadcaster (`broadcast_adapter` redis, redisx or nats) was refused.
    #[error("broadcast_adapter {kind}: {source}")]
    Intake {
        /// `redis`, `redisx` or `nats`.
        kind: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// An origin pattern is not a valid regular expression.
    #[error("allowed_origin_patterns: {source}")]
    OriginPattern {
        /// The regex error.
        #[source]
        source: BoxError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(#[from] std::io::Error),
}

/// Installs the pub/sub `$pubsub` of the adapter URL `$settings.adapter`,
/// with the channel prefix if one is set: the Redis and PostgreSQL adapters
/// are configured alike.
#[cfg(any(feature = "redis", feature = "postgres"))]
macro_rules! url_pubsub {
    ($builder:expr, $settings:expr, $config:ty, $pubsub:ty) => {{
        let url = $settings.adapter.as_str();
        let mut cfg = <$config>::new(url);
        if let Some(p) = &$settings.channel_prefix {
            cfg = cfg.channel_prefix(p);
        }
        $builder
            .try_pubsub(move |delivery| <$pubsub>::new(cfg, delivery))
            .map_err(|e| adapter_error(url, e))
    }};
}

/// Applies the adapter named by `settings.adapter` to `builder`.
pub fn with_adapter(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    let url = settings.adapter.as_str();
    match scheme(url).as_str() {
        "memory" => Ok(builder),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+unix" => {
            url_pubsub!(
                builder,
                settings,
                cable_redis::RedisConfig,
                cable_redis::RedisPubSub
            )
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            url_pubsub!(
                builder,
                settings,
                cable_postgres::PostgresConfig,
                cable_postgres::PostgresPubSub
            )
        }
        // The channel prefix is the subject's first tokens: PREFIX.S.
        #[cfg(feature = "nats")]
        "nats" => {
            let mut cfg = cable_nats::NatsConfig::new(url);
            if let Some(p) = &settings.channel_prefix {
                cfg = cfg.subject_prefix(p);
            }
            builder
                .try_pubsub(move |delivery| cable_nats::NatsPubSub::new(cfg, delivery))
                .map_err(|e| adapter_error(url, e))
        }
        other => Err(StandaloneError::UnsupportedAdapter {
            scheme: other.to_owned(),
            url: redact_url(url),
        }),
    }
}

/// Applies the broker named by `settings.broker` to `builder`: history and
/// sessions in this process (`memory`), Redis, PostgreSQL, NATS
/// JetStream, or nowhere (`none`).
pub fn with_broker(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    let url = settings.broker.as_str();
    #[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
    let refused = |e: Box<dyn std::error::Error + Send + Sync>| StandaloneError::Broker {
        url: redact_url(url),
        source: e,
    };
    match scheme(url).as_str() {
        "memory" => Ok(builder.broker(cable_core::broker::MemoryBroker::new())),
        "none" => Ok(builder.no_broker()),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+unix" => builder
            .try_broker(|| cable_redis::RedisBroker::new(cable_redis::RedisBrokerConfig::new(url)))
            .map_err(|e| refused(Box::new(e))),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => builder
            .try_broker(|| {
                cable_postgres::PostgresBroker::new(cable_postgres::PostgresBrokerConfig::new(url))
            })
            .map_err(|e| refused(Box::new(e))),
        #[cfg(feature = "nats")]
        "nats" => builder
            .try_broker(|| cable_nats::NatsBroker::new(cable_nats::NatsBrokerConfig::new(url)))
            .map_err(|e| refused(Box::new(e))),
        other => Err(StandaloneError::UnsupportedBroker {
            scheme: other.to_owned(),
            url: redact_url(url),
        }),
    }
}

/// A backend URL's scheme in lower case (`memory`, `none` stand alone).
fn scheme(url: &str) -> String {
    url.split_once("://")
        .map_or(url, |(s, _)| s)
        .to_ascii_lowercase()
}

#[cfg(any(feature = "redis", feature = "postgres", feature = "nats"))]
fn adapter_error(url: &str, e: impl std::error::Error + Send + Sync + 'static) -> StandaloneError {
    StandaloneError::Adapter {
        url: redact_url(url),
        source: Box::new(e),
    }
}

/// Registers what `settings.rails` enables (session hook, Turbo, `$pubsub`);
/// the settings were validated when read, the keys are derived here. With a
/// JWT key as well, the token comes first and the session hook is its
/// fallback (see [`with_jwt`]).
#[cfg(feature = "rails")]
pub fn with_rails(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    let r = &settings.rails;
    if !r.enabled() {
        return with_jwt(builder, settings);
    }
    let rails = r.clone().build().map_err(|e| StandaloneError::Rails {
        source: BoxError::from(e),
    })?;
    tracing::info!(
        "Rails integration: session cookie {:?}, identifiers {:?}, Turbo::StreamsChannel {}, $pubsub signed {} public {}",
        r.session_cookie,
        r.identifiers,
        r.turbo,
        r.pubsub_signed,
        r.pubsub_public
    );
    let builder = rails.install(builder);
    match (jwt_auth(settings)?, r.session_cookie.is_some()) {
        (Some(jwt), true) => Ok(builder.authenticate(jwt.or_else(rails.authenticator()))),
        _ => with_jwt(builder, settings),
    }
}

/// Without the `rails` feature there are no Rails settings to wire, only
/// the JWT.
#[cfg(not(feature = "rails"))]
pub fn with_rails(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    with_jwt(builder, settings)
}

/// Identifies connections by AnyCable's JWT when `settings` have a key
/// (`jwt_secret` or `secret`): connections without a token are refused
/// with `enforce_jwt`, else accepted with no identifiers. This replaces
/// the builder's connection hook; [`with_rails`] puts the Rails session
/// hook behind the token instead.
pub fn with_jwt(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    Ok(match jwt_auth(settings)? {
        Some(jwt) => builder.authenticate(jwt),
        None => builder,
    })
}

fn jwt_auth(settings: &Settings) -> Result<Option<cable_anycable::JwtAuth>, StandaloneError> {
    let Some(key) = settings.jwt_key() else {
        return Ok(None);
    };
    let config = cable_anycable::JwtConfig::new(key)
        .param(&settings.jwt_param)
        .enforce(settings.enforce_jwt);
    let jwt =
        cable_anycable::JwtAuth::new(config).map_err(|source| StandaloneError::Jwt { source })?;
    tracing::info!(
        "JWT identification: ?{} / X-{} / anycable-token subprotocol, enforced {}",
        settings.jwt_param,
        settings.jwt_param.to_ascii_uppercase(),
        settings.enforce_jwt
    );
    Ok(Some(jwt))
}

/// The transport settings `settings` describe.
pub fn server_config(settings: &Settings) -> Result<ServerConfig, StandaloneError> {
    let mut cfg = ServerConfig::default();
    cfg.mount_path = settings.mount_path.clone();
    cfg.sse_path = settings.sse.then(|| settings.sse_path.clone());
    cfg.max_message_size = settings.max_message_size;
    cfg.ping_interval = settings.ping_interval;
    cfg.max_connections = settings.max_connections;
    cfg.origins.disabled = settings.disable_origin_check;
    for o in &settings.allowed_origins {
        let entry = if o.contains("://") {
            AllowedOrigin::from(o.as_str())
        } else {
            AllowedOrigin::host(o).map_err(|e| StandaloneError::OriginPattern {
                source: BoxError::from(e),
            })?
        };
        cfg.origins.allowed.push(entry);
    }
    for p in &settings.allowed_origin_patterns {
        cfg.origins
            .allowed
            .push(
                AllowedOrigin::pattern(p).map_err(|e| StandaloneError::OriginPattern {
                    source: BoxError::from(e),
                })?,
            );
    }
    Ok(cfg)
}

/// The HTTP side's options `settings` describe (drain, header timeout,
/// pending cap).
pub fn serve_options(settings: &Settings) -> ServeOptions {
    let mut options = ServeOptions::with_drain_timeout(settings.shutdown_timeout);
    options.header_read_timeout = settings.header_read_timeout;
    options.max_pending_connections = settings.max_pending_connections;
    options
}

/// A running broadcast intake (a Redis or NATS one); it stops when dropped.
pub type Intake = Box<dyn std::any::Any + Send + Sync>;

/// Starts AnyCable's broadcasters that `settings.broadcast_adapter` names,
/// on `cable`: `redis` subscribes to `redis_channel`, `redisx` reads
/// `redisx_stream` in group `redisx_group`, both at `redis_url`; `nats`
/// subscribes to `nats_channel` at `nats_servers`. They run while the
/// returned handles live.
pub fn start_intakes(
    settings: &Settings,
    cable: &cable_core::Cable,
) -> Result<Vec<Intake>, StandaloneError> {
    #[allow(unused_mut)]
    let mut intakes = Vec::new();
    #[cfg(feature = "redis")]
    {
        use cable_redis::{RedisIntake, RedisIntakeConfig};
        let url = settings.intake_redis_url();
        let refused = |kind| {
            move |e: cable_redis::RedisConfigError| StandaloneError::Intake {
                kind,
                source: Box::new(e),
            }
        };
        if settings.broadcaster("redis") {
            let config = RedisIntakeConfig::new(&url).channel(&settings.redis_channel);
            let intake =
                RedisIntake::pubsub(config, cable.broadcaster()).map_err(refused("redis"))?;
            intakes.push(Box::new(intake) as Intake);
            tracing::info!(
                "broadcast_adapter redis: PUBLISH {} at {} (every node applies every message)",
                settings.redis_channel,
                redact_url(&url)
            );
        }
        if settings.broadcaster("redisx") {
            let config = RedisIntakeConfig::new(&url)
                .channel(&settings.redisx_stream)
                .group(&settings.redisx_group)
                .block(std::time::Duration::from_millis(
                    settings.redisx_read_block_milliseconds,
                ));
            let intake =
                RedisIntake::streams(config, cable.broadcaster()).map_err(refused("redisx"))?;
            intakes.push(Box::new(intake));
            tracing::info!(
                "broadcast_adapter redisx: XADD {} at {} (group {}, one node per message)",
                settings.redisx_stream,
                redact_url(&url),
                settings.redisx_group
            );
        }
    }
    #[cfg(feature = "nats")]
    if settings.broadcaster("nats") {
        use cable_nats::{NatsIntake, NatsIntakeConfig};
        let url = settings.intake_nats_url();
        let config = NatsIntakeConfig::new(&url).subject(&settings.nats_channel);
        let intake = NatsIntake::subscribe(config, cable.broadcaster()).map_err(|e| {
            StandaloneError::Intake {
                kind: "nats",
                source: Box::new(e),
            }
        })?;
        intakes.push(Box::new(intake));
        tracing::info!(
            "broadcast_adapter nats: subject {} at {} (every node applies every message)",
            settings.nats_channel,
            redact_url(&url)
        );
    }
    #[cfg(not(any(feature = "redis", feature = "nats")))]
    let _ = (settings, cable);
    Ok(intakes)
}

/// The operator endpoints' keys: `broadcast_key` for `/_broadcast`; for
/// the REST API (presence) AnyCable's key derived from `secret`, else the
/// broadcast key.
pub fn ops_config(settings: &Settings) -> OpsConfig {
    let mut config = OpsConfig::default();
    config.broadcast_key = settings.broadcast_key.clone();
    config.api_key = settings
        .secret
        .as_deref()
        .map(cable_anycable::api_key)
        .or_else(|| settings.broadcast_key.clone());
    config
}

/// Runs a server until SIGINT or SIGTERM: the WebSocket endpoint and
/// `/health` on `settings.bind`; `/stats`, `/metrics` and `/_broadcast` on
/// `settings.stats_bind` (with `/health` again), or beside the WebSocket
/// endpoint if `settings.ops_on_public_port` (and nowhere otherwise). On a
/// signal, every client is sent `server_restart`, connections drain for up
/// to `settings.shutdown_timeout`, and the call returns `Ok`.
pub async fn run(settings: Settings, builder: CableBuilder) -> Result<(), StandaloneError> {
    for notice in settings.notices() {
        tracing::warn!("{notice}");
    }
    if settings.origin_check_off_as_anycable() {
        tracing::warn!(
            "origin check off, as AnyCable's without allowed_origins: set allowed_origins \
             (AnyCable's hosts, or origins with a scheme) to refuse other sites' pages"
        );
    }
    let mut core = CableConfig::default();
    core.outbound_queue_bytes = settings.outbound_queue;
    core.max_subscriptions_per_connection = settings.max_subscriptions_per_connection;
    core.max_identifier_bytes = settings.max_identifier_size;
    core.command_rate = settings.command_rate.map(|per_second| CommandRate {
        burst: settings.command_burst,
        per_second,
    });
    core.max_outbound_message_bytes = settings.max_outbound_message_size;
    core.connect_timeout = settings.connect_timeout;
    core.callback_timeout = settings.callback_timeout;
    core.history_all_streams = settings.history_all_streams;
    core.history_policy = HistoryPolicy {
        limit: settings.history_limit,
        ttl: settings.history_ttl,
    };
    core.session_ttl = settings.sessions_ttl;
    core.presence_ttl = settings.presence_ttl;
    core.pong_timeout = Some(settings.pong_timeout).filter(|t| !t.is_zero());
    let builder = with_rails(builder.config(core), &settings)?;
    let builder = with_adapter(builder, &settings)?;
    let cable = with_broker(builder, &settings)?.build();
    // Held until the server stops.
    let _intakes = start_intakes(&settings, &cable)?;
    let server_cfg = server_config(&settings)?;
    let ops_config = ops_config(&settings);
    let ops = ops_router(cable.clone(), ops_config.clone());
    let listener =
        TcpListener::bind(settings.bind)
            .await
            .map_err(|source| StandaloneError::Bind {
                addr: settings.bind,
                source,
            })?;
    let local = listener.local_addr()?;
    let app = router(cable.clone(), server_cfg);
    // The public address gets /health alone unless asked otherwise: /stats
    // and /metrics answer anyone, and /_broadcast is worth guessing at.
    let (app, stats_task) = match (settings.stats_bind, settings.ops_on_public_port) {
        // AnyCable's `http` broadcaster with a key: /_broadcast on the main
        // port, beside /health (no /stats, /metrics).
        (None, false) if settings.http_broadcast() && settings.broadcast_key.is_some() => {
            tracing::info!(
                "POST /_broadcast on the public address (broadcast_adapter = http, as AnyCable \
                 with a key); /stats and /metrics are off: set stats_bind"
            );
            let broadcast = broadcast_router(cable.clone(), ops_config);
            (
                app.merge(broadcast).merge(health_router(cable.clone())),
                None,
            )
        }
        (None, true) => {
            tracing::warn!(
                "operator endpoints /stats, /metrics and /_broadcast on the public address \
                 (ops_on_public_port): keep them from the internet at the proxy"
            );
            (app.merge(ops), None)
        }
        (None, false) => {
            if settings.broadcast_key.is_some() {
                tracing::warn!(
                    "broadcast_key is set but POST /_broadcast is served nowhere: set \
                     stats_bind, ops_on_public_port or broadcast_adapter = http"
                );
            }
            tracing::info!(
                "operator endpoints /stats, /metrics and /_broadcast are off: set stats_bind \
                 (a private address) or ops_on_public_port = true; /health is on the public \
                 address"
            );
            (app.merge(health_router(cable.clone())), None)
        }
        (Some(addr), _) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StandaloneError::Bind { addr, source })?;
            tracing::info!(
                "operator endpoints on http://{} (/health also on the public address)",
                l.local_addr()?
            );
            // The same accept loop as the public address (header read
            // timeout, pending cap); it runs until the process ends, so its
            // shutdown never comes (the public server drains the cable).
            let c = cable.clone();
            let opts = serve_options(&settings);
            let task = tokio::spawn(async move {
                if let Err(e) = serve_with(l, ops, c, std::future::pending(), opts).await {
                    tracing::error!("operator endpoints stopped: {e}");
                }
            });
            (app.merge(health_router(cable.clone())), Some(task))
        }
    };
    tracing::info!(
        "cable listening on ws://{local}{} (adapter {}, broadcast API {})",
        settings.mount_path,
        redact_url(&settings.adapter),
        if settings.broadcast_key.is_some() {
            "on"
        } else {
            "off: no broadcast_key"
        }
    );
    let res = serve_with(
        listener,
        app,
        cable,
        shutdown_signal(),
        serve_options(&settings),
    )
    .await;
    if let Some(t) = stats_task {
        t.abort();
    }
    res?;
    tracing::info!("stopped");
    Ok(())
}
