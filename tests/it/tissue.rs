//! Issue 9's tissue classes on a brain with a known answer: the MNI152 2009a T1 against the
//! template's own grey- and white-matter probability maps (nilearn's), inside deepbet's brain
//! mask: voxel Dice of each class (fraction > 0.5) and the volumes.

use std::sync::atomic::AtomicBool;

use lightbox_ai::{AiDevice, deepbet::Deepbet};
use lightbox_core::Volume;
use lightbox_imaging::morphology::dice;
use lightbox_imaging::tissue::{TissueOptions, classify};
use lightbox_tests::{data, workspace_root};

fn read(path: &str) -> anyhow::Result<Volume<f32>> {
    Ok(lightbox_nifti::read(&data(path)?)?.volume(0)?)
}

#[test]
fn tissue_classes_of_the_mni_template_match_its_own_maps() -> anyhow::Result<()> {
    let t1 = read("nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")?;
    let gm = read("nilearn_mni152/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")?;
    let wm = read("nilearn_mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")?;
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let brain = deepbet.extract(&t1, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = brain.mask_f32();
    let tissues = classify(&t1, &mask, &TissueOptions::default())?;
    let inside: Vec<bool> = mask.voxels().iter().map(|&m| m > 0.5).collect();
    let ours = |c: usize| -> Vec<bool> { tissues.fractions[c].iter().map(|&f| f > 0.5).collect() };
    let theirs = |map: &Volume<f32>| -> Vec<bool> {
        let half = 0.5 * map.voxels().iter().copied().fold(0.0f32, f32::max);
        map.voxels().iter().zip(&inside).map(|(&p, &m)| m && p > half).collect()
    };
    let (gm_dice, wm_dice) = (dice(&ours(1), &theirs(&gm)), dice(&ours(2), &theirs(&wm)));
    let voxel_ml = tissues.mask_ml / inside.iter().filter(|m| **m).count() as f64;
    // The maps hold probabilities scaled to their largest value.
    let their_ml = |map: &Volume<f32>| -> f64 {
        let top = f64::from(map.voxels().iter().copied().fold(0.0f32, f32::max)).max(1e-12);
        map.voxels().iter().zip(&inside).filter(|(_, m)| **m).map(|(&p, _)| f64::from(p)).sum::<f64>() * voxel_ml / top
    };
    let (their_gm, their_wm) = (their_ml(&gm), their_ml(&wm));
    let [csf_ml, gm_ml, wm_ml] = tissues.volumes_ml;
    eprintln!(
        "MNI152 tissues: GM Dice {gm_dice:.3}, WM Dice {wm_dice:.3}; GM {gm_ml:.0} mL (template {their_gm:.0}), WM {wm_ml:.0} mL (template {their_wm:.0}), CSF {csf_ml:.0} mL, mask {:.0} mL, BPF {:.3}; means {:?} SDs {:?}",
        tissues.mask_ml,
        (gm_ml + wm_ml) / tissues.mask_ml,
        tissues.means.map(|m| m.round()),
        tissues.sds.map(|m| m.round())
    );
    assert!(gm_dice >= 0.85, "grey matter Dice {gm_dice:.3}");
    assert!(wm_dice >= 0.9, "white matter Dice {wm_dice:.3}");
    // Volumes from the partial-volume fractions: grey matter within 10 % of the template's. White
    // matter comes out about a quarter low (the template's white matter is a narrow bright peak,
    // and its many grey-white boundary voxels count as mixtures): a known limit, guarded at 30 %.
    assert!((gm_ml / their_gm - 1.0).abs() <= 0.1, "grey matter {gm_ml:.0} mL against the template's {their_gm:.0} mL");
    assert!(
        (wm_ml / their_wm - 1.0).abs() <= 0.3,
        "white matter {wm_ml:.0} mL against the template's {their_wm:.0} mL"
    );
    Ok(())
}

/// `lightbox brain-volumes` on the MNI152 T1: labelled, with every volume and the method.
#[test]
fn brain_volumes_command_reports_labelled_volumes() -> anyhow::Result<()> {
    let out = std::process::Command::new(lightbox_tests::bin("lightbox")?)
        .arg("brain-volumes")
        .arg(data("nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")?)
        .arg("--models")
        .arg(workspace_root().join("models"))
        .args(["--device", "cpu"])
        .output()?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "AI output",
        "not for clinical use",
        "intracranial volume",
        "grey matter",
        "brain parenchymal fraction",
        "method: Lightbox volumes 2: deepbet 1.0.2 brain mask, N3-style bias-field correction",
    ] {
        assert!(printed.contains(expected), "{expected:?} missing from: {printed}");
    }
    Ok(())
}

/// Issue 9, item 1: bias-field correction on a real brain. The MNI152 T1 (free of bias) under a
/// known smooth field of about ±20 %: inside deepbet's mask, the white matter's intensity spread
/// (coefficient of variation where the template's white-matter map is above 95 %) must come
/// back to within 15 % of the original's, and on the unbiased T1 the correction must stay
/// within ±5 % of no change (1st to 99th percentile of the field inside the brain).
#[test]
fn a_known_bias_field_on_the_mni_brain_is_removed() -> anyhow::Result<()> {
    use lightbox_imaging::bias::{BiasOptions, correct_bias};
    let t1 = read("nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")?;
    let wm = read("nilearn_mni152/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")?;
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let mask = deepbet.extract(&t1, 0.5, &AtomicBool::new(false), &mut |_| {})?.mask_f32();
    let [nx, ny, nz] = t1.dims();
    let biased: Vec<f32> = t1
        .voxels()
        .iter()
        .enumerate()
        .map(|(at, &v)| {
            let [x, y, z] = [at % nx, (at / nx) % ny, at / (nx * ny)]
                .into_iter()
                .zip([nx, ny, nz])
                .map(|(i, n)| i as f64 / n as f64 - 0.5)
                .collect::<Vec<_>>()[..]
            else {
                unreachable!()
            };
            let field = (0.35 * x - 0.3 * y + 0.25 * z + 0.12 * (-(x * x + z * z) * 10.0).exp()).exp();
            (f64::from(v) * field) as f32
        })
        .collect();
    let biased = Volume::new(t1.dims(), biased, t1.patient_from_voxel)?;
    let top = wm.voxels().iter().copied().fold(0.0f32, f32::max);
    let white: Vec<bool> = wm.voxels().iter().zip(mask.voxels()).map(|(&p, &m)| m > 0.5 && p > 0.95 * top).collect();
    let cv = |v: &Volume<f32>| {
        let picked: Vec<f64> = v.voxels().iter().zip(&white).filter(|(_, w)| **w).map(|(x, _)| f64::from(*x)).collect();
        let mean = picked.iter().sum::<f64>() / picked.len() as f64;
        (picked.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / picked.len() as f64).sqrt() / mean
    };
    let started = std::time::Instant::now();
    let found = correct_bias(&biased, &mask, &BiasOptions::default())?;
    let seconds = started.elapsed().as_secs_f64();
    let (original, before, after) = (cv(&t1), cv(&biased), cv(&found.corrected));
    eprintln!(
        "white matter CV: original {original:.4}, biased {before:.4}, corrected {after:.4} ({} iterations, {seconds:.1} s)",
        found.iterations
    );
    assert!(after < original * 1.15, "corrected CV {after:.4} against the original's {original:.4}");
    let unchanged = correct_bias(&t1, &mask, &BiasOptions::default())?;
    let mut field: Vec<f32> =
        unchanged.field.voxels().iter().zip(mask.voxels()).filter(|(_, m)| **m > 0.5).map(|(f, _)| *f).collect();
    field.sort_by(f32::total_cmp);
    let (lo, hi) = (field[field.len() / 100], field[field.len() * 99 / 100]);
    eprintln!("on the unbiased T1 the field spans {lo:.3}–{hi:.3} (1st–99th percentile)");
    assert!(lo > 0.95 && hi < 1.05, "a field of {lo:.3}–{hi:.3} on a scan without bias");
    Ok(())
}
