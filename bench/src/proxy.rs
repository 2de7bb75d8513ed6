//! `capstan-bench proxy`: the node agent's service proxy, from an EndpointSlice change to
//! the rule being in place.
//!
//! Drives the proxier of `capstan-nftproxy` (the same code the node agent runs, minus the
//! informers) against the real kernel through the real `nft`, in a table of its own
//! (`capstan-cpbench-proxy`, for a pod bridge `cpbench-proxy` that does not exist, so its
//! rules match no traffic; ClusterIPs in 10.252.0.0/16, endpoints in 10.253.0.0/16). For
//! each size (`--small` then `--services` Services, each with one port and `--endpoints`
//! ready endpoints in one EndpointSlice):
//!
//! 1. the table is built from scratch (one transaction; timed);
//! 2. `--changes` times: one random Service's slice gets one endpoint replaced by a new
//!    address; time = handing the new slice to the proxier → its sync returned (the `nft`
//!    transaction committed: the rule is in the kernel). After the last change, the
//!    Service's chain is read back with `nft list chain` as a check.
//!
//! The ratio of the two sizes' single-change medians shows whether a change costs in
//! proportion to the changed Service or to the table.
//!
//! With `--e2e`, also the whole path on a real node: `capstan up` (its node's proxy on, pod
//! bridge `cpbench<pid>`) gets `--services` selector-less Services and their EndpointSlices
//! over HTTPS; once its table serves all of them, `--changes` times one slice is patched
//! (one endpoint replaced) and the time from sending the PATCH to `nft monitor` showing the
//! rule with the new endpoint is recorded (API write, event relay, bus, informer, proxy,
//! `nft`). The node is stopped and `capstan node-reset` run at the end. One JSON object goes to stdout, a
//! summary to stderr; the table is deleted at the end (and on failure). Needs root and `nft`.

use crate::pods::{loadavg, machine, stats};
use anyhow::{bail, Context};
use capstan_nftproxy::model::Ipv4Net;
use capstan_nftproxy::{Nft, Proxier, Table};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: capstan-bench proxy [--services N] [--small N] [--endpoints E] [--changes K]
                           [--e2e] [--capstan PATH]

  --services N    Services of the large table (default 1000)
  --small N       Services of the small table (default 100)
  --endpoints E   ready endpoints per Service (default 10)
  --changes K     single-endpoint changes timed per size (default 200)
  --e2e           also time EndpointSlice PATCH → rule in the kernel on `capstan up`'s node
  --capstan PATH  the capstan binary for --e2e (default: next to this binary)

Needs root and nft (Debian package nftables).";

const BRIDGE: &str = "cpbench-proxy";

struct Opts {
    services: usize,
    small: usize,
    endpoints: usize,
    changes: usize,
    e2e: bool,
    capstan: std::path::PathBuf,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts {
        services: 1000,
        small: 100,
        endpoints: 10,
        changes: 200,
        e2e: false,
        capstan: capstan_bench::default_capstan(),
    };
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
            "--e2e" => o.e2e = true,
            "--capstan" => o.capstan = std::path::PathBuf::from(value()?),
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
        let chain = format!("service-bench/svc-{i}/tcp/http");
        let out = tokio::process::Command::new("nft")
            .args(["list", "chain", "ip", &table()?.name, &chain])
            .output()
            .await
            .context("nft list chain")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains(&format!("{ip} . 8080")) {
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
    let e2e = if o.e2e { Some(end_to_end(o, &nft).await?) } else { None };
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
        "end_to_end": e2e,
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
    let mut out = format!(
        "proxy sync, {} changes per size:\n  {}\n  {}\n  p50 ratio large/small: {}; load average {} → {}",
        v["changes"],
        line(&v["small"]),
        line(&v["large"]),
        v["change_p50_ratio_large_to_small"],
        v["loadavg_start"],
        v["loadavg_end"]
    );
    let e = &v["end_to_end"];
    if !e.is_null() {
        out.push_str(&format!(
            "\n  end to end on capstan up ({} Services x {} endpoints): table complete {} s after the creates; \
             PATCH → rule in the kernel p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} timed)",
            e["services"],
            e["endpoints_per_service"],
            e["table_complete_s"],
            e["change"]["p50_ms"],
            e["change"]["p90_ms"],
            e["change"]["p99_ms"],
            e["change"]["max_ms"],
            e["change"]["count"]
        ));
    }
    out
}

fn e2e_slice(i: usize, endpoints: usize, first: &str) -> Value {
    let mut s = slice(i, endpoints, 0);
    s["metadata"]["name"] = json!(format!("pb-svc-{i}-x"));
    s["metadata"]["namespace"] = json!("default");
    s["metadata"]["labels"] = json!({"kubernetes.io/service-name": format!("pb-svc-{i}")});
    s["endpoints"][0]["addresses"] = json!([first]);
    s
}

/// Counts the Services the node's table serves (elements of `service-ips` going to our chains).
async fn served(table: &str) -> usize {
    let out =
        tokio::process::Command::new("nft").args(["list", "map", "ip", table, "service-ips"]).output().await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).matches("goto service-default/pb-svc-").count())
        .unwrap_or(0)
}

async fn end_to_end(o: &Opts, nft: &Nft) -> anyhow::Result<Value> {
    use crate::pods::{request, wait_node_ready, Node};
    use capstan_bench::client::{Client, Kubeconfig};
    let mut node = Node::start_with(&o.capstan, "10.125.0.0/24", "warn", None)?;
    let result = async {
        let client = Client::new(&Kubeconfig::load(&node.kubeconfig).context("kubeconfig")?)?;
        wait_node_ready(&client, Duration::from_secs(60)).await?;
        let table = Table::name_for_bridge(&node.bridge);
        let mut conn = client.open().await.context("connect")?;
        let t0 = Instant::now();
        for i in 0..o.services {
            let svc = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("pb-svc-{i}")},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
            let r = request(
                &client,
                &mut conn,
                "POST",
                "/api/v1/namespaces/default/services",
                &serde_json::to_vec(&svc)?,
            )
            .await?;
            if r.status != 201 {
                bail!("creating Service {i}: {} {}", r.status, r.text());
            }
            let first = format!("10.254.{}.{}", i / 256, i % 256);
            let body = serde_json::to_vec(&e2e_slice(i, o.endpoints, &first))?;
            let r = request(
                &client,
                &mut conn,
                "POST",
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
                &body,
            )
            .await?;
            if r.status != 201 {
                bail!("creating EndpointSlice {i}: {} {}", r.status, r.text());
            }
        }
        let created = Instant::now();
        let deadline = created + Duration::from_secs(120);
        while served(&table).await < o.services {
            if Instant::now() > deadline {
                bail!(
                    "the node's table serves {} of {} Services after 120 s",
                    served(&table).await,
                    o.services
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let complete_s = created.elapsed().as_secs_f64();
        let create_s = (created - t0).as_secs_f64();
        // Rule events as the kernel reports them, with the time they were read.
        let mut monitor = tokio::process::Command::new("nft")
            .args(["monitor", "rules"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("nft monitor")?;
        let stdout = monitor.stdout.take().context("nft monitor stdout")?;
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        // The monitor listens once it reports a rule added after it started.
        let probe = "capstan-bench-monitor-probe";
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let _ = nft
                    .run(&format!(
                        "add table ip {probe}\nadd chain ip {probe} c\nadd rule ip {probe} c counter\n"
                    ))
                    .await;
                let seen = tokio::time::timeout(Duration::from_millis(300), async {
                    while let Ok(Some(l)) = lines.next_line().await {
                        if l.contains(probe) {
                            return true;
                        }
                    }
                    false
                })
                .await;
                if seen == Ok(true) {
                    return;
                }
            }
        })
        .await;
        let _ = nft.delete_table(probe).await;
        ready.context("nft monitor reported nothing within 10 s")?;
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut times = Vec::new();
        for g in 0..o.changes {
            let i = rng.below(o.services);
            // 10.255.<g>: an address no earlier change used.
            let ip = format!("10.255.{}.{}", g / 256, g % 256 + 1);
            let patch = json!({"endpoints": e2e_slice(i, o.endpoints, &ip)["endpoints"]});
            let path = format!("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/pb-svc-{i}-x");
            if conn.is_closed() {
                conn = client.open().await.context("connect")?;
            }
            let sent = Instant::now();
            let r = conn
                .request(
                    "PATCH",
                    &path,
                    &[("Content-Type", "application/merge-patch+json"), ("Accept", "application/json")],
                    &serde_json::to_vec(&patch)?,
                )
                .await?;
            if r.status != 200 {
                bail!("patching slice {i}: {} {}", r.status, r.text());
            }
            let needle = format!("{ip} . 8080");
            let seen = tokio::time::timeout(Duration::from_secs(10), async {
                while let Ok(Some(l)) = lines.next_line().await {
                    if l.contains(&table) && l.contains(&needle) {
                        return Some(Instant::now());
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .with_context(|| format!("the rule with {ip} did not appear within 10 s"))?;
            times.push(ms(seen - sent));
        }
        let _ = monitor.kill().await;
        Ok(json!({
            "services": o.services,
            "endpoints_per_service": o.endpoints,
            "create_s": (create_s * 10.0).round() / 10.0,
            "table_complete_s": (complete_s * 10.0).round() / 10.0,
            "change": stats(times),
        }))
    }
    .await;
    let reset = node.shutdown();
    let v = result?;
    reset.map_err(|e| anyhow::anyhow!(e))?;
    Ok(v)
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
