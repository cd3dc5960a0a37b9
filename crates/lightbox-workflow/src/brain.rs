//! The `brain-atrophy` pipeline: a new T1 of a patient becomes
//! - a SEG of its tissues (CSF, grey and white matter inside deepbet's intracranial mask), and
//! - with the atlas installed (models/atlas-dk), a label-map SEG of the regions (hippocampi,
//!   amygdalae, thalami, caudate, putamen, lateral ventricles);
//! - a TID 1500 SR with the intracranial, grey, white matter and CSF volumes, the brain
//!   parenchymal fraction and the regional volumes; and, when the store holds an earlier T1 of
//!   the same patient (see
//!   [`crate::find_prior`]), the percent brain volume change since then, its yearly rate from
//!   the study dates, the healthy rate at the patient's age and whether the patient's loss is
//!   within or beyond it, whether it is beyond the pathological cut-off, and each region's
//!   volume then and its yearly change.
//!
//! Everything is labelled AI output, research use only. Concepts with no standard code (PBVC,
//! its rate, the comparisons) use the local coding scheme [`SCHEME`], as DICOM allows for
//! "99"-prefixed schemes.

use lightbox_analysis::brain::{AtrophyReport, BrainVolumes, Comparison};
use lightbox_analysis::regions::{Atlas, Laterality, RegionVolumes, Scan, regional_change, regional_volumes};
use lightbox_dicom::{Code, Measurement, MeasurementGroup, Segment, SegmentRef};
use lightbox_store::Store;

use crate::WorkflowError;
use crate::pipeline::{Lease, PipelineOutcome, first_set, results_dir, scan_series, stage};

pub const BRAIN_ATROPHY: &str = "brain-atrophy";
/// Bumped whenever the results could change: a new version is a new analysis of old input.
pub const VERSION: &str = "2";
/// The local coding scheme of concepts without a standard code.
pub const SCHEME: &str = "99LIGHTBOX";

/// Days since 1970-01-01 of a DICOM date (`YYYYMMDD`; `YYYY.MM.DD` of old files too).
fn days(da: &str) -> Option<i64> {
    let digits: String = da.trim().chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 8 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (digits[..4].parse().ok()?, digits[4..6].parse().ok()?, digits[6..].parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil calendar (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Years from one DICOM date to another (negative when `to` is earlier).
pub fn years_between(from: &str, to: &str) -> Option<f64> {
    Some((days(to)? - days(from)?) as f64 / 365.2425)
}

/// The patient's age at the study: from the birth and study dates, else Patient's Age (AS,
/// e.g. `067Y`, `006M`).
pub fn age_years(facts: &lightbox_dicom::SeriesFacts) -> Option<f64> {
    if let Some(age) = years_between(&facts.patient_birth_date, &facts.study_date).filter(|a| *a >= 0.0) {
        return Some(age);
    }
    let age = facts.patient_age.trim();
    let unit = age.chars().last()?;
    let n: f64 = age[..age.len() - unit.len_utf8()].parse().ok()?;
    let per_year = match unit {
        'Y' => 1.0,
        'M' => 12.0,
        'W' => 52.1775,
        'D' => 365.2425,
        _ => return None,
    };
    Some(n / per_year)
}

pub(crate) fn local(value: &str, meaning: &str) -> Code {
    Code::new(value, SCHEME, meaning)
}

fn volume_ml(value: f64) -> (Code, f64, Code) {
    (Code::new("118565006", "SCT", "Volume"), value, Code::new("mL", "UCUM", "milliliter"))
}

/// The tissues as SEG segments (label values 1, 2, 3) with their SNOMED CT codes (CID 7153).
fn tissue_segments(algorithm: &lightbox_dicom::SegmentAlgorithm) -> Vec<Segment> {
    [("65216001", "Cerebrospinal fluid"), ("389081007", "Gray matter"), ("389080008", "White matter")]
        .into_iter()
        .map(|(code, meaning)| Segment {
            label: meaning.to_owned(),
            category: Code::new("85756007", "SCT", "Tissue"),
            property_type: Code::new(code, "SCT", meaning),
            algorithm: algorithm.clone(),
        })
        .collect()
}

/// What the pipeline measured, before it becomes DICOM.
struct Findings {
    volumes: BrainVolumes,
    /// With the atlas installed: now, and at the prior with the years between.
    regions: Option<RegionVolumes>,
    prior_regions: Option<(RegionVolumes, f64)>,
    atrophy: Option<AtrophyReport>,
    /// Why there is no atrophy result although there is a prior, or what weakens one.
    notes: Vec<String>,
    prior_uid: Option<String>,
    device: String,
}

impl Findings {
    /// The numbers for summaries and exports (see [`PipelineOutcome::details`]).
    fn details(&self) -> serde_json::Value {
        let v = &self.volumes;
        let mut rows = vec![
            serde_json::json!(["Intracranial volume", v.icv_ml, "mL"]),
            serde_json::json!(["Grey matter", v.grey_ml, "mL"]),
            serde_json::json!(["White matter", v.white_ml, "mL"]),
            serde_json::json!(["CSF", v.csf_ml, "mL"]),
            serde_json::json!(["Brain parenchymal fraction", v.bpf, "{ratio}"]),
        ];
        for r in self.regions.iter().flat_map(|r| &r.regions) {
            rows.push(serde_json::json!([r.name, r.volume_ml, "mL"]));
        }
        let mut details = serde_json::json!({});
        if let Some(a) = &self.atrophy {
            rows.push(serde_json::json!(["Brain volume change", a.pbvc_percent, "%"]));
            rows.push(serde_json::json!(["Brain volume change per year", a.rate_percent_per_year, "%/a"]));
            if let Some(age) = a.age_years {
                details["atrophy_plot"] =
                    serde_json::to_value(crate::plugins::AtrophyPlot::new(age, a.rate_percent_per_year))
                        .unwrap_or_default();
            }
        }
        details["findings"] = serde_json::Value::from(rows);
        details
    }

    fn summary(&self) -> String {
        let v = &self.volumes;
        let mut s = format!(
            "intracranial {:.0} mL, grey {:.0} mL, white {:.0} mL, CSF {:.0} mL, BPF {:.3}",
            v.icv_ml, v.grey_ml, v.white_ml, v.csf_ml, v.bpf
        );
        if let Some(r) = &self.regions {
            s += &format!("; {}", r.summary());
        }
        match &self.atrophy {
            Some(a) => s += &format!("; {}", a.summary()),
            None if self.prior_uid.is_none() => s += "; no prior T1 of this patient to compare with",
            None => {}
        }
        for note in &self.notes {
            s += &format!("; {note}");
        }
        s
    }
}

/// The intracranial mask behind a tissue classification (labelled voxels).
fn brain_mask(volumes: &BrainVolumes) -> Result<lightbox_core::Volume<u8>, WorkflowError> {
    let labels = &volumes.labels;
    let mask = labels.voxels().iter().map(|&l| u8::from(l > 0)).collect();
    lightbox_core::Volume::new(labels.dims(), mask, labels.patient_from_voxel)
        .map_err(|e| WorkflowError::Analysis(e.to_string()))
}

/// Measures the T1 `series_uid` (and its change since `prior_uid`), on the AI device.
fn measure(
    store: &Store,
    lease: Option<&Lease>,
    series_uid: &str,
    prior_uid: Option<&str>,
) -> Result<Findings, WorkflowError> {
    let models = crate::ai::models_dir();
    crate::ai::check_deepbet(&models)?;
    let report = scan_series(store, series_uid)?;
    let set = first_set(store, &report, series_uid)?;
    stage(lease, store, "loading")?;
    let t1 = set.load(0)?;
    let device = lightbox_ai::AiDevice::from_env()?;
    let description = device.description.clone();
    let net = lightbox_ai::deepbet::Deepbet::from_packages(&models, device)?;
    stage(lease, store, "brain volumes")?;
    let analysis = |e: lightbox_analysis::AnalysisError| WorkflowError::Analysis(format!("series {series_uid}: {e}"));
    let volumes = lightbox_analysis::brain::volumes(&net, &t1).map_err(analysis)?;
    let atlas_dir = models.join("atlas-dk");
    let atlas =
        if atlas_dir.join("atlas.nii.gz").is_file() { Some(Atlas::load(&atlas_dir).map_err(analysis)?) } else { None };
    let mut notes = Vec::new();
    if atlas.is_none() {
        notes.push(format!("no regional volumes: the atlas is not installed in {}", atlas_dir.display()));
    }
    let mask = brain_mask(&volumes)?;
    let scan = Scan { t1: &t1, brain: &mask, tissues: &volumes.labels, csf_fraction: &volumes.csf_fraction };
    let mut regions = None;
    let mut prior_regions = None;
    let mut atrophy = None;
    if let Some(prior_uid) = prior_uid {
        let facts = crate::pipeline::series_to_match(store.root(), series_uid)?.facts;
        let prior_facts = crate::pipeline::series_to_match(store.root(), prior_uid)?.facts;
        match years_between(&prior_facts.study_date, &facts.study_date) {
            Some(years) if years > 0.0 => {
                stage(lease, store, "atrophy")?;
                let prior_report = scan_series(store, prior_uid)?;
                let baseline = first_set(store, &prior_report, prior_uid)?.load(0)?;
                let age = age_years(&facts);
                if age.is_none() {
                    notes.push("no birth date or age in the images: not compared with the healthy norm".into());
                }
                if let Some(atlas) = &atlas {
                    stage(lease, store, "regions, then and now")?;
                    // One brain extraction of the baseline serves its volumes and the atrophy.
                    let before = lightbox_analysis::brain::volumes(&net, &baseline).map_err(analysis)?;
                    let before_mask = brain_mask(&before)?;
                    let mask = lightbox_core::Volume::new(
                        before_mask.dims(),
                        before_mask.voxels().iter().map(|&m| f32::from(m)).collect(),
                        before_mask.patient_from_voxel,
                    )
                    .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
                    let found = lightbox_analysis::brain::atrophy_in_mask(&baseline, &t1, &mask, years, age)
                        .map_err(analysis)?;
                    notes.extend(found.warnings.iter().cloned());
                    atrophy = Some(found);
                    let prior_scan = Scan {
                        t1: &baseline,
                        brain: &before_mask,
                        tissues: &before.labels,
                        csf_fraction: &before.csf_fraction,
                    };
                    let (then, now) = regional_change(prior_scan, scan, atlas).map_err(analysis)?;
                    regions = Some(now);
                    prior_regions = Some((then, years));
                } else {
                    let found =
                        lightbox_analysis::brain::atrophy(&net, &baseline, &t1, years, age).map_err(analysis)?;
                    notes.extend(found.warnings.iter().cloned());
                    atrophy = Some(found);
                }
            }
            _ => notes.push(format!(
                "no brain volume change: the study dates ({:?} before, {:?} now) give no positive interval",
                prior_facts.study_date, facts.study_date
            )),
        }
    }
    if regions.is_none()
        && let Some(atlas) = &atlas
    {
        stage(lease, store, "regions")?;
        regions = Some(regional_volumes(scan, atlas).map_err(analysis)?);
    }
    Ok(Findings {
        volumes,
        regions,
        prior_regions,
        atrophy,
        notes,
        prior_uid: prior_uid.map(str::to_owned),
        device: description,
    })
}

/// Runs the pipeline on a stored T1 and stores its SEG and SR (and with `send_to` queues them).
pub(crate) fn run(
    store: &mut Store,
    lease: Option<&Lease>,
    key: &str,
    series_uid: &str,
    prior_uid: Option<&str>,
    send_to: Option<&str>,
) -> Result<PipelineOutcome, WorkflowError> {
    let findings = measure(store, lease, series_uid, prior_uid)?;
    let report = scan_series(store, series_uid)?;
    let set = first_set(store, &report, series_uid)?;
    let name = format!("Lightbox {BRAIN_ATROPHY}");
    let algorithm = lightbox_dicom::Algorithm {
        name: name.clone(),
        version: VERSION.into(),
        parameters: std::iter::once(lightbox_analysis::brain::VOLUMES_METHOD.to_owned())
            .chain(findings.atrophy.as_ref().map(|_| lightbox_analysis::brain::METHOD.to_owned()))
            .chain(findings.prior_uid.iter().map(|p| format!("prior series {p}")))
            .chain(std::iter::once(format!("device: {}", findings.device)))
            .collect(),
    };
    let out = results_dir(store)?;
    stage(lease, store, "writing results")?;
    let seg_path = out.path().join("seg.dcm");
    let seg_algorithm = lightbox_dicom::SegmentAlgorithm::Automatic { name: name.clone(), version: VERSION.into() };
    let seg = lightbox_dicom::write_seg(
        set,
        0,
        &findings.volumes.labels,
        &tissue_segments(&seg_algorithm),
        &crate::pipeline::ai_seg_series(
            9911,
            "AI: brain tissues (research, not for clinical use)",
            "AI output: CSF, grey and white matter",
            &name,
            format!("{key}/seg"),
        ),
        &seg_path,
    )?;
    let regions_seg = match &findings.regions {
        Some(regions) => {
            let path = out.path().join("regions.dcm");
            let segments = regions
                .regions
                .iter()
                .map(|r| Segment {
                    label: r.name.to_owned(),
                    category: Code::new("91723000", "SCT", "Anatomical Structure"),
                    property_type: Code::new(r.code.0, "SCT", r.code.1),
                    algorithm: seg_algorithm.clone(),
                })
                .collect::<Vec<_>>();
            let written = lightbox_dicom::write_seg_as(
                set,
                0,
                lightbox_dicom::SegPixels::LabelMap(&regions.labels),
                &segments,
                &crate::pipeline::ai_seg_series(
                    9913,
                    "AI: brain regions (research, not for clinical use)",
                    &format!("AI output: regions of {}", lightbox_analysis::regions::ATLAS_NAME),
                    &name,
                    format!("{key}/regions"),
                ),
                &path,
            )?;
            Some((path, written))
        }
        None => None,
    };
    let groups = report_groups(&findings, &seg, regions_seg.as_ref().map(|r| &r.1), key, &algorithm);
    let sr_path = out.path().join("sr.dcm");
    let sr_uid = lightbox_dicom::write_sr(
        set,
        0,
        &crate::pipeline::ai_report(
            &name,
            "lightbox/device/brain-atrophy",
            Code::new("24590-2", "LN", "MRI Brain"),
            groups,
            "AI: brain volumes and atrophy (research, not for clinical use)",
            9912,
            format!("{key}/sr"),
        ),
        &sr_path,
    )?;
    stage(lease, store, "storing results")?;
    let paths: Vec<&std::path::PathBuf> =
        std::iter::once(&seg_path).chain(regions_seg.iter().map(|r| &r.0)).chain([&sr_path]).collect();
    let queued = crate::pipeline::store_results(store, &paths, send_to)?;
    let v = &findings.volumes;
    Ok(PipelineOutcome {
        job_id: 0,
        ran: true,
        seg_uid: seg.sop_uid,
        sr_uid,
        volume_mm3: (v.grey_ml + v.white_ml) * 1000.0,
        queued,
        summary: findings.summary(),
        details: findings.details(),
    })
}

/// The SR's measurement groups: one per tissue (linked to its segment), the intracranial volume
/// and BPF, and the brain volume change with its comparisons.
fn report_groups(
    findings: &Findings,
    seg: &lightbox_dicom::Written,
    regions_seg: Option<&lightbox_dicom::Written>,
    key: &str,
    algorithm: &lightbox_dicom::Algorithm,
) -> Vec<MeasurementGroup> {
    let measured = crate::pipeline::measured_by(algorithm);
    let measurement = |(concept, value, unit): (Code, f64, Code)| measured(concept, value, unit);
    let group = |id: &str, finding: Code, segment: Option<u16>, measurements: Vec<Measurement>| MeasurementGroup {
        tracking_id: format!("AI: {id}"),
        tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/{id}")),
        finding: Some(finding),
        observer: None,
        finding_site: None,
        segment: segment.map(|number| SegmentRef { seg: seg.clone(), number }),
        measurements,
        qualitative: vec![],
    };
    let v = &findings.volumes;
    let mut groups = vec![group(
        "intracranial volume",
        Code::new("1101003", "SCT", "Cranial cavity"),
        None,
        vec![
            measurement(volume_ml(v.icv_ml)),
            measurement((local("BPF", "Brain parenchymal fraction"), v.bpf, Code::new("{ratio}", "UCUM", "ratio"))),
        ],
    )];
    for (number, (ml, segment)) in [v.csf_ml, v.grey_ml, v.white_ml]
        .into_iter()
        .zip(tissue_segments(&lightbox_dicom::SegmentAlgorithm::Automatic {
            name: algorithm.name.clone(),
            version: algorithm.version.clone(),
        }))
        .enumerate()
    {
        groups.push(group(
            &segment.label.to_ascii_lowercase(),
            segment.property_type.clone(),
            Some(number as u16 + 1),
            vec![measurement(volume_ml(ml))],
        ));
    }
    if let (Some(regions), Some(regions_seg)) = (&findings.regions, regions_seg) {
        let prior = findings.prior_regions.as_ref();
        for (number, region) in regions.regions.iter().enumerate() {
            let mut measurements = vec![measurement(volume_ml(region.volume_ml))];
            if let Some((before, years)) = prior
                && let Some(then) = before.get(region.name).filter(|v| *v > 0.0)
            {
                measurements.push(measurement((
                    local("VOLUME-PRIOR", "Volume at the prior study"),
                    then,
                    Code::new("mL", "UCUM", "milliliter"),
                )));
                measurements.push(measurement((
                    local("VOLUME-RATE", "Annualized volume change"),
                    100.0 * (region.volume_ml - then) / then / years,
                    Code::new("%/a", "UCUM", "percent per year"),
                )));
            }
            let site = match region.laterality {
                Laterality::Left => Some(Code::new("7771000", "SCT", "Left")),
                Laterality::Right => Some(Code::new("24028007", "SCT", "Right")),
                Laterality::Midline => None,
            };
            groups.push(MeasurementGroup {
                tracking_id: format!("AI: {}", region.name.to_ascii_lowercase()),
                tracking_uid: lightbox_dicom::uid_from(&format!("{key}/tracking/region/{}", region.name)),
                finding: Some(Code::new(region.code.0, "SCT", region.code.1)),
                observer: None,
                finding_site: None,
                segment: Some(SegmentRef { seg: regions_seg.clone(), number: number as u16 + 1 }),
                measurements,
                qualitative: site.map(|s| (Code::new("272741003", "SCT", "Laterality"), s)).into_iter().collect(),
            });
        }
    }
    if let Some(a) = &findings.atrophy {
        let percent = Code::new("%", "UCUM", "percent");
        let per_year = Code::new("%/a", "UCUM", "percent per year");
        let mut measurements = vec![
            measurement((local("PBVC", "Percent brain volume change"), a.pbvc_percent, percent)),
            measurement((
                local("PBVC-RATE", "Annualized percent brain volume change"),
                a.rate_percent_per_year,
                per_year.clone(),
            )),
            measurement((
                local("INTERVAL", "Interval between the studies"),
                a.interval_years,
                Code::new("a", "UCUM", "year"),
            )),
        ];
        if let Some(healthy) = a.healthy_rate_percent_per_year {
            measurements.push(measurement((
                local("PBVC-HEALTHY", "Healthy annualized brain volume change for age (Hedman 2012)"),
                healthy,
                per_year,
            )));
        }
        let mut brain = group("brain volume change", Code::new("12738006", "SCT", "Brain"), None, measurements);
        if let Some(c) = a.comparison {
            brain.qualitative.push((
                local("NORM-CMP", "Brain volume loss compared with healthy people of the same age"),
                match c {
                    Comparison::WithinHealthy => local("WITHIN", "Within the healthy range"),
                    Comparison::BeyondHealthy => local("BEYOND", "Beyond the healthy range"),
                },
            ));
        }
        brain.qualitative.push((
            local(
                "CUTOFF-CMP",
                "Annualized brain volume change compared with the pathological cut-off -0.37 %/a (De Stefano 2016)",
            ),
            if a.beyond_pathological_cutoff {
                local("BEYOND", "Beyond the cut-off")
            } else {
                local("NOT-BEYOND", "Not beyond the cut-off")
            },
        ));
        groups.push(brain);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_ages_are_read_as_dicom_writes_them() {
        assert_eq!(days("19700101"), Some(0));
        assert_eq!(days("20000301"), Some(11_017));
        assert_eq!(days("2024.02.29").zip(days("20240301")).map(|(a, b)| b - a), Some(1));
        assert_eq!(days("20241301"), None);
        assert_eq!(days(""), None);
        let year = years_between("20230115", "20240115").unwrap_or_default();
        assert!((year - 1.0).abs() < 0.01, "{year}");
        assert!(years_between("20240115", "20230115").is_some_and(|y| y < 0.0));
        let facts = |birth: &str, age: &str| lightbox_dicom::SeriesFacts {
            study_date: "20240610".into(),
            patient_birth_date: birth.into(),
            patient_age: age.into(),
            ..Default::default()
        };
        let from_birth = age_years(&facts("19560610", "")).unwrap_or_default();
        assert!((from_birth - 68.0).abs() < 0.01, "{from_birth}");
        assert_eq!(age_years(&facts("", "067Y")), Some(67.0));
        assert_eq!(age_years(&facts("", "006M")), Some(0.5));
        assert_eq!(age_years(&facts("", "")), None);
        assert_eq!(age_years(&facts("", "abc")), None);
    }
}
