//! `capstan-bench dns`: the node agent's cluster DNS against a peer DNS server on the same
//! machine, in one run.
//!
//! 1. Starts `dnsmasq` (Debian's `dnsmasq-base`) on 127.0.0.1 and a free port, answering
//!    `host-<i>.example.test` (`--names` of them) from a hosts file: the peer, and the node's
//!    upstream resolver.
//! 2. Starts `capstan up` with its real node on a temporary data directory; the node serves
//!    cluster DNS on 127.0.0.1 and a free port (`node.dns`: loopback needs no interface),
//!    with `--workers` threads, forwarding to the dnsmasq. Creates `--names` Services
//!    `svc-<i>` and waits until the node's DNS answers for the last one.
//! 3. Three phases of `--duration` seconds each (after a short warm-up), repeated
//!    `--rounds` times in turn (so background load falls on all three alike), from
//!    `--concurrency` UDP sockets each keeping one query in flight (a closed loop):
//!    * `cluster`: `svc-<i>.default.svc.cluster.local` A at the node's DNS;
//!    * `forwarded`: `host-<i>.example.test` A at the node's DNS (forwarded to dnsmasq);
//!    * `peer`: `host-<i>.example.test` A at dnsmasq directly.
//!
//!    Each answer is checked (id, NOERROR, one answer at least). Per phase and round:
//!    queries/s, the server's CPU seconds (from /proc) and so queries per CPU second,
//!    latency p50/p99; per phase the median over the rounds.
//! 4. Stops `capstan up` (SIGTERM), runs `capstan node-reset`, stops dnsmasq.
//!
//! One JSON object on stdout (with the ratios cluster/peer and forwarded/peer), a summary on
//! stderr. The load generator shares the machine with both servers.

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Kubeconfig};
use capstan_testkit::{dns_query, Dnsmasq};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const USAGE: &str =
    "usage: capstan-bench dns [--capstan PATH] [--names N] [--duration SECS] [--concurrency C]
                         [--workers W] [--threads T] [--rounds R]

  --capstan PATH      the capstan binary (default: next to this binary, else `capstan` on PATH)
  --names N           Services (cluster names) and peer names (default 1000)
  --duration SECS     length of each measured phase (default 5)
  --concurrency C     UDP sockets with a query in flight each (default 64)
  --workers W         the node DNS's worker threads (default 1, as dnsmasq's one thread)
  --threads T         load generator threads (default 1)
  --rounds R          times the three phases run, in turn (default 3; medians reported)

Needs root, runc, the CNI plugins and dnsmasq (dnsmasq-base).";

struct Opts {
    capstan: PathBuf,
    names: usize,
    duration: Duration,
    concurrency: usize,
    workers: usize,
    threads: usize,
    rounds: usize,
}

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        capstan: capstan_bench::default_capstan(),
        names: 1000,
        duration: Duration::from_secs(5),
        concurrency: 64,
        workers: 1,
        threads: 1,
        rounds: 3,
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
            "--names" => o.names = number(value()?, "--names")? as usize,
            "--duration" => o.duration = Duration::from_secs(number(value()?, "--duration")?),
            "--concurrency" => o.concurrency = number(value()?, "--concurrency")? as usize,
            "--workers" => o.workers = number(value()?, "--workers")? as usize,
            "--threads" => o.threads = number(value()?, "--threads")? as usize,
            "--rounds" => o.rounds = number(value()?, "--rounds")? as usize,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.names == 0 || o.names > 100_000 {
        bail!("--names must be from 1 to 100000");
    }
    if o.concurrency == 0 || o.workers == 0 || o.threads == 0 || o.rounds == 0 || o.duration.is_zero() {
        bail!("--concurrency, --workers, --threads, --rounds and --duration must be at least 1");
    }
    Ok(o)
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) a process used so far (100 ticks/s).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
    });
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    json!({"nproc": std::thread::available_parallelism().map(|n| n.get()).ok(), "cpu": cpu, "loadavg": load})
}

/// `capstan up` with its real node serving DNS on loopback; stopped and reset on drop.
struct Node {
    capstan: PathBuf,
    child: Option<Child>,
    pid: u32,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    fn start(o: &Opts, dns: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Node> {
        let dir =
            tempfile::Builder::new().prefix("capstan-dns-bench-").tempdir().context("create temp dir")?;
        let pid = std::process::id();
        let n = pid % 250;
        let yaml = format!(
            "node:\n  name: dns-bench\n  bridge: cpdb{n}\n  podCIDR: 10.126.{n}.0/24\n  cgroupParent: /capstan-dns-bench-{pid}\n  dns:\n    address: {}\n    port: {}\n    upstreams: [\"{upstream}\"]\n    workers: {}\n",
            dns.ip(),
            dns.port(),
            o.workers
        );
        let config = dir.path().join("capstan.yaml");
        std::fs::write(&config, yaml).context("write the config file")?;
        let log = std::fs::File::create(dir.path().join("up.log")).context("create the log file")?;
        let mut child = Command::new(&o.capstan)
            .args(["up", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env("CAPSTAN_LOG", "warn")
            .env("CAPSTAN_NO_NODE", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("failed to run {}", o.capstan.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let node = Node { capstan: o.capstan.clone(), pid: child.id(), child: Some(child), dir, config };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("capstan is ready at ") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("capstan up did not become ready in 60 s"))?;
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = Command::new(&self.capstan)
            .args(["node-reset", "--data-dir"])
            .arg(self.dir.path())
            .arg("--config")
            .arg(&self.config)
            .env("CAPSTAN_LOG", "warn")
            .output();
        if let Some(o) = out.ok().filter(|o| !o.status.success()) {
            eprintln!("capstan node-reset failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

fn query_bytes(name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    let mut n = Name::from_ascii(name)?;
    n.set_fqdn(true);
    m.add_query(Query::query(n, RecordType::A));
    Ok(m.to_vec()?)
}

/// What one phase measured.
struct Phase {
    queries: u64,
    errors: u64,
    timeouts: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// One socket's tally: answered, error answers, timeouts, latencies of the answered.
type Tally = (u64, u64, u64, Vec<Duration>);

/// One socket's closed loop: a query, its answer, the next query.
async fn client_loop(
    server: SocketAddr,
    queries: Arc<Vec<Vec<u8>>>,
    start: usize,
    until: Instant,
    record_after: Instant,
) -> anyhow::Result<Tally> {
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(server).await?;
    let (mut ok, mut errors, mut timeouts) = (0u64, 0u64, 0u64);
    let mut lat = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut i = start;
    let mut id: u16 = (start as u16).wrapping_mul(7919);
    while Instant::now() < until {
        let mut q = queries[i % queries.len()].clone();
        i = i.wrapping_add(7);
        id = id.wrapping_add(1);
        q[..2].copy_from_slice(&id.to_be_bytes());
        let t0 = Instant::now();
        sock.send(&q).await?;
        let answered = loop {
            match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                Ok(Ok(n)) if n >= 12 && buf[..2] == id.to_be_bytes() => break Some(n),
                // A late answer to an earlier query: keep waiting for ours.
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break None,
            }
        };
        let measured = t0 >= record_after;
        match answered {
            Some(_) if buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) >= 1 => {
                if measured {
                    ok += 1;
                    lat.push(t0.elapsed());
                }
            }
            Some(_) => errors += u64::from(measured),
            None => timeouts += u64::from(measured),
        }
    }
    Ok((ok, errors, timeouts, lat))
}

fn run_phase(o: &Opts, server: SocketAddr, queries: Vec<Vec<u8>>, pid: u32) -> anyhow::Result<(Phase, f64)> {
    let queries = Arc::new(queries);
    let warmup = Duration::from_millis(500);
    let t0 = Instant::now();
    let record_after = t0 + warmup;
    let until = record_after + o.duration;
    let per_thread = o.concurrency.div_ceil(o.threads);
    let mut handles = Vec::new();
    let cpu_start = std::sync::Mutex::new(None::<f64>);
    let cpu_start = Arc::new(cpu_start);
    {
        // The server's CPU time at the start of the measured part.
        let cpu_start = cpu_start.clone();
        std::thread::spawn(move || {
            std::thread::sleep(record_after.saturating_duration_since(Instant::now()));
            *cpu_start.lock().unwrap_or_else(|e| e.into_inner()) = cpu_seconds(pid);
        });
    }
    for t in 0..o.threads {
        let queries = queries.clone();
        let n = per_thread.min(o.concurrency.saturating_sub(t * per_thread));
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<Tally>> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for c in 0..n {
                    let q = queries.clone();
                    tasks.push(tokio::spawn(client_loop(
                        server,
                        q,
                        (t * per_thread + c) * 131,
                        until,
                        record_after,
                    )));
                }
                let mut out = Vec::new();
                for task in tasks {
                    out.push(task.await??);
                }
                Ok(out)
            })
        }));
    }
    let mut phase = Phase { queries: 0, errors: 0, timeouts: 0, latencies: Vec::new(), elapsed: o.duration };
    for h in handles {
        let results = h.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        for (ok, errors, timeouts, lat) in results {
            phase.queries += ok;
            phase.errors += errors;
            phase.timeouts += timeouts;
            phase.latencies.extend(lat);
        }
    }
    let cpu_end = cpu_seconds(pid);
    let cpu = match (*cpu_start.lock().unwrap_or_else(|e| e.into_inner()), cpu_end) {
        (Some(a), Some(b)) => b - a,
        _ => f64::NAN,
    };
    phase.elapsed = o.duration;
    Ok((phase, cpu))
}

fn summarize(name: &str, mut p: Phase, cpu: f64) -> Value {
    p.latencies.sort();
    let pct = |q: f64| {
        let n = p.latencies.len();
        (n > 0).then(|| {
            let d = p.latencies[(((n - 1) as f64 * q).round() as usize).min(n - 1)];
            (d.as_secs_f64() * 1e5).round() / 100.0
        })
    };
    let qps = p.queries as f64 / p.elapsed.as_secs_f64();
    let per_cpu = if cpu > 0.0 { p.queries as f64 / cpu } else { f64::NAN };
    json!({"phase": name, "queries": p.queries, "errors": p.errors, "timeouts": p.timeouts,
           "qps": qps.round(), "server_cpu_s": (cpu * 100.0).round() / 100.0,
           "qps_per_cpu_s": if per_cpu.is_finite() { json!(per_cpu.round()) } else { Value::Null },
           "p50_ms": pct(0.5), "p99_ms": pct(0.99)})
}

/// Creates Services `svc-0..n` in `default`.
async fn create_services(kubeconfig: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let kc = Kubeconfig::load(kubeconfig)?;
    let client = Client::new(&kc)?;
    let mut conn = client.open().await?;
    for i in 0..n {
        let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("svc-{i}")},
                          "spec": {"ports": [{"name": "http", "port": 80}]}});
        let r = conn
            .request(
                "POST",
                "/api/v1/namespaces/default/services",
                &[("Content-Type", "application/json"), ("Accept", "application/json")],
                body.to_string().as_bytes(),
            )
            .await?;
        if r.status != 201 {
            bail!("creating svc-{i}: HTTP {}: {}", r.status, r.text());
        }
        if conn.is_closed() {
            conn = client.open().await?;
        }
    }
    Ok(())
}

pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let hosts: Vec<(String, String)> = (0..o.names)
        .map(|i| {
            (
                format!("host-{i}.example.test"),
                format!("10.{}.{}.{}", 200 + i / 65536, (i / 256) % 256, i % 256),
            )
        })
        .collect();
    let host_refs: Vec<(&str, &str)> = hosts.iter().map(|(n, ip)| (n.as_str(), ip.as_str())).collect();
    let peer = Dnsmasq::start(&host_refs, &["example.test"]).context("start dnsmasq")?;
    let dns: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()?));
    let node = Node::start(&o, dns, peer.addr)?;
    eprintln!(
        "capstan up (pid {}) and dnsmasq (pid {}) started; creating {} Services",
        node.pid,
        peer.pid(),
        o.names
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t0 = Instant::now();
    rt.block_on(create_services(&node.dir.path().join("admin.kubeconfig"), o.names))?;
    let last = format!("svc-{}.default.svc.cluster.local", o.names - 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(m) = dns_query(dns, &last, RecordType::A, false) {
            if !m.answers.is_empty() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the node's DNS did not answer for {last} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let records_ready_s = t0.elapsed().as_secs_f64();
    let cluster: Vec<Vec<u8>> = (0..o.names)
        .map(|i| query_bytes(&format!("svc-{i}.default.svc.cluster.local")))
        .collect::<Result<_, _>>()?;
    let external: Vec<Vec<u8>> = hosts.iter().map(|(n, _)| query_bytes(n)).collect::<Result<_, _>>()?;
    let load_start = machine();
    let mut rounds: Vec<[Value; 3]> = Vec::new();
    for r in 0..o.rounds {
        let (c, c_cpu) = run_phase(&o, dns, cluster.clone(), node.pid)?;
        let (f, f_cpu) = run_phase(&o, dns, external.clone(), node.pid)?;
        let (p, p_cpu) = run_phase(&o, peer.addr, external.clone(), peer.pid())?;
        let row =
            [summarize("cluster", c, c_cpu), summarize("forwarded", f, f_cpu), summarize("peer", p, p_cpu)];
        eprintln!(
            "round {}: cluster {} q/s, forwarded {} q/s, peer {} q/s",
            r + 1,
            row[0]["qps"],
            row[1]["qps"],
            row[2]["qps"]
        );
        rounds.push(row);
    }
    // Per phase, the median of each figure over the rounds.
    let median_of = |i: usize, name: &str| -> Value {
        let mut out = json!({"phase": name});
        for k in ["qps", "qps_per_cpu_s", "p50_ms", "p99_ms", "server_cpu_s"] {
            let mut xs: Vec<f64> = rounds.iter().filter_map(|r| r[i][k].as_f64()).collect();
            xs.sort_by(f64::total_cmp);
            out[k] = xs.get(xs.len() / 2).map(|x| json!(x)).unwrap_or(Value::Null);
        }
        for k in ["queries", "errors", "timeouts"] {
            out[k] = json!(rounds.iter().filter_map(|r| r[i][k].as_u64()).sum::<u64>());
        }
        out
    };
    let (cluster, forwarded, peer_v) =
        (median_of(0, "cluster"), median_of(1, "forwarded"), median_of(2, "peer"));
    let ratio = |a: &Value, b: &Value, k: &str| match (a[k].as_f64(), b[k].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!((x / y * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    let v = json!({
        "bench": "dns",
        "settings": {"names": o.names, "duration_s": o.duration.as_secs(), "concurrency": o.concurrency,
                     "workers": o.workers, "threads": o.threads, "rounds": o.rounds},
        "machine": load_start,
        "records_ready_s": (records_ready_s * 100.0).round() / 100.0,
        "cluster": cluster, "forwarded": forwarded, "peer": peer_v,
        "ratio_cluster_to_peer": ratio(&cluster, &peer_v, "qps"),
        "ratio_cluster_to_peer_per_cpu": ratio(&cluster, &peer_v, "qps_per_cpu_s"),
        "ratio_forwarded_to_peer": ratio(&forwarded, &peer_v, "qps"),
        "rounds": rounds.iter().map(|r| json!(r)).collect::<Vec<_>>(),
        "load_end": machine()["loadavg"],
    });
    println!("{v}");
    for ph in [&v["cluster"], &v["forwarded"], &v["peer"]] {
        eprintln!(
            "{:<10} {:>8} q/s  {:>8} q/CPU-s  p50 {} ms  p99 {} ms  errors {} timeouts {}",
            ph["phase"].as_str().unwrap_or(""),
            ph["qps"],
            ph["qps_per_cpu_s"],
            ph["p50_ms"],
            ph["p99_ms"],
            ph["errors"],
            ph["timeouts"]
        );
    }
    eprintln!(
        "cluster/peer: {} (per CPU second {}), forwarded/peer: {}",
        v["ratio_cluster_to_peer"], v["ratio_cluster_to_peer_per_cpu"], v["ratio_forwarded_to_peer"]
    );
    drop(node);
    drop(peer);
    Ok(())
}
