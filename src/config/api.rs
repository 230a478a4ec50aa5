//! Secrets and checks of the management API and of tenant JWTs, read by `api` and the edges
//! that verify client tokens.

use serde_json::{Map, Value};

use super::vars::{Vars, json_object};
use super::{ConfigError, Secret};

/// Default tenant JWT secret of a self-hosted setup (the original's documented value).
pub const DEFAULT_API_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// Secrets and checks of the management API and of tenant JWTs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `API_JWT_SECRET`: signs the bearer tokens of `/api/tenants`; also the self-host tenant's
    /// JWT secret. Default [`DEFAULT_API_JWT_SECRET`].
    pub jwt_secret: Secret,
    /// `API_JWT_SECRET_NEXT`: second accepted signing secret during rotation. Default none.
    pub jwt_secret_next: Option<Secret>,
    /// `API_TOKEN_BLOCKLIST`: comma-separated tokens refused by the management API.
    pub token_blocklist: Vec<Secret>,
    /// `METRICS_JWT_SECRET`: signs the bearer tokens of `/metrics`. Default none (`/metrics` answers 403).
    pub metrics_jwt_secret: Option<Secret>,
    /// `SECRET_KEY_BASE`: accepted for compatibility; this server keeps no signed cookies.
    pub secret_key_base: Option<Secret>,
    /// `JWT_CLAIM_VALIDATORS`: JSON object of claims that every tenant JWT must carry with
    /// exactly these values. Default `{}`.
    pub jwt_claim_validators: Map<String, Value>,
}

impl ApiConfig {
    pub(super) fn parse(env: &Vars) -> Result<ApiConfig, ConfigError> {
        Ok(ApiConfig {
            jwt_secret: env
                .secret_opt("API_JWT_SECRET")
                .unwrap_or_else(|| Secret::new(DEFAULT_API_JWT_SECRET)),
            jwt_secret_next: env.secret_opt("API_JWT_SECRET_NEXT"),
            token_blocklist: env
                .list("API_TOKEN_BLOCKLIST")
                .into_iter()
                .map(Secret::new)
                .collect(),
            metrics_jwt_secret: env.secret_opt("METRICS_JWT_SECRET"),
            secret_key_base: env.secret_opt("SECRET_KEY_BASE"),
            jwt_claim_validators: env.parse_or("JWT_CLAIM_VALIDATORS", Map::new(), json_object)?,
        })
    }
}
