//! Tenant records: the `_realtime.tenants` / `_realtime.extensions` rows, their encrypted
//! secrets, a cache with explicit invalidation, and the self-host seed.

mod model;

pub use model::{Extension, POSTGRES_CDC_RLS, Tenant, TenantLimits};
