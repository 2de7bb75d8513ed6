//! `capstan-bench pods`: pod start latency on the real node (runc containers, CNI network).
//!
//! 1. Starts a `docker-registry` on loopback and pushes the busybox test image to it
//!    ([`capstan_testkit`]), then `capstan up` with its real node on a temporary data
//!    directory and a free loopback port (`node:` section: a bridge `cpbench<N>`, `--pod-cidr`,
//!    cgroup parent `/capstan-bench-<pid>`), and waits until the Node is Ready.
//! 2. Warm-up: one pod with the image until Running (the node pulls and unpacks the image once,
//!    so the measured pods start from a cached image), then deletes it and waits until it is gone.
//! 3. Opens a watch on the bench pods (`labelSelector=app=pod-bench`), then creates `--pods`
//!    pods (busybox, `sleep 3600`, `terminationGracePeriodSeconds: 0`) from `--concurrency`
//!    connections, each create sent once the connection's previous one returned and no earlier
//!    than `--interval-ms` × its index after the first. Per pod: create request sent → the watch
//!    first shows `spec.nodeName` (bound), `status.phase == Running`, and the Ready condition
//!    True; and the node's `Started` Event (`eventTime`, microseconds, taken by the node agent
//!    just after the container started), which splits the time into "until the container runs"
//!    and "reporting it" (event write, status write, watch delivery).
//! 4. Deletes the pods and waits until they are gone, stops `capstan up` by PID (SIGTERM, SIGKILL
//!    after 5 s), runs `capstan node-reset` with the same config and data directory, and stops
//!    the registry. Clean-up also runs when a step fails or on SIGINT/SIGTERM. Every wait is
//!    bounded.
//!
//! One JSON object goes to stdout (settings, machine, load average at start and end, latency
//! p50/p90/p99/max/mean per stage), a summary to stderr.

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Connection, Kubeconfig};
use capstan_testkit::{push_busybox_image, Registry};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const USAGE: &str =
    "usage: capstan-bench pods [--capstan PATH] [--pods N] [--concurrency C] [--interval-ms MS]
                          [--timeout SECS] [--pod-cidr CIDR]

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --pods N            pods measured (default 50)
  --concurrency C     connections creating pods at once (default 1: each create is sent when
                      the previous one returned)
  --interval-ms MS    least time between two creates' start times (default 0)
  --timeout SECS      longest wait for the image pull and for all pods Running (default 120)
  --pod-cidr CIDR     the node's pod CIDR (default 10.124.0.0/22)
  --log LEVEL         CAPSTAN_LOG of the server (default warn; debug logs each pod network set up)
  --seccomp-default B the node's seccompDefault (true: pods run under RuntimeDefault, the
                      node's default; false: Unconfined), to measure the seccomp filter's cost
  --save-log PATH     copy the server's log to PATH at the end

Needs root, runc, the CNI plugins, docker-registry and busybox-static.";

const NS_PODS: &str = "/api/v1/namespaces/default/pods";
const JSON_CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json");
/// Label of the measured pods.
const APP: &str = "pod-bench";
const NODE_NAME: &str = "bench-node";

struct Opts {
    capstan: PathBuf,
    pods: usize,
    concurrency: usize,
    interval: Duration,
    timeout: Duration,
    pod_cidr: String,
    log: String,
    save_log: Option<PathBuf>,
    seccomp_default: Option<bool>,
}

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let default_capstan = capstan_bench::default_capstan();
    let mut o = Opts {
        capstan: default_capstan,
        pods: 50,
        concurrency: 1,
        interval: Duration::ZERO,
        timeout: Duration::from_secs(120),
        pod_cidr: "10.124.0.0/22".into(),
        log: "warn".into(),
        save_log: None,
        seccomp_default: None,
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        let number =
            |v: String, what: &str| v.parse::<u64>().with_context(|| format!("{what} wants a number"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--pods" => o.pods = number(value()?, "--pods")? as usize,
            "--concurrency" => o.concurrency = number(value()?, "--concurrency")? as usize,
            "--interval-ms" => o.interval = Duration::from_millis(number(value()?, "--interval-ms")?),
            "--timeout" => o.timeout = Duration::from_secs(number(value()?, "--timeout")?),
            "--pod-cidr" => o.pod_cidr = value()?,
            "--log" => o.log = value()?,
            "--save-log" => o.save_log = Some(PathBuf::from(value()?)),
            "--seccomp-default" => {
                o.seccomp_default = Some(match value()?.as_str() {
                    "true" => true,
                    "false" => false,
                    other => bail!("--seccomp-default wants true or false, not {other:?}"),
                })
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.pods == 0 || o.concurrency == 0 {
        bail!("--pods and --concurrency must be at least 1");
    }
    if o.timeout.is_zero() || o.timeout > Duration::from_secs(86_400) {
        bail!("--timeout must be from 1 to 86400 seconds");
    }
    if o.interval > Duration::from_secs(60) {
        bail!("--interval-ms must be at most 60000");
    }
    let hosts = cidr_hosts(&o.pod_cidr).with_context(|| format!("--pod-cidr {:?}", o.pod_cidr))?;
    // The network, the gateway (bridge) and the broadcast address are not for pods; the
    // warm-up pod's address may not be free again yet.
    if hosts < o.pods as u64 + 4 {
        bail!("--pod-cidr {} has room for {} pods, fewer than --pods {} + 1", o.pod_cidr, hosts - 3, o.pods);
    }
    Ok(o)
}

/// Addresses in an IPv4 CIDR like `10.124.0.0/22`.
fn cidr_hosts(cidr: &str) -> anyhow::Result<u64> {
    let (addr, prefix) = cidr.split_once('/').context("wants ADDRESS/PREFIX")?;
    addr.parse::<std::net::Ipv4Addr>().context("wants an IPv4 address")?;
    let prefix: u32 = prefix.parse().context("wants a prefix length")?;
    if !(8..=30).contains(&prefix) {
        bail!("wants a prefix length from 8 to 30");
    }
    Ok(1u64 << (32 - prefix))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// count, p50, p90, p99, max and mean of values in milliseconds (nearest rank).
pub(crate) fn stats(mut v: Vec<f64>) -> Value {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        let n = v.len();
        (n > 0).then(|| round1(v[(((n - 1) as f64 * q).round() as usize).min(n - 1)]))
    };
    let mean = (!v.is_empty()).then(|| round1(v.iter().sum::<f64>() / v.len() as f64));
    json!({"count": v.len(), "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99),
           "max_ms": v.last().map(|x| round1(*x)), "mean_ms": mean})
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string());
    json!({"nproc": std::thread::available_parallelism().map(|n| n.get()).ok(), "cpu": cpu, "kernel": kernel})
}

/// CPU seconds (user + system) a process used so far (100 ticks/s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `capstan up` with its real node; stopped and reset on drop.
pub(crate) struct Node {
    capstan: PathBuf,
    child: Option<Child>,
    pid: u32,
    /// The data directory (also holds the config file and the server's log). Kept, not
    /// removed, when `node-reset` fails: it may still hold mounts.
    dir: Option<tempfile::TempDir>,
    config: PathBuf,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) bridge: String,
    ready_ms: f64,
    /// The outcome of `node-reset`, once run.
    reset: Option<Result<(), String>>,
}

impl Node {
    fn start(o: &Opts) -> anyhow::Result<Node> {
        Node::start_with(&o.capstan, &o.pod_cidr, &o.log, o.seccomp_default)
    }

    /// `capstan up` (binary `capstan`) with a node whose pod CIDR is `pod_cidr`, logging at
    /// `log`, with `node.seccompDefault` if given; waits until it is ready.
    pub(crate) fn start_with(
        capstan: &std::path::Path,
        pod_cidr: &str,
        log: &str,
        seccomp_default: Option<bool>,
    ) -> anyhow::Result<Node> {
        let dir =
            tempfile::Builder::new().prefix("capstan-pods-bench-").tempdir().context("create temp dir")?;
        let pid = std::process::id();
        let bridge = format!("cpbench{}", pid % 100_000);
        let mut yaml = format!(
            "node:
  name: {NODE_NAME}
  bridge: {bridge}
  podCIDR: {pod_cidr}
  cgroupParent: /capstan-bench-{pid}
"
        );
        if let Some(s) = seccomp_default {
            yaml.push_str(&format!("  seccompDefault: {s}\n"));
        }
        let config = dir.path().join("capstan.yaml");
        std::fs::write(&config, yaml).context("write the config file")?;
        let log_file = std::fs::File::create(dir.path().join("up.log")).context("create the log file")?;
        let t0 = Instant::now();
        let mut child = Command::new(capstan)
            .args(["up", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("CAPSTAN_LOG", log)
            .env("CAPSTAN_NO_NODE", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("failed to run {}", capstan.display()))?;
        let stdout = child.stdout.take();
        let mut node = Node {
            capstan: capstan.to_path_buf(),
            pid: child.id(),
            child: Some(child),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir: Some(dir),
            config,
            bridge,
            ready_ms: 0.0,
            reset: None,
        };
        let stdout = stdout.context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("capstan is ready at ") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            anyhow::anyhow!("capstan up did not become ready in 60 s; log: {}", node.log_tail())
        })?;
        node.ready_ms = ms(t0.elapsed());
        Ok(node)
    }

    fn log_text(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("up.log")).ok())
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// WARN and ERROR lines in the server's log, and the first of them.
    fn log_counts(&self) -> Value {
        let text = self.log_text();
        let warn = text.lines().filter(|l| l.contains("WARN")).count();
        let error = text.lines().filter(|l| l.contains("ERROR")).count();
        let first = text
            .lines()
            .find(|l| l.contains("ERROR") || l.contains("WARN"))
            .map(|l| l.chars().take(300).collect::<String>());
        json!({"warn": warn, "error": error, "first": first})
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!("capstan (pid {}) did not exit 5 s after SIGTERM; killing it", self.pid);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stops the server, then removes the node's containers, networks, mounts, cgroups and
    /// bridge with `capstan node-reset`; then the data directory, unless the reset failed.
    pub(crate) fn shutdown(&mut self) -> Result<(), String> {
        self.stop();
        if let Some(r) = &self.reset {
            return r.clone();
        }
        let Some(dir) = self.dir.as_ref() else { return Ok(()) };
        let out = Command::new(&self.capstan)
            .args(["node-reset", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&self.config)
            .env("CAPSTAN_LOG", "warn")
            .stdin(Stdio::null())
            .output();
        let r = match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "capstan node-reset failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            )),
            Err(e) => Err(format!("cannot run capstan node-reset: {e}")),
        };
        if let Err(e) = &r {
            if let Some(d) = self.dir.take() {
                eprintln!("{e}\nkeeping {} (it may hold mounts; bridge {})", d.path().display(), self.bridge);
                let _ = d.keep();
            }
        }
        self.reset = Some(r.clone());
        r
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn pod_body(name: &str, app: &str, image: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}],
        },
    }))
    .unwrap_or_default()
}

fn is_ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Reconnects when the server closed the connection.
pub(crate) async fn request(
    client: &Client,
    conn: &mut Connection,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<capstan_bench::client::Response> {
    if conn.is_closed() {
        *conn = client.open().await.context("connect")?;
    }
    let headers: &[(&str, &str)] = if body.is_empty() { &[ACCEPT] } else { &[JSON_CT, ACCEPT] };
    Ok(conn.request(method, path, headers, body).await?)
}

/// Polls the Node until its Ready condition is True; returns the seconds waited.
pub(crate) async fn wait_node_ready(client: &Client, timeout: Duration) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut conn = client.open().await.context("connect")?;
    let mut last = String::from("not registered");
    while t0.elapsed() < timeout {
        let r = request(client, &mut conn, "GET", &format!("/api/v1/nodes/{NODE_NAME}"), b"").await?;
        if r.status == 200 {
            let v = r.json().context("node")?;
            let ready = v["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())
                .unwrap_or(Value::Null);
            if ready["status"] == "True" {
                return Ok(secs(t0.elapsed()));
            }
            last = format!("Ready={} {}", ready["status"], ready["message"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("node {NODE_NAME} not Ready after {timeout:?}: {last}")
}

/// Polls a pod until `done(pod)` (or, with `gone`, until it no longer exists).
async fn wait_pod(
    client: &Client,
    name: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(Option<&Value>) -> bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut conn = client.open().await.context("connect")?;
    let path = format!("{NS_PODS}/{name}");
    let mut last = Value::Null;
    while t0.elapsed() < timeout {
        let r = request(client, &mut conn, "GET", &path, b"").await?;
        let pod = match r.status {
            200 => Some(r.json().context("pod")?),
            404 => None,
            s => bail!("GET {path}: {s} {}", r.text()),
        };
        if done(pod.as_ref()) {
            return Ok(t0.elapsed());
        }
        if let Some(p) = pod {
            last =
                json!({"phase": p["status"]["phase"], "containerStatuses": p["status"]["containerStatuses"]});
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("pod {name} not {what} after {timeout:?}: {last}")
}

/// The warm-up pod: pulls and unpacks the image, then goes. Returns create→Running.
async fn warm_up(client: &Client, image: &str, timeout: Duration) -> anyhow::Result<(f64, f64)> {
    let mut conn = client.open().await.context("connect")?;
    let name = "pod-bench-warmup";
    let r = request(client, &mut conn, "POST", NS_PODS, &pod_body(name, "pod-bench-warmup", image)).await?;
    if r.status != 201 {
        bail!("create the warm-up pod: {} {}", r.status, r.text());
    }
    let running = wait_pod(client, name, timeout, "Running", |p| {
        p.is_some_and(|p| p["status"]["phase"] == "Running" && is_ready(p))
    })
    .await?;
    let r = request(client, &mut conn, "DELETE", &format!("{NS_PODS}/{name}"), b"").await?;
    if r.status != 200 && r.status != 202 {
        bail!("delete the warm-up pod: {} {}", r.status, r.text());
    }
    let gone = wait_pod(client, name, Duration::from_secs(60), "gone", |p| p.is_none()).await?;
    Ok((ms(running), ms(gone)))
}

/// When the watch first showed a pod, bound, Running and Ready.
#[derive(Default, Clone, Copy)]
struct Seen {
    added: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
    ready: Option<Instant>,
}

#[derive(Default)]
struct Recorder {
    pods: HashMap<String, Seen>,
    running: usize,
    errors: Vec<String>,
    reopens: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the bench pods from the current revision, reopening from the last revision seen
/// when the stream ends, until aborted or `deadline`.
async fn start_watch(
    client: &Client,
    deadline: Instant,
) -> anyhow::Result<(Arc<Mutex<Recorder>>, tokio::task::JoinHandle<()>)> {
    let mut rv = capstan_bench::watch::pods_revision(client).await.context("list pods")?;
    let owned = client.clone();
    let open = move |rv: String| {
        let client = owned.clone();
        async move { capstan_bench::watch::watch_pods(&client, APP, &rv).await }
    };
    let mut watch = open(rv.clone()).await?;
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let task = {
        let rec = rec.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let line = match tokio::time::timeout(Duration::from_secs(1), watch.next_line()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(l))) => l,
                    Ok(r) => {
                        let reopens = {
                            let mut g = lock(&rec);
                            if let Err(e) = r {
                                g.errors.push(format!("watch: {e}"));
                            }
                            g.reopens += 1;
                            g.reopens
                        };
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
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                let kind = ev["type"].as_str().unwrap_or("");
                if kind == "ERROR" {
                    lock(&rec).errors.push(String::from_utf8_lossy(&line).chars().take(300).collect());
                    continue;
                }
                let o = &ev["object"];
                if let Some(v) = o["metadata"]["resourceVersion"].as_str().filter(|v| !v.is_empty()) {
                    rv = v.to_string();
                }
                if kind == "BOOKMARK" || kind == "DELETED" {
                    continue;
                }
                let Some(name) = o["metadata"]["name"].as_str() else { continue };
                let mut g = lock(&rec);
                let g = &mut *g;
                let seen = g.pods.entry(name.to_string()).or_default();
                seen.added.get_or_insert(at);
                if seen.bound.is_none() && o["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty()) {
                    seen.bound = Some(at);
                }
                if seen.running.is_none() && o["status"]["phase"] == "Running" {
                    seen.running = Some(at);
                    g.running += 1;
                }
                if seen.ready.is_none() && is_ready(o) {
                    seen.ready = Some(at);
                }
            }
        })
    };
    Ok((rec, task))
}

/// A create: when it was sent (monotonic and wall clock) and how long the request took.
#[derive(Clone, Copy)]
struct Sent {
    at: Instant,
    wall: SystemTime,
    took: Duration,
}

/// Creates the pods; returns, per pod index, when its create was sent (None: failed).
async fn create_pods(
    client: &Client,
    o: &Opts,
    image: &str,
) -> anyhow::Result<(Vec<Option<Sent>>, usize, Option<String>)> {
    let mut conns = Vec::new();
    for _ in 0..o.concurrency.min(o.pods) {
        conns.push(client.open().await.context("connect")?);
    }
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..o.pods).map(|i| pod_body(&format!("{APP}-{i}"), APP, image)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let interval = o.interval;
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (bodies, next, client) = (bodies.clone(), next.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut errors = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let offset = interval.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
                if let Some(not_before) = t0.checked_add(offset) {
                    tokio::time::sleep_until(not_before.into()).await;
                }
                let (at, wall) = (Instant::now(), SystemTime::now());
                match request(&client, &mut conn, "POST", NS_PODS, body).await {
                    Ok(r) if r.status == 201 => sent.push((i, Sent { at, wall, took: at.elapsed() })),
                    Ok(r) => errors.push(format!("{}: {}", r.status, r.text())),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (sent, errors)
        }));
    }
    let mut out = vec![None; o.pods];
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let (sent, errs) = t.await?;
        for (i, s) in sent {
            out[i] = Some(s);
        }
        errors += errs.len();
        if first_error.is_none() {
            first_error = errs.into_iter().next();
        }
    }
    Ok((out, errors, first_error))
}

/// `eventTime` of each bench pod's `Started` Event, by pod name.
async fn started_events(client: &Client) -> anyhow::Result<HashMap<String, jiff::Timestamp>> {
    let mut conn = client.open().await.context("connect")?;
    let r = request(client, &mut conn, "GET", "/api/v1/namespaces/default/events", b"").await?;
    if r.status != 200 {
        bail!("list events: {} {}", r.status, r.text());
    }
    let v = r.json().context("events")?;
    let mut out = HashMap::new();
    for e in v["items"].as_array().into_iter().flatten() {
        let name = e["involvedObject"]["name"].as_str().unwrap_or("");
        if e["reason"] != "Started" || !name.starts_with(APP) {
            continue;
        }
        let t = e["eventTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(t) = t {
            // The first start of the container (there should be only one).
            let slot = out.entry(name.to_string()).or_insert(t);
            if t < *slot {
                *slot = t;
            }
        }
    }
    Ok(out)
}

/// Deletes the bench pods and waits (bounded) until the label selects none.
async fn delete_pods(client: &Client, names: &[String], timeout: Duration) -> Value {
    let t0 = Instant::now();
    let mut errors = 0;
    let mut remaining = None;
    match client.open().await {
        Ok(mut conn) => {
            for name in names {
                match request(client, &mut conn, "DELETE", &format!("{NS_PODS}/{name}"), b"").await {
                    Ok(r) if matches!(r.status, 200 | 202 | 404) => {}
                    _ => errors += 1,
                }
            }
            let path = format!("{NS_PODS}?labelSelector=app%3D{APP}");
            while t0.elapsed() < timeout {
                if let Ok(r) = request(client, &mut conn, "GET", &path, b"").await {
                    let n = r.json().ok().and_then(|v| v["items"].as_array().map(Vec::len));
                    remaining = n;
                    if n == Some(0) {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(_) => errors = names.len(),
    }
    json!({"delete_errors": errors, "remaining": remaining, "seconds": secs(t0.elapsed())})
}

async fn run(o: &Opts, node: &Node, image: &str) -> anyhow::Result<Value> {
    let kc = Kubeconfig::load(&node.kubeconfig)?;
    let client = Client::new(&kc)?;
    let node_ready_s = wait_node_ready(&client, Duration::from_secs(60)).await?;
    eprintln!("node Ready after {node_ready_s} s; warm-up pod (pulls {image})...");
    let (warm_running_ms, warm_gone_ms) = warm_up(&client, image, o.timeout).await?;
    eprintln!("  warm-up pod Running after {warm_running_ms} ms, gone {warm_gone_ms} ms after its delete");

    let deadline = Instant::now() + o.timeout;
    let (rec, watch) = start_watch(&client, deadline + Duration::from_secs(5)).await?;
    eprintln!(
        "creating {} pods from {} connection(s), at least {} ms apart...",
        o.pods,
        o.concurrency,
        o.interval.as_millis()
    );
    let cpu0 = cpu_seconds(node.pid);
    let t0 = Instant::now();
    let (sent, create_errors, first_error) = create_pods(&client, o, image).await?;
    let created_in = t0.elapsed();
    let created = sent.iter().flatten().count();
    let mut last_report = Instant::now();
    let all_running = loop {
        let (running, ready) = {
            let r = lock(&rec);
            (r.running, r.pods.values().filter(|s| s.ready.is_some()).count())
        };
        if running >= created && ready >= created {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!("  {:.0} s: {running} of {created} Running", t0.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let phase = t0.elapsed();
    let cpu =
        cpu_seconds(node.pid).zip(cpu0).map(|(a, b)| ((a - b) / phase.as_secs_f64() * 100.0).round() / 100.0);
    watch.abort();
    let events = started_events(&client).await.unwrap_or_else(|e| {
        eprintln!("  cannot read the Started events: {e}");
        HashMap::new()
    });

    let names: Vec<String> = (0..o.pods).map(|i| format!("{APP}-{i}")).collect();
    let (mut req, mut bound, mut running, mut ready) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut started, mut bound_to_started, mut started_to_running) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_pod = Vec::new();
    {
        let r = lock(&rec);
        for (name, s) in names.iter().zip(&sent) {
            let Some(s) = s else { continue };
            let seen = r.pods.get(name).copied().unwrap_or_default();
            let since = |t: Option<Instant>| t.map(|t| ms(t.saturating_duration_since(s.at)));
            let st = events.get(name).and_then(|t| {
                let wall = jiff::Timestamp::try_from(s.wall).ok()?;
                Some(round1(t.duration_since(wall).as_secs_f64() * 1000.0))
            });
            let (b, x, y) = (since(seen.bound), since(seen.running), since(seen.ready));
            req.push(ms(s.took));
            bound.extend(b);
            running.extend(x);
            ready.extend(y);
            started.extend(st);
            if let (Some(b), Some(st)) = (b, st) {
                bound_to_started.push(st - b);
            }
            if let (Some(st), Some(x)) = (st, x) {
                started_to_running.push(x - st);
            }
            // The wall clock of the send, to line pods up with the server's log.
            let unix_ms = s.wall.duration_since(SystemTime::UNIX_EPOCH).ok().map(ms);
            per_pod.push(json!([name, ms(s.at - t0), unix_ms, ms(s.took), b, st, x, y]));
        }
    }
    let (watch_errors, reopens) = {
        let r = lock(&rec);
        (r.errors.iter().take(3).cloned().collect::<Vec<_>>(), r.reopens)
    };
    eprintln!("deleting the pods...");
    let deleted = delete_pods(&client, &names, Duration::from_secs(120)).await;
    Ok(json!({
        "node_ready_s": node_ready_s,
        "warm_up": {"create_to_running_ms": warm_running_ms, "delete_to_gone_ms": warm_gone_ms},
        "created": created,
        "create_errors": create_errors,
        "first_create_error": first_error,
        "create_seconds": secs(created_in),
        "all_running": all_running,
        "first_create_to_all_running_s": secs(phase),
        "capstan_cpu_cores": cpu,
        "create_request": stats(req),
        "create_to_bound": stats(bound),
        "create_to_started_event": stats(started),
        "create_to_running": stats(running),
        "create_to_ready": stats(ready),
        "bound_to_started_event": stats(bound_to_started),
        "started_event_to_running": stats(started_to_running),
        "per_pod_columns": ["name", "sent_ms", "sent_unix_ms", "request_ms", "bound_ms", "started_event_ms", "running_ms", "ready_ms"],
        "per_pod": per_pod,
        "watch_errors": watch_errors,
        "watch_reopens": reopens,
        "delete": deleted,
    }))
}

fn summary(v: &Value) -> String {
    let l = |k: &str| {
        let s = &v[k];
        format!(
            "p50 {} p90 {} p99 {} max {} mean {} ms",
            s["p50_ms"], s["p90_ms"], s["p99_ms"], s["max_ms"], s["mean_ms"]
        )
    };
    format!(
        "pods: {} created ({} errors) from {} connection(s), {} ms apart, in {} s; all Running: {} ({} s)\n\
         create→Running:        {}\n\
         create→Ready:          {}\n\
         create→bound:          {}\n\
         bound→Started event:   {}\n\
         Started event→Running: {}\n\
         create request:        {}\n\
         warm-up (image pull) {} ms; capstan {} cores; load average {} → {}; nproc {}; node reset: {}",
        v["created"],
        v["create_errors"],
        v["concurrency"],
        v["interval_ms"],
        v["create_seconds"],
        v["all_running"],
        v["first_create_to_all_running_s"],
        l("create_to_running"),
        l("create_to_ready"),
        l("create_to_bound"),
        l("bound_to_started_event"),
        l("started_event_to_running"),
        l("create_request"),
        v["warm_up"]["create_to_running_ms"],
        v["capstan_cpu_cores"],
        v["loadavg_start"],
        v["loadavg_end"],
        v["machine"]["nproc"],
        v["node_reset"],
    )
}

/// Runs `run` unless SIGINT or SIGTERM comes first.
async fn run_interruptible(o: &Opts, node: &Node, image: &str) -> anyhow::Result<Value> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    tokio::select! {
        r = run(o, node, image) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT)"),
        _ = term.recv() => bail!("interrupted (SIGTERM)"),
    }
}

/// Entry point of `capstan-bench pods` (`args` after the subcommand).
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let load_start = loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    eprintln!("starting docker-registry and pushing the busybox test image...");
    let registry = Registry::start(None).context("start docker-registry")?;
    let image = rt
        .block_on(push_busybox_image(&registry, "busybox", "1", None))
        .context("push the busybox test image")?;
    let mut node = Node::start(&o)?;
    eprintln!("capstan up (pid {}) ready in {} ms, bridge {}", node.pid, node.ready_ms, node.bridge);
    let result = rt.block_on(run_interruptible(&o, &node, &image));
    let alive = node.alive();
    let ready_ms = node.ready_ms;
    let logs = node.log_counts();
    if let Some(p) = &o.save_log {
        if let Err(e) = std::fs::write(p, node.log_text()) {
            eprintln!("cannot write {}: {e}", p.display());
        }
    }
    let reset = node.shutdown();
    drop(node);
    drop(registry);
    let mut v = result?;
    v["pods"] = json!(o.pods);
    v["concurrency"] = json!(o.concurrency);
    v["interval_ms"] = json!(o.interval.as_millis() as u64);
    v["seccomp_default"] = json!(o.seccomp_default);
    v["image"] = json!(image);
    v["pod_cidr"] = json!(o.pod_cidr);
    v["capstan_ready_ms"] = json!(ready_ms);
    v["capstan_alive_at_end"] = json!(alive);
    v["logs"] = logs;
    v["node_reset"] = json!(match &reset {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    });
    v["machine"] = machine();
    v["loadavg_start"] = json!(load_start);
    v["loadavg_end"] = json!(loadavg());
    println!("{v}");
    eprintln!("{}", summary(&v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cidr_addresses() {
        assert_eq!(cidr_hosts("10.124.0.0/22").unwrap(), 1024);
        assert_eq!(cidr_hosts("10.0.0.0/30").unwrap(), 4);
        for bad in [
            "10.124.0.0",
            "10.124.0.0/",
            "10.124.0.0/7",
            "10.124.0.0/31",
            "x/24",
            "::1/120",
            "10.0.0.0/99999",
        ] {
            assert!(cidr_hosts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_flags() {
        let parse = |a: &[&str]| parse_args(a.iter().map(|s| s.to_string()));
        assert!(parse(&["--pods", "0"]).is_err());
        assert!(parse(&["--pods", "-1"]).is_err());
        assert!(parse(&["--pods", "2000"]).is_err(), "2000 pods do not fit a /22");
        assert!(parse(&["--pods", "2000", "--pod-cidr", "10.124.0.0/20"]).is_ok());
        assert!(parse(&["--interval-ms", "18446744073709551615"]).is_err());
        assert!(parse(&["--timeout", "0"]).is_err());
        assert!(parse(&["--concurrency"]).is_err());
        assert!(parse(&["--what"]).is_err());
    }

    #[test]
    fn nearest_rank_statistics() {
        let v = stats((1..=50).map(f64::from).collect());
        assert_eq!(v["count"], 50);
        assert_eq!(v["p50_ms"], 26.0);
        assert_eq!(v["p90_ms"], 45.0);
        assert_eq!(v["p99_ms"], 50.0);
        assert_eq!(v["max_ms"], 50.0);
        assert_eq!(v["mean_ms"], 25.5);
        let empty = stats(vec![f64::NAN]);
        assert_eq!(empty["count"], 0);
        assert!(empty["p50_ms"].is_null());
    }
}
