//! Two real `falgate serve` processes on one Redis and one fal: what a load balancer in front of
//! several replicas relies on.

use serde_json::json;

use crate::support::{Process, SECRET, VPG};

async fn replica(fal: &str, prefix: &str) -> Process {
    Process::serve(
        fal,
        &[
            ("FALGATE_REDIS__URL", "redis://127.0.0.1:6379"),
            ("FALGATE_REDIS__KEY_PREFIX", prefix),
        ],
    )
    .await
}

fn token(sub: &str) -> String {
    falgate::auth::mint_hs256(SECRET.as_bytes(), sub, None, std::time::Duration::from_secs(600)).unwrap()
}

#[tokio::test]
async fn a_request_submitted_through_one_process_is_polled_through_another_by_its_owner_only() {
    let gate = crate::support::TestGate::spawn().await;
    let prefix = format!("it-proc-{}", uuid::Uuid::new_v4());
    let (a, b) = (
        replica(&gate.fal_url, &prefix).await,
        replica(&gate.fal_url, &prefix).await,
    );
    let client = crate::support::client();
    let submit = |replica: &Process, key: &str| {
        client
            .post(format!("{}/api/fal/queue/{VPG}", replica.url))
            .bearer_auth(token("alice"))
            .header("idempotency-key", key.to_owned())
            .json(&json!({"input_concept": "a lighthouse"}))
            .send()
    };
    let first: serde_json::Value = submit(&a, "one-click").await.unwrap().json().await.unwrap();
    let id = first["request_id"].as_str().unwrap();
    let status = |replica: &Process, sub: &str| {
        client
            .get(format!("{}/api/fal/queue/{VPG}/requests/{id}/status", replica.url))
            .bearer_auth(token(sub))
            .send()
    };
    assert_eq!(status(&b, "alice").await.unwrap().status(), 200);
    assert_eq!(status(&b, "bob").await.unwrap().status(), 404);
    let retried: serde_json::Value = submit(&b, "one-click").await.unwrap().json().await.unwrap();
    assert_eq!(
        retried["request_id"], first["request_id"],
        "the retry on the other replica submitted again"
    );
    let submits = gate.fal_saw().iter().filter(|r| r.method == "POST").count();
    assert_eq!(submits, 1);
}
