//! RBAC: Role, ClusterRole, RoleBinding and ClusterRoleBinding, decided as upstream's
//! `plugin/pkg/auth/authorizer/rbac`, from an in-memory index.
//!
//! The index is built from the watch cache and rebuilt whenever an RBAC object changes
//! (a background task follows the cache; a write of an RBAC object through this gateway
//! waits for the rebuild before it answers, so a client that just created a binding is
//! authorized by it on its next request). A decision reads the index only: subject →
//! bindings → the role's rules, no store access. Aggregated ClusterRoles
//! (`aggregationRule`) get the union of the rules of the ClusterRoles their selectors pick.
//! Members of `system:masters` are always allowed, as upstream's privileged group.
//!
//! Escalation prevention lives in [`Escalation`], a validating admission plugin: creating or
//! updating a Role or ClusterRole needs every permission it grants (or the `escalate` verb on
//! it), and a binding needs the permissions of the role it names (or `bind` on that role).

pub mod node;
mod policy;

pub use policy::{default_bindings, default_cluster_roles};

use crate::admission::{Attributes as AdmissionAttributes, Context, Operation, Outcome, Plugin};
use crate::auth::{Attributes, Authorizer, Decision, RuleList, User};
use crate::cache::Cache;
use crate::status::{ApiError, ApiResult};
use capstan_api::meta;
use capstan_api::selectors::LabelSelector;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

const GROUP: &str = "rbac.authorization.k8s.io";
const PREFIX: &[u8] = b"/registry/rbac.authorization.k8s.io/";

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Verbs (`*` for all).
    pub verbs: Vec<String>,
    /// API groups (`*` for all).
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*`, `*/subresource`.
    pub resources: Vec<String>,
    /// Object names (empty: any).
    pub resource_names: Vec<String>,
    /// Non-resource URLs (`/healthz`, `/api/*`, `*`).
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

impl Rule {
    /// Reads a `PolicyRule` JSON object.
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The `PolicyRule` JSON.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"verbs": self.verbs});
        if !self.non_resource_urls.is_empty() {
            v["nonResourceURLs"] = json!(self.non_resource_urls);
        } else {
            v["apiGroups"] = json!(self.api_groups);
            v["resources"] = json!(self.resources);
            if !self.resource_names.is_empty() {
                v["resourceNames"] = json!(self.resource_names);
            }
        }
        v
    }

    fn verb(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    /// Whether the rule allows `attrs` (upstream's `RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if !self.verb(&a.verb) {
            return false;
        }
        if let Some(path) = &a.path {
            return self
                .non_resource_urls
                .iter()
                .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(&u[..u.len() - 1])));
        }
        if !self.api_groups.iter().any(|g| g == "*" || *g == a.group) {
            return false;
        }
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let resource = self.resources.iter().any(|r| {
            r == "*" || *r == combined || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
        });
        if !resource {
            return false;
        }
        self.resource_names.is_empty() || self.resource_names.contains(&a.name)
    }
}

/// Who a binding names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Group(String),
}

/// A binding's grant: its name and the role it points at.
#[derive(Debug, Clone)]
struct Grant {
    binding: String,
    binding_kind: &'static str,
    role_kind: String,
    role: String,
    /// How the subject was named, for the reason text.
    subject: String,
    /// The role's rules, resolved once the index is built (empty when the role is missing).
    rules: Arc<Vec<Rule>>,
}

/// Grants by user name and by group name.
#[derive(Default)]
struct BySubject {
    users: HashMap<String, Vec<Grant>>,
    groups: HashMap<String, Vec<Grant>>,
}

impl BySubject {
    fn add(&mut self, s: Subject, g: Grant) {
        match s {
            Subject::User(u) => self.users.entry(u).or_default().push(g),
            Subject::Group(n) => self.groups.entry(n).or_default().push(g),
        }
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Grant> {
        self.users.values_mut().chain(self.groups.values_mut()).flatten()
    }

    /// The grants of `user` (by name, then by each group), without allocating.
    fn of<'a>(&'a self, user: &'a User) -> impl Iterator<Item = &'a Grant> + 'a {
        self.users
            .get(user.name.as_str())
            .into_iter()
            .flatten()
            .chain(user.groups.iter().flat_map(|g| self.groups.get(g.as_str()).into_iter().flatten()))
    }
}

#[derive(Default)]
struct Index {
    revision: u64,
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_bindings: BySubject,
    ns_bindings: HashMap<String, BySubject>,
}

fn subjects_of(binding: &Value, ns: Option<&str>) -> Vec<(Subject, String)> {
    let mut out = Vec::new();
    for s in binding.get("subjects").and_then(Value::as_array).into_iter().flatten() {
        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
        match s.get("kind").and_then(Value::as_str).unwrap_or("") {
            "User" => out.push((Subject::User(name.to_string()), format!("User {name:?}"))),
            "Group" => out.push((Subject::Group(name.to_string()), format!("Group {name:?}"))),
            "ServiceAccount" => {
                let sns =
                    s.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).or(ns).unwrap_or("");
                out.push((
                    Subject::User(format!("system:serviceaccount:{sns}:{name}")),
                    format!("ServiceAccount \"{name}/{sns}\""),
                ));
            }
            _ => {}
        }
    }
    out
}

impl Index {
    fn build(cache: &Cache) -> Index {
        let end = capstan_storage::prefix_end(PREFIX);
        let (objs, revision, _) = cache.list(PREFIX, &end, 0, |_| true);
        let mut ix = Index { revision, ..Index::default() };
        let mut aggregated = Vec::new();
        let mut cluster_roles: Vec<(String, Value)> = Vec::new();
        for o in &objs {
            let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = meta::name(o).unwrap_or("").to_string();
            let ns = meta::namespace(o).unwrap_or("").to_string();
            let rules = || {
                Arc::new(
                    o.get("rules")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(Rule::from_json).collect())
                        .unwrap_or_default(),
                )
            };
            match kind {
                "ClusterRole" => {
                    if o.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                        aggregated.push((name.clone(), (**o).clone()));
                    }
                    cluster_roles.push((name.clone(), (**o).clone()));
                    ix.cluster_roles.insert(name, rules());
                }
                "Role" => {
                    ix.roles.insert((ns, name), rules());
                }
                "ClusterRoleBinding" | "RoleBinding" => {
                    let role_kind =
                        o["roleRef"].get("kind").and_then(Value::as_str).unwrap_or("").to_string();
                    let role = o["roleRef"].get("name").and_then(Value::as_str).unwrap_or("").to_string();
                    let cluster = kind == "ClusterRoleBinding";
                    for (subject, text) in subjects_of(o, (!cluster).then_some(ns.as_str())) {
                        let g = Grant {
                            binding: name.clone(),
                            binding_kind: if cluster { "ClusterRoleBinding" } else { "RoleBinding" },
                            role_kind: role_kind.clone(),
                            role: role.clone(),
                            subject: text,
                            rules: Arc::default(),
                        };
                        if cluster {
                            ix.cluster_bindings.add(subject, g);
                        } else {
                            ix.ns_bindings.entry(ns.clone()).or_default().add(subject, g);
                        }
                    }
                }
                _ => {}
            }
        }
        // Aggregation: the union of the rules of every ClusterRole a selector picks, repeated
        // until nothing changes, so aggregates of aggregates (admin ← edit ← view) settle.
        let selectors: Vec<(String, Vec<LabelSelector>)> = aggregated
            .iter()
            .map(|(name, role)| {
                let sels = role["aggregationRule"]
                    .get("clusterRoleSelectors")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| LabelSelector::from_label_selector_json(s).ok())
                    .collect();
                (name.clone(), sels)
            })
            .collect();
        for _ in 0..8 {
            let mut changed = false;
            for (name, sels) in &selectors {
                let mut rules: Vec<Rule> =
                    ix.cluster_roles.get(name).map(|r| r.as_ref().clone()).unwrap_or_default();
                let before = rules.len();
                for (other, obj) in &cluster_roles {
                    if other == name || !sels.iter().any(|s| s.matches(&meta::labels(obj))) {
                        continue;
                    }
                    for r in ix.cluster_roles.get(other).map(|r| r.as_ref().clone()).unwrap_or_default() {
                        if !rules.contains(&r) {
                            rules.push(r);
                        }
                    }
                }
                if rules.len() != before {
                    changed = true;
                    ix.cluster_roles.insert(name.clone(), Arc::new(rules));
                }
            }
            if !changed {
                break;
            }
        }
        ix.resolve();
        ix
    }

    /// Points every grant at its role's rules (after aggregation).
    fn resolve(&mut self) {
        let (cluster_roles, roles) = (&self.cluster_roles, &self.roles);
        let rules = |g: &Grant, ns: &str| -> Arc<Vec<Rule>> {
            match g.role_kind.as_str() {
                "ClusterRole" => cluster_roles.get(&g.role).cloned(),
                "Role" => roles.get(&(ns.to_string(), g.role.clone())).cloned(),
                _ => None,
            }
            .unwrap_or_default()
        };
        for g in self.cluster_bindings.all_mut() {
            g.rules = rules(g, "");
        }
        for (ns, by) in self.ns_bindings.iter_mut() {
            for g in by.all_mut() {
                g.rules = rules(g, ns);
            }
        }
    }

    /// Every grant that applies to `user` in `namespace` (cluster ones first).
    fn grants<'a>(&'a self, user: &'a User, namespace: &str) -> impl Iterator<Item = &'a Grant> + 'a {
        let local = if namespace.is_empty() { None } else { self.ns_bindings.get(namespace) };
        self.cluster_bindings.of(user).chain(local.into_iter().flat_map(move |b| b.of(user)))
    }
}

/// The RBAC authorizer.
pub struct Rbac {
    cache: Arc<Cache>,
    index: RwLock<Arc<Index>>,
}

impl Rbac {
    /// An authorizer over the RBAC objects in `cache`, kept current by a background task.
    pub fn start(cache: Arc<Cache>) -> Arc<Rbac> {
        let rbac =
            Arc::new(Rbac { index: RwLock::new(Arc::new(Index::build(&cache))), cache: cache.clone() });
        let weak = Arc::downgrade(&rbac);
        let mut head = cache.subscribe();
        tokio::spawn(async move {
            // How far the event buffer was looked through without finding an RBAC change.
            let mut scanned = 0;
            while head.changed().await.is_ok() {
                let Some(r) = weak.upgrade() else { return };
                let since = r.index().revision.max(scanned);
                // One matching event is enough to know the index is stale (a `max` of 0 would
                // return none: RBAC writes made through another gateway went unseen).
                let touched = match r.cache.events_after(since, 1, |e| e.key.starts_with(PREFIX)) {
                    Ok((events, to)) => {
                        scanned = to;
                        !events.is_empty()
                    }
                    Err(_) => true,
                };
                if touched {
                    r.rebuild();
                }
            }
        });
        rbac
    }

    fn index(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn rebuild(&self) {
        let ix = Index::build(&self.cache);
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ix);
    }

    /// Makes a write at `revision` visible to decisions before returning.
    pub async fn settle(&self, revision: u64) {
        if self.index().revision >= revision {
            return;
        }
        let _ = self.cache.wait_for(revision, Duration::from_secs(3)).await;
        self.rebuild();
    }

    /// The rules `user` holds in `namespace` (cluster-wide ones when empty).
    pub fn rules_of(&self, user: &User, namespace: &str) -> Vec<Rule> {
        let ix = self.index();
        let mut out: Vec<Rule> = Vec::new();
        for g in ix.grants(user, namespace) {
            for r in g.rules.iter() {
                if !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        out
    }

    /// The permissions of `rules` that `user` does not hold in `namespace` (empty: all
    /// held), as upstream's `ConfirmNoEscalation` breaks them down.
    pub fn missing(&self, user: &User, namespace: &str, rules: &[Rule]) -> Vec<Rule> {
        if user.in_group("system:masters") {
            return Vec::new();
        }
        let owned = self.rules_of(user, namespace);
        let mut missing = Vec::new();
        for want in rules {
            for atom in breakdown(want) {
                if !owned.iter().any(|o| covers(o, &atom)) {
                    missing.push(atom);
                }
            }
        }
        missing
    }
}

/// One rule per verb × group × resource × name (or verb × URL).
fn breakdown(r: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for v in &r.verbs {
        if !r.non_resource_urls.is_empty() {
            for u in &r.non_resource_urls {
                out.push(Rule {
                    verbs: vec![v.clone()],
                    non_resource_urls: vec![u.clone()],
                    ..Rule::default()
                });
            }
            continue;
        }
        for g in &r.api_groups {
            for res in &r.resources {
                let names: Vec<Vec<String>> = if r.resource_names.is_empty() {
                    vec![Vec::new()]
                } else {
                    r.resource_names.iter().map(|n| vec![n.clone()]).collect()
                };
                for n in names {
                    out.push(Rule {
                        verbs: vec![v.clone()],
                        api_groups: vec![g.clone()],
                        resources: vec![res.clone()],
                        resource_names: n,
                        non_resource_urls: Vec::new(),
                    });
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the single permission `atom` (a literal `*` only by a `*`).
fn covers(owner: &Rule, atom: &Rule) -> bool {
    let has = |list: &[String], x: &str| list.iter().any(|o| o == "*" || o == x);
    if !has(&owner.verbs, &atom.verbs[0]) {
        return false;
    }
    if let Some(u) = atom.non_resource_urls.first() {
        return owner
            .non_resource_urls
            .iter()
            .any(|o| o == "*" || o == u || (o.ends_with('*') && u.starts_with(&o[..o.len() - 1])));
    }
    if !owner.non_resource_urls.is_empty() && owner.resources.is_empty() {
        return false;
    }
    if !has(&owner.api_groups, &atom.api_groups[0]) {
        return false;
    }
    let res = &atom.resources[0];
    let res_ok = owner.resources.iter().any(|o| {
        o == "*"
            || o == res
            || (o.starts_with("*/") && res.split_once('/').is_some_and(|(_, sub)| o[2..] == *sub))
    });
    if !res_ok {
        return false;
    }
    owner.resource_names.is_empty()
        || atom.resource_names.first().is_some_and(|n| owner.resource_names.contains(n))
}

impl Authorizer for Rbac {
    fn authorize(&self, user: &User, a: &Attributes) -> Decision {
        if user.in_group("system:masters") {
            return Decision::Allow("user is in group system:masters".into());
        }
        let ix = self.index();
        for g in ix.grants(user, &a.namespace) {
            if g.rules.iter().any(|r| r.allows(a)) {
                let of = if g.binding_kind == "RoleBinding" {
                    format!("RoleBinding \"{}/{}\"", g.binding, a.namespace)
                } else {
                    format!("ClusterRoleBinding {:?}", g.binding)
                };
                return Decision::Allow(format!(
                    "RBAC: allowed by {of} of {} {:?} to {}",
                    g.role_kind, g.role, g.subject
                ));
            }
        }
        Decision::Deny(String::new())
    }

    fn settle(&self, revision: u64) -> BoxFuture<'_, ()> {
        Box::pin(Rbac::settle(self, revision))
    }

    fn rules(&self, user: &User, namespace: &str) -> RuleList {
        if user.in_group("system:masters") {
            return RuleList::all();
        }
        let mut list = RuleList::default();
        for r in self.rules_of(user, namespace) {
            if r.non_resource_urls.is_empty() {
                list.resource_rules.push(r.to_json());
            } else {
                list.non_resource_rules
                    .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
            }
        }
        list
    }
}

/// Escalation prevention for RBAC writes (a validating admission plugin).
pub struct Escalation {
    rbac: Arc<Rbac>,
}

impl Escalation {
    /// The plugin, deciding with `rbac`.
    pub fn new(rbac: Arc<Rbac>) -> Escalation {
        Escalation { rbac }
    }

    fn forbidden(a: &AdmissionAttributes<'_>, user: &User, missing: &[Rule]) -> ApiError {
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        let perms: Vec<String> = missing
            .iter()
            .map(|r| {
                if r.non_resource_urls.is_empty() {
                    let names = if r.resource_names.is_empty() {
                        String::new()
                    } else {
                        format!(", ResourceNames:{:?}", r.resource_names)
                    };
                    format!(
                        "{{APIGroups:{:?}, Resources:{:?}{names}, Verbs:{:?}}}",
                        r.api_groups, r.resources, r.verbs
                    )
                } else {
                    format!("{{NonResourceURLs:{:?}, Verbs:{:?}}}", r.non_resource_urls, r.verbs)
                }
            })
            .collect();
        let scope = match a.namespace {
            Some(ns) => format!("\nRBAC permissions are checked in the namespace {ns:?}"),
            None => String::new(),
        };
        ApiError::forbidden(
            a.res,
            a.name,
            &format!(
                "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}{scope}",
                user.name,
                groups.join(" "),
                perms.join("\n")
            ),
        )
    }
}

impl Plugin for Escalation {
    fn name(&self) -> &'static str {
        "RBACEscalation"
    }

    fn validate<'a>(
        &'a self,
        _ctx: &'a Context,
        a: &'a AdmissionAttributes<'a>,
        obj: &'a Value,
        _out: &'a mut Outcome,
    ) -> BoxFuture<'a, ApiResult<()>> {
        Box::pin(async move {
            if a.res.group != GROUP || a.subresource.is_some() || a.operation == Operation::Delete {
                return Ok(());
            }
            let ns = a.namespace.unwrap_or("");
            let verb_on = |verb: &str, resource: &str, name: &str, namespace: &str| Attributes {
                verb: verb.into(),
                group: GROUP.into(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: namespace.into(),
                name: name.into(),
                path: None,
            };
            match a.res.kind {
                "Role" | "ClusterRole" => {
                    let rules: Vec<Rule> = obj
                        .get("rules")
                        .and_then(Value::as_array)
                        .map(|r| r.iter().map(Rule::from_json).collect())
                        .unwrap_or_default();
                    let missing = self.rbac.missing(a.user, ns, &rules);
                    if missing.is_empty() {
                        return Ok(());
                    }
                    if matches!(
                        self.rbac.authorize(a.user, &verb_on("escalate", a.res.plural, a.name, ns)),
                        Decision::Allow(_)
                    ) {
                        return Ok(());
                    }
                    Err(Self::forbidden(a, a.user, &missing))
                }
                "RoleBinding" | "ClusterRoleBinding" => {
                    let kind = obj["roleRef"].get("kind").and_then(Value::as_str).unwrap_or("");
                    let role = obj["roleRef"].get("name").and_then(Value::as_str).unwrap_or("");
                    // `bind` is checked in the binding's namespace, as upstream's
                    // BindingAuthorized (a RoleBinding may grant it in its namespace).
                    let plural = if kind == "Role" { "roles" } else { "clusterroles" };
                    if matches!(
                        self.rbac.authorize(a.user, &verb_on("bind", plural, role, ns)),
                        Decision::Allow(_)
                    ) {
                        return Ok(());
                    }
                    let ix = self.rbac.index();
                    let rules = match kind {
                        "Role" => ix.roles.get(&(ns.to_string(), role.to_string())).cloned(),
                        _ => ix.cluster_roles.get(role).cloned(),
                    };
                    // A binding to a role that does not exist grants nothing yet: upstream
                    // refuses it unless the user may bind it.
                    let Some(rules) = rules else {
                        return Err(ApiError::forbidden(
                            a.res,
                            a.name,
                            &format!("user {:?} cannot bind {kind} {role:?}: it does not exist", a.user.name),
                        ));
                    };
                    let missing = self.rbac.missing(a.user, ns, &rules);
                    if missing.is_empty() {
                        Ok(())
                    } else {
                        Err(Self::forbidden(a, a.user, &missing))
                    }
                }
                _ => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests;
