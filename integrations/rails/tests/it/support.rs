//! Vectors, an in-process server and a raw WebSocket client.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use cable_core::{Cable, CableBuilder};
use cable_rails::KeyDigest;
use cable_server::{router, serve, AllowedOrigin, ServerConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ORIGIN: &str = "http://rails.test";
pub const WAIT: Duration = Duration::from_secs(5);
pub const SESSION_COOKIE: &str = "_my_app_session";

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn load(name: &str) -> Value {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

macro_rules! vector_file {
    ($fn:ident, $file:literal) => {
        pub fn $fn() -> &'static Value {
            static V: OnceLock<Value> = OnceLock::new();
            V.get_or_init(|| load($file))
        }
    };
}
vector_file!(cookies, "cookies.json");
vector_file!(sessions, "sessions.json");
vector_file!(streams, "streams.json");
vector_file!(global_ids, "global_id.json");

/// The shared reference vectors (`../shared/reference/` beside the repository).
/// `None` when that folder is not there (outside CI).
pub fn shared_reference() -> Option<Value> {
    // A copy of the team's shared/reference/rails-cookie-vectors.json (made
    // with Rails 6.1), kept in the repository so the test does not depend on
    // where the checkout sits.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/shared-reference-cookie-vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).expect("reference vectors are JSON"))
}

/// `"current"` or `"old"` to the secret the vector was written with.
pub fn secret(which: &str) -> String {
    let s = cookies()["secrets"][which].as_str();
    s.unwrap_or_else(|| panic!("no secret {which}")).to_owned()
}

pub fn current_secret() -> String {
    secret("current")
}

pub fn old_secret() -> String {
    secret("old")
}

pub fn kdf(v: &Value) -> KeyDigest {
    v["kdf"].as_str().unwrap().parse().unwrap()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A vector by its `case` (and, for cookies, profile and kind).
pub fn find(list: &Value, pred: impl Fn(&Value) -> bool) -> &Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| pred(v))
        .expect("no such vector")
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub cable: Cable,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub async fn start(builder: CableBuilder) -> Self {
        let cable = builder.build();
        let mut config = ServerConfig::default();
        config.origins.allowed.push(AllowedOrigin::from(ORIGIN));
        let app = router(cable.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let c = cable.clone();
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            serve(listener, app, c, stop, Duration::from_secs(2))
                .await
                .unwrap();
        });
        TestServer {
            addr,
            cable,
            stop: Some(tx),
            task,
        }
    }

    /// Opens a WebSocket as a browser of the Rails app would, with `cookie`
    /// as the `Cookie` header (if any).
    pub async fn connect(&self, cookie: Option<&str>) -> Client {
        let mut req = format!("ws://{}/cable", self.addr)
            .into_client_request()
            .unwrap();
        let h = req.headers_mut();
        h.insert("origin", ORIGIN.parse().unwrap());
        h.insert(
            "sec-websocket-protocol",
            "actioncable-v1-json, actioncable-unsupported"
                .parse()
                .unwrap(),
        );
        if let Some(c) = cookie {
            h.insert("cookie", http::HeaderValue::from_str(c).unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        Client { ws }
    }

    /// Connects and reads the welcome.
    pub async fn connect_welcomed(&self, cookie: Option<&str>) -> Client {
        let mut c = self.connect(cookie).await;
        c.expect(r#"{"type":"welcome"}"#).await;
        c
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// The next text frame that is not a ping.
    pub async fn recv(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no frame within {WAIT:?}"),
                Ok(Some(Ok(Message::Text(t)))) => {
                    if !t.as_str().starts_with(r#"{"type":"ping""#) {
                        return t.as_str().to_owned();
                    }
                }
                Ok(Some(Ok(Message::Close(c)))) => panic!("closed while waiting: {c:?}"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("socket error: {e}"),
                Ok(None) => panic!("stream ended while waiting for a frame"),
            }
        }
    }

    pub async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv().await).unwrap()
    }

    pub async fn expect(&mut self, frame: &str) {
        assert_eq!(self.recv().await, frame);
    }

    /// Sends a subscribe and returns the answer frame (`confirm_subscription`
    /// or `reject_subscription`).
    pub async fn subscribe(&mut self, identifier: &Value) -> Value {
        let identifier = identifier.to_string();
        self.send_json(serde_json::json!({"command": "subscribe", "identifier": identifier}))
            .await;
        let answer = self.recv_json().await;
        assert_eq!(answer["identifier"], identifier.as_str(), "{answer}");
        answer
    }

    pub async fn expect_confirm(&mut self, identifier: &Value) {
        let answer = self.subscribe(identifier).await;
        assert_eq!(answer["type"], "confirm_subscription", "{identifier}");
    }

    pub async fn expect_reject(&mut self, identifier: &Value) {
        let answer = self.subscribe(identifier).await;
        assert_eq!(answer["type"], "reject_subscription", "{identifier}");
    }

    /// The server's frames up to its close, which must carry `code`.
    pub async fn expect_close(&mut self, code: CloseCode) -> Vec<String> {
        let mut texts = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close within {WAIT:?}; got {texts:?}"),
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    assert_eq!(f.code, code);
                    return texts;
                }
                Ok(Some(Ok(Message::Text(t)))) => {
                    if !t.as_str().starts_with(r#"{"type":"ping""#) {
                        texts.push(t.as_str().to_owned());
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => panic!("ended without a close frame: {texts:?}"),
            }
        }
    }
}
