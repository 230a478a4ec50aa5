//! Turning errors into HTTP responses: module errors via [`ApiError`], and a JSON body extractor
//! ([`JsonBody`]) whose rejections are JSON too (415 wrong content type, 400 malformed JSON,
//! 413 too large).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::OperationalError;
use crate::tenants::TenantsError;

/// An error answer of the HTTP API.
#[derive(Debug)]
pub enum ApiError {
    /// A tenants operation failed.
    Tenants(TenantsError),
    /// The request itself is unusable (status and message for the client).
    BadRequest(StatusCode, String),
}

impl From<TenantsError> for ApiError {
    fn from(err: TenantsError) -> Self {
        ApiError::Tenants(err)
    }
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(json!({ "message": text.into() }))).into_response()
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
