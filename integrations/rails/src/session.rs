//! The Rails session (cookie store) and how identifiers are taken from it.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::global_id::GlobalId;

/// A Rails session read from the encrypted session cookie: the JSON object
/// the app's `session` holds (`session_id`, `_csrf_token`, `user_id`,
/// Warden's `warden.user.<scope>.key`, ...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Session(Map<String, Value>);

impl Session {
    /// Wraps a session object.
    pub fn new(map: Map<String, Value>) -> Self {
        Session(map)
    }

    /// `session[key]`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// `session[key]` as a string: strings as they are, numbers printed.
    pub fn get_str(&self, key: &str) -> Option<String> {
        scalar_to_string(self.get(key)?)
    }

    /// The session id (32 hex characters).
    pub fn session_id(&self) -> Option<&str> {
        self.get("session_id").and_then(Value::as_str)
    }

    /// `session[:user_id]`, the usual hand-rolled login.
    pub fn user_id(&self) -> Option<String> {
        self.get_str("user_id")
    }

    /// The record id Warden/Devise keeps for `scope` (`"user"`, `"admin"`):
    /// `session["warden.user.<scope>.key"]` is `[[id], salt]`, and this is the
    /// id. Composite keys (`[[a, b], salt]`) give `None`.
    pub fn warden_user_id(&self, scope: &str) -> Option<String> {
        let key = self.get(&format!("warden.user.{scope}.key"))?.as_array()?;
        match key.first()?.as_array()?.as_slice() {
            [id] => scalar_to_string(id),
            _ => None,
        }
    }

    /// The authenticatable salt Warden/Devise keeps for `scope`.
    pub fn warden_salt(&self, scope: &str) -> Option<&str> {
        self.get(&format!("warden.user.{scope}.key"))?
            .as_array()?
            .get(1)?
            .as_str()
    }

    /// The whole session object.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The whole session object, owned.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

fn scalar_to_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Where in the session an identifier's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionSource {
    /// A plain session key, e.g. `user_id` (`session[:user_id] = user.id`).
    Key(String),
    /// Warden/Devise's user for a scope, e.g. `user`
    /// (`session["warden.user.user.key"] = [[id], salt]`).
    Warden(String),
}

impl SessionSource {
    /// The value in `session`, as a string.
    pub fn read(&self, session: &Session) -> Option<String> {
        match self {
            SessionSource::Key(key) => session.get_str(key),
            SessionSource::Warden(scope) => session.warden_user_id(scope),
        }
    }
}

impl fmt::Display for SessionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionSource::Key(k) => f.write_str(k),
            SessionSource::Warden(scope) => write!(f, "warden:{scope}"),
        }
    }
}

/// One connection identifier taken from the session, Rails'
/// `identified_by :current_user` plus the `connect` that sets it.
///
/// Parsed from `NAME=SOURCE[ as MODEL]`, where SOURCE is a session key or
/// `warden:SCOPE`, and MODEL (optional) turns the id into the model's GlobalID
/// param, which is what Rails puts in the connection identifier for a record:
///
/// ```
/// use cable_rails::{SessionIdentifier, SessionSource};
/// let id: SessionIdentifier = "current_user=warden:user as User".parse().unwrap();
/// assert_eq!(id.name, "current_user");
/// assert_eq!(id.source, SessionSource::Warden("user".into()));
/// assert_eq!(id.global_id_model.as_deref(), Some("User"));
/// let plain: SessionIdentifier = "current_user=user_id".parse().unwrap();
/// assert_eq!(plain.source, SessionSource::Key("user_id".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionIdentifier {
    /// The identifier's name (`current_user`).
    pub name: String,
    /// Where its value comes from.
    pub source: SessionSource,
    /// When set, the value is `GlobalId::new(global_id_app, model, id).to_param()`
    /// instead of the bare id.
    pub global_id_model: Option<String>,
}

impl SessionIdentifier {
    /// `name` from session key `key`, as is.
    pub fn key(name: impl Into<String>, key: impl Into<String>) -> Self {
        SessionIdentifier {
            name: name.into(),
            source: SessionSource::Key(key.into()),
            global_id_model: None,
        }
    }

    /// `name` from Warden's user of `scope`, as is.
    pub fn warden(name: impl Into<String>, scope: impl Into<String>) -> Self {
        SessionIdentifier {
            name: name.into(),
            source: SessionSource::Warden(scope.into()),
            global_id_model: None,
        }
    }

    /// The value as the GlobalID param of a `model` record.
    pub fn as_global_id(mut self, model: impl Into<String>) -> Self {
        self.global_id_model = Some(model.into());
        self
    }

    /// The identifier's value for `session`, if it has one.
    pub fn value(&self, session: &Session, global_id_app: Option<&str>) -> Option<String> {
        let id = self.source.read(session)?;
        match (&self.global_id_model, global_id_app) {
            (Some(model), Some(app)) => Some(GlobalId::new(app, model.as_str(), id).to_param()),
            _ => Some(id),
        }
    }
}

impl fmt::Display for SessionIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.source)?;
        if let Some(m) = &self.global_id_model {
            write!(f, " as {m}")?;
        }
        Ok(())
    }
}

/// A `NAME=SOURCE[ as MODEL]` that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("identifier mapping {0:?} is not NAME=SESSION_KEY, NAME=warden:SCOPE, optionally followed by ` as Model`")]
pub struct InvalidSessionIdentifier(pub String);

/// As its text, `NAME=SOURCE[ as MODEL]` (what `FromStr` reads back).
impl serde::Serialize for SessionIdentifier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for SessionIdentifier {
    type Err = InvalidSessionIdentifier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidSessionIdentifier(s.to_owned());
        let (name, rest) = s.split_once('=').ok_or_else(err)?;
        let (source, model) = match rest.split_once(" as ") {
            Some((source, model)) => (source.trim(), Some(model.trim())),
            None => (rest.trim(), None),
        };
        let name = name.trim();
        if name.is_empty() || source.is_empty() || model.is_some_and(str::is_empty) {
            return Err(err());
        }
        let source = match source.strip_prefix("warden:") {
            Some("") => return Err(err()),
            Some(scope) => SessionSource::Warden(scope.to_owned()),
            None => SessionSource::Key(source.to_owned()),
        };
        Ok(SessionIdentifier {
            name: name.to_owned(),
            source,
            global_id_model: model.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(v: Value) -> Session {
        match v {
            Value::Object(m) => Session::new(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn reads_users() {
        let s = session(json!({
            "session_id": "abc", "user_id": 5,
            "warden.user.user.key": [[42], "$2a$12$salt"],
            "warden.user.admin.key": [["a", 2], "x"],
            "warden.user.bad.key": [[], "x"],
        }));
        assert_eq!(s.session_id(), Some("abc"));
        assert_eq!(s.user_id().as_deref(), Some("5"));
        assert_eq!(s.warden_user_id("user").as_deref(), Some("42"));
        assert_eq!(s.warden_salt("user"), Some("$2a$12$salt"));
        assert_eq!(s.warden_user_id("admin"), None);
        assert_eq!(s.warden_user_id("bad"), None);
        assert_eq!(s.warden_user_id("none"), None);
        let id = SessionIdentifier::warden("current_user", "user").as_global_id("User");
        assert_eq!(
            id.value(&s, Some("my-app")).as_deref(),
            Some(GlobalId::new("my-app", "User", 42).to_param().as_str())
        );
        assert_eq!(
            SessionIdentifier::key("u", "user_id")
                .value(&s, None)
                .as_deref(),
            Some("5")
        );
    }

    #[test]
    fn parses_mappings() {
        for bad in ["", "x", "=user_id", "a=", "a=warden:", "a=user_id as "] {
            assert!(bad.parse::<SessionIdentifier>().is_err(), "{bad:?}");
        }
        let id: SessionIdentifier = " current_user = user_id as Admin::User ".parse().unwrap();
        assert_eq!(
            id,
            SessionIdentifier::key("current_user", "user_id").as_global_id("Admin::User")
        );
        assert_eq!(id.to_string(), "current_user=user_id as Admin::User");
    }
}
