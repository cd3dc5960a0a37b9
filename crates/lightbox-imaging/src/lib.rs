//! CPU image processing: resampling volumes between grids, rigid registration by normalised
//! mutual information, binary morphology (connected components, hole filling) and reading ITK
//! transform files.
//!
//! Everything works in DICOM patient space (LPS millimetres): a transform here maps a point of
//! one scan to the same anatomy in another, whatever their voxel grids.

pub mod atrophy;
pub mod crop;
pub mod itk;
pub mod lesion_change;
pub mod morphology;
pub mod register;
pub mod resample;
pub mod tissue;

pub use register::{Registration, RegistrationOptions, RigidParams, register_rigid};
pub use resample::{downsample, resample_into, sample_trilinear};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagingError {
    #[error("{what} has a degenerate geometry (its voxel axes are not independent)")]
    DegenerateGeometry { what: &'static str },

    #[error("{what} holds no usable voxel values (empty or all the same)")]
    NoContrast { what: &'static str },

    #[error("the two volumes do not overlap in patient space, even after centring them")]
    NoOverlap,

    #[error("{what}")]
    Mismatch { what: &'static str },

    #[error("ITK transform file, line {line}: {problem}")]
    TransformFile { line: usize, problem: String },
}
