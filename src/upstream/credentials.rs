//! The server-held fal key, held as a secret that cannot be printed (its `Debug` is redacted, it
//! has no `Display`). `config` reads it from the environment (`FalCredentials::from_sources`);
//! only `upstream` sends it.

use secrecy::{ExposeSecret, SecretString};

/// The server-held fal key, as it goes into `Authorization: Key …`.
#[derive(Clone)]
pub struct FalCredentials(SecretString);

impl std::fmt::Debug for FalCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FalCredentials([REDACTED])")
    }
}

impl FalCredentials {
    /// Wraps a key given in code (the dev command's emulator key).
    pub fn new(key: String) -> Self {
        Self(SecretString::from(key))
    }

    /// A key read from the environment: non-empty printable ASCII without spaces.
    pub(crate) fn checked(raw: String) -> Result<Self, String> {
        let valid = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_graphic());
        if valid {
            Ok(Self(SecretString::from(raw)))
        } else {
            Err("the fal key must be non-empty printable ASCII without spaces".into())
        }
    }

    /// A key for `purpose`, derived from the fal key one way (HMAC-SHA256 keyed with it): the same
    /// on every replica sharing the key, and telling nothing about the key. The principal hash
    /// of the logs uses it when `log.principal_hash_key` is unset.
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        keyed_digest(self.0.expose_secret().as_bytes(), purpose.as_bytes())
    }

    /// The `Authorization` header value for fal. Only `upstream` calls this.
    pub(crate) fn authorization(&self) -> String {
        format!("Key {}", self.0.expose_secret())
    }
}

/// HMAC-SHA256 of `message` under `key`.
pub(crate) fn keyed_digest(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}
