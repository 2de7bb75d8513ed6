//! On the real node (`capstan up` with runc, driven by the real kubectl): configMap, secret,
//! projected and downwardAPI volumes follow their sources while the pod runs, through an
//! atomic `..data` symlink swap as upstream's kubelet does, within 60 s; a `subPath` mount
//! keeps what it had, as upstream. Needs what tests/kubelet.rs needs (scripts/deps.sh).

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{wait_for, Cluster};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn projected_volumes_follow_their_sources() {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    let c = Cluster::start_node("");
    c.ok(&["create", "configmap", "cfg", "--from-literal=a=one", "--from-literal=b=bee"]);
    c.ok(&["create", "secret", "generic", "sec", "--from-literal=pw=first"]);
    let yaml = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: live
  labels: {{app: live}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: cfg, configMap: {{name: cfg}}}}
  - {{name: sec, secret: {{secretName: sec}}}}
  - name: proj
    projected:
      sources:
      - configMap: {{name: cfg, items: [{{key: a, path: cfg-a}}]}}
      - downwardAPI: {{items: [{{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}]}}
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "sleep 1000"]
    volumeMounts:
    - {{name: cfg, mountPath: /etc/cfg}}
    - {{name: cfg, mountPath: /etc/sub-a, subPath: a}}
    - {{name: sec, mountPath: /etc/sec}}
    - {{name: proj, mountPath: /etc/proj}}
"#
    );
    let f = c.file("live.yaml", &yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("pod live running", Duration::from_secs(90), || {
        let p: Value = serde_json::from_str(&c.ok(&["get", "pod", "live", "-o", "json"])).ok()?;
        (p["status"]["phase"] == "Running").then_some(())
    });
    let exec = |cmd: &str| c.ok(&["exec", "live", "--", "sh", "-c", cmd]);
    assert_eq!(exec("cat /etc/cfg/a /etc/cfg/b"), "onebee");
    assert_eq!(exec("cat /etc/sub-a"), "one");
    assert_eq!(exec("cat /etc/sec/pw"), "first");
    assert_eq!(exec("cat /etc/proj/cfg-a"), "one");
    // The upstream layout: names are links through ..data to a timestamped directory.
    assert_eq!(exec("readlink /etc/cfg/a"), "..data/a\n");
    let before = exec("readlink /etc/cfg/..data");
    assert!(before.starts_with(".."), "{before}");

    // Change every source: a value, a removed key, a secret, the pod's labels.
    let changed = Instant::now();
    c.ok(&[
        "patch",
        "configmap",
        "cfg",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/a","value":"two"},{"op":"remove","path":"/data/b"}]"#,
    ]);
    c.ok(&["patch", "secret", "sec", "--type=merge", "-p", r#"{"stringData":{"pw":"second"}}"#]);
    c.ok(&["label", "pod", "live", "tier=web"]);
    wait_for("the volumes updated", Duration::from_secs(60), || {
        let out = exec(
            "cat /etc/cfg/a; echo; ls /etc/cfg; cat /etc/sec/pw; echo; cat /etc/proj/cfg-a; echo; cat /etc/proj/labels",
        );
        (out == "two\na\nsecond\ntwo\napp=\"live\"\ntier=\"web\"").then_some(())
    });
    assert!(changed.elapsed() < Duration::from_secs(60));
    assert_ne!(exec("readlink /etc/cfg/..data"), before, "a new directory was swapped in");
    assert_eq!(exec("ls -a /etc/cfg | grep -c '^\\.\\.20'"), "1\n", "the old directory is gone");
    // subPath mounts keep what they resolved at start, as upstream.
    assert_eq!(exec("cat /etc/sub-a"), "one");
    drop(reg);
}
