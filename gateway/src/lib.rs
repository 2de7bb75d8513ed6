//! capstan's API service and its HTTPS gateway.
//!
//! The gateway owns the only path to the store: requests are authenticated (TLS client
//! certificates or bearer tokens), authorized through the [`auth::Authorizer`] hook, decoded,
//! defaulted, validated and written in one store transaction by the [`service::ApiService`];
//! lists and watches are answered from the [`cache::Cache`], which tails the store's change
//! log. Every error leaves as a Kubernetes `Status` (see [`status`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! let store = Arc::new(capstan_storage::RedbStore::open(std::path::Path::new("/tmp/x/state.redb"))?);
//! let pki = capstan_gateway::pki::Pki::load_or_create(std::path::Path::new("/tmp/x/pki"), &[])?;
//! let cfg = capstan_gateway::Config { listen: "127.0.0.1:6443".parse()?, ..capstan_gateway::Config::new(pki) };
//! let running = capstan_gateway::start(cfg, store).await?;
//! println!("serving on {}", running.addr);
//! # Ok(()) }
//! ```

// `ApiError` carries Status details inline; errors are not on a hot path.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod aggregator;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod bootstrap;
pub mod busapi;
pub mod cache;
pub mod conversion;
pub mod crds;
pub mod csr;
pub mod discovery;
pub mod dispatch;
pub mod flowcontrol;
pub mod http;
pub mod keys;
mod metrics;
pub mod pki;
pub mod rbac;
pub mod relay;
pub mod reviews;
pub mod service;
pub mod spdy;
pub mod status;
pub mod strategy;
pub mod streams;
pub mod tokens;
pub mod usage;

use auth::User;
use capstan_storage::Store;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Settings of the gateway.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificates.
    pub pki: pki::Pki,
    /// Largest accepted request body (3 MiB as upstream).
    pub max_body_bytes: usize,
    /// Events kept in the watch cache.
    pub watch_cache_events: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// Static bearer tokens.
    pub tokens: HashMap<String, User>,
    /// The bus: when set, the gateway serves the API on it and runs the event relay.
    pub bus: Option<Arc<dyn capstan_bus::Bus>>,
    /// The relay lease holder name. A process that owns its store alone (redb) uses a
    /// fixed name so a restart takes the lease over at once; by default it is unique.
    pub relay_holder: Option<String>,
    /// Revisions of change log kept behind the newest (older ones are compacted away;
    /// watchers and event-stream readers behind them get 410 and relist).
    pub change_log_retention: u64,
    /// Requests worked on at once, besides watches, streams and exempt ones, shared out
    /// among the priority levels (0: no limit); more wait in queues or get 429 (see
    /// [`flowcontrol`]).
    pub max_requests_inflight: usize,
    /// How often the change log is compacted to `change_log_retention`.
    pub compaction_interval: std::time::Duration,
    /// The ranges Service addresses and node ports come from.
    pub service_network: strategy::ServiceNetwork,
    /// The address the `kubernetes` Service's endpoints name (default: the listen address,
    /// or the default route's source address when listening on every address).
    pub advertise_address: Option<std::net::IpAddr>,
    /// Pod Security Admission's cluster defaults and exemptions.
    pub pod_security: admission::pod_security::Config,
    /// The audit log (None: no audit).
    pub audit: Option<audit::Config>,
    /// The cluster's DNS domain (the ServiceAccount token issuer is
    /// `https://kubernetes.default.svc.<domain>`).
    pub cluster_domain: String,
}

impl Config {
    /// Defaults around a PKI.
    pub fn new(pki: pki::Pki) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            pki,
            max_body_bytes: 3 * 1024 * 1024,
            watch_cache_events: 100_000,
            workers: 2,
            tokens: HashMap::new(),
            bus: None,
            relay_holder: None,
            change_log_retention: 100_000,
            compaction_interval: std::time::Duration::from_secs(60),
            max_requests_inflight: 64,
            service_network: strategy::ServiceNetwork::default(),
            advertise_address: None,
            cluster_domain: "cluster.local".into(),
            audit: None,
            pod_security: Default::default(),
        }
    }
}

/// Errors while starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS set-up failed.
    #[error("failed to set up TLS: {0}")]
    Tls(String),
    /// Binding the listener failed.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The API service could not start.
    #[error("failed to start the API service: {0}")]
    Service(#[from] status::ApiError),
    /// The audit log could not be opened.
    #[error("failed to open the audit log: {0}")]
    Audit(#[source] std::io::Error),
    /// The ServiceAccount signing key could not be loaded or created.
    #[error(transparent)]
    Tokens(#[from] tokens::TokenError),
}

/// A running gateway.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The HTTP server (await it, or stop it through its handle).
    pub server: actix_web::dev::Server,
    /// The API service, for in-process callers.
    pub service: Arc<service::ApiService>,
}

/// A client certificate verifier that lets the handshake finish with any certificate the
/// client proves it holds the key of, and leaves the chain check to [`on_connect`]: a
/// certificate from another CA, expired or not yet valid, is then answered with a 401
/// `Status` (as upstream) instead of a TLS alert the client cannot explain.
#[derive(Debug)]
struct CheckedLater {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl rustls::server::danger::ClientCertVerifier for CheckedLater {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The chain check the handshake left to us.
static CLIENT_VERIFIER: std::sync::OnceLock<Arc<dyn rustls::server::danger::ClientCertVerifier>> =
    std::sync::OnceLock::new();

fn tls_config(pki: &pki::Pki) -> Result<rustls::ServerConfig, StartError> {
    let tls = |e: String| StartError::Tls(e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.ca_cert.as_bytes()) {
        let c = c.map_err(|e| tls(format!("failed to read CA certificate: {e}")))?;
        roots.add(c).map_err(|e| tls(format!("failed to add CA certificate: {e}")))?;
    }
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls(format!("failed to build client verifier: {e}")))?;
    let _ = CLIENT_VERIFIER.set(inner.clone());
    let verifier = Arc::new(CheckedLater { inner });
    let chain: Vec<_> = rustls_pemfile::certs(&mut pki.server_cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| tls(format!("failed to read serving certificate: {e}")))?;
    let key = rustls_pemfile::private_key(&mut pki.server_key.as_bytes())
        .map_err(|e| tls(format!("failed to read serving key: {e}")))?
        .ok_or_else(|| tls("no private key in the serving key file".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(format!("invalid serving certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The user a verified client certificate names: CN is the user, each O a group.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(User::new(cn, groups))
}

fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_rt::net::TcpStream>;
    if let Some(tls) = conn.downcast_ref::<Tls>() {
        let (_, session) = tls.get_ref();
        let identity = match session.peer_certificates() {
            None | Some([]) => http::PeerIdentity::None,
            Some([end, intermediates @ ..]) => {
                let verified = match CLIENT_VERIFIER.get() {
                    Some(v) => v
                        .verify_client_cert(end, intermediates, rustls::pki_types::UnixTime::now())
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Err("no client certificate verifier".into()),
                };
                match verified.map(|_| user_from_cert(end.as_ref())) {
                    Ok(Some(u)) => http::PeerIdentity::Valid(u),
                    Ok(None) => http::PeerIdentity::Invalid("the certificate names no user".into()),
                    Err(e) => http::PeerIdentity::Invalid(e),
                }
            }
        };
        ext.insert(identity);
    }
}

/// Compacts the change log once a minute, keeping `retention` revisions and everything
/// the relay has not published yet. With many gateways every one runs this; compaction
/// is idempotent.
async fn compactor(
    store: Arc<dyn Store>,
    retention: u64,
    every: std::time::Duration,
    relayed: Arc<std::sync::atomic::AtomicU64>,
) {
    loop {
        tokio::time::sleep(every).await;
        let current = match store.current_revision().await {
            Ok(c) => c,
            Err(capstan_storage::Error::Closed) => return,
            Err(e) => {
                tracing::warn!("compactor cannot read the revision: {e}");
                continue;
            }
        };
        let keep_from =
            current.saturating_sub(retention).min(relayed.load(std::sync::atomic::Ordering::Relaxed));
        if keep_from > 1 {
            match store.compact(keep_from).await {
                Ok(point) => tracing::debug!(point, "compacted the change log"),
                Err(capstan_storage::Error::Closed) => return,
                Err(e) => tracing::warn!("failed to compact the change log: {e}"),
            }
        }
    }
}

/// Starts the API service and the HTTPS server. Must run inside an actix system.
pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<Running, StartError> {
    let cache = cache::Cache::start(store.clone(), config.watch_cache_events).await?;
    let rbac = rbac::Rbac::start(cache.clone());
    let authorizer: Arc<dyn auth::Authorizer> =
        Arc::new(rbac::node::NodeAuthorizer::new(cache.clone(), rbac.clone()));
    let issuer = format!("https://kubernetes.default.svc.{}", config.cluster_domain);
    let signer = Arc::new(tokens::TokenSigner::load_or_create(&config.pki.dir, &issuer)?);
    let service = Arc::new(
        service::ApiService::new(store, cache.clone(), authorizer.clone())
            .with_service_network(config.service_network.clone())
            .with_tokens(signer.clone())
            .with_csr_signer(Arc::new(csr::Signer::new(
                config.pki.ca_cert.clone(),
                config.pki.ca_key.clone(),
            )))
            .with_admission(admission::Chain::configured(
                Some(signer),
                config.pki.ca_cert.clone(),
                config.pod_security.clone(),
                vec![
                    Arc::new(admission::certificates::Certificates::new(authorizer)),
                    Arc::new(rbac::Escalation::new(rbac)),
                ],
                config.bus.clone(),
            )),
    );
    bootstrap::cluster(&service).await?;
    crds::start(service.clone()).await;
    flowcontrol::config::start(service.clone()).await;
    let aggregator_clients = Arc::new(aggregator::Clients::default());
    aggregator::start(service.clone(), aggregator_clients.clone()).await;
    // With a bus, the change log is kept until the relay has published it.
    let relayed =
        Arc::new(std::sync::atomic::AtomicU64::new(if config.bus.is_some() { 0 } else { u64::MAX }));
    tokio::spawn(compactor(
        service.store().clone(),
        config.change_log_retention,
        config.compaction_interval.max(std::time::Duration::from_millis(100)),
        relayed.clone(),
    ));
    if let Some(bus) = &config.bus {
        let holder = config
            .relay_holder
            .clone()
            .unwrap_or_else(|| format!("gateway-{}-{}", std::process::id(), uuid::Uuid::new_v4()));
        // The relay decodes and re-encodes every change: give it its own thread.
        let relay_thread = actix_rt::Arbiter::new();
        relay_thread.spawn(relay::run(service.store().clone(), bus.clone(), holder, relayed));
        std::mem::forget(relay_thread);
        let (b, s) = (bus.clone(), service.clone());
        // The bus API gets its own thread: in `capstan up` every actor's reads and writes
        // come through it.
        let arbiter = actix_rt::Arbiter::new();
        let usage_bus = b.clone();
        arbiter.spawn(async move {
            if let Err(e) = busapi::run(b, s).await {
                tracing::error!("bus API stopped: {e}");
            }
        });
        arbiter.spawn(usage::follow(usage_bus));
        std::mem::forget(arbiter);
    }
    let tls = tls_config(&config.pki)?;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let advertised =
        SocketAddr::new(bootstrap::advertise_address(addr, config.advertise_address), addr.port());
    bootstrap::kubernetes_service(&service, advertised).await?;
    let gateway = actix_web::web::Data::new(http::Gateway {
        service: service.clone(),
        server_address: addr.to_string(),
        max_body_bytes: config.max_body_bytes,
        tokens: config.tokens.clone(),
        bus: config.bus.clone(),
        stream_failures: Default::default(),
        aggregator: aggregator_clients,
        flow: flowcontrol::FlowControl::start(service.cache().clone(), config.max_requests_inflight),
        audit: match config.audit.clone() {
            Some(a) => Some(Arc::new(audit::Auditor::start(a).map_err(StartError::Audit)?)),
            None => None,
        },
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(gateway.clone())
            .app_data(actix_web::web::PayloadConfig::new(config.max_body_bytes + 1))
            .default_service(actix_web::web::to(http::dispatch))
    })
    .workers(config.workers.max(1))
    .on_connect(on_connect)
    .disable_signals()
    .shutdown_timeout(2)
    .listen_rustls_0_23(listener, tls)
    .map_err(|source| StartError::Bind { addr, source })?
    .run();
    Ok(Running { addr, server, service })
}
