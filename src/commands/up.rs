//! `capstan up`: the all-in-one single-machine cluster.

use super::config::FileConfig;
use super::roles::NatsAuth;
use anyhow::Context;
use capstan_bus::access::Role;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `capstan up`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory for the store, certificates and kubeconfig.
    #[arg(long, env = "CAPSTAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the API server listens on (port 0 picks a free port).
    #[arg(long, env = "CAPSTAN_LISTEN")]
    listen: Option<String>,
    /// YAML configuration file.
    #[arg(long, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
    /// Use this NATS server as the bus instead of the in-process one.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: Option<String>,
    /// With `--nats`: JetStream replicas of the event stream (3 on a NATS cluster of at
    /// least 3 servers, whose URLs `--nats` lists comma-separated).
    #[arg(long, env = "CAPSTAN_NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_stream_replicas: u8,
    /// With `--nats`: the directory of credentials `capstan bus-config` wrote; each role in
    /// this process connects with its own (`gateway.creds`, `controllers.creds`,
    /// `scheduler.creds`, `sim-nodes.creds`, `node.<name>.creds`), over TLS with the CA in
    /// `ca.crt` there unless `--nats-ca` says otherwise.
    #[arg(long, env = "CAPSTAN_NATS_CREDS_DIR")]
    nats_creds_dir: Option<PathBuf>,
    /// The CA certificate (PEM) of the NATS server; connects with TLS.
    #[arg(long, env = "CAPSTAN_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Also run this many simulated nodes (for trying out workloads without containers).
    #[arg(long, env = "CAPSTAN_SIM_NODES")]
    sim_nodes: Option<usize>,
    /// Do not run the real node (runc containers) inside this process.
    #[arg(long, env = "CAPSTAN_NO_NODE")]
    no_node: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let data_dir = args.data_dir.or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from(".capstan"));
    let listen: SocketAddr = args
        .listen
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:6443".into())
        .parse()
        .context("invalid --listen address (want IP:PORT)")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("failed to create data dir {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let network = file.cluster_network()?;
    let hosts = file.serving_hosts(listen, &network);
    let pki_dir = file.pki_dir.clone().unwrap_or_else(|| data_dir.join("pki"));
    let pki = capstan_gateway::pki::Pki::load_or_create(&pki_dir, &hosts)?;
    let store_path = data_dir.join("state.redb");
    let store = capstan_storage::RedbStore::open(&store_path)
        .with_context(|| format!("failed to open the store at {}", store_path.display()))?;
    let store: Arc<dyn capstan_storage::Store> = Arc::new(store);
    let (store, encrypted) = super::encryption::wrap(store, &data_dir, file.encryption_config.as_deref())?;
    let mut cfg = capstan_gateway::Config::new(pki.clone());
    cfg.listen = listen;
    file.apply_gateway(&mut cfg, &network)?;
    let nats = args.nats.or(file.nats);
    let creds_dir = args.nats_creds_dir;
    let nats_ca = args.nats_ca;
    let replicas = usize::from(args.nats_stream_replicas);
    if creds_dir.is_some() && nats.is_none() {
        anyhow::bail!("--nats-creds-dir needs --nats URL (the in-process bus has no credentials)");
    }
    let sim_nodes = args.sim_nodes.or(file.sim_nodes).unwrap_or(0);
    let node = file.node;
    let run_node = !args.no_node && node.as_ref().and_then(|n| n.enabled) != Some(false);
    let node_name = node.as_ref().and_then(|n| n.name.clone()).unwrap_or_else(super::kubelet::host_name);
    let agent = if run_node {
        Some(super::kubelet::agent_config(node_name, &data_dir, node, &network)?)
    } else {
        None
    };
    actix_rt::System::new().block_on(async move {
        let started = std::time::Instant::now();
        // Without a credentials directory, one connection serves every role (an open
        // server, or the in-process bus); with one, each role connects as itself.
        let connect = |role: Role| {
            let auth = match &creds_dir {
                Some(dir) => NatsAuth::in_dir(dir, &role, nats_ca.clone()),
                None => NatsAuth { nats_creds: None, nats_ca: nats_ca.clone() },
            };
            let nats = nats.clone();
            async move {
                let name = format!("capstan-up-{}", role.identity());
                super::roles::connect_bus_with(nats.as_deref(), &name, &role, &auth, replicas).await
            }
        };
        let bus = connect(Role::Gateway).await?;
        cfg.bus = Some(bus.clone());
        let (controllers_bus, scheduler_bus, sim_bus, node_bus) = if creds_dir.is_some() {
            (
                connect(Role::Controllers).await?,
                connect(Role::Scheduler).await?,
                if sim_nodes > 0 { connect(Role::SimNodes).await? } else { bus.clone() },
                match &agent {
                    Some(a) => connect(Role::Node(a.node_name.clone())).await?,
                    None => bus.clone(),
                },
            )
        } else {
            (bus.clone(), bus.clone(), bus.clone(), bus.clone())
        };
        // This process owns the store file alone: a restart may take the relay over at once.
        cfg.relay_holder = Some("capstan-up".into());
        let running = capstan_gateway::start(cfg, store).await?;
        super::encryption::rewrite_stale(encrypted);
        super::roles::start_controllers(controllers_bus, None, Some(pki.ca_cert.clone()));
        super::roles::start_scheduler(scheduler_bus);
        super::roles::start_sim_nodes(sim_bus, sim_nodes, "sim-");
        if let Some(agent) = agent {
            super::roles::start_kubelet(node_bus, agent);
        }
        let (server_url, kubeconfig) = super::write_admin_kubeconfig(&pki, running.addr, &data_dir)?;
        let handle = running.server.handle();
        let server = running.server;
        let server_task = actix_rt::spawn(server);
        println!("capstan is ready at {server_url} (started in {} ms)", started.elapsed().as_millis());
        println!("export KUBECONFIG={}", kubeconfig.display());
        super::shutdown_signal().await;
        tracing::info!("shutting down");
        handle.stop(true).await;
        let _ = server_task.await;
        anyhow::Ok(())
    })
}
