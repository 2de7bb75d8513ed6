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
//!   conflicts, so callers only see precondition failures. An [`Op::Update`] computes its
//!   value from the stored one when the transaction commits (the ResourceQuota charge:
//!   concurrent updates of one key never conflict); it may refuse, failing the transaction
//!   with [`Error::Refused`].
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
//! and power loss (redb: its write-ahead log record was `fdatasync`ed before the answer,
//! and many waiting commits share one record and one fsync; FDB acknowledges only durable
//! commits). Rebuilt on start: only small
//! in-memory state described per backend below; the gateway's watch cache is rebuilt from a
//! list plus the change log.
//!
//! # Encodings shared by both backends
//!
//! * Object record: `[0x01][create_revision u64 BE][mod_revision u64 BE][value bytes]` (a
//!   17-byte fixed header, then the caller's value untouched).
//! * Change-log key: the revision as 8 bytes big-endian, so byte order is revision order.
//!   Change-log value: the [`Change`] as named msgpack (`rmp_serde::to_vec_named`).
//! * Lease: the [`Lease`] as named msgpack. A released lease is kept, expired (expiry 0),
//!   so the next holder's fencing token is still one more than the last one.
//! * Revisions: one `u64` counter. Each mutating op of a transaction takes the next value, so
//!   a transaction of n mutations gets n consecutive revisions. A delete of an absent key
//!   with [`Precondition::None`] (or `Absent`) takes no revision (0) and writes no change.
//!   Failed transactions take none either, so the log has no gaps.
//! * Compaction: `compact(before)` sets the compaction point to
//!   `min(before - 1, current_revision)` (it never moves back) and returns it; it is what
//!   [`Store::compacted_revision`] reports. `changes(after, _)` with `after` below the point
//!   fails with [`Error::Compacted`] `{ requested: after + 1, oldest: point + 1 }`. The point
//!   is written in the same transaction that starts deleting, and readers check it in their
//!   snapshot, so a reader never sees a partially deleted log.
//!
//! # redb backend layout
//!
//! One redb file with four tables:
//!
//! | table | key | value |
//! |---|---|---|
//! | `objects` | user key bytes | object record |
//! | `changes` | revision, u64 BE (8 bytes) | named msgpack [`Change`] |
//! | `meta` | `"current_revision"`, `"compacted_revision"`, `"wal_seq"` (the last write-ahead log record the tree holds) | `u64` |
//! | `leases` | lease name | named msgpack [`Lease`] |
//!
//! A single writer thread owns all write transactions: it drains pending requests (commits,
//! compactions, lease writes; up to [`RedbConfig::max_batch`]) and evaluates each one on its
//! own (a failed precondition fails only that request and writes nothing for it) in one redb
//! write transaction. What the group changed (its change-log entries, leases and counters)
//! becomes one record of the **write-ahead log**, a directory of segment files beside the redb
//! file (`state.redb` → `state.wal/`), appended and `fdatasync`ed once for the whole group.
//! Only then is the redb transaction committed, with `Durability::None` (no fsync; visible to
//! readers from then on), and every waiter answered. So nothing a reader can see is lost by a
//! crash. A **checkpoint** is a group commit with `Durability::Immediate`, made every
//! [`RedbConfig::checkpoint_bytes`] of log, or [`RedbConfig::checkpoint_interval`] after the
//! tree fell behind, and on close; after it the writer starts a new segment and deletes the
//! old ones. Record format, torn-tail handling and segment names: module `wal`.
//!
//! Recovery (on open, and after any redb failure, since redb refuses all work after an I/O
//! error): reopen the file (redb rolls back to its last durable commit), replay every log
//! record after the tree's `wal_seq` (the objects follow from the change-log entries), make
//! that durable, start a fresh segment. A torn or corrupt log tail (cut-short record, bad
//! checksum, out-of-order sequence number) is truncated at the last whole record with a
//! warning; it can hold only records nobody was answered for. A failed log append (e.g. a
//! full disk) is cut back and fails only that group commit, with the I/O error's message;
//! the next one tries again. Reads run on tokio's blocking
//! pool in redb MVCC read transactions: a [`Store::range`] and its revision come from one
//! snapshot. Compaction deletes at most [`RedbConfig::compact_chunk`] log entries per write
//! transaction, interleaved with commits; `compact` answers when they are all gone.
//!
//! Rebuilt on start: the tree's tail from the write-ahead log (above); the writer loads the
//! revision counter and compaction point into memory, the commit watch ([`Store::subscribe_commits`]) starts at the stored
//! revision, and a compaction interrupted by a crash (point written, entries left below it)
//! is finished in the background.
//!
//! # FoundationDB backend layout (feature `fdb`)
//!
//! Every key starts with the store's prefix `P` (one byte string per cluster; tests use a
//! fresh one per case):
//!
//! | key | value |
//! |---|---|
//! | `P 'o' <user key>` | blob of the object record |
//! | `P 'l' <revision u64 BE>` | blob of the named msgpack [`Change`] |
//! | `P 'm' "rev"`, `P 'm' "compacted"` | `u64` BE |
//! | `P 'e' <lease name>` | named msgpack [`Lease`] |
//! | `P 'x' <u32 BE length of k> <k> <chunk u32 BE>` | chunk of a large blob stored at `P k` |
//!
//! A blob is `[0x00][data]` when the data is under 90 000 bytes, else `[0x01][chunk count u32
//! BE]` with the data split under `P 'x'` (FDB values are limited to 100 kB).
//!
//! Revisions come from the `P 'm' "rev"` counter, read and rewritten by every committing
//! transaction: simple and serializable, but commits conflict on that key and FDB's retry
//! loop serializes them (commit versionstamps would remove the hot key, but give gapped,
//! 80-bit revisions known only after commit, which do not fit per-op consecutive revisions
//! or `ModRevision` preconditions). Transactions over ~9 MB fail with [`Error::TooLarge`]
//! (FDB's limit is 10 MB). [`Store::changes`] pages the log over several transactions; a
//! [`Store::range`] is one snapshot and must finish within FDB's 5 s transaction window, so
//! page LISTs with `limit`. Compaction is two range clears plus the new point, in one
//! transaction. A commit whose outcome FDB reports as unknown (`commit_unknown_result`) is
//! not replayed: it fails with [`Error::Backend`] and the caller retries under its own
//! preconditions.
//!
//! Rebuilt on start: nothing; the commit watch starts at 0 and follows commits (and
//! `current_revision` reads) made through the handle. The FDB client network is booted
//! once per process by the first `FdbStore::open`; call `stop_fdb_network` before exiting.
//!
//! # Testing
//!
//! `cargo test -p capstan-storage` runs the conformance suite ([`conformance`]) against
//! redb. Against FoundationDB as well (needs `libfdb_c` and a cluster; each case runs under
//! a fresh prefix):
//!
//! ```text
//! CAPSTAN_FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster cargo test -p capstan-storage --features fdb --test conformance
//! ```
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use capstan_storage::{RedbStore, Store, Txn, Op, Precondition};
//! let dir = std::env::temp_dir().join(format!("capstan-doc-{}", std::process::id()));
//! # std::fs::remove_dir_all(&dir).ok();
//! let store = RedbStore::open(&dir.join("doc.redb")).unwrap();
//! let put = Op::put(b"/a".to_vec(), b"1".to_vec(), Precondition::Absent);
//! let res = store.commit(Txn::single(put)).await.unwrap();
//! let kv = store.get(b"/a").await.unwrap().unwrap();
//! assert_eq!(kv.mod_revision, res.revisions[0]);
//! assert_eq!(store.current_revision().await.unwrap(), res.revisions[0]);
//! drop(store);
//! # std::fs::remove_dir_all(&dir).ok();
//! # });
//! ```

mod codec;
mod encrypted;
mod error;
mod model;
mod redb_store;
mod wal;

pub mod conformance;

#[cfg(feature = "fdb")]
mod fdb_store;

pub use encrypted::{Encrypted, Key as EncryptionKey, Keyring};
pub use error::{Error, Result};
pub use model::{
    Change, ChangeKind, CommitResult, KeyValue, Lease, Op, Precondition, RangeResult, Txn, Update,
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
    /// `limit` of them (0 means no limit). Returns [`Error::Compacted`]
    /// `{ requested: after + 1, oldest: compacted_revision() + 1 }` if some of those
    /// revisions were compacted away, i.e. when `after < compacted_revision()`.
    fn changes(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Change>>>;

    /// Removes change-log entries with revision lower than `before`. Readers asking for
    /// them afterwards get [`Error::Compacted`]. Returns the new compaction point, the
    /// highest removed revision: `min(before - 1, current_revision)`, never lower than the
    /// previous point (the same value [`Store::compacted_revision`] then reports).
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

    /// Releases the lease if `holder` holds it with `token`; otherwise does nothing. The
    /// released lease stays stored as expired, so fencing tokens keep growing.
    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str, token: u64) -> BoxFuture<'a, Result<()>>;

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
