//! The request body of a call that carries one: declared JSON, uncompressed, bounded in size and
//! time, and charged to the process's body budget (`request.body_budget_bytes`) while it is held,
//! so many large bodies at once cannot outgrow the memory limit (past it: 503 `overloaded`,
//! nothing sent to fal). Whether it *is* valid JSON for the endpoint is `schema`'s step, on the
//! bytes read here.
//!
//! The budget is charged as bytes arrive, never for what a `Content-Length` only declares: a
//! body that is announced and never sent holds nothing (issue 20: seven requests declaring
//! 10 MiB and sending nothing made every other caller's submit wait). What a slow sender can
//! hold is bounded three times: by the bytes it actually sent, by `request.body_reads_per_caller`,
//! the bodies one caller may have in flight at once on a replica (past it: 429
//! `concurrency_limited`, before a byte is read), and by its share of the budget: the bytes one
//! caller's bodies hold while they arrive stay within a quarter of the budget (or one body's
//! cap, if larger), past which its read is refused 429 `concurrency_limited`. So pinning the
//! budget takes at least four callers sending real bytes, each read paying the caller's rate
//! when it times out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use bytes::BytesMut;

use crate::budget::{Budget, Charge};

/// The share of the budget one caller's bodies may hold while they arrive: 1/BODY_SHARE.
const BODY_SHARE: usize = 4;

/// A caller refused for too many bodies in flight is told to retry after this long.
const READS_RETRY: Duration = Duration::from_secs(1);

/// The process-lived side of body reading: the byte budget all bodies share, and how many bodies
/// each caller is sending now. Cloning shares both.
#[derive(Debug, Clone)]
pub struct Bodies {
    budget: Budget,
    /// `BODY_SHARE`'s part of the budget, in bytes.
    share: usize,
    /// Bodies being read per caller (principal), and the bytes they hold so far; an entry leaves
    /// with its caller's last read, so the map never holds more entries than bodies in flight.
    reading: Arc<Mutex<HashMap<Box<str>, InFlight>>>,
}

/// One caller's bodies being read.
#[derive(Debug, Default)]
struct InFlight {
    bodies: u32,
    bytes: usize,
}

/// How one body may be read.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    /// Bodies one caller may have in flight at once (`request.body_reads_per_caller`).
    pub per_caller: u32,
}

/// One caller's place among the bodies in flight; given back when dropped.
struct Reading<'a> {
    bodies: &'a Bodies,
    caller: &'a str,
    /// The bytes of this body counted in its caller's entry.
    bytes: usize,
}

impl Bodies {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: Budget::new(budget_bytes),
            share: budget_bytes / BODY_SHARE,
            reading: Arc::default(),
        }
    }

    /// KiB of the budget free now.
    pub fn available_kib(&self) -> usize {
        self.budget.available_kib()
    }

    fn start<'a>(&'a self, caller: &'a str, max: u32) -> Option<Reading<'a>> {
        let mut reading = self.reading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = reading.entry(caller.into()).or_default();
        if entry.bodies >= max {
            if entry.bodies == 0 {
                reading.remove(caller);
            }
            return None;
        }
        entry.bodies += 1;
        Some(Reading {
            bodies: self,
            caller,
            bytes: 0,
        })
    }
}

impl Reading<'_> {
    /// Counts this body at `size` bytes in its caller's entry, unless the caller's bodies would
    /// then hold more than `share` bytes.
    fn grow_to(&mut self, size: usize, share: usize) -> bool {
        let mut reading = self
            .bodies
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(entry) = reading.get_mut(self.caller) else {
            return false;
        };
        let total = entry.bytes - self.bytes + size;
        if total > share {
            return false;
        }
        entry.bytes = total;
        self.bytes = size;
        true
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        let mut reading = self
            .bodies
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = reading.get_mut(self.caller) {
            entry.bodies -= 1;
            entry.bytes -= self.bytes;
            if entry.bodies == 0 {
                reading.remove(self.caller);
            }
        }
    }
}

/// Why a body was not read. Free of HTTP: the edge's refusal table (`GateError::refusal` in
/// `error`, through `From<BodyError>`) gives each its status, code and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Not declared `application/json`, or compressed (415 `unsupported_media_type`).
    NotJson,
    /// Longer than this many bytes, declared or sent (413 `body_too_large`).
    TooLarge(usize),
    /// The caller's bodies in flight are at their cap or hold their share of the budget
    /// (429 `concurrency_limited`, retried after `retry_after`).
    Busy { message: String, retry_after: Duration },
    /// Not all of it arrived within the read timeout (408 `body_timeout`).
    Timeout,
    /// The connection failed while it was read (400 `malformed_request`).
    Unreadable,
    /// The process's body budget had no room within the timeout (503 `overloaded`).
    Overloaded,
}

/// Reads the body of `caller` (its principal): 415 unless declared JSON, 413 past
/// `limits.max_bytes`, 429 `concurrency_limited` when the caller already has
/// `limits.per_caller` bodies in flight, 408 past `limits.timeout`, 503 when the budget has no
/// room for the bytes that arrived within the timeout. The charge grows with the bytes received
/// and is held as long as they are.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
    bodies: &Bodies,
    caller: &str,
) -> Result<(Bytes, Charge), BodyError> {
    let max_bytes = limits.max_bytes;
    if !is_json(headers) {
        return Err(BodyError::NotJson);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_bytes as u64) {
        return Err(BodyError::TooLarge(max_bytes));
    }
    let Some(mut reading) = bodies.start(caller, limits.per_caller) else {
        return Err(BodyError::Busy {
            message: format!(
                "{} request bodies of this caller are being received already; retry when one is done",
                limits.per_caller
            ),
            retry_after: READS_RETRY,
        });
    };
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut charge = Charge::default();
    let mut bytes = BytesMut::new();
    let mut body = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut body)).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(BodyError::Unreadable),
            Ok(Some(Ok(chunk))) => chunk,
        };
        let size = bytes.len() + chunk.len();
        if size > max_bytes {
            return Err(BodyError::TooLarge(max_bytes));
        }
        // A caller's bodies hold at most its share of the budget (one body's cap at least).
        if !reading.grow_to(size, bodies.share.max(max_bytes)) {
            return Err(BodyError::Busy {
                message: "this caller's request bodies being received hold their share of the body budget; retry when one is done".into(),
                retry_after: READS_RETRY,
            });
        }
        // Charged for bytes received, before they are kept.
        reserve(&bodies.budget, &mut charge, size, deadline).await?;
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes.freeze(), charge))
}

/// Grows `charge` to `size` bytes, waiting for room until `deadline`.
async fn reserve(
    budget: &Budget,
    charge: &mut Charge,
    size: usize,
    deadline: tokio::time::Instant,
) -> Result<(), BodyError> {
    if budget.try_grow(charge, size) {
        return Ok(());
    }
    let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
    budget
        .grow(charge, size, wait)
        .await
        .map_err(|()| BodyError::Overloaded)
}

/// `application/json` (parameters allowed), not compressed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let identity = headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    essence.eq_ignore_ascii_case("application/json") && identity
}

#[cfg(test)]
mod tests;
