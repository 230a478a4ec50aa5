//! Tenant records: the `_realtime.tenants` / `_realtime.extensions` rows, their encrypted
//! secrets, a cache with explicit invalidation, and the self-host seed.
//!
//! [`Tenants`] is the entry type. It owns the SQL (through `db::Db`), decrypts secrets on load,
//! validates and encrypts on write, and announces every change on a broadcast channel
//! ([`Tenants::subscribe`]) that later layers use to disconnect sockets. It knows nothing of
//! HTTP or WebSockets.

mod cache;
mod crypto;
mod model;
mod seed;
mod store;
mod validation;

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::config::{LimitDefaults, Secret, TenantsConfig};
use crate::db::{Db, DbError, PgError};
use crate::error::{ErrorCode, OperationalError};
use crate::types::TenantId;

pub use crypto::{Cipher, CryptoError, InvalidKeyLength};
pub use model::{Extension, POSTGRES_CDC_RLS, Tenant, TenantLimits};
pub use seed::seed_self_host;
pub use validation::{ENCRYPTED_SETTINGS, FieldErrors};

/// How many change events a slow subscriber may lag behind before it misses some.
const EVENT_CAPACITY: usize = 256;
/// Attempts of an upsert that lost a creation race to another writer.
const UPSERT_ATTEMPTS: usize = 3;

/// Errors of tenant operations.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// No tenant with this external id.
    #[error("tenant {0} not found")]
    NotFound(TenantId),
    /// The upsert body broke the rules; nothing was written.
    #[error("invalid tenant: {0:?}")]
    Invalid(FieldErrors),
    /// The metadata database failed; the transaction was rolled back.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A secret could not be encrypted.
    #[error("cannot encrypt a tenant secret: {0}")]
    Encrypt(CryptoError),
    /// A stored secret could not be decrypted (wrong `DB_ENC_KEY`, or a corrupt value).
    #[error("cannot decrypt {field} of tenant {tenant}: {source}")]
    Decrypt {
        /// The tenant.
        tenant: String,
        /// The column or setting.
        field: String,
        /// Why.
        source: CryptoError,
    },
    /// Concurrent writers kept creating the same tenant under this upsert; retry.
    #[error("tenant {0} was changed concurrently")]
    Conflict(TenantId),
    /// A tenant lookup failed; every caller that waited for the same load gets this cause.
    #[error("tenant lookup failed: {0}")]
    Lookup(Arc<TenantsError>),
    /// An extension lacks a DB setting or holds an unusable one.
    #[error("extension setting {field} of tenant {tenant} is missing or invalid")]
    BadSetting {
        /// The tenant.
        tenant: String,
        /// The setting.
        field: &'static str,
    },
}

impl From<PgError> for TenantsError {
    fn from(err: PgError) -> Self {
        TenantsError::Db(DbError::from(err))
    }
}

impl OperationalError for TenantsError {
    fn code(&self) -> ErrorCode {
        match self {
            TenantsError::NotFound(_) => ErrorCode::TenantNotFound,
            TenantsError::Invalid(_) => ErrorCode::UnprocessableEntity,
            TenantsError::Db(err) => err.code(),
            TenantsError::Conflict(_) => ErrorCode::MetadataDatabaseError,
            TenantsError::Encrypt(_) => ErrorCode::EncryptionError,
            TenantsError::Decrypt { .. } => ErrorCode::DecryptionError,
            TenantsError::BadSetting { .. } => ErrorCode::InvalidConfiguration,
            TenantsError::Lookup(cause) => cause.code(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            TenantsError::NotFound(_) => "Tenant not found".into(),
            TenantsError::Invalid(_) => "invalid tenant".into(),
            TenantsError::Db(err) => err.client_message(),
            TenantsError::Conflict(_) => "tenant was changed concurrently, retry".into(),
            TenantsError::Encrypt(_) => "unable to encrypt tenant secrets".into(),
            TenantsError::Decrypt { .. } => "unable to decrypt tenant secrets".into(),
            TenantsError::BadSetting { .. } => "invalid tenant extension settings".into(),
            TenantsError::Lookup(cause) => cause.client_message(),
        }
    }
}

/// What happened to a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantChange {
    /// Created by an upsert or the seed.
    Created,
    /// Updated by an upsert.
    Updated,
    /// Deleted.
    Deleted,
    /// `POST /api/tenants/:id/reload`: drop connections and sockets, reload the record.
    Reloaded,
    /// `POST /api/tenants/:id/shutdown`: drop the tenant's database connections.
    Shutdown,
}

/// Where a tenant change was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOrigin {
    /// On this node (API write, seed, reload): the cluster layer forwards it to peers.
    Local,
    /// On another node, applied here by [`Tenants::apply_remote`]: never forwarded again.
    Peer,
}

/// A tenant change announced to subscribers, after it was committed.
#[derive(Clone, Debug)]
pub struct TenantEvent {
    /// The tenant.
    pub tenant: TenantId,
    /// The change.
    pub change: TenantChange,
    /// Whether the tenant's sockets must close (PROTOCOL.md 1.7): deleted, reloaded, or updated
    /// in `jwt_secret`, `jwt_jwks`, `private_only` or `suspend`
    /// ([`Tenant::change_requires_disconnect`]).
    pub disconnect: bool,
    /// The record after the change, when the tenant still exists and it was at hand; open
    /// sockets of an update without disconnect switch to it.
    pub record: Option<Arc<Tenant>>,
    /// Where the change was made.
    pub origin: EventOrigin,
}

impl TenantEvent {
    /// Builds a local event of `change`, with the disconnect rule of that change kind (an
    /// update's depends on the records: see [`TenantEvent::updated`]).
    fn local(tenant: TenantId, change: TenantChange, record: Option<Arc<Tenant>>) -> TenantEvent {
        TenantEvent {
            tenant,
            change,
            disconnect: matches!(change, TenantChange::Deleted | TenantChange::Reloaded),
            record,
            origin: EventOrigin::Local,
        }
    }

    /// Builds the local event of an update from the record before and after it.
    fn updated(old: &Tenant, new: Arc<Tenant>) -> TenantEvent {
        TenantEvent {
            tenant: new.external_id.clone(),
            change: TenantChange::Updated,
            disconnect: old.change_requires_disconnect(&new),
            record: Some(new),
            origin: EventOrigin::Local,
        }
    }
}

/// Decrypted connection settings of a tenant database (from a `postgres_cdc_rls` extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDbSettings {
    /// `db_host`.
    pub host: String,
    /// `db_port`.
    pub port: u16,
    /// `db_name`.
    pub name: String,
    /// `db_user`.
    pub user: String,
    /// `db_password`.
    pub password: Secret,
    /// `region`.
    pub region: Option<String>,
    /// `ssl_enforced` (default true).
    pub ssl_enforced: bool,
    /// `publication`.
    pub publication: String,
    /// `slot_name`.
    pub slot_name: String,
}

/// The tenant registry: cached reads, transactional writes, change events.
///
/// Cheap to clone: clones share the cache and the event channel.
#[derive(Clone, Debug)]
pub struct Tenants {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Db,
    cipher: Cipher,
    defaults: LimitDefaults,
    cache: cache::TenantCache,
    events: broadcast::Sender<TenantEvent>,
}

/// Whether a write may update an existing tenant.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteMode {
    Upsert,
    CreateOnly,
}

impl Tenants {
    /// Builds the registry over the metadata database.
    ///
    /// `config` sets the cache lifetimes; `defaults` fill unset limits on writes and null limit
    /// columns on reads.
    pub fn new(db: Db, cipher: Cipher, defaults: LimitDefaults, config: &TenantsConfig) -> Tenants {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Tenants {
            inner: Arc::new(Inner {
                db,
                cipher,
                defaults,
                cache: cache::TenantCache::new(
                    config.cache_expiration,
                    config.not_found_expiration,
                ),
                events,
            }),
        }
    }

    /// Subscribes to tenant change events (sent after the change is committed).
    pub fn subscribe(&self) -> broadcast::Receiver<TenantEvent> {
        self.inner.events.subscribe()
    }

    /// Returns a tenant by external id, from the cache when fresh (found tenants and unknown
    /// ids both are cached; see `cache.rs`). Concurrent misses of one id make one query.
    ///
    /// # Errors
    /// [`TenantsError::Lookup`] wrapping the database or decryption error of the load (shared
    /// by every caller that waited for it); `DB_QUERY_TIMEOUT_MS` bounds the query.
    pub async fn get(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, TenantsError> {
        self.inner
            .cache
            .get_or_load(id, || self.load(id))
            .await
            .map_err(TenantsError::Lookup)
    }

    /// Returns how many single-tenant loads the cache has sent to the metadata database.
    pub fn cache_loads(&self) -> u64 {
        self.inner.cache.loads()
    }

    async fn load(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, TenantsError> {
        let mut client = self.inner.db.client().await?;
        let tx = client.transaction().await?;
        let stored = store::load(&tx, Some(id.as_str()), false, &self.inner.defaults).await?;
        tx.commit().await?;
        match stored.into_iter().next() {
            Some(stored) => Ok(Some(Arc::new(self.decrypt(stored)?))),
            None => Ok(None),
        }
    }

    /// Returns the tenant a `Host` header value names (its first label): the tenant routing of
    /// every edge (PROTOCOL.md 1.3).
    ///
    /// When no tenant has that id, a Host that cannot name a tenant (an IP literal or a single
    /// label such as `localhost`; [`TenantId::host_can_name_tenant`]) gets the `fallback`
    /// tenant (`FALLBACK_TENANT`) if there is one. A name of two labels or more whose first
    /// label names no tenant (`typo.example.com`) gets `None`, as in the original.
    ///
    /// # Errors
    /// As [`Tenants::get`].
    pub async fn resolve_host(
        &self,
        host: &str,
        fallback: Option<&TenantId>,
    ) -> Result<Option<Arc<Tenant>>, TenantsError> {
        if let Some(tenant) = self.get(&TenantId::from_host(host)).await? {
            return Ok(Some(tenant));
        }
        match fallback {
            Some(id) if !TenantId::host_can_name_tenant(host) => self.get(id).await,
            _ => Ok(None),
        }
    }

    /// Returns every tenant, oldest first (not cached).
    ///
    /// # Errors
    /// [`TenantsError::Db`] or [`TenantsError::Decrypt`].
    pub async fn list(&self) -> Result<Vec<Tenant>, TenantsError> {
        let mut client = self.inner.db.client().await?;
        let tx = client.transaction().await?;
        let stored = store::load(&tx, None, false, &self.inner.defaults).await?;
        tx.commit().await?;
        stored.into_iter().map(|s| self.decrypt(s)).collect()
    }

    /// Creates or updates a tenant from an API body (`{"tenant": {...}}`) in one transaction.
    ///
    /// `path_id` is the id of `PUT/PATCH /api/tenants/:id`; `None` takes `tenant.external_id`.
    /// Returns the stored tenant and whether it was created.
    ///
    /// # Errors
    /// [`TenantsError::Invalid`] with every field error (nothing written), or a database or
    /// encryption error (the transaction is rolled back).
    pub async fn upsert(
        &self,
        path_id: Option<&TenantId>,
        body: &Value,
    ) -> Result<(Arc<Tenant>, bool), TenantsError> {
        let id = path_id.cloned().unwrap_or_else(|| TenantId::from(""));
        // Upsert mode returns `None` only if the row vanished between insert race and retry.
        self.write(path_id, body, WriteMode::Upsert)
            .await?
            .ok_or(TenantsError::Conflict(id))
    }

    /// Creates a tenant from an API body only if its external id is free; returns whether it did.
    ///
    /// Safe against concurrent callers: exactly one of them creates it.
    ///
    /// # Errors
    /// As [`Tenants::upsert`].
    pub async fn create_if_missing(&self, body: &Value) -> Result<bool, TenantsError> {
        Ok(self
            .write(None, body, WriteMode::CreateOnly)
            .await?
            .is_some())
    }

    async fn write(
        &self,
        path_id: Option<&TenantId>,
        body: &Value,
        mode: WriteMode,
    ) -> Result<Option<(Arc<Tenant>, bool)>, TenantsError> {
        let lookup_id = path_id.map(|id| id.as_str().to_string()).or_else(|| {
            body.get("tenant")
                .and_then(|t| t.get("external_id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        for _ in 0..UPSERT_ATTEMPTS {
            let mut client = self.inner.db.client().await?;
            let tx = client.transaction().await?;
            let existing = match &lookup_id {
                Some(id) => store::load(&tx, Some(id), true, &self.inner.defaults)
                    .await?
                    .into_iter()
                    .next(),
                None => None,
            };
            if existing.is_some() && mode == WriteMode::CreateOnly {
                return Ok(None);
            }
            let existing = existing.map(|s| self.decrypt(s)).transpose()?;
            let write = validation::validate_upsert(
                body,
                path_id.map(TenantId::as_str),
                existing.as_ref(),
                &self.inner.defaults,
            )
            .map_err(TenantsError::Invalid)?;
            let jwt_secret = write
                .jwt_secret
                .as_deref()
                .map(|s| self.inner.cipher.encrypt(s))
                .transpose()
                .map_err(TenantsError::Encrypt)?;
            let created = existing.is_none();
            if created {
                if !store::insert_tenant(&tx, &write, jwt_secret.as_deref()).await? {
                    // Another writer created it after our read: start over (or stop, if we
                    // only create).
                    tx.rollback().await?;
                    if mode == WriteMode::CreateOnly {
                        return Ok(None);
                    }
                    continue;
                }
            } else {
                store::update_tenant(&tx, &write, jwt_secret.as_deref()).await?;
            }
            if let Some(extensions) = &write.extensions {
                let mut encrypted = Vec::with_capacity(extensions.len());
                for extension in extensions {
                    let mut settings = extension.settings.clone();
                    for key in ENCRYPTED_SETTINGS {
                        if let Some(Value::String(plain)) = settings.get(key) {
                            let sealed = self
                                .inner
                                .cipher
                                .encrypt(plain)
                                .map_err(TenantsError::Encrypt)?;
                            settings.insert(key.to_string(), Value::String(sealed));
                        }
                    }
                    encrypted.push((extension.kind.clone(), settings));
                }
                store::replace_extensions(&tx, write.external_id.as_str(), &encrypted).await?;
            }
            let stored = store::load(
                &tx,
                Some(write.external_id.as_str()),
                false,
                &self.inner.defaults,
            )
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| TenantsError::NotFound(write.external_id.clone()))?;
            // Decrypted before commit, so the event compares the row locked above with the row
            // written here, inside the transaction.
            let tenant = Arc::new(self.decrypt(stored)?);
            let event = match &existing {
                None => TenantEvent::local(
                    tenant.external_id.clone(),
                    TenantChange::Created,
                    Some(tenant.clone()),
                ),
                Some(old) => TenantEvent::updated(old, tenant.clone()),
            };
            tx.commit().await?;
            self.invalidate_and_announce(event);
            return Ok(Some((tenant, created)));
        }
        Err(TenantsError::Conflict(TenantId::new(
            lookup_id.unwrap_or_default(),
        )))
    }

    /// Deletes a tenant and its extensions; returns whether it existed.
    ///
    /// # Errors
    /// [`TenantsError::Db`] (nothing deleted).
    pub async fn delete(&self, id: &TenantId) -> Result<bool, TenantsError> {
        let mut client = self.inner.db.client().await?;
        let tx = client.transaction().await?;
        let existed = store::delete_tenant(&tx, id.as_str()).await?;
        tx.commit().await?;
        if existed {
            self.invalidate_and_announce(TenantEvent::local(
                id.clone(),
                TenantChange::Deleted,
                None,
            ));
        }
        Ok(existed)
    }

    /// Drops the cached record and announces `change` (reload, shutdown) if the tenant exists.
    ///
    /// # Errors
    /// [`TenantsError::NotFound`], or the errors of [`Tenants::get`].
    pub async fn signal(&self, id: &TenantId, change: TenantChange) -> Result<(), TenantsError> {
        self.inner.cache.invalidate(id);
        let Some(record) = self.get(id).await? else {
            return Err(TenantsError::NotFound(id.clone()));
        };
        self.invalidate_and_announce(TenantEvent::local(id.clone(), change, Some(record)));
        Ok(())
    }

    /// Applies a tenant change made on another node (received over the cluster bus): drops the
    /// cached record, reloads it when the tenant still exists, and announces the event to this
    /// node's subscribers with origin [`EventOrigin::Peer`], so the bus layer does not forward
    /// it again. `event.record` and `event.origin` as received are ignored; the record comes
    /// from this node's own read of the metadata database.
    ///
    /// # Errors
    /// The errors of [`Tenants::get`]; the cached entry is dropped and nothing is announced.
    pub async fn apply_remote(&self, event: TenantEvent) -> Result<(), TenantsError> {
        self.inner.cache.invalidate(&event.tenant);
        let record = if event.change == TenantChange::Deleted {
            None
        } else {
            self.get(&event.tenant).await?
        };
        self.send(TenantEvent {
            record,
            origin: EventOrigin::Peer,
            ..event
        });
        Ok(())
    }

    /// Decrypts the DB settings of an extension of `tenant` (`postgres_cdc_rls`).
    ///
    /// # Errors
    /// [`TenantsError::Decrypt`] or [`TenantsError::BadSetting`].
    pub fn db_settings(
        &self,
        tenant: &Tenant,
        extension: &Extension,
    ) -> Result<TenantDbSettings, TenantsError> {
        let s = &extension.settings;
        let bad = |field| TenantsError::BadSetting {
            tenant: tenant.external_id.to_string(),
            field,
        };
        let secret = |field: &'static str| -> Result<String, TenantsError> {
            let stored = s
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(field))?;
            self.inner
                .cipher
                .decrypt(stored)
                .map_err(|source| TenantsError::Decrypt {
                    tenant: tenant.external_id.to_string(),
                    field: field.to_string(),
                    source,
                })
        };
        let text = |field: &str, default: &str| {
            s.get(field)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        Ok(TenantDbSettings {
            host: secret("db_host")?,
            port: secret("db_port")?
                .trim()
                .parse()
                .map_err(|_| bad("db_port"))?,
            name: secret("db_name")?,
            user: secret("db_user")?,
            password: Secret::new(secret("db_password")?),
            region: s.get("region").and_then(Value::as_str).map(str::to_string),
            ssl_enforced: s
                .get("ssl_enforced")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            publication: text("publication", "supabase_realtime"),
            slot_name: text("slot_name", "supabase_realtime_replication_slot"),
        })
    }

    fn invalidate_and_announce(&self, event: TenantEvent) {
        self.inner.cache.invalidate(&event.tenant);
        self.send(event);
    }

    fn send(&self, event: TenantEvent) {
        // An error only means nobody is subscribed yet.
        let _ = self.inner.events.send(event);
    }

    fn decrypt(&self, stored: store::StoredTenant) -> Result<Tenant, TenantsError> {
        let jwt_secret = stored
            .jwt_secret
            .as_deref()
            .map(|value| {
                self.inner
                    .cipher
                    .decrypt(value)
                    .map_err(|source| TenantsError::Decrypt {
                        tenant: stored.external_id.clone(),
                        field: "jwt_secret".into(),
                        source,
                    })
            })
            .transpose()?
            .map(Secret::new);
        Ok(Tenant {
            id: stored.id,
            external_id: TenantId::new(stored.external_id),
            name: stored.name,
            jwt_secret,
            jwt_jwks: stored.jwt_jwks,
            postgres_cdc_default: stored.postgres_cdc_default,
            limits: stored.limits,
            presence_enabled: stored.presence_enabled,
            private_only: stored.private_only,
            suspend: stored.suspend,
            migrations_ran: stored.migrations_ran,
            extensions: stored
                .extensions
                .into_iter()
                .map(|e| Extension {
                    kind: e.kind,
                    settings: e.settings,
                    inserted_at: e.inserted_at,
                    updated_at: e.updated_at,
                })
                .collect(),
            inserted_at: stored.inserted_at,
            updated_at: stored.updated_at,
        })
    }
}
