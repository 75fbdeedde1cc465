//! shared/reference/rails-cookie-vectors.json: cookies made by real Rails 6.1
//! for the project, under two profiles (6.1 with SHA1 keys, 7.0-style SHA256).

use cable_core::ConnectRequest;
use cable_rails::{CookieJar, HmacDigest, KeyDigest, KeyGenerator};

use crate::support::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn shared_reference_cookie_vectors() {
    let Some(reference) = shared_reference() else {
        return;
    };
    let secret = str_of(&reference, "secret_key_base");
    let salts = &reference["key_derivation"]["salts"];
    let lengths = &reference["key_derivation"]["key_lengths"];
    let mut checked = 0;
    for profile in reference["profiles"].as_array().unwrap() {
        let digest: KeyDigest = str_of(profile, "kdf_digest").parse().unwrap();
        let keys = KeyGenerator::new(secret, digest);
        for (which, expected) in profile["derived_keys_hex"].as_object().unwrap() {
            let salt = str_of(salts, which);
            let len = lengths[which].as_u64().unwrap() as usize;
            assert_eq!(&hex(&keys.generate_key(salt, len)), expected, "{which}");
        }
        // Only this profile's digest, so a pass proves the derivation.
        let jar = CookieJar::new(&[secret], &[digest], HmacDigest::Sha1);
        for v in profile["vectors"].as_array().unwrap() {
            let name = str_of(v, "cookie_name");
            let header = format!("{name}={}", str_of(v, "cookie_header_value"));
            let req = ConnectRequest::new("/cable", None, vec![("Cookie".into(), header)], None);
            let value = req.cookie(name).unwrap();
            assert_eq!(value, str_of(v, "cookie_value"));
            let got = match str_of(v, "kind") {
                "signed" => jar.signed(name, value),
                _ => jar.encrypted(name, value),
            };
            assert_eq!(got.as_ref(), Ok(&v["value"]), "{} {v}", profile["name"]);
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}
