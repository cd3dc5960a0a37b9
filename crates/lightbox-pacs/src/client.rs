//! The HTTP side: one `reqwest` client with our rustls configuration, authentication, and
//! retries with exponential backoff and jitter.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::{PacsError, TlsOptions};

/// How requests authenticate. `Debug` never prints the secret.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Basic { user, .. } => write!(f, "Basic({user}, ***)"),
            Self::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// Retries of one request: `attempts` tries in all, waiting `base_delay · 2ⁿ` (at most
/// `max_delay`) scaled by a random factor in [0.5, 1) between them, so that many workstations
/// coming back online don't hit the PACS in lockstep.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 4, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// The wait before try `retry + 1` (`retry` counts from 0).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponential = self.base_delay.saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        exponential.min(self.max_delay).mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// Where and how to reach a DICOMweb server.
#[derive(Clone, Debug)]
pub struct DicomWebConfig {
    /// The DICOMweb root, e.g. `https://pacs.example.org/dicom-web`.
    pub base_url: String,
    pub auth: Auth,
    pub tls: TlsOptions,
    pub connect_timeout: Duration,
    /// Longest silence while waiting for or reading a response. Not a limit on a whole
    /// transfer: a 1 GB series may take as long as it takes while bytes keep coming.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
}

impl DicomWebConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            auth: Auth::None,
            tls: TlsOptions::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// A DICOMweb client (QIDO-RS, WADO-RS, STOW-RS). Cheap to clone.
#[derive(Clone, Debug)]
pub struct DicomWebClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    pub(crate) retry: RetryPolicy,
    read_timeout: Duration,
    connect_timeout: Duration,
}

impl DicomWebClient {
    pub fn new(config: DicomWebConfig) -> Result<Self, PacsError> {
        let base = config.base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(PacsError::Config(format!("{base}: the DICOMweb URL must start with http:// or https://")));
        }
        let tls = config.tls.client_config()?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .no_proxy()
            .user_agent(concat!("Lightbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PacsError::Config(format!("HTTP client: {}", chain(&e))))?;
        Ok(Self {
            http,
            base,
            auth: config.auth,
            retry: config.retry,
            read_timeout: config.read_timeout,
            connect_timeout: config.connect_timeout,
        })
    }

    /// The DICOMweb root this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// Sends a request, retrying transient failures (connection errors, timeouts, 5xx, 408,
    /// 429) per the retry policy; returns the first response with a 2xx status. `build` is
    /// called once per try (a streamed body must be rebuilt each time).
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, PacsError> {
        let mut retry = 0;
        loop {
            let request = build(self.authorize(self.http.request(method.clone(), url)));
            let error = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => self.status_error(&method, url, response).await,
                Err(e) => self.transport_error(url, &e),
            };
            retry += 1;
            if !error.is_transient() || retry >= self.retry.attempts {
                return Err(error);
            }
            let delay = self.retry.delay(retry - 1);
            tracing::warn!(url, retry, delay_ms = delay.as_millis() as u64, "{error}; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    pub(crate) async fn status_error(&self, method: &Method, url: &str, response: Response) -> PacsError {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return PacsError::Unauthorized { url: url.to_owned(), status: status.as_u16() };
        }
        let mut body = String::new();
        let mut response = response;
        while let Ok(Some(chunk)) = response.chunk().await {
            body.push_str(&String::from_utf8_lossy(&chunk));
            if body.len() > 1 << 20 {
                break;
            }
        }
        if body.trim().is_empty() {
            body = status.canonical_reason().unwrap_or("no reason given").to_owned();
        }
        PacsError::Status { method: method.to_string(), url: url.to_owned(), status: status.as_u16(), body }
    }

    pub(crate) fn transport_error(&self, url: &str, e: &reqwest::Error) -> PacsError {
        let detail = chain(e);
        if is_tls_failure(&detail) {
            PacsError::TlsHandshake { url: url.to_owned(), detail }
        } else if e.is_timeout() && e.is_connect() {
            PacsError::Connect {
                url: url.to_owned(),
                detail: format!("no connection within {:?}", self.connect_timeout),
            }
        } else if e.is_timeout() {
            PacsError::Timeout { url: url.to_owned(), millis: self.read_timeout.as_millis() as u64 }
        } else if e.is_connect() {
            PacsError::Connect { url: url.to_owned(), detail }
        } else {
            PacsError::Transfer { url: url.to_owned(), detail }
        }
    }

    /// GET a small response whole (JSON, a frame, bulk data), with retries.
    pub(crate) async fn get_bytes(&self, url: &str, accept: &str) -> Result<(Option<String>, bytes::Bytes), PacsError> {
        let mut retry = 0;
        loop {
            let response = self.send(Method::GET, url, |r| r.header("Accept", accept)).await?;
            let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
            match response.bytes().await {
                Ok(body) => return Ok((content_type, body)),
                Err(e) => {
                    let error = self.transport_error(url, &e);
                    retry += 1;
                    if retry >= self.retry.attempts {
                        return Err(error);
                    }
                    tokio::time::sleep(self.retry.delay(retry - 1)).await;
                }
            }
        }
    }
}

/// A certificate or handshake problem: retrying will not help, a person must fix the setup.
fn is_tls_failure(detail: &str) -> bool {
    [
        "invalid peer certificate",
        "CertificateRequired",
        "UnknownCA",
        "BadCertificate",
        "CertificateExpired",
        "HandshakeFailure",
        "received fatal alert",
        "certificate verify failed",
        "NotValidForName",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

/// An error and its causes on one line ("error sending request: …: connection refused").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy =
            RetryPolicy { attempts: 10, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        for retry in 0..10 {
            let full = Duration::from_millis(100 * (1 << retry)).min(Duration::from_secs(1));
            let d = policy.delay(retry);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?} vs {full:?}");
        }
        let delays: std::collections::HashSet<_> = (0..20).map(|_| policy.delay(3)).collect();
        assert!(delays.len() > 1, "no jitter");
        assert!(policy.delay(u32::MAX) <= Duration::from_secs(1));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let basic = Auth::Basic { user: "pacs".into(), password: "pacs-secret".into() };
        assert!(!format!("{basic:?}").contains("secret"));
        assert!(!format!("{:?}", Auth::Bearer("tok-123".into())).contains("tok-123"));
    }

    #[test]
    fn transient_is_5xx_and_network_never_4xx() {
        let status = |status| PacsError::Status { method: "GET".into(), url: "u".into(), status, body: String::new() };
        assert!(status(500).is_transient() && status(503).is_transient() && status(429).is_transient());
        assert!(!status(400).is_transient() && !status(404).is_transient() && !status(409).is_transient());
        assert!(!PacsError::Unauthorized { url: "u".into(), status: 401 }.is_transient());
        assert!(PacsError::Connect { url: "u".into(), detail: String::new() }.is_transient());
    }

    #[test]
    fn rejects_a_url_without_scheme() {
        assert!(matches!(DicomWebClient::new(DicomWebConfig::new("pacs:8042")), Err(PacsError::Config(_))));
    }
}
