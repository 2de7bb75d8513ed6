//! The embedded backend on a `redb` file.
//!
//! One dedicated writer thread owns every write transaction. Callers send it requests over a
//! channel; it drains all pending requests (up to [`Config::max_batch`]), evaluates each one
//! independently inside one redb write transaction, commits once with
//! `Durability::Immediate` (one fsync for the whole group) and then answers every waiter.
//! Reads run on tokio's blocking pool against redb's MVCC snapshots, so they never wait for
//! the writer and always see a consistent state.

use crate::codec::{self, Stored};
use crate::model::{duration_ms, now_ms};
use crate::{BoxFuture, Change, CommitResult, Error, KeyValue, Lease, RangeResult, Result, Store, Txn};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Durable commits as the API service sees them: from the request to the writer thread to
/// its reply (queueing behind other batches, applying, fsync), as upstream's
/// `etcd_request_duration_seconds` times each etcd request.
static COMMITS: std::sync::LazyLock<capstan_metrics::Histogram> = std::sync::LazyLock::new(|| {
    capstan_metrics::histogram(
        "capstan_storage_commit_duration_seconds",
        "Time from a transaction's submission to its durable commit in the embedded store.",
        capstan_metrics::WORK_BUCKETS,
    )
});

/// The writer thread's group commits: how long applying a batch and committing it took.
static BATCH_COMMITS: std::sync::LazyLock<capstan_metrics::HistogramVec> = std::sync::LazyLock::new(|| {
    capstan_metrics::histograms(
        "capstan_storage_batch_duration_seconds",
        "Time the embedded store's writer spent per group commit, by phase (apply, commit with fsync).",
        &["phase"],
        capstan_metrics::WORK_BUCKETS,
    )
});

/// Transactions per group commit.
static BATCH_WRITES: std::sync::LazyLock<capstan_metrics::Histogram> = std::sync::LazyLock::new(|| {
    capstan_metrics::histogram(
        "capstan_storage_batch_transactions",
        "Transactions made durable by one group commit of the embedded store.",
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    )
});

/// Objects: user key → `[1u8][create_revision u64 BE][mod_revision u64 BE][value]`.
const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");
/// Change log: revision as u64 big-endian (8 bytes) → named msgpack [`Change`].
const CHANGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("changes");
/// Meta: `current_revision`, `compacted_revision`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Leases: name → named msgpack [`Lease`].
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");

const META_CURRENT: &str = "current_revision";
const META_COMPACTED: &str = "compacted_revision";

/// Settings of the redb backend.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most requests applied in one write transaction (one fsync). Default 256.
    pub max_batch: usize,
    /// Most change-log entries deleted per write transaction while compacting, so
    /// compaction never holds the writer for long. Default 10 000.
    pub compact_chunk: usize,
    /// Largest accepted transaction, in bytes written (objects plus change log); larger
    /// ones fail with [`Error::TooLarge`]. Default 64 MiB.
    pub max_txn_bytes: usize,
    /// redb page cache size in bytes; `None` keeps redb's default.
    pub cache_size: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_batch: 256, compact_chunk: 10_000, max_txn_bytes: 64 << 20, cache_size: None }
    }
}

/// A request to the writer thread.
enum Request {
    Commit { txn: Txn, reply: oneshot::Sender<Result<CommitResult>> },
    Compact { before: u64, reply: oneshot::Sender<Result<u64>> },
    Acquire { name: String, holder: String, ttl_ms: u64, reply: oneshot::Sender<Result<Lease>> },
    Release { name: String, holder: String, token: u64, reply: oneshot::Sender<Result<()>> },
}

/// State shared between the handle and the writer thread.
struct Shared {
    db: Database,
    path: PathBuf,
    /// Latest committed revision, published after every group commit.
    commits: watch::Sender<u64>,
    /// Number of redb write transactions committed by the writer (group commits).
    write_txns: AtomicU64,
    closed: AtomicBool,
}

/// The embedded store. See the module and crate docs.
pub struct RedbStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Maps a redb error to [`Error::Backend`] with a context message.
fn backend<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Backend(format!("{context}: {e}"))
}

impl RedbStore {
    /// Opens (or creates) the store at `path` with the default [`Config`].
    pub fn open(path: &Path) -> Result<RedbStore> {
        Self::open_with(path, Config::default())
    }

    /// Opens (or creates) the store at `path`, creating parent directories, and starts the
    /// writer thread.
    pub fn open_with(path: &Path, config: Config) -> Result<RedbStore> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Backend(format!("failed to create directory {}: {e}", parent.display()))
            })?;
        }
        let mut builder = Database::builder();
        if let Some(bytes) = config.cache_size {
            builder.set_cache_size(bytes);
        }
        let db = builder
            .create(path)
            .map_err(|e| Error::Backend(format!("failed to open redb file {}: {e}", path.display())))?;

        // Create the tables and read the counters.
        let (current, compacted) = {
            let mut wtx = db.begin_write().map_err(backend("failed to begin write transaction"))?;
            wtx.set_durability(Durability::Immediate).map_err(backend("failed to set durability"))?;
            let counters = {
                wtx.open_table(OBJECTS).map_err(backend("failed to open objects table"))?;
                wtx.open_table(CHANGES).map_err(backend("failed to open change log table"))?;
                wtx.open_table(LEASES).map_err(backend("failed to open leases table"))?;
                let meta = wtx.open_table(META).map_err(backend("failed to open meta table"))?;
                let current = read_meta(&meta, META_CURRENT)?;
                let compacted = read_meta(&meta, META_COMPACTED)?;
                (current, compacted)
            };
            wtx.commit().map_err(backend("failed to commit table creation"))?;
            counters
        };
        if compacted > current {
            return Err(Error::Backend(format!(
                "corrupt meta table: compacted revision {compacted} is past current revision {current}"
            )));
        }

        let (commits, _) = watch::channel(current);
        let shared = Arc::new(Shared {
            db,
            path: path.to_path_buf(),
            commits,
            write_txns: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("capstan-redb-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    shared: writer_shared,
                    config,
                    rx,
                    revision: current,
                    compacted,
                    // Finish any compaction interrupted by a restart.
                    cleanup: true,
                    compact_waiters: Vec::new(),
                    stats: WriterStats::new(),
                };
                w.run();
            })
            .map_err(|e| Error::Backend(format!("failed to start redb writer thread: {e}")))?;
        Ok(RedbStore { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many redb write transactions (each one fsync) the writer has committed since
    /// open. With many concurrent committers this is much lower than the number of commits.
    pub fn write_transactions(&self) -> u64 {
        self.shared.write_txns.load(Ordering::Relaxed)
    }

    /// Stops the writer thread after it has finished the requests already queued. Later
    /// calls on this store fail with [`Error::Closed`]. Dropping the store does the same.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let tx = self.tx.lock().ok().and_then(|mut g| g.take());
        drop(tx);
        let handle = self.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::error!(path = %self.shared.path.display(), "redb writer thread panicked");
            }
        }
    }

    /// Sends a request to the writer and waits for its answer.
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().map_err(|_| Error::Closed)?;
            let tx = guard.as_ref().ok_or(Error::Closed)?;
            tx.send(make(reply)).map_err(|_| Error::Closed)?;
        }
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs a read on the blocking pool against a fresh snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let rtx = shared.db.begin_read().map_err(backend("failed to begin read transaction"))?;
            f(&rtx)
        })
        .await
        .map_err(|e| Error::Backend(format!("read task failed: {e}")))?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_meta(meta: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    Ok(meta.get(key).map_err(backend("failed to read meta table"))?.map_or(0, |g| g.value()))
}

fn read_object(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Stored>> {
    match table.get(key).map_err(backend("failed to read object"))? {
        Some(g) => Ok(Some(codec::decode_object(key, g.value())?)),
        None => Ok(None),
    }
}

fn read_lease(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<Option<Lease>> {
    match table.get(name).map_err(backend("failed to read lease"))? {
        Some(g) => Ok(Some(codec::decode_lease(g.value())?)),
        None => Ok(None),
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    config: Config,
    rx: mpsc::Receiver<Request>,
    /// Committed revision counter.
    revision: u64,
    /// Committed compaction point.
    compacted: u64,
    /// Whether change-log entries at or below `compacted` may still exist.
    cleanup: bool,
    /// Compaction callers waiting for the cleanup to finish, with their answer.
    compact_waiters: Vec<(oneshot::Sender<Result<u64>>, u64)>,
    /// Group-commit figures since the last `debug` summary.
    stats: WriterStats,
}

/// Group-commit figures, logged at `debug` about once a second while the writer is busy:
/// how many requests each write transaction carried and where the writer's time went.
struct WriterStats {
    since: Instant,
    txns: u64,
    requests: u64,
    max_batch: usize,
    /// Building the transaction (reads, planning, inserts).
    apply: Duration,
    /// `WriteTransaction::commit` (page writes and the fsync).
    commit: Duration,
}

impl WriterStats {
    fn new() -> WriterStats {
        WriterStats {
            since: Instant::now(),
            txns: 0,
            requests: 0,
            max_batch: 0,
            apply: Duration::ZERO,
            commit: Duration::ZERO,
        }
    }

    fn record(&mut self, batch: usize, apply: Duration, commit: Duration) {
        BATCH_WRITES.observe(batch as f64);
        BATCH_COMMITS.with_label_values(&["apply"]).observe(apply.as_secs_f64());
        BATCH_COMMITS.with_label_values(&["commit"]).observe(commit.as_secs_f64());
        self.txns += 1;
        self.requests += batch as u64;
        self.max_batch = self.max_batch.max(batch);
        self.apply += apply;
        self.commit += commit;
        let wall = self.since.elapsed();
        if wall >= Duration::from_secs(1) {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::debug!(
                wall_ms = ms(wall) as u64,
                txns = self.txns,
                requests = self.requests,
                avg_batch = format_args!("{:.1}", self.requests as f64 / self.txns as f64),
                max_batch = self.max_batch,
                apply_ms = format_args!("{:.1}", ms(self.apply)),
                commit_ms = format_args!("{:.1}", ms(self.commit)),
                commit_avg_ms = format_args!("{:.2}", ms(self.commit) / self.txns as f64),
                "redb group commits"
            );
            *self = WriterStats::new();
        }
    }
}

/// A reply to send once the group commit is durable.
enum Reply {
    Commit(oneshot::Sender<Result<CommitResult>>, Result<CommitResult>),
    Compact(oneshot::Sender<Result<u64>>, Result<u64>),
    Acquire(oneshot::Sender<Result<Lease>>, Result<Lease>),
    Release(oneshot::Sender<Result<()>>, Result<()>),
    /// A compaction whose answer waits until its change-log entries are deleted.
    CompactPending(oneshot::Sender<Result<u64>>, u64),
}

impl Reply {
    /// Sends the answer; pending compactions are parked in `waiters` instead.
    fn send(self, waiters: &mut Vec<(oneshot::Sender<Result<u64>>, u64)>) {
        // A dropped receiver means the caller went away; the result stands either way.
        match self {
            Reply::Commit(tx, r) => drop(tx.send(r)),
            Reply::Compact(tx, r) => drop(tx.send(r)),
            Reply::Acquire(tx, r) => drop(tx.send(r)),
            Reply::Release(tx, r) => drop(tx.send(r)),
            Reply::CompactPending(tx, v) => waiters.push((tx, v)),
        }
    }

    /// Replaces the result with `err` (the group commit failed).
    fn fail(self, err: &str) {
        let e = || Error::Backend(err.to_string());
        match self {
            Reply::Commit(tx, _) => drop(tx.send(Err(e()))),
            Reply::Compact(tx, _) | Reply::CompactPending(tx, _) => drop(tx.send(Err(e()))),
            Reply::Acquire(tx, _) => drop(tx.send(Err(e()))),
            Reply::Release(tx, _) => drop(tx.send(Err(e()))),
        }
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    objects: redb::Table<'t, &'static [u8], &'static [u8]>,
    changes: redb::Table<'t, &'static [u8], &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
    leases: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Writer {
    fn run(&mut self) {
        loop {
            let mut batch = Vec::new();
            let idle = !self.cleanup;
            if idle {
                // Nothing to do in the background: block for the next request.
                match self.rx.recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => return,
                }
            }
            let mut disconnected = false;
            while batch.len() < self.config.max_batch.max(1) {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            self.group_commit(batch);
            if disconnected {
                // Every queued request was answered. A compaction cleanup still running is
                // finished by the next open (its compaction point is already durable).
                return;
            }
        }
    }

    /// Applies `batch` (and one compaction chunk) in one write transaction.
    fn group_commit(&mut self, batch: Vec<Request>) {
        let size = batch.len();
        let started = Instant::now();
        let mut committing = started;
        let mut replies = Vec::with_capacity(batch.len());
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut chunk_done = false;
        let outcome: Result<()> = (|| {
            let mut wtx =
                self.shared.db.begin_write().map_err(backend("failed to begin write transaction"))?;
            wtx.set_durability(Durability::Immediate).map_err(backend("failed to set durability"))?;
            {
                let mut t = Tables {
                    objects: wtx.open_table(OBJECTS).map_err(backend("failed to open objects table"))?,
                    changes: wtx.open_table(CHANGES).map_err(backend("failed to open change log table"))?,
                    meta: wtx.open_table(META).map_err(backend("failed to open meta table"))?,
                    leases: wtx.open_table(LEASES).map_err(backend("failed to open leases table"))?,
                };
                for req in batch {
                    replies.push(self.apply(&mut t, req, &mut revision, &mut compacted)?);
                }
                if revision != self.revision {
                    t.meta.insert(META_CURRENT, revision).map_err(backend("failed to write meta table"))?;
                }
                if compacted != self.compacted {
                    t.meta
                        .insert(META_COMPACTED, compacted)
                        .map_err(backend("failed to write meta table"))?;
                }
                if self.cleanup || compacted != self.compacted {
                    chunk_done = self.compact_chunk(&mut t, compacted)?;
                }
            }
            committing = Instant::now();
            wtx.commit().map_err(backend("failed to commit write transaction"))?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                self.shared.write_txns.fetch_add(1, Ordering::Relaxed);
                self.stats.record(size, committing - started, committing.elapsed());
                self.revision = revision;
                self.compacted = compacted;
                self.cleanup = !chunk_done;
                self.shared.commits.send_if_modified(|v| {
                    let changed = *v != revision;
                    *v = revision;
                    changed
                });
                for r in replies {
                    r.send(&mut self.compact_waiters);
                }
                if chunk_done {
                    for (tx, v) in self.compact_waiters.drain(..) {
                        drop(tx.send(Ok(v)));
                    }
                }
            }
            Err(e) => {
                let msg = match e {
                    Error::Backend(m) => m,
                    other => other.to_string(),
                };
                tracing::error!(path = %self.shared.path.display(), error = %msg, "redb group commit failed");
                for r in replies {
                    r.fail(&msg);
                }
                // Stop the background cleanup instead of retrying it in a loop: entries below
                // the durable compaction point are invisible to readers, and the next
                // compaction or the next open deletes them.
                if self.cleanup {
                    self.cleanup = false;
                    for (tx, _) in self.compact_waiters.drain(..) {
                        drop(tx.send(Err(Error::Backend(msg.clone()))));
                    }
                }
            }
        }
    }

    /// Evaluates one request. Domain failures (precondition, lease held, too large) become
    /// the request's answer; redb failures abort the whole group commit.
    fn apply(
        &self,
        t: &mut Tables<'_>,
        req: Request,
        revision: &mut u64,
        compacted: &mut u64,
    ) -> Result<Reply> {
        Ok(match req {
            Request::Commit { txn, reply } => {
                let r = self.apply_txn(t, &txn, revision)?;
                Reply::Commit(reply, r)
            }
            Request::Compact { before, reply } => {
                let target = before.saturating_sub(1).min(*revision);
                if target > *compacted {
                    *compacted = target;
                }
                let v = *compacted;
                if v > self.compacted || self.cleanup {
                    // Answer once the log below the new point is really gone.
                    Reply::CompactPending(reply, v)
                } else {
                    Reply::Compact(reply, Ok(v))
                }
            }
            Request::Acquire { name, holder, ttl_ms, reply } => {
                let existing = read_lease(&t.leases, &name)?;
                let r = codec::acquire(existing.clone(), &name, &holder, ttl_ms, now_ms());
                if let Ok(lease) = &r {
                    let raw = codec::encode_lease(lease)?;
                    t.leases
                        .insert(name.as_str(), raw.as_slice())
                        .map_err(backend("failed to write lease"))?;
                }
                Reply::Acquire(reply, r)
            }
            Request::Release { name, holder, token, reply } => {
                let existing = read_lease(&t.leases, &name)?;
                if let Some(lease) = codec::release(existing, &holder, token) {
                    let raw = codec::encode_lease(&lease)?;
                    t.leases
                        .insert(name.as_str(), raw.as_slice())
                        .map_err(backend("failed to write lease"))?;
                }
                Reply::Release(reply, Ok(()))
            }
        })
    }

    /// Plans and writes one transaction. The outer `Result` is a redb failure, the inner
    /// one the transaction's own answer.
    fn apply_txn(&self, t: &mut Tables<'_>, txn: &Txn, revision: &mut u64) -> Result<Result<CommitResult>> {
        let size = codec::txn_write_bytes(txn);
        if size > self.config.max_txn_bytes {
            return Ok(Err(Error::TooLarge(format!(
                "transaction writes about {size} bytes, the limit is {}",
                self.config.max_txn_bytes
            ))));
        }
        let mut current = HashMap::new();
        for key in codec::touched_keys(txn) {
            let v = read_object(&t.objects, &key)?;
            current.insert(key, v);
        }
        let plan = match codec::plan(txn, current, *revision) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        for (key, state) in &plan.writes {
            match state {
                Some(s) => {
                    let raw = codec::encode_object(s.create_revision, s.mod_revision, &s.value);
                    t.objects
                        .insert(key.as_slice(), raw.as_slice())
                        .map_err(backend("failed to write object"))?;
                }
                None => {
                    t.objects.remove(key.as_slice()).map_err(backend("failed to delete object"))?;
                }
            }
        }
        for c in &plan.changes {
            let raw = codec::encode_change(c)?;
            t.changes
                .insert(c.revision.to_be_bytes().as_slice(), raw.as_slice())
                .map_err(backend("failed to append to change log"))?;
        }
        *revision = plan.last_revision;
        Ok(Ok(plan.result))
    }

    /// Deletes up to `compact_chunk` change-log entries at or below `compacted`. Returns
    /// whether none are left.
    fn compact_chunk(&self, t: &mut Tables<'_>, compacted: u64) -> Result<bool> {
        let end = compacted.saturating_add(1).to_be_bytes();
        let chunk = self.config.compact_chunk.max(1);
        let mut keys: Vec<Vec<u8>> = Vec::new();
        {
            let range =
                t.changes.range::<&[u8]>(..end.as_slice()).map_err(backend("failed to scan change log"))?;
            for item in range.take(chunk + 1) {
                let (k, _) = item.map_err(backend("failed to scan change log"))?;
                keys.push(k.value().to_vec());
            }
        }
        let done = keys.len() <= chunk;
        for k in keys.iter().take(chunk) {
            t.changes.remove(k.as_slice()).map_err(backend("failed to compact change log"))?;
        }
        Ok(done)
    }
}

impl Store for RedbStore {
    fn get<'a>(&'a self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<KeyValue>>> {
        let key = key.to_vec();
        Box::pin(self.read(move |rtx| {
            let objects = rtx.open_table(OBJECTS).map_err(backend("failed to open objects table"))?;
            Ok(read_object(&objects, &key)?.map(|s| s.into_kv(key)))
        }))
    }

    fn range<'a>(
        &'a self,
        start: &'a [u8],
        end: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<RangeResult>> {
        let (start, end) = (start.to_vec(), end.to_vec());
        Box::pin(self.read(move |rtx| {
            let meta = rtx.open_table(META).map_err(backend("failed to open meta table"))?;
            let revision = read_meta(&meta, META_CURRENT)?;
            let mut kvs = Vec::new();
            let mut more = false;
            if start < end {
                let objects = rtx.open_table(OBJECTS).map_err(backend("failed to open objects table"))?;
                let range = objects
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(backend("failed to scan objects"))?;
                for item in range {
                    let (k, v) = item.map_err(backend("failed to scan objects"))?;
                    if limit != 0 && kvs.len() == limit {
                        more = true;
                        break;
                    }
                    let key = k.value().to_vec();
                    let s = codec::decode_object(&key, v.value())?;
                    kvs.push(s.into_kv(key));
                }
            }
            Ok(RangeResult { kvs, revision, more })
        }))
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<CommitResult>> {
        let started = Instant::now();
        let fut = self.request(move |reply| Request::Commit { txn, reply });
        Box::pin(async move {
            let r = fut.await;
            COMMITS.observe(started.elapsed().as_secs_f64());
            r
        })
    }

    fn current_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            if self.shared.closed.load(Ordering::SeqCst) {
                return Err(Error::Closed);
            }
            Ok(*self.shared.commits.borrow())
        })
    }

    fn changes(&self, after: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Change>>> {
        Box::pin(self.read(move |rtx| {
            let meta = rtx.open_table(META).map_err(backend("failed to open meta table"))?;
            let compacted = read_meta(&meta, META_COMPACTED)?;
            if after < compacted {
                return Err(Error::Compacted { requested: after + 1, oldest: compacted + 1 });
            }
            let Some(first) = after.checked_add(1) else {
                return Ok(Vec::new());
            };
            let log = rtx.open_table(CHANGES).map_err(backend("failed to open change log table"))?;
            let range = log
                .range::<&[u8]>(first.to_be_bytes().as_slice()..)
                .map_err(backend("failed to scan change log"))?;
            let mut out = Vec::new();
            for item in range {
                if limit != 0 && out.len() == limit {
                    break;
                }
                let (_, v) = item.map_err(backend("failed to scan change log"))?;
                out.push(codec::decode_change(v.value())?);
            }
            Ok(out)
        }))
    }

    fn compact(&self, before: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.request(move |reply| Request::Compact { before, reply }))
    }

    fn compacted_revision(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.read(|rtx| {
            let meta = rtx.open_table(META).map_err(backend("failed to open meta table"))?;
            read_meta(&meta, META_COMPACTED)
        }))
    }

    fn acquire_lease<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease>> {
        let (name, holder, ttl_ms) = (name.to_string(), holder.to_string(), duration_ms(ttl));
        Box::pin(self.request(move |reply| Request::Acquire { name, holder, ttl_ms, reply }))
    }

    fn release_lease<'a>(&'a self, name: &'a str, holder: &'a str, token: u64) -> BoxFuture<'a, Result<()>> {
        let (name, holder) = (name.to_string(), holder.to_string());
        Box::pin(self.request(move |reply| Request::Release { name, holder, token, reply }))
    }

    fn get_lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>>> {
        let name = name.to_string();
        Box::pin(self.read(move |rtx| {
            let leases = rtx.open_table(LEASES).map_err(backend("failed to open leases table"))?;
            read_lease(&leases, &name)
        }))
    }

    fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }
}
