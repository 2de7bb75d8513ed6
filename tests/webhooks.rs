//! Admission webhooks with the real kubectl against a real `capstan up`: the webhooks are
//! served by this test over HTTPS on 127.0.0.1 with a certificate of its own CA (rcgen),
//! given to capstan as `caBundle`, as a user's webhook server would be.

mod common;

use base64::Engine;
use common::https::{HttpsServer, Reply};
use common::{wait_for, Cluster};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook server (`common::https`). Paths:
/// - `/validate`: denies objects labelled `deny=yes`, allows others with a warning;
/// - `/mutate`: adds the label `mutated=yes` with a JSONPatch;
/// - `/slow`: answers "allowed" after 3 s;
/// - `/badpatch`: a JSONPatch that does not apply; `/garbage`: a body that is not JSON.
///
/// Every AdmissionReview received is kept, with its path.
struct WebhookServer(HttpsServer);

impl std::ops::Deref for WebhookServer {
    type Target = HttpsServer;
    fn deref(&self) -> &HttpsServer {
        &self.0
    }
}

fn answer(path: &str, review: &Value) -> Value {
    let req = &review["request"];
    let uid = req["uid"].clone();
    let labels = &req["object"]["metadata"]["labels"];
    let response = match path {
        "/validate" if labels["deny"] == "yes" => json!({
            "uid": uid, "allowed": false,
            "status": {"message": "label deny=yes is not allowed"}
        }),
        "/validate" => json!({"uid": uid, "allowed": true, "warnings": ["checked by the test webhook"]}),
        "/mutate" => {
            let patch = if labels.is_object() {
                json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
            } else {
                json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
            };
            let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
        }
        "/badpatch" => {
            let patch = json!([{"op": "remove", "path": "/spec/nothing"}]);
            let patch = base64::engine::general_purpose::STANDARD.encode(patch.to_string());
            json!({"uid": uid, "allowed": true, "patchType": "JSONPatch", "patch": patch})
        }
        _ => json!({"uid": uid, "allowed": true}),
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

impl WebhookServer {
    fn start() -> WebhookServer {
        WebhookServer(HttpsServer::start(Arc::new(|path: &str, review: &Value| {
            let delay = if path == "/slow" { Duration::from_secs(3) } else { Duration::ZERO };
            let body = if path == "/garbage" {
                "this is not JSON".to_string()
            } else {
                answer(path, review).to_string()
            };
            Reply { delay, body }
        })))
    }

    /// The reviews received on `path` for objects named `name`.
    fn reviews(&self, path: &str, name: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, r)| p.starts_with(path) && r["request"]["name"] == name)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn configmap(name: &str, namespace: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let labels = if labels.is_empty() { String::new() } else { format!("  labels:\n{labels}") };
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{labels}data:\n  a: b\n")
}

/// A webhook entry (YAML, indented for `webhooks:`).
fn webhook(name: &str, url: &str, ca: &str, policy: &str, timeout: u32, extra: &str) -> String {
    format!(
        r#"- name: {name}
  clientConfig:
    url: "{url}"
    caBundle: {ca}
  rules:
  - operations: ["CREATE", "UPDATE"]
    apiGroups: [""]
    apiVersions: ["v1"]
    resources: ["configmaps"]
  failurePolicy: {policy}
  sideEffects: None
  timeoutSeconds: {timeout}
  admissionReviewVersions: ["v1"]
{extra}"#
    )
}

/// Applies `yaml` until it is refused with a message containing `want` (the gateway reads
/// webhook configurations from its watch cache, a moment after they are written); objects
/// that got through meanwhile are deleted again.
fn wait_refused(c: &Cluster, file: &str, name: &str, ns: &str, want: &str) -> String {
    wait_for(want, Duration::from_secs(10), || {
        let out = c.kubectl(&["apply", "-f", file]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            c.ok(&["delete", "configmap", name, "-n", ns]);
            return None;
        }
        stderr.contains(want).then_some(stderr)
    })
}

#[test]
fn admission_webhooks_validate_mutate_and_fail_as_configured() {
    let c = Cluster::start();
    let server = WebhookServer::start();
    let ca = &server.ca_bundle;
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = format!("https://127.0.0.1:{closed}/");
    // A CA that did not sign the server's certificate.
    let other_ca = {
        let pair = rcgen::generate_simple_self_signed(vec!["other-ca".to_string()]).expect("certificate");
        base64::engine::general_purpose::STANDARD.encode(pair.cert.pem())
    };

    // Validating: denies `deny=yes`, except in namespaces labelled `skip-webhooks`.
    let skip_ns =
        "  namespaceSelector:\n    matchExpressions:\n    - {key: skip-webhooks, operator: DoesNotExist}\n";
    let by_label = |k: &str, v: &str| format!("  objectSelector:\n    matchLabels: {{{k}: {v}}}\n");
    let validating = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: test-validating\nwebhooks:\n{}{}{}{}{}{}",
        webhook("deny-label.example.com", &server.url("/validate"), ca, "Fail", 10, skip_ns),
        webhook("down-ignore.example.com", &down, ca, "Ignore", 10, &by_label("down", "ignore")),
        webhook("down-fail.example.com", &down, ca, "Fail", 10, &by_label("down", "fail")),
        webhook("slow-ignore.example.com", &server.url("/slow"), ca, "Ignore", 1, &by_label("slow", "ignore")),
        webhook("slow-fail.example.com", &server.url("/slow"), ca, "Fail", 1, &by_label("slow", "fail")),
        webhook("bad-ca.example.com", &server.url("/validate"), &other_ca, "Fail", 10, &by_label("ca", "other")),
    );
    let f = c.file("validating.yaml", &validating);
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.contains("validatingwebhookconfiguration.admissionregistration.k8s.io/test-validating created"),
        "{out}"
    );
    let out = c.ok(&["get", "validatingwebhookconfigurations"]);
    assert!(
        out.lines().next().is_some_and(|h| h.split_whitespace().eq(["NAME", "WEBHOOKS", "AGE"])),
        "{out}"
    );
    assert!(out.lines().any(|l| l.split_whitespace().take(2).eq(["test-validating", "6"])), "{out}");
    let got: Value = serde_json::from_str(&c.ok(&[
        "get",
        "validatingwebhookconfiguration",
        "test-validating",
        "-o",
        "json",
    ]))
    .expect("json");
    // Upstream's defaults.
    assert_eq!(got["webhooks"][0]["matchPolicy"], "Equivalent");
    assert_eq!(got["webhooks"][0]["rules"][0]["scope"], "*");
    assert_eq!(got["webhooks"][0]["objectSelector"], json!({}));

    // An invalid configuration: 422 naming each field, as upstream.
    let bad = "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: bad\nwebhooks:\n- name: short\n  clientConfig:\n    url: http://127.0.0.1/\n  sideEffects: None\n  admissionReviewVersions: [v1]\n  timeoutSeconds: 31\n";
    let f = c.file("bad.yaml", bad);
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    for want in [
        "The ValidatingWebhookConfiguration \"bad\" is invalid",
        "webhooks[0].name: Invalid value: \"short\": should be a domain with at least three segments separated by dots",
        "webhooks[0].timeoutSeconds: Invalid value: 31: the timeout value must be between 1 and 30 seconds",
        "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1/\": 'https' is the only allowed URL scheme",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }

    // A denied ConfigMap: kubectl prints the webhook's message in upstream's wording.
    let denied = c.file("denied.yaml", &configmap("denied", "default", &[("deny", "yes")]));
    let err = wait_refused(
        &c,
        denied.to_str().unwrap(),
        "denied",
        "default",
        "admission webhook \"deny-label.example.com\" denied the request: label deny=yes is not allowed",
    );
    assert!(err.starts_with("Error from server"), "{err}");
    c.fails(&["get", "configmap", "denied"]);
    // The review was AdmissionReview v1 with the object, the operation and the user.
    let reviews = server.reviews("/validate", "denied");
    let r = &reviews.last().expect("a review")["request"];
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["namespace"], "default");
    assert_eq!(r["resource"], json!({"group": "", "version": "v1", "resource": "configmaps"}));
    assert_eq!(r["object"]["data"]["a"], "b");
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(r["userInfo"]["username"].as_str().is_some_and(|u| !u.is_empty()));

    // An allowed one gets through with the webhook's warning.
    let ok = c.file("allowed.yaml", &configmap("allowed", "default", &[]));
    let out = c.kubectl(&["apply", "-f", ok.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Warning: checked by the test webhook"), "{stderr}");

    // namespaceSelector: a namespace labelled skip-webhooks is not sent to the webhook.
    c.ok(&["create", "namespace", "exempt"]);
    c.ok(&["label", "namespace", "exempt", "skip-webhooks=true"]);
    let exempt = c.file("exempt.yaml", &configmap("denied", "exempt", &[("deny", "yes")]));
    let out = c.ok(&["apply", "-f", exempt.to_str().unwrap()]);
    assert!(out.contains("configmap/denied created"), "{out}");
    assert!(server.reviews("/validate", "denied").iter().all(|r| r["request"]["namespace"] != "exempt"));

    // failurePolicy with the server down: Ignore lets the write through, Fail refuses it
    // with upstream's message.
    let f = c.file("down-ignore.yaml", &configmap("down-ignore", "default", &[("down", "ignore")]));
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("configmap/down-ignore created"), "{out}");
    let f = c.file("down-fail.yaml", &configmap("down-fail", "default", &[("down", "fail")]));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "Internal error occurred: failed calling webhook \"down-fail.example.com\": failed to call webhook: Post \"https://127.0.0.1:{closed}/?timeout=10s\""
        )),
        "{err}"
    );
    assert!(err.contains("onnection refused"), "{err}");

    // caBundle is the only trust root: a server certificate of another CA is refused.
    let f = c.file("bad-ca.yaml", &configmap("bad-ca", "default", &[("ca", "other")]));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("failed calling webhook \"bad-ca.example.com\""), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A webhook slower than its timeoutSeconds (1 s): Ignore lets the write through, Fail
    // refuses it, both within timeout + 1 s.
    let f = c.file("slow-ignore.yaml", &configmap("slow-ignore", "default", &[("slow", "ignore")]));
    let started = Instant::now();
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(out.contains("configmap/slow-ignore created"), "{out}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let f = c.file("slow-fail.yaml", &configmap("slow-fail", "default", &[("slow", "fail")]));
    let started = Instant::now();
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(err.contains("failed calling webhook \"slow-fail.example.com\""), "{err}");
    assert!(err.contains("context deadline exceeded"), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    eprintln!("slow webhook (timeoutSeconds 1) refused after {took:?}");

    // Mutating: adds a label with a JSONPatch, before the validating webhooks run.
    let mutating = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: test-mutating\nwebhooks:\n{}{}{}",
        webhook("add-label.example.com", &server.url("/mutate"), ca, "Fail", 10, &by_label("mutate", "me")),
        webhook("bad-patch.example.com", &server.url("/badpatch"), ca, "Fail", 10, &by_label("patch", "bad")),
        webhook("garbage.example.com", &server.url("/garbage"), ca, "Fail", 10, &by_label("answer", "garbage")),
    );
    let f = c.file("mutating.yaml", &mutating);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    let f = c.file("mutated.yaml", &configmap("mutated", "default", &[("mutate", "me")]));
    wait_for("the mutating webhook to label the ConfigMap", Duration::from_secs(10), || {
        c.ok(&["apply", "-f", f.to_str().unwrap()]);
        let labels = c.ok(&["get", "configmap", "mutated", "-o", "jsonpath={.metadata.labels}"]);
        if labels.contains("\"mutated\":\"yes\"") {
            return Some(());
        }
        c.ok(&["delete", "configmap", "mutated"]);
        None
    });
    // A patch that does not apply, an answer that is not a review: failurePolicy Fail.
    let f = c.file("bad-patch.yaml", &configmap("bad-patch", "default", &[("patch", "bad")]));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("failed calling webhook \"bad-patch.example.com\": JSON patch failed"), "{err}");
    let f = c.file("garbage.yaml", &configmap("garbage", "default", &[("answer", "garbage")]));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("failed calling webhook \"garbage.example.com\": received invalid webhook response"),
        "{err}"
    );
    let validated = server.reviews("/validate", "mutated");
    assert_eq!(
        validated.last().expect("validated")["request"]["object"]["metadata"]["labels"]["mutated"],
        "yes"
    );

    // Dry run: the webhooks declare sideEffects None, so they are called and may refuse.
    let err = c.fails(&["apply", "--dry-run=server", "-f", denied.to_str().unwrap()]);
    assert!(err.contains("denied the request: label deny=yes is not allowed"), "{err}");
    assert!(server.reviews("/validate", "denied").iter().any(|r| r["request"]["dryRun"] == true));

    // Removing the configuration removes the check.
    c.ok(&["delete", "validatingwebhookconfiguration", "test-validating"]);
    wait_for("the denied ConfigMap to be accepted", Duration::from_secs(10), || {
        c.kubectl(&["apply", "-f", denied.to_str().unwrap()]).status.success().then_some(())
    });
}

const REPLICA_POLICY: &str = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: replica-limit.example.com
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["deployments"]
  validations:
  - expression: "object.spec.replicas <= 5"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: replica-limit-binding.example.com
spec:
  policyName: replica-limit.example.com
  validationActions: [Deny]
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: param-limit.example.com
spec:
  paramKind:
    apiVersion: v1
    kind: ConfigMap
  matchConstraints:
    resourceRules:
    - apiGroups: ["apps"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: ["deployments"]
  variables:
  - name: max
    expression: "int(params.data.maxReplicas)"
  validations:
  - expression: "object.spec.replicas <= variables.max"
    messageExpression: "'replicas must be at most ' + params.data.maxReplicas"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: param-limit-binding.example.com
spec:
  policyName: param-limit.example.com
  validationActions: [Warn]
  paramRef:
    name: limits
    namespace: default
    parameterNotFoundAction: Deny
  matchResources:
    namespaceSelector:
      matchLabels: {limits: "on"}
"#;

#[test]
fn validating_admission_policy_limits_deployment_replicas() {
    let c = Cluster::start();
    let f = c.file("policy.yaml", REPLICA_POLICY);
    let out = c.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        out.contains(
            "validatingadmissionpolicy.admissionregistration.k8s.io/replica-limit.example.com created"
        ),
        "{out}"
    );
    assert!(out.contains(
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/replica-limit-binding.example.com created"
    ));
    // Upstream's printer columns.
    let out = c.ok(&["get", "validatingadmissionpolicies"]);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], vec!["NAME", "VALIDATIONS", "PARAMKIND", "AGE"], "{out}");
    assert!(rows.iter().any(|r| r[..3] == ["param-limit.example.com", "1", "v1/ConfigMap"]), "{out}");
    assert!(rows.iter().any(|r| r[..3] == ["replica-limit.example.com", "1", "<unset>"]), "{out}");
    let out = c.ok(&["get", "validatingadmissionpolicybindings"]);
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], vec!["NAME", "POLICYNAME", "PARAMREF", "AGE"], "{out}");
    assert!(
        rows.iter()
            .any(|r| r[..3]
                == ["param-limit-binding.example.com", "param-limit.example.com", "default/limits"]),
        "{out}"
    );

    let want = "ValidatingAdmissionPolicy 'replica-limit.example.com' with binding 'replica-limit-binding.example.com' denied request: failed expression: object.spec.replicas <= 5";
    // The policy is read from the watch cache, a moment after it is written.
    let err = wait_for("the policy to refuse 6 replicas", Duration::from_secs(10), || {
        let out =
            c.kubectl(&["create", "deployment", "big", "--image=nginx", "--replicas=6", "--dry-run=server"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success()).then_some(stderr)
    });
    assert!(err.contains(want), "{err}");
    let err = c.fails(&["create", "deployment", "big", "--image=nginx", "--replicas=6"]);
    assert!(err.contains(&format!("deployments.apps \"big\" is forbidden: {want}")), "{err}");
    // kubectl apply prints the 422's cause, as for upstream's policies.
    let big = c.ok(&[
        "create",
        "deployment",
        "big",
        "--image=nginx",
        "--replicas=6",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    let big = c.file("big.yaml", &big);
    let err = c.fails(&["apply", "-f", big.to_str().unwrap()]);
    assert!(err.contains(&format!("The deployments \"big\" is invalid: : {want}")), "{err}");
    c.fails(&["get", "deployment", "big"]);
    let out = c.ok(&["create", "deployment", "small", "--image=nginx", "--replicas=5"]);
    assert!(out.contains("deployment.apps/small created"), "{out}");
    // Updates too.
    let err = c.fails(&["patch", "deployment", "small", "-p", r#"{"spec":{"replicas":6}}"#]);
    assert!(err.contains(want), "{err}");

    // Params from a ConfigMap, Warn only, in namespaces labelled limits=on.
    c.ok(&["create", "configmap", "limits", "--from-literal=maxReplicas=2"]);
    c.ok(&["create", "namespace", "limited"]);
    c.ok(&["label", "namespace", "limited", "limits=on"]);
    let out = c.kubectl(&["create", "deployment", "three", "-n", "limited", "--image=nginx", "--replicas=3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "Warning: Validation failed for ValidatingAdmissionPolicy 'param-limit.example.com' with binding 'param-limit-binding.example.com': replicas must be at most 2"
        ),
        "{stderr}"
    );
    // Outside the selected namespaces, no warning.
    let out = c.kubectl(&["create", "deployment", "three", "--image=nginx", "--replicas=3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("param-limit"), "{stderr}");
    // parameterNotFoundAction Deny: without its params the binding refuses (Warn here).
    c.ok(&["delete", "configmap", "limits"]);
    let out = c.kubectl(&["create", "deployment", "one", "-n", "limited", "--image=nginx", "--replicas=1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no params found for policy binding with `Deny` parameterNotFoundAction"),
        "{stderr}"
    );
}

/// An admission hook served on the bus: subscribes to `capstan.v1.admission.test-int.>`
/// and answers `.deny` (refuses `deny=yes`) and `.mutate` (adds `mutated=bus`) with
/// AdmissionReview JSON, as a bus integration would, without a TLS server.
struct BusHook {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl BusHook {
    fn start(url: &str) -> BusHook {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let url = url.to_string();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                use futures::StreamExt;
                let client = async_nats::connect(&url).await.expect("connect");
                let mut sub = client.subscribe("capstan.v1.admission.test-int.>").await.expect("subscribe");
                client.flush().await.expect("flush");
                ready_tx.send(()).expect("ready");
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        msg = sub.next() => {
                            let Some(msg) = msg else { return };
                            let review: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
                            let path = if msg.subject.ends_with(".deny") { "/validate" } else { "/mutate" };
                            seen2.lock().unwrap().push((msg.subject.to_string(), review.clone()));
                            let mut answer = answer(path, &review);
                            if let Some(p) = answer["response"]["patch"].as_str() {
                                let p = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(p).unwrap()).unwrap();
                                let p = p.replace("\"mutated\":\"yes\"", "\"mutated\":\"bus\"").replace("\"value\":\"yes\"", "\"value\":\"bus\"");
                                answer["response"]["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(p));
                            }
                            if let Some(reply) = msg.reply {
                                let _ = client.publish(reply, answer.to_string().into()).await;
                            }
                        }
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("the bus hook subscribed");
        BusHook { stop: Some(stop), thread: Some(thread), seen }
    }
}

impl Drop for BusHook {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn admission_hooks_served_on_the_bus() {
    let nats = common::nats::Nats::start();
    let c = Cluster::start_with(&["--nats", &nats.url()]);
    let hook = BusHook::start(&nats.url());
    let config = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: bus-validating
webhooks:
- name: deny.bus.example.com
  clientConfig:
    url: "bus:capstan.v1.admission.test-int.deny"
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}
  sideEffects: None
  admissionReviewVersions: ["v1"]
- name: nobody.bus.example.com
  clientConfig:
    url: "bus:capstan.v1.admission.nobody.check"
  objectSelector: {matchLabels: {nobody: "fail"}}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}
  sideEffects: None
  timeoutSeconds: 2
  admissionReviewVersions: ["v1"]
- name: elsewhere.bus.example.com
  clientConfig:
    url: "bus:capstan.v1.api.controllers"
  objectSelector: {matchLabels: {elsewhere: "try"}}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}
  sideEffects: None
  admissionReviewVersions: ["v1"]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: bus-mutating
webhooks:
- name: mutate.bus.example.com
  clientConfig:
    url: "bus:capstan.v1.admission.test-int.mutate"
  objectSelector: {matchLabels: {mutate: me}}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["configmaps"]}
  sideEffects: None
  admissionReviewVersions: ["v1"]
"#;
    let f = c.file("bus-hooks.yaml", config);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);

    let denied = c.file("denied.yaml", &configmap("denied", "default", &[("deny", "yes")]));
    let err = wait_refused(
        &c,
        denied.to_str().unwrap(),
        "denied",
        "default",
        "admission webhook \"deny.bus.example.com\" denied the request: label deny=yes is not allowed",
    );
    assert!(err.starts_with("Error from server"), "{err}");
    let seen = hook.seen.lock().unwrap().clone();
    let (subject, review) =
        seen.iter().rev().find(|(s, _)| s.ends_with(".deny")).expect("a review on the bus");
    assert_eq!(subject, "capstan.v1.admission.test-int.deny");
    assert_eq!(review["request"]["object"]["metadata"]["name"], "denied");

    // Mutation over the bus, then validation (the warning of the deny hook's allow).
    let f = c.file("mutated.yaml", &configmap("mutated", "default", &[("mutate", "me")]));
    wait_for("the bus hook to label the ConfigMap", Duration::from_secs(10), || {
        let out = c.kubectl(&["apply", "-f", f.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let labels = c.ok(&["get", "configmap", "mutated", "-o", "jsonpath={.metadata.labels}"]);
        if labels.contains("\"mutated\":\"bus\"") {
            return Some(());
        }
        c.ok(&["delete", "configmap", "mutated"]);
        None
    });

    // Nobody serves the subject: failurePolicy Fail refuses at once ("no responders").
    let f = c.file("nobody.yaml", &configmap("nobody", "default", &[("nobody", "fail")]));
    let started = Instant::now();
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains("failed calling webhook \"nobody.bus.example.com\": failed to call webhook: bus request to \"capstan.v1.admission.nobody.check\""),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // A subject outside capstan.v1.admission. is never published to.
    let f = c.file("elsewhere.yaml", &configmap("elsewhere", "default", &[("elsewhere", "try")]));
    let err = c.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("\"capstan.v1.api.controllers\" is not an admission subject"), "{err}");
}

/// A policy using the `authorizer` variable: only users who may list Secrets in the
/// namespace may create ConfigMaps labelled `sensitive`.
const AUTHZ_POLICY: &str = r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: sensitive.example.com
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups: [""]
      apiVersions: ["v1"]
      operations: ["CREATE"]
      resources: ["configmaps"]
  matchConditions:
  - name: sensitive
    expression: "has(object.metadata.labels) && 'sensitive' in object.metadata.labels"
  validations:
  - expression: "authorizer.group('').resource('secrets').namespace(object.metadata.namespace).check('list').allowed()"
    messageExpression: "'user may not list secrets: ' + string(authorizer.requestResource.check('create').allowed())"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: sensitive-binding.example.com
spec:
  policyName: sensitive.example.com
  validationActions: [Deny]
"#;

#[test]
fn validating_admission_policy_authorizer_checks_rbac() {
    let c = Cluster::start();
    let f = c.file("policy.yaml", AUTHZ_POLICY);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
    // bob may create ConfigMaps but not list Secrets.
    c.ok(&["create", "role", "cm-writer", "--verb=create,get", "--resource=configmaps"]);
    c.ok(&["create", "rolebinding", "bob-cm", "--role=cm-writer", "--user=bob"]);
    let err = wait_for("the policy to refuse bob", Duration::from_secs(10), || {
        // Unlabelled: the policy does not apply.
        let _ = c.kubectl(&["create", "configmap", "s1", "--as=bob"]);
        let f = c.file("s2.yaml", &configmap("s2", "default", &[("sensitive", "yes")]));
        let out = c.kubectl(&["create", "-f", f.to_str().unwrap(), "--as=bob"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && stderr.contains("ValidatingAdmissionPolicy")).then_some(stderr)
    });
    assert!(
        err.contains("ValidatingAdmissionPolicy 'sensitive.example.com' with binding 'sensitive-binding.example.com' denied request: user may not list secrets: true"),
        "{err}"
    );
    c.ok(&["get", "configmap", "s1"]);
    // The admin may list Secrets: allowed.
    let f = c.file("s3.yaml", &configmap("s3", "default", &[("sensitive", "yes")]));
    let out = c.ok(&["create", "-f", f.to_str().unwrap()]);
    assert!(out.contains("configmap/s3 created"), "{out}");
    // Once bob may list Secrets, his sensitive ConfigMaps are allowed too.
    c.ok(&["create", "role", "secret-lister", "--verb=list", "--resource=secrets"]);
    c.ok(&["create", "rolebinding", "bob-secrets", "--role=secret-lister", "--user=bob"]);
    let f = c.file("s4.yaml", &configmap("s4", "default", &[("sensitive", "yes")]));
    wait_for("bob to be allowed", Duration::from_secs(10), || {
        c.kubectl(&["create", "-f", f.to_str().unwrap(), "--as=bob"]).status.success().then_some(())
    });
}
