//! Deployments and ReplicaSets end to end: the real kubectl against `capstan up` (with
//! simulated nodes where pods must become Ready). Every scenario runs twice: `_in_process`
//! (`capstan up`) and `_over_nats` (each role its own process over a nats-server).

mod common;

use common::podwatch::{is_live, is_ready, PodWatch};
use common::{wait_for, Cluster, Mode};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 5
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
"#;

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Live pods matching `selector`.
fn live_pods(c: &Cluster, selector: &str) -> Vec<Value> {
    items(&json(c, &["get", "pods", "-l", selector])).into_iter().filter(is_live).collect()
}

fn wait_live_pods(c: &Cluster, selector: &str, n: usize, timeout: Duration) -> Vec<Value> {
    wait_for(&format!("{n} live pods with {selector}"), timeout, || {
        let pods = live_pods(c, selector);
        (pods.len() == n).then_some(pods)
    })
}

fn apply(c: &Cluster, name: &str, manifest: &str) {
    let f = c.file(name, manifest);
    c.ok(&["apply", "-f", f.to_str().expect("utf-8 path")]);
}

fn rollout_status(c: &Cluster) {
    let out = c.ok(&["rollout", "status", "deploy/web", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
}

/// Checks pod → ReplicaSet → Deployment ownership and the hash naming; returns the
/// ReplicaSet names the pods belong to.
fn check_owner_chain(c: &Cluster, pods: &[Value]) -> Vec<String> {
    let d = json(c, &["get", "deploy", "web"]);
    let mut sets = Vec::new();
    for p in pods {
        let refs = p["metadata"]["ownerReferences"].as_array().expect("pod has ownerReferences");
        let owner = refs.iter().find(|r| r["controller"] == true).expect("pod has a controller");
        assert_eq!(owner["kind"], "ReplicaSet", "{p}");
        assert_eq!(owner["blockOwnerDeletion"], true, "{p}");
        let rs_name = owner["name"].as_str().expect("owner name").to_string();
        let rs = json(c, &["get", "rs", &rs_name]);
        assert_eq!(owner["uid"], rs["metadata"]["uid"]);
        let hash = rs["metadata"]["labels"]["pod-template-hash"].as_str().expect("hash label");
        assert_eq!(rs_name, format!("web-{hash}"));
        assert_eq!(rs["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash);
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
        assert!(p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&format!("{rs_name}-"))));
        let rs_owner = rs["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["controller"] == true).cloned())
            .expect("replica set has a controller");
        assert_eq!(rs_owner["kind"], "Deployment");
        assert_eq!(rs_owner["uid"], d["metadata"]["uid"]);
        if !sets.contains(&rs_name) {
            sets.push(rs_name);
        }
    }
    sets
}

/// Runs `change`, waits for the rollout, and checks every pod event in between against
/// 5 replicas with maxSurge 25% (→ 2) and maxUnavailable 25% (→ 1).
fn rollout_within_bounds(c: &Cluster, watch: &PodWatch, change: &[&str]) {
    let from = watch.wait_settled(5);
    c.ok(change);
    rollout_status(c);
    let to = watch.wait_settled(5);
    let seen = watch.observations_since(from);
    assert!(to > from, "the watch saw no pod events during the rollout");
    let max_live = seen.iter().map(|o| o.0).max().unwrap_or(0);
    let min_ready = seen.iter().map(|o| o.1).min().unwrap_or(0);
    assert!(max_live <= 7, "more than replicas+maxSurge pods: {seen:?}");
    assert!(min_ready >= 4, "fewer than replicas-maxUnavailable ready pods: {seen:?}");
    assert!(max_live > 5, "the rollout never surged: {seen:?}");
}

fn images_of(pods: &[Value]) -> Vec<String> {
    pods.iter().map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string()).collect()
}

fn revisions(c: &Cluster) -> Vec<u32> {
    let out = c.ok(&["rollout", "history", "deploy/web"]);
    out.lines().filter_map(|l| l.split_whitespace().next()).filter_map(|w| w.parse().ok()).collect()
}

fn deployment_rolls_out_and_scales(mode: Mode) {
    let c = mode.cluster(3, &[]);
    apply(&c, "web.yaml", DEPLOYMENT);
    rollout_status(&c);
    let pods = wait_live_pods(&c, "app=web", 5, Duration::from_secs(30));
    assert!(pods.iter().all(is_ready));
    let sets = check_owner_chain(&c, &pods);
    assert_eq!(sets.len(), 1, "{sets:?}");
    let d = json(&c, &["get", "deploy", "web"]);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    assert_eq!(d["status"]["observedGeneration"], d["metadata"]["generation"]);
    assert_eq!(d["status"]["availableReplicas"], 5);
    let conds = d["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let reason = |t: &str| conds.iter().find(|x| x["type"] == t).map(|x| x["reason"].clone());
    assert_eq!(reason("Available"), Some("MinimumReplicasAvailable".into()), "{conds:?}");
    assert_eq!(reason("Progressing"), Some("NewReplicaSetAvailable".into()), "{conds:?}");
    let rs = json(&c, &["get", "rs", &sets[0]]);
    assert_eq!(rs["status"]["readyReplicas"], 5, "{rs}");
    assert_eq!(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let events = c.ok(&["get", "events", "--field-selector", "involvedObject.name=web"]);
    assert!(events.contains(&format!("Scaled up replica set {} to 5 from 0", sets[0])), "{events}");

    c.ok(&["scale", "deploy/web", "--replicas=20"]);
    rollout_status(&c);
    wait_live_pods(&c, "app=web", 20, Duration::from_secs(30));
    c.ok(&["scale", "deploy/web", "--replicas=0"]);
    rollout_status(&c);
    wait_for("every pod to go", Duration::from_secs(60), || {
        items(&json(&c, &["get", "pods", "-l", "app=web"])).is_empty().then_some(())
    });
    let d = json(&c, &["get", "deploy", "web"]);
    assert_eq!(d["status"]["replicas"], 0, "{d}");
    // Scaling is not a new revision.
    assert_eq!(json(&c, &["get", "rs"])["items"].as_array().map(Vec::len), Some(1));
}

#[test]
fn deployment_rolls_out_and_scales_in_process() {
    deployment_rolls_out_and_scales(Mode::InProcess);
}

#[test]
fn deployment_rolls_out_and_scales_over_nats() {
    deployment_rolls_out_and_scales(Mode::Nats);
}

#[test]
fn deployment_rolls_out_and_scales_over_locked_down_nats() {
    deployment_rolls_out_and_scales(Mode::LockedNats);
}

/// Restart, set image and undo, each checked against the bounds from a pod watch; then
/// the revision history.
fn rollout_scenario(c: &Cluster) {
    apply(c, "web.yaml", DEPLOYMENT);
    rollout_status(c);
    let watch = PodWatch::start(c, "app=web");

    rollout_within_bounds(c, &watch, &["rollout", "restart", "deploy/web"]);
    let pods = live_pods(c, "app=web");
    let sets = check_owner_chain(c, &pods);
    assert_eq!(sets.len(), 1, "every pod is from the new replica set: {sets:?}");
    assert!(pods
        .iter()
        .all(|p| p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string()));
    let restarted_rs = sets[0].clone();

    rollout_within_bounds(c, &watch, &["set", "image", "deploy/web", "nginx=nginx:1.28"]);
    assert_eq!(images_of(&live_pods(c, "app=web")), vec!["nginx:1.28"; 5]);
    assert_eq!(revisions(c), vec![1, 2, 3]);

    rollout_within_bounds(c, &watch, &["rollout", "undo", "deploy/web"]);
    let d = json(c, &["get", "deploy", "web"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "4");
    let pods = live_pods(c, "app=web");
    assert_eq!(images_of(&pods), vec!["nginx:1.27"; 5]);
    // The replica set of revision 2 came back as revision 4; no new one was made.
    assert_eq!(check_owner_chain(c, &pods), vec![restarted_rs.clone()]);
    let rs = json(c, &["get", "rs", &restarted_rs]);
    assert_eq!(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "4");
    assert_eq!(revisions(c), vec![1, 3, 4]);
    assert_eq!(json(c, &["get", "rs"])["items"].as_array().map(Vec::len), Some(3));
}

#[test]
fn rolling_update_restart_set_image_undo_history_in_process() {
    rollout_scenario(&Mode::InProcess.cluster(3, &[]));
}

#[test]
fn rolling_update_restart_set_image_undo_history_over_nats() {
    rollout_scenario(&Mode::Nats.cluster(3, &[]));
}

/// Stands in for kubelets where there are no nodes: marks every live pod with `selector`
/// Running and Ready, until dropped.
struct FakeKubelet {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeKubelet {
    fn start(c: &Cluster, selector: &str) -> FakeKubelet {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kubeconfig, selector, flag) = (c.kubeconfig.clone(), selector.to_string(), stop.clone());
        let kubectl = move |args: &[&str]| {
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args)
                .stderr(Stdio::null())
                .output()
        };
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(out) = kubectl(&["get", "pods", "-l", &selector, "-o", "json"]) else { continue };
                let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                for p in items(&list).iter().filter(|p| is_live(p) && !is_ready(p)) {
                    let name = p["metadata"]["name"].as_str().unwrap_or("");
                    let patch =
                        r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
                    let _ =
                        kubectl(&["patch", "pod", name, "--subresource=status", "--type=merge", "-p", patch]);
                }
            }
        });
        FakeKubelet { stop, thread: Some(thread) }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The same rollout without nodes: the test marks pods Ready itself.
fn rolling_update_with_pods_marked_ready_by_the_test(mode: Mode) {
    let c = mode.cluster(0, &[]);
    let _kubelet = FakeKubelet::start(&c, "app=web");
    rollout_scenario(&c);
}

#[test]
fn rolling_update_with_pods_marked_ready_by_the_test_in_process() {
    rolling_update_with_pods_marked_ready_by_the_test(Mode::InProcess);
}

#[test]
fn rolling_update_with_pods_marked_ready_by_the_test_over_nats() {
    rolling_update_with_pods_marked_ready_by_the_test(Mode::Nats);
}

fn recreate_removes_old_pods_before_creating_new_ones(mode: Mode) {
    let c = mode.cluster(3, &[]);
    let manifest = DEPLOYMENT.replace("  replicas: 5\n", "  replicas: 4\n  strategy: {type: Recreate}\n");
    apply(&c, "web.yaml", &manifest);
    rollout_status(&c);
    let watch = PodWatch::start(&c, "app=web");
    let old_hash = live_pods(&c, "app=web")[0]["metadata"]["labels"]["pod-template-hash"].clone();
    let from = watch.wait_settled(4);
    c.ok(&["set", "image", "deploy/web", "nginx=nginx:1.28"]);
    rollout_status(&c);
    watch.wait_settled(4);
    // Never old and new pods at once (terminating ones included).
    let templates = watch.templates_since(from);
    assert!(templates.iter().all(|n| *n <= 1), "old and new pods at once: {templates:?}");
    assert!(templates.contains(&0), "the old pods were never all gone: {templates:?}");
    let pods = live_pods(&c, "app=web");
    assert_eq!(images_of(&pods), vec!["nginx:1.28"; 4]);
    assert!(pods.iter().all(|p| p["metadata"]["labels"]["pod-template-hash"] != old_hash));
}

#[test]
fn recreate_removes_old_pods_before_creating_new_ones_in_process() {
    recreate_removes_old_pods_before_creating_new_ones(Mode::InProcess);
}

#[test]
fn recreate_removes_old_pods_before_creating_new_ones_over_nats() {
    recreate_removes_old_pods_before_creating_new_ones(Mode::Nats);
}

fn deleting_a_deployment_removes_its_replicasets_and_pods(mode: Mode) {
    let c = mode.cluster(3, &[]);
    apply(&c, "web.yaml", DEPLOYMENT);
    rollout_status(&c);
    c.ok(&["delete", "deploy", "web"]);
    wait_for("replica sets to go", Duration::from_secs(60), || {
        items(&json(&c, &["get", "rs"])).is_empty().then_some(())
    });
    wait_for("pods to go", Duration::from_secs(60), || {
        items(&json(&c, &["get", "pods", "-l", "app=web"])).is_empty().then_some(())
    });
}

#[test]
fn deleting_a_deployment_removes_its_replicasets_and_pods_in_process() {
    deleting_a_deployment_removes_its_replicasets_and_pods(Mode::InProcess);
}

#[test]
fn deleting_a_deployment_removes_its_replicasets_and_pods_over_nats() {
    deleting_a_deployment_removes_its_replicasets_and_pods(Mode::Nats);
}

/// Without nodes pods stay Pending; counts, adoption and release still work.
fn replicaset_counts_adoption_and_release_without_nodes(mode: Mode) {
    let c = mode.cluster(0, &[]);
    apply(&c, "web.yaml", DEPLOYMENT);
    let pods = wait_live_pods(&c, "app=web", 5, Duration::from_secs(30));
    check_owner_chain(&c, &pods);
    let d = wait_for("deployment status", Duration::from_secs(30), || {
        let d = json(&c, &["get", "deploy", "web"]);
        (d["status"]["updatedReplicas"] == 5).then_some(d)
    });
    assert_eq!(d["status"]["availableReplicas"], 0, "{d}");
    c.ok(&["scale", "deploy/web", "--replicas=20"]);
    wait_live_pods(&c, "app=web", 20, Duration::from_secs(30));
    c.ok(&["scale", "deploy/web", "--replicas=0"]);
    wait_live_pods(&c, "app=web", 0, Duration::from_secs(30));

    // A bare ReplicaSet adopts a matching orphan and creates only the rest.
    c.ok(&["run", "orphan", "--image=nginx", "--labels=tier=front"]);
    apply(
        &c,
        "rs.yaml",
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: front}
spec:
  replicas: 3
  selector: {matchLabels: {tier: front}}
  template:
    metadata: {labels: {tier: front}}
    spec: {containers: [{name: c, image: nginx}]}
"#,
    );
    let pods = wait_live_pods(&c, "tier=front", 3, Duration::from_secs(30));
    wait_for("the orphan to be adopted", Duration::from_secs(30), || {
        let p = json(&c, &["get", "pod", "orphan"]);
        (p["metadata"]["ownerReferences"][0]["name"] == "front").then_some(())
    });
    assert!(pods.iter().any(|p| p["metadata"]["name"] == "orphan"));
    let rs = wait_for("replica set status", Duration::from_secs(30), || {
        let rs = json(&c, &["get", "rs", "front"]);
        (rs["status"]["replicas"] == 3 && rs["status"]["observedGeneration"] == rs["metadata"]["generation"])
            .then_some(rs)
    });
    assert_eq!(rs["status"]["fullyLabeledReplicas"], 3);
    // Relabelled, it is released and replaced.
    c.ok(&["label", "pod", "orphan", "tier=other", "--overwrite"]);
    wait_for("the orphan to be released", Duration::from_secs(30), || {
        let p = json(&c, &["get", "pod", "orphan"]);
        p["metadata"]["ownerReferences"].as_array().is_none_or(Vec::is_empty).then_some(())
    });
    wait_live_pods(&c, "tier=front", 3, Duration::from_secs(30));
}

#[test]
fn replicaset_counts_adoption_and_release_without_nodes_in_process() {
    replicaset_counts_adoption_and_release_without_nodes(Mode::InProcess);
}

#[test]
fn replicaset_counts_adoption_and_release_without_nodes_over_nats() {
    replicaset_counts_adoption_and_release_without_nodes(Mode::Nats);
}
