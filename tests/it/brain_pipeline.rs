//! Issue 9 end to end, as a site would run it: studies are pushed by dcmtk `storescu` into
//! `lightbox listen`, dispatch rules start the brain pipelines, and their SEG and SR reach a real
//! Orthanc.
//!
//! Atrophy: two T1 studies of one patient, a year apart, are pushed by dcmtk
//! `storescu` into `lightbox listen`. A dispatch rule runs `brain-atrophy` on each as it
//! settles; the follow-up finds the baseline as its prior, and its SR (brain volumes, the brain
//! volume change per year and how it compares with a healthy person of the patient's age) and
//! tissue SEG reach a real Orthanc.
//!
//! The truth is known: the follow-up is the baseline (the MNI152 2009a T1) with 1.0 % of brain
//! volume taken away by a smooth, brain-only shrinkage (`simulate_atrophy`), in another head
//! position. The patient is 68 at the follow-up: the healthy mean there is −0.57 %/yr (Hedman
//! 2012), healthy down to −0.87 %/yr, so −1.0 %/yr is beyond the healthy range and beyond the
//! pathological cut-off (−0.37 %/yr).
//!
//! Lesion change: the open MS data set's patient 1, the first FLAIR on the PACS only and the
//! second pushed to the workstation, which retrieves the first from the PACS as the prior; the
//! follow-up's SR must hold the new and enlarging lesions that the (separately validated, see
//! `lesions.rs`) subtraction baseline finds, with one SEG segment per lesion.

use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, ensure};
use lightbox_ai::{AiDevice, deepbet::Deepbet};
use lightbox_imaging::atrophy::simulate_atrophy;
use lightbox_imaging::{RigidParams, resample_into};
use lightbox_tests::listener::Listener;
use lightbox_tests::orthanc::Orthanc;
use lightbox_tests::{bin, data, run_ok, workspace_root};

const RULES: &str = r#"
[[rule]]
name = "3-D T1 of the head"
pipeline = "brain-atrophy"
modality = "MR"
description = "T1.*"
acquisition = "3D"
min_instances = 100
auto_send = true

[[rule]]
name = "FLAIR of the head"
pipeline = "ms-lesion-change"
modality = "MR"
description = ".*FLAIR.*"
auto_send = true
"#;

const MNI: &str = "nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz";

/// Writes the baseline and the follow-up (1 % brain loss) as DICOM studies of one patient.
fn two_studies(dir: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let scan = lightbox_nifti::read(&data(MNI)?)?.volume(0)?;
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let mask = deepbet.extract(&scan, 0.5, &AtomicBool::new(false), &mut |_| {})?.mask_f32();
    let [nx, ny, nz] = scan.dims();
    let centre = scan.patient_from_voxel.transform_point([nx, ny, nz].map(|n| n as f64 / 2.0));
    // Each time point in its own head position, so each is interpolated once, as a scanner's
    // images of two sessions are alike in sharpness.
    let baseline_motion = RigidParams { rotation_rad: [-0.01, 0.012, -0.008], translation_mm: [-0.6, 0.4, -0.5] };
    let baseline = resample_into(&scan, scan.dims(), scan.patient_from_voxel, &baseline_motion.to_affine(centre), 0.0)?;
    let motion = RigidParams { rotation_rad: [0.02, -0.015, 0.025], translation_mm: [1.3, -0.7, 0.9] };
    let followup = simulate_atrophy(&scan, &mask, 0.01, &motion.to_affine(centre))?;
    let patient = lightbox_core::PatientInfo { id: "LB-ATROPHY-1".into(), name: "Atrophy^Demo".into() };
    let mut out = Vec::new();
    for (name, volume, date) in [("baseline", &baseline, "20240110"), ("followup", &followup, "20250110")] {
        let folder = dir.join(name);
        lightbox_dicom::write_mr_series(
            volume,
            &lightbox_dicom::NewSeries {
                patient: patient.clone(),
                study_uid: None,
                study_date: date.into(),
                patient_birth_date: "19561020".into(),
                study_description: "MRI brain".into(),
                series_description: "T1 MPRAGE sag".into(),
                series_number: 3,
                derivation: format!("{MNI}, synthetic {name} for the atrophy test"),
                uid_seed: None,
                frame_of_reference_uid: None,
            },
            &folder,
        )?;
        out.push(folder);
    }
    let followup = out.pop().context("no follow-up")?;
    Ok((out.pop().context("no baseline")?, followup))
}

/// `lightbox listen` with the rules above and the project's models, sending to `orthanc`.
fn listen(orthanc: &Orthanc, dir: &std::path::Path) -> anyhow::Result<Listener> {
    Listener::start(dir, RULES, orthanc, &workspace_root().join("models"), 1000)
}

/// Runs the shipped pdf-summary exporter on job `job` of the store in `dir`; the PDF's path.
fn export_pdf(dir: &std::path::Path, job: i64) -> anyhow::Result<std::path::PathBuf> {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(workspace_root().join("plugins/pdf-summary"), plugins.join("pdf-summary"))?;
    let lightbox_dir = bin("lightbox")?.parent().context("no bin dir")?.to_owned();
    let path = format!("{}:{}", lightbox_dir.display(), std::env::var("PATH").unwrap_or_default());
    let export = dir.join("exported");
    let out = run_ok(
        Command::new(bin("lightbox")?)
            .args(["export-results", "--job", &job.to_string(), "--plugins"])
            .arg(&plugins)
            .arg("--store")
            .arg(dir.join("store"))
            .env("LIGHTBOX_EXPORT_DIR", &export)
            .env("PATH", &path),
    )?;
    ensure!(out.contains("plugin pdf-summary: ok"), "{out}");
    let mut pdfs = Vec::new();
    for study in std::fs::read_dir(&export)? {
        for job in std::fs::read_dir(study?.path())? {
            for f in std::fs::read_dir(job?.path())? {
                pdfs.push(f?.path());
            }
        }
    }
    pdfs.into_iter().find(|p| p.ends_with("summary.pdf")).context("no summary.pdf")
}

/// The instances of `modality` now in Orthanc, saved in `dir`.
fn fetch(orthanc: &Orthanc, dir: &std::path::Path, modality: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for series in orthanc.get_json("/series?expand")?.as_array().context("no series list")? {
        if series["MainDicomTags"]["Modality"].as_str() != Some(modality) {
            continue;
        }
        for id in series["Instances"].as_array().context("no instances")?.iter().filter_map(|i| i.as_str()) {
            let (status, bytes) = orthanc.request("GET", &format!("/instances/{id}/file"), None)?;
            ensure!(status == 200, "GET instance {id}: {status}");
            let path = dir.join(format!("{id}.dcm"));
            std::fs::write(&path, bytes)?;
            files.push(path);
        }
    }
    Ok(files)
}

/// The SRs now in Orthanc, read back by our own reader.
fn reports_in(orthanc: &Orthanc, dir: &std::path::Path) -> anyhow::Result<Vec<lightbox_dicom::SrReading>> {
    fetch(orthanc, dir, "SR")?.iter().map(|p| Ok(lightbox_dicom::read_sr(p)?)).collect()
}

#[test]
fn two_t1s_pushed_give_brain_volume_change_against_the_healthy_norm_in_the_pacs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (baseline, followup) = two_studies(dir.path())?;
    let orthanc = Orthanc::start()?;
    let mut listener = listen(&orthanc, dir.path())?;

    listener.push(&baseline)?;
    let first = listener.lines.wait_for("pipeline brain-atrophy on", Duration::from_secs(300))?;
    ensure!(first.contains("no prior T1 of this patient") && first.contains("3 queued"), "{first}");
    listener.lines.wait_for("outbox: sent 3", Duration::from_secs(60))?;

    listener.push(&followup)?;
    let second = listener.lines.wait_for("pipeline brain-atrophy on", Duration::from_secs(300))?;
    eprintln!("{second}");
    ensure!(second.contains("brain volume change") && second.contains("3 queued"), "{second}");
    listener.lines.wait_for("outbox: sent 3", Duration::from_secs(60))?;

    // In the PACS: both studies' SEGs (tissues, regions) and SR; the follow-up's SR holds the
    // change and its verdict.
    let modalities: Vec<String> = orthanc
        .get_json("/series?expand")?
        .as_array()
        .context("no series list")?
        .iter()
        .filter_map(|s| s["MainDicomTags"]["Modality"].as_str().map(str::to_owned))
        .collect();
    ensure!(modalities.iter().filter(|m| *m == "SEG").count() == 4, "{modalities:?}");
    let reports = reports_in(&orthanc, dir.path())?;
    ensure!(reports.len() == 2, "{} SRs", reports.len());
    let change = reports
        .iter()
        .flat_map(|r| &r.groups)
        .find(|g| g.tracking_id == "AI: brain volume change")
        .context("no SR with the brain volume change")?;
    let value = |name: &str| {
        change.measurements.iter().find(|m| m.0 == name).map(|m| m.1).with_context(|| format!("no {name}"))
    };
    let (pbvc, rate, interval) = (
        value("Percent brain volume change")?,
        value("Annualized percent brain volume change")?,
        value("Interval between the studies")?,
    );
    eprintln!("PBVC {pbvc:+.3} % (truth -1.00 %), {rate:+.3} %/yr over {interval:.3} years");
    ensure!((pbvc + 1.0).abs() <= 0.15, "PBVC {pbvc} is not within 0.15 of the truth, -1.0 %");
    ensure!((interval - 1.0).abs() < 0.01 && (rate - pbvc / interval).abs() < 1e-6, "{interval} {rate}");
    let healthy = value("Healthy annualized brain volume change for age (Hedman 2012)")?;
    ensure!((healthy - lightbox_analysis::brain::healthy_rate_percent_per_year(68.2)).abs() < 0.01, "{healthy}");
    let verdicts: Vec<&str> = change.qualitative.iter().map(|(_, v)| v.as_str()).collect();
    ensure!(verdicts == ["Beyond the healthy range", "Beyond the cut-off"], "{verdicts:?}");
    ensure!(change.measurements.iter().all(|m| m.3.as_deref() == Some("Lightbox brain-atrophy")));

    // Regions: each hippocampus then and now, and its yearly change; the loss was uniform, 1 %.
    for side in ["left", "right"] {
        let id = format!("AI: {side} hippocampus");
        let group = reports.iter().flat_map(|r| &r.groups).find(|g| g.tracking_id == id && g.measurements.len() == 3);
        let group = group.with_context(|| format!("no {id} with its change in the follow-up's SR"))?;
        let rate = group.measurements.iter().find(|m| m.0 == "Annualized volume change").map_or(f64::NAN, |m| m.1);
        eprintln!("{id}: {:?}", group.measurements);
        ensure!((-4.0..2.0).contains(&rate), "{id}: {rate} %/yr where the whole brain lost 1 %");
        ensure!(group.qualitative.iter().any(|(c, v)| c == "Laterality" && v.eq_ignore_ascii_case(side)), "{group:?}");
    }

    // The PDF summary of the follow-up: its findings and the plot against the healthy band.
    let pdf = export_pdf(dir.path(), 2)?;
    let text = run_ok(Command::new("pdftotext").args(["-layout"]).arg(&pdf).arg("-"))?;
    for needle in [
        "AI OUTPUT",
        "Intracranial volume",
        "Left hippocampus",
        "Brain volume change per year against age",
        &format!("Patient: {rate:+.2} %/yr at 68"),
        "cut-off -0.37 %/yr",
    ] {
        ensure!(text.contains(needle), "{needle:?} missing from the PDF:\n{text}");
    }
    let png = crate::screenshot_dir()?.join("brain-atrophy-summary");
    run_ok(Command::new("pdftoppm").args(["-png", "-r", "70", "-singlefile"]).arg(&pdf).arg(&png))?;
    eprintln!("the PDF summary, as a picture: {}.png", png.display());

    // Both reports carry the tissue volumes, each linked to its SEG segment.
    for report in &reports {
        let names: Vec<&str> = report.groups.iter().map(|g| g.tracking_id.as_str()).collect();
        ensure!(
            names.starts_with(&["AI: intracranial volume", "AI: cerebrospinal fluid", "AI: gray matter"]),
            "{names:?}"
        );
        let grey = report.groups.iter().find(|g| g.tracking_id == "AI: gray matter").context("no grey matter")?;
        ensure!(grey.segment.as_ref().is_some_and(|s| s.1 == 2), "{grey:?}");
        let ml = |id: &str| {
            let group = report.groups.iter().find(|g| g.tracking_id == id).with_context(|| format!("no {id}"))?;
            group.measurements.first().map(|m| m.1).with_context(|| format!("{id} has no value"))
        };
        let icv = ml("AI: intracranial volume")?;
        let tissues = ml("AI: cerebrospinal fluid")? + ml("AI: gray matter")? + ml("AI: white matter")?;
        // The MNI152 head is larger than most (about 1.9 L inside the skull).
        ensure!((1500.0..2300.0).contains(&icv) && (tissues - icv).abs() < 0.01 * icv, "ICV {icv}, tissues {tissues}");
    }
    Ok(())
}

#[test]
fn two_flairs_pushed_give_new_and_enlarging_lesions_in_the_pacs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let patient = lightbox_core::PatientInfo { id: "LB-OPENMS-01".into(), name: "OpenMS^Patient01".into() };
    let mut folders = Vec::new();
    for (study, date) in [("study1", "20150302"), ("study2", "20160307")] {
        let folder = dir.path().join(study);
        let nifti = data(&format!("open_ms_longitudinal/raw/patient01/{study}_FLAIR.nii.gz"))?;
        lightbox_dicom::write_mr_series(
            &lightbox_nifti::read(&nifti)?.volume(0)?,
            &lightbox_dicom::NewSeries {
                patient: patient.clone(),
                study_uid: None,
                study_date: date.into(),
                patient_birth_date: String::new(),
                study_description: "MRI brain MS follow-up".into(),
                series_description: "AX T2 FLAIR".into(),
                series_number: 4,
                derivation: format!("open_ms_longitudinal patient01 {study}_FLAIR"),
                uid_seed: None,
                frame_of_reference_uid: None,
            },
            &folder,
        )?;
        folders.push(folder);
    }
    let orthanc = Orthanc::start()?;
    let mut listener = listen(&orthanc, dir.path())?;

    // The first FLAIR is on the PACS only: the listener finds it there as the prior.
    for file in std::fs::read_dir(&folders[0])? {
        orthanc.upload(&file?.path())?;
    }
    listener.push(&folders[1])?;
    let retrieved = listener.lines.wait_for("retrieved from the PACS", Duration::from_secs(120))?;
    eprintln!("{retrieved}");
    let second = listener.lines.wait_for("new lesion(s)", Duration::from_secs(300))?;
    eprintln!("{second}");
    ensure!(second.contains("new lesion(s)") && second.contains("2 queued"), "{second}");
    listener.lines.wait_for("outbox: sent 2", Duration::from_secs(60))?;

    let reports = reports_in(&orthanc, dir.path())?;
    ensure!(reports.len() == 1, "{} SRs: the first FLAIR has nothing to compare with", reports.len());
    let groups = &reports[0].groups;
    let summary = groups.iter().find(|g| g.tracking_id == "AI: lesion change").context("no summary group")?;
    let value = |name: &str| {
        summary.measurements.iter().find(|m| m.0 == name).map(|m| m.1).with_context(|| format!("no {name}"))
    };
    let (new, enlarging) = (value("Number of new lesions")?, value("Number of enlarging lesions")?);
    let total_ml = value("Volume of new lesions")? + value("Volume of enlarging lesions")?;
    let lesions: Vec<_> = groups.iter().filter(|g| g.tracking_id != "AI: lesion change").collect();
    ensure!(lesions.len() as f64 == new + enlarging && !lesions.is_empty(), "{new} + {enlarging} vs {lesions:?}");
    let listed_ml: f64 = lesions.iter().filter_map(|g| g.measurements.first()).map(|m| m.1).sum();
    ensure!((listed_ml - total_ml).abs() < 1e-6, "{listed_ml} vs {total_ml}");
    // The data set's lesion change is 3.5 mL; the baseline finds most of it (and some noise).
    ensure!((1.5..7.0).contains(&total_ml), "{total_ml} mL of new and enlarging lesions");
    // Largest first, each its own segment of the SEG that Orthanc holds.
    let volumes: Vec<f64> = lesions.iter().filter_map(|g| g.measurements.first()).map(|m| m.1).collect();
    ensure!(volumes.windows(2).all(|w| w[0] >= w[1]), "{volumes:?}");
    let segs = fetch(&orthanc, dir.path(), "SEG")?;
    ensure!(segs.len() == 1, "{} SEGs", segs.len());
    let seg = lightbox_dicom::read_seg(&segs[0])?;
    ensure!(seg.segments.len() == lesions.len(), "{} segments for {} lesions", seg.segments.len(), lesions.len());
    for (number, group) in lesions.iter().enumerate() {
        let (uid, segment) = group.segment.clone().context("a lesion without its segment")?;
        ensure!(uid == seg.sop_uid && usize::from(segment) == number + 1, "{group:?}");
        let label = &seg.segments[number].label;
        ensure!(group.tracking_id.eq_ignore_ascii_case(&format!("AI: {label}")), "{label} vs {}", group.tracking_id);
        ensure!(group.qualitative.iter().any(|(c, _)| c == "Change since the prior study"), "{group:?}");
    }
    Ok(())
}
