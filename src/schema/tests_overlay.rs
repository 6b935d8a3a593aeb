//! Overlays: the operator and tiers tighten the seed schema; they can never widen it.

use serde_json::{json, Value};

use super::tests::{check, compile, field_errors, seed_source};
use super::*;

fn field(rules: FieldOverlay, name: &str) -> Overlay {
    Overlay {
        fields: BTreeMap::from([(name.to_owned(), rules)]),
    }
}

fn free_tier_models() -> SchemaSource {
    let narrow = FieldOverlay {
        allowed: Some(vec!["google/gemini-flash-1.5".into(), "openai/gpt-4o-mini".into()]),
        ..FieldOverlay::default()
    };
    SchemaSource {
        tier_overlays: BTreeMap::from([("free".to_owned(), field(narrow, "model"))]),
        trusted_url_prefixes: Vec::new(),
        ..seed_source()
    }
}

#[test]
fn free_tier_overlay_narrows_model_and_names_only_its_values() {
    let schemas = compile(free_tier_models());
    let body = json!({ "input_concept": "x", "model": "openai/gpt-4o" });
    let errors = field_errors(&schemas, Some("free"), &body);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].msg,
        "value is not a valid enumeration member; permitted: 'google/gemini-flash-1.5', 'openai/gpt-4o-mini'"
    );
    assert!(check(&schemas, Some("pro"), &body).is_ok());
    assert!(check(&schemas, None, &body).is_ok());
    assert!(check(
        &schemas,
        Some("free"),
        &json!({ "input_concept": "x", "model": "openai/gpt-4o-mini" })
    )
    .is_ok());
}

#[test]
fn overlay_parses_from_toml_and_refuses_unknown_keys() {
    let overlay: Overlay =
        toml::from_str("[fields.model]\nallowed = [\"openai/gpt-4o-mini\"]\n[fields.input_concept]\nmax_length = 10\n")
            .unwrap();
    assert_eq!(overlay.fields["input_concept"].max_length, Some(10));
    assert!(toml::from_str::<Overlay>("[fields.model]\nallow = [\"x\"]\n").is_err());
    let unknown: UnknownFields = serde_json::from_value(json!("allow")).unwrap();
    assert_eq!(unknown, UnknownFields::Allow);
}

#[test]
fn operator_overlay_caps_text_lengths() {
    let cap = FieldOverlay {
        max_length: Some(5),
        ..FieldOverlay::default()
    };
    let mut overlay = field(cap.clone(), "input_concept");
    overlay.fields.insert("custom_elements".into(), cap);
    let schemas = compile(SchemaSource {
        overlay: Some(overlay),
        ..seed_source()
    });
    let errors = field_errors(
        &schemas,
        None,
        &json!({ "input_concept": "abcdef", "custom_elements": "ééééé" }),
    );
    assert_eq!(errors.len(), 1, "characters, not bytes, are counted: {errors:?}");
    assert_eq!(errors[0].loc, [json!("body"), json!("input_concept")]);
    assert_eq!(errors[0].kind, "value_error.any_str.max_length");
    assert_eq!(errors[0].msg, "ensure this value has at most 5 characters");
    assert_eq!(errors[0].ctx, Some(json!({ "limit_value": 5 })));
}

#[test]
fn tier_overlay_applies_on_top_of_the_operator_overlay() {
    let operator = field(
        FieldOverlay {
            max_length: Some(100),
            ..FieldOverlay::default()
        },
        "input_concept",
    );
    let tier = field(
        FieldOverlay {
            max_length: Some(3),
            ..FieldOverlay::default()
        },
        "input_concept",
    );
    let source = SchemaSource {
        overlay: Some(operator),
        tier_overlays: BTreeMap::from([("free".into(), tier)]),
        trusted_url_prefixes: Vec::new(),
        ..seed_source()
    };
    let schemas = compile(source);
    let long = json!({ "input_concept": "abcd" });
    assert!(check(&schemas, None, &long).is_ok());
    assert_eq!(
        field_errors(&schemas, Some("free"), &long)[0].ctx,
        Some(json!({ "limit_value": 3 }))
    );
    assert_eq!(
        field_errors(&schemas, Some("free"), &json!({ "input_concept": "x".repeat(101) }))[0].ctx,
        Some(json!({ "limit_value": 3 }))
    );
}

#[test]
fn overlay_cannot_allow_a_value_the_schema_refuses() {
    let widen = FieldOverlay {
        allowed: Some(vec!["openai/gpt-5".into()]),
        ..FieldOverlay::default()
    };
    let source = SchemaSource {
        tier_overlays: BTreeMap::from([("free".into(), field(widen, "model"))]),
        trusted_url_prefixes: Vec::new(),
        ..seed_source()
    };
    let shown = Schemas::compile(vec![source]).expect_err("widening").to_string();
    assert!(
        shown.contains("video-prompt-generator.json#/properties/model/enum"),
        "{shown}"
    );
    assert!(
        shown.contains("tier `free`") && shown.contains("openai/gpt-5"),
        "{shown}"
    );
}

#[test]
fn tier_cannot_widen_the_operators_narrowed_enum() {
    let operator = field(
        FieldOverlay {
            allowed: Some(vec!["openai/gpt-4o-mini".into()]),
            ..FieldOverlay::default()
        },
        "model",
    );
    let tier = field(
        FieldOverlay {
            allowed: Some(vec!["openai/gpt-4o".into()]),
            ..FieldOverlay::default()
        },
        "model",
    );
    let source = SchemaSource {
        overlay: Some(operator),
        tier_overlays: BTreeMap::from([("pro".into(), tier)]),
        trusted_url_prefixes: Vec::new(),
        ..seed_source()
    };
    assert!(Schemas::compile(vec![source]).is_err());
}

#[test]
fn overlay_naming_a_field_the_schema_lacks_is_a_compile_error() {
    let source = SchemaSource {
        overlay: Some(field(FieldOverlay::default(), "promt")),
        ..seed_source()
    };
    let shown = Schemas::compile(vec![source]).expect_err("typo").to_string();
    assert!(
        shown.contains("#/properties/promt") && shown.contains("operator overlay"),
        "{shown}"
    );
}

#[test]
fn overlay_narrows_the_enum_inside_openapi_allof_wrappers() {
    let narrow = FieldOverlay {
        allowed: Some(vec!["Short".into()]),
        ..FieldOverlay::default()
    };
    let source = SchemaSource {
        overlay: Some(field(narrow, "prompt_length")),
        ..super::tests::source_at(super::tests::shipped("video-prompt-generator.openapi.json"))
    };
    let errors = field_errors(
        &compile(source),
        None,
        &json!({ "input_concept": "x", "prompt_length": "Long" }),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].ctx, Some(json!({ "enum_values": ["Short"] })));
}

#[test]
fn forbidden_field_is_refused_even_with_a_valid_value() {
    let source = SchemaSource {
        overlay: Some(field(
            FieldOverlay {
                forbidden: true,
                ..FieldOverlay::default()
            },
            "image_url",
        )),
        ..seed_source()
    };
    let errors = field_errors(
        &compile(source),
        None,
        &json!({ "input_concept": "x", "image_url": "https://example.com/a.png" }),
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (errors[0].loc[1].clone(), errors[0].kind.as_str()),
        (Value::from("image_url"), "value_error.forbidden")
    );
}

#[test]
fn schemes_rule_refuses_plain_http_and_accepts_https() {
    let rule = FieldOverlay {
        schemes: Some(vec!["https".into()]),
        ..FieldOverlay::default()
    };
    let schemas = compile(SchemaSource {
        overlay: Some(field(rule, "image_url")),
        ..seed_source()
    });
    let errors = field_errors(
        &schemas,
        None,
        &json!({ "input_concept": "x", "image_url": "http://example.com/a.png" }),
    );
    assert_eq!(errors[0].kind, "value_error.url.scheme");
    assert_eq!(errors[0].ctx, Some(json!({ "allowed_schemes": ["https"] })));
    assert!(check(
        &schemas,
        None,
        &json!({ "input_concept": "x", "image_url": "https://example.com/a.png" })
    )
    .is_ok());
    assert!(
        check(&schemas, None, &json!({ "input_concept": "x", "image_url": null })).is_ok(),
        "null is the field's default"
    );
}
