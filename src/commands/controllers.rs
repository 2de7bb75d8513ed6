//! `capstan controllers`: a member of the controller pool, on a NATS bus.

/// Flags of `capstan controllers`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    actix_rt::System::new().block_on(async move {
        let bus = super::roles::connect_bus(Some(&args.nats), "capstan-controllers").await?;
        let _informers = super::roles::start_controllers(bus);
        println!("capstan controllers running");
        super::shutdown_signal().await;
        anyhow::Ok(())
    })
}
