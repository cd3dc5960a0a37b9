//! Scanning a folder into patients / studies / series, reading headers only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use lightbox_core::{DisplaySetInfo, FileIssue, SeriesInfo, SeriesInstanceUid, StudyInfo, StudyInstanceUid};
use rayon::prelude::*;

use crate::DicomError;
use crate::header::{InstanceHeader, Skip, open_header};
use crate::volume::{DisplaySet, build_display_sets};

/// What a scan found: studies (each with its series), and the files it could not use.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Sorted by patient, then study date, then UID.
    pub studies: Vec<StudyInfo>,
    /// Files that are not DICOM instances, with the reason; sorted by path.
    pub issues: Vec<FileIssue>,
    /// Regular files looked at.
    pub files_scanned: usize,
    /// Display sets of every series, built from the headers read by the scan.
    sets: HashMap<SeriesInstanceUid, Vec<DisplaySet>>,
    /// Temporary folders holding expanded zip archives: the files listed in the series live
    /// there as long as this report (or a clone of it) does.
    _expanded_archives: Vec<std::sync::Arc<tempfile::TempDir>>,
}

impl ScanReport {
    pub fn series(&self) -> impl Iterator<Item = (&StudyInfo, &SeriesInfo)> {
        self.studies.iter().flat_map(|st| st.series.iter().map(move |se| (st, se)))
    }

    pub fn find_series(&self, uid: &str) -> Option<&SeriesInfo> {
        self.series().map(|(_, se)| se).find(|se| se.uid.as_str() == uid)
    }

    /// The display sets of a series of this report, largest first (no file is read again).
    pub fn display_sets(&self, series: &SeriesInfo) -> &[DisplaySet] {
        self.sets.get(&series.uid).map_or(&[], Vec::as_slice)
    }
}

/// Scans a file, a folder (recursively, in parallel), a DICOMDIR (the files it lists) or a zip
/// archive (expanded into a temporary folder that lives as long as the report). Only a root
/// that cannot be read is an error; every unusable file below it becomes a [`FileIssue`].
pub fn scan_path(root: &Path) -> Result<ScanReport, DicomError> {
    let crate::sources::Sources { files, issues, keep } = crate::sources::collect(root)?;
    Ok(scan_list(files, issues, keep))
}

/// Scans exactly these files (e.g. the stored instances of one series).
pub fn scan_files(files: &[PathBuf]) -> ScanReport {
    scan_list(files.to_vec(), Vec::new(), Vec::new())
}

fn scan_list(
    files: Vec<PathBuf>,
    mut issues: Vec<FileIssue>,
    keep: Vec<std::sync::Arc<tempfile::TempDir>>,
) -> ScanReport {
    let results: Vec<Result<InstanceHeader, (PathBuf, Skip)>> =
        files.par_iter().map(|path| open_header(path).map_err(|skip| (path.clone(), skip))).collect();

    let mut headers = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(h) => headers.push(h),
            Err((path, Skip::Directory)) => issues.push(FileIssue {
                path,
                reason: "DICOMDIR index, not an instance (the files it lists are scanned directly)".into(),
            }),
            Err((path, Skip::Error(e))) => issues.push(FileIssue { path, reason: reason_without_path(&e) }),
        }
    }
    issues.sort_by(|a, b| a.path.cmp(&b.path));

    let (studies, sets) = group(headers);
    ScanReport { studies, issues, files_scanned: files.len(), sets, _expanded_archives: keep }
}

/// The error's message without the leading path (a [`FileIssue`] carries the path already).
fn reason_without_path(e: &DicomError) -> String {
    let mut reason = e.to_string();
    let path_prefix = match e {
        DicomError::Io { path, .. }
        | DicomError::NotDicom { path, .. }
        | DicomError::Parse { path, .. }
        | DicomError::MissingAttribute { path, .. }
        | DicomError::Decode { path, .. }
        | DicomError::Unsupported { path, .. }
        | DicomError::Write { path, .. } => Some(format!("{}: ", path.display())),
        DicomError::Series { .. } => None,
    };
    if let Some(prefix) = path_prefix
        && let Some(rest) = reason.strip_prefix(&prefix)
    {
        reason = rest.to_owned();
    }
    reason
}

#[derive(Default)]
struct SeriesAcc {
    headers: Vec<InstanceHeader>,
}

fn group(headers: Vec<InstanceHeader>) -> (Vec<StudyInfo>, HashMap<SeriesInstanceUid, Vec<DisplaySet>>) {
    let mut studies: BTreeMap<StudyInstanceUid, (InstanceHeader, BTreeMap<SeriesInstanceUid, SeriesAcc>)> =
        BTreeMap::new();
    for h in headers {
        let (_, series) = studies.entry(h.record.study_uid.clone()).or_insert_with(|| (h.clone(), BTreeMap::new()));
        series.entry(h.record.series_uid.clone()).or_default().headers.push(h);
    }

    let mut all_sets = HashMap::new();
    let mut out: Vec<StudyInfo> = studies
        .into_iter()
        .map(|(uid, (first, series))| {
            let mut series: Vec<SeriesInfo> = series
                .into_values()
                .map(|acc| {
                    let (info, sets) = summarize_series(acc);
                    all_sets.insert(info.uid.clone(), sets);
                    info
                })
                .collect();
            series.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.uid.cmp(&b.uid)));
            StudyInfo {
                uid,
                patient: first.record.patient,
                date: first.record.study_date,
                description: first.record.study_description,
                accession_number: first.record.accession_number,
                series,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.patient, &a.date, &a.uid).cmp(&(&b.patient, &b.date, &b.uid)));
    (out, all_sets)
}

fn summarize_series(mut acc: SeriesAcc) -> (SeriesInfo, Vec<DisplaySet>) {
    acc.headers.sort_by(|a, b| a.path.cmp(&b.path));
    let file_count = acc.headers.len();
    let mut seen = HashSet::new();
    let distinct: Vec<&InstanceHeader> =
        acc.headers.iter().filter(|h| seen.insert(h.record.sop_instance_uid.as_str())).collect();

    let first = distinct[0];
    let mut transfer_syntaxes: Vec<String> = Vec::new();
    for h in &acc.headers {
        if !transfer_syntaxes.contains(&h.record.transfer_syntax) {
            transfer_syntaxes.push(h.record.transfer_syntax.clone());
        }
    }
    let mut sets = build_display_sets(acc.headers.clone());
    sets.sort_by_key(|d| {
        std::cmp::Reverse(u64::from(d.columns) * u64::from(d.rows) * u64::from(d.slices) * u64::from(d.time_points))
    });
    let display_sets: Vec<DisplaySetInfo> = sets.iter().map(DisplaySet::info).collect();

    let info = SeriesInfo {
        uid: first.record.series_uid.clone(),
        number: first.record.series_number,
        modality: first.record.modality.clone(),
        description: first.record.series_description.clone(),
        instance_count: distinct.len(),
        file_count,
        rows: distinct.iter().map(|h| h.rows).max().unwrap_or(0),
        columns: distinct.iter().map(|h| h.columns).max().unwrap_or(0),
        frame_count: distinct.iter().filter(|h| h.rows > 0).map(|h| h.frames).sum(),
        transfer_syntaxes,
        window: distinct.iter().find_map(|h| h.window),
        display_sets,
        mosaic: distinct.iter().any(|h| h.mosaic),
        files: acc.headers.iter().map(|h| h.path.clone()).collect(),
    };
    (info, sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_root_is_an_error_naming_it() {
        let err = scan_path(Path::new("/nonexistent/lightbox")).expect_err("must fail");
        assert!(err.to_string().starts_with("/nonexistent/lightbox: cannot read"), "{err}");
    }

    #[test]
    fn junk_files_become_issues_not_panics() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("notes.txt"), "hello")?;
        let mut fake = vec![0u8; 128];
        fake.extend_from_slice(b"DICM");
        fake.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I', 0xff, 0x7f]);
        std::fs::write(dir.path().join("broken.dcm"), &fake)?;
        std::fs::write(dir.path().join("empty.dcm"), [])?;

        let report = scan_path(dir.path())?;
        assert_eq!(report.files_scanned, 3);
        assert!(report.studies.is_empty());
        let reasons: Vec<(String, &str)> = report
            .issues
            .iter()
            .map(|i| (i.path.file_name().unwrap_or_default().to_string_lossy().into_owned(), i.reason.as_str()))
            .collect();
        assert_eq!(reasons[0].0, "broken.dcm");
        assert!(reasons[0].1.starts_with("invalid DICOM"), "{reasons:?}");
        assert_eq!(reasons[1], ("empty.dcm".into(), "not a DICOM file (shorter than a DICOM preamble)"));
        assert_eq!(reasons[2], ("notes.txt".into(), "not a DICOM file (shorter than a DICOM preamble)"));
        Ok(())
    }
}
