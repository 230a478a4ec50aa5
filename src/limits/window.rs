//! The client presence window (PROTOCOL.md 5.4): at most `max_calls` calls per fixed window that
//! opens on the first call. Pure; the clock is an argument.

use std::time::{Duration, Instant};

/// Allows `max_calls` calls per `window`, the window opening at the first call after the previous
/// one expired (the original's `limit_client_presence_event`).
///
/// This is a **fixed** window, not a sliding one, as in the original: a client may make
/// `max_calls` calls at the end of one window and `max_calls` more right after it, and refused
/// calls are not counted. The window expires strictly after `window` has passed (`now >
/// opened + window`). The first call of a window is always allowed, even with `max_calls = 0`
/// (the original resets its counter to 1 without comparing); configuration keeps `max_calls ≥ 1`.
#[derive(Clone, Debug)]
pub struct FixedWindow {
    max_calls: u32,
    window: Duration,
    calls: u32,
    /// End of the open window; `None` before the first call.
    resets_at: Option<Instant>,
}

impl FixedWindow {
    /// Creates a limiter with no window open yet.
    pub fn new(max_calls: u32, window: Duration) -> Self {
        FixedWindow {
            max_calls,
            window,
            calls: 0,
            resets_at: None,
        }
    }

    /// Counts one call at `now` and returns true, or returns false (counting nothing) when the
    /// open window already holds `max_calls` calls.
    pub fn try_call(&mut self, now: Instant) -> bool {
        match self.resets_at {
            Some(resets_at) if now <= resets_at => {
                if self.calls >= self.max_calls {
                    return false;
                }
                self.calls += 1;
                true
            }
            _ => {
                self.calls = 1;
                self.resets_at = Some(now + self.window);
                true
            }
        }
    }

    /// Returns the calls allowed per window.
    pub fn max_calls(&self) -> u32 {
        self.max_calls
    }

    /// Returns the window length.
    pub fn window(&self) -> Duration {
        self.window
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
    fn allows_max_calls_then_refuses_until_the_window_expires() {
        let t0 = Instant::now();
        let mut window = FixedWindow::new(5, ms(30_000));
        for i in 0..5 {
            assert!(window.try_call(t0 + ms(i)), "call {i}");
        }
        assert!(!window.try_call(t0 + ms(10)));
        // Expires strictly after the window: still closed at exactly +30 s.
        assert!(!window.try_call(t0 + ms(30_000)));
        assert!(window.try_call(t0 + ms(30_001)));
    }

    #[test]
    fn the_window_opens_at_the_first_call_not_at_creation() {
        let t0 = Instant::now();
        let mut window = FixedWindow::new(1, ms(1_000));
        assert!(window.try_call(t0 + ms(5_000)));
        assert!(!window.try_call(t0 + ms(5_999)));
        assert!(window.try_call(t0 + ms(6_001)));
    }

    #[test]
    fn refused_calls_do_not_extend_or_fill_the_window() {
        let t0 = Instant::now();
        let mut window = FixedWindow::new(2, ms(1_000));
        assert!(window.try_call(t0));
        assert!(window.try_call(t0));
        for i in 0..100 {
            assert!(!window.try_call(t0 + ms(i * 10)));
        }
        assert!(window.try_call(t0 + ms(1_001)));
        assert!(window.try_call(t0 + ms(1_002)));
        assert!(!window.try_call(t0 + ms(1_003)));
    }

    #[test]
    fn the_first_call_of_a_window_passes_even_with_zero_max_calls() {
        let t0 = Instant::now();
        let mut window = FixedWindow::new(0, ms(1_000));
        assert!(window.try_call(t0));
        assert!(!window.try_call(t0 + ms(1)));
    }

    proptest! {
        /// No window ever admits more than `max_calls` calls.
        #[test]
        fn never_more_than_max_calls_per_window(
            max_calls in 1u32..10,
            window_ms in 1u64..1_000,
            gaps in proptest::collection::vec(0u64..200, 0..200),
        ) {
            let t0 = Instant::now();
            let mut window = FixedWindow::new(max_calls, ms(window_ms));
            let mut opened: Option<u64> = None;
            let mut in_window = 0;
            let mut at = 0;
            for gap in gaps {
                at += gap;
                let expired = opened.is_none_or(|o| at > o + window_ms);
                let allowed = window.try_call(t0 + ms(at));
                if expired {
                    prop_assert!(allowed);
                    opened = Some(at);
                    in_window = 1;
                } else {
                    prop_assert_eq!(allowed, in_window < max_calls);
                    if allowed {
                        in_window += 1;
                    }
                }
                prop_assert!(in_window <= max_calls);
            }
        }
    }
}
