//! Authentication results and the authorizer hook.

use std::collections::BTreeMap;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    /// User name (`admin`, `system:node:n1`, `system:serviceaccount:ns:sa`).
    pub name: String,
    /// Groups (`system:masters`, `system:authenticated`...).
    pub groups: Vec<String>,
    /// The user's uid, when the authenticator knows one (ServiceAccounts).
    pub uid: String,
    /// Extra attributes (`authentication.kubernetes.io/pod-name`...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user with groups; `system:authenticated` is added.
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> User {
        let mut groups = groups;
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User { name: name.into(), groups, uid: String::new(), extra: BTreeMap::new() }
    }

    /// The unauthenticated caller, `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            uid: String::new(),
            extra: BTreeMap::new(),
        }
    }

    /// The `UserInfo` JSON of reviews (`status.user`, `status.userInfo`).
    pub fn to_user_info(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = serde_json::json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }

    /// The built-in superuser used by in-process components.
    pub fn system() -> User {
        User::new("system:capstan", vec!["system:masters".into()])
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// What a request wants to do, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, or empty.
    pub subresource: String,
    /// Namespace, or empty.
    pub namespace: String,
    /// Object name, or empty.
    pub name: String,
    /// For a non-resource request (`/healthz`, `/version`...): its path.
    pub path: Option<String>,
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with a reason.
    Allow(String),
    /// Denied, with a reason a person can act on.
    Deny(String),
}

/// What a user may do in one namespace, as SelfSubjectRulesReview reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleList {
    /// `ResourceRule` objects (`verbs`, `apiGroups`, `resources`, `resourceNames`).
    pub resource_rules: Vec<serde_json::Value>,
    /// `NonResourceRule` objects (`verbs`, `nonResourceURLs`).
    pub non_resource_rules: Vec<serde_json::Value>,
    /// Whether the list may miss rules (an authorizer that cannot enumerate them).
    pub incomplete: bool,
}

impl RuleList {
    /// Everything.
    pub fn all() -> RuleList {
        RuleList {
            resource_rules: vec![serde_json::json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})],
            non_resource_rules: vec![serde_json::json!({"verbs": ["*"], "nonResourceURLs": ["*"]})],
            incomplete: false,
        }
    }
}

/// Decides whether a user may do something. RBAC plugs in here.
pub trait Authorizer: Send + Sync + 'static {
    /// The decision for `user` doing `attrs`.
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision;

    /// Makes a write of an authorization object at `revision` count in later decisions.
    fn settle(&self, _revision: u64) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// The rules `user` has in `namespace` (SelfSubjectRulesReview).
    fn rules(&self, user: &User, _namespace: &str) -> RuleList {
        RuleList { incomplete: true, ..RuleList::default() }.with_all_if(user.in_group("system:masters"))
    }
}

impl RuleList {
    fn with_all_if(self, all: bool) -> RuleList {
        if all {
            RuleList::all()
        } else {
            self
        }
    }
}

/// The baseline authorizer until RBAC lands: members of `system:masters` may do anything;
/// everyone else is denied.
#[derive(Debug, Default, Clone, Copy)]
pub struct MastersOnly;

impl Authorizer for MastersOnly {
    fn authorize(&self, user: &User, _attrs: &Attributes) -> Decision {
        if user.in_group("system:masters") {
            Decision::Allow("user is in group system:masters".into())
        } else {
            Decision::Deny("no RBAC policy matched".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_only() {
        let a = Attributes {
            verb: "get".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: String::new(),
            namespace: "default".into(),
            name: String::new(),
            path: None,
        };
        assert!(matches!(MastersOnly.authorize(&User::system(), &a), Decision::Allow(_)));
        assert!(matches!(MastersOnly.authorize(&User::new("bob", vec![]), &a), Decision::Deny(_)));
    }
}
