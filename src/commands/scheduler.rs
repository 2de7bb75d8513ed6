//! `capstan scheduler`: the scheduler, on a NATS bus.

/// Flags of `capstan scheduler`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
    #[command(flatten)]
    metrics: super::roles::MetricsArgs,
    #[command(flatten)]
    auth: super::roles::NatsAuth,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        let bus = super::roles::connect_bus(
            Some(&args.nats),
            "capstan-scheduler",
            &capstan_bus::access::Role::Scheduler,
            &args.auth,
        )
        .await?;
        super::roles::start_scheduler(bus);
        args.metrics.start("scheduler").await?;
        println!("capstan scheduler running");
        super::shutdown_signal().await;
        anyhow::Ok(())
    })
}
