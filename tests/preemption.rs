//! Preemption on `capstan up` with a simulated node and the real kubectl: a high-priority
//! pod that fits nowhere evicts the fewest lower-priority pods on the node (they get the
//! `DisruptionTarget` condition and are deleted gracefully), is nominated to the node and
//! bound to it once they are gone; `preemptionPolicy: Never` waits instead.

mod common;

use common::{wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// A pod requesting `cpu` of class `class`, with extra metadata lines.
fn pod(name: &str, class: &str, cpu: &str, finalizers: bool) -> String {
    let fin = if finalizers { "\n  finalizers: [example.com/hold]" } else { "" };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: p{fin}\nspec:\n  priorityClassName: {class}\n  containers:\n  - name: c\n    image: registry.example/app:1\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n"
    )
}

fn create(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["create", "-f", f.to_str().unwrap()]);
}

fn node_of(c: &Cluster, pod: &str) -> Option<String> {
    json(c, &["get", "pod", pod, "-n", "p"])["spec"]["nodeName"].as_str().map(str::to_string)
}

fn failed_scheduling(c: &Cluster, pod: &str) -> Option<String> {
    let sel = format!("reason=FailedScheduling,involvedObject.name={pod}");
    let list = json(c, &["get", "events", "-n", "p", "--field-selector", &sel]);
    list["items"].as_array()?.last()?["message"].as_str().map(str::to_string)
}

#[test]
fn higher_priority_pods_preempt_and_never_waits() {
    // One simulated node: 8 cpu.
    let c = Cluster::start_with(&["--sim-nodes", "1"]);
    c.ok(&["create", "namespace", "p"]);
    c.ok(&["create", "priorityclass", "low", "--value=100"]);
    c.ok(&["create", "priorityclass", "high", "--value=1000"]);
    c.ok(&["create", "priorityclass", "high-never", "--value=1000", "--preemption-policy=Never"]);
    // Two low pods of 3 cpu each (a finalizer keeps a victim visible while it goes).
    create(&c, "low1.yaml", &pod("low-1", "low", "3", true));
    create(&c, "low2.yaml", &pod("low-2", "low", "3", true));
    for p in ["low-1", "low-2"] {
        wait_for(&format!("{p} bound"), T, || node_of(&c, p));
    }

    // preemptionPolicy Never: the same request at the same priority waits and evicts
    // nothing.
    create(&c, "never.yaml", &pod("never", "high-never", "4", false));
    let m = wait_for("FailedScheduling for never", T, || failed_scheduling(&c, "never"));
    assert!(m.contains("preemption: not eligible due to preemptionPolicy=Never."), "{m}");
    for p in ["low-1", "low-2"] {
        assert!(json(&c, &["get", "pod", p, "-n", "p"])["metadata"]["deletionTimestamp"].is_null());
    }

    // 4 cpu at priority 1000: evicting one low pod is enough, so exactly one goes.
    create(&c, "high.yaml", &pod("high", "high", "4", false));
    let victim = wait_for("a victim", T, || {
        ["low-1", "low-2"]
            .into_iter()
            .find(|p| !json(&c, &["get", "pod", p, "-n", "p"])["metadata"]["deletionTimestamp"].is_null())
    });
    let survivor = if victim == "low-1" { "low-2" } else { "low-1" };
    let v = json(&c, &["get", "pod", victim, "-n", "p"]);
    let dt = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(dt["reason"], "PreemptionByScheduler", "{v}");
    assert_eq!(dt["message"], "default-scheduler: preempting to accommodate a higher priority pod", "{v}");
    let high = wait_for("high nominated", T, || {
        let h = json(&c, &["get", "pod", "high", "-n", "p"]);
        h["status"]["nominatedNodeName"].as_str().map(str::to_string)
    });
    assert_eq!(high, "sim-0");
    assert!(json(&c, &["get", "pod", survivor, "-n", "p"])["metadata"]["deletionTimestamp"].is_null());
    let ev = json(&c, &["get", "events", "-n", "p", "--field-selector", "reason=Preempted"]);
    let msg = ev["items"][0]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.starts_with("Preempted by pod ") && msg.ends_with(" on node sim-0"), "{ev}");

    // The victim goes; the high pod is bound to the node.
    c.ok(&[
        "patch",
        "pod",
        victim,
        "-n",
        "p",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    assert_eq!(wait_for("high bound", T, || node_of(&c, "high")), "sim-0");
    // The room was kept for the nominated pod: the waiting `never` pod, no more important,
    // did not take it.
    let n = json(&c, &["get", "pod", "never", "-n", "p"]);
    assert!(n["spec"]["nodeName"].is_null() && n["status"]["nominatedNodeName"].is_null(), "{n}");
    assert!(json(&c, &["get", "pod", survivor, "-n", "p"])["metadata"]["deletionTimestamp"].is_null());

    // A lower-priority pod never preempts a higher one.
    create(&c, "lowest.yaml", &pod("lowest", "low", "4", false));
    let m = wait_for("FailedScheduling for lowest", T, || failed_scheduling(&c, "lowest"));
    assert!(m.contains("Insufficient cpu"), "{m}");
    assert!(json(&c, &["get", "pod", "high", "-n", "p"])["metadata"]["deletionTimestamp"].is_null());
    c.ok(&[
        "patch",
        "pod",
        survivor,
        "-n",
        "p",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
}
