//! fal's domain names, parsed once and trusted afterwards: endpoint and app ids, request ids,
//! and the typed [`Call`] that both route families turn a request into.
//!
//! Parse, don't validate: every type here has private fields and a `parse` that refuses anything
//! that is not in fal's canonical shape, so the rest of the gate never sees a raw path.
//!
//! What each operation *is* (its HTTP form, limit class, price, rates, retention header, slot,
//! drain rule, bookkeeping) is answered in one table, [`OpKind::facts`] (`fal/facts.rs`); the
//! rest of the gate asks [`Op::facts`] rather than matching on operations.

mod facts;
pub mod headers;
mod path;
pub mod signature;
mod target;
mod webhook;

use std::fmt;

pub use facts::{
    Answer, Drain, GateRoute, Job, OpClass, OpFacts, OpKind, Operation, Price, Retention, RouteFacts, SlotKind, Unknown,
};
pub use headers::{ObjectLifecycle, Priority, RequestTimeout};
pub use path::{parse_queue_path, QueuePathError};
pub use target::{parse_target, TargetError};
pub use webhook::{Webhook, WebhookError};

/// fal's namespaces whose ids carry one more leading segment (`workflows/owner/alias`).
const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// Longest endpoint id accepted; fal's ids are far shorter.
const MAX_ENDPOINT_LEN: usize = 256;

/// An endpoint id: `owner/alias[/path...]`, or `ns/owner/alias[/path...]` for fal's namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(String);

/// The app part of an endpoint (`[ns/]owner/alias`): what status, result and cancel are addressed to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AppId(String);

/// A fal queue request id (a UUID), held in lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FalRequestId(String);

/// Why an id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("endpoint id must be owner/alias with plain segments")]
    Endpoint,
    #[error("request id is not a fal request id")]
    RequestId,
}

impl EndpointId {
    /// Parses segments already split on `/`. Each segment is `[A-Za-z0-9._-]+`, not `.` or `..`.
    pub fn from_segments(segments: &[&str]) -> Result<Self, IdError> {
        let app_len = app_len(segments);
        if segments.len() < app_len || !segments.iter().all(|s| is_plain_segment(s)) {
            return Err(IdError::Endpoint);
        }
        let id = segments.join("/");
        if id.len() > MAX_ENDPOINT_LEN {
            return Err(IdError::Endpoint);
        }
        Ok(Self(id))
    }

    /// Parses `owner/alias[/path]`.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        Self::from_segments(&raw.split('/').collect::<Vec<_>>())
    }

    /// The app this endpoint belongs to (the sub path dropped).
    pub fn app(&self) -> AppId {
        let segments: Vec<&str> = self.0.split('/').collect();
        AppId(segments[..app_len(&segments)].join("/"))
    }

    /// The id as fal spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this id is `id` or a parent path of it (`fal-ai/flux` covers `fal-ai/flux/dev`,
    /// not `fal-ai/flux-pro`): how a configured entry applies to the endpoints under it.
    pub fn covers(&self, id: &Self) -> bool {
        id.0.strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl AppId {
    /// Parses exactly `owner/alias` or `ns/owner/alias`.
    pub fn from_segments(segments: &[&str]) -> Result<Self, IdError> {
        let endpoint = EndpointId::from_segments(segments)?;
        let app = endpoint.app();
        if app.0 == endpoint.0 {
            Ok(app)
        } else {
            Err(IdError::Endpoint)
        }
    }

    /// The app id as fal spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FalRequestId {
    /// Accepts a hyphenated UUID (any case) and keeps it in lower case, so one request has one name.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let bytes = raw.as_bytes();
        let well_formed = bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if well_formed {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(IdError::RequestId)
        }
    }

    /// The id in canonical (lower-case) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for FalRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many leading segments name the app.
fn app_len(segments: &[&str]) -> usize {
    match segments.first() {
        Some(first) if NAMESPACES.contains(first) => 3,
        _ => 2,
    }
}

fn is_plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment.len() <= 128
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One queue operation on fal, the unit every route is parsed into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `POST queue.fal.run/{endpoint}`.
    Submit {
        endpoint: EndpointId,
        webhook: Option<Webhook>,
    },
    /// `GET .../requests/{id}/status`.
    Status { app: AppId, id: FalRequestId, logs: bool },
    /// `GET .../requests/{id}/status/stream`, server-sent events.
    StatusStream { app: AppId, id: FalRequestId, logs: bool },
    /// `GET .../requests/{id}`.
    Result { app: AppId, id: FalRequestId },
    /// `PUT .../requests/{id}/cancel`.
    Cancel { app: AppId, id: FalRequestId },
    /// `POST fal.run/{endpoint}`, synchronous.
    Run { endpoint: EndpointId },
    /// `POST fal.run/{endpoint}/stream`: a synchronous run answered as an event stream of
    /// partial outputs (`fal.stream`). `endpoint` is the endpoint streamed, without `/stream`.
    RunStream { endpoint: EndpointId },
    /// `POST rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3`, or with `multipart`
    /// `.../initiate-multipart?...` (files over the client's threshold, 90 MiB): the same
    /// operation and upload policy; the parts and the completion go straight to fal's storage.
    StorageInitiate { multipart: bool },
    /// `POST rest.fal.ai/tokens/`: a temporary fal token for `fal.realtime` and client-mode
    /// streams (`pipeline::client_token` checks and rewrites its body).
    ClientToken { realtime: bool },
}

impl Op {
    /// The endpoint a submit or run calls (with its sub path): what it is priced and rated by.
    pub fn endpoint(&self) -> Option<&EndpointId> {
        match self {
            Self::Submit { endpoint, .. } | Self::Run { endpoint } | Self::RunStream { endpoint } => Some(endpoint),
            Self::Status { .. }
            | Self::StatusStream { .. }
            | Self::Result { .. }
            | Self::Cancel { .. }
            | Self::StorageInitiate { .. }
            | Self::ClientToken { .. } => None,
        }
    }

    /// The run of `endpoint` on `fal.run`: a streaming run when its path ends in a `stream`
    /// segment after the app (`fal.stream("owner/alias")` posts to `owner/alias/stream`), else a
    /// plain sync run. An app named `stream` (`owner/stream`) is a plain run.
    pub fn run_of(endpoint: EndpointId) -> Self {
        match endpoint.as_str().rsplit_once('/') {
            Some((streamed, "stream")) => match EndpointId::parse(streamed) {
                Ok(streamed) => Self::RunStream { endpoint: streamed },
                Err(_) => Self::Run { endpoint },
            },
            _ => Self::Run { endpoint },
        }
    }
}

/// Which fal host a call goes to; each maps to one configured base URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Queue,
    Run,
    Storage,
}

/// A parsed request for fal: the operation and nothing else. Built only by the route parsers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: Op,
}

impl Call {
    /// Its row of the operations table (`fal::facts`).
    pub fn facts(&self) -> OpFacts {
        self.op.facts()
    }

    /// The HTTP method fal expects for this operation.
    pub fn method(&self) -> http::Method {
        self.facts().method
    }

    /// The host this call belongs to.
    pub fn host(&self) -> Host {
        self.facts().host
    }

    /// Whether the call carries a JSON body that must be read and checked.
    pub fn has_body(&self) -> bool {
        self.facts().body
    }

    /// The app the call is addressed to (None for storage).
    pub fn app(&self) -> Option<AppId> {
        match &self.op {
            Op::Submit { endpoint, .. } | Op::Run { endpoint } | Op::RunStream { endpoint } => Some(endpoint.app()),
            Op::Status { app, .. } | Op::StatusStream { app, .. } | Op::Result { app, .. } | Op::Cancel { app, .. } => {
                Some(app.clone())
            }
            Op::StorageInitiate { .. } | Op::ClientToken { .. } => None,
        }
    }

    /// The request id a call on an existing request addresses.
    pub fn request_id(&self) -> Option<&FalRequestId> {
        match &self.op {
            Op::Status { id, .. } | Op::StatusStream { id, .. } | Op::Result { id, .. } | Op::Cancel { id, .. } => {
                Some(id)
            }
            Op::Submit { .. }
            | Op::Run { .. }
            | Op::RunStream { .. }
            | Op::StorageInitiate { .. }
            | Op::ClientToken { .. } => None,
        }
    }

    /// Canonical path and query on the fal host, always rebuilt from the parsed parts.
    pub fn path_and_query(&self) -> String {
        match &self.op {
            Op::Submit {
                endpoint,
                webhook: None,
            } => format!("/{endpoint}"),
            Op::Submit {
                endpoint,
                webhook: Some(hook),
            } => {
                let query = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("fal_webhook", hook.as_str())
                    .finish();
                format!("/{endpoint}?{query}")
            }
            Op::Status { app, id, logs } => {
                format!("/{app}/requests/{id}/status?logs={}", u8::from(*logs))
            }
            Op::StatusStream { app, id, logs } => {
                format!("/{app}/requests/{id}/status/stream?logs={}", u8::from(*logs))
            }
            Op::Result { app, id } => format!("/{app}/requests/{id}"),
            Op::Cancel { app, id } => format!("/{app}/requests/{id}/cancel"),
            Op::Run { endpoint } => format!("/{endpoint}"),
            Op::RunStream { endpoint } => format!("/{endpoint}/stream"),
            Op::StorageInitiate { multipart: false } => "/storage/upload/initiate?storage_type=fal-cdn-v3".to_owned(),
            Op::StorageInitiate { multipart: true } => {
                "/storage/upload/initiate-multipart?storage_type=fal-cdn-v3".to_owned()
            }
            Op::ClientToken { realtime: false } => "/tokens/".to_owned(),
            Op::ClientToken { realtime: true } => "/tokens/realtime".to_owned(),
        }
    }

    /// A bounded label for logs and metrics.
    pub fn op_name(&self) -> &'static str {
        self.facts().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_with_subpath_belongs_to_its_app() {
        let endpoint = EndpointId::parse("fal-ai/flux/dev").unwrap();
        assert_eq!(endpoint.app().as_str(), "fal-ai/flux");
    }

    #[test]
    fn an_endpoint_covers_itself_and_its_sub_paths_only_at_a_segment_boundary() {
        let id = |raw: &str| EndpointId::parse(raw).unwrap();
        let entry = id("fal-ai/flux");
        for covered in ["fal-ai/flux", "fal-ai/flux/dev", "fal-ai/flux/dev/x"] {
            assert!(entry.covers(&id(covered)), "{covered}");
        }
        for other in ["fal-ai/flux-pro", "fal-ai/fluxx/dev", "fal-ai/flu", "acme/flux"] {
            assert!(!entry.covers(&id(other)), "{other}");
        }
        assert!(
            !id("fal-ai/flux/dev").covers(&entry),
            "a sub path does not cover its parent"
        );
    }

    #[test]
    fn namespaced_endpoint_keeps_three_segments_of_app() {
        let endpoint = EndpointId::parse("workflows/me/flow/x").unwrap();
        assert_eq!(endpoint.app().as_str(), "workflows/me/flow");
        assert!(EndpointId::parse("comfy/me").is_err());
    }

    #[test]
    fn endpoint_refuses_dot_segments_empty_segments_and_odd_bytes() {
        for bad in [
            "fal-ai",
            "fal-ai/..",
            "fal-ai/./x",
            "fal-ai//x",
            "fal-ai/x%2f",
            "fal ai/x",
            "a/b\u{0}",
            "",
        ] {
            assert_eq!(EndpointId::parse(bad), Err(IdError::Endpoint), "{bad:?}");
        }
    }

    #[test]
    fn request_id_is_a_uuid_and_canonically_lower_case() {
        let id = FalRequestId::parse("764CABCF-B745-4B3E-AE38-1200304CF45B").unwrap();
        assert_eq!(id.as_str(), "764cabcf-b745-4b3e-ae38-1200304cf45b");
        for bad in [
            "",
            "764cabcf",
            "764cabcf-b745-4b3e-ae38-1200304cf45bx",
            "764cabcf_b745_4b3e_ae38_1200304cf45b",
            "../../../../etc/passwd-aaaaaaaaaaaa",
        ] {
            assert!(FalRequestId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_run_path_ending_in_stream_is_a_streaming_run_of_the_endpoint_before_it() {
        let run = |raw: &str| Op::run_of(EndpointId::parse(raw).unwrap());
        for (raw, streamed) in [
            ("fal-ai/x/stream", "fal-ai/x"),
            ("fal-ai/flux/dev/stream", "fal-ai/flux/dev"),
        ] {
            let op = run(raw);
            assert_eq!(
                op,
                Op::RunStream {
                    endpoint: EndpointId::parse(streamed).unwrap()
                }
            );
            assert_eq!(Call { op }.path_and_query(), format!("/{raw}"));
        }
        for plain in ["owner/stream", "fal-ai/x", "fal-ai/x/streams", "workflows/me/stream"] {
            assert!(matches!(run(plain), Op::Run { .. }), "{plain}");
        }
    }

    #[test]
    fn status_path_is_rebuilt_canonically() {
        let call = Call {
            op: Op::Status {
                app: AppId::from_segments(&["fal-ai", "flux"]).unwrap(),
                id: FalRequestId::parse("764CABCF-B745-4B3E-AE38-1200304CF45B").unwrap(),
                logs: true,
            },
        };
        assert_eq!(
            call.path_and_query(),
            "/fal-ai/flux/requests/764cabcf-b745-4b3e-ae38-1200304cf45b/status?logs=1"
        );
    }
}
