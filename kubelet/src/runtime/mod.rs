//! The container runtime: runc, OCI bundles, the shim, cgroups, overlayfs.
//!
//! [`RuncRuntime`] runs containers with `runc` (cgroup v1, hybrid or v2; tested with runc 1.1.5
//! on cgroup v1 hybrid):
//!
//! * **Root filesystem**: an overlayfs of the image's unpacked layers (`lowerdir`, shared and
//!   never written) with a per-container `upper`/`work` dir, mounted at
//!   `<root>/containers/<id>/bundle/rootfs` (see [`state`] for the whole state directory).
//! * **OCI config** ([`spec::build_spec`]): new pid, ipc, uts and mount namespaces, the given
//!   network namespace (or a new empty one), a cgroup namespace only on cgroup v2 (not for
//!   privileged containers); runc's default mounts; the [`Security`] settings as
//!   containerd turns them into OCI fields (capabilities, `no_new_privs`, seccomp with
//!   containerd's default profile in [`seccomp`], masked and read-only paths, read-only
//!   root, sysctls, privileged mode; see [`security`]);
//!   `RLIMIT_NOFILE` 1048576 (capped at the agent's own hard limit when it lacks
//!   `CAP_SYS_RESOURCE`); the absolute cgroup path `<cgroup_parent>/<pod_id>/<id>` with
//!   the [`Resources`] limits; `process.terminal` as [`ContainerSpec::tty`] says.
//! * **Shim** ([`shim`]): one detached process per container (`<shim_exe> shim ...`) that
//!   runs `runc create` + `runc start`, copies the container's stdout/stderr into the CRI log
//!   file, is the subreaper that collects the init's exit status and writes it (with the OOM
//!   verdict) to the state directory. A container with a terminal ([`ContainerSpec::tty`])
//!   gets it from runc over a console socket; the shim copies its output into the log as
//!   stdout, feeds it the stdin FIFO and applies [`resize`](RuncRuntime::resize)s. It outlives the agent: a restarted agent finds its
//!   containers with [`RuncRuntime::list`] and keeps using them by id.
//!
//! Life cycle: [`RuncRuntime::start`] → ([`status`](RuncRuntime::status),
//! [`wait`](RuncRuntime::wait), [`signal`](RuncRuntime::signal),
//! [`exec`](RuncRuntime::exec), [`open_stdin`](RuncRuntime::open_stdin)) →
//! [`stop`](RuncRuntime::stop) → [`remove`](RuncRuntime::remove) (every container of the pod)
//! → [`remove_pod_cgroups`](RuncRuntime::remove_pod_cgroups). A container that failed to
//! start still exists, as exited with code 128 and [`ExitInfo::error`] set, until removed.
//!
//! Terminals: see [`tty`] (exec sessions get one from a foreground `runc exec --tty` on a pty
//! the agent opens; containers from the shim).
//!
//! Not supported: log rotation (the shim appends to one file); overlay mount options longer than a page (about 40 layers with
//! long paths) are rejected.
//!
//! The shim runs inside whatever binary `shim_exe` names: that binary must call
//! [`shim::run_shim`] with [`shim::ShimArgs::parse`] of its arguments when its first
//! argument is `shim` (the `capstan` binary does; the integration test binary
//! `kubelet/tests/runtime.rs` has its own `main` that does the same).

pub mod cgroups;
pub mod logfile;
pub mod mounts;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod shim;
pub mod spec;
pub mod state;
pub mod tty;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

pub use resources::Resources;
pub use security::{SeccompProfile, Security};
pub use tty::Terminal;

use cgroups::Hierarchies;
use state::{read_json, write_json_atomic, ExitRecord, Meta, ShimReport, StartedRecord, StateDir};

/// How long [`RuncRuntime::start`] waits for the shim's report.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`RuncRuntime::wait`] looks for the exit file.
const POLL: Duration = Duration::from_millis(50);
/// How long [`RuncRuntime::stop`] and [`RuncRuntime::remove`] wait for a SIGKILLed container.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// runc is missing or broken.
    #[error("{0}")]
    RuncMissing(String),
    /// The machine lacks something the runtime needs (cgroup controllers, overlayfs).
    #[error("{0}")]
    Unsupported(String),
    /// The container spec is unusable.
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// A container with this id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No container with this id.
    #[error("container {0} not found")]
    NotFound(String),
    /// The container is not running.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container could not be created or started; `message` is runc's error.
    #[error("container {id} failed to start: {message}")]
    StartFailed {
        /// The container id.
        id: String,
        /// runc's error message (e.g. `... exec: "nope": executable file not found in $PATH`).
        message: String,
    },
    /// A runc command failed.
    #[error("runc {op} failed: {message}")]
    Runc {
        /// The runc subcommand.
        op: String,
        /// runc's stderr.
        message: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// Settings of a [`RuncRuntime`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Our state directory: one directory per container (bundle, overlay dirs, shim state).
    pub root: PathBuf,
    /// The runc binary (a bare name is looked up in `PATH`).
    pub runc: PathBuf,
    /// runc's own state directory (`runc --root`).
    pub runc_root: PathBuf,
    /// The binary whose `shim` subcommand is the shim (normally the capstan binary itself).
    pub shim_exe: PathBuf,
    /// Absolute cgroup path under which pods get their cgroups (`/capstan`).
    pub cgroup_parent: String,
    /// How the shims rotate container logs (upstream's `containerLogMaxSize` and
    /// `containerLogMaxFiles`).
    pub log_rotation: logfile::Rotation,
}

impl RuntimeConfig {
    /// Defaults: runc from `PATH`, `runc --root /run/capstan/runc`, the current executable as
    /// the shim, cgroups under `/capstan`.
    pub fn new(root: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            root: root.into(),
            runc: PathBuf::from("runc"),
            runc_root: PathBuf::from("/run/capstan/runc"),
            shim_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            cgroup_parent: "/capstan".to_string(),
            log_rotation: logfile::Rotation::upstream(),
        }
    }
}

/// `ContainerSpec::netns` value for a container in the host's network namespace.
pub const HOST_NETWORK: &str = "host";

/// A bind mount into a container (a volume, `/etc/hosts`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path in the container.
    pub destination: String,
    /// Host file or directory.
    pub source: PathBuf,
    /// Mount it read-only.
    pub read_only: bool,
}

/// Everything needed to run one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Unique runc id (letters, digits, `_ + - .`), e.g. `<pod-uid>-<name>-<attempt>`.
    pub id: String,
    /// The pod, for the cgroup path `<cgroup_parent>/<pod_id>/<id>` and cleanup.
    pub pod_id: String,
    /// Stored with the container and returned by [`RuncRuntime::list`].
    pub labels: BTreeMap<String, String>,
    /// Unpacked image layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// The resolved argv.
    pub args: Vec<String>,
    /// `NAME=value` environment (a default `PATH` and `HOSTNAME` are added when missing).
    pub env: Vec<String>,
    /// Working directory (`/` when empty).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Hostname (UTS namespace).
    pub hostname: String,
    /// Network namespace to join; `None` = a new one with only loopback (down).
    pub netns: Option<PathBuf>,
    /// PID namespace to join (`/proc/<pid>/ns/pid` of another container, for an ephemeral
    /// container's `targetContainerName`); `None` = a new one.
    pub pid_ns: Option<PathBuf>,
    /// Bind mounts, in order, after the standard ones (`/proc`, `/dev`, `/sys`, ...).
    pub mounts: Vec<Mount>,
    /// cgroup limits.
    pub resources: Resources,
    /// The CRI log file the shim appends the container's output to.
    pub log_path: PathBuf,
    /// Give the container a stdin fed by [`RuncRuntime::open_stdin`] (else /dev/null).
    pub stdin: bool,
    /// Close the container's stdin when the first stdin writer disconnects.
    pub stdin_once: bool,
    /// Give the container a terminal: its stdin, stdout and stderr are one pty, whose output
    /// goes to the log as stdout and whose input is the stdin FIFO (with `stdin`); see
    /// [`RuncRuntime::resize`]. `TERM=xterm` is added when `env` has no `TERM`.
    pub tty: bool,
    /// The signal [`RuncRuntime::stop`] sends first (the image's `StopSignal`); SIGTERM if
    /// `None`.
    pub stop_signal: Option<Signal>,
    /// Capabilities, seccomp, `no_new_privs`, read-only root, masked paths, sysctls,
    /// privileged mode (default: containerd's defaults, unconfined).
    pub security: Security,
}

/// A started container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// Host pid of its init process.
    pub pid: i32,
    /// When it started.
    pub started_at: Timestamp,
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status; 128 + signal number for a signal death; 128 for a failed start; 255 when
    /// unknown (the shim is gone).
    pub code: i32,
    /// The signal that killed the init, if one did.
    pub signal: Option<i32>,
    /// When it ended (or failed to start).
    pub finished_at: Timestamp,
    /// When it started, if it did.
    pub started_at: Option<Timestamp>,
    /// The container's memory cgroup saw an OOM kill.
    pub oom_killed: bool,
    /// Why it failed to start (runc's message), or why the exit status is unknown.
    pub error: Option<String>,
}

impl ExitInfo {
    /// The CRI reason: `StartError` (failed to start), `OOMKilled`, `Completed` (code 0) or
    /// `Error`.
    pub fn reason(&self) -> &'static str {
        if self.error.is_some() && self.started_at.is_none() {
            "StartError"
        } else if self.oom_killed {
            "OOMKilled"
        } else if self.code == 0 {
            "Completed"
        } else {
            "Error"
        }
    }

    fn from_record(r: ExitRecord) -> ExitInfo {
        ExitInfo {
            code: r.exit_code,
            signal: r.signal,
            finished_at: parse_time(&r.finished_at),
            started_at: r.started_at.as_deref().map(parse_time),
            oom_killed: r.oom_killed,
            error: r.error,
        }
    }
}

/// The state of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Being created ([`RuncRuntime::start`] has not returned yet).
    Creating,
    /// Its init process runs.
    Running {
        /// Host pid of the init.
        pid: i32,
        /// When it started.
        started_at: Timestamp,
    },
    /// It exited or failed to start.
    Exited(ExitInfo),
}

/// A container known to the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// runc id.
    pub id: String,
    /// The pod (from our state, or the config's annotation for runc-only containers).
    pub pod_id: Option<String>,
    /// The labels given at start.
    pub labels: BTreeMap<String, String>,
    /// Its state, if it can be told.
    pub status: Option<ContainerStatus>,
    /// `false` for a container runc knows but that has no state directory of ours (left by a
    /// crash in the middle of [`RuncRuntime::remove`]): remove it.
    pub managed: bool,
}

/// A process to run in a running container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// argv.
    pub args: Vec<String>,
    /// Extra `NAME=value` variables (on top of the container's environment).
    pub env: Vec<String>,
    /// Working directory; the container's when `None`.
    pub cwd: Option<String>,
    /// `(uid, gid)`; the container's user when `None`.
    pub user: Option<(u32, u32)>,
    /// Pipe stdin to the process (else /dev/null). Ignored with `tty`.
    pub stdin: bool,
    /// Run the process on a terminal ([`ExecProcess::terminal`]) instead of pipes;
    /// `TERM=xterm` is added when `env` has no `TERM`.
    pub tty: bool,
}

/// A process started by [`RuncRuntime::exec`] (a `runc exec` in the foreground).
///
/// Dropping it does not stop the process; close stdin, [`signal`](ExecProcess::signal) or
/// [`wait`](ExecProcess::wait) for it.
#[derive(Debug)]
pub struct ExecProcess {
    /// Its stdin, with [`ExecSpec::stdin`] (not with a terminal).
    pub stdin: Option<ChildStdin>,
    /// Its stdout (not with a terminal).
    pub stdout: Option<ChildStdout>,
    /// Its stderr (also where runc reports that the process could not be started; not with
    /// a terminal).
    pub stderr: Option<ChildStderr>,
    /// Its terminal, with [`ExecSpec::tty`]: input, output (runc's errors included) and
    /// resizes. Reading it ends once the process has exited and its output is read.
    pub terminal: Option<Terminal>,
    child: Child,
}

impl ExecProcess {
    /// Waits for the exit; the exit code (128 + signal for a signal death; 255 when runc
    /// could not start the process, its message being on stderr).
    pub async fn wait(&mut self) -> Result<i32, RuntimeError> {
        let status = self.child.wait().await.map_err(io_err("waiting for runc exec"))?;
        Ok(status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }))
    }

    /// Sends `sig` to the `runc exec` process, which forwards it to the process in the
    /// container (SIGKILL cannot be forwarded: it would only kill runc and orphan the
    /// process; use SIGTERM, or stop the container).
    pub fn signal(&self, sig: Signal) -> Result<(), RuntimeError> {
        let pid = self.child.id().ok_or_else(|| RuntimeError::NotRunning("exec process".into()))?;
        kill(Pid::from_raw(pid as i32), sig).map_err(|e| io_err("signalling runc exec")(e.into()))
    }

    /// The pid of the `runc exec` process (not of the process in the container).
    pub fn runc_pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The runc runtime. Cheap to clone; all clones share one configuration.
#[derive(Clone, Debug)]
pub struct RuncRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: RuntimeConfig,
    cgroups: Hierarchies,
    host: spec::Host,
}

/// One entry of `runc list --format json`.
#[derive(Debug, Deserialize)]
struct RuncListEntry {
    id: String,
    #[serde(default)]
    pid: i32,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl RuncRuntime {
    /// Checks that runc works (`runc --version`), that the memory, cpu and pids cgroup
    /// controllers are mounted and that overlayfs can be mounted under `root`; creates the
    /// state directories.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        const INSTALL: &str = "install the Debian package `runc` (apt-get install runc)";
        match std::process::Command::new(&config.runc).arg("--version").stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(RuntimeError::RuncMissing(format!(
                    "runc ({}) does not work: {}; {INSTALL}",
                    config.runc.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::RuncMissing(format!("runc is not installed: {INSTALL}")))
            }
            Err(e) => {
                return Err(RuntimeError::RuncMissing(format!(
                    "cannot run runc ({}): {e}; {INSTALL}",
                    config.runc.display()
                )))
            }
        }
        if !config.cgroup_parent.starts_with('/') || config.cgroup_parent.contains("..") {
            return Err(RuntimeError::InvalidSpec(format!(
                "cgroup_parent {:?} must be an absolute cgroup path",
                config.cgroup_parent
            )));
        }
        let cgroups = Hierarchies::discover().map_err(io_err("reading /proc/self/mountinfo"))?;
        let missing = cgroups.missing_controllers();
        if cgroups.all.is_empty() || !missing.is_empty() {
            return Err(RuntimeError::Unsupported(format!(
                "cgroup controllers are not mounted: {} (mount the cgroup hierarchies under /sys/fs/cgroup)",
                if missing.is_empty() { "all".to_string() } else { missing.join(", ") }
            )));
        }
        let containers = config.root.join("containers");
        std::fs::create_dir_all(&containers).map_err(io_err(format!("creating {}", containers.display())))?;
        std::fs::create_dir_all(&config.runc_root)
            .map_err(io_err(format!("creating {}", config.runc_root.display())))?;
        probe_overlay(&config.root)?;
        Ok(RuncRuntime {
            inner: Arc::new(Inner { host: spec::Host::current(cgroups.unified()), config, cgroups }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    fn state(&self, id: &str) -> StateDir {
        StateDir::new(self.inner.config.root.join("containers").join(id))
    }

    /// The machine's cgroup hierarchies.
    pub fn cgroups(&self) -> &Hierarchies {
        &self.inner.cgroups
    }

    /// The absolute cgroup path of a container.
    pub fn cgroup_path(&self, pod_id: &str, id: &str) -> String {
        format!("{}/{pod_id}/{id}", self.inner.config.cgroup_parent.trim_end_matches('/'))
    }

    /// A pod's memory usage in bytes (`memory.usage_in_bytes`, or `memory.current` on the
    /// unified hierarchy, of its cgroup), if it can be read.
    pub fn pod_memory_usage(&self, pod_id: &str) -> Option<u64> {
        let dir = self.inner.cgroups.dir("memory", &self.pod_cgroup_path(pod_id))?;
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| std::fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok())
    }

    fn pod_cgroup_path(&self, pod_id: &str) -> String {
        format!("{}/{pod_id}", self.inner.config.cgroup_parent.trim_end_matches('/'))
    }

    /// The directory of a container's cgroup for `controller` (`"memory"`, `"cpu"`, `"pids"`),
    /// whether or not it exists.
    pub fn cgroup_dir(&self, controller: &str, pod_id: &str, id: &str) -> Option<PathBuf> {
        self.inner.cgroups.dir(controller, &self.cgroup_path(pod_id, id))
    }

    /// Creates and starts a container: mounts its overlayfs root, writes its `config.json`,
    /// spawns its shim and returns once the container runs.
    ///
    /// Errors before the shim runs (bad spec, mount failure) leave nothing behind. When runc
    /// fails (e.g. the binary in `args` does not exist) the error is
    /// [`RuntimeError::StartFailed`] with runc's message, and the container stays known as
    /// exited (code 128, [`ExitInfo::error`] set, reason `StartError`) until
    /// [`remove`](Self::remove)d.
    pub async fn start(&self, spec: &ContainerSpec) -> Result<Started, RuntimeError> {
        validate_id(&spec.id)?;
        validate_id(&spec.pod_id)
            .map_err(|_| RuntimeError::InvalidSpec(format!("bad pod id {:?}", spec.pod_id)))?;
        if spec.log_path.as_os_str().is_empty() {
            return Err(RuntimeError::InvalidSpec("log_path is empty".into()));
        }

        let state = self.state(&spec.id);
        match tokio::fs::create_dir(&state.dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(spec.id.clone()))
            }
            Err(e) => return Err(io_err(format!("creating {}", state.dir.display()))(e)),
        }
        let prepared = {
            let this = self.clone();
            let spec = spec.clone();
            let state = state.clone();
            tokio::task::spawn_blocking(move || this.prepare(&spec, &state)).await.map_err(|e| {
                RuntimeError::Io { context: "preparing the bundle".into(), source: io::Error::other(e) }
            })?
        };
        if let Err(e) = prepared {
            let _ = self.remove_state(&state).await;
            return Err(e);
        }
        self.spawn_shim(spec, &state).await
    }

    /// Writes meta.json, mounts the rootfs and writes config.json (blocking).
    fn prepare(&self, spec: &ContainerSpec, state: &StateDir) -> Result<(), RuntimeError> {
        let cgroups_path = self.cgroup_path(&spec.pod_id, &spec.id);
        let meta = Meta {
            id: spec.id.clone(),
            pod_id: spec.pod_id.clone(),
            labels: spec.labels.clone(),
            log_path: spec.log_path.clone(),
            cgroups_path: cgroups_path.clone(),
            stop_signal: spec.stop_signal.map(|s| s as i32),
            created_at: state::now_rfc3339(),
        };
        write_json_atomic(&state.meta(), &meta).map_err(io_err("writing meta.json"))?;
        let oci = spec::build_spec(spec, &state.rootfs(), &cgroups_path, &self.inner.host)
            .map_err(RuntimeError::InvalidSpec)?;
        for dir in [state.bundle(), state.rootfs(), state.upper(), state.work()] {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let mut layers = spec.layers.clone();
        if layers.is_empty() {
            std::fs::create_dir_all(state.empty_layer()).map_err(io_err("creating the empty layer"))?;
            layers.push(state.empty_layer());
        }
        // Check what overlay would reject before mounting, so the error names the problem.
        mounts::overlay_options(&layers, &state.upper(), &state.work()).map_err(RuntimeError::InvalidSpec)?;
        mounts::mount_overlay(&layers, &state.upper(), &state.work(), &state.rootfs()).map_err(|e| {
            RuntimeError::Io { context: "mounting the root filesystem".into(), source: io::Error::other(e) }
        })?;
        oci.save(state.config()).map_err(|e| RuntimeError::Io {
            context: "writing config.json".into(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(())
    }

    async fn spawn_shim(&self, spec: &ContainerSpec, state: &StateDir) -> Result<Started, RuntimeError> {
        let config = &self.inner.config;
        let args = shim::ShimArgs {
            id: spec.id.clone(),
            state_dir: state.dir.clone(),
            runc: config.runc.clone(),
            runc_root: config.runc_root.clone(),
            log_path: spec.log_path.clone(),
            oom_file: self.inner.cgroups.oom_file(&self.cgroup_path(&spec.pod_id, &spec.id)),
            log_rotation: config.log_rotation,
            stdin: spec.stdin,
            stdin_once: spec.stdin_once,
            tty: spec.tty,
            detached: false,
        };
        let shim_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.shim_log())
            .map_err(io_err("creating shim.log"))?;
        let spawned = Command::new(&config.shim_exe)
            .arg("shim")
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(shim_log)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let message = format!("cannot run the shim ({}): {e}", config.shim_exe.display());
                return Err(self.start_failed(spec, state, message));
            }
        };
        let stdout = child.stdout.take();
        let read_report = async {
            let mut line = String::new();
            if let Some(stdout) = stdout {
                let _ = BufReader::new(stdout).read_line(&mut line).await;
            }
            line
        };
        let line = tokio::time::timeout(START_TIMEOUT, read_report).await;
        // The first stage exits as soon as it has spawned the detached shim.
        let _ = child.wait().await;
        let line = match line {
            Ok(line) => line,
            Err(_) => {
                return Err(RuntimeError::Timeout(format!(
                    "container {} did not start within {START_TIMEOUT:?}",
                    spec.id
                )))
            }
        };
        match serde_json::from_str::<ShimReport>(line.trim()) {
            Ok(ShimReport { pid: Some(pid), started_at: Some(t), error: None }) => {
                Ok(Started { pid, started_at: parse_time(&t) })
            }
            Ok(ShimReport { error: Some(message), .. }) => {
                Err(RuntimeError::StartFailed { id: spec.id.clone(), message })
            }
            _ => {
                let log = std::fs::read_to_string(state.shim_log()).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("; ");
                let message = format!("the shim exited without reporting: {tail}");
                Err(self.start_failed(spec, state, message))
            }
        }
    }

    /// Records a start failure the shim could not record itself.
    fn start_failed(&self, spec: &ContainerSpec, state: &StateDir, message: String) -> RuntimeError {
        if !state.exit().exists() {
            let record = ExitRecord {
                exit_code: 128,
                signal: None,
                finished_at: state::now_rfc3339(),
                oom_killed: false,
                started_at: None,
                error: Some(message.clone()),
            };
            let _ = write_json_atomic(&state.exit(), &record);
        }
        RuntimeError::StartFailed { id: spec.id.clone(), message }
    }

    /// The state of a container; `None` if the runtime has no state for it.
    pub async fn status(&self, id: &str) -> Result<Option<ContainerStatus>, RuntimeError> {
        if validate_id(id).is_err() {
            return Ok(None);
        }
        let state = self.state(id);
        if let Some(exit) = read_json::<ExitRecord>(&state.exit()).map_err(io_err("reading the exit file"))? {
            return Ok(Some(ContainerStatus::Exited(ExitInfo::from_record(exit))));
        }
        if !tokio::fs::try_exists(&state.dir).await.unwrap_or(false) {
            return Ok(None);
        }
        let shim_alive = shim_alive(&state);
        let started =
            read_json::<StartedRecord>(&state.started()).map_err(io_err("reading the started file"))?;
        // The shim writes the exit file before it exits: look again now that we know.
        if let Some(exit) = read_json::<ExitRecord>(&state.exit()).map_err(io_err("reading the exit file"))? {
            return Ok(Some(ContainerStatus::Exited(ExitInfo::from_record(exit))));
        }
        match started {
            Some(s) if shim_alive || process_alive(s.pid) => {
                Ok(Some(ContainerStatus::Running { pid: s.pid, started_at: parse_time(&s.started_at) }))
            }
            Some(s) => Ok(Some(ContainerStatus::Exited(ExitInfo {
                code: 255,
                signal: None,
                finished_at: Timestamp::now(),
                started_at: Some(parse_time(&s.started_at)),
                oom_killed: false,
                error: Some("the container's shim is gone; its exit status is unknown".into()),
            }))),
            None if shim_pid(&state).is_some() && !shim_alive => {
                Ok(Some(ContainerStatus::Exited(ExitInfo {
                    code: 255,
                    signal: None,
                    finished_at: Timestamp::now(),
                    started_at: None,
                    oom_killed: false,
                    error: Some("the container's shim exited before the container started".into()),
                })))
            }
            None if shim_pid(&state).is_none() && start_abandoned(&state) => {
                Ok(Some(ContainerStatus::Exited(ExitInfo {
                    code: 255,
                    signal: None,
                    finished_at: Timestamp::now(),
                    started_at: None,
                    oom_killed: false,
                    error: Some("the start of this container was interrupted".into()),
                })))
            }
            None => Ok(Some(ContainerStatus::Creating)),
        }
    }

    /// Resolves when the container has exited (polls its exit file every 50 ms).
    pub async fn wait(&self, id: &str) -> Result<ExitInfo, RuntimeError> {
        loop {
            match self.status(id).await? {
                None => return Err(RuntimeError::NotFound(id.to_string())),
                Some(ContainerStatus::Exited(exit)) => return Ok(exit),
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Sends `sig` to the container's init (`runc kill`).
    pub async fn signal(&self, id: &str, sig: Signal) -> Result<(), RuntimeError> {
        match self.status(id).await? {
            None => return Err(RuntimeError::NotFound(id.to_string())),
            Some(ContainerStatus::Exited(_)) => return Err(RuntimeError::NotRunning(id.to_string())),
            Some(_) => {}
        }
        match self.runc(&["kill", id, &(sig as i32).to_string()]).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Runc { message, .. }) if message.contains("not running") => {
                Err(RuntimeError::NotRunning(id.to_string()))
            }
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => {
                Err(RuntimeError::NotRunning(id.to_string()))
            }
            Err(e) => Err(e),
        }
    }

    /// Stops a container: its stop signal (SIGTERM by default), up to `grace` for it to exit,
    /// then SIGKILL. Returns how it exited.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<ExitInfo, RuntimeError> {
        let meta = read_json::<Meta>(&self.state(id).meta()).ok().flatten();
        let first = meta
            .and_then(|m| m.stop_signal)
            .and_then(|s| Signal::try_from(s).ok())
            .unwrap_or(Signal::SIGTERM);
        match self.signal(id, first).await {
            Ok(()) | Err(RuntimeError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        if let Ok(exit) = tokio::time::timeout(grace, self.wait(id)).await {
            return exit;
        }
        match self.signal(id, Signal::SIGKILL).await {
            Ok(()) | Err(RuntimeError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        tokio::time::timeout(KILL_TIMEOUT, self.wait(id))
            .await
            .map_err(|_| RuntimeError::Timeout(format!("container {id} did not exit after SIGKILL")))?
    }

    /// Removes everything of a container: kills it if it runs, `runc delete --force`, the
    /// shim if it lingers, the rootfs mount, its cgroup directories and its state directory.
    /// Idempotent; the pod's cgroup is left for [`remove_pod_cgroups`](Self::remove_pod_cgroups).
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let state = self.state(id);
        let meta = read_json::<Meta>(&state.meta()).ok().flatten();
        if let Some(ContainerStatus::Running { .. } | ContainerStatus::Creating) = self.status(id).await? {
            match self.signal(id, Signal::SIGKILL).await {
                // Let the shim record the exit (and the OOM verdict) before the cgroup goes.
                Ok(()) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.wait(id)).await;
                }
                Err(RuntimeError::NotRunning(_)) | Err(RuntimeError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.runc_delete(id).await?;
        if let Some(pid) = shim_pid(&state) {
            if shim_alive(&state) {
                let gone = tokio::time::timeout(Duration::from_secs(2), async {
                    while shim_alive(&state) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                if gone.is_err() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if let Some(meta) = &meta {
            let cgroups = self.inner.cgroups.clone();
            let path = meta.cgroups_path.clone();
            tokio::task::spawn_blocking(move || cgroups.remove_tree(&path, true))
                .await
                .map_err(|e| RuntimeError::Io {
                    context: "removing cgroups".into(),
                    source: io::Error::other(e),
                })?
                .map_err(io_err(format!("removing the cgroups of {id}")))?;
        }
        self.remove_state(&state).await
    }

    /// Unmounts everything under a state directory and deletes it.
    async fn remove_state(&self, state: &StateDir) -> Result<(), RuntimeError> {
        let dir = state.dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            if !dir.exists() {
                return Ok(());
            }
            for m in mounts::mounts_under(&dir).map_err(io_err("reading mountinfo"))? {
                mounts::unmount(&m).map_err(io_err(format!("unmounting {}", m.display())))?;
            }
            // Never delete through a mount: the lower layers are shared.
            if !mounts::mounts_under(&dir).map_err(io_err("reading mountinfo"))?.is_empty() {
                return Err(RuntimeError::Io {
                    context: format!("removing {}", dir.display()),
                    source: io::Error::other("something is still mounted below it"),
                });
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(format!("removing {}", dir.display()))(e)),
            }
        })
        .await
        .map_err(|e| RuntimeError::Io { context: "removing state".into(), source: io::Error::other(e) })?
    }

    /// Removes the pod's cgroup directory `<cgroup_parent>/<pod_id>` in every hierarchy
    /// (runc leaves it). Call after every container of the pod is removed; a non-empty cgroup
    /// is an error. Missing directories are fine.
    pub async fn remove_pod_cgroups(&self, pod_id: &str) -> Result<(), RuntimeError> {
        validate_id(pod_id)?;
        let cgroups = self.inner.cgroups.clone();
        let path = self.pod_cgroup_path(pod_id);
        tokio::task::spawn_blocking(move || cgroups.remove_empty(&path))
            .await
            .map_err(|e| RuntimeError::Io {
                context: "removing cgroups".into(),
                source: io::Error::other(e),
            })?
            .map_err(io_err(format!("removing the cgroups of pod {pod_id}")))
    }

    /// Every container we know: our state directories plus anything `runc list` shows, with
    /// the labels given at start.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut out: BTreeMap<String, ContainerInfo> = BTreeMap::new();
        let containers = self.inner.config.root.join("containers");
        let mut dir = tokio::fs::read_dir(&containers)
            .await
            .map_err(io_err(format!("reading {}", containers.display())))?;
        while let Some(entry) = dir.next_entry().await.map_err(io_err("reading the state directory"))? {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else { continue };
            if validate_id(&id).is_err() {
                continue;
            }
            let meta = read_json::<Meta>(&self.state(&id).meta()).ok().flatten();
            let status = self.status(&id).await.ok().flatten();
            out.insert(
                id.clone(),
                ContainerInfo {
                    id,
                    pod_id: meta.as_ref().map(|m| m.pod_id.clone()),
                    labels: meta.map(|m| m.labels).unwrap_or_default(),
                    status,
                    managed: true,
                },
            );
        }
        for entry in self.runc_list().await? {
            if out.contains_key(&entry.id) {
                continue;
            }
            let annotations = entry.annotations.unwrap_or_default();
            let started_at = entry.created.as_deref().map(parse_time).unwrap_or_else(Timestamp::now);
            let status = match entry.status.as_str() {
                "running" | "paused" => Some(ContainerStatus::Running { pid: entry.pid, started_at }),
                "created" | "creating" => Some(ContainerStatus::Creating),
                _ => None,
            };
            out.insert(
                entry.id.clone(),
                ContainerInfo {
                    id: entry.id,
                    pod_id: annotations.get(spec::POD_ID_ANNOTATION).cloned(),
                    labels: spec::labels_from_annotations(&annotations),
                    status,
                    managed: false,
                },
            );
        }
        Ok(out.into_values().collect())
    }

    /// Runs a process in a running container (`runc exec`), with piped stdio or, with
    /// [`ExecSpec::tty`], on a terminal (see [`tty`]).
    pub async fn exec(&self, id: &str, exec: &ExecSpec) -> Result<ExecProcess, RuntimeError> {
        if exec.args.is_empty() {
            return Err(RuntimeError::InvalidSpec("exec: no command".into()));
        }
        match self.status(id).await? {
            Some(ContainerStatus::Running { .. }) => {}
            None => return Err(RuntimeError::NotFound(id.to_string())),
            Some(_) => return Err(RuntimeError::NotRunning(id.to_string())),
        }
        let config = &self.inner.config;
        let mut cmd = Command::new(&config.runc);
        cmd.arg("--root").arg(&config.runc_root).arg("exec");
        for e in &exec.env {
            cmd.arg("--env").arg(e);
        }
        if exec.tty && !exec.env.iter().any(|e| e.starts_with("TERM=")) {
            cmd.arg("--env").arg(spec::DEFAULT_TERM);
        }
        if let Some(cwd) = &exec.cwd {
            cmd.arg("--cwd").arg(cwd);
        }
        if let Some((uid, gid)) = exec.user {
            cmd.arg("--user").arg(format!("{uid}:{gid}"));
        }
        if exec.tty {
            cmd.arg("--tty");
        }
        cmd.arg(id).args(&exec.args);
        if exec.tty {
            // runc is the terminal's only user: once it exits, reading the terminal ends.
            let (master, slave) = tty::open_pty().map_err(io_err("opening a pseudo-terminal"))?;
            let dup = |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(io_err("duplicating the terminal"));
            cmd.stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(slave);
            let child = cmd.spawn().map_err(io_err(format!("running {} exec", config.runc.display())))?;
            drop(cmd); // it holds our copies of the user side
            let runc = child.id().map(|pid| Pid::from_raw(pid as i32));
            let terminal = Terminal::new(master, runc).map_err(io_err("watching the terminal"))?;
            return Ok(ExecProcess {
                stdin: None,
                stdout: None,
                stderr: None,
                terminal: Some(terminal),
                child,
            });
        }
        cmd.stdin(if exec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err(format!("running {} exec", config.runc.display())))?;
        Ok(ExecProcess {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            terminal: None,
            child,
        })
    }

    /// Resizes the terminal of a container started with [`ContainerSpec::tty`] (its shim
    /// applies it).
    pub async fn resize(&self, id: &str, width: u16, height: u16) -> Result<(), RuntimeError> {
        if validate_id(id).is_err() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        match self.status(id).await? {
            None => return Err(RuntimeError::NotFound(id.to_string())),
            Some(ContainerStatus::Exited(_)) => return Err(RuntimeError::NotRunning(id.to_string())),
            Some(_) => {}
        }
        let fifo = self.state(id).resize();
        // Non-blocking: without a reader (no terminal, or the shim is gone) this fails at once.
        let opened = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(format!("{id} (or it has no terminal)")))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(RuntimeError::NotRunning(id.into()))
            }
            Err(e) => return Err(io_err(format!("opening the resize FIFO of {id}"))(e)),
        };
        // One short line: written whole (PIPE_BUF), never partly.
        use std::io::Write;
        f.write_all(format!("{width} {height}\n").as_bytes())
            .map_err(io_err(format!("resizing the terminal of {id}")))
    }

    /// Opens the container's stdin FIFO for writing (attach); see [`ContainerSpec::stdin`].
    /// Closing the file ends this writer's session (with `stdin_once`, the container's stdin).
    pub async fn open_stdin(&self, id: &str) -> Result<tokio::fs::File, RuntimeError> {
        let fifo = self.state(id).stdin();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            // Non-blocking, so a missing reader (the shim is gone) cannot hang us.
            let opened = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
            match opened {
                Ok(f) => {
                    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
                        .map_err(|e| io_err("making the stdin FIFO blocking")(e.into()))?;
                    return Ok(tokio::fs::File::from_std(f));
                }
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RuntimeError::NotFound(format!("{id} (or it has no stdin)")))
                }
                Err(e) => return Err(io_err(format!("opening the stdin of {id}"))(e)),
            }
        }
    }

    /// Kills and removes every container, mount and cgroup of this runtime (its state
    /// directories, runc's containers under `runc_root`, everything under `cgroup_parent`).
    pub async fn reset(&self) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for c in self.list().await? {
            let result = if c.managed { self.remove(&c.id).await } else { self.runc_delete(&c.id).await };
            if let Err(e) = result {
                tracing::warn!(id = %c.id, error = %e, "reset: removing container");
                first_error.get_or_insert(e);
            }
        }
        let root = self.inner.config.root.clone();
        let cgroups = self.inner.cgroups.clone();
        let parent = self.inner.config.cgroup_parent.clone();
        let cleanup = tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            for m in mounts::mounts_under(&root).map_err(io_err("reading mountinfo"))? {
                mounts::unmount(&m).map_err(io_err(format!("unmounting {}", m.display())))?;
            }
            let containers = root.join("containers");
            if mounts::mounts_under(&root).map_err(io_err("reading mountinfo"))?.is_empty() {
                match std::fs::remove_dir_all(&containers) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("removing {}", containers.display()))(e)),
                }
                std::fs::create_dir_all(&containers)
                    .map_err(io_err(format!("creating {}", containers.display())))?;
            }
            if parent.trim_matches('/').is_empty() {
                return Ok(()); // never remove the root cgroup
            }
            cgroups.remove_tree(&parent, true).map_err(io_err("removing cgroups"))
        })
        .await
        .map_err(|e| RuntimeError::Io { context: "reset".into(), source: io::Error::other(e) })?;
        if let Err(e) = cleanup {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn runc(&self, args: &[&str]) -> Result<std::process::Output, RuntimeError> {
        let config = &self.inner.config;
        let out = Command::new(&config.runc)
            .arg("--root")
            .arg(&config.runc_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err(format!("running {}", config.runc.display())))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(RuntimeError::Runc {
                op: args.first().copied().unwrap_or_default().to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    async fn runc_delete(&self, id: &str) -> Result<(), RuntimeError> {
        // runc keeps a container's state in `<root>/<id>`: without it there is nothing to
        // delete, and starting a container saves one runc execution (every start removes
        // a possible leftover first).
        if !self.inner.config.runc_root.join(id).exists() {
            return Ok(());
        }
        match self.runc(&["delete", "--force", id]).await {
            Ok(_) => Ok(()),
            Err(RuntimeError::Runc { message, .. }) if message.contains("does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn runc_list(&self) -> Result<Vec<RuncListEntry>, RuntimeError> {
        let out = self.runc(&["list", "--format", "json"]).await?;
        let parsed: Option<Vec<RuncListEntry>> = serde_json::from_slice(&out.stdout).map_err(|e| {
            RuntimeError::Runc { op: "list".into(), message: format!("unexpected output: {e}") }
        })?;
        Ok(parsed.unwrap_or_default())
    }
}

/// runc's rule for container ids, also keeping them safe as file names.
fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!("bad container id {id:?} (letters, digits, _ + - . only)")))
    }
}

fn parse_time(s: &str) -> Timestamp {
    s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A start that never got as far as the shim (the agent died or gave up in between): the
/// state directory is older than the start timeout.
fn start_abandoned(state: &StateDir) -> bool {
    let Some(meta) = read_json::<Meta>(&state.meta()).ok().flatten() else {
        // No meta.json: the agent died right after creating the directory.
        return std::fs::metadata(&state.dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > START_TIMEOUT + Duration::from_secs(5));
    };
    let created: Timestamp = parse_time(&meta.created_at);
    Timestamp::now().duration_since(created).as_secs()
        > (START_TIMEOUT + Duration::from_secs(5)).as_secs() as i64
}

fn shim_pid(state: &StateDir) -> Option<i32> {
    std::fs::read_to_string(state.shim_pid()).ok()?.trim().parse().ok()
}

/// Whether the shim of this state directory still runs (its pid is alive and its command
/// line names the state directory, so a reused pid does not count).
fn shim_alive(state: &StateDir) -> bool {
    let Some(pid) = shim_pid(state) else { return false };
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let dir = state.dir.as_os_str().as_encoded_bytes();
    let is_ours = cmdline.split(|b| *b == 0).any(|arg| arg == dir);
    // A zombie has an empty cmdline: it is not alive either.
    is_ours && process_alive(pid)
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // Zombies still accept signal 0; look at the state letter too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Mounts and unmounts a tiny overlay under `root` to prove overlayfs works there.
fn probe_overlay(root: &Path) -> Result<(), RuntimeError> {
    let probe = root.join(format!(".overlay-probe-{}", std::process::id()));
    let dirs = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    let result = (|| -> Result<(), String> {
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        mounts::mount_overlay(std::slice::from_ref(&dirs[0]), &dirs[1], &dirs[2], &dirs[3])?;
        mounts::unmount(&dirs[3]).map_err(|e| format!("unmounting the probe: {e}"))
    })();
    let _ = mounts::unmount(&dirs[3]);
    let _ = std::fs::remove_dir_all(&probe);
    result.map_err(|e| {
        RuntimeError::Unsupported(format!("overlayfs is not usable under {}: {e}", root.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons() {
        let base = ExitInfo {
            code: 0,
            signal: None,
            finished_at: Timestamp::UNIX_EPOCH,
            started_at: Some(Timestamp::UNIX_EPOCH),
            oom_killed: false,
            error: None,
        };
        assert_eq!(base.reason(), "Completed");
        assert_eq!(ExitInfo { code: 1, ..base.clone() }.reason(), "Error");
        assert_eq!(ExitInfo { code: 137, oom_killed: true, ..base.clone() }.reason(), "OOMKilled");
        assert_eq!(
            ExitInfo { code: 128, started_at: None, error: Some("x".into()), ..base }.reason(),
            "StartError"
        );
    }
}
