//! `cable-server`: the generic standalone ActionCable-compatible server.
//!
//! Settings come from a TOML file (`--config`), `CABLE_*` (or AnyCable's
//! `ANYCABLE_*`) environment variables and flags, in that order of
//! precedence; see `cable_standalone::settings`.

// The flags' doc comments are --help text: `CABLE_<NAME>` reads as a tag to rustdoc.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::ExitCode;

use cable_core::Cable;
use cable_standalone::settings::{Layer, LogFormat, Settings};
use clap::{CommandFactory, Parser};

/// ActionCable-compatible WebSocket server (actioncable-v1-json), standalone.
///
/// Every setting can also come from the TOML file given with --config, or
/// from an environment variable CABLE_<NAME> (e.g. CABLE_BIND) or
/// ANYCABLE_<NAME> (AnyCable's names work too: ANYCABLE_PORT, ANYCABLE_SECRET);
/// a flag beats a variable, which beats the file.
#[derive(Parser, Debug, serde::Serialize)]
#[command(name = "cable-server", version, about, long_about = None)]
struct Args {
    /// TOML settings file (keys as the flags, with underscores).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Address to listen on [default: 127.0.0.1:28080].
    #[arg(long, value_name = "IP:PORT")]
    bind: Option<String>,
    /// Path of the WebSocket endpoint [default: /cable].
    #[arg(long, value_name = "PATH")]
    mount_path: Option<String>,
    /// An allowed Origin, exactly (repeatable; same-origin is always allowed).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// An allowed Origin pattern, a regular expression (repeatable).
    #[arg(long = "allowed-origin-pattern", value_name = "REGEX")]
    allowed_origin_patterns: Vec<String>,
    /// Accept any Origin (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    disable_origin_check: Option<String>,
    /// Pub/sub adapter: memory, redis://…, rediss://… or postgres://… [default: memory].
    #[arg(long, value_name = "URL")]
    adapter: Option<String>,
    /// Rails' channel_prefix (redis and postgres adapters).
    #[arg(long, value_name = "PREFIX")]
    channel_prefix: Option<String>,
    /// History and session store: memory, redis://…, postgres://… or none [default: memory].
    #[arg(long, value_name = "URL", help_heading = "Reliable streams")]
    broker: Option<String>,
    /// Keep history for every stream, not only those a channel opens with history (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Reliable streams")]
    history_all_streams: Option<String>,
    /// Messages kept per stream [default: 100].
    #[arg(long, value_name = "N", help_heading = "Reliable streams")]
    history_limit: Option<String>,
    /// How long a stream's messages are kept: 300s, 5m or seconds [default: 300s].
    #[arg(long, value_name = "DURATION", help_heading = "Reliable streams")]
    history_ttl: Option<String>,
    /// How long a session stays restorable after a disconnect (0: no resume) [default: 300s].
    #[arg(long, value_name = "DURATION", help_heading = "Reliable streams")]
    sessions_ttl: Option<String>,
    /// Close an extended-protocol client silent this long with no_pong (0: off) [default: 0].
    #[arg(long, value_name = "DURATION", help_heading = "Reliable streams")]
    pong_timeout: Option<String>,
    /// Heartbeat period: 3s, 500ms or seconds [default: 3s].
    #[arg(long, value_name = "DURATION")]
    ping_interval: Option<String>,
    /// Serve Server-Sent Events at --sse-path (true/false) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    sse: Option<String>,
    /// Path of the SSE endpoint [default: /events].
    #[arg(long, value_name = "PATH")]
    sse_path: Option<String>,
    /// Most connections at once; more get HTTP 503 (0: no limit) [default: 0].
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Most subscriptions per connection; more get reject_subscription (0: no limit) [default: 256].
    #[arg(long, value_name = "N")]
    max_subscriptions_per_connection: Option<String>,
    /// Longest subscription identifier: bytes or 4KiB [default: 4KiB].
    #[arg(long, value_name = "SIZE")]
    max_identifier_size: Option<String>,
    /// Commands a connection may send at once (rate limit burst) [default: 300].
    #[arg(long, value_name = "N")]
    command_burst: Option<String>,
    /// Commands per second a connection may send, sustained (0: no limit) [default: 100].
    #[arg(long, value_name = "N")]
    command_rate: Option<String>,
    /// Largest message a client may be sent: bytes or 512KiB [default: 512KiB].
    #[arg(long, value_name = "SIZE")]
    max_outbound_message_size: Option<String>,
    /// How long the connection hook may take: 10s, 500ms or seconds [default: 10s].
    #[arg(long, value_name = "DURATION")]
    connect_timeout: Option<String>,
    /// How long one channel callback may take: 30s or seconds [default: 30s].
    #[arg(long, value_name = "DURATION")]
    callback_timeout: Option<String>,
    /// How long a client may take to send its request headers [default: 10s].
    #[arg(long, value_name = "DURATION")]
    header_read_timeout: Option<String>,
    /// Most connections not upgraded yet; past it the oldest is closed [default: 1024].
    #[arg(long, value_name = "N")]
    max_pending_connections: Option<String>,
    /// Largest inbound message: bytes or 64KiB [default: 64KiB].
    #[arg(long, value_name = "SIZE")]
    max_message_size: Option<String>,
    /// Outbound queue per connection before `too_slow`: bytes or 1MiB [default: 1MiB].
    #[arg(long, value_name = "SIZE")]
    outbound_queue: Option<String>,
    /// How long shutdown waits for clients: 10s or seconds [default: 10s].
    #[arg(long, value_name = "DURATION")]
    shutdown_timeout: Option<String>,
    /// error, warn, info, debug, trace, or a filter [default: info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Bearer key for POST /_broadcast (at least 16 characters); unset disables it.
    /// Prefer CABLE_BROADCAST_KEY: flags show in `ps`.
    #[arg(long, value_name = "KEY")]
    broadcast_key: Option<String>,
    /// Serve /health, /stats, /metrics and /_broadcast on this (private) address.
    #[arg(long, value_name = "IP:PORT")]
    stats_bind: Option<String>,
    /// Serve /stats, /metrics and /_broadcast beside the WebSocket endpoint
    /// (true/false); by default only /health is on the public address.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    ops_on_public_port: Option<String>,

    // Beside a Rails app (docs/rails.md). The secrets themselves come from
    // CABLE_SECRET_KEY_BASE / CABLE_STREAMS_SECRET or the file, never flags.
    /// File holding the Rails app's secret_key_base (one per line, current first).
    #[arg(long, value_name = "FILE", help_heading = "Rails")]
    secret_key_base_file: Option<String>,
    /// PBKDF2 digests to try: sha256, sha1 (Rails 6.1 defaults: sha1) [default: sha256,sha1].
    #[arg(long, value_name = "LIST", help_heading = "Rails")]
    key_derivation: Option<String>,
    /// HMAC of cookies.signed: sha1 or sha256 [default: sha1].
    #[arg(long, value_name = "DIGEST", help_heading = "Rails")]
    signed_cookie_digest: Option<String>,
    /// The Rails session cookie, e.g. _my_app_session.
    #[arg(long, value_name = "NAME", help_heading = "Rails")]
    session_cookie: Option<String>,
    /// A connection identifier from the session: NAME=KEY or NAME=warden:SCOPE [as Model] (repeatable).
    #[arg(
        long = "session-identifier",
        value_name = "SPEC",
        help_heading = "Rails"
    )]
    session_identifiers: Vec<String>,
    /// Accept connections without a valid session (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Rails")]
    allow_anonymous: Option<String>,
    /// The app's config.global_id.app, for identifiers given `as Model`.
    #[arg(long, value_name = "APP", help_heading = "Rails")]
    global_id_app: Option<String>,
    /// Serve Turbo::StreamsChannel (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Rails")]
    turbo_streams: Option<String>,
    /// Serve $pubsub with signed stream names (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Rails")]
    pubsub_signed: Option<String>,
    /// Serve $pubsub with plain stream names: anyone may listen to any (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Rails")]
    pubsub_public: Option<String>,

    // AnyCable's settings (docs/anycable.md). The secrets (secret,
    // jwt_secret) come from ANYCABLE_* / CABLE_* or the file, never flags.
    /// The query parameter carrying AnyCable's JWT; the header is X-<NAME> [default: jid].
    #[arg(long, value_name = "NAME", help_heading = "AnyCable")]
    jwt_param: Option<String>,
    /// Refuse connections without a JWT (true/false).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "AnyCable")]
    enforce_jwt: Option<String>,
    /// AnyCable's broadcasters: http (POST /_broadcast), redis (PUBLISH __anycable__), redisx (XADD __anycable__), nats (subject __anycable__).
    #[arg(long, value_name = "LIST", help_heading = "AnyCable")]
    broadcast_adapter: Option<String>,
}

impl Args {
    /// Each key's flag, from clap's own definition (`allowed_origins` is
    /// `--allowed-origin`).
    fn flag_names() -> Vec<(String, String)> {
        Args::command()
            .get_arguments()
            .filter_map(|a| Some((a.get_id().to_string(), format!("--{}", a.get_long()?))))
            .collect()
    }
}

fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut layers = Vec::new();
    if let Some(path) = &args.config {
        match Layer::from_file(path) {
            Ok(l) => layers.push(l),
            Err(e) => {
                eprintln!("cable-server: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let (env, unknown) = Layer::from_env(std::env::vars());
    for name in unknown {
        eprintln!("cable-server: warning: {name} is not a setting (ignored)");
    }
    let ignored = env.ignored().join(", ");
    layers.push(env);
    match Layer::from_flags(&args, Args::flag_names()) {
        Ok(l) => layers.push(l),
        Err(e) => {
            eprintln!("cable-server: {e}");
            return ExitCode::from(2);
        }
    }
    let settings = match Settings::from_layers(&layers) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cable-server: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&settings);
    if !ignored.is_empty() {
        // An AnyCable deployment sets what cable has not (RPC, say): no typo.
        tracing::info!("AnyCable settings cable does not have, ignored: {ignored}");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cable-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cable_standalone::run(settings, Cable::builder())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cable-server: {e}");
            ExitCode::FAILURE
        }
    }
}
