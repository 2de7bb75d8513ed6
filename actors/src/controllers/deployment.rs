//! The deployment controller. (STUB: being written.)

use super::Ctx;

/// Starts the controller.
pub fn start(ctx: &Ctx) {
    let _ = ctx;
}
