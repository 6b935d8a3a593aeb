use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::clock::ManualClock;
use crate::config;
use crate::error::GateError;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn authenticator(toml: &str, extra_env: &[(&str, &str)]) -> Authenticator {
    let mut env: HashMap<String, String> =
        HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = config::Config::from_toml(toml, &env).unwrap();
    Authenticator::new(&config.auth).unwrap()
}

fn authenticator_at(toml: &str, clock: crate::clock::Clock) -> Authenticator {
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    let config = config::Config::from_toml(toml, &env).unwrap();
    Authenticator::with_clock(&config.auth, clock).unwrap()
}

fn hs() -> Authenticator {
    authenticator("[auth]\nleeway_seconds = 5\n", &[])
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

fn sign(claims: &Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A token with a hand-written header, HMAC-signed with `key` (for header tricks).
fn forge(header: &Value, claims: &Value, key: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn valid_claims() -> Value {
    json!({"sub": "u", "exp": now() + 60, "iat": now()})
}

async fn verdict(auth: &Authenticator, token: &str) -> Result<Caller, AuthError> {
    auth.authenticate(token).await
}

#[tokio::test]
async fn minted_token_verifies_with_issuer_subject_and_tier() {
    let token = mint_hs256(SECRET.as_bytes(), "user-1", Some("pro"), Duration::from_secs(60)).unwrap();
    let caller = verdict(&hs(), &token).await.unwrap();
    assert_eq!(
        (&*caller.issuer, &*caller.subject, &*caller.tier),
        ("default", "user-1", "pro")
    );
    assert_eq!(caller.principal(), "default|user-1");
}

#[tokio::test]
async fn a_token_without_tier_gets_the_default_tier_and_scopes_are_read() {
    let token = sign(&json!({"sub": "u", "exp": now() + 60, "scope": "read write"}));
    let caller = verdict(&hs(), &token).await.unwrap();
    assert_eq!(&*caller.tier, "default");
    assert_eq!(*caller.scopes, ["read", "write"]);
}

#[tokio::test]
async fn expired_token_past_the_configured_leeway_is_expired_even_when_cached() {
    let auth = hs();
    assert_eq!(
        verdict(&auth, &sign(&json!({"sub": "u", "exp": now() - 30}))).await,
        Err(AuthError::Expired)
    );
    assert!(
        verdict(&auth, &sign(&json!({"sub": "u", "exp": now() - 3})))
            .await
            .is_ok(),
        "within the 5 s leeway"
    );
    // Cached while valid, then judged again from the cache as time passes.
    let manual = ManualClock::new();
    let auth = authenticator_at("[auth]\nleeway_seconds = 5\n", manual.clock());
    let exp = manual.clock().unix_seconds() + 60;
    let token = sign(&json!({"sub": "u", "exp": exp}));
    assert!(verdict(&auth, &token).await.is_ok());
    assert!(matches!(auth.cached(&token), Some(Ok(_))), "the verdict is cached");
    manual.advance(Duration::from_secs(65));
    assert!(
        matches!(auth.cached(&token), Some(Ok(_))),
        "at exp + leeway, still valid"
    );
    manual.advance(Duration::from_secs(1));
    assert_eq!(auth.cached(&token), Some(Err(AuthError::Expired)), "the cache answers");
    assert_eq!(verdict(&auth, &token).await, Err(AuthError::Expired));
}

/// README: verified tokens are cached, never past `exp`. With no leeway, a cached token is
/// refused the second after its `exp`, though its signature still checks out.
#[tokio::test]
async fn a_cached_token_is_never_used_past_its_exp() {
    let manual = ManualClock::new();
    let auth = authenticator_at("[auth]\nleeway_seconds = 0\n", manual.clock());
    let exp = manual.clock().unix_seconds() + 30;
    let token = sign(&json!({"sub": "u", "exp": exp}));
    assert!(verdict(&auth, &token).await.is_ok());
    manual.advance(Duration::from_secs(30));
    assert!(verdict(&auth, &token).await.is_ok(), "valid up to its exp");
    manual.advance(Duration::from_secs(1));
    assert_eq!(verdict(&auth, &token).await, Err(AuthError::Expired));
    assert_eq!(auth.cached(&token), Some(Err(AuthError::Expired)));
}

/// Each case reaches its own rule: every other claim is valid and the token is well under
/// `auth.max_token_bytes` (8 KiB), so the reason in the table is the only one that can refuse.
#[tokio::test]
async fn missing_or_odd_claims_are_refused_each_for_its_own_reason() {
    let auth = hs();
    let long_sub = "x".repeat(257);
    let cases = [
        (json!({"sub": "u"}), Why::MissingClaim),
        (json!({"exp": now() + 60}), Why::MissingClaim),
        (json!({"sub": "", "exp": now() + 60}), Why::BadSubject),
        // jsonwebtoken reads a required claim it cannot parse as absent, and an object where it
        // expects a string as a token it cannot read: refused before falgate's subject rule.
        (json!({"sub": 123, "exp": now() + 60}), Why::MissingClaim),
        (json!({"sub": null, "exp": now() + 60}), Why::MissingClaim),
        (json!({"sub": {}, "exp": now() + 60}), Why::Malformed),
        // One character over the 256-character subject bound, the token far under its own.
        (json!({"sub": long_sub, "exp": now() + 60}), Why::BadSubject),
        (json!({"sub": "a\u{0}b", "exp": now() + 60}), Why::BadSubject),
        (json!({"sub": "u", "exp": "9999999999"}), Why::MissingClaim),
        (json!({"sub": "u", "exp": 1e300}), Why::MissingClaim),
        (json!({"sub": "u", "exp": 9_999_999_999_i64}), Why::LifetimeTooLong),
        (
            json!({"sub": "u", "exp": now() + 60, "nbf": now() + 3600}),
            Why::NotYetValid,
        ),
        (
            json!({"sub": "u", "exp": now() + 60, "iat": now() + 86_400}),
            Why::IssuedInFuture,
        ),
        (
            json!({"sub": "u", "exp": now() + 10 * 365 * 86_400, "iat": now()}),
            Why::LifetimeTooLong,
        ),
        (json!({"sub": "u", "exp": now() + 60, "tier": 5}), Why::BadTier),
        // An `iss` that is not one string is no issuer's: jsonwebtoken cannot read it.
        (
            json!({"sub": "u", "exp": now() + 60, "iss": ["https://evil", "https://idp.example"]}),
            Why::Malformed,
        ),
    ];
    let mut wrong = Vec::new();
    for (claims, why) in cases {
        let token = sign(&claims);
        assert!(token.len() < 1024, "{claims}: the token must stay under the size bound");
        let got = verdict(&auth, &token).await;
        if got != Err(AuthError::Invalid(why)) {
            wrong.push(format!("{claims}: {got:?}, wanted {why:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn a_float_exp_is_accepted_consistently() {
    let token = sign(&json!({"sub": "u", "exp": (now() + 60) as f64 + 0.5}));
    assert!(verdict(&hs(), &token).await.is_ok());
}

#[tokio::test]
async fn alg_none_crit_and_wrong_secret_are_refused_each_for_its_own_reason() {
    let auth = hs();
    let claims = URL_SAFE_NO_PAD.encode(valid_claims().to_string());
    let mut cases = Vec::new();
    for alg in ["none", "None", "NONE", ""] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        cases.push((
            format!("alg {alg:?}, no signature"),
            format!("{header}.{claims}."),
            Why::Malformed,
        ));
        cases.push((
            format!("alg {alg:?}, a signature"),
            format!("{header}.{claims}.c2ln"),
            Why::Malformed,
        ));
    }
    for header in [
        json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
        json!({"alg": "HS256", "crit": ["x-unknown"]}),
    ] {
        let token = forge(&header, &valid_claims(), SECRET.as_bytes());
        cases.push((header.to_string(), token, Why::Malformed));
    }
    let wrong = encode(&Header::default(), &valid_claims(), &EncodingKey::from_secret(&[7; 32])).unwrap();
    cases.push(("another secret".to_owned(), wrong, Why::BadSignature));
    let mut differ = Vec::new();
    for (what, token, why) in cases {
        let got = verdict(&auth, &token).await;
        if got != Err(AuthError::Invalid(why)) {
            differ.push(format!("{what}: {got:?}, wanted {why:?}"));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
}

#[tokio::test]
async fn malformed_encodings_and_huge_tokens_are_refused_each_for_its_own_reason() {
    let auth = hs();
    let good = sign(&valid_claims());
    let parts: Vec<&str> = good.split('.').collect();
    let std_alphabet = good.replace('-', "+").replace('_', "/");
    let deep_header = URL_SAFE_NO_PAD.encode(format!("{}{}", "[".repeat(100), "]".repeat(100)));
    let array_header = URL_SAFE_NO_PAD.encode(r#"[{"alg":"HS256"}]"#);
    let dup_alg = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","alg":"HS256"}"#);
    let mut cases = vec![
        (format!("{}=.{}.{}", parts[0], parts[1], parts[2]), Why::Malformed),
        (format!(" {good}"), Why::Malformed),
        (format!("{good} "), Why::Malformed),
        (format!("{}.{}", parts[0], parts[1]), Why::Malformed),
        (format!("{good}.x"), Why::Malformed),
        (format!("{}..{}", parts[0], parts[2]), Why::Malformed),
        (format!("{}.{}.{}é", parts[0], parts[1], parts[2]), Why::Malformed),
        (format!("{deep_header}.{}.{}", parts[1], parts[2]), Why::Malformed),
        (format!("{array_header}.{}.{}", parts[1], parts[2]), Why::Malformed),
        (format!("{dup_alg}.{}.{}", parts[1], parts[2]), Why::Malformed),
        ("a".repeat(64 * 1024), Why::TooLarge),
    ];
    if std_alphabet != good {
        cases.push((std_alphabet, Why::Malformed));
    }
    let mut differ = Vec::new();
    for (token, why) in cases {
        let got = verdict(&auth, &token).await;
        if got != Err(AuthError::Invalid(why)) {
            differ.push(format!("{}: {got:?}, wanted {why:?}", &token[..token.len().min(80)]));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_exact_when_configured() {
    let auth = authenticator(
        "[auth]\nissuer = \"https://idp.example\"\naudience = \"falgate\"\n",
        &[],
    );
    let with = |extra: Value| {
        let mut claims = valid_claims();
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        sign(&claims)
    };
    assert!(
        verdict(&auth, &with(json!({"iss": "https://idp.example", "aud": "falgate"})))
            .await
            .is_ok()
    );
    assert!(verdict(
        &auth,
        &with(json!({"iss": "https://idp.example", "aud": ["other", "falgate"]}))
    )
    .await
    .is_ok());
    let mut differ = Vec::new();
    for (bad, why) in [
        (
            json!({"iss": "https://idp.example", "aud": "other"}),
            Why::WrongAudience,
        ),
        (json!({"iss": "https://evil", "aud": "falgate"}), Why::UnknownIssuer),
        (json!({"iss": "https://idp.example", "aud": []}), Why::WrongAudience),
        (json!({"iss": "https://idp.example"}), Why::MissingClaim),
        (json!({"aud": "falgate"}), Why::UnknownIssuer),
    ] {
        let got = verdict(&auth, &with(bad.clone())).await;
        if got != Err(AuthError::Invalid(why)) {
            differ.push(format!("{bad}: {got:?}, wanted {why:?}"));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
}

#[tokio::test]
async fn rs256_es256_and_eddsa_keys_from_files_verify_their_own_tokens_only() {
    let toml = format!(
        "[auth.issuers.rsa]\nissuer = \"https://rsa\"\nkey_files = [\"{KEYS}/rsa1.jwk.json\"]\n\
         [auth.issuers.ec]\nissuer = \"https://ec\"\nkey_files = [\"{KEYS}/ec1.jwk.json\"]\n\
         [auth.issuers.ed]\nissuer = \"https://ed\"\nkey_files = [\"{KEYS}/ed1.pub.pem\"]\nalgorithms = [\"EdDSA\"]\n"
    );
    let auth = authenticator(&toml, &[]);
    let read = |name: &str| std::fs::read(format!("{KEYS}/{name}")).unwrap();
    let claims = |iss: &str| json!({"sub": "u", "exp": now() + 60, "iss": iss});
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims("https://rsa"),
        &EncodingKey::from_rsa_pem(&read("rsa1.pem")).unwrap(),
    )
    .unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims("https://ec"),
        &EncodingKey::from_ec_pem(&read("ec1.pem")).unwrap(),
    )
    .unwrap();
    let ed = encode(
        &Header::new(Algorithm::EdDSA),
        &claims("https://ed"),
        &EncodingKey::from_ed_pem(&read("ed1.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(&*verdict(&auth, &rs).await.unwrap().issuer, "rsa");
    assert_eq!(&*verdict(&auth, &es).await.unwrap().issuer, "ec");
    assert_eq!(&*verdict(&auth, &ed).await.unwrap().issuer, "ed");
    let other = encode(
        &Header::new(Algorithm::RS256),
        &claims("https://rsa"),
        &EncodingKey::from_rsa_pem(&read("rsa2.pem")).unwrap(),
    )
    .unwrap();
    assert!(
        matches!(verdict(&auth, &other).await, Err(AuthError::Invalid(_))),
        "a key not in the set"
    );
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_invalid() {
    let toml = format!("[auth.issuers.rsa]\nissuer = \"https://rsa\"\nkey_files = [\"{KEYS}/rsa1.jwk.json\"]\n");
    let auth = authenticator(&toml, &[]);
    let claims = json!({"sub": "u", "exp": now() + 60, "iss": "https://rsa"});
    let pem = std::fs::read(format!("{KEYS}/rsa1.pub.pem")).unwrap();
    let pem_text = String::from_utf8(pem.clone()).unwrap();
    let der = STANDARD
        .decode(pem_text.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
        .unwrap();
    let jwk = std::fs::read(format!("{KEYS}/rsa1.jwk.json")).unwrap();
    for key in [pem, der, jwk, Vec::new()] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "rsa1"});
        assert!(matches!(
            verdict(&auth, &forge(&header, &claims, &key)).await,
            Err(AuthError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn the_same_subject_from_two_issuers_is_two_principals() {
    let toml = "[auth.issuers.partner]\nissuer = \"https://partner\"\nhs_secret_env = \"PARTNER_SECRET\"\nalgorithms = [\"HS512\"]\n";
    let partner_secret = "partner-secret-partner-secret-partner-secret";
    let auth = authenticator(toml, &[("PARTNER_SECRET", partner_secret)]);
    let ours = sign(&json!({"sub": "alice", "exp": now() + 60}));
    let theirs = encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "alice", "exp": now() + 60, "iss": "https://partner"}),
        &EncodingKey::from_secret(partner_secret.as_bytes()),
    )
    .unwrap();
    let a = verdict(&auth, &ours).await.unwrap();
    let b = verdict(&auth, &theirs).await.unwrap();
    assert_ne!(a.principal(), b.principal());
    let downgraded = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 60, "iss": "https://partner"}),
        &EncodingKey::from_secret(partner_secret.as_bytes()),
    )
    .unwrap();
    assert!(
        matches!(verdict(&auth, &downgraded).await, Err(AuthError::Invalid(_))),
        "HS256 is not in the partner's algorithms"
    );
}

#[tokio::test]
async fn required_token_type_is_enforced() {
    let auth = authenticator("[auth]\ntoken_type = \"at+jwt\"\n", &[]);
    let mut header = Header::default();
    assert!(matches!(
        verdict(
            &auth,
            &encode(&header, &valid_claims(), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
        )
        .await,
        Err(AuthError::Invalid(_))
    ));
    header.typ = Some("at+jwt".into());
    assert!(verdict(
        &auth,
        &encode(&header, &valid_claims(), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    )
    .await
    .is_ok());
}

#[test]
fn bearer_scheme_is_case_insensitive_and_strict_about_spacing() {
    assert_eq!(bearer("bearer abc"), Ok("abc"));
    assert_eq!(bearer("Bearer abc"), Ok("abc"));
    for bad in [
        "Bearer  abc",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Key fk-123",
        "Bearerabc",
    ] {
        assert_eq!(bearer(bad), Err(AuthError::Scheme), "{bad}");
    }
}

#[tokio::test]
async fn an_es256_signature_of_zeros_is_invalid() {
    let toml = format!("[auth.issuers.ec]\nissuer = \"https://ec\"\nkey_files = [\"{KEYS}/ec1.jwk.json\"]\n");
    let auth = authenticator(&toml, &[]);
    let header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "ec1"}).to_string());
    let claims = URL_SAFE_NO_PAD.encode(json!({"sub": "u", "exp": now() + 60, "iss": "https://ec"}).to_string());
    let psychic = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode([0_u8; 64]));
    assert!(matches!(verdict(&auth, &psychic).await, Err(AuthError::Invalid(_))));
    let der_shaped = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode([0x30_u8; 72]));
    assert!(matches!(verdict(&auth, &der_shaped).await, Err(AuthError::Invalid(_))));
}

#[tokio::test]
async fn a_refused_token_says_why() {
    let auth = authenticator(
        &format!(
            "[auth]\nissuer = \"https://idp\"\naudience = \"falgate\"\n\
             [auth.issuers.rsa]\nissuer = \"https://rsa\"\nkey_files = [\"{KEYS}/rsa1.jwk.json\"]\n"
        ),
        &[],
    );
    let ours = |claims: Value| sign(&claims);
    let aud = |extra: Value| {
        let mut claims = json!({"sub": "u", "exp": now() + 60, "iat": now(), "aud": "falgate", "iss": "https://idp"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    let rsa = |kid: Option<&str>, pem: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        let claims = json!({"sub": "u", "exp": now() + 60, "iss": "https://rsa", "aud": "falgate"});
        encode(&header, &claims, &EncodingKey::from_rsa_pem(&read_key(pem)).unwrap()).unwrap()
    };
    let cases = [
        (ours(aud(json!({"aud": "other"}))), Why::WrongAudience),
        (
            ours(aud(json!({"exp": now() + 10 * 365 * 86_400}))),
            Why::LifetimeTooLong,
        ),
        (ours(aud(json!({"iat": now() + 86_400}))), Why::IssuedInFuture),
        (ours(aud(json!({"nbf": now() + 3600}))), Why::NotYetValid),
        (ours(aud(json!({"tier": 5}))), Why::BadTier),
        (
            ours(json!({"exp": now() + 60, "iss": "https://idp", "aud": "falgate"})),
            Why::MissingClaim,
        ),
        (ours(aud(json!({"iss": "https://unknown"}))), Why::UnknownIssuer),
        (rsa(Some("not-a-kid"), "rsa1.pem"), Why::UnknownKey),
        (rsa(None, "rsa2.pem"), Why::BadSignature),
        ("a.b".to_owned(), Why::Malformed),
    ];
    for (token, why) in cases {
        let verdict = verdict(&auth, &token).await;
        assert_eq!(verdict, Err(AuthError::Invalid(why)), "{why:?}");
        // The log line gets the reason, never the token.
        let detail = GateError::from(verdict.unwrap_err()).log_detail().unwrap();
        assert_eq!(detail, why.as_str());
        assert!(!detail.contains(&token[..token.len().min(20)]));
    }
    let expired = ours(aud(json!({"exp": now() - 60, "iat": now() - 120})));
    let verdict = verdict(&auth, &expired).await.unwrap_err();
    assert_eq!(GateError::from(verdict).log_detail().as_deref(), Some("expired"));
}

fn read_key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).unwrap()
}

#[tokio::test]
async fn a_failed_jwks_download_is_counted_for_its_issuer() {
    let auth = authenticator(
        "[auth.issuers.jwks_probe]\nissuer = \"https://probe\"\njwks_url = \"http://127.0.0.1:1/jwks.json\"\nany_audience = true\n",
        &[],
    );
    let series = r#"falgate_jwks_refresh_total{issuer="jwks_probe",result="error"}"#;
    let count = || {
        let text = crate::telemetry::metrics::render(&crate::telemetry::metrics::handle());
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = count();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims = json!({"sub": "u", "exp": now() + 60, "iss": "https://probe"});
    let token = encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(&read_key("rsa1.pem")).unwrap(),
    )
    .unwrap();
    // The unknown `kid` makes the issuer fetch its JWKS, which cannot be reached.
    assert_eq!(verdict(&auth, &token).await, Err(AuthError::KeysUnavailable));
    assert!(count() >= before + 1.0, "{series}");
}

/// Two JWKS issuers on closed local ports (their fetches fail at once; nothing is served).
fn two_jwks_issuers(second: bool) -> String {
    // A failed fetch is retried after the cooldown: long, so only an abort ends the task soon.
    let mut toml = "[auth]\njwks_refresh_seconds = 3600\njwks_cooldown_seconds = 3600\n\
                    [auth.issuers.a]\nissuer = \"https://a\"\njwks_url = \"http://127.0.0.1:9/a\"\nalgorithms = [\"RS256\"]\nany_audience = true\n"
        .to_owned();
    if second {
        toml.push_str(
            "[auth.issuers.b]\nissuer = \"https://b\"\njwks_url = \"http://127.0.0.1:9/b\"\nalgorithms = [\"RS256\"]\nany_audience = true\n",
        );
    }
    toml
}

fn auth_config(toml: &str) -> config::Auth {
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    config::Config::from_toml(toml, &env).unwrap().auth
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_jwks_and_stops_the_refresh_of_a_removed_one() {
    let running = Authenticator::new(&auth_config(&two_jwks_issuers(true))).unwrap();
    running.start();
    let jwks = |auth: &Authenticator, name: &str| {
        auth.issuers
            .iter()
            .find(|issuer| issuer.name() == name)
            .and_then(|issuer| issuer.jwks().cloned())
            .unwrap()
    };
    let (kept, removed) = (jwks(&running, "a"), jwks(&running, "b"));
    let (kept_task, removed_task) = (kept.refresh_task().unwrap(), removed.refresh_task().unwrap());
    // Both tasks past their first fetch: from now on each waits out its interval.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !(kept.fetch_started().await && removed.fetch_started().await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the refresh tasks never fetched"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop((kept, removed));

    let next = Authenticator::next(&running, &auth_config(&two_jwks_issuers(false))).unwrap();
    next.start();
    assert!(
        Arc::ptr_eq(&jwks(&next, "a"), &jwks(&running, "a")),
        "a's JWKS is taken over"
    );
    next.load_new_keys().await.expect("a kept JWKS is not fetched again");
    drop(running);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !removed_task.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removed issuer's refresh task still runs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!kept_task.is_finished(), "the kept issuer's refresh task runs on");
    assert_eq!(jwks(&next, "a").refresh_task().unwrap().id(), kept_task.id());
}

#[tokio::test]
async fn a_new_issuers_jwks_must_load_before_the_reload_serves() {
    let running = Authenticator::new(&auth_config(&two_jwks_issuers(false))).unwrap();
    running.start();
    let next = running.next(&auth_config(&two_jwks_issuers(true))).unwrap();
    let err = next.load_new_keys().await.unwrap_err().to_string();
    assert!(err.contains("issuer `b`") && err.contains("127.0.0.1:9/b"), "{err}");
}
