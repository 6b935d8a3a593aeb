//! The per-IP rate of requests that failed authentication.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::answer::rate_state;
use super::plan::Rate;
use super::redis::Mode;
use super::{micros, LimitError, Limiter};

impl Limiter {
    /// The per-IP rate of requests that failed authentication (IPv6 counted per /64).
    pub async fn admit_unauthenticated(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.admit_unauthenticated_at(ip, self.clock.now()).await
    }

    /// [`Self::admit_unauthenticated`] with the in-process clock at `now`.
    pub async fn admit_unauthenticated_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), LimitError> {
        let Some(rate) = self.config.unauthenticated_ip_rate.map(Rate::from) else {
            return Ok(());
        };
        self.unauthenticated(ip, rate, Mode::Consume, now).await
    }

    /// Whether one more failed authentication from `ip` would pass its rate, consuming nothing:
    /// checked before a token is verified, so a refused client costs no signature check.
    pub async fn precheck_unauthenticated(&self, ip: IpAddr) -> Result<(), LimitError> {
        self.precheck_unauthenticated_at(ip, self.clock.now()).await
    }

    /// [`Self::precheck_unauthenticated`] with the in-process clock at `now`.
    pub async fn precheck_unauthenticated_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), LimitError> {
        let Some(rate) = self.config.unauthenticated_ip_rate.map(Rate::from) else {
            return Ok(());
        };
        self.unauthenticated(ip, rate, Mode::CheckOnly, now).await
    }

    async fn unauthenticated(&self, ip: IpAddr, rate: Rate, mode: Mode, now: SystemTime) -> Result<(), LimitError> {
        let ip = ip_key(ip);
        let answer = match &self.redis {
            Some(redis) => match redis.admit_ip(ip, rate, mode).await {
                Ok(answer) => answer,
                Err(err) => {
                    self.errors.fail_open(self.config.on_store_error, "ip_rate", &err)?;
                    return Ok(());
                }
            },
            None => self.memory.admit_ip(ip, rate, micros(now), mode == Mode::Consume),
        };
        answer.map(drop).map_err(|retry_us| LimitError::RateLimited {
            retry_after: Duration::from_micros(retry_us),
            policy: rate_state("unauthenticated", rate, 0, retry_us),
        })
    }
}

/// IPv6 clients are counted per /64: one host usually owns the whole prefix.
pub(super) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        IpAddr::V4(_) => ip,
    }
}
