//! The client IP for per-IP limits. Forwarding headers are believed only from a peer inside
//! `trusted_proxies`; then the client is the rightmost hop that is not itself a trusted proxy,
//! so hops a client prepends are never used (SECURITY-CASES D54). `X-Forwarded-For` wins over
//! `Forwarded` when both are present: deploy behind a balancer that appends to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use http::HeaderMap;
use ipnet::IpNet;

/// The address that per-IP limits count: the socket peer unless it is a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted_peer(peer, trusted) {
        return peer_ip;
    }
    let hops = match headers.contains_key("x-forwarded-for") {
        true => list(headers, "x-forwarded-for", Some),
        false => list(headers, "forwarded", forwarded_for),
    };
    let mut client = peer_ip;
    for hop in hops.iter().rev() {
        // An unparseable hop ends the walk: whatever is left of it was not written by our proxies.
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// Logs once per process that a peer outside `trusted_proxies` sent `X-Forwarded-For` or
/// `Forwarded`: falgate looks deployed behind a proxy it does not trust, so every client of that
/// proxy shares one failed-authentication bucket (issue 20). Called on the failed-auth path only.
pub fn note_untrusted_forwarder(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let forwarded = headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
    if !forwarded || WARNED.load(Ordering::Relaxed) || is_trusted_peer(peer, trusted) {
        return;
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            peer = %canonical(peer.ip()),
            "a request with X-Forwarded-For or Forwarded came from a peer outside limits.trusted_proxies: if it is your load balancer or ingress, every client it forwards shares one failed-authentication bucket; add its addresses to limits.trusted_proxies"
        );
    }
}

/// Whether the socket peer is one of `trusted_proxies`, whose forwarding headers are believed.
pub fn is_trusted_peer(peer: SocketAddr, trusted: &[IpNet]) -> bool {
    let peer_ip = canonical(peer.ip());
    trusted.iter().any(|net| net.contains(&peer_ip))
}

/// Every comma-separated element of every `name` header, in order, mapped by `pick`.
fn list<'a>(headers: &'a HeaderMap, name: &str, pick: fn(&'a str) -> Option<&'a str>) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .filter_map(|item| pick(item.trim()))
        .collect()
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239), or `""` if it has none.
fn forwarded_for(element: &str) -> Option<&str> {
    let value = element
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("for"))
        .map_or("", |(_, value)| value);
    Some(value)
}

/// `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `"[2001:db8::1]:4711"`; anything else is `None`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    let host = match hop.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None if hop.matches(':').count() == 1 => hop.split_once(':')?.0,
        None => hop,
    };
    host.parse().ok().map(canonical)
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn lb() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn d54_spoofed_forwarding_headers_from_an_untrusted_peer_count_as_the_peer() {
        let peer: SocketAddr = "203.0.113.9:5555".parse().unwrap();
        for (name, value) in [
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
            ("cf-connecting-ip", "1.2.3.4"),
        ] {
            let ip = client_ip(peer, &headers(&[(name, value)]), &lb());
            assert_eq!(ip.to_string(), "203.0.113.9", "{name}");
        }
    }

    #[test]
    fn d54_behind_the_trusted_balancer_prepended_hops_are_ignored() {
        let peer: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let map = headers(&[
            ("x-forwarded-for", "6.6.6.6, 7.7.7.7"),
            ("x-forwarded-for", "198.51.100.7, 10.0.0.3"),
        ]);
        assert_eq!(client_ip(peer, &map, &lb()).to_string(), "198.51.100.7");
    }

    #[test]
    fn forwarded_for_is_read_with_ports_and_ipv6_brackets() {
        let peer: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let map = headers(&[("forwarded", r#"for=6.6.6.6, for="[2001:db8::1]:4711";proto=https"#)]);
        assert_eq!(client_ip(peer, &map, &lb()).to_string(), "2001:db8::1");
    }

    #[test]
    fn a_garbage_hop_stops_the_walk_at_the_last_trusted_address() {
        let peer: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let map = headers(&[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(client_ip(peer, &map, &lb()).to_string(), "10.0.0.2");
    }
}
