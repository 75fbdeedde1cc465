//! The Redis history broker: stream history in Redis Streams, positions
//! assigned by one Lua script per append, sessions and history marks as
//! keys with a TTL. See the crate docs ("History broker") for the keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cable_adapter_kit::broker::{new_epoch, CallFailure, Connect, LazyConnection, BROKER_TIMEOUT};
use cable_core::broker::{Broker, BrokerError, Entry, History, HistoryPolicy, Position};
use redis::aio::MultiplexedConnection;
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use sha1::{Digest, Sha1};

use crate::publisher::open;
use crate::RedisConfigError;

/// Default of [`RedisBrokerConfig::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "cable:";

/// Settings of a [`RedisBroker`].
///
/// ```
/// use cable_redis::RedisBrokerConfig;
/// let config = RedisBrokerConfig::new("redis://127.0.0.1:6379/0").key_prefix("myapp:cable:");
/// assert_eq!(config.history_key("chat_42"), "myapp:cable:history:chat_42");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisBrokerConfig {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS, or
    /// `redis+unix:///path/to/socket`, as for [`RedisConfig`](crate::RedisConfig).
    pub url: String,
    /// Put in front of every key the broker writes. Default
    /// [`DEFAULT_KEY_PREFIX`] (`cable:`).
    pub key_prefix: String,
    /// Name given to the connection with `CLIENT SETNAME` (no spaces).
    /// Default `cable-broker-PID-<pid>`.
    pub connection_name: String,
    /// Bound on each call, connecting included; past it the call fails with
    /// `BrokerError::Unavailable`. Default [`BROKER_TIMEOUT`] (2 s).
    pub timeout: Duration,
}

impl RedisBrokerConfig {
    /// Settings for `url` with the default key prefix and connection name.
    pub fn new(url: impl Into<String>) -> Self {
        RedisBrokerConfig {
            url: url.into(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            connection_name: format!("cable-broker-PID-{}", std::process::id()),
            timeout: BROKER_TIMEOUT,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the key prefix.
        key_prefix(prefix: impl Into<String>) => key_prefix = prefix.into();
        /// Sets the connection name.
        connection_name(name: impl Into<String>) => connection_name = name.into();
        /// Sets the bound on each call.
        timeout(timeout: Duration) => timeout = timeout;
    }

    /// Checks the URL and the connection name, as [`RedisBroker::new`] does,
    /// without connecting.
    pub fn validate(&self) -> Result<(), RedisConfigError> {
        self.client().map(drop)
    }

    fn client(&self) -> Result<redis::Client, RedisConfigError> {
        crate::RedisConfig::new(self.url.clone())
            .connection_name(self.connection_name.clone())
            .client()
    }

    /// The Redis stream holding `stream`'s entries: `<prefix>history:<stream>`.
    pub fn history_key(&self, stream: &str) -> String {
        format!("{}history:{stream}", self.key_prefix)
    }

    /// The hash holding `stream`'s epoch, last offset, limit and TTL:
    /// `<prefix>meta:<stream>`.
    pub fn meta_key(&self, stream: &str) -> String {
        format!("{}meta:{stream}", self.key_prefix)
    }

    /// The history mark of `stream` ([`Broker::enable_history`]):
    /// `<prefix>policy:<stream>`.
    pub fn policy_key(&self, stream: &str) -> String {
        format!("{}policy:{stream}", self.key_prefix)
    }

    /// The session stored under `sid`: `<prefix>session:<sid>`.
    pub fn session_key(&self, sid: &str) -> String {
        format!("{}session:{sid}", self.key_prefix)
    }
}

cable_adapter_kit::debug_redacting_url!(RedisBrokerConfig, key_prefix, connection_name, timeout);

/// A Lua script, run with `EVALSHA` and sent whole (`EVAL`) when Redis does
/// not know it (first use, `SCRIPT FLUSH`, a restart).
struct Script {
    source: String,
    sha: String,
}

impl Script {
    fn new(source: String) -> Self {
        let sha = Sha1::digest(source.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Script { source, sha }
    }

    async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, RedisError> {
        let call = |command: &str, script: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(script).arg(keys.len()).arg(keys);
            for a in args {
                cmd.arg(*a);
            }
            cmd
        };
        match call("EVALSHA", &self.sha).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                call("EVAL", &self.source).query_async(conn).await
            }
            other => other,
        }
    }
}

/// Appends one entry: a new epoch when the stream's keys are gone (expired,
/// flushed, a restart without persistence) or were last written under
/// another run mark (see [`run_mark`]: a restart that reloaded a snapshot
/// or an AOF that may lack the latest appends, whose offsets would be given
/// again), else the next offset. The entry ID is `<offset>-0`, so ranges by
/// offset are ID ranges; `t` is the server's clock in ms. Both keys expire
/// `ttl` after the last append. A node without a mark (the server hides
/// `INFO`) neither checks nor records one; a stream with none recorded
/// takes the next one given, so that nodes that differ in this do not
/// start epoch after epoch.
/// KEYS: meta, history. ARGV: payload, limit, ttl_ms, new epoch, run mark.
/// Returns {epoch, offset}.
const APPEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'run')
local epoch = meta[1]
if (not epoch) or redis.call('EXISTS', KEYS[2]) == 0
   or (ARGV[5] ~= '' and meta[2] and meta[2] ~= ARGV[5]) then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('HSET', KEYS[1], 'limit', ARGV[2], 'ttl', ARGV[3])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'run', ARGV[5]) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-0', offset),
  'd', ARGV[1], 't', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {epoch, string.format('%d', offset)}
"#;

/// Shared by the two reads: the entries of `XRANGE` reply `rows` at or
/// after `cutoff` ms, flattened into `out` as offset, time, payload.
const FLATTEN: &str = r#"
local function flatten(rows, cutoff, out, skip)
  for i, row in ipairs(rows) do
    if i > skip then
      local d, ts = '', 0
      local fields = row[2]
      for j = 1, #fields, 2 do
        if fields[j] == 'd' then d = fields[j + 1] end
        if fields[j] == 't' then ts = tonumber(fields[j + 1]) end
      end
      if ts >= cutoff then
        table.insert(out, string.match(row[1], '^(%d+)'))
        table.insert(out, string.format('%d', ts))
        table.insert(out, d)
      end
    end
  end
  return out
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// The entries after an offset. KEYS: meta, history. ARGV: epoch, offset.
/// Returns {'ok', epoch, offset, ts, payload, ...} or {reason, ...}.
const FROM: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'ttl')
if (not meta[1]) or redis.call('EXISTS', KEYS[2]) == 0 then return {'unknown stream'} end
if meta[1] ~= ARGV[1] then return {'another epoch'} end
local last = tonumber(meta[2])
local offset = tonumber(ARGV[2])
if offset > last then return {'offset above the latest'} end
if offset == last then return {'ok', meta[1]} end
local cutoff = now - tonumber(meta[3])
local rows = redis.call('XRANGE', KEYS[2], ARGV[2] .. '-0', '+')
local first = rows[1]
if (not first) or first[1] ~= (ARGV[2] .. '-0') then return {'offset evicted'} end
local kept = flatten({first}, cutoff, {}, 0)
if #kept == 0 then return {'offset expired'} end
return flatten(rows, cutoff, {'ok', meta[1]}, 1)
"#;

/// The entries at or after a time. KEYS: meta, history. ARGV: since_ms.
/// Returns {'ok', epoch, offset, ts, payload, ...} or {'unknown stream'}.
const SINCE: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'ttl')
if not meta[1] then return {'unknown stream'} end
local cutoff = math.max(now - tonumber(meta[2]), tonumber(ARGV[1]))
return flatten(redis.call('XRANGE', KEYS[2], '-', '+'), cutoff, {'ok', meta[1]}, 0)
"#;

struct Scripts {
    append: Script,
    from: Script,
    since: Script,
}

struct Backend {
    client: redis::Client,
    name: String,
    timeout: Duration,
}

/// A connection and the run mark of the server it reached ([`run_mark`]).
#[derive(Clone)]
struct Conn {
    redis: MultiplexedConnection,
    run_mark: Arc<str>,
}

#[async_trait]
impl Connect for Backend {
    type Conn = Conn;
    const NAME: &'static str = "redis";

    async fn connect(&self) -> Result<Conn, BrokerError> {
        let mut conn = open(&self.client, &self.name, self.timeout)
            .await
            .map_err(|e| to_broker_error(&e))?;
        let run_mark = run_mark(&mut conn).await?;
        Ok(Conn {
            redis: conn,
            run_mark: run_mark.into(),
        })
    }
}

/// The mark an append leaves on a stream, so that the next append can tell
/// whether the server restarted since and may have lost appends.
///
/// - [`DURABLE_MARK`] when the server cannot lose an acknowledged write
///   across a restart (`appendonly yes` with `appendfsync always`): its
///   streams keep their epoch through restarts.
/// - Otherwise the server's `run_id`, which changes with every start: after
///   a restart the next append starts a new epoch.
/// - "" when the server hides `INFO` (some managed services rename it),
///   with a warning: restarts are then noticed only by keys that are gone.
///
/// Read on every (re)connect, so a restart with another persistence
/// setting is seen; a `CONFIG SET` while connected is not. A server that
/// refuses `CONFIG` counts as not durable.
async fn run_mark(conn: &mut MultiplexedConnection) -> Result<String, BrokerError> {
    let config: Result<HashMap<String, String>, RedisError> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    match config {
        Ok(config) if is_durable(&config) => return Ok(DURABLE_MARK.to_owned()),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => {
            tracing::debug!(error = %e, "redis refused CONFIG GET: taken as not durable");
        }
        Err(e) => return Err(to_broker_error(&e)),
    }
    let info: Result<String, RedisError> = redis::cmd("INFO").arg("server").query_async(conn).await;
    match info {
        Ok(info) => Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .unwrap_or_default()),
        Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => {
            tracing::warn!(error = %e, "redis refused INFO server: a restart that keeps the broker's keys (RDB/AOF) will not start new epochs");
            Ok(String::new())
        }
        Err(e) => Err(to_broker_error(&e)),
    }
}

/// The run mark of a server that fsyncs every write to its AOF before
/// answering. Never a `run_id` (those are 40 hex digits).
const DURABLE_MARK: &str = "durable";

/// Whether `CONFIG GET append*` says every acknowledged write survives a
/// crash.
fn is_durable(config: &HashMap<String, String>) -> bool {
    let is = |key: &str, value: &str| {
        config
            .get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case(value))
    };
    is("appendonly", "yes") && is("appendfsync", "always")
}

/// The Redis broker: history and sessions of reliable streams, shared by
/// every node on the same Redis and key prefix. See the crate docs
/// ("History broker").
pub struct RedisBroker {
    conn: LazyConnection<Backend>,
    scripts: Scripts,
    config: RedisBrokerConfig,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.config)
            .finish()
    }
}

impl RedisBroker {
    /// Validates `config`. Connects nothing yet: the connection is opened by
    /// the first call (and again after it is lost).
    pub fn new(config: RedisBrokerConfig) -> Result<Self, RedisConfigError> {
        let client = config.client()?;
        if matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            crate::install_tls_provider();
        }
        Ok(RedisBroker {
            conn: LazyConnection::with_timeout(
                Backend {
                    client,
                    name: config.connection_name.clone(),
                    timeout: config.timeout,
                },
                config.timeout,
            ),
            scripts: Scripts {
                append: Script::new(APPEND.to_owned()),
                from: Script::new(format!("{FLATTEN}{FROM}")),
                since: Script::new(format!("{FLATTEN}{SINCE}")),
            },
            config,
        })
    }

    /// The settings this broker was built with.
    pub fn config(&self) -> &RedisBrokerConfig {
        &self.config
    }

    /// Runs one command or script on the connection, `what` naming it in
    /// errors.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BrokerError>
    where
        T: Send,
        F: Fn(Conn) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<T, RedisError>> + Send,
    {
        let f = &f;
        self.conn
            .call(what, |conn| async move {
                f(conn).await.map_err(|e| CallFailure {
                    error: to_broker_error(&e),
                    // A server error leaves the connection usable.
                    broken: !matches!(e.kind(), ErrorKind::Server(_)),
                })
            })
            .await
    }

    /// `SET key value PX ttl_ms`.
    async fn set(&self, key: &str, value: &str, ttl_ms: u64) -> Result<(), BrokerError> {
        self.call("SET", |mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .exec_async(&mut conn.redis)
                .await
        })
        .await
    }

    /// `GET key`.
    async fn get(&self, key: &str) -> Result<Option<String>, BrokerError> {
        self.call("GET", |mut conn| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn.redis)
                .await
        })
        .await
    }

    async fn read(
        &self,
        stream: &str,
        script: &Script,
        args: &[&[u8]],
    ) -> Result<Reply, BrokerError> {
        let (meta, history) = (
            self.config.meta_key(stream),
            self.config.history_key(stream),
        );
        let (meta, history) = (meta.as_str(), history.as_str());
        let value = self
            .call("a history read", |mut conn| async move {
                script.run(&mut conn.redis, &[meta, history], args).await
            })
            .await?;
        Reply::parse(stream, value)
    }
}

/// A read script's answer.
enum Reply {
    Ok(History),
    Refused(String),
}

impl Reply {
    fn parse(stream: &str, value: Value) -> Result<Reply, BrokerError> {
        let bad = |why: &str| {
            BrokerError::Backend(format!("redis: unexpected reply to a history read: {why}"))
        };
        let Value::Array(items) = value else {
            return Err(bad("not an array"));
        };
        let mut items = items.into_iter().map(text);
        let status = items.next().flatten().ok_or_else(|| bad("no status"))?;
        if status != "ok" {
            return Ok(Reply::Refused(status));
        }
        let epoch = items.next().flatten().ok_or_else(|| bad("no epoch"))?;
        let mut entries = Vec::with_capacity(items.len() / 3);
        while let Some(offset) = items.next() {
            let (Some(offset), Some(Some(ms)), Some(Some(payload))) =
                (offset, items.next(), items.next())
            else {
                return Err(bad("entries are not triples of text"));
            };
            let ms: u64 = ms.parse().map_err(|_| bad("timestamp"))?;
            entries.push(Entry {
                offset: offset.parse().map_err(|_| bad("offset"))?,
                timestamp: ms / 1000,
                payload,
            });
        }
        tracing::trace!(stream, epoch = %epoch, entries = entries.len(), "history read");
        Ok(Reply::Ok(History { epoch, entries }))
    }
}

/// A reply item as text, if it is one.
fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Int(n) => Some(n.to_string()),
        Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// At least 1 ms (Redis refuses `PX 0`), at most [`MAX_TTL`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.min(MAX_TTL).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// TTLs are capped at 100 years: Redis refuses an expiry past its clock's
/// range.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[async_trait]
impl Broker for RedisBroker {
    async fn append(
        &self,
        stream: &str,
        payload: &str,
        policy: HistoryPolicy,
    ) -> Result<Position, BrokerError> {
        let (meta, history) = (
            self.config.meta_key(stream),
            self.config.history_key(stream),
        );
        // MAXLEN takes a signed 64-bit count.
        let limit = i64::try_from(policy.limit)
            .unwrap_or(i64::MAX)
            .max(1)
            .to_string();
        let ttl = millis(policy.ttl).to_string();
        let epoch = new_epoch();
        let script = &self.scripts.append;
        let (meta, history) = (meta.as_str(), history.as_str());
        let (limit, ttl, epoch) = (&limit, &ttl, &epoch);
        let value = self
            .call("the append script", |mut conn| async move {
                let args: [&[u8]; 5] = [
                    payload.as_bytes(),
                    limit.as_bytes(),
                    ttl.as_bytes(),
                    epoch.as_bytes(),
                    conn.run_mark.as_bytes(),
                ];
                script.run(&mut conn.redis, &[meta, history], &args).await
            })
            .await?;
        let bad =
            || BrokerError::Backend(format!("redis: unexpected reply to an append: {value:?}"));
        let Value::Array(items) = &value else {
            return Err(bad());
        };
        match items
            .iter()
            .cloned()
            .map(text)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [Some(epoch), Some(offset)] => Ok(Position {
                epoch: epoch.clone(),
                offset: offset.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    async fn history_from(
        &self,
        stream: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<History, BrokerError> {
        let offset_arg = offset.to_string();
        let args: [&[u8]; 2] = [epoch.as_bytes(), offset_arg.as_bytes()];
        match self.read(stream, &self.scripts.from, &args).await? {
            Reply::Ok(history) => Ok(history),
            Reply::Refused(reason) => Err(BrokerError::not_found(
                stream,
                format!("{reason} (asked for {epoch}/{offset})"),
            )),
        }
    }

    async fn history_since(&self, stream: &str, since: u64) -> Result<History, BrokerError> {
        let since_ms = since.saturating_mul(1000).to_string();
        match self
            .read(stream, &self.scripts.since, &[since_ms.as_bytes()])
            .await?
        {
            Reply::Ok(history) => Ok(history),
            Reply::Refused(_) => Ok(History::default()),
        }
    }

    async fn enable_history(&self, stream: &str, policy: HistoryPolicy) -> Result<(), BrokerError> {
        let key = self.config.policy_key(stream);
        let value = format!("{} {}", policy.limit, millis(policy.ttl));
        let ttl = millis(policy.ttl);
        self.set(&key, &value, ttl).await
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let value = self.get(&self.config.policy_key(stream)).await?;
        let Some(value) = value else { return Ok(None) };
        let parsed = value
            .split_once(' ')
            .and_then(|(limit, ttl)| Some((limit.parse().ok()?, ttl.parse().ok()?)));
        match parsed {
            Some((limit, ttl)) => Ok(Some(HistoryPolicy {
                limit,
                ttl: Duration::from_millis(ttl),
            })),
            None => Err(BrokerError::Backend(format!(
                "redis: history mark of {stream:?} is not `<limit> <ttl_ms>`: {value:?}"
            ))),
        }
    }

    async fn store_session(
        &self,
        sid: &str,
        state: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.set(&self.config.session_key(sid), state, millis(ttl))
            .await
    }

    async fn fetch_session(&self, sid: &str) -> Result<Option<String>, BrokerError> {
        self.get(&self.config.session_key(sid)).await
    }

    async fn remove_session(&self, sid: &str) -> Result<(), BrokerError> {
        let key = &self.config.session_key(sid);
        self.call("DEL", |mut conn| async move {
            redis::cmd("DEL").arg(key).exec_async(&mut conn.redis).await
        })
        .await
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// As the pub/sub side classifies errors: transient ones are
/// `Unavailable`, other errors `Backend`.
fn to_broker_error(e: &RedisError) -> BrokerError {
    if crate::publisher::is_transient(e) {
        BrokerError::Unavailable(format!("redis: {e}"))
    } else {
        BrokerError::Backend(format!("redis: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_aof_fsynced_on_every_write_keeps_epochs_across_restarts() {
        let config = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert!(is_durable(&config(&[
            ("appendonly", "yes"),
            ("appendfsync", "always")
        ])));
        assert!(!is_durable(&config(&[
            ("appendonly", "yes"),
            ("appendfsync", "everysec")
        ])));
        assert!(!is_durable(&config(&[
            ("appendonly", "no"),
            ("appendfsync", "always")
        ])));
        assert!(!is_durable(&config(&[])));
    }

    #[test]
    fn keys_and_defaults() {
        let c = RedisBrokerConfig::new("redis://:hunter2@localhost");
        assert_eq!(c.key_prefix, "cable:");
        assert_eq!(c.meta_key("s"), "cable:meta:s");
        assert_eq!(c.session_key("abc"), "cable:session:abc");
        assert_eq!(c.policy_key("s"), "cable:policy:s");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(RedisBrokerConfig::new("http://x").validate().is_err());
        assert!(
            RedisBroker::new(RedisBrokerConfig::new("redis://h").connection_name("a b")).is_err()
        );
    }

    #[test]
    fn script_sha_is_sha1_of_the_source() {
        // SHA1("") as Redis' SCRIPT LOAD would name it.
        assert_eq!(
            Script::new(String::new()).sha,
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
    }

    #[test]
    fn replies_parse_or_fail_as_values() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Value::Array(vec![
            bulk("ok"),
            bulk("ep"),
            bulk("3"),
            bulk("1700000000123"),
            bulk("{}"),
        ]);
        match Reply::parse("s", ok) {
            Ok(Reply::Ok(h)) => assert_eq!(
                h,
                History {
                    epoch: "ep".into(),
                    entries: vec![Entry {
                        offset: 3,
                        timestamp: 1_700_000_000,
                        payload: "{}".into()
                    }]
                }
            ),
            _ => panic!("ok reply"),
        }
        assert!(matches!(
            Reply::parse("s", Value::Array(vec![bulk("another epoch")])),
            Ok(Reply::Refused(r)) if r == "another epoch"
        ));
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("ok"), bulk("ep"), bulk("x")]),
            Value::Array(vec![
                bulk("ok"),
                bulk("ep"),
                bulk("x"),
                bulk("1"),
                bulk("{}"),
            ]),
        ] {
            assert!(matches!(
                Reply::parse("s", bad),
                Err(BrokerError::Backend(_))
            ));
        }
    }
}
