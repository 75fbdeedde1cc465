//! JSON encoding that matches `ActiveSupport::JSON` byte for byte.
//!
//! Rails escapes `<`, `>` and `&` (and, before `load_defaults 8.1`, U+2028 and
//! U+2029) in every string it encodes, and emits compact JSON. The JS client
//! does not care, but Rails-identical bytes make differential testing against a
//! real Rails server possible and keep frames safe to embed in HTML.

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter};
use std::io;

/// A `serde_json` formatter that escapes the way `ActiveSupport::JSON` does.
#[derive(Clone, Copy, Debug, Default)]
struct RailsFormatter;

impl Formatter for RailsFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            let esc: &[u8] = match ch {
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '&' => b"\\u0026",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc)?;
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        // serde_json's defaults already match Ruby for \" \\ \n \r \t \b \f and
        // \u00XX control characters; only the case of hex digits is checked here.
        serde_json::ser::CompactFormatter.write_char_escape(writer, char_escape)
    }
}

/// Appends `value` to `out` as Rails-compatible compact JSON.
pub(crate) fn write_value<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), serde_json::Error> {
    let mut ser = serde_json::Serializer::with_formatter(out, RailsFormatter);
    value.serialize(&mut ser)
}

/// Encodes `value` as Rails-compatible compact JSON.
///
/// ```
/// let s = cable_core::json::encode(&serde_json::json!({"html": "<p>&amp;</p>"})).unwrap();
/// assert_eq!(s, r#"{"html":"\u003cp\u003e\u0026amp;\u003c/p\u003e"}"#);
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value)?;
    // The formatter only ever writes UTF-8 (serde_json guarantees it for its
    // own output and our escapes are ASCII).
    String::from_utf8(out).map_err(|e| serde::ser::Error::custom(e.to_string()))
}

/// Appends a JSON string literal for `s` to `out`.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serializing a &str into a Vec cannot fail.
    let _ = write_value(out, s);
}

/// Re-encodes a JSON text the way Rails' stream handler does: decode, then
/// encode again (compact, Rails escaping, key order preserved).
///
/// ```
/// let s = cable_core::json::reencode(r#"{ "b": 1, "a": "<x>" }"#).unwrap();
/// assert_eq!(s, r#"{"b":1,"a":"\u003cx\u003e"}"#);
/// ```
pub fn reencode(text: &str) -> Result<String, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    encode(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_active_support_vectors() {
        assert_eq!(encode(&json!({"a": 1})).unwrap(), r#"{"a":1}"#);
        assert_eq!(encode(&json!("hello")).unwrap(), r#""hello""#);
        assert_eq!(
            encode(&json!({"html": "<p>&amp;</p>"})).unwrap(),
            r#"{"html":"\u003cp\u003e\u0026amp;\u003c/p\u003e"}"#
        );
        assert_eq!(
            encode(&json!("a\u{2028}b\u{2029}c")).unwrap(),
            r#""a\u2028b\u2029c""#
        );
        assert_eq!(
            encode(&json!("q\"\\\n\u{1}é")).unwrap(),
            "\"q\\\"\\\\\\n\\u0001é\""
        );
    }

    #[test]
    fn reencode_keeps_key_order_and_rejects_garbage() {
        assert_eq!(
            reencode(r#"{"z":1,"a":{"y":[1,2],"b":null}}"#).unwrap(),
            r#"{"z":1,"a":{"y":[1,2],"b":null}}"#
        );
        assert!(reencode("{nope").is_err());
        assert!(reencode("").is_err());
    }
}
