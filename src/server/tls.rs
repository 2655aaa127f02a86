//! TLS toward callers (optional): a server certificate re-read when its files change, and
//! optionally a client CA that every caller's certificate must chain to (mTLS).

use crate::config::TlsSettings;
use crate::routes::ClientIdentity;
use crate::tls::{crypto_provider, read_certs, read_key, PemError};
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Certificate files are checked for changes at most this often (at handshakes).
const RELOAD_CHECK_INTERVAL_MS: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// Accepts TLS connections from callers.
#[derive(Clone)]
pub struct CallerTls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl CallerTls {
    pub fn new(settings: &TlsSettings) -> Result<CallerTls, TlsError> {
        let provider = crypto_provider();
        let resolver = Arc::new(ReloadingCert::load(&settings.cert_file, &settings.key_file)?);
        let builder =
            rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match &settings.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(CallerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: settings.handshake_timeout,
        })
    }

    /// Completes the handshake within the handshake timeout.
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<(TlsStream<S>, Option<ClientIdentity>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| identity_of(cert));
        Ok((tls, identity))
    }
}

fn identity_of(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let subject = subject.to_string().replace(", ", ",");
    Some(ClientIdentity { subject, common_name })
}

fn load_key(cert_file: &Path, key_file: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    Ok(Arc::new(CertifiedKey::from_der(certs, key, &crypto_provider())?))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Serves the certificate in the files, reloading it when their modification times change
/// (a rotated certificate is used by the next handshake, without a restart).
#[derive(Debug)]
struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ReloadingCert {
    fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingCert, TlsError> {
        let stamps = (modified(cert_file), modified(key_file));
        let key = load_key(cert_file, key_file)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            state: Mutex::new(Loaded {
                key,
                stamps,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= Duration::from_millis(RELOAD_CHECK_INTERVAL_MS) {
            state.checked = Instant::now();
            let stamps = (modified(&self.cert_file), modified(&self.key_file));
            if stamps != state.stamps {
                match load_key(&self.cert_file, &self.key_file) {
                    Ok(key) => {
                        state.key = key;
                        state.stamps = stamps;
                        tracing::info!(cert_file = %self.cert_file.display(), "listener certificate reloaded");
                    }
                    // A half-written pair is retried at the next check; the old one serves meanwhile.
                    Err(error) => tracing::warn!(%error, "listener certificate not reloaded; keeping the current one"),
                }
            }
        }
        Some(state.key.clone())
    }
}
