//! What stands between a web page and `serve` (with or without tokens): a browser lets any
//! page send "simple" requests — `text/plain`, form posts, no body — to any address
//! without asking first, and a page on a name its author controls can re-point that name
//! at 127.0.0.1 (DNS rebinding) and then even read the answers. So, before any handler:
//!
//! - **Host**: the `Host` header (and an absolute request target's authority) must name
//!   this service: the listen address, `localhost:PORT` when listening on loopback or on
//!   all addresses, any IP address with the listen port when listening on all addresses
//!   (an IP literal cannot be re-pointed), or a name given with `--allowed-host`. Else
//!   421. `GET /healthz` and `GET /readyz` are exempt: kubelets and load balancers probe
//!   with addresses of their own, and these tell nothing and change nothing.
//! - **Origin**: a changing request (any method but GET, HEAD, OPTIONS) that a browser
//!   marks as coming from another origin (`Origin` not this host, `Origin: null`, or
//!   `Sec-Fetch-Site` other than `same-origin`/`none`) is 403.
//! - **Content type**: a POST, and any changing request with a body, must send
//!   `Content-Type: application/json` (or `application/*+json`), even with an empty body:
//!   no page can send that without a CORS preflight, which `serve` never grants; else 415.
//!   (A DELETE without a body needs no type: browsers preflight DELETE anyway.) The
//!   console's sign-in form (`POST /sign-in`) is the one exception, and it is
//!   same-origin-checked like the rest.
//!
//! **Invariant:** no request that changes anything reaches a handler unless its `Host`
//! names this service and its body is declared JSON.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The names a request may reach this service by.
#[derive(Debug)]
pub struct Hosts {
    listen: SocketAddr,
    /// `--allowed-host` entries: lowercase name, and the port (`None`: any).
    named: Vec<(String, Option<u16>)>,
}

impl Hosts {
    /// From the address actually bound and the `--allowed-host` values.
    pub fn new(listen: SocketAddr, allowed: &[String]) -> Result<Hosts> {
        let mut named = Vec::new();
        for a in allowed {
            let Some((host, port)) = split_authority(a) else {
                bail!("--allowed-host {a:?}: expected NAME or NAME:PORT (e.g. pgplane.example.com or pgplane:8080), no scheme or path");
            };
            if !valid_name(&host) {
                bail!("--allowed-host {a:?}: {host:?} is not a host name or IP address");
            }
            named.push((host, port));
        }
        Ok(Hosts { listen, named })
    }

    /// Whether `host` (lowercase) with `port` names this service.
    fn allows(&self, host: &str, port: u16) -> bool {
        if self.named.iter().any(|(n, p)| n == host && p.is_none_or(|p| p == port)) {
            return true;
        }
        if port != self.listen.port() {
            return false;
        }
        let ip = self.listen.ip();
        let literal = parse_ip(host);
        if literal == Some(ip) {
            return true;
        }
        if ip.is_unspecified() {
            return host == "localhost" || literal.is_some();
        }
        ip.is_loopback() && host == "localhost"
    }

    /// Whether `origin` (`scheme://host[:port]`) is a page of this service, as the
    /// request's `host` names it (or a configured name: a TLS proxy in front).
    fn same_origin(&self, origin: &str, host: Option<&(String, u16)>) -> bool {
        let Some((scheme, rest)) = origin.split_once("://") else { return false };
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" => 80,
            "https" => 443,
            _ => return false,
        };
        let Some((name, port)) = split_authority(rest) else { return false };
        let port = port.unwrap_or(default_port);
        host.is_some_and(|(h, p)| *h == name && *p == port)
            || self.named.iter().any(|(n, p)| *n == name && p.is_none_or(|p| p == port))
    }
}

/// `host[:port]` → (lowercase host, port); IPv6 literals in brackets. `None` when it is
/// not an authority (empty, a path, a user part, a bad port).
fn split_authority(s: &str) -> Option<(String, Option<u16>)> {
    if s.is_empty() || s.contains(['/', '@', '?', '#', ' ']) || s.chars().any(|c| c.is_control()) {
        return None;
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{inner}]"), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// An IP literal (IPv6 in brackets).
fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

fn valid_name(host: &str) -> bool {
    parse_ip(host).is_some()
        || (host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            }))
}

/// The request's `Host`, as (lowercase host, port; 80 when absent), or why it is refused.
fn request_host(hosts: &Hosts, req: &Request) -> Result<(String, u16), String> {
    let values: Vec<_> = req.headers().get_all(header::HOST).iter().collect();
    if values.len() > 1 {
        return Err("the request has several Host headers".into());
    }
    let header = match values.first() {
        Some(v) => Some(v.to_str().map_err(|_| "the Host header is not text".to_string())?),
        None => None,
    };
    // An absolute request target (`GET http://name/…`) names the host too.
    let target = req.uri().authority().map(|a| a.as_str());
    let mut found = None;
    for given in [target, header].into_iter().flatten() {
        let Some((host, port)) = split_authority(given) else {
            return Err(format!("{given:?} is not a host"));
        };
        let port = port.unwrap_or(80);
        if !hosts.allows(&host, port) {
            return Err(format!("this service is not reached by the name {given:?}"));
        }
        found = Some((host, port));
    }
    found.ok_or_else(|| "the request names no Host".to_string())
}

fn misdirected(hosts: &Hosts, why: String) -> Response {
    let names: Vec<String> =
        hosts.named.iter().map(|(n, p)| p.map(|p| format!("{n}:{p}")).unwrap_or_else(|| n.clone())).collect();
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "misdirected",
        format!(
            "{why}: use the listen address {}{}{}, or start serve with --allowed-host NAME[:PORT] for a name it is reached by (a proxy's)",
            hosts.listen,
            if hosts.listen.ip().is_loopback() || hosts.listen.ip().is_unspecified() {
                format!(" or localhost:{}", hosts.listen.port())
            } else {
                String::new()
            },
            if names.is_empty() { String::new() } else { format!(" or {}", names.join(", ")) }
        ),
    )
    .into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json"
        || essence.split_once('/').is_some_and(|(kind, sub)| kind == "application" && sub.ends_with("+json"))
}

/// Checks every request as the module's documentation says, before routing.
pub async fn guard(State(hosts): State<Arc<Hosts>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let probe = safe && (path == "/healthz" || path == "/readyz");
    let host = match request_host(&hosts, &req) {
        Ok(h) => Some(h),
        Err(_) if probe => None,
        Err(why) => return misdirected(&hosts, why),
    };
    if safe {
        return next.run(req).await;
    }
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        if !hosts.same_origin(origin, host.as_ref()) {
            return ApiError::forbidden(format!(
                "cross-site request refused: a page of {origin:?} may not change anything here (Origin is not this service)"
            ))
            .into_response();
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return ApiError::forbidden(format!(
                "cross-site request refused: the browser says it comes from a {site} page"
            ))
            .into_response();
        }
    }
    // A browser sends other methods (DELETE) across sites only after a preflight that is
    // never granted; POST it sends freely, with a body or without.
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|n| n.trim().parse::<u64>().ok()) != Some(0));
    let sign_in = req.method() == Method::POST && path == "/sign-in";
    if (req.method() == Method::POST || has_body) && !sign_in && !is_json(headers) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send `Content-Type: application/json` (also with an empty body): requests that change things are JSON only, \
             so that no web page can send them",
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(listen: &str, allowed: &[&str]) -> Hosts {
        Hosts::new(listen.parse().expect("addr"), &allowed.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("hosts")
    }

    fn allows(h: &Hosts, given: &str) -> bool {
        let (host, port) = split_authority(given).expect(given);
        h.allows(&host, port.unwrap_or(80))
    }

    #[test]
    fn hosts_by_listen_address_and_configured_names() {
        let lo = hosts("127.0.0.1:7070", &["pgplane.example.com", "portal:8443"]);
        for ok in [
            "127.0.0.1:7070",
            "localhost:7070",
            "LOCALHOST:7070",
            "pgplane.example.com",
            "pgplane.example.com:9",
            "portal:8443",
        ] {
            assert!(allows(&lo, ok), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "127.0.0.1:7071",
            "localhost",
            "portal",
            "portal:80",
            "10.0.0.1:7070",
            "[::1]:7070",
            "127.0.0.1.nip.io:7070",
        ] {
            assert!(!allows(&lo, bad), "{bad}");
        }
        let any = hosts("0.0.0.0:7070", &[]);
        for ok in ["10.1.2.3:7070", "[fd00::1]:7070", "localhost:7070", "127.0.0.1:7070"] {
            assert!(allows(&any, ok), "{ok}");
        }
        for bad in ["10.1.2.3:80", "svc.cluster.local:7070", "evil.example:7070"] {
            assert!(!allows(&any, bad), "{bad}");
        }
        let v6 = hosts("[::1]:80", &[]);
        assert!(allows(&v6, "[::1]") && allows(&v6, "localhost") && !allows(&v6, "127.0.0.1"));
        let fixed = hosts("10.0.0.5:7070", &[]);
        assert!(
            allows(&fixed, "10.0.0.5:7070") && !allows(&fixed, "localhost:7070") && !allows(&fixed, "10.0.0.6:7070")
        );
        for bad in ["", "http://x", "x/y", "a b", "x:", "x:port", "user@x", "-x.example", "x..y"] {
            assert!(Hosts::new("127.0.0.1:1".parse().expect("addr"), &[bad.to_string()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_are_this_host_or_a_configured_name() {
        let h = hosts("127.0.0.1:7070", &["pgplane.example.com"]);
        let this = Some(("127.0.0.1".to_string(), 7070));
        assert!(h.same_origin("http://127.0.0.1:7070", this.as_ref()));
        assert!(h.same_origin("https://pgplane.example.com", this.as_ref()));
        for bad in ["null", "http://evil.example", "http://127.0.0.1:7071", "http://localhost:7070", "file://", "x"] {
            assert!(!h.same_origin(bad, this.as_ref()), "{bad}");
        }
        assert!(!h.same_origin("http://127.0.0.1:7070", None));
    }

    #[test]
    fn json_content_types() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().expect("value"));
            is_json(&h)
        };
        assert!(
            with("application/json") && with("Application/JSON; charset=utf-8") && with("application/merge-patch+json")
        );
        assert!(
            !with("text/plain")
                && !with("application/x-www-form-urlencoded")
                && !with("multipart/form-data; boundary=x")
        );
        assert!(!with("text/json+plain") && !is_json(&HeaderMap::new()));
    }
}
