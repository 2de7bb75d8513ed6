//! The etcd peer of `capstan-bench api --peer etcd`: the physical-limit anchor of the API
//! write path on this machine.
//!
//! The bench starts Debian's `etcd` (package `etcd-server`) on a temporary data directory
//! with its default settings, on free loopback ports, and puts the same bytes the create
//! phase POSTs (the pod's JSON, under `/registry/pods/default/<name>`) with the same number
//! of keep-alive connections for the same time. It talks to etcd's HTTP/JSON gateway
//! (`POST /v3/kv/put`, base64 key and value) with the bench's own HTTP/1.1 client: a gRPC
//! client crate would bring a second HTTP/2 stack (h2 0.4 beside actix's h2 0.3) into the
//! workspace. The gateway costs etcd some throughput over native gRPC (each put is decoded
//! from JSON and forwarded to etcd's gRPC server over loopback), so the ratio it gives
//! flatters capstan somewhat; `docs/PERFORMANCE.md` records `etcdctl check perf` beside it.

use anyhow::{bail, Context};
use base64::Engine as _;
use capstan_bench::client::Connection;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running etcd, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Etcd {
    child: Option<Child>,
    pid: u32,
    addr: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

impl Etcd {
    /// Starts `etcd` and waits until it answers `/health`.
    pub async fn start() -> anyhow::Result<Etcd> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .context("etcd not found: install Debian's etcd-server (scripts/deps.sh bench)")?;
        let dir =
            tempfile::Builder::new().prefix("capstan-bench-etcd-").tempdir().context("create temp dir")?;
        let (client, peer) = (free_port()?, free_port()?);
        let addr = format!("127.0.0.1:{client}");
        let client_url = format!("http://{addr}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).context("create etcd log")?;
        let child = Command::new(&bin)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to run {}", bin.display()))?;
        let etcd = Etcd { pid: child.id(), child: Some(child), addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Connection::plain(&etcd.addr).await {
                if let Ok(r) = c.request("GET", "/health", &[], b"").await {
                    if r.status == 200 && r.text().contains("true") {
                        return Ok(etcd);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy in 30 s (log in {})", etcd._dir.path().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The client address (`127.0.0.1:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The request body of one put: the key and value base64-encoded, as the gateway wants.
fn put_body(name: &str) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = format!("/registry/pods/default/{name}");
    serde_json::to_vec(&json!({"key": b64.encode(key), "value": b64.encode(crate::pod(name))}))
        .unwrap_or_default()
}

/// `clients` connections put pods' bytes until `duration` or `max` puts; the same figures
/// as the create phase (`per_sec`, `p50_ms`, `p99_ms`, ...).
pub async fn put_phase(etcd: &Etcd, clients: usize, duration: Duration, max: u64) -> anyhow::Result<Value> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Connection::plain(etcd.addr()).await.context("connect to etcd")?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pid = etcd.pid().to_string();
    let cpu0 = crate::cpu_seconds(&pid);
    let self0 = crate::cpu_seconds("self");
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let issued = issued.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut first_error: Option<String> = None;
            let mut n = 0u64;
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                let body = put_body(&format!("bench-{i}-{n}"));
                n += 1;
                let s = Instant::now();
                match conn.request("POST", "/v3/kv/put", &[("Content-Type", "application/json")], &body).await
                {
                    Ok(r) if r.status == 200 => lat.push(s.elapsed()),
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
            (lat, first_error)
        }));
    }
    let mut lat = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        if first_error.is_none() {
            first_error = e;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let server_cpu = crate::cpu_seconds(&pid).zip(cpu0).map(|(a, b)| a - b);
    let client_cpu = crate::cpu_seconds("self").zip(self0).map(|(a, b)| a - b);
    let ok = lat.len();
    let mut v = crate::latency_json(lat);
    v["per_sec"] = json!((ok as f64 / elapsed).round());
    v["seconds"] = json!((elapsed * 1000.0).round() / 1000.0);
    v["errors"] = json!(errors.load(Ordering::Relaxed));
    v["first_error"] = json!(first_error);
    v["server_cpu_cores"] = json!(server_cpu.map(|c| (c / elapsed * 100.0).round() / 100.0));
    v["bench_cpu_cores"] = json!(client_cpu.map(|c| (c / elapsed * 100.0).round() / 100.0));
    v["via"] = json!("etcd 3.4 HTTP/JSON gateway, POST /v3/kv/put, HTTP/1.1 keep-alive");
    Ok(v)
}
