//! Node health (`GET /healthcheck`) and the tenant ping (`GET /api/ping`).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiError, ApiState};
use crate::types::TenantId;

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthcheck", get(healthcheck))
        .route("/api/ping", get(ping))
}

async fn healthcheck() -> &'static str {
    "ok"
}

/// Returns the tenant named by the first DNS label of `Host`, if any.
pub(super) fn tenant_from_host(headers: &HeaderMap) -> Option<TenantId> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let label = host.split('.').next()?.split(':').next()?;
    (!label.is_empty()).then(|| TenantId::from(label))
}

async fn ping(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let tenant = match tenant_from_host(&headers) {
        Some(id) => state.tenants.get(&id).await?,
        None => None,
    };
    Ok(match tenant {
        Some(_) => Json(json!({"message": "Success"})).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Tenant not found in database"})),
        )
            .into_response(),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn tenant_is_the_first_host_label() {
        let mut headers = HeaderMap::new();
        assert_eq!(tenant_from_host(&headers), None);
        headers.insert(header::HOST, HeaderValue::from_static("t1.localhost:4000"));
        assert_eq!(tenant_from_host(&headers), Some(TenantId::from("t1")));
        headers.insert(header::HOST, HeaderValue::from_static("realtime-dev:4000"));
        assert_eq!(
            tenant_from_host(&headers),
            Some(TenantId::from("realtime-dev"))
        );
    }
}
