//! Issue 9's atrophy accuracy tests on real brains with a known truth: a smooth, brain-only
//! shrinkage of 0, 0.5, 1 and 2 % of brain volume (skull unchanged) applied to real T1s. Both
//! time points are imaged as a scanner would: each in its own head position (a small rigid
//! motion), each with its own noise and smooth bias field.
//! - On a 1 mm 3-D T1 (the MNI152 2009a template) the percent brain volume change must be within
//!   0.15 % of the truth (SIENA's published error, Smith 2002) in every case, the unchanged one
//!   included.
//! - The open MS data set's T1s are 2-D with 3 mm slices: there the measurement finds only part of
//!   the change (about 55–75 %), and says that such a scan is not fit for it.

use std::sync::atomic::AtomicBool;

use lightbox_ai::{AiDevice, deepbet::Deepbet};
use lightbox_core::Volume;
use lightbox_imaging::atrophy::{Atrophy, AtrophyOptions, percent_brain_volume_change, simulate_atrophy};
use lightbox_imaging::{RigidParams, resample_into};
use lightbox_tests::{data, workspace_root};

/// SIENA's published PBVC error (Smith 2002), the goal of issue 9.
const TOLERANCE_PERCENT: f64 = 0.15;

/// Adds Gaussian noise (σ = `sigma`) and a smooth multiplicative bias (±`bias`, a tilted
/// gradient with a bump) to the voxels above zero; deterministic.
fn noise_and_bias(volume: &Volume<f32>, sigma: f32, bias: f32, seed: u64) -> anyhow::Result<Volume<f32>> {
    let [nx, ny, nz] = volume.dims();
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut out = volume.voxels().to_vec();
    for (at, v) in out.iter_mut().enumerate() {
        let (i, j, k) = (at % nx, (at / nx) % ny, at / (nx * ny));
        let [x, y, z] = [i as f32 / nx as f32 - 0.5, j as f32 / ny as f32 - 0.5, k as f32 / nz as f32 - 0.5];
        let field = 1.0 + bias * (0.6 * x - 0.5 * y + 0.4 * z + 0.8 * (-(x * x + y * y + z * z) * 8.0).exp() - 0.3);
        let gaussian = ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32;
        if *v > 0.0 {
            *v = *v * field + sigma * gaussian;
        }
    }
    Ok(Volume::new(volume.dims(), out, volume.patient_from_voxel)?)
}

/// Simulates 0, 0.5, 1 and 2 % of brain loss on the T1 at `path` and measures each against the
/// baseline: (truth %, what was found).
fn simulate_and_measure(deepbet: &Deepbet, path: &str, seed: u64) -> anyhow::Result<Vec<(f64, Atrophy)>> {
    let scan = lightbox_nifti::read(&data(path)?)?.volume(0)?;
    let brain = deepbet.extract(&scan, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = brain.mask_f32();
    let mut sorted: Vec<f32> = scan.voxels().iter().copied().filter(|v| *v > 0.0).step_by(13).collect();
    sorted.sort_by(f32::total_cmp);
    let noise = 0.02 * sorted[sorted.len() * 9 / 10];
    let [nx, ny, nz] = scan.dims();
    let centre = scan.patient_from_voxel.transform_point([nx, ny, nz].map(|n| n as f64 / 2.0));
    // Both time points as a scanner gives them: each in its own head position (one interpolation
    // each, composed with the atrophy for the follow-up), each with its own noise and bias field.
    // The baseline's brain mask moves with it.
    let baseline_motion = RigidParams { rotation_rad: [-0.01, 0.012, -0.008], translation_mm: [-0.6, 0.4, -0.5] };
    let baseline_at = baseline_motion.to_affine(centre);
    let moved = |v: &Volume<f32>| resample_into(v, scan.dims(), scan.patient_from_voxel, &baseline_at, 0.0);
    let baseline = noise_and_bias(&moved(&scan)?, noise, 0.04, seed)?;
    let baseline_mask = moved(&mask)?;
    let mut rows = Vec::new();
    for (c, loss) in [0.0, 0.005, 0.01, 0.02].into_iter().enumerate() {
        let motion = RigidParams { rotation_rad: [0.02, -0.015, 0.025], translation_mm: [1.3, -0.7, 0.9] };
        let changed = simulate_atrophy(&scan, &mask, loss, &motion.to_affine(centre))?;
        let followup = noise_and_bias(&changed, noise, 0.05, seed + 1 + c as u64)?;
        let found = percent_brain_volume_change(&baseline, &followup, &baseline_mask, &AtrophyOptions::default())?;
        eprintln!(
            "{path}: truth {:+.2} %, measured {:+.3} % (error {:+.3}); brain {:.0} mL, motion found {:.2}°, CSF/GM/WM {:?}",
            -100.0 * loss,
            found.pbvc_percent,
            found.pbvc_percent + 100.0 * loss,
            found.brain_ml,
            found.rotation_deg,
            found.tissue_means.map(|t| t.round()),
        );
        rows.push((-100.0 * loss, found));
    }
    Ok(rows)
}

#[test]
fn simulated_atrophy_of_a_3d_t1_is_measured_within_015_percent() -> anyhow::Result<()> {
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let rows = simulate_and_measure(&deepbet, "nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", 1)?;
    for (truth, found) in &rows {
        anyhow::ensure!(found.warnings.is_empty(), "{:?}", found.warnings);
        let error = found.pbvc_percent - truth;
        assert!(
            error.abs() <= TOLERANCE_PERCENT,
            "truth {truth:+.2} %, measured {:+.3} %: error {error:+.3} beyond ±{TOLERANCE_PERCENT}",
            found.pbvc_percent
        );
    }
    Ok(())
}

/// The open MS patient's second T1 (3 mm slices, whole brain covered): a change is found in the
/// right direction but only in part (about 55–75 % of it), the unchanged pair measures +0.14 %,
/// and every result carries the warning that such a scan is not fit for it.
#[test]
fn simulated_atrophy_of_a_thick_slice_t1_is_underestimated_and_flagged() -> anyhow::Result<()> {
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let rows = simulate_and_measure(&deepbet, "open_ms_longitudinal/raw/patient01/study2_T1W.nii.gz", 11)?;
    for (truth, found) in &rows {
        anyhow::ensure!(
            found.warnings.iter().any(|w| w.contains("3.0 mm voxels") && w.contains("underestimated")),
            "no thick-slice warning: {:?}",
            found.warnings
        );
        // Not the goal (such scans are flagged as unfit): bounds that catch a regression.
        if *truth == 0.0 {
            assert!(found.pbvc_percent.abs() <= 0.25, "no change measured as {:+.3} %", found.pbvc_percent);
        } else {
            let found_share = found.pbvc_percent / truth;
            assert!((0.4..=1.1).contains(&found_share), "truth {truth:+.2} %, measured {:+.3} %", found.pbvc_percent);
        }
    }
    Ok(())
}

/// A T1 whose field of view cuts the brain (the open MS patient's first study: 39 slices of
/// 3 mm, brain on the first and last) cannot give a whole-brain change: the measurement says so.
#[test]
fn a_brain_cut_by_the_field_of_view_is_flagged() -> anyhow::Result<()> {
    let scan = lightbox_nifti::read(&data("open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz")?)?.volume(0)?;
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let brain = deepbet.extract(&scan, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = brain.mask_f32();
    let found = percent_brain_volume_change(&scan, &scan, &mask, &AtrophyOptions::default())?;
    anyhow::ensure!(found.pbvc_percent.abs() < 1e-6, "a scan against itself changed by {} %", found.pbvc_percent);
    anyhow::ensure!(
        found.warnings.iter().any(|w| w.contains("does not cover the whole brain")),
        "no warning: {:?}",
        found.warnings
    );
    Ok(())
}

/// `lightbox atrophy` on the open MS patient's two real T1s a year apart: the report is labelled,
/// compares the rate with the norm for the age, and warns that these scans are not fit for it.
#[test]
fn atrophy_command_reports_the_rate_against_the_norm_with_its_warnings() -> anyhow::Result<()> {
    let out = std::process::Command::new(lightbox_tests::bin("lightbox")?)
        .arg("atrophy")
        .arg(data("open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz")?)
        .arg(data("open_ms_longitudinal/raw/patient01/study2_T1W.nii.gz")?)
        .args(["--baseline-date", "2014-03-01", "--followup-date", "20150301", "--age", "45"])
        .arg("--models")
        .arg(workspace_root().join("models"))
        .args(["--device", "cpu"])
        .output()?;
    let (printed, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{err}");
    for expected in
        ["AI output", "not for clinical use", "over 1.00 years", "a healthy person of 45", "De Stefano 2016"]
    {
        assert!(printed.contains(expected), "{expected:?} missing from: {printed}");
    }
    assert!(err.contains("does not cover the whole brain") && err.contains("3.0 mm voxels"), "{err}");
    // The follow-up before the baseline is refused with the reason.
    let out = std::process::Command::new(lightbox_tests::bin("lightbox")?)
        .arg("atrophy")
        .arg(data("open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz")?)
        .arg(data("open_ms_longitudinal/raw/patient01/study2_T1W.nii.gz")?)
        .args(["--baseline-date", "2015-03-01", "--followup-date", "2014-03-01"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("later than the baseline"), "{err}");
    Ok(())
}
