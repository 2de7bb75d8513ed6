//! `capstan gateway`: the API service and HTTPS gateway on a chosen store.

use super::config::FileConfig;
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Flags of `capstan gateway`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Store: `redb:PATH` or `fdb:CLUSTER_FILE` (needs the `fdb` build).
    #[arg(long, env = "CAPSTAN_STORE")]
    store: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "CAPSTAN_LISTEN")]
    listen: Option<String>,
    /// Directory holding (or receiving) the cluster certificates.
    #[arg(long, env = "CAPSTAN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// YAML configuration file.
    #[arg(long, env = "CAPSTAN_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL: serve the API on the bus and relay events to it.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: Option<String>,
    /// Directory holding the cluster certificates and the ServiceAccount signing key
    /// (default `<data-dir>/pki`). May be read-only (a mounted Secret) when it already
    /// holds everything: a CA, a serving certificate covering this gateway's names, the
    /// admin certificate and `sa.key` (`capstan chart-secrets` writes such a set).
    #[arg(long, env = "CAPSTAN_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// JetStream replicas of the event stream this gateway creates (1, or 3 on a NATS
    /// cluster of at least 3 servers; `--nats` then lists them, comma-separated).
    #[arg(long, env = "CAPSTAN_NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_stream_replicas: u8,
    #[command(flatten)]
    auth: super::roles::NatsAuth,
}

fn open_store(url: &str) -> anyhow::Result<Arc<dyn capstan_storage::Store>> {
    if let Some(path) = url.strip_prefix("redb:") {
        let s = capstan_storage::RedbStore::open(std::path::Path::new(path))
            .with_context(|| format!("failed to open the store at {path}"))?;
        return Ok(Arc::new(s));
    }
    if let Some(_cluster_file) = url.strip_prefix("fdb:") {
        #[cfg(feature = "fdb")]
        {
            let s = capstan_storage::FdbStore::open(Some(std::path::Path::new(_cluster_file)), b"capstan")
                .with_context(|| format!("failed to open FoundationDB with {_cluster_file}"))?;
            return Ok(Arc::new(s));
        }
        #[cfg(not(feature = "fdb"))]
        bail!("this capstan was built without FoundationDB support; rebuild with `--features fdb`");
    }
    bail!("invalid --store {url:?}: want redb:PATH or fdb:CLUSTER_FILE")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = FileConfig::load(args.config.as_deref())?;
    let data_dir = args.data_dir.or(file.data_dir.clone()).unwrap_or_else(|| PathBuf::from(".capstan"));
    let store_url = args
        .store
        .or(file.store.clone())
        .unwrap_or_else(|| format!("redb:{}", data_dir.join("state.redb").display()));
    let listen: SocketAddr = args
        .listen
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:6443".into())
        .parse()
        .context("invalid --listen address (want IP:PORT)")?;
    let store = open_store(&store_url)?;
    let (store, encrypted) = super::encryption::wrap(store, &data_dir, file.encryption_config.as_deref())?;
    let network = file.cluster_network()?;
    let hosts = file.serving_hosts(listen, &network);
    let pki_dir = args.pki_dir.or(file.pki_dir.clone()).unwrap_or_else(|| data_dir.join("pki"));
    let pki = capstan_gateway::pki::Pki::load_or_create(&pki_dir, &hosts)?;
    let mut cfg = capstan_gateway::Config::new(pki.clone());
    cfg.listen = listen;
    file.apply_gateway(&mut cfg, &network)?;
    let nats = args.nats.or(file.nats);
    let auth = args.auth;
    let replicas = usize::from(args.nats_stream_replicas);
    actix_rt::System::new().block_on(async move {
        if let Some(url) = nats.as_deref() {
            let role = capstan_bus::access::Role::Gateway;
            cfg.bus = Some(
                super::roles::connect_bus_with(Some(url), "capstan-gateway", &role, &auth, replicas).await?,
            );
        }
        let running = capstan_gateway::start(cfg, store).await?;
        super::encryption::rewrite_stale(encrypted);
        let (url, kubeconfig) = super::write_admin_kubeconfig(&pki, running.addr, &data_dir)?;
        println!("capstan gateway listening on {url}");
        println!("export KUBECONFIG={}", kubeconfig.display());
        let handle = running.server.handle();
        let task = actix_rt::spawn(running.server);
        super::shutdown_signal().await;
        handle.stop(true).await;
        let _ = task.await;
        anyhow::Ok(())
    })
}
