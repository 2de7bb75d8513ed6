//! The OCI runtime config (`config.json`) of a container, built with oci-spec.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::ContainerSpec;

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

/// Docker's default capability set.
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

/// runc's default masked paths.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// runc's default read-only paths.
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

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
/// read-only instead (as Docker does for `--net=host`).
fn default_mounts(host_network: bool) -> Result<Vec<oci_spec::runtime::Mount>, String> {
    let sys = if host_network {
        mount("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"])?
    } else {
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])?
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
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"])?,
    ])
}

/// Builds the OCI config of `spec` with its root filesystem at `rootfs`, in cgroup
/// `cgroups_path`. `cgroup_ns`: give the container its own cgroup namespace (cgroup v2);
/// `nofile`: its `RLIMIT_NOFILE` (see [`nofile_limit`]).
pub fn build_spec(
    spec: &ContainerSpec,
    rootfs: &Path,
    cgroups_path: &str,
    cgroup_ns: bool,
    nofile: u64,
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
    let caps = default_capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
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
            .hard(nofile)
            .soft(nofile)
            .build()
            .map_err(err)?])
        .no_new_privileges(false)
        .build()
        .map_err(err)?;

    let host_network = spec.netns.as_deref() == Some(Path::new(super::HOST_NETWORK));
    let mut mounts = default_mounts(host_network)?;
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
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build().map_err(err)?);
    }
    // No network namespace entry at all means the host's (hostNetwork pods).
    if !host_network {
        let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = &spec.netns {
            net = net.path(path.clone());
        }
        namespaces.push(net.build().map_err(err)?);
    }
    if cgroup_ns {
        namespaces
            .push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Cgroup).build().map_err(err)?);
    }

    let r = &spec.resources;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
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

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources.build().map_err(err)?)
        .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(err)?;

    let mut annotations: HashMap<String, String> = HashMap::new();
    annotations.insert(POD_ID_ANNOTATION.to_string(), spec.pod_id.clone());
    annotations.insert(LABELS_ANNOTATION.to_string(), labels_json(&spec.labels));

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(RootBuilder::default().path(rootfs).readonly(false).build().map_err(err)?)
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
