//! Reads at a revision, as upstream serves them: a paged LIST is one snapshot (later pages
//! do not see later writes), `resourceVersionMatch=Exact` lists the past, and once the
//! change log is compacted past that revision both get 410 with upstream's message, as does
//! a watch from before the watch cache.

mod common;

use common::{wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

const CMS: &str = "/api/v1/namespaces/default/configmaps";

fn raw(c: &Cluster, path: &str) -> Value {
    serde_json::from_str(&c.ok(&["get", "--raw", path])).expect("JSON")
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("cm-"))
        .map(str::to_string)
        .collect()
}

/// `kubectl get --raw` that must fail; its stderr.
fn raw_fails(c: &Cluster, path: &str) -> String {
    let out = c.kubectl(&["get", "--raw", path]);
    assert!(!out.status.success(), "GET {path} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn paged_and_exact_lists_are_snapshots_until_compacted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("capstan.yaml");
    // A short change log, compacted often, and a small watch cache.
    std::fs::write(&config, "changeLogRetention: 20\ncompactionIntervalSeconds: 0.2\nwatchCacheEvents: 16\n")
        .expect("write config");
    let c = Cluster::start_with(&["--config", config.to_str().unwrap_or("")]);
    for i in 0..6 {
        c.ok(&["create", "configmap", &format!("cm-{i}"), "--from-literal=v=old"]);
    }
    let first = raw(&c, &format!("{CMS}?limit=3"));
    assert_eq!(names(&first), ["cm-0", "cm-1", "cm-2"]);
    let at = first["metadata"]["resourceVersion"].as_str().expect("list revision").to_string();
    let token = first["metadata"]["continue"].as_str().expect("a continue token").to_string();
    // Writes after the first page: a new object, one deleted, one changed.
    c.ok(&["create", "configmap", "cm-3a", "--from-literal=v=new"]);
    c.ok(&["delete", "configmap", "cm-4"]);
    c.ok(&["patch", "configmap", "cm-5", "-p", r#"{"data":{"v":"new"}}"#]);
    let second = raw(&c, &format!("{CMS}?limit=10&continue={token}"));
    assert_eq!(names(&second), ["cm-3", "cm-4", "cm-5"], "the second page is at the first page's revision");
    assert_eq!(second["metadata"]["resourceVersion"].as_str(), Some(at.as_str()));
    let cm5 = second["items"].as_array().and_then(|i| i.iter().find(|o| o["metadata"]["name"] == "cm-5"));
    assert_eq!(cm5.map(|o| o["data"]["v"].clone()), Some(Value::from("old")), "cm-5 as it was");
    // Exact: the list as it was at the first page's revision; without Exact: now.
    let exact = raw(&c, &format!("{CMS}?resourceVersion={at}&resourceVersionMatch=Exact"));
    assert_eq!(names(&exact), ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4", "cm-5"]);
    assert_eq!(exact["metadata"]["resourceVersion"].as_str(), Some(at.as_str()));
    let now = raw(&c, &format!("{CMS}?resourceVersion={at}&resourceVersionMatch=NotOlderThan"));
    assert_eq!(names(&now), ["cm-0", "cm-1", "cm-2", "cm-3", "cm-3a", "cm-5"]);

    // Enough writes to push the change log (20 revisions) and the watch cache (16 events)
    // past `at`; compaction follows within a fraction of a second.
    for i in 0..30 {
        c.ok(&["create", "configmap", &format!("filler-{i}")]);
    }
    wait_for("the continue token to expire", Duration::from_secs(30), || {
        let out = c.kubectl(&["get", "--raw", &format!("{CMS}?limit=10&continue={token}")]);
        (!out.status.success()).then_some(())
    });
    let err = raw_fails(&c, &format!("{CMS}?limit=10&continue={token}"));
    assert!(err.contains("The provided continue parameter is too old"), "{err}");
    let err = raw_fails(&c, &format!("{CMS}?resourceVersion={at}&resourceVersionMatch=Exact"));
    assert!(err.contains("too old"), "{err}");
    // A watch from before the watch cache: 410 Gone, as upstream (the client relists).
    let watch = c.ok(&["get", "--raw", &format!("{CMS}?watch=true&resourceVersion={at}&timeoutSeconds=5")]);
    let ev: Value = serde_json::from_str(watch.lines().next().unwrap_or("")).expect("one event");
    assert_eq!(ev["type"], "ERROR", "{ev}");
    assert_eq!(ev["object"]["code"], 410, "{ev}");
    assert_eq!(ev["object"]["reason"], "Expired", "{ev}");
    // A list without a revision is current and fine.
    assert!(names(&raw(&c, CMS)).contains(&"cm-3a".to_string()));
}
