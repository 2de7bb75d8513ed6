//! One module per subcommand; `main` parses flags and hands off.

mod bus_config;
mod chart_secrets;
mod config;
mod controllers;
mod encryption;
mod gateway;
mod kubelet;
mod roles;
mod scheduler;
mod sim_nodes;
mod up;

use clap::{Parser, Subcommand};

/// capstan: a Kubernetes-compatible cluster manager.
#[derive(Parser, Debug)]
#[command(name = "capstan", version, about)]
struct Cli {
    /// Log filter (as RUST_LOG), e.g. `info` or `capstan_gateway=debug`.
    #[arg(long, global = true, env = "CAPSTAN_LOG")]
    log: Option<String>,
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line,
    /// for log collectors).
    #[arg(long, global = true, env = "CAPSTAN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole single-machine cluster in one process (embedded store).
    Up(up::Args),
    /// Run the API service and HTTPS gateway against a store.
    Gateway(gateway::Args),
    /// Run a member of the controller pool (over NATS).
    Controllers(controllers::Args),
    /// Run the scheduler (over NATS).
    Scheduler(scheduler::Args),
    /// Run simulated nodes for scale tests (over NATS).
    SimNodes(sim_nodes::Args),
    /// Run the node agent (over NATS): real pods on runc.
    Kubelet(kubelet::Args),
    /// Write a locked-down nats-server configuration and one NATS credential per role.
    BusConfig(bus_config::Args),
    /// Remove every container, pod network and mount a node left behind.
    NodeReset(kubelet::ResetArgs),
    /// Write the Secrets of a Helm-deployed cluster (`chart/`): PKI, encryption key, bus
    /// credentials, admin kubeconfig; keeps what an earlier run made.
    ChartSecrets(chart_secrets::Args),
}

/// Entry point of the binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = cli.log.clone().unwrap_or_else(|| "info".into());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().with_current_span(true).init();
    } else {
        // Colour escapes only for a person at a terminal, not in files and pipes.
        use std::io::IsTerminal;
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Up(a) => up::run(a),
        Command::Gateway(a) => gateway::run(a),
        Command::Controllers(a) => controllers::run(a),
        Command::Scheduler(a) => scheduler::run(a),
        Command::SimNodes(a) => sim_nodes::run(a),
        Command::Kubelet(a) => kubelet::run(a),
        Command::NodeReset(a) => kubelet::reset(a),
        Command::BusConfig(a) => bus_config::run(a),
        Command::ChartSecrets(a) => chart_secrets::run(a),
    }
}

/// Writes `<data_dir>/admin.kubeconfig` for the server at `addr`; returns its URL and path.
pub(crate) fn write_admin_kubeconfig(
    pki: &capstan_gateway::pki::Pki,
    addr: std::net::SocketAddr,
    data_dir: &std::path::Path,
) -> anyhow::Result<(String, std::path::PathBuf)> {
    use anyhow::Context;
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let url = format!("https://{}:{}", host, addr.port());
    let kubeconfig = data_dir.join("admin.kubeconfig");
    std::fs::write(&kubeconfig, pki.admin_kubeconfig(&url))
        .with_context(|| format!("failed to write {}", kubeconfig.display()))?;
    Ok((url, kubeconfig))
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
