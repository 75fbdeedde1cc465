//! Rails' mapping from a stream to a PostgreSQL channel name, and SQL quoting.

use std::fmt::Write as _;

use sha1::{Digest, Sha1};

/// PostgreSQL's NAMEDATALEN - 1: the longest identifier, in bytes, and the
/// longest channel name, in characters, that Rails uses as is.
pub(crate) const MAX_IDENTIFIER: usize = 63;

/// The channel for `stream`, as Rails' `channel_identifier` computes it:
/// `<prefix>:<stream>` (or `stream` without a prefix), or the SHA1 of that in
/// 40 lowercase hex characters when it has more than 63 characters.
///
/// A name of at most 63 characters but more than 63 bytes (non-ASCII) is cut
/// at the last character boundary within 63 bytes, as PostgreSQL cuts the
/// quoted identifier of Rails' `LISTEN` and `NOTIFY`, so both sides meet on
/// the same name.
pub(crate) fn channel_name(prefix: Option<&str>, stream: &str) -> String {
    let full = match prefix {
        Some(p) => format!("{p}:{stream}"),
        None => stream.to_owned(),
    };
    if full.chars().count() > MAX_IDENTIFIER {
        return sha1_hex(&full);
    }
    clip(full)
}

fn sha1_hex(text: &str) -> String {
    let digest = Sha1::digest(text.as_bytes());
    let mut hex = String::with_capacity(40);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// `name` cut to at most 63 bytes on a character boundary.
fn clip(mut name: String) -> String {
    if name.len() > MAX_IDENTIFIER {
        let mut end = MAX_IDENTIFIER;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// `name` as a double-quoted SQL identifier (embedded quotes doubled), so the
/// channel is case-sensitive and exact, as Rails' `escape_identifier`.
pub(crate) fn quote_identifier(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Why PostgreSQL could not take `channel` at all (checked before sending, so
/// that a bad name fails alone and never looks like a broken connection).
pub(crate) fn unusable(channel: &str) -> Option<&'static str> {
    if channel.is_empty() {
        Some("an empty channel name")
    } else if channel.contains('\0') {
        Some("a NUL character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_joined_with_a_colon() {
        assert_eq!(channel_name(Some("app"), "room"), "app:room");
        assert_eq!(channel_name(None, "room"), "room");
        // Rails' `[prefix, name].compact.join(":")`.
        assert_eq!(channel_name(Some(""), "room"), ":room");
    }

    #[test]
    fn longer_than_63_characters_is_sha1() {
        let exactly_63 = format!("app:{}", "x".repeat(59));
        assert_eq!(exactly_63.len(), 63);
        assert_eq!(channel_name(Some("app"), &"x".repeat(59)), exactly_63);
        let name = channel_name(Some("app"), &"x".repeat(60));
        // `printf 'app:%s' $(printf 'x%.0s' $(seq 60)) | sha1sum`
        assert_eq!(name, "2f5413f316a436d2adb96e20c451304bec0efb5a");
        assert_eq!(name.len(), 40);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // The FIPS 180 test vector.
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn characters_count_not_bytes_then_postgres_clips_bytes() {
        // 40 characters, 80 bytes: Rails keeps the name; PostgreSQL cuts the
        // identifier to 63 bytes on a character boundary.
        let stream = "é".repeat(40);
        let name = channel_name(None, &stream);
        assert_eq!(name, "é".repeat(31));
        assert_eq!(name.len(), 62);
        // 64 characters of which some are multi-byte: SHA1 of the UTF-8 bytes.
        let long = format!("{}{}", "é".repeat(4), "x".repeat(60));
        assert_eq!(channel_name(None, &long), sha1_hex(&long));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("app:room"), r#""app:room""#);
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_identifier("Mixed Case;--"), r#""Mixed Case;--""#);
    }

    #[test]
    fn unusable_names() {
        assert!(unusable("").is_some());
        assert!(unusable("a\0b").is_some());
        assert!(unusable("a b").is_none());
    }
}
