//! Protobuf on the wire against a real `capstan up`: every `kubectl create` subcommand (whose
//! typed clients POST protobuf and read protobuf back), protobuf lists and watches read by a
//! client, protobuf Status errors, and DELETE with a protobuf DeleteOptions body (Helm's).

mod common;

use capstan_bench::client::{Client, Connection, Kubeconfig};
use common::{wait_for, Cluster};
use serde_json::{json, Value};
use std::time::Duration;

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

fn get_json(c: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&c.ok(&all)).expect("kubectl prints json")
}

/// Every `kubectl create` subcommand of issue 11 with the real kubectl. Each one sends its
/// object in protobuf and decodes the protobuf reply to print `<kind>/<name> created`.
#[test]
fn every_kubectl_create_subcommand() {
    let c = Cluster::start_with(&["--sim-nodes", "1"]);
    let pair = rcgen::generate_simple_self_signed(vec!["pb.example".to_string()]).expect("certificate");
    let cert = c.file("tls.crt", &pair.cert.pem());
    let key = c.file("tls.key", &pair.signing_key.serialize_pem());
    let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
    let served: &[(&[&str], &str)] = &[
        (&["create", "namespace", "pbns"], "namespace/pbns created"),
        (&["create", "configmap", "cm1", "--from-literal=a=b"], "configmap/cm1 created"),
        (&["create", "secret", "generic", "s1", "--from-literal=a=b"], "secret/s1 created"),
        (&["create", "secret", "tls", "t1", "--cert", &cert, "--key", &key], "secret/t1 created"),
        (
            &[
                "create",
                "secret",
                "docker-registry",
                "d1",
                "--docker-server=r.example",
                "--docker-username=u",
                "--docker-password=p",
            ],
            "secret/d1 created",
        ),
        (&["create", "serviceaccount", "sa1"], "serviceaccount/sa1 created"),
        (
            &["create", "deployment", "dep1", "--image=nginx", "--replicas=2", "--port=80"],
            "deployment.apps/dep1 created",
        ),
        (&["create", "job", "job1", "--image=busybox", "--", "true"], "job.batch/job1 created"),
        (
            &["create", "cronjob", "cj1", "--image=busybox", "--schedule=*/5 * * * *"],
            "cronjob.batch/cj1 created",
        ),
        (&["create", "job", "job2", "--from=cronjob/cj1"], "job.batch/job2 created"),
        (&["create", "service", "clusterip", "svc1", "--tcp=80:8080"], "service/svc1 created"),
        (&["create", "service", "nodeport", "svc2", "--tcp=80:8080"], "service/svc2 created"),
        (&["create", "service", "loadbalancer", "svc3", "--tcp=80:8080"], "service/svc3 created"),
        (
            &["create", "service", "externalname", "svc4", "--external-name=example.com"],
            "service/svc4 created",
        ),
        (
            &["create", "role", "r1", "--verb=get", "--resource=pods"],
            "role.rbac.authorization.k8s.io/r1 created",
        ),
        (
            &["create", "rolebinding", "rb1", "--role=r1", "--user=u"],
            "rolebinding.rbac.authorization.k8s.io/rb1 created",
        ),
        (
            &["create", "clusterrole", "cr1", "--verb=get", "--resource=pods"],
            "clusterrole.rbac.authorization.k8s.io/cr1 created",
        ),
        (
            &["create", "clusterrolebinding", "crb1", "--clusterrole=cr1", "--user=u"],
            "clusterrolebinding.rbac.authorization.k8s.io/crb1 created",
        ),
        // In a namespace of its own: a quota on requests.cpu refuses pods that state none.
        (
            &["create", "quota", "q1", "--hard=pods=10,requests.cpu=2", "-n", "kube-public"],
            "resourcequota/q1 created",
        ),
    ];
    for (args, expect) in served {
        let out = c.ok(args);
        assert!(out.contains(expect), "kubectl {args:?} printed {out:?}");
    }
    // `create token` prints the token (a TokenRequest, protobuf both ways).
    let token = c.ok(&["create", "token", "sa1"]);
    assert_eq!(token.trim().split('.').count(), 3, "not a JWT: {token:?}");

    // What was stored is what kubectl built.
    let job = get_json(&c, &["get", "job", "job1"]);
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "busybox");
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"], json!(["true"]));
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    let from = get_json(&c, &["get", "job", "job2"]);
    assert_eq!(from["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"], "manual");
    assert_eq!(from["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let cj = get_json(&c, &["get", "cronjob", "cj1"]);
    assert_eq!(cj["spec"]["schedule"], "*/5 * * * *");
    let svc = get_json(&c, &["get", "service", "svc1"]);
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    let np = get_json(&c, &["get", "service", "svc2"]);
    assert!(np["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0) >= 30000, "{np}");
    assert_eq!(get_json(&c, &["get", "service", "svc4"])["spec"]["externalName"], "example.com");
    let dep = get_json(&c, &["get", "deployment", "dep1"]);
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
    let q = get_json(&c, &["get", "quota", "q1", "-n", "kube-public"]);
    assert_eq!(q["spec"]["hard"], json!({"pods": "10", "requests.cpu": "2"}));
    let tls = get_json(&c, &["get", "secret", "t1"]);
    assert_eq!(tls["type"], "kubernetes.io/tls");
    let rb = get_json(&c, &["get", "rolebinding", "rb1"]);
    assert_eq!(
        rb["subjects"][0],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "u"})
    );

    // Kinds served since: PodDisruptionBudget, PriorityClass, Ingress.
    for (args, expect) in [
        (
            &["create", "ingress", "ing1", "--rule=a.example/=svc1:80"][..],
            "ingress.networking.k8s.io/ing1 created",
        ),
        (
            &["create", "poddisruptionbudget", "pdb1", "--selector=app=x", "--min-available=1"],
            "poddisruptionbudget.policy/pdb1 created",
        ),
        (&["create", "priorityclass", "pc1", "--value=1000"], "priorityclass.scheduling.k8s.io/pc1 created"),
    ] {
        let out = c.ok(args);
        assert!(out.contains(expect), "kubectl {args:?} printed {out:?}");
    }
    // A pod naming the class gets its priority; a missing class is refused as upstream.
    let pod = c.file(
        "prio.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: prio}\nspec:\n  priorityClassName: pc1\n  containers: [{name: c, image: busybox}]\n",
    );
    c.ok(&["create", "-f", pod.to_str().unwrap()]);
    assert_eq!(get_json(&c, &["get", "pod", "prio"])["spec"]["priority"], 1000);
    let missing = c.file(
        "noclass.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: noclass}\nspec:\n  priorityClassName: nope\n  containers: [{name: c, image: busybox}]\n",
    );
    let err = c.fails(&["create", "-f", missing.to_str().unwrap()]);
    assert!(err.contains("no PriorityClass with name nope was found"), "{err}");
    let classes = c.ok(&["get", "priorityclasses"]);
    assert!(
        classes.contains("system-node-critical") && classes.contains("system-cluster-critical"),
        "{classes}"
    );

    // The reply really is protobuf, and kubectl decodes it.
    let out = c.kubectl(&["create", "configmap", "cm2", "--from-literal=x=y", "-v=8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Content-Type: application/vnd.kubernetes.protobuf"), "no protobuf reply:\n{err}");
    // A protobuf Status error, decoded into kubectl's usual message.
    let err = c.fails(&["create", "configmap", "cm2", "--from-literal=x=y"]);
    assert!(err.contains("configmaps \"cm2\" already exists"), "{err}");
    // A protobuf LIST and WATCH read by kubectl: `run --attach` waits for the pod through an
    // informer on client-go's typed client, then attaches (which sim nodes cannot serve).
    let out =
        c.kubectl(&["run", "w", "--image=busybox", "--restart=Never", "--attach", "-v=8", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Content-Type: application/vnd.kubernetes.protobuf;stream=watch"),
        "no protobuf watch:\n{err}"
    );
    assert!(err.contains("/pods/w/attach"), "kubectl did not see the pod running through the watch:\n{err}");
    // Typed reads: describe GETs the object and LISTs events and replica sets in protobuf.
    let out = c.ok(&["describe", "deployment", "dep1"]);
    assert!(out.contains("Replicas:") && out.contains("dep1"), "{out}");
}

async fn connect(kc: &Kubeconfig) -> Connection {
    Client::new(kc).expect("client").open().await.expect("connect")
}

/// A LIST and a WATCH read in protobuf by a client that decodes them, protobuf errors, and a
/// DELETE whose DeleteOptions body is protobuf (as Helm's uninstall sends).
#[test]
fn protobuf_list_watch_errors_and_delete_options() {
    let c = Cluster::start();
    let kc = Kubeconfig::load(&c.kubeconfig).expect("kubeconfig");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut conn = connect(&kc).await;
        let accept = [("Accept", "application/vnd.kubernetes.protobuf,application/json"), ("Content-Type", PROTOBUF)];
        for name in ["a", "b"] {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": name}});
            let body = capstan_api::protobuf::encode(&cm).expect("encode");
            let r = conn.request("POST", "/api/v1/namespaces/default/configmaps", &accept, &body).await.expect("post");
            assert_eq!(r.status, 201, "{}", r.text());
            assert_eq!(r.header("content-type"), Some(PROTOBUF));
            let created = capstan_api::protobuf::decode(&r.body).expect("protobuf reply");
            assert_eq!(created["data"]["k"], name);
            assert!(created["metadata"]["uid"].as_str().is_some_and(|u| !u.is_empty()));
        }

        // LIST.
        let r = conn.request("GET", "/api/v1/namespaces/default/configmaps", &accept, b"").await.expect("list");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(PROTOBUF));
        let list = capstan_api::protobuf::decode(&r.body).expect("protobuf list");
        assert_eq!(list["kind"], "ConfigMapList");
        let names: Vec<&str> =
            list["items"].as_array().unwrap().iter().filter_map(|i| i["metadata"]["name"].as_str()).collect();
        assert!(names.contains(&"a") && names.contains(&"b"), "{names:?}");
        let rv = list["metadata"]["resourceVersion"].as_str().expect("list resourceVersion").to_string();

        // A JSON-first or Table Accept still gets JSON.
        let r = conn
            .request("GET", "/api/v1/namespaces/default/configmaps/a", &[("Accept", "application/json, application/vnd.kubernetes.protobuf")], b"")
            .await
            .expect("get");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = conn
            .request("GET", "/api/v1/namespaces/default/configmaps", &[("Accept", "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1;g=meta.k8s.io,application/json")], b"")
            .await
            .expect("table");
        assert!(r.header("content-type").unwrap_or("").starts_with("application/json"), "{:?}", r.header("content-type"));

        // A protobuf Status for a missing object.
        let r = conn.request("GET", "/api/v1/namespaces/default/configmaps/nope", &accept, b"").await.expect("get");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some(PROTOBUF));
        let status = capstan_api::protobuf::decode(&r.body).expect("protobuf status");
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");

        // Bad protobuf bodies: 400 (or 413 past the body limit) with a Status, never a crash.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let pod = capstan_api::protobuf::encode(&pod).unwrap();
        let mut huge_prefix = b"k8s\0\x12".to_vec();
        huge_prefix.extend([0x80, 0x80, 0x80, 0x80, 0x32]); // raw: 100 MB announced, 0 sent
        let mut too_big = b"k8s\0".to_vec();
        too_big.resize(4 << 20, 0x08);
        for (body, code, reason) in [
            (pod.clone(), 400, "BadRequest"),                  // a Pod envelope for the configmaps collection
            (pod[..pod.len() / 2].to_vec(), 400, "BadRequest"), // truncated
            (huge_prefix, 400, "BadRequest"),
            (too_big, 413, "RequestEntityTooLarge"),
        ] {
            let r = conn.request("POST", "/api/v1/namespaces/default/configmaps", &accept, &body).await.expect("post");
            assert_eq!(r.status, code, "{}", String::from_utf8_lossy(&r.body));
            let status = capstan_api::protobuf::decode(&r.body).expect("a protobuf Status");
            assert_eq!(status["reason"], reason, "{status}");
            if r.status == 413 {
                // A fresh connection after the server cut the oversized upload.
                conn = connect(&kc).await;
            }
        }

        // WATCH from the list's revision: length-prefixed WatchEvent frames.
        let watch = connect(&kc).await;
        let path = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}");
        let mut stream = watch.stream("GET", &path, &accept, b"").await.expect("watch");
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("content-type"), Some("application/vnd.kubernetes.protobuf;stream=watch"));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let r = conn
            .request("POST", "/api/v1/namespaces/default/configmaps", &accept, &capstan_api::protobuf::encode(&cm).unwrap())
            .await
            .expect("post c");
        assert_eq!(r.status, 201);

        // DELETE with a protobuf DeleteOptions body (Helm's uninstall).
        let opts = json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background", "gracePeriodSeconds": 0});
        let r = conn
            .request("DELETE", "/api/v1/namespaces/default/configmaps/a", &accept, &capstan_api::protobuf::encode(&opts).unwrap())
            .await
            .expect("delete");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

        let mut buf = Vec::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while events.len() < 2 {
            while buf.len() >= 4 {
                let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if buf.len() < 4 + len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..4 + len).skip(4).collect();
                events.push(capstan_api::protobuf::decode_watch_event(&frame).expect("watch frame"));
            }
            if events.len() >= 2 {
                break;
            }
            let chunk = tokio::time::timeout_at(deadline, stream.next_chunk()).await.expect("watch events in time");
            buf.extend_from_slice(&chunk.expect("read").expect("stream open"));
        }
        assert_eq!(events[0].0, "ADDED");
        assert_eq!(events[0].1["metadata"]["name"], "c");
        assert_eq!(events[1].0, "DELETED");
        assert_eq!(events[1].1["metadata"]["name"], "a");
    });
    // The deleted object is gone for kubectl too.
    wait_for("configmap a deleted", Duration::from_secs(10), || {
        (!c.kubectl(&["get", "configmap", "a"]).status.success()).then_some(())
    });
}
