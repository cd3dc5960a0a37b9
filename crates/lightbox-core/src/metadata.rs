use std::fmt;
use std::path::PathBuf;

use crate::WindowLevel;

macro_rules! uid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Wraps a UID, trimming the trailing NUL/space padding DICOM allows.
            pub fn new(uid: impl AsRef<str>) -> Self {
                Self(uid.as_ref().trim_end_matches(['\0', ' ']).to_owned())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uid_newtype!(
    /// Study Instance UID (0020,000D).
    StudyInstanceUid
);
uid_newtype!(
    /// Series Instance UID (0020,000E).
    SeriesInstanceUid
);

/// A patient as the headers name them. Contains PHI: never log at info level.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct PatientInfo {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StudyInfo {
    pub uid: StudyInstanceUid,
    pub patient: PatientInfo,
    /// DICOM DA, `YYYYMMDD`, as found (possibly empty).
    pub date: String,
    pub description: String,
    pub accession_number: String,
    pub series: Vec<SeriesInfo>,
}

/// One stack of a series that forms a volume per time point: what a reader would view as one
/// image set (a series may hold several, e.g. two echoes or b-values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisplaySetInfo {
    /// What sets it apart from the series' other display sets; empty when it is the only one.
    pub label: String,
    pub columns: u32,
    pub rows: u32,
    pub slices: u32,
    pub time_points: u32,
}

/// What a series is, from its headers alone (no pixel data read).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesInfo {
    pub uid: SeriesInstanceUid,
    pub number: Option<i32>,
    pub modality: String,
    pub description: String,
    /// Distinct SOP instances (files that repeat an instance UID are counted once).
    pub instance_count: usize,
    /// Files read for this series, including repeats of the same instance.
    pub file_count: usize,
    pub rows: u32,
    pub columns: u32,
    /// Frames over all distinct instances (1 per single-frame instance).
    pub frame_count: u32,
    /// Transfer syntaxes seen, by name, in first-seen order.
    pub transfer_syntaxes: Vec<String>,
    /// The window the modality suggests (first Window Center/Width of the first instance).
    pub window: Option<WindowLevel>,
    /// The volumes this series forms, largest first.
    pub display_sets: Vec<DisplaySetInfo>,
    /// True for Siemens mosaic images (several slices tiled into one frame).
    pub mosaic: bool,
    /// Files of this series, sorted by path.
    pub files: Vec<PathBuf>,
}

impl SeriesInfo {
    /// Voxels over all frames; used to pick the "largest" series.
    pub fn voxel_count(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.columns) * u64::from(self.frame_count)
    }

    /// `(rows, columns, slices, time points)` of the largest display set, or of the raw frames
    /// when the series has none (no image pixels).
    pub fn shape(&self) -> (u32, u32, u32, u32) {
        match self.display_sets.first() {
            Some(d) => (d.rows, d.columns, d.slices, d.time_points),
            None => (self.rows, self.columns, self.frame_count, 1),
        }
    }
}

/// What the store indexes about one instance (one file), from its header.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRecord {
    pub patient: PatientInfo,
    pub study_uid: StudyInstanceUid,
    /// DICOM DA, `YYYYMMDD`, as found.
    pub study_date: String,
    pub study_description: String,
    pub accession_number: String,
    pub series_uid: SeriesInstanceUid,
    pub series_number: Option<i32>,
    pub series_description: String,
    pub modality: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub instance_number: Option<i32>,
    pub transfer_syntax: String,
}

/// A file that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIssue {
    pub path: PathBuf,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_trims_dicom_padding() {
        assert_eq!(SeriesInstanceUid::new("1.2.840.10008\0").as_str(), "1.2.840.10008");
    }
}
