//! The bounded outbound queue of one connection, and what travels through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use crate::tenants::Tenant;

/// A WebSocket frame ready to write, shared between every subscriber that gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame; the bytes are valid UTF-8 (built from `String`s by the encoders).
    Text(Bytes),
    /// A binary frame (kind 4).
    Binary(Bytes),
}

impl Frame {
    /// Wraps encoded text.
    pub fn text(s: String) -> Frame {
        Frame::Text(Bytes::from(s))
    }

    /// Returns the frame's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    /// Returns true for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Identifies one joined channel within a connection (assigned by the connection at join).
pub type ChannelSlot = u32;

/// Something for a connection to do, queued by other tasks.
#[derive(Clone, Debug)]
pub enum Outbound {
    /// A fan-out frame for the channel in `slot` (dropped if that channel is gone); `kind`
    /// says whether it checks the tenant's events-per-second limit.
    Fanout {
        /// The receiving channel.
        slot: ChannelSlot,
        /// What the message is, for the limits.
        kind: super::FanoutKind,
        /// The frame.
        frame: Frame,
    },
    /// Tell every channel `Server requested disconnect`, then close with 1012.
    TenantDisconnect,
    /// The tenant's record changed without needing a disconnect (limits, presence flag):
    /// use this one from now on.
    TenantUpdated(Arc<Tenant>),
}

/// Signals shared between a connection's task and everyone holding its [`Outbox`].
#[derive(Debug, Default)]
pub struct ConnSignals {
    slow: AtomicBool,
    wake: Notify,
}

impl ConnSignals {
    /// Returns true once a sender found the queue full.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    /// Waits until a sender marks the connection slow.
    pub async fn slow_marked(&self) {
        loop {
            // Register interest before checking, so a mark between the two is not missed.
            let notified = self.wake.notified();
            if self.is_slow() {
                return;
            }
            notified.await;
        }
    }

    fn mark_slow(&self) {
        if !self.slow.swap(true, Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }
}

/// The sending side of a connection's bounded queue.
///
/// Sends never wait: a full queue means the client reads slower than messages arrive, and the
/// connection is marked slow (its task then closes it) instead of buffering without bound.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outbound>,
    signals: Arc<ConnSignals>,
}

/// Creates a connection queue of `capacity` items.
pub fn outbox(capacity: usize) -> (Outbox, mpsc::Receiver<Outbound>, Arc<ConnSignals>) {
    let (tx, rx) = mpsc::channel(capacity);
    let signals = Arc::new(ConnSignals::default());
    (
        Outbox {
            tx,
            signals: signals.clone(),
        },
        rx,
        signals,
    )
}

impl Outbox {
    /// Queues an item; returns false when the connection is gone or too slow (item dropped).
    pub fn push(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.signals.mark_slow();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Returns true when the connection's task has ended.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_marks_the_connection_slow_and_drops() {
        let (out, mut rx, signals) = outbox(2);
        let f = || Outbound::TenantDisconnect;
        assert!(out.push(f()));
        assert!(out.push(f()));
        assert!(!signals.is_slow());
        assert!(!out.push(f()));
        assert!(signals.is_slow());
        signals.slow_marked().await;
        assert!(rx.recv().await.is_some());
        drop(rx);
        assert!(!out.push(f()));
        assert!(out.is_closed());
    }
}
