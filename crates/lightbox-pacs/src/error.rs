use std::path::PathBuf;

/// What can go wrong talking to a PACS. Messages name the URL or peer and say what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacsError {
    #[error("{url}: cannot reach the PACS: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url}: the PACS did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("{url}: the PACS refused the credentials (HTTP {status}); check the user name and password or the token")]
    Unauthorized { url: String, status: u16 },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status { method: String, url: String, status: u16, body: String },
    #[error("{url}: transfer broken: {detail}")]
    Transfer { url: String, detail: String },
    #[error("{url}: malformed response: {detail}")]
    Malformed { url: String, detail: String },
    #[error("TLS setup: {path}: {detail}")]
    Tls { path: PathBuf, detail: String },
    #[error("PACS configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("DIMSE {peer}: {detail}")]
    Dimse { peer: String, detail: String },
    #[error(transparent)]
    Store(#[from] lightbox_store::StoreError),
    #[error(transparent)]
    Dicom(#[from] lightbox_dicom::DicomError),
}

impl PacsError {
    /// Worth trying again later: the network or the PACS was down or overloaded. A 4xx is not:
    /// the same request would be refused again.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } | Self::Transfer { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            Self::Dimse { .. } => true,
            _ => false,
        }
    }

    /// A short stable code for the UI (`{code, message}`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "pacs-unreachable",
            Self::Timeout { .. } => "pacs-timeout",
            Self::Unauthorized { .. } => "pacs-unauthorized",
            Self::Status { .. } => "pacs-http-error",
            Self::Transfer { .. } => "pacs-transfer-broken",
            Self::Malformed { .. } => "pacs-malformed-response",
            Self::Tls { .. } => "pacs-tls-config",
            Self::Config(_) => "pacs-config",
            Self::Io { .. } => "io",
            Self::Dimse { .. } => "dimse",
            Self::Store(_) => "store",
            Self::Dicom(_) => "dicom",
        }
    }
}
