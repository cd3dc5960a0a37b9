//! The `breast-dce` pipeline: a dynamic contrast-enhanced breast series (three or more time
//! points with their times in the headers) becomes
//! - two derived image series in the same study: the motion-corrected subtraction (first
//!   post-contrast phase minus the pre-contrast mean) and its maximum intensity projection;
//! - a SEG with each lesion candidate (fast-enhancing components) as its own segment;
//! - a TID 1500 SR with the candidates: volume, longest diameter, initial enhancement, delayed
//!   change, curve type (I persistent, II plateau, III washout) and the time-intensity curve.
//!
//! The candidates come from enhancement thresholds. A detection model plugs in as the rule's
//! `model = "NAME"` (a package `lightbox models import` made from an nnU-Net v2 folder): its
//! channels are filled by their names (`SUB`: the motion-corrected subtraction; `PRE`: the first
//! phase; `POST1`, `POST2`, …: the post-contrast phases as acquired), its lesion class goes
//! through PI-CAI's lesion extraction, and its lesions, each with its likelihood, volume, curve
//! type (the most common among its voxels) and time-intensity curve, become a second SEG and
//! more groups of the SR. No breast model with a licence that allows it is bundled. Automated
//! output, research use only.

use lightbox_analysis::breast::{CurveType, DceAnalysis, InitialRate};
use lightbox_dicom::{Code, MeasurementGroup, Segment, SegmentRef};
use lightbox_store::Store;

use crate::WorkflowError;
use crate::brain::local;
use crate::pipeline::{Lease, PipelineOutcome, results_dir, scan_series, stage};

pub const BREAST_DCE: &str = "breast-dce";
/// Bumped whenever the results could change.
pub const VERSION: &str = "2";

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
    model: Option<&str>,
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
    let files = store.series_files(series_uid)?;
    let first = files.first().ok_or_else(|| bad("no files".into()))?;
    let facts = lightbox_dicom::series_facts(first)?;
    // A dynamic series arrives phase by phase: analysing part of it would misread the curves.
    // The job waits for the rest (the rest arriving is a new input, a new job).
    if let Some(declared) = facts.temporal_positions
        && set.time_points < declared
    {
        return Err(WorkflowError::Incomplete {
            input: format!("series {series_uid}"),
            missing: format!("{} of its {declared} phases have arrived", set.time_points),
        });
    }
    if set.time_points < 3 {
        return Err(bad(format!(
            "{} time point(s): a DCE series needs a pre-contrast phase and two after",
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
    let detected = match model {
        Some(name) => {
            stage(lease, store, "running the model")?;
            Some(detect(name, &phases, &dce).map_err(|e| bad(format!("model {name}: {e}")))?)
        }
        None => None,
    };
    drop(phases);

    let name = format!("Lightbox {BREAST_DCE}");
    let record = lightbox_dicom::read_instance(first)?;
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
    let mut written = Vec::new();
    // The derived image series' UIDs: they go to the PACS with the report when it is signed.
    let mut derived_series = Vec::new();
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
        let files = lightbox_dicom::write_mr_series(volume, &new, &folder)?;
        if let Some(first) = files.first() {
            derived_series.push(lightbox_dicom::read_instance(first)?.series_uid.to_string());
        }
        written.extend(files);
    }
    // A SEG of lesions on the kinetics' grid: one segment each (at most 255), named `labels`.
    let lesion_seg = |file: &str,
                      values: Vec<u8>,
                      labels: Vec<String>,
                      algorithm: String,
                      series: lightbox_dicom::SegSeries|
     -> Result<(std::path::PathBuf, lightbox_dicom::Written), WorkflowError> {
        let path = out.path().join(file);
        let grid = &dce.curve_types;
        let values =
            lightbox_core::Volume::new(grid.dims(), values, grid.patient_from_voxel).map_err(|e| bad(e.to_string()))?;
        let segments: Vec<Segment> = labels
            .into_iter()
            .take(255)
            .map(|label| Segment {
                label,
                category: Code::new("49755003", "SCT", "Morphologically Abnormal Structure"),
                property_type: Code::new("52988006", "SCT", "Lesion"),
                algorithm: lightbox_dicom::SegmentAlgorithm::Automatic {
                    name: algorithm.clone(),
                    version: VERSION.into(),
                },
            })
            .collect();
        let w = lightbox_dicom::write_seg(set, 0, &values, &segments, &series, &path)?;
        Ok((path, w))
    };
    let seg = if dce.lesions.is_empty() {
        None
    } else {
        Some(lesion_seg(
            "seg.dcm",
            dce.lesion_of.iter().map(|&k| u8::try_from(k).unwrap_or(0)).collect(),
            dce.lesions
                .iter()
                .enumerate()
                .map(|(i, l)| format!("Lesion candidate {} ({})", i + 1, curve_code(l.kinetics.curve_type).meaning))
                .collect(),
            name.clone(),
            crate::pipeline::ai_seg_series(
                9933,
                "Automated: breast DCE lesion candidates (research, not for clinical use)",
                "Automated output: fast-enhancing lesion candidates",
                &name,
                format!("{key}/seg"),
            ),
        )?)
    };
    let model_seg = match &detected {
        Some(d) if !d.lesions.is_empty() => Some(lesion_seg(
            "model-seg.dcm",
            d.labels.clone(),
            d.lesions
                .iter()
                .enumerate()
                .map(|(i, l)| format!("AI lesion {} (likelihood {:.2})", i + 1, l.likelihood))
                .collect(),
            format!("{name} ({})", d.model),
            crate::pipeline::ai_seg_series(
                9935,
                "AI: breast lesions of a detection model (research, not for clinical use)",
                &format!("AI output of model {}", d.model),
                &name,
                format!("{key}/model-seg"),
            ),
        )?),
        _ => None,
    };
    let mut parameters = vec![
        lightbox_analysis::breast::DCE_METHOD.to_owned(),
        format!("contrast at {:.0} s; phases at {:?} s", dce.contrast_s, dce.times_s),
    ];
    if let Some(d) = &detected {
        parameters.push(format!("model {} ({})", d.model, d.description));
        parameters.push(format!("device: {}", d.device));
    }
    let algorithm = lightbox_dicom::Algorithm { name: name.clone(), version: VERSION.into(), parameters };
    let mut report_groups = groups(&dce, seg.as_ref().map(|s| &s.1), key, &algorithm);
    if let Some(d) = &detected {
        report_groups.extend(model_groups(d, model_seg.as_ref().map(|s| &s.1), key, &algorithm));
    }
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &crate::pipeline::ai_report(
            &name,
            "lightbox/device/breast-dce",
            Code::new("30794-2", "LN", "MR Breast"),
            report_groups,
            "Automated: breast DCE kinetics (research, not for clinical use)",
            9934,
            format!("{key}/sr"),
        ),
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let paths: Vec<&std::path::PathBuf> = written
        .iter()
        .chain(seg.iter().map(|s| &s.0))
        .chain(model_seg.iter().map(|s| &s.0))
        .chain([&sr_path])
        .collect();
    let queued = crate::pipeline::store_results(store, &paths, send_to)?;
    let mut summary = summary(&dce);
    if let Some(d) = &detected {
        summary.push_str(&format!(
            "; model {}: {} lesion(s){}",
            d.model,
            d.lesions.len(),
            d.lesions.first().map_or_else(String::new, |l| format!(", the likeliest {:.2}", l.likelihood))
        ));
    }
    let mut lesions: Vec<serde_json::Value> = dce
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
    for (i, l) in detected.iter().flat_map(|d| d.lesions.iter()).enumerate() {
        let label = format!("AI lesion {} (likelihood {:.2})", i + 1, l.likelihood);
        findings.push(serde_json::json!([format!("AI lesion {} likelihood", i + 1), l.likelihood, "1"]));
        lesions.push(serde_json::json!({
            "label": label,
            "centre_mm": l.centre_mm,
            "volume_ml": l.volume_ml,
            "curve": dce.times_s.iter().zip(&l.curve).map(|(t, s)| [*t, *s]).collect::<Vec<_>>(),
        }));
    }
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
        details: serde_json::json!({ "findings": findings, "lesions": lesions, "derived_series": derived_series }),
    })
}

/// A lesion the detection model found.
struct ModelLesion {
    likelihood: f32,
    volume_ml: f64,
    centre_mm: [f64; 3],
    /// The most common curve type among its enhancing voxels.
    curve_type: Option<CurveType>,
    /// Mean signal per phase (as acquired).
    curve: Vec<f64>,
}

/// What the detection model found: its lesions, their label map (lesion k holds k) and the
/// device it ran on.
struct Detection {
    model: String,
    description: String,
    device: String,
    labels: Vec<u8>,
    lesions: Vec<ModelLesion>,
}

/// Runs the model package `name` on the DCE series (the hook) and extracts its lesions.
fn detect(name: &str, phases: &[lightbox_core::Volume<f32>], dce: &DceAnalysis) -> Result<Detection, WorkflowError> {
    let dir = crate::ai::models_dir().join(name);
    let package = lightbox_ai::ModelPackage::open(&dir)?;
    let mut channels = Vec::new();
    for sequence in &package.manifest.input.sequences {
        let s = sequence.to_ascii_uppercase();
        let volume = if s.contains("SUB") {
            dce.subtraction.clone()
        } else if s.starts_with("PRE") {
            phases[0].clone()
        } else if let Some(k) = s.strip_prefix("POST") {
            let k: usize = if k.is_empty() { 1 } else { k.trim().parse().unwrap_or(0) };
            phases.get(dce.pre_phases + k.max(1) - 1).filter(|_| k >= 1).cloned().ok_or_else(|| {
                WorkflowError::Analysis(format!("the model wants {sequence:?}; the series has {} phases", phases.len()))
            })?
        } else {
            return Err(WorkflowError::Analysis(format!(
                "the model's channel {sequence:?} is not one a DCE series gives (SUB, PRE, POST1, POST2, …)"
            )));
        };
        channels.push(volume);
    }
    let device = lightbox_ai::AiDevice::from_env()?.with_env_precision()?;
    let device_name = device.description.clone();
    let net = lightbox_ai::nnunet::NnUnet::from_package(&dir, device)?;
    let probabilities =
        net.predict_probabilities(&channels, &std::sync::atomic::AtomicBool::new(false), &mut |_| {})?;
    let class = package
        .manifest
        .labels
        .iter()
        .find(|(_, n)| ["lesion", "tumo", "cancer"].iter().any(|w| n.to_ascii_lowercase().contains(w)))
        .and_then(|(i, _)| i.parse::<usize>().ok())
        .unwrap_or(probabilities.len().saturating_sub(1));
    let map =
        probabilities.get(class).ok_or_else(|| WorkflowError::Analysis("the model has no lesion class".into()))?;
    let [nx, ny, nz] = map.dims();
    let (labels, found) = lightbox_analysis::prostate::extract_lesions(
        map.voxels(),
        [nz, ny, nx],
        &lightbox_analysis::prostate::ExtractionOptions::default(),
    )
    .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    let voxel_ml = map.spacing_mm().iter().product::<f64>() / 1000.0;
    let lesions = found
        .iter()
        .map(|c| {
            let at: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c.index).collect();
            let n = at.len().max(1) as f64;
            let mut centre_mm = [0.0; 3];
            let mut votes = [0usize; 4];
            for &i in &at {
                let p = map.patient_from_voxel.transform_point([
                    (i % nx) as f64,
                    ((i / nx) % ny) as f64,
                    (i / (nx * ny)) as f64,
                ]);
                (0..3).for_each(|k| centre_mm[k] += p[k] / n);
                votes[usize::from(dce.curve_types.voxels()[i].min(3))] += 1;
            }
            let best = (1..4).max_by_key(|&t| votes[t]).filter(|&t| votes[t] > 0);
            let curve_type = best.map(|t| match t {
                1 => CurveType::Persistent,
                2 => CurveType::Plateau,
                _ => CurveType::Washout,
            });
            let curve = phases.iter().map(|p| at.iter().map(|&i| f64::from(p.voxels()[i])).sum::<f64>() / n).collect();
            ModelLesion {
                likelihood: c.likelihood,
                volume_ml: at.len() as f64 * voxel_ml,
                centre_mm,
                curve_type,
                curve,
            }
        })
        .collect();
    Ok(Detection {
        model: name.to_owned(),
        description: package.manifest.description.clone(),
        device: device_name,
        labels,
        lesions,
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

/// The SR's groups for the detection model's lesions.
fn model_groups(
    d: &Detection,
    seg: Option<&lightbox_dicom::Written>,
    key: &str,
    algorithm: &lightbox_dicom::Algorithm,
) -> Vec<MeasurementGroup> {
    let m = crate::pipeline::measured_by(algorithm);
    d.lesions
        .iter()
        .enumerate()
        .map(|(i, l)| MeasurementGroup {
            tracking_id: format!("AI: model lesion {}", i + 1),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/model-lesion/{i}")),
            finding: Some(Code::new("52988006", "SCT", "Lesion")),
            observer: None,
            finding_site: Some(Code::new("76752008", "SCT", "Breast")),
            segment: seg.filter(|_| i < 255).map(|s| SegmentRef { seg: s.clone(), number: i as u16 + 1 }),
            measurements: vec![
                m(
                    local("LIKELIHOOD", "Lesion likelihood (model output)"),
                    f64::from(l.likelihood),
                    Code::new("1", "UCUM", "no units"),
                ),
                m(Code::new("118565006", "SCT", "Volume"), l.volume_ml, Code::new("mL", "UCUM", "milliliter")),
            ],
            qualitative: l
                .curve_type
                .map(|c| (local("CURVE", "Kinetic curve type"), curve_code(c)))
                .into_iter()
                .collect(),
        })
        .collect()
}

fn groups(
    dce: &DceAnalysis,
    seg: Option<&lightbox_dicom::Written>,
    key: &str,
    algorithm: &lightbox_dicom::Algorithm,
) -> Vec<MeasurementGroup> {
    let m = crate::pipeline::measured_by(algorithm);
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
