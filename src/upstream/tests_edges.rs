//! Edges of the forwarded-header allowlist that the main tests do not pin, each found by mutation
//! testing (`scripts/mutants upstream`, see TESTING.md).

use axum::http::HeaderName;

use super::forwarded::MAX_HEADER_VALUE;
use super::*;
use crate::error::GateError;
use crate::policy::FalHeaderRules;

fn forwarded(pairs: &[(&'static str, &str)]) -> Result<HeaderMap, GateError> {
    let mut inbound = HeaderMap::new();
    for (name, value) in pairs {
        inbound.append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
    }
    let submit = crate::fal::parse_target("https://queue.fal.run/fal-ai/flux/dev").unwrap();
    forwarded_headers(&inbound, &submit, &FalHeaderRules::default()).map_err(GateError::from)
}

#[test]
fn a_request_timeout_over_one_second_is_forwarded_and_an_infinite_one_refused() {
    assert_eq!(
        forwarded(&[("x-fal-request-timeout", "30")]).unwrap()["x-fal-request-timeout"],
        "30"
    );
    assert_eq!(
        forwarded(&[("x-fal-request-timeout", "1.5")]).unwrap()["x-fal-request-timeout"],
        "1.5"
    );
    for bad in ["inf", "-inf", "0.5", "-30"] {
        assert_eq!(
            forwarded(&[("x-fal-request-timeout", bad)]).unwrap_err().code(),
            "malformed_request",
            "{bad}"
        );
    }
}

#[test]
fn an_empty_or_overlong_value_is_refused_and_the_bound_itself_passes() {
    assert_eq!(
        forwarded(&[("x-fal-runner-hint", "")]).unwrap_err().code(),
        "malformed_request"
    );
    // The lifecycle JSON is the one value that may be long: padded with JSON whitespace to the
    // bound it passes (and is sent compact), one byte more is refused before it is parsed.
    let json = r#"{"expiration_duration_seconds":60}"#;
    let at_bound = format!("{json}{}", " ".repeat(MAX_HEADER_VALUE - json.len()));
    assert_eq!(
        forwarded(&[("x-fal-object-lifecycle", &at_bound)]).unwrap()["x-fal-object-lifecycle"],
        json
    );
    let over = format!("{at_bound} ");
    assert_eq!(
        forwarded(&[("x-fal-object-lifecycle", &over)]).unwrap_err().code(),
        "malformed_request"
    );
}

#[test]
fn a_forwarded_header_sent_twice_is_refused() {
    let err = forwarded(&[("x-fal-queue-priority", "low"), ("x-fal-queue-priority", "normal")]).unwrap_err();
    assert_eq!(err.code(), "malformed_request");
    assert!(err.message().contains("only once"), "{}", err.message());
}
