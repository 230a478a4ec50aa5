//! The one typed `Config`, parsed once from environment variables, split by the module that
//! reads each part.
//!
//! Variable names and defaults follow the original server (`config/runtime.exs`); the cluster
//! settings that the Erlang distribution handled there have names of their own here. Each file
//! holds the settings of one consumer and parses exactly its variables: `http` (listener, `app`
//! and the HTTP edges), `db` (metadata connections), `api` (management API, JWT checks),
//! `tenants` (registry, cache, routing fallback, encryption, seed), `limits` (tenant limit
//! defaults), `tenant_db` (tenant database pools), `channel` (join pipeline), `transport`
//! (WebSocket edge), `janitor`, `cluster`, `replication` (Postgres Changes streams).
//! Every value is parsed into a real type at start-up, and a bad value stops start-up with an
//! error that names the variable and what is wrong with it. Secrets never appear in `Debug`
//! output or in error messages. Nothing outside this directory reads the environment.

mod api;
mod channel;
mod cluster;
mod db;
mod http;
mod janitor;
mod limits;
mod replication;
mod tenant_db;
mod tenants;
mod transport;
mod vars;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

pub use api::{ApiConfig, DEFAULT_API_JWT_SECRET};
pub use channel::ChannelConfig;
pub use cluster::{ClusterConfig, GossipTuning};
pub use db::{DbConfig, IpVersion};
pub use http::HttpConfig;
pub use janitor::JanitorConfig;
pub use limits::LimitDefaults;
pub use replication::ReplicationConfig;
pub use tenant_db::TenantDbConfig;
pub use tenants::{EncryptionConfig, SeedConfig, TenantsConfig};
pub use transport::TransportConfig;

use vars::{Vars, millis, non_zero};

/// Variables of the original server that have no meaning here; accepted and ignored.
pub const IGNORED_VARIABLES: &[&str] = &[
    "ERL_AFLAGS",
    "ERL_CRASH_DUMP_BYTES",
    "RLIMIT_NOFILE",
    "CLUSTER_STRATEGIES",
    "GEN_RPC_TCP_SERVER_PORT",
    "GEN_RPC_TCP_CLIENT_PORT",
    "GEN_RPC_SSL_SERVER_PORT",
    "GEN_RPC_SSL_CLIENT_PORT",
    "GEN_RPC_SOCKET_IP",
    "GEN_RPC_CERTFILE",
    "GEN_RPC_KEYFILE",
    "GEN_RPC_CACERTFILE",
    "GEN_RPC_CONNECT_TIMEOUT_IN_MS",
    "GEN_RPC_SEND_TIMEOUT_IN_MS",
    "GEN_RPC_COMPRESS",
    "GEN_RPC_COMPRESSION_THRESHOLD_IN_BYTES",
    "GEN_RPC_MAX_BATCH_SIZE",
    "GEN_RPC_IPV6_ONLY",
    "MAX_GEN_RPC_CLIENTS",
    "MAX_GEN_RPC_CALL_CLIENTS",
    "BROADCAST_POOL_SIZE",
    "PRESENCE_POOL_SIZE",
    "USERS_SCOPE_SHARDS",
    "POSTGRES_CDC_SCOPE_SHARDS",
    "MUSTER_SCOPE_SHARDS",
    "WEBSOCKET_MAX_HEAP_SIZE",
    "LOGS_ENGINE",
    "LOGFLARE_API_KEY",
    "LOGFLARE_SOURCE_ID",
    "LOGFLARE_LOGGER_BACKEND_URL",
    "DASHBOARD_AUTH",
    "DASHBOARD_USER",
    "DASHBOARD_PASSWORD",
    "HTTP_DYNAMIC_BUFFER_MIN",
    "HTTP_DYNAMIC_BUFFER_MAX",
    "REALTIME_IP_VERSION",
    "CONNECT_PARTITION_SLOTS",
    "REQUEST_ID_BAGGAGE_KEY",
];

/// A secret string: usable by the code that needs it, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the secret text; call only where the secret is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A start-up configuration error: which variable, and what is wrong with its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The value of a variable could not be parsed or is out of range.
    #[error("invalid value for {var}: {problem}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// What is wrong, quoting the value unless it is a secret.
        problem: String,
    },
    /// A variable that has no default was not set.
    #[error("missing required variable {var}: {problem}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// Why it is needed.
        problem: String,
    },
}

impl ConfigError {
    /// Returns the name of the variable at fault.
    pub fn variable(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Missing { var, .. } => var,
        }
    }
}

/// Log verbosity (`LOG_LEVEL`), with the Elixir level names the original accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info` (also `notice`)
    Info,
    /// `warning` (also `warn`)
    Warn,
    /// `error` (also `critical`, `alert`, `emergency`)
    Error,
}

impl LogLevel {
    /// Returns the `tracing` filter directive for this level.
    pub fn as_directive(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// The whole configuration of one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP and WebSocket listener.
    pub http: HttpConfig,
    /// Metadata database.
    pub db: DbConfig,
    /// Encryption of tenant secrets.
    pub encryption: EncryptionConfig,
    /// Management API and JWT checks.
    pub api: ApiConfig,
    /// Tenant registry: cache and routing fallback.
    pub tenants: TenantsConfig,
    /// Defaults of tenant limits.
    pub limits: LimitDefaults,
    /// Tenant database connections (Postgres Changes).
    pub tenant_db: TenantDbConfig,
    /// Self-host seed.
    pub seed: SeedConfig,
    /// Channel sessions.
    pub channel: ChannelConfig,
    /// WebSocket transport.
    pub transport: TransportConfig,
    /// Janitor.
    pub janitor: JanitorConfig,
    /// Cluster.
    pub cluster: ClusterConfig,
    /// Replication streams of Postgres Changes (slot names, lifecycle, WAL lag bound).
    pub replication: ReplicationConfig,
    /// `APP_NAME`: name of the deployment, shown in health answers. Default empty.
    pub app_name: String,
    /// `REGION`: region label of this node. Default none.
    pub region: Option<String>,
    /// `LOG_LEVEL`. Default `info`.
    pub log_level: LogLevel,
    /// `RUST_LOG`: a full `tracing` filter that overrides `LOG_LEVEL` when set.
    pub log_filter: Option<String>,
    /// `MIGRATION_PARTITION_SLOTS`: tenant migrations run at once. Default 2 × CPUs.
    pub migration_partition_slots: NonZeroU32,
    /// `METRICS_CLEANER_SCHEDULE_TIMER_IN_MS`: period of stale-metric cleanup. Default 30 min.
    pub metrics_cleaner_schedule_timer: Duration,
    /// Ignored variables that were set, for one log line at start-up.
    pub ignored_set: Vec<&'static str>,
}

impl Config {
    /// Reads the process environment and parses it.
    ///
    /// # Errors
    /// The first variable whose value is invalid, or a required one that is missing.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(std::env::vars())
    }

    /// Parses a configuration from name/value pairs (the environment, or literals in tests).
    ///
    /// # Errors
    /// The first variable whose value is invalid, or a required one that is missing.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let env = Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;

        let http = HttpConfig::parse(&env)?;
        let db = DbConfig::parse(&env)?;
        let encryption = EncryptionConfig::parse(&env)?;
        let api = ApiConfig::parse(&env)?;
        let limits = LimitDefaults::parse(&env)?;
        let tenant_db = TenantDbConfig::parse(&env)?;
        let seed = SeedConfig::parse(&env)?;
        let tenants = TenantsConfig::parse(&env, &seed)?;
        let channel = ChannelConfig::parse(&env)?;
        let transport = TransportConfig::parse(&env)?;
        let janitor = JanitorConfig::parse(&env)?;
        let replication = ReplicationConfig::parse(&env)?;
        let app_name = env.text_or("APP_NAME", "");
        let cluster = ClusterConfig::parse(&env, &app_name, http.port)?;

        let ignored_set = IGNORED_VARIABLES
            .iter()
            .copied()
            .filter(|name| env.contains(name))
            .collect();

        Ok(Config {
            http,
            db,
            encryption,
            api,
            tenants,
            limits,
            tenant_db,
            seed,
            channel,
            transport,
            janitor,
            cluster,
            replication,
            app_name,
            region: env.non_empty("REGION"),
            log_level: env.parse_or("LOG_LEVEL", LogLevel::Info, log_level)?,
            log_filter: env.non_empty("RUST_LOG"),
            migration_partition_slots: env.parse_or(
                "MIGRATION_PARTITION_SLOTS",
                NonZeroU32::new(cpus.saturating_mul(2)).unwrap_or(NonZeroU32::MIN),
                non_zero,
            )?,
            metrics_cleaner_schedule_timer: env.parse_or(
                "METRICS_CLEANER_SCHEDULE_TIMER_IN_MS",
                Duration::from_secs(1800),
                millis,
            )?,
            ignored_set,
        })
    }
}

fn log_level(raw: &str) -> Result<LogLevel, String> {
    match raw.to_ascii_lowercase().as_str() {
        "trace" => Ok(LogLevel::Trace),
        "debug" => Ok(LogLevel::Debug),
        "info" | "notice" => Ok(LogLevel::Info),
        "warning" | "warn" => Ok(LogLevel::Warn),
        "error" | "critical" | "alert" | "emergency" => Ok(LogLevel::Error),
        _ => Err("is not a log level (debug, info, warning or error)".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::types::TenantId;

    const KEY: (&str, &str) = ("DB_ENC_KEY", "1234567890123456");

    fn parse(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(std::iter::once(KEY).chain(extra.iter().copied()))
    }

    #[test]
    fn defaults_match_the_original_server() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.http.port, 4000);
        assert_eq!(c.http.max_connections, 1000);
        assert_eq!(c.http.max_header_length, 4096);
        assert_eq!(c.db.host, "127.0.0.1");
        assert_eq!(c.db.port, 5432);
        assert_eq!(c.db.user, "supabase_admin");
        assert_eq!(c.db.password.expose(), "postgres");
        assert_eq!(c.db.name, "postgres");
        assert_eq!(c.db.pool_size.get(), 5);
        assert_eq!(c.api.jwt_secret.expose(), DEFAULT_API_JWT_SECRET);
        assert_eq!(c.limits.max_bytes_per_second, 100_000);
        assert_eq!(c.limits.max_channels_per_client, 100);
        assert_eq!(c.limits.max_concurrent_users, 200);
        assert_eq!(c.limits.max_events_per_second, 100);
        assert_eq!(c.limits.max_joins_per_second, 100);
        assert_eq!(c.limits.max_presence_events_per_second, 1000);
        assert_eq!(c.limits.max_payload_size_in_kb, 3000);
        assert_eq!(c.limits.client_presence_max_calls, 5);
        assert_eq!(c.limits.client_presence_window, Duration::from_secs(30));
        assert_eq!(c.limits, LimitDefaults::default());
        assert_eq!(c.tenants.cache_expiration, Duration::from_secs(30));
        assert_eq!(c.tenants.not_found_expiration, Duration::from_secs(1));
        assert_eq!(c.transport.no_channel_timeout, Duration::from_secs(600));
        assert!(!c.seed.enabled);
        assert_eq!(c.seed.tenant_name, "realtime-dev");
        assert_eq!(c.channel.join_error_backoff, Duration::from_secs(5));
        assert_eq!(c.transport.connect_error_backoff, Duration::from_secs(2));
        assert_eq!(c.janitor.schedule_timer, Duration::from_secs(4 * 3600));
        assert!(c.janitor.schedule_randomize);
        assert_eq!(c.janitor.max_children, 5);
        assert_eq!(c.metrics_cleaner_schedule_timer, Duration::from_secs(1800));
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.api.jwt_claim_validators.is_empty());
        assert_eq!(c.tenant_db, TenantDbConfig::default());
        assert_eq!(c.tenant_db.pool_size, 2);
    }

    #[test]
    fn bad_numbers_name_the_variable_and_the_value() {
        let err = parse(&[("PORT", "forty")]).unwrap_err();
        assert_eq!(err.variable(), "PORT");
        assert_eq!(
            err.to_string(),
            "invalid value for PORT: `forty` is not a port number (0-65535)"
        );
        let err = parse(&[("TENANT_MAX_EVENTS_PER_SECOND", "0")]).unwrap_err();
        assert_eq!(err.variable(), "TENANT_MAX_EVENTS_PER_SECOND");
        assert!(err.to_string().contains("greater than zero"), "{err}");
        let err = parse(&[("DB_QUEUE_TARGET", "-5")]).unwrap_err();
        assert_eq!(err.variable(), "DB_QUEUE_TARGET");
        let err = parse(&[("TENANT_DB_CONNECT_TIMEOUT_MS", "0")]).unwrap_err();
        assert_eq!(err.variable(), "TENANT_DB_CONNECT_TIMEOUT_MS");
        let err = parse(&[("TENANT_DB_POOL_SIZE", "20")]).unwrap_err();
        assert_eq!(err.variable(), "TENANT_DB_POOL_SIZE");
        assert!(err.to_string().contains("TENANT_DB_MAX_POOL_SIZE"), "{err}");
        let ok = parse(&[
            ("TENANT_DB_POOL_SIZE", "20"),
            ("TENANT_DB_MAX_POOL_SIZE", "20"),
        ])
        .unwrap();
        assert_eq!(ok.tenant_db.pool_size, 20);
    }

    #[test]
    fn bad_enums_and_json_are_refused() {
        assert_eq!(
            parse(&[("DB_IP_VERSION", "ipv5")]).unwrap_err().variable(),
            "DB_IP_VERSION"
        );
        assert_eq!(
            parse(&[("SEED_SELF_HOST", "maybe")])
                .unwrap_err()
                .variable(),
            "SEED_SELF_HOST"
        );
        assert_eq!(
            parse(&[("LOG_LEVEL", "loud")]).unwrap_err().variable(),
            "LOG_LEVEL"
        );
        let err = parse(&[("JWT_CLAIM_VALIDATORS", "[1]")]).unwrap_err();
        assert_eq!(err.variable(), "JWT_CLAIM_VALIDATORS");
        assert!(err.to_string().contains("not a JSON object"));
        let ok = parse(&[("JWT_CLAIM_VALIDATORS", r#"{"iss":"x"}"#)]).unwrap();
        assert_eq!(ok.api.jwt_claim_validators["iss"], "x");
    }

    #[test]
    fn encryption_key_is_required_and_sized_and_never_echoed() {
        let err = Config::from_vars(Vec::<(String, String)>::new()).unwrap_err();
        assert_eq!(err.variable(), "DB_ENC_KEY");
        assert!(parse(&[("DB_ENC_KEY", "sixteen-byte-key")]).is_ok());
        let err = Config::from_vars([("DB_ENC_KEY", "tooshort")]).unwrap_err();
        assert_eq!(err.variable(), "DB_ENC_KEY");
        assert!(!err.to_string().contains("tooshort"));
        let err = parse(&[("DB_ENC_WRITE_GCM", "true")]).unwrap_err();
        assert_eq!(err.variable(), "DB_ENC_KEY_GCM");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = parse(&[
            ("API_JWT_SECRET", "very-secret-value-0123456789-abcdef"),
            ("DB_PASSWORD", "pw-xyz"),
        ])
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("very-secret-value"));
        assert!(!printed.contains("pw-xyz"));
        assert!(!printed.contains("1234567890123456"));
    }

    #[test]
    fn janitor_accepts_both_documented_and_runtime_names() {
        let c = parse(&[("JANITOR_MAX_CHILDREN", "7")]).unwrap();
        assert_eq!(c.janitor.max_children, 7);
        let c = parse(&[
            ("JANITOR_CLEANUP_MAX_CHILDREN", "9"),
            ("JANITOR_MAX_CHILDREN", "7"),
        ])
        .unwrap();
        assert_eq!(c.janitor.max_children, 9);
    }

    #[test]
    fn fallback_tenant_follows_the_seed_unless_set() {
        assert_eq!(parse(&[]).unwrap().tenants.fallback_tenant, None);
        let seeded = parse(&[("SEED_SELF_HOST", "true")]).unwrap();
        assert_eq!(
            seeded.tenants.fallback_tenant,
            Some(TenantId::from("realtime-dev"))
        );
        let off = parse(&[("SEED_SELF_HOST", "true"), ("FALLBACK_TENANT", "none")]).unwrap();
        assert_eq!(off.tenants.fallback_tenant, None);
        let named = parse(&[("FALLBACK_TENANT", "acme")]).unwrap();
        assert_eq!(named.tenants.fallback_tenant, Some(TenantId::from("acme")));
        assert_eq!(
            parse(&[("FALLBACK_TENANT", "a.b")]).unwrap_err().variable(),
            "FALLBACK_TENANT"
        );
        assert_eq!(
            parse(&[("WS_OUTBOX_CAPACITY", "0")])
                .unwrap_err()
                .variable(),
            "WS_OUTBOX_CAPACITY"
        );
    }

    #[test]
    fn ignored_variables_are_accepted_and_reported() {
        let c = parse(&[("ERL_AFLAGS", "-proto_dist inet6_tcp")]).unwrap();
        assert_eq!(c.ignored_set, vec!["ERL_AFLAGS"]);
    }

    #[test]
    fn cluster_settings_parse() {
        let c = parse(&[
            ("DNS_NODES", "realtime-0.realtime, realtime-1.realtime:7946"),
            ("NODE_NAME", "n1"),
            ("GOSSIP_PORT", "8000"),
            ("BUS_PORT", "8001"),
            ("ADVERTISE_ADDR", "10.1.2.3"),
            ("CLUSTER_SECRET", "sixteen-bytes-at-least"),
        ])
        .unwrap();
        assert_eq!(
            c.cluster.dns_nodes,
            vec!["realtime-0.realtime", "realtime-1.realtime:7946"]
        );
        assert_eq!(c.cluster.node_name, "n1");
        assert_eq!(c.cluster.gossip_port, 8000);
        assert_eq!(c.cluster.advertise_ip, Some(IpAddr::from([10, 1, 2, 3])));
        let err = parse(&[("GOSSIP_PORT", "8000"), ("BUS_PORT", "8000")]).unwrap_err();
        assert_eq!(err.variable(), "BUS_PORT");
    }

    #[test]
    fn a_cluster_needs_a_long_enough_secret() {
        for seeds in [
            ("CLUSTER_SEEDS", "127.0.0.1:7946"),
            ("DNS_NODES", "realtime"),
        ] {
            assert_eq!(parse(&[seeds]).unwrap_err().variable(), "CLUSTER_SECRET");
            assert_eq!(
                parse(&[seeds, ("CLUSTER_SECRET", "short")])
                    .unwrap_err()
                    .variable(),
                "CLUSTER_SECRET"
            );
            assert!(parse(&[seeds, ("CLUSTER_SECRET", "0123456789abcdef")]).is_ok());
        }
        // A cluster of one needs none.
        assert!(parse(&[]).unwrap().cluster.secret.is_none());
    }

    #[test]
    fn cluster_seeds_and_gossip_tuning_parse() {
        let c = parse(&[]).unwrap();
        assert!(c.cluster.seeds.is_empty());
        assert_eq!(c.cluster.seed_refresh, Duration::from_secs(10));
        assert_eq!(c.cluster.gossip, GossipTuning::default());
        assert_eq!(c.cluster.gossip.interval, Duration::from_millis(150));
        let c = parse(&[
            ("CLUSTER_SEEDS", "127.0.0.1:7946, node-b:7000,[::1]:7001"),
            ("DNS_NODES_REFRESH_MS", "2500"),
            ("GOSSIP_INTERVAL_MS", "100"),
            ("GOSSIP_PHI_THRESHOLD", "8.5"),
            ("GOSSIP_INITIAL_INTERVAL_MS", "200"),
            ("GOSSIP_MAX_INTERVAL_MS", "1500"),
            ("CLUSTER_SECRET", "sixteen-bytes-at-least"),
        ])
        .unwrap();
        assert_eq!(
            c.cluster.seeds,
            vec!["127.0.0.1:7946", "node-b:7000", "[::1]:7001"]
        );
        assert_eq!(c.cluster.seed_refresh, Duration::from_millis(2500));
        assert_eq!(
            c.cluster.gossip,
            GossipTuning {
                interval: Duration::from_millis(100),
                phi_threshold: 8.5,
                initial_interval: Duration::from_millis(200),
                max_interval: Duration::from_millis(1500),
            }
        );
        for (var, value) in [
            ("CLUSTER_SEEDS", "node-b"),
            ("CLUSTER_SEEDS", "node-b:0"),
            ("CLUSTER_SEEDS", "::1:7000"),
            ("DNS_NODES_REFRESH_MS", "0"),
            ("GOSSIP_INTERVAL_MS", "0"),
            ("GOSSIP_PHI_THRESHOLD", "-1"),
            ("GOSSIP_PHI_THRESHOLD", "NaN"),
            ("GOSSIP_INITIAL_INTERVAL_MS", "x"),
        ] {
            assert_eq!(
                parse(&[(var, value)]).unwrap_err().variable(),
                var,
                "{value}"
            );
        }
        let err = parse(&[("GOSSIP_INTERVAL_MS", "3000")]).unwrap_err();
        assert_eq!(err.variable(), "GOSSIP_MAX_INTERVAL_MS");
    }
}
