//! The `RuntimeDefault` seccomp profile: containerd's default profile (itself moby's),
//! written with oci-spec's seccomp types, and `Localhost` profiles read from a file.
//!
//! Every syscall not allowed here fails with `EPERM` (`SCMP_ACT_ERRNO`). The allow list is
//! containerd's (`contrib/seccomp/seccomp_default.go`): the common syscalls, `socket` for
//! every address family but `AF_ALG` and `AF_VSOCK`, `personality` for the usual
//! personas, the architecture's own extras, and the syscalls a capability in the bounding
//! set permits (`CAP_SYS_ADMIN`: mount, unshare, setns, clone with namespace flags...).
//! Without `CAP_SYS_ADMIN`, `clone` is allowed only without namespace flags and `clone3`
//! fails with `ENOSYS` (so that libcs fall back to `clone`). Syscalls this kernel or
//! libseccomp does not know are skipped by runc.

use std::path::Path;

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};

/// The syscalls the default profile always allows.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

const AF_ALG: u64 = 38;
const AF_VSOCK: u64 = 40;
const ENOSYS: u32 = 38;
/// CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
/// CLONE_NEWCGROUP.
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x0200_0000;

/// The seccomp architectures of this build's target (as containerd's `arches()`).
fn architectures() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64]
    } else if cfg!(target_arch = "s390x") {
        vec![Arch::ScmpArchS390, Arch::ScmpArchS390x]
    } else if cfg!(target_arch = "riscv64") {
        vec![Arch::ScmpArchRiscv64]
    } else if cfg!(target_arch = "loongarch64") {
        vec![Arch::ScmpArchLoongarch64]
    } else {
        vec![]
    }
}

/// The syscalls only this build's architecture has.
fn arch_syscalls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "x86") {
        &["modify_ldt"]
    } else if cfg!(any(target_arch = "arm", target_arch = "aarch64")) {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "powerpc64") {
        &["sync_file_range2", "swapcontext"]
    } else if cfg!(target_arch = "s390x") {
        &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache", "riscv_hwprobe"]
    } else {
        &[]
    }
}

/// The syscalls a capability in the bounding set allows.
fn capability_syscalls(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::DacReadSearch => &["open_by_handle_at"],
        Capability::SysAdmin => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        Capability::SysBoot => &["reboot"],
        Capability::SysChroot => &["chroot"],
        Capability::SysModule => &["delete_module", "init_module", "finit_module"],
        Capability::SysPacct => &["acct"],
        Capability::SysPtrace => {
            &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"]
        }
        Capability::SysRawio => &["iopl", "ioperm"],
        Capability::SysTime => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        Capability::SysTtyConfig => &["vhangup"],
        Capability::SysNice => &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
        Capability::Syslog => &["syslog"],
        Capability::Bpf => &["bpf"],
        Capability::Perfmon => &["perf_event_open"],
        _ => &[],
    }
}

fn allow(names: &[&str]) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| n.to_string()).collect());
    s.set_action(LinuxSeccompAction::ScmpActAllow);
    s
}

fn allow_if(
    name: &str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    // Every field has a value: building cannot fail.
    let arg = arg.build().unwrap_or_default();
    let mut s = allow(&[name]);
    s.set_args(Some(vec![arg]));
    s
}

/// The default profile for a container whose bounding set is `bounding`.
pub fn default_profile(bounding: &Capabilities) -> LinuxSeccomp {
    use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpGt, ScmpCmpLt, ScmpCmpMaskedEq};
    let mut syscalls = vec![allow(ALLOWED)];
    // socket(2) for every family but AF_ALG and AF_VSOCK: three single-condition rules
    // (one rule with two conditions on one argument would be an OR in runc).
    syscalls.push(allow_if("socket", 0, ScmpCmpLt, AF_ALG, None));
    syscalls.push(allow_if("socket", 0, ScmpCmpEq, AF_ALG + 1, None));
    syscalls.push(allow_if("socket", 0, ScmpCmpGt, AF_VSOCK, None));
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(allow_if("personality", 0, ScmpCmpEq, persona, None));
    }
    // Kernels from 4.8 on (the only ones capstan runs on) check ptrace against seccomp.
    syscalls.push(allow(&["process_vm_readv", "process_vm_writev", "ptrace"]));
    if !arch_syscalls().is_empty() {
        syscalls.push(allow(arch_syscalls()));
    }
    // In a fixed order, so that the profile is the same for the same capabilities.
    let mut caps: Vec<Capability> = bounding.iter().copied().collect();
    caps.sort_by_key(|c| c.to_string());
    for cap in caps {
        let names = capability_syscalls(cap);
        if !names.is_empty() {
            syscalls.push(allow(names));
        }
    }
    if !bounding.contains(&Capability::SysAdmin) {
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        syscalls.push(allow_if("clone", index, ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0)));
        let mut clone3 = LinuxSyscall::default();
        clone3.set_names(vec!["clone3".to_string()]);
        clone3.set_action(LinuxSeccompAction::ScmpActErrno);
        clone3.set_errno_ret(Some(ENOSYS));
        syscalls.push(clone3);
    }
    let mut profile = LinuxSeccomp::default();
    profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
    profile.set_architectures(Some(architectures()));
    profile.set_syscalls(Some(syscalls));
    profile
}

/// A `Localhost` profile: the OCI seccomp JSON in `path` (as containerd reads it).
pub fn load_profile(path: &Path) -> Result<LinuxSeccomp, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!("cannot load seccomp profile {:?}: open {}: {e}", path.display().to_string(), path.display())
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| format!("decoding seccomp profile failed {:?}: {e}", path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().as_deref().unwrap_or_default().iter().any(|s| {
            s.action() == LinuxSeccompAction::ScmpActAllow
                && s.args().is_none()
                && s.names().iter().any(|n| n == name)
        })
    }

    #[test]
    fn default_denies_and_capabilities_open_syscalls() {
        let none = default_profile(&HashSet::new());
        assert_eq!(none.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(allowed(&none, "read") && allowed(&none, "execve"));
        for blocked in ["mount", "unshare", "setns", "reboot", "chroot", "socket", "clone"] {
            assert!(!allowed(&none, blocked), "{blocked} allowed without capabilities");
        }
        let clone3 = none.syscalls().as_deref().unwrap_or_default().iter().find(|s| s.names() == &["clone3"]);
        assert_eq!(
            clone3.map(|s| (s.action(), s.errno_ret())),
            Some((LinuxSeccompAction::ScmpActErrno, Some(38)))
        );
        let admin = default_profile(&HashSet::from([Capability::SysAdmin, Capability::SysChroot]));
        for open in ["mount", "unshare", "setns", "clone", "clone3", "chroot"] {
            assert!(allowed(&admin, open), "{open} not allowed with CAP_SYS_ADMIN");
        }
        assert!(!allowed(&admin, "reboot"));
        // socket(2) only by family: AF_ALG (38) and AF_VSOCK (40) fall through to EPERM.
        let socket: Vec<_> = none
            .syscalls()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|s| s.names() == &["socket"])
            .flat_map(|s| s.args().clone().unwrap_or_default())
            .map(|a| (a.op(), a.value()))
            .collect();
        assert_eq!(
            socket,
            [
                (LinuxSeccompOperator::ScmpCmpLt, 38),
                (LinuxSeccompOperator::ScmpCmpEq, 39),
                (LinuxSeccompOperator::ScmpCmpGt, 40)
            ]
        );
        // The same capabilities give the same profile.
        let again = default_profile(&HashSet::from([Capability::SysChroot, Capability::SysAdmin]));
        assert_eq!(admin, again);
    }

    #[test]
    fn localhost_profiles() {
        let dir = std::env::temp_dir().join(format!("capstan-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.json");
        std::fs::write(&good, r#"{"defaultAction": "SCMP_ACT_LOG", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#).unwrap();
        let p = load_profile(&good).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActLog);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        assert!(load_profile(&bad).unwrap_err().starts_with("decoding seccomp profile failed"));
        let missing = load_profile(&dir.join("nope.json")).unwrap_err();
        assert!(missing.starts_with("cannot load seccomp profile"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
