//! What the scheduler reads from Pods and Nodes, parsed once from their JSON form.
//!
//! Parsing is lenient: the API service validated the objects, so a field of the wrong
//! shape is ignored rather than failing the pod (nothing here may panic on bus data).

use capstan_api::quantity::{parse_milli, parse_value};
use capstan_api::selectors::LabelSelector;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The taint of a node whose Ready condition is False (or missing).
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a cordoned node.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Default CPU request (millicores) used for scoring containers that request none.
pub const DEFAULT_MILLI_CPU: i64 = 100;
/// Default memory request (bytes) used for scoring containers that request none.
pub const DEFAULT_MEMORY: i64 = 200 * 1024 * 1024;

/// Labels as a sorted map.
pub type Labels = BTreeMap<String, String>;

/// The labels of an object.
pub fn labels_of(obj: &Value) -> Labels {
    string_map(obj.get("metadata").and_then(|m| m.get("labels")))
}

fn string_map(v: Option<&Value>) -> Labels {
    match v {
        Some(Value::Object(m)) => {
            m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect()
        }
        _ => Labels::new(),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn array(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

/// Resource amounts: CPU in millicores, memory and ephemeral storage in bytes, and any
/// other (extended) resource in whole units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Millicores.
    pub cpu: i64,
    /// Bytes.
    pub memory: i64,
    /// Bytes.
    pub ephemeral: i64,
    /// Extended resources (`nvidia.com/gpu`, `hugepages-2Mi`...), sorted by name.
    pub scalars: Vec<(String, i64)>,
}

impl Resources {
    fn from_map(m: &Map<String, Value>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in m {
            let Some(q) = q.as_str() else { continue };
            r.set(name, q);
        }
        r
    }

    fn set(&mut self, name: &str, q: &str) {
        match name {
            "cpu" => self.cpu = parse_milli(q).unwrap_or(0),
            "memory" => self.memory = parse_value(q).unwrap_or(0),
            "ephemeral-storage" => self.ephemeral = parse_value(q).unwrap_or(0),
            "pods" => {}
            _ => {
                let v = parse_value(q).unwrap_or(0);
                match self.scalars.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                    Ok(i) => self.scalars[i].1 = v,
                    Err(i) => self.scalars.insert(i, (name.to_string(), v)),
                }
            }
        }
    }

    /// The amount of an extended resource.
    pub fn scalar(&self, name: &str) -> i64 {
        self.scalars.binary_search_by(|(n, _)| n.as_str().cmp(name)).map(|i| self.scalars[i].1).unwrap_or(0)
    }

    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Resources) {
        self.combine(o, |a, b| a.saturating_add(b));
    }

    /// Subtracts `o` from `self`.
    pub fn sub(&mut self, o: &Resources) {
        self.combine(o, |a, b| a.saturating_sub(b));
    }

    /// Takes the larger of each resource.
    pub fn max_with(&mut self, o: &Resources) {
        self.combine(o, i64::max);
    }

    fn combine(&mut self, o: &Resources, f: impl Fn(i64, i64) -> i64) {
        self.cpu = f(self.cpu, o.cpu);
        self.memory = f(self.memory, o.memory);
        self.ephemeral = f(self.ephemeral, o.ephemeral);
        for (name, v) in &o.scalars {
            match self.scalars.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
                Ok(i) => self.scalars[i].1 = f(self.scalars[i].1, *v),
                Err(i) => self.scalars.insert(i, (name.clone(), f(0, *v))),
            }
        }
        self.scalars.retain(|(_, v)| *v != 0);
    }
}

/// What a pod asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    /// The effective requests (fit is checked against these).
    pub res: Resources,
    /// CPU with containers that request none counted as [`DEFAULT_MILLI_CPU`] (for scoring).
    pub nonzero_cpu: i64,
    /// Memory with containers that request none counted as [`DEFAULT_MEMORY`] (for scoring).
    pub nonzero_memory: i64,
}

/// A container's requests: `resources.requests`, each missing one taken from
/// `resources.limits` (as API defaulting does).
fn container_requests(c: &Value) -> (Resources, i64, i64) {
    let resources = c.get("resources");
    let mut r = Resources::default();
    let limits = resources.and_then(|r| r.get("limits")).and_then(Value::as_object);
    let requests = resources.and_then(|r| r.get("requests")).and_then(Value::as_object);
    if let Some(l) = limits {
        r = Resources::from_map(l);
    }
    let mut has_cpu = limits.is_some_and(|l| l.contains_key("cpu"));
    let mut has_mem = limits.is_some_and(|l| l.contains_key("memory"));
    if let Some(q) = requests {
        for (name, v) in q {
            if let Some(s) = v.as_str() {
                r.set(name, s);
            }
        }
        has_cpu |= q.contains_key("cpu");
        has_mem |= q.contains_key("memory");
    }
    let nz_cpu = if has_cpu { r.cpu } else { DEFAULT_MILLI_CPU };
    let nz_mem = if has_mem { r.memory } else { DEFAULT_MEMORY };
    (r, nz_cpu, nz_mem)
}

/// The requests of a pod spec, as upstream computes them: the sum over containers; each
/// regular init container needs its own requests plus those of the sidecars started
/// before it, and the pod needs the larger of that and the sum (sidecars run throughout);
/// pod-level `resources.requests` replace the aggregate where set; `overhead` is added.
pub fn pod_requests(spec: &Value) -> Requests {
    let mut sum = Resources::default();
    let (mut nz_cpu, mut nz_mem) = (0i64, 0i64);
    for c in array(spec.get("containers")) {
        let (r, c_cpu, c_mem) = container_requests(c);
        sum.add(&r);
        nz_cpu = nz_cpu.saturating_add(c_cpu);
        nz_mem = nz_mem.saturating_add(c_mem);
    }
    let mut init_max = Resources::default();
    let (mut init_nz_cpu, mut init_nz_mem) = (0i64, 0i64);
    let mut sidecars = Resources::default();
    let (mut side_nz_cpu, mut side_nz_mem) = (0i64, 0i64);
    for c in array(spec.get("initContainers")) {
        let (r, c_cpu, c_mem) = container_requests(c);
        if str_of(c, "restartPolicy") == "Always" {
            sum.add(&r);
            nz_cpu = nz_cpu.saturating_add(c_cpu);
            nz_mem = nz_mem.saturating_add(c_mem);
            sidecars.add(&r);
            side_nz_cpu = side_nz_cpu.saturating_add(c_cpu);
            side_nz_mem = side_nz_mem.saturating_add(c_mem);
        } else {
            let mut need = r;
            need.add(&sidecars);
            init_max.max_with(&need);
            init_nz_cpu = init_nz_cpu.max(c_cpu.saturating_add(side_nz_cpu));
            init_nz_mem = init_nz_mem.max(c_mem.saturating_add(side_nz_mem));
        }
    }
    sum.max_with(&init_max);
    nz_cpu = nz_cpu.max(init_nz_cpu);
    nz_mem = nz_mem.max(init_nz_mem);
    if let Some(pod_level) = spec.get("resources").and_then(|r| r.get("requests")).and_then(Value::as_object)
    {
        if let Some(q) = pod_level.get("cpu").and_then(Value::as_str) {
            sum.cpu = parse_milli(q).unwrap_or(0);
            nz_cpu = sum.cpu;
        }
        if let Some(q) = pod_level.get("memory").and_then(Value::as_str) {
            sum.memory = parse_value(q).unwrap_or(0);
            nz_mem = sum.memory;
        }
    }
    if let Some(overhead) = spec.get("overhead").and_then(Value::as_object) {
        let o = Resources::from_map(overhead);
        sum.add(&o);
        nz_cpu = nz_cpu.saturating_add(o.cpu);
        nz_mem = nz_mem.saturating_add(o.memory);
    }
    Requests { res: sum, nonzero_cpu: nz_cpu, nonzero_memory: nz_mem }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl Taint {
    /// Whether the taint keeps pods that do not tolerate it off the node.
    pub fn forbids_scheduling(&self) -> bool {
        self.effect == "NoSchedule" || self.effect == "NoExecute"
    }
}

/// A pod toleration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    /// Key (empty with `Exists`: every key).
    pub key: String,
    /// `Exists` (else `Equal`).
    pub exists: bool,
    /// Value compared with `Equal`.
    pub value: String,
    /// Effect (empty: every effect).
    pub effect: String,
}

impl Toleration {
    fn parse(v: &Value) -> Toleration {
        Toleration {
            key: str_of(v, "key").to_string(),
            exists: str_of(v, "operator") == "Exists",
            value: str_of(v, "value").to_string(),
            effect: str_of(v, "effect").to_string(),
        }
    }

    /// Whether this toleration tolerates `t` (upstream's `ToleratesTaint`).
    pub fn tolerates(&self, t: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != t.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != t.key {
            return false;
        }
        if self.exists {
            true
        } else {
            self.value == t.value
        }
    }
}

/// Whether any of `tolerations` tolerates `t`.
pub fn tolerated(tolerations: &[Toleration], t: &Taint) -> bool {
    tolerations.iter().any(|x| x.tolerates(t))
}

/// What the scheduler knows about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDef {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Allocatable resources (capacity where allocatable is missing).
    pub allocatable: Resources,
    /// Allocatable pod count.
    pub pods: i64,
    /// Taints, plus the implied `not-ready`/`unreachable` taint when the node's Ready
    /// condition is not True.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    /// The node's agent provisions local-path volumes (it names their root directory).
    pub local_path: bool,
}

impl NodeDef {
    /// Parses a Node.
    pub fn parse(node: &Value) -> NodeDef {
        let name = node.get("metadata").map(|m| str_of(m, "name")).unwrap_or("").to_string();
        let spec = node.get("spec").unwrap_or(&Value::Null);
        let status = node.get("status").unwrap_or(&Value::Null);
        let mut quantities = Map::new();
        if let Some(Value::Object(c)) = status.get("capacity") {
            quantities.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if let Some(Value::Object(a)) = status.get("allocatable") {
            quantities.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let allocatable = Resources::from_map(&quantities);
        let pods = quantities.get("pods").and_then(Value::as_str).and_then(parse_value).unwrap_or(0);
        let mut taints: Vec<Taint> = array(spec.get("taints"))
            .iter()
            .map(|t| Taint {
                key: str_of(t, "key").to_string(),
                value: str_of(t, "value").to_string(),
                effect: str_of(t, "effect").to_string(),
            })
            .collect();
        let ready = array(status.get("conditions")).iter().find(|c| str_of(c, "type") == "Ready");
        let implied = match ready.map(|c| str_of(c, "status")) {
            Some("True") => None,
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            _ => Some(TAINT_NOT_READY),
        };
        if let Some(key) = implied {
            if !taints.iter().any(|t| t.key == key && t.effect == "NoSchedule") {
                taints.push(Taint { key: key.into(), value: String::new(), effect: "NoSchedule".into() });
            }
        }
        NodeDef {
            name,
            labels: labels_of(node),
            allocatable,
            pods,
            taints,
            unschedulable: spec.get("unschedulable").and_then(Value::as_bool).unwrap_or(false),
            local_path: node
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get(crate::volumes::ANN_LOCAL_PATH_ROOT))
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty()),
        }
    }
}

/// The operator of a node selector requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    /// Value in the set.
    In,
    /// Value not in the set (or key absent).
    NotIn,
    /// Key present.
    Exists,
    /// Key absent.
    DoesNotExist,
    /// Integer value greater than.
    Gt,
    /// Integer value less than.
    Lt,
}

/// One node selector requirement (`matchExpressions` or `matchFields`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReq {
    /// Label key, or field (`metadata.name`).
    pub key: String,
    /// Operator.
    pub op: NodeOp,
    /// Values.
    pub values: Vec<String>,
}

impl NodeReq {
    fn parse(v: &Value) -> Option<NodeReq> {
        let op = match str_of(v, "operator") {
            "In" => NodeOp::In,
            "NotIn" => NodeOp::NotIn,
            "Exists" => NodeOp::Exists,
            "DoesNotExist" => NodeOp::DoesNotExist,
            "Gt" => NodeOp::Gt,
            "Lt" => NodeOp::Lt,
            _ => return None,
        };
        let values = array(v.get("values")).iter().filter_map(Value::as_str).map(str::to_string).collect();
        Some(NodeReq { key: str_of(v, "key").to_string(), op, values })
    }

    /// Whether a value (`None`: key absent) satisfies the requirement.
    fn matches(&self, got: Option<&str>) -> bool {
        match self.op {
            NodeOp::In => got.is_some_and(|g| self.values.iter().any(|v| v == g)),
            NodeOp::NotIn => got.is_none_or(|g| !self.values.iter().any(|v| v == g)),
            NodeOp::Exists => got.is_some(),
            NodeOp::DoesNotExist => got.is_none(),
            NodeOp::Gt | NodeOp::Lt => {
                let (Some(have), Some(want)) = (
                    got.and_then(|g| g.parse::<i64>().ok()),
                    self.values.first().and_then(|w| w.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.op == NodeOp::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// One node selector term: every expression and field requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTerm {
    /// `matchExpressions` on node labels.
    pub exprs: Vec<NodeReq>,
    /// `matchFields` (only `metadata.name` exists).
    pub fields: Vec<NodeReq>,
    /// A requirement had an unknown operator: the term matches nothing.
    pub invalid: bool,
}

impl NodeTerm {
    /// Parses a node selector term.
    pub fn parse(v: &Value) -> NodeTerm {
        let mut t = NodeTerm::default();
        for e in array(v.get("matchExpressions")) {
            match NodeReq::parse(e) {
                Some(r) => t.exprs.push(r),
                None => t.invalid = true,
            }
        }
        for e in array(v.get("matchFields")) {
            match NodeReq::parse(e) {
                Some(r) if r.key == "metadata.name" => t.fields.push(r),
                _ => t.invalid = true,
            }
        }
        t
    }

    /// Whether `node` satisfies the term. An empty term matches no node, as upstream.
    pub fn matches(&self, node: &NodeDef) -> bool {
        if self.invalid || (self.exprs.is_empty() && self.fields.is_empty()) {
            return false;
        }
        self.exprs.iter().all(|r| r.matches(node.labels.get(&r.key).map(String::as_str)))
            && self.fields.iter().all(|r| r.matches(Some(&node.name)))
    }
}

/// Which namespaces a pod affinity term looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsScope {
    /// Named namespaces (the pod's own when neither list nor selector is given).
    pub names: Vec<String>,
    /// `namespaceSelector` (`Some(empty)`: every namespace).
    pub selector: Option<LabelSelector>,
}

impl NsScope {
    /// Whether a pod in `ns` is in scope; `ns_labels` looks a namespace's labels up.
    pub fn contains(&self, ns: &str, ns_labels: &dyn Fn(&str) -> Labels) -> bool {
        if self.names.iter().any(|n| n == ns) {
            return true;
        }
        match &self.selector {
            None => false,
            Some(s) if s.is_empty() => true,
            Some(s) => s.matches(&ns_labels(ns)),
        }
    }
}

/// A pod (anti-)affinity term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTerm {
    /// Which pods (a missing selector matches none).
    pub selector: Option<LabelSelector>,
    /// `matchLabelKeys` / `mismatchLabelKeys` merged in: (key, value, must equal).
    pub extra: Vec<(String, String, bool)>,
    /// Which namespaces.
    pub namespaces: NsScope,
    /// The topology key.
    pub topology_key: String,
}

impl PodTerm {
    fn parse(v: &Value, pod_ns: &str, pod_labels: &Labels) -> Option<PodTerm> {
        let selector = match v.get("labelSelector") {
            None | Some(Value::Null) => None,
            Some(s) => Some(LabelSelector::from_label_selector_json(s).ok()?),
        };
        let mut extra = Vec::new();
        for (field, equal) in [("matchLabelKeys", true), ("mismatchLabelKeys", false)] {
            for k in array(v.get(field)).iter().filter_map(Value::as_str) {
                if let Some(val) = pod_labels.get(k) {
                    extra.push((k.to_string(), val.clone(), equal));
                }
            }
        }
        let names: Vec<String> =
            array(v.get("namespaces")).iter().filter_map(Value::as_str).map(str::to_string).collect();
        let ns_selector = match v.get("namespaceSelector") {
            None | Some(Value::Null) => None,
            Some(s) => Some(LabelSelector::from_label_selector_json(s).ok()?),
        };
        let names = if names.is_empty() && ns_selector.is_none() { vec![pod_ns.to_string()] } else { names };
        Some(PodTerm {
            selector,
            extra,
            namespaces: NsScope { names, selector: ns_selector },
            topology_key: str_of(v, "topologyKey").to_string(),
        })
    }

    /// Whether a pod in `ns` with `labels` matches the term.
    pub fn matches(&self, ns: &str, labels: &Labels, ns_labels: &dyn Fn(&str) -> Labels) -> bool {
        let Some(sel) = &self.selector else { return false };
        sel.matches(labels)
            && self.extra.iter().all(|(k, v, eq)| (labels.get(k) == Some(v)) == *eq)
            && self.namespaces.contains(ns, ns_labels)
    }
}

/// A topology spread constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spread {
    /// Allowed difference between the fullest and emptiest domain.
    pub max_skew: i64,
    /// The node label defining domains.
    pub topology_key: String,
    /// `DoNotSchedule` (a filter) rather than `ScheduleAnyway` (a score).
    pub hard: bool,
    /// Which pods count (a missing selector counts none).
    pub selector: Option<LabelSelector>,
    /// `matchLabelKeys` merged in: (key, value).
    pub extra: Vec<(String, String)>,
    /// `minDomains`.
    pub min_domains: i64,
    /// `nodeAffinityPolicy: Honor` (default): only nodes matching the pod's node
    /// affinity/selector count.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): only nodes whose taints the pod
    /// tolerates count.
    pub honor_taints: bool,
}

impl Spread {
    fn parse(v: &Value, pod_labels: &Labels) -> Option<Spread> {
        let selector = match v.get("labelSelector") {
            None | Some(Value::Null) => None,
            Some(s) => Some(LabelSelector::from_label_selector_json(s).ok()?),
        };
        let extra = array(v.get("matchLabelKeys"))
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|k| pod_labels.get(k).map(|val| (k.to_string(), val.clone())))
            .collect();
        Some(Spread {
            max_skew: v.get("maxSkew").and_then(Value::as_i64).unwrap_or(1).max(1),
            topology_key: str_of(v, "topologyKey").to_string(),
            hard: str_of(v, "whenUnsatisfiable") != "ScheduleAnyway",
            selector,
            extra,
            min_domains: v.get("minDomains").and_then(Value::as_i64).unwrap_or(1).max(1),
            honor_affinity: str_of(v, "nodeAffinityPolicy") != "Ignore",
            honor_taints: str_of(v, "nodeTaintsPolicy") == "Honor",
        })
    }

    /// Whether a pod's labels make it count for this constraint (same namespace assumed).
    pub fn counts(&self, labels: &Labels) -> bool {
        let Some(sel) = &self.selector else { return false };
        sel.matches(labels) && self.extra.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// Everything the scheduler needs about the pod it places.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// `namespace/name`.
    pub key: String,
    /// Namespace.
    pub namespace: String,
    /// UID.
    pub uid: String,
    /// Labels.
    pub labels: Labels,
    /// Requests.
    pub requests: Requests,
    /// `spec.nodeSelector`.
    pub node_selector: Vec<(String, String)>,
    /// Required node affinity terms (any one must match); `None`: no requirement.
    pub required_terms: Option<Vec<NodeTerm>>,
    /// Preferred node affinity terms with their weights.
    pub preferred_terms: Vec<(i64, NodeTerm)>,
    /// Tolerations.
    pub tolerations: Vec<Toleration>,
    /// Required pod affinity terms.
    pub affinity: Vec<PodTerm>,
    /// Required pod anti-affinity terms.
    pub anti_affinity: Vec<PodTerm>,
    /// Preferred pod affinity terms (positive weight) and anti-affinity (negative).
    pub preferred_pod_terms: Vec<(i64, PodTerm)>,
    /// Topology spread constraints.
    pub spread: Vec<Spread>,
    /// `preemptionPolicy: Never`.
    pub never_preempt: bool,
    /// `spec.priority` (0 when unset).
    pub priority: i64,
    /// What the pod's claims require of a node (set by the scheduler from its volume
    /// informers; `None`: no claims).
    pub volumes: Option<std::sync::Arc<super::volumes::VolumeFilter>>,
}

impl PodInfo {
    /// Parses a Pod.
    pub fn parse(pod: &Value) -> PodInfo {
        let md = pod.get("metadata").unwrap_or(&Value::Null);
        let spec = pod.get("spec").unwrap_or(&Value::Null);
        let namespace = str_of(md, "namespace").to_string();
        let labels = labels_of(pod);
        let affinity = spec.get("affinity");
        let node_aff = affinity.and_then(|a| a.get("nodeAffinity"));
        let required_terms = node_aff
            .and_then(|n| n.get("requiredDuringSchedulingIgnoredDuringExecution"))
            .filter(|r| !r.is_null())
            .map(|r| array(r.get("nodeSelectorTerms")).iter().map(NodeTerm::parse).collect());
        let preferred_terms =
            array(node_aff.and_then(|n| n.get("preferredDuringSchedulingIgnoredDuringExecution")))
                .iter()
                .filter_map(|p| {
                    let w = p.get("weight").and_then(Value::as_i64)?;
                    Some((w, NodeTerm::parse(p.get("preference")?)))
                })
                .collect();
        let terms = |kind: &str, field: &str| -> Vec<PodTerm> {
            array(affinity.and_then(|a| a.get(kind)).and_then(|k| k.get(field)))
                .iter()
                .filter_map(|t| PodTerm::parse(t, &namespace, &labels))
                .collect()
        };
        let req_field = "requiredDuringSchedulingIgnoredDuringExecution";
        let pref_field = "preferredDuringSchedulingIgnoredDuringExecution";
        let mut preferred_pod_terms = Vec::new();
        for (kind, sign) in [("podAffinity", 1), ("podAntiAffinity", -1)] {
            for p in array(affinity.and_then(|a| a.get(kind)).and_then(|k| k.get(pref_field))) {
                let Some(w) = p.get("weight").and_then(Value::as_i64) else { continue };
                let Some(t) = p.get("podAffinityTerm").and_then(|t| PodTerm::parse(t, &namespace, &labels))
                else {
                    continue;
                };
                preferred_pod_terms.push((sign * w, t));
            }
        }
        PodInfo {
            key: format!("{namespace}/{}", str_of(md, "name")),
            uid: str_of(md, "uid").to_string(),
            requests: pod_requests(spec),
            node_selector: string_map(spec.get("nodeSelector")).into_iter().collect(),
            required_terms,
            preferred_terms,
            tolerations: array(spec.get("tolerations")).iter().map(Toleration::parse).collect(),
            affinity: terms("podAffinity", req_field),
            anti_affinity: terms("podAntiAffinity", req_field),
            preferred_pod_terms,
            spread: array(spec.get("topologySpreadConstraints"))
                .iter()
                .filter_map(|s| Spread::parse(s, &labels))
                .collect(),
            never_preempt: str_of(spec, "preemptionPolicy") == "Never",
            priority: spec.get("priority").and_then(Value::as_i64).unwrap_or(0),
            volumes: None,
            labels,
            namespace,
        }
    }

    /// Whether the node matches `nodeSelector` and the required node affinity.
    pub fn matches_node_affinity(&self, node: &NodeDef) -> bool {
        self.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            && self.required_terms.as_ref().is_none_or(|terms| terms.iter().any(|t| t.matches(node)))
    }

    /// The first taint of the node that keeps this pod off it.
    pub fn untolerated_taint<'a>(&self, node: &'a NodeDef) -> Option<&'a Taint> {
        node.taints.iter().find(|t| t.forbids_scheduling() && !tolerated(&self.tolerations, t))
    }
}

/// The required anti-affinity terms of a placed pod (for the symmetric check).
pub fn required_anti_affinity(pod: &Value) -> Vec<PodTerm> {
    let md = pod.get("metadata").unwrap_or(&Value::Null);
    let ns = str_of(md, "namespace");
    let aff = pod.get("spec").and_then(|s| s.get("affinity")).and_then(|a| a.get("podAntiAffinity"));
    let Some(aff) = aff else { return Vec::new() };
    let labels = labels_of(pod);
    array(aff.get("requiredDuringSchedulingIgnoredDuringExecution"))
        .iter()
        .filter_map(|t| PodTerm::parse(t, ns, &labels))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_sum_containers_and_max_init() {
        let spec = json!({
            "containers": [
                {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"resources": {"requests": {"cpu": "200m"}, "limits": {"memory": "128Mi", "nvidia.com/gpu": "1"}}},
            ],
            "initContainers": [
                {"resources": {"requests": {"cpu": "1", "memory": "16Mi"}}},
            ],
            "overhead": {"cpu": "10m"},
        });
        let r = pod_requests(&spec);
        assert_eq!(r.res.cpu, 1010);
        assert_eq!(r.res.memory, 192 << 20);
        assert_eq!(r.res.scalar("nvidia.com/gpu"), 1);
        // The second container requests no memory explicitly but its limit defaults it.
        assert_eq!(r.nonzero_memory, 192 << 20);
    }

    #[test]
    fn requests_with_sidecars() {
        let spec = json!({
            "containers": [{"resources": {"requests": {"cpu": "500m"}}}],
            "initContainers": [
                {"restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                {"resources": {"requests": {"cpu": "1"}}},
            ],
        });
        let r = pod_requests(&spec);
        // max(500+300, 1000+300)
        assert_eq!(r.res.cpu, 1300);
        let none = pod_requests(&json!({"containers": [{}, {}]}));
        assert_eq!(none.res.cpu, 0);
        assert_eq!(none.nonzero_cpu, 2 * DEFAULT_MILLI_CPU);
        assert_eq!(none.nonzero_memory, 2 * DEFAULT_MEMORY);
    }

    #[test]
    fn node_parse_and_ready_taint() {
        let n = NodeDef::parse(&json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}},
            "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                       "allocatable": {"cpu": "7500m"},
                       "conditions": [{"type": "Ready", "status": "False"}]},
        }));
        assert_eq!(n.allocatable.cpu, 7500);
        assert_eq!(n.allocatable.memory, 32 << 30);
        assert_eq!(n.pods, 110);
        assert_eq!(n.taints.len(), 2);
        assert_eq!(n.taints[1].key, TAINT_NOT_READY);
        let ready = NodeDef::parse(&json!({"metadata": {"name": "n2"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
        assert!(ready.taints.is_empty());
    }

    #[test]
    fn tolerations() {
        let t = Taint { key: "k".into(), value: "v".into(), effect: "NoSchedule".into() };
        let tol = |v: Value| Toleration::parse(&v);
        assert!(tol(json!({"key": "k", "operator": "Equal", "value": "v"})).tolerates(&t));
        assert!(tol(json!({"key": "k", "value": "v", "effect": "NoSchedule"})).tolerates(&t));
        assert!(!tol(json!({"key": "k", "value": "w"})).tolerates(&t));
        assert!(!tol(json!({"key": "k", "value": "v", "effect": "NoExecute"})).tolerates(&t));
        assert!(tol(json!({"key": "k", "operator": "Exists"})).tolerates(&t));
        assert!(tol(json!({"operator": "Exists"})).tolerates(&t));
        assert!(!tol(json!({"operator": "Exists", "effect": "NoExecute"})).tolerates(&t));
        assert!(!tol(json!({"key": "other", "operator": "Exists"})).tolerates(&t));
    }

    #[test]
    fn node_affinity_terms() {
        let node =
            NodeDef::parse(&json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "cores": "16"}}}));
        let pod = |aff: Value| {
            PodInfo::parse(&json!({"metadata": {"name": "p", "namespace": "d"},
                "spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": aff}}}}}))
        };
        let m = |aff: Value| pod(aff).matches_node_affinity(&node);
        assert!(m(
            json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd", "nvme"]}]}])
        ));
        assert!(!m(json!([{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}])));
        assert!(m(json!([{"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}])));
        assert!(m(json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"}]}])));
        assert!(m(json!([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["8"]}]}])));
        assert!(!m(json!([{"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["8"]}]}])));
        assert!(m(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}])));
        assert!(!m(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}])
        ));
        // Terms are ORed, requirements within a term ANDed; an empty term matches nothing.
        assert!(m(json!([{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]},
                         {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}])));
        assert!(!m(json!([{"matchExpressions": [{"key": "disk", "operator": "Exists"},
                                                 {"key": "gpu", "operator": "Exists"}]}])));
        assert!(!m(json!([{}])));
        assert!(!m(json!([])));
    }
}
