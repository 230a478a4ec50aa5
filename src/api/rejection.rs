//! Turning errors into HTTP responses: module errors via [`ApiError`], and a JSON body extractor
//! ([`JsonBody`]) whose rejections are JSON too (415 wrong content type, 400 malformed JSON,
//! 413 too large).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::{ErrorCode, OperationalError};
use crate::limits::LimitExceeded;
use crate::tenants::TenantsError;

/// An error answer of the HTTP API: every route of `api` refuses through this type, so each
/// refusal has one status, one body shape and one log code.
#[derive(Debug)]
pub enum ApiError {
    /// A tenants operation failed (404, 422 field errors, or 500 with the operational code).
    Tenants(TenantsError),
    /// The request itself is unusable (status and message for the client).
    BadRequest(StatusCode, String),
    /// The Host names no tenant, on a tenant-scoped route (`/api/ping`, HTTP broadcast): 401.
    UnknownTenant,
    /// The request's JWT is missing or refused (HTTP broadcast): 401.
    Unauthorized,
    /// The tenant is suspended (HTTP broadcast): 403.
    Suspended,
    /// A private write was denied (HTTP broadcast): 403 `Unauthorized`.
    Forbidden,
    /// A tenant rate limit refused the request: 429 with the limit's text.
    Limit(LimitExceeded),
    /// Field errors of a request body: 422 `{"errors": ...}`.
    Unprocessable(Value),
    /// The body's content type is not one the route reads: 415 `{"error": ...}`.
    UnsupportedMediaType(&'static str),
}

impl From<TenantsError> for ApiError {
    fn from(err: TenantsError) -> Self {
        ApiError::Tenants(err)
    }
}

impl From<LimitExceeded> for ApiError {
    fn from(err: LimitExceeded) -> Self {
        ApiError::Limit(err)
    }
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "message": text.into() }))).into_response()
}

impl ApiError {
    /// Returns the operational code logged for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Tenants(TenantsError::NotFound(_)) | ApiError::UnknownTenant => {
                ErrorCode::TenantNotFound
            }
            ApiError::Tenants(err) => err.code(),
            ApiError::BadRequest(..)
            | ApiError::Unprocessable(_)
            | ApiError::UnsupportedMediaType(_) => ErrorCode::UnprocessableEntity,
            ApiError::Unauthorized | ApiError::Forbidden => ErrorCode::Unauthorized,
            ApiError::Suspended => ErrorCode::RealtimeDisabledForTenant,
            ApiError::Limit(err) => err.code(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(status, text) => message(status, text),
            ApiError::Tenants(TenantsError::NotFound(_)) => {
                message(StatusCode::NOT_FOUND, "not found")
            }
            ApiError::Tenants(TenantsError::Invalid(errors)) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "errors": errors })),
            )
                .into_response(),
            ApiError::Tenants(err) => {
                tracing::error!(error_code = %err.code(), error = %err, "tenants request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({ "message": err.client_message(), "code": err.code().as_str() })),
                )
                    .into_response()
            }
            ApiError::UnknownTenant => {
                message(StatusCode::UNAUTHORIZED, "Tenant not found in database")
            }
            ApiError::Unauthorized => message(StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Suspended => message(StatusCode::FORBIDDEN, "Tenant is suspended"),
            ApiError::Forbidden => message(StatusCode::FORBIDDEN, "Unauthorized"),
            ApiError::Limit(err) => message(StatusCode::TOO_MANY_REQUESTS, err.client_text()),
            ApiError::Unprocessable(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "errors": errors })),
            )
                .into_response(),
            ApiError::UnsupportedMediaType(text) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": text })),
            )
                .into_response(),
        }
    }
}

/// Answers routes that do not exist.
pub(super) async fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "not found")
}

/// A JSON request body as a `serde_json::Value`, type rules being left to validation.
#[derive(Debug)]
pub struct JsonBody(pub Value);

fn is_json_content_type(req: &Request) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(&req) {
            return Err(ApiError::BadRequest(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BadRequest(status, "request body is too large".into())
            } else {
                ApiError::BadRequest(
                    StatusCode::BAD_REQUEST,
                    "cannot read the request body".into(),
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|err| {
            ApiError::BadRequest(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON body: {err}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(err: ApiError) -> (u16, Value) {
        let response = err.into_response();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("a JSON body"))
    }

    /// PROTOCOL.md 4.5 (HTTP broadcast) and 10.2 (tenants API): status, body and log code of
    /// every refusal.
    #[tokio::test]
    async fn every_refusal_matches_the_http_tables() {
        let rows: Vec<(ApiError, u16, Value, ErrorCode)> = vec![
            (
                ApiError::UnknownTenant,
                401,
                json!({"message": "Tenant not found in database"}),
                ErrorCode::TenantNotFound,
            ),
            (
                ApiError::Unauthorized,
                401,
                json!({"message": "Unauthorized"}),
                ErrorCode::Unauthorized,
            ),
            (
                ApiError::Suspended,
                403,
                json!({"message": "Tenant is suspended"}),
                ErrorCode::RealtimeDisabledForTenant,
            ),
            (
                ApiError::Forbidden,
                403,
                json!({"message": "Unauthorized"}),
                ErrorCode::Unauthorized,
            ),
            (
                LimitExceeded::HttpRequests { limit: 1, avg: 2.0 }.into(),
                429,
                json!({"message": "Too many requests"}),
                ErrorCode::MessagePerSecondRateLimitReached,
            ),
            (
                LimitExceeded::BroadcastRate { limit: 1, avg: 2.0 }.into(),
                429,
                json!({"message": "You have exceeded your rate limit"}),
                ErrorCode::MessagePerSecondRateLimitReached,
            ),
            (
                LimitExceeded::BroadcastBatch {
                    limit: 1,
                    avg: 2.0,
                    batch: 3,
                }
                .into(),
                429,
                json!({"message": "Too many messages to broadcast, please reduce the batch size"}),
                ErrorCode::MessagePerSecondRateLimitReached,
            ),
            (
                ApiError::Unprocessable(json!({"payload": ["Payload size exceeds tenant limit"]})),
                422,
                json!({"errors": {"payload": ["Payload size exceeds tenant limit"]}}),
                ErrorCode::UnprocessableEntity,
            ),
            (
                ApiError::UnsupportedMediaType("Unsupported Media Type"),
                415,
                json!({"error": "Unsupported Media Type"}),
                ErrorCode::UnprocessableEntity,
            ),
            (
                ApiError::BadRequest(StatusCode::BAD_REQUEST, "malformed JSON body".into()),
                400,
                json!({"message": "malformed JSON body"}),
                ErrorCode::UnprocessableEntity,
            ),
            (
                ApiError::Tenants(TenantsError::NotFound(crate::types::TenantId::from("t"))),
                404,
                json!({"message": "not found"}),
                ErrorCode::TenantNotFound,
            ),
        ];
        for (err, status, body, code) in rows {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(answer(err).await, (status, body));
        }
    }
}
