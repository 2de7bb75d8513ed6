//! The scheduler. (STUB: being written.)

use crate::client::ApiClient;
use crate::events::Recorder;
use crate::informer::Informers;
use std::sync::Arc;

/// Starts the scheduler actor. Must run inside an actix system.
pub fn start(client: ApiClient, informers: Arc<Informers>, recorder: Recorder) {
    let _ = (client, informers, recorder);
}
