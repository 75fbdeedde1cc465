//! The `cable-server` binary, started for real: settings, operator
//! endpoints, limits and shutdown.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cable_adapter_kit::conformance::OwnServer;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_cable-server");
const KEY: &str = "test-broadcast-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// A running `cable-server`; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["--bind", "127.0.0.1:0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn cable-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("cable listening on ws://").nth(1) {
                    let addr = rest.split('/').next().unwrap_or("").to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = tokio::time::timeout(WAIT, rx)
            .await
            .expect("cable-server did not start in time")
            .expect("cable-server exited before listening");
        Server {
            child,
            addr: addr.parse().expect("address in the log line"),
            log,
        }
    }

    fn url(&self, query: &str) -> String {
        format!("ws://{}/cable{query}", self.addr)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http(self.addr, "GET", path, &[], None).await
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

use cable_test::http;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(url: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("actioncable-v1-json"),
    );
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://{host}")).unwrap(),
    );
    Ok(tokio_tungstenite::connect_async(req).await?.0)
}

/// The next text frame that is not a ping.
/// Asserts that `text` contains each of `lines`; a failure names the line.
#[track_caller]
fn assert_has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.contains(line), "{line}: {text}");
    }
}

async fn recv(ws: &mut Ws) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(r#"{"type":"ping""#) => {}
            Ok(Some(Ok(Message::Text(t)))) => return t.as_str().to_owned(),
            Ok(Some(Ok(_))) => {}
            other => panic!("no frame: {other:?}"),
        }
    }
}

async fn welcomed(url: &str) -> Ws {
    let mut ws = ws_connect(url).await.expect("handshake");
    assert_eq!(recv(&mut ws).await, r#"{"type":"welcome"}"#);
    ws
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stats(server: &Server) -> serde_json::Value {
    let (status, body) = server.get("/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats JSON: {e}: {body}"))
}

async fn output(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run cable-server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn settings_come_from_file_then_env_then_flags() {
    let dir = std::env::temp_dir().join(format!("cable-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cable.toml");
    std::fs::write(
        &file,
        "ping_interval = 7\nmax_connections = 100\nallowed_origins = [\"https://a.example\"]\nlog_format = \"json\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = output(&["--config", f, "--print-config"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert_has_lines(
        &out,
        &[
            "ping_interval = \"7s\"",
            "max_connections = 100",
            "allowed_origins = [\"https://a.example\"]",
            "log_format = \"json\"",
        ],
    );
    // The environment beats the file, a flag beats the environment.
    let env = [
        ("CABLE_PING_INTERVAL", "2"),
        ("CABLE_MAX_CONNECTIONS", "50"),
    ];
    let (_, out, _) = output(&["--config", f, "--print-config"], &env).await;
    assert!(out.contains("ping_interval = \"2s\""), "{out}");
    assert!(out.contains("max_connections = 50"), "{out}");
    let (_, out, _) = output(
        &["--config", f, "--print-config", "--ping-interval", "500ms"],
        &env,
    )
    .await;
    assert!(out.contains("ping_interval = \"500ms\""), "{out}");
    assert!(out.contains("max_connections = 50"), "{out}");
    // Secrets never printed.
    let (_, out, _) = output(
        &[
            "--print-config",
            "--adapter",
            "redis://:hunter2@127.0.0.1:6379/0",
        ],
        &[("CABLE_BROADCAST_KEY", KEY)],
    )
    .await;
    assert!(!out.contains("hunter2") && !out.contains(KEY), "{out}");

    // Bad values: exit 2, naming the key, where it came from, the value and
    // what is allowed.
    // (arguments, environment, what the error must mention)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["--print-config"],
            &[("CABLE_MAX_MESSAGE_SIZE", "huge")],
            &[
                "`max_message_size`",
                "CABLE_MAX_MESSAGE_SIZE",
                "\"huge\"",
                "64KiB",
            ],
        ),
        (
            &["--print-config", "--bind", "nowhere"],
            &[],
            &["`bind`", "--bind", "\"nowhere\"", "IP:port"],
        ),
        (
            &["--print-config", "--log-format", "xml"],
            &[],
            &["`log_format`", "\"xml\"", "text or json"],
        ),
        (
            &["--print-config", "--adapter", "mysql://db"],
            &[],
            &["`adapter`", "\"mysql://db\"", "redis://"],
        ),
        (
            &["--print-config", "--config", f, "--channel-prefix", "x"],
            &[],
            &["channel_prefix", "memory"],
        ),
    ];
    for (args, env, wants) in cases {
        let (code, _, err) = output(args, env).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        for w in *wants {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err}");
        }
    }
    std::fs::write(&file, "ping_intervall = 3\n").unwrap();
    let (code, _, err) = output(&["--config", f, "--print-config"], &[]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown setting `ping_intervall`") && err.contains("ping_interval"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_stats_and_metrics_follow_clients() {
    let server = Server::start(&["--ops-on-public-port"], &[]).await;
    assert_eq!(server.get("/health").await, (200, "ok".to_owned()));
    let s = stats(&server).await;
    assert_eq!(s["connections"], 0);
    assert_eq!(s["adapter"], "memory");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(welcomed(&server.url("")).await);
    }
    // A command for an unknown channel still counts as received.
    clients[0]
        .send(Message::text(
            r#"{"command":"subscribe","identifier":"{\"channel\":\"Nope\"}"}"#,
        ))
        .await
        .unwrap();
    eventually("3 connections and 1 message in /stats", || async {
        let s = stats(&server).await;
        s["connections"] == 3
            && s["messages_received"] == 1
            && s["messages_sent"].as_u64() >= Some(3)
    })
    .await;
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_has_lines(
        &metrics,
        &[
            "cable_connections 3",
            "cable_connections_total 3",
            "cable_messages_received_total 1",
            "# HELP cable_connections",
            // No hardening counter has moved.
            "cable_rate_limited_disconnects_total 0",
            "cable_callback_panics_total 0",
            "cable_callback_timeouts_total 0",
            "cable_oversized_dropped_total 0",
            "cable_adapter_backlog 0",
            "cable_adapter_dropped_total 0",
        ],
    );
    // The process's own figures (issue 19's soak reads them): with three
    // clients there are at least three sockets and a task for each.
    let figure = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or_else(|| panic!("no {name} in {metrics}"), |v| v as u64)
    };
    let (fds, tasks) = (
        figure(&metrics, "cable_open_fds"),
        figure(&metrics, "cable_tokio_alive_tasks"),
    );
    assert!(fds >= 4, "{fds} fds with three clients and a listener");
    assert!(tasks >= 3, "{tasks} tasks with three clients");
    for mut c in clients.drain(..) {
        c.close(None).await.unwrap();
    }
    eventually("no connections in /stats", || async {
        stats(&server).await["connections"] == 0
    })
    .await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("cable_connections 0"), "{metrics}");
    // The clients' sockets and tasks are given back.
    eventually("three fds and three tasks fewer once they left", || async {
        let (_, m) = server.get("/metrics").await;
        figure(&m, "cable_open_fds") + 3 <= fds
            && figure(&m, "cable_tokio_alive_tasks") + 3 <= tasks
    })
    .await;
}

#[tokio::test]
async fn broadcast_api_needs_the_key_and_publications() {
    // Without a key the endpoint does not exist.
    let server = Server::start(&["--ops-on-public-port"], &[]).await;
    let body = r#"{"stream":"s","data":"{\"a\":1}"}"#;
    let (status, _) = http(server.addr, "POST", "/_broadcast", &[], Some(body)).await;
    assert_eq!(status, 404);
    drop(server);

    let server = Server::start(&["--ops-on-public-port"], &[("CABLE_BROADCAST_KEY", KEY)]).await;
    let auth = format!("Bearer {KEY}");
    let post = |headers: Vec<(&'static str, String)>, body: &'static str| {
        let addr = server.addr;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http(addr, "POST", "/_broadcast", &h, Some(body)).await
        }
    };
    assert_eq!(post(vec![], body).await.0, 401);
    assert_eq!(
        post(
            vec![("Authorization", "Bearer wrong-key-wrong-key".into())],
            body
        )
        .await
        .0,
        401
    );
    for bad in [
        "not json",
        r#"{"stream":"s"}"#,
        r#"{"stream":"s","data":{"a":1}}"#,
        r#"{"stream":"s","data":"{not json"}"#,
        r#"{"stream":"","data":"1"}"#,
        r#"[{"stream":"s","data":"1"},{"data":"1"}]"#,
    ] {
        let (status, text) = post(vec![("Authorization", auth.clone())], bad).await;
        assert_eq!(status, 422, "{bad}: {text}");
    }
    assert_eq!(
        stats(&server).await["broadcasts"],
        0,
        "nothing was broadcast"
    );
    assert_eq!(
        post(vec![("Authorization", auth.clone())], body).await.0,
        201
    );
    let batch = r#"[{"stream":"a","data":"{\"n\":1}"},{"stream":"b","data":"\"two\""}]"#;
    assert_eq!(
        post(vec![("Authorization", auth.clone())], batch).await.0,
        201
    );
    // The in-memory adapter hands every publication to this node's hub.
    eventually("3 broadcasts in /stats", || async {
        stats(&server).await["broadcasts"] == 3
    })
    .await;
}

#[tokio::test]
async fn max_connections_refuses_handshakes_with_503() {
    let server = Server::start(&["--max-connections", "2", "--ops-on-public-port"], &[]).await;
    let a = welcomed(&server.url("")).await;
    let _b = welcomed(&server.url("")).await;
    match ws_connect(&server.url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| "a connection")),
    }
    assert_eq!(stats(&server).await["refused_handshakes"], 1);
    assert!(
        server.log().contains("max_connections"),
        "the refusal is logged: {}",
        server.log()
    );
    drop(a);
    // The slot frees when the server sees the socket close.
    let deadline = Instant::now() + WAIT;
    loop {
        if ws_connect(&server.url("")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no slot after a client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sigterm_sends_server_restart_and_exits_zero() {
    let mut server = Server::start(&["--shutdown-timeout", "5"], &[]).await;
    let mut a = welcomed(&server.url("")).await;
    let mut b = welcomed(&server.url("")).await;
    let pid = server.child.id().expect("pid");
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let restart = r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#;
    assert_eq!(recv(&mut a).await, restart);
    assert_eq!(recv(&mut b).await, restart);
    let exit = tokio::time::timeout(Duration::from_secs(8), server.child.wait())
        .await
        .expect("exits within the shutdown timeout")
        .expect("wait");
    assert_eq!(exit.code(), Some(0), "{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(7));
}

/// A server with its operator endpoints on a free address of their own
/// (`--stats-bind`, plus `args`), once that address accepts connections.
async fn with_stats_bind(args: &[&str]) -> (Server, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stats_bind = format!("127.0.0.1:{port}");
    let mut all = vec!["--stats-bind", stats_bind.as_str()];
    all.extend_from_slice(args);
    let server = Server::start(&all, &[]).await;
    let ops: SocketAddr = stats_bind.parse().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if TcpStream::connect(ops).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "operator address listening");
    (server, ops)
}

#[tokio::test]
async fn operator_endpoints_can_have_their_own_address() {
    let (server, ops) = with_stats_bind(&[]).await;
    assert_eq!(http(ops, "GET", "/health", &[], None).await.0, 200);
    assert_eq!(http(ops, "GET", "/stats", &[], None).await.0, 200);
    assert_eq!(http(ops, "GET", "/metrics", &[], None).await.0, 200);
    // Health stays on the public address too (load balancer probes); the
    // rest is not there.
    assert_eq!(server.get("/health").await.0, 200);
    assert_eq!(server.get("/stats").await.0, 404);
    assert_eq!(server.get("/metrics").await.0, 404);
}

/// The operator address gets the same accept loop as the public one: a
/// request whose headers never finish is closed after `header_read_timeout`.
#[tokio::test]
async fn operator_address_closes_half_sent_requests() {
    let (_server, ops) = with_stats_bind(&["--header-read-timeout", "1"]).await;
    let mut s = TcpStream::connect(ops).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "a half-sent request to the operator address was still open after 5 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
}

/// By default the public address serves the WebSocket endpoint and
/// `/health`, nothing else; the other operator endpoints need `stats_bind`
/// or an explicit `ops_on_public_port = true`.
#[tokio::test]
async fn operator_endpoints_are_not_public_by_default() {
    let server = Server::start(&[], &[]).await;
    let _client = welcomed(&server.url("")).await;
    assert_eq!(server.get("/health").await, (200, "ok".to_owned()));
    for path in ["/stats", "/metrics"] {
        assert_eq!(server.get(path).await.0, 404, "{path}");
    }
    let body = r#"{"stream":"s","data":"1"}"#;
    let status = publish(server.addr, body).await;
    assert_eq!(status, 404);
    assert!(
        server.log().contains("ops_on_public_port"),
        "the log says how to get them: {}",
        server.log()
    );
    drop(server);

    // A broadcast key with nowhere to serve /_broadcast is a mistake, said
    // at start-up rather than found out by a failing broadcaster.
    let (code, _, err) = output(&["--print-config"], &[("CABLE_BROADCAST_KEY", KEY)]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("stats_bind") && err.contains("ops_on_public_port"),
        "{err}"
    );
    // Both places at once is ambiguous.
    let (code, _, err) = output(
        &[
            "--print-config",
            "--stats-bind",
            "127.0.0.1:0",
            "--ops-on-public-port",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("stats_bind") && err.contains("ops_on_public_port"),
        "{err}"
    );
    // The opt-in serves them all beside the WebSocket endpoint.
    let server = Server::start(&["--ops-on-public-port"], &[("CABLE_BROADCAST_KEY", KEY)]).await;
    assert_eq!(server.get("/stats").await.0, 200);
    assert_eq!(server.get("/metrics").await.0, 200);
    let status = publish(server.addr, body).await;
    assert_eq!(status, 201);
    let (_, printed, _) = output(&["--print-config", "--ops-on-public-port"], &[]).await;
    assert!(printed.contains("ops_on_public_port = true"), "{printed}");
}

#[tokio::test]
async fn health_is_503_while_redis_is_down() {
    // A redis-server of our own, so stopping it harms no other test.
    let args = ["--port", "{port}", "--bind", "127.0.0.1", "--save", ""];
    let Some(mut redis) = OwnServer::start("redis-server", "redis", &args, |url| {
        Box::pin(async move { std::net::TcpStream::connect(&url["redis://".len()..]).is_ok() })
    })
    .await
    else {
        return;
    };
    let url = redis.url();
    let server = Server::start(
        &[
            "--adapter",
            &url,
            "--channel-prefix",
            "health-test",
            "--ops-on-public-port",
        ],
        &[],
    )
    .await;
    eventually("/health 200 with Redis up", || async {
        server.get("/health").await.0 == 200
    })
    .await;
    redis.kill();
    eventually("/health 503 with Redis down", || async {
        server.get("/health").await.0 == 503
    })
    .await;
    let (_, body) = server.get("/health").await;
    assert!(body.contains("redis"), "{body}");
    redis.restart().await;
    eventually("/health 200 again after Redis is back", || async {
        server.get("/health").await.0 == 200
    })
    .await;
    assert!(stats(&server).await["adapter_reconnects"].as_u64() >= Some(1));
}

const NEWS: &str = r#"{\"channel\":\"$pubsub\",\"stream_name\":\"news\"}"#;

async fn subscribe_news(ws: &mut Ws) {
    ws.send(Message::text(format!(
        r#"{{"command":"subscribe","identifier":"{NEWS}"}}"#
    )))
    .await
    .unwrap();
    assert_eq!(
        recv(ws).await,
        format!(r#"{{"identifier":"{NEWS}","type":"confirm_subscription"}}"#)
    );
}

async fn publish(addr: SocketAddr, body: &str) -> u16 {
    let auth = format!("Bearer {KEY}");
    http(
        addr,
        "POST",
        "/_broadcast",
        &[("Authorization", &auth)],
        Some(body),
    )
    .await
    .0
}

#[tokio::test]
async fn published_messages_reach_public_stream_subscribers() {
    let server = Server::start(
        &["--pubsub-public", "--ops-on-public-port"],
        &[("CABLE_BROADCAST_KEY", KEY)],
    )
    .await;
    let mut a = welcomed(&server.url("")).await;
    let mut b = welcomed(&server.url("")).await;
    subscribe_news(&mut a).await;
    subscribe_news(&mut b).await;
    eventually("2 subscriptions in /stats", || async {
        stats(&server).await["subscriptions"] == 2
    })
    .await;
    assert!(server
        .get("/metrics")
        .await
        .1
        .contains("cable_subscriptions 2"));
    assert_eq!(
        publish(server.addr, r#"{"stream":"news","data":"{\"n\":1}"}"#).await,
        201
    );
    let batch = r#"[{"stream":"news","data":"{\"n\":2}"},{"stream":"other","data":"0"},{"stream":"news","data":"\"three\""}]"#;
    assert_eq!(publish(server.addr, batch).await, 201);
    for ws in [&mut a, &mut b] {
        for m in [r#"{"n":1}"#, r#"{"n":2}"#, r#""three""#] {
            assert_eq!(
                recv(ws).await,
                format!(r#"{{"identifier":"{NEWS}","message":{m}}}"#)
            );
        }
    }
    a.send(Message::text(format!(
        r#"{{"command":"unsubscribe","identifier":"{NEWS}"}}"#
    )))
    .await
    .unwrap();
    eventually("1 subscription after an unsubscribe", || async {
        stats(&server).await["subscriptions"] == 1
    })
    .await;
    drop(b);
    eventually("no subscriptions once everyone left", || async {
        stats(&server).await["subscriptions"] == 0
    })
    .await;
    // Without --pubsub-public, a public stream is refused.
    let plain = Server::start(&["--ops-on-public-port"], &[]).await;
    let mut c = welcomed(&plain.url("")).await;
    c.send(Message::text(format!(
        r#"{{"command":"subscribe","identifier":"{NEWS}"}}"#
    )))
    .await
    .unwrap();
    c.send(Message::text(
        r#"{"command":"subscribe","identifier":"{\"channel\":\"Nope\"}"}"#,
    ))
    .await
    .unwrap();
    eventually("both commands handled", || async {
        stats(&plain).await["messages_received"] == 2
    })
    .await;
    assert_eq!(stats(&plain).await["subscriptions"], 0);
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether Redis answers; prints a SKIPPED line (or fails under CI) if not.
async fn redis_up() -> bool {
    service_up("Redis", &redis_url(), "127.0.0.1:6379").await
}

#[tokio::test]
async fn a_publication_on_one_node_reaches_clients_of_another_through_redis() {
    if !redis_up().await {
        return;
    }
    publication_reaches_another_node(&redis_url()).await;
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// `adapter = "nats://…"`: the channel prefix is the subject prefix.
#[tokio::test]
async fn a_publication_on_one_node_reaches_clients_of_another_through_nats() {
    let url = nats_url();
    if !service_up("NATS", &url, "127.0.0.1:4222").await {
        return;
    }
    publication_reaches_another_node(&url).await;
}

/// Two servers on adapter `adapter` under a fresh channel prefix: what is
/// published on one reaches a `news` subscriber of the other.
async fn publication_reaches_another_node(adapter: &str) {
    let prefix = format!(
        "cable-server-test-{}-{}",
        std::process::id(),
        fastish_nonce()
    );
    let args = [
        "--adapter",
        adapter,
        "--channel-prefix",
        &prefix,
        "--pubsub-public",
        "--ops-on-public-port",
    ];
    let env = [("CABLE_BROADCAST_KEY", KEY)];
    let a = Server::start(&args, &env).await;
    let b = Server::start(&args, &env).await;
    let mut on_b = welcomed(&b.url("")).await;
    subscribe_news(&mut on_b).await;
    assert_eq!(
        publish(a.addr, r#"[{"stream":"news","data":"{\"from\":\"a\"}"}]"#).await,
        201
    );
    assert_eq!(
        recv(&mut on_b).await,
        format!(r#"{{"identifier":"{NEWS}","message":{{"from":"a"}}}}"#)
    );
}

fn fastish_nonce() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Vectors made by Rails 6.1 itself (integrations/rails/tests/vectors).
fn rails_vectors(file: &str) -> serde_json::Value {
    let path = format!(
        "{}/../integrations/rails/tests/vectors/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vectors")).expect("JSON")
}

fn vector<'a>(list: &'a serde_json::Value, case: &str, kdf: &str) -> &'a serde_json::Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["case"] == case && v["kdf"] == kdf)
        .unwrap_or_else(|| panic!("no vector {case}/{kdf}"))
}

/// Subscribes to `identifier` and expects the answer of type `answer`
/// (`confirm_subscription` or `reject_subscription`).
async fn subscribe(ws: &mut Ws, identifier: &str, answer: &str) {
    let command = serde_json::json!({"command": "subscribe", "identifier": identifier});
    ws.send(Message::text(command.to_string())).await.unwrap();
    assert_eq!(
        recv(ws).await,
        serde_json::json!({"identifier": identifier, "type": answer}).to_string()
    );
}

async fn ws_with_cookie(url: &str, cookie: &str) -> Ws {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("actioncable-v1-json"),
    );
    let host = req.uri().authority().unwrap().to_string();
    req.headers_mut().insert(
        "Origin",
        HeaderValue::from_str(&format!("http://{host}")).unwrap(),
    );
    req.headers_mut()
        .insert("Cookie", HeaderValue::from_str(cookie).unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

#[tokio::test]
async fn beside_rails_with_no_rust_code_session_turbo_and_broadcasts() {
    let sessions = rails_vectors("sessions.json");
    let streams = rails_vectors("streams.json");
    let secret = sessions["secrets"]["current"].as_str().unwrap().to_owned();
    let session = vector(&sessions["vectors"], "user_id", "SHA1");
    let turbo = vector(&streams["turbo"], "string", "SHA1");
    assert_eq!(turbo["secret"], "current");
    let server = Server::start(
        &[
            "--key-derivation",
            "sha1",
            "--session-cookie",
            "_my_app_session",
            "--session-identifier",
            "current_user=user_id",
            "--turbo-streams",
            "--ops-on-public-port",
        ],
        &[
            ("CABLE_SECRET_KEY_BASE", secret.as_str()),
            ("CABLE_BROADCAST_KEY", KEY),
        ],
    )
    .await;
    let (_, printed, _) = output(&["--print-config"], &[("CABLE_SECRET_KEY_BASE", &secret)]).await;
    assert!(!printed.contains(&secret), "the secret is never printed");

    // The Rails-made session cookie logs the user in.
    let cookie = format!(
        "_my_app_session={}",
        session["cookie_header_value"].as_str().unwrap()
    );
    let mut ws = ws_with_cookie(&server.url(""), &cookie).await;
    assert_eq!(recv(&mut ws).await, r#"{"type":"welcome"}"#);
    let identifier = serde_json::json!({
        "channel": "Turbo::StreamsChannel",
        "signed_stream_name": turbo["signed_stream_name"],
    })
    .to_string();
    subscribe(&mut ws, &identifier, "confirm_subscription").await;
    // A broadcast to the decoded stream name (what Rails'
    // Turbo::StreamsChannel.broadcast_* publish) reaches the subscriber.
    let body = serde_json::json!({
        "stream": turbo["stream_name"],
        "data": "\"<turbo-stream action=\\\"append\\\"></turbo-stream>\"",
    })
    .to_string();
    let status = publish(server.addr, &body).await;
    assert_eq!(status, 201);
    let got: serde_json::Value = serde_json::from_str(&recv(&mut ws).await).unwrap();
    assert_eq!(got["identifier"], identifier);
    assert_eq!(
        got["message"],
        "<turbo-stream action=\"append\"></turbo-stream>"
    );
    // A forged name is rejected.
    let forged = serde_json::json!({
        "channel": "Turbo::StreamsChannel",
        "signed_stream_name": "Im1lc3NhZ2VzIg==--0000000000000000000000000000000000000000000000000000000000000000",
    })
    .to_string();
    subscribe(&mut ws, &forged, "reject_subscription").await;

    // A tampered cookie, or none, is unauthorized.
    let unauthorized = r#"{"type":"disconnect","reason":"unauthorized","reconnect":false}"#;
    let tampered = cookie.replacen("CQf", "CQg", 1);
    let mut bad = ws_with_cookie(&server.url(""), &tampered).await;
    assert_eq!(recv(&mut bad).await, unauthorized);
    let mut none = welcomed_or(&server.url("")).await;
    assert_eq!(recv(&mut none).await, unauthorized);
}

async fn welcomed_or(url: &str) -> Ws {
    ws_connect(url).await.expect("handshake")
}

/// No password of an adapter URL in `--print-config`, in the log of a
/// running server, or in a start-up error.
#[tokio::test]
async fn adapter_passwords_are_never_printed_or_logged() {
    const PW: &str = "hunter2-secret";
    let pg = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let with_param = |url: &str, name: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{name}={PW}")
    };
    let adapters = [
        // PostgreSQL runs with trust auth here: the password is ignored.
        with_param(&pg, "password"),
        format!("redis://:{PW}@127.0.0.1:1/0"),
        format!("nats://u:{PW}@127.0.0.1:1"),
        with_param("redis+unix:///nonexistent/redis.sock?db=0", "pass"),
    ];
    for adapter in &adapters {
        let (code, out, err) = output(&["--print-config", "--adapter", adapter], &[]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("adapter = "), "{out}");
        assert!(!out.contains(PW), "{out}");
        assert!(out.contains("***"), "{out}");

        let server = Server::start(&["--adapter", adapter, "--log-level", "debug"], &[]).await;
        // Let the adapter connect (or fail to) and log about it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let log = server.log();
        assert!(log.contains("cable listening on"), "{log}");
        assert!(
            log.contains("***"),
            "the start-up line names the adapter: {log}"
        );
        assert!(!log.contains(PW), "{log}");
    }
    // Refused at start-up: the error names the URL, masked.
    for adapter in [
        with_param("postgres://u@db:notaport/app", "password"),
        with_param("postgres://u@db/app?sslmode=require", "password"),
        format!("postgres://u:{PW}@db:notaport/app"),
    ] {
        let (code, _, err) = output(&["--adapter", &adapter, "--bind", "127.0.0.1:0"], &[]).await;
        assert_ne!(code, 0, "{adapter}: {err}");
        assert!(err.contains("postgres"), "{err}");
        assert!(!err.contains(PW), "{err}");
    }
}

/// Numbers too large for a Duration, an Instant or a TOML integer are
/// refused like any bad value (exit 2, naming the key), never a panic.
#[tokio::test]
async fn huge_numbers_are_errors_not_panics() {
    let dir = std::env::temp_dir().join(format!("cable-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cable.toml");
    std::fs::write(&file, "ping_interval = 1e300\n").unwrap();
    let f = file.to_str().unwrap();
    // (arguments, environment, the key)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--ping-interval", "1e300"], &[], "`ping_interval`"),
        (&["--shutdown-timeout", "1e19"], &[], "`shutdown_timeout`"),
        (&["--config", f], &[], "`ping_interval`"),
        (
            &[],
            &[("CABLE_MAX_CONNECTIONS", "18446744073709551615")],
            "`max_connections`",
        ),
        (
            &["--outbound-queue", "18446744073709551615"],
            &[],
            "`outbound_queue`",
        ),
    ];
    for (args, env, key) in cases {
        for print in [true, false] {
            let mut all = args.to_vec();
            all.extend(["--bind", "127.0.0.1:0"]);
            if print {
                all.push("--print-config");
            }
            let (code, _, err) = output(&all, env).await;
            assert_eq!(code, 2, "{all:?} {env:?}: {err}");
            assert!(err.contains(key), "{all:?}: {key} not in {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether PostgreSQL answers at `url`'s host; prints a SKIPPED line (or
/// fails under CI) if not.
async fn postgres_up(url: &str) -> bool {
    service_up("PostgreSQL", url, "127.0.0.1:5432").await
}

/// Whether `what` accepts TCP connections at `url`'s host and port
/// (`default` if the URL has none); prints a SKIPPED line (or fails under CI)
/// if not.
async fn service_up(what: &str, url: &str, default: &str) -> bool {
    let hostport = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|auth| auth.rsplit('@').next())
        .unwrap_or(default);
    let reachable = TcpStream::connect(hostport).await.is_ok();
    cable_adapter_kit::conformance::skip(what, url, reachable)
}

/// An extended-protocol (`@anycable/web`) client of `server`, `query`
/// appended to the URL.
async fn ext_client(server: &Server, query: &str) -> cable_test::Client {
    let origin = format!("http://{}", server.addr);
    cable_test::Client::connect(
        &server.url(query),
        &[cable_test::EXT_CLIENT_PROTOCOLS, ("Origin", &origin)],
    )
    .await
}

/// The next frame, parsed (pings skipped).
async fn next_json(c: &mut cable_test::Client) -> serde_json::Value {
    serde_json::from_str(&c.recv().await).unwrap()
}

/// With `--broker B --history-all-streams`, a public stream keeps history:
/// broadcasts through `/_broadcast` carry positions, `history` replays
/// what a client missed, and a client that comes back with `?sid=` gets its
/// subscription back and then what it missed: on the memory, Redis and
/// PostgreSQL brokers.
#[tokio::test]
async fn the_broker_settings_give_public_streams_history_and_sessions() {
    let mut brokers = vec!["memory".to_owned()];
    if redis_up().await {
        brokers.push(redis_url());
    }
    let pg = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if postgres_up(&pg).await {
        brokers.push(pg);
    }
    for broker in &brokers {
        let server = Server::start(
            &[
                "--pubsub-public",
                "--ops-on-public-port",
                "--history-all-streams",
                "--broker",
                broker,
            ],
            &[("CABLE_BROADCAST_KEY", KEY)],
        )
        .await;
        // A stream of this run alone: the brokers on Redis and PostgreSQL
        // outlive it.
        let stream = format!(
            "news_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let id = serde_json::json!({"channel": "$pubsub", "stream_name": stream}).to_string();
        let publish_n = |n: u64| {
            let body = serde_json::json!({"stream": stream, "data": format!(r#"{{"n":{n}}}"#)});
            async move { publish(server.addr, &body.to_string()).await }
        };
        let mut a = ext_client(&server, "").await;
        let welcome = next_json(&mut a).await;
        let sid = welcome["sid"].as_str().expect("a sid").to_owned();
        a.subscribe(&id).await;
        for n in 1..=2 {
            assert_eq!(publish_n(n).await, 201, "{broker}");
            let got = next_json(&mut a).await;
            assert_eq!(got["message"]["n"], n, "{broker}: {got}");
            assert_eq!(got["offset"], n, "{broker}: {got}");
            assert_eq!(got["stream_id"], stream.as_str(), "{broker}: {got}");
        }
        let epoch = {
            a.send_json(serde_json::json!({
                "command": "history", "identifier": id,
                "history": {"streams": {&stream: {"epoch": "nope", "offset": 1}}}
            }))
            .await;
            let reject = next_json(&mut a).await;
            assert_eq!(reject["type"], "reject_history", "{broker}: {reject}");
            // The epoch the broadcasts carried, asked again from offset 1.
            publish_n(3).await;
            next_json(&mut a).await["epoch"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        a.send_json(serde_json::json!({
            "command": "history", "identifier": id,
            "history": {"streams": {&stream: {"epoch": epoch, "offset": 1}}}
        }))
        .await;
        for n in [2, 3] {
            assert_eq!(next_json(&mut a).await["message"]["n"], n, "{broker}");
        }
        assert_eq!(
            next_json(&mut a).await["type"],
            "confirm_history",
            "{broker}"
        );

        // Away, then back by sid: the subscription is restored, and what
        // came meanwhile is replayed.
        drop(a);
        publish_n(4).await;
        let mut b = ext_client(&server, &format!("?sid={sid}")).await;
        let welcome = next_json(&mut b).await;
        assert_eq!(welcome["restored"], true, "{broker}: {welcome}");
        assert_eq!(welcome["restored_ids"], serde_json::json!([id]), "{broker}");
        b.send_json(serde_json::json!({
            "command": "history", "identifier": id,
            "history": {"streams": {&stream: {"epoch": epoch, "offset": 3}}}
        }))
        .await;
        let replayed = next_json(&mut b).await;
        assert_eq!(
            (&replayed["message"]["n"], &replayed["offset"]),
            (&4.into(), &4.into())
        );
        assert_eq!(
            next_json(&mut b).await["type"],
            "confirm_history",
            "{broker}"
        );
        publish_n(5).await;
        assert_eq!(next_json(&mut b).await["offset"], 5, "{broker}");
        let stats = stats(&server).await;
        assert_eq!(stats["restored_sessions"], 1, "{broker}: {stats}");
        assert_eq!(stats["history_reads"], 2, "{broker}: {stats}");
        assert_eq!(stats["history_misses"], 1, "{broker}: {stats}");
        let name = broker.split("://").next().unwrap_or_default();
        assert_eq!(stats["broker"], name, "{stats}");
        println!("broker {name}: history and sessions as expected");
    }
}

/// A server as AnyCable is configured without RPC: `secret` (JWT, the
/// derived broadcast key), public streams, `/_broadcast` beside the
/// WebSocket endpoint.
async fn anycable_server(secret: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("ANYCABLE_SECRET", secret),
        ("ANYCABLE_PUBLIC_STREAMS", "true"),
        ("ANYCABLE_BROADCAST_ADAPTER", "http"),
    ];
    env.extend_from_slice(extra);
    Server::start(&[], &env).await
}

/// An extended-protocol client subscribed to the public stream `news`,
/// and its session id.
async fn news_reader(server: &Server, query: &str) -> (cable_test::Client, String) {
    let mut c = ext_client(server, query).await;
    let welcome = next_json(&mut c).await;
    let sid = welcome["sid"].as_str().expect("a sid").to_owned();
    c.subscribe(&serde_json::json!({"channel": "$pubsub", "stream_name": "news"}).to_string())
        .await;
    (c, sid)
}

/// `POST /_broadcast` as AnyCable's publishers send it: `meta` (known and
/// unknown fields), `to_others` through `X-Socket-ID`, the `disconnect`
/// command.
#[tokio::test]
async fn broadcast_api_takes_anycable_meta_to_others_and_disconnect() {
    let secret = "anycable-test-secret-1234";
    let server = anycable_server(secret, &[]).await;
    let auth = format!("Bearer {}", cable_anycable::broadcast_key(secret));
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let addr = server.addr;
        let auth = auth.clone();
        async move {
            let mut h: Vec<(&str, &str)> = vec![("Authorization", auth.as_str())];
            h.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
            http(addr, "POST", "/_broadcast", &h, Some(&body)).await
        }
    };
    let jwt = cable_anycable::JwtAuth::new(cable_anycable::JwtConfig::new(secret)).unwrap();
    let token = jwt
        .issue(
            &cable_core::Identifiers::new().with("user_id", "42"),
            Duration::from_secs(600),
        )
        .unwrap();
    let (mut a, sid_a) = news_reader(&server, &format!("?jid={token}")).await;
    let (mut b, sid_b) = news_reader(&server, "").await;
    let msg = |n: u32, meta: serde_json::Value| {
        serde_json::json!({"stream": "news", "data": format!(r#"{{"n":{n}}}"#), "meta": meta})
            .to_string()
    };
    // 1: meta as AnyCable's Ruby and JS publishers send it, plus fields no
    // version knows: accepted, not a 422.
    let (status, text) = post(
        vec![],
        msg(
            1,
            serde_json::json!({"broadcast_type": "turbo", "transient": false, "future": [1]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    // 2: not for A (meta); 3: not for B (X-Socket-ID, to_others); in a
    // batch with A's id in the header, 4 keeps its own (not for B) and 5
    // takes the header's (not for A).
    let exclude = |sid: &str| serde_json::json!({"exclude_socket": sid});
    assert_eq!(post(vec![], msg(2, exclude(&sid_a))).await.0, 201);
    let header = vec![("X-Socket-ID", sid_b.clone())];
    assert_eq!(
        post(header.clone(), msg(3, serde_json::json!({}))).await.0,
        201
    );
    let both = format!(
        "[{},{}]",
        msg(4, exclude(&sid_b)),
        msg(5, serde_json::json!(null))
    );
    assert_eq!(
        post(vec![("X-Socket-ID", sid_a.clone())], both).await.0,
        201
    );
    // 6: to everyone, to show nothing else came before it.
    assert_eq!(post(vec![], msg(6, serde_json::json!({}))).await.0, 201);
    for (c, expected) in [(&mut a, [1, 3, 4, 6]), (&mut b, [1, 2, 5, 6])] {
        for n in expected {
            let got = next_json(c).await;
            assert_eq!(got["message"]["n"], n, "{got}");
        }
    }

    // The disconnect command: AnyCable's identifiers JSON (the JWT's ext).
    let command = serde_json::json!({"command": "disconnect",
        "payload": {"identifier": r#"{"user_id":"42"}"#, "reconnect": false}});
    let (status, text) = post(vec![], command.to_string()).await;
    assert_eq!(status, 201, "{text}");
    let got = next_json(&mut a).await;
    assert_eq!(got["type"], "disconnect", "{got}");
    assert_eq!(got["reconnect"], false, "{got}");
    // B (anonymous) stays.
    assert_eq!(post(vec![], msg(7, serde_json::json!({}))).await.0, 201);
    assert_eq!(next_json(&mut b).await["message"]["n"], 7);
    // Not a broadcast message: 422, nothing sent.
    for bad in [
        r#"{"command":"restart"}"#,
        r#"{"command":"disconnect","payload":{"identifier":"not json"}}"#,
        r#"{"stream":"news","data":"1","meta":{"exclude_socket":1}}"#,
    ] {
        let (status, text) = post(vec![], bad.to_owned()).await;
        assert_eq!(status, 422, "{bad}: {text}");
    }
}

/// `GET /api/presence/{stream}/users` as AnyCable's REST API: its key
/// (derived from `secret` with "api-cable"), its `info` shape.
#[tokio::test]
async fn presence_endpoint_answers_as_anycables_rest_api() {
    let secret = "anycable-test-secret-1234";
    let server = anycable_server(secret, &[]).await;
    let path = "/api/presence/news/users";
    let get = |key: Option<String>| {
        let addr = server.addr;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            http(addr, "GET", path, &h, None).await
        }
    };
    let api_key = cable_anycable::api_key(secret);
    let (status, body) = get(Some(api_key.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"type": "info", "total": 0})
    );
    let (mut a, _) = news_reader(&server, "").await;
    let id = serde_json::json!({"channel": "$pubsub", "stream_name": "news"}).to_string();
    a.send_json(serde_json::json!({"command": "join", "identifier": id,
        "presence": {"id": "42", "info": {"name": "Ann"}}}))
        .await;
    let event = next_json(&mut a).await;
    assert_eq!(event["message"]["type"], "join", "{event}");
    let (status, body) = get(Some(api_key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"type": "info", "total": 1,
            "records": [{"id": "42", "info": {"name": "Ann"}}]})
    );
    assert_eq!(get(None).await.0, 401);
    assert_eq!(
        get(Some(cable_anycable::broadcast_key("another-secret-000")))
            .await
            .0,
        401
    );
}
