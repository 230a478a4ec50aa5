//! The tenant record as the rest of the node sees it.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Secret;
use crate::types::TenantId;

/// Extension type of Postgres Changes with RLS (the only one the original still has).
pub const POSTGRES_CDC_RLS: &str = "postgres_cdc_rls";

/// One tenant, with its secrets decrypted and its limits resolved.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Primary key in `_realtime.tenants`.
    pub id: Uuid,
    /// `external_id`: the Host subdomain clients connect with.
    pub external_id: TenantId,
    /// Display name.
    pub name: String,
    /// HS* signing secret of client JWTs (decrypted).
    pub jwt_secret: Option<Secret>,
    /// JWKS (`{"keys":[...]}`) for asymmetric client JWTs and `kid`-selected HS keys.
    pub jwt_jwks: Option<Value>,
    /// `postgres_cdc_default`.
    pub postgres_cdc_default: String,
    /// Per-tenant limits.
    pub limits: TenantLimits,
    /// Presence forced on for every join.
    pub presence_enabled: bool,
    /// Public joins refused.
    pub private_only: bool,
    /// Connections, joins and HTTP broadcasts refused.
    pub suspend: bool,
    /// Tenant migrations applied on the tenant database.
    pub migrations_ran: i32,
    /// Extensions (Postgres Changes settings), with settings as stored (DB fields encrypted).
    pub extensions: Vec<Extension>,
    /// Creation time (UTC).
    pub inserted_at: NaiveDateTime,
    /// Last update time (UTC).
    pub updated_at: NaiveDateTime,
}

impl Tenant {
    /// Returns whether changing this record into `new` must close the tenant's sockets
    /// (PROTOCOL.md 1.7): the keys that verified their tokens (`jwt_secret`, `jwt_jwks`) or the
    /// rules that admitted them (`private_only`, `suspend`) changed. Any other change (limits,
    /// `presence_enabled`, name, extensions) reaches open sockets without a reconnect.
    pub fn change_requires_disconnect(&self, new: &Tenant) -> bool {
        self.jwt_secret != new.jwt_secret
            || self.jwt_jwks != new.jwt_jwks
            || self.private_only != new.private_only
            || self.suspend != new.suspend
    }
}

/// Per-tenant limits (PROTOCOL.md 11.1 and 12.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantLimits {
    /// `max_concurrent_users`
    pub max_concurrent_users: u32,
    /// `max_events_per_second`
    pub max_events_per_second: u32,
    /// `max_bytes_per_second` (stored and returned; the original enforces it nowhere)
    pub max_bytes_per_second: u32,
    /// `max_channels_per_client`
    pub max_channels_per_client: u32,
    /// `max_joins_per_second`
    pub max_joins_per_second: u32,
    /// `max_presence_events_per_second`
    pub max_presence_events_per_second: u32,
    /// `max_payload_size_in_kb`
    pub max_payload_size_in_kb: u32,
    /// `max_client_presence_events_per_window` (null = node default)
    pub max_client_presence_events_per_window: Option<u32>,
    /// `client_presence_window_ms` (null = node default)
    pub client_presence_window_ms: Option<u32>,
}

/// One row of `_realtime.extensions`.
#[derive(Clone, Debug)]
pub struct Extension {
    /// `type`, e.g. [`POSTGRES_CDC_RLS`].
    pub kind: String,
    /// `settings` as stored: `db_host`, `db_port`, `db_name`, `db_user`, `db_password` encrypted.
    pub settings: Map<String, Value>,
    /// Creation time (UTC).
    pub inserted_at: NaiveDateTime,
    /// Last update time (UTC).
    pub updated_at: NaiveDateTime,
}

#[cfg(test)]
impl Tenant {
    /// A tenant with default limits, a JWT secret and no extensions.
    pub(crate) fn for_test(external_id: &str) -> Tenant {
        let epoch = chrono::DateTime::UNIX_EPOCH.naive_utc();
        Tenant {
            id: Uuid::nil(),
            external_id: TenantId::from(external_id),
            name: external_id.to_string(),
            jwt_secret: Some(Secret::new("test-secret")),
            jwt_jwks: None,
            postgres_cdc_default: POSTGRES_CDC_RLS.to_string(),
            limits: TenantLimits {
                max_concurrent_users: 200,
                max_events_per_second: 100,
                max_bytes_per_second: 100_000,
                max_channels_per_client: 100,
                max_joins_per_second: 100,
                max_presence_events_per_second: 1000,
                max_payload_size_in_kb: 3000,
                max_client_presence_events_per_window: None,
                client_presence_window_ms: None,
            },
            presence_enabled: false,
            private_only: false,
            suspend: false,
            migrations_ran: 0,
            extensions: Vec::new(),
            inserted_at: epoch,
            updated_at: epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_keys_and_admission_rules_require_a_disconnect() {
        let old = Tenant::for_test("t1");
        let same = old.clone();
        assert!(!old.change_requires_disconnect(&same));

        let mut limits = old.clone();
        limits.limits.max_channels_per_client = 1;
        limits.limits.max_payload_size_in_kb = 1;
        limits.presence_enabled = true;
        limits.name = "renamed".into();
        assert!(!old.change_requires_disconnect(&limits));

        let changes: [fn(&mut Tenant); 4] = [
            |t| t.jwt_secret = Some(Secret::new("another-secret")),
            |t| t.jwt_jwks = Some(json!({"keys": []})),
            |t| t.private_only = true,
            |t| t.suspend = true,
        ];
        for change in changes {
            let mut new = old.clone();
            change(&mut new);
            assert!(old.change_requires_disconnect(&new), "{new:?}");
        }
    }
}
