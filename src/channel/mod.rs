//! Channel sessions: everything a socket does on `realtime:*` topics.
//!
//! A [`Session`] holds one socket's joined channels and turns decoded client frames into replies,
//! pushes and publications: the `phx_join` pipeline of PROTOCOL.md 3.2 (tenant, limits, JWT,
//! private-channel check), `phx_leave`, `broadcast` pushes with `self`/`ack` and payload limits,
//! `access_token` refreshes, token expiry while joined, and shutdowns (`system` error then
//! `phx_close`). It is driven by the socket task in `transport` and never touches the socket:
//! frames to write go into a caller-supplied buffer. A join's waits run in a preparation the
//! socket task polls ([`Session::prepared_join`]); its admission is decided by pure code
//! (`admission`); refusals ([`JoinError`]) and shutdowns ([`ShutdownReason`]) are typed, and
//! delayed refusals wait in a bounded per-socket queue served by the socket's timer. Publishing
//! goes through `broadcast::Broadcaster` only.

mod admission;
mod delayed;
mod error;
pub(crate) mod join;
mod session;

pub use session::{AdmittedSocket, ChannelContext, Session, SessionControl, x_headers_json};
