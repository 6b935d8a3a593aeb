//! The Redis backend: each admission is one `EVALSHA` of `admit.lua` (one round trip), timed by
//! Redis `TIME`. Keys: `<prefix>:{<caller>}:rate:<class>`, `…:quota`, `…:inflight` share the
//! caller's hash tag; `<prefix>:{<endpoint>}:ep-rate` and `<prefix>:{<ip>}:ip-rate` have their own.

use std::net::IpAddr;

use redis::Script;

use super::plan::{Gauge, Granted, Outcome, Plan, QuotaUse, Rate, Refusal};
use crate::redis::{RedisStore, StoreError};

/// The limits scripts bound to one Redis.
pub(crate) struct RedisLimits {
    store: RedisStore,
    admit: Script,
    release: Script,
}

impl RedisLimits {
    pub(crate) fn new(store: RedisStore) -> Self {
        Self {
            store,
            admit: Script::new(include_str!("admit.lua")),
            release: Script::new(include_str!("release.lua")),
        }
    }

    pub(crate) fn store(&self) -> &RedisStore {
        &self.store
    }

    /// Checks and consumes every limit of `plan` in one atomic script.
    pub(crate) async fn admit(&self, plan: &Plan<'_>) -> Result<Outcome, StoreError> {
        let rate_key = self.store.tagged(plan.tag, plan.class.rate_key());
        let endpoint_key = plan.endpoint.map(|(name, _)| self.store.key(name, "ep-rate"));
        let mut invocation = self.admit.prepare_invoke();
        invocation
            .key(&rate_key)
            .key(endpoint_key.as_deref().unwrap_or(&rate_key))
            .key(self.store.tagged(plan.tag, "quota"))
            .key(self.store.tagged(plan.tag, "inflight"));
        let rate = plan.rate.unwrap_or(Rate {
            emission_us: 0,
            burst: 0,
        });
        let ep_rate = plan.endpoint.map_or(
            Rate {
                emission_us: 0,
                burst: 0,
            },
            |(_, rate)| rate,
        );
        invocation.arg(rate.emission_us).arg(rate.burst);
        invocation.arg(ep_rate.emission_us).arg(ep_rate.burst);
        match plan.quota {
            Some(quota) => invocation
                .arg("1")
                .arg(quota.requests.map_or(-1, clamp))
                .arg(quota.credits.map_or(-1, clamp))
                .arg(quota.cost)
                .arg(quota.day_offset_us),
            None => invocation.arg("0").arg(-1).arg(-1).arg(0).arg(0),
        };
        match plan.inflight {
            Some(inflight) => invocation
                .arg(inflight.max)
                .arg(inflight.ttl_us)
                .arg(inflight.reservation),
            None => invocation.arg(-1).arg(0).arg(""),
        };
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        parse_admit(&reply)
    }

    /// One GCRA step on an unauthenticated client's key, through the same script.
    pub(crate) async fn admit_ip(&self, ip: IpAddr, rate: Rate) -> Result<Result<Gauge, u64>, StoreError> {
        let key = self.store.key(&ip.to_string(), "ip-rate");
        let mut invocation = self.admit.prepare_invoke();
        invocation.key(&key).key(&key).key(&key).key(&key);
        invocation.arg(rate.emission_us).arg(rate.burst).arg(0).arg(0);
        invocation.arg("0").arg(-1).arg(-1).arg(0).arg(0).arg(-1).arg(0).arg("");
        let mut connection = self.store.connection();
        let reply: Vec<i64> = self.store.timed(invocation.invoke_async(&mut connection)).await?;
        match parse_admit(&reply)? {
            Outcome::Admitted(Granted { rate: Some(gauge), .. }) => Ok(Ok(gauge)),
            Outcome::Refused(Refusal::Rate { retry_us }) => Ok(Err(retry_us)),
            other => Err(StoreError::Protocol(format!("ip rate answered {other:?}"))),
        }
    }

    /// Frees or renames slot `from` and refunds one request and `cost` credits of `day`.
    pub(crate) async fn release(
        &self,
        tag: &str,
        from: &str,
        to: Option<&str>,
        refund: Option<(i64, u64)>,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation
            .key(self.store.tagged(tag, "inflight"))
            .key(self.store.tagged(tag, "quota"))
            .arg(from)
            .arg(to.unwrap_or(""));
        match refund {
            Some((day, cost)) => invocation.arg(day).arg(cost),
            None => invocation.arg(-1).arg(0),
        };
        let mut connection = self.store.connection();
        self.store
            .timed(invocation.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }
}

fn clamp(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn parse_admit(reply: &[i64]) -> Result<Outcome, StoreError> {
    let unsigned = |i: usize| reply.get(i).and_then(|v| u64::try_from(*v).ok());
    let gauge = |i: usize| {
        Some(Gauge {
            remaining: unsigned(i)?,
            reset_us: unsigned(i + 1)?,
        })
    };
    let outcome = match (reply.first(), unsigned(1)) {
        (Some(0), _) if reply.len() == 10 => Outcome::Admitted(Granted {
            rate: gauge(1),
            endpoint: gauge(3),
            quota: reply[5].ge(&0).then(|| QuotaUse {
                day: reply[5],
                requests: unsigned(6).unwrap_or(0),
                credits: unsigned(7).unwrap_or(0),
                reset_us: unsigned(8).unwrap_or(0),
            }),
            inflight: unsigned(9),
        }),
        (Some(1), Some(retry_us)) => Outcome::Refused(Refusal::Rate { retry_us }),
        (Some(2), Some(retry_us)) => Outcome::Refused(Refusal::Endpoint { retry_us }),
        (Some(3), Some(reset_us)) => Outcome::Refused(Refusal::Requests { reset_us }),
        (Some(4), Some(reset_us)) => Outcome::Refused(Refusal::Credits { reset_us }),
        (Some(5), Some(count)) => Outcome::Refused(Refusal::Inflight { count }),
        _ => return Err(StoreError::Protocol(format!("admit script answered {reply:?}"))),
    };
    Ok(outcome)
}
