//! The `chat` command line: flags, the adapter choice, logging and serving.
//! `src/main.rs` only calls [`run`]; the end-to-end tests' `chat-node`
//! binary (in `tests/`) calls it too, so both run the same code.

use std::net::SocketAddr;
use std::time::Duration;

use cable_core::redact_url;
use cable_nats::{NatsBroker, NatsBrokerConfig, NatsConfig, NatsPubSub};
use cable_postgres::{PostgresBroker, PostgresBrokerConfig, PostgresConfig, PostgresPubSub};
use cable_redis::{RedisBroker, RedisBrokerConfig, RedisConfig, RedisPubSub};
use cable_server::{serve_with, shutdown_signal, AllowedOrigin, ServeOptions};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

/// A chat room on cable, with the unmodified @rails/actioncable client in the
/// page. Runs alone on the in-memory adapter, or as one of several nodes
/// sharing a Redis or a PostgreSQL database (and a Rails app's broadcasts)
/// with `--adapter redis://…`, `--adapter postgres://…` or `--adapter nats://…`.
#[derive(Parser, Debug)]
#[command(name = "chat", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    bind: SocketAddr,
    /// An allowed Origin, exactly (repeatable). Same-origin requests are always allowed.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// An allowed Origin pattern, a regular expression the whole Origin must match (repeatable).
    #[arg(long = "allowed-origin-regex")]
    allowed_origin_regexes: Vec<String>,
    /// Skip the Origin check entirely.
    #[arg(long)]
    disable_origin_check: bool,
    /// Serve POST /admin/broadcast and /admin/disconnect (loopback clients only).
    #[arg(long)]
    admin: bool,
    /// Serve the operator endpoints GET /metrics (Prometheus), /stats and
    /// /health (loopback clients only).
    #[arg(long)]
    ops: bool,
    /// Seconds to wait for clients to leave on shutdown.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout: u64,
    /// Pub/sub adapter: `memory` (this process only); a Redis URL,
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, `rediss://…` (TLS) or
    /// `redis+unix:///PATH`; or a PostgreSQL URL,
    /// `postgres://[USER[:PASSWORD]@]HOST[:PORT]/DB[?PARAMS]` (or
    /// `postgresql://`; no TLS); or a NATS URL, `nats://[USER:PASSWORD@]HOST[:PORT]`
    /// (several separated by commas), to share streams and remote
    /// disconnects with other chat processes and Rails apps on the same
    /// Redis, database or NATS.
    #[arg(long, value_name = "memory|URL", default_value = "memory")]
    adapter: String,
    /// Rails' `channel_prefix` (cable.yml): stream S is the Redis or
    /// PostgreSQL channel PREFIX:S, and the NATS subject PREFIX.S (S
    /// escaped into one subject token). Not for `memory` (an error); without
    /// it the channel is S itself. Use the Rails app's prefix to interoperate.
    #[arg(long, value_name = "PREFIX")]
    channel_prefix: Option<String>,
    /// Most subscriptions per connection; more get reject_subscription (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_subscriptions_per_connection: usize,
    /// Longest subscription identifier, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_identifier_size: usize,
    /// Commands a connection may send at once (the rate limit's burst).
    #[arg(long, value_name = "N", default_value_t = 300)]
    command_burst: u32,
    /// Commands per second a connection may send, sustained (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 100)]
    command_rate: u32,
    /// Largest message a client may be sent, in bytes (at most 1 MiB, the
    /// outbound queue).
    #[arg(long, value_name = "BYTES", default_value_t = 512 * 1024)]
    max_outbound_message_size: usize,
    /// Seconds the connection hook may take.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds one channel callback may take.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    callback_timeout: f64,
    /// Seconds a client may take to send its request headers.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_read_timeout: f64,
    /// Most connections not upgraded yet; past it the oldest is closed.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_pending_connections: usize,
    /// Where reliable streams keep their history and sessions: `memory`
    /// (this process only; a restart forgets them); a Redis URL, a
    /// PostgreSQL URL or a NATS URL (JetStream; as `--adapter` takes them),
    /// shared by every node on it, so a client resumes on any node; or
    /// `adapter`, the same backend and URL as `--adapter` (`memory` when the
    /// adapter is).
    #[arg(long, value_name = "memory|adapter|URL", default_value = "memory")]
    broker: String,
    /// Messages of history kept per room, for clients on AnyCable's extended
    /// protocol (`@anycable/web`) to catch up after a reconnect; older ones
    /// are evicted and a client that missed them gets `reject_history`.
    #[arg(long, value_name = "N", default_value_t = 100)]
    history_limit: usize,
    /// Seconds a message stays in a room's history.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    history_ttl: f64,
    /// Seconds a disconnected extended-protocol client's session stays
    /// restorable (resumed by `?sid=` without the connect hook; 0: off).
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    session_ttl: f64,
    /// Seconds an extended-protocol client may stay silent (no command, no
    /// pong) before it is disconnected with `no_pong` (0: off). Set it above
    /// the 3 s ping interval plus a round trip.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pong_timeout: f64,
    /// Seconds a user whose page went away without leaving (closed, lost
    /// its connection) stays in a room's "in this room" list; an explicit
    /// leave or unsubscribe takes them off at once.
    #[arg(long, value_name = "SECS", default_value_t = 15.0)]
    presence_ttl: f64,
}

/// Seconds from a flag as a duration; an error names the flag.
fn seconds(flag: &str, secs: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--{flag} {secs}: a number of seconds above 0"))
}

/// Seconds from a flag where 0 turns the feature off (`None`).
fn seconds_or_off(flag: &str, secs: f64) -> Result<Option<Duration>, String> {
    if secs == 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| format!("--{flag} {secs}: a number of seconds, 0 for off"))
}

impl Args {
    /// The limits the flags set, in the core's and the HTTP server's terms.
    fn limits(&self) -> Result<(cable_core::CableConfig, ServeOptions), String> {
        let mut core = cable_core::CableConfig::default();
        core.max_subscriptions_per_connection = (self.max_subscriptions_per_connection > 0)
            .then_some(self.max_subscriptions_per_connection);
        core.max_identifier_bytes = self.max_identifier_size;
        core.command_rate = (self.command_rate > 0).then_some(cable_core::CommandRate {
            burst: self.command_burst.max(1),
            per_second: self.command_rate,
        });
        if self.max_outbound_message_size > core.outbound_queue_bytes {
            return Err(format!(
                "--max-outbound-message-size {}: at most {} (the outbound queue)",
                self.max_outbound_message_size, core.outbound_queue_bytes
            ));
        }
        core.max_outbound_message_bytes = self.max_outbound_message_size;
        core.connect_timeout = seconds("connect-timeout", self.connect_timeout)?;
        core.callback_timeout = seconds("callback-timeout", self.callback_timeout)?;
        if self.history_limit == 0 {
            return Err("--history-limit 0: at least 1 message".to_owned());
        }
        core.history_policy = cable_core::broker::HistoryPolicy {
            limit: self.history_limit,
            ttl: seconds("history-ttl", self.history_ttl)?,
        };
        core.session_ttl = seconds_or_off("session-ttl", self.session_ttl)?.unwrap_or_default();
        core.pong_timeout = seconds_or_off("pong-timeout", self.pong_timeout)?;
        core.presence_ttl = seconds("presence-ttl", self.presence_ttl)?;
        let mut serve =
            ServeOptions::with_drain_timeout(Duration::from_secs(self.shutdown_timeout));
        serve.header_read_timeout = seconds("header-read-timeout", self.header_read_timeout)?;
        serve.max_pending_connections = self.max_pending_connections.max(1);
        Ok((core, serve))
    }
}

/// The pub/sub adapter chosen on the command line.
#[derive(Debug)]
enum Adapter {
    Memory,
    Redis(RedisConfig),
    Postgres(PostgresConfig),
    Nats(NatsConfig),
}

/// What the log says of `adapter`: where it connects (password masked), its
/// channel prefix and the name it connects with.
fn describe(adapter: &Adapter) -> String {
    let prefix = |p: &Option<String>| match p {
        Some(p) => format!("channel prefix {p:?}"),
        None => "no channel prefix".to_owned(),
    };
    match adapter {
        Adapter::Memory => "memory (this process only)".to_owned(),
        Adapter::Redis(c) => format!(
            "redis at {} ({}, connection name {})",
            redact_url(&c.url),
            prefix(&c.channel_prefix),
            c.connection_name
        ),
        Adapter::Postgres(c) => format!(
            "postgres at {} ({}, application name {})",
            c.redacted_url(),
            prefix(&c.channel_prefix),
            c.application_name
        ),
        Adapter::Nats(c) => format!(
            "nats at {} ({}, connection name {})",
            redact_url(&c.url),
            match &c.subject_prefix {
                Some(p) => format!("subject prefix {p:?}"),
                None => "no subject prefix".to_owned(),
            },
            c.connection_name
        ),
    }
}

/// Reads `--adapter` and `--channel-prefix`; an error names the flag and the
/// value (with any password masked).
fn choose_adapter(adapter: &str, prefix: Option<&str>) -> Result<Adapter, (ErrorKind, String)> {
    let scheme = adapter
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    // Redis and PostgreSQL take the URL and the prefix alike; the error
    // masks the password.
    macro_rules! url_adapter {
        ($config:ident, $variant:ident) => {{
            let mut config = $config::new(adapter);
            if let Some(p) = prefix {
                config = config.channel_prefix(p);
            }
            config
                .validate()
                .map_err(|e| (ErrorKind::ValueValidation, format!("--adapter: {e}")))?;
            return Ok(Adapter::$variant(config));
        }};
    }
    let chosen = match scheme.as_deref() {
        None if adapter == "memory" => Adapter::Memory,
        Some("memory") if adapter.len() == "memory://".len() => Adapter::Memory,
        Some("redis" | "rediss" | "redis+unix") => url_adapter!(RedisConfig, Redis),
        Some("postgres" | "postgresql") => url_adapter!(PostgresConfig, Postgres),
        // The prefix is the subject's first tokens: PREFIX.S.
        Some("nats") => {
            let mut config = NatsConfig::new(adapter);
            if let Some(p) = prefix {
                config = config.subject_prefix(p);
            }
            config
                .validate()
                .map_err(|e| (ErrorKind::ValueValidation, format!("--adapter: {e}")))?;
            return Ok(Adapter::Nats(config));
        }
        _ => {
            return Err((
                ErrorKind::ValueValidation,
                format!(
                    "--adapter {:?}: unknown adapter; expected memory, redis://HOST[:PORT][/DB], \
                     rediss://…, postgres://HOST[:PORT]/DB or nats://HOST[:PORT]",
                    redact_url(adapter)
                ),
            ))
        }
    };
    if let Some(p) = prefix {
        return Err((
            ErrorKind::ArgumentConflict,
            format!(
                "--channel-prefix {p:?} only applies to the redis, postgres and nats \
                 adapters (--adapter redis://…, postgres://… or nats://…); the memory \
                 adapter does not use channel names"
            ),
        ));
    }
    Ok(chosen)
}

/// The broker chosen on the command line: where history and sessions live.
#[derive(Debug)]
enum BrokerChoice {
    Memory,
    Redis(RedisBrokerConfig),
    Postgres(PostgresBrokerConfig),
    Nats(NatsBrokerConfig),
}

/// Reads `--broker` (`adapter` meaning `--adapter`'s value); an error names
/// the flag and the value (with any password masked).
fn choose_broker(broker: &str, adapter: &str) -> Result<BrokerChoice, (ErrorKind, String)> {
    let url = if broker == "adapter" { adapter } else { broker };
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    let invalid =
        |e: &dyn std::fmt::Display| (ErrorKind::ValueValidation, format!("--broker: {e}"));
    match scheme.as_deref() {
        None if url == "memory" => Ok(BrokerChoice::Memory),
        Some("memory") if url.len() == "memory://".len() => Ok(BrokerChoice::Memory),
        Some("redis" | "rediss" | "redis+unix") => {
            let config = RedisBrokerConfig::new(url);
            // The error masks the password.
            config.validate().map_err(|e| invalid(&e))?;
            Ok(BrokerChoice::Redis(config))
        }
        Some("postgres" | "postgresql") => {
            let config = PostgresBrokerConfig::new(url);
            config.validate().map_err(|e| invalid(&e))?;
            Ok(BrokerChoice::Postgres(config))
        }
        Some("nats") => {
            let config = NatsBrokerConfig::new(url);
            config.validate().map_err(|e| invalid(&e))?;
            Ok(BrokerChoice::Nats(config))
        }
        _ => Err((
            ErrorKind::ValueValidation,
            format!(
                "--broker {:?}: unknown broker; expected memory, adapter (the same as \
                 --adapter), redis://HOST[:PORT][/DB], rediss://…, postgres://HOST[:PORT]/DB \
                 or nats://HOST[:PORT]",
                redact_url(url)
            ),
        )),
    }
}

/// Runs the `chat` command: parses the process's arguments (exiting with
/// clap's usage error on bad ones), logs to stderr, serves until SIGINT or
/// SIGTERM.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let (core, serve_options) = args
        .limits()
        .unwrap_or_else(|msg| Args::command().error(ErrorKind::InvalidValue, msg).exit());
    let adapter = choose_adapter(&args.adapter, args.channel_prefix.as_deref())
        .unwrap_or_else(|(kind, msg)| Args::command().error(kind, msg).exit());
    let broker = choose_broker(&args.broker, &args.adapter)
        .unwrap_or_else(|(kind, msg)| Args::command().error(kind, msg).exit());
    let mut opts = crate::Options {
        admin: args.admin,
        ..Default::default()
    };
    // The room over Server-Sent Events too, for clients that cannot hold a
    // WebSocket: /events?user=ann&channel=ChatChannel&params={"room":"lobby"}.
    opts.server.sse_path = Some(cable_server::DEFAULT_SSE_PATH.to_owned());
    opts.server.origins.disabled = args.disable_origin_check;
    opts.server.origins.allowed = args
        .allowed_origins
        .into_iter()
        .map(AllowedOrigin::from)
        .collect();
    for re in &args.allowed_origin_regexes {
        opts.server.origins.allowed.push(
            AllowedOrigin::pattern(re)
                .map_err(|e| format!("--allowed-origin-regex {re:?}: {e}"))?,
        );
    }
    let history = format!(
        "history of {} messages for {:?} per room, sessions for {:?}",
        core.history_policy.limit, core.history_policy.ttl, core.session_ttl
    );
    let builder = crate::cable_builder();
    let builder = match broker {
        BrokerChoice::Memory => {
            tracing::info!("broker: memory ({history}; this process only)");
            builder.broker(cable_core::broker::MemoryBroker::new())
        }
        BrokerChoice::Redis(config) => {
            tracing::info!(
                "broker: redis at {} ({history}; key prefix {:?})",
                redact_url(&config.url),
                config.key_prefix
            );
            // Nothing connects yet: the first call does.
            builder.try_broker(move || RedisBroker::new(config))?
        }
        BrokerChoice::Postgres(config) => {
            tracing::info!(
                "broker: postgres at {} ({history}; schema {:?}, tables {}*)",
                redact_url(&config.url),
                config.schema,
                config.table_prefix
            );
            builder.try_broker(move || PostgresBroker::new(config))?
        }
        BrokerChoice::Nats(config) => {
            tracing::info!(
                "broker: nats jetstream at {} ({history}; stream {}, bucket {})",
                redact_url(&config.url),
                config.stream_name(),
                config.bucket_name()
            );
            builder.try_broker(move || NatsBroker::new(config))?
        }
    };
    let builder = builder.config(core);
    tracing::info!("pub/sub adapter: {}", describe(&adapter));
    // Nothing connects yet: Redis' subscriber or PostgreSQL's listener
    // connects in the background and retries while its server is down.
    let cable = match adapter {
        Adapter::Memory => builder,
        Adapter::Redis(config) => {
            builder.try_pubsub(move |delivery| RedisPubSub::new(config, delivery))?
        }
        Adapter::Postgres(config) => {
            builder.try_pubsub(move |delivery| PostgresPubSub::new(config, delivery))?
        }
        Adapter::Nats(config) => {
            builder.try_pubsub(move |delivery| NatsPubSub::new(config, delivery))?
        }
    }
    .build();
    let mut app = crate::app(cable.clone(), &opts);
    if args.ops {
        app = app.merge(crate::ops(cable.clone()));
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
    tracing::info!(
        "chat example listening on http://{}",
        listener.local_addr()?
    );
    serve_with(listener, app, cable, shutdown_signal(), serve_options).await?;
    tracing::info!("bye");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(adapter: &str, prefix: Option<&str>) -> String {
        match choose_adapter(adapter, prefix) {
            Err((_, msg)) => msg,
            Ok(a) => panic!("{adapter:?} accepted as {a:?}"),
        }
    }

    #[test]
    fn ops_endpoints_are_asked_for() {
        assert!(!Args::try_parse_from(["chat"]).expect("no flags").ops);
        assert!(Args::try_parse_from(["chat", "--ops"]).expect("--ops").ops);
    }

    #[test]
    fn memory_is_the_default_and_takes_no_prefix() {
        let args = Args::try_parse_from(["chat"]).expect("no flags");
        assert!(matches!(
            choose_adapter(&args.adapter, None),
            Ok(Adapter::Memory)
        ));
        assert!(matches!(
            choose_adapter("memory://", None),
            Ok(Adapter::Memory)
        ));
        let msg = err("memory", Some("app"));
        assert!(msg.starts_with("--channel-prefix \"app\""), "{msg}");
        assert!(err("memory://x", None).contains("unknown adapter"));
    }

    #[test]
    fn bad_values_name_the_flag_and_hide_passwords() {
        let msg = err("redis://:hunter2@127.0.0.1:notaport", None);
        assert!(msg.starts_with("--adapter: invalid redis url"), "{msg}");
        assert!(msg.contains("127.0.0.1:notaport"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = err("postgres://u:hunter2@db:notaport/app", None);
        assert!(msg.starts_with("--adapter: invalid postgres url"), "{msg}");
        assert!(msg.contains("postgres://u:***@db:notaport/app"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = err("postgres://u:hunter2@db/app?sslmode=require", None);
        assert!(msg.contains("does not support TLS yet"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = err("nats://u:hunter2@localhost:notaport", None);
        assert!(msg.starts_with("--adapter: invalid nats url"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = err("nats://localhost", Some("a..b"));
        assert!(
            msg.starts_with("--adapter: invalid nats subject prefix"),
            "{msg}"
        );
        let msg = err("amqp://localhost", None);
        assert!(
            msg.starts_with("--adapter \"amqp://localhost\": unknown adapter"),
            "{msg}"
        );
        assert!(err("redis", None).contains("unknown adapter"));
    }

    #[test]
    fn history_and_session_flags_set_the_core_config() {
        let args = Args::try_parse_from(["chat"]).expect("no flags");
        let (core, _) = args.limits().expect("defaults");
        assert_eq!(core.history_policy, Default::default());
        assert_eq!(core.session_ttl, Duration::from_secs(300));
        assert_eq!(core.pong_timeout, None);
        assert_eq!(core.presence_ttl, Duration::from_secs(15));
        assert!(matches!(
            choose_broker(&args.broker, &args.adapter),
            Ok(BrokerChoice::Memory)
        ));
        let args = Args::try_parse_from([
            "chat",
            "--history-limit",
            "3",
            "--history-ttl",
            "60",
            "--session-ttl",
            "0",
            "--pong-timeout",
            "7.5",
            "--presence-ttl",
            "0.5",
        ])
        .expect("flags");
        let (core, _) = args.limits().expect("valid");
        assert_eq!(core.history_policy.limit, 3);
        assert_eq!(core.history_policy.ttl, Duration::from_secs(60));
        assert!(core.session_ttl.is_zero());
        assert_eq!(core.pong_timeout, Some(Duration::from_millis(7500)));
        assert_eq!(core.presence_ttl, Duration::from_millis(500));
        for (flag, value) in [
            ("--history-limit", "0"),
            ("--history-ttl", "0"),
            ("--session-ttl", "-1"),
            ("--presence-ttl", "0"),
        ] {
            let arg = format!("{flag}={value}");
            let args = Args::try_parse_from(["chat", arg.as_str()]).expect("parses");
            let msg = args.limits().expect_err(flag);
            assert!(msg.starts_with(&format!("{flag} {value}")), "{msg}");
        }
    }

    #[test]
    fn the_broker_is_memory_a_url_or_the_adapters() {
        let broker = |b: &str, a: &str| choose_broker(b, a);
        assert!(matches!(
            broker("memory", "redis://r"),
            Ok(BrokerChoice::Memory)
        ));
        assert!(matches!(
            broker("adapter", "memory"),
            Ok(BrokerChoice::Memory)
        ));
        let Ok(BrokerChoice::Redis(c)) = broker("adapter", "redis://127.0.0.1:6379/2") else {
            panic!("the adapter's redis url refused")
        };
        assert_eq!(c.url, "redis://127.0.0.1:6379/2");
        let Ok(BrokerChoice::Postgres(c)) = broker("postgres://postgres@db/test", "memory") else {
            panic!("postgres url refused")
        };
        assert_eq!(c.url, "postgres://postgres@db/test");
        let Err((_, msg)) = broker("redis://:hunter2@127.0.0.1:notaport", "memory") else {
            panic!("bad port accepted")
        };
        assert!(msg.starts_with("--broker: "), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let Ok(BrokerChoice::Nats(c)) = broker("adapter", "nats://127.0.0.1:4222") else {
            panic!("the adapter's nats url refused")
        };
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        let Err((_, msg)) = broker("nats://:hunter2@localhost:notaport", "memory") else {
            panic!("bad nats port accepted")
        };
        assert!(
            msg.starts_with("--broker: ") && !msg.contains("hunter2"),
            "{msg}"
        );
        let Err((_, msg)) = broker("amqp://:hunter2@localhost", "memory") else {
            panic!("amqp accepted")
        };
        assert!(
            msg.contains("unknown broker") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    #[test]
    fn nats_urls_with_and_without_prefix() {
        for (adapter, prefix) in [
            ("nats://127.0.0.1:4222", Some("myapp.cable")),
            ("nats://u:pw@a:4222,nats://b:4222", None),
        ] {
            match choose_adapter(adapter, prefix) {
                Ok(Adapter::Nats(c)) => {
                    assert_eq!(c.url, adapter);
                    assert_eq!(c.subject_prefix.as_deref(), prefix);
                    let said = describe(&Adapter::Nats(c));
                    assert!(said.starts_with("nats at "), "{said}");
                    assert!(!said.contains(":pw@"), "{said}");
                }
                other => panic!("{adapter:?} not made a NATS adapter: {other:?}"),
            }
        }
    }

    /// The kind, URL, channel prefix and connection name of the Redis or
    /// PostgreSQL adapter `choose_adapter` makes of `adapter`.
    fn chosen(
        adapter: &str,
        prefix: Option<&str>,
    ) -> (&'static str, String, Option<String>, String) {
        match choose_adapter(adapter, prefix) {
            Ok(Adapter::Redis(c)) => ("redis", c.url, c.channel_prefix, c.connection_name),
            Ok(Adapter::Postgres(c)) => ("postgres", c.url, c.channel_prefix, c.application_name),
            other => panic!("{adapter:?} not made a Redis or PostgreSQL adapter: {other:?}"),
        }
    }

    #[test]
    fn redis_and_postgres_urls_with_and_without_prefix() {
        let name = format!("ActionCable-PID-{}", std::process::id());
        for (adapter, prefix, kind) in [
            ("redis://127.0.0.1:6379/1", Some("myapp"), "redis"),
            ("rediss://:pw@redis.example:6380", None, "redis"),
            ("redis+unix:///tmp/redis.sock", None, "redis"),
            (
                "postgres://postgres@127.0.0.1:5432/test",
                Some("myapp"),
                "postgres",
            ),
            ("postgresql://u:pw@db/app", None, "postgres"),
        ] {
            let want = (
                kind,
                adapter.to_owned(),
                prefix.map(str::to_owned),
                name.clone(),
            );
            assert_eq!(chosen(adapter, prefix), want, "{adapter}");
        }
    }
}
