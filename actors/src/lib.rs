//! capstan's control loops as actix actors.
//!
//! Actors talk to the cluster only over the bus: an [`ApiClient`] sends API requests to the
//! gateways (request/reply) and [`Informer`]s keep local caches current from the event
//! stream. A [`Controller`] actor runs one [`Reconciler`] with a keyed work queue.
//!
//! ```no_run
//! # async fn run(bus: std::sync::Arc<dyn capstan_bus::Bus>) {
//! use capstan_actors::{client::gvr, ApiClient, Informer};
//! let client = ApiClient::new(bus, "controllers");
//! let pods = Informer::new(client.clone(), gvr::PODS);
//! pods.start();
//! pods.wait_synced().await;
//! println!("{} pods", pods.list().len());
//! # }
//! ```

pub mod client;
pub mod controllers;
pub mod events;
pub mod informer;
pub mod leader;
pub mod nodeobjects;
pub mod pool;
pub mod runtime;
pub mod scheduler;
pub mod simnodes;
pub mod volumes;

pub use client::{ApiClient, ClientError, Gvr};
pub use informer::{Change, Informer, Informers, Key};
pub use runtime::{Action, Controller, Enqueue, ReconcileError, Reconciler};
