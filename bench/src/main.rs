//! `capstan-bench api`: starts its own `capstan up` on a temporary data directory and a free
//! loopback port, measures ready time, create throughput and latency, GET and LIST latency,
//! watch delivery latency and the server's memory, prints one JSON object on stdout and a
//! short summary on stderr, and stops the server by its PID.
//!
//! With `--peer etcd` it first puts the same bytes into a local etcd with the same
//! concurrency and duration (module [`etcd`]) and prints `etcd` and `create_to_etcd_ratio`
//! beside capstan's figures.
//!
//! `capstan-bench sched` (module [`sched`]) measures scheduling throughput, Deployment
//! roll-out time and memory on simulated nodes.
//!
//! `capstan-bench pool` (module [`pool`]) measures a controller pool of 1, 2 and 3
//! members: throughput, how the work is split, failover after `kill -9` of a member.
//!
//! `capstan-bench pods` (module [`pods`]) measures pod start latency on the real node.
//!
//! `capstan-bench proxy` (module [`proxy`]) measures the service proxy's sync time.
//!
//! `capstan-bench rbac` (module [`rbac`]) measures what RBAC costs a non-admin user.
//!
//! `capstan-bench crd` (module [`crd`]) measures custom resources: CRD create to served,
//! creates/s of a custom object beside a ConfigMap.
//!
//! `capstan-bench webhook` (module [`webhook`]) measures the create latency one validating
//! admission webhook adds.
//!
//! `capstan-bench dns` (module [`dns`]) measures the node's cluster DNS against dnsmasq.
//!
//! `capstan-bench preempt` (module [`preempt`]) measures scheduling with preemption in play
//! on simulated nodes.

mod crd;
mod dns;
mod etcd;
mod pods;
mod pool;
mod preempt;
mod proxy;
mod quota;
mod rbac;
mod sched;
mod webhook;

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Connection, Kubeconfig, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: capstan-bench api [--capstan PATH] [--clients N] [--duration SECS] [--pods N] [--watch-events N] [--watchers N] [--peer etcd]
       capstan-bench sched --help (scheduling throughput and Deployment roll-out on simulated nodes)
       capstan-bench pool --help (controller pool of 1, 2, 3 members: throughput, split, failover)
       capstan-bench pods --help (pod start latency on the real node: create to Running)
       capstan-bench proxy --help (service proxy: EndpointSlice change to rule in place)
       capstan-bench dns --help (the node's cluster DNS: queries/s and p99 beside dnsmasq)
       capstan-bench rbac --help (creates/s and GETs/s of a non-admin user under RBAC vs the admin)
       capstan-bench crd --help (CRD create to served; custom object creates/s beside ConfigMaps)
       capstan-bench webhook --help (create latency added by one validating admission webhook)
       capstan-bench quota --help (ConfigMap creates/s with and without a ResourceQuota in the namespace)
       capstan-bench preempt --help (preemption throughput: a burst of high-priority pods on full simulated nodes)

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --clients N         concurrent HTTPS connections for creates and GETs (default 16)
  --duration SECS     longest time the create phase runs (default 10)
  --pods N            most pods the create phase creates (default 100000)
  --watch-events N    creates timed through a watch (default 1000)
  --watchers N        watches open at once, each timing every one of those creates (default 1)
  --peer etcd         first put the same pod bytes into a local etcd (Debian etcd-server, its
                      defaults, a temporary data dir) with the same connections and duration;
                      adds `etcd` and `create_to_etcd_ratio` (capstan creates/s over etcd puts/s)";

struct Opts {
    capstan: PathBuf,
    clients: usize,
    duration: Duration,
    pods: u64,
    watch_events: usize,
    watchers: usize,
    peer: Option<String>,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("api") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        _ => bail!("{USAGE}"),
    }
    let default_capstan = capstan_bench::default_capstan();
    let mut o = Opts {
        capstan: default_capstan,
        clients: 16,
        duration: Duration::from_secs(10),
        pods: 100_000,
        watch_events: 1000,
        watchers: 1,
        peer: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--clients" => o.clients = value()?.parse().context("--clients wants a number")?,
            "--duration" => {
                o.duration = Duration::from_secs_f64(value()?.parse().context("--duration wants seconds")?)
            }
            "--pods" => o.pods = value()?.parse().context("--pods wants a number")?,
            "--watch-events" => o.watch_events = value()?.parse().context("--watch-events wants a number")?,
            "--watchers" => o.watchers = value()?.parse().context("--watchers wants a number")?,
            "--peer" => match value()?.as_str() {
                "etcd" => o.peer = Some("etcd".into()),
                other => bail!("unknown peer {other} (only etcd)\n{USAGE}"),
            },
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 {
        bail!("--clients must be at least 1");
    }
    Ok(o)
}

/// The server under test.
struct Server {
    child: Option<Child>,
    pid: u32,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    ready_wall_ms: f64,
    ready_reported_ms: Option<f64>,
}

impl Server {
    fn start(bin: &Path) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("capstan-bench-").tempdir().context("create temp dir")?;
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["up", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            // The API alone: no real node (it would write its own objects meanwhile).
            .arg("--no-node")
            // CAPSTAN_BENCH_LOG overrides the server's log filter (e.g. to see the store's
            // `debug` group-commit figures).
            .env("CAPSTAN_LOG", std::env::var("CAPSTAN_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("failed to run {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("capstan is ready at ") {
                    let _ = tx.send((Instant::now(), line));
                }
            }
        });
        let mut server = Server {
            child: Some(child),
            pid,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            _dir: dir,
            ready_wall_ms: 0.0,
            ready_reported_ms: None,
        };
        let (at, line) =
            rx.recv_timeout(Duration::from_secs(60)).context("capstan up did not become ready in 60 s")?;
        server.ready_wall_ms = ms(at - t0);
        server.ready_reported_ms = line
            .split("(started in ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        Ok(server)
    }

    fn rss_kb(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Stops the server: SIGTERM, then SIGKILL after 5 s.
    fn stop(&mut self) -> Option<f64> {
        let mut child = self.child.take()?;
        let t0 = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let deadline = t0 + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Some(ms(t0.elapsed())),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    eprintln!("capstan did not exit 5 s after SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU seconds (user + system) a process used so far, from /proc/PID/stat (100 ticks/s).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    ms(sorted[i.min(sorted.len() - 1)])
}

fn latency_json(mut v: Vec<Duration>) -> Value {
    v.sort();
    json!({"count": v.len(), "p50_ms": percentile(&v, 0.5), "p99_ms": percentile(&v, 0.99),
           "max_ms": v.last().map(|d| ms(*d))})
}

fn pod(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }))
    .unwrap_or_default()
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const JSON_CT: (&str, &str) = ("Content-Type", "application/json");

async fn create(conn: &mut Connection, name: &str) -> anyhow::Result<Response> {
    Ok(conn.request("POST", PODS, &[JSON_CT, ("Accept", "application/json")], &pod(name)).await?)
}

/// Create phase: `clients` connections create pods until `duration` or `pods` is reached.
async fn create_phase(client: &Client, o: &Opts, server_pid: u32) -> anyhow::Result<(Value, Vec<String>)> {
    let mut conns = Vec::new();
    for _ in 0..o.clients {
        conns.push(client.open().await.context("connect")?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_seconds(&server_pid.to_string());
    let self0 = cpu_seconds("self");
    let t0 = Instant::now();
    let deadline = t0 + o.duration;
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        let errors = errors.clone();
        let max = o.pods;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut names = Vec::new();
            let mut first_error: Option<String> = None;
            let mut n = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                let name = format!("bench-{i}-{n}");
                n += 1;
                let s = Instant::now();
                match create(&mut conn, &name).await {
                    Ok(r) if r.status == 201 => {
                        lat.push(s.elapsed());
                        names.push(name);
                    }
                    Ok(r) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| format!("{}: {}", r.status, r.text()));
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert_with(|| e.to_string());
                        break;
                    }
                }
            }
            (lat, names, first_error)
        }));
    }
    let mut lat = Vec::new();
    let mut names = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let (l, n, e) = t.await?;
        lat.extend(l);
        names.extend(n);
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let server_cpu = cpu_seconds(&server_pid.to_string()).zip(cpu0).map(|(a, b)| a - b);
    let client_cpu = cpu_seconds("self").zip(self0).map(|(a, b)| a - b);
    let ok = lat.len();
    let mut v = latency_json(lat);
    v["per_sec"] = json!((ok as f64 / elapsed).round());
    v["seconds"] = json!((elapsed * 1000.0).round() / 1000.0);
    v["errors"] = json!(errors.load(Ordering::Relaxed));
    v["first_error"] = json!(first_error);
    v["server_cpu_cores"] = json!(server_cpu.map(|c| (c / elapsed * 100.0).round() / 100.0));
    v["bench_cpu_cores"] = json!(client_cpu.map(|c| (c / elapsed * 100.0).round() / 100.0));
    Ok((v, names))
}

/// GET of single pods from `clients` connections for `secs`.
async fn get_phase(
    client: &Client,
    clients: usize,
    names: Arc<Vec<String>>,
    secs: f64,
) -> anyhow::Result<Value> {
    if names.is_empty() {
        return Ok(json!(null));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let mut conn = client.open().await.context("connect")?;
        let names = names.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut k = i;
            while Instant::now() < deadline {
                let path = format!("{PODS}/{}", names[k % names.len()]);
                k = k.wrapping_mul(31).wrapping_add(7919);
                let s = Instant::now();
                match conn.request("GET", &path, &[("Accept", "application/json")], b"").await {
                    Ok(r) if r.status == 200 => lat.push(s.elapsed()),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let n = lat.len();
    let mut v = latency_json(lat);
    v["per_sec"] = json!((n as f64 / t0.elapsed().as_secs_f64()).round());
    v["errors"] = json!(errors);
    Ok(v)
}

/// One full LIST and one LIST paged by 500, three times each; medians.
async fn list_phase(client: &Client) -> anyhow::Result<Value> {
    let mut conn = client.open().await.context("connect")?;
    let mut full = Vec::new();
    let mut paged = Vec::new();
    let mut items = 0;
    let mut bytes = 0;
    let mut pages = 0;
    for _ in 0..3 {
        let s = Instant::now();
        let r = conn.request("GET", PODS, &[("Accept", "application/json")], b"").await?;
        full.push(s.elapsed());
        if r.status != 200 {
            bail!("list failed: {} {}", r.status, r.text());
        }
        bytes = r.body.len();
        items = r.json()?["items"].as_array().map(Vec::len).unwrap_or(0);

        let s = Instant::now();
        let mut cont = String::new();
        pages = 0;
        loop {
            let path = if cont.is_empty() {
                format!("{PODS}?limit=500")
            } else {
                format!("{PODS}?limit=500&continue={}", urlencode(&cont))
            };
            let r = conn.request("GET", &path, &[("Accept", "application/json")], b"").await?;
            if r.status != 200 {
                bail!("paged list failed: {} {}", r.status, r.text());
            }
            pages += 1;
            let v = r.json()?;
            cont = v["metadata"]["continue"].as_str().unwrap_or("").to_string();
            if cont.is_empty() {
                break;
            }
        }
        paged.push(s.elapsed());
    }
    full.sort();
    paged.sort();
    Ok(json!({"items": items, "bytes": bytes, "full_ms": percentile(&full, 0.5),
              "paged_500_ms": percentile(&paged, 0.5), "pages": pages}))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The name of a bench pod in an ADDED watch line, found without parsing the line (with
/// 1,000 watchers the bench would otherwise spend the server's CPU on JSON).
fn added_watch_pod(line: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#""name":"watch-"#;
    const ADDED: &[u8] = br#""type":"ADDED""#;
    if !line.windows(ADDED.len()).any(|w| w == ADDED) {
        return None;
    }
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len() - "watch-".len();
    let end = line[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&line[at..at + end]).ok()
}

/// Watch delivery: open `watchers` watches at the current revision, create `n` pods from a
/// few connections, time each from the create being sent to its ADDED event arriving at
/// each watcher (`n × watchers` samples).
async fn watch_phase(client: &Client, n: usize, writers: usize, watchers: usize) -> anyhow::Result<Value> {
    let mut conn = client.open().await.context("connect")?;
    let r = conn.request("GET", &format!("{PODS}?limit=1"), &[], b"").await?;
    let rv = r.json()?["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..watchers.max(1) {
        let watch = client
            .open()
            .await?
            .stream("GET", &format!("{PODS}?watch=true&resourceVersion={rv}&timeoutSeconds=600"), &[], b"")
            .await?;
        if watch.status != 200 {
            bail!("watch failed with {}", watch.status);
        }
        let sent = sent.clone();
        let mut watch = watch;
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut other = 0u64;
            while lat.len() < n {
                let line = match tokio::time::timeout(Duration::from_secs(30), watch.next_line()).await {
                    Ok(Ok(Some(l))) => l,
                    _ => break,
                };
                let at = Instant::now();
                if let Some(name) = added_watch_pod(&line) {
                    if let Some(t) = sent.lock().ok().and_then(|m| m.get(name).copied()) {
                        lat.push(at - t);
                        continue;
                    }
                }
                other += 1;
            }
            (lat, other)
        }));
    }
    let per = n.div_ceil(writers.max(1));
    let mut tasks = Vec::new();
    for w in 0..writers.max(1) {
        let mut conn = client.open().await?;
        let sent = sent.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = 0u64;
            for i in 0..per {
                if w * per + i >= n || done.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("watch-{w}-{i}");
                if let Ok(mut m) = sent.lock() {
                    m.insert(name.clone(), Instant::now());
                }
                match create(&mut conn, &name).await {
                    Ok(r) if r.status == 201 => {}
                    _ => errors += 1,
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    let (mut lat, mut other) = (Vec::new(), 0);
    for r in readers {
        let (l, o) = r.await?;
        lat.extend(l);
        other += o;
    }
    done.store(true, Ordering::Relaxed);
    let got = lat.len();
    let mut v = latency_json(lat);
    v["watchers"] = json!(watchers.max(1));
    v["missed"] = json!((n * watchers.max(1)).saturating_sub(got));
    v["create_errors"] = json!(errors);
    v["other_events"] = json!(other);
    v["writers"] = json!(writers);
    Ok(v)
}

async fn run(o: &Opts, server: &Server) -> anyhow::Result<Value> {
    let rss_ready = server.rss_kb();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = server.rss_kb();
    let kc = Kubeconfig::load(&server.kubeconfig)?;
    let client = Client::new(&kc)?;
    {
        let mut c = client.open().await?;
        let r = c.request("GET", "/api/v1/namespaces/default", &[], b"").await?;
        if r.status != 200 {
            bail!("namespace default: {} {}", r.status, r.text());
        }
    }
    eprintln!("creating pods with {} connections for up to {:?}...", o.clients, o.duration);
    let (create, names) = create_phase(&client, o, server.pid).await?;
    let rss_after_create = server.rss_kb();
    eprintln!("GET...");
    let get = get_phase(&client, o.clients, Arc::new(names), 5.0).await?;
    eprintln!("LIST...");
    let list = list_phase(&client).await?;
    eprintln!("watch...");
    let watch = watch_phase(&client, o.watch_events, 4.min(o.clients), o.watchers).await?;
    let rss_after = server.rss_kb();
    let mb = |kb: Option<u64>| kb.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
    Ok(json!({
        "clients": o.clients,
        "duration_s": o.duration.as_secs_f64(),
        "ready_wall_ms": server.ready_wall_ms,
        "ready_reported_ms": server.ready_reported_ms,
        "rss_at_ready_mb": mb(rss_ready),
        "rss_idle_mb": mb(rss_idle),
        "rss_after_creates_mb": mb(rss_after_create),
        "rss_after_load_mb": mb(rss_after),
        "create": create,
        "get": get,
        "list": list,
        "watch": watch,
    }))
}

fn summary(v: &Value) -> String {
    format!(
        "ready: {} ms wall ({} ms reported)\n\
         rss: {} MB idle, {} MB after load\n\
         create: {} /s over {} connections, p50 {} ms, p99 {} ms ({} ok, {} errors; server {} cores, bench {} cores)\n\
         get: {} /s, p50 {} ms, p99 {} ms\n\
         list: {} items ({} bytes) in {} ms; paged by 500: {} ms ({} pages)\n\
         watch: ADDED p50 {} ms, p99 {} ms ({} events, {} missed)",
        v["ready_wall_ms"],
        v["ready_reported_ms"],
        v["rss_idle_mb"],
        v["rss_after_load_mb"],
        v["create"]["per_sec"],
        v["clients"],
        v["create"]["p50_ms"],
        v["create"]["p99_ms"],
        v["create"]["count"],
        v["create"]["errors"],
        v["create"]["server_cpu_cores"],
        v["create"]["bench_cpu_cores"],
        v["get"]["per_sec"],
        v["get"]["p50_ms"],
        v["get"]["p99_ms"],
        v["list"]["items"],
        v["list"]["bytes"],
        v["list"]["full_ms"],
        v["list"]["paged_500_ms"],
        v["list"]["pages"],
        v["watch"]["p50_ms"],
        v["watch"]["p99_ms"],
        v["watch"]["count"],
        v["watch"]["missed"],
    )
}

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("sched") {
        return sched::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("pool") {
        return pool::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("pods") {
        return pods::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("proxy") {
        return proxy::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("crd") {
        return crd::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("preempt") {
        return preempt::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("quota") {
        return quota::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("webhook") {
        return webhook::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("rbac") {
        return rbac::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("dns") {
        return dns::main(std::env::args().skip(2));
    }
    let o = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    // The peer runs first and alone, so the two never compete for the CPU.
    let peer = match o.peer.as_deref() {
        Some("etcd") => {
            eprintln!(
                "etcd: putting pods' bytes with {} connections for up to {:?}...",
                o.clients, o.duration
            );
            let etcd = rt.block_on(etcd::Etcd::start())?;
            let v = rt.block_on(etcd::put_phase(&etcd, o.clients, o.duration, o.pods))?;
            drop(etcd);
            Some(v)
        }
        _ => None,
    };
    let mut server = Server::start(&o.capstan)?;
    let result = rt.block_on(run(&o, &server));
    let alive_after = server.child.as_mut().map(|c| matches!(c.try_wait(), Ok(None))).unwrap_or(false);
    let stop_ms = server.stop();
    let mut v = result?;
    v["server_alive_after_load"] = json!(alive_after);
    v["stop_ms"] = json!(stop_ms);
    if let Some(e) = peer {
        let ratio = v["create"]["per_sec"].as_f64().zip(e["per_sec"].as_f64()).filter(|(_, b)| *b > 0.0);
        v["create_to_etcd_ratio"] = json!(ratio.map(|(a, b)| (a / b * 100.0).round() / 100.0));
        v["etcd"] = e;
    }
    println!("{v}");
    eprintln!("{}", summary(&v));
    if v.get("etcd").is_some() {
        eprintln!(
            "etcd: {} puts/s, p50 {} ms, p99 {} ms ({} errors; etcd {} cores); capstan/etcd = {}",
            v["etcd"]["per_sec"],
            v["etcd"]["p50_ms"],
            v["etcd"]["p99_ms"],
            v["etcd"]["errors"],
            v["etcd"]["server_cpu_cores"],
            v["create_to_etcd_ratio"]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::added_watch_pod;

    #[test]
    fn finds_the_added_pod_without_parsing() {
        let line = br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"Pod","metadata":{"managedFields":[{"fieldsV1":{"k:{\"name\":\"c\"}":{}}}],"name":"watch-3-7","namespace":"default"}}}"#;
        assert_eq!(added_watch_pod(line), Some("watch-3-7"));
        let modified = br#"{"type":"MODIFIED","object":{"metadata":{"name":"watch-3-7"}}}"#;
        assert_eq!(added_watch_pod(modified), None);
        let other = br#"{"type":"ADDED","object":{"metadata":{"name":"bench-1"}}}"#;
        assert_eq!(added_watch_pod(other), None);
    }
}
