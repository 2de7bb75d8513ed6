//! The scheduler through the real kubectl against `capstan up`: nodes are created with
//! kubectl (with their status), pods are placed by resource fit, nodeSelector, taints and
//! tolerations, anti-affinity; an unschedulable pod gets `FailedScheduling` and is placed
//! once a big enough node appears; a burst does not overcommit a node. Every scenario also
//! runs `_over_nats`: gateway, controllers and scheduler each in its own process.

mod common;

use common::{wait_for, Cluster, Mode};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn cluster(mode: Mode) -> Cluster {
    // The nodes here have no kubelet renewing a Lease: keep the node lifecycle controller
    // from marking them unreachable while a test runs.
    mode.cluster(0, &[("CAPSTAN_NODE_GRACE_SECONDS", "3600")])
}

/// A Ready node with `cpu` cores, `mem` memory, 110 pods, its hostname label plus
/// `labels`, and `taints` (a YAML flow list).
fn node(name: &str, cpu: &str, mem: &str, labels: &[(&str, &str)], taints: &str) -> String {
    let mut l = format!("kubernetes.io/hostname: \"{name}\"");
    for (k, v) in labels {
        l.push_str(&format!(", {k}: \"{v}\""));
    }
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: "{name}"
  labels: {{{l}}}
spec:
  taints: {taints}
status:
  capacity: {{cpu: "{cpu}", memory: {mem}, pods: "110"}}
  allocatable: {{cpu: "{cpu}", memory: {mem}, pods: "110"}}
  conditions:
  - {{type: Ready, status: "True", reason: KubeletReady, message: ready}}
"#
    )
}

/// A pod requesting `cpu`, with extra spec lines (indented by 2).
fn pod(name: &str, labels: &str, cpu: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  containers:
  - name: c
    image: busybox
    resources:
      requests: {{cpu: "{cpu}", memory: 64Mi}}
{extra}"#
    )
}

fn create(c: &Cluster, file: &str, docs: &[String]) {
    let f = c.file(file, &docs.join("---\n"));
    c.ok(&["create", "-f", f.to_str().unwrap_or_default()]);
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).unwrap_or(Value::Null)
}

fn node_of(c: &Cluster, pod: &str) -> Option<String> {
    let out = c.ok(&["get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"]);
    let n = out.trim();
    (!n.is_empty()).then(|| n.to_string())
}

fn wait_bound(c: &Cluster, pod: &str) -> String {
    wait_for(&format!("pod {pod} to be bound"), T, || node_of(c, pod))
}

/// The message of the latest FailedScheduling event about `pod`.
fn failed_scheduling(c: &Cluster, pod: &str) -> Option<String> {
    let sel = format!("reason=FailedScheduling,involvedObject.name={pod}");
    let list = json(c, &["get", "events", "--field-selector", &sel]);
    let items = list["items"].as_array()?;
    let ev = items.last()?;
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["source"]["component"], "default-scheduler");
    ev["message"].as_str().map(str::to_string)
}

fn wait_failed(c: &Cluster, pod: &str) -> String {
    wait_for(&format!("FailedScheduling for {pod}"), T, || failed_scheduling(c, pod))
}

fn places_pods_by_fit_selector_and_taints(mode: Mode) {
    let c = cluster(mode);
    create(
        &c,
        "nodes.yaml",
        &[
            node("small", "2", "4Gi", &[("size", "small")], "[]"),
            node("big", "8", "32Gi", &[("size", "big")], "[]"),
            node(
                "gpu",
                "8",
                "32Gi",
                &[("size", "big")],
                "[{key: dedicated, value: gpu, effect: NoSchedule}]",
            ),
        ],
    );
    create(
        &c,
        "pods.yaml",
        &[
            // Only big fits 4 cores (small is too small, gpu is tainted).
            pod("fit", "app: a", "4", ""),
            pod("selected", "app: b", "100m", "  nodeSelector: {size: small}\n"),
            pod(
                "tolerating",
                "app: c",
                "100m",
                "  nodeSelector: {kubernetes.io/hostname: gpu}\n  tolerations:\n  \
                 - {key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}\n",
            ),
            pod("intolerant", "app: d", "100m", "  nodeSelector: {kubernetes.io/hostname: gpu}\n"),
            pod(
                "everything",
                "app: e",
                "100m",
                "  nodeSelector: {size: big}\n  tolerations: [{operator: Exists}]\n",
            ),
        ],
    );
    assert_eq!(wait_bound(&c, "fit"), "big");
    assert_eq!(wait_bound(&c, "selected"), "small");
    assert_eq!(wait_bound(&c, "tolerating"), "gpu");
    let n = wait_bound(&c, "everything");
    assert!(n == "big" || n == "gpu", "{n}");
    let msg = wait_failed(&c, "intolerant");
    assert_eq!(
        msg,
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, \
         2 node(s) didn't match Pod's node affinity/selector. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    assert_eq!(node_of(&c, "intolerant"), None);
    // Adding the toleration is not allowed on a pod (tolerations may only grow, which
    // kubectl patch can do): the pod is retried and placed.
    c.ok(&[
        "patch",
        "pod",
        "intolerant",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/tolerations/-","value":{"key":"dedicated","operator":"Exists"}}]"#,
    ]);
    assert_eq!(wait_bound(&c, "intolerant"), "gpu");
}

#[test]
fn places_pods_by_fit_selector_and_taints_in_process() {
    places_pods_by_fit_selector_and_taints(Mode::InProcess);
}

#[test]
fn places_pods_by_fit_selector_and_taints_over_nats() {
    places_pods_by_fit_selector_and_taints(Mode::Nats);
}

fn anti_affinity_spreads_replicas_over_hosts(mode: Mode) {
    let c = cluster(mode);
    create(
        &c,
        "nodes.yaml",
        &["n1", "n2", "n3"].iter().map(|n| node(n, "8", "32Gi", &[], "[]")).collect::<Vec<_>>(),
    );
    let anti =
        "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      \
                - labelSelector: {matchLabels: {app: web}}\n        topologyKey: kubernetes.io/hostname\n";
    let pods: Vec<String> = (0..4).map(|i| pod(&format!("web-{i}"), "app: web", "100m", anti)).collect();
    create(&c, "pods.yaml", &pods[..3]);
    let mut hosts: Vec<String> = (0..3).map(|i| wait_bound(&c, &format!("web-{i}"))).collect();
    hosts.sort();
    assert_eq!(hosts, ["n1", "n2", "n3"]);
    create(&c, "fourth.yaml", &pods[3..]);
    let msg = wait_failed(&c, "web-3");
    assert_eq!(
        msg,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
         preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
    );
    // Deleting a replica frees its host for the fourth.
    let freed = node_of(&c, "web-1");
    c.ok(&["delete", "pod", "web-1", "--grace-period=0", "--force", "--wait=false"]);
    assert_eq!(Some(wait_bound(&c, "web-3")), freed);
}

#[test]
fn anti_affinity_spreads_replicas_over_hosts_in_process() {
    anti_affinity_spreads_replicas_over_hosts(Mode::InProcess);
}

#[test]
fn anti_affinity_spreads_replicas_over_hosts_over_nats() {
    anti_affinity_spreads_replicas_over_hosts(Mode::Nats);
}

fn unschedulable_pod_is_reported_then_placed_on_a_new_node(mode: Mode) {
    let c = cluster(mode);
    create(
        &c,
        "nodes.yaml",
        &[node("a", "2", "8Gi", &[], "[]"), node("b", "4", "8Gi", &[("disk", "hdd")], "[]")],
    );
    create(&c, "pod.yaml", &[pod("huge", "app: huge", "16", "")]);
    let msg = wait_failed(&c, "huge");
    assert_eq!(
        msg,
        "0/2 nodes are available: 2 Insufficient cpu. \
         preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod."
    );
    let cond = wait_for("PodScheduled=False", T, || {
        let p = json(&c, &["get", "pod", "huge"]);
        let conds = p["status"]["conditions"].as_array()?.clone();
        conds.into_iter().find(|c| c["type"] == "PodScheduled")
    });
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(cond["message"].as_str(), Some(msg.as_str()));
    let described = c.ok(&["describe", "pod", "huge"]);
    assert!(described.contains("FailedScheduling"), "{described}");
    assert_eq!(node_of(&c, "huge"), None);
    create(&c, "big.yaml", &[node("huge-node", "32", "64Gi", &[], "[]")]);
    assert_eq!(wait_bound(&c, "huge"), "huge-node");
    // The binding marks the pod scheduled, as upstream's does.
    let p = json(&c, &["get", "pod", "huge"]);
    let scheduled =
        p["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"));
    assert_eq!(scheduled.map(|c| c["status"].clone()), Some("True".into()), "{p}");
}

#[test]
fn unschedulable_pod_is_reported_then_placed_on_a_new_node_in_process() {
    unschedulable_pod_is_reported_then_placed_on_a_new_node(Mode::InProcess);
}

#[test]
fn unschedulable_pod_is_reported_then_placed_on_a_new_node_over_nats() {
    unschedulable_pod_is_reported_then_placed_on_a_new_node(Mode::Nats);
}

fn a_burst_does_not_overcommit_nodes(mode: Mode) {
    let c = cluster(mode);
    create(
        &c,
        "nodes.yaml",
        &["x", "y", "z"].iter().map(|n| node(n, "1", "32Gi", &[], "[]")).collect::<Vec<_>>(),
    );
    // 36 pods of 100m on 3 nodes of 1 core: 30 fit, 6 do not.
    let pods: Vec<String> = (0..36).map(|i| pod(&format!("p{i}"), "app: burst", "100m", "")).collect();
    create(&c, "pods.yaml", &pods);
    let placed = wait_for("30 pods bound and 6 reported", T, || {
        let list = json(&c, &["get", "pods", "-l", "app=burst"]);
        let items = list["items"].as_array()?.clone();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let mut unscheduled = 0;
        for p in &items {
            match p["spec"]["nodeName"].as_str() {
                Some(n) if !n.is_empty() => *per_node.entry(n.to_string()).or_insert(0) += 1,
                _ => {
                    let reported = p["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "Unschedulable"));
                    if reported {
                        unscheduled += 1;
                    }
                }
            }
        }
        let bound: usize = per_node.values().sum();
        (items.len() == 36 && bound == 30 && unscheduled == 6).then_some(per_node)
    });
    for (n, count) in &placed {
        assert_eq!(*count, 10, "node {n} holds {count} pods of 100m on 1 core");
    }
}

#[test]
fn a_burst_does_not_overcommit_nodes_in_process() {
    a_burst_does_not_overcommit_nodes(Mode::InProcess);
}

#[test]
fn a_burst_does_not_overcommit_nodes_over_nats() {
    a_burst_does_not_overcommit_nodes(Mode::Nats);
}

/// A storm of unschedulable pods writes a handful of FailedScheduling Events (the event
/// correlator's limit per Warning reason), while every pod still says why in its
/// `PodScheduled=False` condition.
#[test]
fn a_failed_scheduling_storm_writes_a_handful_of_events() {
    const PODS: usize = 300;
    let c = cluster(Mode::InProcess);
    create(&c, "nodes.yaml", &[node("small", "1", "1Gi", &[], "[]")]);
    let pods: Vec<String> = (0..PODS).map(|i| pod(&format!("s{i}"), "app: storm", "2", "")).collect();
    create(&c, "pods.yaml", &pods);
    wait_for("every pod reported unschedulable", Duration::from_secs(120), || {
        let list = json(&c, &["get", "pods", "-l", "app=storm"]);
        let reported = list["items"]
            .as_array()?
            .iter()
            .filter(|p| {
                p["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter().any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable")
                })
            })
            .count();
        (reported == PODS).then_some(())
    });
    let events = json(&c, &["get", "events", "--field-selector", "reason=FailedScheduling"]);
    let n = events["items"].as_array().map(Vec::len).unwrap_or(0);
    assert!((1..=60).contains(&n), "{n} FailedScheduling events for {PODS} pods");
    // The first pods of the storm are described as upstream describes them.
    let first = events["items"][0]["involvedObject"]["name"].as_str().unwrap_or_default().to_string();
    let described = c.ok(&["describe", "pod", &first]);
    assert!(described.contains("FailedScheduling"), "{described}");
    assert!(described.contains("Insufficient cpu"), "{described}");
}

/// Scheduling throughput: `SCHED_BENCH_NODES` nodes (default 1000) and `SCHED_BENCH_PODS`
/// pods (default 10000) created over 16 HTTPS connections; prints the create rate and the
/// rate at which pods got bound. With `SCHED_BENCH_MODE=parked` the pods come first and
/// wait unschedulable; the rate is then measured from the nodes' creation. Not a timed
/// gate: run with `cargo test --release --test scheduler throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    use capstan_bench::client::{Client, Kubeconfig};
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let (nodes, pods) = (env("SCHED_BENCH_NODES", 1000), env("SCHED_BENCH_PODS", 10_000));
    // In process only: a benchmark of the scheduler, not a scenario.
    let c = cluster(Mode::InProcess);
    eprintln!("scheduler throughput: capstan pid {}", c.pid());
    let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
    let client = Client::new(&kc).expect("client");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    const CONNS: usize = 16;
    let post_all = |path: &'static str, bodies: Vec<Vec<u8>>| {
        let bodies = std::sync::Arc::new(bodies);
        rt.block_on(async {
            let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..CONNS {
                let mut conn = client.open().await.expect("connect");
                let (next, bodies) = (next.clone(), bodies.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(b) = bodies.get(i) else { return };
                        let r = conn
                            .request("POST", path, &[("Content-Type", "application/json")], b)
                            .await
                            .expect("post");
                        assert_eq!(r.status, 201, "{}", r.text());
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        })
    };
    let node_bodies = (0..nodes)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("bench-{i}"), "labels": {"kubernetes.io/hostname": format!("bench-{i}")}},
                "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                           "conditions": [{"type": "Ready", "status": "True"}]}}))
            .unwrap_or_default()
        })
        .collect();
    let pod_bodies = (0..pods)
        .map(|i| {
            serde_json::to_vec(&serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p-{i}"), "labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "c", "image": "nginx",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}))
            .unwrap_or_default()
        })
        .collect();
    // How many pods match a field selector (one listing, in pages).
    let count = |selector: &str| -> Option<usize> {
        rt.block_on(async {
            let mut conn = client.open().await.ok()?;
            let mut n = 0;
            let mut cont = String::new();
            loop {
                let path =
                    format!("/api/v1/namespaces/default/pods?fieldSelector={selector}&limit=5000{cont}");
                let v = conn.request("GET", &path, &[], b"").await.ok()?.json().ok()?;
                n += v["items"].as_array()?.len();
                match v["metadata"]["continue"].as_str().filter(|c| !c.is_empty()) {
                    Some(c) => cont = format!("&continue={c}"),
                    None => return Some(n),
                }
            }
        })
    };
    // Poll gently: a listing of every pod competes with the scheduler for the CPU.
    let wait_all_bound = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        let any_unbound = || -> Option<bool> {
            rt.block_on(async {
                let mut conn = client.open().await.ok()?;
                let path = "/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3D&limit=1";
                let v = conn.request("GET", path, &[], b"").await.ok()?.json().ok()?;
                Some(!v["items"].as_array()?.is_empty())
            })
        };
        while any_unbound() != Some(false) {
            assert!(std::time::Instant::now() < deadline, "pods still unbound after 600 s");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    if std::env::var("SCHED_BENCH_MODE").as_deref() == Ok("parked") {
        // Pods first (all unschedulable), then the nodes: measures how fast the waiting
        // pods are placed and bound once the nodes appear.
        post_all("/api/v1/namespaces/default/pods", pod_bodies);
        let parked = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            let list = count("spec.nodeName%3D");
            // Reported: the pod's PodScheduled=False condition (Events of a storm are
            // limited by the event correlator).
            let reported = rt.block_on(async {
                let mut conn = client.open().await.ok()?;
                let path = "/api/v1/namespaces/default/pods";
                let v = conn.request("GET", path, &[], b"").await.ok()?.json().ok()?;
                let n = v["items"]
                    .as_array()?
                    .iter()
                    .filter(|p| {
                        p["status"]["conditions"]
                            .as_array()
                            .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "Unschedulable"))
                    })
                    .count();
                Some(n)
            });
            if list == Some(pods) && reported == Some(pods) {
                break;
            }
            assert!(std::time::Instant::now() < parked, "pods not all reported unschedulable");
            std::thread::sleep(Duration::from_millis(500));
        }
        let t0 = std::time::Instant::now();
        post_all("/api/v1/nodes", node_bodies);
        let created = t0.elapsed();
        wait_all_bound();
        let bound = t0.elapsed();
        eprintln!(
            "scheduler throughput (parked): {pods} waiting pods, {nodes} nodes created in {:.2} s, all bound after {:.2} s ({:.0} pods/s)",
            created.as_secs_f64(),
            bound.as_secs_f64(),
            pods as f64 / bound.as_secs_f64()
        );
        return;
    }
    post_all("/api/v1/nodes", node_bodies);
    let t0 = std::time::Instant::now();
    post_all("/api/v1/namespaces/default/pods", pod_bodies);
    let created = t0.elapsed();
    wait_all_bound();
    let bound = t0.elapsed();
    eprintln!(
        "scheduler throughput: {nodes} nodes, {pods} pods: created in {:.2} s ({:.0}/s), all bound after {:.2} s ({:.0}/s)",
        created.as_secs_f64(),
        pods as f64 / created.as_secs_f64(),
        bound.as_secs_f64(),
        pods as f64 / bound.as_secs_f64()
    );
}
