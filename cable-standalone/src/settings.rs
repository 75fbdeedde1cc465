//! Settings of a standalone server, from a TOML file, `CABLE_*` environment
//! variables and command-line flags, in that order of precedence (a flag
//! beats a variable, which beats the file, which beats the default).
//!
//! Every value is read from text by one parser per key, whatever its source,
//! so a bad value gets the same error everywhere: the key, where it came
//! from, the value, and what is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cable_core::redact_url;

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The TOML file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (its name, with the dashes).
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(n) => write!(f, "environment variable {n}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// A setting that could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A value that does not parse or is out of range.
    #[error("invalid value for `{key}` from {from}: {value:?} ({expected})")]
    Invalid {
        /// The setting's name (as in the TOML file).
        key: &'static str,
        /// Where the value came from.
        from: Source,
        /// The value, with any password masked.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// A key the TOML file should not have.
    #[error("unknown setting `{key}` in {file}; known settings: {known}")]
    UnknownKey {
        /// The key.
        key: String,
        /// The file.
        file: String,
        /// Every known key.
        known: String,
    },
    /// The TOML file could not be read or parsed.
    #[error("cannot read settings file {file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// Two settings that cannot go together.
    #[error("{0}")]
    Conflict(String),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything a standalone server needs. Its `Debug` masks the secrets.
#[derive(Clone)]
#[non_exhaustive]
pub struct Settings {
    /// Address the WebSocket endpoint listens on. Default 127.0.0.1:28080.
    pub bind: SocketAddr,
    /// Path of the WebSocket endpoint. Default `/cable`.
    pub mount_path: String,
    /// Origins allowed exactly (same-origin requests are always allowed).
    pub allowed_origins: Vec<String>,
    /// Origin patterns (regular expressions the whole Origin must match).
    pub allowed_origin_patterns: Vec<String>,
    /// Accept any Origin.
    pub disable_origin_check: bool,
    /// Pub/sub adapter: `memory`, `redis://…`, `rediss://…` or `postgres://…`.
    pub adapter: String,
    /// Rails' `channel_prefix` (Redis and PostgreSQL adapters).
    pub channel_prefix: Option<String>,
    /// Heartbeat period. Default 3 s.
    pub ping_interval: Duration,
    /// Most connections open at once. Default: no limit.
    pub max_connections: Option<usize>,
    /// Most subscriptions per connection. Default 256.
    pub max_subscriptions_per_connection: Option<usize>,
    /// Longest subscription identifier in bytes. Default 4 KiB.
    pub max_identifier_size: usize,
    /// Commands a connection may send at once (the rate limit's burst).
    /// Default 300.
    pub command_burst: u32,
    /// Commands per second a connection may send, sustained; `None`: no
    /// rate limit. Default 100.
    pub command_rate: Option<u32>,
    /// Largest message a client may be sent, in bytes. Default 512 KiB.
    pub max_outbound_message_size: usize,
    /// How long the connection hook may take. Default 10 s.
    pub connect_timeout: Duration,
    /// How long one channel callback may take. Default 30 s.
    pub callback_timeout: Duration,
    /// How long a client may take to send its request headers. Default 10 s.
    pub header_read_timeout: Duration,
    /// Most connections not (yet) upgraded to WebSocket; past it the oldest
    /// is closed. Default 1024.
    pub max_pending_connections: usize,
    /// Largest inbound message in bytes. Default 64 KiB.
    pub max_message_size: usize,
    /// Outbound queue per connection in bytes. Default 1 MiB.
    pub outbound_queue: usize,
    /// How long shutdown waits for clients to leave. Default 10 s.
    pub shutdown_timeout: Duration,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter.
    pub log_level: String,
    /// Log format. Default text.
    pub log_format: LogFormat,
    /// Bearer key of `POST /_broadcast`; unset disables it.
    pub broadcast_key: Option<String>,
    /// Serve `/health`, `/stats`, `/metrics` and `/_broadcast` here. The
    /// public address (`bind`) serves only `/health` beside the WebSocket
    /// endpoint, unless `ops_on_public_port` is set.
    pub stats_bind: Option<SocketAddr>,
    /// Serve `/stats`, `/metrics` and `/_broadcast` on the public address,
    /// beside the WebSocket endpoint (no `stats_bind` then). Default false:
    /// only `/health` is public.
    pub ops_on_public_port: bool,
    /// Beside a Rails app: its secrets, session and channels (docs/rails.md).
    pub rails: RailsSettings,
}

/// The Rails integration's settings (all off by default); see `docs/rails.md`.
/// Its `Debug` masks the secrets.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RailsSettings {
    /// The app's `secret_key_base`, then older ones still accepted.
    pub secret_key_base: Vec<String>,
    /// PBKDF2 digests, tried in order (`sha256`, `sha1`). Empty: both.
    pub key_derivation: Vec<String>,
    /// `sha1` (Rails' default) or `sha256`.
    pub signed_cookie_digest: Option<String>,
    /// The session cookie's name, e.g. `_my_app_session`.
    pub session_cookie: Option<String>,
    /// `NAME=SOURCE[ as MODEL]`: identifiers taken from the session.
    pub session_identifiers: Vec<String>,
    /// Accept connections without a session.
    pub allow_anonymous: bool,
    /// `config.global_id.app`.
    pub global_id_app: Option<String>,
    /// Serve `Turbo::StreamsChannel`.
    pub turbo_streams: bool,
    /// Serve `$pubsub` with signed stream names.
    pub pubsub_signed: bool,
    /// Serve `$pubsub` with plain stream names (anyone may listen to any).
    pub pubsub_public: bool,
    /// The secret of signed `$pubsub` names (AnyCable's `streams_secret`).
    pub streams_secret: Option<String>,
    /// `config.turbo.signed_stream_verifier_key`, when the app sets one.
    pub turbo_verifier_key: Option<String>,
}

/// `Some("***")` for a secret that is set.
fn masked<T>(secret: &Option<T>) -> Option<&'static str> {
    secret.as_ref().map(|_| "***")
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("bind", &self.bind)
            .field("mount_path", &self.mount_path)
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_origin_patterns", &self.allowed_origin_patterns)
            .field("disable_origin_check", &self.disable_origin_check)
            .field("adapter", &redact_url(&self.adapter))
            .field("channel_prefix", &self.channel_prefix)
            .field("ping_interval", &self.ping_interval)
            .field("max_connections", &self.max_connections)
            .field(
                "max_subscriptions_per_connection",
                &self.max_subscriptions_per_connection,
            )
            .field("max_message_size", &self.max_message_size)
            .field("outbound_queue", &self.outbound_queue)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("broadcast_key", &masked(&self.broadcast_key))
            .field("stats_bind", &self.stats_bind)
            .field("ops_on_public_port", &self.ops_on_public_port)
            .field("rails", &self.rails)
            .finish()
    }
}

impl fmt::Debug for RailsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RailsSettings")
            .field(
                "secret_key_base",
                &format_args!("[{} masked]", self.secret_key_base.len()),
            )
            .field("key_derivation", &self.key_derivation)
            .field("signed_cookie_digest", &self.signed_cookie_digest)
            .field("session_cookie", &self.session_cookie)
            .field("session_identifiers", &self.session_identifiers)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("global_id_app", &self.global_id_app)
            .field("turbo_streams", &self.turbo_streams)
            .field("pubsub_signed", &self.pubsub_signed)
            .field("pubsub_public", &self.pubsub_public)
            .field("streams_secret", &masked(&self.streams_secret))
            .field("turbo_verifier_key", &masked(&self.turbo_verifier_key))
            .finish()
    }
}

impl RailsSettings {
    /// Whether anything of the Rails integration is asked for.
    pub fn enabled(&self) -> bool {
        !self.secret_key_base.is_empty()
            || self.session_cookie.is_some()
            || self.turbo_streams
            || self.pubsub_signed
            || self.pubsub_public
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 28080)),
            mount_path: "/cable".to_owned(),
            allowed_origins: Vec::new(),
            allowed_origin_patterns: Vec::new(),
            disable_origin_check: false,
            adapter: "memory".to_owned(),
            channel_prefix: None,
            ping_interval: Duration::from_secs(3),
            max_connections: None,
            max_subscriptions_per_connection: Some(256),
            max_identifier_size: 4096,
            command_burst: 300,
            command_rate: Some(100),
            max_outbound_message_size: 512 * 1024,
            connect_timeout: Duration::from_secs(10),
            callback_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_pending_connections: 1024,
            max_message_size: 64 * 1024,
            outbound_queue: 1 << 20,
            shutdown_timeout: Duration::from_secs(10),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            broadcast_key: None,
            stats_bind: None,
            ops_on_public_port: false,
            rails: RailsSettings::default(),
        }
    }
}

/// The settings' names, as in the TOML file; the variable is `CABLE_` and
/// the name in capitals, the flag `--` and the name with dashes.
pub const KEYS: &[&str] = &[
    "bind",
    "mount_path",
    "allowed_origins",
    "allowed_origin_patterns",
    "disable_origin_check",
    "adapter",
    "channel_prefix",
    "ping_interval",
    "max_connections",
    "max_subscriptions_per_connection",
    "max_identifier_size",
    "command_burst",
    "command_rate",
    "max_outbound_message_size",
    "connect_timeout",
    "callback_timeout",
    "header_read_timeout",
    "max_pending_connections",
    "max_message_size",
    "outbound_queue",
    "shutdown_timeout",
    "log_level",
    "log_format",
    "broadcast_key",
    "stats_bind",
    "ops_on_public_port",
    "secret_key_base",
    "secret_key_base_file",
    "key_derivation",
    "signed_cookie_digest",
    "session_cookie",
    "session_identifiers",
    "allow_anonymous",
    "global_id_app",
    "turbo_streams",
    "pubsub_signed",
    "pubsub_public",
    "streams_secret",
    "turbo_verifier_key",
];

/// Paths of the operator endpoints, which the WebSocket endpoint must not take.
const OPS_PATHS: &[&str] = &["/health", "/stats", "/metrics", "/_broadcast"];

/// Keys whose values are secrets: never printed.
const SECRET_KEYS: &[&str] = &[
    "broadcast_key",
    "secret_key_base",
    "streams_secret",
    "turbo_verifier_key",
];

/// A raw value: lists come as arrays from TOML, comma-separated text from a
/// variable, or repeated flags.
#[derive(Clone, Debug)]
pub enum Raw {
    /// One value.
    One(String),
    /// Several values.
    List(Vec<String>),
}

impl Raw {
    fn items(&self) -> Vec<String> {
        match self {
            Raw::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Raw::List(v) => v.clone(),
        }
    }

    fn text(&self) -> String {
        match self {
            Raw::One(s) => s.clone(),
            Raw::List(v) => v.join(","),
        }
    }
}

/// Values by key with their source, before parsing.
#[derive(Clone, Debug, Default)]
pub struct Layer(BTreeMap<&'static str, (Raw, Source)>);

impl Layer {
    /// Sets `key` (one of [`KEYS`]); unknown keys are ignored.
    pub fn set(&mut self, key: &str, value: Raw, source: Source) {
        if let Some(k) = KEYS.iter().find(|k| **k == key) {
            self.0.insert(k, (value, source));
        }
    }

    /// The `CABLE_*` variables among `vars`. Returns the layer and the
    /// names of `CABLE_*` variables that are no setting (likely typos).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> (Layer, Vec<String>) {
        let mut layer = Layer::default();
        let mut unknown = Vec::new();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("CABLE_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            if KEYS.contains(&key.as_str()) {
                layer.set(&key, Raw::One(value), Source::Env(name));
            } else {
                unknown.push(name);
            }
        }
        (layer, unknown)
    }

    /// The settings in a TOML file. Unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Layer, SettingsError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SettingsError::File {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| SettingsError::File {
                    file: file.clone(),
                    message: e.to_string(),
                })?;
        let mut layer = Layer::default();
        for (key, value) in table {
            if !KEYS.contains(&key.as_str()) {
                return Err(SettingsError::UnknownKey {
                    key,
                    file,
                    known: KEYS.join(", "),
                });
            }
            let raw = match value {
                toml::Value::String(s) => Raw::One(s),
                toml::Value::Integer(i) => Raw::One(i.to_string()),
                toml::Value::Float(f) => Raw::One(f.to_string()),
                toml::Value::Boolean(b) => Raw::One(b.to_string()),
                toml::Value::Array(items) => Raw::List(
                    items
                        .into_iter()
                        .map(|v| match v {
                            toml::Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect(),
                ),
                other => Raw::One(other.to_string()),
            };
            layer.set(&key, raw, Source::File(path.to_owned()));
        }
        Ok(layer)
    }
}

fn invalid(key: &'static str, source: &Source, value: &str, expected: &str) -> SettingsError {
    SettingsError::Invalid {
        key,
        from: source.clone(),
        value: if SECRET_KEYS.contains(&key) {
            "***".to_owned()
        } else {
            redact_url(value)
        },
        expected: expected.to_owned(),
    }
}

/// The longest duration a setting takes. Far more than any sane timeout,
/// and far from where adding it to an `Instant` overflows (which panics).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest count or size a setting takes: what a TOML integer holds, so
/// that `--print-config` prints the value in effect.
const MAX_NUMBER: u64 = i64::MAX as u64;

/// Seconds (`3`, `0.5`) or with a unit (`500ms`, `2s`, `1m`, `1h`, `1d`), up
/// to [`MAX_DURATION`].
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let units: [(&str, f64); 5] = [
        ("ms", 1e-3),
        ("s", 1.0),
        ("m", 60.0),
        ("h", 3600.0),
        ("d", 86_400.0),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(suffix, mult)| s.strip_suffix(suffix).map(|n| (n, *mult)))
        .unwrap_or((s, 1.0));
    let secs = num.trim().parse::<f64>().ok()? * mult;
    // `from_secs_f64` panics on huge values; the range check comes first.
    if !(secs.is_finite() && (0.0..=MAX_DURATION.as_secs_f64()).contains(&secs)) {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// Bytes (`65536`) or with a unit (`64KiB`, `1MiB`, `64KB`, `1MB`), up to
/// [`MAX_NUMBER`].
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let units: [(&str, usize); 6] = [
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("B", 1),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(suffix, mult)| s.strip_suffix(suffix).map(|n| (n, *mult)))
        .unwrap_or((s, 1));
    let bytes = num.trim().parse::<usize>().ok()?.checked_mul(mult)?;
    (bytes as u64 <= MAX_NUMBER).then_some(bytes)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `0` or `none` means no limit.
fn parse_limit(s: &str) -> Option<Option<usize>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("none") || s == "0" {
        return Some(None);
    }
    s.parse::<usize>()
        .ok()
        .filter(|n| *n as u64 <= MAX_NUMBER)
        .map(Some)
}

impl Settings {
    /// Applies layers in order (later ones win) over the defaults.
    pub fn from_layers(layers: &[Layer]) -> Result<Settings, SettingsError> {
        let mut merged: BTreeMap<&'static str, (Raw, Source)> = BTreeMap::new();
        for l in layers {
            for (k, v) in &l.0 {
                merged.insert(k, v.clone());
            }
        }
        let mut s = Settings::default();
        for (key, (raw, src)) in &merged {
            let text = raw.text();
            let t = text.trim();
            match *key {
                "bind" => {
                    s.bind = t
                        .parse()
                        .map_err(|_| invalid(key, src, t, "an IP:port, e.g. 0.0.0.0:28080"))?
                }
                "stats_bind" => {
                    s.stats_bind = if t.is_empty() {
                        None
                    } else {
                        Some(t.parse().map_err(|_| {
                            invalid(key, src, t, "an IP:port, e.g. 127.0.0.1:28081")
                        })?)
                    }
                }
                "mount_path" => {
                    if !t.starts_with('/') {
                        return Err(invalid(key, src, t, "a path starting with /, e.g. /cable"));
                    }
                    if OPS_PATHS.contains(&t) {
                        return Err(invalid(
                            key,
                            src,
                            t,
                            "a path other than the operator endpoints' (/health, /stats, \
                             /metrics, /_broadcast), e.g. /cable",
                        ));
                    }
                    s.mount_path = t.to_owned();
                }
                "allowed_origins" => {
                    let items = raw.items();
                    for o in &items {
                        if !o.contains("://") {
                            return Err(invalid(
                                key,
                                src,
                                o,
                                "origins like https://example.com (scheme, host, optional port)",
                            ));
                        }
                    }
                    s.allowed_origins = items;
                }
                "allowed_origin_patterns" => {
                    let items = raw.items();
                    for p in &items {
                        if let Err(e) = cable_server::AllowedOrigin::pattern(p) {
                            return Err(invalid(key, src, p, &format!("regular expressions: {e}")));
                        }
                    }
                    s.allowed_origin_patterns = items;
                }
                "ops_on_public_port" => {
                    s.ops_on_public_port =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "disable_origin_check" => {
                    s.disable_origin_check =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "adapter" => {
                    let scheme = t.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
                    let ok = t == "memory"
                        || matches!(
                            scheme.as_deref(),
                            Some(
                                "memory"
                                    | "redis"
                                    | "rediss"
                                    | "redis+unix"
                                    | "postgres"
                                    | "postgresql"
                            )
                        );
                    if !ok {
                        return Err(invalid(
                            key,
                            src,
                            t,
                            "memory, redis://HOST[:PORT][/DB], rediss://… or postgres://HOST[:PORT]/DB",
                        ));
                    }
                    s.adapter = t.to_owned();
                }
                "channel_prefix" => {
                    s.channel_prefix = (!text.is_empty()).then(|| text.clone());
                }
                "ping_interval" => {
                    let d = parse_duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
                        invalid(
                            key,
                            src,
                            t,
                            "a duration above 0 and at most 1 day: seconds (3, 0.5) or 500ms, 3s",
                        )
                    })?;
                    s.ping_interval = d;
                }
                "shutdown_timeout" => {
                    s.shutdown_timeout = parse_duration(t).ok_or_else(|| {
                        invalid(
                            key,
                            src,
                            t,
                            "a duration of at most 1 day: seconds (10, 0.5) or 500ms, 10s, 1m",
                        )
                    })?
                }
                "max_connections" => {
                    s.max_connections = parse_limit(t).ok_or_else(|| {
                        invalid(key, src, t, "a whole number up to 9223372036854775807, or 0 / none for no limit")
                    })?
                }
                "max_subscriptions_per_connection" => {
                    s.max_subscriptions_per_connection = parse_limit(t).ok_or_else(|| {
                        invalid(key, src, t, "a whole number up to 9223372036854775807, or 0 / none for no limit")
                    })?
                }
                "max_identifier_size" => {
                    s.max_identifier_size = parse_size(t).filter(|n| *n >= 64).ok_or_else(|| {
                        invalid(key, src, t, "a size of at least 64 bytes: 4096, 4KiB")
                    })?
                }
                "command_burst" => {
                    s.command_burst = t
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| invalid(key, src, t, "a whole number of at least 1"))?
                }
                "command_rate" => {
                    s.command_rate = parse_limit(t)
                        .and_then(|l| match l {
                            None => Some(None),
                            Some(n) => u32::try_from(n).ok().map(Some),
                        })
                        .ok_or_else(|| {
                            invalid(
                                key,
                                src,
                                t,
                                "commands per second, a whole number, or 0 / none for no limit",
                            )
                        })?
                }
                "max_outbound_message_size" => {
                    s.max_outbound_message_size =
                        parse_size(t).filter(|n| *n >= 1024).ok_or_else(|| {
                            invalid(
                                key,
                                src,
                                t,
                                "a size of at least 1024 bytes, at most outbound_queue: 512KiB",
                            )
                        })?
                }
                "connect_timeout" | "callback_timeout" | "header_read_timeout" => {
                    let d = parse_duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
                        invalid(
                            key,
                            src,
                            t,
                            "a duration above 0: seconds (10, 0.5) or 500ms, 10s, 1m",
                        )
                    })?;
                    match *key {
                        "connect_timeout" => s.connect_timeout = d,
                        "callback_timeout" => s.callback_timeout = d,
                        _ => s.header_read_timeout = d,
                    }
                }
                "max_pending_connections" => {
                    s.max_pending_connections = t
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| invalid(key, src, t, "a whole number of at least 1"))?
                }
                "max_message_size" => {
                    s.max_message_size = parse_size(t).filter(|n| *n >= 256).ok_or_else(|| {
                        invalid(
                            key,
                            src,
                            t,
                            "a size of at least 256 bytes (at most 2^63 - 1): 65536, 64KiB, 1MiB",
                        )
                    })?
                }
                "outbound_queue" => {
                    s.outbound_queue = parse_size(t).filter(|n| *n >= 1024).ok_or_else(|| {
                        invalid(
                            key,
                            src,
                            t,
                            "a size of at least 1024 bytes (at most 2^63 - 1): 1048576, 512KiB, 1MiB",
                        )
                    })?
                }
                "log_level" => {
                    if tracing_filter_ok(t) {
                        s.log_level = t.to_owned();
                    } else {
                        return Err(invalid(
                            key,
                            src,
                            t,
                            "error, warn, info, debug, trace, or a filter like info,cable_core=debug",
                        ));
                    }
                }
                "log_format" => {
                    s.log_format = match t.to_ascii_lowercase().as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => return Err(invalid(key, src, t, "text or json")),
                    }
                }
                "broadcast_key" => {
                    if text.is_empty() {
                        s.broadcast_key = None;
                    } else if text.len() < 16 {
                        return Err(invalid(key, src, &text, "a key of at least 16 characters"));
                    } else {
                        s.broadcast_key = Some(text.clone());
                    }
                }
                "secret_key_base" => {
                    let items = raw.items();
                    if items.iter().any(|k| k.len() < 30) {
                        return Err(invalid(key, src, &text, "the app's secret_key_base (usually 128 hex characters), comma-separated to accept older ones too"));
                    }
                    s.rails.secret_key_base = items;
                }
                "secret_key_base_file" => {
                    let keys = std::fs::read_to_string(t).map_err(|e| {
                        invalid(
                            key,
                            src,
                            t,
                            &format!("a readable file with the secret_key_base ({e})"),
                        )
                    })?;
                    let items: Vec<String> = keys
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if items.is_empty() || items.iter().any(|k| k.len() < 30) {
                        return Err(invalid(key, src, t, "a file holding the secret_key_base (one per line, oldest last), each 30+ characters"));
                    }
                    s.rails.secret_key_base = items;
                }
                "key_derivation" => {
                    let items = raw.items();
                    if items.is_empty()
                        || items
                            .iter()
                            .any(|d| !matches!(d.to_ascii_lowercase().as_str(), "sha1" | "sha256"))
                    {
                        return Err(invalid(key, src, &text, "sha256 and/or sha1, in the order to try (Rails 6.1 defaults: sha1; 7.0+: sha256)"));
                    }
                    s.rails.key_derivation = items;
                }
                "signed_cookie_digest" => {
                    if !matches!(t.to_ascii_lowercase().as_str(), "sha1" | "sha256") {
                        return Err(invalid(key, src, t, "sha1 (Rails' default) or sha256"));
                    }
                    s.rails.signed_cookie_digest = Some(t.to_owned());
                }
                "session_cookie" => {
                    s.rails.session_cookie = (!t.is_empty()).then(|| t.to_owned());
                }
                "session_identifiers" => {
                    let items = raw.items();
                    for i in &items {
                        let ok = i
                            .split_once('=')
                            .is_some_and(|(n, src)| !n.trim().is_empty() && !src.trim().is_empty());
                        if !ok {
                            return Err(invalid(key, src, i, "NAME=SESSION_KEY or NAME=warden:SCOPE, optionally followed by ` as Model`, e.g. current_user=warden:user as User"));
                        }
                    }
                    s.rails.session_identifiers = items;
                }
                "allow_anonymous" => {
                    s.rails.allow_anonymous =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "global_id_app" => s.rails.global_id_app = (!t.is_empty()).then(|| t.to_owned()),
                "turbo_streams" => {
                    s.rails.turbo_streams =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "pubsub_signed" => {
                    s.rails.pubsub_signed =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "pubsub_public" => {
                    s.rails.pubsub_public =
                        parse_bool(t).ok_or_else(|| invalid(key, src, t, "true or false"))?
                }
                "streams_secret" => {
                    s.rails.streams_secret = (!text.is_empty()).then(|| text.clone())
                }
                "turbo_verifier_key" => {
                    s.rails.turbo_verifier_key = (!text.is_empty()).then(|| text.clone())
                }
                _ => {}
            }
        }
        if merged.contains_key("secret_key_base") && merged.contains_key("secret_key_base_file") {
            return Err(SettingsError::Conflict(
                "set `secret_key_base` or `secret_key_base_file`, not both".to_owned(),
            ));
        }
        if (s.rails.session_cookie.is_some() || s.rails.turbo_streams || s.rails.pubsub_signed)
            && s.rails.secret_key_base.is_empty()
        {
            return Err(SettingsError::Conflict(
                "`session_cookie`, `turbo_streams` and `pubsub_signed` need the app's \
                 `secret_key_base` (or `secret_key_base_file`)"
                    .to_owned(),
            ));
        }
        if !s.rails.session_identifiers.is_empty() && s.rails.session_cookie.is_none() {
            return Err(SettingsError::Conflict(
                "`session_identifiers` need `session_cookie` (the cookie to read them from)"
                    .to_owned(),
            ));
        }
        if s.max_outbound_message_size > s.outbound_queue {
            return Err(SettingsError::Conflict(format!(
                "`max_outbound_message_size` ({}) must not be over `outbound_queue` ({}): a \
                 client's queue must be able to hold the largest message",
                s.max_outbound_message_size, s.outbound_queue
            )));
        }
        if s.stats_bind.is_some() && s.ops_on_public_port {
            return Err(SettingsError::Conflict(
                "set `stats_bind` (operator endpoints on their own address) or \
                 `ops_on_public_port` (beside the WebSocket endpoint), not both"
                    .to_owned(),
            ));
        }
        if s.broadcast_key.is_some() && s.stats_bind.is_none() && !s.ops_on_public_port {
            return Err(SettingsError::Conflict(
                "`broadcast_key` is set but POST /_broadcast is served nowhere: set \
                 `stats_bind` to a private address (or `ops_on_public_port = true` to serve it \
                 beside the WebSocket endpoint)"
                    .to_owned(),
            ));
        }
        if s.channel_prefix.is_some() && s.adapter.starts_with("memory") {
            return Err(SettingsError::Conflict(
                "`channel_prefix` only applies to the redis and postgres adapters; the memory \
                 adapter does not name channels"
                    .to_owned(),
            ));
        }
        Ok(s)
    }

    /// The effective settings as TOML (the broadcast key and passwords masked).
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        let mut put = |k: &str, v: toml::Value| {
            t.insert(k.to_owned(), v);
        };
        let list =
            |v: &[String]| toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect());
        let secs = |d: Duration| toml::Value::Float(d.as_secs_f64());
        put("bind", self.bind.to_string().into());
        put("mount_path", self.mount_path.clone().into());
        put("allowed_origins", list(&self.allowed_origins));
        put(
            "allowed_origin_patterns",
            list(&self.allowed_origin_patterns),
        );
        put("disable_origin_check", self.disable_origin_check.into());
        put("adapter", redact_url(&self.adapter).into());
        if let Some(p) = &self.channel_prefix {
            put("channel_prefix", p.clone().into());
        }
        put("ping_interval", secs(self.ping_interval));
        // The parsers keep these within i64 (MAX_NUMBER).
        let int = |n: usize| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        put("max_connections", int(self.max_connections.unwrap_or(0)));
        put(
            "max_subscriptions_per_connection",
            int(self.max_subscriptions_per_connection.unwrap_or(0)),
        );
        put(
            "max_identifier_size",
            (self.max_identifier_size as i64).into(),
        );
        put("command_burst", i64::from(self.command_burst).into());
        put(
            "command_rate",
            i64::from(self.command_rate.unwrap_or(0)).into(),
        );
        put(
            "max_outbound_message_size",
            (self.max_outbound_message_size as i64).into(),
        );
        put("connect_timeout", secs(self.connect_timeout));
        put("callback_timeout", secs(self.callback_timeout));
        put("header_read_timeout", secs(self.header_read_timeout));
        put(
            "max_pending_connections",
            (self.max_pending_connections as i64).into(),
        );
        put("max_message_size", int(self.max_message_size));
        put("outbound_queue", int(self.outbound_queue));
        put("shutdown_timeout", secs(self.shutdown_timeout));
        put("log_level", self.log_level.clone().into());
        put(
            "log_format",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        );
        if self.broadcast_key.is_some() {
            put("broadcast_key", "***".into());
        }
        if let Some(b) = self.stats_bind {
            put("stats_bind", b.to_string().into());
        }
        put("ops_on_public_port", self.ops_on_public_port.into());
        let r = &self.rails;
        if !r.secret_key_base.is_empty() {
            put("secret_key_base", "***".into());
        }
        if !r.key_derivation.is_empty() {
            put("key_derivation", list(&r.key_derivation));
        }
        if let Some(d) = &r.signed_cookie_digest {
            put("signed_cookie_digest", d.clone().into());
        }
        if let Some(c) = &r.session_cookie {
            put("session_cookie", c.clone().into());
        }
        if !r.session_identifiers.is_empty() {
            put("session_identifiers", list(&r.session_identifiers));
        }
        if r.allow_anonymous {
            put("allow_anonymous", true.into());
        }
        if let Some(a) = &r.global_id_app {
            put("global_id_app", a.clone().into());
        }
        put("turbo_streams", r.turbo_streams.into());
        put("pubsub_signed", r.pubsub_signed.into());
        put("pubsub_public", r.pubsub_public.into());
        if r.streams_secret.is_some() {
            put("streams_secret", "***".into());
        }
        if r.turbo_verifier_key.is_some() {
            put("turbo_verifier_key", "***".into());
        }
        t.to_string()
    }
}

fn tracing_filter_ok(s: &str) -> bool {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    !s.is_empty()
        && s.split(',').all(|part| {
            let level = part.rsplit('=').next().unwrap_or("");
            let target_ok = part.split_once('=').is_none_or(|(t, _)| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            target_ok && LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, v: &str, src: Source) -> Layer {
        let mut l = Layer::default();
        l.set(key, Raw::One(v.to_owned()), src);
        l
    }

    #[test]
    fn hardening_limits_have_defaults_and_can_be_set_or_turned_off() {
        let d = Settings::from_layers(&[]).unwrap();
        assert_eq!(d.max_subscriptions_per_connection, Some(256));
        assert_eq!(d.command_rate, Some(100));
        assert_eq!(d.command_burst, 300);
        assert_eq!(d.max_identifier_size, 4096);
        assert_eq!(d.max_outbound_message_size, 512 * 1024);
        let src = || Source::Flag("--x".into());
        let mut l = Layer::default();
        for (k, v) in [
            ("max_subscriptions_per_connection", "none"),
            ("command_rate", "0"),
            ("command_burst", "50"),
            ("max_identifier_size", "8KiB"),
            ("max_outbound_message_size", "256KiB"),
            ("connect_timeout", "2s"),
            ("callback_timeout", "500ms"),
            ("header_read_timeout", "3"),
            ("max_pending_connections", "10"),
        ] {
            l.set(k, Raw::One(v.into()), src());
        }
        let s = Settings::from_layers(&[l]).unwrap();
        assert_eq!(s.max_subscriptions_per_connection, None);
        assert_eq!(s.command_rate, None);
        assert_eq!(s.command_burst, 50);
        assert_eq!(s.max_identifier_size, 8192);
        assert_eq!(s.max_outbound_message_size, 256 * 1024);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.callback_timeout, Duration::from_millis(500));
        assert_eq!(s.header_read_timeout, Duration::from_secs(3));
        assert_eq!(s.max_pending_connections, 10);
        // --print-config output reads back the same.
        let path = std::env::temp_dir().join(format!("cable-limits-{}.toml", std::process::id()));
        std::fs::write(&path, s.to_toml()).unwrap();
        let again = Settings::from_layers(&[Layer::from_file(&path).unwrap()]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(again.to_toml(), s.to_toml());
        // A message limit the queue cannot hold is refused.
        let e =
            Settings::from_layers(&[one("max_outbound_message_size", "2MiB", src())]).unwrap_err();
        assert!(e.to_string().contains("outbound_queue"), "{e}");
        for (k, v) in [
            ("command_burst", "0"),
            ("callback_timeout", "0"),
            ("max_pending_connections", "x"),
        ] {
            assert!(
                Settings::from_layers(&[one(k, v, src())]).is_err(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn later_layers_win() {
        let file = one("ping_interval", "5", Source::File("c.toml".into()));
        let env = one(
            "ping_interval",
            "2",
            Source::Env("CABLE_PING_INTERVAL".into()),
        );
        let flag = one(
            "ping_interval",
            "500ms",
            Source::Flag("--ping-interval".into()),
        );
        let s = Settings::from_layers(&[file.clone(), env.clone()]).unwrap();
        assert_eq!(s.ping_interval, Duration::from_secs(2));
        let s = Settings::from_layers(&[file, env, flag]).unwrap();
        assert_eq!(s.ping_interval, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_key_source_value_and_what_is_allowed() {
        let e = Settings::from_layers(&[one(
            "max_message_size",
            "huge",
            Source::Env("CABLE_MAX_MESSAGE_SIZE".into()),
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("`max_message_size`"), "{e}");
        assert!(e.contains("CABLE_MAX_MESSAGE_SIZE"), "{e}");
        assert!(e.contains("\"huge\""), "{e}");
        assert!(e.contains("64KiB"), "{e}");
        let e = Settings::from_layers(&[one(
            "adapter",
            "mysql://root:pw@db/x",
            Source::Flag("--adapter".into()),
        )])
        .unwrap_err()
        .to_string();
        assert!(e.contains("root:***@db"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn secrets_are_masked_in_debug_and_toml() {
        let mut s = Settings {
            adapter: "postgres://app@db/app?password=hunter2".into(),
            broadcast_key: Some("broadcast-key-hunter2".into()),
            ..Settings::default()
        };
        s.rails.secret_key_base = vec!["base-hunter2".into()];
        s.rails.streams_secret = Some("streams-hunter2".into());
        s.rails.turbo_verifier_key = Some("turbo-hunter2".into());
        for text in [format!("{s:?}"), s.to_toml()] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(text.contains("password=***"), "{text}");
        }
    }

    #[test]
    fn out_of_range_numbers_are_errors_not_panics() {
        let cases = [
            ("ping_interval", "1e300"),
            ("ping_interval", "1e300ms"),
            ("ping_interval", "1e300m"),
            ("ping_interval", "1e19"),
            ("ping_interval", "90000"),
            ("shutdown_timeout", "1e19"),
            ("shutdown_timeout", "1e300"),
            ("shutdown_timeout", "inf"),
            ("max_connections", "18446744073709551615"),
            ("max_subscriptions_per_connection", "9223372036854775808"),
            ("max_message_size", "18446744073709551615"),
            ("outbound_queue", "9223372036854775808B"),
            ("outbound_queue", "18446744073709551615GiB"),
        ];
        for (key, value) in cases {
            let env = format!("CABLE_{}", key.to_ascii_uppercase());
            let r = std::panic::catch_unwind(|| {
                Settings::from_layers(&[one(key, value, Source::Env(env.clone()))])
            });
            match r {
                Ok(Err(SettingsError::Invalid { key: k, .. })) => assert_eq!(k, key),
                Ok(Ok(s)) => panic!("{key} = {value} accepted: {s:?}"),
                Ok(Err(e)) => panic!("{key} = {value}: {e}"),
                Err(_) => panic!("{key} = {value} panicked"),
            }
        }
        // The largest accepted values print as what they are.
        let s = Settings::from_layers(&[
            one("shutdown_timeout", "1d", Source::Default),
            one("max_connections", "9223372036854775807", Source::Default),
        ])
        .unwrap();
        assert_eq!(s.shutdown_timeout, Duration::from_secs(86_400));
        assert!(s
            .to_toml()
            .contains("max_connections = 9223372036854775807"));
    }

    #[test]
    fn operator_endpoints_settings_are_consistent() {
        let flag = |k: &str, v: &str| one(k, v, Source::Flag(format!("--{k}")));
        let s = Settings::from_layers(&[]).unwrap();
        assert!(!s.ops_on_public_port && s.stats_bind.is_none());
        for layers in [
            vec![flag("broadcast_key", "k".repeat(16).as_str())],
            vec![
                flag("stats_bind", "127.0.0.1:0"),
                flag("ops_on_public_port", "true"),
            ],
        ] {
            let e = Settings::from_layers(&layers).unwrap_err();
            assert!(matches!(e, SettingsError::Conflict(_)), "{e}");
        }
        for with in ["stats_bind=127.0.0.1:0", "ops_on_public_port=yes"] {
            let (k, v) = with.split_once('=').unwrap();
            let s = Settings::from_layers(&[flag("broadcast_key", &"k".repeat(16)), flag(k, v)]);
            assert!(s.is_ok(), "{with}: {s:?}");
        }
        for path in ["/health", "/stats", "/metrics", "/_broadcast"] {
            let e = Settings::from_layers(&[flag("mount_path", path)]).unwrap_err();
            assert!(e.to_string().contains("`mount_path`"), "{e}");
        }
    }

    #[test]
    fn sizes_durations_and_lists() {
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("-1"), None);
        let s = Settings::from_layers(&[one(
            "allowed_origins",
            "https://a.example, https://b.example",
            Source::Env("CABLE_ALLOWED_ORIGINS".into()),
        )])
        .unwrap();
        assert_eq!(
            s.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(tracing_filter_ok("info,cable_core=debug"));
        assert!(!tracing_filter_ok("loud"));
    }
}
