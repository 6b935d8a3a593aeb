//! Edges of the authenticator that `auth/tests.rs` does not pin, found by mutation testing
//! (`scripts/mutants auth`, see TESTING.md).

use std::collections::HashMap;
use std::time::Duration;

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn authenticator(toml: &str) -> Authenticator {
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    let config = config::Config::from_toml(toml, &env).unwrap();
    Authenticator::new(&config.auth).unwrap()
}

/// The log line's reason for each refusal: the phrases operators grep for.
#[test]
fn each_refusal_reason_has_its_own_log_phrase() {
    let table = [
        (Why::Malformed, "malformed token"),
        (Why::TooLarge, "token too large"),
        (Why::UnknownIssuer, "unknown issuer"),
        (Why::Algorithm, "algorithm not allowed"),
        (Why::TokenType, "wrong token type"),
        (Why::UnknownKey, "unknown signing key"),
        (Why::BadSignature, "bad signature"),
        (Why::WrongIssuer, "wrong issuer"),
        (Why::WrongAudience, "wrong audience"),
        (Why::NotYetValid, "not yet valid (nbf)"),
        (Why::MissingClaim, "required claim missing"),
        (Why::BadSubject, "invalid subject"),
        (Why::IssuedInFuture, "issued in the future (iat)"),
        (Why::LifetimeTooLong, "lifetime longer than auth.max_lifetime"),
        (Why::BadTier, "invalid tier claim"),
        (Why::BadClaim, "invalid claim"),
    ];
    for (why, phrase) in table {
        assert_eq!(why.as_str(), phrase);
        assert_eq!(AuthError::Invalid(why).log_reason(), phrase);
    }
    assert_eq!(AuthError::Missing.log_reason(), "no token");
    assert_eq!(AuthError::Scheme.log_reason(), "not a bearer token");
    assert_eq!(AuthError::Expired.log_reason(), "expired");
    assert_eq!(AuthError::KeysUnavailable.log_reason(), "signing keys not loaded");
}

/// `token_cache_entries = 0` turns the cache off: nothing is kept, every call verifies.
#[tokio::test]
async fn a_cache_of_zero_entries_keeps_nothing() {
    let token = mint_hs256(SECRET.as_bytes(), "u", None, Duration::from_secs(60)).unwrap();
    let off = authenticator("[auth]\ntoken_cache_entries = 0\n");
    off.authenticate(&token).await.unwrap();
    assert!(off.cache.is_none());
    assert!(off.cached(&token).is_none());

    let on = authenticator("[auth]\ntoken_cache_entries = 1\n");
    on.authenticate(&token).await.unwrap();
    assert!(matches!(on.cached(&token), Some(Ok(_))));
}

/// Ready once every issuer's keys are loaded: at once for secrets and key files, only after a
/// JWKS was fetched for a JWKS issuer.
#[test]
fn ready_means_every_issuers_keys_are_loaded() {
    assert!(authenticator("[auth]\n").ready());
    let jwks = "[auth.issuers.idp]\nissuer = \"https://idp\"\njwks_url = \"http://127.0.0.1:9/jwks.json\"\nany_audience = true\n";
    let waiting = authenticator(&format!("[auth]\n{jwks}"));
    assert!(!waiting.ready(), "the JWKS was never fetched");
}
