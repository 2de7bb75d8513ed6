//! `/version`, aggregated discovery (`/api`, `/apis` as `apidiscovery.k8s.io/v2`) and
//! legacy discovery (`/api/v1`, `/apis/<group>/<version>`...), all built from the registry.

use capstan_api::registry::{self, ResourceInfo};
use serde_json::{json, Value};

/// The Kubernetes version whose types are served (k8s-openapi `v1_36`, the newest release
/// whose protobuf descriptors `k8s.desc` is generated from; k8s-openapi's `v1_37` has fields
/// the 1.37 sources at hand lack). kubectl's version dispatcher on Debian switches clients
/// only for minors 29, 31 and 33, so 36 runs the embedded kubectl 1.32 (which warns of the
/// skew, as it would against an upstream 1.36 server; kubectl 1.35 does not).
pub const KUBE_MINOR: &str = "36";

/// The media type of aggregated discovery.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `GET /version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-capstan.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

fn scope(r: &ResourceInfo) -> &'static str {
    if r.namespaced() {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut v = json!({
        "resource": r.plural,
        "singularResource": r.singular,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": scope(r),
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        v["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        v["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        v["subresources"] = Value::Array(
            r.subresources
                .iter()
                .map(|s| {
                    json!({
                        "subresource": s.name,
                        "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                        "verbs": s.verbs,
                    })
                })
                .collect(),
        );
    }
    v
}

fn group_versions(core: bool) -> Vec<(&'static str, &'static str)> {
    registry::group_versions().into_iter().filter(|(g, _)| g.is_empty() == core).collect()
}

/// Aggregated discovery for `/api` (`core = true`) or `/apis`.
pub fn aggregated(core: bool) -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in group_versions(core) {
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, versions)| {
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = registry::all()
                        .into_iter()
                        .filter(|r| r.group == g && r.version == v)
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    let mut items = items;
    if !core {
        items.extend(aggregated_remotes());
    }
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// The groups extension API servers serve, in aggregated form: the resources their last
/// availability check read (`Stale` when it read none, as upstream marks a group-version it
/// could not refresh).
fn aggregated_remotes() -> Vec<Value> {
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for r in crate::aggregator::remotes() {
        let (g, v) = crate::aggregator::group_version(&r);
        let version = match &r.resources {
            Some(list) => {
                json!({"version": v, "resources": crate::aggregator::aggregated_resources(&g, &v, list), "freshness": "Current"})
            }
            None => json!({"version": v, "resources": [], "freshness": "Stale"}),
        };
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(version),
            None => groups.push((g, vec![version])),
        }
    }
    groups
        .into_iter()
        .map(
            |(g, versions)| json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions}),
        )
        .collect()
}

/// The versions of `g` extension API servers serve, most preferred first.
fn remote_versions(g: &str) -> Vec<String> {
    crate::aggregator::remotes()
        .iter()
        .map(crate::aggregator::group_version)
        .filter(|(rg, _)| rg == g)
        .map(|(_, v)| v)
        .collect()
}

/// Legacy `/api`.
pub fn legacy_api(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn legacy_group(g: &str) -> Value {
    let mut versions: Vec<Value> = group_versions(false)
        .into_iter()
        .filter(|(gg, _)| *gg == g)
        .map(|(_, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    for v in remote_versions(g) {
        let e = json!({"groupVersion": format!("{g}/{v}"), "version": v});
        if !versions.contains(&e) {
            versions.push(e);
        }
    }
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": g, "versions": versions, "preferredVersion": preferred})
}

/// Legacy `/apis`.
pub fn legacy_apis() -> Value {
    let mut names: Vec<String> = Vec::new();
    for (g, _) in group_versions(false) {
        if !names.iter().any(|n| n == g) {
            names.push(g.to_string());
        }
    }
    for r in crate::aggregator::remotes() {
        let (g, _) = crate::aggregator::group_version(&r);
        if !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.iter().map(|g| legacy_group(g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// Legacy `/apis/<group>`, if served.
pub fn legacy_group_doc(g: &str) -> Option<Value> {
    if !group_versions(false).iter().any(|(gg, _)| *gg == g) && remote_versions(g).is_empty() {
        return None;
    }
    let mut v = legacy_group(g);
    v["kind"] = json!("APIGroup");
    v["apiVersion"] = json!("v1");
    Some(v)
}

/// Legacy `/api/v1` or `/apis/<group>/<version>`, if served.
pub fn resource_list(g: &str, v: &str) -> Option<Value> {
    let rs: Vec<&ResourceInfo> =
        registry::all().into_iter().filter(|r| r.group == g && r.version == v).collect();
    if rs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in rs {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced(),
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        resources.push(e);
        for s in r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced(),
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != r.group || s.version != r.version {
                e["group"] = json!(s.group);
                e["version"] = json!(s.version);
            }
            resources.push(e);
        }
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_core_has_pods_with_short_names() {
        let d = aggregated(true);
        let core = &d["items"][0];
        assert_eq!(core["metadata"]["name"], "");
        let pods = core["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"][0], "po");
        assert_eq!(pods["categories"][0], "all");
    }

    #[test]
    fn legacy_lists_subresources() {
        let l = resource_list("apps", "v1").unwrap();
        let names: Vec<&str> =
            l["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"deployments/scale"));
        assert!(resource_list("nope", "v1").is_none());
    }
}
