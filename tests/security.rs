//! Authentication and authorization with the real kubectl against `capstan up`: who can
//! do what, with which credential, as upstream answers it.

mod common;

use capstan_gateway::tokens::TokenSigner;
use common::{wait_for, Cluster};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A credential a kubeconfig can carry.
enum Cred<'a> {
    /// The admin client certificate of the harness.
    Admin,
    /// No credential at all.
    Anonymous,
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and key (PEM files).
    Cert(&'a Path, &'a Path),
}

struct Env {
    c: Cluster,
    /// Static token of alice (group ops) from the token file.
    alice: String,
    /// The audit log.
    audit: PathBuf,
}

fn kubeconfig(c: &Cluster, name: &str, cred: &Cred) -> PathBuf {
    let ca = c.dir.path().join("pki/ca.crt");
    let user = match cred {
        Cred::Admin => unreachable!("the harness's kubeconfig is used for the admin"),
        Cred::Anonymous => "{}".to_string(),
        Cred::Token(t) => format!("{{token: \"{t}\"}}"),
        Cred::Cert(crt, key) => {
            format!("{{client-certificate: \"{}\", client-key: \"{}\"}}", crt.display(), key.display())
        }
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\n\
         users: [{{name: u, user: {user}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
        c.url,
        ca.display()
    );
    c.file(&format!("{name}.kubeconfig"), &text)
}

fn run(c: &Cluster, cred: &Cred, args: &[&str]) -> Output {
    match cred {
        Cred::Admin => c.kubectl(args),
        // kubectl prompts for a user name when a kubeconfig has no credential at all; an
        // anonymous client is curl (only `get --raw PATH` is asked of it here).
        Cred::Anonymous => {
            let path = args.last().copied().unwrap_or("/");
            let out = std::process::Command::new("curl")
                .args(["-sS", "--cacert"])
                .arg(c.dir.path().join("pki/ca.crt"))
                .args(["-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("{}{path}", c.url))
                .output()
                .expect("curl runs");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            let mut o = std::process::Command::new("true").output().expect("true runs");
            if code != "200" {
                o = std::process::Command::new("false").output().expect("false runs");
                o.stderr = match code.as_str() {
                    "401" => b"(Unauthorized)".to_vec(),
                    "403" => b"(Forbidden)".to_vec(),
                    other => format!("HTTP {other}").into_bytes(),
                };
            }
            o
        }
        other => {
            let kc = kubeconfig(c, &format!("k{}", std::process::id()), other);
            let mut all = vec!["--kubeconfig", kc.to_str().unwrap_or("")];
            all.extend_from_slice(args);
            // The harness adds its own --kubeconfig first; the last one wins in kubectl.
            c.kubectl(&all)
        }
    }
}

/// What kubectl reports for a request: "ok", "401", "403", or the stderr.
fn outcome(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        "ok".into()
    } else if err.contains("(Unauthorized)") {
        "401".into()
    } else if err.contains("(Forbidden)") || err.contains(" is forbidden: ") {
        "403".into()
    } else {
        err.trim().to_string()
    }
}

fn start() -> Env {
    let tokens = tempfile::tempdir().expect("temp dir");
    let alice = "alice-static-token-0123456789".to_string();
    let file = tokens.path().join("tokens.csv");
    std::fs::write(&file, format!("{alice},alice,uid-alice,\"ops,dev-team\"\n")).expect("write token file");
    let config = tokens.path().join("capstan.yaml");
    let audit = tokens.path().join("audit.log");
    std::fs::write(&config, format!("tokenFile: {}\naudit:\n  path: {}\n", file.display(), audit.display()))
        .expect("write config");
    let c = Cluster::start_with(&["--config", config.to_str().unwrap_or("")]);
    // The cluster keeps its own data dir; the token file is read at start.
    std::mem::forget(tokens);
    c.ok(&["create", "namespace", "dev"]);
    c.ok(&["create", "serviceaccount", "bot", "-n", "dev"]);
    c.ok(&["create", "configmap", "allowed-cm", "--from-literal=a=b", "-n", "dev"]);
    c.ok(&["create", "configmap", "other-cm", "--from-literal=a=b", "-n", "dev"]);
    let rbac = c.file(
        "rbac.yaml",
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader, namespace: dev}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [""], resources: [configmaps], resourceNames: [allowed-cm], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects:
- {kind: ServiceAccount, name: bot, namespace: dev}
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: node-viewer}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [list]}
- {nonResourceURLs: ["/metrics"], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ops-view-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: node-viewer}
subjects: [{kind: Group, name: ops, apiGroup: rbac.authorization.k8s.io}]
"#,
    );
    c.ok(&["apply", "-f", rbac.to_str().unwrap_or("")]);
    c.ok(&["run", "web", "--image=busybox", "-n", "dev"]);
    Env { c, alice, audit }
}

/// A client certificate and key for `cn`/`org`, signed by `issuer` (or self-signed by a
/// new CA when `issuer` is None), valid from `not_before` to `not_after` (years).
fn client_cert(
    dir: &Path,
    name: &str,
    issuer: Option<(&str, &str)>,
    years: (i32, i32),
) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, "mallory");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
    params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = match issuer {
        Some((ca_pem, ca_key_pem)) => {
            let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).expect("ca key");
            let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("issuer");
            params.signed_by(&key, &issuer).expect("sign")
        }
        None => {
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.distinguished_name.push(rcgen::DnType::CommonName, "capstan-ca");
            let ca_key = rcgen::KeyPair::generate().expect("key");
            let ca_cert = ca.self_signed(&ca_key).expect("ca");
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).expect("issuer");
            params.signed_by(&key, &issuer).expect("sign")
        }
    };
    let (crt, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&crt, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (crt, k)
}

#[test]
fn authn_authz_matrix() {
    let Env { c, alice, audit } = start();
    let dir = c.dir.path().to_path_buf();
    let ca = std::fs::read_to_string(dir.join("pki/ca.crt")).expect("ca");
    let ca_key = std::fs::read_to_string(dir.join("pki/ca.key")).expect("ca key");
    let (foreign_crt, foreign_key) = client_cert(&dir, "foreign", None, (2024, 2035));
    let (expired_crt, expired_key) = client_cert(&dir, "expired", Some((&ca, &ca_key)), (2020, 2021));
    let (future_crt, future_key) = client_cert(&dir, "future", Some((&ca, &ca_key)), (2090, 2091));
    let sa_token = c.ok(&["create", "token", "bot", "-n", "dev"]).trim().to_string();
    // Tokens made outside the API with the cluster's own key (expired) and with another key.
    let signer = TokenSigner::load_or_create(&dir.join("pki"), ISSUER).expect("signer");
    let sa_uid = c.ok(&["get", "sa", "bot", "-n", "dev", "-o", "jsonpath={.metadata.uid}"]);
    let (expired_token, _) =
        signer.issue("dev", "bot", &sa_uid, &[], -7200, None, None, None).expect("issue");
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other = TokenSigner::load_or_create(other_dir.path(), ISSUER).expect("signer");
    let (foreign_token, _) = other.issue("dev", "bot", &sa_uid, &[], 3600, None, None, None).expect("issue");

    let anonymous = Cred::Anonymous;
    let sa = Cred::Token(&sa_token);
    let alice_c = Cred::Token(&alice);
    let bad_creds = [
        ("foreign-CA certificate", Cred::Cert(&foreign_crt, &foreign_key)),
        ("expired certificate", Cred::Cert(&expired_crt, &expired_key)),
        ("not-yet-valid certificate", Cred::Cert(&future_crt, &future_key)),
        ("garbage token", Cred::Token("garbage")),
        ("expired token", Cred::Token(&expired_token)),
        ("token of another key", Cred::Token(&foreign_token)),
    ];
    for (what, cred) in &bad_creds {
        for args in [&["get", "pods", "-n", "dev"][..], &["get", "--raw", "/api"][..]] {
            assert_eq!(outcome(&run(&c, cred, args)), "401", "{what} {args:?}");
        }
    }

    // (who, request, expected) — as upstream answers each cell.
    let cells: Vec<(&str, &Cred, Vec<&str>, &str)> = vec![
        ("anonymous", &anonymous, vec!["get", "--raw", "/version"], "ok"),
        ("anonymous", &anonymous, vec!["get", "--raw", "/healthz"], "ok"),
        ("anonymous", &anonymous, vec!["get", "--raw", "/apis"], "403"),
        ("anonymous", &anonymous, vec!["get", "--raw", "/api/v1/namespaces/dev/pods"], "403"),
        ("anonymous", &anonymous, vec!["get", "--raw", "/api/v1/nodes"], "403"),
        ("sa", &sa, vec!["get", "pods", "-n", "dev"], "ok"),
        ("sa", &sa, vec!["get", "pods", "-n", "default"], "403"),
        ("sa", &sa, vec!["get", "pods", "-A"], "403"),
        ("sa", &sa, vec!["delete", "pod", "web", "-n", "dev"], "403"),
        ("sa", &sa, vec!["get", "secrets", "-n", "dev"], "403"),
        ("sa", &sa, vec!["get", "cm", "allowed-cm", "-n", "dev"], "ok"),
        ("sa", &sa, vec!["get", "cm", "other-cm", "-n", "dev"], "403"),
        ("sa", &sa, vec!["get", "--raw", "/api/v1/namespaces/dev/pods/web/log"], "403"),
        ("sa", &sa, vec!["get", "--raw", "/apis"], "ok"),
        ("sa", &sa, vec!["get", "--raw", "/openid/v1/jwks"], "ok"),
        ("sa", &sa, vec!["get", "nodes"], "403"),
        ("alice", &alice_c, vec!["get", "pods", "-n", "dev"], "ok"),
        ("alice", &alice_c, vec!["get", "nodes"], "ok"),
        ("alice", &alice_c, vec!["get", "--raw", "/openid/v1/jwks"], "403"),
        ("alice", &alice_c, vec!["get", "pods", "-n", "dev", "--as=bob"], "403"),
        ("admin as alice", &Cred::Admin, vec!["get", "pods", "-n", "dev", "--as=alice"], "ok"),
        ("admin as alice", &Cred::Admin, vec!["get", "secrets", "-n", "dev", "--as=alice"], "403"),
        ("admin as alice in ops", &Cred::Admin, vec!["get", "nodes", "--as=alice", "--as-group=ops"], "ok"),
        ("admin as alice, no group", &Cred::Admin, vec!["get", "nodes", "--as=alice"], "403"),
        (
            "admin as the bot",
            &Cred::Admin,
            vec!["get", "pods", "-n", "dev", "--as=system:serviceaccount:dev:bot"],
            "ok",
        ),
    ];
    let mut wrong = Vec::new();
    for (who, cred, args, want) in &cells {
        let o = run(&c, cred, args);
        let got = outcome(&o);
        if got != *want {
            wrong.push(format!("{who} {args:?}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "cells that differ from upstream:\n{}", wrong.join("\n"));

    // Upstream's wording of a denial.
    let denied = run(&c, &sa, &["get", "pods", "-n", "default"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains(
            "pods is forbidden: User \"system:serviceaccount:dev:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let imp = run(&c, &alice_c, &["get", "pods", "-n", "dev", "--as=bob"]);
    assert!(
        String::from_utf8_lossy(&imp.stderr).contains("User \"alice\" cannot impersonate resource \"users\""),
        "{}",
        String::from_utf8_lossy(&imp.stderr)
    );
    // Given the impersonate verb, alice may act as bob (who may do nothing).
    c.ok(&["create", "clusterrole", "impersonator", "--verb=impersonate", "--resource=users"]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "alice-impersonates",
        "--clusterrole=impersonator",
        "--user=alice",
    ]);
    assert_eq!(outcome(&run(&c, &alice_c, &["get", "pods", "-n", "dev", "--as=bob"])), "403");
    let as_bob =
        run(&c, &alice_c, &["auth", "whoami", "--as=bob", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&as_bob.stdout), "bob", "{}", String::from_utf8_lossy(&as_bob.stderr));

    // The audit log: one entry per request, with user, verb, URI and response code.
    let marker = format!("audit-check-{}", std::process::id());
    let requests = [
        ("/api/v1/namespaces/dev/pods", "list", 200),
        ("/api/v1/namespaces/default/pods/nope", "get", 403),
        ("/api/v1/namespaces/dev/pods/web", "get", 200),
    ];
    for (path, _, _) in &requests {
        let status = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--cacert"])
            .arg(dir.join("pki/ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {sa_token}"), "-A", &marker])
            .arg(format!("{}{path}", c.url))
            .status()
            .expect("curl runs");
        assert!(status.success());
    }
    let entries = wait_for("the audit entries of three requests", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let mine: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["userAgent"] == marker.as_str())
            .collect();
        (mine.len() >= requests.len()).then_some(mine)
    });
    assert_eq!(entries.len(), requests.len(), "one entry per request: {entries:?}");
    for (e, (path, verb, code)) in entries.iter().zip(requests) {
        assert_eq!(e["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(e["user"]["username"], "system:serviceaccount:dev:bot");
        assert_eq!(e["verb"], verb);
        assert_eq!(e["requestURI"], path);
        assert_eq!(e["responseStatus"]["code"], code);
        assert_eq!(e["stage"], "ResponseComplete");
    }
    // An impersonated request names both users.
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    let impersonated = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|e| e["impersonatedUser"]["username"] == "bob" && e["user"]["username"] == "alice");
    assert!(impersonated, "no entry of alice acting as bob");
}

#[test]
fn can_i_list_whoami_and_escalation() {
    let Env { c, alice, .. } = start();
    let list = c.ok(&["auth", "can-i", "--list", "--as=system:serviceaccount:dev:bot", "-n", "dev"]);
    let rows: Vec<&str> = list.lines().collect();
    assert!(rows.iter().any(|r| r.starts_with("pods ") && r.contains("[get list]")), "{list}");
    assert!(rows.iter().any(|r| r.starts_with("configmaps ") && r.contains("[allowed-cm]")), "{list}");
    assert!(!list.contains("*.*"), "nothing beyond what the RoleBinding and the defaults grant:\n{list}");
    assert!(!rows.iter().any(|r| r.starts_with("secrets")), "{list}");
    let elsewhere = c.ok(&["auth", "can-i", "--list", "--as=system:serviceaccount:dev:bot", "-n", "default"]);
    assert!(!elsewhere.lines().any(|r| r.starts_with("pods ")), "{elsewhere}");
    assert_eq!(
        c.ok(&["auth", "can-i", "list", "pods", "-n", "dev", "--as=system:serviceaccount:dev:bot"]).trim(),
        "yes"
    );
    let no =
        c.kubectl(&["auth", "can-i", "list", "pods", "-n", "default", "--as=system:serviceaccount:dev:bot"]);
    assert_eq!(String::from_utf8_lossy(&no.stdout).trim(), "no");

    // The aggregated default roles carry their members' rules (edit ← view ← aggregate-to-view).
    wait_for("admin's aggregated rules", Duration::from_secs(10), || {
        let rules = c.ok(&["get", "clusterrole", "admin", "-o", "jsonpath={.rules[*].resources}"]);
        (rules.contains("deployments") && rules.contains("rolebindings") && rules.contains("pods/log"))
            .then_some(())
    });

    // whoami, for the admin certificate and for a ServiceAccount token.
    let me = c.ok(&["auth", "whoami"]);
    assert!(me.contains("admin") && me.contains("system:masters"), "{me}");
    let token = c.ok(&["create", "token", "bot", "-n", "dev"]).trim().to_string();
    let bot = run(&c, &Cred::Token(&token), &["auth", "whoami"]);
    let bot_out = String::from_utf8_lossy(&bot.stdout);
    assert!(
        bot_out.contains("system:serviceaccount:dev:bot"),
        "{bot_out}{}",
        String::from_utf8_lossy(&bot.stderr)
    );
    assert!(bot_out.contains("system:serviceaccounts:dev"), "{bot_out}");

    // Escalation: alice may manage RoleBindings in dev but not hand out cluster-admin.
    c.ok(&["create", "role", "binder", "--verb=create,get,list", "--resource=rolebindings", "-n", "dev"]);
    c.ok(&["create", "rolebinding", "alice-binds", "--role=binder", "--user=alice", "-n", "dev"]);
    let alice_c = Cred::Token(&alice);
    let esc = run(
        &c,
        &alice_c,
        &["create", "rolebinding", "power", "--clusterrole=cluster-admin", "--user=alice", "-n", "dev"],
    );
    assert_eq!(outcome(&esc), "403");
    let msg = String::from_utf8_lossy(&esc.stderr);
    assert!(msg.contains("is attempting to grant RBAC permissions not currently held"), "{msg}");
    // Binding a role whose permissions alice holds is fine.
    assert_eq!(
        outcome(&run(
            &c,
            &alice_c,
            &["create", "rolebinding", "share", "--role=reader", "--user=carol", "-n", "dev"]
        )),
        "ok"
    );
    // A Role granting more than its creator holds is refused the same way.
    c.ok(&["create", "role", "role-maker", "--verb=create", "--resource=roles", "-n", "dev"]);
    c.ok(&["create", "rolebinding", "alice-makes-roles", "--role=role-maker", "--user=alice", "-n", "dev"]);
    let big = run(&c, &alice_c, &["create", "role", "big", "--verb=*", "--resource=secrets", "-n", "dev"]);
    assert_eq!(outcome(&big), "403", "{}", String::from_utf8_lossy(&big.stderr));
    // With `bind` on cluster-admin, the binding is allowed.
    c.ok(&[
        "create",
        "clusterrole",
        "bind-admin",
        "--verb=bind",
        "--resource=clusterroles",
        "--resource-name=cluster-admin",
    ]);
    c.ok(&[
        "create",
        "rolebinding",
        "alice-may-bind",
        "--clusterrole=bind-admin",
        "--user=alice",
        "-n",
        "dev",
    ]);
    assert_eq!(
        outcome(&run(
            &c,
            &alice_c,
            &["create", "rolebinding", "power", "--clusterrole=cluster-admin", "--user=alice", "-n", "dev"]
        )),
        "ok"
    );
    assert_eq!(outcome(&run(&c, &alice_c, &["get", "secrets", "-n", "dev"])), "ok");
}

#[test]
fn tokens_die_with_what_they_are_bound_to() {
    let Env { c, .. } = start();
    // A token bound to a pod works while the pod exists.
    let uid = c.ok(&["get", "pod", "web", "-n", "dev", "-o", "jsonpath={.metadata.uid}"]);
    let req = format!(
        r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{{"boundObjectRef":{{"apiVersion":"v1","kind":"Pod","name":"web","uid":"{uid}"}}}}}}"#
    );
    let file = c.file("tokenrequest.json", &req);
    let out = c.ok(&[
        "create",
        "--raw",
        "/api/v1/namespaces/dev/serviceaccounts/default/token",
        "-f",
        file.to_str().unwrap_or(""),
    ]);
    let token = serde_json::from_str::<serde_json::Value>(&out).expect("json")["status"]["token"]
        .as_str()
        .expect("token")
        .to_string();
    let bound = Cred::Token(&token);
    assert_eq!(outcome(&run(&c, &bound, &["auth", "whoami"])), "ok");
    c.ok(&["delete", "pod", "web", "-n", "dev", "--wait=true"]);
    wait_for("the bound token to stop working", Duration::from_secs(10), || {
        (outcome(&run(&c, &bound, &["auth", "whoami"])) == "401").then_some(())
    });
    // A wrong uid in the reference is a conflict, as upstream.
    let bad = req.replace(&uid, "not-the-uid");
    c.ok(&["run", "web", "--image=busybox", "-n", "dev"]);
    let file = c.file("bad.json", &bad);
    let e = c.fails(&[
        "create",
        "--raw",
        "/api/v1/namespaces/dev/serviceaccounts/default/token",
        "-f",
        file.to_str().unwrap_or(""),
    ]);
    assert!(e.contains("does not match the UID in record"), "{e}");

    // A legacy token Secret: filled on create, dead once the Secret is gone.
    let secret = c.file(
        "sa-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bot-token, namespace: dev, annotations: {kubernetes.io/service-account.name: bot}}\ntype: kubernetes.io/service-account-token\n",
    );
    c.ok(&["apply", "-f", secret.to_str().unwrap_or("")]);
    let b64 = c.ok(&["get", "secret", "bot-token", "-n", "dev", "-o", "jsonpath={.data.token}"]);
    use base64::Engine;
    let legacy =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64.trim()).expect("base64"))
            .expect("utf8");
    let legacy_c = Cred::Token(&legacy);
    assert_eq!(outcome(&run(&c, &legacy_c, &["get", "pods", "-n", "dev"])), "ok");
    c.ok(&["delete", "secret", "bot-token", "-n", "dev"]);
    wait_for("the legacy token to stop working", Duration::from_secs(10), || {
        (outcome(&run(&c, &legacy_c, &["get", "pods", "-n", "dev"])) == "401").then_some(())
    });
    // Deleting the ServiceAccount kills its tokens too.
    let token = c.ok(&["create", "token", "bot", "-n", "dev"]).trim().to_string();
    let t = Cred::Token(&token);
    assert_eq!(outcome(&run(&c, &t, &["get", "pods", "-n", "dev"])), "ok");
    c.ok(&["delete", "sa", "bot", "-n", "dev"]);
    wait_for("the ServiceAccount's token to stop working", Duration::from_secs(10), || {
        (outcome(&run(&c, &t, &["get", "pods", "-n", "dev"])) == "401").then_some(())
    });
}

#[test]
fn a_node_credential_reaches_only_its_node_and_pods() {
    let Env { c, .. } = start();
    let dir = c.dir.path().to_path_buf();
    let ca = std::fs::read_to_string(dir.join("pki/ca.crt")).expect("ca");
    let ca_key = std::fs::read_to_string(dir.join("pki/ca.key")).expect("ca key");
    let (crt, key) =
        capstan_gateway::pki::issue_client_cert(&ca, &ca_key, "system:node:a", &["system:nodes"])
            .expect("node certificate");
    let (crt_p, key_p) = (dir.join("node-a.crt"), dir.join("node-a.key"));
    std::fs::write(&crt_p, crt).expect("write");
    std::fs::write(&key_p, key).expect("write");
    let node_a = Cred::Cert(&crt_p, &key_p);
    for n in ["a", "b"] {
        let node = c.file(
            &format!("node-{n}.yaml"),
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {n}}}\n"),
        );
        c.ok(&["apply", "-f", node.to_str().unwrap_or("")]);
    }
    c.ok(&["create", "secret", "generic", "used-by-a", "--from-literal=k=v", "-n", "dev"]);
    c.ok(&["create", "secret", "generic", "used-by-b", "--from-literal=k=v", "-n", "dev"]);
    for (pod, node, secret) in [("on-a", "a", "used-by-a"), ("on-b", "b", "used-by-b")] {
        let f = c.file(
            &format!("{pod}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: dev}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox, env: [{{name: S, valueFrom: {{secretKeyRef: {{name: {secret}, key: k}}}}}}]}}]\n"
            ),
        );
        c.ok(&["apply", "-f", f.to_str().unwrap_or("")]);
    }
    let cells: Vec<(Vec<&str>, &str)> = vec![
        (vec!["label", "node", "a", "mine=yes"], "ok"),
        (vec!["label", "node", "b", "mine=yes"], "403"),
        (vec!["get", "nodes"], "ok"),
        (vec!["get", "secret", "used-by-a", "-n", "dev"], "ok"),
        (vec!["get", "secret", "used-by-b", "-n", "dev"], "403"),
        (vec!["get", "secrets", "-n", "dev"], "403"),
        (vec!["get", "pods", "-A"], "ok"),
        (vec!["delete", "pod", "on-b", "-n", "dev", "--wait=false"], "403"),
        (vec!["create", "namespace", "made-by-a-node"], "403"),
        (vec!["get", "lease", "b", "-n", "kube-node-lease"], "403"),
    ];
    let mut wrong = Vec::new();
    for (args, want) in &cells {
        let got = outcome(&run(&c, &node_a, args));
        if got != *want {
            wrong.push(format!("node a {args:?}: want {want}, got {got}"));
        }
    }
    // Pod status: its own pod's, not another node's.
    let status = c.file("status.json", r#"{"status":{"conditions":[{"type":"Ready","status":"False"}]}}"#);
    let patch = |pod: &str| {
        outcome(&run(
            &c,
            &node_a,
            &[
                "patch",
                "pod",
                pod,
                "-n",
                "dev",
                "--subresource=status",
                "--type=merge",
                "--patch-file",
                status.to_str().unwrap_or(""),
            ],
        ))
    };
    if patch("on-a") != "ok" {
        wrong.push("node a patching the status of its own pod".into());
    }
    if patch("on-b") != "403" {
        wrong.push("node a patching the status of node b's pod".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let msg = run(&c, &node_a, &["label", "node", "b", "mine=yes"]);
    assert!(
        String::from_utf8_lossy(&msg.stderr).contains("node \"a\" is not allowed to modify node \"b\""),
        "{}",
        String::from_utf8_lossy(&msg.stderr)
    );
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn secrets_are_ciphertext_on_disk_and_on_the_bus() {
    let nats = common::nats::Nats::start();
    let mut c = Cluster::start_with(&["--nats", &nats.url()]);
    let value = format!("s3cr3t-value-{}", std::process::id());
    c.ok(&["create", "secret", "generic", "db", &format!("--from-literal=password={value}")]);
    // Also through apply, whose last-applied annotation repeats the data.
    let applied = format!("applied-{value}");
    let f = c.file(
        "secret.yaml",
        &format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: applied}}\nstringData: {{password: {applied}}}\n"),
    );
    c.ok(&["apply", "-f", f.to_str().unwrap_or("")]);
    std::fs::remove_file(&f).expect("remove the manifest, which holds the value");
    assert_eq!(c.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]).trim(), {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&value)
    });
    // Wait until the events of both Secrets are in JetStream, then search every byte.
    let rv = c.ok(&["get", "secret", "applied", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let rv: u64 = rv.trim().parse().expect("resourceVersion");
    wait_for("the Secret events on the stream", Duration::from_secs(20), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            use capstan_bus::Bus;
            use futures::StreamExt;
            let bus = capstan_bus::NatsBus::connect(capstan_bus::NatsConfig::new(nats.url())).await.ok()?;
            let mut s = bus
                .events("capstan.v1.events.core.secrets.>".into(), capstan_bus::StartAt::AfterRevision(0))
                .await
                .ok()?;
            loop {
                let item = tokio::time::timeout(Duration::from_secs(2), s.next()).await.ok()??;
                if let capstan_bus::StreamItem::Event { revision, payload, .. } = item {
                    let env = capstan_bus::EventEnvelope::from_bytes(&payload).ok()?;
                    assert!(
                        env.object.get("data").is_none(),
                        "a Secret event carries its data: {}",
                        env.object
                    );
                    assert_eq!(env.object["metadata"]["annotations"]["capstan.io/data-redacted"], "true");
                    if revision >= rv {
                        return Some(());
                    }
                }
            }
        })
    });
    for needle in [value.as_bytes(), applied.as_bytes()] {
        let found = files_containing(c.dir.path(), needle);
        assert!(found.is_empty(), "plaintext in the data directory: {found:?}");
        let found = files_containing(nats.store_dir(), needle);
        assert!(found.is_empty(), "plaintext in the JetStream store: {found:?}");
    }
    // Rotation: a new key first, the old one still listed; old Secrets read, and once
    // re-encrypted at start the old key can go.
    let cfg_path = c.dir.path().join("encryption.yaml");
    let cfg = std::fs::read_to_string(&cfg_path).expect("encryption.yaml");
    let rotated = cfg.replace(
        "      keys:\n",
        "      keys:\n      - name: key2\n        secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    assert_ne!(rotated, cfg);
    let rv_of =
        |c: &Cluster, s: &str| c.ok(&["get", "secret", s, "-o", "jsonpath={.metadata.resourceVersion}"]);
    let before: Vec<String> = ["db", "applied"].iter().map(|s| rv_of(&c, s)).collect();
    std::fs::write(&cfg_path, &rotated).expect("write");
    c.restart();
    assert_eq!(c.ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]).trim(), {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&value)
    });
    c.ok(&["create", "secret", "generic", "after-rotation", "--from-literal=k=v"]);
    let key1_gone: String = rotated
        .lines()
        .scan(false, |skip, l| {
            // Drop key1's two lines.
            if l.trim_start().starts_with("- name: key1") {
                *skip = true;
                return Some(None);
            }
            if *skip {
                *skip = false;
                return Some(None);
            }
            Some(Some(format!("{l}\n")))
        })
        .flatten()
        .collect();
    assert!(!key1_gone.contains("key1"), "{key1_gone}");
    // The restart above re-encrypts the Secrets in the background (a write each, so their
    // resourceVersions move): wait for both, then key1 can go.
    wait_for("every Secret to be re-encrypted with key2", Duration::from_secs(20), || {
        let now: Vec<String> = ["db", "applied"].iter().map(|s| rv_of(&c, s)).collect();
        now.iter().zip(&before).all(|(n, b)| n != b).then_some(())
    });
    std::fs::write(&cfg_path, &key1_gone).expect("write");
    c.restart();
    for s in ["db", "applied", "after-rotation"] {
        c.ok(&["get", "secret", s]);
    }
}

/// A key and a base64 PEM certificate request for `cn` in `orgs`.
fn certificate_request(cn: &str, orgs: &[&str]) -> (String, String) {
    use base64::Engine;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    for o in orgs {
        params.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = params.serialize_request(&key).expect("csr");
    (key.serialize_pem(), base64::engine::general_purpose::STANDARD.encode(csr.pem().expect("pem")))
}

fn csr_manifest(name: &str, request: &str, signer: &str) -> String {
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\n\
         spec:\n  request: {request}\n  signerName: {signer}\n  expirationSeconds: 86400\n  usages: [digital signature, key encipherment, client auth]\n"
    )
}

/// The issued certificate of a CSR, once there.
fn issued(c: &Cluster, name: &str) -> String {
    use base64::Engine;
    let b64 = wait_for(&format!("the certificate of {name}"), Duration::from_secs(10), || {
        let out = c.ok(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
        (!out.trim().is_empty()).then(|| out.trim().to_string())
    });
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).expect("base64")).expect("pem")
}

#[test]
fn certificates_through_the_csr_api() {
    let Env { c, .. } = start();
    let dir = c.dir.path().to_path_buf();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    // A node joins with a bootstrap token: its node client certificate request is approved
    // and signed at once.
    let token_secret = c.file(
        "bootstrap.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bootstrap-token-abcdef, namespace: kube-system}\n\
         type: bootstrap.kubernetes.io/token\nstringData: {token-id: abcdef, token-secret: 0123456789abcdef, usage-bootstrap-authentication: \"true\"}\n",
    );
    c.ok(&["apply", "-f", token_secret.to_str().unwrap_or("")]);
    let bootstrap = Cred::Token("abcdef.0123456789abcdef");
    let who = run(&c, &bootstrap, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        "system:bootstrap:abcdef",
        "{}",
        String::from_utf8_lossy(&who.stderr)
    );
    assert_eq!(outcome(&run(&c, &Cred::Token("abcdef.ffffffffffffffff"), &["auth", "whoami"])), "401");
    let (node_key, node_req) = certificate_request("system:node:n9", &["system:nodes"]);
    let m = write(
        "node-csr.yaml",
        &csr_manifest("node-n9", &node_req, "kubernetes.io/kube-apiserver-client-kubelet"),
    );
    assert_eq!(outcome(&run(&c, &bootstrap, &["create", "-f", m.to_str().unwrap_or("")])), "ok");
    let cert = issued(&c, "node-n9");
    let listed = c.ok(&["get", "csr", "node-n9"]);
    assert!(listed.contains("Approved,Issued") && listed.contains("system:bootstrap:abcdef"), "{listed}");
    let (crt, key) = (write("n9.crt", &cert), write("n9.key", &node_key));
    let node = Cred::Cert(&crt, &key);
    let me = run(&c, &node, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&me.stdout), "system:node:n9");
    let n9 = c.file("n9.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: n9}\n");
    assert_eq!(outcome(&run(&c, &node, &["create", "-f", n9.to_str().unwrap_or("")])), "ok");
    let other = c.file("n10.yaml", "apiVersion: v1\nkind: Node\nmetadata: {name: n10}\n");
    assert_eq!(outcome(&run(&c, &node, &["create", "-f", other.to_str().unwrap_or("")])), "403");

    // A user certificate: pending until `kubectl certificate approve`.
    let (jane_key, jane_req) = certificate_request("jane", &["dev-team"]);
    let m = write("jane-csr.yaml", &csr_manifest("jane", &jane_req, "kubernetes.io/kube-apiserver-client"));
    c.ok(&["create", "-f", m.to_str().unwrap_or("")]);
    assert!(c.ok(&["get", "csr", "jane"]).contains("Pending"));
    // Alice may not approve it.
    let alice = Cred::Token("alice-static-token-0123456789");
    assert_eq!(outcome(&run(&c, &alice, &["certificate", "approve", "jane"])), "403");
    c.ok(&["certificate", "approve", "jane"]);
    let cert = issued(&c, "jane");
    let (crt, key) = (write("jane.crt", &cert), write("jane.key", &jane_key));
    let jane =
        run(&c, &Cred::Cert(&crt, &key), &["auth", "whoami", "-o", "jsonpath={.status.userInfo.groups}"]);
    let groups = String::from_utf8_lossy(&jane.stdout);
    assert!(groups.contains("dev-team"), "{groups}{}", String::from_utf8_lossy(&jane.stderr));
    // Denied: no certificate.
    let (_, req) = certificate_request("joe", &[]);
    let m = write("joe-csr.yaml", &csr_manifest("joe", &req, "kubernetes.io/kube-apiserver-client"));
    c.ok(&["create", "-f", m.to_str().unwrap_or("")]);
    c.ok(&["certificate", "deny", "joe"]);
    assert!(c.ok(&["get", "csr", "joe"]).contains("Denied"));
    assert!(c.ok(&["get", "csr", "joe", "-o", "jsonpath={.status.certificate}"]).trim().is_empty());
    // Nobody gets system:masters from this signer.
    let (_, req) = certificate_request("mallory", &["system:masters"]);
    let m = write("mallory-csr.yaml", &csr_manifest("mallory", &req, "kubernetes.io/kube-apiserver-client"));
    let e = c.fails(&["create", "-f", m.to_str().unwrap_or("")]);
    assert!(e.contains("system:masters group is not allowed"), "{e}");
}

#[test]
fn pod_security_admission_enforces_and_warns() {
    let Env { c, .. } = start();
    c.ok(&["create", "namespace", "locked"]);
    c.ok(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"]);
    c.ok(&["create", "namespace", "watched"]);
    c.ok(&["label", "namespace", "watched", "pod-security.kubernetes.io/warn=baseline"]);
    let pod = |ns: &str| {
        c.file(
            &format!("priv-{ns}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: priv, namespace: {ns}}}\nspec:\n  containers: [{{name: c, image: busybox, securityContext: {{privileged: true}}}}]\n"
            ),
        )
    };
    let e = c.fails(&["apply", "-f", pod("locked").to_str().unwrap_or("")]);
    assert!(
        e.contains("pods \"priv\" is forbidden: violates PodSecurity \"restricted:latest\": privileged (container \"c\" must not set securityContext.privileged=true)"),
        "{e}"
    );
    let out = c.kubectl(&["apply", "-f", pod("watched").to_str().unwrap_or("")]);
    assert!(out.status.success());
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(warn.contains("Warning: would violate PodSecurity \"baseline:latest\": privileged"), "{warn}");
    // A restricted-conformant pod is admitted in the locked namespace.
    let ok = c.file(
        "restricted.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: fine, namespace: locked}\nspec:\n  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}\n",
    );
    c.ok(&["apply", "-f", ok.to_str().unwrap_or("")]);
    // Tightening a namespace warns about the pods already there.
    let tighten =
        c.kubectl(&["label", "namespace", "watched", "pod-security.kubernetes.io/enforce=baseline"]);
    let w = String::from_utf8_lossy(&tighten.stderr);
    assert!(
        w.contains("existing pods in namespace \"watched\" violate the new PodSecurity enforce level"),
        "{w}"
    );
    let bad = c.fails(&[
        "label",
        "namespace",
        "watched",
        "pod-security.kubernetes.io/enforce=strictest",
        "--overwrite",
    ]);
    assert!(bad.contains("Invalid value: \"strictest\""), "{bad}");
}
