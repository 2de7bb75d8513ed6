//! The controllers of the controller manager. Each module exposes
//! `start(ctx: &Ctx)`, which registers its informer handlers and starts its actor.

use crate::client::ApiClient;
use crate::events::Recorder;
use crate::informer::Informers;
use crate::runtime::Partition;
use std::sync::Arc;

pub mod clusterroleaggregation;
pub mod cronjob;
pub mod customresources;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod ephemeral;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod localpath;
pub mod namespace;
pub mod nodelifecycle;
pub mod persistentvolume;
pub mod replicaset;
pub mod resourcequota;
pub mod rootca;
pub mod serviceaccount;
pub mod statefulset;
pub mod storageprotection;

/// What every controller gets.
#[derive(Clone)]
pub struct Ctx {
    /// API over the bus.
    pub client: ApiClient,
    /// Shared informers.
    pub informers: Arc<Informers>,
    /// Which keys this pool member owns (None: all).
    pub partition: Option<Partition>,
    /// Event recorder.
    pub recorder: Recorder,
    /// The cluster CA (PEM), published into every namespace as `kube-root-ca.crt`.
    pub root_ca: Option<Arc<str>>,
}

impl Ctx {
    /// Whether this member owns `key` (`namespace/name`).
    pub fn owns(&self, key: &str) -> bool {
        self.partition.as_ref().is_none_or(|p| p(key))
    }
}

/// Starts every controller. Must run inside an actix system.
pub fn start_all(ctx: &Ctx) {
    customresources::start(ctx);
    replicaset::start(ctx);
    replicaset::start_replication_controllers(ctx);
    deployment::start(ctx);
    gc::start(ctx);
    namespace::start(ctx);
    nodelifecycle::start(ctx);
    job::start(ctx);
    cronjob::start(ctx);
    daemonset::start(ctx);
    statefulset::start(ctx);
    endpoints::start(ctx);
    serviceaccount::start(ctx);
    rootca::start(ctx);
    resourcequota::start(ctx);
    clusterroleaggregation::start(ctx);
    persistentvolume::start(ctx);
    storageprotection::start(ctx);
    disruption::start(ctx);
    hpa::start(ctx);
    localpath::start(ctx);
    ephemeral::start(ctx);
}
