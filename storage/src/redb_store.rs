//! The embedded backend on a `redb` file.
//!
//! One dedicated writer thread owns every write transaction. Callers send it requests over a
//! channel; it drains all pending requests (up to [`Config::max_batch`]) and evaluates each
//! one independently inside one redb write transaction. What the group changed is appended
//! to the write-ahead log ([`crate::wal`]) as one record and made durable with one
//! `fdatasync`; only then is the redb transaction committed, without an fsync of its own
//! (`Durability::None`), which makes it visible to readers, and every waiter answered. A
//! checkpoint (a `Durability::Immediate` commit, every [`Config::checkpoint_bytes`] of log
//! or [`Config::checkpoint_interval`]) makes the tree durable and lets the log segments it
//! covers go. On open, and after a storage failure, the records past the tree's last
//! durable one are replayed. Reads run on tokio's blocking pool against redb's MVCC
//! snapshots, so they never wait for the writer and always see a consistent state.

use crate::codec::{self, Stored};
use crate::model::{duration_ms, now_ms};
use crate::wal::{self, Record, Wal};
use crate::{
    BoxFuture, Change, ChangeKind, CommitResult, Error, KeyValue, Lease, RangeResult, Result, Store, Txn,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
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
        "Time the embedded store's writer spent per group commit, by phase (apply; log: write-ahead log append with fdatasync; commit: tree commit, durable only at checkpoints).",
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
/// The last write-ahead log record the tree holds.
const META_WAL_SEQ: &str = "wal_seq";

/// Settings of the redb backend.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most requests applied in one write transaction (one log fsync). Default 1024.
    pub max_batch: usize,
    /// Most change-log entries deleted per write transaction while compacting, so
    /// compaction never holds the writer for long. Default 10 000.
    pub compact_chunk: usize,
    /// Largest accepted transaction, in bytes written (objects plus change log); larger
    /// ones fail with [`Error::TooLarge`]. Default 64 MiB.
    pub max_txn_bytes: usize,
    /// redb page cache size in bytes; `None` keeps redb's default.
    pub cache_size: Option<usize>,
    /// Write-ahead log bytes after which the next group commit is also a checkpoint (a
    /// durable redb commit, after which the log segments before it are deleted). Bounds the
    /// replay on open. Default 64 MiB.
    pub checkpoint_bytes: u64,
    /// Longest time the tree stays behind the log while writes come in (also checkpointed
    /// when the writer goes idle this long after a write). Default 10 s.
    pub checkpoint_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_batch: 1024,
            compact_chunk: 10_000,
            max_txn_bytes: 64 << 20,
            cache_size: None,
            checkpoint_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(10),
        }
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
    /// The open database; `None` while the writer reopens it after a storage failure.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// Latest committed revision, published after every group commit.
    commits: watch::Sender<u64>,
    /// Number of redb write transactions committed by the writer (group commits).
    write_txns: AtomicU64,
    /// Number of write-ahead log appends (each one fdatasync).
    wal_syncs: AtomicU64,
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
        let db = open_db(path, &config)?;
        let wal_dir = wal::dir_for(path);
        let rec = recover(&db, &wal_dir)?;
        let db = Arc::new(db);
        let (commits, _) = watch::channel(rec.revision);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            path: path.to_path_buf(),
            commits,
            write_txns: AtomicU64::new(0),
            wal_syncs: AtomicU64::new(0),
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
                    db: Some(db),
                    wal: Some(rec.wal),
                    wal_dir,
                    broken: None,
                    parked: Vec::new(),
                    last_checkpoint: Instant::now(),
                    unpersisted: false,
                    revision: rec.revision,
                    compacted: rec.compacted,
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

    /// How many write-ahead log appends (each one `fdatasync`) the writer has made since
    /// open: one per group commit that changed something.
    pub fn log_syncs(&self) -> u64 {
        self.shared.wal_syncs.load(Ordering::Relaxed)
    }

    /// The write-ahead log directory of the store at `path` (`state.redb` → `state.wal`).
    pub fn log_dir(path: &Path) -> PathBuf {
        wal::dir_for(path)
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
        let db = self.shared.db()?;
        tokio::task::spawn_blocking(move || {
            let rtx = db.begin_read().map_err(backend("failed to begin read transaction"))?;
            f(&rtx)
        })
        .await
        .map_err(|e| Error::Backend(format!("read task failed: {e}")))?
    }
}

impl Shared {
    /// The open database, or an error while the writer reopens it.
    fn db(&self) -> Result<Arc<Database>> {
        let g = self.db.read().map_err(|_| Error::Backend("store lock poisoned".into()))?;
        g.clone().ok_or_else(|| Error::Backend("store is recovering from a storage failure".into()))
    }
}

/// Opens (or creates) the redb file.
fn open_db(path: &Path, config: &Config) -> Result<Database> {
    let mut builder = Database::builder();
    if let Some(bytes) = config.cache_size {
        builder.set_cache_size(bytes);
    }
    builder
        .create(path)
        .map_err(|e| Error::Backend(format!("failed to open redb file {}: {e}", path.display())))
}

/// What [`recover`] brought the tree to.
struct Recovered {
    wal: Wal,
    revision: u64,
    compacted: u64,
}

/// Creates the tables, replays the write-ahead log records the tree lacks, makes the result
/// durable and starts a fresh log segment (deleting the replayed ones).
fn recover(db: &Database, wal_dir: &Path) -> Result<Recovered> {
    let mut wtx = db.begin_write().map_err(backend("failed to begin write transaction"))?;
    wtx.set_durability(Durability::Immediate).map_err(backend("failed to set durability"))?;
    let (mut wal, revision, compacted) = {
        let mut t = Tables::open(&wtx)?;
        let mut revision = read_meta(&t.meta, META_CURRENT)?;
        let mut compacted = read_meta(&t.meta, META_COMPACTED)?;
        let applied = read_meta(&t.meta, META_WAL_SEQ)?;
        let opened = Wal::open(wal_dir, applied)?;
        let (n, from) = (opened.records.len(), revision);
        for rec in &opened.records {
            replay(&mut t, rec, revision)?;
            revision = rec.revision;
            compacted = rec.compacted;
        }
        if n > 0 {
            tracing::info!(
                dir = %wal_dir.display(),
                records = n,
                revisions = format_args!("{}..={}", from + 1, revision),
                "replayed the write-ahead log into the tree"
            );
        }
        if compacted > revision {
            return Err(Error::Backend(format!(
                "corrupt meta table: compacted revision {compacted} is past current revision {revision}"
            )));
        }
        (opened.wal, revision, compacted)
    };
    wtx.commit().map_err(backend("failed to commit the replayed write-ahead log"))?;
    wal.rotate()?;
    Ok(Recovered { wal, revision, compacted })
}

/// Writes one log record into the tree: the changes (and the objects they leave), the
/// leases and the counters. `revision` is the tree's revision before it.
fn replay(t: &mut Tables<'_>, rec: &Record, revision: u64) -> Result<()> {
    let mut expect = revision;
    for raw in &rec.changes {
        let c = codec::decode_change(raw)?;
        if c.revision != expect + 1 {
            return Err(Error::Backend(format!(
                "write-ahead log record {} has revision {} where {} was due",
                rec.seq,
                c.revision,
                expect + 1
            )));
        }
        expect = c.revision;
        match c.kind {
            ChangeKind::Create | ChangeKind::Update => {
                let obj = codec::encode_object(c.create_revision, c.revision, &c.value);
                t.objects
                    .insert(c.key.as_slice(), obj.as_slice())
                    .map_err(backend("failed to write object"))?;
            }
            ChangeKind::Delete => {
                t.objects.remove(c.key.as_slice()).map_err(backend("failed to delete object"))?;
            }
        }
        t.changes
            .insert(c.revision.to_be_bytes().as_slice(), raw.as_slice())
            .map_err(backend("failed to append to change log"))?;
    }
    if expect != rec.revision {
        return Err(Error::Backend(format!(
            "write-ahead log record {} ends at revision {expect} but says {}",
            rec.seq, rec.revision
        )));
    }
    for (name, raw) in &rec.leases {
        t.leases.insert(name.as_str(), raw.as_slice()).map_err(backend("failed to write lease"))?;
    }
    t.meta.insert(META_CURRENT, rec.revision).map_err(backend("failed to write meta table"))?;
    t.meta.insert(META_COMPACTED, rec.compacted).map_err(backend("failed to write meta table"))?;
    t.meta.insert(META_WAL_SEQ, rec.seq).map_err(backend("failed to write meta table"))?;
    Ok(())
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
    /// The database (`None` while broken).
    db: Option<Arc<Database>>,
    /// The write-ahead log (`None` while broken).
    wal: Option<Wal>,
    wal_dir: PathBuf,
    /// Set when a redb operation failed: redb refuses everything after an I/O error, so the
    /// writer reopens the file and replays the log before it takes new requests.
    broken: Option<String>,
    /// Answers of a group commit whose log record is durable but whose tree commit failed:
    /// sent once the tree has it again (after the reopen and replay).
    parked: Vec<Reply>,
    /// When the tree was last made durable.
    last_checkpoint: Instant,
    /// Whether the tree has commits that are not durable yet (only the log has them).
    unpersisted: bool,
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
    /// The write-ahead log append and its fdatasync.
    log: Duration,
    /// `WriteTransaction::commit` (no fsync, except at checkpoints).
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
            log: Duration::ZERO,
            commit: Duration::ZERO,
        }
    }

    fn record(&mut self, batch: usize, apply: Duration, log: Duration, commit: Duration) {
        BATCH_WRITES.observe(batch as f64);
        BATCH_COMMITS.with_label_values(&["apply"]).observe(apply.as_secs_f64());
        BATCH_COMMITS.with_label_values(&["log"]).observe(log.as_secs_f64());
        BATCH_COMMITS.with_label_values(&["commit"]).observe(commit.as_secs_f64());
        self.txns += 1;
        self.requests += batch as u64;
        self.max_batch = self.max_batch.max(batch);
        self.apply += apply;
        self.log += log;
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
                log_ms = format_args!("{:.1}", ms(self.log)),
                log_avg_ms = format_args!("{:.2}", ms(self.log) / self.txns as f64),
                commit_ms = format_args!("{:.1}", ms(self.commit)),
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

/// Answers a request the writer cannot serve with `msg`.
fn fail_request(r: Request, msg: &str) {
    let e = || Error::Backend(msg.to_string());
    match r {
        Request::Commit { reply, .. } => drop(reply.send(Err(e()))),
        Request::Compact { reply, .. } => drop(reply.send(Err(e()))),
        Request::Acquire { reply, .. } => drop(reply.send(Err(e()))),
        Request::Release { reply, .. } => drop(reply.send(Err(e()))),
    }
}

/// The tables of one write transaction.
struct Tables<'t> {
    objects: redb::Table<'t, &'static [u8], &'static [u8]>,
    changes: redb::Table<'t, &'static [u8], &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
    leases: redb::Table<'t, &'static str, &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(wtx: &'t redb::WriteTransaction) -> Result<Tables<'t>> {
        Ok(Tables {
            objects: wtx.open_table(OBJECTS).map_err(backend("failed to open objects table"))?,
            changes: wtx.open_table(CHANGES).map_err(backend("failed to open change log table"))?,
            meta: wtx.open_table(META).map_err(backend("failed to open meta table"))?,
            leases: wtx.open_table(LEASES).map_err(backend("failed to open leases table"))?,
        })
    }
}

/// Where a group commit failed.
enum Failure {
    /// Before the log append: nothing happened.
    Before(Error),
    /// The log append failed; it was cut back, nothing happened.
    Log(Error),
    /// The log record is durable, the tree commit failed.
    Tree(Error),
}

impl Writer {
    fn run(&mut self) {
        loop {
            if self.broken.is_some() && !self.repair() {
                // Still broken: answer what comes in with the failure for a while, then retry.
                let msg = self.broken.clone().unwrap_or_default();
                match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(r) => fail_request(r, &msg),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            let mut batch = Vec::new();
            let idle = !self.cleanup;
            if idle {
                // Nothing to do in the background: block for the next request (or until a
                // checkpoint is due).
                let r = if self.unpersisted {
                    let left = self.config.checkpoint_interval.saturating_sub(self.last_checkpoint.elapsed());
                    self.rx.recv_timeout(left)
                } else {
                    self.rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                };
                match r {
                    Ok(r) => batch.push(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.group_commit(Vec::new(), true);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.close();
                        return;
                    }
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
            let checkpoint = self.checkpoint_due();
            self.group_commit(batch, checkpoint);
            if disconnected {
                // Every queued request was answered. A compaction cleanup still running is
                // finished by the next open (its compaction point is already durable).
                self.close();
                return;
            }
        }
    }

    /// Whether the next group commit should also make the tree durable.
    fn checkpoint_due(&self) -> bool {
        let log = self.wal.as_ref().map_or(0, Wal::segment_len);
        log >= self.config.checkpoint_bytes
            || (self.unpersisted && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval)
    }

    /// On shutdown: a last checkpoint, so the next open has nothing to replay.
    fn close(&mut self) {
        if self.broken.is_none() && self.unpersisted {
            self.group_commit(Vec::new(), true);
        }
    }

    /// Reopens the database after a failure and replays the log into it. Returns whether
    /// the store works again; answers the parked requests when it does.
    fn repair(&mut self) -> bool {
        self.wal = None;
        let old = self.db.take().or_else(|| self.shared.db.write().ok().and_then(|mut g| g.take()));
        if let Ok(mut g) = self.shared.db.write() {
            g.take();
        }
        if let Some(old) = old {
            // Readers hold clones for the length of one read; redb locks the file, so the
            // old handle must be gone before the file can be opened again.
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut old = Some(old);
            while let Some(db) = old.take() {
                match Arc::try_unwrap(db) {
                    Ok(db) => drop(db),
                    Err(db) if Instant::now() < deadline => {
                        old = Some(db);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(db) => {
                        tracing::error!("readers still hold the failed store; retrying later");
                        self.db = Some(db);
                        return false;
                    }
                }
            }
        }
        let reopened = open_db(&self.shared.path, &self.config)
            .and_then(|db| recover(&db, &self.wal_dir).map(|rec| (db, rec)));
        match reopened {
            Ok((db, rec)) => {
                let db = Arc::new(db);
                if let Ok(mut g) = self.shared.db.write() {
                    *g = Some(db.clone());
                }
                tracing::warn!(
                    path = %self.shared.path.display(),
                    revision = rec.revision,
                    "store reopened and the write-ahead log replayed after a storage failure"
                );
                self.db = Some(db);
                self.wal = Some(rec.wal);
                self.revision = rec.revision;
                self.compacted = rec.compacted;
                self.cleanup = true;
                self.broken = None;
                self.unpersisted = false;
                self.last_checkpoint = Instant::now();
                self.publish();
                for r in std::mem::take(&mut self.parked) {
                    r.send(&mut self.compact_waiters);
                }
                true
            }
            Err(e) => {
                tracing::error!(path = %self.shared.path.display(), error = %e, "failed to reopen the store");
                false
            }
        }
    }

    /// Publishes the revision to commit watchers.
    fn publish(&self) {
        let revision = self.revision;
        self.shared.commits.send_if_modified(|v| {
            let changed = *v != revision;
            *v = revision;
            changed
        });
    }

    /// Applies `batch` (and one compaction chunk) in one write transaction: one log record
    /// made durable, then the tree commit (durable too when `checkpoint`).
    fn group_commit(&mut self, batch: Vec<Request>, checkpoint: bool) {
        let size = batch.len();
        let started = Instant::now();
        let mut committing = started;
        let mut logged_at = started;
        let mut replies = Vec::with_capacity(batch.len());
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut chunk_done = false;
        let mut logged = false;
        let mut committed = false;
        let outcome: std::result::Result<(), Failure> = (|| {
            let db =
                self.db.clone().ok_or_else(|| Failure::Before(Error::Backend("store is broken".into())))?;
            let wal =
                self.wal.as_mut().ok_or_else(|| Failure::Before(Error::Backend("store is broken".into())))?;
            let mut wtx = db
                .begin_write()
                .map_err(backend("failed to begin write transaction"))
                .map_err(Failure::Before)?;
            let durability = if checkpoint { Durability::Immediate } else { Durability::None };
            wtx.set_durability(durability)
                .map_err(backend("failed to set durability"))
                .map_err(Failure::Before)?;
            let mut rec = Record { seq: wal.next_seq(), ..Record::default() };
            {
                let mut t = Tables::open(&wtx).map_err(Failure::Before)?;
                for req in batch {
                    replies.push(
                        self.apply(&mut t, req, &mut revision, &mut compacted, &mut rec)
                            .map_err(Failure::Before)?,
                    );
                }
                logged = !rec.changes.is_empty() || !rec.leases.is_empty() || compacted != self.compacted;
                let mut meta = || -> Result<()> {
                    if revision != self.revision {
                        t.meta
                            .insert(META_CURRENT, revision)
                            .map_err(backend("failed to write meta table"))?;
                    }
                    if compacted != self.compacted {
                        t.meta
                            .insert(META_COMPACTED, compacted)
                            .map_err(backend("failed to write meta table"))?;
                    }
                    if logged {
                        t.meta
                            .insert(META_WAL_SEQ, rec.seq)
                            .map_err(backend("failed to write meta table"))?;
                    }
                    Ok(())
                };
                meta().map_err(Failure::Before)?;
                if self.cleanup || compacted != self.compacted {
                    chunk_done = self.compact_chunk(&mut t, compacted).map_err(Failure::Before)?;
                }
            }
            if !logged && !checkpoint && !self.cleanup && !chunk_done {
                // Nothing changed (failed preconditions, repeated compactions).
                drop(wtx.abort());
                return Ok(());
            }
            committing = Instant::now();
            if logged {
                rec.revision = revision;
                rec.compacted = compacted;
                let wal = self
                    .wal
                    .as_mut()
                    .ok_or_else(|| Failure::Before(Error::Backend("store is broken".into())))?;
                // The transaction is dropped (rolled back) if this fails.
                wal.append(&rec).map_err(Failure::Log)?;
                self.shared.wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
            logged_at = Instant::now();
            wtx.commit().map_err(backend("failed to commit write transaction")).map_err(Failure::Tree)?;
            committed = true;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                if committed {
                    self.shared.write_txns.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.record(size, committing - started, logged_at - committing, logged_at.elapsed());
                self.cleanup = !chunk_done && (self.cleanup || compacted != self.compacted);
                self.revision = revision;
                self.compacted = compacted;
                if checkpoint && committed {
                    self.unpersisted = false;
                    self.last_checkpoint = Instant::now();
                    if let Some(wal) = self.wal.as_mut() {
                        if let Err(e) = wal.rotate() {
                            tracing::warn!(error = %e, "failed to start a new write-ahead log segment after a checkpoint");
                        }
                    }
                } else if committed {
                    self.unpersisted = true;
                }
                self.publish();
                for r in replies {
                    r.send(&mut self.compact_waiters);
                }
                if chunk_done {
                    for (tx, v) in self.compact_waiters.drain(..) {
                        drop(tx.send(Ok(v)));
                    }
                }
            }
            Err(Failure::Tree(e)) if logged => {
                // The record is durable: the answers stand, once the tree has it again.
                tracing::error!(path = %self.shared.path.display(), error = %e, "redb commit failed after the log append; reopening");
                self.parked = replies;
                self.broken = Some(e.to_string());
                self.repair();
            }
            Err(failure) => {
                let redb_failed = !matches!(failure, Failure::Log(_));
                let (Failure::Before(e) | Failure::Log(e) | Failure::Tree(e)) = failure;
                let msg = match e {
                    Error::Backend(m) => m,
                    other => other.to_string(),
                };
                tracing::error!(path = %self.shared.path.display(), error = %msg, "group commit failed");
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
                // redb refuses every later operation after an I/O error: reopen it. A failed
                // log append leaves the tree untouched (the transaction was rolled back).
                if redb_failed {
                    self.broken = Some(msg);
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
        rec: &mut Record,
    ) -> Result<Reply> {
        Ok(match req {
            Request::Commit { txn, reply } => {
                let r = self.apply_txn(t, &txn, revision, rec)?;
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
                    rec.leases.push((name.clone(), raw));
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
                    rec.leases.push((name, raw));
                }
                Reply::Release(reply, Ok(()))
            }
        })
    }

    /// Plans and writes one transaction. The outer `Result` is a redb failure, the inner
    /// one the transaction's own answer.
    fn apply_txn(
        &self,
        t: &mut Tables<'_>,
        txn: &Txn,
        revision: &mut u64,
        rec: &mut Record,
    ) -> Result<Result<CommitResult>> {
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
            rec.changes.push(raw);
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
