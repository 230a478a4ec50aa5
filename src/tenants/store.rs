//! SQL on `_realtime.tenants` and `_realtime.extensions`.
//!
//! Every function runs on a caller's transaction, so a multi-statement change (tenant row plus
//! extensions) commits whole or not at all. Values are read and written as stored: encryption
//! and decryption happen in the caller.

use chrono::NaiveDateTime;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::model::TenantLimits;
use super::validation::TenantWrite;
use crate::db::{Json, PgError, Row, Transaction};

/// Columns read for a tenant, in the order [`StoredTenant::from_row`] expects.
const TENANT_COLUMNS: &str = "id, external_id, name, jwt_secret, jwt_jwks, postgres_cdc_default,
    max_concurrent_users, max_events_per_second, max_bytes_per_second, max_channels_per_client,
    max_joins_per_second, max_presence_events_per_second, max_payload_size_in_kb,
    max_client_presence_events_per_window, client_presence_window_ms, presence_enabled,
    private_only, suspend, migrations_ran, inserted_at, updated_at";

/// A tenant row as stored (`jwt_secret` encrypted), with its extension rows.
#[derive(Debug)]
pub(super) struct StoredTenant {
    pub id: Uuid,
    pub external_id: String,
    pub name: String,
    pub jwt_secret: Option<String>,
    pub jwt_jwks: Option<Value>,
    pub postgres_cdc_default: String,
    pub limits: TenantLimits,
    pub presence_enabled: bool,
    pub private_only: bool,
    pub suspend: bool,
    pub migrations_ran: i32,
    pub inserted_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub extensions: Vec<StoredExtension>,
}

/// An extension row as stored.
#[derive(Debug)]
pub(super) struct StoredExtension {
    pub kind: String,
    pub settings: Map<String, Value>,
    pub inserted_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// Reads a nullable int column (older schemas allow nulls) as a limit.
fn limit(row: &Row, column: &str, default: u32) -> u32 {
    row.get::<_, Option<i32>>(column)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
}

impl StoredTenant {
    fn from_row(row: &Row) -> StoredTenant {
        StoredTenant {
            id: row.get("id"),
            external_id: row.get("external_id"),
            name: row.get::<_, Option<String>>("name").unwrap_or_default(),
            jwt_secret: row.get("jwt_secret"),
            jwt_jwks: row.get::<_, Option<Json<Value>>>("jwt_jwks").map(|j| j.0),
            postgres_cdc_default: row
                .get::<_, Option<String>>("postgres_cdc_default")
                .unwrap_or_else(|| super::POSTGRES_CDC_RLS.to_string()),
            limits: TenantLimits {
                max_concurrent_users: limit(row, "max_concurrent_users", 200),
                max_events_per_second: limit(row, "max_events_per_second", 100),
                max_bytes_per_second: limit(row, "max_bytes_per_second", 100_000),
                max_channels_per_client: limit(row, "max_channels_per_client", 100),
                max_joins_per_second: limit(row, "max_joins_per_second", 500),
                max_presence_events_per_second: limit(row, "max_presence_events_per_second", 1000),
                max_payload_size_in_kb: limit(row, "max_payload_size_in_kb", 3000),
                max_client_presence_events_per_window: row
                    .get::<_, Option<i32>>("max_client_presence_events_per_window")
                    .and_then(|v| u32::try_from(v).ok()),
                client_presence_window_ms: row
                    .get::<_, Option<i32>>("client_presence_window_ms")
                    .and_then(|v| u32::try_from(v).ok()),
            },
            presence_enabled: row
                .get::<_, Option<bool>>("presence_enabled")
                .unwrap_or(false),
            private_only: row.get::<_, Option<bool>>("private_only").unwrap_or(false),
            suspend: row.get::<_, Option<bool>>("suspend").unwrap_or(false),
            migrations_ran: row.get::<_, Option<i32>>("migrations_ran").unwrap_or(0),
            inserted_at: row.get("inserted_at"),
            updated_at: row.get("updated_at"),
            extensions: Vec::new(),
        }
    }
}

/// Loads tenants (all when `external_id` is `None`) with their extensions, ordered by
/// `inserted_at`; `lock` takes row locks on the tenant rows until the transaction ends.
pub(super) async fn load(
    tx: &Transaction<'_>,
    external_id: Option<&str>,
    lock: bool,
) -> Result<Vec<StoredTenant>, PgError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let rows = match external_id {
        Some(id) => {
            tx.query(
                &format!(
                    "SELECT {TENANT_COLUMNS} FROM _realtime.tenants WHERE external_id = $1{lock}"
                ),
                &[&id],
            )
            .await?
        }
        None => {
            tx.query(
                &format!(
                    "SELECT {TENANT_COLUMNS} FROM _realtime.tenants \
                     ORDER BY inserted_at, external_id{lock}"
                ),
                &[],
            )
            .await?
        }
    };
    let mut tenants: Vec<StoredTenant> = rows.iter().map(StoredTenant::from_row).collect();
    if tenants.is_empty() {
        return Ok(tenants);
    }
    let ids: Vec<&str> = tenants.iter().map(|t| t.external_id.as_str()).collect();
    let ext_rows = tx
        .query(
            "SELECT tenant_external_id, type, settings, inserted_at, updated_at
             FROM _realtime.extensions WHERE tenant_external_id = ANY($1)
             ORDER BY inserted_at, type",
            &[&ids],
        )
        .await?;
    for row in &ext_rows {
        let owner: String = row.get("tenant_external_id");
        let settings = match row.get::<_, Option<Json<Value>>>("settings") {
            Some(Json(Value::Object(map))) => map,
            _ => Map::new(),
        };
        let extension = StoredExtension {
            kind: row.get::<_, Option<String>>("type").unwrap_or_default(),
            settings,
            inserted_at: row.get("inserted_at"),
            updated_at: row.get("updated_at"),
        };
        if let Some(tenant) = tenants.iter_mut().find(|t| t.external_id == owner) {
            tenant.extensions.push(extension);
        }
    }
    Ok(tenants)
}

fn as_db_int(value: u32) -> i32 {
    // Validation caps limits at i32::MAX; saturate rather than wrap if that ever changes.
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn opt_db_int(value: Option<u32>) -> Option<i32> {
    value.map(as_db_int)
}

/// Inserts a new tenant row; returns false (and writes nothing) when the external id exists.
pub(super) async fn insert_tenant(
    tx: &Transaction<'_>,
    write: &TenantWrite,
    jwt_secret: Option<&str>,
) -> Result<bool, PgError> {
    let l = &write.limits;
    let inserted = tx
        .execute(
            "INSERT INTO _realtime.tenants (id, external_id, name, jwt_secret, jwt_jwks,
                postgres_cdc_default, max_concurrent_users, max_events_per_second,
                max_bytes_per_second, max_channels_per_client, max_joins_per_second,
                max_presence_events_per_second, max_payload_size_in_kb,
                max_client_presence_events_per_window, client_presence_window_ms,
                presence_enabled, private_only, suspend, inserted_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                $18, now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc')
             ON CONFLICT (external_id) DO NOTHING",
            &[
                &Uuid::new_v4(),
                &write.external_id.as_str(),
                &write.name,
                &jwt_secret,
                &write.jwt_jwks.as_ref().map(Json),
                &write.postgres_cdc_default,
                &as_db_int(l.max_concurrent_users),
                &as_db_int(l.max_events_per_second),
                &as_db_int(l.max_bytes_per_second),
                &as_db_int(l.max_channels_per_client),
                &as_db_int(l.max_joins_per_second),
                &as_db_int(l.max_presence_events_per_second),
                &as_db_int(l.max_payload_size_in_kb),
                &opt_db_int(l.max_client_presence_events_per_window),
                &opt_db_int(l.client_presence_window_ms),
                &write.presence_enabled,
                &write.private_only,
                &write.suspend,
            ],
        )
        .await?;
    Ok(inserted == 1)
}

/// Overwrites an existing tenant row with `write`.
pub(super) async fn update_tenant(
    tx: &Transaction<'_>,
    write: &TenantWrite,
    jwt_secret: Option<&str>,
) -> Result<(), PgError> {
    let l = &write.limits;
    tx.execute(
        "UPDATE _realtime.tenants SET name = $2, jwt_secret = $3, jwt_jwks = $4,
            postgres_cdc_default = $5, max_concurrent_users = $6, max_events_per_second = $7,
            max_bytes_per_second = $8, max_channels_per_client = $9, max_joins_per_second = $10,
            max_presence_events_per_second = $11, max_payload_size_in_kb = $12,
            max_client_presence_events_per_window = $13, client_presence_window_ms = $14,
            presence_enabled = $15, private_only = $16, suspend = $17,
            updated_at = now() AT TIME ZONE 'utc'
         WHERE external_id = $1",
        &[
            &write.external_id.as_str(),
            &write.name,
            &jwt_secret,
            &write.jwt_jwks.as_ref().map(Json),
            &write.postgres_cdc_default,
            &as_db_int(l.max_concurrent_users),
            &as_db_int(l.max_events_per_second),
            &as_db_int(l.max_bytes_per_second),
            &as_db_int(l.max_channels_per_client),
            &as_db_int(l.max_joins_per_second),
            &as_db_int(l.max_presence_events_per_second),
            &as_db_int(l.max_payload_size_in_kb),
            &opt_db_int(l.max_client_presence_events_per_window),
            &opt_db_int(l.client_presence_window_ms),
            &write.presence_enabled,
            &write.private_only,
            &write.suspend,
        ],
    )
    .await?;
    Ok(())
}

/// Makes the tenant's extensions exactly `extensions` (type, settings as stored): other types
/// are deleted, existing types updated in place (keeping `inserted_at`), new ones inserted.
pub(super) async fn replace_extensions(
    tx: &Transaction<'_>,
    external_id: &str,
    extensions: &[(String, Map<String, Value>)],
) -> Result<(), PgError> {
    let kinds: Vec<&str> = extensions.iter().map(|(kind, _)| kind.as_str()).collect();
    tx.execute(
        "DELETE FROM _realtime.extensions
         WHERE tenant_external_id = $1 AND NOT (type = ANY($2))",
        &[&external_id, &kinds],
    )
    .await?;
    for (kind, settings) in extensions {
        tx.execute(
            "INSERT INTO _realtime.extensions
                (id, type, settings, tenant_external_id, inserted_at, updated_at)
             VALUES ($1, $2, $3, $4, now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc')
             ON CONFLICT (tenant_external_id, type) DO UPDATE
                SET settings = EXCLUDED.settings, updated_at = EXCLUDED.updated_at",
            &[&Uuid::new_v4(), kind, &Json(settings), &external_id],
        )
        .await?;
    }
    Ok(())
}

/// Deletes a tenant and its extensions; returns whether it existed.
pub(super) async fn delete_tenant(
    tx: &Transaction<'_>,
    external_id: &str,
) -> Result<bool, PgError> {
    // Explicit, in case an older schema lacks the cascading foreign key.
    tx.execute(
        "DELETE FROM _realtime.extensions WHERE tenant_external_id = $1",
        &[&external_id],
    )
    .await?;
    let deleted = tx
        .execute(
            "DELETE FROM _realtime.tenants WHERE external_id = $1",
            &[&external_id],
        )
        .await?;
    Ok(deleted > 0)
}
