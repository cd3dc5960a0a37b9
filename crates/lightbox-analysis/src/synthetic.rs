//! Synthetic prostate lesions in a real ADC map, to train and test a lesion-detection model
//! where no licence-clean annotated data exist (see `models/prostate-lesion-synthetic`).
//!
//! A lesion is an ellipsoid (in-plane radii 3–8 mm, through-plane 3–6 mm, randomly oriented in
//! the plane) whose ADC is lowered to 40–70 % of the tissue's, as clinically significant cancer
//! lowers it (ISUP ≥ 2 lesions have ADC around 0.6–1.0 × 10⁻³ mm²/s against 1.4–2.0 in normal
//! peripheral zone). The change is multiplicative, so the tissue's own noise and texture stay,
//! and its edge is a smooth ramp over the outer 30 % of the radius. Its label is the inner
//! 85 % of the radius (where the ADC has dropped by more than half the lesion's contrast).
//! Only soft tissue changes (ADC 0.7–2.4 × 10⁻³ mm²/s before): where the ellipsoid reaches fat,
//! bone, air or fluid, nothing changes and nothing is labelled, as a tumour does not make fat
//! darker (and a label there would teach a model that every dark edge is a lesion).
//!
//! Lesions go where the tissue's ADC is 0.9–2.2 × 10⁻³ mm²/s within the central half of the
//! field of view (the prostate sits at the centre of a prostate protocol's field) and not in
//! the first or last slice; they do not overlap. Nothing here is anatomy-aware: the model
//! learns "a focal ADC drop in soft tissue", not prostate cancer.

use lightbox_ai::train::Random;
use lightbox_core::Volume;

use crate::AnalysisError;
use crate::bpmri::adc_unit_mm2_s;

/// One inserted lesion.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticLesion {
    /// Its centre, in voxels (x, y, z).
    pub centre: [f64; 3],
    /// In-plane semi-axes and through-plane radius, mm.
    pub radii_mm: [f64; 3],
    /// The lesion's ADC over the tissue's at its core.
    pub contrast: f64,
    /// Its label's volume, mL.
    pub volume_ml: f64,
}

/// An ADC map with synthetic lesions.
#[derive(Clone, Debug)]
pub struct SyntheticCase {
    pub adc: Volume<f32>,
    /// The n-th lesion's voxels hold n.
    pub labels: Volume<u8>,
    pub lesions: Vec<SyntheticLesion>,
}

/// `adc` with `count` lesions inserted (fewer when the tissue has no room). Deterministic for a
/// `seed`.
pub fn insert_lesions(adc: &Volume<f32>, count: usize, seed: u64) -> Result<SyntheticCase, AnalysisError> {
    let unit = adc_unit_mm2_s(adc)?;
    let [nx, ny, nz] = adc.dims();
    let spacing = adc.spacing_mm();
    let tissue = |v: f32| {
        let mm2 = f64::from(v) * unit;
        (0.9e-3..=2.2e-3).contains(&mm2)
    };
    let soft = |v: f32| {
        let mm2 = f64::from(v) * unit;
        (0.7e-3..=2.4e-3).contains(&mm2)
    };
    let candidates: Vec<[usize; 3]> = (1..nz.saturating_sub(1))
        .flat_map(|z| (ny / 4..ny - ny / 4).flat_map(move |y| (nx / 4..nx - nx / 4).map(move |x| [x, y, z])))
        .filter(|&[x, y, z]| tissue(adc.voxels()[(z * ny + y) * nx + x]))
        .collect();
    let mut random = Random::new(seed);
    let mut values = adc.voxels().to_vec();
    let mut labels = vec![0u8; values.len()];
    let mut lesions = Vec::new();
    let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
    for _ in 0..count.min(usize::from(u8::MAX)) {
        // A few tries for a place that does not touch an earlier lesion.
        for _ in 0..20 {
            let Some(&at) = candidates.get(random.below(candidates.len())) else { break };
            let radii = [random.range(3.0, 8.0), random.range(3.0, 8.0), random.range(3.0, 6.0)];
            let angle = random.range(0.0, std::f64::consts::PI);
            let contrast = random.range(0.4, 0.7);
            let reach = [0, 1, 2].map(|a| (radii[0].max(radii[1]).max(radii[2]) / spacing[a]).ceil() as i64 + 1);
            let centre = at.map(|c| c as f64);
            // Its voxels and their normalised radius.
            let mut inside = Vec::new();
            for dz in -reach[2]..=reach[2] {
                for dy in -reach[1]..=reach[1] {
                    for dx in -reach[0]..=reach[0] {
                        let (x, y, z) = (at[0] as i64 + dx, at[1] as i64 + dy, at[2] as i64 + dz);
                        if x < 0 || y < 0 || z < 0 || x >= nx as i64 || y >= ny as i64 || z >= nz as i64 {
                            continue;
                        }
                        let (px, py, pz) = (dx as f64 * spacing[0], dy as f64 * spacing[1], dz as f64 * spacing[2]);
                        let (u, v) = (px * angle.cos() + py * angle.sin(), -px * angle.sin() + py * angle.cos());
                        let r = ((u / radii[0]).powi(2) + (v / radii[1]).powi(2) + (pz / radii[2]).powi(2)).sqrt();
                        let i = (z as usize * ny + y as usize) * nx + x as usize;
                        if r < 1.0 && soft(adc.voxels()[i]) {
                            inside.push((i, r));
                        }
                    }
                }
            }
            // Keep a margin of one voxel from other lesions (labels only; the ramps may meet).
            if inside.iter().any(|&(i, _)| labels[i] > 0) || inside.is_empty() {
                continue;
            }
            let mut labelled = 0usize;
            for &(i, r) in &inside {
                let t = ((1.0 - r) / 0.3).clamp(0.0, 1.0);
                let ramp = t * t * (3.0 - 2.0 * t);
                values[i] = (f64::from(values[i]) * (1.0 - ramp * (1.0 - contrast))) as f32;
                if r <= 0.85 {
                    labels[i] = lesions.len() as u8 + 1;
                    labelled += 1;
                }
            }
            lesions.push(SyntheticLesion { centre, radii_mm: radii, contrast, volume_ml: labelled as f64 * voxel_ml });
            break;
        }
    }
    let err = |e: lightbox_core::VolumeError| AnalysisError::Input(e.to_string());
    Ok(SyntheticCase {
        adc: Volume::new(adc.dims(), values, adc.patient_from_voxel).map_err(err)?,
        labels: Volume::new(adc.dims(), labels, adc.patient_from_voxel).map_err(err)?,
        lesions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightbox_core::Affine3;

    fn uniform_adc() -> Volume<f32> {
        // 1.5 × 10⁻³ mm²/s stored in µm²/s, 0.7 × 0.7 × 3 mm voxels.
        let dims = [64, 64, 10];
        let mut grid = Affine3::IDENTITY;
        grid.rows[0][0] = 0.7;
        grid.rows[1][1] = 0.7;
        grid.rows[2][2] = 3.0;
        Volume::new(dims, vec![1500.0; 64 * 64 * 10], grid).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn lesions_lower_the_adc_inside_their_label_and_leave_the_rest() -> Result<(), AnalysisError> {
        let adc = uniform_adc();
        let SyntheticCase { adc: with, labels, lesions } = insert_lesions(&adc, 3, 7)?;
        assert_eq!(lesions.len(), 3);
        let labelled: Vec<f32> =
            with.voxels().iter().zip(labels.voxels()).filter(|(_, l)| **l > 0).map(|(v, _)| *v).collect();
        let worst_contrast = lesions.iter().map(|l| l.contrast).fold(0.0, f64::max);
        // Inside a label the ADC has dropped by more than half the contrast.
        assert!(labelled.iter().all(|&v| f64::from(v) < 1500.0 * (1.0 - 0.5 * (1.0 - worst_contrast))));
        let volume: f64 = lesions.iter().map(|l| l.volume_ml).sum();
        assert!((volume - labelled.len() as f64 * 0.7 * 0.7 * 3.0 / 1000.0).abs() < 1e-9);
        // Far from every lesion the map is untouched.
        assert_eq!(with.voxels()[0], 1500.0);
        // The same seed gives the same lesions; another seed others.
        assert_eq!(insert_lesions(&adc, 3, 7)?.lesions, lesions);
        assert_ne!(insert_lesions(&adc, 3, 8)?.lesions, lesions);
        Ok(())
    }

    #[test]
    fn no_tissue_in_range_means_no_lesion() -> Result<(), AnalysisError> {
        let adc = uniform_adc();
        let water = Volume::new(adc.dims(), vec![3000.0f32; adc.voxels().len()], adc.patient_from_voxel)
            .map_err(|e| AnalysisError::Input(e.to_string()))?;
        assert!(insert_lesions(&water, 2, 1)?.lesions.is_empty());
        Ok(())
    }
}
