//! The FoundationDB backend (cargo feature `fdb`).
//!
//! Every key lives under the store's prefix (see the crate docs for the layout). The global
//! revision is a counter key that each committing transaction reads and rewrites: every
//! commit conflicts with every other one, FDB's retry loop serializes them, and revisions
//! are exactly "one global u64, consecutive per op". (Commit versionstamps would avoid that
//! hot key but give 80-bit, gapped revisions that are only known after commit, which does
//! not fit [`CommitResult::revisions`] or `ModRevision` preconditions inside the same
//! transaction.)
//!
//! Values larger than FDB's 100 kB value limit are split into chunks; transactions are
//! refused above ~9 MB ([`Error::TooLarge`]) to stay under FDB's 10 MB limit. Change-log
//! reads are paged over several transactions (entries are immutable, and a counter-assigned
//! revision implies all lower ones committed), so they never hit the 5 s limit. A range read
//! is one snapshot and must finish inside one transaction: page LISTs with `limit`.

use crate::codec::{self, Stored};
use crate::model::{duration_ms, now_ms};
use crate::{
    prefix_end, BoxFuture, Change, CommitResult, Error, KeyValue, Lease, RangeResult, Result, Store, Txn,
};
use foundationdb::options::{DatabaseOption, StreamingMode};
use foundationdb::{Database, FdbBindingError, FdbError, RangeOption, RetryableTransaction};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// FDB refuses values above 100 000 bytes; larger blobs are split into chunks of this size.
const CHUNK: usize = 90_000;
/// Largest transaction we send (FDB's hard limit is 10 MB).
const MAX_TXN_BYTES: usize = 9_000_000;
/// Change-log entries read per transaction.
const LOG_PAGE: usize = 2_000;
/// Timeout of one transaction including its retries, in milliseconds.
const TXN_TIMEOUT_MS: i32 = 30_000;

/// Blob marker: the rest of the value is the data.
const BLOB_INLINE: u8 = 0;
/// Blob marker: followed by the chunk count (u32 BE); chunks are stored separately.
const BLOB_SPLIT: u8 = 1;

static NETWORK: OnceLock<std::result::Result<(), String>> = OnceLock::new();
static NETWORK_GUARD: Mutex<Option<foundationdb::api::NetworkAutoStop>> = Mutex::new(None);

/// Starts the FDB client network thread, once per process.
#[allow(unsafe_code)]
fn ensure_network() -> Result<()> {
    let r = NETWORK.get_or_init(|| {
        let builder = foundationdb::api::FdbApiBuilder::default()
            .build()
            .map_err(|e| format!("failed to select the fdb api version: {e}"))?;
        // SAFETY: `boot` may only run once per process and its guard must be dropped before
        // the process exits. The `OnceLock` makes this the only call in the process (this
        // crate is the only place that boots the FDB network), and the guard is kept in
        // `NETWORK_GUARD` until `stop_network` drops it; a process that exits without
        // calling it is torn down by the OS, which FDB tolerates for an aborted process.
        let guard = unsafe { builder.boot() }.map_err(|e| format!("failed to start the fdb network: {e}"))?;
        if let Ok(mut g) = NETWORK_GUARD.lock() {
            *g = Some(guard);
        }
        Ok(())
    });
    r.clone().map_err(Error::Backend)
}

/// Stops the FDB client network thread. Call it once, before the process exits, after every
/// [`FdbStore`] is dropped; the network cannot be started again in this process.
pub fn stop_network() {
    let guard = NETWORK_GUARD.lock().ok().and_then(|mut g| g.take());
    drop(guard);
}

/// The FoundationDB store. See the module and crate docs.
pub struct FdbStore {
    db: Arc<Database>,
    prefix: Vec<u8>,
    commits: watch::Sender<u64>,
}

/// An error inside a transaction: FDB's own (retried by the loop) or the store's answer.
enum TxError {
    Fdb(FdbError),
    Store(Error),
}

impl From<FdbError> for TxError {
    fn from(e: FdbError) -> Self {
        TxError::Fdb(e)
    }
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Store(e)
    }
}

type TxResult<T> = std::result::Result<T, TxError>;

fn fdb_failed(e: FdbBindingError) -> Error {
    Error::Backend(format!("fdb transaction failed: {e}"))
}

impl FdbStore {
    /// Connects to the cluster (`None`: the default cluster file) and serves the keys under
    /// `prefix`. Boots the FDB network on first use in the process.
    pub fn open(cluster_file: Option<&Path>, prefix: &[u8]) -> Result<FdbStore> {
        ensure_network()?;
        let path = match cluster_file {
            Some(p) => Some(p.to_str().ok_or_else(|| {
                Error::Backend(format!("cluster file path {} is not valid utf-8", p.display()))
            })?),
            None => None,
        };
        let db = Database::new(path).map_err(|e| {
            Error::Backend(format!("failed to open fdb database {}: {e}", path.unwrap_or("(default)")))
        })?;
        db.set_option(DatabaseOption::TransactionTimeout(TXN_TIMEOUT_MS))
            .map_err(|e| Error::Backend(format!("failed to set fdb transaction timeout: {e}")))?;
        let (commits, _) = watch::channel(0);
        Ok(FdbStore { db: Arc::new(db), prefix: prefix.to_vec(), commits })
    }

    /// Removes every key under this store's prefix (test teardown, decommissioning).
    pub async fn clear_prefix(&self) -> Result<()> {
        let (begin, end) = (self.prefix.clone(), prefix_end(&self.prefix));
        self.db
            .run(|trx, _| {
                let (begin, end) = (begin.clone(), end.clone());
                async move {
                    trx.clear_range(&begin, &end);
                    Ok(())
                }
            })
            .await
            .map_err(fdb_failed)
    }

    fn key(&self, space: u8, rest: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 1 + rest.len());
        k.extend_from_slice(&self.prefix);
        k.push(space);
        k.extend_from_slice(rest);
        k
    }

    fn object_key(&self, key: &[u8]) -> Vec<u8> {
        self.key(b'o', key)
    }

    fn log_key(&self, revision: u64) -> Vec<u8> {
        self.key(b'l', &revision.to_be_bytes())
    }

    fn lease_key(&self, name: &str) -> Vec<u8> {
        self.key(b'e', name.as_bytes())
    }

    fn meta_key(&self, name: &str) -> Vec<u8> {
        self.key(b'm', name.as_bytes())
    }

    /// Where the chunks of the blob at `base` (a full key under the prefix) live.
    fn chunk_prefix(&self, base: &[u8]) -> Vec<u8> {
        let rel = &base[self.prefix.len().min(base.len())..];
        let mut rest = Vec::with_capacity(4 + rel.len());
        rest.extend_from_slice(&(rel.len() as u32).to_be_bytes());
        rest.extend_from_slice(rel);
        self.key(b'x', &rest)
    }

    /// Runs `f` in FDB's retry loop. Store errors end the loop (the transaction, which has
    /// written nothing by then, is committed as a no-op) and are returned as they are.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(RetryableTransaction, bool) -> Fut,
        Fut: Future<Output = TxResult<T>>,
    {
        let out = self
            .db
            .run(|trx, maybe_committed| {
                let fut = f(trx, maybe_committed.into());
                async move {
                    match fut.await {
                        Ok(v) => Ok(Ok(v)),
                        Err(TxError::Store(e)) => Ok(Err(e)),
                        Err(TxError::Fdb(e)) => Err(FdbBindingError::from(e)),
                    }
                }
            })
            .await
            .map_err(fdb_failed)?;
        out
    }

    async fn read_u64(&self, trx: &RetryableTransaction, key: &[u8], snapshot: bool) -> TxResult<u64> {
        match trx.get(key, snapshot).await? {
            Some(v) => Ok(codec::decode_u64("fdb counter", &v)?),
            None => Ok(0),
        }
    }

    /// Writes `data` at `base`, inline or in chunks, replacing any earlier chunks.
    fn write_blob(&self, trx: &RetryableTransaction, base: &[u8], data: &[u8]) {
        let chunks = self.chunk_prefix(base);
        trx.clear_range(&chunks, &prefix_end(&chunks));
        if data.len() < CHUNK {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(BLOB_INLINE);
            v.extend_from_slice(data);
            trx.set(base, &v);
            return;
        }
        let mut n = 0u32;
        for part in data.chunks(CHUNK) {
            let mut k = chunks.clone();
            k.extend_from_slice(&n.to_be_bytes());
            trx.set(&k, part);
            n += 1;
        }
        let mut v = vec![BLOB_SPLIT];
        v.extend_from_slice(&n.to_be_bytes());
        trx.set(base, &v);
    }

    fn clear_blob(&self, trx: &RetryableTransaction, base: &[u8]) {
        let chunks = self.chunk_prefix(base);
        trx.clear_range(&chunks, &prefix_end(&chunks));
        trx.clear(base);
    }

    /// Reads the data of the blob whose stored value at `base` is `stored`.
    async fn read_blob(&self, trx: &RetryableTransaction, base: &[u8], stored: &[u8]) -> TxResult<Vec<u8>> {
        match stored.split_first() {
            Some((&BLOB_INLINE, rest)) => Ok(rest.to_vec()),
            Some((&BLOB_SPLIT, count)) => {
                let n = if count.len() == 4 {
                    u32::from_be_bytes([count[0], count[1], count[2], count[3]]) as usize
                } else {
                    return Err(corrupt(base).into());
                };
                let chunks = self.chunk_prefix(base);
                let parts = self.scan(trx, chunks.clone(), prefix_end(&chunks), 0).await?;
                if parts.len() != n {
                    return Err(corrupt(base).into());
                }
                Ok(parts.into_iter().flat_map(|(_, v)| v).collect())
            }
            _ => Err(corrupt(base).into()),
        }
    }

    /// Reads `[begin, end)` (at most `limit` keys, 0: all) within one transaction, page by page.
    async fn scan(
        &self,
        trx: &RetryableTransaction,
        begin: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
    ) -> TxResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        if begin >= end {
            return Ok(out);
        }
        let mut opt = RangeOption::from((begin, end));
        opt.mode = StreamingMode::Iterator;
        opt.limit = (limit > 0).then_some(limit);
        let mut iteration = 1;
        loop {
            let kvs = trx.get_range(&opt, iteration, false).await?;
            for kv in kvs.iter() {
                out.push((kv.key().to_vec(), kv.value().to_vec()));
            }
            match opt.next_range(&kvs) {
                Some(next) => {
                    opt = next;
                    iteration += 1;
                }
                None => return Ok(out),
            }
        }
    }

    async fn read_object(&self, trx: &RetryableTransaction, key: &[u8]) -> TxResult<Option<Stored>> {
        let full = self.object_key(key);
        match trx.get(&full, false).await? {
            Some(raw) => {
                let record = self.read_blob(trx, &full, &raw).await?;
                Ok(Some(codec::decode_object(key, &record)?))
            }
            None => Ok(None),
        }
    }

    async fn read_lease(&self, trx: &RetryableTransaction, name: &str) -> TxResult<Option<Lease>> {
        match trx.get(&self.lease_key(name), false).await? {
            Some(raw) => Ok(Some(codec::decode_lease(&raw)?)),
            None => Ok(None),
        }
    }

    fn notify(&self, revision: u64) {
        self.commits.send_if_modified(|v| {
            let newer = revision > *v;
            if newer {
                *v = revision;
            }
            newer
        });
    }

    async fn commit_txn(&self, txn: &Txn) -> Result<CommitResult> {
        let size = codec::txn_write_bytes(txn);
        if size > MAX_TXN_BYTES {
            return Err(Error::TooLarge(format!(
                "transaction writes about {size} bytes, the fdb limit is {MAX_TXN_BYTES}"
            )));
        }
        let (result, revision) = self
            .run(|trx, maybe_committed| async move {
                if maybe_committed {
                    // The previous attempt may have been applied; replaying it would apply
                    // it twice. Report it instead (callers retry with their preconditions).
                    return Err(Error::Backend(
                        "fdb commit outcome unknown: the transaction may have been applied".into(),
                    )
                    .into());
                }
                let rev_key = self.meta_key("rev");
                let revision = self.read_u64(&trx, &rev_key, false).await?;
                let mut current = HashMap::new();
                for key in codec::touched_keys(txn) {
                    let v = self.read_object(&trx, &key).await?;
                    current.insert(key, v);
                }
                let plan = codec::plan(txn, current, revision)?;
                for (key, state) in &plan.writes {
                    let full = self.object_key(key);
                    match state {
                        Some(s) => {
                            let raw = codec::encode_object(s.create_revision, s.mod_revision, &s.value);
                            self.write_blob(&trx, &full, &raw);
                        }
                        None => self.clear_blob(&trx, &full),
                    }
                }
                for c in &plan.changes {
                    let raw = codec::encode_change(c)?;
                    self.write_blob(&trx, &self.log_key(c.revision), &raw);
                }
                if plan.last_revision != revision {
                    trx.set(&rev_key, &plan.last_revision.to_be_bytes());
                }
                Ok((plan.result, plan.last_revision))
            })
            .await?;
        self.notify(revision);
        Ok(result)
    }
}

fn corrupt(key: &[u8]) -> Error {
    Error::Backend(format!("corrupt fdb record at {}", String::from_utf8_lossy(key)))
}

impl Store for FdbStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        Box::pin(async move {
            let s = self.run(|trx, _| async move { self.read_object(&trx, key).await }).await?;
            Ok(s.map(|s| s.into_kv(key.to_vec())))
        })
    }

    fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        Box::pin(self.run(move |trx, _| async move {
            let revision = self.read_u64(&trx, &self.meta_key("rev"), false).await?;
            if start >= end {
                return Ok(RangeResult { kvs: Vec::new(), revision, more: false });
            }
            let want = if limit == 0 { 0 } else { limit + 1 };
            let raw = self.scan(&trx, self.object_key(start), self.object_key(end), want).await?;
            let more = limit != 0 && raw.len() > limit;
            let mut kvs = Vec::with_capacity(raw.len());
            let skip = self.prefix.len() + 1;
            for (full, v) in raw.into_iter().take(if limit == 0 { usize::MAX } else { limit }) {
                let record = self.read_blob(&trx, &full, &v).await?;
                let key = full[skip..].to_vec();
                kvs.push(codec::decode_object(&key, &record)?.into_kv(key));
            }
            Ok(RangeResult { kvs, revision, more })
        }))
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<CommitResult>> {
        Box::pin(async move { self.commit_txn(&txn).await })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let rev = self
                .run(|trx, _| async move { self.read_u64(&trx, &self.meta_key("rev"), false).await })
                .await?;
            // Keep the commit watch no older than what this handle has seen.
            self.notify(rev);
            Ok(rev)
        })
    }

    fn changes(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(async move {
            let mut out: Vec<Change> = Vec::new();
            let mut next = after.checked_add(1);
            let end = prefix_end(&self.key(b'l', b""));
            // Several transactions, one page each (see the module docs).
            while let Some(from) = next {
                let page = if limit == 0 { LOG_PAGE } else { (limit - out.len()).min(LOG_PAGE) };
                let batch = self
                    .run(|trx, _| {
                        let end = end.clone();
                        async move {
                            let compacted = self.read_u64(&trx, &self.meta_key("compacted"), false).await?;
                            if from - 1 < compacted {
                                return Err(
                                    Error::Compacted { requested: from, oldest: compacted + 1 }.into()
                                );
                            }
                            let raw = self.scan(&trx, self.log_key(from), end, page).await?;
                            let mut changes = Vec::with_capacity(raw.len());
                            for (k, v) in raw {
                                let record = self.read_blob(&trx, &k, &v).await?;
                                changes.push(codec::decode_change(&record)?);
                            }
                            Ok(changes)
                        }
                    })
                    .await?;
                let full = batch.len() == page;
                next = batch.last().and_then(|c| c.revision.checked_add(1));
                out.extend(batch);
                if !full || (limit != 0 && out.len() >= limit) {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn compact(&self, before: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.run(move |trx, _| async move {
            let current = self.read_u64(&trx, &self.meta_key("rev"), false).await?;
            let compacted_key = self.meta_key("compacted");
            let compacted = self.read_u64(&trx, &compacted_key, false).await?;
            let target = before.saturating_sub(1).min(current);
            if target <= compacted {
                return Ok(compacted);
            }
            trx.set(&compacted_key, &target.to_be_bytes());
            // Two range clears, however many entries: FDB clears ranges cheaply.
            let end = target + 1;
            trx.clear_range(&self.log_key(0), &self.log_key(end));
            trx.clear_range(&self.chunk_prefix(&self.log_key(0)), &self.chunk_prefix(&self.log_key(end)));
            Ok(target)
        }))
    }

    fn compacted_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(
            self.run(
                move |trx, _| async move { self.read_u64(&trx, &self.meta_key("compacted"), false).await },
            ),
        )
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease>> {
        let ttl_ms = duration_ms(ttl);
        Box::pin(self.run(move |trx, _| async move {
            let existing = self.read_lease(&trx, name).await?;
            let lease = codec::acquire(existing, name, holder, ttl_ms, now_ms())?;
            trx.set(&self.lease_key(name), &codec::encode_lease(&lease)?);
            Ok(lease)
        }))
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str, token: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.run(move |trx, _| async move {
            let existing = self.read_lease(&trx, name).await?;
            if let Some(lease) = codec::release(existing, holder, token) {
                trx.set(&self.lease_key(name), &codec::encode_lease(&lease)?);
            }
            Ok(())
        }))
    }

    fn get_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        Box::pin(self.run(move |trx, _| async move { self.read_lease(&trx, name).await }))
    }

    fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}
