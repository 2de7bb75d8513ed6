//! The service proxy's rules, apart from the node agent that feeds them, so the benchmark
//! (`capstan-bench proxy`) can drive exactly this code without the node agent.
//!
//! [`model`] reads Services and EndpointSlices into what the rules need; [`rules`] lays out
//! one nftables table as kube-proxy's nftables mode does and computes the difference a
//! change makes; [`Proxier`] keeps the table in step with the models, one `nft -f -`
//! transaction per batch of changed Services; [`relay`] relays loopback endpoints from the
//! pod bridge's address. The node agent's `proxy` module follows the informers and calls it.

pub mod model;
pub mod nft;
mod proxier;
pub mod relay;
pub mod rules;

pub use nft::Nft;
pub use proxier::{Proxier, SyncReport};
pub use rules::{ServiceRules, Table};

/// Errors of the service proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `nft` is not installed.
    #[error("nft is missing: install the Debian package `nftables`")]
    Missing,
    /// `nft` failed.
    #[error("{0}")]
    Nft(String),
    /// Bad settings.
    #[error("{0}")]
    Invalid(String),
}
