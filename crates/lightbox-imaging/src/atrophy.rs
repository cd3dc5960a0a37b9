//! Longitudinal brain atrophy: the percent brain volume change (PBVC) between two T1-weighted
//! scans of one patient, and the simulated atrophy that validates it.
//!
//! The measurement is a boundary shift integral (BSI; Freeborough & Fox 1997, with Lewis & Fox
//! 2004's differential bias correction) taken over the whole brain, in a halfway space as SIENA
//! does:
//! 1. the follow-up is registered rigidly onto the baseline (whole head: the skull, which does
//!    not shrink, anchors it), by normalised mutual information;
//! 2. both scans are resampled halfway, each moved by half the motion, so that both are
//!    interpolated alike;
//! 3. the follow-up's intensities are matched to the baseline's by a smooth field fitted to their
//!    ratio in clear tissue inside the brain (a global scale and a differential bias go);
//! 4. each voxel of the brain mask (dilated a little) counts as tissue by the fraction its
//!    intensity reaches into a window between CSF and grey matter (clipped to 0..1). The change
//!    of that soft tissue volume is the BSI summed over every tissue/CSF boundary (the brain's
//!    surface, sulci, ventricles); over the baseline's tissue volume it is the PBVC.
//!
//! A boundary profile that crosses the whole window and moves by δ changes the clipped sum by
//! exactly δ (the sum telescopes), so the integral holds for any sub-voxel shift, and a small
//! misregistration adds on one side what it takes on the other.

use lightbox_core::{Affine3, Volume};
use rayon::prelude::*;

use crate::morphology::{dilate, erode};
use crate::resample::{resample_into, sample_trilinear};
use crate::{ImagingError, RegistrationOptions, register_rigid};

#[derive(Clone, Debug)]
pub struct AtrophyOptions {
    /// Layers (voxels) by which the brain mask is grown, so that its surface's boundary lies
    /// wholly inside.
    pub boundary_voxels: usize,
    /// The intensity window as fractions of the baseline brain's median intensity: below the
    /// lower end is CSF, above the upper end tissue.
    pub window: (f64, f64),
    /// Width (σ, mm) of the smooth field that matches the follow-up's intensities.
    pub bias_sigma_mm: f64,
    pub registration: RegistrationOptions,
}

impl Default for AtrophyOptions {
    fn default() -> Self {
        Self {
            boundary_voxels: 2,
            window: (0.4, 0.7),
            bias_sigma_mm: 20.0,
            registration: RegistrationOptions { min_step_mm: 0.01, ..RegistrationOptions::default() },
        }
    }
}

/// The result of [`percent_brain_volume_change`].
#[derive(Clone, Debug)]
pub struct Atrophy {
    /// Percent brain volume change, follow-up against baseline (negative: loss).
    pub pbvc_percent: f64,
    /// The baseline's brain tissue volume (soft, see the module's description), mL.
    pub brain_ml: f64,
    /// The boundary shift integral: volume lost (positive) or gained, mL.
    pub boundary_shift_ml: f64,
    /// The follow-up's rigid motion relative to the baseline.
    pub rotation_deg: f64,
    pub translation_mm: [f64; 3],
    /// The intensity window used (baseline intensities).
    pub window: (f32, f32),
}

/// PBVC between two T1 scans of one head, `baseline_brain` the brain mask on the baseline's grid
/// (e.g. from brain extraction; non-zero = brain). See the module's description.
pub fn percent_brain_volume_change(
    baseline: &Volume<f32>,
    followup: &Volume<f32>,
    baseline_brain: &Volume<f32>,
    options: &AtrophyOptions,
) -> Result<Atrophy, ImagingError> {
    if baseline_brain.dims() != baseline.dims() {
        return Err(ImagingError::Mismatch { what: "the brain mask is not on the baseline's grid" });
    }
    let registration = register_rigid(baseline, followup, &options.registration)?;
    let half = half_rigid(&registration.moving_from_fixed)
        .ok_or(ImagingError::DegenerateGeometry { what: "the registration's motion" })?;
    let half_inverse = half.inverse().ok_or(ImagingError::DegenerateGeometry { what: "the registration's motion" })?;
    let (dims, grid) = (baseline.dims(), baseline.patient_from_voxel);
    // Halfway: a point h of the halfway space is H⁻¹(h) in the baseline and H(h) in the follow-up.
    let base = resample_into(baseline, dims, grid, &half_inverse, 0.0)?;
    let follow = resample_into(followup, dims, grid, &half, 0.0)?;
    let mask_values = resample_into(baseline_brain, dims, grid, &half_inverse, 0.0)?;
    let [nx, ny, nz] = dims;
    let order = [nz, ny, nx];
    let mask: Vec<bool> = mask_values.voxels().iter().map(|&v| v > 0.5).collect();
    let interior = erode(&mask, order, 3);
    let median = median_of(base.voxels(), &interior).ok_or(ImagingError::NoContrast { what: "the baseline brain" })?;
    let (lo, hi) = ((options.window.0 * median) as f32, (options.window.1 * median) as f32);
    let follow = match_intensities(&base, &follow, &interior, options.bias_sigma_mm, 1.2 * hi)?;
    let region = dilate(&mask, order, options.boundary_voxels);
    let tissue = |v: f32| f64::from(v.clamp(lo, hi) - lo) / f64::from(hi - lo);
    let (before, after) = base
        .voxels()
        .par_iter()
        .zip(follow.par_iter())
        .zip(region.par_iter())
        .filter(|(_, inside)| **inside)
        .map(|((b, f), _)| (tissue(*b), tissue(*f)))
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let voxel_ml = voxel_volume_mm3(&grid) / 1000.0;
    let brain_ml = before * voxel_ml;
    if brain_ml <= 0.0 {
        return Err(ImagingError::NoContrast { what: "the brain mask" });
    }
    let boundary_shift_ml = (before - after) * voxel_ml;
    Ok(Atrophy {
        pbvc_percent: -100.0 * boundary_shift_ml / brain_ml,
        brain_ml,
        boundary_shift_ml,
        rotation_deg: registration.params.angle_deg(),
        translation_mm: registration.params.translation_mm,
        window: (lo, hi),
    })
}

fn voxel_volume_mm3(a: &Affine3) -> f64 {
    let [x, y, z] = [a.axis(0), a.axis(1), a.axis(2)];
    (x[0] * (y[1] * z[2] - y[2] * z[1]) - x[1] * (y[0] * z[2] - y[2] * z[0]) + x[2] * (y[0] * z[1] - y[1] * z[0])).abs()
}

fn median_of(values: &[f32], mask: &[bool]) -> Option<f64> {
    let mut inside: Vec<f32> = values.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    if inside.is_empty() {
        return None;
    }
    let mid = inside.len() / 2;
    let (_, m, _) = inside.select_nth_unstable_by(mid, f32::total_cmp);
    Some(f64::from(*m))
}

/// The rigid motion that, applied twice, is `motion` (half the rotation about the same axis).
pub fn half_rigid(motion: &Affine3) -> Option<Affine3> {
    let r = motion.rows.map(|row| [row[0], row[1], row[2]]);
    let t = motion.translation();
    let cos = ((r[0][0] + r[1][1] + r[2][2] - 1.0) / 2.0).clamp(-1.0, 1.0);
    let angle = cos.acos();
    let half = if angle < 1e-12 {
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    } else {
        let s = 2.0 * angle.sin();
        if s.abs() < 1e-9 {
            return None; // a half turn: the axis is ambiguous (never a head's motion)
        }
        let axis = [(r[2][1] - r[1][2]) / s, (r[0][2] - r[2][0]) / s, (r[1][0] - r[0][1]) / s];
        rotation(axis, angle / 2.0)
    };
    // t_h solves R_h·t_h + t_h = t.
    let plus_identity = Affine3::from_columns(
        [half[0][0] + 1.0, half[1][0], half[2][0]],
        [half[0][1], half[1][1] + 1.0, half[2][1]],
        [half[0][2], half[1][2], half[2][2] + 1.0],
        [0.0; 3],
    );
    let th = plus_identity.inverse()?.transform_point(t);
    Some(Affine3::from_columns(
        [half[0][0], half[1][0], half[2][0]],
        [half[0][1], half[1][1], half[2][1]],
        [half[0][2], half[1][2], half[2][2]],
        th,
    ))
}

/// Rodrigues' rotation about a unit `axis` by `angle` radians.
fn rotation(axis: [f64; 3], angle: f64) -> [[f64; 3]; 3] {
    let [x, y, z] = axis;
    let (s, c) = angle.sin_cos();
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

/// The follow-up scaled by a smooth field so that its intensities match the baseline's: the
/// log ratio of voxels that are clearly tissue in both (inside `interior`, above `tissue` in the
/// baseline and, after a global scale, in the follow-up: no boundary, whose change is what is
/// measured) is averaged on a coarse grid, smoothed by normalised convolution (Gaussian of
/// `sigma_mm`), and applied trilinearly.
fn match_intensities(
    base: &Volume<f32>,
    follow: &Volume<f32>,
    interior: &[bool],
    sigma_mm: f64,
    tissue: f32,
) -> Result<Vec<f32>, ImagingError> {
    let [nx, ny, nz] = base.dims();
    let spacing = base.spacing_mm();
    let scale = match (median_of(base.voxels(), interior), median_of(follow.voxels(), interior)) {
        (Some(b), Some(f)) if f > 0.0 => (b / f) as f32,
        _ => return Err(ImagingError::NoContrast { what: "the brain's interior" }),
    };
    // Blocks of about 4 mm.
    let factors = spacing.map(|s| ((4.0 / s).round() as usize).max(1));
    let coarse = [0, 1, 2].map(|a| base.dims()[a].div_ceil(factors[a]));
    let [cx, cy, cz] = coarse;
    let mut sums = vec![0.0f64; cx * cy * cz];
    let mut counts = vec![0.0f64; cx * cy * cz];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let at = i + nx * (j + ny * k);
                let (b, f) = (base.voxels()[at], follow.voxels()[at]);
                if interior[at] && b > tissue && f * scale > tissue {
                    let c = i / factors[0] + cx * (j / factors[1] + cy * (k / factors[2]));
                    sums[c] += f64::from(b / f).ln();
                    counts[c] += 1.0;
                }
            }
        }
    }
    if counts.iter().sum::<f64>() < 1.0 {
        return Err(ImagingError::NoContrast { what: "the brain's interior" });
    }
    let sigma = [0, 1, 2].map(|a| sigma_mm / (spacing[a] * factors[a] as f64));
    let sums = gaussian_blur(&sums, coarse, sigma);
    let counts = gaussian_blur(&counts, coarse, sigma);
    let mean_log = {
        let (s, n) = (sums.iter().sum::<f64>(), counts.iter().sum::<f64>());
        s / n
    };
    let field: Vec<f32> = sums
        .iter()
        .zip(&counts)
        .map(|(s, n)| if *n > 1e-3 { (s / n).exp() as f32 } else { mean_log.exp() as f32 })
        .collect();
    // The coarse grid's voxel centres sit at the centres of the blocks.
    let coarse_grid =
        Volume::new(coarse, field, Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0; 3]))
            .map_err(|_| ImagingError::DegenerateGeometry { what: "the intensity field's grid" })?;
    let mut out = follow.voxels().to_vec();
    out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (index, value) in slice.iter_mut().enumerate() {
            let (i, j) = (index % nx, index / nx);
            let v = [
                (i as f64 + 0.5) / factors[0] as f64 - 0.5,
                (j as f64 + 0.5) / factors[1] as f64 - 0.5,
                (k as f64 + 0.5) / factors[2] as f64 - 0.5,
            ];
            let clamped = [0, 1, 2].map(|a| v[a].clamp(0.0, (coarse[a] - 1) as f64));
            *value *= sample_trilinear(&coarse_grid, clamped).unwrap_or(1.0);
        }
    });
    Ok(out)
}

/// Separable Gaussian blur (σ in voxels per axis, truncated at 3σ, edges renormalised by
/// zero-padding: the caller divides two blurred fields).
fn gaussian_blur(values: &[f64], dims: [usize; 3], sigma: [f64; 3]) -> Vec<f64> {
    let mut current = values.to_vec();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for axis in 0..3 {
        let radius = (3.0 * sigma[axis]).ceil() as i64;
        if radius == 0 {
            continue;
        }
        let kernel: Vec<f64> = (-radius..=radius).map(|d| (-0.5 * (d as f64 / sigma[axis]).powi(2)).exp()).collect();
        let n = dims[axis] as i64;
        let mut next = vec![0.0; current.len()];
        for (at, out) in next.iter_mut().enumerate() {
            let pos = ((at / strides[axis]) % dims[axis]) as i64;
            let mut acc = 0.0;
            for (w, d) in kernel.iter().zip(-radius..=radius) {
                let p = pos + d;
                if p >= 0 && p < n {
                    acc += w * current[(at as i64 + d * strides[axis] as i64) as usize];
                }
            }
            *out = acc;
        }
        current = next;
    }
    current
}

/// The scan after a known, smooth, brain-only atrophy: the brain (inside `brain`, non-zero =
/// brain) shrinks by `loss_fraction` of its volume (0.01 = 1 %) by a uniform scaling about its
/// centroid; the scaling fades to none over the few millimetres outside the brain, so the skull
/// and scalp stay where they were. Returns the atrophied scan on the same grid; its brain's
/// volume is exactly `(1 − loss_fraction)` times the original's.
pub fn simulate_atrophy(
    volume: &Volume<f32>,
    brain: &Volume<f32>,
    loss_fraction: f64,
) -> Result<Volume<f32>, ImagingError> {
    if brain.dims() != volume.dims() {
        return Err(ImagingError::Mismatch { what: "the brain mask is not on the scan's grid" });
    }
    if !(0.0..0.5).contains(&loss_fraction) {
        return Err(ImagingError::Mismatch { what: "the simulated loss must be between 0 and 50 %" });
    }
    let [nx, ny, nz] = volume.dims();
    let order = [nz, ny, nx];
    let mask: Vec<bool> = brain.voxels().iter().map(|&v| v > 0.5).collect();
    let count = mask.iter().filter(|m| **m).count();
    if count == 0 {
        return Err(ImagingError::NoContrast { what: "the brain mask" });
    }
    let mut centroid = [0.0f64; 3];
    for (at, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        let (i, j, k) = (at % nx, (at / nx) % ny, at / (nx * ny));
        centroid[0] += i as f64;
        centroid[1] += j as f64;
        centroid[2] += k as f64;
    }
    let centroid = centroid.map(|c| c / count as f64);
    // The scaling's weight: 1 on the brain and two voxels beyond (a shrinking brain only pulls
    // in from within), then down to 0 over four more layers.
    const FULL: usize = 2;
    const FADE: usize = 4;
    let mut weight: Vec<f32> = vec![0.0; mask.len()];
    let mut grown = mask.clone();
    for layer in 0..=FULL + FADE {
        if layer > 0 {
            grown = dilate(&grown, order, 1);
        }
        let w = if layer <= FULL { 1.0 } else { 1.0 - (layer - FULL) as f32 / (FADE + 1) as f32 };
        for (at, g) in grown.iter().enumerate() {
            if *g && weight[at] == 0.0 {
                weight[at] = w;
            }
        }
    }
    // A point x of the atrophied scan shows what the original had at c + (x − c)/s.
    let scale = (1.0 - loss_fraction).cbrt();
    let stretch = 1.0 / scale - 1.0;
    let mut out = volume.voxels().to_vec();
    out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (index, value) in slice.iter_mut().enumerate() {
            let (i, j) = (index % nx, index / nx);
            let w = f64::from(weight[index + nx * ny * k]);
            if w == 0.0 {
                continue;
            }
            let p = [i as f64, j as f64, k as f64];
            let from = [0, 1, 2].map(|a| p[a] + w * stretch * (p[a] - centroid[a]));
            if let Some(v) = sample_trilinear(volume, from) {
                *value = v;
            }
        }
    });
    Volume::new(volume.dims(), out, volume.patient_from_voxel)
        .map_err(|_| ImagingError::DegenerateGeometry { what: "the atrophied scan" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_of_a_rigid_motion_applied_twice_is_the_motion() {
        let motion = crate::RigidParams { rotation_rad: [0.05, -0.03, 0.08], translation_mm: [3.0, -2.0, 5.0] }
            .to_affine([10.0, 20.0, -5.0]);
        let half = half_rigid(&motion).expect("a small motion has a half");
        let twice = half.compose(&half);
        for (a, b) in twice.rows.iter().flatten().zip(motion.rows.iter().flatten()) {
            assert!((a - b).abs() < 1e-9, "{twice:?} != {motion:?}");
        }
    }

    /// A bright ball (tissue) in dark surroundings, shrunk by a known fraction: the boundary
    /// shift integral finds the loss, though the two scans differ by a motion and a scale.
    #[test]
    fn boundary_shift_measures_a_shrinking_ball() {
        let n = 64;
        let affine = Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0; 3]);
        let mut voxels = vec![0.0f32; n * n * n];
        let mut brain = vec![0.0f32; n * n * n];
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let r = [i, j, k].map(|c| c as f64 - 31.5).iter().map(|d| d * d).sum::<f64>().sqrt();
                    let at = i + n * (j + n * k);
                    // Tissue inside 20 mm (soft edge), a skull shell at 26–28 mm.
                    voxels[at] = (100.0 * (0.5 - (r - 20.0) / 2.0).clamp(0.0, 1.0)
                        + 20.0
                        + if (26.0..28.0).contains(&r) { 150.0 } else { 0.0 }) as f32;
                    brain[at] = if r < 21.0 { 1.0 } else { 0.0 };
                }
            }
        }
        let scan = Volume::new([n; 3], voxels, affine).expect("grid");
        let brain = Volume::new([n; 3], brain, affine).expect("grid");
        let shrunk = simulate_atrophy(&scan, &brain, 0.02).expect("simulated");
        let options = AtrophyOptions { bias_sigma_mm: 30.0, ..AtrophyOptions::default() };
        let same = percent_brain_volume_change(&scan, &scan, &brain, &options).expect("measured");
        assert!(same.pbvc_percent.abs() < 1e-6, "{same:?}");
        let found = percent_brain_volume_change(&scan, &shrunk, &brain, &options).expect("measured");
        assert!((found.pbvc_percent + 2.0).abs() < 0.15, "found {found:?}, truth −2 %");
    }
}
