//! `DelayedReplies`: one socket's join refusals waiting out `CHANNEL_ERROR_BACKOFF_MS`
//! (PROTOCOL.md 3.4), served by the socket loop's timer instead of a task per refusal.
//!
//! The backoff is the same for every refusal, so due times only grow: a FIFO queue suffices
//! and the head is the next deadline. The queue is bounded; past the bound a refusal is dropped
//! without a reply, except that one refusal that closes the socket is always kept (the close
//! must happen).

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::close_code::CloseCode;
use crate::hub::Frame;

struct DelayedReply {
    due: Instant,
    frame: Frame,
    close: Option<CloseCode>,
}

/// A bounded FIFO of replies, each written when its time comes.
pub(super) struct DelayedReplies {
    queue: VecDeque<DelayedReply>,
    capacity: usize,
    /// A queued reply closes the socket.
    closing: bool,
    /// Replies dropped so far because the queue was full.
    dropped: u64,
}

impl DelayedReplies {
    /// Creates an empty queue that holds at most `capacity` replies (allocates nothing yet).
    pub(super) fn new(capacity: usize) -> DelayedReplies {
        DelayedReplies {
            queue: VecDeque::new(),
            capacity,
            closing: false,
            dropped: 0,
        }
    }

    /// Queues `frame` to be written at `due` (not earlier than the replies already queued),
    /// then the socket closed with `close` if set.
    ///
    /// # Errors
    /// The queue is full: the reply is dropped; returns how many were dropped so far.
    pub(super) fn push(
        &mut self,
        due: Instant,
        frame: Frame,
        close: Option<CloseCode>,
    ) -> Result<(), u64> {
        let keep_the_close = close.is_some() && !self.closing;
        if self.queue.len() >= self.capacity && !keep_the_close {
            self.dropped += 1;
            return Err(self.dropped);
        }
        debug_assert!(self.queue.back().is_none_or(|last| last.due <= due));
        self.closing |= close.is_some();
        self.queue.push_back(DelayedReply { due, frame, close });
        Ok(())
    }

    /// Returns when the next reply is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|reply| reply.due)
    }

    /// Appends every reply due at `now` to `out`, in order; stops after one that closes the
    /// socket and returns its close code.
    pub(super) fn write_due(&mut self, now: Instant, out: &mut Vec<Frame>) -> Option<CloseCode> {
        while self.queue.front().is_some_and(|reply| reply.due <= now) {
            let Some(reply) = self.queue.pop_front() else {
                break;
            };
            out.push(reply.frame);
            if reply.close.is_some() {
                return reply.close;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(n: usize) -> Frame {
        Frame::text(n.to_string())
    }

    #[test]
    fn replies_are_written_in_order_when_due() {
        let t0 = Instant::now();
        let mut replies = DelayedReplies::new(8);
        assert_eq!(replies.next_due(), None);
        for n in 0..3 {
            let due = t0 + Duration::from_millis(10 * n as u64);
            assert_eq!(replies.push(due, frame(n), None), Ok(()));
        }
        assert_eq!(replies.next_due(), Some(t0));
        let mut out = Vec::new();
        assert_eq!(
            replies.write_due(t0 + Duration::from_millis(15), &mut out),
            None
        );
        assert_eq!(out, vec![frame(0), frame(1)]);
        assert_eq!(replies.next_due(), Some(t0 + Duration::from_millis(20)));
    }

    #[test]
    fn a_closing_reply_stops_the_batch_and_returns_its_code() {
        let t0 = Instant::now();
        let mut replies = DelayedReplies::new(8);
        replies.push(t0, frame(0), None).unwrap();
        replies
            .push(t0, frame(1), Some(CloseCode::GoingAway))
            .unwrap();
        replies.push(t0, frame(2), None).unwrap();
        let mut out = Vec::new();
        assert_eq!(replies.write_due(t0, &mut out), Some(CloseCode::GoingAway));
        assert_eq!(out, vec![frame(0), frame(1)]);
    }

    #[test]
    fn past_the_bound_replies_are_dropped_but_one_close_is_kept() {
        let t0 = Instant::now();
        let mut replies = DelayedReplies::new(2);
        replies.push(t0, frame(0), None).unwrap();
        replies.push(t0, frame(1), None).unwrap();
        assert_eq!(replies.push(t0, frame(2), None), Err(1));
        assert_eq!(replies.push(t0, frame(3), None), Err(2));
        assert_eq!(
            replies.push(t0, frame(4), Some(CloseCode::GoingAway)),
            Ok(())
        );
        assert_eq!(
            replies.push(t0, frame(5), Some(CloseCode::GoingAway)),
            Err(3)
        );
        let mut out = Vec::new();
        assert_eq!(replies.write_due(t0, &mut out), Some(CloseCode::GoingAway));
        assert_eq!(out, vec![frame(0), frame(1), frame(4)]);
    }
}
