//! [`PolicyError`]: why the policy refused a call. Free of HTTP: its status, code and headers
//! are the edge's (`error::GateError`'s refusal table).

/// Why a caller may not make a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No configured entry the caller's tier may use covers the endpoint or app.
    #[error("endpoint `{0}` is not allowed for this caller")]
    EndpointNotAllowed(String),
    /// The caller's tier may not use this operation (its name).
    #[error("your tier may not use {0} here")]
    OperationNotAllowed(&'static str),
    /// A temporary fal token was asked for an app alias not every entry of which opted in.
    #[error("temporary tokens are not allowed for app `{0}`")]
    TokenAppNotAllowed(String),
    #[error("your tier is not configured on this gateway")]
    TierNotAllowed,
    #[error("synchronous runs are not allowed for this endpoint; use the queue")]
    SyncRunNotAllowed,
    #[error("file uploads are not allowed")]
    UploadsNotAllowed,
    #[error("the webhook URL's host is not allowed")]
    WebhookNotAllowed,
    /// An input field's value the tier may not use; `allowed` lists the values it may.
    #[error("field `{field}` must be one of {allowed} for your tier")]
    OptionNotAllowed { field: String, allowed: String },
}
