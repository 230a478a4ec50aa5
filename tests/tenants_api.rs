//! The tenants management API and health endpoints over real HTTP against a real Postgres.

mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};

use realtime::tenants::TenantChange;
use realtime::types::TenantId;

struct Api {
    app: realtime::app::RunningApp,
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn start(extra: &[(&str, &str)]) -> Api {
        let (app, _db) = common::start_app(extra).await;
        let base = format!("http://{}", app.local_addr());
        Api {
            app,
            http: reqwest::Client::new(),
            base,
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(common::api_token())
    }

    async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path).send().await.unwrap()
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test]
async fn bad_or_missing_tokens_get_403_with_empty_body() {
    let api = Api::start(&[("API_TOKEN_BLOCKLIST", "blocked-token")]).await;
    let url = format!("{}/api/tenants", api.base);
    let expired = common::sign(&json!({"exp": 1_000_000}), common::API_SECRET);
    let wrong_key = common::sign(&json!({}), "not-the-api-secret-not-the-api-secret");
    let good = common::api_token();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no header", vec![]),
        ("lowercase scheme", vec![format!("bearer {good}")]),
        ("wrong key", vec![format!("Bearer {wrong_key}")]),
        ("expired", vec![format!("Bearer {expired}")]),
        ("blocklisted", vec!["Bearer blocked-token".into()]),
        ("garbage", vec!["Bearer a.b.c".into()]),
        (
            "two headers",
            vec![format!("Bearer {good}"), format!("Bearer {good}")],
        ),
    ];
    for (case, headers) in cases {
        for prefix in ["", "/realtime/v1"] {
            let mut req = api.http.get(format!("{}{prefix}/api/tenants", api.base));
            for value in &headers {
                req = req.header("authorization", value);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{case} {prefix}");
            assert!(res.bytes().await.unwrap().is_empty(), "{case}: empty body");
        }
    }
    // Auth is checked before the body is read.
    let res = api.http.post(&url).body("{not json").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let ok = api.get("/api/tenants").await;
    assert_eq!(ok.status(), StatusCode::OK);
    api.app.shutdown().await.unwrap();
}

#[tokio::test]
async fn upsert_show_list_delete_round_trip() {
    let api = Api::start(&[]).await;
    let mut events = api.app.tenants().subscribe();

    let res = api.post("/api/tenants", &common::tenant_body("t1")).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["location"], "/api/tenants/t1");
    let created = json_of(res).await["data"].clone();
    let mut keys: Vec<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "client_presence_window_ms",
            "extensions",
            "external_id",
            "id",
            "inserted_at",
            "max_channels_per_client",
            "max_client_presence_events_per_window",
            "max_concurrent_users",
            "max_events_per_second",
            "max_joins_per_second",
            "name",
            "presence_enabled",
            "private_only",
        ]
    );
    assert_eq!(created["name"], "t1", "name is the external id on create");
    assert_eq!(created["max_concurrent_users"], 200);
    assert_eq!(created["max_joins_per_second"], 100);
    let inserted_at = created["inserted_at"].as_str().unwrap();
    assert_eq!(
        inserted_at.len(),
        "2026-08-21T10:00:00".len(),
        "{inserted_at}"
    );
    let ext = &created["extensions"][0];
    assert_eq!(ext["type"], "postgres_cdc_rls");
    let settings = ext["settings"].as_object().unwrap();
    assert!(!settings.contains_key("db_password"));
    assert_eq!(settings["region"], "us-east-1");
    assert_eq!(settings["publication"], "supabase_realtime");
    for key in ["db_host", "db_port", "db_name", "db_user"] {
        let value = settings[key].as_str().unwrap();
        assert!(
            !value.is_empty()
                && !["db.example.internal", "5432", "postgres", "supabase_admin"].contains(&value),
            "{key} is encrypted"
        );
    }
    let raw = serde_json::to_string(&created).unwrap();
    assert!(!raw.contains("tenant-jwt-secret") && !raw.contains("db-pass-123"));
    let event = events.recv().await.unwrap();
    assert_eq!(event.tenant, TenantId::from("t1"));
    assert_eq!(event.change, TenantChange::Created);
    assert!(!event.disconnect);
    assert_eq!(event.origin, realtime::tenants::EventOrigin::Local);
    assert_eq!(event.record.unwrap().external_id, TenantId::from("t1"));

    // Existing → 200, and a repeat keeps the id.
    let res = api.post("/api/tenants", &common::tenant_body("t1")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("location").is_none());
    assert_eq!(json_of(res).await["data"]["id"], created["id"]);

    // PUT/PATCH update by path id; absent fields are kept.
    let res = api
        .req(reqwest::Method::PUT, "/api/tenants/t1")
        .json(&json!({"tenant": {"name": "Renamed", "max_concurrent_users": 7}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let updated = json_of(res).await["data"].clone();
    assert_eq!(updated["name"], "Renamed");
    assert_eq!(updated["max_concurrent_users"], 7);
    assert_eq!(updated["extensions"].as_array().unwrap().len(), 1);
    let res = api
        .req(reqwest::Method::PATCH, "/realtime/v1/api/tenants/t1")
        .json(&json!({"tenant": {"private_only": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await["data"]["private_only"], true);
    // PUT of a new id creates it.
    let res = api
        .req(reqwest::Method::PUT, "/api/tenants/t2")
        .json(&common::tenant_body("ignored"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(json_of(res).await["data"]["external_id"], "t2");

    let res = api.get("/api/tenants/t1").await;
    assert_eq!(res.status(), StatusCode::OK);
    let shown = json_of(res).await["data"].clone();
    assert_eq!(shown["name"], "Renamed");
    assert_eq!(shown["private_only"], true);
    let list = json_of(api.get("/api/tenants").await).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["external_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1", "t2"]);

    let res = api.get("/api/tenants/nope").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(res).await, json!({"message": "not found"}));

    for _ in 0..2 {
        let res = api
            .req(reqwest::Method::DELETE, "/api/tenants/t1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            StatusCode::NO_CONTENT,
            "also when already gone"
        );
    }
    assert_eq!(
        api.get("/api/tenants/t1").await.status(),
        StatusCode::NOT_FOUND
    );
    api.app.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let api = Api::start(&[]).await;
    let res = api
        .req(reqwest::Method::POST, "/api/tenants")
        .header("content-type", "text/plain")
        .body(common::tenant_body("t1").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(json_of(res).await["message"].is_string());

    let res = api
        .req(reqwest::Method::POST, "/api/tenants")
        .header("content-type", "application/json")
        .body("{\"tenant\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(json_of(res).await["message"].is_string());

    let huge = json!({"tenant": {"external_id": "big", "pad": "x".repeat(1_100_000)}});
    let res = api.post("/api/tenants", &huge).await;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(json_of(res).await["message"].is_string());

    let mut no_secret = common::tenant_body("t1");
    no_secret["tenant"]
        .as_object_mut()
        .unwrap()
        .remove("jwt_secret");
    let res = api.post("/api/tenants", &no_secret).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json_of(res).await["errors"]["jwt_secret"].is_array());

    let mut no_extensions = common::tenant_body("t1");
    no_extensions["tenant"]
        .as_object_mut()
        .unwrap()
        .remove("extensions");
    let res = api.post("/api/tenants", &no_extensions).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json_of(res).await["errors"]["extensions"].is_array());

    let mut unknown = common::tenant_body("t1");
    unknown["tenant"]["extensions"][0]["type"] = json!("mysql");
    unknown["tenant"]["max_events_per_second"] = json!("fast");
    let res = api.post("/api/tenants", &unknown).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let errors = json_of(res).await["errors"].clone();
    assert!(errors["extensions[0].type"].is_array(), "{errors}");
    assert!(errors["max_events_per_second"].is_array(), "{errors}");

    let res = api.post("/api/tenants", &json!([1, 2, 3])).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);

    assert_eq!(
        api.get("/api/tenants/t1").await.status(),
        StatusCode::NOT_FOUND
    );
    api.app.shutdown().await.unwrap();
}

/// A write that fails inside the database after the tenant row was inserted leaves nothing.
#[tokio::test]
async fn failed_upsert_writes_nothing() {
    let api = Api::start(&[]).await;
    // Postgres refuses a NUL character in jsonb, so the extension insert fails after the
    // tenant insert in the same transaction.
    let mut body = common::tenant_body("t1");
    body["tenant"]["extensions"][0]["settings"]["note"] = json!("a\u{0}b");
    let res = api.post("/api/tenants", &body).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let error = json_of(res).await;
    assert_eq!(error["code"], "MetadataDatabaseError");
    assert_eq!(
        api.get("/api/tenants/t1").await.status(),
        StatusCode::NOT_FOUND
    );

    // Same for an update: the stored tenant keeps its old values.
    assert_eq!(
        api.post("/api/tenants", &common::tenant_body("t1"))
            .await
            .status(),
        StatusCode::CREATED
    );
    body["tenant"]["max_concurrent_users"] = json!(9);
    let res = api.post("/api/tenants", &body).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let shown = json_of(api.get("/api/tenants/t1").await).await;
    assert_eq!(shown["data"]["max_concurrent_users"], 200);
    api.app.shutdown().await.unwrap();
}

#[tokio::test]
async fn reload_shutdown_and_tenant_health() {
    let api = Api::start(&[("REGION", "eu-west-2")]).await;
    for path in ["reload", "shutdown"] {
        let res = api
            .req(reqwest::Method::POST, &format!("/api/tenants/t1/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        api.get("/api/tenants/t1/health").await.status(),
        StatusCode::NOT_FOUND
    );

    api.post("/api/tenants", &common::tenant_body("t1")).await;
    let mut events = api.app.tenants().subscribe();
    for (path, change) in [
        ("reload", TenantChange::Reloaded),
        ("shutdown", TenantChange::Shutdown),
    ] {
        let res = api
            .req(reqwest::Method::POST, &format!("/api/tenants/t1/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{path}");
        let event = events.recv().await.unwrap();
        assert_eq!(event.change, change);
        assert_eq!(event.disconnect, change == TenantChange::Reloaded);
    }
    let res = api.get("/api/tenants/t1/health").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_of(res).await,
        json!({"data": {"healthy": true, "db_connected": false, "replication_connected": false,
            "connected_cluster": 1, "region": "eu-west-2", "node": "test-node"}})
    );
    api.app.shutdown().await.unwrap();
}

#[tokio::test]
async fn healthcheck_and_ping() {
    let api = Api::start(&[]).await;
    let res = reqwest::get(format!("{}/healthcheck", api.base))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "ok");

    let ping = |prefix: &'static str| {
        api.http
            .get(format!("{}{prefix}/api/ping", api.base))
            .header("host", "t1.localhost")
            .send()
    };
    let res = ping("").await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(res).await,
        json!({"message": "Tenant not found in database"})
    );

    api.post("/api/tenants", &common::tenant_body("t1")).await;
    for prefix in ["", "/realtime/v1"] {
        let res = ping(prefix).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{prefix}");
        assert_eq!(json_of(res).await, json!({"message": "Success"}));
    }
    let res = api.get("/no/such/route").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    api.app.shutdown().await.unwrap();
}
