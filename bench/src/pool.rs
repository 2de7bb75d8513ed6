//! `capstan-bench pool`: the ReplicaSet/Deployment work of a controller pool of 1, 2 and
//! 3 `capstan controllers` members, each a separate process, over a real nats-server.
//!
//! For each member count (and each of `--runs` repetitions) a fresh cluster is started on
//! a temporary directory and free loopback ports: `nats-server -js`, `capstan gateway`,
//! `capstan scheduler`, `capstan sim-nodes --count NODES` and K `capstan controllers
//! --partitions P --member mI --lease-seconds L --metrics-addr 127.0.0.1:0`. Once the nodes
//! are Ready and the pool has settled (every partition Lease held, each member holding its
//! fair share), it measures:
//!
//! 1. **throughput**: `--namespaces` namespaces are created, each with one Deployment of
//!    `--replicas` replicas; the time from the first create until every Deployment reports
//!    all replicas available. Pods/s = namespaces × replicas / that time. CPU per process
//!    over the phase comes from /proc.
//! 2. **split**: each member's `/metrics` before and after: the partitions it holds
//!    (`capstan_controller_pool_partition_owned`) and the keys it accepted per partition
//!    (`capstan_controller_pool_keys_total`). `overlap_partitions` counts partitions whose
//!    keys more than one member accepted during the phase; the members' ownership gauges
//!    are also sampled every 200 ms, and `overlap_samples` counts (sample, partition)
//!    pairs owned by two members at once. Both must be 0.
//! 3. **failover** (2 members or more): the last member is `kill -9`ed; at once a probe
//!    Deployment whose key falls into one of its partitions is created. `partitions_s` is
//!    the time until every partition Lease is held and renewed by a survivor, `work_s`
//!    until the probe is available; `survivors_kept` says no partition moved between
//!    survivors.
//!
//! One JSON object goes to stdout (per member count: every run and the medians), a
//! summary to stderr; processes are stopped by PID; every wait is bounded.

use crate::sched::{self, Proc};
use anyhow::{bail, Context};
use capstan_bench::client::{Client, Kubeconfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: capstan-bench pool [--capstan PATH] [--nats-server PATH] [--members 1,2,3]
                          [--namespaces N] [--replicas M] [--nodes K] [--partitions P]
                          [--lease-seconds L] [--runs R] [--timeout SECS] [--skip-failover]

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --nats-server PATH  the nats-server binary (default /usr/sbin/nats-server)
  --members LIST      pool sizes to measure, comma-separated (default 1,2,3)
  --namespaces N      namespaces, one Deployment each (default 30)
  --replicas M        replicas of each Deployment (default 30)
  --nodes K           simulated nodes (default 50)
  --partitions P      partitions of the pool (default 12)
  --lease-seconds L   the pool's lease duration (default 3)
  --runs R            repetitions per pool size; medians are reported (default 3)
  --timeout SECS      longest wait of each phase (default 300)
  --skip-failover     do not kill a member";

const PARTITION_PREFIX: &str = "capstan-controllers-partition-";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
const JSON_CT: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json");

struct Opts {
    capstan: PathBuf,
    nats_server: PathBuf,
    members: Vec<usize>,
    namespaces: usize,
    replicas: usize,
    nodes: usize,
    partitions: u32,
    lease_seconds: u64,
    runs: usize,
    timeout: Duration,
    failover: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        capstan: capstan_bench::default_capstan(),
        nats_server: PathBuf::from("/usr/sbin/nats-server"),
        members: vec![1, 2, 3],
        namespaces: 30,
        replicas: 30,
        nodes: 50,
        partitions: 12,
        lease_seconds: 3,
        runs: 3,
        timeout: Duration::from_secs(300),
        failover: true,
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
            "--members" => {
                o.members = value()?
                    .split(',')
                    .map(|m| number(m.trim().to_string(), "--members"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--namespaces" => o.namespaces = number(value()?, "--namespaces")?,
            "--replicas" => o.replicas = number(value()?, "--replicas")?,
            "--nodes" => o.nodes = number(value()?, "--nodes")?,
            "--partitions" => o.partitions = number(value()?, "--partitions")? as u32,
            "--lease-seconds" => o.lease_seconds = number(value()?, "--lease-seconds")? as u64,
            "--runs" => o.runs = number(value()?, "--runs")?,
            "--timeout" => o.timeout = Duration::from_secs(number(value()?, "--timeout")? as u64),
            "--skip-failover" => o.failover = false,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.members.is_empty() || o.members.contains(&0) || o.namespaces == 0 || o.replicas == 0 || o.nodes == 0
    {
        bail!("--members, --namespaces, --replicas and --nodes must be at least 1");
    }
    if o.partitions == 0 || o.lease_seconds == 0 || o.runs == 0 {
        bail!("--partitions, --lease-seconds and --runs must be at least 1");
    }
    Ok(o)
}

/// The partition of a key: the pool's own function (capstan_actors::pool::partition_of,
/// FNV-1a of `namespace/name` modulo P), repeated here so the bench needs no actor crate.
fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// One pool member: its process, name and metrics address.
struct Member {
    proc: Proc,
    name: String,
    metrics: String,
}

struct Cluster {
    infra: Vec<Proc>,
    members: Vec<Member>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(o: &Opts, k: usize) -> anyhow::Result<Cluster> {
        let dir =
            tempfile::Builder::new().prefix("capstan-pool-bench-").tempdir().context("create temp dir")?;
        let data = dir.path().join("data");
        let wait = Duration::from_secs(60);
        let port = sched::free_port()?;
        let nats_url = format!("nats://127.0.0.1:{port}");
        let mut infra = Vec::new();
        let mut c = Command::new(&o.nats_server);
        c.arg("-js").arg("-sd").arg(dir.path().join("nats")).args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        infra.push(Proc::spawn("nats-server", c, &dir.path().join("nats.log"), None, wait)?.0);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let capstan = |role: &str| {
            let mut c = Command::new(&o.capstan);
            c.arg(role).args(["--nats", &nats_url]).env("CAPSTAN_LOG", "warn");
            c
        };
        let mut c = capstan("gateway");
        c.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&data);
        let log = dir.path().join("gateway.log");
        infra.push(Proc::spawn("gateway", c, &log, Some("capstan gateway listening on "), wait)?.0);
        let log = dir.path().join("scheduler.log");
        infra.push(
            Proc::spawn("scheduler", capstan("scheduler"), &log, Some("capstan scheduler running"), wait)?.0,
        );
        let mut c = capstan("sim-nodes");
        c.args(["--count", &o.nodes.to_string()]);
        let log = dir.path().join("sim-nodes.log");
        infra.push(Proc::spawn("sim-nodes", c, &log, Some("capstan sim-nodes running"), wait)?.0);
        let mut members = Vec::new();
        for i in 0..k {
            let name = format!("m{i}");
            let mut c = capstan("controllers");
            c.args(["--partitions", &o.partitions.to_string(), "--member", &name]).args([
                "--lease-seconds",
                &o.lease_seconds.to_string(),
                "--metrics-addr",
                "127.0.0.1:0",
            ]);
            let log = dir.path().join(format!("controllers-{name}.log"));
            let (proc, line) =
                Proc::spawn("controllers", c, &log, Some("capstan controllers metrics at "), wait)?;
            let metrics = line
                .split(" metrics at ")
                .nth(1)
                .and_then(|u| u.trim().strip_prefix("http://"))
                .and_then(|u| u.split('/').next())
                .context("metrics address of a member")?
                .to_string();
            members.push(Member { proc, name, metrics });
        }
        Ok(Cluster { infra, members, kubeconfig: data.join("admin.kubeconfig"), _dir: dir })
    }

    fn stop(&mut self) {
        for m in &mut self.members {
            m.proc.stop();
        }
        while let Some(mut p) = self.infra.pop() {
            p.stop();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET http://addr/metrics (plain HTTP/1.0, the members' metrics listener).
async fn scrape(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.ok().flatten()
}

/// `metric{partition="N"} V` lines of one metric: partition → value.
fn by_partition(text: &str, metric: &str) -> BTreeMap<u32, f64> {
    let prefix = format!("{metric}{{partition=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (p, v) = rest.split_once("\"}")?;
            Some((p.parse().ok()?, v.trim().parse().ok()?))
        })
        .collect()
}

/// The partition Leases: partition → (holder, renewTime).
async fn partition_leases(client: &Client) -> anyhow::Result<BTreeMap<u32, (String, String)>> {
    let mut conn = client.open().await?;
    let r = conn.request("GET", LEASES, &[ACCEPT], b"").await?;
    if r.status != 200 {
        bail!("list leases: {} {}", r.status, r.text());
    }
    let list: Value = serde_json::from_slice(&r.body).context("lease list")?;
    let mut out = BTreeMap::new();
    for l in list["items"].as_array().into_iter().flatten() {
        let Some(p) = l["metadata"]["name"].as_str().and_then(|n| n.strip_prefix(PARTITION_PREFIX)) else {
            continue;
        };
        let Ok(p) = p.parse() else { continue };
        let holder = l["spec"]["holderIdentity"].as_str().unwrap_or("").to_string();
        let renewed = l["spec"]["renewTime"].as_str().unwrap_or("").to_string();
        out.insert(p, (holder, renewed));
    }
    Ok(out)
}

/// Waits until every partition is held, each member holding its fair share.
async fn wait_settled(client: &Client, o: &Opts, members: &[String]) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let p = o.partitions as usize;
    let n = members.len();
    loop {
        let leases = partition_leases(client).await?;
        let held = leases.values().filter(|(h, _)| members.contains(h)).count();
        let fair = members.iter().all(|m| {
            let c = leases.values().filter(|(h, _)| h == m).count();
            c == p / n || c == p / n + 1
        });
        if held == p && fair {
            return Ok(sched::secs(t0.elapsed()));
        }
        if t0.elapsed() > o.timeout {
            bail!("the pool did not settle in {:?}: {leases:?}", o.timeout);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn deployment(ns: &str, name: &str, replicas: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "pool-bench"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }))
    .unwrap_or_default()
}

async fn create_namespace_and_deployment(
    client: &Client,
    ns: &str,
    name: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    let mut conn = client.open().await?;
    let body =
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
    let r = conn.request("POST", "/api/v1/namespaces", &[JSON_CT, ACCEPT], &body).await?;
    if r.status != 201 {
        bail!("create namespace {ns}: {} {}", r.status, r.text());
    }
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let r = conn.request("POST", &path, &[JSON_CT, ACCEPT], &deployment(ns, name, replicas)).await?;
    if r.status != 201 {
        bail!("create deployment {ns}/{name}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// Deployments labelled `app=pool-bench` with every replica available.
async fn available(client: &Client, replicas_of: impl Fn(&str) -> usize) -> anyhow::Result<usize> {
    let mut conn = client.open().await?;
    let r = conn
        .request("GET", "/apis/apps/v1/deployments?labelSelector=app%3Dpool-bench", &[ACCEPT], b"")
        .await?;
    if r.status != 200 {
        bail!("list deployments: {} {}", r.status, r.text());
    }
    let list: Value = serde_json::from_slice(&r.body).context("deployment list")?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or("");
            d["status"]["availableReplicas"].as_u64() == Some(replicas_of(ns) as u64)
        })
        .count())
}

/// Samples every member's ownership gauges until `stop`; counts (sample, partition)
/// pairs owned by more than one member.
fn sample_overlaps(addrs: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    tokio::spawn(async move {
        let mut samples = 0;
        let mut overlaps = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut owners: HashMap<u32, usize> = HashMap::new();
            for a in &addrs {
                if let Some(text) = scrape(a).await {
                    for (p, v) in by_partition(&text, "capstan_controller_pool_partition_owned") {
                        if v >= 1.0 {
                            *owners.entry(p).or_default() += 1;
                        }
                    }
                }
            }
            samples += 1;
            overlaps += owners.values().filter(|n| **n > 1).count();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (samples, overlaps)
    })
}

async fn one_run(o: &Opts, k: usize) -> anyhow::Result<Value> {
    let mut cluster = Cluster::start(o, k)?;
    let kc = Kubeconfig::load(&cluster.kubeconfig)?;
    let client = Client::new(&kc)?;
    sched::wait_nodes_ready(&client, o.nodes, o.timeout).await?;
    let names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
    let settle_s = wait_settled(&client, o, &names).await?;
    let addrs: Vec<String> = cluster.members.iter().map(|m| m.metrics.clone()).collect();
    let mut keys_before = Vec::new();
    for a in &addrs {
        keys_before
            .push(by_partition(&scrape(a).await.unwrap_or_default(), "capstan_controller_pool_keys_total"));
    }
    let procs: Vec<(String, u32)> = cluster
        .infra
        .iter()
        .map(|p| (p.name.to_string(), p.pid))
        .chain(cluster.members.iter().map(|m| (format!("controllers-{}", m.name), m.proc.pid)))
        .collect();
    let cpu0: Vec<_> = procs.iter().map(|(_, pid)| sched::cpu_snap(*pid)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_overlaps(addrs.clone(), stop.clone());
    // Throughput.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let next = Arc::new(Mutex::new(0usize));
    for _ in 0..8.min(o.namespaces) {
        let client = client.clone();
        let next = next.clone();
        let (n, m) = (o.namespaces, o.replicas);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut g = next.lock().unwrap_or_else(|e| e.into_inner());
                    let i = *g;
                    *g += 1;
                    i
                };
                if i >= n {
                    return anyhow::Ok(());
                }
                create_namespace_and_deployment(&client, &format!("pool-bench-{i}"), "web", m).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let created_s = sched::secs(t0.elapsed());
    let replicas = o.replicas;
    loop {
        let done = available(&client, |_| replicas).await?;
        if done >= o.namespaces {
            break;
        }
        if t0.elapsed() > o.timeout {
            bail!("only {done} of {} Deployments available after {:?}", o.namespaces, o.timeout);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (samples, overlap_samples) = sampler.await?;
    let cpu: Value = procs
        .iter()
        .zip(&cpu0)
        .map(|((name, pid), a)| (name.clone(), sched::cpu_delta(a, &sched::cpu_snap(*pid))["cores"].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    // Split: partitions held and keys accepted per member; partitions with keys from two.
    let leases = partition_leases(&client).await?;
    let mut split = Vec::new();
    let mut handled_by: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let after =
            by_partition(&scrape(&m.metrics).await.unwrap_or_default(), "capstan_controller_pool_keys_total");
        let mut keys = 0.0;
        for (p, v) in &after {
            let d = v - keys_before[i].get(p).copied().unwrap_or(0.0);
            if d > 0.0 {
                keys += d;
                handled_by.entry(*p).or_default().insert(m.name.clone());
            }
        }
        let held: Vec<u32> = leases.iter().filter(|(_, (h, _))| *h == m.name).map(|(p, _)| *p).collect();
        split.push(json!({"member": m.name, "partitions": held, "keys": keys}));
    }
    let overlap_partitions = handled_by.values().filter(|s| s.len() > 1).count();
    let pods = o.namespaces * o.replicas;
    let mut run = json!({
        "members": k,
        "settle_s": settle_s,
        "create_s": created_s,
        "seconds": sched::secs(Duration::from_secs_f64(seconds)),
        "pods_per_sec": (pods as f64 / seconds * 10.0).round() / 10.0,
        "deployments_per_sec": (o.namespaces as f64 / seconds * 100.0).round() / 100.0,
        "cpu_cores": cpu,
        "split": split,
        "overlap_partitions": overlap_partitions,
        "ownership_samples": samples,
        "overlap_samples": overlap_samples,
        "load_after": sched::loadavg(),
    });
    if o.failover && k >= 2 {
        run["failover"] = failover(o, &client, &mut cluster, &leases).await?;
    }
    cluster.stop();
    Ok(run)
}

/// Kills the last member and times the takeover of its partitions and of its work.
async fn failover(
    o: &Opts,
    client: &Client,
    cluster: &mut Cluster,
    leases: &BTreeMap<u32, (String, String)>,
) -> anyhow::Result<Value> {
    let victim = cluster.members.last().map(|m| m.name.clone()).context("no member")?;
    let survivors: Vec<String> =
        cluster.members.iter().map(|m| m.name.clone()).filter(|m| *m != victim).collect();
    let victim_parts: BTreeSet<u32> =
        leases.iter().filter(|(_, (h, _))| *h == victim).map(|(p, _)| *p).collect();
    let kept: BTreeMap<u32, String> =
        leases.iter().filter(|(_, (h, _))| *h != victim).map(|(p, (h, _))| (*p, h.clone())).collect();
    // A probe whose Deployment key is in one of the victim's partitions.
    let probe_ns = (0..10_000)
        .map(|j| format!("pool-failover-{j}"))
        .find(|ns| victim_parts.contains(&partition_of(&format!("{ns}/probe"), o.partitions)))
        .context("no probe namespace in the victim's partitions")?;
    let addrs: Vec<String> =
        cluster.members.iter().filter(|m| m.name != victim).map(|m| m.metrics.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_overlaps(addrs, stop.clone());
    if let Some(m) = cluster.members.last_mut() {
        m.proc.kill9();
    }
    let t0 = Instant::now();
    let killed_at = jiff::Timestamp::now();
    create_namespace_and_deployment(client, &probe_ns, "probe", 1).await?;
    let mut partitions_s = None;
    let mut work_s = None;
    let mut survivors_kept = true;
    while partitions_s.is_none() || work_s.is_none() {
        if t0.elapsed() > o.timeout {
            bail!(
                "failover did not complete in {:?} (partitions {partitions_s:?}, work {work_s:?})",
                o.timeout
            );
        }
        if partitions_s.is_none() {
            let now = partition_leases(client).await?;
            survivors_kept &= kept.iter().all(|(p, h)| now.get(p).is_none_or(|(nh, _)| nh == h));
            let all_fresh = now.len() == o.partitions as usize
                && now.values().all(|(h, renewed)| {
                    survivors.contains(h) && renewed.parse::<jiff::Timestamp>().is_ok_and(|t| t > killed_at)
                });
            if all_fresh {
                partitions_s = Some(sched::secs(t0.elapsed()));
            }
        }
        if work_s.is_none() {
            let mut conn = client.open().await?;
            let path = format!("/apis/apps/v1/namespaces/{probe_ns}/deployments/probe");
            let r = conn.request("GET", &path, &[ACCEPT], b"").await?;
            let d: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if d["status"]["availableReplicas"].as_u64() == Some(1) {
                work_s = Some(sched::secs(t0.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (samples, overlap_samples) = sampler.await?;
    Ok(json!({
        "killed": victim,
        "victim_partitions": victim_parts,
        "lease_seconds": o.lease_seconds,
        "partitions_s": partitions_s,
        "work_s": work_s,
        "survivors_kept": survivors_kept,
        "ownership_samples": samples,
        "overlap_samples": overlap_samples,
    }))
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

async fn run(o: &Opts) -> anyhow::Result<Value> {
    let mut results = Vec::new();
    for &k in &o.members {
        let mut runs = Vec::new();
        for r in 0..o.runs {
            eprintln!("pool of {k}: run {} of {} (load {})", r + 1, o.runs, sched::loadavg());
            runs.push(one_run(o, k).await?);
        }
        let pick = |f: &dyn Fn(&Value) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        results.push(json!({
            "members": k,
            "median": {
                "seconds": pick(&|r| r["seconds"].as_f64()),
                "pods_per_sec": pick(&|r| r["pods_per_sec"].as_f64()),
                "failover_partitions_s": pick(&|r| r["failover"]["partitions_s"].as_f64()),
                "failover_work_s": pick(&|r| r["failover"]["work_s"].as_f64()),
            },
            "overlap_partitions": runs.iter().filter_map(|r| r["overlap_partitions"].as_u64()).sum::<u64>(),
            "overlap_samples": runs.iter().map(|r| r["overlap_samples"].as_u64().unwrap_or(0)
                + r["failover"]["overlap_samples"].as_u64().unwrap_or(0)).sum::<u64>(),
            "runs": runs,
        }));
    }
    let base = results.first().and_then(|r| r["median"]["pods_per_sec"].as_f64());
    for r in &mut results {
        let v = r["median"]["pods_per_sec"].as_f64();
        r["speedup"] = json!(v.zip(base).map(|(v, b)| (v / b * 100.0).round() / 100.0));
    }
    Ok(json!({
        "namespaces": o.namespaces,
        "replicas": o.replicas,
        "pods": o.namespaces * o.replicas,
        "nodes": o.nodes,
        "partitions": o.partitions,
        "lease_seconds": o.lease_seconds,
        "runs_per_size": o.runs,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": results,
    }))
}

fn summary(v: &Value) -> String {
    let mut s = String::new();
    for r in v["results"].as_array().into_iter().flatten() {
        let split: Vec<String> = r["runs"][0]["split"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} {} partitions {} keys",
                    m["member"].as_str().unwrap_or(""),
                    m["partitions"].as_array().map(Vec::len).unwrap_or(0),
                    m["keys"]
                )
            })
            .collect();
        s.push_str(&format!(
            "{} member(s): {} pods/s (x{}), {} s; failover {} s partitions, {} s work; overlaps {}/{}; split [{}]\n",
            r["members"],
            r["median"]["pods_per_sec"],
            r["speedup"],
            r["median"]["seconds"],
            r["median"]["failover_partitions_s"],
            r["median"]["failover_work_s"],
            r["overlap_partitions"],
            r["overlap_samples"],
            split.join(", "),
        ));
    }
    s
}

pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let load_before = sched::loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    let mut v = rt.block_on(run(&o))?;
    v["load_before"] = json!(load_before);
    v["load_after"] = json!(sched::loadavg());
    println!("{v}");
    eprint!("{}", summary(&v));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_and_partitions() {
        let text = "# HELP x\ncapstan_controller_pool_partition_owned{partition=\"3\"} 1\n\
                    capstan_controller_pool_partition_owned{partition=\"4\"} 0\n\
                    capstan_controller_pool_keys_total{partition=\"3\"} 17\n";
        let owned = by_partition(text, "capstan_controller_pool_partition_owned");
        assert_eq!(owned.get(&3), Some(&1.0));
        assert_eq!(owned.get(&4), Some(&0.0));
        assert_eq!(by_partition(text, "capstan_controller_pool_keys_total").get(&3), Some(&17.0));
        assert!(partition_of("default/web", 12) < 12);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }
}
