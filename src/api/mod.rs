//! The HTTP edge (axum): the tenants management API, node and tenant health, `/api/ping`,
//! `/metrics`.
//!
//! [`router`] builds every route of this module over an [`ApiState`], served both at the root
//! and under `/realtime/v1`. `app` merges other routers (broadcast API, WebSocket) next to it.
//! Errors of lower modules become HTTP statuses in one place, [`rejection`]'s `ApiError`; axum's
//! own plain-text rejections are replaced by JSON ones.

mod broadcast;
mod header_limit;
mod health;
mod metrics;
mod rejection;
mod tenants;

use std::sync::Arc;

use axum::Router;

use crate::config::ApiConfig;
use crate::tenants::Tenants;

pub use broadcast::{BroadcastApi, broadcast_routes};
pub use header_limit::limit_header_length;
pub use rejection::{ApiError, JsonBody};

/// Prefix under which every route is served a second time (the self-hosting gateway's path).
pub const PATH_PREFIX: &str = "/realtime/v1";
/// Largest tenants API request body, bytes (also capped by `MAX_REQUEST_BODY_BYTES`).
pub const TENANTS_BODY_LIMIT: usize = 1 << 20;

/// What every handler of this module may use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The tenant registry.
    pub tenants: Tenants,
    /// Management API secrets and checks.
    pub api: Arc<ApiConfig>,
    /// This node's name, shown by tenant health.
    pub node_name: Arc<str>,
    /// This node's region (`REGION`), shown by tenant health.
    pub region: Option<Arc<str>>,
    /// `FALLBACK_TENANT`: the tenant of a Host that names none.
    pub fallback_tenant: Option<crate::types::TenantId>,
    /// Largest accepted JSON body of the tenants API, bytes.
    pub body_limit: usize,
    /// What `GET /api/cluster` shows.
    pub cluster: Arc<dyn ClusterStatus>,
    /// What `GET /metrics` serves.
    pub metrics: Arc<dyn ClusterMetrics>,
    /// Set once shutdown has begun: `GET /healthcheck/ready` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The metrics text of the cluster's nodes, for `GET /metrics` (`METRICS_JWT_SECRET` token).
pub trait ClusterMetrics: Send + Sync + std::fmt::Debug {
    /// Every live node's series (`region: None`) or those of the nodes in `region`, merged
    /// into one Prometheus text. Nodes that do not answer are left out (and logged).
    fn gather(&self, region: Option<String>) -> futures::future::BoxFuture<'static, String>;
}

/// The cluster as this node sees it, for `GET /api/cluster` (management token required).
pub trait ClusterStatus: Send + Sync + std::fmt::Debug {
    /// A JSON object: `node`, `incarnation`, `members`, `linked`, `streams`, ...
    fn status(&self) -> serde_json::Value;
    /// Whether this node has joined its cluster (`GET /healthcheck/ready`).
    fn joined(&self) -> bool;
}

/// Builds the router of this module, served at `/` and at [`PATH_PREFIX`].
pub fn router(state: ApiState) -> Router {
    let routes = Router::new()
        .merge(tenants::routes(&state))
        .merge(health::routes())
        .merge(metrics::routes(&state));
    Router::new()
        .merge(routes.clone())
        .nest(PATH_PREFIX, routes)
        .fallback(rejection::not_found)
        .with_state(state)
}
