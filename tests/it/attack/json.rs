//! Bodies built to amplify: the key flood (800,000 short unknown keys in 9.6 MB), wide arrays,
//! long strings and deep nesting, each within the 10 MiB body cap.

use serde_json::Value;

use super::{assert_refused, slow_fal, Gate};
use crate::support::VPG;

/// The issue's measurement: a 9.6 MB submit body of ~800,000 short unknown keys.
fn key_flood() -> Vec<u8> {
    let body = unknown_keys(800_000);
    assert!(
        body.len() > 9_500_000 && body.len() < 10 * 1024 * 1024,
        "{} bytes",
        body.len()
    );
    body
}

/// A valid input plus `count` unknown keys of 7 bytes each (12 bytes per member).
fn unknown_keys(count: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(count as usize * 12 + 64);
    body.extend_from_slice(br#"{"input_concept":"a lighthouse""#);
    for i in 0..count {
        body.extend_from_slice(format!(r#","k{i:06}":0"#).as_bytes());
    }
    body.push(b'}');
    body
}

/// Posts `body` to the video prompt generator's submit as `sub`.
async fn submit_raw(gate: &Gate, sub: &str, body: Vec<u8>) -> reqwest::Response {
    gate.client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.token(sub))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Only bob's submit reached fal; none of mallory's bodies did.
fn assert_only_bob_reached_fal(gate: &Gate) {
    let submits: Vec<_> = gate.fal_saw().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(submits.len(), 1, "fal saw {submits:?}");
    assert!(submits[0].body.contains("lighthouse at dusk"));
}

/// With the default 1024 keys per object the flood is refused while it is parsed: 413
/// `json_too_large`, a small answer, and no memory spike. Sent twice, once while another caller
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_flood_is_refused_with_413_while_parsing() {
    let gate = Gate::start("[request]\nmax_body_bytes = 10485760\n", slow_fal()).await;
    let first = submit_raw(&gate, "mallory", key_flood()).await;
    assert_refused(first, 413, "json_too_large").await;
    let flood = tokio::spawn({
        let (client, url, token) = (gate.client.clone(), gate.url.clone(), gate.token("mallory"));
        async move {
            client
                .post(format!("{url}/api/fal/queue/{VPG}"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(key_flood())
                .send()
                .await
                .unwrap()
        }
    });
    gate.submit("bob").await;
    let (_, size) = assert_refused(flood.await.unwrap(), 413, "json_too_large").await;
    assert!(size < 4096, "a {size}-byte refusal");
    assert_only_bob_reached_fal(&gate);
    // Keeping the two 9.6 MB bodies would cross the settled bound.
    gate.assert_growth_bounded("key flood, default key cap", 40, 8).await;
}

/// With a key cap above the flood, validation answers fal's 422 with at most 50 field errors
/// and one summary item, under 256 KB (the unbounded 422 for this body was 17 MB), and memory
/// settles back near idle. 200,000 keys rather than 800,000: the debug build CI runs takes
/// tens of seconds to validate the full flood (every error is still built before being counted).
/// The flood is sent `FLOODS` times: keeping the bodies (2.4 MB each) would cross the 6 MB the
/// process may settle above its idle figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_flood_under_a_high_key_cap_gets_a_bounded_422() {
    let gate = Gate::start(
        "[request]\nmax_body_bytes = 10485760\nmax_json_object_keys = 250000\nmax_json_values = 500000\n",
        slow_fal(),
    )
    .await;
    const FLOODS: usize = 4;
    for _ in 1..FLOODS {
        let flood = submit_raw(&gate, "mallory", unknown_keys(200_000)).await;
        assert_refused(flood, 422, "validation_failed").await;
    }
    let flood = submit_raw(&gate, "mallory", unknown_keys(200_000)).await;
    gate.submit("bob").await;
    let (body, size) = assert_refused(flood, 422, "validation_failed").await;
    assert!(size < 256 * 1024, "a {size}-byte 422");
    let detail = body["detail"].as_array().unwrap();
    assert!(detail.len() <= 51, "{} detail items", detail.len());
    let summary = detail.last().unwrap();
    assert_eq!(summary["type"], "too_many_errors", "{summary}");
    assert_eq!(summary["loc"], serde_json::json!(["body"]));
    assert!(summary["msg"].as_str().unwrap().contains("199950"), "{summary}");
    for item in &detail[..detail.len() - 1] {
        assert_eq!(item["loc"][0], "body", "{item}");
        assert!(item["type"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert_only_bob_reached_fal(&gate);
    gate.assert_growth_bounded("key flood, high key cap", 64, 6).await;
}

/// Wide arrays, long strings and deep nesting: each refused with its own contract answer while
/// another caller is served. The four bodies (2.4 MB together) are sent `ROUNDS` times: keeping
/// them (14 MB) would cross the 10 MB the process may settle above its idle figure. The peak
/// may reach 32 MB over idle: what one request freed stays resident up to mimalloc's 100 ms
/// purge delay while the next parses on the other worker (issue 23; 16 MB at a delay of 0,
/// 20–25 MB at 100 ms, here and in CI); a parse that amplified its input would still cross it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_long_and_deep_json_get_their_contract_answers() {
    const ROUNDS: usize = 6;
    let gate = Gate::start(
        "[request]\nmax_body_bytes = 10485760\nmax_json_string_bytes = 65536\n",
        slow_fal(),
    )
    .await;
    for _ in 0..ROUNDS {
        // 200,001 values, over the default 100,000.
        let mut wide = br#"{"input_concept":"x","a":[0"#.to_vec();
        wide.extend(b",0".repeat(200_000));
        wide.extend_from_slice(b"]}");
        let response = submit_raw(&gate, "mallory", wide).await;
        assert_refused(response, 413, "json_too_large").await;

        // 1,025 keys in one nested object, over the default 1024.
        let keys: Vec<String> = (0..1025).map(|i| format!(r#""k{i}":0"#)).collect();
        let nested = format!(r#"{{"input_concept":"x","a":{{{}}}}}"#, keys.join(","));
        let response = submit_raw(&gate, "mallory", nested.into_bytes()).await;
        assert_refused(response, 413, "json_too_large").await;

        // One 1 MB string, over the configured 64 KiB.
        let long = format!(r#"{{"input_concept":"{}"}}"#, "x".repeat(1024 * 1024));
        let response = submit_raw(&gate, "mallory", long.into_bytes()).await;
        assert_refused(response, 413, "json_too_large").await;

        // A million open brackets: refused at the nesting limit, never a stack overflow.
        let deep = format!(r#"{{"input_concept":{}"#, "[".repeat(1_000_000));
        let response = submit_raw(&gate, "mallory", deep.into_bytes()).await;
        let (body, _) = assert_refused(response, 400, "invalid_json").await;
        assert!(body.get("detail").is_none_or(Value::is_null));
    }

    gate.submit("bob").await;
    assert_only_bob_reached_fal(&gate);
    gate.assert_growth_bounded("wide, long and deep JSON", 32, 10).await;
}
