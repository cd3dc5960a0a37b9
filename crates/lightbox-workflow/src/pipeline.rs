//! Dispatch rules and pipelines: which series gets which analysis, run once per input and
//! pipeline version, turned into DICOM SEG + SR in the store and, where the site allows it, the
//! outbox.
//!
//! Until the AI crates land there is one real pipeline, `threshold-volume`: voxels above a
//! threshold in the series' largest volume become a segment, and its volume is measured.

use std::path::Path;

use lightbox_dicom::{
    Code, Measurement, MeasurementGroup, MeasurementReport, Observer, SegSeries, Segment, SegmentAlgorithm, SegmentRef,
};
use lightbox_store::{Claim, Store};

use crate::WorkflowError;

pub const THRESHOLD_VOLUME: &str = "threshold-volume";
const THRESHOLD_VOLUME_VERSION: &str = "1";

/// The site's dispatch rules (TOML, `[[rule]]` tables).
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Rules {
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

/// One rule: which series (all conditions must hold) → which pipeline, with its parameters.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub pipeline: String,
    /// Modality, e.g. "MR".
    pub modality: Option<String>,
    /// Regular expression on the Series Description (case-insensitive).
    pub description: Option<String>,
    /// Fewest instances a series needs (a localizer has few).
    pub min_instances: Option<u32>,
    /// `threshold-volume`: the threshold, in the series' real values.
    pub threshold: Option<f64>,
    /// Put the results in the outbox without waiting for sign-off.
    #[serde(default)]
    pub auto_send: bool,
}

impl Rules {
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| WorkflowError::Io { path: path.to_owned(), source })?;
        let rules: Self =
            toml::from_str(&text).map_err(|e| WorkflowError::Rules { path: path.to_owned(), detail: e.to_string() })?;
        for rule in &rules.rules {
            if rule.pipeline != THRESHOLD_VOLUME {
                return Err(WorkflowError::Rules {
                    path: path.to_owned(),
                    detail: format!(
                        "rule {:?}: unknown pipeline {:?} (known: {THRESHOLD_VOLUME})",
                        rule.name, rule.pipeline
                    ),
                });
            }
            if let Some(re) = &rule.description {
                regex::RegexBuilder::new(re).case_insensitive(true).build().map_err(|e| WorkflowError::Rules {
                    path: path.to_owned(),
                    detail: format!("rule {:?}: description {re:?}: {e}", rule.name),
                })?;
            }
        }
        Ok(rules)
    }

    /// For each rule, whether it matches the series and why (or why not).
    pub fn explain(&self, modality: &str, description: &str, instances: u32) -> Vec<(&Rule, bool, Vec<String>)> {
        self.rules
            .iter()
            .map(|rule| {
                let mut reasons = Vec::new();
                let mut ok = true;
                if let Some(m) = &rule.modality {
                    let hit = m.eq_ignore_ascii_case(modality);
                    ok &= hit;
                    reasons.push(format!("modality {modality} {} {m}", if hit { "is" } else { "is not" }));
                }
                if let Some(re) = &rule.description {
                    let hit = regex::RegexBuilder::new(re)
                        .case_insensitive(true)
                        .build()
                        .is_ok_and(|r| r.is_match(description));
                    ok &= hit;
                    reasons.push(format!(
                        "description {description:?} {} /{re}/",
                        if hit { "matches" } else { "does not match" }
                    ));
                }
                if let Some(min) = rule.min_instances {
                    let hit = instances >= min;
                    ok &= hit;
                    reasons.push(format!("{instances} instances {} {min}", if hit { ">=" } else { "<" }));
                }
                (rule, ok, reasons)
            })
            .collect()
    }
}

/// What running a pipeline on a series did.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineOutcome {
    pub job_id: i64,
    /// False when the same input and pipeline version ran before (nothing was done again).
    pub ran: bool,
    pub seg_uid: String,
    pub sr_uid: String,
    pub volume_mm3: f64,
    /// Objects put in the outbox now.
    pub queued: usize,
}

/// Runs `pipeline` on a stored series: once per (series, pipeline version, parameters). With
/// `send_to`, the SEG and SR also go into the outbox for that destination.
pub fn run_pipeline(
    store_dir: &Path,
    pipeline: &str,
    series_uid: &str,
    threshold: f64,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    if pipeline != THRESHOLD_VOLUME {
        return Err(WorkflowError::UnknownPipeline(pipeline.to_owned()));
    }
    let mut store = Store::open(store_dir)?;
    // Keyed by the exact instances seen: more instances arriving later is a new input.
    let digest = instances_digest(&store, series_uid)?;
    let key = format!("{series_uid}/{pipeline}@{THRESHOLD_VOLUME_VERSION}/threshold={threshold}/{digest}");
    let payload = serde_json::json!({ "series": series_uid, "threshold": threshold, "instances": digest }).to_string();
    let id = match store.job_claim(&key, pipeline, &payload)? {
        Claim::Done(id) => {
            let job = store.jobs()?.into_iter().find(|j| j.id == id);
            let result: serde_json::Value =
                job.and_then(|j| j.result).and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
            return Ok(PipelineOutcome {
                job_id: id,
                ran: false,
                seg_uid: result["seg"].as_str().unwrap_or_default().to_owned(),
                sr_uid: result["sr"].as_str().unwrap_or_default().to_owned(),
                volume_mm3: result["volume_mm3"].as_f64().unwrap_or_default(),
                queued: 0,
            });
        }
        Claim::Run(id) => id,
    };
    match threshold_volume(&mut store, &key, series_uid, threshold, send_to, None) {
        Ok(mut outcome) => {
            outcome.job_id = id;
            let result = serde_json::json!({
                "seg": outcome.seg_uid, "sr": outcome.sr_uid, "volume_mm3": outcome.volume_mm3,
            });
            store.job_done(id, &result.to_string())?;
            store.audit("lightbox", "analysis", series_uid, &format!("{pipeline}: job {id}"))?;
            Ok(outcome)
        }
        Err(e) => {
            store.job_failed(id, &e.to_string())?;
            Err(e)
        }
    }
}

fn threshold_volume(
    store: &mut Store,
    key: &str,
    series_uid: &str,
    threshold: f64,
    send_to: Option<&str>,
    signed_by: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let files = store.series_files(series_uid)?;
    if files.is_empty() {
        return Err(WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() });
    }
    let report = lightbox_dicom::scan_files(&files);
    let series = report
        .find_series(series_uid)
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() })?;
    let set = report.display_sets(series).first().ok_or_else(|| WorkflowError::NothingToExport {
        path: store.root().to_owned(),
        issues: format!("series {series_uid} has no image volume"),
    })?;
    let volume = set.load(0)?;
    let labels: Vec<u8> = volume.voxels().iter().map(|&v| u8::from(f64::from(v) > threshold)).collect();
    let voxels = labels.iter().filter(|&&v| v == 1).count();
    if voxels == 0 {
        return Err(WorkflowError::Analysis(format!("no voxel of series {series_uid} is above {threshold}")));
    }
    let volume_mm3 = voxels as f64 * volume.spacing_mm().iter().product::<f64>();
    let labels = lightbox_core::Volume::new(volume.dims(), labels, volume.patient_from_voxel)
        .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    let name = format!("Lightbox {THRESHOLD_VOLUME}");
    let out = tempfile::tempdir_in(store.root())
        .map_err(|source| WorkflowError::Io { path: store.root().to_owned(), source })?;
    let seg_path = out.path().join("seg.dcm");
    let seg = lightbox_dicom::write_seg(
        set,
        0,
        &labels,
        &[Segment {
            label: format!("Above {threshold}"),
            category: Code::new("91723000", "SCT", "Anatomical Structure"),
            property_type: Code::new("85756007", "SCT", "Tissue"),
            algorithm: SegmentAlgorithm::Automatic { name: name.clone(), version: THRESHOLD_VOLUME_VERSION.into() },
        }],
        &SegSeries {
            series_description: "AI: threshold volume (research, not for clinical use)".into(),
            series_number: 9901,
            content_label: "LIGHTBOX_AI".into(),
            content_description: format!("AI output: voxels above {threshold}"),
            creator: name.clone(),
            software_version: env!("CARGO_PKG_VERSION").into(),
            uid_seed: Some(key.to_owned()),
        },
        &seg_path,
    )?;
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &MeasurementReport {
            observer: Observer::Device {
                name: name.clone(),
                uid: lightbox_dicom::uid_from("lightbox/device/threshold-volume"),
            },
            procedure: Code::new("25056-3", "LN", "MRI unspecified body region"),
            groups: vec![MeasurementGroup {
                tracking_id: format!("Above {threshold}"),
                tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking")),
                finding: Code::new("85756007", "SCT", "Tissue"),
                finding_site: None,
                segment: Some(SegmentRef { seg: seg.clone(), number: 1 }),
                measurements: vec![Measurement {
                    concept: Code::new("118565006", "SCT", "Volume"),
                    value: volume_mm3,
                    unit: Code::new("mm3", "UCUM", "cubic millimeter"),
                    algorithm: Some((name, THRESHOLD_VOLUME_VERSION.into())),
                }],
                qualitative: vec![],
            }],
            series_description: match signed_by {
                Some(_) => "AI measurements, reviewed and signed (research, not for clinical use)".into(),
                None => "AI: measurements (research, not for clinical use)".into(),
            },
            series_number: 9902,
            verified_by: signed_by.map(str::to_owned),
            uid_seed: Some(match signed_by {
                Some(name) => format!("{key}/signed-by/{name}"),
                None => key.to_owned(),
            }),
        },
        &sr_path,
    )?;
    let mut queued = 0;
    for path in [&seg_path, &sr_path] {
        store.import_file(path)?;
        if let Some(destination) = send_to
            && let lightbox_store::Enqueued::Queued(_) = store.outbox_enqueue(path, destination)?
        {
            queued += 1;
        }
    }
    Ok(PipelineOutcome { job_id: 0, ran: true, seg_uid: seg.sop_uid, sr_uid, volume_mm3, queued })
}

/// One analysis result, for the results screen.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    pub job_id: i64,
    pub pipeline: String,
    pub series_uid: String,
    /// `done`, `failed` or `running`.
    pub state: String,
    pub volume_mm3: Option<f64>,
    pub seg_uid: Option<String>,
    pub sr_uid: Option<String>,
    /// Who signed it; `None` while it awaits review.
    pub signed_by: Option<String>,
    pub error: Option<String>,
}

/// Every analysis result, newest first.
pub fn results(store_dir: &Path) -> Result<Vec<ResultRow>, WorkflowError> {
    let store = Store::open(store_dir)?;
    Ok(store
        .jobs()?
        .into_iter()
        .map(|job| {
            let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
            let result: serde_json::Value =
                job.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
            let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            ResultRow {
                job_id: job.id,
                pipeline: job.kind,
                series_uid: text(&payload["series"]).unwrap_or_default(),
                state: job.state,
                volume_mm3: result["volume_mm3"].as_f64(),
                seg_uid: text(&result["seg"]),
                sr_uid: text(&result["signed_sr"]).or_else(|| text(&result["sr"])),
                signed_by: text(&result["signed_by"]),
                error: job.error,
            }
        })
        .collect())
}

/// A radiologist signs a result: a VERIFIED SR naming them (a new instance, its UID derived
/// from the job and the signer) and the SEG are put in the outbox for `send_to`. Unsigned AI
/// results never reach the PACS unless a rule says auto_send.
pub fn sign(store_dir: &Path, job_id: i64, radiologist: &str, send_to: &str) -> Result<PipelineOutcome, WorkflowError> {
    let radiologist = radiologist.trim();
    if radiologist.is_empty() {
        return Err(WorkflowError::Analysis("a signature needs the radiologist's name".into()));
    }
    let mut store = Store::open(store_dir)?;
    let job = store
        .jobs()?
        .into_iter()
        .find(|j| j.id == job_id)
        .ok_or_else(|| WorkflowError::Analysis(format!("no analysis job {job_id}")))?;
    if job.state != "done" {
        return Err(WorkflowError::Analysis(format!(
            "job {job_id} is {}, only finished results can be signed",
            job.state
        )));
    }
    if job.key.is_empty() {
        return Err(WorkflowError::Analysis(format!(
            "job {job_id} predates keyed jobs; run the analysis again to sign it"
        )));
    }
    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let series = payload["series"].as_str().unwrap_or_default().to_owned();
    let threshold = payload["threshold"].as_f64().unwrap_or(1000.0);
    // What is signed must be what was reviewed: the same computation on the same instances.
    if payload["instances"].as_str() != Some(instances_digest(&store, &series)?.as_str()) {
        return Err(WorkflowError::Analysis(format!(
            "series {series} changed since job {job_id} ran (instances arrived or left); run the analysis again and review it"
        )));
    }
    let mut outcome = threshold_volume(&mut store, &job.key, &series, threshold, Some(send_to), Some(radiologist))?;
    outcome.job_id = job_id;
    let mut result: serde_json::Value =
        job.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_else(|| serde_json::json!({}));
    result["signed_sr"] = serde_json::Value::from(outcome.sr_uid.clone());
    result["signed_by"] = serde_json::Value::from(radiologist);
    store.job_done(job_id, &result.to_string())?;
    store.audit(radiologist, "sign", &series, &format!("job {job_id}: SR {}", outcome.sr_uid))?;
    Ok(outcome)
}

/// A digest of the series' SOP Instance UIDs: which instances an analysis saw.
fn instances_digest(store: &Store, series_uid: &str) -> Result<String, WorkflowError> {
    let mut uids = store.series_sop_uids(series_uid)?;
    uids.sort();
    Ok(lightbox_dicom::uid_from(&uids.join("\\")))
}
