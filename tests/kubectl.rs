//! The real kubectl against a real `capstan up`: the commands a user runs first.

mod common;

use common::{wait_for, Cluster};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  labels: {app: web, tier: config}
data:
  a: "1"
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
"#;

fn json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

#[test]
fn client_side_apply_create_unchanged_configured() {
    let c = Cluster::start();
    let f = c.file("app.yaml", MANIFEST);
    let f = f.to_str().unwrap();
    let out = c.ok(&["apply", "-f", f]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("configmap/cfg created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    let out = c.ok(&["apply", "-f", f]);
    assert_eq!(out.matches("unchanged").count(), 3, "{out}");
    let changed = MANIFEST.replace("replicas: 2", "replicas: 3").replace("nginx:1.27", "nginx:1.28");
    let f2 = c.file("app2.yaml", &changed);
    let out = c.ok(&["apply", "-f", f2.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/cfg unchanged"), "{out}");
    let d = json(&c, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.28");
    assert_eq!(d["metadata"]["generation"], 2);
    // Defaults as upstream.
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    let svc = json(&c, &["get", "svc", "web"]);
    // An address of the default service CIDR 10.96.0.0/12, outside its lower band.
    let ip: std::net::Ipv4Addr =
        svc["spec"]["clusterIP"].as_str().and_then(|s| s.parse().ok()).expect("clusterIP");
    let [a, b, c3, _] = ip.octets();
    assert!(a == 10 && (96..112).contains(&b) && (b, c3) != (96, 0), "{svc}");
}

#[test]
fn server_side_apply_and_conflict() {
    let c = Cluster::start();
    let f = c.file("app.yaml", MANIFEST);
    let out = c.ok(&["apply", "--server-side", "-f", f.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/web serverside-applied"), "{out}");
    let d = json(&c, &["get", "deploy", "web", "--show-managed-fields"]);
    let managers: Vec<&str> = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kubectl"), "{managers:?}");
    // Another manager takes replicas, then kubectl's apply with a different value conflicts.
    c.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":5}}"#]);
    let changed = MANIFEST.replace("replicas: 2", "replicas: 4");
    let f2 = c.file("app2.yaml", &changed);
    let err = c.fails(&["apply", "--server-side", "-f", f2.to_str().unwrap()]);
    assert!(err.contains("conflict"), "{err}");
    assert!(err.contains(".spec.replicas"), "{err}");
    let out = c.ok(&["apply", "--server-side", "--force-conflicts", "-f", f2.to_str().unwrap()]);
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(json(&c, &["get", "deploy", "web"])["spec"]["replicas"], 4);
}

#[test]
fn get_forms() {
    let c = Cluster::start();
    let f = c.file("app.yaml", MANIFEST);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["create", "namespace", "other"]);
    c.ok(&["create", "configmap", "elsewhere", "-n", "other", "--from-literal=x=y"]);

    let table = c.ok(&["get", "deploy"]);
    let header = table.lines().next().unwrap_or("");
    for col in ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] {
        assert!(header.contains(col), "missing {col} in {table}");
    }
    let wide = c.ok(&["get", "deploy", "-o", "wide"]);
    for col in ["CONTAINERS", "IMAGES", "SELECTOR"] {
        assert!(wide.contains(col), "missing {col} in {wide}");
    }
    assert!(wide.contains("nginx:1.27"), "{wide}");
    let yaml = c.ok(&["get", "cm", "cfg", "-o", "yaml"]);
    assert!(yaml.contains("kind: ConfigMap") && yaml.contains("resourceVersion:"), "{yaml}");
    let all_ns = c.ok(&["get", "cm", "-A"]);
    assert!(all_ns.contains("NAMESPACE"), "{all_ns}");
    assert!(all_ns.lines().any(|l| l.starts_with("other") && l.contains("elsewhere")), "{all_ns}");
    let by_label = c.ok(&["get", "cm", "-l", "tier=config", "-o", "name"]);
    assert_eq!(by_label.trim(), "configmap/cfg");
    let by_label_set = c.ok(&["get", "cm", "-l", "tier in (config,x),app", "-o", "name"]);
    assert_eq!(by_label_set.trim(), "configmap/cfg");
    let by_field = c.ok(&["get", "cm", "-A", "--field-selector", "metadata.namespace=other", "-o", "name"]);
    // Only namespace "other": its own ConfigMap and the published cluster CA.
    assert_eq!(by_field.trim(), "configmap/elsewhere\nconfigmap/kube-root-ca.crt");
    let bad = c.fails(&["get", "pods", "--field-selector", "spec.nope=x"]);
    assert!(bad.contains("field label not supported"), "{bad}");
    let all = c.ok(&["get", "all"]);
    assert!(all.contains("deployment.apps/web"), "{all}");
    assert!(all.contains("service/web"), "{all}");
    let describe = c.ok(&["describe", "deploy", "web"]);
    assert!(describe.contains("Selector:") && describe.contains("app=web"), "{describe}");
    let describe = c.ok(&["describe", "cm", "cfg"]);
    assert!(describe.contains("Name:") && describe.contains("cfg"), "{describe}");
    let api = c.ok(&["api-resources"]);
    assert!(
        api.lines().any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")),
        "{api}"
    );
    let explain = c.ok(&["explain", "pod.spec.containers"]);
    assert!(explain.contains("FIELD: containers"), "{explain}");
    let paged = c.ok(&["get", "ns", "--chunk-size=1", "-o", "name"]);
    assert_eq!(paged.lines().count(), 5, "{paged}");
}

#[test]
fn label_annotate_patch_scale_edit() {
    let c = Cluster::start();
    let f = c.file("app.yaml", MANIFEST);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["label", "cm", "cfg", "team=a"]);
    c.ok(&["annotate", "cm", "cfg", "owner=blue"]);
    let cm = json(&c, &["get", "cm", "cfg"]);
    assert_eq!(cm["metadata"]["labels"]["team"], "a");
    assert_eq!(cm["metadata"]["annotations"]["owner"], "blue");
    c.ok(&["label", "cm", "cfg", "team-"]);
    assert!(json(&c, &["get", "cm", "cfg"])["metadata"]["labels"].get("team").is_none());

    c.ok(&[
        "patch",
        "deploy",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.29"}]}}}}"#,
    ]);
    let d = json(&c, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.29");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80,
        "strategic merge kept the port"
    );
    c.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"spec":{"replicas":4}}"#]);
    assert_eq!(json(&c, &["get", "deploy", "web"])["spec"]["replicas"], 4);
    c.ok(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/replicas","value":5}]"#,
    ]);
    assert_eq!(json(&c, &["get", "deploy", "web"])["spec"]["replicas"], 5);
    let bad = c.fails(&[
        "patch",
        "deploy",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
    ]);
    assert!(bad.contains("invalid") && bad.contains("test"), "{bad}");

    let gen_before = json(&c, &["get", "deploy", "web"])["metadata"]["generation"].as_i64().unwrap();
    let out = c.ok(&["scale", "deploy", "web", "--replicas=7"]);
    assert!(out.contains("scaled"), "{out}");
    let d = json(&c, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 7);
    assert_eq!(d["metadata"]["generation"].as_i64().unwrap(), gen_before + 1);

    let editor = c.file("editor.sh", "#!/bin/sh\nsed -i 's/replicas: 7/replicas: 8/' \"$1\"\n");
    let _ = Command::new("chmod").arg("+x").arg(&editor).status();
    let out = c.kubectl_with(&["edit", "deploy", "web"], &[("KUBE_EDITOR", editor.to_str().unwrap())], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("edited"));
    assert_eq!(json(&c, &["get", "deploy", "web"])["spec"]["replicas"], 8);
}

#[test]
fn errors_conflict_already_exists_invalid() {
    let c = Cluster::start();
    c.ok(&["create", "configmap", "cfg", "--from-literal=a=b"]);
    let stale = c.ok(&["get", "cm", "cfg", "-o", "yaml"]);
    c.ok(&["label", "cm", "cfg", "bump=1"]);
    let f = c.file("stale.yaml", &stale);
    let err = c.fails(&["replace", "-f", f.to_str().unwrap()]);
    assert!(err.contains("Conflict") && err.contains("the object has been modified"), "{err}");
    let err = c.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("AlreadyExists") && err.contains("configmaps \"cfg\" already exists"), "{err}");
    let bad =
        c.file("bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\ndata:\n  a: b\n");
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("is invalid") && err.contains("metadata.name"), "{err}");
    let err = c.fails(&["create", "configmap", "x", "-n", "missing-ns", "--from-literal=a=b"]);
    assert!(err.contains("namespaces \"missing-ns\" not found"), "{err}");
    let err = c.fails(&["get", "cm", "nope"]);
    assert!(err.contains("configmaps \"nope\" not found"), "{err}");
}

#[test]
fn generators_and_auth() {
    let c = Cluster::start();
    assert!(c.ok(&["create", "namespace", "ns1"]).contains("namespace/ns1 created"));
    assert!(c
        .ok(&["create", "configmap", "cm1", "-n", "ns1", "--from-literal=a=b"])
        .contains("configmap/cm1 created"));
    assert!(c
        .ok(&["create", "secret", "generic", "s1", "-n", "ns1", "--from-literal=a=b"])
        .contains("secret/s1 created"));
    assert!(c
        .ok(&["create", "deployment", "d1", "--image=nginx", "--replicas=2"])
        .contains("deployment.apps/d1 created"));
    let s = json(&c, &["get", "secret", "s1", "-n", "ns1"]);
    assert_eq!(s["data"]["a"], "Yg==");
    assert_eq!(s["type"], "Opaque");
    let d = json(&c, &["get", "deploy", "d1"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx");
    assert_eq!(c.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    let out = c.kubectl(&["version"]);
    let v = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let newer = std::env::var("CAPSTAN_TEST_KUBECTL").is_ok_and(|p| p.contains("1.35"));
    let want = if newer { "Client Version: v1.35" } else { "Client Version: v1.32" };
    assert!(v.contains(want), "the kubectl under test must be the one asked for ({want}): {v}");
    // The server is 1.36: kubectl warns of the skew exactly where upstream's would (more
    // than one minor apart: 1.32 does, 1.35 does not).
    assert_eq!(stderr.contains("exceeds the supported minor version skew"), !newer, "{stderr}");
    // Deleting a namespace removes its contents, then the namespace.
    c.ok(&["delete", "namespace", "ns1"]);
    let err = c.fails(&["get", "ns", "ns1"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn watch_sees_added_modified_deleted() {
    let c = Cluster::start();
    c.ok(&["create", "configmap", "w0", "--from-literal=a=b"]);
    let mut watch = Command::new(common::kubectl_program())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--cache-dir")
        .arg(c.path().join("kube-cache-w"))
        .args(["get", "configmaps", "-w", "--output-watch-events", "--request-timeout=30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    let mut stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    let mut seen = String::new();
    // The watch prints the header once it has listed.
    wait_for("watch to start", Duration::from_secs(20), || {
        while let Ok(s) = rx.try_recv() {
            seen.push_str(&s);
        }
        seen.contains("w0").then_some(())
    });
    c.ok(&["create", "configmap", "w1", "--from-literal=a=b"]);
    c.ok(&["label", "configmap", "w1", "x=y"]);
    c.ok(&["delete", "configmap", "w1"]);
    wait_for("ADDED, MODIFIED and DELETED rows", Duration::from_secs(20), || {
        while let Ok(s) = rx.try_recv() {
            seen.push_str(&s);
        }
        let has = |t: &str| seen.lines().any(|l| l.starts_with(t) && l.contains("w1"));
        (has("ADDED") && has("MODIFIED") && has("DELETED")).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
}

#[test]
fn delete_with_finalizer_waits() {
    let c = Cluster::start();
    c.ok(&["create", "configmap", "f1", "--from-literal=a=b"]);
    c.ok(&["patch", "cm", "f1", "-p", r#"{"metadata":{"finalizers":["example.com/hold"]}}"#]);
    let mut del = Command::new(common::kubectl_program())
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .arg("--cache-dir")
        .arg(c.path().join("kube-cache-d"))
        .args(["delete", "configmap", "f1", "--timeout=60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl");
    // The object stays, marked for deletion, and kubectl keeps waiting.
    wait_for("deletionTimestamp", Duration::from_secs(20), || {
        let v = json(&c, &["get", "cm", "f1"]);
        v["metadata"]["deletionTimestamp"].as_str().map(|_| ())
    });
    assert!(del.try_wait().unwrap().is_none(), "kubectl delete returned while the finalizer was present");
    c.ok(&["patch", "cm", "f1", "--type=json", "-p", r#"[{"op":"remove","path":"/metadata/finalizers"}]"#]);
    let status =
        wait_for("kubectl delete to return", Duration::from_secs(20), || del.try_wait().ok().flatten());
    assert!(status.success());
    let err = c.fails(&["get", "cm", "f1"]);
    assert!(err.contains("not found"), "{err}");
}
