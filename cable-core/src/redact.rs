//! Hiding secrets in backend URLs before they reach a log, an error message
//! or printed settings. One function, used by the adapters, the server and
//! the examples, so that every place masks the same things.

/// `text`, a URL or a libpq `key=value` connection string, with its secrets
/// replaced by `***`, for logs, errors and printed settings.
///
/// Masked:
/// - the password of a URL's user info (`redis://user:secret@host` becomes
///   `redis://user:***@host`). The user name is kept, except in a Redis URL
///   (`redis://`, `rediss://`, `redis+unix://`, `valkey://`…) whose user
///   info has no `:`: before Redis 6 there were no user names, and
///   `redis://secret@host` is a common way to write a password;
/// - the value of every query parameter (and `#fragment` parameter) whose
///   name is secret-looking, and the same keys of a libpq `key=value`
///   string (`host=db password=secret` or `password = 'it\'s'`).
///
/// A name is secret-looking when, compared case-insensitively and after
/// percent-decoding, it is `auth` or ends with `password`, `passwd`, `pass`,
/// `pwd`, `secret`, `token`, `key` or `credentials` (so `password`,
/// `sslpassword`, `pass`, `token`, `access_token`, `client_secret`,
/// `api_key`, `apikey` and `sslkey` are masked; `user`, `host`, `sslmode`
/// are not). Masking a harmless value costs a little clarity in a log;
/// missing a secret costs more, so the list errs on the side of masking.
/// Empty values stay empty. Anything else is returned unchanged.
///
/// ```
/// use cable_core::redact_url;
/// assert_eq!(redact_url("redis://:hunter2@redis:6379/1"), "redis://:***@redis:6379/1");
/// assert_eq!(
///     redact_url("postgres://app@db/app?sslmode=disable&password=hunter2"),
///     "postgres://app@db/app?sslmode=disable&password=***"
/// );
/// assert_eq!(redact_url("host=db user=app password=hunter2"), "host=db user=app password=***");
/// assert_eq!(redact_url("memory"), "memory");
/// ```
pub fn redact_url(text: &str) -> String {
    match url_scheme(text) {
        Some(scheme) => redact_as_url(text, scheme),
        None if text.contains('=') => redact_key_values(text),
        None => text.to_owned(),
    }
}

/// The scheme, if `text` starts with `scheme://`.
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some(scheme)
}

fn redact_as_url(url: &str, scheme: &str) -> String {
    let authority_start = scheme.len() + "://".len();
    let rest = &url[authority_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    let authority = &rest[..authority_end];
    // The last `@`: an unencoded `@` in a password is common enough.
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, password)) if !password.is_empty() => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                Some(_) => out.push_str(userinfo),
                None if is_redis(scheme) && !userinfo.is_empty() => out.push_str("***"),
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    // Path (kept), then `?query` and `#fragment` (parameters masked).
    let params_start = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..params_start]);
    let mut params = &tail[params_start..];
    while let Some(separator) = params.chars().next() {
        out.push(separator);
        let body = &params[1..];
        let end = if separator == '?' {
            body.find('#').unwrap_or(body.len())
        } else {
            body.len()
        };
        redact_params(&body[..end], &mut out);
        params = &body[end..];
    }
    out
}

fn is_redis(scheme: &str) -> bool {
    let scheme = scheme.to_ascii_lowercase();
    scheme.starts_with("redis") || scheme.starts_with("valkey")
}

/// `a=1&password=x;b=2` with the secret values masked, into `out`.
fn redact_params(params: &str, out: &mut String) {
    let mut rest = params;
    loop {
        let end = rest.find(['&', ';']).unwrap_or(rest.len());
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_name(name) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
        if end == rest.len() {
            break;
        }
        out.push_str(&rest[end..end + 1]);
        rest = &rest[end + 1..];
    }
}

/// libpq's `key = value` pairs, separated by whitespace; a value is either
/// bare (up to whitespace, `\` escaping the next character) or in single
/// quotes (`\` escaping the next character; the first other `'` ends it).
fn redact_key_values(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // Whitespace and anything that is not `key =` is copied as is.
        if bytes[i].is_ascii_whitespace() {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let key_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'=' {
            i += 1;
        }
        let key = &text[key_start..i];
        let mut j = i;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            out.push_str(key);
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j].is_ascii_whitespace() {
            j += 1;
        }
        let value_start = j;
        if j < bytes.len() && bytes[j] == b'\'' {
            j += 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = (j + 1).min(bytes.len());
        } else {
            while j < bytes.len() && !bytes[j].is_ascii_whitespace() {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            j = j.min(bytes.len());
        }
        // Everything up to the value (key, spaces, `=`) as it was.
        out.push_str(&text[key_start..value_start]);
        let value = &text[value_start..j];
        if !value.is_empty() && value != "''" && is_secret_name(key) {
            out.push_str("***");
        } else {
            out.push_str(value);
        }
        i = j;
    }
    out
}

/// Whether a parameter or key of this name holds a secret; see [`redact_url`].
fn is_secret_name(name: &str) -> bool {
    const SUFFIXES: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "credentials",
    ];
    let name = percent_decode(name).to_ascii_lowercase();
    let name = name.trim();
    name == "auth" || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// `%XX` decoded (invalid escapes kept), for comparing names only.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::redact_url as r;

    #[test]
    fn user_info_passwords() {
        assert_eq!(r("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(r("redis://:pw@host:6379/1"), "redis://:***@host:6379/1");
        assert_eq!(r("rediss://user:p@ss@host/0"), "rediss://user:***@host/0");
        assert_eq!(r("redis://pw@host"), "redis://***@host");
        assert_eq!(r("REDIS://pw@host"), "REDIS://***@host");
        assert_eq!(r("redis+unix:///tmp/r.sock"), "redis+unix:///tmp/r.sock");
        assert_eq!(
            r("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert_eq!(
            r("postgresql://app:s3cret@db:5432/app"),
            "postgresql://app:***@db:5432/app"
        );
        assert_eq!(r("postgres://app:p@ss@db/app"), "postgres://app:***@db/app");
        // An `@` in the path or query is no user info.
        assert_eq!(r("postgres://db/app?x=a@b"), "postgres://db/app?x=a@b");
        assert_eq!(
            r("postgres://u:pw@h1:5432,h2:5433/app"),
            "postgres://u:***@h1:5432,h2:5433/app"
        );
        assert_eq!(r("mysql://root:pw@db/x"), "mysql://root:***@db/x");
        assert_eq!(r("redis://user:@host"), "redis://user:@host");
    }

    #[test]
    fn secret_query_parameters() {
        assert_eq!(
            r("postgres://db/app?user=app&password=s3cret&sslmode=disable"),
            "postgres://db/app?user=app&password=***&sslmode=disable"
        );
        assert_eq!(
            r("postgres:///app?host=/tmp&PassWord=x"),
            "postgres:///app?host=/tmp&PassWord=***"
        );
        assert_eq!(
            r("redis+unix:///run/redis.sock?db=1&user=u&pass=hunter2"),
            "redis+unix:///run/redis.sock?db=1&user=u&pass=***"
        );
        assert_eq!(
            r("postgres://u:a@h/d?sslpassword=b&sslkey=/k&application_name=x"),
            "postgres://u:***@h/d?sslpassword=***&sslkey=***&application_name=x"
        );
        for name in [
            "passwd",
            "pwd",
            "token",
            "access_token",
            "secret",
            "client_secret",
            "api_key",
            "apikey",
            "API-KEY",
            "key",
            "auth",
            "credentials",
            "pass%77ord",
        ] {
            assert_eq!(
                r(&format!("https://h/p?a=1&{name}=v1;b=2#x")),
                format!("https://h/p?a=1&{name}=***;b=2#x"),
                "{name}"
            );
        }
        for name in [
            "user", "host", "sslmode", "db", "author", "keyspace", "passfile",
        ] {
            let url = format!("https://h/p?{name}=v");
            assert_eq!(r(&url), url, "{name}");
        }
        // Fragments, empty and missing values.
        assert_eq!(r("https://h/#token=abc&x=1"), "https://h/#token=***&x=1");
        assert_eq!(
            r("https://h/?password=&password"),
            "https://h/?password=&password"
        );
        assert_eq!(r("https://h?token=t"), "https://h?token=***");
    }

    #[test]
    fn libpq_key_value_strings() {
        assert_eq!(
            r("host=db user=app password=s3cret dbname=app"),
            "host=db user=app password=*** dbname=app"
        );
        assert_eq!(
            r(r"host=db password = 'it\'s secret' dbname=app"),
            "host=db password = *** dbname=app"
        );
        assert_eq!(
            r("password='a b' sslpassword=c\tPASSWORD=d"),
            "password=*** sslpassword=***\tPASSWORD=***"
        );
        assert_eq!(r(r"password=a\ b user=x"), "password=*** user=x");
        // As libpq reads it: the value after `= ` is `user=x`.
        assert_eq!(r("password= user=x"), "password= ***");
        assert_eq!(r("password=''"), "password=''");
        // Unterminated quotes and stray words do not panic or leak.
        assert_eq!(r("password='abc"), "password=***");
        assert_eq!(r("word host=x password"), "word host=x password");
        assert_eq!(r("password=x\\"), "password=***");
        assert_eq!(r("info,cable_core=debug"), "info,cable_core=debug");
        assert_eq!(r("memory"), "memory");
        assert_eq!(r(""), "");
    }

    #[test]
    fn odd_input_never_panics() {
        for s in [
            "://",
            "a://",
            "a://@",
            "a://:@",
            "a://?",
            "a://#",
            "a://h?&&=;",
            "%",
            "%4",
            "%zz=1",
            "é://x",
            "x://é:é@é/é?é=é",
            "=",
            "==",
            "'",
            "k='\\",
            "k=\\",
        ] {
            let _ = r(s);
        }
        assert_eq!(r("x://é:é@é/?tokén=é"), "x://é:***@é/?tokén=é");
        assert_eq!(r("x://h/?mytoken=é"), "x://h/?mytoken=***");
    }
}
