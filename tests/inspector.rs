//! The Realtime Inspector's pages and assets as the node serves them: content types, no caching,
//! and a Content-Security-Policy that allows only the node's own scripts and WebSockets to the
//! page's host (and its tenant subdomains). The page itself runs in Chromium in
//! `tests/js/test/inspector.test.mjs`.

mod common;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {headers:?}"))
        .to_str()
        .unwrap()
}

/// One CSP directive's sources, e.g. `connect-src` → `['self', ws://...]`.
fn directive(csp: &str, name: &str) -> Vec<String> {
    csp.split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from {csp}"))
        .split(' ')
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn pages_and_assets_are_served_with_their_types_and_security_headers() {
    let app = common::ws::start_seeded(&[]).await;
    let http = reqwest::Client::new();
    let port = app.local_addr().port();
    let host = format!("localhost:{port}");
    for (path, content_type, needle) in [
        (
            "/inspector",
            "text/html; charset=utf-8",
            "<title>Realtime Inspector</title>",
        ),
        (
            "/inspector/new",
            "text/html; charset=utf-8",
            "<title>Realtime Inspector</title>",
        ),
        (
            "/inspector/assets/inspector.js",
            "text/javascript; charset=utf-8",
            "function socketUrl(",
        ),
        (
            "/inspector/assets/inspector.css",
            "text/css; charset=utf-8",
            "ol.events",
        ),
    ] {
        let r = http
            .get(format!("http://{}{path}", app.local_addr()))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        let headers = r.headers().clone();
        assert_eq!(r.status(), StatusCode::OK, "{path}: {headers:?}");
        assert_eq!(header(&headers, "content-type"), content_type, "{path}");
        assert_eq!(header(&headers, "cache-control"), "no-store", "{path}");
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
        assert_eq!(header(&headers, "x-frame-options"), "DENY");
        let csp = header(&headers, "content-security-policy");
        assert_eq!(directive(csp, "default-src"), ["'none'"], "{csp}");
        assert_eq!(directive(csp, "script-src"), ["'self'"], "{csp}");
        assert_eq!(directive(csp, "style-src"), ["'self'"], "{csp}");
        assert_eq!(directive(csp, "frame-ancestors"), ["'none'"], "{csp}");
        assert_eq!(
            directive(csp, "connect-src"),
            [
                "'self'".to_string(),
                format!("ws://localhost:{port}"),
                format!("wss://localhost:{port}"),
                format!("ws://*.localhost:{port}"),
                format!("wss://*.localhost:{port}"),
            ],
            "{csp}"
        );
        let body = r.text().await.unwrap();
        assert!(body.contains(needle), "{path}: {needle} not in the body");
        // Everything the page loads comes from the node: no CDN, no remote import.
        for outside in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
            "from 'http",
            "import(",
            "cdn",
            "unpkg",
        ] {
            assert!(!body.contains(outside), "{path} refers to {outside}");
        }
    }

    // The HTML refers only to the node's own assets, which are the ones served above.
    let html = http
        .get(format!("http://{}/inspector", app.local_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains(r#"src="/inspector/assets/inspector.js""#));
    assert!(html.contains(r#"href="/inspector/assets/inspector.css""#));
    assert!(
        !html.contains("<script>"),
        "no inline script (the CSP forbids it)"
    );

    // HEAD works, a Host that is not a plain name gets connect-src 'self' only, and unknown
    // paths under /inspector are the API's JSON 404.
    let r = http
        .head(format!("http://{}/inspector", app.local_addr()))
        .header("host", "[::1]:4000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = header(r.headers(), "content-security-policy");
    assert_eq!(directive(csp, "connect-src"), ["'self'"], "{csp}");
    let r = http
        .get(format!("http://{}/inspector/nope", app.local_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
