//! The bus locked down: a real nats-server run from the configuration `capstan bus-config`
//! writes (TLS with a certificate from the cluster CA, one nkey credential per role,
//! subject permissions). Nobody connects without a credential; an integrator reads the
//! event stream but cannot call the API; a node's credential is useless as the
//! controllers or as another node; and the whole cluster still works over it.

mod common;
#[path = "../gateway/tests/support/fake_node.rs"]
mod fake_node;

use capstan_bus::{ApiRequest, ApiResponse, Bus, NatsBus, NatsConfig, NatsCredentials, StartAt, StreamItem};
use common::nats::Nats;
use common::Cluster;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// `NatsBus` settings of `identity` on a locked-down server.
fn bus_config(nats: &Nats, identity: &str) -> NatsConfig {
    let mut cfg = NatsConfig::new(nats.url());
    cfg.credentials = Some(NatsCredentials::from_file(&nats.creds(identity)).expect("credential file"));
    cfg.tls = Some(capstan_bus::NatsTlsConfig { ca_file: Some(nats.ca()), client_cert: None });
    cfg.inbox_prefix = Some(capstan_bus::access::inbox_prefix(identity));
    cfg.manage_stream = false;
    cfg.jetstream_timeout = Duration::from_secs(2);
    cfg
}

/// A raw client of `identity` that records the errors the server reports.
struct Conn {
    client: async_nats::Client,
    errors: tokio::sync::mpsc::UnboundedReceiver<String>,
}

async fn conn(nats: &Nats, identity: &str) -> Conn {
    let Some(NatsCredentials::NkeySeed(seed)) =
        NatsCredentials::parse(&std::fs::read_to_string(nats.creds(identity)).expect("read credential"))
    else {
        panic!("no seed in the credential of {identity}")
    };
    let (tx, errors) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed)
        .add_root_certificates(nats.ca())
        .require_tls(true)
        .custom_inbox_prefix(capstan_bus::access::inbox_prefix(identity))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(e) => {
                        let _ = tx.send(e.to_string());
                    }
                    async_nats::Event::Disconnected => {
                        let _ = tx.send("disconnected".to_string());
                    }
                    _ => {}
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("{identity} connects with its credential: {e}"));
    Conn { client, errors }
}

impl Conn {
    /// Waits for the server's permissions violation about `subject` (publish or
    /// subscription).
    async fn refused(&mut self, what: &str, subject: &str) {
        let want = format!("permissions violation for {what} to \"{subject}\"").to_lowercase();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(e)) if e.to_lowercase().contains(&want) => return,
                Ok(Some(e)) => seen.push(e),
                _ => panic!("the server reported no {want:?}; it reported {seen:?}"),
            }
        }
    }

    /// Waits for the server to report `what` (an error text, or `disconnected`).
    async fn reported(&mut self, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(e)) if e.contains(what) => return,
                Ok(Some(e)) => seen.push(e),
                _ => panic!("no {what:?} reported; saw {seen:?}"),
            }
        }
    }

    /// Sends an API request as `identity` and returns the reply.
    async fn api(&self, identity: &str, req: &ApiRequest) -> Result<ApiResponse, async_nats::RequestError> {
        let payload = req.to_bytes().expect("encode request");
        let r = async_nats::Request::new().payload(payload).timeout(Some(Duration::from_secs(3)));
        let m = self.client.send_request(capstan_bus::subjects::api_request(identity), r).await?;
        Ok(ApiResponse::from_bytes(&m.payload).expect("decode reply"))
    }

    /// An API request as `identity` that the server must refuse: no reply comes (the
    /// request times out, it does not even find "no responders") and the server reports
    /// the violation.
    async fn api_refused(&mut self, identity: &str) {
        let subject = capstan_bus::subjects::api_request(identity);
        match self.api(identity, &get_namespace()).await {
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {}
            Err(e) => panic!("request on {subject}: want a time-out, got {e}"),
            Ok(r) => panic!("request on {subject} was answered: {} {}", r.code, r.body),
        }
        self.refused("publish", &subject).await;
    }
}

fn get_namespace() -> ApiRequest {
    ApiRequest {
        verb: "get".into(),
        version: "v1".into(),
        resource: "namespaces".into(),
        name: Some("default".into()),
        ..Default::default()
    }
}

#[test]
fn nobody_connects_without_a_credential_and_the_cluster_ca() {
    let data = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start_locked(data.path(), &["a"]);
    let rt = runtime();
    rt.block_on(async {
        // TLS with the CA, but no credential.
        let mut cfg = bus_config(&nats, "controllers");
        cfg.credentials = None;
        let err = NatsBus::connect(cfg).await.expect_err("connected without a credential").to_string();
        assert!(err.contains("authorization violation"), "{err}");
        // A well-formed nkey the server does not know.
        let mut cfg = bus_config(&nats, "controllers");
        let stranger = nkeys::KeyPair::new_user().seed().expect("seed");
        cfg.credentials = Some(NatsCredentials::NkeySeed(stranger));
        let err = NatsBus::connect(cfg).await.expect_err("connected with an unknown nkey").to_string();
        assert!(err.contains("authorization violation"), "{err}");
        // A valid credential, but without the cluster CA the server's certificate is not
        // trusted (the server accepts TLS clients only).
        let mut cfg = bus_config(&nats, "controllers");
        cfg.tls = None;
        let err =
            NatsBus::connect(cfg).await.expect_err("connected without verifying the server").to_string();
        assert!(err.to_lowercase().contains("certificate") || err.contains("tls"), "{err}");
        // The credential and the CA: connected.
        NatsBus::connect(bus_config(&nats, "controllers")).await.expect("controllers connect");
    });
}

#[test]
fn an_integrator_reads_events_but_cannot_call_the_api() {
    let c = Cluster::start_multiprocess_locked(0, &[]);
    let nats = c.nats().expect("nats");
    let rv: u64 = c
        .ok(&[
            "create",
            "configmap",
            "probe",
            "--from-literal=k=v",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("numeric resourceVersion");
    let rt = runtime();
    rt.block_on(async {
        // It reads the event stream with its credential.
        let bus = NatsBus::connect(bus_config(nats, "integrator-1")).await.expect("integrator connects");
        let mut events = bus
            .events("capstan.v1.events.core.configmaps.>".into(), StartAt::AfterRevision(0))
            .await
            .expect("integrator follows the event stream");
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(item) = events.next().await {
                if let StreamItem::Event { subject, revision, .. } = item {
                    if subject == "capstan.v1.events.core.configmaps.default.probe" {
                        return revision;
                    }
                }
            }
            0
        })
        .await
        .expect("the integrator received the ConfigMap's event");
        assert_eq!(found, rv);

        // It cannot change the stream.
        let mut cfg = bus_config(nats, "integrator-1");
        cfg.manage_stream = true;
        assert!(NatsBus::connect(cfg).await.is_err(), "the integrator updated the event stream");

        // Its API requests are refused by the server and get no reply, as itself or as a
        // role; the controllers' credential gets one (the gateway is serving).
        let mut i = conn(nats, "integrator-1").await;
        i.api_refused("integrator-1").await;
        i.api_refused("controllers").await;
        let ctl = conn(nats, "controllers").await;
        let r = ctl.api("controllers", &get_namespace()).await.expect("the controllers get a reply");
        assert_eq!(r.code, 200, "{}", r.body);
        // Nor can it write into the stream or read others' replies.
        i.client
            .publish("capstan.v1.events.core.configmaps.default.fake", "x".into())
            .await
            .expect("publish");
        i.client.flush().await.expect("flush");
        i.refused("publish", "capstan.v1.events.core.configmaps.default.fake").await;
        let _sub = i.client.subscribe("_INBOX.>").await.expect("subscribe");
        i.refused("subscription", "_INBOX.>").await;
    });
}

#[test]
fn a_node_credential_is_useless_as_the_controllers_or_another_node() {
    let c = Cluster::start_multiprocess_locked_with_nodes(0, &[], &["a", "b"]);
    let nats = c.nats().expect("nats");
    let rt = runtime();
    rt.block_on(async {
        let mut a = conn(nats, "node.a").await;
        // As itself it is answered (by the Node authorizer's rules).
        let own = ApiRequest {
            verb: "get".into(),
            version: "v1".into(),
            resource: "nodes".into(),
            name: Some("a".into()),
            ..Default::default()
        };
        let r = a.api("node.a", &own).await.expect("node a gets a reply as itself");
        assert_eq!(r.code, 404, "{}", r.body);
        // As the controllers or as node b, the server refuses the request.
        a.api_refused("controllers").await;
        a.api_refused("node.b").await;
        a.api_refused("scheduler").await;

        // It cannot listen to node b's sessions, nor inject frames into them, nor read
        // the controllers' replies.
        let b_requests = a.client.subscribe("capstan.v1.node.b.sessions").await.expect("subscribe");
        a.refused("subscription", "capstan.v1.node.b.sessions").await;
        let b_up = a.client.subscribe("capstan.v1.node.b.session.s1.up").await.expect("subscribe");
        a.refused("subscription", "capstan.v1.node.b.session.s1.up").await;
        let _all = a.client.subscribe("capstan.v1.node.*.sessions").await.expect("subscribe");
        a.refused("subscription", "capstan.v1.node.*.sessions").await;
        let _replies = a.client.subscribe("_INBOX.controllers.>").await.expect("subscribe");
        a.refused("subscription", "_INBOX.controllers.>").await;
        a.client.publish("capstan.v1.node.b.session.s1.down", "x".into()).await.expect("publish");
        a.refused("publish", "capstan.v1.node.b.session.s1.down").await;
        // Its own session subjects work. The gateway's credential publishes on b's
        // subjects, then on a's, on one connection: a receives its own message, so b's
        // (sent first, to the same connection) would have arrived before it.
        let mut a_up = a.client.subscribe("capstan.v1.node.a.session.s1.up").await.expect("subscribe");
        a.client.flush().await.expect("flush");
        let gw = conn(nats, "gateway").await;
        for s in [
            "capstan.v1.node.b.sessions",
            "capstan.v1.node.b.session.s1.up",
            "capstan.v1.node.a.session.s1.up",
        ] {
            gw.client.publish(s, "frame".into()).await.expect("gateway publishes");
        }
        gw.client.flush().await.expect("flush");
        let got = tokio::time::timeout(Duration::from_secs(10), a_up.next())
            .await
            .expect("node a receives its own session frame")
            .expect("subscription open");
        assert_eq!(got.subject.as_str(), "capstan.v1.node.a.session.s1.up");
        let mut b_requests = b_requests;
        let mut b_up = b_up;
        assert!(
            !matches!(b_requests.next().now_or_never(), Some(Some(_))),
            "node a read node b's session requests"
        );
        assert!(!matches!(b_up.next().now_or_never(), Some(Some(_))), "node a read node b's session frames");
    });
}

/// `capstan up --nats-creds-dir`: every role in the process connects as itself; `kubectl
/// logs` and `exec` reach a node agent over the locked-down bus, and a node agent holding
/// another node's credential cannot take that node's sessions.
#[test]
fn up_with_credentials_serves_node_sessions_only_to_the_right_node() {
    let c = Cluster::start_up_locked(&["fake-node", "other"], &[("CAPSTAN_NODE_GRACE_SECONDS", "3600")]);
    let nats = c.nats().expect("nats");
    let pod = c.file(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  nodeName: fake-node\n  containers:\n  - name: main\n    image: busybox\n",
    );
    c.ok(&["apply", "-f", pod.to_str().expect("path")]);
    let rt = runtime();
    // An impostor with node `other`'s credential tries to serve fake-node's sessions.
    rt.block_on(async {
        let mut impostor = conn(nats, "node.other").await;
        let _sub = impostor.client.subscribe("capstan.v1.node.fake-node.sessions").await.expect("subscribe");
        impostor.refused("subscription", "capstan.v1.node.fake-node.sessions").await;
    });
    let err = c.fails(&["logs", "p"]);
    assert!(!err.contains("hello from main"), "{err}");
    // The node with its own credential serves them.
    rt.block_on(async {
        let bus = NatsBus::connect(bus_config(nats, "node.fake-node")).await.expect("node connects");
        fake_node::serve(Arc::new(bus) as Arc<dyn Bus>, "fake-node").await;
    });
    assert_eq!(c.ok(&["logs", "p"]), "hello from main (tailLines=None)\n");
    let out = c.kubectl_with(&["exec", "-i", "p", "--", "cat"], &[], Some("hi\n"));
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
}

/// The whole multi-process cluster over the locked-down bus runs a Deployment to Ready,
/// and the server refused none of what the roles did (their permissions suffice).
#[test]
fn a_locked_down_cluster_runs_a_deployment_without_violations() {
    let c = Cluster::start_multiprocess_locked(3, &[]);
    let f = c.file(
        "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: nginx\n        image: nginx:1.27\n",
    );
    c.ok(&["apply", "-f", f.to_str().expect("path")]);
    c.ok(&["rollout", "status", "deploy/web", "--timeout=120s"]);
    let ready = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-o",
        "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{end}",
    ]);
    assert_eq!(ready.split_whitespace().filter(|s| *s == "True").count(), 3, "{ready}");
    let log = c.nats().expect("nats").log();
    assert!(!log.contains("Violation"), "the server refused something a role did:\n{log}");
}

/// JetStream lets any reader create a push consumer that delivers onto a subject of its
/// choice, with the server's rights: an integrator can make events arrive on the API
/// subjects. They keep their stream subject (`capstan.v1.events.…`), which the gateway
/// does not take as a request (`busapi::identity_of`), so the reader gains no identity.
#[test]
fn a_reader_gains_no_identity_through_a_push_consumer() {
    let c = Cluster::start_multiprocess_locked(0, &[]);
    c.ok(&["create", "configmap", "probe", "--from-literal=k=v"]);
    let nats = c.nats().expect("nats");
    let rt = runtime();
    rt.block_on(async {
        let i = conn(nats, "integrator-1").await;
        let gw = conn(nats, "gateway").await;
        let mut sniff = gw.client.subscribe("capstan.v1.api.controllers").await.expect("subscribe");
        gw.client.flush().await.expect("flush");
        let js = async_nats::jetstream::new(i.client.clone());
        let stream = js.get_stream_no_info(capstan_bus::subjects::EVENT_STREAM).await.expect("stream");
        stream
            .create_consumer(async_nats::jetstream::consumer::push::Config {
                deliver_subject: "capstan.v1.api.controllers".into(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .expect("the server lets a reader create a push consumer");
        let m = tokio::time::timeout(Duration::from_secs(10), sniff.next())
            .await
            .expect("a delivery arrives")
            .expect("subscription open");
        assert!(m.subject.starts_with("capstan.v1.events."), "{}", m.subject);
        assert_eq!(capstan_gateway::busapi::identity_of(&m.subject), None);
        // The gateway still serves the real controllers.
        let ctl = conn(nats, "controllers").await;
        let r = ctl.api("controllers", &get_namespace()).await.expect("the controllers get a reply");
        assert_eq!(r.code, 200, "{}", r.body);
    });
}

/// docs/OPERATIONS.md: adding a node and revoking one is running `bus-config` again on its
/// directory and reloading the server; a revoked credential's connection is closed and it
/// cannot come back, while the others stay connected.
#[test]
fn adding_and_revoking_credentials_with_a_reload() {
    let data = tempfile::tempdir().expect("temp dir");
    let nats = Nats::start_locked(data.path(), &["a", "b"]);
    let rt = runtime();
    rt.block_on(async {
        let mut a = conn(&nats, "node.a").await;
        let mut b = conn(&nats, "node.b").await;
        // Add node c (a and b stay: the directory keeps them), revoke b.
        let b_creds = NatsCredentials::from_file(&nats.creds("node.b")).expect("b's credential");
        std::fs::remove_file(nats.creds("node.b")).expect("remove b's credential");
        nats.rerun_bus_config(data.path(), &["--nodes", "c"]);
        nats.reload();
        b.reported("disconnected").await;
        let mut cfg = bus_config(&nats, "node.a");
        cfg.credentials = Some(b_creds);
        let err = NatsBus::connect(cfg).await.expect_err("the revoked credential connected").to_string();
        assert!(err.contains("authorization violation"), "{err}");
        // c connects; a is still connected and may still subscribe to its own subjects.
        let _c = conn(&nats, "node.c").await;
        let _sub = a.client.subscribe("capstan.v1.node.a.sessions").await.expect("subscribe");
        a.client.flush().await.expect("node a is still connected");
        assert!(a.errors.try_recv().is_err(), "node a was disturbed by the reload");
    });
}

/// The Python integrator of docs/BUS.md ("Connecting"): TLS with the cluster CA, its
/// credential, its inbox prefix; it reads events and its API request is refused.
#[test]
fn python_integrator_written_from_bus_md() {
    let c = Cluster::start_multiprocess_locked(0, &[]);
    let nats = c.nats().expect("nats");
    c.ok(&["create", "configmap", "for-python", "--from-literal=k=v"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/bus_integrator.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(nats.url())
        .arg(nats.creds("integrator-1"))
        .arg(nats.ca())
        .arg(capstan_bus::access::inbox_prefix("integrator-1"))
        .arg("for-python")
        .output()
        .expect("python3 runs (scripts/deps.sh test installs nats-py, nkeys and msgpack)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "integrator failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["event"], "ADDED", "{stdout}");
    assert_eq!(lines[0]["subject"], "capstan.v1.events.core.configmaps.default.for-python");
    assert_eq!(lines[1]["api"], "refused", "{stdout}");
}

/// A real node agent (runc, CNI, an image from a real registry) on the locked-down bus with
/// its own node credential (`capstan up --nats-creds-dir`): it registers, runs a pod (its
/// token volume comes from a TokenRequest over the bus), and `kubectl logs` and `exec`
/// reach it; the server refused nothing.
#[test]
fn a_real_node_runs_a_pod_over_the_locked_down_bus() {
    let reg = capstan_testkit::Registry::start(None).expect("start docker-registry");
    let image = runtime()
        .block_on(capstan_testkit::push_busybox_image(&reg, "busybox", "1", None))
        .expect("push the test image");
    let c = Cluster::start_node_locked("");
    let pod = c.file(
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo hello from the node; sleep 3600\"]\n"
        ),
    );
    c.ok(&["apply", "-f", pod.to_str().expect("path")]);
    c.ok(&["wait", "pod/p", "--for=condition=Ready", "--timeout=90s"]);
    common::wait_for("the pod's log", Duration::from_secs(30), || {
        c.kubectl(&["logs", "p"]).stdout.starts_with(b"hello from the node").then_some(())
    });
    let out =
        c.kubectl(&["exec", "p", "--", "cat", "/var/run/secrets/kubernetes.io/serviceaccount/namespace"]);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "default");
    c.ok(&["delete", "pod", "p", "--wait=true", "--timeout=60s"]);
    let log = c.nats().expect("nats").log();
    assert!(!log.contains("Violation"), "the server refused something a role did:\n{log}");
}
