//! Heap allocations per proxied request, counted (issue 23): a counting global allocator counts
//! what falgate's worker threads allocate while a real GET status and POST submit go through
//! `/api/fal/proxy` to the fal emulator, with the bench's checks on (HS256, endpoint policy,
//! schema validation, limits with rates and quotas, ownership) and the access line formatted at
//! `info` as `serve` does (into a sink). A count, not a time: it is the same on a loaded
//! machine, so the next change that adds work to the hot path fails here instead of in a
//! benchmark nobody ran.
//!
//! Only allocations on falgate's worker threads count (`server::current_worker`): the test's
//! client and the emulator run on the test's own runtime, and the log writer thread only swaps
//! buffers. The ceilings are written down in BENCHMARKS.md ("Allocations per request"); lower
//! them when a change wins, and say why in the commit when one must rise.
//!
//! Its own test binary, since a global allocator is per binary. Run it alone:
//! `cargo test --test alloc -- --nocapture` prints the counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use falgate::config::{Config, FalCredentials};
use falgate::emulator::{Emulator, EmulatorConfig};
use tokio::net::TcpListener;

/// Allocations (`alloc`, `alloc_zeroed`, `realloc`) per proxied GET status, at most. Exact:
/// the count is deterministic (the same in every run), so any new allocation fails the test.
/// 94 until the request span gave way to `telemetry::request_scope` (−5), 89 until the answer
/// carried its rendered `RateLimit` headers instead of a clone of the admission (−2), 87 until
/// a cached caller's clone shared its strings (`auth::Caller`'s `Arc`s, −2).
const GET_STATUS_CEILING: u64 = 85;
/// Allocations per proxied POST submit (schema validation, ownership record), at most. 122 on
/// the perf branch; main at 6074828 (the pipeline's body bounds and errors, the ownership
/// index of webhooks and events) added 2 per submit when merged; the events merge (issue 24:
/// the caller's request index entry, `ownership::Summary`, and the `submitted` event put in the
/// caller's history, `events::EventBody::of`) added 18 more: 142; no request span (−5): 137;
/// no clone of the admission in the answer (−2): 135; a cached caller's clone shares its
/// strings (−2): 133, exact.
const POST_SUBMIT_CEILING: u64 = 133;

/// Counts the allocations made on falgate's worker threads; everything is served by `System`.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes freed on the worker threads (what they allocated and freed: their heap still held is
/// `BYTES - FREED`, what an open event stream keeps).
static FREED: AtomicU64 = AtomicU64::new(0);

fn note(size: usize, zeroed: bool) {
    // `const` thread-local `Cell`s: reading them never allocates. What `ALLOC_TRACE`'s own
    // backtraces allocate is not the request's (counted, it broke the stream ceiling in that
    // mode only).
    if falgate::server::current_worker().is_some() && !IN_TRACE.get() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
        if TRACING.load(Ordering::Relaxed) {
            trace(size, zeroed);
        }
    }
}

fn freed(size: usize) {
    if falgate::server::current_worker().is_some() && !IN_TRACE.get() {
        FREED.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// `ALLOC_TRACE=stream`: the worker allocations still live after one event stream opened, by
/// address (size and backtrace), so what a stream holds can be read by site.
static LIVE_TRACING: AtomicBool = AtomicBool::new(false);
static LIVE: Mutex<Option<HashMap<usize, (usize, std::backtrace::Backtrace)>>> = Mutex::new(None);

fn live_alloc(ptr: *mut u8, size: usize) {
    if !LIVE_TRACING.load(Ordering::Relaxed) || falgate::server::current_worker().is_none() || IN_TRACE.replace(true) {
        return;
    }
    let backtrace = std::backtrace::Backtrace::force_capture();
    LIVE.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(ptr as usize, (size, backtrace));
    IN_TRACE.set(false);
}

fn live_free(ptr: *mut u8) {
    if !LIVE_TRACING.load(Ordering::Relaxed) || IN_TRACE.replace(true) {
        return;
    }
    if let Some(live) = LIVE.lock().unwrap().as_mut() {
        live.remove(&(ptr as usize));
    }
    IN_TRACE.set(false);
}

/// `ALLOC_TRACE=1`: the backtrace of every counted allocation of one GET and one POST is kept
/// and printed, grouped, at the end (where to look for the next win).
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<(usize, bool, std::backtrace::Backtrace)>> = Mutex::new(Vec::new());

thread_local! {
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn trace(size: usize, zeroed: bool) {
    if IN_TRACE.replace(true) {
        return;
    }
    let backtrace = std::backtrace::Backtrace::force_capture();
    TRACES.lock().unwrap().push((size, zeroed, backtrace));
    IN_TRACE.set(false);
}

/// The traced allocations by their first frames outside the allocator and std, most first.
fn print_traces(title: &str) {
    let traces = std::mem::take(&mut *TRACES.lock().unwrap());
    let mut sites: HashMap<String, (usize, usize, usize)> = HashMap::new();
    for (size, zeroed, backtrace) in &traces {
        let site = sites.entry(site_of(backtrace)).or_default();
        site.0 += 1;
        site.1 += size;
        site.2 += usize::from(*zeroed);
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.1 .0));
    let bytes: usize = traces.iter().map(|trace| trace.0).sum();
    println!("== {title}: {} allocations, {bytes} bytes", traces.len());
    for (site, (count, bytes, zeroed)) in sites {
        let zeroed = if zeroed > 0 {
            format!(" ({zeroed} zeroed)")
        } else {
            String::new()
        };
        println!("{count:4} {bytes:6} B{zeroed}  {site}");
    }
}

/// An allocation's site: its first frames outside the allocator and std.
fn site_of(backtrace: &std::backtrace::Backtrace) -> String {
    {
        let text = backtrace.to_string();
        let frames: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with("at "))
            .filter_map(|line| line.split_once(": ").map(|(_, name)| name))
            .filter(|name| {
                const LOW: [&str; 12] = [
                    "std::",
                    "core::",
                    "alloc::",
                    "<alloc::",
                    "<core::",
                    "<std::",
                    "hashbrown::",
                    "<hashbrown::",
                    "<T as alloc",
                    "<u8 as",
                    "<[",
                    "<&mut alloc",
                ];
                name.contains("::") && !LOW.iter().any(|low| name.starts_with(low))
            })
            .skip(1)
            .take(4)
            .map(|name| name.get(..120).unwrap_or(name))
            .collect();
        frames.join("\n    <- ")
    }
}

/// The live allocations `ALLOC_TRACE=stream` kept, by site, largest first.
fn print_live(title: &str) {
    let live = LIVE.lock().unwrap().take().unwrap_or_default();
    let mut sites: HashMap<String, (usize, usize)> = HashMap::new();
    for (size, backtrace) in live.values() {
        let site = site_of(backtrace);
        let entry = sites.entry(site).or_default();
        entry.0 += 1;
        entry.1 += size;
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.1 .1));
    let total: usize = sites.iter().map(|site| site.1 .1).sum();
    println!("== {title}: {} live allocations, {total} bytes", live.len());
    for (site, (count, bytes)) in sites {
        println!("{bytes:7} B {count:3}x  {site}");
    }
}

// SAFETY: every call is passed to `System` unchanged; counting touches only atomics and a
// const thread-local, neither of which allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), false);
        let ptr = unsafe { System.alloc(layout) };
        live_alloc(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size(), true);
        let ptr = unsafe { System.alloc_zeroed(layout) };
        live_alloc(ptr, layout.size());
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size, false);
        freed(layout.size());
        live_free(ptr);
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        live_alloc(moved, new_size);
        moved
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        freed(layout.size());
        live_free(ptr);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SECRET: &str = "alloc-secret-alloc-secret-alloc-secret-0123";
const SUBMIT_BODY: &str = r#"{"input_concept": "A futuristic city at dusk", "style": "Simple", "camera_style": "None", "camera_direction": "None", "pacing": "None", "special_effects": "None", "model": "google/gemini-flash-1.5", "prompt_length": "Medium"}"#;

/// `bench/falgate.bench.toml` without the ES256 issuer, on one worker.
const CONFIG: &str = r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
[auth]
tier_claim = "tier"
default_tier = "default"
token_cache_entries = 100000
[log]
format = "text"
[ownership]
ttl_seconds = 604800
max_entries = 1000000
[endpoints."fal-ai/video-prompt-generator"]
sync_run = true
schema = "config/schemas/video-prompt-generator.json"
unknown_fields = "refuse"
[endpoints."fal-ai/video-prompt-generator".overlay.fields.input_concept]
max_length = 2000
[limits]
default_tier = "default"
streams_per_caller = 20000
max_streams = 20000
[limits.tiers.default]
submit = { burst = 1000000000, per_minute = 60000000 }
poll = { burst = 1000000000, per_minute = 60000000 }
cancel = { burst = 1000000000, per_minute = 60000000 }
daily_requests = 1000000000000
daily_credits = 1000000000000
[limits.unauthenticated_ip_rate]
burst = 1000
per_minute = 60000
[limits.credits]
default_cost = 1
"#;

/// Heap bytes an open event stream may hold on the worker (issue 23: ≤ 16 KB of RSS per stream
/// through falgate); RSS adds the kernel's socket buffers and allocator slack on top. Measured
/// 52,687 bytes: 69.9 KB before the access line stopped pinning fal's 8 KiB read buffer, 62.4 KB
/// before a connection's protocol was peeked instead of read (`server::conn::Protocol`: hyper's
/// read buffer no longer doubles to 16 KiB); `ALLOC_TRACE=stream` lists what one stream holds,
/// by site.
const STREAM_HEAP_CEILING: u64 = 54 * 1024;
/// Event streams held open to measure one's heap.
const STREAMS: u64 = 50;

/// Requests measured per kind, after as many to warm up (pools, caches, thread-local handles).
const ROUNDS: u64 = 200;

struct Counts {
    allocations: u64,
    bytes: u64,
}

/// Waits until the worker has stopped allocating (the previous answer's access line and
/// drops done): the count is unchanged over a few consecutive checks. Bounded.
async fn quiet() -> Counts {
    let mut last = ALLOCATIONS.load(Ordering::Relaxed);
    let mut same = 0;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = ALLOCATIONS.load(Ordering::Relaxed);
        same = if now == last { same + 1 } else { 0 };
        last = now;
        if same == 4 {
            break;
        }
    }
    Counts {
        allocations: last,
        bytes: BYTES.load(Ordering::Relaxed),
    }
}

/// Allocations per request over [`ROUNDS`] requests made by `send` (after as many to warm up).
async fn per_request<F, Fut>(send: F) -> (u64, u64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..ROUNDS {
        send().await;
    }
    let before = quiet().await;
    for _ in 0..ROUNDS {
        send().await;
    }
    let after = quiet().await;
    let allocations = after.allocations - before.allocations;
    let bytes = after.bytes - before.bytes;
    // Rounded up: a ceiling met on average is met.
    (allocations.div_ceil(ROUNDS), bytes.div_ceil(ROUNDS))
}

#[tokio::test]
async fn proxied_get_status_and_post_submit_allocate_at_most_their_ceilings() {
    let _log = falgate::telemetry::init_to(
        falgate::telemetry::LogFormat::Text,
        &falgate::telemetry::Telemetry::default(),
        std::io::sink(),
    );
    let emulator = Emulator::new(EmulatorConfig {
        queue_ms: 600_000,
        progress_ms: 600_000,
        log_lines: 2,
        stream_interval_ms: 50,
    });
    let fal = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fal_url = format!("http://{}", fal.local_addr().unwrap());
    tokio::spawn(falgate::emulator::serve(fal, emulator, std::future::pending()));
    let vars: HashMap<String, String> = [
        ("FALGATE_AUTH__HS256_SECRET", SECRET.to_owned()),
        ("FALGATE_UPSTREAM__QUEUE_URL", fal_url.clone()),
        ("FALGATE_UPSTREAM__RUN_URL", format!("{fal_url}/fal.run")),
        ("FALGATE_UPSTREAM__STORAGE_URL", format!("{fal_url}/rest.fal.ai")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = Config::from_toml(CONFIG, &vars).unwrap();
    let public = TcpListener::bind(config.listen).await.unwrap();
    let admin = TcpListener::bind(config.admin_listen).await.unwrap();
    let url = format!("http://{}/api/fal/proxy", public.local_addr().unwrap());
    let app = falgate::app::build(config, &FalCredentials::new("alloc-fal-key".to_owned())).unwrap();
    tokio::spawn(falgate::app::serve(public, admin, app, std::future::pending()));
    let token = falgate::auth::mint_hs256(SECRET.as_bytes(), "bench", None, Duration::from_secs(3600)).unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    let submit = || async {
        let answer = client
            .post(&url)
            .bearer_auth(&token)
            .header(
                "x-fal-target-url",
                "https://queue.fal.run/fal-ai/video-prompt-generator",
            )
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(SUBMIT_BODY)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json::<serde_json::Value>().await.unwrap()
    };
    let id = submit().await["request_id"].as_str().unwrap().to_owned();
    let status_url = format!("https://queue.fal.run/fal-ai/video-prompt-generator/requests/{id}/status");
    let poll = || async {
        let answer = client
            .get(&url)
            .bearer_auth(&token)
            .header("x-fal-target-url", &status_url)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
    };

    let (get, get_bytes) = per_request(poll).await;
    let (post, post_bytes) = per_request(|| async {
        submit().await;
    })
    .await;
    // Heap held per open event stream: the worker's heap before and with STREAMS streams open
    // (each has delivered its first event, so the relay is running).
    let stream_url = format!(
        "{}/api/fal/queue/fal-ai/video-prompt-generator/requests/{id}/status/stream",
        url.trim_end_matches("/api/fal/proxy")
    );
    let held = |counts: &Counts| counts.bytes - FREED.load(Ordering::Relaxed);
    let before = quiet().await;
    let before_held = held(&before);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let stream_client = reqwest::Client::new();
        let mut answer = stream_client.get(&stream_url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let first = tokio::time::timeout(Duration::from_secs(10), answer.chunk()).await;
        assert!(matches!(first, Ok(Ok(Some(_)))), "no first event");
        streams.push((stream_client, answer));
    }
    if std::env::var_os("ALLOC_TRACE").is_some_and(|mode| mode == "stream") {
        quiet().await;
        LIVE_TRACING.store(true, Ordering::Relaxed);
        let stream_client = reqwest::Client::new();
        let mut answer = stream_client.get(&stream_url).bearer_auth(&token).send().await.unwrap();
        answer.chunk().await.unwrap();
        quiet().await;
        LIVE_TRACING.store(false, Ordering::Relaxed);
        print_live("one open event stream");
        streams.push((stream_client, answer));
    }
    let open = quiet().await;
    let per_stream = held(&open).saturating_sub(before_held) / STREAMS;
    drop(streams);
    // The streams' access lines are written as they end: into the sink, not after it is closed.
    quiet().await;

    if std::env::var_os("ALLOC_TRACE").is_some() {
        for (title, traced) in [("GET status", true), ("POST submit", false)] {
            quiet().await;
            TRACING.store(true, Ordering::Relaxed);
            if traced {
                poll().await;
            } else {
                submit().await;
            }
            quiet().await;
            TRACING.store(false, Ordering::Relaxed);
            print_traces(title);
        }
    }
    println!("allocations per request: GET status {get} ({get_bytes} bytes), POST submit {post} ({post_bytes} bytes)");
    println!("heap held per open event stream on the worker: {per_stream} bytes");
    assert!(
        per_stream <= STREAM_HEAP_CEILING,
        "an open event stream holds {per_stream} heap bytes on the worker (ceiling {STREAM_HEAP_CEILING})"
    );
    assert!(
        get > 0 && post > 0,
        "nothing was counted: are requests served on worker threads?"
    );
    assert!(
        get <= GET_STATUS_CEILING,
        "a proxied GET status allocates {get} times (ceiling {GET_STATUS_CEILING}): see BENCHMARKS.md"
    );
    assert!(
        post <= POST_SUBMIT_CEILING,
        "a proxied POST submit allocates {post} times (ceiling {POST_SUBMIT_CEILING}): see BENCHMARKS.md"
    );
}
