//! Mutual TLS between nodes: rustls configurations built from the cluster CA, and servers that tell each handler
//! which node is calling.
//!
//! Every node certificate chains to the cluster's root CA ([`crate::ca`]). Servers accept clients without a
//! certificate (a node that is joining has none yet) but refuse any certificate that does not chain to the CA;
//! handlers read [`PeerIdentity`] from the request and decide. Clients check that the server is a manager of this
//! cluster whatever address they dialled, since managers are reached by IP and port.
//!
//! All configurations use rustls's ring provider explicitly; [`install_crypto_provider`] also makes it the process
//! default for code that asks for the default.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::RwLock;
use std::time::Duration;

use axum::Router;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper::Request;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::server::ClientHello;
use rustls::server::ResolvesServerCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::CertificateError;
use rustls::ClientConfig;
use rustls::DigitallySignedStruct;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::ServerConnection;
use rustls::SignatureScheme;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::debug;
use tracing::warn;

use crate::ca;
use crate::ca::Role;

/// ALPN protocols offered by clients and servers, preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// The ALPN protocol of a connection that carries Raft RPCs between managers as frames instead of HTTP
/// (`raftnet`). Servers accept it besides [`ALPN`]; only the Raft client offers it.
pub const RAFT_ALPN: &[u8] = b"swarm-raft/1";
/// A client that has not finished its TLS handshake by then is dropped, so idle sockets cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, connections get this long to finish the requests they are serving before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a TLS configuration could not be built. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the cluster CA certificate is not usable: {0}")]
    InvalidCa(String),
    #[error("the node certificate is not usable: {0}")]
    InvalidCert(String),
    #[error("the node private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1) this program can use")]
    InvalidKey,
    #[error(
        "the node private key does not belong to the node certificate; use the key the certificate was issued for"
    )]
    KeyMismatch,
    #[error("could not build the TLS configuration: {0}")]
    Config(String),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Installs rustls's ring provider as the process default. Idempotent; harmless if another thread won the race.
pub fn install_crypto_provider() {
    // An error only means a default is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn alpn() -> Vec<Vec<u8>> {
    ALPN.iter().map(|p| p.to_vec()).collect()
}

/// Who is calling: taken from the verified client certificate of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub node_id: String,
    pub role: Role,
}

/// Marks requests that came over the local unix socket (the CLI on this machine), see [`serve_unix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalClient;

/// The node certificate a server presents, replaceable while the server runs (after a renewal): connections made
/// after [`ReloadableCert::reload`] see the new certificate, established ones keep the old.
pub struct ReloadableCert {
    /// The CA certificate(s), sent after the node certificate.
    ca_chain: Vec<CertificateDer<'static>>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadableCert").finish_non_exhaustive()
    }
}

impl ReloadableCert {
    /// A node certificate and its key (PEM), presented with the CA certificate after it.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ReloadableCert>, TlsError> {
        let ca_chain = parse_certs(ca_pem).map_err(TlsError::InvalidCa)?;
        let key = certified_key(&ca_chain, cert_pem, key_pem)?;
        Ok(Arc::new(ReloadableCert {
            ca_chain,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Replaces the certificate and key; on error the previous pair stays in use.
    pub fn reload(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(&self.ca_chain, cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Node certificate + `ca_chain`, with the key checked against the certificate.
fn certified_key(
    ca_chain: &[CertificateDer<'static>],
    cert_pem: &str,
    key_pem: &str,
) -> Result<CertifiedKey, TlsError> {
    let (cert, key) = node_cert_and_key(cert_pem, key_pem)?;
    let mut chain = vec![cert];
    chain.extend(ca_chain.iter().cloned());
    CertifiedKey::from_der(chain, key, &provider()).map_err(key_error)
}

fn node_cert_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| TlsError::InvalidCert("it is not a PEM certificate".to_string()))?;
    ca::inspect_cert_der(&cert).map_err(|e| TlsError::InvalidCert(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::InvalidKey)?;
    Ok((cert, key))
}

fn key_error(e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
        rustls::Error::General(_) => TlsError::InvalidKey,
        other => TlsError::Config(other.to_string()),
    }
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        // The PEM error may quote the input, which may be a key pasted in the wrong place.
        .map_err(|_| "it is not valid PEM".to_string())?;
    if certs.is_empty() {
        return Err("it has no PEM CERTIFICATE block".to_string());
    }
    Ok(certs)
}

fn root_store(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(ca_pem).map_err(TlsError::InvalidCa)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCa(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// Server configuration: presents the node certificate (and the CA after it); client certificates are optional
/// but, when presented, must chain to the cluster CA. To replace the certificate later, use
/// [`server_config_reloadable`].
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_reloadable(ca_pem, ReloadableCert::new(ca_pem, cert_pem, key_pem)?)
}

/// [`server_config`] presenting whatever `cert` holds at each handshake.
pub fn server_config_reloadable(ca_pem: &str, cert: Arc<ReloadableCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(root_store(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn();
    config.alpn_protocols.push(RAFT_ALPN.to_vec());
    Ok(Arc::new(config))
}

/// Client configuration with a node certificate: the server must chain to the cluster CA and be a manager,
/// whatever host name or IP address was dialled.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let (cert, key) = node_cert_and_key(cert_pem, key_pem)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(manager_verifier(ca_pem)?)
        .with_client_auth_cert(vec![cert], key)
        .map_err(key_error)?;
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// `config` offering only [`RAFT_ALPN`]: for the connections that carry Raft RPCs.
pub fn raft_client_config(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![RAFT_ALPN.to_vec()];
    Arc::new(config)
}

/// Client configuration for joining: the same server checks as [`client_config`], no client certificate.
pub fn join_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(manager_verifier(ca_pem)?)
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// Client configuration that accepts ANY server certificate. Only to fetch the CA certificate before joining; the
/// caller must then check that certificate against the join token's digest ([`ca::ca_digest`]) before using it.
pub fn bootstrap_client_config() -> Arc<ClientConfig> {
    // The builder below falls back to the process default provider; make sure it is ring.
    install_crypto_provider();
    let algorithms = provider().signature_verification_algorithms;
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert { algorithms }))
        .with_no_client_auth();
    config.alpn_protocols = alpn();
    Arc::new(config)
}

/// An HTTP client over `config` (HTTP/2 when the server offers it, else HTTP/1.1), https only, never through a
/// proxy. `timeout` bounds connecting and each wait for data; a stream that stays silent longer fails, so
/// long-lived streams need heartbeats. Give a request a whole deadline with `RequestBuilder::timeout`.
pub fn http_client(config: Arc<ClientConfig>, timeout: Duration) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(Arc::unwrap_or_clone(config))
        .https_only(true)
        .no_proxy()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .build()
        .map_err(TlsError::HttpClient)
}

/// The client a node uses before it has its certificates (replaced once it has them): it trusts no root at all, so
/// nothing is read from the system's CA store, and a host without one (a minimal container) starts fine.
pub fn placeholder_client() -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .no_proxy()
        .build()
        .map_err(TlsError::HttpClient)
}

fn manager_verifier(ca_pem: &str) -> Result<Arc<ManagerVerifier>, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(root_store(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let manager_name = ServerName::try_from(Role::Manager.cert_name()).map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(ManagerVerifier { inner, manager_name }))
}

/// Checks that the server's certificate chains to the cluster CA and is a manager's: manager certificates carry
/// the DNS name `swarm-manager`, which is checked in place of the address dialled, and the OU `swarm-manager`.
#[derive(Debug)]
struct ManagerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    manager_name: ServerName<'static>,
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.manager_name, ocsp_response, now)?;
        match ca::inspect_cert_der(end_entity) {
            Ok(info) if info.role == Role::Manager => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts any server certificate, but still checks the handshake signatures made with it.
#[derive(Debug)]
struct AnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The identity in the client certificate of a finished handshake; `None` if the client showed none. The
/// certificate was already verified against the CA by rustls.
fn peer_identity(connection: &ServerConnection) -> Result<Option<PeerIdentity>, ca::CaError> {
    let Some(cert) = connection.peer_certificates().and_then(|certs| certs.first()) else {
        return Ok(None);
    };
    let info = ca::inspect_cert_der(cert)?;
    Ok(Some(PeerIdentity {
        node_id: info.node_id,
        role: info.role,
    }))
}

/// Serves a connection that negotiated [`RAFT_ALPN`]: the stream, the identity in its client certificate, and a
/// receiver that turns true when the server shuts down.
pub type StreamHandler = Arc<
    dyn Fn(
            tokio_rustls::server::TlsStream<TcpStream>,
            Option<PeerIdentity>,
            watch::Receiver<bool>,
        ) -> BoxFuture<'static, ()>
        + Send
        + Sync,
>;

/// Serves `router` over TLS on `listener` until `shutdown` resolves, then gives open connections
/// a few seconds to finish. Each request carries `Extension<Option<PeerIdentity>>` (None when the client showed
/// no certificate). A connection that negotiated [`RAFT_ALPN`] goes to `raft` instead (and is closed without it).
/// Failed handshakes (including plaintext HTTP) are logged at debug and close that connection only; failed accepts
/// are logged and retried.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    raft: Option<StreamHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => log_panic(finished),
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "accepting a TLS connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Answers are small writes that each end an exchange: Nagle's algorithm would hold one back until
                // the previous one is acknowledged. Clients (reqwest) set the same.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(%remote, error = %e, "cannot set TCP_NODELAY");
                }
                let acceptor = acceptor.clone();
                let router = router.clone();
                let raft = raft.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => return debug!(%remote, "TLS handshake timed out"),
                    };
                    let peer = match peer_identity(stream.get_ref().1) {
                        Ok(peer) => peer,
                        Err(e) => return debug!(%remote, error = %e, "refusing a client certificate"),
                    };
                    if stream.get_ref().1.alpn_protocol() == Some(RAFT_ALPN) {
                        match raft {
                            Some(raft) => raft(stream, peer, stop).await,
                            None => debug!(%remote, "closing a Raft connection: this server does not serve Raft"),
                        }
                        return;
                    }
                    serve_connection(stream, router, peer, false, stop).await;
                });
            }
        }
    }
    drain(connections, stop_tx).await;
    Ok(())
}

/// Serves `router` on a unix socket (the local CLI) until `shutdown` resolves. Requests carry
/// `Extension<Option<PeerIdentity>>` = None and `Extension<LocalClient>`. Whoever can open the socket is trusted:
/// create it with restrictive permissions.
pub async fn serve_unix(
    listener: UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(finished) = connections.join_next(), if !connections.is_empty() => log_panic(finished),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "accepting a local connection failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                connections.spawn(serve_connection(stream, router.clone(), None, true, stop_rx.clone()));
            }
        }
    }
    drain(connections, stop_tx).await;
    Ok(())
}

/// Serves HTTP/1.1 or HTTP/2 on one connection, adding the caller's identity to every request, until the client
/// is done or `stop` turns true (then in-flight requests finish and the connection closes).
async fn serve_connection<S>(
    stream: S,
    router: Router,
    peer: Option<PeerIdentity>,
    local: bool,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
        if local {
            request.extensions_mut().insert(LocalClient);
        }
        router.call(request)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async {
            // Also ends if the server is gone (sender dropped); the guard is dropped before the next await.
            let _ = stop.wait_for(|stop| *stop).await;
        } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}

/// Tells every connection to finish, waits up to [`SHUTDOWN_GRACE`], then cuts the rest.
async fn drain(mut connections: JoinSet<()>, stop: watch::Sender<bool>) {
    stop.send_replace(true);
    let all_done = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(finished) = connections.join_next().await {
            log_panic(finished);
        }
    })
    .await
    .is_ok();
    if !all_done {
        debug!(
            connections = connections.len(),
            "closing connections still busy after the shutdown grace period"
        );
        connections.shutdown().await;
    }
}

fn log_panic(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished {
        if e.is_panic() {
            warn!(error = %e, "a connection task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::routing::get;
    use axum::Extension;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::ca::RootCa;
    use crate::ca::DEFAULT_CA_VALIDITY;
    use crate::ca::DEFAULT_NODE_CERT_VALIDITY;

    struct Node {
        cert: String,
        key: String,
    }

    fn node(ca: &RootCa, node_id: &str, role: Role) -> Node {
        let (key, csr) = ca::new_node_key(node_id).unwrap();
        let cert = ca.issue(&csr, node_id, role, DEFAULT_NODE_CERT_VALIDITY).unwrap();
        Node { cert, key }
    }

    fn new_ca(cluster: &str) -> RootCa {
        RootCa::generate(cluster, DEFAULT_CA_VALIDITY).unwrap()
    }

    async fn whoami(Extension(peer): Extension<Option<PeerIdentity>>, local: Option<Extension<LocalClient>>) -> String {
        let who = match peer {
            Some(peer) => format!("{}:{}", peer.role, peer.node_id),
            None => "anonymous".to_string(),
        };
        match local {
            Some(_) => format!("{who} (local)"),
            None => who,
        }
    }

    fn router() -> Router {
        Router::new().route("/whoami", get(whoami))
    }

    struct Server {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start(config: Arc<ServerConfig>) -> Server {
            install_crypto_provider();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, config, router(), None, async move {
                let _ = stopped.await;
            }));
            Server {
                addr,
                stop: Some(stop),
                task,
            }
        }

        async fn get(&self, config: Arc<ClientConfig>) -> Result<String, reqwest::Error> {
            let client = http_client(config, Duration::from_secs(10)).unwrap();
            let response = client.get(format!("https://{}/whoami", self.addr)).send().await?;
            response.error_for_status()?.text().await
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("serve returns after shutdown")
                .unwrap()
                .unwrap();
        }
    }

    #[tokio::test]
    async fn server_tells_handlers_who_calls() {
        let ca = new_ca("c1");
        let manager = node(&ca, "manager1", Role::Manager);
        let worker = node(&ca, "worker1", Role::Worker);
        let server = Server::start(server_config(ca.cert_pem(), &manager.cert, &manager.key).unwrap()).await;

        let as_manager = client_config(ca.cert_pem(), &manager.cert, &manager.key).unwrap();
        assert_eq!(server.get(as_manager).await.unwrap(), "manager:manager1");
        let as_worker = client_config(ca.cert_pem(), &worker.cert, &worker.key).unwrap();
        assert_eq!(server.get(as_worker).await.unwrap(), "worker:worker1");
        let joining = join_client_config(ca.cert_pem()).unwrap();
        assert_eq!(server.get(joining).await.unwrap(), "anonymous");
        server.stop().await;
    }

    #[tokio::test]
    async fn server_refuses_a_certificate_from_another_ca() {
        let ca = new_ca("c1");
        let manager = node(&ca, "manager1", Role::Manager);
        let server = Server::start(server_config(ca.cert_pem(), &manager.cert, &manager.key).unwrap()).await;

        let stranger = node(&new_ca("c2"), "manager1", Role::Manager);
        let config = client_config(ca.cert_pem(), &stranger.cert, &stranger.key).unwrap();
        let err = server.get(config).await.unwrap_err();
        assert!(
            format!("{err:?}").contains("UnknownCA"),
            "refused at the handshake: {err:?}"
        );

        // The server keeps serving others.
        assert_eq!(
            server.get(join_client_config(ca.cert_pem()).unwrap()).await.unwrap(),
            "anonymous"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn plaintext_http_gets_no_answer() {
        let ca = new_ca("c1");
        let manager = node(&ca, "manager1", Role::Manager);
        let server = Server::start(server_config(ca.cert_pem(), &manager.cert, &manager.key).unwrap()).await;

        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection");
        assert!(
            read.is_err() || !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(
            server.get(join_client_config(ca.cert_pem()).unwrap()).await.unwrap(),
            "anonymous"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn clients_only_trust_managers_of_their_cluster() {
        let ca = new_ca("c1");
        let worker = node(&ca, "worker1", Role::Worker);
        let other_ca = new_ca("c2");
        let impostor = node(&other_ca, "manager9", Role::Manager);

        let foreign = Server::start(server_config(other_ca.cert_pem(), &impostor.cert, &impostor.key).unwrap()).await;
        let err = foreign
            .get(join_client_config(ca.cert_pem()).unwrap())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
        let err = foreign
            .get(client_config(ca.cert_pem(), &worker.cert, &worker.key).unwrap())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

        // Only to fetch the CA certificate: the bootstrap client talks to anyone.
        assert_eq!(foreign.get(bootstrap_client_config()).await.unwrap(), "anonymous");
        foreign.stop().await;

        // A worker's certificate chains to the CA but does not make a manager.
        let not_manager = Server::start(server_config(ca.cert_pem(), &worker.cert, &worker.key).unwrap()).await;
        let err = not_manager
            .get(join_client_config(ca.cert_pem()).unwrap())
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("swarm-manager"), "{err:?}");
        not_manager.stop().await;
    }

    async fn server_node_id(addr: SocketAddr, config: Arc<ClientConfig>) -> String {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .unwrap();
        let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
        ca::inspect_cert_der(cert).unwrap().node_id
    }

    #[tokio::test]
    async fn new_connections_see_a_reloaded_certificate() {
        let ca = new_ca("c1");
        let first = node(&ca, "manager1", Role::Manager);
        let renewed = node(&ca, "manager1-renewed", Role::Manager);
        let cert = ReloadableCert::new(ca.cert_pem(), &first.cert, &first.key).unwrap();
        let server = Server::start(server_config_reloadable(ca.cert_pem(), cert.clone()).unwrap()).await;
        let client = join_client_config(ca.cert_pem()).unwrap();
        assert_eq!(server_node_id(server.addr, client.clone()).await, "manager1");

        let err = cert.reload(&renewed.cert, &first.key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");
        assert!(!err.to_string().contains("PRIVATE"));
        assert_eq!(server_node_id(server.addr, client.clone()).await, "manager1");

        cert.reload(&renewed.cert, &renewed.key).unwrap();
        assert_eq!(server_node_id(server.addr, client).await, "manager1-renewed");
        server.stop().await;
    }

    #[tokio::test]
    async fn bad_pem_is_refused_without_echoing_keys() {
        let ca = new_ca("c1");
        let manager = node(&ca, "manager1", Role::Manager);
        let other = node(&ca, "manager2", Role::Manager);
        assert!(matches!(
            server_config("nope", &manager.cert, &manager.key),
            Err(TlsError::InvalidCa(_))
        ));
        assert!(matches!(
            server_config(ca.cert_pem(), "nope", &manager.key),
            Err(TlsError::InvalidCert(_))
        ));
        assert!(matches!(
            server_config(ca.cert_pem(), &manager.cert, "nope"),
            Err(TlsError::InvalidKey)
        ));
        let err = client_config(ca.cert_pem(), &manager.cert, &other.key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch), "{err}");
        let cert = ReloadableCert::new(ca.cert_pem(), &manager.cert, &manager.key).unwrap();
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[tokio::test]
    async fn unix_socket_serves_local_clients() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swarm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_unix(listener, router(), async move {
            let _ = stopped.await;
        }));

        let client = reqwest::Client::builder().unix_socket(path.as_path()).build().unwrap();
        let answer = client
            .get("http://localhost/whoami")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(answer, "anonymous (local)");

        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
