use super::*;

#[test]
fn allowed_targets_parse_into_calls() {
    let submit = parse_target("https://queue.fal.run/fal-ai/flux/dev").unwrap();
    assert_eq!(submit.path_and_query(), "/fal-ai/flux/dev");
    let run = parse_target("https://fal.run/fal-ai/video-prompt-generator").unwrap();
    assert!(matches!(run.op, Op::Run { .. }));
    for rest in [
        "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
        "https://rest.alpha.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3",
    ] {
        assert_eq!(parse_target(rest).unwrap().op, Op::StorageInitiate { multipart: false });
    }
    let multipart =
        parse_target("https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3").unwrap();
    assert_eq!(
        (multipart.op.clone(), multipart.path_and_query()),
        (
            Op::StorageInitiate { multipart: true },
            "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3".to_owned()
        )
    );
    for refused in [
        "https://rest.fal.ai/storage/upload/initiate-multipart",
        "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=gcs",
        "https://rest.fal.ai/storage/upload/complete-multipart?storage_type=fal-cdn-v3",
    ] {
        assert!(parse_target(refused).is_err(), "{refused}");
    }
    let token = parse_target("https://rest.fal.ai/tokens/").unwrap();
    assert_eq!(
        (token.op.clone(), token.path_and_query()),
        (Op::ClientToken { realtime: false }, "/tokens/".to_owned())
    );
    let realtime = parse_target("https://rest.fal.ai/tokens/realtime").unwrap();
    assert_eq!(
        (realtime.op.clone(), realtime.path_and_query()),
        (Op::ClientToken { realtime: true }, "/tokens/realtime".to_owned())
    );
    for refused in [
        "https://rest.fal.ai/tokens/realtime?x=1",
        "https://rest.fal.ai/tokens/realtime/",
    ] {
        assert!(parse_target(refused).is_err(), "{refused}");
    }
}

#[test]
fn plain_queue_targets_skip_the_parser_and_anything_else_does_not() {
    let id = "764cabcf-b745-4b3e-ae38-1200304cf45b";
    let status = format!("https://queue.fal.run/fal-ai/flux/requests/{id}/status?logs=1");
    assert_eq!(
        plain_queue_target(&status),
        Some((format!("/fal-ai/flux/requests/{id}/status").as_str(), Some("logs=1")))
    );
    assert_eq!(
        plain_queue_target("https://queue.fal.run/fal-ai/flux/dev"),
        Some(("/fal-ai/flux/dev", None))
    );
    for unsure in [
        "https://queue.fal.run/fal-ai/./flux",
        "https://queue.fal.run/fal-ai/../flux",
        "https://queue.fal.run/fal-ai/%2e%2e/flux",
        "https://queue.fal.run/fal-ai/flux#x",
        "https://queue.fal.run/fal-ai/flux?a=<b>",
        "https://queue.fal.run/fal ai",
        "https://queue.fal.run:443/fal-ai/flux",
        "https://queue.fal.run.evil.com/fal-ai/flux",
        "https://QUEUE.fal.run/fal-ai/flux",
        "https://fal.run/fal-ai/flux",
    ] {
        assert_eq!(plain_queue_target(unsure), None, "{unsure}");
    }
}

/// SECURITY-CASES group A: every trick is refused before any connection.
#[test]
fn target_url_tricks_are_refused() {
    let cases = [
        "https://queue.fal.run@evil.com/x",
        "https://queue.fal.run:443@evil.com/x",
        "https://queue.fal.run.evil.com/x",
        "https://fal.run.evil.com/",
        "https://evilfal.run/x",
        "https://notfal.run/",
        "https://api.fal.run/x",
        "https://rest.beta.fal.ai/storage/upload/initiate",
        "https://evil.com#@queue.fal.run/",
        "https://evil.com?@queue.fal.run/",
        "https://evil.com\\@queue.fal.run/",
        "https://queue.fal.run\\@evil.com/",
        "https://queue%2efal%2erun/x",
        "https://queue\u{3002}fal\u{3002}run/x",
        "https://queue\u{ff0e}fal\u{ff0e}run/x",
        "https://queue.fal.r\u{00ad}un/x",
        " https://queue.fal.run/x",
        "https://queue.fal\t.run/x",
        "https:queue.fal.run/x",
        "https:/\\queue.fal.run/x",
        "https://qu\u{0435}ue.fal.run/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "https://0x7f.1/",
        "https://2130706433/",
        "https://0177.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::1]/",
        "http://localhost:6379/",
        "http://queue.fal.run/fal-ai/x",
        "ftp://queue.fal.run/a/b",
        "ws://fal.run/a/b",
        "wss://fal.run/a/b/realtime",
        "file:///etc/passwd",
        "data:,x",
        "//queue.fal.run/x",
        "/fal-ai/x",
        "fal-ai/flux/dev",
        "",
        "https://queue.fal.run:8443/a/b",
        "https://queue.fal.run:443/a/b",
        "https://queue.fal.run:0443/a/b",
        "https://queue.fal.run:65536/a/b",
        "https://fal.run./fal-ai/x",
        "https://fal.run../fal-ai/x",
        "https://queue.fal.run/fal-ai/../x/y",
        "https://queue.fal.run/fal-ai/%2e%2e/x",
        "https://queue.fal.run/fal-ai%2fx/y",
        "https://queue.fal.run/",
        "https://fal.run",
        "https://fal.run/",
        "https://queue.fal.run/a/b#frag",
        "https://rest.fal.ai/tokens",
        "https://rest.fal.ai/tokens/?x=1",
        "https://rest.fal.ai/tokens/x",
        "https://rest.fal.ai/tokens/#",
        "https://rest.fal.ai/Tokens/",
        // Multipart initiation is an upload like any other (issue 24), completion never passes.
        "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=gcs",
        "https://rest.fal.ai/storage/upload/complete-multipart?storage_type=fal-cdn-v3",
        "https://rest.fal.ai/storage/upload/initiate?storage_type=gcs",
        "https://fal.ai/a/b",
        "https://QUEUE.FAL.RUN/a/b",
    ];
    for case in cases {
        assert!(parse_target(case).is_err(), "accepted {case:?}");
    }
    let huge = format!("https://queue.fal.run/a/{}", "b".repeat(100_000));
    assert!(parse_target(&huge).is_err());
}

/// Host look-alikes with a path that is valid on the real host, so the host rule (not the
/// path parser) is what refuses them: a suffix or prefix match, or no allowlist at all,
/// fails here.
#[test]
fn host_look_alikes_with_valid_paths_are_refused_by_the_host_rule() {
    let queue = "/fal-ai/flux/dev";
    let storage = "/storage/upload/initiate?storage_type=fal-cdn-v3";
    for host in [
        "evilfal.run",
        "notfal.run",
        "xfal.run",
        "evilqueue.fal.run",
        "api.fal.run",
        "www.fal.run",
        "queue.fal.run.evil.com",
        "fal.run.evil.com",
        "queue-fal.run",
        "fal.run.fal.run.evil",
        "fal.ai",
        "queue.fal.ai",
        "evil.com",
        "169.254.169.254",
        "127.0.0.1",
        "[::1]",
    ] {
        let raw = format!("https://{host}{queue}");
        assert_eq!(parse_target(&raw).map(|c| c.op), Err(TargetError::Host), "{raw}");
    }
    for host in [
        "evilrest.fal.ai",
        "rest.fal.ai.evil.com",
        "rest.beta.fal.ai",
        "alpha.fal.ai",
        "rest.fal.run",
        "evil.rest.alpha.fal.ai",
    ] {
        let raw = format!("https://{host}{storage}");
        assert_eq!(parse_target(&raw).map(|c| c.op), Err(TargetError::Host), "{raw}");
    }
    // The positive controls: the same paths on the real hosts pass.
    for raw in [
        "https://queue.fal.run/fal-ai/flux/dev",
        "https://fal.run/fal-ai/flux/dev",
    ] {
        assert!(parse_target(raw).is_ok(), "{raw}");
    }
    assert_eq!(
        parse_target(&format!("https://rest.fal.ai{storage}")).map(|c| c.op),
        Ok(Op::StorageInitiate { multipart: false })
    );
}

proptest::proptest! {
    /// The parser-free path agrees with the URL parser wherever it answers: the target is
    /// its own canonical form on `queue.fal.run`, with the same path and query.
    #[test]
    fn a_plain_queue_target_is_what_the_url_parser_reads(
        rest in "((\\.|\\.\\.|%2[eE]|[a-z~_-]{1,3}|)/){0,5}[a-zA-Z0-9/._~%@#?=&:'\"<>{}`|^\\\\\\- ]{0,30}",
    ) {
        let raw = format!("https://queue.fal.run/{rest}");
        if let Some((path, query)) = plain_queue_target(&raw) {
            let url = Url::parse(&raw).unwrap();
            proptest::prop_assert_eq!(url.as_str(), raw.as_str());
            proptest::prop_assert_eq!(url.host_str(), Some("queue.fal.run"));
            proptest::prop_assert_eq!(url.path(), path);
            proptest::prop_assert_eq!(url.query(), query);
            proptest::prop_assert!(url.fragment().is_none());
        }
    }

    /// SECURITY-CASES invariant I1: whatever is accepted names an allowed host, and what is
    /// forwarded is rebuilt from parsed parts with no dot segments, encodings or authority tricks.
    #[test]
    fn anything_accepted_is_canonical_and_on_an_allowed_host(
        prefix in proptest::sample::select(vec!["https://queue.fal.run/", "https://fal.run/", "https://rest.fal.ai/",
            "https://queue.fal.run@", "https://queue.fal.run.", "http://queue.fal.run/", "https://QUEUE.fal.run/", ""]),
        rest in "[a-zA-Z0-9/._%@#?=&:\\\\\\-\u{3002}\u{ff0e} ]{0,60}",
    ) {
        let raw = format!("{prefix}{rest}");
        if let Ok(call) = parse_target(&raw) {
            let url = Url::parse(&raw).unwrap();
            proptest::prop_assert!(matches!(url.host_str(), Some("queue.fal.run" | "fal.run" | "rest.fal.ai" | "rest.alpha.fal.ai")));
            proptest::prop_assert_eq!(url.as_str(), raw.as_str());
            let forwarded = call.path_and_query();
            let path = forwarded.split('?').next().unwrap();
            proptest::prop_assert!(!path.contains("..") && !path.contains('%') && !path.contains('\\') && !path.contains("//"));
            proptest::prop_assert!(!forwarded.contains('#') && !forwarded.contains('@'));
        }
    }

    /// Look-alike hosts (a fal host with labels or letters added before or after it) with a
    /// path that is valid on the real hosts: accepted exactly when the host is allowed.
    #[test]
    fn look_alike_hosts_with_valid_paths_are_refused(
        before in proptest::sample::select(vec!["", "evil", "x.", "evil.", "queue.", "api.", "a-", "rest."]),
        host in proptest::sample::select(vec!["fal.run", "queue.fal.run", "rest.fal.ai", "rest.alpha.fal.ai", "fal.ai"]),
        after in proptest::sample::select(vec!["", ".evil.com", ".com", "x", ".fal.run", "-x.io"]),
        path in proptest::sample::select(vec!["/fal-ai/flux/dev", "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b",
            "/storage/upload/initiate?storage_type=fal-cdn-v3"]),
    ) {
        let name = format!("{before}{host}{after}");
        let raw = format!("https://{name}{path}");
        let allowed = matches!(name.as_str(), "queue.fal.run" | "fal.run" | "rest.fal.ai" | "rest.alpha.fal.ai");
        match parse_target(&raw) {
            Ok(_) => proptest::prop_assert!(allowed, "accepted {}", raw),
            Err(TargetError::Host) => proptest::prop_assert!(!allowed, "host refused: {}", raw),
            // An allowed host with a path it does not serve (a queue path on rest, ...).
            Err(_) => proptest::prop_assert!(allowed, "{} refused before the host rule", raw),
        }
    }
}
