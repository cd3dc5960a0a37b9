//! LinkNet3d, the network of deepbet (Fisch et al. 2024; `fastmri.models.linknet3d` traced to
//! TorchScript in the deepbet 1.0.2 wheel), ported layer by layer from the traced code:
//! - `init`: Conv 7³/2 (1→16) → InstanceNorm → ReLU → MaxPool 3³/2;
//! - `down0..3` (16→16→32→64→128): two residual blocks each, `relu(double_conv(x) + x)`, the
//!   first of down1..3 with a stride-2 first convolution and a 1×1/2 convolution + norm as its
//!   shortcut;
//! - `up0..3`: 1×1 conv to a quarter of the channels → transposed conv 3³ (stride 2, output
//!   padding 1; up3 stride 1) → 1×1 conv, each with InstanceNorm and ReLU; the decoder adds
//!   the encoder's outputs;
//! - head: transposed conv 3³/2 (16→8) → conv 3³ (8→8) → transposed conv 2³/2 (8→2), softmax.
//!
//! Every InstanceNorm uses the input's own statistics (biased variance, ε 1e-5) and has no
//! affine parameters; only the head's three convolutions have biases.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::module::{conv_transpose3d, conv3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

use crate::AiError;
use crate::norm::Activation;
use crate::ops::max_pool3d;

/// (down stage input, output) channels.
const DOWN: [(usize, usize); 4] = [(16, 16), (16, 32), (32, 64), (64, 128)];
/// (up stage input, output) channels.
const UP: [(usize, usize); 4] = [(128, 64), (64, 32), (32, 16), (16, 16)];

pub struct LinkNet3d {
    weights: BTreeMap<String, Tensor<5>>,
    biases: BTreeMap<String, Tensor<1>>,
}

fn k3(o: usize, i: usize) -> Vec<usize> {
    vec![o, i, 3, 3, 3]
}

fn k1(o: usize, i: usize) -> Vec<usize> {
    vec![o, i, 1, 1, 1]
}

impl LinkNet3d {
    /// Every tensor the network reads, with its shape (PyTorch's names and layouts).
    pub fn expected_tensors() -> Vec<(String, Vec<usize>)> {
        let mut t = vec![("init.0.weight".to_owned(), vec![16, 1, 7, 7, 7])];
        for (s, (i, o)) in DOWN.iter().enumerate() {
            t.push((format!("down{s}.block1.double_conv.0.weight"), k3(*o, *i)));
            t.push((format!("down{s}.block1.double_conv.3.weight"), k3(*o, *o)));
            if s > 0 {
                t.push((format!("down{s}.block1.downsample.0.weight"), k1(*o, *i)));
            }
            t.push((format!("down{s}.block2.double_conv.0.weight"), k3(*o, *o)));
            t.push((format!("down{s}.block2.double_conv.3.weight"), k3(*o, *o)));
        }
        for (s, (i, o)) in UP.iter().enumerate() {
            let q = i / 4;
            t.push((format!("up{s}.conv1.0.weight"), k1(q, *i)));
            // Transposed convolutions store [in, out, k…].
            t.push((format!("up{s}.tp_conv.0.weight"), k3(q, q)));
            t.push((format!("up{s}.conv2.0.weight"), k1(*o, q)));
        }
        t.push(("tp_conv1.0.weight".into(), vec![16, 8, 3, 3, 3]));
        t.push(("tp_conv1.0.bias".into(), vec![8]));
        t.push(("conv.0.weight".into(), vec![8, 8, 3, 3, 3]));
        t.push(("conv.0.bias".into(), vec![8]));
        t.push(("tp_conv2.weight".into(), vec![8, 2, 2, 2, 2]));
        t.push(("tp_conv2.bias".into(), vec![2]));
        t
    }

    /// The network from named tensors, which must be exactly [`expected_tensors`](Self::expected_tensors).
    pub fn from_tensors(
        model: &str,
        tensors: &[(String, Vec<usize>, Vec<f32>)],
        device: &Device,
    ) -> Result<Self, AiError> {
        crate::package::check_named(model, &Self::expected_tensors(), tensors)?;
        let (mut weights, mut biases) = (BTreeMap::new(), BTreeMap::new());
        for (name, shape, values) in tensors {
            if shape.len() == 1 {
                biases.insert(name.clone(), Tensor::from_data(TensorData::new(values.clone(), [shape[0]]), device));
            } else {
                let s: [usize; 5] = shape
                    .as_slice()
                    .try_into()
                    .map_err(|_| AiError::Weights { model: model.to_owned(), problem: format!("{name} is not 5-D") })?;
                weights.insert(name.clone(), Tensor::from_data(TensorData::new(values.clone(), s), device));
            }
        }
        Ok(Self { weights, biases })
    }

    fn w(&self, name: &str) -> Tensor<5> {
        // Checked complete in `from_tensors`.
        self.weights.get(name).cloned().unwrap_or_else(|| unreachable!("weight {name} was checked"))
    }

    fn b(&self, name: &str) -> Option<Tensor<1>> {
        self.biases.get(name).cloned()
    }

    fn conv(&self, x: Tensor<5>, name: &str, stride: usize, padding: usize) -> Tensor<5> {
        let bias = self.b(&name.replace(".weight", ".bias"));
        conv3d(x, self.w(name), bias, ConvOptions::new([stride; 3], [padding; 3], [1; 3], 1))
    }

    fn conv_t(&self, x: Tensor<5>, name: &str, stride: usize, padding: usize, out_padding: usize) -> Tensor<5> {
        let bias = self.b(&name.replace(".weight", ".bias"));
        let options = ConvTransposeOptions::new([stride; 3], [padding; 3], [out_padding; 3], [1; 3], 1);
        conv_transpose3d(x, self.w(name), bias, options)
    }

    /// [`forward`](Self::forward) on plain values (`shape` = `[N, 1, D, H, W]`, C order), for
    /// callers that do not handle tensors (parity tests, benchmarks); waits for the result.
    pub fn forward_values(
        &self,
        device: &crate::AiDevice,
        input: Vec<f32>,
        shape: [usize; 5],
    ) -> Result<Vec<f32>, AiError> {
        if shape[1] != 1 {
            return Err(AiError::Input(format!("shape {shape:?}: the network takes one channel")));
        }
        crate::ops::forward_values(device, input, shape, |x| self.forward(x))
    }

    /// Softmax over the network's two channels: `[N, 1, D, H, W]` → `[N, 2, D, H, W]`, channel
    /// 1 the brain's probability.
    pub fn forward(&self, x: Tensor<5>) -> Tensor<5> {
        let init = max_pool3d(norm_relu(self.conv(x, "init.0.weight", 2, 3)), 3, 2, 1);
        let mut skips = Vec::new();
        let mut h = init.clone();
        for s in 0..4 {
            let stride = if s == 0 { 1 } else { 2 };
            let block = |x: Tensor<5>, b: usize, first_stride: usize| {
                let p = format!("down{s}.block{b}.double_conv");
                let y = norm_relu(self.conv(x, &format!("{p}.0.weight"), first_stride, 1));
                instance_norm(self.conv(y, &format!("{p}.3.weight"), 1, 1))
            };
            let shortcut = if s == 0 {
                h.clone()
            } else {
                instance_norm(self.conv(h.clone(), &format!("down{s}.block1.downsample.0.weight"), 2, 0))
            };
            let b1 = relu(block(h, 1, stride) + shortcut);
            h = relu(block(b1.clone(), 2, 1) + b1);
            skips.push(h.clone());
        }
        let up = |x: Tensor<5>, s: usize| {
            let y = norm_relu(self.conv(x, &format!("up{s}.conv1.0.weight"), 1, 0));
            let (stride, out_padding) = if s == 3 { (1, 0) } else { (2, 1) };
            let y = norm_relu(self.conv_t(y, &format!("up{s}.tp_conv.0.weight"), stride, 1, out_padding));
            norm_relu(self.conv(y, &format!("up{s}.conv2.0.weight"), 1, 0))
        };
        let d3 = up(skips[3].clone(), 0) + skips[2].clone();
        let d2 = up(d3, 1) + skips[1].clone();
        let d1 = up(d2, 2) + skips[0].clone();
        let d0 = up(d1, 3) + init;
        let y = norm_relu(self.conv_t(d0, "tp_conv1.0.weight", 2, 1, 1));
        let y = norm_relu(self.conv(y, "conv.0.weight", 1, 1));
        softmax(self.conv_t(y, "tp_conv2.weight", 2, 0, 0), 1)
    }
}

/// Instance normalisation with the input's own statistics, no affine (biased variance, ε 1e-5):
/// [`crate::norm::instance_norm`], on a GPU by Lightbox's kernels.
fn instance_norm(x: Tensor<5>) -> Tensor<5> {
    crate::norm::instance_norm(x, None, Activation::None, true)
}

/// [`instance_norm`], then ReLU.
fn norm_relu(x: Tensor<5>) -> Tensor<5> {
    crate::norm::instance_norm(x, None, Activation::Relu, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_maps_a_volume_to_two_probabilities_per_voxel() -> Result<(), AiError> {
        let mut draw = crate::testing::Values::new(1);
        let device = Device::flex();
        // Random weights of the right shapes.
        let tensors: Vec<_> = LinkNet3d::expected_tensors()
            .into_iter()
            .enumerate()
            .map(|(k, (name, shape))| {
                let n: usize = shape.iter().product();
                let values: Vec<f32> =
                    (0..n).map(|i| (((i * 7919 + k * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 0.2).collect();
                (name, shape, values)
            })
            .collect();
        assert_eq!(tensors.iter().map(|(_, _, v)| v.len()).sum::<usize>(), 2_126_258, "deepbet's parameter count");
        let net = LinkNet3d::from_tensors("test", &tensors, &device)?;
        let x: Tensor<5> = draw.uniform([1, 1, 32, 32, 32], 0.0, 1.0, &device);
        let y = net.forward(x);
        assert_eq!(y.dims(), [1, 2, 32, 32, 32]);
        let sums: Vec<f32> = y.sum_dim(1).into_data().try_to_vec().unwrap_or_default();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "softmax channels must sum to 1");
        let mut short = tensors.clone();
        short.pop();
        let err = LinkNet3d::from_tensors("test", &short, &device).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("missing tp_conv2.bias [2]"), "{err}");
        Ok(())
    }
}
