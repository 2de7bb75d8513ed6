//! Rollout arithmetic of the deployment controller, free of I/O: maxSurge/maxUnavailable
//! resolution, the rolling-update scale steps, proportional scaling and the pod template
//! hash. Numbers follow upstream `deployment/util` and `rolling.go`, with one stricter
//! choice: a ReplicaSet counts as `max(spec.replicas, live pods)` towards the surge bound
//! and as `min(available pods, spec.replicas)` towards availability, so a cache that lags
//! behind the ReplicaSet controller can only make a step smaller, never break a bound.

use serde_json::Value;

/// The label that ties a ReplicaSet and its pods to one pod template.
pub const HASH_LABEL: &str = "pod-template-hash";

/// An `IntOrString` of a rolling update: an absolute number or a percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    /// An absolute number of pods.
    Int(i64),
    /// A percentage of the desired replicas.
    Percent(i64),
}

impl IntOrPercent {
    /// Parses `3` or `"25%"` (a missing value gives `default`).
    pub fn parse(v: Option<&Value>, default: IntOrPercent) -> Result<IntOrPercent, String> {
        match v {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => {
                n.as_i64().map(IntOrPercent::Int).ok_or_else(|| format!("invalid value {n}"))
            }
            Some(Value::String(s)) => match s.strip_suffix('%') {
                Some(p) => p.parse().map(IntOrPercent::Percent).map_err(|_| format!("invalid value {s:?}")),
                None => s.parse().map(IntOrPercent::Int).map_err(|_| format!("invalid value {s:?}")),
            },
            Some(other) => Err(format!("invalid value {other}")),
        }
    }

    /// The number of pods for `total` desired replicas, rounding a percentage up or down.
    pub fn scaled(self, total: i64, round_up: bool) -> i64 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let x = p.saturating_mul(total);
                if round_up {
                    x.saturating_add(99).div_euclid(100)
                } else {
                    x.div_euclid(100)
                }
            }
        }
    }
}

/// Resolves `(maxSurge, maxUnavailable)` for `desired` replicas: surge rounds up,
/// unavailable rounds down; when both come out 0, unavailable is 1 (as upstream — an
/// explicit 0/0 is rejected by validation, rounding may still produce it).
pub fn resolve_fenceposts(
    max_surge: Option<&Value>,
    max_unavailable: Option<&Value>,
    desired: i64,
) -> Result<(i64, i64), String> {
    let quarter = IntOrPercent::Percent(25);
    let surge = IntOrPercent::parse(max_surge, quarter)?.scaled(desired, true).max(0);
    let unavailable = IntOrPercent::parse(max_unavailable, quarter)?.scaled(desired, false).max(0);
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

/// What the rollout needs to know about one ReplicaSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// `spec.replicas`.
    pub spec: i64,
    /// Active (non-terminating) pods.
    pub live: i64,
    /// Available pods.
    pub available: i64,
}

impl Counts {
    /// Pods this ReplicaSet may have, now or once its controller caught up.
    pub fn footprint(&self) -> i64 {
        self.spec.max(self.live)
    }

    /// Available pods this ReplicaSet keeps once its controller caught up.
    pub fn kept_available(&self) -> i64 {
        self.available.min(self.spec).max(0)
    }
}

/// The size of the new ReplicaSet in a rolling update (upstream `NewRSNewReplicas`),
/// given every ReplicaSet of the deployment (`all` includes `new`).
pub fn new_rs_target(desired: i64, max_surge: i64, new: Counts, all: &[Counts]) -> i64 {
    if new.spec >= desired {
        return desired;
    }
    let current: i64 = all.iter().map(Counts::footprint).sum();
    let max_total = desired + max_surge;
    if current >= max_total {
        return new.spec;
    }
    let up = (max_total - current).min(desired - new.spec);
    new.spec + up
}

/// The sizes of the old ReplicaSets in a rolling update (`old` sorted oldest first):
/// first unhealthy replicas are removed as far as the new ReplicaSet's unavailable pods
/// allow, then available ones down to `desired - max_unavailable` available pods.
pub fn old_rs_targets(desired: i64, max_unavailable: i64, new: Option<Counts>, old: &[Counts]) -> Vec<i64> {
    let mut targets: Vec<i64> = old.iter().map(|c| c.spec).collect();
    let old_total: i64 = targets.iter().sum();
    if old_total == 0 {
        return targets;
    }
    let new = new.unwrap_or_default();
    let all_pods = old_total + new.spec;
    let min_available = desired - max_unavailable;
    let new_unavailable = (new.spec - new.kept_available()).max(0);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return targets;
    }
    // Unhealthy replicas of old sets go first.
    let mut cleaned = 0;
    for (t, c) in targets.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = *t - c.kept_available();
        if *t == 0 || unhealthy <= 0 {
            continue;
        }
        let k = (max_scaled_down - cleaned).min(unhealthy);
        *t -= k;
        cleaned += k;
    }
    // Then available ones, keeping the minimum available.
    let available: i64 =
        new.kept_available() + targets.iter().zip(old).map(|(t, c)| c.available.min(*t).max(0)).sum::<i64>();
    if available <= min_available {
        return targets;
    }
    let total_down = available - min_available;
    let mut done = 0;
    for t in targets.iter_mut() {
        if done >= total_down {
            break;
        }
        if *t == 0 {
            continue;
        }
        let k = (*t).min(total_down - done);
        *t -= k;
        done += k;
    }
    targets
}

/// How many replicas to add to (or, negative, remove from) one ReplicaSet when a
/// deployment is resized mid-rollout (upstream `GetProportion`). `annotated_max` is the
/// ReplicaSet's `max-replicas` annotation, `fallback_total` the deployment's
/// `status.replicas`.
pub fn proportion(
    rs_spec: i64,
    desired: i64,
    max_surge: i64,
    annotated_max: Option<i64>,
    fallback_total: i64,
    to_add: i64,
    added: i64,
) -> i64 {
    if rs_spec == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = if desired == 0 {
        -rs_spec
    } else {
        let total = desired + max_surge;
        let annotated = annotated_max.unwrap_or(fallback_total);
        if annotated <= 0 {
            0
        } else {
            let size = (rs_spec * total) as f64 / annotated as f64;
            size.round() as i64 - rs_spec
        }
    };
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// A template with nulls, empty maps and empty lists dropped (so two encodings of one
/// template compare and hash alike).
pub fn normalized(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Object(m) => {
            let out: serde_json::Map<String, Value> =
                m.iter().filter_map(|(k, v)| normalized(v).map(|v| (k.clone(), v))).collect();
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(a) => {
            let out: Vec<Value> = a.iter().map(|v| normalized(v).unwrap_or(Value::Null)).collect();
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

fn without_hash_label(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
    }
    normalized(&t).unwrap_or(Value::Null)
}

/// Whether two pod templates are equal, ignoring the `pod-template-hash` label.
pub fn equal_ignore_hash(a: &Value, b: &Value) -> bool {
    without_hash_label(a) == without_hash_label(b)
}

/// The stable hash of a pod template (FNV-1a 32 over its canonical JSON, then the
/// collision count, encoded with the safe alphabet as upstream `ComputeHash`).
pub fn template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let s = crate::controllers::job::workload::canonical_json(&without_hash_label(template));
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(s.as_bytes());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    safe_encode(&h.to_string())
}

/// Maps every byte onto an alphabet without vowels or look-alikes (upstream
/// `rand.SafeEncodeString`).
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fenceposts_round_surge_up_and_unavailable_down() {
        let p = |s: &str| json!(s);
        assert_eq!(resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 5), Ok((2, 1)));
        assert_eq!(resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 4), Ok((1, 1)));
        assert_eq!(resolve_fenceposts(Some(&p("25%")), Some(&p("25%")), 10), Ok((3, 2)));
        assert_eq!(resolve_fenceposts(Some(&p("10%")), Some(&p("10%")), 1), Ok((1, 0)));
        assert_eq!(resolve_fenceposts(Some(&json!(0)), Some(&p("10%")), 5), Ok((0, 1)), "0/0 after rounding");
        assert_eq!(resolve_fenceposts(Some(&json!(3)), Some(&json!(0)), 5), Ok((3, 0)));
        assert_eq!(resolve_fenceposts(None, None, 8), Ok((2, 2)), "defaults are 25%");
        assert_eq!(resolve_fenceposts(Some(&p("100%")), Some(&p("0%")), 3), Ok((3, 0)));
        assert!(resolve_fenceposts(Some(&p("x%")), None, 3).is_err());
        assert_eq!(resolve_fenceposts(Some(&p("2")), None, 3), Ok((2, 0)));
    }

    #[test]
    fn new_rs_grows_within_surge() {
        let c = |spec, live, available| Counts { spec, live, available };
        // 5 old, surge 2: the new set may get 2.
        let old = c(5, 5, 5);
        let new = c(0, 0, 0);
        assert_eq!(new_rs_target(5, 2, new, &[old, new]), 2);
        // An old set whose pods are not yet deleted still counts.
        let old = c(3, 5, 5);
        let new = c(2, 2, 0);
        assert_eq!(new_rs_target(5, 2, new, &[old, new]), 2);
        let old = c(3, 3, 3);
        assert_eq!(new_rs_target(5, 2, new, &[old, new]), 4);
        // Never beyond desired.
        assert_eq!(new_rs_target(5, 10, c(4, 4, 4), &[c(4, 4, 4)]), 5);
        assert_eq!(new_rs_target(5, 2, c(7, 7, 7), &[c(7, 7, 7)]), 5);
    }

    #[test]
    fn old_rs_scale_down_keeps_minimum_available() {
        let c = |spec, live, available| Counts { spec, live, available };
        // 5 available old, 2 unavailable new, maxUnavailable 1: remove 1.
        assert_eq!(old_rs_targets(5, 1, Some(c(2, 2, 0)), &[c(5, 5, 5)]), vec![4]);
        // Unhealthy old pods go even when availability is at the minimum.
        assert_eq!(old_rs_targets(5, 1, Some(c(2, 2, 2)), &[c(5, 5, 2)]), vec![2]);
        // Nothing available anywhere: stuck (as upstream) after the first cleanup.
        assert_eq!(old_rs_targets(5, 1, Some(c(3, 3, 0)), &[c(4, 4, 0)]), vec![4]);
        // Oldest first.
        assert_eq!(old_rs_targets(4, 0, Some(c(4, 4, 4)), &[c(1, 1, 1), c(2, 2, 2)]), vec![0, 0]);
    }

    /// Runs a whole rolling update in steps, as controller, ReplicaSets and kubelets would,
    /// and checks the bounds after every step.
    fn simulate(desired: i64, surge: i64, unavailable: i64) -> usize {
        let mut old = Counts { spec: desired, live: desired, available: desired };
        let mut new = Counts::default();
        let mut steps = 0;
        while !(new.spec == desired && new.available == desired && old.live == 0) {
            steps += 1;
            assert!(steps < 1000, "rollout did not finish");
            let t = new_rs_target(desired, surge, new, &[old, new]);
            if t != new.spec {
                new.spec = t;
                new.live = t; // created, not yet available
                new.available = new.available.min(t);
            } else {
                let targets = old_rs_targets(desired, unavailable, Some(new), &[old]);
                if targets[0] != old.spec {
                    old.spec = targets[0];
                    // The ReplicaSet controller deletes unavailable pods first.
                    old.live = old.spec;
                    old.available = old.available.min(old.spec);
                } else {
                    // Nothing to do: the pods become available.
                    new.available = new.live;
                    old.available = old.live;
                }
            }
            let live = old.live + new.live;
            let available = old.available + new.available;
            assert!(live <= desired + surge, "{live} pods > {desired}+{surge}");
            assert!(available >= desired - unavailable, "{available} available < {desired}-{unavailable}");
        }
        steps
    }

    #[test]
    fn rolling_update_steps_stay_within_bounds() {
        for desired in [1, 2, 3, 5, 10, 20] {
            for (s, u) in [("25%", "25%"), ("0", "1"), ("1", "0"), ("50%", "0%"), ("100%", "100%")] {
                let (surge, unavailable) =
                    resolve_fenceposts(Some(&json!(s)), Some(&json!(u)), desired).expect("valid");
                simulate(desired, surge, unavailable);
            }
        }
    }

    #[test]
    fn proportional_scaling() {
        // 10 replicas (+3 surge) split 8 old / 5 new, scaled to 20 (+5): add 12.
        let (desired, surge) = (20, 5);
        let to_add = 12;
        let a = proportion(8, desired, surge, Some(13), 13, to_add, 0);
        let b = proportion(5, desired, surge, Some(13), 13, to_add, a);
        assert_eq!((a, b), (7, 5));
        // Scaling to zero removes everything.
        assert_eq!(proportion(4, 0, 0, Some(5), 5, -4, 0), -4);
        assert_eq!(proportion(0, 10, 3, Some(13), 13, 5, 0), 0);
    }

    #[test]
    fn template_hash_is_stable_and_ignores_encoding() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert!(h.len() <= 10 && h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{h}");
        // Key order, nulls, empty maps and our own label do not matter.
        let same = json!({"spec": {"containers": [{"image": "nginx", "name": "c"}]},
            "metadata": {"creationTimestamp": null, "annotations": {}, "labels": {"app": "web", HASH_LABEL: h}}});
        assert_eq!(template_hash(&same, None), h);
        assert!(equal_ignore_hash(&t, &same));
        let other = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:2"}]}});
        assert_ne!(template_hash(&other, None), h);
        assert!(!equal_ignore_hash(&t, &other));
        assert_ne!(template_hash(&t, Some(1)), h, "the collision count changes the hash");
        assert_eq!(safe_encode("0123"), "4567");
    }
}
