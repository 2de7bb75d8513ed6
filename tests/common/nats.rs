//! A real `nats-server -js` on a free loopback port with its own store directory,
//! stopped by PID on drop; or, locked down, a server run from the configuration
//! `capstan bus-config` writes (TLS, one credential per role, subject permissions).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> String {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nats-server".to_string()
}

/// A running nats-server.
pub struct Nats {
    child: Option<Child>,
    /// The port.
    pub port: u16,
    store: PathBuf,
    dir: tempfile::TempDir,
    /// The `capstan bus-config` output directory of a locked-down server.
    locked: Option<PathBuf>,
}

impl Nats {
    /// Starts a server with JetStream.
    pub fn start() -> Nats {
        let dir = tempfile::Builder::new().prefix("capstan-nats-").tempdir().expect("temp dir");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let store = dir.path().join("js");
        let mut n = Nats { child: None, port, store, dir, locked: None };
        n.spawn();
        n
    }

    /// Starts a locked-down server: `capstan bus-config --out <tmp>/bus --data-dir
    /// <data_dir> --nodes <nodes>` writes the configuration and credentials (signed by the
    /// cluster CA under `<data_dir>/pki`), and nats-server runs with `-c nats.conf`.
    pub fn start_locked(data_dir: &std::path::Path, nodes: &[&str]) -> Nats {
        let dir = tempfile::Builder::new().prefix("capstan-nats-").tempdir().expect("temp dir");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let out = dir.path().join("bus");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_capstan"));
        cmd.args(["bus-config", "--out"]).arg(&out).arg("--data-dir").arg(data_dir);
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--integrators", "1"]);
        if !nodes.is_empty() {
            cmd.args(["--nodes", &nodes.join(",")]);
        }
        let res = cmd.env("CAPSTAN_LOG", "warn").output().expect("capstan bus-config runs");
        assert!(res.status.success(), "capstan bus-config failed: {}", String::from_utf8_lossy(&res.stderr));
        let store = out.join("jetstream");
        let mut n = Nats { child: None, port, store, dir, locked: Some(out) };
        n.spawn();
        n
    }

    /// The credential file of a role's identity (`gateway`, `node.a`, `integrator-1`) of a
    /// locked-down server.
    pub fn creds(&self, identity: &str) -> PathBuf {
        self.locked.as_ref().expect("a locked-down server").join(format!("{identity}.creds"))
    }

    /// The CA certificate clients of a locked-down server verify it with.
    pub fn ca(&self) -> PathBuf {
        self.locked.as_ref().expect("a locked-down server").join("ca.crt")
    }

    /// The `capstan bus-config` directory of a locked-down server.
    pub fn creds_dir(&self) -> Option<&std::path::Path> {
        self.locked.as_deref()
    }

    /// The `--nats ... --nats-creds ... --nats-ca ...` flags of a role with `identity`
    /// (only `--nats URL` for an open server).
    pub fn role_flags(&self, identity: &str) -> Vec<String> {
        let mut flags = vec!["--nats".to_string(), self.url()];
        if self.locked.is_some() {
            flags.push("--nats-creds".into());
            flags.push(self.creds(identity).to_string_lossy().into_owned());
            flags.push("--nats-ca".into());
            flags.push(self.ca().to_string_lossy().into_owned());
        }
        flags
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        match &self.locked {
            Some(out) => cmd.arg("-c").arg(out.join("nats.conf")),
            None => cmd.args(["-js", "-sd"]).arg(&self.store).args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ]),
        };
        let child = cmd
            .arg("-l")
            .arg(self.dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/deps.sh test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> &std::path::Path {
        &self.store
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Makes the server reload its configuration (SIGHUP by PID).
    pub fn reload(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-HUP", &c.id().to_string()]).status();
        }
    }

    /// Runs `capstan bus-config` again on a locked-down server's directory (keeping the
    /// credentials there) with extra flags.
    pub fn rerun_bus_config(&self, data_dir: &std::path::Path, extra: &[&str]) {
        let out = self.locked.as_ref().expect("a locked-down server");
        let res = Command::new(env!("CARGO_BIN_EXE_capstan"))
            .args(["bus-config", "--out"])
            .arg(out)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(extra)
            .env("CAPSTAN_LOG", "warn")
            .output()
            .expect("capstan bus-config runs");
        assert!(res.status.success(), "capstan bus-config failed: {}", String::from_utf8_lossy(&res.stderr));
    }

    /// `kill -9` of the server (by PID), waiting for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again, on the same port and store, after [`Nats::kill9`] or
    /// [`Nats::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Nats {
    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster of nats-servers with JetStream on loopback: each has its own client port,
/// route port, store directory and name (`n1`, `n2`, …), routes to all the others, and is
/// stopped by PID on drop.
pub struct NatsCluster {
    servers: Vec<Option<Child>>,
    /// Client ports, in server order.
    pub ports: Vec<u16>,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("free port").port()
}

impl NatsCluster {
    /// Starts `n` servers and waits until each listens for clients.
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::Builder::new().prefix("capstan-natscluster-").tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let others: Vec<String> =
                (0..n).filter(|j| *j != i).map(|j| format!("nats-route://127.0.0.1:{}", routes[j])).collect();
            let store = dir.path().join(format!("n{}", i + 1));
            let conf = format!(
                "server_name: n{name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{ name: capstan, listen: 127.0.0.1:{route}, routes: [{others}] }}\n",
                name = i + 1,
                port = ports[i],
                store = store.display(),
                route = routes[i],
                others = others.join(", "),
            );
            let path = dir.path().join(format!("n{}.conf", i + 1));
            std::fs::write(&path, conf).expect("write nats config");
            let child = Command::new(binary())
                .arg("-c")
                .arg(&path)
                .arg("-l")
                .arg(dir.path().join(format!("n{}.log", i + 1)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is installed (scripts/deps.sh test installs it)");
            servers.push(Some(child));
        }
        for port in &ports {
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).is_err() {
                assert!(Instant::now() < deadline, "nats-server on {port} did not start listening");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        NatsCluster { servers, ports, dir }
    }

    /// The client URL of server `i` (0-based).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i])
    }

    /// Every server's client URL, comma-separated (as `--nats` takes them).
    pub fn urls(&self) -> String {
        (0..self.ports.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// `kill -9` of server `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Server `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{}.log", i + 1))).unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}
