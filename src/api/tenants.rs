//! The tenants management API (PROTOCOL.md 10.1, 10.2): bearer-token check, CRUD, reload,
//! shutdown and tenant health, with the original's response shapes.

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDateTime;
use serde_json::{Map, Value, json};

use super::{ApiError, ApiState, JsonBody, TENANTS_BODY_LIMIT};
use crate::auth;
use crate::error::OperationalError;
use crate::tenants::{Extension, Tenant, TenantChange, TenantsError};
use crate::types::TenantId;

pub(super) fn routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/api/tenants", get(list).post(create))
        .route(
            "/api/tenants/{tenant_id}",
            get(show).put(update).patch(update).delete(remove),
        )
        .route("/api/tenants/{tenant_id}/reload", post(reload))
        .route("/api/tenants/{tenant_id}/shutdown", post(shutdown))
        .route("/api/tenants/{tenant_id}/health", get(health))
        .route("/api/cluster", get(cluster))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_token,
        ))
        .layer(DefaultBodyLimit::max(
            state.body_limit.min(TENANTS_BODY_LIMIT),
        ))
}

/// Lets the request through only with exactly one valid `Authorization: Bearer <token>`;
/// otherwise 403 with an empty body.
async fn require_api_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let token = match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string),
        _ => None,
    };
    let Some(token) = token else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let api = &state.api;
    let mut secrets = vec![&api.jwt_secret];
    secrets.extend(api.jwt_secret_next.as_ref());
    match auth::verify_api_token(
        &token,
        &secrets,
        &api.token_blocklist,
        &api.jwt_claim_validators,
    ) {
        Ok(_) => next.run(req).await,
        Err(err) => {
            tracing::info!(error_code = %err.code(), reason = %err, "refused management API token");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

/// `GET /api/cluster`: this node, the live members, the bus links and the streams it owns.
async fn cluster(State(state): State<ApiState>) -> Json<Value> {
    Json(state.cluster.status())
}

fn timestamp(at: &NaiveDateTime) -> String {
    at.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn extension_json(extension: &Extension) -> Value {
    let mut settings: Map<String, Value> = extension.settings.clone();
    settings.remove("db_password");
    json!({
        "type": extension.kind,
        "inserted_at": timestamp(&extension.inserted_at),
        "updated_at": timestamp(&extension.updated_at),
        "settings": settings,
    })
}

/// The tenant as the original's `tenant.json` shows it: no secrets, DB settings encrypted.
fn tenant_json(tenant: &Tenant) -> Value {
    let l = &tenant.limits;
    json!({
        "id": tenant.id,
        "external_id": tenant.external_id,
        "name": tenant.name,
        "max_concurrent_users": l.max_concurrent_users,
        "max_channels_per_client": l.max_channels_per_client,
        "max_events_per_second": l.max_events_per_second,
        "max_joins_per_second": l.max_joins_per_second,
        "inserted_at": timestamp(&tenant.inserted_at),
        "private_only": tenant.private_only,
        "max_client_presence_events_per_window": l.max_client_presence_events_per_window,
        "client_presence_window_ms": l.client_presence_window_ms,
        "presence_enabled": tenant.presence_enabled,
        "extensions": tenant.extensions.iter().map(extension_json).collect::<Vec<_>>(),
    })
}

async fn list(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let tenants = state.tenants.list().await?;
    let data: Vec<Value> = tenants.iter().map(tenant_json).collect();
    Ok(Json(json!({ "data": data })).into_response())
}

async fn show(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TenantId::new(tenant_id);
    match state.tenants.get(&id).await? {
        Some(tenant) => Ok(Json(json!({ "data": tenant_json(&tenant) })).into_response()),
        None => Err(TenantsError::NotFound(id).into()),
    }
}

fn upserted(tenant: &Tenant, created: bool) -> Response {
    let body = Json(json!({ "data": tenant_json(tenant) }));
    if !created {
        return body.into_response();
    }
    let mut response = (StatusCode::CREATED, body).into_response();
    let location = format!("/api/tenants/{}", tenant.external_id);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

async fn create(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (tenant, created) = state.tenants.upsert(None, &body).await?;
    Ok(upserted(&tenant, created))
}

async fn update(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = TenantId::new(tenant_id);
    let (tenant, created) = state.tenants.upsert(Some(&id), &body).await?;
    Ok(upserted(&tenant, created))
}

async fn remove(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.tenants.delete(&TenantId::new(tenant_id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn reload(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = TenantId::new(tenant_id);
    state.tenants.signal(&id, TenantChange::Reloaded).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn shutdown(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = TenantId::new(tenant_id);
    state.tenants.signal(&id, TenantChange::Shutdown).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tenant health. No tenant connections exist on this node yet, so nothing can be unhealthy:
/// the original reports unhealthy only when clients are connected without a DB connection.
async fn health(
    State(state): State<ApiState>,
    Path(tenant_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TenantId::new(tenant_id);
    let Some(tenant) = state.tenants.get(&id).await? else {
        return Err(TenantsError::NotFound(id).into());
    };
    let region = state.region.as_deref().map(str::to_string).or_else(|| {
        tenant
            .extensions
            .iter()
            .find_map(|e| e.settings.get("region").and_then(Value::as_str))
            .map(str::to_string)
    });
    Ok(Json(json!({ "data": {
        "healthy": true,
        "db_connected": false,
        "replication_connected": false,
        "connected_cluster": 1,
        "region": region,
        "node": &*state.node_name,
    }}))
    .into_response())
}
