use std::path::PathBuf;

/// What can go wrong talking to a PACS. Messages name the URL or peer and say what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacsError {
    #[error("{url}: cannot reach the PACS: {detail}")]
    Connect { url: String, detail: String },
    #[error("{url}: the PACS did not answer within {:.1} s", *millis as f64 / 1000.0)]
    Timeout { url: String, millis: u64 },
    #[error(
        "{url}: TLS handshake failed: {detail}; check the trusted CA (--ca) and the client certificate (--cert, --key)"
    )]
    TlsHandshake { url: String, detail: String },
    #[error("{url}: the PACS refused the credentials (HTTP {status}); check the user name and password or the token")]
    Unauthorized { url: String, status: u16 },
    #[error("{method} {url}: HTTP {status}: {}", shorten(body))]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The response body, whole (up to 1 MiB); messages show its start.
        body: String,
    },
    #[error("{url}: cancelled")]
    Cancelled { url: String },
    #[error("{url}: the PACS has no {what}")]
    NotFound { url: String, what: String },
    /// A retrieval that brought only part of what it was asked for, where part is not enough.
    #[error("{what} retrieved in part: {detail}")]
    Incomplete { what: String, detail: String },
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
            // A peer that rejects the association or the object will do so again; a lost
            // connection may not.
            Self::Dimse { detail, .. } => !(detail.contains("rejected") || detail.contains("accepts neither")),
            _ => false,
        }
    }

    /// A short stable code for the UI (`{code, message}`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "pacs-unreachable",
            Self::Timeout { .. } => "pacs-timeout",
            Self::TlsHandshake { .. } => "pacs-tls",
            Self::Unauthorized { .. } => "pacs-unauthorized",
            Self::Status { .. } => "pacs-http-error",
            Self::Transfer { .. } => "pacs-transfer-broken",
            Self::Cancelled { .. } => "cancelled",
            Self::NotFound { .. } => "pacs-not-found",
            Self::Incomplete { .. } => "pacs-incomplete",
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

fn shorten(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 300 {
        format!("{}…", one_line.chars().take(300).collect::<String>())
    } else {
        one_line
    }
}
