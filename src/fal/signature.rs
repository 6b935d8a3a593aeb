//! fal's webhook signature format, shared by the receiver (`webhooks`) and the emulator that
//! signs like fal: the four headers, the signed message, and the JWKS document of Ed25519 keys
//! (`OKP`, `crv` `Ed25519`, `x` base64url) fal serves at `rest.fal.ai/.well-known/jwks.json`.

use base64::Engine;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

pub const REQUEST_ID: &str = "x-fal-webhook-request-id";
pub const USER_ID: &str = "x-fal-webhook-user-id";
pub const TIMESTAMP: &str = "x-fal-webhook-timestamp";
pub const SIGNATURE: &str = "x-fal-webhook-signature";

/// The four headers fal signs with, in that order.
pub const HEADERS: [&str; 4] = [REQUEST_ID, USER_ID, TIMESTAMP, SIGNATURE];

/// Most keys read from one JWKS document.
const MAX_KEYS: usize = 16;

/// The signed message: `request_id \n user_id \n timestamp \n hex(sha256(body))`.
pub fn message(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(body));
    format!("{request_id}\n{user_id}\n{timestamp}\n{digest}").into_bytes()
}

/// The JWKS document serving `keys`.
pub fn jwks_document(keys: &[VerifyingKey]) -> serde_json::Value {
    let keys: Vec<_> = keys
        .iter()
        .map(|key| {
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes());
            serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": "EdDSA", "kid": &x[..16] })
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// The Ed25519 keys of a JWKS document; other keys are skipped, at most [`MAX_KEYS`] kept.
pub fn jwks_keys(document: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(document).map_err(|err| format!("not a JWKS: {err}"))?;
    let key = |jwk: &serde_json::Value| -> Option<VerifyingKey> {
        if jwk.get("kty")?.as_str()? != "OKP" || jwk.get("crv")?.as_str()? != "Ed25519" {
            return None;
        }
        let x = jwk.get("x")?.as_str()?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x.trim_end_matches('='))
            .ok()?;
        VerifyingKey::from_bytes(&<[u8; 32]>::try_from(bytes).ok()?).ok()
    };
    Ok(document.keys.iter().filter_map(key).take(MAX_KEYS).collect())
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn the_message_is_the_documented_one() {
        // hex(sha256("")) is the well-known e3b0c442…b855.
        let got = String::from_utf8(message("id", "u1", "1700000000", b"")).unwrap();
        assert_eq!(
            got,
            "id\nu1\n1700000000\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn only_ed25519_keys_are_read() {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let mut doc = jwks_document(&[key]);
        let keys = doc["keys"].as_array_mut().unwrap();
        keys.push(serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}));
        keys.push(serde_json::json!({"kty": "OKP", "crv": "X25519", "x": "AAAA"}));
        assert_eq!(jwks_keys(doc.to_string().as_bytes()).unwrap(), vec![key]);
        assert!(jwks_keys(b"[]").is_err());
    }
}
