//! The keys AnyCable derives from its application secret (`secret`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The bearer key of `POST /_broadcast` that AnyCable derives from its
/// application secret when `broadcast_key` is not set:
/// hex(HMAC-SHA256(secret, "broadcast-cable")). Publishers (anycable-rails,
/// `@anycable/serverless-js`) derive the same, so one secret serves both.
pub fn broadcast_key(secret: &str) -> String {
    derived_key(secret, "broadcast-cable")
}

/// The bearer key of AnyCable's REST API (`/api/presence/...`,
/// `/api/publish`) that AnyCable derives from its application secret when
/// `api_secret` is not set: hex(HMAC-SHA256(secret, "api-cable")).
pub fn api_key(secret: &str) -> String {
    derived_key(secret, "api-cable")
}

/// hex(HMAC-SHA256(secret, phrase)), AnyCable's derivation of a component's
/// key from the application secret.
fn derived_key(secret: &str, phrase: &str) -> String {
    // HMAC takes a key of any length: this never fails.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(phrase.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn broadcast_key_matches_openssl() {
        // printf broadcast-cable | openssl dgst -sha256 -hmac anycable-test-secret-1234
        assert_eq!(
            super::broadcast_key("anycable-test-secret-1234"),
            "02c287a8ee5b4cb72d4af3ad9ae444a08c570bb9a2ea6090934cbca3f582e5bb"
        );
    }

    #[test]
    fn api_key_is_the_other_phrase() {
        // printf api-cable | openssl dgst -sha256 -hmac anycable-test-secret-1234
        assert_eq!(
            super::api_key("anycable-test-secret-1234"),
            "f02d8886b6fa13e227286abe63fcdef7fd6fda55997da5cdf0068fa8d8983723"
        );
    }
}
