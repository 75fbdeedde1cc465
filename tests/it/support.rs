//! Helpers on top of the test kit (`cable-test`): the chat example served
//! in-process, and a client that connects the way its page does.

use std::net::SocketAddr;

use cable_core::{Cable, CableBuilder};
use cable_server::ServerConfig;
use tokio_tungstenite::tungstenite;

pub use cable_test::frames::{confirm, message, reject};

pub const ORIGIN: &str = "http://allowed.test";

/// The chat example's app on a free port (`cable_test::TestServer`).
pub struct TestServer(cable_test::TestServer);

newtype_deref!(mut TestServer => cable_test::TestServer);

/// `cable_test::TestServer::config()`: `ORIGIN` allowed, 300 ms heartbeat.
pub fn test_config() -> ServerConfig {
    cable_test::TestServer::config()
}

impl TestServer {
    /// The chat example with admin endpoints and `ORIGIN` allowed.
    pub async fn chat() -> Self {
        Self::start(chat_example::cable_builder()).await
    }

    /// The chat example's app with a custom cable.
    pub async fn start(builder: CableBuilder) -> Self {
        let cable: Cable = builder.build();
        let opts = chat_example::Options {
            server: test_config(),
            admin: true,
        };
        let app = chat_example::app(cable.clone(), &opts);
        TestServer(cable_test::TestServer::serve(app, cable).await)
    }

    /// Broadcasts `message` on `stream` through this server's cable.
    pub async fn broadcast(&self, stream: &str, message: &serde_json::Value) {
        let sent = self.cable.broadcast(stream, message).await;
        sent.unwrap_or_else(|e| panic!("broadcast on {stream}: {e}"));
    }

    /// POSTs `body` to `path` (an admin endpoint); (status, body).
    pub async fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.addr, "POST", path, Some(body)).await
    }

    /// `ws://ADDR/cable` followed by `query`.
    pub fn url(&self, query: &str) -> String {
        self.0.url(&format!("/cable{query}"))
    }
}

/// `cable_test::Client`, connected the way the chat page connects.
pub struct Client(pub cable_test::Client);

newtype_deref!(mut Client => cable_test::Client);

impl Client {
    /// Connects as `user` (cookie) from `ORIGIN`, offering the JS client's
    /// protocols, and reads the welcome.
    pub async fn connect(server: &TestServer, user: &str) -> Client {
        let c = cable_test::Client::connect(
            &server.url(""),
            &[
                ("Origin", ORIGIN),
                ("Cookie", &format!("user={user}")),
                cable_test::JS_CLIENT_PROTOCOLS,
            ],
        )
        .await;
        let mut c = Client(c.named(user));
        c.expect(cable_test::frames::WELCOME).await;
        c
    }

    /// [`Client::connect`]s as `user` and subscribes to `identifier`.
    pub async fn joined(server: &TestServer, user: &str, identifier: &str) -> Client {
        let mut c = Client::connect(server, user).await;
        c.subscribe(identifier).await;
        c
    }

    /// A handshake with exactly `headers` (no subprotocol unless given).
    pub async fn connect_raw(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        cable_test::Client::try_connect(url, headers)
            .await
            .map(Client)
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

/// A bare HTTP/1.1 request; returns (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    cable_test::http(addr, method, path, &[], body).await
}

/// A cable with `NewsChannel` (`cable_test::channels::Feed`: history on its
/// `stream` param) and users identified by `?user=`.
pub fn news_cable() -> Cable {
    use cable_core::{authenticate_with, Identifiers, Unauthorized};
    Cable::builder()
        .channel("NewsChannel", cable_test::channels::Feed::default)
        .authenticate(authenticate_with(|req| async move {
            req.query("user")
                .map(|u| Identifiers::new().with("current_user", u))
                .ok_or_else(|| Unauthorized::because("no user"))
        }))
        .build()
}
