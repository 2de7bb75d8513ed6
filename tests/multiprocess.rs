//! Each role in its own process over a real nats-server: `capstan gateway`, two
//! `capstan controllers` pool members, `capstan scheduler` and `capstan sim-nodes`.

mod common;

use common::nats::Nats;
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
