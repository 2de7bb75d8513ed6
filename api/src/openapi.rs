//! OpenAPI v3 documents (`/openapi/v3`), built from the [`registry`](crate::registry).
//!
//! One OpenAPI 3.0 document per served group-version, as upstream serves them:
//!
//! * `paths`: the collection and object paths of every stored resource (plus `/status` and
//!   `/scale`), with operations per the resource's verbs; every operation carries
//!   `x-kubernetes-group-version-kind` (an object) and `x-kubernetes-action`, and every write
//!   takes `dryRun`, `fieldManager` and `fieldValidation`. kubectl looks for a PATCH operation
//!   with the kind's GVK and a `fieldValidation` parameter before it sends
//!   `fieldValidation=Strict`. PATCH bodies do **not** list strategic merge patch, so that
//!   client-side apply uses kubectl's compiled-in types rather than these schemas (which lack
//!   the patch-merge-key extensions). Review kinds only get the POST on their collection.
//! * `components.schemas`: the schemas of the served kinds and everything they reference,
//!   generated from the `k8s-openapi` types' `schemars` impls under upstream's names
//!   (`io.k8s.api.core.v1.Pod`), with `x-kubernetes-group-version-kind` (a list) on kinds.
//!   This is what `kubectl explain` reads.
//!
//! Documents are built once, on first use, and shared as serialized bytes.

mod paths;
mod schemas;
mod v2;

pub use v2::PROTOBUF_MEDIA_TYPE as V2_PROTOBUF_MEDIA_TYPE;

use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{json, Map, Value};

use crate::registry::{self, ResourceInfo};

/// `info.version` of every document.
const KUBERNETES_VERSION: &str = "v1.36.0";

/// One built document.
struct Document {
    group: &'static str,
    version: &'static str,
    bytes: Arc<Vec<u8>>,
    hash: String,
}

/// Every document of a built-in group-version, built on first use.
static DOCUMENTS: LazyLock<Vec<Document>> = LazyLock::new(build_all);

/// The documents of custom group-versions (served by CustomResourceDefinitions), rebuilt
/// when the registry's custom part changes: (registry generation, documents).
static CUSTOM_DOCUMENTS: LazyLock<Mutex<(u64, Arc<Vec<Document>>)>> =
    LazyLock::new(|| Mutex::new((u64::MAX, Arc::new(Vec::new()))));

fn build_all() -> Vec<Document> {
    let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
    for r in registry::RESOURCES {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    gvs.into_iter().filter_map(|(group, version)| document_of(group, version, false)).collect()
}

fn document_of(group: &'static str, version: &'static str, custom: bool) -> Option<Document> {
    let resources: Vec<&ResourceInfo> = if custom {
        registry::all()
            .into_iter()
            .filter(|r| r.custom.is_some() && r.group == group && r.version == version)
            .collect()
    } else {
        registry::RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect()
    };
    let value = build(group, version, &resources)?;
    let bytes = serde_json::to_vec(&value).ok()?;
    let hash = hash_hex(&bytes);
    Some(Document { group, version, bytes: Arc::new(bytes), hash })
}

/// The documents of the custom group-versions served now.
fn custom_documents() -> Arc<Vec<Document>> {
    let generation = registry::generation();
    let mut cached = CUSTOM_DOCUMENTS.lock().unwrap_or_else(|e| e.into_inner());
    if cached.0 != generation {
        let mut gvs: Vec<(&'static str, &'static str)> = Vec::new();
        for r in registry::all().into_iter().filter(|r| r.custom.is_some()) {
            if !gvs.contains(&(r.group, r.version)) {
                gvs.push((r.group, r.version));
            }
        }
        let docs = gvs.into_iter().filter_map(|(g, v)| document_of(g, v, true)).collect();
        *cached = (generation, Arc::new(docs));
    }
    Arc::clone(&cached.1)
}

/// `api/v1` or `apis/<group>/<version>`: the key of a group-version in the index.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Builds the document of one group-version, or `None` if nothing is served there.
fn build(group: &str, version: &str, resources: &[&ResourceInfo]) -> Option<Value> {
    if resources.is_empty() {
        return None;
    }
    let comps = schemas::components(group, version, resources);
    let paths = paths::paths(group, version, resources, &comps);
    let mut components = Map::new();
    components.insert("schemas".to_string(), Value::Object(comps.schemas));
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBERNETES_VERSION},
        "paths": Value::Object(paths),
        "components": Value::Object(components),
    }))
}

/// 128-bit FNV-1a of `bytes`, as 32 upper-case hex digits: stable across runs and builds.
fn hash_hex(bytes: &[u8]) -> String {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let hash = bytes.iter().fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME));
    format!("{hash:032X}")
}

/// The bytes and hash of a served document.
fn find(group: &str, version: &str) -> Option<(Arc<Vec<u8>>, String)> {
    let docs: &'static Vec<Document> = &DOCUMENTS;
    if let Some(d) = docs.iter().find(|d| d.group == group && d.version == version) {
        return Some((Arc::clone(&d.bytes), d.hash.clone()));
    }
    let custom = custom_documents();
    custom
        .iter()
        .find(|d| d.group == group && d.version == version)
        .map(|d| (Arc::clone(&d.bytes), d.hash.clone()))
}

/// The `/openapi/v3` index:
/// `{"paths": {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=<HASH>"}, ...}}`,
/// one entry per served group-version.
pub fn index() -> Value {
    let mut paths = Map::new();
    let custom = custom_documents();
    for doc in DOCUMENTS.iter().chain(custom.iter()) {
        let key = gv_path(doc.group, doc.version);
        let url = format!("/openapi/v3/{key}?hash={}", doc.hash);
        paths.insert(key, json!({ "serverRelativeURL": url }));
    }
    json!({ "paths": paths })
}

/// The OpenAPI 3.0 document of one group-version (`""` for core), as serialized JSON, or
/// `None` if that group-version is not served. Built once (a custom group-version's again
/// when its CRDs change); later calls share the bytes.
pub fn document(group: &str, version: &str) -> Option<Arc<Vec<u8>>> {
    find(group, version).map(|d| d.0)
}

/// A stable hash of [`document`]'s bytes (32 upper-case hex digits), used in the index's
/// `?hash=` and as the ETag, or `None` if that group-version is not served.
pub fn document_hash(group: &str, version: &str) -> Option<String> {
    find(group, version).map(|d| d.1)
}

/// The `/openapi/v2` document, rebuilt when custom kinds change: (registry generation,
/// JSON bytes, protobuf bytes).
static V2_DOCUMENT: LazyLock<Mutex<(u64, Option<V2Document>)>> =
    LazyLock::new(|| Mutex::new((u64::MAX, None)));

/// The `/openapi/v2` document in its two encodings.
pub struct V2Document {
    /// Swagger 2.0 JSON.
    pub json: Arc<Vec<u8>>,
    /// gnostic's `openapi.v2.Document` protobuf ([`V2_PROTOBUF_MEDIA_TYPE`]).
    pub protobuf: Arc<Vec<u8>>,
    /// A stable hash of the JSON bytes (the ETag).
    pub hash: String,
}

/// The Swagger 2.0 document of everything served (`/openapi/v2`), derived from the v3
/// documents; built on first use and again when CustomResourceDefinitions change.
pub fn document_v2() -> V2Document {
    let generation = registry::generation();
    let mut cached = V2_DOCUMENT.lock().unwrap_or_else(|e| e.into_inner());
    if cached.0 != generation || cached.1.is_none() {
        let custom = custom_documents();
        let docs: Vec<Value> = DOCUMENTS
            .iter()
            .chain(custom.iter())
            .filter_map(|d| serde_json::from_slice(&d.bytes).ok())
            .collect();
        let doc = v2::build(&docs, KUBERNETES_VERSION);
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let hash = hash_hex(&json);
        let protobuf = v2::to_protobuf(&doc);
        *cached = (generation, Some(V2Document { json: Arc::new(json), protobuf: Arc::new(protobuf), hash }));
    }
    let d = cached.1.as_ref().expect("built above");
    V2Document { json: Arc::clone(&d.json), protobuf: Arc::clone(&d.protobuf), hash: d.hash.clone() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc(group: &str, version: &str) -> Value {
        let bytes = document(group, version).expect("served group-version");
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    /// The `$ref` target of a schema: `$ref` itself or a single-element `allOf`.
    fn target(schema: &Value) -> Option<&str> {
        schema.get("$ref").or_else(|| schema.get("allOf")?.get(0)?.get("$ref")).and_then(Value::as_str)
    }

    #[test]
    fn index_lists_every_served_group_version() {
        let index = index();
        let paths = index["paths"].as_object().expect("paths");
        let gvs = registry::group_versions();
        assert_eq!(paths.len(), gvs.len());
        for (g, v) in gvs {
            let key = gv_path(g, v);
            let hash = document_hash(g, v).expect("hash");
            assert_eq!(paths[&key]["serverRelativeURL"], format!("/openapi/v3/{key}?hash={hash}"));
        }
        assert!(paths.contains_key("api/v1"));
        assert!(paths.contains_key("apis/apps/v1"));
        assert!(document("meta.k8s.io", "v1").is_none());
        assert!(document_hash("apps", "v2").is_none());
    }

    #[test]
    fn deployments_patch_has_gvk_and_field_validation() {
        let d = doc("apps", "v1");
        let item = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"];
        let patch = &item["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert_eq!(patch["x-kubernetes-action"], "patch");
        let names: Vec<&str> = patch["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| p["name"].as_str())
            .collect();
        for n in ["fieldValidation", "dryRun", "fieldManager", "force"] {
            assert!(names.contains(&n), "{n}");
        }
        let content = patch["requestBody"]["content"].as_object().expect("content");
        assert!(content.contains_key("application/json-patch+json"));
        assert!(content.contains_key("application/merge-patch+json"));
        assert!(content.contains_key("application/apply-patch+yaml"));
        assert!(!content.contains_key("application/strategic-merge-patch+json"));
        for m in ["get", "put", "delete"] {
            assert!(item.get(m).is_some(), "{m}");
        }
        let collection = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments"];
        for m in ["get", "post", "delete"] {
            assert!(collection.get(m).is_some(), "{m}");
        }
        assert_eq!(collection["delete"]["x-kubernetes-action"], "deletecollection");
        let scale = &d["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"];
        assert_eq!(
            scale["patch"]["x-kubernetes-group-version-kind"],
            json!({"group": "autoscaling", "version": "v1", "kind": "Scale"})
        );
        assert!(d["paths"].get("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status").is_some());
        assert!(d["components"]["schemas"].get("io.k8s.api.autoscaling.v1.Scale").is_some());
    }

    /// kubectl inspects one arbitrary PATCH operation per GVK: all of them must carry
    /// `fieldValidation` and none may advertise strategic merge patch.
    #[test]
    fn every_patch_operation_is_usable_by_kubectl() {
        for (g, v) in registry::group_versions() {
            let d = doc(g, v);
            for (path, item) in d["paths"].as_object().expect("paths") {
                for (method, op) in item.as_object().expect("path item") {
                    if method == "parameters" {
                        continue;
                    }
                    assert!(op["x-kubernetes-group-version-kind"].is_object(), "{path}");
                    assert!(op["x-kubernetes-action"].is_string(), "{path}");
                    if method == "patch" {
                        let params = op["parameters"].as_array().expect("params");
                        assert!(params.iter().any(|p| p["name"] == "fieldValidation"));
                        let content = &op["requestBody"]["content"];
                        assert!(content.get("application/strategic-merge-patch+json").is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn every_stored_kind_has_paths_and_a_schema() {
        // The metrics group (answered from memory, get and list only) publishes no schema.
        for r in registry::RESOURCES.iter().filter(|r| r.group != registry::METRICS_GROUP) {
            let d = doc(r.group, r.version);
            let prefix = if r.group.is_empty() {
                format!("/api/{}", r.version)
            } else {
                format!("/apis/{}/{}", r.group, r.version)
            };
            let ns = if r.namespaced() { "/namespaces/{namespace}" } else { "" };
            let collection = format!("{prefix}{ns}/{}", r.plural);
            assert!(d["paths"][&collection]["post"].is_object(), "{collection}");
            let schemas = d["components"]["schemas"].as_object().expect("schemas");
            let with_gvk = schemas.values().any(|s| {
                s["x-kubernetes-group-version-kind"].as_array().is_some_and(|l| {
                    l.contains(&json!({"group": r.group, "version": r.version, "kind": r.kind}))
                })
            });
            assert!(with_gvk, "{}", r.kind);
            if r.stored {
                let item = format!("{collection}/{{name}}");
                assert!(d["paths"][&item]["patch"].is_object(), "{item}");
                assert!(d["paths"][&collection]["get"].is_object(), "{collection}");
            } else {
                let ops = d["paths"][&collection].as_object().expect("path");
                assert_eq!(ops.len(), 2, "{collection}: parameters and post only");
            }
        }
    }

    #[test]
    fn pod_schema_is_explainable() {
        let d = doc("", "v1");
        let schemas = &d["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert_eq!(pod["type"], "object");
        assert!(pod.get("required").is_none(), "metadata is not required upstream");
        assert!(pod["description"].is_string());
        assert_eq!(
            target(&pod["properties"]["spec"]),
            Some("#/components/schemas/io.k8s.api.core.v1.PodSpec")
        );
        let spec = &schemas["io.k8s.api.core.v1.PodSpec"];
        assert!(spec["required"].as_array().is_some_and(|r| r.contains(&json!("containers"))));
        let containers = &spec["properties"]["containers"];
        assert_eq!(containers["type"], "array");
        assert_eq!(target(&containers["items"]), Some("#/components/schemas/io.k8s.api.core.v1.Container"));
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"],
            json!({
                "description": schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Time"]["description"],
                "type": "string",
                "format": "date-time",
            })
        );
        assert_eq!(
            schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["x-kubernetes-int-or-string"],
            true
        );
        assert!(schemas["io.k8s.apimachinery.pkg.api.resource.Quantity"].is_object());
        assert!(schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["name"].is_object());
        let list = &schemas["io.k8s.api.core.v1.PodList"];
        assert_eq!(
            list["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "PodList", "version": "v1"}])
        );
        assert_eq!(
            target(&list["properties"]["items"]["items"]),
            Some("#/components/schemas/io.k8s.api.core.v1.Pod")
        );
    }

    /// Walks every schema position and checks nothing OpenAPI 3.0 cannot express remains.
    fn assert_openapi30(schema: &Value, at: &str) {
        let Some(obj) = schema.as_object() else {
            panic!("{at}: schema is not an object");
        };
        assert!(!obj.contains_key("$defs"), "{at}");
        assert!(!obj.contains_key("const"), "{at}");
        assert!(!obj.contains_key("$schema"), "{at}");
        assert!(!obj.contains_key("examples"), "{at}");
        if let Some(t) = obj.get("type") {
            assert!(t.is_string(), "{at}: type {t}");
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                assert_openapi30(v, &format!("{at}.{k}"));
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for v in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                assert_openapi30(v, at);
            }
        }
        for key in ["items", "additionalProperties", "not"] {
            if let Some(v) = obj.get(key).filter(|v| !v.is_boolean()) {
                assert_openapi30(v, &format!("{at}[{key}]"));
            }
        }
    }

    #[test]
    fn every_ref_resolves_and_schemas_are_openapi30() {
        for (g, v) in registry::group_versions() {
            let d = doc(g, v);
            let schemas = d["components"]["schemas"].as_object().expect("schemas");
            let mut refs = BTreeSet::new();
            schemas::refs(&d, &mut refs);
            assert!(!refs.is_empty());
            for r in refs {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .unwrap_or_else(|| panic!("{g}/{v}: bad $ref {r}"));
                assert!(schemas.contains_key(name), "{g}/{v}: unresolved {r}");
            }
            for (name, schema) in schemas {
                assert_openapi30(schema, name);
            }
        }
    }

    #[test]
    fn review_kinds_only_accept_create() {
        let d = doc("authorization.k8s.io", "v1");
        let paths = d["paths"].as_object().expect("paths");
        // selfsubjectaccessreviews, selfsubjectrulesreviews, subjectaccessreviews and the
        // namespaced localsubjectaccessreviews.
        assert_eq!(paths.len(), 4);
        let ssar = &paths["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"];
        assert_eq!(ssar["post"]["x-kubernetes-group-version-kind"]["kind"], "SelfSubjectAccessReview");
        assert!(d["components"]["schemas"]
            .get("io.k8s.api.authorization.v1.SelfSubjectAccessReview")
            .is_some());
    }

    #[test]
    fn documents_are_deterministic_and_small() {
        let start = std::time::Instant::now();
        let fresh = build_all();
        let elapsed = start.elapsed();
        let mut total = 0;
        for d in &fresh {
            let cached = document(d.group, d.version).expect("served");
            assert_eq!(*cached, *d.bytes, "{}/{}: deterministic", d.group, d.version);
            assert_eq!(document_hash(d.group, d.version).as_deref(), Some(d.hash.as_str()));
            let parsed: Value = serde_json::from_slice(&d.bytes).expect("valid JSON");
            assert_eq!(parsed["openapi"], "3.0.0");
            assert!(d.bytes.len() < 3_000_000, "{}/{}: {}", d.group, d.version, d.bytes.len());
            eprintln!("{}: {} bytes", gv_path(d.group, d.version), d.bytes.len());
            total += d.bytes.len();
        }
        eprintln!("built {} documents, {total} bytes, in {elapsed:?}", fresh.len());
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(hash_hex(b""), "6C62272E07BB014262B821756295C58D");
        assert_ne!(hash_hex(b"a"), hash_hex(b"b"));
    }
}
