//! `capstan kubelet`: the node agent, on a NATS bus; `capstan shim` (internal): the
//! per-container process the agent starts; `capstan node-reset`: removes every container,
//! pod network and mount a node left behind.

use super::config::{ClusterNetwork, FileConfig, NodeConfig};
use anyhow::Context;
use std::path::PathBuf;

/// Flags of `capstan kubelet`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
    /// The node's name (default: the host name).
    #[arg(long, env = "CAPSTAN_NODE_NAME")]
    node_name: Option<String>,
    /// Directory for images, containers, pod volumes and logs.
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    data_dir: PathBuf,
    /// YAML configuration file (its `node:` section).
    #[arg(long, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
    /// Do not run the service proxy (the node's nftables rules for Services).
    #[arg(long, env = "CAPSTAN_NO_SERVICE_PROXY")]
    no_service_proxy: bool,
    #[command(flatten)]
    metrics: super::roles::MetricsArgs,
    #[command(flatten)]
    auth: super::roles::NatsAuth,
}

/// The host's name, as a node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "capstan-node".into())
}

/// The agent's settings from the file's `node:` section and cluster network over defaults.
pub fn agent_config(
    name: String,
    data_dir: &std::path::Path,
    node: Option<NodeConfig>,
    net: &ClusterNetwork,
) -> anyhow::Result<capstan_kubelet::agent::AgentConfig> {
    let mut cfg = capstan_kubelet::agent::AgentConfig::new(&name, data_dir.join("node"));
    cfg.cluster_domain = net.cluster_domain.clone();
    cfg.cluster_dns = std::net::IpAddr::V4(net.services.nth(10));
    cfg.service_cidr = Some(net.services.cidr.to_string());
    if let Some(n) = node {
        if let Some(c) = n.pod_cidr {
            cfg.pod_cidr = c;
        }
        if let Some(b) = n.bridge {
            cfg.bridge = b;
        }
        if let Some(r) = n.registries {
            cfg.registries = r;
        }
        if let Some(s) = n.crash_loop_backoff_seconds {
            cfg.backoff_base = std::time::Duration::from_secs_f64(s.max(0.1));
        }
        if let Some(r) = n.runc {
            cfg.runc = r;
        }
        if let Some(d) = n.cni_bin_dir {
            cfg.cni_bin_dir = d;
        }
        if let Some(c) = n.cgroup_parent {
            cfg.cgroup_parent = c;
        }
        if let Some(p) = n.service_proxy {
            cfg.service_proxy = p;
        }
        if let Some(s) = n.seccomp_default {
            cfg.seccomp_default = s;
        }
        if let Some(size) = n.container_log_max_size {
            cfg.container_log.max_size = capstan_api::quantity::parse_value(&size)
                .and_then(|v| u64::try_from(v).ok())
                .filter(|v| *v > 0)
                .with_context(|| format!("node.containerLogMaxSize: {size:?} is not a positive quantity"))?;
        }
        if let Some(files) = n.container_log_max_files {
            if files < 2 {
                anyhow::bail!("node.containerLogMaxFiles: {files} must be greater than 1");
            }
            cfg.container_log.max_files = files;
        }
        let gc = &mut cfg.image_gc;
        if let Some(h) = n.image_gc_high_threshold_percent {
            gc.high_threshold_percent = h;
        }
        if let Some(l) = n.image_gc_low_threshold_percent {
            gc.low_threshold_percent = l;
        }
        if gc.high_threshold_percent > 100 || gc.low_threshold_percent > 100 {
            anyhow::bail!(
                "node.imageGCHighThresholdPercent and imageGCLowThresholdPercent must be between 0 and 100"
            );
        }
        if gc.low_threshold_percent >= gc.high_threshold_percent && gc.high_threshold_percent < 100 {
            anyhow::bail!(
                "node.imageGCLowThresholdPercent ({}) must be less than imageGCHighThresholdPercent ({})",
                gc.low_threshold_percent,
                gc.high_threshold_percent
            );
        }
        if let Some(s) = n.image_minimum_gc_age_seconds {
            gc.minimum_age = std::time::Duration::from_secs(s);
        }
        if let Some(s) = n.image_gc_period_seconds {
            gc.period = std::time::Duration::from_secs(s.max(1));
        }
        cfg.eviction = eviction_config(
            cfg.eviction,
            n.eviction_hard.unwrap_or_default(),
            n.eviction_soft.unwrap_or_default(),
            n.eviction_soft_grace_period.unwrap_or_default(),
            n.eviction_max_pod_grace_period,
        )?;
        if let Some(s) = n.eviction_monitoring_period_seconds {
            cfg.eviction.period = std::time::Duration::from_secs(s.max(1));
        }
        if let Some(r) = n.resolv_conf {
            cfg.resolv_conf = r;
        }
        if let Some(d) = n.dns {
            if let Some(e) = d.enabled {
                cfg.dns.enabled = e;
            }
            if let Some(a) = d.address {
                cfg.cluster_dns =
                    a.parse().with_context(|| format!("node.dns.address: invalid address {a:?}"))?;
            }
            if let Some(p) = d.port {
                cfg.dns.port = p;
            }
            if let Some(i) = d.interface {
                if i.is_empty() || i.len() > 15 {
                    anyhow::bail!("node.dns.interface: {i:?} is not an interface name (1 to 15 characters)");
                }
                cfg.dns.interface = i;
            }
            for u in d.upstreams.unwrap_or_default() {
                cfg.dns.upstreams.push(
                    capstan_kubelet::dns::parse_upstream(&u)
                        .map_err(|e| anyhow::anyhow!("node.dns.upstreams: {e}"))?,
                );
            }
            if let Some(w) = d.workers {
                cfg.dns.workers = w;
            }
        }
    }
    Ok(cfg)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let net = file.cluster_network()?;
    let node = file.node;
    let name =
        args.node_name.or_else(|| node.as_ref().and_then(|n| n.name.clone())).unwrap_or_else(host_name);
    std::fs::create_dir_all(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize().unwrap_or(args.data_dir);
    let mut cfg = agent_config(name.clone(), &data_dir, node, &net)?;
    if args.no_service_proxy {
        cfg.service_proxy = false;
    }
    actix_rt::System::new().block_on(async move {
        let role = capstan_bus::access::Role::Node(name.clone());
        let bus = super::roles::connect_bus(
            Some(&args.nats),
            &format!("capstan-kubelet-{name}"),
            &role,
            &args.auth,
        )
        .await?;
        super::roles::start_kubelet(bus, cfg);
        args.metrics.start("kubelet").await?;
        println!("capstan kubelet running (node {name})");
        super::shutdown_signal().await;
        anyhow::Ok(())
    })
}

/// Flags of `capstan node-reset`.
#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    /// The node's data directory (as given to `capstan up` or `capstan kubelet`).
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    data_dir: PathBuf,
    /// YAML configuration file (its `node:` section).
    #[arg(long, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
}

/// Stops and removes every container, pod network and mount of the node.
pub fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let data_dir = args.data_dir.canonicalize().unwrap_or(args.data_dir);
    let net = file.cluster_network()?;
    let cfg = agent_config(host_name(), &data_dir, file.node, &net)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(capstan_kubelet::agent::reset(&cfg)).map_err(|e| anyhow::anyhow!(e))?;
    println!("capstan: node state under {} reset", cfg.data_dir.display());
    Ok(())
}

/// A Go duration (`1m30s`, `90s`, `1.5h`, `500ms`, `0`), as upstream's config takes.
fn go_duration(text: &str) -> Option<std::time::Duration> {
    let s = text.trim();
    if s == "0" {
        return Some(std::time::Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    Some(std::time::Duration::from_secs_f64(total))
}

/// The eviction thresholds of the `node:` section over `base`: `evictionHard`, `evictionSoft`
/// with `evictionSoftGracePeriod` (each soft signal needs one, and a grace period needs its
/// threshold, as upstream's `ParseThresholdConfig`), `evictionMaxPodGracePeriod`.
fn eviction_config(
    mut cfg: capstan_kubelet::agent::eviction::EvictionConfig,
    hard: std::collections::BTreeMap<String, String>,
    soft: std::collections::BTreeMap<String, String>,
    soft_grace: std::collections::BTreeMap<String, String>,
    max_pod_grace: Option<i64>,
) -> anyhow::Result<capstan_kubelet::agent::eviction::EvictionConfig> {
    use capstan_kubelet::agent::eviction::{Signal, Soft, Threshold};
    const SIGNALS: &str = "memory.available, nodefs.available, imagefs.available, pid.available";
    let signal = |field: &str, name: &str| {
        Signal::parse(name).with_context(|| format!("node.{field}: unknown signal {name:?} ({SIGNALS})"))
    };
    let threshold = |field: &str, name: &str, value: &str| -> anyhow::Result<Option<Threshold>> {
        if value.trim().is_empty() {
            return Ok(None);
        }
        Threshold::parse(value)
            .map(Some)
            .with_context(|| format!("node.{field}.{name}: {value:?} is not a quantity or a percentage"))
    };
    for (name, value) in &hard {
        let s = signal("evictionHard", name)?;
        cfg.set_hard(s, threshold("evictionHard", name, value)?);
    }
    for name in soft_grace.keys() {
        if !soft.contains_key(name) {
            signal("evictionSoftGracePeriod", name)?;
            anyhow::bail!(
                "node.evictionSoftGracePeriod.{name}: a grace period without a threshold in evictionSoft"
            );
        }
    }
    for (name, value) in &soft {
        let s = signal("evictionSoft", name)?;
        let Some(t) = threshold("evictionSoft", name, value)? else { continue };
        let g = soft_grace.get(name).with_context(|| {
            format!("node.evictionSoft.{name}: grace period must be specified for the soft eviction threshold (evictionSoftGracePeriod.{name})")
        })?;
        let grace = go_duration(g).with_context(|| {
            format!("node.evictionSoftGracePeriod.{name}: {g:?} is not a duration (such as 1m30s)")
        })?;
        cfg.soft.insert(s, Soft { threshold: t, grace });
    }
    if let Some(m) = max_pod_grace {
        if m < 0 {
            anyhow::bail!("node.evictionMaxPodGracePeriod must not be negative ({m})");
        }
        cfg.max_pod_grace_period = std::time::Duration::from_secs(m as u64);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_kubelet::agent::eviction::Threshold;

    fn config(node_yaml: &str) -> anyhow::Result<capstan_kubelet::agent::AgentConfig> {
        let f: FileConfig = serde_yaml_ng::from_str(node_yaml)?;
        let net = f.cluster_network()?;
        agent_config("n".into(), std::path::Path::new("/tmp/x"), f.node, &net)
    }

    #[test]
    fn node_agent_log_gc_and_eviction_settings() {
        let d = config("node: {}").unwrap();
        assert_eq!((d.container_log.max_size, d.container_log.max_files), (10 << 20, 5));
        assert_eq!((d.image_gc.high_threshold_percent, d.image_gc.low_threshold_percent), (85, 80));
        assert_eq!(d.eviction.memory_available, Some(Threshold::Bytes(100 << 20)));
        let c = config(
            "node:\n  containerLogMaxSize: 2Mi\n  containerLogMaxFiles: 3\n  imageGCHighThresholdPercent: 1\n  \
             imageGCLowThresholdPercent: 0\n  evictionHard: {memory.available: \"\", nodefs.available: 5%}\n",
        )
        .unwrap();
        assert_eq!((c.container_log.max_size, c.container_log.max_files), (2 << 20, 3));
        assert_eq!((c.image_gc.high_threshold_percent, c.image_gc.low_threshold_percent), (1, 0));
        assert_eq!(
            (c.eviction.memory_available, c.eviction.nodefs_available),
            (None, Some(Threshold::Percent(5.0)))
        );
        for bad in [
            "node: {containerLogMaxFiles: 1}",
            "node: {containerLogMaxSize: nope}",
            "node: {imageGCHighThresholdPercent: 80, imageGCLowThresholdPercent: 85}",
            "node: {evictionHard: {pids.available: 10%}}",
            "node: {evictionHard: {memory.available: lots}}",
            "node: {evictionSoft: {memory.available: 1Gi}}",
            "node: {evictionSoft: {memory.available: 1Gi}, evictionSoftGracePeriod: {memory.available: soon}}",
            "node: {evictionSoftGracePeriod: {memory.available: 1m}}",
            "node: {evictionSoft: {pid.avail: 10%}, evictionSoftGracePeriod: {pid.avail: 1m}}",
            "node: {evictionMaxPodGracePeriod: -1}",
        ] {
            assert!(config(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn soft_eviction_settings_as_upstreams_kubelet_configuration() {
        use capstan_kubelet::agent::eviction::{Signal, Soft};
        use std::time::Duration;
        let d = config("node: {}").unwrap();
        assert!(d.eviction.soft.is_empty());
        assert_eq!((d.eviction.max_pod_grace_period, d.eviction.pid_available), (Duration::ZERO, None));
        let c = config(
            "node:\n  evictionHard: {pid.available: 5%}\n  evictionSoft: {memory.available: 1.5Gi, nodefs.available: 15%}\n  \
             evictionSoftGracePeriod: {memory.available: 1m30s, nodefs.available: 2m}\n  evictionMaxPodGracePeriod: 60\n",
        )
        .unwrap();
        let e = &c.eviction;
        assert_eq!(e.pid_available, Some(Threshold::Percent(5.0)));
        assert_eq!(e.memory_available, Some(Threshold::Bytes(100 << 20)), "the hard default stays");
        assert_eq!(
            e.soft.get(&Signal::MemoryAvailable),
            Some(&Soft { threshold: Threshold::Bytes(3 << 29), grace: Duration::from_secs(90) })
        );
        assert_eq!(
            e.soft.get(&Signal::NodefsAvailable),
            Some(&Soft { threshold: Threshold::Percent(15.0), grace: Duration::from_secs(120) })
        );
        assert_eq!(e.max_pod_grace_period, Duration::from_secs(60));
        assert_eq!(go_duration("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("10"), None);
    }
}
