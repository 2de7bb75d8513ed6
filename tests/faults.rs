//! The fault harness: concurrent writers (creates, updates and deletes with
//! resourceVersion preconditions) and HTTP watchers that resume, while `capstan up` is
//! killed with SIGKILL and restarted, or paused with SIGSTOP beyond its clients' patience;
//! or, under the multi-process roles, while nats-server is killed and restarted (once with
//! its JetStream store lost), with a bus subscriber watching too and Deployments that must
//! converge on simulated nodes. Afterwards a checker compares everything with the store's durable change log, read from
//! the data directory once the server is stopped:
//!
//! - the change log's revisions only grow;
//! - every acknowledged create and update is in it, with the revision its answer gave, and
//!   every acknowledged delete is;
//! - every watcher's events, between (re)starts, are consecutive entries of the change log:
//!   nothing lost, nothing twice, nothing out of order, also across a resume from the last
//!   revision seen (or a 410 and a relist);
//! - every object ends as its writer last wrote it.
//!
//! `CAPSTAN_FAULT_SECONDS` (default 60) is how long faults go on; `CAPSTAN_FAULT_SEED`
//! replays a run (the seed is printed; the NATS test's schedule too). A long run:
//! `CAPSTAN_FAULT_SECONDS=1800 cargo test --test faults kills_and_pauses -- --nocapture`.

mod common;

use capstan_bench::client::{Client, Connection, Kubeconfig};
use common::Cluster;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "faults";
const CMS: &str = "/api/v1/namespaces/faults/configmaps";

/// A small deterministic generator (xorshift64*), enough to make a run replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A write the server answered with success.
#[derive(Debug, Clone)]
enum Ack {
    Created { name: String, rv: u64 },
    Updated { name: String, rv: u64 },
    Deleted { name: String, after: u64 },
}

/// What a watcher saw: a (re)start from a revision, or an event.
#[derive(Debug, Clone)]
enum Seen {
    /// A (re)start of the watch from this revision.
    Start(u64),
    /// A relist after 410 Gone: the state at this revision replaces the events up to it.
    Relist(u64),
    Event {
        kind: String,
        name: String,
        rv: u64,
    },
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn connect(client: &Client, stop: &AtomicBool) -> Option<Connection> {
    loop {
        if let Ok(c) = client.open().await {
            return Some(c);
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // the server is down: retry pacing
    }
}

/// One request; `None` when the connection failed (the outcome is unknown).
async fn call(
    conn: &mut Option<Connection>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Value)> {
    let c = conn.as_mut()?;
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default()).unwrap_or_default();
    let headers = [("Content-Type", "application/json"), ("Accept", "application/json")];
    let r = tokio::time::timeout(Duration::from_secs(10), c.request(method, path, &headers, &bytes)).await;
    match r {
        Ok(Ok(resp)) => Some((resp.status, resp.json().unwrap_or(Value::Null))),
        _ => {
            *conn = None;
            None
        }
    }
}

/// The writer's view of its objects: name → (resourceVersion, value).
type Objects = BTreeMap<String, (u64, u64)>;

/// What a writer ends with: its objects, writes of unknown outcome, writes found applied
/// after it gave up, and the value the last unknown write on each name would leave.
type WriterEnd = (Objects, usize, usize, Vec<(String, Option<u64>)>);

async fn writer(
    id: usize,
    client: Client,
    seed: u64,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> WriterEnd {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut objects: Objects = BTreeMap::new();
    let mut next = 0u64;
    let mut uncertain = 0usize;
    let mut conn: Option<Connection> = None;
    // Names whose last write's outcome is unknown: read back before anything else.
    let mut unsure: Vec<String> = Vec::new();
    // Names that ever had a write of unknown outcome. Such a write can still be applied
    // later (the server reads it from the dropped connection after a pause), so a conflict
    // on one of these only means the writer's knowledge was stale: it reads it back. On
    // any other name a conflict would be a lost or phantom write, and fails the run.
    let mut ever_unsure: std::collections::HashSet<String> = Default::default();
    let mut late = 0usize;
    // What the last write of unknown outcome on each name would have left: a value, or
    // nothing (a delete).
    let mut attempted: HashMap<String, Option<u64>> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            conn = connect(&client, &stop).await;
            if conn.is_none() {
                break;
            }
        }
        if let Some(name) = unsure.last().cloned() {
            ever_unsure.insert(name.clone());
            match call(&mut conn, "GET", &format!("{CMS}/{name}"), None).await {
                Some((200, obj)) => {
                    let v = obj["data"]["v"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    objects.insert(name, (rv_of(&obj), v));
                    unsure.pop();
                }
                Some((404, _)) => {
                    objects.remove(&name);
                    unsure.pop();
                }
                _ => {}
            }
            continue;
        }
        let choice = rng.below(10);
        let existing: Vec<String> = objects.keys().cloned().collect();
        if existing.is_empty() || choice < 4 {
            let name = format!("w{id}-{next}");
            next += 1;
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": "0"}});
            match call(&mut conn, "POST", CMS, Some(&body)).await {
                Some((201, obj)) => {
                    objects.insert(name.clone(), (rv_of(&obj), 0));
                    acks.lock().unwrap().push(Ack::Created { name, rv: rv_of(&obj) });
                }
                Some((code, _)) if code >= 500 || code == 429 => {
                    uncertain += 1;
                    attempted.insert(name.clone(), Some(0));
                    unsure.push(name);
                }
                Some((409, _)) if ever_unsure.contains(&name) => {
                    late += 1;
                    unsure.push(name);
                }
                Some((code, obj)) => panic!("create {name}: {code} {obj}"),
                None => {
                    uncertain += 1;
                    attempted.insert(name.clone(), Some(0));
                    unsure.push(name);
                }
            }
        } else {
            let name = existing[rng.below(existing.len() as u64) as usize].clone();
            let (rv, v) = objects[&name];
            if choice < 8 {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "resourceVersion": rv.to_string()}, "data": {"v": (v + 1).to_string()}});
                match call(&mut conn, "PUT", &format!("{CMS}/{name}"), Some(&body)).await {
                    Some((200, obj)) => {
                        objects.insert(name.clone(), (rv_of(&obj), v + 1));
                        acks.lock().unwrap().push(Ack::Updated { name, rv: rv_of(&obj) });
                    }
                    Some((code, _)) if code >= 500 || code == 429 => {
                        uncertain += 1;
                        attempted.insert(name.clone(), Some(v + 1));
                        unsure.push(name);
                    }
                    Some((404 | 409, _)) if ever_unsure.contains(&name) => {
                        late += 1;
                        unsure.push(name);
                    }
                    Some((code, obj)) => panic!("update {name} at {rv}: {code} {obj}"),
                    None => {
                        uncertain += 1;
                        attempted.insert(name.clone(), Some(v + 1));
                        unsure.push(name);
                    }
                }
            } else {
                let body = json!({"preconditions": {"resourceVersion": rv.to_string()}});
                match call(&mut conn, "DELETE", &format!("{CMS}/{name}"), Some(&body)).await {
                    Some((200, _)) => {
                        objects.remove(&name);
                        acks.lock().unwrap().push(Ack::Deleted { name, after: rv });
                    }
                    Some((code, _)) if code >= 500 || code == 429 => {
                        uncertain += 1;
                        attempted.insert(name.clone(), None);
                        unsure.push(name);
                    }
                    Some((404 | 409, _)) if ever_unsure.contains(&name) => {
                        late += 1;
                        unsure.push(name);
                    }
                    Some((code, obj)) => panic!("delete {name} at {rv}: {code} {obj}"),
                    None => {
                        uncertain += 1;
                        attempted.insert(name.clone(), None);
                        unsure.push(name);
                    }
                }
            }
        }
    }
    // Settle what is still unknown, now that the server stays up.
    while let Some(name) = unsure.pop() {
        loop {
            if conn.is_none() {
                conn = connect(&client, &AtomicBool::new(false)).await;
            }
            match call(&mut conn, "GET", &format!("{CMS}/{name}"), None).await {
                Some((200, obj)) => {
                    let v = obj["data"]["v"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    objects.insert(name, (rv_of(&obj), v));
                    break;
                }
                Some((404, _)) => {
                    objects.remove(&name);
                    break;
                }
                _ => {}
            }
        }
    }
    (objects, uncertain, late, attempted.into_iter().collect())
}

/// Follows the ConfigMaps from `from`, resuming after every disconnect from the last
/// revision seen (relisting after a 410), until it has caught up with `until` once that is
/// set.
async fn watcher(client: Client, from: u64, until: Arc<Mutex<Option<u64>>>) -> (Vec<Seen>, usize, usize) {
    let mut seen = Vec::new();
    let mut last = from;
    let (mut resumes, mut relists) = (0usize, 0usize);
    'outer: loop {
        let caught_up = |last: u64| until.lock().unwrap().is_some_and(|u| last >= u);
        if caught_up(last) {
            break;
        }
        // A watcher keeps trying until it has caught up: the server is up again soon.
        let Some(conn) = connect(&client, &AtomicBool::new(false)).await else { continue };
        seen.push(Seen::Start(last));
        let path =
            format!("{CMS}?watch=true&allowWatchBookmarks=true&resourceVersion={last}&timeoutSeconds=20");
        let Ok(mut stream) = conn.stream("GET", &path, &[("Accept", "application/json")], b"").await else {
            resumes += 1;
            continue;
        };
        if stream.status != 200 {
            resumes += 1;
            continue;
        }
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), stream.next_line()).await;
            let Ok(Ok(Some(line))) = line else {
                resumes += 1;
                continue 'outer;
            };
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
            let kind = ev["type"].as_str().unwrap_or("").to_string();
            match kind.as_str() {
                "BOOKMARK" => last = last.max(rv_of(&ev["object"])),
                "ERROR" => {
                    assert_eq!(ev["object"]["code"], 410, "a watch error other than 410: {ev}");
                    // Compacted: relist and go on from the list's revision.
                    let mut conn = connect(&client, &AtomicBool::new(false)).await;
                    let Some((200, list)) = call(&mut conn, "GET", CMS, None).await else { continue 'outer };
                    relists += 1;
                    last = rv_of(&list);
                    // Recorded even when it reaches past the fence (the watcher is then
                    // done): the events up to it were replaced by the list, not lost.
                    seen.push(Seen::Relist(last));
                    continue 'outer;
                }
                _ => {
                    let rv = rv_of(&ev["object"]);
                    let name = ev["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                    seen.push(Seen::Event { kind, name, rv });
                    last = rv;
                }
            }
            if caught_up(last) {
                break 'outer;
            }
        }
    }
    (seen, resumes, relists)
}

/// The store's own change log of the test's ConfigMaps from `from` to `to` (the server
/// stopped): what every acknowledged write and every watch must agree with.
fn history(data_dir: &std::path::Path, from: u64, to: u64) -> Vec<(String, String, u64)> {
    use capstan_storage::{ChangeKind, Store};
    let store = capstan_storage::RedbStore::open(&data_dir.join("state.redb")).expect("open the store");
    let prefix = format!("/registry/core/configmaps/{NS}/");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut out = Vec::new();
    let mut after = from;
    while after < to {
        let changes = rt.block_on(store.changes(after, 10_000)).expect("read the change log");
        assert!(!changes.is_empty(), "the change log ends at {after}, before the fence at {to}");
        for c in changes {
            after = c.revision;
            if c.revision > to {
                break;
            }
            let Some(name) = c.key.strip_prefix(prefix.as_bytes()) else { continue };
            let kind = match c.kind {
                ChangeKind::Create => "ADDED",
                ChangeKind::Update => "MODIFIED",
                ChangeKind::Delete => "DELETED",
            };
            out.push((kind.to_string(), String::from_utf8_lossy(name).into_owned(), c.revision));
        }
    }
    out
}

/// The seed of a run: `CAPSTAN_FAULT_SEED`, or one from the clock (printed either way).
fn seed() -> u64 {
    std::env::var("CAPSTAN_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    })
}

/// Four writers and two HTTP watchers of the ConfigMaps of [`NS`], running while a test
/// makes faults; [`Workload::check`] stops them and checks the history.
struct Workload {
    rt: tokio::runtime::Runtime,
    client: Client,
    start: u64,
    stop: Arc<AtomicBool>,
    until: Arc<Mutex<Option<u64>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    writers: Vec<tokio::task::JoinHandle<WriterEnd>>,
    watchers: Vec<tokio::task::JoinHandle<(Vec<Seen>, usize, usize)>>,
}

/// What a checked run did.
struct Checked {
    acked: usize,
    summary: String,
}

impl Workload {
    /// Creates [`NS`] and starts the writers and watchers (from the namespace's state now).
    fn start(c: &Cluster, seed: u64) -> Workload {
        c.ok(&["create", "namespace", NS]);
        let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
        let client = Client::new(&kc).expect("client");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let start = rt.block_on(async {
            let mut conn = Some(client.open().await.expect("connect"));
            let (code, list) = call(&mut conn, "GET", CMS, None).await.expect("list");
            assert_eq!(code, 200);
            rv_of(&list)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let until: Arc<Mutex<Option<u64>>> = Arc::default();
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let writers =
            (0..4).map(|w| rt.spawn(writer(w, client.clone(), seed, stop.clone(), acks.clone()))).collect();
        let watchers = (0..2).map(|_| rt.spawn(watcher(client.clone(), start, until.clone()))).collect();
        Workload { rt, client, start, stop, until, acks, writers, watchers }
    }

    /// Stops the writers, writes a fence, waits for the watchers to reach it, stops the
    /// server (`kill -9` of `capstan up` or of the gateway) and checks everything against
    /// the store's change log.
    fn check(self, c: &mut Cluster) -> Checked {
        let Workload { rt, client, start, stop, until, acks, writers, watchers } = self;
        stop.store(true, Ordering::SeqCst);
        let results: Vec<WriterEnd> = rt.block_on(async {
            futures::future::join_all(writers).await.into_iter().map(|r| r.expect("writer")).collect()
        });
        // A fence: one more write once the writers are done. Everything before it is in the
        // change log up to its revision; the watchers are done when they have seen it.
        let fence = rt.block_on(async {
            let mut conn = Some(client.open().await.expect("connect"));
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fence"}});
            let (code, obj) = call(&mut conn, "POST", CMS, Some(&body)).await.expect("create the fence");
            assert_eq!(code, 201, "{obj}");
            rv_of(&obj)
        });
        let acked = acks.lock().unwrap().clone();
        *until.lock().unwrap() = Some(fence);
        let seen: Vec<(Vec<Seen>, usize, usize)> = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(watchers))
                .await
                .expect("watchers catch up within 2 minutes")
                .into_iter()
                .map(|r| r.expect("watcher"))
                .collect()
        });

        let finals = rt.block_on(async {
            let mut conn = Some(client.open().await.expect("connect"));
            let (_, list) = call(&mut conn, "GET", CMS, None).await.expect("list");
            list["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|o| {
                    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
                    let v: u64 = o["data"]["v"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                    (name, (rv_of(&o), v))
                })
                // Only the writers' objects (not the fence, not kube-root-ca.crt).
                .filter(|(name, _)| name.starts_with('w'))
                .collect::<BTreeMap<_, _>>()
        });
        c.kill9();
        let log = history(c.path(), start, fence);
        // 1. The change log only grows.
        for w in log.windows(2) {
            assert!(w[0].2 < w[1].2, "change log out of order: {:?} then {:?}", w[0], w[1]);
        }
        let index: HashMap<u64, usize> = log.iter().enumerate().map(|(i, e)| (e.2, i)).collect();
        // 2. Every acknowledged write is there.
        for a in &acked {
            match a {
                Ack::Created { name, rv } | Ack::Updated { name, rv } => {
                    let want = if matches!(a, Ack::Created { .. }) { "ADDED" } else { "MODIFIED" };
                    let i = index
                        .get(rv)
                        .unwrap_or_else(|| panic!("acknowledged {a:?} is not in the change log"));
                    assert_eq!((log[*i].0.as_str(), &log[*i].1), (want, name), "revision {rv} of {a:?}");
                }
                Ack::Deleted { name, after } => {
                    assert!(
                        log.iter().any(|(k, n, rv)| k == "DELETED" && n == name && rv > after),
                        "acknowledged {a:?} is not in the change log"
                    );
                }
            }
        }
        // 3. Each watcher's events are consecutive entries of the change log.
        let mut events = 0;
        let ended_on_relist =
            seen.iter().filter(|(list, _, _)| matches!(list.last(), Some(Seen::Relist(_)))).count();
        for (w, (list, _, _)) in seen.iter().enumerate() {
            let mut expect: Option<usize> = None;
            for s in list {
                match s {
                    Seen::Start(r) | Seen::Relist(r) => expect = Some(log.partition_point(|e| e.2 <= *r)),
                    Seen::Event { kind, name, rv } => {
                        let i = expect.unwrap_or(0);
                        let want = log
                            .get(i)
                            .unwrap_or_else(|| panic!("watcher {w} saw {s:?} past the end of the log"));
                        assert_eq!(
                            (kind.as_str(), name.as_str(), *rv),
                            (want.0.as_str(), want.1.as_str(), want.2),
                            "watcher {w}: lost, repeated or reordered event"
                        );
                        expect = Some(i + 1);
                        events += 1;
                    }
                }
            }
            assert_eq!(
                expect,
                Some(log.len()),
                "watcher {w} did not reach the end of the log: it ended with {:?}; the log ends with {:?}",
                &list[list.len().saturating_sub(4)..],
                &log[log.len().saturating_sub(4)..]
            );
        }
        // 4. Objects end as their writers last wrote them.
        let mut expected = BTreeMap::new();
        let (mut uncertain, mut late) = (0, 0);
        for (objects, u, l, _) in &results {
            expected.extend(objects.clone());
            uncertain += u;
            late += l;
        }
        // A write whose client gave up may have been applied after the writer read the name
        // back (the server read it from the dropped connection after a pause). Such a name may
        // end as that write left it, and only so: its value is the one that write carried (or
        // gone, for a delete). It is in the change log like any other write (checks 1 to 3).
        let mut applied_late = 0;
        for (_, _, _, attempts) in &results {
            for (name, value) in attempts {
                let now = finals.get(name).copied();
                if expected.get(name).copied() != now && now.map(|(_, v)| v) == *value {
                    applied_late += 1;
                    match now {
                        Some(v) => expected.insert(name.clone(), v),
                        None => expected.remove(name),
                    };
                }
            }
        }
        late += applied_late;
        let differ: Vec<_> = finals
            .keys()
            .chain(expected.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| finals.get(*k) != expected.get(*k))
            .map(|k| format!("{k}: stored {:?}, written {:?}", finals.get(k), expected.get(k)))
            .collect();
        assert!(
            differ.is_empty(),
            "objects differ from what their writers last wrote (resourceVersion, value):\n{}",
            differ.join("\n")
        );
        let (resumes, relists): (usize, usize) = seen.iter().fold((0, 0), |a, s| (a.0 + s.1, a.1 + s.2));
        let summary = format!(
            "{} acknowledged writes, {uncertain} with unknown outcome ({late} applied after their client gave up); \
             change log {} entries; {events} watch events checked over {resumes} resumes and {relists} relists \
             ({ended_on_relist} watchers ended on one); 0 lost, 0 duplicated, 0 out of order",
            acked.len(),
            log.len()
        );
        Checked { acked: acked.len(), summary }
    }
}

#[test]
fn kills_and_pauses_lose_no_acknowledged_write_and_no_watch_event() {
    let seed = seed();
    let seconds: u64 = std::env::var("CAPSTAN_FAULT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    println!("fault run: CAPSTAN_FAULT_SEED={seed} CAPSTAN_FAULT_SECONDS={seconds}");
    let mut c = Cluster::start();
    let work = Workload::start(&c, seed);

    // Faults, on this thread (it owns the server process).
    let mut rng = Rng(seed);
    let (mut kills, mut pauses) = (0, 0);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2000 + rng.below(4000))); // time between faults
        if rng.below(3) < 2 {
            c.kill9();
            std::thread::sleep(Duration::from_millis(rng.below(1000))); // time the server stays down
            c.restart();
            kills += 1;
        } else {
            let pid = c.pid().to_string();
            let _ = std::process::Command::new("kill").args(["-STOP", &pid]).status();
            // Longer than the clients' 10 s request timeout some of the time.
            std::thread::sleep(Duration::from_millis(2000 + rng.below(10_000))); // the pause itself
            let _ = std::process::Command::new("kill").args(["-CONT", &pid]).status();
            pauses += 1;
        }
    }
    let checked = work.check(&mut c);
    println!("fault run (seed {seed}): {kills} kills, {pauses} pauses; {}", checked.summary);
    assert!(checked.acked > 50 && kills > 0, "the run did too little to mean anything");
}

/// A bus subscriber of the ConfigMaps of [`NS`], as docs/BUS.md tells integrators to write
/// one: it follows the event stream from `from`; on a [`capstan_bus::StreamItem::Gap`] it
/// relists over HTTP and goes on with the events after the list; when the stream ends it
/// subscribes again after the last revision seen. Its record is checked as an HTTP
/// watcher's.
async fn bus_watcher(
    url: String,
    client: Client,
    from: u64,
    until: Arc<Mutex<Option<u64>>>,
) -> (Vec<Seen>, usize, usize) {
    use capstan_bus::{Bus, EventEnvelope, StartAt, StreamItem};
    use futures::StreamExt;
    let bus =
        capstan_bus::NatsBus::connect(capstan_bus::NatsConfig::new(&url)).await.expect("connect to nats");
    let filter = format!("capstan.v1.events.core.configmaps.{NS}.>");
    let (mut seen, mut last, mut floor) = (Vec::new(), from, from);
    let (mut resumes, mut relists) = (0usize, 0usize);
    loop {
        let caught_up = |last: u64| until.lock().unwrap().is_some_and(|u| last >= u);
        if caught_up(last) {
            break;
        }
        let Ok(mut stream) = bus.events(filter.clone(), StartAt::AfterRevision(last)).await else {
            resumes += 1;
            tokio::time::sleep(Duration::from_millis(200)).await; // NATS is down: retry pacing
            continue;
        };
        seen.push(Seen::Start(last));
        loop {
            // The stream may stay quiet for long (no writes after the fence): look at the
            // fence now and then.
            let item = match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
                Ok(item) => item,
                Err(_) if caught_up(last) => break,
                Err(_) => continue,
            };
            match item {
                Some(StreamItem::Event { payload, revision, .. }) => {
                    if revision <= floor {
                        continue; // before the relist that replaced it
                    }
                    let env = EventEnvelope::from_bytes(&payload).expect("an event envelope");
                    let name = env.object["metadata"]["name"].as_str().unwrap_or("").to_string();
                    seen.push(Seen::Event { kind: env.type_, name, rv: revision });
                    last = revision;
                }
                Some(StreamItem::Gap) => {
                    let mut conn = connect(&client, &AtomicBool::new(false)).await;
                    let Some((200, list)) = call(&mut conn, "GET", CMS, None).await else { continue };
                    relists += 1;
                    last = rv_of(&list).max(last);
                    floor = last;
                    seen.push(Seen::Relist(last));
                }
                None => {
                    resumes += 1;
                    break;
                }
            }
            if caught_up(last) {
                break;
            }
        }
    }
    (seen, resumes, relists)
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: c, image: busybox}}]
"#
    )
}

/// The Deployment `name` has `replicas` ready replicas, and exactly that many of its pods
/// exist, all Running on a node.
fn converged(c: &Cluster, name: &str, replicas: usize) -> bool {
    let ready = c.kubectl(&["get", "deployment", name, "-n", NS, "-o", "jsonpath={.status.readyReplicas}"]);
    if String::from_utf8_lossy(&ready.stdout) != replicas.to_string() {
        return false;
    }
    let out = c.kubectl(&["get", "pods", "-n", NS, "-l", &format!("app={name}"), "-o", "json"]);
    let Ok(pods) = serde_json::from_slice::<Value>(&out.stdout) else { return false };
    let pods = pods["items"].as_array().cloned().unwrap_or_default();
    pods.len() == replicas
        && pods.iter().all(|p| p["status"]["phase"] == "Running" && p["spec"]["nodeName"].is_string())
}

/// NATS faults: nats-server is killed with SIGKILL and restarted `CAPSTAN_NATS_FAULTS`
/// times (default 3; every third, from the second, with its JetStream store removed) under a multi-process cluster (gateway, controllers,
/// scheduler, two simulated nodes, each its own process) while the writers write, two
/// HTTP watchers and a bus subscriber watch, and a Deployment is scaled. Afterwards: the
/// HTTP watchers and the bus subscriber lost nothing (the checker of
/// [`kills_and_pauses_lose_no_acknowledged_write_and_no_watch_event`]); the scaled
/// Deployment and one created after the last restart reach their replicas on the
/// simulated nodes, so the controllers, the scheduler and the nodes reconnected and their
/// informers converged.
#[test]
fn nats_restarts_lose_no_event_and_bus_fed_components_converge() {
    let seed = seed();
    println!("NATS fault run: CAPSTAN_FAULT_SEED={seed}");
    let mut c = Cluster::start_multiprocess(2, &[]);
    let mut work = Workload::start(&c, seed);
    let url = c.nats_url().expect("a multi-process cluster has a nats-server");
    let bus = work.rt.spawn(bus_watcher(url, work.client.clone(), work.start, work.until.clone()));
    work.watchers.push(bus);
    let before = c.file("before.yaml", &deployment("before", 2));
    c.ok(&["apply", "-f", before.to_str().unwrap()]);
    let mut rng = Rng(seed);
    let started = Instant::now();
    let rounds: u64 = std::env::var("CAPSTAN_NATS_FAULTS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(2000 + rng.below(3000))); // time between faults
        let nats = c.nats_mut().expect("nats");
        nats.kill9();
        std::thread::sleep(Duration::from_millis(200 + rng.below(1500))); // time NATS stays down
        if round % 3 == 1 {
            let store = nats.store_dir().to_path_buf();
            std::fs::remove_dir_all(&store).unwrap_or_else(|e| panic!("remove {}: {e}", store.display()));
        }
        nats.start_again();
        if round == 0 {
            // Scaled over HTTP while the bus recovers: the controllers learn it from the bus.
            c.ok(&["scale", "deployment", "before", "-n", NS, "--replicas=4"]);
        }
    }
    let faults = started.elapsed();
    // A supervisor's part, from here to convergence: a role that lost its leader lease
    // while the bus was down exits (as upstream's scheduler and controller manager do) and
    // is started again.
    let mut restarted = Vec::new();
    let mut supervise = |c: &mut Cluster| {
        for role in c.roles_mut() {
            if role.exited() {
                restarted.push(role.args().first().cloned().unwrap_or_default());
                role.restart();
            }
        }
    };
    supervise(&mut c);
    let after = c.file("after.yaml", &deployment("after", 3));
    c.ok(&["apply", "-f", after.to_str().unwrap()]);
    let t = Instant::now();
    let deadline = t + Duration::from_secs(60);
    while !(converged(&c, "before", 4) && converged(&c, "after", 3)) {
        supervise(&mut c);
        if Instant::now() > deadline {
            let state = c.kubectl(&["get", "deployments,replicasets,pods,nodes", "-n", NS, "-o", "wide"]);
            panic!(
                "the Deployments did not converge within 60 s of the last NATS restart:\n{}",
                String::from_utf8_lossy(&state.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(200)); // polling the Deployments' state
    }
    let convergence = t.elapsed();
    let checked = work.check(&mut c);
    println!(
        "NATS fault run (seed {seed}): {rounds} nats-server kills in {faults:?} ({} with the JetStream store removed); \
         roles that exited and were started again: {restarted:?}; \
         Deployments converged {convergence:?} after the last; 2 HTTP watchers and 1 bus subscriber: {}",
        (rounds + 1) / 3,
        checked.summary
    );
    assert!(checked.acked > 20, "the run did too little to mean anything");
}
