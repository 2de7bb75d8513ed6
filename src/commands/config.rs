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
    /// Containers that name no seccomp profile run under `RuntimeDefault` (default true;
    /// false: `Unconfined`, as upstream's kubelet by default).
    pub seccomp_default: Option<bool>,
}

impl FileConfig {
    /// Reads the file, or defaults when no file was named.
    pub fn load(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(p) = path else { return Ok(FileConfig::default()) };
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("failed to read config file {}", p.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))
    }
}
