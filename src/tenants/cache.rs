//! A cache of tenant lookups keyed by external id: found tenants and "no such tenant" answers,
//! each with its own time-to-live, explicit invalidation, and one load per key at a time.
//!
//! * Found tenants live `TENANT_CACHE_EXPIRATION_IN_MS`; an update made on another node is seen
//!   after at most that (or at once, through [`super::Tenants::apply_remote`]).
//! * Unknown ids live `TENANT_NOT_FOUND_CACHE_IN_MS`, so random `Host` values do not each cost a
//!   query. At most [`MAX_ENTRIES`] entries are kept: past that, expired entries are swept, and
//!   if the map is still full a "not found" answer is not cached.
//! * Single flight: concurrent misses of one id wait for the first caller's load and share its
//!   answer (or its error). A leader that is cancelled (its request went away) hands the load to
//!   the next waiter.
//! * A write invalidates the id and bumps a generation, so a load that raced with the write does
//!   not put the older answer back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::TenantsError;
use super::model::Tenant;
use crate::types::TenantId;

/// Entries kept before expired ones are swept; beyond it, unknown ids are not cached.
pub(super) const MAX_ENTRIES: usize = 10_000;

/// The answer of one load, shared by everyone who waited for it.
pub(super) type Shared = Result<Option<Arc<Tenant>>, Arc<TenantsError>>;

/// Cached tenant lookups with their load time.
#[derive(Debug)]
pub(super) struct TenantCache {
    ttl: Duration,
    not_found_ttl: Duration,
    // std Mutex: every section is a short map operation with no `.await` inside.
    state: Mutex<CacheState>,
    loads: AtomicU64,
}

#[derive(Debug, Default)]
struct CacheState {
    /// `None` records a lookup that found no tenant.
    entries: HashMap<TenantId, (Instant, Option<Arc<Tenant>>)>,
    /// Bumped by every invalidation, so a load that raced with one is not cached.
    generation: u64,
    /// Loads in progress: the flight's number and where its answer will appear.
    flights: HashMap<TenantId, (u64, watch::Receiver<Option<Shared>>)>,
    next_flight: u64,
}

/// What a caller does after looking at the state.
enum Role {
    Follow(watch::Receiver<Option<Shared>>),
    Lead {
        answer: watch::Sender<Option<Shared>>,
        flight: u64,
        generation: u64,
    },
}

/// Removes a flight from the map when its leader finishes or is cancelled.
struct FlightGuard<'a> {
    cache: &'a TenantCache,
    id: &'a TenantId,
    flight: u64,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if state.flights.get(self.id).map(|(n, _)| *n) == Some(self.flight) {
            state.flights.remove(self.id);
        }
    }
}

impl TenantCache {
    /// Builds an empty cache: found tenants live `ttl`, "not found" answers `not_found_ttl`.
    pub(super) fn new(ttl: Duration, not_found_ttl: Duration) -> TenantCache {
        TenantCache {
            ttl,
            not_found_ttl,
            state: Mutex::new(CacheState::default()),
            loads: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // A panic while holding this lock cannot leave the maps inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the number of loads this cache started (metadata queries for single tenants).
    pub(super) fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Returns a fresh answer, if any: `Some(None)` is a cached "no such tenant".
    #[cfg(test)]
    fn get(&self, id: &TenantId, now: Instant) -> Option<Option<Arc<Tenant>>> {
        self.lock().fresh(id, now, self.ttl, self.not_found_ttl)
    }

    /// Returns the cached answer for `id`, or runs `load` once for every concurrent caller
    /// that misses and caches its answer.
    ///
    /// # Errors
    /// The error of the load this call ran or waited for (not cached).
    pub(super) async fn get_or_load<F, Fut>(&self, id: &TenantId, load: F) -> Shared
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<Arc<Tenant>>, TenantsError>>,
    {
        let mut load = Some(load);
        loop {
            let role = {
                let mut state = self.lock();
                if let Some(hit) = state.fresh(id, Instant::now(), self.ttl, self.not_found_ttl) {
                    return Ok(hit);
                }
                match state.flights.get(id) {
                    Some((_, answer)) => Role::Follow(answer.clone()),
                    None => {
                        let (answer, receiver) = watch::channel(None);
                        state.next_flight += 1;
                        let flight = state.next_flight;
                        state.flights.insert(id.clone(), (flight, receiver));
                        Role::Lead {
                            answer,
                            flight,
                            generation: state.generation,
                        }
                    }
                }
            };
            match role {
                Role::Follow(mut answer) => {
                    if let Ok(shared) = answer.wait_for(Option::is_some).await
                        && let Some(shared) = shared.as_ref()
                    {
                        return shared.clone();
                    }
                    // The leader was cancelled before answering: look again (maybe lead).
                }
                Role::Lead {
                    answer,
                    flight,
                    generation,
                } => {
                    let guard = FlightGuard {
                        cache: self,
                        id,
                        flight,
                    };
                    // Present on the first `Lead`: a caller leads at most once, since leading
                    // always returns.
                    let Some(load) = load.take() else {
                        return Ok(None);
                    };
                    self.loads.fetch_add(1, Ordering::Relaxed);
                    let shared = load().await.map_err(Arc::new);
                    if let Ok(tenant) = &shared {
                        self.insert(id, tenant.clone(), generation, Instant::now());
                    }
                    // Leave the flight before answering: a caller arriving now finds the entry.
                    drop(guard);
                    // Err only means nobody waited.
                    let _ = answer.send(Some(shared.clone()));
                    return shared;
                }
            }
        }
    }

    /// Caches a lookup's answer unless an invalidation happened since `generation` was read.
    fn insert(&self, id: &TenantId, tenant: Option<Arc<Tenant>>, generation: u64, now: Instant) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            let (ttl, not_found_ttl) = (self.ttl, self.not_found_ttl);
            state.entries.retain(|_, (at, tenant)| {
                let lifetime = if tenant.is_some() { ttl } else { not_found_ttl };
                now.duration_since(*at) < lifetime
            });
            if tenant.is_none() && state.entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        state.entries.insert(id.clone(), (now, tenant));
    }

    /// Drops the entry of `id` (found or not) and keeps racing loads from caching.
    pub(super) fn invalidate(&self, id: &TenantId) {
        let mut state = self.lock();
        state.generation += 1;
        state.entries.remove(id);
    }
}

impl CacheState {
    fn fresh(
        &mut self,
        id: &TenantId,
        now: Instant,
        ttl: Duration,
        not_found_ttl: Duration,
    ) -> Option<Option<Arc<Tenant>>> {
        let (at, tenant) = self.entries.get(id)?;
        let lifetime = if tenant.is_some() { ttl } else { not_found_ttl };
        if now.duration_since(*at) < lifetime {
            return Some(tenant.clone());
        }
        self.entries.remove(id);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> TenantCache {
        TenantCache::new(Duration::from_secs(30), Duration::from_secs(1))
    }

    fn tenant(id: &str) -> Option<Arc<Tenant>> {
        Some(Arc::new(Tenant::for_test(id)))
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = cache();
        let t0 = Instant::now();
        let id = TenantId::from("t1");
        cache.insert(&id, tenant("t1"), 0, t0);
        assert!(cache.get(&id, t0 + Duration::from_secs(29)).is_some());
        assert!(cache.get(&id, t0 + Duration::from_secs(30)).is_none());
        assert!(cache.get(&id, t0).is_none(), "expired entries are removed");
    }

    #[test]
    fn not_found_answers_expire_after_their_own_ttl() {
        let cache = cache();
        let t0 = Instant::now();
        let id = TenantId::from("nobody");
        cache.insert(&id, None, 0, t0);
        assert_eq!(
            cache
                .get(&id, t0 + Duration::from_millis(999))
                .map(|t| t.is_none()),
            Some(true),
            "a fresh negative entry answers 'no such tenant'"
        );
        assert!(cache.get(&id, t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn invalidation_removes_and_blocks_a_racing_insert() {
        let cache = cache();
        let now = Instant::now();
        let id = TenantId::from("t1");
        cache.insert(&id, tenant("t1"), 0, now);
        let before_load = cache.lock().generation;
        cache.invalidate(&id);
        assert!(cache.get(&id, now).is_none());
        cache.insert(&id, tenant("t1"), before_load, now);
        assert!(
            cache.get(&id, now).is_none(),
            "stale load must not be cached"
        );
    }

    #[test]
    fn a_full_map_sweeps_expired_entries_and_stops_caching_unknown_ids() {
        let cache = cache();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES {
            cache.insert(&TenantId::new(format!("x{i}")), None, 0, t0);
        }
        let later = t0 + Duration::from_secs(2);
        cache.insert(&TenantId::from("fresh"), None, 0, later);
        assert_eq!(cache.lock().entries.len(), 1, "expired answers were swept");

        for i in 0..MAX_ENTRIES {
            cache.insert(&TenantId::new(format!("y{i}")), None, 0, later);
        }
        cache.insert(&TenantId::from("one-more"), None, 0, later);
        assert!(cache.get(&TenantId::from("one-more"), later).is_none());
        cache.insert(&TenantId::from("t1"), tenant("t1"), 0, later);
        assert!(
            cache.get(&TenantId::from("t1"), later).is_some(),
            "found tenants are always cached"
        );
    }

    /// Concurrent misses share one load; a cancelled leader hands the load on.
    #[tokio::test]
    async fn concurrent_misses_share_one_load_and_survive_a_cancelled_leader() {
        let cache = Arc::new(cache());
        let id = TenantId::from("t1");
        let (release, released) = watch::channel(false);
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let (cache, id, mut released) = (cache.clone(), id.clone(), released.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(&id, || async move {
                            let _ = released.wait_for(|r| *r).await;
                            Ok(tenant("t1"))
                        })
                        .await
                })
            })
            .collect();
        while cache.loads() == 0 {
            tokio::task::yield_now().await;
        }
        let _ = release.send(true);
        for waiter in waiters {
            let answer = waiter.await.unwrap().unwrap();
            assert_eq!(answer.unwrap().external_id.as_str(), "t1");
        }
        assert_eq!(cache.loads(), 1);

        let other = TenantId::from("t2");
        let leader = {
            let (cache, other) = (cache.clone(), other.clone());
            tokio::spawn(async move { cache.get_or_load(&other, std::future::pending).await })
        };
        while cache.loads() == 1 {
            tokio::task::yield_now().await;
        }
        let follower = {
            let (cache, other) = (cache.clone(), other.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&other, || async { Ok(tenant("t2")) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let answer = follower.await.unwrap().unwrap();
        assert_eq!(answer.unwrap().external_id.as_str(), "t2");
        assert_eq!(cache.loads(), 3);
    }
}
