//! Service environment variables, as upstream's kubelet (`getServiceEnvVarMap` and
//! `envvars.FromServices`): for each Service with a ClusterIP in the pod's namespace (when
//! `enableServiceLinks` is not false) and always for `kubernetes` in `default`:
//!
//! ```text
//! <SVC>_SERVICE_HOST=<clusterIP>            <SVC>_SERVICE_PORT=<first port>
//! <SVC>_SERVICE_PORT_<NAME>=<port>          (each named port)
//! <SVC>_PORT=<proto>://<clusterIP>:<first port>
//! <SVC>_PORT_<port>_<PROTO>=<proto>://<clusterIP>:<port>
//! <SVC>_PORT_<port>_<PROTO>_PROTO=<proto>   ..._PORT=<port>   ..._ADDR=<clusterIP>
//! ```
//!
//! `<SVC>` is the name upper-cased with `-` as `_`. Variables the container sets itself
//! win over these.

use serde_json::Value;
use std::sync::Arc;

/// The Services upstream always exposes from `default`.
const MASTER_SERVICES: &[&str] = &["kubernetes"];

fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

fn cluster_ip(svc: &Value) -> Option<&str> {
    svc["spec"]["clusterIP"].as_str().filter(|ip| !ip.is_empty() && *ip != "None")
}

/// The Services whose variables a pod in `namespace` gets, sorted by name (a Service of
/// the pod's namespace wins over a master Service of the same name).
pub fn visible_services(
    namespace: &str,
    enable_links: bool,
    in_namespace: &[Arc<Value>],
    in_default: &[Arc<Value>],
) -> Vec<Arc<Value>> {
    let mut by_name: std::collections::BTreeMap<String, Arc<Value>> = Default::default();
    for s in in_default {
        let name = s["metadata"]["name"].as_str().unwrap_or("");
        if MASTER_SERVICES.contains(&name) && cluster_ip(s).is_some() {
            by_name.insert(name.to_string(), s.clone());
        }
    }
    if enable_links {
        for s in in_namespace {
            if s["metadata"]["namespace"].as_str() != Some(namespace) || cluster_ip(s).is_none() {
                continue;
            }
            by_name.insert(s["metadata"]["name"].as_str().unwrap_or("").to_string(), s.clone());
        }
    }
    by_name.into_values().collect()
}

/// The variables of `services`, in upstream's order.
pub fn from_services(services: &[Arc<Value>]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(ip) = cluster_ip(svc) else { continue };
        let ports: Vec<&Value> =
            svc["spec"]["ports"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
        let Some(first) = ports.first().and_then(|p| p["port"].as_i64()) else { continue };
        let prefix = env_name(svc["metadata"]["name"].as_str().unwrap_or(""));
        out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.to_string()));
        for p in &ports {
            if let (Some(name), Some(port)) =
                (p["name"].as_str().filter(|n| !n.is_empty()), p["port"].as_i64())
            {
                out.push((format!("{prefix}_SERVICE_PORT_{}", env_name(name)), port.to_string()));
            }
        }
        let host = |port: i64| match ip.contains(':') {
            true => format!("[{ip}]:{port}"),
            false => format!("{ip}:{port}"),
        };
        for (i, p) in ports.iter().enumerate() {
            let Some(port) = p["port"].as_i64() else { continue };
            let proto = p["protocol"].as_str().filter(|s| !s.is_empty()).unwrap_or("TCP");
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{}", host(port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{port}_{}", proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: Value) -> Arc<Value> {
        Arc::new(
            json!({"metadata": {"namespace": ns, "name": name}, "spec": {"clusterIP": ip, "ports": ports}}),
        )
    }

    #[test]
    fn upstream_names_and_values() {
        let web = svc(
            "app",
            "my-web",
            "10.96.1.2",
            json!([{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        );
        let m: std::collections::HashMap<_, _> = from_services(&[web]).into_iter().collect();
        assert_eq!(m["MY_WEB_SERVICE_HOST"], "10.96.1.2");
        assert_eq!(m["MY_WEB_SERVICE_PORT"], "80");
        assert_eq!(m["MY_WEB_SERVICE_PORT_HTTP"], "80");
        assert_eq!(m["MY_WEB_SERVICE_PORT_DNS"], "53");
        assert_eq!(m["MY_WEB_PORT"], "tcp://10.96.1.2:80");
        assert_eq!(m["MY_WEB_PORT_80_TCP"], "tcp://10.96.1.2:80");
        assert_eq!(m["MY_WEB_PORT_80_TCP_PROTO"], "tcp");
        assert_eq!(m["MY_WEB_PORT_80_TCP_PORT"], "80");
        assert_eq!(m["MY_WEB_PORT_80_TCP_ADDR"], "10.96.1.2");
        assert_eq!(m["MY_WEB_PORT_53_UDP"], "udp://10.96.1.2:53");
        assert_eq!(m.len(), 13);
    }

    #[test]
    fn which_services() {
        let k = svc("default", "kubernetes", "10.96.0.1", json!([{"name": "https", "port": 443}]));
        let other_default = svc("default", "db", "10.96.0.7", json!([{"port": 5432}]));
        let headless = svc("app", "h", "None", json!([{"port": 1}]));
        let mine = svc("app", "web", "10.96.1.2", json!([{"port": 80}]));
        let names = |v: Vec<Arc<Value>>| -> Vec<String> {
            v.iter().map(|s| s["metadata"]["name"].as_str().unwrap().to_string()).collect()
        };
        let default = vec![k.clone(), other_default.clone()];
        let app = vec![headless, mine];
        assert_eq!(names(visible_services("app", true, &app, &default)), ["kubernetes", "web"]);
        assert_eq!(names(visible_services("app", false, &app, &default)), ["kubernetes"]);
        assert_eq!(names(visible_services("default", true, &default, &default)), ["db", "kubernetes"]);
    }
}
