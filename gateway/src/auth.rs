//! Authentication results and the authorizer hook.

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User name (`admin`, `system:node:n1`, `system:serviceaccount:ns:sa`).
    pub name: String,
    /// Groups (`system:masters`, `system:authenticated`...).
    pub groups: Vec<String>,
}

impl User {
    /// A user with groups; `system:authenticated` is added.
    pub fn new(name: impl Into<String>, groups: Vec<String>) -> User {
        let mut groups = groups;
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User { name: name.into(), groups }
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
}

/// An authorization decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with a reason.
    Allow(String),
    /// Denied, with a reason a person can act on.
    Deny(String),
}

/// Decides whether a user may do something. RBAC plugs in here.
pub trait Authorizer: Send + Sync + 'static {
    /// The decision for `user` doing `attrs`.
    fn authorize(&self, user: &User, attrs: &Attributes) -> Decision;
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
        };
        assert!(matches!(MastersOnly.authorize(&User::system(), &a), Decision::Allow(_)));
        assert!(matches!(MastersOnly.authorize(&User::new("bob", vec![]), &a), Decision::Deny(_)));
    }
}
