//! Settings of cluster membership and the inter-node bus.

use std::net::IpAddr;

use super::vars::{Vars, ip_address, port_number};
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
    /// `ADVERTISE_ADDR`: address peers use to reach this node. Default: the first address of the
    /// host name, else 127.0.0.1.
    pub advertise_ip: Option<IpAddr>,
    /// `CLUSTER_SECRET`: shared secret that authenticates peers on the bus. Default none.
    pub secret: Option<Secret>,
}

impl ClusterConfig {
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
        };
        if cluster.gossip_port == cluster.bus_port && cluster.gossip_port != 0 {
            return Err(ConfigError::Invalid {
                var: "BUS_PORT",
                problem: format!("must differ from GOSSIP_PORT ({})", cluster.gossip_port),
            });
        }
        Ok(cluster)
    }
}
