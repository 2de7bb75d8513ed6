//! resolv.conf: the node's (read for the upstream resolvers and for `dnsPolicy: Default`)
//! and each pod's, written by `dnsPolicy` as upstream's kubelet does
//! (`pkg/kubelet/network/dns`):
//!
//! | policy | nameservers | search | options |
//! |---|---|---|---|
//! | `ClusterFirst` (default) | the cluster DNS | `<ns>.svc.<domain> svc.<domain> <domain>` + the node's | `ndots:5` |
//! | `ClusterFirstWithHostNet` | as `ClusterFirst`, for hostNetwork pods too | | |
//! | `ClusterFirst` + `hostNetwork` | as `Default` | | |
//! | `Default` | the node's | the node's | the node's |
//! | `None` | only `dnsConfig` | | |
//!
//! `dnsConfig` is then merged in (nameservers and searches appended without duplicates,
//! options replaced by name), and the result cut to upstream's limits: 3 nameservers,
//! 32 search domains of at most 2048 characters together. The node's loopback nameservers
//! are left out of a pod's file unless the pod shares the node's network (a pod's loopback
//! is its own).

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};

/// Most nameservers a resolver reads.
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains (upstream's `MaxDNSSearchPaths`).
pub const MAX_SEARCHES: usize = 32;
/// Longest search line (upstream's `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;

/// The parts of a resolv.conf that matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// The last `search` line's domains.
    pub searches: Vec<String>,
    /// `options`.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (comments, unknown keywords and `domain` are ignored; a
    /// later `search` line replaces an earlier one, as the resolver reads it).
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => r.nameservers.extend(f.next().map(str::to_string)),
                Some("search") => {
                    r.searches =
                        f.filter(|s| *s != ".").map(|s| s.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => {
                    for o in f {
                        merge_option(&mut r.options, o);
                    }
                }
                _ => {}
            }
        }
        r
    }

    /// Reads and parses a file (missing or unreadable: empty).
    pub fn read(path: &std::path::Path) -> ResolvConf {
        ResolvConf::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for ns in &self.nameservers {
            s.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// Adds an option, replacing one of the same name.
fn merge_option(options: &mut Vec<String>, o: &str) {
    match options.iter_mut().find(|x| option_name(x) == option_name(o)) {
        Some(x) => *x = o.to_string(),
        None => options.push(o.to_string()),
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
}

fn is_loopback(ns: &str) -> bool {
    ns.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()).is_some_and(|ip| ip.is_loopback())
}

/// The upstream resolvers of the cluster DNS from the node's resolv.conf: its nameservers
/// on port 53, without loopback ones (a local stub such as systemd-resolved's 127.0.0.53
/// may forward back to us or answer only its own host; list real resolvers instead, or
/// set them in the configuration).
pub fn upstreams(host: &ResolvConf) -> Vec<SocketAddr> {
    host.nameservers
        .iter()
        .filter_map(|ns| ns.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The cluster DNS as pods see it.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    /// The nameserver address.
    pub server: IpAddr,
    /// The cluster domain.
    pub domain: String,
}

/// A pod's `/etc/resolv.conf`. `cluster` is `None` when the node serves no cluster DNS
/// (then `ClusterFirst` falls back to `Default`, as upstream's kubelet without
/// `--cluster-dns`).
pub fn pod_resolv_conf(pod: &Value, host: &ResolvConf, cluster: Option<&ClusterDns>) -> String {
    let spec = &pod["spec"];
    let ns = pod["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("default");
    let host_network = spec["hostNetwork"].as_bool() == Some(true);
    let policy = spec["dnsPolicy"].as_str().unwrap_or("ClusterFirst");
    let use_cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut conf = match (policy, cluster) {
        ("None", _) => ResolvConf::default(),
        (_, Some(c)) if use_cluster => {
            let d = c.domain.trim_end_matches('.');
            let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
            push_unique(&mut searches, host.searches.iter().cloned());
            ResolvConf { nameservers: vec![c.server.to_string()], searches, options: vec!["ndots:5".into()] }
        }
        _ => {
            let mut h = host.clone();
            if !host_network {
                h.nameservers.retain(|n| !is_loopback(n));
            }
            h
        }
    };
    let dc = &spec["dnsConfig"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).collect()
    };
    push_unique(&mut conf.nameservers, strings(&dc["nameservers"]));
    push_unique(&mut conf.searches, strings(&dc["searches"]));
    for o in dc["options"].as_array().into_iter().flatten() {
        if let Some(n) = o["name"].as_str().filter(|n| !n.is_empty()) {
            let opt = match o["value"].as_str() {
                Some(v) => format!("{n}:{v}"),
                None => n.to_string(),
            };
            merge_option(&mut conf.options, &opt);
        }
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    while conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
    }
    conf.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2 ; x\nsearch old\nsearch corp.example lab.\noptions edns0 ndots:2\n";

    fn cluster() -> ClusterDns {
        ClusterDns { server: "10.96.0.10".parse().unwrap(), domain: "cluster.local".into() }
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec})
    }

    #[test]
    fn host_file_and_upstreams() {
        let h = ResolvConf::parse(HOST);
        assert_eq!(h.nameservers, ["127.0.0.53", "10.0.0.2"]);
        assert_eq!(h.searches, ["corp.example", "lab"]);
        assert_eq!(h.options, ["edns0", "ndots:2"]);
        assert_eq!(upstreams(&h), ["10.0.0.2:53".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn by_policy() {
        let h = ResolvConf::parse(HOST);
        let c = cluster();
        assert_eq!(
            pod_resolv_conf(&pod(json!({})), &h, Some(&c)),
            "search team.svc.cluster.local svc.cluster.local cluster.local corp.example lab\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        // Default: the node's, without its loopback stub.
        assert_eq!(
            pod_resolv_conf(&pod(json!({"dnsPolicy": "Default"})), &h, Some(&c)),
            "search corp.example lab\nnameserver 10.0.0.2\noptions edns0 ndots:2\n"
        );
        // hostNetwork + ClusterFirst: Default, loopback kept (the node's own stack).
        let hn = pod_resolv_conf(&pod(json!({"hostNetwork": true})), &h, Some(&c));
        assert!(hn.contains("nameserver 127.0.0.53\n") && !hn.contains("10.96.0.10"));
        let hn = pod_resolv_conf(
            &pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
            &h,
            Some(&c),
        );
        assert!(hn.starts_with("search team.svc.cluster.local") && hn.contains("nameserver 10.96.0.10\n"));
        // None: only dnsConfig.
        let none = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.2.3.4"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            pod_resolv_conf(&none, &h, Some(&c)),
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
        // dnsConfig merged into ClusterFirst: options replaced by name.
        let merged = pod(json!({"dnsConfig": {"nameservers": ["10.96.0.10", "1.1.1.1"],
            "searches": ["svc.cluster.local", "x.example"], "options": [{"name": "ndots", "value": "1"}]}}));
        assert_eq!(
            pod_resolv_conf(&merged, &h, Some(&c)),
            "search team.svc.cluster.local svc.cluster.local cluster.local corp.example lab x.example\n\
             nameserver 10.96.0.10\nnameserver 1.1.1.1\noptions ndots:1\n"
        );
        // No cluster DNS: ClusterFirst falls back to Default.
        assert_eq!(
            pod_resolv_conf(&pod(json!({})), &h, None),
            pod_resolv_conf(&pod(json!({"dnsPolicy": "Default"})), &h, None)
        );
    }

    #[test]
    fn limits() {
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {"searches": many,
            "nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]}}));
        let r = ResolvConf::parse(&pod_resolv_conf(&p, &ResolvConf::default(), None));
        assert_eq!(r.searches.len(), 32);
        assert_eq!(r.nameservers.len(), 3);
    }
}
