//! The cheap steps of a status poll: parsing the `x-fal-target-url` header and a REST queue
//! path into a `Call`, and the in-process ownership lookup (hit, other caller, unknown id) in a
//! store that already holds 100 000 requests, and the memory one ownership record takes (RSS
//! growth over those 100 000, printed once). Run: `cargo bench --bench parse`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use falgate::auth::Caller;
use falgate::config::OwnershipConfig;
use falgate::fal::{parse_queue_path, parse_target, AppId, EndpointId, FalRequestId};
use falgate::limits::OnStoreError;
use falgate::ownership::Ownership;

const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";
const STORED: u32 = 100_000;

fn parsing(c: &mut Criterion) {
    let status = format!("https://queue.fal.run/fal-ai/video-prompt-generator/requests/{ID}/status");
    let submit =
        "https://queue.fal.run/fal-ai/video-prompt-generator?fal_webhook=https%3A%2F%2Fhooks.example.com%2Ffal";
    c.bench_function("parse_target/status", |b| {
        b.iter(|| parse_target(black_box(&status)).unwrap())
    });
    c.bench_function("parse_target/submit_with_webhook", |b| {
        b.iter(|| parse_target(black_box(submit)).unwrap())
    });
    let path = format!("/fal-ai/video-prompt-generator/requests/{ID}/status");
    c.bench_function("parse_queue_path/status", |b| {
        b.iter(|| parse_queue_path(black_box(&path), black_box(Some("logs=1"))).unwrap())
    });
    c.bench_function("parse_queue_path/submit", |b| {
        b.iter(|| parse_queue_path(black_box("/fal-ai/video-prompt-generator"), None).unwrap())
    });
}

fn caller(subject: &str) -> Caller {
    Caller {
        issuer: "default".into(),
        subject: subject.into(),
        tier: "default".into(),
        scopes: Vec::new().into(),
    }
}

/// The `n`-th request id of the filled store.
fn request_id(n: u32) -> FalRequestId {
    FalRequestId::parse(&format!("{n:08x}-b745-4b3e-ae38-1200304cf45b")).unwrap()
}

fn ownership(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = OwnershipConfig {
        ttl: Duration::from_secs(604_800),
        max_entries: 1_000_000,
        per_caller: 200,
        list_limit: 20,
        list_max: 100,
    };
    let store = Ownership::new(config, None, OnStoreError::Deny);
    let app = AppId::from_segments(&["fal-ai", "video-prompt-generator"]).unwrap();
    let endpoint = EndpointId::parse(app.as_str()).unwrap();
    let (owner, other) = (caller("owner"), caller("other"));
    let before = rss_kb();
    runtime.block_on(async {
        for n in 0..STORED {
            store.record(&owner.principal(), &endpoint, &request_id(n)).await;
        }
    });
    println!(
        "ownership: {:.0} bytes of RSS per record ({STORED} records)",
        (rss_kb() - before) as f64 * 1024.0 / f64::from(STORED)
    );
    let (known, unknown) = (request_id(STORED / 2), request_id(STORED + 1));
    c.bench_function("ownership_check/owner", |b| {
        b.to_async(&runtime)
            .iter(|| async { store.check(&owner.principal(), &app, black_box(&known)).await.unwrap() })
    });
    c.bench_function("ownership_check/other_caller", |b| {
        b.to_async(&runtime).iter(|| async {
            store
                .check(&other.principal(), &app, black_box(&known))
                .await
                .unwrap_err()
        })
    });
    c.bench_function("ownership_check/unknown_id", |b| {
        b.to_async(&runtime).iter(|| async {
            store
                .check(&owner.principal(), &app, black_box(&unknown))
                .await
                .unwrap_err()
        })
    });
    let mut n = STORED * 2;
    c.bench_function("ownership_record/new_id", |b| {
        b.to_async(&runtime).iter(|| {
            n += 1;
            let id = request_id(n);
            let (store, owner, endpoint) = (&store, &owner, &endpoint);
            async move { store.record(&owner.principal(), endpoint, &id).await }
        })
    });
}

/// This process's resident set in KiB (Linux), 0 elsewhere.
fn rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

criterion_group!(benches, parsing, ownership);
criterion_main!(benches);
