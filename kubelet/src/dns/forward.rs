//! Forwarding to the node's resolvers: raw packets, not re-encoded. A forwarded query gets
//! a fresh random id (the asker's id is restored on the way back), goes out on a socket
//! connected to one upstream, and the answer is matched by id and question. An upstream
//! that stays silent for [`TRY_TIMEOUT`] gets the query passed to the next one; when every
//! try is used up the asker gets SERVFAIL.
//!
//! Answers that came back over UDP (NOERROR or NXDOMAIN, not truncated) are kept per worker
//! for their smallest TTL (at most [`MAX_CACHE_TTL`]) and served again with their TTLs
//! counted down, as CoreDNS's `cache` plugin does; the question's exact bytes (case, flags,
//! EDNS) are the key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

/// How long one upstream gets to answer.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest datagram read from an upstream.
const MAX_DATAGRAM: usize = 65535;
/// The longest a forwarded answer is kept.
pub const MAX_CACHE_TTL: u32 = 300;
/// Most forwarded answers a worker keeps.
const MAX_CACHED: usize = 16_384;

/// A forwarded answer kept for reuse.
struct Cached {
    answer: Vec<u8>,
    /// Where each record's TTL is in `answer`.
    ttls: Vec<usize>,
    stored: Instant,
    expires: Instant,
}

/// The byte offsets of the TTLs of every record of a DNS message except OPT, and the
/// smallest of them; `None` when the message cannot be walked or has no record.
pub fn ttl_offsets(m: &[u8]) -> Option<(Vec<usize>, u32)> {
    let count = |i: usize| m.get(i..i + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let skip_name = |mut i: usize| -> Option<usize> {
        loop {
            let len = *m.get(i)?;
            if len == 0 {
                return Some(i + 1);
            }
            if len & 0xc0 == 0xc0 {
                return Some(i + 2);
            }
            if len & 0xc0 != 0 {
                return None;
            }
            i += 1 + usize::from(len);
        }
    };
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(i)? + 4;
    }
    let mut offsets = Vec::new();
    let mut min = u32::MAX;
    for _ in 0..an + ns + ar {
        i = skip_name(i)?;
        let ty = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let ttl = m.get(i + 4..i + 8)?;
        if ty != 41 {
            min = min.min(u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]));
            offsets.push(i + 4);
        }
        let rdlen = usize::from(u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]));
        i += 10 + rdlen;
        if i > m.len() {
            return None;
        }
    }
    (!offsets.is_empty()).then_some((offsets, min))
}

enum ReplyTo {
    Client { socket: Arc<UdpSocket>, addr: SocketAddr },
    Waiter(oneshot::Sender<Vec<u8>>),
}

struct Pending {
    reply: ReplyTo,
    orig_id: u16,
    /// The query as sent (with our id).
    query: Vec<u8>,
    question_end: usize,
    sent: Instant,
    upstream: usize,
    tries: usize,
}

/// Where a message's question section ends (the header plus one question), if it is
/// well formed and uncompressed, as questions are.
pub fn question_end(p: &[u8]) -> Option<usize> {
    if p.len() < 12 || u16::from_be_bytes([p[4], p[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    loop {
        let len = usize::from(*p.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    let end = i + 4;
    (end <= p.len()).then_some(end)
}

/// A SERVFAIL answer to `query` (its header and question), with `id`.
pub fn servfail(query: &[u8], id: u16) -> Vec<u8> {
    let end = question_end(query).unwrap_or(12.min(query.len()));
    let mut out = query[..end].to_vec();
    out.resize(12.max(end), 0);
    out[..2].copy_from_slice(&id.to_be_bytes());
    out[2] = 0x80 | (out[2] & 0x79);
    out[3] = 0x80 | 2; // RA, SERVFAIL
    let qd: u16 = if end > 12 { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    out
}

/// Forwards queries to a fixed list of upstream resolvers.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    sockets: Vec<Arc<UdpSocket>>,
    pending: Mutex<HashMap<u16, Pending>>,
    rng: Mutex<u64>,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
}

impl Forwarder {
    /// Connects a socket to each upstream and starts receiving on the current tokio
    /// runtime. With no upstreams, every forwarded query is answered SERVFAIL.
    pub async fn start(upstreams: Vec<SocketAddr>) -> std::io::Result<Arc<Forwarder>> {
        let mut sockets = Vec::new();
        for u in &upstreams {
            let local: SocketAddr =
                if u.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
            let s = UdpSocket::bind(local).await?;
            s.connect(u).await?;
            sockets.push(Arc::new(s));
        }
        let seed = u64::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..8].try_into().unwrap_or([7; 8])) | 1;
        let fwd = Arc::new(Forwarder {
            upstreams,
            sockets,
            pending: Mutex::new(HashMap::new()),
            rng: Mutex::new(seed),
            cache: Mutex::new(HashMap::new()),
        });
        for i in 0..fwd.sockets.len() {
            let f = Arc::downgrade(&fwd);
            let s = fwd.sockets[i].clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    let n = match s.recv(&mut buf).await {
                        Ok(n) => n,
                        // ICMP errors surface here on a connected socket: the sweeper retries.
                        Err(_) => continue,
                    };
                    let Some(f) = f.upgrade() else { return };
                    f.answered(&mut buf[..n]);
                }
            });
        }
        let f = Arc::downgrade(&fwd);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(f) = f.upgrade() else { return };
                f.sweep();
            }
        });
        Ok(fwd)
    }

    /// The upstreams, in order.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn next_random(&self) -> u64 {
        let mut s = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// A kept answer to `packet` (the same bytes after the id), with its id and its TTLs
    /// counted down, if it has not expired.
    pub fn cached(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let key = packet.get(2..)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(key)?;
        let now = Instant::now();
        if now >= c.expires {
            cache.remove(key);
            return None;
        }
        let elapsed = u32::try_from(now.duration_since(c.stored).as_secs()).unwrap_or(u32::MAX);
        let mut a = c.answer.clone();
        a[..2].copy_from_slice(&packet[..2]);
        for &o in &c.ttls {
            let ttl = u32::from_be_bytes([a[o], a[o + 1], a[o + 2], a[o + 3]]).saturating_sub(elapsed);
            a[o..o + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        Some(a)
    }

    /// Keeps `answer` to `query` (bytes after the id) when it may be reused.
    fn keep(&self, query: &[u8], answer: &[u8]) {
        let rcode = answer[3] & 0x0f;
        if answer[2] & 0x02 != 0 || (rcode != 0 && rcode != 3) {
            return;
        }
        let Some((ttls, min)) = ttl_offsets(answer) else { return };
        let ttl = min.min(MAX_CACHE_TTL);
        if ttl == 0 {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            query[2..].to_vec(),
            Cached {
                answer: answer.to_vec(),
                ttls,
                stored: now,
                expires: now + Duration::from_secs(ttl.into()),
            },
        );
    }

    /// Sends `packet` upstream and later answers `addr` through `socket`.
    pub fn forward(&self, packet: &[u8], socket: Arc<UdpSocket>, addr: SocketAddr) {
        let orig_id = u16::from_be_bytes([packet[0], packet[1]]);
        if let Err(ReplyTo::Client { socket, addr }) = self.send(packet, ReplyTo::Client { socket, addr }) {
            let _ = socket.try_send_to(&servfail(packet, orig_id), addr);
        }
    }

    /// Sends `packet` upstream and waits for the answer (`None`: no upstream answered).
    /// A truncated answer is asked again over TCP.
    pub async fn query(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        self.send(packet, ReplyTo::Waiter(tx)).ok()?;
        let answer = rx.await.ok()?;
        if answer.len() > 2 && answer[2] & 0x02 != 0 {
            return self.query_tcp(packet).await.or(Some(answer));
        }
        Some(answer)
    }

    /// Asks the upstreams in turn over TCP (the asker's id is kept).
    pub async fn query_tcp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let len = u16::try_from(packet.len()).ok()?;
        for u in &self.upstreams {
            let attempt = async {
                let mut s = TcpStream::connect(u).await.ok()?;
                let mut msg = Vec::with_capacity(packet.len() + 2);
                msg.extend_from_slice(&len.to_be_bytes());
                msg.extend_from_slice(packet);
                s.write_all(&msg).await.ok()?;
                let n = s.read_u16().await.ok()?;
                let mut buf = vec![0u8; usize::from(n)];
                s.read_exact(&mut buf).await.ok()?;
                Some(buf)
            };
            if let Ok(Some(b)) = tokio::time::timeout(TRY_TIMEOUT, attempt).await {
                if b.len() >= 12 && b[..2] == packet[..2] {
                    return Some(b);
                }
            }
        }
        None
    }

    /// Registers and sends; gives the reply target back when the query cannot be sent.
    fn send(&self, packet: &[u8], reply: ReplyTo) -> Result<(), ReplyTo> {
        if self.sockets.is_empty() || packet.len() < 12 {
            return Err(reply);
        }
        let Some(question_end) = question_end(packet) else { return Err(reply) };
        let orig_id = u16::from_be_bytes([packet[0], packet[1]]);
        let mut query = packet.to_vec();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut id = None;
        for _ in 0..64 {
            let candidate = self.next_random() as u16;
            if !pending.contains_key(&candidate) {
                id = Some(candidate);
                break;
            }
        }
        let Some(id) = id else { return Err(reply) };
        query[..2].copy_from_slice(&id.to_be_bytes());
        let upstream = usize::from(id) % self.sockets.len();
        let _ = self.sockets[upstream].try_send(&query);
        pending.insert(
            id,
            Pending { reply, orig_id, query, question_end, sent: Instant::now(), upstream, tries: 1 },
        );
        Ok(())
    }

    fn answered(&self, answer: &mut [u8]) {
        if answer.len() < 12 || answer[2] & 0x80 == 0 {
            return;
        }
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let p = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = pending.get(&id) else { return };
            // The question must be the one asked (case aside), or it is not our answer.
            let q = &p.query[12..p.question_end];
            let same = answer.get(12..p.question_end).is_some_and(|a| a.eq_ignore_ascii_case(q));
            if !same {
                return;
            }
            pending.remove(&id).expect("present")
        };
        answer[..2].copy_from_slice(&p.orig_id.to_be_bytes());
        match p.reply {
            ReplyTo::Client { socket, addr } => {
                let _ = socket.try_send_to(answer, addr);
                self.keep(&p.query, answer);
            }
            ReplyTo::Waiter(tx) => {
                let _ = tx.send(answer.to_vec());
            }
        }
    }

    /// Retries queries whose upstream is silent on the next one; gives up on the others.
    fn sweep(&self) {
        let now = Instant::now();
        let tries = self.sockets.len().max(2);
        let mut failed = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let late: Vec<u16> = pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.sent) >= TRY_TIMEOUT)
                .map(|(id, _)| *id)
                .collect();
            for id in late {
                let Some(p) = pending.get_mut(&id) else { continue };
                if p.tries < tries {
                    p.tries += 1;
                    p.upstream = (p.upstream + 1) % self.sockets.len();
                    p.sent = now;
                    let _ = self.sockets[p.upstream].try_send(&p.query);
                } else if let Some(p) = pending.remove(&id) {
                    failed.push(p);
                }
            }
        }
        for p in failed {
            match p.reply {
                ReplyTo::Client { socket, addr } => {
                    let _ = socket.try_send_to(&servfail(&p.query, p.orig_id), addr);
                }
                // Dropping the sender tells the waiter.
                ReplyTo::Waiter(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_bounds_and_servfail() {
        // id 0x0102, RD, one question: "a.b" A IN.
        let q = [1, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, b'a', 1, b'b', 0, 0, 1, 0, 1, 0xff, 0xff];
        assert_eq!(question_end(&q), Some(21));
        assert_eq!(question_end(&q[..19]), None);
        let f = servfail(&q, 9);
        assert_eq!(f.len(), 21);
        assert_eq!(&f[..4], &[0, 9, 0x81, 0x82]);
        assert_eq!(&f[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(servfail(&q[..5], 3).len(), 12);
    }

    #[tokio::test]
    async fn answers_are_kept_for_their_ttl_and_counted_down() {
        // "a" A IN, answered with one A record of TTL 60 (name compressed to the question).
        let q = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1];
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a[7] = 1;
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
        assert_eq!(ttl_offsets(&a), Some((vec![25], 60)));
        let fwd = Forwarder::start(vec![]).await.unwrap();
        fwd.keep(&q, &a);
        let mut again = q;
        again[..2].copy_from_slice(&[0x56, 0x78]);
        let hit = fwd.cached(&again).expect("kept");
        assert_eq!(&hit[..2], &[0x56, 0x78]);
        assert_eq!(&hit[2..], &a[2..]);
        // Another question (case differs) is not served from it; SERVFAIL is never kept.
        let mut other = q;
        other[13] = b'A';
        assert!(fwd.cached(&other).is_none());
        let mut fail = a.clone();
        fail[3] = 2;
        fwd.keep(&other, &fail);
        assert!(fwd.cached(&other).is_none());
        // A walk that runs off the end is refused.
        assert_eq!(ttl_offsets(&a[..30]), None);
    }

    #[tokio::test]
    async fn forwards_and_restores_ids() {
        // A fake upstream that answers every query with its question and the flag QR.
        let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let (n, from) = up.recv_from(&mut buf).await.unwrap();
                buf[2] |= 0x80;
                up.send_to(&buf[..n], from).await.unwrap();
            }
        });
        let fwd = Forwarder::start(vec![up_addr]).await.unwrap();
        let q = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1];
        let a = fwd.query(&q).await.unwrap();
        assert_eq!(&a[..2], &[0xab, 0xcd]);
        assert_eq!(a[2] & 0x80, 0x80);
        assert!(fwd.pending.lock().unwrap().is_empty());
        // Nobody upstream: SERVFAIL-less None after the tries.
        let dead = Forwarder::start(vec![]).await.unwrap();
        assert_eq!(dead.query(&q).await, None);
    }
}
