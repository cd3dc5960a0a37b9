//! Issue 9's atrophy accuracy test on real brains with a known truth: a smooth, brain-only
//! shrinkage of 0, 0.5, 1 and 2 % of brain volume (skull unchanged) applied to two real T1s (the
//! MNI152 2009a template and the open MS data set's patient 1), then moved by a small rigid
//! motion, with noise and a smooth bias field added. The percent brain volume change measured
//! between the original and the changed scan must be within 0.15 % of the truth (SIENA's
//! published error, Smith 2002) in every case, the unchanged one included.

use std::sync::atomic::AtomicBool;

use lightbox_ai::{AiDevice, deepbet::Deepbet};
use lightbox_core::Volume;
use lightbox_imaging::atrophy::{AtrophyOptions, percent_brain_volume_change, simulate_atrophy};
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

#[test]
fn simulated_atrophy_of_real_brains_is_measured_within_015_percent() -> anyhow::Result<()> {
    let deepbet = Deepbet::from_packages(&workspace_root().join("models"), AiDevice::cpu())?;
    let scans = [
        ("MNI152 2009a", "nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
        ("open_ms patient01 study 1", "open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz"),
    ];
    let mut rows = Vec::new();
    for (s, (name, path)) in scans.iter().enumerate() {
        let scan = lightbox_nifti::read(&data(path)?)?.volume(0)?;
        let brain = deepbet.extract(&scan, 0.5, &AtomicBool::new(false), &mut |_| {})?;
        let mask = Volume::new(
            scan.dims(),
            brain.mask.voxels().iter().map(|&m| f32::from(m)).collect(),
            scan.patient_from_voxel,
        )?;
        let mut sorted: Vec<f32> = scan.voxels().iter().copied().filter(|v| *v > 0.0).step_by(13).collect();
        sorted.sort_by(f32::total_cmp);
        let typical = sorted[sorted.len() * 9 / 10];
        let [nx, ny, nz] = scan.dims();
        let centre = scan.patient_from_voxel.transform_point([nx, ny, nz].map(|n| n as f64 / 2.0));
        for (c, loss) in [0.0, 0.005, 0.01, 0.02].into_iter().enumerate() {
            let shrunk = simulate_atrophy(&scan, &mask, loss)?;
            let motion = RigidParams { rotation_rad: [0.02, -0.015, 0.025], translation_mm: [1.3, -0.7, 0.9] };
            let moved = resample_into(&shrunk, scan.dims(), scan.patient_from_voxel, &motion.to_affine(centre), 0.0)?;
            let followup = noise_and_bias(&moved, 0.02 * typical, 0.05, (s * 10 + c) as u64 + 1)?;
            let found = percent_brain_volume_change(&scan, &followup, &mask, &AtrophyOptions::default())?;
            rows.push((name.to_string(), -100.0 * loss, found));
        }
    }
    for (name, truth, found) in &rows {
        eprintln!(
            "{name}: truth {truth:+.2} %, measured {:+.3} % (error {:+.3}); brain {:.0} mL, motion found {:.2}° {:?} mm",
            found.pbvc_percent,
            found.pbvc_percent - truth,
            found.brain_ml,
            found.rotation_deg,
            found.translation_mm.map(|t| (t * 100.0).round() / 100.0)
        );
    }
    for (name, truth, found) in &rows {
        let error = found.pbvc_percent - truth;
        assert!(
            error.abs() <= TOLERANCE_PERCENT,
            "{name}: truth {truth:+.2} %, measured {:+.3} %: error {error:+.3} beyond ±{TOLERANCE_PERCENT}",
            found.pbvc_percent
        );
    }
    Ok(())
}
