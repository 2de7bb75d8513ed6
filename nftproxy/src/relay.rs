//! Userspace TCP relays for endpoints on loopback.
//!
//! `capstan up` serves the API on 127.0.0.1, and the `kubernetes` Service's EndpointSlice
//! says so; pods cannot reach the node's loopback (DNAT to 127.0.0.0/8 needs
//! `route_localnet`, which exposes every loopback service to the network). So for each such
//! endpoint the proxy listens on the node's pod-network gateway address (the bridge's IP,
//! which every pod routes through) on a free port, relays each connection to the loopback
//! address, and the Service's rules DNAT to the relay instead. The socket is bound with
//! `IP_FREEBIND`, so it can be opened before the bridge has its address.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// Connections one relay carries at once (more wait for a slot).
const MAX_CONNECTIONS: usize = 1024;

struct Relay {
    addr: SocketAddrV4,
    refs: usize,
    task: tokio::task::JoinHandle<()>,
}

/// The relays of a node, shared by Services through reference counts.
pub struct Relays {
    bind_ip: Ipv4Addr,
    by_target: HashMap<SocketAddrV4, Relay>,
}

impl Relays {
    /// Relays listening on `bind_ip` (the pod bridge's address).
    pub fn new(bind_ip: Ipv4Addr) -> Relays {
        Relays { bind_ip, by_target: HashMap::new() }
    }

    /// The relay for `target` (started on first use); counts one more user.
    pub fn acquire(&mut self, target: SocketAddrV4) -> io::Result<SocketAddrV4> {
        if let Some(r) = self.by_target.get_mut(&target) {
            r.refs += 1;
            return Ok(r.addr);
        }
        let std_listener = listen_freebind(self.bind_ip)?;
        let addr = match std_listener.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => return Err(io::Error::other("relay bound to an IPv6 address")),
        };
        let listener = TcpListener::from_std(std_listener)?;
        let task = tokio::spawn(serve(listener, target));
        tracing::info!(%target, relay = %addr, "service proxy: relaying a loopback endpoint for pods");
        self.by_target.insert(target, Relay { addr, refs: 1, task });
        Ok(addr)
    }

    /// One user fewer; the relay stops with its last user.
    pub fn release(&mut self, target: SocketAddrV4) {
        if let Some(r) = self.by_target.get_mut(&target) {
            r.refs = r.refs.saturating_sub(1);
            if r.refs == 0 {
                if let Some(r) = self.by_target.remove(&target) {
                    r.task.abort();
                }
            }
        }
    }

    /// Target → relay address, for every relay.
    pub fn addresses(&self) -> HashMap<SocketAddrV4, SocketAddrV4> {
        self.by_target.iter().map(|(t, r)| (*t, r.addr)).collect()
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for r in self.by_target.values() {
            r.task.abort();
        }
    }
}

/// A listening TCP socket on `ip`, any free port, bound even if `ip` is not (yet) an
/// address of this host.
fn listen_freebind(ip: Ipv4Addr) -> io::Result<std::net::TcpListener> {
    use rustix::net::{bind, listen, socket_with, sockopt, AddressFamily, SocketFlags, SocketType};
    let fd = socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_ip_freebind(&fd, true)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    bind(&fd, &SocketAddrV4::new(ip, 0))?;
    listen(&fd, 128)?;
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn serve(listener: TcpListener, target: SocketAddrV4) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%target, "relay accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                        tracing::debug!(%target, %peer, "relayed connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!(%target, %peer, "relay cannot connect: {e}"),
            }
        });
    }
}
