//! Length-prefixed messages on QUIC streams: a `u32` big-endian length, then that many bytes.
//!
//! The reader checks the length against its limit before it reserves any memory for the body, so
//! a hostile prefix costs the peer's link, never our memory. The writer coalesces small frames
//! into one buffer and passes large ones through as their own chunks (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quinn::{ReadError, RecvStream};

/// Bytes of the length prefix.
pub(super) const PREFIX_BYTES: usize = 4;
/// Frames up to this size are copied into the batch buffer; larger ones are sent as is.
const COALESCE_BELOW: usize = 16 * 1024;
/// Most memory reserved for a message before its bytes arrive (the buffer grows as they do).
const RESERVE_AHEAD: usize = 1024 * 1024;
/// Chunks asked of quinn per read.
const READ_CHUNKS: usize = 32;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum FramingError {
    /// The prefix announces more than the limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a message.
    #[error("stream ended inside a message ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the unfinished message, prefix included.
        buffered: usize,
    },
    /// The stream or its connection failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Splits a byte stream into length-prefixed messages (the sans-IO half of [`FrameReader`]).
pub(super) struct Deframer {
    buf: BytesMut,
    max: usize,
}

impl Deframer {
    /// Creates a deframer that refuses messages over `max` bytes.
    pub(super) fn new(max: usize) -> Deframer {
        Deframer {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends bytes received from the stream.
    pub(super) fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the bytes buffered of an unfinished message.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes one complete message off the buffer, if there is one.
    ///
    /// # Errors
    /// [`FramingError::TooLarge`] as soon as a prefix over the limit is buffered.
    pub(super) fn next_message(&mut self) -> Result<Option<Bytes>, FramingError> {
        let Some(prefix) = self.buf.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max {
            return Err(FramingError::TooLarge { len, max: self.max });
        }
        let total = PREFIX_BYTES + len;
        if self.buf.len() < total {
            // Bounded by `max` (checked above), and by RESERVE_AHEAD until the bytes arrive.
            self.buf
                .reserve((total - self.buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        self.buf.advance(PREFIX_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// Reads length-prefixed messages from a receive stream.
pub(super) struct FrameReader {
    recv: RecvStream,
    deframer: Deframer,
}

impl FrameReader {
    /// Wraps `recv`; messages over `max` bytes are refused.
    pub(super) fn new(recv: RecvStream, max: usize) -> FrameReader {
        FrameReader {
            recv,
            deframer: Deframer::new(max),
        }
    }

    /// Returns the next message, or `None` when the peer finished the stream at a message
    /// boundary.
    ///
    /// # Errors
    /// [`FramingError`]: an oversized prefix, a stream that ends inside a message, or a failed
    /// stream.
    pub(super) async fn next(&mut self) -> Result<Option<Bytes>, FramingError> {
        loop {
            if let Some(message) = self.deframer.next_message()? {
                return Ok(Some(message));
            }
            let mut chunks: [Bytes; READ_CHUNKS] = Default::default();
            match self.recv.read_chunks(&mut chunks).await? {
                Some(count) => {
                    for chunk in &chunks[..count] {
                        self.deframer.extend(chunk);
                    }
                }
                None if self.deframer.buffered() == 0 => return Ok(None),
                None => {
                    return Err(FramingError::Truncated {
                        buffered: self.deframer.buffered(),
                    });
                }
            }
        }
    }
}

/// Builds the chunks of one write from several frames.
#[derive(Default)]
pub(super) struct Batch {
    small: BytesMut,
    chunks: Vec<Bytes>,
    frames: u64,
    bytes: u64,
}

impl Batch {
    /// Appends one frame (its prefix, then its bytes).
    ///
    /// # Panics
    /// Debug builds only: a frame over `u32::MAX` bytes (senders check the frame limit first).
    pub(super) fn push(&mut self, frame: Bytes) {
        debug_assert!(u32::try_from(frame.len()).is_ok());
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.small.put_u32(len);
        self.frames += 1;
        self.bytes += (PREFIX_BYTES + frame.len()) as u64;
        if frame.len() < COALESCE_BELOW {
            self.small.extend_from_slice(&frame);
        } else {
            self.chunks.push(self.small.split().freeze());
            self.chunks.push(frame);
        }
    }

    /// Returns the bytes buffered so far, prefixes included.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Returns the frames buffered so far.
    pub(super) fn frames(&self) -> u64 {
        self.frames
    }

    /// Takes the chunks to write, leaving the batch empty.
    pub(super) fn take_chunks(&mut self) -> Vec<Bytes> {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
        self.frames = 0;
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// Returns one message with its length prefix (handshake messages).
pub(super) fn prefixed(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + message.len());
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deframer_splits_messages_across_arbitrary_chunk_boundaries() {
        let mut wire = Vec::new();
        for message in [&b"hello"[..], b"", b"a longer message"] {
            wire.extend_from_slice(&prefixed(message));
        }
        for step in [1, 3, 7, wire.len()] {
            let mut deframer = Deframer::new(64);
            let mut out = Vec::new();
            for piece in wire.chunks(step) {
                deframer.extend(piece);
                while let Some(message) = deframer.next_message().unwrap() {
                    out.push(message);
                }
            }
            assert_eq!(
                out,
                [&b"hello"[..], b"", b"a longer message"],
                "step {step}"
            );
            assert_eq!(deframer.buffered(), 0);
        }
    }

    #[test]
    fn the_deframer_refuses_an_oversized_prefix_before_the_body_arrives() {
        let mut deframer = Deframer::new(1024);
        deframer.extend(&u32::MAX.to_be_bytes());
        assert!(matches!(
            deframer.next_message(),
            Err(FramingError::TooLarge { len, max: 1024 }) if len == u32::MAX as usize
        ));
        assert!(
            deframer.buf.capacity() < 1024,
            "nothing was reserved for the body"
        );
    }

    #[test]
    fn a_batch_prefixes_each_frame_and_keeps_large_frames_whole() {
        let mut batch = Batch::default();
        batch.push(Bytes::from_static(b"ab"));
        let large = Bytes::from(vec![7u8; COALESCE_BELOW]);
        batch.push(large.clone());
        batch.push(Bytes::from_static(b"c"));
        assert_eq!(batch.frames(), 3);
        assert_eq!(
            batch.bytes(),
            (3 * PREFIX_BYTES + 3 + COALESCE_BELOW) as u64
        );
        let chunks = batch.take_chunks();
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut expected = Vec::new();
        expected.extend_from_slice(&2u32.to_be_bytes());
        expected.extend_from_slice(b"ab");
        expected.extend_from_slice(&(COALESCE_BELOW as u32).to_be_bytes());
        expected.extend_from_slice(&large);
        expected.extend_from_slice(&1u32.to_be_bytes());
        expected.extend_from_slice(b"c");
        assert_eq!(joined, expected);
        assert!(
            chunks.iter().any(|c| c.as_ptr() == large.as_ptr()),
            "the large frame is passed through without a copy"
        );
        assert_eq!(batch.frames(), 0);
        assert!(batch.take_chunks().is_empty());
    }
}
