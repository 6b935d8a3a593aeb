//! Behaviour of compiling and validating against the shipped seed schema; the security catalog's
//! group E is in `tests_security.rs`, overlays, compile errors and properties in `tests_*.rs`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

pub(super) const VPG: &str = "fal-ai/video-prompt-generator";

/// A shipped schema file, by name.
pub(super) fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas").join(name)
}

/// The seed endpoint's settings: the plain JSON Schema, unknown fields refused, no overlays.
pub(super) fn seed_source() -> SchemaSource {
    SchemaSource {
        endpoint: VPG.into(),
        path: shipped("video-prompt-generator.json"),
        unknown_fields: UnknownFields::Refuse,
        overlay: None,
        tier_overlays: BTreeMap::new(),
        trusted_url_prefixes: Vec::new(),
    }
}

pub(super) fn compile(source: SchemaSource) -> Schemas {
    Schemas::compile(vec![source]).expect("the test schema compiles")
}

/// Validates `body` for the seed endpoint as `tier`.
pub(super) fn check(schemas: &Schemas, tier: Option<&str>, body: &Value) -> Result<ValidInput, Rejection> {
    schemas.validate(VPG, tier, body.to_string().as_bytes(), &ValidationLimits::default())
}

/// The 422 items for `body`, failing the test if it was not a 422.
pub(super) fn field_errors(schemas: &Schemas, tier: Option<&str>, body: &Value) -> Vec<FieldError> {
    match check(schemas, tier, body) {
        Err(Rejection::Invalid(errors)) => errors,
        other => panic!("expected 422 items for {body}, got {other:?}"),
    }
}

/// A schema file written for one test; `name` keeps parallel tests apart.
pub(super) fn temp_schema(name: &str, contents: &Value) -> PathBuf {
    let path = std::env::temp_dir().join(format!("falgate-schema-{name}-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents.to_string()).expect("temp dir is writable");
    path
}

/// A source for `path` on the seed endpoint, with unknown fields refused.
pub(super) fn source_at(path: PathBuf) -> SchemaSource {
    SchemaSource { path, ..seed_source() }
}

fn enum_fields() -> Vec<(String, Vec<Value>)> {
    let text = std::fs::read_to_string(shipped("video-prompt-generator.json")).expect("shipped schema");
    let schema: Value = serde_json::from_str(&text).expect("shipped schema is JSON");
    let properties = schema["properties"].as_object().expect("properties").clone();
    properties
        .into_iter()
        .filter_map(|(name, field)| Some((name, field.get("enum")?.as_array()?.clone())))
        .collect()
}

#[test]
fn seed_example_input_is_valid_and_forwarded_byte_for_byte() {
    let body = br#"{"input_concept": "A futuristic city at dusk", "style": "Simple", "camera_style": "None", "camera_direction": "None", "pacing": "None", "special_effects": "None", "model": "google/gemini-flash-1.5", "prompt_length": "Medium"}"#;
    let input = compile(seed_source())
        .validate(VPG, None, body, &ValidationLimits::default())
        .expect("valid");
    assert_eq!(&input.bytes[..], &body[..]);
    assert_eq!(input.value["style"], "Simple");
}

#[test]
fn defaults_are_not_injected_into_the_forwarded_input() {
    let input = check(&compile(seed_source()), None, &json!({ "input_concept": "x" })).expect("valid");
    assert_eq!(input.value, json!({ "input_concept": "x" }));
    assert_eq!(&input.bytes[..], br#"{"input_concept":"x"}"#);
}

#[test]
fn shipped_schema_has_every_seed_enum_with_its_count_and_default() {
    let counts: BTreeMap<String, usize> = enum_fields()
        .into_iter()
        .map(|(name, values)| (name, values.len()))
        .collect();
    let expected = [
        ("camera_direction", 18),
        ("camera_style", 21),
        ("model", 13),
        ("pacing", 20),
        ("prompt_length", 3),
        ("special_effects", 21),
        ("style", 10),
    ];
    assert_eq!(counts, expected.iter().map(|(n, c)| (n.to_string(), *c)).collect());
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(shipped("video-prompt-generator.json")).unwrap()).unwrap();
    let defaults = [
        "style",
        "camera_style",
        "camera_direction",
        "pacing",
        "special_effects",
        "model",
        "prompt_length",
        "custom_elements",
    ]
    .map(|field| schema["properties"][field]["default"].clone());
    assert_eq!(
        defaults,
        [
            "Simple",
            "None",
            "None",
            "None",
            "None",
            "google/gemini-flash-1.5",
            "Medium",
            ""
        ]
        .map(Value::from)
    );
    assert_eq!(schema["required"], json!(["input_concept"]));
}

#[test]
fn every_enum_field_refuses_a_wrong_value_naming_the_permitted_values() {
    let schemas = compile(seed_source());
    for (field, values) in enum_fields() {
        let errors = field_errors(&schemas, None, &json!({ "input_concept": "x", field.clone(): "Nope" }));
        assert_eq!(errors.len(), 1, "{field}: {errors:?}");
        let error = &errors[0];
        assert_eq!(error.loc, json!(["body", field]).as_array().unwrap().clone());
        assert_eq!(error.kind, "type_error.enum");
        assert_eq!(error.ctx, Some(json!({ "enum_values": values })));
        let first = values[0].as_str().unwrap();
        assert!(
            error.msg.starts_with(&format!(
                "value is not a valid enumeration member; permitted: '{first}', "
            )),
            "{}",
            error.msg
        );
    }
}

#[test]
fn every_failing_field_is_reported_in_schema_order() {
    let body = json!({ "style": "Loud", "pacing": 3, "model": "gpt-9", "surprise": true });
    let errors = field_errors(&compile(seed_source()), None, &body);
    let got: Vec<(String, &str)> = errors
        .iter()
        .map(|e| (e.loc[1].as_str().unwrap().to_owned(), e.kind.as_str()))
        .collect();
    let want = [
        ("input_concept", "value_error.missing"),
        ("style", "type_error.enum"),
        ("pacing", "type_error.enum"),
        ("model", "type_error.enum"),
        ("surprise", "value_error.extra"),
    ];
    assert_eq!(got, want.map(|(f, k)| (f.to_owned(), k)));
    assert_eq!(errors[0].msg, "field required");
}

#[test]
fn detail_items_serialise_in_fals_422_shape() {
    let errors = field_errors(&compile(seed_source()), None, &json!({ "prompt_length": "Huge" }));
    let detail = serde_json::to_value(&errors).unwrap();
    assert_eq!(
        detail[0],
        json!({ "loc": ["body", "input_concept"], "msg": "field required", "type": "value_error.missing" })
    );
    assert_eq!(detail[1]["loc"], json!(["body", "prompt_length"]));
    assert_eq!(detail[1]["ctx"]["enum_values"], json!(["Short", "Medium", "Long"]));
}

#[test]
fn openapi_document_and_json_schema_compile_to_equivalent_validators() {
    let plain = compile(seed_source());
    let openapi = compile(source_at(shipped("video-prompt-generator.openapi.json")));
    let inputs = [
        json!({ "input_concept": "x" }),
        json!({ "input_concept": "x", "image_url": null, "custom_elements": "" }),
        json!({ "input_concept": "x", "style": "Cinematic", "model": "deepseek/deepseek-r1" }),
        json!({ "input_concept": 1, "style": "cinematic", "camera_style": null, "extra": 1 }),
        json!({ "model": "google/gemini-2.5-flash", "prompt_length": ["Short"], "image_url": 5 }),
        json!({}),
    ];
    for input in inputs {
        let (a, b) = (check(&plain, None, &input), check(&openapi, None, &input));
        assert_eq!(a.as_ref().map(|v| &v.value), b.as_ref().map(|v| &v.value), "{input}");
        assert!(
            a.is_ok() || a.as_ref().err() == b.as_ref().err(),
            "{input}: {a:?} vs {b:?}"
        );
    }
}

#[test]
fn schemas_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Schemas>();
}

#[test]
fn unknown_fields_pass_untouched_when_the_endpoint_allows_them() {
    let schemas = compile(SchemaSource {
        unknown_fields: UnknownFields::Allow,
        ..seed_source()
    });
    let input = check(&schemas, None, &json!({ "input_concept": "x", "seed": 42 })).expect("allowed");
    assert_eq!(input.value["seed"], 42);
    assert_eq!(&input.bytes[..], br#"{"input_concept":"x","seed":42}"#);
}

#[test]
fn an_unconfigured_tier_gets_the_operator_schema() {
    let schemas = compile(seed_source());
    assert!(check(&schemas, Some("gold"), &json!({ "input_concept": "x" })).is_ok());
    assert!(schemas.has(VPG) && !schemas.has("fal-ai/flux/dev"));
}

#[test]
fn the_ruled_input_has_the_schemas_defaults_for_absent_fields_and_the_bytes_stay_the_callers() {
    let mut source = seed_source();
    // A tier that may not send `model` still runs with fal's default for it.
    let forbid = FieldOverlay {
        forbidden: true,
        ..FieldOverlay::default()
    };
    source.tier_overlays.insert(
        "locked".into(),
        Overlay {
            fields: BTreeMap::from([("model".to_owned(), forbid)]),
        },
    );
    let schemas = compile(source);
    let body = json!({"input_concept": "x", "prompt_length": "Long"});
    for tier in [None, Some("locked")] {
        let input = check(&schemas, tier, &body).unwrap();
        assert_eq!(input.bytes, body.to_string().as_bytes(), "{tier:?}");
        assert_eq!(input.value, body);
        let ruled = input.ruled();
        assert_eq!(ruled.get("model").unwrap(), "google/gemini-flash-1.5", "{tier:?}");
        assert_eq!(ruled.get("style").unwrap(), "Simple");
        // What the caller sent wins over the default; fields without a default stay absent.
        assert_eq!(ruled.get("prompt_length").unwrap(), "Long");
        assert_eq!(ruled.get("camera_style").unwrap(), "None");
        assert!(
            ruled.get("image_url").is_none(),
            "a field without a default stays absent"
        );
    }
    // Nothing missing: every field is the caller's.
    let mut all = json!({"input_concept": "x"});
    for field in [
        "style",
        "camera_style",
        "camera_direction",
        "pacing",
        "special_effects",
        "custom_elements",
    ] {
        all[field] = body_default(field);
    }
    all["model"] = json!("openai/gpt-4o");
    all["prompt_length"] = json!("Short");
    let full = check(&schemas, None, &all).unwrap();
    assert_eq!(full.ruled().get("model").unwrap(), "openai/gpt-4o");
    assert_eq!(full.ruled().get("prompt_length").unwrap(), "Short");
}

/// The shipped schema's default for `field`.
fn body_default(field: &str) -> Value {
    let text = std::fs::read_to_string(shipped("video-prompt-generator.json")).expect("shipped schema");
    let schema: Value = serde_json::from_str(&text).expect("shipped schema is JSON");
    schema["properties"][field]["default"].clone()
}
