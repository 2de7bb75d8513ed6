//! The per-container state directory (`<root>/containers/<id>/`) shared by the runtime and
//! the shim, and the JSON records in it.
//!
//! | file | written by | content |
//! | --- | --- | --- |
//! | `meta.json` | runtime, before the shim starts | [`Meta`] |
//! | `bundle/config.json`, `bundle/rootfs/` | runtime | the OCI bundle; rootfs is the overlay mount |
//! | `upper/`, `work/` | runtime | overlay upper and work dirs |
//! | `shim.pid` | shim | the shim's pid |
//! | `shim.log` | shim (stderr) | the shim's own diagnostics |
//! | `runc.log` | runc (`--log`, JSON) | runc's errors for create/start |
//! | `init.pid` | runc (`--pid-file`) | the container's init pid |
//! | `started` | shim, once running | [`StartedRecord`] |
//! | `exit` | shim, after the init exited or the start failed | [`ExitRecord`] |
//! | `stdin` | shim | FIFO feeding the container's stdin (only with `stdin: true`) |
//! | `resize` | shim | FIFO of `<width> <height>` lines resizing the container's terminal (only with `tty: true`) |
//!
//! `started` and `exit` are written atomically (temporary file + rename), `exit` last of all.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Paths inside one container's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    /// The directory itself.
    pub dir: PathBuf,
}

impl StateDir {
    /// The state directory at `dir`.
    pub fn new(dir: PathBuf) -> StateDir {
        StateDir { dir }
    }
    /// `meta.json`.
    pub fn meta(&self) -> PathBuf {
        self.dir.join("meta.json")
    }
    /// The OCI bundle directory.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    /// The bundle's `config.json`.
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    /// The overlay mount point (the container's root filesystem).
    pub fn rootfs(&self) -> PathBuf {
        self.bundle().join("rootfs")
    }
    /// The overlay upper directory.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    /// The empty lower layer used when an image has no layers.
    pub fn empty_layer(&self) -> PathBuf {
        self.dir.join("empty")
    }
    /// `shim.pid`.
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    /// `shim.log`.
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    /// `runc.log`.
    pub fn runc_log(&self) -> PathBuf {
        self.dir.join("runc.log")
    }
    /// `init.pid`.
    pub fn init_pid(&self) -> PathBuf {
        self.dir.join("init.pid")
    }
    /// `started`.
    pub fn started(&self) -> PathBuf {
        self.dir.join("started")
    }
    /// `exit`.
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit")
    }
    /// The stdin FIFO.
    pub fn stdin(&self) -> PathBuf {
        self.dir.join("stdin")
    }
    /// The FIFO of terminal resizes (`<width> <height>` lines).
    pub fn resize(&self) -> PathBuf {
        self.dir.join("resize")
    }
}

/// What the runtime records about a container when creating it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// runc container id.
    pub id: String,
    /// The pod it belongs to.
    pub pod_id: String,
    /// Labels given at start.
    pub labels: BTreeMap<String, String>,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// Absolute cgroup path (`/capstan/<pod>/<id>`).
    pub cgroups_path: String,
    /// Signal number [`super::RuncRuntime::stop`] sends first (SIGTERM when absent).
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// When the runtime created it (RFC 3339).
    pub created_at: String,
}

/// The `started` file: the container's init is running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartedRecord {
    /// The init's pid (host pid namespace).
    pub pid: i32,
    /// RFC 3339 (nanoseconds, UTC).
    pub started_at: String,
}

/// The `exit` file: the container's init has exited, or the container failed to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// Exit status; 128 + signal for a signal death; 128 for a failed start.
    pub exit_code: i32,
    /// The signal that killed it.
    #[serde(default)]
    pub signal: Option<i32>,
    /// RFC 3339 (nanoseconds, UTC).
    pub finished_at: String,
    /// Whether the container's memory cgroup saw an OOM kill.
    #[serde(default)]
    pub oom_killed: bool,
    /// When it started, if it did.
    #[serde(default)]
    pub started_at: Option<String>,
    /// Why it could not start (runc's message), if it did not.
    #[serde(default)]
    pub error: Option<String>,
}

/// What the shim tells the runtime on its stdout once the container runs or failed to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimReport {
    /// The init pid, on success.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Start time, on success.
    #[serde(default)]
    pub started_at: Option<String>,
    /// runc's message, on failure.
    #[serde(default)]
    pub error: Option<String>,
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads a JSON record; `Ok(None)` if the file does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Now, as RFC 3339 with nanoseconds in UTC (Go's RFC3339Nano: trailing zeros trimmed).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
