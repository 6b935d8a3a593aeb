//! Admission cost per request, in process and over Redis (one `EVALSHA` round trip each), and
//! memory per tracked caller (RSS growth over 100 000 callers, printed once).
//! Run: `cargo bench --bench limits` (needs Redis at 127.0.0.1:6379 for the Redis case).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use falgate::limits::{Limiter, LimitsConfig, OpClass, Subject};
use falgate::redis::{RedisConfig, RedisStore};

const CONFIG: &str = r#"
default_tier = "free"
[tiers.free]
submit = { burst = 1000000, per_minute = 1000000 }
daily_requests = 1000000000
daily_credits = 1000000000
"#;

fn limiter(redis: Option<RedisStore>) -> Limiter {
    let config: LimitsConfig = toml::from_str(CONFIG).expect("bench config");
    Limiter::new(config, redis).expect("valid bench config")
}

fn admission(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let memory = limiter(None);
    let who = Subject {
        principal: "iss|bench",
        tier: "free",
    };
    c.bench_function("admit_submit_in_process", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(memory.admit(&who, OpClass::Submit, None, 1).await.is_ok()) })
    });
    let _runtime_context = runtime.enter();
    let store = RedisStore::connect(
        &RedisConfig::single("redis://127.0.0.1:6379").with(1000, format!("bench-{}", std::process::id())),
    )
    .expect("redis url");
    let shared = limiter(Some(store));
    c.bench_function("admit_submit_redis_one_round_trip", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(shared.admit(&who, OpClass::Submit, None, 1).await.is_ok()) })
    });
    memory_per_caller(&runtime);
}

fn memory_per_caller(runtime: &tokio::runtime::Runtime) {
    const CALLERS: u64 = 100_000;
    let memory = limiter(None);
    let before = rss_bytes();
    runtime.block_on(async {
        for n in 0..CALLERS {
            let principal = format!("iss|{n}");
            let who = Subject {
                principal: &principal,
                tier: "free",
            };
            black_box(memory.admit(&who, OpClass::Submit, None, 1).await.is_ok());
        }
    });
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "memory per tracked caller: ~{} bytes ({} callers)",
        grown / memory.tracked_callers().max(1),
        memory.tracked_callers()
    );
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = admission
}
criterion_main!(benches);
