//! SIGTERM under load: every role exits on its own, with status 0, within its grace, and
//! nothing acknowledged is lost.

mod common;

use common::{wait_for, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Creates ConfigMaps with kubectl from 4 threads until `stop`; the acknowledged names.
fn load(c: &Cluster, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..4)
        .map(|w| {
            let (kubeconfig, cache, stop) =
                (c.kubeconfig.clone(), c.path().join(format!("cache-{w}")), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let name = format!("cm-{w}-{i}");
                    i += 1;
                    let out = std::process::Command::new("kubectl")
                        .arg("--kubeconfig")
                        .arg(&kubeconfig)
                        .arg("--cache-dir")
                        .arg(&cache)
                        .args(["create", "configmap", &name, "--request-timeout=5s"])
                        .output()
                        .expect("kubectl runs");
                    if out.status.success() {
                        acked.push(name);
                    }
                }
                acked
            })
        })
        .collect()
}

#[test]
fn sigterm_under_load_exits_in_time_and_loses_nothing() {
    let mut c = Cluster::start_with(&["--sim-nodes", "2"]);
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=4"]);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&c, stop.clone());
    let acked = Arc::new(Mutex::new(0usize));
    wait_for("some acknowledged creates", Duration::from_secs(60), || {
        let n = c.ok(&["get", "configmaps", "-o", "name"]).lines().filter(|l| l.contains("cm-")).count();
        *acked.lock().unwrap() = n;
        (n >= 20).then_some(())
    });
    // SIGTERM in the middle of the writes: the HTTP server drains for at most 2 s.
    let t = Instant::now();
    let status = c.terminate(Duration::from_secs(10));
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<String> = workers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    let status = status.unwrap_or_else(|| panic!("capstan up still running {took:?} after SIGTERM"));
    assert!(status.success(), "capstan up exited with {status} after SIGTERM");
    c.start_again();
    let present: std::collections::HashSet<String> = c
        .ok(&["get", "configmaps", "-o", "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}"])
        .lines()
        .map(str::to_string)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|n| !present.contains(*n)).collect();
    assert!(lost.is_empty(), "acknowledged creates lost over SIGTERM: {lost:?}");
    eprintln!("capstan up exited {took:?} after SIGTERM; {} acknowledged creates kept", acked.len());
}

#[test]
fn every_role_exits_on_sigterm() {
    let mut c = Cluster::start_multiprocess(2, &[]);
    c.ok(&["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
    wait_for("3 pods running", Duration::from_secs(60), || {
        let phases = c.ok(&["get", "pods", "-o", "jsonpath={.items[*].status.phase}"]);
        (phases.split_whitespace().filter(|p| *p == "Running").count() == 3).then_some(())
    });
    // controllers, scheduler, sim-nodes: each exits 0 within 5 s of SIGTERM.
    for (i, role) in c.roles_mut().iter_mut().enumerate() {
        let t = Instant::now();
        let status = role.terminate(Duration::from_secs(5));
        let status =
            status.unwrap_or_else(|| panic!("role {i} still running {:?} after SIGTERM", t.elapsed()));
        assert!(status.success(), "role {i} exited with {status}");
    }
    let t = Instant::now();
    let status = c.terminate(Duration::from_secs(10)).unwrap_or_else(|| panic!("the gateway did not exit"));
    assert!(status.success(), "the gateway exited with {status} after {:?}", t.elapsed());
}
