//! `/openapi/v2` for clients that read the Swagger 2.0 document: JSON for plain HTTP
//! clients, gnostic protobuf for client-go's `OpenAPISchema()`, read by
//! `kubectl explain --output=plaintext-openapiv2` (kube-openapi's v2 model parser, which
//! refuses the whole document if any definition does not parse).

mod common;

use common::Cluster;
use serde_json::Value;

#[test]
fn openapi_v2_serves_kubectl_explain() {
    let c = Cluster::start();
    let doc: Value = serde_json::from_str(&c.ok(&["get", "--raw", "/openapi/v2"])).expect("JSON");
    assert_eq!(doc["swagger"], "2.0");
    let pod = &doc["definitions"]["io.k8s.api.core.v1.Pod"];
    assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod", "{pod}");
    assert!(
        pod["properties"]["spec"]["$ref"].as_str().is_some_and(|r| r.starts_with("#/definitions/")),
        "{pod}"
    );
    let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
    assert!(patch["parameters"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == "fieldValidation")));
    // As in v3: no strategic merge patch advertised, so kubectl keeps its built-in patch rules.
    assert!(!patch["consumes"].to_string().contains("strategic-merge-patch"), "{patch}");

    // kubectl reads the protobuf form.
    let out = c.ok(&["explain", "pods.spec.containers.ports", "--output=plaintext-openapiv2"]);
    assert!(out.contains("KIND:") && out.contains("Pod"), "{out}");
    assert!(out.contains("containerPort"), "{out}");
    let out = c.ok(&["explain", "deployments.spec", "--output=plaintext-openapiv2"]);
    assert!(out.contains("apps/v1") && out.contains("replicas"), "{out}");
    // The v3 path still serves the default explain.
    let out = c.ok(&["explain", "deployments.spec.replicas"]);
    assert!(out.contains("replicas"), "{out}");
}
