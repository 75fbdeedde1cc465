//! Hardening over real sockets: the closing handshake and close codes,
//! limits, panicking channel code, oversized broadcasts, half-sent requests
//! and a bounded shutdown. Exact frames and close codes are asserted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cable_core::{Cable, CableBuilder, CableConfig, Identifiers};
use cable_server::{serve_with, ServeOptions};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use cable_test::channels::Faulty;

use crate::support::{message, reject, room, test_config, Client, TestServer, ORIGIN};

/// A server on `serve_with` (HTTP options) with the chat example's app.
#[allow(dead_code)]
struct Server {
    addr: SocketAddr,
    cable: Cable,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(builder: CableBuilder, options: ServeOptions) -> Server {
        let cable = builder.build();
        let app = chat_example::app(
            cable.clone(),
            &chat_example::Options {
                server: test_config(),
                admin: true,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let c = cable.clone();
        let task = tokio::spawn(serve_with(
            listener,
            app,
            c,
            async {
                let _ = rx.await;
            },
            options,
        ));
        Server {
            addr,
            cable,
            stop: Some(tx),
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/cable", self.addr)
    }
}

async fn connect_to(url: &str, user: &str) -> Client {
    let mut c = Client::connect_raw(
        url,
        &[
            ("Origin", ORIGIN),
            ("Cookie", &format!("user={user}")),
            ("Sec-WebSocket-Protocol", "actioncable-v1-json"),
        ],
    )
    .await
    .expect("handshake failed");
    c.expect(r#"{"type":"welcome"}"#).await;
    c
}

/// Reads until the TCP connection is closed, which must take under 1.5 s
/// (the server closes it, no 2 s fallback wait).
async fn until_closed(c: &mut Client) {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.ws.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_)) | None) => break,
            Err(_) => panic!("the server did not close the connection within 10 s"),
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// The server sends a disconnect of `reason` and `reconnect` and closes
/// with 1000; once our client answers the close, the server ends the TCP
/// connection.
async fn disconnected_then_closed(c: &mut Client, reason: &str, reconnect: bool) {
    let disconnect = cable_test::frames::disconnect(reason, reconnect);
    assert_eq!(c.expect_close(CloseCode::Normal).await, vec![disconnect]);
    until_closed(c).await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_code_and_reason() {
    let server = TestServer::chat().await;
    for (code, reason) in [(1000u16, ""), (1001, "going away"), (4001, "bye")] {
        let mut c = Client::joined(&server, "closer", &room("close")).await;
        c.ws.send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })))
        .await
        .unwrap();
        let answer = loop {
            match c.next_message().await {
                Some(Message::Close(f)) => break f,
                Some(Message::Text(_)) => continue,
                other => panic!("expected the server's close, got {other:?}"),
            }
        };
        let f = answer.expect("a close frame with a code");
        assert_eq!(u16::from(f.code), code);
        assert_eq!(f.reason.as_str(), reason);
        // Then the server closes the TCP connection.
        until_closed(&mut c).await;
    }
    // A Close without a code (what `close()` sends) is answered with 1000,
    // as websocket-driver does.
    let mut c = Client::connect(&server, "closer").await;
    c.ws.send(Message::Close(None)).await.unwrap();
    loop {
        match c.next_message().await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1000);
                assert_eq!(f.reason.as_str(), "");
                break;
            }
            Some(Message::Close(None)) => panic!("answered without a code"),
            Some(_) => continue,
            None => panic!("no close frame"),
        }
    }
    // Nothing was left behind.
    for _ in 0..50 {
        if server.cable.stats().connections == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.cable.stats().connections, 0);
}

#[tokio::test]
async fn server_closes_complete_the_handshake_then_close_tcp() {
    let server = TestServer::chat().await;
    // Unauthorized: disconnect, close 1000; our client answers the close and
    // the server then ends the TCP connection.
    let mut c = Client::connect_raw(
        &server.url(""),
        &[
            ("Origin", ORIGIN),
            ("Sec-WebSocket-Protocol", "actioncable-v1-json"),
        ],
    )
    .await
    .unwrap();
    disconnected_then_closed(&mut c, "unauthorized", false).await;

    // A remote disconnect, the same way.
    let mut c = Client::connect(&server, "remote-me").await;
    server
        .cable
        .remote_disconnect(&Identifiers::new().with("current_user", "remote-me"), true)
        .await
        .unwrap();
    disconnected_then_closed(&mut c, "remote", true).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_protocol_errors_with_1002() {
    let server = TestServer::chat().await;
    let mut bystander = Client::joined(&server, "bystander", &room("utf8")).await;

    let mut c = Client::connect(&server, "bad-utf8").await;
    send_frame(
        &mut c,
        OpCode::Data(OpData::Text),
        vec![b'{', 0xff, 0xfe, b'}'],
    )
    .await;
    let closed = close_of(&mut c).await;
    assert_eq!(closed.0, 1007);
    assert_eq!(closed.1, "Could not decode a text frame as UTF-8");

    let mut c = Client::connect(&server, "bad-frame").await;
    send_frame(&mut c, OpCode::Data(OpData::Continue), b"stray".to_vec()).await;
    let closed = close_of(&mut c).await;
    assert_eq!(closed.0, 1002);
    assert_eq!(closed.1, "Received unexpected continuation frame");

    let mut c = Client::connect(&server, "too-big").await;
    c.send(&"x".repeat(70 * 1024)).await;
    let closed = close_of(&mut c).await;
    assert_eq!(closed.0, 1009);
    assert_eq!(closed.1, "WebSocket frame length too large");

    bystander.assert_alive(&room("utf8")).await;
}

/// Sends one final frame with `opcode` and `payload` as they are (nothing a
/// well-behaved client would send).
async fn send_frame(c: &mut Client, opcode: OpCode, payload: Vec<u8>) {
    let frame = Message::Frame(WsFrame::message(payload, opcode, true));
    c.ws.send(frame).await.expect("send a raw frame");
}

async fn close_of(c: &mut Client) -> (u16, String) {
    loop {
        match c.next_message().await {
            Some(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Message::Close(None)) => panic!("close without a code"),
            Some(_) => continue,
            None => panic!("connection ended without a close frame"),
        }
    }
}

#[tokio::test]
async fn a_command_flood_gets_rate_limited_and_others_are_untouched() {
    let server = TestServer::chat().await;
    let mut canary = Client::joined(&server, "canary", &room("flood")).await;
    let mut c = Client::connect(&server, "flooder").await;
    for n in 0..2000 {
        let frame = json!({"command": "message", "identifier": room("nope"), "data": json!({"n": n}).to_string()});
        if c.ws.send(Message::text(frame.to_string())).await.is_err() {
            break;
        }
    }
    let texts = c.expect_close(CloseCode::Normal).await;
    assert_eq!(
        texts.last().map(String::as_str),
        Some(r#"{"type":"disconnect","reason":"rate_limited","reconnect":true}"#)
    );
    assert_eq!(server.cable.stats().rate_limited_disconnects, 1);
    canary.assert_alive(&room("flood")).await;
}

#[tokio::test]
async fn twenty_thousand_subscribes_on_one_socket_are_capped() {
    let mut config = CableConfig::default();
    // The flood is the point here, not the rate limit.
    config.command_rate = None;
    let server = TestServer::start(chat_example::cable_builder().config(config)).await;
    let cap = CableConfig::default()
        .max_subscriptions_per_connection
        .unwrap();
    let mut c = Client::connect(&server, "hoarder").await;
    let (mut sink, mut stream) = c.0.ws.split();
    let writer = tokio::spawn(async move {
        for n in 0..20_000 {
            let f = json!({"command": "subscribe", "identifier": room(&format!("r{n}"))});
            sink.send(Message::text(f.to_string())).await.unwrap();
        }
        sink
    });
    let (mut confirms, mut rejects) = (0, 0);
    while confirms + rejects < 20_000 {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.as_str().ends_with(r#""type":"confirm_subscription"}"#) {
                    confirms += 1;
                } else if t.as_str().ends_with(r#""type":"reject_subscription"}"#) {
                    rejects += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("after {confirms} confirms, {rejects} rejects: {other:?}"),
        }
    }
    assert_eq!(confirms, cap);
    assert_eq!(rejects, 20_000 - cap);
    assert_eq!(server.cable.stats().subscriptions, cap as u64);
    let sink = writer.await.unwrap();
    c.0.ws = sink.reunite(stream).unwrap();
    c.assert_alive(&room("r0")).await;
}

#[tokio::test]
async fn a_big_broadcast_drops_nobody() {
    // Default limits: 1.5 MiB is over what a client may be sent: refused
    // (413 from the admin endpoint), the room stays and gets the next one.
    let server = TestServer::chat().await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(Client::joined(&server, &format!("m{i}"), &room("big")).await);
    }
    let body = json!({"stream": "chat_big", "message": {"pad": "x".repeat(1536 * 1024)}});
    let (status, text) = server.post("/admin/broadcast", &body.to_string()).await;
    assert_eq!(status, 413, "{text}");
    let small = json!({"stream": "chat_big", "message": {"n": 1}});
    let (status, _) = server.post("/admin/broadcast", &small.to_string()).await;
    assert_eq!(status, 200);
    for c in &mut members {
        c.expect(&message(&room("big"), r#"{"n":1}"#)).await;
    }
    assert_eq!(server.cable.stats().connections, 20);

    // Limits raised above the WebSocket write buffer's old cap: the 1.5 MiB
    // frame itself goes through to all 20 (it used to fail every write).
    let mut config = CableConfig::default();
    config.outbound_queue_bytes = 4 << 20;
    config.max_outbound_message_bytes = 2 << 20;
    let server = TestServer::start(chat_example::cable_builder().config(config)).await;
    let mut members = Vec::new();
    for i in 0..20 {
        members.push(Client::joined(&server, &format!("m{i}"), &room("big")).await);
    }
    let big = "x".repeat(1536 * 1024);
    server.broadcast("chat_big", &json!({ "pad": big })).await;
    server.broadcast("chat_big", &json!({"n": 2})).await;
    for c in &mut members {
        let got = c.recv().await;
        assert!(got.len() > 1536 * 1024, "{}", got.len());
        c.expect(&message(&room("big"), r#"{"n":2}"#)).await;
    }
    assert_eq!(server.cable.stats().connections, 20);
}

/// File descriptors of this process that are TCP sockets on `port` (the
/// server's side of its connections), from /proc. Other tests' sockets in
/// this process are on other ports and are not counted.
fn server_fds(port: u16) -> usize {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 {
                continue;
            }
            let local_port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A is LISTEN: the listener itself is not a connection.
            if local_port == Some(port) && cols[3] != "0A" {
                inodes.insert(cols[9].to_owned());
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| {
                    let l = l.to_string_lossy();
                    l.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(|i| inodes.contains(i))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn panicking_channel_code_leaks_no_socket_stream_or_connection() {
    let builder = chat_example::cable_builder().channel("Faulty", Faulty::default);
    let server = TestServer::start(builder).await;
    let port = server.addr.port();
    let baseline = server_fds(port);
    let before = server.cable.stats();
    let id = |w: &str| json!({"channel": "Faulty", "in": w}).to_string();
    for round in 0..3 {
        let mut c = Client::connect(&server, &format!("p{round}")).await;
        c.send_json(json!({"command": "subscribe", "identifier": id("subscribed")}))
            .await;
        c.expect(&reject(&id("subscribed"))).await;
        for w in ["perform", "timer", "unsubscribed"] {
            c.subscribe(&id(w)).await;
        }
        c.perform(&id("perform"), json!({"action": "panic"})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.perform(&id("perform"), json!({"action": "echo", "n": round}))
            .await;
        c.expect(&message(
            &id("perform"),
            &format!(r#"{{"action":"echo","n":{round}}}"#),
        ))
        .await;
        drop(c);
    }
    let mut after = server.cable.stats();
    for _ in 0..100 {
        after = server.cable.stats();
        if after.connections == 0 && server_fds(port) <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(after.connections, before.connections);
    assert_eq!(after.subscriptions, before.subscriptions);
    assert_eq!(after.streams, before.streams);
    assert!(after.callback_panics >= 3 * 5, "{after:?}");
    assert_eq!(server_fds(port), baseline, "sockets left open");
}

/// Opens a TCP connection and sends part of a request.
async fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /cable HTTP/1.1\r\nHost: x\r\nUpgrade: websock")
        .await
        .unwrap();
    s
}

/// Whether the server has closed `s` (EOF or reset) within `wait`.
async fn is_closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn half_sent_requests_time_out_and_cannot_lock_fresh_clients_out() {
    let mut options = ServeOptions::default();
    options.header_read_timeout = Duration::from_millis(500);
    options.max_pending_connections = 50;
    let server = Server::start(chat_example::cable_builder(), options).await;
    let mut slow = half_sent(server.addr).await;
    assert!(!is_closed_within(&mut slow, Duration::from_millis(200)).await);
    assert!(
        is_closed_within(&mut slow, Duration::from_secs(3)).await,
        "a half-sent request was kept past the header read timeout"
    );
    // Many more half-sent requests than the cap: fresh clients still get in,
    // the oldest stalled connections are closed to make room.
    let mut stalled = Vec::new();
    for _ in 0..200 {
        stalled.push(half_sent(server.addr).await);
    }
    let mut fresh = connect_to(&server.url(), "fresh").await;
    fresh.subscribe(&room("fresh")).await;
    fresh.assert_alive(&room("fresh")).await;
    let port = server.addr.port();
    assert!(
        server_fds(port) <= 50 + 2,
        "{} server sockets for a cap of 50",
        server_fds(port)
    );
    drop(stalled);
}

#[tokio::test]
async fn shutdown_is_bounded_with_half_sent_and_idle_connections_open() {
    let mut options = ServeOptions::default();
    options.drain_timeout = Duration::from_secs(1);
    // Longer than the drain: shutdown must not wait for it.
    options.header_read_timeout = Duration::from_secs(60);
    let mut server = Server::start(chat_example::cable_builder(), options).await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(half_sent(server.addr).await);
    }
    // An idle keep-alive connection after one request, too.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let _ = idle.read(&mut buf).await.unwrap();
    let mut ws = connect_to(&server.url(), "staying").await;
    let started = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(6), &mut server.task)
        .await
        .expect("serve did not return within drain timeout + 5 s");
    res.unwrap().unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let texts = ws.expect_close(CloseCode::Normal).await;
    assert_eq!(
        texts,
        vec![r#"{"type":"disconnect","reason":"server_restart","reconnect":true}"#]
    );
    for s in &mut held {
        assert!(is_closed_within(s, Duration::from_secs(1)).await);
    }
}

#[tokio::test]
async fn an_oversized_identifier_is_rejected_over_the_wire() {
    let server = TestServer::chat().await;
    let mut c = Client::connect(&server, "big-id").await;
    let big = json!({"channel": "ChatChannel", "room": "r".repeat(8 * 1024)}).to_string();
    c.send_json(json!({"command": "subscribe", "identifier": big}))
        .await;
    c.expect(&reject(&big)).await;
    c.subscribe(&room("ok")).await;
}

#[tokio::test]
async fn max_connections_counts_open_sockets_across_routers_of_one_cable() {
    let cable = chat_example::cable_builder().build();
    let mut config = test_config();
    config.max_connections = Some(2);
    let mut other = config.clone();
    other.mount_path = "/cable2".to_owned();
    // One of the two serves SSE: two routes on one path cannot be merged.
    other.sse_path = None;
    let app = cable_server::router(cable.clone(), config)
        .merge(cable_server::router(cable.clone(), other));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = cable.clone();
    let task = tokio::spawn(cable_server::serve(
        listener,
        app,
        c,
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let a = connect_to(&format!("ws://{addr}/cable"), "a").await;
    let _b = connect_to(&format!("ws://{addr}/cable2"), "b").await;
    let third = Client::connect_raw(
        &format!("ws://{addr}/cable2"),
        &[("Origin", ORIGIN), ("Cookie", "user=c")],
    )
    .await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert_eq!(cable.stats().refused_handshakes, 1);
    drop(a);
    let mut ok = None;
    for _ in 0..100 {
        if let Ok(c) = Client::connect_raw(
            &format!("ws://{addr}/cable"),
            &[("Origin", ORIGIN), ("Cookie", "user=d")],
        )
        .await
        {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok.expect("a slot was given back when a socket closed")
        .expect(r#"{"type":"welcome"}"#)
        .await;
    task.abort();
}
