//! Gossip seeds: the entries of `DNS_NODES` and `CLUSTER_SEEDS`, resolved to every address
//! their names have (all A/AAAA records, as a Kubernetes headless service lists its pods).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use crate::config::ClusterConfig;

/// One seed entry: a host name or IP literal and the gossip port to reach it on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SeedSpec {
    host: String,
    port: u16,
}

/// Returns the seeds of `config`: `DNS_NODES` (port optional, default `GOSSIP_PORT`) then
/// `CLUSTER_SEEDS` (port required by the config parser). Entries that cannot be read are
/// skipped with a warning.
pub(super) fn seed_specs(config: &ClusterConfig) -> Vec<SeedSpec> {
    config
        .dns_nodes
        .iter()
        .chain(&config.seeds)
        .filter_map(|entry| {
            let spec = parse_seed(entry, config.gossip_port);
            if spec.is_none() {
                tracing::warn!(seed = %entry.escape_debug(), "ignoring a seed that is not host or host:port");
            }
            spec
        })
        .collect()
}

/// Reads `host`, `host:port`, `v6`, or `[v6]:port`.
fn parse_seed(entry: &str, default_port: u16) -> Option<SeedSpec> {
    let entry = entry.trim();
    if entry.is_empty() {
        return None;
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(SeedSpec {
            host: ip.to_string(),
            port: default_port,
        });
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after {
            "" => default_port,
            _ => after.strip_prefix(':')?.parse().ok()?,
        };
        return (port != 0).then(|| SeedSpec {
            host: ip.to_string(),
            port,
        });
    }
    let (host, port) = match entry.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok()?),
        None => (entry, default_port),
    };
    if host.is_empty() || host.contains(':') || port == 0 {
        return None;
    }
    Some(SeedSpec {
        host: host.to_string(),
        port,
    })
}

/// Resolves every seed; a name that does not resolve (yet) is logged and skipped.
pub(super) async fn resolve(specs: &[SeedSpec]) -> BTreeSet<SocketAddr> {
    let mut addrs = BTreeSet::new();
    for spec in specs {
        match tokio::net::lookup_host((spec.host.as_str(), spec.port)).await {
            Ok(found) => addrs.extend(found),
            Err(error) => {
                tracing::warn!(seed = %spec.host, port = spec.port, %error, "cannot resolve a gossip seed");
            }
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: &str, port: u16) -> Option<SeedSpec> {
        Some(SeedSpec {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn seed_entries_parse_with_or_without_a_port() {
        assert_eq!(
            parse_seed("realtime.internal", 7946),
            spec("realtime.internal", 7946)
        );
        assert_eq!(
            parse_seed("realtime-0.realtime:8000", 7946),
            spec("realtime-0.realtime", 8000)
        );
        assert_eq!(parse_seed("10.0.0.5", 7946), spec("10.0.0.5", 7946));
        assert_eq!(parse_seed("127.0.0.1:9000", 7946), spec("127.0.0.1", 9000));
        assert_eq!(parse_seed("::1", 7946), spec("::1", 7946));
        assert_eq!(parse_seed("[::1]:9000", 7946), spec("::1", 9000));
        assert_eq!(parse_seed("[fd00::1]", 7946), spec("fd00::1", 7946));
        for bad in [
            "",
            "host:",
            "host:0",
            "host:99999",
            "[::1",
            "[nothost]:1",
            ":7946",
            "a:b:c",
        ] {
            assert_eq!(parse_seed(bad, 7946), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn seeds_resolve_to_every_address() {
        let specs = [
            parse_seed("127.0.0.1:9000", 1).unwrap(),
            parse_seed("localhost:9001", 1).unwrap(),
            parse_seed("no-such-host.invalid:9002", 1).unwrap(),
        ];
        let addrs = resolve(&specs).await;
        assert!(addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 9000))));
        assert!(
            addrs
                .iter()
                .any(|a| a.port() == 9001 && a.ip().is_loopback()),
            "{addrs:?}"
        );
        assert!(addrs.iter().all(|a| a.port() != 9002));
    }
}
