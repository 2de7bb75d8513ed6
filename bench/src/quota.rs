//! `capstan-bench quota`: what a ResourceQuota costs the create path. Starts `capstan up`
//! (no node), makes two namespaces, one with a ResourceQuota that counts ConfigMaps (and
//! pods, limited far above what the run creates, so every create is admitted and charged),
//! then alternates `--rounds` phases of ConfigMap creates in each namespace and prints the
//! medians, the ratio with / without, and the median of each round's own ratio (which
//! cancels load that changes between rounds) as one JSON object (summary on stderr).

use crate::crd::{create_phase, median, post, start_up};
use anyhow::bail;
use capstan_bench::client::{Client, Kubeconfig};
use serde_json::json;
use std::path::PathBuf;

const USAGE: &str = "usage: capstan-bench quota [--capstan PATH] [--clients N] [--seconds S] [--rounds R]

  --capstan PATH   the capstan binary (default: next to this binary, else `capstan` on PATH)
  --clients N      concurrent HTTPS connections (default 16)
  --seconds S      length of each measured phase (default 5)
  --rounds R       without / with quota alternations; medians are reported (default 5)";

const FREE: &str = "bench-free";
const QUOTA: &str = "bench-quota";

struct Opts {
    capstan: PathBuf,
    clients: usize,
    seconds: f64,
    rounds: usize,
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts { capstan: capstan_bench::default_capstan(), clients: 16, seconds: 5.0, rounds: 5 };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--capstan" => o.capstan = value()?.into(),
            "--clients" => o.clients = value()?.parse()?,
            "--seconds" => o.seconds = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.rounds == 0 || o.seconds <= 0.0 {
        bail!("--clients, --rounds and --seconds must be positive\n{USAGE}");
    }
    Ok(o)
}

/// Runs `capstan-bench quota`.
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse(args)?;
    let server = start_up(&o.capstan)?;
    let kc = Kubeconfig::load(&server.dir.path().join("admin.kubeconfig"))?;
    let client = Client::new(&kc)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let v = rt.block_on(async {
        let mut conn = client.open().await?;
        for ns in [FREE, QUOTA] {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            let code = post(&mut conn, "/api/v1/namespaces", &body).await?;
            if code != 201 {
                bail!("creating namespace {ns}: {code}");
            }
        }
        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "counts"},
            "spec": {"hard": {"count/configmaps": "10000000", "configmaps": "10000000", "pods": "1000"}}});
        let code = post(&mut conn, &format!("/api/v1/namespaces/{QUOTA}/resourcequotas"), &quota).await?;
        if code != 201 {
            bail!("creating the ResourceQuota: {code}");
        }
        let make = |ns: &'static str| {
            move |name: &str| {
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                    "data": {"k": "v"}});
                (format!("/api/v1/namespaces/{ns}/configmaps"), body)
            }
        };
        let (mut free, mut charged, mut paired) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..o.rounds {
            // Who goes first alternates: creates slow down as the store fills.
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            eprintln!(
                "round {}: creates {}",
                round + 1,
                if order[0] { "with, then without a quota" } else { "without, then with a quota" }
            );
            let (mut f, mut q) = (0.0, 0.0);
            for with_quota in order {
                let (ns, tag) =
                    if with_quota { (QUOTA, format!("q{round}")) } else { (FREE, format!("f{round}")) };
                let r = create_phase(&client, o.clients, o.seconds, &tag, make(ns)).await?.round();
                if with_quota {
                    q = r;
                } else {
                    f = r;
                }
            }
            free.push(f);
            charged.push(q);
            paired.push(q / f.max(1.0));
        }
        let (fm, qm) = (median(free.clone()), median(charged.clone()));
        let r2 = |x: f64| (x * 100.0).round() / 100.0;
        anyhow::Ok(json!({
            "clients": o.clients, "seconds": o.seconds, "rounds": o.rounds,
            "creates_per_s": {"without_quota": fm, "with_quota": qm, "ratio": r2(qm / fm.max(1.0)),
                              "paired_ratio": r2(median(paired)), "without_runs": free, "with_runs": charged},
        }))
    })?;
    drop(server);
    println!("{v}");
    eprintln!(
        "ConfigMap creates/s: without a quota {} vs with one {} (ratio {}, paired {})",
        v["creates_per_s"]["without_quota"],
        v["creates_per_s"]["with_quota"],
        v["creates_per_s"]["ratio"],
        v["creates_per_s"]["paired_ratio"]
    );
    Ok(())
}
