//! CRD conversion webhooks with the real kubectl against a real `capstan up`: CronTab v1
//! (the storage version) has `spec.cronSpec`, v2 has `spec.schedule`, and a conversion
//! webhook served by this test over HTTPS with its own CA (`common::https`) maps one to the
//! other. Objects written in v2 are stored in v1; gets, lists and watches in either version
//! show their version's field; a list is converted in one ConversionReview; a webhook that
//! answers wrongly or is down makes requests for the other version fail with upstream's 500.

mod common;

use common::https::{HttpsServer, Reply};
use common::{wait_for, Cluster};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn crd(url: &str, ca: &str) -> String {
    let version = |name: &str, storage: bool, field: &str| {
        format!(
            r#"  - name: {name}
    served: true
    storage: {storage}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              {field}:
                type: string
"#
        )
    };
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
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
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: ["v1"]
      clientConfig:
        url: "{url}"
        caBundle: {ca}
  versions:
{}{}"#,
        version("v1", true, "cronSpec"),
        version("v2", false, "schedule")
    )
}

/// The conversion webhook: `/convert` renames `spec.cronSpec` (v1) to `spec.schedule` (v2)
/// and back; `/short` answers with no objects.
fn convert(path: &str, review: &Value) -> Reply {
    let req = &review["request"];
    let desired = req["desiredAPIVersion"].as_str().unwrap_or("");
    let (from, to) =
        if desired.ends_with("/v2") { ("cronSpec", "schedule") } else { ("schedule", "cronSpec") };
    let objects: Vec<Value> = match path {
        "/short" => Vec::new(),
        _ => req["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let mut o = o.clone();
                if let Some(spec) = o["spec"].as_object_mut() {
                    if let Some(v) = spec.remove(from) {
                        spec.insert(to.to_string(), v);
                    }
                }
                o["apiVersion"] = json!(desired);
                o
            })
            .collect(),
    };
    let body = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
        "response": {"uid": req["uid"], "convertedObjects": objects, "result": {"status": "Success"}},
    });
    Reply::now(body.to_string())
}

fn json_of(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&a)).expect("kubectl printed JSON")
}

/// The objects of a raw watch's output (one JSON event per line).
fn events(out: &str) -> Vec<Value> {
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("an event")).collect()
}

#[test]
fn conversion_webhook_converts_reads_writes_lists_and_watches() {
    let c = Cluster::start();
    let mut server = HttpsServer::start(Arc::new(convert));
    let f = c.file("crd.yaml", &crd(&server.url("/convert"), &server.ca_bundle));
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("crontabs.stable.example.com created"), "{out}");
    wait_for("the CRD to be established", Duration::from_secs(5), || {
        let out = c.kubectl(&["get", "crontabs.v2.stable.example.com"]);
        out.status.success().then_some(())
    });

    // Written in v2: stored in v1 through a ConversionReview, and shown in both versions.
    let v2 = "apiVersion: stable.example.com/v2\nkind: CronTab\nmetadata:\n  name: c1\n  labels: {app: cron}\nspec:\n  schedule: \"*/5 * * * *\"\n";
    let f = c.file("c1.yaml", v2);
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("crontab.stable.example.com/c1 created"), "{out}");
    let in_v1 = json_of(&c, &["get", "crontabs.v1.stable.example.com", "c1"]);
    assert_eq!(in_v1["apiVersion"], "stable.example.com/v1");
    assert_eq!(in_v1["spec"], json!({"cronSpec": "*/5 * * * *"}), "{in_v1}");
    let in_v2 = json_of(&c, &["get", "crontabs.v2.stable.example.com", "c1"]);
    assert_eq!(in_v2["apiVersion"], "stable.example.com/v2");
    assert_eq!(in_v2["spec"], json!({"schedule": "*/5 * * * *"}), "{in_v2}");
    assert_eq!(in_v2["metadata"]["uid"], in_v1["metadata"]["uid"]);
    assert_eq!(in_v2["metadata"]["labels"]["app"], "cron");
    // The review was ConversionReview v1 with a uid, the desired version and the object.
    let reviews: Vec<Value> = server.seen.lock().unwrap().iter().map(|(_, r)| r.clone()).collect();
    let to_v1 = reviews
        .iter()
        .find(|r| r["request"]["desiredAPIVersion"] == "stable.example.com/v1")
        .expect("a review converting to v1");
    assert_eq!(to_v1["apiVersion"], "apiextensions.k8s.io/v1");
    assert_eq!(to_v1["kind"], "ConversionReview");
    assert!(to_v1["request"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert_eq!(to_v1["request"]["objects"][0]["apiVersion"], "stable.example.com/v2");
    assert_eq!(to_v1["request"]["objects"][0]["spec"]["schedule"], "*/5 * * * *");

    // Written in v1 (the storage version): no conversion on the way in.
    for n in ["c2", "c3"] {
        let f = c.file(
            &format!("{n}.yaml"),
            &format!("apiVersion: stable.example.com/v1\nkind: CronTab\nmetadata:\n  name: {n}\nspec:\n  cronSpec: \"0 * * * *\"\n"),
        );
        c.ok(&["apply", "-f", f.to_str().unwrap()]);
    }
    // A list in v2: every item converted, in one review.
    let before = server.seen.lock().unwrap().len();
    let list: Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/apis/stable.example.com/v2/namespaces/default/crontabs",
    ]))
    .expect("a list");
    assert_eq!(list["apiVersion"], "stable.example.com/v2");
    assert_eq!(list["kind"], "CronTabList");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{list}");
    for i in items {
        assert_eq!(i["apiVersion"], "stable.example.com/v2", "{i}");
        assert!(i["spec"]["schedule"].is_string() && i["spec"].get("cronSpec").is_none(), "{i}");
    }
    let batched = server.seen.lock().unwrap()[before..]
        .iter()
        .any(|(_, r)| r["request"]["objects"].as_array().is_some_and(|o| o.len() == 3));
    assert!(batched, "the list's three objects were sent in one ConversionReview");
    let rv = list["metadata"]["resourceVersion"].as_str().filter(|r| !r.is_empty()).expect("resourceVersion");
    let rv = rv.to_string();
    // kubectl's own list (a Table, then JSON) in v2.
    let list = json_of(&c, &["get", "crontabs.v2.stable.example.com"]);
    assert!(
        list["items"].as_array().is_some_and(|i| i.iter().all(|o| o["spec"]["schedule"].is_string())),
        "{list}"
    );

    // An update through v2 (patch: read in v2, stored in v1) and one through v1.
    c.ok(&[
        "patch",
        "crontabs.v2.stable.example.com",
        "c1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"schedule":"2 * * * *"}}"#,
    ]);
    c.ok(&[
        "patch",
        "crontabs.v1.stable.example.com",
        "c2",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"cronSpec":"1 * * * *"}}"#,
    ]);
    let c1 = json_of(&c, &["get", "crontabs.v1.stable.example.com", "c1"]);
    assert_eq!(c1["spec"], json!({"cronSpec": "2 * * * *"}), "{c1}");

    // A watch in v2 from the list's revision: both changes, converted.
    let path = format!("/apis/stable.example.com/v2/namespaces/default/crontabs?watch=1&resourceVersion={rv}&timeoutSeconds=1");
    let evs = events(&c.ok(&["get", "--raw", &path]));
    let modified: Vec<(&str, &Value)> = evs
        .iter()
        .filter(|e| e["type"] == "MODIFIED")
        .map(|e| (e["object"]["metadata"]["name"].as_str().unwrap_or(""), &e["object"]))
        .collect();
    assert_eq!(modified.len(), 2, "{evs:?}");
    assert_eq!(modified[0].1["spec"], json!({"schedule": "2 * * * *"}));
    assert_eq!(modified[1].1["spec"], json!({"schedule": "1 * * * *"}));
    assert!(modified.iter().all(|(_, o)| o["apiVersion"] == "stable.example.com/v2"));
    // A watch's initial events are converted too.
    let path = "/apis/stable.example.com/v2/namespaces/default/crontabs?watch=1&timeoutSeconds=1";
    let evs = events(&c.ok(&["get", "--raw", path]));
    assert_eq!(evs.len(), 3, "{evs:?}");
    assert!(
        evs.iter().all(|e| e["type"] == "ADDED" && e["object"]["spec"]["schedule"].is_string()),
        "{evs:?}"
    );

    // Delete through v2.
    let out = c.ok(&["delete", "crontabs.v2.stable.example.com", "c3"]);
    assert!(out.contains("deleted"), "{out}");

    // A webhook that answers with the wrong number of objects: upstream's 500.
    let short = crd(&server.url("/short"), &server.ca_bundle);
    let f = c.file("crd-short.yaml", &short);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let err = wait_for("the short answers to be used", Duration::from_secs(5), || {
        let out = c.kubectl(&["get", "crontabs.v2.stable.example.com", "c1"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && stderr.contains("returned 0 objects, expected 1")).then_some(stderr)
    });
    assert!(
        err.contains("Error from server: conversion webhook for stable.example.com/v1, Kind=CronTab returned 0 objects, expected 1"),
        "{err}"
    );
    let f = c.file("crd-ok.yaml", &crd(&server.url("/convert"), &server.ca_bundle));
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    wait_for("the webhook to be used again", Duration::from_secs(5), || {
        c.kubectl(&["get", "crontabs.v2.stable.example.com", "c1"]).status.success().then_some(())
    });

    // The webhook down: reads and writes in v2 fail with a clear 500; v1 still works.
    server.stop();
    let out = c.kubectl(&["get", "crontabs.v2.stable.example.com", "c1", "-v=6"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("500 Internal Server Error"), "{stderr}");
    assert!(
        stderr.contains("Error from server: conversion webhook for stable.example.com/v1, Kind=CronTab failed: Post \"https://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("connection refused") || stderr.contains("Connection refused"), "{stderr}");
    let err = c.fails(&["get", "crontabs.v2.stable.example.com"]);
    assert!(err.contains("conversion webhook for stable.example.com/v1, Kind=CronTab failed"), "{err}");
    let f = c.file(
        "c4.yaml",
        "apiVersion: stable.example.com/v2\nkind: CronTab\nmetadata:\n  name: c4\nspec:\n  schedule: \"4 * * * *\"\n",
    );
    let err = c.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(err.contains("conversion webhook for stable.example.com/v2, Kind=CronTab failed"), "{err}");
    c.fails(&["get", "crontabs.v1.stable.example.com", "c4"]);
    let c1 = json_of(&c, &["get", "crontabs.v1.stable.example.com", "c1"]);
    assert_eq!(c1["spec"]["cronSpec"], "2 * * * *");
}
