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
    pub path: String,
    pub reason: String,
}

impl From<&FileIssue> for FileIssueDto {
    fn from(i: &FileIssue) -> Self {
        Self { path: i.path.display().to_string(), reason: i.reason.clone() }
    }
}

/// What a PACS retrieval could not bring: `path` names the series and how many of its
/// instances are missing (there is no file).
impl From<&lightbox_workflow::pacs::RetrieveFailure> for FileIssueDto {
    fn from(f: &lightbox_workflow::pacs::RetrieveFailure) -> Self {
        let lost = match f.instances {
            Some(1) => " (1 instance)".to_owned(),
            Some(n) => format!(" ({n} instances)"),
            None => String::new(),
        };
        Self { path: format!("series {}{lost}", f.series), reason: f.reason.clone() }
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

/// Worklist filters from the UI (text filters take `*` and `?`).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WorklistQueryDto {
    pub patient_name: String,
    pub patient_id: String,
    pub accession_number: String,
    pub modality: String,
    /// `YYYYMMDD`
    pub date_from: String,
    pub date_to: String,
}

impl WorklistQueryDto {
    pub fn to_query(&self) -> lightbox_workflow::WorklistQuery {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        lightbox_workflow::WorklistQuery {
            patient_name: some(&self.patient_name),
            patient_id: some(&self.patient_id),
            accession_number: some(&self.accession_number),
            modality: some(&self.modality),
            date_from: some(&self.date_from),
            date_to: some(&self.date_to),
            limit: 200,
            ..Default::default()
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorklistRowDto {
    study_uid: String,
    patient_id: String,
    patient_name: String,
    date: String,
    description: String,
    accession_number: String,
    modalities: String,
    local_instances: u32,
    pacs_instances: Option<i64>,
    outbox_pending: usize,
    analysed: usize,
    signed: usize,
    sent: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorklistDto {
    rows: Vec<WorklistRowDto>,
    /// Why the PACS part is missing (unreachable), if it is.
    warning: Option<String>,
    /// More studies match than were listed (200 from each side): narrow the search.
    more: bool,
    /// Name of the configured PACS, if any.
    pacs: Option<String>,
    store: String,
}

impl WorklistDto {
    pub fn new(merged: lightbox_workflow::pacs::MergedWorklist, pacs: Option<String>, store: &std::path::Path) -> Self {
        let rows = merged
            .entries
            .into_iter()
            .map(|e| WorklistRowDto {
                study_uid: e.study_uid,
                patient_id: e.patient_id,
                patient_name: e.patient_name,
                date: e.date,
                description: e.description,
                accession_number: e.accession_number,
                modalities: e.modalities,
                local_instances: e.local_instances,
                pacs_instances: e.pacs_instances,
                outbox_pending: e.outbox_pending,
                analysed: e.analysed,
                signed: e.signed,
                sent: e.sent,
            })
            .collect();
        Self { rows, warning: merged.warning, more: merged.more, pacs, store: store.display().to_string() }
    }
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressDto {
    pub done: usize,
    /// 0 when unknown.
    pub total: usize,
    pub bytes: u64,
    pub failed: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferSummaryDto {
    pub imported: usize,
    pub already_stored: usize,
    pub bytes: u64,
    pub failed: Vec<FileIssueDto>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxRowDto {
    id: i64,
    sop_uid: String,
    study_uid: String,
    destination: String,
    state: &'static str,
    attempts: u32,
    last_error: Option<String>,
    created_at: String,
    sent_at: Option<String>,
}

impl From<lightbox_workflow::pacs::OutboxItem> for OutboxRowDto {
    fn from(i: lightbox_workflow::pacs::OutboxItem) -> Self {
        Self {
            id: i.id,
            sop_uid: i.sop_uid,
            study_uid: i.study_uid,
            destination: i.destination,
            state: i.state.as_str(),
            attempts: i.attempts,
            last_error: i.last_error,
            created_at: i.created_at,
            sent_at: i.sent_at,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainDto {
    sent: usize,
    already_there: usize,
    sent_by_dimse: usize,
    deferred: usize,
    failed: usize,
}

impl From<lightbox_workflow::pacs::DrainReport> for DrainDto {
    fn from(r: lightbox_workflow::pacs::DrainReport) -> Self {
        Self {
            sent: r.sent,
            already_there: r.already_there,
            sent_by_dimse: r.sent_by_dimse,
            deferred: r.deferred,
            failed: r.failed,
        }
    }
}

impl ErrorDto {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// What the C-STORE SCP reports, for the UI's "incoming" line.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushEventDto {
    /// "associated", "echo", "stored", "failed" or "released"
    pub kind: &'static str,
    pub calling_ae: String,
    /// Instances stored in this association so far (or in all, for "released").
    pub instances: usize,
    pub bytes: u64,
    pub detail: String,
}

/// One analysis result (AI output unless signed).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultDto {
    job_id: i64,
    pipeline: String,
    series_uid: String,
    /// Whose series, when and what (empty when the series has left the store).
    patient_name: String,
    patient_id: String,
    study_date: String,
    series_description: String,
    state: String,
    volume_mm3: Option<f64>,
    seg_uid: Option<String>,
    sr_uid: Option<String>,
    signed_by: Option<String>,
    review: Option<String>,
    error: Option<String>,
    /// What the analysis found, in words.
    summary: Option<String>,
    /// `findings` ([label, value, unit] rows), `atrophy_plot`, `lesions` (label, centre_mm,
    /// volume_ml): see `lightbox_workflow::pipeline::PipelineOutcome::details`.
    details: serde_json::Value,
}

impl From<lightbox_workflow::pipeline::ResultRow> for ResultDto {
    fn from(r: lightbox_workflow::pipeline::ResultRow) -> Self {
        Self {
            job_id: r.job_id,
            pipeline: r.pipeline,
            series_uid: r.series_uid,
            patient_name: r.series.patient_name,
            patient_id: r.series.patient_id,
            study_date: r.series.study_date,
            series_description: r.series.description,
            state: r.state,
            volume_mm3: r.volume_mm3,
            seg_uid: r.seg_uid,
            sr_uid: r.sr_uid,
            signed_by: r.signed_by,
            review: r.review,
            error: r.error,
            summary: r.summary,
            details: r.details,
        }
    }
}

/// One analysis job on the jobs screen.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobDto {
    id: i64,
    pipeline: String,
    state: String,
    device: String,
    stage: String,
    series_uid: String,
    seconds: Option<f64>,
    runs: i64,
    error: Option<String>,
    created_at: String,
}

impl From<lightbox_workflow::pipeline::JobRow> for JobDto {
    fn from(j: lightbox_workflow::pipeline::JobRow) -> Self {
        Self {
            id: j.id,
            pipeline: j.pipeline,
            state: j.state,
            device: j.device,
            stage: j.stage,
            series_uid: j.series_uid,
            seconds: j.seconds,
            runs: j.runs,
            error: j.error,
            created_at: j.created_at,
        }
    }
}

/// Whether the PACS answers (the header's indicator).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PacsStatusDto {
    pub configured: bool,
    pub name: String,
    pub url: String,
    pub reachable: bool,
    pub millis: u64,
    pub detail: String,
    pub code: String,
}

impl From<lightbox_workflow::pacs::PacsStatus> for PacsStatusDto {
    fn from(s: lightbox_workflow::pacs::PacsStatus) -> Self {
        Self {
            configured: true,
            name: s.name,
            url: s.url,
            reachable: s.reachable,
            millis: s.millis,
            detail: s.detail,
            code: s.code,
        }
    }
}

/// A measurement the radiologist made on a series.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementDto {
    id: i64,
    series_uid: String,
    kind: String,
    label: String,
    value: f64,
    unit: String,
    author: String,
    created_at: String,
}

impl From<lightbox_workflow::Measurement> for MeasurementDto {
    fn from(m: lightbox_workflow::Measurement) -> Self {
        Self {
            id: m.id,
            series_uid: m.series_uid,
            kind: m.kind,
            label: m.label,
            value: m.value,
            unit: m.unit,
            author: m.author,
            created_at: m.created_at,
        }
    }
}
