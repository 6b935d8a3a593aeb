//! `[upstream]` and the egress proxy from the environment, read into `upstream::Settings`.

use url::Url;

use super::{base_url, file, millis, positive, ConfigError, Sources};
use crate::upstream::{EgressProxy, Settings as UpstreamSettings};

pub(super) fn upstream(raw: &file::RawUpstream, sources: &dyn Sources) -> Result<UpstreamSettings, ConfigError> {
    Ok(UpstreamSettings {
        egress_proxy: egress_proxy(sources)?,
        queue_url: fal_url("upstream.queue_url", &raw.queue_url)?,
        run_url: fal_url("upstream.run_url", &raw.run_url)?,
        storage_url: fal_url("upstream.storage_url", &raw.storage_url)?,
        connect_timeout: millis("upstream.connect_timeout_ms", raw.connect_timeout_ms)?,
        first_byte_timeout: millis("upstream.first_byte_timeout_ms", raw.first_byte_timeout_ms)?,
        idle_timeout: millis("upstream.idle_timeout_ms", raw.idle_timeout_ms)?,
        pool_idle_timeout: millis("upstream.pool_idle_timeout_ms", raw.pool_idle_timeout_ms)?,
        max_response_bytes: positive("upstream.max_response_bytes", raw.max_response_bytes)?,
        max_result_bytes: positive("upstream.max_result_bytes", raw.max_result_bytes)?,
        buffer_budget_bytes: budget(raw)?,
        max_stream_lifetime: millis("upstream.max_stream_lifetime_ms", raw.max_stream_lifetime_ms)?,
    })
}

/// A base URL of fal's: fal's key travels with every call to it, so never in clear text beyond
/// this machine (http only on loopback, e.g. the emulator). `public_url`, falgate's own address,
/// may be http (a TLS terminator in front).
pub(super) fn fal_url(key: &str, raw: &str) -> Result<Url, ConfigError> {
    let url = base_url(key, raw)?;
    if url.scheme() == "http" && !is_loopback(&url) {
        return Err(ConfigError(format!(
            "`{key}` must be https: FAL_KEY is sent with every call to it (http is allowed only for a loopback address, such as the emulator): {raw:?}"
        )));
    }
    Ok(url)
}

/// `localhost`, `127.0.0.0/8` or `::1`: traffic that never leaves the machine.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The buffer budget must hold at least one control answer, which cannot be streamed instead.
pub(super) fn budget(raw: &file::RawUpstream) -> Result<usize, ConfigError> {
    if raw.buffer_budget_bytes < raw.max_response_bytes {
        return Err(ConfigError(format!(
            "`upstream.buffer_budget_bytes` ({}) must be at least `upstream.max_response_bytes` ({})",
            raw.buffer_budget_bytes, raw.max_response_bytes
        )));
    }
    Ok(raw.buffer_budget_bytes)
}

/// The first of `HTTPS_PROXY`, `https_proxy`, `ALL_PROXY`, `all_proxy` that is set and not
/// empty; only `http://` proxies (CONNECT tunnels) are supported.
pub(super) fn egress_proxy(sources: &dyn Sources) -> Result<Option<EgressProxy>, ConfigError> {
    let first = |names: &[&'static str]| -> Option<(&'static str, String)> {
        names
            .iter()
            .find_map(|&name| sources.var(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
    };
    let Some((name, url)) = first(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]) else {
        return Ok(None);
    };
    let parsed = Url::parse(&url)
        .ok()
        .filter(|u| u.scheme() == "http" && u.host_str().is_some());
    if parsed.is_none() {
        // The value may hold a password: name the variable, never echo it.
        return Err(ConfigError(format!(
            "`{name}` must be an http:// proxy URL like http://proxy.internal:3128"
        )));
    }
    let no_proxy = first(&["NO_PROXY", "no_proxy"]).map(|(_, v)| v).unwrap_or_default();
    Ok(Some(EgressProxy { url, no_proxy }))
}
