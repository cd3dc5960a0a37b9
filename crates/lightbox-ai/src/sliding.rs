//! Sliding-window inference as nnU-Net v2 does it (`nnunetv2.inference.sliding_window_prediction`
//! and `predict_from_raw_data`): the image is padded to at least one patch, patches overlap by
//! half (steps spread evenly, rounded half to even like NumPy), each patch's prediction is
//! weighted by a Gaussian importance map (σ = patch / 8, truncated at 4σ like SciPy, zeros
//! raised to the smallest weight), optionally averaged over mirrored inputs, and the weighted sum
//! is divided by the summed weights.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::AiError;

/// Windows done so far, of how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Patch size, voxels (z, y, x).
    pub patch: [usize; 3],
    /// Step between windows as a fraction of the patch (nnU-Net: 0.5).
    pub step_fraction: f64,
    /// Spatial axes (0 = z, 1 = y, 2 = x) mirrored for test-time augmentation; every non-empty
    /// combination is predicted and averaged with the plain prediction.
    pub mirror_axes: Vec<usize>,
}

/// nnU-Net's `compute_steps_for_sliding_window`: where windows start along each axis.
pub fn steps(image: [usize; 3], patch: [usize; 3], step_fraction: f64) -> [Vec<usize>; 3] {
    [0, 1, 2].map(|a| {
        let (size, tile) = (image[a], patch[a].min(image[a]));
        let target = tile as f64 * step_fraction;
        let count = ((size - tile) as f64 / target).ceil() as usize + 1;
        let actual = if count > 1 { (size - tile) as f64 / (count - 1) as f64 } else { 0.0 };
        (0..count).map(|i| (actual * i as f64).round_ties_even() as usize).collect()
    })
}

/// nnU-Net's `compute_gaussian` (σ = patch / 8, SciPy's 4σ truncation, maximum 1 before the
/// zeros are raised to the smallest weight), x fastest.
pub fn gaussian(patch: [usize; 3]) -> Vec<f32> {
    let axis = |n: usize| -> Vec<f64> {
        let sigma = n as f64 / 8.0;
        let centre = (n / 2) as f64;
        let radius = (4.0 * sigma + 0.5).floor();
        // SciPy's kernel is normalised over its taps; the normalisation cancels in the maximum.
        let taps: f64 = (-(radius as i64)..=radius as i64).map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp()).sum();
        (0..n)
            .map(|i| {
                let x = i as f64 - centre;
                if x.abs() <= radius { (-0.5 * (x / sigma).powi(2)).exp() / taps } else { 0.0 }
            })
            .collect()
    };
    let (gz, gy, gx) = (axis(patch[0]), axis(patch[1]), axis(patch[2]));
    let mut map = Vec::with_capacity(gz.len() * gy.len() * gx.len());
    for z in &gz {
        for y in &gy {
            map.extend(gx.iter().map(|x| z * y * x));
        }
    }
    let max = map.iter().copied().fold(0.0, f64::max);
    map.iter_mut().for_each(|v| *v /= max);
    let min = map.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    map.into_iter().map(|v| if v > 0.0 { v as f32 } else { min as f32 }).collect()
}

impl SlidingWindow {
    pub fn new(patch: [usize; 3]) -> Self {
        Self { patch, step_fraction: 0.5, mirror_axes: Vec::new() }
    }

    /// How many network evaluations an image of `image` voxels takes.
    pub fn evaluations(&self, image: [usize; 3]) -> usize {
        let padded = [0, 1, 2].map(|a| image[a].max(self.patch[a]));
        steps(padded, self.patch, self.step_fraction).iter().map(Vec::len).product::<usize>()
            * (1 << self.mirror_axes.len())
    }

    /// The network's output over the whole image: `input` holds `dims` = `[channels, z, y, x]`
    /// (x fastest); `net` maps `[1, channels, patch]` to `[1, classes, patch]`. Returns the
    /// logits (`[classes, z, y, x]`) and their dims. `cancel` stops it between windows;
    /// `progress` hears after each.
    pub fn predict(
        &self,
        device: &Device,
        input: &[f32],
        dims: [usize; 4],
        net: &dyn Fn(Tensor<5>) -> Tensor<5>,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Vec<f32>, [usize; 4]), AiError> {
        let [channels, d, h, w] = dims;
        if input.len() != dims.iter().product::<usize>() || channels == 0 {
            return Err(AiError::Input(format!("{} values for dims {dims:?}", input.len())));
        }
        if self.patch.contains(&0)
            || self.mirror_axes.iter().any(|&a| a > 2)
            || !(self.step_fraction > 0.0 && self.step_fraction <= 1.0)
        {
            return Err(AiError::Input(format!(
                "patch {:?}, step {}, mirror axes {:?}: a patch of at least one voxel, a step in (0, 1], axes 0–2",
                self.patch, self.step_fraction, self.mirror_axes
            )));
        }
        // Pad to at least one patch, split evenly as nnU-Net's pad_nd_image does.
        let image = [d, h, w];
        let padded = [0, 1, 2].map(|a| image[a].max(self.patch[a]));
        let below = [0, 1, 2].map(|a| (padded[a] - image[a]) / 2);
        let [pd, ph, pw] = padded;
        let mut x = vec![0.0f32; channels * pd * ph * pw];
        for c in 0..channels {
            for z in 0..d {
                for y in 0..h {
                    let from = ((c * d + z) * h + y) * w;
                    let to = ((c * pd + z + below[0]) * ph + y + below[1]) * pw + below[2];
                    x[to..to + w].copy_from_slice(&input[from..from + w]);
                }
            }
        }
        let weights = gaussian(self.patch);
        let [sz, sy, sx] = steps(padded, self.patch, self.step_fraction);
        let [tz, ty, tx] = self.patch;
        let mirrors: Vec<Vec<usize>> = (1..(1usize << self.mirror_axes.len()))
            .map(|m| {
                self.mirror_axes.iter().enumerate().filter(|(i, _)| m >> i & 1 == 1).map(|(_, &a)| a + 2).collect()
            })
            .collect();
        let total = sz.len() * sy.len() * sx.len();
        let (mut sum, mut norm, mut classes, mut done) = (Vec::new(), vec![0.0f32; pd * ph * pw], 0usize, 0usize);
        for &z0 in &sz {
            for &y0 in &sy {
                for &x0 in &sx {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(AiError::Cancelled { done, total });
                    }
                    let mut patch = Vec::with_capacity(channels * tz * ty * tx);
                    for c in 0..channels {
                        for z in z0..z0 + tz {
                            for y in y0..y0 + ty {
                                let row = ((c * pd + z) * ph + y) * pw + x0;
                                patch.extend_from_slice(&x[row..row + tx]);
                            }
                        }
                    }
                    let tensor: Tensor<5> =
                        Tensor::from_data(TensorData::new(patch, [1, channels, tz, ty, tx]), device);
                    let flip = |mut t: Tensor<5>, axes: &[usize]| {
                        for &a in axes {
                            t = t.flip([a]);
                        }
                        t
                    };
                    let mut out = net(tensor.clone());
                    for axes in &mirrors {
                        out = out + flip(net(flip(tensor.clone(), axes)), axes);
                    }
                    let out = out / (mirrors.len() + 1) as f32;
                    let [_, k, oz, oy, ox] = out.dims();
                    if [oz, oy, ox] != self.patch {
                        return Err(AiError::Input(format!(
                            "the network returned {:?} for a {:?} patch",
                            [oz, oy, ox],
                            self.patch
                        )));
                    }
                    if classes == 0 {
                        classes = k;
                        sum = vec![0.0f32; k * pd * ph * pw];
                    }
                    let values = out.into_data().try_to_vec::<f32>().map_err(|e| AiError::Input(format!("{e:?}")))?;
                    for c in 0..classes {
                        for z in 0..tz {
                            for y in 0..ty {
                                let into = ((c * pd + z0 + z) * ph + y0 + y) * pw + x0;
                                let from = ((c * tz + z) * ty + y) * tx;
                                let g = (z * ty + y) * tx;
                                for i in 0..tx {
                                    sum[into + i] += values[from + i] * weights[g + i];
                                }
                            }
                        }
                    }
                    for z in 0..tz {
                        for y in 0..ty {
                            let into = ((z0 + z) * ph + y0 + y) * pw + x0;
                            let g = (z * ty + y) * tx;
                            for i in 0..tx {
                                norm[into + i] += weights[g + i];
                            }
                        }
                    }
                    done += 1;
                    progress(Progress { done, total });
                }
            }
        }
        // Crop the padding off and divide by the summed weights.
        let mut logits = Vec::with_capacity(classes * d * h * w);
        for c in 0..classes {
            for z in 0..d {
                for y in 0..h {
                    let at = ((z + below[0]) * ph + y + below[1]) * pw + below[2];
                    let from = c * pd * ph * pw + at;
                    logits.extend((0..w).map(|i| sum[from + i] / norm[at + i]));
                }
            }
        }
        Ok((logits, [classes, d, h, w]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_match_nnunet() {
        // nnU-Net: image 200, patch 128, step 0.5 → ceil(72/64)+1 = 3 steps, 36 apart; 300 →
        // ceil(172/64)+1 = 4 steps, 57.33 apart.
        assert_eq!(steps([200, 128, 300], [128, 128, 128], 0.5), [vec![0, 36, 72], vec![0], vec![0, 57, 115, 172]]);
        // Rounding half to even, as NumPy: 11 voxels, patch 6 → 3 steps 2.5 apart: 0, 2 (not 3), 5.
        assert_eq!(steps([11, 6, 6], [6, 6, 6], 0.5)[0], vec![0, 2, 5]);
    }

    #[test]
    fn the_gaussian_peaks_at_the_centre_and_never_reaches_zero() {
        let g = gaussian([8, 16, 16]);
        let at = |z: usize, y: usize, x: usize| g[(z * 16 + y) * 16 + x];
        assert_eq!(at(4, 8, 8), 1.0);
        assert!(g.iter().all(|&v| v > 0.0 && v <= 1.0));
        // σ = 2 voxels along x: one σ off the centre is e^-½ of the peak.
        assert!((at(4, 8, 10) - (-0.5f32).exp()).abs() < 1e-6);
        // Symmetric about the centre where both sides exist.
        assert!((at(4, 8, 5) - at(4, 8, 11)).abs() < 1e-7);
    }

    #[test]
    fn a_network_that_passes_its_input_through_gives_the_input_back() -> Result<(), AiError> {
        let device = Device::flex();
        let dims = [1, 9, 21, 13];
        let input: Vec<f32> = (0..dims.iter().product::<usize>()).map(|i| (i % 97) as f32 - 40.0).collect();
        let mut window = SlidingWindow::new([8, 8, 16]);
        window.mirror_axes = vec![0, 2];
        let cancel = AtomicBool::new(false);
        let mut seen = Vec::new();
        // Two classes: the input and its negative.
        let net = |t: Tensor<5>| Tensor::cat(vec![t.clone(), -t], 1);
        let (logits, out) = window.predict(&device, &input, dims, &net, &cancel, &mut |p| seen.push(p))?;
        assert_eq!(out, [2, 9, 21, 13]);
        let n = input.len();
        let worst = input.iter().zip(&logits[..n]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "off by {worst}");
        assert!(input.iter().zip(&logits[n..]).all(|(a, b)| (a + b).abs() < 1e-4));
        // z 9 (patch 8): 2 steps; y 21: ceil(13/4)+1 = 5; x 13, padded to 16: 1.
        assert_eq!(seen.last(), Some(&Progress { done: 10, total: 10 }));
        assert_eq!(window.evaluations([9, 21, 13]), 10 * 4);
        Ok(())
    }

    #[test]
    fn cancelling_stops_between_windows() {
        let device = Device::flex();
        let window = SlidingWindow::new([4, 4, 4]);
        let cancel = AtomicBool::new(false);
        let net = |t: Tensor<5>| {
            cancel.store(true, Ordering::Relaxed);
            t
        };
        let result = window.predict(&device, &[0.0; 8 * 8 * 8], [1, 8, 8, 8], &net, &cancel, &mut |_| {});
        assert!(matches!(result, Err(AiError::Cancelled { done: 1, total: 27 })), "{result:?}");
    }
}
