//! The `pods/eviction` subresource, as upstream's `pkg/registry/core/pod/storage/eviction.go`:
//! a pod covered by a PodDisruptionBudget is deleted only when the budget allows a
//! disruption, and the budget's `status.disruptionsAllowed` is decremented (and the pod
//! recorded in `status.disruptedPods`) in the budget's own resourceVersion-guarded
//! transaction before the pod is deleted, so two concurrent evictions cannot both spend the
//! last allowed disruption. A refused eviction is a 429 with upstream's message; the pod
//! gets the `DisruptionTarget` condition before it is deleted.

use super::{now_rfc3339, ApiService, DeleteOptions, ListOptions, WriteOptions};
use crate::auth::User;
use crate::status::{ApiError, ApiResult, Details};
use capstan_api::disruption as pdbs;
use capstan_api::{meta, registry, ResourceInfo};
use serde_json::{json, Value};

/// More evictions than this recorded and not yet confirmed by the disruption controller
/// refuse further ones (upstream's `MaxDisruptedPodSize`).
const MAX_DISRUPTED_PODS: usize = 2000;

fn kind(group: &str, plural: &str) -> ApiResult<&'static ResourceInfo> {
    registry::find(group, "v1", plural).ok_or_else(|| ApiError::Internal(format!("{plural} not registered")))
}

/// Pods whose eviction disrupts nothing: finished, not yet running, or already deleting.
fn can_ignore_budget(pod: &Value) -> bool {
    matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed" | "Pending")) || pdbs::deleting(pod)
}

fn too_many_requests(cause: String, retry_after: u32) -> ApiError {
    ApiError::TooManyRequestsWith {
        message: pdbs::VIOLATION_MESSAGE.to_string(),
        details: Details {
            causes: vec![(pdbs::DISRUPTION_BUDGET_CAUSE.to_string(), cause, String::new())],
            retry_after_seconds: (retry_after > 0).then_some(retry_after),
            ..Default::default()
        },
    }
}

/// Upstream's `checkAndDecrement` on the stored budget `cur`: the new budget, or why not.
fn check_and_decrement(cur: &Value, pod: &str, now: &str) -> ApiResult<Value> {
    let name = cur["metadata"]["name"].as_str().unwrap_or("");
    let status = &cur["status"];
    let generation = cur["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
        return Err(too_many_requests(
            format!("The disruption budget {name} is still being processed by the server."),
            10,
        ));
    }
    let allowed = status["disruptionsAllowed"].as_i64().unwrap_or(0);
    let forbidden = |why: &str| ApiError::Forbidden {
        message: format!("poddisruptionbudget.policy \"{name}\" is forbidden: {why}"),
        details: Some(Details {
            name: name.to_string(),
            group: "policy".into(),
            kind: "poddisruptionbudget".into(),
            ..Default::default()
        }),
    };
    if allowed < 0 {
        return Err(forbidden("pdb disruptions allowed is negative"));
    }
    if status["disruptedPods"].as_object().is_some_and(|m| m.len() > MAX_DISRUPTED_PODS) {
        return Err(forbidden(
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(too_many_requests(
            format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                status["desiredHealthy"].as_i64().unwrap_or(0),
                status["currentHealthy"].as_i64().unwrap_or(0)
            ),
            0,
        ));
    }
    let mut new = cur.clone();
    new["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        new["status"]["conditions"] = pdbs::conditions(&status["conditions"], 0, generation, now);
    }
    if !new["status"]["disruptedPods"].is_object() {
        new["status"]["disruptedPods"] = json!({});
    }
    new["status"]["disruptedPods"][pod] = json!(now);
    Ok(new)
}

impl ApiService {
    /// `POST pods/<name>/eviction` (authorization is the caller's): deletes the pod unless
    /// that would violate its disruption budget.
    pub async fn evict(&self, namespace: &str, name: &str, body: &Value) -> ApiResult<Value> {
        let pods = kind("", "pods")?;
        let budgets = kind("policy", "poddisruptionbudgets")?;
        if let Some(n) = meta::name(body).filter(|n| !n.is_empty() && *n != name) {
            return Err(ApiError::BadRequest(format!(
                "name in URL does not match name in Eviction object: {name} vs {n}"
            )));
        }
        let mut opts = DeleteOptions::from_json(body.get("deleteOptions"))?;
        let system = User::system();
        let pod = self.get(&system, pods, Some(namespace), name).await?;
        if !can_ignore_budget(&pod) {
            let covering: Vec<_> = self
                .list(&system, budgets, Some(namespace), &ListOptions::default())
                .await?
                .items
                .into_iter()
                .filter(|b| pdbs::selects(b, &pod))
                .collect();
            if covering.len() > 1 {
                return Err(ApiError::Internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
                        .into(),
                ));
            }
            if let Some(pdb) = covering.first() {
                let st = &pdb["status"];
                let unhealthy_may_go = !pdbs::pod_ready(&pod)
                    && (pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
                        || (st["currentHealthy"].as_i64().unwrap_or(0)
                            >= st["desiredHealthy"].as_i64().unwrap_or(0)
                            && st["desiredHealthy"].as_i64().unwrap_or(0) > 0));
                if unhealthy_may_go {
                    // Only the unhealthy pod looked at, not one that became ready since.
                    if opts.precondition_rv.is_none() {
                        opts.precondition_rv = meta::meta_str(&pod, "resourceVersion").map(str::to_string);
                    }
                } else {
                    let pdb_name = meta::name(pdb).unwrap_or("").to_string();
                    let now = now_rfc3339();
                    let wopts = WriteOptions { dry_run: opts.dry_run, ..Default::default() };
                    self.guaranteed_update(
                        &system,
                        budgets,
                        Some(namespace),
                        &pdb_name,
                        Some("status"),
                        &wopts,
                        false,
                        |cur, _| {
                            let Some(cur) = cur else { return Err(ApiError::not_found(budgets, &pdb_name)) };
                            Ok((check_and_decrement(cur, name, &now)?, false))
                        },
                    )
                    .await?;
                }
            }
        }
        if !opts.dry_run {
            self.add_disruption_target(
                pods,
                namespace,
                name,
                "EvictionByEvictionAPI",
                "Eviction API: evicting",
                &mut opts,
            )
            .await?;
        }
        self.delete(&system, pods, Some(namespace), name, &opts).await?;
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
    }

    /// Adds the `DisruptionTarget` condition to a pod about to be deleted; a resourceVersion
    /// precondition in `opts` guards the write and then names the written version.
    pub(crate) async fn add_disruption_target(
        &self,
        pods: &ResourceInfo,
        namespace: &str,
        name: &str,
        reason: &str,
        message: &str,
        opts: &mut DeleteOptions,
    ) -> ApiResult<()> {
        let now = now_rfc3339();
        let precondition = opts.precondition_rv.clone();
        let r = self
            .guaranteed_update(
                &User::system(),
                pods,
                Some(namespace),
                name,
                Some("status"),
                &WriteOptions::default(),
                false,
                |cur, _| {
                    let Some(cur) = cur else { return Err(ApiError::not_found(pods, name)) };
                    let mut new = cur.clone();
                    pdbs::set_pod_condition(&mut new, pdbs::disruption_target(reason, message, &now));
                    if let Some(rv) = &precondition {
                        meta::set_meta_str(&mut new, "resourceVersion", rv);
                    }
                    Ok((new, precondition.is_some()))
                },
            )
            .await?;
        if opts.precondition_rv.is_some() {
            opts.precondition_rv = meta::meta_str(&r.object, "resourceVersion").map(str::to_string);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(status: Value) -> Value {
        json!({"metadata": {"name": "web", "generation": 2}, "status": status})
    }

    #[test]
    fn decrement_spends_one_disruption() {
        let cur = pdb(
            json!({"observedGeneration": 2, "disruptionsAllowed": 1, "currentHealthy": 3, "desiredHealthy": 2}),
        );
        let new = check_and_decrement(&cur, "p1", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(new["status"]["disruptionsAllowed"], 0);
        assert_eq!(new["status"]["disruptedPods"]["p1"], "2026-01-01T00:00:00Z");
        assert_eq!(new["status"]["conditions"][0]["reason"], "InsufficientPods");
        let err = check_and_decrement(&new, "p2", "2026-01-01T00:00:00Z").unwrap_err();
        assert_eq!(err.code(), 429);
        assert_eq!(err.to_string(), "Cannot evict pod as it would violate the pod's disruption budget.");
        let s = err.to_status();
        assert_eq!(s["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert_eq!(
            s["details"]["causes"][0]["message"],
            "The disruption budget web needs 2 healthy pods and has 3 currently"
        );
    }

    #[test]
    fn unobserved_generation_refuses() {
        let cur = pdb(json!({"observedGeneration": 1, "disruptionsAllowed": 5}));
        let s = check_and_decrement(&cur, "p", "t").unwrap_err().to_status();
        assert_eq!(s["code"], 429);
        assert_eq!(s["details"]["retryAfterSeconds"], 10);
        assert_eq!(
            s["details"]["causes"][0]["message"],
            "The disruption budget web is still being processed by the server."
        );
    }
}
