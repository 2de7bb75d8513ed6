//! `kill -9` of `capstan up` in the middle of a create loop: every create that was
//! answered 201 is there after a restart, and revisions never go backwards.

mod common;

use common::{wait_for, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill9_loses_no_acknowledged_create() {
    let mut c = Cluster::start();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let kubeconfig = c.kubeconfig.clone();
    let cache = c.path().join("kube-cache-kill");
    let mut workers = Vec::new();
    for w in 0..4 {
        let acked = acked.clone();
        let stop = stop.clone();
        let kubeconfig = kubeconfig.clone();
        let cache = cache.join(w.to_string());
        workers.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("cm-{w}-{i}");
                i += 1;
                let out = std::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .arg("--cache-dir")
                    .arg(&cache)
                    .args([
                        "create",
                        "configmap",
                        &name,
                        "--from-literal=k=v",
                        "-o",
                        "jsonpath={.metadata.resourceVersion}",
                    ])
                    .output()
                    .expect("kubectl runs");
                if out.status.success() {
                    let rv: u64 =
                        String::from_utf8_lossy(&out.stdout).trim().parse().expect("numeric resourceVersion");
                    acked.lock().unwrap().push((name, rv));
                }
            }
        }));
    }
    wait_for("20 acknowledged creates", Duration::from_secs(60), || {
        (acked.lock().unwrap().len() >= 20).then_some(())
    });
    c.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().expect("worker");
    }
    let acked = acked.lock().unwrap().clone();
    let max_rv = acked.iter().map(|(_, rv)| *rv).max().unwrap_or(0);
    c.restart();
    let listed = c.ok(&[
        "get",
        "configmaps",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
    ]);
    let present: std::collections::HashMap<&str, u64> = listed
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, rv)| (n, rv.parse().unwrap_or(0)))
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            present.get(name.as_str()),
            Some(rv),
            "acknowledged create of {name} (rv {rv}) lost after kill -9"
        );
    }
    let rv_after: u64 = c
        .ok(&[
            "create",
            "configmap",
            "after-restart",
            "--from-literal=k=v",
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
        .trim()
        .parse()
        .expect("numeric resourceVersion");
    assert!(rv_after > max_rv, "revision went backwards: {rv_after} after {max_rv}");
    eprintln!("{} acknowledged creates survived kill -9; revision {max_rv} -> {rv_after}", acked.len());
}
