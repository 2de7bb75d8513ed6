//! Resource metrics and autoscaling on the real node: `kubectl top` (Debian's 1.32 and
//! 1.35) prints what the node agent measured from cgroups, and a HorizontalPodAutoscaler
//! scales a Deployment whose pods burn CPU up and, once they stop, back down. Needs what
//! tests/kubelet.rs needs (root, runc, the CNI plugins, docker-registry, busybox-static).

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{client, wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

fn registry_with_image() -> (Registry, String) {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    (reg, image)
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// Millicores of a `kubectl top` CPU cell (`123m`).
fn millicores(cell: &str) -> Option<u64> {
    cell.strip_suffix('m').and_then(|m| m.parse().ok()).or_else(|| cell.parse::<u64>().ok().map(|c| c * 1000))
}

fn ready_node(c: &Cluster) {
    wait_for("node-1 Ready", Duration::from_secs(60), || {
        let n = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&n.stdout).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
}

#[test]
fn kubectl_top_shows_the_real_node_and_a_busy_pod() {
    let (_reg, image) = registry_with_image();
    // Over a locked-down NATS: the node's own credential may publish its usage reports.
    let c = Cluster::start_node_locked("");
    ready_node(&c);
    apply(
        &c,
        "burn.yaml",
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: burn
  labels: {{app: burn}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    command: ["sh", "-c", "while :; do :; done"]
    resources:
      limits: {{cpu: 300m, memory: 64Mi}}
"#
        ),
    );
    // The metrics group is discovered as kubectl needs it.
    let groups = c.ok(&["api-versions"]);
    assert!(groups.lines().any(|l| l == "metrics.k8s.io/v1beta1"), "{groups}");
    for kubectl in [None, Some(client("kubectl-1.35"))] {
        let run = |args: &[&str]| -> (bool, String) {
            let out = match &kubectl {
                None => c.kubectl(args),
                Some(k) => c.kubectl_as(k, args, &[], None),
            };
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        // NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%)
        let node = wait_for("kubectl top node", Duration::from_secs(60), || {
            let (ok, out) = run(&["top", "node", "--no-headers"]);
            let cells: Vec<String> = out.lines().next()?.split_whitespace().map(str::to_string).collect();
            (ok && cells.first().map(String::as_str) == Some("node-1")).then_some(cells)
        });
        assert!(millicores(&node[1]).is_some_and(|m| m > 0), "{node:?}");
        assert!(
            node[3].ends_with("Mi") && node[3].trim_end_matches("Mi").parse::<u64>().unwrap() > 0,
            "{node:?}"
        );
        assert!(node[2].ends_with('%') && node[4].ends_with('%'), "{node:?}");
        // NAME CPU(cores) MEMORY(bytes): the loop burns most of its 300m quota.
        let pod = wait_for("kubectl top pod shows the burn", Duration::from_secs(60), || {
            let (ok, out) = run(&["top", "pod", "burn", "--no-headers"]);
            let cells: Vec<String> = out.lines().next()?.split_whitespace().map(str::to_string).collect();
            (ok && cells.first().map(String::as_str) == Some("burn") && millicores(&cells[1])? >= 100)
                .then_some(cells)
        });
        assert!(millicores(&pod[1]).unwrap() <= 400, "{pod:?}");
        assert!(pod[2].ends_with("Mi") || pod[2].ends_with("Ki"), "{pod:?}");
        // Per container, and by label.
        let (ok, out) = run(&["top", "pod", "-l", "app=burn", "--containers", "--no-headers"]);
        assert!(ok && out.lines().any(|l| l.split_whitespace().take(2).eq(["burn", "main"])), "{out}");
    }
    // The API objects are upstream's.
    let m: Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/burn",
    ]))
    .expect("a PodMetrics");
    assert_eq!(m["kind"], "PodMetrics");
    assert_eq!(m["metadata"]["labels"]["app"], "burn");
    assert_eq!(m["containers"][0]["name"], "main");
    assert!(m["window"].as_str().is_some_and(|w| w.ends_with('s')), "{m}");
    let missing = c.fails(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/nope"]);
    assert!(missing.contains("not found"), "{missing}");
    // The node agent's /metrics/resource has the pod's counters.
    let raw = c.ok(&["get", "--raw", "/api/v1/nodes/node-1/proxy/metrics/resource"]);
    assert!(
        raw.lines().any(|l| l.starts_with(
            "container_cpu_usage_seconds_total{container=\"main\",namespace=\"default\",pod=\"burn\"}"
        )),
        "{raw}"
    );
    assert!(raw.contains("node_memory_working_set_bytes "), "{raw}");
    // The kubelet's Summary API: the node and the busy pod, in upstream's shape.
    let summary: Value = wait_for("/stats/summary with the burn pod", Duration::from_secs(30), || {
        let out = c.kubectl(&["get", "--raw", "/api/v1/nodes/node-1/proxy/stats/summary"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let pods = v["pods"].as_array()?;
        pods.iter()
            .any(|p| p["podRef"]["name"] == "burn" && p["cpu"]["usageNanoCores"].as_u64().is_some())
            .then_some(v)
    });
    let n = &summary["node"];
    assert_eq!(n["nodeName"], "node-1");
    assert!(n["cpu"]["usageNanoCores"].as_u64().is_some_and(|c| c > 0), "{n}");
    assert!(n["memory"]["workingSetBytes"].as_u64().is_some_and(|m| m > 0), "{n}");
    assert!(n["fs"]["capacityBytes"].as_u64().is_some_and(|b| b > 0), "{n}");
    assert!(n["runtime"]["imageFs"]["availableBytes"].as_u64().is_some(), "{n}");
    assert!(n["rlimit"]["maxpid"].as_u64().is_some_and(|p| p > 0), "{n}");
    let burn = summary["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "burn").unwrap();
    assert_eq!(burn["podRef"]["namespace"], "default");
    // The loop burns most of its 300m quota: between 0.1 and 0.4 cores.
    let cores = burn["cpu"]["usageNanoCores"].as_u64().unwrap();
    assert!((100_000_000..=400_000_000).contains(&cores), "{burn}");
    assert_eq!(burn["containers"][0]["name"], "main");
    assert!(burn["containers"][0]["memory"]["workingSetBytes"].as_u64().is_some_and(|m| m > 0), "{burn}");
    // 64Mi limit: what is left of it.
    assert!(
        burn["containers"][0]["memory"]["availableBytes"].as_u64().is_some_and(|a| a < 64 << 20),
        "{burn}"
    );
    assert!(burn["network"]["interfaces"].as_array().is_some_and(|i| !i.is_empty()), "{burn}");
    assert!(burn["process_stats"]["process_count"].as_u64().is_some_and(|p| p >= 1), "{burn}");
    // The node lists its image (digest and tag, size) with the next status post (60 s).
    let images = wait_for("the Node's status.images", Duration::from_secs(90), || {
        let v = json(&c, &["get", "node", "node-1"]);
        let list = v["status"]["images"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    });
    let names: Vec<&str> = images[0]["names"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(names.iter().any(|n| n.contains("/busybox@sha256:")), "{images:?}");
    assert!(names.iter().any(|n| n.ends_with("/busybox:1")), "{images:?}");
    assert!(images[0]["sizeBytes"].as_u64().is_some_and(|s| s > 100_000), "{images:?}");
}

fn hpa(c: &Cluster) -> Value {
    json(c, &["get", "hpa", "burn"])
}

#[test]
fn hpa_scales_a_busy_deployment_up_and_back_down() {
    let (_reg, image) = registry_with_image();
    let c = Cluster::start_node("");
    ready_node(&c);
    // Each pod burns until /tmp/stop exists, then idles.
    apply(
        &c,
        "deploy.yaml",
        &format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: burn
spec:
  replicas: 1
  selector:
    matchLabels: {{app: burn}}
  template:
    metadata:
      labels: {{app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "while [ ! -e /tmp/stop ]; do :; done; exec sleep 100000"]
        resources:
          requests: {{cpu: 100m}}
          limits: {{cpu: 200m}}
"#
        ),
    );
    // Invalid specs are refused naming the field.
    let f = c.file(
        "bad-hpa.yaml",
        r#"apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: bad}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 3
  maxReplicas: 2
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 0}}
"#,
    );
    let bad = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        bad.contains("spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"),
        "{bad}"
    );
    assert!(
        bad.contains(
            "spec.metrics[0].resource.target.averageUtilization: Invalid value: 0: must be greater than 0"
        ),
        "{bad}"
    );
    c.ok(&["autoscale", "deployment", "burn", "--min=1", "--max=3", "--cpu-percent=50"]);
    let h = hpa(&c);
    assert_eq!(h["apiVersion"], "autoscaling/v2");
    assert_eq!(h["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 50);
    // A short scale-down window, so the test sees it.
    c.ok(&[
        "patch",
        "hpa",
        "burn",
        "--type=merge",
        "-p",
        r#"{"spec":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":5}}}}"#,
    ]);
    assert_eq!(hpa(&c)["spec"]["behavior"]["scaleDown"]["policies"][0]["type"], "Percent");

    // ~200% of the request against a 50% target: up to the maximum.
    wait_for("scaled up to 3", Duration::from_secs(180), || {
        (hpa(&c)["status"]["desiredReplicas"] == 3).then_some(())
    });
    let row = c.ok(&["get", "hpa", "burn", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    // NAME REFERENCE TARGETS MINPODS MAXPODS REPLICAS AGE, TARGETS as `cpu: 180%/50%`.
    assert_eq!(cells[..2], ["burn", "Deployment/burn"], "{row}");
    assert_eq!(cells[2], "cpu:", "{row}");
    assert!(cells[3].ends_with("%/50%"), "{row}");
    assert_eq!(cells[4..6], ["1", "3"], "{row}");
    let h = hpa(&c);
    let conds = h["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let cond = |t: &str| conds.iter().find(|c| c["type"] == t).cloned().unwrap_or(Value::Null);
    assert_eq!(cond("AbleToScale")["status"], "True", "{h}");
    assert_eq!(cond("ScalingActive")["reason"], "ValidMetricFound", "{h}");
    let events =
        c.ok(&["get", "events", "--field-selector", "involvedObject.name=burn,reason=SuccessfulRescale"]);
    assert!(events.contains("New size: "), "{events}");
    let describe = c.ok(&["describe", "hpa", "burn"]);
    assert!(describe.contains("Reference:") && describe.contains("SuccessfulRescale"), "{describe}");
    // The same object through autoscaling/v1.
    let v1 = json(&c, &["get", "horizontalpodautoscalers.v1.autoscaling", "burn"]);
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert!(v1["status"]["currentCPUUtilizationPercentage"].as_i64().is_some_and(|u| u > 50), "{v1}");
    wait_for("3 pods running", Duration::from_secs(120), || {
        let d = json(&c, &["get", "deployment", "burn"]);
        (d["status"]["readyReplicas"] == 3).then_some(())
    });

    // Stop the burn everywhere: utilization drops, and after the 5 s window, back to 1.
    wait_for("every pod stopped burning", Duration::from_secs(60), || {
        let pods = json(&c, &["get", "pods", "-l", "app=burn"]);
        let names: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        let all = names.iter().all(|n| c.kubectl(&["exec", n, "--", "touch", "/tmp/stop"]).status.success());
        (all && names.len() == 3).then_some(())
    });
    wait_for("scaled back down to 1", Duration::from_secs(180), || {
        let h = hpa(&c);
        (h["status"]["desiredReplicas"] == 1 && h["status"]["currentReplicas"] == 1).then_some(())
    });
    let d = json(&c, &["get", "deployment", "burn"]);
    assert_eq!(d["spec"]["replicas"], 1);
}

#[test]
fn simulated_nodes_report_synthetic_usage() {
    // Separate processes over a locked-down NATS: the sim-nodes credential may publish the
    // usage reports of its nodes.
    let c = Cluster::start_multiprocess_locked(1, &[]);
    apply(
        &c,
        "sim-pod.yaml",
        r#"apiVersion: v1
kind: Pod
metadata: {name: sim, labels: {app: sim}}
spec:
  containers:
  - name: main
    image: example.invalid/app:1
    resources:
      requests: {cpu: 400m, memory: 32Mi}
"#,
    );
    // Half the CPU request, the memory request.
    let row = wait_for("kubectl top pod on a simulated node", Duration::from_secs(90), || {
        let out = c.kubectl(&["top", "pod", "sim", "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.starts_with("sim")).then_some(text)
    });
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..3], ["200m", "32Mi"], "{row}");
    // A namespace viewer may read pod metrics (metrics-server's reader role is aggregated
    // into view), but not node metrics.
    c.ok(&["create", "rolebinding", "viewer", "--clusterrole=view", "--user=alice"]);
    let as_alice = c.ok(&["top", "pod", "sim", "--no-headers", "--as=alice"]);
    assert!(as_alice.starts_with("sim"), "{as_alice}");
    let denied = c.fails(&["top", "node", "--as=alice"]);
    assert!(denied.contains("forbidden"), "{denied}");
    let nodes = c.ok(&["top", "node", "--no-headers"]);
    let cells: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!(cells[1], "300m", "{nodes}");
}
