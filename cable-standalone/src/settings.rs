//! Settings of a standalone server: one [`Settings`] type read by serde
//! from layers merged with figment, later layers winning: the defaults, a
//! TOML file, `CABLE_*` (or AnyCable's `ANYCABLE_*`) environment variables,
//! command-line flags.
//!
//! Keys are flat, as in the file (`ping_interval = "3s"`); the variable is
//! `CABLE_` and the key in capitals, the flag `--` and the key with dashes.
//! Every key is also read from `ANYCABLE_` and the key (`CABLE_` wins), and
//! AnyCable's own names are keys too (`secret`, `public_streams`, `port`,
//! `pubsub`, ...), read into ours; see docs/anycable.md.
//! The Rails keys are [`cable_rails::RailsConfig`]'s own, nested under
//! `rails` while reading. A bad value gets the same error from any layer:
//! the key, where it came from, the value, and what is allowed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cable_core::redact_url;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

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
        key: String,
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
    /// The Rails settings do not work together.
    #[cfg(feature = "rails")]
    #[error("rails: {0}")]
    Rails(#[source] cable_rails::ConfigError),
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("text or json"),
        }
    }
}

/// Everything a standalone server needs. Its `Debug` and its serialised
/// form (`--print-config`) mask the secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// Address the WebSocket endpoint listens on. Default 127.0.0.1:28080.
    #[serde(deserialize_with = "de::addr")]
    pub bind: SocketAddr,
    /// Path of the WebSocket endpoint. Default `/cable`.
    pub mount_path: String,
    /// Serve Server-Sent Events at `sse_path` (AnyCable's `sse`). Default
    /// false.
    pub sse: bool,
    /// Path of the SSE endpoint (AnyCable's `sse_path`). Default `/events`.
    pub sse_path: String,
    /// Origins allowed exactly (same-origin requests are always allowed).
    #[serde(deserialize_with = "de::list")]
    pub allowed_origins: Vec<String>,
    /// Origin patterns (regular expressions the whole Origin must match).
    #[serde(deserialize_with = "de::list")]
    pub allowed_origin_patterns: Vec<String>,
    /// Accept any Origin.
    pub disable_origin_check: bool,
    /// Set when the origin check is off only because an AnyCable-style
    /// configuration named no origins (a startup warning says so).
    #[serde(skip)]
    origin_check_off_as_anycable: bool,
    /// Pub/sub adapter: `memory`, `redis://…`, `rediss://…` or `postgres://…`.
    #[serde(serialize_with = "ser::redacted")]
    pub adapter: String,
    /// Rails' `channel_prefix` (Redis and PostgreSQL adapters).
    #[serde(
        deserialize_with = "de::non_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel_prefix: Option<String>,
    /// History, session and presence store of reliable streams: `memory`
    /// (this process only), `redis://…`, `postgres://…`, `nats://…`
    /// (JetStream; shared by every node on it), `redis` (AnyCable's name:
    /// the Redis at `redis_url`), `nats` (AnyCable's: JetStream at
    /// `nats_servers`), or
    /// `none` (history requests are rejected, sessions do not resume, no
    /// presence). Default `memory`.
    #[serde(serialize_with = "ser::redacted")]
    pub broker: String,
    /// Keep history for every stream (else only for streams a channel
    /// opens with history). Default false.
    pub history_all_streams: bool,
    /// Messages kept per stream. Default 100.
    pub history_limit: usize,
    /// How long a stream's messages are kept. Default 300 s.
    #[serde(with = "duration")]
    pub history_ttl: Duration,
    /// How long a session stays restorable after its disconnect; 0 turns
    /// resume off. Default 300 s.
    #[serde(with = "duration")]
    pub sessions_ttl: Duration,
    /// Extended protocol: close a client silent for this long with
    /// `no_pong`; 0 turns it off. Default 0.
    #[serde(with = "duration")]
    pub pong_timeout: Duration,
    /// Heartbeat period. Default 3 s.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// Most connections open at once. Default: no limit.
    #[serde(with = "limit")]
    pub max_connections: Option<usize>,
    /// Most subscriptions per connection. Default 256.
    #[serde(with = "limit")]
    pub max_subscriptions_per_connection: Option<usize>,
    /// Longest subscription identifier in bytes. Default 4 KiB.
    #[serde(deserialize_with = "de::size")]
    pub max_identifier_size: usize,
    /// Commands a connection may send at once (the rate limit's burst).
    /// Default 300.
    pub command_burst: u32,
    /// Commands per second a connection may send, sustained; `None`: no
    /// rate limit. Default 100.
    #[serde(with = "limit")]
    pub command_rate: Option<u32>,
    /// Largest message a client may be sent, in bytes. Default 512 KiB.
    #[serde(deserialize_with = "de::size")]
    pub max_outbound_message_size: usize,
    /// How long the connection hook may take. Default 10 s.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// How long one channel callback may take. Default 30 s.
    #[serde(with = "duration")]
    pub callback_timeout: Duration,
    /// How long a client may take to send its request headers. Default 10 s.
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Most connections not (yet) upgraded to WebSocket; past it the oldest
    /// is closed. Default 1024.
    pub max_pending_connections: usize,
    /// Largest inbound message in bytes. Default 64 KiB.
    #[serde(deserialize_with = "de::size")]
    pub max_message_size: usize,
    /// Outbound queue per connection in bytes. Default 1 MiB.
    #[serde(deserialize_with = "de::size")]
    pub outbound_queue: usize,
    /// How long shutdown waits for clients to leave. Default 10 s.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter.
    pub log_level: String,
    /// Log format. Default text.
    #[serde(deserialize_with = "de::text")]
    pub log_format: LogFormat,
    /// Bearer key of `POST /_broadcast`; unset disables it.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub broadcast_key: Option<String>,
    /// Serve `/health`, `/stats`, `/metrics` and `/_broadcast` here. The
    /// public address (`bind`) serves only `/health` beside the WebSocket
    /// endpoint, unless `ops_on_public_port` is set.
    #[serde(
        deserialize_with = "de::opt_addr",
        skip_serializing_if = "Option::is_none"
    )]
    pub stats_bind: Option<SocketAddr>,
    /// Serve `/stats`, `/metrics` and `/_broadcast` on the public address,
    /// beside the WebSocket endpoint (no `stats_bind` then). Default false:
    /// only `/health` is public.
    pub ops_on_public_port: bool,
    /// A file holding the Rails app's `secret_key_base` (one per line,
    /// current first), read into `rails.secret_key_base`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_base_file: Option<PathBuf>,
    /// Beside a Rails app: its secrets, session and channels (docs/rails.md).
    #[cfg(feature = "rails")]
    pub rails: cable_rails::RailsConfig,
    /// AnyCable's application secret: what `jwt_secret`, `streams_secret`,
    /// `turbo_streams_secret` and `broadcast_key` (derived from it as
    /// AnyCable does) fall back to.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub secret: Option<String>,
    /// The HMAC key of AnyCable's JWTs; default `secret`. With a key,
    /// connections are identified by their token ([`Settings::jwt_key`]).
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub jwt_secret: Option<String>,
    /// The query parameter carrying the JWT (the header is `X-` and it).
    /// Default `jid`.
    pub jwt_param: String,
    /// Refuse connections without a JWT. Default false.
    pub enforce_jwt: bool,
    /// AnyCable's broadcasters: `http` serves `POST /_broadcast` (on the
    /// public address unless `stats_bind` is set, as AnyCable does with a
    /// key); `redis` subscribes to `redis_channel` at `redis_url` (every
    /// node gets every message); `redisx` reads the stream `redisx_stream`
    /// in the consumer group `redisx_group` (one node per message); `nats`
    /// subscribes to `nats_channel` at `nats_servers` (every node gets every
    /// message).
    #[serde(deserialize_with = "de::list")]
    pub broadcast_adapter: Vec<String>,
    /// AnyCable's `redis_channel`: the channel of the `redis` broadcaster.
    /// Default `__anycable__`.
    pub redis_channel: String,
    /// AnyCable's `nats_channel`: the subject of the `nats` broadcaster.
    /// Default `__anycable__`.
    pub nats_channel: String,
    /// AnyCable's `redisx_stream`: the stream of the `redisx` broadcaster.
    /// Default `__anycable__`.
    pub redisx_stream: String,
    /// AnyCable's `redisx_group`: the consumer group of the `redisx`
    /// broadcaster. Default `bx`.
    pub redisx_group: String,
    /// AnyCable's `redisx_read_block_milliseconds`: how long one read of
    /// the stream waits, and how long a message stays pending before
    /// another node claims it. Default 2000.
    pub redisx_read_block_milliseconds: u64,
    /// How long a disconnected session stays present (AnyCable's
    /// `presence_ttl`). Default 15 s.
    #[serde(with = "duration")]
    pub presence_ttl: Duration,
    // AnyCable's names for settings with names of their own here, read
    // into those when the settings are checked (and then unset). Both set
    // to different values is an error.
    /// AnyCable's `host`: the IP address of `bind` (or `localhost`).
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub host: Option<String>,
    /// AnyCable's `port`: the port of `bind`.
    #[serde(skip_serializing)]
    pub port: Option<u16>,
    /// AnyCable's `path`: `mount_path`.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub path: Option<String>,
    /// AnyCable's `pubsub`: `redis` is the Redis `adapter` at `redis_url`.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub pubsub: Option<String>,
    /// AnyCable's `redis_url`, for `pubsub = "redis"`. Default
    /// redis://localhost:6379.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub redis_url: Option<String>,
    /// AnyCable's `nats_servers`, for `pubsub = "nats"`: one URL or several
    /// separated by commas. Default nats://localhost:4222.
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub nats_servers: Option<String>,
    /// AnyCable's `public_streams`: `pubsub_public`.
    #[cfg(feature = "rails")]
    #[serde(skip_serializing)]
    pub public_streams: Option<bool>,
    /// AnyCable's `streams_whisper`: `pubsub_signed_whispers`.
    #[cfg(feature = "rails")]
    #[serde(skip_serializing)]
    pub streams_whisper: Option<bool>,
    /// AnyCable's `turbo_streams_secret`: `turbo_verifier_key` (used as it
    /// is). Without either, and without `secret_key_base`, Turbo's key is
    /// the streams secret (and so `secret`), as AnyCable's.
    #[cfg(feature = "rails")]
    #[serde(deserialize_with = "de::non_empty", skip_serializing)]
    pub turbo_streams_secret: Option<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The serialised form has the secrets masked or left out.
        f.write_str(&self.to_toml())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 28080)),
            mount_path: "/cable".to_owned(),
            sse: false,
            sse_path: cable_server::DEFAULT_SSE_PATH.to_owned(),
            allowed_origins: Vec::new(),
            allowed_origin_patterns: Vec::new(),
            disable_origin_check: false,
            origin_check_off_as_anycable: false,
            adapter: "memory".to_owned(),
            channel_prefix: None,
            broker: "memory".to_owned(),
            history_all_streams: false,
            history_limit: 100,
            history_ttl: Duration::from_secs(300),
            sessions_ttl: Duration::from_secs(300),
            pong_timeout: Duration::ZERO,
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
            secret_key_base_file: None,
            #[cfg(feature = "rails")]
            rails: cable_rails::RailsConfig::default(),
            secret: None,
            jwt_secret: None,
            jwt_param: "jid".to_owned(),
            enforce_jwt: false,
            broadcast_adapter: Vec::new(),
            redis_channel: "__anycable__".to_owned(),
            nats_channel: "__anycable__".to_owned(),
            redisx_stream: "__anycable__".to_owned(),
            redisx_group: "bx".to_owned(),
            redisx_read_block_milliseconds: 2000,
            presence_ttl: Duration::from_secs(15),
            host: None,
            port: None,
            path: None,
            pubsub: None,
            redis_url: None,
            nats_servers: None,
            #[cfg(feature = "rails")]
            public_streams: None,
            #[cfg(feature = "rails")]
            streams_whisper: None,
            #[cfg(feature = "rails")]
            turbo_streams_secret: None,
        }
    }
}

/// Paths of the operator endpoints, which the WebSocket endpoint must not take.
const OPS_PATHS: &[&str] = &["/health", "/stats", "/metrics", "/_broadcast"];

/// Keys whose values are secrets: never printed, never in an error.
const SECRET_KEYS: &[&str] = &[
    "broadcast_key",
    "secret_key_base",
    "streams_secret",
    "turbo_verifier_key",
    "secret",
    "jwt_secret",
    "turbo_streams_secret",
];

/// AnyCable's broadcasters, and which of them cable has.
const BROADCASTERS: &[(&str, bool)] = &[
    ("http", true),
    ("redis", cfg!(feature = "redis")),
    ("redisx", cfg!(feature = "redis")),
    ("nats", cfg!(feature = "nats")),
];

/// AnyCable's `nats_servers` default.
const ANYCABLE_NATS_SERVERS: &str = "nats://localhost:4222";

/// AnyCable's `redis_url` default.
const ANYCABLE_REDIS_URL: &str = "redis://localhost:6379";

/// The longest duration a setting takes. Far more than any sane timeout,
/// and far from where adding it to an `Instant` overflows (which panics).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest count or size a setting takes: what a TOML integer holds, so
/// that `--print-config` prints the value in effect.
const MAX_NUMBER: u64 = i64::MAX as u64;

/// The field names serde's derive gives a struct, read by asking it to
/// deserialise from a deserializer that only records them.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl fmt::Display for Found {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names")
        }
    }
    impl std::error::Error for Found {}
    impl serde::de::Error for Found {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    struct Probe;
    impl<'de> serde::Deserializer<'de> for Probe {
        type Error = Found;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Probe) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// The Rails keys, which live under `rails` in [`Settings`].
fn rails_keys() -> &'static [&'static str] {
    #[cfg(feature = "rails")]
    return fields_of::<cable_rails::RailsConfig>();
    #[cfg(not(feature = "rails"))]
    return &[];
}

/// Every setting's name, as in the file.
pub fn keys() -> Vec<&'static str> {
    let mut keys: Vec<_> = fields_of::<Settings>()
        .iter()
        .copied()
        .filter(|k| *k != "rails")
        .collect();
    keys.extend(rails_keys());
    keys
}

/// One layer of settings: a flat table of values and where they came from.
#[derive(Clone, Debug)]
pub struct Layer {
    metadata: Metadata,
    dict: Dict,
    /// `ANYCABLE_*` variables that are no setting here.
    ignored: Vec<String>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Rails' keys are flat in every source and nested for serde.
        let mut dict = self.dict.clone();
        let mut rails = Dict::new();
        for k in rails_keys() {
            if let Some(v) = dict.remove(*k) {
                rails.insert((*k).to_owned(), v);
            }
        }
        if !rails.is_empty() {
            dict.insert("rails".to_owned(), rails.into());
        }
        Ok(Profile::Default.collect(dict))
    }
}

impl Layer {
    /// The settings in a TOML file. Unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Layer, SettingsError> {
        let file = path.display().to_string();
        let error = |message: String| SettingsError::File {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| error(e.to_string()))?;
        let known = keys();
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(SettingsError::UnknownKey {
                key: key.clone(),
                file,
                known: known.join(", "),
            });
        }
        let dict = figment::providers::Serialized::defaults(table)
            .data()
            .map_err(|e| error(e.to_string()))?
            .remove(&Profile::Default)
            .unwrap_or_default();
        Ok(Layer::new(Metadata::from("TOML file", path), dict))
    }

    fn new(metadata: Metadata, dict: Dict) -> Layer {
        Layer {
            metadata,
            dict,
            ignored: Vec::new(),
        }
    }

    /// The `CABLE_*` and `ANYCABLE_*` variables among `vars`, their values
    /// as text; for a key both give, `CABLE_`'s. Returns the layer and the
    /// names of `CABLE_*` variables that are no setting (likely typos).
    /// `ANYCABLE_*` ones that are no setting are no typo (an AnyCable
    /// deployment sets what cable does not have, RPC's say): see
    /// [`Layer::ignored`].
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> (Layer, Vec<String>) {
        let known = keys();
        let mut dict = Dict::new();
        let mut names = std::collections::HashMap::new();
        let mut unknown = Vec::new();
        let mut ignored = Vec::new();
        for (name, value) in vars {
            let (rest, ours) = match name.strip_prefix("CABLE_") {
                Some(rest) => (rest, true),
                None => match name.strip_prefix("ANYCABLE_") {
                    Some(rest) => (rest, false),
                    None => continue,
                },
            };
            let key = rest.to_ascii_lowercase();
            if !known.contains(&key.as_str()) {
                if ours { &mut unknown } else { &mut ignored }.push(name);
            } else if ours || !dict.contains_key(&key) {
                names.insert(key.clone(), name);
                dict.insert(key, value.into());
            }
        }
        let metadata =
            Metadata::named("environment variable").interpolater(move |_: &Profile, k: &[&str]| {
                let key = k.last().unwrap_or(&"");
                names
                    .get(*key)
                    .cloned()
                    .unwrap_or_else(|| format!("CABLE_{}", key.to_ascii_uppercase()))
            });
        ignored.sort();
        let layer = Layer {
            ignored,
            ..Layer::new(metadata, dict)
        };
        (layer, unknown)
    }

    /// The `ANYCABLE_*` variables [`Layer::from_env`] found that are no
    /// setting here, sorted: to log once, by name (never their values).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// Flags: `flags` serialises to a table of keys (`None` and empty
    /// lists are flags not given); `names` maps a key to its flag where it
    /// is not `--key` with dashes (a repeatable `--allowed-origin`).
    pub fn from_flags(
        flags: &impl Serialize,
        names: Vec<(String, String)>,
    ) -> Result<Layer, SettingsError> {
        let mut dict = figment::providers::Serialized::defaults(flags)
            .data()
            .map_err(|e| SettingsError::Conflict(format!("flags: {e}")))?
            .remove(&Profile::Default)
            .unwrap_or_default();
        dict.retain(|_, v| match v {
            Value::Empty(..) => false,
            Value::Array(_, items) => !items.is_empty(),
            _ => true,
        });
        let metadata = Metadata::named("flag").interpolater(move |_: &Profile, k: &[&str]| {
            let key = k.last().unwrap_or(&"");
            names
                .iter()
                .find(|(n, _)| n == key)
                .map(|(_, f)| f.clone())
                .unwrap_or_else(|| format!("--{}", key.replace('_', "-")))
        });
        Ok(Layer::new(metadata, dict))
    }

    /// One value (for tests and for programs that set a few keys).
    pub fn one(key: &str, value: impl Into<Value>, source: Source) -> Layer {
        let mut dict = Dict::new();
        dict.insert(key.to_owned(), value.into());
        let metadata = match source {
            Source::File(p) => Metadata::from("TOML file", p.as_path()),
            Source::Env(_) => Layer::from_env(Vec::new()).0.metadata,
            Source::Flag(f) => {
                Metadata::named("flag").interpolater(move |_: &Profile, _: &[&str]| f.clone())
            }
            Source::Default => Metadata::named("default"),
        };
        Layer::new(metadata, dict)
    }
}

/// Where `key` is in the merged settings (`rails.` before Rails' keys).
fn key_path(key: &str) -> String {
    if rails_keys().contains(&key) {
        format!("rails.{key}")
    } else {
        key.to_owned()
    }
}

/// Where `key` was set, or `None` for its default.
fn set_by(figment: &Figment, key: &str) -> Option<Source> {
    let path = key_path(key);
    figment.find_value(&path).ok()?;
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    Some(source_of(figment.find_metadata(&path), &segments))
}

/// The error for `key`'s value (or for `item`, one of its values).
fn invalid_in(figment: &Figment, key: &str, item: Option<&str>, expected: &str) -> SettingsError {
    let path = key_path(key);
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    let value = item.map(str::to_owned).unwrap_or_else(|| {
        figment
            .find_value(&path)
            .map(|v| show(&v))
            .unwrap_or_default()
    });
    SettingsError::Invalid {
        key: key.to_owned(),
        from: source_of(figment.find_metadata(&path), &segments),
        value: masked(key, &value),
        expected: expected.to_owned(),
    }
}

/// Reads `value`, given under AnyCable's name `alias`, into `own` (the
/// `own_key` setting); an error when `own_key` was set too, to another value.
fn same_setting<T: PartialEq>(
    figment: &Figment,
    alias: &str,
    value: T,
    own_key: &str,
    own: &mut T,
) -> Result<(), SettingsError> {
    if *own != value {
        if let Some(from) = set_by(figment, own_key) {
            let alias_from = set_by(figment, alias).unwrap_or(Source::Default);
            return Err(SettingsError::Conflict(format!(
                "`{alias}` (from {alias_from}) and `{own_key}` (from {from}) are one setting \
                 with two values: set one of them"
            )));
        }
    }
    *own = value;
    Ok(())
}

/// What `meta` names as the source of the value at `path`.
fn source_of(meta: Option<&Metadata>, path: &[String]) -> Source {
    let Some(m) = meta else {
        return Source::Default;
    };
    if let Some(p) = m.source.as_ref().and_then(|s| s.file_path()) {
        return Source::File(p.to_owned());
    }
    let name = m.interpolate(&Profile::Default, path);
    match m.name.as_ref() {
        "environment variable" => Source::Env(name),
        "flag" => Source::Flag(name),
        _ => Source::Default,
    }
}

/// A value as text, as the user wrote it.
fn show(v: &Value) -> String {
    match v {
        Value::String(_, s) => s.clone(),
        Value::Array(_, items) => items.iter().map(show).collect::<Vec<_>>().join(","),
        other => toml::Value::try_from(other)
            .map(|t| t.to_string())
            .unwrap_or_default(),
    }
}

/// `value` as an error may show it: secrets never, passwords masked.
fn masked(key: &str, value: &str) -> String {
    if SECRET_KEYS.contains(&key) {
        "***".to_owned()
    } else {
        redact_url(value)
    }
}

/// Plainer words for the type names serde's errors expect.
fn allowed(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i64" => "a whole number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        other => other.to_owned(),
    }
}

fn from_figment_error(figment: &Figment, e: figment::Error) -> SettingsError {
    use figment::error::{Actual, Kind};
    let key = e.path.last().cloned().unwrap_or_default();
    let from = source_of(e.metadata.as_ref(), &e.path);
    let raw = || {
        figment
            .find_value(&e.path.join("."))
            .map(|v| show(&v))
            .unwrap_or_default()
    };
    let actual = |a: &Actual| match a {
        Actual::Str(s) => s.clone(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(n) => n.to_string(),
        Actual::Bool(b) => b.to_string(),
        _ => raw(),
    };
    let (value, expected) = match &e.kind {
        Kind::InvalidType(a, x) | Kind::InvalidValue(a, x) => (actual(a), allowed(x)),
        Kind::UnknownVariant(v, options) => (v.clone(), options.join(" or ")),
        Kind::UnknownField(k, _) => {
            return SettingsError::UnknownKey {
                key: k.clone(),
                file: from.to_string(),
                known: keys().join(", "),
            }
        }
        Kind::Message(m) => (raw(), m.clone()),
        other => (raw(), other.to_string()),
    };
    SettingsError::Invalid {
        value: masked(&key, &value),
        key,
        from,
        expected,
    }
}

impl Settings {
    /// Merges `layers` in order (later ones win) over the defaults, reads
    /// the settings and checks them.
    pub fn from_layers(layers: &[Layer]) -> Result<Settings, SettingsError> {
        let figment = layers
            .iter()
            .fold(Figment::new(), |f, l| f.merge(l.clone()));
        // Lossy: `"yes"`, `"1"` and `"on"` are true, numbers may come as
        // text (every variable and flag does).
        let mut s: Settings = figment
            .extract_lossy()
            .map_err(|e| from_figment_error(&figment, e))?;
        s.check(&figment)?;
        Ok(s)
    }

    /// The checks serde's types do not make, once, on the merged settings.
    fn check(&mut self, figment: &Figment) -> Result<(), SettingsError> {
        self.read_anycable_names(figment)?;
        let invalid_item = |key: &str, item: Option<&str>, expected: &str| {
            invalid_in(figment, key, item, expected)
        };
        let invalid = |key: &str, expected: &str| invalid_item(key, None, expected);
        let conflict = |m: &str| Err(SettingsError::Conflict(m.to_owned()));
        if !self.mount_path.starts_with('/') {
            return Err(invalid("mount_path", "a path starting with /, e.g. /cable"));
        }
        if !self.sse_path.starts_with('/') || self.sse_path == self.mount_path {
            return Err(invalid(
                "sse_path",
                "a path starting with /, other than mount_path, e.g. /events",
            ));
        }
        if OPS_PATHS.contains(&self.mount_path.as_str()) {
            return Err(invalid(
                "mount_path",
                "a path other than the operator endpoints' (/health, /stats, /metrics, \
                 /_broadcast), e.g. /cable",
            ));
        }
        // With a scheme: an exact origin; without: AnyCable's host entry.
        let host_ok = |o: &str| {
            let host = o.strip_prefix('*').unwrap_or(o);
            !host.is_empty() && !host.contains(['/', ' ', '*'])
        };
        if let Some(o) = self
            .allowed_origins
            .iter()
            .find(|o| !o.contains("://") && !host_ok(o))
        {
            return Err(invalid_item(
                "allowed_origins",
                Some(o),
                "origins like https://example.com (scheme, host, optional port), or AnyCable's \
                 hosts like www.example.com and *.example.com",
            ));
        }
        for p in &self.allowed_origin_patterns {
            if let Err(e) = cable_server::AllowedOrigin::pattern(p) {
                let expected = format!("regular expressions: {e}");
                return Err(invalid_item("allowed_origin_patterns", Some(p), &expected));
            }
        }
        let scheme = self
            .adapter
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        let adapter_ok = self.adapter == "memory"
            || matches!(
                scheme.as_deref(),
                Some(
                    "memory"
                        | "redis"
                        | "rediss"
                        | "redis+unix"
                        | "postgres"
                        | "postgresql"
                        | "nats"
                )
            );
        if !adapter_ok {
            return Err(invalid(
                "adapter",
                "memory, redis://HOST[:PORT][/DB], rediss://…, postgres://HOST[:PORT]/DB or \
                 nats://HOST[:PORT]",
            ));
        }
        let broker_ok = matches!(self.broker.as_str(), "memory" | "none")
            || matches!(
                self.broker
                    .split_once("://")
                    .map(|(s, _)| s.to_ascii_lowercase())
                    .as_deref(),
                Some("redis" | "rediss" | "redis+unix" | "postgres" | "postgresql" | "nats")
            );
        if !broker_ok {
            return Err(invalid(
                "broker",
                "memory, none, redis (at redis_url), nats (JetStream at nats_servers), \
                 redis://HOST[:PORT][/DB], rediss://…, postgres://HOST[:PORT]/DB or \
                 nats://HOST[:PORT]",
            ));
        }
        if self.history_limit == 0 {
            return Err(invalid("history_limit", "a number of messages above 0"));
        }
        let durations = [
            ("history_ttl", self.history_ttl),
            ("ping_interval", self.ping_interval),
            ("connect_timeout", self.connect_timeout),
            ("callback_timeout", self.callback_timeout),
            ("header_read_timeout", self.header_read_timeout),
        ];
        if let Some((key, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(invalid(key, "a duration above 0: 500ms, 3s, 1m"));
        }
        let sizes = [
            ("max_identifier_size", self.max_identifier_size, 64),
            (
                "max_outbound_message_size",
                self.max_outbound_message_size,
                1024,
            ),
            ("max_message_size", self.max_message_size, 256),
            ("outbound_queue", self.outbound_queue, 1024),
        ];
        for (key, size, least) in sizes {
            if size < least {
                return Err(invalid(
                    key,
                    &format!("a size of at least {least} bytes: 65536, 64KiB, 1MiB"),
                ));
            }
        }
        if self.command_burst == 0 {
            return Err(invalid("command_burst", "a whole number of at least 1"));
        }
        if self.max_pending_connections == 0 {
            return Err(invalid(
                "max_pending_connections",
                "a whole number of at least 1",
            ));
        }
        if !tracing_filter_ok(&self.log_level) {
            return Err(invalid(
                "log_level",
                "error, warn, info, debug, trace, or a filter like info,cable_core=debug",
            ));
        }
        if self.broadcast_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(invalid("broadcast_key", "a key of at least 16 characters"));
        }
        if self.max_outbound_message_size > self.outbound_queue {
            return Err(SettingsError::Conflict(format!(
                "`max_outbound_message_size` ({}) must not be over `outbound_queue` ({}): a \
                 client's queue must be able to hold the largest message",
                self.max_outbound_message_size, self.outbound_queue
            )));
        }
        if self.stats_bind.is_some() && self.ops_on_public_port {
            return conflict(
                "set `stats_bind` (operator endpoints on their own address) or \
                 `ops_on_public_port` (beside the WebSocket endpoint), not both",
            );
        }
        // An AnyCable deployment's key may serve no broadcaster here (AnyCable
        // defaults to http,redis; cable to none): a warning at startup, no
        // error.
        let anycable_key = matches!(set_by(figment, "broadcast_key"),
            Some(Source::Env(name)) if name.starts_with("ANYCABLE_"));
        if self.broadcast_key.is_some()
            && self.stats_bind.is_none()
            && !self.ops_on_public_port
            && !self.http_broadcast()
            && !anycable_key
        {
            return conflict(
                "`broadcast_key` is set but POST /_broadcast is served nowhere: set \
                 `stats_bind` to a private address (or `ops_on_public_port = true` to serve it \
                 beside the WebSocket endpoint, or AnyCable's `broadcast_adapter = \"http\"`)",
            );
        }
        if self.channel_prefix.is_some() && self.adapter.starts_with("memory") {
            return conflict(
                "`channel_prefix` only applies to the redis and postgres adapters; the memory \
                 adapter does not name channels",
            );
        }
        if let Some(path) = &self.secret_key_base_file {
            let keys = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "secret_key_base_file",
                    &format!("a readable file with the secret_key_base ({e})"),
                )
            })?;
            let keys: Vec<String> = keys
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if keys.is_empty() {
                return Err(invalid(
                    "secret_key_base_file",
                    "a file holding the secret_key_base (one per line, current first)",
                ));
            }
            #[cfg(feature = "rails")]
            {
                if !self.rails.secret_key_base.is_empty() {
                    return conflict("set `secret_key_base` or `secret_key_base_file`, not both");
                }
                self.rails.secret_key_base = keys;
            }
        }
        #[cfg(feature = "rails")]
        if self.rails.enabled() {
            self.rails.validate().map_err(SettingsError::Rails)?;
        }
        self.check_anycable(figment)
    }

    /// Reads AnyCable's names into cable's own keys (before those are
    /// checked), and the secrets into what falls back to them.
    fn read_anycable_names(&mut self, figment: &Figment) -> Result<(), SettingsError> {
        let invalid = |key: &str, expected: &str| invalid_in(figment, key, None, expected);
        // AnyCable checks no origin unless told which: a deployment
        // configured its way keeps working (its clients may send none).
        let by_anycable = keys().iter().any(
            |k| matches!(set_by(figment, k), Some(Source::Env(n)) if n.starts_with("ANYCABLE_")),
        );
        let origins_given = [
            "allowed_origins",
            "allowed_origin_patterns",
            "disable_origin_check",
        ]
        .iter()
        .any(|k| set_by(figment, k).is_some());
        if by_anycable && !origins_given {
            self.disable_origin_check = true;
            self.origin_check_off_as_anycable = true;
        }
        if let Some(path) = self.path.take() {
            if path.contains(',') {
                return Err(invalid(
                    "path",
                    "one path (cable serves a single one), e.g. /cable",
                ));
            }
            same_setting(figment, "path", path, "mount_path", &mut self.mount_path)?;
        }
        let (host, port) = (self.host.take(), self.port.take());
        if host.is_some() || port.is_some() {
            let ip = match host.as_deref() {
                None => self.bind.ip(),
                Some("localhost") => std::net::Ipv4Addr::LOCALHOST.into(),
                Some(h) => h
                    .parse()
                    .map_err(|_| invalid("host", "an IP address or localhost"))?,
            };
            let addr = SocketAddr::new(ip, port.unwrap_or(self.bind.port()));
            let alias = if port.is_some() { "port" } else { "host" };
            same_setting(figment, alias, addr, "bind", &mut self.bind)?;
        }
        // Kept for the Redis broadcasters too.
        let redis_url = self.redis_url.clone();
        // AnyCable names its broker (`broker = "redis"`, Pro's) and takes
        // the URL from `redis_url`; ours is a URL.
        if self.broker.eq_ignore_ascii_case("redis") {
            self.broker = redis_url
                .clone()
                .unwrap_or_else(|| ANYCABLE_REDIS_URL.to_owned());
        } else if self.broker.eq_ignore_ascii_case("nats") {
            self.broker = self.intake_nats_url();
        }
        match self
            .pubsub
            .take()
            .map(|p| p.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") => {}
            Some("redis") => {
                let url = redis_url.unwrap_or_else(|| ANYCABLE_REDIS_URL.to_owned());
                same_setting(figment, "pubsub", url, "adapter", &mut self.adapter)?;
            }
            Some("nats") => {
                let url = self.intake_nats_url();
                same_setting(figment, "pubsub", url, "adapter", &mut self.adapter)?;
            }
            Some(_) => {
                return Err(invalid(
                    "pubsub",
                    "redis (with redis_url), nats (with nats_servers) or none (the adapter \
                     setting also takes postgres://)",
                ))
            }
        }
        #[cfg(feature = "rails")]
        {
            let r = &mut self.rails;
            if let Some(public) = self.public_streams.take() {
                same_setting(
                    figment,
                    "public_streams",
                    public,
                    "pubsub_public",
                    &mut r.pubsub_public,
                )?;
            }
            if let Some(whisper) = self.streams_whisper.take() {
                same_setting(
                    figment,
                    "streams_whisper",
                    whisper,
                    "pubsub_signed_whispers",
                    &mut r.pubsub_signed_whispers,
                )?;
            }
            if let Some(key) = self.turbo_streams_secret.take() {
                let own = &mut r.turbo_verifier_key;
                same_setting(
                    figment,
                    "turbo_streams_secret",
                    Some(key),
                    "turbo_verifier_key",
                    own,
                )?;
            }
            if r.streams_secret.is_none() {
                r.streams_secret = self.secret.clone();
            }
            // A streams secret turns signed streams on, as in AnyCable,
            // unless `pubsub_signed` says otherwise.
            if r.streams_secret.is_some() && set_by(figment, "pubsub_signed").is_none() {
                r.pubsub_signed = true;
            }
            // Turbo's key comes from `secret_key_base` as turbo-rails
            // derives it; without one, AnyCable's fallback.
            if r.turbo && r.turbo_verifier_key.is_none() && r.secret_key_base.is_empty() {
                r.turbo_verifier_key = r.streams_secret.clone();
            }
        }
        Ok(())
    }

    /// The AnyCable settings' own checks, once the others passed; derives
    /// the broadcast key from `secret` when none is given.
    fn check_anycable(&mut self, figment: &Figment) -> Result<(), SettingsError> {
        let invalid = |key: &str, expected: &str| invalid_in(figment, key, None, expected);
        self.broadcast_adapter
            .iter_mut()
            .for_each(|a| a.make_ascii_lowercase());
        let known = |a: &&String| BROADCASTERS.iter().any(|(name, _)| name == a);
        if let Some(a) = self.broadcast_adapter.iter().find(|a| !known(a)) {
            let expected = "AnyCable's broadcasters: http, redis, redisx, nats (comma-separated)";
            return Err(invalid_in(figment, "broadcast_adapter", Some(a), expected));
        }
        if let Some(secret) = self.jwt_key() {
            let config = cable_anycable::JwtConfig::new(secret).param(&self.jwt_param);
            if let Err(e) = cable_anycable::JwtAuth::new(config) {
                return Err(invalid("jwt_param", &e.to_string()));
            }
        } else if self.enforce_jwt {
            return Err(SettingsError::Conflict(
                "`enforce_jwt` needs a key to check tokens with: set `jwt_secret` or `secret`"
                    .to_owned(),
            ));
        }
        for (key, value) in [
            ("redis_channel", &self.redis_channel),
            ("nats_channel", &self.nats_channel),
            ("redisx_stream", &self.redisx_stream),
            ("redisx_group", &self.redisx_group),
        ] {
            if value.is_empty() {
                return Err(invalid(key, "a non-empty name"));
            }
        }
        let block = self.redisx_read_block_milliseconds;
        if !(1..=MAX_DURATION.as_millis() as u64).contains(&block) {
            return Err(invalid(
                "redisx_read_block_milliseconds",
                "milliseconds from 1 to a day",
            ));
        }
        // As AnyCable: redisx hands each message to one node, so the nodes
        // need a shared pub/sub to reach every subscriber; without one set,
        // it is Redis at redis_url.
        if self.broadcast_adapter.iter().any(|a| a == "redisx")
            && self.adapter == "memory"
            && set_by(figment, "adapter").is_none()
            && set_by(figment, "pubsub").is_none()
        {
            self.adapter = self.intake_redis_url();
        }
        if self.broadcast_key.is_none() {
            self.broadcast_key = self.secret.as_deref().map(cable_anycable::broadcast_key);
        }
        if self.http_broadcast() && self.broadcast_key.is_none() {
            return Err(SettingsError::Conflict(
                "`broadcast_adapter = \"http\"` needs `broadcast_key` or `secret`: cable never \
                 serves POST /_broadcast without a key (AnyCable's unauthenticated :8090)"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Where the Redis broadcasters read: AnyCable's `redis_url` (default
    /// redis://localhost:6379).
    pub fn intake_redis_url(&self) -> String {
        self.redis_url
            .clone()
            .unwrap_or_else(|| ANYCABLE_REDIS_URL.to_owned())
    }

    /// Where the NATS broadcaster reads (and `pubsub = "nats"` publishes):
    /// AnyCable's `nats_servers` (default nats://localhost:4222).
    pub fn intake_nats_url(&self) -> String {
        self.nats_servers
            .clone()
            .unwrap_or_else(|| ANYCABLE_NATS_SERVERS.to_owned())
    }

    /// Whether AnyCable's broadcaster `name` (`redis`, `redisx`, `nats`) is
    /// asked for.
    pub fn broadcaster(&self, name: &str) -> bool {
        self.broadcast_adapter.iter().any(|a| a == name)
    }

    /// The key of AnyCable's JWTs: `jwt_secret`, else `secret`. With one,
    /// connections are identified by their token.
    pub fn jwt_key(&self) -> Option<&str> {
        self.jwt_secret.as_deref().or(self.secret.as_deref())
    }

    /// Whether AnyCable's `http` broadcaster is asked for: `POST
    /// /_broadcast` on `stats_bind` if set, else on the public address
    /// (alone, unless `ops_on_public_port`).
    pub fn http_broadcast(&self) -> bool {
        self.broadcast_adapter.iter().any(|a| a == "http")
    }

    /// What the settings ask for that has no effect (yet), to log at
    /// startup: AnyCable's broadcasters and features cable does not have.
    pub fn notices(&self) -> Vec<String> {
        let mut notices: Vec<String> = self
            .broadcast_adapter
            .iter()
            .filter(|a| BROADCASTERS.contains(&(a.as_str(), false)))
            .map(|a| {
                format!(
                    "broadcast_adapter {a}: not built yet, nothing is received through it; \
                     publish with POST /_broadcast (broadcast_adapter = \"http\"), redis, \
                     redisx or nats"
                )
            })
            .collect();
        // The legacy Redis broadcaster and NATS' reach every node, and each
        // appends to a shared history: a client resuming on another node
        // would get the message again.
        let shared_broker = !matches!(self.broker.as_str(), "memory" | "none");
        let fan_out = ["redis", "nats"]
            .into_iter()
            .filter(|a| self.broadcaster(a));
        for a in fan_out.filter(|_| shared_broker) {
            notices.push(format!(
                "broadcast_adapter {a} with a shared broker: every node appends each message \
                 to the stream's history, so history holds it once per node; use redisx (one \
                 node per message) or POST /_broadcast"
            ));
        }
        notices
    }

    /// Whether the origin check is off only because the settings came the
    /// AnyCable way (`ANYCABLE_*`) and named no origins, as AnyCable then
    /// checks none; the server warns at startup.
    pub fn origin_check_off_as_anycable(&self) -> bool {
        self.origin_check_off_as_anycable
    }

    /// The effective settings as TOML that `--config` reads back. Secrets
    /// are left out (a comment says which are set: give them again, from
    /// the environment as before); an adapter URL's password shows as
    /// `***`, which does not read back as the password.
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).unwrap_or_default();
        if let Some(toml::Value::Table(rails)) = table.remove("rails") {
            table.extend(rails);
        }
        if self.secret_key_base_file.is_some() {
            table.remove("secret_key_base");
        }
        let mut set = Vec::new();
        let secrets = [
            ("secret", &self.secret),
            ("jwt_secret", &self.jwt_secret),
            ("broadcast_key", &self.broadcast_key),
        ];
        set.extend(secrets.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| *k));
        #[cfg(feature = "rails")]
        {
            let r = &self.rails;
            if !r.secret_key_base.is_empty() && self.secret_key_base_file.is_none() {
                set.push("secret_key_base");
            }
            if r.streams_secret.is_some() {
                set.push("streams_secret");
            }
            if r.turbo_verifier_key.is_some() {
                set.push("turbo_verifier_key");
            }
        }
        let mut out = String::new();
        for key in set {
            out.push_str(&format!(
                "# {key} is set (not printed: give it again, e.g. CABLE_{})\n",
                key.to_ascii_uppercase()
            ));
        }
        out + &toml::to_string(&table).unwrap_or_default()
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

/// Serialising with secrets masked.
mod ser {
    pub(super) fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&cable_core::redact_url(url))
    }
}

/// Values that come as text from variables and flags, as numbers or arrays
/// from the file.
mod de {
    use std::fmt::Display;
    use std::net::SocketAddr;
    use std::str::FromStr;

    use serde::de::{Deserializer, Error, Unexpected};
    use serde::Deserialize;

    use super::MAX_NUMBER;

    /// What a value is before its type reads it.
    #[derive(Deserialize)]
    #[serde(untagged)]
    pub(super) enum Text {
        Int(u64),
        Float(f64),
        Str(String),
        List(Vec<String>),
    }

    pub(super) fn invalid<E: Error>(t: &Text, expected: &str) -> E {
        match t {
            Text::Int(n) => E::invalid_value(Unexpected::Unsigned(*n), &expected),
            Text::Float(f) => E::invalid_value(Unexpected::Float(*f), &expected),
            Text::Str(s) => E::invalid_value(Unexpected::Str(s), &expected),
            Text::List(_) => E::invalid_type(Unexpected::Seq, &expected),
        }
    }

    fn parsed<'de, D: Deserializer<'de>, T: FromStr>(d: D, expected: &str) -> Result<T, D::Error> {
        let t = Text::deserialize(d)?;
        match &t {
            Text::Str(s) => s.trim().parse().map_err(|_| invalid(&t, expected)),
            _ => Err(invalid(&t, expected)),
        }
    }

    pub(super) fn text<'de, D: Deserializer<'de>, T: FromStr<Err: Display>>(
        d: D,
    ) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        s.trim().parse().map_err(|e: T::Err| {
            D::Error::invalid_value(Unexpected::Str(&s), &e.to_string().as_str())
        })
    }

    pub(super) fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parsed(d, "an IP:port, e.g. 0.0.0.0:28080")
    }

    pub(super) fn opt_addr<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        match Text::deserialize(d)? {
            Text::Str(s) if s.trim().is_empty() => Ok(None),
            Text::Str(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| invalid(&Text::Str(s), "an IP:port, e.g. 127.0.0.1:28081")),
            t => Err(invalid(&t, "an IP:port, e.g. 127.0.0.1:28081")),
        }
    }

    /// Empty text is unset.
    pub(super) fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
    }

    /// An array, or comma-separated text.
    pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        match Text::deserialize(d)? {
            Text::List(v) => Ok(v),
            Text::Str(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()),
            t => Err(invalid(&t, "a list: an array, or comma-separated text")),
        }
    }

    /// Bytes (`65536`) or with a unit (`64KiB`, `1MiB`, `64KB`, `1 MB`),
    /// read by bytesize, up to [`MAX_NUMBER`].
    pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        const EXPECTED: &str =
            "a size: bytes (65536) or with a unit (64KiB, 1MiB), at most 2^63 - 1";
        let t = Text::deserialize(d)?;
        let bytes = match &t {
            Text::Int(n) => Some(*n),
            Text::Str(s) => s
                .trim()
                .parse::<bytesize::ByteSize>()
                .ok()
                .map(|b| b.as_u64()),
            _ => None,
        };
        bytes
            .filter(|b| *b <= MAX_NUMBER)
            .and_then(|b| usize::try_from(b).ok())
            .ok_or_else(|| invalid(&t, EXPECTED))
    }
}

/// Durations: seconds (`3`, `0.5`) or humantime's text (`500ms`, `3s`,
/// `1m 30s`, `1d`), at most [`MAX_DURATION`]; printed as humantime's text.
mod duration {
    use std::time::Duration;

    use serde::de::{Deserializer, Error, Unexpected};
    use serde::{Deserialize, Serializer};

    use super::de::{invalid, Text};
    use super::MAX_DURATION;

    const EXPECTED: &str =
        "a duration of at most 1 day: seconds (3, 0.5) or with a unit (500ms, 3s, 1m)";

    fn secs(f: f64) -> Option<Duration> {
        // `from_secs_f64` panics on huge values; the range check comes first.
        (f.is_finite() && (0.0..=MAX_DURATION.as_secs_f64()).contains(&f))
            .then(|| Duration::try_from_secs_f64(f).ok())
            .flatten()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Text::deserialize(d)? {
            Text::Int(n) => secs(n as f64)
                .ok_or_else(|| D::Error::invalid_value(Unexpected::Unsigned(n), &EXPECTED)),
            Text::Float(f) => {
                secs(f).ok_or_else(|| D::Error::invalid_value(Unexpected::Float(f), &EXPECTED))
            }
            Text::Str(s) => {
                let t = s.trim();
                let d = match t.parse::<f64>() {
                    Ok(f) => secs(f),
                    Err(_) => humantime::parse_duration(t)
                        .ok()
                        .filter(|d| *d <= MAX_DURATION),
                };
                d.ok_or_else(|| D::Error::invalid_value(Unexpected::Str(&s), &EXPECTED))
            }
            t => Err(invalid(&t, EXPECTED)),
        }
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

/// A count where `0` or `none` means no limit, at most [`MAX_NUMBER`];
/// printed as the number, `0` for none.
mod limit {
    use serde::de::Deserializer;
    use serde::{Deserialize, Serializer};

    use super::de::{invalid, Text};
    use super::MAX_NUMBER;

    const EXPECTED: &str = "a whole number up to 9223372036854775807, or 0 / none for no limit";

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let t = Text::deserialize(d)?;
        let n = match &t {
            Text::Int(n) => Some(*n),
            Text::Str(s) if s.trim().eq_ignore_ascii_case("none") => Some(0),
            Text::Str(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(0) => Ok(None),
            Some(n) if n <= MAX_NUMBER => {
                T::try_from(n).map(Some).map_err(|_| invalid(&t, EXPECTED))
            }
            _ => Err(invalid(&t, EXPECTED)),
        }
    }

    pub(super) fn serialize<S: Serializer, T: Copy + TryInto<u64>>(
        n: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(n.and_then(|n| n.try_into().ok()).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, v: &str, src: Source) -> Layer {
        Layer::one(key, v, src)
    }

    fn flag() -> Source {
        Source::Flag("--x".into())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cable-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hardening_limits_have_defaults_and_can_be_set_or_turned_off() {
        let d = Settings::from_layers(&[]).unwrap();
        assert_eq!(d.max_subscriptions_per_connection, Some(256));
        assert_eq!(d.command_rate, Some(100));
        assert_eq!(d.command_burst, 300);
        assert_eq!(d.max_identifier_size, 4096);
        assert_eq!(d.max_outbound_message_size, 512 * 1024);
        let layers: Vec<Layer> = [
            ("max_subscriptions_per_connection", "none"),
            ("command_rate", "0"),
            ("command_burst", "50"),
            ("max_identifier_size", "8KiB"),
            ("max_outbound_message_size", "256KiB"),
            ("connect_timeout", "2s"),
            ("callback_timeout", "500ms"),
            ("header_read_timeout", "3"),
            ("max_pending_connections", "10"),
        ]
        .iter()
        .map(|(k, v)| one(k, v, flag()))
        .collect();
        let s = Settings::from_layers(&layers).unwrap();
        assert_eq!(s.max_subscriptions_per_connection, None);
        assert_eq!(s.command_rate, None);
        assert_eq!(s.command_burst, 50);
        assert_eq!(s.max_identifier_size, 8192);
        assert_eq!(s.max_outbound_message_size, 256 * 1024);
        assert_eq!(s.connect_timeout, Duration::from_secs(2));
        assert_eq!(s.callback_timeout, Duration::from_millis(500));
        assert_eq!(s.header_read_timeout, Duration::from_secs(3));
        assert_eq!(s.max_pending_connections, 10);
        // A message limit the queue cannot hold is refused.
        let e =
            Settings::from_layers(&[one("max_outbound_message_size", "2MiB", flag())]).unwrap_err();
        assert!(e.to_string().contains("outbound_queue"), "{e}");
        for (k, v) in [
            ("command_burst", "0"),
            ("callback_timeout", "0"),
            ("max_pending_connections", "x"),
        ] {
            assert!(
                Settings::from_layers(&[one(k, v, flag())]).is_err(),
                "{k}={v}"
            );
        }
    }

    /// `--print-config` output read back with `--config` gives the same
    /// settings; secrets are left out (a comment names them), so they come
    /// back from where they came from before.
    #[test]
    #[cfg(feature = "rails")]
    fn printed_settings_read_back_the_same() {
        let dir = temp_dir("roundtrip");
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, format!("{}\n", "s".repeat(64))).unwrap();
        let (env, unknown) = Layer::from_env([
            (
                "CABLE_ALLOWED_ORIGINS".into(),
                "https://a.example, https://b.example".into(),
            ),
            ("CABLE_BROADCAST_KEY".into(), "k".repeat(16)),
            ("CABLE_STREAMS_SECRET".into(), "streams-hunter2".into()),
            ("CABLE_PING_INTERVAL".into(), "1m 30s".into()),
            ("CABLE_OUTBOUND_QUEUE".into(), "2MiB".into()),
            ("CABLE_MAX_CONNECTIONS".into(), "9223372036854775807".into()),
            ("CABLE_TURBO_STREAMS".into(), "yes".into()),
            (
                "CABLE_SESSION_IDENTIFIERS".into(),
                "current_user=user_id".into(),
            ),
            ("CABLE_SESSION_COOKIE".into(), "_app_session".into()),
            ("CABLE_KEY_DERIVATION".into(), "sha1".into()),
            (
                "CABLE_SECRET_KEY_BASE_FILE".into(),
                secret_file.display().to_string(),
            ),
            ("CABLE_STATS_BIND".into(), "127.0.0.1:0".into()),
            ("CABLE_PING_INTERVALL".into(), "1".into()),
        ]);
        assert_eq!(unknown, ["CABLE_PING_INTERVALL"]);
        let s = Settings::from_layers(std::slice::from_ref(&env)).unwrap();
        assert_eq!(
            s.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(s.ping_interval, Duration::from_secs(90));
        assert_eq!(s.rails.secret_key_base, ["s".repeat(64)]);
        assert!(s.rails.turbo);
        let printed = s.to_toml();
        assert!(
            !printed.contains("hunter2") && !printed.contains("kkkk"),
            "{printed}"
        );
        assert!(printed.contains("# streams_secret is set"), "{printed}");
        assert!(printed.contains("ping_interval = \"1m 30s\""), "{printed}");
        assert!(
            printed.contains("max_connections = 9223372036854775807"),
            "{printed}"
        );
        let file = dir.join("cable.toml");
        std::fs::write(&file, &printed).unwrap();
        // The secrets again from the environment, as before.
        let (secrets, _) = Layer::from_env([
            ("CABLE_BROADCAST_KEY".into(), "k".repeat(16)),
            ("CABLE_STREAMS_SECRET".into(), "streams-hunter2".into()),
        ]);
        let again = Settings::from_layers(&[Layer::from_file(&file).unwrap(), secrets]).unwrap();
        assert_eq!(again.to_toml(), printed);
        assert_eq!(again.rails, s.rails);
        assert_eq!(again.broadcast_key, s.broadcast_key);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Settings from these environment variables alone.
    fn from_vars(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::from_layers(&[Layer::from_env(vars).0])
    }

    /// printf broadcast-cable | openssl dgst -sha256 -hmac anycable-test-secret-1234
    const DERIVED_BROADCAST_KEY: &str =
        "02c287a8ee5b4cb72d4af3ad9ae444a08c570bb9a2ea6090934cbca3f582e5bb";

    #[test]
    fn anycable_variables_beside_cable_ones() {
        let (env, unknown) = Layer::from_env([
            ("ANYCABLE_PING_INTERVAL".into(), "5".into()),
            ("ANYCABLE_HISTORY_LIMIT".into(), "7".into()),
            ("CABLE_PING_INTERVAL".into(), "2".into()),
            ("ANYCABLE_RPC_HOST".into(), "localhost:50051".into()),
            ("ANYCABLE_DEBUG".into(), "true".into()),
            ("CABLE_PING_INTERVALL".into(), "1".into()),
        ]);
        // CABLE_ wins; unknown ANYCABLE_ names are ignored, not typos.
        assert_eq!(unknown, ["CABLE_PING_INTERVALL"]);
        assert_eq!(env.ignored(), ["ANYCABLE_DEBUG", "ANYCABLE_RPC_HOST"]);
        let s = Settings::from_layers(&[env]).unwrap();
        assert_eq!(s.ping_interval, Duration::from_secs(2));
        assert_eq!(s.history_limit, 7);
        // An error names the variable the value came from.
        match from_vars(&[("ANYCABLE_MAX_MESSAGE_SIZE", "huge")]) {
            Err(SettingsError::Invalid { key, from, .. }) => {
                assert_eq!(key, "max_message_size");
                assert_eq!(from, Source::Env("ANYCABLE_MAX_MESSAGE_SIZE".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[cfg(feature = "rails")]
    fn anycable_secret_is_the_fallback_of_every_key() {
        const SECRET: &str = "anycable-test-secret-1234";
        let s = from_vars(&[
            ("ANYCABLE_SECRET", SECRET),
            ("ANYCABLE_TURBO_STREAMS", "true"),
        ])
        .unwrap();
        assert_eq!(s.jwt_key(), Some(SECRET));
        assert_eq!(s.rails.streams_secret.as_deref(), Some(SECRET));
        assert!(
            s.rails.pubsub_signed,
            "a streams secret turns signed streams on"
        );
        assert!(!s.rails.pubsub_public);
        assert_eq!(s.rails.turbo_verifier_key.as_deref(), Some(SECRET));
        assert_eq!(s.broadcast_key.as_deref(), Some(DERIVED_BROADCAST_KEY));
        // Each key of its own beats the secret; Turbo's falls back to the
        // streams secret first.
        let s = from_vars(&[
            ("ANYCABLE_SECRET", SECRET),
            ("ANYCABLE_JWT_SECRET", "jwt-key"),
            ("ANYCABLE_STREAMS_SECRET", "streams-key"),
            ("ANYCABLE_BROADCAST_KEY", "broadcast-key-of-its-own"),
            ("ANYCABLE_TURBO_STREAMS", "true"),
        ])
        .unwrap();
        assert_eq!(s.jwt_key(), Some("jwt-key"));
        assert_eq!(s.rails.streams_secret.as_deref(), Some("streams-key"));
        assert_eq!(s.rails.turbo_verifier_key.as_deref(), Some("streams-key"));
        assert_eq!(s.broadcast_key.as_deref(), Some("broadcast-key-of-its-own"));
        // CABLE_'s name for the same key still needs somewhere to serve it.
        let e = from_vars(&[("CABLE_BROADCAST_KEY", "broadcast-key-of-its-own")]).unwrap_err();
        assert!(matches!(e, SettingsError::Conflict(_)), "{e}");
        let s = from_vars(&[
            ("ANYCABLE_SECRET", SECRET),
            ("ANYCABLE_TURBO_STREAMS_SECRET", "turbo-key"),
            ("ANYCABLE_TURBO_STREAMS", "true"),
            ("CABLE_PUBSUB_SIGNED", "false"),
        ])
        .unwrap();
        assert_eq!(s.rails.turbo_verifier_key.as_deref(), Some("turbo-key"));
        assert!(!s.rails.pubsub_signed, "pubsub_signed given says otherwise");
        // Beside a Rails app, Turbo's key comes from secret_key_base.
        let s = from_vars(&[
            ("ANYCABLE_SECRET", SECRET),
            ("ANYCABLE_TURBO_STREAMS", "true"),
            ("CABLE_SECRET_KEY_BASE", &"b".repeat(64)),
        ])
        .unwrap();
        assert_eq!(s.rails.turbo_verifier_key, None);
        // No secret: none of it.
        let s = from_vars(&[]).unwrap();
        assert_eq!((s.jwt_key(), s.broadcast_key.as_deref()), (None, None));
        assert!(!s.rails.pubsub_signed && s.rails.streams_secret.is_none());
    }

    #[test]
    fn anycable_names_read_into_cable_keys() {
        type Check = fn(&Settings) -> bool;
        type Vars = &'static [(&'static str, &'static str)];
        let cases: &[(&str, Vars, Check)] = &[
            ("port alone", &[("ANYCABLE_PORT", "8081")], |s| {
                s.bind == SocketAddr::from(([127, 0, 0, 1], 8081))
            }),
            (
                "host and port",
                &[("ANYCABLE_HOST", "0.0.0.0"), ("ANYCABLE_PORT", "8081")],
                |s| s.bind == SocketAddr::from(([0, 0, 0, 0], 8081)),
            ),
            ("localhost", &[("ANYCABLE_HOST", "localhost")], |s| {
                s.bind == SocketAddr::from(([127, 0, 0, 1], 28080))
            }),
            ("path", &[("ANYCABLE_PATH", "/ws")], |s| {
                s.mount_path == "/ws"
            }),
            (
                "pubsub redis at redis_url",
                &[
                    ("ANYCABLE_PUBSUB", "redis"),
                    ("ANYCABLE_REDIS_URL", "redis://db:6380/1"),
                ],
                |s| s.adapter == "redis://db:6380/1",
            ),
            (
                "pubsub redis at its default",
                &[("ANYCABLE_PUBSUB", "redis")],
                |s| s.adapter == "redis://localhost:6379",
            ),
            (
                "pubsub nats at nats_servers",
                &[
                    ("ANYCABLE_PUBSUB", "nats"),
                    ("ANYCABLE_NATS_SERVERS", "nats://n1:4222,nats://n2:4222"),
                ],
                |s| s.adapter == "nats://n1:4222,nats://n2:4222",
            ),
            (
                "pubsub nats at its default",
                &[("ANYCABLE_PUBSUB", "NATS")],
                |s| s.adapter == "nats://localhost:4222",
            ),
            (
                "broker redis at redis_url",
                &[
                    ("ANYCABLE_BROKER", "redis"),
                    ("ANYCABLE_REDIS_URL", "redis://db:6380/1"),
                ],
                |s| s.broker == "redis://db:6380/1" && s.adapter == "memory",
            ),
            (
                "broker and pubsub nats at nats_servers",
                &[
                    ("ANYCABLE_BROKER", "nats"),
                    ("ANYCABLE_PUBSUB", "nats"),
                    ("ANYCABLE_NATS_SERVERS", "nats://n1:4222"),
                ],
                |s| s.broker == "nats://n1:4222" && s.adapter == s.broker,
            ),
            (
                "broker and pubsub redis at its default",
                &[("ANYCABLE_BROKER", "redis"), ("ANYCABLE_PUBSUB", "redis")],
                |s| s.broker == "redis://localhost:6379" && s.adapter == s.broker,
            ),
            (
                "a broker URL is taken as it is",
                &[
                    ("ANYCABLE_BROKER", "postgres://db/app"),
                    ("ANYCABLE_REDIS_URL", "redis://db"),
                ],
                |s| s.broker == "postgres://db/app",
            ),
            (
                "redis_url alone is no adapter",
                &[("ANYCABLE_REDIS_URL", "redis://db")],
                |s| s.adapter == "memory" && s.broker == "memory",
            ),
            ("jwt_param", &[("ANYCABLE_JWT_PARAM", "token")], |s| {
                s.jwt_param == "token"
            }),
            (
                "streams_whisper and presence_ttl",
                &[
                    ("ANYCABLE_STREAMS_WHISPER", "true"),
                    ("ANYCABLE_PRESENCE_TTL", "3"),
                ],
                |s| {
                    s.rails.pubsub_signed_whispers
                        && s.presence_ttl == Duration::from_secs(3)
                        && s.notices().is_empty()
                },
            ),
            (
                "the same value under both names",
                &[("ANYCABLE_PATH", "/ws"), ("CABLE_MOUNT_PATH", "/ws")],
                |s| s.mount_path == "/ws",
            ),
            #[cfg(feature = "rails")]
            (
                "public_streams",
                &[("ANYCABLE_PUBLIC_STREAMS", "true")],
                |s| s.rails.pubsub_public && !s.rails.pubsub_signed,
            ),
            #[cfg(feature = "rails")]
            (
                "turbo_streams_secret",
                &[
                    ("ANYCABLE_TURBO_STREAMS", "true"),
                    ("ANYCABLE_TURBO_STREAMS_SECRET", "turbo-key"),
                ],
                |s| s.rails.turbo && s.rails.turbo_verifier_key.as_deref() == Some("turbo-key"),
            ),
        ];
        for (case, vars, check) in cases {
            let s = from_vars(vars).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert!(check(&s), "{case}: {s:?}");
            // Read into cable's keys: the printed settings read back alone.
            let printed = s.to_toml();
            assert!(
                !printed.contains("redis_url") && !printed.contains("\nport"),
                "{case}"
            );
        }
    }

    #[test]
    fn an_anycable_name_and_its_own_key_set_apart_are_an_error() {
        let file = |k: &str, v: &str| one(k, v, Source::File("cable.toml".into()));
        let cases: &[(&str, &str, &str, &str, &str)] = &[
            ("path", "/ws", "mount_path", "/cable", "ANYCABLE_PATH"),
            ("port", "8081", "bind", "127.0.0.1:9000", "ANYCABLE_PORT"),
            (
                "host",
                "0.0.0.0",
                "bind",
                "127.0.0.1:28080",
                "ANYCABLE_HOST",
            ),
            ("pubsub", "redis", "adapter", "memory", "ANYCABLE_PUBSUB"),
            #[cfg(feature = "rails")]
            (
                "public_streams",
                "true",
                "pubsub_public",
                "false",
                "ANYCABLE_PUBLIC_STREAMS",
            ),
            #[cfg(feature = "rails")]
            (
                "turbo_streams_secret",
                "turbo-hunter2",
                "turbo_verifier_key",
                "other-hunter2",
                "ANYCABLE_TURBO_STREAMS_SECRET",
            ),
        ];
        for (alias, value, own, own_value, var) in cases {
            let (env, _) = Layer::from_env([(var.to_string(), value.to_string())]);
            let e = Settings::from_layers(&[file(own, own_value), env]).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, SettingsError::Conflict(_)), "{alias}: {text}");
            for part in [*alias, var, own, "cable.toml"] {
                assert!(text.contains(part), "{alias}: {part} missing in {text}");
            }
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn anycable_origins() {
        // Configured the AnyCable way and no origins named: AnyCable checks
        // none, and neither does cable (said at startup).
        let s = from_vars(&[("ANYCABLE_PUBLIC_STREAMS", "true")]).unwrap();
        assert!(s.disable_origin_check && s.origin_check_off_as_anycable());
        // Its host list is taken as it is, beside origins with a scheme.
        let s = from_vars(&[(
            "ANYCABLE_ALLOWED_ORIGINS",
            "www.example.com,*.example.io,https://app.test",
        )])
        .unwrap();
        assert!(!s.disable_origin_check && !s.origin_check_off_as_anycable());
        assert_eq!(
            s.allowed_origins,
            ["www.example.com", "*.example.io", "https://app.test"]
        );
        let cfg = crate::server_config(&s).unwrap();
        let allows = |o: &str| cfg.origins.allows(Some(o), None, false);
        assert!(allows("https://www.example.com") && allows("http://a.example.io"));
        assert!(allows("https://app.test") && !allows("https://evil.test"));
        // Configured cable's way: Rails' default, same origin only.
        let s = from_vars(&[("CABLE_PUBLIC_STREAMS", "true")]).unwrap();
        assert!(!s.disable_origin_check && !s.origin_check_off_as_anycable());
        let s = from_vars(&[
            ("ANYCABLE_PUBLIC_STREAMS", "true"),
            ("CABLE_ALLOWED_ORIGIN_PATTERNS", "https://.*"),
        ])
        .unwrap();
        assert!(!s.disable_origin_check);
        for bad in ["a.test/x", "*", "a b"] {
            let e = from_vars(&[("ANYCABLE_ALLOWED_ORIGINS", bad)]).unwrap_err();
            assert!(e.to_string().contains("allowed_origins"), "{bad}: {e}");
        }
    }

    #[test]
    fn anycable_broadcasters_and_jwt_checks() {
        const SECRET: &str = "anycable-test-secret-1234";
        // http with a key: served on the public address, no stats_bind needed.
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "HTTP"),
            ("ANYCABLE_SECRET", SECRET),
        ])
        .unwrap();
        assert!(s.http_broadcast() && s.stats_bind.is_none());
        assert!(s.notices().is_empty(), "{:?}", s.notices());
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "http"),
            ("ANYCABLE_BROADCAST_KEY", "k".repeat(16).as_str()),
        ])
        .unwrap();
        assert!(s.http_broadcast());
        // Without a key, http is refused (never an open broadcast API).
        let e = from_vars(&[("ANYCABLE_BROADCAST_ADAPTER", "http")]).unwrap_err();
        assert!(matches!(e, SettingsError::Conflict(_)), "{e}");
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "redis"),
            ("ANYCABLE_BROKER", "redis"),
        ])
        .unwrap();
        assert!(
            s.notices().iter().any(|n| n.contains("once per node")),
            "{:?}",
            s.notices()
        );
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "redisx"),
            ("ANYCABLE_BROKER", "redis"),
        ])
        .unwrap();
        assert!(s.notices().is_empty(), "{:?}", s.notices());
        // redis, redisx and nats are real.
        let s = from_vars(&[("ANYCABLE_BROADCAST_ADAPTER", "redis,redisx,nats")]).unwrap();
        assert!(!s.http_broadcast() && s.broadcaster("redis") && s.broadcaster("redisx"));
        assert!(s.broadcaster("nats"));
        assert!(s.notices().is_empty(), "{:?}", s.notices());
        assert_eq!(
            (s.nats_channel.as_str(), s.intake_nats_url().as_str()),
            ("__anycable__", "nats://localhost:4222")
        );
        let n = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "nats"),
            ("ANYCABLE_NATS_CHANNEL", "bcast"),
            ("ANYCABLE_NATS_SERVERS", "nats://n1:4222"),
            ("ANYCABLE_BROKER", "redis"),
        ])
        .unwrap();
        assert_eq!(
            (n.nats_channel.as_str(), n.intake_nats_url().as_str()),
            ("bcast", "nats://n1:4222")
        );
        let notices = n.notices();
        assert!(
            notices.len() == 1
                && notices[0].contains("broadcast_adapter nats with a shared broker"),
            "{notices:?}"
        );
        // AnyCable's names and defaults for where they read; redisx
        // brings Redis pub/sub at redis_url when no pub/sub is set.
        assert_eq!(
            (
                s.redis_channel.as_str(),
                s.redisx_stream.as_str(),
                s.redisx_group.as_str(),
                s.redisx_read_block_milliseconds,
            ),
            ("__anycable__", "__anycable__", "bx", 2000)
        );
        assert_eq!(s.intake_redis_url(), "redis://localhost:6379");
        assert_eq!(s.adapter, "redis://localhost:6379");
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "redisx"),
            ("ANYCABLE_REDIS_URL", "redis://db:6380/2"),
            ("ANYCABLE_REDISX_STREAM", "bcast"),
            ("ANYCABLE_REDISX_GROUP", "g"),
            ("ANYCABLE_REDISX_READ_BLOCK_MILLISECONDS", "500"),
            ("ANYCABLE_REDIS_CHANNEL", "chan"),
        ])
        .unwrap();
        assert_eq!(
            (
                s.adapter.as_str(),
                s.redisx_stream.as_str(),
                s.redisx_group.as_str(),
                s.redisx_read_block_milliseconds,
                s.redis_channel.as_str()
            ),
            ("redis://db:6380/2", "bcast", "g", 500, "chan")
        );
        // A pub/sub of one's own is kept; redis alone brings none.
        let s = from_vars(&[
            ("ANYCABLE_BROADCAST_ADAPTER", "redisx"),
            ("CABLE_ADAPTER", "postgres://db/x"),
        ])
        .unwrap();
        assert_eq!(s.adapter, "postgres://db/x");
        let s = from_vars(&[("ANYCABLE_BROADCAST_ADAPTER", "redis")]).unwrap();
        assert_eq!(s.adapter, "memory");
        for bad in [
            ("ANYCABLE_REDISX_GROUP", ""),
            ("ANYCABLE_REDISX_READ_BLOCK_MILLISECONDS", "0"),
        ] {
            let e = from_vars(&[("ANYCABLE_BROADCAST_ADAPTER", "redisx"), bad]);
            assert!(e.is_err(), "{bad:?}");
        }
        // A derived key with nowhere to serve it is no error (AnyCable's
        // default broadcaster is redis).
        let s = from_vars(&[("ANYCABLE_SECRET", SECRET)]).unwrap();
        assert_eq!(s.broadcast_key.as_deref(), Some(DERIVED_BROADCAST_KEY));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("ANYCABLE_BROADCAST_ADAPTER", "kafka")],
                "`broadcast_adapter`",
            ),
            (&[("ANYCABLE_PUBSUB", "kafka")], "`pubsub`"),
            (&[("ANYCABLE_PATH", "/a,/b")], "`path`"),
            (&[("ANYCABLE_HOST", "example.com")], "`host`"),
            (&[("ANYCABLE_PORT", "http")], "`port`"),
            (
                &[("ANYCABLE_SECRET", SECRET), ("ANYCABLE_JWT_PARAM", "j id")],
                "`jwt_param`",
            ),
            (&[("ANYCABLE_ENFORCE_JWT", "true")], "`enforce_jwt`"),
        ];
        for (vars, named) in cases {
            let e = from_vars(vars).unwrap_err().to_string();
            assert!(e.contains(named), "{vars:?}: {e}");
        }
        let s = from_vars(&[
            ("ANYCABLE_ENFORCE_JWT", "true"),
            ("ANYCABLE_JWT_SECRET", "j"),
        ])
        .unwrap();
        assert!(s.enforce_jwt && s.jwt_key() == Some("j"));
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
        let (env, _) = Layer::from_env([("CABLE_MAX_MESSAGE_SIZE".to_owned(), "huge".to_owned())]);
        let e = Settings::from_layers(&[env]).unwrap_err().to_string();
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
        assert!(e.contains("root:***@db") && e.contains("--adapter"), "{e}");
        assert!(!e.contains("pw"), "{e}");
        let e = Settings::from_layers(&[one("broadcast_key", "short-hunter2", flag())])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`broadcast_key`") && !e.contains("hunter2"),
            "{e}"
        );
        let e = Settings::from_layers(&[one("log_format", "xml", flag())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("text or json") && e.contains("\"xml\""), "{e}");
    }

    #[test]
    #[cfg(feature = "rails")]
    fn secrets_are_masked_in_debug_and_toml() {
        let mut s = Settings {
            adapter: "postgres://app@db/app?password=hunter2".into(),
            broadcast_key: Some("broadcast-key-hunter2".into()),
            ..Settings::default()
        };
        s.rails.secret_key_base = vec!["base-hunter2".into()];
        s.rails.streams_secret = Some("streams-hunter2".into());
        s.rails.turbo_verifier_key = Some("turbo-hunter2".into());
        s.secret = Some("anycable-hunter2".into());
        s.jwt_secret = Some("jwt-hunter2".into());
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
                Settings::from_layers(&[Layer::from_env([(env.clone(), value.to_owned())]).0])
            });
            match r {
                Ok(Err(SettingsError::Invalid { key: k, from, .. })) => {
                    assert_eq!(k, key);
                    assert_eq!(from, Source::Env(env));
                }
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
    #[cfg(feature = "rails")]
    fn sizes_durations_and_lists_from_the_file() {
        let dir = temp_dir("forms");
        let file = dir.join("cable.toml");
        std::fs::write(
            &file,
            "ping_interval = 1.5\nshutdown_timeout = \"250ms\"\nmax_message_size = 1000\n\
             outbound_queue = \"1 MiB\"\nallowed_origins = [\"https://a.example\"]\n\
             session_cookie = \"_s\"\nsecret_key_base = \"0123456789012345678901234567890123\"\n",
        )
        .unwrap();
        let s = Settings::from_layers(&[Layer::from_file(&file).unwrap()]).unwrap();
        assert_eq!(s.ping_interval, Duration::from_millis(1500));
        assert_eq!(s.shutdown_timeout, Duration::from_millis(250));
        assert_eq!(s.max_message_size, 1000);
        assert_eq!(s.outbound_queue, 1 << 20);
        assert_eq!(s.allowed_origins, ["https://a.example"]);
        assert_eq!(s.rails.session_cookie.as_deref(), Some("_s"));
        std::fs::write(&file, "ping_interval = -1\n").unwrap();
        let e = Settings::from_layers(&[Layer::from_file(&file).unwrap()]).unwrap_err();
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(tracing_filter_ok("info,cable_core=debug"));
        assert!(!tracing_filter_ok("loud"));
    }
}
