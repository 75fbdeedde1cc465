//! Helpers: PostgreSQL discovery, raw SQL as Rails would send it, a bare
//! LISTENing session, socket-free clients, and a TCP proxy to cut the
//! database off without touching the shared server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cable_core::Cable;
use cable_postgres::{PostgresConfig, PostgresPubSub, PostgresStatus};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_postgres::{AsyncMessage, NoTls};

pub use crate::probe::try_plain;

/// How long a test waits for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The shared PostgreSQL, or None after printing why the test is skipped (a
/// failure instead when `CI` is set).
pub async fn shared_postgres() -> Option<(String, tokio_postgres::Client)> {
    shared_server("PostgreSQL (set DATABASE_URL)", database_url(), try_plain).await
}

/// A node: a Cable on PostgreSQL with `prefix`, users identified by `?user=`,
/// its listening connection named `app`.
pub fn node(url: &str, prefix: &str, app: &str) -> (Cable, PostgresStatus) {
    let config = PostgresConfig::new(url)
        .channel_prefix(prefix)
        .application_name(app);
    chat_node(
        |d| PostgresPubSub::new(config, d).expect("valid postgres config"),
        PostgresPubSub::status,
    )
}

/// A [`node`] on the shared PostgreSQL on a prefix of its own, once
/// connected: (url, a plain session for raw SQL, prefix, cable, status), or
/// None after a skip.
pub async fn shared_node() -> Option<(
    String,
    tokio_postgres::Client,
    String,
    Cable,
    PostgresStatus,
)> {
    let (url, plain) = shared_postgres().await?;
    let (prefix, cable, status) = connected_node(|prefix| node(&url, prefix, prefix)).await;
    Some((url, plain, prefix, cable, status))
}

/// A [`node`] on a prefix of its own on the shared PostgreSQL through a
/// [`Proxy`] (cut before the node is made if `cut`): (a plain session to
/// the server itself, proxy, prefix, cable, status), or None after a skip.
pub async fn proxied_node(
    cut: bool,
) -> Option<(tokio_postgres::Client, Proxy, String, Cable, PostgresStatus)> {
    let (url, plain) = shared_postgres().await?;
    let mut proxy = Proxy::start(&url).await?;
    if cut {
        proxy.cut().await;
    }
    let prefix = unique_prefix();
    let (cable, status) = node(&proxy.url(&url), &prefix, &prefix);
    Some((plain, proxy, prefix, cable, status))
}

/// [`delivery_survives_an_outage`] on the node of `status` on `prefix`,
/// which listens to both users' internal streams and both rooms once it is
/// over.
pub async fn survives_an_outage(
    cable: &Cable,
    status: &PostgresStatus,
    prefix: &str,
    failing: u64,
    set_up: impl AsyncFnMut(bool),
    during: impl AsyncFn(),
) {
    until_connected(status).await;
    let channels = [
        "action_cable/u1",
        "action_cable/u2",
        "chat_late",
        "chat_lobby",
    ]
    .map(|stream| format!("{prefix}:{stream}"));
    delivery_survives_an_outage(cable, failing, set_up, during, async || {
        until_listening(status, &channels).await
    })
    .await;
    assert_eq!(cable.stats().adapter_reconnects, status.reconnects());
    assert!(status.is_connected());
}

/// Waits until `status` says connected.
pub async fn until_connected(status: &PostgresStatus) {
    eventually("postgres listener connected", || {
        let s = status.clone();
        async move { s.is_connected() }
    })
    .await;
}

/// Waits until the listening connection listens to exactly `channels`.
pub async fn until_listening(status: &PostgresStatus, channels: &[String]) {
    let mut wanted = channels.to_vec();
    wanted.sort();
    let what = format!("pg_listening_channels() = {wanted:?}");
    eventually(&what, || {
        let (s, wanted) = (status.clone(), wanted.clone());
        async move { s.listening_channels().await.ok() == Some(wanted) }
    })
    .await;
}

pub use cable_test::eventually;

/// `NOTIFY "<channel>", '<payload>'` exactly as Rails' adapter sends it
/// (`escape_identifier`, `escape_string`).
pub async fn rails_notify(client: &tokio_postgres::Client, channel: &str, payload: &str) {
    let sql = format!(
        "NOTIFY \"{}\", '{}'",
        channel.replace('"', "\"\""),
        payload.replace('\'', "''")
    );
    client.batch_execute(&sql).await.expect("NOTIFY");
}

/// Connections whose `application_name` is `name`.
pub async fn terminate(client: &tokio_postgres::Client, name: &str) -> usize {
    client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("pg_terminate_backend")
        .len()
}

/// A bare session that LISTENs as Rails' listener does and collects what
/// arrives, driven with `poll_message`.
pub struct RawListener {
    client: tokio_postgres::Client,
    notifications: mpsc::UnboundedReceiver<(String, String)>,
}

impl RawListener {
    pub async fn connect(url: &str) -> RawListener {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls)
            .await
            .expect("raw listener connects");
        let (tx, notifications) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) =
                std::future::poll_fn(|cx| connection.poll_message(cx)).await
            {
                if let AsyncMessage::Notification(n) = message {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
            }
        });
        RawListener {
            client,
            notifications,
        }
    }

    pub async fn listen(&self, channel: &str) {
        let sql = format!("LISTEN \"{}\"", channel.replace('"', "\"\""));
        self.client.batch_execute(&sql).await.expect("LISTEN");
    }

    /// The next notification: (channel, payload).
    pub async fn next(&mut self) -> (String, String) {
        tokio::time::timeout(WAIT, self.notifications.recv())
            .await
            .expect("no notification within 5s")
            .expect("raw listener connection ended")
    }
}

pub use cable_adapter_kit::conformance::{
    chat_node, connected_node, delivery_survives_an_outage, shared_server, skip_because,
    starts_while_the_backend_is_away, subscribe_fails_during_a_long_outage, unique_prefix,
    LocalClient as Client,
};

/// A TCP proxy on a free loopback port in front of the shared PostgreSQL:
/// cutting it drops every connection through it and refuses new ones, which
/// is an outage (a restart, a network failure) as far as the adapter can
/// tell, while the shared server and its other clients carry on.
pub struct Proxy {
    pub port: u16,
    upstream: (String, u16),
    accept: Option<AbortHandle>,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    /// A proxy to the host and port of `url`, or None (after printing why)
    /// when `url` is not a TCP address; a failure instead when `CI` is set.
    pub async fn start(url: &str) -> Option<Proxy> {
        let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => {
                skip_because(&format!(
                    "DATABASE_URL {url} is not host:port; cannot proxy it"
                ));
                return None;
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("free port");
        let mut proxy = Proxy {
            port: listener.local_addr().expect("bound").port(),
            upstream: (host, port),
            accept: None,
            pipes: Arc::default(),
        };
        proxy.serve(listener);
        Some(proxy)
    }

    /// `url` with the proxy as host and port, same user, password, database.
    pub fn url(&self, url: &str) -> String {
        let config: tokio_postgres::Config = url.parse().expect("DATABASE_URL parses");
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| format!(":{}", percent_encode(p)))
            .unwrap_or_default();
        let dbname = config.get_dbname().unwrap_or(user);
        format!(
            "postgres://{}{password}@127.0.0.1:{}/{}",
            percent_encode(user.as_bytes()),
            self.port,
            percent_encode(dbname.as_bytes())
        )
    }

    fn serve(&mut self, listener: TcpListener) {
        let (upstream, pipes) = (self.upstream.clone(), self.pipes.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let pipe = tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
                let mut pipes = pipes.lock().expect("pipes");
                pipes.retain(|p| !p.is_finished());
                pipes.push(pipe.abort_handle());
            }
        });
        self.accept = Some(accept.abort_handle());
    }

    /// Closes the port and every connection through it, and waits until the
    /// port refuses connections (aborted tasks are dropped a little later).
    pub async fn cut(&mut self) {
        self.abort();
        let deadline = tokio::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {} still open",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn abort(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for pipe in self.pipes.lock().expect("pipes").drain(..) {
            pipe.abort();
        }
    }

    /// Restores (`up`) or cuts the proxy.
    pub async fn set_up(&mut self, up: bool) {
        if up {
            self.restore().await
        } else {
            self.cut().await
        }
    }

    /// Opens the same port again.
    pub async fn restore(&mut self) {
        assert!(self.accept.is_none(), "not cut");
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot bind port {} again: {e}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.abort();
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PostgreSQL server of our own (initdb into a temporary directory, on a
/// free port), so that a real restart harms no one else. Stopped and removed
/// on drop.
pub struct OwnPostgres {
    pub port: u16,
    bindir: std::path::PathBuf,
    dir: std::path::PathBuf,
    /// Run the server as `postgres` (it refuses to run as root).
    as_postgres: bool,
}

impl OwnPostgres {
    /// Creates and starts one, or None (after printing why) when the server
    /// binaries are missing; a failure instead when `CI` is set.
    pub async fn start() -> Option<OwnPostgres> {
        let Some(bindir) = server_bindir() else {
            skip_because(
                "PostgreSQL server binaries (initdb, pg_ctl) not found (set PG_BINDIR); \
                 cannot restart one",
            );
            return None;
        };
        let as_postgres = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("{}-pg", unique_prefix()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let own = OwnPostgres {
            port,
            bindir,
            dir,
            as_postgres,
        };
        if as_postgres {
            own.run("chown", &["postgres".as_ref(), own.dir.as_os_str()], false)
                .await;
        }
        let data = own.dir.join("data");
        own.run(
            &own.bin("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--no-sync".as_ref(),
            ],
            true,
        )
        .await;
        own.pg_ctl(&["start"]).await;
        Some(own)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn bin(&self, name: &str) -> String {
        self.bindir.join(name).to_string_lossy().into_owned()
    }

    /// Stops the server (fast shutdown: sessions are terminated, as in a
    /// restart).
    pub async fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]).await;
    }

    /// Starts (`up`) or stops the server.
    pub async fn set_up(&self, up: bool) {
        if up {
            self.restart().await
        } else {
            self.stop().await
        }
    }

    /// Starts it again on the same port and waits until it accepts
    /// connections.
    pub async fn restart(&self) {
        self.pg_ctl(&["start"]).await;
    }

    async fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            log.as_os_str(),
            "-o".as_ref(),
            options.as_ref(),
            "-w".as_ref(),
        ];
        args.extend(action.iter().map(|a| std::ffi::OsStr::new(*a)));
        self.run(&self.bin("pg_ctl"), &args, true).await;
    }

    /// Runs `program args…` (as `postgres` if `as_postgres` and `drop_root`)
    /// and asserts it succeeded.
    async fn run(&self, program: &str, args: &[&std::ffi::OsStr], drop_root: bool) {
        let mut command = if drop_root && self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", program]);
            c
        } else {
            std::process::Command::new(program)
        };
        command.args(args);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("command task")
            .expect("command runs");
        assert!(
            output.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin("pg_ctl"));
            c
        } else {
            std::process::Command::new(self.bin("pg_ctl"))
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else `PATH`.
fn server_bindir() -> Option<std::path::PathBuf> {
    let has_tools = |d: &std::path::Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return Some(d.into()).filter(|d: &std::path::PathBuf| has_tools(d));
    }
    let mut debian: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, d)| has_tools(d))
        .collect();
    debian.sort();
    if let Some((_, d)) = debian.pop() {
        return Some(d);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_tools(d)))
}
