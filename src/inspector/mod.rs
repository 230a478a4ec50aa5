//! The Realtime Inspector: a debugging web page served by the node itself at `/inspector`.
//!
//! The page (HTML, CSS and a small Phoenix v1/v2 client in plain JavaScript) is compiled into
//! the binary with `include_str!`, so nothing is fetched from a CDN at run time. It talks to the
//! node only through the public WebSocket endpoint (`/realtime/v1/websocket`), exactly as any
//! client does; it has no server-side API of its own and needs no state.
//!
//! Every response carries `Cache-Control: no-store`, `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY` and a Content-Security-Policy that
//! allows scripts and styles from the node only, no inline code, and WebSocket connections only
//! to the page's own host, its subdomains (`<tenant>.<host>`) and its sibling tenant hosts (see
//! [`content_security_policy`]). The page reads its settings from the URL *fragment*, which
//! browsers never send to the server, so a token given in a link does not reach any log.

use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page (the same document for `/inspector` and `/inspector/new`).
const INDEX_HTML: &str = include_str!("index.html");
/// The page's client: the Phoenix protocol, the forms and the panels.
const INSPECTOR_JS: &str = include_str!("inspector.js");
/// The page's styles.
const INSPECTOR_CSS: &str = include_str!("inspector.css");

/// Path of the page.
pub const PATH: &str = "/inspector";

/// Returns the Inspector's routes: `/inspector`, `/inspector/new` and its two assets. The router
/// has no fallback of its own, so it merges into the API router (whose fallback answers 404).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PATH, get(page))
        .route("/inspector/new", get(page))
        .route("/inspector/assets/inspector.js", get(script))
        .route("/inspector/assets/inspector.css", get(styles))
}

async fn page(headers: HeaderMap) -> Response {
    respond(&headers, "text/html; charset=utf-8", INDEX_HTML)
}

async fn script(headers: HeaderMap) -> Response {
    respond(&headers, "text/javascript; charset=utf-8", INSPECTOR_JS)
}

async fn styles(headers: HeaderMap) -> Response {
    respond(&headers, "text/css; charset=utf-8", INSPECTOR_CSS)
}

fn respond(headers: &HeaderMap, content_type: &'static str, body: &'static str) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let csp = content_security_policy(host);
    let csp = HeaderValue::from_str(&csp).unwrap_or_else(|_| {
        // Unreachable: the host part is checked to be plain ASCII; fall back to the strictest.
        HeaderValue::from_static(BASE_POLICY_SELF_ONLY)
    });
    let statics: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    let mut response = body.into_response();
    let out = response.headers_mut();
    for (name, value) in statics {
        out.insert(name, HeaderValue::from_static(value));
    }
    out.insert(header::CONTENT_SECURITY_POLICY, csp);
    response
}

/// The policy used when the `Host` header is missing or not a plain host name.
const BASE_POLICY_SELF_ONLY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Builds the Content-Security-Policy for a page requested with this `Host` header.
///
/// Only same-origin scripts, styles and images (no inline code, no `eval`), no forms posted
/// anywhere, no framing. `connect-src` allows `'self'` and WebSockets (`ws:` and `wss:`, same
/// port) to:
/// * the host itself;
/// * its subdomains, `*.<host>`, so a page opened at `localhost:4000` may dial
///   `<tenant>.localhost:4000` (the tenant is the Host's first label, PROTOCOL.md 1.3);
/// * for a host of three labels or more (or `<x>.localhost`), the siblings `*.<parent>`, so a
///   page opened at one tenant's host (`a.realtime.example.com`) may inspect another tenant of
///   the same deployment (`b.realtime.example.com`).
///
/// IP literals get no wildcard. A Host that is not a plain name (characters other than ASCII
/// letters, digits, `-`, `.` and a numeric `:port`) gets `connect-src 'self'` only.
pub fn content_security_policy(host: Option<&str>) -> String {
    let Some(host) = host.and_then(HostName::parse) else {
        return BASE_POLICY_SELF_ONLY.to_string();
    };
    let mut sources = vec!["'self'".to_string()];
    let mut allow = |name: &str| {
        for scheme in ["ws", "wss"] {
            sources.push(format!("{scheme}://{name}{}", host.port));
        }
    };
    allow(host.name);
    if !host.is_ip {
        allow(&format!("*.{}", host.name));
        let labels: Vec<&str> = host.name.split('.').collect();
        let parent = labels[1..].join(".");
        if labels.len() >= 3 || (labels.len() == 2 && labels[1] == "localhost") {
            allow(&format!("*.{parent}"));
        }
    }
    BASE_POLICY_SELF_ONLY.replace(
        "connect-src 'self'",
        &format!("connect-src {}", sources.join(" ")),
    )
}

/// A `Host` header split into a plain name and its `:port` suffix (kept with the colon).
struct HostName<'a> {
    name: &'a str,
    port: &'a str,
    is_ip: bool,
}

impl<'a> HostName<'a> {
    fn parse(host: &'a str) -> Option<HostName<'a>> {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => {
                if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (name, &host[name.len()..])
            }
            None => (host, ""),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let plain = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(plain) {
            return None;
        }
        let is_ip = name.parse::<std::net::Ipv4Addr>().is_ok();
        Some(HostName { name, port, is_ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_src(host: Option<&str>) -> Vec<String> {
        let csp = content_security_policy(host);
        let directive = csp
            .split(';')
            .map(str::trim)
            .find_map(|d| d.strip_prefix("connect-src "))
            .expect("connect-src");
        directive.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn single_label_host_allows_itself_and_tenant_subdomains() {
        assert_eq!(
            connect_src(Some("localhost:4000")),
            [
                "'self'",
                "ws://localhost:4000",
                "wss://localhost:4000",
                "ws://*.localhost:4000",
                "wss://*.localhost:4000",
            ]
        );
    }

    #[test]
    fn tenant_host_allows_sibling_tenants_of_the_deployment() {
        let src = connect_src(Some("a.realtime.example.com"));
        assert!(src.contains(&"wss://a.realtime.example.com".to_string()));
        assert!(src.contains(&"wss://*.realtime.example.com".to_string()));
        assert!(!src.iter().any(|s| s.contains("*.example.com")), "{src:?}");
        let src = connect_src(Some("dev.localhost:4000"));
        assert!(
            src.contains(&"ws://*.localhost:4000".to_string()),
            "{src:?}"
        );
        // Two labels of a public domain: no `*.com`.
        let src = connect_src(Some("example.com"));
        assert!(!src.iter().any(|s| s.ends_with("*.com")), "{src:?}");
    }

    #[test]
    fn ip_literals_get_no_wildcard() {
        assert_eq!(
            connect_src(Some("127.0.0.1:4000")),
            ["'self'", "ws://127.0.0.1:4000", "wss://127.0.0.1:4000"]
        );
    }

    #[test]
    fn odd_hosts_get_self_only() {
        for host in [
            None,
            Some(""),
            Some("[::1]:4000"),
            Some("evil.com; script-src *"),
            Some("a b"),
            Some("host:"),
            Some("host:80x"),
            Some("a..b"),
            Some("ünï.example"),
        ] {
            assert_eq!(connect_src(host), ["'self'"], "{host:?}");
        }
    }

    #[test]
    fn policy_forbids_inline_code_framing_and_forms() {
        let csp = content_security_policy(Some("localhost"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} missing from {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
    }
}
