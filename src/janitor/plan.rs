//! How a janitor run spreads its work: tenants in chunks, a bounded number at once, each with a
//! time limit, every unit an owned task; and when the next run starts.
//!
//! Generic over the unit of work, so the bounds are tested here without databases.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::config::JanitorConfig;
use crate::tasks::Owner;

/// The most jitter a randomized schedule adds to the period, as a fraction of it.
pub const MAX_JITTER_FRACTION: f64 = 0.25;

/// The bounds of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Units per chunk (`JANITOR_CHUNK_SIZE`); a chunk starts when the previous one is done.
    pub chunk_size: usize,
    /// Units of one chunk running at once (`JANITOR_CLEANUP_MAX_CHILDREN`).
    pub max_children: usize,
    /// Longest one unit may run (`JANITOR_CLEANUP_CHILDREN_TIMEOUT`).
    pub child_timeout: Duration,
}

impl Bounds {
    /// The bounds the configuration sets (sizes of at least 1).
    pub fn from_config(config: &JanitorConfig) -> Bounds {
        Bounds {
            chunk_size: (config.chunk_size as usize).max(1),
            max_children: (config.max_children as usize).max(1),
            child_timeout: config.children_timeout,
        }
    }
}

/// What became of one unit of work.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// It finished with this result.
    Done(R),
    /// It ran longer than [`Bounds::child_timeout`] and was stopped.
    TimedOut,
}

/// Splits `items` into chunks of `chunk_size` (at least 1), in order.
pub fn chunks<T>(items: Vec<T>, chunk_size: usize) -> Vec<Vec<T>> {
    let chunk_size = chunk_size.max(1);
    let mut out = Vec::with_capacity(items.len().div_ceil(chunk_size));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(items.by_ref().take(chunk_size).collect());
    }
    out
}

/// The wait before the next run: the period, plus up to [`MAX_JITTER_FRACTION`] of it when
/// randomized. `draw` is a uniform number in `0.0..1.0` (clamped), so the caller owns the
/// randomness.
pub fn next_delay(period: Duration, randomize: bool, draw: f64) -> Duration {
    if !randomize {
        return period;
    }
    period + period.mul_f64(MAX_JITTER_FRACTION * draw.clamp(0.0, 1.0))
}

/// Runs `work` for every item, chunk after chunk; within a chunk at most `max_children` run at
/// once, each in a task of `owner` and stopped after `child_timeout`. Returns each item with its
/// outcome, in the order they ended. Units cancelled by the owner (shutdown) are missing from
/// the answer.
pub async fn sweep<T, R, F, Fut>(
    owner: &Owner,
    items: Vec<T>,
    bounds: Bounds,
    work: F,
) -> Vec<(T, Outcome<R>)>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(&T) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
{
    let mut ended = Vec::with_capacity(items.len());
    for chunk in chunks(items, bounds.chunk_size) {
        let permits = Arc::new(Semaphore::new(bounds.max_children.max(1)));
        let (done, mut results) = mpsc::unbounded_channel();
        for item in chunk {
            // Waits until one of the running units of this chunk ends.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let unit = work(&item);
            let done = done.clone();
            let limit = bounds.child_timeout;
            owner.spawn("janitor: one tenant", async move {
                let outcome = match tokio::time::timeout(limit, unit).await {
                    Ok(result) => Outcome::Done(result),
                    Err(_) => Outcome::TimedOut,
                };
                drop(permit);
                // Err: the run itself was cancelled; nobody waits for the answer.
                let _ = done.send((item, outcome));
            });
        }
        drop(done);
        while let Some(result) = results.recv().await {
            ended.push(result);
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn chunks_keep_order_and_size() {
        let split = chunks((0..23).collect(), 10);
        assert_eq!(split.len(), 3);
        assert_eq!(split[0], (0..10).collect::<Vec<_>>());
        assert_eq!(split[1], (10..20).collect::<Vec<_>>());
        assert_eq!(split[2], vec![20, 21, 22]);
        assert!(chunks(Vec::<u8>::new(), 10).is_empty());
        assert_eq!(chunks(vec![1, 2], 0), vec![vec![1], vec![2]]);
        assert_eq!(chunks(vec![1, 2, 3], 3), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn bounds_come_from_the_configuration() {
        let mut config = crate::config::Config::from_vars([("DB_ENC_KEY", "1234567890123456")])
            .expect("defaults")
            .janitor;
        assert_eq!(
            Bounds::from_config(&config),
            Bounds {
                chunk_size: 10,
                max_children: 5,
                child_timeout: Duration::from_millis(5000)
            }
        );
        config.chunk_size = 0;
        config.max_children = 0;
        let bounds = Bounds::from_config(&config);
        assert_eq!((bounds.chunk_size, bounds.max_children), (1, 1));
    }

    #[test]
    fn the_delay_is_the_period_plus_bounded_jitter() {
        let period = Duration::from_secs(4 * 3600);
        assert_eq!(next_delay(period, false, 0.9), period);
        assert_eq!(next_delay(period, true, 0.0), period);
        assert_eq!(next_delay(period, true, 1.0), period + period / 4);
        assert_eq!(next_delay(period, true, 0.5), period + period / 8);
        assert_eq!(
            next_delay(period, true, 7.0),
            period + period / 4,
            "clamped"
        );
        assert_eq!(next_delay(period, true, -1.0), period, "clamped");
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Start(usize),
        End(usize),
    }

    /// 23 units in chunks of 10, 3 at once: never more than 3 run, exactly 3 do at some point,
    /// no unit of a chunk starts before every unit of the previous chunk ended, and every unit
    /// ran in a task of the owner.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_run_one_after_another_with_bounded_concurrency() {
        let owner = Owner::new();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let events = Arc::new(Mutex::new(Vec::new()));
        let bounds = Bounds {
            chunk_size: 10,
            max_children: 3,
            child_timeout: Duration::from_secs(30),
        };
        let tracked = Arc::new(AtomicUsize::new(0));
        let results = sweep(&owner, (0..23).collect(), bounds, |&i: &usize| {
            let (running, peak, events) = (running.clone(), peak.clone(), events.clone());
            let (owner, tracked) = (owner.clone(), tracked.clone());
            async move {
                // Live tasks of the owner include this one.
                if !owner.is_empty() {
                    tracked.fetch_add(1, Ordering::SeqCst);
                }
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                events.lock().unwrap().push(Event::Start(i));
                // Uneven lengths, so units end out of order.
                tokio::time::sleep(Duration::from_millis(5 + (i as u64 * 7) % 20)).await;
                events.lock().unwrap().push(Event::End(i));
                running.fetch_sub(1, Ordering::SeqCst);
                i * 2
            }
        })
        .await;
        assert_eq!(results.len(), 23);
        let mut doubled: Vec<(usize, Outcome<usize>)> = results;
        doubled.sort_by_key(|(i, _)| *i);
        for (i, outcome) in &doubled {
            assert_eq!(*outcome, Outcome::Done(i * 2));
        }
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "the bound was reached, not exceeded"
        );
        assert_eq!(
            tracked.load(Ordering::SeqCst),
            23,
            "every unit is an owned task"
        );
        let events = events.lock().unwrap().clone();
        let position = |e: Event| events.iter().position(|x| *x == e).unwrap();
        for chunk in [0..10, 10..20] {
            let last_end = chunk
                .clone()
                .map(|i| position(Event::End(i)))
                .max()
                .unwrap();
            let next = chunk.end..(chunk.end + 10).min(23);
            let first_start = next.map(|i| position(Event::Start(i))).min().unwrap();
            assert!(
                last_end < first_start,
                "{chunk:?} ended before the next chunk"
            );
        }
        assert!(owner.shutdown(Duration::from_secs(5)).await);
    }

    /// A unit that never ends is stopped at the timeout and frees its place; the others finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_unit_times_out_and_the_others_go_on() {
        let owner = Owner::new();
        let bounds = Bounds {
            chunk_size: 4,
            max_children: 1,
            child_timeout: Duration::from_millis(100),
        };
        let mut results = sweep(&owner, vec![0, 1, 2, 3, 4], bounds, |&i: &i32| async move {
            if i == 1 {
                std::future::pending::<()>().await;
            }
            i
        })
        .await;
        results.sort_by_key(|(i, _)| *i);
        let outcomes: Vec<Outcome<i32>> = results.into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Done(0),
                Outcome::TimedOut,
                Outcome::Done(2),
                Outcome::Done(3),
                Outcome::Done(4)
            ]
        );
        assert!(owner.shutdown(Duration::from_secs(5)).await);
    }

    /// Cancelling the owner stops the running units; the sweep ends without them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelling_the_owner_stops_the_units() {
        let owner = Owner::new();
        let bounds = Bounds {
            chunk_size: 10,
            max_children: 2,
            child_timeout: Duration::from_secs(3600),
        };
        let stopper = owner.clone();
        let sweep = tokio::spawn({
            let owner = owner.clone();
            async move {
                sweep(&owner, vec![1, 2], bounds, |_: &i32| {
                    std::future::pending::<()>()
                })
                .await
            }
        });
        while stopper.len() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(stopper.shutdown(Duration::from_secs(5)).await);
        let results = tokio::time::timeout(Duration::from_secs(5), sweep)
            .await
            .expect("the sweep ends")
            .unwrap();
        assert!(results.is_empty());
    }
}
