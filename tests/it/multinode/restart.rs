//! Reliable streams across a restart of the backend: a redis-server or a
//! PostgreSQL cluster of the test's own (temp dir, free port; the shared
//! servers are never touched), one node on it with the backend's adapter
//! and broker, served on a real port.
//!
//! `history_survives_a_restart_and_a_lost_history_is_rejected` (`::redis`,
//! `::postgres`) proves, in order:
//! 1. While the backend is down (Redis killed with SIGKILL after
//!    `appendfsync always`, PostgreSQL stopped with `pg_ctl stop -m fast`),
//!    a broadcast returns an error within the broker's bound (never a panic
//!    or a hang) and a subscribed client stays connected.
//! 2. Restarted with its data (same port and dir), without restarting the
//!    node: the adapter resubscribes, and a client's `history` from an old
//!    position is confirmed with exactly the messages after it.
//! 3. The next broadcast reaches the client that stayed connected, live.
//!    Its position never repeats one given before: it is the next offset of
//!    the same epoch, so history from before the outage is still served
//!    (PostgreSQL's commits are durable; this Redis runs `appendonly yes`
//!    with `appendfsync always`, which `RedisBroker` recognises as durable).
//! 4. Restarted without its data (Redis: an emptied dir; PostgreSQL: a
//!    fresh cluster from `initdb`): new broadcasts carry a new epoch from
//!    offset 1, and history from the last position held (or any older one)
//!    is `reject_history`. The first broadcast after a quiet outage finds
//!    the node's idle connections dead and goes through on fresh ones
//!    (a connection that died while idle is replaced and the command sent
//!    once more).
//!
//! `a_redis_that_can_lose_writes_starts_a_new_epoch_after_a_restart`: on a
//! Redis with `appendfsync everysec` (the default of `appendonly yes`), a
//! crash may lose the latest appends, whose offsets would be given again.
//! History kept through the restart is served until the next append, which
//! starts a new epoch at offset 1; history from the old epoch is then
//! `reject_history`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::reliable::{ask_history, ext_client, news, positioned, served_node, typed, Ws};
use super::support::*;

both!(history_survives_a_restart_and_a_lost_history_is_rejected);

/// The bound on a broadcast during an outage: the broker's 2 s and the
/// publisher's own, with room for this slow machine.
const OUTAGE_BOUND: Duration = Duration::from_secs(8);

async fn history_survives_a_restart_and_a_lost_history_is_rejected(kind: Kind) {
    let Some(mut own) = Own::start(kind, "always").await else {
        return;
    };
    let (node, stream, id, mut stay, epoch) = with_history(kind, &own, "stay", 3).await;

    // 1. The outage.
    own.stop();
    let started = Instant::now();
    let outcome = node.cable.broadcast(&stream, &json!({ "n": 0 })).await;
    assert!(started.elapsed() < OUTAGE_BOUND, "{:?}", started.elapsed());
    assert!(outcome.is_err(), "published with the backend down?");
    stay.expect_silence(Duration::from_millis(300)).await;

    // 2. Back with its data.
    own.restart().await;
    until_reconnected(&node, 1).await;
    let (mut late, _) = ext_client(&node, "/cable?user=late").await;
    late.subscribe(&id).await;
    ask_history(&mut late, &id, &stream, &epoch, 1).await;
    for n in 2..=3 {
        assert_eq!(positioned(&mut late).await, (n, epoch.clone(), n));
    }
    late.expect(&typed("confirm_history", &id)).await;

    // 3. Appends go on, live to the client that never left.
    broadcast_n(&node, &stream, 4).await;
    let (n, next_epoch, offset) = positioned(&mut stay).await;
    assert_eq!(n, 4);
    assert_eq!(positioned(&mut late).await, (n, next_epoch.clone(), offset));
    ask_history(&mut late, &id, &stream, &epoch, 3).await;
    assert_eq!((next_epoch.as_str(), offset), (epoch.as_str(), 4));
    assert_eq!(positioned(&mut late).await, (4, epoch.clone(), 4));
    late.expect(&typed("confirm_history", &id)).await;

    // 4. Back without its data.
    own.stop();
    own.wipe();
    own.restart().await;
    until_reconnected(&node, 2).await;
    // Nothing used the node's connections during this outage: the first
    // broadcast finds them dead (a multiplexed redis connection can only
    // tell by being used) and goes through on fresh ones, append included.
    let n = 5;
    broadcast_n(&node, &stream, n).await;
    let (got, lost_epoch, lost_offset) = positioned(&mut stay).await;
    assert_eq!((got, lost_offset), (n, 1));
    assert_ne!(lost_epoch, next_epoch);
    assert_ne!(lost_epoch, epoch);
    assert_eq!(positioned(&mut late).await, (n, lost_epoch, 1));
    // The broker answers again (the broadcast proved it), so this refusal
    // is the lost history, not an outage.
    ask_history(&mut late, &id, &stream, &next_epoch, offset).await;
    late.expect(&typed("reject_history", &id)).await;
    ask_history(&mut late, &id, &stream, &epoch, 3).await;
    late.expect(&typed("reject_history", &id)).await;
    stay.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_can_lose_writes_starts_a_new_epoch_after_a_restart() {
    let Some(mut own) = Own::start(Kind::Redis, "everysec").await else {
        return;
    };
    let (node, stream, id, mut client, epoch) = with_history(Kind::Redis, &own, "c", 2).await;
    // Past `everysec`'s window, so these two are on disk when it crashes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    own.stop();
    own.restart().await;
    until_reconnected(&node, 1).await;
    ask_history(&mut client, &id, &stream, &epoch, 1).await;
    assert_eq!(positioned(&mut client).await, (2, epoch.clone(), 2));
    client.expect(&typed("confirm_history", &id)).await;

    broadcast_n(&node, &stream, 3).await;
    let (n, next_epoch, offset) = positioned(&mut client).await;
    assert_eq!((n, offset), (3, 1));
    assert_ne!(next_epoch, epoch, "a restart that may have lost appends");
    ask_history(&mut client, &id, &stream, &epoch, 1).await;
    client.expect(&typed("reject_history", &id)).await;
}

/// A node of `kind` on `own` under a fresh prefix, and a client as `user`
/// subscribed to a news stream that then gets `n` = 1..=`count` (the
/// client has read them all): the node, stream, identifier, client and the
/// stream's epoch.
async fn with_history(
    kind: Kind,
    own: &Own,
    user: &str,
    count: u64,
) -> (cable_test::TestServer, String, String, Ws, String) {
    let prefix = unique_prefix();
    let node = served_node(kind, &own.url(), &prefix).await;
    let stream = format!("news_{prefix}");
    let id = news(&stream);
    let (mut client, _) = ext_client(&node, &format!("/cable?user={user}")).await;
    client.subscribe(&id).await;
    for n in 1..=count {
        broadcast_n(&node, &stream, n).await;
    }
    let (_, epoch, _) = positioned(&mut client).await;
    for n in 2..=count {
        assert_eq!(positioned(&mut client).await, (n, epoch.clone(), n));
    }
    (node, stream, id, client, epoch)
}

/// Broadcasts `{"n": n}` on `stream` through `node`'s cable.
async fn broadcast_n(node: &cable_test::TestServer, stream: &str, n: u64) {
    node.cable
        .broadcast(stream, &json!({ "n": n }))
        .await
        .unwrap();
}

/// Waits until the node's adapter has reconnected `n` times in all (every
/// stream subscribed again) and is up.
async fn until_reconnected(node: &cable_test::TestServer, n: u64) {
    eventually(&format!("adapter reconnected {n} times"), || {
        let back = node.cable.stats().adapter_reconnects >= n && node.cable.is_healthy();
        async move { back }
    })
    .await;
}

/// A backend server of this test's own, in a temp dir on a free port.
/// Stopped and the dir removed on drop.
struct Own {
    kind: Kind,
    /// Redis' `appendfsync` (its AOF is on).
    fsync: &'static str,
    port: u16,
    dir: PathBuf,
    /// The running redis-server.
    redis: Option<Child>,
    /// PostgreSQL's bin dir, and whether its tools run as user postgres
    /// (this process is root, which initdb refuses).
    pg: Option<(PathBuf, bool)>,
}

impl Own {
    /// Starts one, or None (after printing why) when its binaries are not
    /// installed; a failure instead when `CI` is set.
    async fn start(kind: Kind, fsync: &'static str) -> Option<Own> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(unique_prefix());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut own = Own {
            kind,
            fsync,
            port,
            dir,
            redis: None,
            pg: None,
        };
        match kind {
            Kind::Redis => {
                if !redis_server_found() {
                    return skip("redis-server not found; cannot restart a Redis of our own");
                }
            }
            Kind::Postgres => {
                let Some(bin) = pg_bin() else {
                    return skip(
                        "no /usr/lib/postgresql/*/bin/initdb; cannot run a cluster of our own",
                    );
                };
                let root = Command::new("id")
                    .arg("-u")
                    .output()
                    .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
                own.pg = Some((bin, root));
                own.initdb();
            }
        }
        own.restart().await;
        Some(own)
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs PostgreSQL tool `tool` with `args`, as user postgres when root.
    fn pg(&self, tool: &str, args: &[&str]) {
        let (bin, root) = self.pg.as_ref().expect("a PostgreSQL cluster");
        let program = bin.join(tool);
        let mut cmd = if *root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh cluster in `data()` (user postgres, trust auth).
    fn initdb(&self) {
        if self.pg.as_ref().is_some_and(|(_, root)| *root) {
            chown_postgres(&self.dir);
        }
        let data = self.data();
        let data = data.to_str().expect("utf-8 temp dir");
        self.pg(
            "initdb",
            &["-D", data, "-U", "postgres", "-A", "trust", "--no-sync"],
        );
    }

    /// Starts it on its port with what its dir holds, and waits until it
    /// answers.
    async fn restart(&mut self) {
        match self.kind {
            Kind::Redis => {
                assert!(self.redis.is_none(), "already running");
                let child = Command::new("redis-server")
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                    .arg("--dir")
                    .arg(&self.dir)
                    .args(["--appendonly", "yes", "--appendfsync", self.fsync])
                    .args(["--save", "", "--daemonize", "no"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn redis-server");
                self.redis = Some(child);
            }
            Kind::Postgres => {
                let opts = format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                    self.port,
                    self.dir.display()
                );
                let data = self.data();
                let log = self.dir.join("log");
                self.pg(
                    "pg_ctl",
                    &[
                        "-D",
                        data.to_str().expect("utf-8"),
                        "-o",
                        &opts,
                        "-l",
                        log.to_str().expect("utf-8"),
                        "-w",
                        "start",
                    ],
                );
            }
        }
        let url = self.url();
        let kind = self.kind;
        eventually("own server answering", || {
            let url = url.clone();
            async move { answers(kind, &url).await }
        })
        .await;
    }

    /// Stops it: Redis by SIGKILL (a crash: only what was fsynced is
    /// left), PostgreSQL with a fast shutdown.
    fn stop(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pg.is_some() {
            let data = self.data();
            self.pg(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().expect("utf-8"),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
            );
        }
    }

    /// Loses everything it kept (stopped): Redis an emptied dir,
    /// PostgreSQL a fresh cluster.
    fn wipe(&mut self) {
        match self.kind {
            Kind::Redis => {
                for entry in std::fs::read_dir(&self.dir).expect("read temp dir") {
                    let path = entry.expect("dir entry").path();
                    let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
                }
            }
            Kind::Postgres => {
                std::fs::remove_dir_all(self.data()).expect("remove the cluster");
                self.initdb();
            }
        }
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some((bin, root)) = &self.pg {
            let data = self.data();
            let program = bin.join("pg_ctl");
            let mut cmd = if *root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                Command::new(&program)
            };
            let _ = cmd
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed PostgreSQL's bin dir.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let v = path.file_name()?.to_str()?.parse().ok()?;
            path.join("bin/initdb")
                .exists()
                .then(|| (v, path.join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn chown_postgres(dir: &Path) {
    let ok = Command::new("chown")
        .arg("postgres")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "chown postgres {}", dir.display());
}

/// Whether the server at `url` answers a trivial query.
async fn answers(kind: Kind, url: &str) -> bool {
    match kind {
        Kind::Redis => {
            let Ok(client) = redis::Client::open(url) else {
                return false;
            };
            let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(1),
                client.get_multiplexed_async_connection(),
            )
            .await
            else {
                return false;
            };
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            pong.is_ok()
        }
        Kind::Postgres => {
            let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
            let Ok(Ok((client, connection))) =
                tokio::time::timeout(Duration::from_secs(1), connect).await
            else {
                return false;
            };
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await.is_ok()
        }
    }
}
