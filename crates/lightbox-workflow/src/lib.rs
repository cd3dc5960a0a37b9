//! The Lightbox engine and API boundary: everything the workstation UI, the CLI or a test can do,
//! except drawing pixels. Front ends are thin: a Tauri command or a CLI subcommand is one call here.
//!
//! Today this is the thin slice: scanning a folder into series and opening the diagnostic viewer
//! on one of them. Import, store, jobs and the outbox arrive here as their crates land.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub mod ai;
pub mod brain;
pub mod breast;
pub mod engine;
pub mod ms;
pub mod pacs;
pub mod pipeline;
pub mod plugins;
pub mod prostate;
pub mod settings;
pub mod synthetic_model;

use lightbox_core::SeriesInstanceUid;
pub use lightbox_dicom::{
    NewSeries, ParseGuardAllocator, ScanReport, SegOverlay, SegReading, SrReading, read_instance, read_seg, read_sr,
    seg_overlay,
};
pub use lightbox_store::{Measurement, StudyRow, WorklistQuery, WorklistSort};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    #[error(transparent)]
    Dicom(#[from] lightbox_dicom::DicomError),

    #[error("no series {uid} in {folder}")]
    UnknownSeries { uid: String, folder: PathBuf },

    #[error(transparent)]
    Nifti(#[from] lightbox_nifti::NiftiError),

    #[error(transparent)]
    Store(#[from] lightbox_store::StoreError),

    #[error("{path}: cannot create the output folder: {source}")]
    OutputFolder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: no image series to export{}", if issues.is_empty() { String::new() } else { format!("; unreadable: {issues}") })]
    NothingToExport { path: PathBuf, issues: String },

    #[error(transparent)]
    Pacs(#[from] lightbox_pacs::PacsError),

    #[error("dispatch rules {path}: {detail}")]
    Rules { path: PathBuf, detail: String },

    #[error("settings {path}: {detail}")]
    Settings { path: PathBuf, detail: String },

    #[error(
        "unknown pipeline {0:?} (known: threshold-volume, brain-atrophy, ms-lesion-change, breast-dce, prostate-bpmri)"
    )]
    UnknownPipeline(String),

    #[error("analysis: {0}")]
    Analysis(String),

    /// The input is not whole yet (a dynamic series whose later phases have not arrived, a
    /// study without its ADC map yet): the job waits, it has not failed. `input` names it
    /// ("series 1.2…", "study 1.2…").
    #[error(
        "{input} is incomplete: {missing}; waiting for the rest (a dispatch rule analyses it when it arrives; \
         without one, run the job again then)"
    )]
    Incomplete { input: String, missing: String },

    /// Instances of the job's series (or study) arrived or left after it was queued: the newer
    /// input is another job's, this one is superseded.
    #[error("{input} changed since job {job} was queued (instances arrived or left); its newer input is another job")]
    InputChanged { job: i64, input: String },

    #[error(transparent)]
    Ai(#[from] lightbox_ai::AiError),

    #[error("job {0} was cancelled (or taken over by another runner after its lease lapsed)")]
    Cancelled(i64),

    #[error("job {0} is running in another process")]
    Busy(i64),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start the viewer ({program}): {source}")]
    ViewerLaunch {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl WorkflowError {
    /// A stable machine code for front ends, so no UI ever matches on message text.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Dicom(_) => "dicom",
            Self::Nifti(_) => "nifti",
            Self::Store(_) => "store",
            Self::OutputFolder { .. } => "output_folder",
            Self::UnknownSeries { .. } => "unknown_series",
            Self::ViewerLaunch { .. } => "viewer_launch",
            Self::NothingToExport { .. } => "nothing_to_export",
            Self::Pacs(e) => e.code(),
            Self::Rules { .. } => "rules",
            Self::UnknownPipeline(_) => "unknown_pipeline",
            Self::Settings { .. } => "settings",
            Self::Analysis(_) => "analysis",
            Self::Incomplete { .. } => "incomplete",
            Self::InputChanged { .. } => "input_changed",
            Self::Ai(_) => "ai",
            Self::Cancelled(_) => "cancelled",
            Self::Busy(_) => "busy",
            Self::Io { .. } => "io",
        }
    }
}

/// Scans a file or folder of DICOM files into patients / studies / series (headers only).
pub fn scan(path: &Path) -> Result<ScanReport, WorkflowError> {
    Ok(lightbox_dicom::scan_path(path)?)
}

/// Converts the image series under `path` (all, or the one named) to NIfTI files in `out_dir`,
/// one file per display set (4-D when it has time points), named like dcm2niix does:
/// `<description>_<series number>[_<display set>].nii[.gz]`. Returns the files written.
pub fn export_nifti(
    path: &Path,
    out_dir: &Path,
    series: Option<&str>,
    gzip: bool,
) -> Result<Vec<PathBuf>, WorkflowError> {
    let report = scan(path)?;
    let chosen: Vec<&lightbox_core::SeriesInfo> = match series {
        Some(uid) => vec![
            report
                .find_series(uid)
                .ok_or_else(|| WorkflowError::UnknownSeries { uid: uid.to_owned(), folder: path.to_owned() })?,
        ],
        None => report.series().map(|(_, s)| s).filter(|s| !s.display_sets.is_empty()).collect(),
    };
    if chosen.is_empty() {
        let issues: Vec<String> =
            report.issues.iter().take(5).map(|i| format!("{}: {}", i.path.display(), i.reason)).collect();
        return Err(WorkflowError::NothingToExport { path: path.to_owned(), issues: issues.join("; ") });
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|source| WorkflowError::OutputFolder { path: out_dir.to_owned(), source })?;
    let mut written = Vec::new();
    for s in chosen {
        for set in report.display_sets(s) {
            let mut name = sanitize(&s.description);
            if let Some(n) = s.number {
                name.push_str(&format!("_{n}"));
            }
            if !set.label.is_empty() {
                name.push('_');
                name.push_str(&sanitize(&set.label));
            }
            let file = out_dir.join(format!("{name}.nii{}", if gzip { ".gz" } else { "" }));
            let volumes = (0..set.time_points).map(|t| set.load_stored(t)).collect::<Result<Vec<_>, _>>()?;
            lightbox_nifti::write_stored_series(&file, &volumes)?;
            tracing::info!(file = %file.display(), "exported");
            written.push(file);
        }
    }
    Ok(written)
}

/// Converts a NIfTI volume (its first time point) into a DICOM MR series in `out_dir`, for the
/// patient and study the caller names. Returns the files written, in slice order.
pub fn nifti_to_dicom(
    nifti: &Path,
    out_dir: &Path,
    series: &lightbox_dicom::NewSeries,
) -> Result<Vec<PathBuf>, WorkflowError> {
    let image = lightbox_nifti::read(nifti)?;
    let volume = image.volume(0)?;
    Ok(lightbox_dicom::write_mr_series(&volume, series, out_dir)?)
}

/// The local store: `LIGHTBOX_STORE`, else `$XDG_DATA_HOME/lightbox/store`, else
/// `~/.local/share/lightbox/store`.
pub fn default_store_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIGHTBOX_STORE") {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from).join(".local/share")
    });
    data.join("lightbox/store")
}

/// What an import did.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    pub imported: usize,
    pub already_stored: usize,
    /// Files not imported, with the reason.
    pub failed: Vec<lightbox_core::FileIssue>,
}

/// Imports every DICOM instance under `path` into the store at `store_dir`. Instances already
/// stored are skipped; unreadable files are listed, and the rest still imports.
pub fn import(store_dir: &Path, path: &Path) -> Result<ImportSummary, WorkflowError> {
    import_with_progress(store_dir, path, None)
}

/// Checks the store: every indexed instance has its file, unchanged; what interrupted imports
/// left is listed apart.
pub fn verify_store(store_dir: &Path) -> Result<lightbox_store::VerifyReport, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.verify()?)
}

/// Indexes what interrupted imports left in the store and removes their leftovers, leaving
/// alone files younger than `min_age` (see [`lightbox_store::Store::repair`]); audited.
pub fn repair_store(
    store_dir: &Path,
    min_age: std::time::Duration,
) -> Result<lightbox_store::RepairReport, WorkflowError> {
    let mut store = lightbox_store::Store::open(store_dir)?;
    let report = store.repair(min_age)?;
    let what = format!(
        "indexed {}, temporary files removed {}, copies of stored instances kept {}, refused {}",
        report.indexed,
        report.temporary_removed,
        report.copies_kept,
        report.refused.len()
    );
    store.audit("local-user", "repair", &store_dir.display().to_string(), &what)?;
    Ok(report)
}

/// How many jobs are in each state (`queued`, `running`, `waiting`, `done`, …; absent: none).
pub fn job_counts(store_dir: &Path) -> Result<std::collections::BTreeMap<String, usize>, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.job_counts()?)
}

/// Analyses that ran or failed, newest first.
pub fn jobs(store_dir: &Path) -> Result<Vec<lightbox_store::Job>, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.jobs()?)
}

/// The series of a stored study (UID, modality, description, instances); `None` when the study
/// is not stored.
pub fn study_series(
    store_dir: &Path,
    study_uid: &str,
) -> Result<Option<Vec<lightbox_store::SeriesRow>>, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.series_of_study(study_uid)?)
}

/// Every stored series: (UID, modality, description, instances).
pub fn stored_series(store_dir: &Path) -> Result<Vec<(String, String, String, u32)>, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.series_list()?)
}

/// The stored series (UID, modality, description, instances) these instances belong to.
pub fn series_of_instances(
    store_dir: &Path,
    sop_uids: &std::collections::BTreeSet<String>,
) -> Result<Vec<(String, String, String, u32)>, WorkflowError> {
    let store = lightbox_store::Store::open(store_dir)?;
    let mut wanted = std::collections::BTreeSet::new();
    for sop in sop_uids {
        if let Some(series) = store.series_of(sop)? {
            wanted.insert(series);
        }
    }
    Ok(store.series_list()?.into_iter().filter(|(uid, ..)| wanted.contains(uid)).collect())
}

/// How far an import is: files done of those found, bytes copied, files refused so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportProgress {
    pub files_done: usize,
    pub files_total: usize,
    pub bytes: u64,
    pub failed: usize,
}

/// [`import`], reporting progress after each file on `progress`. Each series is indexed in one
/// transaction ([`lightbox_store::Store::import_files`]), so an engine watching the store sees
/// a series whole, never the part copied so far.
pub fn import_with_progress(
    store_dir: &Path,
    path: &Path,
    progress: Option<&std::sync::mpsc::Sender<ImportProgress>>,
) -> Result<ImportSummary, WorkflowError> {
    let report = scan(path)?;
    let mut store = lightbox_store::Store::open(store_dir)?;
    let mut summary = ImportSummary { failed: report.issues.clone(), ..Default::default() };
    let files_total = report.series().map(|(_, series)| series.files.len()).sum();
    let mut state = ImportProgress { files_total, failed: report.issues.len(), ..Default::default() };
    for (_, series) in report.series() {
        let outcomes = store.import_files(&series.files, |file| {
            state.files_done += 1;
            state.bytes += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            if let Some(progress) = progress {
                let _ = progress.send(state.clone());
            }
        });
        for (file, outcome) in series.files.iter().zip(outcomes) {
            match outcome {
                Ok(lightbox_store::ImportOutcome::Imported) => summary.imported += 1,
                Ok(lightbox_store::ImportOutcome::AlreadyStored) => summary.already_stored += 1,
                Err(e) => {
                    summary.failed.push(lightbox_core::FileIssue { path: file.clone(), reason: e.to_string() });
                    state.failed += 1;
                }
            }
        }
        if let Some(progress) = progress.filter(|_| state.failed > 0) {
            let _ = progress.send(state.clone()); // the series' refusals counted
        }
    }
    store.audit("local-user", "import", &path.display().to_string(), &format!("{} instances", summary.imported))?;
    Ok(summary)
}

/// Studies in the store matching `query`.
pub fn worklist(store_dir: &Path, query: &WorklistQuery) -> Result<Vec<StudyRow>, WorkflowError> {
    Ok(lightbox_store::Store::open(store_dir)?.worklist(query)?)
}

/// Keeps letters, digits, `-`, `.` and `=`; everything else becomes `_` (as dcm2niix does).
fn sanitize(text: &str) -> String {
    let cleaned: String = text
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '=') { c } else { '_' })
        .collect();
    if cleaned.is_empty() { "series".to_owned() } else { cleaned }
}

/// The environment variable that names the viewer binary, overriding the search next to the
/// running executable and on `PATH`.
pub const VIEWER_BIN_ENV: &str = "LIGHTBOX_VIEWER_BIN";

/// Opens the diagnostic viewer window on `folder`, showing `series` (or the largest series).
///
/// The viewer is its own process: it reads pixels from disk itself, so pixels never cross the
/// process boundary. Returns the child so the caller can wait for it or leave it running.
pub fn open_viewer(folder: &Path, series: Option<&SeriesInstanceUid>) -> Result<Child, WorkflowError> {
    let program = viewer_program();
    let mut command = Command::new(&program);
    command.arg(folder);
    if let Some(uid) = series {
        command.arg("--series").arg(uid.as_str());
    }
    tracing::info!(program = %program.display(), "opening viewer");
    command.spawn().map_err(|source| WorkflowError::ViewerLaunch { program, source })
}

/// Opens the viewer on an analysis result: the analysed series with its segmentation drawn
/// over it (the viewer's `--seg`). The series' stored files are linked into a folder of their
/// own under the store, so the viewer reads only them.
/// With `author`, lengths measured in the viewer are saved for the report they sign.
/// Opens the viewer on a result's series with its segmentation; `at` (patient mm) opens it at
/// that point, e.g. a lesion the result lists.
pub fn open_result_in_viewer(
    store_dir: &Path,
    job_id: i64,
    author: Option<&str>,
    at: Option<[f64; 3]>,
) -> Result<Child, WorkflowError> {
    let row = pipeline::results(store_dir)?
        .into_iter()
        .find(|r| r.job_id == job_id)
        .ok_or_else(|| WorkflowError::Analysis(format!("no analysis job {job_id}")))?;
    let store = lightbox_store::Store::open(store_dir)?;
    let seg = match &row.seg_uid {
        Some(uid) => store.instance_file(uid)?,
        None => None,
    };
    let folder = series_folder(store_dir, &row.series_uid, &format!("view-job-{job_id}"))?;
    let program = viewer_program();
    let mut command = Command::new(&program);
    command.arg(&folder).arg("--series").arg(&row.series_uid);
    if let Some(seg) = seg {
        command.arg("--seg").arg(seg);
    }
    if let Some(author) = author.map(str::trim).filter(|a| !a.is_empty()) {
        command.arg("--store").arg(store_dir).arg("--as").arg(author);
    }
    if let Some(p) = at.filter(|p| p.iter().all(|v| v.is_finite())) {
        command.arg(format!("--at={},{},{}", p[0], p[1], p[2]));
    }
    tracing::info!(program = %program.display(), job_id, "opening viewer on a result");
    command.spawn().map_err(|source| WorkflowError::ViewerLaunch { program, source })
}

/// The prior a series is compared with: the patient's newest earlier study's series of the same
/// modality, the same description if there is one, else the same MR sequence type.
#[derive(Clone, Debug, PartialEq)]
pub struct PriorChoice {
    pub series_uid: String,
    pub study_date: String,
    pub description: String,
    /// Why this one.
    pub reason: String,
}

pub fn find_prior(store_dir: &Path, series_uid: &str) -> Result<Option<PriorChoice>, WorkflowError> {
    let store = lightbox_store::Store::open(store_dir)?;
    let current = pipeline::series_to_match(store_dir, series_uid)?.facts;
    let earlier = store.earlier_series(series_uid)?;
    let Some(newest_date) = earlier.first().map(|e| e.study_date.clone()) else {
        return Ok(None);
    };
    let candidates: Vec<_> =
        earlier.iter().filter(|e| e.study_date == newest_date && e.modality == current.modality).collect();
    let by_description =
        candidates.iter().find(|e| !current.description.is_empty() && e.description == current.description);
    let choice = match by_description {
        Some(e) => Some((*e, format!("same description {:?}", current.description))),
        None => candidates.iter().find_map(|e| {
            let facts = pipeline::series_to_match(store_dir, &e.series_uid).ok()?.facts;
            (!current.sequence.is_empty() && facts.sequence == current.sequence)
                .then(|| (*e, format!("same sequence type {}", current.sequence)))
        }),
    };
    Ok(choice.map(|(e, reason)| PriorChoice {
        series_uid: e.series_uid.clone(),
        study_date: e.study_date.clone(),
        description: e.description.clone(),
        reason,
    }))
}

/// Links a stored series' files into a folder of its own under the store (for the viewer).
fn series_folder(store_dir: &Path, series_uid: &str, name: &str) -> Result<PathBuf, WorkflowError> {
    let files = lightbox_store::Store::open(store_dir)?.series_files(series_uid)?;
    if files.is_empty() {
        return Err(WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store_dir.to_owned() });
    }
    let folder = store_dir.join("tmp").join(name);
    let io = |source| WorkflowError::Io { path: folder.clone(), source };
    if folder.exists() {
        std::fs::remove_dir_all(&folder).map_err(io)?;
    }
    std::fs::create_dir_all(&folder).map_err(io)?;
    for (i, file) in files.iter().enumerate() {
        let link = folder.join(format!("{i:05}.dcm"));
        #[cfg(unix)]
        std::os::unix::fs::symlink(file, &link).map_err(io)?;
        #[cfg(not(unix))]
        std::fs::copy(file, &link).map(|_| ()).map_err(io)?;
    }
    Ok(folder)
}

/// Opens the viewer on a stored series beside its prior (see [`find_prior`]), slices linked.
pub fn open_compare_with_prior(store_dir: &Path, series_uid: &str) -> Result<(PriorChoice, Child), WorkflowError> {
    let prior = find_prior(store_dir, series_uid)?.ok_or_else(|| {
        WorkflowError::Analysis(format!("no earlier study of this patient with a comparable series to {series_uid}"))
    })?;
    let current = series_folder(store_dir, series_uid, "compare-current")?;
    let earlier = series_folder(store_dir, &prior.series_uid, "compare-prior")?;
    let program = viewer_program();
    let mut command = Command::new(&program);
    command.arg(&current).arg("--series").arg(series_uid).arg("--prior").arg(&earlier);
    command.arg("--prior-series").arg(&prior.series_uid);
    tracing::info!(program = %program.display(), prior = %prior.series_uid, "opening viewer to compare with prior");
    let child = command.spawn().map_err(|source| WorkflowError::ViewerLaunch { program, source })?;
    Ok((prior, child))
}

/// Opens the viewer like [`open_viewer`] and lets it run on its own: a background thread waits
/// for it, so a closed viewer leaves no zombie process behind. Returns the viewer's process id.
pub fn open_viewer_detached(folder: &Path, series: Option<&SeriesInstanceUid>) -> Result<u32, WorkflowError> {
    let mut child = open_viewer(folder, series)?;
    let pid = child.id();
    std::thread::spawn(move || match child.wait() {
        Ok(status) if !status.success() => tracing::warn!(pid, %status, "viewer exited with an error"),
        Ok(_) => {}
        Err(e) => tracing::warn!(pid, "waiting for the viewer failed: {e}"),
    });
    Ok(pid)
}

fn viewer_program() -> PathBuf {
    if let Some(path) = std::env::var_os(VIEWER_BIN_ENV) {
        return PathBuf::from(path);
    }
    let name = format!("lightbox-viewer{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .filter(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Checks that `uid` names a series of `report`, for front ends that take a UID from the user.
pub fn require_series(report: &ScanReport, folder: &Path, uid: &str) -> Result<SeriesInstanceUid, WorkflowError> {
    report
        .find_series(uid)
        .map(|s| s.uid.clone())
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: uid.to_owned(), folder: folder.to_owned() })
}
