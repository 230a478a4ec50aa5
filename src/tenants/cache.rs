//! A cache of tenant records keyed by external id, with a time-to-live and explicit invalidation.
//!
//! Only found tenants are cached, so a tenant created on another node is visible at once; an
//! update made elsewhere is visible after at most the TTL (`TENANT_CACHE_EXPIRATION_IN_MS`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::Tenant;
use crate::types::TenantId;

/// Cached tenants with their load time.
#[derive(Debug)]
pub(super) struct TenantCache {
    ttl: Duration,
    // std Mutex: every section is a short map operation with no `.await` inside.
    state: Mutex<CacheState>,
}

#[derive(Debug, Default)]
struct CacheState {
    entries: HashMap<TenantId, (Instant, Arc<Tenant>)>,
    /// Bumped by every invalidation, so a load that raced with one is not cached.
    generation: u64,
}

impl TenantCache {
    pub(super) fn new(ttl: Duration) -> TenantCache {
        TenantCache {
            ttl,
            state: Mutex::new(CacheState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns a fresh entry, if any.
    pub(super) fn get(&self, id: &TenantId, now: Instant) -> Option<Arc<Tenant>> {
        let mut state = self.lock();
        match state.entries.get(id) {
            Some((at, tenant)) if now.duration_since(*at) < self.ttl => Some(tenant.clone()),
            Some(_) => {
                state.entries.remove(id);
                None
            }
            None => None,
        }
    }

    /// Returns the generation to pass to [`TenantCache::insert`] after a load.
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches a loaded tenant unless an invalidation happened since `generation` was read.
    pub(super) fn insert(&self, tenant: Arc<Tenant>, generation: u64, now: Instant) {
        let mut state = self.lock();
        if state.generation == generation {
            state
                .entries
                .insert(tenant.external_id.clone(), (now, tenant));
        }
    }

    /// Drops the entry of `id`.
    pub(super) fn invalidate(&self, id: &TenantId) {
        let mut state = self.lock();
        state.generation += 1;
        state.entries.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = TenantCache::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let id = TenantId::from("t1");
        cache.insert(Arc::new(Tenant::for_test("t1")), cache.generation(), t0);
        assert!(cache.get(&id, t0 + Duration::from_secs(29)).is_some());
        assert!(cache.get(&id, t0 + Duration::from_secs(30)).is_none());
        assert!(cache.get(&id, t0).is_none(), "expired entries are removed");
    }

    #[test]
    fn invalidation_removes_and_blocks_a_racing_insert() {
        let cache = TenantCache::new(Duration::from_secs(30));
        let now = Instant::now();
        let id = TenantId::from("t1");
        cache.insert(Arc::new(Tenant::for_test("t1")), cache.generation(), now);
        let before_load = cache.generation();
        cache.invalidate(&id);
        assert!(cache.get(&id, now).is_none());
        cache.insert(Arc::new(Tenant::for_test("t1")), before_load, now);
        assert!(
            cache.get(&id, now).is_none(),
            "stale load must not be cached"
        );
    }
}
