//! How long one input validation takes (and how many allocations it makes): the seed's example
//! input, a refused input with three bad fields, and a 1 MiB `data:` URI under an image_url overlay.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use falgate::schema::{FieldOverlay, Overlay, Rejection, SchemaSource, Schemas, UnknownFields, ValidationLimits};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ENDPOINT: &str = "fal-ai/video-prompt-generator";

const SEED_EXAMPLE: &str = r#"{"input_concept": "A futuristic city at dusk", "style": "Simple", "camera_style": "None", "camera_direction": "None", "pacing": "None", "special_effects": "None", "model": "google/gemini-flash-1.5", "prompt_length": "Medium"}"#;

const BAD_INPUT: &str = r#"{"style": "Loud", "pacing": 3, "model": "gpt-9"}"#;

/// The seed schema with the image_url overlay a production config would carry.
fn schemas() -> Schemas {
    let image_url = FieldOverlay {
        schemes: Some(vec!["https".into(), "data".into()]),
        data_uri_max_bytes: Some(2 * 1024 * 1024),
        data_uri_types: Some(vec!["image/*".into()]),
        ..FieldOverlay::default()
    };
    let source = SchemaSource {
        endpoint: ENDPOINT.into(),
        path: Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas/video-prompt-generator.json"),
        unknown_fields: UnknownFields::Refuse,
        overlay: Some(Overlay {
            fields: BTreeMap::from([("image_url".to_owned(), image_url)]),
        }),
        tier_overlays: BTreeMap::new(),
        trusted_url_prefixes: Vec::new(),
    };
    Schemas::compile(vec![source]).expect("the shipped schema compiles")
}

fn data_uri_input() -> Vec<u8> {
    let payload = "iVBORw0KGgo".repeat(1024 * 1024 / 11);
    format!(r#"{{"input_concept": "A futuristic city at dusk", "image_url": "data:image/png;base64,{payload}"}}"#)
        .into_bytes()
}

/// Prints the allocations of one validation, counted by the global allocator above.
fn report_allocations(name: &str, schemas: &Schemas, body: &[u8], limits: &ValidationLimits) {
    let region = Region::new(GLOBAL);
    let result = schemas.validate(ENDPOINT, None, body, limits);
    let change = region.change();
    drop(result);
    println!(
        "{name}: {} allocations, {} bytes allocated per validation",
        change.allocations + change.reallocations,
        change.bytes_allocated
    );
}

fn validation(c: &mut Criterion) {
    let schemas = schemas();
    let limits = ValidationLimits {
        max_depth: 32,
        max_body_bytes: 4 * 1024 * 1024,
        ..ValidationLimits::default()
    };
    let big = data_uri_input();
    assert!(schemas
        .validate(ENDPOINT, None, SEED_EXAMPLE.as_bytes(), &limits)
        .is_ok());
    assert!(
        matches!(schemas.validate(ENDPOINT, None, BAD_INPUT.as_bytes(), &limits), Err(Rejection::Invalid(e)) if e.len() == 4)
    );
    assert!(schemas.validate(ENDPOINT, None, &big, &limits).is_ok());
    report_allocations("seed example", &schemas, SEED_EXAMPLE.as_bytes(), &limits);
    report_allocations("bad input (4 items)", &schemas, BAD_INPUT.as_bytes(), &limits);
    report_allocations("1 MiB data URI", &schemas, &big, &limits);

    let mut group = c.benchmark_group("validate");
    group.bench_function("seed_example", |b| {
        b.iter(|| schemas.validate(ENDPOINT, None, black_box(SEED_EXAMPLE.as_bytes()), &limits))
    });
    group.bench_function("bad_input_4_items", |b| {
        b.iter(|| schemas.validate(ENDPOINT, None, black_box(BAD_INPUT.as_bytes()), &limits))
    });
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("data_uri_1mib", |b| {
        b.iter(|| schemas.validate(ENDPOINT, None, black_box(&big), &limits))
    });
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
