//! `MAX_HEADER_LENGTH`: requests with a longer header value are refused with 431.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Middleware refusing a request whose longest header value exceeds `max` bytes.
pub async fn limit_header_length(
    State(max): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    if request.headers().values().any(|v| v.len() > max) {
        let body = json!({"error": format!("a request header is longer than {max} bytes")});
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            axum::Json(body),
        )
            .into_response();
    }
    next.run(request).await
}
