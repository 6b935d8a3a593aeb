//! Verification keys, each pinned to one algorithm when loaded: from an HMAC secret, a JWK (from
//! a JWKS or a file) or a PEM file. Symmetric keys served as JWKs are refused, so a public key
//! can never be used as an HMAC secret (HS/RS confusion).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// One verification key and the only algorithm it verifies.
#[derive(Clone)]
pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {0}: {1}")]
    File(String, String),
    #[error("cannot build the JWKS client: {0}")]
    Client(String),
    #[error("issuer `{0}`: its JWKS could not be loaded: {1}")]
    Unavailable(String, String),
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Pins a JWK to its algorithm: its `alg` when it fits the key type, else the type's default
/// (the first RSA algorithm configured, RS256 otherwise; the curve's ES algorithm; EdDSA).
pub(super) fn from_jwk(jwk: &Jwk, configured: &[Algorithm]) -> Result<Key, String> {
    let declared = jwk.common.key_algorithm.and_then(key_algorithm);
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            Some(alg) if RSA_ALGS.contains(&alg) => alg,
            None => configured
                .iter()
                .copied()
                .find(|alg| RSA_ALGS.contains(alg))
                .unwrap_or(Algorithm::RS256),
            Some(other) => return Err(format!("RSA key declares {other:?}")),
        },
        AlgorithmParameters::EllipticCurve(params) => {
            let alg = match params.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err("unsupported curve".into()),
            };
            if declared.is_some_and(|d| d != alg) {
                return Err("EC key declares an algorithm that does not match its curve".into());
            }
            alg
        }
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are not accepted from a JWK".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|err| err.to_string())?;
    Ok(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    format!("{alg:?}").parse().ok()
}

/// Parses a JWKS document (`{"keys": [...]}`), skipping keys it cannot use.
pub(super) fn from_jwks(doc: &[u8], configured: &[Algorithm]) -> Result<(Vec<Key>, Vec<String>), String> {
    let value: Value = serde_json::from_slice(doc).map_err(|err| format!("not JSON: {err}"))?;
    let entries = value.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let kid = entry
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or("(no kid)")
            .chars()
            .take(64)
            .collect::<String>();
        match serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|err| err.to_string())
            .and_then(|jwk| from_jwk(&jwk, configured))
        {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("{kid}: {why}")),
        }
    }
    Ok((keys, skipped))
}

/// Loads a key file: a JWK or JWKS (`.json`), or a PEM public key whose algorithm family comes
/// from the issuer's configured `algorithms`.
pub(super) fn from_file(path: &std::path::Path, configured: &[Algorithm]) -> Result<Vec<Key>, KeyError> {
    let name = path.display().to_string();
    let fail = |why: String| KeyError::File(name.clone(), why);
    let bytes = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
    if path.extension().is_some_and(|ext| ext == "json") {
        let value: Value = serde_json::from_slice(&bytes).map_err(|err| fail(err.to_string()))?;
        if value.get("keys").is_some() {
            return from_jwks(&bytes, configured).map(|(keys, _)| keys).map_err(fail);
        }
        let jwk: Jwk = serde_json::from_value(value).map_err(|err| fail(err.to_string()))?;
        return from_jwk(&jwk, configured).map(|key| vec![key]).map_err(fail);
    }
    let alg = *configured
        .first()
        .ok_or_else(|| fail("a PEM key needs `algorithms` to name its algorithm".into()))?;
    let key = match alg {
        a if RSA_ALGS.contains(&a) => DecodingKey::from_rsa_pem(&bytes),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&bytes),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&bytes),
        _ => return Err(fail("PEM keys are for RS/PS/ES/EdDSA algorithms".into())),
    }
    .map_err(|err| fail(err.to_string()))?;
    Ok(configured
        .iter()
        .map(|alg| Key {
            kid: None,
            alg: *alg,
            key: key.clone(),
        })
        .collect())
}

/// HMAC keys, one per configured HS algorithm.
pub(super) fn from_secret(secret: &[u8], algorithms: &[Algorithm]) -> Vec<Key> {
    algorithms
        .iter()
        .filter(|alg| matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        .map(|alg| Key {
            kid: None,
            alg: *alg,
            key: DecodingKey::from_secret(secret),
        })
        .collect()
}

#[cfg(test)]
mod tests_edges;
