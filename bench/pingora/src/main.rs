//! pingora-relay: the yardstick of issue 23 ("≤ 0.6× the pingora relay" in CPU per request).
//!
//! A bare Cloudflare pingora reverse proxy that does the least a fal relay must do: it forwards
//! every request unchanged to one plain-HTTP upstream over pooled keep-alive connections and adds
//! `authorization: Key $FAL_KEY`. No auth, no checks, no per-request logging, 2 worker threads.
//! bench/run builds and starts it beside nginx so falgate's CPU per request has a Rust baseline.
//!
//! Usage: `pingora-relay LISTEN_PORT UPSTREAM_PORT` with `FAL_KEY` in the environment; it listens
//! on 127.0.0.1:LISTEN_PORT (HTTP/1.1) and relays to 127.0.0.1:UPSTREAM_PORT. SIGTERM and SIGINT
//! stop it at once (no grace period: it is a bench target, not a service).

use std::net::{Ipv4Addr, SocketAddr};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

/// The relay: one upstream peer (its connection pool is keyed by the peer) and the key header.
struct Relay {
    peer: HttpPeer,
    authorization: HeaderValue,
}

#[async_trait]
impl ProxyHttp for Relay {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_request.insert_header("authorization", self.authorization.clone())
    }
}

fn port(arg: Option<String>, what: &str) -> u16 {
    arg.and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: pingora-relay LISTEN_PORT UPSTREAM_PORT (FAL_KEY in the environment); bad {what}");
        std::process::exit(2)
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = port(args.next(), "LISTEN_PORT");
    let upstream = port(args.next(), "UPSTREAM_PORT");
    let key = std::env::var("FAL_KEY").unwrap_or_else(|_| {
        eprintln!("pingora-relay: FAL_KEY is not set");
        std::process::exit(2)
    });
    let authorization = HeaderValue::from_str(&format!("Key {key}")).unwrap_or_else(|_| {
        eprintln!("pingora-relay: FAL_KEY is not a valid header value");
        std::process::exit(2)
    });

    let conf = ServerConf {
        threads: 2, // one per core of the bench machine
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let upstream_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream));
    let relay = Relay {
        peer: HttpPeer::new(upstream_addr, false, String::new()),
        authorization,
    };
    let mut service = http_proxy_service(&server.configuration, relay);
    service.add_tcp(&format!("127.0.0.1:{listen}"));
    server.add_service(service);
    server.run_forever();
}
