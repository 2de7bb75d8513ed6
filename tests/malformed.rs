//! Sends more than ten thousand malformed or mutated requests to one server and checks that
//! none gets a 5xx, that every error is a Kubernetes `Status` whose `code` is the HTTP
//! status, and that the server still serves and is alive afterwards.
//!
//! Requests are generated deterministically (a fixed-seed xorshift generator): wrong field
//! types, bad JSON and YAML, deep nesting, huge bodies, unknown content types, bad selectors,
//! bad patches of every type, bad query parameters, random byte mutations of valid bodies,
//! unknown paths, bad methods, garbage or truncated protobuf, requests without a client
//! certificate, and raw bytes that are not valid HTTP at all.

mod common;

use capstan_bench::client::{Client, Connection, Kubeconfig, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One generated request.
#[derive(Clone)]
enum Req {
    /// A well-framed HTTP request.
    Http {
        cat: &'static str,
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        /// Sent over a connection without a client certificate.
        anon: bool,
    },
    /// Bytes written as they are on a fresh connection.
    Raw { cat: &'static str, bytes: Vec<u8> },
}

impl Req {
    fn describe(&self) -> String {
        match self {
            Req::Http { cat, method, path, headers, body, anon } => {
                let mut s = format!("[{cat}] {method} {path}");
                for (k, v) in headers {
                    let _ = write!(s, "\n  {k}: {v}");
                }
                if *anon {
                    s.push_str("\n  (no client certificate)");
                }
                let _ =
                    write!(s, "\n  body ({} bytes): {}", body.len(), escape(&body[..body.len().min(600)]));
                s
            }
            Req::Raw { cat, bytes } => format!("[{cat}] raw: {}", escape(&bytes[..bytes.len().min(600)])),
        }
    }
}

fn escape(b: &[u8]) -> String {
    b.iter().flat_map(|&c| std::ascii::escape_default(c)).map(char::from).collect()
}

fn http(cat: &'static str, method: &str, path: &str, ct: Option<&str>, body: impl Into<Vec<u8>>) -> Req {
    let mut headers = vec![("Accept".to_string(), "application/json".to_string())];
    if let Some(ct) = ct {
        headers.push(("Content-Type".into(), ct.into()));
    }
    Req::Http { cat, method: method.into(), path: path.into(), headers, body: body.into(), anon: false }
}

const JSON: Option<&str> = Some("application/json");
const YAML: Option<&str> = Some("application/yaml");
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";
const SMP: &str = "application/strategic-merge-patch+json";
const APPLY: &str = "application/apply-patch+yaml";
const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

const PODS: &str = "/api/v1/namespaces/default/pods";
const CMS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
const SCRATCH_CMS: &str = "/api/v1/namespaces/scratch/configmaps";

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": "fuzz"}, "annotations": {"a": "b"}},
           "spec": {"containers": [{"name": "c", "image": "nginx",
                                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                                    "env": [{"name": "A", "value": "1"}],
                                    "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30}})
}

fn configmap(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "b"}})
}

fn secret(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
           "data": {"k": "dmFsdWU="}})
}

fn service(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
           "spec": {"selector": {"app": "x"}, "ports": [{"port": 80, "targetPort": 8080}]}})
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "x"}},
                    "template": {"metadata": {"labels": {"app": "x"}},
                                 "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// Sets the value at a JSON pointer, creating nothing: the parent must exist.
fn set(v: &mut Value, pointer: &str, new: Value) {
    if pointer.is_empty() {
        *v = new;
        return;
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    match v.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last.to_string(), new);
        }
        Some(Value::Array(a)) => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *slot = new;
            }
        }
        _ => {}
    }
}

fn to_yaml(v: &Value) -> Vec<u8> {
    serde_yaml_ng::to_string(v).expect("yaml").into_bytes()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// Wrong types for fields, on create (POST) and update (PUT), JSON and YAML.
fn wrong_types(out: &mut Vec<Req>) {
    let generic: Vec<(&str, Value)> = vec![
        ("", json!([])),
        ("", json!(5)),
        ("", json!("str")),
        ("", json!(null)),
        ("", json!(true)),
        ("/metadata", json!(5)),
        ("/metadata", json!("x")),
        ("/metadata", json!([])),
        ("/metadata", json!(null)),
        ("/metadata/name", json!(5)),
        ("/metadata/name", json!({})),
        ("/metadata/name", json!("")),
        ("/metadata/name", json!("Bad_Name!")),
        ("/metadata/name", json!("x".repeat(300))),
        ("/metadata/namespace", json!(7)),
        ("/metadata/namespace", json!("other-ns")),
        ("/metadata/labels", json!("x")),
        ("/metadata/labels", json!([1])),
        ("/metadata/labels", json!({"a": 1})),
        ("/metadata/labels", json!({"bad key!": "v"})),
        ("/metadata/labels", json!({"a": "bad value!"})),
        ("/metadata/annotations", json!(5)),
        ("/metadata/annotations", json!({"a": {"b": "c"}})),
        ("/metadata/resourceVersion", json!(5)),
        ("/metadata/resourceVersion", json!("abc")),
        ("/metadata/resourceVersion", json!("-1")),
        ("/metadata/uid", json!(["x"])),
        ("/metadata/generation", json!("x")),
        ("/metadata/generation", json!(1.5)),
        ("/metadata/creationTimestamp", json!("not a time")),
        ("/metadata/creationTimestamp", json!(12345)),
        ("/metadata/deletionTimestamp", json!("2020-01-01T00:00:00Z")),
        ("/metadata/deletionGracePeriodSeconds", json!("x")),
        ("/metadata/ownerReferences", json!("x")),
        ("/metadata/ownerReferences", json!([{"kind": 5}])),
        ("/metadata/ownerReferences", json!([{}])),
        ("/metadata/finalizers", json!("x")),
        ("/metadata/finalizers", json!([5])),
        ("/metadata/finalizers", json!(["bad finalizer!"])),
        ("/metadata/managedFields", json!("x")),
        ("/metadata/managedFields", json!([{"operation": 5}])),
        ("/metadata/generateName", json!(5)),
        ("/apiVersion", json!(5)),
        ("/apiVersion", json!("v2")),
        ("/apiVersion", json!("")),
        ("/apiVersion", json!("nope/v1")),
        ("/kind", json!([])),
        ("/kind", json!("Service")),
        ("/kind", json!("")),
        ("/kind", json!("NoSuchKind")),
        ("/status", json!("x")),
        ("/unknownField", json!({"x": 1})),
    ];
    let pod_specific: Vec<(&str, Value)> = vec![
        ("/spec", json!(5)),
        ("/spec", json!([])),
        ("/spec", json!(null)),
        ("/spec/containers", json!("x")),
        ("/spec/containers", json!({})),
        ("/spec/containers", json!([])),
        ("/spec/containers", json!(null)),
        ("/spec/containers/0", json!(5)),
        ("/spec/containers/0/name", json!(5)),
        ("/spec/containers/0/name", json!("")),
        ("/spec/containers/0/image", json!([])),
        ("/spec/containers/0/ports", json!({})),
        ("/spec/containers/0/ports/0/containerPort", json!("abc")),
        ("/spec/containers/0/ports/0/containerPort", json!(1e20)),
        ("/spec/containers/0/ports/0/containerPort", json!(-1)),
        ("/spec/containers/0/ports/0/containerPort", json!(3.5)),
        ("/spec/containers/0/ports/0/containerPort", json!(99_999_999_999u64)),
        ("/spec/containers/0/ports/0/protocol", json!("QUIC")),
        ("/spec/containers/0/env", json!("x")),
        ("/spec/containers/0/env/0", json!({"value": "no name"})),
        ("/spec/containers/0/resources/limits", json!([])),
        ("/spec/containers/0/resources/limits/cpu", json!("abc")),
        ("/spec/containers/0/resources/limits/cpu", json!({})),
        ("/spec/containers/0/resources/limits/memory", json!("-5Gi")),
        ("/spec/containers/0/resources/limits/memory", json!("1e999999")),
        ("/spec/restartPolicy", json!(5)),
        ("/spec/restartPolicy", json!("Sometimes")),
        ("/spec/terminationGracePeriodSeconds", json!("x")),
        ("/spec/terminationGracePeriodSeconds", json!(9.9e300)),
        ("/spec/terminationGracePeriodSeconds", json!(-5)),
        ("/spec/nodeSelector", json!("x")),
        ("/spec/volumes", json!([{"name": "v"}])),
        ("/spec/volumes", json!([{"name": 5, "emptyDir": {}}])),
        ("/status/phase", json!(5)),
    ];
    let cm_specific: Vec<(&str, Value)> = vec![
        ("/data", json!("x")),
        ("/data", json!({"a": 1})),
        ("/data", json!({"bad key!": "x"})),
        ("/binaryData", json!({"a": "not base64!!"})),
        ("/immutable", json!("yes")),
    ];
    let secret_specific: Vec<(&str, Value)> = vec![
        ("/data", json!({"k": "not base64!!"})),
        ("/data", json!([1])),
        ("/type", json!(5)),
        ("/stringData", json!({"k": 5})),
    ];
    let svc_specific: Vec<(&str, Value)> = vec![
        ("/spec/ports", json!("x")),
        ("/spec/ports/0/port", json!("http")),
        ("/spec/ports/0/port", json!(0)),
        ("/spec/ports/0/port", json!(70000)),
        ("/spec/ports/0/targetPort", json!(-1)),
        ("/spec/ports/0/targetPort", json!({})),
        ("/spec/type", json!("Weird")),
        ("/spec/clusterIP", json!("999.1.1.1")),
        ("/spec/clusterIP", json!(5)),
        ("/spec/selector", json!([])),
    ];
    let deploy_specific: Vec<(&str, Value)> = vec![
        ("/spec/replicas", json!("three")),
        ("/spec/replicas", json!(-1)),
        ("/spec/replicas", json!(1e12)),
        ("/spec/selector", json!("x")),
        ("/spec/selector/matchLabels", json!({"app": "other"})),
        ("/spec/selector/matchExpressions", json!([{"key": "a", "operator": "Frob"}])),
        ("/spec/template", json!(5)),
        ("/spec/template/spec/containers", json!("x")),
        ("/spec/strategy", json!({"type": "Nope"})),
        ("/spec/strategy/rollingUpdate", json!({"maxSurge": {}})),
    ];
    let ns_specific: Vec<(&str, Value)> =
        vec![("/spec", json!("x")), ("/spec/finalizers", json!(5)), ("/status/phase", json!(5))];
    type Make = fn(&str) -> Value;
    type Kind<'a> = (&'a str, Make, Vec<(&'a str, Value)>, &'a str);
    let kinds: Vec<Kind> = vec![
        (PODS, pod, pod_specific, "victim"),
        (CMS, configmap, cm_specific, "cm"),
        ("/api/v1/namespaces/default/secrets", secret, secret_specific, "sec"),
        ("/api/v1/namespaces/default/services", service, svc_specific, "svc"),
        (DEPLOYS, deployment, deploy_specific, "dep"),
        ("/api/v1/namespaces", namespace, ns_specific, "fuzz-ns"),
    ];
    for (coll, make, specific, existing) in kinds {
        for (i, (ptr, val)) in generic.iter().chain(specific.iter()).enumerate() {
            let mut obj = make(&format!("wt-{i}"));
            set(&mut obj, ptr, val.clone());
            out.push(http("wrong-type", "POST", coll, JSON, bytes(&obj)));
            if i % 3 == 0 {
                out.push(http("wrong-type", "POST", coll, YAML, to_yaml(&obj)));
            }
            let mut upd = make(existing);
            set(&mut upd, ptr, val.clone());
            out.push(http("wrong-type", "PUT", &format!("{coll}/{existing}"), JSON, bytes(&upd)));
            // Strict field validation on the same body.
            out.push(http(
                "wrong-type",
                "POST",
                &format!("{coll}?fieldValidation=Strict&dryRun=All"),
                JSON,
                bytes(&obj),
            ));
        }
    }
}

fn bad_json(rng: &mut Rng, out: &mut Vec<Req>) {
    let fixed: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"{\"a\":}",
        b"{\"apiVersion\":\"v1\",}",
        b"{'a': 1}",
        b"nul",
        b"\"unterminated",
        b"{\"a\":1}{\"b\":2}",
        b"{\"a\":1} trailing",
        b"\xff\xfe\x00{",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\\uZZZZ\"}",
        b"{\"a\":1e999999}",
        b"{\"a\":-}",
        b"{\"a\":NaN}",
        b"{\"a\":Infinity}",
        b"\x00",
        b" ",
        b"\t\n\r ",
        b"{\"metadata\":{\"name\":\"x\",\"name\":\"y\"},\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\"}",
        b"{\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"\\u0000\"}}",
    ];
    for b in fixed {
        for coll in [PODS, CMS, DEPLOYS] {
            out.push(http("bad-json", "POST", coll, JSON, b.to_vec()));
            out.push(http("bad-json", "PUT", &format!("{coll}/x"), JSON, b.to_vec()));
        }
    }
    let valid = bytes(&pod("trunc"));
    for _ in 0..400 {
        let cut = rng.below(valid.len());
        out.push(http("bad-json", "POST", PODS, JSON, valid[..cut].to_vec()));
    }
    for _ in 0..100 {
        let n = 1 + rng.below(200);
        let junk = rng.bytes(n);
        out.push(http("bad-json", "POST", CMS, JSON, junk));
    }
}

fn bad_yaml(rng: &mut Rng, out: &mut Vec<Req>) {
    let fixed: &[&str] = &[
        "a: b: c",
        "- a\nb: c",
        "key: [unclosed",
        "key: {unclosed",
        "\t- tab indent",
        "!!binary notbase64",
        "!!python/object:os.system ls",
        "a: &x 1\nb: *y",
        "---\na: 1\n---\nb: 2",
        "? complex\n: key",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [a, b]",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: !!int 5",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: !!float nan",
        "%YAML 9.9\n---\na: 1",
        "a: 0x1g",
        "\u{feff}\u{feff}a: 1",
        "...",
        "a: |\n bad\nindent",
        "{a: 1, a: 2}",
        "a: 1\na: 2",
        "<<: *nothing",
        "a: !<tag:unknown> x",
    ];
    for y in fixed {
        out.push(http("bad-yaml", "POST", CMS, YAML, y.as_bytes().to_vec()));
        out.push(http("bad-yaml", "PUT", &format!("{CMS}/cm"), YAML, y.as_bytes().to_vec()));
        out.push(http(
            "bad-yaml",
            "PATCH",
            &format!("{CMS}/cm?fieldManager=fuzz"),
            Some(APPLY),
            y.as_bytes().to_vec(),
        ));
    }
    // Alias expansion bomb ("billion laughs").
    let mut bomb =
        String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h", "i"].windows(2).map(|w| (w[0], w[1])) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        let _ = writeln!(bomb, "{cur}: &{cur} [{refs}]");
    }
    out.push(http("bad-yaml", "POST", CMS, YAML, bomb.clone().into_bytes()));
    out.push(http(
        "bad-yaml",
        "PATCH",
        &format!("{CMS}/cm?fieldManager=fuzz"),
        Some(APPLY),
        bomb.into_bytes(),
    ));
    let valid = to_yaml(&deployment("ytrunc"));
    for _ in 0..150 {
        let cut = rng.below(valid.len());
        out.push(http("bad-yaml", "POST", DEPLOYS, YAML, valid[..cut].to_vec()));
    }
}

fn deep(out: &mut Vec<Req>) {
    for depth in [100usize, 129, 1000, 10_000, 100_000] {
        let arr = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let in_annotations = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"deep\",\"annotations\":{obj}}}}}"
        );
        let in_data = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"deep\"}},\"data\":{{\"x\":{arr}}}}}"
        );
        let in_unknown = format!(
            "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"deep\"}},\"extra\":{obj}}}"
        );
        for b in [&arr, &obj, &in_annotations, &in_data, &in_unknown] {
            out.push(http("deep", "POST", CMS, JSON, b.clone().into_bytes()));
            out.push(http("deep", "PATCH", &format!("{CMS}/cm"), Some(MERGE_PATCH), b.clone().into_bytes()));
            out.push(http("deep", "PATCH", &format!("{CMS}/cm"), Some(SMP), b.clone().into_bytes()));
            out.push(http("deep", "PATCH", &format!("{CMS}/cm"), Some(JSON_PATCH), b.clone().into_bytes()));
        }
        let jp = format!("[{{\"op\":\"add\",\"path\":\"/metadata/annotations/x\",\"value\":{obj}}}]");
        out.push(http("deep", "PATCH", &format!("{CMS}/cm"), Some(JSON_PATCH), jp.into_bytes()));
        let yaml_flow = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        out.push(http("deep", "POST", CMS, YAML, yaml_flow.clone().into_bytes()));
        out.push(http(
            "deep",
            "PATCH",
            &format!("{CMS}/cm?fieldManager=f"),
            Some(APPLY),
            yaml_flow.into_bytes(),
        ));
        let yaml_block: String = (0..depth.min(2000)).map(|i| format!("{}a:\n", " ".repeat(i))).collect();
        out.push(http("deep", "POST", CMS, YAML, yaml_block.into_bytes()));
    }
    // Many keys rather than depth.
    let wide: String = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"wide\",\"labels\":{{{}}}}}}}",
        (0..20_000).map(|i| format!("\"k{i}\":\"v\"")).collect::<Vec<_>>().join(",")
    );
    out.push(http("deep", "POST", CMS, JSON, wide.into_bytes()));
}

fn huge(out: &mut Vec<Req>) {
    let big = "x".repeat(3 * 1024 * 1024 + 100);
    let cm = format!("{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"huge\"}},\"data\":{{\"a\":\"{big}\"}}}}");
    out.push(http("huge", "POST", CMS, JSON, cm.clone().into_bytes()));
    out.push(http("huge", "PUT", &format!("{CMS}/cm"), JSON, cm.clone().into_bytes()));
    out.push(http("huge", "PATCH", &format!("{CMS}/cm"), Some(MERGE_PATCH), cm.clone().into_bytes()));
    out.push(http("huge", "POST", CMS, YAML, format!("data:\n  a: {big}\n").into_bytes()));
    out.push(http("huge", "POST", CMS, Some(PROTOBUF), big.clone().into_bytes()));
    out.push(http("huge", "POST", CMS, Some("text/plain"), big.into_bytes()));
}

fn content_types(out: &mut Vec<Req>) {
    let body = bytes(&configmap("ct"));
    let cts = [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "garbage",
        "application/",
        "/json",
        ";;;",
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
        "application/vnd.kubernetes.protobuf;stream=watch",
        "application/cbor",
        "image/png",
        "application/jsonx",
        "APPLICATION/XML",
    ];
    for ct in cts {
        out.push(http("content-type", "POST", CMS, Some(ct), body.clone()));
        out.push(http("content-type", "PUT", &format!("{CMS}/cm"), Some(ct), body.clone()));
        out.push(http("content-type", "PATCH", &format!("{CMS}/cm"), Some(ct), b"{}".to_vec()));
    }
    for ct in ["application/json", "application/yaml", "text/plain", "", "application/xml"] {
        out.push(http("content-type", "PATCH", &format!("{CMS}/cm"), Some(ct), b"{}".to_vec()));
        out.push(http("content-type", "PATCH", &format!("{DEPLOYS}/dep/scale"), Some(ct), b"{}".to_vec()));
    }
    // Missing content type on PATCH.
    out.push(http("content-type", "PATCH", &format!("{CMS}/cm"), None, b"{}".to_vec()));
    // Bad Accept headers.
    for accept in ["text/html", "application/xml", "image/*", "application/json;as=Table;g=wrong"] {
        let mut r = http("accept", "GET", &format!("{CMS}/cm"), None, Vec::new());
        if let Req::Http { headers, .. } = &mut r {
            headers[0].1 = accept.to_string();
        }
        out.push(r);
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn selectors(out: &mut Vec<Req>) {
    let long = "a".repeat(70);
    let labels: Vec<String> = [
        "a in (",
        "a in (b",
        "a notin",
        "!",
        "!!a",
        "a==b==c",
        "a=b=c",
        "=b",
        "a!",
        "a in (b,,c)",
        "a in b",
        "a,",
        ",",
        ",,",
        "a b",
        "a=(b)",
        "x/y/z=1",
        "-a=b",
        "a=-b-",
        "a>1",
        "a<x",
        "a gt 1",
        "a in ()",
        "a=b,c!",
        "ä=b",
        "a\u{0}=b",
        "a in (b)c",
        "(a)",
        "a.b/c.d/e=1",
        "a=b)",
        "a!=",
        "!a=b",
        "a in (b c)",
        "a=\u{ffff}",
        "/a=b",
        "a/=b",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("{long}=b"), format!("a={long}"), format!("{long}.com/{long}=b"), "a=b,".repeat(500)])
    .collect();
    for l in &labels {
        let q = format!("labelSelector={}", enc(l));
        out.push(http("label-selector", "GET", &format!("{PODS}?{q}"), None, Vec::new()));
        out.push(http(
            "label-selector",
            "GET",
            &format!("{PODS}?{q}&watch=true&timeoutSeconds=1"),
            None,
            Vec::new(),
        ));
        out.push(http("label-selector", "GET", &format!("/api/v1/pods?{q}"), None, Vec::new()));
        out.push(http("label-selector", "DELETE", &format!("{SCRATCH_CMS}?{q}"), None, Vec::new()));
    }
    let fields = [
        "foo=bar",
        "metadata.name",
        "metadata.name===x",
        "metadata.name!",
        "=x",
        "spec.nodeName in (a)",
        "status.phase~x",
        ",",
        "metadata.name=a,",
        "metadata.namespace=ä",
        "metadata.labels=x",
        "spec.containers=x",
        "spec.nodeName!==x",
        "metadata.name=a=b",
        "!metadata.name",
        "metadata.name==\u{0}",
        "status.podIP>1",
    ];
    for f in fields {
        let q = format!("fieldSelector={}", enc(f));
        out.push(http("field-selector", "GET", &format!("{PODS}?{q}"), None, Vec::new()));
        out.push(http(
            "field-selector",
            "GET",
            &format!("{PODS}?{q}&watch=true&timeoutSeconds=1"),
            None,
            Vec::new(),
        ));
        out.push(http("field-selector", "GET", &format!("{CMS}?{q}"), None, Vec::new()));
        out.push(http("field-selector", "GET", &format!("{DEPLOYS}?{q}"), None, Vec::new()));
        out.push(http("field-selector", "DELETE", &format!("{SCRATCH_CMS}?{q}"), None, Vec::new()));
    }
}

fn patches(out: &mut Vec<Req>) {
    let json_patches = [
        "{}",
        "\"x\"",
        "5",
        "null",
        "[5]",
        "[{}]",
        "[[]]",
        "[{\"op\":\"frob\",\"path\":\"/a\"}]",
        "[{\"op\":5,\"path\":\"/a\"}]",
        "[{\"op\":\"add\"}]",
        "[{\"op\":\"add\",\"path\":\"metadata\"}]",
        "[{\"op\":\"add\",\"path\":\"/metadata/labels/x\"}]",
        "[{\"op\":\"add\",\"path\":5,\"value\":1}]",
        "[{\"op\":\"remove\",\"path\":\"/nonexistent\"}]",
        "[{\"op\":\"remove\",\"path\":\"\"}]",
        "[{\"op\":\"replace\",\"path\":\"/spec/containers/99/image\",\"value\":\"x\"}]",
        "[{\"op\":\"move\",\"from\":\"/nope\",\"path\":\"/x\"}]",
        "[{\"op\":\"move\",\"from\":\"/metadata\",\"path\":\"/metadata/x\"}]",
        "[{\"op\":\"copy\",\"from\":\"/metadata\",\"path\":\"/metadata/labels/x\"}]",
        "[{\"op\":\"test\",\"path\":\"/metadata/name\",\"value\":\"nope\"}]",
        "[{\"op\":\"test\",\"path\":\"/metadata/name\"}]",
        "[{\"op\":\"replace\",\"path\":\"/metadata\",\"value\":5}]",
        "[{\"op\":\"replace\",\"path\":\"\",\"value\":[]}]",
        "[{\"op\":\"replace\",\"path\":\"\",\"value\":null}]",
        "[{\"op\":\"replace\",\"path\":\"/spec/containers\",\"value\":\"x\"}]",
        "[{\"op\":\"add\",\"path\":\"/spec/containers/-\",\"value\":5}]",
        "[{\"op\":\"remove\",\"path\":\"/spec/containers/0/name\"}]",
        "[{\"op\":\"replace\",\"path\":\"/metadata/name\",\"value\":\"other\"}]",
        "[{\"op\":\"replace\",\"path\":\"/metadata/namespace\",\"value\":\"other\"}]",
        "[{\"op\":\"replace\",\"path\":\"/kind\",\"value\":\"Service\"}]",
        "[{\"op\":\"replace\",\"path\":\"/apiVersion\",\"value\":\"v9\"}]",
        "[{\"op\":\"add\",\"path\":\"/spec/containers/~2\",\"value\":1}]",
        "[{\"op\":\"add\",\"path\":\"/spec/containers/99999999999999999999\",\"value\":1}]",
        "[{\"op\":\"add\",\"path\":\"/spec/containers/-1\",\"value\":{}}]",
        "[{\"op\":\"replace\",\"path\":\"/metadata/resourceVersion\",\"value\":\"abc\"}]",
        "[{\"op\":\"replace\",\"path\":\"/metadata/resourceVersion\",\"value\":\"1\"}]",
        "[{\"op\":\"replace\",\"path\":\"/spec/replicas\",\"value\":\"x\"}]",
        "[{\"op\":\"replace\",\"path\":\"/spec/replicas\",\"value\":-3}]",
        "[{\"op\":\"replace\",\"path\":\"/data\",\"value\":[1]}]",
    ];
    let merge_patches = [
        "[]",
        "5",
        "\"x\"",
        "null",
        "true",
        "{\"metadata\":5}",
        "{\"metadata\":{\"name\":\"other\"}}",
        "{\"metadata\":{\"namespace\":\"other\"}}",
        "{\"metadata\":{\"labels\":{\"bad key!\":\"v\"}}}",
        "{\"metadata\":{\"labels\":5}}",
        "{\"metadata\":{\"resourceVersion\":\"abc\"}}",
        "{\"metadata\":{\"resourceVersion\":\"1\"}}",
        "{\"metadata\":{\"uid\":\"other\"}}",
        "{\"kind\":\"Service\"}",
        "{\"apiVersion\":\"v9\"}",
        "{\"spec\":{\"containers\":\"x\"}}",
        "{\"spec\":{\"containers\":[{\"name\":5}]}}",
        "{\"spec\":{\"containers\":[]}}",
        "{\"spec\":5}",
        "{\"spec\":{\"replicas\":\"x\"}}",
        "{\"spec\":{\"replicas\":-1}}",
        "{\"data\":{\"a\":5}}",
        "{\"data\":[1]}",
        "{\"status\":\"x\"}",
    ];
    let smp_only = [
        "{\"$patch\":\"frob\"}",
        "{\"$patch\":\"delete\"}",
        "{\"$patch\":\"replace\"}",
        "{\"$patch\":5}",
        "{\"spec\":{\"containers\":[{\"$patch\":\"delete\"}]}}",
        "{\"spec\":{\"containers\":[{\"$patch\":\"frob\",\"name\":\"c\"}]}}",
        "{\"spec\":{\"containers\":[{\"$patch\":\"replace\"}]}}",
        "{\"spec\":{\"containers\":[{\"name\":\"c\",\"$patch\":\"delete\"}]}}",
        "{\"spec\":{\"containers\":[{\"image\":\"no-merge-key\"}]}}",
        "{\"spec\":{\"$setElementOrder/containers\":5}}",
        "{\"spec\":{\"$setElementOrder/containers\":[{\"nome\":\"c\"}]}}",
        "{\"spec\":{\"$setElementOrder/containers\":[5]}}",
        "{\"spec\":{\"$setElementOrder/containers\":\"x\"}}",
        "{\"$setElementOrder/spec\":[1]}",
        "{\"metadata\":{\"$deleteFromPrimitiveList/finalizers\":\"x\"}}",
        "{\"metadata\":{\"$deleteFromPrimitiveList/finalizers\":[{}]}}",
        "{\"metadata\":{\"$deleteFromPrimitiveList/labels\":[\"a\"]}}",
        "{\"$deleteFromPrimitiveList/x\":[1]}",
        "{\"spec\":{\"$retainKeys\":5}}",
        "{\"spec\":{\"$retainKeys\":[5]}}",
        "{\"spec\":{\"$retainKeys\":[\"nope\"]}}",
        "{\"spec\":{\"containers\":{\"$patch\":\"replace\"}}}",
        "{\"spec\":{\"containers\":[{\"$retainKeys\":\"x\",\"name\":\"c\"}]}}",
        "{\"spec\":{\"containers\":[5]}}",
        "{\"spec\":{\"containers\":[[1]]}}",
        "{\"spec\":{\"containers\":[{\"name\":\"c\",\"env\":[{\"$patch\":\"delete\"}]}]}}",
        "{\"spec\":{\"containers\":[{\"name\":\"c\",\"ports\":[{\"$patch\":\"delete\",\"containerPort\":\"x\"}]}]}}",
        "{\"metadata\":{\"finalizers\":[{\"$patch\":\"replace\"}]}}",
        "{\"spec\":{\"template\":{\"spec\":{\"containers\":[{\"$patch\":\"delete\"}]}}}}",
        "{\"$patch\":\"merge\",\"metadata\":{\"$patch\":\"delete\"}}",
        "{\"data\":{\"$patch\":\"frob\"}}",
    ];
    let apply = [
        ("", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"),
        ("?fieldManager=f", "{}"),
        ("?fieldManager=f", "[]"),
        ("?fieldManager=f", "5"),
        ("?fieldManager=f", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cm\n"),
        ("?fieldManager=f", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n"),
        ("?fieldManager=f", "apiVersion: v1\nkind: ConfigMap\nmetadata: 5\n"),
        ("?fieldManager=f", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  managedFields: x\n"),
        ("?fieldManager=f", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata: [1]\n"),
        ("?fieldManager=f&force=maybe", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"),
        (
            "?fieldManager=f",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n  resourceVersion: abc\n",
        ),
        ("?fieldManager=f", "apiVersion: v9\nkind: ConfigMap\nmetadata:\n  name: cm\n"),
        ("?fieldManager=f", "kind: ConfigMap\nmetadata:\n  name: cm\n"),
        ("?fieldManager=f", ": : :"),
        ("?fieldManager=", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"),
        ("?fieldManager=%00%01", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n"),
    ];
    let targets = [
        format!("{PODS}/victim"),
        format!("{PODS}/victim/status"),
        format!("{CMS}/cm"),
        format!("{DEPLOYS}/dep"),
        format!("{DEPLOYS}/dep/scale"),
        format!("{PODS}/does-not-exist"),
    ];
    for t in &targets {
        for p in json_patches {
            out.push(http("json-patch", "PATCH", t, Some(JSON_PATCH), p.as_bytes().to_vec()));
        }
        for p in merge_patches {
            out.push(http("merge-patch", "PATCH", t, Some(MERGE_PATCH), p.as_bytes().to_vec()));
            out.push(http("smp", "PATCH", t, Some(SMP), p.as_bytes().to_vec()));
        }
        for p in smp_only {
            out.push(http("smp", "PATCH", t, Some(SMP), p.as_bytes().to_vec()));
        }
        for (q, p) in apply {
            out.push(http("apply", "PATCH", &format!("{t}{q}"), Some(APPLY), p.as_bytes().to_vec()));
            out.push(http(
                "apply",
                "PATCH",
                &format!("{t}{q}"),
                Some("application/apply-patch+json"),
                p.as_bytes().to_vec(),
            ));
        }
    }
}

fn queries(out: &mut Vec<Req>) {
    let list_q = [
        "limit=abc",
        "limit=-1",
        "limit=99999999999999999999",
        "limit=1.5",
        "limit=",
        "limit=1&limit=abc",
        "resourceVersion=xyz",
        "resourceVersion=-5",
        "resourceVersion=99999999999999999999",
        "resourceVersionMatch=Foo",
        "resourceVersionMatch=Exact",
        "resourceVersionMatch=NotOlderThan",
        "resourceVersion=xyz&resourceVersionMatch=Exact",
        "resourceVersion=1&resourceVersionMatch=Exact",
        "continue=garbage",
        "continue=%ff%fe",
        "continue=eyJ2IjoxfQ",
        "limit=1&continue=garbage",
        "timeoutSeconds=-1",
        "timeoutSeconds=abc",
        "watch=maybe",
        "watch=2",
        "watch=true&resourceVersion=xyz",
        "watch=true&resourceVersion=-1",
        "watch=true&resourceVersion=1.5",
        "watch=true&timeoutSeconds=-1",
        "watch=true&timeoutSeconds=abc",
        "watch=true&timeoutSeconds=1&allowWatchBookmarks=x",
        "watch=true&timeoutSeconds=1&sendInitialEvents=x",
        "watch=true&timeoutSeconds=1&sendInitialEvents=true",
        "watch=true&timeoutSeconds=1&resourceVersion=1",
        "watch=true&timeoutSeconds=1&resourceVersionMatch=Frob",
        "watch=true&timeoutSeconds=1&limit=abc",
        "watch=1&timeoutSeconds=1&resourceVersion=0&labelSelector=a%20in%20(",
        "pretty=maybe",
        "includeObject=Nope",
        "%zz",
        "a=%ff%fe%fd",
        "&&&=",
        "=",
        "==&==",
        "labelSelector=%",
        "fieldSelector=%G0",
    ];
    for q in list_q {
        for coll in [PODS, CMS, "/api/v1/namespaces", "/apis/apps/v1/deployments"] {
            out.push(http("query", "GET", &format!("{coll}?{q}"), None, Vec::new()));
        }
        out.push(http("query", "GET", &format!("{CMS}/cm?{q}"), None, Vec::new()));
    }
    let write_q = [
        "fieldValidation=Nope",
        "fieldValidation=strict",
        "fieldValidation=",
        "dryRun=Some",
        "dryRun=all",
        "dryRun=All&dryRun=Some",
        "dryRun=Some&dryRun=All",
        "fieldManager=",
        "force=x",
        "force=true",
        "%zz=1",
        "fieldManager=%00",
        "fieldManager=%0A%0D",
    ];
    let long_manager = format!("fieldManager={}", "m".repeat(200));
    for q in write_q.iter().copied().chain([long_manager.as_str()]) {
        let cm = bytes(&configmap("q-cm"));
        out.push(http("query", "POST", &format!("{CMS}?{q}"), JSON, cm.clone()));
        out.push(http("query", "PUT", &format!("{CMS}/cm?{q}"), JSON, bytes(&configmap("cm"))));
        out.push(http("query", "PATCH", &format!("{CMS}/cm?{q}"), Some(MERGE_PATCH), b"{}".to_vec()));
        out.push(http("query", "PATCH", &format!("{CMS}/cm?{q}"), Some(SMP), b"{}".to_vec()));
        out.push(http("query", "PATCH", &format!("{CMS}/cm?{q}"), Some(JSON_PATCH), b"[]".to_vec()));
        out.push(http("query", "DELETE", &format!("{CMS}/no-such-cm?{q}"), None, Vec::new()));
    }
    let delete_q = [
        "gracePeriodSeconds=abc",
        "gracePeriodSeconds=-99999999999999999999",
        "gracePeriodSeconds=1.5",
        "propagationPolicy=Foo",
        "propagationPolicy=",
        "dryRun=Some",
        "orphanDependents=maybe",
    ];
    for q in delete_q {
        out.push(http("query", "DELETE", &format!("{CMS}/no-such-cm?{q}"), None, Vec::new()));
        out.push(http(
            "query",
            "DELETE",
            &format!("{SCRATCH_CMS}?{q}&labelSelector=nothing%3Dmatches"),
            None,
            Vec::new(),
        ));
    }
    // Bad DeleteOptions bodies.
    for b in [
        "{\"propagationPolicy\":5}",
        "{\"gracePeriodSeconds\":\"x\"}",
        "{\"preconditions\":{\"uid\":5}}",
        "{\"preconditions\":{\"resourceVersion\":\"1\"}}",
        "{\"dryRun\":[\"Some\"]}",
        "{\"dryRun\":\"All\"}",
        "[]",
        "5",
        "{",
        "{\"kind\":\"Pod\"}",
    ] {
        out.push(http("delete-options", "DELETE", &format!("{CMS}/no-such-cm"), JSON, b.as_bytes().to_vec()));
        out.push(http(
            "delete-options",
            "DELETE",
            &format!("{PODS}/no-such-pod"),
            JSON,
            b.as_bytes().to_vec(),
        ));
        out.push(http(
            "delete-options",
            "DELETE",
            &format!("{SCRATCH_CMS}?labelSelector=nothing%3Dmatches"),
            JSON,
            b.as_bytes().to_vec(),
        ));
        out.push(http(
            "delete-options",
            "POST",
            &format!("{PODS}/victim/eviction"),
            JSON,
            b.as_bytes().to_vec(),
        ));
    }
}

/// Random byte mutations of valid bodies.
fn mutations(rng: &mut Rng, n: usize, out: &mut Vec<Req>) {
    type Seed = (String, &'static str, Vec<u8>, &'static str);
    let seeds: Vec<Seed> = vec![
        ("POST".into(), "create-json", bytes(&pod("mut")), PODS),
        ("POST".into(), "create-yaml", to_yaml(&pod("mut")), PODS),
        ("POST".into(), "create-json", bytes(&configmap("mut")), CMS),
        ("POST".into(), "create-json", bytes(&deployment("mut")), DEPLOYS),
        ("POST".into(), "create-yaml", to_yaml(&deployment("mut")), DEPLOYS),
        ("POST".into(), "create-json", bytes(&service("mut")), "/api/v1/namespaces/default/services"),
        (
        "PUT".into(),
        "update-json",
        bytes(&pod("victim")),
        "/api/v1/namespaces/default/pods/victim",
    ),
        (
        "PUT".into(),
        "update-json",
        bytes(&configmap("cm")),
        "/api/v1/namespaces/default/configmaps/cm",
    ),
        (
        "PATCH".into(),
        "json-patch",
        b"[{\"op\":\"add\",\"path\":\"/metadata/labels/m\",\"value\":\"v\"},{\"op\":\"test\",\"path\":\"/kind\",\"value\":\"Pod\"}]".to_vec(),
        "/api/v1/namespaces/default/pods/victim",
    ),
        (
        "PATCH".into(),
        "merge-patch",
        b"{\"metadata\":{\"labels\":{\"m\":\"v\"}},\"spec\":{\"activeDeadlineSeconds\":null}}".to_vec(),
        "/api/v1/namespaces/default/pods/victim",
    ),
        (
        "PATCH".into(),
        "smp",
        b"{\"spec\":{\"$setElementOrder/containers\":[{\"name\":\"c\"}],\"containers\":[{\"name\":\"c\",\"image\":\"nginx:2\"}]}}".to_vec(),
        "/api/v1/namespaces/default/pods/victim",
    ),
        (
        "PATCH".into(),
        "apply",
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  z: y\n".to_vec(),
        "/api/v1/namespaces/default/configmaps/cm?fieldManager=fuzz&force=true",
    ),
    ];
    let ct_of = |kind: &str| match kind {
        "create-yaml" => "application/yaml",
        "json-patch" => JSON_PATCH,
        "merge-patch" => MERGE_PATCH,
        "smp" => SMP,
        "apply" => APPLY,
        _ => "application/json",
    };
    let interesting: &[&[u8]] = &[
        b"\"", b"{", b"}", b"[", b"]", b":", b",", b"\\", b"\0", b"null", b"-1", b"1e400", b"\xff", b"\xc3",
        b"\n", b" ", b"true", b"\"\"", b"{}", b"[]", b"$patch", b"\\u0000", b"'",
    ];
    for i in 0..n {
        let (method, kind, seed, path) = rng.pick(&seeds).clone();
        let mut b = seed.clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            if b.is_empty() {
                b.push(b'{');
            }
            let at = rng.below(b.len());
            match rng.below(7) {
                0 => b[at] = rng.next() as u8,
                1 => b[at] ^= 1 << rng.below(8),
                2 => {
                    b.remove(at);
                }
                3 => b.insert(at, rng.next() as u8),
                4 => {
                    let s = rng.pick(interesting);
                    b.splice(at..at, s.iter().copied());
                }
                5 => {
                    let end = (at + rng.below(16)).min(b.len());
                    b.drain(at..end);
                }
                _ => {
                    let end = (at + 1 + rng.below(32)).min(b.len());
                    let dup = b[at..end].to_vec();
                    b.splice(end..end, dup);
                }
            }
        }
        // Keep created names unique so that successful creates do not all collide.
        let path =
            if method == "POST" && i % 2 == 0 { format!("{path}?dryRun=All") } else { path.to_string() };
        out.push(http("mutation", &method, &path, Some(ct_of(kind)), b));
    }
}

fn unknown_paths(rng: &mut Rng, out: &mut Vec<Req>) {
    let fixed = [
        "/",
        "//",
        "/api/v2",
        "/api/v1/nothing",
        "/apis/foo/v1/bars",
        "/apis/apps/v9/deployments",
        "/apis/apps",
        "/apis/apps/v1/namespaces/default/deployments/dep/status/extra",
        "/api/v1/namespaces/default/pods/victim/frob",
        "/api/v1/namespaces/default/pods/victim/status/x/y",
        "/api/v1/namespaces/default/pods/x/y/z/w",
        "/api/v1/namespaces/default/namespaces",
        "/api/v1/namespaces/default/nodes/n",
        "/api/v1/nodes/n/frob",
        "/api/v1/pods/x",
        "/api/v1/namespaces//pods",
        "/api/v1/namespaces/%2F/pods",
        "/api/v1/namespaces/default/pods/%2E%2E",
        "/api/v1/namespaces/default/pods/..",
        "/api/v1/namespaces/../../etc/passwd",
        "/api/v1/namespaces/default/pods/a%00b",
        "/api/v1/namespaces/no-such-ns/pods",
        "/api/v1/namespaces/Bad_NS!/pods",
        "/openapi/v2",
        "/openapi/v3/apis/nope/v1",
        "/openapi/v3/api/v9",
        "/openapi/v3/x/y/z",
        "/version/x",
        "/metrics",
        "/logs",
        "/healthz/../api/v1/secrets",
        "/%ff%fe",
        "/api/v1/namespaces/default/pods/%C3%A9",
        "/apis/apps/v1/namespaces/default/deployments/dep/scale/x",
    ];
    for p in fixed {
        for m in ["GET", "POST", "DELETE"] {
            let body = if m == "POST" { bytes(&configmap("p")) } else { Vec::new() };
            out.push(http("unknown-path", m, p, if m == "POST" { JSON } else { None }, body));
        }
    }
    let segs = [
        "api",
        "apis",
        "v1",
        "apps",
        "namespaces",
        "default",
        "pods",
        "configmaps",
        "deployments",
        "status",
        "scale",
        "binding",
        "eviction",
        "log",
        "exec",
        "x",
        "",
        "..",
        "%2F",
        "%00",
        "nodes",
        "watch",
        "proxy",
        "apiextensions.k8s.io",
        "crd",
        "a%20b",
        "%C3%9F",
    ];
    for _ in 0..400 {
        let n = 1 + rng.below(8);
        let mut p = String::new();
        for _ in 0..n {
            p.push('/');
            p.push_str(rng.pick::<&str>(&segs));
        }
        if rng.below(4) == 0 {
            let _ = write!(p, "/%{:02X}", rng.next() as u8);
        }
        let m = *rng.pick(&["GET", "GET", "DELETE", "PATCH", "PUT", "POST"]);
        let (ct, body) = match m {
            "PATCH" => (Some(MERGE_PATCH), b"{}".to_vec()),
            "PUT" | "POST" => (JSON, bytes(&configmap("p"))),
            _ => (None, Vec::new()),
        };
        out.push(http("unknown-path", m, &p, ct, body));
    }
}

fn methods(out: &mut Vec<Req>) {
    let paths = [
        PODS.to_string(),
        format!("{PODS}/victim"),
        format!("{PODS}/victim/status"),
        format!("{PODS}/victim/log"),
        format!("{PODS}/victim/binding"),
        format!("{PODS}/victim/eviction"),
        format!("{DEPLOYS}/dep/scale"),
        "/api/v1/namespaces".to_string(),
        "/api".to_string(),
        "/apis".to_string(),
        "/api/v1".to_string(),
        "/version".to_string(),
        "/healthz".to_string(),
        "/openapi/v3".to_string(),
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews".to_string(),
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews/x".to_string(),
    ];
    for p in &paths {
        for m in ["PUT", "PATCH", "POST", "HEAD", "OPTIONS", "TRACE", "FOO", "get", "PROPFIND"] {
            let body = if matches!(m, "PUT" | "POST" | "FOO") { b"{}".to_vec() } else { Vec::new() };
            let ct = if m == "PATCH" { Some(MERGE_PATCH) } else { JSON };
            out.push(http("method", m, p, ct, body));
        }
        out.push(http(
            "method",
            "DELETE",
            &p.replace("victim", "not-victim").replace("/dep/", "/not-dep/"),
            None,
            Vec::new(),
        ));
    }
    // Reviews with bad bodies.
    for b in [
        "{}",
        "{\"spec\":5}",
        "{\"spec\":{\"resourceAttributes\":5}}",
        "{\"spec\":{\"resourceAttributes\":{\"verb\":5}}}",
        "[]",
        "5",
        "\"x\"",
        "true",
        "null",
    ] {
        out.push(http(
            "method",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            JSON,
            b.as_bytes().to_vec(),
        ));
        out.push(http(
            "method",
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            JSON,
            b.as_bytes().to_vec(),
        ));
    }
    // Bindings with bad bodies.
    for b in [
        "{}",
        "{\"target\":5}",
        "{\"target\":{\"kind\":\"Node\"}}",
        "[]",
        "{\"metadata\":{\"name\":\"other\"},\"target\":{\"name\":\"n\"}}",
    ] {
        out.push(http("method", "POST", &format!("{PODS}/victim/binding"), JSON, b.as_bytes().to_vec()));
    }
}

fn protobuf(rng: &mut Rng, out: &mut Vec<Req>) {
    let valid: Vec<(&str, Vec<u8>)> = [
        (CMS, configmap("pb")),
        ("/api/v1/namespaces/default/secrets", secret("pb")),
        ("/api/v1/namespaces", namespace("pb-ns")),
        (DEPLOYS, deployment("pb")),
        (PODS, pod("pb")),
        ("/api/v1/namespaces/default/services", service("pb")),
        (
            "/apis/batch/v1/namespaces/default/jobs",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pb"},
                   "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox"}]}}}}),
        ),
        (
            "/api/v1/namespaces/default/resourcequotas",
            json!({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pb"},
                   "spec": {"hard": {"pods": "10", "requests.cpu": "2"}}}),
        ),
    ]
    .into_iter()
    .map(|(p, v)| (p, capstan_api::protobuf::encode(&v).expect("encode protobuf")))
    .collect();
    // Truncations at every length.
    for (p, b) in &valid {
        for cut in 0..b.len() {
            out.push(http("protobuf", "POST", &format!("{p}?dryRun=All"), Some(PROTOBUF), b[..cut].to_vec()));
        }
    }
    // Garbage after the magic, and garbage without it.
    for i in 0..300 {
        let n = rng.below(100);
        let mut b = if i % 4 == 0 { Vec::new() } else { b"k8s\0".to_vec() };
        b.extend(rng.bytes(n));
        let (p, _) = rng.pick(&valid);
        out.push(http("protobuf", "POST", p, Some(PROTOBUF), b));
    }
    // Random mutations of valid encodings.
    for _ in 0..500 {
        let (p, b) = rng.pick(&valid).clone();
        let mut b = b.clone();
        for _ in 0..1 + rng.below(3) {
            let at = 4 + rng.below(b.len() - 4);
            match rng.below(3) {
                0 => b[at] = rng.next() as u8,
                1 => b[at] ^= 1 << rng.below(8),
                _ => b.insert(at, rng.next() as u8),
            }
        }
        out.push(http("protobuf", "POST", &format!("{p}?dryRun=All"), Some(PROTOBUF), b));
    }
    // DeleteOptions bodies (Helm's uninstall sends protobuf), whole and mutated.
    let opts = capstan_api::protobuf::encode(
        &json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background", "gracePeriodSeconds": 0}),
    )
    .expect("encode DeleteOptions");
    for i in 0..100 {
        let mut b = opts.clone();
        if i > 0 {
            let at = 4 + rng.below(b.len() - 4);
            b[at] = rng.next() as u8;
        }
        out.push(http("protobuf", "DELETE", &format!("{CMS}/pb-missing?dryRun=All"), Some(PROTOBUF), b));
    }
    // An envelope of another kind than the collection's.
    let wrong = capstan_api::protobuf::encode(&pod("wrong")).expect("encode pod");
    out.push(http("protobuf", "POST", CMS, Some(PROTOBUF), wrong.clone()));
    out.push(http("protobuf", "PUT", &format!("{CMS}/wrong"), Some(PROTOBUF), wrong));
    // Hand-made edge cases: huge lengths, deep nesting, overlong varints, wrong wire types.
    let mut deepmsg = b"k8s\0".to_vec();
    deepmsg.extend(std::iter::repeat_n([0x0a, 0x7f], 200).flatten());
    for b in [
        b"k8s\0\x0a\xff\xff\xff\xff\x0f".to_vec(),
        b"k8s\0\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01".to_vec(),
        b"k8s\0\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        b"k8s\0\x08\x01".to_vec(),
        b"k8s\0\x00".to_vec(),
        b"k8s\0\x0f".to_vec(),
        b"k8s\0\x0a\x04\x0a\x02v1\x12\x00".to_vec(),
        b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09ConfigMap\x1a\x04gzip".to_vec(),
        b"k8s\0\x0a\x0e\x0a\x02v1\x12\x08NotAKind\x12\x00".to_vec(),
        deepmsg,
    ] {
        for p in [CMS, "/api/v1/namespaces", DEPLOYS, PODS] {
            out.push(http("protobuf", "POST", p, Some(PROTOBUF), b.clone()));
            out.push(http("protobuf", "PUT", &format!("{p}/x"), Some(PROTOBUF), b.clone()));
        }
    }
}

fn anonymous(out: &mut Vec<Req>) {
    let reqs = [
        ("GET", "/api/v1/namespaces"),
        ("GET", PODS),
        ("GET", "/api"),
        ("GET", "/apis"),
        ("GET", "/openapi/v3"),
        ("POST", CMS),
        ("DELETE", "/api/v1/namespaces/default"),
        ("GET", "/nope"),
        ("PATCH", "/api/v1/namespaces/default/configmaps/cm"),
        ("GET", "/api/v1/namespaces/default/pods?watch=true"),
    ];
    for i in 0..20 {
        for (m, p) in reqs {
            let mut r = http("no-cert", m, p, JSON, if m == "GET" { Vec::new() } else { b"{}".to_vec() });
            if let Req::Http { anon, headers, .. } = &mut r {
                *anon = true;
                if i % 2 == 1 {
                    headers.push(("Authorization".into(), format!("Bearer not-a-token-{i}")));
                }
            }
            out.push(r);
        }
    }
}

fn raw(rng: &mut Rng, out: &mut Vec<Req>) {
    let fixed: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}{}{}".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\n: empty name\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nX: \x00\x01\x02\r\n\r\n".to_vec(),
        b"GET /api/v1/namespaces HTTP/1.1\r\nHost: x\r\nAccept: \x01\r\n\r\n".to_vec(),
        b"POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\x7f\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
        "GET /api/v1/namespaces/default/pods/\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n".as_bytes().to_vec(),
        b"GET /api\x00 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /a\xffb HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET http://evil/api HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\nHost: x\n\n".to_vec(),
        b"GET /api HTTP/1.0\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n".to_vec(),
        b"GET /api HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        b"GET /api/v1/namespaces/default/pods/victim/exec?command=ls HTTP/1.1\r\nHost: x\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        format!("GET /api HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        format!("GET /api HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(200)).into_bytes(),
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
        format!("GET /api/v1/namespaces/default/pods?labelSelector={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(30_000)).into_bytes(),
    ];
    for b in &fixed {
        out.push(Req::Raw { cat: "raw", bytes: b.clone() });
    }
    let valid = b"PATCH /api/v1/namespaces/default/configmaps/cm HTTP/1.1\r\nHost: x\r\nContent-Type: application/merge-patch+json\r\nContent-Length: 2\r\n\r\n{}";
    for _ in 0..200 {
        let mut b = valid.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(b.len());
            match rng.below(3) {
                0 => b[at] = rng.next() as u8,
                1 => {
                    b.remove(at);
                }
                _ => b.insert(at, rng.next() as u8),
            }
        }
        // Terminate the head so that the server answers instead of waiting for more.
        b.extend_from_slice(b"\r\n\r\n");
        out.push(Req::Raw { cat: "raw-mutation", bytes: b });
    }
}

fn generate() -> Vec<Req> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    wrong_types(&mut out);
    bad_json(&mut rng, &mut out);
    bad_yaml(&mut rng, &mut out);
    deep(&mut out);
    huge(&mut out);
    content_types(&mut out);
    selectors(&mut out);
    patches(&mut out);
    queries(&mut out);
    unknown_paths(&mut rng, &mut out);
    methods(&mut out);
    protobuf(&mut rng, &mut out);
    anonymous(&mut out);
    raw(&mut rng, &mut out);
    let fixed = out.len();
    mutations(&mut rng, 10_500usize.saturating_sub(fixed).max(3000), &mut out);
    // Interleave categories across connections.
    for i in (1..out.len()).rev() {
        let j = rng.below(i + 1);
        out.swap(i, j);
    }
    out
}

/// What went wrong with one request.
struct Finding {
    what: String,
    req: Req,
}

#[derive(Default)]
struct Tally {
    by_cat: BTreeMap<&'static str, BTreeMap<String, usize>>,
    findings: Vec<Finding>,
    non_status_raw: usize,
    retries: usize,
    notes: Vec<String>,
}

impl Tally {
    fn count(&mut self, cat: &'static str, outcome: String) {
        *self.by_cat.entry(cat).or_default().entry(outcome).or_default() += 1;
    }
}

fn check_status(r: &Response) -> Result<(), String> {
    if r.status >= 500 {
        return Err(format!("got {} ({})", r.status, r.text()));
    }
    if r.status >= 400 {
        let v: Value =
            r.json().map_err(|e| format!("{} body is not json ({e}): {:?}", r.status, r.text()))?;
        if v["kind"] != "Status" || v["apiVersion"] != "v1" {
            return Err(format!("{} body is not a Status: {v}", r.status));
        }
        if v["code"] != r.status {
            return Err(format!("{} body has code {}: {v}", r.status, v["code"]));
        }
        if v["status"] != "Failure" {
            return Err(format!("{} Status has status {}", r.status, v["status"]));
        }
    }
    Ok(())
}

const TIMEOUT: Duration = Duration::from_secs(20);

async fn worker(client: Client, anon: Client, reqs: Vec<Req>) -> Tally {
    let mut t = Tally::default();
    let mut conn: Option<Connection> = None;
    let mut anon_conn: Option<Connection> = None;
    for req in reqs {
        match &req {
            Req::Raw { cat, bytes } => {
                let mut c = match client.open().await {
                    Ok(c) => c,
                    Err(e) => {
                        t.findings.push(Finding { what: format!("cannot connect: {e}"), req: req.clone() });
                        continue;
                    }
                };
                let res = tokio::time::timeout(Duration::from_secs(10), async {
                    // The server may answer and close before reading all of it.
                    let _ = c.send_raw(bytes).await;
                    c.read_response(false).await
                })
                .await;
                match res {
                    Ok(Ok(r)) => {
                        if r.status >= 500 {
                            t.findings.push(Finding {
                                what: format!("got {}: {}", r.status, r.text()),
                                req: req.clone(),
                            });
                        } else if r.status >= 400 && check_status(&r).is_err() {
                            // The HTTP parser's own answers (before the gateway) carry no Status.
                            t.non_status_raw += 1;
                        }
                        t.count(cat, r.status.to_string());
                    }
                    Ok(Err(_)) => t.count(cat, "closed".into()),
                    Err(_) => {
                        t.count(cat, "no answer in 10 s".into());
                        t.notes.push(format!(
                            "no answer in 10 s (not counted as a failure): {}",
                            req.describe()
                        ));
                    }
                }
            }
            Req::Http { cat, method, path, headers, body, anon: is_anon } => {
                let slot = if *is_anon { &mut anon_conn } else { &mut conn };
                let cl = if *is_anon { &anon } else { &client };
                let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut res;
                let mut attempt = 0;
                loop {
                    let fresh = slot.as_ref().is_none_or(|c| c.is_closed());
                    if fresh {
                        match cl.open().await {
                            Ok(c) => *slot = Some(c),
                            Err(e) => {
                                *slot = None;
                                res = Ok(Err(e));
                                break;
                            }
                        }
                    }
                    let Some(c) = slot.as_mut() else { unreachable!() };
                    res = tokio::time::timeout(TIMEOUT, c.request(method, path, &h, body)).await;
                    // A kept-alive connection the server closed after its previous answer
                    // (actix closes after a request it could not parse), or a connection
                    // reset while the machine is saturated: retry on a fresh connection,
                    // as HTTP clients do. A request that breaks the server (a panic drops
                    // the connection every time) still fails all three attempts.
                    if matches!(res, Ok(Err(_))) && attempt < 2 {
                        attempt += 1;
                        *slot = None;
                        t.retries += 1;
                        continue;
                    }
                    break;
                }
                match res {
                    Ok(Ok(r)) => {
                        if method != "HEAD" {
                            if let Err(what) = check_status(&r) {
                                t.findings.push(Finding { what, req: req.clone() });
                            }
                        } else if r.status >= 500 {
                            t.findings.push(Finding { what: format!("got {}", r.status), req: req.clone() });
                        }
                        // Without credentials a request is system:anonymous, which may only
                        // read the public health and version endpoints (as upstream): every
                        // other request is refused with 403 (or 401 for a bad credential).
                        let public = ["/version", "/healthz", "/livez", "/readyz"]
                            .iter()
                            .any(|p| path.split('?').next() == Some(*p));
                        if *is_anon && !(r.status == 401 || r.status == 403 || public && r.status < 500) {
                            t.findings.push(Finding {
                                what: format!("no-cert request got {}", r.status),
                                req: req.clone(),
                            });
                        }
                        t.count(cat, r.status.to_string());
                    }
                    Ok(Err(e)) => {
                        *slot = None;
                        t.count(cat, "transport error".into());
                        t.findings.push(Finding { what: format!("transport error: {e}"), req: req.clone() });
                    }
                    Err(_) => {
                        *slot = None;
                        t.count(cat, "timeout".into());
                        t.findings
                            .push(Finding { what: format!("no response in {TIMEOUT:?}"), req: req.clone() });
                    }
                }
            }
        }
    }
    t
}

async fn setup(client: &Client) {
    let mut c = client.open().await.expect("connect");
    let fixtures = [
        (PODS, pod("victim")),
        (CMS, configmap("cm")),
        (DEPLOYS, deployment("dep")),
        ("/api/v1/namespaces/default/secrets", secret("sec")),
        ("/api/v1/namespaces/default/services", service("svc")),
        ("/api/v1/namespaces", namespace("fuzz-ns")),
        ("/api/v1/namespaces", namespace("scratch")),
    ];
    for (coll, obj) in fixtures {
        let r = c
            .request("POST", coll, &[("Content-Type", "application/json")], &bytes(&obj))
            .await
            .expect("create fixture");
        assert_eq!(r.status, 201, "creating fixture in {coll}: {}", r.text());
    }
}

#[test]
fn malformed_requests_never_break_the_server() {
    let started = Instant::now();
    let cluster = common::Cluster::start();
    let kc = Kubeconfig::load(&cluster.kubeconfig).expect("load kubeconfig");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let reqs = generate();
    let total = reqs.len();
    assert!(total >= 10_000, "only {total} requests generated");
    let workers = 8;
    let tally = rt.block_on(async {
        let client = Client::new(&kc).expect("client");
        let anon = Client::new(&kc.without_client_cert()).expect("anonymous client");
        setup(&client).await;
        let mut parts: Vec<Vec<Req>> = vec![Vec::new(); workers];
        for (i, r) in reqs.into_iter().enumerate() {
            parts[i % workers].push(r);
        }
        let tasks: Vec<_> =
            parts.into_iter().map(|p| tokio::spawn(worker(client.clone(), anon.clone(), p))).collect();
        let mut all = Tally::default();
        for t in tasks {
            let part = t.await.expect("worker");
            for (cat, m) in part.by_cat {
                for (k, n) in m {
                    *all.by_cat.entry(cat).or_default().entry(k).or_default() += n;
                }
            }
            all.findings.extend(part.findings);
            all.non_status_raw += part.non_status_raw;
            all.retries += part.retries;
            all.notes.extend(part.notes);
        }
        // The server still serves.
        let mut c = client.open().await.expect("connect after the run");
        let r = c.request("GET", "/api/v1/namespaces", &[], b"").await.expect("list namespaces");
        assert_eq!(r.status, 200, "GET /api/v1/namespaces after the run: {}", r.text());
        all
    });
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", cluster.pid())).expect("server process exists");
    let state = status.lines().find(|l| l.starts_with("State:")).unwrap_or("");
    assert!(!state.contains('Z'), "server process is a zombie (it exited): {state}");

    let mut summary = String::new();
    for (cat, m) in &tally.by_cat {
        let _ = writeln!(summary, "  {cat:<16} {m:?}");
    }
    eprintln!(
        "{total} requests in {:.1} s ({} raw answers from the HTTP parser without a Status body, \
         {} retries after the server closed a kept-alive connection)\n{summary}",
        started.elapsed().as_secs_f64(),
        tally.non_status_raw,
        tally.retries
    );
    for n in &tally.notes {
        eprintln!("note: {n}");
    }
    if !tally.findings.is_empty() {
        let mut msg = format!("{} problems:\n", tally.findings.len());
        for f in tally.findings.iter().take(40) {
            let _ = writeln!(msg, "- {}\n  {}\n", f.what, f.req.describe());
        }
        panic!("{msg}");
    }
}
