//! Starting the actor roles (controllers, scheduler, simulated nodes) on a bus.

use anyhow::Context;
use capstan_actors::controllers::{self, Ctx};
use capstan_actors::events::Recorder;
use capstan_actors::{ApiClient, Informers};
use capstan_bus::access::Role;
use capstan_bus::Bus;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a role authenticates to a locked-down NATS server (`capstan bus-config`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct NatsAuth {
    /// This role's NATS credential, `<role>.creds` as `capstan bus-config` writes it
    /// (the server then knows who is calling and what it may do).
    #[arg(long, env = "CAPSTAN_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// The CA certificate (PEM) the NATS server's certificate must chain to; connects with
    /// TLS. Default: `ca.crt` beside the credential file, when there is one.
    #[arg(long, env = "CAPSTAN_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
}

impl NatsAuth {
    /// The CA to trust: `--nats-ca`, else `ca.crt` beside the credential if it exists.
    fn ca(&self) -> Option<PathBuf> {
        self.nats_ca.clone().or_else(|| {
            let beside = self.nats_creds.as_deref()?.parent()?.join("ca.crt");
            beside.exists().then_some(beside)
        })
    }

    /// The credential of `role` in a directory of credentials (`up --nats-creds-dir`).
    pub fn in_dir(dir: &Path, role: &Role, ca: Option<PathBuf>) -> NatsAuth {
        NatsAuth {
            nats_creds: Some(dir.join(format!("{}.creds", role.identity()))),
            nats_ca: ca.or_else(|| Some(dir.join("ca.crt")).filter(|p| p.exists())),
        }
    }
}

/// Where a role without an HTTPS port of its own serves Prometheus metrics.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct MetricsArgs {
    /// Serve `GET /metrics` (Prometheus text format) over plain HTTP on this address,
    /// e.g. `127.0.0.1:10257`; port 0 picks a free one. Off by default.
    #[arg(long, env = "CAPSTAN_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl MetricsArgs {
    /// Starts serving when asked to, and says where.
    pub async fn start(&self, role: &str) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            let bound = capstan_metrics::serve(addr)
                .await
                .with_context(|| format!("failed to serve metrics on {addr}"))?;
            println!("capstan {role} metrics at http://{bound}/metrics");
        }
        Ok(())
    }
}

/// Connects to NATS at `url` as `role`, or makes an in-process bus when `url` is `None`.
/// Only the gateway creates or updates the event stream; the other roles read it.
pub async fn connect_bus(
    url: Option<&str>,
    name: &str,
    role: &Role,
    auth: &NatsAuth,
) -> anyhow::Result<Arc<dyn Bus>> {
    connect_bus_with(url, name, role, auth, 1).await
}

/// As [`connect_bus`]; the gateway creates the event stream with `stream_replicas`
/// JetStream replicas (3 on a NATS cluster of 3 or more).
pub async fn connect_bus_with(
    url: Option<&str>,
    name: &str,
    role: &Role,
    auth: &NatsAuth,
    stream_replicas: usize,
) -> anyhow::Result<Arc<dyn Bus>> {
    match url {
        // Events are kept for late readers; 100k is minutes of history at scale.
        None => Ok(Arc::new(capstan_bus::InProcBus::with_config(capstan_bus::InProcConfig {
            max_events: 100_000,
            ..Default::default()
        }))),
        Some(u) => {
            let mut cfg = capstan_bus::NatsConfig::new(u);
            cfg.name = name.to_string();
            cfg.manage_stream = *role == Role::Gateway;
            cfg.stream.replicas = stream_replicas.max(1);
            cfg.inbox_prefix = Some(role.inbox_prefix());
            if let Some(path) = &auth.nats_creds {
                cfg.credentials = Some(
                    capstan_bus::NatsCredentials::from_file(path)
                        .with_context(|| format!("invalid --nats-creds for the {}", role.identity()))?,
                );
            }
            if let Some(ca) = auth.ca() {
                if !ca.exists() {
                    anyhow::bail!("the NATS CA certificate {} does not exist", ca.display());
                }
                cfg.tls = Some(capstan_bus::NatsTlsConfig { ca_file: Some(ca), client_cert: None });
            }
            let bus = capstan_bus::NatsBus::connect(cfg)
                .await
                .with_context(|| format!("failed to connect to NATS at {u} as the {}", role.identity()))?;
            Ok(Arc::new(bus))
        }
    }
}

/// Runs `f` on a new arbiter (its own thread and runtime) that lives as long as the
/// process, so each role gets a core's worth of its own.
fn on_own_thread(f: impl FnOnce() + Send + 'static) {
    let arbiter = actix_rt::Arbiter::new();
    arbiter.spawn_fn(f);
    // The role runs until the process exits.
    std::mem::forget(arbiter);
}

/// Starts the controller manager on `bus` (on its own thread); with `pool`, as a member
/// of a controller pool that shares partitions with the other members.
/// `root_ca` (PEM) is published into every namespace as `kube-root-ca.crt`.
pub fn start_controllers(
    bus: Arc<dyn Bus>,
    pool: Option<capstan_actors::pool::Config>,
    root_ca: Option<String>,
) {
    on_own_thread(move || {
        let _ = start_controllers_here(bus, pool, root_ca);
    });
}

fn start_controllers_here(
    bus: Arc<dyn Bus>,
    pool: Option<capstan_actors::pool::Config>,
    root_ca: Option<String>,
) -> Arc<Informers> {
    let client = ApiClient::new(bus, "controllers");
    let informers = Informers::new(client.clone());
    let partition =
        pool.map(|cfg| capstan_actors::pool::join(client.clone(), informers.clone(), cfg).partition());
    let ctx = Ctx {
        recorder: Recorder::new(client.clone(), "controller-manager"),
        client,
        informers: informers.clone(),
        partition,
        root_ca: root_ca.map(Arc::from),
    };
    controllers::start_all(&ctx);
    informers
}

/// Starts the scheduler on `bus` (on its own thread).
pub fn start_scheduler(bus: Arc<dyn Bus>) {
    on_own_thread(move || start_scheduler_here(bus));
}

fn start_scheduler_here(bus: Arc<dyn Bus>) {
    let client = ApiClient::new(bus, "scheduler");
    let informers = Informers::new(client.clone());
    let recorder = Recorder::new(client.clone(), "default-scheduler");
    capstan_actors::scheduler::start(client, informers, recorder);
}

/// Starts `count` simulated nodes on `bus` (on their own thread).
pub fn start_sim_nodes(bus: Arc<dyn Bus>, count: usize, prefix: &str) {
    if count == 0 {
        return;
    }
    let prefix = prefix.to_string();
    on_own_thread(move || start_sim_nodes_here(bus, count, &prefix));
}

fn start_sim_nodes_here(bus: Arc<dyn Bus>, count: usize, prefix: &str) {
    let client = ApiClient::new(bus, "sim-nodes");
    let informers = Informers::new(client.clone());
    capstan_actors::simnodes::start(
        client,
        informers,
        capstan_actors::simnodes::Config { count, prefix: prefix.to_string() },
    );
}

/// Starts a real node agent on `bus` (on its own thread). Returns at once; the node
/// registers NotReady with the reason when it cannot run containers.
pub fn start_kubelet(bus: Arc<dyn Bus>, cfg: capstan_kubelet::agent::AgentConfig) {
    on_own_thread(move || {
        let client = ApiClient::new(bus, &format!("node.{}", cfg.node_name.replace('.', "_")));
        if let Some(why) = capstan_kubelet::agent::start(client, cfg) {
            eprintln!("capstan: the node cannot run containers: {why}");
        }
    });
}
