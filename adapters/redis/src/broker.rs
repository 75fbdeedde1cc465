//! The Redis history broker: stream history in Redis Streams, positions
//! assigned by one Lua script per append, sessions and history marks as
//! keys with a TTL, presence in hashes and a sorted set changed only by Lua
//! scripts. See the crate docs ("History broker", "Presence") for the keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cable_adapter_kit::broker::{
    mark_text, new_epoch, parse_mark, CallFailure, Connect, LazyConnection, BROKER_TIMEOUT,
};
use cable_core::broker::{
    Broker, BrokerError, Entry, History, HistoryPolicy, Join, Position, PresenceInfo, PresenceLeft,
    PresenceRecord,
};
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

    /// The hash of `stream`'s presence (its sessions, members, their info
    /// and join order): `<prefix>presence:<stream>`.
    pub fn presence_key(&self, stream: &str) -> String {
        format!("{}{PRESENCE}{stream}", self.key_prefix)
    }

    /// The hash of the streams session `sid` is present on (stream ->
    /// member id): `<prefix>presence-sid:<sid>`.
    pub fn presence_session_key(&self, sid: &str) -> String {
        format!("{}{PRESENCE_SID}{sid}", self.key_prefix)
    }

    /// The sorted set of present sessions by deadline (ms, server time):
    /// `<prefix>presence-deadlines`.
    pub fn presence_deadlines_key(&self) -> String {
        format!("{}presence-deadlines", self.key_prefix)
    }
}

/// What the presence keys start with after the prefix; the scripts that
/// reach keys by name (touch, expire) build them the same way.
const PRESENCE: &str = "presence:";
const PRESENCE_SID: &str = "presence-sid:";

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

/// Shared by the presence scripts. `now` is the server's clock in ms, so
/// that every node agrees on deadlines. `keep_for` extends a key's expiry
/// to at least `ms` (never shortens it): presence keys outlive the longest
/// deadline of what they hold by [`PRESENCE_GRACE`], so that a sweep finds
/// them, and go away on their own when no node is left to sweep. `drop`
/// removes session `sid` from the stream hash `key` and returns the member
/// id when that was its last session.
///
/// A stream hash has the fields `s:<sid>` (its member id), `n:<id>` (how
/// many sessions), `i:<id>` (info), `o:<id>` (join order) and `seq` (the
/// last order given); the prefixes keep ids and sids apart.
const PRESENCE_LIB: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep_for(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function drop(key, sid)
  local field = 's:' .. sid
  local id = redis.call('HGET', key, field)
  if not id then return false end
  redis.call('HDEL', key, field)
  if redis.call('HINCRBY', key, 'n:' .. id, -1) > 0 then return false end
  redis.call('HDEL', key, 'n:' .. id, 'i:' .. id, 'o:' .. id)
  if redis.call('HLEN', key) <= 1 then redis.call('DEL', key) end
  return id
end
"#;

/// A session joins a stream as a member. KEYS: stream hash, session hash,
/// deadlines. ARGV: stream, sid, id, info, ttl_ms, keep_ms. Returns
/// 'mismatch', or 1 when the id was not present before, else 0.
const JOIN: &str = r#"
local field = 's:' .. ARGV[2]
local present = redis.call('HGET', KEYS[1], field)
if present and present ~= ARGV[3] then return 'mismatch' end
local keep = tonumber(ARGV[6])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local first = 0
if not present then
  redis.call('HSET', KEYS[1], field, ARGV[3])
  if redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[3], 1) == 1 then
    first = 1
    redis.call('HSET', KEYS[1], 'o:' .. ARGV[3], redis.call('HINCRBY', KEYS[1], 'seq', 1))
  end
end
redis.call('HSET', KEYS[1], 'i:' .. ARGV[3], ARGV[4])
keep_for(KEYS[1], keep)
keep_for(KEYS[2], keep)
keep_for(KEYS[3], keep)
return first
"#;

/// A session leaves a stream. KEYS: stream hash, session hash, deadlines.
/// ARGV: stream, sid. Returns the member id when it left, else nil.
const LEAVE: &str = r#"
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return drop(KEYS[1], ARGV[2])
"#;

/// Renews present sessions (others are left alone: a session swept is not
/// brought back). KEYS: deadlines. ARGV: key prefix, ttl_ms, keep_ms, sids...
const TOUCH: &str = r#"
local ttl, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV do
  local sid = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], sid) then
    redis.call('ZADD', KEYS[1], 'XX', now + ttl, sid)
    local skey = ARGV[1] .. 'presence-sid:' .. sid
    keep_for(skey, keep)
    for _, stream in ipairs(redis.call('HKEYS', skey)) do
      keep_for(ARGV[1] .. 'presence:' .. stream, keep)
    end
  end
end
keep_for(KEYS[1], keep)
return 0
"#;

/// Removes up to ARGV[2] sessions past their deadline, with every stream
/// they were on. One script, so a session is removed (and its member's
/// leave returned) by exactly one of the nodes sweeping at once. KEYS:
/// deadlines. ARGV: key prefix, batch. Returns {sessions removed, stream,
/// id, stream, id, ...}.
const EXPIRE: &str = r#"
local sids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {#sids}
for _, sid in ipairs(sids) do
  redis.call('ZREM', KEYS[1], sid)
  local skey = ARGV[1] .. 'presence-sid:' .. sid
  local streams = redis.call('HKEYS', skey)
  redis.call('DEL', skey)
  for _, stream in ipairs(streams) do
    local id = drop(ARGV[1] .. 'presence:' .. stream, sid)
    if id then
      table.insert(out, stream)
      table.insert(out, id)
    end
  end
end
return out
"#;

/// How much longer than a session's deadline the presence keys are kept:
/// room for the sweep (every heartbeat) to find what ran out, after which
/// Redis removes what no node is left to sweep.
const PRESENCE_GRACE: Duration = Duration::from_secs(60);

/// Most sessions one touch or expire script handles, so that no script
/// holds Redis for long.
const PRESENCE_BATCH: usize = 500;

struct Scripts {
    append: Script,
    from: Script,
    since: Script,
    join: Script,
    leave: Script,
    touch: Script,
    expire: Script,
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
                join: Script::new(format!("{PRESENCE_LIB}{JOIN}")),
                leave: Script::new(format!("{PRESENCE_LIB}{LEAVE}")),
                touch: Script::new(format!("{PRESENCE_LIB}{TOUCH}")),
                expire: Script::new(format!("{PRESENCE_LIB}{EXPIRE}")),
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
                loop {
                    match f(conn.clone()).await {
                        // Not run, and it will be shortly: a server that
                        // has just started answers LOADING while it reads
                        // its data (its SUBSCRIBEs already work, so the
                        // first broadcast after a restart comes here). The
                        // call's bound ends the wait.
                        Err(e) if is_not_ready(&e) => {
                            tracing::debug!(error = %e, "redis is not ready; {what} waits");
                            tokio::time::sleep(NOT_READY_PAUSE).await;
                        }
                        done => {
                            return done.map_err(|e| CallFailure {
                                error: to_broker_error(&e),
                                // A server error leaves the connection usable.
                                broken: !matches!(e.kind(), ErrorKind::Server(_)),
                            });
                        }
                    }
                }
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

    /// Runs presence script `script` with `keys` and `args`.
    async fn presence(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, BrokerError> {
        self.call("a presence script", |mut conn| async move {
            script.run(&mut conn.redis, keys, args).await
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

/// A presence reply that is not what the script returns.
fn bad_presence(what: &str, value: &Value) -> BrokerError {
    BrokerError::Backend(format!(
        "redis: unexpected reply to a presence {what}: {value:?}"
    ))
}

/// The members of a stream's presence hash (`HGETALL`, field and value
/// alternating), oldest first.
fn presence_records(value: Value) -> Result<PresenceInfo, BrokerError> {
    let bad = |why: &str| BrokerError::Backend(format!("redis: unexpected presence hash: {why}"));
    let items = match value {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => return Err(bad("not a hash")),
    };
    let mut info: HashMap<String, String> = HashMap::new();
    let mut order: HashMap<String, u64> = HashMap::new();
    let mut items = items.into_iter().map(text);
    while let Some(field) = items.next() {
        let (Some(field), Some(Some(value))) = (field, items.next()) else {
            return Err(bad("fields and values are not pairs of text"));
        };
        if let Some(id) = field.strip_prefix("i:") {
            info.insert(id.to_owned(), value);
        } else if let Some(id) = field.strip_prefix("o:") {
            let n = value.parse().map_err(|_| bad("join order"))?;
            order.insert(id.to_owned(), n);
        }
    }
    let mut records: Vec<(u64, PresenceRecord)> = info
        .into_iter()
        .map(|(id, info)| {
            let n = order.get(&id).copied().unwrap_or(u64::MAX);
            (n, PresenceRecord { id, info })
        })
        .collect();
    records.sort_by(|(a, ra), (b, rb)| a.cmp(b).then_with(|| ra.id.cmp(&rb.id)));
    Ok(PresenceInfo {
        total: records.len(),
        records: records.into_iter().map(|(_, r)| r).collect(),
    })
}

/// What presence keys are kept for beyond a session's `ttl` (ms).
fn presence_keep(ttl: Duration) -> u64 {
    millis(ttl.saturating_add(PRESENCE_GRACE))
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
        let ttl = millis(policy.ttl);
        self.set(&key, &mark_text(policy, ttl), ttl).await
    }

    async fn history_policy(&self, stream: &str) -> Result<Option<HistoryPolicy>, BrokerError> {
        let value = self.get(&self.config.policy_key(stream)).await?;
        let Some(value) = value else { return Ok(None) };
        parse_mark("redis", stream, &value).map(Some)
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

    async fn presence_join(&self, join: Join<'_>) -> Result<bool, BrokerError> {
        let (stream, sid, id, info, ttl) = (join.stream, join.sid, join.id, join.info, join.ttl);
        let c = &self.config;
        let keys = [
            c.presence_key(stream),
            c.presence_session_key(sid),
            c.presence_deadlines_key(),
        ];
        let (ttl_ms, keep) = (millis(ttl).to_string(), presence_keep(ttl).to_string());
        let args: [&[u8]; 6] = [
            stream.as_bytes(),
            sid.as_bytes(),
            id.as_bytes(),
            info.as_bytes(),
            ttl_ms.as_bytes(),
            keep.as_bytes(),
        ];
        let keys = keys.each_ref().map(String::as_str);
        match self.presence(&self.scripts.join, &keys, &args).await? {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            v if text(v.clone()).as_deref() == Some("mismatch") => {
                Err(BrokerError::PresenceIdMismatch)
            }
            v => Err(bad_presence("join", &v)),
        }
    }

    async fn presence_leave(&self, stream: &str, sid: &str) -> Result<Option<String>, BrokerError> {
        let c = &self.config;
        let keys = [
            c.presence_key(stream),
            c.presence_session_key(sid),
            c.presence_deadlines_key(),
        ];
        let keys = keys.each_ref().map(String::as_str);
        let args: [&[u8]; 2] = [stream.as_bytes(), sid.as_bytes()];
        match self.presence(&self.scripts.leave, &keys, &args).await? {
            Value::Nil => Ok(None),
            v => match text(v.clone()) {
                Some(id) => Ok(Some(id)),
                None => Err(bad_presence("leave", &v)),
            },
        }
    }

    async fn presence_info(&self, stream: &str) -> Result<PresenceInfo, BrokerError> {
        let key = &self.config.presence_key(stream);
        let value = self
            .call("HGETALL", |mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Value>(&mut conn.redis)
                    .await
            })
            .await?;
        presence_records(value)
    }

    async fn presence_touch(&self, sids: &[String], ttl: Duration) -> Result<(), BrokerError> {
        let deadlines = self.config.presence_deadlines_key();
        let (ttl_ms, keep) = (millis(ttl).to_string(), presence_keep(ttl).to_string());
        for batch in sids.chunks(PRESENCE_BATCH) {
            let mut args: Vec<&[u8]> = vec![
                self.config.key_prefix.as_bytes(),
                ttl_ms.as_bytes(),
                keep.as_bytes(),
            ];
            args.extend(batch.iter().map(|s| s.as_bytes()));
            self.presence(&self.scripts.touch, &[&deadlines], &args)
                .await?;
        }
        Ok(())
    }

    async fn presence_expire(&self) -> Result<Vec<PresenceLeft>, BrokerError> {
        let deadlines = self.config.presence_deadlines_key();
        let batch = PRESENCE_BATCH.to_string();
        let args: [&[u8]; 2] = [self.config.key_prefix.as_bytes(), batch.as_bytes()];
        let mut left = Vec::new();
        loop {
            let value = self
                .presence(&self.scripts.expire, &[&deadlines], &args)
                .await?;
            let Value::Array(items) = &value else {
                return Err(bad_presence("sweep", &value));
            };
            let mut items = items.iter().cloned().map(text);
            let removed: usize = items
                .next()
                .flatten()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad_presence("sweep", &value))?;
            while let Some(stream) = items.next() {
                let (Some(stream), Some(Some(id))) = (stream, items.next()) else {
                    return Err(bad_presence("sweep", &value));
                };
                left.push(PresenceLeft { stream, id });
            }
            if removed < PRESENCE_BATCH {
                return Ok(left);
            }
        }
    }

    fn supports_presence(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

/// Errors of a command Redis did not run because it is not ready yet
/// (loading its data, a failover under way) and would run shortly.
fn is_not_ready(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain | ServerErrorKind::MasterDown
        )
    )
}

/// The pause before a command refused by [`is_not_ready`] is sent again.
const NOT_READY_PAUSE: Duration = Duration::from_millis(50);

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
