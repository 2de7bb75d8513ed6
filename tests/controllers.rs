//! The garbage collector, the namespace controller and the endpoints controllers, driven by
//! the real kubectl against a real `capstan up`, and (`_over_nats`) against a gateway with
//! the controllers, scheduler and simulated nodes each in its own process over a nats-server.

mod common;

use common::{wait_for, Cluster, Mode};
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// Whether `kubectl get <args>` answers NotFound.
fn gone(c: &Cluster, args: &[&str]) -> bool {
    let mut a = vec!["get"];
    a.extend(args);
    let out = c.kubectl(&a);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().expect("utf-8 path")]);
}

/// Creates ConfigMap `owner` and ConfigMap `dep` owned by it; returns the owner's uid.
fn owner_and_dependent(c: &Cluster, ns: &str, dep_extra: &str) -> String {
    c.ok(&["create", "configmap", "owner", "-n", ns, "--from-literal=a=b"]);
    let uid = c.ok(&["get", "cm", "owner", "-n", ns, "-o", "jsonpath={.metadata.uid}"]);
    assert!(!uid.trim().is_empty());
    let dep = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dep\n  namespace: {ns}\n{dep_extra}  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {}\n    blockOwnerDeletion: true\ndata: {{a: b}}\n",
        uid.trim()
    );
    apply(c, &format!("dep-{ns}.yaml", ns = ns), &dep);
    uid.trim().to_string()
}

fn garbage_collector_background_foreground_orphan(mode: Mode) {
    let c = mode.cluster(0, &[]);
    for ns in ["bg", "fg", "orphan"] {
        c.ok(&["create", "namespace", ns]);
    }

    // Background (kubectl's default): the owner goes at once, then the dependent.
    owner_and_dependent(&c, "bg", "");
    c.ok(&["delete", "cm", "owner", "-n", "bg"]);
    wait_for("the dependent to be collected", WAIT, || gone(&c, &["cm", "dep", "-n", "bg"]).then_some(()));

    // Foreground: the owner stays, deleting, while a blocking dependent exists.
    owner_and_dependent(&c, "fg", "  finalizers: [example.com/hold]\n");
    c.ok(&["delete", "cm", "owner", "-n", "fg", "--cascade=foreground", "--wait=false"]);
    let dep = wait_for("the dependent to be deleting", WAIT, || {
        let d = json(&c, &["get", "cm", "dep", "-n", "fg"]);
        d["metadata"]["deletionTimestamp"].is_string().then_some(d)
    });
    assert_eq!(dep["metadata"]["finalizers"], serde_json::json!(["example.com/hold"]), "{dep}");
    let owner = json(&c, &["get", "cm", "owner", "-n", "fg"]);
    assert!(owner["metadata"]["deletionTimestamp"].is_string(), "{owner}");
    assert_eq!(owner["metadata"]["finalizers"], serde_json::json!(["foregroundDeletion"]), "{owner}");
    // Release the dependent: then both go.
    c.ok(&[
        "patch",
        "cm",
        "dep",
        "-n",
        "fg",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    wait_for("the dependent to be gone", WAIT, || gone(&c, &["cm", "dep", "-n", "fg"]).then_some(()));
    wait_for("the owner to be gone", WAIT, || gone(&c, &["cm", "owner", "-n", "fg"]).then_some(()));

    // Orphan: kubectl waits for the owner to be gone; the dependent stays, unowned.
    owner_and_dependent(&c, "orphan", "");
    c.ok(&["delete", "cm", "owner", "-n", "orphan", "--cascade=orphan", "--timeout=30s"]);
    assert!(gone(&c, &["cm", "owner", "-n", "orphan"]));
    let dep = wait_for("the dependent to lose its owner reference", WAIT, || {
        let d = json(&c, &["get", "cm", "dep", "-n", "orphan"]);
        d["metadata"]
            .get("ownerReferences")
            .is_none_or(|r| r.as_array().is_some_and(|a| a.is_empty()))
            .then_some(d)
    });
    assert!(dep["metadata"]["deletionTimestamp"].is_null(), "{dep}");
    // And nothing collects it later: a foreground delete of an owner-less object is immediate.
    c.ok(&["delete", "cm", "dep", "-n", "orphan", "--cascade=foreground", "--timeout=30s"]);
    assert!(gone(&c, &["cm", "dep", "-n", "orphan"]));
}

#[test]
fn garbage_collector_background_foreground_orphan_in_process() {
    garbage_collector_background_foreground_orphan(Mode::InProcess);
}

#[test]
fn garbage_collector_background_foreground_orphan_over_nats() {
    garbage_collector_background_foreground_orphan(Mode::Nats);
}

fn garbage_collector_drops_only_dangling_references(mode: Mode) {
    let c = mode.cluster(0, &[]);
    c.ok(&["create", "configmap", "keeper", "--from-literal=a=b"]);
    c.ok(&["create", "configmap", "goner", "--from-literal=a=b"]);
    let uid = |n: &str| c.ok(&["get", "cm", n, "-o", "jsonpath={.metadata.uid}"]).trim().to_string();
    let (keeper, goner) = (uid("keeper"), uid("goner"));
    apply(
        &c,
        "two-owners.yaml",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: keeper, uid: {keeper}}}\n  - {{apiVersion: v1, kind: ConfigMap, name: goner, uid: {goner}}}\n"
        ),
    );
    c.ok(&["delete", "cm", "goner"]);
    let d = wait_for("the dangling reference to go", WAIT, || {
        let d = json(&c, &["get", "cm", "shared"]);
        (d["metadata"]["ownerReferences"].as_array().map(Vec::len) == Some(1)).then_some(d)
    });
    assert_eq!(d["metadata"]["ownerReferences"][0]["name"], "keeper", "{d}");
    // A reference to an owner that never existed (wrong uid) is dangling too.
    apply(
        &c,
        "ghost.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: haunted\n  ownerReferences:\n  - {apiVersion: v1, kind: ConfigMap, name: keeper, uid: 00000000-0000-0000-0000-000000000000}\n",
    );
    wait_for("an object owned by a ghost to be collected", WAIT, || {
        gone(&c, &["cm", "haunted"]).then_some(())
    });
    assert!(!gone(&c, &["cm", "shared"]));
}

#[test]
fn garbage_collector_drops_only_dangling_references_in_process() {
    garbage_collector_drops_only_dangling_references(Mode::InProcess);
}

#[test]
fn garbage_collector_drops_only_dangling_references_over_nats() {
    garbage_collector_drops_only_dangling_references(Mode::Nats);
}

const NAMESPACE_CONTENT: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: plain, namespace: doomed}
data: {a: b}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: held, namespace: doomed, finalizers: [example.com/hold]}
---
apiVersion: v1
kind: Secret
metadata: {name: s1, namespace: doomed}
stringData: {a: b}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: doomed}
spec:
  selector: {app: x}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: doomed, labels: {app: x}}
spec:
  schedulerName: nobody
  nodeSelector: {capstan.test/none: "true"}
  containers: [{name: c, image: nginx}]
"#;

fn namespace_deletion_removes_contents_then_the_namespace(mode: Mode) {
    let c = mode.cluster(0, &[]);
    c.ok(&["create", "namespace", "doomed"]);
    apply(&c, "content.yaml", NAMESPACE_CONTENT);
    wait_for("the service's endpoints", WAIT, || {
        (!gone(&c, &["endpoints", "svc", "-n", "doomed"])).then_some(())
    });
    c.ok(&["delete", "namespace", "doomed", "--wait=false"]);
    // Everything goes but the object holding a finalizer; the namespace stays Terminating.
    wait_for("the namespace content to be deleted", WAIT, || {
        let names =
            c.ok(&["get", "cm,secret,svc,pod,endpoints,endpointslices", "-n", "doomed", "-o", "name"]);
        (names.trim() == "configmap/held").then_some(())
    });
    let ns = json(&c, &["get", "ns", "doomed"]);
    assert_eq!(ns["status"]["phase"], "Terminating", "{ns}");
    assert_eq!(ns["spec"]["finalizers"], serde_json::json!(["kubernetes"]), "{ns}");
    let held = json(&c, &["get", "cm", "held", "-n", "doomed"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    // New objects are refused while it terminates.
    let err = c.fails(&["create", "configmap", "late", "-n", "doomed"]);
    assert!(err.contains("terminat"), "{err}");
    c.ok(&[
        "patch",
        "cm",
        "held",
        "-n",
        "doomed",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    c.ok(&["wait", "--for=delete", "namespace/doomed", "--timeout=30s"]);
    assert!(gone(&c, &["ns", "doomed"]));

    // The plain path: `kubectl delete ns` waits until the namespace is gone.
    c.ok(&["create", "namespace", "quick"]);
    c.ok(&["create", "configmap", "a", "-n", "quick", "--from-literal=a=b"]);
    c.ok(&["create", "secret", "generic", "b", "-n", "quick", "--from-literal=a=b"]);
    c.ok(&["delete", "namespace", "quick", "--timeout=30s"]);
    assert!(gone(&c, &["ns", "quick"]));
    // The name can be used again.
    c.ok(&["create", "namespace", "quick"]);
    assert!(gone(&c, &["cm", "a", "-n", "quick"]));
}

#[test]
fn namespace_deletion_removes_contents_then_the_namespace_in_process() {
    namespace_deletion_removes_contents_then_the_namespace(Mode::InProcess);
}

#[test]
fn namespace_deletion_removes_contents_then_the_namespace_over_nats() {
    namespace_deletion_removes_contents_then_the_namespace(Mode::Nats);
}

const WEB: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, labels: {tier: front}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  schedulerName: nobody
  nodeSelector: {capstan.test/none: "true"}
  containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, labels: {app: web}}
spec:
  schedulerName: nobody
  nodeSelector: {capstan.test/none: "true"}
  containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, labels: {app: other}}
spec:
  schedulerName: nobody
  nodeSelector: {capstan.test/none: "true"}
  containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 8080}]}]
"#;

fn set_status(c: &Cluster, pod: &str, ip: &str, ready: bool) {
    let p = format!(
        r#"{{"status":{{"podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"phase":"Running","conditions":[{{"type":"Ready","status":"{}"}}]}}}}"#,
        if ready { "True" } else { "False" }
    );
    c.ok(&["patch", "pod", pod, "--subresource=status", "--type=merge", "-p", &p]);
}

fn ips(list: &Value) -> Vec<String> {
    let mut v: Vec<String> =
        list.as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str().map(str::to_string)).collect();
    v.sort();
    v
}

/// (ready, not ready) IPs of the only slice of Service `web`.
fn slice_ips(c: &Cluster) -> Option<(Value, Vec<String>, Vec<String>)> {
    let l = json(c, &["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
    let items = l["items"].as_array()?;
    if items.len() != 1 {
        return None;
    }
    let s = items[0].clone();
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for e in s["endpoints"].as_array().into_iter().flatten() {
        let ip = e["addresses"][0].as_str().unwrap_or("").to_string();
        if e["conditions"]["ready"] == Value::Bool(true) {
            ready.push(ip);
        } else {
            not_ready.push(ip);
        }
    }
    ready.sort();
    not_ready.sort();
    Some((s, ready, not_ready))
}

fn endpoints_and_slices_follow_pods(mode: Mode) {
    let c = mode.cluster(0, &[]);
    apply(&c, "web.yaml", WEB);
    set_status(&c, "web-1", "10.244.0.5", true);
    set_status(&c, "web-2", "10.244.0.6", true);
    set_status(&c, "other", "10.244.0.9", true);

    let ep = wait_for("the ready addresses", WAIT, || {
        let ep = json(&c, &["get", "endpoints", "web"]);
        (ips(&ep["subsets"][0]["addresses"]) == ["10.244.0.5", "10.244.0.6"]).then_some(ep)
    });
    assert_eq!(ep["subsets"].as_array().map(Vec::len), Some(1), "{ep}");
    assert_eq!(
        ep["subsets"][0]["ports"],
        serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(ep["metadata"]["labels"]["tier"], "front", "{ep}");
    let addr = ep["subsets"][0]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["ip"] == "10.244.0.5"))
        .cloned();
    let addr = addr.expect("address of web-1");
    assert_eq!(addr["targetRef"]["kind"], "Pod");
    assert_eq!(addr["targetRef"]["name"], "web-1");
    let table = c.ok(&["get", "endpoints", "web"]);
    assert!(table.contains("10.244.0.5:8080,10.244.0.6:8080"), "{table}");

    let (slice, ready, not_ready) = wait_for("the slice", WAIT, || {
        slice_ips(&c).filter(|(_, r, n)| r == &["10.244.0.5", "10.244.0.6"] && n.is_empty())
    });
    assert_eq!((ready.len(), not_ready.len()), (2, 0));
    let name = slice["metadata"]["name"].as_str().unwrap_or("");
    assert!(name.starts_with("web-") && name.len() > 4, "{slice}");
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(slice["ports"], serde_json::json!([{"name": "http", "port": 8080, "protocol": "TCP"}]));
    let e = &slice["endpoints"][0];
    assert_eq!(
        e["conditions"],
        serde_json::json!({"ready": true, "serving": true, "terminating": false}),
        "{slice}"
    );
    assert_eq!(e["targetRef"]["kind"], "Pod");

    // web-2 turns not ready: it moves to notReadyAddresses.
    set_status(&c, "web-2", "10.244.0.6", false);
    let ep = wait_for("web-2 to be not ready", WAIT, || {
        let ep = json(&c, &["get", "endpoints", "web"]);
        (ips(&ep["subsets"][0]["notReadyAddresses"]) == ["10.244.0.6"]).then_some(ep)
    });
    assert_eq!(ips(&ep["subsets"][0]["addresses"]), ["10.244.0.5"]);
    wait_for("the slice to mark web-2 not ready", WAIT, || {
        slice_ips(&c).filter(|(_, r, n)| r == &["10.244.0.5"] && n == &["10.244.0.6"])
    });

    // A pod leaving the selector leaves the endpoints.
    c.ok(&["label", "pod", "web-1", "app=gone", "--overwrite"]);
    wait_for("web-1 to leave", WAIT, || {
        let ep = json(&c, &["get", "endpoints", "web"]);
        (ep["subsets"][0]["addresses"].is_null()
            && ips(&ep["subsets"][0]["notReadyAddresses"]) == ["10.244.0.6"])
        .then_some(())
    });

    // The Service goes: its Endpoints and slices go too.
    c.ok(&["delete", "svc", "web"]);
    wait_for("the endpoints to go", WAIT, || gone(&c, &["endpoints", "web"]).then_some(()));
    wait_for("the slices to go", WAIT, || {
        let l = json(&c, &["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
        l["items"].as_array().is_some_and(|a| a.is_empty()).then_some(())
    });
}

#[test]
fn endpoints_and_slices_follow_pods_in_process() {
    endpoints_and_slices_follow_pods(Mode::InProcess);
}

#[test]
fn endpoints_and_slices_follow_pods_over_nats() {
    endpoints_and_slices_follow_pods(Mode::Nats);
}

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers: [{name: c, image: nginx, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: http}]
"#;

fn deployment_on_simulated_nodes_endpoints_and_foreground_cascade(mode: Mode) {
    let c = mode.cluster(2, &[]);
    apply(&c, "deploy.yaml", DEPLOYMENT);
    let ep = wait_for("two ready endpoints", Duration::from_secs(60), || {
        let ep = json(&c, &["get", "endpoints", "web"]);
        (ips(&ep["subsets"][0]["addresses"]).len() == 2).then_some(ep)
    });
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 80, "{ep}");
    assert!(
        ep["subsets"][0]["addresses"][0]["nodeName"].as_str().is_some_and(|n| n.starts_with("sim-")),
        "{ep}"
    );
    wait_for("the slice", WAIT, || slice_ips(&c).filter(|(_, r, _)| r.len() == 2));

    // Foreground: kubectl waits until the deployment is gone, which needs the ReplicaSet
    // and its pods gone first.
    c.ok(&["delete", "deployment", "web", "--cascade=foreground", "--timeout=60s"]);
    let left = c.ok(&["get", "rs,pods", "-l", "app=web", "-o", "name"]);
    assert!(left.trim().is_empty(), "{left}");
    wait_for("the endpoints to empty", WAIT, || {
        let ep = json(&c, &["get", "endpoints", "web"]);
        ep["subsets"].as_array().is_none_or(|s| s.is_empty()).then_some(())
    });
}

#[test]
fn deployment_on_simulated_nodes_endpoints_and_foreground_cascade_in_process() {
    deployment_on_simulated_nodes_endpoints_and_foreground_cascade(Mode::InProcess);
}

#[test]
fn deployment_on_simulated_nodes_endpoints_and_foreground_cascade_over_nats() {
    deployment_on_simulated_nodes_endpoints_and_foreground_cascade(Mode::Nats);
}
