//! The configuration file, parsed once at the edge. Precedence: flags > environment >
//! file > defaults (clap handles flags and environment; the file fills what they leave).

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The YAML configuration file shared by `capstan up` and `capstan gateway`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    /// Directory for the store, certificates and kubeconfig.
    pub data_dir: Option<PathBuf>,
    /// Listen address of the gateway.
    pub listen: Option<String>,
    /// Store URL (`redb:PATH` or `fdb:CLUSTER_FILE`).
    pub store: Option<String>,
    /// HTTP worker threads.
    pub workers: Option<usize>,
    /// Events kept in the watch cache.
    pub watch_cache_events: Option<usize>,
    /// NATS server URL for the bus (`capstan up` uses an in-process bus without it).
    pub nats: Option<String>,
    /// Simulated nodes to run with `capstan up`.
    pub sim_nodes: Option<usize>,
    /// Revisions of change log kept (older ones are compacted).
    pub change_log_retention: Option<u64>,
    /// The service CIDR (default 10.96.0.0/12): ClusterIPs come from it, its first address
    /// is the `kubernetes` Service's and its tenth the cluster DNS's (`kube-dns`).
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Option<String>,
    /// The cluster domain (default cluster.local): Services are `<svc>.<ns>.svc.<domain>`.
    pub cluster_domain: Option<String>,
    /// The node agent (`capstan up`'s node and `capstan kubelet`).
    pub node: Option<NodeConfig>,
}

/// The `node:` section: settings of the node agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// The node's name (default: the host name).
    pub name: Option<String>,
    /// Whether `capstan up` runs a real node (default true).
    pub enabled: Option<bool>,
    /// The node's pod CIDR (default 10.88.0.0/16).
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// The pod bridge's name (default capstan0).
    pub bridge: Option<String>,
    /// Registry mirrors (`{registry: docker.io, endpoint: 127.0.0.1:5000}`) and
    /// registries reached over plain HTTP (`insecure: [host:port]`).
    pub registries: Option<capstan_kubelet::image::RegistryConfig>,
    /// The first crash-loop back-off in seconds (default 10, as upstream).
    pub crash_loop_backoff_seconds: Option<f64>,
    /// The runc binary.
    pub runc: Option<PathBuf>,
    /// Where the CNI plugins are (default /usr/lib/cni).
    pub cni_bin_dir: Option<PathBuf>,
    /// The cgroup every pod goes under (default /capstan).
    pub cgroup_parent: Option<String>,
    /// The node's resolv.conf (default /etc/resolv.conf): `dnsPolicy: Default` pods get it
    /// and the cluster DNS forwards to its nameservers.
    pub resolv_conf: Option<PathBuf>,
    /// The cluster DNS this node serves.
    pub dns: Option<DnsConfig>,
}

/// The `node.dns:` section: the cluster DNS server inside the node agent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsConfig {
    /// Whether the node serves cluster DNS (default true; without it pods get the node's
    /// resolv.conf).
    pub enabled: Option<bool>,
    /// The address served and given to pods (default: the tenth of `serviceCIDR`). Several
    /// agents on one host (tests) each need their own.
    pub address: Option<String>,
    /// The port (default 53; pods always ask port 53, so another port is for benchmarks).
    pub port: Option<u16>,
    /// The interface that holds the address (default capstan-dns).
    pub interface: Option<String>,
    /// Resolvers for names outside the cluster, `IP` or `IP:PORT` (default: the
    /// nameservers of `resolvConf`, without loopback ones).
    pub upstreams: Option<Vec<String>>,
    /// Worker threads (default: one per CPU, at most 4).
    pub workers: Option<usize>,
}

/// The cluster-wide network settings the node agent needs.
#[derive(Debug, Clone)]
pub struct ClusterNetwork {
    /// The service CIDR.
    pub service_cidr: String,
    /// The cluster domain.
    pub cluster_domain: String,
}

impl FileConfig {
    /// Reads the file, or defaults when no file was named.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(p) = path else { return Ok(FileConfig::default()) };
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("failed to read config file {}", p.display()))?;
        let file: FileConfig =
            serde_yaml_ng::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?;
        file.cluster_network().with_context(|| format!("invalid config file {}", p.display()))?;
        Ok(file)
    }

    /// `serviceCIDR` and `clusterDomain`, checked, over their defaults.
    pub fn cluster_network(&self) -> anyhow::Result<ClusterNetwork> {
        let service_cidr =
            self.service_cidr.clone().unwrap_or_else(|| capstan_kubelet::dns::DEFAULT_SERVICE_CIDR.into());
        capstan_kubelet::dns::nth_address(&service_cidr, 10)
            .map_err(|e| anyhow::anyhow!("serviceCIDR: {e} (want e.g. 10.96.0.0/12)"))?;
        let cluster_domain = self
            .cluster_domain
            .clone()
            .unwrap_or_else(|| capstan_kubelet::dns::DEFAULT_CLUSTER_DOMAIN.into())
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if cluster_domain.len() > 253 || !cluster_domain.split('.').all(label_ok) {
            anyhow::bail!("clusterDomain: {cluster_domain:?} is not a DNS domain (want e.g. cluster.local)");
        }
        Ok(ClusterNetwork { service_cidr, cluster_domain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_network_defaults_and_errors() {
        let c = FileConfig::default().cluster_network().unwrap();
        assert_eq!((c.service_cidr.as_str(), c.cluster_domain.as_str()), ("10.96.0.0/12", "cluster.local"));
        let f: FileConfig =
            serde_yaml_ng::from_str("serviceCIDR: 10.100.0.0/16\nclusterDomain: Corp.Example.\n").unwrap();
        let c = f.cluster_network().unwrap();
        assert_eq!((c.service_cidr.as_str(), c.cluster_domain.as_str()), ("10.100.0.0/16", "corp.example"));
        for bad in
            ["serviceCIDR: 10.100.0.0/29", "serviceCIDR: nope", "clusterDomain: a..b", "clusterDomain: -x"]
        {
            let f: FileConfig = serde_yaml_ng::from_str(bad).unwrap();
            assert!(f.cluster_network().is_err(), "{bad}");
        }
        let f: FileConfig = serde_yaml_ng::from_str(
            "node:\n  dns:\n    address: 10.254.0.10\n    upstreams: [127.0.0.1:5353]\n",
        )
        .unwrap();
        assert_eq!(f.node.unwrap().dns.unwrap().upstreams.unwrap(), ["127.0.0.1:5353"]);
    }
}
