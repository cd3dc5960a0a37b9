//! nnU-Net v2 models without Python: a trained model folder (`plans.json`, `dataset.json`,
//! `fold_<k>/checkpoint_final.pth`) is imported into a model package, and the package runs
//! the way nnU-Net predicts: the plan's axis order, resampling to the plan's spacing, its
//! normalisation scheme per channel, the sliding window (`crate::sliding`) with the plan's
//! mirroring, and the logits back on the input grid, argmax to labels.
//!
//! A package may hold several folds of one plan (nnU-Net's ensemble of its cross-validation
//! models, as `nnUNet_predict -f 0 1 2 3 4` runs them): the first fold's tensors under their
//! own names, fold `k`'s (k ≥ 1 in the package's `folds` order) under `ensemble.{k}.`. Each
//! window is predicted by every fold and averaged (v2: logits; v1: probabilities), which is the
//! average of the folds' predictions, as nnU-Net ensembles them.
//!
//! The network is `PlainConvUNet` of dynamic_network_architectures 0.4.4, as `arch_kwargs`
//! parameterises it: per stage `n_conv_per_stage` blocks of conv → InstanceNorm (affine) →
//! LeakyReLU 0.01, the first with the stage's stride; a decoder of transposed convolutions
//! (kernel = stride), concatenation with the skip, `n_conv_per_stage_decoder` blocks, and the
//! last 1×1 segmentation layer. Its tensors keep nnU-Net's names
//! (`encoder.stages.{s}.0.convs.{i}.conv.weight`, `decoder.transpconvs.{s}.weight`, …); the
//! checkpoint's aliases (`all_modules`, `decoder.encoder`) and training state are dropped.
//!
//! In [`Precision::F16`](crate::Precision) (nnU-Net's own autocast on a GPU) the convolutions
//! and transposed convolutions hold half-precision weights and take half-precision inputs;
//! the transposed convolutions' results stay f16 (their bias added in f16, as cuDNN's single
//! rounding of the exact sum).
//! The instance norms compute their statistics and arithmetic in f32: on a GPU by Lightbox's
//! kernels ([`crate::norm`]), which hand the next layer f16 values as autocast does; elsewhere
//! by burn's operations, which hand it f32 (cast to f16 by the next convolution). The logits
//! are f32.

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use burn::tensor::activation::leaky_relu;
use burn::tensor::module::conv3d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, TensorData};
use serde::Deserialize;

use crate::AiError;
use crate::norm::Activation;
use crate::ops::conv_transpose3d_stride;
use crate::profile::section;

/// The architecture, from a plan's `arch_kwargs`.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
pub struct PlainConvUNetConfig {
    pub n_stages: usize,
    pub features_per_stage: Vec<usize>,
    pub kernel_sizes: Vec<[usize; 3]>,
    pub strides: Vec<[usize; 3]>,
    /// PlainConvUNet: convolutions per encoder stage.
    #[serde(default)]
    pub n_conv_per_stage: Vec<usize>,
    /// ResidualEncoderUNet: residual blocks per encoder stage.
    #[serde(default)]
    pub n_blocks_per_stage: Vec<usize>,
    /// The encoder is ResidualEncoderUNet's (a stem and BasicBlockD residual blocks).
    #[serde(default)]
    pub residual: bool,
    pub n_conv_per_stage_decoder: Vec<usize>,
    /// Per decoder stage (deepest first), its convolutions' kernel. Empty: the kernel of the
    /// encoder stage it joins (nnU-Net v2); nnU-Net v1's Generic_UNet takes the kernel of the
    /// stage below instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decoder_kernel_sizes: Vec<[usize; 3]>,
    #[serde(default = "yes")]
    pub conv_bias: bool,
    #[serde(default)]
    pub input_channels: usize,
    #[serde(default)]
    pub num_classes: usize,
}

fn yes() -> bool {
    true
}

impl PlainConvUNetConfig {
    /// A PlainConvUNet as nnU-Net's 3d_fullres plans shape one for isotropic data: a stage per
    /// entry of `features_per_stage`, each downsampling by its `strides` entry (the first's
    /// usually 1), 3×3×3 kernels, two convolutions with bias a stage in the encoder and the
    /// decoder.
    pub fn plain(
        features_per_stage: Vec<usize>,
        strides: Vec<[usize; 3]>,
        input_channels: usize,
        num_classes: usize,
    ) -> Self {
        let n = features_per_stage.len();
        Self {
            n_stages: n,
            features_per_stage,
            kernel_sizes: vec![[3, 3, 3]; n],
            strides,
            n_conv_per_stage: vec![2; n],
            n_blocks_per_stage: vec![],
            residual: false,
            n_conv_per_stage_decoder: vec![2; n.saturating_sub(1)],
            decoder_kernel_sizes: Vec::new(),
            conv_bias: true,
            input_channels,
            num_classes,
        }
    }

    fn check(&self) -> Result<(), String> {
        let n = self.n_stages;
        if n < 2
            || self.features_per_stage.len() != n
            || self.kernel_sizes.len() != n
            || self.strides.len() != n
            || (!self.residual && self.n_conv_per_stage.len() != n)
            || (self.residual && self.n_blocks_per_stage.len() != n)
            || self.n_conv_per_stage_decoder.len() != n - 1
            || !(self.decoder_kernel_sizes.is_empty() || self.decoder_kernel_sizes.len() == n - 1)
        {
            return Err(format!("arch_kwargs do not describe {n} stages consistently"));
        }
        if self.input_channels == 0 || self.num_classes == 0 {
            return Err("no input channels or no classes".into());
        }
        if self.kernel_sizes.iter().chain(&self.decoder_kernel_sizes).flatten().any(|&k| k == 0 || k % 2 == 0) {
            return Err(format!("kernel sizes {:?} must be odd", self.kernel_sizes));
        }
        if self.strides.iter().flatten().any(|&s| s == 0) || self.features_per_stage.contains(&0) {
            return Err("a stride or a stage's features is 0".into());
        }
        Ok(())
    }

    /// The kernel of decoder stage `s` (0 = the deepest).
    pub fn decoder_kernel(&self, s: usize) -> [usize; 3] {
        self.decoder_kernel_sizes.get(s).copied().unwrap_or(self.kernel_sizes[self.n_stages - 2 - s])
    }

    /// Every tensor the network reads, with its shape.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut t = Vec::new();
        let conv = |t: &mut Vec<(String, Vec<usize>)>, prefix: String, out: usize, inp: usize, k: [usize; 3]| {
            t.push((format!("{prefix}.conv.weight"), vec![out, inp, k[0], k[1], k[2]]));
            if self.conv_bias {
                t.push((format!("{prefix}.conv.bias"), vec![out]));
            }
            t.push((format!("{prefix}.norm.weight"), vec![out]));
            t.push((format!("{prefix}.norm.bias"), vec![out]));
        };
        let mut channels = self.input_channels;
        if self.residual {
            // The stem, then per stage BasicBlockD blocks: conv1 (strided in the first block),
            // conv2, and a shortcut that pools when strided and projects (1×1, no bias) when the
            // channels change.
            let f0 = self.features_per_stage[0];
            conv(&mut t, "encoder.stem.convs.0".into(), f0, channels, self.kernel_sizes[0]);
            channels = f0;
            for s in 0..self.n_stages {
                let f = self.features_per_stage[s];
                for b in 0..self.n_blocks_per_stage[s] {
                    let p = format!("encoder.stages.{s}.blocks.{b}");
                    let input = if b == 0 { channels } else { f };
                    conv(&mut t, format!("{p}.conv1"), f, input, self.kernel_sizes[s]);
                    conv(&mut t, format!("{p}.conv2"), f, f, self.kernel_sizes[s]);
                    if b == 0 && input != f {
                        let at = usize::from(self.strides[s] != [1, 1, 1]);
                        t.push((format!("{p}.skip.{at}.conv.weight"), vec![f, input, 1, 1, 1]));
                        t.push((format!("{p}.skip.{at}.norm.weight"), vec![f]));
                        t.push((format!("{p}.skip.{at}.norm.bias"), vec![f]));
                    }
                }
                channels = f;
            }
        } else {
            for s in 0..self.n_stages {
                for i in 0..self.n_conv_per_stage[s] {
                    let f = self.features_per_stage[s];
                    conv(
                        &mut t,
                        format!("encoder.stages.{s}.0.convs.{i}"),
                        f,
                        if i == 0 { channels } else { f },
                        self.kernel_sizes[s],
                    );
                }
                channels = self.features_per_stage[s];
            }
        }
        for s in 0..self.n_stages - 1 {
            let below = self.features_per_stage[self.n_stages - 1 - s];
            let skip = self.features_per_stage[self.n_stages - 2 - s];
            let st = self.strides[self.n_stages - 1 - s];
            t.push((format!("decoder.transpconvs.{s}.weight"), vec![below, skip, st[0], st[1], st[2]]));
            if self.conv_bias {
                t.push((format!("decoder.transpconvs.{s}.bias"), vec![skip]));
            }
            for i in 0..self.n_conv_per_stage_decoder[s] {
                let k = self.decoder_kernel(s);
                conv(&mut t, format!("decoder.stages.{s}.convs.{i}"), skip, if i == 0 { 2 * skip } else { skip }, k);
            }
            // Every deep-supervision head is saved; only the last is used without it.
            t.push((format!("decoder.seg_layers.{s}.weight"), vec![self.num_classes, skip, 1, 1, 1]));
            t.push((format!("decoder.seg_layers.{s}.bias"), vec![self.num_classes]));
        }
        t
    }

    /// Fresh weights to train from, as nnU-Net initialises them (`InitWeights_He(1e-2)`):
    /// convolutions He-normal with LeakyReLU slope 0.01, biases 0, norms the identity.
    /// Deterministic for a `seed`.
    pub fn initial_tensors(&self, seed: u64) -> Vec<crate::torch::NamedTensor> {
        let mut random = crate::train::Normal::new(seed);
        self.expected_tensors()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let values = if name.ends_with(".norm.weight") {
                    vec![1.0; n]
                } else if shape.len() == 1 {
                    vec![0.0; n]
                } else {
                    // PyTorch's fan-in: dimension 1 times the kernel (for a transposed
                    // convolution, its output channels).
                    let fan_in = (shape[1] * shape[2..].iter().product::<usize>()).max(1) as f64;
                    let std = (2.0 / (1.0 + 0.01f64.powi(2)) / fan_in).sqrt();
                    (0..n).map(|_| (random.sample() * std) as f32).collect()
                };
                (name, shape, values)
            })
            .collect()
    }
}

/// A convolution in the weights' precision, its result in f32; by burn's kernels or as matrix
/// products (`ops::conv3d_gemm`).
fn conv(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<3>,
    how: crate::Convolution,
) -> Tensor<5> {
    conv_in_its_dtype(x, weight, bias, options, how).cast(FloatDType::F32)
}

/// [`conv`], its result in the weight's dtype.
fn conv_in_its_dtype(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<3>,
    how: crate::Convolution,
) -> Tensor<5> {
    let x = x.cast(FloatDType::from(weight.dtype()));
    match how {
        crate::Convolution::Burn => conv3d(x, weight, bias, options),
        crate::Convolution::Gemm { column_mib } => crate::ops::conv3d_gemm(x, weight, bias, &options, column_mib << 20),
        crate::Convolution::Tuned { column_mib, tf32 } => {
            crate::ops::conv3d_tuned(x, weight, bias, &options, column_mib << 20, tf32)
        }
        crate::Convolution::Units => crate::ops::conv3d_units(x, weight, bias, &options),
    }
}

pub struct PlainConvUNet {
    pub(crate) config: PlainConvUNetConfig,
    pub(crate) tensors: BTreeMap<String, Tensor<5>>,
    pub(crate) vectors: BTreeMap<String, Tensor<1>>,
    /// How it convolves (burn's kernels unless set).
    pub(crate) convolution: crate::Convolution,
    /// Whether its instance norms run on Lightbox's kernels where it runs on a GPU
    /// ([`crate::norm::instance_norm`]; the default).
    pub(crate) norm_kernels: bool,
}

impl PlainConvUNet {
    pub fn from_tensors(
        model: &str,
        config: PlainConvUNetConfig,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        device: &Device,
    ) -> Result<Self, AiError> {
        config.check().map_err(|problem| AiError::Weights { model: model.to_owned(), problem })?;
        crate::package::check_named(model, &config.expected_tensors(), tensors)?;
        let (mut map5, mut map1) = (BTreeMap::new(), BTreeMap::new());
        for (name, shape, values) in tensors {
            if let [a, b, c, d, e] = shape.as_slice() {
                map5.insert(
                    name.clone(),
                    Tensor::from_data(TensorData::new(values.clone(), [*a, *b, *c, *d, *e]), device),
                );
            } else {
                map1.insert(name.clone(), Tensor::from_data(TensorData::new(values.clone(), [values.len()]), device));
            }
        }
        Ok(Self { config, tensors: map5, vectors: map1, convolution: crate::Convolution::Burn, norm_kernels: true })
    }

    /// The same network convolving as `convolution` says.
    pub fn with_convolution(mut self, convolution: crate::Convolution) -> Self {
        self.convolution = convolution;
        self
    }

    /// The same network with its instance norms by Lightbox's kernels on a GPU (`true`, the
    /// default) or by burn's tensor operations (to compare them).
    pub fn with_norm_kernels(mut self, kernels: bool) -> Self {
        self.norm_kernels = kernels;
        self
    }

    /// The same network computing in `precision`: the convolutions' weights and biases cast
    /// (normalisation parameters stay f32).
    pub fn with_precision(mut self, precision: crate::Precision) -> Self {
        let dtype = precision.dtype();
        for t in self.tensors.values_mut() {
            *t = t.clone().cast(dtype);
        }
        for (name, t) in self.vectors.iter_mut() {
            if !name.contains(".norm.") {
                *t = t.clone().cast(dtype);
            }
        }
        self
    }

    /// Every tensor with its shape and values (to save a trained network).
    pub fn tensor_values(&self) -> Result<Vec<crate::torch::NamedTensor>, AiError> {
        let values =
            |data: TensorData| data.convert::<f32>().try_to_vec::<f32>().map_err(|e| AiError::Input(format!("{e:?}")));
        let mut out = Vec::new();
        for (name, t) in &self.tensors {
            out.push((name.clone(), t.dims().to_vec(), values(t.to_data())?));
        }
        for (name, t) in &self.vectors {
            out.push((name.clone(), t.dims().to_vec(), values(t.to_data())?));
        }
        Ok(out)
    }

    fn t5(&self, name: &str) -> Tensor<5> {
        self.tensors.get(name).cloned().unwrap_or_else(|| unreachable!("{name} was checked"))
    }

    fn t1(&self, name: &str) -> Option<Tensor<1>> {
        self.vectors.get(name).cloned()
    }

    /// conv → InstanceNorm (affine) → LeakyReLU 0.01.
    fn block(&self, x: Tensor<5>, prefix: &str, stride: [usize; 3], k: [usize; 3]) -> Tensor<5> {
        self.conv_norm(x, prefix, stride, k, Activation::LeakyRelu(0.01))
    }

    /// conv → InstanceNorm (affine) → `activation`. In f16 the result is f16 where the norm
    /// runs on Lightbox's kernels, f32 otherwise. (The norm cancels the convolution's bias; left
    /// out, the f16 logits' largest error on lavapipe moved by up to 20 % either way, as any
    /// change of rounding does, so it stays, as PyTorch computes it.)
    fn conv_norm(
        &self,
        x: Tensor<5>,
        prefix: &str,
        stride: [usize; 3],
        k: [usize; 3],
        activation: Activation,
    ) -> Tensor<5> {
        let padding = k.map(|k| (k - 1) / 2);
        let device = x.device();
        let y = section("convolutions", &device, || {
            conv_in_its_dtype(
                x,
                self.t5(&format!("{prefix}.conv.weight")),
                self.t1(&format!("{prefix}.conv.bias")),
                ConvOptions::new(stride, padding, [1; 3], 1),
                self.convolution,
            )
        });
        let affine = self.t1(&format!("{prefix}.norm.weight")).zip(self.t1(&format!("{prefix}.norm.bias")));
        section("instance norms", &device, || crate::norm::instance_norm(y, affine, activation, self.norm_kernels))
    }

    /// ResidualEncoderUNet's BasicBlockD: `lrelu(conv2(conv1(x)) + shortcut(x))`, the shortcut
    /// average-pooled when strided and projected (1×1, no bias, norm) when the channels change.
    fn residual_block(&self, x: Tensor<5>, prefix: &str, stride: [usize; 3], k: [usize; 3]) -> Tensor<5> {
        let [n, c, d, h, w] = x.dims();
        let mut shortcut = x.clone();
        let strided = stride != [1, 1, 1];
        if strided {
            // Average pooling with kernel = stride: a mean over each block.
            let [s0, s1, s2] = stride;
            let blocks: Tensor<8> = shortcut.reshape([n, c, d / s0, s0, h / s1, s1, w / s2, s2]);
            shortcut = blocks.mean_dim(7).mean_dim(5).mean_dim(3).reshape([n, c, d / s0, h / s1, w / s2]);
        }
        let projection = format!("{prefix}.skip.{}", usize::from(strided));
        if self.tensors.contains_key(&format!("{projection}.conv.weight")) {
            shortcut = self.conv_norm(shortcut, &projection, [1; 3], [1; 3], Activation::None);
        }
        let y = self.block(x, &format!("{prefix}.conv1"), stride, k);
        let y = self.conv_norm(y, &format!("{prefix}.conv2"), [1; 3], k, Activation::None);
        let dtype = FloatDType::from(y.dtype());
        leaky_relu(y + shortcut.cast(dtype), 0.01)
    }

    /// [`forward`](Self::forward) on plain values (`shape` = `[N, C, D, H, W]`, C order), for
    /// callers that do not handle tensors (benchmarks, tests); waits for the result.
    pub fn forward_values(
        &self,
        device: &crate::AiDevice,
        input: Vec<f32>,
        shape: [usize; 5],
    ) -> Result<Vec<f32>, AiError> {
        crate::ops::forward_values(device, input, shape, |x| self.forward(x))
    }

    /// [`forward`](Self::forward) timed as PyTorch's benchmarks time it
    /// ([`crate::profile::resident_median_ms`]: the input on the device beforehand, the logits
    /// left there), median of `runs`, ms.
    pub fn resident_median_ms(
        &self,
        device: &crate::AiDevice,
        input: Vec<f32>,
        shape: [usize; 5],
        runs: usize,
    ) -> Result<f64, AiError> {
        crate::profile::resident_median_ms(device, input, shape, runs, |x| self.forward(x))
    }

    /// Logits `[N, classes, D, H, W]` (no softmax, as nnU-Net accumulates them).
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let c = &self.config;
        let mut skips = Vec::new();
        let mut h = x;
        if c.residual {
            h = self.block(h, "encoder.stem.convs.0", [1; 3], c.kernel_sizes[0]);
        }
        for s in 0..c.n_stages {
            let count = if c.residual { c.n_blocks_per_stage[s] } else { c.n_conv_per_stage[s] };
            for i in 0..count {
                let stride = if i == 0 { c.strides[s] } else { [1; 3] };
                h = if c.residual {
                    self.residual_block(h, &format!("encoder.stages.{s}.blocks.{i}"), stride, c.kernel_sizes[s])
                } else {
                    self.block(h, &format!("encoder.stages.{s}.0.convs.{i}"), stride, c.kernel_sizes[s])
                };
            }
            skips.push(h.clone());
        }
        let mut low = skips.pop().unwrap_or_else(|| unreachable!("at least two stages"));
        let device = low.device();
        for s in 0..c.n_stages - 1 {
            let st = c.strides[c.n_stages - 1 - s];
            let up = section("transposed convolutions", &device, || {
                conv_transpose3d_stride(
                    low,
                    self.t5(&format!("decoder.transpconvs.{s}.weight")),
                    self.t1(&format!("decoder.transpconvs.{s}.bias")),
                    st,
                )
            });
            let skip = skips.pop().unwrap_or_else(|| unreachable!("one skip per stage"));
            let mut y = section("concatenations", &device, || {
                Tensor::cat(vec![up.cast(FloatDType::from(skip.dtype())), skip], 1)
            });
            for i in 0..c.n_conv_per_stage_decoder[s] {
                y = self.block(y, &format!("decoder.stages.{s}.convs.{i}"), [1; 3], c.decoder_kernel(s));
            }
            low = y;
        }
        let last = c.n_stages - 2;
        section("convolutions", &device, || {
            conv(
                low,
                self.t5(&format!("decoder.seg_layers.{last}.weight")),
                self.t1(&format!("decoder.seg_layers.{last}.bias")),
                ConvOptions::new([1; 3], [0; 3], [1; 3], 1),
                self.convolution,
            )
        })
    }
}

#[derive(Deserialize)]
struct Plans {
    transpose_forward: Vec<usize>,
    configurations: BTreeMap<String, Configuration>,
    #[serde(default)]
    foreground_intensity_properties_per_channel: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Configuration {
    patch_size: Vec<usize>,
    spacing: Vec<f64>,
    normalization_schemes: Vec<String>,
    #[serde(default)]
    use_mask_for_norm: Vec<bool>,
    architecture: Architecture,
}

#[derive(Deserialize)]
struct Architecture {
    network_class_name: String,
    arch_kwargs: PlainConvUNetConfig,
}

#[derive(Deserialize)]
struct DatasetJson {
    channel_names: BTreeMap<String, String>,
    labels: BTreeMap<String, serde_json::Value>,
}

/// Imports an nnU-Net v2 result folder (`…/nnUNetTrainer__nnUNetPlans__3d_fullres`) into a model
/// package at `out`: `model.toml` from the plan and dataset, `model.safetensors` from
/// `fold_<fold>/checkpoint_final.pth` (the network's own tensors only), and a model card stub
/// that the site must complete.
pub fn import(folder: &Path, configuration: &str, folds: &[usize], name: &str, out: &Path) -> Result<(), AiError> {
    let err = |path: &Path, problem: String| AiError::Package { path: path.to_owned(), problem };
    let read_json = |file: &str| -> Result<serde_json::Value, AiError> {
        let path = folder.join(file);
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(&path, e.to_string()))
    };
    let plans_path = folder.join("plans.json");
    let plans: Plans = serde_json::from_value(read_json("plans.json")?).map_err(|e| err(&plans_path, e.to_string()))?;
    let dataset_path = folder.join("dataset.json");
    let dataset: DatasetJson =
        serde_json::from_value(read_json("dataset.json")?).map_err(|e| err(&dataset_path, e.to_string()))?;
    let config = plans.configurations.get(configuration).ok_or_else(|| {
        err(
            &plans_path,
            format!(
                "no configuration {configuration:?} (it has {:?})",
                plans.configurations.keys().collect::<Vec<_>>()
            ),
        )
    })?;
    let class = &config.architecture.network_class_name;
    let residual = class.ends_with("ResidualEncoderUNet");
    if !residual && !class.ends_with("PlainConvUNet") {
        return Err(err(
            &plans_path,
            format!("{class} is not supported yet (PlainConvUNet and ResidualEncoderUNet are)"),
        ));
    }
    if config.patch_size.len() != 3 || config.spacing.len() != 3 || plans.transpose_forward.len() != 3 {
        return Err(err(&plans_path, "only 3-D configurations are supported".into()));
    }
    // nnU-Net's heads have one output per integer label; "ignore" is not one of them, and
    // region-based training (labels as lists) needs a sigmoid decoding not ported yet.
    if let Some((name, _)) = dataset.labels.iter().find(|(n, v)| n.as_str() != "ignore" && !v.is_i64()) {
        return Err(err(
            &dataset_path,
            format!("label {name:?} is a region: region-based models are not supported yet"),
        ));
    }
    let labels: Vec<(i64, String)> = {
        let mut l: Vec<_> = dataset
            .labels
            .iter()
            .filter(|(n, _)| n.as_str() != "ignore")
            .filter_map(|(k, v)| v.as_i64().map(|i| (i, k.clone())))
            .collect();
        l.sort();
        l
    };
    let mut arch = config.architecture.arch_kwargs.clone();
    arch.residual = residual;
    arch.input_channels = dataset.channel_names.len();
    arch.num_classes = labels.len();
    arch.check().map_err(|p| err(&plans_path, p))?;
    let expected = arch.expected_tensors();
    let mut tensors = Vec::new();
    for (k, fold) in folds.iter().enumerate() {
        let checkpoint = folder.join(format!("fold_{fold}")).join("checkpoint_final.pth");
        let bytes = std::fs::read(&checkpoint).map_err(|e| err(&checkpoint, e.to_string()))?;
        let all = crate::torch::read_zip_where(&bytes, &|n| n.starts_with("network_weights."))
            .map_err(|e| err(&checkpoint, e))?;
        let one: Vec<_> = all
            .into_iter()
            .filter_map(|(n, s, v)| n.strip_prefix("network_weights.").map(|n| (n.to_owned(), s, v)))
            .filter(|(n, ..)| expected.iter().any(|(e, _)| e == n))
            .collect();
        // Refuse a checkpoint that does not fit its own plan before writing anything.
        PlainConvUNet::from_tensors(name, arch.clone(), &one, &Device::flex())
            .map_err(|e| err(&checkpoint, e.to_string()))?;
        tensors.extend(one.into_iter().map(|(n, s, v)| (ensemble_name(k, &n), s, v)));
    }
    let mirror_axes = mirroring_of(&folder.join(format!("fold_{}", folds[0])).join("checkpoint_final.pth"))?;
    let channel = |i: usize| dataset.channel_names.get(&i.to_string()).cloned().unwrap_or_default();
    let spec = PackageSpec {
        name: name.to_owned(),
        version: folds_text(folds),
        description: format!("nnU-Net v2 {configuration}, imported from {}", folder.display()),
        licence: "unknown: set by the site that installs it".into(),
        source: folder.display().to_string(),
        arch,
        transpose_forward: plans.transpose_forward.clone(),
        normalization_schemes: config.normalization_schemes.clone(),
        intensity_properties: serde_json::to_string(&plans.foreground_intensity_properties_per_channel)
            .unwrap_or_default(),
        use_mask_for_norm: config.use_mask_for_norm.clone(),
        mirror_axes,
        softmax_per_window: false,
        folds: folds.to_vec(),
        sequences: (0..dataset.channel_names.len()).map(channel).collect(),
        spacing: config.spacing.clone(),
        patch_size: config.patch_size.clone(),
        labels,
    };
    write_package(out, &spec, &tensors)?;
    write_card_stub(
        out,
        name,
        &format!("the nnU-Net v2 folder `{}` (configuration {configuration}, {})", folder.display(), folds_text(folds)),
    )
}

/// The axes nnU-Net v2 mirrors at inference, as its predictor reads them: the checkpoint's
/// `inference_allowed_mirroring_axes`, none when it is `None` (trainers without mirroring, whose
/// labels may have sides) or absent.
fn mirroring_of(checkpoint: &Path) -> Result<Vec<usize>, AiError> {
    let err = |problem: String| AiError::Package { path: checkpoint.to_owned(), problem };
    let bytes = std::fs::read(checkpoint).map_err(|e| err(e.to_string()))?;
    let value = crate::torch::read_zip_entry(&bytes, "inference_allowed_mirroring_axes").map_err(err)?;
    let axes = match &value {
        None | Some(serde_json::Value::Null) => Some(Vec::new()),
        Some(serde_json::Value::Array(items)) => {
            items.iter().map(|a| a.as_u64().filter(|&a| a <= 2).map(|a| a as usize)).collect()
        }
        Some(_) => None,
    };
    axes.ok_or_else(|| {
        let found = value.map_or_else(String::new, |v| v.to_string());
        err(format!("inference_allowed_mirroring_axes is {found}: expected a tuple of the axes 0, 1, 2, or None"))
    })
}

/// The model card an imported package starts with, unless it has one: AI output, not for
/// clinical use, where it came from (`source`), and what the site must state.
pub(crate) fn write_card_stub(out: &Path, name: &str, source: &str) -> Result<(), AiError> {
    let card = out.join("README.md");
    if card.exists() {
        return Ok(());
    }
    let text = format!(
        "# {name} (model card: to be completed by the site)\n\n**AI output. Not for clinical use unless your site has validated it.**\n\n\
         Imported by `lightbox models import` from {source}.\n\n\
         State here: the training data, the measured accuracy, the licence of the weights and who validated them.\n"
    );
    std::fs::write(&card, text).map_err(|e| AiError::Package { path: card.clone(), problem: e.to_string() })
}

/// A tensor's name in a package of several folds: the first fold's as it is, the others' under
/// `ensemble.{k}.`.
pub fn ensemble_name(k: usize, name: &str) -> String {
    if k == 0 { name.to_owned() } else { format!("ensemble.{k}.{name}") }
}

/// "fold 0", "folds 0, 1, 2".
pub fn folds_text(folds: &[usize]) -> String {
    let list: Vec<String> = folds.iter().map(usize::to_string).collect();
    format!("fold{} {}", if folds.len() > 1 { "s" } else { "" }, list.join(", "))
}

/// What a package's `model.toml` says about an nnU-Net-style network: from an imported plan, or
/// from a recipe that trains one (`crate::train`).
#[derive(Clone, Debug)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub licence: String,
    pub source: String,
    pub arch: PlainConvUNetConfig,
    pub transpose_forward: Vec<usize>,
    pub normalization_schemes: Vec<String>,
    /// nnU-Net's `foreground_intensity_properties_per_channel`, as JSON (CT normalisation).
    pub intensity_properties: String,
    pub use_mask_for_norm: Vec<bool>,
    pub mirror_axes: Vec<usize>,
    /// nnU-Net v1 averages each window's softmax; v2 (false) averages the logits and takes the
    /// softmax once, at the end.
    pub softmax_per_window: bool,
    /// The nnU-Net folds the weights hold, in order (their tensors named by `ensemble_name`);
    /// empty or one for a single network.
    pub folds: Vec<usize>,
    /// Per input channel, the sequence it takes (T2, ADC, HBV, …).
    pub sequences: Vec<String>,
    /// The plan's spacing, in its (transposed) axis order.
    pub spacing: Vec<f64>,
    pub patch_size: Vec<usize>,
    /// (index, name), background first.
    pub labels: Vec<(i64, String)>,
}

/// Writes a model package at `out`: `model.safetensors` from `tensors` and `model.toml` from
/// `spec` with the weights' sha256. The model card (`README.md`) is the author's to write.
pub fn write_package(
    out: &Path,
    spec: &PackageSpec,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), AiError> {
    let err = |path: &Path, problem: String| AiError::Package { path: path.to_owned(), problem };
    std::fs::create_dir_all(out).map_err(|e| err(out, e.to_string()))?;
    let weights = out.join("model.safetensors");
    crate::package::write_safetensors(&weights, tensors).map_err(|e| err(&weights, e.to_string()))?;
    let sha = crate::package::sha256_file(&weights).map_err(|e| err(&weights, e.to_string()))?;
    let arch = &spec.arch;
    let toml_err = |e: toml::ser::Error| err(out, e.to_string());
    let mut parameters = match toml::Value::try_from(arch).map_err(toml_err)? {
        toml::Value::Table(t) => t,
        _ => toml::Table::new(),
    };
    let ints = |v: &[usize]| toml::Value::Array(v.iter().map(|&x| toml::Value::Integer(x as i64)).collect());
    let text = |s: &str| toml::Value::String(s.to_owned());
    let texts = |v: &[String]| toml::Value::Array(v.iter().map(|s| text(s)).collect());
    parameters.insert("transpose_forward".into(), ints(&spec.transpose_forward));
    parameters.insert("normalization_schemes".into(), texts(&spec.normalization_schemes));
    parameters.insert("intensity_properties".into(), text(&spec.intensity_properties));
    parameters.insert("mirror_axes".into(), ints(&spec.mirror_axes));
    if spec.softmax_per_window {
        parameters.insert("aggregate".into(), text("probabilities"));
    }
    if spec.folds.len() > 1 {
        parameters.insert("folds".into(), ints(&spec.folds));
    }
    parameters.insert(
        "use_mask_for_norm".into(),
        toml::Value::Array(spec.use_mask_for_norm.iter().map(|&b| toml::Value::Boolean(b)).collect()),
    );
    let mut input = toml::Table::new();
    input.insert("channels".into(), toml::Value::Integer(arch.input_channels as i64));
    input.insert("sequences".into(), texts(&spec.sequences));
    input.insert(
        "target_spacing_mm".into(),
        toml::Value::Array(spec.spacing.iter().map(|&v| toml::Value::Float(v)).collect()),
    );
    input.insert("normalisation".into(), text(&spec.normalization_schemes.join(",")));
    input.insert("patch_size".into(), ints(&spec.patch_size));
    let mut label_table = toml::Table::new();
    for (i, n) in &spec.labels {
        label_table.insert(i.to_string(), text(n));
    }
    let mut weights_table = toml::Table::new();
    weights_table.insert("file".into(), text("model.safetensors"));
    weights_table.insert("sha256".into(), toml::Value::String(sha));
    let mut manifest = toml::Table::new();
    manifest.insert("name".into(), text(&spec.name));
    manifest.insert("version".into(), text(&spec.version));
    manifest.insert("description".into(), text(&spec.description));
    let architecture = if arch.residual { "nnunet-residual-encoder-unet" } else { "nnunet-plain-conv-unet" };
    manifest.insert("architecture".into(), text(architecture));
    manifest.insert("licence".into(), text(&spec.licence));
    manifest.insert("source".into(), text(&spec.source));
    manifest.insert("parameters".into(), toml::Value::Table(parameters));
    manifest.insert("input".into(), toml::Value::Table(input));
    manifest.insert("labels".into(), toml::Value::Table(label_table));
    manifest.insert("weights".into(), toml::Value::Table(weights_table));
    let manifest = toml::to_string(&manifest).map_err(toml_err)?;
    let manifest_path = out.join("model.toml");
    std::fs::write(&manifest_path, manifest).map_err(|e| err(&manifest_path, e.to_string()))
}

/// An imported nnU-Net model, ready to predict.
pub struct NnUnet {
    pub name: String,
    pub(crate) net: PlainConvUNet,
    transpose_forward: [usize; 3],
    schemes: Vec<String>,
    /// Per channel: (mean, std, 0.5 %, 99.5 %) for the `CTNormalization` scheme.
    ct: BTreeMap<usize, (f64, f64, f64, f64)>,
    spacing: [f64; 3],
    patch: [usize; 3],
    mirror_axes: Vec<usize>,
    /// Per channel: z-score over the non-zero region only (nnU-Net's `use_mask_for_norm`).
    use_mask_for_norm: Vec<bool>,
    /// Windows are averaged as probabilities (nnU-Net v1), not as logits (v2).
    softmax_per_window: bool,
    /// The other folds of an ensemble (`net` is the first).
    ensemble: Vec<PlainConvUNet>,
    pub device: crate::AiDevice,
}

#[derive(Deserialize)]
struct ExtraParameters {
    transpose_forward: [usize; 3],
    normalization_schemes: Vec<String>,
    #[serde(default)]
    intensity_properties: String,
    /// nnU-Net's `inference_allowed_mirroring_axes` (none for trainers without mirroring).
    #[serde(default = "all_axes")]
    mirror_axes: Vec<usize>,
    #[serde(default)]
    use_mask_for_norm: Vec<bool>,
    /// What the sliding window averages: "logits" (nnU-Net v2, the default) or "probabilities"
    /// (v1: each window's softmax).
    #[serde(default)]
    aggregate: Option<String>,
    /// The folds of an ensemble (empty: one network).
    #[serde(default)]
    folds: Vec<usize>,
}

fn all_axes() -> Vec<usize> {
    vec![0, 1, 2]
}

/// The box (per axis: first, past-last) around the mask's voxels; the whole grid when it is empty.
fn nonzero_box(mask: &[bool], dims: [usize; 3]) -> [(usize, usize); 3] {
    let mut lo = dims;
    let mut hi = [0usize; 3];
    for a in 0..dims[0] {
        for b in 0..dims[1] {
            for c in 0..dims[2] {
                if mask[(a * dims[1] + b) * dims[2] + c] {
                    for (axis, i) in [a, b, c].into_iter().enumerate() {
                        lo[axis] = lo[axis].min(i);
                        hi[axis] = hi[axis].max(i + 1);
                    }
                }
            }
        }
    }
    if hi.contains(&0) {
        [(0, dims[0]), (0, dims[1]), (0, dims[2])]
    } else {
        [(lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2])]
    }
}

/// `data` (C order, `dims`) with its axes permuted as numpy's `transpose(perm)`.
fn transpose3(data: &[f32], dims: [usize; 3], perm: [usize; 3]) -> (Vec<f32>, [usize; 3]) {
    let out_dims = perm.map(|p| dims[p]);
    let strides = [dims[1] * dims[2], dims[2], 1];
    let mut out = Vec::with_capacity(data.len());
    for a in 0..out_dims[0] {
        for b in 0..out_dims[1] {
            for c in 0..out_dims[2] {
                let mut src = [0usize; 3];
                src[perm[0]] = a;
                src[perm[1]] = b;
                src[perm[2]] = c;
                out.push(data[src[0] * strides[0] + src[1] * strides[1] + src[2] * strides[2]]);
            }
        }
    }
    (out, out_dims)
}

impl NnUnet {
    pub fn from_package(dir: &Path, device: crate::AiDevice) -> Result<Self, AiError> {
        let package = crate::ModelPackage::open(dir)?;
        let m = &package.manifest;
        let bad = |problem: String| AiError::Package { path: dir.join("model.toml"), problem };
        if m.architecture != "nnunet-plain-conv-unet" && m.architecture != "nnunet-residual-encoder-unet" {
            return Err(bad(format!(
                "architecture {} is not nnunet-plain-conv-unet or nnunet-residual-encoder-unet",
                m.architecture
            )));
        }
        let mut config: PlainConvUNetConfig =
            toml::Value::Table(m.parameters.clone()).try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        config.input_channels = m.input.channels;
        config.residual = m.architecture == "nnunet-residual-encoder-unet";
        config.num_classes = m.labels.len();
        let extra: ExtraParameters =
            toml::Value::Table(m.parameters.clone()).try_into().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        let properties: BTreeMap<String, BTreeMap<String, f64>> = if extra.intensity_properties.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&extra.intensity_properties).map_err(|e| bad(format!("intensity_properties: {e}")))?
        };
        let mut ct = BTreeMap::new();
        for (c, scheme) in extra.normalization_schemes.iter().enumerate() {
            if scheme == "CTNormalization" {
                let p = properties
                    .get(&c.to_string())
                    .ok_or_else(|| bad(format!("channel {c}: CT normalisation without intensity properties")))?;
                let get = |k: &str| p.get(k).copied().ok_or_else(|| bad(format!("channel {c}: no {k}")));
                ct.insert(c, (get("mean")?, get("std")?, get("percentile_00_5")?, get("percentile_99_5")?));
            }
        }
        config.check().map_err(bad)?;
        let softmax_per_window = match extra.aggregate.as_deref() {
            None | Some("logits") => false,
            Some("probabilities") => true,
            Some(other) => return Err(bad(format!("aggregate {other:?} (logits or probabilities)"))),
        };
        let mut sorted = extra.transpose_forward;
        sorted.sort_unstable();
        if sorted != [0, 1, 2] {
            return Err(bad(format!(
                "transpose_forward {:?} is not a permutation of the axes",
                extra.transpose_forward
            )));
        }
        if extra.normalization_schemes.len() != m.input.channels {
            return Err(bad(format!(
                "{} normalisation schemes for {} channels",
                extra.normalization_schemes.len(),
                m.input.channels
            )));
        }
        if ct.values().any(|&(_, _, lo, hi)| {
            lo.partial_cmp(&hi) == Some(std::cmp::Ordering::Greater) || lo.is_nan() || hi.is_nan()
        }) {
            return Err(bad("a CT channel's 0.5 % percentile lies above its 99.5 %".into()));
        }
        if extra.mirror_axes.iter().any(|&a| a > 2) {
            return Err(bad(format!("mirror_axes {:?}: axes are 0, 1, 2", extra.mirror_axes)));
        }
        // Every stage halves (or keeps) the patch: it must divide by the strides' product.
        for a in 0..3 {
            let total: usize = config.strides.iter().map(|s| s[a]).product();
            if m.input.patch_size[a] == 0 || m.input.patch_size[a] % total != 0 {
                return Err(bad(format!(
                    "patch {:?} does not divide by the strides along axis {a}",
                    m.input.patch_size
                )));
            }
        }
        let members = extra.folds.len().max(1);
        let one = config.expected_tensors();
        let expected: Vec<(String, Vec<usize>)> =
            (0..members).flat_map(|k| one.iter().map(move |(n, s)| (ensemble_name(k, n), s.clone()))).collect();
        let mut tensors = package.named_tensors(&expected)?;
        let mut nets = Vec::new();
        for k in (0..members).rev() {
            let prefix = ensemble_name(k, "");
            let (mine, rest): (Vec<_>, Vec<_>) =
                tensors.into_iter().partition(|(n, ..)| k == 0 || n.starts_with(&prefix));
            tensors = rest;
            let mine: Vec<_> = mine.into_iter().map(|(n, s, v)| (n[prefix.len()..].to_owned(), s, v)).collect();
            let net = PlainConvUNet::from_tensors(&m.name, config.clone(), &mine, &device.device)?;
            nets.push(net.with_precision(device.precision).with_convolution(device.convolution));
        }
        nets.reverse();
        let mut nets = nets.into_iter();
        let net = nets.next().ok_or_else(|| bad("no network".into()))?;
        let ensemble: Vec<PlainConvUNet> = nets.collect();
        let spacing = m.input.target_spacing_mm.ok_or_else(|| bad("no target_spacing_mm".into()))?;
        if spacing.iter().any(|s| s.is_nan() || *s <= 0.0 || !s.is_finite()) {
            return Err(bad(format!("target spacing {spacing:?}")));
        }
        Ok(Self {
            name: m.name.clone(),
            net,
            transpose_forward: extra.transpose_forward,
            schemes: extra.normalization_schemes.clone(),
            ct,
            spacing,
            patch: m.input.patch_size,
            mirror_axes: extra.mirror_axes,
            use_mask_for_norm: extra.use_mask_for_norm,
            softmax_per_window,
            ensemble,
            device,
        })
    }

    /// The network itself (its logits, without nnU-Net's pre- and postprocessing); of an
    /// ensemble, the first fold's.
    pub fn network(&self) -> &PlainConvUNet {
        &self.net
    }

    /// The folds in this package (1 for a single network).
    pub fn folds(&self) -> usize {
        1 + self.ensemble.len()
    }

    /// Labels (the argmax of the logits) on the grid of `channels` (one volume per input
    /// channel, all on one grid), predicted as nnU-Net does. `cancel` and `progress` reach the
    /// sliding window.
    pub fn predict(
        &self,
        channels: &[lightbox_core::Volume<f32>],
        cancel: &std::sync::atomic::AtomicBool,
        progress: &mut dyn FnMut(crate::Progress),
    ) -> Result<lightbox_core::Volume<u8>, AiError> {
        let (back, layout) = self.logits(channels, cancel, progress)?;
        let cropped: Vec<f32> =
            back.argmax(1).float().into_data().try_to_vec::<f32>().map_err(|e| AiError::Input(format!("{e:?}")))?;
        let labels = layout.restore(&cropped);
        let first = &channels[0];
        let voxels = labels.iter().map(|&l| l as u8).collect();
        lightbox_core::Volume::new(first.dims(), voxels, first.patient_from_voxel)
            .map_err(|e| AiError::Input(e.to_string()))
    }

    /// Each class's probability (the softmax of the logits, as nnU-Net exports them; for a v1
    /// model the averaged softmax of the windows) on the grid of `channels`; outside nnU-Net's
    /// non-zero crop, background has probability 1.
    pub fn predict_probabilities(
        &self,
        channels: &[lightbox_core::Volume<f32>],
        cancel: &std::sync::atomic::AtomicBool,
        progress: &mut dyn FnMut(crate::Progress),
    ) -> Result<Vec<lightbox_core::Volume<f32>>, AiError> {
        let (back, layout) = self.logits(channels, cancel, progress)?;
        let classes = back.dims()[1];
        let softmax = if self.softmax_per_window { back } else { burn::tensor::activation::softmax(back, 1) };
        let first = &channels[0];
        (0..classes)
            .map(|c| {
                let one: Vec<f32> = softmax
                    .clone()
                    .narrow(1, c, 1)
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| AiError::Input(format!("{e:?}")))?;
                let mut full = layout.restore(&one);
                if c == 0 {
                    // Outside the crop is background for certain.
                    layout.outside(&mut full, 1.0);
                }
                lightbox_core::Volume::new(first.dims(), full, first.patient_from_voxel)
                    .map_err(|e| AiError::Input(e.to_string()))
            })
            .collect()
    }

    /// The logits (for a v1 model, the probabilities), resampled back onto nnU-Net's non-zero crop
    /// of the input, and how to place values of that crop back on the input's grid.
    fn logits(
        &self,
        channels: &[lightbox_core::Volume<f32>],
        cancel: &std::sync::atomic::AtomicBool,
        progress: &mut dyn FnMut(crate::Progress),
    ) -> Result<(Tensor<5>, CropLayout), AiError> {
        let prepared = self.prepare(channels)?;
        let channels_n = channels.len();
        let target = prepared.target;
        let device = &self.device.device;
        let mut window = crate::SlidingWindow::new(self.patch);
        window.mirror_axes = self.mirror_axes.clone();
        let one = |net: &PlainConvUNet, x: Tensor<5>| {
            let out = net.forward(x);
            if self.softmax_per_window { burn::tensor::activation::softmax(out, 1) } else { out }
        };
        // Every fold on every window, averaged: the same as averaging the folds' predictions,
        // since the rest (weights, mirroring, resampling) is linear.
        let net = |x: Tensor<5>| {
            let first = one(&self.net, x.clone());
            if self.ensemble.is_empty() {
                return first;
            }
            let sum = self.ensemble.iter().fold(first, |sum, n| sum + one(n, x.clone()));
            sum / self.folds() as f32
        };
        let (logits, out) = window.predict(
            device,
            &prepared.data,
            [channels_n, target[0], target[1], target[2]],
            &net,
            cancel,
            progress,
        )?;
        let classes = out[0];
        let back: Tensor<5> = crate::ops::resize_trilinear(
            Tensor::from_data(TensorData::new(logits, [1, classes, target[0], target[1], target[2]]), device),
            prepared.cropped,
            false,
        );
        Ok((back, prepared.layout))
    }

    /// `labels` (on the grid of the channels `prepare` took) on the network's grid: transposed,
    /// cropped and resampled (nearest) as the channels were.
    pub(crate) fn prepare_labels(
        &self,
        labels: &lightbox_core::Volume<u8>,
        prepared: &Prepared,
    ) -> Result<Vec<u8>, AiError> {
        let [nx, ny, nz] = labels.dims();
        if labels.dims() != prepared.input_dims {
            return Err(AiError::Input("the labels are not on the channels' grid".into()));
        }
        let values: Vec<f32> = labels.voxels().iter().map(|&l| f32::from(l)).collect();
        let (transposed, full) = transpose3(&values, [nz, ny, nx], prepared.layout.transpose);
        let cropped = lightbox_imaging::crop::crop(&transposed, full, prepared.layout.bbox);
        let (d, t) = (prepared.cropped, prepared.target);
        let mut out = Vec::with_capacity(t.iter().product());
        let near = |i: usize, a: usize| (((i as f64 + 0.5) * d[a] as f64 / t[a] as f64) as usize).min(d[a] - 1);
        for a in 0..t[0] {
            for b in 0..t[1] {
                for c in 0..t[2] {
                    out.push(cropped[(near(a, 0) * d[1] + near(b, 1)) * d[2] + near(c, 2)] as u8);
                }
            }
        }
        Ok(out)
    }

    /// Rewrites the package at `dir` with this network's (trained) weights: its
    /// `model.safetensors` and the sha256 in its `model.toml`.
    pub fn save_weights(&self, dir: &Path) -> Result<(), AiError> {
        let err = |path: &Path, problem: String| AiError::Package { path: path.to_owned(), problem };
        if !self.ensemble.is_empty() {
            return Err(err(dir, "an ensemble of folds is not trained or saved here, only a single network".into()));
        }
        let weights = dir.join("model.safetensors");
        crate::package::write_safetensors(&weights, &self.net.tensor_values()?)
            .map_err(|e| err(&weights, e.to_string()))?;
        let sha = crate::package::sha256_file(&weights).map_err(|e| err(&weights, e.to_string()))?;
        let path = dir.join("model.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
        let mut manifest: toml::Table = text.parse().map_err(|e: toml::de::Error| err(&path, e.to_string()))?;
        if let Some(toml::Value::Table(w)) = manifest.get_mut("weights") {
            w.insert("sha256".into(), toml::Value::String(sha));
        }
        let text = toml::to_string(&manifest).map_err(|e| err(&path, e.to_string()))?;
        std::fs::write(&path, text).map_err(|e| err(&path, e.to_string()))
    }

    /// nnU-Net's preprocessing of `channels` (all on one grid): transposed, cropped to the
    /// non-zero box, normalised and resampled to the plan's spacing.
    pub(crate) fn prepare(&self, channels: &[lightbox_core::Volume<f32>]) -> Result<Prepared, AiError> {
        let first = channels.first().ok_or_else(|| AiError::Input("no input volume".into()))?;
        if channels.len() != self.schemes.len() {
            return Err(AiError::Input(format!(
                "{} channels given, the model takes {}",
                channels.len(),
                self.schemes.len()
            )));
        }
        if channels.iter().any(|c| c.dims() != first.dims()) {
            return Err(AiError::Input("the channels are not on one grid (register them first)".into()));
        }
        // The volume's C order is (z, y, x), as nnU-Net's SimpleITK reader gives it.
        let [nx, ny, nz] = first.dims();
        let spacing_zyx = {
            let s = first.spacing_mm();
            [s[2], s[1], s[0]]
        };
        let t = self.transpose_forward;
        let spacing = t.map(|i| spacing_zyx[i]);
        let mut transposed = Vec::new();
        let mut full = [0; 3];
        for volume in channels {
            let (v, d) = transpose3(volume.voxels(), [nz, ny, nx], t);
            full = d;
            transposed.push(v);
        }
        // nnU-Net's crop_to_nonzero: the box around voxels that are non-zero in any channel
        // (holes filled); what lies outside it is background.
        let mut mask: Vec<bool> = (0..full.iter().product()).map(|i| transposed.iter().any(|c| c[i] != 0.0)).collect();
        lightbox_imaging::morphology::fill_holes(&mut mask, full);
        let bbox = nonzero_box(&mask, full);
        let dims = [0, 1, 2].map(|a| bbox[a].1 - bbox[a].0);
        let crop = |v: &[f32]| lightbox_imaging::crop::crop(v, full, bbox);
        let mask_f: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m))).collect();
        let inside: Vec<bool> = crop(&mask_f).iter().map(|&m| m > 0.5).collect();
        let mut data = Vec::new();
        for (c, v) in transposed.iter().enumerate() {
            let mut v = crop(v);
            let use_mask = self.use_mask_for_norm.get(c).copied().unwrap_or(false);
            self.normalise(c, &mut v, use_mask.then_some(inside.as_slice()));
            data.extend(v);
        }
        let channels_n = channels.len();
        let target: [usize; 3] =
            [0, 1, 2].map(|a| ((dims[a] as f64 * spacing[a] / self.spacing[a]).round() as usize).max(1));
        let data = if target == dims {
            data
        } else {
            let resized: Tensor<5> = crate::ops::resize_trilinear(
                Tensor::from_data(
                    TensorData::new(data, [1, channels_n, dims[0], dims[1], dims[2]]),
                    &self.device.device,
                ),
                target,
                false,
            );
            resized.into_data().try_to_vec::<f32>().map_err(|e| AiError::Input(format!("{e:?}")))?
        };
        Ok(Prepared {
            data,
            target,
            cropped: dims,
            input_dims: first.dims(),
            layout: CropLayout { full, bbox, transpose: t },
        })
    }

    /// The plan's patch (network axis order).
    pub fn patch(&self) -> [usize; 3] {
        self.patch
    }

    /// nnU-Net's normalisation schemes: CT (clip to the dataset's 0.5–99.5 %, its mean and SD),
    /// none, rescale to 0..1, and z-score for everything else: over the image, or with
    /// `use_mask_for_norm` over the non-zero region only (`mask`), leaving the rest as it is.
    fn normalise(&self, channel: usize, v: &mut [f32], mask: Option<&[bool]>) {
        match self.schemes.get(channel).map(String::as_str) {
            Some("CTNormalization") => {
                if let Some(&(mean, std, lo, hi)) = self.ct.get(&channel) {
                    let sd = std.max(1e-8);
                    v.iter_mut().for_each(|x| *x = ((f64::from(*x).clamp(lo, hi) - mean) / sd) as f32);
                }
            }
            Some("NoNormalization") => {}
            Some("RescaleTo01Normalization") => {
                let (lo, hi) = v.iter().fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
                let range = (hi - lo).max(1e-8);
                v.iter_mut().for_each(|x| *x = (*x - lo) / range);
            }
            _ => {
                let selected = |i: usize| mask.is_none_or(|m| m.get(i).copied().unwrap_or(false));
                let values = || v.iter().enumerate().filter(|(i, _)| selected(*i)).map(|(_, &x)| f64::from(x));
                let n = values().count().max(1) as f64;
                let mean = values().sum::<f64>() / n;
                let std = (values().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-8);
                v.iter_mut()
                    .enumerate()
                    .filter(|(i, _)| selected(*i))
                    .for_each(|(_, x)| *x = ((f64::from(*x) - mean) / std) as f32);
            }
        }
    }
}

/// An input as the network sees it.
pub(crate) struct Prepared {
    /// `[C, target…]`, C order.
    pub(crate) data: Vec<f32>,
    pub(crate) target: [usize; 3],
    /// The crop's size before resampling.
    cropped: [usize; 3],
    input_dims: [usize; 3],
    layout: CropLayout,
}

/// Where nnU-Net's crop of the transposed input lies, to put values back on the input's grid.
struct CropLayout {
    full: [usize; 3],
    bbox: lightbox_imaging::crop::Box3,
    transpose: [usize; 3],
}

impl CropLayout {
    /// Values of the crop (C order) on the input's grid (zero outside the crop).
    fn restore(&self, cropped: &[f32]) -> Vec<f32> {
        let mut full = vec![0.0f32; self.full.iter().product()];
        lightbox_imaging::crop::paste(&mut full, self.full, self.bbox, cropped);
        let mut inverse = [0; 3];
        for (i, &p) in self.transpose.iter().enumerate() {
            inverse[p] = i;
        }
        transpose3(&full, self.full, inverse).0
    }

    /// Sets the voxels outside the crop (on the input's grid) to `value`.
    fn outside(&self, values: &mut [f32], value: f32) {
        let inside = self.restore(&vec![1.0f32; (0..3).map(|a| self.bbox[a].1 - self.bbox[a].0).product()]);
        for (v, i) in values.iter_mut().zip(inside) {
            if i == 0.0 {
                *v = value;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonzero_box_holds_the_mask_and_an_empty_mask_keeps_everything() {
        let dims = [3, 4, 5];
        let mut mask = vec![false; 60];
        mask[(4 + 2) * 5 + 1] = true; // (1, 2, 1)
        mask[(2 * 4 + 3) * 5 + 3] = true; // (2, 3, 3)
        assert_eq!(nonzero_box(&mask, dims), [(1, 3), (2, 4), (1, 4)]);
        assert_eq!(nonzero_box(&[false; 60], dims), [(0, 3), (0, 4), (0, 5)]);
    }

    #[test]
    fn transposes_like_numpy() {
        // (2, 3, 4) numbered in C order; transpose (2, 0, 1) → shape (4, 2, 3).
        let data: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let (t, dims) = transpose3(&data, [2, 3, 4], [2, 0, 1]);
        assert_eq!(dims, [4, 2, 3]);
        // out[a, b, c] = in[b, c, a]: out[1, 1, 2] = in[1, 2, 1] = 12 + 8 + 1.
        assert_eq!(t[11], 21.0);
        let mut inverse = [0; 3];
        for (i, p) in [2, 0, 1].iter().enumerate() {
            inverse[*p] = i;
        }
        assert_eq!(transpose3(&t, dims, inverse).0, data);
    }

    #[test]
    fn the_plain_conv_unet_names_its_tensors_as_nnunet_does() {
        let config = PlainConvUNetConfig {
            n_stages: 3,
            features_per_stage: vec![4, 8, 16],
            kernel_sizes: vec![[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            strides: vec![[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            n_conv_per_stage: vec![2, 2, 2],
            n_blocks_per_stage: vec![],
            residual: false,
            n_conv_per_stage_decoder: vec![2, 2],
            decoder_kernel_sizes: Vec::new(),
            conv_bias: true,
            input_channels: 2,
            num_classes: 3,
        };
        let names: BTreeMap<String, Vec<usize>> = config.expected_tensors().into_iter().collect();
        assert_eq!(names["encoder.stages.0.0.convs.0.conv.weight"], vec![4, 2, 1, 3, 3]);
        assert_eq!(names["encoder.stages.2.0.convs.1.norm.bias"], vec![16]);
        assert_eq!(names["decoder.transpconvs.0.weight"], vec![16, 8, 2, 2, 2]);
        assert_eq!(names["decoder.transpconvs.1.weight"], vec![8, 4, 1, 2, 2]);
        assert_eq!(names["decoder.stages.1.convs.0.conv.weight"], vec![4, 8, 1, 3, 3]);
        assert_eq!(names["decoder.seg_layers.1.weight"], vec![3, 4, 1, 1, 1]);
        // 3 stages × 2 convs × 4 + 2 transpconvs × 2 + 2 stages × 2 × 4 + 2 heads × 2.
        assert_eq!(names.len(), 24 + 4 + 16 + 4);
        // The same stages isotropic, as `plain` builds them: 3×3×3 everywhere.
        let plain = PlainConvUNetConfig::plain(vec![4, 8, 16], vec![[1, 1, 1], [1, 2, 2], [2, 2, 2]], 2, 3);
        assert_eq!(plain.check(), Ok(()));
        let names: BTreeMap<String, Vec<usize>> = plain.expected_tensors().into_iter().collect();
        assert_eq!(names["encoder.stages.0.0.convs.0.conv.weight"], vec![4, 2, 3, 3, 3]);
        assert_eq!(names["decoder.stages.1.convs.1.conv.weight"], vec![4, 4, 3, 3, 3]);
        assert_eq!(names.len(), 24 + 4 + 16 + 4);
        assert!(PlainConvUNetConfig::plain(vec![4], vec![[1, 1, 1]], 1, 2).check().is_err(), "one stage");
    }

    /// PlainConvUNet 32, 64, 96 in f16, then in f32, with every 3×3×3 layer on Lightbox's matrix-unit kernel
    /// (`LIGHTBOX_AI_CONV=units`; emulated by the warp's threads where the GPU has no matrix
    /// units, as on lavapipe): its first layer's one channel, strided layers, the deepest
    /// stage's odd grid (3 × 5 × 9), the decoder's concatenations and both of the kernel's
    /// stride-1 blocks (grids wider than 16 and not). Its logits stay within 1 % of the largest
    /// one of the f32 network's (on lavapipe about 0.35 %; burn's f16 convolutions, which sum in
    /// f16 there, about 5 %). A wrong bias would not show here (each instance norm takes it
    /// out again): the kernel's own tests check it. In f32 (three products of f16 halves) its
    /// logits are burn's f32 ones to 2·10⁻⁵ of the largest (on lavapipe 6·10⁻⁶; f16's 0.35 %).
    #[cfg(feature = "gpu")]
    #[test]
    fn on_matrix_units_the_network_keeps_its_accuracy() -> Result<(), AiError> {
        let config = PlainConvUNetConfig::plain(vec![32, 64, 96], vec![[1, 1, 1], [2, 2, 2], [2, 2, 2]], 1, 2);
        let tensors: Vec<_> = config
            .expected_tensors()
            .into_iter()
            .map(|(n, shape)| {
                let count: usize = shape.iter().product();
                // Weights of about 1 / √fan-in, so that every layer's sums stay of order one.
                let scale = 1.5 / ((count / shape[0]) as f32).sqrt();
                let values = (0..count).map(|i| (((i * 7919) % 101) as f32 / 50.0 - 1.0) * scale).collect();
                (n, shape, values)
            })
            .collect();
        let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        // A fixed input (a test that cannot pass or fail by chance).
        let shape = [1, 1, 12, 20, 36];
        let values: Vec<f32> =
            (0..shape.iter().product()).map(|i: usize| ((i * 7907) % 211) as f32 / 105.0 - 1.0).collect();
        let x = Tensor::<5>::from_data(burn::tensor::TensorData::new(values, shape), &device);
        let net = || PlainConvUNet::from_tensors("units", config.clone(), &tensors, &device);
        let logits = |t: Tensor<5>| t.into_data().try_to_vec::<f32>().unwrap_or_default();
        let f32 = logits(net()?.forward(x.clone()));
        let burn16 = logits(net()?.with_precision(crate::Precision::F16).forward(x.clone()));
        crate::ops::EMULATED_UNITS.set(Some(0));
        let units = net()?.with_precision(crate::Precision::F16).with_convolution(crate::Convolution::Units);
        let ours = logits(units.forward(x.clone()));
        let layers = crate::ops::EMULATED_UNITS.replace(None);
        // 2 × 3 in the encoder, 2 × 2 in the decoder.
        assert_eq!(layers, Some(10), "every 3×3×3 layer on the kernel");
        let scale = f32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = |b: &[f32]| f32.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let (by_burn, by_units) = (worst(&burn16), worst(&ours));
        eprintln!("f16 logits against f32 (largest |logit| {scale}): burn's {by_burn:e}, on matrix units {by_units:e}");
        assert!(ours.len() == f32.len() && by_units > 0.0, "{by_units}");
        assert!(by_units <= 1e-2 * scale, "{by_units} (largest |logit| {scale}; burn's f16 convolutions {by_burn})");
        // In f32, each product as three of f16 halves: as accurate as burn's f32 convolutions.
        crate::ops::EMULATED_UNITS.set(Some(0));
        let ours = logits(net()?.with_convolution(crate::Convolution::Units).forward(x));
        let layers = crate::ops::EMULATED_UNITS.replace(None);
        assert_eq!(layers, Some(10), "every 3×3×3 layer on the kernel, in f32");
        let by_units = worst(&ours);
        eprintln!("f32 logits on matrix units against burn's: {by_units:e}");
        assert!(ours.len() == f32.len() && by_units <= 2e-5 * scale, "{by_units} (largest |logit| {scale})");
        Ok(())
    }

    #[test]
    fn the_residual_encoder_names_its_blocks_and_runs() -> Result<(), AiError> {
        let mut draw = crate::testing::Values::new(1);
        let config = PlainConvUNetConfig {
            n_stages: 3,
            features_per_stage: vec![4, 8, 16],
            kernel_sizes: vec![[3, 3, 3]; 3],
            strides: vec![[1, 1, 1], [2, 2, 2], [1, 2, 2]],
            n_conv_per_stage: vec![],
            n_blocks_per_stage: vec![1, 2, 2],
            residual: true,
            n_conv_per_stage_decoder: vec![1, 1],
            decoder_kernel_sizes: Vec::new(),
            conv_bias: true,
            input_channels: 1,
            num_classes: 2,
        };
        let expected = config.expected_tensors();
        let names: BTreeMap<String, Vec<usize>> = expected.iter().cloned().collect();
        assert_eq!(names["encoder.stem.convs.0.conv.weight"], vec![4, 1, 3, 3, 3]);
        assert_eq!(names["encoder.stages.1.blocks.0.conv1.conv.weight"], vec![8, 4, 3, 3, 3]);
        // Strided and wider: the projection comes after the pooling, at index 1, without bias.
        assert_eq!(names["encoder.stages.1.blocks.0.skip.1.conv.weight"], vec![8, 4, 1, 1, 1]);
        assert!(!names.contains_key("encoder.stages.1.blocks.0.skip.1.conv.bias"));
        assert!(!names.keys().any(|k| k.starts_with("encoder.stages.0.blocks.0.skip")), "no shortcut needed");
        let tensors: Vec<_> = expected
            .into_iter()
            .map(|(n, shape)| {
                let count: usize = shape.iter().product();
                (n, shape, (0..count).map(|i| ((i % 13) as f32 - 6.0) * 0.05).collect::<Vec<f32>>())
            })
            .collect();
        let device = Device::flex();
        let net = PlainConvUNet::from_tensors("resenc", config.clone(), &tensors, &device)?;
        let x = draw.uniform([1, 1, 8, 16, 16], 0.0, 1.0, &device);
        let out = net.forward(x.clone());
        assert_eq!(out.dims(), [1, 2, 8, 16, 16]);
        // Profiled by kind: the stem, 2 + 3 + 2 + 3 + 2 convolutions in the blocks (the two
        // strided, wider ones with a projection), one per decoder stage and the head; a norm after
        // each but the head.
        let (_, found) = crate::profile::sections(|| net.forward(x.clone()));
        let count = |what| found.iter().find(|s| s.what == what).map_or(0, |s| s.count);
        let counts = ["convolutions", "instance norms", "transposed convolutions", "concatenations"].map(count);
        assert_eq!(counts, [16, 15, 2, 2], "{found:?}");
        // In half precision (pooled shortcuts, projections and all) the logits stay within f16's
        // rounding of the f32 ones, and come back as f32.
        let half =
            PlainConvUNet::from_tensors("resenc", config, &tensors, &device)?.with_precision(crate::Precision::F16);
        let out16 = half.forward(x);
        assert_eq!(out16.dtype(), burn::tensor::DType::F32);
        let (a, b) = (
            out.into_data().try_to_vec::<f32>().unwrap_or_default(),
            out16.into_data().try_to_vec::<f32>().unwrap_or_default(),
        );
        let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(
            a.len() == b.len() && worst > 0.0 && worst <= 1e-2 * scale,
            "f16 differs by {worst} (largest |logit| {scale})"
        );
        Ok(())
    }
}
