//! Random ids: session ids (21 URL-safe characters, as AnyCable's) and
//! broker epochs.
//!
//! No random-number crate: std's `RandomState` carries keys from the
//! operating system's randomness, and SipHash keyed with them over a
//! counter gives bits an outsider cannot predict (a session id lets its
//! holder resume a session, so it must not be guessable).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A random id of `len` characters from the URL-safe alphabet (A-Z, a-z, 0-9, `_`, `-`).
pub(crate) fn random_id(len: usize) -> String {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let keys = KEYS.get_or_init(RandomState::new);
    let mut out = String::with_capacity(len);
    let mut bits = 0u64;
    let mut left = 0;
    while out.len() < len {
        if left < 6 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            bits = keys.hash_one(n);
            left = 64;
        }
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
        left -= 6;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_length_and_alphabet_asked_and_differ() {
        let a = random_id(21);
        let b = random_id(21);
        assert_eq!(a.len(), 21);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)));
        assert_ne!(a, b);
        assert_eq!(random_id(4).len(), 4);
    }
}
