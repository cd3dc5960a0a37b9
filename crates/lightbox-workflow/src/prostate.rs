//! The `prostate-bpmri` pipeline: a prostate bpMRI study (its axial T2W, ADC and DWI found from
//! their attributes, see `lightbox_analysis::bpmri`) through a lesion-detection model package
//! the site installed (`lightbox models import <nnU-Net v2 folder> --name NAME`, named by the
//! rule's `model`):
//! 1. ADC and DWI are registered rigidly onto the T2W (NMI) and resampled onto its grid; a high-b
//!    image (b = 1400) is computed when the DWI's highest b is lower;
//! 2. the model's channels are filled by their names in its `model.toml` (T2…, ADC, HBV/DWI/high
//!    b) and it runs as nnU-Net does; its lesion class's probability goes through PI-CAI's
//!    dynamic lesion extraction;
//! 3. each lesion's likelihood, volume, longest diameter and mean ADC, and with a gland class
//!    the gland's volume, become a SEG (gland, lesions) and a TID 1500 SR;
//! 4. with a gland/zone model (the rule's `zone_model`, a second package whose labels name
//!    zones: `lightbox_analysis::prostate::Zone`), the gland and its zones come from it, and
//!    each lesion gets its zone and a coarse sector (side, base/mid/apex, anterior/posterior);
//!    when the rule names the lesion model as its zone model too, it runs once and the argmax of
//!    its probabilities gives the zones.
//!
//! The likelihoods are the model's; no PI-RADS category is given. AI output, research use only.

use std::sync::atomic::AtomicBool;

use lightbox_analysis::bpmri::{HIGH_B, SeriesSummary, choose_bpmri, synthesize_high_b};
use lightbox_analysis::prostate::Zone;
use lightbox_core::Volume;
use lightbox_dicom::{Code, MeasurementGroup, Segment, SegmentRef};
use lightbox_store::Store;

use crate::WorkflowError;
use crate::brain::local;
use crate::pipeline::{Lease, PipelineOutcome, results_dir, scan_series, stage};

pub const PROSTATE_BPMRI: &str = "prostate-bpmri";
/// Bumped whenever the results could change.
pub const VERSION: &str = "1";

/// Every MR display set of the study of `series_uid`, as the choice sees it.
fn study_candidates(store: &Store, series_uid: &str) -> Result<Vec<SeriesSummary>, WorkflowError> {
    let files = store.series_files(series_uid)?;
    let first = files
        .first()
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: series_uid.to_owned(), folder: store.root().to_owned() })?;
    let record = lightbox_dicom::read_instance(first)?;
    let rows = store.series_of_study(record.study_uid.as_str())?.unwrap_or_default();
    let mut out = Vec::new();
    for (uid, modality, description, _) in rows {
        if modality != "MR" {
            continue;
        }
        let report = scan_series(store, &uid)?;
        let Some(series) = report.find_series(&uid) else { continue };
        let files = store.series_files(&uid)?;
        let Some(file) = files.first() else { continue };
        let facts = lightbox_dicom::series_facts(file)?;
        for (index, set) in report.display_sets(series).iter().enumerate() {
            // A DWI series' display sets differ by b-value; another series' by other things.
            let sequence =
                if set.b_value().is_some_and(|b| b > 0.0) { "DWI".to_owned() } else { facts.sequence.clone() };
            out.push(SeriesSummary {
                series_uid: uid.clone(),
                display_set: index,
                sequence,
                plane: facts.plane.clone(),
                b_value: set.b_value(),
                slices: set.slices as usize,
                description: description.clone(),
            });
        }
    }
    Ok(out)
}

fn load(store: &Store, s: &SeriesSummary) -> Result<Volume<f32>, WorkflowError> {
    let report = scan_series(store, &s.series_uid)?;
    let series = report
        .find_series(&s.series_uid)
        .ok_or_else(|| WorkflowError::UnknownSeries { uid: s.series_uid.clone(), folder: store.root().to_owned() })?;
    let set = report.display_sets(series).get(s.display_set).ok_or_else(|| {
        WorkflowError::Analysis(format!("series {} has no display set {}", s.series_uid, s.display_set))
    })?;
    Ok(set.load(0)?)
}

/// The likeliest class of each voxel; the first of equals, as `argmax` takes it (so that a
/// model's labels and its zones agree with what `NnUnet::predict` would give).
fn likeliest_classes(probabilities: &[Volume<f32>]) -> Vec<usize> {
    (0..probabilities.first().map_or(0, |p| p.voxels().len()))
        .map(|at| {
            probabilities.iter().enumerate().skip(1).fold(0, |best, (class, p)| {
                if p.voxels()[at] > probabilities[best].voxels()[at] { class } else { best }
            })
        })
        .collect()
}

/// Runs the pipeline on the study of `series_uid` with the model package `model`.
pub(crate) fn run(
    store: &mut Store,
    lease: Option<&Lease>,
    key: &str,
    series_uid: &str,
    model: &str,
    zone_model: Option<&str>,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let bad = |what: String| WorkflowError::Analysis(format!("prostate bpMRI of series {series_uid}: {what}"));
    if model.is_empty() {
        return Err(bad("the rule names no model (model = \"NAME\", a package in the models folder)".into()));
    }
    let models = crate::ai::models_dir();
    let package = lightbox_ai::ModelPackage::open(&models.join(model))?;
    stage(lease, store, "choosing the series")?;
    // A study arrives series by series: one that is not here yet is waited for, not a failure.
    let study = crate::pipeline::study_of(store, series_uid)?;
    let not_yet = |missing: String| WorkflowError::Incomplete { input: format!("study {study}"), missing };
    let choice = choose_bpmri(&study_candidates(store, series_uid)?).map_err(|e| match e {
        lightbox_analysis::AnalysisError::Missing(missing) => not_yet(missing),
        e => bad(e.to_string()),
    })?;
    stage(lease, store, "loading and registering")?;
    let t2w = load(store, &choice.t2w)?;
    let adc = load(store, &choice.adc)?;
    let dwi = choice.dwi.as_ref().map(|d| load(store, d)).transpose()?;
    // Both onto the T2W first (the DWI moves with the ADC it was acquired with), so that a
    // computed high b combines the two voxel by voxel on one grid.
    let (adc_on_t2w, dwi_on_t2w) = lightbox_analysis::bpmri::align_to_t2w(&t2w, &adc, dwi.as_ref())
        .map_err(|e| bad(format!("registering the ADC and DWI onto the T2W: {e}")))?;
    let high_b_on_t2w = match (dwi_on_t2w, &choice.dwi) {
        (Some(d), Some(s)) if choice.synthesize_high_b => {
            Some(synthesize_high_b(&d, s.b_value.unwrap_or(0.0), &adc_on_t2w, HIGH_B).map_err(|e| bad(e.to_string()))?)
        }
        (d, _) => d,
    };
    let adc_unit = lightbox_analysis::bpmri::adc_unit_mm2_s(&adc).map_err(|e| bad(e.to_string()))?;
    // A model's channels by their names.
    let channels_of = |package: &lightbox_ai::ModelPackage| -> Result<Vec<Volume<f32>>, WorkflowError> {
        let mut channels = Vec::new();
        for name in &package.manifest.input.sequences {
            let n = name.to_ascii_uppercase();
            let volume = if n.contains("ADC") {
                adc_on_t2w.clone()
            } else if n.starts_with("T2") {
                t2w.clone()
            } else if n.contains("HBV") || n.contains("DWI") || n.contains("HIGH") || n.starts_with('B') {
                high_b_on_t2w.clone().ok_or_else(|| {
                    not_yet(format!("no DWI in the study (model {} wants {name:?})", package.manifest.name))
                })?
            } else {
                return Err(bad(format!(
                    "model {}'s channel {name:?} is not one bpMRI gives (T2W, ADC, high b)",
                    package.manifest.name
                )));
            };
            channels.push(volume);
        }
        Ok(channels)
    };
    let channels = channels_of(&package)?;
    stage(lease, store, "running the model")?;
    let device = lightbox_ai::AiDevice::from_env()?.with_env_precision()?;
    let device_name = device.description.clone();
    let net = lightbox_ai::nnunet::NnUnet::from_package(&models.join(model), device.clone())?;
    let probabilities = net.predict_probabilities(&channels, &AtomicBool::new(false), &mut |_| {})?;
    drop(net);
    // The likeliest class of each voxel, once, for the gland's volume and its segment.
    let likeliest = likeliest_classes(&probabilities);
    // The gland/zone model: each voxel's zone (none outside the gland).
    let zones: Option<Vec<Option<Zone>>> = match zone_model {
        Some(name) => {
            let zone_package =
                if name == model { package.clone() } else { lightbox_ai::ModelPackage::open(&models.join(name))? };
            let by_class: Vec<Option<Zone>> = {
                let mut classes: Vec<(usize, Option<Zone>)> = zone_package
                    .manifest
                    .labels
                    .iter()
                    .filter_map(|(i, n)| i.parse::<usize>().ok().map(|i| (i, Zone::from_label(n))))
                    .collect();
                classes.sort_by_key(|c| c.0);
                classes.into_iter().map(|c| c.1).collect()
            };
            if by_class.iter().all(Option::is_none) {
                return Err(bad(format!("the gland/zone model {name} has no label that names a zone or the gland")));
            }
            let zone_of = |class: usize| by_class.get(class).copied().flatten();
            if name == model {
                // The lesion model names the zones too: its labels are the argmax of the
                // probabilities it just gave (as `NnUnet::predict` takes it), so it runs once.
                Some(likeliest.iter().map(|&c| zone_of(c)).collect())
            } else {
                stage(lease, store, "running the gland/zone model")?;
                let zone_net = lightbox_ai::nnunet::NnUnet::from_package(&models.join(name), device.clone())?;
                let labels = zone_net.predict(&channels_of(&zone_package)?, &AtomicBool::new(false), &mut |_| {})?;
                Some(labels.voxels().iter().map(|&l| zone_of(usize::from(l))).collect())
            }
        }
        None => None,
    };
    let label_of = |wanted: &str| {
        package
            .manifest
            .labels
            .iter()
            .find(|(_, n)| n.to_ascii_lowercase().contains(wanted))
            .and_then(|(i, _)| i.parse::<usize>().ok())
    };
    let lesion_class = label_of("lesion")
        .or_else(|| label_of("cancer"))
        .or_else(|| label_of("tumo"))
        .unwrap_or(probabilities.len().saturating_sub(1));
    let gland_class = label_of("gland").or_else(|| label_of("prostate"));
    // The gland holds its lesions: gland or lesion is gland. A zone model decides alone.
    let in_gland = |at: usize| match &zones {
        Some(z) => z[at].is_some(),
        None => gland_class.is_some_and(|g| likeliest[at] == g || likeliest[at] == lesion_class),
    };
    let has_gland = zones.is_some() || gland_class.is_some();
    let lesion_map = probabilities.get(lesion_class).ok_or_else(|| bad("no lesion class in the model".into()))?;
    let [nx, ny, nz] = t2w.dims();
    let (lesion_labels, found) = lightbox_analysis::prostate::extract_lesions(
        lesion_map.voxels(),
        [nz, ny, nx],
        &lightbox_analysis::prostate::ExtractionOptions::default(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let voxel_ml = t2w.spacing_mm().iter().product::<f64>() / 1000.0;
    let gland_ml = has_gland.then(|| (0..likeliest.len()).filter(|&at| in_gland(at)).count() as f64 * voxel_ml);
    let position = |i: usize| {
        t2w.patient_from_voxel.transform_point([(i % nx) as f64, ((i / nx) % ny) as f64, (i / (nx * ny)) as f64])
    };
    struct Lesion {
        likelihood: f32,
        volume_ml: f64,
        diameter_mm: f64,
        mean_adc: f64,
        centre_mm: [f64; 3],
        site: Option<lightbox_analysis::prostate::Site>,
    }
    let lesions: Vec<Lesion> = found
        .iter()
        .map(|c| {
            let at: Vec<usize> = (0..lesion_labels.len()).filter(|&i| lesion_labels[i] == c.index).collect();
            let points: Vec<[f64; 3]> = at.iter().map(|&i| position(i)).collect();
            let n = points.len().max(1) as f64;
            let centre_mm = [0, 1, 2].map(|k| points.iter().map(|p| p[k]).sum::<f64>() / n);
            let step = (points.len() / 1500).max(1);
            let sample: Vec<&[f64; 3]> = points.iter().step_by(step).collect();
            let mut diameter_mm: f64 = 0.0;
            for (i, a) in sample.iter().enumerate() {
                for b in &sample[i + 1..] {
                    diameter_mm = diameter_mm.max((0..3).map(|k| (a[k] - b[k]).powi(2)).sum::<f64>().sqrt());
                }
            }
            // In µm²/s whatever the map's unit; voxels outside the ADC's field of view left out.
            let adc_values: Vec<f64> =
                at.iter().map(|&i| f64::from(adc_on_t2w.voxels()[i])).filter(|v| *v > 0.0).collect();
            let mean_adc = adc_values.iter().sum::<f64>() / adc_values.len().max(1) as f64 * adc_unit / 1e-6;
            let site = zones.as_ref().and_then(|z| lightbox_analysis::prostate::lesion_site(&at, z, &position));
            Lesion {
                likelihood: c.likelihood,
                volume_ml: at.len() as f64 * voxel_ml,
                diameter_mm,
                mean_adc,
                centre_mm,
                site,
            }
        })
        .collect();

    let name = format!("Lightbox {PROSTATE_BPMRI}");
    let report = scan_series(store, &choice.t2w.series_uid)?;
    let t2_series = report.find_series(&choice.t2w.series_uid).ok_or_else(|| bad("the T2W left the store".into()))?;
    let set =
        report.display_sets(t2_series).get(choice.t2w.display_set).ok_or_else(|| bad("no T2W display set".into()))?;
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
    let seg_algorithm =
        lightbox_dicom::SegmentAlgorithm::Automatic { name: format!("{name} ({model})"), version: VERSION.into() };
    let mut segments = Vec::new();
    let mut labels = vec![0u8; lesion_labels.len()];
    if let Some(z) = &zones {
        // One segment per zone the model found, in a fixed order.
        for zone in [Zone::Peripheral, Zone::Transition, Zone::Central, Zone::AnteriorStroma, Zone::Gland] {
            if !z.contains(&Some(zone)) {
                continue;
            }
            segments.push(Segment {
                label: zone.meaning().into(),
                category: Code::new("91723000", "SCT", "Anatomical Structure"),
                property_type: local(&format!("ZONE-{}", zone.abbreviation().to_ascii_uppercase()), zone.meaning()),
                algorithm: lightbox_dicom::SegmentAlgorithm::Automatic {
                    name: format!("{name} ({})", zone_model.unwrap_or_default()),
                    version: VERSION.into(),
                },
            });
            let number = segments.len() as u8;
            for (at, l) in labels.iter_mut().enumerate() {
                if z[at] == Some(zone) {
                    *l = number;
                }
            }
        }
    } else if gland_class.is_some() {
        segments.push(Segment {
            label: "Prostate gland".into(),
            category: Code::new("91723000", "SCT", "Anatomical Structure"),
            property_type: Code::new("41216001", "SCT", "Prostate"),
            algorithm: seg_algorithm.clone(),
        });
        for (at, l) in labels.iter_mut().enumerate() {
            if in_gland(at) {
                *l = 1;
            }
        }
    }
    let lesion_first = segments.len() as u8;
    // 8-bit labels: at most 254 lesions as segments (extraction keeps 5 by default).
    for (i, c) in found.iter().enumerate().take(usize::from(u8::MAX - lesion_first)) {
        segments.push(Segment {
            label: format!("Lesion {} (likelihood {:.2})", i + 1, c.likelihood),
            category: Code::new("49755003", "SCT", "Morphologically Abnormal Structure"),
            property_type: Code::new("52988006", "SCT", "Lesion"),
            algorithm: seg_algorithm.clone(),
        });
        for (at, l) in lesion_labels.iter().enumerate() {
            if *l == c.index {
                labels[at] = lesion_first + i as u8 + 1;
            }
        }
    }
    let seg = if segments.is_empty() || labels.iter().all(|&l| l == 0) {
        None
    } else {
        let path = out.path().join("seg.dcm");
        let labels = Volume::new(t2w.dims(), labels, t2w.patient_from_voxel).map_err(|e| bad(e.to_string()))?;
        let written = lightbox_dicom::write_seg(
            set,
            0,
            &labels,
            &segments,
            &crate::pipeline::ai_seg_series(
                9941,
                "AI: prostate gland and lesions (research, not for clinical use)",
                &format!("AI output of model {model}"),
                &name,
                format!("{key}/seg"),
            ),
            &path,
        )?;
        Some((path, written))
    };
    let algorithm = lightbox_dicom::Algorithm {
        name: name.clone(),
        version: VERSION.into(),
        parameters: std::iter::once(format!("model {model} ({})", package.manifest.description))
            .chain(choice.reasons.iter().cloned())
            .chain([format!("device: {device_name}")])
            .collect(),
    };
    let m = crate::pipeline::measured_by(&algorithm);
    let mut groups = Vec::new();
    if let Some(ml) = gland_ml {
        groups.push(MeasurementGroup {
            tracking_id: "AI: prostate gland".into(),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/gland")),
            finding: Some(Code::new("41216001", "SCT", "Prostate")),
            observer: None,
            finding_site: None,
            // With zones, the gland is several segments.
            segment: seg.as_ref().filter(|_| zones.is_none()).map(|s| SegmentRef { seg: s.1.clone(), number: 1 }),
            measurements: vec![m(Code::new("118565006", "SCT", "Volume"), ml, Code::new("mL", "UCUM", "milliliter"))],
            qualitative: vec![],
        });
    }
    for (i, l) in lesions.iter().enumerate() {
        groups.push(MeasurementGroup {
            tracking_id: format!("AI: lesion {}", i + 1),
            tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/lesion/{i}")),
            finding: Some(Code::new("52988006", "SCT", "Lesion")),
            observer: None,
            finding_site: Some(Code::new("41216001", "SCT", "Prostate")),
            segment: seg
                .as_ref()
                .map(|s| SegmentRef { seg: s.1.clone(), number: u16::from(lesion_first) + i as u16 + 1 }),
            measurements: vec![
                m(
                    local("LIKELIHOOD", "Lesion likelihood (model output)"),
                    f64::from(l.likelihood),
                    Code::new("1", "UCUM", "no units"),
                ),
                m(Code::new("118565006", "SCT", "Volume"), l.volume_ml, Code::new("mL", "UCUM", "milliliter")),
                m(Code::new("103339001", "SCT", "Long Axis"), l.diameter_mm, Code::new("mm", "UCUM", "millimeter")),
                m(
                    local("ADC-MEAN", "Mean apparent diffusion coefficient"),
                    l.mean_adc,
                    Code::new("um2/s", "UCUM", "square micrometer per second"),
                ),
            ],
            qualitative: l
                .site
                .iter()
                .flat_map(|s| {
                    let zone = s.zone.map_or_else(
                        || local("OUTSIDE-GLAND", "Outside the gland"),
                        |z| local(&format!("ZONE-{}", z.abbreviation().to_ascii_uppercase()), z.meaning()),
                    );
                    let sector = format!("{} {} {}", s.side, s.level, s.half);
                    [
                        (local("ZONE", "Prostate zone"), zone),
                        (
                            local("SECTOR", "Prostate sector (side, level, anterior or posterior)"),
                            local(&sector.to_ascii_uppercase().replace(' ', "-"), &sector),
                        ),
                    ]
                })
                .collect(),
        });
    }
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &crate::pipeline::ai_report(
            &name,
            "lightbox/device/prostate-bpmri",
            Code::new("46347-6", "LN", "MR Prostate"),
            groups,
            "AI: prostate bpMRI lesions (research, not for clinical use)",
            9942,
            format!("{key}/sr"),
        ),
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let paths: Vec<&std::path::PathBuf> = seg.iter().map(|s| &s.0).chain([&sr_path]).collect();
    let queued = crate::pipeline::store_results(store, &paths, send_to)?;
    let summary = format!(
        "model {model}: {} lesion(s){}{}{}; T2W {}, ADC {}{}",
        lesions.len(),
        lesions.first().map_or_else(String::new, |l| {
            let site = l.site.as_ref().map_or_else(String::new, |s| format!(" ({})", s.describe()));
            format!(", the likeliest {:.2}{site}", l.likelihood)
        }),
        gland_ml.map_or_else(String::new, |g| format!(", gland {g:.1} mL")),
        zone_model.map_or_else(String::new, |z| format!(", zones by {z}")),
        choice.t2w.series_uid,
        choice.adc.series_uid,
        choice.dwi.as_ref().map_or_else(|| ", no DWI".into(), |d| format!(", DWI b = {:.0}", d.b_value.unwrap_or(0.0))),
    );
    Ok(PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: seg.map(|s| s.1.sop_uid).unwrap_or_default(),
        sr_uid,
        volume_mm3: 1000.0 * lesions.iter().map(|l| l.volume_ml).sum::<f64>(),
        queued,
        summary,
        details: serde_json::json!({
            "gland_ml": gland_ml,
            "findings": lesions.iter().enumerate().map(|(i, l)| serde_json::json!([format!("Lesion {} likelihood", i + 1), l.likelihood, "1"])).collect::<Vec<_>>(),
            "lesions": lesions.iter().enumerate().map(|(i, l)| serde_json::json!({
                "label": match &l.site {
                    Some(s) => format!("Lesion {} (likelihood {:.2}, {})", i + 1, l.likelihood, s.describe()),
                    None => format!("Lesion {} (likelihood {:.2})", i + 1, l.likelihood),
                },
                "centre_mm": l.centre_mm,
                "volume_ml": l.volume_ml,
            })).collect::<Vec<_>>(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_likeliest_class_is_the_first_of_equals_as_argmax_takes_it() -> anyhow::Result<()> {
        let grid = lightbox_core::Affine3::IDENTITY;
        let class = |values: [f32; 4]| Volume::new([4, 1, 1], values.to_vec(), grid);
        let probabilities =
            [class([0.5, 0.2, 0.4, 0.0])?, class([0.3, 0.2, 0.4, f32::NAN])?, class([0.2, 0.6, 0.2, 1.0])?];
        // A tie (the third voxel) goes to the lower class, as `argmax` (PyTorch's and burn's)
        // gives it; a NaN never wins.
        assert_eq!(likeliest_classes(&probabilities), [0, 2, 0, 2]);
        assert!(likeliest_classes(&[]).is_empty());
        Ok(())
    }
}
