//! Starting the actor roles (controllers, scheduler, simulated nodes) on a bus.

use anyhow::Context;
use capstan_actors::controllers::{self, Ctx};
use capstan_actors::events::Recorder;
use capstan_actors::{ApiClient, Informers};
use capstan_bus::Bus;
use std::sync::Arc;

/// Connects to NATS at `url`, or makes an in-process bus when `url` is `None`.
pub async fn connect_bus(url: Option<&str>, name: &str) -> anyhow::Result<Arc<dyn Bus>> {
    match url {
        None => Ok(Arc::new(capstan_bus::InProcBus::new())),
        Some(u) => {
            let mut cfg = capstan_bus::NatsConfig::new(u);
            cfg.name = name.to_string();
            let bus = capstan_bus::NatsBus::connect(cfg)
                .await
                .with_context(|| format!("failed to connect to NATS at {u}"))?;
            Ok(Arc::new(bus))
        }
    }
}

/// Starts the controller manager on `bus`; with `pool`, as a member of a controller
/// pool that shares partitions with the other members.
pub fn start_controllers(bus: Arc<dyn Bus>, pool: Option<capstan_actors::pool::Config>) -> Arc<Informers> {
    let client = ApiClient::new(bus, "controllers");
    let informers = Informers::new(client.clone());
    let partition =
        pool.map(|cfg| capstan_actors::pool::join(client.clone(), informers.clone(), cfg).partition());
    let ctx = Ctx {
        recorder: Recorder::new(client.clone(), "controller-manager"),
        client,
        informers: informers.clone(),
        partition,
    };
    controllers::start_all(&ctx);
    informers
}

/// Starts the scheduler on `bus`.
pub fn start_scheduler(bus: Arc<dyn Bus>) {
    let client = ApiClient::new(bus, "scheduler");
    let informers = Informers::new(client.clone());
    let recorder = Recorder::new(client.clone(), "default-scheduler");
    capstan_actors::scheduler::start(client, informers, recorder);
}

/// Starts `count` simulated nodes on `bus`.
pub fn start_sim_nodes(bus: Arc<dyn Bus>, count: usize, prefix: &str) {
    if count == 0 {
        return;
    }
    let client = ApiClient::new(bus, "sim-nodes");
    let informers = Informers::new(client.clone());
    capstan_actors::simnodes::start(
        client,
        informers,
        capstan_actors::simnodes::Config { count, prefix: prefix.to_string() },
    );
}
