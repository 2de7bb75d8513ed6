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
