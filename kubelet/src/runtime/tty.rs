//! Terminals: pseudo-terminal pairs, window sizes, the console socket runc sends a
//! container's terminal to, and [`Terminal`], the async end of an exec session's terminal.
//!
//! Two ways a process gets a terminal:
//!
//! * **exec** (`runc exec --tty` in the foreground): runc refuses a console socket unless it
//!   detaches, and a detached exec would lose its exit code. So the agent opens a pty pair
//!   ([`open_pty`]) and gives runc the user side as its stdin, stdout and stderr. runc finds
//!   its "host console" there, puts it in raw mode, allocates the process's own terminal
//!   inside the container and copies between the two. The agent reads and writes the
//!   controlling side ([`Terminal`]). A resize sets the size of that side and sends runc
//!   `SIGWINCH`, upon which runc copies the size to the container's terminal.
//! * **containers** with `process.terminal` (`tty: true`): `runc create` always detaches, so
//!   it sends the controlling side of the container's terminal to `--console-socket`; the
//!   shim listens there ([`ConsoleSocket`]) and keeps it.
//!
//! All file descriptors are opened close-on-exec, so no other process the agent spawns at
//! the same time inherits a terminal (an inherited user side would keep the session open).

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::pty::OpenptFlags;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opens a pseudo-terminal pair: `(controlling side, user side)`, both close-on-exec.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let slave = match rustix::pty::ioctl_tiocgptpeer(&master, flags) {
        Ok(fd) => fd,
        // Kernels before 4.13: open it by name (std opens close-on-exec).
        Err(_) => {
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::fs::OpenOptionsExt;
            let name = rustix::pty::ptsname(&master, Vec::new())?;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(std::ffi::OsStr::from_bytes(name.as_bytes()))?
                .into()
        }
    };
    Ok((master, slave))
}

/// Sets the window size of a terminal (`TIOCSWINSZ`; either side of a pty pair).
pub fn set_size(fd: impl AsFd, width: u16, height: u16) -> io::Result<()> {
    let size = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
    Ok(rustix::termios::tcsetwinsize(fd, size)?)
}

/// The window size of a terminal: `(width, height)`.
pub fn size(fd: impl AsFd) -> io::Result<(u16, u16)> {
    let s = rustix::termios::tcgetwinsize(fd)?;
    Ok((s.ws_col, s.ws_row))
}

/// A Unix socket for `runc create --console-socket`, in a new private directory (a state
/// directory can be too deep for a socket path); the directory goes when this is dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Creates and binds the socket.
    pub fn new() -> io::Result<ConsoleSocket> {
        let template = std::env::temp_dir().join("capstan-console.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)?; // mode 0700
        let path = dir.join("sock");
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(ConsoleSocket { dir, path, listener }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The path to give runc.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the terminal runc sent. Call after `runc create` succeeded: runc has connected
    /// and sent it by then, so this does not wait for a connection (no connection is an
    /// error); the message itself is waited for at most `timeout`.
    pub fn receive(&self, timeout: Duration) -> io::Result<OwnedFd> {
        self.listener.set_nonblocking(true)?;
        let (conn, _) = self.listener.accept().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                io::Error::other("runc did not connect to the console socket")
            } else {
                e
            }
        })?;
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(timeout))?;
        receive_fd(&conn)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Receives one file descriptor (`SCM_RIGHTS`) from a connected Unix socket; runc sends the
/// terminal's name as the data and the descriptor with it.
pub fn receive_fd(conn: impl AsFd) -> io::Result<OwnedFd> {
    let mut data = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut data)];
    let received = loop {
        match rustix::net::recvmsg(conn.as_fd(), &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let mut fds = fds.into_iter();
    match fds.next() {
        Some(fd) => Ok(fd), // any extra descriptors are closed as `fds` drops
        None if received.bytes == 0 => Err(io::Error::other("the console socket closed without a terminal")),
        None => Err(io::Error::other("the console socket message carried no file descriptor")),
    }
}

/// The controlling side of an exec session's terminal, for async reading and writing (the
/// process's output and input) and resizing. [`try_clone`](Terminal::try_clone) gives
/// another handle: one task may read while another writes. Reads and writes run on Tokio's
/// blocking threads (the terminal stays a plain blocking file).
///
/// Reading returns end of file once every process holding the other side has closed it
/// (the kernel reports `EIO` then).
#[derive(Debug)]
pub struct Terminal {
    io: tokio::fs::File,
    /// For the window size.
    master: Arc<File>,
    /// Told about resizes (`SIGWINCH`) and hangups: the foreground `runc exec`.
    winch: Option<Pid>,
}

impl Terminal {
    /// Wraps the controlling side of a pty. `winch`: a process to send `SIGWINCH` after
    /// each resize, and `SIGHUP` on [`hang_up`](Terminal::hang_up).
    pub fn new(master: OwnedFd, winch: Option<Pid>) -> io::Result<Terminal> {
        let master = File::from(master);
        let io = tokio::fs::File::from_std(master.try_clone()?);
        Ok(Terminal { io, master: Arc::new(master), winch })
    }

    /// Another handle on the same terminal.
    pub fn try_clone(&self) -> io::Result<Terminal> {
        let io = tokio::fs::File::from_std(self.master.try_clone()?);
        Ok(Terminal { io, master: self.master.clone(), winch: self.winch })
    }

    /// Sets the window size (`width` columns, `height` rows) and tells the process that
    /// serves the terminal.
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        set_size(&*self.master, width, height)?;
        if let Some(pid) = self.winch {
            // It may be gone already; then there is nobody to tell.
            let _ = kill(pid, Signal::SIGWINCH);
            // runc copies the size on SIGWINCH only once its handler is installed; kubectl
            // sends the size at once, often before that. Tell it again a little later (the
            // copy is idempotent), so the first size is never lost.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut last = 0;
                    for at in [100, 300, 700, 1500, 3000, 6000] {
                        let ms = at - last;
                        last = at;
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        if kill(pid, Signal::SIGWINCH).is_err() {
                            break;
                        }
                    }
                });
            }
        }
        Ok(())
    }

    /// The window size: `(width, height)`.
    pub fn size(&self) -> io::Result<(u16, u16)> {
        size(&*self.master)
    }

    /// Hangs up: sends `SIGHUP` to the process that serves the terminal (runc forwards it
    /// to the process in the container), as when a terminal is closed.
    pub fn hang_up(&self) {
        if let Some(pid) = self.winch {
            let _ = kill(pid, Signal::SIGHUP);
        }
    }
}

impl AsyncRead for Terminal {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.io).poll_read(cx, buf)) {
            // The other side is closed everywhere: the end.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Poll::Ready(Ok(())),
            other => Poll::Ready(other),
        }
    }
}

impl AsyncWrite for Terminal {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn pty_round_trip_resize_and_eof() {
        let (master, slave) = open_pty().unwrap();
        let mut term = Terminal::new(master, None).unwrap();
        term.resize(120, 33).unwrap();
        assert_eq!(size(&slave).unwrap(), (120, 33));
        assert_eq!(term.size().unwrap(), (120, 33));
        // Input typed into the terminal reaches the user side (canonical mode: a line).
        term.write_all(b"typed\n").await.unwrap();
        term.flush().await.unwrap();
        let mut user = File::from(slave);
        let line = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            let n = user.read(&mut buf).unwrap();
            user.write_all(b"out\n").unwrap();
            (buf[..n].to_vec(), user)
        })
        .await
        .unwrap();
        assert_eq!(line.0, b"typed\n");
        drop(line.1); // the last user side closes: EOF after the output
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), term.read_to_end(&mut all)).await.unwrap().unwrap();
        // The echo of the input, then the output (with the line discipline's \r\n).
        assert_eq!(all, b"typed\r\nout\r\n");
    }

    #[test]
    fn console_socket_passes_a_descriptor() {
        let socket = ConsoleSocket::new().unwrap();
        let dir = socket.dir.clone();
        assert!(socket.receive(Duration::from_secs(1)).is_err(), "nobody connected");
        let (master, _slave) = open_pty().unwrap();
        let client = std::os::unix::net::UnixStream::connect(socket.path()).unwrap();
        let fds = [master.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
        assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
        rustix::net::sendmsg(
            &client,
            &[io::IoSlice::new(b"/dev/ptmx")],
            &mut control,
            rustix::net::SendFlags::empty(),
        )
        .unwrap();
        let got = socket.receive(Duration::from_secs(5)).unwrap();
        set_size(&got, 7, 3).unwrap();
        assert_eq!(size(&master).unwrap(), (7, 3), "the same terminal");
        drop(socket);
        assert!(!dir.exists());
    }
}
