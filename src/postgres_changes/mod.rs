//! Postgres Changes: a tenant's table changes streamed to the channels that subscribed to them
//! (PROTOCOL.md 6).
//!
//! Built in parts, each a module of its own: the filter grammar and matching (`filter`, pure),
//! the pgoutput decoder and typed values (`pgoutput`, `values`, pure), the replication stream of a
//! tenant (`replication`), and, next, the subscription registry and the batched RLS check. The
//! tenant database pools live in `db::tenant`.
//!
//! `pgoutput` and `values` are public because `tests/pgoutput_decode.rs` checks them against a
//! real Postgres; nothing outside the crate uses them otherwise.

pub mod pgoutput;
pub mod values;
