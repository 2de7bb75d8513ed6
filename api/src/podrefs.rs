//! What a pod refers to by name: Secrets, ConfigMaps, PersistentVolumeClaims and its
//! ServiceAccount — the edges upstream's node authorizer graph holds, so a node may read
//! exactly what the pods bound to it need.

use serde_json::Value;
use std::collections::BTreeSet;

/// The objects a pod names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRefs {
    /// Secrets (volumes, projected sources, env, envFrom, imagePullSecrets).
    pub secrets: BTreeSet<String>,
    /// ConfigMaps (volumes, projected sources, env, envFrom).
    pub config_maps: BTreeSet<String>,
    /// PersistentVolumeClaims (volumes; ephemeral volumes' claims `<pod>-<volume>`).
    pub claims: BTreeSet<String>,
    /// The ServiceAccount.
    pub service_account: String,
}

fn add(set: &mut BTreeSet<String>, v: &Value) {
    if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
        set.insert(s.to_string());
    }
}

/// The names `pod` refers to.
pub fn pod_refs(pod: &Value) -> PodRefs {
    let mut r = PodRefs::default();
    let spec = &pod["spec"];
    let name = pod["metadata"]["name"].as_str().unwrap_or("");
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&mut r.secrets, &v["secret"]["secretName"]);
        add(&mut r.config_maps, &v["configMap"]["name"]);
        add(&mut r.claims, &v["persistentVolumeClaim"]["claimName"]);
        if v.get("ephemeral").is_some_and(Value::is_object) {
            if let Some(vn) = v["name"].as_str() {
                r.claims.insert(format!("{name}-{vn}"));
            }
        }
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&mut r.secrets, &s["secret"]["name"]);
            add(&mut r.config_maps, &s["configMap"]["name"]);
        }
        for k in
            ["cephfs", "cinder", "flexVolume", "iscsi", "rbd", "scaleIO", "storageos", "azureFile", "csi"]
        {
            add(&mut r.secrets, &v[k]["secretRef"]["name"]);
            add(&mut r.secrets, &v[k]["nodePublishSecretRef"]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                add(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
                add(&mut r.config_maps, &e["valueFrom"]["configMapKeyRef"]["name"]);
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                add(&mut r.secrets, &e["secretRef"]["name"]);
                add(&mut r.config_maps, &e["configMapRef"]["name"]);
            }
        }
    }
    for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
        add(&mut r.secrets, &s["name"]);
    }
    r.service_account =
        spec["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default").to_string();
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_kind_of_reference() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "serviceAccountName": "bot",
            "imagePullSecrets": [{"name": "reg"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "s1"}},
                {"name": "b", "configMap": {"name": "c1"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "s2"}}, {"configMap": {"name": "c2"}}]}},
                {"name": "e", "ephemeral": {"volumeClaimTemplate": {}}}],
            "containers": [{"name": "x",
                "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c3", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "s4"}}, {"configMapRef": {"name": "c4"}}]}]}});
        let r = pod_refs(&pod);
        assert_eq!(r.secrets.into_iter().collect::<Vec<_>>(), vec!["reg", "s1", "s2", "s3", "s4"]);
        assert_eq!(r.config_maps.into_iter().collect::<Vec<_>>(), vec!["c1", "c2", "c3", "c4"]);
        assert_eq!(r.claims.into_iter().collect::<Vec<_>>(), vec!["data", "p-e"]);
        assert_eq!(r.service_account, "bot");
        assert_eq!(pod_refs(&json!({"spec": {}})).service_account, "default");
    }
}
