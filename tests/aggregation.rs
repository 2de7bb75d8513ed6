//! API aggregation with the real kubectl against a real `capstan up`: `kubectl get
//! apiservices` lists every served group-version as upstream does, CRD-served versions get
//! theirs, and an APIService naming a Service proxies its group-version (discovery
//! included) to an extension API server this test runs over HTTPS on 127.0.0.1 (the
//! Service's endpoint), with the Available condition following its reachability.

mod common;

use common::{wait_for, Cluster};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GROUP: &str = "wardle.example.com";

/// A minimal extension API server for `wardle.example.com/v1alpha1` (namespaced
/// `flunders`, one object `f1`), on 127.0.0.1 with a certificate for `api.wardle.svc` from
/// its own CA. Keeps the `x-remote-user` of every request.
struct ExtensionServer {
    port: u16,
    ca_bundle: String,
    users: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn flunder(ns: &str) -> Value {
    json!({"apiVersion": format!("{GROUP}/v1alpha1"), "kind": "Flunder",
           "metadata": {"name": "f1", "namespace": ns, "creationTimestamp": "2024-01-01T00:00:00Z"},
           "spec": {"reference": "x"}})
}

fn answer(path: &str) -> (u16, Value) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis", GROUP, "v1alpha1"] => (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1alpha1"),
                   "resources": [
                     {"name": "flunders", "singularName": "flunder", "namespaced": true, "kind": "Flunder",
                      "verbs": ["get", "list"], "shortNames": ["fl"]},
                     {"name": "flunders/status", "singularName": "", "namespaced": true, "kind": "Flunder",
                      "verbs": ["get"]}]}),
        ),
        ["apis", GROUP, "v1alpha1", "namespaces", ns, "flunders"] => (
            200,
            json!({"apiVersion": format!("{GROUP}/v1alpha1"), "kind": "FlunderList",
                   "metadata": {"resourceVersion": "1"}, "items": [flunder(ns)]}),
        ),
        ["apis", GROUP, "v1alpha1", "namespaces", ns, "flunders", "f1"] => (200, flunder(ns)),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "the server could not find the requested resource", "reason": "NotFound",
                   "code": 404}),
        ),
    }
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    users: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // One request per connection (a GET, no body).
    let head_end = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    if let Some(u) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("x-remote-user").then(|| v.trim().to_string())
    }) {
        users.lock().unwrap().push(u);
    }
    let (code, body) = answer(&path);
    let body = body.to_string();
    let resp = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}

impl ExtensionServer {
    fn start() -> ExtensionServer {
        let (acceptor, ca_bundle) = common::https::tls_acceptor("wardle-test-ca", "api.wardle.svc");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let users = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let users2 = users.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        conn = listener.accept() => {
                            let Ok((tcp, _)) = conn else { continue };
                            let acceptor = acceptor.clone();
                            let users = users2.clone();
                            tokio::spawn(async move {
                                if let Ok(tls) = acceptor.accept(tcp).await {
                                    let _ = serve_one(tls, users).await;
                                }
                            });
                        }
                    }
                }
            });
        });
        ExtensionServer { port, ca_bundle, users, stop: Some(stop), thread: Some(thread) }
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ExtensionServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_of(c: &Cluster, args: &[&str]) -> Value {
    serde_json::from_str(&c.ok(args)).expect("kubectl printed JSON")
}

fn available(obj: &Value) -> (String, String) {
    let conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let c = conds.iter().find(|c| c["type"] == "Available").cloned().unwrap_or(Value::Null);
    (c["status"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap_or("").to_string())
}

/// Waits until the APIService `name` has the Available condition `(status, reason)`.
fn wait_available(c: &Cluster, name: &str, want: (&str, &str)) -> Value {
    wait_for(&format!("{name} to be {want:?}"), Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "apiservice", name, "-o", "json"]);
        let obj: Value = serde_json::from_slice(&out.stdout).ok()?;
        let (s, r) = available(&obj);
        (s == want.0 && r == want.1).then_some(obj)
    })
}

#[test]
fn apiservices_list_served_versions_and_proxy_to_extension_servers() {
    rustls::crypto::ring::default_provider().install_default().ok();
    let c = Cluster::start();

    // Built-in group-versions, as upstream shows them.
    let table = c.ok(&["get", "apiservices"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header, ["NAME", "SERVICE", "AVAILABLE", "AGE"], "{table}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    for name in ["v1.", "v1.apps", "v1.apiregistration.k8s.io", "v1.rbac.authorization.k8s.io", "v1.batch"] {
        let row = rows.iter().find(|r| r[0] == name).unwrap_or_else(|| panic!("no {name} in {table}"));
        assert_eq!(&row[1..3], ["Local", "True"], "{table}");
    }
    assert_eq!(rows[0][0], "v1.", "{table}");
    let apps = json_of(&c, &["get", "apiservice", "v1.apps", "-o", "json"]);
    assert!(apps["spec"].as_object().unwrap().contains_key("service"), "{apps}");
    assert_eq!(apps["spec"]["service"], Value::Null);
    assert_eq!(apps["spec"]["groupPriorityMinimum"], 17800);
    assert_eq!(apps["spec"]["versionPriority"], 15);
    assert_eq!(apps["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"], "onstart");
    assert_eq!(available(&apps), ("True".into(), "Local".into()));
    let cond = &apps["status"]["conditions"][0];
    assert_eq!(cond["message"], "Local APIServices are always available");
    let core = json_of(&c, &["get", "apiservice", "v1.", "-o", "json"]);
    assert_eq!(
        (core["spec"]["group"].as_str(), core["spec"]["groupPriorityMinimum"].as_i64()),
        (Some(""), Some(18000))
    );

    // A name that is not version.group is refused as upstream.
    let bad = c.file(
        "bad.yaml",
        "apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata:\n  name: v1.wrong.example.com\nspec:\n  group: right.example.com\n  version: v1\n  groupPriorityMinimum: 100\n  versionPriority: 10\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(err.contains("must be `spec.version+\".\"+spec.group`: \"v1.right.example.com\""), "{err}");

    // crd-autoregister: a CRD's version gets an APIService while it is served.
    let crd = c.file(
        "crd.yaml",
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.stable.example.com
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
    );
    c.ok(&["apply", "-f", crd.to_str().unwrap()]);
    let w = wait_available(&c, "v1.stable.example.com", ("True", "Local"));
    assert_eq!(w["metadata"]["labels"]["kube-aggregator.kubernetes.io/automanaged"], "true");
    assert_eq!(
        (w["spec"]["groupPriorityMinimum"].as_i64(), w["spec"]["versionPriority"].as_i64()),
        (Some(1000), Some(100))
    );
    c.ok(&["delete", "-f", crd.to_str().unwrap()]);
    wait_for("the CRD's APIService to go", Duration::from_secs(20), || {
        let out = c.kubectl(&["get", "apiservice", "v1.stable.example.com"]);
        (!out.status.success()).then_some(())
    });

    // An extension API server behind a Service whose endpoint is this test's server.
    let mut server = ExtensionServer::start();
    let setup = c.file(
        "wardle.yaml",
        &format!(
            r#"apiVersion: v1
kind: Namespace
metadata:
  name: wardle
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: wardle
spec:
  ports:
  - name: https
    port: 443
    targetPort: {port}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: wardle
  labels:
    kubernetes.io/service-name: api
addressType: IPv4
ports:
- name: https
  port: {port}
  protocol: TCP
endpoints:
- addresses: ["127.0.0.1"]
  conditions: {{ready: true}}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1alpha1.{GROUP}
spec:
  group: {GROUP}
  version: v1alpha1
  groupPriorityMinimum: 1000
  versionPriority: 15
  caBundle: {ca}
  service:
    namespace: wardle
    name: api
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.missing.example.com
spec:
  group: missing.example.com
  version: v1beta1
  groupPriorityMinimum: 1000
  versionPriority: 15
  insecureSkipTLSVerify: true
  service:
    namespace: wardle
    name: nothing-here
"#,
            port = server.port,
            ca = server.ca_bundle,
        ),
    );
    c.ok(&["apply", "-f", setup.to_str().unwrap()]);
    let name = format!("v1alpha1.{GROUP}");
    let obj = wait_available(&c, &name, ("True", "Passed"));
    assert_eq!(obj["status"]["conditions"][0]["message"], "all checks passed");
    let missing = wait_available(&c, "v1beta1.missing.example.com", ("False", "ServiceNotFound"));
    assert_eq!(
        missing["status"]["conditions"][0]["message"],
        "service/nothing-here in \"wardle\" is not present"
    );
    let table = c.ok(&["get", "apiservices"]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().collect::<Vec<_>>()[1..3], ["wardle/api", "True"], "{table}");
    let row = table.lines().find(|l| l.starts_with("v1beta1.missing")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("False (ServiceNotFound)"), "{table}");

    // Discovery and requests go to the extension server.
    let raw = json_of(&c, &["get", "--raw", &format!("/apis/{GROUP}/v1alpha1")]);
    assert_eq!(raw["resources"][0]["name"], "flunders", "{raw}");
    let group = json_of(&c, &["get", "--raw", &format!("/apis/{GROUP}")]);
    assert_eq!(group["preferredVersion"]["groupVersion"], format!("{GROUP}/v1alpha1"), "{group}");
    let resources = wait_for("flunders in discovery", Duration::from_secs(10), || {
        let out = c.kubectl(&["api-resources", "--api-group", GROUP]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.contains("flunders").then_some(s)
    });
    assert!(resources.contains("fl ") && resources.contains("Flunder"), "{resources}");
    let list = c.ok(&["get", "flunders", "-n", "default", "-o", "name"]);
    assert_eq!(list.trim(), format!("flunder.{GROUP}/f1"));
    let one = json_of(&c, &["get", "fl", "f1", "-n", "team", "-o", "json"]);
    assert_eq!(one["metadata"]["namespace"], "team");
    assert!(
        server.users.lock().unwrap().iter().any(|u| !u.is_empty()),
        "the caller is named in x-remote-user"
    );
    let err = c.fails(&["get", "--raw", &format!("/apis/{GROUP}/v1alpha1/namespaces/default/nothings")]);
    assert!(err.contains("NotFound") || err.contains("not find"), "{err}");

    // The server goes away: the next check says so, and requests get 503.
    server.stop();
    c.ok(&["label", "apiservice", &name, "poke=1"]);
    let down = wait_available(&c, &name, ("False", "FailedDiscoveryCheck"));
    let msg = down["status"]["conditions"][0]["message"].as_str().unwrap_or("");
    assert!(
        msg.starts_with(&format!(
            "failing or missing response from https://127.0.0.1:{}/apis/{GROUP}/v1alpha1",
            server.port
        )),
        "{msg}"
    );
    let err = c.fails(&["get", "--raw", &format!("/apis/{GROUP}/v1alpha1/namespaces/default/flunders")]);
    assert!(
        err.contains("ServiceUnavailable")
            || err.contains("503")
            || err.contains("error trying to reach service"),
        "{err}"
    );
}
