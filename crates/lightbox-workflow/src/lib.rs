//! The Lightbox engine and API boundary: everything the workstation UI, the CLI or a test can do,
//! except drawing pixels. Front ends are thin: a Tauri command or a CLI subcommand is one call here.
//!
//! Today this is the thin slice: scanning a folder into series and opening the diagnostic viewer
//! on one of them. Import, store, jobs and the outbox arrive here as their crates land.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use lightbox_core::SeriesInstanceUid;
pub use lightbox_dicom::ScanReport;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowError {
    #[error(transparent)]
    Dicom(#[from] lightbox_dicom::DicomError),

    #[error("no series {uid} in {folder}")]
    UnknownSeries { uid: String, folder: PathBuf },

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
            Self::UnknownSeries { .. } => "unknown_series",
            Self::ViewerLaunch { .. } => "viewer_launch",
        }
    }
}

/// Scans a file or folder of DICOM files into patients / studies / series (headers only).
pub fn scan(path: &Path) -> Result<ScanReport, WorkflowError> {
    Ok(lightbox_dicom::scan_path(path)?)
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
