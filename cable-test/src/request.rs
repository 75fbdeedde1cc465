//! A connect request built for a test: path, query, headers, cookies, peer.

use std::net::SocketAddr;

use cable_core::ConnectRequest;

/// The upgrade request a test connects with, turned into the
/// [`ConnectRequest`] the connect hook sees (Rails' `connect params:,
/// cookies:, headers:`).
///
/// ```
/// use cable_test::Request;
/// let req = Request::new()
///     .query("token", "a b")
///     .cookie("user", "alice; admin")
///     .header("Origin", "https://example.test")
///     .build();
/// assert_eq!(req.path(), "/cable");
/// assert_eq!(req.query("token"), Some("a b"));
/// assert_eq!(req.cookie("user"), Some("alice; admin"));
/// assert_eq!(req.header("origin"), Some("https://example.test"));
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    path: String,
    /// Form-encoded pairs.
    query: String,
    headers: Vec<(String, String)>,
    cookies: Vec<String>,
    peer: Option<SocketAddr>,
    subprotocol: Option<String>,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            path: "/cable".to_owned(),
            query: String::new(),
            headers: Vec::new(),
            cookies: Vec::new(),
            peer: None,
            subprotocol: None,
        }
    }
}

impl Request {
    /// A request for `/cable` with nothing else.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the path.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Adds query parameter `name` (form-encoded here, decoded by the
    /// request as a server would).
    pub fn query(mut self, name: &str, value: &str) -> Self {
        form_urlencoded::Serializer::new(&mut self.query).append_pair(name, value);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds cookie `name`, percent-encoded into the `Cookie` header as a
    /// browser sends it. (Signed or encrypted Rails cookies: pass the
    /// value `cable-rails` would read.)
    pub fn cookie(mut self, name: &str, value: &str) -> Self {
        self.cookies
            .push(cookie::Cookie::new(name, value).encoded().to_string());
        self
    }

    /// Sets the peer's address.
    pub fn peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Sets the subprotocol the transport negotiated.
    pub fn subprotocol(mut self, protocol: &str) -> Self {
        self.subprotocol = Some(protocol.to_owned());
        self
    }

    /// Speaks AnyCable's extended protocol (`actioncable-v1-ext-json`):
    /// the welcome carries a session id, `?sid=` resumes a session.
    pub fn ext(self) -> Self {
        self.subprotocol(cable_core::protocol::EXT_SUBPROTOCOL)
    }

    /// The request the connect hook sees.
    pub fn build(&self) -> ConnectRequest {
        let mut headers = self.headers.clone();
        if !self.cookies.is_empty() {
            headers.push(("Cookie".to_owned(), self.cookies.join("; ")));
        }
        let query = (!self.query.is_empty()).then_some(self.query.as_str());
        ConnectRequest::new(self.path.clone(), query, headers, self.peer)
            .with_subprotocol(self.subprotocol.as_deref())
    }
}

impl From<Request> for ConnectRequest {
    fn from(r: Request) -> Self {
        r.build()
    }
}
