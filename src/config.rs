//! The one typed `Config`, parsed once from environment variables.
//!
//! Variable names and defaults follow the original server (`config/runtime.exs`); the cluster
//! settings that the Erlang distribution handled there have names of their own here. Every value
//! is parsed into a real type at start-up, and a bad value stops start-up with an error that
//! names the variable and what is wrong with it. Secrets never appear in `Debug` output or in
//! error messages. Nothing outside this file reads the environment.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};

/// Default tenant JWT secret of a self-hosted setup (the original's documented value).
pub const DEFAULT_API_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

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

/// IP family forced for outgoing database connections (`DB_IP_VERSION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    /// `ipv4`
    V4,
    /// `ipv6`
    V6,
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

/// HTTP and WebSocket listener settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// `PORT`: TCP port of the HTTP/WebSocket listener. Default 4000.
    pub port: u16,
    /// `BIND_ADDR`: address to listen on. Default `0.0.0.0` (all IPv4 interfaces).
    pub bind_ip: IpAddr,
    /// `MAX_CONNECTIONS`: most simultaneous TCP connections this node accepts. Default 1000.
    pub max_connections: u32,
    /// `MAX_HEADER_LENGTH`: longest accepted HTTP header value, bytes. Default 4096.
    pub max_header_length: usize,
    /// `NUM_ACCEPTORS`: accepted for compatibility; tokio uses one accept loop. Default 100.
    pub num_acceptors: u32,
    /// `MAX_REQUEST_BODY_BYTES`: largest HTTP request body, bytes. Default 5000000 (the
    /// original's WebSocket frame limit).
    pub max_body_bytes: usize,
}

impl HttpConfig {
    /// Returns the socket address to listen on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.port)
    }
}

/// The metadata database (`_realtime` schema) connection settings.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// `DB_HOST`. Default `127.0.0.1`.
    pub host: String,
    /// `DB_PORT`. Default 5432.
    pub port: u16,
    /// `DB_USER`. Default `supabase_admin`.
    pub user: String,
    /// `DB_PASSWORD`. Default `postgres`.
    pub password: Secret,
    /// `DB_NAME`. Default `postgres`.
    pub name: String,
    /// `DB_AFTER_CONNECT_QUERY`: SQL run on every new metadata connection. Default none.
    pub after_connect_query: Option<String>,
    /// `DB_IP_VERSION`: `ipv4` or `ipv6`; unset lets the resolver decide.
    pub ip_version: Option<IpVersion>,
    /// `DB_POOL_SIZE`: metadata connections kept. Default 5.
    pub pool_size: NonZeroU32,
    /// `DB_QUEUE_TARGET`: longest wait for a pooled connection before the request fails,
    /// milliseconds. Default 5000.
    pub queue_target: Duration,
    /// `DB_QUEUE_INTERVAL`: accepted for compatibility (Ecto's queue sampling window),
    /// milliseconds. Default 5000.
    pub queue_interval: Duration,
    /// `DB_SSL`: require TLS to the metadata database. Default false. Only `false` is supported.
    pub ssl: bool,
}

/// Encryption of tenant secrets at rest in the metadata database.
#[derive(Clone, Debug)]
pub struct EncryptionConfig {
    /// `DB_ENC_KEY`: 16-byte AES-128 key (the original's ECB scheme). Required.
    pub key: Secret,
    /// `DB_ENC_KEY_GCM`: optional 32-byte AES-256-GCM key; values prefixed `g1:` use it.
    pub key_gcm: Option<Secret>,
    /// `DB_ENC_WRITE_GCM`: write new values with AES-256-GCM. Default false; needs `DB_ENC_KEY_GCM`.
    pub write_gcm: bool,
}

/// Secrets and checks of the management API and of tenant JWTs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// `API_JWT_SECRET`: signs the bearer tokens of `/api/tenants`; also the self-host tenant's
    /// JWT secret. Default [`DEFAULT_API_JWT_SECRET`].
    pub jwt_secret: Secret,
    /// `API_JWT_SECRET_NEXT`: second accepted signing secret during rotation. Default none.
    pub jwt_secret_next: Option<Secret>,
    /// `API_TOKEN_BLOCKLIST`: comma-separated tokens refused by the management API.
    pub token_blocklist: Vec<Secret>,
    /// `METRICS_JWT_SECRET`: signs the bearer tokens of `/metrics`. Default none (`/metrics` open).
    pub metrics_jwt_secret: Option<Secret>,
    /// `SECRET_KEY_BASE`: accepted for compatibility; this server keeps no signed cookies.
    pub secret_key_base: Option<Secret>,
    /// `JWT_CLAIM_VALIDATORS`: JSON object of claims that every tenant JWT must carry with
    /// exactly these values. Default `{}`.
    pub jwt_claim_validators: Map<String, Value>,
}

/// Defaults of the per-tenant limits, used when a tenant record leaves one unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDefaults {
    /// `TENANT_MAX_BYTES_PER_SECOND`. Default 100000.
    pub max_bytes_per_second: u32,
    /// `TENANT_MAX_CHANNELS_PER_CLIENT`. Default 100.
    pub max_channels_per_client: u32,
    /// `TENANT_MAX_CONCURRENT_USERS`. Default 200.
    pub max_concurrent_users: u32,
    /// `TENANT_MAX_EVENTS_PER_SECOND`. Default 100.
    pub max_events_per_second: u32,
    /// `TENANT_MAX_JOINS_PER_SECOND`. Default 100.
    pub max_joins_per_second: u32,
}

/// The self-hosted default tenant.
#[derive(Clone, Debug)]
pub struct SeedConfig {
    /// `SEED_SELF_HOST`: create the default tenant at start-up if missing. Default false.
    pub enabled: bool,
    /// `SELF_HOST_TENANT_NAME`: its external id. Default `realtime-dev`.
    pub tenant_name: String,
}

/// Timings of channels and sockets.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// `CHANNEL_ERROR_BACKOFF_MS`: delay before a join error reply. Default 5000.
    pub join_error_backoff: Duration,
    /// `CONNECT_ERROR_BACKOFF_MS`: delay before a refused WebSocket upgrade. Default 2000.
    pub connect_error_backoff: Duration,
    /// `NO_CHANNEL_TIMEOUT_IN_MS`: a socket without channels is closed after this. Default 10 min.
    pub no_channel_timeout: Duration,
    /// `TENANT_CACHE_EXPIRATION_IN_MS`: lifetime of a cached tenant record. Default 30000.
    pub tenant_cache_expiration: Duration,
    /// `CLIENT_PRESENCE_MAX_CALLS`: presence pushes per client window. Default 5.
    pub client_presence_max_calls: u32,
    /// `CLIENT_PRESENCE_WINDOW_MS`: the client presence window. Default 30000.
    pub client_presence_window: Duration,
}

/// WebSocket transport settings (additions of this server; the original hard-codes them).
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// `FALLBACK_TENANT`: tenant used when the Host's first label names no tenant (so
    /// `ws://localhost:4000/...` works in a self-hosted setup). Default: `SELF_HOST_TENANT_NAME`
    /// when `SEED_SELF_HOST=true`, else none; `none` turns it off.
    pub fallback_tenant: Option<String>,
    /// `WS_MAX_FRAME_BYTES`: largest accepted WebSocket message, bytes. Default 5000000 (the
    /// original's limit); larger frames close the socket with 1009.
    pub max_frame_bytes: usize,
    /// `WS_OUTBOX_CAPACITY`: messages queued for one socket before it is closed as a slow
    /// consumer. Default 1024.
    pub outbox_capacity: usize,
    /// `WS_IDLE_TIMEOUT_MS`: a socket with no inbound frame for this long is closed. Default 60000.
    pub idle_timeout: Duration,
    /// `WS_WRITE_TIMEOUT_MS`: a write that cannot complete for this long closes the socket.
    /// Default 10000.
    pub write_timeout: Duration,
    /// `WS_MAX_FRAMES_PER_SECOND`: inbound frames one socket may send per second (burst twice
    /// that); excess frames are dropped. Default 10000.
    pub max_frames_per_second: u32,
}

/// The janitor that cleans tenant databases (`RUN_JANITOR` and friends).
#[derive(Clone, Debug)]
pub struct JanitorConfig {
    /// `RUN_JANITOR`. Default false.
    pub enabled: bool,
    /// `JANITOR_SCHEDULE_TIMER_IN_MS`: period between runs. Default 4 h.
    pub schedule_timer: Duration,
    /// `JANITOR_SCHEDULE_RANDOMIZE`: add jitter to the period. Default true.
    pub schedule_randomize: bool,
    /// `JANITOR_RUN_AFTER_IN_MS`: delay of the first run. Default 10 min.
    pub run_after: Duration,
    /// `JANITOR_CLEANUP_MAX_CHILDREN` (alias `JANITOR_MAX_CHILDREN`): tenants cleaned at once. Default 5.
    pub max_children: u32,
    /// `JANITOR_CLEANUP_CHILDREN_TIMEOUT` (alias `JANITOR_CHILDREN_TIMEOUT`): per-tenant timeout. Default 5000 ms.
    pub children_timeout: Duration,
    /// `JANITOR_CHUNK_SIZE`: tenants per batch. Default 10.
    pub chunk_size: u32,
}

/// Cluster membership and the inter-node bus.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `DNS_NODES`: comma-separated seed host names (or `host:port`) resolved for gossip peers.
    pub dns_nodes: Vec<String>,
    /// `NODE_NAME`: this node's unique name. Default: the host name, else `realtime@<port>`.
    pub node_name: String,
    /// `CLUSTER_ID`: nodes gossip only with nodes of the same id. Default `APP_NAME` or `realtime`.
    pub cluster_id: String,
    /// `GOSSIP_PORT`: UDP port of the gossip layer. Default 7946.
    pub gossip_port: u16,
    /// `BUS_PORT`: UDP port of the QUIC bus. Default 7947.
    pub bus_port: u16,
    /// `ADVERTISE_ADDR`: address peers use to reach this node. Default: the first address of the
    /// host name, else 127.0.0.1.
    pub advertise_ip: Option<IpAddr>,
    /// `CLUSTER_SECRET`: shared secret that authenticates peers on the bus. Default none.
    pub secret: Option<Secret>,
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
    /// Defaults of tenant limits.
    pub limits: LimitDefaults,
    /// Self-host seed.
    pub seed: SeedConfig,
    /// Channel and socket timings.
    pub channel: ChannelConfig,
    /// WebSocket transport.
    pub transport: TransportConfig,
    /// Janitor.
    pub janitor: JanitorConfig,
    /// Cluster.
    pub cluster: ClusterConfig,
    /// `APP_NAME`: name of the deployment, shown in health answers. Default empty.
    pub app_name: String,
    /// `REGION`: region label of this node. Default none.
    pub region: Option<String>,
    /// `LOG_LEVEL`. Default `info`.
    pub log_level: LogLevel,
    /// `RUST_LOG`: a full `tracing` filter that overrides `LOG_LEVEL` when set.
    pub log_filter: Option<String>,
    /// `SLOT_NAME_SUFFIX`: appended to replication slot names. Default none.
    pub slot_name_suffix: Option<String>,
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

        let http = HttpConfig {
            port: env.parse_or("PORT", 4000, port_number)?,
            bind_ip: env.parse_or("BIND_ADDR", IpAddr::from([0, 0, 0, 0]), ip_address)?,
            max_connections: env.parse_or("MAX_CONNECTIONS", 1000, positive_u32)?,
            max_header_length: env.parse_or("MAX_HEADER_LENGTH", 4096, positive_usize)?,
            num_acceptors: env.parse_or("NUM_ACCEPTORS", 100, positive_u32)?,
            max_body_bytes: env.parse_or("MAX_REQUEST_BODY_BYTES", 5_000_000, positive_usize)?,
        };

        let db = DbConfig {
            host: env.text_or("DB_HOST", "127.0.0.1"),
            port: env.parse_or("DB_PORT", 5432, port_number)?,
            user: env.text_or("DB_USER", "supabase_admin"),
            password: Secret::new(env.text_or("DB_PASSWORD", "postgres")),
            name: env.text_or("DB_NAME", "postgres"),
            after_connect_query: env.non_empty("DB_AFTER_CONNECT_QUERY"),
            ip_version: env.parse_opt("DB_IP_VERSION", ip_version)?,
            pool_size: env.parse_or("DB_POOL_SIZE", NonZeroU32::MIN.saturating_add(4), non_zero)?,
            queue_target: env.parse_or("DB_QUEUE_TARGET", Duration::from_millis(5000), millis)?,
            queue_interval: env.parse_or(
                "DB_QUEUE_INTERVAL",
                Duration::from_millis(5000),
                millis,
            )?,
            ssl: env.parse_or("DB_SSL", false, boolean)?,
        };
        if db.ssl {
            return Err(ConfigError::Invalid {
                var: "DB_SSL",
                problem: "TLS to the metadata database is not supported yet; use `false`".into(),
            });
        }

        let encryption = EncryptionConfig {
            key: env.secret_required(
                "DB_ENC_KEY",
                "a 16-byte key that encrypts tenant secrets at rest",
            )?,
            key_gcm: env.secret_opt("DB_ENC_KEY_GCM"),
            write_gcm: env.parse_or("DB_ENC_WRITE_GCM", false, boolean)?,
        };
        if encryption.key.expose().len() != 16 {
            return Err(ConfigError::Invalid {
                var: "DB_ENC_KEY",
                problem: format!(
                    "must be exactly 16 bytes for AES-128, got {} bytes",
                    encryption.key.expose().len()
                ),
            });
        }
        if let Some(gcm) = &encryption.key_gcm {
            if gcm.expose().len() != 32 {
                return Err(ConfigError::Invalid {
                    var: "DB_ENC_KEY_GCM",
                    problem: format!(
                        "must be exactly 32 bytes for AES-256-GCM, got {} bytes",
                        gcm.expose().len()
                    ),
                });
            }
        } else if encryption.write_gcm {
            return Err(ConfigError::Missing {
                var: "DB_ENC_KEY_GCM",
                problem: "DB_ENC_WRITE_GCM=true needs a 32-byte DB_ENC_KEY_GCM".into(),
            });
        }

        let api = ApiConfig {
            jwt_secret: env
                .secret_opt("API_JWT_SECRET")
                .unwrap_or_else(|| Secret::new(DEFAULT_API_JWT_SECRET)),
            jwt_secret_next: env.secret_opt("API_JWT_SECRET_NEXT"),
            token_blocklist: env
                .list("API_TOKEN_BLOCKLIST")
                .into_iter()
                .map(Secret::new)
                .collect(),
            metrics_jwt_secret: env.secret_opt("METRICS_JWT_SECRET"),
            secret_key_base: env.secret_opt("SECRET_KEY_BASE"),
            jwt_claim_validators: env.parse_or("JWT_CLAIM_VALIDATORS", Map::new(), json_object)?,
        };

        let limits = LimitDefaults {
            max_bytes_per_second: env.parse_or(
                "TENANT_MAX_BYTES_PER_SECOND",
                100_000,
                positive_u32,
            )?,
            max_channels_per_client: env.parse_or(
                "TENANT_MAX_CHANNELS_PER_CLIENT",
                100,
                positive_u32,
            )?,
            max_concurrent_users: env.parse_or("TENANT_MAX_CONCURRENT_USERS", 200, positive_u32)?,
            max_events_per_second: env.parse_or(
                "TENANT_MAX_EVENTS_PER_SECOND",
                100,
                positive_u32,
            )?,
            max_joins_per_second: env.parse_or("TENANT_MAX_JOINS_PER_SECOND", 100, positive_u32)?,
        };

        let seed = SeedConfig {
            enabled: env.parse_or("SEED_SELF_HOST", false, boolean)?,
            tenant_name: env.parse_or(
                "SELF_HOST_TENANT_NAME",
                "realtime-dev".to_string(),
                external_id,
            )?,
        };

        let channel = ChannelConfig {
            join_error_backoff: env.parse_or(
                "CHANNEL_ERROR_BACKOFF_MS",
                Duration::from_millis(5000),
                millis,
            )?,
            connect_error_backoff: env.parse_or(
                "CONNECT_ERROR_BACKOFF_MS",
                Duration::from_millis(2000),
                millis,
            )?,
            no_channel_timeout: env.parse_or(
                "NO_CHANNEL_TIMEOUT_IN_MS",
                Duration::from_secs(600),
                millis,
            )?,
            tenant_cache_expiration: env.parse_or(
                "TENANT_CACHE_EXPIRATION_IN_MS",
                Duration::from_millis(30_000),
                millis,
            )?,
            client_presence_max_calls: env.parse_or(
                "CLIENT_PRESENCE_MAX_CALLS",
                5,
                positive_u32,
            )?,
            client_presence_window: env.parse_or(
                "CLIENT_PRESENCE_WINDOW_MS",
                Duration::from_millis(30_000),
                millis,
            )?,
        };

        let fallback_tenant = match env.non_empty("FALLBACK_TENANT") {
            Some(v) if v.eq_ignore_ascii_case("none") => None,
            Some(v) => Some(external_id(&v).map_err(|problem| ConfigError::Invalid {
                var: "FALLBACK_TENANT",
                problem: format!("`{v}` {problem}"),
            })?),
            None => seed.enabled.then(|| seed.tenant_name.clone()),
        };
        let transport = TransportConfig {
            fallback_tenant,
            max_frame_bytes: env.parse_or("WS_MAX_FRAME_BYTES", 5_000_000, positive_usize)?,
            outbox_capacity: env.parse_or("WS_OUTBOX_CAPACITY", 1024, positive_usize)?,
            idle_timeout: env.parse_or("WS_IDLE_TIMEOUT_MS", Duration::from_secs(60), millis)?,
            write_timeout: env.parse_or("WS_WRITE_TIMEOUT_MS", Duration::from_secs(10), millis)?,
            max_frames_per_second: env.parse_or(
                "WS_MAX_FRAMES_PER_SECOND",
                10_000,
                positive_u32,
            )?,
        };

        let janitor = JanitorConfig {
            enabled: env.parse_or("RUN_JANITOR", false, boolean)?,
            schedule_timer: env.parse_or(
                "JANITOR_SCHEDULE_TIMER_IN_MS",
                Duration::from_secs(4 * 3600),
                millis,
            )?,
            schedule_randomize: env.parse_or("JANITOR_SCHEDULE_RANDOMIZE", true, boolean)?,
            run_after: env.parse_or("JANITOR_RUN_AFTER_IN_MS", Duration::from_secs(600), millis)?,
            max_children: env.parse_aliased_or(
                &["JANITOR_CLEANUP_MAX_CHILDREN", "JANITOR_MAX_CHILDREN"],
                5,
                positive_u32,
            )?,
            children_timeout: env.parse_aliased_or(
                &[
                    "JANITOR_CLEANUP_CHILDREN_TIMEOUT",
                    "JANITOR_CHILDREN_TIMEOUT",
                ],
                Duration::from_millis(5000),
                millis,
            )?,
            chunk_size: env.parse_or("JANITOR_CHUNK_SIZE", 10, positive_u32)?,
        };

        let app_name = env.text_or("APP_NAME", "");
        let default_node_name = env
            .non_empty("HOSTNAME")
            .unwrap_or_else(|| format!("realtime@{}", http.port));
        let cluster = ClusterConfig {
            dns_nodes: env.list("DNS_NODES"),
            node_name: env.non_empty("NODE_NAME").unwrap_or(default_node_name),
            cluster_id: env.non_empty("CLUSTER_ID").unwrap_or_else(|| {
                if app_name.is_empty() {
                    "realtime".to_string()
                } else {
                    app_name.clone()
                }
            }),
            gossip_port: env.parse_or("GOSSIP_PORT", 7946, port_number)?,
            bus_port: env.parse_or("BUS_PORT", 7947, port_number)?,
            advertise_ip: env.parse_opt("ADVERTISE_ADDR", ip_address)?,
            secret: env.secret_opt("CLUSTER_SECRET"),
        };
        if cluster.gossip_port == cluster.bus_port && cluster.gossip_port != 0 {
            return Err(ConfigError::Invalid {
                var: "BUS_PORT",
                problem: format!("must differ from GOSSIP_PORT ({})", cluster.gossip_port),
            });
        }

        let ignored_set = IGNORED_VARIABLES
            .iter()
            .copied()
            .filter(|name| env.0.contains_key(*name))
            .collect();

        Ok(Config {
            http,
            db,
            encryption,
            api,
            limits,
            seed,
            channel,
            transport,
            janitor,
            cluster,
            app_name,
            region: env.non_empty("REGION"),
            log_level: env.parse_or("LOG_LEVEL", LogLevel::Info, log_level)?,
            log_filter: env.non_empty("RUST_LOG"),
            slot_name_suffix: env.non_empty("SLOT_NAME_SUFFIX"),
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

/// The variables, looked up by name.
struct Vars(HashMap<String, String>);

impl Vars {
    /// Returns the trimmed value of `var` when it is set and not blank.
    fn non_empty(&self, var: &str) -> Option<String> {
        self.0
            .get(var)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn text_or(&self, var: &str, default: &str) -> String {
        self.non_empty(var).unwrap_or_else(|| default.to_string())
    }

    fn secret_opt(&self, var: &str) -> Option<Secret> {
        // Secrets are not trimmed: whitespace may be part of them.
        self.0
            .get(var)
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.clone()))
    }

    fn secret_required(&self, var: &'static str, what: &str) -> Result<Secret, ConfigError> {
        self.secret_opt(var).ok_or_else(|| ConfigError::Missing {
            var,
            problem: format!("set it to {what}"),
        })
    }

    fn list(&self, var: &str) -> Vec<String> {
        self.non_empty(var)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parse_opt<T>(
        &self,
        var: &'static str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.non_empty(var) {
            None => Ok(None),
            Some(raw) => parse(&raw)
                .map(Some)
                .map_err(|problem| ConfigError::Invalid {
                    var,
                    problem: format!("`{raw}` {problem}"),
                }),
        }
    }

    fn parse_or<T>(
        &self,
        var: &'static str,
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        Ok(self.parse_opt(var, parse)?.unwrap_or(default))
    }

    /// Like `parse_or`, taking the first of several names that is set (documented name first).
    fn parse_aliased_or<T>(
        &self,
        vars: &[&'static str],
        default: T,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        for var in vars {
            if let Some(value) = self.parse_opt(var, parse)? {
                return Ok(value);
            }
        }
        Ok(default)
    }
}

fn port_number(raw: &str) -> Result<u16, String> {
    raw.parse::<u16>()
        .map_err(|_| "is not a port number (0-65535)".to_string())
}

fn positive_u32(raw: &str) -> Result<u32, String> {
    match raw.parse::<u32>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("is not a whole number between 1 and 4294967295".into()),
    }
}

fn positive_usize(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Err("must be greater than zero".into()),
        Ok(n) => Ok(n),
        Err(_) => Err("is not a positive whole number".into()),
    }
}

fn non_zero(raw: &str) -> Result<NonZeroU32, String> {
    positive_u32(raw).map(|n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn millis(raw: &str) -> Result<Duration, String> {
    raw.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| "is not a whole number of milliseconds".to_string())
}

fn boolean(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("is not a boolean (true or false)".into()),
    }
}

fn ip_address(raw: &str) -> Result<IpAddr, String> {
    IpAddr::from_str(raw).map_err(|_| "is not an IP address".to_string())
}

fn ip_version(raw: &str) -> Result<IpVersion, String> {
    match raw {
        "ipv4" => Ok(IpVersion::V4),
        "ipv6" => Ok(IpVersion::V6),
        _ => Err("is not an IP version (ipv4 or ipv6)".into()),
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

fn json_object(raw: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("is not a JSON object".into()),
        Err(e) => Err(format!("is not valid JSON ({e})")),
    }
}

fn external_id(raw: &str) -> Result<String, String> {
    if raw.contains(['.', '/', ' ']) {
        Err("is not a valid tenant id (no dots, slashes or spaces)".into())
    } else {
        Ok(raw.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            c.limits,
            LimitDefaults {
                max_bytes_per_second: 100_000,
                max_channels_per_client: 100,
                max_concurrent_users: 200,
                max_events_per_second: 100,
                max_joins_per_second: 100,
            }
        );
        assert!(!c.seed.enabled);
        assert_eq!(c.seed.tenant_name, "realtime-dev");
        assert_eq!(c.channel.join_error_backoff, Duration::from_secs(5));
        assert_eq!(c.channel.connect_error_backoff, Duration::from_secs(2));
        assert_eq!(c.janitor.schedule_timer, Duration::from_secs(4 * 3600));
        assert!(c.janitor.schedule_randomize);
        assert_eq!(c.janitor.max_children, 5);
        assert_eq!(c.metrics_cleaner_schedule_timer, Duration::from_secs(1800));
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.api.jwt_claim_validators.is_empty());
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
        assert_eq!(parse(&[]).unwrap().transport.fallback_tenant, None);
        let seeded = parse(&[("SEED_SELF_HOST", "true")]).unwrap();
        assert_eq!(
            seeded.transport.fallback_tenant.as_deref(),
            Some("realtime-dev")
        );
        let off = parse(&[("SEED_SELF_HOST", "true"), ("FALLBACK_TENANT", "none")]).unwrap();
        assert_eq!(off.transport.fallback_tenant, None);
        let named = parse(&[("FALLBACK_TENANT", "acme")]).unwrap();
        assert_eq!(named.transport.fallback_tenant.as_deref(), Some("acme"));
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
}
