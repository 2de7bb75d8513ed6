//! A container's security settings as the runtime takes them (what CRI's
//! `LinuxContainerSecurityContext` carries), and how they become OCI fields, as containerd
//! makes them: capabilities, `no_new_privs`, seccomp, a read-only root, masked and read-only
//! `/proc` paths, sysctls, and privileged mode.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Capability, LinuxDevice, LinuxDeviceType};

/// Which seccomp profile a container runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SeccompProfile {
    /// No filter.
    #[default]
    Unconfined,
    /// The runtime's default profile ([`super::seccomp::default_profile`]).
    RuntimeDefault,
    /// An OCI seccomp profile (JSON) in this file.
    Localhost(PathBuf),
}

/// The security settings of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    /// Privileged: every capability the agent has, the host's devices, no seccomp, no
    /// masked or read-only paths, writable `/sys` and cgroupfs.
    pub privileged: bool,
    /// Capabilities added to the default set (`NET_ADMIN` or `CAP_NET_ADMIN`; `ALL`).
    pub add_capabilities: Vec<String>,
    /// Capabilities dropped from it (`ALL` drops every one; applied after `ALL` in add).
    pub drop_capabilities: Vec<String>,
    /// Set `no_new_privs` (`allowPrivilegeEscalation: false`).
    pub no_new_privs: bool,
    /// The seccomp profile (ignored when privileged).
    pub seccomp: SeccompProfile,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Paths masked in the container (ignored when privileged).
    pub masked_paths: Vec<String>,
    /// Paths made read-only in the container (ignored when privileged).
    pub readonly_paths: Vec<String>,
    /// Namespaced sysctls set in the container's namespaces.
    pub sysctls: BTreeMap<String, String>,
}

/// The masked paths of a container with `procMount: Default` (upstream's list, kept in
/// sync with moby's).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The read-only paths of a container with `procMount: Default`.
pub const DEFAULT_READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

impl Default for Security {
    /// containerd's defaults: the default capabilities, no `no_new_privs`, unconfined, the
    /// default masked and read-only paths.
    fn default() -> Security {
        Security {
            privileged: false,
            add_capabilities: Vec::new(),
            drop_capabilities: Vec::new(),
            no_new_privs: false,
            seccomp: SeccompProfile::Unconfined,
            readonly_rootfs: false,
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()).collect(),
            sysctls: BTreeMap::new(),
        }
    }
}

/// Every capability Linux numbers, by number (`CAP_CHOWN` is 0).
pub const CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// containerd's (and Docker's) default capability set: 14 capabilities, `CapEff`
/// `00000000a80425fb` for root.
pub fn default_capabilities() -> Capabilities {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// The capabilities in a `/proc/<pid>/status` mask (`CapEff: 000001ffffffffff`).
pub fn capabilities_from_mask(mask: u64) -> Capabilities {
    CAPABILITIES.iter().enumerate().filter(|(bit, _)| mask & (1u64 << bit) != 0).map(|(_, c)| *c).collect()
}

/// The mask of a set of capabilities (as `/proc/<pid>/status` shows it).
pub fn capability_mask(caps: &Capabilities) -> u64 {
    CAPABILITIES.iter().enumerate().filter(|(_, c)| caps.contains(c)).fold(0, |m, (bit, _)| m | (1u64 << bit))
}

/// The capabilities this process has (`CapEff`): what a privileged container gets, as
/// containerd gives it its own current set.
pub fn current_capabilities() -> Capabilities {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    capabilities_from_mask(mask)
}

/// A Kubernetes capability name (`NET_ADMIN`, `CAP_NET_ADMIN`, any case) as a capability.
pub fn parse_capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The bounding (= effective = permitted) set: the default set, or all of `all` when
/// privileged; then `ALL` in add (all of `all`), `ALL` in drop (none), then the named
/// additions and drops, as containerd applies them. An unknown name to add is an error;
/// an unknown name to drop is ignored (there is nothing to drop).
pub fn capabilities(sec: &Security, all: &Capabilities) -> Result<Capabilities, String> {
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let mut caps = if sec.privileged { all.clone() } else { default_capabilities() };
    if sec.add_capabilities.iter().any(is_all) {
        caps = all.clone();
    }
    if sec.drop_capabilities.iter().any(is_all) {
        caps = HashSet::new();
    }
    for name in sec.add_capabilities.iter().filter(|c| !is_all(c)) {
        caps.insert(parse_capability(name).ok_or_else(|| format!("unknown capability {name:?} to add"))?);
    }
    for name in sec.drop_capabilities.iter().filter(|c| !is_all(c)) {
        if let Some(c) = parse_capability(name) {
            caps.remove(&c);
        }
    }
    // Privileged containers keep every capability (containerd applies privileged last).
    if sec.privileged {
        caps = all.clone();
    }
    Ok(caps)
}

/// The host's device nodes under `/dev` (as containerd's `HostDevices`: `pts`, `shm`,
/// `fd`, `mqueue` and a few runtime directories skipped, `console` skipped, FIFOs
/// skipped), for a privileged container.
pub fn host_devices() -> Result<Vec<LinuxDevice>, String> {
    let mut out = Vec::new();
    walk_devices(Path::new("/dev"), &mut out)?;
    Ok(out)
}

fn walk_devices(dir: &Path, out: &mut Vec<LinuxDevice>) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let entries = std::fs::read_dir(dir).map_err(|e| format!("failed to read {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let ft = meta.file_type();
        if ft.is_dir() {
            if !matches!(name.as_ref(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev") {
                walk_devices(&path, out)?;
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let mut dev = LinuxDevice::default();
        dev.set_path(path);
        dev.set_typ(typ);
        dev.set_major(libc::major(rdev) as i64);
        dev.set_minor(libc::minor(rdev) as i64);
        dev.set_file_mode(Some(meta.mode() & 0o7777));
        dev.set_uid(Some(meta.uid()));
        dev.set_gid(Some(meta.gid()));
        out.push(dev);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec(add: &[&str], drop: &[&str]) -> Security {
        Security {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn capability_sets() {
        let all = capabilities_from_mask(0x1ff_ffff_ffff);
        assert_eq!(all.len(), 41);
        assert_eq!(capability_mask(&default_capabilities()), 0xa804_25fb);
        assert_eq!(capability_mask(&capabilities(&sec(&[], &[]), &all).unwrap()), 0xa804_25fb);
        assert!(capabilities(&sec(&[], &["ALL"]), &all).unwrap().is_empty());
        // Drop ALL, then add back one: containerd applies ALL first.
        let one = capabilities(&sec(&["NET_BIND_SERVICE"], &["ALL"]), &all).unwrap();
        assert_eq!(one, HashSet::from([Capability::NetBindService]));
        // Add ALL, drop one.
        let most = capabilities(&sec(&["ALL"], &["CHOWN"]), &all).unwrap();
        assert_eq!(most.len(), 40);
        assert!(!most.contains(&Capability::Chown));
        let more = capabilities(&sec(&["cap_net_admin", "SYS_TIME"], &["KILL", "NOT_A_CAP"]), &all).unwrap();
        assert!(more.contains(&Capability::NetAdmin) && more.contains(&Capability::SysTime));
        assert!(!more.contains(&Capability::Kill));
        assert_eq!(
            capabilities(&sec(&["NOT_A_CAP"], &[]), &all).unwrap_err(),
            "unknown capability \"NOT_A_CAP\" to add"
        );
        // Privileged: everything the agent has, whatever is dropped.
        let privileged = Security { privileged: true, ..sec(&[], &["ALL"]) };
        assert_eq!(capabilities(&privileged, &all).unwrap(), all);
    }

    #[test]
    fn host_devices_include_null() {
        let devs = host_devices().unwrap();
        let null = devs.iter().find(|d| d.path() == Path::new("/dev/null")).expect("/dev/null");
        assert_eq!((null.typ(), null.major(), null.minor()), (LinuxDeviceType::C, 1, 3));
        assert!(!devs.iter().any(|d| d.path().starts_with("/dev/pts")));
    }
}
