//! Domain vocabulary of Lightbox: identifiers, study/series metadata and volumes in patient space.
//!
//! Nothing here does I/O or knows a file format. DICOM patient space is LPS in millimetres; every
//! transform is named `target_from_source` so that `a_from_b * b_from_c` reads right to left.

mod geometry;
mod metadata;
mod volume;

pub use geometry::Affine3;
pub use metadata::{
    DisplaySetInfo, FileIssue, InstanceRecord, PatientInfo, SeriesInfo, SeriesInstanceUid, StudyInfo, StudyInstanceUid,
};
pub use volume::{StoredVolume, StoredVoxels, Volume, VolumeError, WindowLevel};
