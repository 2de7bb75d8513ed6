//! CertificateSigningRequests, as upstream's CSR strategy and the CertificateApproval,
//! CertificateSigning and CertificateSubjectRestriction plugins: the requestor's identity
//! is recorded from the request (not from the body); approving or denying needs the
//! `approve` verb on the signer (`signers` in `certificates.k8s.io`, named by signerName or
//! `<domain>/*`); writing the certificate needs `sign`; a request for a certificate in
//! `system:masters` from the `kubernetes.io/kube-apiserver-client` signer is refused; the
//! approval subresource changes only conditions, the status subresource only the certificate.

use super::{Attributes, Context, Operation, Outcome, Plugin};
use crate::auth::{Attributes as AuthAttributes, Authorizer, Decision};
use crate::status::{ApiError, ApiResult};
use base64::Engine;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::sync::Arc;

/// The signer of end-user client certificates.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// The signer of node client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// The CSR plugin.
pub struct Certificates {
    authorizer: Arc<dyn Authorizer>,
}

impl Certificates {
    /// The plugin, checking `approve` and `sign` with `authorizer`.
    pub fn new(authorizer: Arc<dyn Authorizer>) -> Certificates {
        Certificates { authorizer }
    }

    fn may(&self, a: &Attributes<'_>, verb: &str, signer: &str) -> bool {
        let wildcard = signer.split_once('/').map(|(d, _)| format!("{d}/*")).unwrap_or_default();
        [signer.to_string(), wildcard].iter().any(|name| {
            let attrs = AuthAttributes {
                verb: verb.into(),
                group: "certificates.k8s.io".into(),
                resource: "signers".into(),
                subresource: String::new(),
                namespace: String::new(),
                name: name.clone(),
                path: None,
            };
            matches!(self.authorizer.authorize(a.user, &attrs), Decision::Allow(_))
        })
    }
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj["status"].get("conditions").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn approved(c: &[Value]) -> bool {
    c.iter().any(|c| c.get("type").and_then(Value::as_str) == Some("Approved"))
}

/// The organizations of the PEM certificate request in `spec.request` (base64).
pub fn requested_organizations(obj: &Value) -> Option<Vec<String>> {
    let b64 = obj["spec"].get("request").and_then(Value::as_str)?;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let pem = String::from_utf8(pem).ok()?;
    let params = rcgen::CertificateSigningRequestParams::from_pem(&pem).ok()?;
    let orgs = params
        .params
        .distinguished_name
        .iter()
        .filter_map(|(t, v)| match (t, v) {
            (rcgen::DnType::OrganizationName, rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
            (rcgen::DnType::OrganizationName, rcgen::DnValue::PrintableString(s)) => Some(s.to_string()),
            _ => None,
        })
        .collect();
    Some(orgs)
}

impl Plugin for Certificates {
    fn name(&self) -> &'static str {
        "CertificateApproval"
    }

    fn admit<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a mut Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.res.group != "certificates.k8s.io" || a.res.kind != "CertificateSigningRequest" {
                return Ok(());
            }
            match (a.operation, a.subresource) {
                (Operation::Create, None) => {
                    let u = a.user;
                    obj["spec"]["username"] = json!(u.name);
                    obj["spec"]["groups"] = json!(u.groups);
                    if u.uid.is_empty() {
                        if let Some(s) = obj["spec"].as_object_mut() {
                            s.remove("uid");
                        }
                    } else {
                        obj["spec"]["uid"] = json!(u.uid);
                    }
                    if u.extra.is_empty() {
                        if let Some(s) = obj["spec"].as_object_mut() {
                            s.remove("extra");
                        }
                    } else {
                        obj["spec"]["extra"] = json!(u.extra);
                    }
                }
                (Operation::Update, Some("approval")) => {
                    // Only the conditions change through approval.
                    let cert = a.old.and_then(|o| o["status"].get("certificate")).cloned();
                    match cert {
                        Some(c) => obj["status"]["certificate"] = c,
                        None => {
                            if let Some(s) = obj.get_mut("status").and_then(Value::as_object_mut) {
                                s.remove("certificate");
                            }
                        }
                    }
                }
                (Operation::Update, Some("status")) => {
                    // Approval and denial are not made through status.
                    let old = a.old.map(conditions).unwrap_or_default();
                    let keep: Vec<Value> = old
                        .into_iter()
                        .filter(|c| {
                            matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied"))
                        })
                        .collect();
                    let mut new: Vec<Value> = conditions(obj)
                        .into_iter()
                        .filter(|c| {
                            !matches!(c.get("type").and_then(Value::as_str), Some("Approved" | "Denied"))
                        })
                        .collect();
                    new.extend(keep);
                    obj["status"]["conditions"] = json!(new);
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a Attributes<'a>,
        obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.res.group != "certificates.k8s.io" || a.res.kind != "CertificateSigningRequest" {
                return Ok(());
            }
            let signer = obj["spec"].get("signerName").and_then(Value::as_str).unwrap_or("");
            match (a.operation, a.subresource) {
                (Operation::Create, None) => {
                    if signer == CLIENT_SIGNER
                        && requested_organizations(obj)
                            .is_some_and(|o| o.iter().any(|g| g == "system:masters"))
                    {
                        return Err(ApiError::forbidden(
                            a.res,
                            a.name,
                            &format!(
                                "use of {CLIENT_SIGNER} signer with system:masters group is not allowed"
                            ),
                        ));
                    }
                    Ok(())
                }
                (Operation::Update, Some("approval")) => {
                    let before = a.old.map(conditions).unwrap_or_default();
                    if conditions(obj) != before && !self.may(a, "approve", signer) {
                        return Err(ApiError::forbidden(
                            a.res,
                            a.name,
                            &format!("user not permitted to approve requests with signerName \"{signer}\""),
                        ));
                    }
                    let c = conditions(obj);
                    let approved =
                        c.iter().any(|c| c.get("type").and_then(Value::as_str) == Some("Approved"));
                    let denied = c.iter().any(|c| c.get("type").and_then(Value::as_str) == Some("Denied"));
                    if approved && denied {
                        return Err(ApiError::invalid(
                            a.res.kind,
                            a.res.group,
                            a.name,
                            vec![capstan_api::Cause::invalid(
                                "status.conditions",
                                "Invalid value: \"Denied\": Approved and Denied conditions are mutually exclusive",
                            )],
                        ));
                    }
                    Ok(())
                }
                (Operation::Update, Some("status")) => {
                    let old_cert = a.old.and_then(|o| o["status"].get("certificate")).cloned();
                    let new_cert = obj["status"].get("certificate").cloned();
                    if new_cert != old_cert {
                        if !self.may(a, "sign", signer) {
                            return Err(ApiError::forbidden(
                                a.res,
                                a.name,
                                &format!("user not permitted to sign requests with signerName \"{signer}\""),
                            ));
                        }
                        if !approved(&conditions(obj)) {
                            return Err(ApiError::invalid(
                                a.res.kind,
                                a.res.group,
                                a.name,
                                vec![capstan_api::Cause::invalid(
                                    "status.certificate",
                                    "Invalid value: \"<certificate data>\": certificate can only be set once the request is approved",
                                )],
                            ));
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }
}
