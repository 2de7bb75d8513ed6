//! Who may publish and subscribe where: the subject permissions of each role's NATS
//! credential, and the nats-server configuration that enforces them (`capstan bus-config`).
//!
//! The gateway takes a bus caller's identity from the request subject
//! (`capstan.v1.api.<identity>`); that is proof of identity only because the server lets
//! each credential publish requests on its own identity's subject and nowhere else. Each
//! role gets a user nkey whose public key is listed in `nats.conf` with these
//! permissions:
//!
//! | role | publishes | subscribes |
//! |---|---|---|
//! | gateway | `capstan.v1.events.>` (the relay), `capstan.v1.node.*.sessions`, `capstan.v1.node.*.session.*.up`, `$JS.API.>`, `_INBOX.>` (replies), `capstan.v1.admission.>` (admission hooks) | `capstan.v1.api.>`, `capstan.v1.node.*.session.*.down`, `capstan.v1.node.*.usage`, `_INBOX.gateway.>` |
//! | controllers, scheduler | `capstan.v1.api.<role>`, stream reads | `_INBOX.<role>.>` |
//! | sim-nodes | `capstan.v1.api.sim-nodes`, `capstan.v1.node.*.usage` (synthetic usage), stream reads | `_INBOX.sim-nodes.>` |
//! | node `N` | `capstan.v1.api.node.N`, `capstan.v1.node.N.session.*.down`, `capstan.v1.node.N.usage`, stream reads | `capstan.v1.node.N.sessions`, `capstan.v1.node.N.session.*.up`, `_INBOX.node.N.>` |
//! | integrator | stream reads | `_INBOX.<integrator>.>`, `capstan.v1.admission.<integrator>.>` (its admission hooks) |
//!
//! "Stream reads" are the JetStream API subjects a reader of the event stream needs and
//! nothing that changes the stream: stream info, message get (also direct get), consumer
//! create / info / delete / next, acks and flow control ([`stream_reader_publish`]).
//! Everybody but the gateway receives replies only on its own inbox prefix
//! (`_INBOX.<identity>`, [`inbox_prefix`]), so no credential can read the replies sent to
//! another, and every role may answer messages it received (`allow_responses`).

use crate::subjects::{self, PREFIX};

/// A role that gets its own credential.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// The API service: serves requests, relays events, opens node sessions.
    Gateway,
    /// The controller manager (every pool member).
    Controllers,
    /// The scheduler.
    Scheduler,
    /// Simulated nodes (scale tests).
    SimNodes,
    /// One node agent, by node name (as in the Node object, dots and all).
    Node(String),
    /// A read-only consumer of the event stream, by a name of the operator's choice
    /// (one NATS token: letters, digits, `-`).
    Integrator(String),
}

/// The subject token of a node name: dots become `_` (node names never contain `_`).
pub fn node_token(node: &str) -> String {
    node.replace('.', "_")
}

/// The inbox prefix of an identity: its replies arrive on `_INBOX.<identity>.…`, the only
/// inboxes its credential may subscribe to.
pub fn inbox_prefix(identity: &str) -> String {
    format!("_INBOX.{identity}")
}

/// The JetStream API subjects a reader of `stream` publishes to: stream info, message
/// get and direct get, consumer create (ephemeral, named and durable) / info / delete,
/// pull requests, acks and flow-control replies, and the stream-name lookup some clients
/// do first. None of them changes or deletes the stream or its messages.
pub fn stream_reader_publish(stream: &str) -> Vec<String> {
    vec![
        "$JS.API.INFO".to_string(),
        "$JS.API.STREAM.NAMES".to_string(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// What one credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (patterns) it may publish to.
    pub publish: Vec<String>,
    /// Subjects (patterns) it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer a message it received on the message's reply subject
    /// (once), whatever that subject is.
    pub allow_responses: bool,
}

impl Permissions {
    /// Whether a publish on `subject` is allowed (not counting `allow_responses`).
    pub fn may_publish(&self, subject: &str) -> bool {
        self.publish.iter().any(|p| subjects::matches(p, subject))
    }

    /// Whether a subscription to `subject` is allowed. A pattern is allowed when one
    /// allowed pattern covers it (as nats-server decides for wildcard subscriptions).
    pub fn may_subscribe(&self, subject: &str) -> bool {
        self.subscribe.iter().any(|p| covers(p, subject))
    }
}

/// Whether every subject matching `pattern` also matches `allowed`.
fn covers(allowed: &str, pattern: &str) -> bool {
    let mut a = allowed.split('.');
    let mut p = pattern.split('.');
    loop {
        match (a.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y && x != "*" && x != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Role {
    /// The identity: the last tokens of its request subject `capstan.v1.api.<identity>`,
    /// and the stem of its credential file `<identity>.creds`.
    pub fn identity(&self) -> String {
        match self {
            Role::Gateway => "gateway".to_string(),
            Role::Controllers => "controllers".to_string(),
            Role::Scheduler => "scheduler".to_string(),
            Role::SimNodes => "sim-nodes".to_string(),
            Role::Node(n) => format!("node.{}", node_token(n)),
            Role::Integrator(n) => n.clone(),
        }
    }

    /// The inbox prefix its client must use ([`inbox_prefix`] of its identity).
    pub fn inbox_prefix(&self) -> String {
        inbox_prefix(&self.identity())
    }

    /// What its credential may do on the bus with the event stream `stream`.
    pub fn permissions(&self, stream: &str) -> Permissions {
        let own_inbox = format!("{}.>", self.inbox_prefix());
        if *self == Role::Gateway {
            return Permissions {
                publish: vec![
                    subjects::all_events(),
                    format!("{PREFIX}.node.*.sessions"),
                    format!("{PREFIX}.node.*.session.*.up"),
                    "$JS.API.>".to_string(),
                    "_INBOX.>".to_string(),
                    subjects::admission_all(),
                ],
                subscribe: vec![
                    subjects::api_all(),
                    format!("{PREFIX}.node.*.session.*.down"),
                    crate::usage::all_node_usage(),
                    own_inbox,
                ],
                allow_responses: true,
            };
        }
        let mut publish = Vec::new();
        let mut subscribe = Vec::new();
        match self {
            Role::Controllers | Role::Scheduler => {
                publish.push(subjects::api_request(&self.identity()));
            }
            // The simulated nodes report their nodes' synthetic usage.
            Role::SimNodes => {
                publish.push(subjects::api_request(&self.identity()));
                publish.push(crate::usage::all_node_usage());
            }
            Role::Node(n) => {
                let t = node_token(n);
                publish.push(subjects::api_request(&self.identity()));
                publish.push(format!("{PREFIX}.node.{t}.session.*.down"));
                publish.push(crate::usage::node_usage(n));
                subscribe.push(format!("{PREFIX}.node.{t}.sessions"));
                subscribe.push(format!("{PREFIX}.node.{t}.session.*.up"));
            }
            // An integrator may serve admission hooks on its own subjects (and answer
            // them: `allow_responses`).
            Role::Integrator(n) => subscribe.push(format!("{PREFIX}.admission.{n}.>")),
            Role::Gateway => {}
        }
        publish.extend(stream_reader_publish(stream));
        subscribe.push(own_inbox);
        Permissions { publish, subscribe, allow_responses: true }
    }
}

/// Whether `name` is a valid node name (a DNS-1123 subdomain, as the API requires).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `name` is a valid integrator name (one NATS token of letters, digits and `-`,
/// not a name another role uses).
pub fn valid_integrator_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !["gateway", "controllers", "scheduler", "sim-nodes", "node"].contains(&name)
}

/// The settings of a generated nats-server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `host:port` of the client port.
    pub listen: String,
    /// The server's TLS certificate (PEM file, absolute path).
    pub cert_file: String,
    /// The server's TLS key (PEM file, absolute path).
    pub key_file: String,
    /// JetStream's store directory (absolute path).
    pub store_dir: String,
    /// The event stream's name (for the readers' permissions).
    pub stream: String,
    /// Each user: its role and its public nkey (`U...`).
    pub users: Vec<(Role, String)>,
}

/// A quoted string in nats-server's configuration syntax (quoted, so `$` is no variable).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list(items: &[String]) -> String {
    items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
}

/// Renders `nats.conf`: TLS on the client port, JetStream, and one nkey user per role
/// with its permissions; a client without a listed nkey cannot connect.
pub fn render_server_config(cfg: &ServerConfig) -> String {
    let mut out = String::new();
    out.push_str("# nats-server configuration for capstan, written by `capstan bus-config`.\n");
    out.push_str("# Every client authenticates with a user nkey listed below and may publish and\n");
    out.push_str("# subscribe only where its role must (docs/BUS.md, docs/OPERATIONS.md).\n\n");
    out.push_str(&format!("listen: {}\n\n", quote(&cfg.listen)));
    out.push_str("tls {\n");
    out.push_str(&format!("  cert_file: {}\n", quote(&cfg.cert_file)));
    out.push_str(&format!("  key_file: {}\n", quote(&cfg.key_file)));
    out.push_str("  timeout: 5\n}\n\n");
    out.push_str(&format!("jetstream {{\n  store_dir: {}\n}}\n\n", quote(&cfg.store_dir)));
    out.push_str(&render_authorization(&cfg.users, &cfg.stream));
    out
}

/// The `authorization { users = [...] }` block of [`render_server_config`] alone: one
/// user nkey per role with its permissions on `stream`. A server configuration can
/// `include` it (the Helm chart's NATS servers do).
pub fn render_authorization(users: &[(Role, String)], stream: &str) -> String {
    let mut out = String::new();
    out.push_str("authorization {\n  users = [\n");
    for (role, nkey) in users {
        let p = role.permissions(stream);
        out.push_str(&format!("    # {}\n", role.identity()));
        out.push_str(&format!("    {{\n      nkey: {}\n      permissions: {{\n", quote(nkey)));
        out.push_str(&format!("        publish: {{ allow: [{}] }}\n", list(&p.publish)));
        out.push_str(&format!("        subscribe: {{ allow: [{}] }}\n", list(&p.subscribe)));
        if p.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("      }\n    }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions;

    const S: &str = subjects::EVENT_STREAM;

    #[test]
    fn a_node_reaches_only_its_own_subjects() {
        let a = Role::Node("a.example".into()).permissions(S);
        assert!(a.may_publish("capstan.v1.api.node.a_example"));
        assert!(!a.may_publish("capstan.v1.api.node.b"));
        assert!(!a.may_publish("capstan.v1.api.controllers"));
        assert!(!a.may_publish("capstan.v1.api.node.a_example.x"));
        assert!(!a.may_publish("capstan.v1.events.core.pods.default.x"));
        assert!(!a.may_publish(&sessions::node_sessions("b")));
        assert!(a.may_publish(&sessions::session_down("a.example", "s1")));
        assert!(!a.may_publish(&sessions::session_down("b", "s1")));
        assert!(!a.may_publish(&sessions::session_up("a.example", "s1")));
        assert!(a.may_subscribe(&sessions::node_sessions("a.example")));
        assert!(a.may_subscribe(&sessions::session_up("a.example", "s1")));
        assert!(!a.may_subscribe(&sessions::node_sessions("b")));
        assert!(!a.may_subscribe(&sessions::session_up("b", "s1")));
        assert!(!a.may_subscribe("capstan.v1.node.*.sessions"));
        assert!(!a.may_subscribe("capstan.v1.>"));
        assert!(!a.may_subscribe("_INBOX.>"));
        assert!(!a.may_subscribe("_INBOX.controllers.x"));
        assert!(a.may_subscribe("_INBOX.node.a_example.abc.*"));
        assert!(!a.may_publish("$JS.API.STREAM.DELETE.CAPSTAN_EVENTS"));
        assert!(!a.may_publish("$JS.API.STREAM.PURGE.CAPSTAN_EVENTS"));
        assert!(!a.may_publish("$JS.API.STREAM.UPDATE.CAPSTAN_EVENTS"));
        assert!(a.may_publish("$JS.API.CONSUMER.MSG.NEXT.CAPSTAN_EVENTS.c1"));
    }

    #[test]
    fn integrators_only_read_the_stream() {
        let i = Role::Integrator("audit".into()).permissions(S);
        assert!(i.publish.iter().all(|p| p.starts_with("$JS.")), "{:?}", i.publish);
        assert!(!i.may_publish("capstan.v1.api.audit"));
        assert!(i.may_publish("$JS.API.CONSUMER.CREATE.CAPSTAN_EVENTS"));
        assert!(!i.may_publish("$JS.API.CONSUMER.CREATE.OTHER"));
        // Its inbox, and its own admission hooks (served on the bus), nobody else's.
        assert_eq!(
            i.subscribe,
            vec!["capstan.v1.admission.audit.>".to_string(), "_INBOX.audit.>".to_string()]
        );
        assert!(i.may_subscribe(&subjects::admission("audit", "deny")));
        assert!(!i.may_subscribe(&subjects::admission("other", "deny")));
        assert!(!i.may_publish(&subjects::admission("audit", "deny")));
        assert!(Role::Gateway.permissions(S).may_publish(&subjects::admission("audit", "deny")));
    }

    #[test]
    fn roles_request_only_as_themselves() {
        for (role, own) in [
            (Role::Controllers, "controllers"),
            (Role::Scheduler, "scheduler"),
            (Role::SimNodes, "sim-nodes"),
        ] {
            let p = role.permissions(S);
            let api: Vec<&String> = p.publish.iter().filter(|s| s.starts_with("capstan.v1.api.")).collect();
            assert_eq!(api, vec![&subjects::api_request(own)]);
            // Only the simulated nodes report usage, for their nodes.
            assert_eq!(p.may_publish(&crate::usage::node_usage("n1")), role == Role::SimNodes);
        }
        let n = Role::Node("a.example".into()).permissions(S);
        assert!(n.may_publish(&crate::usage::node_usage("a.example")));
        assert!(!n.may_publish(&crate::usage::node_usage("b")));
        assert!(Role::Gateway.permissions(S).may_subscribe(&crate::usage::all_node_usage()));
        let g = Role::Gateway.permissions(S);
        assert!(g.may_subscribe(&subjects::api_all()));
        assert!(g.may_publish("capstan.v1.events.core.pods.default.x"));
        assert!(!g.may_publish("capstan.v1.api.controllers"));
    }

    #[test]
    fn names() {
        assert!(valid_node_name("node-1.example.com"));
        assert!(!valid_node_name("Node"));
        assert!(!valid_node_name("a_b"));
        assert!(!valid_node_name("a..b"));
        assert!(!valid_node_name("a.>"));
        assert!(valid_integrator_name("audit-1"));
        assert!(!valid_integrator_name("a.b"));
        assert!(!valid_integrator_name("gateway"));
        assert!(!valid_integrator_name("*"));
    }

    #[test]
    fn server_config_quotes_subjects() {
        let conf = render_server_config(&ServerConfig {
            listen: "127.0.0.1:4222".into(),
            cert_file: "/d/server.crt".into(),
            key_file: "/d/server.key".into(),
            store_dir: "/d/jetstream".into(),
            stream: S.into(),
            users: vec![(Role::Node("a".into()), "UABC".into())],
        });
        assert!(conf.contains("nkey: \"UABC\""), "{conf}");
        assert!(conf.contains("\"$JS.API.STREAM.INFO.CAPSTAN_EVENTS\""), "{conf}");
        assert!(conf.contains("\"capstan.v1.api.node.a\""), "{conf}");
        assert!(!conf.contains("no_auth_user"));
    }
}
