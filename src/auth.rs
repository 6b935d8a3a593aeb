//! Who is calling: the [`Caller`] extractor, the only code that reads the inbound
//! `Authorization` header. A request reaches the pipeline only with a verified `Caller`.
//!
//! Tokens are HS256 JWTs signed with `auth.hs256_secret`; `exp` and `sub` are required, and the
//! algorithm list comes from config, never from the token header.

mod mint;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;

pub use mint::mint_hs256;

use crate::app::Gate;
use crate::config;
use crate::error::GateError;

/// Longest bearer token read; anything larger is refused before decoding.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `sub` accepted.
const MAX_SUB_LEN: usize = 256;

/// A verified caller: the proof that authentication ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: the principal that owns requests, limits and quotas.
    pub sub: String,
    /// The token's `tier` claim, when present.
    pub tier: Option<String>,
}

/// Why a caller was not authenticated; every variant is a 401.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the authorization header must be `Bearer <token>`")]
    Scheme,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid")]
    Invalid,
}

/// Checks tokens against the configured keys. Built once at startup.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    tier: Option<String>,
}

impl Verifier {
    /// Builds the verifier from config.
    pub fn new(auth: &config::Auth) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = auth.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(auth.hs256_secret.expose_secret().as_bytes()),
            validation,
        }
    }

    /// Verifies one token and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid);
        }
        let data = decode::<Claims>(token, &self.key, &self.validation).map_err(|err| match err
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let Claims { sub, tier } = data.claims;
        let plain =
            !sub.is_empty() && sub.len() <= MAX_SUB_LEN && !sub.chars().any(char::is_control);
        if !plain {
            return Err(AuthError::Invalid);
        }
        Ok(Caller { sub, tier })
    }
}

/// Reads the single `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Result<&str, AuthError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Scheme);
    }
    let value = value.to_str().map_err(|_| AuthError::Scheme)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Scheme);
    }
    Ok(token.trim())
}

impl FromRequestParts<Arc<Gate>> for Caller {
    type Rejection = GateError;

    async fn from_request_parts(
        parts: &mut Parts,
        gate: &Arc<Gate>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Ok(gate.verifier.verify(token)?)
    }
}

#[cfg(test)]
mod tests;
