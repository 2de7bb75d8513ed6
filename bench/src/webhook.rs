//! `capstan-bench webhook`: what one validating admission webhook adds to a create. Starts
//! `capstan up` (no node) and an HTTPS webhook server in this process (127.0.0.1, its own CA
//! from rcgen given as `caBundle`, HTTP/1.1 keep-alive, answering "allowed" at once), then
//! alternates `--rounds` times: `--creates` ConfigMap creates one after the other on one
//! connection without a webhook, then the same with a ValidatingWebhookConfiguration that
//! matches them. Prints the p50/p99 of each phase (medians over the rounds) and the added
//! latency as one JSON object (summary on stderr).

use anyhow::{bail, Context};
use capstan_bench::client::{Client, Connection, Kubeconfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: capstan-bench webhook [--capstan PATH] [--creates N] [--rounds R]

  --capstan PATH   the capstan binary (default: next to this binary, else `capstan` on PATH)
  --creates N      sequential creates per phase (default 2000)
  --rounds R       without / with webhook alternations; medians are reported (default 3)";

struct Opts {
    capstan: PathBuf,
    creates: usize,
    rounds: usize,
}

fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
    let mut o = Opts { capstan: capstan_bench::default_capstan(), creates: 2000, rounds: 3 };
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--capstan" => o.capstan = PathBuf::from(value()?),
            "--creates" => o.creates = value()?.parse().context("--creates wants a number")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds wants a number")?,
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.creates == 0 || o.rounds == 0 {
        bail!("--creates and --rounds must be at least 1");
    }
    Ok(o)
}

/// Serves one keep-alive connection: every request is an AdmissionReview, answered
/// "allowed".
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    calls: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (head_end, len) = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
                    .unwrap_or(0usize);
                break (i + 4, len);
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        while buf.len() < head_end + len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let review: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
        buf.drain(..head_end + len);
        calls.fetch_add(1, Ordering::Relaxed);
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "response": {"uid": review["request"]["uid"], "allowed": true}})
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await?;
    }
}

/// Starts the webhook server; returns its port, the base64 CA bundle and the call counter.
async fn webhook_server() -> anyhow::Result<(u16, String, Arc<AtomicU64>)> {
    use base64::Engine;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "bench-webhook-ca");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key_der =
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, calls) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = serve(tls, calls).await;
                }
            });
        }
    });
    Ok((port, base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()), calls))
}

async fn create(conn: &mut Connection, name: &str) -> anyhow::Result<Duration> {
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}});
    let headers = [("Content-Type", "application/json"), ("Accept", "application/json")];
    let t = Instant::now();
    let r = conn
        .request("POST", "/api/v1/namespaces/default/configmaps", &headers, &serde_json::to_vec(&body)?)
        .await?;
    let took = t.elapsed();
    if r.status != 201 {
        bail!("creating ConfigMap {name}: {} {}", r.status, r.text());
    }
    Ok(took)
}

/// p50 and p99 in ms of `creates` sequential creates.
async fn phase(conn: &mut Connection, tag: &str, creates: usize) -> anyhow::Result<(f64, f64)> {
    let mut lat = Vec::with_capacity(creates);
    for i in 0..creates {
        lat.push(create(conn, &format!("{tag}-{i}")).await?.as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Ok((at(0.50), at(0.99)))
}

const CONFIG_PATH: &str = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Runs `capstan-bench webhook`.
pub fn main(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let o = parse(args)?;
    let server = crate::crd::start_up(&o.capstan)?;
    let kc = Kubeconfig::load(&server.dir.path().join("admin.kubeconfig"))?;
    let client = Client::new(&kc)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let v = rt.block_on(async {
        let (port, ca, calls) = webhook_server().await?;
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "bench"},
            "webhooks": [{"name": "allow.bench.example.com",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": ca},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}],
                "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Fail"}]});
        let mut conn = client.open().await?;
        let headers = [("Content-Type", "application/json"), ("Accept", "application/json")];
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for round in 0..o.rounds {
            eprintln!("round {}: creates without, then with the webhook", round + 1);
            without.push(phase(&mut conn, &format!("n{round}"), o.creates).await?);
            let r = conn.request("POST", CONFIG_PATH, &headers, &serde_json::to_vec(&config)?).await?;
            if r.status != 201 {
                bail!("creating the webhook configuration: {} {}", r.status, r.text());
            }
            // The gateway reads configurations from its watch cache: wait until creates call it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut i = 0;
            loop {
                create(&mut conn, &format!("probe{round}-{i}")).await?;
                i += 1;
                if calls.load(Ordering::Relaxed) > 0 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the webhook was not called within 10 s");
                }
            }
            let before = calls.load(Ordering::Relaxed);
            with.push(phase(&mut conn, &format!("w{round}"), o.creates).await?);
            let called = calls.load(Ordering::Relaxed) - before;
            if called < o.creates as u64 {
                bail!("the webhook was called {called} times for {} creates", o.creates);
            }
            let r = conn.request("DELETE", &format!("{CONFIG_PATH}/bench"), &[("Accept", "application/json")], b"").await?;
            if r.status != 200 {
                bail!("deleting the webhook configuration: {}", r.status);
            }
            // Until creates stop calling it.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let before = calls.load(Ordering::Relaxed);
                create(&mut conn, &format!("gone{round}-{i}")).await?;
                i += 1;
                if calls.load(Ordering::Relaxed) == before {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("the webhook was still called 10 s after its configuration was deleted");
                }
            }
            calls.store(0, Ordering::Relaxed);
        }
        let p = |v: &[(f64, f64)], i: usize| median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect());
        let (n50, n99, w50, w99) = (p(&without, 0), p(&without, 1), p(&with, 0), p(&with, 1));
        anyhow::Ok(json!({
            "creates": o.creates, "rounds": o.rounds,
            "without_ms": {"p50": round3(n50), "p99": round3(n99)},
            "with_ms": {"p50": round3(w50), "p99": round3(w99)},
            "added_ms": {"p50": round3(w50 - n50), "p99": round3(w99 - n99)},
            "runs": {"without": without, "with": with},
        }))
    })?;
    drop(server);
    println!("{v}");
    eprintln!(
        "create latency without a webhook p50 {} / p99 {} ms; with one validating webhook p50 {} / p99 {} ms; added p50 {} / p99 {} ms",
        v["without_ms"]["p50"], v["without_ms"]["p99"], v["with_ms"]["p50"], v["with_ms"]["p99"],
        v["added_ms"]["p50"], v["added_ms"]["p99"]
    );
    Ok(())
}
