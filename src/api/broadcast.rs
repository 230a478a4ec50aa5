//! The HTTP broadcast endpoints (PROTOCOL.md 4.5): `POST /api/broadcast` (batch of JSON
//! messages) and `POST /api/broadcast/{topic}/events/{event}` (one payload, JSON or bytes),
//! both with open CORS (preflight answered here, see [`cors`]), tenant from Host, a tenant rate
//! check and client-JWT auth. Publishing goes through `broadcast::Broadcaster`, like client pushes.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

use super::ApiError;
use crate::auth::TenantKeys;
use crate::broadcast::Broadcaster;
use crate::error::{ErrorCode, OperationalError};
use crate::hub::{FanoutMessage, RoomKey};
use crate::limits::{LimitExceeded, Limits, TenantLimiter};
use crate::phoenix::{PayloadEncoding, UserBroadcast};
use crate::tenants::{Tenant, Tenants};
use crate::types::TenantId;

/// What the broadcast endpoints use.
pub struct BroadcastApi {
    /// Tenant records.
    pub tenants: Tenants,
    /// The publish seam.
    pub broadcaster: Arc<Broadcaster>,
    /// Tenant rate counters.
    pub limits: Arc<Limits>,
    /// `JWT_CLAIM_VALIDATORS`.
    pub claim_validators: Map<String, Value>,
    /// Tokens verified before (shared with the WebSocket edge).
    pub tokens: Arc<crate::auth::VerifiedTokens>,
    /// `FALLBACK_TENANT`, as for WebSockets.
    pub fallback_tenant: Option<TenantId>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// The write checks of private topics (PROTOCOL.md 8).
    pub authorization: crate::authorization::Authorization,
}

/// Builds the broadcast routes, at `/api/...` and `/realtime/v1/api/...`.
pub fn broadcast_routes(api: Arc<BroadcastApi>) -> Router {
    let body_limit = api.body_limit;
    let routes = Router::new()
        .route("/api/broadcast", post(batch))
        .route("/api/broadcast/{topic}/events/{event}", post(single));
    Router::new()
        .merge(routes.clone())
        .nest(super::PATH_PREFIX, routes)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors())
        .with_state(api)
}

/// CORS of the broadcast endpoints: any origin, `POST`, and every header the preflight asks for.
///
/// The allowed headers mirror `Access-Control-Request-Headers` instead of answering `*`: the
/// Fetch standard never lets `*` cover `Authorization`, which realtime-js sends on `httpSend()`
/// and on the REST fallback of `send()`, and supabase-js adds `x-client-info`, trace headers and
/// the application's own `global.headers`, so no fixed list fits every client. No credentials
/// mode is allowed, so mirroring grants a page nothing beyond the headers its script sets itself.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(86_400))
}

/// The tenant, its counters and the rolling rate, once the shared checks passed.
struct Admitted {
    tenant: Arc<Tenant>,
    limiter: TenantLimiter,
    rate: f64,
    /// The request JWT's claims (the subject of private writes).
    claims: crate::auth::Claims,
    /// Every request header as a JSON object (`request.headers` of private writes).
    headers: String,
}

/// Every header of the request as a JSON object (lowercase names; a repeated header keeps its
/// last value; values that are not text are left out).
fn headers_json(headers: &HeaderMap) -> String {
    let map: Map<String, Value> = headers
        .iter()
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((name.as_str().to_string(), Value::String(value.to_string())))
        })
        .collect();
    Value::Object(map).to_string()
}

/// Runs the write check of a private topic for the request's subject (nothing cached:
/// PROTOCOL.md 8); true when the policies allow the broadcast.
async fn may_write(api: &BroadcastApi, admitted: &Admitted, topic: &str) -> bool {
    use crate::authorization::{CheckRequest, Extension, Subject};
    let request = CheckRequest {
        subject: Subject {
            role: admitted.claims.role.clone(),
            claims: Value::Object(admitted.claims.all.clone()).to_string(),
            sub: admitted.claims.sub.clone().unwrap_or_default(),
            topic: topic.to_string(),
            headers: admitted.headers.clone(),
        },
        read: Vec::new(),
        write: Some(Extension::Broadcast),
    };
    match api.authorization.check(&admitted.tenant, request).await {
        Ok(outcome) => outcome.write == Some(true),
        Err(err) => {
            tracing::warn!(error_code = %err.code(), tenant = %admitted.tenant.external_id, topic,
                error = %err, "write check of a private HTTP broadcast failed");
            false
        }
    }
}

fn with_rate_headers(mut response: Response, tenant: &Tenant, rate: f64) -> Response {
    let limit = tenant.limits.max_events_per_second;
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set("x-rate-rolling", format!("{rate:.1}"));
    set("x-rate-limit", limit.to_string());
    set(
        "x-rate-limit-remaining",
        (f64::from(limit) - rate).max(0.0).floor().to_string(),
    );
    response
}

fn bearer_or_apikey(headers: &HeaderMap) -> Result<Option<String>, ()> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parts: Vec<&str> = auth.split(' ').collect();
    if parts.len() == 2 && parts[0].eq_ignore_ascii_case("bearer") && !parts[1].is_empty() {
        return Ok(Some(parts[1].to_string()));
    }
    if !auth.is_empty() && parts.len() != 2 {
        return Err(());
    }
    Ok(headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string))
}

/// A refusal of the shared pipeline: the error, and the rate headers when the tenant was known.
type Refused = (ApiError, Option<(Arc<Tenant>, f64)>);

/// Answers a refusal, with the tenant's rate headers once the tenant is known.
fn refused((err, rate): Refused) -> Response {
    tracing::info!(error_code = %err.code(), "HTTP broadcast refused");
    let response = err.into_response();
    match rate {
        Some((tenant, rate)) => with_rate_headers(response, &tenant, rate),
        None => response,
    }
}

/// Tenant from Host (or the fallback), rate check, then JWT: the pipeline before both endpoints.
async fn admit(api: &BroadcastApi, headers: &HeaderMap) -> Result<Admitted, Refused> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let tenant = api
        .tenants
        .resolve_host(host, api.fallback_tenant.as_ref())
        .await
        .map_err(|err| (ApiError::from(err), None))?
        .ok_or((ApiError::UnknownTenant, None))?;
    let now = std::time::Instant::now();
    let limiter = api.limits.tenant(&tenant.external_id, now);
    let rate = match limiter.check_http_request(&tenant.limits, now) {
        Ok(rate) => rate,
        Err(err) => {
            let rate = match err {
                LimitExceeded::HttpRequests { avg, .. } => avg,
                _ => f64::from(tenant.limits.max_events_per_second),
            };
            return Err((err.into(), Some((tenant, rate))));
        }
    };
    let token = match bearer_or_apikey(headers) {
        Ok(Some(token)) => token,
        Ok(None) | Err(()) => return Err((ApiError::Unauthorized, Some((tenant, rate)))),
    };
    let keys = TenantKeys {
        jwt_secret: tenant.jwt_secret.as_ref(),
        jwks: tenant.jwt_jwks.as_ref(),
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let claims = match api.tokens.verify(&token, keys, &api.claim_validators, unix) {
        Ok(claims) => claims,
        Err(err) => {
            tracing::info!(error_code = %err.code(), tenant = %tenant.external_id, "HTTP broadcast token refused: {err}");
            return Err((ApiError::Unauthorized, Some((tenant, rate))));
        }
    };
    if tenant.suspend {
        return Err((ApiError::Suspended, Some((tenant, rate))));
    }
    Ok(Admitted {
        tenant,
        limiter,
        rate,
        claims,
        headers: headers_json(headers),
    })
}

fn max_payload(tenant: &Tenant) -> usize {
    tenant.limits.max_payload_size_in_kb as usize * 1000
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// `POST /api/broadcast`: `{"messages":[{"topic","event","payload","private"?,"id"?}, ...]}`.
async fn batch(State(api): State<Arc<BroadcastApi>>, headers: HeaderMap, body: Bytes) -> Response {
    let admitted = match admit(&api, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let answer = publish_batch(&api, &admitted, &body).await;
    respond(answer, &admitted)
}

/// Answers with the rate headers of the admitted tenant.
fn respond(answer: Result<StatusCode, ApiError>, admitted: &Admitted) -> Response {
    let response = match answer {
        Ok(status) => status.into_response(),
        Err(err) => {
            tracing::info!(error_code = %err.code(), tenant = %admitted.tenant.external_id, "HTTP broadcast refused");
            err.into_response()
        }
    };
    with_rate_headers(response, &admitted.tenant, admitted.rate)
}

/// Validates and publishes a batch; 202 when accepted.
async fn publish_batch(
    api: &BroadcastApi,
    admitted: &Admitted,
    body: &[u8],
) -> Result<StatusCode, ApiError> {
    let Admitted {
        tenant, limiter, ..
    } = admitted;
    let body = serde_json::from_slice::<Value>(body)
        .map_err(|_| ApiError::BadRequest(StatusCode::BAD_REQUEST, "malformed JSON body".into()))?;
    let messages = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => {
            return Err(ApiError::Unprocessable(
                json!({"messages": ["can't be blank"]}),
            ));
        }
    };
    let mut errors = Vec::with_capacity(messages.len());
    let mut valid = Vec::with_capacity(messages.len());
    for m in messages {
        let mut e = Map::new();
        let mut field = |name: &str, text: &str| {
            if let Some(list) = e
                .entry(name.to_string())
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                list.push(json!(text));
            }
        };
        let topic = m
            .get("topic")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let event = m
            .get("event")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        if topic.is_none() {
            field("topic", "can't be blank");
        }
        if event.is_none() {
            field("event", "can't be blank");
        }
        let payload = match m.get("payload") {
            Some(Value::Object(p)) => {
                let text = Value::Object(p.clone()).to_string();
                if text.len() > max_payload(tenant) {
                    field("payload", "Payload size exceeds tenant limit");
                }
                Some(text)
            }
            None | Some(Value::Null) => {
                field("payload", "can't be blank");
                None
            }
            Some(_) => {
                field("payload", "is invalid");
                None
            }
        };
        let private = match m.get("private") {
            None | Some(Value::Null) => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                field("private", "is invalid");
                None
            }
        };
        let id = match m.get("id") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) if is_uuid(s) => Some(Some(s.clone())),
            Some(_) => {
                field("id", "is invalid");
                None
            }
        };
        if let (true, Some(topic), Some(event), Some(payload), Some(private), Some(id)) =
            (e.is_empty(), topic, event, payload, private, id)
        {
            valid.push((topic.to_string(), event.to_string(), payload, private, id));
        }
        errors.push(Value::Object(e));
    }
    if valid.len() != messages.len() {
        return Err(ApiError::Unprocessable(json!({ "messages": errors })));
    }
    let now = std::time::Instant::now();
    limiter.check_http_broadcast_batch(&tenant.limits, valid.len() as u64, now)?;
    // The write checks of the private messages, all at once (the checks are pipelined).
    let allowed =
        futures::future::join_all(valid.iter().map(|(topic, _, _, private, _)| async move {
            !*private || may_write(api, admitted, topic).await
        }))
        .await;
    let mut deliveries = 0u64;
    for ((topic, event, payload, private, id), allowed) in valid.into_iter().zip(allowed) {
        if !allowed {
            // Denied private messages are dropped; the batch is still accepted (PROTOCOL.md 4.5).
            tracing::info!(error_code = %ErrorCode::Unauthorized, tenant = %tenant.external_id, topic, "private HTTP broadcast dropped");
            continue;
        }
        let mut envelope = format!(
            r#"{{"type":"broadcast","event":{},"payload":{}"#,
            Value::String(event),
            payload
        );
        if let Some(id) = id {
            envelope.push_str(&format!(r#","meta":{{"id":{}}}"#, Value::String(id)));
        }
        envelope.push('}');
        let room = RoomKey {
            tenant: tenant.external_id.clone(),
            private,
            sub_topic: topic.into(),
        };
        let message = FanoutMessage::Json {
            kind: crate::hub::FanoutKind::Broadcast,
            event: crate::phoenix::EVENT_BROADCAST.into(),
            payload: envelope.into(),
        };
        deliveries += 1 + api.broadcaster.publish(&room, &message, None) as u64;
    }
    limiter.add_channel_events(deliveries, now);
    Ok(StatusCode::ACCEPTED)
}

#[derive(serde::Deserialize)]
struct SingleQuery {
    private: Option<String>,
}

/// `POST /api/broadcast/{topic}/events/{event}[?private=true]`: the body is the user payload.
async fn single(
    State(api): State<Arc<BroadcastApi>>,
    Path((topic, event)): Path<(String, String)>,
    Query(query): Query<SingleQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let encoding = match content_type.as_deref() {
        None => None,
        Some("application/json") => Some(PayloadEncoding::Json),
        Some("application/octet-stream") => Some(PayloadEncoding::Binary),
        Some(_) => {
            return refused((
                ApiError::UnsupportedMediaType(
                    "Unsupported Media Type. Use application/json or application/octet-stream",
                ),
                None,
            ));
        }
    };
    let admitted = match admit(&api, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refused(refusal),
    };
    let private = query.private.as_deref() == Some("true");
    let answer = publish_single(&api, &admitted, (topic, event, private), encoding, body).await;
    respond(answer, &admitted)
}

/// Publishes one payload from the path's topic and event; 202 when accepted.
async fn publish_single(
    api: &BroadcastApi,
    admitted: &Admitted,
    (topic, event, private): (String, String, bool),
    encoding: Option<PayloadEncoding>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let Admitted {
        tenant, limiter, ..
    } = admitted;
    let (encoding, payload) = match encoding {
        None => (PayloadEncoding::Json, Bytes::from_static(b"{}")),
        Some(PayloadEncoding::Binary) => (PayloadEncoding::Binary, body),
        Some(PayloadEncoding::Json) if body.iter().all(u8::is_ascii_whitespace) => {
            (PayloadEncoding::Json, Bytes::from_static(b"{}"))
        }
        Some(PayloadEncoding::Json) => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(_)) => (PayloadEncoding::Json, body),
            Ok(other) => (
                PayloadEncoding::Json,
                Bytes::from(json!({ "_json": other }).to_string()),
            ),
            Err(_) => {
                return Err(ApiError::BadRequest(
                    StatusCode::BAD_REQUEST,
                    "malformed JSON body".into(),
                ));
            }
        },
    };
    if payload.len() > max_payload(tenant) {
        return Err(ApiError::Unprocessable(
            json!({"payload": ["Payload size exceeds tenant limit"]}),
        ));
    }
    let now = std::time::Instant::now();
    limiter.check_http_broadcast(&tenant.limits, now)?;
    if private && !may_write(api, admitted, &topic).await {
        return Err(ApiError::Forbidden);
    }
    let room = RoomKey {
        tenant: tenant.external_id.clone(),
        private,
        sub_topic: topic.into(),
    };
    let message = FanoutMessage::User(UserBroadcast {
        event,
        encoding,
        payload,
        metadata: None,
    });
    let delivered = api.broadcaster.publish(&room, &message, None);
    limiter.add_channel_events(1 + delivered as u64, now);
    Ok(StatusCode::ACCEPTED)
}
