//! Issue 10, breast DCE-MRI: the synthetic DCE series (`lightbox_tests::dce`: three lesions of
//! known curve type, one phase with the patient moved) analysed as the product does it.
//! - Motion correction finds the known shift of the last phase (within 0.5 mm at the middle of
//!   the volume).
//! - Contrast arrival is found between the pre-contrast phase and the first post-contrast one.
//! - Exactly the three lesions are candidates, each with its known curve type, its volume within
//!   15 % of the sphere's and its diameter within 2 mm.
//! - Without motion correction the moved phase would spoil the curves: the test checks that the
//!   washout lesion's own voxels are mostly typed washout.

use lightbox_analysis::breast::{CurveType, analyse_dce};
use lightbox_tests::dce::synthetic_dce;

#[test]
fn synthetic_dce_lesions_get_their_known_curve_types_after_motion_correction() -> anyhow::Result<()> {
    let dce = synthetic_dce(7);
    let found = analyse_dce(&dce.phases, &dce.times_s, None)?;
    let shift = dce.motion_mm.iter().map(|m| m * m).sum::<f64>().sqrt();
    eprintln!(
        "contrast at {:.0} s after {} pre-contrast phase(s); motion per phase {:?} mm (truth: last {shift:.2} mm)",
        found.contrast_s, found.pre_phases, found.motion_mm
    );
    assert!(found.pre_phases == 1 && found.contrast_s < dce.times_s[1], "contrast found at {} s", found.contrast_s);
    let last = *found.motion_mm.last().unwrap_or(&0.0);
    assert!((last - shift).abs() < 0.5, "the last phase moved {shift:.2} mm, found {last:.2}");
    assert!(found.motion_mm[1..found.motion_mm.len() - 1].iter().all(|m| *m < 0.5), "{:?}", found.motion_mm);

    for l in &found.lesions {
        eprintln!(
            "lesion at {:?}: {:.3} mL, {:.1} mm, IE {:.0} %, delayed {:+.0} %, {:?}, {:.0} % of voxels wash out",
            l.centre_mm.map(|c| c.round()),
            l.volume_ml,
            l.max_diameter_mm,
            l.kinetics.initial_enhancement_percent,
            l.kinetics.delayed_change_percent,
            l.kinetics.curve_type,
            100.0 * l.washout_fraction
        );
    }
    assert_eq!(found.lesions.len(), dce.lesions.len(), "candidates: {:?}", found.lesions.len());
    for truth in &dce.lesions {
        let lesion = found
            .lesions
            .iter()
            .find(|l| (0..3).map(|c| (l.centre_mm[c] - truth.centre_mm[c]).powi(2)).sum::<f64>().sqrt() < 3.0)
            .ok_or_else(|| anyhow::anyhow!("no candidate at the {} lesion {:?}", truth.curve, truth.centre_mm))?;
        let expected = match truth.curve {
            "washout" => CurveType::Washout,
            "plateau" => CurveType::Plateau,
            _ => CurveType::Persistent,
        };
        assert_eq!(lesion.kinetics.curve_type, expected, "{}", truth.curve);
        let volume = 4.0 / 3.0 * std::f64::consts::PI * truth.radius_mm.powi(3) / 1000.0;
        assert!(
            (lesion.volume_ml / volume - 1.0).abs() < 0.15,
            "{}: {:.3} mL vs {volume:.3}",
            truth.curve,
            lesion.volume_ml
        );
        assert!(
            (lesion.max_diameter_mm - 2.0 * truth.radius_mm).abs() < 2.0,
            "{}: {:.1} mm",
            truth.curve,
            lesion.max_diameter_mm
        );
        if truth.curve == "washout" {
            assert!(lesion.washout_fraction > 0.8, "{:.2} of the washout lesion washes out", lesion.washout_fraction);
        }
    }
    // The MIP is one slice holding the subtraction's maximum.
    let max = found.subtraction.voxels().iter().copied().fold(f32::MIN, f32::max);
    assert_eq!(found.mip.dims()[2], 1);
    assert_eq!(found.mip.voxels().iter().copied().fold(f32::MIN, f32::max), max);
    Ok(())
}

/// End to end: the synthetic DCE series, written as one dynamic MR series (Temporal Position
/// Identifier and Trigger Time per phase), pushed by `storescu` into `lightbox listen`; a rule
/// runs `breast-dce`; the subtraction and its MIP, the SEG of the candidates and the SR with
/// their kinetics reach a real Orthanc.
#[test]
fn a_pushed_dce_series_gives_subtraction_mip_candidates_and_kinetics_in_the_pacs() -> anyhow::Result<()> {
    use std::time::Duration;

    use anyhow::{Context, ensure};
    use lightbox_tests::listener::Listener;
    use lightbox_tests::orthanc::Orthanc;

    let dir = tempfile::tempdir()?;
    let dce = synthetic_dce(11);
    let folder = dir.path().join("dce");
    write_dce_series(&dce, ("LB-DCE-1", "Breast^Synthetic"), &folder)?;
    // The model hook: a detection model the rule names, imported by `lightbox models import`
    // from an nnU-Net v2 result folder (a tiny network trained here on another phantom's
    // subtraction; it tests the hook, not a model).
    let models = dir.path().join("models");
    let folder_v2 = train_breast_test_model(dir.path())?;
    let imported = lightbox_tests::run_ok(
        std::process::Command::new(lightbox_tests::bin("lightbox")?)
            .args(["models", "import"])
            .arg(&folder_v2)
            .args(["--name", "breast-test", "--models"])
            .arg(&models),
    )?;
    ensure!(imported.contains("nnU-Net v2 3d_fullres fold 0"), "{imported}");
    let orthanc = Orthanc::start()?;
    let rules = "[[rule]]\nname = \"breast DCE\"\npipeline = \"breast-dce\"\nmodality = \"MR\"\ndescription = \"DCE.*\"\nmodel = \"breast-test\"\nauto_send = true\n";
    let mut listener = Listener::start(dir.path(), rules, &orthanc, &models, 1000)?;
    listener.push(&folder)?;
    let done = listener.lines.wait_for("pipeline breast-dce on", Duration::from_secs(300))?;
    eprintln!("{done}");
    // Subtraction (40 slices) + MIP (1) + the candidates' SEG + the model's SEG + SR.
    ensure!(done.contains("3 lesion candidate(s)") && done.contains("44 queued"), "{done}");
    ensure!(done.contains("model breast-test: "), "{done}");
    listener.lines.wait_for("outbox: sent 44", Duration::from_secs(120))?;

    let series = orthanc.get_json("/series?expand")?;
    let described: Vec<(String, String)> = series
        .as_array()
        .context("no series")?
        .iter()
        .map(|s| {
            let tags = &s["MainDicomTags"];
            (
                tags["Modality"].as_str().unwrap_or("").to_owned(),
                tags["SeriesDescription"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(described.iter().any(|(m, d)| m == "MR" && d.starts_with("Subtraction MIP")), "{described:?}");
    ensure!(described.iter().any(|(m, d)| m == "MR" && d.starts_with("Subtraction (first post")), "{described:?}");
    ensure!(described.iter().any(|(m, _)| m == "SEG") && described.iter().any(|(m, _)| m == "SR"), "{described:?}");
    // The SR, read back from Orthanc: each candidate's curve type matches the truth at its place.
    let sr_series = series.as_array().context("no series")?.iter().find(|s| s["MainDicomTags"]["Modality"] == "SR");
    let instance = sr_series.and_then(|s| s["Instances"][0].as_str()).context("no SR instance")?;
    let (status, bytes) = orthanc.request("GET", &format!("/instances/{instance}/file"), None)?;
    ensure!(status == 200, "{status}");
    let path = dir.path().join("sr.dcm");
    std::fs::write(&path, bytes)?;
    let sr = lightbox_dicom::read_sr(&path)?;
    let mut types: Vec<String> = sr
        .groups
        .iter()
        .filter(|g| g.tracking_id.starts_with("AI: lesion candidate"))
        .filter_map(|g| g.qualitative.iter().find(|(c, _)| c == "Kinetic curve type").map(|(_, v)| v.clone()))
        .collect();
    types.sort();
    ensure!(types == ["Type I persistent", "Type II plateau", "Type III washout"], "{types:?}");
    let curve = sr
        .groups
        .iter()
        .find(|g| g.tracking_id == "AI: lesion candidate 1")
        .map(|g| g.measurements.iter().filter(|m| m.0.starts_with("Relative enhancement at")).count());
    ensure!(curve == Some(dce.times_s.len() - 1), "the time-intensity curve has {curve:?} points");
    // The model's lesions: the first at one of the phantom's lesions, with its curve type.
    let results = lightbox_workflow::pipeline::results(&dir.path().join("store"))?;
    let result = results.iter().find(|r| r.pipeline == "breast-dce").context("no breast result")?;
    let lesions = result.details["lesions"].as_array().context("no lesions")?;
    let first = lesions
        .iter()
        .find(|l| l["label"].as_str().is_some_and(|s| s.starts_with("AI lesion 1 ")))
        .context("the model found no lesion")?;
    let centre: Vec<f64> =
        first["centre_mm"].as_array().context("no centre")?.iter().filter_map(|v| v.as_f64()).collect();
    let nearest = dce
        .lesions
        .iter()
        .map(|t| ((0..3).map(|k| (t.centre_mm[k] - centre[k]).powi(2)).sum::<f64>().sqrt(), t.curve))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .context("no truth")?;
    ensure!(nearest.0 < 4.0, "the model's first lesion is {:.1} mm from the nearest phantom lesion", nearest.0);
    let group =
        sr.groups.iter().find(|g| g.tracking_id == "AI: model lesion 1").context("no model lesion in the SR")?;
    let typed = group.qualitative.iter().find(|(c, _)| c == "Kinetic curve type").map(|(_, v)| v.to_lowercase());
    ensure!(typed.as_deref().is_some_and(|t| t.contains(nearest.1)), "{typed:?} for a {} lesion", nearest.1);
    ensure!(described.iter().filter(|(m, _)| m == "SEG").count() == 2, "{described:?}");
    Ok(())
}

/// A DCE series that arrives in parts (the first 4 of its 7 phases, then the rest) is not
/// analysed half-way: its job waits, says what is missing, and is not a failure; the whole
/// series runs as a new job, which supersedes the waiting one.
#[test]
fn a_dce_series_arriving_in_parts_waits_for_the_rest_then_runs_once_whole() -> anyhow::Result<()> {
    use std::process::Command;

    use anyhow::{Context, ensure};
    use lightbox_tests::{bin, run_ok};

    let dir = tempfile::tempdir()?;
    let dce = synthetic_dce(11);
    let folder = dir.path().join("dce");
    let files = write_dce_series(&dce, ("LB-DCE-2", "Breast^Parts"), &folder)?;
    let series = lightbox_dicom::read_instance(files.first().context("no files")?)?.series_uid.to_string();
    let (first, second) = split_phases(&files, dce.phases.len(), 4, dir.path())?;
    let store = dir.path().join("store");
    let lightbox = |args: &[&str]| -> anyhow::Result<Command> {
        let mut c = Command::new(bin("lightbox")?);
        c.args(args).arg("--store").arg(&store);
        Ok(c)
    };
    run_ok(&mut lightbox(&["import", &first.to_string_lossy()])?)?;
    let early = lightbox(&["run", "breast-dce", "--series", &series])?.output()?;
    let said = String::from_utf8_lossy(&early.stderr);
    ensure!(!early.status.success(), "half a series was analysed: {said}");
    ensure!(said.contains("is incomplete: 4 of its 7 phases have arrived"), "{said}");
    let jobs = run_ok(&mut lightbox(&["jobs"])?)?;
    let waiting = jobs.lines().find(|l| l.trim_start().starts_with("1 ")).context("no job 1")?;
    ensure!(
        waiting.contains("waiting") && waiting.contains("4 of its 7 phases have arrived") && !waiting.contains("error"),
        "{jobs}"
    );

    run_ok(&mut lightbox(&["import", &second.to_string_lossy()])?)?;
    let whole = run_ok(&mut lightbox(&["run", "breast-dce", "--series", &series])?)?;
    ensure!(whole.contains("job 2") && whole.contains("3 lesion candidate(s)"), "{whole}");
    let jobs = run_ok(&mut lightbox(&["jobs"])?)?;
    eprintln!("{said}{jobs}");
    let line = |id: &str| jobs.lines().find(|l| l.trim_start().starts_with(id)).unwrap_or_default();
    ensure!(line("1 ").contains("superseded") && line("1 ").contains("superseded by job 2"), "{jobs}");
    ensure!(line("2 ").contains(" done "), "{jobs}");
    ensure!(!jobs.contains("failed"), "{jobs}");
    let audit = lightbox_store::Store::open(&store)?.audit_log()?;
    ensure!(audit.iter().any(|(_, action, job)| action == "supersede" && job == "1"), "{audit:?}");
    // A superseded job is not run again.
    let again = lightbox(&["jobs", "rerun", "1"])?.output()?;
    let why = String::from_utf8_lossy(&again.stderr);
    ensure!(!again.status.success() && why.contains("job 1 was superseded by job 2"), "{why}");
    Ok(())
}

/// The engine (`lightbox listen`) with a rule for DCE series: half a series imported makes a
/// waiting job; when the rest never comes, it fails after the wait limit, saying what is
/// missing; when the rest comes after all, the whole series is analysed.
#[test]
fn a_dce_series_whose_rest_does_not_come_fails_after_the_wait_limit_saying_what_is_missing() -> anyhow::Result<()> {
    use std::process::Command;
    use std::time::Duration;

    use anyhow::ensure;
    use lightbox_tests::{bin, run_ok};

    let dir = tempfile::tempdir()?;
    let dce = synthetic_dce(5);
    let files = write_dce_series(&dce, ("LB-DCE-3", "Breast^Never"), &dir.path().join("dce"))?;
    let (first, second) = split_phases(&files, dce.phases.len(), 3, dir.path())?;
    let rules = "[[rule]]\nname = \"DCE\"\npipeline = \"breast-dce\"\nmodality = \"MR\"\n";
    let store = dir.path().join("store");
    let env = [("LIGHTBOX_SETTLE_MS", "300"), ("LIGHTBOX_ENGINE_POLL_MS", "300"), ("LIGHTBOX_WAIT_LIMIT_S", "2")];
    let (_listener, mut lines) = lightbox_tests::listen_local(rules, &store, &env)?;
    let import = |folder: &std::path::Path| {
        run_ok(Command::new(bin("lightbox")?).arg("import").arg(folder).arg("--store").arg(&store))
    };
    import(&first)?;
    let waiting = lines.wait_for("job 1 waiting", Duration::from_secs(60))?;
    ensure!(waiting.contains("is incomplete: 3 of its 7 phases have arrived"), "{waiting}");
    let failed = lines.wait_for("job 1 failed", Duration::from_secs(30))?;
    ensure!(failed.ends_with("still incomplete after 2 s: 3 of its 7 phases have arrived"), "{failed}");
    import(&second)?;
    let done = lines.wait_for("pipeline breast-dce on", Duration::from_secs(120))?;
    ensure!(done.contains("job 2 done") && done.contains("3 lesion candidate(s)"), "{done}");
    Ok(())
}

/// A dynamic series' `files` (phase by phase, `phases` of them) in two folders under `dir`: its
/// first `sent` phases in `first`, the rest in `second`.
fn split_phases(
    files: &[std::path::PathBuf],
    phases: usize,
    sent: usize,
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use anyhow::Context;
    let per_phase = files.len() / phases;
    let (first, second) = (dir.join("first"), dir.join("second"));
    for (at, file) in files.iter().enumerate() {
        let to = if at < sent * per_phase { &first } else { &second };
        std::fs::create_dir_all(to)?;
        std::fs::copy(file, to.join(file.file_name().context("no name")?))?;
    }
    Ok((first, second))
}

/// `dce` as one dynamic MR series of patient (id, name) in `folder`, each phase with its time.
fn write_dce_series(
    dce: &lightbox_tests::dce::SyntheticDce,
    (id, name): (&str, &str),
    folder: &std::path::Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let phases: Vec<_> = dce.phases.iter().zip(&dce.times_s).map(|(v, t)| (v, Some(*t))).collect();
    Ok(lightbox_dicom::write_mr_phases(
        &phases,
        &lightbox_dicom::NewSeries {
            patient: lightbox_core::PatientInfo { id: id.into(), name: name.into() },
            study_uid: None,
            study_date: "20260301".into(),
            patient_birth_date: "19700101".into(),
            study_description: "MR breast".into(),
            series_description: "DCE dyn ax".into(),
            series_number: 7,
            derivation: "lightbox_tests::dce synthetic phantom".into(),
            uid_seed: None,
            frame_of_reference_uid: None,
        },
        folder,
    )?)
}

/// A tiny detection model for the breast hook (channel `SUB`, labels background and lesion),
/// trained in `work` for a few seconds on the subtraction of the phantom with another noise
/// seed, its three lesions as the labels, and written out as the nnU-Net v2 result folder a
/// site would bring (returned).
fn train_breast_test_model(work: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use lightbox_ai::nnunet::{NnUnet, PackageSpec, PlainConvUNetConfig, write_package};
    use lightbox_ai::train::{TrainOptions, TrainingCase, train};

    let phantom = synthetic_dce(5);
    let sub = analyse_dce(&phantom.phases, &phantom.times_s, None)?.subtraction;
    let [nx, ny, nz] = sub.dims();
    let mut labels = vec![0u8; nx * ny * nz];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let p = sub.patient_from_voxel.transform_point([x as f64, y as f64, z as f64]);
                let inside = phantom
                    .lesions
                    .iter()
                    .any(|l| (0..3).map(|k| (p[k] - l.centre_mm[k]).powi(2)).sum::<f64>().sqrt() <= l.radius_mm);
                labels[(z * ny + y) * nx + x] = u8::from(inside);
            }
        }
    }
    let labels = lightbox_core::Volume::new(sub.dims(), labels, sub.patient_from_voxel)?;
    let arch = PlainConvUNetConfig {
        n_stages: 2,
        features_per_stage: vec![4, 8],
        kernel_sizes: vec![[3, 3, 3]; 2],
        strides: vec![[1, 1, 1], [2, 2, 2]],
        n_conv_per_stage: vec![1, 1],
        n_blocks_per_stage: Vec::new(),
        residual: false,
        n_conv_per_stage_decoder: vec![1],
        decoder_kernel_sizes: Vec::new(),
        conv_bias: true,
        input_channels: 1,
        num_classes: 2,
    };
    let s = sub.spacing_mm();
    let spec = PackageSpec {
        name: "breast-test".into(),
        version: "test".into(),
        description: "breast hook test model (trained on the phantom; not for clinical use)".into(),
        licence: "MIT".into(),
        source: "tests/it/breast.rs".into(),
        arch: arch.clone(),
        transpose_forward: vec![0, 1, 2],
        normalization_schemes: vec!["ZScoreNormalization".into()],
        intensity_properties: String::new(),
        use_mask_for_norm: vec![false],
        mirror_axes: Vec::new(),
        softmax_per_window: false,
        folds: Vec::new(),
        sequences: vec!["SUB".into()],
        spacing: vec![s[2], s[1], s[0]],
        patch_size: vec![8, 32, 32],
        labels: vec![(0, "background".into()), (1, "lesion".into())],
    };
    let package = work.join("breast-trained");
    write_package(&package, &spec, &arch.initial_tensors(3))?;
    let mut model = NnUnet::from_package(&package, lightbox_ai::AiDevice::cpu())?;
    let options = TrainOptions {
        steps: 120,
        batch_size: 4,
        learning_rate: 1e-2,
        foreground_fraction: 0.5,
        patches_per_case: usize::MAX,
        seed: 4,
    };
    let case = TrainingCase { channels: vec![sub], labels };
    let mut next = |_| Ok(TrainingCase { channels: case.channels.clone(), labels: case.labels.clone() });
    train(&mut model, &options, &mut next, &std::sync::atomic::AtomicBool::new(false), &mut |_, _| {})?;
    let mut plan = lightbox_tests::nnunet::Plan::plain(&arch)?;
    plan.patch_size = [8, 32, 32];
    plan.spacing = [s[2], s[1], s[0]];
    plan.channels = vec!["SUB".into()];
    plan.labels = vec!["background".into(), "lesion".into()];
    let folder = work.join("Dataset777_BreastTest/nnUNetTrainer__nnUNetPlans__3d_fullres");
    lightbox_tests::nnunet::write_v2_folder(&folder, &plan, &model.network().tensor_values()?)?;
    Ok(folder)
}

/// Sign-off of an AI report (here breast-dce's): `lightbox sign` accepts its findings as a
/// whole. The signed report is a new, VERIFIED instance naming the radiologist (as verifier and
/// as a person observer) with the unsigned one as its predecessor, the same measurement groups
/// and after them a colleague's own measurement of the series, and it goes to the outbox with the SEG it references and the derived subtraction and
/// MIP series; nothing had left before. An
/// edited value is refused (that is threshold-volume's), and a rejection sends nothing.
#[test]
fn an_ai_report_is_signed_as_a_whole_and_only_then_queued() -> anyhow::Result<()> {
    use std::process::Command;

    use anyhow::{Context, bail, ensure};
    use lightbox_tests::{bin, run_ok};

    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let dce = synthetic_dce(11);
    let folder = dir.path().join("dce");
    write_dce_series(&dce, ("LB-DCE-2", "Breast^Signed"), &folder)?;
    let lightbox = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin("lightbox")?)
            .args(args)
            .arg("--store")
            .arg(&store)
            .env("LIGHTBOX_INSTITUTION", "Lightbox Test Hospital")
            .output()?)
    };
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(&folder).arg("--store").arg(&store))?;
    let series = lightbox_dicom::scan_path(&folder)?.series().next().context("no series")?.1.uid.to_string();
    let ran = lightbox(&["run", "breast-dce", "--series", &series])?;
    let printed = String::from_utf8_lossy(&ran.stdout);
    ensure!(ran.status.success(), "{printed}{}", String::from_utf8_lossy(&ran.stderr));
    let job = printed.split("job ").nth(1).and_then(|s| s.split_whitespace().next()).context("no job")?.to_owned();
    let outbox = |store: &std::path::Path| -> anyhow::Result<usize> {
        Ok(lightbox_store::Store::open(store)?.outbox(None)?.len())
    };
    ensure!(outbox(&store)? == 0, "an unsigned AI result reached the outbox");

    let edited = lightbox(&["sign", "--job", &job, "--as", "Doe^Jane", "--volume-ml", "1.0"])?;
    let err = String::from_utf8_lossy(&edited.stderr);
    ensure!(!edited.status.success() && err.contains("accept or reject"), "{err}");
    ensure!(outbox(&store)? == 0);

    // A colleague's own measurement on the series goes into the report beside the AI's findings.
    let measured = lightbox(&[
        "measure",
        "add",
        "--series",
        &series,
        "--kind",
        "diameter",
        "--label",
        "Mass long axis",
        "--value",
        "12.5",
        "--unit",
        "mm",
        "--as",
        "Roe^Richard",
    ])?;
    ensure!(measured.status.success(), "{}", String::from_utf8_lossy(&measured.stderr));

    let signed = lightbox(&["sign", "--job", &job, "--as", "Doe^Jane"])?;
    let printed = String::from_utf8_lossy(&signed.stdout);
    ensure!(signed.status.success(), "{printed}{}", String::from_utf8_lossy(&signed.stderr));
    // The report, its SEG and the derived series (40 subtraction slices and the MIP).
    ensure!(printed.contains("signed by Doe^Jane") && printed.contains("43 queued"), "{printed}");
    let s = lightbox_store::Store::open(&store)?;
    let result: serde_json::Value = serde_json::from_str(
        s.jobs()?.into_iter().find(|j| j.id.to_string() == job).and_then(|j| j.result).as_deref().unwrap_or("{}"),
    )?;
    let unsigned = s.instance_file(result["sr"].as_str().context("no sr")?)?.context("unsigned SR not stored")?;
    let signed_uid = result["signed_sr"].as_str().context("no signed SR")?;
    let signed = s.instance_file(signed_uid)?.context("signed SR not stored")?;
    let (before, after) = (lightbox_dicom::read_sr(&unsigned)?, lightbox_dicom::read_sr(&signed)?);
    ensure!(
        before.verification == "UNVERIFIED" && after.verification == "VERIFIED",
        "{} → {}",
        before.verification,
        after.verification
    );
    ensure!(after.observers.first().map(String::as_str) == Some("Doe^Jane"), "{:?}", after.observers);
    let (ai, own) = after.groups.split_at(before.groups.len().min(after.groups.len()));
    ensure!(ai == before.groups && !ai.is_empty(), "the signed report's AI findings differ");
    let [own] = own else { bail!("not one own measurement: {own:?}") };
    ensure!(own.person.as_deref() == Some("Roe^Richard") && own.tracking_id.contains("Mass long axis"), "{own:?}");
    ensure!(own.measurements.len() == 1 && own.measurements[0].1 == 12.5 && own.measurements[0].2 == "mm", "{own:?}");
    ensure!(after.predecessors == [before.sop_uid.clone()], "{:?}", after.predecessors);
    let queued: Vec<String> = s.outbox(None)?.into_iter().map(|i| i.sop_uid).collect();
    ensure!(
        queued.contains(&signed_uid.to_owned())
            && queued.contains(&result["seg"].as_str().unwrap_or_default().to_owned()),
        "{queued:?}"
    );
    ensure!(!queued.contains(&before.sop_uid), "the unsigned report was queued");
    // Signed once: a later verdict is refused, and nothing more is queued.
    let again = lightbox(&["sign", "--job", &job, "--as", "Roe^Richard", "--reject"])?;
    let err = String::from_utf8_lossy(&again.stderr);
    ensure!(!again.status.success() && err.contains("was signed by Doe^Jane already"), "{err}");
    ensure!(outbox(&store)? == 43);
    Ok(())
}
