//! The per-container shim: `<capstan> shim --id ID --state DIR ...`.
//!
//! One shim process supervises one container for its whole life, independently of the agent
//! that started it (the agent may crash or restart; the container and its exit code are not
//! lost):
//!
//! 1. The agent runs `<shim_exe> shim <args>` with its stdout on a pipe (the report pipe) and
//!    its stderr on `<state>/shim.log`. That process re-executes itself (`/proc/self/exe`)
//!    with `--detached` and exits at once, so the real shim is orphaned (re-parented to init),
//!    never the agent's child; the detached shim calls `setsid` (own session, no controlling
//!    terminal), `chdir /`, and becomes a child subreaper.
//! 2. It creates one pipe for the container's stdout and one for its stderr, starts a thread
//!    per pipe copying lines into the CRI log file, and runs
//!    `runc --root R --log <state>/runc.log --log-format json create --bundle B --pid-file P ID`
//!    with the pipes as runc's stdout/stderr (`process.terminal` is false, so runc hands its
//!    stdio to the container), then `runc start ID`.
//! 3. It writes `<state>/started` (pid, start time) or, when runc failed, `<state>/exit` with
//!    exit code 128 and runc's error message, and reports the same on the report pipe as one
//!    JSON line ([`ShimReport`]); its stdout then goes to /dev/null.
//! 4. It reaps every child it adopts; when the container's init exits it reads the OOM-kill
//!    counter of the container's memory cgroup (before anyone can delete the cgroup), waits
//!    (at most 5 s) for both log pipes to reach EOF, writes `<state>/exit`
//!    (`{exitCode, signal, finishedAt, oomKilled, startedAt}`; 128 + signal for a signal
//!    death) and exits.
//!
//! CRI log lines are `<RFC3339Nano UTC> <stdout|stderr> <F|P> <content>\n`: `F` for a whole
//! line (newline removed), `P` for a partial one (a line longer than 16 KiB is cut into
//! 16 KiB `P` chunks followed by an `F` rest; bytes without a final newline at EOF are `P`).
//!
//! Stdin (`--stdin`): the container's stdin is a pipe fed from the FIFO `<state>/stdin`.
//! A writer (attach) opens the FIFO for writing; everything it writes reaches the container.
//! When the writer closes it, the container's stdin stays open (later writers may attach)
//! unless `--stdin-once` is set: then the first writer's close closes the container's stdin
//! (it reads EOF) for good. Without `--stdin` the container's stdin is /dev/null.
//!
//! Terminal (`--tty`, the config has `process.terminal`): runc gets
//! `--console-socket <private dir>/sock` and sends the controlling side of the container's
//! terminal there while `runc create` runs; the shim receives it (SCM_RIGHTS) once create
//! succeeded. The terminal's output goes to the log as `stdout`, whatever each read returns
//! at once (a line without its newline, such as a shell prompt, becomes a `P` line, so a
//! follower of the log sees it); the stdin FIFO, with `--stdin`, writes into the terminal
//! (`--stdin-once` only stops forwarding: a terminal cannot be closed for reading); the FIFO
//! `<state>/resize` takes `<width> <height>` lines and sets the terminal's size. runc's own
//! stdout and stderr still go to the log through the pipes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::kill;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cgroups::read_oom_kills;
use super::logfile::{RotatingLog, Rotation};
use super::state::{
    now_rfc3339, write_atomic, write_json_atomic, ExitRecord, ShimReport, StartedRecord, StateDir,
};
use super::tty::{self, ConsoleSocket};

/// Longest CRI log line before it is split into partial (`P`) lines.
pub const MAX_LOG_LINE: usize = 16 * 1024;
/// How long the shim waits for the log pipes to drain after the container's init exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The shim's command line (the arguments after the `shim` subcommand word).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimArgs {
    /// runc container id (`--id`).
    pub id: String,
    /// The container's state directory (`--state`); the OCI bundle is its `bundle/`.
    pub state_dir: PathBuf,
    /// The runc binary (`--runc`).
    pub runc: PathBuf,
    /// runc's state root (`--runc-root`).
    pub runc_root: PathBuf,
    /// The CRI log file to append to (`--log`).
    pub log_path: PathBuf,
    /// The container's `memory.oom_control` / `memory.events` file (`--oom-file`).
    pub oom_file: Option<PathBuf>,
    /// Rotate the log at this size in bytes (`--log-max-size`, 0: never) keeping this many
    /// files (`--log-max-files`).
    pub log_rotation: Rotation,
    /// Give the container a stdin FIFO (`--stdin`).
    pub stdin: bool,
    /// Close the container's stdin when the first writer disconnects (`--stdin-once`).
    pub stdin_once: bool,
    /// The container has a terminal (`--tty`).
    pub tty: bool,
    /// Already detached (`--detached`, set by the shim when it re-executes itself).
    pub detached: bool,
}

impl ShimArgs {
    /// Parses the arguments after `shim` (a leading `shim` word is skipped too).
    pub fn parse(argv: &[String]) -> anyhow::Result<ShimArgs> {
        let mut args = ShimArgs::default();
        let mut it = argv.iter().skip(usize::from(argv.first().is_some_and(|a| a == "shim")));
        while let Some(flag) = it.next() {
            let mut value = || it.next().cloned().with_context(|| format!("shim: {flag} needs a value"));
            match flag.as_str() {
                "--id" => args.id = value()?,
                "--state" => args.state_dir = value()?.into(),
                "--runc" => args.runc = value()?.into(),
                "--runc-root" => args.runc_root = value()?.into(),
                "--log" => args.log_path = value()?.into(),
                "--oom-file" => args.oom_file = Some(value()?.into()),
                "--log-max-size" => {
                    args.log_rotation.max_size = value()?.parse().context("shim: --log-max-size")?
                }
                "--log-max-files" => {
                    args.log_rotation.max_files = value()?.parse().context("shim: --log-max-files")?
                }
                "--stdin" => args.stdin = true,
                "--stdin-once" => args.stdin_once = true,
                "--tty" => args.tty = true,
                "--detached" => args.detached = true,
                other => bail!("shim: unknown argument {other:?}"),
            }
        }
        for (name, missing) in [
            ("--id", args.id.is_empty()),
            ("--state", args.state_dir.as_os_str().is_empty()),
            ("--runc", args.runc.as_os_str().is_empty()),
            ("--runc-root", args.runc_root.as_os_str().is_empty()),
            ("--log", args.log_path.as_os_str().is_empty()),
        ] {
            if missing {
                bail!("shim: {name} is required");
            }
        }
        Ok(args)
    }

    /// The arguments [`ShimArgs::parse`] reads back (without the `shim` word).
    pub fn to_args(&self) -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut v = vec![
            "--id".to_string(),
            self.id.clone(),
            "--state".to_string(),
            s(&self.state_dir),
            "--runc".to_string(),
            s(&self.runc),
            "--runc-root".to_string(),
            s(&self.runc_root),
            "--log".to_string(),
            s(&self.log_path),
        ];
        if let Some(f) = &self.oom_file {
            v.extend(["--oom-file".to_string(), s(f)]);
        }
        if self.log_rotation.max_size > 0 {
            v.extend([
                "--log-max-size".to_string(),
                self.log_rotation.max_size.to_string(),
                "--log-max-files".to_string(),
                self.log_rotation.max_files.to_string(),
            ]);
        }
        for (flag, on) in [
            ("--stdin", self.stdin),
            ("--stdin-once", self.stdin_once),
            ("--tty", self.tty),
            ("--detached", self.detached),
        ] {
            if on {
                v.push(flag.to_string());
            }
        }
        v
    }
}

/// Runs the shim (see the module docs). Returns when the container has exited and its exit
/// file is written (or at once in the first, not yet detached stage).
pub fn run_shim(args: ShimArgs) -> anyhow::Result<()> {
    if !args.detached {
        let detached = ShimArgs { detached: true, ..args };
        Command::new("/proc/self/exe")
            .arg("shim")
            .args(detached.to_args())
            .stdin(Stdio::null())
            .spawn()
            .context("shim: re-executing itself")?;
        return Ok(());
    }
    nix::unistd::setsid().context("shim: setsid")?;
    std::env::set_current_dir("/").context("shim: chdir /")?;
    nix::sys::prctl::set_child_subreaper(true).context("shim: PR_SET_CHILD_SUBREAPER")?;
    let state = StateDir::new(args.state_dir.clone());
    write_atomic(&state.shim_pid(), nix::unistd::getpid().to_string().as_bytes())
        .context("shim: shim.pid")?;

    let mut readers = Vec::new();
    let mut log = None;
    let started = match start_container(&args, &state, &mut readers, &mut log) {
        Ok(started) => started,
        Err(message) => {
            eprintln!("shim {}: start failed: {message}", args.id);
            // runc's own error output goes to the container's stderr: flush it into the log.
            drain(readers, Duration::from_secs(1));
            let record = ExitRecord {
                exit_code: 128,
                signal: None,
                finished_at: now_rfc3339(),
                oom_killed: false,
                started_at: None,
                error: Some(message.clone()),
            };
            write_json_atomic(&state.exit(), &record).context("shim: exit file")?;
            report(&ShimReport { error: Some(message), ..Default::default() });
            return Ok(());
        }
    };
    let record = StartedRecord { pid: started.pid.as_raw(), started_at: started.started_at.clone() };
    write_json_atomic(&state.started(), &record).context("shim: started file")?;
    report(&ShimReport { pid: Some(record.pid), started_at: Some(record.started_at.clone()), error: None });

    let (exit_code, signal) = wait_for(started.pid);
    let oom_killed = args.oom_file.as_deref().and_then(read_oom_kills).is_some_and(|n| n > 0);
    let finished_at = now_rfc3339();
    drain(readers, DRAIN_TIMEOUT);
    if let Some(log) = &log {
        log.file.finish();
    }
    let record = ExitRecord {
        exit_code,
        signal,
        finished_at,
        oom_killed,
        started_at: Some(started.started_at),
        error: None,
    };
    write_json_atomic(&state.exit(), &record).context("shim: exit file")?;
    Ok(())
}

struct Running {
    pid: Pid,
    started_at: String,
}

/// Creates and starts the container; `Err` carries the message for the agent.
fn start_container(
    args: &ShimArgs,
    state: &StateDir,
    readers: &mut Vec<mpsc::Receiver<()>>,
    log_slot: &mut Option<Arc<CriLog>>,
) -> Result<Running, String> {
    let log = Arc::new(
        CriLog::open(&args.log_path, args.log_rotation).map_err(|e| format!("opening the log file: {e}"))?,
    );
    *log_slot = Some(log.clone());
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    readers.push(spawn_reader(out_r, "stdout", log.clone(), false));
    readers.push(spawn_reader(err_r, "stderr", log.clone(), false));
    let mkfifo = |fifo: &Path| match nix::unistd::mkfifo(fifo, Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("creating {}: {e}", fifo.display())),
    };
    if args.stdin {
        mkfifo(&state.stdin())?;
    }
    // With a terminal, runc sends it here during `create`; stdin then goes into the terminal.
    let console = if args.tty {
        mkfifo(&state.resize())?;
        Some(ConsoleSocket::new().map_err(|e| format!("creating the console socket: {e}"))?)
    } else {
        None
    };
    let stdin = if args.stdin && !args.tty {
        let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let (fifo, once) = (state.stdin(), args.stdin_once);
        std::thread::spawn(move || proxy_stdin(&fifo, File::from(in_w), once));
        Stdio::from(in_r)
    } else {
        Stdio::null()
    };

    let runc = |op: &str| {
        let mut c = Command::new(&args.runc);
        c.arg("--root").arg(&args.runc_root).arg("--log").arg(state.runc_log()).args([
            "--log-format",
            "json",
            op,
        ]);
        c
    };
    // The Command (and with it the pipes' write ends in this process) is dropped right after
    // runc exits, so the readers see EOF once the container's processes are gone.
    let mut create = runc("create");
    create.arg("--bundle").arg(state.bundle()).arg("--pid-file").arg(state.init_pid());
    if let Some(console) = &console {
        create.arg("--console-socket").arg(console.path());
    }
    let created = create
        .arg(&args.id)
        .stdin(stdin)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status()
        .map_err(|e| format!("running {}: {e}", args.runc.display()))?;
    if !created.success() {
        return Err(runc_error(&state.runc_log()).unwrap_or_else(|| format!("runc create failed: {created}")));
    }
    // The terminal is served before the process starts: none of its output is missed.
    let served = match console {
        Some(console) => console
            .receive(Duration::from_secs(10))
            .map_err(|e| format!("receiving the container's terminal from runc: {e}"))
            .and_then(|terminal| serve_terminal(args, state, terminal, log, readers)),
        None => Ok(()),
    };
    let failure = match served.map(|()| runc("start").arg(&args.id).stdin(Stdio::null()).output()) {
        Err(message) => Some(message),
        Ok(Ok(out)) if out.status.success() => None,
        Ok(Ok(out)) => Some(runc_error(&state.runc_log()).unwrap_or_else(|| {
            format!("runc start failed: {}", String::from_utf8_lossy(&out.stderr).trim())
        })),
        Ok(Err(e)) => Some(format!("running {}: {e}", args.runc.display())),
    };
    let pid = std::fs::read_to_string(state.init_pid())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(Pid::from_raw);
    let failure = failure.or_else(|| pid.is_none().then(|| "runc wrote no init pid".to_string()));
    if let Some(message) = failure {
        let _ = runc("delete").args(["--force", &args.id]).stdin(Stdio::null()).output();
        if let Some(pid) = pid {
            let _ = waitpid(pid, None);
        }
        return Err(message);
    }
    let pid = pid.ok_or("runc wrote no init pid")?;
    Ok(Running { pid, started_at: now_rfc3339() })
}

/// Serves a container's terminal: its output into the log, the stdin FIFO into it (with
/// `--stdin`), resizes from the resize FIFO.
fn serve_terminal(
    args: &ShimArgs,
    state: &StateDir,
    terminal: OwnedFd,
    log: Arc<CriLog>,
    readers: &mut Vec<mpsc::Receiver<()>>,
) -> Result<(), String> {
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("duplicating the terminal: {e}"));
    // Read and write ends of the FIFO: opening does not wait for a writer, and reading never
    // ends when one leaves.
    let resizes = OpenOptions::new()
        .read(true)
        .write(true)
        .open(state.resize())
        .map_err(|e| format!("opening the resize FIFO: {e}"))?;
    let for_resizes = dup(&terminal)?;
    std::thread::spawn(move || apply_resizes(resizes, &for_resizes));
    if args.stdin {
        let (fifo, once, input) = (state.stdin(), args.stdin_once, File::from(dup(&terminal)?));
        std::thread::spawn(move || proxy_stdin(&fifo, input, once));
    }
    readers.push(spawn_reader(terminal, "stdout", log, true));
    Ok(())
}

/// Applies `<width> <height>` lines to the terminal, forever.
fn apply_resizes(fifo: File, terminal: &OwnedFd) {
    for line in io::BufReader::new(fifo).lines() {
        let Ok(line) = line else { return };
        let mut parts = line.split_whitespace().map(str::parse::<u16>);
        if let (Some(Ok(width)), Some(Ok(height))) = (parts.next(), parts.next()) {
            if let Err(e) = tty::set_size(terminal, width, height) {
                eprintln!("shim: resizing the terminal: {e}");
            }
        }
    }
}

/// The last error message in a runc JSON log file.
pub fn runc_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        matches!(v.get("level")?.as_str()?, "error" | "fatal")
            .then(|| v.get("msg")?.as_str().map(str::to_string))?
    })
}

/// Sends the report line to the agent and points stdout at /dev/null.
fn report(report: &ShimReport) {
    let mut line = serde_json::to_vec(report).unwrap_or_default();
    line.push(b'\n');
    let mut out = io::stdout().lock();
    let _ = out.write_all(&line).and_then(|()| out.flush());
    drop(out);
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Reaps children until `init` exits; its exit code (128 + signal for a signal death) and
/// signal.
fn wait_for(init: Pid) -> (i32, Option<i32>) {
    loop {
        match waitpid(Option::<Pid>::None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => return (code, None),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => {
                return (128 + sig as i32, Some(sig as i32))
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                // Not our child after all (no subreaper?): wait for it to go, code unknown.
                eprintln!("shim: init {init} is not a child of the shim; its exit code is lost");
                while kill(init, None).is_ok() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return (255, None);
            }
            Err(e) => {
                eprintln!("shim: waitpid: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Waits until every reader finished or `timeout` passed.
fn drain(readers: Vec<mpsc::Receiver<()>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for r in readers {
        let _ = r.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// The CRI log file, shared by the stdout and stderr readers, rotated by size
/// ([`RotatingLog`]).
struct CriLog {
    file: RotatingLog,
}

impl CriLog {
    fn open(path: &Path, rotation: Rotation) -> io::Result<CriLog> {
        Ok(CriLog { file: RotatingLog::open(path, rotation)? })
    }

    fn write(&self, stream: &str, partial: bool, content: &[u8]) {
        self.file.write_record(&format_cri_line(&now_rfc3339(), stream, partial, content));
    }
}

/// One CRI log line: `<time> <stream> <F|P> <content>\n`.
pub fn format_cri_line(time: &str, stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(time.len() + stream.len() + content.len() + 5);
    line.extend_from_slice(time.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// Cuts a byte stream into CRI log lines.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; calls `emit(partial, content)` for every complete line and for every
    /// [`MAX_LOG_LINE`]-byte chunk of an over-long line.
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        loop {
            let rest = &self.pending[start..];
            match rest.iter().position(|b| *b == b'\n') {
                Some(nl) if nl <= MAX_LOG_LINE => {
                    emit(false, &rest[..nl]);
                    start += nl + 1;
                }
                _ if rest.len() >= MAX_LOG_LINE => {
                    emit(true, &rest[..MAX_LOG_LINE]);
                    start += MAX_LOG_LINE;
                }
                _ => break,
            }
        }
        self.pending.drain(..start);
    }

    /// End of stream: emits what is left as a partial line.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(true, &self.pending);
            self.pending.clear();
        }
    }
}

/// Copies one container stream into the log; the receiver gets a message at EOF. `prompt`:
/// log whatever each read returns at once, a line's start as a `P` line (a terminal: a
/// prompt must not wait for its newline); the end of a terminal (`EIO`) is its EOF.
fn spawn_reader(fd: OwnedFd, stream: &'static str, log: Arc<CriLog>, prompt: bool) -> mpsc::Receiver<()> {
    let (done, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut file = File::from(fd);
        let mut splitter = LineSplitter::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    splitter.push(&buf[..n], |partial, content| log.write(stream, partial, content));
                    if prompt {
                        splitter.finish(|partial, content| log.write(stream, partial, content));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if prompt && e.raw_os_error() == Some(libc::EIO) => break,
                Err(e) => {
                    eprintln!("shim: reading {stream}: {e}");
                    break;
                }
            }
        }
        splitter.finish(|partial, content| log.write(stream, partial, content));
        let _ = done.send(());
    });
    rx
}

/// Feeds the container's stdin pipe from the FIFO (see the module docs).
fn proxy_stdin(fifo: &Path, mut container_stdin: File, once: bool) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // Blocks until a writer opens the FIFO; reads return 0 once every writer closed it.
        let mut reader = match File::open(fifo) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("shim: opening the stdin FIFO: {e}");
                return;
            }
        };
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if container_stdin.write_all(&buf[..n]).is_err() {
                        return; // the container closed its stdin
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if once {
            return; // dropping the pipe's write end: the container reads EOF
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let args = ShimArgs {
            id: "c1".into(),
            state_dir: "/s/c1".into(),
            runc: "runc".into(),
            runc_root: "/run/r".into(),
            log_path: "/var/log/x.log".into(),
            oom_file: Some("/sys/fs/cgroup/memory/x/memory.oom_control".into()),
            log_rotation: Rotation { max_size: 1 << 20, max_files: 3 },
            stdin: true,
            stdin_once: false,
            tty: true,
            detached: true,
        };
        assert_eq!(ShimArgs::parse(&args.to_args()).unwrap(), args);
        let mut with_word = vec!["shim".to_string()];
        with_word.extend(args.to_args());
        assert_eq!(ShimArgs::parse(&with_word).unwrap(), args);
        assert!(ShimArgs::parse(&["--id".to_string()]).is_err());
        assert!(ShimArgs::parse(&["--bogus".to_string()]).is_err());
        assert!(ShimArgs::parse(&[]).is_err());
    }

    #[test]
    fn splits_lines() {
        let mut s = LineSplitter::default();
        let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
        s.push(b"a\nbc", |p, c| out.push((p, c.to_vec())));
        s.push(b"d\n\n", |p, c| out.push((p, c.to_vec())));
        let long = vec![b'x'; MAX_LOG_LINE * 2 + 5];
        s.push(&long, |p, c| out.push((p, c.to_vec())));
        s.push(b"\nend", |p, c| out.push((p, c.to_vec())));
        s.finish(|p, c| out.push((p, c.to_vec())));
        let summary: Vec<(bool, usize)> = out.iter().map(|(p, c)| (*p, c.len())).collect();
        assert_eq!(out[0], (false, b"a".to_vec()));
        assert_eq!(out[1], (false, b"bcd".to_vec()));
        assert_eq!(out[2], (false, vec![]));
        assert_eq!(summary[3..], [(true, MAX_LOG_LINE), (true, MAX_LOG_LINE), (false, 5), (true, 3)]);
        assert_eq!(format_cri_line("T", "stdout", false, b"hi"), b"T stdout F hi\n".to_vec());
        assert_eq!(format_cri_line("T", "stderr", true, b""), b"T stderr P \n".to_vec());
    }

    #[test]
    fn finds_runc_error() {
        let dir = std::env::temp_dir().join(format!("capstan-runc-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("runc.log");
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\",\"time\":\"t\"}\n\
             {\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\n\
             not json\n",
        )
        .unwrap();
        assert_eq!(runc_error(&log).as_deref(), Some("exec: \"nope\": executable file not found in $PATH"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
