//! New and enlarging MS lesions between two FLAIR scans: the subtraction-and-threshold baseline
//! that issue 9 asks for (a lesion that appeared or grew is brighter in the follow-up).
//!
//! Both scans must already be on one grid (the caller registers and resamples them). Then:
//! 1. each is scaled by its median inside the brain mask, and smoothed alike (σ in mm);
//! 2. the difference, follow-up − baseline, is compared with its own spread inside the brain (the
//!    median absolute deviation, scaled to a standard deviation): a voxel is a candidate where the
//!    difference exceeds `threshold_sd` of it and the follow-up is hyperintense (above
//!    `min_hyperintensity` times the brain's median);
//! 3. candidates are grouped into lesions (26-connected), and lesions smaller than
//!    `min_volume_mm3` are dropped;
//! 4. a lesion is *enlarging* when at least `existing_fraction` of it was already hyperintense
//!    in the baseline (above `existing_hyperintensity` times the brain's median: a lesion was
//!    there and grew), else *new*.

use lightbox_core::Volume;

use crate::atrophy::gaussian_blur;
use crate::morphology::components;
use crate::{ImagingError, median_inside};

#[derive(Clone, Debug)]
pub struct LesionChangeOptions {
    pub smoothing_mm: f64,
    pub threshold_sd: f64,
    pub min_hyperintensity: f64,
    pub min_volume_mm3: f64,
    pub existing_hyperintensity: f64,
    pub existing_fraction: f64,
    /// The outer rim of the brain mask left out of the search, in mm of the thickest voxel
    /// spacing (at least one voxel layer, the same number of layers along every axis): at the
    /// brain's surface a half-voxel misregistration looks like change.
    pub edge_margin_mm: f64,
}

impl Default for LesionChangeOptions {
    fn default() -> Self {
        Self {
            smoothing_mm: 1.0,
            threshold_sd: 5.0,
            min_hyperintensity: 1.1,
            min_volume_mm3: 15.0,
            existing_hyperintensity: 1.3,
            existing_fraction: 0.2,
            edge_margin_mm: 3.0,
        }
    }
}

/// One new or enlarging lesion.
#[derive(Clone, Debug)]
pub struct ChangedLesion {
    pub volume_ml: f64,
    /// Its centre in patient coordinates (mm).
    pub centre_mm: [f64; 3],
    /// The largest normalised increase inside it (follow-up − baseline, in brain medians).
    pub peak_increase: f32,
    /// Part of it was a lesion in the baseline already (it grew); else it is new.
    pub enlarging: bool,
}

#[derive(Clone, Debug)]
pub struct LesionChange {
    /// On the scans' grid: true where a new or enlarging lesion is.
    pub mask: Vec<bool>,
    /// On the scans' grid: 0, or `k` where lesion `lesions[k - 1]` is.
    pub lesion_of: Vec<u32>,
    pub lesions: Vec<ChangedLesion>,
    /// The robust spread (SD from the median absolute deviation) of the normalised difference
    /// inside the brain: the noise the threshold is measured in.
    pub difference_sd: f32,
}

/// New and enlarging lesions from `baseline` to `followup` (FLAIRs on one grid) inside `brain`
/// (non-zero = brain, same grid). See the module's description.
pub fn subtraction_change(
    baseline: &Volume<f32>,
    followup: &Volume<f32>,
    brain: &Volume<f32>,
    options: &LesionChangeOptions,
) -> Result<LesionChange, ImagingError> {
    let dims = baseline.dims();
    if followup.dims() != dims || brain.dims() != dims {
        return Err(ImagingError::Mismatch { what: "the two scans and the brain mask must be on one grid" });
    }
    let inside: Vec<bool> = brain.voxels().iter().map(|&v| v > 0.5).collect();
    let [nx, ny, nz] = dims;
    let thickest = baseline.spacing_mm().into_iter().fold(0.0, f64::max);
    let rim = (options.edge_margin_mm / thickest.max(1e-6)).round().max(1.0) as usize;
    let searched = crate::morphology::erode(&inside, [nz, ny, nx], rim);
    let sigma = baseline.spacing_mm().map(|s| options.smoothing_mm / s);
    let normalised = |v: &Volume<f32>, what: &'static str| -> Result<Vec<f32>, ImagingError> {
        let median =
            median_inside(v.voxels(), &inside).filter(|m| *m > 0.0).ok_or(ImagingError::NoContrast { what })?;
        let smooth = gaussian_blur(&v.voxels().iter().map(|&x| f64::from(x) / median).collect::<Vec<_>>(), dims, sigma);
        Ok(smooth.into_iter().map(|x| x as f32).collect())
    };
    let before = normalised(baseline, "the baseline inside the brain")?;
    let after = normalised(followup, "the follow-up inside the brain")?;
    let difference: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let centre = median_inside(&difference, &inside).unwrap_or(0.0) as f32;
    let deviations: Vec<f32> = difference.iter().map(|d| (d - centre).abs()).collect();
    let sd = 1.4826 * median_inside(&deviations, &inside).unwrap_or(0.0) as f32;
    if sd <= 0.0 {
        return Err(ImagingError::NoContrast { what: "the difference of the two scans" });
    }
    let candidate: Vec<bool> = (0..difference.len())
        .map(|i| {
            searched[i]
                && difference[i] - centre > options.threshold_sd as f32 * sd
                && f64::from(after[i]) > options.min_hyperintensity
        })
        .collect();
    let (labels, sizes) = components(&candidate, [nz, ny, nx], 26);
    let voxel_mm3 = crate::voxel_volume_ml(&baseline.patient_from_voxel) * 1000.0;
    let keep: Vec<bool> = sizes.iter().map(|&n| n as f64 * voxel_mm3 >= options.min_volume_mm3).collect();
    // Kept lesions numbered 1.. in the order found.
    let number: Vec<u32> = keep
        .iter()
        .scan(0u32, |n, &k| {
            *n += u32::from(k);
            Some(if k { *n } else { 0 })
        })
        .collect();
    let mut sums = vec![([0.0f64; 3], 0.0f32, 0usize); sizes.len()];
    let mut mask = vec![false; candidate.len()];
    let mut lesion_of = vec![0u32; candidate.len()];
    for (at, &label) in labels.iter().enumerate() {
        if label == 0 || !keep[label as usize - 1] {
            continue;
        }
        mask[at] = true;
        lesion_of[at] = number[label as usize - 1];
        let (i, j, k) = (at % nx, (at / nx) % ny, at / (nx * ny));
        let entry = &mut sums[label as usize - 1];
        for (c, v) in [i, j, k].into_iter().enumerate() {
            entry.0[c] += v as f64;
        }
        entry.1 = entry.1.max(difference[at] - centre);
        entry.2 += usize::from(f64::from(before[at]) > options.existing_hyperintensity);
    }
    let lesions = sums
        .iter()
        .zip(&sizes)
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|((sum, &n), _)| ChangedLesion {
            volume_ml: n as f64 * voxel_mm3 / 1000.0,
            centre_mm: baseline.patient_from_voxel.transform_point(sum.0.map(|c| c / n as f64)),
            peak_increase: sum.1,
            enlarging: sum.2 as f64 >= options.existing_fraction * n as f64,
        })
        .collect();
    Ok(LesionChange { mask, lesion_of, lesions, difference_sd: sd })
}

/// A scan and where it lies: `from_grid` maps patient positions of the common grid to this
/// scan's patient positions (identity for the scan that defines the grid; a registration's
/// `moving_from_fixed` for the other).
#[derive(Clone, Copy)]
pub struct Placed<'a> {
    pub volume: &'a Volume<f32>,
    pub from_grid: lightbox_core::Affine3,
}

/// How [`matched_change`] matched the two scans' through-plane resolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matching {
    /// Which scan was blurred (the one with thinner slices): the baseline (true) or the
    /// follow-up; neither when `sigma_mm` is 0.
    pub baseline_blurred: bool,
    /// The Gaussian's σ along that scan's slice axis, mm.
    pub sigma_mm: f64,
    /// The difference's robust SD without matching and with it (brain medians).
    pub spread_before: f32,
    pub spread_after: f32,
}

/// σ tried along the slice axis, mm.
const MATCHING_SIGMAS_MM: [f64; 9] = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2];

/// [`subtraction_change`] of two scans with different slice thickness, after matching their
/// through-plane resolution: a scan with thin slices shows the edges of the brain sharper than
/// one with thick slices, and the subtraction sees those edges as change. The scan with the
/// thinner slices (voxel axis 2) is blurred along them, in its own grid, by the σ of
/// `MATCHING_SIGMAS_MM` that makes the two most alike: the smallest robust spread of their
/// difference inside the brain. No lesion truth is used. Both scans are then resampled onto the
/// grid (`dims`, `grid`) of `brain`.
pub fn matched_change(
    baseline: Placed<'_>,
    followup: Placed<'_>,
    brain: &Volume<f32>,
    options: &LesionChangeOptions,
) -> Result<(LesionChange, Matching), ImagingError> {
    let (dims, grid) = (brain.dims(), brain.patient_from_voxel);
    let place = |p: &Placed<'_>, v: &Volume<f32>| crate::resample_into(v, dims, grid, &p.from_grid, 0.0);
    let slice = |v: &Volume<f32>| v.spacing_mm()[2];
    let (tb, tf) = (slice(baseline.volume), slice(followup.volume));
    // Slices within 10 % of each other: nothing to match.
    let blur_baseline = tb < tf;
    let matching = (tb - tf).abs() > 0.1 * tb.max(tf);
    let (sharp, other) = if blur_baseline { (baseline, followup) } else { (followup, baseline) };
    let other_placed = place(&other, other.volume)?;
    let blurred = |sigma_mm: f64| -> Result<Volume<f32>, ImagingError> {
        let v = sharp.volume;
        let values: Vec<f64> = v.voxels().iter().map(|&x| f64::from(x)).collect();
        let smooth = gaussian_blur(&values, v.dims(), [0.0, 0.0, sigma_mm / slice(v)]);
        let volume = Volume::new(v.dims(), smooth.into_iter().map(|x| x as f32).collect(), v.patient_from_voxel)
            .map_err(|_| ImagingError::Mismatch { what: "a blurred scan's voxels" })?;
        place(&sharp, &volume)
    };
    let run = |sigma_mm: f64| -> Result<LesionChange, ImagingError> {
        let sharp_placed = if sigma_mm > 0.0 { blurred(sigma_mm)? } else { place(&sharp, sharp.volume)? };
        let (b, f) = if blur_baseline { (&sharp_placed, &other_placed) } else { (&other_placed, &sharp_placed) };
        subtraction_change(b, f, brain, options)
    };
    let plain = run(0.0)?;
    let spread_before = plain.difference_sd;
    let mut best = (plain, 0.0);
    if matching {
        for &sigma in &MATCHING_SIGMAS_MM[1..] {
            let change = run(sigma)?;
            if change.difference_sd < best.0.difference_sd {
                best = (change, sigma);
            }
        }
    }
    let (change, sigma_mm) = best;
    let spread_after = change.difference_sd;
    Ok((change, Matching { baseline_blurred: blur_baseline && sigma_mm > 0.0, sigma_mm, spread_before, spread_after }))
}
