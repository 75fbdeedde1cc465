//! Everything Ruby made (tests/vectors/*.json, by make-vectors.rb) reads here
//! as it reads in Rails.

use std::time::{Duration, SystemTime};

use cable_core::{broadcasting_for, ConnectRequest};
use cable_rails::{
    CookieError, CookieJar, GlobalId, HmacDigest, KeyDigest, Rails, RailsConfig, SessionIdentifier,
    StreamVerifier,
};
use serde_json::Value;

use crate::support::*;

fn jar_for(v: &Value, secrets: &[String], kdfs: &[KeyDigest]) -> CookieJar {
    let digest: HmacDigest = str_of(v, "signed_digest").parse().unwrap();
    CookieJar::new(secrets, kdfs, digest)
}

fn read(jar: &CookieJar, v: &Value, value: &str, now: SystemTime) -> Result<Value, CookieError> {
    let name = str_of(v, "read_as");
    match str_of(v, "kind") {
        "signed" => jar.signed_at(name, value, now),
        "encrypted" => jar.encrypted_at(name, value, now),
        k => panic!("kind {k}"),
    }
}

/// What the browser sends, through cable-core's own Cookie parsing.
fn from_header(v: &Value) -> String {
    let name = str_of(v, "cookie_name");
    let header = format!("theme=dark; {name}={}", str_of(v, "cookie_header_value"));
    let req = ConnectRequest::new("/cable", None, vec![("Cookie".into(), header)], None);
    let value = req.cookie(name).unwrap().to_owned();
    assert_eq!(value, str_of(v, "cookie_value"), "percent-decoding");
    value
}

#[test]
fn every_rails_cookie_reads_as_rails_reads_it() {
    let secrets = [current_secret(), old_secret()];
    let mut seen = std::collections::BTreeSet::new();
    // Key derivation is slow in debug builds: one jar per profile.
    let mut jars = std::collections::HashMap::new();
    for v in cookies()["vectors"].as_array().unwrap() {
        let case = str_of(v, "case");
        seen.insert(case.to_owned());
        let jar = jars
            .entry(str_of(v, "profile"))
            .or_insert_with(|| jar_for(v, &secrets, &[kdf(v)]));
        let got = read(jar, v, &from_header(v), SystemTime::now());
        let label = format!("{} {} {case}", v["profile"], v["kind"]);
        match (str_of(v, "expect"), case) {
            ("ok", _) => assert_eq!(got.as_ref().ok(), Some(&v["value"]), "{label}: {got:?}"),
            ("marshal", _) => assert_eq!(got, Err(CookieError::MarshalSerialized), "{label}"),
            ("invalid", "expired") => {
                assert_eq!(
                    got,
                    Err(CookieError::Expired(str_of(v, "exp").into())),
                    "{label}"
                )
            }
            ("invalid", "wrong_purpose") => assert_eq!(
                got,
                Err(CookieError::WrongPurpose {
                    expected: "cookie.user_id".into(),
                    found: "cookie.other".into()
                }),
                "{label}"
            ),
            ("invalid", _) => assert!(
                matches!(
                    got,
                    Err(CookieError::InvalidSignature | CookieError::Malformed)
                ),
                "{label}: {got:?}"
            ),
            (e, _) => panic!("expect {e}"),
        }
    }
    // The script made every case for 3 profiles × signed/encrypted.
    for case in [
        "integer",
        "string",
        "object",
        "unicode",
        "expires_future",
        "expired",
        "wrong_purpose",
        "no_metadata",
        "old_secret",
        "marshal",
        "marshal_object",
        "hybrid_writes_json",
        "tampered_data",
        "tampered_digest",
        "truncated_digest",
        "tampered_iv",
        "tampered_tag",
        "missing_tag",
    ] {
        assert!(seen.contains(case), "no {case} vector");
    }
}

#[test]
fn rotation_over_secrets_and_key_digests() {
    let list = &cookies()["vectors"];
    for kind in ["signed", "encrypted"] {
        // Written with the old secret: only accepted while it is configured.
        let v = find(list, |v| {
            v["profile"] == "rails61" && v["kind"] == kind && v["case"] == "old_secret"
        });
        let value = str_of(v, "cookie_value");
        let now = SystemTime::now();
        let only_new = jar_for(v, &[current_secret()], &KeyDigest::ALL);
        assert_eq!(
            read(&only_new, v, value, now),
            Err(CookieError::InvalidSignature)
        );
        let rotated = jar_for(v, &[current_secret(), old_secret()], &KeyDigest::ALL);
        assert_eq!(read(&rotated, v, value, now).unwrap(), 42);

        // Rails 6.1 (SHA1) cookies under a 7.0 (SHA256) configuration that
        // still accepts SHA1, and the other way round.
        for (profile, written) in [("rails61", KeyDigest::Sha1), ("rails70", KeyDigest::Sha256)] {
            let v = find(list, |v| {
                v["profile"] == profile && v["kind"] == kind && v["case"] == "integer"
            });
            let value = str_of(v, "cookie_value");
            let both = jar_for(v, &[current_secret()], &KeyDigest::ALL);
            assert_eq!(read(&both, v, value, now).unwrap(), 42, "{profile}");
            let other = match written {
                KeyDigest::Sha1 => KeyDigest::Sha256,
                KeyDigest::Sha256 => KeyDigest::Sha1,
            };
            let wrong = jar_for(v, &[current_secret()], &[other]);
            assert_eq!(
                read(&wrong, v, value, now),
                Err(CookieError::InvalidSignature),
                "{profile}"
            );
        }
    }
    // A signed cookie made with HMAC-SHA256 needs signed_cookie_digest SHA256.
    let v = find(list, |v| {
        v["profile"] == "rails70_signed_sha256" && v["kind"] == "signed" && v["case"] == "integer"
    });
    let sha1 = CookieJar::new(&[current_secret()], &KeyDigest::ALL, HmacDigest::Sha1);
    assert_eq!(
        sha1.signed("user_id", str_of(v, "cookie_value")),
        Err(CookieError::InvalidSignature)
    );
}

#[test]
fn expiry_is_checked_against_the_clock() {
    let list = &cookies()["vectors"];
    let y2000 = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    let y2100 = SystemTime::UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    for kind in ["signed", "encrypted"] {
        let future = find(list, |v| {
            v["profile"] == "rails70" && v["kind"] == kind && v["case"] == "expires_future"
        });
        let past = find(list, |v| {
            v["profile"] == "rails70" && v["kind"] == kind && v["case"] == "expired"
        });
        let jar = jar_for(future, &[current_secret()], &KeyDigest::ALL);
        // Fresh before its exp, expired after; the expired one was fine in 2000.
        assert_eq!(
            read(&jar, future, str_of(future, "cookie_value"), y2000).unwrap(),
            42
        );
        assert!(matches!(
            read(&jar, future, str_of(future, "cookie_value"), y2100),
            Err(CookieError::Expired(_))
        ));
        assert_eq!(
            read(&jar, past, str_of(past, "cookie_value"), y2000).unwrap(),
            42
        );
    }
}

fn rails_for_sessions(identifiers: Vec<SessionIdentifier>) -> Rails {
    let mut c = RailsConfig::new(current_secret());
    c.session_cookie = Some(SESSION_COOKIE.into());
    c.identifiers = identifiers;
    c.global_id_app = Some("my-app".into());
    c.build().unwrap()
}

#[test]
fn sessions_written_by_the_rails_cookie_store() {
    let rails = rails_for_sessions(vec![
        "current_user=user_id".parse().unwrap(),
        "devise_user=warden:user as User".parse().unwrap(),
        "admin=warden:admin".parse().unwrap(),
    ]);
    for v in sessions()["vectors"].as_array().unwrap() {
        let case = str_of(v, "case");
        let header = format!("{SESSION_COOKIE}={}", str_of(v, "cookie_header_value"));
        let req = ConnectRequest::new("/cable", None, vec![("Cookie".into(), header)], None);
        let got = rails.session(&req);
        if v["expect"] == "marshal" {
            assert_eq!(got, Err(CookieError::MarshalSerialized), "{case}");
            continue;
        }
        let session = got.unwrap().expect("a session");
        assert_eq!(
            &Value::Object(session.as_map().clone()),
            &v["session"],
            "{case}"
        );
        assert_eq!(session.session_id().map(str::len), Some(32), "{case}");
        let ids = rails.identifiers_for(&session);
        match case {
            "user_id" | "expire_after" => {
                assert_eq!(session.user_id(), Some(v["session"]["user_id"].to_string()));
                assert_eq!(ids.get("current_user"), session.user_id().as_deref());
            }
            "warden" => {
                assert_eq!(session.warden_user_id("user").as_deref(), Some("42"));
                assert_eq!(
                    session.warden_salt("user"),
                    Some("$2a$12$abcdefghijklmnopqrstuv")
                );
                assert_eq!(
                    ids.get("devise_user"),
                    Some(GlobalId::new("my-app", "User", 42).to_param().as_str())
                );
                assert_eq!(ids.get("current_user"), None);
            }
            "warden_admin_scope" => {
                assert_eq!(ids.get("admin"), Some("9"));
                assert_eq!(ids.get("current_user"), Some("u-7"));
            }
            other => panic!("unexpected session case {other}"),
        }
    }
}

#[test]
fn session_expire_after_is_an_envelope_expiry() {
    let rails = rails_for_sessions(vec![]);
    let v = find(&sessions()["vectors"], |v| v["case"] == "expire_after");
    let value = str_of(v, "cookie_value");
    // expire_after 20 years: fine now, expired in 60 years.
    assert!(rails.read_session(value).is_ok());
    let later = SystemTime::now() + Duration::from_secs(60 * 366 * 86_400);
    assert!(matches!(
        rails.read_session_at(value, later),
        Err(CookieError::Expired(_))
    ));
    // The session is only valid as the session cookie (purpose).
    assert!(matches!(
        rails.cookies().encrypted("other_cookie", value),
        Err(CookieError::WrongPurpose { .. })
    ));
}

fn turbo_verifier_for(v: &Value) -> StreamVerifier {
    match str_of(v, "key") {
        "custom_key" => StreamVerifier::with_keys(&[str_of(streams(), "turbo_custom_key")]),
        _ => StreamVerifier::turbo(&[current_secret()], &[kdf(v)]),
    }
}

#[test]
fn turbo_signed_stream_names() {
    let mut ok = 0;
    for v in streams()["turbo"].as_array().unwrap() {
        let verifier = turbo_verifier_for(v);
        let signed = str_of(v, "signed_stream_name");
        let case = format!("{} {:?} {}", v["case"], v["kdf"], v["key"]);
        match str_of(v, "expect") {
            "ok" => {
                let name = str_of(v, "stream_name");
                assert_eq!(verifier.verify(signed).as_deref(), Ok(name), "{case}");
                // And we sign exactly as turbo-rails does.
                assert_eq!(verifier.sign(name), signed, "{case}");
                ok += 1;
            }
            _ => assert!(verifier.verify(signed).is_err(), "{case}"),
        }
    }
    assert_eq!(ok, 12);
    // The default configuration (both digests) accepts SHA1 and SHA256
    // keys; with config.turbo.signed_stream_verifier_key, only that key.
    let both = RailsConfig::new(current_secret()).build().unwrap();
    let mut custom = RailsConfig::new(current_secret());
    custom.turbo_verifier_key = Some(str_of(streams(), "turbo_custom_key").to_owned());
    let custom = custom.build().unwrap();
    for v in streams()["turbo"].as_array().unwrap() {
        let signed = str_of(v, "signed_stream_name");
        let ok = v["expect"] == "ok";
        assert_eq!(
            both.turbo_verifier().verify(signed).is_ok(),
            ok && v["key"] == "derived"
        );
        assert_eq!(
            custom.turbo_verifier().verify(signed).is_ok(),
            ok && v["key"] == "custom_key"
        );
    }
}

#[test]
fn anycable_signed_stream_names() {
    for v in streams()["pubsub"].as_array().unwrap() {
        let verifier = StreamVerifier::with_keys(&[str_of(v, "secret")]);
        let signed = str_of(v, "signed_stream_name");
        match str_of(v, "expect") {
            "ok" => {
                assert_eq!(
                    verifier.verify(signed).as_deref(),
                    Ok(str_of(v, "stream_name")),
                    "{v}"
                );
                if v["case"] == "strict_base64" {
                    assert_eq!(verifier.sign(str_of(v, "stream_name")), signed);
                }
            }
            _ => assert!(verifier.verify(signed).is_err(), "{v}"),
        }
    }
    // Without streams_secret, secret_key_base itself is the secret.
    let rails = RailsConfig::new(current_secret()).build().unwrap();
    let v = find(&streams()["pubsub"], |v| {
        v["case"] == "secret_key_base_as_secret"
    });
    assert_eq!(
        rails
            .pubsub_verifier()
            .verify(str_of(v, "signed_stream_name"))
            .as_deref(),
        Ok("chat/2024")
    );
}

#[test]
fn global_ids_and_broadcasting_names() {
    for v in global_ids()["vectors"].as_array().unwrap() {
        let gid = GlobalId::new(str_of(v, "app"), str_of(v, "model"), str_of(v, "id"));
        assert_eq!(gid.to_string(), str_of(v, "gid"));
        assert_eq!(gid.to_param(), str_of(v, "gid_param"));
        assert_eq!(
            GlobalId::from_param(str_of(v, "gid_param")),
            Some(gid.clone())
        );
        assert_eq!(str_of(v, "gid").parse::<GlobalId>().unwrap(), gid);
        assert_eq!(
            broadcasting_for("ChatChannel", &gid),
            str_of(v, "chat_broadcasting")
        );
        assert_eq!(
            broadcasting_for("ChatChannel", &(&gid, "messages")),
            str_of(v, "chat_messages_broadcasting")
        );
        assert_eq!(
            broadcasting_for("Chat::RoomChannel", &gid),
            str_of(v, "room_channel_broadcasting")
        );
    }
    // Turbo's names for models (turbo_stream_from @room, :messages).
    let v = find(&streams()["turbo"], |v| v["case"] == "model_and_symbol");
    let room = GlobalId::new("my-app", "Room", 1);
    assert_eq!(
        cable_rails::turbo_stream_name(&(&room, "messages")),
        str_of(v, "stream_name")
    );
}
