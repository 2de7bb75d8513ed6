//! Integration tests of the container runtime with real runc and overlayfs (root only).
//!
//! This is a `harness = false` test binary with its own `main`, because it doubles as the
//! shim: the runtime under test runs `<this binary> shim ...` (its `shim_exe`), which `main`
//! hands to `run_shim`. `<this binary> starter ...` is a helper process for the test that
//! kills the agent that started a container. Anything else runs the test cases (arguments
//! that do not start with `-` filter them by name), prints one line per case and a
//! `N passed, N failed` summary, and exits non-zero on failure. Without root or runc, every
//! case fails, unless `CAPSTAN_TESTS_MAY_SKIP=1` (never set by CI) skips them.
//!
//! Each case gets its own state root, runc root and cgroup parent
//! (`/capstan-test-<pid>-<case>`), and is cleaned up with `reset()` whether it passed or not.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use capstan_kubelet::runtime::shim::{run_shim, ShimArgs};
use capstan_kubelet::runtime::{
    ContainerSpec, ContainerStatus, ExecSpec, Mount, Resources, RuncRuntime, RuntimeConfig, RuntimeError,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Case = fn(Env) -> Pin<Box<dyn Future<Output = Result<()>>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("shim") => {
            let result = ShimArgs::parse(&args[2..]).and_then(run_shim);
            if let Err(e) = result {
                eprintln!("shim: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        Some("starter") => {
            if let Err(e) = starter(&args[2..]) {
                eprintln!("starter: {e:#}");
                std::process::exit(1);
            }
            return;
        }
        _ => {}
    }
    std::process::exit(run_cases(&args[1..]));
}

fn cases() -> Vec<(&'static str, Case)> {
    vec![
        ("new_reports_missing_runc", |e| Box::pin(new_reports_missing_runc(e))),
        ("logs_and_exit_codes", |e| Box::pin(logs_and_exit_codes(e))),
        ("stop_escalates_to_sigkill", |e| Box::pin(stop_escalates_to_sigkill(e))),
        ("memory_limit_oom_kill", |e| Box::pin(memory_limit_oom_kill(e))),
        ("cgroup_limits_and_cleanup", |e| Box::pin(cgroup_limits_and_cleanup(e))),
        ("exec_into_running_container", |e| Box::pin(exec_into_running_container(e))),
        ("exec_with_a_terminal", |e| Box::pin(exec_with_a_terminal(e))),
        ("container_with_a_terminal", |e| Box::pin(container_with_a_terminal(e))),
        ("stdin_fifo_once", |e| Box::pin(stdin_fifo_once(e))),
        ("stdin_fifo_reattach", |e| Box::pin(stdin_fifo_reattach(e))),
        ("stop_uses_the_stop_signal", |e| Box::pin(stop_uses_the_stop_signal(e))),
        ("long_lines_are_split", |e| Box::pin(long_lines_are_split(e))),
        ("joins_the_given_netns", |e| Box::pin(joins_the_given_netns(e))),
        ("concurrent_starts", |e| Box::pin(concurrent_starts(e))),
        ("shim_survives_kill9_of_starter", |e| Box::pin(shim_survives_kill9_of_starter(e))),
        ("list_remove_reset", |e| Box::pin(list_remove_reset(e))),
        ("bind_mount_read_only_and_overlay_upper", |e| Box::pin(bind_mount_read_only_and_overlay_upper(e))),
        ("missing_binary_is_a_start_error", |e| Box::pin(missing_binary_is_a_start_error(e))),
    ]
}

fn run_cases(args: &[String]) -> i32 {
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<_> = cases()
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let skip_reason = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if std::process::Command::new("runc").arg("--version").output().is_err() {
        Some("runc is not installed (apt-get install runc)")
    } else {
        None
    };
    if let Some(reason) = skip_reason {
        // Missing root or runc fails the run, so a CI machine without them cannot pass by
        // skipping; a developer may opt out explicitly (CI never sets this).
        if std::env::var_os("CAPSTAN_TESTS_MAY_SKIP").is_some_and(|v| v == "1") {
            println!("runtime tests skipped (CAPSTAN_TESTS_MAY_SKIP=1): {reason}");
            println!("0 passed, 0 failed, {} skipped", selected.len());
            return 0;
        }
        println!("runtime tests cannot run: {reason} (set CAPSTAN_TESTS_MAY_SKIP=1 to skip them)");
        println!("0 passed, {} failed", selected.len());
        return 1;
    }
    let base = PathBuf::from(format!("/tmp/capstan-rt-test-{}", std::process::id()));
    let layer = match build_busybox_layer(&base.join("layer")) {
        Ok(l) => l,
        Err(e) => {
            println!("building the busybox layer failed: {e:#}");
            println!("0 passed, {} failed", selected.len());
            return 1;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in selected {
        let started = Instant::now();
        let result = run_one(&base, &layer, name, case);
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({:.2} s)", started.elapsed().as_secs_f64());
            }
            Err(e) => {
                failed += 1;
                println!("test {name} ... FAILED ({:.2} s): {e:#}", started.elapsed().as_secs_f64());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    println!("{passed} passed, {failed} failed");
    i32::from(failed > 0)
}

fn run_one(base: &Path, layer: &Path, name: &str, case: Case) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let dir = base.join(name);
    let config = RuntimeConfig {
        root: dir.join("state"),
        runc: PathBuf::from("runc"),
        runc_root: dir.join("runc"),
        shim_exe: std::env::current_exe()?,
        cgroup_parent: format!("/capstan-test-{}-{name}", std::process::id()),
        log_rotation: Default::default(),
    };
    let runtime = RuncRuntime::new(config.clone()).context("RuncRuntime::new")?;
    let env = Env { runtime: runtime.clone(), config, dir: dir.clone(), layer: layer.to_path_buf() };
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), case(env)).await })
    }));
    // Clean up whatever the case left, pass or fail.
    let cleanup = rt.block_on(runtime.reset());
    let _ = std::fs::remove_dir_all(&dir);
    match body {
        Err(panic) => bail!(
            "panicked: {:?}",
            panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied())
        ),
        Ok(Err(_)) => bail!("timed out"),
        Ok(Ok(result)) => result?,
    }
    cleanup.context("reset after the case")?;
    Ok(())
}

/// One case's runtime and scratch space.
struct Env {
    runtime: RuncRuntime,
    config: RuntimeConfig,
    dir: PathBuf,
    layer: PathBuf,
}

impl Env {
    fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.to_string(),
            pod_id: "pod1".to_string(),
            labels: BTreeMap::from([("name".to_string(), id.to_string())]),
            layers: vec![self.layer.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: "/".to_string(),
            hostname: "testhost".to_string(),
            log_path: self.dir.join("logs").join(format!("{id}.log")),
            resources: Resources { pids_limit: Some(256), ..Default::default() },
            ..Default::default()
        }
    }
}

/// A layer directory: `/bin/busybox` and a symlink per applet.
fn build_busybox_layer(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "dev", "sys", "tmp", "etc", "data"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).context("copying /bin/busybox (busybox-static)")?;
    let list = std::process::Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(dir.to_path_buf())
}

/// Polls `check` until it returns `Some` or `timeout` passes.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CRI log's lines as (stream, tag, content).
fn log_lines(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let time = parts.next()?;
            time.parse::<jiff::Timestamp>().ok()?;
            Some((
                parts.next()?.to_string(),
                parts.next()?.to_string(),
                parts.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

fn has_line(path: &Path, stream: &str, tag: &str, content: &str) -> bool {
    log_lines(path).iter().any(|(s, t, c)| s == stream && t == tag && c == content)
}

async fn wait_exit(env: &Env, id: &str) -> Result<capstan_kubelet::runtime::ExitInfo> {
    tokio::time::timeout(Duration::from_secs(30), env.runtime.wait(id))
        .await
        .context("container did not exit")?
        .map_err(Into::into)
}

// ---------------------------------------------------------------------------------------

async fn new_reports_missing_runc(env: Env) -> Result<()> {
    let config = RuntimeConfig { runc: PathBuf::from("/nonexistent/runc"), ..env.config.clone() };
    match RuncRuntime::new(config) {
        Err(RuntimeError::RuncMissing(m)) => {
            ensure!(
                m.contains("apt-get install runc") && m.contains("runc is not installed"),
                "message: {m}"
            );
            Ok(())
        }
        other => bail!("expected RuncMissing, got {other:?}"),
    }
}

async fn logs_and_exit_codes(env: Env) -> Result<()> {
    let spec = env.spec("logs", &["sh", "-c", "echo out; echo err >&2; printf partial"]);
    let started = env.runtime.start(&spec).await?;
    ensure!(started.pid > 0);
    let exit = wait_exit(&env, "logs").await?;
    ensure!(exit.code == 0 && exit.signal.is_none() && !exit.oom_killed, "{exit:?}");
    ensure!(exit.reason() == "Completed" && exit.started_at.is_some());
    let log = &spec.log_path;
    ensure!(has_line(log, "stdout", "F", "out"), "log: {:?}", log_lines(log));
    ensure!(has_line(log, "stderr", "F", "err"), "log: {:?}", log_lines(log));
    ensure!(has_line(log, "stdout", "P", "partial"), "log: {:?}", log_lines(log));

    let spec = env.spec("exit3", &["sh", "-c", "exit 3"]);
    env.runtime.start(&spec).await?;
    let exit = wait_exit(&env, "exit3").await?;
    ensure!(exit.code == 3 && exit.reason() == "Error", "{exit:?}");
    match env.runtime.status("exit3").await? {
        Some(ContainerStatus::Exited(e)) => ensure!(e.code == 3),
        other => bail!("status {other:?}"),
    }
    ensure!(env.runtime.status("nonexistent").await?.is_none());
    Ok(())
}

async fn stop_escalates_to_sigkill(env: Env) -> Result<()> {
    env.runtime.start(&env.spec("sleeper", &["sleep", "1000"])).await?;
    match env.runtime.status("sleeper").await? {
        Some(ContainerStatus::Running { pid, .. }) => ensure!(pid > 0),
        other => bail!("status {other:?}"),
    }
    let t = Instant::now();
    let exit = env.runtime.stop("sleeper", Duration::from_secs(1)).await?;
    let took = t.elapsed();
    ensure!(exit.code == 137 && exit.signal == Some(9), "{exit:?}");
    ensure!(took >= Duration::from_millis(950) && took < Duration::from_secs(5), "took {took:?}");
    // Stopping again returns the same exit.
    let again = env.runtime.stop("sleeper", Duration::from_secs(1)).await?;
    ensure!(again.code == 137);
    Ok(())
}

async fn memory_limit_oom_kill(env: Env) -> Result<()> {
    let mut spec = env.spec("oom", &["sh", "-c", "head -c 104857600 /dev/zero | tail"]);
    spec.resources.memory_limit = Some(16 << 20);
    env.runtime.start(&spec).await?;
    let exit = wait_exit(&env, "oom").await?;
    ensure!(exit.oom_killed && exit.code == 137 && exit.reason() == "OOMKilled", "{exit:?}");
    Ok(())
}

async fn cgroup_limits_and_cleanup(env: Env) -> Result<()> {
    let mut spec = env.spec("limits", &["sleep", "1000"]);
    spec.resources = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(64),
    };
    env.runtime.start(&spec).await?;
    let read = |controller: &str, file: &str| -> Result<String> {
        let dir = env.runtime.cgroup_dir(controller, "pod1", "limits").context("no hierarchy")?;
        let path = dir.join(file);
        Ok(std::fs::read_to_string(&path).with_context(|| path.display().to_string())?.trim().to_string())
    };
    ensure!(read("cpu", "cpu.cfs_quota_us")? == "50000");
    ensure!(read("cpu", "cpu.cfs_period_us")? == "100000");
    ensure!(read("cpu", "cpu.shares")? == "512");
    ensure!(read("pids", "pids.max")? == "64");
    ensure!(read("memory", "memory.limit_in_bytes")? == (64u64 << 20).to_string());
    let procs = read("memory", "cgroup.procs")?;
    ensure!(!procs.is_empty(), "the container is not in its memory cgroup");

    env.runtime.remove("limits").await?;
    let cg = format!("{}/pod1/limits", env.config.cgroup_parent);
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
        let dir = hierarchy?.path().join(cg.trim_start_matches('/'));
        ensure!(!dir.exists(), "{} is left", dir.display());
    }
    env.runtime.remove_pod_cgroups("pod1").await?;
    let pod_cg = format!("{}/pod1", env.config.cgroup_parent);
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
        let dir = hierarchy?.path().join(pod_cg.trim_start_matches('/'));
        ensure!(!dir.exists(), "{} is left", dir.display());
    }
    Ok(())
}

async fn exec_into_running_container(env: Env) -> Result<()> {
    env.runtime.start(&env.spec("execd", &["sleep", "1000"])).await?;
    let exec = |args: &[&str], stdin: bool| ExecSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        stdin,
        ..Default::default()
    };
    async fn collect(mut p: capstan_kubelet::runtime::ExecProcess) -> Result<(i32, String, String)> {
        let mut out = String::new();
        let mut err = String::new();
        let mut stdout = p.stdout.take().context("stdout")?;
        let mut stderr = p.stderr.take().context("stderr")?;
        let (a, b) = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        a?;
        b?;
        Ok((p.wait().await?, out, err))
    }
    let (code, out, _) = collect(env.runtime.exec("execd", &exec(&["echo", "hi"], false)).await?).await?;
    ensure!(code == 0 && out == "hi\n", "code {code} out {out:?}");
    let (code, _, _) =
        collect(env.runtime.exec("execd", &exec(&["sh", "-c", "exit 5"], false)).await?).await?;
    ensure!(code == 5, "code {code}");
    let mut with_env = exec(&["sh", "-c", "echo $FOO $(hostname)"], false);
    with_env.env = vec!["FOO=bar".into()];
    let (code, out, _) = collect(env.runtime.exec("execd", &with_env).await?).await?;
    ensure!(code == 0 && out == "bar testhost\n", "code {code} out {out:?}");

    let mut p = env.runtime.exec("execd", &exec(&["cat"], true)).await?;
    let mut stdin = p.stdin.take().context("stdin")?;
    stdin.write_all(b"hello through stdin").await?;
    drop(stdin);
    let (code, out, _) = collect(p).await?;
    ensure!(code == 0 && out == "hello through stdin", "code {code} out {out:?}");

    let (code, _, err) = collect(env.runtime.exec("execd", &exec(&["nope"], false)).await?).await?;
    ensure!(code != 0 && err.contains("executable file not found"), "code {code} err {err:?}");
    Ok(())
}

/// Complete `size <rows> <cols>` lines of a terminal's output.
fn size_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<&str> = text.split(['\r', '\n']).collect();
    lines.pop(); // not ended yet
    lines.into_iter().filter(|l| l.starts_with("size ")).map(str::to_string).collect()
}

/// Resizes through `resize`, then types `s` lines (`type_line`) into a process answering each
/// line with `size <rows> <cols>` until the answer is the new size (the resize and the
/// input may reach the process in either order).
async fn resize_and_check<R, T>(
    width: u16,
    height: u16,
    mut resize: impl FnMut(u16, u16) -> R,
    mut type_line: impl FnMut() -> T,
    text: impl Fn() -> String,
) -> Result<()>
where
    R: Future<Output = Result<()>>,
    T: Future<Output = Result<()>>,
{
    resize(width, height).await?;
    let want = format!("size {height} {width}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = size_lines(&text()).len();
        type_line().await?;
        eventually("an answer", Duration::from_secs(10), || {
            (size_lines(&text()).len() > asked).then_some(())
        })
        .await?;
        if size_lines(&text()).last() == Some(&want) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the size did not become {width}x{height}: {:?}", text());
    }
}

async fn exec_with_a_terminal(env: Env) -> Result<()> {
    use std::sync::{Arc, Mutex};
    env.runtime.start(&env.spec("ttyexec", &["sleep", "1000"])).await?;
    let script =
        "tty; echo term=$TERM; while read x; do [ \"$x\" = q ] && exit 7; echo \"size $(stty size)\"; done";
    let spec =
        ExecSpec { args: vec!["sh".into(), "-c".into(), script.into()], tty: true, ..Default::default() };
    let mut p = env.runtime.exec("ttyexec", &spec).await?;
    ensure!(p.stdin.is_none() && p.stdout.is_none() && p.stderr.is_none());
    let term = p.terminal.take().context("no terminal")?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn({
        let (mut term, output) = (term.try_clone()?, output.clone());
        async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = term.read(&mut buf).await {
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let text = || String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let started =
        eventually("TERM", Duration::from_secs(10), || text().contains("term=xterm\r").then_some(()));
    started.await.with_context(|| format!("output {:?}", text()))?;
    // Lines end in \r\n (or \r\r\n: runc stops the container's terminal from adding its \r
    // only once it serves it, so the first output may get one from both terminals).
    ensure!(text().starts_with("/dev/pts/") && text().contains("\r\n"), "not on a terminal: {:?}", text());
    for (width, height) in [(100, 30), (132, 43)] {
        let resize = |w, h| {
            let r = term.resize(w, h);
            async move { Ok(r?) }
        };
        let type_line = || {
            let term = term.try_clone();
            async move {
                let mut term = term?;
                term.write_all(b"s\n").await?;
                Ok(term.flush().await?)
            }
        };
        resize_and_check(width, height, resize, type_line, text).await?;
        ensure!(term.size()? == (width, height));
    }
    let mut input = term.try_clone()?;
    input.write_all(b"q\n").await?;
    input.flush().await?;
    let code = p.wait().await?;
    ensure!(code == 7, "exit code {code}: {:?}", text());
    // The output ends once runc is gone.
    tokio::time::timeout(Duration::from_secs(10), reader).await.context("the output did not end")??;

    // runc's complaint about a missing binary appears on the terminal.
    let spec = ExecSpec { args: vec!["nope".into()], tty: true, ..Default::default() };
    let mut p = env.runtime.exec("ttyexec", &spec).await?;
    let mut term = p.terminal.take().context("no terminal")?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), term.read_to_string(&mut out)).await??;
    let code = p.wait().await?;
    ensure!(code != 0 && out.contains("executable file not found"), "code {code} out {out:?}");
    Ok(())
}

/// The container's output as its CRI log records it (`P` records joined, `F` ones ended).
fn log_text(path: &Path) -> String {
    log_lines(path).into_iter().map(|(_, tag, c)| if tag == "F" { c + "\n" } else { c }).collect()
}

async fn container_with_a_terminal(env: Env) -> Result<()> {
    let script = "tty; echo term=$TERM; printf 'prompt> '; \
                  while read x; do [ \"$x\" = q ] && exit 3; echo \"size $(stty size)\"; done";
    let mut spec = env.spec("ttyctr", &["sh", "-c", script]);
    spec.tty = true;
    spec.stdin = true;
    env.runtime.start(&spec).await?;
    let log = spec.log_path.clone();
    // A prompt without its newline reaches the log at once.
    eventually("the prompt", Duration::from_secs(10), || log_text(&log).ends_with("prompt> ").then_some(()))
        .await?;
    let text = log_text(&log);
    ensure!(text.starts_with("/dev/pts/0\nterm=xterm\n"), "{text:?}");
    // The terminal's line discipline ends lines with \r\n (kept in the log, as upstream).
    ensure!(std::fs::read_to_string(&log)?.contains(" F /dev/pts/0\r\n"));
    ensure!(log_lines(&log).iter().all(|(stream, _, _)| stream == "stdout"), "{:?}", log_lines(&log));

    let stdin = &tokio::sync::Mutex::new(env.runtime.open_stdin("ttyctr").await?);
    let runtime = &env.runtime;
    for (width, height) in [(90, 20), (101, 33)] {
        let resize = |w, h| async move { Ok(runtime.resize("ttyctr", w, h).await?) };
        let type_line = || async move { Ok(stdin.lock().await.write_all(b"s\n").await?) };
        resize_and_check(width, height, resize, type_line, || log_text(&log)).await?;
    }
    stdin.lock().await.write_all(b"q\n").await?;
    let exit = wait_exit(&env, "ttyctr").await?;
    ensure!(exit.code == 3, "{exit:?}: {:?}", log_text(&log));
    // No shim serves the terminal any more; a container without one has nothing to resize.
    ensure!(matches!(env.runtime.resize("ttyctr", 80, 24).await, Err(RuntimeError::NotRunning(_))));
    env.runtime.start(&env.spec("nottyctr", &["sleep", "1000"])).await?;
    ensure!(matches!(env.runtime.resize("nottyctr", 80, 24).await, Err(RuntimeError::NotFound(_))));
    Ok(())
}

async fn stdin_fifo_once(env: Env) -> Result<()> {
    let mut spec = env.spec("stdin", &["cat"]);
    spec.stdin = true;
    spec.stdin_once = true;
    env.runtime.start(&spec).await?;
    let mut w = env.runtime.open_stdin("stdin").await?;
    w.write_all(b"line one\nline two\n").await?;
    w.flush().await?;
    drop(w);
    let exit = wait_exit(&env, "stdin").await?;
    ensure!(exit.code == 0, "{exit:?}");
    ensure!(has_line(&spec.log_path, "stdout", "F", "line one"), "{:?}", log_lines(&spec.log_path));
    ensure!(has_line(&spec.log_path, "stdout", "F", "line two"), "{:?}", log_lines(&spec.log_path));
    Ok(())
}

async fn stdin_fifo_reattach(env: Env) -> Result<()> {
    let mut spec = env.spec("reattach", &["cat"]);
    spec.stdin = true;
    env.runtime.start(&spec).await?;
    for word in ["first", "second"] {
        let mut w = env.runtime.open_stdin("reattach").await?;
        w.write_all(format!("{word}\n").as_bytes()).await?;
        w.flush().await?;
        drop(w);
        let log = spec.log_path.clone();
        eventually(word, Duration::from_secs(10), || has_line(&log, "stdout", "F", word).then_some(()))
            .await?;
    }
    // Without stdin_once, a writer leaving does not close the container's stdin.
    ensure!(matches!(env.runtime.status("reattach").await?, Some(ContainerStatus::Running { .. })));
    // `cat` as PID 1 ignores SIGTERM: the stop escalates.
    let exit = env.runtime.stop("reattach", Duration::from_millis(200)).await?;
    ensure!(exit.code == 137 && exit.signal == Some(9), "{exit:?}");
    Ok(())
}

async fn stop_uses_the_stop_signal(env: Env) -> Result<()> {
    let script = "trap 'echo got USR1; exit 42' USR1; echo ready; while true; do sleep 0.05; done";
    let mut spec = env.spec("stopsig", &["sh", "-c", script]);
    spec.stop_signal = Some(Signal::SIGUSR1);
    env.runtime.start(&spec).await?;
    let log = spec.log_path.clone();
    eventually("ready", Duration::from_secs(10), || has_line(&log, "stdout", "F", "ready").then_some(()))
        .await?;
    let t = Instant::now();
    let exit = env.runtime.stop("stopsig", Duration::from_secs(10)).await?;
    ensure!(exit.code == 42 && exit.signal.is_none(), "{exit:?}");
    ensure!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    ensure!(has_line(&log, "stdout", "F", "got USR1"));
    Ok(())
}

async fn long_lines_are_split(env: Env) -> Result<()> {
    let spec = env.spec("long", &["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' x; echo; echo short"]);
    env.runtime.start(&spec).await?;
    let exit = wait_exit(&env, "long").await?;
    ensure!(exit.code == 0, "{exit:?}");
    let lines = log_lines(&spec.log_path);
    let shape: Vec<(String, usize)> = lines.iter().map(|(_, t, c)| (t.clone(), c.len())).collect();
    ensure!(
        shape == [("P".to_string(), 16384), ("F".to_string(), 20000 - 16384), ("F".to_string(), 5)],
        "{shape:?}"
    );
    ensure!(lines[0].2.bytes().all(|b| b == b'x'));
    Ok(())
}

/// The inode of a namespace file, as `readlink /proc/self/ns/net` shows it (`net:[N]`).
fn ns_inode(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    Ok(format!("net:[{}]", std::fs::metadata(path)?.ino()))
}

async fn joins_the_given_netns(env: Env) -> Result<()> {
    let name = format!("capstan-rt-test-{}", std::process::id());
    let added = std::process::Command::new("ip").args(["netns", "add", &name]).status();
    if !added.is_ok_and(|s| s.success()) {
        if std::env::var_os("CAPSTAN_TESTS_MAY_SKIP").is_some_and(|v| v == "1") {
            println!("    (skipped: `ip netns add` is not available)");
            return Ok(());
        }
        bail!("`ip netns add` failed (install iproute2; CAPSTAN_TESTS_MAY_SKIP=1 skips)");
    }
    let netns = PathBuf::from(format!("/run/netns/{name}"));
    let result: Result<()> = async {
        let mut spec = env.spec("netns", &["readlink", "/proc/self/ns/net"]);
        spec.netns = Some(netns.clone());
        env.runtime.start(&spec).await?;
        ensure!(wait_exit(&env, "netns").await?.code == 0);
        let want = ns_inode(&netns)?;
        ensure!(
            has_line(&spec.log_path, "stdout", "F", &want),
            "want {want}: {:?}",
            log_lines(&spec.log_path)
        );

        // Without a netns path the container gets a new one: neither the host's nor the pod's.
        let spec = env.spec("ownns", &["readlink", "/proc/self/ns/net"]);
        env.runtime.start(&spec).await?;
        ensure!(wait_exit(&env, "ownns").await?.code == 0);
        let lines = log_lines(&spec.log_path);
        let got = lines.first().map(|l| l.2.clone()).unwrap_or_default();
        ensure!(got.starts_with("net:[") && got != want && got != ns_inode(Path::new("/proc/self/ns/net"))?);
        Ok(())
    }
    .await;
    let _ = std::process::Command::new("ip").args(["netns", "delete", &name]).status();
    result
}

async fn concurrent_starts(env: Env) -> Result<()> {
    let specs: Vec<ContainerSpec> = (0..6)
        .map(|i| {
            let code = i.to_string();
            env.spec(&format!("conc{i}"), &["sh", "-c", &format!("echo hello {code}; exit {code}")])
        })
        .collect();
    let t = Instant::now();
    let started = futures::future::join_all(specs.iter().map(|s| env.runtime.start(s))).await;
    let took = t.elapsed();
    for r in started {
        r?;
    }
    for (i, spec) in specs.iter().enumerate() {
        let exit = wait_exit(&env, &spec.id).await?;
        ensure!(exit.code == i as i32, "{}: {exit:?}", spec.id);
        ensure!(has_line(&spec.log_path, "stdout", "F", &format!("hello {i}")));
    }
    println!("    (6 concurrent starts took {took:?})");
    Ok(())
}

/// `starter <root> <runc-root> <cgroup-parent> <layer> <log>`: starts `sleep 1000` as
/// container `orphan` in pod `pod1`, prints `started`, then sleeps until killed.
fn starter(args: &[String]) -> Result<()> {
    let [root, runc_root, cgroup_parent, layer, log] = args else { bail!("starter: bad arguments {args:?}") };
    let config = RuntimeConfig {
        root: root.into(),
        runc: PathBuf::from("runc"),
        runc_root: runc_root.into(),
        shim_exe: std::env::current_exe()?,
        cgroup_parent: cgroup_parent.clone(),
        log_rotation: Default::default(),
    };
    let runtime = RuncRuntime::new(config)?;
    let spec = ContainerSpec {
        id: "orphan".into(),
        pod_id: "pod1".into(),
        layers: vec![layer.into()],
        args: vec!["sleep".into(), "1000".into()],
        log_path: log.into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(runtime.start(&spec))?;
    println!("started");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

async fn shim_survives_kill9_of_starter(env: Env) -> Result<()> {
    let c = &env.config;
    let log = env.dir.join("logs/orphan.log");
    let mut starter = std::process::Command::new(std::env::current_exe()?)
        .arg("starter")
        .arg(&c.root)
        .arg(&c.runc_root)
        .arg(&c.cgroup_parent)
        .arg(&env.layer)
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()?;
    let starter_pid = Pid::from_raw(starter.id() as i32);
    let stdout = starter.stdout.take().context("stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line).await;
    let result: Result<()> = async {
        let line = line.context("starter did not report")???;
        ensure!(line.trim() == "started", "starter said {line:?}");
        kill(starter_pid, Signal::SIGKILL)?;
        let status = tokio::task::spawn_blocking(move || starter.wait()).await??;
        ensure!(!status.success());
        let pid = match env.runtime.status("orphan").await? {
            Some(ContainerStatus::Running { pid, .. }) => pid,
            other => bail!("after the starter's death: {other:?}"),
        };
        // The shim is nobody's child but init's (or a subreaper's): not the dead starter's.
        let shim_pid: i32 =
            std::fs::read_to_string(c.root.join("containers/orphan/shim.pid"))?.trim().parse()?;
        let stat = std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))?;
        let ppid: i32 =
            stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)).context("stat")?.parse()?;
        ensure!(ppid != starter_pid.as_raw(), "shim's parent is the starter");
        ensure!(kill(Pid::from_raw(pid), None).is_ok(), "container init {pid} died with the starter");
        // Another agent (this process) takes over and stops it; the shim records the exit.
        let exit = env.runtime.stop("orphan", Duration::from_millis(200)).await?;
        ensure!(
            exit.code == 137 && exit.signal == Some(9),
            "{exit:?}; the container's log: {:?}; the shim's: {:?}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(c.root.join("containers/orphan/shim.log")).unwrap_or_default()
        );
        eventually("the shim to exit", Duration::from_secs(10), || {
            (!Path::new(&format!("/proc/{shim_pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))
                    .map(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
                    .unwrap_or(true))
            .then_some(())
        })
        .await?;
        Ok(())
    }
    .await;
    let _ = kill(starter_pid, Signal::SIGKILL);
    result
}

async fn list_remove_reset(env: Env) -> Result<()> {
    let mut a = env.spec("lista", &["sleep", "1000"]);
    a.labels.insert("io.kubernetes.pod.uid".into(), "uid-1".into());
    a.labels.insert("restart".into(), "2".into());
    env.runtime.start(&a).await?;
    let mut b = env.spec("listb", &["sleep", "1000"]);
    b.pod_id = "pod2".into();
    env.runtime.start(&b).await?;
    match env.runtime.start(&a).await {
        Err(RuntimeError::AlreadyExists(_)) => {}
        other => bail!("starting twice: {other:?}"),
    }

    let list = env.runtime.list().await?;
    ensure!(list.len() == 2, "{list:?}");
    let la = list.iter().find(|c| c.id == "lista").context("lista missing")?;
    ensure!(la.labels == a.labels && la.pod_id.as_deref() == Some("pod1") && la.managed);
    ensure!(matches!(la.status, Some(ContainerStatus::Running { .. })), "{:?}", la.status);

    let rootfs = env.config.root.join("containers/lista/bundle/rootfs");
    ensure!(mountinfo_has(&rootfs)?, "rootfs not mounted");
    env.runtime.remove("lista").await?;
    ensure!(!mountinfo_has(&rootfs)?, "rootfs still mounted");
    ensure!(!env.config.root.join("containers/lista").exists(), "state dir left");
    ensure!(!env.config.runc_root.join("lista").exists(), "runc state left");
    let cg = format!("{}/pod1/lista", env.config.cgroup_parent);
    ensure!(!Path::new("/sys/fs/cgroup/memory").join(cg.trim_start_matches('/')).exists(), "cgroup left");
    env.runtime.remove("lista").await?; // idempotent
    ensure!(env.runtime.status("lista").await?.is_none());

    // reset() takes care of a running container, its mounts and every cgroup.
    env.runtime.reset().await?;
    ensure!(env.runtime.list().await?.is_empty());
    ensure!(!mountinfo_has_prefix(&env.config.root)?, "mounts left under the root");
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
        let dir = hierarchy?.path().join(env.config.cgroup_parent.trim_start_matches('/'));
        ensure!(!dir.exists(), "{} is left", dir.display());
    }
    Ok(())
}

fn mountinfo_has(path: &Path) -> Result<bool> {
    Ok(capstan_kubelet::runtime::mounts::mount_table()?.iter().any(|m| m.mount_point == path))
}

fn mountinfo_has_prefix(path: &Path) -> Result<bool> {
    Ok(capstan_kubelet::runtime::mounts::mount_table()?.iter().any(|m| m.mount_point.starts_with(path)))
}

async fn bind_mount_read_only_and_overlay_upper(env: Env) -> Result<()> {
    let host = env.dir.join("hostdir");
    std::fs::create_dir_all(&host)?;
    std::fs::write(host.join("data.txt"), "from the host\n")?;
    let script =
        "cat /data/data.txt; if touch /data/x 2>/dev/null; then echo writable; else echo readonly; fi; \
                  echo new > /newfile; hostname";
    let mut spec = env.spec("bind", &["sh", "-c", script]);
    spec.mounts.push(Mount { destination: "/data".into(), source: host.clone(), read_only: true });
    env.runtime.start(&spec).await?;
    let exit = wait_exit(&env, "bind").await?;
    ensure!(exit.code == 0, "{exit:?} {:?}", log_lines(&spec.log_path));
    let log = &spec.log_path;
    ensure!(has_line(log, "stdout", "F", "from the host"), "{:?}", log_lines(log));
    ensure!(has_line(log, "stdout", "F", "readonly"), "{:?}", log_lines(log));
    ensure!(has_line(log, "stdout", "F", "testhost"), "{:?}", log_lines(log));
    ensure!(!host.join("x").exists());
    // Writes land in the container's upper dir, never in the shared layer.
    ensure!(env.config.root.join("containers/bind/upper/newfile").exists(), "no upper file");
    ensure!(!env.layer.join("newfile").exists(), "the layer was written");
    Ok(())
}

async fn missing_binary_is_a_start_error(env: Env) -> Result<()> {
    let spec = env.spec("nobin", &["nope"]);
    let message = match env.runtime.start(&spec).await {
        Err(RuntimeError::StartFailed { message, .. }) => message,
        other => return Err(anyhow!("expected StartFailed, got {other:?}")),
    };
    ensure!(message.contains("exec: \"nope\": executable file not found in $PATH"), "message {message:?}");
    match env.runtime.status("nobin").await? {
        Some(ContainerStatus::Exited(e)) => {
            ensure!(
                e.code == 128 && e.reason() == "StartError" && e.error.as_deref() == Some(message.as_str()),
                "{e:?}"
            )
        }
        other => bail!("status {other:?}"),
    }
    let exit = wait_exit(&env, "nobin").await?;
    ensure!(exit.code == 128);
    env.runtime.remove("nobin").await?;
    ensure!(env.runtime.status("nobin").await?.is_none());
    ensure!(!mountinfo_has_prefix(&env.config.root)?);
    Ok(())
}
