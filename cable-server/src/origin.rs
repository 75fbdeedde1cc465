//! Rails' `allow_request_origin?`: which `Origin`s may open a connection.

use regex::Regex;

/// One entry of the origin allowlist.
#[derive(Clone, Debug)]
pub enum AllowedOrigin {
    /// The origin must equal this string exactly (`"https://example.com"`).
    Exact(String),
    /// The whole origin must match this regular expression. Deliberately
    /// unlike Rails, which matches a `Regexp` anywhere in the origin: there
    /// `/https:\/\/app.example.com/` lets `https://app.example.com.evil.net`
    /// in, which with cookie authentication is cross-site WebSocket
    /// hijacking. Build it with [`AllowedOrigin::pattern`], which anchors it.
    Pattern(Regex),
}

impl AllowedOrigin {
    /// A pattern entry that must match the whole origin (it is anchored as
    /// `^(?:re)$`); fails on an invalid regular expression.
    pub fn pattern(re: &str) -> Result<Self, regex::Error> {
        Ok(AllowedOrigin::Pattern(Regex::new(&format!("^(?:{re})$"))?))
    }

    /// AnyCable's `allowed_origins` entry: a host (with its port, if the
    /// origin has one) that the origin's must equal, case-insensitively and
    /// under any scheme; `*example.com` takes every host ending in
    /// `example.com` (AnyCable's suffix match, so `badexample.com` too:
    /// write `*.example.com` for subdomains only).
    /// Fails only where a pattern is too large to compile.
    pub fn host(pattern: &str) -> Result<Self, regex::Error> {
        let pattern = pattern.to_ascii_lowercase();
        let host = match pattern.strip_prefix('*') {
            Some(suffix) => format!("[^/]*{}", regex::escape(suffix)),
            None => regex::escape(&pattern),
        };
        let re = Regex::new(&format!(r"(?i)^[a-z][a-z0-9+.\-]*://{host}$"))?;
        Ok(AllowedOrigin::Pattern(re))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            AllowedOrigin::Exact(s) => s == origin,
            AllowedOrigin::Pattern(re) => re.is_match(origin),
        }
    }
}

impl From<&str> for AllowedOrigin {
    fn from(s: &str) -> Self {
        AllowedOrigin::Exact(s.to_owned())
    }
}

impl From<String> for AllowedOrigin {
    fn from(s: String) -> Self {
        AllowedOrigin::Exact(s)
    }
}

impl From<Regex> for AllowedOrigin {
    /// A compiled pattern; it too must match the whole origin (it is
    /// recompiled anchored).
    fn from(re: Regex) -> Self {
        // Anchoring a valid expression keeps it valid; fall back just in case.
        let anchored = Regex::new(&format!("^(?:{})$", re.as_str())).unwrap_or(re);
        AllowedOrigin::Pattern(anchored)
    }
}

/// The origin check, with Rails' defaults: same origin as the `Host` allowed,
/// nothing else until added; a request without `Origin` is refused.
#[derive(Clone, Debug)]
pub struct OriginPolicy {
    /// Allow `Origin == "<proto>://<Host>"` (Rails' `allow_same_origin_as_host`,
    /// default true). `proto` is https when `X-Forwarded-Proto: https`,
    /// `X-Forwarded-Scheme: https` or `X-Forwarded-Ssl: on` says so.
    pub allow_same_origin_as_host: bool,
    /// Further allowed origins (`allowed_request_origins`).
    pub allowed: Vec<AllowedOrigin>,
    /// Skip the check entirely (`disable_request_forgery_protection`).
    pub disabled: bool,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        OriginPolicy {
            allow_same_origin_as_host: true,
            allowed: Vec::new(),
            disabled: false,
        }
    }
}

impl OriginPolicy {
    /// Whether a request with these headers may connect.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>, https: bool) -> bool {
        if self.disabled {
            return true;
        }
        let Some(origin) = origin else {
            return false;
        };
        if self.allow_same_origin_as_host {
            if let Some(host) = host {
                let proto = if https { "https" } else { "http" };
                if origin.len() == proto.len() + 3 + host.len()
                    && origin.starts_with(proto)
                    && origin[proto.len()..].starts_with("://")
                    && &origin[proto.len() + 3..] == host
                {
                    return true;
                }
            }
        }
        self.allowed.iter().any(|a| a.matches(origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rails_rules() {
        let mut p = OriginPolicy::default();
        assert!(p.allows(Some("http://a.test:3000"), Some("a.test:3000"), false));
        assert!(!p.allows(Some("http://a.test:3000"), Some("a.test:3000"), true));
        assert!(p.allows(Some("https://a.test"), Some("a.test"), true));
        assert!(!p.allows(None, Some("a.test"), false));
        assert!(!p.allows(Some("http://evil.test"), Some("a.test"), false));
        p.allowed.push("http://evil.test".into());
        assert!(p.allows(Some("http://evil.test"), Some("a.test"), false));
        p.allowed
            .push(AllowedOrigin::pattern(r"https?://localhost:\d+").unwrap());
        // Anchored, unlike Ruby: the whole origin must match.
        assert!(p.allows(Some("http://localhost:5173"), None, false));
        assert!(!p.allows(Some("xhttp://localhost:1"), None, false));
        assert!(!p.allows(Some("http://localhost:1.evil.net"), None, false));
        p.allowed
            .push(AllowedOrigin::pattern(r"https://app\.example\.com").unwrap());
        assert!(p.allows(Some("https://app.example.com"), None, false));
        assert!(!p.allows(Some("https://app.example.com.evil.net"), None, false));
        assert!(!p.allows(
            Some("https://evil.net/https://app.example.com"),
            None,
            false
        ));
        // A Regex built by hand is held to the whole origin too.
        p.allowed.push(regex::Regex::new("trusted").unwrap().into());
        assert!(!p.allows(Some("https://trusted.evil.net"), None, false));
        assert!(p.allows(Some("trusted"), None, false));
        p.allow_same_origin_as_host = false;
        assert!(!p.allows(Some("http://a.test"), Some("a.test"), false));
        // AnyCable's host entries: any scheme, the port is part of the host.
        let mut p = OriginPolicy {
            allowed: vec![
                AllowedOrigin::host("www.Example.com").unwrap(),
                AllowedOrigin::host("*.example.io").unwrap(),
            ],
            ..OriginPolicy::default()
        };
        assert!(p.allows(Some("https://www.example.com"), None, false));
        assert!(p.allows(Some("HTTP://WWW.EXAMPLE.COM"), None, false));
        assert!(!p.allows(Some("https://www.example.com:8443"), None, false));
        assert!(!p.allows(Some("https://www.example.com.evil.net"), None, false));
        assert!(p.allows(Some("https://a.b.example.io"), None, false));
        assert!(!p.allows(Some("https://example.io"), None, false));
        assert!(!p.allows(Some("https://evil.net/x.example.io"), None, false));
        assert!(!p.allows(None, None, false));
        p.disabled = true;
        assert!(p.allows(None, None, false));
    }
}
