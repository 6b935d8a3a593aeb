//! JWKS issuers against a local JWKS server: first load, rotation, removed keys, outages,
//! unknown-kid storms, and `jku` never followed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{TestGate, VPG};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
const ISS: &str = "https://idp.test";
/// The secret of `oct1.jwk.json` (base64url `k`).
const OCT_SECRET: &[u8] = b"an-oct-key-that-must-never-verify";

/// What the JWKS server answers.
#[derive(Clone)]
enum Mode {
    Keys(Vec<&'static str>),
    Error,
    Garbage,
    Huge,
}

#[derive(Clone)]
struct Idp {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl Idp {
    async fn spawn(keys: Vec<&'static str>) -> (Self, String) {
        let idp = Self {
            mode: Arc::new(Mutex::new(Mode::Keys(keys))),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/.well-known/jwks.json", get(serve))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (idp, url)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(State(idp): State<Idp>) -> Response {
    idp.hits.fetch_add(1, Ordering::SeqCst);
    let mode = idp.mode.lock().unwrap().clone();
    match mode {
        Mode::Keys(names) => {
            let keys: Vec<Value> = names
                .iter()
                .map(|name| {
                    serde_json::from_str(&std::fs::read_to_string(format!("{KEYS}/{name}.jwk.json")).unwrap()).unwrap()
                })
                .collect();
            axum::Json(json!({ "keys": keys })).into_response()
        }
        Mode::Error => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Mode::Garbage => "<html>nope".into_response(),
        Mode::Huge => "x".repeat(2 * 1024 * 1024).into_response(),
    }
}

fn sign(key: &str, alg: Algorithm, claims: &Value, extra_header: impl FnOnce(&mut Header)) -> String {
    let pem = std::fs::read(format!("{KEYS}/{key}.pem")).unwrap();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = Some(key.to_owned());
    extra_header(&mut header);
    encode(&header, claims, &encoding).unwrap()
}

fn claims(sub: &str) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({"sub": sub, "exp": now + 300, "iat": now, "iss": ISS, "aud": "falgate"})
}

async fn gate_for(url: &str, cooldown_seconds: u64) -> TestGate {
    let toml = format!(
        "[auth.issuers.idp]\nissuer = \"{ISS}\"\naudience = \"falgate\"\njwks_url = \"{url}\"\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\n"
    );
    let gate = TestGate::builder()
        .config(&toml)
        .env("FALGATE_AUTH__JWKS_COOLDOWN_SECONDS", &cooldown_seconds.to_string())
        .env("FALGATE_AUTH__JWKS_TIMEOUT_MS", "1000")
        .spawn()
        .await;
    for _ in 0..100 {
        if gate
            .client
            .get(format!("{}/readyz", gate.url))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            return gate;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate
}

async fn status_with(gate: &TestGate, token: &str) -> u16 {
    gate.client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(token)
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_from_the_jwks_pass_and_readiness_waits_for_it() {
    let (idp, url) = Idp::spawn(vec!["rsa1", "ec1", "ed1"]).await;
    let gate = gate_for(&url, 10).await;
    assert_eq!(
        gate.client
            .get(format!("{}/readyz", gate.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        status_with(&gate, &sign("rsa1", Algorithm::RS256, &claims("a"), |_| {})).await,
        200
    );
    assert_eq!(
        status_with(&gate, &sign("ec1", Algorithm::ES256, &claims("b"), |_| {})).await,
        200
    );
    assert_eq!(
        status_with(&gate, &sign("ed1", Algorithm::EdDSA, &claims("c"), |_| {})).await,
        200
    );
    assert_eq!(idp.hits(), 1, "one fetch at start serves every known kid");
}

#[tokio::test]
async fn readiness_is_503_until_the_jwks_loads() {
    let (idp, url) = Idp::spawn(vec!["rsa1"]).await;
    idp.set(Mode::Error);
    let gate = gate_for(&url, 0).await;
    assert_eq!(
        gate.client
            .get(format!("{}/readyz", gate.url))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(sign("rsa1", Algorithm::RS256, &claims("a"), |_| {}))
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 503, "dependency_unavailable").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn a_rotated_key_triggers_one_refetch_and_passes() {
    let (idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let gate = gate_for(&url, 0).await;
    idp.set(Mode::Keys(vec!["rsa1", "rsa2"]));
    let before = idp.hits();
    assert_eq!(
        status_with(&gate, &sign("rsa2", Algorithm::RS256, &claims("a"), |_| {})).await,
        200
    );
    assert_eq!(idp.hits(), before + 1);
    assert_eq!(
        status_with(&gate, &sign("rsa2", Algorithm::RS256, &claims("b"), |_| {})).await,
        200
    );
    assert_eq!(idp.hits(), before + 1, "a known kid causes no fetch");
}

#[tokio::test]
async fn during_an_outage_known_keys_keep_working_and_unknown_kids_fail_closed() {
    let (idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let gate = gate_for(&url, 0).await;
    for (i, mode) in [Mode::Error, Mode::Garbage, Mode::Huge].into_iter().enumerate() {
        idp.set(mode);
        let before = idp.hits();
        // The unknown kid makes the gate refetch, and the refetch fails...
        assert_eq!(
            status_with(
                &gate,
                &sign("rsa2", Algorithm::RS256, &claims(&format!("u{i}")), |_| {})
            )
            .await,
            401
        );
        assert_eq!(idp.hits(), before + 1, "the failed refresh was tried");
        // ...then a token never seen before (so not a token-cache hit) is verified with the
        // known key kept from before the failed refresh.
        assert_eq!(
            status_with(
                &gate,
                &sign("rsa1", Algorithm::RS256, &claims(&format!("k{i}")), |_| {})
            )
            .await,
            200
        );
    }
}

/// `oct` (shared-secret) keys in a JWKS are never used: a token HMAC-signed with one is refused.
#[tokio::test]
async fn oct_keys_in_a_jwks_are_refused() {
    let (idp, url) = Idp::spawn(vec!["rsa1", "oct1"]).await;
    let toml = format!("[auth.issuers.idp]\nissuer = \"{ISS}\"\naudience = \"falgate\"\njwks_url = \"{url}\"\n");
    let gate = TestGate::builder().config(&toml).spawn().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gate
        .client
        .get(format!("{}/readyz", gate.url))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(tokio::time::Instant::now() < deadline, "the JWKS never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("oct1".into());
    let token = encode(&header, &claims("a"), &EncodingKey::from_secret(OCT_SECRET)).unwrap();
    let response = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(&token)
        .json(&json!({"input_concept": "x"}))
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 401, "unauthenticated").await;
    // The positive control: the set loaded, and its RSA key verifies.
    assert_eq!(
        status_with(&gate, &sign("rsa1", Algorithm::RS256, &claims("b"), |_| {})).await,
        200
    );
    assert!(idp.hits() >= 1);
    assert_eq!(gate.fal_saw().len(), 1, "only the RSA-signed call reached fal");
}

/// The JWKS is refetched every `jwks_refresh_seconds` with no token asking for it: a key
/// added at the IdP verifies without an unknown-kid refetch (the cooldown forbids one here).
#[tokio::test]
async fn the_jwks_is_refreshed_periodically() {
    let (idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let toml = format!(
        "[auth.issuers.idp]\nissuer = \"{ISS}\"\naudience = \"falgate\"\njwks_url = \"{url}\"\nalgorithms = [\"RS256\"]\n"
    );
    let gate = TestGate::builder()
        .config(&toml)
        .env("FALGATE_AUTH__JWKS_COOLDOWN_SECONDS", "3600")
        .env("FALGATE_AUTH__JWKS_REFRESH_SECONDS", "1")
        .spawn()
        .await;
    let rsa2 = |sub: &str| sign("rsa2", Algorithm::RS256, &claims(sub), |_| {});
    // Wait for the first load, then rotate. The first fetch starts the cooldown, so no token's
    // unknown kid can cause a fetch: every later one is the periodic refresh.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while idp.hits() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never fetched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    idp.set(Mode::Keys(vec!["rsa1", "rsa2"]));
    let fetched = idp.hits();
    // The periodic refresh (one second) loads rsa2; polled, not slept on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while idp.hits() == fetched {
        assert!(tokio::time::Instant::now() < deadline, "no periodic refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut verified = false;
    for i in 0..50 {
        if status_with(&gate, &rsa2(&format!("after{i}"))).await == 200 {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(verified, "the refreshed key never verified");
}

#[tokio::test]
async fn an_unknown_kid_storm_makes_at_most_one_fetch_per_cooldown() {
    let (idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let gate = gate_for(&url, 60).await;
    let before = idp.hits();
    // One real signature, re-used under 200 random kids: the kid lookup comes before any signature check.
    let signed = sign("rsa2", Algorithm::RS256, &claims("a"), |_| {});
    let (_, rest) = signed.split_once('.').unwrap();
    let storm = (0..200).map(|i| {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": format!("random-{i}")}).to_string();
        let token = format!(
            "{}.{rest}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header)
        );
        let gate = &gate;
        async move { status_with(gate, &token).await }
    });
    let statuses = futures_util::future::join_all(storm).await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert!(idp.hits() <= before + 1, "{} fetches", idp.hits() - before);
    assert_eq!(
        status_with(&gate, &sign("rsa1", Algorithm::RS256, &claims("a"), |_| {})).await,
        200
    );
}

#[tokio::test]
async fn jku_and_embedded_jwk_headers_are_never_followed() {
    let (_idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let (evil, evil_url) = Idp::spawn(vec!["rsa2"]).await;
    let gate = gate_for(&url, 0).await;
    let before = evil.hits();
    let token = sign("rsa2", Algorithm::RS256, &claims("a"), |h| {
        h.jku = Some(evil_url.clone())
    });
    assert_eq!(status_with(&gate, &token).await, 401);
    assert_eq!(evil.hits(), before, "falgate fetched the attacker's jku");
}

#[tokio::test]
async fn kid_injection_values_are_only_map_keys() {
    let (_idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let gate = gate_for(&url, 60).await;
    for kid in [
        "../../../../dev/null",
        "' OR '1'='1",
        "https://evil.example/jwks",
        &"A".repeat(3_000),
        "a\r\nX: y",
        "a\u{0}b",
    ] {
        let token = sign("rsa1", Algorithm::RS256, &claims("a"), |h| h.kid = Some(kid.to_owned()));
        let response = gate
            .client
            .post(format!("{}/api/fal/queue/{VPG}", gate.url))
            .bearer_auth(&token)
            .json(&json!({"input_concept": "x"}))
            .send()
            .await
            .unwrap();
        gate.assert_refused(response, 401, "unauthenticated").await;
    }
    let huge = sign("rsa1", Algorithm::RS256, &claims("a"), |h| {
        h.kid = Some("A".repeat(10_000))
    });
    let response = gate
        .client
        .get(format!("{}/healthz", gate.url))
        .bearer_auth(&huge)
        .send()
        .await
        .unwrap();
    gate.assert_refused(response, 431, "headers_too_large").await;
    gate.assert_nothing_reached_fal_and_still_serving().await;
}

#[tokio::test]
async fn an_hs256_token_signed_with_the_jwks_public_key_is_refused() {
    let (_idp, url) = Idp::spawn(vec!["rsa1"]).await;
    let gate = gate_for(&url, 60).await;
    let jwk = std::fs::read(format!("{KEYS}/rsa1.jwk.json")).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa1".into());
    let token = encode(&header, &claims("a"), &EncodingKey::from_secret(&jwk)).unwrap();
    assert_eq!(status_with(&gate, &token).await, 401);
    assert_eq!(
        gate.as_alice(Method::GET, "/healthz").send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn a_key_removed_from_the_jwks_stops_verifying_new_tokens_after_a_refresh() {
    let (idp, url) = Idp::spawn(vec!["rsa1", "rsa2"]).await;
    let gate = gate_for(&url, 0).await;
    assert_eq!(
        status_with(&gate, &sign("rsa1", Algorithm::RS256, &claims("a"), |_| {})).await,
        200
    );
    idp.set(Mode::Keys(vec!["rsa2"]));
    // An unknown kid forces the refresh that drops rsa1.
    assert_eq!(
        status_with(
            &gate,
            &sign("rsa2", Algorithm::RS256, &claims("a"), |h| h.kid = Some("new".into()))
        )
        .await,
        401
    );
    assert_eq!(
        status_with(&gate, &sign("rsa1", Algorithm::RS256, &claims("b"), |_| {})).await,
        401,
        "a removed key still verifies"
    );
    assert_eq!(
        status_with(&gate, &sign("rsa2", Algorithm::RS256, &claims("c"), |_| {})).await,
        200
    );
}
