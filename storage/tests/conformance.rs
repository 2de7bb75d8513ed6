//! Runs the storage conformance suite (`capstan_storage::conformance`), one test per case,
//! against a fresh redb store in a temporary directory, plus a few redb-only tests
//! (restart, group commit, close).
//!
//! Against FoundationDB as well (needs `libfdb_c` and a running cluster; every case runs in
//! a fresh, unique key prefix):
//!
//! ```text
//! CAPSTAN_FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster cargo test -p capstan-storage --features fdb --test conformance
//! ```
//!
//! Without the variable the `fdb_*` tests pass without doing anything.

use capstan_storage::{conformance, Error, Op, Precondition, RedbConfig, RedbStore, Store, Txn};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "capstan-storage-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("nested").join("store.redb")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path).expect("open redb store")
}

macro_rules! conformance_tests {
    ($($name:ident),* $(,)?) => {
        mod redb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = TempDir::new(stringify!($name));
                    let store = open(&dir.file());
                    conformance::$name(&store).await;
                }
            )*
        }

        #[cfg(feature = "fdb")]
        mod fdb {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(store) = fdb_support::fresh_store(stringify!($name)) else {
                        return;
                    };
                    conformance::$name(&store).await;
                    fdb_support::cleanup(&store).await;
                }
            )*
        }

        /// Every case of the suite has a test here.
        #[test]
        fn every_case_has_a_test() {
            let here: Vec<&str> = vec![$(stringify!($name)),*];
            let suite: Vec<&str> = conformance::CASES.iter().map(|(n, _)| *n).collect();
            assert_eq!(here, suite);
        }
    };
}

conformance_tests!(
    empty_store,
    crud,
    delete_absent_key,
    preconditions,
    all_or_nothing,
    ops_see_earlier_ops,
    revision_order,
    range_limit_and_more,
    range_snapshot,
    change_log,
    delete_records_final_value,
    compaction,
    leases,
    lease_expiry_takeover,
    concurrent_cas_increments,
    concurrent_updates,
    many_concurrent_commits,
    subscribe_commits,
);

#[cfg(feature = "fdb")]
mod fdb_support {
    use capstan_storage::FdbStore;

    /// A store in a fresh, unique prefix, or `None` when no cluster is configured.
    pub fn fresh_store(case: &str) -> Option<FdbStore> {
        let cluster = std::env::var_os("CAPSTAN_FDB_CLUSTER_FILE")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("capstan-test/{}/{nanos}/{case}/", std::process::id());
        Some(FdbStore::open(Some(std::path::Path::new(&cluster)), prefix.as_bytes()).expect("open fdb store"))
    }

    /// Removes the case's prefix.
    pub async fn cleanup(store: &FdbStore) {
        store.clear_prefix().await.expect("clear test prefix");
    }
}

/// `run_all` runs every case on fresh stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_redb() {
    let dir = TempDir::new("run_all");
    let n = AtomicU64::new(0);
    let root = dir.0.clone();
    conformance::run_all(|| {
        let path = root.join(format!("{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        Box::new(open(&path)) as Box<dyn Store>
    })
    .await;
}

/// Objects, the revision counter, the change log, the compaction point and leases survive
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_state_survives_reopen() {
    let dir = TempDir::new("reopen");
    let path = dir.file();
    let lease;
    {
        let s = open(&path);
        for i in 0..5 {
            let op = Op::put(format!("/k{i}").into_bytes(), b"v".to_vec(), Precondition::None);
            s.commit(Txn::single(op)).await.unwrap();
        }
        assert_eq!(s.compact(3).await.unwrap(), 2);
        lease = s.acquire_lease("l", "a", std::time::Duration::from_secs(60)).await.unwrap();
        // Opening the same file twice in one process fails cleanly.
        match RedbStore::open(&path) {
            Err(Error::Backend(msg)) => {
                assert!(msg.starts_with("failed to open redb file"), "{msg}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened the same file twice"),
        }
    }
    let s = open(&path);
    assert_eq!(s.current_revision().await.unwrap(), 5);
    assert_eq!(*s.subscribe_commits().borrow(), 5);
    assert_eq!(s.compacted_revision().await.unwrap(), 2);
    assert!(matches!(s.changes(1, 0).await, Err(Error::Compacted { .. })));
    assert_eq!(s.changes(2, 0).await.unwrap().len(), 3);
    assert_eq!(s.get(b"/k4").await.unwrap().unwrap().mod_revision, 5);
    assert_eq!(s.get_lease("l").await.unwrap(), Some(lease));
    let r = s.commit(Txn::single(Op::put(b"/k9".to_vec(), b"v".to_vec(), Precondition::None))).await.unwrap();
    assert_eq!(r.revisions, vec![6]);
}

/// Many concurrent committers share write transactions (fsyncs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_group_commit_shares_fsyncs() {
    let dir = TempDir::new("group");
    let s = open(&dir.file());
    let before = s.write_transactions();
    let n = 500u64;
    let results = futures::future::join_all((0..n).map(|i| {
        let op = Op::put(format!("/g/{i}").into_bytes(), b"v".to_vec(), Precondition::Absent);
        s.commit(Txn::single(op))
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    let txns = s.write_transactions() - before;
    eprintln!("{n} concurrent commits used {txns} write transactions");
    assert!(txns < n / 2, "{n} concurrent commits took {txns} write transactions");
}

/// Compaction in small chunks removes every old entry and keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_chunked_compaction() {
    let dir = TempDir::new("chunks");
    let config = RedbConfig { compact_chunk: 7, ..RedbConfig::default() };
    let s = RedbStore::open_with(&dir.file(), config).unwrap();
    let ops = (0..100).map(|i| Op::put(format!("/c/{i}").into_bytes(), b"v".to_vec(), Precondition::None));
    s.commit(Txn { ops: ops.collect() }).await.unwrap();
    let before = s.write_transactions();
    assert_eq!(s.compact(91).await.unwrap(), 90);
    assert!(s.write_transactions() - before >= 90 / 7, "compaction ran in chunks");
    let ch = s.changes(90, 0).await.unwrap();
    assert_eq!(ch.first().map(|c| c.revision), Some(91));
    assert_eq!(ch.len(), 10);
}

/// A closed store answers `Closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_closed_store() {
    let dir = TempDir::new("closed");
    let s = open(&dir.file());
    s.commit(Txn::single(Op::put(b"/a".to_vec(), b"v".to_vec(), Precondition::None))).await.unwrap();
    s.close();
    assert!(matches!(s.get(b"/a").await, Err(Error::Closed)));
    let r = s.commit(Txn::single(Op::put(b"/b".to_vec(), b"v".to_vec(), Precondition::None))).await;
    assert!(matches!(r, Err(Error::Closed)));
    assert!(matches!(s.acquire_lease("l", "h", std::time::Duration::from_secs(1)).await, Err(Error::Closed)));
    drop(s);
    // The file is free again once the store is closed.
    let s = open(&dir.file());
    assert!(s.get(b"/a").await.unwrap().is_some());
}

/// `kill -9` of a process committing in a loop, five times over the same store, with
/// checkpoints (and log segment rotations) every few hundred commits: after each restart
/// every acknowledged commit is there and the change log holds every revision from 1 up,
/// without a gap. Every other round a torn, half-written record is appended to the newest
/// log segment first: it is cut off on open.
#[test]
fn redb_acknowledged_commits_survive_kill_9() {
    use std::io::BufRead;
    let dir = TempDir::new("kill");
    let path = dir.file();
    let mut acked = Vec::new();
    for round in 0..5 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_9_child", "--nocapture", "--test-threads=1"])
            .env("CAPSTAN_KILL_CHILD_STORE", &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let want = acked.len() + 150 + 70 * round;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(rev) = line.strip_prefix("acked ") {
                acked.push(rev.parse::<u64>().unwrap());
                if acked.len() == want {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        assert_eq!(acked.len(), want, "child acknowledged commits");
        if round % 2 == 1 {
            let log = RedbStore::log_dir(&path);
            let mut segs: Vec<_> = std::fs::read_dir(&log).unwrap().map(|e| e.unwrap().path()).collect();
            segs.sort();
            let newest = segs.last().expect("a log segment");
            let mut f = std::fs::OpenOptions::new().append(true).open(newest).unwrap();
            // A record header promising 4 KiB, followed by only part of it.
            std::io::Write::write_all(&mut f, &[0x00, 0x10, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = open(&path);
            let cur = s.current_revision().await.unwrap();
            assert!(cur >= *acked.iter().max().unwrap());
            for rev in &acked {
                let kv = s.get(format!("/kill/{rev}").as_bytes()).await.unwrap();
                assert_eq!(kv.map(|kv| kv.mod_revision), Some(*rev), "acknowledged revision {rev} lost");
            }
            let log: Vec<u64> = s.changes(0, 0).await.unwrap().iter().map(|c| c.revision).collect();
            assert_eq!(log, (1..=cur).collect::<Vec<_>>(), "the change log has a gap");
        });
    }
}

/// The child half of `redb_acknowledged_commits_survive_kill_9`: commits until killed.
#[test]
fn kill_9_child() {
    let Some(path) = std::env::var_os("CAPSTAN_KILL_CHILD_STORE") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Checkpoints every 64 KiB of log: several per round.
        let config = RedbConfig { checkpoint_bytes: 64 << 10, ..RedbConfig::default() };
        let s = RedbStore::open_with(Path::new(&path), config).unwrap();
        // Keys are named after the revision they will get: one committer, in order.
        let mut next = s.current_revision().await.unwrap() + 1;
        loop {
            let op = Op::put(format!("/kill/{next}").into_bytes(), vec![7; 512], Precondition::Absent);
            let r = s.commit(Txn::single(op)).await.unwrap();
            assert_eq!(r.revisions[0], next);
            println!("acked {next}");
            next += 1;
        }
    });
}
