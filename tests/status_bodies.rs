//! Error bodies byte for byte: a real `capstan up` answers AlreadyExists, NotFound, Invalid,
//! Conflict and Forbidden with the bytes upstream's API server sends (field order `kind`,
//! `apiVersion`, `metadata`, `status`, `message`, `reason`, `details`, `code`, Go's string
//! escaping, a trailing newline), read raw by the official Python client.

mod common;

use common::Cluster;
use std::process::{Command, Stdio};

const SCRIPT: &str = r#"
import json, sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException

config.load_kube_config(sys.argv[1])
core = client.CoreV1Api()
batch = client.BatchV1Api()
out = {}

def body(name, f, *a, **kw):
    try:
        f(*a, **kw)
    except ApiException as e:
        out[name] = e.body.decode() if isinstance(e.body, bytes) else e.body
        return
    raise AssertionError(name + " unexpectedly succeeded")

cm = {"metadata": {"name": "c1"}, "data": {"a": "1"}}
core.create_namespaced_config_map("default", cm)
body("AlreadyExists", core.create_namespaced_config_map, "default", cm)
job = {"metadata": {"name": "j1"}, "spec": {"template": {"spec": {"restartPolicy": "Never",
       "containers": [{"name": "c", "image": "x"}]}}}}
batch.create_namespaced_job("default", job)
body("AlreadyExistsGroup", batch.create_namespaced_job, "default", job)
body("NotFound", core.read_namespaced_pod, "nope", "default")
body("Invalid", core.create_namespaced_config_map, "default", {"metadata": {"name": "Bad_Name"}})
current = core.read_namespaced_config_map("c1", "default")
stale = {"metadata": {"name": "c1", "resourceVersion": current.metadata.resource_version}, "data": {"a": "2"}}
core.replace_namespaced_config_map("c1", "default", stale)
body("Conflict", core.replace_namespaced_config_map, "c1", "default", stale)
bob = client.ApiClient()
bob.set_default_header("Impersonate-User", "bob")
body("Forbidden", client.CoreV1Api(bob).list_namespaced_pod, "default")
print(json.dumps(out))
"#;

fn status(message: &str, reason: &str, details: &str, code: u16) -> String {
    format!(
        "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":{},\"reason\":\"{reason}\",\"details\":{details},\"code\":{code}}}\n",
        serde_json::to_string(message).unwrap()
    )
}

#[test]
fn error_bodies_are_upstreams_bytes() {
    let c = Cluster::start();
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&c.kubeconfig)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the script printed JSON");
    let dns =
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', \
               and must start and end with an alphanumeric character (e.g. 'example.com', regex used for \
               validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    let cases = [
        (
            "AlreadyExists",
            status("configmaps \"c1\" already exists", "AlreadyExists", r#"{"name":"c1","kind":"configmaps"}"#, 409),
        ),
        (
            "AlreadyExistsGroup",
            status("jobs.batch \"j1\" already exists", "AlreadyExists", r#"{"name":"j1","group":"batch","kind":"jobs"}"#, 409),
        ),
        ("NotFound", status("pods \"nope\" not found", "NotFound", r#"{"name":"nope","kind":"pods"}"#, 404)),
        (
            "Invalid",
            status(
                &format!("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": {dns}"),
                "Invalid",
                &format!(
                    r#"{{"name":"Bad_Name","kind":"ConfigMap","causes":[{{"reason":"FieldValueInvalid","message":{},"field":"metadata.name"}}]}}"#,
                    serde_json::to_string(&format!("Invalid value: \"Bad_Name\": {dns}")).unwrap()
                ),
                422,
            ),
        ),
        (
            "Conflict",
            status(
                "Operation cannot be fulfilled on configmaps \"c1\": the object has been modified; please apply your changes to the latest version and try again",
                "Conflict",
                r#"{"name":"c1","kind":"configmaps"}"#,
                409,
            ),
        ),
        (
            "Forbidden",
            status(
                "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
                "Forbidden",
                r#"{"kind":"pods"}"#,
                403,
            ),
        ),
    ];
    for (name, want) in cases {
        assert_eq!(got[name].as_str(), Some(want.as_str()), "{name}");
    }
}
