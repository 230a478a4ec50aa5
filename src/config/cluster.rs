//! Settings of cluster membership and the inter-node bus.

use std::net::IpAddr;
use std::time::Duration;

use super::vars::{Vars, ip_address, millis, port_number};
use super::{ConfigError, Secret};

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
    /// `ADVERTISE_ADDR`: address peers use to reach this node. Default (decided by `cluster` at
    /// start): the local address of the route to the first seed, else the first non-loopback
    /// address of the node name, else 127.0.0.1.
    pub advertise_ip: Option<IpAddr>,
    /// `CLUSTER_SECRET`: shared secret that authenticates peers on the bus; required (16 bytes
    /// or more) when `DNS_NODES` or `CLUSTER_SEEDS` is set.
    pub secret: Option<Secret>,
    /// `CLUSTER_SEEDS`: comma-separated `host:port` gossip seeds besides `DNS_NODES` (local runs,
    /// fixed peers). Default none. With neither, the node is a cluster of one and opens no socket.
    pub seeds: Vec<String>,
    /// `DNS_NODES_REFRESH_MS`: period of re-resolving `DNS_NODES` and `CLUSTER_SEEDS` (new seed
    /// addresses are gossiped to). Default 10 s.
    pub seed_refresh: Duration,
    /// Gossip period and failure-detector tuning.
    pub gossip: GossipTuning,
}

/// How often nodes gossip and how soon a silent node is declared dead.
///
/// The phi-accrual detector declares a node dead when the time since its last heartbeat exceeds
/// `phi_threshold` times the mean interval between its heartbeats; the mean starts from
/// `initial_interval` (weighted as five samples), and intervals longer than `max_interval` are
/// not sampled. Heartbeats reach a peer about once per gossip period, so with the defaults a
/// killed node is dead after roughly 1-2 s (docs/ARCHITECTURE.md, "Membership").
#[derive(Clone, Debug, PartialEq)]
pub struct GossipTuning {
    /// `GOSSIP_INTERVAL_MS`: period of a gossip round. Default 150 ms.
    pub interval: Duration,
    /// `GOSSIP_PHI_THRESHOLD`: phi above which a node is dead. Default 10.
    pub phi_threshold: f64,
    /// `GOSSIP_INITIAL_INTERVAL_MS`: prior mean heartbeat interval of a new node. Default 300 ms.
    pub initial_interval: Duration,
    /// `GOSSIP_MAX_INTERVAL_MS`: longer heartbeat intervals are not sampled. Default 2000 ms.
    pub max_interval: Duration,
}

impl Default for GossipTuning {
    fn default() -> Self {
        GossipTuning {
            interval: Duration::from_millis(150),
            phi_threshold: 10.0,
            initial_interval: Duration::from_millis(300),
            max_interval: Duration::from_millis(2000),
        }
    }
}

impl GossipTuning {
    fn parse(env: &Vars) -> Result<GossipTuning, ConfigError> {
        let default = GossipTuning::default();
        let tuning = GossipTuning {
            interval: env.parse_or("GOSSIP_INTERVAL_MS", default.interval, positive_millis)?,
            phi_threshold: env.parse_or(
                "GOSSIP_PHI_THRESHOLD",
                default.phi_threshold,
                phi_threshold,
            )?,
            initial_interval: env.parse_or(
                "GOSSIP_INITIAL_INTERVAL_MS",
                default.initial_interval,
                positive_millis,
            )?,
            max_interval: env.parse_or(
                "GOSSIP_MAX_INTERVAL_MS",
                default.max_interval,
                positive_millis,
            )?,
        };
        if tuning.max_interval <= tuning.interval {
            return Err(ConfigError::Invalid {
                var: "GOSSIP_MAX_INTERVAL_MS",
                problem: format!(
                    "must be longer than GOSSIP_INTERVAL_MS ({} ms)",
                    tuning.interval.as_millis()
                ),
            });
        }
        Ok(tuning)
    }
}

fn positive_millis(raw: &str) -> Result<Duration, String> {
    match millis(raw)? {
        Duration::ZERO => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

fn phi_threshold(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(phi) if phi.is_finite() && phi > 0.0 && phi <= 1000.0 => Ok(phi),
        _ => Err("is not a number between 0 (exclusive) and 1000".into()),
    }
}

/// Checks a `CLUSTER_SEEDS` entry: `host:port` or `[v6]:port` with a non-zero port.
fn seed_host_port(entry: &str) -> Result<(), String> {
    let port = match entry.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            port
        }
        _ => return Err("is not host:port".into()),
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("has no valid port (1-65535)".into()),
        Ok(_) => Ok(()),
    }
}

/// Shortest accepted `CLUSTER_SECRET`.
const MIN_SECRET_BYTES: usize = 16;

impl ClusterConfig {
    /// Whether this node has peers to find (`DNS_NODES` or `CLUSTER_SEEDS`); otherwise it is a
    /// cluster of one and opens no gossip or bus socket.
    pub fn is_clustered(&self) -> bool {
        !self.dns_nodes.is_empty() || !self.seeds.is_empty()
    }

    /// Parses the cluster settings; `app_name` and `http_port` feed the defaults.
    pub(super) fn parse(
        env: &Vars,
        app_name: &str,
        http_port: u16,
    ) -> Result<ClusterConfig, ConfigError> {
        let default_node_name = env
            .non_empty("HOSTNAME")
            .unwrap_or_else(|| format!("realtime@{http_port}"));
        let cluster = ClusterConfig {
            dns_nodes: env.list("DNS_NODES"),
            node_name: env.non_empty("NODE_NAME").unwrap_or(default_node_name),
            cluster_id: env.non_empty("CLUSTER_ID").unwrap_or_else(|| {
                if app_name.is_empty() {
                    "realtime".to_string()
                } else {
                    app_name.to_string()
                }
            }),
            gossip_port: env.parse_or("GOSSIP_PORT", 7946, port_number)?,
            bus_port: env.parse_or("BUS_PORT", 7947, port_number)?,
            advertise_ip: env.parse_opt("ADVERTISE_ADDR", ip_address)?,
            secret: env.secret_opt("CLUSTER_SECRET"),
            seeds: env.list("CLUSTER_SEEDS"),
            seed_refresh: env.parse_or(
                "DNS_NODES_REFRESH_MS",
                Duration::from_secs(10),
                positive_millis,
            )?,
            gossip: GossipTuning::parse(env)?,
        };
        for seed in &cluster.seeds {
            seed_host_port(seed).map_err(|problem| ConfigError::Invalid {
                var: "CLUSTER_SEEDS",
                problem: format!("entry `{seed}` {problem}"),
            })?;
        }
        if cluster.is_clustered() {
            match &cluster.secret {
                None => {
                    return Err(ConfigError::Invalid {
                        var: "CLUSTER_SECRET",
                        problem: "is required when DNS_NODES or CLUSTER_SEEDS is set (it authenticates peers on the bus)".into(),
                    });
                }
                Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                    return Err(ConfigError::Invalid {
                        var: "CLUSTER_SECRET",
                        problem: format!("must be at least {MIN_SECRET_BYTES} bytes long"),
                    });
                }
                Some(_) => {}
            }
        }
        if cluster.gossip_port == cluster.bus_port && cluster.gossip_port != 0 {
            return Err(ConfigError::Invalid {
                var: "BUS_PORT",
                problem: format!("must differ from GOSSIP_PORT ({})", cluster.gossip_port),
            });
        }
        Ok(cluster)
    }
}

#[cfg(test)]
impl ClusterConfig {
    /// Returns the settings parsed from the literal `vars` alone, defaults elsewhere.
    ///
    /// # Panics
    /// When a value does not parse.
    pub(crate) fn for_test(vars: &[(&str, &str)]) -> ClusterConfig {
        let env = Vars(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        ClusterConfig::parse(&env, "", 4000).expect("test cluster settings parse")
    }
}
