//! Rails' broadcasting names: `channel_name` and `broadcasting_for`.

use std::fmt::Write;

/// Rails' `channel_name`: the class name without its `Channel` suffix, with
/// `::` turned into `:`, underscored.
///
/// ```
/// use cable_core::channel_name;
/// assert_eq!(channel_name("ChatChannel"), "chat");
/// assert_eq!(channel_name("Chat::RoomChannel"), "chat:room");
/// assert_eq!(channel_name("WebNotificationsChannel"), "web_notifications");
/// ```
pub fn channel_name(class_name: &str) -> String {
    let base = class_name.strip_suffix("Channel").unwrap_or(class_name);
    underscore(&base.replace("::", ":"))
}

/// ActiveSupport's `underscore` (without acronym inflections).
fn underscore(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            // "aB" -> "a_b"; "ABc" -> "a_bc" (end of an acronym)
            if prev.is_ascii_lowercase()
                || prev.is_ascii_digit()
                || (prev.is_ascii_uppercase() && next_lower)
            {
                out.push('_');
            }
        }
        out.push(if c == '-' {
            '_'
        } else {
            c.to_ascii_lowercase()
        });
    }
    out
}

/// A value that can name a broadcasting, like Ruby's `to_param`: strings and
/// numbers as they are, sequences joined with `:`.
pub trait ToParam {
    /// Appends this value's part of a broadcasting name.
    fn write_param(&self, out: &mut String);
}

impl ToParam for str {
    fn write_param(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl ToParam for String {
    fn write_param(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl<T: ToParam + ?Sized> ToParam for &T {
    fn write_param(&self, out: &mut String) {
        (**self).write_param(out);
    }
}

impl<T: ToParam> ToParam for Option<T> {
    fn write_param(&self, out: &mut String) {
        if let Some(v) = self {
            v.write_param(out);
        }
    }
}

impl<T: ToParam> ToParam for [T] {
    fn write_param(&self, out: &mut String) {
        for (i, v) in self.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            v.write_param(out);
        }
    }
}

impl<T: ToParam> ToParam for Vec<T> {
    fn write_param(&self, out: &mut String) {
        self.as_slice().write_param(out);
    }
}

impl<T: ToParam, const N: usize> ToParam for [T; N] {
    fn write_param(&self, out: &mut String) {
        self.as_slice().write_param(out);
    }
}

macro_rules! display_param {
    ($($t:ty),*) => {$(
        impl ToParam for $t {
            fn write_param(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
display_param!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize, bool, char);

macro_rules! tuple_param {
    ($first:ident $(, $rest:ident)*) => {
        impl<$first: ToParam, $($rest: ToParam),*> ToParam for ($first, $($rest),*) {
            #[allow(non_snake_case)]
            fn write_param(&self, out: &mut String) {
                let ($first, $($rest),*) = self;
                $first.write_param(out);
                $( out.push(':'); $rest.write_param(out); )*
            }
        }
    };
}
tuple_param!(A, B);
tuple_param!(A, B, C);
tuple_param!(A, B, C, D);

/// Rails' `broadcasting_for`: `<channel_name>:<param>`.
///
/// ```
/// use cable_core::broadcasting_for;
/// assert_eq!(broadcasting_for("ChatChannel", &42), "chat:42");
/// assert_eq!(broadcasting_for("ChatChannel", &("room", 1, "messages")), "chat:room:1:messages");
/// ```
pub fn broadcasting_for<K: ToParam + ?Sized>(class_name: &str, key: &K) -> String {
    let mut out = channel_name(class_name);
    out.push(':');
    key.write_param(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_like_active_support() {
        assert_eq!(channel_name("HTMLParserChannel"), "html_parser");
        assert_eq!(channel_name("Admin::V2NotesChannel"), "admin:v2_notes");
        assert_eq!(channel_name("Benchmark"), "benchmark");
        assert_eq!(broadcasting_for("ChatChannel", &vec!["a", "b"]), "chat:a:b");
        assert_eq!(broadcasting_for("ChatChannel", &None::<u8>), "chat:");
    }
}
