//! Instance normalisation (PyTorch's `InstanceNorm3d`: each image's channel by its own mean and
//! biased variance, ε [`EPS`], optionally scaled and shifted per channel) and the activation
//! that follows it in nnU-Net's and deepbet's networks.
//!
//! By burn's tensor operations on every device, or on a GPU by Lightbox's kernels
//! ([`crate::kernels::norm`], `gpu` builds): a mean and a centred sum of squares in f32 from
//! two reads of the input, split over many workgroups per channel, then one pass that
//! normalises, scales, shifts and activates, written in the input's dtype. burn's operations
//! make a pass of their own for each step (mean, centring, variance, division, scale, shift,
//! activation; burn's fusion joins some of them), in f32, and reduce each channel of a
//! full-resolution layer (2·10⁶ voxels) within one workgroup.

use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::leaky_relu;

/// `InstanceNorm3d`'s ε (PyTorch's default; nnU-Net's and deepbet's networks keep it).
pub const EPS: f32 = 1e-5;

/// What follows the normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    /// LeakyReLU with this negative slope (nnU-Net's: 0.01).
    LeakyRelu(f32),
}

impl Activation {
    /// The slope below zero, where there is an activation.
    pub fn slope(self) -> Option<f32> {
        match self {
            Activation::None => None,
            Activation::Relu => Some(0.0),
            Activation::LeakyRelu(slope) => Some(slope),
        }
    }
}

/// `x` `[N, C, D, H, W]`, each `(n, c)` normalised by its own statistics, then
/// `· gamma[c] + beta[c]` where `affine` is given (`[C]` each), then `activation`.
///
/// `kernels`: on a GPU (`gpu` builds), by Lightbox's kernels, the result in `x`'s dtype (f16
/// layers stay f16; statistics and arithmetic in f32). Elsewhere, or without `kernels`, by
/// burn's tensor operations in f32, the result f32.
pub fn instance_norm(
    x: Tensor<5>,
    affine: Option<(Tensor<1>, Tensor<1>)>,
    activation: Activation,
    kernels: bool,
) -> Tensor<5> {
    #[cfg(feature = "gpu")]
    if kernels && kernels_apply(&x.device()) {
        return crate::kernels::norm::instance_norm(x, affine, activation);
    }
    #[cfg(not(feature = "gpu"))]
    let _ = kernels;
    by_tensor_ops(x, affine, activation)
}

/// Whether [`instance_norm`] runs on Lightbox's kernels on `device` (a GPU, `gpu` builds).
pub fn kernels_apply(device: &Device) -> bool {
    #[cfg(feature = "gpu")]
    return matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_));
    #[cfg(not(feature = "gpu"))]
    {
        let _ = device;
        false
    }
}

/// [`instance_norm`] by burn's tensor operations, in f32 (the mean first, then the variance
/// of the centred values).
pub fn by_tensor_ops(x: Tensor<5>, affine: Option<(Tensor<1>, Tensor<1>)>, activation: Activation) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    let flat = x.cast(FloatDType::F32).reshape([n, c, d * h * w]);
    let mean = flat.clone().mean_dim(2);
    let centred = flat - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    let mut y = (centred / (var + EPS).sqrt()).reshape([n, c, d, h, w]);
    if let Some((gamma, beta)) = affine {
        let per_channel = |t: Tensor<1>| t.cast(FloatDType::F32).reshape([1, c, 1, 1, 1]);
        y = y * per_channel(gamma) + per_channel(beta);
    }
    match activation.slope() {
        Some(slope) => leaky_relu(y, f64::from(slope)),
        None => y,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Each channel's values normalised on the host in f64, scaled, shifted and activated.
    pub(crate) fn host_reference(
        values: &[f32],
        len: usize,
        gamma: &[f32],
        beta: &[f32],
        slope: Option<f32>,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(values.len());
        for (row, channel) in values.chunks(len).enumerate() {
            let mean = channel.iter().map(|&v| f64::from(v)).sum::<f64>() / len as f64;
            let var = channel.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / len as f64;
            let c = row % gamma.len();
            for &v in channel {
                let y =
                    (f64::from(v) - mean) / (var + f64::from(EPS)).sqrt() * f64::from(gamma[c]) + f64::from(beta[c]);
                out.push(match slope {
                    Some(s) if y < 0.0 => (y * f64::from(s)) as f32,
                    _ => y as f32,
                });
            }
        }
        out
    }

    #[test]
    fn each_channel_is_normalised_by_its_own_statistics_then_scaled_shifted_and_activated() {
        let mut draw = crate::testing::Values::new(1);
        let device = Device::flex();
        let x: Tensor<5> = draw.uniform([2, 3, 4, 5, 6], -3.0, 9.0, &device);
        let values: Vec<f32> = x.clone().into_data().try_to_vec().unwrap_or_default();
        let (gamma, beta) = ([2.0, -1.0, 0.5], [1.0, 0.0, -3.0]);
        for activation in [Activation::None, Activation::Relu, Activation::LeakyRelu(0.1)] {
            for affine in [false, true] {
                let parameters =
                    affine.then(|| (Tensor::<1>::from_floats(gamma, &device), Tensor::<1>::from_floats(beta, &device)));
                let y = instance_norm(x.clone(), parameters, activation, true);
                let ours: Vec<f32> = y.into_data().try_to_vec().unwrap_or_default();
                let expected = if affine {
                    host_reference(&values, 120, &gamma, &beta, activation.slope())
                } else {
                    host_reference(&values, 120, &[1.0], &[0.0], activation.slope())
                };
                assert_eq!(ours.len(), expected.len());
                let worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-5, "{activation:?}, affine {affine}: {worst:e}");
            }
        }
    }

    #[test]
    fn activations_have_their_slopes() {
        assert_eq!(Activation::None.slope(), None);
        assert_eq!(Activation::Relu.slope(), Some(0.0));
        assert_eq!(Activation::LeakyRelu(0.01).slope(), Some(0.01));
    }
}
