//! The index of jobs in flight the reconciler asks about: in process (a map) or one sorted set
//! on Redis shared by every replica, and the lease that lets one replica run a pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::Script;

use super::millis;
use crate::fal::{AppId, FalRequestId};
use crate::redis::{RedisStore, StoreError};

/// One job in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Job {
    pub(super) tag: String,
    pub(super) app: AppId,
    pub(super) id: FalRequestId,
}

/// The index of jobs in flight, and this process's name in the lease. Lives for the process.
pub(crate) struct Jobs {
    /// This replica's lease value.
    pub(super) replica: String,
    /// In process (no `[redis]`): (caller tag, request id) → (app, due at, µs).
    pub(super) memory: Mutex<HashMap<(String, String), (AppId, u64)>>,
    pub(super) redis: Option<RedisJobs>,
}

pub(super) struct RedisJobs {
    pub(super) store: RedisStore,
    pub(super) lease: Script,
}

impl Jobs {
    pub(crate) fn new(redis: Option<RedisStore>) -> Self {
        Self {
            replica: uuid::Uuid::new_v4().to_string(),
            memory: Mutex::default(),
            redis: redis.map(|store| RedisJobs {
                store,
                lease: Script::new(include_str!("../lease.lua")),
            }),
        }
    }
}

impl RedisJobs {
    pub(super) fn index(&self) -> String {
        self.store.tagged("reconcile", "jobs")
    }

    pub(super) fn lease_key(&self) -> String {
        self.store.tagged("reconcile", "lease")
    }

    /// Runs one command with the store's timeout.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        command: &redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut connection = self.store.connection();
        self.store.timed_as(op, command.query_async(&mut connection)).await
    }

    pub(super) async fn track(&self, job: &Job, due_ms: u64) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZADD");
        command.arg(self.index()).arg(due_ms).arg(member(job));
        self.query::<i64>("zadd", &command).await.map(drop)
    }

    pub(super) async fn forget(&self, job: &Job) -> Result<(), StoreError> {
        self.remove(&member(job)).await
    }

    pub(super) async fn remove(&self, member: &str) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZREM");
        command.arg(self.index()).arg(member);
        self.query::<i64>("zrem", &command).await.map(drop)
    }

    /// Puts a job still running back at the end of the line; not if a poll forgot it meanwhile.
    pub(super) async fn postpone(&self, job: &Job, due_ms: u64) -> Result<(), StoreError> {
        let mut command = redis::cmd("ZADD");
        command.arg(self.index()).arg("XX").arg(due_ms).arg(member(job));
        self.query::<i64>("zadd", &command).await.map(drop)
    }

    pub(super) async fn due(&self, now_ms: u64, batch: u32) -> Result<Vec<Job>, StoreError> {
        let mut command = redis::cmd("ZRANGEBYSCORE");
        command
            .arg(self.index())
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(batch);
        let members: Vec<String> = self.query("zrange", &command).await?;
        let mut jobs = Vec::with_capacity(members.len());
        for raw in members {
            match parse_member(&raw) {
                Some(job) => jobs.push(job),
                // Not written by falgate: drop it rather than trip over it every pass.
                None => self.remove(&raw).await?,
            }
        }
        Ok(jobs)
    }

    /// When the caller's slot for the job started (µs, Redis time), if it is still held.
    pub(super) async fn slot_start(&self, job: &Job) -> Result<Option<u64>, StoreError> {
        let mut command = redis::cmd("ZSCORE");
        command
            .arg(self.store.tagged(&job.tag, "inflight"))
            .arg(job.id.as_str());
        let score: Option<f64> = self.query("zscore", &command).await?;
        // Scores are whole microseconds written by `admit.lua`.
        Ok(score.map(|score| score as u64))
    }

    /// Takes or renews the lease for `ttl`; false when another replica holds it.
    pub(super) async fn lease(&self, replica: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(self.lease_key())
            .arg("take")
            .arg(replica)
            .arg(millis(ttl));
        let mut connection = self.store.connection();
        let held: i64 = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(held == 1)
    }

    /// Gives the lease up, if this replica holds it.
    pub(super) async fn resign(&self, replica: &str) -> Result<(), StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation.key(self.lease_key()).arg("give").arg(replica).arg(0);
        let mut connection = self.store.connection();
        self.store
            .timed(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }
}

/// `<tag> <app> <id>`: none of the three contains a space (hex; plain segments; a UUID).
pub(super) fn member(job: &Job) -> String {
    format!("{} {} {}", job.tag, job.app, job.id)
}

/// The job a member names, re-checked as if it came from outside.
pub(super) fn parse_member(raw: &str) -> Option<Job> {
    let mut parts = raw.split(' ');
    let (tag, app, id) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Job {
        tag: tag.to_owned(),
        app: AppId::from_segments(&app.split('/').collect::<Vec<_>>()).ok()?,
        id: FalRequestId::parse(id).ok()?,
    })
}
