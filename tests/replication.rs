//! ReplicationControllers (`v1`) on `capstan up` with simulated nodes and the real kubectl:
//! served with defaults, validation, table output and the scale subresource; the
//! controller keeps their pods (the ReplicaSet controller's logic over equality
//! selectors); budgets count their scale; `kubectl apply --prune`, whose default list names
//! ReplicationController, works.

mod common;

use common::{wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// Live (not deleting) pods of app=web, and how many are ready.
fn web_pods(c: &Cluster) -> (Vec<Value>, usize) {
    let pods: Vec<Value> = json(c, &["get", "pods", "-n", "r", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let ready = pods
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count();
    (pods, ready)
}

fn wait_ready(c: &Cluster, n: usize) {
    wait_for(&format!("{n} web pods ready"), Duration::from_secs(60), || {
        let (pods, ready) = web_pods(c);
        (pods.len() == n && ready == n).then_some(())
    });
}

#[test]
fn replication_controllers_keep_and_scale_pods() {
    let c = Cluster::start_with(&["--sim-nodes", "1"]);
    c.ok(&["create", "namespace", "r"]);
    // No selector: defaulted from the template's labels, as upstream.
    let rc = c.file(
        "rc.yaml",
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: web, namespace: r}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: main, image: registry.example/app:1}\n",
    );
    c.ok(&["apply", "-f", rc.to_str().unwrap()]);
    let obj = json(&c, &["get", "rc", "web", "-n", "r"]);
    assert_eq!(obj["spec"]["selector"]["app"], "web", "{obj}");
    assert_eq!(obj["metadata"]["labels"]["app"], "web", "{obj}");
    wait_ready(&c, 2);
    let (pods, _) = web_pods(&c);
    let owner = &pods[0]["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["apiVersion"].as_str()),
        (Some("ReplicationController"), Some("v1"))
    );
    assert_eq!(owner["controller"], true);
    let st = wait_for("rc status", Duration::from_secs(30), || {
        let s = json(&c, &["get", "rc", "web", "-n", "r"])["status"].clone();
        (s["readyReplicas"] == 2).then_some(s)
    });
    assert_eq!(st["replicas"], 2, "{st}");
    assert_eq!(st["availableReplicas"], 2, "{st}");
    let table = c.ok(&["get", "rc", "-n", "r"]);
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "DESIRED", "CURRENT", "READY", "AGE"], "{table}");
    assert!(
        table.lines().nth(1).is_some_and(|l| l.split_whitespace().take(4).eq(["web", "2", "2", "2"])),
        "{table}"
    );

    // kubectl scale rc goes through the scale subresource, up and down.
    let out = c.ok(&["scale", "rc", "web", "-n", "r", "--replicas=4"]);
    assert!(out.contains("replicationcontroller/web scaled"), "{out}");
    wait_ready(&c, 4);
    let scale: Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/r/replicationcontrollers/web/scale",
    ]))
    .expect("a Scale");
    assert_eq!(scale["spec"]["replicas"], 4, "{scale}");
    assert_eq!(scale["status"]["selector"], "app=web", "{scale}");
    c.ok(&["scale", "rc", "web", "-n", "r", "--replicas=1"]);
    wait_ready(&c, 1);

    // A budget with maxUnavailable counts the controller's scale.
    c.ok(&["create", "pdb", "web", "-n", "r", "--selector=app=web", "--max-unavailable=1"]);
    wait_for("the budget counted the rc's scale", Duration::from_secs(30), || {
        let s = json(&c, &["get", "pdb", "web", "-n", "r"])["status"].clone();
        (s["expectedPods"] == 1 && s["desiredHealthy"] == 0 && s["disruptionsAllowed"] == 1).then_some(())
    });

    // A selector the template does not match is refused.
    let bad = c.file(
        "bad.yaml",
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: bad, namespace: r}\nspec:\n  selector: {app: other}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - {name: main, image: registry.example/app:1}\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"), "{err}");

    // kubectl apply --prune walks its default list, ReplicationController included.
    let cm = c.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: pruned, namespace: r, labels: {set: p}}\ndata: {a: b}\n",
    );
    c.ok(&["apply", "-f", cm.to_str().unwrap()]);
    let keep = c.file(
        "keep.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kept, namespace: r, labels: {set: p}}\ndata: {a: b}\n",
    );
    let out = c.ok(&["apply", "--prune", "-l", "set=p", "-n", "r", "-f", keep.to_str().unwrap()]);
    assert!(out.contains("configmap/pruned pruned"), "{out}");

    // Deleting the controller takes its pods (garbage collection by owner).
    c.ok(&["delete", "rc", "web", "-n", "r"]);
    wait_for("the rc's pods gone", Duration::from_secs(60), || web_pods(&c).0.is_empty().then_some(()));
}
