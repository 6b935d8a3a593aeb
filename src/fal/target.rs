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
    let multipart = match url.path() {
        "/storage/upload/initiate" => Some(false),
        "/storage/upload/initiate-multipart" => Some(true),
        _ => None,
    };
    if let (Some(multipart), Some("storage_type=fal-cdn-v3")) = (multipart, url.query()) {
        Ok(Op::StorageInitiate { multipart })
    } else if url.query().is_none() && matches!(url.path(), "/tokens/" | "/tokens/realtime") {
        Ok(Op::ClientToken {
            realtime: url.path() == "/tokens/realtime",
        })
    } else {
        Err(TargetError::RestPath)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_edges;
