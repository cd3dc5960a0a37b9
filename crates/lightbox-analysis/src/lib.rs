//! Clinical pipelines on top of the image processing (`lightbox-imaging`) and the on-device
//! models (`lightbox-ai`). Today: longitudinal brain atrophy against healthy norms.
//!
//! Everything here is an automated measurement for research: callers label it as such ("AI
//! output, not for clinical use") wherever it reaches a person.

pub mod brain;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    #[error(transparent)]
    Imaging(#[from] lightbox_imaging::ImagingError),

    #[error(transparent)]
    Ai(#[from] lightbox_ai::AiError),

    #[error("{0}")]
    Input(String),
}
