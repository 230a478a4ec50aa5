//! Postgres Changes: a tenant's table changes streamed to the channels that subscribed to them
//! (PROTOCOL.md 6).
//!
//! Built in parts, each a module of its own: the join entries (`binding`, pure), the filter
//! grammar and matching (`filter`, pure),
//! the pgoutput decoder and typed values (`pgoutput`, `values`, pure), the replication stream of a
//! tenant (`replication`), and, next, the subscription registry and the batched RLS check. The
//! tenant database pools live in `db::tenant`.
//!
//! `pgoutput`, `values` and `replication` are public because integration tests check them
//! against a real Postgres; nothing outside the crate uses them otherwise.

pub(crate) mod binding;
mod consumer;
pub(crate) mod dispatch;
pub(crate) mod feed;
pub(crate) mod filter;
mod inspect;
pub(crate) mod payload;
pub mod pgoutput;
pub(crate) mod registry;
pub mod replication;
pub(crate) mod rls;
pub(crate) mod service;
pub mod values;
