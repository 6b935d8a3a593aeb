//! W3C Trace Context (`traceparent`, `tracestate`) and request ids: strict parsing of what a
//! caller sends, fresh values when it sends none. Hand-written because the check is a dozen lines
//! of byte tests and the OpenTelemetry propagator (used when tracing is on) accepts what the
//! format does not allow here (upper-case hex, future versions, trailing fields).

use axum::http::HeaderValue;

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, the only version this gate speaks.
const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` passed on (the W3C's 32 members of up to 256 bytes are a ceiling, not
/// a size any tracer sends; 512 is what the spec asks every vendor to keep).
const MAX_TRACESTATE: usize = 512;
/// Longest request id accepted from a trusted proxy.
pub const MAX_REQUEST_ID: usize = 128;

/// A valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses the exact W3C form (version `00`, lower-case hex, ids not all zero).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != TRACEPARENT_LEN || &value[..3] != b"00-" || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let hex = |bytes: &[u8]| -> Option<u128> {
            bytes.iter().try_fold(0u128, |acc, b| {
                let digit = match b {
                    b'0'..=b'9' => b - b'0',
                    b'a'..=b'f' => b - b'a' + 10,
                    _ => return None,
                };
                Some(acc << 4 | u128::from(digit))
            })
        };
        let trace_id = hex(&value[3..35])?;
        let parent_id = u64::try_from(hex(&value[36..52])?).ok()?;
        let flags = u8::try_from(hex(&value[53..55])?).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace, not sampled (nothing records it unless tracing is on).
    pub fn fresh() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            flags: 0,
        }
    }

    /// The header value.
    pub fn to_header(self) -> HeaderValue {
        // `00-{trace_id:032x}-{parent_id:016x}-{flags:02x}`, written without `format!`: one
        // header per call to fal (issue 23).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let mut put = |end: usize, digits: usize, mut n: u128| {
            for at in (end - digits..end).rev() {
                text[at] = HEX[(n & 15) as usize];
                n >>= 4;
            }
        };
        put(35, 32, self.trace_id);
        put(52, 16, u128::from(self.parent_id));
        put(55, 2, u128::from(self.flags));
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// Whether a `tracestate` may be passed on: bounded, printable ASCII, no control bytes.
pub fn valid_tracestate(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_TRACESTATE && bytes.iter().all(|b| (0x20..0x7f).contains(b))
}

/// Whether a request id is safe to log, return and forward: 1 to 128 bytes of letters, digits
/// and `-_.:=+/@` (UUIDs, nginx's hex ids, `Root=1-…` style ids), nothing that could break a
/// log line or a header.
pub fn valid_request_id(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUEST_ID
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:=+/@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_prints_back() {
        let parent = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_header(), GOOD);
    }

    #[test]
    fn anything_but_the_exact_form_is_refused() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn fresh_parents_are_valid_and_differ() {
        let (a, b) = (TraceParent::fresh(), TraceParent::fresh());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(a.to_header().as_bytes()), Some(a));
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id(b"3f2c9a1e-0b7d-4c1e-9a55-1d2b3c4d5e6f"));
        assert!(valid_request_id(b"Root=1-5759e988-bd862e3fe1be46a994272793"));
        assert!(valid_request_id(&[b'a'; MAX_REQUEST_ID]));
        assert!(!valid_request_id(&[b'a'; MAX_REQUEST_ID + 1]));
        for bad in ["", "a b", "a\"b", "a\nb", "a;b", "é"] {
            assert!(!valid_request_id(bad.as_bytes()), "{bad:?}");
        }
    }
}
