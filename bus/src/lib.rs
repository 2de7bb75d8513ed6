//! capstan's event bus.
//!
//! Every actor (controllers, scheduler, kubelets) talks to the cluster only through a
//! [`Bus`]: request/reply to the API service, and the ordered, deduplicated **event
//! stream** the relay fills from the store's change log. Two backends share one subject
//! semantics (`*` matches one token, `>` the rest; queue groups deliver each message to
//! one member; request/reply over inboxes):
//!
//! * [`NatsBus`]: a real `nats-server` through `async-nats`; the event stream is a
//!   JetStream stream (`CAPSTAN_EVENTS`) with message id = revision, so a re-sent event is
//!   dropped by JetStream's duplicate window.
//! * [`InProcBus`]: everything inside one process (`capstan up` without `--nats`).
//!
//! # Subjects (public API, version `v1`; see `docs/BUS.md`)
//!
//! * events: `capstan.v1.events.<group>.<resource>.<namespace|_>.<name>` (`core` for the
//!   core group), payload [`EventEnvelope`] as msgpack with named fields;
//! * API requests: `capstan.v1.api.<identity>` with an [`ApiRequest`] payload answered by
//!   an [`ApiResponse`]; `<identity>` names the caller (see [`subjects::api_request`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use capstan_bus::{Bus, InProcBus};
//! use futures::StreamExt;
//! let bus = InProcBus::new();
//! let mut sub = bus.subscribe("greet.*".into(), None).await.unwrap();
//! bus.publish("greet.world".into(), "hi".into()).await.unwrap();
//! let msg = sub.next().await.unwrap();
//! assert_eq!(&msg.payload[..], b"hi");
//! # });
//! ```

mod envelope;
mod error;
mod inproc;
mod nats;
pub mod subjects;

pub use envelope::{ApiRequest, ApiResponse, EventEnvelope};
pub use error::{Error, Result};
pub use inproc::{InProcBus, InProcConfig};
pub use nats::{
    Config as NatsConfig, Credentials as NatsCredentials, NatsBus, StreamSettings,
    TlsConfig as NatsTlsConfig, REVISION_HEADER,
};

// Lets the shared conformance checks in `tests/common` name this crate the same way from the
// unit tests as from the integration tests.
#[cfg(test)]
extern crate self as capstan_bus;
#[cfg(test)]
#[path = "../tests/common/conformance.rs"]
mod conformance;

use bytes::Bytes;
use futures::Stream;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, so that [`Bus`] can be a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message received from a subscription.
#[derive(Debug, Clone)]
pub struct Message {
    /// The subject it was published on.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Where to send the reply, for requests.
    pub reply: Option<String>,
}

/// A subscription: a stream of messages. Dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = Message> + Send>>;

/// One item of the event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// An event, in revision order.
    Event {
        /// Its subject.
        subject: String,
        /// The msgpack [`EventEnvelope`].
        payload: Bytes,
        /// The revision (the message id).
        revision: u64,
    },
    /// Events may have been missed (slow consumer, stream reset, reconnect): the consumer
    /// must relist. The stream continues after this item.
    Gap,
}

/// Where a consumer of the event stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only events appended after the consumer was created.
    New,
    /// Every retained event with revision greater than this one.
    AfterRevision(u64),
}

/// A stream of [`StreamItem`]s.
pub type EventStream = Pin<Box<dyn Stream<Item = StreamItem> + Send>>;

/// The bus. Cheap to share behind an `Arc`; every method may be called concurrently.
pub trait Bus: Send + Sync + 'static {
    /// Publishes a message (core, at most once).
    fn publish(&self, subject: String, payload: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Subscribes to a subject pattern, optionally as a member of a queue group.
    fn subscribe(&self, subject: String, queue_group: Option<String>) -> BoxFuture<'_, Result<Subscription>>;

    /// Sends a request and waits for one reply.
    fn request(&self, subject: String, payload: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>>;

    /// Appends an event to the durable event stream and waits for it to be stored.
    /// Appending the same revision twice stores it once.
    fn append_event(&self, subject: String, payload: Bytes, revision: u64) -> BoxFuture<'_, Result<()>>;

    /// The revision of the last event in the stream (0 when empty).
    fn last_event_revision(&self) -> BoxFuture<'_, Result<u64>>;

    /// Consumes the event stream in order, filtered by a subject pattern.
    fn events(&self, filter: String, start: StartAt) -> BoxFuture<'_, Result<EventStream>>;
}
