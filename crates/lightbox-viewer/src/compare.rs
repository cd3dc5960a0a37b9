//! Longitudinal compare: the prior registered onto the current scan, and their difference.
//!
//! Two visits of one patient are seldom in the same place in the scanner, and their frames of
//! reference are unrelated, so linking by patient coordinates alone shows different anatomy.
//! Here the prior is registered rigidly onto the current scan (normalised mutual information,
//! `lightbox-imaging`) and resampled onto the current grid, so both panes show the same anatomy
//! slice for slice. The difference is current − prior, the prior first scaled so that the two
//! heads' median intensities agree (MR intensities have no absolute scale).

use lightbox_core::{Volume, WindowLevel};
use lightbox_imaging::{RegistrationOptions, register_rigid, resample_into};

pub struct Aligned {
    /// The prior on the current scan's grid (0 where it has no data).
    pub prior: Volume<f32>,
    /// Current − scale × prior (0 where the prior has no data).
    pub difference: Volume<f32>,
    /// Centred on no change, as wide as the largest changes.
    pub difference_window: WindowLevel,
    /// What was done, for the user and the log.
    pub summary: String,
}

pub fn align(current: &Volume<f32>, prior: &Volume<f32>) -> anyhow::Result<Aligned> {
    let started = std::time::Instant::now();
    let found = register_rigid(current, prior, &RegistrationOptions::default())?;
    let resampled =
        resample_into(prior, current.dims(), current.patient_from_voxel, &found.moving_from_fixed, f32::NAN)?;
    let scale = intensity_scale(current, &resampled);
    let difference: Vec<f32> = current
        .voxels()
        .iter()
        .zip(resampled.voxels())
        .map(|(&c, &p)| if p.is_finite() && c.is_finite() { c - scale * p } else { 0.0 })
        .collect();
    let mut magnitudes: Vec<f32> = difference.iter().step_by(7).map(|d| d.abs()).filter(|d| *d > 0.0).collect();
    magnitudes.sort_by(f32::total_cmp);
    let p99 = magnitudes.get(magnitudes.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(1.0).max(1e-3);
    let t = found.params.translation_mm;
    let summary = format!(
        "registered the prior onto the current scan: rotation {:.2}°, translation ({:.1}, {:.1}, {:.1}) mm, \
         NMI {:.3} → {:.3}, prior intensities × {scale:.3}, in {:.2} s",
        found.params.angle_deg(),
        t[0],
        t[1],
        t[2],
        found.nmi_start,
        found.nmi,
        started.elapsed().as_secs_f64()
    );
    let prior_voxels = resampled.voxels().iter().map(|&p| if p.is_finite() { p } else { 0.0 }).collect();
    Ok(Aligned {
        prior: Volume::new(current.dims(), prior_voxels, current.patient_from_voxel)?,
        difference: Volume::new(current.dims(), difference, current.patient_from_voxel)?,
        difference_window: WindowLevel { center: 0.0, width: 2.0 * p99 },
        summary,
    })
}

/// The factor that brings the prior's median over the head (both scans above a tenth of their
/// 99th percentile) to the current's.
fn intensity_scale(current: &Volume<f32>, prior: &Volume<f32>) -> f32 {
    let floor = |v: &[f32]| {
        let mut s: Vec<f32> = v.iter().step_by(13).copied().filter(|x| x.is_finite()).collect();
        s.sort_by(f32::total_cmp);
        s.get(s.len().saturating_sub(1) * 99 / 100).copied().unwrap_or(0.0) * 0.1
    };
    let (fc, fp) = (floor(current.voxels()), floor(prior.voxels()));
    let (mut c, mut p): (Vec<f32>, Vec<f32>) = current
        .voxels()
        .iter()
        .zip(prior.voxels())
        .filter(|(c, p)| p.is_finite() && **c > fc && **p > fp)
        .map(|(c, p)| (*c, *p))
        .unzip();
    if c.is_empty() {
        return 1.0;
    }
    let median = |v: &mut Vec<f32>| {
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    let (mc, mp) = (median(&mut c), median(&mut p));
    if mp > 0.0 { mc / mp } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightbox_core::Affine3;

    #[test]
    fn a_scaled_copy_shows_no_difference_and_a_new_spot_shows_up() -> anyhow::Result<()> {
        let n = 32;
        let mut voxels = vec![0.0f32; n * n * n];
        for (index, v) in voxels.iter_mut().enumerate() {
            let (i, j, k) = (index % n, (index / n) % n, index / (n * n));
            let r2 = [i, j, k].map(|x| (x as f32 - 15.5).powi(2)).iter().sum::<f32>();
            if r2 < 144.0 {
                *v = 100.0 + (i as f32) * 2.0 + (j as f32);
            }
        }
        let affine = Affine3::from_columns([2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0; 3]);
        let prior = Volume::new([n; 3], voxels.iter().map(|v| v * 0.5).collect(), affine)?;
        let mut current_voxels = voxels;
        current_voxels[16 + n * (16 + n * 16)] += 80.0;
        let current = Volume::new([n; 3], current_voxels, affine)?;
        let aligned = align(&current, &prior)?;
        let d = aligned.difference.voxels();
        assert!((d[16 + n * (16 + n * 16)] - 80.0).abs() < 8.0, "the new spot: {}", d[16 + n * (16 + n * 16)]);
        let elsewhere = d.iter().enumerate().filter(|(i, _)| *i != 16 + n * (16 + n * 16)).map(|(_, v)| v.abs());
        let worst = elsewhere.fold(0.0f32, f32::max);
        assert!(worst < 20.0, "unchanged voxels differ by up to {worst}");
        assert!(aligned.summary.contains("× 2.0"), "{}", aligned.summary);
        Ok(())
    }
}
