//! Training an nnU-Net-style network on the device, for recipes that make their own data (a
//! model for tests and demonstrations trained on synthetic lesions; see `lightbox models
//! train-synthetic`). It follows nnU-Net's trainer where it matters at this scale: patches of
//! the plan's size from the preprocessed case (the same `prepare` as inference), a share of
//! them centred on foreground, random mirroring and intensity changes, Dice + cross-entropy
//! loss, and a polynomially decaying learning rate; Adam replaces nnU-Net's SGD, which needs far
//! more steps than a short run has.
//!
//! Gradients come from burn's autodiff on the same device (`Device::autodiff`), so training runs
//! on the GPU or on flex.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use lightbox_core::Volume;

use crate::AiError;
use crate::nnunet::{NnUnet, PlainConvUNet};

/// A small deterministic random source (splitmix64), so a recipe trains the same network from
/// the same seed on every machine.
#[derive(Clone, Debug)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// Standard normal samples (Box–Muller on [`Random`]).
pub struct Normal(Random);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Self(Random::new(seed))
    }

    pub fn sample(&mut self) -> f64 {
        let u1 = self.0.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.0.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// One training case: the model's channels (one grid) and the label of every voxel.
pub struct TrainingCase {
    pub channels: Vec<Volume<f32>>,
    pub labels: Volume<u8>,
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// The share of each batch's patches centred on a foreground voxel (nnU-Net: 1/3; at least
    /// one patch when it is above 0), as nnU-Net's `oversample_foreground_percent`.
    pub foreground_fraction: f64,
    /// Patches drawn from one case before the next (nnU-Net: 1). More trade variety for
    /// speed where making a case costs more than a step on it.
    pub patches_per_case: usize,
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { steps: 250, batch_size: 2, learning_rate: 3e-3, foreground_fraction: 0.5, patches_per_case: 1, seed: 1 }
    }
}

/// Trains `model`'s network in place. `next_case(i)` gives the i-th case (a recipe makes a new
/// one each time, so the data never repeat); `report(step, loss)` follows the loss.
pub fn train(
    model: &mut NnUnet,
    options: &TrainOptions,
    next_case: &mut dyn FnMut(u64) -> Result<TrainingCase, AiError>,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(usize, f32),
) -> Result<(), AiError> {
    if model.folds() > 1 {
        return Err(AiError::Input(format!(
            "{} is an ensemble of {} folds: train one fold",
            model.name,
            model.folds()
        )));
    }
    if model.device.precision != crate::Precision::F32 {
        return Err(AiError::Input(format!(
            "{} was loaded for half-precision inference ({}): training runs in f32",
            model.name, model.device.description
        )));
    }
    let device = model.device.device.clone().autodiff();
    let patch = model.patch();
    let classes = model.net.config.num_classes;
    let mut random = Random::new(options.seed);
    let mut params5: BTreeMap<String, Tensor<5>> =
        model.net.tensors.iter().map(|(n, t)| (n.clone(), t.clone().autodiff().require_grad())).collect();
    let mut params1: BTreeMap<String, Tensor<1>> =
        model.net.vectors.iter().map(|(n, t)| (n.clone(), t.clone().autodiff().require_grad())).collect();
    let mut adam5: BTreeMap<String, Adam<5>> = BTreeMap::new();
    let mut adam1: BTreeMap<String, Adam<1>> = BTreeMap::new();
    let mut case_index = 0u64;
    struct Current {
        prepared: crate::nnunet::Prepared,
        labels: Vec<u8>,
        has_foreground: bool,
        channels: usize,
        uses: usize,
    }
    let mut current: Option<Current> = None;
    for step in 0..options.steps {
        if cancel.load(Ordering::Relaxed) {
            return Err(AiError::Cancelled { done: step, total: options.steps });
        }
        let mut images = Vec::new();
        let mut onehot = Vec::new();
        let mut channels_n = 0;
        let forced = if options.foreground_fraction > 0.0 {
            ((options.batch_size as f64 * options.foreground_fraction).round() as usize).clamp(1, options.batch_size)
        } else {
            0
        };
        for b in 0..options.batch_size {
            // The forced foreground patches spread evenly over the batch.
            let foreground = (b * forced) / options.batch_size != ((b + 1) * forced) / options.batch_size;
            let spent = current.as_ref().is_none_or(|c| c.uses >= options.patches_per_case.max(1));
            if spent || (foreground && current.as_ref().is_some_and(|c| !c.has_foreground)) {
                // A foreground patch needs a case with foreground: a few tries.
                let mut tries = 0;
                current = Some(loop {
                    let case = next_case(case_index)?;
                    case_index += 1;
                    tries += 1;
                    let has_foreground = case.labels.voxels().iter().any(|&l| l > 0);
                    if !foreground || tries >= 10 || has_foreground {
                        let prepared = model.prepare(&case.channels)?;
                        let labels = model.prepare_labels(&case.labels, &prepared)?;
                        break Current { prepared, labels, has_foreground, channels: case.channels.len(), uses: 0 };
                    }
                });
            }
            let Some(Current { prepared, labels, uses, channels, .. }) = current.as_mut() else {
                unreachable!("a case was just made")
            };
            *uses += 1;
            channels_n = *channels;
            let (image, label) = sample_patch(
                &prepared.data,
                labels,
                channels_n,
                prepared.target,
                patch,
                if foreground { 1.0 } else { 0.0 },
                &mut random,
            );
            images.extend(image);
            for k in 0..classes {
                onehot.extend(label.iter().map(|&l| f32::from(u8::from(usize::from(l) == k))));
            }
        }
        let n = options.batch_size;
        let shape = [n, channels_n, patch[0], patch[1], patch[2]];
        let x = Tensor::<5>::from_data(TensorData::new(images, shape), &device);
        let y = Tensor::<5>::from_data(TensorData::new(onehot, [n, classes, patch[0], patch[1], patch[2]]), &device);
        let net = PlainConvUNet {
            config: model.net.config.clone(),
            tensors: params5.clone(),
            vectors: params1.clone(),
            convolution: crate::Convolution::Burn,
            // burn's operations, which its autodiff differentiates (Lightbox's kernels have
            // no backward pass).
            norm_kernels: false,
        };
        let loss = dice_ce_loss(net.forward(x), y);
        let value = loss.clone().inner().into_scalar::<f32>();
        if !value.is_finite() {
            return Err(AiError::Input(format!("training diverged at step {step} (loss {value})")));
        }
        report(step, value);
        let grads = loss.backward();
        // nnU-Net's polynomial decay.
        let lr = options.learning_rate * (1.0 - step as f64 / options.steps as f64).powf(0.9);
        for (name, p) in params5.iter_mut() {
            if let Some(g) = p.grad(&grads) {
                *p = adam5.entry(name.clone()).or_default().update(p.clone().inner(), g, lr).require_grad();
            }
        }
        for (name, p) in params1.iter_mut() {
            if let Some(g) = p.grad(&grads) {
                *p = adam1.entry(name.clone()).or_default().update(p.clone().inner(), g, lr).require_grad();
            }
        }
    }
    model.net.tensors = params5.into_iter().map(|(n, t)| (n, t.inner())).collect();
    model.net.vectors = params1.into_iter().map(|(n, t)| (n, t.inner())).collect();
    Ok(())
}

/// Cross-entropy plus (1 − soft Dice of the foreground classes over the batch), nnU-Net's
/// `DC_and_CE_loss` with batch Dice. `logits` and `onehot` are `[N, K, D, H, W]`.
fn dice_ce_loss(logits: Tensor<5>, onehot: Tensor<5>) -> Tensor<1> {
    let [n, k, d, h, w] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let voxels = (n * d * h * w) as f64;
    let ce = (log_p.clone() * onehot.clone()).sum().neg() / voxels;
    let p = log_p.exp();
    let per_class = |t: Tensor<5>| t.sum_dim(4).sum_dim(3).sum_dim(2).sum_dim(0).reshape([k]);
    let intersection = per_class(p.clone() * onehot.clone());
    let total = per_class(p) + per_class(onehot);
    let dice = (intersection * 2.0 + 1e-5) / (total + 1e-5);
    let foreground = dice.narrow(0, 1, k - 1).mean();
    ce + foreground.neg() + 1.0
}

/// Adam's moments for one parameter.
struct Adam<const D: usize> {
    m: Option<Tensor<D>>,
    v: Option<Tensor<D>>,
    t: i32,
}

impl<const D: usize> Default for Adam<D> {
    fn default() -> Self {
        Self { m: None, v: None, t: 0 }
    }
}

impl<const D: usize> Adam<D> {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;

    /// The parameter after one step (a new autodiff leaf).
    fn update(&mut self, p: Tensor<D>, g: Tensor<D>, lr: f64) -> Tensor<D> {
        self.t += 1;
        let m = match self.m.take() {
            Some(m) => m * Self::B1 + g.clone() * (1.0 - Self::B1),
            None => g.clone() * (1.0 - Self::B1),
        };
        let v = match self.v.take() {
            Some(v) => v * Self::B2 + g.clone() * g.clone() * (1.0 - Self::B2),
            None => g.clone() * g * (1.0 - Self::B2),
        };
        let m_hat = m.clone() / (1.0 - Self::B1.powi(self.t));
        let v_hat = v.clone() / (1.0 - Self::B2.powi(self.t));
        self.m = Some(m);
        self.v = Some(v);
        (p - m_hat / (v_hat.sqrt() + 1e-8) * lr).autodiff()
    }
}

/// A patch of `patch` voxels (zero-padded where the case is smaller) from `data` (`[C, dims]`)
/// and `labels` (`dims`): near a random foreground voxel with probability
/// `foreground_fraction` (when there is one), anywhere otherwise; mirrored at random along each
/// axis, its intensities scaled and shifted a little per channel.
fn sample_patch(
    data: &[f32],
    labels: &[u8],
    channels: usize,
    dims: [usize; 3],
    patch: [usize; 3],
    foreground_fraction: f64,
    random: &mut Random,
) -> (Vec<f32>, Vec<u8>) {
    let foreground: Vec<usize> = if random.uniform() < foreground_fraction {
        labels.iter().enumerate().filter(|(_, l)| **l > 0).map(|(i, _)| i).collect()
    } else {
        Vec::new()
    };
    // The patch's first voxel (may be negative: padding) per axis.
    let start: [i64; 3] = if foreground.is_empty() {
        [0, 1, 2].map(|a| {
            let slack = dims[a] as i64 - patch[a] as i64;
            if slack >= 0 { random.below(slack as usize + 1) as i64 } else { slack / 2 }
        })
    } else {
        let at = foreground[random.below(foreground.len())];
        let centre = [at / (dims[1] * dims[2]), (at / dims[2]) % dims[1], at % dims[2]];
        [0, 1, 2].map(|a| {
            // Jitter so the lesion is not always in the middle.
            let jitter = random.below(patch[a] / 2 + 1) as i64 - (patch[a] / 4) as i64;
            centre[a] as i64 - patch[a] as i64 / 2 + jitter
        })
    };
    let flip = [0, 1, 2].map(|_| random.uniform() < 0.5);
    let per_channel: Vec<(f32, f32)> =
        (0..channels).map(|_| (random.range(0.85, 1.15) as f32, random.range(-0.1, 0.1) as f32)).collect();
    let voxels = dims.iter().product::<usize>();
    let patch_voxels = patch.iter().product::<usize>();
    let mut image = vec![0.0f32; channels * patch_voxels];
    let mut label = vec![0u8; patch_voxels];
    for a in 0..patch[0] {
        for b in 0..patch[1] {
            for c in 0..patch[2] {
                let local = [a, b, c];
                let source = [0, 1, 2].map(|x| {
                    let i = if flip[x] { patch[x] - 1 - local[x] } else { local[x] };
                    start[x] + i as i64
                });
                if (0..3).any(|x| source[x] < 0 || source[x] >= dims[x] as i64) {
                    continue;
                }
                let src = (source[0] as usize * dims[1] + source[1] as usize) * dims[2] + source[2] as usize;
                let dst = (a * patch[1] + b) * patch[2] + c;
                label[dst] = labels[src];
                for (ch, (scale, shift)) in per_channel.iter().enumerate() {
                    image[ch * patch_voxels + dst] = data[ch * voxels + src] * scale + shift;
                }
            }
        }
    }
    (image, label)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::nnunet::{PackageSpec, PlainConvUNetConfig, write_package};

    /// A two-stage network learns to find bright cubes in noise within a few dozen steps, and
    /// the trained weights survive saving and loading.
    #[test]
    fn a_small_network_learns_to_find_bright_cubes() -> Result<(), AiError> {
        let arch = PlainConvUNetConfig {
            n_stages: 2,
            features_per_stage: vec![4, 8],
            kernel_sizes: vec![[3, 3, 3]; 2],
            strides: vec![[1, 1, 1], [2, 2, 2]],
            n_conv_per_stage: vec![1, 1],
            n_blocks_per_stage: Vec::new(),
            residual: false,
            n_conv_per_stage_decoder: vec![1],
            decoder_kernel_sizes: Vec::new(),
            conv_bias: true,
            input_channels: 1,
            num_classes: 2,
        };
        let spec = PackageSpec {
            name: "cubes".into(),
            version: "test".into(),
            description: "bright cubes".into(),
            licence: "test".into(),
            source: "test".into(),
            arch: arch.clone(),
            transpose_forward: vec![0, 1, 2],
            normalization_schemes: vec!["ZScoreNormalization".into()],
            intensity_properties: String::new(),
            use_mask_for_norm: vec![false],
            mirror_axes: Vec::new(),
            softmax_per_window: false,
            folds: Vec::new(),
            sequences: vec!["T1".into()],
            spacing: vec![1.0; 3],
            patch_size: vec![8, 16, 16],
            labels: vec![(0, "background".into()), (1, "cube".into())],
        };
        let dir = tempfile::tempdir().map_err(|e| AiError::Input(e.to_string()))?;
        write_package(dir.path(), &spec, &arch.initial_tensors(5))?;
        let mut model = NnUnet::from_package(dir.path(), crate::AiDevice::cpu())?;
        let case = |seed: u64| -> Result<TrainingCase, AiError> {
            let mut r = Random::new(seed);
            let dims = [16usize, 16, 8];
            let n: usize = dims.iter().product();
            let mut image: Vec<f32> = (0..n).map(|_| r.range(0.0, 1.0) as f32).collect();
            let mut labels = vec![0u8; n];
            let corner = [r.below(12), r.below(12), r.below(5)];
            for z in 0..3 {
                for y in 0..3 {
                    for x in 0..3 {
                        let i = ((corner[2] + z) * 16 + corner[1] + y) * 16 + corner[0] + x;
                        image[i] += 1.5;
                        labels[i] = 1;
                    }
                }
            }
            let grid = lightbox_core::Affine3::IDENTITY;
            let err = |e: lightbox_core::VolumeError| AiError::Input(e.to_string());
            Ok(TrainingCase {
                channels: vec![Volume::new(dims, image, grid).map_err(err)?],
                labels: Volume::new(dims, labels, grid).map_err(err)?,
            })
        };
        let options = TrainOptions {
            steps: 150,
            batch_size: 2,
            learning_rate: 1e-2,
            foreground_fraction: 0.5,
            patches_per_case: 1,
            seed: 2,
        };
        let mut losses = Vec::new();
        train(&mut model, &options, &mut |i| case(i), &AtomicBool::new(false), &mut |_, l| losses.push(l))?;
        let first = losses[..5].iter().sum::<f32>() / 5.0;
        let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
        assert!(last < 0.5 * first, "loss {first} → {last}");
        model.save_weights(dir.path())?;
        let reloaded = NnUnet::from_package(dir.path(), crate::AiDevice::cpu())?;
        let held_out = case(1000)?;
        let labels = reloaded.predict(&held_out.channels, &AtomicBool::new(false), &mut |_| {})?;
        let (mut both, mut either) = (0, 0);
        for (p, t) in labels.voxels().iter().zip(held_out.labels.voxels()) {
            both += usize::from(*p == 1 && *t == 1);
            either += usize::from(*p == 1) + usize::from(*t == 1);
        }
        let dice = 2.0 * both as f64 / either.max(1) as f64;
        assert!(dice > 0.7, "Dice {dice} on a held-out case (loss {first} → {last})");
        Ok(())
    }

    #[test]
    fn random_is_uniform_enough_and_normal_has_unit_variance() {
        let mut r = Random::new(3);
        let mean = (0..10_000).map(|_| r.uniform()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut n = Normal::new(4);
        let samples: Vec<f64> = (0..10_000).map(|_| n.sample()).collect();
        let m = samples.iter().sum::<f64>() / 1e4;
        let var = samples.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 1e4;
        assert!(m.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{m} {var}");
    }

    #[test]
    fn a_foreground_patch_holds_foreground_and_mirrors_with_its_image() {
        let dims = [4, 10, 12];
        let voxels: usize = dims.iter().product();
        let mut labels = vec![0u8; voxels];
        labels[(2 * 10 + 5) * 12 + 7] = 1;
        let data: Vec<f32> = (0..voxels).map(|i| i as f32).collect();
        let mut random = Random::new(9);
        for _ in 0..20 {
            let (image, label) = sample_patch(&data, &labels, 1, dims, [4, 8, 8], 1.0, &mut random);
            let at = label.iter().position(|&l| l == 1).expect("the foreground voxel is in the patch");
            // The image voxel beside the label is the one the label came from (intensity
            // scaled by 0.85–1.15 and shifted by ±0.1).
            let source = ((2 * 10 + 5) * 12 + 7) as f32;
            assert!((image[at] / source - 1.0).abs() < 0.16, "{} vs {source}", image[at]);
        }
    }
}
