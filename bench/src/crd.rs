//! `capstan-bench crd`: what custom resources cost. Starts `capstan up` (no node), creates
//! `--crds` CustomResourceDefinitions one after the other and times each from the POST's
//! answer to the first 200 on a list of its kind (served), then measures creates/s of a
//! custom object (schema with a pattern, bounds, an enum, defaults and a CEL rule) and of a
//! ConfigMap of the same JSON size, alternating `--rounds` times in one run, and prints the
//! medians and the ratio custom / ConfigMap as one JSON object (summary on stderr).

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Connection, Kubeconfig};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: capstan-bench crd [--capstan PATH] [--crds N] [--clients N] [--seconds S] [--rounds R]

  --capstan PATH   the capstan binary (default: next to this binary, else `capstan` on PATH)
  --crds N         CRDs created and timed until served (default 10)
  --clients N      concurrent HTTPS connections (default 16)
  --seconds S      length of each measured phase (default 5)
  --rounds R       custom / ConfigMap alternations; medians are reported (default 3)";

const GROUP: &str = "bench.example.com";

struct Opts {
    capstan: PathBuf,
    crds: usize,
    clients: usize,
    seconds: f64,
    rounds: usize,
}

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o =
        Opts { capstan: capstan_bench::default_capstan(), crds: 10, clients: 16, seconds: 5.0, rounds: 3 };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--crds" => o.crds = value()?.parse().context("--crds wants a number")?,
            "--clients" => o.clients = value()?.parse().context("--clients wants a number")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds wants a number")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds wants a number")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.rounds == 0 || o.crds == 0 {
        bail!("--crds, --clients and --rounds must be at least 1");
    }
    Ok(o)
}

pub(crate) struct Server {
    child: Child,
    pub(crate) dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20)); // polling a process's exit
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(o: &Opts) -> anyhow::Result<Server> {
    start_up(&o.capstan)
}

/// Starts `capstan up --no-node` on a temporary data directory and a free port (stopped when
/// the returned server is dropped).
pub(crate) fn start_up(capstan: &std::path::Path) -> anyhow::Result<Server> {
    let dir = tempfile::Builder::new().prefix("capstan-bench-crd-").tempdir()?;
    let mut child = Command::new(capstan)
        .args(["up", "--no-node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("CAPSTAN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to run {}", capstan.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("capstan is ready at ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).context("capstan up did not become ready in 60 s")?;
    Ok(Server { child, dir })
}

/// The CronTab of upstream's documentation, with validation and a CEL rule.
fn crd(plural: &str, kind: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{GROUP}")},
        "spec": {"group": GROUP, "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "required": ["cronSpec"],
                    "x-kubernetes-validations": [{"rule": "self.replicas <= 10 || self.policy == 'Allow'", "message": "too many replicas"}],
                    "properties": {
                        "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                        "image": {"type": "string", "maxLength": 64},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1},
                        "policy": {"type": "string", "enum": ["Allow", "Forbid"], "default": "Allow"}}}}}},
                "subresources": {"status": {}}}]},
    })
}

fn crontab(kind: &str, name: &str) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1"), "kind": kind, "metadata": {"name": name},
           "spec": {"cronSpec": "* * * * */5", "image": "registry.example.com/team/cron-image:1.0", "replicas": 3}})
}

/// A ConfigMap whose JSON is as long as the CronTab's with the same name.
fn config_map(name: &str, like: usize) -> Value {
    let mut cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": ""}});
    let pad = like.saturating_sub(cm.to_string().len());
    cm["data"]["k"] = json!("x".repeat(pad));
    cm
}

pub(crate) async fn post(conn: &mut Connection, path: &str, body: &Value) -> anyhow::Result<u16> {
    let headers = [("Content-Type", "application/json"), ("Accept", "application/json")];
    let r = conn.request("POST", path, &headers, &serde_json::to_vec(body)?).await?;
    Ok(r.status)
}

/// Creates CRD `i` and returns the time from the POST's answer until its kind lists.
async fn time_served(conn: &mut Connection, i: usize) -> anyhow::Result<Duration> {
    let plural = format!("crontab{i}s");
    let status = post(
        conn,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        &crd(&plural, &format!("CronTab{i}")),
    )
    .await?;
    if status != 201 {
        bail!("creating CRD {plural}: {status}");
    }
    let t = Instant::now();
    let path = format!("/apis/{GROUP}/v1/namespaces/default/{plural}");
    loop {
        let r = conn.request("GET", &path, &[("Accept", "application/json")], b"").await?;
        if r.status == 200 {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{plural} not served after 10 s");
        }
    }
}

/// Creates/s over `clients` connections for `seconds`: each connection POSTs what `make`
/// gives for a fresh name (`<tag>-<connection>-<n>`) until the time is up. Any answer but
/// 201 is an error.
pub(crate) async fn create_phase(
    client: &Client,
    clients: usize,
    seconds: f64,
    tag: &str,
    make: impl Fn(&str) -> (String, Value) + Clone + Send + 'static,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = client.open().await?;
        let (errors, tag, make) = (errors.clone(), tag.to_string(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = 0usize;
            while Instant::now() < deadline {
                let name = format!("{tag}-{c}-{n}");
                n += 1;
                let (path, body) = make(&name);
                match post(&mut conn, &path, &body).await {
                    Ok(201) => done += 1,
                    Ok(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        bail!("{tag}: {e} requests failed");
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// Creates/s of custom objects or ConfigMaps of the same size.
async fn phase(client: &Client, o: &Opts, custom: bool, tag: &str, like: usize) -> anyhow::Result<f64> {
    create_phase(client, o.clients, o.seconds, tag, move |name| {
        if custom {
            (format!("/apis/{GROUP}/v1/namespaces/default/crontab0s"), crontab("CronTab0", name))
        } else {
            ("/api/v1/namespaces/default/configmaps".to_string(), config_map(name, like))
        }
    })
    .await
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `capstan-bench crd`.
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse(args)?;
    let server = start(&o)?;
    let kc = Kubeconfig::load(&server.dir.path().join("admin.kubeconfig"))?;
    let client = Client::new(&kc)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let v = rt.block_on(async {
        let mut conn = client.open().await?;
        let mut served = Vec::new();
        for i in 0..o.crds {
            served.push(time_served(&mut conn, i).await?.as_secs_f64() * 1000.0);
        }
        let like = crontab("CronTab0", "a-0-0").to_string().len();
        let (mut cr, mut cm) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            eprintln!("round {}: custom object creates, ConfigMap creates", round + 1);
            cr.push(phase(&client, &o, true, &format!("c{round}"), like).await?.round());
            cm.push(phase(&client, &o, false, &format!("m{round}"), like).await?.round());
        }
        let (crm, cmm) = (median(cr.clone()), median(cm.clone()));
        let max_served = served.iter().copied().fold(0.0, f64::max);
        anyhow::Ok(json!({
            "crds": o.crds, "clients": o.clients, "seconds": o.seconds, "rounds": o.rounds, "object_bytes": like,
            "served_after_ms": {"median": (median(served.clone()) * 10.0).round() / 10.0,
                                "max": (max_served * 10.0).round() / 10.0},
            "creates_per_s": {"custom": crm, "configmap": cmm, "ratio": ((crm / cmm.max(1.0)) * 100.0).round() / 100.0,
                              "custom_runs": cr, "configmap_runs": cm},
        }))
    })?;
    drop(server);
    println!("{v}");
    eprintln!(
        "CRD served {} ms after its create (median of {}, max {} ms); creates/s: custom {} vs ConfigMap {} (ratio {})",
        v["served_after_ms"]["median"],
        v["crds"],
        v["served_after_ms"]["max"],
        v["creates_per_s"]["custom"],
        v["creates_per_s"]["configmap"],
        v["creates_per_s"]["ratio"]
    );
    Ok(())
}
