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

/// Runs `lightbox brain-extract` and returns the mask and what it printed.
fn extract(input: &Path, out: &Path) -> anyhow::Result<(lightbox_core::Volume<f32>, String)> {
    let printed = run_ok(
        Command::new(bin("lightbox")?)
            .arg("brain-extract")
            .arg(input)
            .arg("--out")
            .arg(out)
            .arg("--models")
            .arg(models()?)
            .args(["--device", "cpu"]),
    )?;
    anyhow::ensure!(printed.contains("AI output") && printed.contains("not for clinical use"), "{printed}");
    Ok((lightbox_nifti::read(out)?.volume(0)?, printed))
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
    Ok(())
}
