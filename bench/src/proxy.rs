//! `capstan-bench proxy`: the node agent's service proxy, from an EndpointSlice change to
//! the rule being in place.
//!
//! Drives the proxier of `capstan-kubelet` (the same code the node agent runs, minus the
//! informers) against the real kernel through the real `nft`, in a table of its own
//! (`capstan-cpbench-proxy`, for a pod bridge `cpbench-proxy` that does not exist, so its
//! rules match no traffic; ClusterIPs in 10.252.0.0/16, endpoints in 10.253.0.0/16). For
//! each size (`--small` then `--services` Services, each with one port and `--endpoints`
//! ready endpoints in one EndpointSlice):
//!
//! 1. the table is built from scratch (one transaction; timed);
//! 2. `--changes` times: one random Service's slice gets one endpoint replaced by a new
//!    address; time = handing the new slice to the proxier → its sync returned (the `nft`
//!    transaction committed: the rule is in the kernel). After the last change, the new
//!    endpoint's chain is read back with `nft list chain` as a check.
//!
//! The ratio of the two sizes' single-change medians shows whether a change costs in
//! proportion to the changed Service or to the table. One JSON object goes to stdout, a
//! summary to stderr; the table is deleted at the end (and on failure). Needs root and `nft`.

use crate::pods::{loadavg, machine, stats};
use anyhow::{bail, Context};
use capstan_kubelet::proxy::model::Ipv4Net;
use capstan_kubelet::proxy::{Nft, Proxier, Table};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: capstan-bench proxy [--services N] [--small N] [--endpoints E] [--changes K]

  --services N    Services of the large table (default 1000)
  --small N       Services of the small table (default 100)
  --endpoints E   ready endpoints per Service (default 10)
  --changes K     single-endpoint changes timed per size (default 200)

Needs root and nft (Debian package nftables).";

const BRIDGE: &str = "cpbench-proxy";

struct Opts {
    services: usize,
    small: usize,
    endpoints: usize,
    changes: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts { services: 1000, small: 100, endpoints: 10, changes: 200 };
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--services" => o.services = value()?.parse().context("--services wants a number")?,
            "--small" => o.small = value()?.parse().context("--small wants a number")?,
            "--endpoints" => o.endpoints = value()?.parse().context("--endpoints wants a number")?,
            "--changes" => o.changes = value()?.parse().context("--changes wants a number")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.services == 0 || o.small == 0 || o.endpoints == 0 || o.endpoints > 250 {
        bail!("--services and --small must be at least 1, --endpoints 1 to 250");
    }
    if o.services.max(o.small) > 65_000 {
        bail!("at most 65000 Services (one /16 of ClusterIPs)");
    }
    Ok(o)
}

fn table() -> anyhow::Result<Table> {
    let cidr = |s: &str| Ipv4Net::parse(s).with_context(|| format!("bad CIDR {s}"));
    Ok(Table {
        name: Table::name_for_bridge(BRIDGE),
        bridge: BRIDGE.into(),
        pod_cidr: cidr("10.253.0.0/16")?,
        service_cidr: Some(cidr("10.252.0.0/16")?),
    })
}

fn service(i: usize) -> Value {
    json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench", "resourceVersion": "1"},
        "spec": {"clusterIP": format!("10.252.{}.{}", i / 256, i % 256),
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
}

/// Endpoint addresses of Service `i`: `generation` picks a fresh address for endpoint 0.
fn slice(i: usize, endpoints: usize, generation: usize) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            let n = if e == 0 { generation * endpoints } else { e };
            // 10.253.<x>.<y>: unique per (service, n) within the /16 for the sizes allowed.
            let host = (i * 251 + n) % 65_000 + 1;
            json!({"addresses": [format!("10.253.{}.{}", host / 256, host % 256)],
                   "conditions": {"ready": true, "serving": true, "terminating": false},
                   "nodeName": "bench-node"})
        })
        .collect();
    json!({
        "metadata": {"name": format!("svc-{i}-x"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    })
}

/// A small deterministic generator (xorshift), so runs pick the same Services.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn scenario(o: &Opts, services: usize, nft: &Nft) -> anyhow::Result<Value> {
    let mut p = Proxier::new(table()?, "bench-node", nft.clone(), None);
    for i in 0..services {
        p.service_changed(&format!("bench/svc-{i}"), Some(Arc::new(service(i))));
        p.slice_changed(&format!("bench/svc-{i}-x"), Some(Arc::new(slice(i, o.endpoints, 0))));
    }
    let started = Instant::now();
    let report = p.sync().await.context("building the table")?;
    let build_ms = ms(started.elapsed());
    if !report.full || p.programmed_services() != services {
        bail!("the first sync programmed {} of {services} Services", p.programmed_services());
    }
    let script_bytes = report.script_bytes;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut times = Vec::with_capacity(o.changes);
    let mut bytes = Vec::with_capacity(o.changes);
    let mut last = None;
    for generation in 1..=o.changes {
        let i = rng.below(services);
        let new = Arc::new(slice(i, o.endpoints, generation));
        let t = Instant::now();
        p.slice_changed(&format!("bench/svc-{i}-x"), Some(new.clone()));
        let r = p.sync().await.context("a single change")?;
        times.push(ms(t.elapsed()));
        if r.full || r.changed != 1 {
            bail!("a single change touched {} Services (full: {})", r.changed, r.full);
        }
        bytes.push(r.script_bytes as f64);
        last = Some((i, new));
        // Chains a change leaves unused are deleted a second later in the agent; here after
        // every change, outside the timed part.
        p.delete_stale(Duration::ZERO).await.context("deleting unused chains")?;
    }
    // The last change is in the kernel.
    if let Some((i, s)) = last {
        let ip = s["endpoints"][0]["addresses"][0].as_str().unwrap_or_default().to_string();
        let chain = format!("endpoint-bench/svc-{i}/tcp/http__{ip}/8080");
        let out = tokio::process::Command::new("nft")
            .args(["list", "chain", "ip", &table()?.name, &chain])
            .output()
            .await
            .context("nft list chain")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains(&format!("dnat to {ip}:8080")) {
            bail!("the last change is not in the kernel: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let rules = {
        let out = tokio::process::Command::new("nft")
            .args(["-a", "list", "table", "ip", &table()?.name])
            .output()
            .await
            .context("nft list table")?;
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("# handle")).count()
    };
    Ok(json!({
        "services": services,
        "endpoints_per_service": o.endpoints,
        "table_objects": rules,
        "build_ms": (build_ms * 10.0).round() / 10.0,
        "build_script_bytes": script_bytes,
        "change": stats(times),
        "change_script_bytes_mean": bytes.iter().sum::<f64>() / bytes.len().max(1) as f64,
    }))
}

async fn delete_table(nft: &Nft) {
    if let Ok(t) = table() {
        let _ = nft.delete_table(&t.name).await;
    }
}

async fn run(o: &Opts) -> anyhow::Result<Value> {
    let nft = Nft::find().context("finding nft")?;
    let load_start = loadavg();
    let small = scenario(o, o.small, &nft).await;
    let large = match &small {
        Ok(_) => scenario(o, o.services, &nft).await,
        Err(_) => Err(anyhow::anyhow!("skipped")),
    };
    delete_table(&nft).await;
    let (small, large) = (small?, large?);
    let ratio = match (large["change"]["p50_ms"].as_f64(), small["change"]["p50_ms"].as_f64()) {
        (Some(l), Some(s)) if s > 0.0 => Some(((l / s) * 100.0).round() / 100.0),
        _ => None,
    };
    Ok(json!({
        "benchmark": "proxy",
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "changes": o.changes,
        "small": small,
        "large": large,
        "change_p50_ratio_large_to_small": ratio,
    }))
}

fn summary(v: &Value) -> String {
    let line = |s: &Value| {
        format!(
            "{} Services x {} endpoints ({} objects): build {} ms; one change p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            s["services"],
            s["endpoints_per_service"],
            s["table_objects"],
            s["build_ms"],
            s["change"]["p50_ms"],
            s["change"]["p90_ms"],
            s["change"]["p99_ms"],
            s["change"]["max_ms"]
        )
    };
    format!(
        "proxy sync, {} changes per size:\n  {}\n  {}\n  p50 ratio large/small: {}; load average {} → {}",
        v["changes"],
        line(&v["small"]),
        line(&v["large"]),
        v["change_p50_ratio_large_to_small"],
        v["loadavg_start"],
        v["loadavg_end"]
    )
}

/// Entry point of `capstan-bench proxy` (`args` after the subcommand).
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse_args(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v = rt.block_on(async {
        tokio::select! {
            r = run(&o) => r,
            _ = tokio::signal::ctrl_c() => {
                if let Ok(nft) = Nft::find() {
                    delete_table(&nft).await;
                }
                bail!("interrupted (SIGINT)")
            }
        }
    })?;
    println!("{v}");
    eprintln!("{}", summary(&v));
    Ok(())
}
