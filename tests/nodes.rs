//! Simulated nodes and the node lifecycle controller, through the real kubectl against
//! `capstan up --sim-nodes 3` with a short grace period (4 s) and short default
//! tolerations (2 s), and the same (`_over_nats`) with each role in its own process over
//! a nats-server.

mod common;

use common::{wait_for, Cluster, Mode};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn cluster(mode: Mode) -> Cluster {
    mode.cluster(3, &[("CAPSTAN_NODE_GRACE_SECONDS", "4"), ("CAPSTAN_DEFAULT_TOLERATION_SECONDS", "2")])
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// The object, or None when kubectl says it is not there.
fn get(c: &Cluster, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = c.kubectl(&a);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NotFound") || err.contains("not found"), "kubectl {a:?}: {err}");
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn wait_nodes_ready(c: &Cluster) {
    wait_for("3 Ready sim nodes", T, || {
        let out = c.ok(&["get", "nodes", "--no-headers"]);
        let ready = out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count();
        (ready == 3).then_some(())
    });
}

fn pod_manifest(name: &str, node: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n{extra_spec}  containers:\n  - name: c\n    image: nginx:1.27\n"
    )
}

fn wait_running(c: &Cluster, name: &str) -> Value {
    wait_for(&format!("pod {name} Running and Ready"), T, || {
        let p = get(c, &["get", "pod", name])?;
        let ready = condition(&p, "Ready").is_some_and(|r| r["status"] == "True");
        (p["status"]["phase"] == "Running" && ready).then_some(p)
    })
}

fn sim_nodes_register_renew_and_run_pods(mode: Mode) {
    let c = cluster(mode);
    wait_nodes_ready(&c);
    let out = c.ok(&["get", "nodes"]);
    let header: Vec<&str> = out.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], "{out}");
    for (i, line) in out.lines().skip(1).enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], format!("sim-{i}"), "{out}");
        assert_eq!(cols[1], "Ready", "{out}");
        assert_eq!(cols[2], "<none>", "{out}");
        assert_eq!(cols[4], "v1.36.0-capstan", "{out}");
    }
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("10.200.0.2") && wide.contains("sim://1"), "{wide}");

    // The node object as a kubelet would register it.
    let n = json(&c, &["get", "node", "sim-1"]);
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "sim-1");
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/os"], "linux");
    assert_eq!(n["metadata"]["labels"]["kubernetes.io/arch"], "amd64");
    assert_eq!(n["status"]["capacity"]["cpu"], "8");
    assert_eq!(n["status"]["allocatable"]["memory"], "32Gi");
    assert_eq!(n["status"]["capacity"]["pods"], "110");
    assert_eq!(n["status"]["nodeInfo"]["containerRuntimeVersion"], "sim://1");
    assert_eq!(n["status"]["nodeInfo"]["architecture"], "amd64");
    for (t, s) in
        [("Ready", "True"), ("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False")]
    {
        assert_eq!(condition(&n, t).map(|c| c["status"].clone()), Some(Value::from(s)), "{t}: {n}");
    }
    assert_eq!(condition(&n, "Ready").map(|c| c["reason"].clone()), Some(Value::from("KubeletReady")));

    // Leases exist and are renewed.
    let leases = json(&c, &["get", "leases", "-n", "kube-node-lease"]);
    let items = leases["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 3, "{leases}");
    let lease = json(&c, &["get", "lease", "-n", "kube-node-lease", "sim-1"]);
    assert_eq!(lease["spec"]["holderIdentity"], "sim-1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    let first = lease["spec"]["renewTime"].as_str().unwrap_or("").to_string();
    // MicroTime: RFC 3339 with microseconds.
    assert!(first.len() == "2025-01-01T00:00:00.000000Z".len() && first.ends_with('Z'), "{first}");
    wait_for("the lease to be renewed", T, || {
        let l = json(&c, &["get", "lease", "-n", "kube-node-lease", "sim-1"]);
        (l["spec"]["renewTime"].as_str() != Some(first.as_str())).then_some(())
    });

    // A pod bound to sim-1 runs with an address from sim-1's range.
    let f = c.file("p.yaml", &pod_manifest("web", "sim-1", ""));
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let p = wait_running(&c, "web");
    let ip = p["status"]["podIP"].as_str().unwrap_or("");
    assert!(ip.starts_with("10.128.1."), "{p}");
    assert_eq!(p["status"]["podIPs"][0]["ip"], ip);
    assert_eq!(p["status"]["hostIP"], "10.200.0.2");
    assert!(p["status"]["startTime"].is_string(), "{p}");
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["imageID"], "sim://nginx:1.27");
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&p, t).map(|c| c["status"].clone()), Some(Value::from("True")), "{t}");
    }
    let listing = c.ok(&["get", "pod", "web", "--no-headers"]);
    assert!(listing.contains("1/1") && listing.contains("Running"), "{listing}");
    // A second pod on the node gets another address.
    let f = c.file("p2.yaml", &pod_manifest("web2", "sim-1", ""));
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let p2 = wait_running(&c, "web2");
    assert_ne!(p2["status"]["podIP"], p["status"]["podIP"]);

    // Deleting completes (kubectl waits until the object is gone).
    c.ok(&["delete", "pod", "web", "--timeout=30s"]);
    assert!(get(&c, &["get", "pod", "web"]).is_none());

    // A run-to-completion pod completes after its annotated time.
    let job = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\n  annotations:\n    capstan.io/sim-complete-after-seconds: \"1\"\nspec:\n  nodeName: sim-2\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n";
    let f = c.file("once.yaml", job);
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let done = wait_for("pod once Succeeded", T, || {
        let p = get(&c, &["get", "pod", "once"])?;
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    let term = &done["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 0, "{done}");
    assert_eq!(term["reason"], "Completed", "{done}");
    let listing = c.ok(&["get", "pod", "once", "--no-headers"]);
    assert!(listing.contains("Completed"), "{listing}");

    // Pods bound to a deleted node are collected.
    let f = c.file("p3.yaml", &pod_manifest("orphan", "sim-0", ""));
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    wait_running(&c, "orphan");
    c.ok(&["delete", "node", "sim-0"]);
    wait_for("the orphaned pod to be deleted", T, || {
        get(&c, &["get", "pod", "orphan"]).is_none().then_some(())
    });
    // The other nodes stayed Ready throughout.
    let out = c.ok(&["get", "nodes", "--no-headers"]);
    assert_eq!(out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 2, "{out}");
}

#[test]
fn sim_nodes_register_renew_and_run_pods_in_process() {
    sim_nodes_register_renew_and_run_pods(Mode::InProcess);
}

#[test]
fn sim_nodes_register_renew_and_run_pods_over_nats() {
    sim_nodes_register_renew_and_run_pods(Mode::Nats);
}

const REPLICA_SET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: spread
spec:
  replicas: 6
  selector:
    matchLabels: {app: spread}
  template:
    metadata:
      labels: {app: spread}
    spec:
      # Two per node, whatever else runs there (sim-2 also holds the two pods above, and
      # the default scoring would rather leave it out); once sim-2 is tainted unreachable it
      # leaves the spread, so the replacements fit on the other two.
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, nodeTaintsPolicy: Honor,
         labelSelector: {matchLabels: {app: spread}}}
      containers:
      - name: c
        image: nginx:1.27
"#;

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

fn unreachable_node_is_tainted_and_its_pods_evicted(mode: Mode) {
    let c = cluster(mode);
    wait_nodes_ready(&c);
    // One pod with the default (here 2 s) unreachable toleration, one tolerating forever.
    let f = c.file("a.yaml", &pod_manifest("victim", "sim-2", ""));
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let forever = "  tolerations:\n  - operator: Exists\n";
    let f = c.file("b.yaml", &pod_manifest("stays", "sim-2", forever));
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let victim = wait_running(&c, "victim");
    wait_running(&c, "stays");
    let tol = victim["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    assert!(
        tol.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["tolerationSeconds"] == 2),
        "{tol:?}"
    );

    // When a ReplicaSet controller and a scheduler are running, spread a ReplicaSet.
    let f = c.file("rs.yaml", REPLICA_SET);
    c.ok(&["apply", "-f", f.to_str().unwrap_or_default()]);
    let running_rs = |c: &Cluster| -> Vec<Value> {
        json(c, &["get", "pods", "-l", "app=spread"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .collect()
    };
    // The ReplicaSet's 6 pods run, spread over the 3 nodes by the scheduler.
    wait_for("6 running ReplicaSet pods", Duration::from_secs(60), || {
        (running_rs(&c).len() == 6).then_some(())
    });
    let rs_on_2: Vec<String> = running_rs(&c)
        .iter()
        .filter(|p| node_of(p) == "sim-2")
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!rs_on_2.is_empty(), "the scheduler put none of the 6 pods on sim-2");

    // Stop sim-2's heartbeats.
    c.ok(&["annotate", "node", "sim-2", "capstan.io/sim-stop-heartbeat=true"]);
    wait_for("sim-2 NotReady in kubectl get nodes", T, || {
        let out = c.ok(&["get", "node", "sim-2", "--no-headers"]);
        (out.split_whitespace().nth(1) == Some("NotReady")).then_some(())
    });
    let n = json(&c, &["get", "node", "sim-2"]);
    let ready = condition(&n, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready["status"], "Unknown", "{n}");
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{n}");
    assert_eq!(ready["message"], "Kubelet stopped posting node status.", "{n}");
    assert_eq!(condition(&n, "MemoryPressure").map(|c| c["status"].clone()), Some(Value::from("Unknown")));
    let n = wait_for("the unreachable taints", T, || {
        let n = json(&c, &["get", "node", "sim-2"]);
        let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let has =
            |e: &str| taints.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == e);
        (has("NoExecute") && has("NoSchedule")).then_some(n)
    });
    let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
    assert!(taints.iter().any(|t| t["effect"] == "NoExecute" && t["timeAdded"].is_string()), "{taints:?}");
    // The other nodes stay Ready.
    let out = c.ok(&["get", "nodes", "--no-headers"]);
    assert_eq!(out.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count(), 2, "{out}");

    // Pods on it are marked not ready, then evicted after their 2 s toleration. The node
    // does not answer, so they stay Terminating (as upstream) until it comes back.
    wait_for("the pod tolerating forever to be marked not ready", T, || {
        let p = get(&c, &["get", "pod", "stays"])?;
        condition(&p, "Ready").is_some_and(|r| r["status"] == "False").then_some(())
    });
    wait_for("the victim to be evicted", T, || {
        let p = get(&c, &["get", "pod", "victim"])?;
        p["metadata"]["deletionTimestamp"].is_string().then_some(())
    });
    let listing = c.ok(&["get", "pod", "victim", "--no-headers"]);
    assert!(listing.contains("Terminating"), "{listing}");
    let stays = json(&c, &["get", "pod", "stays"]);
    assert!(stays["metadata"]["deletionTimestamp"].is_null(), "{stays}");

    {
        // Replacements of the evicted ReplicaSet pods land on the other nodes.
        wait_for("6 running ReplicaSet pods off sim-2", Duration::from_secs(60), || {
            let pods = running_rs(&c);
            (pods.len() == 6 && pods.iter().all(|p| node_of(p) != "sim-2")).then_some(())
        });
        for name in &rs_on_2 {
            let p = get(&c, &["get", "pod", name]);
            assert!(
                p.is_none_or(|p| p["metadata"]["deletionTimestamp"].is_string()),
                "{name} still runs on sim-2"
            );
        }
    }

    // Heartbeats resume: Ready again, taints gone, the evicted pod's deletion completes,
    // the pod that stayed is Ready again.
    c.ok(&["annotate", "node", "sim-2", "capstan.io/sim-stop-heartbeat-"]);
    wait_for("sim-2 Ready again without taints", T, || {
        let n = json(&c, &["get", "node", "sim-2"]);
        let ready = condition(&n, "Ready").is_some_and(|r| r["status"] == "True");
        let tainted = n["spec"]["taints"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["key"] == "node.kubernetes.io/unreachable"));
        (ready && !tainted).then_some(())
    });
    wait_for("the evicted pod to be gone", T, || get(&c, &["get", "pod", "victim"]).is_none().then_some(()));
    wait_running(&c, "stays");
}

#[test]
fn unreachable_node_is_tainted_and_its_pods_evicted_in_process() {
    unreachable_node_is_tainted_and_its_pods_evicted(Mode::InProcess);
}

#[test]
fn unreachable_node_is_tainted_and_its_pods_evicted_over_nats() {
    unreachable_node_is_tainted_and_its_pods_evicted(Mode::Nats);
}
