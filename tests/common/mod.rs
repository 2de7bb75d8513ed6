//! Test harness: starts the real `capstan` binary on a free loopback port with its own
//! data directory, drives the real `kubectl` against it, and stops it by PID on drop.
//! A cluster is either `capstan up` (every role in one process on the in-process bus) or
//! each role in its own process over a real nats-server ([`Cluster::start_multiprocess`]);
//! [`Mode`] picks one, so a scenario runs unchanged in both.

#![allow(dead_code)]

pub mod https;
pub mod nats;
pub mod podwatch;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
/// A client binary that `scripts/deps.sh test` fetched (`kubectl-1.35`, `helm`), from
/// `$CAPSTAN_CLIENTS` or `~/.cache/capstan/clients`.
pub fn client(name: &str) -> PathBuf {
    let dir = std::env::var_os("CAPSTAN_CLIENTS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("capstan/clients")
    });
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: `bash scripts/deps.sh test` fetches it", p.display());
    p
}

pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Reads the child's stdout (in a thread that keeps draining it) until `pick` accepts a
/// line; panics after 60 s.
fn await_line(
    child: &mut Child,
    what: &str,
    pick: impl Fn(&str) -> Option<String> + Send + 'static,
) -> String {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(v) = pick(&line) {
                let _ = tx.send(v);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("timed out after 60 s waiting for {what}"))
}

/// The kubectl tests run: Debian's, or the one `CAPSTAN_TEST_KUBECTL` names (a path, or a
/// [`client`] such as `kubectl-1.35`).
pub fn kubectl_program() -> PathBuf {
    match std::env::var("CAPSTAN_TEST_KUBECTL") {
        Ok(p) if p.contains('/') => PathBuf::from(p),
        Ok(p) if !p.is_empty() && p != "kubectl" => client(&p),
        _ => PathBuf::from("kubectl"),
    }
}

/// A number in 0..250 no other process on this host holds: each real-node cluster's bridge
/// (`cpt<n>`), pod CIDR and DNS address derive from it, and a node agent removes pod networks
/// of its own bridge it does not know, so two test processes (or two worktrees' suites) must
/// never share one. Held by an advisory file lock, released when the process ends.
fn node_slot() -> (u32, std::fs::File) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() * 7 + N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for i in 0..250 {
        let n = (start + i) % 250;
        let path = std::env::temp_dir().join(format!("capstan-test-node-slot-{n}.lock"));
        let Ok(f) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
            continue;
        };
        if f.try_lock().is_ok() {
            return (n, f);
        }
    }
    panic!("no free node slot: 250 real-node test clusters at once?");
}

/// A running `capstan up`.
pub struct Cluster {
    child: Option<Child>,
    /// Data directory (kept across restarts).
    pub dir: tempfile::TempDir,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API server URL.
    pub url: String,
    listen: String,
    extra: Vec<String>,
    /// `up` or `gateway`.
    role: &'static str,
    /// Extra environment of the server process.
    envs: Vec<(String, String)>,
    /// The config file of a cluster with a real node (reset on drop).
    node_config: Option<PathBuf>,
    /// The real-node slot lock (see [`node_slot`]), held while the cluster lives.
    _slot: Option<std::fs::File>,
    /// The other roles of a multi-process cluster (stopped on drop, before the gateway).
    roles: Vec<Role>,
    /// The nats-server of a multi-process cluster (stopped on drop, last).
    nats: Option<nats::Nats>,
    /// Where the server's stderr goes on the next (re)start, instead of the test's own.
    stderr_log: Option<PathBuf>,
    /// Fails the test if it hangs (see [`Watchdog`]); dropped last.
    _watchdog: Watchdog,
}

/// Turns a hanging test into a failing one: when the test that started a cluster has not
/// finished within `CAPSTAN_TEST_TIMEOUT_SECONDS` (default 900), it says which test, kills
/// the test binary's child processes (capstan, nats-server, kubectl) and aborts the test
/// binary, so the run fails instead of eating CI's time.
pub struct Watchdog(std::sync::mpsc::Sender<()>);

impl Watchdog {
    /// Starts watching the current test.
    pub fn start() -> Watchdog {
        let limit = std::env::var("CAPSTAN_TEST_TIMEOUT_SECONDS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(900);
        let test = std::thread::current().name().unwrap_or("a test").to_string();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            // A message never comes: the sender's drop (the test ended) disconnects.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                rx.recv_timeout(Duration::from_secs(limit))
            {
                // Straight to the stream: the test harness would keep (and lose) an eprintln.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{test} is still running after {limit} s (CAPSTAN_TEST_TIMEOUT_SECONDS): \
                     failing the run by aborting this test binary"
                );
                kill_children();
                std::process::abort();
            }
        });
        Watchdog(tx)
    }
}

/// SIGTERM to `child`, then its exit status within `within`, or `None` (then SIGKILL).
fn terminate(child: &mut Option<Child>, within: Duration) -> Option<std::process::ExitStatus> {
    let mut c = child.take()?;
    let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = c.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a process's exit
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

/// The pod `name` as JSON, if kubectl can get it.
pub fn try_pod(c: &Cluster, name: &str) -> Option<serde_json::Value> {
    let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

/// Whether a pod's Ready condition is True.
pub fn is_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Waits until the pod is Running and Ready; on timeout, fails with `kubectl describe`.
pub fn wait_running(c: &Cluster, name: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(p) = try_pod(c, name).filter(|p| p["status"]["phase"] == "Running" && is_ready(p)) {
            return p;
        }
        if std::time::Instant::now() > deadline {
            let d = c.kubectl(&["describe", "pod", name]);
            panic!("pod {name} not Running and Ready after 60 s:\n{}", String::from_utf8_lossy(&d.stdout));
        }
        std::thread::sleep(Duration::from_millis(50)); // polling the pod's status
    }
}

/// SIGKILLs this process's direct children.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    }
}

/// Where the roles of a test cluster run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `capstan up --sim-nodes N`: every role in one process, on the in-process bus.
    InProcess,
    /// `capstan gateway`, `controllers`, `scheduler` and `sim-nodes`, each its own
    /// process, over a real nats-server.
    Nats,
    /// As [`Mode::Nats`], over a nats-server locked down by `capstan bus-config` (TLS,
    /// each role with its own credential and subject permissions).
    LockedNats,
}

impl Mode {
    /// A cluster with `sim_nodes` simulated nodes (none when 0) and extra environment
    /// for every capstan process (e.g. `CAPSTAN_NODE_GRACE_SECONDS`).
    pub fn cluster(self, sim_nodes: usize, envs: &[(&str, &str)]) -> Cluster {
        match self {
            Mode::InProcess if sim_nodes == 0 => Cluster::start_env(&[], envs),
            Mode::InProcess => Cluster::start_env(&["--sim-nodes", &sim_nodes.to_string()], envs),
            Mode::Nats => Cluster::start_multiprocess(sim_nodes, envs),
            Mode::LockedNats => Cluster::start_multiprocess_locked(sim_nodes, envs),
        }
    }
}

impl Cluster {
    /// Starts a cluster on a free port.
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// Starts a cluster with extra `capstan up` flags (e.g. `--sim-nodes 3`).
    pub fn start_with(extra: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted("up", extra, &[]);
        c.spawn();
        c
    }

    /// Starts a cluster whose data directory is made inside `parent` (e.g. a small file
    /// system the test mounted), with extra `capstan up` flags.
    pub fn start_in(parent: &Path, extra: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted("up", extra, &[]);
        c.dir = tempfile::Builder::new().prefix("capstan-test-").tempdir_in(parent).expect("create data dir");
        c.kubeconfig = c.dir.path().join("admin.kubeconfig");
        c.spawn();
        c
    }

    /// Sends the server's stderr to `path` (a new file) from the next (re)start on; `None`
    /// gives it back to the test's stderr.
    pub fn log_to(&mut self, path: Option<&Path>) {
        self.stderr_log = path.map(Path::to_path_buf);
    }

    /// A cluster of `role` (`up` or `gateway`) in a new data directory, not started yet.
    fn unstarted(role: &'static str, extra: &[&str], envs: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::Builder::new().prefix("capstan-test-").tempdir().expect("create temp dir");
        Cluster {
            child: None,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            role,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node_config: None,
            _slot: None,
            roles: Vec::new(),
            nats: None,
            stderr_log: None,
            _watchdog: Watchdog::start(),
        }
    }

    /// Starts `capstan up` with its real node (runc containers), configured by the YAML
    /// `node:` section given (a unique bridge, pod CIDR and cgroup parent are added, and,
    /// unless the section has its own `dns:`, a unique cluster DNS address on its own
    /// interface, so several such clusters can run at once). The node's containers,
    /// networks, mounts and DNS address are removed on drop with `capstan node-reset`.
    pub fn start_node(node_yaml: &str) -> Cluster {
        Cluster::node_cluster(node_yaml, false)
    }

    /// As [`Cluster::start_node`], over a nats-server locked down by `capstan bus-config`:
    /// `capstan up --nats URL --nats-creds-dir DIR`, so the node agent (`node-1`) connects
    /// with its own node credential.
    pub fn start_node_locked(node_yaml: &str) -> Cluster {
        Cluster::node_cluster(node_yaml, true)
    }

    fn node_cluster(node_yaml: &str, locked: bool) -> Cluster {
        // `slot` keeps the number this cluster's bridge, pod CIDR and DNS address use for as
        // long as the test process lives.
        let (n, slot) = node_slot();
        let dir = tempfile::Builder::new().prefix("capstan-test-").tempdir().expect("create temp dir");
        let mut yaml = format!(
            "node:\n  name: node-1\n  bridge: cpt{n}\n  podCIDR: 10.123.{n}.0/24\n  cgroupParent: /capstan-test-{}-{n}\n",
            std::process::id()
        );
        if !node_yaml.lines().any(|l| l.starts_with("dns:")) {
            yaml.push_str(&format!("  dns:\n    address: 10.253.{n}.10\n    interface: cptdns{n}\n"));
        }
        for line in node_yaml.lines().filter(|l| !l.trim().is_empty()) {
            yaml.push_str(&format!("  {line}\n"));
        }
        let config = dir.path().join("capstan.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let mut c = Cluster {
            child: None,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir,
            url: String::new(),
            listen: "127.0.0.1:0".into(),
            extra: vec!["--config".into(), config.to_string_lossy().into_owned()],
            role: "up",
            envs: vec![("CAPSTAN_NO_NODE".into(), "false".into())],
            node_config: Some(config),
            _slot: Some(slot),
            roles: Vec::new(),
            nats: None,
            stderr_log: None,
            _watchdog: Watchdog::start(),
        };
        if locked {
            let nats = nats::Nats::start_locked(c.path(), &["node-1"]);
            let dir = nats.creds_dir().expect("locked").to_string_lossy().into_owned();
            c.extra.extend(["--nats".into(), nats.url(), "--nats-creds-dir".into(), dir]);
            c.nats = Some(nats);
        }
        c.spawn();
        c
    }

    /// Starts `capstan up` with extra flags and extra environment variables for the server
    /// process (e.g. `CAPSTAN_NODE_GRACE_SECONDS`).
    pub fn start_env(extra: &[&str], envs: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::unstarted("up", extra, envs);
        c.spawn();
        c
    }

    /// Starts each role in its own process over a new nats-server: `capstan gateway
    /// --nats` (whose URL and kubeconfig this Cluster serves), `capstan controllers`,
    /// `capstan scheduler` and, when `sim_nodes` > 0, `capstan sim-nodes --count N`. Every
    /// process gets `envs`, as `capstan up` does: the gateway reads
    /// `CAPSTAN_DEFAULT_TOLERATION_SECONDS` (admission), the controllers (node lifecycle)
    /// and sim-nodes (lease renewal) read `CAPSTAN_NODE_GRACE_SECONDS`. All are stopped by
    /// PID on drop; `restart`/`kill9` act on the gateway only.
    pub fn start_multiprocess(sim_nodes: usize, envs: &[(&str, &str)]) -> Cluster {
        Cluster::multiprocess(sim_nodes, envs, false)
    }

    /// As [`Cluster::start_multiprocess`], over a nats-server locked down by `capstan
    /// bus-config` (its CA is the cluster's, under the gateway's data directory): each role
    /// connects over TLS with its own credential (`--nats-creds`, `--nats-ca`).
    pub fn start_multiprocess_locked(sim_nodes: usize, envs: &[(&str, &str)]) -> Cluster {
        Cluster::multiprocess(sim_nodes, envs, true)
    }

    /// As [`Cluster::start_multiprocess_locked`], with credentials for `nodes` too (for
    /// tests that act as those nodes: [`nats::Nats::creds`] `("node.<name>")`).
    pub fn start_multiprocess_locked_with_nodes(
        sim_nodes: usize,
        envs: &[(&str, &str)],
        nodes: &[&str],
    ) -> Cluster {
        Cluster::multiprocess_with(sim_nodes, envs, Some(nodes))
    }

    /// Starts `capstan up --nats URL --nats-creds-dir DIR` (no real node) over a nats-server
    /// locked down by `capstan bus-config` with credentials for `nodes` too: every role in
    /// the process connects with its own credential.
    pub fn start_up_locked(nodes: &[&str], envs: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::unstarted("up", &[], envs);
        let nats = nats::Nats::start_locked(c.path(), nodes);
        let dir = nats.creds_dir().expect("locked").to_string_lossy().into_owned();
        c.extra = vec!["--nats".into(), nats.url(), "--nats-creds-dir".into(), dir];
        c.spawn();
        c.nats = Some(nats);
        c
    }

    fn multiprocess(sim_nodes: usize, envs: &[(&str, &str)], locked: bool) -> Cluster {
        Cluster::multiprocess_with(sim_nodes, envs, locked.then_some(&[][..]))
    }

    fn multiprocess_with(sim_nodes: usize, envs: &[(&str, &str)], locked: Option<&[&str]>) -> Cluster {
        let mut c = Cluster::unstarted("gateway", &[], envs);
        let nats = match locked {
            Some(nodes) => nats::Nats::start_locked(c.path(), nodes),
            None => nats::Nats::start(),
        };
        c.extra = nats.role_flags("gateway");
        c.spawn();
        let role = |args: &[&str], identity: &str| {
            let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            a.extend(nats.role_flags(identity));
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            Role::start_env(&a, envs)
        };
        c.roles.push(role(&["controllers"], "controllers"));
        c.roles.push(role(&["scheduler"], "scheduler"));
        if sim_nodes > 0 {
            let count = sim_nodes.to_string();
            c.roles.push(role(&["sim-nodes", "--count", &count], "sim-nodes"));
        }
        c.nats = Some(nats);
        c
    }

    /// The other roles of a multi-process cluster (controllers, scheduler, sim-nodes).
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The same, to stop or restart them.
    pub fn roles_mut(&mut self) -> &mut [Role] {
        &mut self.roles
    }

    /// The nats-server of a multi-process cluster.
    pub fn nats(&self) -> Option<&nats::Nats> {
        self.nats.as_ref()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args([self.role, "--data-dir"])
            .arg(self.dir.path())
            .args(["--listen", &self.listen])
            .args(&self.extra)
            .env("CAPSTAN_LOG", "warn")
            // Tests run simulated nodes unless they ask for the real one (start_node).
            .env("CAPSTAN_NO_NODE", "true")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(match &self.stderr_log {
                Some(p) => Stdio::from(std::fs::File::create(p).expect("create the server log")),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("spawn capstan up");
        let url = await_line(&mut child, "capstan to become ready", |line| {
            let ready = line
                .strip_prefix("capstan is ready at ")
                .or_else(|| line.strip_prefix("capstan gateway listening on "))?;
            Some(ready.split_whitespace().next().unwrap_or("").to_string())
        });
        // Later restarts reuse the same port so the kubeconfig stays valid.
        self.listen = url.trim_start_matches("https://").to_string();
        self.url = url;
        self.child = Some(child);
    }

    /// Starts `capstan gateway` alone (redb store in its data dir) with extra flags,
    /// e.g. `--nats URL`.
    pub fn start_gateway(extra: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted("gateway", extra, &[]);
        c.spawn();
        c
    }

    /// The PID of the server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// `kill -9` the server and wait for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends SIGTERM to the server and waits up to `within` for it to exit; its exit
    /// status, or `None` when it was still running (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, within)
    }

    /// Starts the server again after [`Cluster::terminate`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Runs kubectl against the cluster with its own discovery cache.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, &[], None)
    }

    /// Runs kubectl with extra environment and optional stdin. The kubectl is Debian's,
    /// or the one `CAPSTAN_TEST_KUBECTL` names (a path, or a [`client`] such as
    /// `kubectl-1.35`), so a whole test file can run under another kubectl.
    pub fn kubectl_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        self.kubectl_as(&kubectl_program(), args, env, stdin)
    }

    /// Runs the kubectl binary `program` (e.g. [`client`]`("kubectl-1.35")`) with its own
    /// discovery cache, extra environment and optional stdin.
    pub fn kubectl_as(
        &self,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Output {
        let mut cmd = Command::new(program);
        let cache = program.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache").join(cache))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("kubectl is installed");
        if let Some(input) = stdin {
            use std::io::Write;
            let mut s = child.stdin.take().expect("stdin");
            s.write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl runs")
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} unexpectedly succeeded:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes a file in the data directory and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write file");
        p
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The same, to kill and restart it.
    pub fn nats_mut(&mut self) -> Option<&mut nats::Nats> {
        self.nats.as_mut()
    }

    /// The NATS URL of a multi-process cluster.
    pub fn nats_url(&self) -> Option<String> {
        self.nats.as_ref().map(|n| n.url())
    }
}

/// Another capstan process (controllers, scheduler, sim-nodes), killed on drop.
pub struct Role {
    child: Option<Child>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Where it serves metrics (`--metrics-addr` / `CAPSTAN_METRICS_ADDR`), once said.
    metrics: Option<String>,
}

impl Role {
    /// Starts `capstan <args>` and waits for its `running` line on stdout.
    pub fn start(args: &[&str]) -> Role {
        Role::start_env(args, &[])
    }

    /// Starts `capstan <args>` with extra environment variables.
    pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Role {
        let mut r = Role {
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            metrics: None,
        };
        r.spawn();
        r
    }

    /// The URL of its `/metrics`, when it serves them.
    pub fn metrics_url(&self) -> Option<&str> {
        self.metrics.as_deref()
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(&self.args)
            .env("CAPSTAN_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn capstan role");
        // The metrics line comes before the `running` one.
        let metrics = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = metrics.clone();
        await_line(&mut child, "the capstan role to start", move |line| {
            if let Some((_, url)) = line.split_once(" metrics at ") {
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(url.trim().to_string());
            }
            line.contains("running").then_some(String::new())
        });
        self.metrics = metrics.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.child = Some(child);
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then up to `within` for it to exit (see [`Cluster::terminate`]).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate(&mut self.child, within)
    }

    /// Whether the process has exited (e.g. a scheduler or controller pool member that lost
    /// its leader lease exits, as upstream's, for its supervisor to start it again).
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The other roles first, so none is left talking to a gone gateway; NATS last.
        self.roles.clear();
        self.stop();
        self.nats = None;
        if let Some(config) = &self.node_config {
            let out = Command::new(env!("CARGO_BIN_EXE_capstan"))
                .args(["node-reset", "--data-dir"])
                .arg(self.dir.path())
                .arg("--config")
                .arg(config)
                .env("CAPSTAN_LOG", "warn")
                .output();
            if let Some(o) = out.ok().filter(|o| !o.status.success()) {
                eprintln!("capstan node-reset failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

impl Cluster {
    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Ask politely, then force.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}
