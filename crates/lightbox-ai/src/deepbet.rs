//! Brain extraction with deepbet 1.0.2 (Fisch et al., "deepbet: Fast brain extraction of T1-weighted
//! MRI using Convolutional Neural Networks", 2024; MIT licence), its preprocessing ported from
//! `deepbet/bet.py` (`BrainExtraction.run`, `run_model`, `postprocess`) and `deepbet/utils.py`:
//! 1. the volume in nibabel's closest canonical (RAS) orientation, NaN → 0;
//! 2. resized to 128³ (PyTorch's nearest-exact, by shape: spacing is ignored), intensities
//!    clipped to its 0.5–99.5 % quantiles and standardised (`0.226·z + 0.449`);
//! 3. the bounding-box network; its mask (> 0.5, largest 26-connected component) gives the
//!    brain's box, grown by 10 % on each side;
//! 4. the box resized to 256³, normalised with the same quantiles, the brain network;
//! 5. its probability resized back into the box, > threshold, largest component and filled
//!    holes inside the box;
//! 6. the mask back in the volume's own orientation; the intracranial volume in mL.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorData;
use lightbox_core::{Affine3, Volume};
use lightbox_imaging::morphology;

use crate::linknet::LinkNet3d;
use crate::{AiDevice, AiError, Progress};

/// The two networks and the device they run on.
pub struct Deepbet {
    bbox: LinkNet3d,
    brain: LinkNet3d,
    pub device: AiDevice,
}

/// The brain mask on the input's grid, the intracranial volume and how long the steps took.
#[derive(Clone, Debug)]
pub struct BrainMask {
    pub mask: Volume<u8>,
    pub tiv_ml: f64,
    pub seconds: f64,
}

impl BrainMask {
    /// The mask as a float volume (1 in the brain), as the image processing takes masks.
    pub fn mask_f32(&self) -> Volume<f32> {
        let voxels = self.mask.voxels().iter().map(|&m| f32::from(m)).collect();
        Volume::new(self.mask.dims(), voxels, self.mask.patient_from_voxel)
            .unwrap_or_else(|_| unreachable!("the same grid as a valid volume"))
    }
}

/// A volume's voxels in the closest RAS orientation, C order (the last axis fastest), as
/// nibabel's `as_closest_canonical(...).get_fdata()` gives them to PyTorch.
struct Canonical {
    /// Voxel axis of the volume for RAS axis 0, 1, 2, and whether it runs backwards.
    axis: [usize; 3],
    flip: [bool; 3],
    dims: [usize; 3],
}

impl Canonical {
    fn of(patient_from_voxel: &Affine3, vdims: [usize; 3]) -> Self {
        // RAS direction of each voxel axis: LPS with x and y negated.
        let col = |c: usize| {
            let a = patient_from_voxel.axis(c);
            [-a[0], -a[1], a[2]]
        };
        let m = [col(0), col(1), col(2)];
        // Greedy: the largest |component| first, each voxel axis and each RAS axis once.
        let (mut axis, mut flip, mut used_v, mut used_w) = ([0; 3], [false; 3], [false; 3], [false; 3]);
        for _ in 0..3 {
            let mut best = (0usize, 0usize, -1.0f64);
            for (v, column) in m.iter().enumerate() {
                for (w, value) in column.iter().enumerate() {
                    if !used_v[v] && !used_w[w] && value.abs() > best.2 {
                        best = (v, w, value.abs());
                    }
                }
            }
            let (v, w, _) = best;
            used_v[v] = true;
            used_w[w] = true;
            axis[w] = v;
            flip[w] = m[v][w] < 0.0;
        }
        let dims = [vdims[axis[0]], vdims[axis[1]], vdims[axis[2]]];
        Self { axis, flip, dims }
    }

    /// The volume index (x fastest) of canonical voxel (a, b, c).
    fn source(&self, vdims: [usize; 3], at: [usize; 3]) -> usize {
        let mut v = [0usize; 3];
        for r in 0..3 {
            let i = if self.flip[r] { self.dims[r] - 1 - at[r] } else { at[r] };
            v[self.axis[r]] = i;
        }
        v[0] + vdims[0] * (v[1] + vdims[1] * v[2])
    }

    fn gather(&self, volume: &Volume<f32>) -> Vec<f32> {
        let vdims = volume.dims();
        let [d0, d1, d2] = self.dims;
        let mut out = Vec::with_capacity(d0 * d1 * d2);
        for a in 0..d0 {
            for b in 0..d1 {
                for c in 0..d2 {
                    let v = volume.voxels()[self.source(vdims, [a, b, c])];
                    out.push(if v.is_nan() { 0.0 } else { v.clamp(f32::MIN, f32::MAX) });
                }
            }
        }
        out
    }

    fn scatter(&self, mask: &[bool], vdims: [usize; 3]) -> Vec<u8> {
        let [d0, d1, d2] = self.dims;
        let mut out = vec![0u8; vdims.iter().product()];
        for a in 0..d0 {
            for b in 0..d1 {
                for c in 0..d2 {
                    out[self.source(vdims, [a, b, c])] = u8::from(mask[(a * d1 + b) * d2 + c]);
                }
            }
        }
        out
    }
}

/// PyTorch's `interpolate(mode='nearest-exact')` of a C-order 3-D array.
fn resize_nearest_exact(data: &[f32], from: [usize; 3], to: [usize; 3]) -> Vec<f32> {
    let index = |o: usize, a: usize| {
        let scale = from[a] as f32 / to[a] as f32;
        (((o as f32 + 0.5) * scale).floor() as usize).min(from[a] - 1)
    };
    let (i0, i1, i2): (Vec<usize>, Vec<usize>, Vec<usize>) = (
        (0..to[0]).map(|o| index(o, 0)).collect(),
        (0..to[1]).map(|o| index(o, 1)).collect(),
        (0..to[2]).map(|o| index(o, 2)).collect(),
    );
    let mut out = Vec::with_capacity(to.iter().product());
    for &a in &i0 {
        for &b in &i1 {
            let row = (a * from[1] + b) * from[2];
            out.extend(i2.iter().map(|&c| data[row + c]));
        }
    }
    out
}

/// `torch.quantile` (linear interpolation between the two nearest ranks).
fn quantile(sorted: &[f32], q: f64) -> f32 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let t = (pos - lo as f64) as f32;
    sorted[lo] + (sorted[hi] - sorted[lo]) * t
}

/// deepbet's `normalize`: clip to the quantiles, standardise (unbiased SD), 0.226·z + 0.449.
fn normalise(data: &[f32], low: f32, high: f32) -> Vec<f32> {
    let clipped: Vec<f32> = data.iter().map(|x| ((x - low) / (high - low)).clamp(0.0, 1.0)).collect();
    let n = clipped.len() as f64;
    let mean = clipped.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = clipped.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let sd = var.sqrt().max(1e-12);
    clipped.iter().map(|&x| (0.226 * (f64::from(x) - mean) / sd + 0.449) as f32).collect()
}

impl Deepbet {
    /// The two networks from their tensors (as `torch::read_zip` or a package gives them).
    pub fn new(
        bbox: &[(String, Vec<usize>, Vec<f32>)],
        brain: &[(String, Vec<usize>, Vec<f32>)],
        device: AiDevice,
    ) -> Result<Self, AiError> {
        // deepbet runs in f32 (its Dice was measured so), whatever device it is handed.
        let device = device.with_precision(crate::Precision::F32)?;
        Ok(Self {
            bbox: LinkNet3d::from_tensors("deepbet-bbox", bbox, &device.device)?,
            brain: LinkNet3d::from_tensors("deepbet", brain, &device.device)?,
            device,
        })
    }

    /// The brain probability (channel 1) of a C-order cube.
    fn probability(&self, net: &LinkNet3d, data: Vec<f32>, dims: [usize; 3]) -> Result<Vec<f32>, AiError> {
        let x: Tensor<5> =
            Tensor::from_data(TensorData::new(data, [1, 1, dims[0], dims[1], dims[2]]), &self.device.device);
        let y = net.forward(x);
        let brain = y.narrow(1, 1, 1);
        brain.into_data().try_to_vec::<f32>().map_err(|e| AiError::Input(format!("{e:?}")))
    }

    /// Extracts the brain of a T1-weighted `volume`; `threshold` is deepbet's (default 0.5).
    pub fn extract(
        &self,
        volume: &Volume<f32>,
        threshold: f32,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BrainMask, AiError> {
        let started = std::time::Instant::now();
        let vdims = volume.dims();
        if vdims.iter().any(|&d| d < 2) {
            return Err(AiError::Input(format!("a {vdims:?} volume is not a 3-D scan")));
        }
        let canonical = Canonical::of(&volume.patient_from_voxel, vdims);
        let shape = canonical.dims;
        let x = canonical.gather(volume);
        // 1–2: the small cube and its quantiles.
        let small_dims = [128; 3];
        let small = resize_nearest_exact(&x, shape, small_dims);
        let mut sorted = small.clone();
        sorted.sort_by(f32::total_cmp);
        let (low, high) = (quantile(&sorted, 0.005), quantile(&sorted, 0.995));
        if high <= low {
            return Err(AiError::Input("the volume has no contrast (its 0.5 and 99.5 % quantiles agree)".into()));
        }
        // 3: the bounding box.
        let p_small = self.probability(&self.bbox, normalise(&small, low, high), small_dims)?;
        progress(Progress { done: 1, total: 2 });
        if cancel.load(Ordering::Relaxed) {
            return Err(AiError::Cancelled { done: 1, total: 2 });
        }
        let mut m_small: Vec<bool> = p_small.iter().map(|p| *p > 0.5).collect();
        morphology::keep_largest_component(&mut m_small, small_dims, 26);
        let bbox = bounding_box(&m_small, small_dims, shape, 0.1)?;
        // 4: the brain network on the box.
        let crop_dims = [0, 1, 2].map(|a| bbox[a].1 - bbox[a].0);
        let crop = lightbox_imaging::crop::crop(&x, shape, bbox);
        let big = [256; 3];
        let p_big =
            self.probability(&self.brain, normalise(&resize_nearest_exact(&crop, crop_dims, big), low, high), big)?;
        progress(Progress { done: 2, total: 2 });
        // 5: back into the box, threshold, largest component, holes filled.
        let p_crop = resize_nearest_exact(&p_big, big, crop_dims);
        let mut m_crop: Vec<bool> = p_crop.iter().map(|p| *p > threshold).collect();
        morphology::keep_largest_component(&mut m_crop, crop_dims, 26);
        morphology::fill_holes(&mut m_crop, crop_dims);
        let mut mask = vec![false; x.len()];
        lightbox_imaging::crop::paste(&mut mask, shape, bbox, &m_crop);
        // 6: the volume's own orientation.
        let voxels = canonical.scatter(&mask, vdims);
        let voxel_ml = volume.spacing_mm().iter().product::<f64>() / 1000.0;
        let tiv_ml = voxels.iter().filter(|v| **v != 0).count() as f64 * voxel_ml;
        let mask = Volume::new(vdims, voxels, volume.patient_from_voxel).map_err(|e| AiError::Input(e.to_string()))?;
        Ok(BrainMask { mask, tiv_ml, seconds: started.elapsed().as_secs_f64() })
    }
}

/// deepbet's `get_bbox_with_margin`: per axis the slices where the small mask's mean over the
/// other two axes exceeds 0.02, scaled to the volume, grown by `margin` on each side, rounded
/// half to even as torch does, clipped to the volume.
fn bounding_box(
    mask: &[bool],
    dims: [usize; 3],
    shape: [usize; 3],
    margin: f64,
) -> Result<[(usize, usize); 3], AiError> {
    let mut out = [(0, 0); 3];
    for a in 0..3 {
        let (b, c) = ([1, 0, 0][a], [2, 2, 1][a]);
        let mut counts = vec![0usize; dims[a]];
        for i in 0..dims[0] {
            for j in 0..dims[1] {
                for k in 0..dims[2] {
                    if mask[(i * dims[1] + j) * dims[2] + k] {
                        counts[[i, j, k][a]] += 1;
                    }
                }
            }
        }
        let plane = (dims[b] * dims[c]) as f64;
        let rows: Vec<usize> = (0..dims[a]).filter(|&r| counts[r] as f64 / plane > 0.02).collect();
        let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
            return Err(AiError::Input("not enough brain found to place the bounding box (is this a head T1?)".into()));
        };
        let scale = shape[a] as f64 / dims[a] as f64;
        let centre = ((last + 1 + first) as f64 / 2.0 * scale) as f32;
        let size = ((last + 1 - first) as f64 * scale) as f32;
        let size = (1.0 + 2.0 * margin as f32) * size;
        let (centre, size) = (centre.round_ties_even(), size.round_ties_even());
        let lo = (centre - size / 2.0).trunc() as i64;
        let hi = (centre + size / 2.0).trunc() as i64;
        out[a] = (lo.max(0) as usize, (hi.max(0) as usize).min(shape[a]));
        if out[a].1 <= out[a].0 {
            return Err(AiError::Input("the brain's bounding box is empty".into()));
        }
    }
    Ok(out)
}

/// The packages' folder names under `models/`.
pub const PACKAGES: [&str; 2] = ["deepbet-bbox", "deepbet"];

/// Where each network lies in deepbet's wheel.
const IN_WHEEL: [&str; 2] = ["data/models/bbox_model.pt", "data/models/model.pt"];

impl Deepbet {
    /// The two networks from their installed packages (`models/deepbet-bbox`, `models/deepbet`),
    /// each checked: sha256, and exactly LinkNet3d's tensors.
    pub fn from_packages(models: &std::path::Path, device: AiDevice) -> Result<Self, AiError> {
        let mut tensors = Vec::new();
        for name in PACKAGES {
            let package = crate::ModelPackage::open(&models.join(name))?;
            tensors.push(package.named_tensors(&LinkNet3d::expected_tensors())?);
        }
        Self::new(&tensors[0], &tensors[1], device)
    }
}

/// Installs deepbet from its wheel (`deepbet-1.0.2-py3-none-any.whl`, from PyPI): converts both
/// TorchScript networks to safetensors in `models/deepbet-bbox` and `models/deepbet`, whose
/// `model.toml` must already be there, and checks each result against its manifest's sha256.
pub fn install(wheel: &std::path::Path, models: &std::path::Path) -> Result<(), AiError> {
    use std::io::Read;
    let bad = |problem: String| AiError::Package { path: wheel.to_owned(), problem };
    let file = std::fs::File::open(wheel).map_err(|e| bad(e.to_string()))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a wheel: {e}")))?;
    for (name, entry) in PACKAGES.iter().zip(IN_WHEEL) {
        let mut bytes = Vec::new();
        archive
            .by_name(entry)
            .map_err(|e| bad(format!("{entry}: {e}")))?
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("{entry}: {e}")))?;
        let tensors = crate::torch::read_zip(&bytes).map_err(|e| bad(format!("{entry}: {e}")))?;
        let dir = models.join(name);
        let manifest = dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| AiError::Package { path: manifest.clone(), problem: e.to_string() })?;
        let weights: crate::package::Manifest =
            toml::from_str(&text).map_err(|e| AiError::Package { path: manifest.clone(), problem: e.to_string() })?;
        let out = dir.join(&weights.weights.file);
        let partial = out.with_extension("partial");
        let io = |path: &std::path::Path, e: std::io::Error| AiError::Package {
            path: path.to_owned(),
            problem: e.to_string(),
        };
        crate::package::write_safetensors(&partial, &tensors).map_err(|e| io(&partial, e))?;
        // Only weights that are what model.toml describes replace the installed ones.
        let sha = crate::package::sha256_file(&partial).map_err(|e| io(&partial, e))?;
        crate::package::check_named(name, &LinkNet3d::expected_tensors(), &tensors)?;
        if !sha.eq_ignore_ascii_case(weights.weights.sha256.trim()) {
            let _ = std::fs::remove_file(&partial);
            return Err(AiError::Package {
                path: out,
                problem: format!("the converted weights' sha256 is {sha}, model.toml says {}", weights.weights.sha256),
            });
        }
        std::fs::rename(&partial, &out).map_err(|e| io(&out, e))?;
        tracing::info!(package = name, "installed from {}", wheel.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_exact_matches_pytorch_indices() {
        // PyTorch: 5 → 3 picks 0, 2, 4 (floor((o + .5)·5/3)); 3 → 5 picks 0, 0, 1, 2, 2.
        let data: Vec<f32> = (0..5).map(|v| v as f32).collect();
        assert_eq!(resize_nearest_exact(&data, [1, 1, 5], [1, 1, 3]), vec![0.0, 2.0, 4.0]);
        assert_eq!(resize_nearest_exact(&data[..3], [1, 1, 3], [1, 1, 5]), vec![0.0, 0.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn quantiles_interpolate_and_normalisation_is_deepbets() {
        let sorted: Vec<f32> = (0..=100).map(|v| v as f32).collect();
        assert!((quantile(&sorted, 0.005) - 0.5).abs() < 1e-6);
        assert!((quantile(&sorted, 0.995) - 99.5).abs() < 1e-4);
        let n = normalise(&[0.0, 1.0, 2.0, 3.0], 0.0, 3.0);
        let mean = n.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.449).abs() < 1e-6);
        // Unbiased SD of (0, 1/3, 2/3, 1) is 0.4303; z of the last is 0.5/0.4303.
        assert!((n[3] - (0.226 * 0.5 / 0.430_331_5 + 0.449)).abs() < 1e-5, "{n:?}");
    }

    #[test]
    fn canonical_orientation_undoes_lps_flips_and_permutations() {
        // Voxel axes: i → posterior (A flipped), j → left (R flipped), k → superior.
        let affine = Affine3::from_columns([0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0; 3]);
        let c = Canonical::of(&affine, [4, 3, 2]);
        assert_eq!(c.axis, [1, 0, 2]);
        assert_eq!(c.flip, [true, true, false]);
        assert_eq!(c.dims, [3, 4, 2]);
        // Canonical (0, 0, 0) is the most right, most posterior... i.e. voxel (3, 2, 0).
        assert_eq!(c.source([4, 3, 2], [0, 0, 0]), 3 + 4 * 2);
        let mask: Vec<bool> = (0..24).map(|i| i == 5).collect();
        let back = c.scatter(&mask, [4, 3, 2]);
        assert_eq!(back.iter().filter(|v| **v == 1).count(), 1);
    }

    #[test]
    fn the_box_grows_by_its_margin_and_stays_inside() -> Result<(), AiError> {
        let dims = [8, 8, 8];
        let mut m = vec![false; 512];
        for i in 2..6 {
            for j in 2..6 {
                for k in 2..6 {
                    m[(i * 8 + j) * 8 + k] = true;
                }
            }
        }
        // Rows 2..6 of 8 on a 16-voxel axis: centre 8, size 8 → 9.6 → 10: 3..13.
        assert_eq!(bounding_box(&m, dims, [16, 16, 16], 0.1)?, [(3, 13); 3]);
        assert!(bounding_box(&vec![false; 512], dims, [16; 3], 0.1).is_err());
        Ok(())
    }
}
