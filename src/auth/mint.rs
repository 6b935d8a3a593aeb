//! Minting HS256 tokens for local use (`falgate token`, `falgate dev`, tests).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<&'a str>,
}

/// Signs a token for `sub` that expires after `ttl`.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    tier: Option<&str>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = MintClaims {
        sub,
        iat: now,
        exp: now + ttl.as_secs(),
        tier,
    };
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret))
}
