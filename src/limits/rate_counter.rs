//! The rolling-average rate counter of the original server (PROTOCOL.md 12.1), as a pure state
//! machine: no timer task, the clock is an argument and ticks happen lazily.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Bucket period and bucket count of a [`RateCounter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateCounterConfig {
    /// Length of one bucket (the original's `tick`). Must be non-zero.
    pub period: Duration,
    /// Completed buckets kept (the original's `max_bucket_len`).
    pub buckets: NonZeroUsize,
}

impl RateCounterConfig {
    /// The tenant counters (joins, channel events, DB events, presence events): 5 s × 12 buckets.
    pub const TENANT: RateCounterConfig = RateCounterConfig {
        period: Duration::from_secs(5),
        buckets: NonZeroUsize::new(12).unwrap(),
    };

    /// The original's module default, used for the HTTP requests counter: 1 s × 60 buckets.
    pub const REQUESTS: RateCounterConfig = RateCounterConfig {
        period: Duration::from_secs(1),
        buckets: NonZeroUsize::new(60).unwrap(),
    };

    /// Returns the full window the average covers once warm: `period × buckets`.
    #[cfg(test)]
    pub fn window(&self) -> Duration {
        // Saturate rather than overflow for absurd configurations.
        let buckets = u32::try_from(self.buckets.get()).unwrap_or(u32::MAX);
        self.period.saturating_mul(buckets)
    }
}

impl Default for RateCounterConfig {
    /// [`RateCounterConfig::TENANT`]: 5 s × 12 buckets, a 60 s window.
    fn default() -> Self {
        RateCounterConfig::TENANT
    }
}

/// Counts events and reports their rolling average in events per second.
///
/// # Semantics (those of the original's `Realtime.RateCounter`)
///
/// Time is cut into periods (default 5 s) that start when the counter is created. Events go into
/// the running bucket; at each period boundary ("tick") the running bucket is closed and pushed
/// into a ring of at most `buckets` completed buckets (default 12), evicting the oldest.
///
/// ```text
/// avg = sum(completed buckets) / (completed buckets × period in seconds)
/// ```
///
/// * The running bucket is **not** part of the average: `avg` only changes at ticks, exactly like
///   the original, whose average is recomputed by its timer and read from a cache in between.
///   Events counted now show up in `avg` at the next boundary.
/// * Idle periods still tick: each one pushes an empty bucket, so a burst fades out of the
///   average one period at a time and is gone after `buckets` periods.
/// * **First seconds.** The original ticks once immediately on start, so its ring begins with
///   one empty bucket; this counter does the same (`len = 1` at creation). Consequences: `avg` is
///   0 during the whole first period whatever the burst (nothing can trip before the first
///   boundary); at the first boundary a burst of `N` reads as `N / (2 × period)`, e.g. `N / 10`
///   with the defaults, then `N / 15`, `N / 20`, … until the ring is full and the divisor is
///   the full window (60 s). A fresh counter is therefore stricter than a warm one for a while,
///   but never stricter than the original.
/// * A limit **trips** when `avg >= limit` and **clears** when `avg < limit`. The two thresholds
///   are equal, so the original's `triggered` flag is a pure function of the average at the last
///   tick; [`RateCounter::exceeds`] computes it instead of storing it, which also follows a
///   tenant whose limit changed without restarting the counter.
///
/// Adding is O(1): a comparison with the next boundary and an addition. A tick costs O(1) per
/// elapsed period, bounded by `buckets + 1` however long the counter was idle.
#[derive(Clone, Debug)]
pub struct RateCounter {
    period: Duration,
    /// Completed buckets, a ring; slots not yet written hold 0.
    ring: Box<[u64]>,
    /// Slot the next completed bucket is written to.
    next: usize,
    /// Completed buckets recorded so far, at most `ring.len()`.
    len: usize,
    /// Sum of `ring`, kept up to date on every push (u128: buckets of saturated u64 counts
    /// cannot overflow it).
    sum: u128,
    /// Events in the running bucket.
    current: u64,
    /// End of the running bucket.
    tick_at: Instant,
}

impl RateCounter {
    /// Creates a counter whose first period starts at `now`.
    ///
    /// # Panics
    /// If `config.period` is zero.
    pub fn new(config: RateCounterConfig, now: Instant) -> Self {
        assert!(
            !config.period.is_zero(),
            "rate counter period must be non-zero"
        );
        let buckets = config.buckets.get();
        RateCounter {
            period: config.period,
            ring: vec![0; buckets].into_boxed_slice(),
            // The original's immediate first tick: one empty completed bucket.
            next: 1 % buckets,
            len: 1,
            sum: 0,
            current: 0,
            tick_at: now + config.period,
        }
    }

    /// Counts `n` events at `now` (callers may batch: `add(n)` equals `n` times `add(1)`).
    pub fn add(&mut self, n: u64, now: Instant) {
        self.advance(now);
        self.current = self.current.saturating_add(n);
    }

    /// Returns the rolling average in events per second, as of the last tick at or before `now`.
    pub fn avg(&mut self, now: Instant) -> f64 {
        self.advance(now);
        self.avg_of_completed()
    }

    /// Returns true when the average has reached `limit` (`avg >= limit`): the limit is tripped.
    #[cfg(test)]
    pub fn exceeds(&mut self, limit: u32, now: Instant) -> bool {
        self.avg(now) >= f64::from(limit)
    }

    /// Returns the sum of the completed buckets (the original's `:sum` measurement).
    #[cfg(test)]
    pub fn sum(&mut self, now: Instant) -> u64 {
        self.advance(now);
        u64::try_from(self.sum).unwrap_or(u64::MAX)
    }

    /// Returns the events counted in the running bucket, not yet part of the average.
    #[cfg(test)]
    pub fn current(&mut self, now: Instant) -> u64 {
        self.advance(now);
        self.current
    }

    /// Returns true when every bucket, running one included, is empty: no event for more than
    /// the whole window (the original's idle-shutdown condition).
    pub fn is_idle(&mut self, now: Instant) -> bool {
        self.advance(now);
        self.sum == 0 && self.current == 0
    }

    /// Closes every period that ended at or before `now`. A `now` earlier than the running
    /// period's end (including a clock that went backwards) changes nothing.
    fn advance(&mut self, now: Instant) {
        if now < self.tick_at {
            return;
        }
        let period = self.period.as_nanos();
        let late = now.duration_since(self.tick_at).as_nanos();
        let ticks = 1 + late / period;

        let closed = std::mem::take(&mut self.current);
        self.push(closed);
        // Pushing more than `ring.len()` empty buckets changes nothing more: the ring is all zero.
        let empties = (ticks - 1).min(self.ring.len() as u128) as usize;
        for _ in 0..empties {
            self.push(0);
        }
        self.len = usize::try_from(ticks)
            .map_or(usize::MAX, |t| self.len.saturating_add(t))
            .min(self.ring.len());

        // Next boundary after `now`, computed from the remainder so a long idle gap cannot
        // overflow a multiplication.
        let into_period = late % period;
        let to_next = u64::try_from(period - into_period).unwrap_or(u64::MAX);
        self.tick_at = now + Duration::from_nanos(to_next);
        debug_assert_eq!(
            self.sum,
            self.ring.iter().map(|&b| u128::from(b)).sum::<u128>()
        );
    }

    fn push(&mut self, count: u64) {
        let evicted = std::mem::replace(&mut self.ring[self.next], count);
        self.sum = self.sum - u128::from(evicted) + u128::from(count);
        self.next = (self.next + 1) % self.ring.len();
    }

    fn avg_of_completed(&self) -> f64 {
        debug_assert!(self.len >= 1);
        self.sum as f64 / (self.len as f64 * self.period.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn small(period_ms: u64, buckets: usize) -> RateCounterConfig {
        RateCounterConfig {
            period: ms(period_ms),
            buckets: NonZeroUsize::new(buckets).unwrap(),
        }
    }

    #[test]
    fn defaults_are_five_seconds_times_twelve() {
        let config = RateCounterConfig::default();
        assert_eq!(config.period, Duration::from_secs(5));
        assert_eq!(config.buckets.get(), 12);
        assert_eq!(config.window(), Duration::from_secs(60));
        assert_eq!(
            RateCounterConfig::REQUESTS.window(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_fresh_counter_reads_zero_during_the_first_period_whatever_the_burst() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(RateCounterConfig::default(), t0);
        counter.add(1_000_000, t0);
        assert_eq!(counter.avg(t0 + ms(4_999)), 0.0);
        assert!(!counter.exceeds(1, t0 + ms(4_999)));
        assert_eq!(counter.current(t0 + ms(4_999)), 1_000_000);
    }

    /// The warm-up divisor grows one period per tick, starting from the original's empty bucket.
    #[test]
    fn warm_up_divides_by_completed_buckets_including_the_initial_empty_one() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(RateCounterConfig::default(), t0);
        counter.add(600, t0 + ms(100));
        assert_eq!(counter.avg(t0 + ms(5_000)), 600.0 / 10.0);
        assert_eq!(counter.avg(t0 + ms(10_000)), 600.0 / 15.0);
        assert_eq!(counter.avg(t0 + ms(15_000)), 600.0 / 20.0);
        // Ring full from the 11th tick (12 buckets: the initial one plus 11 closed periods).
        assert_eq!(counter.avg(t0 + ms(55_000)), 600.0 / 60.0);
        // The 12th tick evicts the initial empty bucket; the burst's bucket is now the oldest
        // and leaves at the 13th.
        assert_eq!(counter.avg(t0 + ms(64_999)), 600.0 / 60.0);
        assert_eq!(counter.avg(t0 + ms(65_000)), 0.0);
    }

    #[test]
    fn steady_rate_reads_as_that_rate_once_warm() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(RateCounterConfig::default(), t0);
        // 10 events per second, delivered in 100 ms batches of 1, for two minutes.
        for step in 0..1_200 {
            counter.add(1, t0 + ms(step * 100));
        }
        let avg = counter.avg(t0 + ms(120_000));
        assert!((avg - 10.0).abs() < 1e-9, "avg {avg}");
    }

    #[test]
    fn trips_at_equal_and_clears_below() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(small(1_000, 2), t0);
        counter.add(5, t0);
        counter.add(5, t0 + ms(1_000));
        // Buckets [5, 5] over 2 s: avg 5.
        let t = t0 + ms(2_000);
        assert_eq!(counter.avg(t), 5.0);
        assert!(counter.exceeds(5, t));
        assert!(counter.exceeds(4, t));
        assert!(!counter.exceeds(6, t));
        // One empty period later: [5, 0] → 2.5, cleared for limit 5.
        let t = t0 + ms(3_000);
        assert_eq!(counter.avg(t), 2.5);
        assert!(!counter.exceeds(5, t));
    }

    #[test]
    fn a_limit_of_zero_is_always_tripped() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(RateCounterConfig::default(), t0);
        assert!(counter.exceeds(0, t0));
    }

    #[test]
    fn events_land_in_the_bucket_of_their_period() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(small(1_000, 4), t0);
        counter.add(3, t0 + ms(999));
        counter.add(7, t0 + ms(1_000));
        assert_eq!(counter.sum(t0 + ms(1_500)), 3);
        assert_eq!(counter.current(t0 + ms(1_500)), 7);
        assert_eq!(counter.sum(t0 + ms(2_000)), 10);
    }

    #[test]
    fn a_long_idle_gap_clears_everything_and_keeps_the_phase() {
        let t0 = Instant::now();
        let mut counter = RateCounter::new(small(1_000, 3), t0);
        counter.add(9, t0 + ms(10));
        let later = t0 + Duration::from_secs(86_400 * 365) + ms(250);
        assert_eq!(counter.avg(later), 0.0);
        assert!(counter.is_idle(later));
        // Boundaries stay on whole periods from t0.
        counter.add(4, later);
        assert_eq!(counter.sum(later + ms(749)), 0);
        assert_eq!(counter.sum(later + ms(750)), 4);
    }

    #[test]
    fn a_clock_going_backwards_changes_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut counter = RateCounter::new(small(1_000, 3), t0);
        counter.add(2, t0 - ms(500));
        assert_eq!(counter.current(t0), 2);
        assert_eq!(counter.avg(t0 - ms(5_000)), 0.0);
    }

    #[test]
    fn idle_only_after_the_last_event_left_the_window() {
        let t0 = Instant::now();
        let config = RateCounterConfig::default();
        let mut counter = RateCounter::new(config, t0);
        assert!(counter.is_idle(t0));
        counter.add(1, t0 + ms(1_000));
        assert!(!counter.is_idle(t0 + ms(1_000)));
        // Closed at 5 s, evicted by the 12th tick after that: 65 s.
        assert!(!counter.is_idle(t0 + ms(64_999)));
        assert!(counter.is_idle(t0 + ms(65_000)));
    }

    #[test]
    fn batched_and_single_increments_agree() {
        let t0 = Instant::now();
        let mut batched = RateCounter::new(RateCounterConfig::default(), t0);
        let mut single = RateCounter::new(RateCounterConfig::default(), t0);
        batched.add(50, t0 + ms(20));
        for _ in 0..50 {
            single.add(1, t0 + ms(20));
        }
        let t = t0 + ms(5_000);
        assert_eq!(batched.avg(t), single.avg(t));
    }

    /// Reference model: keep every (time, n) and recompute the average from scratch.
    fn model_avg(events: &[(u64, u64)], period: u64, buckets: u64, now: u64) -> f64 {
        let completed_ticks = now / period; // ticks at period, 2·period, …, ≤ now
        let len = (completed_ticks + 1).min(buckets); // +1: the initial empty bucket
        let oldest_period = (completed_ticks + 1).saturating_sub(len);
        let sum: u64 = events
            .iter()
            .filter(|(t, _)| {
                let p = t / period;
                p < completed_ticks && p + 1 >= oldest_period
            })
            .map(|(_, n)| n)
            .sum();
        sum as f64 / (len as f64 * period as f64 / 1_000.0)
    }

    proptest! {
        #[test]
        fn avg_matches_a_from_scratch_model(
            period in 1u64..2_000,
            buckets in 1usize..16,
            mut gaps in proptest::collection::vec((0u64..3_000, 0u64..1_000), 0..60),
            tail in 0u64..40_000,
        ) {
            let t0 = Instant::now();
            let mut counter = RateCounter::new(small(period, buckets), t0);
            let mut at = 0;
            let mut events = Vec::new();
            for (gap, n) in gaps.drain(..) {
                at += gap;
                counter.add(n, t0 + ms(at));
                events.push((at, n));
                let got = counter.avg(t0 + ms(at));
                let want = model_avg(&events, period, buckets as u64, at);
                prop_assert!((got - want).abs() < 1e-6, "at {} got {} want {}", at, got, want);
            }
            let end = at + tail;
            let got = counter.avg(t0 + ms(end));
            let want = model_avg(&events, period, buckets as u64, end);
            prop_assert!((got - want).abs() < 1e-6, "end got {} want {}", got, want);
        }

        #[test]
        fn avg_is_never_negative_and_zero_after_a_quiet_window(
            adds in proptest::collection::vec((0u64..10_000, 0u64..u64::MAX / 1_024), 0..40),
        ) {
            let t0 = Instant::now();
            let config = RateCounterConfig::default();
            let mut counter = RateCounter::new(config, t0);
            let mut last = 0;
            for (at, n) in adds {
                last = last.max(at);
                counter.add(n, t0 + ms(at));
                prop_assert!(counter.avg(t0 + ms(at)) >= 0.0);
            }
            // One window plus the period the last event may still be running in.
            let quiet = t0 + ms(last) + config.window() + config.period;
            prop_assert_eq!(counter.avg(quiet), 0.0);
            prop_assert!(counter.is_idle(quiet));
        }
    }
}
