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

    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(ruby_float(value).as_bytes())
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        // Ruby has only doubles; keep f32's own shortest digits.
        writer.write_all(
            ruby_float_digits(&format!("{:e}", value.abs()), value.is_sign_negative()).as_bytes(),
        )
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

/// A finite float as Ruby's `Float#to_s` writes it (what `ActiveSupport::JSON`
/// emits): the shortest round-trip digits, in plain notation when the decimal
/// point falls within them or up to 15 digits out (`100000000000000.0`,
/// `0.0001`), otherwise `d.ddde+XX` with at least two exponent digits
/// (`1.0e+15`, `1.0e-05`).
fn ruby_float(value: f64) -> String {
    ruby_float_digits(&format!("{:e}", value.abs()), value.is_sign_negative())
}

/// `sci` is Rust's shortest `{:e}` form of the absolute value (`1.5e-7`).
fn ruby_float_digits(sci: &str, negative: bool) -> String {
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digs = digits.len() as i32;
    // Ruby's decpt: where the decimal point goes relative to the digits.
    let decpt = exp + 1;
    let mut out = String::with_capacity(digits.len() + 8);
    if negative {
        out.push('-');
    }
    let fixed = if decpt > 0 {
        decpt <= 15 || (decpt == 16 && digs > 16)
    } else {
        decpt > -4
    };
    if fixed && decpt > 0 {
        if digs <= decpt {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - digs) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else if fixed {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if digs > 1 { &digits[1..] } else { "0" });
        let e = decpt - 1;
        out.push_str(&format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()));
    }
    out
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

    /// Ruby 3.1's `Float#to_s` (what ActiveSupport::JSON writes) for these
    /// doubles, given by their bits; made with
    /// `ruby -e 'puts vals.map { |v| [v.to_s, [v].pack("G").unpack1("H*")].join(" ") }'`.
    #[test]
    fn floats_are_written_as_ruby_writes_them() {
        let cases = [
            ("0000000000000000", "0.0"),
            ("8000000000000000", "-0.0"),
            ("3ff0000000000000", "1.0"),
            ("c004000000000000", "-2.5"),
            ("3fb999999999999a", "0.1"),
            ("3fe0000000000000", "0.5"),
            ("42d6bcc41e900000", "100000000000000.0"),
            ("430c6bf526340000", "1.0e+15"),
            ("431550f7dca70000", "1.5e+15"),
            ("43118b54f22aeb03", "1234567890123456.8"),
            ("4340000000000000", "9.007199254740992e+15"),
            ("4341c37937e08000", "1.0e+16"),
            ("4480f0cf064dd592", "1.0e+22"),
            ("54b249ad2594c37d", "1.0e+100"),
            ("7fefffffffffffff", "1.7976931348623157e+308"),
            ("0000000000000001", "5.0e-324"),
            ("0010000000000000", "2.2250738585072014e-308"),
            ("3f50624dd2f1a9fc", "0.001"),
            ("3f1a36e2eb1c432d", "0.0001"),
            ("3f202e4b6ce5dc68", "0.00012345"),
            ("3ee4f8b588e368f1", "1.0e-05"),
            ("3e8421f5f40d8376", "1.5e-07"),
            ("3e7ad7f29abcaf48", "1.0e-07"),
            ("405edd2f1a9fbe77", "123.456"),
            ("3fd5555555555555", "0.3333333333333333"),
            ("3fe5555555555555", "0.6666666666666666"),
            ("4059000000000000", "100.0"),
            ("42a2309ce5400100", "10000000000000.5"),
            ("42d6bcc41e8fffff", "99999999999999.98"),
            ("430c6bf52633ffff", "999999999999999.9"),
            ("3fd3333333333334", "0.30000000000000004"),
            ("bddb7cdfd9d7bdbb", "-1.0e-10"),
            ("c0fe240c9fbe76c9", "-123456.789"),
            ("400921f9f01b866e", "3.14159"),
            ("44dfe185ca57c517", "6.02214076e+23"),
        ];
        for (bits, ruby) in cases {
            let v = f64::from_bits(u64::from_str_radix(bits, 16).unwrap());
            assert_eq!(super::ruby_float(v), ruby, "{v:e}");
            assert_eq!(encode(&v).unwrap(), ruby);
        }
        assert_eq!(
            reencode(r#"{"big":1e20,"small":1e-7,"round":1e15,"n":1.5}"#).unwrap(),
            r#"{"big":1.0e+20,"small":1.0e-07,"round":1.0e+15,"n":1.5}"#
        );
        assert_eq!(encode(&f64::NAN).unwrap(), "null");
    }

    /// Found by the `command_parse` fuzz target: serde_json's default float
    /// parser is not correctly rounded, so `-2.5e-30` was decoded one ULP
    /// off and re-encoded as `-2.5000000000000002e-30` (Ruby keeps
    /// `-2.5e-30`). cable-core enables serde_json's `float_roundtrip`.
    #[test]
    fn reencoded_floats_keep_their_value() {
        for text in ["-2.5e-30", "2.5e-30", "[1,-2.5e-30,0.1]"] {
            assert_eq!(reencode(text).unwrap(), text);
        }
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
