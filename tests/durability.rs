//! `kill -9` of `capstan up` in the middle of a create loop: every create that was
//! answered 201 is there after a restart, and revisions never go backwards; the same at
//! random points of bursts of creates, 20 times, with torn write-ahead log tails; and a full
//! disk refuses writes with a Status and recovers when space returns.

mod common;

use capstan_bench::client::{Client, Kubeconfig};
use common::{wait_for, Cluster};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill9_loses_no_acknowledged_create() {
    let mut c = Cluster::start();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let kubeconfig = c.kubeconfig.clone();
    let cache = c.path().join("kube-cache-kill");
    let mut workers = Vec::new();
    for w in 0..4 {
        let acked = acked.clone();
        let stop = stop.clone();
        let kubeconfig = kubeconfig.clone();
        let cache = cache.join(w.to_string());
        workers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("cm-{w}-{i}");
                i += 1;
                let out = std::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .args([
                        "create",
                        "configmap",
                        &name,
                        "--from-literal=k=v",
                        "-o",
                        "jsonpath={.metadata.resourceVersion}",
                    ])
                    .output()
                    .expect("kubectl runs");
                if out.status.success() {
                    let rv: u64 =
                        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric resourceVersion");
                    acked.lock().unwrap().push((name, rv));
                }
            }
        }));
    }
    wait_for("20 acknowledged creates", Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= 20).then_some(())
    });
    c.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let acked = acked.lock().unwrap().clone();
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
    c.restart();
    let listed = c.ok(&[
        "get",
        "configmaps",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
    ]);
    let present: std::collections::HashMap<&str, u64> = listed
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, rv)| (n, rv.parse().unwrap_or(0)))
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            present.get(name.as_str()),
            Some(rv),
            "acknowledged create of {name} (rv {rv}) lost after kill -9"
        );
    }
    let rv_after: u64 = c
        .ok(&[
            "create",
            "configmap",
            "after-restart",
            "--from-literal=k=v",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("numeric resourceVersion");
    assert!(rv_after > max_rv, "revision went backwards: {rv_after} after {max_rv}");
    eprintln!("{} acknowledged creates survived kill -9; revision {max_rv} -> {rv_after}", acked.len());
}

/// A tiny xorshift generator, seeded from the clock (the seed is printed, so a failing run
/// can be repeated with `CAPSTAN_TEST_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed =
            std::env::var("CAPSTAN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("seed {seed} (CAPSTAN_TEST_SEED)");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

/// Every ConfigMap in `default`: name → resourceVersion.
fn list_configmaps(rt: &tokio::runtime::Runtime, client: &Client) -> HashMap<String, u64> {
    rt.block_on(async {
        let mut conn = client.open().await.expect("connect");
        let r = conn.request("GET", CMS, &[("Accept", "application/json")], b"").await.expect("list");
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = r.json().expect("JSON list");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                let name = o["metadata"]["name"].as_str()?.to_string();
                let rv = o["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
                Some((name, rv))
            })
            .collect()
    })
}

/// A burst of creates from 16 connections until `stop` (or the server dies): every 201 is
/// recorded with its resourceVersion.
async fn burst(client: Client, round: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<(String, u64)>>>) {
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = client.open().await else { return };
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("r{round}-{w}-{i}");
                i += 1;
                let body = serde_json::to_vec(&serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name}, "data": {"k": "v".repeat(200)},
                }))
                .unwrap_or_default();
                let ct = [("Content-Type", "application/json"), ("Accept", "application/json")];
                match conn.request("POST", CMS, &ct, &body).await {
                    Ok(r) if r.status == 201 => {
                        let v: Value = r.json().expect("JSON ConfigMap");
                        let rv = v["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok());
                        acked.lock().unwrap().push((name, rv.expect("numeric resourceVersion")));
                    }
                    // Refused (e.g. overload) or the server is gone.
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The newest segment of the store's write-ahead log.
fn newest_log_segment(data_dir: &Path) -> PathBuf {
    let log = capstan_storage::RedbStore::log_dir(&data_dir.join("state.redb"));
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&log)
        .expect("the write-ahead log directory")
        .map(|e| e.expect("entry").path())
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// `kill -9` at a random point of a burst of creates (16 connections), 20 times over one
/// data directory. After every restart each acknowledged create is there with its
/// resourceVersion, and later creates get higher revisions. Twice, a torn half record is
/// appended to the log's newest segment before the restart: the server says it truncated
/// the tail and starts. At the end, the store's change log holds every revision from its
/// compaction point up, without a gap, and each acknowledged create at its revision.
#[test]
fn kill9_at_random_points_of_bursts_loses_nothing() {
    let mut c = Cluster::start();
    let log = c.path().join("server.log");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut rng = Rng::new();
    let mut all: Vec<(String, u64)> = Vec::new();
    for round in 0..20 {
        let client = Client::new(&Kubeconfig::load(&c.kubeconfig).expect("kubeconfig")).expect("client");
        let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = rt.spawn(burst(client.clone(), round, stop.clone(), acked.clone()));
        // A random point: after 1 to 400 acknowledged creates of this round.
        let target = 1 + rng.below(400) as usize;
        wait_for("acknowledged creates", Duration::from_secs(60), || {
            (acked.lock().unwrap().len() >= target).then_some(())
        });
        c.kill9();
        stop.store(true, Ordering::SeqCst);
        rt.block_on(task).expect("burst");
        let acked = acked.lock().unwrap().clone();
        let before = all.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
        for (name, rv) in &acked {
            assert!(
                *rv > before,
                "round {round}: {name} got revision {rv}, not above {before} of an earlier round"
            );
        }
        all.extend(acked.iter().cloned());
        let torn = round == 6 || round == 13;
        if torn {
            let seg = newest_log_segment(c.path());
            let mut f = std::fs::OpenOptions::new().append(true).open(&seg).expect("open segment");
            // A header promising a 4 KiB record, then a few bytes of it.
            std::io::Write::write_all(&mut f, &[0, 0x10, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
                .expect("append");
            c.log_to(Some(&log));
        }
        c.restart();
        c.log_to(None);
        if torn {
            let text = std::fs::read_to_string(&log).expect("server log");
            assert!(
                text.contains("torn or corrupt tail; truncating it at the last whole record"),
                "no truncation line in the server log:\n{text}"
            );
        }
        let present = list_configmaps(&rt, &client);
        for (name, rv) in &all {
            assert_eq!(
                present.get(name),
                Some(rv),
                "round {round}: acknowledged create of {name} (rv {rv}) lost"
            );
        }
        eprintln!("round {round}: killed after {} acknowledged creates ({} in all)", acked.len(), all.len());
    }
    c.stop();
    // The store's own view, the server stopped.
    use capstan_storage::{ChangeKind, Store};
    let store = capstan_storage::RedbStore::open(&c.path().join("state.redb")).expect("open the store");
    let (changes, compacted, current) = rt.block_on(async {
        let compacted = store.compacted_revision().await.expect("compacted revision");
        let current = store.current_revision().await.expect("current revision");
        (store.changes(compacted, 0).await.expect("change log"), compacted, current)
    });
    let revs: Vec<u64> = changes.iter().map(|c| c.revision).collect();
    assert_eq!(revs, ((compacted + 1)..=current).collect::<Vec<_>>(), "the change log has a gap");
    let by_rev: HashMap<u64, &capstan_storage::Change> = changes.iter().map(|c| (c.revision, c)).collect();
    for (name, rv) in &all {
        if *rv <= compacted {
            continue;
        }
        let ch = by_rev.get(rv).expect("acknowledged revision in the change log");
        assert_eq!(ch.kind, ChangeKind::Create);
        assert!(ch.key.ends_with(format!("/default/{name}").as_bytes()), "revision {rv} is not {name}");
    }
    eprintln!(
        "{} acknowledged creates over 20 kills; change log {}..={current} without a gap",
        all.len(),
        compacted + 1
    );
}

/// A small tmpfs the test mounts (as root), unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `32m`); `None` when not root.
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = std::fs::read_to_string("/proc/self/status").ok()?.lines().find_map(|l| {
            l.strip_prefix("Uid:").map(|r| r.split_whitespace().next().unwrap_or("").to_string())
        })?;
        if uid != "0" {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("capstan-test-tmpfs-").tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "capstan-test"])
            .arg(dir.path())
            .status()
            .expect("run mount")
            .success();
        assert!(ok, "mount a tmpfs on {}", dir.path().display());
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// One create of a ConfigMap named `name` with ~1 KB of data: the status and the body.
fn create_cm(rt: &tokio::runtime::Runtime, client: &Client, name: &str) -> (u16, Value) {
    rt.block_on(async {
        let mut conn = client.open().await.expect("connect");
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name}, "data": {"k": "v".repeat(1000)},
        }))
        .unwrap_or_default();
        let ct = [("Content-Type", "application/json"), ("Accept", "application/json")];
        let r = conn.request("POST", CMS, &ct, &body).await.expect("create request");
        (r.status, r.json().unwrap_or(Value::Null))
    })
}

/// With the data directory's file system full, creates fail with a 500 Status that says
/// so (nothing half-written: the refused names are absent), the server stays up, and once
/// space returns creates work again; a restart afterwards finds every acknowledged create.
/// Needs root for the tmpfs it mounts; as another user it says so and checks nothing.
#[test]
fn full_disk_refuses_writes_and_recovers() {
    let Some(fs) = Tmpfs::mount("48m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let mut c = Cluster::start_in(fs.path(), &[]);
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let client = Client::new(&Kubeconfig::load(&c.kubeconfig).expect("kubeconfig")).expect("client");
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        let (status, body) = create_cm(&rt, &client, &name);
        assert_eq!(status, 201, "{body}");
        acked.push(name);
    }
    // Fill the file system.
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("create filler");
        let chunk = vec![0xa5u8; 1 << 20];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        let small = vec![0xa5u8; 4096];
        while std::io::Write::write_all(&mut f, &small).is_ok() {}
    }
    let mut refused = Vec::new();
    let mut n = 0;
    let body = wait_for("a create refused for lack of space", Duration::from_secs(60), || {
        n += 1;
        let name = format!("full-{n}");
        let (status, body) = create_cm(&rt, &client, &name);
        match status {
            201 => {
                acked.push(name);
                None
            }
            _ => {
                refused.push(name);
                Some((status, body))
            }
        }
    });
    let (status, body) = body;
    assert!(status == 500 || status == 507, "{status} {body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], status, "{body}");
    let msg = body["message"].as_str().unwrap_or("");
    assert!(msg.contains("No space left on device"), "{msg}");
    // Room again: creates work once more, without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let mut m = 0;
    wait_for("creates to work again", Duration::from_secs(60), || {
        m += 1;
        let name = format!("after-{m}");
        let (status, _) = create_cm(&rt, &client, &name);
        if status == 201 {
            acked.push(name);
            Some(())
        } else {
            refused.push(name);
            None
        }
    });
    let check = |c: &Cluster| {
        let present = list_configmaps(
            &rt,
            &Client::new(&Kubeconfig::load(&c.kubeconfig).expect("kubeconfig")).expect("client"),
        );
        for name in &acked {
            assert!(present.contains_key(name), "acknowledged create of {name} lost");
        }
        for name in &refused {
            assert!(!present.contains_key(name), "refused create of {name} is there");
        }
    };
    check(&c);
    c.restart();
    check(&c);
    eprintln!("{} creates acknowledged, {} refused while the disk was full", acked.len(), refused.len());
}
