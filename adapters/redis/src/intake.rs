//! AnyCable's Redis broadcasters, received: messages a publisher (Rails'
//! `anycable` gem, `@anycable/serverless-js`, `redis-cli`) puts into Redis
//! are parsed ([`cable_core::intake`]) and applied through a
//! [`Broadcaster`].
//!
//! - [`RedisIntake::pubsub`], AnyCable's legacy `redis` broadcaster:
//!   `PUBLISH __anycable__ <json>`. Every node subscribed gets every
//!   message and delivers it to its own subscribers only
//!   ([`Message::apply_locally`]), so that a pub/sub adapter state by the
//!   nodes does not hand it to each subscriber once per node. (A stream
//!   with history on a state broker is appended once per node.)
//! - [`RedisIntake::streams`], AnyCable's `redisx`: `XADD __anycable__ *
//!   payload <json>`. Nodes read the stream as consumers of one group
//!   (`bx`, created with `MKSTREAM` at `$` when missing), so each message is
//!   handled by exactly one node, which acknowledges and deletes it
//!   (`XACK`, `XDEL`) once it was handed to the adapter. A message a node
//!   took and never acknowledged (it died, or the adapter refused it) is
//!   claimed by a node once it has been pending for the block time
//!   (`XAUTOCLAIM`) and handled again. A message that is no broadcast
//!   message is logged, acknowledged and deleted: retrying cannot help.
//!
//! Both run on a task of their own, reconnect with jittered backoff
//! ([`Backoff`]) after any failure, and never panic on what Redis or a
//! publisher sends. Dropping the [`RedisIntake`] stops the task.

use std::sync::Arc;
use std::time::Duration;

use cable_adapter_kit::intake::{IntakeState, IntakeTask};
use cable_adapter_kit::{CONNECT_TIMEOUT, PING_INTERVAL, REPLY_TIMEOUT};
use cable_core::intake::Message;
use cable_core::{redact_url, Broadcaster};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, Value};

use crate::RedisConfigError;

/// AnyCable's channel and stream name: `__anycable__`.
pub const DEFAULT_INTAKE_CHANNEL: &str = "__anycable__";
/// AnyCable's consumer group of the stream intake: `bx`.
pub const DEFAULT_INTAKE_GROUP: &str = "bx";
/// AnyCable's block time of `XREADGROUP`, also the idle time after which a
/// pending message is claimed: 2 s.
pub const DEFAULT_INTAKE_BLOCK: Duration = Duration::from_secs(2);

/// Settings of a [`RedisIntake`], with AnyCable's defaults.
///
/// ```
/// use cable_redis::RedisIntakeConfig;
/// let config = RedisIntakeConfig::new("redis://127.0.0.1:6379").consumer("web-1");
/// assert_eq!((config.channel.as_str(), config.group.as_str()), ("__anycable__", "bx"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisIntakeConfig {
    /// The Redis URL, as [`crate::RedisConfig::url`].
    pub url: String,
    /// The pub/sub channel or the stream key (AnyCable's `redis_channel`,
    /// `redisx_stream`). Default [`DEFAULT_INTAKE_CHANNEL`].
    pub channel: String,
    /// The stream intake's consumer group (`redisx_group`). Default
    /// [`DEFAULT_INTAKE_GROUP`].
    pub group: String,
    /// This node's consumer name in the group: unique per node. Default a
    /// random one.
    pub consumer: String,
    /// `XREADGROUP`'s block time and `XAUTOCLAIM`'s idle time
    /// (`redisx_read_block_milliseconds`). Default [`DEFAULT_INTAKE_BLOCK`].
    pub block: Duration,
}

impl RedisIntakeConfig {
    /// AnyCable's defaults at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisIntakeConfig {
            url: url.into(),
            channel: DEFAULT_INTAKE_CHANNEL.to_owned(),
            group: DEFAULT_INTAKE_GROUP.to_owned(),
            consumer: random_consumer(),
            block: DEFAULT_INTAKE_BLOCK,
        }
    }

    cable_adapter_kit::setters! {
        /// Sets the channel or stream key.
        channel(name: impl Into<String>) => channel = name.into();
        /// Sets the consumer group.
        group(name: impl Into<String>) => group = name.into();
        /// Sets this node's consumer name.
        consumer(name: impl Into<String>) => consumer = name.into();
        /// Sets the block (and claim idle) time.
        block(block: Duration) => block = block;
    }

    fn client(&self) -> Result<redis::Client, RedisConfigError> {
        if self.channel.is_empty() || self.group.is_empty() || self.consumer.is_empty() {
            return Err(RedisConfigError::InvalidUrl {
                url: redact_url(&self.url),
                reason: "the intake's channel, group and consumer must not be empty".into(),
            });
        }
        redis::Client::open(self.url.as_str()).map_err(|e| RedisConfigError::InvalidUrl {
            url: redact_url(&self.url),
            reason: e.to_string(),
        })
    }
}

cable_adapter_kit::debug_redacting_url!(RedisIntakeConfig, channel, group, consumer, block);

/// `cable-<pid>-<random hex>`: distinct across nodes and restarts.
fn random_consumer() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("cable-{}-{:08x}", std::process::id(), h.finish() as u32)
}

/// A running intake; see the module docs. Stops when dropped.
pub struct RedisIntake {
    task: IntakeTask,
    kind: &'static str,
}

impl std::fmt::Debug for RedisIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIntake")
            .field("kind", &self.kind)
            .field("connected", &self.is_connected())
            .field("handled", &self.handled())
            .finish()
    }
}

impl RedisIntake {
    /// Subscribes to the channel and applies every message published on it
    /// (AnyCable's `redis` broadcaster). Needs a tokio runtime.
    pub fn pubsub(
        config: RedisIntakeConfig,
        broadcaster: Broadcaster,
    ) -> Result<Self, RedisConfigError> {
        let client = config.client()?;
        Self::spawn("redis", move |state| {
            run_pubsub(client, config, broadcaster, state)
        })
    }

    /// Reads the stream as a consumer of the group and applies each message
    /// once across the group (AnyCable's `redisx`). Needs a tokio runtime.
    pub fn streams(
        config: RedisIntakeConfig,
        broadcaster: Broadcaster,
    ) -> Result<Self, RedisConfigError> {
        let client = config.client()?;
        Self::spawn("redisx", move |state| {
            run_streams(client, config, broadcaster, state)
        })
    }

    fn spawn<F, Fut>(kind: &'static str, run: F) -> Result<Self, RedisConfigError>
    where
        F: FnOnce(Arc<IntakeState>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| RedisConfigError::NoRuntime)?;
        crate::install_tls_provider();
        let task = IntakeTask::spawn(&runtime, run);
        Ok(RedisIntake { task, kind })
    }

    /// Whether it is connected (and, for the stream, the group exists).
    pub fn is_connected(&self) -> bool {
        self.task.state().is_connected()
    }

    /// Messages received and applied (or dropped as malformed) so far.
    pub fn handled(&self) -> u64 {
        self.task.state().handled()
    }

    /// Times a connection that was up was lost (and a reconnection began).
    pub fn reconnects(&self) -> u64 {
        self.task.state().reconnects()
    }
}

/// What became of one message.
enum Outcome {
    /// Applied, or not a broadcast message (logged): done with it.
    Done,
    /// The adapter refused it: worth another try.
    Retry,
}

/// Applies `payload`: through the adapter (`redisx`: one node handles it
/// for all), or to this node only (`redis`: every node receives it).
async fn handle(
    kind: &str,
    payload: &[u8],
    broadcaster: &Broadcaster,
    state: &IntakeState,
) -> Outcome {
    let message = match Message::parse(payload) {
        Ok(m) => m,
        Err(e) => {
            let cause = std::error::Error::source(&e).map(|s| s.to_string());
            tracing::warn!(intake = kind, error = %e, cause, "not a broadcast message; dropped");
            state.handled_one();
            return Outcome::Done;
        }
    };
    let applied = if kind == "redis" {
        message.apply_locally(broadcaster).await
    } else {
        message.apply(broadcaster).await
    };
    match applied {
        Ok(()) => {
            state.handled_one();
            Outcome::Done
        }
        Err(e) => {
            tracing::error!(intake = kind, error = %e, cause = %e.source, "broadcast refused by the adapter");
            Outcome::Retry
        }
    }
}

async fn run_pubsub(
    client: redis::Client,
    config: RedisIntakeConfig,
    broadcaster: Broadcaster,
    state: Arc<IntakeState>,
) {
    let url = redact_url(&config.url);
    state
        .reconnecting("redis", &url, || async {
            let pubsub =
                match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => return (false, e.to_string()),
                    Err(_) => return (false, "connect timed out".to_owned()),
                };
            let (mut sink, mut stream) = pubsub.split();
            match tokio::time::timeout(REPLY_TIMEOUT, sink.subscribe(&config.channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return (false, e.to_string()),
                Err(_) => return (false, "SUBSCRIBE timed out".to_owned()),
            }
            state.up("redis", &url, &format!("channel {}", config.channel));
            let mut ping = tokio::time::interval(PING_INTERVAL);
            ping.reset();
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => {
                            // At most once: a refused message is not retried.
                            handle("redis", msg.get_payload_bytes(), &broadcaster, &state).await;
                        }
                        None => return (true, "connection closed".to_owned()),
                    },
                    _ = ping.tick() => {
                        match tokio::time::timeout(REPLY_TIMEOUT, sink.ping::<Value>()).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {}
                            Ok(Err(e)) => return (true, e.to_string()),
                            Err(_) => return (true, "PING timed out".to_owned()),
                        }
                    }
                }
            }
        })
        .await
}

async fn run_streams(
    client: redis::Client,
    config: RedisIntakeConfig,
    broadcaster: Broadcaster,
    state: Arc<IntakeState>,
) {
    let url = redact_url(&config.url);
    state
        .reconnecting("redisx", &url, || async {
            // Replies wait up to the block time, then the usual bound.
            let mut conn = match crate::publisher::open(
                &client,
                &config.consumer,
                config.block + REPLY_TIMEOUT,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return (false, e.to_string()),
            };
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&config.channel)
                .arg(&config.group)
                .arg("$")
                .arg("MKSTREAM")
                .query_async::<Value>(&mut conn)
                .await;
            match created {
                Ok(_) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return (false, e.to_string()),
            }
            state.up(
                "redisx",
                &url,
                &format!(
                    "stream {} (group {}, consumer {})",
                    config.channel, config.group, config.consumer
                ),
            );
            let mut claimed_at: Option<tokio::time::Instant> = None;
            loop {
                if claimed_at.is_none_or(|t| t.elapsed() >= config.block) {
                    match autoclaim(&mut conn, &config).await {
                        Ok(entries) => {
                            if !entries.is_empty() {
                                tracing::info!(
                                    count = entries.len(),
                                    "redisx: claimed messages another consumer left pending"
                                );
                            }
                            settle(&mut conn, &config, entries, &broadcaster, &state).await;
                        }
                        Err(e) => return (true, e.to_string()),
                    }
                    claimed_at = Some(tokio::time::Instant::now());
                }
                match read(&mut conn, &config).await {
                    Ok(entries) => settle(&mut conn, &config, entries, &broadcaster, &state).await,
                    Err(e) => return (true, e.to_string()),
                }
            }
        })
        .await
}

/// One stream entry: its ID and its `payload` field, if it has one.
#[derive(Debug, PartialEq)]
struct Entry {
    id: String,
    payload: Option<Vec<u8>>,
}

/// Messages at most per read or claim.
const BATCH: usize = 100;

async fn read(
    conn: &mut MultiplexedConnection,
    config: &RedisIntakeConfig,
) -> Result<Vec<Entry>, RedisError> {
    let reply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&config.group)
        .arg(&config.consumer)
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(u64::try_from(config.block.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(&config.channel)
        .arg(">")
        .query_async::<Value>(conn)
        .await?;
    Ok(read_reply(reply))
}

async fn autoclaim(
    conn: &mut MultiplexedConnection,
    config: &RedisIntakeConfig,
) -> Result<Vec<Entry>, RedisError> {
    let reply = redis::cmd("XAUTOCLAIM")
        .arg(&config.channel)
        .arg(&config.group)
        .arg(&config.consumer)
        .arg(u64::try_from(config.block.as_millis()).unwrap_or(u64::MAX))
        .arg("0-0")
        .arg("COUNT")
        .arg(BATCH)
        .query_async::<Value>(conn)
        .await?;
    Ok(claim_reply(reply))
}

/// Handles each entry, then acknowledges and deletes those done with; those
/// the adapter refused stay pending, to be claimed again.
async fn settle(
    conn: &mut MultiplexedConnection,
    config: &RedisIntakeConfig,
    entries: Vec<Entry>,
    broadcaster: &Broadcaster,
    state: &IntakeState,
) {
    for entry in entries {
        let outcome = match &entry.payload {
            Some(payload) => handle("redisx", payload, broadcaster, state).await,
            None => {
                tracing::warn!(
                    id = entry.id,
                    "redisx: an entry without a payload field; dropped"
                );
                Outcome::Done
            }
        };
        if let Outcome::Retry = outcome {
            continue;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&config.channel)
            .arg(&config.group)
            .arg(&entry.id)
            .cmd("XDEL")
            .arg(&config.channel)
            .arg(&entry.id);
        if let Err(e) = pipe.query_async::<Value>(conn).await {
            // It stays pending and is claimed again: handled twice, not lost.
            tracing::error!(id = entry.id, error = %e, "redisx: could not acknowledge a message");
        }
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn entry(v: &Value) -> Option<Entry> {
    let Value::Array(parts) = v else {
        return None;
    };
    let [id, fields] = parts.as_slice() else {
        return None;
    };
    let id = String::from_utf8(bytes(id)?.to_vec()).ok()?;
    let pairs: Vec<(&Value, &Value)> = match fields {
        Value::Array(flat) => flat.chunks_exact(2).map(|c| (&c[0], &c[1])).collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        _ => Vec::new(),
    };
    let payload = pairs
        .into_iter()
        .find(|(k, _)| bytes(k) == Some(b"payload"))
        .and_then(|(_, v)| bytes(v))
        .map(<[u8]>::to_vec);
    Some(Entry { id, payload })
}

fn entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(all) => all.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// `XREADGROUP`'s reply: nil, or per stream (an array of `[key, entries]`
/// in RESP2, a map in RESP3) its entries; one stream is read.
fn read_reply(v: Value) -> Vec<Entry> {
    match &v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some(entries(&kv[1])),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// `XAUTOCLAIM`'s reply: `[next start, entries, deleted IDs]` (the last
/// since Redis 7); a deleted entry may come as nil (Redis 6.2), skipped.
fn claim_reply(v: Value) -> Vec<Entry> {
    match &v {
        Value::Array(parts) if parts.len() >= 2 => entries(&parts[1]),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn replies_are_read_without_trusting_them() {
        let e = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("x"), bulk("y"), bulk("payload"), bulk("{}")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("__anycable__"),
            Value::Array(vec![e.clone(), Value::Nil, bulk("junk")]),
        ])]);
        let want = vec![Entry {
            id: "1-0".into(),
            payload: Some(b"{}".to_vec()),
        }];
        assert_eq!(read_reply(reply), want);
        let resp3 = Value::Map(vec![(bulk("__anycable__"), Value::Array(vec![e.clone()]))]);
        assert_eq!(read_reply(resp3), want);
        assert_eq!(read_reply(Value::Nil), vec![]);
        let claim = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![Value::Nil, e]),
            Value::Array(vec![]),
        ]);
        assert_eq!(claim_reply(claim), want);
        // An entry without a payload keeps its ID (to be acknowledged);
        // odd shapes give nothing.
        let bare = Value::Array(vec![bulk("2-0"), Value::Array(vec![bulk("payload")])]);
        assert_eq!(
            entries(&Value::Array(vec![bare])),
            vec![Entry {
                id: "2-0".into(),
                payload: None
            }]
        );
        for odd in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Okay,
        ] {
            assert_eq!(read_reply(odd.clone()), vec![]);
            assert_eq!(claim_reply(odd), vec![]);
        }
    }

    #[test]
    fn consumers_differ() {
        assert_ne!(random_consumer(), random_consumer());
    }

    #[tokio::test]
    async fn settings_are_checked_without_connecting() {
        let b = cable_core::Cable::builder().build().broadcaster();
        assert!(RedisIntake::pubsub(RedisIntakeConfig::new("http://x"), b.clone()).is_err());
        assert!(
            RedisIntake::streams(RedisIntakeConfig::new("redis://h").group(""), b.clone()).is_err()
        );
        let i = RedisIntake::streams(RedisIntakeConfig::new("redis://127.0.0.1:1"), b).unwrap();
        assert!(!i.is_connected());
    }
}
