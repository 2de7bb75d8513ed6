//! The clients users run, each version: the preinstalled kubectl (1.32) and kubectl 1.35
//! (fetched by `scripts/deps.sh test`) through the same first-day workflow against a real
//! `capstan up`, so a newer client's requests (content types, discovery, apply) are
//! covered as well as the older one's.

mod common;

use common::{client, wait_for, Cluster};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const APP: &str = r#"apiVersion: apps/v1
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
      - name: web
        image: registry.example/web:1
        ports:
        - {name: http, containerPort: 80}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
data:
  a: "1"
"#;

struct Kubectl<'a> {
    c: &'a Cluster,
    bin: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.c.kubectl_as(&self.bin, args, &[], None)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            self.bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("kubectl printed JSON")
    }
}

/// The first-day workflow, in its own namespace `ns`.
fn workflow(k: &Kubectl, ns: &str) {
    let version = k.ok(&["version"]);
    assert!(version.contains("Server Version: v1."), "{version}");

    k.ok(&["create", "namespace", ns]);
    let app = k.c.file(&format!("{ns}-app.yaml"), APP);
    let app = app.to_str().unwrap();
    let out = k.ok(&["apply", "-n", ns, "-f", app]);
    assert!(out.contains("deployment.apps/web created") && out.contains("configmap/cfg created"), "{out}");
    let out = k.ok(&["apply", "-n", ns, "-f", app]);
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let out = k.ok(&["apply", "--server-side", "-n", ns, "-f", app]);
    assert!(out.contains("serverside-applied"), "{out}");

    k.ok(&["wait", "-n", ns, "--for=condition=Available", "deployment/web", "--timeout=60s"]);
    k.ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout=60s"]);
    let out = k.ok(&["get", "pods", "-n", ns, "-l", "app=web", "-o", "wide"]);
    assert_eq!(out.lines().filter(|l| l.contains("Running")).count(), 2, "{out}");

    k.ok(&["scale", "-n", ns, "deployment/web", "--replicas=3"]);
    wait_for("3 ready replicas", Duration::from_secs(60), || {
        (k.json(&["get", "-n", ns, "deployment/web"])["status"]["readyReplicas"] == 3).then_some(())
    });
    k.ok(&["set", "image", "-n", ns, "deployment/web", "web=registry.example/web:2"]);
    k.ok(&["rollout", "status", "-n", ns, "deployment/web", "--timeout=90s"]);
    let out = k.ok(&["rollout", "history", "-n", ns, "deployment/web"]);
    assert!(out.lines().filter(|l| l.trim_start().starts_with(['1', '2'])).count() == 2, "{out}");

    k.ok(&["label", "-n", ns, "configmap/cfg", "tier=config"]);
    k.ok(&["annotate", "-n", ns, "configmap/cfg", "note=hi"]);
    k.ok(&["patch", "-n", ns, "configmap/cfg", "--type=merge", "-p", r#"{"data":{"b":"2"}}"#]);
    let cm = k.json(&["get", "-n", ns, "configmap", "-l", "tier=config"]);
    assert_eq!(cm["items"][0]["data"]["b"], "2", "{cm}");
    assert_eq!(cm["items"][0]["metadata"]["annotations"]["note"], "hi", "{cm}");

    // Typed creates (kubectl sends protobuf for some of these).
    k.ok(&["create", "configmap", "made", "-n", ns, "--from-literal=k=v"]);
    k.ok(&["create", "secret", "generic", "s", "-n", ns, "--from-literal=k=v"]);
    k.ok(&["create", "serviceaccount", "robot", "-n", ns]);
    k.ok(&["create", "role", "reader", "-n", ns, "--verb=get,list", "--resource=pods"]);
    k.ok(&[
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        ns,
        "--role=reader",
        &format!("--serviceaccount={ns}:robot"),
    ]);
    let can =
        k.ok(&["auth", "can-i", "list", "pods", "-n", ns, &format!("--as=system:serviceaccount:{ns}:robot")]);
    assert_eq!(can.trim(), "yes");
    let cannot = k.run(&[
        "auth",
        "can-i",
        "delete",
        "pods",
        "-n",
        ns,
        &format!("--as=system:serviceaccount:{ns}:robot"),
    ]);
    assert_eq!(String::from_utf8_lossy(&cannot.stdout).trim(), "no");
    let who = k.ok(&["auth", "whoami"]);
    assert!(who.contains("system:masters"), "{who}");

    let out = k.ok(&["api-resources"]);
    assert!(out.contains("deployments") && out.contains("apps/v1"), "{out}");
    let out = k.ok(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("replicas"), "{out}");

    // diff exits 1 when there is a difference.
    let changed = APP.replace("replicas: 2", "replicas: 5");
    let f = k.c.file(&format!("{ns}-changed.yaml"), &changed);
    let out = k.run(&["diff", "-n", ns, "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("+  replicas: 5"));

    k.ok(&["delete", "namespace", ns, "--timeout=60s"]);
    wait_for("the namespace gone", Duration::from_secs(60), || {
        (!k.run(&["get", "namespace", ns]).status.success()).then_some(())
    });
}

#[test]
fn kubectl_1_32_and_1_35_run_the_first_day_workflow() {
    let c = Cluster::start_with(&["--sim-nodes", "2"]);
    let old = Kubectl { c: &c, bin: Path::new("kubectl").to_path_buf() };
    let new = Kubectl { c: &c, bin: client("kubectl-1.35") };
    let v = new.ok(&["version", "--client"]);
    assert!(v.contains("v1.35"), "{v}");
    workflow(&old, "old");
    workflow(&new, "new");
}
