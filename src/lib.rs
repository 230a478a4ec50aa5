//! realtime: a Supabase Realtime-compatible server, rebuilt in Rust as a clustered node.
//!
//! # Module map (layers, lowest first; imports point down only)
//! - L0 base: [`types`] (ids), [`error`] (operational `ErrorCode`), [`close_code`] (WebSocket
//!   close codes), [`config`] (typed `Config` from the environment), [`telemetry`] (logging),
//!   `metrics` (the Prometheus registry, counters bumped by other modules, `/metrics` text).
//! - L1 pure logic: [`limits`] (per-tenant rate counters, token buckets, client presence window;
//!   the clock is an argument), [`presence::crdt`] (the presence CRDT).
//! - L2 outside world: `db` (metadata Postgres pool and `_realtime` migrations), `tenants`
//!   (tenant records, encrypted secrets, cache, self-host seed), `auth` (JWT verification),
//!   `cluster` (membership: chitchat gossip, the live view and its join/leave events), `bus`
//!   (authenticated QUIC links to peer nodes carrying proto frames in order).
//! - L3 `hub` (rooms, fan-out); L4 `broadcast`, [`presence`] (the tracker: track/untrack,
//!   `presence_diff` fan-out, the replication seam); L5 `channel` (per-socket sessions).
//! - [`postgres_changes`]: table changes of tenant databases; public for its integration tests:
//!   [`postgres_changes::replication`] (per-tenant logical replication streams, run by
//!   [`tasks::Owner`]s).
//! - `ring`: the consistent-hash ring over live members that names each tenant's stream owner
//!   (pure; `RingOwnership` implements [`postgres_changes::replication::StreamOwnership`]).
//! - L6 edges: `api` (axum: tenants API, health), `inspector` (the Realtime Inspector page).
//! - [`janitor`]: on a schedule, makes the upcoming day partitions of each owned tenant's
//!   `realtime.messages` and drops the expired ones, in bounded chunks of owned tasks.
//! - L7 wiring: [`app`] builds every subsystem from `Config` and owns shutdown; [`probe`] is
//!   the `realtime healthcheck` subcommand (a client of the node's own `/healthcheck`).
//!
//! See `docs/ARCHITECTURE.md` for the data flow and the seams later steps plug into.

pub(crate) mod api;
pub mod app;
pub(crate) mod auth;
pub(crate) mod authorization;
pub(crate) mod broadcast;
pub(crate) mod bus;
pub(crate) mod channel;
pub(crate) mod close_code;
pub(crate) mod cluster;
pub mod config;
pub mod db;
pub(crate) mod db_broadcast;
pub mod error;
pub(crate) mod hub;
pub(crate) mod inspector;
pub mod janitor;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod peers;
pub(crate) mod phoenix;
pub mod postgres_changes;
pub(crate) mod presence;
pub mod probe;
pub(crate) mod ring;
pub mod tasks;
pub(crate) mod telemetry;
pub mod tenants;
pub(crate) mod tls;
pub(crate) mod transport;
pub mod types;
