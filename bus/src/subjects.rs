//! Subject names: the public, versioned part of the bus contract.

/// The prefix of every capstan subject.
pub const PREFIX: &str = "capstan.v1";

/// The JetStream stream holding events.
pub const EVENT_STREAM: &str = "CAPSTAN_EVENTS";

/// The queue group gateways serve API requests in.
pub const API_QUEUE: &str = "capstan-gateways";

/// `core` for the core group, else the group with dots replaced by `_` (NATS tokens are
/// dot-separated).
pub fn group_token(group: &str) -> String {
    if group.is_empty() {
        "core".to_string()
    } else {
        group.replace('.', "_")
    }
}

/// The subject of an event about one object.
pub fn event(group: &str, resource: &str, namespace: Option<&str>, name: &str) -> String {
    format!(
        "{PREFIX}.events.{}.{}.{}.{}",
        group_token(group),
        resource,
        namespace.filter(|n| !n.is_empty()).unwrap_or("_"),
        name.replace('.', "_")
    )
}

/// The filter for every event of one resource (optionally in one namespace).
pub fn events_of(group: &str, resource: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{PREFIX}.events.{}.{}.{}.*", group_token(group), resource, ns),
        None => format!("{PREFIX}.events.{}.{}.>", group_token(group), resource),
    }
}

/// Every event.
pub fn all_events() -> String {
    format!("{PREFIX}.events.>")
}

/// The subject an API request from `identity` is sent on. Identities are
/// `controllers`, `scheduler`, `node.<name>`, `admin`...; NATS permissions restrict each
/// role's credentials to its own subject, so the gateway can trust the subject.
pub fn api_request(identity: &str) -> String {
    format!("{PREFIX}.api.{identity}")
}

/// The pattern gateways subscribe to.
pub fn api_all() -> String {
    format!("{PREFIX}.api.>")
}

/// The subject of an admission hook served on the bus by `integrator`
/// (`capstan.v1.admission.<integrator>.<hook>`): webhook configurations name it as
/// `clientConfig.url: "bus:<subject>"`, and only that integrator's credential may subscribe.
pub fn admission(integrator: &str, hook: &str) -> String {
    format!("{PREFIX}.admission.{integrator}.{hook}")
}

/// Every admission hook subject (what gateways may publish to).
pub fn admission_all() -> String {
    format!("{PREFIX}.admission.>")
}

/// Whether `subject` matches `pattern` (`*` one token, `>` one or more trailing tokens).
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether `subject` is a valid subject to publish on: non-empty dot-separated tokens
/// without wildcards or whitespace.
pub fn is_valid_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

/// Whether `pattern` is a valid subscription pattern: like [`is_valid_subject`], but a
/// token may be `*`, and the last token may be `>`.
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.chars().any(char::is_whitespace)
            && (*t != ">" || i == last)
            && (t.len() == 1 || !t.contains(['*', '>']))
    })
}

/// Whether `subject` lies inside the event stream (`capstan.v1.events.>`).
pub fn is_event_subject(subject: &str) -> bool {
    is_valid_subject(subject) && matches(&all_events(), subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert_eq!(event("", "pods", Some("default"), "x"), "capstan.v1.events.core.pods.default.x");
        assert_eq!(event("apps", "deployments", None, "a.b"), "capstan.v1.events.apps.deployments._.a_b");
        assert_eq!(
            event("rbac.authorization.k8s.io", "roles", Some("ns"), "r"),
            "capstan.v1.events.rbac_authorization_k8s_io.roles.ns.r"
        );
        assert!(matches(&events_of("", "pods", None), "capstan.v1.events.core.pods.default.x"));
        assert!(matches(&events_of("", "pods", Some("default")), "capstan.v1.events.core.pods.default.x"));
        assert!(!matches(&events_of("", "pods", Some("other")), "capstan.v1.events.core.pods.default.x"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(is_valid_subject("a.b"));
        assert!(!is_valid_subject("a.*"));
        assert!(!is_valid_subject("a..b"));
        assert!(!is_valid_subject("a b"));
        assert!(is_valid_pattern("a.*.>"));
        assert!(!is_valid_pattern("a.>.b"));
        assert!(!is_valid_pattern("a.b*"));
        assert!(is_event_subject("capstan.v1.events.core.pods.default.x"));
        assert!(!is_event_subject("capstan.v1.api.admin"));
    }
}
