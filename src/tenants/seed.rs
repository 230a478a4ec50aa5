//! The self-hosted default tenant (`SEED_SELF_HOST=true`).
//!
//! Created only when missing, through [`Tenants::create_if_missing`], so restarting is a no-op
//! and two nodes starting together create it once.

use serde_json::{Value, json};

use super::{POSTGRES_CDC_RLS, Tenants, TenantsError};
use crate::config::{ApiConfig, DbConfig, SeedConfig};

/// Creates the default tenant when seeding is enabled and it does not exist; returns whether
/// this call created it.
///
/// The tenant is `SELF_HOST_TENANT_NAME`, signs client JWTs with `API_JWT_SECRET` and has a
/// `postgres_cdc_rls` extension pointing at the metadata database (`DB_*`), region `local`,
/// without enforced TLS.
///
/// # Errors
/// The errors of [`Tenants::create_if_missing`].
pub async fn seed_self_host(
    tenants: &Tenants,
    seed: &SeedConfig,
    api: &ApiConfig,
    db: &DbConfig,
) -> Result<bool, TenantsError> {
    if !seed.enabled {
        return Ok(false);
    }
    let created = tenants
        .create_if_missing(&self_host_body(seed, api, db))
        .await?;
    if created {
        tracing::info!(tenant = %seed.tenant_name, "seeded the self-host tenant");
    }
    Ok(created)
}

fn self_host_body(seed: &SeedConfig, api: &ApiConfig, db: &DbConfig) -> Value {
    json!({"tenant": {
        "external_id": seed.tenant_name,
        "name": seed.tenant_name,
        "jwt_secret": api.jwt_secret.expose(),
        "extensions": [{
            "type": POSTGRES_CDC_RLS,
            "settings": {
                "region": "local",
                "db_host": db.host,
                "db_port": db.port.to_string(),
                "db_name": db.name,
                "db_user": db.user,
                "db_password": db.password.expose(),
                "ssl_enforced": false,
            },
        }],
    }})
}
