use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::json;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn verifier() -> Verifier {
    Verifier::new(&config::Auth {
        hs256_secret: SecretString::from(SECRET),
        leeway: Duration::from_secs(5),
    })
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn sign(claims: &serde_json::Value) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn minted_token_verifies_with_sub_and_tier() {
    let token = mint_hs256(
        SECRET.as_bytes(),
        "user-1",
        Some("pro"),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(
        verifier().verify(&token),
        Ok(Caller {
            sub: "user-1".into(),
            tier: Some("pro".into())
        })
    );
}

#[test]
fn expired_token_past_leeway_is_expired() {
    let token = sign(&json!({"sub": "u", "exp": now() - 30}));
    assert_eq!(verifier().verify(&token), Err(AuthError::Expired));
}

#[test]
fn token_without_exp_or_sub_or_with_odd_claims_is_invalid() {
    for claims in [
        json!({"sub": "u"}),
        json!({"exp": now() + 60}),
        json!({"sub": "", "exp": now() + 60}),
        json!({"sub": 123, "exp": now() + 60}),
        json!({"sub": "u", "exp": "9999999999"}),
        json!({"sub": "a\u{0}b", "exp": now() + 60}),
        json!({"sub": "u", "exp": now() + 60, "nbf": now() + 3600}),
    ] {
        assert_eq!(
            verifier().verify(&sign(&claims)),
            Err(AuthError::Invalid),
            "{claims}"
        );
    }
}

#[test]
fn wrong_secret_alg_none_and_garbage_are_invalid() {
    let claims = json!({"sub": "u", "exp": now() + 60});
    let other = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
    )
    .unwrap();
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
    );
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    for token in [
        other.as_str(),
        none.as_str(),
        "not-a-jwt",
        "a.b.c",
        huge.as_str(),
    ] {
        assert_eq!(verifier().verify(token), Err(AuthError::Invalid));
    }
}
