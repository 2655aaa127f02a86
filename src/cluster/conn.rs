//! The connection to Redis: a `redis` client built from the settings (rustls TLS with the web
//! PKI roots plus `ca_file`; the password from `password_file`, re-read when the file changes)
//! and the connection manager that commands go through.

use super::settings::ClusterSettings;
use super::ClusterError;
use arc_swap::{ArcSwap, ArcSwapOption};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Establishing a connection (TCP, TLS, AUTH) happens off the request path, so it may take
/// longer than a call's `timeout`: a TLS handshake to a remote Redis takes a few round trips.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 1000;

/// What the password file looked like when it was last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct PasswordFile {
    path: PathBuf,
    seen: Option<Stamp>,
    /// The last read error, so that a file missing for an hour is logged once, not every probe.
    last_error: Option<String>,
}

pub(crate) struct Conn {
    settings: ClusterSettings,
    /// PEM trust roots handed to the client for `rediss://` with a `ca_file`.
    tls_roots: Option<Vec<u8>>,
    password: Option<tokio::sync::Mutex<PasswordFile>>,
    client: ArcSwap<Client>,
    manager: ArcSwapOption<ConnectionManager>,
    /// Bumped whenever the client is rebuilt, so that the subscriber reconnects with it.
    generation: watch::Sender<u64>,
}

impl Conn {
    pub(crate) async fn new(settings: &ClusterSettings) -> Result<Conn, ClusterError> {
        let tls_roots = match &settings.ca_file {
            Some(path) => Some(tls_roots(path)?),
            None => None,
        };
        let mut password = settings.password_file.as_ref().map(|path| PasswordFile {
            path: path.clone(),
            seen: None,
            last_error: None,
        });
        let secret = match &mut password {
            Some(file) => file.read_if_changed().await.flatten(),
            None => None,
        };
        let client = build_client(settings, tls_roots.as_deref(), secret.as_deref())?;
        Ok(Conn {
            settings: settings.clone(),
            tls_roots,
            password: password.map(tokio::sync::Mutex::new),
            client: ArcSwap::from_pointee(client),
            manager: ArcSwapOption::empty(),
            generation: watch::channel(0).0,
        })
    }

    pub(crate) fn client(&self) -> Arc<Client> {
        self.client.load_full()
    }

    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current connection manager, if one is established.
    pub(crate) fn manager(&self) -> Option<ConnectionManager> {
        self.manager.load().as_deref().cloned()
    }

    /// Forgets the manager, so the next probe connects afresh. Needed because a manager whose
    /// connection failed for a reason other than I/O (a refused password) never reconnects.
    pub(crate) fn reset(&self) {
        self.manager.store(None);
    }

    /// Connects a new manager (bounded by [`CONNECT_TIMEOUT_MS`]) and keeps it.
    pub(crate) async fn connect(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .set_response_timeout(Some(self.settings.timeout))
            // The prober retries on its own schedule; the manager only bridges a dropped connection.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let client = (*self.client()).clone();
        let connecting = ConnectionManager::new_with_config(client, config);
        let manager = match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("connecting took longer than {CONNECT_TIMEOUT_MS}ms")),
        };
        self.manager.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }

    /// Re-reads the password file if its modification time or size changed; on a change the
    /// client is rebuilt and the current connection dropped. True if the password changed.
    pub(crate) async fn refresh_password(&self) -> bool {
        let Some(file) = &self.password else {
            return false;
        };
        let mut file = file.lock().await;
        let Some(secret) = file.read_if_changed().await else {
            return false;
        };
        match build_client(&self.settings, self.tls_roots.as_deref(), secret.as_deref()) {
            Ok(client) => {
                self.client.store(Arc::new(client));
                self.manager.store(None);
                self.generation.send_modify(|g| *g += 1);
                tracing::info!(path = %file.path.display(), "Redis password file changed; reconnecting");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "cannot rebuild the Redis client");
                false
            }
        }
    }
}

impl PasswordFile {
    /// `None`: unchanged since the last read. `Some(None)`: changed but unreadable or empty
    /// (connect without a password, which Redis refuses: the replica stays in local mode).
    async fn read_if_changed(&mut self) -> Option<Option<String>> {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => Stamp {
                modified: meta.modified().ok(),
                len: meta.len(),
            },
            Err(e) => {
                self.note_error(format!("cannot read it: {e}"));
                let was_readable = self.seen.take().is_some();
                return was_readable.then_some(None);
            }
        };
        if self.seen.as_ref() == Some(&stamp) {
            return None;
        }
        self.seen = Some(stamp);
        match tokio::fs::read_to_string(&self.path).await {
            Ok(text) if !text.trim().is_empty() => {
                self.last_error = None;
                Some(Some(text.trim().to_string()))
            }
            Ok(_) => {
                self.note_error("it is empty".into());
                Some(None)
            }
            Err(e) => {
                self.note_error(format!("cannot read it: {e}"));
                Some(None)
            }
        }
    }

    fn note_error(&mut self, message: String) {
        if self.last_error.as_ref() != Some(&message) {
            tracing::warn!(path = %self.path.display(), problem = %message, "cluster.password_file");
            self.last_error = Some(message);
        }
    }
}

fn build_client(
    settings: &ClusterSettings,
    tls_roots: Option<&[u8]>,
    password: Option<&str>,
) -> Result<Client, ClusterError> {
    let mut info = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(ClusterError::Client)?;
    if let Some(password) = password {
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    match tls_roots {
        Some(pem) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => Client::open(info),
    }
    .map_err(ClusterError::Client)
}

/// The client replaces its trust roots with the PEM it is given, so it gets the web PKI set
/// (as certificates) followed by the `ca_file`: the file adds to the built-in roots, as a
/// tenant's `ca_file` does.
fn tls_roots(path: &Path) -> Result<Vec<u8>, ClusterError> {
    let ca_error = |message: String| ClusterError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let extra = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    if extra.is_empty() {
        return Err(ca_error("holds no certificate".into()));
    }
    let all: Vec<pem::Pem> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .chain(extra.iter())
        .map(|der| pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()))
        .collect();
    Ok(pem::encode_many(&all).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_adds_to_the_web_pki_roots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["redis.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&path, ca.pem()).unwrap();
        let pem = tls_roots(&path).unwrap();
        let parsed: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len() + 1);
        assert_eq!(parsed.last().unwrap().as_ref(), ca.der().as_ref());

        std::fs::write(&path, "no certificate here").unwrap();
        assert!(matches!(tls_roots(&path), Err(ClusterError::CaFile { .. })));
        assert!(matches!(
            tls_roots(&dir.path().join("missing")),
            Err(ClusterError::CaFile { .. })
        ));
    }

    #[tokio::test]
    async fn password_file_is_reread_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "first\n").unwrap();
        let mut f = PasswordFile {
            path: path.clone(),
            seen: None,
            last_error: None,
        };
        assert_eq!(f.read_if_changed().await, Some(Some("first".into())));
        assert_eq!(f.read_if_changed().await, None);
        std::fs::write(&path, "second-longer\n").unwrap();
        assert_eq!(f.read_if_changed().await, Some(Some("second-longer".into())));
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(f.read_if_changed().await, Some(None));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(f.read_if_changed().await, Some(None));
        assert_eq!(f.read_if_changed().await, None);
    }
}
