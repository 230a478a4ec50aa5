//! The fallback tenant applies only to a Host that cannot name a tenant (an IP literal or a
//! single label); a multi-label Host whose first label names no tenant is refused, at the
//! WebSocket handshake and at the HTTP broadcast edge alike.

mod common;

use serde_json::json;

use common::ws::{Ws, client_token, try_connect};
use realtime::app::RunningApp;

fn refusal(result: Result<Ws, tokio_tungstenite::tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the socket opened"),
    }
}

async fn broadcast_status(app: &RunningApp, host: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/broadcast", app.local_addr()))
        .header("host", host)
        .header(
            "authorization",
            format!("Bearer {}", client_token(common::API_SECRET, 60)),
        )
        .json(&json!({"messages": [{"topic": "room", "event": "e", "payload": {}}]}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn only_hosts_that_cannot_name_a_tenant_fall_back() {
    let app = common::ws::start_seeded(&[]).await;
    let port = app.local_addr().port();
    let query = format!(
        "apikey={}&vsn=2.0.0",
        client_token(common::API_SECRET, 3600)
    );

    let fallback_hosts = [
        format!("localhost:{port}"),
        "localhost".to_string(),
        "realtime".to_string(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ];
    for host in &fallback_hosts {
        assert!(
            try_connect(&app, host, &query).await.is_ok(),
            "{host} reaches the fallback tenant"
        );
        assert_eq!(broadcast_status(&app, host).await.0, 202, "{host}");
    }
    // The seeded tenant by name, as before.
    let named = format!("realtime-dev.localhost:{port}");
    assert!(try_connect(&app, &named, &query).await.is_ok());
    assert_eq!(broadcast_status(&app, &named).await.0, 202);

    for host in [
        format!("no-such.localhost:{port}"),
        "typo.example.com".to_string(),
    ] {
        assert_eq!(
            refusal(try_connect(&app, &host, &query).await),
            (404, r#"{"error":"Tenant not found"}"#.into()),
            "{host}"
        );
        assert_eq!(
            broadcast_status(&app, &host).await,
            (401, r#"{"message":"Tenant not found in database"}"#.into()),
            "{host}"
        );
    }
    app.shutdown().await.unwrap();
}
