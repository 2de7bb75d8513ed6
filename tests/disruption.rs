//! PodDisruptionBudgets and the eviction subresource on `capstan up` with simulated nodes
//! and the real kubectl: the disruption controller keeps budgets' status current, an
//! eviction that would violate a budget is refused with upstream's 429, concurrent
//! evictions never spend more disruptions than allowed, and `kubectl drain` cordons,
//! evicts, retries on 429 and finishes once the budget allows.

mod common;

use capstan_bench::client::{Client, Kubeconfig};
use common::{wait_for, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: d}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: main, image: registry.example/app:1}}
      volumes:
      - {{name: scratch, emptyDir: {{}}}}
"#
    )
}

fn pdb_status(c: &Cluster, name: &str) -> Value {
    json(c, &["get", "pdb", name, "-n", "d"])["status"].clone()
}

/// Running and ready pods of `app`, with their nodes.
fn ready_pods(c: &Cluster, app: &str) -> Vec<(String, String)> {
    let l = format!("app={app}");
    json(c, &["get", "pods", "-n", "d", "-l", &l])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// POSTs an Eviction for each pod at once; the HTTP codes and bodies.
fn evict_all(c: &Cluster, pods: &[String]) -> Vec<(u16, Value)> {
    let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let client = Client::new(&kc).expect("client");
        let mut tasks = Vec::new();
        for p in pods {
            let mut conn = client.open().await.expect("connect");
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let body = serde_json::to_vec(&json!({"apiVersion": "policy/v1", "kind": "Eviction",
                    "metadata": {"name": p, "namespace": "d"}}))
                .unwrap_or_default();
                let r = conn
                    .request(
                        "POST",
                        &format!("/api/v1/namespaces/d/pods/{p}/eviction"),
                        &[("Content-Type", "application/json"), ("Accept", "application/json")],
                        &body,
                    )
                    .await
                    .expect("request");
                (r.status, r.json().unwrap_or(Value::Null))
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("task"));
        }
        all
    })
}

#[test]
fn budgets_guard_evictions_and_drain() {
    let c = Cluster::start_with(&["--sim-nodes", "2"]);
    c.ok(&["create", "namespace", "d"]);

    // Status as upstream's disruption controller writes it.
    apply(&c, "web.yaml", &deployment("web", 2));
    c.ok(&["create", "pdb", "web", "-n", "d", "--selector=app=web", "--min-available=2"]);
    let st = wait_for("the web budget computed", Duration::from_secs(30), || {
        let s = pdb_status(&c, "web");
        (s["currentHealthy"] == 2).then_some(s)
    });
    assert_eq!(st["desiredHealthy"], 2, "{st}");
    assert_eq!(st["expectedPods"], 2, "{st}");
    assert_eq!(st["disruptionsAllowed"], 0, "{st}");
    assert_eq!(st["observedGeneration"], 1, "{st}");
    let cond = &st["conditions"][0];
    assert_eq!((cond["type"].as_str(), cond["status"].as_str()), (Some("DisruptionAllowed"), Some("False")));
    assert_eq!(cond["reason"], "InsufficientPods", "{st}");
    let get = c.ok(&["get", "pdb", "web", "-n", "d"]);
    assert!(
        get.lines().nth(1).is_some_and(|l| l.split_whitespace().take(4).eq(["web", "2", "N/A", "0"])),
        "{get}"
    );

    // A refused eviction: 429 with upstream's message and cause.
    let pods = ready_pods(&c, "web");
    let refused = evict_all(&c, &[pods[0].0.clone()]);
    assert_eq!(refused[0].0, 429, "{refused:?}");
    let body = &refused[0].1;
    assert_eq!(
        body["message"], "Cannot evict pod as it would violate the pod's disruption budget.",
        "{body}"
    );
    assert_eq!(body["reason"], "TooManyRequests", "{body}");
    assert_eq!(body["details"]["causes"][0]["reason"], "DisruptionBudget", "{body}");
    assert_eq!(
        body["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently",
        "{body}"
    );

    // kubectl drain: cordons, retries the 429 until its timeout, then fails.
    let node = pods[0].1.clone();
    let out = c.kubectl(&["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=12s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "drain should fail: {stderr}");
    assert!(stderr.contains("Cannot evict pod as it would violate the pod's disruption budget."), "{stderr}");
    assert_eq!(json(&c, &["get", "node", &node])["spec"]["unschedulable"], true);
    assert_eq!(ready_pods(&c, "web").len(), 2, "the budget kept both pods");

    // Once the budget allows one disruption at a time, drain finishes: the node is empty
    // and the Deployment's pods run on the other node.
    c.ok(&["patch", "pdb", "web", "-n", "d", "--type=merge", "-p", r#"{"spec":{"minAvailable":1}}"#]);
    wait_for("the web budget allows one", Duration::from_secs(30), || {
        let s = pdb_status(&c, "web");
        (s["disruptionsAllowed"] == 1 && s["observedGeneration"] == 2).then_some(())
    });
    let out = c.kubectl(&["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("node/{node} drained")), "{stdout}");
    let placed = wait_for("web running elsewhere", Duration::from_secs(60), || {
        let p = ready_pods(&c, "web");
        (p.len() == 2).then_some(p)
    });
    assert!(placed.iter().all(|(_, n)| *n != node), "{placed:?}");
    c.ok(&["uncordon", &node]);

    // Concurrent evictions never spend more than the budget allows: four bare pods,
    // minAvailable 3, four evictions at once, exactly one passes.
    for i in 0..4 {
        apply(
            &c,
            &format!("quad{i}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: quad-{i}, namespace: d, labels: {{app: quad}}}}\nspec:\n  containers:\n  - {{name: main, image: registry.example/app:1}}\n"),
        );
    }
    apply(
        &c,
        "quad-pdb.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: quad, namespace: d}\nspec:\n  minAvailable: 3\n  selector: {matchLabels: {app: quad}}\n",
    );
    wait_for("the quad budget computed", Duration::from_secs(30), || {
        let s = pdb_status(&c, "quad");
        (s["currentHealthy"] == 4 && s["disruptionsAllowed"] == 1).then_some(())
    });
    let quad: Vec<String> = ready_pods(&c, "quad").into_iter().map(|(p, _)| p).collect();
    assert_eq!(quad.len(), 4);
    let codes: Vec<u16> = evict_all(&c, &quad).into_iter().map(|(c, _)| c).collect();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
    wait_for("the quad budget recounted", Duration::from_secs(30), || {
        let s = pdb_status(&c, "quad");
        (s["currentHealthy"] == 3 && s["disruptionsAllowed"] == 0 && s["expectedPods"] == 3).then_some(())
    });

    // An evicted pod carries the DisruptionTarget condition (a finalizer holds it here).
    apply(
        &c,
        "held.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: held, namespace: d, labels: {app: held}, finalizers: [example.com/hold]}\nspec:\n  containers:\n  - {name: main, image: registry.example/app:1}\n",
    );
    wait_for("held ready", Duration::from_secs(30), || (ready_pods(&c, "held").len() == 1).then_some(()));
    let r = evict_all(&c, &["held".to_string()]);
    assert_eq!(r[0].0, 201, "{r:?}");
    let p = json(&c, &["get", "pod", "held", "-n", "d"]);
    assert!(!p["metadata"]["deletionTimestamp"].is_null(), "{p}");
    let dt = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(dt["status"], "True", "{p}");
    assert_eq!(dt["reason"], "EvictionByEvictionAPI", "{p}");
    c.ok(&[
        "patch",
        "pod",
        "held",
        "-n",
        "d",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);

    // Bad budgets are refused with 422 naming the field.
    let bad = c.file(
        "bad.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad, namespace: d}\nspec:\n  minAvailable: 1\n  maxUnavailable: 1\n  selector: {matchLabels: {app: x}}\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("minAvailable and maxUnavailable cannot be both set"), "{err}");
    let bad = c.file(
        "bad2.yaml",
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: bad, namespace: d}\nspec:\n  minAvailable: 150%\n  selector: {matchLabels: {app: x}}\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("spec.minAvailable: Invalid value: intstr.IntOrString{Type:1, IntVal:0, StrVal:\"150%\"}: must not be greater than 100%"), "{err}");
}
