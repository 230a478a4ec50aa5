//! Node health (`GET /healthcheck`) and the tenant ping (`GET /api/ping`).

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, ApiState};

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/api/ping", get(ping))
}

async fn healthcheck() -> &'static str {
    "ok"
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
