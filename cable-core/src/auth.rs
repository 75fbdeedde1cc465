//! Connection authentication: Rails' `identified_by` plus `connect`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::DisconnectReason;
use crate::Extensions;

/// What the connection hook sees of the upgrade request. Transport-neutral:
/// the server fills it from the HTTP request.
#[derive(Clone, Debug, Default)]
pub struct ConnectRequest {
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    cookies: HashMap<String, String>,
    peer: Option<SocketAddr>,
    subprotocol: Option<String>,
    one_way: bool,
    /// What the transport attached (see [`ConnectRequest::extensions`]).
    extensions: Extensions,
    /// The app state of the `Cable` the request is for, set by the core
    /// before the connection hook runs.
    state: Option<Arc<Extensions>>,
}

impl ConnectRequest {
    /// Builds a request. Header names are matched case-insensitively; cookies
    /// are parsed from every `Cookie` header and percent-decoded (as Rack does).
    pub fn new(
        path: impl Into<String>,
        query: Option<&str>,
        headers: Vec<(String, String)>,
        peer: Option<SocketAddr>,
    ) -> Self {
        let query = query
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let mut cookies = HashMap::new();
        for (name, value) in &headers {
            if name.eq_ignore_ascii_case("cookie") {
                for c in cookie::Cookie::split_parse_encoded(value.clone()).flatten() {
                    // The first occurrence wins, like Rack.
                    cookies
                        .entry(c.name().to_owned())
                        .or_insert_with(|| c.value().to_owned());
                }
            }
        }
        ConnectRequest {
            path: path.into(),
            query,
            headers,
            cookies,
            peer,
            subprotocol: None,
            one_way: false,
            extensions: Extensions::new(),
            state: None,
        }
    }

    /// Attaches `value`, for the connection hook to read with
    /// [`extensions`](Self::extensions). cable-server attaches the HTTP
    /// request's extensions (`http::Extensions`), where axum middleware
    /// (tower-sessions, axum-login) keeps what it found.
    pub fn with_extension<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.extensions.insert(value);
        self
    }

    /// What the transport attached to this request.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// The application state of type `T` given to
    /// [`CableBuilder::state`](crate::CableBuilder::state), once the
    /// request reaches the connection hook.
    ///
    /// ```
    /// use cable_core::{authenticate_with, Cable, Identifiers, Unauthorized};
    /// struct Users(Vec<&'static str>);
    /// let cable = Cable::builder()
    ///     .state(Users(vec!["ann"]))
    ///     .authenticate(authenticate_with(|req| async move {
    ///         let users = req.state::<Users>().expect("the builder's state");
    ///         match req.query("user") {
    ///             Some(u) if users.0.contains(&u) => Ok(Identifiers::new().with("current_user", u)),
    ///             _ => Err(Unauthorized::because("unknown user")),
    ///         }
    ///     }))
    ///     .build();
    /// # drop(cable);
    /// ```
    pub fn state<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.state.as_deref()?.get()
    }

    pub(crate) fn set_state(&mut self, state: Arc<Extensions>) {
        self.state = Some(state);
    }

    /// Marks the client as one that cannot send while connected (Server-Sent
    /// Events: its commands come with the request): its session is never
    /// stored for a resume, and the extended protocol's pong timeout does
    /// not apply.
    pub fn one_way(mut self) -> Self {
        self.one_way = true;
        self
    }

    /// Whether the transport marked the client [one-way](Self::one_way).
    pub fn is_one_way(&self) -> bool {
        self.one_way
    }

    /// Sets the WebSocket subprotocol the transport negotiated
    /// (`actioncable-v1-json`, `actioncable-v1-ext-json`). With
    /// [`EXT_SUBPROTOCOL`](crate::protocol::EXT_SUBPROTOCOL) the session
    /// speaks AnyCable's extended protocol: a session id in the welcome,
    /// resume with `?sid=`, the pong timeout.
    pub fn with_subprotocol(mut self, subprotocol: Option<&str>) -> Self {
        self.subprotocol = subprotocol.map(str::to_owned);
        self
    }

    /// The negotiated subprotocol, if the transport said.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The request path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in request order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The value of cookie `name`, percent-decoded.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.get(name).map(String::as_str)
    }

    /// The peer's socket address, when the transport knows it.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

/// The identifiers of an authenticated connection (`identified_by`), in the
/// order they were declared. Values are the strings Rails would use: a plain
/// `to_s`, or a model's GlobalID param.
///
/// Beside them the hook may put one typed value, the connection's data (the
/// user record, as Rails' `current_user` is an object): see
/// [`Identifiers::with_data`]. Two `Identifiers` are equal when their
/// identifiers are; the data does not take part.
#[derive(Clone, Default)]
pub struct Identifiers(Vec<(String, String)>, Option<ConnData>);

/// The connection's data: its JSON (kept with a stored session, so a
/// resumed connection has it without running the hook) and the typed value,
/// decoded from the JSON on first use after a resume.
#[derive(Clone)]
struct ConnData {
    json: Option<Arc<str>>,
    value: Arc<std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl Identifiers {
    /// Gives back the unused slots of a hook's pushes (kept for the
    /// connection's life).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl PartialEq for Identifiers {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Identifiers {}

impl std::fmt::Debug for Identifiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Identifiers").field(&self.0).finish()
    }
}

impl Identifiers {
    /// Attaches the connection's typed data, for channels to read with
    /// [`Context::connection_data`](crate::Context::connection_data) and
    /// the disconnect hook with [`Identifiers::data`]. It is kept as JSON
    /// with the connection's stored session, so a connection resumed by
    /// `?sid=` (which skips the hook) has it too; a value that does not
    /// encode is kept for this connection only (logged).
    ///
    /// ```
    /// use cable_core::Identifiers;
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct User { id: u64, name: String }
    /// let ids = Identifiers::new()
    ///     .with("current_user", "42")
    ///     .with_data(User { id: 42, name: "Ann".into() });
    /// assert_eq!(ids.data::<User>().unwrap().name, "Ann");
    /// assert!(ids.data::<String>().is_none());
    /// ```
    pub fn with_data<T>(mut self, value: T) -> Self
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let json = match serde_json::to_string(&value) {
            Ok(json) => Some(Arc::from(json)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "connection data does not encode as JSON: a resumed session will not have it"
                );
                None
            }
        };
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(Arc::new(value) as Arc<dyn std::any::Any + Send + Sync>);
        self.1 = Some(ConnData {
            json,
            value: Arc::new(cell),
        });
        self
    }

    /// The connection's data of type `T` ([`Identifiers::with_data`]), if
    /// it has data and it is a `T` (after a resume: if its JSON decodes as
    /// one).
    pub fn data<T>(&self) -> Option<Arc<T>>
    where
        T: serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let data = self.1.as_ref()?;
        if let Some(v) = data.value.get() {
            return v.clone().downcast().ok();
        }
        let value: T = serde_json::from_str(data.json.as_deref()?).ok()?;
        let value: Arc<dyn std::any::Any + Send + Sync> = Arc::new(value);
        let _ = data.value.set(value);
        data.value.get()?.clone().downcast().ok()
    }

    /// The data's JSON, for storing the session.
    pub(crate) fn data_json(&self) -> Option<&str> {
        self.1.as_ref()?.json.as_deref()
    }

    /// Data known only as JSON (a restored session's).
    pub(crate) fn with_data_json(mut self, json: Option<String>) -> Self {
        self.1 = json.map(|j| ConnData {
            json: Some(Arc::from(j)),
            value: Arc::new(std::sync::OnceLock::new()),
        });
        self
    }

    /// No identifiers (an anonymous connection).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) identifier `name`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// Adds (or replaces) identifier `name`.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    /// The value of identifier `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All identifiers, in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Identifiers from a JSON object's text, AnyCable's layout of a
    /// connection's identifiers (the JWT `ext` claim, the `identifier` of a
    /// `disconnect` broadcast command): `{"user_id":"42","account":7}`.
    /// String values are taken as they are, any other value as its JSON
    /// text; the object's order is kept.
    ///
    /// ```
    /// use cable_core::Identifiers;
    /// let ids = Identifiers::from_json(r#"{"user_id":"42","n":7}"#).unwrap();
    /// assert_eq!(ids, Identifiers::new().with("user_id", "42").with("n", "7"));
    /// assert!(Identifiers::from_json("[1]").is_err());
    /// ```
    pub fn from_json(text: &str) -> Result<Self, IdentifiersJsonError> {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(IdentifiersJsonError)?;
        Ok(object
            .into_iter()
            .fold(Identifiers::new(), |acc, (name, value)| {
                let value = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                acc.with(name, value)
            }))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Rails' `connection_identifier`: the values sorted and joined with `:`.
    ///
    /// ```
    /// use cable_core::Identifiers;
    /// let ids = Identifiers::new().with("current_user", "bob").with("account", "acme");
    /// assert_eq!(ids.connection_identifier(), "acme:bob");
    /// ```
    pub fn connection_identifier(&self) -> String {
        let mut values: Vec<&str> = self.0.iter().map(|(_, v)| v.as_str()).collect();
        values.sort_unstable();
        values.join(":")
    }
}

/// Why [`Identifiers::from_json`] refused a text: it is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("identifiers are not a JSON object")]
pub struct IdentifiersJsonError(#[source] pub serde_json::Error);

/// Returned by the connection hook to refuse a connection. The client gets
/// `{"type":"disconnect","reason":"unauthorized","reconnect":false}`, or
/// `"token_expired"` for [`Unauthorized::token_expired`].
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("unauthorized connection: {reason}")]
pub struct Unauthorized {
    /// Why, for the log only; never sent to the client.
    pub reason: String,
    /// The credential was valid once but has expired: the client is told
    /// `token_expired` (AnyCable's reason) so that it can fetch a new one.
    pub expired: bool,
}

impl Unauthorized {
    /// An `Unauthorized` with a reason for the log.
    pub fn because(reason: impl Into<String>) -> Self {
        Unauthorized {
            reason: reason.into(),
            expired: false,
        }
    }

    /// A refusal because the connection's token has expired.
    ///
    /// ```
    /// use cable_core::protocol::DisconnectReason;
    /// use cable_core::Unauthorized;
    /// let e = Unauthorized::token_expired("exp 1700000000 has passed");
    /// assert_eq!(e.disconnect_reason(), DisconnectReason::TokenExpired);
    /// assert_eq!(Unauthorized::because("no cookie").disconnect_reason(), DisconnectReason::Unauthorized);
    /// ```
    pub fn token_expired(reason: impl Into<String>) -> Self {
        Unauthorized {
            reason: reason.into(),
            expired: true,
        }
    }

    /// The reason the client is told.
    pub fn disconnect_reason(&self) -> DisconnectReason {
        if self.expired {
            DisconnectReason::TokenExpired
        } else {
            DisconnectReason::Unauthorized
        }
    }
}

/// The connection hook: decides who a connection is, once, after the upgrade.
#[async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// Rails' `connect`: identify the connection or refuse it.
    async fn connect(&self, request: &ConnectRequest) -> Result<Identifiers, Unauthorized>;

    /// Rails' `disconnect`: runs once the connection has closed.
    async fn disconnect(&self, _identifiers: &Identifiers) {}
}

/// Accepts every connection, with no identifiers. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

#[async_trait]
impl Authenticate for AllowAll {
    async fn connect(&self, _request: &ConnectRequest) -> Result<Identifiers, Unauthorized> {
        Ok(Identifiers::new())
    }
}

/// An [`Authenticate`] made from an async function of the request.
#[derive(Clone, Debug)]
pub struct AuthFn<F>(F);

/// Wraps an async closure as the connection hook.
///
/// ```
/// use cable_core::{authenticate_with, Identifiers, Unauthorized};
/// let auth = authenticate_with(|req| async move {
///     match req.cookie("user") {
///         Some(u) => Ok(Identifiers::new().with("current_user", u)),
///         None => Err(Unauthorized::because("no user cookie")),
///     }
/// });
/// # let _ = auth;
/// ```
pub fn authenticate_with<F, Fut>(f: F) -> AuthFn<F>
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identifiers, Unauthorized>> + Send,
{
    AuthFn(f)
}

#[async_trait]
impl<F, Fut> Authenticate for AuthFn<F>
where
    F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Identifiers, Unauthorized>> + Send,
{
    async fn connect(&self, request: &ConnectRequest) -> Result<Identifiers, Unauthorized> {
        (self.0)(request.clone()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cookies_query_and_headers() {
        let req = ConnectRequest::new(
            "/cable",
            Some("user=al%20ice&x=1&user=bob"),
            vec![
                ("Cookie".into(), "a=1; user=b%2Bc%3D; broken".into()),
                ("Origin".into(), "http://x".into()),
            ],
            None,
        );
        assert_eq!(req.query("user"), Some("al ice"));
        assert_eq!(req.cookie("user"), Some("b+c="));
        assert_eq!(req.cookie("a"), Some("1"));
        assert_eq!(req.header("origin"), Some("http://x"));
        assert_eq!(req.cookie("missing"), None);
    }
}
