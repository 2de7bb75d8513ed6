//! The listening side: the cluster DNS address made local, UDP and TCP port 53 bound on
//! it by a few worker threads (one `SO_REUSEPORT` socket each, so the kernel spreads the
//! queries), each with its own forwarder.
//!
//! The address goes on an interface the agent owns (`capstan-dns` by default): a `dummy`
//! link, or a bridge without ports where the kernel has no dummy driver. Both only hold
//! the /32, which makes the address local: a pod's query to it follows the pod's default
//! route to the node and is delivered to our sockets. A loopback address needs no
//! interface (benchmarks and tests on 127.0.0.0/8).
//!
//! One agent per address and port: a lock file under `/run/capstan` says who serves it.
//! An agent that finds the lock taken (another agent on this host serves the address)
//! says so in its log and tries again every few seconds.

use super::forward::Forwarder;
use super::handler::{AnswerCache, Handler, Reply, Transport};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Where the lock files of served addresses are.
pub const LOCK_DIR: &str = "/run/capstan";
/// How long an idle TCP connection stays open.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once per worker.
const TCP_MAX_CONNECTIONS: usize = 256;
/// How often a server that cannot bind tries again.
const RETRY: Duration = Duration::from_secs(3);

/// Settings of the DNS server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address served (the cluster DNS address).
    pub address: IpAddr,
    /// The port (53; another for benchmarks on loopback).
    pub port: u16,
    /// The interface that holds the address.
    pub interface: String,
    /// Upstream resolvers for names outside the cluster.
    pub upstreams: Vec<SocketAddr>,
    /// Worker threads.
    pub workers: usize,
    /// Where the lock file goes.
    pub lock_dir: PathBuf,
}

fn ip_cmd(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("failed to run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn prefix(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

/// Whether the address needs an interface to be local.
fn needs_interface(ip: &IpAddr) -> bool {
    !ip.is_loopback() && !ip.is_unspecified()
}

/// Puts `ip` on `interface` (created when missing), so it is a local address.
pub fn ensure_address(interface: &str, ip: IpAddr) -> Result<(), String> {
    if !needs_interface(&ip) {
        return Ok(());
    }
    if ip_cmd(&["link", "show", "dev", interface]).is_err() {
        if let Err(e) = ip_cmd(&["link", "add", interface, "type", "dummy"]) {
            // No dummy driver in this kernel: a bridge without ports holds an address as well.
            if ip_cmd(&["link", "show", "dev", interface]).is_err() {
                ip_cmd(&["link", "add", interface, "type", "bridge"])
                    .map_err(|e2| format!("failed to create interface {interface}: {e}; {e2}"))?;
            }
        }
    }
    ip_cmd(&["link", "set", "dev", interface, "up"])?;
    let p = prefix(&ip);
    let shown = ip_cmd(&["-o", "addr", "show", "dev", interface])?;
    if !shown.split_whitespace().any(|w| w == p) {
        if let Err(e) = ip_cmd(&["addr", "add", &p, "dev", interface]) {
            if !e.contains("File exists") {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Takes `ip` off `interface`, and removes the interface when no address is left on it
/// (`capstan node-reset`).
pub fn remove_address(interface: &str, ip: IpAddr) -> Result<(), String> {
    if !needs_interface(&ip) || ip_cmd(&["link", "show", "dev", interface]).is_err() {
        return Ok(());
    }
    let _ = ip_cmd(&["addr", "del", &prefix(&ip), "dev", interface]);
    let left = ip_cmd(&["-o", "addr", "show", "dev", interface])?;
    if !left.lines().any(|l| l.contains(" inet ") || (l.contains(" inet6 ") && !l.contains(" fe80:"))) {
        ip_cmd(&["link", "del", "dev", interface])?;
    }
    Ok(())
}

fn bound(addr: SocketAddr, udp: bool) -> std::io::Result<OwnedFd> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let ty = if udp { SocketType::DGRAM } else { SocketType::STREAM };
    let fd = rustix::net::socket(family, ty, None)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if udp {
        // Room for bursts while a worker is busy.
        let _ = sockopt::set_socket_recv_buffer_size(&fd, 4 << 20);
    }
    rustix::net::bind(&fd, &addr)?;
    if !udp {
        rustix::net::listen(&fd, 1024)?;
    }
    Ok(fd)
}

/// The sockets of one worker.
struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
}

fn bind_all(cfg: &ServerConfig) -> Result<Vec<Sockets>, String> {
    let addr = SocketAddr::new(cfg.address, cfg.port);
    let mut out = Vec::new();
    for _ in 0..cfg.workers.max(1) {
        let udp: std::net::UdpSocket =
            bound(addr, true).map_err(|e| format!("failed to bind udp {addr}: {e}"))?.into();
        let tcp: std::net::TcpListener =
            bound(addr, false).map_err(|e| format!("failed to bind tcp {addr}: {e}"))?.into();
        udp.set_nonblocking(true).map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        out.push(Sockets { udp, tcp });
    }
    Ok(out)
}

type Lock = nix::fcntl::Flock<std::fs::File>;

/// Takes `ip` off `interface` as [`remove_address`] does, unless another agent on this host
/// serves it right now (holds its lock).
pub fn release(interface: &str, ip: IpAddr, port: u16, lock_dir: &std::path::Path) -> Result<(), String> {
    let cfg = ServerConfig {
        address: ip,
        port,
        interface: interface.to_string(),
        upstreams: Vec::new(),
        workers: 0,
        lock_dir: lock_dir.to_path_buf(),
    };
    match take_lock(&cfg) {
        Ok(_lock) => {
            remove_address(interface, ip)?;
            let _ = std::fs::remove_file(lock_path(&cfg));
            Ok(())
        }
        Err(e) if e.contains("already served") => {
            tracing::info!("leaving {ip} on {interface}: {e}");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn lock_path(cfg: &ServerConfig) -> PathBuf {
    cfg.lock_dir.join(format!("dns-{}-{}.lock", cfg.address, cfg.port))
}

fn take_lock(cfg: &ServerConfig) -> Result<Lock, String> {
    std::fs::create_dir_all(&cfg.lock_dir)
        .map_err(|e| format!("failed to create {}: {e}", cfg.lock_dir.display()))?;
    let path = lock_path(cfg);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("failed to open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        if e == nix::errno::Errno::EWOULDBLOCK {
            format!(
                "the cluster DNS address {}:{} is already served by another node agent on this host",
                cfg.address, cfg.port
            )
        } else {
            format!("failed to lock {}: {e}", path.display())
        }
    })
}

/// A running server: the address it serves and whether it is serving yet.
#[derive(Clone)]
pub struct Running {
    serving: tokio::sync::watch::Receiver<bool>,
}

impl Running {
    /// Whether the sockets are bound.
    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// Waits until the sockets are bound.
    pub async fn wait_serving(&mut self) {
        let _ = self.serving.wait_for(|s| *s).await;
    }
}

/// Starts the server on its own threads: takes the address's lock, makes the address
/// local, binds and serves; retries (logging why) until it can.
pub fn spawn(cfg: ServerConfig, handler: Handler) -> Running {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let spawned = std::thread::Builder::new().name("capstan-dns".into()).spawn(move || {
        let mut last_error = String::new();
        loop {
            let attempt = take_lock(&cfg).and_then(|lock| {
                ensure_address(&cfg.interface, cfg.address)?;
                Ok((lock, bind_all(&cfg)?))
            });
            let (lock, sockets) = match attempt {
                Ok(x) => x,
                Err(e) => {
                    if e != last_error {
                        tracing::warn!(
                            "cluster DNS is not serving (retrying every {}s): {e}",
                            RETRY.as_secs()
                        );
                        last_error = e;
                    }
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
            tracing::info!(
                address = %cfg.address, port = cfg.port, upstreams = ?cfg.upstreams,
                "cluster DNS serving"
            );
            let mut workers = Vec::new();
            for (i, s) in sockets.into_iter().enumerate() {
                let (h, upstreams) = (handler.clone(), cfg.upstreams.clone());
                let w = std::thread::Builder::new()
                    .name(format!("capstan-dns-{i}"))
                    .spawn(move || run_worker(s, h, upstreams));
                match w {
                    Ok(w) => workers.push(w),
                    Err(e) => tracing::error!("cannot start a DNS worker thread: {e}"),
                }
            }
            let _ = tx.send(!workers.is_empty());
            for w in workers {
                let _ = w.join();
            }
            // Workers end only when their runtime fails: start over.
            let _ = tx.send(false);
            drop(lock);
            last_error.clear();
            std::thread::sleep(RETRY);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the cluster DNS thread: {e}");
    }
    Running { serving: rx }
}

fn run_worker(s: Sockets, handler: Handler, upstreams: Vec<SocketAddr>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start a DNS worker runtime: {e}");
            return;
        }
    };
    let result: std::io::Result<()> = rt.block_on(async move {
        let udp = Arc::new(UdpSocket::from_std(s.udp)?);
        let tcp = TcpListener::from_std(s.tcp)?;
        let fwd = Forwarder::start(upstreams).await?;
        tokio::spawn(serve_tcp(tcp, handler.clone(), fwd.clone()));
        serve_udp(udp, handler, fwd).await;
        Ok(())
    });
    if let Err(e) = result {
        tracing::error!("DNS worker failed: {e}");
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, handler: Handler, fwd: Arc<Forwarder>) {
    let mut buf = vec![0u8; 4096];
    let mut cache = AnswerCache::default();
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("dns recv failed: {e}");
                continue;
            }
        };
        let packet = &buf[..n];
        if let Some(answer) = cache.get(packet, handler.generation()).or_else(|| fwd.cached(packet)) {
            if socket.try_send_to(&answer, peer).is_err() {
                let _ = socket.send_to(&answer, peer).await;
            }
            continue;
        }
        match handler.handle(packet, Transport::Udp) {
            Reply::Now(answer) => {
                if socket.try_send_to(&answer, peer).is_err() {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
            Reply::Cacheable(answer, generation) => {
                cache.put(packet, &answer, generation);
                if socket.try_send_to(&answer, peer).is_err() {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
            Reply::Forward => fwd.forward(packet, socket.clone(), peer),
            Reply::Chase(chase) => {
                let (socket, fwd) = (socket.clone(), fwd.clone());
                tokio::spawn(async move {
                    let up = match chase.upstream_query(0) {
                        Some(q) => fwd.query(&q).await,
                        None => None,
                    };
                    let _ = socket.send_to(&chase.finish(up.as_deref()), peer).await;
                });
            }
            Reply::Drop => {}
        }
    }
}

async fn serve_tcp(listener: TcpListener, handler: Handler, fwd: Arc<Forwarder>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(TCP_MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("dns accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the limit: the connection is closed at once.
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
        let (h, f) = (handler.clone(), fwd.clone());
        tokio::spawn(async move {
            let _ = serve_connection(stream, h, f).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    handler: Handler,
    fwd: Arc<Forwarder>,
) -> std::io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(n)) => usize::from(n),
            _ => return Ok(()),
        };
        let mut msg = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let answer = match handler.handle(&msg, Transport::Tcp) {
            Reply::Now(a) | Reply::Cacheable(a, _) => a,
            Reply::Forward => match fwd.query_tcp(&msg).await {
                Some(a) => a,
                None => super::forward::servfail(&msg, u16::from_be_bytes([msg[0], msg[1]])),
            },
            Reply::Chase(chase) => {
                let up = match chase.upstream_query(0) {
                    Some(q) => fwd.query(&q).await,
                    None => None,
                };
                chase.finish(up.as_deref())
            }
            Reply::Drop => return Ok(()),
        };
        let Ok(n) = u16::try_from(answer.len()) else { return Ok(()) };
        let mut out = Vec::with_capacity(answer.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&answer);
        stream.write_all(&out).await?;
    }
}
