//! `capstan-bench sched`: scheduling throughput, Deployment roll-out time and memory on
//! simulated nodes.
//!
//! Starts its own cluster on a temporary directory and free loopback ports — one
//! `capstan up --sim-nodes N` process, or with `--multiprocess` a `nats-server` and the
//! `gateway`, `controllers`, `scheduler` and `sim-nodes` processes — waits until N nodes
//! are Ready, then runs two scenarios against the same cluster:
//!
//! 1. **throughput**: a watch on pods is opened, then `--pods` pods without `nodeName`
//!    are created from `--clients` connections as fast as the server takes them; each
//!    pod's create request time, the time its `spec.nodeName` shows up in a watch event
//!    and the time it is reported Running are recorded. Pods/s = pods / (last bound −
//!    first create sent).
//! 2. **deployment**: one Deployment of `--replicas` replicas is created; its status is
//!    polled until `readyReplicas` and `availableReplicas` reach the replica count, while a
//!    watch records when the last pod was created, bound and Running.
//! 3. **claims**: `--claims` PersistentVolumeClaims of the default `local-path` class
//!    (`WaitForFirstConsumer`) and one pod per claim are created; watches on pods and on
//!    claims record when each pod's `spec.nodeName` and each claim's `Bound` phase show
//!    up, and a watch on claims when each claim's `volume.kubernetes.io/selected-node`
//!    (the scheduler's decision) and its `Bound` phase do: the latency is claim Bound − its
//!    selected node (the provisioner's volume, the binder's four writes), and claim Bound −
//!    pod bound (0 when the claim was Bound first). `--claims-rate` paces the creates.
//!
//! The resident memory of every process is sampled when the nodes are Ready, after each
//! scenario, and as the peak (VmHWM); CPU per process and per thread name is measured
//! over each scenario from /proc. One JSON object goes to stdout, a summary to stderr;
//! the processes are stopped by PID (SIGTERM, SIGKILL after 5 s). Every wait is bounded.

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Kubeconfig};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: capstan-bench sched [--capstan PATH] [--nodes N] [--pods M] [--clients C]
                           [--replicas R] [--timeout SECS] [--multiprocess] [--nats-server PATH]
                           [--claims K] [--claims-rate R] [--skip-throughput] [--skip-deployment] [--skip-claims]

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --nodes N           simulated nodes (default 1000)
  --pods M            pods created for the throughput scenario (default 5000)
  --clients C         connections creating pods (default 16)
  --replicas R        replicas of the Deployment scenario (default 10000)
  --timeout SECS      longest wait for the nodes, and for each scenario (default 600)
  --multiprocess      run nats-server + gateway, controllers, scheduler, sim-nodes processes
  --nats-server PATH  the nats-server binary (default /usr/sbin/nats-server)
  --claims K          claims (one pod each) of the claims scenario (default 500)
  --claims-rate R     create R claims (and their pods) per second (default 0: at once)
  --skip-throughput   skip scenario 1
  --skip-deployment   skip scenario 2
  --skip-claims       skip scenario 3";

const NS_PODS: &str = "/api/v1/namespaces/default/pods";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const JSON_CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json");
/// Label of the throughput scenario's pods.
const THROUGHPUT_APP: &str = "sched-bench";
/// Label (and name) of the Deployment scenario.
const DEPLOY_APP: &str = "sched-deploy";
/// Label of the claims scenario's pods and claims.
const CLAIMS_APP: &str = "sched-claims";
const NS_CLAIMS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";

struct Opts {
    capstan: PathBuf,
    nats_server: PathBuf,
    nodes: usize,
    pods: usize,
    clients: usize,
    replicas: usize,
    timeout: Duration,
    multiprocess: bool,
    throughput: bool,
    deployment: bool,
    claims: usize,
    claims_rate: usize,
    claims_on: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let default_capstan = capstan_bench::default_capstan();
    let mut o = Opts {
        capstan: default_capstan,
        nats_server: PathBuf::from("/usr/sbin/nats-server"),
        nodes: 1000,
        pods: 5000,
        clients: 16,
        replicas: 10_000,
        timeout: Duration::from_secs(600),
        multiprocess: false,
        throughput: true,
        deployment: true,
        claims: 500,
        claims_rate: 0,
        claims_on: true,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        let number =
            |v: String, what: &str| v.parse::<usize>().with_context(|| format!("{what} wants a number"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--nats-server" => o.nats_server = PathBuf::from(value()?),
            "--nodes" => o.nodes = number(value()?, "--nodes")?,
            "--pods" => o.pods = number(value()?, "--pods")?,
            "--clients" => o.clients = number(value()?, "--clients")?,
            "--replicas" => o.replicas = number(value()?, "--replicas")?,
            "--timeout" => o.timeout = Duration::from_secs(number(value()?, "--timeout")? as u64),
            "--multiprocess" => o.multiprocess = true,
            "--skip-throughput" => o.throughput = false,
            "--skip-deployment" => o.deployment = false,
            "--claims" => o.claims = number(value()?, "--claims")?,
            "--claims-rate" => o.claims_rate = number(value()?, "--claims-rate")?,
            "--skip-claims" => o.claims_on = false,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.nodes == 0 {
        bail!("--clients and --nodes must be at least 1");
    }
    Ok(o)
}

pub(crate) fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn percentile_ms(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    Some(ms(sorted[i.min(sorted.len() - 1)]))
}

pub(crate) fn latency_json(mut v: Vec<Duration>) -> Value {
    v.sort();
    json!({"count": v.len(), "p50_ms": percentile_ms(&v, 0.5), "p99_ms": percentile_ms(&v, 0.99),
           "max_ms": v.last().map(|d| ms(*d))})
}

pub(crate) fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0)
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A process of the cluster under test.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    child: Option<Child>,
    pub(crate) pid: u32,
}

impl Proc {
    /// Spawns `cmd` (stdout piped, stderr to `log`) and waits up to `wait` for a stdout
    /// line starting with `ready_prefix` (none: returns at once); returns that line.
    pub(crate) fn spawn(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        ready_prefix: Option<&'static str>,
        wait: Duration,
    ) -> anyhow::Result<(Proc, String)> {
        let log = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("failed to start {name}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if ready_prefix.is_some_and(|p| line.starts_with(p)) {
                    let _ = tx.send(line);
                }
            }
        });
        let p = Proc { name, child: Some(child), pid };
        if ready_prefix.is_none() {
            return Ok((p, String::new()));
        }
        let line =
            rx.recv_timeout(wait).with_context(|| format!("{name} did not become ready in {wait:?}"))?;
        Ok((p, line))
    }

    fn status_kb(&self, field: &str) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = s.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub(crate) fn rss_kb(&self) -> Option<u64> {
        self.status_kb("VmRSS:")
    }

    pub(crate) fn hwm_kb(&self) -> Option<u64> {
        self.status_kb("VmHWM:")
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, and reap it.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("{} (pid {}) did not exit 5 s after SIGTERM; killing it", self.name, self.pid);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU ticks (user + system) of a process and of each of its threads, by thread name.
#[derive(Default)]
pub(crate) struct CpuSnap {
    at: Option<Instant>,
    total: u64,
    threads: HashMap<u32, (String, u64)>,
    /// Nanoseconds each thread spent runnable but waiting for a CPU (/proc/.../schedstat).
    waits: HashMap<u32, u64>,
}

fn schedstat_wait_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().nth(1)?.parse().ok()
}

fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

pub(crate) fn cpu_snap(pid: u32) -> CpuSnap {
    let mut snap = CpuSnap { at: Some(Instant::now()), ..Default::default() };
    snap.total = stat_ticks(&format!("/proc/{pid}/stat")).map(|(_, t)| t).unwrap_or(0);
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(v) = stat_ticks(&format!("/proc/{pid}/task/{tid}/stat")) {
                snap.threads.insert(tid, v);
            }
            if let Some(w) = schedstat_wait_ns(&format!("/proc/{pid}/task/{tid}/schedstat")) {
                snap.waits.insert(tid, w);
            }
        }
    }
    snap
}

/// CPU cores used between two snapshots: the process, and the busiest thread names.
pub(crate) fn cpu_delta(a: &CpuSnap, b: &CpuSnap) -> Value {
    let (Some(t0), Some(t1)) = (a.at, b.at) else { return Value::Null };
    let wall = (t1 - t0).as_secs_f64().max(1e-3);
    let cores = |ticks: u64| ((ticks as f64 / 100.0 / wall) * 100.0).round() / 100.0;
    // Threads one by one (the role arbiters all share one name; lower tids started first).
    let mut v: Vec<(u32, &str, u64)> = b
        .threads
        .iter()
        .map(|(tid, (name, ticks))| {
            let before = a.threads.get(tid).map(|(_, t)| *t).unwrap_or(0);
            (*tid, name.as_str(), ticks.saturating_sub(before))
        })
        .filter(|(_, _, t)| *t > 0)
        .collect();
    v.sort_by(|x, y| y.2.cmp(&x.2).then(x.0.cmp(&y.0)));
    let threads: Vec<Value> = v
        .into_iter()
        .take(8)
        .map(|(tid, name, t)| {
            let wait =
                b.waits.get(&tid).zip(a.waits.get(&tid)).map(|(x, y)| x.saturating_sub(*y)).unwrap_or(0);
            json!({"tid": tid, "thread": name, "cores": cores(t),
                   "runqueue_wait": ((wait as f64 / 1e9 / wall) * 100.0).round() / 100.0})
        })
        .collect();
    // Threads runnable but not running, on average (CPU contention).
    let wait_ns: u64 =
        b.waits.iter().map(|(tid, w)| w.saturating_sub(a.waits.get(tid).copied().unwrap_or(0))).sum();
    json!({"cores": cores(b.total.saturating_sub(a.total)), "seconds": secs(t1 - t0), "threads": threads,
           "runqueue_wait_threads": ((wait_ns as f64 / 1e9 / wall) * 100.0).round() / 100.0})
}

/// The cluster under test.
pub(crate) struct Cluster {
    procs: Vec<Proc>,
    pub(crate) kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    pub(crate) ready_ms: f64,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

impl Cluster {
    fn start(o: &Opts) -> anyhow::Result<Cluster> {
        Cluster::launch(&o.capstan, &o.nats_server, o.nodes, o.multiprocess)
    }

    /// Starts `capstan up --sim-nodes nodes` or, with `multiprocess`, nats-server and the
    /// four roles; returns once each process said it is ready.
    pub(crate) fn launch(
        capstan_bin: &Path,
        nats_server: &Path,
        nodes: usize,
        multiprocess: bool,
    ) -> anyhow::Result<Cluster> {
        let dir =
            tempfile::Builder::new().prefix("capstan-sched-bench-").tempdir().context("create temp dir")?;
        let data = dir.path().join("data");
        let t0 = Instant::now();
        let capstan = |role: &str| {
            let mut c = Command::new(capstan_bin);
            c.arg(role).env("CAPSTAN_LOG", "warn");
            c
        };
        let wait = Duration::from_secs(60);
        let mut procs = Vec::new();
        if !multiprocess {
            let mut c = capstan("up");
            c.arg("--data-dir").arg(&data).args([
                "--listen",
                "127.0.0.1:0",
                "--sim-nodes",
                &nodes.to_string(),
                // Simulated nodes only: the real node would take pods and run containers.
                "--no-node",
            ]);
            let (p, _) =
                Proc::spawn("up", c, &dir.path().join("up.log"), Some("capstan is ready at "), wait)?;
            procs.push(p);
        } else {
            let port = free_port()?;
            let nats_url = format!("nats://127.0.0.1:{port}");
            let mut c = Command::new(nats_server);
            c.arg("-js").arg("-sd").arg(dir.path().join("nats")).args([
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]);
            let (p, _) = Proc::spawn("nats-server", c, &dir.path().join("nats.log"), None, wait)?;
            procs.push(p);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if Instant::now() > deadline {
                    bail!("nats-server did not listen on {port} within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut c = capstan("gateway");
            c.args(["--nats", &nats_url, "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
            let log = dir.path().join("gateway.log");
            let (p, _) = Proc::spawn("gateway", c, &log, Some("capstan gateway listening on "), wait)?;
            procs.push(p);
            let mut c = capstan("controllers");
            c.args(["--nats", &nats_url]);
            let log = dir.path().join("controllers.log");
            let (p, _) = Proc::spawn("controllers", c, &log, Some("capstan controllers running"), wait)?;
            procs.push(p);
            let mut c = capstan("scheduler");
            c.args(["--nats", &nats_url]);
            let log = dir.path().join("scheduler.log");
            let (p, _) = Proc::spawn("scheduler", c, &log, Some("capstan scheduler running"), wait)?;
            procs.push(p);
            let mut c = capstan("sim-nodes");
            c.args(["--nats", &nats_url, "--count", &nodes.to_string()]);
            let log = dir.path().join("sim-nodes.log");
            let (p, _) = Proc::spawn("sim-nodes", c, &log, Some("capstan sim-nodes running"), wait)?;
            procs.push(p);
        }
        Ok(Cluster { procs, kubeconfig: data.join("admin.kubeconfig"), dir, ready_ms: ms(t0.elapsed()) })
    }

    /// The capstan processes (not nats-server).
    pub(crate) fn capstan_procs(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.name != "nats-server")
    }

    pub(crate) fn rss(&self) -> Value {
        self.procs.iter().map(|p| (p.name.to_string(), json!(mb(p.rss_kb())))).collect()
    }

    pub(crate) fn hwm(&self) -> Value {
        self.procs.iter().map(|p| (p.name.to_string(), json!(mb(p.hwm_kb())))).collect()
    }

    /// Each process's threads as `tid name`, in tid order (the order they were started).
    pub(crate) fn thread_list(&self) -> Value {
        self.procs
            .iter()
            .map(|p| {
                let mut t: Vec<(u32, String)> =
                    cpu_snap(p.pid).threads.into_iter().map(|(tid, (name, _))| (tid, name)).collect();
                t.sort();
                let list: Vec<String> = t.into_iter().map(|(tid, name)| format!("{tid} {name}")).collect();
                (p.name.to_string(), json!(list))
            })
            .collect()
    }

    pub(crate) fn cpu_snaps(&self) -> Vec<CpuSnap> {
        self.procs.iter().map(|p| cpu_snap(p.pid)).collect()
    }

    pub(crate) fn cpu_json(&self, before: &[CpuSnap]) -> Value {
        self.procs
            .iter()
            .zip(before)
            .map(|(p, a)| (p.name.to_string(), cpu_delta(a, &cpu_snap(p.pid))))
            .collect()
    }

    /// Counts WARN/ERROR lines in each process's log.
    pub(crate) fn log_counts(&self) -> Value {
        self.procs
            .iter()
            .map(|p| {
                let path = self.dir.path().join(format!("{}.log", p.name));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let warn = text.lines().filter(|l| l.contains("WARN")).count();
                let error = text.lines().filter(|l| l.contains("ERROR")).count();
                let first = text.lines().find(|l| l.contains("ERROR") || l.contains("WARN")).map(|l| {
                    let l: String = l.chars().take(300).collect();
                    l
                });
                (p.name.to_string(), json!({"warn": warn, "error": error, "first": first}))
            })
            .collect()
    }

    pub(crate) fn all_alive(&mut self) -> bool {
        self.procs.iter_mut().all(Proc::alive)
    }

    pub(crate) fn stop(&mut self) {
        // Clients of the bus first, nats-server last.
        while let Some(mut p) = self.procs.pop() {
            p.stop();
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeList {
    items: Vec<NodeItem>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeItem {
    status: NodeStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct NodeStatus {
    conditions: Vec<Condition>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

/// Polls the node list until `n` nodes are Ready; returns the seconds waited.
pub(crate) async fn wait_nodes_ready(client: &Client, n: usize, timeout: Duration) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut conn = client.open().await.context("connect")?;
    let mut last_report = Instant::now();
    let mut ready = 0;
    while t0.elapsed() < timeout {
        let r = conn.request("GET", "/api/v1/nodes", &[ACCEPT], b"").await?;
        if r.status == 200 {
            let list: NodeList = serde_json::from_slice(&r.body).context("node list")?;
            ready = list
                .items
                .iter()
                .filter(|i| i.status.conditions.iter().any(|c| c.kind == "Ready" && c.status == "True"))
                .count();
            if ready >= n {
                return Ok(secs(t0.elapsed()));
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!("  {ready}/{n} nodes Ready after {:.0} s", t0.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        if conn.is_closed() {
            conn = client.open().await.context("connect")?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("only {ready} of {n} nodes Ready after {timeout:?}")
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: WatchObject,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WatchObject {
    metadata: Meta,
    spec: PodSpec,
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    name: String,
    resource_version: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodStatus {
    phase: Option<String>,
}

/// When a pod was first seen, bound and Running in the watch.
#[derive(Default, Clone, Copy)]
struct Seen {
    added: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
}

#[derive(Default)]
struct Recorder {
    pods: HashMap<String, Seen>,
    added: usize,
    bound: usize,
    running: usize,
    errors: Vec<String>,
    reopens: usize,
}

/// Watches pods labelled `app` from the current revision, recording [`Seen`] per pod,
/// until aborted or `deadline`. Reopens the watch (from the last revision) when it ends.
async fn start_watch(
    client: &Client,
    app: &'static str,
    deadline: Instant,
) -> anyhow::Result<(Arc<Mutex<Recorder>>, tokio::task::JoinHandle<()>)> {
    let mut rv = capstan_bench::watch::pods_revision(client).await.context("list pods")?;
    let owned = client.clone();
    let open = move |rv: String| {
        let client = owned.clone();
        async move { capstan_bench::watch::watch_pods(&client, app, &rv).await }
    };
    let mut watch = open(rv.clone()).await?;
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let task = {
        let rec = rec.clone();
        tokio::spawn(async move {
            let mut reopens = 0;
            while Instant::now() < deadline {
                let line = match tokio::time::timeout(Duration::from_secs(1), watch.next_line()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(l))) => l,
                    Ok(r) => {
                        if let Err(e) = r {
                            lock(&rec).errors.push(format!("watch: {e}"));
                        }
                        reopens += 1;
                        lock(&rec).reopens = reopens;
                        if reopens > 20 {
                            return;
                        }
                        match open(rv.clone()).await {
                            Ok(w) => watch = w,
                            Err(e) => {
                                lock(&rec).errors.push(format!("reopen: {e}"));
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                        continue;
                    }
                };
                let at = Instant::now();
                let Ok(ev) = serde_json::from_slice::<WatchEvent>(&line) else { continue };
                if ev.kind == "ERROR" {
                    lock(&rec).errors.push(String::from_utf8_lossy(&line).chars().take(300).collect());
                    continue;
                }
                let o = ev.object;
                if !o.metadata.resource_version.is_empty() {
                    rv = o.metadata.resource_version;
                }
                if ev.kind == "BOOKMARK" || ev.kind == "DELETED" {
                    continue;
                }
                let mut r = lock(&rec);
                let r = &mut *r;
                let seen = r.pods.entry(o.metadata.name).or_default();
                if seen.added.is_none() {
                    seen.added = Some(at);
                    r.added += 1;
                }
                if seen.bound.is_none() && o.spec.node_name.is_some_and(|n| !n.is_empty()) {
                    seen.bound = Some(at);
                    r.bound += 1;
                }
                if seen.running.is_none() && o.status.phase.as_deref() == Some("Running") {
                    seen.running = Some(at);
                    r.running += 1;
                }
            }
        })
    };
    Ok((rec, task))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pod_body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": THROUGHPUT_APP}},
        "spec": {"containers": [{"name": "c", "image": "nginx",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }))
    .unwrap_or_default()
}

/// Waits until `done(recorder)` or `deadline`, printing progress every 5 s.
async fn wait_for(
    rec: &Mutex<Recorder>,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Recorder) -> bool,
) -> bool {
    wait_progress(rec, deadline, what, done, |r| {
        format!("{} seen, {} bound, {} Running", r.added, r.bound, r.running)
    })
    .await
}

/// Waits until `done(recorder)` or `deadline`, printing `what` and `progress(recorder)`
/// every 5 s.
pub(crate) async fn wait_progress<R>(
    rec: &Mutex<R>,
    deadline: Instant,
    what: &str,
    done: impl Fn(&R) -> bool,
    progress: impl Fn(&R) -> String,
) -> bool {
    let t0 = Instant::now();
    let mut last = Instant::now();
    loop {
        {
            let r = lock(rec);
            if done(&r) {
                return true;
            }
            if last.elapsed() >= Duration::from_secs(5) {
                eprintln!("  {what}: {:.0} s: {}", t0.elapsed().as_secs_f64(), progress(&r));
                last = Instant::now();
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scenario 1: create `o.pods` pods as fast as possible; time create → bound.
async fn throughput(client: &Client, o: &Opts, cluster: &Cluster) -> anyhow::Result<Value> {
    let deadline = Instant::now() + o.timeout;
    let (rec, watch) = start_watch(client, THROUGHPUT_APP, deadline).await?;
    let mut conns = Vec::new();
    for _ in 0..o.clients {
        conns.push(client.open().await.context("connect")?);
    }
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..o.pods)
            .map(|i| {
                let name = format!("sb-{i}");
                let b = pod_body(&name);
                (name, b)
            })
            .collect(),
    );
    let t0 = Instant::now();
    // Nanoseconds after t0 (+1) at which each create was sent; 0: not sent.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..o.pods).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cluster.cpu_snaps();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (bodies, sent, next) = (bodies.clone(), sent.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, body)) = bodies.get(i) else { break };
                let s = Instant::now();
                sent[i].store((s - t0).as_nanos() as u64 + 1, Ordering::Relaxed);
                match conn.request("POST", NS_PODS, &[JSON_CT, ACCEPT], body).await {
                    Ok(r) if r.status == 201 => lat.push(s.elapsed()),
                    Ok(r) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    let mut create_lat = Vec::new();
    let mut create_errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (l, e, f) = t.await?;
        create_lat.extend(l);
        create_errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let created_in = t0.elapsed();
    let created = create_lat.len();
    eprintln!("  created {created} pods in {:.2} s ({create_errors} errors)", created_in.as_secs_f64());
    let all_bound = wait_for(&rec, deadline, "binding", |r| r.bound >= created).await;
    let bound_at = t0.elapsed();
    let cpu = cluster.cpu_json(&cpu0);
    let all_running =
        wait_for(&rec, deadline.min(Instant::now() + Duration::from_secs(120)), "running", |r| {
            r.running >= created
        })
        .await;
    watch.abort();
    let r = lock(&rec);
    let at = |i: usize| match sent[i].load(Ordering::Relaxed) {
        0 => None,
        n => Some(t0 + Duration::from_nanos(n - 1)),
    };
    let first_sent = (0..o.pods).filter_map(at).min();
    let mut to_bound = Vec::new();
    let mut to_running = Vec::new();
    let mut last_bound = None;
    let mut last_running = None;
    for (i, (name, _)) in bodies.iter().enumerate() {
        let (Some(s), Some(seen)) = (at(i), r.pods.get(name)) else { continue };
        if let Some(b) = seen.bound {
            to_bound.push(b.saturating_duration_since(s));
            last_bound = last_bound.max(Some(b));
        }
        if let Some(x) = seen.running {
            to_running.push(x.saturating_duration_since(s));
            last_running = last_running.max(Some(x));
        }
    }
    let rate = |last: Option<Instant>, n: usize| match (first_sent, last) {
        (Some(f), Some(l)) if l > f => Some((n as f64 / (l - f).as_secs_f64()).round()),
        _ => None,
    };
    let bound_n = to_bound.len();
    let running_n = to_running.len();
    Ok(json!({
        "pods": o.pods,
        "clients": o.clients,
        "created": created,
        "create_errors": create_errors,
        "first_create_error": first_error,
        "create_seconds": secs(created_in),
        "creates_per_sec": (created as f64 / created_in.as_secs_f64()).round(),
        "create_request": latency_json(create_lat),
        "bound": bound_n,
        "all_bound": all_bound,
        "bound_per_sec": rate(last_bound, bound_n),
        "first_create_to_last_bound_s": first_sent.zip(last_bound).map(|(f, l)| secs(l - f)),
        "create_to_bound": latency_json(to_bound),
        "running": running_n,
        "all_running": all_running,
        "running_per_sec": rate(last_running, running_n),
        "create_to_running": latency_json(to_running),
        "watch_errors": r.errors.iter().take(3).collect::<Vec<_>>(),
        "watch_reopens": r.reopens,
        "seconds_to_all_bound": secs(bound_at),
        "cpu_until_bound": cpu,
    }))
}

/// When a claim was first seen with its selected node and first seen Bound.
#[derive(Default, Clone, Copy)]
struct ClaimSeen {
    selected: Option<Instant>,
    bound: Option<Instant>,
}

/// Watches the claims labelled [`CLAIMS_APP`], recording [`ClaimSeen`] per claim.
async fn watch_claims(
    client: &Client,
    deadline: Instant,
) -> anyhow::Result<(Arc<Mutex<HashMap<String, ClaimSeen>>>, tokio::task::JoinHandle<()>)> {
    let mut conn = client.open().await?;
    let r = conn.request("GET", &format!("{NS_CLAIMS}?limit=1"), &[ACCEPT], b"").await?;
    if r.status != 200 {
        bail!("list claims: {} {}", r.status, r.text());
    }
    let rv = r.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let path = format!(
        "{NS_CLAIMS}?watch=true&labelSelector=app%3D{CLAIMS_APP}&resourceVersion={rv}&timeoutSeconds=3600"
    );
    let mut watch = client.open().await?.stream("GET", &path, &[], b"").await?;
    if watch.status != 200 {
        bail!("watch claims failed with {}", watch.status);
    }
    let bound: Arc<Mutex<HashMap<String, ClaimSeen>>> = Arc::default();
    let b = bound.clone();
    let task = tokio::spawn(async move {
        while Instant::now() < deadline {
            let line = match tokio::time::timeout(Duration::from_secs(1), watch.next_line()).await {
                Err(_) => continue,
                Ok(Ok(Some(l))) => l,
                Ok(_) => return,
            };
            let at = Instant::now();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
            let o = &ev["object"];
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            let mut b = lock(&b);
            let seen = b.entry(name).or_default();
            if seen.selected.is_none()
                && o["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].is_string()
            {
                seen.selected = Some(at);
            }
            if seen.bound.is_none() && o["status"]["phase"] == "Bound" {
                seen.bound = Some(at);
            }
        }
    });
    Ok((bound, task))
}

/// Scenario 3: claims of the default class, one pod each; time pod bound → claim Bound.
async fn claims(client: &Client, o: &Opts) -> anyhow::Result<Value> {
    let deadline = Instant::now() + o.timeout;
    let (rec, pod_watch) = start_watch(client, CLAIMS_APP, deadline).await?;
    let (bound, claim_watch) = watch_claims(client, deadline).await?;
    let n = o.claims;
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let rate = o.claims_rate;
    let mut tasks = Vec::new();
    for _ in 0..o.clients.min(n) {
        let mut conn = client.open().await.context("connect")?;
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if rate > 0 {
                    // Claim i is due i/rate seconds after the start.
                    let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let claim = serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": format!("sc-{i}"), "labels": {"app": CLAIMS_APP}},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                }))
                .unwrap_or_default();
                let pod = serde_json::to_vec(&json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("sc-{i}"), "labels": {"app": CLAIMS_APP}},
                    "spec": {"containers": [{"name": "c", "image": "nginx",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": format!("sc-{i}")}}]},
                }))
                .unwrap_or_default();
                for (path, body) in [(NS_CLAIMS, claim), (NS_PODS, pod)] {
                    match conn.request("POST", path, &[JSON_CT, ACCEPT], &body).await {
                        Ok(r) if r.status == 201 => {}
                        Ok(r) => errors.push(format!("{}: {}", r.status, r.text())),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await?);
    }
    eprintln!(
        "  created {n} claims and pods in {:.2} s ({} errors)",
        t0.elapsed().as_secs_f64(),
        errors.len()
    );
    let mut last = Instant::now();
    let all_bound = loop {
        let done = lock(&bound).values().filter(|s| s.bound.is_some()).count();
        if done >= n {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        if last.elapsed() >= Duration::from_secs(5) {
            eprintln!("  claims: {done} of {n} Bound");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let bound_at = t0.elapsed();
    pod_watch.abort();
    claim_watch.abort();
    let r = lock(&rec);
    let b = lock(&bound);
    let mut lat = Vec::new();
    let mut selected_lat = Vec::new();
    let mut before_pod = 0;
    for i in 0..n {
        let name = format!("sc-{i}");
        let Some(seen) = b.get(&name) else { continue };
        let Some(claim_bound) = seen.bound else { continue };
        if let Some(sel) = seen.selected {
            selected_lat.push(claim_bound.saturating_duration_since(sel));
        }
        let Some(pod_bound) = r.pods.get(&name).and_then(|s| s.bound) else { continue };
        if claim_bound < pod_bound {
            before_pod += 1;
        }
        lat.push(claim_bound.saturating_duration_since(pod_bound));
    }
    Ok(json!({
        "claims": n,
        "create_errors": errors.len(),
        "first_create_error": errors.first(),
        "rate_per_sec": o.claims_rate,
        "bound": b.values().filter(|s| s.bound.is_some()).count(),
        "all_bound": all_bound,
        "seconds_to_all_bound": secs(bound_at),
        "selected_node_to_claim_bound": latency_json(selected_lat),
        "pod_bound_to_claim_bound": latency_json(lat),
        "claims_bound_before_their_pod_was_seen_bound": before_pod,
    }))
}

/// Scenario 2: one Deployment of `o.replicas` replicas until all are ready and available.
async fn deployment(client: &Client, o: &Opts, cluster: &Cluster) -> anyhow::Result<Value> {
    let deadline = Instant::now() + o.timeout;
    let (rec, watch) = start_watch(client, DEPLOY_APP, deadline).await?;
    let body = serde_json::to_vec(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOY_APP},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": {"app": DEPLOY_APP}},
            "template": {
                "metadata": {"labels": {"app": DEPLOY_APP}},
                "spec": {"containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
            },
        },
    }))?;
    let mut conn = client.open().await.context("connect")?;
    let cpu0 = cluster.cpu_snaps();
    let t0 = Instant::now();
    let r = conn.request("POST", DEPLOYMENTS, &[JSON_CT, ACCEPT], &body).await?;
    if r.status != 201 {
        bail!("create deployment: {} {}", r.status, r.text());
    }
    let path = format!("{DEPLOYMENTS}/{DEPLOY_APP}");
    let want = o.replicas as u64;
    let mut ready_at = None;
    let mut half_ready_at = None;
    let mut last = (0, 0, 0);
    let mut last_report = Instant::now();
    while Instant::now() < deadline {
        let r = conn.request("GET", &path, &[ACCEPT], b"").await?;
        if r.status == 200 {
            let v = r.json()?;
            let n = |k: &str| v["status"][k].as_u64().unwrap_or(0);
            last = (n("replicas"), n("readyReplicas"), n("availableReplicas"));
            if half_ready_at.is_none() && last.1 * 2 >= want {
                half_ready_at = Some(t0.elapsed());
            }
            if last.1 >= want && last.2 >= want {
                ready_at = Some(t0.elapsed());
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            let rc = lock(&rec);
            eprintln!(
                "  deployment: {:.0} s: status replicas {} ready {} available {}; watch: {} pods, {} bound, {} Running",
                t0.elapsed().as_secs_f64(),
                last.0,
                last.1,
                last.2,
                rc.added,
                rc.bound,
                rc.running
            );
            last_report = Instant::now();
        }
        if conn.is_closed() {
            conn = client.open().await.context("connect")?;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = cluster.cpu_json(&cpu0);
    // Let the watch catch up with the last events.
    let _ = wait_for(&rec, Instant::now() + Duration::from_secs(5), "deployment watch", |r| {
        r.running >= o.replicas
    })
    .await;
    watch.abort();
    let r = lock(&rec);
    let last_of = |f: fn(&Seen) -> Option<Instant>| r.pods.values().filter_map(f).max().map(|t| secs(t - t0));
    Ok(json!({
        "replicas": o.replicas,
        "seconds_to_ready": ready_at.map(secs),
        "seconds_to_half_ready": half_ready_at.map(secs),
        "final_status": {"replicas": last.0, "readyReplicas": last.1, "availableReplicas": last.2},
        "pods_seen": r.added,
        "pods_bound": r.bound,
        "pods_running": r.running,
        "last_pod_created_s": last_of(|s| s.added),
        "last_pod_bound_s": last_of(|s| s.bound),
        "last_pod_running_s": last_of(|s| s.running),
        "first_pod_created_s": r.pods.values().filter_map(|s| s.added).min().map(|t| secs(t - t0)),
        "watch_errors": r.errors.iter().take(3).collect::<Vec<_>>(),
        "cpu": cpu,
    }))
}

async fn run(o: &Opts, cluster: &mut Cluster) -> anyhow::Result<Value> {
    let kc = Kubeconfig::load(&cluster.kubeconfig)?;
    let client = Client::new(&kc)?;
    eprintln!("waiting for {} nodes to be Ready...", o.nodes);
    let cpu_boot = cluster.cpu_snaps();
    let nodes_ready_s = wait_nodes_ready(&client, o.nodes, o.timeout).await?;
    let cpu_registration = cluster.cpu_json(&cpu_boot);
    eprintln!("  {} nodes Ready after {nodes_ready_s} s", o.nodes);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_idle0 = cluster.cpu_snaps();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_idle = cluster.cpu_json(&cpu_idle0);
    let rss_idle = cluster.rss();
    let mut out = json!({
        "nodes_ready_s": nodes_ready_s,
        "cpu_node_registration": cpu_registration,
        "cpu_idle_5s": cpu_idle,
        "rss_idle_mb": rss_idle,
        "threads_at_idle": cluster.thread_list(),
    });
    if o.throughput {
        eprintln!("throughput: {} pods from {} connections...", o.pods, o.clients);
        out["throughput"] = throughput(&client, o, cluster).await?;
        out["rss_after_throughput_mb"] = cluster.rss();
    }
    if o.deployment {
        eprintln!("deployment: {} replicas...", o.replicas);
        out["deployment"] = deployment(&client, o, cluster).await?;
        out["rss_after_deployment_mb"] = cluster.rss();
    }
    if o.claims_on && o.claims > 0 {
        eprintln!("claims: {} claims, one pod each...", o.claims);
        out["claims"] = claims(&client, o).await?;
    }
    Ok(out)
}

fn summary(v: &Value) -> String {
    let t = &v["throughput"];
    let d = &v["deployment"];
    let mut s = format!(
        "mode {}, {} nodes Ready after {} s (load average {} → {})\n\
         rss idle (MB): {}\n",
        v["mode"], v["nodes"], v["nodes_ready_s"], v["loadavg_start"], v["loadavg_end"], v["rss_idle_mb"]
    );
    if !t.is_null() {
        s += &format!(
            "throughput: {} pods created in {} s ({}/s, {} errors); bound {}/s (first create → last bound {} s), \
             create→bound p50 {} ms p99 {} ms; Running {}/s, create→Running p50 {} ms p99 {} ms\n",
            t["created"],
            t["create_seconds"],
            t["creates_per_sec"],
            t["create_errors"],
            t["bound_per_sec"],
            t["first_create_to_last_bound_s"],
            t["create_to_bound"]["p50_ms"],
            t["create_to_bound"]["p99_ms"],
            t["running_per_sec"],
            t["create_to_running"]["p50_ms"],
            t["create_to_running"]["p99_ms"],
        );
    }
    if !d.is_null() {
        s += &format!(
            "deployment: {} replicas ready in {} s (half in {} s); last pod created {} s, bound {} s, Running {} s\n",
            d["replicas"],
            d["seconds_to_ready"],
            d["seconds_to_half_ready"],
            d["last_pod_created_s"],
            d["last_pod_bound_s"],
            d["last_pod_running_s"],
        );
    }
    let c = &v["claims"];
    if !c.is_null() {
        s += &format!(
            "claims: {} of {} Bound in {} s; selected node → claim Bound p50 {} ms p99 {} ms max {} ms; \
             pod bound → claim Bound p50 {} ms p99 {} ms max {} ms\n",
            c["bound"],
            c["claims"],
            c["seconds_to_all_bound"],
            c["selected_node_to_claim_bound"]["p50_ms"],
            c["selected_node_to_claim_bound"]["p99_ms"],
            c["selected_node_to_claim_bound"]["max_ms"],
            c["pod_bound_to_claim_bound"]["p50_ms"],
            c["pod_bound_to_claim_bound"]["p99_ms"],
            c["pod_bound_to_claim_bound"]["max_ms"],
        );
    }
    s += &format!("rss at end (MB): {}; peak (MB): {}", v["rss_end_mb"], v["rss_peak_mb"]);
    s
}

/// Entry point of `capstan-bench sched` (`args` after the subcommand).
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let load_start = loadavg();
    let mut cluster = Cluster::start(&o)?;
    eprintln!(
        "started {} in {} ms: {}",
        if o.multiprocess { "nats-server + 4 capstan processes" } else { "capstan up" },
        cluster.ready_ms,
        cluster.capstan_procs().map(|p| format!("{} pid {}", p.name, p.pid)).collect::<Vec<_>>().join(", ")
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = rt.block_on(run(&o, &mut cluster));
    let alive = cluster.all_alive();
    let rss_end = cluster.rss();
    let rss_peak = cluster.hwm();
    let logs = cluster.log_counts();
    cluster.stop();
    let mut v = result?;
    v["mode"] = json!(if o.multiprocess { "multiprocess" } else { "up" });
    v["nodes"] = json!(o.nodes);
    v["started_ms"] = json!(cluster.ready_ms);
    v["rss_end_mb"] = rss_end;
    v["rss_peak_mb"] = rss_peak;
    v["all_alive_at_end"] = json!(alive);
    v["logs"] = logs;
    v["loadavg_start"] = json!(load_start);
    v["loadavg_end"] = json!(loadavg());
    v["nproc"] = json!(std::thread::available_parallelism().map(|n| n.get()).ok());
    println!("{v}");
    eprintln!("{}", summary(&v));
    Ok(())
}
