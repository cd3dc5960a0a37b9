//! CPU image processing: resampling volumes between grids, rigid registration by normalised
//! mutual information, binary morphology (connected components, hole filling) and reading ITK
//! transform files.
//!
//! Everything works in DICOM patient space (LPS millimetres): a transform here maps a point of
//! one scan to the same anatomy in another, whatever their voxel grids.

pub mod atrophy;
pub mod bias;
pub mod crop;
pub mod itk;
pub mod lesion_change;
pub mod morphology;
pub mod register;
pub mod resample;
pub mod tissue;

pub use register::{
    AffineParams, AffineRegistration, Registration, RegistrationOptions, RigidParams, register_affine, register_rigid,
};
pub use resample::{downsample, resample_into, sample_trilinear};

/// The median of `values` where `mask` is set (`None` when it is set nowhere).
pub(crate) fn median_inside(values: &[f32], mask: &[bool]) -> Option<f64> {
    let mut inside: Vec<f32> = values.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    if inside.is_empty() {
        return None;
    }
    let n = inside.len();
    let (_, m, _) = inside.select_nth_unstable_by(n / 2, f32::total_cmp);
    Some(f64::from(*m))
}

/// A voxel's volume in mL (the determinant of the voxel axes).
pub fn voxel_volume_ml(patient_from_voxel: &lightbox_core::Affine3) -> f64 {
    let [x, y, z] = [patient_from_voxel.axis(0), patient_from_voxel.axis(1), patient_from_voxel.axis(2)];
    (x[0] * (y[1] * z[2] - y[2] * z[1]) - x[1] * (y[0] * z[2] - y[2] * z[0]) + x[2] * (y[0] * z[1] - y[1] * z[0])).abs()
        / 1000.0
}

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
