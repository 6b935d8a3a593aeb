//! Edges of the `fal_webhook` parser, found by mutation testing (`scripts/mutants fal-headers`,
//! see TESTING.md).

use super::*;

#[test]
fn a_webhook_of_exactly_2048_bytes_is_accepted_and_one_byte_more_refused() {
    let base = "https://hooks.example.com/";
    let at = |len: usize| format!("{base}{}", "h".repeat(len - base.len()));
    assert_eq!(Webhook::parse(&at(2048)).unwrap().as_str().len(), 2048);
    assert_eq!(Webhook::parse(&at(2049)), Err(WebhookError));
}

#[test]
fn the_parsed_url_and_its_display_are_the_canonical_form() {
    let hook = Webhook::parse("https://HOOKS.example.com:443/h").unwrap();
    assert_eq!(hook.url().host_str(), Some("hooks.example.com"));
    assert_eq!(hook.url().port_or_known_default(), Some(443));
    assert_eq!(hook.to_string(), "https://hooks.example.com/h");
}

#[test]
fn the_authority_is_read_up_to_the_first_path_query_or_fragment_character() {
    assert_eq!(authority("https://u@h.example:8443/p?q#f"), Some("u@h.example:8443"));
    assert_eq!(authority("https://h.example?q=/x"), Some("h.example"));
    assert_eq!(authority("https://h.example"), Some("h.example"));
    assert_eq!(authority("https:h.example"), None);
    // A percent sign after the authority is an ordinary escape, not an encoded host.
    assert!(Webhook::parse("https://hooks.example.com/%7Eh?x=%2F").is_ok());
    assert_eq!(
        Webhook::parse("https://hooks.example.com%40evil.example/h"),
        Err(WebhookError)
    );
}
