//! Edges of `parse_target` that the main tests do not pin, each found by mutation testing
//! (`scripts/mutants target`, see TESTING.md). Every case has a path that parses, so the rule
//! under test is the only thing that can refuse it, and each asserts which rule refused it.

use super::*;

const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

#[test]
fn userinfo_on_a_fal_host_is_refused_even_though_it_is_canonical() {
    for raw in [
        "https://user@queue.fal.run/fal-ai/flux/dev",
        "https://user:pw@fal.run/fal-ai/flux/dev",
        "https://:pw@queue.fal.run/fal-ai/flux/dev",
    ] {
        // The serialisation keeps the userinfo: only the explicit check refuses these.
        assert_eq!(Url::parse(raw).unwrap().as_str(), raw);
        assert_eq!(parse_target(raw), Err(TargetError::NotCanonical), "{raw}");
    }
}

#[test]
fn a_non_default_port_on_a_fal_host_is_refused() {
    let raw = "https://queue.fal.run:8443/fal-ai/flux/dev";
    assert_eq!(Url::parse(raw).unwrap().as_str(), raw);
    assert_eq!(parse_target(raw), Err(TargetError::NotCanonical));
}

#[test]
fn a_backslash_in_the_query_is_refused_though_the_serialiser_keeps_it() {
    // WHATWG leaves `\` unencoded in a query, so canonical equality alone would let it through
    // to fal inside `fal_webhook`.
    let raw = "https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https:\\\\hooks.example.com/h";
    assert_eq!(Url::parse(raw).unwrap().as_str(), raw);
    assert_eq!(parse_target(raw), Err(TargetError::NotCanonical));
}

#[test]
fn the_length_bound_is_exactly_max_target_len() {
    let prefix = "https://queue.fal.run/fal-ai/flux/dev?fal_webhook=https://hooks.example.com/";
    // The webhook itself is bounded (2,048 bytes): percent-escapes fill the raw URL instead.
    let escapes = "%61".repeat((MAX_TARGET_LEN - prefix.len()) / 3);
    let pad = "a".repeat(MAX_TARGET_LEN - prefix.len() - escapes.len());
    let at_bound = format!("{prefix}{escapes}{pad}");
    assert_eq!(at_bound.len(), MAX_TARGET_LEN);
    assert!(parse_target(&at_bound).is_ok());
    let over = format!("{at_bound}a");
    assert_eq!(parse_target(&over), Err(TargetError::NotCanonical));
}

#[test]
fn a_fragment_is_refused_even_when_empty() {
    for raw in [
        "https://queue.fal.run/fal-ai/flux/dev#x",
        "https://queue.fal.run/fal-ai/flux/dev#",
    ] {
        assert_eq!(parse_target(raw), Err(TargetError::NotCanonical), "{raw}");
    }
}

#[test]
fn each_refusal_names_its_own_rule() {
    assert_eq!(parse_target(""), Err(TargetError::Missing));
    assert_eq!(
        parse_target("http://queue.fal.run/fal-ai/flux/dev"),
        Err(TargetError::Scheme)
    );
    assert_eq!(
        parse_target("https://evilfal.run/fal-ai/flux/dev"),
        Err(TargetError::Host)
    );
    assert_eq!(
        parse_target("https://rest.fal.ai/storage/upload/initiate"),
        Err(TargetError::RestPath)
    );
    assert_eq!(
        parse_target("https://rest.fal.ai/fal-ai/flux/dev?storage_type=fal-cdn-v3"),
        Err(TargetError::RestPath)
    );
}

#[test]
fn fal_run_takes_only_a_plain_endpoint() {
    assert!(matches!(
        parse_target("https://fal.run/fal-ai/flux/dev").unwrap().op,
        Op::Run { .. }
    ));
    for raw in [
        "https://fal.run/fal-ai/flux/dev?fal_webhook=https%3A%2F%2Fhooks.example.com%2Fh".to_owned(),
        format!("https://fal.run/fal-ai/flux/requests/{ID}"),
        format!("https://fal.run/fal-ai/flux/requests/{ID}/status"),
    ] {
        assert_eq!(
            parse_target(&raw),
            Err(TargetError::Path(QueuePathError::Shape)),
            "{raw}"
        );
    }
}
