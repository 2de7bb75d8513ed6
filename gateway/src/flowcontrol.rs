//! API Priority and Fairness (`flowcontrol.apiserver.k8s.io/v1`), as upstream's APF filter:
//! every request is classified by the FlowSchemas (lowest `matchingPrecedence` first, then
//! name) into a priority level and a flow (the schema plus its distinguisher: the user or
//! the namespace). Exempt levels pass at once. A limited level has a share of the server's
//! concurrency (`nominalConcurrencyShares` of `maxRequestsInflight`); requests over it wait
//! in the level's queues, a flow's queue chosen by shuffle sharding (the shortest of
//! `handSize` queues dealt from the flow's hash), and freed seats go to the queues in
//! turn, so one flooding flow waits behind itself, not in front of the others. A full
//! queue, a level with `limitResponse: Reject`, or a wait longer than [`QUEUE_WAIT`] is
//! `429 TooManyRequests` with `Retry-After: 1`. Every answer carries the
//! `X-Kubernetes-PF-FlowSchema-UID` and `X-Kubernetes-PF-PriorityLevel-UID` headers.
//!
//! Borrowing differs from upstream's (which re-divides seats every 10 s from observed
//! demand): a level always has its seats that are not lendable (`lendablePercent`), may
//! use free seats up to its nominal limit while the unlent seats of the other levels stay
//! free for them, and beyond it (up to `borrowingLimitPercent`) only while no other level
//! has requests waiting. Freed seats go first to the waiting level furthest below its
//! nominal limit.
//!
//! Long-running requests (watches once started, logs, exec, port-forward, proxy) are
//! classified but hold no seat, as upstream; health checks are answered before this.
//! The default FlowSchemas and priority levels are upstream's mandatory and suggested
//! configuration ([`defaults`]), created at bootstrap; until then (and if every schema is
//! deleted) the same defaults are used from memory.

pub mod config;

use crate::audit::ObjectRef;
use crate::auth::User;
use crate::cache::Cache;
use crate::status::{ApiError, ApiResult};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a request may wait in a queue before it gets 429.
pub const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// The response header naming the FlowSchema that classified a request
/// (`X-Kubernetes-PF-FlowSchema-UID`; header names are sent in lower case).
pub const FLOW_SCHEMA_HEADER: &str = "x-kubernetes-pf-flowschema-uid";
/// The response header naming its priority level (`X-Kubernetes-PF-PriorityLevel-UID`).
pub const PRIORITY_LEVEL_HEADER: &str = "x-kubernetes-pf-prioritylevel-uid";

const SCHEMAS: &[u8] = b"/registry/flowcontrol.apiserver.k8s.io/flowschemas/";
const LEVELS: &[u8] = b"/registry/flowcontrol.apiserver.k8s.io/prioritylevelconfigurations/";

static EXECUTING: LazyLock<capstan_metrics::IntGaugeVec> = LazyLock::new(|| {
    capstan_metrics::gauges(
        "apiserver_flowcontrol_current_executing_requests",
        "Number of requests in initial (for a WATCH) or any (for a non-WATCH) execution stage in the API Priority and Fairness subsystem",
        &["priority_level", "flow_schema"],
    )
});
static INQUEUE: LazyLock<capstan_metrics::IntGaugeVec> = LazyLock::new(|| {
    capstan_metrics::gauges(
        "apiserver_flowcontrol_current_inqueue_requests",
        "Number of requests currently pending in queues of the API Priority and Fairness subsystem",
        &["priority_level", "flow_schema"],
    )
});
static DISPATCHED: LazyLock<capstan_metrics::IntCounterVec> = LazyLock::new(|| {
    capstan_metrics::counters(
        "apiserver_flowcontrol_dispatched_requests_total",
        "Number of requests executed by API Priority and Fairness subsystem",
        &["priority_level", "flow_schema"],
    )
});
static REJECTED: LazyLock<capstan_metrics::IntCounterVec> = LazyLock::new(|| {
    capstan_metrics::counters(
        "apiserver_flowcontrol_rejected_requests_total",
        "Number of requests rejected by API Priority and Fairness subsystem",
        &["priority_level", "flow_schema", "reason"],
    )
});
static WAIT: LazyLock<capstan_metrics::HistogramVec> = LazyLock::new(|| {
    capstan_metrics::histograms(
        "apiserver_flowcontrol_request_wait_duration_seconds",
        "Length of time a request spent waiting in its queue",
        &["flow_schema", "priority_level", "execute"],
        &[0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 25.0, 50.0],
    )
});

/// Records how long a limited request waited in a queue (0 when it was not queued) and
/// whether it then ran.
fn waited(class: &Classification, wait: Duration, execute: bool) {
    let execute = if execute { "true" } else { "false" };
    WAIT.with_label_values(&[&class.flow_schema, &class.priority_level, execute]).observe(wait.as_secs_f64());
}

static NOMINAL: LazyLock<capstan_metrics::IntGaugeVec> = LazyLock::new(|| {
    capstan_metrics::gauges(
        "apiserver_flowcontrol_nominal_limit_seats",
        "Nominal number of execution seats configured for each priority level",
        &["priority_level"],
    )
});

/// What a request is, for classification.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Kubernetes verb (`get`, `list`, `create`...), or the lower-case method of a
    /// non-resource request.
    pub verb: String,
    /// The object, for resource requests.
    pub object: Option<ObjectRef>,
    /// The URL path.
    pub path: String,
}

/// How a request was classified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// The FlowSchema's name and uid.
    pub flow_schema: String,
    /// Its uid.
    pub flow_schema_uid: String,
    /// The priority level's name.
    pub priority_level: String,
    /// Its uid.
    pub priority_level_uid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Distinguisher {
    None,
    ByUser,
    ByNamespace,
}

#[derive(Debug)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

#[derive(Debug)]
struct ResourceRule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    cluster_scope: bool,
    namespaces: Vec<String>,
}

#[derive(Debug)]
struct NonResourceRule {
    verbs: Vec<String>,
    urls: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    subjects: Vec<Subject>,
    resources: Vec<ResourceRule>,
    non_resources: Vec<NonResourceRule>,
}

#[derive(Debug)]
struct Schema {
    name: String,
    uid: String,
    precedence: i64,
    level: String,
    distinguisher: Distinguisher,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queuing {
    queues: usize,
    hand_size: usize,
    queue_length_limit: usize,
}

#[derive(Debug, Clone)]
struct Level {
    uid: String,
    exempt: bool,
    shares: u64,
    lendable_percent: u64,
    borrowing_limit_percent: Option<u64>,
    /// `None`: `limitResponse.type: Reject`.
    queuing: Option<Queuing>,
}

/// The parsed configuration.
#[derive(Debug, Default)]
struct Config {
    schemas: Vec<Schema>,
    levels: HashMap<String, Level>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn any(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

impl Schema {
    fn parse(obj: &Value) -> Option<Schema> {
        let spec = obj.get("spec")?;
        let rules = spec
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|r| Rule {
                subjects: r
                    .get("subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| {
                        let name = |k: &str| s.get(k)?.get("name")?.as_str().map(str::to_string);
                        match s.get("kind")?.as_str()? {
                            "User" => Some(Subject::User(name("user")?)),
                            "Group" => Some(Subject::Group(name("group")?)),
                            "ServiceAccount" => {
                                let sa = s.get("serviceAccount")?;
                                Some(Subject::ServiceAccount {
                                    namespace: sa.get("namespace")?.as_str()?.to_string(),
                                    name: sa.get("name")?.as_str()?.to_string(),
                                })
                            }
                            _ => None,
                        }
                    })
                    .collect(),
                resources: r
                    .get("resourceRules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|rr| ResourceRule {
                        verbs: strings(rr, "verbs"),
                        api_groups: strings(rr, "apiGroups"),
                        resources: strings(rr, "resources"),
                        cluster_scope: rr.get("clusterScope").and_then(Value::as_bool).unwrap_or(false),
                        namespaces: strings(rr, "namespaces"),
                    })
                    .collect(),
                non_resources: r
                    .get("nonResourceRules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|nr| NonResourceRule {
                        verbs: strings(nr, "verbs"),
                        urls: strings(nr, "nonResourceURLs"),
                    })
                    .collect(),
            })
            .collect();
        Some(Schema {
            name: obj.get("metadata")?.get("name")?.as_str()?.to_string(),
            uid: capstan_api::meta::meta_str(obj, "uid").unwrap_or_default().to_string(),
            precedence: spec.get("matchingPrecedence").and_then(Value::as_i64).unwrap_or(1000),
            level: spec.get("priorityLevelConfiguration")?.get("name")?.as_str()?.to_string(),
            distinguisher: match spec
                .get("distinguisherMethod")
                .and_then(|d| d.get("type"))
                .and_then(Value::as_str)
            {
                Some("ByUser") => Distinguisher::ByUser,
                Some("ByNamespace") => Distinguisher::ByNamespace,
                _ => Distinguisher::None,
            },
            rules,
        })
    }

    fn matches(&self, user: &User, req: &Request) -> bool {
        self.rules.iter().any(|r| r.matches(user, req))
    }
}

impl Rule {
    fn matches(&self, user: &User, req: &Request) -> bool {
        let subject = self.subjects.iter().any(|s| match s {
            Subject::User(n) => n == "*" || *n == user.name,
            Subject::Group(g) => g == "*" || user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount { namespace, name } => user
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, n)| ns == namespace && (name == "*" || n == name)),
        });
        if !subject {
            return false;
        }
        match &req.object {
            Some(o) => {
                let resource = if o.subresource.is_empty() {
                    o.resource.clone()
                } else {
                    format!("{}/{}", o.resource, o.subresource)
                };
                self.resources.iter().any(|rr| {
                    any(&rr.verbs, &req.verb)
                        && any(&rr.api_groups, &o.group)
                        && any(&rr.resources, &resource)
                        && if o.namespace.is_empty()
                            || (o.resource == "namespaces" && o.subresource.is_empty())
                        {
                            rr.cluster_scope
                        } else {
                            any(&rr.namespaces, &o.namespace)
                        }
                })
            }
            None => self.non_resources.iter().any(|nr| {
                any(&nr.verbs, &req.verb)
                    && nr.urls.iter().any(|u| {
                        u == "*"
                            || *u == req.path
                            || u.strip_suffix('*').is_some_and(|prefix| req.path.starts_with(prefix))
                    })
            }),
        }
    }
}

impl Level {
    fn parse(obj: &Value) -> Option<(String, Level)> {
        let name = obj.get("metadata")?.get("name")?.as_str()?.to_string();
        let spec = obj.get("spec")?;
        let uid = capstan_api::meta::meta_str(obj, "uid").unwrap_or_default().to_string();
        let exempt = spec.get("type").and_then(Value::as_str) == Some("Exempt");
        let limited = spec.get("limited").cloned().unwrap_or(Value::Null);
        let num = |k: &str| limited.get(k).and_then(Value::as_u64);
        let queuing = match limited.get("limitResponse").and_then(|r| r.get("type")).and_then(Value::as_str) {
            Some("Reject") => None,
            _ => {
                let q = limited
                    .get("limitResponse")
                    .and_then(|r| r.get("queuing"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let n = |k: &str, d: u64| q.get(k).and_then(Value::as_u64).unwrap_or(d).max(1) as usize;
                let queues = n("queues", 64);
                Some(Queuing {
                    queues,
                    hand_size: n("handSize", 8).min(queues),
                    queue_length_limit: n("queueLengthLimit", 50),
                })
            }
        };
        Some((
            name,
            Level {
                uid,
                exempt,
                shares: num("nominalConcurrencyShares").unwrap_or(30),
                lendable_percent: num("lendablePercent").unwrap_or(0).min(100),
                borrowing_limit_percent: num("borrowingLimitPercent"),
                queuing,
            },
        ))
    }
}

impl Config {
    fn from_objects(schemas: &[Value], levels: &[Value]) -> Config {
        let mut out = Config {
            schemas: schemas.iter().filter_map(Schema::parse).collect(),
            levels: levels.iter().filter_map(Level::parse).collect(),
        };
        out.schemas.sort_by(|a, b| a.precedence.cmp(&b.precedence).then_with(|| a.name.cmp(&b.name)));
        out
    }

    fn from_cache(cache: &Cache) -> Config {
        let read = |prefix: &[u8]| -> Vec<Value> {
            let end = capstan_storage::prefix_end(prefix);
            cache.list(prefix, &end, 0, |_| true).0.iter().map(|o| o.value().clone()).collect()
        };
        let (mut schemas, mut levels) = (read(SCHEMAS), read(LEVELS));
        let (s, l) = defaults();
        if schemas.is_empty() || levels.is_empty() {
            return Config::from_objects(&s, &l);
        }
        // As upstream, the mandatory objects are imagined while they are missing (the
        // config controller creates them again).
        for (have, boots) in [(&mut schemas, s), (&mut levels, l)] {
            for boot in boots {
                let name = capstan_api::meta::name(&boot).unwrap_or("");
                if config::MANDATORY.contains(&name)
                    && !have.iter().any(|o| capstan_api::meta::name(o) == Some(name))
                {
                    have.push(boot);
                }
            }
        }
        Config::from_objects(&schemas, &levels)
    }

    /// The schema and level of a request: the first matching schema whose level exists;
    /// with none, the mandatory catch-all (as upstream, which keeps it in place).
    fn classify(&self, user: &User, req: &Request) -> Option<(&Schema, &Level)> {
        self.schemas
            .iter()
            .filter(|s| s.matches(user, req))
            .find_map(|s| self.levels.get(&s.level).map(|l| (s, l)))
    }
}

/// One queued request: its seat arrives on `tx`.
struct Waiter {
    tx: oneshot::Sender<Seat>,
    schema: String,
}

struct LevelState {
    nominal: usize,
    guaranteed: usize,
    max: usize,
    executing: usize,
    queuing: Option<Queuing>,
    queues: Vec<VecDeque<Waiter>>,
    next: usize,
}

impl LevelState {
    fn waiting(&self) -> bool {
        self.queues.iter().any(|q| !q.is_empty())
    }
}

#[derive(Default)]
struct Dispatch {
    levels: HashMap<String, LevelState>,
    total: usize,
}

struct Inner {
    /// Where the configuration comes from (`None` in unit tests).
    cache: Option<Arc<Cache>>,
    limit: usize,
    config: RwLock<Arc<Config>>,
    dispatch: Mutex<Dispatch>,
}

/// The APF filter. Cheap to share behind an `Arc`.
pub struct FlowControl {
    inner: Arc<Inner>,
}

/// An execution seat, given back when dropped.
pub struct Seat {
    inner: Option<Arc<Inner>>,
    level: String,
    schema: String,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            EXECUTING.with_label_values(&[&self.level, &self.schema]).dec();
            let mut d = inner.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            d.total = d.total.saturating_sub(1);
            if let Some(l) = d.levels.get_mut(&self.level) {
                l.executing = l.executing.saturating_sub(1);
            }
            inner.dispatch_waiting(&mut d);
        }
    }
}

impl Dispatch {
    /// Seats of the other levels' unlent shares that are free: kept for them.
    fn reserved_except(&self, level: &str) -> usize {
        self.levels
            .iter()
            .filter(|(n, _)| n.as_str() != level)
            .map(|(_, l)| l.guaranteed.saturating_sub(l.executing))
            .sum()
    }

    fn can_start(&self, level: &str, limit: usize) -> bool {
        let Some(l) = self.levels.get(level) else { return false };
        if l.executing < l.guaranteed {
            return true;
        }
        if self.total + self.reserved_except(level) >= limit || l.executing >= l.max {
            return false;
        }
        l.executing < l.nominal || !self.levels.iter().any(|(n, o)| n.as_str() != level && o.waiting())
    }
}

impl Inner {
    fn seat(self: &Arc<Self>, d: &mut Dispatch, level: &str, schema: &str) -> Seat {
        d.total += 1;
        if let Some(l) = d.levels.get_mut(level) {
            l.executing += 1;
        }
        EXECUTING.with_label_values(&[level, schema]).inc();
        DISPATCHED.with_label_values(&[level, schema]).inc();
        Seat { inner: Some(self.clone()), level: level.to_string(), schema: schema.to_string() }
    }

    /// Hands free seats to waiting requests, the level furthest below its nominal limit
    /// first, its queues in turn.
    fn dispatch_waiting(self: &Arc<Self>, d: &mut Dispatch) {
        loop {
            let mut best: Option<(String, f64)> = None;
            for (name, l) in &d.levels {
                if !l.waiting() || !d.can_start(name, self.limit) {
                    continue;
                }
                let fill = l.executing as f64 / l.nominal.max(1) as f64;
                if best.as_ref().is_none_or(|(_, f)| fill < *f) {
                    best = Some((name.clone(), fill));
                }
            }
            let Some((name, _)) = best else { return };
            let waiter = {
                let Some(l) = d.levels.get_mut(&name) else { return };
                let n = l.queues.len();
                let mut found = None;
                for i in 0..n {
                    let qi = (l.next + i) % n;
                    if let Some(w) = l.queues[qi].pop_front() {
                        l.next = (qi + 1) % n;
                        found = Some(w);
                        break;
                    }
                }
                found
            };
            let Some(w) = waiter else { return };
            if w.tx.is_closed() {
                continue; // gave up waiting (and counted itself out of the queue)
            }
            let seat = self.seat(d, &name, &w.schema);
            if let Err(mut seat) = w.tx.send(seat) {
                // It gave up just now: undo without re-entering this lock.
                seat.inner = None;
                EXECUTING.with_label_values(&[&name, &w.schema]).dec();
                d.total = d.total.saturating_sub(1);
                if let Some(l) = d.levels.get_mut(&name) {
                    l.executing = l.executing.saturating_sub(1);
                }
                continue;
            }
            INQUEUE.with_label_values(&[&name, &w.schema]).dec();
        }
    }
}

fn flow_hash(schema: &str, distinguisher: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    schema.hash(&mut h);
    distinguisher.hash(&mut h);
    h.finish()
}

/// Deals `hand` distinct queue indices out of `queues` from `hash` (shuffle sharding).
fn deal(mut hash: u64, queues: usize, hand: usize) -> Vec<usize> {
    let mut deck: Vec<usize> = (0..queues).collect();
    let mut out = Vec::with_capacity(hand);
    for i in 0..hand.min(queues) {
        let left = (queues - i) as u64;
        let pick = (hash % left) as usize;
        hash /= left;
        out.push(deck.swap_remove(pick));
    }
    out
}

fn rejected(c: &Classification, reason: &str) -> ApiError {
    REJECTED.with_label_values(&[&c.priority_level, &c.flow_schema, reason]).inc();
    ApiError::TooManyRequests("Too many requests, please try again later.".into())
}

impl FlowControl {
    /// The filter over `limit` seats (0: no limit) and the FlowSchemas and priority levels
    /// in `cache`, kept current by a background task.
    pub fn start(cache: Arc<Cache>, limit: usize) -> FlowControl {
        let inner = Arc::new(Inner {
            limit: if limit == 0 { usize::MAX / 4 } else { limit },
            config: RwLock::new(Arc::new(Config::default())),
            dispatch: Mutex::new(Dispatch::default()),
            cache: Some(cache.clone()),
        });
        inner.reload();
        let weak = Arc::downgrade(&inner);
        let mut head = cache.subscribe();
        tokio::spawn(async move {
            let mut scanned = 0;
            while head.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let touched = match cache
                    .events_after(scanned, 1, |e| e.key.starts_with(SCHEMAS) || e.key.starts_with(LEVELS))
                {
                    Ok((events, to)) => {
                        scanned = to;
                        !events.is_empty()
                    }
                    Err(_) => true,
                };
                if touched {
                    // A reload reads the whole configuration: the changes up to here are in it.
                    scanned = scanned.max(cache.revision());
                    inner.reload();
                }
            }
        });
        FlowControl { inner }
    }

    /// Classifies a request and, unless it is exempt or `long_running`, waits for a seat.
    /// The classification is returned also when the request is refused (for the headers).
    pub async fn admit(
        &self,
        user: &User,
        req: &Request,
        long_running: bool,
    ) -> (Classification, ApiResult<Option<Seat>>) {
        let config = self.inner.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some((schema, level)) = config.classify(user, req) else {
            // No schema and no catch-all: nothing to limit by.
            return (Classification::default(), Ok(None));
        };
        let class = Classification {
            flow_schema: schema.name.clone(),
            flow_schema_uid: schema.uid.clone(),
            priority_level: schema.level.clone(),
            priority_level_uid: level.uid.clone(),
        };
        if level.exempt || long_running {
            return (class, Ok(None));
        }
        let distinguisher = match schema.distinguisher {
            Distinguisher::None => "",
            Distinguisher::ByUser => user.name.as_str(),
            Distinguisher::ByNamespace => req.object.as_ref().map(|o| o.namespace.as_str()).unwrap_or(""),
        };
        let arrived = std::time::Instant::now();
        let rx = {
            let mut d = self.inner.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            let start = d.levels.get(&schema.level).is_some_and(|l| !l.waiting())
                && d.can_start(&schema.level, self.inner.limit);
            if start {
                waited(&class, Duration::ZERO, true);
                let seat = self.inner.seat(&mut d, &schema.level, &schema.name);
                return (class, Ok(Some(seat)));
            }
            let Some(l) = d.levels.get_mut(&schema.level) else {
                return (class, Ok(None));
            };
            let Some(q) = l.queuing else {
                waited(&class, Duration::ZERO, false);
                let e = rejected(&class, "concurrency-limit");
                return (class, Err(e));
            };
            let hand = deal(flow_hash(&schema.name, distinguisher), l.queues.len(), q.hand_size);
            let Some(&qi) = hand.iter().min_by_key(|&&i| l.queues[i].len()) else {
                waited(&class, Duration::ZERO, false);
                let e = rejected(&class, "queue-full");
                return (class, Err(e));
            };
            l.queues[qi].retain(|w| !w.tx.is_closed());
            if l.queues[qi].len() >= q.queue_length_limit {
                waited(&class, Duration::ZERO, false);
                let e = rejected(&class, "queue-full");
                return (class, Err(e));
            }
            let (tx, rx) = oneshot::channel();
            l.queues[qi].push_back(Waiter { tx, schema: schema.name.clone() });
            INQUEUE.with_label_values(&[&schema.level, &schema.name]).inc();
            // A seat may have freed between the check and the queueing.
            self.inner.dispatch_waiting(&mut d);
            rx
        };
        let mut rx = rx;
        match tokio::time::timeout(QUEUE_WAIT, &mut rx).await {
            Ok(Ok(seat)) => {
                waited(&class, arrived.elapsed(), true);
                (class, Ok(Some(seat)))
            }
            _ => {
                rx.close();
                if let Ok(seat) = rx.try_recv() {
                    waited(&class, arrived.elapsed(), true);
                    return (class, Ok(Some(seat))); // it came as the wait ended
                }
                // Counted out of the queue here; the dispatcher skips closed waiters.
                INQUEUE.with_label_values(&[&schema.level, &schema.name]).dec();
                waited(&class, arrived.elapsed(), false);
                let e = rejected(&class, "time-out");
                (class, Err(e))
            }
        }
    }
}

impl Inner {
    fn reload(&self) {
        if let Some(cache) = &self.cache {
            self.apply(Config::from_cache(cache));
        }
    }

    #[cfg(test)]
    fn reload_from(&self, schemas: &[Value], levels: &[Value]) {
        self.apply(Config::from_objects(schemas, levels));
    }

    fn apply(&self, config: Config) {
        let total_shares: u64 = config.levels.values().filter(|l| !l.exempt).map(|l| l.shares).sum();
        let mut d = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
        for (name, l) in &config.levels {
            if l.exempt {
                continue;
            }
            let nominal = if total_shares == 0 {
                self.limit
            } else {
                ((self.limit as u128 * l.shares as u128).div_ceil(total_shares as u128) as usize).max(1)
            };
            let guaranteed = nominal - nominal * l.lendable_percent as usize / 100;
            let max = match l.borrowing_limit_percent {
                Some(p) => nominal + nominal * p as usize / 100,
                None => usize::MAX,
            };
            NOMINAL.with_label_values(&[name]).set(nominal as i64);
            let queues = l.queuing.map(|q| q.queues).unwrap_or(0);
            let st = d.levels.entry(name.clone()).or_insert_with(|| LevelState {
                nominal,
                guaranteed,
                max,
                executing: 0,
                queuing: l.queuing,
                queues: (0..queues).map(|_| VecDeque::new()).collect(),
                next: 0,
            });
            st.nominal = nominal;
            st.guaranteed = guaranteed;
            st.max = max;
            st.queuing = l.queuing;
            if st.queues.len() != queues {
                // Waiters keep their turn in the first new queue (with no queues left, their
                // wait ends and they get 429).
                let waiting: Vec<Waiter> = st.queues.drain(..).flatten().collect();
                st.queues = (0..queues).map(|_| VecDeque::new()).collect();
                if let Some(first) = st.queues.first_mut() {
                    first.extend(waiting);
                }
                st.next = 0;
            }
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }
}

/// Upstream's mandatory and suggested FlowSchemas and PriorityLevelConfigurations
/// (k8s.io/apiserver's flowcontrol bootstrap configuration), as API objects.
pub fn defaults() -> (Vec<Value>, Vec<Value>) {
    let meta =
        |name: &str| json!({"name": name, "annotations": {"apf.kubernetes.io/autoupdate-spec": "true"}});
    let level = |name: &str, shares: u64, lendable: u64, queues: Option<(u64, u64, u64)>| {
        let limit_response = match queues {
            Some((q, h, l)) => {
                json!({"type": "Queue", "queuing": {"queues": q, "handSize": h, "queueLengthLimit": l}})
            }
            None => json!({"type": "Reject"}),
        };
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": meta(name),
            "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": shares,
                "lendablePercent": lendable, "limitResponse": limit_response}}})
    };
    let levels = vec![
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": meta("exempt"),
            "spec": {"type": "Exempt", "exempt": {"nominalConcurrencyShares": 0, "lendablePercent": 0}}}),
        level("catch-all", 5, 0, None),
        level("system", 30, 33, Some((64, 6, 50))),
        level("node-high", 40, 25, Some((64, 6, 50))),
        level("leader-election", 10, 0, Some((16, 4, 50))),
        level("workload-high", 40, 50, Some((128, 6, 50))),
        level("workload-low", 100, 90, Some((128, 6, 50))),
        level("global-default", 20, 50, Some((128, 6, 50))),
    ];
    let all_resources = json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}]);
    let all_urls = json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]);
    let group = |g: &str| json!({"kind": "Group", "group": {"name": g}});
    let user = |u: &str| json!({"kind": "User", "user": {"name": u}});
    let sa =
        |ns: &str, n: &str| json!({"kind": "ServiceAccount", "serviceAccount": {"namespace": ns, "name": n}});
    let schema = |name: &str, precedence: u64, level: &str, by: Option<&str>, rules: Value| {
        let mut spec = json!({"matchingPrecedence": precedence,
            "priorityLevelConfiguration": {"name": level}, "rules": rules});
        if let Some(by) = by {
            spec["distinguisherMethod"] = json!({"type": by});
        }
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": meta(name), "spec": spec})
    };
    let everything = |subjects: Value| json!([{"subjects": subjects, "resourceRules": all_resources, "nonResourceRules": all_urls}]);
    let leases = |verbs: &[&str], namespaces: Value| {
        json!([{"verbs": verbs, "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "clusterScope": false, "namespaces": namespaces}])
    };
    let schemas = vec![
        schema("exempt", 1, "exempt", None, everything(json!([group("system:masters")]))),
        schema(
            "probes",
            2,
            "exempt",
            None,
            json!([{"subjects": [group("system:unauthenticated"), group("system:authenticated")],
                "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz", "/readyz", "/livez"]}]}]),
        ),
        schema(
            "system-leader-election",
            100,
            "leader-election",
            Some("ByUser"),
            json!([{"subjects": [user("system:kube-controller-manager"), user("system:kube-scheduler")],
                "resourceRules": leases(&["get", "create", "update"], json!(["kube-system"]))}]),
        ),
        schema(
            "endpoint-controller",
            150,
            "workload-high",
            Some("ByUser"),
            json!([{"subjects": [user("system:kube-controller-manager"), sa("kube-system", "endpoint-controller")],
                "resourceRules": [{"verbs": ["get", "create", "update"], "apiGroups": [""],
                    "resources": ["endpoints"], "clusterScope": false, "namespaces": ["*"]}]}]),
        ),
        schema(
            "workload-leader-election",
            200,
            "leader-election",
            Some("ByUser"),
            json!([{"subjects": [sa("kube-system", "*")],
                "resourceRules": leases(&["get", "create", "update"], json!(["kube-system"]))}]),
        ),
        schema(
            "system-node-high",
            400,
            "node-high",
            Some("ByUser"),
            json!([{"subjects": [group("system:nodes")],
                "resourceRules": [
                    {"verbs": ["*"], "apiGroups": [""], "resources": ["nodes", "nodes/status"], "clusterScope": true},
                    {"verbs": ["*"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "clusterScope": false, "namespaces": ["*"]}]}]),
        ),
        schema("system-nodes", 500, "system", Some("ByUser"), everything(json!([group("system:nodes")]))),
        schema(
            "kube-controller-manager",
            800,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([user("system:kube-controller-manager")])),
        ),
        schema(
            "kube-scheduler",
            800,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([user("system:kube-scheduler")])),
        ),
        schema(
            "kube-system-service-accounts",
            900,
            "workload-high",
            Some("ByNamespace"),
            everything(json!([sa("kube-system", "*")])),
        ),
        schema(
            "service-accounts",
            9000,
            "workload-low",
            Some("ByUser"),
            everything(json!([group("system:serviceaccounts")])),
        ),
        schema(
            "global-default",
            9900,
            "global-default",
            Some("ByUser"),
            everything(json!([group("system:unauthenticated"), group("system:authenticated")])),
        ),
        schema(
            "catch-all",
            10000,
            "catch-all",
            Some("ByUser"),
            everything(json!([group("system:unauthenticated"), group("system:authenticated")])),
        ),
    ];
    (schemas, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let (s, l) = defaults();
        Config::from_objects(&s, &l)
    }

    fn req(method: &str, path: &str) -> Request {
        let (object, verb) = crate::audit::object_ref(method, path, false);
        Request { verb, object, path: path.into() }
    }

    fn class(user: &User, r: &Request) -> (String, String) {
        let c = config();
        let (s, _) = c.classify(user, r).expect("classified");
        (s.name.clone(), s.level.clone())
    }

    #[test]
    fn requests_land_in_upstreams_default_schemas() {
        let admin = User::new("admin", vec!["system:masters".into()]);
        let alice = User::new("alice", vec![]);
        let node = User::new("system:node:n1", vec!["system:nodes".into()]);
        let sa = User::new("system:serviceaccount:default:app", vec!["system:serviceaccounts".into()]);
        let ksa = User::new("system:serviceaccount:kube-system:dns", vec!["system:serviceaccounts".into()]);
        let pods = req("GET", "/api/v1/namespaces/default/pods");
        assert_eq!(class(&admin, &pods), ("exempt".into(), "exempt".into()));
        assert_eq!(class(&alice, &pods), ("global-default".into(), "global-default".into()));
        assert_eq!(class(&sa, &pods), ("service-accounts".into(), "workload-low".into()));
        assert_eq!(class(&ksa, &pods), ("kube-system-service-accounts".into(), "workload-high".into()));
        assert_eq!(
            class(&node, &req("PUT", "/api/v1/nodes/n1/status")),
            ("system-node-high".into(), "node-high".into())
        );
        assert_eq!(class(&node, &pods), ("system-nodes".into(), "system".into()));
        let lease = req("PUT", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1");
        assert_eq!(class(&node, &lease), ("system-node-high".into(), "node-high".into()));
        assert_eq!(class(&alice, &req("GET", "/readyz")), ("probes".into(), "exempt".into()));
        assert_eq!(class(&alice, &req("GET", "/apis")), ("global-default".into(), "global-default".into()));
    }

    #[test]
    fn dealing_gives_distinct_queues() {
        for h in [0u64, 1, 12345, u64::MAX] {
            let mut hand = deal(h, 128, 6);
            assert_eq!(hand.len(), 6);
            hand.sort();
            hand.dedup();
            assert_eq!(hand.len(), 6);
            assert!(hand.iter().all(|&q| q < 128));
        }
        assert_eq!(deal(7, 3, 6).len(), 3);
    }

    fn filter(objs: Vec<Value>, names: &[&str]) -> Vec<Value> {
        objs.into_iter().filter(|o| names.iter().any(|n| o["metadata"]["name"] == *n)).collect()
    }

    fn control(limit: usize, schemas: &[Value], levels: &[Value]) -> Arc<FlowControl> {
        let inner = Arc::new(Inner {
            cache: None,
            limit,
            config: RwLock::new(Arc::new(Config::default())),
            dispatch: Mutex::new(Dispatch::default()),
        });
        inner.reload_from(schemas, levels);
        Arc::new(FlowControl { inner })
    }

    /// global-default with 4 seats, one queue per flow: a flooding flow waits behind itself.
    #[tokio::test]
    async fn a_flooding_flow_does_not_delay_another_flow_beyond_its_turn() {
        let (schemas, levels) = defaults();
        let mut levels = filter(levels, &["exempt", "global-default"]);
        levels[1]["spec"]["limited"]["lendablePercent"] = json!(0);
        levels[1]["spec"]["limited"]["limitResponse"]["queuing"] =
            json!({"queues": 64, "handSize": 1, "queueLengthLimit": 100});
        let fc = control(4, &filter(schemas, &["exempt", "global-default"]), &levels);
        let r = req("GET", "/api/v1/namespaces/default/configmaps");
        let flooder = User::new("flooder", vec![]);
        let queue = |u: &str| deal(flow_hash("global-default", u), 64, 1)[0];
        let other_name =
            (0..).map(|i| format!("other-{i}")).find(|n| queue(n) != queue("flooder")).expect("a name");
        let other = User::new(&other_name, vec![]);
        let mut held = Vec::new();
        for _ in 0..4 {
            let (c, s) = fc.admit(&flooder, &r, false).await;
            assert_eq!(c.priority_level, "global-default");
            held.push(s.unwrap().expect("a seat"));
        }
        let inqueue = || INQUEUE.with_label_values(&["global-default", "global-default"]).get();
        let mut queued = Vec::new();
        for _ in 0..10 {
            let (fc, r, u) = (fc.clone(), r.clone(), flooder.clone());
            queued.push(tokio::spawn(async move { fc.admit(&u, &r, false).await.1.map(|s| s.is_some()) }));
        }
        while inqueue() < 10 {
            tokio::task::yield_now().await;
        }
        let (fc2, r2) = (fc.clone(), r.clone());
        let mut theirs =
            tokio::spawn(async move { fc2.admit(&other, &r2, false).await.1.map(|s| s.is_some()) });
        while inqueue() < 11 {
            tokio::task::yield_now().await;
        }
        // Two seats free up: the queues take turns, so one is the other user's.
        held.pop();
        held.pop();
        let got = tokio::time::timeout(Duration::from_secs(5), &mut theirs).await;
        assert!(matches!(got, Ok(Ok(Ok(true)))), "the other flow got a seat within two releases: {got:?}");
        drop(held);
        for q in queued {
            assert!(q.await.unwrap().unwrap());
        }
    }

    #[tokio::test]
    async fn reject_levels_answer_429_at_once() {
        let (schemas, levels) = defaults();
        // Only catch-all (Reject) is there to match.
        let fc = control(1, &filter(schemas, &["catch-all"]), &levels);
        let u = User::new("u", vec![]);
        let r = req("GET", "/api/v1/namespaces/default/configmaps");
        let (c, first) = fc.admit(&u, &r, false).await;
        assert_eq!(c.priority_level, "catch-all");
        let _first = first.unwrap().expect("a seat");
        let (_, second) = fc.admit(&u, &r, false).await;
        assert_eq!(second.err().map(|e| e.code()), Some(429));
        // Long-running requests hold no seat.
        assert!(fc.admit(&u, &r, true).await.1.unwrap().is_none());
    }
}
