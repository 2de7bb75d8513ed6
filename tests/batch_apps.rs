//! Jobs, CronJobs, DaemonSets and StatefulSets end to end: the real kubectl against
//! `capstan up --sim-nodes 3` (the scheduler binds pods, simulated nodes run them), and the
//! same scenarios (`_over_nats`) with each role in its own process over a nats-server.

mod common;

use common::{wait_for, Cluster, Mode};
use serde_json::Value;
use std::time::Duration;

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn is_live(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    pod["metadata"]["deletionTimestamp"].is_null() && phase != "Succeeded" && phase != "Failed"
}

fn ready_since(pod: &Value) -> Option<String> {
    pod["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")
            .map(|c| c["lastTransitionTime"].as_str().unwrap_or("").to_string())
    })
}

fn apply(c: &Cluster, name: &str, manifest: &str) {
    let f = c.file(name, manifest);
    c.ok(&["apply", "-f", f.to_str().expect("utf-8 path")]);
}

fn sim_cluster(mode: Mode) -> Cluster {
    let c = mode.cluster(3, &[]);
    wait_for("3 simulated nodes", Duration::from_secs(30), || {
        (items(&json(&c, &["get", "nodes"])).len() >= 3).then_some(())
    });
    c
}

const JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: pi
spec:
  completions: 3
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: perl:5.34
        command: ["perl", "-Mbignum=bpi", "-wle", "print bpi(100)"]
"#;

fn job_runs_to_completion(mode: Mode) {
    let c = sim_cluster(mode);
    apply(&c, "job.yaml", JOB);
    // Never more than `parallelism` pods at once, while it runs.
    let mut max_active = 0;
    wait_for("job pi to complete", Duration::from_secs(60), || {
        let j = json(&c, &["get", "job", "pi"]);
        max_active = max_active.max(j["status"]["active"].as_i64().unwrap_or(0));
        let pods = items(&json(&c, &["get", "pods", "-l", "batch.kubernetes.io/job-name=pi"]));
        let running = pods.iter().filter(|p| is_live(p)).count();
        assert!(running <= 2, "{running} pods of job pi run at once (parallelism 2)");
        j["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Complete" && c["status"] == "True"))
            .then_some(())
    });
    let out = c.ok(&["wait", "--for=condition=complete", "job/pi", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    assert!(max_active <= 2, "status.active reached {max_active}");

    let j = json(&c, &["get", "job", "pi"]);
    assert_eq!(j["status"]["succeeded"], 3, "{j}");
    assert_eq!(j["status"]["active"].as_i64().unwrap_or(0), 0, "{j}");
    assert!(j["status"]["startTime"].is_string() && j["status"]["completionTime"].is_string(), "{j}");
    let conds: Vec<&str> = j["status"]["conditions"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(conds, vec!["SuccessCriteriaMet", "Complete"], "{j}");

    let uid = j["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let pods = items(&json(&c, &["get", "pods", "-l", "job-name=pi"]));
    assert_eq!(pods.len(), 3, "one pod per completion");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
        assert!(p["metadata"]["name"].as_str().unwrap_or("").starts_with("pi-"), "{p}");
        assert_eq!(p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"], uid.as_str());
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some("Job"), Some(uid.as_str()), Some(true)),
            "{p}"
        );
    }
}

#[test]
fn job_runs_to_completion_in_process() {
    job_runs_to_completion(Mode::InProcess);
}

#[test]
fn job_runs_to_completion_over_nats() {
    job_runs_to_completion(Mode::Nats);
}

const FAILING_JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata:
  name: doomed
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 3
  template:
    metadata:
      annotations:
        capstan.io/sim-complete-after-seconds: "600"
    spec:
      restartPolicy: Never
      containers:
      - name: c
        image: busybox
"#;

fn job_deadline_fails_the_job(mode: Mode) {
    let c = sim_cluster(mode);
    apply(&c, "doomed.yaml", FAILING_JOB);
    let out = c.ok(&["wait", "--for=condition=failed", "job/doomed", "--timeout=60s"]);
    assert!(out.contains("condition met"), "{out}");
    let j = json(&c, &["get", "job", "doomed"]);
    let failed = j["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed").cloned())
        .unwrap_or_default();
    assert_eq!(failed["reason"], "DeadlineExceeded", "{j}");
    // Its pod is gone or going.
    wait_for("the deadline-exceeded job's pods to stop", Duration::from_secs(30), || {
        items(&json(&c, &["get", "pods", "-l", "job-name=doomed"])).iter().all(|p| !is_live(p)).then_some(())
    });
}

#[test]
fn job_deadline_fails_the_job_in_process() {
    job_deadline_fails_the_job(Mode::InProcess);
}

#[test]
fn job_deadline_fails_the_job_over_nats() {
    job_deadline_fails_the_job(Mode::Nats);
}

const DAEMONSET: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels: {app: agent}
  template:
    metadata:
      labels: {app: agent}
    spec:
      containers:
      - name: agent
        image: busybox
"#;

const EXTRA_NODE: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: extra-0
  labels: {kubernetes.io/hostname: extra-0}
status:
  conditions:
  - type: Ready
    status: "True"
    reason: KubeletReady
    message: ready
"#;

/// Live agent pods by node.
fn agent_nodes(c: &Cluster) -> Vec<String> {
    let mut nodes: Vec<String> = items(&json(c, &["get", "pods", "-l", "app=agent"]))
        .iter()
        .filter(|p| is_live(p))
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect();
    nodes.sort();
    nodes
}

fn daemonset_one_pod_per_node(mode: Mode) {
    let c = sim_cluster(mode);
    apply(&c, "ds.yaml", DAEMONSET);
    wait_for("one agent pod on each sim node", Duration::from_secs(30), || {
        (agent_nodes(&c) == ["sim-0", "sim-1", "sim-2"]).then_some(())
    });
    wait_for("daemonset status: 3 desired, 3 ready", Duration::from_secs(30), || {
        let s = json(&c, &["get", "ds", "agent"])["status"].clone();
        (s["desiredNumberScheduled"] == 3
            && s["currentNumberScheduled"] == 3
            && s["numberReady"] == 3
            && s["updatedNumberScheduled"] == 3
            && s["numberMisscheduled"] == 0)
            .then_some(())
    });
    let pod = items(&json(&c, &["get", "pods", "-l", "app=agent"])).into_iter().next().unwrap_or_default();
    let tolerations = pod["spec"]["tolerations"].to_string();
    assert!(tolerations.contains("node.kubernetes.io/unreachable"), "{tolerations}");
    assert!(tolerations.contains("node.kubernetes.io/unschedulable"), "{tolerations}");

    // A node added later gets a pod; a removed node's pod goes.
    apply(&c, "node.yaml", EXTRA_NODE);
    wait_for("an agent pod on the new node", Duration::from_secs(30), || {
        (agent_nodes(&c) == ["extra-0", "sim-0", "sim-1", "sim-2"]).then_some(())
    });
    wait_for("4 desired", Duration::from_secs(30), || {
        (json(&c, &["get", "ds", "agent"])["status"]["desiredNumberScheduled"] == 4).then_some(())
    });
    c.ok(&["delete", "node", "extra-0", "--wait=false"]);
    wait_for("the removed node's agent pod to go", Duration::from_secs(30), || {
        (agent_nodes(&c) == ["sim-0", "sim-1", "sim-2"]).then_some(())
    });
    wait_for("3 desired again", Duration::from_secs(30), || {
        (json(&c, &["get", "ds", "agent"])["status"]["desiredNumberScheduled"] == 3).then_some(())
    });

    // A template change rolls every pod, one node at a time.
    c.ok(&["set", "image", "ds/agent", "agent=busybox:1.37"]);
    let out = c.ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let images: Vec<String> = items(&json(&c, &["get", "pods", "-l", "app=agent"]))
        .iter()
        .filter(|p| is_live(p))
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(images, vec!["busybox:1.37"; 3]);
}

#[test]
fn daemonset_one_pod_per_node_in_process() {
    daemonset_one_pod_per_node(Mode::InProcess);
}

#[test]
fn daemonset_one_pod_per_node_over_nats() {
    daemonset_one_pod_per_node(Mode::Nats);
}

const STATEFULSET: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: nginx
spec:
  clusterIP: None
  selector: {app: nginx}
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: nginx
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        volumeMounts:
        - {name: www, mountPath: /usr/share/nginx/html}
  volumeClaimTemplates:
  - metadata:
      name: www
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
"#;

fn statefulset_creates_pods_in_order(mode: Mode) {
    let c = sim_cluster(mode);
    apply(&c, "sts.yaml", STATEFULSET);
    // In every snapshot, web-i exists only if web-(i-1) is Ready.
    let pods = wait_for("web-0, web-1, web-2 ready", Duration::from_secs(60), || {
        let pods: Vec<Value> = items(&json(&c, &["get", "pods", "-l", "app=nginx"]));
        let by_name = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n);
        for i in 1..3 {
            if by_name(&format!("web-{i}")).is_some() {
                let prev = by_name(&format!("web-{}", i - 1));
                assert!(
                    prev.and_then(ready_since).is_some(),
                    "web-{i} exists while web-{} is not ready: {pods:?}",
                    i - 1
                );
            }
        }
        let all_ready = (0..3).all(|i| by_name(&format!("web-{i}")).and_then(ready_since).is_some());
        (all_ready && pods.len() == 3).then_some(pods)
    });
    let get = |n: &str| pods.iter().find(|p| p["metadata"]["name"] == n).cloned().unwrap_or_default();
    for i in 1..3 {
        let created =
            get(&format!("web-{i}"))["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string();
        let prev_ready = ready_since(&get(&format!("web-{}", i - 1))).unwrap_or_default();
        assert!(
            created >= prev_ready,
            "web-{i} created at {created} before web-{} was ready at {prev_ready}",
            i - 1
        );
    }
    for i in 0..3 {
        let p = get(&format!("web-{i}"));
        let name = format!("web-{i}");
        assert_eq!(p["spec"]["hostname"], name.as_str());
        assert_eq!(p["spec"]["subdomain"], "nginx");
        assert_eq!(p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"], name.as_str());
        assert_eq!(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"], i.to_string().as_str());
        assert!(p["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("web-")));
        let claim = format!("www-web-{i}");
        assert!(p["spec"]["volumes"].to_string().contains(&claim), "{p}");
        c.ok(&["get", "pvc", &claim]);
    }
    wait_for("statefulset status", Duration::from_secs(30), || {
        let s = json(&c, &["get", "sts", "web"])["status"].clone();
        (s["replicas"] == 3
            && s["readyReplicas"] == 3
            && s["availableReplicas"] == 3
            && s["updatedReplicas"] == 3
            && s["currentRevision"] == s["updateRevision"]
            && s["currentRevision"].is_string())
        .then_some(())
    });
    assert!(!items(&json(&c, &["get", "controllerrevisions", "-l", "app=nginx"])).is_empty());

    // Scale down removes the highest ordinals; PVCs stay.
    c.ok(&["scale", "sts/web", "--replicas=1"]);
    wait_for("only web-0 left", Duration::from_secs(60), || {
        let names: Vec<String> = items(&json(&c, &["get", "pods", "-l", "app=nginx"]))
            .iter()
            .filter(|p| is_live(p))
            .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (names == ["web-0"]).then_some(())
    });
    c.ok(&["get", "pvc", "www-web-2"]);
}

#[test]
fn statefulset_creates_pods_in_order_in_process() {
    statefulset_creates_pods_in_order(Mode::InProcess);
}

#[test]
fn statefulset_creates_pods_in_order_over_nats() {
    statefulset_creates_pods_in_order(Mode::Nats);
}

const CRONJOB: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: hello
spec:
  schedule: "*/1 * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - name: hello
            image: busybox
"#;

fn cronjob_creates_a_job_each_minute(mode: Mode) {
    let c = sim_cluster(mode);
    apply(&c, "cj.yaml", CRONJOB);
    let job = wait_for("a job from cronjob hello", Duration::from_secs(75), || {
        items(&json(&c, &["get", "jobs"])).into_iter().find(|j| {
            j["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
                && j["metadata"]["name"]
                    .as_str()
                    .and_then(|n| n.strip_prefix("hello-"))
                    .is_some_and(|t| t.parse::<u64>().is_ok())
        })
    });
    let name = job["metadata"]["name"].as_str().unwrap_or("").to_string();
    c.ok(&["wait", "--for=condition=complete", &format!("job/{name}"), "--timeout=60s"]);
    wait_for("cronjob status", Duration::from_secs(30), || {
        let s = json(&c, &["get", "cronjob", "hello"])["status"].clone();
        (s["lastScheduleTime"].is_string() && s["lastSuccessfulTime"].is_string()).then_some(())
    });
}

#[test]
fn cronjob_creates_a_job_each_minute_in_process() {
    cronjob_creates_a_job_each_minute(Mode::InProcess);
}

#[test]
fn cronjob_creates_a_job_each_minute_over_nats() {
    cronjob_creates_a_job_each_minute(Mode::Nats);
}
