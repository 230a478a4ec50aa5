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
use crate::config::LimitDefaults;
use crate::db::{Json, PgError, Row, ToSql, Transaction};

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

/// Reads a nullable int column (older schemas allow nulls) as a limit; null takes the node's
/// default, the same one a write would have filled in.
fn limit(row: &Row, column: &str, default: u32) -> u32 {
    row.get::<_, Option<i32>>(column)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
}

impl StoredTenant {
    fn from_row(row: &Row, defaults: &LimitDefaults) -> StoredTenant {
        let d = defaults;
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
                max_concurrent_users: limit(row, "max_concurrent_users", d.max_concurrent_users),
                max_events_per_second: limit(row, "max_events_per_second", d.max_events_per_second),
                max_bytes_per_second: limit(row, "max_bytes_per_second", d.max_bytes_per_second),
                max_channels_per_client: limit(
                    row,
                    "max_channels_per_client",
                    d.max_channels_per_client,
                ),
                max_joins_per_second: limit(row, "max_joins_per_second", d.max_joins_per_second),
                max_presence_events_per_second: limit(
                    row,
                    "max_presence_events_per_second",
                    d.max_presence_events_per_second,
                ),
                max_payload_size_in_kb: limit(
                    row,
                    "max_payload_size_in_kb",
                    d.max_payload_size_in_kb,
                ),
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
/// `inserted_at`; `lock` takes row locks on the tenant rows until the transaction ends. Null
/// limits take `defaults`.
pub(super) async fn load(
    tx: &Transaction<'_>,
    external_id: Option<&str>,
    lock: bool,
    defaults: &LimitDefaults,
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
    let mut tenants: Vec<StoredTenant> = rows
        .iter()
        .map(|row| StoredTenant::from_row(row, defaults))
        .collect();
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

/// The column values of a tenant write, converted once for both INSERT and UPDATE.
struct TenantValues<'a> {
    write: &'a TenantWrite,
    external_id: &'a str,
    jwt_secret: Option<&'a str>,
    jwks: Option<Json<&'a Value>>,
    limits: [i32; 7],
    presence_window: [Option<i32>; 2],
}

impl<'a> TenantValues<'a> {
    fn new(write: &'a TenantWrite, jwt_secret: Option<&'a str>) -> Self {
        let l = &write.limits;
        TenantValues {
            write,
            external_id: write.external_id.as_str(),
            jwt_secret,
            jwks: write.jwt_jwks.as_ref().map(Json),
            limits: [
                l.max_concurrent_users,
                l.max_events_per_second,
                l.max_bytes_per_second,
                l.max_channels_per_client,
                l.max_joins_per_second,
                l.max_presence_events_per_second,
                l.max_payload_size_in_kb,
            ]
            .map(as_db_int),
            presence_window: [
                l.max_client_presence_events_per_window,
                l.client_presence_window_ms,
            ]
            .map(opt_db_int),
        }
    }

    /// Parameters `$1..$17` of [`WRITE_COLUMNS`], in order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.external_id,
            &self.write.name,
            &self.jwt_secret,
            &self.jwks,
            &self.write.postgres_cdc_default,
        ];
        params.extend(self.limits.iter().map(|v| v as &(dyn ToSql + Sync)));
        params.extend(
            self.presence_window
                .iter()
                .map(|v| v as &(dyn ToSql + Sync)),
        );
        params.extend([
            &self.write.presence_enabled as &(dyn ToSql + Sync),
            &self.write.private_only,
            &self.write.suspend,
        ]);
        params
    }
}

/// The columns a tenant write sets, in the order of [`TenantValues::params`].
const WRITE_COLUMNS: [&str; 17] = [
    "external_id",
    "name",
    "jwt_secret",
    "jwt_jwks",
    "postgres_cdc_default",
    "max_concurrent_users",
    "max_events_per_second",
    "max_bytes_per_second",
    "max_channels_per_client",
    "max_joins_per_second",
    "max_presence_events_per_second",
    "max_payload_size_in_kb",
    "max_client_presence_events_per_window",
    "client_presence_window_ms",
    "presence_enabled",
    "private_only",
    "suspend",
];

/// Inserts a new tenant row; returns false (and writes nothing) when the external id exists.
pub(super) async fn insert_tenant(
    tx: &Transaction<'_>,
    write: &TenantWrite,
    jwt_secret: Option<&str>,
) -> Result<bool, PgError> {
    let values = TenantValues::new(write, jwt_secret);
    let id = Uuid::new_v4();
    let mut params = values.params();
    params.push(&id);
    let placeholders: Vec<String> = (1..=WRITE_COLUMNS.len() + 1)
        .map(|i| format!("${i}"))
        .collect();
    let sql = format!(
        "INSERT INTO _realtime.tenants ({}, id, inserted_at, updated_at)
         VALUES ({}, now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc')
         ON CONFLICT (external_id) DO NOTHING",
        WRITE_COLUMNS.join(", "),
        placeholders.join(", ")
    );
    let inserted = tx.execute(&sql, &params).await?;
    Ok(inserted == 1)
}

/// Overwrites an existing tenant row with `write`.
pub(super) async fn update_tenant(
    tx: &Transaction<'_>,
    write: &TenantWrite,
    jwt_secret: Option<&str>,
) -> Result<(), PgError> {
    let values = TenantValues::new(write, jwt_secret);
    // `external_id` ($1) identifies the row; every other column is set.
    let set: Vec<String> = WRITE_COLUMNS
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, column)| format!("{column} = ${}", i + 1))
        .collect();
    let sql = format!(
        "UPDATE _realtime.tenants SET {}, updated_at = now() AT TIME ZONE 'utc'
         WHERE external_id = $1",
        set.join(", ")
    );
    tx.execute(&sql, &values.params()).await?;
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
