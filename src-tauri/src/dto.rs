//! JSON transport types for the web UI (mirrored in ui/src/backend/types.ts). Only the shell
//! knows them; the engine below speaks `lightbox-core` types.

use lightbox_core::{FileIssue, SeriesInfo, StudyInfo};
use lightbox_workflow::{ScanReport, WorkflowError};
use serde::Serialize;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesDto {
    uid: String,
    number: Option<i32>,
    modality: String,
    description: String,
    /// columns, rows, slices, time points
    dims: [u32; 4],
    instances: usize,
    transfer_syntaxes: Vec<String>,
    mosaic: bool,
    patient_id: String,
    patient_name: String,
    study_date: String,
    study_description: String,
}

impl SeriesDto {
    fn new(study: &StudyInfo, s: &SeriesInfo) -> Self {
        let (rows, columns, slices, times) = s.shape();
        Self {
            uid: s.uid.to_string(),
            number: s.number,
            modality: s.modality.clone(),
            description: s.description.clone(),
            dims: [columns, rows, slices, times],
            instances: s.instance_count,
            transfer_syntaxes: s.transfer_syntaxes.clone(),
            mosaic: s.mosaic,
            patient_id: study.patient.id.clone(),
            patient_name: study.patient.name.clone(),
            study_date: study.date.clone(),
            study_description: study.description.clone(),
        }
    }
}

#[derive(Serialize)]
pub struct FileIssueDto {
    path: String,
    reason: String,
}

impl From<&FileIssue> for FileIssueDto {
    fn from(i: &FileIssue) -> Self {
        Self { path: i.path.display().to_string(), reason: i.reason.clone() }
    }
}

#[derive(Serialize)]
pub struct SeriesListDto {
    folder: String,
    series: Vec<SeriesDto>,
    unreadable: Vec<FileIssueDto>,
}

impl SeriesListDto {
    pub fn new(folder: &std::path::Path, report: &ScanReport) -> Self {
        Self {
            folder: folder.display().to_string(),
            series: report.series().map(|(study, s)| SeriesDto::new(study, s)).collect(),
            unreadable: report.issues.iter().map(FileIssueDto::from).collect(),
        }
    }
}

/// What every failed command returns: a machine code and a message for people.
#[derive(Serialize)]
pub struct ErrorDto {
    code: &'static str,
    message: String,
}

impl From<WorkflowError> for ErrorDto {
    fn from(e: WorkflowError) -> Self {
        Self { code: e.code(), message: e.to_string() }
    }
}
