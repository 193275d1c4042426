//! TLS for the client port: rustls with ALPN `h2` and `http/1.1`.
//!
//! The acceptor's config sits behind an `ArcSwap` so a new certificate can be swapped in
//! for new connections without a restart.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("invalid certificate or key: {0}")]
    Invalid(#[from] rustls::Error),
}

/// Where each new TLS connection takes its current server config from.
#[derive(Clone)]
pub struct TlsAcceptorSource(pub Arc<ArcSwap<ServerConfig>>);

impl TlsAcceptorSource {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        TlsAcceptorSource(Arc::new(ArcSwap::new(config)))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.load_full())
    }
}

/// Reads the certificate chain and key named in the config.
pub fn load_tls(config: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&config.cert)?;
    let key = read_key(&config.key)?;
    let mut server = ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice()).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey { path: path.display().to_string() })
}
