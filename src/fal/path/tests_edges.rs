//! Edges of the queue path and query parser that the main tests do not pin, each found by
//! mutation testing (`scripts/mutants path`, see TESTING.md).

use super::*;

const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

#[test]
fn a_query_of_exactly_4096_bytes_is_read_and_one_byte_more_is_refused() {
    // The webhook itself is bounded (2,048 bytes): percent-escapes fill the raw query instead.
    let prefix = "fal_webhook=https://hooks.example.com/";
    let escapes = "%61".repeat((4096 - prefix.len()) / 3);
    let pad = "a".repeat(4096 - prefix.len() - escapes.len());
    let at_bound = format!("{prefix}{escapes}{pad}");
    assert_eq!(at_bound.len(), 4096);
    assert!(matches!(
        parse_queue_path("/fal-ai/flux/dev", Some(&at_bound)),
        Ok(Op::Submit { webhook: Some(_), .. })
    ));
    let over = format!("{at_bound}a");
    assert_eq!(
        parse_queue_path("/fal-ai/flux/dev", Some(&over)),
        Err(QueuePathError::Query("(too long)".into()))
    );
}

#[test]
fn a_refused_query_key_is_named_printable_and_cut() {
    assert_eq!(
        parse_queue_path(&format!("/a/b/requests/{ID}"), Some("x=1")),
        Err(QueuePathError::Query("x".into()))
    );
    // Decoded control characters and spaces are dropped; the name is cut to 40 characters.
    let long = format!("a%0Ab%20c{}", "k".repeat(100));
    assert_eq!(
        parse_queue_path("/a/b", Some(&format!("{long}=1"))),
        Err(QueuePathError::Query(format!("abc{}", "k".repeat(37))))
    );
}
