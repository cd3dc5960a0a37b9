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
    /// Frames of each instance, when every image instance has the same number.
    pub frames_per_instance: Option<u32>,
    /// Distinct image positions among single-frame instances (0 when unknown).
    pub distinct_positions: usize,
    /// Transfer syntaxes seen, by name, in first-seen order.
    pub transfer_syntaxes: Vec<String>,
    /// The window the modality suggests (first Window Center/Width of the first instance).
    pub window: Option<WindowLevel>,
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

    /// `(rows, columns, slices, time points)` as a reader would count them. Single-frame series:
    /// slices are the distinct positions when every position repeats equally often (a 4-D
    /// series). Several multi-frame instances with equal frame counts: one volume per instance.
    /// Otherwise every frame is a slice.
    pub fn shape(&self) -> (u32, u32, u32, u32) {
        let frames = self.frame_count.max(1);
        let instances = u32::try_from(self.instance_count).unwrap_or(u32::MAX);
        let positions = u32::try_from(self.distinct_positions).unwrap_or(0);
        match self.frames_per_instance {
            Some(1) if positions > 0 && frames.is_multiple_of(positions) => {
                (self.rows, self.columns, positions, frames / positions)
            }
            Some(per) if per > 1 && instances > 1 => (self.rows, self.columns, per, instances),
            _ => (self.rows, self.columns, frames, 1),
        }
    }
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

    fn series(frames: u32, instances: usize, positions: usize) -> SeriesInfo {
        let per = frames / instances as u32;
        SeriesInfo {
            uid: SeriesInstanceUid::new("1.2.3"),
            number: Some(1),
            modality: "MR".into(),
            description: String::new(),
            instance_count: instances,
            file_count: instances,
            rows: 64,
            columns: 64,
            frame_count: frames,
            frames_per_instance: (per * instances as u32 == frames).then_some(per),
            distinct_positions: positions,
            transfer_syntaxes: vec![],
            window: None,
            mosaic: false,
            files: vec![],
        }
    }

    #[test]
    fn uid_trims_dicom_padding() {
        assert_eq!(SeriesInstanceUid::new("1.2.840.10008\0").as_str(), "1.2.840.10008");
    }

    #[test]
    fn shape_splits_repeated_positions_into_time_points() {
        assert_eq!(series(150, 150, 15).shape(), (64, 64, 15, 10));
        assert_eq!(series(20, 20, 20).shape(), (64, 64, 20, 1));
        // One multi-frame instance: positions not read yet, frames are the slices.
        assert_eq!(series(64, 1, 0).shape(), (64, 64, 64, 1));
        // Several multi-frame instances of equal length: one volume each (Siemens XA fMRI).
        assert_eq!(series(24, 4, 0).shape(), (64, 64, 6, 4));
        // Uneven repetition is not silently called 4-D.
        assert_eq!(series(7, 7, 3).shape(), (64, 64, 7, 1));
    }
}
