//! Shared test set-up for the server's integration tests: the generic parts (throwaway
//! PostgreSQL, fresh databases, JWTs, the WebSocket client) come from the `testkit` crate and
//! are re-exported here; what needs the server in-process (`Config`, `app::start`) lives here.
#![allow(dead_code, unused_imports)]

pub mod ws;

use realtime::app::RunningApp;
use realtime::config::Config;

pub use testkit::{
    API_SECRET, ENC_KEY, Pg, api_token, connect, fresh_database, pg, sign, tenant_body, vars,
};

/// A configuration for database `dbname`.
pub fn config(dbname: &str, extra: &[(&str, &str)]) -> Config {
    Config::from_vars(vars(dbname, extra)).expect("test configuration")
}

/// A node started on a fresh database, and that database's name.
pub async fn start_app(extra: &[(&str, &str)]) -> (RunningApp, String) {
    let db = fresh_database().await;
    let app = realtime::app::start(config(&db, extra))
        .await
        .expect("node starts");
    (app, db)
}
