//! Edges of the forwarded-header allowlist that the main tests do not pin, each found by mutation
//! testing (`scripts/mutants upstream`, see TESTING.md).

use super::*;

fn forwarded(pairs: &[(&'static str, &str)]) -> Result<HeaderMap, GateError> {
    let mut inbound = HeaderMap::new();
    for (name, value) in pairs {
        inbound.append(HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
    }
    forwarded_headers(&inbound)
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
    let at_bound = "h".repeat(MAX_HEADER_VALUE);
    assert_eq!(
        forwarded(&[("x-fal-runner-hint", &at_bound)]).unwrap()["x-fal-runner-hint"],
        at_bound.as_str()
    );
    let over = "h".repeat(MAX_HEADER_VALUE + 1);
    assert_eq!(
        forwarded(&[("x-fal-runner-hint", &over)]).unwrap_err().code(),
        "malformed_request"
    );
}

#[test]
fn a_forwarded_header_sent_twice_is_refused() {
    let err = forwarded(&[("x-fal-queue-priority", "low"), ("x-fal-queue-priority", "normal")]).unwrap_err();
    assert_eq!(err.code(), "malformed_request");
    assert!(err.message().contains("only once"), "{}", err.message());
}
