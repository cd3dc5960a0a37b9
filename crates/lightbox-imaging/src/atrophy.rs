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
//! 4. both are smoothed alike (σ 1.5 mm), so that every boundary spreads over a few voxels;
//! 5. each voxel of the baseline's brain mask counts as tissue by the fraction its intensity
//!    reaches into a window between CSF and grey matter (30 % to 70 % of the way between their
//!    means, from a three-class k-means; clipped to 0..1). The change of that soft tissue volume
//!    is the BSI summed over every tissue/CSF boundary (the brain's surface, sulci, ventricles);
//!    over the baseline's tissue volume it is the PBVC.
//!
//! A scan that does not cover the whole brain, or has slices thicker than 1.5 mm, gets a warning
//! with its number.
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
    /// Layers (voxels) by which the brain mask is grown for the integral (0: the mask itself,
    /// which a shrinking brain stays inside; growing it takes in dura and vessels).
    pub boundary_voxels: usize,
    /// The intensity window, as fractions of the way from the baseline's mean CSF intensity to
    /// its mean grey-matter intensity (three-class k-means inside the brain mask): below the
    /// lower end is CSF, above the upper end tissue.
    pub window: (f64, f64),
    /// Width (σ, mm) of the smooth field that matches the follow-up's intensities.
    pub bias_sigma_mm: f64,
    /// Both scans are smoothed alike (Gaussian, σ in mm) in the halfway space before the
    /// integral: it spreads each boundary over several voxels, so that the window sees every
    /// boundary's whole profile, and evens out the noise that interpolation left unevenly.
    pub smoothing_mm: f64,
    pub registration: RegistrationOptions,
}

impl Default for AtrophyOptions {
    fn default() -> Self {
        Self {
            boundary_voxels: 0,
            window: (0.3, 0.7),
            bias_sigma_mm: 20.0,
            smoothing_mm: 1.5,
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
    /// The baseline's mean CSF, grey and white matter intensities in the brain mask.
    pub tissue_means: [f64; 3],
    /// What makes the number less trustworthy (e.g. a brain cut by the field of view).
    pub warnings: Vec<String>,
}

/// The share of the mask's voxels that lie on the grid's outer faces above which the brain
/// counts as cut by the field of view.
const CUT_BRAIN_SHARE: f64 = 0.005;
/// Voxels thicker than this (mm) make the measurement unreliable: SIENA and the BSI are
/// validated on 3-D T1s of about 1 mm, and on 3 mm slices ours finds only 55–75 % of a
/// simulated change (tests/it/atrophy.rs).
pub const MAX_RELIABLE_SPACING_MM: f64 = 1.5;

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
    let mut warnings = Vec::new();
    if let Some(share) = border_share(baseline_brain).filter(|s| *s > CUT_BRAIN_SHARE) {
        warnings.push(format!(
            "the brain reaches the edge of the baseline's field of view ({:.1} % of its voxels lie on the outermost slices): the scan does not cover the whole brain, and a change at the cut is not measured",
            100.0 * share
        ));
    }
    for (scan, what) in [(baseline, "baseline"), (followup, "follow-up")] {
        let thickest = scan.spacing_mm().into_iter().fold(0.0, f64::max);
        if thickest > MAX_RELIABLE_SPACING_MM {
            warnings.push(format!(
                "the {what} has {thickest:.1} mm voxels: brain volume change needs a 3-D T1 of at most {MAX_RELIABLE_SPACING_MM} mm, and on thicker slices it is underestimated"
            ));
        }
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
    let means = tissue_means(base.voxels(), &mask).ok_or(ImagingError::NoContrast { what: "the baseline brain" })?;
    let [csf, grey, _] = means;
    let at = |f: f64| (csf + f * (grey - csf)) as f32;
    let (lo, hi) = (at(options.window.0), at(options.window.1));
    let follow = match_intensities(&base, &follow, &interior, options.bias_sigma_mm, grey as f32)?;
    let spacing = base.spacing_mm();
    let sigma = spacing.map(|s| options.smoothing_mm / s);
    let smooth = |v: &[f32]| -> Vec<f32> {
        gaussian_blur(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>(), dims, sigma)
            .into_iter()
            .map(|x| x as f32)
            .collect()
    };
    let (base, follow) = if options.smoothing_mm > 0.0 {
        (
            Volume::new(dims, smooth(base.voxels()), grid)
                .map_err(|_| ImagingError::DegenerateGeometry { what: "the halfway grid" })?,
            smooth(&follow),
        )
    } else {
        (base, follow)
    };
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
    let voxel_ml = crate::voxel_volume_ml(&grid);
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
        tissue_means: means,
        warnings,
    })
}

/// The share of the mask's voxels (non-zero) that lie on the grid's outer faces.
fn border_share(mask: &Volume<f32>) -> Option<f64> {
    let [nx, ny, nz] = mask.dims();
    let (mut on_border, mut total) = (0usize, 0usize);
    for (at, v) in mask.voxels().iter().enumerate() {
        if *v > 0.5 {
            let (i, j, k) = (at % nx, (at / nx) % ny, at / (nx * ny));
            total += 1;
            on_border += usize::from(i == 0 || j == 0 || k == 0 || i + 1 == nx || j + 1 == ny || k + 1 == nz);
        }
    }
    (total > 0).then(|| on_border as f64 / total as f64)
}

/// Mean intensities of CSF, grey and white matter inside `mask`: 1-D k-means with three
/// classes, started at the 10th, 50th and 90th percentiles. `None` when the mask is empty or has
/// no contrast.
fn tissue_means(values: &[f32], mask: &[bool]) -> Option<[f64; 3]> {
    let mut inside: Vec<f32> = values.iter().zip(mask).filter(|(_, m)| **m).map(|(v, _)| *v).collect();
    if inside.len() < 3 {
        return None;
    }
    inside.sort_by(f32::total_cmp);
    let at = |q: f64| f64::from(inside[((inside.len() - 1) as f64 * q) as usize]);
    let mut means = [at(0.1), at(0.5), at(0.9)];
    if means[2] <= means[0] {
        return None;
    }
    for _ in 0..30 {
        let cuts = [(means[0] + means[1]) / 2.0, (means[1] + means[2]) / 2.0];
        let mut sums = [0.0f64; 3];
        let mut counts = [0usize; 3];
        for &v in &inside {
            let v = f64::from(v);
            let class = usize::from(v >= cuts[0]) + usize::from(v >= cuts[1]);
            sums[class] += v;
            counts[class] += 1;
        }
        let next = [0, 1, 2].map(|c| if counts[c] > 0 { sums[c] / counts[c] as f64 } else { means[c] });
        if next == means {
            break;
        }
        means = next;
    }
    (means[0] < means[1] && means[1] < means[2]).then_some(means)
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
/// measured) is taken per block of a coarse grid (its median), smoothed by normalised
/// convolution (Gaussian of `sigma_mm`), and applied trilinearly.
fn match_intensities(
    base: &Volume<f32>,
    follow: &Volume<f32>,
    interior: &[bool],
    sigma_mm: f64,
    tissue: f32,
) -> Result<Vec<f32>, ImagingError> {
    let [nx, ny, nz] = base.dims();
    let spacing = base.spacing_mm();
    let scale = match (crate::median_inside(base.voxels(), interior), crate::median_inside(follow.voxels(), interior)) {
        (Some(b), Some(f)) if f > 0.0 => (b / f) as f32,
        _ => return Err(ImagingError::NoContrast { what: "the brain's interior" }),
    };
    // Blocks of about 4 mm.
    let factors = spacing.map(|s| ((4.0 / s).round() as usize).max(1));
    let coarse = [0, 1, 2].map(|a| base.dims()[a].div_ceil(factors[a]));
    let [cx, cy, cz] = coarse;
    // Per block, the median log ratio: a moved boundary makes its voxels' ratios lean one way,
    // and a median (unlike a mean) does not follow them.
    let mut blocks: Vec<Vec<f32>> = vec![Vec::new(); cx * cy * cz];
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let at = i + nx * (j + ny * k);
                let (b, f) = (base.voxels()[at], follow.voxels()[at]);
                if interior[at] && b > tissue && f * scale > tissue {
                    let c = i / factors[0] + cx * (j / factors[1] + cy * (k / factors[2]));
                    blocks[c].push((b / f).ln());
                }
            }
        }
    }
    let mut sums = vec![0.0f64; cx * cy * cz];
    let mut counts = vec![0.0f64; cx * cy * cz];
    for ((block, sum), count) in blocks.iter_mut().zip(&mut sums).zip(&mut counts) {
        if block.is_empty() {
            continue;
        }
        let n = block.len();
        let (_, median, _) = block.select_nth_unstable_by(n / 2, f32::total_cmp);
        *count = n as f64;
        *sum = f64::from(*median) * *count;
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

/// Separable Gaussian blur (σ in voxels per axis, truncated at 3σ, kernel summing to 1; beyond
/// the grid counts as 0, so a caller that needs true values at the edges divides two blurred
/// fields).
pub fn gaussian_blur(values: &[f64], dims: [usize; 3], sigma: [f64; 3]) -> Vec<f64> {
    let mut current = values.to_vec();
    let strides = [1, dims[0], dims[0] * dims[1]];
    for axis in 0..3 {
        let radius = (3.0 * sigma[axis]).ceil() as i64;
        if radius == 0 {
            continue;
        }
        let kernel: Vec<f64> = (-radius..=radius).map(|d| (-0.5 * (d as f64 / sigma[axis]).powi(2)).exp()).collect();
        let total: f64 = kernel.iter().sum();
        let kernel: Vec<f64> = kernel.iter().map(|w| w / total).collect();
        let n = dims[axis] as i64;
        let mut next = vec![0.0; current.len()];
        next.par_iter_mut().enumerate().for_each(|(at, out)| {
            let pos = ((at / strides[axis]) % dims[axis]) as i64;
            let mut acc = 0.0;
            for (w, d) in kernel.iter().zip(-radius..=radius) {
                let p = pos + d;
                if p >= 0 && p < n {
                    acc += w * current[(at as i64 + d * strides[axis] as i64) as usize];
                }
            }
            *out = acc;
        });
        current = next;
    }
    current
}

/// The scan after a known, smooth, brain-only atrophy, seen in another head position: the brain
/// (inside `brain`, non-zero = brain) shrinks by `loss_fraction` of its volume (0.01 = 1 %) by a
/// uniform scaling about its centroid, the scaling fading to none over the few millimetres of
/// CSF outside the brain so that the skull and scalp stay where they were; then the head moves by
/// `moving_from_fixed` (patient space; identity for none). One interpolation does both, as a
/// scanner would image the changed head once. The output is on the input's grid; its brain's
/// volume is exactly `(1 − loss_fraction)` times the original's.
pub fn simulate_atrophy(
    volume: &Volume<f32>,
    brain: &Volume<f32>,
    loss_fraction: f64,
    moving_from_fixed: &Affine3,
) -> Result<Volume<f32>, ImagingError> {
    if brain.dims() != volume.dims() {
        return Err(ImagingError::Mismatch { what: "the brain mask is not on the scan's grid" });
    }
    if !(0.0..0.5).contains(&loss_fraction) {
        return Err(ImagingError::Mismatch { what: "the simulated loss must be between 0 and 50 %" });
    }
    let [nx, ny, _] = volume.dims();
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
    // The scaling's weight: 1 on the brain and its partial-volume rim, fading to 0 within a few
    // millimetres outside it (a smoothed mask, σ 1.5 mm, times 2.5, clipped), so that CSF, not
    // the skull or dura, fills the space the brain leaves.
    let spacing = volume.spacing_mm();
    let smoothed = gaussian_blur(
        &mask.iter().map(|&m| f64::from(u8::from(m))).collect::<Vec<_>>(),
        volume.dims(),
        spacing.map(|s| 1.5 / s),
    );
    let weight: Vec<f32> = smoothed.iter().map(|g| (2.5 * g).clamp(0.0, 1.0) as f32).collect();
    let weight = Volume::new(volume.dims(), weight, volume.patient_from_voxel)
        .map_err(|_| ImagingError::DegenerateGeometry { what: "the scan" })?;
    let voxel_from_patient =
        volume.patient_from_voxel.inverse().ok_or(ImagingError::DegenerateGeometry { what: "the scan" })?;
    let to_original = voxel_from_patient.compose(moving_from_fixed).compose(&volume.patient_from_voxel);
    // A point p of the moved head shows what the original had at c + (p − c)/s in the brain.
    let scale = (1.0 - loss_fraction).cbrt();
    let stretch = 1.0 / scale - 1.0;
    let mut out = vec![0.0f32; volume.voxels().len()];
    out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (index, value) in slice.iter_mut().enumerate() {
            let (i, j) = (index % nx, index / nx);
            let p = to_original.transform_point([i as f64, j as f64, k as f64]);
            let w = sample_trilinear(&weight, p).map_or(0.0, f64::from);
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

    /// A head-like phantom: white matter inside grey matter (soft edges), CSF around it and a
    /// skull shell; the brain mask takes in a rim of CSF, as brain extraction does. Shrunk by a
    /// known fraction, the boundary shift integral finds the loss.
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
                    let inside = |radius: f64| (0.5 - (r - radius) / 2.0).clamp(0.0, 1.0);
                    // CSF 20, grey matter 100 within 20 mm, white matter 150 within 12 mm, a skull
                    // shell at 28–30 mm.
                    voxels[at] = (20.0
                        + 80.0 * inside(20.0)
                        + 50.0 * inside(12.0)
                        + if (28.0..30.0).contains(&r) { 150.0 } else { 0.0 }) as f32;
                    brain[at] = if r < 23.0 { 1.0 } else { 0.0 };
                }
            }
        }
        let scan = Volume::new([n; 3], voxels, affine).expect("grid");
        let brain = Volume::new([n; 3], brain, affine).expect("grid");
        let shrunk = simulate_atrophy(&scan, &brain, 0.02, &crate::RigidParams::default().to_affine([0.0; 3]))
            .expect("simulated");
        let options = AtrophyOptions { bias_sigma_mm: 30.0, ..AtrophyOptions::default() };
        let same = percent_brain_volume_change(&scan, &scan, &brain, &options).expect("measured");
        assert!(same.pbvc_percent.abs() < 1e-6, "{same:?}");
        let found = percent_brain_volume_change(&scan, &shrunk, &brain, &options).expect("measured");
        assert!((found.pbvc_percent + 2.0).abs() < 0.15, "found {found:?}, truth −2 %");
    }
}
