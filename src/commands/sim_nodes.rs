//! `capstan sim-nodes`: simulated nodes for scale tests, on a NATS bus.

/// Flags of `capstan sim-nodes`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Node name prefix.
    #[arg(long, default_value = "sim-")]
    prefix: String,
    #[command(flatten)]
    metrics: super::roles::MetricsArgs,
    #[command(flatten)]
    auth: super::roles::NatsAuth,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        let bus = super::roles::connect_bus(
            Some(&args.nats),
            "capstan-sim-nodes",
            &capstan_bus::access::Role::SimNodes,
            &args.auth,
        )
        .await?;
        super::roles::start_sim_nodes(bus, args.count, &args.prefix);
        args.metrics.start("sim-nodes").await?;
        println!("capstan sim-nodes running ({} nodes)", args.count);
        super::shutdown_signal().await;
        anyhow::Ok(())
    })
}
