//! Settings of the tenant registry (cache, routing fallback), of tenant secret encryption and
//! of the self-host seed, read by `tenants`.

use std::time::Duration;

use super::vars::{Vars, boolean, external_id, millis};
use super::{ConfigError, Secret};
use crate::types::TenantId;

/// The tenant registry: its cache and the routing fallback.
#[derive(Clone, Debug)]
pub struct TenantsConfig {
    /// `TENANT_CACHE_EXPIRATION_IN_MS`: lifetime of a cached tenant record. Default 30000.
    pub cache_expiration: Duration,
    /// `TENANT_NOT_FOUND_CACHE_IN_MS` (ours): lifetime of a cached "no such tenant" answer, so
    /// that random `Host` values do not each cost a query. Default 1000. A tenant created on
    /// this node is visible at once; one created on another node after at most this.
    pub not_found_expiration: Duration,
    /// `FALLBACK_TENANT` (ours): the tenant of a Host that cannot name one (an IP literal or a
    /// single label such as `localhost`; see `Tenants::resolve_host`). Default:
    /// `SELF_HOST_TENANT_NAME` when `SEED_SELF_HOST=true`, else none; `none` turns it off.
    pub fallback_tenant: Option<TenantId>,
}

impl TenantsConfig {
    pub(super) fn parse(env: &Vars, seed: &SeedConfig) -> Result<TenantsConfig, ConfigError> {
        let fallback_tenant = match env.non_empty("FALLBACK_TENANT") {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            Some(v) => Some(external_id(&v).map_err(|problem| ConfigError::Invalid {
                var: "FALLBACK_TENANT",
                problem: format!("`{v}` {problem}"),
            })?),
            None => seed.enabled.then(|| seed.tenant_name.clone()),
        };
        Ok(TenantsConfig {
            cache_expiration: env.parse_or(
                "TENANT_CACHE_EXPIRATION_IN_MS",
                Duration::from_millis(30_000),
                millis,
            )?,
            not_found_expiration: env.parse_or(
                "TENANT_NOT_FOUND_CACHE_IN_MS",
                Duration::from_millis(1000),
                millis,
            )?,
            fallback_tenant: fallback_tenant.map(TenantId::new),
        })
    }
}

/// Encryption of tenant secrets at rest in the metadata database.
#[derive(Clone, Debug)]
pub struct EncryptionConfig {
    /// `DB_ENC_KEY`: 16-byte AES-128 key (the original's ECB scheme). Required.
    pub key: Secret,
    /// `DB_ENC_KEY_GCM`: optional 32-byte AES-256-GCM key; values prefixed `g1:` use it.
    pub key_gcm: Option<Secret>,
    /// `DB_ENC_WRITE_GCM`: write new values with AES-256-GCM. Default false; needs `DB_ENC_KEY_GCM`.
    pub write_gcm: bool,
}

impl EncryptionConfig {
    pub(super) fn parse(env: &Vars) -> Result<EncryptionConfig, ConfigError> {
        let encryption = EncryptionConfig {
            key: env.secret_required(
                "DB_ENC_KEY",
                "a 16-byte key that encrypts tenant secrets at rest",
            )?,
            key_gcm: env.secret_opt("DB_ENC_KEY_GCM"),
            write_gcm: env.parse_or("DB_ENC_WRITE_GCM", false, boolean)?,
        };
        if encryption.key.expose().len() != 16 {
            return Err(ConfigError::Invalid {
                var: "DB_ENC_KEY",
                problem: format!(
                    "must be exactly 16 bytes for AES-128, got {} bytes",
                    encryption.key.expose().len()
                ),
            });
        }
        if let Some(gcm) = &encryption.key_gcm {
            if gcm.expose().len() != 32 {
                return Err(ConfigError::Invalid {
                    var: "DB_ENC_KEY_GCM",
                    problem: format!(
                        "must be exactly 32 bytes for AES-256-GCM, got {} bytes",
                        gcm.expose().len()
                    ),
                });
            }
        } else if encryption.write_gcm {
            return Err(ConfigError::Missing {
                var: "DB_ENC_KEY_GCM",
                problem: "DB_ENC_WRITE_GCM=true needs a 32-byte DB_ENC_KEY_GCM".into(),
            });
        }
        Ok(encryption)
    }
}

/// The self-hosted default tenant.
#[derive(Clone, Debug)]
pub struct SeedConfig {
    /// `SEED_SELF_HOST`: create the default tenant at start-up if missing. Default false.
    pub enabled: bool,
    /// `SELF_HOST_TENANT_NAME`: its external id. Default `realtime-dev`.
    pub tenant_name: String,
}

impl SeedConfig {
    pub(super) fn parse(env: &Vars) -> Result<SeedConfig, ConfigError> {
        Ok(SeedConfig {
            enabled: env.parse_or("SEED_SELF_HOST", false, boolean)?,
            tenant_name: env.parse_or(
                "SELF_HOST_TENANT_NAME",
                "realtime-dev".to_string(),
                external_id,
            )?,
        })
    }
}
