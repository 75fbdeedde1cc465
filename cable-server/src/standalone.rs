//! A standalone server process: your channels and connection hook, everything
//! else from [`Settings`] (adapter, origins, limits, operator endpoints,
//! graceful shutdown).
//!
//! ```no_run
//! use cable_core::{async_trait, Cable, Channel, ChannelError, Context};
//! use cable_server::settings::Settings;
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
//! cable_server::standalone::run(settings, Cable::builder().channel("ChatChannel", ChatChannel::default)).await?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use cable_core::{CableBuilder, CableConfig};
use tokio::net::TcpListener;

use crate::settings::{mask_password, Settings};
use crate::{ops_router, router, serve, shutdown_signal, AllowedOrigin, OpsConfig, ServerConfig};

/// Why a standalone server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StandaloneError {
    /// The adapter settings were refused.
    #[error("adapter: {0}")]
    Adapter(String),
    /// An origin pattern is not a valid regular expression.
    #[error("allowed_origin_patterns: {0}")]
    OriginPattern(String),
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

/// Applies the adapter named by `settings.adapter` to `builder`.
pub fn with_adapter(
    builder: CableBuilder,
    settings: &Settings,
) -> Result<CableBuilder, StandaloneError> {
    let url = settings.adapter.as_str();
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_else(|| url.to_owned());
    match scheme.as_str() {
        "memory" => Ok(builder),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+unix" => {
            let mut cfg = cable_redis::RedisConfig::new(url);
            if let Some(p) = &settings.channel_prefix {
                cfg = cfg.channel_prefix(p);
            }
            cfg.validate()
                .map_err(|e| StandaloneError::Adapter(e.to_string()))?;
            Ok(builder.pubsub(move |delivery| {
                cable_redis::RedisPubSub::new(cfg, delivery)
                    .expect("the settings were validated before")
            }))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            let mut cfg = cable_postgres::PostgresConfig::new(url);
            if let Some(p) = &settings.channel_prefix {
                cfg = cfg.channel_prefix(p);
            }
            cfg.validate()
                .map_err(|e| StandaloneError::Adapter(e.to_string()))?;
            Ok(builder.pubsub(move |delivery| {
                cable_postgres::PostgresPubSub::new(cfg, delivery)
                    .expect("the settings were validated before")
            }))
        }
        other => Err(StandaloneError::Adapter(format!(
            "{other}:// is not supported by this build (adapter {})",
            mask_password(url)
        ))),
    }
}

/// The transport settings `settings` describe.
pub fn server_config(settings: &Settings) -> Result<ServerConfig, StandaloneError> {
    let mut cfg = ServerConfig {
        mount_path: settings.mount_path.clone(),
        max_message_size: settings.max_message_size,
        ping_interval: settings.ping_interval,
        max_connections: settings.max_connections,
        ..ServerConfig::default()
    };
    cfg.origins.disabled = settings.disable_origin_check;
    cfg.origins.allowed = settings
        .allowed_origins
        .iter()
        .cloned()
        .map(AllowedOrigin::from)
        .collect();
    for p in &settings.allowed_origin_patterns {
        cfg.origins.allowed.push(
            AllowedOrigin::pattern(p).map_err(|e| StandaloneError::OriginPattern(e.to_string()))?,
        );
    }
    Ok(cfg)
}

/// Runs a server until SIGINT or SIGTERM: the WebSocket endpoint on
/// `settings.bind`, the operator endpoints beside it (or on
/// `settings.stats_bind`). On a signal, every client is sent
/// `server_restart`, connections drain for up to `settings.shutdown_timeout`,
/// and the call returns `Ok`.
pub async fn run(settings: Settings, builder: CableBuilder) -> Result<(), StandaloneError> {
    let mut core = CableConfig::default();
    core.outbound_queue_bytes = settings.outbound_queue;
    core.max_subscriptions_per_connection = settings.max_subscriptions_per_connection;
    let cable = with_adapter(builder.config(core), &settings)?.build();
    let server_cfg = server_config(&settings)?;
    let ops = ops_router(
        cable.clone(),
        OpsConfig {
            broadcast_key: settings.broadcast_key.clone(),
        },
    );
    let listener =
        TcpListener::bind(settings.bind)
            .await
            .map_err(|source| StandaloneError::Bind {
                addr: settings.bind,
                source,
            })?;
    let local = listener.local_addr()?;
    let mut app = router(cable.clone(), server_cfg);
    let stats_task = match settings.stats_bind {
        None => {
            app = app.merge(ops);
            None
        }
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StandaloneError::Bind { addr, source })?;
            tracing::info!("operator endpoints on http://{}", l.local_addr()?);
            Some(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, ops).await {
                    tracing::error!("operator endpoints stopped: {e}");
                }
            }))
        }
    };
    tracing::info!(
        "cable listening on ws://{local}{} (adapter {}, broadcast API {})",
        settings.mount_path,
        mask_password(&settings.adapter),
        if settings.broadcast_key.is_some() {
            "on"
        } else {
            "off: no broadcast_key"
        }
    );
    let res = serve(
        listener,
        app,
        cable,
        shutdown_signal(),
        settings.shutdown_timeout,
    )
    .await;
    if let Some(t) = stats_task {
        t.abort();
    }
    res?;
    tracing::info!("stopped");
    Ok(())
}
