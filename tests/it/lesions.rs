//! Issue 9's lesion-change evaluation on the open MS data set (Lesjak et al. 2016): new and
//! enlarging lesions between the patient's two FLAIRs, found by the subtraction-and-threshold
//! baseline and by Lightbox's method (the same after matching the two FLAIRs' through-plane
//! resolution), scored against the data set's lesion-change mask in its common space.
//!
//! The path is the product's: study 2's FLAIR is registered onto study 1's by our own rigid NMI
//! registration; only study 1's FLAIR is placed in the common space with the data set's published
//! transform, so that the result can be compared with the ground truth there.

use std::sync::atomic::AtomicBool;

use anyhow::ensure;
use lightbox_ai::{AiDevice, deepbet::Deepbet};
use lightbox_core::{Affine3, Volume};
use lightbox_imaging::lesion_change::{
    LesionChange, LesionChangeOptions, Matching, Placed, matched_change, subtraction_change,
};
use lightbox_imaging::morphology::components;
use lightbox_imaging::{RegistrationOptions, register_rigid, resample_into};
use lightbox_tests::{data, workspace_root};

fn read(path: &str) -> anyhow::Result<Volume<f32>> {
    Ok(lightbox_nifti::read(&data(path)?)?.volume(0)?)
}

fn itk(path: &str) -> anyhow::Result<Affine3> {
    let p = data(path)?;
    lightbox_imaging::itk::parse_affine(&std::fs::read_to_string(&p)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}

/// Voxel Dice, lesion-wise sensitivity (ground-truth lesions touched by a detection) and false
/// positives (detected lesions touching no ground truth); lesions are 26-connected.
fn score(found: &[bool], truth: &[bool], order: [usize; 3]) -> (f64, f64, usize, usize) {
    let dice = lightbox_imaging::morphology::dice(found, truth);
    let hit = |a: &[bool], b: &[bool]| -> (usize, usize) {
        let (labels, sizes) = components(a, order, 26);
        let mut touched = vec![false; sizes.len()];
        for (l, &other) in labels.iter().zip(b) {
            if *l > 0 && other {
                touched[*l as usize - 1] = true;
            }
        }
        (touched.iter().filter(|t| **t).count(), sizes.len())
    };
    let (truth_hit, truth_n) = hit(truth, found);
    let (found_hit, found_n) = hit(found, truth);
    (dice, truth_hit as f64 / truth_n.max(1) as f64, found_n - found_hit, truth_n)
}

/// What a method found on the pair, scored.
#[derive(Debug)]
struct Scored {
    dice: f64,
    sensitivity: f64,
    false_positives: usize,
}

/// The pair, scored both ways on the data set's common grid, inside `brain` (the data set's
/// brain mask, or deepbet's on study 1's FLAIR as the product finds it): the
/// subtraction-and-threshold baseline on the two FLAIRs as they are, and Lightbox's method,
/// which first matches their through-plane resolution (study 1 has 4 mm slices, study 2 3 mm).
fn evaluate(deepbet_mask: bool) -> anyhow::Result<(Scored, Scored, Matching)> {
    let truth_volume = read("open_ms_longitudinal/coregistered/patient01/gt.nii.gz")?;
    let (dims, grid) = (truth_volume.dims(), truth_volume.patient_from_voxel);
    let flair1 = read("open_ms_longitudinal/raw/patient01/study1_FLAIR.nii.gz")?;
    let flair2 = read("open_ms_longitudinal/raw/patient01/study2_FLAIR.nii.gz")?;
    let common_to_flair1 = itk("open_ms_longitudinal/raw/patient01/study1_FLAIR_to_common_space.txt")?;
    let brain = if deepbet_mask {
        let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
        let mask = deepbet.extract(&flair1, 0.5, &AtomicBool::new(false), &mut |_| {})?.mask_f32();
        let moved = resample_into(&mask, dims, grid, &common_to_flair1, 0.0)?;
        Volume::new(dims, moved.voxels().iter().map(|&v| f32::from(v > 0.5)).collect(), grid)?
    } else {
        read("open_ms_longitudinal/coregistered/patient01/brainmask.nii.gz")?
    };
    let registration = register_rigid(&flair1, &flair2, &RegistrationOptions::default())?;
    let common_to_flair2 = registration.moving_from_fixed.compose(&common_to_flair1);
    let truth: Vec<bool> = truth_volume.voxels().iter().map(|&v| v > 0.5).collect();
    let mask = if deepbet_mask { "deepbet's" } else { "the data set's" };
    let scored = |name: &str, change: &LesionChange| -> anyhow::Result<Scored> {
        let [nx, ny, nz] = dims;
        let (dice, sensitivity, false_positives, truth_lesions) = score(&change.mask, &truth, [nz, ny, nx]);
        let found_ml: f64 = change.lesions.iter().map(|l| l.volume_ml).sum();
        let s = grid.axis(0).iter().map(|x| x * x).sum::<f64>().sqrt()
            * grid.axis(1).iter().map(|x| x * x).sum::<f64>().sqrt()
            * grid.axis(2).iter().map(|x| x * x).sum::<f64>().sqrt();
        let truth_ml = truth.iter().filter(|t| **t).count() as f64 * s / 1000.0;
        let enlarging = change.lesions.iter().filter(|l| l.enlarging).count();
        eprintln!(
            "{name} on open_ms patient01 ({mask} brain mask): Dice {dice:.3}, lesion-wise sensitivity {sensitivity:.2} ({truth_lesions} lesions in the truth), {false_positives} false-positive lesions, {} lesions found ({enlarging} enlarging), {found_ml:.2} mL found against {truth_ml:.2} mL",
            change.lesions.len()
        );
        // Every lesion voxel is numbered, and only those.
        ensure!(change.mask.iter().zip(&change.lesion_of).all(|(m, l)| *m == (*l > 0)));
        ensure!(change.lesion_of.iter().all(|&l| l as usize <= change.lesions.len()));
        Ok(Scored { dice, sensitivity, false_positives })
    };
    let before = resample_into(&flair1, dims, grid, &common_to_flair1, 0.0)?;
    let after = resample_into(&flair2, dims, grid, &common_to_flair2, 0.0)?;
    let options = LesionChangeOptions::default();
    let baseline = scored("subtraction baseline", &subtraction_change(&before, &after, &brain, &options)?)?;
    let (change, matching) = matched_change(
        Placed { volume: &flair1, from_grid: common_to_flair1 },
        Placed { volume: &flair2, from_grid: common_to_flair2 },
        &brain,
        &options,
    )?;
    eprintln!("resolution matching: {matching:?}");
    let method = scored("Lightbox lesion change 2 (resolution matched)", &change)?;
    Ok((baseline, method, matching))
}

// The baseline's thresholds (5 SD, 1.1 × the brain's median, 15 mm³) were looked at on this one
// pair, the only one here: the numbers flatter it. The method adds only what it picks without
// the truth (the blur that makes the scans most alike). Both find the large new lesion and few
// of the small ones; a dedicated method reports about 0.7 Dice and 0.8 lesion-wise detection
// on 3-D FLAIRs (Schmidt et al. 2019).

/// Resolution matching picks a blur of the follow-up's thinner slices, and with it the false
/// positives of the subtraction fall and its Dice rises, at the same sensitivity.
fn check(baseline: &Scored, method: &Scored, matching: &Matching) {
    // The baseline, as a regression guard.
    assert!(baseline.dice >= 0.5, "baseline Dice {:.3}", baseline.dice);
    assert!(baseline.sensitivity >= 0.15, "baseline sensitivity {:.2}", baseline.sensitivity);
    assert!(baseline.false_positives <= 20, "baseline: {} false positives", baseline.false_positives);
    // The method.
    assert!(!matching.baseline_blurred && (1.2..=2.4).contains(&matching.sigma_mm), "{matching:?}");
    assert!(matching.spread_after < matching.spread_before, "{matching:?}");
    assert!(method.dice >= 0.62 && method.dice > baseline.dice, "{method:?} vs {baseline:?}");
    assert!(method.sensitivity >= baseline.sensitivity, "{method:?} vs {baseline:?}");
    assert!(
        method.false_positives <= 3 && method.false_positives < baseline.false_positives,
        "{method:?} vs {baseline:?}"
    );
}

#[test]
fn new_and_enlarging_lesions_on_the_open_ms_pair() -> anyhow::Result<()> {
    let (baseline, method, matching) = evaluate(false)?;
    check(&baseline, &method, &matching);
    Ok(())
}

/// The product's path: the brain mask is deepbet's, on the FLAIR itself.
#[test]
fn new_and_enlarging_lesions_inside_deepbets_flair_brain_mask() -> anyhow::Result<()> {
    let (baseline, method, matching) = evaluate(true)?;
    check(&baseline, &method, &matching);
    Ok(())
}
