//! Task ownership: every background task of the node belongs to an [`Owner`], which can stop it.
//!
//! An owner is a cancellation token plus a task tracker (tokio-util). Tasks spawned through it end
//! when their work ends or when the owner is cancelled, whichever comes first; futures spawned by
//! others (axum runs each upgraded WebSocket in a task of its own) are counted with
//! [`Owner::track`]. [`Owner::shutdown`] cancels, then waits up to a grace period for everything
//! it owns. Subsystems hold a child owner each, so `app` stops them one by one, in the order
//! docs/ARCHITECTURE.md gives ("Shutdown order"). Nothing in the server calls `tokio::spawn`
//! directly and nothing is `abort()`ed.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// A set of tasks that stop together.
#[derive(Clone, Debug, Default)]
pub struct Owner {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Owner {
    /// Creates a root owner.
    pub fn new() -> Owner {
        Owner::default()
    }

    /// Creates an owner whose tasks are also cancelled when this one is (its own tracker, so it
    /// can be shut down and waited for separately).
    pub fn child(&self) -> Owner {
        Owner {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Runs `work` in a task of its own until it ends or the owner is cancelled.
    pub fn spawn<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = token.cancelled() => tracing::debug!(task = name, "task stopped"),
                () = work => tracing::debug!(task = name, "task ended"),
            }
        });
    }

    /// Counts a future that someone else runs (it should watch [`Owner::cancelled`] itself), so
    /// that [`Owner::shutdown`] waits for it too.
    pub fn track<F: Future>(&self, work: F) -> impl Future<Output = F::Output> + use<F> {
        self.tracker.track_future(work)
    }

    /// Resolves when the owner is cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Returns true once the owner was cancelled.
    #[cfg(test)]
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Returns the number of live tasks and tracked futures.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Returns true when nothing the owner tracks is running.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels every task and waits up to `grace` for them to end. Returns false when some were
    /// still running at the deadline (they keep their cancellation and end on their own).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_stops_spawned_work_and_waits_for_tracked_futures() {
        let owner = Owner::new();
        owner.spawn("forever", std::future::pending());
        let finished = Arc::new(AtomicBool::new(false));
        let tracked = {
            let (owner, finished) = (owner.clone(), finished.clone());
            owner.clone().track(async move {
                owner.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                finished.store(true, Ordering::SeqCst);
            })
        };
        let handle = tokio::spawn(tracked);
        tokio::task::yield_now().await;
        assert_eq!(owner.len(), 2);
        assert!(owner.shutdown(Duration::from_secs(5)).await);
        assert!(
            finished.load(Ordering::SeqCst),
            "shutdown waited for the tracked future"
        );
        assert!(owner.is_empty());
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_child_is_cancelled_by_its_parent_but_shuts_down_alone() {
        let parent = Owner::new();
        let child = parent.child();
        child.spawn("child work", std::future::pending());
        assert!(child.shutdown(Duration::from_secs(5)).await);
        assert!(
            !parent.is_cancelled(),
            "a child's shutdown leaves its parent running"
        );
        let other = parent.child();
        parent.shutdown(Duration::from_secs(5)).await;
        assert!(other.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_reports_work_that_outlives_the_grace() {
        let owner = Owner::new();
        let stubborn = owner.track(tokio::time::sleep(Duration::from_secs(60)));
        let handle = tokio::spawn(stubborn);
        assert!(!owner.shutdown(Duration::from_millis(20)).await);
        handle.abort();
    }
}
