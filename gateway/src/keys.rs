//! The storage key layout of API objects.
//!
//! `/registry/<group or "core">/<plural>/<namespace>/<name>` for namespaced objects and
//! `/registry/<group or "core">/<plural>/<name>` for cluster-scoped ones. Names and
//! namespaces cannot contain `/`, so prefixes select exactly one resource or one
//! resource in one namespace.

use capstan_api::ResourceInfo;

/// The root of every object key.
pub const ROOT: &[u8] = b"/registry/";

fn group_segment(res: &ResourceInfo) -> &str {
    if res.group.is_empty() {
        "core"
    } else {
        res.group
    }
}

/// The key of one object.
pub fn object_key(res: &ResourceInfo, namespace: Option<&str>, name: &str) -> Vec<u8> {
    match namespace {
        Some(ns) if res.namespaced() => {
            format!("/registry/{}/{}/{}/{}", group_segment(res), res.plural, ns, name).into_bytes()
        }
        _ => format!("/registry/{}/{}/{}", group_segment(res), res.plural, name).into_bytes(),
    }
}

/// The prefix of all objects of a resource, optionally in one namespace.
pub fn prefix(res: &ResourceInfo, namespace: Option<&str>) -> Vec<u8> {
    match namespace {
        Some(ns) if res.namespaced() => {
            format!("/registry/{}/{}/{}/", group_segment(res), res.plural, ns).into_bytes()
        }
        _ => format!("/registry/{}/{}/", group_segment(res), res.plural).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let pods = capstan_api::registry::find("", "v1", "pods").unwrap();
        let nodes = capstan_api::registry::find("", "v1", "nodes").unwrap();
        assert_eq!(object_key(pods, Some("ns"), "x"), b"/registry/core/pods/ns/x".to_vec());
        assert_eq!(object_key(nodes, Some("ignored"), "n"), b"/registry/core/nodes/n".to_vec());
        assert!(object_key(pods, Some("ns"), "x").starts_with(&prefix(pods, Some("ns"))));
        assert!(prefix(pods, Some("ns")).starts_with(&prefix(pods, None)));
    }
}
