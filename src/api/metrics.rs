//! `GET /metrics` and `GET /metrics/{region}` (PROTOCOL.md 10.3): Prometheus text of every
//! node of the cluster, or of the nodes of one region, behind a bearer JWT signed with
//! `METRICS_JWT_SECRET`. Without that secret the endpoint answers 403 to everyone.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use crate::auth;
use crate::error::OperationalError;

pub(super) fn routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/metrics", get(all_nodes))
        .route("/metrics/{region}", get(region_nodes))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_metrics_token,
        ))
}

/// Lets the request through only with exactly one `Authorization: Bearer <token>` that verifies
/// with `METRICS_JWT_SECRET`; otherwise 403 with an empty body.
async fn require_metrics_token(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    let Some(secret) = state.api.metrics_jwt_secret.as_ref() else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")),
        _ => None,
    };
    let Some(token) = token else {
        return StatusCode::FORBIDDEN.into_response();
    };
    match auth::verify_api_token(token, &[secret], &[], &serde_json::Map::new()) {
        Ok(_) => next.run(req).await,
        Err(err) => {
            tracing::info!(error_code = %err.code(), reason = %err, "refused metrics token");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

async fn all_nodes(State(state): State<ApiState>) -> Response {
    text(state.metrics.gather(None).await)
}

async fn region_nodes(State(state): State<ApiState>, Path(region): Path<String>) -> Response {
    text(state.metrics.gather(Some(region)).await)
}

fn text(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}
