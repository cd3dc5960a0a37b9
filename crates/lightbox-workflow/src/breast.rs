//! The `breast-dce` pipeline: a dynamic contrast-enhanced breast series (three or more time
//! points with their times in the headers) becomes
//! - two derived image series in the same study: the motion-corrected subtraction (first
//!   post-contrast phase minus the pre-contrast mean) and its maximum intensity projection;
//! - a SEG with each lesion candidate (fast-enhancing components) as its own segment;
//! - a TID 1500 SR with the candidates: volume, longest diameter, initial enhancement, delayed
//!   change, curve type (I persistent, II plateau, III washout) and the time-intensity curve.
//!
//! The candidates come from enhancement thresholds, not from a trained detection model: a model
//! package for breast lesion detection plugs in through `lightbox models import` and `predict`
//! (the hook), and none with a licence that allows it is bundled. Automated output, research
//! use only.

use lightbox_analysis::breast::{CurveType, DceAnalysis, InitialRate};
use lightbox_dicom::{Code, Measurement, MeasurementGroup, Segment, SegmentRef};
use lightbox_store::Store;

use crate::WorkflowError;
use crate::brain::local;
use crate::pipeline::{Lease, PipelineOutcome, results_dir, scan_series, stage};

pub const BREAST_DCE: &str = "breast-dce";
/// Bumped whenever the results could change.
pub const VERSION: &str = "1";

fn curve_code(c: CurveType) -> Code {
    match c {
        CurveType::Persistent => local("CURVE-I", "Type I persistent"),
        CurveType::Plateau => local("CURVE-II", "Type II plateau"),
        CurveType::Washout => local("CURVE-III", "Type III washout"),
    }
}

fn rate_code(r: InitialRate) -> Code {
    match r {
        InitialRate::Slow => local("RATE-SLOW", "Slow initial enhancement"),
        InitialRate::Medium => local("RATE-MEDIUM", "Medium initial enhancement"),
        InitialRate::Fast => local("RATE-FAST", "Fast initial enhancement"),
    }
}

/// Runs the pipeline on a stored DCE series and stores its results (with `send_to`, queues them).
pub(crate) fn run(
    store: &mut Store,
    lease: Option<&Lease>,
    key: &str,
    series_uid: &str,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let report = scan_series(store, series_uid)?;
    let series = report
        .find_series(series_uid)
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() })?;
    let set = report.display_sets(series).iter().max_by_key(|s| s.time_points).ok_or_else(|| {
        WorkflowError::NothingToExport {
            path: store.root().to_owned(),
            issues: format!("series {series_uid} has no images"),
        }
    })?;
    let bad = |what: String| WorkflowError::Analysis(format!("series {series_uid}: {what}"));
    if set.time_points < 3 {
        return Err(bad(format!(
            "{} time point(s): a DCE series needs a pre-contrast phase and two after",
            set.time_points
        )));
    }
    let files = store.series_files(series_uid)?;
    let first = files.first().ok_or_else(|| bad("no files".into()))?;
    let facts = lightbox_dicom::series_facts(first)?;
    // A dynamic series arrives phase by phase: analysing part of it would misread the curves.
    if let Some(declared) = facts.temporal_positions
        && set.time_points < declared
    {
        return Err(bad(format!(
            "incomplete: {} of its {declared} phases have arrived (it is analysed again when the rest arrives)",
            set.time_points
        )));
    }
    let times = set
        .phase_times_s()
        .ok_or_else(|| bad("the phases' times are not in the headers (Trigger, Acquisition or Content Time)".into()))?;
    stage(lease, store, "loading")?;
    let phases = (0..set.time_points).map(|t| set.load(t)).collect::<Result<Vec<_>, _>>()?;
    stage(lease, store, "motion correction and kinetics")?;
    let dce = lightbox_analysis::breast::analyse_dce(&phases, &times, None).map_err(|e| bad(e.to_string()))?;
    drop(phases);

    let name = format!("Lightbox {BREAST_DCE}");
    let record = lightbox_dicom::read_instance(first)?;
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
    let mut written = Vec::new();
    for (number, what, volume) in [
        (9931, "Subtraction (first post-contrast minus pre-contrast), motion corrected", &dce.subtraction),
        (9932, "Subtraction MIP", &dce.mip),
    ] {
        let folder = out.path().join(format!("series-{number}"));
        let new = lightbox_dicom::NewSeries {
            patient: record.patient.clone(),
            study_uid: Some(record.study_uid.clone()),
            study_date: record.study_date.clone(),
            patient_birth_date: facts.patient_birth_date.clone(),
            study_description: record.study_description.clone(),
            series_description: format!("{what} (Lightbox, not for clinical use)"),
            series_number: number,
            derivation: format!("{what} of series {series_uid} by {name} {VERSION}"),
            uid_seed: Some(format!("{key}/derived/{number}")),
            frame_of_reference_uid: (!facts.frame_of_reference_uid.is_empty())
                .then(|| facts.frame_of_reference_uid.clone()),
        };
        written.extend(lightbox_dicom::write_mr_series(volume, &new, &folder)?);
    }
    let seg = if dce.lesions.is_empty() {
        None
    } else {
        let path = out.path().join("seg.dcm");
        let labels: Vec<u8> = dce.lesion_of.iter().map(|&k| u8::try_from(k).unwrap_or(0)).collect();
        let grid = &dce.curve_types;
        let labels =
            lightbox_core::Volume::new(grid.dims(), labels, grid.patient_from_voxel).map_err(|e| bad(e.to_string()))?;
        let segments: Vec<Segment> = dce
            .lesions
            .iter()
            .take(255)
            .enumerate()
            .map(|(i, l)| Segment {
                label: format!("Lesion candidate {} ({})", i + 1, curve_code(l.kinetics.curve_type).meaning),
                category: Code::new("49755003", "SCT", "Morphologically Abnormal Structure"),
                property_type: Code::new("52988006", "SCT", "Lesion"),
                algorithm: lightbox_dicom::SegmentAlgorithm::Automatic { name: name.clone(), version: VERSION.into() },
            })
            .collect();
        let w = lightbox_dicom::write_seg(
            set,
            0,
            &labels,
            &segments,
            &crate::pipeline::ai_seg_series(
                9933,
                "Automated: breast DCE lesion candidates (research, not for clinical use)",
                "Automated output: fast-enhancing lesion candidates",
                &name,
                format!("{key}/seg"),
            ),
            &path,
        )?;
        Some((path, w))
    };
    let algorithm = lightbox_dicom::Algorithm {
        name: name.clone(),
        version: VERSION.into(),
        parameters: vec![
            lightbox_analysis::breast::DCE_METHOD.to_owned(),
            format!("contrast at {:.0} s; phases at {:?} s", dce.contrast_s, dce.times_s),
        ],
    };
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &crate::pipeline::ai_report(
            &name,
            "lightbox/device/breast-dce",
            Code::new("30794-2", "LN", "MR Breast"),
            groups(&dce, seg.as_ref().map(|s| &s.1), key, &algorithm),
            "Automated: breast DCE kinetics (research, not for clinical use)",
            9934,
            format!("{key}/sr"),
        ),
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let paths: Vec<&std::path::PathBuf> = written.iter().chain(seg.iter().map(|s| &s.0)).chain([&sr_path]).collect();
    let queued = crate::pipeline::store_results(store, &paths, send_to)?;
    let summary = summary(&dce);
    let lesions: Vec<serde_json::Value> = dce
        .lesions
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({
                "label": format!("Lesion candidate {} ({})", i + 1, curve_code(l.kinetics.curve_type).meaning),
                "centre_mm": l.centre_mm,
                "volume_ml": l.volume_ml,
                "curve": dce.times_s.iter().zip(&l.curve).map(|(t, s)| [*t, *s]).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut findings = Vec::new();
    for (i, l) in dce.lesions.iter().enumerate() {
        let label = format!("Candidate {} ({})", i + 1, curve_code(l.kinetics.curve_type).meaning);
        findings.push(serde_json::json!([format!("{label}: volume"), l.volume_ml, "mL"]));
        findings.push(serde_json::json!([
            format!("{label}: initial enhancement"),
            l.kinetics.initial_enhancement_percent,
            "%"
        ]));
    }
    Ok(PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: seg.map(|s| s.1.sop_uid).unwrap_or_default(),
        sr_uid,
        volume_mm3: 1000.0 * dce.lesions.iter().map(|l| l.volume_ml).sum::<f64>(),
        queued,
        summary,
        details: serde_json::json!({ "findings": findings, "lesions": lesions }),
    })
}

fn summary(dce: &DceAnalysis) -> String {
    let types: Vec<String> = dce
        .lesions
        .iter()
        .map(|l| format!("{:.2} mL {}", l.volume_ml, curve_code(l.kinetics.curve_type).meaning.to_ascii_lowercase()))
        .collect();
    let moved = dce.motion_mm.iter().copied().fold(0.0, f64::max);
    format!(
        "{} lesion candidate(s){}{}; contrast at {:.0} s; motion corrected (largest {moved:.1} mm)",
        dce.lesions.len(),
        if types.is_empty() { "" } else { ": " },
        types.join(", "),
        dce.contrast_s
    )
}

fn groups(
    dce: &DceAnalysis,
    seg: Option<&lightbox_dicom::Written>,
    key: &str,
    algorithm: &lightbox_dicom::Algorithm,
) -> Vec<MeasurementGroup> {
    let m = |concept: Code, value: f64, unit: Code| Measurement {
        concept,
        value,
        unit,
        algorithm: Some(algorithm.clone()),
    };
    let percent = || Code::new("%", "UCUM", "percent");
    let breast = Code::new("76752008", "SCT", "Breast");
    let mut out = vec![MeasurementGroup {
        tracking_id: "AI: breast DCE".into(),
        tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/summary")),
        finding: Some(Code::new("52988006", "SCT", "Lesion")),
        observer: None,
        finding_site: Some(breast.clone()),
        segment: None,
        measurements: vec![
            m(
                local("CANDIDATES", "Number of lesion candidates"),
                dce.lesions.len() as f64,
                Code::new("{lesions}", "UCUM", "lesions"),
            ),
            m(
                local("MOTION", "Largest motion corrected"),
                dce.motion_mm.iter().copied().fold(0.0, f64::max),
                Code::new("mm", "UCUM", "millimeter"),
            ),
            m(
                local("CONTRAST-TIME", "Contrast arrival after the first phase"),
                dce.contrast_s,
                Code::new("s", "UCUM", "second"),
            ),
        ],
        qualitative: vec![],
    }];
    for (i, l) in dce.lesions.iter().enumerate() {
        let base = l.curve[..dce.pre_phases].iter().sum::<f64>() / dce.pre_phases.max(1) as f64;
        let mut measurements = vec![
            m(Code::new("118565006", "SCT", "Volume"), l.volume_ml, Code::new("mL", "UCUM", "milliliter")),
            m(Code::new("103339001", "SCT", "Long Axis"), l.max_diameter_mm, Code::new("mm", "UCUM", "millimeter")),
            m(local("IE", "Initial enhancement"), l.kinetics.initial_enhancement_percent, percent()),
            m(local("DELAYED", "Delayed phase signal change"), l.kinetics.delayed_change_percent, percent()),
            m(local("WASHOUT-SHARE", "Share of voxels with washout"), 100.0 * l.washout_fraction, percent()),
        ];
        // The time-intensity curve: relative enhancement at each post-contrast phase.
        for (t, s) in dce.times_s.iter().zip(&l.curve).skip(dce.pre_phases) {
            measurements.push(m(
                local(&format!("RE-{t:.0}"), &format!("Relative enhancement at {t:.0} s")),
                100.0 * (s - base) / base.max(f64::MIN_POSITIVE),
                percent(),
            ));
        }
        out.push(MeasurementGroup {
            tracking_id: format!("AI: lesion candidate {}", i + 1),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/lesion/{i}")),
            finding: Some(Code::new("52988006", "SCT", "Lesion")),
            observer: None,
            finding_site: Some(breast.clone()),
            segment: seg.filter(|_| i < 255).map(|s| SegmentRef { seg: s.clone(), number: i as u16 + 1 }),
            measurements,
            qualitative: vec![
                (local("CURVE", "Kinetic curve type"), curve_code(l.kinetics.curve_type)),
                (local("RATE", "Initial enhancement rate"), rate_code(l.kinetics.initial_rate)),
            ],
        });
    }
    out
}
