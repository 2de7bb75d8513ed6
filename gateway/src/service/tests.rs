//! The write pipeline on a temporary store: one create path, the order of strategy and
//! admission, reservations committed with the object.

use super::*;
use crate::admission::{Context, Plugin};
use crate::auth::MastersOnly;
use crate::strategy::service::{IP_PREFIX, PORT_PREFIX};
use futures::future::BoxFuture;
use std::sync::Mutex;

async fn service_with(chain: Option<Chain>, network: ServiceNetwork) -> (Arc<ApiService>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn Store> =
        Arc::new(capstan_storage::RedbStore::open(&dir.path().join("s.redb")).expect("open store"));
    let cache = Cache::start(store.clone(), 10_000).await.expect("cache");
    let mut svc = ApiService::new(store, cache, Arc::new(MastersOnly)).with_service_network(network);
    if let Some(c) = chain {
        svc = svc.with_admission(c);
    }
    crate::bootstrap::cluster(&svc).await.expect("bootstrap");
    (Arc::new(svc), dir)
}

fn res(group: &str, plural: &str) -> &'static ResourceInfo {
    registry::find(group, "v1", plural).expect("registered")
}

fn apply_opts() -> WriteOptions {
    WriteOptions { field_manager: Some("test".into()), ..Default::default() }
}

async fn keys_under(svc: &ApiService, prefix: &[u8]) -> Vec<String> {
    let end = capstan_storage::prefix_end(prefix);
    let r = svc.store().range(prefix, &end, 0).await.expect("range");
    r.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned()).collect()
}

#[tokio::test]
async fn post_and_apply_create_agree_on_namespaces() {
    let (svc, _dir) = service_with(None, ServiceNetwork::default()).await;
    let u = User::system();
    let ns = res("", "namespaces");
    svc.create(
        &u,
        ns,
        None,
        json!({"metadata": {"name": "dying", "finalizers": ["x"]}}),
        &Default::default(),
    )
    .await
    .unwrap();
    svc.delete(&u, ns, None, "dying", &Default::default()).await.unwrap();
    let cms = res("", "configmaps");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    for ns_name in ["dying", "missing"] {
        let post = svc.create(&u, cms, Some(ns_name), cm.clone(), &Default::default()).await.err().unwrap();
        let apply = svc
            .patch(&u, cms, Some(ns_name), "c", PatchType::Apply, cm.clone(), &apply_opts(), false)
            .await
            .err()
            .unwrap();
        assert_eq!(post.code(), apply.code(), "{post} vs {apply}");
        assert_eq!(post.to_string(), apply.to_string());
    }
    let dying = svc.create(&u, cms, Some("dying"), cm.clone(), &Default::default()).await.err().unwrap();
    assert_eq!(dying.code(), 403);
    assert!(dying.to_string().contains("because it is being terminated"), "{dying}");
    let missing = svc.create(&u, cms, Some("missing"), cm, &Default::default()).await.err().unwrap();
    assert_eq!(missing.code(), 404);
    // Apply-create runs the same admission as POST: a pod gets its defaults either way.
    let pods = res("", "pods");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let created =
        svc.patch(&u, pods, Some("default"), "p", PatchType::Apply, pod, &apply_opts(), false).await.unwrap();
    assert!(created.created);
    assert_eq!(created.object["spec"]["serviceAccountName"], "default");
    assert_eq!(created.object["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
    assert_eq!(created.object["status"]["phase"], "Pending");
}

/// Records the turns it gets; optionally breaks the object in its mutating turn.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    break_name: bool,
}

impl Plugin for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            self.log.lock().unwrap().push(format!("{}.admit {}", self.name, a.operation.as_str()));
            obj["metadata"]["labels"][self.name] = json!("seen");
            if self.break_name {
                obj["data"]["Bad Key!"] = json!("x");
            }
            Ok(())
        })
    }

    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            let labels = obj["metadata"]["labels"].as_object().map(|m| m.len()).unwrap_or(0);
            self.log.lock().unwrap().push(format!(
                "{}.validate {} labels={labels}",
                self.name,
                a.operation.as_str()
            ));
            out.warnings.push(format!("{} was here", self.name));
            Ok(())
        })
    }
}

#[tokio::test]
async fn every_mutation_before_validation_and_every_validator_after() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let chain = Chain::new(vec![
        Arc::new(crate::admission::NamespaceLifecycle::default()),
        Arc::new(Recorder { name: "a", log: log.clone(), break_name: false }),
        Arc::new(Recorder { name: "b", log: log.clone(), break_name: false }),
    ]);
    let (svc, _dir) = service_with(Some(chain), ServiceNetwork::default()).await;
    log.lock().unwrap().clear();
    let u = User::system();
    let cms = res("", "configmaps");
    let r = svc
        .create(&u, cms, Some("default"), json!({"metadata": {"name": "c"}}), &Default::default())
        .await
        .unwrap();
    assert_eq!(r.object["metadata"]["labels"], json!({"a": "seen", "b": "seen"}));
    assert_eq!(r.warnings, vec!["a was here".to_string(), "b was here".to_string()]);
    assert_eq!(
        *log.lock().unwrap(),
        vec!["a.admit CREATE", "b.admit CREATE", "a.validate CREATE labels=2", "b.validate CREATE labels=2"]
    );
    log.lock().unwrap().clear();
    svc.patch(
        &u,
        cms,
        Some("default"),
        "c",
        PatchType::Merge,
        json!({"data": {"k": "v"}}),
        &Default::default(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(log.lock().unwrap()[0], "a.admit UPDATE");
    log.lock().unwrap().clear();
    svc.delete(&u, cms, Some("default"), "c", &Default::default()).await.unwrap();
    assert_eq!(log.lock().unwrap()[0], "a.admit DELETE");

    // What a mutating plugin produces is validated: an invalid key is a 422, nothing stored.
    let chain = Chain::new(vec![Arc::new(Recorder { name: "x", log: log.clone(), break_name: true })]);
    let (svc, _dir2) = service_with(Some(chain), ServiceNetwork::default()).await;
    log.lock().unwrap().clear();
    let e = svc
        .create(&u, cms, Some("default"), json!({"metadata": {"name": "d"}}), &Default::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), 422, "{e}");
    assert!(log.lock().unwrap().iter().all(|l| !l.contains("validate")), "{:?}", log.lock().unwrap());
    assert!(svc.get(&u, cms, Some("default"), "d").await.is_err());
}

/// Reserves one key per object; the second object fails with its error.
struct OneOnly;

impl Plugin for OneOnly {
    fn name(&self) -> &'static str {
        "OneOnly"
    }

    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        _obj: &'a Value,
        out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.is(Operation::Create, "", "ConfigMap") {
                out.reservations.ops.push(Op::put(
                    b"/capstan/test/one".to_vec(),
                    b"x".to_vec(),
                    Precondition::Absent,
                ));
                out.reservations.on_conflict.push(Some(ApiError::TooManyRequests("only one".into())));
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn plugin_reservations_commit_with_the_object() {
    let chain = Chain::new(vec![Arc::new(OneOnly)]);
    let (svc, _dir) = service_with(Some(chain), ServiceNetwork::default()).await;
    let u = User::system();
    let cms = res("", "configmaps");
    svc.create(&u, cms, Some("default"), json!({"metadata": {"name": "a"}}), &Default::default())
        .await
        .unwrap();
    let e = svc
        .create(&u, cms, Some("default"), json!({"metadata": {"name": "b"}}), &Default::default())
        .await
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "only one");
    assert!(svc.get(&u, cms, Some("default"), "b").await.is_err(), "the object must not be written");
}

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn concurrent_creates_get_distinct_addresses() {
    // A /24 leaves 239 automatic addresses: 200 concurrent creates collide often.
    let net = ServiceNetwork::parse("10.0.0.0/24", "30000-30299").unwrap();
    let (svc, _dir) = service_with(None, net).await;
    let svcs = res("", "services");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let body = service(&format!("s{i}"), json!({"type": "NodePort", "ports": [{"port": 80}]}));
            svc.create(&User::system(), svcs, Some("default"), body, &Default::default()).await
        }));
    }
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        let ip = r.object["spec"]["clusterIP"].as_str().unwrap().to_string();
        let o: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(o.octets()[3] >= 16 && o.octets()[3] < 255, "{ip} outside the dynamic band");
        assert!(ips.insert(ip), "duplicate address");
        assert!(ports.insert(r.object["spec"]["ports"][0]["nodePort"].as_u64().unwrap()), "duplicate port");
    }
    // kube-dns plus 200, each with its key.
    assert_eq!(keys_under(&svc, IP_PREFIX).await.len(), 201);
    assert_eq!(keys_under(&svc, PORT_PREFIX).await.len(), 200);
}

#[tokio::test]
async fn requested_addresses_ranges_and_release() {
    let (svc, _dir) = service_with(None, ServiceNetwork::default()).await;
    let u = User::system();
    let svcs = res("", "services");
    let ns = Some("default");
    let opts = WriteOptions::default();
    let s = svc.create(
        &u,
        svcs,
        ns,
        service("a", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})),
        &opts,
    );
    s.await.unwrap();
    let e = svc
        .create(
            &u,
            svcs,
            ns,
            service("b", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})),
            &opts,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), 422);
    assert_eq!(
        e.to_string(),
        "Service \"b\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated"
    );
    let e = svc
        .create(&u, svcs, ns, service("c", json!({"clusterIP": "10.1.0.1", "ports": [{"port": 80}]})), &opts)
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("is not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        "{e}"
    );
    let np = json!({"type": "NodePort", "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81}]});
    svc.create(&u, svcs, ns, service("np", np.clone()), &opts).await.unwrap();
    let e = svc.create(&u, svcs, ns, service("np2", np), &opts).await.err().unwrap();
    assert_eq!(
        e.to_string(),
        "Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
    );
    let e = svc
        .create(
            &u,
            svcs,
            ns,
            service("np3", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]})),
            &opts,
        )
        .await
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("provided port is not in the valid range. The range of valid ports is 30000-32767"),
        "{e}"
    );
    // Dry run reserves nothing.
    let dry = WriteOptions { dry_run: true, ..Default::default() };
    let before = keys_under(&svc, IP_PREFIX).await;
    svc.create(&u, svcs, ns, service("dry", json!({"ports": [{"port": 80}]})), &dry).await.unwrap();
    assert_eq!(keys_under(&svc, IP_PREFIX).await, before);
    // NodePort → ClusterIP drops and frees the node ports; the address stays.
    let ports_before = keys_under(&svc, PORT_PREFIX).await;
    assert_eq!(ports_before.len(), 2);
    let r = svc
        .patch(&u, svcs, ns, "np", PatchType::Merge, json!({"spec": {"type": "ClusterIP"}}), &opts, false)
        .await
        .unwrap();
    assert!(r.object["spec"]["ports"][0].get("nodePort").is_none(), "{}", r.object);
    assert!(keys_under(&svc, PORT_PREFIX).await.is_empty());
    // A freed port can be taken by another Service.
    let np = json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]});
    svc.create(&u, svcs, ns, service("np2", np), &opts).await.unwrap();
    // → ExternalName drops and frees the address.
    let ip = r.object["spec"]["clusterIP"].as_str().unwrap().to_string();
    svc.patch(
        &u,
        svcs,
        ns,
        "np",
        PatchType::Merge,
        json!({"spec": {"type": "ExternalName", "externalName": "example.com"}}),
        &opts,
        false,
    )
    .await
    .unwrap();
    assert!(!keys_under(&svc, IP_PREFIX).await.contains(&ip));
    // Delete frees everything; the address can be asked for again.
    svc.delete(&u, svcs, ns, "a", &Default::default()).await.unwrap();
    assert!(!keys_under(&svc, IP_PREFIX).await.contains(&"10.96.0.50".to_string()));
    svc.create(
        &u,
        svcs,
        ns,
        service("b", json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]})),
        &opts,
    )
    .await
    .unwrap();
    // An update that leaves clusterIP out keeps it.
    let r = svc
        .update(&u, svcs, ns, "b", service("b", json!({"ports": [{"port": 8080}]})), &opts, false)
        .await
        .unwrap();
    assert_eq!(r.object["spec"]["clusterIP"], "10.96.0.50");
}

#[tokio::test]
async fn repair_matches_keys_to_services() {
    let (svc, _dir) = service_with(None, ServiceNetwork::default()).await;
    let u = User::system();
    let svcs = res("", "services");
    svc.create(
        &u,
        svcs,
        Some("default"),
        service("a", json!({"clusterIP": "10.96.0.77", "ports": [{"port": 80}]})),
        &Default::default(),
    )
    .await
    .unwrap();
    // Lose a's key (as a store written before reservations existed) and leak another.
    let ctx = svc.context();
    let key = [IP_PREFIX, b"10.96.0.77"].concat();
    ctx.store().commit(Txn::single(Op::delete(key.clone(), Precondition::None))).await.unwrap();
    let stray = [IP_PREFIX, b"10.96.0.99"].concat();
    ctx.store()
        .commit(Txn::single(Op::put(stray.clone(), b"x/y".to_vec(), Precondition::None)))
        .await
        .unwrap();
    crate::strategy::service::repair(ctx).await.unwrap();
    let keys = keys_under(&svc, IP_PREFIX).await;
    assert!(keys.contains(&"10.96.0.77".to_string()), "{keys:?}");
    assert!(!keys.contains(&"10.96.0.99".to_string()), "{keys:?}");
    assert_eq!(ctx.store().get(&key).await.unwrap().unwrap().value, b"default/a".to_vec());
}
