use super::*;
use crate::defaults::apply_defaults;
use crate::registry::find;
use serde_json::json;

fn res(group: &str, plural: &str) -> &'static ResourceInfo {
    find(group, "v1", plural).unwrap()
}

/// Defaults then validates, as the gateway does.
fn create(group: &str, plural: &str, mut obj: Value) -> Vec<Cause> {
    let r = res(group, plural);
    apply_defaults(r, &mut obj);
    validate_create(r, &obj)
}

fn update(group: &str, plural: &str, mut old: Value, mut new: Value) -> Vec<Cause> {
    let r = res(group, plural);
    apply_defaults(r, &mut old);
    apply_defaults(r, &mut new);
    validate_update(r, &old, &new)
}

fn fields(causes: &[Cause]) -> Vec<&str> {
    causes.iter().map(|c| c.field.as_str()).collect()
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
           "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}})
}

fn deployment() -> Value {
    json!({"metadata": {"name": "web", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
}

#[test]
fn valid_objects_pass() {
    assert_eq!(create("", "pods", pod("web")), vec![]);
    assert_eq!(create("apps", "deployments", deployment()), vec![]);
    let svc = json!({"metadata": {"name": "web", "namespace": "default"},
                     "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    assert_eq!(create("", "services", svc), vec![]);
    let cm = json!({"metadata": {"name": "cfg", "namespace": "default"}, "data": {"game.properties": "x"}});
    assert_eq!(create("", "configmaps", cm), vec![]);
    let ns = json!({"metadata": {"name": "dev"}});
    assert_eq!(create("", "namespaces", ns), vec![]);
    let job = json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u"},
                     "spec": {"template": {"spec": {"restartPolicy": "Never",
                              "containers": [{"name": "pi", "image": "perl"}]}}}});
    assert_eq!(create("batch", "jobs", job), vec![]);
    let role = json!({"metadata": {"name": "system:reader", "namespace": "default"},
                      "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
    assert_eq!(create("rbac.authorization.k8s.io", "roles", role), vec![]);
}

#[test]
fn invalid_name_gives_one_cause() {
    let causes = create("", "pods", pod("Foo_bar"));
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert_eq!(causes[0].field, "metadata.name");
    assert_eq!(causes[0].reason, "FieldValueInvalid");
    assert_eq!(
        causes[0].message,
        "Invalid value: \"Foo_bar\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    );
    let long = "a".repeat(254);
    let causes = create("", "configmaps", json!({"metadata": {"name": long}}));
    assert_eq!(causes.len(), 1);
    assert!(causes[0].message.ends_with("must be no more than 253 characters"));
    let causes = create("", "namespaces", json!({"metadata": {"name": "a.b"}}));
    assert!(causes[0].message.contains("RFC 1123 label"), "{causes:?}");
    let causes =
        create("", "pods", json!({"metadata": {}, "spec": {"containers": [{"name": "a", "image": "b"}]}}));
    assert_eq!(causes[0].message, "Required value: name or generateName is required");
    let causes = create("", "nodes", json!({"metadata": {"name": "n1", "namespace": "default"}}));
    assert_eq!(causes, vec![Cause::forbidden("metadata.namespace", "Forbidden: not allowed on this type")]);
}

#[test]
fn labels_and_annotations() {
    let mut p = pod("web");
    p["metadata"]["labels"] = json!({"app": "bad value", "-x": "y"});
    p["metadata"]["annotations"] = json!({"big": "x".repeat(256 * 1024)});
    let causes = create("", "pods", p);
    assert_eq!(fields(&causes), vec!["metadata.labels", "metadata.labels", "metadata.annotations"]);
    assert!(causes[0].message.starts_with("Invalid value: \"-x\": name part must consist"));
    assert!(causes[1].message.starts_with("Invalid value: \"bad value\": a valid label must be"));
    assert_eq!(causes[2].message, "Too long: may not be more than 262144 bytes");
}

#[test]
fn pod_spec_rules() {
    let causes = create("", "pods", json!({"metadata": {"name": "x"}, "spec": {}}));
    assert_eq!(causes, vec![Cause::required("spec.containers")]);

    let bad = json!({"metadata": {"name": "x"}, "spec": {
    "restartPolicy": "Sometimes",
    "volumes": [{"name": "data"}, {"name": "data"}],
    "containers": [
        {"name": "web", "image": "", "ports": [{"containerPort": 70000, "protocol": "X"}],
         "volumeMounts": [{"name": "missing", "mountPath": "/m"}],
         "env": [{"name": "A=B", "value": "1"}],
         "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}}},
        {"name": "web", "image": "x"}
    ]}});
    let causes = create("", "pods", bad);
    let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
    let expect = [
        ("spec.volumes[1].name", "Duplicate value: \"data\""),
        ("spec.containers[0].image", "Required value"),
        ("spec.containers[0].ports[0].containerPort", "Invalid value: 70000: must be between 1 and 65535, inclusive"),
        ("spec.containers[0].ports[0].protocol", "Unsupported value: \"X\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
        ("spec.containers[0].env[0].name", "Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='"),
        ("spec.containers[0].volumeMounts[0].name", "Not found: \"missing\""),
        ("spec.containers[0].resources.requests", "Invalid value: \"2\": must be less than or equal to cpu limit of 500m"),
        ("spec.containers[1].name", "Duplicate value: \"web\""),
        ("spec.restartPolicy", "Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""),
    ];
    assert_eq!(got, expect);
}

#[test]
fn workload_rules() {
    let mut d = deployment();
    d["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    d["spec"]["replicas"] = json!(-1);
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}});
    let causes = create("apps", "deployments", d);
    let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("spec.replicas", "Invalid value: -1: must be greater than or equal to 0"),
            ("spec.template.metadata.labels", "Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"),
            ("spec.strategy.rollingUpdate.maxUnavailable", "Invalid value: intstr.IntOrString{Type:0, IntVal:0, StrVal:\"\"}: may not be 0 when `maxSurge` is 0"),
        ]
    );
    let mut d = deployment();
    d["spec"]["selector"] = json!({});
    let causes = create("apps", "deployments", d);
    assert_eq!(fields(&causes), vec!["spec.selector"]);
    assert!(causes[0].message.ends_with("empty selector is invalid for deployment"));

    let job = json!({"metadata": {"name": "pi", "namespace": "default"},
                     "spec": {"template": {"spec": {"containers": [{"name": "pi", "image": "perl"}]}}}});
    let causes = create("batch", "jobs", job);
    assert_eq!(fields(&causes), vec!["spec.template.spec.restartPolicy"]);
    assert_eq!(causes[0].message, "Unsupported value: \"\": supported values: \"OnFailure\", \"Never\"");

    let cj = json!({"metadata": {"name": "c", "namespace": "default"},
                    "spec": {"jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                             "containers": [{"name": "a", "image": "b"}]}}}}}});
    assert_eq!(create("batch", "cronjobs", cj), vec![Cause::required("spec.schedule")]);
}

#[test]
fn service_rules() {
    let svc = json!({"metadata": {"name": "web", "namespace": "default"},
                     "spec": {"type": "Weird", "ports": [{"port": 80, "name": "http"}, {"port": 0}]}});
    let causes = create("", "services", svc);
    let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("spec.type", "Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
            ("spec.ports[1].name", "Required value"),
            ("spec.ports[1].port", "Invalid value: 0: must be between 1 and 65535, inclusive"),
            ("spec.ports[1].targetPort", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ]
    );
    let none = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {}});
    assert_eq!(create("", "services", none), vec![Cause::required("spec.ports")]);
    let headless =
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"clusterIP": "None"}});
    assert_eq!(create("", "services", headless), vec![]);
    let bad_name =
        json!({"metadata": {"name": "1web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}});
    assert!(create("", "services", bad_name)[0].message.contains("DNS-1035 label"));
}

#[test]
fn config_map_and_secret_rules() {
    let cm = json!({"metadata": {"name": "c", "namespace": "default"},
                    "data": {"a/b": "x", "k": "v"}, "binaryData": {"k": "dg=="}});
    let causes = create("", "configmaps", cm);
    assert_eq!(fields(&causes), vec!["data[a/b]", "data[k]", "binaryData[k]"]);
    assert!(causes[0].message.contains("a valid config key must consist of alphanumeric characters"));
    let big = json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"k": "x".repeat(1024 * 1024 + 1)}});
    assert_eq!(create("", "configmaps", big)[0].message, "Too long: may not be more than 1048576 bytes");
    let tls =
        json!({"metadata": {"name": "t", "namespace": "default"}, "type": "kubernetes.io/tls", "data": {}});
    assert_eq!(fields(&create("", "secrets", tls)), vec!["data[tls.key]", "data[tls.crt]"]);
}

#[test]
fn update_rules() {
    // Pods: image changes are fine, anything else is forbidden.
    // As `kubectl set image` does: the stored (defaulted) object with a new image.
    let mut old = pod("web");
    apply_defaults(res("", "pods"), &mut old);
    let mut new = old.clone();
    new["spec"]["containers"][0]["image"] = json!("nginx:1.27");
    assert_eq!(update("", "pods", old, new), vec![]);
    let mut new = pod("web");
    new["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(81);
    let causes = update("", "pods", pod("web"), new);
    assert_eq!(fields(&causes), vec!["spec"]);
    assert!(causes[0]
        .message
        .starts_with("Forbidden: pod updates may not change fields other than `spec.containers[*].image`"));
    let mut new = pod("web");
    new["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
    assert_eq!(update("", "pods", pod("web"), new), vec![]);

    // Selectors are immutable.
    let mut new = deployment();
    new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "tier": "x"}});
    new["spec"]["template"]["metadata"]["labels"] = json!({"app": "web", "tier": "x"});
    let causes = update("apps", "deployments", deployment(), new);
    assert_eq!(
        causes,
        vec![Cause::invalid(
            "spec.selector",
            "Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"tier\":\"x\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"
        )]
    );
    assert_eq!(update("apps", "deployments", deployment(), deployment()), vec![]);

    // Services keep their cluster IP.
    let svc = |ip: &str| {
        json!({"metadata": {"name": "web", "namespace": "default"},
                               "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}})
    };
    assert_eq!(
        fields(&update("", "services", svc("10.96.0.5"), svc("10.96.0.6"))),
        vec!["spec.clusterIPs[0]"]
    );
    assert_eq!(update("", "services", svc("10.96.0.5"), svc("10.96.0.5")), vec![]);

    // Immutable ConfigMaps.
    let cm = |v: &str| json!({"metadata": {"name": "c", "namespace": "default"}, "immutable": true, "data": {"k": v}});
    let causes = update("", "configmaps", cm("a"), cm("b"));
    assert_eq!(
        causes,
        vec![Cause::forbidden("data", "Forbidden: field is immutable when `immutable` is set")]
    );

    // PVCs may only grow storage.
    let pvc = |size: &str| {
        json!({"metadata": {"name": "d", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv1",
                 "resources": {"requests": {"storage": size}}}, "status": {"phase": "Bound"}})
    };
    assert_eq!(update("", "persistentvolumeclaims", pvc("1Gi"), pvc("2Gi")), vec![]);
    assert_eq!(
        fields(&update("", "persistentvolumeclaims", pvc("2Gi"), pvc("1Gi"))),
        vec!["spec.resources.requests.storage"]
    );

    // Jobs: template is immutable.
    let job = |img: &str| {
        json!({"metadata": {"name": "pi", "namespace": "default", "uid": "u"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": img}]}}}})
    };
    assert_eq!(fields(&update("batch", "jobs", job("a"), job("b"))), vec!["spec.template"]);
}

#[test]
fn rbac_rules() {
    let role =
        json!({"metadata": {"name": "a/b", "namespace": "default"}, "rules": [{"resources": ["pods"]}]});
    let causes = create("rbac.authorization.k8s.io", "roles", role);
    let got: Vec<(&str, &str)> = causes.iter().map(|c| (c.field.as_str(), c.message.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("metadata.name", "Invalid value: \"a/b\": may not contain '/'"),
            ("rules[0].verbs", "Required value: verbs must contain at least one value"),
            ("rules[0].apiGroups", "Required value: resource rules must supply at least one api group"),
        ]
    );
    let rb = |role: &str| {
        json!({"metadata": {"name": "rb", "namespace": "default"},
        "roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": "bob"}]})
    };
    let r = "rolebindings";
    assert_eq!(create("rbac.authorization.k8s.io", r, rb("view")), vec![]);
    let causes = update("rbac.authorization.k8s.io", r, rb("view"), rb("edit"));
    assert_eq!(fields(&causes), vec!["roleRef"]);
}

#[test]
fn no_privilege_escalation_conflicts_with_privileged_and_sys_admin() {
    let mut p = pod("p");
    p["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "privileged": true});
    let c = create("", "pods", p);
    assert_eq!(fields(&c), vec!["spec.containers[0].securityContext"]);
    assert!(c[0].message.contains("cannot set `allowPrivilegeEscalation` to false and `privileged` to true"));
    let mut p = pod("p");
    p["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"add": ["CAP_SYS_ADMIN"]}});
    assert_eq!(fields(&create("", "pods", p)), vec!["spec.containers[0].securityContext"]);
    let mut ok = pod("p");
    ok["spec"]["containers"][0]["securityContext"] =
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    assert!(create("", "pods", ok).is_empty());
}
