//! Oversized, many and endless request headers.

use tokio::io::AsyncWriteExt;

use super::{assert_refused, connect, raw_status, read_until_closed_or_answered, request_head, slow_fal, Gate};

/// One huge header, and many that together exceed the total: 431 `headers_too_large`; too many
/// header lines: 431. Another caller is served meanwhile. The three are sent `ROUNDS` times, so
/// a gate that kept the refused headers (~53 KB a round, 10 MB in all) would cross the 5 MB the
/// process may settle above its idle figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_many_headers_get_431() {
    const ROUNDS: usize = 200;
    let gate = Gate::start("", slow_fal()).await;
    let health = format!("{}/healthz", gate.url);
    let lines: String = (0..150).map(|i| format!("x-n{i}: 1\r\n")).collect();
    for _ in 0..ROUNDS {
        let response = gate
            .client
            .get(&health)
            .header("x-big", "a".repeat(16 * 1024))
            .send()
            .await
            .unwrap();
        assert_refused(response, 431, "headers_too_large").await;

        // 60 headers of 600 bytes: each under the 8 KiB cap, 36 KB together, over the 32 KiB total.
        let mut many = gate.client.get(&health);
        for i in 0..60 {
            many = many.header(format!("x-h{i}"), "b".repeat(600));
        }
        assert_refused(many.send().await.unwrap(), 431, "headers_too_large").await;

        // More header lines than any request needs (hyper's count cap): refused, not served.
        let (status, answer) = raw_status(gate.addr, &request_head("GET", "/healthz", None, &lines)).await;
        assert_eq!(status, 431, "{answer}");
    }

    gate.submit("bob").await;
    gate.assert_growth_bounded("oversized headers", 16, 5).await;
}

/// A hundred connections each sending ~390 KB of one header line that never ends: the gate
/// answers 431 or closes, and does not hold the bytes (it buffered ~400 KB each before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_header_lines_are_not_buffered() {
    const CONNECTIONS: usize = 100;
    const PARTIAL: usize = 390 * 1024;
    let gate = Gate::start("", slow_fal()).await;
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = connect(gate.addr, None).await;
        let head = format!(
            "GET /healthz HTTP/1.1\r\nhost: falgate\r\nx-endless: {}",
            "a".repeat(PARTIAL)
        );
        // The gate may close (or answer) before taking it all: a failed write is a refusal.
        let writing = tokio::spawn(async move {
            stream.write_all(head.as_bytes()).await.ok();
            stream
        });
        streams.push(writing);
    }
    let mut streams: Vec<_> = futures_util::future::join_all(streams)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    gate.wait_read_all("endless header lines").await;
    // Holding the partial lines would be 39 MB: over both bounds.
    gate.assert_growth_bounded("endless header lines, all sent", 16, 8)
        .await;
    gate.submit("bob").await;
    for stream in &mut streams {
        let answer = read_until_closed_or_answered(stream).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "an endless header line got {answer:?}"
        );
    }
    gate.assert_growth_bounded("endless header lines", 16, 8).await;
}
