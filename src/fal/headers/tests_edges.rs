//! Every bound of the `x-fal-*` values crossed by exactly one unit, found by mutation testing
//! (`scripts/mutants fal-headers`, see TESTING.md).

use super::*;

#[test]
fn a_request_timeout_is_accepted_from_just_over_one_second_up_to_exactly_a_day() {
    assert_eq!(RequestTimeout::parse("1.001").unwrap().to_header(), "1.001");
    assert_eq!(RequestTimeout::parse("86400").unwrap().to_header(), "86400");
    assert!(RequestTimeout::parse("86400.001").is_err());
    assert!(RequestTimeout::new(f64::INFINITY).is_err());
    assert!(RequestTimeout::new(f64::NAN).is_err());
}

#[test]
fn an_expiration_of_exactly_a_hundred_years_is_accepted_and_one_second_more_refused() {
    let years = 100 * 365 * 86_400_u64;
    assert_eq!(years, 3_153_600_000);
    let at = |secs: u64| ObjectLifecycle::parse(&format!(r#"{{"expiration_duration_seconds":{secs}}}"#));
    assert_eq!(at(years).unwrap().expiration_duration_seconds, Some(years));
    assert!(at(years + 1).is_err());
}

#[test]
fn an_acl_holds_at_most_32_rules_of_users_up_to_256_printable_characters() {
    let acl = |users: &[String]| {
        let rules: Vec<String> = users
            .iter()
            .map(|user| {
                format!(
                    r#"{{"user":{},"decision":"allow"}}"#,
                    serde_json::to_string(user).unwrap()
                )
            })
            .collect();
        ObjectLifecycle::parse(&format!(r#"{{"initial_acl":{{"rules":[{}]}}}}"#, rules.join(",")))
    };
    let thirty_two: Vec<String> = (0..32).map(|n| format!("u{n}")).collect();
    assert_eq!(acl(&thirty_two).unwrap().initial_acl.unwrap().rules.len(), 32);
    let thirty_three: Vec<String> = (0..33).map(|n| format!("u{n}")).collect();
    assert!(acl(&thirty_three).is_err());

    assert!(acl(&["u".repeat(256)]).is_ok());
    assert!(acl(&["u".repeat(257)]).is_err());
    assert!(acl(&["a\nb".to_owned()]).is_err());
    assert!(acl(&["a\u{7f}b".to_owned()]).is_err());
    assert!(acl(&["ünïcode user".to_owned()]).is_ok());
}

#[test]
fn a_lifecycle_written_in_the_config_is_checked_by_the_same_bounds() {
    let mut lifecycle = ObjectLifecycle::parse(r#"{"expiration_duration_seconds":60}"#).unwrap();
    assert_eq!(lifecycle.check(), Ok(()));
    lifecycle.expiration_duration_seconds = Some(u64::MAX);
    assert_eq!(lifecycle.check(), Err(HeaderValueError));
}

#[test]
fn a_lifecycle_is_read_only_from_a_json_object() {
    assert!(ObjectLifecycle::parse("  {}").is_ok());
    for bad in ["[3600]", "null", "3600", "\"{}\""] {
        assert!(ObjectLifecycle::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_runner_hint_is_1_to_256_printable_ascii_characters_without_spaces() {
    assert_eq!(check_runner_hint("eu-west/gpu:a100"), Ok("eu-west/gpu:a100"));
    assert!(check_runner_hint(&"h".repeat(256)).is_ok());
    for bad in [
        String::new(),
        "h".repeat(257),
        "a b".into(),
        "a\tb".into(),
        "ä".into(),
        "a\u{7f}".into(),
    ] {
        assert_eq!(check_runner_hint(&bad), Err(HeaderValueError), "{bad:?}");
    }
}

#[test]
fn no_retry_and_store_io_read_only_their_documented_spellings() {
    for (raw, on) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("0", false),
        ("false", false),
        ("no", false),
    ] {
        assert_eq!(parse_no_retry(raw), Ok(on), "{raw}");
    }
    for bad in ["", "TRUE", "2", " 1", "on"] {
        assert_eq!(parse_no_retry(bad), Err(HeaderValueError), "{bad:?}");
    }
    assert_eq!(parse_store_io("1"), Ok(true));
    assert_eq!(parse_store_io("0"), Ok(false));
    for bad in ["", "true", "false", "2", "01"] {
        assert_eq!(parse_store_io(bad), Err(HeaderValueError), "{bad:?}");
    }
}
