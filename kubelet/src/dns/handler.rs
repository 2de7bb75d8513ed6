//! One DNS message in, one decision out: an answer from the cluster's records, "forward
//! this upstream", "resolve this ExternalName target upstream first", or nothing.
//!
//! Nothing here blocks or awaits, so the server answers cluster names on its receive path;
//! malformed input becomes FORMERR (or is dropped when it is not even a DNS header), never
//! a panic.

use super::records::{Index, Outcome};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The largest UDP answer this server sends when the asker advertises more (EDNS).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// CNAME hops followed inside the cluster zone.
const MAX_ALIAS_HOPS: usize = 8;

/// How the question arrived (it decides the size limit of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: answers beyond 512 bytes (or the EDNS size) are truncated (TC).
    Udp,
    /// A stream: answers up to 64 KiB.
    Tcp,
}

/// What to do with a message.
#[derive(Debug)]
pub enum Reply {
    /// Send these bytes back.
    Now(Vec<u8>),
    /// Send these bytes back; the same question (the same bytes after the id) gets the
    /// same answer for as long as the records stay at this generation.
    Cacheable(Vec<u8>, u64),
    /// Not the cluster's: send the packet as it is to the node's resolvers.
    Forward,
    /// An ExternalName alias to resolve upstream before answering.
    Chase(Box<Chase>),
    /// Not worth an answer (too short for a header, or a response).
    Drop,
}

/// An answer waiting for its ExternalName target to be resolved upstream.
#[derive(Debug)]
pub struct Chase {
    response: Message,
    limit: usize,
    /// The name to resolve.
    pub target: Name,
    /// The type asked.
    pub qtype: RecordType,
}

impl Chase {
    /// A query for the target to send upstream, with `id`.
    pub fn upstream_query(&self, id: u16) -> Option<Vec<u8>> {
        let mut q = Message::query();
        q.metadata.id = id;
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(self.target.clone(), self.qtype));
        q.to_vec().ok()
    }

    /// The final answer: the CNAME chain plus what upstream said (`None`: it did not
    /// answer, SERVFAIL).
    pub fn finish(mut self, upstream: Option<&[u8]>) -> Vec<u8> {
        self.response.metadata.authoritative = false;
        match upstream.and_then(|b| Message::from_vec(b).ok()) {
            Some(up) => {
                self.response.metadata.response_code = up.metadata.response_code;
                self.response.answers.extend(up.answers);
                if self.response.metadata.response_code == ResponseCode::NXDomain
                    || self.response.answers.iter().all(|r| r.record_type() == RecordType::CNAME)
                {
                    self.response.authorities.extend(up.authorities);
                }
            }
            None => self.response.metadata.response_code = ResponseCode::ServFail,
        }
        encode(&self.response, self.limit)
    }
}

/// Answers questions from an [`Index`].
#[derive(Clone)]
pub struct Handler {
    index: Arc<RwLock<Index>>,
    generation: Arc<AtomicU64>,
}

/// A bare header answer (no question) for a message hickory could not decode.
fn header_error(packet: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[0] = packet[0];
    out[1] = packet[1];
    // QR, the opcode and RD kept; AA, TC cleared.
    out[2] = 0x80 | (packet[2] & 0x79);
    out[3] = rcode.low() & 0x0f;
    out
}

fn encode(msg: &Message, limit: usize) -> Vec<u8> {
    match msg.to_vec() {
        Ok(b) if b.len() <= limit => b,
        Ok(_) => msg.truncate().to_vec().unwrap_or_else(|_| servfail_bytes(msg)),
        Err(_) => servfail_bytes(msg),
    }
}

fn servfail_bytes(msg: &Message) -> Vec<u8> {
    let mut m = Message::error_msg(msg.metadata.id, msg.metadata.op_code, ResponseCode::ServFail);
    m.add_queries(msg.queries.iter().cloned());
    m.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; 12];
        h[..2].copy_from_slice(&msg.metadata.id.to_be_bytes());
        h[2] = 0x80;
        h[3] = 2;
        h
    })
}

impl Handler {
    /// A handler over `index`.
    pub fn new(index: Arc<RwLock<Index>>) -> Handler {
        let generation = index.read().unwrap_or_else(|e| e.into_inner()).generation();
        Handler { index, generation }
    }

    /// The records' current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Decides what to do with one message.
    pub fn handle(&self, packet: &[u8], transport: Transport) -> Reply {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return Reply::Drop;
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return Reply::Now(header_error(packet, ResponseCode::FormErr)),
        };
        let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
        resp.metadata.recursion_desired = req.metadata.recursion_desired;
        resp.metadata.checking_disabled = req.metadata.checking_disabled;
        resp.metadata.recursion_available = true;
        let limit = match (transport, &req.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
            (Transport::Udp, None) => 512,
        };
        if let Some(e) = &req.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD);
            edns.set_version(0);
            resp.set_edns(edns);
            if e.version() > 0 {
                resp.metadata.response_code = ResponseCode::BADVERS;
                return Reply::Now(encode(&resp, limit));
            }
        }
        if req.metadata.op_code != OpCode::Query {
            resp.add_queries(req.queries.iter().cloned());
            resp.metadata.response_code = ResponseCode::NotImp;
            return Reply::Now(encode(&resp, limit));
        }
        let [query] = &req.queries[..] else {
            resp.metadata.response_code = ResponseCode::FormErr;
            return Reply::Now(encode(&resp, limit));
        };
        resp.add_query(query.clone());
        let qname = query.name().clone();
        let qtype = query.query_type();
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation();
        let ours = index.in_zone(&qname);
        if ours
            && (query.query_class() != DNSClass::IN || matches!(qtype, RecordType::AXFR | RecordType::IXFR))
        {
            resp.metadata.response_code = ResponseCode::Refused;
            return Reply::Now(encode(&resp, limit));
        }
        let mut outcome = index.lookup(&qname, qtype);
        if matches!(outcome, Outcome::NotOurs) {
            return Reply::Forward;
        }
        resp.metadata.authoritative = true;
        // ExternalName aliases: follow those inside the zone here.
        for _ in 0..MAX_ALIAS_HOPS {
            let Outcome::Alias { cname, target } = outcome else { break };
            resp.add_answer(*cname);
            if !index.in_zone(&target) {
                return Reply::Chase(Box::new(Chase { response: resp, limit, target, qtype }));
            }
            outcome = index.lookup(&target, qtype);
        }
        match outcome {
            Outcome::Answer { answers, additionals } => {
                let nodata = answers.is_empty() && resp.answers.is_empty();
                resp.add_answers(answers);
                resp.add_additionals(additionals);
                if nodata {
                    resp.add_authority(index.soa());
                }
            }
            Outcome::NxDomain => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(index.soa());
            }
            // A chain longer than the hops allowed, or that left the zone's records.
            Outcome::Alias { .. } | Outcome::NotOurs => resp.metadata.response_code = ResponseCode::ServFail,
        }
        Reply::Cacheable(encode(&resp, limit), generation)
    }
}

/// Most answers a [`AnswerCache`] keeps: enough for every name of a cluster of 10,000
/// Services asked in turn (at ≈ 150 bytes an entry, ≤ 2.5 MB per worker when full). With
/// 4,096 a cyclic walk over 10,000 names emptied the cache before any answer was reused,
/// and the many-names benchmark ran at 0.85× dnsmasq.
const CACHE_ENTRIES: usize = 16_384;

/// One worker's cache of the cluster's own answers, keyed by the question's bytes after
/// the id, emptied whenever the records change (CoreDNS's `cache` plugin does this job
/// with TTLs; here the generation says exactly when an answer went stale).
#[derive(Default)]
pub struct AnswerCache {
    generation: u64,
    answers: HashMap<Vec<u8>, Vec<u8>>,
}

impl AnswerCache {
    /// The cached answer to `packet` with its id, if the records did not change since.
    pub fn get(&mut self, packet: &[u8], generation: u64) -> Option<Vec<u8>> {
        if self.generation != generation {
            self.answers.clear();
            self.generation = generation;
            return None;
        }
        let mut a = self.answers.get(packet.get(2..)?)?.clone();
        a[..2].copy_from_slice(&packet[..2]);
        Some(a)
    }

    /// Keeps `answer` to `packet`, computed at `generation`.
    pub fn put(&mut self, packet: &[u8], answer: &[u8], generation: u64) {
        if generation != self.generation || packet.len() < 12 || answer.len() < 12 {
            return;
        }
        if self.answers.len() >= CACHE_ENTRIES {
            self.answers.clear();
        }
        self.answers.insert(packet[2..].to_vec(), answer.to_vec());
    }
}

/// The records of a decoded answer (for tests and the benchmark).
pub fn answers_of(bytes: &[u8]) -> Option<(ResponseCode, Vec<Record>)> {
    let m = Message::from_vec(bytes).ok()?;
    (m.metadata.message_type == MessageType::Response).then_some((m.metadata.response_code, m.answers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn handler() -> Handler {
        let mut ix = Index::new("cluster.local", "10.96.0.10".parse().unwrap()).unwrap();
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "web"},
                    "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80}]}}),
            true,
        );
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "ext"},
                    "spec": {"type": "ExternalName", "externalName": "example.org"}}),
            true,
        );
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "inner"},
                    "spec": {"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}}),
            true,
        );
        ix.set_service(
            &json!({"metadata": {"namespace": "default", "name": "big"}, "spec": {"clusterIP": "None"}}),
            true,
        );
        let endpoints: Vec<_> = (0..50)
            .map(|i| json!({"addresses": [format!("10.88.1.{i}")], "conditions": {"ready": true}}))
            .collect();
        ix.set_slice(
            &json!({"metadata": {"namespace": "default", "name": "big-1",
                                 "labels": {"kubernetes.io/service-name": "big"}},
                    "endpoints": endpoints}),
            true,
        );
        Handler::new(Arc::new(RwLock::new(ix)))
    }

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn answer(h: &Handler, q: &[u8], t: Transport) -> Message {
        match h.handle(q, t) {
            Reply::Now(b) | Reply::Cacheable(b, _) => Message::from_vec(&b).unwrap(),
            other => panic!("no answer: {other:?}"),
        }
    }

    #[test]
    fn answers_nodata_nxdomain_and_forwarding() {
        let h = handler();
        let m = answer(&h, &query("web.default.svc.cluster.local.", RecordType::A, false), Transport::Udp);
        assert_eq!(m.metadata.id, 4242);
        assert!(m.metadata.authoritative && m.metadata.recursion_available && m.metadata.recursion_desired);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 5);
        let m = answer(&h, &query("web.default.svc.cluster.local.", RecordType::AAAA, false), Transport::Udp);
        assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        let m = answer(&h, &query("nope.default.svc.cluster.local.", RecordType::A, false), Transport::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(
            h.handle(&query("example.org.", RecordType::A, false), Transport::Udp),
            Reply::Forward
        ));
        // An alias inside the zone is followed here; one outside goes upstream.
        let m = answer(&h, &query("inner.default.svc.cluster.local.", RecordType::A, false), Transport::Udp);
        assert_eq!(m.answers.len(), 2);
        let Reply::Chase(c) =
            h.handle(&query("ext.default.svc.cluster.local.", RecordType::A, false), Transport::Udp)
        else {
            panic!("no chase")
        };
        assert_eq!(c.target, Name::from_ascii("example.org.").unwrap());
        let mut up = Message::response(7, OpCode::Query);
        up.add_answer(Record::from_rdata(
            c.target.clone(),
            60,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A("192.0.2.1".parse().unwrap())),
        ));
        let m = Message::from_vec(&c.finish(Some(&up.to_vec().unwrap()))).unwrap();
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.metadata.id, 4242);
    }

    #[test]
    fn cached_answers_follow_the_records() {
        let h = handler();
        let mut cache = AnswerCache::default();
        let q = query("web.default.svc.cluster.local.", RecordType::A, false);
        let g = h.generation();
        assert!(cache.get(&q, g).is_none());
        let Reply::Cacheable(a, at) = h.handle(&q, Transport::Udp) else { panic!("not cacheable") };
        cache.put(&q, &a, at);
        let mut q2 = q.clone();
        q2[..2].copy_from_slice(&[0x77, 0x01]);
        let hit = cache.get(&q2, h.generation()).expect("a hit");
        assert_eq!(&hit[..2], &[0x77, 0x01]);
        assert_eq!(hit[2..], a[2..]);
        // A change of the records empties it.
        h.index
            .write()
            .unwrap()
            .set_service(&serde_json::json!({"metadata": {"namespace": "default", "name": "web"}}), false);
        assert!(cache.get(&q2, h.generation()).is_none());
        let m = answer(&h, &q2, Transport::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn truncation_and_edns() {
        let h = handler();
        let q = query("big.default.svc.cluster.local.", RecordType::A, false);
        let m = answer(&h, &q, Transport::Udp);
        assert!(m.metadata.truncation && m.answers.is_empty());
        let m = answer(&h, &q, Transport::Tcp);
        assert_eq!(m.answers.len(), 50);
        let m = answer(&h, &query("big.default.svc.cluster.local.", RecordType::A, true), Transport::Udp);
        assert!(!m.metadata.truncation && m.answers.len() == 50 && m.edns.is_some());
    }

    #[test]
    fn malformed_packets_never_panic() {
        let h = handler();
        // Too short, and responses: dropped.
        assert!(matches!(h.handle(&[1, 2, 3], Transport::Udp), Reply::Drop));
        let mut resp = query("web.default.svc.cluster.local.", RecordType::A, false);
        resp[2] |= 0x80;
        assert!(matches!(h.handle(&resp, Transport::Udp), Reply::Drop));
        // A header promising a question that is not there: FORMERR with the same id.
        let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let m = answer(&h, &bad, Transport::Udp);
        assert_eq!((m.metadata.id, m.metadata.response_code), (0x1234, ResponseCode::FormErr));
        bad[5] = 0;
        let m = answer(&h, &bad, Transport::Udp);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Thousands of mutations of valid queries: every one is answered, forwarded or dropped.
        let seeds = [
            query("web.default.svc.cluster.local.", RecordType::A, true),
            query("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV, false),
            query("5.5.96.10.in-addr.arpa.", RecordType::PTR, false),
            query("ext.default.svc.cluster.local.", RecordType::AAAA, true),
            query("big.default.svc.cluster.local.", RecordType::ANY, false),
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut answered = 0;
        for i in 0..5000 {
            let mut p = seeds[i % seeds.len()].clone();
            match next() % 4 {
                0 => {
                    let at = (next() as usize) % p.len();
                    p[at] = next() as u8;
                }
                1 => {
                    for _ in 0..(next() % 8) {
                        let at = (next() as usize) % p.len();
                        p[at] ^= 1 << (next() % 8);
                    }
                }
                2 => p.truncate((next() as usize) % p.len()),
                _ => {
                    let extra = (next() % 64) as usize;
                    p.extend((0..extra).map(|_| next() as u8));
                    // Counts that promise more than there is.
                    if p.len() > 11 {
                        p[7] = next() as u8;
                        p[11] = next() as u8;
                    }
                }
            }
            match h.handle(&p, if i % 2 == 0 { Transport::Udp } else { Transport::Tcp }) {
                Reply::Now(b) | Reply::Cacheable(b, _) => {
                    answered += 1;
                    assert!(b.len() >= 12);
                    assert_eq!(b[..2], p[..2], "the answer keeps the id");
                    assert!(b[2] & 0x80 != 0, "the answer is a response");
                    if i % 2 == 0 {
                        assert!(b.len() <= usize::from(MAX_UDP_PAYLOAD));
                    }
                }
                Reply::Chase(c) => {
                    let _ = c.finish(None);
                }
                Reply::Forward | Reply::Drop => {}
            }
        }
        assert!(answered > 1000, "only {answered} answered");
    }
}
