//! Brain tissue classes on a T1 (CSF, grey and white matter) with partial-volume fractions, the
//! way FSL FAST approaches it, kept small:
//! 1. a three-class Gaussian mixture of the intensities inside the brain mask, fitted by EM on a
//!    histogram (started from a k-means);
//! 2. hard labels regularised by a Markov random field: iterated conditional modes with a Potts
//!    prior over the 6 face neighbours (`beta`);
//! 3. partial-volume fractions where labels meet: a voxel whose face neighbours share its label is
//!    pure; on a boundary, a linear mixing model gives the fractions (an intensity between two
//!    adjacent class means is that mixture of the two, clipped to pure classes beyond the
//!    outermost means), unless it disagrees with the MRF label by more than one class (e.g. a
//!    CSF label on a grey-white intensity), where the label wins.
//!
//! No bias-field correction is done here: the input must be free of strong intensity
//! non-uniformity (or corrected first).

use lightbox_core::Volume;

use crate::ImagingError;

#[derive(Clone, Debug)]
pub struct TissueOptions {
    pub em_iterations: usize,
    /// Weight of the neighbours' agreement against the intensity's likelihood.
    pub beta: f64,
    pub icm_passes: usize,
}

impl Default for TissueOptions {
    fn default() -> Self {
        Self { em_iterations: 50, beta: 0.5, icm_passes: 3 }
    }
}

/// The classes, in order of T1 intensity.
pub const CLASSES: [&str; 3] = ["CSF", "grey matter", "white matter"];

#[derive(Clone, Debug)]
pub struct Tissues {
    /// Per voxel, the fraction of CSF, grey and white matter (0 outside the mask).
    pub fractions: [Vec<f32>; 3],
    /// Per voxel: 0 outside the mask, 1 CSF, 2 grey, 3 white matter.
    pub labels: Vec<u8>,
    pub means: [f64; 3],
    pub sds: [f64; 3],
    /// Volumes of CSF, grey and white matter from the fractions, mL.
    pub volumes_ml: [f64; 3],
    /// The brain mask's volume, mL.
    pub mask_ml: f64,
}

/// Classifies the voxels of `volume` inside `brain` (non-zero = brain, same grid).
pub fn classify(volume: &Volume<f32>, brain: &Volume<f32>, options: &TissueOptions) -> Result<Tissues, ImagingError> {
    if brain.dims() != volume.dims() {
        return Err(ImagingError::Mismatch { what: "the brain mask is not on the scan's grid" });
    }
    let inside: Vec<bool> = brain.voxels().iter().map(|&v| v > 0.5).collect();
    // Zero is padding or air, not tissue: it stays out of the fit (and counts as CSF below).
    let values: Vec<f32> =
        volume.voxels().iter().zip(&inside).filter(|(v, m)| **m && **v > 0.0).map(|(v, _)| *v).collect();
    if values.len() < 100 {
        return Err(ImagingError::NoContrast { what: "the brain mask" });
    }
    let (means, sds, weights) = fit_mixture(&values, options.em_iterations)?;
    let log_likelihood = |v: f32, k: usize| {
        let z = (f64::from(v) - means[k]) / sds[k];
        weights[k].ln() - sds[k].ln() - 0.5 * z * z
    };
    // Maximum likelihood labels, then ICM passes with the Potts prior.
    let voxels = volume.voxels();
    let mut labels: Vec<u8> = voxels
        .iter()
        .zip(&inside)
        .map(|(&v, &m)| if m { 1 + best(|k| log_likelihood(v, k)) as u8 } else { 0 })
        .collect();
    let [nx, ny, nz] = volume.dims();
    for _ in 0..options.icm_passes {
        let previous = labels.clone();
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let at = i + nx * (j + ny * k);
                    if !inside[at] {
                        continue;
                    }
                    let mut agree = [0.0f64; 3];
                    let mut count = |n: usize| {
                        let l = previous[n];
                        if l > 0 {
                            agree[l as usize - 1] += 1.0;
                        }
                    };
                    if i > 0 {
                        count(at - 1);
                    }
                    if i + 1 < nx {
                        count(at + 1);
                    }
                    if j > 0 {
                        count(at - nx);
                    }
                    if j + 1 < ny {
                        count(at + nx);
                    }
                    if k > 0 {
                        count(at - nx * ny);
                    }
                    if k + 1 < nz {
                        count(at + nx * ny);
                    }
                    labels[at] = 1 + best(|c| log_likelihood(voxels[at], c) + options.beta * agree[c]) as u8;
                }
            }
        }
    }
    let mut fractions = [vec![0.0f32; voxels.len()], vec![0.0f32; voxels.len()], vec![0.0f32; voxels.len()]];
    // Partial volume lives at boundaries: a voxel whose face neighbours all share its label is
    // pure; one on a boundary between labels is a mixture.
    let on_boundary = |at: usize| {
        let (i, j, k) = (at % nx, (at / nx) % ny, at / (nx * ny));
        let l = labels[at];
        let differs = |n: usize| labels[n] != l && labels[n] != 0;
        (i > 0 && differs(at - 1))
            || (i + 1 < nx && differs(at + 1))
            || (j > 0 && differs(at - nx))
            || (j + 1 < ny && differs(at + nx))
            || (k > 0 && differs(at - nx * ny))
            || (k + 1 < nz && differs(at + nx * ny))
    };
    for (at, &label) in labels.iter().enumerate() {
        if label == 0 {
            continue;
        }
        if !on_boundary(at) {
            fractions[label as usize - 1][at] = 1.0;
            continue;
        }
        let mut f = mixing(f64::from(voxels[at]), means);
        let dominant = best(|c| f[c]);
        if (dominant as i64 - (label as i64 - 1)).abs() > 1 {
            f = [0.0; 3];
            f[label as usize - 1] = 1.0;
        }
        for c in 0..3 {
            fractions[c][at] = f[c] as f32;
        }
    }
    let voxel_ml = crate::voxel_volume_ml(&volume.patient_from_voxel);
    let volumes_ml = [0, 1, 2].map(|c| fractions[c].iter().map(|&f| f64::from(f)).sum::<f64>() * voxel_ml);
    let mask_ml = inside.iter().filter(|m| **m).count() as f64 * voxel_ml;
    Ok(Tissues { fractions, labels, means, sds, volumes_ml, mask_ml })
}

/// The index of the largest of three scores.
fn best(score: impl Fn(usize) -> f64) -> usize {
    let s = [score(0), score(1), score(2)];
    if s[0] >= s[1] && s[0] >= s[2] {
        0
    } else if s[1] >= s[2] {
        1
    } else {
        2
    }
}

/// Fractions of the three classes for intensity `v` under linear mixing of adjacent classes.
fn mixing(v: f64, means: [f64; 3]) -> [f64; 3] {
    if v <= means[0] {
        [1.0, 0.0, 0.0]
    } else if v < means[1] {
        let t = (v - means[0]) / (means[1] - means[0]);
        [1.0 - t, t, 0.0]
    } else if v < means[2] {
        let t = (v - means[1]) / (means[2] - means[1]);
        [0.0, 1.0 - t, t]
    } else {
        [0.0, 0.0, 1.0]
    }
}

/// A three-class 1-D Gaussian mixture by EM on a 512-bin histogram of `values` (between their
/// 0.5 and 99.5 % quantiles), started from a k-means. Returns means, SDs and weights, ordered by
/// mean.
/// Means, SDs and weights of the three classes.
type Mixture = ([f64; 3], [f64; 3], [f64; 3]);

fn fit_mixture(values: &[f32], iterations: usize) -> Result<Mixture, ImagingError> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let q = |p: f64| f64::from(sorted[((sorted.len() - 1) as f64 * p) as usize]);
    let (lo, hi) = (q(0.005), q(0.995));
    if hi <= lo {
        return Err(ImagingError::NoContrast { what: "the brain's intensities" });
    }
    const BINS: usize = 512;
    let width = (hi - lo) / BINS as f64;
    let mut counts = [0.0f64; BINS];
    for &v in values {
        let b = ((f64::from(v) - lo) / width).floor();
        if (0.0..BINS as f64).contains(&b) {
            counts[b as usize] += 1.0;
        }
    }
    let centre = |b: usize| lo + (b as f64 + 0.5) * width;
    // k-means start.
    let mut means = [q(0.1), q(0.5), q(0.9)];
    for _ in 0..30 {
        let mut s = [0.0; 3];
        let mut n = [0.0; 3];
        for (b, &c) in counts.iter().enumerate() {
            let v = centre(b);
            let k = best(|k| -(v - means[k]).abs());
            s[k] += c * v;
            n[k] += c;
        }
        means = [0, 1, 2].map(|k| if n[k] > 0.0 { s[k] / n[k] } else { means[k] });
    }
    let mut sds = [(hi - lo) / 6.0; 3];
    let mut weights = [1.0 / 3.0; 3];
    for _ in 0..iterations {
        let mut s0 = [0.0f64; 3];
        let mut s1 = [0.0f64; 3];
        let mut s2 = [0.0f64; 3];
        for (b, &c) in counts.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let v = centre(b);
            let p = [0, 1, 2].map(|k| weights[k] / sds[k] * (-0.5 * ((v - means[k]) / sds[k]).powi(2)).exp());
            let total: f64 = p.iter().sum();
            if total <= 0.0 {
                continue;
            }
            for k in 0..3 {
                let r = c * p[k] / total;
                s0[k] += r;
                s1[k] += r * v;
                s2[k] += r * v * v;
            }
        }
        let n: f64 = s0.iter().sum();
        for k in 0..3 {
            if s0[k] > 1e-9 {
                means[k] = s1[k] / s0[k];
                // At least 2 % of the range: a spike of equal values must not take a class.
                let floor = ((hi - lo) / 50.0).powi(2).max(1e-12);
                sds[k] = (s2[k] / s0[k] - means[k] * means[k]).max(floor).sqrt();
                weights[k] = (s0[k] / n).max(1e-6);
            }
        }
    }
    let mut order = [0, 1, 2];
    order.sort_by(|a, b| means[*a].total_cmp(&means[*b]));
    Ok((order.map(|k| means[k]), order.map(|k| sds[k]), order.map(|k| weights[k])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lightbox_core::Affine3;

    #[test]
    fn three_slabs_with_noise_are_classified_and_measured() {
        // Three slabs along x (CSF 30, GM 80, WM 120), noise of SD 4, 1 mm voxels.
        let (nx, ny, nz) = (30, 20, 20);
        let mut state = 12345u64;
        let mut noise = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 4.0 * 12f64.sqrt()
        };
        let voxels: Vec<f32> =
            (0..nx * ny * nz).map(|at| [30.0, 80.0, 120.0][(at % nx) / 10] as f32 + noise() as f32).collect();
        let affine = Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0; 3]);
        let scan = Volume::new([nx, ny, nz], voxels, affine).expect("grid");
        let brain = Volume::new([nx, ny, nz], vec![1.0; nx * ny * nz], affine).expect("grid");
        let t = classify(&scan, &brain, &TissueOptions::default()).expect("classified");
        for (found, truth) in t.means.iter().zip([30.0, 80.0, 120.0]) {
            assert!((found - truth).abs() < 2.0, "means {:?}", t.means);
        }
        // Each slab is 4 mL; the fractions of noisy pure voxels spread a little.
        for (c, v) in t.volumes_ml.iter().enumerate() {
            assert!((v - 4.0).abs() < 0.25, "{}: {v} mL of 4", CLASSES[c]);
        }
        let right = t.labels.iter().enumerate().filter(|(at, l)| **l as usize == 1 + (at % nx) / 10).count();
        assert!(right as f64 > 0.99 * t.labels.len() as f64, "{right} of {} labels right", t.labels.len());
    }
}
