//! Per-tenant rate limits and per-client flood limits (PROTOCOL.md 5.4, 12.1, 12.2).
//!
//! Owns the counters that decide whether a handshake, join, broadcast, presence event or HTTP
//! request is allowed, and the `LimitExceeded` error carrying the code and client text the edges
//! send. Pure logic: no I/O, no tokio, no `.await`; the clock is always an argument, so tests
//! drive time by hand. Counters are node-local, as in the original (on a cluster the effective
//! limit is per node).
//!
//! - [`RateCounter`]: the original's rolling average (5 s buckets × 12), a plain state machine.
//! - [`TokenBucket`]: burst-then-rate flood protection, one per connection, owned by its caller.
//! - [`FixedWindow`]: the client presence window, one per channel, owned by the channel session.
//! - [`Limits`]: the entry type; a map from tenant to its counters behind thin locks, shared by
//!   every task, that shrinks again through [`Limits::sweep`].

mod error;
mod rate_counter;
mod token_bucket;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub use error::LimitExceeded;
pub use rate_counter::{RateCounter, RateCounterConfig};
pub use token_bucket::TokenBucket;
pub use window::FixedWindow;

use crate::config::LimitDefaults;
use crate::tenants::TenantLimits;
use crate::types::TenantId;

/// Settings of [`Limits`].
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Joins, channel events, Postgres changes and presence counters. Default 5 s × 12.
    pub tenant_counter: RateCounterConfig,
    /// HTTP requests counter. Default 1 s × 60, the original's module default that its request
    /// counter uses.
    pub requests_counter: RateCounterConfig,
    /// `CLIENT_PRESENCE_MAX_CALLS`, used when the tenant sets no positive override. Default 5.
    pub client_presence_max_calls: u32,
    /// `CLIENT_PRESENCE_WINDOW_MS`, used when the tenant sets no positive override. Default 30 s.
    pub client_presence_window: Duration,
}

impl LimitsConfig {
    /// Builds the settings from the node's limit defaults and the original's counter shapes.
    pub fn new(defaults: &LimitDefaults) -> Self {
        LimitsConfig {
            tenant_counter: RateCounterConfig::TENANT,
            requests_counter: RateCounterConfig::REQUESTS,
            client_presence_max_calls: defaults.client_presence_max_calls,
            client_presence_window: defaults.client_presence_window,
        }
    }

    /// Returns the defaults, for tests.
    #[cfg(test)]
    pub fn for_test() -> Self {
        LimitsConfig::new(&LimitDefaults::default())
    }
}

/// The node's limits: every tenant's counters, created on first use and swept when idle.
///
/// Shared by reference (or `Arc`) between all tasks. Hot paths should fetch a
/// [`TenantLimiter`] once (per socket or channel) with [`Limits::tenant`] and use it directly,
/// which skips the map lock; the convenience methods here look the tenant up on every call.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    // std Mutex, not tokio's: held only for a hash lookup and an `Arc` clone (or one pass of
    // `sweep`), never across an `.await`. An RwLock would not help: readers also write its lock
    // word, and the critical section is shorter than the lock itself.
    tenants: Mutex<HashMap<TenantId, TenantLimiter>>,
}

impl Limits {
    /// Creates an empty set of counters.
    pub fn new(config: LimitsConfig) -> Self {
        Limits {
            config,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the counters of `tenant`, creating them (their periods starting at `now`) if
    /// missing.
    ///
    /// While a returned handle (or a [`ConnectedUser`] guard) is alive, [`Limits::sweep`] keeps
    /// the tenant's counters, so every holder keeps counting into the same ones.
    pub fn tenant(&self, tenant: &TenantId, now: Instant) -> TenantLimiter {
        let mut tenants = lock(&self.tenants);
        if let Some(limiter) = tenants.get(tenant) {
            return limiter.clone();
        }
        let limiter = TenantLimiter::new(&self.config, now);
        tenants.insert(tenant.clone(), limiter.clone());
        limiter
    }

    /// Returns the number of tenants with counters.
    #[cfg(test)]
    pub fn tenant_count(&self) -> usize {
        lock(&self.tenants).len()
    }

    /// Removes the counters of tenants gone idle, and returns how many were removed.
    ///
    /// A tenant is idle when no handle or user guard is held outside this map, it has no
    /// connected user, and every one of its rate counters is empty, i.e. it counted nothing for
    /// longer than the counter window. Meant to run periodically (every window or so).
    pub fn sweep(&self, now: Instant) -> usize {
        let mut tenants = lock(&self.tenants);
        let before = tenants.len();
        // Holding the map lock makes the `strong_count` test race-free: handles are only cloned
        // out of the map under this lock, so a count of 1 cannot grow while we look. Lock order
        // is always map, then counter; hot paths lock a counter alone.
        tenants.retain(|_, limiter| !limiter.is_idle_and_unshared(now));
        before - tenants.len()
    }

    /// Checks the handshake limits (PROTOCOL.md 1.6, in that order): concurrent users, then the
    /// joins counter, counting nothing. Returns the tenant's counters for the socket to keep; the
    /// socket is counted as a user at its first successful join ([`TenantLimiter::admit_user`]).
    ///
    /// # Errors
    /// [`LimitExceeded::ConcurrentUsers`] or [`LimitExceeded::HandshakeJoins`].
    pub fn check_handshake(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<TenantLimiter, LimitExceeded> {
        let limiter = self.tenant(tenant, now);
        limiter.check_handshake(limits, now)?;
        Ok(limiter)
    }

    /// Checks and counts one join (see [`TenantLimiter::check_join`]).
    ///
    /// # Errors
    /// [`LimitExceeded::Joins`] while the joins counter is tripped.
    #[cfg(test)]
    pub fn check_join(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        self.tenant(tenant, now).check_join(limits, now)
    }

    /// Checks and counts one presence event (see [`TenantLimiter::check_presence_event`]).
    ///
    /// # Errors
    /// [`LimitExceeded::PresenceEvents`] while the average is above the limit.
    #[cfg(test)]
    pub fn check_presence_event(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        self.tenant(tenant, now).check_presence_event(limits, now)
    }

    /// Counts one HTTP request and checks the requests counter (see
    /// [`TenantLimiter::check_http_request`]).
    ///
    /// # Errors
    /// [`LimitExceeded::HttpRequests`] while the requests counter is tripped.
    #[cfg(test)]
    pub fn check_http_request(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<f64, LimitExceeded> {
        self.tenant(tenant, now).check_http_request(limits, now)
    }

    /// Returns a fresh client presence window for one channel: the tenant's
    /// `max_client_presence_events_per_window` / `client_presence_window_ms` when set and
    /// positive, else the node defaults (PROTOCOL.md 5.4).
    pub fn client_presence_window(&self, limits: &TenantLimits) -> FixedWindow {
        let max_calls = limits
            .max_client_presence_events_per_window
            .filter(|&calls| calls > 0)
            .unwrap_or(self.config.client_presence_max_calls);
        let window = limits
            .client_presence_window_ms
            .filter(|&ms| ms > 0)
            .map_or(self.config.client_presence_window, |ms| {
                Duration::from_millis(u64::from(ms))
            });
        FixedWindow::new(max_calls, window)
    }

    /// Counts one presence push in the channel's client window.
    ///
    /// # Errors
    /// [`LimitExceeded::ClientPresence`] when the window is full (the push is not counted).
    pub fn check_client_presence(
        window: &mut FixedWindow,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        if window.try_call(now) {
            Ok(())
        } else {
            Err(LimitExceeded::ClientPresence {
                max_calls: window.max_calls(),
                window_ms: u64::try_from(window.window().as_millis()).unwrap_or(u64::MAX),
            })
        }
    }
}

/// One tenant's counters; cheap to clone (an `Arc`), safe to use from any thread.
///
/// Every method takes the clock as `now` and the tenant's current [`TenantLimits`] where a
/// limit is compared, so a tenant whose limits change is judged by the new values at once.
#[derive(Clone, Debug)]
pub struct TenantLimiter {
    counters: Arc<TenantCounters>,
}

/// The state behind a [`TenantLimiter`].
#[derive(Debug)]
struct TenantCounters {
    // One std Mutex per counter, not one for the tenant: a delivery on the hot path locks only
    // the channel events counter, for an O(1) add (a tick adds O(buckets) once per period), and
    // never across an `.await`. Callers that deliver to many recipients add them in one call.
    joins: Mutex<RateCounter>,
    channel_events: Mutex<RateCounter>,
    db_events: Mutex<RateCounter>,
    presence_events: Mutex<RateCounter>,
    http_requests: Mutex<RateCounter>,
    /// Connected sockets, counted by [`ConnectedUser`] guards.
    users: AtomicU32,
}

impl TenantLimiter {
    fn new(config: &LimitsConfig, now: Instant) -> Self {
        let counter = |shape| Mutex::new(RateCounter::new(shape, now));
        TenantLimiter {
            counters: Arc::new(TenantCounters {
                joins: counter(config.tenant_counter),
                channel_events: counter(config.tenant_counter),
                db_events: counter(config.tenant_counter),
                presence_events: counter(config.tenant_counter),
                http_requests: counter(config.requests_counter),
                users: AtomicU32::new(0),
            }),
        }
    }

    /// Admits one connection if the tenant has fewer than `max_concurrent_users`; the guard
    /// counts it until dropped. Check and increment are one atomic step.
    ///
    /// # Errors
    /// [`LimitExceeded::ConcurrentUsers`] when the tenant is full.
    pub fn admit_user(&self, limits: &TenantLimits) -> Result<ConnectedUser, LimitExceeded> {
        let limit = limits.max_concurrent_users;
        self.counters
            .users
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |users| {
                (users < limit).then_some(users + 1)
            })
            .map(|_| ConnectedUser {
                limiter: self.clone(),
            })
            .map_err(|_| LimitExceeded::ConcurrentUsers { limit })
    }

    /// Checks, without counting, that the tenant has fewer than `max_concurrent_users`
    /// connected (the join-time check of PROTOCOL.md 12.2).
    ///
    /// # Errors
    /// [`LimitExceeded::ConcurrentUsers`] when the tenant is full.
    pub fn check_concurrent_users(&self, limits: &TenantLimits) -> Result<(), LimitExceeded> {
        let limit = limits.max_concurrent_users;
        if self.concurrent_users() < limit {
            Ok(())
        } else {
            Err(LimitExceeded::ConcurrentUsers { limit })
        }
    }

    /// Returns the connections currently counted.
    pub fn concurrent_users(&self) -> u32 {
        self.counters.users.load(Ordering::Relaxed)
    }

    /// Checks the handshake limits without counting anything: concurrent users, then the joins
    /// counter. The original checks the same two things in the same order.
    ///
    /// # Errors
    /// [`LimitExceeded::ConcurrentUsers`] or [`LimitExceeded::HandshakeJoins`].
    pub fn check_handshake(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        self.check_concurrent_users(limits)?;
        let limit = limits.max_joins_per_second;
        let avg = lock(&self.counters.joins).avg(now);
        if avg >= f64::from(limit) {
            return Err(LimitExceeded::HandshakeJoins { limit, avg });
        }
        Ok(())
    }

    /// Checks the joins counter and, if it is not tripped, counts this join. A refused join is
    /// not counted (as in the original).
    ///
    /// # Errors
    /// [`LimitExceeded::Joins`] while `avg >= max_joins_per_second`.
    #[cfg(test)]
    pub fn check_join(&self, limits: &TenantLimits, now: Instant) -> Result<(), LimitExceeded> {
        let limit = limits.max_joins_per_second;
        let mut joins = lock(&self.counters.joins);
        let avg = joins.avg(now);
        if avg >= f64::from(limit) {
            return Err(LimitExceeded::Joins { limit, avg });
        }
        joins.add(1, now);
        Ok(())
    }

    /// Counts one join as it arrives, whatever becomes of it (also a join on the bare
    /// `realtime:` topic), so a client that loops refused joins still moves the tenant's rate.
    pub fn count_join(&self, now: Instant) {
        lock(&self.counters.joins).add(1, now);
    }

    /// Checks the joins counter without counting (the join was counted by
    /// [`TenantLimiter::count_join`] when it arrived).
    ///
    /// # Errors
    /// [`LimitExceeded::Joins`] while `avg >= max_joins_per_second`.
    pub fn check_join_rate(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        let limit = limits.max_joins_per_second;
        let avg = lock(&self.counters.joins).avg(now);
        if avg >= f64::from(limit) {
            return Err(LimitExceeded::Joins { limit, avg });
        }
        Ok(())
    }

    /// Counts `n` channel events: fan-out deliveries (once per recipient), accepted client
    /// broadcasts and unknown client events.
    pub fn add_channel_events(&self, n: u64, now: Instant) {
        lock(&self.counters.channel_events).add(n, now);
    }

    /// Checks the channel events counter, without counting (done on each delivered fan-out
    /// message, PROTOCOL.md 12.2).
    ///
    /// # Errors
    /// [`LimitExceeded::ChannelEvents`] while `avg >= max_events_per_second`.
    pub fn check_channel_events(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        at_or_above(
            &self.counters.channel_events,
            limits.max_events_per_second,
            now,
            |limit, avg| LimitExceeded::ChannelEvents { limit, avg },
        )
    }

    /// Checks an HTTP broadcast of one message against the channel events counter, without
    /// counting (`POST /api/broadcast/...`; the caller counts what it delivers).
    ///
    /// # Errors
    /// [`LimitExceeded::BroadcastRate`] while `avg >= max_events_per_second`.
    pub fn check_http_broadcast(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        at_or_above(
            &self.counters.channel_events,
            limits.max_events_per_second,
            now,
            |limit, avg| LimitExceeded::BroadcastRate { limit, avg },
        )
    }

    /// Checks an HTTP batch broadcast of `batch` messages against the channel events counter,
    /// without counting (`POST /api/broadcast`; the caller counts what it delivers). The
    /// original compares strictly here: refused when `avg > limit`, or when `avg + batch > limit`.
    ///
    /// # Errors
    /// [`LimitExceeded::BroadcastRate`] or [`LimitExceeded::BroadcastBatch`].
    pub fn check_http_broadcast_batch(
        &self,
        limits: &TenantLimits,
        batch: u64,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        let limit = limits.max_events_per_second;
        let avg = lock(&self.counters.channel_events).avg(now);
        if avg > f64::from(limit) {
            return Err(LimitExceeded::BroadcastRate { limit, avg });
        }
        if batch as f64 + avg > f64::from(limit) {
            return Err(LimitExceeded::BroadcastBatch { limit, avg, batch });
        }
        Ok(())
    }

    /// Counts `n` Postgres changes read for the tenant.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "Postgres Changes step: counts and checks the changes delivered"
        )
    )]
    pub fn add_db_events(&self, n: u64, now: Instant) {
        lock(&self.counters.db_events).add(n, now);
    }

    /// Checks the Postgres changes counter, without counting.
    ///
    /// # Errors
    /// [`LimitExceeded::DbEvents`] while `avg >= max_events_per_second`.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "Postgres Changes step: counts and checks the changes delivered"
        )
    )]
    pub fn check_db_events(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        at_or_above(
            &self.counters.db_events,
            limits.max_events_per_second,
            now,
            |limit, avg| LimitExceeded::DbEvents { limit, avg },
        )
    }

    /// Checks the presence counter and, if not exceeded, counts this event (track and initial
    /// state sync). The original compares strictly here: refused only when
    /// `avg > max_presence_events_per_second`.
    ///
    /// # Errors
    /// [`LimitExceeded::PresenceEvents`]; a refused event is not counted.
    pub fn check_presence_event(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        let limit = limits.max_presence_events_per_second;
        let mut presence = lock(&self.counters.presence_events);
        let avg = presence.avg(now);
        if avg > f64::from(limit) {
            return Err(LimitExceeded::PresenceEvents { limit, avg });
        }
        presence.add(1, now);
        Ok(())
    }

    /// Counts `n` presence events without checking (each delivered `presence_diff`, once per
    /// recipient).
    pub fn add_presence_events(&self, n: u64, now: Instant) {
        lock(&self.counters.presence_events).add(n, now);
    }

    /// Counts one HTTP request, then checks the requests counter. Refused requests count too,
    /// as in the original. `Ok` carries the rolling average for the `x-rate-*` headers.
    ///
    /// # Errors
    /// [`LimitExceeded::HttpRequests`] while `avg >= max_events_per_second`.
    pub fn check_http_request(
        &self,
        limits: &TenantLimits,
        now: Instant,
    ) -> Result<f64, LimitExceeded> {
        let limit = limits.max_events_per_second;
        let mut requests = lock(&self.counters.http_requests);
        requests.add(1, now);
        let avg = requests.avg(now);
        if avg >= f64::from(limit) {
            return Err(LimitExceeded::HttpRequests { limit, avg });
        }
        Ok(avg)
    }

    /// Returns the rolling averages, for metrics and the inspector.
    #[cfg(test)]
    pub fn rates(&self, now: Instant) -> TenantRates {
        let avg = |counter: &Mutex<RateCounter>| lock(counter).avg(now);
        TenantRates {
            joins: avg(&self.counters.joins),
            channel_events: avg(&self.counters.channel_events),
            db_events: avg(&self.counters.db_events),
            presence_events: avg(&self.counters.presence_events),
            http_requests: avg(&self.counters.http_requests),
        }
    }

    fn is_idle_and_unshared(&self, now: Instant) -> bool {
        let counters = &self.counters;
        Arc::strong_count(counters) == 1
            && counters.users.load(Ordering::Relaxed) == 0
            && [
                &counters.joins,
                &counters.channel_events,
                &counters.db_events,
                &counters.presence_events,
                &counters.http_requests,
            ]
            .into_iter()
            .all(|counter| lock(counter).is_idle(now))
    }
}

/// A tenant's rolling averages, in events per second.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TenantRates {
    /// Joins.
    pub joins: f64,
    /// Channel events (deliveries, client broadcasts).
    pub channel_events: f64,
    /// Postgres changes.
    pub db_events: f64,
    /// Presence events.
    pub presence_events: f64,
    /// HTTP requests.
    pub http_requests: f64,
}

/// One connected socket of a tenant, counted toward `max_concurrent_users` until dropped.
#[derive(Debug)]
#[must_use = "the connection stops being counted when this guard is dropped"]
pub struct ConnectedUser {
    limiter: TenantLimiter,
}

impl ConnectedUser {
    /// Returns the tenant's counters, so the socket can use them without a map lookup.
    #[cfg(test)]
    pub fn limiter(&self) -> &TenantLimiter {
        &self.limiter
    }
}

impl Drop for ConnectedUser {
    fn drop(&mut self) {
        let before = self.limiter.counters.users.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "connected users went below zero");
    }
}

/// Refuses with `exceeded(limit, avg)` while the counter's rolling average is at or above
/// `limit`; counts nothing.
fn at_or_above(
    counter: &Mutex<RateCounter>,
    limit: u32,
    now: Instant,
    exceeded: fn(u32, f64) -> LimitExceeded,
) -> Result<(), LimitExceeded> {
    let avg = lock(counter).avg(now);
    if avg >= f64::from(limit) {
        return Err(exceeded(limit, avg));
    }
    Ok(())
}

/// Locks a std mutex, ignoring poisoning: every method leaves the state consistent before it can
/// panic, so a panic elsewhere while holding the lock at worst loses one increment.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorCode, OperationalError};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tenant_limits() -> TenantLimits {
        TenantLimits {
            max_concurrent_users: 3,
            max_events_per_second: 10,
            max_bytes_per_second: 100_000,
            max_channels_per_client: 100,
            max_joins_per_second: 2,
            max_presence_events_per_second: 4,
            max_payload_size_in_kb: 3_000,
            max_client_presence_events_per_window: None,
            client_presence_window_ms: None,
        }
    }

    fn id(name: &str) -> TenantId {
        TenantId::from(name)
    }

    #[test]
    fn joins_trip_after_the_first_tick_and_clear_when_the_average_drops() {
        let limits_at = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 2 joins/s
        let tenant = id("a");
        // 20 joins in the first period: all allowed, the average is still 0.
        for i in 0..20 {
            assert_eq!(limits.check_join(&tenant, &t, limits_at + ms(i)), Ok(()));
        }
        // First tick: 20 / (2 buckets × 5 s) = 2.0 ≥ 2 → tripped.
        let err = limits
            .check_join(&tenant, &t, limits_at + ms(5_000))
            .unwrap_err();
        assert_eq!(err, LimitExceeded::Joins { limit: 2, avg: 2.0 });
        assert_eq!(err.code(), ErrorCode::ClientJoinRateLimitReached);
        assert_eq!(
            err.client_reason(),
            "ClientJoinRateLimitReached: Too many joins per second"
        );
        // Next tick: 20 / 15 s < 2 → cleared; the refused join was not counted.
        assert_eq!(
            limits.check_join(&tenant, &t, limits_at + ms(10_000)),
            Ok(())
        );
        let rates = limits
            .tenant(&tenant, limits_at)
            .rates(limits_at + ms(15_000));
        assert_eq!(rates.joins, 21.0 / 20.0);
    }

    #[test]
    fn joins_counted_on_arrival_trip_the_rate_check_which_counts_nothing() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 2 joins/s
        let limiter = limits.tenant(&id("a"), t0);
        for i in 0..20 {
            limiter.count_join(t0 + ms(i));
            assert_eq!(limiter.check_join_rate(&t, t0 + ms(i)), Ok(()));
        }
        assert_eq!(
            limiter.check_join_rate(&t, t0 + ms(5_000)),
            Err(LimitExceeded::Joins { limit: 2, avg: 2.0 })
        );
        // The checks themselves added nothing: 20 joins over the 15 s read at the next tick.
        assert_eq!(limiter.rates(t0 + ms(10_000)).joins, 20.0 / 15.0);
    }

    #[test]
    fn handshake_reports_users_first_then_joins_and_counts_nothing_on_error() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 3 users, 2 joins/s
        let tenant = id("a");
        let limiter = limits.check_handshake(&tenant, &t, t0).unwrap();
        assert_eq!(limiter.concurrent_users(), 0, "a handshake counts no user");
        let users: Vec<_> = (0..3).map(|_| limiter.admit_user(&t).unwrap()).collect();
        let err = limits.check_handshake(&tenant, &t, t0).unwrap_err();
        assert_eq!(err, LimitExceeded::ConcurrentUsers { limit: 3 });
        assert_eq!(err.client_text(), "Too many connected users");
        drop(users);

        for i in 0..20 {
            limits.check_join(&tenant, &t, t0 + ms(i)).unwrap();
        }
        let err = limits
            .check_handshake(&tenant, &t, t0 + ms(5_000))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::JoinsRateLimitReached);
        assert_eq!(err.client_text(), "Too many joins per second");
        assert_eq!(limits.tenant(&tenant, t0).concurrent_users(), 0);
    }

    #[test]
    fn connected_user_guard_counts_until_dropped() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits();
        let limiter = limits.tenant(&id("a"), t0);
        let first = limiter.admit_user(&t).unwrap();
        let second = limiter.admit_user(&t).unwrap();
        assert_eq!(limiter.concurrent_users(), 2);
        assert_eq!(limiter.check_concurrent_users(&t), Ok(()));
        let third = limiter.admit_user(&t).unwrap();
        assert!(limiter.check_concurrent_users(&t).is_err());
        assert!(limiter.admit_user(&t).is_err());
        drop(second);
        assert_eq!(limiter.concurrent_users(), 2);
        let again = limiter.admit_user(&t).unwrap();
        drop((first, third, again));
        assert_eq!(limiter.concurrent_users(), 0);
    }

    #[test]
    fn channel_events_trip_on_check_only_after_a_tick() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 10 events/s
        let limiter = limits.tenant(&id("a"), t0);
        limiter.add_channel_events(99, t0);
        assert_eq!(limiter.check_channel_events(&t, t0 + ms(4_999)), Ok(()));
        // 99 / 10 s < 10.
        assert_eq!(limiter.check_channel_events(&t, t0 + ms(5_000)), Ok(()));
        limiter.add_channel_events(101, t0 + ms(5_001));
        // (99 + 101) / 15 s = 13.3 ≥ 10.
        let err = limiter
            .check_channel_events(&t, t0 + ms(10_000))
            .unwrap_err();
        assert_eq!(
            err.client_reason(),
            "MessagePerSecondRateLimitReached: Too many messages per second"
        );
    }

    #[test]
    fn presence_is_refused_only_strictly_above_the_limit() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 4 presence events/s
        let tenant = id("a");
        let limiter = limits.tenant(&tenant, t0);
        limiter.add_presence_events(39, t0);
        limits.check_presence_event(&tenant, &t, t0).unwrap(); // 40 in the first period
        // 40 / 10 s = 4.0: equal is still allowed for presence.
        assert_eq!(
            limits.check_presence_event(&tenant, &t, t0 + ms(5_000)),
            Ok(())
        );
        limiter.add_presence_events(60, t0 + ms(5_000));
        // 101 / 15 s = 6.7 > 4.
        let err = limits
            .check_presence_event(&tenant, &t, t0 + ms(10_000))
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::PresenceRateLimitReached);
        assert_eq!(err.client_text(), "Too many presence messages per second");
    }

    #[test]
    fn http_requests_count_even_when_refused() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 10/s on a 1 s × 60 counter
        let tenant = id("a");
        for i in 0..20 {
            assert_eq!(limits.check_http_request(&tenant, &t, t0 + ms(i)), Ok(0.0));
        }
        // 20 / (2 × 1 s) = 10 ≥ 10.
        let err = limits
            .check_http_request(&tenant, &t, t0 + ms(1_000))
            .unwrap_err();
        assert_eq!(
            err,
            LimitExceeded::HttpRequests {
                limit: 10,
                avg: 10.0
            }
        );
        assert_eq!(err.client_text(), "Too many requests");
        // The refused request was counted: (20 + 1) / (3 × 1 s).
        assert_eq!(
            limits.check_http_request(&tenant, &t, t0 + ms(2_000)),
            Ok(7.0)
        );
    }

    #[test]
    fn http_broadcast_checks_follow_the_original_comparisons() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits(); // 10 events/s
        let limiter = limits.tenant(&id("a"), t0);
        limiter.add_channel_events(100, t0);
        let at = t0 + ms(5_000); // avg 100 / 10 s = 10
        assert!(matches!(
            limiter.check_http_broadcast(&t, at),
            Err(LimitExceeded::BroadcastRate { .. })
        ));
        // Batch compares strictly: avg == limit passes the first test, fails the batch one.
        let err = limiter.check_http_broadcast_batch(&t, 1, at).unwrap_err();
        assert_eq!(
            err.client_text(),
            "Too many messages to broadcast, please reduce the batch size"
        );
        assert_eq!(limiter.check_http_broadcast_batch(&t, 0, at), Ok(()));
    }

    #[test]
    fn db_events_have_their_own_counter() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits();
        let limiter = limits.tenant(&id("a"), t0);
        limiter.add_db_events(1_000, t0);
        let at = t0 + ms(5_000);
        assert!(matches!(
            limiter.check_db_events(&t, at),
            Err(LimitExceeded::DbEvents { .. })
        ));
        assert_eq!(limiter.check_channel_events(&t, at), Ok(()));
    }

    #[test]
    fn tenants_are_counted_apart() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits();
        for i in 0..20 {
            limits.check_join(&id("busy"), &t, t0 + ms(i)).unwrap();
        }
        let at = t0 + ms(5_000);
        assert!(limits.check_join(&id("busy"), &t, at).is_err());
        assert_eq!(limits.check_join(&id("quiet"), &t, at), Ok(()));
    }

    #[test]
    fn sweep_removes_only_idle_unshared_tenants() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits();
        limits.check_join(&id("joined"), &t, t0).unwrap();
        let held = limits.tenant(&id("held"), t0);
        let user = limits
            .check_handshake(&id("connected"), &t, t0)
            .unwrap()
            .admit_user(&t)
            .unwrap();
        let _ = limits.tenant(&id("untouched"), t0);
        assert_eq!(limits.tenant_count(), 4);

        // A counter never used is idle at once.
        assert_eq!(limits.sweep(t0 + ms(1)), 1);
        assert_eq!(limits.tenant_count(), 3);
        // The join leaves the window 65 s later (closed at 5 s, evicted 12 ticks after).
        assert_eq!(limits.sweep(t0 + ms(64_999)), 0);
        assert_eq!(limits.sweep(t0 + ms(65_000)), 1);
        // Held handles and connected users keep their tenant.
        assert_eq!(limits.sweep(t0 + Duration::from_secs(3_600)), 0);
        drop(held);
        drop(user);
        assert_eq!(limits.sweep(t0 + Duration::from_secs(3_600)), 2);
        assert_eq!(limits.tenant_count(), 0);
    }

    #[test]
    fn handles_share_counters_with_the_map() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let t = tenant_limits();
        let limiter = limits.tenant(&id("a"), t0);
        limiter.add_channel_events(1_000, t0);
        let via_map = limits.tenant(&id("a"), t0);
        assert!(via_map.check_channel_events(&t, t0 + ms(5_000)).is_err());
    }

    #[test]
    fn client_presence_window_uses_positive_tenant_overrides_else_defaults() {
        let limits = Limits::new(LimitsConfig::for_test());
        let mut t = tenant_limits();
        let window = limits.client_presence_window(&t);
        assert_eq!((window.max_calls(), window.window()), (5, ms(30_000)));
        t.max_client_presence_events_per_window = Some(0);
        t.client_presence_window_ms = Some(0);
        let window = limits.client_presence_window(&t);
        assert_eq!((window.max_calls(), window.window()), (5, ms(30_000)));
        t.max_client_presence_events_per_window = Some(2);
        t.client_presence_window_ms = Some(1_000);
        let window = limits.client_presence_window(&t);
        assert_eq!((window.max_calls(), window.window()), (2, ms(1_000)));
    }

    #[test]
    fn client_presence_check_reports_the_window() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let mut t = tenant_limits();
        t.max_client_presence_events_per_window = Some(2);
        let mut window = limits.client_presence_window(&t);
        assert_eq!(Limits::check_client_presence(&mut window, t0), Ok(()));
        assert_eq!(Limits::check_client_presence(&mut window, t0), Ok(()));
        let err = Limits::check_client_presence(&mut window, t0).unwrap_err();
        assert_eq!(
            err,
            LimitExceeded::ClientPresence {
                max_calls: 2,
                window_ms: 30_000
            }
        );
        assert_eq!(
            err.client_reason(),
            "ClientPresenceRateLimitReached: Client presence rate limit exceeded"
        );
        assert_eq!(
            Limits::check_client_presence(&mut window, t0 + ms(30_001)),
            Ok(())
        );
    }

    #[test]
    fn config_takes_the_presence_defaults_from_the_limit_defaults() {
        let defaults = LimitDefaults {
            client_presence_max_calls: 7,
            client_presence_window: ms(1_234),
            ..LimitDefaults::default()
        };
        let config = LimitsConfig::new(&defaults);
        assert_eq!(config.client_presence_max_calls, 7);
        assert_eq!(config.client_presence_window, ms(1_234));
        assert_eq!(config.tenant_counter, RateCounterConfig::TENANT);
    }

    /// Many threads counting and connecting at once lose no increment and leak no user.
    #[test]
    fn concurrent_use_loses_nothing() {
        let t0 = Instant::now();
        let limits = Limits::new(LimitsConfig::for_test());
        let mut t = tenant_limits();
        t.max_concurrent_users = 1_000;
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for i in 0..1_000 {
                        let at = t0 + ms(i);
                        let user = limits
                            .check_handshake(&id("a"), &t, at)
                            .unwrap()
                            .admit_user(&t)
                            .unwrap();
                        user.limiter().add_channel_events(1, at);
                        limits.tenant(&id("a"), at).add_channel_events(2, at);
                    }
                });
            }
        });
        let limiter = limits.tenant(&id("a"), t0);
        assert_eq!(limiter.concurrent_users(), 0);
        // 8 × 1000 × 3 events over [0, 1 s): all in the first period.
        let rates = limiter.rates(t0 + ms(5_000));
        assert_eq!(rates.channel_events, 24_000.0 / 10.0);
    }
}
