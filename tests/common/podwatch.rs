//! `kubectl get pods -w` in the background, recording (live, ready) pod counts after
//! every event, to check rollout bounds at every observed moment.

use super::{wait_for, Cluster};
use serde_json::Value;
use std::collections::HashMap;
use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Not terminating and not finished.
pub fn is_live(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    pod["metadata"]["deletionTimestamp"].is_null() && phase != "Succeeded" && phase != "Failed"
}

/// Ready condition True.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// `kubectl get pods -w` in the background, recording (live, ready) after every event.
pub struct PodWatch {
    child: Child,
    state: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
pub struct WatchState {
    pods: HashMap<String, Value>,
    observations: Vec<(usize, usize)>,
    /// Distinct pod-template-hash values among unfinished pods (terminating included).
    templates: Vec<usize>,
    ended: bool,
}

impl WatchState {
    fn counts(&self) -> (usize, usize) {
        let live: Vec<&Value> = self.pods.values().filter(|p| is_live(p)).collect();
        let ready = live.iter().filter(|p| is_ready(p)).count();
        (live.len(), ready)
    }
}

impl PodWatch {
    /// Starts watching pods matching `selector`.
    pub fn start(c: &Cluster, selector: &str) -> PodWatch {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["get", "pods", "-l", selector, "-w", "--output-watch-events", "-o", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs");
        let stdout = child.stdout.take().expect("stdout");
        let state = Arc::new(Mutex::new(WatchState::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            let events = serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for ev in events {
                let Ok(ev) = ev else { break };
                let name = ev["object"]["metadata"]["name"].as_str().unwrap_or("").to_string();
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                match ev["type"].as_str() {
                    Some("DELETED") => {
                        s.pods.remove(&name);
                    }
                    Some("ADDED") | Some("MODIFIED") => {
                        s.pods.insert(name, ev["object"].clone());
                    }
                    _ => continue,
                }
                let counts = s.counts();
                s.observations.push(counts);
                let mut hashes: Vec<&str> = s
                    .pods
                    .values()
                    .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded") | Some("Failed")))
                    .filter_map(|p| p["metadata"]["labels"]["pod-template-hash"].as_str())
                    .collect();
                hashes.sort_unstable();
                hashes.dedup();
                let n = hashes.len();
                s.templates.push(n);
            }
            st.lock().unwrap_or_else(|e| e.into_inner()).ended = true;
        });
        PodWatch { child, state }
    }

    /// Waits until the watch shows `live` live pods, all Ready; returns the number of
    /// observations so far.
    pub fn wait_settled(&self, live: usize) -> usize {
        wait_for(&format!("the watch to show {live} ready pods"), Duration::from_secs(60), || {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            assert!(!s.ended, "kubectl get -w ended early");
            (s.counts() == (live, live)).then_some(s.observations.len())
        })
    }

    /// The number of distinct pod templates among unfinished pods after every event
    /// from observation `from` on.
    pub fn templates_since(&self, from: usize) -> Vec<usize> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).templates[from..].to_vec()
    }

    /// (live, ready) after every event from observation `from` on.
    pub fn observations_since(&self, from: usize) -> Vec<(usize, usize)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).observations[from..].to_vec()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
