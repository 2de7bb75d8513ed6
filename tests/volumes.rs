//! Persistent volumes on the real node of `capstan up` (runc, CNI, real kubectl): the
//! default `local-path` class, a StatefulSet keeping its replicas' data across pod
//! deletion, pvc-protection, reclaim Delete and Retain, static volumes chosen by selector
//! (hand-made `local` and `hostPath` volumes, read-only claims, `subPathExpr`), ephemeral
//! volumes, and `kubectl get pv,pvc,storageclass` as upstream prints them.

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{wait_for, Cluster};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn registry_with_image() -> (Registry, String) {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    (reg, image)
}

fn get(c: &Cluster, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let out = c.kubectl(&a);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn describe(c: &Cluster, what: &[&str]) -> String {
    let mut a = vec!["describe"];
    a.extend(what);
    String::from_utf8_lossy(&c.kubectl(&a).stdout).into_owned()
}

/// Waits until the pod is Running and Ready (with `kubectl describe` on failure).
fn wait_running(c: &Cluster, name: &str) -> Value {
    let deadline = std::time::Instant::now() + T;
    loop {
        if let Some(p) = get(c, &["get", "pod", name]) {
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            if p["status"]["phase"] == "Running" && ready {
                return p;
            }
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "pod {name} not Running after 60 s:\n{}\n{}",
                describe(c, &["pod", name]),
                describe(c, &["pvc"])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gone(c: &Cluster, what: &[&str]) {
    wait_for(&format!("{what:?} gone"), T, || get(c, what).is_none().then_some(()));
}

fn claim_pod(name: &str, image: &str, claim: &str, command: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", {command:?}]
    volumeMounts:
    - {{name: data, mountPath: /data}}
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}

fn claim(name: &str, class: Option<&str>) -> String {
    let class = class.map(|c| format!("  storageClassName: {c}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n{class}  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n"
    )
}

fn volume_dir(c: &Cluster, pv: &str) -> PathBuf {
    let pv = get(c, &["get", "pv", pv]).expect("the volume exists");
    PathBuf::from(pv["spec"]["local"]["path"].as_str().expect("a local volume"))
}

fn node_ready(c: &Cluster) -> PathBuf {
    let node = wait_for("node-1 Ready", Duration::from_secs(30), || {
        let v = get(c, &["get", "node", "node-1"])?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(v)
    });
    let root =
        node["metadata"]["annotations"]["capstan.io/local-path-root"].as_str().expect("root annotation");
    PathBuf::from(root)
}

#[test]
fn statefulset_keeps_its_data_and_claims_are_reclaimed() {
    statefulset_and_reclaim(false);
}

/// The same over a locked-down bus: the node agent reads claims and volumes and deletes
/// released ones with its own node credential (Node authorizer, NodeRestriction).
#[test]
fn statefulset_keeps_its_data_and_claims_are_reclaimed_over_locked_down_nats() {
    statefulset_and_reclaim(true);
}

fn statefulset_and_reclaim(locked: bool) {
    let (_reg, image) = registry_with_image();
    let c = if locked { Cluster::start_node_locked("") } else { Cluster::start_node("") };
    let root = node_ready(&c);

    // The default class, as upstream prints it.
    let classes = c.ok(&["get", "storageclass"]);
    let mut lines = classes.lines();
    let head: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        head,
        ["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"]
    );
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        row[..6],
        ["local-path", "(default)", "capstan.io/local-path", "Delete", "WaitForFirstConsumer", "false"]
    );

    // A StatefulSet of 3 with a claim template on the default class.
    let sts = format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  podManagementPolicy: Parallel
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "[ -f /data/id ] || hostname > /data/id; echo started >> /data/starts; sleep 3600"]
        volumeMounts:
        - {{name: data, mountPath: /data}}
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 16Mi
"#
    );
    apply(&c, "sts.yaml", &sts);
    for i in 0..3 {
        wait_running(&c, &format!("web-{i}"));
    }
    let pvc = get(&c, &["get", "pvc", "data-web-1"]).expect("claim of web-1");
    assert_eq!(pvc["spec"]["storageClassName"], "local-path", "the default class was filled in");
    assert_eq!(pvc["status"]["phase"], "Bound");
    assert_eq!(pvc["metadata"]["annotations"]["volume.kubernetes.io/selected-node"], "node-1");
    assert!(pvc["metadata"]["finalizers"]
        .as_array()
        .unwrap()
        .contains(&"kubernetes.io/pvc-protection".into()));
    let pv_name = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    assert_eq!(pv_name, format!("pvc-{}", pvc["metadata"]["uid"].as_str().unwrap()));
    let pv = get(&c, &["get", "pv", &pv_name]).unwrap();
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["claimRef"]["name"], "data-web-1");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        "node-1"
    );
    let dir = volume_dir(&c, &pv_name);
    assert!(dir.starts_with(&root), "{} under {}", dir.display(), root.display());
    assert_eq!(std::fs::read_to_string(dir.join("id")).unwrap().trim(), "web-1", "written through the mount");

    // kubectl get pv,pvc: upstream's columns.
    let out = c.ok(&["get", "pv,pvc"]);
    let mut headers = out.lines().filter(|l| l.starts_with("NAME"));
    let pv_head: Vec<&str> = headers.next().unwrap().split_whitespace().collect();
    assert_eq!(
        pv_head,
        [
            "NAME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "RECLAIM",
            "POLICY",
            "STATUS",
            "CLAIM",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "REASON",
            "AGE"
        ]
    );
    let pvc_head: Vec<&str> = headers.next().unwrap().split_whitespace().collect();
    assert_eq!(
        pvc_head,
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE"
        ]
    );
    let pv_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(&format!("persistentvolume/{pv_name}")))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        pv_row[1..8],
        ["16Mi", "RWO", "Delete", "Bound", "default/data-web-1", "local-path", "<unset>"]
    );
    let pvc_row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("persistentvolumeclaim/data-web-1"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(pvc_row[1..7], ["Bound", pv_name.as_str(), "16Mi", "RWO", "local-path", "<unset>"]);

    // The pod goes, a new one comes on the same claim and finds the data.
    let old_uid = get(&c, &["get", "pod", "web-1"]).unwrap()["metadata"]["uid"].clone();
    c.ok(&["delete", "pod", "web-1", "--wait=false"]);
    wait_for("web-1 recreated", T, || {
        let p = get(&c, &["get", "pod", "web-1"])?;
        (p["metadata"]["uid"] != old_uid).then_some(())
    });
    wait_running(&c, "web-1");
    assert_eq!(c.ok(&["exec", "web-1", "--", "cat", "/data/id"]).trim(), "web-1");
    assert_eq!(c.ok(&["exec", "web-1", "--", "cat", "/data/starts"]), "started\nstarted\n");
    assert_eq!(get(&c, &["get", "pvc", "data-web-1"]).unwrap()["spec"]["volumeName"], pv_name.as_str());

    // pvc-protection: a claim in use stays until its pod is gone. A second, unused claim
    // deleted after it is the barrier: once that one is gone, the controller has seen both.
    apply(&c, "scratch.yaml", &claim("scratch", None));
    apply(&c, "canary.yaml", &claim("canary", Some("")));
    let user = claim_pod("user", &image, "scratch", "echo kept > /data/file; sleep 3600");
    apply(&c, "user.yaml", &user);
    wait_running(&c, "user");
    let scratch_pv =
        get(&c, &["get", "pvc", "scratch"]).unwrap()["spec"]["volumeName"].as_str().unwrap().to_string();
    let scratch_dir = volume_dir(&c, &scratch_pv);
    wait_for("the pod's file", T, || scratch_dir.join("file").exists().then_some(()));
    c.ok(&["delete", "pvc", "scratch", "--wait=false"]);
    c.ok(&["delete", "pvc", "canary", "--wait=false"]);
    wait_gone(&c, &["get", "pvc", "canary"]);
    let held = get(&c, &["get", "pvc", "scratch"]).expect("a claim in use is kept");
    assert!(!held["metadata"]["deletionTimestamp"].is_null());
    assert!(c.ok(&["get", "pvc", "scratch"]).contains("Terminating"));

    // Retain: a class of its own; its volume stays Released with its directory.
    apply(
        &c,
        "retain.yaml",
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: keep\nprovisioner: capstan.io/local-path\nreclaimPolicy: Retain\nvolumeBindingMode: WaitForFirstConsumer\n",
    );
    apply(&c, "kept.yaml", &claim("kept", Some("keep")));
    apply(&c, "keeper.yaml", &claim_pod("keeper", &image, "kept", "echo precious > /data/file; sleep 3600"));
    wait_running(&c, "keeper");
    let kept_pv =
        get(&c, &["get", "pvc", "kept"]).unwrap()["spec"]["volumeName"].as_str().unwrap().to_string();
    let kept_dir = volume_dir(&c, &kept_pv);
    c.ok(&["delete", "pvc", "kept", "--wait=false"]);
    c.ok(&["delete", "pod", "keeper"]);
    wait_gone(&c, &["get", "pvc", "kept"]);
    wait_for("the retained volume Released", T, || {
        (get(&c, &["get", "pv", &kept_pv])?["status"]["phase"] == "Released").then_some(())
    });

    // Delete: once the pod is gone the claim goes, then the volume and its directory.
    assert!(scratch_dir.join("file").exists());
    c.ok(&["delete", "pod", "user"]);
    wait_gone(&c, &["get", "pvc", "scratch"]);
    wait_gone(&c, &["get", "pv", &scratch_pv]);
    wait_for("the deleted volume's directory removed", T, || (!scratch_dir.exists()).then_some(()));
    // The retained one was Released before that sweep: still there, data and all.
    assert_eq!(get(&c, &["get", "pv", &kept_pv]).unwrap()["status"]["phase"], "Released");
    assert_eq!(std::fs::read_to_string(kept_dir.join("file")).unwrap(), "precious\n");
    assert!(!root.join(format!(".deleting-{scratch_pv}")).exists());
}

#[test]
fn static_volumes_selectors_read_only_and_ephemeral() {
    let (_reg, image) = registry_with_image();
    let c = Cluster::start_node("");
    node_ready(&c);
    // Two hand-made local volumes of class "manual" (no StorageClass object: bound at once,
    // as upstream), told apart by a label.
    let base = c.path().join("static");
    for tier in ["gold", "silver"] {
        let d = base.join(tier);
        std::fs::create_dir_all(d.join("sub-a")).unwrap();
        std::fs::write(d.join("sub-a").join("hello"), format!("{tier}\n")).unwrap();
        let pv = format!(
            r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: static-{tier}
  labels: {{tier: {tier}}}
spec:
  capacity: {{storage: 64Mi}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  persistentVolumeReclaimPolicy: Retain
  local: {{path: {}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {{key: kubernetes.io/hostname, operator: In, values: [node-1]}}
"#,
            d.display()
        );
        apply(&c, &format!("pv-{tier}.yaml"), &pv);
    }
    wait_for("static volumes Available", T, || {
        let a = get(&c, &["get", "pv", "static-gold"])?;
        let b = get(&c, &["get", "pv", "static-silver"])?;
        (a["status"]["phase"] == "Available" && b["status"]["phase"] == "Available").then_some(())
    });
    let picky = "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: picky\nspec:\n  storageClassName: manual\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n  selector:\n    matchLabels: {tier: silver}\n";
    apply(&c, "picky.yaml", picky);
    wait_for("picky Bound", T, || {
        let p = get(&c, &["get", "pvc", "picky"])?;
        (p["status"]["phase"] == "Bound").then_some(p)
    });
    let p = get(&c, &["get", "pvc", "picky"]).unwrap();
    assert_eq!(p["spec"]["volumeName"], "static-silver", "the selector picked the volume");
    assert_eq!(p["status"]["capacity"]["storage"], "64Mi", "the volume's capacity");
    assert_eq!(get(&c, &["get", "pv", "static-gold"]).unwrap()["status"]["phase"], "Available");
    assert_eq!(get(&c, &["get", "pv", "static-silver"]).unwrap()["spec"]["claimRef"]["name"], "picky");

    // A read-only claim, mounted whole and through subPathExpr from the pod's environment.
    let reader = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: reader
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: main
    image: {image}
    env:
    - {{name: SUB, value: sub-a}}
    command: ["sh", "-c", "cat /sub/hello; if touch /ro/x 2>/dev/null; then echo writable; else echo readonly; fi"]
    volumeMounts:
    - {{name: data, mountPath: /ro}}
    - {{name: data, mountPath: /sub, subPathExpr: "$(SUB)"}}
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: picky, readOnly: true}}
"#
    );
    apply(&c, "reader.yaml", &reader);
    wait_for("reader Succeeded", T, || {
        (get(&c, &["get", "pod", "reader"])?["status"]["phase"] == "Succeeded").then_some(())
    });
    assert_eq!(c.ok(&["logs", "reader"]), "silver\nreadonly\n");
    assert!(!base.join("silver").join("x").exists());

    // A hostPath volume, claimed by name (pre-binding through volumeName).
    let hp = base.join("hostpath");
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: static-hostpath\nspec:\n  capacity: {{storage: 64Mi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: manual\n  hostPath: {{path: {}, type: DirectoryOrCreate}}\n",
        hp.display()
    );
    apply(&c, "pv-hostpath.yaml", &pv);
    apply(
        &c,
        "byname.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: byname\nspec:\n  storageClassName: manual\n  volumeName: static-hostpath\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n",
    );
    apply(
        &c,
        "writer.yaml",
        &claim_pod("writer", &image, "byname", "echo via-hostpath > /data/out; sleep 3600"),
    );
    wait_running(&c, "writer");
    wait_for("the hostPath volume's file", T, || {
        (std::fs::read_to_string(hp.join("out")).ok()? == "via-hostpath\n").then_some(())
    });
    assert_eq!(get(&c, &["get", "pvc", "byname"]).unwrap()["status"]["phase"], "Bound");

    // A hand-made volume whose directory is missing: the pod waits, with an event saying why.
    let missing = base.join("missing");
    let pv = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: static-missing\nspec:\n  capacity: {{storage: 64Mi}}\n  accessModes: [ReadWriteOnce]\n  storageClassName: manual\n  local: {{path: {}}}\n  nodeAffinity:\n    required:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - {{key: kubernetes.io/hostname, operator: In, values: [node-1]}}\n",
        missing.display()
    );
    apply(&c, "pv-missing.yaml", &pv);
    apply(
        &c,
        "lost.yaml",
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: lost\nspec:\n  storageClassName: manual\n  volumeName: static-missing\n  accessModes: [ReadWriteOnce]\n  resources:\n    requests:\n      storage: 16Mi\n",
    );
    apply(&c, "stuck.yaml", &claim_pod("stuck", &image, "lost", "sleep 3600"));
    let event = wait_for("a FailedMount event", T, || {
        let evs = get(&c, &["get", "events", "--field-selector", "involvedObject.name=stuck"])?;
        evs["items"].as_array()?.iter().find(|e| e["reason"] == "FailedMount").cloned()
    });
    let msg = event["message"].as_str().unwrap();
    assert!(msg.contains("does not exist") && msg.contains(&missing.display().to_string()), "{msg}");
    assert_eq!(get(&c, &["get", "pod", "stuck"]).unwrap()["status"]["phase"], "Pending");

    // An ephemeral volume: a claim per pod, owned by it, gone with it.
    let eph = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: eph
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "echo hi > /scratch/f; sleep 3600"]
    volumeMounts:
    - {{name: scratch, mountPath: /scratch}}
  volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        spec:
          accessModes: [ReadWriteOnce]
          resources:
            requests:
              storage: 8Mi
"#
    );
    apply(&c, "eph.yaml", &eph);
    let pod = wait_running(&c, "eph");
    let claim = get(&c, &["get", "pvc", "eph-scratch"]).expect("the ephemeral claim");
    assert_eq!(claim["metadata"]["ownerReferences"][0]["uid"], pod["metadata"]["uid"]);
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    let pv = claim["spec"]["volumeName"].as_str().unwrap().to_string();
    let dir = volume_dir(&c, &pv);
    wait_for("the ephemeral file", T, || dir.join("f").exists().then_some(()));
    c.ok(&["delete", "pod", "eph"]);
    wait_gone(&c, &["get", "pvc", "eph-scratch"]);
    wait_gone(&c, &["get", "pv", &pv]);
    wait_for("the ephemeral directory removed", T, || (!dir.exists()).then_some(()));
}

#[test]
fn simulated_nodes_run_pods_with_claims() {
    let c = Cluster::start_with(&["--sim-nodes", "2"]);
    wait_for("sim nodes", T, || {
        let nodes = get(&c, &["get", "nodes"])?;
        (nodes["items"].as_array()?.len() == 2).then_some(())
    });
    let sts = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
spec:
  serviceName: db
  replicas: 3
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: db}
  template:
    metadata:
      labels: {app: db}
    spec:
      containers:
      - name: main
        image: example.invalid/db:1
        volumeMounts:
        - {name: data, mountPath: /data}
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
"#;
    apply(&c, "db.yaml", sts);
    let mut volumes = Vec::new();
    for i in 0..3 {
        let pod = wait_running(&c, &format!("db-{i}"));
        let node = pod["spec"]["nodeName"].as_str().unwrap().to_string();
        let claim = wait_for("claim Bound", T, || {
            let p = get(&c, &["get", "pvc", &format!("data-db-{i}")])?;
            (p["status"]["phase"] == "Bound").then_some(p)
        });
        let pv = get(&c, &["get", "pv", claim["spec"]["volumeName"].as_str().unwrap()]).unwrap();
        let pinned = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"][0];
        assert_eq!(pinned, node.as_str(), "the volume lives where its pod runs");
        volumes.push(pv["metadata"]["name"].as_str().unwrap().to_string());
    }
    // Claims outlive the set; deleting them after it frees the volumes (reclaim Delete).
    c.ok(&["delete", "statefulset", "db"]);
    for i in 0..3 {
        wait_gone(&c, &["get", "pod", &format!("db-{i}")]);
        c.ok(&["delete", "pvc", &format!("data-db-{i}")]);
    }
    for pv in &volumes {
        wait_gone(&c, &["get", "pv", pv]);
    }
}
