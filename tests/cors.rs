//! CORS of the HTTP broadcast endpoints as a browser sees it: the preflight answer itself, since
//! the Fetch standard never lets `Access-Control-Allow-Headers: *` cover `Authorization` (which
//! realtime-js sends on `httpSend()`), while some browsers let it through anyway.

mod common;

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::json;

const TENANT: &str = common::ws::SELF_HOST;
const ORIGIN: &str = "http://app.example:3000";

/// A header's comma-separated values, trimmed and lowercased.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The preflight realtime-js (plus supabase-js headers and an application's own global header)
/// triggers names every requested header, `Authorization` explicitly, and allows POST from the
/// page's origin, on every broadcast path.
#[tokio::test]
async fn preflight_names_authorization_and_every_requested_header() {
    let app = common::ws::start_seeded(&[]).await;
    let http = reqwest::Client::new();
    let requested = [
        "authorization",
        "apikey",
        "content-type",
        "x-client-info",
        "x-my-app-header",
    ];
    for path in [
        "/api/broadcast",
        "/api/broadcast/room/events/e",
        "/realtime/v1/api/broadcast",
        "/realtime/v1/api/broadcast/room/events/e",
    ] {
        let r = http
            .request(
                Method::OPTIONS,
                format!("http://{}{path}", app.local_addr()),
            )
            .header("host", format!("{TENANT}.localhost"))
            .header("origin", ORIGIN)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", requested.join(", "))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let headers = r.headers();
        let origin = list(headers, "access-control-allow-origin");
        assert!(
            origin == ["*"] || origin == [ORIGIN],
            "{path}: allow-origin {origin:?}"
        );
        let methods = list(headers, "access-control-allow-methods");
        assert!(
            methods.iter().any(|m| m == "post"),
            "{path}: allow-methods {methods:?}"
        );
        let allowed = list(headers, "access-control-allow-headers");
        assert!(
            !allowed.iter().any(|h| h == "*"),
            "{path}: `*` never covers Authorization: {allowed:?}"
        );
        for header in requested {
            assert!(
                allowed.iter().any(|h| h == header),
                "{path}: allow-headers {allowed:?} lacks {header}"
            );
        }
        // The answer depends on the request headers: caches must key on them.
        let vary = list(headers, "vary");
        assert!(
            vary.iter().any(|v| v == "access-control-request-headers"),
            "{path}: vary {vary:?}"
        );
    }

    // The request that follows the preflight is accepted and readable cross-origin.
    let token = common::ws::client_token(common::API_SECRET, 60);
    let r = http
        .post(format!(
            "http://{}/realtime/v1/api/broadcast/room/events/e",
            app.local_addr()
        ))
        .header("host", format!("{TENANT}.localhost"))
        .header("origin", ORIGIN)
        .header("authorization", format!("Bearer {token}"))
        .header("x-client-info", "supabase-js/2.119.1")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let origin = list(r.headers(), "access-control-allow-origin");
    assert!(
        origin == ["*"] || origin == [ORIGIN],
        "allow-origin {origin:?}"
    );
    app.shutdown().await.unwrap();
}
