//! A token bucket for per-connection flood protection: bursts up to a capacity, then a steady
//! refill rate. Pure; the clock is an argument.

use std::time::{Duration, Instant};

/// Allows bursts of up to `capacity` units, then one more unit every `refill_every`.
///
/// The bucket starts full. Refills are computed lazily from the time between calls (no timer)
/// in exact integer arithmetic: the level is kept in nanoseconds of refill time, where one token
/// is worth `refill_every` nanoseconds, so no rounding accumulates however the calls are spaced.
/// Slow rates (`refill_every` = 2 s is 0.5 token/s) and fast ones (1 ms is 1000/s) both work.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Nanoseconds of refill time one token is worth (≥ 1).
    token_nanos: u128,
    /// `capacity × token_nanos`.
    full: u128,
    /// Current level, in nanoseconds of refill time (0..=full).
    level: u128,
    refilled_at: Instant,
}

impl TokenBucket {
    /// Creates a full bucket holding `capacity` tokens, refilled by one token every
    /// `refill_every` (pass [`Duration::MAX`] for a bucket that never refills).
    ///
    /// # Panics
    /// If `refill_every` is zero.
    pub fn new(capacity: u32, refill_every: Duration, now: Instant) -> Self {
        assert!(
            !refill_every.is_zero(),
            "token bucket refill interval must be non-zero"
        );
        let token_nanos = refill_every.as_nanos();
        let full = u128::from(capacity) * token_nanos;
        TokenBucket {
            token_nanos,
            full,
            level: full,
            refilled_at: now,
        }
    }

    /// Creates a full bucket holding `capacity` tokens, refilled at `per_second` tokens a second
    /// (0 means never).
    pub fn per_second(capacity: u32, per_second: u32, now: Instant) -> Self {
        let refill_every = match per_second {
            0 => Duration::MAX,
            // Rates above 10⁹/s round up to one token per nanosecond.
            rate => (Duration::from_secs(1) / rate).max(Duration::from_nanos(1)),
        };
        TokenBucket::new(capacity, refill_every, now)
    }

    /// Takes `n` tokens if that many are available and returns true; otherwise takes none and
    /// returns false. A request larger than the capacity never succeeds; `n = 0` always does.
    pub fn try_take(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        let cost = u128::from(n) * self.token_nanos;
        if self.level >= cost {
            self.level -= cost;
            true
        } else {
            false
        }
    }

    /// Returns the whole tokens available at `now`.
    #[cfg(test)]
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        // level ≤ full = capacity × token_nanos, so the quotient fits u32.
        u32::try_from(self.level / self.token_nanos).unwrap_or(u32::MAX)
    }

    /// Returns the capacity (the largest burst).
    #[cfg(test)]
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.full / self.token_nanos).unwrap_or(u32::MAX)
    }

    fn refill(&mut self, now: Instant) {
        // A clock going backwards adds nothing and does not move the reference point back.
        if now <= self.refilled_at {
            return;
        }
        let elapsed = now.duration_since(self.refilled_at).as_nanos();
        self.level = self.level.saturating_add(elapsed).min(self.full);
        self.refilled_at = now;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_and_allows_a_burst_of_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(10, 1, t0);
        assert_eq!(bucket.capacity(), 10);
        assert_eq!(bucket.available(t0), 10);
        assert!(bucket.try_take(4, t0));
        assert!(bucket.try_take(6, t0));
        assert!(!bucket.try_take(1, t0));
        assert!(bucket.try_take(0, t0));
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(5, 1, t0);
        assert!(!bucket.try_take(6, t0));
        assert_eq!(bucket.available(t0), 5);
    }

    #[test]
    fn refills_at_the_rate_and_caps_at_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(10, 2, t0);
        assert!(bucket.try_take(10, t0));
        assert!(!bucket.try_take(1, t0 + ms(499)));
        assert!(bucket.try_take(1, t0 + ms(500)));
        assert_eq!(bucket.available(t0 + ms(1_500)), 2);
        assert_eq!(bucket.available(t0 + Duration::from_secs(3_600)), 10);
    }

    #[test]
    fn slow_refill_rates_accumulate_exactly() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1, Duration::from_secs(2), t0);
        assert!(bucket.try_take(1, t0));
        for step in 1..2_000 {
            assert!(!bucket.try_take(1, t0 + ms(step)), "step {step}");
        }
        assert!(bucket.try_take(1, t0 + ms(2_000)));
    }

    #[test]
    fn huge_rates_do_not_panic() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(1, u32::MAX, t0);
        assert!(bucket.try_take(1, t0));
        assert!(bucket.try_take(1, t0 + Duration::from_nanos(1)));
    }

    #[test]
    fn zero_refill_never_recovers() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_second(2, 0, t0);
        assert!(bucket.try_take(2, t0));
        assert!(!bucket.try_take(1, t0 + Duration::from_secs(86_400 * 365)));
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut bucket = TokenBucket::per_second(3, 100, t0);
        assert!(bucket.try_take(3, t0));
        assert!(!bucket.try_take(1, t0 - Duration::from_secs(5)));
        assert_eq!(bucket.available(t0), 0);
    }

    proptest! {
        /// Over any schedule, what was taken never exceeds capacity plus what the rate refilled.
        #[test]
        fn never_grants_more_than_capacity_plus_refill(
            capacity in 0u32..100,
            rate in 1u32..50,
            takes in proptest::collection::vec((0u64..500, 0u32..20), 0..100),
        ) {
            let t0 = Instant::now();
            let mut bucket = TokenBucket::per_second(capacity, rate, t0);
            let mut at = 0;
            let mut granted = 0u64;
            for (gap, n) in takes {
                at += gap;
                if bucket.try_take(n, t0 + ms(at)) {
                    granted += u64::from(n);
                }
                prop_assert!(bucket.available(t0 + ms(at)) <= capacity);
            }
            let refilled = at * u64::from(rate) / 1_000;
            prop_assert!(granted <= u64::from(capacity) + refilled);
        }

        /// Spreading the same elapsed time over many calls refills exactly as one call does.
        #[test]
        fn refill_does_not_depend_on_call_spacing(
            rate in 1u32..1_000,
            gaps in proptest::collection::vec(0u64..300, 1..50),
        ) {
            let t0 = Instant::now();
            let mut stepped = TokenBucket::per_second(1_000, rate, t0);
            let mut once = TokenBucket::per_second(1_000, rate, t0);
            prop_assert!(stepped.try_take(1_000, t0));
            prop_assert!(once.try_take(1_000, t0));
            let mut at = 0;
            for gap in gaps {
                at += gap;
                stepped.available(t0 + ms(at));
            }
            prop_assert_eq!(stepped.available(t0 + ms(at)), once.available(t0 + ms(at)));
        }
    }
}
