//! Lightbox's link to the hospital PACS.
//!
//! - [`DicomWebClient`]: QIDO-RS search, WADO-RS retrieval (instances, series, metadata, frames,
//!   bulk data) streamed part by part to disk, STOW-RS with per-instance results. HTTP basic or
//!   bearer auth, TLS with a custom CA and client certificates (mutual TLS), timeouts, retries
//!   with exponential backoff and jitter on connection errors and 5xx — never on 4xx.
//! - [`dimse`]: a C-STORE/C-ECHO SCP (the PACS pushes studies to us) and a C-STORE SCU.
//! - [`outbox`]: drains the store's outbox exactly once per SOP Instance UID.
//!
//! Everything that arrives goes through [`lightbox_store::Store`].

mod client;
pub mod dimse;
mod error;
mod json;
mod multipart;
pub mod outbox;
mod qido;
mod stow;
mod tls;
mod wado;

pub use client::{Auth, DicomWebClient, DicomWebConfig, RetryPolicy};
pub use error::PacsError;
pub use json::{DicomJson, tags};
pub use multipart::{MultipartWriter, PartSink, RelatedParts, boundary_of};
pub use qido::{QidoLevel, QidoQuery};
pub use stow::{StowFailure, StowResult};
pub use tls::TlsOptions;
pub use wado::{Frame, FrameSyntax, RetrieveFailure, RetrieveSummary, TransferControl, TransferProgress};
