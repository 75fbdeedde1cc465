use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frames::{self, is_ping};
use crate::WAIT;

/// The WebSocket under a [`Client`].
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The subprotocol header `@rails/actioncable` sends, to add to a
/// handshake's headers.
pub const JS_CLIENT_PROTOCOLS: (&str, &str) = (
    "Sec-WebSocket-Protocol",
    "actioncable-v1-json, actioncable-unsupported",
);

/// The header `@anycable/web` sends: AnyCable's extended protocol
/// (session ids, resume, stream positions and history, pongs).
pub const EXT_CLIENT_PROTOCOLS: (&str, &str) =
    ("Sec-WebSocket-Protocol", "actioncable-v1-ext-json");

/// A raw `actioncable-v1-json` client: it sends what you tell it and
/// asserts what it gets, pings aside. It works against any ActionCable
/// server.
#[derive(Debug)]
pub struct Client {
    /// The socket, for what the helpers do not cover.
    pub ws: Ws,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
    /// How failures name this client (a user, `user@server`).
    pub name: String,
}

/// A handshake request for `url` with `headers` added.
pub fn request(url: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = url
        .into_client_request()
        .unwrap_or_else(|e| panic!("bad WebSocket URL {url}: {e}"));
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(v).expect("header value"),
        );
    }
    req
}

impl Client {
    /// Connects to `url` with exactly `headers` added (add
    /// [`JS_CLIENT_PROTOCOLS`] to offer what the JS client offers). Panics if
    /// the handshake fails; the welcome is left to read.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Client {
        Client::try_connect(url, headers)
            .await
            .unwrap_or_else(|e| panic!("handshake with {url}: {e}"))
    }

    /// Like [`connect`](Self::connect), but a refused handshake is an error
    /// (within [`WAIT`]).
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, Error> {
        let (ws, resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(request(url, headers)),
        )
        .await
        .unwrap_or_else(|_| panic!("no handshake with {url} within {WAIT:?}"))?;
        let protocol = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Client {
            ws,
            protocol,
            name: url.to_owned(),
        })
    }

    /// Names this client in failure messages.
    pub fn named(mut self, name: impl Into<String>) -> Client {
        self.name = name.into();
        self
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// Sends `v` as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send(&v.to_string()).await;
    }

    /// The next message of any kind (pings included), or `None` when the
    /// stream ended. Panics after [`WAIT`].
    pub async fn next_message(&mut self) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + WAIT;
        self.next_before(deadline).await
    }

    async fn next_before(&mut self, deadline: tokio::time::Instant) -> Option<Message> {
        match tokio::time::timeout_at(deadline, self.ws.next()).await {
            Ok(Some(Ok(m))) => Some(m),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("{}: nothing but pings within {WAIT:?}", self.name),
        }
    }

    /// The next text frame that is not a ping, within [`WAIT`] overall
    /// (pings keep arriving, so the deadline covers the whole wait).
    pub async fn recv(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.next_before(deadline).await {
                Some(Message::Text(t)) if is_ping(t.as_str()) => {}
                Some(Message::Text(t)) => return t.as_str().to_owned(),
                Some(Message::Close(c)) => {
                    panic!("{}: closed while waiting for a frame: {c:?}", self.name)
                }
                Some(_) => {}
                None => panic!("{}: stream ended while waiting for a frame", self.name),
            }
        }
    }

    /// Asserts that the next frame (pings aside) is exactly `frame`.
    pub async fn expect(&mut self, frame: &str) {
        let got = self.recv().await;
        assert_eq!(got, frame, "{} received", self.name);
    }

    /// Asserts that nothing but pings (and pongs) arrives for `dur`.
    pub async fn expect_silence(&mut self, dur: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) if is_ping(t.as_str()) => {}
                Ok(Some(Ok(Message::Pong(_)))) => {}
                Ok(other) => panic!("{}: expected silence, got {other:?}", self.name),
            }
        }
    }

    /// Asserts that the server closes with `code`, after any text frames
    /// (pings aside), which are returned.
    pub async fn expect_close(&mut self, code: CloseCode) -> Vec<String> {
        let mut texts = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.next_before(deadline).await {
                Some(Message::Close(Some(f))) => {
                    assert_eq!(f.code, code, "{}: close code ({f:?})", self.name);
                    return texts;
                }
                Some(Message::Close(None)) => panic!("{}: close without a code", self.name),
                Some(Message::Text(t)) if is_ping(t.as_str()) => {}
                Some(Message::Text(t)) => texts.push(t.as_str().to_owned()),
                Some(_) => {}
                None => panic!(
                    "{}: stream ended without a close frame; got {texts:?}",
                    self.name
                ),
            }
        }
    }

    /// Subscribes to `identifier` and asserts `confirm_subscription`.
    pub async fn subscribe(&mut self, identifier: &str) {
        self.send_json(json!({"command": "subscribe", "identifier": identifier}))
            .await;
        self.expect(&frames::confirm(identifier)).await;
    }

    /// Sends a `message` command: `data` (with its `action`) for the
    /// subscription `identifier`.
    pub async fn perform(&mut self, identifier: &str, data: Value) {
        self.send_json(json!({
            "command": "message",
            "identifier": identifier,
            "data": data.to_string(),
        }))
        .await;
    }

    /// Closes the socket and waits for the server's side of the close.
    pub async fn leave(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return,
                Err(_) => panic!("{}: the server did not close within {WAIT:?}", self.name),
            }
        }
    }
}
