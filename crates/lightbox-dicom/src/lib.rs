//! DICOM for Lightbox, on dicom-rs: scan folders into patients / studies / series, decode pixels,
//! assemble volumes in patient space.
//!
//! This is the only crate that sees dicom-rs types; everything it returns is `lightbox-core`
//! vocabulary. Bad files become [`FileIssue`](lightbox_core::FileIssue)s or [`DicomError`]s that
//! name the file, never panics.

mod budget;
mod build;
mod error;
mod facts;
mod header;
mod precheck;
mod read_results;
mod scan;
mod seg;
mod sources;
mod sr;
mod volume;
mod write;

pub use budget::ParseGuardAllocator;
pub use error::DicomError;
pub use facts::{SeriesFacts, series_facts};
pub use header::read_instance;
pub use read_results::{
    SegFrame, SegOverlay, SegReading, SegmentInfo, SrGroup, SrReading, read_seg, read_sr, seg_overlay,
};
pub use scan::{ScanReport, scan_files, scan_path};
pub use seg::{
    Code, LABEL_MAP_SEGMENTATION_STORAGE, SegPixels, SegSeries, Segment, SegmentAlgorithm, Written, write_seg,
    write_seg_as,
};
pub use sr::{
    Algorithm, Measurement, MeasurementGroup, MeasurementReport, Observer, SegmentRef, SignedSr, sign_sr, write_sr,
};
pub use volume::{DisplaySet, LoadWarning, display_sets};
pub use write::{NewSeries, new_uid, uid_from, write_mr_phases, write_mr_series};
