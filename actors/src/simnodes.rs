//! Simulated nodes for scale tests. (STUB: being written.)

use crate::client::ApiClient;
use crate::informer::Informers;
use std::sync::Arc;

/// Settings of the simulated nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many nodes.
    pub count: usize,
    /// Node name prefix (`sim-` gives `sim-0`, `sim-1`...).
    pub prefix: String,
}

/// Starts `config.count` simulated nodes. Must run inside an actix system.
pub fn start(client: ApiClient, informers: Arc<Informers>, config: Config) {
    let _ = (client, informers, config);
}
