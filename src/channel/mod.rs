//! Channel sessions: everything a socket does on `realtime:*` topics.
//!
//! A [`Session`] holds one socket's joined channels and turns decoded client frames into replies,
//! pushes and publications: the `phx_join` pipeline of PROTOCOL.md 3.2 (tenant, limits, JWT,
//! private-channel check), `phx_leave`, `broadcast` pushes with `self`/`ack` and payload limits,
//! `access_token` refreshes, token expiry while joined, and shutdowns (`system` error then
//! `phx_close`). It is driven by the socket task in `transport` and never touches the socket:
//! frames to write go into a caller-supplied buffer, delayed replies into the connection's
//! outbox. Publishing goes through `broadcast::Broadcaster` only.

mod join;
mod session;

pub use join::{JoinConfig, ReplayConfig, join_reply_response, postgres_changes_id};
pub use session::{AdmittedSocket, ChannelContext, Session, SessionControl};
