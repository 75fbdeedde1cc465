//! GlobalID: how Rails names a record in broadcastings and connection
//! identifiers (`to_gid_param`).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cable_core::ToParam;

/// A record's GlobalID, `gid://<app>/<Model>/<id>`.
///
/// Its [`ToParam`] is Rails' `to_gid_param`: the URI in URL-safe base64
/// without padding. So `broadcasting_for` and `stream_for` give the names a
/// Rails channel uses for a model, and an identifier set to
/// [`GlobalId::to_param`] matches Rails' `connection_identifier` for
/// `identified_by :current_user` (which remote disconnects use).
///
/// ```
/// use cable_core::broadcasting_for;
/// use cable_rails::GlobalId;
///
/// let user = GlobalId::new("my-app", "User", 1);
/// assert_eq!(user.to_string(), "gid://my-app/User/1");
/// assert_eq!(user.to_param(), "Z2lkOi8vbXktYXBwL1VzZXIvMQ");
/// // ChatChannel.broadcasting_for(user) and .broadcasting_for([room, :messages])
/// assert_eq!(broadcasting_for("ChatChannel", &user), "chat:Z2lkOi8vbXktYXBwL1VzZXIvMQ");
/// let room = GlobalId::new("my-app", "Room", 1);
/// assert_eq!(broadcasting_for("ChatChannel", &(&room, "messages")),
///            "chat:Z2lkOi8vbXktYXBwL1Jvb20vMQ:messages");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GlobalId {
    app: String,
    model: String,
    id: String,
}

impl GlobalId {
    /// The GlobalID of record `id` of class `model` (`"User"`,
    /// `"Admin::Note"`) in app `app` (the Rails app's `config.global_id.app`:
    /// by default its module name dasherized, `MyApp` gives `my-app`).
    pub fn new(app: impl Into<String>, model: impl Into<String>, id: impl fmt::Display) -> Self {
        GlobalId {
            app: app.into(),
            model: model.into(),
            id: id.to_string(),
        }
    }

    /// The app name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The model class name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The record id (unescaped).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Rails' `to_gid_param`.
    pub fn to_param(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_string())
    }

    /// Parses a `to_gid_param` value back (`GlobalID.parse`).
    pub fn from_param(param: &str) -> Option<GlobalId> {
        let bytes = URL_SAFE_NO_PAD.decode(param.trim_end_matches('=')).ok()?;
        String::from_utf8(bytes).ok()?.parse().ok()
    }
}

/// `gid://app/Model/id`, the id escaped as Ruby's `CGI.escape` does.
impl fmt::Display for GlobalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gid://{}/{}/{}",
            self.app,
            self.model,
            cgi_escape(&self.id)
        )
    }
}

/// A GlobalID URI that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a GlobalID URI (gid://app/Model/id): {0:?}")]
pub struct InvalidGlobalId(pub String);

impl FromStr for GlobalId {
    type Err = InvalidGlobalId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || InvalidGlobalId(s.to_owned());
        let rest = s.strip_prefix("gid://").ok_or_else(err)?;
        let rest = rest.split('?').next().unwrap_or_default();
        let mut parts = rest.splitn(3, '/');
        let (Some(app), Some(model), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err());
        };
        if app.is_empty() || model.is_empty() || id.is_empty() || id.contains('/') {
            return Err(err());
        }
        Ok(GlobalId {
            app: app.to_owned(),
            model: model.to_owned(),
            id: cgi_unescape(id).ok_or_else(err)?,
        })
    }
}

impl ToParam for GlobalId {
    fn write_param(&self, out: &mut String) {
        out.push_str(&self.to_param());
    }
}

/// Ruby's `CGI.escape`: everything but `a-zA-Z0-9_.-~` percent-encoded (upper
/// case), spaces as `+`.
fn cgi_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn cgi_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_vector() {
        let gid = GlobalId::new("my-app", "User", 1);
        assert_eq!(gid.to_param(), "Z2lkOi8vbXktYXBwL1VzZXIvMQ");
        assert_eq!(
            GlobalId::from_param("Z2lkOi8vbXktYXBwL1VzZXIvMQ"),
            Some(gid)
        );
    }

    #[test]
    fn escapes_ids_like_cgi() {
        let gid = GlobalId::new("my-app", "User", "a b/ü+~*");
        assert_eq!(gid.to_string(), "gid://my-app/User/a+b%2F%C3%BC%2B~%2A");
        assert_eq!(gid.to_string().parse::<GlobalId>().unwrap(), gid);
        assert!("gid://my-app/User".parse::<GlobalId>().is_err());
        assert!("http://my-app/User/1".parse::<GlobalId>().is_err());
        assert!("gid://my-app/User/%zz".parse::<GlobalId>().is_err());
        assert_eq!(GlobalId::from_param("!!"), None);
    }
}
