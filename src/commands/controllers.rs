//! `capstan controllers`: a member of the controller pool, on a NATS bus.

/// Flags of `capstan controllers`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL(s), comma-separated for the members of a cluster.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
    /// Partitions shared by the pool (every member must use the same number). Without
    /// it this process reconciles everything.
    #[arg(long, env = "CAPSTAN_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: Option<u32>,
    /// This member's id in the pool (default: hostname and PID).
    #[arg(long, env = "CAPSTAN_MEMBER")]
    member: Option<String>,
    /// Seconds after which a silent member's partitions are taken over.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_seconds: u64,
    /// The cluster CA certificate (PEM), published into every namespace as the ConfigMap
    /// `kube-root-ca.crt` (pods' token volumes need it). Without it nothing is published.
    #[arg(long, env = "CAPSTAN_ROOT_CA_FILE")]
    root_ca_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    metrics: super::roles::MetricsArgs,
    #[command(flatten)]
    auth: super::roles::NatsAuth,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root_ca = match &args.root_ca_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("failed to read --root-ca-file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    actix_rt::System::new().block_on(async move {
        let bus = super::roles::connect_bus(
            Some(&args.nats),
            "capstan-controllers",
            &capstan_bus::access::Role::Controllers,
            &args.auth,
        )
        .await?;
        let pool = args.partitions.map(|partitions| capstan_actors::pool::Config {
            member: args.member.clone().unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            }),
            partitions,
            lease_duration: std::time::Duration::from_secs(args.lease_seconds.max(1)),
        });
        super::roles::start_controllers(bus, pool, root_ca);
        args.metrics.start("controllers").await?;
        println!("capstan controllers running");
        super::shutdown_signal().await;
        anyhow::Ok(())
    })
}
