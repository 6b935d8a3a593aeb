//! Turns a method and path on one of the fal hosts into an operation, following fal's URL shapes:
//! status, result and cancel live under the app (`[workflows|comfy/]owner/alias`) only, while
//! submit and run take the full endpoint id including any subpath.

use axum::http::Method;

use super::faults::Op;

/// Namespaces whose ids carry one extra leading segment (`ns/owner/alias`).
pub(crate) const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// A parsed call on a fal host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) op: Op,
    /// `[ns/]owner/alias`: the key under which request ids live.
    pub(crate) app: String,
    /// The full endpoint id (equal to `app` for request-scoped operations).
    pub(crate) endpoint: String,
    /// The request id for status, stream, result and cancel.
    pub(crate) request_id: Option<String>,
}

/// Why a path is not a fal operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    #[error("no fal operation at this path")]
    NotFound,
    #[error("method not allowed for this fal operation")]
    MethodNotAllowed,
}

/// Parses a path relative to the queue host (`/owner/alias/...`).
pub(crate) fn queue(method: &Method, path: &str) -> Result<Call, RouteError> {
    let segments = split(path)?;
    let app_len = app_len(&segments);
    if segments.len() > app_len {
        if let Some(call) = request_op(method, &segments[..app_len], &segments[app_len..])? {
            return Ok(call);
        }
    }
    endpoint_call(method, &segments, Op::Submit)
}

/// Parses a path relative to the run host (`/fal.run/owner/alias/...`); a path ending in
/// `/stream` after the app is the streaming run of the endpoint before it.
pub(crate) fn run(method: &Method, path: &str) -> Result<Call, RouteError> {
    let segments = split(path)?;
    match segments.split_last() {
        Some((&"stream", endpoint)) if endpoint.len() >= app_len(endpoint) => {
            endpoint_call(method, endpoint, Op::RunStream)
        }
        _ => endpoint_call(method, &segments, Op::Run),
    }
}

/// Parses a path relative to the REST host (`/rest.fal.ai/...`): upload initiation and tokens.
pub(crate) fn rest(method: &Method, path: &str) -> Result<Call, RouteError> {
    let (op, name) = match path {
        "/storage/upload/initiate" => (Op::StorageInitiate, "storage/upload/initiate".to_owned()),
        "/storage/upload/initiate-multipart" => (
            Op::StorageInitiateMultipart,
            "storage/upload/initiate-multipart".to_owned(),
        ),
        "/tokens/" => (Op::Token, "tokens".to_owned()),
        "/tokens/realtime" => (Op::RealtimeToken, "tokens/realtime".to_owned()),
        _ => return Err(RouteError::NotFound),
    };
    require(method, &Method::POST)?;
    Ok(Call {
        op,
        app: name.clone(),
        endpoint: name,
        request_id: None,
    })
}

/// Splits a path into segments; empty segments (`//`, trailing `/`) make it unknown.
fn split(path: &str) -> Result<Vec<&str>, RouteError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err(RouteError::NotFound);
    }
    Ok(segments)
}

fn app_len(segments: &[&str]) -> usize {
    if segments.first().is_some_and(|first| NAMESPACES.contains(first)) {
        3
    } else {
        2
    }
}

/// Matches `requests/{id}[/status[/stream]|/cancel]` after the app segments.
fn request_op(method: &Method, app: &[&str], rest: &[&str]) -> Result<Option<Call>, RouteError> {
    let (op, wanted) = match rest {
        ["requests", _] => (Op::Result, Method::GET),
        ["requests", _, "status"] => (Op::Status, Method::GET),
        ["requests", _, "status", "stream"] => (Op::StatusStream, Method::GET),
        ["requests", _, "cancel"] => (Op::Cancel, Method::PUT),
        _ => return Ok(None),
    };
    require(method, &wanted)?;
    let app = app.join("/");
    let request_id = rest.get(1).map(|id| (*id).to_owned());
    Ok(Some(Call {
        op,
        endpoint: app.clone(),
        app,
        request_id,
    }))
}

/// A POST to an endpoint id of at least two segments.
fn endpoint_call(method: &Method, segments: &[&str], op: Op) -> Result<Call, RouteError> {
    if segments.len() < 2 {
        return Err(RouteError::NotFound);
    }
    require(method, &Method::POST)?;
    let app = segments[..app_len(segments).min(segments.len())].join("/");
    Ok(Call {
        op,
        app,
        endpoint: segments.join("/"),
        request_id: None,
    })
}

fn require(method: &Method, wanted: &Method) -> Result<(), RouteError> {
    if method == wanted {
        Ok(())
    } else {
        Err(RouteError::MethodNotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subpath_submit_keeps_endpoint_but_app_is_owner_alias() {
        let call = queue(&Method::POST, "/fal-ai/flux/dev").expect("submit");
        assert_eq!((call.op, call.app.as_str()), (Op::Submit, "fal-ai/flux"));
        assert_eq!(call.endpoint, "fal-ai/flux/dev");
    }

    #[test]
    fn namespaced_status_uses_three_segment_app() {
        let call = queue(&Method::GET, "/workflows/me/flow/requests/abc/status").expect("status");
        assert_eq!((call.op, call.app.as_str()), (Op::Status, "workflows/me/flow"));
        assert_eq!(call.request_id.as_deref(), Some("abc"));
    }

    #[test]
    fn request_ops_need_their_method() {
        let stream = queue(&Method::GET, "/a/b/requests/x/status/stream").expect("stream");
        assert_eq!(stream.op, Op::StatusStream);
        assert_eq!(
            queue(&Method::PUT, "/a/b/requests/x/cancel").map(|c| c.op),
            Ok(Op::Cancel)
        );
        assert_eq!(queue(&Method::GET, "/a/b/requests/x").map(|c| c.op), Ok(Op::Result));
        let wrong = queue(&Method::POST, "/a/b/requests/x/status");
        assert_eq!(wrong, Err(RouteError::MethodNotAllowed));
        assert_eq!(queue(&Method::GET, "/a/b"), Err(RouteError::MethodNotAllowed));
    }

    #[test]
    fn short_or_empty_segment_paths_are_unknown() {
        for path in ["/", "/a", "//a/b", "/a/b/", ""] {
            assert_eq!(queue(&Method::POST, path), Err(RouteError::NotFound), "{path}");
        }
        assert_eq!(rest(&Method::POST, "/storage/other"), Err(RouteError::NotFound));
        assert_eq!(run(&Method::POST, "/x"), Err(RouteError::NotFound));
    }

    #[test]
    fn a_run_path_ending_in_stream_streams_the_endpoint_before_it() {
        let call = run(&Method::POST, "/fal-ai/flux/dev/stream").expect("stream");
        assert_eq!((call.op, call.endpoint.as_str()), (Op::RunStream, "fal-ai/flux/dev"));
        assert_eq!(run(&Method::POST, "/owner/stream").map(|c| c.op), Ok(Op::Run));
    }
}
