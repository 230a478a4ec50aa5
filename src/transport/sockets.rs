//! The count of open sockets on this node, kept by guards: a socket holds a [`SocketPermit`] from
//! its handshake until its task ends, and the count drops when the permit does, on every path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Open sockets and the node's cap (`MAX_CONNECTIONS`).
#[derive(Debug)]
pub struct OpenSockets {
    open: AtomicUsize,
    max: usize,
}

/// One admitted socket; dropping it frees its place.
#[derive(Debug)]
pub struct SocketPermit {
    sockets: Arc<OpenSockets>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.sockets.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OpenSockets {
    /// Creates a counter for at most `max` sockets.
    pub fn new(max: usize) -> Arc<OpenSockets> {
        Arc::new(OpenSockets {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a place for one more socket, or `None` when the node is full. Check and increment
    /// are one atomic step, so concurrent handshakes cannot overshoot the cap.
    pub fn try_admit(self: &Arc<Self>) -> Option<SocketPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| SocketPermit {
                sockets: self.clone(),
            })
    }

    /// Returns the number of sockets holding a place (handshakes in progress included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_up_to_the_cap_and_free_their_place_on_drop() {
        let sockets = OpenSockets::new(2);
        let a = sockets.try_admit().expect("first");
        let b = sockets.try_admit().expect("second");
        assert!(sockets.try_admit().is_none(), "the cap holds");
        assert_eq!(sockets.open(), 2);
        drop(a);
        assert_eq!(sockets.open(), 1);
        let c = sockets.try_admit().expect("a freed place is reusable");
        drop((b, c));
        assert_eq!(sockets.open(), 0);
    }

    #[test]
    fn concurrent_admissions_never_overshoot() {
        let sockets = OpenSockets::new(100);
        let permits: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let sockets = sockets.clone();
                    scope.spawn(move || {
                        (0..50)
                            .filter_map(|_| sockets.try_admit())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(permits.len(), 100);
        assert_eq!(sockets.open(), 100);
    }
}
