//! Pod security on the real node: `capstan up` with its node agent running pods on `runc`
//! (images from a real `docker-registry` on loopback, the CNI pod network), driven by the
//! real kubectl. What a container's `securityContext` asks for is checked from inside the
//! container (`/proc/self/status`, `id`, `stat`, syscalls that seccomp blocks) through
//! `kubectl exec`. Needs root, runc, containernetworking-plugins, docker-registry and
//! busybox-static (scripts/deps.sh installs them).

mod common;

use capstan_testkit::{push_busybox_image, Registry};
use common::{wait_for, Cluster};
use serde_json::Value;
use std::time::Duration;

fn registry_with_image() -> (Registry, String) {
    let reg = Registry::start(None).expect("start docker-registry");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let image = rt.block_on(push_busybox_image(&reg, "busybox", "1", None)).expect("push the test image");
    (reg, image)
}

fn try_pod(c: &Cluster, name: &str) -> Option<Value> {
    let out = c.kubectl(&["get", "pod", name, "-o", "json"]);
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn describe(c: &Cluster, name: &str) -> String {
    String::from_utf8_lossy(&c.kubectl(&["describe", "pod", name]).stdout).into_owned()
}

/// Waits (60 s at most) until `check` accepts the pod; fails with `kubectl describe`.
fn wait_pod<T>(c: &Cluster, name: &str, what: &str, check: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = try_pod(c, name).as_ref().and_then(&check) {
            return v;
        }
        if std::time::Instant::now() > deadline {
            panic!("pod {name}: {what} not seen within 60 s:\n{}", describe(c, name));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_running(c: &Cluster, name: &str) {
    wait_pod(c, name, "Running", |p| (p["status"]["phase"] == "Running").then_some(()));
}

/// `kubectl exec POD -- sh -c SCRIPT`: (exit code, stdout + stderr).
fn exec(c: &Cluster, pod: &str, script: &str) -> (i32, String) {
    let out = c.kubectl(&["exec", pod, "--", "sh", "-c", script]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn exec_ok(c: &Cluster, pod: &str, script: &str) -> String {
    let (code, text) = exec(c, pod, script);
    assert_eq!(code, 0, "{pod}: `{script}` failed: {text}");
    text
}

/// The value of `field` in the container's `/proc/self/status` (of the exec'd process,
/// which runs with the container's security settings).
fn status_field(c: &Cluster, pod: &str, field: &str) -> String {
    let status = exec_ok(c, pod, "cat /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{pod}: no {field} in /proc/self/status:\n{status}"))
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let f = c.file(name, yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]);
}

/// A pod running `sleep 3600` with `pod_sc` as its securityContext and `ctr_sc` as its
/// container's (YAML flow mappings, or empty for none) and an emptyDir at /data.
fn pod_yaml(name: &str, image: &str, pod_sc: &str, ctr_sc: &str) -> String {
    let pod_sc = if pod_sc.is_empty() { String::new() } else { format!("  securityContext: {pod_sc}\n") };
    let ctr_sc = if ctr_sc.is_empty() { String::new() } else { format!("    securityContext: {ctr_sc}\n") };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  terminationGracePeriodSeconds: 0
{pod_sc}  containers:
  - name: main
    image: {image}
    command: ["sleep", "3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
{ctr_sc}  volumes:
  - name: data
    emptyDir: {{}}
"#
    )
}

/// The capabilities the test process (root, like the node agent it started) has.
fn own_cap_eff() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| v.trim().to_string()).expect("CapEff")
}

#[test]
fn security_contexts_are_enforced_in_containers() {
    let (_reg, image) = registry_with_image();
    let c = Cluster::start_node("");
    wait_for("node-1 Ready", Duration::from_secs(30), || {
        let n = c.kubectl(&["get", "node", "node-1", "-o", "json"]);
        let v: Value = serde_json::from_slice(&n.stdout).ok()?;
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
    // A Localhost seccomp profile under the node's data directory: mkdir fails.
    let profiles = c.path().join("node/seccomp/profiles");
    std::fs::create_dir_all(&profiles).expect("create the seccomp profile directory");
    std::fs::write(
        profiles.join("no-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write the profile");

    let hardened = pod_yaml(
        "hardened",
        &image,
        "{runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000], fsGroup: 2000}",
        "{capabilities: {drop: [ALL]}, allowPrivilegeEscalation: false, seccompProfile: {type: RuntimeDefault}, readOnlyRootFilesystem: true}",
    );
    let pods = [
        ("hardened", hardened),
        ("plain", pod_yaml("plain", &image, "", "")),
        ("unconfined", pod_yaml("unconfined", &image, "{seccompProfile: {type: Unconfined}}", "")),
        ("privileged", pod_yaml("privileged", &image, "", "{privileged: true}")),
        ("nonroot", pod_yaml("nonroot", &image, "{runAsNonRoot: true}", "")),
        (
            "localhost",
            pod_yaml(
                "localhost",
                &image,
                "{seccompProfile: {type: Localhost, localhostProfile: profiles/no-mkdir.json}}",
                "",
            ),
        ),
        (
            "missing-profile",
            pod_yaml(
                "missing-profile",
                &image,
                "{seccompProfile: {type: Localhost, localhostProfile: profiles/nope.json}}",
                "",
            ),
        ),
        (
            "safe-sysctl",
            pod_yaml("safe-sysctl", &image, "{sysctls: [{name: kernel.shm_rmid_forced, value: \"1\"}]}", ""),
        ),
        (
            "unsafe-sysctl",
            pod_yaml("unsafe-sysctl", &image, "{sysctls: [{name: kernel.msgmax, value: \"65536\"}]}", ""),
        ),
    ];
    for (name, yaml) in &pods {
        apply(&c, &format!("{name}.yaml"), yaml);
    }

    // The hardened pod: no capabilities, no_new_privs, seccomp filter mode.
    wait_running(&c, "hardened");
    assert_eq!(status_field(&c, "hardened", "CapEff"), "0000000000000000");
    assert_eq!(status_field(&c, "hardened", "CapBnd"), "0000000000000000");
    assert_eq!(status_field(&c, "hardened", "NoNewPrivs"), "1");
    assert_eq!(status_field(&c, "hardened", "Seccomp"), "2");
    // runAsUser, runAsGroup, supplementalGroups and fsGroup.
    let id = exec_ok(&c, "hardened", "id");
    assert_eq!(id.trim(), "uid=1000 gid=3000 groups=2000,3000,4000", "id: {id}");
    // The emptyDir belongs to group 2000, setgid: a new file inherits the group.
    let stat = exec_ok(&c, "hardened", "stat -c '%g %A' /data");
    assert_eq!(stat.trim(), "2000 drwxrwsrwx", "stat /data: {stat}");
    let file = exec_ok(&c, "hardened", "touch /data/f && stat -c '%u %g' /data/f");
    assert_eq!(file.trim(), "1000 2000");
    // readOnlyRootFilesystem.
    let (code, text) = exec(&c, "hardened", "touch /rootfs-file");
    assert_ne!(code, 0, "writing the read-only root worked: {text}");
    assert!(text.contains("Read-only file system"), "{text}");

    // No securityContext: containerd's default capabilities, capstan's default seccomp.
    wait_running(&c, "plain");
    assert_eq!(status_field(&c, "plain", "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&c, "plain", "NoNewPrivs"), "0");
    assert_eq!(status_field(&c, "plain", "Seccomp"), "2");
    assert_eq!(exec_ok(&c, "plain", "id").trim(), "uid=0(root) gid=0(root) groups=0(root)");
    // A syscall the default profile blocks: a new user namespace needs no capability,
    // so only seccomp stops it (the unconfined pod below shows the kernel allows it).
    let (code, text) = exec(&c, "plain", "unshare -U true");
    assert_ne!(code, 0, "unshare worked under RuntimeDefault: {text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    // Masked /proc paths are /dev/null (not in privileged containers).
    assert_eq!(exec_ok(&c, "plain", "stat -c %F /proc/timer_list").trim(), "character special file");

    wait_running(&c, "unconfined");
    assert_eq!(status_field(&c, "unconfined", "Seccomp"), "0");
    exec_ok(&c, "unconfined", "unshare -U true");

    // Privileged: every capability the node has, no seccomp, writable /sys.
    wait_running(&c, "privileged");
    assert_eq!(status_field(&c, "privileged", "CapEff"), own_cap_eff());
    assert_eq!(status_field(&c, "privileged", "Seccomp"), "0");
    let sys = exec_ok(&c, "privileged", "grep ' /sys ' /proc/mounts");
    assert!(sys.contains(" rw,"), "/sys not writable: {sys}");
    exec_ok(&c, "privileged", "test -c /dev/null && unshare -m true");
    assert_eq!(exec_ok(&c, "privileged", "stat -c %F /proc/timer_list").trim(), "regular empty file");

    // A Localhost profile.
    wait_running(&c, "localhost");
    assert_eq!(status_field(&c, "localhost", "Seccomp"), "2");
    let (code, text) = exec(&c, "localhost", "mkdir /tmp/d");
    assert_ne!(code, 0, "mkdir worked under the no-mkdir profile: {text}");
    assert!(text.contains("Operation not permitted"), "{text}");

    // A safe sysctl is set in the container's namespace.
    wait_running(&c, "safe-sysctl");
    assert_eq!(exec_ok(&c, "safe-sysctl", "cat /proc/sys/kernel/shm_rmid_forced").trim(), "1");

    // runAsNonRoot with an image that runs as root: never started, upstream's message.
    let uid =
        try_pod(&c, "nonroot").map(|p| p["metadata"]["uid"].as_str().unwrap_or("").to_string()).unwrap();
    let waiting = wait_pod(&c, "nonroot", "CreateContainerConfigError", |p| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "CreateContainerConfigError").then(|| w["message"].as_str().unwrap_or("").to_string())
    });
    assert_eq!(
        waiting,
        format!("container has runAsNonRoot and image will run as root (pod: \"nonroot_default({uid})\", container: main)")
    );

    // A Localhost profile that is not there: the container is not created.
    let waiting = wait_pod(&c, "missing-profile", "CreateContainerError", |p| {
        let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
        (w["reason"] == "CreateContainerError").then(|| w["message"].as_str().unwrap_or("").to_string())
    });
    assert!(waiting.starts_with("cannot load seccomp profile"), "{waiting}");
    assert!(waiting.contains("profiles/nope.json"), "{waiting}");

    // An unsafe sysctl: the node rejects the pod.
    let (reason, message) = wait_pod(&c, "unsafe-sysctl", "rejection", |p| {
        (p["status"]["phase"] == "Failed")
            .then(|| (p["status"]["reason"].clone(), p["status"]["message"].clone()))
    });
    assert_eq!(reason, "SysctlForbidden");
    assert_eq!(message, "Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted");

    for (name, _) in &pods {
        c.ok(&["delete", "pod", name, "--wait=false"]);
    }
}
