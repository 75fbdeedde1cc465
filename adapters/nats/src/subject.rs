//! Stream names to NATS subjects, injectively.
//!
//! A NATS subject is dot-separated tokens; a token may not be empty, a
//! token `*` or `>` is a wildcard, and whitespace ends the protocol word.
//! Cable stream names are arbitrary strings (`chat:1`, `action_cable/gid://app/User/1`,
//! `a.b`, `with space`, the empty string), so each stream becomes exactly
//! one token, percent-encoded:
//!
//! - the printable ASCII characters `!` to `~` stay as they are, except
//!   `.`, `*`, `>` and `%`;
//! - those four, space, control characters and every byte of a non-ASCII
//!   character become `%XX` (the byte in two upper-case hex digits);
//! - the empty stream is the token `%` alone, which no other stream gives
//!   (elsewhere `%` is always followed by two hex digits).
//!
//! Distinct streams give distinct tokens (decoding, [`stream_of`], undoes
//! the encoding), and the token never contains `.`, so a stream's subject
//! (`<prefix>.<token>`, or the token alone without a prefix) is never a
//! wildcard and never another stream's.

use std::fmt::Write;

/// Longest subject accepted. nats-server's default `max_control_line` is
/// 4096 bytes, and a `SUB`/`PUB` line longer than that makes it close the
/// connection: a stream whose subject would be longer is refused here
/// instead of breaking the connection every other stream shares.
pub const MAX_SUBJECT_BYTES: usize = 4000;

fn literal(b: u8) -> bool {
    matches!(b, b'!'..=b'~') && !matches!(b, b'.' | b'*' | b'>' | b'%')
}

/// The one subject token for `stream` (see the module docs).
pub fn token(stream: &str) -> String {
    if stream.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(stream.len());
    for &b in stream.as_bytes() {
        if literal(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The stream whose [`token`] is `token`, or None if no stream gives it.
pub fn stream_of(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    if token.is_empty() {
        return None;
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = token.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| matches!(h, b'0'..=b'9' | b'A'..=b'F')) {
                return None;
            }
            let decoded = u8::from_str_radix(hex, 16).ok()?;
            // A literal byte written escaped is no encoding's output.
            if literal(decoded) {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else if literal(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a subject prefix is unusable, or None if it is fine: non-empty
/// tokens of printable ASCII, no wildcard token (`*`, `>`).
pub(crate) fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.is_empty() {
        return Some("it is empty (leave the prefix unset instead)");
    }
    if !prefix.bytes().all(|b| matches!(b, b'!'..=b'~')) {
        return Some("it may only contain printable ASCII, no spaces");
    }
    for t in prefix.split('.') {
        if t.is_empty() {
            return Some("it has an empty token (a leading, trailing or doubled `.`)");
        }
        if t == "*" || t == ">" {
            return Some("it has a wildcard token (`*` or `>`)");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_their_own_token() {
        for s in [
            "chat_lobby",
            "chat:1",
            "action_cable/gid://app/User/1",
            "a-b_c~!",
        ] {
            assert_eq!(token(s), s);
        }
    }

    #[test]
    fn what_subjects_cannot_take_is_escaped_into_one_token() {
        assert_eq!(token(""), "%");
        assert_eq!(token("a.b"), "a%2Eb");
        assert_eq!(token("."), "%2E");
        assert_eq!(token("*"), "%2A");
        assert_eq!(token(">"), "%3E");
        assert_eq!(token("with space"), "with%20space");
        assert_eq!(token("tab\tnl\r\n"), "tab%09nl%0D%0A");
        assert_eq!(token("100%"), "100%25");
        assert_eq!(token("é"), "%C3%A9");
        for s in [
            "", ".", "..", "a..b", ".a.", "*", ">", "a.*", "a.>", " ", "é x",
        ] {
            let t = token(s);
            assert!(!t.contains(['.', ' ', '\t', '\r', '\n']), "{s:?} -> {t:?}");
            assert!(!t.is_empty() && t != "*" && t != ">", "{s:?} -> {t:?}");
        }
    }

    #[test]
    fn the_mapping_is_injective() {
        // Decoding undoes encoding, so no two streams share a token; the
        // pairs below would collide under a naive escape.
        let streams = [
            "", "%", "%25", "%2E", ".", "a.b", "a%2Eb", "a b", "a%20b", "\0", "%00", "%%", "é",
            "%C3%A9", "x*", "x>", "~", "a/b:c",
        ];
        let mut tokens = std::collections::HashSet::new();
        for s in streams {
            let t = token(s);
            assert_eq!(stream_of(&t).as_deref(), Some(s), "{s:?} -> {t:?}");
            assert!(tokens.insert(t.clone()), "{s:?} shares token {t:?}");
        }
        // Tokens no stream gives.
        for t in ["", "%2", "%zz", "%41", "a b", "a.b", "%2e"] {
            assert_eq!(stream_of(t), None, "{t:?}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(prefix_problem("cable"), None);
        assert_eq!(prefix_problem("app.cable_1"), None);
        for bad in ["", ".a", "a.", "a..b", "a.*", ">", "a b", "é"] {
            assert!(prefix_problem(bad).is_some(), "{bad:?}");
        }
    }
}
