//! Dispatch rules and pipelines: which series gets which analysis, run once per input and
//! pipeline version, turned into DICOM SEG + SR in the store and, where the site allows it, the
//! outbox.
//!
//! The pipelines:
//! - `threshold-volume`: voxels above a threshold in the series' largest volume become a
//!   segment, and its volume is measured (a demonstration, not a diagnostic model).
//! - `brain-atrophy` (see [`crate::brain`]): a T1's tissue volumes and, when the patient has an
//!   earlier T1 in the store, the brain volume change since then against the healthy norm.
//! - `ms-lesion-change` (see [`crate::ms`]): new and enlarging lesions between a FLAIR and the
//!   patient's earlier FLAIR.
//! - `breast-dce` (see [`crate::breast`]): motion-corrected subtraction, its MIP, kinetics and
//!   lesion candidates of a dynamic contrast-enhanced breast series.
//! - `prostate-bpmri` (see [`crate::prostate`]): a site-installed lesion model on a prostate
//!   study's T2W, ADC and high-b DWI.

use std::path::Path;

use lightbox_dicom::{
    Code, Measurement, MeasurementGroup, MeasurementReport, Observer, SegSeries, Segment, SegmentAlgorithm, SegmentRef,
};
use lightbox_store::{Claim, Store};

use crate::WorkflowError;

pub const THRESHOLD_VOLUME: &str = "threshold-volume";
const THRESHOLD_VOLUME_VERSION: &str = "1";

/// The site's dispatch rules (TOML, `[[rule]]` tables).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct Rules {
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

/// One rule: which series (all conditions must hold) → which pipeline, with its parameters.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    pub pipeline: String,
    /// Modality, e.g. "MR".
    pub modality: Option<String>,
    /// Regular expression on the Series Description (case-insensitive).
    pub description: Option<String>,
    /// MR sequence types, any of `T1`, `T2`, `FLAIR`, `PD`, `DWI`, `ADC` (classified from the
    /// acquisition parameters, see `lightbox_dicom::series_facts`).
    #[serde(default)]
    pub sequence: Vec<String>,
    /// Regular expression on Body Part Examined (case-insensitive), e.g. "BRAIN|HEAD".
    pub body_part: Option<String>,
    /// `axial`, `sagittal`, `coronal` or `oblique`.
    pub plane: Option<String>,
    /// MR Acquisition Type, `2D` or `3D`.
    pub acquisition: Option<String>,
    /// Fewest instances a series needs (a localizer has few).
    pub min_instances: Option<u32>,
    /// `threshold-volume`: the threshold, in the series' real values.
    pub threshold: Option<f64>,
    /// `prostate-bpmri`: the model package (a folder in the models folder) that detects lesions;
    /// `breast-dce`: an optional detection model.
    pub model: Option<String>,
    /// `prostate-bpmri`: an optional gland/zone segmentation package (labels named by zone:
    /// peripheral, transition, central, anterior stroma, or gland): the gland's volume and each
    /// lesion's zone and sector.
    pub zone_model: Option<String>,
    /// Put the results in the outbox without waiting for sign-off.
    #[serde(default)]
    pub auto_send: bool,
}

/// What a rule is matched against: one stored series.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesToMatch {
    pub uid: String,
    pub instances: u32,
    pub facts: lightbox_dicom::SeriesFacts,
}

/// The facts of a stored series (read from one of its files).
pub fn series_to_match(store_dir: &Path, series_uid: &str) -> Result<SeriesToMatch, WorkflowError> {
    let store = Store::open(store_dir)?;
    let files = store.series_files(series_uid)?;
    let first = files
        .first()
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store_dir.to_owned() })?;
    Ok(SeriesToMatch {
        uid: series_uid.to_owned(),
        instances: u32::try_from(files.len()).unwrap_or(u32::MAX),
        facts: lightbox_dicom::series_facts(first)?,
    })
}

fn regex(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$")).case_insensitive(true).build()
}

impl Rules {
    pub fn load(path: &Path) -> Result<Self, WorkflowError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| WorkflowError::Io { path: path.to_owned(), source })?;
        let rules: Self =
            toml::from_str(&text).map_err(|e| WorkflowError::Rules { path: path.to_owned(), detail: e.to_string() })?;
        let bad = |rule: &Rule, detail: String| WorkflowError::Rules {
            path: path.to_owned(),
            detail: format!("rule {:?}: {detail}", rule.name),
        };
        for rule in &rules.rules {
            if pipeline_device(&rule.pipeline).is_none() {
                return Err(bad(rule, format!("unknown pipeline {:?} (known: {})", rule.pipeline, known_pipelines())));
            }
            if rule.pipeline == crate::prostate::PROSTATE_BPMRI && rule.model.as_deref().is_none_or(str::is_empty) {
                return Err(bad(rule, "prostate-bpmri needs model = \"NAME\" (a package in the models folder)".into()));
            }
            if let Some(re) = &rule.description {
                regex::RegexBuilder::new(re)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| bad(rule, format!("description {re:?}: {e}")))?;
            }
            if let Some(re) = &rule.body_part {
                regex(re).map_err(|e| bad(rule, format!("body_part {re:?}: {e}")))?;
            }
            for s in &rule.sequence {
                if !SEQUENCES.contains(&s.to_ascii_uppercase().as_str()) {
                    return Err(bad(rule, format!("sequence {s:?} (known: {})", SEQUENCES.join(", "))));
                }
            }
            if let Some(p) = &rule.plane
                && !PLANES.contains(&p.to_ascii_lowercase().as_str())
            {
                return Err(bad(rule, format!("plane {p:?} (known: {})", PLANES.join(", "))));
            }
            if let Some(a) = &rule.acquisition
                && !["2D", "3D"].contains(&a.to_ascii_uppercase().as_str())
            {
                return Err(bad(rule, format!("acquisition {a:?} (2D or 3D)")));
            }
        }
        Ok(rules)
    }

    /// For each rule, whether it matches the series and why (or why not).
    pub fn explain(&self, series: &SeriesToMatch) -> Vec<(&Rule, bool, Vec<String>)> {
        let f = &series.facts;
        self.rules
            .iter()
            .map(|rule| {
                let mut reasons = Vec::new();
                let mut ok = true;
                let mut check = |hit: bool, reason: String| {
                    ok &= hit;
                    reasons.push(reason);
                };
                if let Some(m) = &rule.modality {
                    let hit = m.eq_ignore_ascii_case(&f.modality);
                    check(hit, format!("modality {} {} {m}", f.modality, if hit { "is" } else { "is not" }));
                }
                if let Some(re) = &rule.description {
                    let hit = regex::RegexBuilder::new(re)
                        .case_insensitive(true)
                        .build()
                        .is_ok_and(|r| r.is_match(&f.description));
                    let verb = if hit { "matches" } else { "does not match" };
                    check(hit, format!("description {:?} {verb} /{re}/", f.description));
                }
                if !rule.sequence.is_empty() {
                    let hit =
                        rule.sequence.iter().any(|s| !f.sequence.is_empty() && s.eq_ignore_ascii_case(&f.sequence));
                    let found = if f.sequence.is_empty() { "unknown".to_owned() } else { f.sequence.clone() };
                    let verb = if hit { "is one of" } else { "is not one of" };
                    check(hit, format!("sequence {found} ({}) {verb} {}", f.sequence_reason, rule.sequence.join("/")));
                }
                if let Some(re) = &rule.body_part {
                    let hit = regex(re).is_ok_and(|r| r.is_match(&f.body_part));
                    let part = if f.body_part.is_empty() { "(not given)" } else { f.body_part.as_str() };
                    check(hit, format!("body part {part} {} /{re}/", if hit { "matches" } else { "does not match" }));
                }
                if let Some(p) = &rule.plane {
                    let hit = p.eq_ignore_ascii_case(&f.plane);
                    let plane = if f.plane.is_empty() { "unknown" } else { f.plane.as_str() };
                    check(hit, format!("plane {plane} {} {p}", if hit { "is" } else { "is not" }));
                }
                if let Some(a) = &rule.acquisition {
                    let hit = a.eq_ignore_ascii_case(&f.acquisition);
                    let found = if f.acquisition.is_empty() { "(not given)" } else { f.acquisition.as_str() };
                    check(hit, format!("acquisition {found} {} {a}", if hit { "is" } else { "is not" }));
                }
                if let Some(min) = rule.min_instances {
                    let hit = series.instances >= min;
                    check(hit, format!("{} instances {} {min}", series.instances, if hit { ">=" } else { "<" }));
                }
                (rule, ok, reasons)
            })
            .collect()
    }
}

const SEQUENCES: [&str; 6] = ["T1", "T2", "FLAIR", "PD", "DWI", "ADC"];
const PLANES: [&str; 4] = ["axial", "sagittal", "coronal", "oblique"];

/// The pipelines this build has: (name, version, device, what it does).
pub const PIPELINES: [(&str, &str, &str, &str); 5] = [
    (
        THRESHOLD_VOLUME,
        THRESHOLD_VOLUME_VERSION,
        "cpu",
        "Volume of the voxels above a threshold, as a SEG segment and a TID 1500 SR (a demonstration, not a diagnostic model)",
    ),
    (
        crate::brain::BRAIN_ATROPHY,
        crate::brain::VERSION,
        "gpu",
        "Brain extraction (deepbet), grey/white matter and CSF volumes, and with a prior T1 of the patient the brain volume change per year against the healthy norm for the age: SEG + TID 1500 SR (AI output, not for clinical use)",
    ),
    (
        crate::ms::MS_LESION_CHANGE,
        crate::ms::VERSION,
        "gpu",
        "New and enlarging lesions between a FLAIR and the patient's prior FLAIR (subtraction baseline inside deepbet's brain mask): SEG + TID 1500 SR with counts, volumes and a lesion table (AI output, not for clinical use)",
    ),
    (
        crate::breast::BREAST_DCE,
        crate::breast::VERSION,
        "cpu",
        "Breast DCE-MRI: motion correction, subtraction and its MIP, voxel-wise kinetics (curve types I/II/III) and fast-enhancing lesion candidates: derived series, SEG + TID 1500 SR (automated, not for clinical use)",
    ),
    (
        crate::prostate::PROSTATE_BPMRI,
        crate::prostate::VERSION,
        "gpu",
        "Prostate bpMRI: T2W, ADC and DWI found from their attributes, registered, a site-installed nnU-Net lesion model, PI-CAI's dynamic lesion extraction: SEG + TID 1500 SR with each lesion's likelihood, volume, diameter and ADC (AI output, not for clinical use)",
    ),
];

/// Whether a pipeline compares a series with the patient's prior (and so looks for one).
pub fn needs_prior(pipeline: &str) -> bool {
    pipeline == crate::brain::BRAIN_ATROPHY || pipeline == crate::ms::MS_LESION_CHANGE
}

fn pipeline_version(pipeline: &str) -> &'static str {
    PIPELINES.iter().find(|p| p.0 == pipeline).map_or("?", |p| p.1)
}

/// The pipelines' names, for messages.
fn known_pipelines() -> String {
    PIPELINES.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
}

/// Which device class a pipeline runs on (`None`: no such pipeline). The engine runs one GPU
/// job at a time and CPU jobs within a budget.
pub fn pipeline_device(pipeline: &str) -> Option<&'static str> {
    PIPELINES.iter().find(|p| p.0 == pipeline).map(|p| p.2)
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
    /// What the analysis found, in words (empty for threshold-volume, whose volume says it).
    pub summary: String,
    /// For summaries and exports: `findings` ([label, value, UCUM unit] rows) and, for
    /// brain-atrophy with a prior, `atrophy_plot` (see [`crate::plugins::AtrophyPlot`]).
    pub details: serde_json::Value,
}

impl PipelineOutcome {
    /// One line for logs and the CLI.
    pub fn describe(&self, pipeline: &str, series: &str) -> String {
        if self.ran && !self.summary.is_empty() {
            format!(
                "pipeline {pipeline} on {series}: job {} done, {}; SEG {} + SR {}, {} queued for the PACS",
                self.job_id, self.summary, self.seg_uid, self.sr_uid, self.queued
            )
        } else if self.ran {
            format!(
                "pipeline {pipeline} on {series}: job {} done, volume {:.1} mm3, SEG {} + SR {}, {} queued for the PACS",
                self.job_id, self.volume_mm3, self.seg_uid, self.sr_uid, self.queued
            )
        } else {
            format!("pipeline {pipeline} on {series}: done before (job {}), not run again", self.job_id)
        }
    }
}

/// A job to be: its key (input + pipeline version + parameters), device and payload.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    pub key: String,
    pub pipeline: String,
    pub device: &'static str,
    pub payload: serde_json::Value,
}

/// Plans `pipeline` on a stored series as it is now: keyed by the exact instances seen, so
/// more instances arriving later is a new input. `send_to` (auto-send) rides in the payload.
pub fn plan(
    store: &Store,
    pipeline: &str,
    series_uid: &str,
    threshold: f64,
    send_to: Option<&str>,
    model: Option<&str>,
    zone_model: Option<&str>,
) -> Result<JobPlan, WorkflowError> {
    let device = pipeline_device(pipeline).ok_or_else(|| WorkflowError::UnknownPipeline(pipeline.to_owned()))?;
    let digest = instances_digest(store, series_uid)?;
    if pipeline == crate::prostate::PROSTATE_BPMRI {
        let model = model.unwrap_or_default();
        // The whole study is the input: any of its series triggers the same job, and a series
        // arriving later (a DWI) makes a new one.
        let study = study_of(store, series_uid)?;
        let mut inputs = Vec::new();
        for (uid, modality, ..) in store.series_of_study(&study)?.unwrap_or_default() {
            if modality == "MR" {
                inputs.push(format!("{uid}:{}", instances_digest(store, &uid)?));
            }
        }
        inputs.sort();
        let study_digest = lightbox_dicom::uid_from(&inputs.join("\\"));
        let zones = zone_model.unwrap_or_default();
        return Ok(JobPlan {
            key: format!("{study}/{pipeline}@{}/model={model}/zones={zones}/{study_digest}", crate::prostate::VERSION),
            pipeline: pipeline.to_owned(),
            device,
            payload: serde_json::json!({
                "series": series_uid, "study": study, "instances": digest, "send_to": send_to, "model": model,
                "zone_model": zones,
            }),
        });
    }
    if pipeline == crate::breast::BREAST_DCE {
        // The model (none: thresholds only) is part of what the results depend on.
        let model = model.unwrap_or_default();
        return Ok(JobPlan {
            key: format!("{series_uid}/{pipeline}@{}/model={model}/{digest}", crate::breast::VERSION),
            pipeline: pipeline.to_owned(),
            device,
            payload: serde_json::json!({
                "series": series_uid, "instances": digest, "send_to": send_to, "model": model,
            }),
        });
    }
    if needs_prior(pipeline) {
        // The prior is part of the input: a prior arriving later is a new analysis.
        let prior = crate::find_prior(store.root(), series_uid)?;
        let prior_key = match &prior {
            Some(p) => format!("{}:{}", p.series_uid, instances_digest(store, &p.series_uid)?),
            None => "none".into(),
        };
        return Ok(JobPlan {
            key: format!("{series_uid}/{pipeline}@{}/prior={prior_key}/{digest}", pipeline_version(pipeline)),
            pipeline: pipeline.to_owned(),
            device,
            payload: serde_json::json!({
                "series": series_uid, "instances": digest, "send_to": send_to,
                "prior": prior.map(|p| p.series_uid),
            }),
        });
    }
    Ok(JobPlan {
        key: format!("{series_uid}/{pipeline}@{THRESHOLD_VOLUME_VERSION}/threshold={threshold}/{digest}"),
        pipeline: pipeline.to_owned(),
        device,
        payload: serde_json::json!({
            "series": series_uid, "threshold": threshold, "instances": digest, "send_to": send_to,
        }),
    })
}

/// The Study Instance UID of a stored series (its own UID when it has no file).
pub(crate) fn study_of(store: &Store, series_uid: &str) -> Result<String, WorkflowError> {
    Ok(match store.series_files(series_uid)?.first() {
        Some(f) => lightbox_dicom::read_instance(f)?.study_uid.as_str().to_owned(),
        None => series_uid.to_owned(),
    })
}

/// What [`enqueue`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Enqueued {
    /// A new job, queued for the engine.
    Created(i64),
    /// The same input, pipeline version and parameters have a job already (in `state`).
    Exists { id: i64, state: String },
}

/// Queues `pipeline` on a stored series for the engine to run (the REST API's POST /jobs).
pub fn enqueue(store_dir: &Path, pipeline: &str, series_uid: &str, threshold: f64) -> Result<Enqueued, WorkflowError> {
    let store = Store::open(store_dir)?;
    if store.series_files(series_uid)?.is_empty() {
        return Err(WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store_dir.to_owned() });
    }
    if !threshold.is_finite() {
        return Err(WorkflowError::Analysis(format!("threshold {threshold} is not a number")));
    }
    let modality = series_to_match(store_dir, series_uid)?.facts.modality;
    if crate::engine::NOT_IMAGES.contains(&modality.as_str()) {
        return Err(WorkflowError::Analysis(format!("series {series_uid} is a {modality}, not images to analyse")));
    }
    let plan = plan(&store, pipeline, series_uid, threshold, None, None, None)?;
    let before = store.jobs()?.len();
    let (id, state) = store.job_enqueue(&plan.key, &plan.pipeline, plan.device, &plan.payload.to_string())?;
    Ok(if store.jobs()?.len() > before { Enqueued::Created(id) } else { Enqueued::Exists { id, state } })
}

/// One job, by id.
pub fn job_row(store_dir: &Path, id: i64) -> Result<Option<JobRow>, WorkflowError> {
    Ok(job_rows(store_dir)?.into_iter().find(|j| j.id == id))
}

/// Who this process is, as a job runner.
pub fn runner_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        format!("pid{}-{nanos:08x}", std::process::id())
    })
}

/// How long a runner's hold on a job lasts without renewal (`LIGHTBOX_JOB_LEASE_SECS`, default
/// 30 s): after a crash, the job runs again once this has passed.
pub fn lease_secs() -> f64 {
    std::env::var("LIGHTBOX_JOB_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| *v > 0.0)
        .unwrap_or(30.0)
}

/// Runs `pipeline` on a stored series now, in this process: once per (series, pipeline
/// version, parameters). With `send_to`, the SEG and SR also go into the outbox for that
/// destination.
pub fn run_pipeline(
    store_dir: &Path,
    pipeline: &str,
    series_uid: &str,
    threshold: f64,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let store = Store::open(store_dir)?;
    let plan = plan(&store, pipeline, series_uid, threshold, send_to, None, None)?;
    let (owner, lease) = (runner_id(), lease_secs());
    match store.job_claim(&plan.key, pipeline, plan.device, &plan.payload.to_string(), owner, lease)? {
        Claim::Done(id) => Ok(finished_outcome(&store, id)?),
        Claim::Busy(id) => Err(WorkflowError::Busy(id)),
        Claim::Run(id) => {
            drop(store);
            execute(store_dir, id)
        }
    }
}

/// The outcome of a job that finished before.
fn finished_outcome(store: &Store, id: i64) -> Result<PipelineOutcome, WorkflowError> {
    let result: serde_json::Value =
        store.job(id)?.and_then(|j| j.result).and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
    Ok(PipelineOutcome {
        job_id: id,
        ran: false,
        seg_uid: result["seg"].as_str().unwrap_or_default().to_owned(),
        sr_uid: result["sr"].as_str().unwrap_or_default().to_owned(),
        volume_mm3: result["volume_mm3"].as_f64().unwrap_or_default(),
        queued: 0,
        summary: result["summary"].as_str().unwrap_or_default().to_owned(),
        details: result["details"].clone(),
    })
}

/// A runner's hold on a job: renewed in the background while the pipeline works; each stage
/// is recorded and checks that the job is still ours (not cancelled).
pub(crate) struct Lease {
    id: i64,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn hold(store_dir: &Path, id: i64) -> Self {
        let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (dir, flag) = (store_dir.to_owned(), lost.clone());
        let every = std::time::Duration::from_secs_f64(lease_secs() / 3.0);
        let thread = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                let held = Store::open(&dir).and_then(|s| s.job_heartbeat(id, runner_id(), lease_secs(), None));
                if matches!(held, Ok(false)) {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        });
        Self { id, lost, stop: Some(stop), thread: Some(thread) }
    }

    /// Records the stage; an error when the job is no longer ours.
    fn stage(&self, store: &Store, stage: &str) -> Result<(), WorkflowError> {
        if self.lost.load(std::sync::atomic::Ordering::SeqCst)
            || !store.job_heartbeat(self.id, runner_id(), lease_secs(), Some(stage))?
        {
            return Err(WorkflowError::Cancelled(self.id));
        }
        fault_pause(stage);
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test hook for crash tests: `LIGHTBOX_FAULT_PAUSE=<stage>:<ms>` sleeps when a job reaches
/// that stage, so a test can kill the process there.
fn fault_pause(stage: &str) {
    if let Ok(spec) = std::env::var("LIGHTBOX_FAULT_PAUSE")
        && let Some((at, ms)) = spec.split_once(':')
        && at == stage
        && let Ok(ms) = ms.parse::<u64>()
    {
        tracing::warn!(stage, ms, "LIGHTBOX_FAULT_PAUSE: pausing");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Runs job `id`, which this process has taken (see [`Store::job_take`]), to its end: done,
/// failed, waiting for the rest of its input, superseded (its input changed while it was
/// queued), or stopped because it was cancelled. Once its input is checked, it supersedes the
/// waiting jobs of the same pipeline, input and parameters (theirs had fewer instances).
pub fn execute(store_dir: &Path, id: i64) -> Result<PipelineOutcome, WorkflowError> {
    let mut store = Store::open(store_dir)?;
    let job = store.job(id)?.ok_or_else(|| WorkflowError::Analysis(format!("no job {id}")))?;
    let lease = Lease::hold(store_dir, id);
    let run = (|| {
        if pipeline_device(&job.kind).is_none() {
            return Err(WorkflowError::UnknownPipeline(job.kind.clone()));
        }
        let payload: serde_json::Value = serde_json::from_str(&job.payload)
            .map_err(|e| WorkflowError::Analysis(format!("job {id} has a bad payload: {e}")))?;
        let series = payload["series"].as_str().unwrap_or_default().to_owned();
        let threshold = payload["threshold"].as_f64().unwrap_or(1000.0);
        let send_to = payload["send_to"].as_str();
        lease.stage(&store, "checking input")?;
        if payload["instances"].as_str() != Some(instances_digest(&store, &series)?.as_str()) {
            return Err(WorkflowError::InputChanged { job: id, input: format!("series {series}") });
        }
        // The jobs that waited for this input's rest (same series or study, same parameters).
        for older in store.jobs_supersede_waiting(id)? {
            tracing::info!(job = older, by = id, "a waiting job is superseded: the rest of its input arrived");
            store.audit(
                "lightbox",
                "supersede",
                &older.to_string(),
                &format!("{}: job {older} superseded by job {id} (the rest of its input arrived)", job.kind),
            )?;
        }
        let prior = payload["prior"].as_str();
        if job.kind == crate::brain::BRAIN_ATROPHY {
            return crate::brain::run(&mut store, Some(&lease), &job.key, &series, prior, send_to);
        }
        if job.kind == crate::ms::MS_LESION_CHANGE {
            return crate::ms::run(&mut store, Some(&lease), &job.key, &series, prior, send_to);
        }
        if job.kind == crate::breast::BREAST_DCE {
            let model = payload["model"].as_str().filter(|m| !m.is_empty());
            return crate::breast::run(&mut store, Some(&lease), &job.key, &series, model, send_to);
        }
        if job.kind == crate::prostate::PROSTATE_BPMRI {
            let model = payload["model"].as_str().unwrap_or_default();
            let zones = payload["zone_model"].as_str().filter(|m| !m.is_empty());
            return crate::prostate::run(&mut store, Some(&lease), &job.key, &series, model, zones, send_to);
        }
        threshold_volume(&mut store, Some(&lease), &job.key, &series, threshold, send_to, None)
    })();
    let owner = runner_id();
    match run {
        Ok(mut outcome) => {
            outcome.job_id = id;
            lease.stage(&store, "finishing")?;
            let result = serde_json::json!({
                "seg": outcome.seg_uid, "sr": outcome.sr_uid, "volume_mm3": outcome.volume_mm3,
                "summary": outcome.summary, "details": outcome.details,
            });
            if !store.job_done(id, owner, &result.to_string())? {
                return Err(WorkflowError::Cancelled(id));
            }
            store.audit(
                "lightbox",
                "analysis",
                payload_series(&job.payload).as_str(),
                &format!("{}: job {id}", job.kind),
            )?;
            Ok(outcome)
        }
        Err(WorkflowError::Cancelled(id)) => Err(WorkflowError::Cancelled(id)),
        Err(WorkflowError::Incomplete { input, missing }) => {
            if !store.job_waiting(id, owner, &missing)? {
                return Err(WorkflowError::Cancelled(id));
            }
            Err(WorkflowError::Incomplete { input, missing })
        }
        Err(WorkflowError::InputChanged { job, input }) => {
            if !store.job_superseded(id, owner, &format!("superseded: its {input} changed after it was queued"))? {
                return Err(WorkflowError::Cancelled(id));
            }
            Err(WorkflowError::InputChanged { job, input })
        }
        Err(e) => {
            store.job_failed(id, owner, &e.to_string())?;
            Err(e)
        }
    }
}

pub(crate) fn stage(lease: Option<&Lease>, store: &Store, name: &str) -> Result<(), WorkflowError> {
    lease.map_or(Ok(()), |l| l.stage(store, name))
}

pub(crate) fn payload_series(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|p| p["series"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn threshold_volume(
    store: &mut Store,
    lease: Option<&Lease>,
    key: &str,
    series_uid: &str,
    threshold: f64,
    send_to: Option<&str>,
    signoff: Option<(&str, Review)>,
) -> Result<PipelineOutcome, WorkflowError> {
    let signed_by = signoff.map(|(who, _)| who);
    let review = signoff.map_or(Review::Accept, |(_, review)| review);
    let report = scan_series(store, series_uid)?;
    let set = first_set(store, &report, series_uid)?;
    stage(lease, store, "loading")?;
    let volume = set.load(0)?;
    stage(lease, store, "segmenting")?;
    let labels: Vec<u8> = volume.voxels().iter().map(|&v| u8::from(f64::from(v) > threshold)).collect();
    let voxels = labels.iter().filter(|&&v| v == 1).count();
    if voxels == 0 {
        return Err(WorkflowError::Analysis(format!("no voxel of series {series_uid} is above {threshold}")));
    }
    let volume_mm3 = voxels as f64 * volume.spacing_mm().iter().product::<f64>();
    let labels = lightbox_core::Volume::new(volume.dims(), labels, volume.patient_from_voxel)
        .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    let name = format!("Lightbox {THRESHOLD_VOLUME}");
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
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
    // The radiologist's verdict on the AI finding: kept as the AI's, left out, or replaced by
    // their own value (still measuring the same segment).
    let ai_group = MeasurementGroup {
        tracking_id: format!("Above {threshold}"),
        tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking")),
        finding: Some(Code::new("85756007", "SCT", "Tissue")),
        observer: None,
        finding_site: None,
        segment: Some(SegmentRef { seg: seg.clone(), number: 1 }),
        measurements: vec![Measurement {
            concept: Code::new("118565006", "SCT", "Volume"),
            value: volume_mm3,
            unit: Code::new("mm3", "UCUM", "cubic millimeter"),
            algorithm: Some(lightbox_dicom::Algorithm {
                name: name.clone(),
                version: THRESHOLD_VOLUME_VERSION.into(),
                parameters: vec![format!("threshold={threshold}")],
            }),
        }],
        qualitative: vec![],
    };
    let ai_groups = match (review, signed_by) {
        (Review::Reject, Some(_)) => vec![],
        (Review::Edit { volume_ml }, Some(who)) => vec![MeasurementGroup {
            tracking_id: format!("Radiologist: volume above {threshold} (AI value edited)"),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/edited")),
            observer: Some(Observer::Person { name: who.to_owned() }),
            measurements: vec![Measurement {
                concept: Code::new("118565006", "SCT", "Volume"),
                value: volume_ml,
                unit: Code::new("mL", "UCUM", "milliliter"),
                algorithm: None,
            }],
            ..ai_group
        }],
        _ => vec![ai_group],
    };
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &MeasurementReport {
            observers: std::iter::once(Observer::Device {
                name: name.clone(),
                uid: lightbox_dicom::uid_from("lightbox/device/threshold-volume"),
            })
            .chain(signed_by.map(|who| Observer::Person { name: who.to_owned() }))
            .collect(),
            procedure: Code::new("25056-3", "LN", "MRI unspecified body region"),
            groups: ai_groups.into_iter().chain(radiologist_groups(store, series_uid, key, signed_by)?).collect(),
            series_description: match signed_by {
                Some(_) => "AI measurements, signed (research, not for clinical use)".into(),
                None => "AI: measurements (research, not for clinical use)".into(),
            },
            series_number: 9902,
            verified_by: signed_by.map(str::to_owned),
            verifying_organization: crate::settings::institution(),
            uid_seed: Some(match signed_by {
                // A different set of measurements is a different report: a new UID.
                Some(name) => {
                    format!("{key}/signed-by/{name}/{}/{}", review.tag(), measurements_digest(store, series_uid)?)
                }
                None => key.to_owned(),
            }),
        },
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let mut queued = 0;
    for path in [&seg_path, &sr_path] {
        store.import_file(path)?;
        // A rejected segmentation stays here; only the report saying so leaves.
        if matches!(review, Review::Reject) && signed_by.is_some() && path == &seg_path {
            continue;
        }
        if let Some(destination) = send_to
            && let lightbox_store::Enqueued::Queued(_) = store.outbox_enqueue(path, destination)?
        {
            queued += 1;
        }
    }
    Ok(PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: seg.sop_uid,
        sr_uid,
        volume_mm3,
        queued,
        summary: String::new(),
        details: serde_json::Value::Null,
    })
}

/// The stored files of a series, scanned.
pub(crate) fn scan_series(store: &Store, series_uid: &str) -> Result<lightbox_dicom::ScanReport, WorkflowError> {
    let files = store.series_files(series_uid)?;
    if files.is_empty() {
        return Err(WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() });
    }
    Ok(lightbox_dicom::scan_files(&files))
}

/// A scanned series' first display set: the volume an analysis reads.
pub(crate) fn first_set<'a>(
    store: &Store,
    report: &'a lightbox_dicom::ScanReport,
    series_uid: &str,
) -> Result<&'a lightbox_dicom::DisplaySet, WorkflowError> {
    let series = report
        .find_series(series_uid)
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() })?;
    report.display_sets(series).first().ok_or_else(|| WorkflowError::NothingToExport {
        path: store.root().to_owned(),
        issues: format!("series {series_uid} has no image volume"),
    })
}

/// The SEG series of an AI pipeline's result: labelled AI in its content label, made by
/// `creator`, its UIDs derived from `uid_seed` (a run again writes the same object).
pub(crate) fn ai_seg_series(
    series_number: i32,
    series_description: &str,
    content_description: &str,
    creator: &str,
    uid_seed: String,
) -> SegSeries {
    SegSeries {
        series_description: series_description.to_owned(),
        series_number,
        content_label: "LIGHTBOX_AI".into(),
        content_description: content_description.to_owned(),
        creator: creator.to_owned(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        uid_seed: Some(uid_seed),
    }
}

/// A measurement that `algorithm` made (the values of the AI pipelines' reports).
pub(crate) fn measured_by(
    algorithm: &lightbox_dicom::Algorithm,
) -> impl Fn(lightbox_dicom::Code, f64, lightbox_dicom::Code) -> lightbox_dicom::Measurement + '_ {
    move |concept, value, unit| lightbox_dicom::Measurement { concept, value, unit, algorithm: Some(algorithm.clone()) }
}

/// The TID 1500 report of an AI pipeline's result: the device `name` (its UID from
/// `device_seed`) as the observer, unverified, its UIDs derived from `uid_seed`.
pub(crate) fn ai_report(
    name: &str,
    device_seed: &str,
    procedure: Code,
    groups: Vec<MeasurementGroup>,
    series_description: &str,
    series_number: i32,
    uid_seed: String,
) -> MeasurementReport {
    MeasurementReport {
        observers: vec![Observer::Device { name: name.to_owned(), uid: lightbox_dicom::uid_from(device_seed) }],
        procedure,
        groups,
        series_description: series_description.to_owned(),
        series_number,
        verified_by: None,
        verifying_organization: crate::settings::institution(),
        uid_seed: Some(uid_seed),
    }
}

/// Puts a run's result files into the store and, with `send_to`, the outbox; how many were
/// queued (a file sent before is not queued again).
pub(crate) fn store_results(
    store: &mut Store,
    paths: &[&std::path::PathBuf],
    send_to: Option<&str>,
) -> Result<usize, WorkflowError> {
    let mut queued = 0;
    for path in paths {
        store.import_file(path)?;
        if let Some(destination) = send_to
            && let lightbox_store::Enqueued::Queued(_) = store.outbox_enqueue(path, destination)?
        {
            queued += 1;
        }
    }
    Ok(queued)
}

/// A fresh folder for a run's results, under incoming/, which is swept of hour-old leftovers:
/// a run killed before its results were stored leaves nothing behind for long.
pub(crate) fn results_dir(store: &Store) -> Result<tempfile::TempDir, WorkflowError> {
    let incoming = store.root().join("incoming");
    std::fs::create_dir_all(&incoming).map_err(|source| WorkflowError::Io { path: incoming.clone(), source })?;
    tempfile::tempdir_in(&incoming).map_err(|source| WorkflowError::Io { path: incoming.clone(), source })
}

/// The radiologist's own measurements on the series, as groups marked with them as observer
/// and without algorithm identification. Only a signed report carries them.
fn radiologist_groups(
    store: &Store,
    series_uid: &str,
    key: &str,
    signed_by: Option<&str>,
) -> Result<Vec<MeasurementGroup>, WorkflowError> {
    if signed_by.is_none() {
        return Ok(Vec::new());
    }
    Ok(store
        .measurements(series_uid)?
        .into_iter()
        .map(|m| MeasurementGroup {
            tracking_id: format!("Radiologist: {}", m.label),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/measurement/{}", m.id)),
            finding: None,
            finding_site: None,
            observer: Some(Observer::Person { name: m.author.clone() }),
            segment: None,
            measurements: vec![Measurement {
                concept: measurement_concept(&m.kind),
                value: m.value,
                unit: Code::new(&m.unit, "UCUM", ucum_meaning(&m.unit)),
                algorithm: None,
            }],
            qualitative: vec![],
        })
        .collect())
}

/// The measurement kinds a radiologist can record, with their concepts (SNOMED CT; LOINC for
/// the PSA the radiologist enters; Lightbox's own scheme for the PSA density, which has no
/// standard code).
pub const MEASUREMENT_KINDS: [(&str, &str, &str, &str); 8] = [
    ("length", "SCT", "410668003", "Length"),
    ("diameter", "SCT", "81827009", "Diameter"),
    ("area", "SCT", "42798000", "Area"),
    ("volume", "SCT", "118565006", "Volume"),
    ("mean", "SCT", "373098007", "Mean"),
    ("sd", "SCT", "386136009", "Standard Deviation"),
    ("psa", "LN", "2857-1", "Prostate specific Ag [Mass/volume] in Serum or Plasma"),
    ("psa-density", crate::brain::SCHEME, "PSA-DENSITY", "PSA density (serum PSA over prostate gland volume)"),
];

/// The UCUM units a radiologist's measurement may have, with their meanings.
const UCUM_UNITS: [(&str, &str); 13] = [
    ("ng/mL", "nanogram per milliliter"),
    ("ng/mL/mL", "nanogram per milliliter per milliliter"),
    ("mm", "millimeter"),
    ("cm", "centimeter"),
    ("mm2", "square millimeter"),
    ("cm2", "square centimeter"),
    ("mm3", "cubic millimeter"),
    ("cm3", "cubic centimeter"),
    ("mL", "milliliter"),
    ("um2/s", "square micrometer per second"),
    ("{ratio}", "ratio"),
    ("[hnsf'U]", "Hounsfield unit"),
    ("1", "no units"),
];

fn ucum_meaning(unit: &str) -> &str {
    UCUM_UNITS.iter().find(|(u, _)| *u == unit).map_or(unit, |(_, meaning)| meaning)
}

fn measurements_digest(store: &Store, series_uid: &str) -> Result<String, WorkflowError> {
    let all: Vec<String> = store
        .measurements(series_uid)?
        .iter()
        .map(|m| format!("{}|{}|{}|{}|{}|{}", m.id, m.kind, m.label, m.value, m.unit, m.author))
        .collect();
    Ok(if all.is_empty() { "none".into() } else { lightbox_dicom::uid_from(&all.join("\\")) })
}

fn measurement_concept(kind: &str) -> Code {
    let (_, scheme, value, meaning) =
        MEASUREMENT_KINDS.iter().find(|(k, ..)| *k == kind).unwrap_or(&MEASUREMENT_KINDS[0]);
    Code::new(value, scheme, meaning)
}

/// Records a radiologist's measurement on a stored series; it goes into the report they sign.
pub fn add_measurement(
    store_dir: &Path,
    series_uid: &str,
    kind: &str,
    label: &str,
    value: f64,
    unit: &str,
    author: &str,
) -> Result<i64, WorkflowError> {
    let bad = |what: String| WorkflowError::Analysis(format!("measurement: {what}"));
    if !MEASUREMENT_KINDS.iter().any(|(k, ..)| *k == kind) {
        let known: Vec<&str> = MEASUREMENT_KINDS.iter().map(|(k, ..)| *k).collect();
        return Err(bad(format!("unknown kind {kind:?} (known: {})", known.join(", "))));
    }
    if !value.is_finite() {
        return Err(bad(format!("value {value} is not a number")));
    }
    if !UCUM_UNITS.iter().any(|(u, _)| *u == unit) {
        let known: Vec<&str> = UCUM_UNITS.iter().map(|(u, _)| *u).collect();
        return Err(bad(format!("unit {unit:?} (known UCUM units: {})", known.join(", "))));
    }
    if label.trim().is_empty() || author.trim().is_empty() {
        return Err(bad("a label and the radiologist's name are needed".into()));
    }
    let store = Store::open(store_dir)?;
    if store.series_files(series_uid)?.is_empty() {
        return Err(WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store_dir.to_owned() });
    }
    let id = store.measurement_add(series_uid, kind, label.trim(), value, unit, author.trim())?;
    store.audit(author.trim(), "measure", series_uid, &format!("{kind} {label}: {value} {unit}"))?;
    Ok(id)
}

pub fn remove_measurement(store_dir: &Path, id: i64) -> Result<bool, WorkflowError> {
    Ok(Store::open(store_dir)?.measurement_remove(id)?)
}

pub fn measurements(store_dir: &Path, series_uid: &str) -> Result<Vec<lightbox_store::Measurement>, WorkflowError> {
    Ok(Store::open(store_dir)?.measurements(series_uid)?)
}

/// What the radiologist decided about the AI finding when signing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Review {
    /// The AI value goes into the report as the AI's.
    Accept,
    /// Left out of the report; the segmentation is not sent.
    Reject,
    /// Replaced by the radiologist's own value (mL), as their measurement of the same segment.
    Edit { volume_ml: f64 },
}

impl Review {
    fn tag(self) -> String {
        match self {
            Self::Accept => "accept".into(),
            Self::Reject => "reject".into(),
            Self::Edit { volume_ml } => format!("edit={volume_ml}"),
        }
    }

    /// In words, for the results screen and the audit log.
    pub fn describe(self) -> String {
        match self {
            Self::Accept => "accepted".into(),
            Self::Reject => "rejected".into(),
            Self::Edit { volume_ml } => format!("edited to {volume_ml} mL"),
        }
    }
}

/// One analysis result, for the results screen.
#[derive(Clone, Debug, PartialEq)]
pub struct ResultRow {
    pub job_id: i64,
    pub pipeline: String,
    pub series_uid: String,
    /// Whose series it is and what (empty when the series has left the store): what a
    /// radiologist checks before signing.
    pub series: lightbox_store::SeriesLabel,
    /// The job's state (see [`JobRow::state`]).
    pub state: String,
    pub volume_mm3: Option<f64>,
    pub seg_uid: Option<String>,
    pub sr_uid: Option<String>,
    /// Who signed it; `None` while it awaits review.
    pub signed_by: Option<String>,
    /// What they decided about the AI finding ("accepted", "rejected", "edited to … mL").
    pub review: Option<String>,
    pub error: Option<String>,
    /// What the analysis found, in words (see [`PipelineOutcome::summary`]).
    pub summary: Option<String>,
    /// See [`PipelineOutcome::details`] (`null` when there are none).
    pub details: serde_json::Value,
}

/// Every analysis result, newest first.
pub fn results(store_dir: &Path) -> Result<Vec<ResultRow>, WorkflowError> {
    let store = Store::open(store_dir)?;
    store
        .jobs()?
        .into_iter()
        .map(|job| {
            let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
            let result: serde_json::Value =
                job.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
            let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            let series_uid = text(&payload["series"]).unwrap_or_default();
            Ok(ResultRow {
                job_id: job.id,
                pipeline: job.kind,
                series: store.series_label(&series_uid)?.unwrap_or_default(),
                series_uid,
                state: job.state,
                volume_mm3: result["volume_mm3"].as_f64(),
                seg_uid: text(&result["seg"]),
                sr_uid: text(&result["signed_sr"]).or_else(|| text(&result["sr"])),
                signed_by: text(&result["signed_by"]),
                review: text(&result["review"]),
                error: job.error,
                summary: text(&result["summary"]).filter(|s| !s.is_empty()),
                details: result["details"].clone(),
            })
        })
        .collect()
}

/// A radiologist signs a result: a VERIFIED SR naming them (a new instance, its UID derived
/// from the job and the signer) and the SEG are put in the outbox for `send_to`. Unsigned AI
/// results never reach the PACS unless a rule says auto_send.
pub fn sign(
    store_dir: &Path,
    job_id: i64,
    radiologist: &str,
    send_to: &str,
    review: Review,
) -> Result<PipelineOutcome, WorkflowError> {
    if let Review::Edit { volume_ml } = review
        && !(volume_ml.is_finite() && volume_ml >= 0.0)
    {
        return Err(WorkflowError::Analysis(format!("an edited volume of {volume_ml} mL is not a volume")));
    }
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
    if job.kind != THRESHOLD_VOLUME {
        return sign_ai_report(&mut store, &job, radiologist, send_to, review);
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
    let mut outcome =
        threshold_volume(&mut store, None, &job.key, &series, threshold, Some(send_to), Some((radiologist, review)))?;
    outcome.job_id = job_id;
    let mut result: serde_json::Value =
        job.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_else(|| serde_json::json!({}));
    result["signed_sr"] = serde_json::Value::from(outcome.sr_uid.clone());
    result["signed_by"] = serde_json::Value::from(radiologist);
    result["review"] = serde_json::Value::from(review.describe());
    store.job_set_result(job_id, &result.to_string())?;
    store.audit(
        radiologist,
        "sign",
        &series,
        &format!("job {job_id}: SR {}, AI finding {}", outcome.sr_uid, review.describe()),
    )?;
    Ok(outcome)
}

/// Signs the report of an AI pipeline (all but threshold-volume, whose single finding the
/// radiologist may also edit). Accepted: a VERIFIED copy of its SR naming the radiologist
/// (`lightbox_dicom::sign_sr`: the same findings, the unsigned report as its predecessor, its
/// UID derived from the job and the signer) goes to `send_to` with the SEGs it references and
/// the image series the pipeline derived.
/// Rejected: nothing leaves, and the rejection is recorded on the job and in the audit log.
fn sign_ai_report(
    store: &mut Store,
    job: &lightbox_store::Job,
    radiologist: &str,
    send_to: &str,
    review: Review,
) -> Result<PipelineOutcome, WorkflowError> {
    let mut result: serde_json::Value =
        job.result.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_else(|| serde_json::json!({}));
    let sr_uid = result["sr"].as_str().map(str::to_owned).ok_or_else(|| {
        WorkflowError::Analysis(format!("job {} ({}) has no report to sign; run it again", job.id, job.kind))
    })?;
    let text = |key: &str| result[key].as_str().unwrap_or_default().to_owned();
    if let Some(who) = result["signed_by"].as_str() {
        return Err(WorkflowError::Analysis(format!(
            "job {} was signed by {who} already ({}); run the analysis again for a new report",
            job.id,
            text("review")
        )));
    }
    let mut outcome = PipelineOutcome {
        job_id: job.id,
        ran: true,
        seg_uid: text("seg"),
        sr_uid: sr_uid.clone(),
        volume_mm3: 0.0,
        queued: 0,
        summary: text("summary"),
        details: result["details"].clone(),
    };
    let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
    let series = payload["series"].as_str().unwrap_or_default().to_owned();
    // What is signed must be what was reviewed: the analysis of the same instances.
    if let Some(digest) = payload["instances"].as_str()
        && digest != instances_digest(store, &series)?
    {
        return Err(WorkflowError::Analysis(format!(
            "series {series} changed since job {} ran (instances arrived or left); run the analysis again and review it",
            job.id
        )));
    }
    // The verdict, on the job and in the audit log.
    let record = |store: &Store, result: &mut serde_json::Value, detail: String| -> Result<(), WorkflowError> {
        result["signed_by"] = serde_json::Value::from(radiologist);
        result["review"] = serde_json::Value::from(review.describe());
        store.job_set_result(job.id, &result.to_string())?;
        store.audit(radiologist, "sign", &series, &format!("job {}: {} {detail}", job.id, job.kind))?;
        Ok(())
    };
    match review {
        Review::Edit { .. } => {
            return Err(WorkflowError::Analysis(format!(
                "job {} ({}): its findings are the AI's to accept or reject; an edited volume is for threshold-volume",
                job.id, job.kind
            )));
        }
        Review::Reject => {
            record(store, &mut result, "rejected, nothing sent".into())?;
            return Ok(outcome);
        }
        Review::Accept => {}
    }
    let unsigned = store.instance_file(&sr_uid)?.ok_or_else(|| {
        WorkflowError::Analysis(format!("job {}: its report {sr_uid} is no longer in the store; run it again", job.id))
    })?;
    let out = results_dir(store)?;
    let path = out.path().join("signed-sr.dcm");
    let seed = format!("{}/signed-by/{radiologist}", job.key);
    // The radiologists' own measurements on the series (the PSA and PSA density a prostate
    // report takes, lengths drawn in the viewer) go in beside the AI's findings, as theirs.
    let own = radiologist_groups(store, &series, &job.key, Some(radiologist))?;
    let institution = crate::settings::institution();
    let signed = lightbox_dicom::sign_sr(&unsigned, radiologist, &institution, &own, &seed, &path)?;
    let mut files = vec![path];
    for seg in &signed.seg_uids {
        files.push(store.instance_file(seg)?.ok_or_else(|| {
            WorkflowError::Analysis(format!("job {}: the SEG {seg} its report references is not in the store", job.id))
        })?);
    }
    // Image series the pipeline derived (breast-dce's subtraction and its MIP) go with it.
    for derived in result["details"]["derived_series"].as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
        files.extend(store.series_files(derived)?);
    }
    let paths: Vec<&std::path::PathBuf> = files.iter().collect();
    outcome.queued = store_results(store, &paths, Some(send_to))?;
    outcome.sr_uid = signed.sop_uid.clone();
    result["signed_sr"] = serde_json::Value::from(signed.sop_uid.clone());
    record(
        store,
        &mut result,
        format!(
            "SR {} with {} SEG(s), AI findings accepted, {} own measurement(s)",
            signed.sop_uid,
            signed.seg_uids.len(),
            own.len()
        ),
    )?;
    Ok(outcome)
}

/// One job, for the jobs screen.
#[derive(Clone, Debug, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub pipeline: String,
    /// `queued`, `running`, `done`, `failed`, `cancelled`, `waiting` (for the rest of its
    /// series or study; `stage` says what is missing) or `superseded` (by a newer input's job).
    pub state: String,
    /// `cpu` or `gpu`.
    pub device: String,
    pub stage: String,
    pub series_uid: String,
    pub seconds: Option<f64>,
    pub runs: i64,
    pub error: Option<String>,
    pub created_at: String,
}

/// Every job, newest first.
pub fn job_rows(store_dir: &Path) -> Result<Vec<JobRow>, WorkflowError> {
    Ok(Store::open(store_dir)?
        .jobs()?
        .into_iter()
        .map(|j| JobRow {
            series_uid: payload_series(&j.payload),
            id: j.id,
            pipeline: j.kind,
            state: j.state,
            device: j.device,
            stage: j.stage,
            seconds: j.seconds,
            runs: j.runs,
            error: j.error,
            created_at: j.created_at,
        })
        .collect())
}

/// Cancels a queued or running job; false when it had ended.
pub fn cancel(store_dir: &Path, job_id: i64) -> Result<bool, WorkflowError> {
    let store = Store::open(store_dir)?;
    let cancelled = store.job_cancel(job_id)?;
    if cancelled {
        store.audit("lightbox", "cancel", &job_id.to_string(), "job cancelled")?;
    }
    Ok(cancelled)
}

/// Puts a failed, cancelled or waiting job back in the queue, for an engine to run (the
/// service's `POST /jobs/{id}/retry`); false when it is in another state.
pub fn requeue(store_dir: &Path, job_id: i64, actor: &str) -> Result<bool, WorkflowError> {
    let store = Store::open(store_dir)?;
    let requeued = store.job_requeue(job_id)?;
    if requeued {
        store.audit(actor, "retry", &job_id.to_string(), "job queued again")?;
    }
    Ok(requeued)
}

/// Runs a failed or cancelled job again, now, in this process.
pub fn rerun(store_dir: &Path, job_id: i64) -> Result<PipelineOutcome, WorkflowError> {
    let store = Store::open(store_dir)?;
    let job = store.job(job_id)?.ok_or_else(|| WorkflowError::Analysis(format!("no job {job_id}")))?;
    if job.state == "done" {
        return finished_outcome(&store, job_id);
    }
    if job.state == "superseded" {
        return Err(WorkflowError::Analysis(format!(
            "job {job_id} was {}; it is not run again (a newer job has its series or study as it is now; \
             without one, `lightbox run` the pipeline on it)",
            job.stage
        )));
    }
    store.job_requeue(job_id)?;
    if !store.job_take(job_id, runner_id(), lease_secs())? {
        return Err(WorkflowError::Busy(job_id));
    }
    drop(store);
    execute(store_dir, job_id)
}

/// A digest of the series' SOP Instance UIDs: which instances an analysis saw.
pub(crate) fn instances_digest(store: &Store, series_uid: &str) -> Result<String, WorkflowError> {
    let mut uids = store.series_sop_uids(series_uid)?;
    uids.sort();
    Ok(lightbox_dicom::uid_from(&uids.join("\\")))
}
