//! Test kit for `realtime`: the generic parts of the integration and cluster tests, without a
//! dependency on the server library (so `cluster-tests` can drive node *processes*).
//!
//! * [`pg`]: a throwaway PostgreSQL 15 cluster (one per test process, or owned) and a fresh
//!   database per test;
//! * [`jwt`]: HS256 client tokens and management API tokens;
//! * [`ws`]: a raw WebSocket client (Host header, JSON and binary frames, close codes, silence);
//! * [`node`]: the environment of a node, and the built `realtime` binary run as a child process
//!   that is ready once `/healthcheck` answers;
//! * [`fixtures`]: the shared secrets and request bodies the tests use.
//!
//! The in-process helpers (building `realtime::config::Config`, `realtime::app::start`) stay in
//! the server's `tests/common`, which re-exports this crate.

pub mod fixtures;
pub mod jwt;
pub mod node;
pub mod pg;
pub mod ws;

pub use fixtures::{API_SECRET, ENC_KEY, SELF_HOST, tenant_body};
pub use jwt::{api_token, client_token, now, sign};
pub use node::{Node, realtime_binary, vars};
pub use pg::{Pg, connect, fresh_database, pg};
