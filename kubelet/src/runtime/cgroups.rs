//! cgroup hierarchies (v1, hybrid or unified v2): where a container's cgroup lives, its OOM
//! counter, and removing the directories runc leaves behind.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::mounts::{mount_table, MountEntry};

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount_point: PathBuf,
    /// Its v1 controllers (`["cpu", "cpuacct"]`), named hierarchies as `name=systemd`; empty
    /// for cgroup v2.
    pub controllers: Vec<String>,
    /// Whether this is the cgroup v2 hierarchy.
    pub v2: bool,
}

/// The cgroup hierarchies of this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// Every cgroup (v1 and v2) mount, first mount of each hierarchy only.
    pub all: Vec<Hierarchy>,
}

impl Hierarchies {
    /// Reads the hierarchies from `/proc/self/mountinfo`.
    pub fn discover() -> io::Result<Hierarchies> {
        Ok(Self::from_mounts(&mount_table()?))
    }

    /// Hierarchies among `mounts`.
    pub fn from_mounts(mounts: &[MountEntry]) -> Hierarchies {
        let mut all: Vec<Hierarchy> = Vec::new();
        for m in mounts {
            let h = match m.fs_type.as_str() {
                "cgroup" => Hierarchy {
                    mount_point: m.mount_point.clone(),
                    controllers: m
                        .super_options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
                        .filter(|o| !o.starts_with("release_agent") && *o != "clone_children")
                        .filter(|o| *o != "noprefix" && *o != "xattr" && *o != "cpuset_v2_mode")
                        .map(str::to_string)
                        .collect(),
                    v2: false,
                },
                "cgroup2" => Hierarchy { mount_point: m.mount_point.clone(), controllers: vec![], v2: true },
                _ => continue,
            };
            // The same hierarchy may be mounted twice (bind mounts); keep the first.
            if !all.iter().any(|o| o.v2 == h.v2 && o.controllers == h.controllers) {
                all.push(h);
            }
        }
        Hierarchies { all }
    }

    /// Whether the machine is in pure cgroup v2 ("unified") mode.
    pub fn unified(&self) -> bool {
        !self.all.is_empty() && self.all.iter().all(|h| h.v2)
    }

    /// The v1 hierarchy holding `controller`, or the v2 hierarchy in unified mode.
    pub fn for_controller(&self, controller: &str) -> Option<&Hierarchy> {
        if self.unified() {
            return self.all.first();
        }
        self.all.iter().find(|h| !h.v2 && h.controllers.iter().any(|c| c == controller))
    }

    /// The directory of cgroup `path` (absolute, e.g. `/capstan/pod/ctr`) for `controller`.
    pub fn dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        Some(join(&self.for_controller(controller)?.mount_point, path))
    }

    /// Controllers the runtime needs that are missing, by name.
    pub fn missing_controllers(&self) -> Vec<&'static str> {
        if self.unified() {
            return vec![];
        }
        ["memory", "cpu", "pids"].into_iter().filter(|c| self.for_controller(c).is_none()).collect()
    }

    /// The file whose `oom_kill` counter tells whether cgroup `path` saw an OOM kill:
    /// `memory.oom_control` on v1, `memory.events` on v2.
    pub fn oom_file(&self, path: &str) -> Option<PathBuf> {
        let dir = self.dir("memory", path)?;
        Some(dir.join(if self.unified() { "memory.events" } else { "memory.oom_control" }))
    }

    /// The directory of cgroup `path` in every hierarchy (whether or not it exists).
    pub fn dirs(&self, path: &str) -> Vec<PathBuf> {
        self.all.iter().map(|h| join(&h.mount_point, path)).collect()
    }

    /// Removes cgroup `path` and everything below it in every hierarchy. With `kill`, the
    /// processes still in them are SIGKILLed first; without, a busy cgroup is an error.
    /// Missing directories are fine.
    pub fn remove_tree(&self, path: &str, kill_processes: bool) -> io::Result<()> {
        let mut first_error = None;
        for dir in self.dirs(path) {
            if let Err(e) = remove_dir_tree(&dir, kill_processes) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes cgroup `path` in every hierarchy if it has no processes and no children
    /// (rmdir semantics). Missing directories are fine; a busy one is an error.
    pub fn remove_empty(&self, path: &str) -> io::Result<()> {
        let mut first_error = None;
        for dir in self.dirs(path) {
            if let Err(e) = rmdir_retrying(&dir, Duration::from_millis(500)) {
                first_error.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("removing cgroup {}: {e}", dir.display()),
                ));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn join(mount_point: &Path, path: &str) -> PathBuf {
    mount_point.join(path.trim_start_matches('/'))
}

/// The `oom_kill` counter in a `memory.oom_control` / `memory.events` file, if readable.
pub fn read_oom_kills(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_oom_kills(&text)
}

/// The `oom_kill N` counter in the text of `memory.oom_control` / `memory.events`.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
}

/// rmdir, retrying for up to `patience` while the cgroup is busy (its last processes may
/// still be exiting). A missing directory is fine.
fn rmdir_retrying(dir: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

fn remove_dir_tree(dir: &Path, kill_processes: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_dir_tree(&entry.path(), kill_processes)?;
        }
    }
    if kill_processes {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    rmdir_retrying(dir, Duration::from_secs(if kill_processes { 5 } else { 1 }))
        .map_err(|e| io::Error::new(e.kind(), format!("removing cgroup {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::super::mounts::parse_mountinfo;
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hierarchies() {
        let h = Hierarchies::from_mounts(&parse_mountinfo(HYBRID));
        assert_eq!(h.all.len(), 6);
        assert!(!h.unified());
        assert!(h.missing_controllers().is_empty());
        assert_eq!(h.dir("cpu", "/capstan/p/c"), Some(PathBuf::from("/sys/fs/cgroup/cpu/capstan/p/c")));
        assert_eq!(h.all[4].controllers, vec!["name=systemd".to_string()]);
        assert_eq!(
            h.oom_file("/capstan/p/c"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/capstan/p/c/memory.oom_control"))
        );
        assert_eq!(h.dirs("/x").len(), 6);
    }

    #[test]
    fn unified_hierarchy() {
        let h = Hierarchies::from_mounts(&parse_mountinfo(
            "30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        ));
        assert!(h.unified());
        assert_eq!(h.oom_file("/a"), Some(PathBuf::from("/sys/fs/cgroup/a/memory.events")));
    }

    #[test]
    fn oom_counter() {
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"), Some(2));
        assert_eq!(parse_oom_kills("low 0\nhigh 0\nmax 1\noom 1\noom_kill 1\n"), Some(1));
        assert_eq!(parse_oom_kills("nothing\n"), None);
    }
}
