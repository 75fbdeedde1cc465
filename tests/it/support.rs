//! Helpers: an in-process server on a free port and a raw WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use cable_core::{Cable, CableBuilder};
use cable_server::{serve, AllowedOrigin, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ORIGIN: &str = "http://allowed.test";
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub addr: SocketAddr,
    pub cable: Cable,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn test_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.origins.allowed.push(AllowedOrigin::from(ORIGIN));
    c.ping_interval = Duration::from_millis(300);
    c
}

impl TestServer {
    /// The chat example with admin endpoints and `ORIGIN` allowed.
    pub async fn chat() -> Self {
        Self::start(chat_example::cable_builder()).await
    }

    /// The chat example's app with a custom cable.
    pub async fn start(builder: CableBuilder) -> Self {
        let cable = builder.build();
        let opts = chat_example::Options {
            server: test_config(),
            admin: true,
        };
        let app = chat_example::app(cable.clone(), &opts);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let c = cable.clone();
        let task = tokio::spawn(async move {
            serve(
                listener,
                app,
                c,
                async {
                    let _ = rx.await;
                },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        });
        TestServer {
            addr,
            cable,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/cable{}", self.addr, query)
    }

    /// Triggers a graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("server did not stop")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub protocol: Option<String>,
}

pub fn request(
    url: &str,
    headers: &[(&str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    req
}

impl Client {
    /// Connects as `user` (cookie), offering the JS client's protocols, and
    /// reads the welcome.
    pub async fn connect(server: &TestServer, user: &str) -> Client {
        let mut c = Client::connect_raw(
            &server.url(""),
            &[
                ("Origin", ORIGIN),
                ("Cookie", &format!("user={user}")),
                (
                    "Sec-WebSocket-Protocol",
                    "actioncable-v1-json, actioncable-unsupported",
                ),
            ],
        )
        .await
        .expect("handshake failed");
        c.expect(r#"{"type":"welcome"}"#).await;
        c
    }

    pub async fn connect_raw(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, resp) = tokio_tungstenite::connect_async(request(url, headers)).await?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok(Client { ws, protocol })
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send(&v.to_string()).await;
    }

    /// The next message of any kind (pings included), or None when the
    /// stream ended. Panics after `WAIT`.
    pub async fn next_message(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next text frame that is not a ping. Panics after `WAIT` overall:
    /// pings keep arriving, so a per-message timeout would wait forever for a
    /// frame that never comes.
    pub async fn recv(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(m))) => Some(m),
                Ok(Some(Err(_))) | Ok(None) => None,
                Err(_) => panic!("no frame but pings within {WAIT:?}"),
            };
            match next {
                Some(Message::Text(t)) => {
                    if t.as_str().starts_with(r#"{"type":"ping""#) {
                        continue;
                    }
                    return t.as_str().to_owned();
                }
                Some(Message::Close(c)) => panic!("closed while waiting for a frame: {c:?}"),
                Some(_) => continue,
                None => panic!("stream ended while waiting for a frame"),
            }
        }
    }

    pub async fn expect(&mut self, frame: &str) {
        assert_eq!(self.recv().await, frame);
    }

    /// Asserts that nothing but pings arrives for `dur`.
    pub async fn expect_silence(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with(r#"{"type":"ping""#) => {}
                Ok(Some(Ok(Message::Pong(_)))) => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Asserts the server closes with `code` (after any text frames, which are
    /// returned).
    pub async fn expect_close(&mut self, code: CloseCode) -> Vec<String> {
        let mut texts = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(m))) => Some(m),
                Ok(Some(Err(_))) | Ok(None) => None,
                Err(_) => panic!("no close frame within {WAIT:?}; got {texts:?}"),
            };
            match next {
                Some(Message::Close(Some(f))) => {
                    assert_eq!(f.code, code, "close code");
                    return texts;
                }
                Some(Message::Close(None)) => panic!("close without a code"),
                Some(Message::Text(t)) => {
                    if !t.as_str().starts_with(r#"{"type":"ping""#) {
                        texts.push(t.as_str().to_owned());
                    }
                }
                Some(_) => {}
                None => panic!("stream ended without a close frame; got {texts:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, identifier: &str) {
        self.send_json(serde_json::json!({"command": "subscribe", "identifier": identifier}))
            .await;
        self.expect(&confirm(identifier)).await;
    }

    pub async fn perform(&mut self, identifier: &str, data: Value) {
        self.send_json(serde_json::json!({
            "command": "message",
            "identifier": identifier,
            "data": data.to_string(),
        }))
        .await;
    }

    /// Proves the connection is alive: an echo round trip on `identifier`.
    pub async fn assert_alive(&mut self, identifier: &str) {
        self.perform(identifier, serde_json::json!({"n": 7, "action": "echo"}))
            .await;
        self.expect(&message(identifier, r#"{"n":7,"action":"echo"}"#))
            .await;
    }
}

pub fn room(r: &str) -> String {
    format!(r#"{{"channel":"ChatChannel","room":"{r}"}}"#)
}

/// A Rails frame with `identifier` encoded as a JSON string.
fn with_id(identifier: &str) -> String {
    serde_json::to_string(identifier).unwrap()
}

pub fn confirm(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"confirm_subscription"}}"#,
        with_id(identifier)
    )
}

pub fn reject(identifier: &str) -> String {
    format!(
        r#"{{"identifier":{},"type":"reject_subscription"}}"#,
        with_id(identifier)
    )
}

pub fn message(identifier: &str, json: &str) -> String {
    format!(
        r#"{{"identifier":{},"message":{json}}}"#,
        with_id(identifier)
    )
}

/// A bare HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}
