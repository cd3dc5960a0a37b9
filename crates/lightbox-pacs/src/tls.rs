//! rustls client configuration: the system's roots plus an optional hospital CA, and an optional
//! client certificate for mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::PacsError;

/// TLS settings for an `https://` PACS.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// PEM file of CA certificates to trust (a hospital's own CA). Added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Trust only `ca_file`, not the system roots.
    pub ca_only: bool,
    /// PEM certificate chain and private key presented to the server (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(path: &Path, detail: impl std::fmt::Display) -> PacsError {
    PacsError::Tls { path: path.to_owned(), detail: detail.to_string() }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PacsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no PEM certificate in this file"));
    }
    Ok(certs)
}

impl TlsOptions {
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, PacsError> {
        let mut roots = rustls::RootCertStore::empty();
        if !self.ca_only {
            // Unreadable system certificates are skipped, as browsers do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(ca) = &self.ca_file {
            for cert in certificates(ca)? {
                roots.add(cert).map_err(|e| tls_error(ca, e))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| PacsError::Config(format!("TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error(key, e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| tls_error(cert, e))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(PacsError::Config("a client certificate needs both its certificate and key file".into())),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}
