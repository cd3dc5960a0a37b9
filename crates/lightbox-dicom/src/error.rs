use std::path::PathBuf;

use lightbox_core::SeriesInstanceUid;

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a DICOM file ({reason})")]
    NotDicom { path: PathBuf, reason: String },

    #[error("{path}: invalid DICOM: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Source,
    },

    #[error("{path}: missing {attribute}")]
    MissingAttribute { path: PathBuf, attribute: &'static str },

    #[error("{path}: cannot decode pixel data: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: Source,
    },

    #[error("{path}: {what} is not supported yet")]
    Unsupported { path: PathBuf, what: String },

    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: Source,
    },

    #[error("series {series}: {reason}")]
    Series { series: SeriesInstanceUid, reason: String },
}
