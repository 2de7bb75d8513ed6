//! The OCI runtime config (`config.json`) of a container, built with oci-spec.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::security::{self, SeccompProfile};
use super::{seccomp, ContainerSpec};

/// What the host gives every container, learnt once when the runtime starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// Give containers their own cgroup namespace (cgroup v2; not privileged ones).
    pub cgroup_ns: bool,
    /// `RLIMIT_NOFILE` of container processes (see [`nofile_limit`]).
    pub nofile: u64,
    /// The capabilities a privileged container gets: the agent's own.
    pub capabilities: Capabilities,
}

impl Host {
    /// This host, as the calling process sees it.
    pub fn current(cgroup_ns: bool) -> Host {
        Host { cgroup_ns, nofile: nofile_limit(), capabilities: security::current_capabilities() }
    }
}

/// Annotation holding the pod id.
pub const POD_ID_ANNOTATION: &str = "io.capstan.pod-id";
/// Annotation holding the container's labels as a JSON object.
pub const LABELS_ANNOTATION: &str = "io.capstan.labels";
/// The PATH a container gets when its environment has none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The `TERM` a process with a terminal gets when its environment has none (as containerd's).
pub const DEFAULT_TERM: &str = "TERM=xterm";
/// `RLIMIT_NOFILE` (soft and hard) of container processes, where the runtime may set it.
pub const NOFILE_LIMIT: u64 = 1_048_576;

/// The `RLIMIT_NOFILE` containers get: [`NOFILE_LIMIT`], or this process's hard limit when
/// it is lower and this process lacks `CAP_SYS_RESOURCE` (runc could not raise it: container
/// creation would fail with "error setting rlimit type 7: operation not permitted").
pub fn nofile_limit() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u32 = 24;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(NOFILE_LIMIT);
    if cap_eff & (1 << CAP_SYS_RESOURCE) != 0 {
        return NOFILE_LIMIT.min(nr_open);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse::<u64>().ok());
    hard.map_or(NOFILE_LIMIT, |h| h.min(NOFILE_LIMIT))
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<oci_spec::runtime::Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

/// The standard mounts of runc's default spec. Without a network namespace of its own
/// (`host_network`) the kernel refuses a new sysfs mount, so /sys is bind-mounted
/// instead (as Docker does for `--net=host`). `/sys` and the cgroup filesystem are
/// read-only except in `privileged` containers (as containerd's `WithWriteableSysfs` and
/// `WithWriteableCgroupfs`).
fn default_mounts(host_network: bool, privileged: bool) -> Result<Vec<oci_spec::runtime::Mount>, String> {
    let ro = if privileged { "rw" } else { "ro" };
    let sys = if host_network {
        mount("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", ro])?
    } else {
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", ro])?
    };
    Ok(vec![
        mount("/proc", "proc", "proc", &[])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        )?,
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        sys,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", ro])?,
    ])
}

/// Builds the OCI config of `spec` with its root filesystem at `rootfs`, in cgroup
/// `cgroups_path`, on `host`. The security settings ([`ContainerSpec::security`]) become
/// OCI fields as containerd makes them: the capability set (bounding = effective =
/// permitted, never inheritable or ambient, so a non-root process keeps none),
/// `noNewPrivileges`, the seccomp filter (computed from the final bounding set), a
/// read-only root, masked and read-only paths, sysctls; a privileged container gets the
/// host's devices, every device allowed, writable `/sys` and no seccomp, masked or
/// read-only paths. Reads a `Localhost` seccomp profile and walks `/dev` (privileged):
/// call it off async threads.
pub fn build_spec(
    spec: &ContainerSpec,
    rootfs: &Path,
    cgroups_path: &str,
    host: &Host,
) -> Result<Spec, String> {
    let err = |e: oci_spec::OciSpecError| e.to_string();
    if spec.args.is_empty() {
        return Err("no command: args is empty".into());
    }
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) && !spec.hostname.is_empty() {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    if spec.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push(DEFAULT_TERM.to_string());
    }
    let mut user = UserBuilder::default().uid(spec.uid).gid(spec.gid);
    if !spec.additional_gids.is_empty() {
        user = user.additional_gids(spec.additional_gids.clone());
    }
    let sec = &spec.security;
    let caps = security::capabilities(sec, &host.capabilities)?;
    let seccomp = match &sec.seccomp {
        _ if sec.privileged => None,
        SeccompProfile::Unconfined => None,
        SeccompProfile::RuntimeDefault => Some(seccomp::default_profile(&caps)),
        SeccompProfile::Localhost(path) => Some(seccomp::load_profile(path)?),
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(spec.tty)
        .user(user.build().map_err(err)?)
        .args(spec.args.clone())
        .env(env)
        .cwd(if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() })
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(host.nofile)
            .soft(host.nofile)
            .build()
            .map_err(err)?])
        .no_new_privileges(sec.no_new_privs)
        .build()
        .map_err(err)?;

    let host_network = spec.netns.as_deref() == Some(Path::new(super::HOST_NETWORK));
    let mut mounts = default_mounts(host_network, sec.privileged)?;
    for m in &spec.mounts {
        if !m.destination.starts_with('/') {
            return Err(format!("mount destination {:?} is not absolute", m.destination));
        }
        let source =
            m.source.to_str().ok_or_else(|| format!("mount source {} is not UTF-8", m.source.display()))?;
        let options: &[&str] =
            if m.read_only { &["rbind", "rprivate", "ro"] } else { &["rbind", "rprivate", "rw"] };
        mounts.push(mount(&m.destination, "bind", source, options)?);
    }

    let mut namespaces = Vec::new();
    for typ in
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
    {
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if let (LinuxNamespaceType::Pid, Some(path)) = (typ, &spec.pid_ns) {
            ns = ns.path(path.clone());
        }
        namespaces.push(ns.build().map_err(err)?);
    }
    // No network namespace entry at all means the host's (hostNetwork pods).
    if !host_network {
        let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = &spec.netns {
            net = net.path(path.clone());
        }
        namespaces.push(net.build().map_err(err)?);
    }
    if host.cgroup_ns && !sec.privileged {
        namespaces
            .push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Cgroup).build().map_err(err)?);
    }

    let r = &spec.resources;
    // Privileged containers may use every device (containerd's WithAllDevicesAllowed).
    let mut resources = LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
        .allow(sec.privileged)
        .access("rwm")
        .build()
        .map_err(err)?]);
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(shares) = r.cpu_shares {
        cpu = cpu.shares(shares);
    }
    if let Some(quota) = r.cpu_quota {
        cpu = cpu.quota(quota);
    }
    if let Some(period) = r.cpu_period {
        cpu = cpu.period(period);
    }
    resources = resources.cpu(cpu.build().map_err(err)?);
    if let Some(limit) = r.memory_limit {
        resources =
            resources.memory(LinuxMemoryBuilder::default().limit(limit).swap(limit).build().map_err(err)?);
    }
    if let Some(limit) = r.pids_limit {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build().map_err(err)?);
    }

    let (masked, readonly) = if sec.privileged {
        (Vec::new(), Vec::new())
    } else {
        (sec.masked_paths.clone(), sec.readonly_paths.clone())
    };
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources.build().map_err(err)?)
        .masked_paths(masked)
        .readonly_paths(readonly);
    if let Some(profile) = seccomp {
        linux = linux.seccomp(profile);
    }
    if sec.privileged {
        linux = linux.devices(security::host_devices()?);
    }
    if !sec.sysctls.is_empty() {
        linux =
            linux.sysctl(sec.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    let linux = linux.build().map_err(err)?;

    let mut annotations: HashMap<String, String> = HashMap::new();
    annotations.insert(POD_ID_ANNOTATION.to_string(), spec.pod_id.clone());
    annotations.insert(LABELS_ANNOTATION.to_string(), labels_json(&spec.labels));

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(RootBuilder::default().path(rootfs).readonly(sec.readonly_rootfs).build().map_err(err)?)
        .hostname(spec.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(err)
}

fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_string())
}

/// The labels stored in a config's annotations by [`build_spec`].
pub fn labels_from_annotations(annotations: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    annotations.get(LABELS_ANNOTATION).and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::security::{capabilities_from_mask, capability_mask, Security};

    fn build(security: Security) -> Spec {
        let spec = ContainerSpec {
            id: "c".into(),
            pod_id: "p".into(),
            args: vec!["sh".into()],
            netns: Some("/run/netns/x".into()),
            security,
            ..Default::default()
        };
        let host =
            Host { cgroup_ns: true, nofile: 1024, capabilities: capabilities_from_mask(0x1ff_ffff_ffff) };
        build_spec(&spec, Path::new("/rootfs"), "/capstan/p/c", &host).unwrap()
    }

    fn caps(spec: &Spec) -> (u64, u64, u64, bool, bool) {
        let c = spec.process().as_ref().unwrap().capabilities().as_ref().unwrap();
        let mask = |s: &Option<Capabilities>| capability_mask(s.as_ref().unwrap());
        (
            mask(c.bounding()),
            mask(c.effective()),
            mask(c.permitted()),
            c.inheritable().as_ref().is_none_or(|s| s.is_empty()),
            c.ambient().as_ref().is_none_or(|s| s.is_empty()),
        )
    }

    fn mount_options(spec: &Spec, dest: &str) -> Vec<String> {
        let m = spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest)).unwrap();
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn default_security() {
        let s = build(Security::default());
        assert_eq!(caps(&s), (0xa804_25fb, 0xa804_25fb, 0xa804_25fb, true, true));
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(!s.process().as_ref().unwrap().no_new_privileges().unwrap_or(false));
        assert!(linux.masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_string()));
        assert!(mount_options(&s, "/sys").contains(&"ro".to_string()));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
        assert!(linux.namespaces().as_ref().unwrap().iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
    }

    #[test]
    fn hardened_security() {
        let s = build(Security {
            drop_capabilities: vec!["ALL".into()],
            no_new_privs: true,
            seccomp: SeccompProfile::RuntimeDefault,
            readonly_rootfs: true,
            sysctls: [("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string())].into(),
            ..Default::default()
        });
        assert_eq!(caps(&s), (0, 0, 0, true, true));
        assert!(s.process().as_ref().unwrap().no_new_privileges().unwrap_or(false));
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let linux = s.linux().as_ref().unwrap();
        let seccomp = linux.seccomp().as_ref().unwrap();
        // Computed from the final (empty) bounding set: no mount, clone3 gives ENOSYS.
        assert!(seccomp.syscalls().as_ref().unwrap().iter().any(|c| c.names() == &["clone3"]));
        assert_eq!(linux.sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"], "0");
    }

    #[test]
    fn privileged_security() {
        let s = build(Security {
            privileged: true,
            drop_capabilities: vec!["ALL".into()],
            seccomp: SeccompProfile::RuntimeDefault,
            ..Default::default()
        });
        assert_eq!(caps(&s).0, 0x1ff_ffff_ffff);
        let linux = s.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().as_ref().unwrap().is_empty());
        assert!(linux.readonly_paths().as_ref().unwrap().is_empty());
        assert!(mount_options(&s, "/sys").contains(&"rw".to_string()));
        assert!(mount_options(&s, "/sys/fs/cgroup").contains(&"rw".to_string()));
        assert!(linux.devices().as_ref().unwrap().iter().any(|d| d.path() == Path::new("/dev/null")));
        let allow = &linux.resources().as_ref().unwrap().devices().as_ref().unwrap()[0];
        assert!(allow.allow());
        assert!(!linux.namespaces().as_ref().unwrap().iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
        // An unknown capability is a spec error, not a panic.
        let spec = ContainerSpec {
            args: vec!["sh".into()],
            security: Security { add_capabilities: vec!["BOGUS".into()], ..Default::default() },
            ..Default::default()
        };
        assert!(build_spec(&spec, Path::new("/r"), "/c", &Host::default()).is_err());
    }
}
