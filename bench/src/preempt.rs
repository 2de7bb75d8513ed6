//! `capstan-bench preempt`: scheduling throughput with preemption in play (issue 10).
//!
//! Starts its own cluster as `capstan-bench sched` does (`capstan up --sim-nodes N`, or the
//! separate roles with `--multiprocess`), waits until the N nodes are Ready, then:
//!
//! 1. **fill**: two PriorityClasses are created (`bench-low` 100, `bench-high` 100,000);
//!    `--low-per-node` K low-priority pods per node are created, each requesting
//!    ⌊7,600m / K⌋ of cpu (a simulated node has 8 cpu, so K pods fill every node to 95 %
//!    and no other pod fits beside them), until all are Running. Their pods bound/s is the
//!    plain scheduling throughput of the same run.
//! 2. **burst**: `--high` H high-priority pods are created as fast as the server takes
//!    them, each requesting 8,000m − the low request: on a full node exactly K − 1 victims
//!    must go for one to fit. Every preemptor is timed from its create request being sent
//!    to its `status.nominatedNodeName` and to its `spec.nodeName` showing up in a watch;
//!    victims are counted when their `deletionTimestamp` shows up and when they are gone.
//!
//! Preemptions/s = preemptors bound / (last one bound − first create sent). Expected
//! victims = H × (K − 1) (when H ≤ N); more means a node was preempted twice for one
//! place. One JSON object goes to stdout, a summary to stderr; processes are stopped by
//! PID. Every wait is bounded by `--timeout`.

use crate::sched::{latency_json, lock, secs, wait_nodes_ready, wait_progress, Cluster};
use anyhow::{bail, Context};
use capstan_bench::client::Client;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: capstan-bench preempt [--capstan PATH] [--nodes N] [--low-per-node K] [--high H]
                             [--clients C] [--timeout SECS] [--multiprocess] [--nats-server PATH]

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --nodes N           simulated nodes (default 1000; each has 8 cpu)
  --low-per-node K    low-priority pods per node filling it to 95 % of its cpu (default 4)
  --high H            high-priority pods of the burst, each needing K - 1 victims (default 1000)
  --clients C         connections creating pods (default 16)
  --timeout SECS      longest wait for the nodes, and for each phase (default 600)
  --multiprocess      run nats-server + gateway, controllers, scheduler, sim-nodes processes
  --nats-server PATH  the nats-server binary (default /usr/sbin/nats-server)";

const NS_PODS: &str = "/api/v1/namespaces/default/pods";
const CLASSES: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";
const JSON_CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json");
/// Label of every pod of this bench.
const APP: &str = "preempt-bench";
/// The cpu of a simulated node, in millicores.
const NODE_MILLICPU: u64 = 8000;

struct Opts {
    capstan: PathBuf,
    nats_server: PathBuf,
    nodes: usize,
    low_per_node: usize,
    high: usize,
    clients: usize,
    timeout: Duration,
    multiprocess: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        capstan: capstan_bench::default_capstan(),
        nats_server: PathBuf::from("/usr/sbin/nats-server"),
        nodes: 1000,
        low_per_node: 4,
        high: 1000,
        clients: 16,
        timeout: Duration::from_secs(600),
        multiprocess: false,
    };
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
            "--low-per-node" => o.low_per_node = number(value()?, "--low-per-node")?,
            "--high" => o.high = number(value()?, "--high")?,
            "--clients" => o.clients = number(value()?, "--clients")?,
            "--timeout" => o.timeout = Duration::from_secs(number(value()?, "--timeout")? as u64),
            "--multiprocess" => o.multiprocess = true,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.nodes == 0 || o.high == 0 {
        bail!("--clients, --nodes and --high must be at least 1");
    }
    if !(2..=18).contains(&o.low_per_node) {
        bail!("--low-per-node must be 2..=18 (a preemptor must need at least one victim)");
    }
    Ok(o)
}

/// The cpu request of a low pod and of a high pod, in millicores.
fn requests(k: usize) -> (u64, u64) {
    let low = NODE_MILLICPU * 95 / 100 / k as u64;
    (low, NODE_MILLICPU - low)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: Obj,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Obj {
    metadata: Meta,
    spec: Spec,
    status: Status,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Meta {
    name: String,
    resource_version: String,
    deletion_timestamp: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    nominated_node_name: Option<String>,
}

/// When a pod was first seen bound, Running, nominated, terminating and gone.
#[derive(Default, Clone)]
struct Seen {
    bound: Option<Instant>,
    node: String,
    running: Option<Instant>,
    nominated: Option<Instant>,
    nominated_node: String,
    terminating: Option<Instant>,
    gone: Option<Instant>,
}

#[derive(Default)]
struct Recorder {
    pods: HashMap<String, Seen>,
    bound: usize,
    running: usize,
    terminating: usize,
    gone: usize,
    errors: Vec<String>,
    reopens: usize,
}

/// Watches this bench's pods from the current revision until `deadline` (reopening from
/// the last revision seen when the stream ends).
async fn watch(
    client: &Client,
    deadline: Instant,
) -> anyhow::Result<(Arc<Mutex<Recorder>>, tokio::task::JoinHandle<()>)> {
    let mut rv = capstan_bench::watch::pods_revision(client).await.context("list pods")?;
    let mut stream = capstan_bench::watch::watch_pods(client, APP, &rv).await?;
    let rec = Arc::new(Mutex::new(Recorder::default()));
    let r2 = rec.clone();
    let client = client.clone();
    let task = tokio::spawn(async move {
        let rec = r2;
        while Instant::now() < deadline {
            let line = match tokio::time::timeout(Duration::from_secs(1), stream.next_line()).await {
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
                    match capstan_bench::watch::watch_pods(&client, APP, &rv).await {
                        Ok(s) => stream = s,
                        Err(e) => {
                            lock(&rec).errors.push(format!("reopen: {e}"));
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    continue;
                }
            };
            let at = Instant::now();
            let Ok(ev) = serde_json::from_slice::<Event>(&line) else { continue };
            if ev.kind == "ERROR" {
                lock(&rec).errors.push(String::from_utf8_lossy(&line).chars().take(300).collect());
                continue;
            }
            let o = ev.object;
            if !o.metadata.resource_version.is_empty() {
                rv = o.metadata.resource_version.clone();
            }
            if ev.kind == "BOOKMARK" {
                continue;
            }
            let mut g = lock(&rec);
            let g = &mut *g;
            let seen = g.pods.entry(o.metadata.name).or_default();
            if seen.bound.is_none() {
                if let Some(n) = o.spec.node_name.filter(|n| !n.is_empty()) {
                    seen.bound = Some(at);
                    seen.node = n;
                    g.bound += 1;
                }
            }
            if seen.running.is_none() && o.status.phase.as_deref() == Some("Running") {
                seen.running = Some(at);
                g.running += 1;
            }
            if seen.nominated.is_none() {
                if let Some(n) = o.status.nominated_node_name.filter(|n| !n.is_empty()) {
                    seen.nominated = Some(at);
                    seen.nominated_node = n;
                }
            }
            if seen.terminating.is_none() && (o.metadata.deletion_timestamp.is_some() || ev.kind == "DELETED")
            {
                seen.terminating = Some(at);
                g.terminating += 1;
            }
            if seen.gone.is_none() && ev.kind == "DELETED" {
                seen.gone = Some(at);
                g.gone += 1;
            }
        }
    });
    Ok((rec, task))
}

fn pod_body(name: &str, class: &str, millicpu: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": APP}},
        "spec": {"priorityClassName": class, "containers": [{"name": "c", "image": "nginx",
            "resources": {"requests": {"cpu": format!("{millicpu}m"), "memory": "64Mi"}}}]},
    }))
    .unwrap_or_default()
}

/// Creates `bodies` from `clients` connections as fast as they are answered; returns
/// when each create was sent (None: not sent), the request latencies and the errors.
async fn create_all(
    client: &Client,
    clients: usize,
    bodies: Arc<Vec<(String, Vec<u8>)>>,
    deadline: Instant,
) -> anyhow::Result<(Vec<Option<Instant>>, Vec<Duration>, Vec<String>)> {
    let t0 = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..bodies.len()).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.min(bodies.len()) {
        let mut conn = client.open().await.context("connect")?;
        let (bodies, sent, next) = (bodies.clone(), sent.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), Vec::new());
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((_, body)) = bodies.get(i) else { break };
                let s = Instant::now();
                sent[i].store((s - t0).as_nanos() as u64 + 1, Ordering::Relaxed);
                match conn.request("POST", NS_PODS, &[JSON_CT, ACCEPT], body).await {
                    Ok(r) if r.status == 201 => lat.push(s.elapsed()),
                    Ok(r) => errors.push(format!("{}: {}", r.status, r.text())),
                    Err(e) => {
                        errors.push(e.to_string());
                        break;
                    }
                }
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors.extend(e);
    }
    let at = sent
        .iter()
        .map(|s| match s.load(Ordering::Relaxed) {
            0 => None,
            n => Some(t0 + Duration::from_nanos(n - 1)),
        })
        .collect();
    Ok((at, lat, errors))
}

/// Waits until `done(recorder)` or `deadline`, printing progress every 5 s.
async fn wait_until(
    rec: &Mutex<Recorder>,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Recorder) -> bool,
) -> bool {
    wait_progress(rec, deadline, what, done, |r| {
        format!("{} bound, {} Running, {} terminating, {} gone", r.bound, r.running, r.terminating, r.gone)
    })
    .await
}

fn rate(n: usize, first: Option<Instant>, last: Option<Instant>) -> Option<f64> {
    match (first, last) {
        (Some(f), Some(l)) if l > f => Some((n as f64 / (l - f).as_secs_f64() * 10.0).round() / 10.0),
        _ => None,
    }
}

async fn run(o: &Opts, cluster: &mut Cluster) -> anyhow::Result<Value> {
    let kc = capstan_bench::client::Kubeconfig::load(&cluster.kubeconfig)?;
    let client = Client::new(&kc)?;
    eprintln!("waiting for {} nodes to be Ready...", o.nodes);
    let nodes_ready_s = wait_nodes_ready(&client, o.nodes, o.timeout).await?;
    eprintln!("  {} nodes Ready after {nodes_ready_s} s", o.nodes);
    let mut conn = client.open().await?;
    for (name, value) in [("bench-low", 100), ("bench-high", 100_000)] {
        let body =
            serde_json::to_vec(&json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value}))?;
        let r = conn.request("POST", CLASSES, &[JSON_CT, ACCEPT], &body).await?;
        if r.status != 201 {
            bail!("create PriorityClass {name}: {} {}", r.status, r.text());
        }
    }
    let (low_m, high_m) = requests(o.low_per_node);
    let deadline = Instant::now() + o.timeout * 2 + Duration::from_secs(60);
    let (rec, watch_task) = watch(&client, deadline).await?;

    // Phase 1: fill every node.
    let n_low = o.nodes * o.low_per_node;
    eprintln!("fill: {n_low} low-priority pods of {low_m}m cpu ({} per node)...", o.low_per_node);
    let low: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..n_low)
            .map(|i| {
                let name = format!("pl-{i}");
                let b = pod_body(&name, "bench-low", low_m);
                (name, b)
            })
            .collect(),
    );
    let cpu0 = cluster.cpu_snaps();
    let fill_deadline = Instant::now() + o.timeout;
    let (low_sent, low_lat, low_errors) = create_all(&client, o.clients, low.clone(), fill_deadline).await?;
    let created = low_lat.len();
    let filled = wait_until(&rec, fill_deadline, "fill", |r| r.running >= created).await;
    let fill_cpu = cluster.cpu_json(&cpu0);
    let fill = {
        let r = lock(&rec);
        let first = low_sent.iter().flatten().min().copied();
        let mut to_bound = Vec::new();
        let mut last = None;
        for (i, (name, _)) in low.iter().enumerate() {
            let (Some(s), Some(b)) = (low_sent[i], r.pods.get(name).and_then(|p| p.bound)) else { continue };
            to_bound.push(b.saturating_duration_since(s));
            last = last.max(Some(b));
        }
        let bound = to_bound.len();
        json!({
            "pods": n_low, "created": created, "create_errors": low_errors.len(),
            "first_create_error": low_errors.first(), "cpu_request_m": low_m,
            "create_request": latency_json(low_lat), "bound": bound, "all_running": filled,
            "bound_per_sec": rate(bound, first, last), "create_to_bound": latency_json(to_bound),
            "cpu": fill_cpu,
        })
    };
    eprintln!(
        "  fill: {} bound at {}/s, create→bound p50 {} ms p99 {} ms",
        fill["bound"],
        fill["bound_per_sec"],
        fill["create_to_bound"]["p50_ms"],
        fill["create_to_bound"]["p99_ms"]
    );
    if !filled {
        bail!("the fill phase did not finish: {fill}");
    }
    let rss_filled = cluster.rss();

    // Phase 2: the burst of preemptors.
    eprintln!("burst: {} high-priority pods of {high_m}m cpu...", o.high);
    let high: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..o.high)
            .map(|i| {
                let name = format!("ph-{i}");
                let b = pod_body(&name, "bench-high", high_m);
                (name, b)
            })
            .collect(),
    );
    let cpu0 = cluster.cpu_snaps();
    let burst_deadline = Instant::now() + o.timeout;
    let high_names: Vec<String> = high.iter().map(|(n, _)| n.clone()).collect();
    let (high_sent, high_lat, high_errors) =
        create_all(&client, o.clients, high.clone(), burst_deadline).await?;
    let made = high_lat.len();
    eprintln!("  created {made} preemptors ({} errors)", high_errors.len());
    let all_bound = wait_until(&rec, burst_deadline, "burst", |r| {
        high_names.iter().filter(|n| r.pods.get(*n).is_some_and(|p| p.bound.is_some())).count() >= made
    })
    .await;
    let burst_cpu = cluster.cpu_json(&cpu0);
    // Victims still going when the last preemptor bound are counted once they are gone.
    let want_victims = o.high.min(o.nodes) * (o.low_per_node - 1);
    let _ =
        wait_until(&rec, Instant::now() + Duration::from_secs(10), "victims", |r| r.gone >= r.terminating)
            .await;
    watch_task.abort();
    let r = lock(&rec);
    let first = high_sent.iter().flatten().min().copied();
    let (mut to_bound, mut to_nominated, mut nominated_to_bound) = (Vec::new(), Vec::new(), Vec::new());
    let (mut last_bound, mut nominated_elsewhere) = (None, 0);
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    let mut nominated_nodes: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for (i, name) in high_names.iter().enumerate() {
        let (Some(s), Some(p)) = (high_sent[i], r.pods.get(name)) else { continue };
        if let Some(b) = p.bound {
            to_bound.push(b.saturating_duration_since(s));
            last_bound = last_bound.max(Some(b));
            *per_node.entry(p.node.as_str()).or_default() += 1;
        }
        if let Some(n) = p.nominated {
            nominated_nodes.insert(p.nominated_node.as_str());
            to_nominated.push(n.saturating_duration_since(s));
            if let Some(b) = p.bound {
                nominated_to_bound.push(b.saturating_duration_since(n));
            }
            if p.bound.is_some() && p.node != p.nominated_node {
                nominated_elsewhere += 1;
            }
        }
    }
    let bound = to_bound.len();
    let victims: Vec<&Seen> = r
        .pods
        .iter()
        .filter(|(k, _)| k.starts_with("pl-"))
        .map(|(_, s)| s)
        .filter(|s| s.terminating.is_some())
        .collect();
    let victims_gone = victims.iter().filter(|s| s.gone.is_some()).count();
    let last_victim = victims.iter().filter_map(|s| s.gone).max();
    let burst = json!({
        "pods": o.high, "created": made, "create_errors": high_errors.len(),
        "first_create_error": high_errors.first(), "cpu_request_m": high_m,
        "create_request": latency_json(high_lat),
        "bound": bound, "all_bound": all_bound,
        "preemptions_per_sec": rate(bound, first, last_bound),
        "first_create_to_last_bound_s": first.zip(last_bound).map(|(f, l)| secs(l - f)),
        "create_to_nominated": latency_json(to_nominated),
        "nominated_to_bound": latency_json(nominated_to_bound),
        "create_to_bound": latency_json(to_bound),
        "bound_elsewhere_than_nominated": nominated_elsewhere,
        "nodes_with_more_than_one_preemptor": per_node.values().filter(|n| **n > 1).count(),
        "distinct_nominated_nodes": nominated_nodes.len(),
        "victims_expected": want_victims,
        "victims_evicted": victims.len(),
        "victims_gone": victims_gone,
        "victims_gone_per_sec": rate(victims_gone, first, last_victim),
        "cpu": burst_cpu,
        "watch_errors": r.errors.iter().take(3).collect::<Vec<_>>(),
        "watch_reopens": r.reopens,
    });
    Ok(json!({
        "nodes_ready_s": nodes_ready_s,
        "fill": fill,
        "burst": burst,
        "rss_filled_mb": rss_filled,
        "rss_after_burst_mb": cluster.rss(),
    }))
}

fn summary(v: &Value) -> String {
    let f = &v["fill"];
    let b = &v["burst"];
    format!(
        "mode {}, {} nodes (load average {} → {})\n\
         fill: {} low pods bound at {}/s, create→bound p50 {} ms p99 {} ms\n\
         burst: {} of {} preemptors bound, {} preemptions/s (first create → last bound {} s); \
         create→nominated p50 {} ms p99 {} ms; create→bound p50 {} ms p99 {} ms; \
         victims {} evicted ({} expected), {} gone; {} distinct nominated nodes\n\
         rss at end (MB): {}; peak (MB): {}",
        v["mode"],
        v["nodes"],
        v["loadavg_start"],
        v["loadavg_end"],
        f["bound"],
        f["bound_per_sec"],
        f["create_to_bound"]["p50_ms"],
        f["create_to_bound"]["p99_ms"],
        b["bound"],
        b["pods"],
        b["preemptions_per_sec"],
        b["first_create_to_last_bound_s"],
        b["create_to_nominated"]["p50_ms"],
        b["create_to_nominated"]["p99_ms"],
        b["create_to_bound"]["p50_ms"],
        b["create_to_bound"]["p99_ms"],
        b["victims_evicted"],
        b["victims_expected"],
        b["victims_gone"],
        b["distinct_nominated_nodes"],
        v["rss_end_mb"],
        v["rss_peak_mb"],
    )
}

/// Entry point of `capstan-bench preempt` (`args` after the subcommand).
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let load_start = crate::sched::loadavg();
    let mut cluster = Cluster::launch(&o.capstan, &o.nats_server, o.nodes, o.multiprocess)?;
    eprintln!("started in {} ms", cluster.ready_ms);
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
    v["low_per_node"] = json!(o.low_per_node);
    v["rss_end_mb"] = rss_end;
    v["rss_peak_mb"] = rss_peak;
    v["all_alive_at_end"] = json!(alive);
    v["logs"] = logs;
    v["loadavg_start"] = json!(load_start);
    v["loadavg_end"] = json!(crate::sched::loadavg());
    v["nproc"] = json!(std::thread::available_parallelism().map(|n| n.get()).ok());
    println!("{v}");
    eprintln!("{}", summary(&v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preemptor_needs_all_but_one_low_pod() {
        for k in 2..=18usize {
            let (low, high) = requests(k);
            let free = NODE_MILLICPU - low * k as u64;
            assert!(free < low && free < high, "nothing fits beside {k} low pods");
            // With k - 1 gone it fits; with k - 2 gone it does not.
            assert!(free + low * (k as u64 - 1) >= high);
            assert!(free + low * (k as u64 - 2) < high);
        }
    }
}
