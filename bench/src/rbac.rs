//! `capstan-bench rbac`: what RBAC costs. Starts `capstan up` (no node) with a static token
//! for the user `bench-user`, creates `--roles` Roles and as many RoleBindings (bindings to
//! other users, plus one granting `bench-user` pods create/get), then measures pod creates/s
//! and GETs/s as the admin (client certificate, `system:masters`) and as `bench-user`
//! (bearer token, decided by RBAC), alternating `--rounds` times in one run (who goes first
//! alternates too), and prints the medians, their ratio non-admin / admin and the median of
//! each round's own ratio as one JSON object (summary on stderr).

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
    "usage: capstan-bench rbac [--capstan PATH] [--roles N] [--clients N] [--seconds S] [--rounds R]

  --capstan PATH   the capstan binary (default: next to this binary, else `capstan` on PATH)
  --roles N        Roles and RoleBindings created before measuring (default 1000)
  --clients N      concurrent HTTPS connections (default 16)
  --seconds S      length of each measured phase (default 5)
  --rounds R       admin / non-admin alternations; medians are reported (default 3;
                   use an even number: who goes first alternates)";

const TOKEN: &str = "capstan-bench-rbac-token-0123456789";
const PODS: &str = "/api/v1/namespaces/default/pods";

struct Opts {
    capstan: PathBuf,
    roles: usize,
    clients: usize,
    seconds: f64,
    rounds: usize,
}

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o =
        Opts { capstan: capstan_bench::default_capstan(), roles: 1000, clients: 16, seconds: 5.0, rounds: 3 };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--roles" => o.roles = value()?.parse().context("--roles wants a number")?,
            "--clients" => o.clients = value()?.parse().context("--clients wants a number")?,
            "--seconds" => o.seconds = value()?.parse().context("--seconds wants a number")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds wants a number")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.clients == 0 || o.rounds == 0 {
        bail!("--clients and --rounds must be at least 1");
    }
    Ok(o)
}

struct Server {
    child: Child,
    dir: tempfile::TempDir,
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
    let dir = tempfile::Builder::new().prefix("capstan-bench-rbac-").tempdir()?;
    std::fs::write(dir.path().join("tokens.csv"), format!("{TOKEN},bench-user,uid-bench\n"))?;
    std::fs::write(
        dir.path().join("capstan.yaml"),
        format!("tokenFile: {}\n", dir.path().join("tokens.csv").display()),
    )?;
    let mut child = Command::new(&o.capstan)
        .args(["up", "--no-node", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("--config")
        .arg(dir.path().join("capstan.yaml"))
        .env("CAPSTAN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to run {}", o.capstan.display()))?;
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

async fn post(conn: &mut Connection, path: &str, auth: &[(&str, &str)], body: Value) -> anyhow::Result<()> {
    let mut headers = vec![("Content-Type", "application/json"), ("Accept", "application/json")];
    headers.extend_from_slice(auth);
    let r = conn.request("POST", path, &headers, &serde_json::to_vec(&body)?).await?;
    if r.status != 201 {
        bail!("POST {path}: {} {}", r.status, r.text());
    }
    Ok(())
}

/// The RBAC objects: `n` Roles and `n` RoleBindings, the last one for bench-user.
async fn populate(client: &Client, n: usize) -> anyhow::Result<()> {
    let mut conn = client.open().await?;
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default";
    for i in 0..n {
        let rules = if i + 1 == n {
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list"]}])
        } else {
            json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [format!("cm-{i}")], "verbs": ["get"]}])
        };
        post(
            &mut conn,
            &format!("{rbac}/roles"),
            &[],
            json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role", "metadata": {"name": format!("role-{i}")}, "rules": rules}),
        )
        .await?;
        let user = if i + 1 == n { "bench-user".to_string() } else { format!("user-{i}") };
        post(
            &mut conn,
            &format!("{rbac}/rolebindings"),
            &[],
            json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding", "metadata": {"name": format!("binding-{i}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{i}")},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}),
        )
        .await?;
    }
    Ok(())
}

/// Requests/s over `clients` connections for `secs`: creates (names returned) or GETs.
async fn phase(
    client: &Client,
    clients: usize,
    secs: f64,
    auth: Option<&'static str>,
    names: Option<Arc<Vec<String>>>,
    tag: &str,
) -> anyhow::Result<(f64, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = client.open().await?;
        let (names, errors, tag) = (names.clone(), errors.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut n = 0usize;
            while Instant::now() < deadline {
                let bearer = auth.map(|t| format!("Bearer {t}"));
                let mut headers = vec![("Accept", "application/json")];
                if let Some(b) = &bearer {
                    headers.push(("Authorization", b.as_str()));
                }
                let ok = match &names {
                    Some(list) if !list.is_empty() => {
                        let path = format!("{PODS}/{}", list[(c * 7919 + n) % list.len()]);
                        conn.request("GET", &path, &headers, b"").await.map(|r| r.status == 200)
                    }
                    _ => {
                        let name = format!("{tag}-{c}-{n}");
                        headers.push(("Content-Type", "application/json"));
                        let body = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}))
                            .unwrap_or_default();
                        let r = conn.request("POST", PODS, &headers, &body).await;
                        if matches!(r, Ok(ref r) if r.status == 201) {
                            done.push(name);
                        }
                        r.map(|r| r.status == 201)
                    }
                };
                n += 1;
                match ok {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                if names.is_some() {
                    done.push(String::new());
                }
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let e = errors.load(Ordering::Relaxed);
    if e > 0 {
        bail!("{tag}: {e} requests failed");
    }
    let rate = all.len() as f64 / t0.elapsed().as_secs_f64();
    Ok((rate, all.into_iter().filter(|n| !n.is_empty()).collect()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0).round()
}

/// Runs `capstan-bench rbac`.
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse(args)?;
    let server = start(&o)?;
    let kc = Kubeconfig::load(&server.dir.path().join("admin.kubeconfig"))?;
    let admin = Client::new(&kc)?;
    let user = Client::new(&kc.without_client_cert())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let v = rt.block_on(async {
        eprintln!("creating {} Roles and RoleBindings...", o.roles);
        let t = Instant::now();
        populate(&admin, o.roles).await?;
        let populate_s = t.elapsed().as_secs_f64();
        let (mut ca, mut cu, mut ga, mut gu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..o.rounds {
            // Who goes first alternates: creates slow down as the store grows, so a fixed
            // order would charge the growth to the second phase of every round.
            let admin_first = round % 2 == 0;
            let order = if admin_first { "admin, then bench-user" } else { "bench-user, then admin" };
            eprintln!("round {}: creates and GETs as {order}", round + 1);
            let (a, u, names_a) = if admin_first {
                let (a, names) = phase(&admin, o.clients, o.seconds, None, None, &format!("a{round}")).await?;
                let (u, _) = phase(&user, o.clients, o.seconds, Some(TOKEN), None, &format!("u{round}")).await?;
                (a, u, names)
            } else {
                let (u, _) = phase(&user, o.clients, o.seconds, Some(TOKEN), None, &format!("u{round}")).await?;
                let (a, names) = phase(&admin, o.clients, o.seconds, None, None, &format!("a{round}")).await?;
                (a, u, names)
            };
            let names = Arc::new(names_a);
            let (g1, g2) = if admin_first {
                let (g1, _) = phase(&admin, o.clients, o.seconds, None, Some(names.clone()), "ga").await?;
                let (g2, _) = phase(&user, o.clients, o.seconds, Some(TOKEN), Some(names), "gu").await?;
                (g1, g2)
            } else {
                let (g2, _) = phase(&user, o.clients, o.seconds, Some(TOKEN), Some(names.clone()), "gu").await?;
                let (g1, _) = phase(&admin, o.clients, o.seconds, None, Some(names), "ga").await?;
                (g1, g2)
            };
            ca.push(a);
            cu.push(u);
            ga.push(g1);
            gu.push(g2);
        }
        let (ca_m, cu_m, ga_m, gu_m) = (median(ca.clone()), median(cu.clone()), median(ga.clone()), median(gu.clone()));
        // The ratio of each round's neighbouring phases, then their median: background load
        // that changes between rounds cancels out of each pair.
        let paired = |u: &[f64], a: &[f64]| {
            let r: Vec<f64> = u.iter().zip(a).map(|(u, a)| u / a.max(1.0) * 100.0).collect();
            median(r) / 100.0
        };
        anyhow::Ok(json!({
            "roles": o.roles, "role_bindings": o.roles, "clients": o.clients, "seconds": o.seconds, "rounds": o.rounds,
            "populate_s": (populate_s * 10.0).round() / 10.0,
            "creates_per_s": {"admin": ca_m, "non_admin": cu_m, "ratio": ((cu_m / ca_m.max(1.0)) * 100.0).round() / 100.0,
                              "paired_ratio": paired(&cu, &ca), "admin_runs": ca, "non_admin_runs": cu},
            "gets_per_s": {"admin": ga_m, "non_admin": gu_m, "ratio": ((gu_m / ga_m.max(1.0)) * 100.0).round() / 100.0,
                           "paired_ratio": paired(&gu, &ga), "admin_runs": ga, "non_admin_runs": gu},
        }))
    })?;
    drop(server);
    println!("{v}");
    eprintln!(
        "creates/s: admin {} vs non-admin {} (ratio {}, paired {}); GETs/s: admin {} vs non-admin {} (ratio {}, paired {}), {} Roles + {} RoleBindings",
        v["creates_per_s"]["admin"],
        v["creates_per_s"]["non_admin"],
        v["creates_per_s"]["ratio"],
        v["creates_per_s"]["paired_ratio"],
        v["gets_per_s"]["admin"],
        v["gets_per_s"]["non_admin"],
        v["gets_per_s"]["ratio"],
        v["gets_per_s"]["paired_ratio"],
        v["roles"],
        v["role_bindings"]
    );
    Ok(())
}
