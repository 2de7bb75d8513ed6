//! Conversion of custom objects between the versions of their CustomResourceDefinition, as
//! upstream's `apiextensions-apiserver/pkg/apiserver/conversion`.
//!
//! Custom objects are stored in the CRD's storage version. Whatever is served in another
//! version (get, list, watch, the object a write returns) is converted to it, and whatever is
//! written in another version is converted to the storage version before it is stored.
//! Strategy `None` changes only `apiVersion`. Strategy `Webhook` sends the objects that are
//! not already in the desired version — all of a list's or a watch chunk's in one request —
//! as a `ConversionReview` (`apiextensions.k8s.io/v1`: `request.uid`, `desiredAPIVersion`,
//! `objects`) to the CRD's `clientConfig` over HTTPS, with the admission webhooks' client
//! ([`Http`]: `caBundle` as the only trust root, Services resolved to a ready endpoint from
//! the cache), bounded by 30 s. The answer is checked as upstream's `webhookConverter` and
//! `crConverter`: the same `response.uid`, `result.status: Success`, one converted object
//! per object sent, each in the desired `apiVersion` with the same kind, name, namespace and
//! uid; the original metadata is kept, except labels and annotations, which the webhook may
//! change. Every failure is a 500 whose message is upstream's
//! (`conversion webhook for stable.example.com/v1, Kind=CronTab failed: Post "...": ...`,
//! `... returned 1 objects, expected 2`); nothing is stored and nothing half-converted is
//! served.

use crate::admission::webhook::Http;
use crate::admission::Context;
use crate::status::{ApiError, ApiResult};
use capstan_api::registry::ResourceInfo;
use serde_json::{json, Value};
use std::time::Duration;

/// The bound on one conversion call.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Converts custom objects between versions; holds the HTTPS clients of conversion webhooks.
#[derive(Default)]
pub struct Converter {
    http: Http,
}

/// The error every failed conversion gives: a 500 with upstream's message (its status
/// reason is empty, as for any error the API server did not map).
fn failed(message: String) -> ApiError {
    ApiError::Relayed { code: 500, reason: String::new(), message }
}

fn api_version(v: &Value) -> &str {
    v.get("apiVersion").and_then(Value::as_str).unwrap_or("")
}

impl Converter {
    /// A converter with no client yet (one is made per `caBundle` on first use).
    pub fn new() -> Converter {
        Converter::default()
    }

    /// `objs` (objects of the kind of `res`, in any version of its group) in `version`.
    /// Objects already in `version` are returned as they are; built-in kinds are never
    /// converted.
    pub async fn convert(
        &self,
        ctx: &Context,
        res: &ResourceInfo,
        mut objs: Vec<Value>,
        version: &str,
    ) -> ApiResult<Vec<Value>> {
        let Some(custom) = res.custom else { return Ok(objs) };
        let desired = format!("{}/{version}", res.group);
        let todo: Vec<usize> = (0..objs.len()).filter(|&i| api_version(&objs[i]) != desired).collect();
        if todo.is_empty() {
            return Ok(objs);
        }
        let Some(hook) = &custom.conversion else {
            for i in todo {
                if objs[i].is_object() {
                    objs[i]["apiVersion"] = json!(desired);
                }
            }
            return Ok(objs);
        };
        // Upstream names the kind being converted from.
        let from = format!("{}, Kind={}", api_version(&objs[todo[0]]), res.kind);
        let uid = uuid::Uuid::new_v4().to_string();
        let sent: Vec<&Value> = todo.iter().map(|&i| &objs[i]).collect();
        let review_api = format!("apiextensions.k8s.io/{}", hook.review_version);
        let review = json!({
            "kind": "ConversionReview",
            "apiVersion": review_api,
            "request": {"uid": uid, "desiredAPIVersion": desired, "objects": sent},
        });
        let cc = &hook.client_config;
        let call = async {
            let url = self.http.url(ctx, cc).await?;
            self.http.post_https(&url, cc["caBundle"].as_str().unwrap_or(""), TIMEOUT, &review).await
        };
        let body = call.await.map_err(|e| failed(format!("conversion webhook for {from} failed: {e}")))?;
        let converted = response_objects(&body, &review_api, &uid)
            .map_err(|e| failed(format!("conversion webhook for {from} failed: {e}")))?;
        if converted.len() != todo.len() {
            return Err(failed(format!(
                "conversion webhook for {from} returned {} objects, expected {}",
                converted.len(),
                todo.len()
            )));
        }
        for (n, (i, mut out)) in todo.into_iter().zip(converted).enumerate() {
            let invalid = |e: String| {
                failed(format!(
                    "conversion webhook for {from} returned invalid converted object at index {n}: {e}"
                ))
            };
            let original = &objs[i];
            if api_version(&out) != desired {
                return Err(invalid(format!(
                    "invalid groupVersion (expected {desired}, received {})",
                    api_version(&out)
                )));
            }
            if out["kind"] != original["kind"] {
                return Err(invalid(format!(
                    "invalid kind (expected {}, received {})",
                    original["kind"].as_str().unwrap_or(""),
                    out["kind"].as_str().unwrap_or("")
                )));
            }
            for (f, what) in [("name", "name"), ("namespace", "namespace"), ("uid", "UID")] {
                let (e, a) = (&original["metadata"][f], &out["metadata"][f]);
                if e.as_str().unwrap_or("") != a.as_str().unwrap_or("") {
                    return Err(invalid(format!(
                        "must have the same {what}: {} != {}",
                        e.as_str().unwrap_or(""),
                        a.as_str().unwrap_or("")
                    )));
                }
            }
            restore_metadata(original, &mut out).map_err(|e| {
                failed(format!(
                    "conversion webhook for {from} returned invalid metadata in object at index {n}: {e}"
                ))
            })?;
            objs[i] = out;
        }
        Ok(objs)
    }
}

/// The `convertedObjects` of a `ConversionReview` answer, checked as upstream's
/// `getConvertedObjectsFromResponse`.
fn response_objects(body: &[u8], review_api: &str, uid: &str) -> Result<Vec<Value>, String> {
    let review: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let gvk = |api: &str, kind: &str| format!("{api}, Kind={kind}");
    if review_api.ends_with("/v1")
        && (api_version(&review) != review_api || review["kind"].as_str() != Some("ConversionReview"))
    {
        return Err(format!(
            "expected webhook response of {}, got {}",
            gvk(review_api, "ConversionReview"),
            gvk(api_version(&review), review["kind"].as_str().unwrap_or(""))
        ));
    }
    let response = review.get("response").filter(|r| r.is_object()).ok_or("no response provided")?;
    let got = response["uid"].as_str().unwrap_or("");
    if review_api.ends_with("/v1") && got != uid {
        return Err(format!("expected response.uid={uid:?}, got {got:?}"));
    }
    let result = &response["result"];
    if result["status"].as_str() != Some("Success") {
        return Err(match result["message"].as_str().filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => format!(
                "response.result.status was '{}', not 'Success'",
                result["status"].as_str().unwrap_or("")
            ),
        });
    }
    Ok(response["convertedObjects"].as_array().cloned().unwrap_or_default())
}

/// Upstream's `restoreObjectMeta`: the converted object gets the original's metadata, with
/// the labels and annotations the webhook returned (string values only).
fn restore_metadata(original: &Value, converted: &mut Value) -> Result<(), String> {
    let had = original.get("metadata").is_some();
    let Some(cm) = converted.get("metadata").cloned() else {
        return if had { Err("missing metadata in converted object".into()) } else { Ok(()) };
    };
    let Value::Object(cm) = cm else { return Err("invalid metadata of type in converted object".into()) };
    let mut meta = original.get("metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    for f in ["labels", "annotations"] {
        match cm.get(f) {
            None | Some(Value::Null) => {
                meta.remove(f);
            }
            Some(Value::Object(m)) => {
                if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(format!("metadata.{f}[{k}] must be a string in converted object"));
                }
                meta.insert(f.to_string(), Value::Object(m.clone()));
            }
            Some(_) => return Err(format!("invalid metadata.{f} in converted object")),
        }
    }
    converted["metadata"] = Value::Object(meta);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_as_upstream() {
        let ok = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview",
            "response": {"uid": "u1", "result": {"status": "Success"}, "convertedObjects": [{"a": 1}]}});
        let api = "apiextensions.k8s.io/v1";
        assert_eq!(response_objects(ok.to_string().as_bytes(), api, "u1").unwrap(), vec![json!({"a": 1})]);
        assert_eq!(
            response_objects(ok.to_string().as_bytes(), api, "u2").unwrap_err(),
            "expected response.uid=\"u2\", got \"u1\""
        );
        let failed = json!({"apiVersion": api, "kind": "ConversionReview",
            "response": {"uid": "u1", "result": {"status": "Failure", "message": "cannot convert"}}});
        assert_eq!(response_objects(failed.to_string().as_bytes(), api, "u1").unwrap_err(), "cannot convert");
        assert!(response_objects(b"garbage", api, "u1").is_err());
        let wrong = json!({"apiVersion": "v1", "kind": "Status"});
        assert_eq!(
            response_objects(wrong.to_string().as_bytes(), api, "u1").unwrap_err(),
            "expected webhook response of apiextensions.k8s.io/v1, Kind=ConversionReview, got v1, Kind=Status"
        );
    }

    #[test]
    fn metadata_comes_from_the_original_but_labels_from_the_webhook() {
        let original =
            json!({"metadata": {"name": "a", "uid": "1", "labels": {"x": "1"}, "resourceVersion": "5"}});
        let mut out =
            json!({"metadata": {"name": "a", "uid": "1", "labels": {"y": "2"}, "resourceVersion": "9"}});
        restore_metadata(&original, &mut out).unwrap();
        assert_eq!(
            out["metadata"],
            json!({"name": "a", "uid": "1", "labels": {"y": "2"}, "resourceVersion": "5"})
        );
        let mut bad = json!({"metadata": {"labels": {"y": 2}}});
        assert!(restore_metadata(&original, &mut bad).is_err());
        let mut none = json!({"spec": {}});
        assert_eq!(
            restore_metadata(&original, &mut none).unwrap_err(),
            "missing metadata in converted object"
        );
    }
}
