//! fal's webhook signature, as fal documents it: the headers `X-Fal-Webhook-Request-Id`,
//! `-User-Id`, `-Timestamp` (Unix seconds) and `-Signature` (hex Ed25519), over the message
//! `request_id \n user_id \n timestamp \n hex(sha256(raw body))`, verified by any key of fal's
//! JWKS. Pure: the keys, the clock reading and the configured user come from the caller, so
//! every refusal is tested without a server.

use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use http::HeaderMap;

use super::Refusal;
pub use crate::fal::signature::{message, HEADERS, REQUEST_ID, SIGNATURE, TIMESTAMP, USER_ID};
use crate::fal::FalRequestId;

/// A delivery's signed headers, parsed (nothing checked against keys, clock or config yet).
#[derive(Debug, Clone)]
pub struct Signed {
    /// The request id, canonical (lower case: one request, one name for its records).
    pub request_id: FalRequestId,
    /// The request id as sent: what fal signed.
    pub request_id_raw: String,
    pub user_id: String,
    /// The timestamp as sent (what was signed) and as a number.
    pub timestamp_raw: String,
    pub timestamp: u64,
    pub signature: Signature,
}

/// Longest user id header read.
const MAX_USER_ID: usize = 256;

impl Signed {
    /// Reads the four headers; a missing or garbled one is a refusal naming it.
    pub fn parse(headers: &HeaderMap) -> Result<Self, Refusal> {
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|value| !value.is_empty())
        };
        let request_id_raw = text(REQUEST_ID).ok_or(Refusal::Malformed(REQUEST_ID))?;
        let request_id = FalRequestId::parse(request_id_raw).map_err(|_| Refusal::Malformed(REQUEST_ID))?;
        let user_id = text(USER_ID)
            .filter(|id| id.len() <= MAX_USER_ID)
            .ok_or(Refusal::Malformed(USER_ID))?;
        let timestamp_raw = text(TIMESTAMP).ok_or(Refusal::Stale)?;
        let timestamp = timestamp_raw
            .parse::<u64>()
            .ok()
            .filter(|_| timestamp_raw.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(Refusal::Stale)?;
        let signature = text(SIGNATURE)
            .and_then(|hex| <[u8; 64]>::try_from(hex::decode(hex).ok()?).ok())
            .map(|bytes| Signature::from_bytes(&bytes))
            .ok_or(Refusal::BadSignature)?;
        Ok(Self {
            request_id,
            request_id_raw: request_id_raw.to_owned(),
            user_id: user_id.to_owned(),
            timestamp_raw: timestamp_raw.to_owned(),
            timestamp,
            signature,
        })
    }

    /// Refuses a timestamp more than `max_skew` away from `now` (Unix seconds), either way.
    pub fn check_time(&self, now: u64, max_skew: Duration) -> Result<(), Refusal> {
        match now.abs_diff(self.timestamp) <= max_skew.as_secs() {
            true => Ok(()),
            false => Err(Refusal::Stale),
        }
    }

    /// Refuses a delivery for another fal user than `expected`, when one is configured.
    pub fn check_user(&self, expected: Option<&str>) -> Result<(), Refusal> {
        match expected {
            Some(expected) if expected != self.user_id => Err(Refusal::WrongUser),
            _ => Ok(()),
        }
    }

    /// Whether any of `keys` signed this delivery of `body`.
    pub fn verified_by(&self, keys: &[VerifyingKey], body: &[u8]) -> bool {
        // The bytes fal signed, not their canonical form.
        let message = message(&self.request_id_raw, &self.user_id, &self.timestamp_raw, body);
        keys.iter()
            .any(|key| key.verify_strict(&message, &self.signature).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};
    use http::HeaderValue;

    use super::*;

    const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";
    const BODY: &[u8] = br#"{"request_id":"764cabcf-b745-4b3e-ae38-1200304cf45b","status":"OK"}"#;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn headers(signer: &SigningKey, user: &str, timestamp: &str, body: &[u8]) -> HeaderMap {
        let signature = signer.sign(&message(ID, user, timestamp, body));
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (REQUEST_ID, ID.to_owned()),
            (USER_ID, user.to_owned()),
            (TIMESTAMP, timestamp.to_owned()),
            (SIGNATURE, hex::encode(signature.to_bytes())),
        ] {
            headers.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        headers
    }

    #[test]
    fn a_delivery_signed_by_a_known_key_verifies_and_nothing_else_does() {
        let (fal, other) = (key(1), key(2));
        let signed = Signed::parse(&headers(&fal, "u1", "1700000000", BODY)).unwrap();
        assert!(signed.verified_by(&[other.verifying_key(), fal.verifying_key()], BODY));
        assert!(!signed.verified_by(&[other.verifying_key()], BODY), "unknown key");
        assert!(!signed.verified_by(&[], BODY), "no keys");
        let mut changed = BODY.to_vec();
        changed[5] ^= 1;
        assert!(!signed.verified_by(&[fal.verifying_key()], &changed), "body changed");
        // Another user id or timestamp than the signed one: the message differs.
        let mut forged = headers(&fal, "u1", "1700000000", BODY);
        forged.insert(USER_ID, HeaderValue::from_static("u2"));
        let forged = Signed::parse(&forged).unwrap();
        assert!(!forged.verified_by(&[fal.verifying_key()], BODY));
    }

    #[test]
    fn the_request_id_is_verified_as_sent_and_kept_canonical() {
        let fal = key(1);
        let upper = ID.to_ascii_uppercase();
        let signature = fal.sign(&message(&upper, "u1", "1000", BODY));
        let mut sent = headers(&fal, "u1", "1000", BODY);
        sent.insert(REQUEST_ID, HeaderValue::from_str(&upper).unwrap());
        sent.insert(
            SIGNATURE,
            HeaderValue::from_str(&hex::encode(signature.to_bytes())).unwrap(),
        );
        let signed = Signed::parse(&sent).unwrap();
        assert!(signed.verified_by(&[fal.verifying_key()], BODY));
        assert_eq!(signed.request_id.as_str(), ID);
    }

    #[test]
    fn timestamps_outside_the_skew_and_other_users_are_refused() {
        let signed = Signed::parse(&headers(&key(1), "u1", "1000", BODY)).unwrap();
        let skew = Duration::from_secs(300);
        assert!(signed.check_time(1300, skew).is_ok());
        assert!(signed.check_time(700, skew).is_ok());
        assert!(matches!(signed.check_time(1301, skew), Err(Refusal::Stale)));
        assert!(
            matches!(signed.check_time(699, skew), Err(Refusal::Stale)),
            "from the future"
        );
        assert!(signed.check_user(None).is_ok());
        assert!(signed.check_user(Some("u1")).is_ok());
        assert!(matches!(signed.check_user(Some("u2")), Err(Refusal::WrongUser)));
    }

    #[test]
    fn missing_or_garbled_headers_are_refused_by_kind() {
        let good = headers(&key(1), "u1", "1000", BODY);
        let case = |name: &str, value: Option<&'static str>| {
            let mut headers = good.clone();
            match value {
                Some(value) => headers.insert(
                    name.parse::<http::HeaderName>().unwrap(),
                    HeaderValue::from_static(value),
                ),
                None => headers.remove(name),
            };
            crate::error::GateError::from(Signed::parse(&headers).unwrap_err()).code()
        };
        assert_eq!(case(REQUEST_ID, None), "malformed_request");
        assert_eq!(case(REQUEST_ID, Some("../x")), "malformed_request");
        assert_eq!(case(USER_ID, None), "malformed_request");
        assert_eq!(case(TIMESTAMP, None), "webhook_timestamp_out_of_range");
        assert_eq!(case(TIMESTAMP, Some("+1000")), "webhook_timestamp_out_of_range");
        assert_eq!(case(TIMESTAMP, Some("1e3")), "webhook_timestamp_out_of_range");
        assert_eq!(case(SIGNATURE, None), "webhook_signature_invalid");
        assert_eq!(case(SIGNATURE, Some("zz")), "webhook_signature_invalid");
        assert_eq!(case(SIGNATURE, Some("abcd")), "webhook_signature_invalid");
    }
}
