//! Compiling: every problem in a schema file, an OpenAPI document or an overlay is reported
//! with the file and the JSON pointer, and nothing is ever fetched.

use serde_json::json;

use super::tests::{seed_source, shipped, source_at, temp_schema, VPG};
use super::*;

#[test]
fn compile_error_names_the_file_and_json_pointer_of_a_bad_keyword() {
    let path = temp_schema(
        "bad-type",
        &json!({ "type": "object", "properties": { "x": { "type": "strang" } } }),
    );
    let error = Schemas::compile(vec![source_at(path.clone())]).expect_err("invalid schema");
    let shown = error.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("#/properties/x/type"), "{shown}");
}

#[test]
fn compile_error_names_the_file_line_and_column_of_broken_json() {
    let path = std::env::temp_dir().join(format!("falgate-schema-broken-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, "{\n  \"type\": \"object\",\n}").unwrap();
    let shown = Schemas::compile(vec![source_at(path.clone())])
        .expect_err("broken")
        .to_string();
    assert!(
        shown.starts_with(&path.display().to_string()) && shown.contains("line 3"),
        "{shown}"
    );
}

#[test]
fn compile_refuses_a_missing_file_and_a_second_entry_for_one_endpoint() {
    let missing = Schemas::compile(vec![source_at("/nonexistent/schema.json".into())]).expect_err("missing");
    assert!(matches!(missing, CompileError::Read { .. }), "{missing}");
    let twice = Schemas::compile(vec![seed_source(), seed_source()]).expect_err("duplicate");
    assert!(
        matches!(twice, CompileError::DuplicateEndpoint(ref e) if e == VPG),
        "{twice}"
    );
}

#[test]
fn remote_refs_are_a_compile_error_never_a_fetch() {
    let remote = json!({ "type": "object", "properties": { "x": { "$ref": "https://evil.example/x.json" } } });
    let shown = Schemas::compile(vec![source_at(temp_schema("remote", &remote))])
        .expect_err("remote")
        .to_string();
    assert!(
        shown.contains("#/properties/x/$ref") && shown.contains("never fetches"),
        "{shown}"
    );
    let relative = json!({ "$ref": "other.json#/defs/x" });
    assert!(Schemas::compile(vec![source_at(temp_schema("relative", &relative))]).is_err());
}

#[test]
fn openapi_document_without_the_endpoint_is_a_compile_error_at_the_missing_pointer() {
    let source = SchemaSource {
        endpoint: "fal-ai/other".into(),
        ..source_at(shipped("video-prompt-generator.openapi.json"))
    };
    let shown = Schemas::compile(vec![source]).expect_err("no such path").to_string();
    assert!(shown.contains("#/paths/~1fal-ai~1other/post/requestBody"), "{shown}");
}

#[test]
fn recursive_refs_are_a_compile_error() {
    let recursive = json!({ "$defs": { "node": { "type": "object", "properties": { "next": { "$ref": "#/$defs/node" } } } }, "$ref": "#/$defs/node" });
    let shown = Schemas::compile(vec![source_at(temp_schema("recursive", &recursive))])
        .expect_err("recursive")
        .to_string();
    assert!(shown.contains("recursive"), "{shown}");
}
