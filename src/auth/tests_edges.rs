//! Edges of the authenticator that `auth/tests.rs` does not pin, found by mutation testing
//! (`scripts/mutants auth`, see TESTING.md).

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::config;

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

/// A token of exactly `max_token_bytes` is verified; one byte more is refused unread.
#[tokio::test]
async fn the_token_size_bound_is_exactly_max_token_bytes() {
    let token = mint_hs256(SECRET.as_bytes(), "u", None, Duration::from_secs(60)).unwrap();
    let at = |max: usize| authenticator(&format!("[auth]\nmax_token_bytes = {max}\n"));
    assert!(at(token.len()).authenticate(&token).await.is_ok());
    assert_eq!(
        at(token.len() - 1).authenticate(&token).await,
        Err(AuthError::Invalid(Why::TooLarge))
    );
}

fn parts(headers: &[(&str, &str)]) -> axum::http::request::Parts {
    let mut request = axum::http::Request::builder();
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap().into_parts().0
}

#[test]
fn the_token_is_read_from_one_bearer_authorization_header() {
    let auth = authenticator("[auth]\n");
    assert_eq!(
        auth.token(&parts(&[("authorization", "Bearer abc.def.ghi")])),
        Ok("abc.def.ghi")
    );
    assert_eq!(auth.token(&parts(&[])), Err(AuthError::Missing));
    assert_eq!(
        auth.token(&parts(&[("authorization", "Bearer a"), ("authorization", "Bearer b")])),
        Err(AuthError::Scheme)
    );
    assert_eq!(
        auth.token(&parts(&[("authorization", "Basic dTpw")])),
        Err(AuthError::Scheme)
    );
    // No cookie is configured: a cookie is never a credential.
    assert_eq!(
        auth.token(&parts(&[("cookie", "falgate_token=abc")])),
        Err(AuthError::Missing)
    );
}

#[test]
fn the_token_cookie_is_read_by_its_exact_name_and_never_empty() {
    let auth = authenticator("[auth]\ncookie = \"falgate_token\"\n");
    let token = |cookies: &[&str]| {
        let headers: Vec<(&str, &str)> = cookies.iter().map(|value| ("cookie", *value)).collect();
        auth.token(&parts(&headers)).map(str::to_owned)
    };
    assert_eq!(token(&["a=1; falgate_token=tok; b=2"]), Ok("tok".to_owned()));
    assert_eq!(token(&["a=1", "falgate_token=tok"]), Ok("tok".to_owned()));
    assert_eq!(token(&["falgate_token="]), Err(AuthError::Missing));
    assert_eq!(
        token(&["falgate_token_x=tok; x_falgate_token=tok"]),
        Err(AuthError::Missing)
    );
    assert_eq!(token(&[]), Err(AuthError::Missing));
    // The Authorization header, when sent, is the credential, whatever the cookie holds.
    let both = parts(&[("authorization", "Bearer hdr"), ("cookie", "falgate_token=tok")]);
    assert_eq!(auth.token(&both), Ok("hdr"));
}

/// `body` with `status` at `/jwks.json` on `127.0.0.1:0`, counting its downloads.
async fn serve_jwks(
    status: axum::http::StatusCode,
    body: String,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { (status, [("content-type", "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

/// The JWKS document of the keys named (`tests/fixtures/keys/<name>.jwk.json`).
fn jwks_doc(names: &[&str]) -> String {
    let keys: Vec<serde_json::Value> = names
        .iter()
        .map(|name| {
            let path = format!("{}/tests/fixtures/keys/{name}.jwk.json", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// A JWKS of the keys named, served with 200, counting its downloads.
async fn idp(names: &'static [&'static str]) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    serve_jwks(axum::http::StatusCode::OK, jwks_doc(names)).await
}

fn jwks_issuer(settings: &str, url: &str) -> Authenticator {
    authenticator(&format!(
        "[auth]\n{settings}\n[auth.issuers.idp]\nissuer = \"https://idp\"\njwks_url = \"{url}\"\nalgorithms = [\"RS256\"]\nany_audience = true\n"
    ))
}

/// A JWKS answered with an error status is not used, whatever its body holds.
#[tokio::test]
async fn a_jwks_answered_with_an_error_status_is_not_used() {
    let (url, _) = serve_jwks(axum::http::StatusCode::INTERNAL_SERVER_ERROR, jwks_doc(&["rsa1"])).await;
    let err = jwks_issuer("", &url).load_new_keys().await.unwrap_err().to_string();
    assert!(err.contains("status 500"), "{err}");
}

/// A JWKS of exactly `jwks_max_bytes` is read; one byte more is refused.
#[tokio::test]
async fn the_jwks_size_bound_is_exactly_jwks_max_bytes() {
    let doc = jwks_doc(&["rsa1"]);
    let (url, _) = serve_jwks(axum::http::StatusCode::OK, doc.clone()).await;
    let fits = jwks_issuer(&format!("jwks_max_bytes = {}", doc.len()), &url);
    fits.load_new_keys().await.unwrap();
    assert!(fits.ready());
    let over = jwks_issuer(&format!("jwks_max_bytes = {}", doc.len() - 1), &url);
    let err = over.load_new_keys().await.unwrap_err().to_string();
    assert!(err.contains(&format!("larger than {} bytes", doc.len() - 1)), "{err}");
}

fn rs256(pem: &str, kid: &str, sub: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let now = now();
    let claims = serde_json::json!({"sub": sub, "iss": "https://idp", "exp": now + 60, "iat": now});
    let path = format!("{}/tests/fixtures/keys/{pem}", env!("CARGO_MANIFEST_DIR"));
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(path).unwrap()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A token whose key the JWKS holds is verified without downloading it again; a token naming
/// a `kid` the set lacks downloads it once (past the cooldown, and not again within it) before
/// it is refused. Time past the cooldown is tokio's clock moved forward, not waited for.
#[tokio::test]
async fn only_an_unknown_kid_downloads_the_jwks_again() {
    use std::sync::atomic::Ordering;
    let (url, hits) = idp(&["rsa1"]).await;
    let auth = authenticator(&format!(
        "[auth]\njwks_cooldown_seconds = 10\n[auth.issuers.idp]\nissuer = \"https://idp\"\njwks_url = \"{url}\"\nalgorithms = [\"RS256\"]\nany_audience = true\n"
    ));
    let past_the_cooldown = || async {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(11)).await;
        tokio::time::resume();
    };
    auth.load_new_keys().await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    past_the_cooldown().await;
    let caller = auth.authenticate(&rs256("rsa1.pem", "rsa1", "alice")).await.unwrap();
    assert_eq!(&*caller.subject, "alice");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a known kid needs no download");

    past_the_cooldown().await;
    let unknown = auth.authenticate(&rs256("rsa2.pem", "rsa2", "bob")).await;
    assert_eq!(unknown, Err(AuthError::Invalid(Why::UnknownKey)));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "an unknown kid downloads the set once");

    let again = auth.authenticate(&rs256("rsa2.pem", "rsa2", "carol")).await;
    assert_eq!(again, Err(AuthError::Invalid(Why::UnknownKey)));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "not again within the cooldown");
}

/// The cooldown between JWKS downloads ends exactly one cooldown after the last download: one
/// nanosecond before, an unknown `kid` downloads nothing; at the cooldown itself, it downloads
/// the set again. tokio's clock stays paused throughout (a blocking task holds its auto-advance
/// off while the local IdP answers), so the check reads exactly the instants the test sets.
#[tokio::test]
async fn a_jwks_download_is_allowed_again_exactly_one_cooldown_after_the_last() {
    use std::sync::atomic::Ordering;
    let (url, hits) = idp(&["rsa1"]).await;
    let auth = authenticator(&format!(
        "[auth]\njwks_cooldown_seconds = 10\n[auth.issuers.idp]\nissuer = \"https://idp\"\njwks_url = \"{url}\"\nalgorithms = [\"RS256\"]\nany_audience = true\n"
    ));
    tokio::time::pause();
    // While a blocking task runs, the paused clock does not jump to the next timer when the
    // runtime waits for I/O: it moves only when the test advances it.
    let (release, held) = std::sync::mpsc::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || held.recv().ok());
    let frozen = tokio::time::Instant::now();
    auth.load_new_keys().await.unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(tokio::time::Instant::now(), frozen, "the clock stood still");

    tokio::time::advance(Duration::from_secs(10) - Duration::from_nanos(1)).await;
    let early = auth.authenticate(&rs256("rsa2.pem", "rsa2", "bob")).await;
    assert_eq!(early, Err(AuthError::Invalid(Why::UnknownKey)));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one nanosecond short of the cooldown");

    tokio::time::advance(Duration::from_nanos(1)).await;
    let at = auth.authenticate(&rs256("rsa2.pem", "rsa2", "carol")).await;
    assert_eq!(at, Err(AuthError::Invalid(Why::UnknownKey)));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "at the cooldown, the set is downloaded again"
    );
    assert_eq!(
        tokio::time::Instant::now(),
        frozen + Duration::from_secs(10),
        "the clock moved only as the test moved it"
    );
    drop(release);
    holder.await.unwrap();
}

fn hs256(claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// `sub`: 1 to 256 characters, no control characters.
#[tokio::test]
async fn a_subject_is_one_to_256_characters_without_control_characters() {
    let auth = authenticator("[auth]\n");
    let exp = now() + 60;
    let with_sub = |sub: &str| hs256(&serde_json::json!({"sub": sub, "exp": exp}));
    let longest = "s".repeat(256);
    assert_eq!(*auth.authenticate(&with_sub(&longest)).await.unwrap().subject, longest);
    for bad in ["s".repeat(257), String::new(), "a\nb".into(), "a\u{7f}".into()] {
        assert_eq!(
            auth.authenticate(&with_sub(&bad)).await,
            Err(AuthError::Invalid(Why::BadSubject)),
            "{bad:?}"
        );
    }
}

/// The tier claim: 1 to 64 characters; absent or null means the issuer's default tier.
#[tokio::test]
async fn a_tier_claim_is_one_to_64_characters_or_absent() {
    let auth = authenticator("[auth]\n");
    let exp = now() + 60;
    let with_tier = |tier: serde_json::Value| hs256(&serde_json::json!({"sub": "u", "exp": exp, "tier": tier}));
    let longest = "t".repeat(64);
    assert_eq!(
        *auth
            .authenticate(&with_tier(longest.clone().into()))
            .await
            .unwrap()
            .tier,
        longest
    );
    let default = auth
        .authenticate(&with_tier(serde_json::Value::Null))
        .await
        .unwrap()
        .tier;
    assert_eq!(&*default, "default");
    for bad in [
        serde_json::json!("t".repeat(65)),
        serde_json::json!(""),
        serde_json::json!(["pro"]),
    ] {
        assert_eq!(
            auth.authenticate(&with_tier(bad.clone())).await,
            Err(AuthError::Invalid(Why::BadTier)),
            "{bad}"
        );
    }
}

/// Scopes from a space-separated string or an array of strings (other items skipped).
#[tokio::test]
async fn scopes_are_read_from_a_string_or_an_array() {
    let auth = authenticator("[auth]\n");
    let exp = now() + 60;
    let scopes = |scope: serde_json::Value| hs256(&serde_json::json!({"sub": "u", "exp": exp, "scope": scope}));
    let from_array = auth
        .authenticate(&scopes(serde_json::json!(["a", 1, "b"])))
        .await
        .unwrap();
    assert_eq!(*from_array.scopes, ["a", "b"]);
    let from_text = auth.authenticate(&scopes(serde_json::json!(" a  b "))).await.unwrap();
    assert_eq!(*from_text.scopes, ["a", "b"]);
    let neither = auth.authenticate(&scopes(serde_json::json!(5))).await.unwrap();
    assert!(neither.scopes.is_empty());
}

/// `iat` must be a non-negative number; the lifetime from a past `iat` to `exp` may be exactly
/// `auth.max_lifetime`, not a second more.
#[tokio::test]
async fn iat_is_a_non_negative_number_and_the_lifetime_bound_is_exact() {
    let auth = authenticator("[auth]\nmax_lifetime_seconds = 3600\n");
    let exp = now() + 60;
    for bad in [serde_json::json!(-1), serde_json::json!("1")] {
        let token = hs256(&serde_json::json!({"sub": "u", "exp": exp, "iat": bad}));
        assert_eq!(
            auth.authenticate(&token).await,
            Err(AuthError::Invalid(Why::BadClaim)),
            "{bad}"
        );
    }
    let lifetime = |seconds: u64| hs256(&serde_json::json!({"sub": "u", "exp": exp, "iat": exp - seconds}));
    assert!(auth.authenticate(&lifetime(3600)).await.is_ok());
    assert_eq!(
        auth.authenticate(&lifetime(3601)).await,
        Err(AuthError::Invalid(Why::LifetimeTooLong))
    );
}

/// An `iat` up to `leeway` seconds ahead of this machine's clock is accepted (the issuer's clock
/// may run ahead); further ahead it is refused. (The signature check reads the system clock, so
/// this one does too: a second passing between minting and checking only moves `iat` into the
/// past, so the exact bound cannot flake.)
#[tokio::test]
async fn an_iat_at_most_the_leeway_ahead_is_accepted() {
    let auth = authenticator("[auth]\nleeway_seconds = 5\n");
    let at = |iat: u64| hs256(&serde_json::json!({"sub": "u", "exp": iat + 60, "iat": iat}));
    assert!(auth.authenticate(&at(now() + 5)).await.is_ok());
    assert_eq!(
        auth.authenticate(&at(now() + 100)).await,
        Err(AuthError::Invalid(Why::IssuedInFuture))
    );
}

/// A reload keeps a JWKS (its keys and refresh task) only when nothing about it changed: the
/// issuer, the URL, the algorithms and every `jwks_*` setting.
#[test]
fn a_reload_starts_over_a_jwks_whose_issuer_url_or_settings_changed() {
    let config = |settings: &str, name: &str, url: &str, algorithms: &str| {
        let toml = format!(
            "[auth]\n{settings}\n[auth.issuers.{name}]\nissuer = \"https://idp\"\njwks_url = \"{url}\"\nalgorithms = {algorithms}\nany_audience = true\n"
        );
        let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
        config::Config::from_toml(&toml, &env).unwrap().auth
    };
    let url = "http://127.0.0.1:9/jwks.json";
    let rs256 = "[\"RS256\"]";
    let running = Authenticator::new(&config("", "a", url, rs256)).unwrap();
    let jwks = |auth: &Authenticator| auth.issuers.iter().find_map(|issuer| issuer.jwks().cloned()).unwrap();
    let kept = running.next(&config("", "a", url, rs256)).unwrap();
    assert!(Arc::ptr_eq(&jwks(&kept), &jwks(&running)), "nothing changed: kept");
    for (settings, name, url, algorithms) in [
        ("", "b", url, rs256),
        ("", "a", "http://127.0.0.1:9/other.json", rs256),
        ("", "a", url, "[\"RS256\", \"ES256\"]"),
        ("jwks_max_bytes = 1000", "a", url, rs256),
        ("jwks_cooldown_seconds = 11", "a", url, rs256),
        ("jwks_refresh_seconds = 301", "a", url, rs256),
        ("jwks_timeout_ms = 5001", "a", url, rs256),
    ] {
        let next = running.next(&config(settings, name, url, algorithms)).unwrap();
        assert!(
            !Arc::ptr_eq(&jwks(&next), &jwks(&running)),
            "{settings} {name} {url} {algorithms}: a new JWKS"
        );
    }
}

/// The JWKS is fetched from its configured URL only: a redirect is not followed.
#[tokio::test]
async fn a_jwks_redirect_is_not_followed() {
    let (url, hits) = idp(&["rsa1"]).await;
    let moved = axum::Router::new().route(
        "/moved",
        axum::routing::get(move || {
            let url = url.clone();
            async move { axum::response::Redirect::temporary(&url) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let moved_url = format!("http://{}/moved", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, moved).await });
    let auth = authenticator(&format!(
        "[auth.issuers.idp]\nissuer = \"https://idp\"\njwks_url = \"{moved_url}\"\nalgorithms = [\"RS256\"]\nany_audience = true\n"
    ));
    let err = auth.load_new_keys().await.unwrap_err().to_string();
    assert!(err.contains("status 307"), "{err}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A registered claim jsonwebtoken reads, of the wrong type (`nbf` as text), is `invalid
/// claim`, not a malformed token.
#[tokio::test]
async fn a_registered_claim_of_the_wrong_type_is_a_bad_claim() {
    let auth = authenticator("[auth]\n");
    let token = hs256(&serde_json::json!({"sub": "u", "exp": now() + 60, "nbf": "soon"}));
    assert_eq!(auth.authenticate(&token).await, Err(AuthError::Invalid(Why::BadClaim)));
}

/// Keys a JWKS holds but falgate cannot use are named in a warning, so an operator sees why a
/// `kid` is unknown.
#[tokio::test]
async fn the_keys_a_jwks_skips_are_named_in_a_warning() {
    let (url, _) = serve_jwks(axum::http::StatusCode::OK, jwks_doc(&["rsa1", "oct1"])).await;
    let captured = crate::telemetry::captured::Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    jwks_issuer("", &url).load_new_keys().await.unwrap();
    let text = captured.text();
    assert!(text.contains("JWKS keys skipped") && text.contains("oct1"), "{text}");

    let (url, _) = idp(&["rsa1"]).await;
    let captured_clean = crate::telemetry::captured::Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(captured_clean.clone())
        .finish();
    let _clean = tracing::subscriber::set_default(subscriber);
    jwks_issuer("", &url).load_new_keys().await.unwrap();
    assert!(!captured_clean.text().contains("skipped"), "{}", captured_clean.text());
}

/// The first look at a token refuses an empty segment (a token stripped of its signature is
/// malformed, not a bad signature) and a `kid` over 256 characters.
#[tokio::test]
async fn an_empty_signature_or_an_overlong_kid_is_malformed() {
    let auth = authenticator("[auth]\n");
    let token = hs256(&serde_json::json!({"sub": "u", "exp": now() + 60}));
    let unsigned = format!("{}.", token.rsplit_once('.').unwrap().0);
    assert_eq!(
        auth.authenticate(&unsigned).await,
        Err(AuthError::Invalid(Why::Malformed))
    );

    let with_kid = |kid: String| {
        let header = jsonwebtoken::Header {
            kid: Some(kid),
            ..jsonwebtoken::Header::default()
        };
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&header, &serde_json::json!({"sub": "u", "exp": now() + 60}), &key).unwrap()
    };
    // The secret has no kid, so a token naming one finds no key: refused after the first look.
    assert_eq!(
        auth.authenticate(&with_kid("k".repeat(256))).await,
        Err(AuthError::Invalid(Why::UnknownKey))
    );
    assert_eq!(
        auth.authenticate(&with_kid("k".repeat(257))).await,
        Err(AuthError::Invalid(Why::Malformed))
    );
}
