//! Why a call to fal failed, as `upstream` knows it: no HTTP here; the edge (`error::GateError`'s
//! refusal table) gives each its status, code and message.

/// A failure of a call to fal, or a caller header fal may not see.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No answer (connect or first byte) in time.
    #[error("fal did not answer in time")]
    Timeout,
    /// fal could not be reached (the transport error, its causes kept for the log).
    #[error("fal could not be reached")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// fal's answer is not a valid one (the detail is for the log).
    #[error("fal answered with something that is not a valid response")]
    BadResponse(String),
    /// fal answered 401/403: the server-held key is bad (the status fal answered).
    #[error("fal refused the gateway's credentials; the operator has been alerted")]
    Credentials(u16),
    /// A paid call failed after it was sent: fal may have queued it (the detail is for the log).
    #[error("fal did not confirm the submission; it may have been queued, so check before submitting again")]
    OutcomeUnknown(String),
    /// A caller header fal may see is repeated or does not parse (the sentence says which).
    #[error("{0}")]
    MalformedHeader(String),
    /// A bug (the detail is for the log).
    #[error("an internal error occurred")]
    Internal(String),
}

impl UpstreamError {
    /// The detail kept for the log line (never sent to the client).
    pub fn detail(&self) -> String {
        match self {
            Self::Credentials(status) => format!("fal answered {status}: FAL_KEY is missing, revoked or lacks access"),
            Self::Unreachable(err) => cause_chain(err.as_ref()),
            Self::BadResponse(why) | Self::OutcomeUnknown(why) | Self::Internal(why) => why.clone(),
            Self::Timeout | Self::MalformedHeader(_) => self.to_string(),
        }
    }
}

/// An error followed by its causes (`source()` after `source()`).
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |current| current.source())
}

/// The error and its causes on one line (fal's URLs carry no secret; no URL is printed anyway).
pub(crate) fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    causes(err).map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
