//! ResourceQuota and LimitRange on `capstan up` with the real kubectl: a quota refuses what
//! would exceed it with upstream's 403, gives back what deleted objects used, is never
//! exceeded by concurrent creates, and LimitRange defaults and bounds apply.

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

fn used(c: &Cluster, ns: &str, quota: &str, resource: &str) -> Option<String> {
    json(c, &["get", "resourcequota", quota, "-n", ns])["status"]["used"][resource]
        .as_str()
        .map(str::to_string)
}

fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: q}}\nspec:\n  containers:\n  - {{name: main, image: registry.example/app:1}}\n"
    )
}

#[test]
fn quotas_refuse_give_back_and_hold_under_concurrency() {
    let c = Cluster::start_with(&["--sim-nodes", "1"]);
    c.ok(&["create", "namespace", "q"]);
    apply(&c, "quota.yaml", "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: pods-quota, namespace: q}\nspec:\n  hard: {pods: \"2\"}\n");
    wait_for("the quota counted", Duration::from_secs(20), || {
        (used(&c, "q", "pods-quota", "pods")? == "0").then_some(())
    });
    apply(&c, "p1.yaml", &pod("p1"));
    apply(&c, "p2.yaml", &pod("p2"));
    let f = c.file("p3.yaml", &pod("p3"));
    let err = c.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains(
            "pods \"p3\" is forbidden: exceeded quota: pods-quota, requested: pods=1, used: pods=2, limited: pods=2"
        ),
        "{err}"
    );
    let describe = c.ok(&["describe", "quota", "pods-quota", "-n", "q"]);
    assert!(
        describe.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pods", "2", "2"]),
        "{describe}"
    );

    // A deleted pod gives its share back.
    c.ok(&["delete", "pod", "p1", "-n", "q", "--wait=true"]);
    wait_for("the quota recounted", Duration::from_secs(30), || {
        (used(&c, "q", "pods-quota", "pods")? == "1").then_some(())
    });
    c.ok(&["create", "-f", f.to_str().unwrap()]);

    // 50 creates at once against count/configmaps=10 leave exactly 10.
    c.ok(&["create", "namespace", "cm"]);
    wait_for("kube-root-ca.crt published", Duration::from_secs(20), || {
        c.kubectl(&["get", "configmap", "kube-root-ca.crt", "-n", "cm"]).status.success().then_some(())
    });
    apply(&c, "cmq.yaml", "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: cms, namespace: cm}\nspec:\n  hard: {count/configmaps: \"10\"}\n");
    wait_for("the quota counted kube-root-ca.crt", Duration::from_secs(20), || {
        (used(&c, "cm", "cms", "count/configmaps")? == "1").then_some(())
    });
    let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let codes: Vec<u16> = rt.block_on(async {
        let client = Client::new(&kc).expect("client");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let mut conn = client.open().await.expect("connect");
            tasks.push(tokio::spawn(async move {
                let body = serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("c{i}")}, "data": {"i": i.to_string()}}))
                .unwrap_or_default();
                let r = conn
                    .request(
                        "POST",
                        "/api/v1/namespaces/cm/configmaps",
                        &[("Content-Type", "application/json"), ("Accept", "application/json")],
                        &body,
                    )
                    .await
                    .expect("request");
                r.status
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("task"));
        }
        all
    });
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 9, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 403).count(), 41, "{codes:?}");
    let items = json(&c, &["get", "configmaps", "-n", "cm"])["items"].as_array().map_or(0, Vec::len);
    assert_eq!(items, 10);
    assert_eq!(used(&c, "cm", "cms", "count/configmaps").as_deref(), Some("10"));
}

#[test]
fn limit_ranges_fill_defaults_and_bound_containers() {
    let c = Cluster::start_with(&["--sim-nodes", "1"]);
    c.ok(&["create", "namespace", "q"]);
    apply(
        &c,
        "lr.yaml",
        r#"apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: q}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
"#,
    );
    apply(&c, "p1.yaml", &pod("p1"));
    let p = json(&c, &["get", "pod", "p1", "-n", "q"]);
    let r = &p["spec"]["containers"][0]["resources"];
    assert_eq!(r["limits"], json!({"cpu": "500m", "memory": "128Mi"}), "{p}");
    assert_eq!(r["requests"], json!({"cpu": "100m", "memory": "128Mi"}), "{p}");
    let note = p["metadata"]["annotations"]["kubernetes.io/limit-ranger"].as_str().unwrap_or("");
    assert!(note.starts_with("LimitRanger plugin set: "), "{p}");
    let big = c.file(
        "big.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: big, namespace: q}\nspec:\n  containers:\n  - name: main\n    image: registry.example/app:1\n    resources: {limits: {cpu: \"2\"}}\n",
    );
    let err = c.fails(&["create", "-f", big.to_str().unwrap()]);
    assert!(
        err.contains("pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"),
        "{err}"
    );
}
