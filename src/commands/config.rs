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
    /// Directory of the certificates and the ServiceAccount key (default `<dataDir>/pki`).
    pub pki_dir: Option<PathBuf>,
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
    /// Seconds between compactions of the change log (default 60).
    pub compaction_interval_seconds: Option<f64>,
    /// Requests the API service works on at once, besides watches, streams and
    /// `system:masters` (default 64; 0: no limit).
    pub max_requests_inflight: Option<usize>,
    /// The node agent (`capstan up`'s node and `capstan kubelet`).
    pub node: Option<NodeConfig>,
    /// The range Service ClusterIPs come from (default 10.96.0.0/12; the first address is
    /// the `kubernetes` Service's, the tenth the cluster DNS's).
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Option<String>,
    /// The range node ports come from (default 30000-32767).
    pub node_port_range: Option<String>,
    /// The cluster's DNS domain (default cluster.local).
    pub cluster_domain: Option<String>,
    /// The address the `kubernetes` Service's endpoints name (default: the listen address,
    /// or the default route's source address when listening on 0.0.0.0).
    pub advertise_address: Option<std::net::IpAddr>,
    /// Static bearer tokens: a CSV file of `token,user,uid,"group1,group2"` lines, as
    /// upstream's `--token-auth-file`.
    pub token_file: Option<PathBuf>,
    /// Upstream's EncryptionConfiguration file for encryption at rest (default
    /// `<dataDir>/encryption.yaml`, created with a new AES-GCM key for Secrets).
    pub encryption_config: Option<PathBuf>,
    /// Pod Security Admission defaults and exemptions.
    pub pod_security: Option<PodSecurityConfig>,
    /// The audit log (none without this section).
    pub audit: Option<AuditConfig>,
}

/// The `podSecurity:` section (upstream's PodSecurityConfiguration, flattened).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityConfig {
    /// Default enforce level for unlabelled namespaces (`baseline`, `restricted:v1.30`...).
    pub enforce: Option<String>,
    /// Default warn level.
    pub warn: Option<String>,
    /// Default audit level.
    pub audit: Option<String>,
    /// Exemptions.
    pub exemptions: Option<PodSecurityExemptions>,
}

/// `podSecurity.exemptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSecurityExemptions {
    /// Users.
    #[serde(default)]
    pub usernames: Vec<String>,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Runtime classes.
    #[serde(default)]
    pub runtime_classes: Vec<String>,
}

/// The `audit:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// The log file.
    pub path: PathBuf,
    /// An `audit.k8s.io/v1` Policy file (default: everything at Metadata).
    pub policy: Option<PathBuf>,
    /// Rotate the file before it passes this size (default 100).
    #[serde(rename = "maxSizeMB")]
    pub max_size_mb: Option<u64>,
    /// Rotated files kept (default 5).
    pub max_backups: Option<u32>,
}

/// The cluster-wide network settings the gateways and node agents need.
pub struct ClusterNetwork {
    /// Service ClusterIP and node port ranges.
    pub services: capstan_gateway::strategy::ServiceNetwork,
    /// The DNS domain.
    pub cluster_domain: String,
}

impl FileConfig {
    /// The cluster network settings, validated (an invalid range is a usage error before
    /// any port is bound).
    pub fn cluster_network(&self) -> anyhow::Result<ClusterNetwork> {
        let services = capstan_gateway::strategy::ServiceNetwork::parse(
            self.service_cidr.as_deref().unwrap_or("10.96.0.0/12"),
            self.node_port_range.as_deref().unwrap_or("30000-32767"),
        )
        .map_err(anyhow::Error::msg)?;
        let cluster_domain = self
            .cluster_domain
            .as_deref()
            .unwrap_or("cluster.local")
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
            anyhow::bail!(
                "invalid clusterDomain {cluster_domain:?}: not a DNS domain (want e.g. cluster.local)"
            );
        }
        Ok(ClusterNetwork { services, cluster_domain })
    }

    /// Settings every gateway takes from the file: the network, static tokens.
    pub fn apply_gateway(
        &self,
        cfg: &mut capstan_gateway::Config,
        net: &ClusterNetwork,
    ) -> anyhow::Result<()> {
        cfg.service_network = net.services.clone();
        cfg.cluster_domain = net.cluster_domain.clone();
        cfg.advertise_address = self.advertise_address;
        if let Some(ps) = &self.pod_security {
            let parse = |v: &Option<String>,
                         what: &str|
             -> anyhow::Result<Option<capstan_api::podsecurity::LevelVersion>> {
                v.as_deref()
                    .map(|s| s.parse().map_err(|e| anyhow::anyhow!("invalid podSecurity.{what} {s:?}: {e}")))
                    .transpose()
            };
            let d = capstan_gateway::admission::pod_security::Config::default();
            let ex = ps.exemptions.as_ref();
            cfg.pod_security = capstan_gateway::admission::pod_security::Config {
                enforce: parse(&ps.enforce, "enforce")?.unwrap_or(d.enforce),
                warn: parse(&ps.warn, "warn")?.unwrap_or(d.warn),
                audit: parse(&ps.audit, "audit")?.unwrap_or(d.audit),
                exempt_users: ex.map(|e| e.usernames.clone()).unwrap_or_default(),
                exempt_namespaces: ex.map(|e| e.namespaces.clone()).unwrap_or_default(),
                exempt_runtime_classes: ex.map(|e| e.runtime_classes.clone()).unwrap_or_default(),
            };
        }
        if let Some(a) = &self.audit {
            let policy = match &a.policy {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("failed to read audit policy {}: {e}", p.display()))?;
                    capstan_gateway::audit::Policy::parse(&text).map_err(anyhow::Error::msg)?
                }
                None => capstan_gateway::audit::Policy::all(capstan_gateway::audit::Level::Metadata),
            };
            cfg.audit = Some(capstan_gateway::audit::Config {
                path: a.path.clone(),
                policy,
                max_bytes: a.max_size_mb.unwrap_or(100) * 1024 * 1024,
                max_backups: a.max_backups.unwrap_or(5),
            });
        }
        if let Some(p) = &self.token_file {
            cfg.tokens = capstan_gateway::authn::read_token_file(p).map_err(anyhow::Error::msg)?;
        }
        if let Some(w) = self.workers {
            cfg.workers = w;
        }
        if let Some(r) = self.change_log_retention {
            cfg.change_log_retention = r;
        }
        if let Some(s) = self.compaction_interval_seconds {
            if !(s.is_finite() && s > 0.0) {
                anyhow::bail!("compactionIntervalSeconds must be a positive number of seconds, not {s}");
            }
            cfg.compaction_interval = std::time::Duration::from_secs_f64(s);
        }
        if let Some(n) = self.watch_cache_events {
            cfg.watch_cache_events = n;
        }
        if let Some(n) = self.max_requests_inflight {
            cfg.max_requests_inflight = n;
        }
        Ok(())
    }

    /// The names and addresses the serving certificate must carry for a gateway listening
    /// on `listen`.
    pub fn serving_hosts(&self, listen: std::net::SocketAddr, net: &ClusterNetwork) -> Vec<String> {
        let mut hosts = vec![listen.ip().to_string()];
        hosts.extend(self.advertise_address.map(|a| a.to_string()));
        hosts
            .extend(capstan_gateway::pki::kubernetes_service_names(&net.cluster_domain, net.services.nth(1)));
        hosts
    }
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
    /// Whether the node runs the service proxy (default true).
    pub service_proxy: Option<bool>,
    /// The node's resolv.conf (default /etc/resolv.conf): `dnsPolicy: Default` pods get it
    /// and the cluster DNS forwards to its nameservers.
    pub resolv_conf: Option<PathBuf>,
    /// The cluster DNS this node serves.
    pub dns: Option<DnsConfig>,
    /// Containers that name no seccomp profile run under `RuntimeDefault` (default true;
    /// false: `Unconfined`, as upstream's kubelet by default).
    pub seccomp_default: Option<bool>,
    /// Rotate a container's log when it reaches this size (a quantity, default `10Mi`, as
    /// upstream's `containerLogMaxSize`).
    pub container_log_max_size: Option<String>,
    /// Log files kept per container, the current one included (default 5, at least 2, as
    /// upstream's `containerLogMaxFiles`).
    pub container_log_max_files: Option<u32>,
    /// Image garbage collection starts when the image filesystem's usage reaches this
    /// percentage (default 85; 100 turns it off; upstream's `imageGCHighThresholdPercent`).
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<u8>,
    /// ... and removes unused images until usage is below this percentage (default 80;
    /// upstream's `imageGCLowThresholdPercent`).
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<u8>,
    /// How long an image must have been unused before it may be removed, in seconds
    /// (default 120, as upstream's `imageMinimumGCAge`).
    #[serde(rename = "imageMinimumGCAgeSeconds")]
    pub image_minimum_gc_age_seconds: Option<u64>,
    /// How often image usage is checked, in seconds (default 300, upstream's fixed period).
    #[serde(rename = "imageGCPeriodSeconds")]
    pub image_gc_period_seconds: Option<u64>,
    /// Hard eviction thresholds, upstream's `evictionHard` signals `memory.available`
    /// (default `100Mi`), `nodefs.available` (`10%`), `imagefs.available` (`15%`),
    /// `pid.available` (off); a quantity (a count for pids) or a percentage of capacity; an
    /// empty string turns a signal off.
    pub eviction_hard: Option<std::collections::BTreeMap<String, String>>,
    /// Soft eviction thresholds (upstream's `evictionSoft`), the same signals and values as
    /// `evictionHard`; each needs a grace period in `evictionSoftGracePeriod`.
    pub eviction_soft: Option<std::collections::BTreeMap<String, String>>,
    /// How long a soft threshold must stay crossed before a pod is evicted, by signal, as
    /// Go durations (`1m30s`; upstream's `evictionSoftGracePeriod`).
    pub eviction_soft_grace_period: Option<std::collections::BTreeMap<String, String>>,
    /// The longest grace period, in seconds, a pod evicted for a soft threshold gets (caps
    /// its `terminationGracePeriodSeconds`; default 0, as upstream's
    /// `evictionMaxPodGracePeriod`).
    pub eviction_max_pod_grace_period: Option<i64>,
    /// How often the eviction manager measures, in seconds (default 10).
    pub eviction_monitoring_period_seconds: Option<u64>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_network_defaults_and_errors() {
        let c = FileConfig::default().cluster_network().unwrap();
        assert_eq!(
            (c.services.cidr.to_string().as_str(), c.cluster_domain.as_str()),
            ("10.96.0.0/12", "cluster.local")
        );
        assert_eq!(c.services.nth(10).to_string(), "10.96.0.10");
        let f: FileConfig =
            serde_yaml_ng::from_str("serviceCIDR: 10.100.0.0/16\nclusterDomain: Corp.Example.\n").unwrap();
        let c = f.cluster_network().unwrap();
        assert_eq!(
            (c.services.cidr.to_string().as_str(), c.cluster_domain.as_str()),
            ("10.100.0.0/16", "corp.example")
        );
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
