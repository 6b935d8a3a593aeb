//! What the access line records about a call, shared by the routes that learn it and the
//! middleware that writes it (`layers::access_log`, which gives each request its id, writes the
//! body of a refusal and logs the line): the request id headers, a route's [`CallFacts`], and the
//! keyed [`PrincipalHash`] that stands for a caller. Nothing here knows the error type.

use std::fmt;

use axum::http::HeaderName;

/// The response header carrying falgate's request id.
pub const REQUEST_ID_HEADER: &str = "x-falgate-request-id";
/// The request id header a proxy sends and fal receives.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What a route learned about a call, for the access line (set as a response extension).
#[derive(Clone, Debug, Default)]
pub struct CallFacts {
    /// `Call::op_name`, once the call was parsed.
    pub operation: Option<&'static str>,
    /// The endpoint (submit, run) or app (calls on a request) addressed.
    pub endpoint: Option<String>,
    /// The authenticated caller, hashed.
    pub principal: Option<PrincipalHash>,
}

/// The first 8 bytes of `HMAC-SHA256(key, issuer "|" subject)`: one caller's lines can be found
/// together, never the subject itself (a subject may be an e-mail address), and, the hash
/// being keyed, nobody holding the logs but not the key can test a guessed subject against
/// them. The key is `log.principal_hash_key`, else derived from the fal key
/// (`upstream::FalCredentials::derived_key`): the same on every replica, so their lines
/// correlate. Set once per process ([`set_principal_key`]; restart-only).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PrincipalHash([u8; 8]);

/// The principal hash's key; a random one for a process that never set it (unit tests).
static PRINCIPAL_KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();

/// Sets the key of [`PrincipalHash`] for the process; the first call wins (a reload keeps it).
pub fn set_principal_key(key: [u8; 32]) {
    PRINCIPAL_KEY.get_or_init(|| key);
}

impl PrincipalHash {
    /// The hash under the process's key.
    pub fn of(issuer: &str, subject: &str) -> Self {
        let key = PRINCIPAL_KEY.get_or_init(|| {
            let mut key = [0; 32];
            key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            key
        });
        Self::keyed(key, issuer, subject)
    }

    /// The hash under `key`.
    pub fn keyed(key: &[u8; 32], issuer: &str, subject: &str) -> Self {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
        // The three parts in turn: the same MAC as over their concatenation, without one.
        mac.update(issuer.as_bytes());
        mac.update(b"|");
        mac.update(subject.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut short = [0; 8];
        short.copy_from_slice(&digest[..8]);
        Self(short)
    }
}

impl PrincipalHash {
    /// The 16 lowercase hex digits, appended to `out` (what `Display` writes).
    pub fn hex(self, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in self.0 {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
    }
}

impl fmt::Display for PrincipalHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PrincipalHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    /// Issue 20: the hash is keyed, so a list of guessed subjects cannot be matched against the
    /// logs without the key; replicas with one key agree.
    #[test]
    fn principal_hashes_are_keyed() {
        let (one, other) = ([1; 32], [2; 32]);
        let hash = |key: &[u8; 32]| PrincipalHash::keyed(key, "default", "alice@example.com").to_string();
        assert_eq!(hash(&one), hash(&one), "one key, one hash (replicas correlate)");
        assert_ne!(hash(&one), hash(&other));
        let plain = Sha256::new()
            .chain_update(b"falgate-principal\0default|alice@example.com")
            .finalize();
        assert_ne!(hash(&one), hex::encode(&plain[..8]), "an unkeyed SHA-256");
    }

    /// The hash is the first 8 bytes of HMAC-SHA256(key, issuer "|" subject), byte for byte as
    /// before it was computed here (with the helper `config` keeps), so the lines of replicas on
    /// two versions still correlate.
    #[test]
    fn principal_hashes_are_hmac_sha256_of_issuer_and_subject() {
        let hash = PrincipalHash::keyed(&[1; 32], "default", "alice@example.com");
        assert_eq!(hash.to_string(), "d25d6aff19f8f02f");
    }

    #[test]
    fn principal_hashes_are_stable_short_and_not_the_subject() {
        let a = PrincipalHash::of("default", "alice@example.com").to_string();
        assert_eq!(a.len(), 16);
        assert_eq!(a, PrincipalHash::of("default", "alice@example.com").to_string());
        assert_ne!(a, PrincipalHash::of("other", "alice@example.com").to_string());
        assert!(!a.contains("alice"));
    }
}
