//! Node health (`GET /healthcheck`), readiness (`GET /healthcheck/ready`) and the tenant ping
//! (`GET /api/ping`).
//!
//! Both health routes are served only once start-up has finished (migrations, seed, bus and
//! gossip bound), and stop with the listener at shutdown. Readiness adds the cluster: it answers
//! 503 until the node has joined (`Membership::joined`), and again once shutdown has begun (a
//! request on a connection that was open before the listener closed).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, ApiState};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/healthcheck/ready", get(ready))
        .route("/api/ping", get(ping))
}

async fn healthcheck() -> &'static str {
    "ok"
}

async fn ready(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if state.cluster.joined() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "joining the cluster")
    }
}

async fn ping(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let tenant = state
        .tenants
        .resolve_host(host, state.fallback_tenant.as_ref())
        .await?;
    match tenant {
        Some(_) => Ok(Json(json!({"message": "Success"})).into_response()),
        None => Err(ApiError::UnknownTenant),
    }
}
