//! Server-side apply: merges an applied configuration into the live object, tracks field
//! ownership in `metadata.managedFields`, and reports conflicts between managers.
//!
//! Field sets use upstream's `FieldsV1` encoding: `f:<name>` for a field, `k:{...}` for
//! an item of a keyed list (keys from the list-map keys of [`crate::patch::list_strategy`]),
//! `v:<json>` for a value of a set list, and `.` for an item that is itself a member.
//! Internally an object is flattened into a map from field path to leaf value; ownership,
//! changes and conflicts are computed on those paths.

use crate::patch::{atomic_map, list_strategy, ListStrategy, MAX_DEPTH};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A conflict: `manager` owns `field` (e.g. `.spec.replicas`) with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The field path as upstream prints it (`.spec.replicas`).
    pub field: String,
    /// The apiVersion the owner used.
    pub api_version: String,
}

/// The outcome of an apply.
#[derive(Debug)]
pub enum ApplyError {
    /// Conflicts with other managers (answered with 409 and one cause each).
    Conflicts(Vec<Conflict>),
    /// The applied configuration is not usable.
    Invalid(String),
}

// ---------------------------------------------------------------------------------------
// Field paths.

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pe {
    /// `f:name`.
    Field(String),
    /// `i:3` (only read from existing entries).
    Index(u64),
    /// `k:{"name":"x"}`: the canonical JSON of the key fields.
    Key(String),
    /// `v:"x"`: the JSON of a set value.
    Val(String),
}

impl Pe {
    fn encode(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Index(i) => format!("i:{i}"),
            Pe::Key(k) => format!("k:{k}"),
            Pe::Val(v) => format!("v:{v}"),
        }
    }

    fn decode(s: &str) -> Option<Pe> {
        if let Some(f) = s.strip_prefix("f:") {
            return Some(Pe::Field(f.to_string()));
        }
        if let Some(i) = s.strip_prefix("i:") {
            return i.parse().ok().map(Pe::Index);
        }
        if let Some(k) = s.strip_prefix("k:") {
            let v: Value = serde_json::from_str(k).ok()?;
            return Some(Pe::Key(canonical_key(v.as_object()?)));
        }
        if let Some(v) = s.strip_prefix("v:") {
            let v: Value = serde_json::from_str(v).ok()?;
            return Some(Pe::Val(v.to_string()));
        }
        None
    }
}

type FPath = Vec<Pe>;

/// A path as upstream prints it: `.spec.containers[name="nginx"].image`.
fn path_string(path: &[Pe]) -> String {
    let mut out = String::new();
    for pe in path {
        match pe {
            Pe::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Pe::Index(i) => out.push_str(&format!("[{i}]")),
            Pe::Key(k) => {
                let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
            Pe::Val(v) => out.push_str(&format!("[={v}]")),
        }
    }
    out
}

/// `{"a":1,"b":"x"}` with keys sorted, whatever serde_json's map ordering.
fn canonical_key(m: &Map<String, Value>) -> String {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> =
        entries.iter().map(|(k, v)| format!("{}:{}", Value::String((*k).clone()), v)).collect();
    format!("{{{}}}", body.join(","))
}

/// The identity of an item of a keyed list, or `None` when it lacks the merge key.
fn item_key(item: &Value, ssa_keys: &[&str]) -> Option<String> {
    let obj = item.as_object()?;
    let mut key = Map::new();
    for (i, k) in ssa_keys.iter().enumerate() {
        match obj.get(*k) {
            Some(v) if !v.is_null() => {
                key.insert((*k).to_string(), v.clone());
            }
            // Upstream defaults the protocol of ports, which is part of their key.
            _ if *k == "protocol" => {
                key.insert((*k).to_string(), Value::String("TCP".into()));
            }
            _ if i == 0 => return None,
            _ => {}
        }
    }
    Some(canonical_key(&key))
}

// ---------------------------------------------------------------------------------------
// Flattening an object into owned paths.

/// A flattened leaf: a value, or the presence of a list item / set value.
#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Value(Value),
    Node,
}

type Flat = BTreeMap<FPath, Leaf>;

const IGNORED_TOP: [&str; 3] = ["apiVersion", "kind", "status"];
const IGNORED_META: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

struct Schema<'a> {
    group: &'a str,
    kind: &'a str,
}

impl Schema<'_> {
    fn strategy(&self, names: &[String]) -> ListStrategy {
        let p: Vec<&str> = names.iter().map(String::as_str).collect();
        list_strategy(self.group, self.kind, &p)
    }

    fn atomic_map(&self, names: &[String]) -> bool {
        let p: Vec<&str> = names.iter().map(String::as_str).collect();
        atomic_map(self.group, self.kind, &p)
    }

    fn ignored(names: &[String], k: &str) -> bool {
        match names {
            [] => IGNORED_TOP.contains(&k),
            [m] if m == "metadata" => IGNORED_META.contains(&k),
            _ => false,
        }
    }

    fn flatten(&self, obj: &Value) -> Flat {
        let mut out = Flat::new();
        if let Value::Object(m) = obj {
            self.walk_map(m, &mut Vec::new(), &mut Vec::new(), &mut out, 0);
        }
        out
    }

    fn walk_map(
        &self,
        m: &Map<String, Value>,
        path: &mut FPath,
        names: &mut Vec<String>,
        out: &mut Flat,
        depth: usize,
    ) {
        for (k, v) in m {
            if v.is_null() || Self::ignored(names, k) {
                continue;
            }
            path.push(Pe::Field(k.clone()));
            names.push(k.clone());
            self.walk_value(v, path, names, out, depth + 1);
            names.pop();
            path.pop();
        }
    }

    fn walk_value(&self, v: &Value, path: &mut FPath, names: &mut Vec<String>, out: &mut Flat, depth: usize) {
        if depth >= MAX_DEPTH {
            out.insert(path.clone(), Leaf::Value(v.clone()));
            return;
        }
        match v {
            Value::Object(m) if !m.is_empty() && !self.atomic_map(names) => {
                self.walk_map(m, path, names, out, depth);
            }
            Value::Array(items) if !items.is_empty() => match self.strategy(names) {
                ListStrategy::Keyed { ssa_keys, .. }
                    if items.iter().all(|i| item_key(i, ssa_keys).is_some()) =>
                {
                    for item in items {
                        let (Some(key), Some(m)) = (item_key(item, ssa_keys), item.as_object()) else {
                            continue;
                        };
                        path.push(Pe::Key(key));
                        out.insert(path.clone(), Leaf::Node);
                        self.walk_map(m, path, names, out, depth + 1);
                        path.pop();
                    }
                }
                ListStrategy::Set if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    for item in items {
                        path.push(Pe::Val(item.to_string()));
                        out.insert(path.clone(), Leaf::Node);
                        path.pop();
                    }
                }
                _ => {
                    out.insert(path.clone(), Leaf::Value(v.clone()));
                }
            },
            _ => {
                out.insert(path.clone(), Leaf::Value(v.clone()));
            }
        }
    }

    /// Merges `applied` into `live`: maps recursively, keyed lists by key, set lists as
    /// sets, everything else replaced.
    fn merge(
        &self,
        live: &Value,
        applied: &Value,
        names: &mut Vec<String>,
        depth: usize,
    ) -> Result<Value, ApplyError> {
        if depth > MAX_DEPTH {
            return Err(ApplyError::Invalid(format!(
                "applied configuration is nested more than {MAX_DEPTH} levels deep"
            )));
        }
        match (live, applied) {
            (Value::Object(lm), Value::Object(am)) if !self.atomic_map(names) => {
                let mut out = lm.clone();
                for (k, av) in am {
                    if av.is_null() || (names.is_empty() && k == "status") {
                        continue;
                    }
                    if names.len() == 1 && names[0] == "metadata" && k == "managedFields" {
                        continue;
                    }
                    let merged = match lm.get(k) {
                        Some(lv) => {
                            names.push(k.clone());
                            let r = self.merge(lv, av, names, depth + 1);
                            names.pop();
                            r?
                        }
                        None => av.clone(),
                    };
                    out.insert(k.clone(), merged);
                }
                Ok(Value::Object(out))
            }
            (Value::Array(li), Value::Array(ai)) => match self.strategy(names) {
                ListStrategy::Keyed { ssa_keys, .. }
                    if ai.iter().all(|i| item_key(i, ssa_keys).is_some()) =>
                {
                    let mut out = li.clone();
                    for item in ai {
                        let key = item_key(item, ssa_keys);
                        match out.iter().position(|l| item_key(l, ssa_keys) == key) {
                            Some(i) => out[i] = self.merge(&out[i], item, names, depth + 1)?,
                            None => out.push(item.clone()),
                        }
                    }
                    Ok(Value::Array(out))
                }
                ListStrategy::Set => {
                    let mut out = li.clone();
                    for item in ai {
                        if !out.contains(item) {
                            out.push(item.clone());
                        }
                    }
                    Ok(Value::Array(out))
                }
                _ => Ok(applied.clone()),
            },
            _ => Ok(applied.clone()),
        }
    }

    /// Removes the field at `path` from `obj`, if present.
    fn remove(&self, obj: &mut Value, path: &[Pe]) {
        let mut names: Vec<String> = Vec::new();
        let mut cur = obj;
        for (i, pe) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            match pe {
                Pe::Field(f) => {
                    let Value::Object(m) = cur else { return };
                    if last {
                        m.remove(f);
                        return;
                    }
                    names.push(f.clone());
                    let Some(next) = m.get_mut(f) else { return };
                    cur = next;
                }
                Pe::Index(_) => return,
                Pe::Key(k) => {
                    let ListStrategy::Keyed { ssa_keys, .. } = self.strategy(&names) else {
                        return;
                    };
                    let Value::Array(items) = cur else { return };
                    let Some(pos) = items.iter().position(|it| item_key(it, ssa_keys).as_deref() == Some(k))
                    else {
                        return;
                    };
                    if last {
                        items.remove(pos);
                        return;
                    }
                    cur = &mut items[pos];
                }
                Pe::Val(v) => {
                    let Value::Array(items) = cur else { return };
                    if last {
                        items.retain(|it| serde_json::to_string(it).ok().as_deref() != Some(v.as_str()));
                    }
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// managedFields entries.

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: BTreeSet<FPath>,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), Value::String(self.manager.clone()));
        m.insert("operation".into(), Value::String(self.operation.clone()));
        m.insert("apiVersion".into(), Value::String(self.api_version.clone()));
        m.insert("time".into(), Value::String(self.time.clone()));
        m.insert("fieldsType".into(), Value::String("FieldsV1".into()));
        m.insert("fieldsV1".into(), encode_fields(&self.fields));
        if let Some(s) = &self.subresource {
            m.insert("subresource".into(), Value::String(s.clone()));
        }
        Value::Object(m)
    }
}

#[derive(Default)]
struct Node {
    member: bool,
    children: BTreeMap<Pe, Node>,
}

impl Node {
    fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, child) in &self.children {
            m.insert(pe.encode(), child.to_json());
        }
        Value::Object(m)
    }
}

fn encode_fields(fields: &BTreeSet<FPath>) -> Value {
    let mut root = Node::default();
    for path in fields {
        let mut node = &mut root;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        node.member = true;
    }
    root.to_json()
}

fn decode_fields(v: &Value, path: &mut FPath, out: &mut BTreeSet<FPath>, depth: usize) {
    let Value::Object(m) = v else { return };
    if depth > 2 * MAX_DEPTH {
        return;
    }
    for (k, child) in m {
        if k == "." {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            continue;
        }
        let Some(pe) = Pe::decode(k) else { continue };
        path.push(pe);
        match child {
            Value::Object(cm) if !cm.is_empty() => decode_fields(child, path, out, depth + 1),
            _ => {
                out.insert(path.clone());
            }
        }
        path.pop();
    }
}

fn parse_entries(obj: &Value) -> Vec<Entry> {
    let Some(items) = obj.get("metadata").and_then(|m| m.get("managedFields")).and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let s = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    items
        .iter()
        .filter(|e| e.is_object())
        .map(|e| {
            let mut fields = BTreeSet::new();
            if let Some(f) = e.get("fieldsV1") {
                decode_fields(f, &mut Vec::new(), &mut fields, 0);
            }
            Entry {
                manager: s(e, "manager"),
                operation: s(e, "operation"),
                api_version: s(e, "apiVersion"),
                time: s(e, "time"),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                fields,
            }
        })
        .collect()
}

fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (&a.manager, &a.operation, &a.subresource).cmp(&(&b.manager, &b.operation, &b.subresource))
    });
    if entries.is_empty() {
        crate::meta::remove_meta(obj, "managedFields");
        return;
    }
    if let Some(m) = crate::meta::metadata_mut(obj) {
        m.insert("managedFields".into(), Value::Array(entries.iter().map(Entry::to_json).collect()));
    }
}

/// Whether `set` holds `p` or a path below it (paths below `p` sort right after it).
fn owns_at_or_below(set: &BTreeSet<FPath>, p: &FPath) -> bool {
    set.range(p.clone()..).next().is_some_and(|q| q.starts_with(p))
}

/// Whether `p` names a key field of a keyed list item (`k:{"name":"x"}` then `f:name`),
/// which lives as long as the item does.
fn is_key_field(p: &[Pe]) -> bool {
    match p {
        [.., Pe::Key(k), Pe::Field(f)] => k.contains(&format!("{}:", Value::String(f.clone()))),
        _ => false,
    }
}

fn group_kind(obj: &Value) -> (String, String) {
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let (group, _) = crate::registry::split_api_version(api_version);
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
    (group.to_string(), kind.to_string())
}

/// Whether `v` nests at most `limit` levels deep (checked without recursion).
fn depth_within(v: &Value, limit: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        if d > limit {
            return false;
        }
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// Apply and update.

/// Applies `applied` for `manager` onto `live` (None: create). `now` is an RFC 3339 time
/// for `managedFields[].time`. Returns the merged object with updated `managedFields`.
///
/// Fields set in `applied` are set; fields this manager applied before but no longer
/// lists are removed unless another manager owns them; changing a field another manager
/// owns is a conflict unless `force`, which moves the ownership.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
    group: &str,
    kind: &str,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::Invalid("applied configuration must be a json object".into()));
    }
    if manager.is_empty() {
        return Err(ApplyError::Invalid("fieldManager is required for apply requests".into()));
    }
    if !depth_within(applied, MAX_DEPTH) {
        return Err(ApplyError::Invalid(format!(
            "applied configuration is nested more than {MAX_DEPTH} levels deep"
        )));
    }
    let schema = Schema { group, kind };
    let applied_flat = schema.flatten(applied);
    let applied_set: BTreeSet<FPath> = applied_flat.keys().cloned().collect();
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .or_else(|| live.and_then(|l| l.get("apiVersion")).and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let mut own = Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: now.to_string(),
        subresource: None,
        fields: applied_set.clone(),
    };

    let Some(live) = live else {
        let mut obj = applied.clone();
        crate::meta::remove_meta(&mut obj, "managedFields");
        write_entries(&mut obj, vec![own]);
        return Ok(obj);
    };

    let mut entries = parse_entries(live);
    let previous_at = entries.iter().position(|e| e.is(manager, "Apply"));
    let previous_time = previous_at.map(|i| entries[i].time.clone());
    let previous: BTreeSet<FPath> = previous_at.map(|i| entries[i].fields.clone()).unwrap_or_default();
    if let Some(i) = previous_at {
        entries.remove(i);
    }
    let others: BTreeSet<FPath> = entries.iter().flat_map(|e| e.fields.iter().cloned()).collect();

    let mut merged = schema.merge(live, applied, &mut Vec::new(), 0)?;
    // Fields this manager no longer applies, and nobody else owns, go away. Deepest
    // first, so that removing a list item does not hide its fields.
    let dropped: BTreeSet<&FPath> = previous
        .iter()
        .filter(|p| !applied_set.contains(*p) && !owns_at_or_below(&others, p))
        .filter(|p| !applied_set.iter().any(|a| a.starts_with(p)))
        .filter(|p| !is_key_field(p))
        .collect();
    for p in &dropped {
        // Removing an ancestor removes this too.
        if (1..p.len()).any(|n| dropped.contains(&p[..n].to_vec())) {
            continue;
        }
        schema.remove(&mut merged, p);
    }

    let live_flat = schema.flatten(live);
    let merged_flat = schema.flatten(&merged);
    let changed: BTreeSet<&FPath> =
        applied_set.iter().filter(|p| live_flat.get(*p) != merged_flat.get(*p)).collect();

    let mut conflicts = Vec::new();
    for e in &entries {
        if e.manager == manager {
            continue;
        }
        for p in e.fields.iter().filter(|p| changed.contains(p)) {
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                field: path_string(p),
                api_version: e.api_version.clone(),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| (&a.manager, &a.field).cmp(&(&b.manager, &b.field)));
        conflicts.dedup();
        return Err(ApplyError::Conflicts(conflicts));
    }
    for e in &mut entries {
        e.fields.retain(|p| !changed.contains(p));
    }
    // An apply that changes nothing (same fields, same values) leaves the object as it
    // was, its entry's time and place included, so the write is a no-op as upstream.
    match (previous_at, previous_time) {
        (Some(i), Some(t)) if changed.is_empty() && dropped.is_empty() && previous == applied_set => {
            own.time = t;
            entries.insert(i.min(entries.len()), own);
        }
        (Some(i), _) => entries.insert(i.min(entries.len()), own),
        _ => entries.push(own),
    }
    write_entries(&mut merged, entries);
    Ok(merged)
}

/// Records an ordinary write (create, update, patch) by `manager` in `managedFields` of
/// `new`, given the previous object `old` (None for a create).
///
/// The fields the write set or changed are given to `manager` (operation `Update`) and
/// taken from every other manager; fields the write removed are dropped from every set.
/// `status` and the server-managed parts of `metadata` are not tracked.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let (group, kind) = group_kind(new);
    let schema = Schema { group: &group, kind: &kind };
    let client_reset = new
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    let mut entries = match old {
        Some(_) if client_reset => Vec::new(),
        Some(o) => parse_entries(o),
        None => parse_entries(new),
    };
    let new_flat = schema.flatten(new);
    let old_flat = old.map(|o| schema.flatten(o)).unwrap_or_default();
    let changed: BTreeSet<FPath> =
        new_flat.iter().filter(|(p, v)| old_flat.get(*p) != Some(*v)).map(|(p, _)| p.clone()).collect();
    let removed: BTreeSet<&FPath> = old_flat.keys().filter(|p| !new_flat.contains_key(*p)).collect();
    for e in &mut entries {
        e.fields.retain(|p| !removed.contains(p));
        if !e.is(manager, "Update") {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() && !manager.is_empty() {
        let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
        match entries.iter_mut().find(|e| e.is(manager, "Update")) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now.to_string();
                e.api_version = api_version;
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now.to_string(),
                subresource: None,
                fields: changed,
            }),
        }
    }
    write_entries(new, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-01-01T00:01:00Z";

    fn manifest(replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                                             "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    fn apply_d(
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        apply(live, applied, manager, force, T1, "apps", "Deployment")
    }

    fn entry<'a>(obj: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
        obj["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == op)
    }

    #[test]
    fn an_identical_apply_changes_nothing() {
        let first = apply(None, &manifest(2), "kubectl", false, T0, "apps", "Deployment").unwrap();
        let again = apply_d(Some(&first), &manifest(2), "kubectl", false).unwrap();
        assert_eq!(again, first, "same fields, same values: not even the time moves");
        let changed = apply_d(Some(&first), &manifest(3), "kubectl", false).unwrap();
        assert_eq!(entry(&changed, "kubectl", "Apply").unwrap()["time"], T1);
    }

    #[test]
    fn create_if_absent() {
        let out = apply_d(None, &manifest(2), "kubectl", false).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        let e = entry(&out, "kubectl", "Apply").unwrap();
        assert_eq!(e["apiVersion"], "apps/v1");
        assert_eq!(e["time"], T1);
        assert_eq!(e["fieldsType"], "FieldsV1");
        let f = &e["fieldsV1"];
        assert_eq!(f["f:spec"]["f:replicas"], json!({}));
        assert_eq!(f["f:metadata"]["f:labels"]["f:app"], json!({}));
        assert!(f["f:metadata"].get("f:name").is_none());
        assert_eq!(f["f:spec"]["f:selector"], json!({}));
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
        assert_eq!(c["."], json!({}));
        assert_eq!(c["f:image"], json!({}));
        assert_eq!(
            c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"]["f:containerPort"],
            json!({})
        );
    }

    #[test]
    fn same_manager_drops_field() {
        let mut m = manifest(2);
        m["metadata"]["labels"]["extra"] = json!("x");
        m["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar", "image": "busybox"}));
        let live = apply_d(None, &m, "kubectl", false).unwrap();
        let out = apply_d(Some(&live), &manifest(2), "kubectl", false).unwrap();
        assert!(out["metadata"]["labels"].get("extra").is_none());
        assert_eq!(out["metadata"]["labels"]["app"], "web");
        let cs = out["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 1);
        let f = &entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"];
        assert!(f["f:metadata"]["f:labels"].get("f:extra").is_none());
        // Dropping replicas leaves it unset.
        let mut no_replicas = manifest(2);
        no_replicas["spec"].as_object_mut().unwrap().remove("replicas");
        let out = apply_d(Some(&out), &no_replicas, "kubectl", false).unwrap();
        assert!(out["spec"].get("replicas").is_none());
    }

    #[test]
    fn two_managers_share_a_value() {
        let live = apply_d(None, &manifest(2), "a", false).unwrap();
        let out = apply_d(Some(&live), &manifest(2), "b", false).unwrap();
        for m in ["a", "b"] {
            assert_eq!(entry(&out, m, "Apply").unwrap()["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        }
        // b drops replicas: a still owns it, so it stays.
        let mut m = manifest(2);
        m["spec"].as_object_mut().unwrap().remove("replicas");
        let out = apply_d(Some(&out), &m, "b", false).unwrap();
        assert_eq!(out["spec"]["replicas"], 2);
        // A different value from b conflicts with a.
        let err = apply_d(Some(&out), &manifest(5), "b", false).unwrap_err();
        let ApplyError::Conflicts(c) = err else { panic!("expected conflicts") };
        assert_eq!(
            c,
            vec![Conflict {
                manager: "a".into(),
                field: ".spec.replicas".into(),
                api_version: "apps/v1".into()
            }]
        );
    }

    #[test]
    fn conflict_with_client_side_apply_and_force() {
        let mut live = manifest(1);
        record_update(None, &mut live, "kubectl-client-side-apply", T0);
        let e = entry(&live, "kubectl-client-side-apply", "Update").unwrap();
        assert_eq!(e["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
        assert_eq!(e["time"], T0);

        let err = apply_d(Some(&live), &manifest(3), "kubectl", false).unwrap_err();
        let ApplyError::Conflicts(c) = err else { panic!("expected conflicts") };
        assert_eq!(
            c,
            vec![Conflict {
                manager: "kubectl-client-side-apply".into(),
                field: ".spec.replicas".into(),
                api_version: "apps/v1".into()
            }]
        );
        // Same values: no conflict, shared ownership.
        let shared = apply_d(Some(&live), &manifest(1), "kubectl", false).unwrap();
        assert!(entry(&shared, "kubectl-client-side-apply", "Update").unwrap()["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_some());

        let out = apply_d(Some(&live), &manifest(3), "kubectl", true).unwrap();
        assert_eq!(out["spec"]["replicas"], 3);
        assert!(entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"]["f:spec"].get("f:replicas").is_some());
        let csa = entry(&out, "kubectl-client-side-apply", "Update").unwrap();
        assert!(csa["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert!(csa["fieldsV1"]["f:spec"].get("f:template").is_some());
    }

    #[test]
    fn conflict_on_keyed_item_field() {
        let live = apply_d(None, &manifest(1), "a", false).unwrap();
        let mut m = manifest(1);
        m["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        let ApplyError::Conflicts(c) = apply_d(Some(&live), &m, "b", false).unwrap_err() else {
            panic!("expected conflicts")
        };
        assert_eq!(c[0].field, ".spec.template.spec.containers[name=\"nginx\"].image");
    }

    #[test]
    fn record_update_moves_ownership() {
        let mut live = manifest(1);
        record_update(None, &mut live, "kubectl-create", T0);
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(4);
        new["metadata"]["labels"].as_object_mut().unwrap().remove("app");
        record_update(Some(&live), &mut new, "kubectl-edit", T1);
        let create = entry(&new, "kubectl-create", "Update").unwrap();
        assert!(create["fieldsV1"]["f:spec"].get("f:replicas").is_none());
        assert!(create["fieldsV1"]["f:metadata"].get("f:labels").is_none());
        let edit = entry(&new, "kubectl-edit", "Update").unwrap();
        // The emptied labels map is itself a (leaf) field now.
        assert_eq!(edit["fieldsV1"], json!({"f:metadata": {"f:labels": {}}, "f:spec": {"f:replicas": {}}}));
        assert_eq!(edit["time"], T1);
        // A no-op write adds nothing.
        let mut same = new.clone();
        record_update(Some(&new), &mut same, "other", T1);
        assert!(entry(&same, "other", "Update").is_none());
        assert_eq!(same["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn finalizers_are_a_set() {
        let mut m = manifest(1);
        m["metadata"]["finalizers"] = json!(["example.com/a"]);
        let out = apply_d(None, &m, "kubectl", false).unwrap();
        let f = &entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"];
        assert_eq!(f["f:metadata"]["f:finalizers"]["v:\"example.com/a\""], json!({}));
        let mut m2 = manifest(1);
        m2["metadata"]["finalizers"] = json!(["example.com/b"]);
        let out2 = apply_d(Some(&out), &m2, "other", false).unwrap();
        assert_eq!(out2["metadata"]["finalizers"], json!(["example.com/a", "example.com/b"]));
    }

    #[test]
    fn last_applied_sync_touches_only_the_annotation() {
        let live = apply_d(None, &manifest(2), "kubectl", false).unwrap();
        let sync = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default",
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}});
        let out = apply_d(Some(&live), &sync, "kubectl-last-applied", false).unwrap();
        assert_eq!(out["spec"], live["spec"]);
        assert_eq!(out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"], "{}");
        assert_eq!(out["metadata"]["managedFields"].as_array().unwrap().len(), 2);
        // Re-applying the same manifest is a no-op for the object.
        let again = apply_d(Some(&out), &manifest(2), "kubectl", false).unwrap();
        assert_eq!(again["spec"], live["spec"]);
        assert_eq!(again["metadata"]["annotations"], out["metadata"]["annotations"]);
    }

    #[test]
    fn fields_round_trip() {
        let out = apply_d(None, &manifest(1), "kubectl", false).unwrap();
        let entries = parse_entries(&out);
        assert_eq!(entries.len(), 1);
        let again = encode_fields(&entries[0].fields);
        assert_eq!(again, entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"]);
    }

    #[test]
    fn invalid_inputs() {
        assert!(matches!(apply_d(None, &json!([1]), "kubectl", false), Err(ApplyError::Invalid(_))));
        let mut deep = json!(1);
        for _ in 0..150 {
            deep = json!({"a": deep});
        }
        let live = manifest(1);
        let mut applied = manifest(1);
        applied["spec"]["a"] = deep;
        assert!(matches!(apply_d(Some(&live), &applied, "kubectl", false), Err(ApplyError::Invalid(_))));
        // record_update does not fail on deep input.
        let mut new = applied.clone();
        record_update(None, &mut new, "m", T0);
    }
}
