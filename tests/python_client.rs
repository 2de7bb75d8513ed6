//! The official Python client (`kubernetes` from PyPI) against a real `capstan up`:
//! CRUD, strategic/merge/JSON patches, paging, selectors, resumed watches, 409 and 422.
//! The checks live in `tests/python/client_test.py`.

mod common;

use common::Cluster;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole script must finish within this (each of its tests also has its own limit).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn official_python_client_works_unchanged() {
    let probe = Command::new("python3").args(["-c", "import kubernetes"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the Python kubernetes client is not installed (python3 -c 'import kubernetes' failed: {}); \
             run `scripts/deps.sh test` to install it",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("python3 is not available ({e}); run `scripts/deps.sh test` to install it"),
    }

    let cluster = Cluster::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client_test.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&cluster.kubeconfig)
        // Only the kubeconfig given on the command line; never a user's own cluster.
        .env_remove("KUBECONFIG")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    let Some(status) = status else {
        panic!(
            "{} did not finish within {SCRIPT_DEADLINE:?} (killed):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            script.display()
        );
    };
    assert!(
        status.success(),
        "{} failed ({status}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        script.display()
    );
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.ends_with(" passed, 0 failed"), "unexpected summary line {last:?}:\n{stdout}\n{stderr}");
    print!("{stdout}");
}
