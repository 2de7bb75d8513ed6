//! The node agent: registers its Node, renews its Lease, follows the pods bound to it and
//! runs one [`pod::PodWorker`] actor per pod; serves logs, exec, attach and port-forward
//! sessions over the bus ([`sessions`]); serves cluster DNS ([`crate::dns`]) from its
//! Service and EndpointSlice informers, which also give pods their Service variables
//! ([`service_env`]).
//!
//! A node that cannot run containers (no `runc`, no CNI plugins, no cgroups) still
//! registers, with Ready=False and a message naming what to install, and runs no pods.

pub mod eviction;
pub mod imagegc;
pub mod localpath;
pub mod node;
pub mod pod;
pub mod security;
pub mod service_env;
pub mod sessions;
pub mod spec;
pub mod summary;
pub mod usage;
pub mod volumes;

use crate::image::{ImageStore, RegistryConfig};
use crate::network::{NetworkConfig, PodNetwork};
use crate::runtime::{ContainerInfo, RuncRuntime, RuntimeConfig};
use actix::prelude::*;
use capstan_actors::client::{gvr, ApiClient};
use capstan_actors::events::Recorder;
use capstan_actors::informer::{Change, Informer};
use capstan_actors::nodeobjects::{lease_object, lease_renewal, micro_time, LEASE_NAMESPACE};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of a node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name.
    pub node_name: String,
    /// Where the node keeps images, containers, pod volumes and logs.
    pub data_dir: PathBuf,
    /// The `capstan` binary (the container shim is `capstan shim`).
    pub shim_exe: PathBuf,
    /// The `runc` binary.
    pub runc: PathBuf,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// The pod CIDR of this node.
    pub pod_cidr: String,
    /// The pod bridge's name.
    pub bridge: String,
    /// The cgroup every pod goes under.
    pub cgroup_parent: String,
    /// Registry mirrors and insecure registries.
    pub registries: RegistryConfig,
    /// The first crash-loop back-off (upstream: 10 s), doubling up to `backoff_max`.
    pub backoff_base: Duration,
    /// The longest crash-loop back-off (upstream: 300 s).
    pub backoff_max: Duration,
    /// Whether the node runs the service proxy ([`crate::proxy`]).
    pub service_proxy: bool,
    /// The Service CIDR: the proxy rejects traffic to an address in it that no Service
    /// serves, rather than letting it be routed away (upstream's default 10.96.0.0/12).
    pub service_cidr: Option<String>,
    /// The cluster DNS address pods are given (upstream's `--cluster-dns`): the tenth
    /// address of the service CIDR, where this agent serves DNS.
    pub cluster_dns: IpAddr,
    /// The cluster domain (upstream's `--cluster-domain`).
    pub cluster_domain: String,
    /// The node's resolv.conf (upstream's `--resolv-conf`): `dnsPolicy: Default` pods get
    /// it, and the cluster DNS forwards to its nameservers.
    pub resolv_conf: PathBuf,
    /// The cluster DNS server.
    pub dns: crate::dns::Config,
    /// Run containers that name no seccomp profile under `RuntimeDefault` (default true;
    /// upstream's kubelet: false, i.e. `Unconfined`).
    pub seccomp_default: bool,
    /// Container log rotation (upstream's `containerLogMaxSize`, 10Mi, and
    /// `containerLogMaxFiles`, 5).
    pub container_log: crate::runtime::logfile::Rotation,
    /// Image garbage collection by disk usage ([`imagegc`]).
    pub image_gc: imagegc::ImageGcConfig,
    /// Hard eviction thresholds and the monitoring period ([`eviction`]).
    pub eviction: eviction::EvictionConfig,
}

impl AgentConfig {
    /// Defaults for a node named `name` keeping its state under `data_dir`.
    pub fn new(name: &str, data_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            node_name: name.to_string(),
            data_dir,
            shim_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("capstan")),
            runc: PathBuf::from("runc"),
            cni_bin_dir: PathBuf::from("/usr/lib/cni"),
            pod_cidr: "10.88.0.0/16".into(),
            bridge: "capstan0".into(),
            cgroup_parent: "/capstan".into(),
            registries: RegistryConfig::default(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            service_proxy: true,
            service_cidr: Some("10.96.0.0/12".into()),
            cluster_dns: crate::dns::nth_address(crate::dns::DEFAULT_SERVICE_CIDR, 10)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 10))),
            cluster_domain: crate::dns::DEFAULT_CLUSTER_DOMAIN.into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            dns: crate::dns::Config::default(),
            seccomp_default: true,
            container_log: crate::runtime::logfile::Rotation::upstream(),
            image_gc: imagegc::ImageGcConfig::default(),
            eviction: eviction::EvictionConfig::default(),
        }
    }

    /// Where this node keeps local-path volumes (`<data-dir>/local-path`).
    pub fn local_path_root(&self) -> String {
        self.data_dir.join(localpath::ROOT_DIR).to_string_lossy().into_owned()
    }

    /// The cluster DNS pods use, if this node serves one.
    pub fn pod_dns(&self) -> Option<crate::dns::resolv::ClusterDns> {
        self.dns.enabled.then(|| crate::dns::resolv::ClusterDns {
            server: self.cluster_dns,
            domain: self.cluster_domain.clone(),
        })
    }
}

/// How often released local-path volumes are looked for.
const LOCAL_PATH_SWEEP: Duration = Duration::from_secs(2);

/// Pod starts in progress at once (at least; more on machines with more CPUs).
const MAX_CONCURRENT_STARTS: usize = 2;

fn host_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Directories of the node.
#[derive(Debug, Clone)]
pub struct Dirs {
    /// Per-pod files (volumes, /etc/hosts...).
    pub pods: PathBuf,
    /// Container logs (`<ns>_<pod>_<uid>/<container>/<restart>.log`).
    pub logs: PathBuf,
}

/// What the session server knows about one container.
pub struct ContainerView {
    /// Name.
    pub name: String,
    /// Runtime id of the running instance.
    pub id: Option<String>,
    /// Restart count.
    pub restart_count: u32,
    /// The current instance's log.
    pub log: PathBuf,
    /// The previous instance's log.
    pub previous_log: Option<PathBuf>,
    /// Becomes true when the current instance ends.
    pub done: tokio::sync::watch::Receiver<bool>,
    /// Whether the container keeps stdin open.
    pub stdin: bool,
    /// Whether the container has a tty.
    pub tty: bool,
}

/// What the session server knows about one pod.
pub struct PodView {
    /// Uid.
    pub uid: String,
    /// Pod IP.
    pub ip: Option<IpAddr>,
    /// Containers (init first).
    pub containers: Vec<ContainerView>,
}

/// Everything the pod actors share.
pub struct Deps {
    /// API client.
    pub client: ApiClient,
    /// Images.
    pub images: ImageStore,
    /// Containers.
    pub runtime: RuncRuntime,
    /// Pod network.
    pub network: PodNetwork,
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub host_ip: String,
    /// Directories.
    pub dirs: Dirs,
    /// Events.
    pub recorder: Recorder,
    /// First crash-loop back-off.
    pub backoff_base: Duration,
    /// Longest crash-loop back-off.
    pub backoff_max: Duration,
    /// Pods by `namespace/name`, for sessions.
    pub views: Mutex<HashMap<String, PodView>>,
    /// Pod actors by uid.
    pub workers: Mutex<HashMap<String, Addr<pod::PodWorker>>>,
    /// Pod starts (images, volumes, network, first containers) in progress at once.
    pub starts: tokio::sync::Semaphore,
    /// Every Service (for Service environment variables).
    pub services: Arc<Informer>,
    /// The cluster DNS pods use (`None`: the node serves none).
    pub cluster_dns: Option<crate::dns::resolv::ClusterDns>,
    /// The node's resolv.conf.
    pub resolv_conf: PathBuf,
    /// Seccomp default and `Localhost` profile directory.
    pub security: security::NodeSecurity,
}

/// The container runtime and the pod network of a node, or why it cannot have them.
fn runtime_and_network(cfg: &AgentConfig) -> Result<(RuncRuntime, PodNetwork), String> {
    let root = &cfg.data_dir;
    let runtime = RuncRuntime::new(RuntimeConfig {
        root: root.join("containers"),
        runc: cfg.runc.clone(),
        runc_root: root.join("runc"),
        shim_exe: cfg.shim_exe.clone(),
        cgroup_parent: cfg.cgroup_parent.clone(),
        log_rotation: cfg.container_log,
    })
    .map_err(|e| e.to_string())?;
    let network = PodNetwork::new(NetworkConfig {
        cni_bin_dir: cfg.cni_bin_dir.clone(),
        state_dir: root.join("network"),
        bridge: cfg.bridge.clone(),
        subnet: cfg.pod_cidr.clone(),
        // Per node, so agents sharing a host never take each other's namespaces for orphans.
        netns_prefix: format!("{}-", cfg.bridge),
        mtu: None,
    })
    .map_err(|e| e.to_string())?;
    Ok((runtime, network))
}

/// Builds the runtime, network and image store, or says why this node cannot run pods.
fn build_deps(
    cfg: &AgentConfig,
    client: &ApiClient,
    host_ip: &str,
    services: Arc<Informer>,
) -> Result<Deps, String> {
    let root = &cfg.data_dir;
    let (runtime, network) = runtime_and_network(cfg)?;
    let images = ImageStore::open(&root.join("images"), cfg.registries.clone()).map_err(|e| e.to_string())?;
    let dirs = Dirs { pods: root.join("pods"), logs: root.join("logs") };
    let seccomp_root = root.join("seccomp");
    for d in [&dirs.pods, &dirs.logs, &seccomp_root] {
        std::fs::create_dir_all(d).map_err(|e| format!("failed to create {}: {e}", d.display()))?;
    }
    Ok(Deps {
        client: client.clone(),
        images,
        runtime,
        network,
        node: cfg.node_name.clone(),
        host_ip: host_ip.to_string(),
        dirs,
        recorder: Recorder::new(client.clone(), "kubelet"),
        backoff_base: cfg.backoff_base,
        backoff_max: cfg.backoff_max,
        views: Mutex::new(HashMap::new()),
        workers: Mutex::new(HashMap::new()),
        starts: tokio::sync::Semaphore::new(MAX_CONCURRENT_STARTS.max(host_cpus())),
        services,
        cluster_dns: cfg.pod_dns(),
        resolv_conf: cfg.resolv_conf.clone(),
        security: security::NodeSecurity { seccomp_default: cfg.seccomp_default, seccomp_root },
    })
}

/// The node actor: node registration and heartbeats, pod actors.
pub struct NodeAgent {
    cfg: AgentConfig,
    client: ApiClient,
    host: node::HostInfo,
    not_ready: node::NotReady,
    deps: Option<Arc<Deps>>,
    adopted: HashMap<String, Vec<ContainerInfo>>,
    registered: bool,
    renew: Duration,
    since_status: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
struct PodChange(Change);

#[derive(Message)]
#[rtype(result = "()")]
struct Synced;

/// Post the Node's status now (its conditions changed).
#[derive(Message)]
#[rtype(result = "()")]
struct PostStatus;

impl Handler<PostStatus> for NodeAgent {
    type Result = ();

    fn handle(&mut self, _: PostStatus, ctx: &mut Context<Self>) {
        let (client, cfg, host, nr) =
            (self.client.clone(), self.cfg.clone(), self.host.clone(), self.not_ready.clone());
        ctx.spawn(NodeAgent::heartbeat(client, cfg, host, nr, true).into_actor(self));
    }
}

impl NodeAgent {
    async fn register(
        client: ApiClient,
        cfg: AgentConfig,
        host: node::HostInfo,
        not_ready: node::NotReady,
    ) -> bool {
        let name = cfg.node_name.clone();
        let result = match client.get(gvr::NODES, None, &name).await {
            Ok(current) => {
                let _ = client
                    .merge_patch(
                        gvr::NODES,
                        None,
                        &name,
                        node::adopt_patch(&name, &cfg.pod_cidr, &cfg.local_path_root()),
                    )
                    .await;
                let st = node::node_status(&name, &host, &not_ready, Some(&current));
                client
                    .patch(
                        gvr::NODES,
                        None,
                        &name,
                        "application/merge-patch+json",
                        serde_json::json!({"status": st}),
                        Some("status"),
                    )
                    .await
                    .map(|_| ())
            }
            Err(e) if e.is_not_found() => client
                .create(
                    gvr::NODES,
                    None,
                    node::node_object(&name, &cfg.pod_cidr, &host, &not_ready, &cfg.local_path_root()),
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(node = %name, "failed to register the node (retrying): {e}");
                false
            }
        }
    }

    async fn heartbeat(
        client: ApiClient,
        cfg: AgentConfig,
        host: node::HostInfo,
        not_ready: node::NotReady,
        status: bool,
    ) {
        let name = cfg.node_name.clone();
        let renew = micro_time(jiff::Timestamp::now());
        let ns = Some(LEASE_NAMESPACE);
        match client.merge_patch(gvr::LEASES, ns, &name, lease_renewal(&name, &renew)).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                let uid = client
                    .get(gvr::NODES, None, &name)
                    .await
                    .ok()
                    .and_then(|n| n["metadata"]["uid"].as_str().map(str::to_string));
                if let Err(e) =
                    client.create(gvr::LEASES, ns, lease_object(&name, uid.as_deref(), &renew)).await
                {
                    tracing::debug!(node = %name, "lease create failed: {e}");
                }
            }
            Err(e) => tracing::debug!(node = %name, "lease renew failed: {e}"),
        }
        if status {
            let current = client.get(gvr::NODES, None, &name).await.ok();
            let st = node::node_status(&name, &host, &not_ready, current.as_ref());
            let patch = serde_json::json!({"status": st});
            if let Err(e) = client
                .patch(gvr::NODES, None, &name, "application/merge-patch+json", patch, Some("status"))
                .await
            {
                tracing::debug!(node = %name, "node status update failed: {e}");
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let (client, cfg, host, nr) =
            (self.client.clone(), self.cfg.clone(), self.host.clone(), self.not_ready.clone());
        if !self.registered {
            ctx.wait(
                NodeAgent::register(client, cfg, host, nr)
                    .into_actor(self)
                    .map(|ok, act, _| act.registered = ok),
            );
            return;
        }
        self.since_status += self.renew;
        let status = self.since_status >= Duration::from_secs(60);
        if status {
            self.since_status = Duration::ZERO;
        }
        ctx.spawn(NodeAgent::heartbeat(client, cfg, host, nr, status).into_actor(self));
    }
}

impl Actor for NodeAgent {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        ctx.run_interval(self.renew, |act, ctx| act.tick(ctx));
        let Some(deps) = self.deps.clone() else { return };
        let me = ctx.address();
        // Containers a previous agent left: adopt them before any pod actor starts.
        let rt = deps.runtime.clone();
        ctx.wait(
            async move {
                let mut by_pod: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
                match rt.list().await {
                    Ok(list) => {
                        for c in list {
                            let uid = c.labels.get(pod::LABEL_POD_UID).cloned().unwrap_or_default();
                            by_pod.entry(uid).or_default().push(c);
                        }
                    }
                    Err(e) => tracing::warn!("cannot list containers to adopt: {e}"),
                }
                by_pod
            }
            .into_actor(self)
            .map(|adopted, act, _| act.adopted = adopted),
        );
        let node = self.cfg.node_name.clone();
        let filter: capstan_actors::informer::Filter =
            Arc::new(move |p: &Value| p["spec"]["nodeName"].as_str() == Some(node.as_str()));
        let informer = Informer::filtered(self.client.clone(), gvr::PODS, filter);
        let addr = me.clone();
        informer.on_change(Arc::new(move |c: &Change| addr.do_send(PodChange(c.clone()))));
        // The informer's task holds it for as long as the arbiter runs.
        informer.start();
        // Node pressure: a change posts the Node's status at once.
        let (addr, pressure) = (me.clone(), self.host.pressure.clone());
        actix::spawn(eviction::run(
            self.cfg.eviction.clone(),
            deps.clone(),
            informer.clone(),
            pressure,
            self.cfg.data_dir.clone(),
            move || addr.do_send(PostStatus),
        ));
        let (gc, pods, gc_deps) = (self.cfg.image_gc, informer.clone(), deps.clone());
        actix::spawn(async move {
            pods.wait_synced().await;
            let mut tick = tokio::time::interval(gc.period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_warning = None;
            loop {
                tick.tick().await;
                imagegc::collect(
                    &gc,
                    &gc_deps.images,
                    &pods,
                    &gc_deps.recorder,
                    &gc_deps.node,
                    &mut last_warning,
                )
                .await;
            }
        });
        let addr = me.clone();
        actix::spawn(async move {
            informer.wait_synced().await;
            addr.do_send(Synced);
        });
        // Released local-path volumes with reclaim Delete: directory and volume removed.
        let (client, root, node) =
            (self.client.clone(), PathBuf::from(self.cfg.local_path_root()), self.cfg.node_name.clone());
        actix::spawn(async move {
            let mut tick = tokio::time::interval(LOCAL_PATH_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                localpath::sweep(&client, &root, &node).await;
            }
        });
        actix::spawn(usage::run(deps.clone()));
        let handler_deps = deps.clone();
        let bus = self.client.bus().clone();
        let node = self.cfg.node_name.clone();
        actix::spawn(async move {
            let d = handler_deps.clone();
            let handler = Arc::new(move |incoming| {
                let d = d.clone();
                Box::pin(sessions::handle(d, incoming)) as futures::future::BoxFuture<'static, ()>
            });
            if let Err(e) = capstan_bus::sessions::serve(bus, &node, handler).await {
                tracing::error!(node = %node, "cannot serve logs/exec sessions: {e}");
            }
        });
    }
}

impl Handler<PodChange> for NodeAgent {
    type Result = ();

    fn handle(&mut self, msg: PodChange, _: &mut Context<Self>) {
        let Some(deps) = self.deps.clone() else { return };
        match msg.0 {
            Change::Applied { new, .. } => {
                let uid = new["metadata"]["uid"].as_str().unwrap_or("").to_string();
                let existing = deps.workers.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).cloned();
                match existing {
                    Some(addr) => addr.do_send(pod::PodUpdate(Some(new))),
                    None => {
                        let adopted = self.adopted.remove(&uid).unwrap_or_default();
                        let addr = pod::PodWorker::new(deps.clone(), new, adopted).start();
                        deps.workers.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, addr);
                    }
                }
            }
            Change::Deleted(old) => {
                let uid = old["metadata"]["uid"].as_str().unwrap_or("");
                if let Some(addr) = deps.workers.lock().unwrap_or_else(|e| e.into_inner()).get(uid) {
                    addr.do_send(pod::PodUpdate(None));
                }
            }
        }
    }
}

impl Handler<Synced> for NodeAgent {
    type Result = ();

    /// Cleans up what no pod owns: containers, networks, pod directories of pods that no
    /// longer exist (deleted while the agent was down).
    fn handle(&mut self, _: Synced, ctx: &mut Context<Self>) {
        let Some(deps) = self.deps.clone() else { return };
        let orphans: HashMap<String, Vec<ContainerInfo>> = std::mem::take(&mut self.adopted);
        ctx.spawn(
            async move {
                let owned: std::collections::HashSet<String> =
                    deps.workers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
                for (uid, containers) in orphans {
                    if owned.contains(&uid) {
                        continue;
                    }
                    for c in containers {
                        tracing::info!(container = %c.id, "removing a container no pod owns");
                        let _ = deps.runtime.stop(&c.id, Duration::from_secs(2)).await;
                        let _ = deps.runtime.remove(&c.id).await;
                    }
                    let _ = deps.runtime.remove_pod_cgroups(&uid).await;
                }
                if let Ok(ids) = deps.network.list().await {
                    for id in ids.into_iter().filter(|id| !owned.contains(id)) {
                        tracing::info!(pod_uid = %id, "removing a pod network no pod owns");
                        let _ = deps.network.teardown(&id).await;
                    }
                }
                if let Ok(rd) = std::fs::read_dir(&deps.dirs.pods) {
                    for e in rd.flatten() {
                        let name = e.file_name().to_string_lossy().to_string();
                        if !owned.contains(&name) {
                            let _ = volumes::unmount_all(&e.path());
                            let _ = std::fs::remove_dir_all(e.path());
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}

/// Starts a node agent on the current actix arbiter. Returns the reason the node cannot
/// run pods, if it cannot (the node is registered NotReady with that message).
pub fn start(client: ApiClient, cfg: AgentConfig) -> Option<String> {
    let runtime_version =
        runc_version(&cfg.runc).map(|v| format!("runc://{v}")).unwrap_or_else(|| "runc://unknown".into());
    let mut host = node::HostInfo::read(&runtime_version);
    // Services and EndpointSlices: cluster DNS records, the service proxy's rules and pods'
    // Service variables.
    let services = Informer::new(client.clone(), gvr::SERVICES);
    let slices = Informer::new(client.clone(), gvr::ENDPOINT_SLICES);
    if cfg.dns.enabled {
        match crate::dns::start(
            &cfg.dns,
            cfg.cluster_dns,
            &cfg.cluster_domain,
            &cfg.resolv_conf,
            &services,
            &slices,
        ) {
            Ok(_) => {}
            Err(e) => tracing::error!(node = %cfg.node_name, "cannot serve cluster DNS: {e}"),
        }
    }
    // The service proxy (kube-proxy's job), on the same informers.
    if cfg.service_proxy {
        let proxy = crate::proxy::ProxyConfig {
            node_name: cfg.node_name.clone(),
            node_ip: host.internal_ip.parse().ok(),
            bridge: cfg.bridge.clone(),
            pod_cidr: cfg.pod_cidr.clone(),
            service_cidr: cfg.service_cidr.clone(),
        };
        if let Err(e) = crate::proxy::start(client.clone(), &services, &slices, proxy) {
            tracing::error!(node = %cfg.node_name, "the service proxy cannot run: {e}");
            eprintln!("capstan: the service proxy cannot run: {e}");
        }
    }
    if cfg.dns.enabled || cfg.service_proxy {
        slices.start();
    }
    services.start();
    let (deps, not_ready) = match build_deps(&cfg, &client, &host.internal_ip, services) {
        Ok(d) => {
            host.images = node::Images(Some(d.images.clone()));
            (Some(Arc::new(d)), None)
        }
        Err(why) => {
            tracing::error!(node = %cfg.node_name, "this node cannot run containers: {why}");
            (None, Some(format!("container runtime is not ready: {why}")))
        }
    };
    let renew =
        match std::env::var("CAPSTAN_NODE_GRACE_SECONDS").ok().and_then(|g| g.trim().parse::<u64>().ok()) {
            Some(g) if g > 0 => Duration::from_secs((g / 4).clamp(1, 10)),
            _ => Duration::from_secs(10),
        };
    let agent = NodeAgent {
        cfg,
        client,
        host,
        not_ready: not_ready.clone(),
        deps,
        adopted: HashMap::new(),
        registered: false,
        renew,
        since_status: Duration::ZERO,
    };
    agent.start();
    not_ready
}

fn runc_version(runc: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(runc).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next()?.split_whitespace().nth(2).map(str::to_string)
}

/// Stops and removes every container, pod network, mount and cgroup a node with this
/// configuration left behind, and the service proxy's nftables table (`capstan node-reset`,
/// test clean-up). Images stay.
pub async fn reset(cfg: &AgentConfig) -> Result<(), String> {
    let proxy = crate::proxy::reset(&cfg.bridge).await;
    let pods = reset_pods(cfg).await;
    let egress = crate::network::reset_egress(&cfg.bridge).await;
    // The bridge goes too (CNI creates it again for the next pod), also when the node could
    // not run pods (the service proxy may have made it).
    let _ = tokio::process::Command::new("ip").args(["link", "del", &cfg.bridge]).output().await;
    // And the cluster DNS address (unless another agent on this host serves it now), with its
    // interface when no address is left on it.
    let dns = if cfg.dns.enabled {
        let (iface, ip, port, locks) =
            (cfg.dns.interface.clone(), cfg.cluster_dns, cfg.dns.port, cfg.dns.lock_dir.clone());
        tokio::task::spawn_blocking(move || crate::dns::server::release(&iface, ip, port, &locks))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
    } else {
        Ok(())
    };
    pods?;
    egress.map_err(|e| format!("cannot remove the pods' egress rule: {e}"))?;
    dns?;
    proxy.map_err(|e| format!("cannot remove the service proxy's rules: {e}"))
}

async fn reset_pods(cfg: &AgentConfig) -> Result<(), String> {
    let root = &cfg.data_dir;
    let (runtime, network) = runtime_and_network(cfg)?;
    runtime.reset().await.map_err(|e| e.to_string())?;
    for id in network.list().await.map_err(|e| e.to_string())? {
        network.teardown(&id).await.map_err(|e| e.to_string())?;
    }
    // Memory-backed volumes are mounts under the pods' directories.
    volumes::unmount_all(&root.join("pods"))?;
    for d in ["pods", "logs"] {
        let _ = std::fs::remove_dir_all(root.join(d));
    }
    Ok(())
}
