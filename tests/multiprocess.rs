//! Each role in its own process over a real nats-server: `capstan gateway`, two
//! `capstan controllers` pool members, `capstan scheduler` (two replicas electing a
//! leader) and `capstan sim-nodes`.

mod common;

use common::nats::Nats;
use common::podwatch::PodWatch;
use common::{wait_for, Cluster, Role};
use std::time::{Duration, Instant};

fn has_default_sa(c: &Cluster, ns: &str) -> bool {
    c.kubectl(&["get", "sa", "default", "-n", ns]).status.success()
}

#[test]
fn controller_pool_shares_work_and_survives_a_member_kill() {
    let nats = Nats::start();
    let url = nats.url();
    let gw = Cluster::start_gateway(&["--nats", &url]);
    let pool = |m: &str| {
        Role::start(&[
            "controllers",
            "--nats",
            &url,
            "--partitions",
            "8",
            "--member",
            m,
            "--lease-seconds",
            "3",
        ])
    };
    let mut a = pool("member-a");
    let _b = pool("member-b");
    for i in 0..8 {
        gw.ok(&["create", "namespace", &format!("pool-{i}")]);
    }
    wait_for("default ServiceAccounts from the pool", Duration::from_secs(60), || {
        (0..8).all(|i| has_default_sa(&gw, &format!("pool-{i}"))).then_some(())
    });
    // Both members hold partitions, 4 each (the pool's fair share).
    let leases = wait_for("4 partitions held by each member", Duration::from_secs(30), || {
        let leases = partition_holders(&gw);
        ["member-a", "member-b"]
            .iter()
            .all(|m| leases.values().filter(|h| h == m).count() == 4)
            .then_some(leases)
    });
    // A killed member's partitions move within the lease time: expiry after 3 s, noticed
    // on the next round (every 0.75 s); member-b keeps its own 4 meanwhile.
    let b_before: Vec<String> =
        leases.iter().filter(|(_, h)| *h == "member-b").map(|(p, _)| p.clone()).collect();
    a.kill9();
    let killed = Instant::now();
    let took = wait_for("member-b to hold every partition", Duration::from_secs(30), || {
        let now = partition_holders(&gw);
        assert!(
            b_before.iter().all(|p| now.get(p).map(String::as_str) == Some("member-b")),
            "a partition of the surviving member moved: {now:?}"
        );
        (now.len() == 8 && now.values().all(|h| h == "member-b")).then(|| killed.elapsed())
    });
    assert!(
        took <= Duration::from_secs(6),
        "failover took {took:?}, more than the lease time + 2 rounds + polling"
    );
    eprintln!("partitions of the killed member moved in {took:?}");
    for i in 8..16 {
        gw.ok(&["create", "namespace", &format!("pool-{i}")]);
    }
    wait_for("the surviving member to reconcile new namespaces", Duration::from_secs(60), || {
        (8..16).all(|i| has_default_sa(&gw, &format!("pool-{i}"))).then_some(())
    });
}

/// The pool's partition leases: partition lease name → holder.
fn partition_holders(gw: &Cluster) -> std::collections::BTreeMap<String, String> {
    let leases = gw.ok(&[
        "get",
        "leases",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}{\"\\n\"}{end}",
    ]);
    leases
        .lines()
        .filter(|l| l.starts_with("capstan-controllers-partition-"))
        .filter_map(|l| l.split_once('=').map(|(p, h)| (p.to_string(), h.to_string())))
        .collect()
}

fn scheduler_lease_holder(gw: &Cluster) -> String {
    gw.kubectl(&[
        "get",
        "lease",
        "kube-scheduler",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .stdout
    .iter()
    .map(|b| *b as char)
    .collect()
}

fn cpu_pods(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {prefix}-{i}\n  labels: {{app: cpu}}\nspec:\n  \
                 containers:\n  - name: c\n    image: nginx\n    resources: {{requests: {{cpu: \"1\"}}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `(pod, node)` of every bound pod with `app=cpu`.
fn bound_pods(gw: &Cluster) -> Vec<(String, String)> {
    let out = gw.ok(&[
        "get",
        "pods",
        "-l",
        "app=cpu",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{\"\\n\"}{end}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, n)| !n.trim().is_empty())
        .map(|(p, n)| (p.to_string(), n.trim().to_string()))
        .collect()
}

/// Two `capstan scheduler` replicas elect a leader through the Lease
/// `kube-system/kube-scheduler`; only the leader binds, so no node is overcommitted even
/// when the pods ask for more CPU than the nodes have. The leader is `kill -9`ed halfway:
/// the other takes over within the lease time and fills the rest, still without
/// overcommitting (3 simulated nodes of 8 CPUs, 32 pods of 1 CPU: 24 bound, 8 Pending).
#[test]
fn two_schedulers_never_overcommit_a_node() {
    let nats = Nats::start();
    let url = nats.url();
    let gw = Cluster::start_gateway(&["--nats", &url]);
    let _controllers = Role::start(&["controllers", "--nats", &url]);
    let _nodes = Role::start(&["sim-nodes", "--nats", &url, "--count", "3"]);
    let scheduler = |id: &str| {
        Role::start(&[
            "scheduler",
            "--nats",
            &url,
            "--leader-elect-lease-seconds",
            "3",
            "--leader-elect-identity",
            id,
        ])
    };
    let mut schedulers = [scheduler("sched-a"), scheduler("sched-b")];
    let leader = wait_for("a scheduler leader", Duration::from_secs(30), || {
        let h = scheduler_lease_holder(&gw);
        (h == "sched-a" || h == "sched-b").then_some(h)
    });
    wait_for("3 nodes", Duration::from_secs(60), || {
        let out = gw.ok(&["get", "nodes", "-o", "name"]);
        (out.lines().count() == 3).then_some(())
    });
    let f = gw.file("first.yaml", &cpu_pods("first", 16));
    gw.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("16 pods bound", Duration::from_secs(60), || (bound_pods(&gw).len() == 16).then_some(()));
    // Kill the leader; the standby takes over and schedules the rest.
    let (dead, standby) = if leader == "sched-a" { (0, "sched-b") } else { (1, "sched-a") };
    schedulers[dead].kill9();
    let f = gw.file("second.yaml", &cpu_pods("second", 16));
    gw.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("the standby to lead", Duration::from_secs(30), || {
        (scheduler_lease_holder(&gw) == standby).then_some(())
    });
    wait_for("24 pods bound, 8 unschedulable", Duration::from_secs(60), || {
        let unschedulable = gw.ok(&[
            "get",
            "pods",
            "-l",
            "app=cpu",
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"PodScheduled\")].reason}{\"\\n\"}{end}",
        ]);
        let waiting = unschedulable.lines().filter(|l| l.trim() == "Unschedulable").count();
        (bound_pods(&gw).len() == 24 && waiting == 8).then_some(())
    });
    let bound = bound_pods(&gw);
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for (_, node) in &bound {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert!(per_node.values().all(|n| *n <= 8), "a node got more than its 8 CPUs: {per_node:?}");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert_eq!(bound.len(), 24, "{bound:?}");
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 6
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"#;

/// Every role in its own process; the controllers are `kill -9`ed in the middle of a
/// rolling update and restarted: the rollout converges and never exceeds the allowed
/// pod count (6 + maxSurge 1) at any moment a watch observed.
#[test]
fn rollout_over_nats_survives_a_controllers_kill9() {
    let nats = Nats::start();
    let url = nats.url();
    let gw = Cluster::start_gateway(&["--nats", &url]);
    let mut controllers = Role::start(&["controllers", "--nats", &url]);
    let _scheduler = Role::start(&["scheduler", "--nats", &url]);
    let _nodes = Role::start(&["sim-nodes", "--nats", &url, "--count", "3"]);
    let f = gw.file("web.yaml", DEPLOYMENT);
    gw.ok(&["apply", "-f", f.to_str().unwrap()]);
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    let watch = PodWatch::start(&gw, "app=web");
    let from = watch.wait_settled(6);
    gw.ok(&["set", "image", "deploy/web", "nginx=nginx:1.28"]);
    // Kill the controllers once the rollout is under way.
    wait_for("the rollout to start", Duration::from_secs(60), || {
        let pods =
            gw.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
        pods.contains("nginx:1.28").then_some(())
    });
    controllers.kill9();
    controllers.restart();
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=180s"]);
    watch.wait_settled(6);
    let seen = watch.observations_since(from);
    let max_live = seen.iter().map(|o| o.0).max().unwrap_or(0);
    assert!(max_live <= 7, "more than replicas + maxSurge live pods: {seen:?}");
    let images =
        gw.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].spec.containers[0].image}"]);
    assert!(images.split_whitespace().all(|i| i == "nginx:1.28"), "{images}");
}

/// nats-server stops and loses its JetStream store (the event history is gone) while the
/// cluster changes through the gateway: a Deployment is scaled down and two of its pods
/// are force-deleted. After the restart the roles' informers find the history broken,
/// relist, and the controllers converge on what the store holds.
#[test]
fn roles_relist_and_converge_after_nats_loses_its_store() {
    let mut nats = Nats::start();
    let url = nats.url();
    let gw = Cluster::start_gateway(&["--nats", &url]);
    let _controllers = Role::start(&["controllers", "--nats", &url]);
    let _scheduler = Role::start(&["scheduler", "--nats", &url]);
    let _nodes = Role::start(&["sim-nodes", "--nats", &url, "--count", "3"]);
    let f = gw.file("web.yaml", DEPLOYMENT);
    gw.ok(&["apply", "-f", f.to_str().unwrap()]);
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    let names = gw.ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]);
    let names: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(names.len(), 6, "{names:?}");

    nats.stop();
    std::fs::remove_dir_all(nats.store_dir()).expect("remove the JetStream store");
    gw.ok(&["scale", "deploy/web", "--replicas=4"]);
    gw.ok(&["delete", "pod", names[0], names[1], "--grace-period=0", "--force", "--wait=false"]);
    nats.restart();

    // The ReplicaSet ends at 4 live pods, none of them one of the deleted two, all bound.
    wait_for("4 pods bound, the deleted ones gone", Duration::from_secs(120), || {
        let out = gw.ok(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        let live: Vec<Vec<&str>> =
            out.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|w| w.len() == 2).collect();
        let terminating = out.lines().filter(|l| l.split_whitespace().count() > 2).count();
        (live.len() == 4 && terminating == 0 && !live.iter().any(|w| w[0] == names[0] || w[0] == names[1]))
            .then_some(())
    });
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    let rs = gw.ok(&["get", "rs", "-l", "app=web", "-o", "jsonpath={.items[0].status.readyReplicas}"]);
    assert_eq!(rs.trim(), "4");
    // The event stream carries changes again: a new change reaches the controllers.
    gw.ok(&["scale", "deploy/web", "--replicas=5"]);
    gw.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    let n = gw.ok(&["get", "pods", "-l", "app=web", "-o", "name"]).lines().count();
    assert_eq!(n, 5);
}

/// Bad flags of the pool, scheduler and cluster options are refused before anything
/// connects, with a usage error that names the flag; an empty server list is refused as
/// a connection error.
#[test]
fn bad_pool_and_cluster_flags_are_refused() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(args)
            .env("CAPSTAN_LOG", "warn")
            .output()
            .expect("run capstan")
    };
    let nats = "nats://127.0.0.1:1";
    for (args, flag) in [
        (&["controllers", "--nats", nats, "--partitions", "0"][..], "--partitions"),
        (&["controllers", "--nats", nats, "--lease-seconds", "0"][..], "--lease-seconds"),
        (
            &["scheduler", "--nats", nats, "--leader-elect-lease-seconds", "1"][..],
            "--leader-elect-lease-seconds",
        ),
        (&["scheduler", "--nats", nats, "--leader-elect", "maybe"][..], "--leader-elect"),
        (&["gateway", "--nats", nats, "--nats-stream-replicas", "0"][..], "--nats-stream-replicas"),
        (&["up", "--nats", nats, "--nats-stream-replicas", "9"][..], "--nats-stream-replicas"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
    let out = run(&["scheduler", "--nats", " , "]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no server URL given"), "{err}");
}
