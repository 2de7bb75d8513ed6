//! The pod network: network namespaces and CNI.
//!
//! Each pod gets a named network namespace (`/run/netns/<prefix><id>`, made by `ip netns add`)
//! wired by the standard CNI plugins, called directly as the CNI specification describes:
//! `loopback` brings up `lo`, `bridge` (with `host-local` IPAM over the pod CIDR) adds `eth0` on a
//! host bridge that is the pods' gateway and masquerades their traffic leaving the subnet, and
//! `portmap`, chained after the bridge, publishes host ports. What was done for a pod is recorded
//! in `<state_dir>/<id>.json` (the configurations and the CNI results), so a teardown after an
//! agent restart runs the same DELs.

mod cni;

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::process::Command;

use cni::{CniCommand, Invocation};

/// Where `ip netns` keeps the bind mounts naming network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The CNI network name (it goes into the plugins' iptables chain names and host-local's state).
const NETWORK_NAME: &str = "capstan";

/// The plugins the pod network runs.
const PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];

/// Settings of the pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Where the CNI plugins are (Debian: `/usr/lib/cni`).
    pub cni_bin_dir: PathBuf,
    /// Our records (`<id>.json`) and host-local's data directory (`ipam/`).
    pub state_dir: PathBuf,
    /// The host bridge the pods' `eth0` are attached to (e.g. `capstan0`).
    pub bridge: String,
    /// The pod CIDR addresses are taken from (e.g. `10.88.0.0/16`).
    pub subnet: String,
    /// Prefix of the network namespace names (e.g. `capstan-`).
    pub netns_prefix: String,
    /// MTU of the bridge and the pods' interfaces; the plugin's default when `None`.
    pub mtu: Option<u32>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            state_dir: PathBuf::from("/var/lib/capstan/network"),
            bridge: "capstan0".into(),
            subnet: "10.88.0.0/16".into(),
            netns_prefix: "capstan-".into(),
            mtu: None,
        }
    }
}

/// A port of the host forwarded to a pod's port (a container port's `hostPort`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// The port on the host.
    pub host_port: u16,
    /// The port inside the pod.
    pub container_port: u16,
    /// `tcp` or `udp` (case does not matter).
    pub protocol: String,
    /// Only this host address, rather than all of them.
    pub host_ip: Option<String>,
}

/// A pod's network, as set up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    /// The network namespace's name (`ip netns` name).
    pub netns_name: String,
    /// Its path, `/run/netns/<name>`, for the OCI runtime spec's network namespace.
    pub netns_path: PathBuf,
    /// The pod's IP.
    pub ip: IpAddr,
}

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A program the pod network needs is not installed.
    #[error("{what} is missing: install the Debian package `{package}`")]
    Missing {
        /// What is missing (e.g. `CNI plugin /usr/lib/cni/bridge`).
        what: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// Bad settings or arguments.
    #[error("{0}")]
    Invalid(String),
    /// A CNI plugin failed (`msg` is the plugin's own error message).
    #[error("CNI plugin {plugin} {command} failed: {msg}")]
    Plugin {
        /// The plugin's type (`bridge`...).
        plugin: String,
        /// `ADD` or `DEL`.
        command: &'static str,
        /// What it said.
        msg: String,
    },
    /// Creating or deleting a network namespace failed.
    #[error("network namespace {name}: {msg}")]
    Netns {
        /// The namespace's name.
        name: String,
        /// What went wrong.
        msg: String,
    },
    /// Reading or writing our state failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Io { what, source }
}

/// What was done for one pod, kept in `<state_dir>/<id>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    netns_name: String,
    netns_path: PathBuf,
    /// `None` while the setup is under way (or was interrupted).
    ip: Option<IpAddr>,
    loopback: Value,
    bridge: Value,
    portmap: Option<Value>,
    /// loopback's ADD result, its `prevResult` on DEL.
    loopback_result: Option<Value>,
    /// The result of the bridge (+ portmap) chain, their `prevResult` on DEL.
    result: Option<Value>,
}

impl Record {
    fn pod_net(&self) -> Option<PodNet> {
        Some(PodNet {
            netns_name: self.netns_name.clone(),
            netns_path: self.netns_path.clone(),
            ip: self.ip?,
        })
    }
}

/// The pod network of this node. Cheap to clone; setup and teardown of one id are serialised,
/// different ids run concurrently.
#[derive(Clone)]
pub struct PodNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    config: NetworkConfig,
    ip_cmd: PathBuf,
    /// Setup and teardown lock, by hash of the id.
    locks: Vec<tokio::sync::Mutex<()>>,
    /// `nft`, when the pod subnet is IPv4 and nft is installed: the pods' egress is then
    /// masqueraded by one rule for the subnet (see [`egress_table`]).
    nft: Option<capstan_nftproxy::Nft>,
    /// Whether that rule is in place (set up once, when the first pod needs it).
    egress: tokio::sync::OnceCell<bool>,
}

/// The nftables table (family `ip`) with the one rule that masquerades what pods on
/// `bridge` send out of their subnet. The CNI bridge plugin's `ipMasq` would instead make
/// an iptables chain per pod: 9 `iptables` executions per pod start and more at teardown,
/// the second largest cost of a burst of pod starts after runc (docs/PERFORMANCE.md).
pub fn egress_table(bridge: &str) -> String {
    format!("{}-egress", capstan_nftproxy::Table::name_for_bridge(bridge))
}

/// Removes the egress table of a node whose pod bridge is `bridge` (`capstan node-reset`).
/// Nothing to do without `nft` or the table.
pub async fn reset_egress(bridge: &str) -> Result<(), String> {
    let Ok(nft) = capstan_nftproxy::Nft::find() else { return Ok(()) };
    let table = egress_table(bridge);
    match nft.list_table(&table).await {
        Ok(Some(_)) => nft.delete_table(&table).await.map_err(|e| e.to_string()),
        Ok(None) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The nft script that (re)creates the egress table: pods' traffic to anywhere but their
/// own subnet and multicast leaves with the node's address, as the bridge plugin's
/// `ipMasq` rules do.
fn egress_script(bridge: &str, subnet: &str) -> String {
    let t = egress_table(bridge);
    format!(
        "add table ip {t}\n\
         delete table ip {t}\n\
         add table ip {t} {{ comment \"capstan pod egress (pod bridge {bridge})\"; }}\n\
         add chain ip {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         add rule ip {t} postrouting ip saddr {subnet} ip daddr != {{ {subnet}, 224.0.0.0/4 }} masquerade\n"
    )
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork").field("config", &self.inner.config).finish()
    }
}

impl PodNetwork {
    /// Checks the settings and that the plugins (bridge, host-local, loopback, portmap) and `ip`
    /// (iproute2) are installed, creates the state directory and, best effort, makes bridged
    /// traffic go through iptables (`br_netfilter`, `net.bridge.bridge-nf-call-iptables=1`).
    pub fn new(config: NetworkConfig) -> Result<Self, NetworkError> {
        for plugin in PLUGINS {
            let path = config.cni_bin_dir.join(plugin);
            if !is_executable(&path) {
                return Err(NetworkError::Missing {
                    what: format!("CNI plugin {}", path.display()),
                    package: "containernetworking-plugins",
                });
            }
        }
        let ip_cmd = find_program("ip")
            .ok_or_else(|| NetworkError::Missing { what: "`ip`".into(), package: "iproute2" })?;
        parse_cidr(&config.subnet)
            .ok_or_else(|| NetworkError::Invalid(format!("pod subnet {:?} is not a CIDR", config.subnet)))?;
        if config.bridge.is_empty()
            || config.bridge.len() > 15
            || !config.bridge.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(NetworkError::Invalid(format!(
                "bridge name {:?} is not a valid interface name (1-15 letters, digits, '-', '_', '.')",
                config.bridge
            )));
        }
        if !config.netns_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(NetworkError::Invalid(format!(
                "network namespace prefix {:?} may hold only letters, digits, '-', '_' and '.'",
                config.netns_prefix
            )));
        }
        std::fs::create_dir_all(&config.state_dir)
            .map_err(io_err(format!("creating {}", config.state_dir.display())))?;
        enable_bridge_netfilter();
        let locks = (0..64).map(|_| tokio::sync::Mutex::new(())).collect();
        let nft = if config.subnet.contains(':') { None } else { capstan_nftproxy::Nft::find().ok() };
        Ok(PodNetwork {
            inner: Arc::new(Inner { config, ip_cmd, locks, nft, egress: tokio::sync::OnceCell::new() }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &NetworkConfig {
        &self.inner.config
    }

    /// Creates the pod's network namespace (`<prefix><id>`) and runs CNI ADD: loopback for `lo`,
    /// bridge (host-local IPAM) for `eth0`, then portmap chained after the bridge when
    /// `host_ports` is not empty (ports 0 are ignored). Idempotent: for an id already set up it
    /// returns what is there (host ports included, even if different). A half-done or stale setup
    /// (e.g. its namespace vanished with a reboot) is torn down and done again. On failure,
    /// whatever was done is undone.
    pub async fn setup(&self, id: &str, host_ports: &[HostPort]) -> Result<PodNet, NetworkError> {
        check_id(id)?;
        let port_mappings = port_mappings(host_ports)?;
        let _guard = self.lock(id).await;
        let name = self.netns_name(id);
        let path = Path::new(NETNS_DIR).join(&name);
        let record = self.read_record(id).await?;
        if let Some(pod_net) = record.as_ref().and_then(Record::pod_net) {
            if path.exists() {
                return Ok(pod_net);
            }
        }
        if record.is_some() || path.exists() {
            tracing::info!(id, "pod network: cleaning up a stale or unfinished setup first");
            self.teardown_locked(id, record).await?;
        }

        let mut record = Record {
            netns_name: name.clone(),
            netns_path: path.clone(),
            ip: None,
            loopback: self.loopback_config(),
            bridge: self.bridge_config(!self.egress_by_nft().await),
            portmap: (!port_mappings.is_empty()).then(|| self.portmap_config(port_mappings)),
            loopback_result: None,
            result: None,
        };
        // Written before anything is done, so that a teardown knows what to undo after a crash.
        self.write_record(id, &record).await?;
        match self.add(id, &mut record).await {
            Ok(pod_net) => Ok(pod_net),
            Err(err) => {
                if let Err(undo) = self.teardown_locked(id, Some(record)).await {
                    tracing::warn!(id, error = %undo, "pod network: undoing a failed setup failed");
                }
                Err(err)
            }
        }
    }

    async fn add(&self, id: &str, record: &mut Record) -> Result<PodNet, NetworkError> {
        self.ip(&["netns", "add", &record.netns_name]).await.map_err(|msg| NetworkError::Netns {
            name: record.netns_name.clone(),
            msg: format!("cannot create it: {msg}"),
        })?;
        let netns = record.netns_path.to_string_lossy().into_owned();
        let bin_dir = &self.inner.config.cni_bin_dir;
        let loopback_result = cni::invoke(&Invocation {
            bin_dir,
            command: CniCommand::Add,
            container_id: id,
            netns: &netns,
            ifname: "lo",
            config: &record.loopback,
        })
        .await?;
        record.loopback_result = Some(loopback_result);
        let mut result = cni::invoke(&Invocation {
            bin_dir,
            command: CniCommand::Add,
            container_id: id,
            netns: &netns,
            ifname: "eth0",
            config: &record.bridge,
        })
        .await?;
        // Kept now, so that a failed portmap ADD is undone with the bridge's result at hand.
        record.result = Some(result.clone());
        if let Some(portmap) = &record.portmap {
            let mut config = portmap.clone();
            config["prevResult"] = result.clone();
            let chained = cni::invoke(&Invocation {
                bin_dir,
                command: CniCommand::Add,
                container_id: id,
                netns: &netns,
                ifname: "eth0",
                config: &config,
            })
            .await?;
            if !chained.is_null() {
                result = chained;
            }
            record.result = Some(result.clone());
        }
        let ip = cni::result_ip(&result, "eth0").ok_or_else(|| NetworkError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            msg: format!("no IP address in the result: {result}"),
        })?;
        record.ip = Some(ip);
        self.write_record(id, record).await?;
        tracing::debug!(id, %ip, "pod network set up");
        Ok(PodNet { netns_name: record.netns_name.clone(), netns_path: record.netns_path.clone(), ip })
    }

    /// Runs CNI DEL (portmap, bridge, loopback: the reverse order), deletes the network namespace
    /// and the record; the IP goes back to host-local. Idempotent: nothing there is `Ok`. When a
    /// DEL fails the namespace and the record are kept, so that it can be tried again.
    pub async fn teardown(&self, id: &str) -> Result<(), NetworkError> {
        check_id(id)?;
        let _guard = self.lock(id).await;
        let record = self.read_record(id).await?;
        self.teardown_locked(id, record).await
    }

    async fn teardown_locked(&self, id: &str, record: Option<Record>) -> Result<(), NetworkError> {
        let name = record.as_ref().map(|r| r.netns_name.clone()).unwrap_or_else(|| self.netns_name(id));
        let path =
            record.as_ref().map(|r| r.netns_path.clone()).unwrap_or_else(|| Path::new(NETNS_DIR).join(&name));
        let netns_exists = path.exists();
        if record.is_none() && !netns_exists {
            return Ok(());
        }
        // Without a record (it was lost), DEL with the current settings: host-local releases by
        // container id, bridge finds the interface in the namespace.
        let record = record.unwrap_or_else(|| Record {
            netns_name: name.clone(),
            netns_path: path.clone(),
            ip: None,
            loopback: self.loopback_config(),
            // Unknown how it was made: let the plugin look for per-pod masquerade rules too.
            bridge: self.bridge_config(true),
            portmap: None,
            loopback_result: None,
            result: None,
        });
        // The plugins accept an empty CNI_NETNS on DEL: they then release what is outside it.
        let netns = if netns_exists { path.to_string_lossy().into_owned() } else { String::new() };
        let mut steps: Vec<(&Value, &str, &Option<Value>)> = Vec::new();
        if let Some(portmap) = &record.portmap {
            steps.push((portmap, "eth0", &record.result));
        }
        steps.push((&record.bridge, "eth0", &record.result));
        steps.push((&record.loopback, "lo", &record.loopback_result));
        let mut first_error = None;
        for (config, ifname, prev_result) in steps {
            let mut config = config.clone();
            if let Some(prev) = prev_result.as_ref().filter(|p| !p.is_null()) {
                config["prevResult"] = prev.clone();
            }
            let inv = Invocation {
                bin_dir: &self.inner.config.cni_bin_dir,
                command: CniCommand::Del,
                container_id: id,
                netns: &netns,
                ifname,
                config: &config,
            };
            if let Err(err) = cni::invoke(&inv).await {
                tracing::warn!(id, error = %err, "pod network teardown");
                first_error.get_or_insert(err);
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        if !netns_exists && record.bridge.get("ipMasq") == Some(&Value::Bool(true)) {
            // bridge removes its masquerade rules only when it finds the interface in the
            // namespace: without one, they are ours to remove.
            if let Err(msg) = remove_masquerade_rules(id).await {
                tracing::warn!(id, "pod network teardown: removing masquerade rules: {msg}");
            }
        }
        if netns_exists {
            if let Err(msg) = self.ip(&["netns", "delete", &name]).await {
                if path.exists() {
                    return Err(NetworkError::Netns { name, msg: format!("cannot delete it: {msg}") });
                }
            }
        }
        let record_path = self.record_path(id);
        match tokio::fs::remove_file(&record_path).await {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(io_err(format!("removing {}", record_path.display()))(e))
            }
            _ => {
                tracing::debug!(id, "pod network torn down");
                Ok(())
            }
        }
    }

    /// The ids that have a record or a network namespace with our prefix, sorted: what to compare
    /// with the pods that should exist, to clean up the rest.
    pub async fn list(&self) -> Result<Vec<String>, NetworkError> {
        let mut ids = BTreeSet::new();
        let state_dir = &self.inner.config.state_dir;
        let mut dir = tokio::fs::read_dir(state_dir)
            .await
            .map_err(io_err(format!("reading {}", state_dir.display())))?;
        while let Some(entry) =
            dir.next_entry().await.map_err(io_err(format!("reading {}", state_dir.display())))?
        {
            let file_name = entry.file_name();
            if let Some(id) = file_name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if check_id(id).is_ok() {
                    ids.insert(id.to_string());
                }
            }
        }
        match tokio::fs::read_dir(NETNS_DIR).await {
            Ok(mut dir) => {
                while let Some(entry) =
                    dir.next_entry().await.map_err(io_err(format!("reading {NETNS_DIR}")))?
                {
                    let file_name = entry.file_name();
                    let id = file_name.to_str().and_then(|n| n.strip_prefix(&self.inner.config.netns_prefix));
                    if let Some(id) = id.filter(|id| check_id(id).is_ok()) {
                        ids.insert(id.to_string());
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("reading {NETNS_DIR}"))(e)),
        }
        Ok(ids.into_iter().collect())
    }

    /// The pod's network from its record, if it was set up (completely).
    pub fn get(&self, id: &str) -> Option<PodNet> {
        check_id(id).ok()?;
        let data = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice::<Record>(&data).ok()?.pod_net()
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}{id}", self.inner.config.netns_prefix)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.inner.config.state_dir.join(format!("{id}.json"))
    }

    async fn lock(&self, id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let locks = &self.inner.locks;
        let index = usize::try_from(hasher.finish() % locks.len() as u64).unwrap_or(0);
        locks[index].lock().await
    }

    async fn read_record(&self, id: &str) -> Result<Option<Record>, NetworkError> {
        let path = self.record_path(id);
        match tokio::fs::read(&path).await {
            Ok(data) => match serde_json::from_slice(&data) {
                Ok(record) => Ok(Some(record)),
                Err(e) => {
                    // Only a crash while writing could do this (writes are atomic): forget it.
                    tracing::warn!(id, error = %e, "pod network: unreadable record {}, ignored", path.display());
                    Ok(None)
                }
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    async fn write_record(&self, id: &str, record: &Record) -> Result<(), NetworkError> {
        let path = self.record_path(id);
        let tmp = self.inner.config.state_dir.join(format!(".{id}.json.tmp"));
        let data = serde_json::to_vec_pretty(record)
            .map_err(|e| io_err("encoding a pod network record")(std::io::Error::other(e)))?;
        tokio::fs::write(&tmp, &data).await.map_err(io_err(format!("writing {}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io_err(format!("writing {}", path.display())))
    }

    fn loopback_config(&self) -> Value {
        json!({ "cniVersion": cni::CNI_VERSION, "name": format!("{NETWORK_NAME}-loopback"), "type": "loopback" })
    }

    /// Whether the pods' egress is masqueraded by the node's one nft rule (made on first
    /// use); otherwise each pod's bridge plugin call sets up its own (`ipMasq`).
    async fn egress_by_nft(&self) -> bool {
        let Some(nft) = &self.inner.nft else { return false };
        let config = &self.inner.config;
        *self
            .inner
            .egress
            .get_or_init(|| async {
                match nft.run(&egress_script(&config.bridge, &config.subnet)).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            "cannot masquerade the pods' egress with nft ({e}); each pod gets its own iptables rules"
                        );
                        false
                    }
                }
            })
            .await
    }

    fn bridge_config(&self, ip_masq: bool) -> Value {
        let config = &self.inner.config;
        let default_route = if config.subnet.contains(':') { "::/0" } else { "0.0.0.0/0" };
        let mut bridge = json!({
            "cniVersion": cni::CNI_VERSION,
            "name": NETWORK_NAME,
            "type": "bridge",
            "bridge": config.bridge,
            "isGateway": true,
            "ipMasq": ip_masq,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": config.subnet }]],
                "routes": [{ "dst": default_route }],
                "dataDir": config.state_dir.join("ipam"),
            },
        });
        if let Some(mtu) = config.mtu {
            bridge["mtu"] = json!(mtu);
        }
        bridge
    }

    fn portmap_config(&self, port_mappings: Vec<Value>) -> Value {
        json!({
            "cniVersion": cni::CNI_VERSION,
            "name": NETWORK_NAME,
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true,
            "runtimeConfig": { "portMappings": port_mappings },
        })
    }

    /// Runs `ip` with these arguments; the error is what it printed.
    async fn ip(&self, args: &[&str]) -> Result<(), String> {
        let output = Command::new(&self.inner.ip_cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.inner.ip_cmd.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!("`ip {}` exited with {}: {}", args.join(" "), output.status, stderr.trim()))
        }
    }
}

/// Creates the pod bridge `bridge` with the address `gateway` (`10.88.0.1/16`: the CNI bridge
/// plugin's gateway for the pod CIDR) and brings it up, if it is not there yet. The bridge plugin
/// reuses a bridge that has exactly this address. Used by the service proxy, whose relays listen
/// on the gateway address before the first pod exists.
pub async fn ensure_bridge(bridge: &str, gateway: &str) -> Result<(), NetworkError> {
    let ip = find_program("ip")
        .ok_or_else(|| NetworkError::Missing { what: "`ip`".into(), package: "iproute2" })?;
    let run = |args: Vec<&str>| {
        let ip = ip.clone();
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        async move {
            let out = Command::new(&ip)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await;
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(NetworkError::Invalid(format!(
                    "`ip {}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))),
                Err(e) => Err(NetworkError::Invalid(format!("cannot run {}: {e}", ip.display()))),
            }
        }
    };
    if !Path::new("/sys/class/net").join(bridge).exists() {
        if let Err(e) = run(vec!["link", "add", "name", bridge, "type", "bridge"]).await {
            // Another agent or the plugin may have made it meanwhile.
            if !Path::new("/sys/class/net").join(bridge).exists() {
                return Err(e);
            }
        }
    }
    run(vec!["addr", "replace", gateway, "dev", bridge]).await?;
    run(vec!["link", "set", bridge, "up"]).await
}

/// Removes what the bridge plugin's `ipMasq` made for a container (rules in nat POSTROUTING with
/// the comment `name: "capstan" id: "<id>"` and the chain they jump to), when the plugin cannot
/// (its network namespace is gone).
async fn remove_masquerade_rules(id: &str) -> Result<(), String> {
    let Some(iptables) = find_program("iptables") else { return Ok(()) };
    let run = |args: Vec<String>| {
        let iptables = iptables.clone();
        async move {
            let out = Command::new(&iptables).args(&args).kill_on_drop(true).output().await;
            match out {
                Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                Ok(out) => Err(format!(
                    "`iptables {}`: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => Err(format!("cannot run {}: {e}", iptables.display())),
            }
        }
    };
    let comment = format!("name: \"{NETWORK_NAME}\" id: \"{id}\"");
    let rules = run(vec!["-w".into(), "-t".into(), "nat".into(), "-S".into(), "POSTROUTING".into()]).await?;
    let mut chains = BTreeSet::new();
    for rule in rules.lines() {
        let Some(words) = split_iptables_words(rule) else { continue };
        let commented = words.windows(2).any(|w| w[0] == "--comment" && w[1] == comment);
        if words.first().map(String::as_str) != Some("-A") || !commented {
            continue;
        }
        if let Some(w) = words.windows(2).find(|w| w[0] == "-j") {
            chains.insert(w[1].clone());
        }
        let mut delete = vec!["-w".to_string(), "-t".into(), "nat".into(), "-D".into()];
        delete.extend(words.into_iter().skip(1));
        run(delete).await?;
    }
    for chain in chains.into_iter().filter(|c| c.starts_with("CNI-")) {
        run(vec!["-w".into(), "-t".into(), "nat".into(), "-F".into(), chain.clone()]).await?;
        run(vec!["-w".into(), "-t".into(), "nat".into(), "-X".into(), chain]).await?;
    }
    Ok(())
}

/// Splits a rule as `iptables -S` prints it: words, `"quoted words"` with `\"` escapes.
fn split_iptables_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return Some(words) };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => word.push(chars.next()?),
                    '"' => break,
                    c => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

/// Ids are CNI container ids: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, and file names here.
fn check_id(id: &str) -> Result<(), NetworkError> {
    let ok = id.len() <= 200
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "pod network id {id:?} must be 1-200 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )))
    }
}

/// The host ports as portmap's `runtimeConfig.portMappings`.
fn port_mappings(host_ports: &[HostPort]) -> Result<Vec<Value>, NetworkError> {
    let mut mappings = Vec::new();
    for hp in host_ports.iter().filter(|hp| hp.host_port != 0) {
        let protocol = hp.protocol.to_ascii_lowercase();
        if protocol != "tcp" && protocol != "udp" {
            return Err(NetworkError::Invalid(format!(
                "host port {}: protocol {:?} is not supported (tcp or udp)",
                hp.host_port, hp.protocol
            )));
        }
        if hp.container_port == 0 {
            return Err(NetworkError::Invalid(format!("host port {}: container port 0", hp.host_port)));
        }
        let mut mapping =
            json!({ "hostPort": hp.host_port, "containerPort": hp.container_port, "protocol": protocol });
        if let Some(host_ip) = hp.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
            host_ip.parse::<IpAddr>().map_err(|_| {
                NetworkError::Invalid(format!("host port {}: bad host IP {host_ip:?}", hp.host_port))
            })?;
            mapping["hostIP"] = json!(host_ip);
        }
        mappings.push(mapping);
    }
    Ok(mappings)
}

fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Best effort: load `br_netfilter` and set `net.bridge.bridge-nf-call-iptables=1`, so that
/// traffic between pods on the bridge sees the Service rules. Failures are logged.
fn enable_bridge_netfilter() {
    let sysctl = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !sysctl.exists() {
        match find_program("modprobe") {
            Some(modprobe) => match std::process::Command::new(modprobe).arg("br_netfilter").output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => tracing::warn!(
                    "modprobe br_netfilter failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => tracing::warn!("cannot run modprobe br_netfilter: {e}"),
            },
            None => {
                tracing::warn!("br_netfilter is not loaded and there is no modprobe (Debian package `kmod`)")
            }
        }
    }
    match std::fs::read_to_string(sysctl) {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => {
            if let Err(e) = std::fs::write(sysctl, "1") {
                tracing::warn!("cannot set net.bridge.bridge-nf-call-iptables=1: {e}");
            }
        }
        Err(e) => tracing::warn!("net.bridge.bridge-nf-call-iptables is not available: {e}"),
    }
}

#[cfg(test)]
mod tests;
