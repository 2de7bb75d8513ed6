//! CustomResourceDefinitions with the real kubectl against a real `capstan up` on a real
//! nats-server: the CronTab of upstream's documentation, served within a second, with
//! printer columns, short name, defaults, validation, pruning, SSA, scale, status, watch,
//! explain, events on the bus, and deletion of the CRD removing its objects.

mod common;

use common::nats::Nats;
use common::{wait_for, Cluster};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: crontabs.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names:
    plural: crontabs
    singular: crontab
    kind: CronTab
    shortNames: [ct]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            description: The desired state of a CronTab.
            x-kubernetes-validations:
            - rule: "!has(self.image) || self.image.startsWith('my-')"
              message: image must start with my-
            - rule: "!has(oldSelf.image) || (has(self.image) && self.image == oldSelf.image)"
              message: image is immutable
              fieldPath: .image
            required: [cronSpec]
            properties:
              cronSpec:
                type: string
                description: When to run, in cron syntax.
                pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'
              image:
                type: string
              replicas:
                type: integer
                minimum: 1
                maximum: 10
                default: 1
              policy:
                type: string
                enum: [Allow, Forbid]
                default: Allow
          status:
            type: object
            properties:
              replicas:
                type: integer
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Spec
      type: string
      jsonPath: .spec.cronSpec
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
"#;

const CRONTAB: &str = r#"apiVersion: stable.example.com/v1
kind: CronTab
metadata:
  name: my-new-cron-object
spec:
  cronSpec: "* * * * */5"
  image: my-awesome-cron-image
"#;

fn json(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// A `kubectl get crontabs -w --output-watch-events` in the background, stopped on drop.
struct Watch {
    child: std::process::Child,
    rx: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Watch {
    fn start(c: &Cluster) -> Watch {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .arg("--cache-dir")
            .arg(c.path().join("kube-cache-w"))
            .args(["get", "crontabs", "-w", "--output-watch-events", "--request-timeout=60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl");
        let mut stdout = child.stdout.take().expect("stdout");
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
        Watch { child, rx, seen: String::new() }
    }

    fn wait(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        wait_for(what, Duration::from_secs(20), || {
            while let Ok(s) = self.rx.try_recv() {
                self.seen.push_str(&s);
            }
            f(&self.seen).then_some(())
        });
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn crontab_crd_end_to_end() {
    let nats = Nats::start();
    let c = Cluster::start_with(&["--nats", &nats.url()]);
    let crd = c.file("crd.yaml", CRD);
    let crd = crd.to_str().unwrap();

    // Served within a second of its creation (measured from kubectl apply's return to a
    // kubectl get that sees Established, each kubectl run included).
    let out = c.ok(&["apply", "-f", crd]);
    let created = Instant::now();
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created"),
        "{out}"
    );
    wait_for("the CRD to be established", Duration::from_secs(5), || {
        let out = c.kubectl(&[
            "get",
            "crd",
            "crontabs.stable.example.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ]);
        (String::from_utf8_lossy(&out.stdout) == "True").then_some(())
    });
    let established = created.elapsed();
    eprintln!("CRD established {established:?} after kubectl apply returned");
    assert!(established < Duration::from_secs(2), "{established:?}");
    let crd_obj = json(&c, &["get", "crd", "crontabs.stable.example.com"]);
    assert_eq!(crd_obj["status"]["acceptedNames"]["kind"], "CronTab");
    assert_eq!(crd_obj["status"]["storedVersions"], serde_json::json!(["v1"]));
    assert_eq!(
        crd_obj["metadata"]["finalizers"],
        serde_json::json!(["customresourcecleanup.apiextensions.k8s.io"])
    );
    let names = crd_obj["status"]["conditions"].as_array().unwrap();
    assert!(names
        .iter()
        .any(|c| c["type"] == "NamesAccepted" && c["status"] == "True" && c["reason"] == "NoConflicts"));

    let mut watch = Watch::start(&c);
    watch.wait("the watch to list", |_| true);

    // Unknown fields: Strict (kubectl's default) refuses them, Warn prunes with a warning.
    let with_unknown = format!("{CRONTAB}  bogus: 1\n");
    let f = c.file("ct-unknown.yaml", &with_unknown);
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("strict decoding error: unknown field \"spec.bogus\""), "{err}");
    let out = c.kubectl(&["apply", "--validate=warn", "-f", f.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("crontab.stable.example.com/my-new-cron-object created"));
    assert!(stderr.contains("Warning: unknown field \"spec.bogus\""), "{stderr}");
    let obj = json(&c, &["get", "crontab", "my-new-cron-object"]);
    assert!(obj["spec"].get("bogus").is_none(), "pruned: {obj}");
    // Defaults from the schema.
    assert_eq!(obj["spec"]["replicas"], 1);
    assert_eq!(obj["spec"]["policy"], "Allow");
    assert_eq!(obj["metadata"]["generation"], 1);

    // Printer columns, by plural and by short name.
    let table = c.ok(&["get", "crontabs"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    assert!(table.lines().nth(1).unwrap().contains("* * * * */5"), "{table}");
    let by_short = c.ok(&["get", "ct"]);
    assert!(by_short.contains("my-new-cron-object"), "{by_short}");
    let all = c.ok(&["get", "all"]);
    assert!(all.contains("crontab.stable.example.com/my-new-cron-object"), "{all}");

    // kubectl explain reads the published schema.
    let explain = c.ok(&["explain", "crontab.spec"]);
    assert!(explain.contains("cronSpec") && explain.contains("When to run, in cron syntax."), "{explain}");

    // Invalid objects: 422 naming each failing field.
    let bad = c.file(
        "ct-bad.yaml",
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: bad\nspec:\n  cronSpec: nope\n  replicas: 20\n  policy: Maybe\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("The CronTab \"bad\" is invalid"), "{err}");
    for field in ["spec.cronSpec", "spec.replicas", "spec.policy"] {
        assert!(err.contains(&format!("* {field}:")), "{field}: {err}");
    }
    assert!(err.contains("spec.replicas in body should be less than or equal to 10"), "{err}");
    // CEL rules (x-kubernetes-validations), transition rules with oldSelf included.
    let f =
        c.file("ct-cel.yaml", &CRONTAB.replace("my-new-cron-object", "cel").replace("my-awesome", "awesome"));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("spec: Invalid value: \"object\": image must start with my-"), "{err}");
    let err = c.fails(&[
        "patch",
        "ct",
        "my-new-cron-object",
        "--type=merge",
        "-p",
        r#"{"spec":{"image":"my-other"}}"#,
    ]);
    assert!(err.contains("spec.image: Invalid value: \"object\": image is immutable"), "{err}");
    let missing = c.file(
        "ct-missing.yaml",
        "apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: bad\nspec: {}\n",
    );
    let err = c.fails(&["create", "-f", missing.to_str().unwrap()]);
    assert!(err.contains("spec.cronSpec: Required value"), "{err}");

    // Server-side apply twice: the second changes nothing.
    let ssa = c.file("ct-ssa.yaml", &CRONTAB.replace("my-new-cron-object", "ssa-cron"));
    let ssa = ssa.to_str().unwrap();
    let first = c.ok(&["apply", "--server-side", "-f", ssa]);
    assert!(first.contains("serverside-applied"), "{first}");
    let rv1 = json(&c, &["get", "ct", "ssa-cron"])["metadata"]["resourceVersion"].clone();
    let second = c.ok(&["apply", "--server-side", "-f", ssa]);
    assert!(second.contains("serverside-applied"), "{second}");
    let after = json(&c, &["get", "ct", "ssa-cron", "--show-managed-fields"]);
    assert_eq!(after["metadata"]["resourceVersion"], rv1, "a second identical apply is a no-op");
    assert!(after["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|m| m.iter().any(|f| f["manager"] == "kubectl")));

    // Scale and status subresources.
    let out = c.ok(&["scale", "crontab", "my-new-cron-object", "--replicas=3"]);
    assert!(out.contains("scaled"), "{out}");
    assert_eq!(json(&c, &["get", "ct", "my-new-cron-object"])["spec"]["replicas"], 3);
    c.ok(&[
        "patch",
        "ct",
        "my-new-cron-object",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":2}}"#,
    ]);
    // The main resource ignores status.
    c.ok(&["patch", "ct", "my-new-cron-object", "--type=merge", "-p", r#"{"status":{"replicas":9}}"#]);
    let obj = json(&c, &["get", "ct", "my-new-cron-object"]);
    assert_eq!(obj["status"]["replicas"], 2);
    let scale = c.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v1/namespaces/default/crontabs/my-new-cron-object/scale",
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["replicas"], 2);

    // The watch saw it all.
    watch.wait("ADDED and MODIFIED rows", |seen| {
        let has = |t: &str| seen.lines().any(|l| l.starts_with(t) && l.contains("my-new-cron-object"));
        has("ADDED") && has("MODIFIED")
    });

    // A namespace's deletion takes its custom objects with it.
    c.ok(&["create", "namespace", "scratch"]);
    let f = c.file("ct-ns.yaml", &CRONTAB.replace("my-new-cron-object", "in-scratch"));
    c.ok(&["apply", "-n", "scratch", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let left = c.ok(&["get", "crontabs", "-A", "-o", "name"]);
    assert!(!left.contains("in-scratch"), "{left}");

    // A subscriber on the bus sees the custom object's events.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/bus_subscriber.py");
    let out = std::process::Command::new("python3")
        .args([
            script,
            &nats.url(),
            "my-new-cron-object",
            "capstan.v1.events.stable_example_com.crontabs.>",
            "MODIFIED",
        ])
        .output()
        .expect("python3 runs (scripts/deps.sh test installs nats-py and msgpack)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "subscriber failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("an event")).unwrap();
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["kind"], "CronTab");
    assert_eq!(first["subject"], "capstan.v1.events.stable_example_com.crontabs.default.my-new-cron-object");

    // Deleting the CRD removes every CronTab first, then the kind leaves discovery.
    let out = c.ok(&["delete", "crd", "crontabs.stable.example.com", "--timeout=60s"]);
    assert!(out.contains("deleted"), "{out}");
    watch.wait("DELETED rows", |seen| {
        let deleted = |n: &str| seen.lines().any(|l| l.starts_with("DELETED") && l.contains(n));
        deleted("my-new-cron-object") && deleted("ssa-cron")
    });
    wait_for("the kind to leave discovery", Duration::from_secs(5), || {
        let apis = c.ok(&["get", "--raw", "/apis"]);
        (!apis.contains("stable.example.com")).then_some(())
    });
    let err = c.fails(&["get", "--raw", "/apis/stable.example.com/v1/crontabs"]);
    assert!(err.contains("NotFound"), "{err}");
    // Created again, the kind starts empty.
    c.ok(&["apply", "-f", crd]);
    c.ok(&["wait", "--for=condition=Established", "crd/crontabs.stable.example.com", "--timeout=10s"]);
    let items = wait_for("crontabs to be served again", Duration::from_secs(5), || {
        let out = c.kubectl(&["get", "crontabs", "-A", "-o", "name"]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(items.trim(), "", "objects of the deleted CRD are gone");
}

#[test]
fn name_conflicts_and_cluster_scope() {
    let c = Cluster::start();
    let crd = c.file("crd.yaml", CRD);
    c.ok(&["apply", "-f", crd.to_str().unwrap()]);
    c.ok(&["wait", "--for=condition=Established", "crd/crontabs.stable.example.com", "--timeout=10s"]);
    // RBAC applies to custom resources by group and plural, as to built-in ones.
    let f = c.file("ct.yaml", CRONTAB);
    wait_for("crontabs to be served", Duration::from_secs(5), || {
        c.kubectl(&["apply", "-f", f.to_str().unwrap()]).status.success().then_some(())
    });
    let err = c.fails(&["get", "crontabs", "--as", "bob"]);
    assert!(
        err.contains("crontabs.stable.example.com is forbidden: User \"bob\" cannot list resource \"crontabs\" in API group \"stable.example.com\" in the namespace \"default\""),
        "{err}"
    );
    c.ok(&["create", "role", "crontab-reader", "--verb=get,list", "--resource=crontabs.stable.example.com"]);
    c.ok(&["create", "rolebinding", "bob-reads", "--role=crontab-reader", "--user=bob"]);
    let out = c.ok(&["get", "crontabs", "--as", "bob"]);
    assert!(out.contains("my-new-cron-object"), "{out}");
    let err = c.fails(&["delete", "crontab", "my-new-cron-object", "--as", "bob"]);
    assert!(err.contains("cannot delete resource \"crontabs\""), "{err}");
    let can = c.kubectl(&["auth", "can-i", "patch", "crontabs.stable.example.com/status", "--as", "bob"]);
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    assert_eq!(c.ok(&["auth", "can-i", "list", "crontabs.stable.example.com", "--as", "bob"]).trim(), "yes");

    // A second CRD of the group claiming the kind CronTab is not accepted.
    let clash = CRD
        .replace("name: crontabs.stable.example.com", "name: crontabz.stable.example.com")
        .replace("plural: crontabs", "plural: crontabz")
        .replace("singular: crontab", "singular: crontabz")
        .replace("shortNames: [ct]", "shortNames: [ctz]");
    let f = c.file("clash.yaml", &clash);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let cond = wait_for("NamesAccepted=False", Duration::from_secs(5), || {
        let v = json(&c, &["get", "crd", "crontabz.stable.example.com"]);
        v["status"]["conditions"]
            .as_array()
            .and_then(|l| l.iter().find(|c| c["type"] == "NamesAccepted" && c["status"] == "False").cloned())
    });
    assert_eq!(cond["reason"], "KindConflict");
    assert_eq!(cond["message"], "\"CronTab\" is already in use");
    let err = c.fails(&["get", "crontabz"]);
    assert!(err.contains("doesn't have a resource type"), "{err}");

    // A CRD with a rule that does not compile is refused with the rule's path.
    let bad_rule = CRD
        .replace("name: crontabs.stable.example.com", "name: badrules.stable.example.com")
        .replace("plural: crontabs", "plural: badrules")
        .replace("singular: crontab", "singular: badrule")
        .replace("kind: CronTab", "kind: BadRule")
        .replace("shortNames: [ct]", "shortNames: [br]")
        .replace("self.image.startsWith('my-')", "self.image.startsWith(");
    let f = c.file("badrule.yaml", &bad_rule);
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule: Invalid value"),
        "{err}"
    );

    // A CRD whose name does not match its names is refused with the field named.
    let bad = CRD.replace("name: crontabs.stable.example.com", "name: wrong.stable.example.com");
    let f = c.file("bad.yaml", &bad);
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("metadata.name: Invalid value: \"wrong.stable.example.com\""), "{err}");

    // Cluster-scoped kinds live outside namespaces.
    let cluster = CRD
        .replace("name: crontabs.stable.example.com", "name: clusterthings.stable.example.com")
        .replace("scope: Namespaced", "scope: Cluster")
        .replace("plural: crontabs", "plural: clusterthings")
        .replace("singular: crontab", "singular: clusterthing")
        .replace("kind: CronTab", "kind: ClusterThing")
        .replace("shortNames: [ct]", "shortNames: [cth]")
        // A second served version (conversion None: only apiVersion differs).
        .replace(
            "  versions:\n",
            "  versions:\n  - name: v1beta1\n    served: true\n    storage: false\n    schema:\n      openAPIV3Schema:\n        type: object\n        x-kubernetes-preserve-unknown-fields: true\n",
        );
    let f = c.file("cluster.yaml", &cluster);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["wait", "--for=condition=Established", "crd/clusterthings.stable.example.com", "--timeout=10s"]);
    let obj = CRONTAB.replace("kind: CronTab", "kind: ClusterThing").replace("my-new-cron-object", "thing1");
    let f = c.file("thing.yaml", &obj);
    wait_for("clusterthings to be served", Duration::from_secs(5), || {
        c.kubectl(&["apply", "-f", f.to_str().unwrap()]).status.success().then_some(())
    });
    let v = json(&c, &["get", "clusterthing", "thing1"]);
    assert!(v["metadata"].get("namespace").is_none(), "{v}");
    let raw = c.ok(&["get", "--raw", "/apis/stable.example.com/v1/clusterthings/thing1"]);
    assert!(raw.contains("\"name\":\"thing1\""), "{raw}");
    // Both versions serve the same objects, each under its own apiVersion; v1 (GA) is
    // the preferred version.
    let beta = c.ok(&["get", "--raw", "/apis/stable.example.com/v1beta1/clusterthings/thing1"]);
    assert!(beta.contains("\"apiVersion\":\"stable.example.com/v1beta1\""), "{beta}");
    let f = c.file(
        "thing2.yaml",
        &obj.replace("stable.example.com/v1", "stable.example.com/v1beta1").replace("thing1", "thing2"),
    );
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let v = json(&c, &["get", "clusterthings.v1.stable.example.com", "thing2"]);
    assert_eq!(v["apiVersion"], "stable.example.com/v1");
    let group = c.ok(&["get", "--raw", "/apis/stable.example.com"]);
    let group: serde_json::Value = serde_json::from_str(&group).unwrap();
    assert_eq!(group["preferredVersion"]["version"], "v1", "{group}");

    // A restarted server serves custom kinds from its first request.
    let mut c = c;
    c.restart();
    let out = c.ok(&["get", "clusterthings", "-o", "name"]);
    assert!(out.contains("clusterthing.stable.example.com/thing1"), "{out}");
}

/// In a cluster whose controllers run in their own process, custom kinds still get
/// namespace deletion and garbage collection (the controllers follow CRDs themselves).
#[test]
fn custom_objects_get_namespace_deletion_and_gc_across_processes() {
    let c = Cluster::start_multiprocess(0, &[]);
    let crd = c.file("crd.yaml", CRD);
    c.ok(&["apply", "-f", crd.to_str().unwrap()]);
    c.ok(&["wait", "--for=condition=Established", "crd/crontabs.stable.example.com", "--timeout=10s"]);
    let f = c.file("ct.yaml", CRONTAB);
    wait_for("crontabs to be served", Duration::from_secs(5), || {
        c.kubectl(&["apply", "-f", f.to_str().unwrap()]).status.success().then_some(())
    });
    // A ConfigMap owned by the CronTab goes with it.
    let uid = json(&c, &["get", "ct", "my-new-cron-object"])["metadata"]["uid"].as_str().unwrap().to_string();
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  ownerReferences:\n  - apiVersion: stable.example.com/v1\n    kind: CronTab\n    name: my-new-cron-object\n    uid: {uid}\ndata:\n  a: b\n"
    );
    let f = c.file("cm.yaml", &cm);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "ct", "my-new-cron-object"]);
    wait_for("the owned ConfigMap to be collected", Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "cm", "owned"]);
        String::from_utf8_lossy(&out.stderr).contains("not found").then_some(())
    });
    // A CronTab owned by a ConfigMap goes with it (custom dependents)...
    c.ok(&["create", "configmap", "owner", "--from-literal=a=b"]);
    let uid = json(&c, &["get", "cm", "owner"])["metadata"]["uid"].as_str().unwrap().to_string();
    let owned = CRONTAB.replace("my-new-cron-object", "owned-ct").replace(
        "metadata:\n  name: owned-ct\n",
        &format!("metadata:\n  name: owned-ct\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n"),
    );
    let f = c.file("owned-ct.yaml", &owned);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "cm", "owner"]);
    wait_for("the owned CronTab to be collected", Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "ct", "owned-ct"]);
        String::from_utf8_lossy(&out.stderr).contains("not found").then_some(())
    });
    // ...and a CronTab deleted in the foreground waits for its dependents.
    let f = c.file("parent.yaml", &CRONTAB.replace("my-new-cron-object", "parent"));
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let uid = json(&c, &["get", "ct", "parent"])["metadata"]["uid"].as_str().unwrap().to_string();
    let cm = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  ownerReferences:\n  - apiVersion: stable.example.com/v1\n    kind: CronTab\n    name: parent\n    uid: {uid}\n    blockOwnerDeletion: true\ndata:\n  a: b\n"
    );
    let f = c.file("child.yaml", &cm);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "ct", "parent", "--cascade=foreground", "--timeout=30s"]);
    let err = c.fails(&["get", "cm", "child"]);
    assert!(err.contains("not found"), "{err}");

    // A namespace's deletion deletes its CronTabs.
    c.ok(&["create", "namespace", "scratch"]);
    let f = c.file("ct-ns.yaml", &CRONTAB.replace("my-new-cron-object", "in-scratch"));
    c.ok(&["apply", "-n", "scratch", "-f", f.to_str().unwrap()]);
    c.ok(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let left = c.ok(&["get", "crontabs", "-A", "-o", "name"]);
    assert!(!left.contains("in-scratch"), "{left}");
}

#[test]
fn python_custom_objects_api_works_unchanged() {
    let c = Cluster::start();
    let crd = c.file("crd.yaml", CRD);
    c.ok(&["apply", "-f", crd.to_str().unwrap()]);
    wait_for("the CRD to be established", Duration::from_secs(5), || {
        let out = c.kubectl(&["get", "crontabs"]);
        out.status.success().then_some(())
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/custom_objects.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&c.kubeconfig)
        .env_remove("KUBECONFIG")
        .output()
        .expect("python3 runs (scripts/deps.sh test installs the kubernetes client)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all custom object checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CRD whose `spec` has the lists `a` and `b` of integers (bounded by `max_items` when
/// given) and one rule comparing every pair.
fn pairs_crd(max_items: Option<u32>) -> String {
    let bound = max_items.map(|m| format!("\n                maxItems: {m}")).unwrap_or_default();
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: pairs.cost.example.com
spec:
  group: cost.example.com
  scope: Namespaced
  names: {{plural: pairs, singular: pair, kind: Pair}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.a.all(x, self.b.all(y, x != y))"
              message: a and b must not share items
            - rule: "self.a.size() <= 10"
            properties:
              a:
                type: array{bound}
                items: {{type: integer}}
              b:
                type: array{bound}
                items: {{type: integer}}
"#
    )
}

#[test]
fn cel_rule_costs_are_bounded_as_upstream() {
    let c = Cluster::start();
    // Nested all() over two unbounded lists: refused with upstream's cost messages.
    let f = c.file("unbounded.yaml", &pairs_crd(None));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    let rule = "spec.versions[0].schema.openAPIV3Schema.properties[spec].x-kubernetes-validations[0].rule";
    for want in [
        "The CustomResourceDefinition \"pairs.cost.example.com\" is invalid".to_string(),
        format!("{rule}: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"),
        format!("{rule}: Forbidden: contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3Schema"),
        "spec.versions[0].schema.openAPIV3Schema: Forbidden: x-kubernetes-validations estimated rule cost total for entire OpenAPIv3Schema exceeds budget by factor of more than 100x".to_string(),
    ] {
        assert!(err.contains(&want), "{want}\n{err}");
    }
    // The cheap rule next to it is not named.
    assert!(!err.contains("x-kubernetes-validations[1]"), "{err}");
    c.fails(&["get", "crd", "pairs.cost.example.com"]);

    // The same rule with maxItems: 10 on both lists is accepted, and runs.
    let f = c.file("bounded.yaml", &pairs_crd(Some(10)));
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/pairs.cost.example.com created"),
        "{out}"
    );
    let pair = |name: &str, a: &str, b: &str| {
        format!("apiVersion: cost.example.com/v1\nkind: Pair\nmetadata:\n  name: {name}\nspec:\n  a: {a}\n  b: {b}\n")
    };
    let ok = c.file("ok.yaml", &pair("ok", "[1, 2]", "[3]"));
    let out = wait_for("the kind to be served", Duration::from_secs(5), || {
        let out = c.kubectl(&["apply", "-f", ok.to_str().unwrap()]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert!(out.contains("pair.cost.example.com/ok created"), "{out}");
    let bad = c.file("bad.yaml", &pair("bad", "[1, 2]", "[2]"));
    let err = c.fails(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("spec: Invalid value: \"object\": a and b must not share items"), "{err}");
    // Bounds are enforced before rules run.
    let long: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    let long = c.file("long.yaml", &pair("long", &format!("[{}]", long.join(", ")), "[]"));
    let err = c.fails(&["apply", "-f", long.to_str().unwrap()]);
    assert!(err.contains("spec.a: Too many: 11: must have at most 10 items"), "{err}");
}
