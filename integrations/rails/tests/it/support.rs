//! Vectors, and the test kit's server and client as a browser of the Rails
//! app uses them.

use std::path::PathBuf;
use std::sync::OnceLock;

use cable_rails::KeyDigest;
use serde_json::Value;
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

pub use cable_test::TestServer;

/// Connecting to a [`TestServer`] as a browser of the Rails app would.
#[allow(async_fn_in_trait)] // test helpers, awaited in place
pub trait Browser {
    /// Opens a WebSocket from the allowed origin, offering the JS client's
    /// protocols, with `cookie` as the `Cookie` header (if any).
    async fn connect(&self, cookie: Option<&str>) -> Client;

    /// Connects and reads the welcome.
    async fn connect_welcomed(&self, cookie: Option<&str>) -> Client {
        let mut c = self.connect(cookie).await;
        c.expect(cable_test::frames::WELCOME).await;
        c
    }
}

impl Browser for TestServer {
    async fn connect(&self, cookie: Option<&str>) -> Client {
        let mut headers = vec![("Origin", self.origin()), cable_test::JS_CLIENT_PROTOCOLS];
        if let Some(c) = cookie {
            headers.push(("Cookie", c));
        }
        Client(cable_test::Client::connect(&self.url("/cable"), &headers).await)
    }
}

/// `cable_test::Client`, with identifiers given as JSON values.
pub struct Client(cable_test::Client);

impl std::ops::Deref for Client {
    type Target = cable_test::Client;
    fn deref(&self) -> &cable_test::Client {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut cable_test::Client {
        &mut self.0
    }
}

impl Client {
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
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
}
