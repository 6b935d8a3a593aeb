//! Token verification cost: HS256 and ES256, cold (signature checked) and cached (a status poll
//! with a token already seen). Run: `cargo bench --bench auth`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use falgate::auth::Authenticator;
use falgate::config::Config;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

fn authenticator(cache_entries: u64) -> Authenticator {
    let toml = format!(
        "[auth]\ntoken_cache_entries = {cache_entries}\n[auth.issuers.ec]\nissuer = \"https://ec\"\nkey_files = [\"{KEYS}/ec1.jwk.json\"]\n"
    );
    let env = HashMap::from([("FALGATE_AUTH__HS256_SECRET".to_owned(), SECRET.to_owned())]);
    Authenticator::new(&Config::from_toml(&toml, &env).unwrap().auth).unwrap()
}

fn tokens() -> (String, String) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let hs = encode(
        &Header::default(),
        &json!({"sub": "u", "exp": now + 3600, "iat": now}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let pem = std::fs::read(format!("{KEYS}/ec1.pem")).unwrap();
    let es = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "u", "exp": now + 3600, "iat": now, "iss": "https://ec"}),
        &EncodingKey::from_ec_pem(&pem).unwrap(),
    )
    .unwrap();
    (hs, es)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (hs, es) = tokens();
    let uncached = authenticator(0);
    let cached = authenticator(1_000);
    for (name, token) in [("hs256", &hs), ("es256", &es)] {
        runtime.block_on(cached.authenticate(token)).unwrap();
        c.bench_function(&format!("verify/{name}/uncached"), |b| {
            b.to_async(&runtime)
                .iter(|| async { uncached.authenticate(token).await.unwrap() });
        });
        c.bench_function(&format!("verify/{name}/cached"), |b| {
            b.to_async(&runtime)
                .iter(|| async { cached.authenticate(token).await.unwrap() });
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
