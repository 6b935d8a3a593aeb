//! Queue paths (`{endpoint}`, `{app}/requests/{id}[/status[/stream]|/cancel]`) and their query,
//! shared by the REST routes and the `x-fal-target-url` parser so both agree on every byte.

use super::{AppId, EndpointId, FalRequestId, IdError, Op, Webhook, WebhookError};

/// Why a queue path or its query was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueuePathError {
    #[error("path holds encoded, empty or dot segments")]
    Encoding,
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("path names no queue operation")]
    Shape,
    #[error("query parameter `{0}` is not accepted here")]
    Query(String),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

/// The segment that separates an app from a request id; any other spelling of it is refused, so
/// `REQUESTS/{id}` is never read as an endpoint sub path.
const REQUESTS: &str = "requests";

/// Parses a raw (still percent-encoded) path below the queue root, and its raw query.
///
/// Percent signs and backslashes are refused outright: fal ids never need them, and refusing them
/// removes every decode-then-check differential. The path is taken as it is, never normalised:
/// exactly one leading `/`, no empty segments, and `requests` spelled only in lower case.
pub fn parse_queue_path(raw_path: &str, raw_query: Option<&str>) -> Result<Op, QueuePathError> {
    if raw_path.contains(['%', '\\']) {
        return Err(QueuePathError::Encoding);
    }
    let segments: Vec<&str> = raw_path
        .strip_prefix('/')
        .ok_or(QueuePathError::Encoding)?
        .split('/')
        .collect();
    if segments
        .iter()
        .any(|s| s.eq_ignore_ascii_case(REQUESTS) && *s != REQUESTS)
    {
        return Err(QueuePathError::Shape);
    }
    let query = Query::parse(raw_query)?;
    match segments.iter().position(|s| *s == REQUESTS) {
        None => {
            let endpoint = EndpointId::from_segments(&segments)?;
            let webhook = query.take_only(&["fal_webhook"])?.into_iter().next().map(|(_, v)| v);
            let webhook = webhook.as_deref().map(Webhook::parse).transpose()?;
            Ok(Op::Submit { endpoint, webhook })
        }
        Some(at) => request_op(&segments[..at], &segments[at + 1..], query),
    }
}

fn request_op(app: &[&str], rest: &[&str], query: Query) -> Result<Op, QueuePathError> {
    let app = AppId::from_segments(app)?;
    let (id, tail) = rest.split_first().ok_or(QueuePathError::Shape)?;
    let id = FalRequestId::parse(id)?;
    match tail {
        [] => query.none().map(|()| Op::Result { app, id }),
        ["cancel"] => query.none().map(|()| Op::Cancel { app, id }),
        ["status"] => Ok(Op::Status {
            logs: query.logs()?,
            app,
            id,
        }),
        ["status", "stream"] => Ok(Op::StatusStream {
            logs: query.logs()?,
            app,
            id,
        }),
        _ => Err(QueuePathError::Shape),
    }
}

/// Decoded query pairs; only ever read through the per-operation accessors below.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Result<Self, QueuePathError> {
        let raw = raw.unwrap_or_default();
        if raw.len() > 4096 {
            return Err(QueuePathError::Query("(too long)".into()));
        }
        Ok(Self(url::form_urlencoded::parse(raw.as_bytes()).into_owned().collect()))
    }

    fn take_only(self, allowed: &[&str]) -> Result<Vec<(String, String)>, QueuePathError> {
        let mut seen = Vec::new();
        for (key, value) in self.0 {
            if !allowed.contains(&key.as_str()) || seen.iter().any(|(k, _)| k == &key) {
                return Err(QueuePathError::Query(printable(&key)));
            }
            seen.push((key, value));
        }
        Ok(seen)
    }

    fn none(self) -> Result<(), QueuePathError> {
        self.take_only(&[]).map(drop)
    }

    /// `logs` as the JS client (`0|1`) and the Python client (`true|false`) send it.
    fn logs(self) -> Result<bool, QueuePathError> {
        match self.take_only(&["logs"])?.first().map(|(_, v)| v.as_str()) {
            None | Some("0" | "false") => Ok(false),
            Some("1" | "true") => Ok(true),
            Some(_) => Err(QueuePathError::Query("logs".into())),
        }
    }
}

/// A query key as it may appear in an error message: short and printable.
fn printable(key: &str) -> String {
    key.chars().filter(|c| c.is_ascii_graphic()).take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "764cabcf-b745-4b3e-ae38-1200304cf45b";

    #[test]
    fn every_queue_operation_parses_from_its_path() {
        let status = parse_queue_path(&format!("/fal-ai/flux/requests/{ID}/status"), Some("logs=1")).unwrap();
        assert!(matches!(status, Op::Status { logs: true, .. }));
        let stream = parse_queue_path(&format!("/fal-ai/flux/requests/{ID}/status/stream"), Some("logs=0")).unwrap();
        assert!(matches!(stream, Op::StatusStream { logs: false, .. }));
        assert!(matches!(
            parse_queue_path(&format!("/fal-ai/flux/requests/{ID}"), None).unwrap(),
            Op::Result { .. }
        ));
        assert!(matches!(
            parse_queue_path(&format!("/fal-ai/flux/requests/{ID}/cancel"), None).unwrap(),
            Op::Cancel { .. }
        ));
        let submit = parse_queue_path("/fal-ai/flux/dev", Some("fal_webhook=https%3A%2F%2Fx.example%2Fh")).unwrap();
        assert_eq!(
            submit,
            Op::Submit {
                endpoint: EndpointId::parse("fal-ai/flux/dev").unwrap(),
                webhook: Some(Webhook::parse("https://x.example/h").unwrap())
            }
        );
    }

    #[test]
    fn encoded_and_malformed_paths_are_refused() {
        for bad in [
            "/fal-ai/%2e%2e/x",
            "/fal-ai\\x/y",
            "/fal-ai",
            "/fal-ai/flux/requests",
            "/fal-ai/flux/requests/nope/status",
            &format!("/fal-ai/flux/requests/{ID}/status/other"),
            &format!("/fal-ai/requests/{ID}"),
            "//fal-ai/flux",
            "fal-ai/flux",
            "/fal-ai/flux/REQUESTS",
            &format!("/fal-ai/flux/Requests/{ID}/status"),
            &format!("/fal-ai/flux/dev/REQUESTS/{ID}"),
        ] {
            assert!(parse_queue_path(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn unexpected_or_repeated_query_parameters_are_refused() {
        assert!(parse_queue_path(&format!("/a/b/requests/{ID}/status"), Some("logs=1&logs=0")).is_err());
        assert!(parse_queue_path(&format!("/a/b/requests/{ID}"), Some("x=1")).is_err());
        assert!(parse_queue_path(&format!("/a/b/requests/{ID}/status"), Some("logs=maybe")).is_err());
        assert!(parse_queue_path("/a/b", Some("other=1")).is_err());
    }
}

#[cfg(test)]
mod tests_edges;
