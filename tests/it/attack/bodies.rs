//! Request bodies announced and never sent (issue 20): the body budget is charged for bytes that
//! arrive, not for a declared `Content-Length`, so strangers' bodies cannot pin it, and a body
//! that times out spends its caller's rate.

use tokio::io::AsyncWriteExt;

use super::{connect, read_until_closed_or_answered, request_head, slow_fal, Gate, DEADLINE};
use crate::support::VPG;

/// Bodies of 64 KiB, a budget of two of them, a body timeout the victim would wait out if the
/// budget were pinned, and a submit rate of two per caller.
const CONFIG: &str = "
[request]
max_body_bytes = 65536
body_budget_bytes = 131072
body_timeout_ms = 6000
[limits]
[limits.tiers.default]
submit = { burst = 2, per_minute = 1 }
";

/// Eight requests from four callers declare 64 KiB each (four times the budget) and send
/// nothing. Another caller's submit is answered 200 while every one of them is still waiting
/// for its body (before they time out); then each gets 408 `body_timeout`, and the timeouts
/// spent their callers' submit rate (the next submit is 429). Nothing of theirs reached fal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_bodies_that_never_arrive_do_not_pin_the_body_budget() {
    let gate = Gate::start(CONFIG, slow_fal()).await;
    let mut pinned = Vec::new();
    for n in 0..8 {
        let token = gate.token(&format!("mallory-{}", n % 4));
        let head = request_head(
            "POST",
            &format!("/api/fal/queue/{VPG}"),
            Some(&token),
            "content-type: application/json\r\ncontent-length: 65536\r\n",
        );
        let mut stream = connect(gate.addr, None).await;
        stream.write_all(head.as_bytes()).await.unwrap();
        pinned.push(stream);
    }
    // Every head taken in (accepted and read): the bodies are now being waited for.
    let deadline = std::time::Instant::now() + DEADLINE;
    while gate.held_connections() < pinned.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate never accepted the attackers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    gate.wait_read_all("the attackers' heads").await;

    gate.submit("bob").await;
    let mut buf = [0u8; 1];
    for stream in &pinned {
        assert!(
            matches!(stream.try_read(&mut buf), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
            "bob was answered only after an attacker's body timed out"
        );
    }
    for stream in &mut pinned {
        let answer = read_until_closed_or_answered(stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("x-falgate-error: body_timeout"), "{answer}");
    }
    let again = gate
        .client
        .post(format!("{}/api/fal/queue/{VPG}", gate.url))
        .bearer_auth(gate.token("mallory-0"))
        .json(&serde_json::json!({"input_concept": "a lighthouse"}))
        .send()
        .await
        .unwrap();
    super::assert_refused(again, 429, "rate_limited").await;
    let submits: Vec<_> = gate.fal_saw().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(submits.len(), 1, "fal saw {submits:?}");
}
