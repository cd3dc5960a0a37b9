//! Clinical pipelines on top of the image processing (`lightbox-imaging`) and the on-device
//! models (`lightbox-ai`): brain volumes and atrophy against healthy norms (`brain`), prostate
//! lesion candidates from a probability map (`prostate`), breast DCE kinetics (`breast`).
//!
//! Everything here is an automated measurement for research: callers label it as such ("AI
//! output, not for clinical use") wherever it reaches a person.

pub mod bpmri;
pub mod brain;
pub mod breast;
pub mod prostate;
pub mod regions;
pub mod synthetic;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    #[error(transparent)]
    Imaging(#[from] lightbox_imaging::ImagingError),

    #[error(transparent)]
    Ai(#[from] lightbox_ai::AiError),

    #[error("{0}")]
    Input(String),

    /// A part of the input is not there (yet): a study whose ADC map has not arrived. A caller
    /// that receives studies series by series waits for it rather than failing.
    #[error("{0}")]
    Missing(String),
}
