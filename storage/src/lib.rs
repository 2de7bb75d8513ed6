//! capstan's state store.
//!
//! This crate owns everything that is durable in a capstan cluster. It offers one small
//! trait, [`Store`], with two backends:
//!
//! * [`RedbStore`] (module `redb_store`): an embedded, single-process store on a `redb`
//!   file. It is the default for `capstan up` and for tests.
//! * `FdbStore` (cargo feature `fdb`): FoundationDB, for many gateways and large clusters.
//!
//! # Model
//!
//! * Keys are ordered byte strings; values are opaque bytes (capstan stores objects as
//!   msgpack with named fields).
//! * Every mutation gets the next value of one **global revision** counter (`u64`, starting
//!   at 1). A key's value carries the revision that created it and the revision that last
//!   modified it; the gateway serves the latter as `metadata.resourceVersion`.
//! * Writes are grouped in a [`Txn`]: a list of [`Op`]s each guarded by a [`Precondition`].
//!   A transaction is all-or-nothing; when a precondition fails nothing is written and
//!   [`Error::PreconditionFailed`] names the failing op. Backends retry their own internal
//!   conflicts, so callers only see precondition failures.
//! * The same commit appends one [`Change`] per mutation to the **change log**, keyed by
//!   revision. Readers follow it with [`Store::changes`]; once [`Store::compact`] has
//!   removed the revisions a reader asks for, it gets [`Error::Compacted`] (HTTP 410 at the
//!   gateway) and must relist.
//! * **Leases** ([`Store::acquire_lease`]) give one holder at a time a named lease with a
//!   time-to-live and a fencing token that grows every time the holder changes.
//!
//! # What is durable and what is rebuilt
//!
//! Durable: the objects, the change log from the compaction point on, the revision
//! counter, the compaction point and the leases. An acknowledged commit survives `kill -9`
//! (redb commits with `Durability::Immediate`; many waiting commits share one fsync through
//! group commit). Rebuilt on start: nothing in this crate; the gateway's watch cache is
//! rebuilt from a list plus the change log.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use capstan_storage::{RedbStore, Store, Txn, Op, Precondition};
//! let dir = std::env::temp_dir().join(format!("capstan-doc-{}", std::process::id()));
//! let store = RedbStore::open(&dir.join("doc.redb")).unwrap();
//! let rev = store.commit(Txn::single(Op::put(b"/a".to_vec(), b"1".to_vec(), Precondition::Absent))).await.unwrap();
//! let kv = store.get(b"/a").await.unwrap().unwrap();
//! assert_eq!(kv.mod_revision, rev.revisions[0]);
//! # std::fs::remove_dir_all(&dir).ok();
//! # });
//! ```

mod codec;
mod error;
mod model;
mod redb_store;

pub mod conformance;

#[cfg(feature = "fdb")]
mod fdb_store;

pub use error::{Error, Result};
pub use model::{
    Change, ChangeKind, CommitResult, KeyValue, Lease, Op, Precondition, RangeResult, Txn,
};
pub use redb_store::{Config as RedbConfig, RedbStore};

#[cfg(feature = "fdb")]
pub use fdb_store::{stop_network as stop_fdb_network, FdbStore};

use std::future::Future;
use std::pin::Pin;

/// A boxed future, so that [`Store`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state store. Every method is safe to call concurrently from many tasks.
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the latest revision.
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<KeyValue>>>;

    /// Reads keys in `[start, end)` in key order at one consistent snapshot, at most `limit`
    /// of them (0 means no limit). The result says the revision of the snapshot and whether
    /// more keys were left in the range.
    fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>>;

    /// Applies a transaction atomically. On success returns the revision given to each op
    /// (in op order); on a failed precondition nothing is written.
    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<CommitResult>>;

    /// The latest committed revision (0 for an empty store).
    fn current_revision(&self) -> BoxFuture<'_, Result<u64>>;

    /// Changes with revision strictly greater than `after`, in revision order, at most
    /// `limit` of them. Returns [`Error::Compacted`] if some of those revisions were
    /// compacted away.
    fn changes(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Change>>>;

    /// Removes change-log entries with revision lower than `before`. Readers asking for
    /// them afterwards get [`Error::Compacted`]. Returns the new compaction point.
    fn compact(&self, before: u64) -> BoxFuture<'_, Result<u64>>;

    /// The oldest revision still readable from the change log is `compacted_revision() + 1`.
    fn compacted_revision(&self) -> BoxFuture<'_, Result<u64>>;

    /// Acquires or renews the lease `name` for `holder` for `ttl`. Succeeds when the lease
    /// is free, expired, or already held by `holder`; the fencing token grows each time the
    /// holder changes. Fails with [`Error::LeaseHeld`] otherwise.
    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Lease>>;

    /// Releases the lease if `holder` holds it with `token`; otherwise does nothing.
    fn release_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        token: u64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Reads the lease `name`, expired or not.
    fn get_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>>;

    /// A receiver that is notified (with the latest revision) after every commit made
    /// through this handle. Other processes' commits are found by polling [`Store::changes`].
    fn subscribe_commits(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// Returns the smallest key greater than every key starting with `prefix`, for use as the
/// end of a prefix range.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: no upper bound exists; use a key larger than any realistic key.
    vec![0xff; prefix.len() + 1]
}
