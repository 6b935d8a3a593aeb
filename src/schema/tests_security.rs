//! SECURITY-CASES group E (input validation), one named test per case this module owns.
//! Cases 79 (content type) and 83 (content encoding) belong to `input::read_json`, before here.

use serde_json::{json, Value};

use super::tests::{check, compile, field_errors, seed_source, source_at, temp_schema, VPG};
use super::*;

fn raw(schemas: &Schemas, body: &[u8]) -> Result<ValidInput, Rejection> {
    schemas.validate(VPG, None, body, &ValidationLimits::default())
}

fn malformed(schemas: &Schemas, body: &[u8]) -> String {
    match raw(schemas, body) {
        Err(Rejection::Malformed(why)) => why,
        other => panic!(
            "expected malformed for {:?}, got {other:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fn allow_unknown() -> Schemas {
    compile(SchemaSource {
        unknown_fields: UnknownFields::Allow,
        ..seed_source()
    })
}

/// A schema with the numeric fields fal's image models have.
fn numeric_schema() -> Schemas {
    let schema = json!({ "type": "object", "properties": {
        "num_images": { "type": "integer", "minimum": 1, "maximum": 4 },
        "width": { "type": "integer", "maximum": 2048 },
        "name": { "type": "string", "pattern": "^(a+)+$" },
    } });
    compile(source_at(temp_schema("numeric", &schema)))
}

#[test]
fn e65_wrong_type_and_missing_required_are_422_and_a_valid_body_passes() {
    let schemas = compile(seed_source());
    let wrong = field_errors(&schemas, None, &json!({ "input_concept": 123 }));
    assert_eq!(
        serde_json::to_value(&wrong).unwrap(),
        json!([{ "loc": ["body", "input_concept"], "msg": "str type expected", "type": "type_error.str" }])
    );
    let missing = field_errors(&schemas, None, &json!({}));
    assert_eq!(missing[0].kind, "value_error.missing");
    assert!(check(&schemas, None, &json!({ "input_concept": "a lighthouse" })).is_ok());
}

#[test]
fn e66_endpoint_without_a_schema_fails_closed() {
    let rejection = compile(seed_source()).validate("fal-ai/flux/dev", None, b"{}", &ValidationLimits::default());
    assert_eq!(rejection.unwrap_err(), Rejection::NoSchema("fal-ai/flux/dev".into()));
}

#[test]
fn e67_type_confusion_is_refused_wherever_the_json_type_is_wrong() {
    let schemas = numeric_schema();
    for bad in [json!("4"), json!(true), json!([4]), json!(null), json!({ "n": 4 })] {
        let errors = field_errors(&schemas, None, &json!({ "num_images": bad }));
        assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
        assert_eq!(errors[0].loc, [json!("body"), json!("num_images")]);
        assert!(errors[0].kind.starts_with("type_error."), "{bad}: {}", errors[0].kind);
    }
    assert!(
        raw(&schemas, br#"{"num_images": 4.0}"#).is_ok(),
        "4.0 is an integer under JSON Schema"
    );
    let seed = compile(seed_source());
    for bad in [json!(4), json!(true), json!(["Simple"]), json!(null), json!({})] {
        let errors = field_errors(&seed, None, &json!({ "input_concept": "x", "style": bad }));
        assert_eq!((errors.len(), errors[0].loc[1].clone()), (1, json!("style")), "{bad}");
    }
}

#[test]
fn e68_cost_amplifiers_hit_schema_maxima() {
    let errors = field_errors(
        &numeric_schema(),
        None,
        &json!({ "num_images": 1_000_000, "width": 100_000 }),
    );
    let kinds: Vec<&str> = errors.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["value_error.number.not_le", "value_error.number.not_le"]);
    assert_eq!(errors[0].msg, "ensure this value is less than or equal to 4");
}

#[test]
fn e69_unknown_and_prototype_fields_are_refused_by_default() {
    let errors = field_errors(
        &compile(seed_source()),
        None,
        &json!({ "input_concept": "x", "__proto__": {}, "sync_mode": true }),
    );
    let fields: Vec<&Value> = errors.iter().map(|e| &e.loc[1]).collect();
    assert_eq!(fields, [&json!("__proto__"), &json!("sync_mode")]);
    assert!(errors
        .iter()
        .all(|e| e.kind == "value_error.extra" && e.msg == "extra fields not permitted"));
}

#[test]
fn e71_duplicate_keys_are_malformed_at_any_depth() {
    let schemas = allow_unknown();
    let why = malformed(&schemas, br#"{"input_concept":"safe","input_concept":"evil"}"#);
    assert!(why.contains("duplicate key `input_concept`"), "{why}");
    malformed(&schemas, br#"{"input_concept":"x","meta":{"a":1,"a":2}}"#);
    assert!(
        raw(&schemas, br#"{"input_concept":"x","meta":{"a":{"a":1}}}"#).is_ok(),
        "same key at two levels is fine"
    );
}

#[test]
fn e72_deep_nesting_is_malformed_past_the_limit_and_fast_at_100k() {
    let schemas = allow_unknown();
    let nested = |depth: usize| {
        format!(
            r#"{{"input_concept":"x","deep":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    assert!(
        raw(&schemas, nested(32).as_bytes()).is_ok(),
        "the top object plus 31 arrays is 32 deep"
    );
    assert!(malformed(&schemas, nested(33).as_bytes()).contains("nested too deeply"));
    let deep = ValidationLimits {
        max_depth: 127,
        ..ValidationLimits::default()
    };
    assert!(schemas.validate(VPG, None, nested(127).as_bytes(), &deep).is_ok());
    malformed(&schemas, nested(200).as_bytes());
    malformed(&schemas, nested(100_000).as_bytes());
}

#[test]
fn e73_huge_numbers_are_refused_or_forwarded_with_their_exact_digits() {
    let schemas = allow_unknown();
    malformed(&schemas, br#"{"input_concept":"x","n":1e400}"#);
    for digits in [
        "18446744073709551616",
        "123456789012345678901234567890",
        "-0",
        "9007199254740993",
    ] {
        let body = format!(r#"{{"input_concept":"x","n":{digits}}}"#);
        let input = raw(&schemas, body.as_bytes()).expect("a number");
        assert_eq!(&input.bytes[..], body.as_bytes(), "forwarded bytes keep {digits}");
    }
    let exact = raw(&schemas, br#"{"input_concept":"x","n":9007199254740993}"#).unwrap();
    assert_eq!(exact.value["n"].as_u64(), Some(9_007_199_254_740_993));
}

#[test]
fn e74_invalid_text_encodings_are_malformed_and_escaped_nul_is_kept() {
    let schemas = compile(seed_source());
    for body in [
        &b"{\"input_concept\":\"\xff\xfe\"}"[..],
        b"{\"input_concept\":\"\xc0\xaf\"}",
        br#"{"input_concept":"\ud800"}"#,
        b"{\"input_concept\":\"a\x01b\"}",
    ] {
        malformed(&schemas, body);
    }
    let input = raw(&schemas, br#"{"input_concept":"a\u0000b"}"#).expect("escaped NUL is valid JSON");
    assert_eq!(input.value["input_concept"], "a\u{0}b");
}

#[test]
fn e75_bom_utf16_and_latin1_bodies_are_malformed() {
    let schemas = compile(seed_source());
    assert!(malformed(&schemas, b"\xEF\xBB\xBF{\"input_concept\":\"x\"}").contains("byte order mark"));
    let utf16: Vec<u8> = r#"{"input_concept":"x"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    malformed(&schemas, &utf16);
    malformed(&schemas, b"{\"input_concept\":\"caf\xe9\"}");
}

#[test]
fn e76_oversized_body_is_refused_before_it_is_parsed() {
    let schemas = compile(seed_source());
    let limits = ValidationLimits {
        max_body_bytes: 10,
        ..ValidationLimits::default()
    };
    assert_eq!(
        schemas.validate(VPG, None, b"not json at all", &limits).unwrap_err(),
        Rejection::TooLarge(10)
    );
    let prompt = json!({ "input_concept": "x".repeat(10 * 1024 * 1024) }).to_string();
    assert!(matches!(raw(&schemas, prompt.as_bytes()), Err(Rejection::TooLarge(_))));
}

#[test]
fn e77_url_fields_accept_only_https_public_hosts_and_small_image_data_uris() {
    let rule = FieldOverlay {
        schemes: Some(vec!["https".into(), "data".into()]),
        data_uri_max_bytes: Some(1024 * 1024),
        data_uri_types: Some(vec!["image/*".into()]),
        ..FieldOverlay::default()
    };
    let overlay = Overlay {
        fields: BTreeMap::from([("image_url".to_owned(), rule)]),
    };
    let schemas = compile(SchemaSource {
        overlay: Some(overlay),
        ..seed_source()
    });
    let limits = ValidationLimits {
        max_body_bytes: 64 * 1024 * 1024,
        json: JsonLimits {
            max_string_bytes: 64 * 1024 * 1024,
            ..JsonLimits::default()
        },
        ..ValidationLimits::default()
    };
    let kind = |url: &str| match schemas.validate(
        VPG,
        None,
        json!({ "input_concept": "x", "image_url": url }).to_string().as_bytes(),
        &limits,
    ) {
        Ok(_) => "ok".to_owned(),
        Err(Rejection::Invalid(errors)) => errors[0].kind.clone(),
        Err(other) => format!("{other:?}"),
    };
    let big = format!("data:image/png;base64,{}", "A".repeat(40 * 1024 * 1024));
    assert_eq!(kind(&big), "value_error.data_uri.max_bytes");
    assert_eq!(
        kind("data:text/html,<script>alert(1)</script>"),
        "value_error.data_uri.media_type"
    );
    for url in [
        "javascript:alert(1)",
        "file:///etc/passwd",
        "gs://bucket/x",
        "http://169.254.169.254/",
        "not a url",
    ] {
        assert_eq!(kind(url), "value_error.url.scheme", "{url}");
    }
    for url in [
        "https://localhost/",
        "https://169.254.169.254/latest",
        "https://10.0.0.1/a.png",
        "https://[::1]/",
        "https://metadata/",
        "https://db.internal/x",
    ] {
        assert_eq!(kind(url), "value_error.url.host", "{url}");
    }
    assert_eq!(kind("https://example.com/cat.png"), "ok");
    assert_eq!(kind("data:image/png;base64,iVBORw0KGgo="), "ok");
}

#[test]
fn e84_non_object_json_is_fals_422_on_the_body_and_non_json_is_malformed() {
    let schemas = compile(seed_source());
    for body in [&br#"[{"input_concept":"x"}]"#[..], br#""x""#, b"null", b"true"] {
        let Err(Rejection::Invalid(items)) = raw(&schemas, body) else {
            panic!("expected fal's 422 for {:?}", String::from_utf8_lossy(body));
        };
        let items = serde_json::to_value(items).unwrap();
        assert_eq!(
            items,
            json!([{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}])
        );
    }
    for body in [&b""[..], b"  ", br#"{"input_concept":"x"} {}"#] {
        malformed(&schemas, body);
    }
}

#[test]
fn e86_a_100kb_string_against_a_backtracking_prone_pattern_is_refused_by_its_field() {
    let schemas = numeric_schema();
    let body = json!({ "name": format!("{}!", "a".repeat(100 * 1024)) }).to_string();
    let errors = match schemas.validate(VPG, None, body.as_bytes(), &ValidationLimits::default()) {
        Err(Rejection::Invalid(errors)) => errors,
        other => panic!("{other:?}"),
    };
    assert_eq!(errors[0].kind, "value_error.str.regex");
}

/// A flood of unknown keys (issue 10: 800,000 keys answered with a 70 MB 422) gets the first
/// `MAX_ITEMS` field errors and one item counting the rest; the answer does not grow with it.
#[test]
fn a_key_flood_gets_fifty_items_and_a_count_not_one_item_per_key() {
    let schemas = compile(seed_source());
    let mut input = serde_json::Map::new();
    input.insert("input_concept".into(), json!("x"));
    for n in 0..5_000 {
        input.insert(format!("k{n}"), json!(1));
    }
    let limits = ValidationLimits {
        json: JsonLimits {
            max_object_keys: 10_000,
            ..JsonLimits::default()
        },
        ..ValidationLimits::default()
    };
    let body = Value::Object(input).to_string();
    let Err(Rejection::Invalid(errors)) = schemas.validate(VPG, None, body.as_bytes(), &limits) else {
        panic!("unknown keys are a 422")
    };
    assert_eq!(errors.len(), errors::MAX_ITEMS + 1);
    let last = errors.last().expect("the count item");
    assert_eq!(last.kind, "too_many_errors");
    assert_eq!(last.ctx, Some(json!({ "more": 5_000 - errors::MAX_ITEMS })));
    assert!(errors[..errors::MAX_ITEMS]
        .iter()
        .all(|e| e.kind == "value_error.extra"));
    assert!(serde_json::to_vec(&errors).expect("serialises").len() < 16 * 1024);
}

#[test]
fn a_few_errors_get_no_count_item() {
    let errors = field_errors(
        &compile(seed_source()),
        None,
        &json!({ "input_concept": "x", "extra": 1 }),
    );
    assert_eq!(errors.len(), 1);
    assert!(errors.iter().all(|e| e.kind != "too_many_errors"));
}

/// An unknown key is echoed in `loc`, escaped and cut: neither the 422 nor a log line grows with
/// it or carries a caller's newline.
#[test]
fn echoed_unknown_keys_are_escaped_and_cut() {
    let key = format!("evil\nkey{}", "x".repeat(10_000));
    let errors = field_errors(&compile(seed_source()), None, &json!({ "input_concept": "x", key: 1 }));
    let shown = errors[0].loc[1].as_str().expect("a key");
    assert!(!shown.contains('\n'));
    assert!(shown.starts_with("evil\\nkey"));
    assert!(shown.chars().count() <= 70, "{}", shown.len());
}
