//! The broker conformance suite of `cable-adapter-kit` against the shared
//! Redis (`REDIS_URL`), and what only Redis can show: lost keys, a server
//! restart, the keys written.

use std::time::Duration;

use cable_adapter_kit::broker_conformance::{
    append_within_5s, member, unique_prefix, BrokerConformance,
};
use cable_core::async_trait;
use cable_core::broker::{Broker, BrokerError, HistoryPolicy};
use cable_redis::{RedisBroker, RedisBrokerConfig};

use crate::support::{own_redis, shared_redis};

pub struct Redis {
    url: String,
    conn: redis::aio::MultiplexedConnection,
}

/// Every broker of the suite writes under this prefix; tests keep apart by
/// stream and session names.
const PREFIX: &str = "cable_it:broker:";

/// A fresh directory for an own Redis's data files, and its path as an
/// argument.
fn data_dir() -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("{}-redis", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let dir_arg = dir.to_string_lossy().into_owned();
    (dir, dir_arg)
}

fn config(url: &str) -> RedisBrokerConfig {
    RedisBrokerConfig::new(url)
        .key_prefix(PREFIX)
        .connection_name("cable-it-broker")
}

#[async_trait]
impl BrokerConformance for Redis {
    type Broker = RedisBroker;

    async fn setup() -> Option<Self> {
        let (url, conn) = shared_redis().await?;
        Some(Redis { url, conn })
    }

    fn broker(&self) -> RedisBroker {
        RedisBroker::new(config(&self.url)).expect("valid broker config")
    }

    /// `DEL` of the stream's keys, what a restart without persistence does
    /// to them.
    async fn lose_history(&self, stream: &str) {
        let c = config(&self.url);
        let n: i64 = redis::cmd("DEL")
            .arg(c.meta_key(stream))
            .arg(c.history_key(stream))
            .query_async(&mut self.conn.clone())
            .await
            .expect("DEL");
        assert_eq!(n, 2, "both keys of {stream} were there");
    }

    fn unreachable(&self) -> Option<RedisBroker> {
        // Nothing listens on port 1.
        Some(RedisBroker::new(config("redis://127.0.0.1:1")).expect("valid broker config"))
    }
}

cable_adapter_kit::broker_conformance_tests!(Redis);

/// The keys are where the crate docs say, a Redis stream with `<offset>-0`
/// IDs and a hash, both expiring with the policy's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_as_documented() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = format!("{}:", unique_prefix());
    let broker =
        RedisBroker::new(RedisBrokerConfig::new(&url).key_prefix(&prefix)).expect("config");
    let policy = HistoryPolicy {
        limit: 2,
        ttl: Duration::from_secs(30),
    };
    for n in 1..=3 {
        broker
            .append("s", &format!("{{\"n\":{n}}}"), policy)
            .await
            .expect("append");
    }
    broker.enable_history("s", policy).await.expect("mark");
    broker
        .store_session("sid", "state", Duration::from_secs(30))
        .await
        .expect("session");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut plain)
        .await
        .expect("KEYS");
    keys.sort();
    assert_eq!(
        keys,
        ["history:s", "meta:s", "policy:s", "session:sid"].map(|k| format!("{prefix}{k}"))
    );
    let kind: String = redis::cmd("TYPE")
        .arg(format!("{prefix}history:s"))
        .query_async(&mut plain)
        .await
        .expect("TYPE");
    assert_eq!(kind, "stream");
    let ids: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}history:s"))
        .arg("-")
        .arg("+")
        .query_async(&mut plain)
        .await
        .expect("XRANGE");
    let ids: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["2-0", "3-0"], "trimmed to the limit");
    for key in ["history:s", "meta:s", "policy:s", "session:sid"] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}{key}"))
            .query_async(&mut plain)
            .await
            .expect("PTTL");
        assert!((25_000..=30_000).contains(&ttl), "{key}: {ttl}");
    }
}

/// A real restart of a Redis without persistence: calls fail with
/// `Unavailable` promptly while it is down, work again when it is back, and
/// the stream starts a new epoch at 1 (the old positions are refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_with_a_new_epoch() {
    let Some(mut own) = own_redis(&[]).await else {
        return;
    };
    let broker = RedisBroker::new(RedisBrokerConfig::new(own.url())).expect("config");
    let policy = HistoryPolicy::default();
    let mut old = None;
    for _ in 0..3 {
        old = Some(broker.append("s", "{}", policy).await.expect("append"));
    }
    let old = old.expect("appended");
    broker
        .store_session("sid", "state", Duration::from_secs(60))
        .await
        .expect("session");

    own.kill();
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let err = broker
            .append("s", "{}", policy)
            .await
            .expect_err("redis is down");
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        let err = broker
            .fetch_session("sid")
            .await
            .expect_err("redis is down");
        assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "bounded");
    }

    own.restart().await;
    let new = append_within_5s(&broker, "s", r#"{"after":1}"#, policy, |e| {
        assert!(matches!(e, BrokerError::Unavailable(_)), "{e:?}")
    })
    .await;
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let err = broker
        .history_from("s", &old.epoch, 2)
        .await
        .expect_err("old epoch");
    assert!(
        matches!(err, BrokerError::HistoryNotFound { .. }),
        "{err:?}"
    );
    assert_eq!(
        broker.fetch_session("sid").await,
        Ok(None),
        "sessions went with it"
    );
    let next = broker.append("s", "{}", policy).await.expect("append");
    assert_eq!((next.epoch, next.offset), (new.epoch, 2));
}

/// `FLUSHALL` on our own server (the scripts go too: `SCRIPT FLUSH`): the
/// next append loads the script again and starts a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_scripts_and_keys_start_a_new_epoch() {
    let Some(own) = own_redis(&[]).await else {
        return;
    };
    let mut plain = crate::support::try_plain(&own.url())
        .await
        .expect("own redis");
    let broker = RedisBroker::new(RedisBrokerConfig::new(own.url())).expect("config");
    let old = broker
        .append("s", "{}", HistoryPolicy::default())
        .await
        .expect("append");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut plain)
        .await
        .expect("FLUSHALL");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut plain)
        .await
        .expect("SCRIPT FLUSH");
    let new = broker
        .append("s", "{}", HistoryPolicy::default())
        .await
        .expect("append");
    assert_eq!(new.offset, 1);
    assert_ne!(new.epoch, old.epoch);
    let h = broker
        .history_since("s", 0)
        .await
        .expect("read after flush");
    assert_eq!(h.entries.len(), 1);
}

/// A restart that reloads a snapshot keeps the keys, but may have lost the
/// latest appends: the server's new `run_id` starts a new epoch all the same,
/// so no offset is given twice in one epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_snapshot_starts_a_new_epoch() {
    let (dir, dir_arg) = data_dir();
    let Some(mut own) = own_redis(&["--dir", &dir_arg]).await else {
        return;
    };
    let broker = RedisBroker::new(RedisBrokerConfig::new(own.url())).expect("config");
    let policy = HistoryPolicy::default();
    broker
        .append("s", r#"{"n":1}"#, policy)
        .await
        .expect("append");
    let mut plain = crate::support::try_plain(&own.url())
        .await
        .expect("own redis");
    let _: () = redis::cmd("SAVE")
        .query_async(&mut plain)
        .await
        .expect("SAVE");
    // Appended after the snapshot: lost in the restart.
    let lost = broker
        .append("s", r#"{"n":2}"#, policy)
        .await
        .expect("append");
    assert_eq!(lost.offset, 2);
    own.kill();
    own.restart().await;
    let mut plain = crate::support::try_plain(&own.url())
        .await
        .expect("own redis");
    let offset: String = redis::cmd("HGET")
        .arg("cable:meta:s")
        .arg("offset")
        .query_async(&mut plain)
        .await
        .expect("the snapshot was loaded");
    assert_eq!(offset, "1");
    let new = append_within_5s(&broker, "s", r#"{"n":3}"#, policy, |_| {}).await;
    assert_ne!(
        new.epoch, lost.epoch,
        "offset 2 must not be given again in its epoch"
    );
    assert_eq!(new.offset, 1);
    drop(own);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that fsyncs every write to its AOF loses nothing in a crash:
/// its streams keep their epoch, offsets go on, and history from before
/// the restart is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_a_redis_that_fsyncs_every_write_keeps_the_epoch() {
    let (dir, dir_arg) = data_dir();
    let durable = [
        "--dir",
        &dir_arg,
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let Some(mut own) = own_redis(&durable).await else {
        return;
    };
    let broker = RedisBroker::new(RedisBrokerConfig::new(own.url())).expect("config");
    let policy = HistoryPolicy::default();
    let first = broker
        .append("s", r#"{"n":1}"#, policy)
        .await
        .expect("append");
    broker
        .append("s", r#"{"n":2}"#, policy)
        .await
        .expect("append");
    own.kill();
    own.restart().await;
    let next = append_within_5s(&broker, "s", r#"{"n":3}"#, policy, |_| {}).await;
    assert_eq!(
        (next.epoch.as_str(), next.offset),
        (first.epoch.as_str(), 3)
    );
    let h = broker
        .history_from("s", &first.epoch, 1)
        .await
        .expect("history from before the crash");
    let offsets: Vec<u64> = h.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [2, 3]);
    drop(own);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Presence keys are where the crate docs say and expire on their own a
/// grace (60 s) after the last deadline, so that nothing is left when every
/// node is gone; the last leave removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_keys_are_as_documented_and_expire() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = format!("{}:", unique_prefix());
    let broker =
        RedisBroker::new(RedisBrokerConfig::new(&url).key_prefix(&prefix)).expect("config");
    let ttl = Duration::from_secs(5);
    assert_eq!(
        broker
            .presence_join(member("s", "sid", "ann", "{}", ttl))
            .await,
        Ok(true)
    );
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut plain)
        .await
        .expect("KEYS");
    keys.sort();
    let want = ["presence-deadlines", "presence-sid:sid", "presence:s"];
    assert_eq!(keys, want.map(|k| format!("{prefix}{k}")));
    for key in want {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}{key}"))
            .query_async(&mut plain)
            .await
            .expect("PTTL");
        assert!((60_000..=65_000).contains(&pttl), "{key}: {pttl}");
    }
    let deadline: f64 = redis::cmd("ZSCORE")
        .arg(format!("{prefix}presence-deadlines"))
        .arg("sid")
        .query_async(&mut plain)
        .await
        .expect("ZSCORE");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as f64;
    assert!(
        (deadline - now_ms - 5000.0).abs() < 2000.0,
        "{deadline} vs {now_ms}"
    );
    assert_eq!(
        broker.presence_leave("s", "sid").await,
        Ok(Some("ann".into()))
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut plain)
        .await
        .expect("KEYS");
    assert!(left.is_empty(), "{left:?}");
}

/// A presence hash that is not what the scripts write (another program
/// wrote the key) is an error value, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_presence_key_is_an_error() {
    let Some((url, mut plain)) = shared_redis().await else {
        return;
    };
    let prefix = format!("{}:", unique_prefix());
    let broker =
        RedisBroker::new(RedisBrokerConfig::new(&url).key_prefix(&prefix)).expect("config");
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}presence:s"))
        .arg("o:ann")
        .arg("not a number")
        .arg("i:ann")
        .arg("{}")
        .query_async(&mut plain)
        .await
        .expect("HSET");
    let err = broker.presence_info("s").await.expect_err("corrupt");
    assert!(matches!(err, BrokerError::Backend(_)), "{err:?}");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}presence:t"))
        .arg("a string")
        .query_async(&mut plain)
        .await
        .expect("SET");
    let err = broker.presence_info("t").await.expect_err("wrong type");
    assert!(matches!(err, BrokerError::Backend(_)), "{err:?}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}presence:s"))
        .arg(format!("{prefix}presence:t"))
        .query_async(&mut plain)
        .await
        .expect("DEL");
}

/// Right after a start, Redis accepts connections (and `SUBSCRIBE`s, so the
/// pub/sub side is back) while it still answers `-LOADING` to commands. An
/// append then waits, within the broker's bound, instead of failing: the
/// first broadcast after a restart keeps its position. A fake server, as
/// a real one loads an empty data set too fast to catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_waits_for_a_redis_that_is_still_loading() {
    let (url, evals) = loading_redis(3).await;
    let broker = RedisBroker::new(config(&url)).expect("valid broker config");
    let position = broker
        .append("news", "{}", HistoryPolicy::default())
        .await
        .expect("appended once Redis had loaded");
    assert_eq!((position.epoch.as_str(), position.offset), ("e1", 1));
    assert_eq!(evals.load(std::sync::atomic::Ordering::SeqCst), 4);

    // Still loading when the bound runs out: an error within it, no hang.
    let (url, _) = loading_redis(u32::MAX).await;
    let broker = RedisBroker::new(config(&url).timeout(Duration::from_millis(500)))
        .expect("valid broker config");
    let started = std::time::Instant::now();
    let refused = broker.append("news", "{}", HistoryPolicy::default()).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A fake Redis on a free port. It answers `-LOADING` to the first
/// `loading` scripts it is sent, then an append's reply (epoch `e1` at
/// offset one); every other command gets what the broker expects of a
/// plain server. Returns its URL and the count of scripts received.
async fn loading_redis(loading: u32) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", listener.local_addr().expect("address"));
    let evals = std::sync::Arc::new(AtomicU32::new(0));
    let seen = evals.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                let mut line = String::new();
                loop {
                    // A command: `*<n>` then n bulk strings.
                    line.clear();
                    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim_start_matches('*').trim().parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        let _ = read.read_line(&mut line).await;
                        let len: usize = line.trim_start_matches('$').trim().parse().unwrap_or(0);
                        let mut arg = vec![0; len + 2];
                        let _ = read.read_exact(&mut arg).await;
                        arg.truncate(len);
                        args.push(String::from_utf8_lossy(&arg).to_uppercase());
                    }
                    let reply = match args.first().map(String::as_str) {
                        Some("CONFIG") => "*0\r\n".to_owned(),
                        Some("INFO") => "$14\r\nrun_id:fake1\r\n\r\n".to_owned(),
                        Some("EVALSHA" | "EVAL") => {
                            if seen.fetch_add(1, Ordering::SeqCst) < loading {
                                "-LOADING Redis is loading the dataset in memory\r\n".to_owned()
                            } else {
                                "*2\r\n$2\r\ne1\r\n:1\r\n".to_owned()
                            }
                        }
                        _ => "+OK\r\n".to_owned(),
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, evals)
}
