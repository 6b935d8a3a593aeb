//! A first, unverified look at a token: its shape, header and `iss`, before any key is chosen.
//! Refuses what no verifier should ever see: wrong segment counts, non-base64url bytes,
//! padding, `crit` headers (RFC 7515 §4.1.11: none are understood here), and `alg: none`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::{AuthError, Why};

/// What the unverified token says about itself.
pub(super) struct Peek {
    pub(super) alg: Algorithm,
    pub(super) kid: Option<String>,
    pub(super) typ: Option<String>,
    pub(super) iss: Option<String>,
}

pub(super) fn peek(token: &str) -> Result<Peek, AuthError> {
    let segments: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = segments[..] else {
        return Err(AuthError::Invalid(Why::Malformed));
    };
    let base64url = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !(base64url(header) && base64url(payload) && base64url(signature)) {
        return Err(AuthError::Invalid(Why::Malformed));
    }
    let header = object(header)?;
    if header.contains_key("crit") {
        return Err(AuthError::Invalid(Why::Malformed));
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(|alg| alg.parse().ok())
        .ok_or(AuthError::Invalid(Why::Malformed))?;
    let text = |key: &str| -> Result<Option<String>, AuthError> {
        match header.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= 256 => Ok(Some(s.clone())),
            Some(_) => Err(AuthError::Invalid(Why::Malformed)),
        }
    };
    let (kid, typ) = (text("kid")?, text("typ")?);
    let iss = match object(payload)?.get("iss") {
        None => None,
        Some(Value::String(iss)) => Some(iss.clone()),
        Some(_) => return Err(AuthError::Invalid(Why::Malformed)),
    };
    Ok(Peek { alg, kid, typ, iss })
}

fn object(segment: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Invalid(Why::Malformed))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Invalid(Why::Malformed)),
    }
}
