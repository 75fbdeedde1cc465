//! cable-anycable's integration tests: JWT identification through the
//! connection state machine (no sockets; the socket path is tested with
//! `@anycable/web` in tests/node).

use std::time::Duration;

use cable_anycable::{JwtAuth, JwtConfig, JwtConfigError};
use cable_core::{authenticate_with, Cable, ConnectRequest, Identifiers, Unauthorized};
use cable_test::{frames, Request, TestCable};

const SECRET: &str = "anycable-test-secret";

fn cable(auth: impl cable_core::Authenticate) -> TestCable {
    TestCable::new(Cable::builder().authenticate(auth))
}

fn jwt(enforce: bool) -> JwtAuth {
    JwtAuth::new(JwtConfig::new(SECRET).enforce(enforce)).expect("valid config")
}

fn ids() -> Identifiers {
    Identifiers::new()
        .with("user_id", "42")
        .with("room", "lobby")
}

/// base64url without padding, as JWT segments are.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// An unsigned token (`alg: none`) with these claims.
fn unsigned(claims: &str) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.as_bytes())
    )
}

async fn assert_refused(cable: &TestCable, request: Request, reason: &str) {
    let rejected = match cable.connect(request).await {
        Ok(c) => panic!("accepted as {:?}", c.identifiers()),
        Err(r) => r,
    };
    assert_eq!(rejected.frames, [frames::disconnect(reason, false)]);
}

#[tokio::test]
async fn a_token_identifies_the_connection_from_each_place_it_may_come() {
    let auth = jwt(true);
    let token = auth.issue(&ids(), Duration::from_secs(60)).unwrap();
    let cable = cable(auth);
    let places = [
        ("query", Request::new().query("jid", &token)),
        ("header", Request::new().header("X-JID", token.clone())),
        (
            "subprotocol",
            Request::new()
                .header(
                    "Sec-WebSocket-Protocol",
                    format!("actioncable-v1-ext-json, anycable-token.{token}"),
                )
                .ext(),
        ),
    ];
    for (place, request) in places {
        let conn = match cable.connect(request).await {
            Ok(c) => c,
            Err(e) => panic!("token in the {place} refused: {e}"),
        };
        assert_eq!(conn.identified("user_id").as_deref(), Some("42"), "{place}");
        assert_eq!(conn.identified("room").as_deref(), Some("lobby"), "{place}");
    }
}

#[test]
fn identifiers_that_are_not_strings_keep_their_json_text() {
    // What Ruby's `JWT.encode({ext: {user_id: 42, admin: true}.to_json}, key)`
    // makes.
    let token = sign_hs256(r#"{"ext":"{\"user_id\":42,\"admin\":true,\"name\":\"Ann\"}"}"#);
    let identifiers = jwt(true).verify(&token).unwrap();
    assert_eq!(identifiers.get("user_id"), Some("42"));
    assert_eq!(identifiers.get("admin"), Some("true"));
    assert_eq!(identifiers.get("name"), Some("Ann"));
    let unsigned = unsigned(r#"{"ext":"{\"user_id\":42}"}"#);
    assert!(
        jwt(true).verify(&unsigned).is_err(),
        "alg none must be refused"
    );
}

#[tokio::test]
async fn an_expired_token_is_token_expired_and_a_bad_one_unauthorized() {
    let auth = jwt(false);
    let expired = {
        // `exp` one second in the past.
        let other = jwt(false);
        let t = other.issue(&ids(), Duration::ZERO).unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        t
    };
    let foreign = JwtAuth::new(JwtConfig::new("another-secret"))
        .unwrap()
        .issue(&ids(), Duration::from_secs(60))
        .unwrap();
    let good = auth.issue(&ids(), Duration::from_secs(60)).unwrap();
    let tampered = {
        let mut parts: Vec<&str> = good.split('.').collect();
        let payload = b64(br#"{"ext":"{\"user_id\":\"1\"}","exp":4102444800}"#);
        parts[1] = &payload;
        parts.join(".")
    };
    let cable = cable(auth);
    assert_refused(
        &cable,
        Request::new().query("jid", &expired),
        "token_expired",
    )
    .await;
    for (what, token) in [
        ("another key", foreign),
        ("a tampered payload", tampered),
        ("alg none", unsigned(r#"{"ext":"{\"user_id\":\"1\"}"}"#)),
        ("not a JWT", "garbage".to_owned()),
    ] {
        eprintln!("case: {what}");
        assert_refused(&cable, Request::new().query("jid", &token), "unauthorized").await;
    }
    assert_eq!(cable.cable().stats().unauthorized, 5);
}

#[tokio::test]
async fn a_token_without_identifiers_is_refused() {
    // Signed with the right key, but ext missing, not a string, or not an
    // object: AnyCable refuses all three.
    let auth = jwt(false);
    for claims in [r#"{}"#, r#"{"ext":{"user_id":"1"}}"#, r#"{"ext":"[1,2]"}"#] {
        let token = sign_hs256(claims);
        let e = auth.verify(&token).expect_err(claims);
        assert!(!e.expired, "{claims}: {e}");
    }
    assert!(auth
        .verify(&sign_hs256(r#"{"ext":"{\"user_id\":\"1\"}"}"#))
        .is_ok());
}

/// HS256 over `claims` with [`SECRET`], through the issuing side of the
/// crate's own JWT library (claims written as given, not re-encoded).
fn sign_hs256(claims: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(claims).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &value,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn without_a_token_enforce_refuses_and_otherwise_the_fallback_decides() {
    assert_refused(&cable(jwt(true)), Request::new(), "unauthorized").await;

    let open = cable(jwt(false));
    let anonymous = open.connect(Request::new()).await.expect("AllowAll");
    assert!(anonymous.identifiers().is_empty());

    let fallback = jwt(false).or_else(authenticate_with(|req: ConnectRequest| async move {
        match req.cookie("user") {
            Some(u) => Ok(Identifiers::new().with("user_id", u)),
            None => Err(Unauthorized::because("no cookie")),
        }
    }));
    let token = fallback.issue(&ids(), Duration::from_secs(60)).unwrap();
    let cable = cable(fallback);
    let by_cookie = cable
        .connect(Request::new().cookie("user", "7"))
        .await
        .expect("cookie");
    assert_eq!(by_cookie.identified("user_id").as_deref(), Some("7"));
    let by_token = cable
        .connect(Request::new().query("jid", &token).cookie("user", "7"))
        .await
        .expect("token wins");
    assert_eq!(by_token.identified("user_id").as_deref(), Some("42"));
    assert_refused(&cable, Request::new(), "unauthorized").await;
}

#[test]
fn settings_are_checked() {
    assert!(matches!(
        JwtAuth::new(JwtConfig::new("")),
        Err(JwtConfigError::EmptySecret)
    ));
    assert!(matches!(
        JwtAuth::new(JwtConfig::new("s").param("a b")),
        Err(JwtConfigError::BadParam(_))
    ));
    let auth = JwtAuth::new(JwtConfig::new("s3cr3t-value").param("token")).unwrap();
    assert!(!format!("{auth:?}").contains("s3cr3t"));
    let t = auth.issue(&ids(), Duration::from_secs(60)).unwrap();
    let req = Request::new().header("X-Token", t.clone()).build();
    assert_eq!(auth.token(&req), Some(t.as_str()));
    assert_eq!(auth.token(&Request::new().query("jid", &t).build()), None);
}
