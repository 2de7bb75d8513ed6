//! `capstan scheduler`: the scheduler, on a NATS bus.
//!
//! Several replicas may run: with `--leader-elect` (the default, as upstream's
//! kube-scheduler) they elect one through the Lease `kube-system/kube-scheduler`; the
//! others wait and take over within the lease duration when it stops renewing. Only the
//! leader binds, so two replicas never fill the same room on a node twice.

use anyhow::bail;
use std::time::Duration;

/// Flags of `capstan scheduler`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// NATS server URL(s), comma-separated for the members of a cluster.
    #[arg(long, env = "CAPSTAN_NATS")]
    nats: String,
    /// Elect one active scheduler among the replicas through the Lease
    /// `kube-system/kube-scheduler` (upstream's `--leader-elect`). With `false`, run only
    /// one replica: two unelected schedulers may overcommit a node.
    #[arg(long, env = "CAPSTAN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Seconds a leader that stopped renewing keeps the Lease (upstream's
    /// `--leader-elect-lease-duration`, 15 s); failover takes about this long.
    #[arg(long, env = "CAPSTAN_LEADER_ELECT_LEASE_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    leader_elect_lease_seconds: u64,
    /// This replica's identity in the election (default: hostname and PID).
    #[arg(long, env = "CAPSTAN_LEADER_ELECT_IDENTITY")]
    leader_elect_identity: Option<String>,
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
        args.metrics.start("scheduler").await?;
        println!("capstan scheduler running");
        if !args.leader_elect {
            super::roles::start_scheduler(bus);
            super::shutdown_signal().await;
            return anyhow::Ok(());
        }
        let identity = args.leader_elect_identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}_{}", host.trim(), std::process::id())
        });
        let cfg = capstan_actors::leader::Config::new(
            "kube-system",
            "kube-scheduler",
            &identity,
            Duration::from_secs(args.leader_elect_lease_seconds),
        );
        let client = capstan_actors::ApiClient::new(bus.clone(), "scheduler");
        let mut leader = tokio::select! {
            l = capstan_actors::leader::acquire(client, cfg) => l,
            _ = super::shutdown_signal() => return anyhow::Ok(()),
        };
        println!("capstan scheduler is the leader as {identity}");
        super::roles::start_scheduler(bus);
        tokio::select! {
            _ = super::shutdown_signal() => {
                leader.release().await;
                anyhow::Ok(())
            }
            _ = leader.lost() => bail!("lost the leader lease kube-system/kube-scheduler; exiting so that only the new leader schedules"),
        }
    })
}
