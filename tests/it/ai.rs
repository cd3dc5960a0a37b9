//! On-device brain extraction (deepbet 1.0.2 on burn, converted from its PyPI wheel by
//! `scripts/install-models.sh`), run through the real `lightbox brain-extract` on real brains
//! and scored against independent masks: the open longitudinal MS data set's brain mask (both
//! time points, moved into its common space with the data set's own transforms) and the MNI152
//! template's brain (its GM + WM maps).

use std::path::{Path, PathBuf};
use std::process::Command;

use lightbox_core::Affine3;
use lightbox_imaging::morphology::{dice, fill_holes};
use lightbox_tests::{bin, data, run_ok, workspace_root};

fn models() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("models");
    for p in ["deepbet", "deepbet-bbox"] {
        anyhow::ensure!(
            dir.join(p).join("model.safetensors").is_file(),
            "{} is not installed: run scripts/install-models.sh (make test does)",
            dir.join(p).display()
        );
    }
    Ok(dir)
}

/// Brain extraction as `lightbox brain-extract` runs it (the workflow's function, in-process, so
/// that the GPU machine's run needs no CLI binary): the mask, and the time and device.
fn extract(input: &Path, out: &Path) -> anyhow::Result<(lightbox_core::Volume<f32>, String)> {
    // CPU in CI; the GPU machine's run sets LIGHTBOX_AI_DEVICE=gpu.
    let preference = lightbox_workflow::ai::DevicePreference::from_env()?;
    let preference = if std::env::var_os("LIGHTBOX_AI_DEVICE").is_some() {
        preference
    } else {
        lightbox_workflow::ai::DevicePreference::Cpu
    };
    let r = lightbox_workflow::ai::brain_extract(input, out, &models()?, preference)?;
    anyhow::ensure!(r.warning.is_none(), "{}: {:?}", input.display(), r.warning);
    Ok((lightbox_nifti::read(out)?.volume(0)?, format!("{:.1} s on {}", r.seconds, r.device)))
}

fn itk(path: &str) -> anyhow::Result<Affine3> {
    let p = data(path)?;
    lightbox_imaging::itk::parse_affine(&std::fs::read_to_string(&p)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

#[test]
fn brain_extraction_reaches_dice_095_on_real_brains() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let reference =
        lightbox_nifti::read(&data("open_ms_longitudinal/coregistered/patient01/brainmask.nii.gz")?)?.volume(0)?;
    let reference_mask: Vec<bool> = reference.voxels().iter().map(|v| *v > 0.5).collect();
    let mut scores = Vec::new();
    for study in [1, 2] {
        let t1 = data(&format!("open_ms_longitudinal/raw/patient01/study{study}_T1W.nii.gz"))?;
        let (mask, printed) = extract(&t1, &dir.path().join(format!("study{study}.nii.gz")))?;
        // Common space → FLAIR → T1, as the data set's transforms map points (ITK: fixed → moving).
        let common_to_flair =
            itk(&format!("open_ms_longitudinal/raw/patient01/study{study}_FLAIR_to_common_space.txt"))?;
        let flair_to_t1 = itk(&format!("open_ms_longitudinal/raw/patient01/study{study}_T1W_intrastudy_to_FLAIR.txt"))?;
        let moved = lightbox_imaging::resample_into(
            &mask,
            reference.dims(),
            reference.patient_from_voxel,
            &flair_to_t1.compose(&common_to_flair),
            0.0,
        )?;
        let ours: Vec<bool> = moved.voxels().iter().map(|v| *v > 0.5).collect();
        scores.push((format!("open_ms study {study}"), dice(&ours, &reference_mask), printed));
    }
    // The MNI152 2009a template against its GM + WM > 0.2 (nilearn's brain mask), holes filled.
    let mni = "nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz";
    let (mask, printed) = extract(&data(mni)?, &dir.path().join("mni.nii.gz"))?;
    let gm =
        lightbox_nifti::read(&data("nilearn_mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")?)?.volume(0)?;
    let wm =
        lightbox_nifti::read(&data("nilearn_mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")?)?.volume(0)?;
    let mut brain: Vec<bool> = gm.voxels().iter().zip(wm.voxels()).map(|(g, w)| g + w > 0.2).collect();
    let [nx, ny, nz] = gm.dims();
    fill_holes(&mut brain, [nz, ny, nx]);
    let ours: Vec<bool> = mask.voxels().iter().map(|v| *v > 0.5).collect();
    scores.push(("MNI152 2009a".into(), dice(&ours, &brain), printed));
    for (what, score, printed) in &scores {
        eprintln!("deepbet on {what}: Dice {score:.4} — {}", printed.trim());
    }
    for (what, score, _) in &scores {
        assert!(*score >= 0.95, "{what}: Dice {score:.4} below 0.95");
    }
    Ok(())
}

/// What a user meets when things are wrong: missing packages name the install script, tampered
/// weights are refused by their hash, and a scan that is not a head T1 gets a warning.
#[test]
fn brain_extraction_refuses_missing_or_tampered_models_and_warns_on_a_non_head() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let t1 = data("open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz")?;
    let run = |models: &Path, input: &Path| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin("lightbox")?)
            .arg("brain-extract")
            .arg(input)
            .arg("--out")
            .arg(dir.path().join("out.nii.gz"))
            .arg("--models")
            .arg(models)
            .output()?)
    };
    let empty = dir.path().join("no-models");
    let out = run(&empty, &t1)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("scripts/install-models.sh"), "{err}");

    let tampered = dir.path().join("tampered");
    for p in ["deepbet", "deepbet-bbox"] {
        std::fs::create_dir_all(tampered.join(p))?;
        for f in ["model.toml", "model.safetensors"] {
            std::fs::copy(models()?.join(p).join(f), tampered.join(p).join(f))?;
        }
    }
    let weights = tampered.join("deepbet/model.safetensors");
    let mut bytes = std::fs::read(&weights)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, bytes)?;
    let out = run(&tampered, &t1)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("deepbet/model.safetensors: sha256 is"), "{err}");

    // The demo study is a prostate ADC map: the network still answers, the user is warned.
    let out = run(&models()?, &lightbox_tests::demo_study())?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("is outside the adult range"), "{err}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("AI output") && printed.contains("not for clinical use"), "{printed}");
    Ok(())
}

/// An nnU-Net v2 result folder, as nnU-Net writes one (plans.json, dataset.json and a
/// `torch.save` checkpoint whose state dict carries the aliases `all_modules` and
/// `decoder.encoder` beside the network's own tensors), imported and run end to end on the demo
/// study with no Python, for both architectures nnU-Net v2 plans (PlainConvUNet and the
/// residual-encoder presets): the labels come back on the input's grid. The segmentation head is
/// biased towards label 1, so the whole chain (transpose, resample, normalise, windows,
/// resample back, argmax) must carry it through.
#[test]
fn an_nnunet_v2_folder_imports_and_runs_end_to_end() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    for (class, blocks, name) in [
        ("unet.PlainConvUNet", serde_json::json!({"n_conv_per_stage": [2, 2, 2]}), "test-plain"),
        ("residual_unet.ResidualEncoderUNet", serde_json::json!({"n_blocks_per_stage": [1, 2, 2]}), "test-resenc"),
    ] {
        let folder = dir.path().join(format!("{name}/nnUNetTrainer__nnUNetPlans__3d_fullres"));
        // The residual variant also normalises over the non-zero region only.
        let plans = nnunet_folder(&folder, class, &blocks, name == "test-resenc")?;
        let imported = run_ok(
            Command::new(bin("lightbox")?)
                .args(["models", "import"])
                .arg(&folder)
                .args(["--name", name, "--models"])
                .arg(&models),
        )?;
        assert!(imported.contains("imported into"), "{imported}");
        let package = lightbox_ai::ModelPackage::open(&models.join(name))?;
        assert!(package.tensors.keys().all(|k| !k.contains("all_modules") && !k.starts_with("decoder.encoder")));
        assert!(std::fs::read_to_string(models.join(name).join("README.md"))?.contains("to be completed by the site"));

        let out = dir.path().join(format!("{name}.nii.gz"));
        let printed = run_ok(
            Command::new(bin("lightbox")?)
                .args(["predict", "--model", name])
                .arg(lightbox_tests::demo_study())
                .arg("--out")
                .arg(&out)
                .arg("--models")
                .arg(&models)
                // CPU in CI; the GPU machine's run sets LIGHTBOX_AI_DEVICE=gpu.
                .args(["--device", &std::env::var("LIGHTBOX_AI_DEVICE").unwrap_or_else(|_| "cpu".into())]),
        )?;
        assert!(printed.contains(&format!("AI output ({name}, not for clinical use)")), "{printed}");
        let labels = lightbox_nifti::read(&out)?.volume(0)?;
        let input = lightbox_workflow::ai::read_volume(&lightbox_tests::demo_study())?;
        assert_eq!(labels.dims(), input.dims());
        // nnU-Net crops to the box around the non-zero voxels and labels the rest background;
        // inside it the biased head labels every voxel 1.
        let [nx, ny, _] = input.dims();
        let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
        for (i, v) in input.voxels().iter().enumerate() {
            if *v != 0.0 {
                let at = [i % nx, (i / nx) % ny, i / (nx * ny)];
                for a in 0..3 {
                    lo[a] = lo[a].min(at[a]);
                    hi[a] = hi[a].max(at[a] + 1);
                }
            }
        }
        assert!(
            (0..3).any(|a| lo[a] > 0 || hi[a] < input.dims()[a]),
            "the demo study has no zero border: the crop would not be tested ({lo:?}..{hi:?})"
        );
        for (i, l) in labels.voxels().iter().enumerate() {
            let at = [i % nx, (i / nx) % ny, i / (nx * ny)];
            let inside = (0..3).all(|a| at[a] >= lo[a] && at[a] < hi[a]);
            assert_eq!(*l, f32::from(u8::from(inside)), "{name}: voxel {at:?} (box {lo:?}..{hi:?}): {printed}");
        }

        // A network class the runtime does not know is refused by name, before anything is written.
        let mut other = plans.clone();
        other["configurations"]["3d_fullres"]["architecture"]["network_class_name"] =
            "dynamic_network_architectures.architectures.unetr.UNETR".into();
        std::fs::write(folder.join("plans.json"), serde_json::to_string(&other)?)?;
        let refused = Command::new(bin("lightbox")?)
            .args(["models", "import"])
            .arg(&folder)
            .args(["--name", "other", "--models"])
            .arg(&models)
            .output()?;
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && err.contains("UNETR is not supported yet"), "{err}");
        assert!(!models.join("other").exists());
    }
    Ok(())
}

/// nnU-Net v2 mirrors at inference only the axes its checkpoint allows
/// (`inference_allowed_mirroring_axes`, what its trainer mirrored in training): none for a
/// trainer without mirroring (`None`), whose labels may have sides, and none when the key is
/// absent, as nnU-Net's predictor reads it. The import carries them into the package; a value
/// that is not a tuple of axes is refused with the checkpoint's name.
#[test]
fn an_nnunet_v2_import_mirrors_only_the_axes_its_checkpoint_allows() -> anyhow::Result<()> {
    use lightbox_ai::torch::PlainValue;
    let dir = tempfile::tempdir()?;
    let folder = dir.path().join("Dataset001/nnUNetTrainer__nnUNetPlans__3d_fullres");
    nnunet_folder(&folder, "unet.PlainConvUNet", &serde_json::json!({"n_conv_per_stage": [2, 2, 2]}), false)?;
    let checkpoint = folder.join("fold_0/checkpoint_final.pth");
    let tensors: Vec<_> = lightbox_ai::torch::read_zip(&std::fs::read(&checkpoint)?)
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|(n, s, v)| (n.trim_start_matches("network_weights.").to_owned(), s, v))
        .collect();
    let key = "inference_allowed_mirroring_axes";
    for (name, value, expected) in [
        ("all", Some(PlainValue::Ints(&[0, 1, 2])), Some(vec![0, 1, 2])),
        ("in-plane", Some(PlainValue::Ints(&[1, 2])), Some(vec![1, 2])),
        ("none", Some(PlainValue::None), Some(vec![])),
        ("absent", None, Some(vec![])),
        ("bad", Some(PlainValue::Ints(&[0, 3])), None),
    ] {
        let extra: Vec<(&str, PlainValue<'_>)> = value.into_iter().map(|v| (key, v)).collect();
        lightbox_ai::torch::write_zip_with(&checkpoint, "network_weights", &tensors, &extra)?;
        let out = dir.path().join(name);
        let imported = lightbox_ai::nnunet::import(&folder, "3d_fullres", &[0], name, &out);
        match expected {
            Some(axes) => {
                imported?;
                let manifest = lightbox_ai::ModelPackage::open(&out)?.manifest;
                let found: Vec<i64> = manifest.parameters["mirror_axes"]
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("{name}: no mirror_axes"))?
                    .iter()
                    .filter_map(|v| v.as_integer())
                    .collect();
                assert_eq!(found, axes, "{name}");
            }
            None => {
                let error = imported.err().ok_or_else(|| anyhow::anyhow!("{name}: imported"))?.to_string();
                assert!(
                    error.contains("checkpoint_final.pth") && error.contains(&format!("{key} is [0,3]")),
                    "{error}"
                );
                assert!(!out.exists(), "{name}: a package was written");
            }
        }
    }
    Ok(())
}

/// An nnU-Net v1 result folder in the PI-CAI baseline's layout (plans.pkl,
/// fold_0/model_best.model and .model.pkl, written by nnU-Net v1's own code:
/// scripts/reference/nnunet_v1.py) imported by the CLI and run by `lightbox predict` on a
/// three-sequence study given as NIfTI files: the labels are nnU-Net v1's own prediction
/// thresholded at ½. Bad options and damaged checkpoints are refused with the file and the
/// problem, and nothing is written.
#[test]
fn an_nnunet_v1_folder_imports_and_predicts_as_nnunet_v1_does() -> anyhow::Result<()> {
    let fixtures = workspace_root().join("tests/fixtures/parity");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixtures.join("nnunet_v1.json"))?)?;
    let dir = tempfile::tempdir()?;
    let models = dir.path().join("models");
    let import = |folder: &Path, name: &str, extra: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin("lightbox")?)
            .args(["models", "import"])
            .arg(folder)
            .args(["--name", name, "--models"])
            .arg(&models)
            .args(extra)
            .output()?)
    };
    let out = import(&fixtures.join("nnunet_v1"), "picai-v1", &[])?;
    let printed = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success() && printed.contains("nnU-Net v1 fold 0 model_best"), "{printed}{err}");
    let toml = std::fs::read_to_string(models.join("picai-v1/model.toml"))?;
    anyhow::ensure!(toml.contains("aggregate = \"probabilities\"") && toml.contains("\"ADC\""), "{toml}");

    // The study nnU-Net v1 predicted: three sequences on one 0.5 × 0.5 × 3 mm grid.
    let [d, h, w] = [0, 1, 2].map(|i| meta["input"]["dims"][i].as_u64().unwrap_or(0) as usize);
    let seed = meta["input"]["seed"].as_u64().unwrap_or(0) as u32;
    let scale = meta["input"]["adc_scale"].as_f64().unwrap_or(1.0) as f32;
    let values = lightbox_tests::parity_input([d, h, w], 3, seed);
    let plane = d * h * w;
    let affine = lightbox_core::Affine3::from_columns([0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 3.0], [0.0; 3]);
    let mut inputs = Vec::new();
    for (c, name) in ["t2w", "adc", "hbv"].into_iter().enumerate() {
        let mut v = values[c * plane..(c + 1) * plane].to_vec();
        if name == "adc" {
            v.iter_mut().for_each(|x| *x *= scale);
        }
        let path = dir.path().join(format!("{name}.nii.gz"));
        lightbox_nifti::write(&path, &lightbox_core::Volume::new([w, h, d], v, affine)?)?;
        inputs.push(path);
    }
    let labels_path = dir.path().join("labels.nii.gz");
    let printed = run_ok(
        Command::new(bin("lightbox")?)
            .args(["predict", "--model", "picai-v1"])
            .args(&inputs)
            .arg("--out")
            .arg(&labels_path)
            .arg("--models")
            .arg(&models)
            .args(["--device", &std::env::var("LIGHTBOX_AI_DEVICE").unwrap_or_else(|_| "cpu".into())]),
    )?;
    anyhow::ensure!(printed.contains("AI output (picai-v1, not for clinical use)"), "{printed}");
    let labels = lightbox_nifti::read(&labels_path)?.volume(0)?;
    let bytes = std::fs::read(fixtures.join("nnunet_v1.softmax.f32"))?;
    let theirs: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    anyhow::ensure!(
        labels.voxels().len() == theirs.len(),
        "{} labels, {} probabilities",
        labels.voxels().len(),
        theirs.len()
    );
    let lesion = theirs.iter().filter(|&&p| p > 0.5).count();
    anyhow::ensure!(lesion > 0 && lesion < theirs.len(), "the reference labels {lesion} voxels: nothing to compare");
    for (at, (&label, &p)) in labels.voxels().iter().zip(&theirs).enumerate() {
        // Only a voxel within rounding of ½ may go either way.
        anyhow::ensure!(
            (p - 0.5).abs() < 1e-4 || label == f32::from(u8::from(p > 0.5)),
            "voxel {at}: label {label}, v1's probability {p}"
        );
    }

    // The task's dataset.json beside plans.pkl names the labels (PI-CAI's: background, lesion).
    let named = dir.path().join("named");
    std::fs::create_dir_all(named.join("fold_0"))?;
    for file in ["plans.pkl", "fold_0/model_best.model", "fold_0/model_best.model.pkl"] {
        std::fs::copy(fixtures.join("nnunet_v1").join(file), named.join(file))?;
    }
    let dataset = r#"{"modality": {"0": "T2W", "1": "CT", "2": "HBV"}, "labels": {"0": "background", "1": "lesion"}}"#;
    std::fs::write(named.join("dataset.json"), dataset)?;
    anyhow::ensure!(import(&named, "picai-named", &[])?.status.success());
    let manifest = lightbox_ai::ModelPackage::open(&models.join("picai-named"))?.manifest;
    anyhow::ensure!(manifest.labels.get("1").map(String::as_str) == Some("lesion"), "{:?}", manifest.labels);
    anyhow::ensure!(manifest.input.sequences == ["T2W", "ADC", "HBV"], "{:?}", manifest.input.sequences);

    // Both folds as one ensemble.
    let out = import(&fixtures.join("nnunet_v1"), "picai-v1-ensemble", &["--fold", "0,1"])?;
    let printed = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success() && printed.contains("nnU-Net v1 folds 0, 1 model_best"), "{printed}");
    let toml = std::fs::read_to_string(models.join("picai-v1-ensemble/model.toml"))?;
    anyhow::ensure!(toml.contains("folds = [0, 1]"), "{toml}");

    // Refusals, each naming what is wrong, none writing a package.
    let refused = |out: std::process::Output, wanted: &str| -> anyhow::Result<()> {
        let err = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(!out.status.success() && err.contains(wanted), "wanted {wanted:?}: {err}");
        Ok(())
    };
    refused(
        import(&fixtures.join("nnunet_v1"), "a", &["--channels", "T2W,ADC"])?,
        "2 channel names for a model of 3 channels",
    )?;
    refused(
        import(&fixtures.join("nnunet_v1"), "b", &["--checkpoint", "model_final_checkpoint"])?,
        "model_final_checkpoint.model",
    )?;
    refused(import(&fixtures.join("nnunet"), "c", &["--checkpoint", "model_best"])?, "are for nnU-Net v1 folders")?;
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(damaged.join("fold_0"))?;
    std::fs::copy(fixtures.join("nnunet_v1/plans.pkl"), damaged.join("plans.pkl"))?;
    let checkpoint = std::fs::read(fixtures.join("nnunet_v1/fold_0/model_best.model"))?;
    std::fs::write(damaged.join("fold_0/model_best.model"), &checkpoint[..checkpoint.len() / 2])?;
    refused(import(&damaged, "d", &[])?, "damaged/fold_0/model_best.model: not a zip archive")?;
    let plans = std::fs::read(fixtures.join("nnunet_v1/plans.pkl"))?;
    std::fs::write(damaged.join("plans.pkl"), &plans[..plans.len() - 9])?;
    refused(import(&damaged, "e", &[])?, "damaged/plans.pkl: ")?;
    refused(import(&fixtures.join("nnunet_v1"), "f", &["--fold", "0,2"])?, "fold_2/model_best.model")?;
    for name in ["a", "b", "c", "d", "e", "f"] {
        anyhow::ensure!(!models.join(name).exists(), "a refused import wrote {name}");
    }
    Ok(())
}

/// Writes an nnU-Net v2 result folder for `class` (its encoder's `blocks` keyword: per-stage
/// convolutions or residual blocks): plans.json, dataset.json and fold_0/checkpoint_final.pth
/// with small deterministic weights, the last head biased to label 1, plus nnU-Net's aliases.
/// Returns the plans.
fn nnunet_folder(
    folder: &Path,
    class: &str,
    blocks: &serde_json::Value,
    use_mask_for_norm: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut arch = serde_json::json!({
        "n_stages": 3,
        "features_per_stage": [4, 8, 16],
        "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
        "n_conv_per_stage_decoder": [2, 2],
        "conv_bias": true
    });
    if let (Some(a), Some(b)) = (arch.as_object_mut(), blocks.as_object()) {
        a.extend(b.clone());
    }
    let plan = lightbox_tests::nnunet::Plan {
        class: class.into(),
        arch_kwargs: arch.clone(),
        patch_size: [8, 32, 32],
        spacing: [4.0, 1.5, 1.5],
        normalization: "ZScoreNormalization".into(),
        use_mask_for_norm,
        channels: vec!["ADC".into()],
        labels: vec!["background".into(), "lesion".into()],
    };
    let mut config: lightbox_ai::nnunet::PlainConvUNetConfig = serde_json::from_value(arch)?;
    config.residual = class.ends_with("ResidualEncoderUNet");
    config.input_channels = 1;
    config.num_classes = 2;
    let mut tensors = Vec::new();
    for (k, (name, shape)) in config.expected_tensors().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut values: Vec<f32> =
            (0..n).map(|i| (((i * 7919 + k * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.3).collect();
        if name == "decoder.seg_layers.1.bias" {
            values = vec![-50.0, 50.0];
        }
        if name.ends_with("norm.weight") {
            values = vec![1.0; n];
        }
        if name.starts_with("encoder.") {
            let alias = name.replace(".conv.", ".all_modules.0.").replace(".norm.", ".all_modules.1.");
            tensors.push((format!("decoder.{name}"), shape.clone(), values.clone()));
            tensors.push((alias, shape.clone(), values.clone()));
        }
        tensors.push((name, shape, values));
    }
    lightbox_tests::nnunet::write_v2_folder(folder, &plan, &tensors)
}
