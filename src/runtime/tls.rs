//! TLS for the client port: rustls with ALPN `h2` and `http/1.1`.
//!
//! The acceptor's config sits behind an `ArcSwapOption` so a new certificate (or TLS turned
//! on or off by a reload) applies to new connections without a restart.
//!
//! Owns: reading certificate files and the live acceptor source. Must not: accept
//! connections (the server does, with whatever acceptor is current).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
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

/// Where each new connection on the client port takes its TLS config from: empty means
/// plaintext. Reloads swap it, so a rotated certificate (or TLS turned on or off) applies to
/// the next connection while open ones keep theirs.
#[derive(Clone, Default)]
pub struct TlsAcceptorSource(Arc<ArcSwapOption<ActiveTls>>);

impl TlsAcceptorSource {
    pub fn new(active: Option<ActiveTls>) -> Self {
        TlsAcceptorSource(Arc::new(ArcSwapOption::from(active.map(Arc::new))))
    }

    /// The acceptor for a new connection, `None` for plaintext.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.0.load().as_ref().map(|active| active.acceptor.clone())
    }

    pub fn current(&self) -> Option<Arc<ActiveTls>> {
        self.0.load_full()
    }

    pub fn set(&self, active: Option<ActiveTls>) {
        self.0.store(active.map(Arc::new));
    }
}

/// A certificate and key in use, with what they were read from.
pub struct ActiveTls {
    pub files: TlsConfig,
    /// SHA-256 over the certificate and key files' bytes: a reload rebuilds the TLS config
    /// only when these changed.
    pub fingerprint: [u8; 32],
    acceptor: TlsAcceptor,
}

/// The certificate and key files' contents, read but not yet checked.
pub struct TlsFiles {
    pub files: TlsConfig,
    pub fingerprint: [u8; 32],
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl TlsFiles {
    /// Reads both files. Blocking.
    pub fn read(config: &TlsConfig) -> Result<TlsFiles, TlsError> {
        let cert_pem = read(&config.cert)?;
        let key_pem = read(&config.key)?;
        let mut digest = Sha256::new();
        digest.update((cert_pem.len() as u64).to_be_bytes());
        digest.update(&cert_pem);
        digest.update(&key_pem);
        Ok(TlsFiles { files: config.clone(), fingerprint: digest.finalize().into(), cert_pem, key_pem })
    }

    /// Whether `active` was built from exactly these files and bytes.
    pub fn matches(&self, active: &ActiveTls) -> bool {
        self.files == active.files && self.fingerprint == active.fingerprint
    }

    /// Parses the PEM and builds the rustls config (ALPN `h2`, `http/1.1`).
    pub fn build(self) -> Result<ActiveTls, TlsError> {
        let certs = parse_certs(&self.files.cert, &self.cert_pem)?;
        let key = parse_key(&self.files.key, &self.key_pem)?;
        let mut server = ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ActiveTls {
            files: self.files,
            fingerprint: self.fingerprint,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

/// Reads the certificate chain and key named in the config. Blocking.
pub fn load_tls(config: &TlsConfig) -> Result<ActiveTls, TlsError> {
    TlsFiles::read(config)?.build()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..]).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.display().to_string() });
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey { path: path.display().to_string() })
}
