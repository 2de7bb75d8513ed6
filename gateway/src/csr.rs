//! The certificate signers and the node client auto-approver, as upstream's `csrsigning`
//! and `csrapproving` controllers. They run in the gateway, which holds the cluster CA: a
//! write to a CertificateSigningRequest is followed (before the write answers) by
//!
//! * auto-approval of `kubernetes.io/kube-apiserver-client-kubelet` requests for a node
//!   client certificate (`CN=system:node:<name>`, `O=system:nodes`, client auth) when the
//!   requestor may `create` `certificatesigningrequests/nodeclient` (bootstrap tokens) or, for
//!   its own name, `certificatesigningrequests/selfnodeclient` (renewal);
//! * signing of approved requests of the signers capstan runs — `kube-apiserver-client`,
//!   `kube-apiserver-client-kubelet`, `kubelet-serving` — with the cluster CA, for
//!   `expirationSeconds` (at least 10 minutes) capped at one year, or a `Failed` condition
//!   saying why the request does not fit its signer.

use crate::admission::certificates::{requested_organizations, CLIENT_SIGNER, KUBELET_CLIENT_SIGNER};
use crate::auth::{Attributes, Decision, User};
use base64::Engine;
use serde_json::{json, Value};

/// The signer of kubelet serving certificates.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const MAX_SECONDS: i64 = 365 * 24 * 3600;

/// Signs with the cluster CA.
pub struct Signer {
    ca_cert: String,
    ca_key: String,
}

fn usages(obj: &Value) -> Vec<String> {
    obj["spec"]
        .get("usages")
        .and_then(Value::as_array)
        .map(|u| u.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn common_name(params: &rcgen::CertificateParams) -> Option<String> {
    params.distinguished_name.iter().find_map(|(t, v)| match (t, v) {
        (rcgen::DnType::CommonName, rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
        (rcgen::DnType::CommonName, rcgen::DnValue::PrintableString(s)) => Some(s.to_string()),
        _ => None,
    })
}

/// Whether `obj` is a request for a node client certificate.
pub fn is_node_client(obj: &Value) -> Option<String> {
    if obj["spec"].get("signerName").and_then(Value::as_str) != Some(KUBELET_CLIENT_SIGNER) {
        return None;
    }
    let pem = request_pem(obj)?;
    let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).ok()?;
    let cn = common_name(&params.params)?;
    let node = cn.strip_prefix("system:node:")?.to_string();
    let orgs = requested_organizations(obj)?;
    let u = usages(obj);
    let usages_ok =
        u.iter().all(|x| matches!(x.as_str(), "digital signature" | "key encipherment" | "client auth"))
            && u.iter().any(|x| x == "client auth");
    (orgs == ["system:nodes"] && usages_ok && !node.is_empty()).then_some(node)
}

fn request_pem(obj: &Value) -> Option<String> {
    let b64 = obj["spec"].get("request").and_then(Value::as_str)?;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

impl Signer {
    /// A signer with the cluster CA (PEM certificate and key).
    pub fn new(ca_cert: String, ca_key: String) -> Signer {
        Signer { ca_cert, ca_key }
    }

    /// The PEM certificate for an approved request, or why it cannot be issued.
    pub fn sign(&self, obj: &Value) -> Result<String, String> {
        let signer = obj["spec"].get("signerName").and_then(Value::as_str).unwrap_or("");
        let pem = request_pem(obj).ok_or("spec.request is not a base64 PEM certificate request")?;
        let req = rcgen::CertificateSigningRequestParams::from_pem(&pem)
            .map_err(|e| format!("invalid certificate request: {e}"))?;
        let u = usages(obj);
        let cn = common_name(&req.params).unwrap_or_default();
        let orgs = requested_organizations(obj).unwrap_or_default();
        match signer {
            CLIENT_SIGNER => {
                if !u.iter().any(|x| x == "client auth") || u.iter().any(|x| x == "server auth") {
                    return Err("usages must include \"client auth\" and not \"server auth\"".into());
                }
                if orgs.iter().any(|o| o == "system:masters") {
                    return Err("the system:masters group is not issued by this signer".into());
                }
            }
            KUBELET_CLIENT_SIGNER => {
                if is_node_client(obj).is_none() {
                    return Err(
                        "a kubelet client certificate needs CN=system:node:<name>, O=system:nodes and client auth".into()
                    );
                }
            }
            KUBELET_SERVING_SIGNER => {
                if !cn.starts_with("system:node:")
                    || orgs != ["system:nodes"]
                    || !u.iter().any(|x| x == "server auth")
                {
                    return Err(
                        "a kubelet serving certificate needs CN=system:node:<name>, O=system:nodes and server auth".into()
                    );
                }
            }
            other => return Err(format!("signer {other:?} is not run by this cluster")),
        }
        let seconds = obj["spec"]
            .get("expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(MAX_SECONDS)
            .clamp(600, MAX_SECONDS);
        let mut params = req.params.clone();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(seconds);
        params.is_ca = rcgen::IsCa::NoCa;
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = u
            .iter()
            .filter_map(|x| match x.as_str() {
                "client auth" => Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth),
                _ => None,
            })
            .collect();
        let key = rcgen::KeyPair::from_pem(&self.ca_key).map_err(|e| format!("the CA key: {e}"))?;
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&self.ca_cert, key).map_err(|e| format!("the CA: {e}"))?;
        let signing = rcgen::CertificateSigningRequestParams { params, public_key: req.public_key };
        let cert = signing.signed_by(&issuer).map_err(|e| format!("failed to sign: {e}"))?;
        Ok(cert.pem())
    }
}

/// Whether the requestor of a node client request may have it approved automatically.
pub fn auto_approvable(obj: &Value, authorize: impl Fn(&User, &Attributes) -> Decision) -> bool {
    let Some(node) = is_node_client(obj) else { return false };
    let spec = &obj["spec"];
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let username = spec.get("username").and_then(Value::as_str).unwrap_or("").to_string();
    let requestor = User { name: username.clone(), groups, ..User::default() };
    let may = |sub: &str| {
        let a = Attributes {
            verb: "create".into(),
            group: "certificates.k8s.io".into(),
            resource: "certificatesigningrequests".into(),
            subresource: sub.into(),
            namespace: String::new(),
            name: String::new(),
            path: None,
        };
        matches!(authorize(&requestor, &a), Decision::Allow(_))
    };
    if username == format!("system:node:{node}") && may("selfnodeclient") {
        return true;
    }
    may("nodeclient")
}

/// The condition a follow-up adds.
pub fn condition(type_: &str, reason: &str, message: &str) -> Value {
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({"type": type_, "status": "True", "reason": reason, "message": message,
           "lastUpdateTime": now, "lastTransitionTime": now})
}
