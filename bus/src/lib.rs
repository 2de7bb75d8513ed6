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
//! # Access
//!
//! On a shared NATS server the request subject is proof of identity only if the server
//! confines each credential to its own subjects: [`access`] tables each role's
//! permissions and renders the nats-server configuration (`capstan bus-config`); a role
//! connects with its credential ([`NatsCredentials::from_file`]), TLS
//! ([`NatsTlsConfig`]) and its own inbox prefix ([`NatsConfig::inbox_prefix`]).
//!
//! # Delivery guarantees
//!
//! * **Core messages** ([`Bus::publish`], [`Bus::subscribe`]) are at most once, as in
//!   NATS: a subscriber whose queue is full (`subscription_capacity`, default 65,536)
//!   loses messages; both backends log it (`NatsBus` through the client's slow-consumer
//!   event). Use requests with retries, or the event stream, for anything that matters.
//! * **Requests** ([`Bus::request`]) get [`Error::NoResponders`] at once when nobody is
//!   subscribed to the subject and [`Error::Timeout`] when no reply arrives in time.
//! * **Events** ([`Bus::append_event`], [`Bus::events`]) are ordered by revision and
//!   delivered at most once per consumer and never silently lost: an [`EventStream`]
//!   yields every retained event with a revision above its start, in order, each once,
//!   across reconnects and server restarts; where it cannot prove that, it yields
//!   [`StreamItem::Gap`] and continues, and the consumer relists. A gap is reported when the
//!   requested history is older than what is retained (the start revision is below the
//!   first retained event's revision - 1 and something was dropped), or when the stream
//!   dropped events the consumer had not read yet (a consumer that far behind). The gap may
//!   come a little after the point it refers to; relisting repairs either way. Appending
//!   a revision at or below the last appended one stores nothing.
//!
//! # The JetStream stream ([`NatsBus`])
//!
//! [`NatsBus::connect`] creates the stream, or updates it to the configured settings
//! ([`StreamSettings`], in [`NatsConfig::stream`]):
//!
//! | setting | value |
//! |---|---|
//! | name | `CAPSTAN_EVENTS` ([`subjects::EVENT_STREAM`]) |
//! | subjects | `capstan.v1.events.>` |
//! | retention | limits, discard old |
//! | max age | 24 h |
//! | max messages | 10,000,000 |
//! | max bytes | unlimited |
//! | duplicate window | 2 min |
//! | storage | file, 1 replica (`capstan gateway --nats-stream-replicas 3` on a JetStream cluster); direct get allowed |
//!
//! [`NatsConfig::url`] may list several servers (`nats://a:4222,nats://b:4222`): the
//! members of a NATS cluster. The client connects to any that answers, learns the others
//! from it, and moves to another when its server goes away. Creating a replicated stream
//! is retried for up to 30 s while a cluster that started at the same time elects its
//! JetStream leader.
//!
//! Each event is one message on its object's subject, with headers `Nats-Msg-Id` and
//! [`REVISION_HEADER`] (`Capstan-Revision`) both set to the revision, published with
//! JetStream and acknowledged before [`Bus::append_event`] returns. A revision re-sent
//! within the duplicate window is dropped by JetStream; [`NatsBus`] also skips revisions at
//! or below the last one it knows to be stored, and every consumer skips revisions at or
//! below the last one it yielded, so a duplicate stored after the window never reaches
//! an informer. [`Bus::last_event_revision`] reads the header of the stream's last message
//! (0 when the stream holds none, including when everything aged out).
//!
//! [`Bus::events`] finds its first stream sequence by binary search over the stored
//! revisions (they increase with the sequence because the relay appends in order), then
//! reads through an ephemeral, unacknowledged pull consumer filtered by the pattern. It
//! tracks the stream sequence it has reached and recreates the consumer from there after a
//! reconnect, a server restart, missed heartbeats or a skipped consumer sequence; the
//! stream itself never ends or fails (backend errors are logged and retried with back-off),
//! only [`Bus::events`] returns an error if the first consumer cannot be created. Only
//! features of nats-server 2.9 are used (one filter subject per consumer).
//!
//! [`InProcBus`] keeps the last 1,000,000 events ([`InProcConfig::max_events`]) in memory
//! with the same semantics; each consumer reads the shared log with its own cursor.
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

pub mod access;
mod envelope;
mod error;
mod inproc;
mod nats;
pub mod sessions;
pub mod subjects;
pub mod usage;

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
