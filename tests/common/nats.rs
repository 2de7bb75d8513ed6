//! A real `nats-server -js` on a free loopback port with its own store directory,
//! stopped by PID on drop.

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
        let mut n = Nats { child: None, port, store, dir };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new(binary())
            .args(["-js", "-sd"])
            .arg(&self.store)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-l"])
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

    /// The client URL.
    /// The JetStream store directory.
    pub fn store_dir(&self) -> &std::path::Path {
        &self.store
    }

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

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
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
