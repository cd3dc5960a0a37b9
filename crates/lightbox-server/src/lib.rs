//! `lightbox serve`: the workflow engine, the DIMSE SCP and the outbox behind a REST API.
//!
//! Resources are plural nouns, nested where they are nested: `/studies`,
//! `/studies/{study}/series`, `/studies/{study}/series/{series}/results`, `/jobs`, `/rules`,
//! `/outbox`, `/models`, `/health`. Every error has the same body, `{code, message}`. The
//! OpenAPI document is generated from this code ([`openapi`]) and served at `/openapi.json`.
//!
//! The JSON shapes (DTOs) live only here; everything else is `lightbox-workflow`.

mod api;
mod guard;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use api::openapi;
use lightbox_workflow::engine::Engine;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Workflow(#[from] lightbox_workflow::WorkflowError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the server stopped: {0}")]
    Io(#[from] std::io::Error),
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub store: PathBuf,
    pub bind: SocketAddr,
    /// SHA-256 hex digests of the bearer tokens that may call the API (`tokens` file, one per
    /// line). Required for any bind other than loopback.
    pub token_hashes: Vec<String>,
    /// Requests per second per client address (a burst of twice that is allowed).
    pub rate_per_second: u32,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Dispatch rules for arrivals (pushes, retrievals, imports), if any.
    pub rules: Option<lightbox_workflow::pipeline::Rules>,
    pub pacs: Option<lightbox_workflow::pacs::PacsSettings>,
    /// The DIMSE SCP: (AE title, port), if it should listen.
    pub scp: Option<(String, u16)>,
    /// How long a shutdown waits for running jobs before leaving them to the next start (their
    /// lease lapses and the next runner takes them over).
    pub drain_timeout: Duration,
    /// HTTPS instead of HTTP, optionally requiring client certificates.
    pub tls: Option<TlsFiles>,
}

/// The server's certificate chain and key (PEM) and, for mutual TLS, the CA whose client
/// certificates are accepted.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl ServeConfig {
    pub fn new(store: PathBuf) -> Self {
        Self {
            store,
            bind: ([127, 0, 0, 1], 8480).into(),
            token_hashes: Vec::new(),
            rate_per_second: 200,
            max_body: 64 * 1024,
            rules: None,
            pacs: None,
            scp: None,
            drain_timeout: Duration::from_secs(30),
            tls: None,
        }
    }

    /// Refuses a bind beyond loopback without tokens.
    pub fn check(&self) -> Result<(), ServeError> {
        if !self.bind.ip().is_loopback() && self.token_hashes.is_empty() {
            return Err(ServeError::Config(format!(
                "binding to {} exposes the API beyond this machine: give --tokens with at least one token hash",
                self.bind
            )));
        }
        if self.token_hashes.iter().any(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(ServeError::Config("a token hash is not 64 hex digits (SHA-256)".into()));
        }
        Ok(())
    }
}

/// SHA-256 of a token, hex: what a tokens file holds.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) struct AppState {
    pub config: ServeConfig,
    pub draining: AtomicBool,
    pub engine: Option<Engine>,
    pub limiter: guard::RateLimiter,
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Stops taking requests (503 while draining), waits for running jobs up to the drain
    /// timeout, then stops.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.map_err(|e| ServeError::Config(e.to_string()))?
    }

    /// Runs until the server stops by itself (or forever).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.handle.await.map_err(|e| ServeError::Config(e.to_string()))?
    }
}

/// Starts the daemon: engine (with the rules), SCP (when configured) and the REST API.
pub async fn start(config: ServeConfig) -> Result<Server, ServeError> {
    config.check()?;
    // The store must open (and migrate) before anything else uses it.
    lightbox_workflow::jobs(&config.store)?;
    let engine = config.rules.clone().map(|rules| {
        let (events, received) = std::sync::mpsc::channel();
        let engine = Engine::start(
            &config.store,
            rules,
            config.pacs.clone(),
            lightbox_workflow::engine::EngineConfig::from_env(),
            events,
        );
        std::thread::spawn(move || {
            for event in received {
                tracing::info!(target: "lightbox::engine", "{event}");
            }
        });
        engine
    });
    let scp = match &config.scp {
        Some((aet, port)) => {
            let handle = lightbox_workflow::pacs::listen(&config.store, aet, &[], ([0, 0, 0, 0], *port).into(), None)?;
            tracing::info!(aet, port = handle.local_addr().port(), "DIMSE SCP listening");
            Some(handle)
        }
        None => None,
    };
    let acceptor = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServeError::Bind { addr: config.bind, source })?;
    let local_addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        limiter: guard::RateLimiter::new(config.rate_per_second),
        config,
        draining: AtomicBool::new(false),
        engine,
    });
    let app = api::router(state.clone());
    // The outbox is retried on a timer too: results queued while the PACS was down leave
    // once it is back, without waiting for the next job.
    if let Some(pacs) = state.config.pacs.clone() {
        let (store, every) = (state.config.store.clone(), drain_interval());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                // The store is not Send: drain on a blocking thread with its own runtime.
                let (store, pacs) = (store.clone(), pacs.clone());
                let drained =
                    tokio::task::spawn_blocking(move || lightbox_workflow::pacs::outbox_drain_blocking(&store, &pacs))
                        .await;
                match drained {
                    Ok(Ok(report)) if report.sent + report.sent_by_dimse > 0 || report.failed > 0 => {
                        tracing::info!(target: "lightbox::outbox", "drained: {report:?}");
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(target: "lightbox::outbox", "drain failed: {e}"),
                    Err(e) => tracing::warn!(target: "lightbox::outbox", "drain task: {e}"),
                }
            }
        });
    }
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let _scp = scp; // listens as long as the server runs
        let drain_state = state.clone();
        let signal = async move {
            tokio::select! {
                _ = stop => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate() => {}
            }
            drain(&drain_state).await;
        };
        match acceptor {
            Some(acceptor) => tls::serve(listener, acceptor, app, signal).await,
            None => {
                axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(signal)
                    .await?;
            }
        }
        Ok(())
    });
    Ok(Server { local_addr, shutdown: Some(shutdown), handle })
}

/// How often the outbox is retried: `LIGHTBOX_DRAIN_SECS`, default 60.
fn drain_interval() -> Duration {
    let secs = std::env::var("LIGHTBOX_DRAIN_SECS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(60);
    Duration::from_secs(secs.max(1))
}

/// Draining: new requests get 503, running jobs get up to the drain timeout to finish.
async fn drain(state: &AppState) {
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!("draining: no new work; waiting for running jobs");
    let deadline = tokio::time::Instant::now() + state.config.drain_timeout;
    while tokio::time::Instant::now() < deadline {
        match Engine::running(&state.config.store) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tracing::info!(running = n, "waiting for jobs");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}

/// One line of `serve --check`: what was checked, and what was found or what failed.
pub type CheckLine = (String, Result<String, String>);

/// `lightbox serve --check`: the store opens, the rules load, the PACS answers.
pub async fn check(config: &ServeConfig) -> Vec<CheckLine> {
    let mut checks = vec![(
        "configuration".to_owned(),
        config.check().map(|()| format!("bind {}", config.bind)).map_err(|e| e.to_string()),
    )];
    checks.push((
        "store".to_owned(),
        lightbox_workflow::jobs(&config.store)
            .map(|jobs| format!("{} ({} jobs)", config.store.display(), jobs.len()))
            .map_err(|e| e.to_string()),
    ));
    checks.push((
        "rules".to_owned(),
        Ok(config.rules.as_ref().map_or_else(|| "none".to_owned(), |r| format!("{} rules", r.rules.len()))),
    ));
    if let Some(pacs) = &config.pacs {
        let status = lightbox_workflow::pacs::pacs_status(pacs).await;
        checks.push((
            format!("PACS {}", status.name),
            if status.reachable {
                Ok(format!("{} reachable ({} ms)", status.url, status.millis))
            } else {
                Err(format!("{} unreachable: {}", status.url, status.detail))
            },
        ));
    }
    checks
}

/// Runs the daemon until Ctrl-C or SIGTERM, on its own runtime; `ready` is told the address.
pub fn run_blocking(config: ServeConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let server = start(config).await?;
        ready(server.local_addr);
        server.wait().await
    })
}

/// [`check`], on its own runtime.
pub fn check_blocking(config: &ServeConfig) -> Result<Vec<CheckLine>, ServeError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(check(config)))
}

/// The OpenAPI document as pretty JSON (what `openapi.json` in the repository holds).
pub fn openapi_json() -> String {
    serde_json::to_string_pretty(&openapi()).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in `openapi.json` is what the code generates (`lightbox serve --openapi`
    /// rewrites it).
    #[test]
    fn the_checked_in_openapi_document_matches_the_code() -> anyhow::Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
        let checked_in: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let generated: serde_json::Value = serde_json::from_str(&openapi_json())?;
        assert!(
            checked_in == generated,
            "{} is out of date: run `lightbox serve --openapi > openapi.json`",
            path.display()
        );
        Ok(())
    }

    #[test]
    fn a_bind_beyond_loopback_needs_tokens() {
        let mut config = ServeConfig::new("/tmp/store".into());
        assert!(config.check().is_ok());
        config.bind = ([0, 0, 0, 0], 8480).into();
        assert!(config.check().is_err());
        config.token_hashes = vec![token_hash("secret")];
        assert!(config.check().is_ok());
        config.token_hashes = vec!["nope".into()];
        assert!(config.check().is_err());
    }
}
