//! The `x-fal-target-url` header of the `@fal-ai/client` proxy protocol, parsed strictly.
//!
//! Only the canonical serialisation of an `https` URL on exactly `queue.fal.run`, `fal.run`, or
//! the storage-initiate or tokens URL on `rest.fal.ai`/`rest.alpha.fal.ai` is accepted; the URL is compared
//! with its own WHATWG serialisation, so any form that a parser would rewrite (userinfo, ports,
//! IP literals, encoded or unicode hosts, dot segments, backslashes, whitespace) is refused
//! before anything else reads it.

use url::Url;

use super::{parse_queue_path, Call, Op, QueuePathError};

/// Longest target URL accepted.
const MAX_TARGET_LEN: usize = 4096;

/// Why a target URL was refused; each becomes a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target URL is missing")]
    Missing,
    #[error("target URL is not a canonical absolute URL")]
    NotCanonical,
    #[error("target URL must use https")]
    Scheme,
    #[error("target host is not a fal host")]
    Host,
    #[error("target path is not allowed: {0}")]
    Path(#[from] QueuePathError),
    #[error("only the storage upload initiate and tokens URLs are allowed on the REST host")]
    RestPath,
}

/// Parses a raw header value into a [`Call`].
pub fn parse_target(raw: &str) -> Result<Call, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Missing);
    }
    if raw.len() > MAX_TARGET_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) || raw.contains('\\') {
        return Err(TargetError::NotCanonical);
    }
    // The common case without the URL parser: a plain queue URL it would leave as written.
    if let Some((path, query)) = plain_queue_target(raw) {
        return Ok(Call {
            op: parse_queue_path(path, query)?,
        });
    }
    let url = Url::parse(raw).map_err(|_| TargetError::NotCanonical)?;
    if url.as_str() != raw || url.fragment().is_some() {
        return Err(TargetError::NotCanonical);
    }
    if url.scheme() != "https" {
        return Err(TargetError::Scheme);
    }
    // Canonical equality already rules out userinfo-free forms with ports like `:443`; these
    // checks keep the rule explicit should that ever change.
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(TargetError::NotCanonical);
    }
    let op = match url.host() {
        Some(url::Host::Domain("queue.fal.run")) => parse_queue_path(url.path(), url.query())?,
        Some(url::Host::Domain("fal.run")) => run_op(&url)?,
        Some(url::Host::Domain("rest.fal.ai" | "rest.alpha.fal.ai")) => storage_op(&url)?,
        _ => return Err(TargetError::Host),
    };
    Ok(Call { op })
}

/// The path and query of a target on `https://queue.fal.run/` whose every byte the WHATWG
/// parser keeps as written, so that its canonical form is the target itself, its host is
/// `queue.fal.run`, and its path and query are these slices (issue 23: `Url::parse` and its
/// IDNA pass were the costliest step of a proxied call). None when not sure: the parser decides.
///
/// The path is unreserved characters and `/`, with no `.` or `..` segment (what the parser
/// would remove) and no `%` (`%2e` is a dot to it); the query is any printable ASCII the
/// parser does not percent-encode in the query of an `https` URL (`"`, `#`, `<`, `>`, `'`),
/// and no backslash (refused before this).
fn plain_queue_target(raw: &str) -> Option<(&str, Option<&str>)> {
    let rest = raw.strip_prefix("https://queue.fal.run/")?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let path_plain = path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/'))
        && path.split('/').all(|segment| segment != "." && segment != "..");
    let query_plain = query.is_none_or(|query| {
        query
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\'' | b'\\'))
    });
    // The path keeps its leading `/`.
    (path_plain && query_plain).then(|| (&raw["https://queue.fal.run".len()..][..path.len() + 1], query))
}

fn run_op(url: &Url) -> Result<Op, TargetError> {
    match parse_queue_path(url.path(), url.query())? {
        Op::Submit {
            endpoint,
            webhook: None,
        } => Ok(Op::run_of(endpoint)),
        _ => Err(TargetError::Path(QueuePathError::Shape)),
    }
}

fn storage_op(url: &Url) -> Result<Op, TargetError> {
    if url.path() == "/storage/upload/initiate" && url.query() == Some("storage_type=fal-cdn-v3") {
        Ok(Op::StorageInitiate)
    } else if url.path() == "/tokens/" && url.query().is_none() {
        Ok(Op::ClientToken)
    } else {
        Err(TargetError::RestPath)
    }
}

#[cfg(test)]
mod tests {
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
            assert_eq!(parse_target(rest).unwrap().op, Op::StorageInitiate);
        }
        let token = parse_target("https://rest.fal.ai/tokens/").unwrap();
        assert_eq!(
            (token.op.clone(), token.path_and_query()),
            (Op::ClientToken, "/tokens/".to_owned())
        );
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
            "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
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
            Ok(Op::StorageInitiate)
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
}

#[cfg(test)]
mod tests_edges;
