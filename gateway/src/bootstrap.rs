//! What every cluster has from the start, written by the gateway at start: the system
//! namespaces, the `kubernetes` Service with endpoints at the API's own address, and the
//! `kube-dns` Service at the tenth address of the service CIDR (served by every node agent),
//! and the default StorageClass `local-path` (provisioner `capstan.io/local-path`,
//! `WaitForFirstConsumer`; a class deleted by the user comes back at the next start).
//! Each write is a no-op when the object is already as it should be.

use crate::auth::User;
use crate::service::{ApiService, WriteOptions, SYSTEM_NAMESPACES};
use crate::status::{ApiError, ApiResult};
use capstan_api::registry;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};

/// The label telling service proxies that a Service is answered on every node by its agent.
pub const NODE_LOCAL_LABEL: &str = "capstan.io/node-local-dns";

fn resource(group: &str, version: &str, plural: &str) -> ApiResult<&'static capstan_api::ResourceInfo> {
    registry::find(group, version, plural)
        .ok_or_else(|| ApiError::Internal(format!("{plural} are not registered")))
}

async fn create_if_missing(
    svc: &ApiService,
    group: &str,
    plural: &str,
    ns: Option<&str>,
    obj: Value,
) -> ApiResult<()> {
    let res = resource(group, "v1", plural)?;
    match svc.create(&User::system(), res, ns, obj, &WriteOptions::default()).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the system namespaces and the `kube-dns` Service, and repairs the Service
/// address reservations. Runs before the gateway serves.
pub async fn cluster(svc: &ApiService) -> ApiResult<()> {
    for ns in SYSTEM_NAMESPACES {
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        create_if_missing(svc, "", "namespaces", None, body).await?;
    }
    crate::strategy::service::repair(svc.context()).await?;
    default_policy(svc).await?;
    let dns_ip = svc.service_network().nth(10).to_string();
    let dns = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {
            "k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS",
            NODE_LOCAL_LABEL: "true"}},
        "spec": {"clusterIP": dns_ip, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    });
    create_if_missing(svc, "", "services", Some("kube-system"), dns).await?;
    create_if_missing(svc, "storage.k8s.io", "storageclasses", None, local_path_class()).await?;
    // Upstream's two system priority classes.
    for (name, value, description) in [
        ("system-cluster-critical", 2_000_000_000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
        ("system-node-critical", 2_000_001_000, "Used for system critical pods that must not be moved from their current node."),
    ] {
        let class = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "description": description,
            "preemptionPolicy": "PreemptLowerPriority"});
        create_if_missing(svc, "scheduling.k8s.io", "priorityclasses", None, class).await?;
    }
    // API Priority and Fairness: upstream's mandatory and suggested configuration, created
    // or restored as upstream's ensurer does (then kept so by `flowcontrol::config`).
    crate::flowcontrol::config::ensure(svc).await
}

/// The default StorageClass: node-local directories made by the local-path provisioner.
pub fn local_path_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "local-path", "annotations": {
            "storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "capstan.io/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

/// The address other machines and pods reach this gateway at: the listen address, or, when
/// it listens on every address, the source address of the default route.
pub fn advertise_address(listen: SocketAddr, configured: Option<IpAddr>) -> IpAddr {
    if let Some(ip) = configured {
        return ip;
    }
    if !listen.ip().is_unspecified() {
        return listen.ip();
    }
    // A UDP "connection" sends nothing; it only asks the kernel for the route's source.
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:443").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Writes the `kubernetes` Service (first address of the service CIDR, port 443) and its
/// Endpoints and EndpointSlice pointing at `api` (the gateway's advertised address).
pub async fn kubernetes_service(svc: &ApiService, api: SocketAddr) -> ApiResult<()> {
    let ip = svc.service_network().nth(1).to_string();
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": ip, "type": "ClusterIP", "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.port()}]},
    });
    create_if_missing(svc, "", "services", Some("default"), service).await?;
    let address = api.ip().to_string();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address}],
                     "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]}],
    });
    put(svc, "", "endpoints", "kubernetes", endpoints).await?;
    let family = if api.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}],
    });
    put(svc, "discovery.k8s.io", "endpointslices", "kubernetes", slice).await
}

/// Creates or replaces `default/<name>` unless it already has `want`'s content.
async fn put(svc: &ApiService, group: &str, plural: &str, name: &str, want: Value) -> ApiResult<()> {
    let res = resource(group, "v1", plural)?;
    let user = User::system();
    match svc.get(&user, res, Some("default"), name).await {
        Ok(cur) => {
            let same =
                ["subsets", "endpoints", "ports", "addressType"].iter().all(|f| cur.get(*f) == want.get(*f));
            if same {
                return Ok(());
            }
            let mut new = want;
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            svc.update(&user, res, Some("default"), name, new, &WriteOptions::default(), false)
                .await
                .map(|_| ())
        }
        Err(ApiError::NotFound { .. }) => create_if_missing(svc, group, plural, Some("default"), want).await,
        Err(e) => Err(e),
    }
}

/// Creates upstream's default ClusterRoles and ClusterRoleBindings when missing, and brings
/// back those marked `rbac.authorization.kubernetes.io/autoupdate: "true"` whose content
/// differs from the defaults (as upstream's reconciliation at start).
pub async fn default_policy(svc: &ApiService) -> ApiResult<()> {
    let user = User::system();
    let roles = resource("rbac.authorization.k8s.io", "v1", "clusterroles")?;
    let bindings = resource("rbac.authorization.k8s.io", "v1", "clusterrolebindings")?;
    let wanted = crate::rbac::default_cluster_roles()
        .into_iter()
        .map(|r| (roles, r, &["rules", "aggregationRule"][..]));
    let wanted = wanted.chain(
        crate::rbac::default_bindings().into_iter().map(|b| (bindings, b, &["subjects", "roleRef"][..])),
    );
    for (res, want, fields) in wanted {
        let name = capstan_api::meta::name(&want).unwrap_or("").to_string();
        match svc.get(&user, res, None, &name).await {
            Ok(cur) => {
                let auto = capstan_api::meta::string_map(&cur, "annotations")
                    .get("rbac.authorization.kubernetes.io/autoupdate")
                    .is_some_and(|v| v == "true");
                // Aggregated roles' rules are filled by aggregation, not compared.
                let differs = fields.iter().any(|f| {
                    !(*f == "rules" && want.get("aggregationRule").is_some()) && cur.get(*f) != want.get(*f)
                });
                if auto && differs {
                    let mut new = want.clone();
                    new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                    if want.get("aggregationRule").is_some() {
                        new["rules"] = cur.get("rules").cloned().unwrap_or(Value::Null);
                    }
                    svc.update(&user, res, None, &name, new, &WriteOptions::default(), false).await?;
                }
            }
            Err(ApiError::NotFound { .. }) => {
                create_if_missing(svc, "rbac.authorization.k8s.io", res.plural, None, want).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
