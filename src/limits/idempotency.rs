//! Idempotent submits: the first submit with an `Idempotency-Key` (per caller) is remembered
//! with its body hash; a repeat with the same body replays the stored answer and never reaches
//! fal, a repeat with another body is refused (422 `idempotency_key_reused`). The pipeline passes
//! the key scoped to the call (method, endpoint, query; `pipeline::idempotency`). Redis key:
//! `<prefix>:{<caller>}:idem:<sha256(scoped key)>`, a hash that expires by itself.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use moka::sync::Cache;
use redis::Script;
use sha2::{Digest, Sha256};

use super::{micros, LimitError, StoreErrorLog};
use crate::clock::Clock;
use crate::redis::{tag_of, RedisStore};

/// A started submit that never completes (a replica died mid-call) frees its key after this.
pub const PENDING_TTL: Duration = Duration::from_secs(300);

/// What to do with a submit carrying an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemState {
    /// First use: submit, then [`Idempotency::complete`] (or [`Idempotency::abandon`]).
    New,
    /// Seen and answered: send this answer again, do not submit.
    Replay { status: u16, body: Bytes },
    /// Seen and still running on some replica: answer 409 `idempotency_in_flight`.
    InFlight,
    /// Seen with another body: answer 422 `idempotency_key_reused`.
    Mismatch,
}

/// The idempotency store (in process, or Redis: a submit whose key Redis cannot check is
/// refused with 503, whatever `on_store_error` says).
pub struct Idempotency {
    ttl: Duration,
    memory: Cache<String, Arc<Mutex<Entry>>>,
    redis: Option<RedisStore>,
    errors: StoreErrorLog,
    begin_script: Script,
    complete_script: Script,
    /// The in-process records' time (Redis keys expire on Redis's clock).
    clock: Clock,
}

#[derive(Debug)]
struct Entry {
    body_hash: String,
    answer: Option<(u16, Bytes)>,
    expires_us: u64,
}

const BEGIN: &str = r"
local e = redis.call('HMGET', KEYS[1], 'hash', 'status', 'body')
if not e[1] then
  redis.call('HSET', KEYS[1], 'hash', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, 0, ''}
end
if e[1] ~= ARGV[1] then return {3, 0, ''} end
if not e[2] then return {2, 0, ''} end
return {1, tonumber(e[2]), e[3]}";

const COMPLETE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'body', ARGV[2])
return redis.call('PEXPIRE', KEYS[1], ARGV[3])";

impl Idempotency {
    /// Answers are kept for `ttl`; at most `capacity` keys in process.
    pub fn new(ttl: Duration, capacity: u64, redis: Option<RedisStore>) -> Self {
        Self::with_clock(ttl, capacity, redis, Clock::system())
    }

    /// [`Self::new`] with the in-process records expiring on `clock`.
    pub fn with_clock(ttl: Duration, capacity: u64, redis: Option<RedisStore>, clock: Clock) -> Self {
        Self {
            ttl,
            memory: Cache::builder().max_capacity(capacity).time_to_live(ttl).build(),
            redis,
            errors: StoreErrorLog::default(),
            begin_script: Script::new(BEGIN),
            complete_script: Script::new(COMPLETE),
            clock,
        }
    }

    /// The hash to pass to [`Self::begin`] for a request body.
    pub fn body_hash(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    /// Claims `key` for `principal`, or tells what happened to its first use.
    pub async fn begin(&self, principal: &str, key: &str, body_hash: &str) -> Result<IdemState, LimitError> {
        if let Some(store) = &self.redis {
            let mut connection = store.connection();
            let mut call = self.begin_script.prepare_invoke();
            call.key(redis_key(store, principal, key))
                .arg(body_hash)
                .arg(millis(PENDING_TTL.min(self.ttl)));
            // A submit whose key cannot be checked could be a second paid submit: refused.
            // Boxed (see `Limiter::evaluate`): inline, a Redis call sizes every call's future.
            let begun = Box::pin(store.timed(call.invoke_async::<(i64, u16, Vec<u8>)>(&mut connection))).await;
            return match begun {
                Ok((code, status, body)) => Ok(state(code, status, body.into())),
                Err(err) => Err(self.errors.fail_closed(&err)),
            };
        }
        Ok(self.begin_at(principal, key, body_hash, self.clock.now()))
    }

    /// Whether `key`'s first use was answered (a retry will be replayed). A store error is a no.
    pub async fn answered(&self, principal: &str, key: &str) -> bool {
        if let Some(store) = &self.redis {
            let mut connection = store.connection();
            let mut exists = redis::cmd("HEXISTS");
            exists.arg(redis_key(store, principal, key)).arg("status");
            return match Box::pin(store.timed(exists.query_async::<bool>(&mut connection))).await {
                Ok(answered) => answered,
                Err(err) => {
                    self.errors.log(&err);
                    false
                }
            };
        }
        self.answered_at(principal, key, self.clock.now())
    }

    /// The in-process [`Self::answered`] at `now`.
    pub fn answered_at(&self, principal: &str, key: &str, now: SystemTime) -> bool {
        self.memory.get(&memory_key(principal, key)).is_some_and(|entry| {
            let entry = entry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            entry.answer.is_some() && entry.expires_us > micros(now)
        })
    }

    /// Stores the answer to replay for `key` (only after [`IdemState::New`]).
    pub async fn complete(&self, principal: &str, key: &str, status: u16, body: &[u8]) {
        self.finish(principal, key, Some((status, body))).await;
    }

    /// Forgets `key` after a submit whose outcome should not be replayed, so a retry may run.
    pub async fn abandon(&self, principal: &str, key: &str) {
        self.finish(principal, key, None).await;
    }

    /// The in-process [`Self::begin`] at `now`.
    pub fn begin_at(&self, principal: &str, key: &str, body_hash: &str, now: SystemTime) -> IdemState {
        let now_us = micros(now);
        let fresh = || {
            let expires_us = now_us + micros_of(PENDING_TTL.min(self.ttl));
            Arc::new(Mutex::new(Entry {
                body_hash: body_hash.to_owned(),
                answer: None,
                expires_us,
            }))
        };
        let entry = self.memory.entry(memory_key(principal, key)).or_insert_with(fresh);
        if entry.is_fresh() {
            return IdemState::New;
        }
        let slot = entry.into_value();
        let mut current = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.expires_us <= now_us {
            *current = Entry {
                body_hash: body_hash.to_owned(),
                answer: None,
                expires_us: now_us + micros_of(PENDING_TTL),
            };
            return IdemState::New;
        }
        match (&current.answer, current.body_hash == body_hash) {
            (_, false) => IdemState::Mismatch,
            (None, true) => IdemState::InFlight,
            (Some((status, body)), true) => IdemState::Replay {
                status: *status,
                body: body.clone(),
            },
        }
    }

    async fn finish(&self, principal: &str, key: &str, answer: Option<(u16, &[u8])>) {
        if let Some(store) = &self.redis {
            let mut connection = store.connection();
            let mut call = self.complete_script.prepare_invoke();
            call.key(redis_key(store, principal, key));
            match answer {
                Some((status, body)) => call.arg(status).arg(body).arg(millis(self.ttl)),
                None => call.arg("").arg("").arg(0),
            };
            if let Err(err) = Box::pin(store.timed(call.invoke_async::<i64>(&mut connection))).await {
                // The pending record expires after `PENDING_TTL`; a retry meanwhile is 409.
                self.errors.log(&err);
            }
            return;
        }
        let key = memory_key(principal, key);
        match answer {
            Some((status, body)) => {
                if let Some(entry) = self.memory.get(&key) {
                    let mut entry = entry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    entry.answer = Some((status, Bytes::copy_from_slice(body)));
                    entry.expires_us = micros(self.clock.now()) + micros_of(self.ttl);
                }
            }
            None => self.memory.invalidate(&key),
        }
    }
}

fn state(code: i64, status: u16, body: Bytes) -> IdemState {
    match code {
        0 => IdemState::New,
        1 => IdemState::Replay { status, body },
        2 => IdemState::InFlight,
        _ => IdemState::Mismatch,
    }
}

fn key_hash(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

fn redis_key(store: &RedisStore, principal: &str, key: &str) -> String {
    store.tagged(&tag_of(principal), &format!("idem:{}", key_hash(key)))
}

fn memory_key(principal: &str, key: &str) -> String {
    format!("{}:{}", tag_of(principal), key_hash(key))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn micros_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
