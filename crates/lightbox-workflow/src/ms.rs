//! The `ms-lesion-change` pipeline: a new FLAIR of a patient whose earlier FLAIR is in the store
//! (see [`crate::find_prior`]) becomes
//! - a SEG with each new or enlarging lesion as its own segment (largest first), and
//! - a TID 1500 SR with their counts and total volumes and one group per lesion (its volume,
//!   whether it is new or enlarging, linked to its segment).
//!
//! Without a prior FLAIR there is nothing to compare: the job ends without results and says so.
//! AI output (the brain mask is deepbet's), research use only.

use lightbox_analysis::brain::LesionChangeReport;
use lightbox_dicom::{Code, MeasurementGroup, Segment, SegmentRef};
use lightbox_store::Store;

use crate::WorkflowError;
use crate::brain::local;
use crate::pipeline::{Lease, PipelineOutcome, first_set, results_dir, scan_series, stage};

pub const MS_LESION_CHANGE: &str = "ms-lesion-change";
/// Bumped whenever the results could change.
pub const VERSION: &str = "2";

const KINDS: [(&str, &str); 2] = [("NEW", "New lesion"), ("ENLARGING", "Enlarging lesion")];

/// The most lesions a SEG here holds as segments (8-bit labels); more are reported in the SR's
/// counts and totals but the SEG keeps the largest.
const MAX_SEGMENTS: usize = 255;

/// The lesions, largest first (all of them; the SEG keeps the first [`MAX_SEGMENTS`]).
fn largest_first(change: &LesionChangeReport) -> Vec<usize> {
    let mut order: Vec<usize> = (0..change.lesions.len()).collect();
    order.sort_by(|a, b| change.lesions[*b].volume_ml.total_cmp(&change.lesions[*a].volume_ml));
    order
}

/// What a lesion is called in the SEG and the SR: "New lesion 1", "Enlarging lesion 2"…
fn lesion_label(change: &LesionChangeReport, rank: usize, index: usize) -> String {
    format!("{} {}", KINDS[usize::from(change.lesions[index].enlarging)].1, rank + 1)
}

/// One segment per lesion, largest first, and the label volume whose value `k` is segment `k`.
fn lesion_segments(
    change: &LesionChangeReport,
    order: &[usize],
    name: &str,
) -> Result<(Vec<Segment>, lightbox_core::Volume<u8>), WorkflowError> {
    let mut segment_of = vec![0u8; change.lesions.len() + 1];
    let mut segments = Vec::new();
    for (rank, &index) in order.iter().take(MAX_SEGMENTS).enumerate() {
        segment_of[index + 1] = u8::try_from(rank + 1).unwrap_or(0);
        segments.push(Segment {
            label: lesion_label(change, rank, index),
            category: Code::new("49755003", "SCT", "Morphologically Abnormal Structure"),
            property_type: Code::new("52988006", "SCT", "Lesion"),
            algorithm: lightbox_dicom::SegmentAlgorithm::Automatic { name: name.to_owned(), version: VERSION.into() },
        });
    }
    let labels = change.lesion_of.iter().map(|&k| segment_of.get(k as usize).copied().unwrap_or(0)).collect();
    let grid = &change.labels;
    let labels = lightbox_core::Volume::new(grid.dims(), labels, grid.patient_from_voxel)
        .map_err(|e| WorkflowError::Analysis(format!("lesion segments: {e}")))?;
    Ok((segments, labels))
}

/// Runs the pipeline on a stored FLAIR and stores its SEG and SR (with `send_to`, queues them).
pub(crate) fn run(
    store: &mut Store,
    lease: Option<&Lease>,
    key: &str,
    series_uid: &str,
    prior_uid: Option<&str>,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let none = |why: &str| PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: String::new(),
        sr_uid: String::new(),
        volume_mm3: 0.0,
        queued: 0,
        summary: why.to_owned(),
        details: serde_json::Value::Null,
    };
    let Some(prior_uid) = prior_uid else {
        return Ok(none("no prior FLAIR of this patient: lesion change needs two, nothing written"));
    };
    let models = crate::ai::models_dir();
    crate::ai::check_deepbet(&models)?;
    let report = scan_series(store, series_uid)?;
    let set = first_set(store, &report, series_uid)?;
    let prior_report = scan_series(store, prior_uid)?;
    stage(lease, store, "loading")?;
    let followup = set.load(0)?;
    let baseline = first_set(store, &prior_report, prior_uid)?.load(0)?;
    let device = lightbox_ai::AiDevice::from_env()?;
    let description = device.description.clone();
    let net = lightbox_ai::deepbet::Deepbet::from_packages(&models, device)?;
    stage(lease, store, "lesion change")?;
    let change = lightbox_analysis::brain::lesion_change(&net, &baseline, &followup)
        .map_err(|e| WorkflowError::Analysis(format!("series {series_uid} against {prior_uid}: {e}")))?;

    let name = format!("Lightbox {MS_LESION_CHANGE}");
    let algorithm = lightbox_dicom::Algorithm {
        name: name.clone(),
        version: VERSION.into(),
        parameters: vec![
            lightbox_analysis::brain::LESION_CHANGE_METHOD.to_owned(),
            format!("prior series {prior_uid}"),
            format!("device: {description}"),
        ],
    };
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
    // A SEG only when there is something in it.
    let order = largest_first(&change);
    let seg = if change.lesions.is_empty() {
        None
    } else {
        let path = out.path().join("seg.dcm");
        let (segments, labels) = lesion_segments(&change, &order, &name)?;
        let written = lightbox_dicom::write_seg(
            set,
            0,
            &labels,
            &segments,
            &crate::pipeline::ai_seg_series(
                9921,
                "AI: new and enlarging lesions (research, not for clinical use)",
                "AI output: FLAIR lesions new or enlarged since the prior",
                &name,
                format!("{key}/seg"),
            ),
            &path,
        )?;
        Some((path, written))
    };
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &crate::pipeline::ai_report(
            &name,
            "lightbox/device/ms-lesion-change",
            Code::new("24590-2", "LN", "MRI Brain"),
            lesion_groups(&change, &order, seg.as_ref().map(|s| &s.1), key, &algorithm),
            "AI: MS lesion change (research, not for clinical use)",
            9922,
            format!("{key}/sr"),
        ),
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let paths: Vec<&std::path::PathBuf> = seg.iter().map(|s| &s.0).chain(std::iter::once(&sr_path)).collect();
    let queued = crate::pipeline::store_results(store, &paths, send_to)?;
    Ok(PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: seg.map(|s| s.1.sop_uid).unwrap_or_default(),
        sr_uid,
        volume_mm3: 1000.0 * (change.volume_ml(false) + change.volume_ml(true)),
        queued,
        summary: change.summary(),
        details: serde_json::json!({
            "findings": [
                ["New lesions", change.new_count(), "{lesions}"],
                ["Volume of new lesions", change.volume_ml(false), "mL"],
                ["Enlarging lesions", change.enlarging_count(), "{lesions}"],
                ["Volume of enlarging lesions", change.volume_ml(true), "mL"],
            ],
            "lesions": order.iter().enumerate().map(|(rank, &i)| serde_json::json!({
                "label": lesion_label(&change, rank, i),
                "centre_mm": change.lesions[i].centre_mm,
                "volume_ml": change.lesions[i].volume_ml,
            })).collect::<Vec<_>>(),
        }),
    })
}

/// The counts and totals, then one group per lesion (largest first).
fn lesion_groups(
    change: &LesionChangeReport,
    order: &[usize],
    seg: Option<&lightbox_dicom::Written>,
    key: &str,
    algorithm: &lightbox_dicom::Algorithm,
) -> Vec<MeasurementGroup> {
    let measurement = crate::pipeline::measured_by(algorithm);
    let ml = || Code::new("mL", "UCUM", "milliliter");
    let count = || Code::new("{lesions}", "UCUM", "lesions");
    let volume = || Code::new("118565006", "SCT", "Volume");
    let lesion = || Code::new("52988006", "SCT", "Lesion");
    let mut groups = vec![MeasurementGroup {
        tracking_id: "AI: lesion change".into(),
        tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/summary")),
        finding: Some(lesion()),
        observer: None,
        finding_site: Some(Code::new("12738006", "SCT", "Brain")),
        segment: None,
        measurements: vec![
            measurement(local("NEW-COUNT", "Number of new lesions"), change.new_count() as f64, count()),
            measurement(local("NEW-VOLUME", "Volume of new lesions"), change.volume_ml(false), ml()),
            measurement(
                local("ENLARGING-COUNT", "Number of enlarging lesions"),
                change.enlarging_count() as f64,
                count(),
            ),
            measurement(local("ENLARGING-VOLUME", "Volume of enlarging lesions"), change.volume_ml(true), ml()),
        ],
        qualitative: vec![],
    }];
    for (rank, &i) in order.iter().enumerate() {
        let l = &change.lesions[i];
        let (code, label) = KINDS[usize::from(l.enlarging)];
        groups.push(MeasurementGroup {
            tracking_id: format!("AI: {}", lesion_label(change, rank, i).to_ascii_lowercase()),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/lesion/{i}")),
            finding: Some(lesion()),
            observer: None,
            finding_site: Some(Code::new("12738006", "SCT", "Brain")),
            segment: seg
                .filter(|_| rank < MAX_SEGMENTS)
                .map(|s| SegmentRef { seg: s.clone(), number: rank as u16 + 1 }),
            measurements: vec![measurement(volume(), l.volume_ml, ml())],
            qualitative: vec![(local("CHANGE", "Change since the prior study"), local(code, label))],
        });
    }
    groups
}
