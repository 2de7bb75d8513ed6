//! Each role in its own process over a real nats-server: `capstan gateway`, two
//! `capstan controllers` pool members, `capstan scheduler` and `capstan sim-nodes`.

mod common;

use common::nats::Nats;
use common::podwatch::PodWatch;
use common::{wait_for, Cluster, Role};
use std::time::Duration;

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
    // Both members hold partitions.
    let leases = gw.ok(&[
        "get",
        "leases",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.spec.holderIdentity}{\"\\n\"}{end}",
    ]);
    let holders: std::collections::HashSet<&str> = leases
        .lines()
        .filter(|l| l.starts_with("capstan-controllers-partition-"))
        .filter_map(|l| l.split_once('=').map(|(_, h)| h))
        .collect();
    assert!(holders.contains("member-a") && holders.contains("member-b"), "{leases}");
    // A killed member's partitions are taken over.
    a.kill9();
    for i in 8..16 {
        gw.ok(&["create", "namespace", &format!("pool-{i}")]);
    }
    wait_for("the surviving member to take over", Duration::from_secs(60), || {
        (8..16).all(|i| has_default_sa(&gw, &format!("pool-{i}"))).then_some(())
    });
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
