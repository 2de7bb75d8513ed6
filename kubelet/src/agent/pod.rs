//! One actor per pod: an explicit state machine from an assigned pod to running containers
//! and back to nothing.
//!
//! ```text
//! Prepare (pull images, fetch ConfigMaps/Secrets, volumes, network)
//!   → Init (init containers in order, each to success; a sidecar — an init container with
//!           `restartPolicy: Always` — only until it has started, then it keeps running)
//!   → Main (containers started, supervised: exits, restarts with back-off, probes)
//!   → Finished (every container ended and none restarts: Succeeded or Failed; the
//!               sidecars are stopped then)
//! any stage → Terminating (deletionTimestamp, or the pod vanished): preStop hooks, the
//!             containers stopped within the grace period, sidecars last → Gone
//! ```
//!
//! Lifecycle hooks as upstream: `postStart` runs right after a container starts (a failure
//! kills the container, which restarts by the pod's policy), `preStop` before a container is
//! stopped (deletion or a failed liveness probe), its time counted in the grace period;
//! both may `exec`, `httpGet` (a named port is the container's) or `sleep`.
//!
//! The actor ([`PodWorker`]) is a mailbox around an owned [`PodState`]: each tick moves the
//! state into one async step and takes it back when the step ends, so steps never overlap
//! and pod updates arriving meanwhile are seen by the next step.

use super::security;
use super::spec::{self, ImageDefaults};
use super::volumes::{self, Sources};
use super::Deps;
use crate::image::{ImageInfo, PullError, PullPolicy};
use crate::network::PodNet;
use crate::probes::{ProbeKind, ProbeOutcome, ProbeState, ProbeTiming};
use crate::runtime::{ContainerSpec, ContainerStatus, ExitInfo, Mount, Resources, RuntimeError};
use actix::prelude::*;
use capstan_actors::client::gvr;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Labels the agent stores with each container, so a restarted agent adopts them.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// The container's name in the pod.
pub const LABEL_CONTAINER: &str = "io.kubernetes.container.name";
/// The container's restart count when it was started.
pub const LABEL_RESTARTS: &str = "io.kubernetes.container.restartCount";
/// The pod's namespace/name.
pub const LABEL_POD: &str = "io.kubernetes.pod.name";

/// How long a pod start waits for the first list of Services (for its Service variables).
const SERVICES_SYNC_WAIT: Duration = Duration::from_secs(10);
/// The prepare error of a pod whose claims are not bound yet (retried soon, not backed off).
const VOLUME_WAIT: &str = "VolumeWait";
const VOLUME_WAIT_RETRY: Duration = Duration::from_millis(500);

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Images, volumes and network are being set up.
    Prepare,
    /// Init containers run, in order.
    Init,
    /// The containers run.
    Main,
    /// Every container ended for good.
    Finished,
    /// Stopping and cleaning up.
    Terminating,
    /// Nothing left.
    Gone,
}

/// What one container instance ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    message: Option<String>,
    started_at: Option<String>,
    finished_at: String,
    container_id: Option<String>,
}

impl Terminated {
    fn from_exit(id: &str, exit: &ExitInfo) -> Terminated {
        Terminated {
            exit_code: exit.code,
            signal: exit.signal,
            reason: exit.reason().into(),
            message: exit.error.clone(),
            started_at: exit.started_at.map(fmt_time),
            finished_at: fmt_time(exit.finished_at),
            container_id: Some(format!("runc://{id}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum CState {
    Waiting { reason: String, message: Option<String> },
    Running { started_at: String },
    Terminated(Terminated),
}

/// The agent's record of one container of the pod.
pub struct Ctr {
    /// Its name.
    pub name: String,
    init: bool,
    /// An init container with `restartPolicy: Always` (a native sidecar).
    sidecar: bool,
    /// An ephemeral container (`kubectl debug`): started once, never restarted, not part
    /// of the pod's readiness or phase.
    ephemeral: bool,
    spec: Value,
    restart_count: u32,
    /// The runtime id of the current instance.
    pub id: Option<String>,
    state: CState,
    last: Option<Terminated>,
    image: Option<ImageInfo>,
    not_before: Option<Instant>,
    /// The back-off before the pending restart, and the one after it.
    delay: Duration,
    backoff: Duration,
    ready: bool,
    started: bool,
    succeeded: bool,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    startup: Option<Probe>,
    /// Signals log followers that the current instance ended.
    pub done: tokio::sync::watch::Sender<bool>,
}

impl Ctr {
    /// Done with its turn in the init sequence: a regular init container has succeeded, a
    /// sidecar runs and has started (its startup probe, if any, passed).
    fn initialized(&self) -> bool {
        if self.sidecar {
            self.id.is_some() && self.started
        } else {
            self.succeeded
        }
    }

    /// Sets up the probes of a new (or adopted) instance.
    fn arm_probes(&mut self) {
        let began = Instant::now();
        self.liveness = Probe::new(self.spec.get("livenessProbe"), began, ProbeKind::Liveness);
        self.readiness = Probe::new(self.spec.get("readinessProbe"), began, ProbeKind::Readiness);
        self.startup = Probe::new(self.spec.get("startupProbe"), began, ProbeKind::Startup);
        self.started = self.startup.is_none();
        self.ready = self.readiness.is_none();
    }
}

struct Probe {
    spec: Value,
    state: ProbeState,
    next: Instant,
}

impl Probe {
    fn new(spec: Option<&Value>, started: Instant, kind: ProbeKind) -> Option<Probe> {
        let spec = spec?.clone();
        let parsed: k8s_openapi::api::core::v1::Probe =
            serde_json::from_value(spec.clone()).unwrap_or_default();
        let state = ProbeState::new(kind, ProbeTiming::from_probe(&parsed));
        let delay = Duration::from_secs(spec["initialDelaySeconds"].as_u64().unwrap_or(0));
        Some(Probe { spec, state, next: started + delay })
    }
}

fn now() -> String {
    capstan_actors::nodeobjects::time(jiff::Timestamp::now())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

/// Upstream's `kubelet_pod_start_duration_seconds`: from the agent seeing a pod to the
/// status that says it runs.
static POD_START: std::sync::LazyLock<capstan_metrics::Histogram> = std::sync::LazyLock::new(|| {
    capstan_metrics::histogram(
        "kubelet_pod_start_duration_seconds",
        "Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
        &[
            0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0,
            360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
        ],
    )
});

/// The state a pod actor owns.
pub struct PodState {
    /// The pod as last seen (None once deleted from the API).
    pub pod: Option<Arc<Value>>,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Stage.
    pub stage: Stage,
    /// Containers: init containers first, then the others.
    pub ctrs: Vec<Ctr>,
    net: Option<PodNet>,
    volumes: HashMap<String, PathBuf>,
    sources: Sources,
    prepare_error: Option<(String, String)>,
    prepare_not_before: Option<Instant>,
    prepare_backoff: Duration,
    start_time: Option<String>,
    last_status: Option<Value>,
    finished_phase: Option<&'static str>,
    /// The IP a finished pod had (its network is released).
    finished_ip: Option<String>,
    /// Why the node refused to run the pod (reason, message), as upstream's admission.
    rejected: Option<(String, String)>,
    /// An eviction asked for by the eviction manager, not yet carried out (its message and
    /// the grace period the containers get).
    pub evicting: Option<(String, Duration)>,
    /// The pod's admitted sysctls.
    sysctls: std::collections::BTreeMap<String, String>,
    deleted: bool,
    /// ServiceAccount tokens in projected volumes and when to refresh each.
    tokens: Vec<(volumes::TokenSource, Instant)>,
    /// When this agent first saw the pod, until it reports it Running (for
    /// `kubelet_pod_start_duration_seconds`; None for pods already running when adopted).
    seen: Option<Instant>,
    /// When the configMap, secret, downwardAPI and projected volumes are next compared
    /// with their sources.
    volumes_sync_at: Option<Instant>,
}

/// How often a running pod's configMap, secret, downwardAPI and projected volumes are
/// compared with their sources (`CAPSTAN_VOLUME_SYNC_SECONDS`, default 10; upstream's
/// kubelet resyncs every minute plus its cache's TTL).
fn volume_sync_period() -> Duration {
    let secs = std::env::var("CAPSTAN_VOLUME_SYNC_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(10);
    Duration::from_secs(secs)
}

impl PodState {
    /// A new pod, adopting containers a previous agent left running.
    pub fn new(pod: Arc<Value>, adopted: Vec<crate::runtime::ContainerInfo>) -> PodState {
        let namespace = s(&pod, &["metadata", "namespace"]).to_string();
        let name = s(&pod, &["metadata", "name"]).to_string();
        let uid = s(&pod, &["metadata", "uid"]).to_string();
        let mut ctrs = Vec::new();
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            let init = list == "initContainers";
            let ephemeral = list == "ephemeralContainers";
            for c in pod["spec"][list].as_array().into_iter().flatten() {
                let cname = c["name"].as_str().unwrap_or("").to_string();
                let statuses = statuses_key(init, ephemeral);
                let known = pod["status"][statuses]
                    .as_array()
                    .and_then(|a| a.iter().find(|st| st["name"].as_str() == Some(&cname)));
                let restart_count = known.and_then(|k| k["restartCount"].as_u64()).unwrap_or(0) as u32;
                let sidecar = init && c["restartPolicy"].as_str() == Some("Always");
                // An ephemeral container that ran under an earlier agent is not run again.
                let state = match known.map(|k| &k["state"]) {
                    Some(st)
                        if ephemeral && (st.get("running").is_some() || st.get("terminated").is_some()) =>
                    {
                        CState::Terminated(Terminated {
                            exit_code: st["terminated"]["exitCode"].as_i64().unwrap_or(137) as i32,
                            signal: None,
                            reason: st["terminated"]["reason"].as_str().unwrap_or("Error").to_string(),
                            message: None,
                            started_at: None,
                            finished_at: st["terminated"]["finishedAt"]
                                .as_str()
                                .map(str::to_string)
                                .unwrap_or_else(now),
                            container_id: None,
                        })
                    }
                    _ => CState::Waiting { reason: "ContainerCreating".into(), message: None },
                };
                ctrs.push(Ctr {
                    name: cname,
                    init,
                    sidecar,
                    ephemeral,
                    spec: c.clone(),
                    restart_count,
                    id: None,
                    state,
                    last: None,
                    image: None,
                    not_before: None,
                    delay: Duration::ZERO,
                    backoff: Duration::ZERO,
                    ready: false,
                    started: false,
                    succeeded: init
                        && !sidecar
                        && known.is_some_and(|k| k["state"]["terminated"]["exitCode"].as_i64() == Some(0)),
                    liveness: None,
                    readiness: None,
                    startup: None,
                    done: tokio::sync::watch::channel(false).0,
                });
            }
        }
        for info in adopted {
            let cname = info.labels.get(LABEL_CONTAINER).cloned().unwrap_or_default();
            if let Some(c) = ctrs.iter_mut().find(|c| c.name == cname && c.id.is_none()) {
                c.id = Some(info.id.clone());
                if let Some(n) = info.labels.get(LABEL_RESTARTS).and_then(|n| n.parse().ok()) {
                    c.restart_count = n;
                }
                c.state = CState::Running { started_at: now() };
                // Probed again from now, as upstream's kubelet does after a restart (without
                // probes an adopted container would never be ready again).
                c.arm_probes();
            }
        }
        let start_time = pod["status"]["startTime"].as_str().map(str::to_string);
        let adopted_any = ctrs.iter().any(|c| c.id.is_some());
        // A pod that already ended (reported by an earlier agent) is not run again.
        let finished_phase = match pod["status"]["phase"].as_str() {
            Some("Succeeded") if !adopted_any => Some("Succeeded"),
            Some("Failed") if !adopted_any => Some("Failed"),
            _ => None,
        };
        if finished_phase.is_some() {
            for c in &mut ctrs {
                let statuses = statuses_key(c.init, c.ephemeral);
                let known = pod["status"][statuses]
                    .as_array()
                    .and_then(|a| a.iter().find(|st| st["name"].as_str() == Some(&c.name)));
                if let Some(t) = known.map(|k| &k["state"]["terminated"]).filter(|t| t.is_object()) {
                    c.state = CState::Terminated(Terminated {
                        exit_code: t["exitCode"].as_i64().unwrap_or(0) as i32,
                        signal: t["signal"].as_i64().map(|s| s as i32),
                        reason: t["reason"].as_str().unwrap_or("Completed").to_string(),
                        message: t["message"].as_str().map(str::to_string),
                        started_at: t["startedAt"].as_str().map(str::to_string),
                        finished_at: t["finishedAt"].as_str().unwrap_or("").to_string(),
                        container_id: t["containerID"].as_str().map(str::to_string),
                    });
                }
            }
        }
        let seen = (pod["status"]["phase"].as_str().unwrap_or("Pending") == "Pending").then(Instant::now);
        PodState {
            pod: Some(pod),
            namespace,
            name,
            uid,
            stage: if finished_phase.is_some() { Stage::Finished } else { Stage::Prepare },
            ctrs,
            net: None,
            volumes: HashMap::new(),
            sources: Sources::default(),
            prepare_error: None,
            prepare_not_before: None,
            prepare_backoff: Duration::ZERO,
            start_time,
            last_status: None,
            tokens: Vec::new(),
            seen,
            volumes_sync_at: None,
            finished_phase,
            finished_ip: None,
            rejected: None,
            evicting: None,
            sysctls: Default::default(),
            deleted: false,
        }
    }

    fn pod(&self) -> Arc<Value> {
        self.pod.clone().unwrap_or_else(|| Arc::new(Value::Null))
    }

    fn log_dir(&self, deps: &Deps) -> PathBuf {
        deps.dirs.logs.join(format!("{}_{}_{}", self.namespace, self.name, self.uid))
    }

    fn pod_dir(&self, deps: &Deps) -> PathBuf {
        deps.dirs.pods.join(&self.uid)
    }

    /// The log file of a container instance.
    pub fn log_path(&self, deps: &Deps, container: &str, restart: u32) -> PathBuf {
        self.log_dir(deps).join(container).join(format!("{restart}.log"))
    }

    fn restart_policy(&self) -> String {
        self.pod.as_ref().and_then(|p| p["spec"]["restartPolicy"].as_str()).unwrap_or("Always").to_string()
    }

    /// One step of the state machine.
    pub async fn step(&mut self, deps: &Deps) {
        let terminating =
            self.deleted || self.pod.as_ref().is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null());
        if terminating && self.stage != Stage::Gone {
            self.stage = Stage::Terminating;
        }
        if let Some((message, grace)) = self.evicting.take() {
            if matches!(self.stage, Stage::Prepare | Stage::Init | Stage::Main) {
                self.evict(deps, message, grace).await;
            }
        }
        match self.stage {
            Stage::Prepare => {
                // A burst of pods starts a few at a time, in arrival order (the semaphore is
                // fair): with every pod starting at once on a small machine, all of them
                // finish late.
                let _permit = deps.starts.acquire().await.ok();
                self.prepare(deps).await
            }
            Stage::Init | Stage::Main => self.supervise(deps).await,
            Stage::Finished => {}
            Stage::Terminating => self.terminate(deps).await,
            Stage::Gone => return,
        }
        if self.stage != Stage::Gone && !self.deleted {
            // Sessions see a container before the API says it runs: a client that waits for
            // `running` (kubectl debug, attach) must find it when it connects.
            let view = self.view(deps);
            deps.views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(format!("{}/{}", self.namespace, self.name), view);
            self.write_status(deps).await;
        }
    }

    async fn prepare(&mut self, deps: &Deps) {
        if self.prepare_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Admission, as upstream's kubelet does before anything runs: a pod with sysctls
        // the node does not allow fails at once.
        match security::admit_sysctls(&self.pod()) {
            Ok(sysctls) => self.sysctls = sysctls,
            Err(message) => {
                emit(deps, &self.pod(), "Warning", security::SYSCTL_FORBIDDEN, &message);
                tracing::info!(pod = %self.name, "rejected: {message}");
                self.rejected =
                    Some((security::SYSCTL_FORBIDDEN.to_string(), format!("Pod was rejected: {message}")));
                self.finished_phase = Some("Failed");
                self.stage = Stage::Finished;
                return;
            }
        }
        match self.try_prepare(deps).await {
            Ok(()) => {
                self.prepare_error = None;
                self.prepare_backoff = Duration::ZERO;
                if self.start_time.is_none() {
                    self.start_time = Some(now());
                }
                self.stage =
                    if self.ctrs.iter().any(|c| c.init && !c.succeeded) { Stage::Init } else { Stage::Main };
                // Adopted containers mean a previous agent finished the init containers.
                if self.ctrs.iter().any(|c| !c.init && !c.ephemeral && c.id.is_some()) {
                    self.stage = Stage::Main;
                }
                self.supervise(deps).await;
            }
            Err((reason, message)) => {
                if reason == VOLUME_WAIT {
                    // A claim is being bound or provisioned: look again soon.
                    self.prepare_not_before = Some(Instant::now() + VOLUME_WAIT_RETRY);
                } else {
                    self.prepare_backoff =
                        (self.prepare_backoff * 2).clamp(deps.backoff_base, deps.backoff_max);
                    self.prepare_not_before = Some(Instant::now() + self.prepare_backoff);
                }
                let reason = if reason == VOLUME_WAIT { "ContainerCreating".to_string() } else { reason };
                let image_error = reason == "ErrImagePull" || reason == "ErrImageNeverPull";
                let shown = match &self.prepare_error {
                    Some((r, _)) if image_error && (r == "ErrImagePull" || r == "ImagePullBackOff") => {
                        "ImagePullBackOff".to_string()
                    }
                    _ => reason.clone(),
                };
                if self.prepare_error.as_ref().map(|(_, m)| m) != Some(&message) {
                    let reason = if image_error { "Failed" } else { "FailedMount" };
                    emit(deps, &self.pod(), "Warning", reason, &message);
                }
                tracing::info!(pod = %self.name, "{reason}: {message}");
                self.prepare_error = Some((shown, message));
            }
        }
    }

    async fn try_prepare(&mut self, deps: &Deps) -> Result<(), (String, String)> {
        let pod = self.pod();
        // ConfigMaps and Secrets the pod needs (volumes, env, pull secrets).
        let (cms, secrets) = volumes::referenced(&pod);
        let mut sources = Sources::default();
        for name in cms {
            match deps.client.get(gvr::CONFIG_MAPS, Some(&self.namespace), &name).await {
                Ok(obj) => sources.add_config_map(&name, &obj),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!("failed to get configmap {name}: {e}"),
                    ))
                }
            }
        }
        for name in secrets {
            match deps.client.get(SECRETS, Some(&self.namespace), &name).await {
                Ok(obj) => sources.add_secret(&name, &obj),
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err((
                        "CreateContainerConfigError".into(),
                        format!("failed to get secret {name}: {e}"),
                    ))
                }
            }
        }
        // ServiceAccount tokens for projected volumes, bound to this pod.
        let mut tokens = Vec::new();
        for src in volumes::token_sources(&pod) {
            let (token, refresh) = self
                .request_token(deps, &pod, &src)
                .await
                .map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
            sources.tokens.insert(format!("{}/{}", src.volume, src.path), token.into_bytes());
            tokens.push((src, refresh));
        }
        self.tokens = tokens;
        // Images, with credentials from imagePullSecrets.
        let creds = pull_credentials(&pod, &sources);
        for i in 0..self.ctrs.len() {
            // Ephemeral containers are pulled when they start.
            if self.ctrs[i].image.is_some() || self.ctrs[i].ephemeral {
                continue;
            }
            let image = self.ctrs[i].spec["image"].as_str().unwrap_or("").to_string();
            let policy = PullPolicy::from_k8s(self.ctrs[i].spec["imagePullPolicy"].as_str(), &image);
            let started = Instant::now();
            match deps.images.ensure(&image, policy, &creds).await {
                Ok(info) => {
                    if started.elapsed() > Duration::from_millis(50) {
                        let msg = format!(
                            "Successfully pulled image \"{image}\" in {}ms",
                            started.elapsed().as_millis()
                        );
                        emit(deps, &pod, "Normal", "Pulled", &msg);
                    }
                    self.ctrs[i].image = Some(info);
                }
                Err(e) => {
                    let reason = if matches!(e, PullError::NeverPullNotPresent(_)) {
                        "ErrImageNeverPull"
                    } else {
                        "ErrImagePull"
                    };
                    let msg = e.to_string();
                    self.ctrs[i].state =
                        CState::Waiting { reason: reason.into(), message: Some(msg.clone()) };
                    return Err((reason.into(), msg));
                }
            }
        }
        // Service variables need the Services (as upstream, which refuses to guess).
        if !deps.services.is_synced()
            && tokio::time::timeout(SERVICES_SYNC_WAIT, deps.services.wait_synced()).await.is_err()
        {
            return Err((
                "CreateContainerConfigError".into(),
                "services have not yet been read at least once, cannot construct envvars".into(),
            ));
        }
        // Volumes.
        let pod_dir = self.pod_dir(deps);
        let fs_group = security::fs_group(&pod).map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        let claims = match super::localpath::resolve(&deps.client, &pod, &deps.node).await {
            Ok(c) => c,
            Err(super::localpath::ClaimError::Wait(m)) => return Err((VOLUME_WAIT.to_string(), m)),
            Err(super::localpath::ClaimError::Fail(m)) => {
                return Err(("CreateContainerConfigError".to_string(), m))
            }
        };
        let vols = volumes::prepare(&pod, &pod_dir, &deps.node, &sources, fs_group, &claims)
            .map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        // Network.
        if pod["spec"]["hostNetwork"].as_bool() != Some(true) {
            let ports = host_ports(&pod);
            let net = deps.network.setup(&self.uid, &ports).await.map_err(|e| {
                ("CreateContainerError".to_string(), format!("failed to set up the pod network: {e}"))
            })?;
            self.net = Some(net);
        }
        let hosts = spec::hosts_file(&pod, self.net.as_ref().map(|n| n.ip.to_string()).as_deref());
        let host_resolv = crate::dns::resolv::ResolvConf::read(&deps.resolv_conf);
        let resolv = crate::dns::resolv::pod_resolv_conf(&pod, &host_resolv, deps.cluster_dns.as_ref());
        for (file, text) in
            [("hosts", hosts), ("resolv.conf", resolv), ("hostname", format!("{}\n", self.name))]
        {
            let p = pod_dir.join("etc");
            std::fs::create_dir_all(&p).and_then(|_| std::fs::write(p.join(file), text)).map_err(|e| {
                ("CreateContainerError".to_string(), format!("failed to write /etc/{file}: {e}"))
            })?;
        }
        self.volumes = vols;
        self.sources = sources;
        Ok(())
    }

    /// Looks at every container: exits, restarts, starts, probes.
    /// Asks the API for a token bound to this pod; returns it and when to refresh it (at 80 %
    /// of its lifetime, as upstream's kubelet).
    async fn request_token(
        &self,
        deps: &Deps,
        pod: &Value,
        src: &volumes::TokenSource,
    ) -> Result<(String, Instant), String> {
        let sa = pod["spec"]["serviceAccountName"].as_str().filter(|s| !s.is_empty()).unwrap_or("default");
        let (token, expiry) = deps
            .client
            .request_token(&self.namespace, sa, src.audience.as_deref(), src.seconds, (&self.name, &self.uid))
            .await
            .map_err(|e| format!("failed to get a token for service account {sa:?}: {e}"))?;
        let now = jiff::Timestamp::now().as_second();
        let lifetime = (expiry - now).clamp(60, src.seconds.max(60));
        Ok((token, Instant::now() + Duration::from_secs((lifetime as u64) * 4 / 5)))
    }

    /// Refreshes the tokens that are due (a failed refresh is tried again in 10 s; the old
    /// token stays until it expires).
    async fn refresh_tokens(&mut self, deps: &Deps) {
        let now = Instant::now();
        if !self.tokens.iter().any(|(_, at)| *at <= now) {
            return;
        }
        let pod = self.pod();
        let dir = self.pod_dir(deps);
        let mut tokens = std::mem::take(&mut self.tokens);
        for (src, at) in tokens.iter_mut() {
            if *at > now {
                continue;
            }
            match self.request_token(deps, &pod, src).await {
                Ok((token, next)) => match volumes::write_token(&dir, src, token.as_bytes()) {
                    Ok(()) => {
                        *at = next;
                        let key = format!("{}/{}", src.volume, src.path);
                        self.sources.tokens.insert(key, token.into_bytes());
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.name, "failed to refresh a token: {e}");
                        *at = now + Duration::from_secs(10);
                    }
                },
                Err(e) => {
                    tracing::warn!(pod = %self.name, "failed to refresh a token: {e}");
                    *at = now + Duration::from_secs(10);
                }
            }
        }
        self.tokens = tokens;
    }

    /// Rewrites the pod's configMap, secret, downwardAPI and projected volumes when their
    /// sources changed (the files swap atomically, see `volumes`).
    async fn sync_volumes(&mut self, deps: &Deps) {
        let now = Instant::now();
        match self.volumes_sync_at {
            Some(at) if at > now => return,
            None => {
                self.volumes_sync_at = Some(now + volume_sync_period());
                return;
            }
            _ => {}
        }
        self.volumes_sync_at = Some(now + volume_sync_period());
        if self.volumes.is_empty() {
            return;
        }
        let pod = self.pod();
        let (cms, secrets) = volumes::referenced(&pod);
        let mut sources = Sources::default();
        for name in cms {
            match deps.client.get(gvr::CONFIG_MAPS, Some(&self.namespace), &name).await {
                Ok(obj) => sources.add_config_map(&name, &obj),
                Err(e) if e.is_not_found() => {}
                Err(_) => return,
            }
        }
        for name in secrets {
            match deps.client.get(SECRETS, Some(&self.namespace), &name).await {
                Ok(obj) => sources.add_secret(&name, &obj),
                Err(e) if e.is_not_found() => {}
                Err(_) => return,
            }
        }
        sources.tokens = std::mem::take(&mut self.sources.tokens);
        let fs_group = security::fs_group(&pod).ok().flatten();
        match volumes::refresh(&pod, &self.pod_dir(deps), &deps.node, &sources, fs_group) {
            Ok(changed) if !changed.is_empty() => {
                tracing::info!(pod = %self.name, volumes = ?changed, "updated volumes from their sources");
            }
            Ok(_) => {}
            // A missing source keeps the old files, as upstream.
            Err(e) => tracing::debug!(pod = %self.name, "volumes not updated: {e}"),
        }
        self.sources = sources;
    }

    async fn supervise(&mut self, deps: &Deps) {
        self.refresh_tokens(deps).await;
        self.sync_volumes(deps).await;
        // 1. Exits of running containers.
        for i in 0..self.ctrs.len() {
            let Some(id) = self.ctrs[i].id.clone() else { continue };
            if !matches!(self.ctrs[i].state, CState::Running { .. }) {
                continue;
            }
            match deps.runtime.status(&id).await {
                Ok(Some(ContainerStatus::Running { started_at, .. })) => {
                    self.ctrs[i].state = CState::Running { started_at: fmt_time(started_at) };
                }
                Ok(Some(ContainerStatus::Creating)) => {}
                Ok(Some(ContainerStatus::Exited(exit))) => self.container_exited(deps, i, &id, &exit).await,
                Ok(None) => {
                    let t = Terminated {
                        exit_code: 137,
                        signal: None,
                        reason: "ContainerStatusUnknown".into(),
                        message: Some(
                            "The container could not be located when the pod was terminated".into(),
                        ),
                        started_at: None,
                        finished_at: now(),
                        container_id: Some(format!("runc://{id}")),
                    };
                    self.ended(deps, i, t).await;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.name, container = %self.ctrs[i].name, "status failed: {e}")
                }
            }
        }
        // 2. Ephemeral containers, whatever the stage: added by `pods/ephemeralcontainers`,
        // started once.
        self.run_ephemeral(deps).await;
        // 3. Init containers in order, or the main containers.
        if self.stage == Stage::Init {
            let policy = self.restart_policy();
            let Some(i) = self.ctrs.iter().position(|c| c.init && !c.initialized()) else {
                self.stage = Stage::Main;
                return Box::pin(self.supervise(deps)).await;
            };
            // Sidecars started before this one run on (restarted whenever they exit), and
            // a sidecar that is starting has its startup probe checked.
            for j in 0..i {
                if self.ctrs[j].sidecar && self.ctrs[j].id.is_none() {
                    self.maybe_start(deps, j).await;
                }
            }
            if self.ctrs[i].sidecar {
                if self.ctrs[i].id.is_none() {
                    self.maybe_start(deps, i).await;
                }
                self.run_probes(deps).await;
                if self.ctrs[i].initialized() {
                    return Box::pin(self.supervise(deps)).await;
                }
                return;
            }
            if self.ctrs[i].id.is_none() {
                if let CState::Terminated(t) = &self.ctrs[i].state {
                    if t.exit_code != 0 && policy == "Never" {
                        let grace =
                            self.pod()["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                        self.stop_containers(deps, Duration::from_secs(grace), true).await;
                        self.finish(deps, "Failed").await;
                        return;
                    }
                }
                self.maybe_start(deps, i).await;
            }
            return;
        }
        if self.stage == Stage::Main {
            let policy = self.restart_policy();
            for i in 0..self.ctrs.len() {
                if (self.ctrs[i].init && !self.ctrs[i].sidecar)
                    || self.ctrs[i].ephemeral
                    || self.ctrs[i].id.is_some()
                {
                    continue;
                }
                let should = match &self.ctrs[i].state {
                    // Sidecars always restart, whatever the pod's policy.
                    _ if self.ctrs[i].sidecar => true,
                    CState::Terminated(t) => match policy.as_str() {
                        "Never" => false,
                        "OnFailure" => t.exit_code != 0,
                        _ => true,
                    },
                    _ => true,
                };
                if should {
                    self.maybe_start(deps, i).await;
                }
            }
            let app: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init && !c.ephemeral).collect();
            let all_done = !app.is_empty()
                && app.iter().all(|c| c.id.is_none() && matches!(c.state, CState::Terminated(_)))
                && app.iter().all(|c| match &c.state {
                    CState::Terminated(t) => policy == "Never" || (policy == "OnFailure" && t.exit_code == 0),
                    _ => false,
                });
            if all_done {
                let ok = app.iter().all(|c| matches!(&c.state, CState::Terminated(t) if t.exit_code == 0));
                // The sidecars are not waited for: they are stopped once the main
                // containers are done (in reverse order, as upstream).
                let grace = self.pod()["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                self.stop_containers(deps, Duration::from_secs(grace), true).await;
                self.finish(deps, if ok { "Succeeded" } else { "Failed" }).await;
                return;
            }
            self.run_probes(deps).await;
        }
    }

    /// Eviction under node pressure (upstream's eviction manager): every container is
    /// stopped within `grace` (zero for a hard threshold: killed at once) and the pod
    /// reports `Failed`, reason `Evicted`, with the message.
    async fn evict(&mut self, deps: &Deps, message: String, grace: Duration) {
        emit(deps, &self.pod(), "Warning", "Evicted", &message);
        let deadline = Instant::now() + grace;
        self.stop_containers(deps, grace, false).await;
        self.stop_containers(deps, deadline.saturating_duration_since(Instant::now()), true).await;
        self.rejected = Some(("Evicted".to_string(), message));
        self.finish(deps, "Failed").await;
    }

    /// Every container ended for good: the pod keeps its status (and podIP) but gives its
    /// network back, as upstream tears down a finished pod's sandbox (Job pods would
    /// otherwise hold the node's IPs until they are deleted).
    async fn finish(&mut self, deps: &Deps, phase: &'static str) {
        self.finished_phase = Some(phase);
        self.stage = Stage::Finished;
        for c in &mut self.ctrs {
            c.ready = false;
        }
        self.finished_ip = self.net.as_ref().map(|n| n.ip.to_string());
        if self.net.take().is_some() {
            if let Err(e) = deps.network.teardown(&self.uid).await {
                tracing::warn!(pod = %self.name, "network teardown of a finished pod failed: {e}");
            }
        }
    }

    async fn container_exited(&mut self, deps: &Deps, i: usize, id: &str, exit: &ExitInfo) {
        let t = Terminated::from_exit(id, exit);
        if let Err(e) = deps.runtime.remove(id).await {
            tracing::warn!(pod = %self.name, "failed to remove container {id}: {e}");
        }
        self.ended(deps, i, t).await;
    }

    /// Records the end of the current instance and plans the next start's back-off.
    async fn ended(&mut self, deps: &Deps, i: usize, t: Terminated) {
        let c = &mut self.ctrs[i];
        c.id = None;
        c.ready = false;
        c.started = false;
        let _ = c.done.send(true);
        if c.init && !c.sidecar && t.exit_code == 0 {
            c.succeeded = true;
        }
        let ran = match (&c.state, &t.started_at) {
            (CState::Running { .. }, Some(st)) => st
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|s| jiff::Timestamp::now().duration_since(s).as_secs() as u64)
                .unwrap_or(0),
            _ => 0,
        };
        // Upstream: the first restart is immediate, then base, 2×base... up to the cap; a
        // container that ran for 10 minutes starts over.
        if ran >= 600 {
            c.backoff = Duration::ZERO;
        }
        c.delay = c.backoff;
        c.not_before = Some(Instant::now() + c.delay);
        c.backoff =
            if c.backoff.is_zero() { deps.backoff_base } else { (c.backoff * 2).min(deps.backoff_max) };
        c.state = CState::Terminated(t);
    }

    async fn maybe_start(&mut self, deps: &Deps, i: usize) {
        let pod = self.pod();
        let c = &mut self.ctrs[i];
        let previous = match &c.state {
            CState::Terminated(t) => Some(t.clone()),
            _ => None,
        };
        if c.not_before.is_some_and(|t| Instant::now() < t) {
            if let Some(t) = previous {
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    c.delay.as_secs(),
                    c.name,
                    self.name,
                    self.namespace,
                    self.uid
                );
                c.last = Some(t);
                c.state = CState::Waiting { reason: "CrashLoopBackOff".into(), message: Some(msg) };
            }
            return;
        }
        let backing_off = matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff");
        if let Some(t) = previous {
            c.last = Some(t);
            c.restart_count += 1;
        } else if backing_off {
            c.restart_count += 1;
        }
        match self.start_container(deps, i).await {
            Ok((id, started_at)) => {
                let c = &mut self.ctrs[i];
                c.id = Some(id);
                c.state = CState::Running { started_at };
                c.done = tokio::sync::watch::channel(false).0;
                c.arm_probes();
                let name = c.name.clone();
                emit(deps, &pod, "Normal", "Started", &format!("Started container {name}"));
                let hook = c.spec["lifecycle"]["postStart"].clone();
                let container = c.spec.clone();
                if !hook.is_null() {
                    let id = c.id.clone().unwrap_or_default();
                    if let Err(m) = run_hook(deps, &id, &self.ip(deps), &hook, &container).await {
                        let msg = format!("PostStartHook failed: {m}");
                        emit(deps, &pod, "Warning", "FailedPostStartHook", &msg);
                        tracing::info!(pod = %self.name, container = %name, "{msg}");
                        let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                        self.stop_wave(deps, &[i], Instant::now() + Duration::from_secs(grace)).await;
                    }
                }
            }
            Err((reason, message)) => {
                emit(deps, &pod, "Warning", "Failed", &format!("Error: {message}"));
                let t = Terminated {
                    exit_code: 128,
                    signal: None,
                    reason: reason.clone(),
                    message: Some(message.clone()),
                    started_at: None,
                    finished_at: now(),
                    container_id: None,
                };
                if reason == "CreateContainerConfigError" || reason == "CreateContainerError" {
                    self.ctrs[i].state = CState::Waiting { reason, message: Some(message) };
                    self.ctrs[i].not_before = Some(Instant::now() + deps.backoff_base);
                } else {
                    self.ctrs[i].state = CState::Running { started_at: now() };
                    self.ended(deps, i, t).await;
                }
            }
        }
    }

    async fn start_container(&mut self, deps: &Deps, i: usize) -> Result<(String, String), (String, String)> {
        let pod = self.pod();
        let c = &self.ctrs[i];
        let config_err = |m: String| ("CreateContainerConfigError".to_string(), m);
        let Some(image) = c.image.clone() else {
            return Err(("ErrImagePull".into(), "the image is not pulled yet".into()));
        };
        let defaults = ImageDefaults {
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            working_dir: image.config.working_dir.clone(),
            user: image.config.user.clone(),
        };
        let links = pod["spec"]["enableServiceLinks"].as_bool() != Some(false);
        let visible = super::service_env::visible_services(
            &self.namespace,
            links,
            &deps.services.list_ns(&self.namespace),
            &deps.services.list_ns("default"),
        );
        let service_vars = super::service_env::from_services(&visible);
        let env = spec::environment(&pod, &c.spec, &defaults, &deps.node, &self.sources, &service_vars)
            .map_err(config_err)?;
        let args = spec::argv(&c.spec, &defaults, &env).map_err(config_err)?;
        // The security context: runAsNonRoot is checked against the image's user before
        // anything is created, as upstream's kubelet does.
        let eff = security::effective(&pod, &c.spec).map_err(config_err)?;
        let pod_sc = security::pod_context(&pod).map_err(config_err)?;
        let (image_uid, image_username) = security::image_user(defaults.user.as_deref());
        security::verify_run_as_non_root(&pod, &c.name, &eff, image_uid, &image_username)
            .map_err(config_err)?;
        let layers = image.layers.clone();
        let read_file = move |p: &str| {
            layers.iter().rev().find_map(|l| std::fs::read_to_string(l.join(p.trim_start_matches('/'))).ok())
        };
        let ids = spec::user(&eff, &pod_sc, &defaults, &read_file).map_err(config_err)?;
        let security = security::runtime_security(&eff, &self.sysctls, &deps.security).map_err(config_err)?;
        let mut mounts: Vec<Mount> = volumes::mounts(&pod, &c.spec, &self.volumes, &env)
            .map_err(config_err)?
            .into_iter()
            .map(|m| Mount { destination: m.destination, source: m.source, read_only: m.read_only })
            .collect();
        let etc = self.pod_dir(deps).join("etc");
        for f in ["hosts", "resolv.conf", "hostname"] {
            if !mounts.iter().any(|m| m.destination == format!("/etc/{f}")) {
                mounts.push(Mount {
                    destination: format!("/etc/{f}"),
                    source: etc.join(f),
                    read_only: false,
                });
            }
        }
        let cwd = c.spec["workingDir"]
            .as_str()
            .map(str::to_string)
            .or(defaults.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let requirements: Option<k8s_openapi::api::core::v1::ResourceRequirements> =
            c.spec.get("resources").and_then(|r| serde_json::from_value(r.clone()).ok());
        // `targetContainerName`: the ephemeral container joins that container's processes.
        let target = c.spec["targetContainerName"].as_str().filter(|t| c.ephemeral && !t.is_empty());
        let target_id =
            target.and_then(|t| self.ctrs.iter().find(|o| o.name == t && !o.ephemeral)?.id.clone());
        let pid_ns = match target_id {
            Some(tid) => match deps.runtime.status(&tid).await {
                Ok(Some(ContainerStatus::Running { pid, .. })) => {
                    Some(PathBuf::from(format!("/proc/{pid}/ns/pid")))
                }
                _ => None,
            },
            None => None,
        };
        if let (Some(t), None) = (target, &pid_ns) {
            return Err((
                "CreateContainerError".into(),
                format!("the target container {t:?} is not running"),
            ));
        }
        let c = &self.ctrs[i];
        let id = format!("{}-{}-{}", self.uid, c.name, c.restart_count);
        let log_path = self.log_path(deps, &c.name, c.restart_count);
        if let Some(dir) = log_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(LABEL_POD_UID.to_string(), self.uid.clone());
        labels.insert(LABEL_CONTAINER.to_string(), c.name.clone());
        labels.insert(LABEL_RESTARTS.to_string(), c.restart_count.to_string());
        labels.insert(LABEL_POD.to_string(), format!("{}/{}", self.namespace, self.name));
        let spec = ContainerSpec {
            id: id.clone(),
            pod_id: self.uid.clone(),
            labels,
            layers: image.layers.clone(),
            args,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd,
            uid: ids.uid,
            gid: ids.gid,
            additional_gids: ids.additional_gids,
            hostname: pod["spec"]["hostname"].as_str().unwrap_or(&self.name).to_string(),
            // hostNetwork pods stay in the host's network namespace.
            netns: match &self.net {
                Some(n) => Some(n.netns_path.clone()),
                None if pod["spec"]["hostNetwork"].as_bool() == Some(true) => {
                    Some(PathBuf::from(crate::runtime::HOST_NETWORK))
                }
                None => None,
            },
            pid_ns,
            mounts,
            resources: Resources::from_k8s(requirements.as_ref()),
            log_path,
            stdin: c.spec["stdin"].as_bool() == Some(true),
            stdin_once: c.spec["stdinOnce"].as_bool() == Some(true),
            tty: c.spec["tty"].as_bool() == Some(true),
            stop_signal: None,
            security,
        };
        // A leftover of an earlier attempt with the same id (agent crash mid-start).
        if !matches!(deps.runtime.status(&id).await, Ok(None)) {
            let _ = deps.runtime.remove(&id).await;
        }
        match deps.runtime.start(&spec).await {
            Ok(started) => Ok((id, fmt_time(started.started_at))),
            // The OCI config could not be made (a Localhost seccomp profile that cannot be
            // read, an unknown capability): nothing was created, as upstream's
            // CreateContainerError.
            Err(RuntimeError::InvalidSpec(m)) => Err(("CreateContainerError".into(), m)),
            Err(e) => Err(("StartError".into(), e.to_string())),
        }
    }

    /// The address probes and hooks reach the pod at.
    fn ip(&self, deps: &Deps) -> String {
        self.net.as_ref().map(|n| n.ip.to_string()).unwrap_or_else(|| deps.host_ip.clone())
    }

    async fn run_probes(&mut self, deps: &Deps) {
        let ip = self.ip(deps);
        let pod = self.pod();
        for i in 0..self.ctrs.len() {
            let Some(id) = self.ctrs[i].id.clone() else { continue };
            let now = Instant::now();
            let c = &mut self.ctrs[i];
            // Startup gates the others.
            let order: [(&str, bool); 3] =
                [("startup", true), ("liveness", c.started), ("readiness", c.started)];
            for (kind, enabled) in order {
                if !enabled {
                    continue;
                }
                let c = &mut self.ctrs[i];
                let probe = match kind {
                    "startup" => c.startup.as_mut(),
                    "liveness" => c.liveness.as_mut(),
                    _ => c.readiness.as_mut(),
                };
                let Some(p) = probe else { continue };
                if now < p.next || (kind == "startup" && c.started) {
                    continue;
                }
                p.next = now + Duration::from_secs(p.spec["periodSeconds"].as_u64().unwrap_or(10).max(1));
                let spec = p.spec.clone();
                let container = c.spec.clone();
                let outcome = check(deps, &id, &ip, &spec, &container).await;
                let c = &mut self.ctrs[i];
                let p = match kind {
                    "startup" => c.startup.as_mut(),
                    "liveness" => c.liveness.as_mut(),
                    _ => c.readiness.as_mut(),
                };
                let Some(p) = p else { continue };
                let failure = match &outcome {
                    ProbeOutcome::Failure(m) => Some(m.clone()),
                    ProbeOutcome::Success => None,
                };
                let flipped = p.state.record(&outcome);
                if let Some(m) = &failure {
                    let what = match kind {
                        "startup" => "Startup",
                        "liveness" => "Liveness",
                        _ => "Readiness",
                    };
                    emit(deps, &pod, "Warning", "Unhealthy", &format!("{what} probe failed: {m}"));
                }
                let c = &mut self.ctrs[i];
                match (kind, flipped) {
                    ("startup", Some(true)) => c.started = true,
                    ("readiness", Some(r)) => c.ready = r,
                    ("liveness", Some(false)) | ("startup", Some(false)) => {
                        let name = c.name.clone();
                        let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
                        let msg = format!("Container {name} failed {kind} probe, will be restarted");
                        emit(deps, &pod, "Normal", "Killing", &msg);
                        self.stop_wave(deps, &[i], Instant::now() + Duration::from_secs(grace)).await;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }

    async fn terminate(&mut self, deps: &Deps) {
        let pod = self.pod();
        let grace = pod["metadata"]["deletionGracePeriodSeconds"]
            .as_u64()
            .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_u64())
            .unwrap_or(30);
        self.stop_containers(deps, Duration::from_secs(grace), false).await;
        self.cleanup(deps).await;
        if !self.deleted {
            self.write_status(deps).await;
            // Finish the graceful deletion: the object goes once its containers are gone.
            match deps
                .client
                .delete_uid(gvr::PODS, Some(&self.namespace), &self.name, &self.uid, Some(0))
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => {
                    tracing::warn!(pod = %self.name, "failed to delete the pod: {e}");
                    return;
                }
            }
        }
        self.stage = Stage::Gone;
    }

    /// Stops the running containers within `grace`: first the main and regular init
    /// containers together, then the sidecars one by one in reverse order (upstream's
    /// order); with `sidecars_only`, just the sidecars.
    async fn stop_containers(&mut self, deps: &Deps, grace: Duration, sidecars_only: bool) {
        let deadline = Instant::now() + grace;
        if !sidecars_only {
            let first: Vec<usize> = (0..self.ctrs.len())
                .filter(|&i| self.ctrs[i].id.is_some() && !self.ctrs[i].sidecar)
                .collect();
            self.stop_wave(deps, &first, deadline).await;
        }
        if sidecars_only {
            // The pod is done: ephemeral containers still running go with the sidecars.
            let ephemeral: Vec<usize> = (0..self.ctrs.len())
                .filter(|&i| self.ctrs[i].ephemeral && self.ctrs[i].id.is_some())
                .collect();
            self.stop_wave(deps, &ephemeral, deadline).await;
        }
        for i in (0..self.ctrs.len()).rev() {
            if self.ctrs[i].sidecar && self.ctrs[i].id.is_some() {
                self.stop_wave(deps, &[i], deadline).await;
            }
        }
    }

    /// Stops the containers `which` at once, each after its `preStop` hook, all by
    /// `deadline` (a hook that used up the time still leaves its container 2 s, as
    /// upstream), and records how each ended.
    async fn stop_wave(&mut self, deps: &Deps, which: &[usize], deadline: Instant) {
        let pod = self.pod();
        let ip = self.ip(deps);
        let mut stops = Vec::new();
        for &i in which {
            let c = &self.ctrs[i];
            let Some(id) = c.id.clone() else { continue };
            if !self.deleted {
                emit(deps, &pod, "Normal", "Killing", &format!("Stopping container {}", c.name));
            }
            let hook = c.spec["lifecycle"]["preStop"].clone();
            let (container, name, pod, ip) = (c.spec.clone(), c.name.clone(), pod.clone(), ip.clone());
            let rt = deps.runtime.clone();
            stops.push(async move {
                if !hook.is_null() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let failed =
                        match tokio::time::timeout(left, run_hook(deps, &id, &ip, &hook, &container)).await {
                            Ok(Ok(())) => None,
                            Ok(Err(m)) => Some(m),
                            Err(_) => Some(format!("timed out after {}s", left.as_secs())),
                        };
                    if let Some(m) = failed {
                        let msg = format!("PreStopHook failed for container {name}: {m}");
                        emit(deps, &pod, "Warning", "FailedPreStopHook", &msg);
                    }
                }
                let mut left = deadline.saturating_duration_since(Instant::now());
                if !hook.is_null() {
                    left = left.max(Duration::from_secs(2));
                }
                let exit = rt.stop(&id, left).await;
                let _ = rt.remove(&id).await;
                (id, exit)
            });
        }
        let results = futures::future::join_all(stops).await;
        for (id, exit) in results {
            if let Some(i) = self.ctrs.iter().position(|c| c.id.as_deref() == Some(&id)) {
                match exit {
                    Ok(exit) => {
                        let t = Terminated::from_exit(&id, &exit);
                        self.ended(deps, i, t).await;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.name, "stopping {id} failed: {e}");
                        self.ctrs[i].id = None;
                    }
                }
            }
        }
    }

    /// Releases the pod's network, volumes and cgroups (its containers are gone).
    pub async fn cleanup(&mut self, deps: &Deps) {
        if let Err(e) = deps.network.teardown(&self.uid).await {
            tracing::warn!(pod = %self.name, "network teardown failed: {e}");
        }
        self.net = None;
        if let Err(e) = deps.runtime.remove_pod_cgroups(&self.uid).await {
            tracing::warn!(pod = %self.name, "pod cgroup cleanup failed: {e}");
        }
        if let Err(e) = volumes::unmount_all(&self.pod_dir(deps)) {
            tracing::warn!(pod = %self.name, "volume cleanup failed: {e}");
        }
        let _ = std::fs::remove_dir_all(self.pod_dir(deps));
        let _ = std::fs::remove_dir_all(self.log_dir(deps));
    }

    fn container_status(&self, c: &Ctr) -> Value {
        let state = |st: &CState| match st {
            CState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            CState::Terminated(t) => json!({"terminated": terminated_json(t)}),
        };
        let mut shown_state = c.state.clone();
        if let (Some((reason, message)), CState::Waiting { .. }) = (&self.prepare_error, &c.state) {
            if c.image.is_none() || reason.starts_with("Create") {
                shown_state = CState::Waiting { reason: reason.clone(), message: Some(message.clone()) };
            }
        }
        let image = c.spec["image"].as_str().unwrap_or("");
        let mut v = json!({
            "name": c.name,
            "image": image,
            "imageID": c.image.as_ref().map(|i| i.repo_digest.clone()).unwrap_or_default(),
            "ready": c.ready && c.id.is_some(),
            "restartCount": c.restart_count,
            "started": c.id.is_some() && c.started,
            "state": state(&shown_state),
            "lastState": c.last.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or(json!({})),
        });
        if let Some(id) = &c.id {
            v["containerID"] = json!(format!("runc://{id}"));
        } else if let CState::Terminated(Terminated { container_id: Some(id), .. }) = &c.state {
            v["containerID"] = json!(id);
        }
        v
    }

    /// The pod status this agent reports.
    pub fn status(&self, deps: &Deps) -> Value {
        let pod = self.pod();
        // A rejected pod reports only that (upstream's rejectPod); an evicted one also how
        // its containers ended.
        if let Some((reason, message)) = self.rejected.as_ref().filter(|(r, _)| r != "Evicted") {
            let mut st = json!({"phase": "Failed", "reason": reason, "message": message});
            if !pod["status"]["qosClass"].is_null() {
                st["qosClass"] = pod["status"]["qosClass"].clone();
            }
            return st;
        }
        let init: Vec<Value> =
            self.ctrs.iter().filter(|c| c.init).map(|c| self.container_status(c)).collect();
        let app: Vec<Value> =
            self.ctrs.iter().filter(|c| !c.init && !c.ephemeral).map(|c| self.container_status(c)).collect();
        let ephemeral: Vec<Value> =
            self.ctrs.iter().filter(|c| c.ephemeral).map(|c| self.ephemeral_status(c)).collect();
        let inits_done = self.ctrs.iter().filter(|c| c.init).all(|c| c.initialized());
        // Sidecars count for readiness, as upstream; ephemeral containers do not.
        let all_ready = self
            .ctrs
            .iter()
            .filter(|c| (!c.init || c.sidecar) && !c.ephemeral)
            .all(|c| c.ready && c.id.is_some());
        let any_running = self.ctrs.iter().any(|c| !c.init && !c.ephemeral && c.id.is_some());
        let phase = match self.finished_phase {
            Some(p) => p,
            None if self.stage == Stage::Main
                && (any_running
                    || self.ctrs.iter().any(|c| !c.init && !c.ephemeral && c.restart_count > 0)) =>
            {
                "Running"
            }
            None => "Pending",
        };
        let previous = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let now = now();
        let cond = |type_: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c["type"].as_str() == Some(type_) && c["status"].as_str() == Some(status))
                .and_then(|c| c["lastTransitionTime"].as_str())
                .unwrap_or(&now)
                .to_string();
            let mut c =
                json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": since});
            if let Some(r) = reason.filter(|_| !ok) {
                c["reason"] = json!(r);
            }
            c
        };
        let sandbox = self.net.is_some() || pod["spec"]["hostNetwork"].as_bool() == Some(true);
        let ready_reason = if self.finished_phase.is_some() { "PodCompleted" } else { "ContainersNotReady" };
        let mut conditions = vec![
            cond("PodReadyToStartContainers", sandbox, None),
            cond("Initialized", inits_done, Some("ContainersNotInitialized")),
            cond("Ready", all_ready && self.finished_phase.is_none(), Some(ready_reason)),
            cond("ContainersReady", all_ready && self.finished_phase.is_none(), Some(ready_reason)),
        ];
        // Conditions others own (PodScheduled, DisruptionTarget, readiness gates) stay.
        let owned = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"];
        conditions
            .extend(previous.iter().filter(|c| !owned.contains(&c["type"].as_str().unwrap_or(""))).cloned());
        let mut st = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": deps.host_ip,
            "hostIPs": [{"ip": deps.host_ip}],
            "containerStatuses": app,
            "qosClass": pod["status"]["qosClass"].clone(),
        });
        if !init.is_empty() {
            st["initContainerStatuses"] = json!(init);
        }
        if !ephemeral.is_empty() {
            st["ephemeralContainerStatuses"] = json!(ephemeral);
        }
        if let Some(t) = &self.start_time {
            st["startTime"] = json!(t);
        }
        let ip = self
            .net
            .as_ref()
            .map(|n| n.ip.to_string())
            .or_else(|| (pod["spec"]["hostNetwork"].as_bool() == Some(true)).then(|| deps.host_ip.clone()))
            .or_else(|| {
                let reported = pod["status"]["podIP"].as_str().map(str::to_string);
                self.finished_ip.clone().or(reported).filter(|_| self.stage == Stage::Finished)
            });
        if let Some(ip) = ip {
            st["podIP"] = json!(ip);
            st["podIPs"] = json!([{"ip": ip}]);
        }
        if let Some((reason, message)) = &self.rejected {
            st["phase"] = json!("Failed");
            st["reason"] = json!(reason);
            st["message"] = json!(message);
        }
        if st["qosClass"].is_null() {
            st.as_object_mut().map(|o| o.remove("qosClass"));
        }
        st
    }

    async fn write_status(&mut self, deps: &Deps) {
        let st = self.status(deps);
        let comparable = strip_times(&st);
        if self.last_status.as_ref() == Some(&comparable) {
            return;
        }
        let patch = json!({"status": st});
        match deps
            .client
            .patch(
                gvr::PODS,
                Some(&self.namespace),
                &self.name,
                "application/merge-patch+json",
                patch,
                Some("status"),
            )
            .await
        {
            Ok(_) => {
                if st["phase"].as_str() == Some("Running") {
                    if let Some(seen) = self.seen.take() {
                        POD_START.observe(seen.elapsed().as_secs_f64());
                    }
                }
                self.last_status = Some(comparable);
            }
            Err(e) if e.is_not_found() => {
                self.deleted = true;
            }
            Err(e) => tracing::debug!(pod = %self.name, "status update failed (retried): {e}"),
        }
    }

    /// The status of an ephemeral container (no readiness, probes or restarts).
    fn ephemeral_status(&self, c: &Ctr) -> Value {
        let mut v = self.container_status(c);
        if let Some(o) = v.as_object_mut() {
            o.remove("started");
            o.insert("ready".into(), json!(false));
        }
        v
    }

    /// Adds the ephemeral containers the pod's spec gained, pulls their images and starts
    /// each once (a failed start is retried only for configuration errors, as upstream).
    async fn run_ephemeral(&mut self, deps: &Deps) {
        let pod = self.pod();
        for c in pod["spec"]["ephemeralContainers"].as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or("");
            if name.is_empty() || self.ctrs.iter().any(|o| o.name == name) {
                continue;
            }
            self.ctrs.push(Ctr {
                name: name.to_string(),
                init: false,
                sidecar: false,
                ephemeral: true,
                spec: c.clone(),
                restart_count: 0,
                id: None,
                state: CState::Waiting { reason: "ContainerCreating".into(), message: None },
                last: None,
                image: None,
                not_before: None,
                delay: Duration::ZERO,
                backoff: Duration::ZERO,
                ready: false,
                started: false,
                succeeded: false,
                liveness: None,
                readiness: None,
                startup: None,
                done: tokio::sync::watch::channel(false).0,
            });
        }
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            if !c.ephemeral
                || c.id.is_some()
                || matches!(c.state, CState::Terminated(_))
                || c.not_before.is_some_and(|t| Instant::now() < t)
            {
                continue;
            }
            if c.image.is_none() {
                let creds = pull_credentials(&pod, &self.sources);
                let image = c.spec["image"].as_str().unwrap_or("").to_string();
                let policy = PullPolicy::from_k8s(c.spec["imagePullPolicy"].as_str(), &image);
                match deps.images.ensure(&image, policy, &creds).await {
                    Ok(info) => self.ctrs[i].image = Some(info),
                    Err(e) => {
                        let reason = if matches!(e, PullError::NeverPullNotPresent(_)) {
                            "ErrImageNeverPull"
                        } else {
                            "ErrImagePull"
                        };
                        let msg = e.to_string();
                        emit(deps, &pod, "Warning", "Failed", &msg);
                        let c = &mut self.ctrs[i];
                        c.state = CState::Waiting { reason: reason.into(), message: Some(msg) };
                        c.not_before = Some(Instant::now() + deps.backoff_base);
                        continue;
                    }
                }
            }
            self.maybe_start(deps, i).await;
        }
    }

    /// What the session server needs to know about a container.
    pub fn view(&self, deps: &Deps) -> super::PodView {
        super::PodView {
            uid: self.uid.clone(),
            ip: self.net.as_ref().map(|n| n.ip),
            containers: self
                .ctrs
                .iter()
                .map(|c| super::ContainerView {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    restart_count: c.restart_count,
                    log: self.log_path(deps, &c.name, c.restart_count),
                    previous_log: (c.restart_count > 0)
                        .then(|| self.log_path(deps, &c.name, c.restart_count - 1)),
                    done: c.done.subscribe(),
                    stdin: c.spec["stdin"].as_bool() == Some(true),
                    tty: c.spec["tty"].as_bool() == Some(true),
                })
                .collect(),
        }
    }
}

const SECRETS: capstan_actors::client::Gvr = capstan_actors::client::Gvr::new("", "v1", "secrets");

/// Where a container's status is reported.
fn statuses_key(init: bool, ephemeral: bool) -> &'static str {
    match (init, ephemeral) {
        (_, true) => "ephemeralContainerStatuses",
        (true, _) => "initContainerStatuses",
        _ => "containerStatuses",
    }
}

/// Registry credentials from the pod's `imagePullSecrets`.
fn pull_credentials(pod: &Value, sources: &Sources) -> HashMap<String, crate::image::Credentials> {
    let mut creds = HashMap::new();
    for sref in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
        let name = sref["name"].as_str().unwrap_or("");
        let key = ("secret".to_string(), name.to_string(), ".dockerconfigjson".to_string());
        if let Some(bytes) = sources.binary.get(&key) {
            if let Ok(parsed) = crate::image::parse_docker_config(bytes) {
                creds.extend(parsed);
            }
        }
    }
    creds
}

fn fmt_time(t: jiff::Timestamp) -> String {
    capstan_actors::nodeobjects::time(t)
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": t.finished_at,
    });
    if let Some(s) = &t.started_at {
        v["startedAt"] = json!(s);
    }
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(id) = &t.container_id {
        v["containerID"] = json!(id);
    }
    v
}

/// The status without heartbeat-like times, to decide whether anything changed.
fn strip_times(st: &Value) -> Value {
    let mut v = st.clone();
    if let Some(cs) = v["conditions"].as_array_mut() {
        for c in cs {
            if let Some(o) = c.as_object_mut() {
                o.remove("lastProbeTime");
            }
        }
    }
    v
}

fn host_ports(pod: &Value) -> Vec<crate::network::HostPort> {
    let mut out = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(hp) = p["hostPort"].as_u64().filter(|h| *h > 0) {
                out.push(crate::network::HostPort {
                    host_port: hp as u16,
                    container_port: p["containerPort"].as_u64().unwrap_or(hp) as u16,
                    protocol: p["protocol"].as_str().unwrap_or("TCP").to_lowercase(),
                    host_ip: p["hostIP"].as_str().map(str::to_string),
                });
            }
        }
    }
    out
}

/// Runs one probe check; a named port is the container's port of that name, as upstream.
async fn check(deps: &Deps, id: &str, ip: &str, spec: &Value, container: &Value) -> ProbeOutcome {
    let timeout = Duration::from_secs(spec["timeoutSeconds"].as_u64().unwrap_or(1).max(1));
    let port = |p: &Value, c: &Value| -> Option<u16> {
        p.as_u64().map(|n| n as u16).or_else(|| {
            let name = p.as_str()?;
            c["ports"].as_array()?.iter().find(|x| x["name"].as_str() == Some(name))?["containerPort"]
                .as_u64()
                .map(|n| n as u16)
        })
    };
    if let Some(h) = spec.get("httpGet") {
        let Some(p) = port(&h["port"], container) else {
            return ProbeOutcome::Failure(format!("invalid probe port {}", h["port"]));
        };
        let host = h["host"].as_str().unwrap_or(ip).to_string();
        let headers: Vec<(String, String)> = h["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| Some((x["name"].as_str()?.to_string(), x["value"].as_str()?.to_string())))
            .collect();
        let https = h["scheme"].as_str() == Some("HTTPS");
        return crate::probes::http_get(
            &host,
            p,
            h["path"].as_str().unwrap_or("/"),
            https,
            &headers,
            timeout,
        )
        .await;
    }
    if let Some(t) = spec.get("tcpSocket") {
        let Some(p) = port(&t["port"], container) else {
            return ProbeOutcome::Failure(format!("invalid probe port {}", t["port"]));
        };
        let host = t["host"].as_str().unwrap_or(ip).to_string();
        return crate::probes::tcp_socket(&host, p, timeout).await;
    }
    if let Some(g) = spec.get("grpc") {
        let Some(p) = g["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
            return ProbeOutcome::Failure(format!("invalid probe port {}", g["port"]));
        };
        return crate::probes::grpc(ip, p, g["service"].as_str().unwrap_or(""), timeout).await;
    }
    if let Some(e) = spec.get("exec") {
        let command: Vec<String> = e["command"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        return match tokio::time::timeout(timeout, exec_output(deps, id, command.clone())).await {
            Ok(Ok((0, _))) => ProbeOutcome::Success,
            Ok(Ok((code, out))) => ProbeOutcome::Failure(format!(
                "command {command:?} exited with {code}: {}",
                String::from_utf8_lossy(&out).trim()
            )),
            Ok(Err(e)) => ProbeOutcome::Failure(e.to_string()),
            Err(_) => ProbeOutcome::Failure(format!("command timed out after {}s", timeout.as_secs())),
        };
    }
    ProbeOutcome::Success
}

/// Runs a lifecycle hook (`exec`, `httpGet` or `sleep`) of `container`, whose instance is
/// `id`, at the pod's address `ip`.
async fn run_hook(deps: &Deps, id: &str, ip: &str, hook: &Value, container: &Value) -> Result<(), String> {
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        return Ok(());
    }
    let (kind, spec) = if let Some(e) = hook.get("exec") {
        ("Exec", json!({"exec": e, "timeoutSeconds": 3600}))
    } else if let Some(h) = hook.get("httpGet") {
        ("HTTP", json!({"httpGet": h, "timeoutSeconds": 10}))
    } else {
        return Ok(());
    };
    match check(deps, id, ip, &spec, container).await {
        ProbeOutcome::Success => Ok(()),
        ProbeOutcome::Failure(m) => Err(format!("{kind} lifecycle hook failed: {m}")),
    }
}

/// Records an Event without waiting for it (events are best effort and must not delay
/// the status write that follows).
fn emit(deps: &Deps, obj: &Value, type_: &str, reason: &str, message: &str) {
    let (recorder, obj) = (deps.recorder.clone(), obj.clone());
    let (type_, reason, message) = (type_.to_string(), reason.to_string(), message.to_string());
    tokio::spawn(async move { recorder.event(&obj, &type_, &reason, &message).await });
}

/// Runs a command in a container; returns its exit code and output (stdout then stderr).
async fn exec_output(
    deps: &Deps,
    id: &str,
    args: Vec<String>,
) -> Result<(i32, Vec<u8>), crate::runtime::RuntimeError> {
    use tokio::io::AsyncReadExt;
    let spec = crate::runtime::ExecSpec { args, ..Default::default() };
    let mut p = deps.runtime.exec(id, &spec).await?;
    let mut out = Vec::new();
    if let Some(mut o) = p.stdout.take() {
        let _ = o.read_to_end(&mut out).await;
    }
    if let Some(mut e) = p.stderr.take() {
        let _ = e.read_to_end(&mut out).await;
    }
    let code = p.wait().await?;
    Ok((code, out))
}

/// Tells a pod actor about a new version of its pod (`None`: deleted from the API).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PodUpdate(pub Option<Arc<Value>>);

/// The pod actor.
pub struct PodWorker {
    deps: Arc<Deps>,
    state: Option<Box<PodState>>,
    latest: Option<Arc<Value>>,
    deleted: bool,
    again: bool,
    evict: Option<(String, Duration)>,
}

impl PodWorker {
    /// A worker for a pod, adopting the given containers.
    pub fn new(deps: Arc<Deps>, pod: Arc<Value>, adopted: Vec<crate::runtime::ContainerInfo>) -> PodWorker {
        let state = PodState::new(pod.clone(), adopted);
        PodWorker {
            deps,
            state: Some(Box::new(state)),
            latest: Some(pod),
            deleted: false,
            again: false,
            evict: None,
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(mut st) = self.state.take() else {
            self.again = true;
            return;
        };
        if self.latest.is_some() {
            st.pod = self.latest.clone();
        }
        st.deleted |= self.deleted;
        if let Some(e) = self.evict.take() {
            st.evicting = Some(e);
        }
        let deps = self.deps.clone();
        let fut = async move {
            st.step(&deps).await;
            let view = st.view(&deps);
            deps.views
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(format!("{}/{}", st.namespace, st.name), view);
            st
        };
        ctx.spawn(fut.into_actor(self).map(|st, act, ctx| {
            let gone = st.stage == Stage::Gone;
            if gone {
                act.deps
                    .views
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&format!("{}/{}", st.namespace, st.name));
                act.deps.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&st.uid);
                ctx.stop();
                return;
            }
            act.state = Some(st);
            if std::mem::take(&mut act.again) {
                act.tick(ctx);
            }
        }));
    }
}

impl Actor for PodWorker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.tick(ctx);
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.tick(ctx));
    }
}

/// Evict the pod (node pressure): stop its containers within `grace` and report it
/// `Failed` with reason `Evicted` and the message.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evict {
    /// Upstream's eviction message.
    pub message: String,
    /// How long the containers get to stop (zero: killed at once).
    pub grace: Duration,
}

impl Handler<Evict> for PodWorker {
    type Result = ();

    fn handle(&mut self, msg: Evict, ctx: &mut Context<Self>) {
        self.evict = Some((msg.message, msg.grace));
        self.tick(ctx);
    }
}

impl Handler<PodUpdate> for PodWorker {
    type Result = ();

    fn handle(&mut self, msg: PodUpdate, ctx: &mut Context<Self>) {
        match msg.0 {
            Some(p) => self.latest = Some(p),
            None => self.deleted = true,
        }
        self.tick(ctx);
    }
}
