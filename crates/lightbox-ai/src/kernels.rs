//! Lightbox's own GPU kernels, written in CubeCL and reached through burn's backend extensions
//! (`#[backend_extension]`: burn's fusion stream, then a kernel on the cubecl backend's tensors;
//! on flex, burn's own operation). Built with the `gpu` feature only.
//!
//! One so far: [`conv3d_k3`], a direct 3×3×3 convolution (padding 1, stride 1 or 2) for the
//! few-channel layers at full resolution, where burn's direct kernel ran at 2 TFLOPS on an H200
//! and matrix products at 4.4 (issue 7). Each thread keeps a block of output channels (8 or 16,
//! the caller's choice: [`CHANNEL_BLOCKS`]) for a run of voxels along x ([`VOXELS`]) in
//! registers, so one input value feeds a block's multiply-adds and one weight [`VOXELS`]; weights are laid out
//! `[C·27, O]` so that a block of output channels is contiguous, and every thread of a
//! workgroup reads the same weights (the voxels vary fastest). Sums are in f32 whatever the
//! input precision. The convolution tuner ([`crate::ops::ConvWay::Direct`]) times it beside the
//! other ways and keeps it only where it is the fastest.

use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension,
    ops::{ConvOptions, FloatTensorOps, ModuleOps},
    tensor::FloatTensor,
};
use burn::prelude::Tensor;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;

/// Output channels a thread may accumulate (a layer's channel count must be a multiple of the
/// one chosen).
pub const CHANNEL_BLOCKS: [usize; 2] = [8, 16];
/// Consecutive output voxels along x a thread computes.
pub const VOXELS: usize = 4;

#[backend_extension(Cube, Flex, Fusion)]
pub trait LightboxKernels: Backend {
    /// `x` `[N, C, D, H, W]`, `weight` `[C·27, O]` (the `[O, C, 3, 3, 3]` weight with its
    /// output channels last), padding 1 → `[N, O, D', H', W']`, no bias.
    /// `channels`: output channels a thread sums, one of [`CHANNEL_BLOCKS`].
    #[fusion(dtype = x, shape = conv3d_k3_shape(x, weight, stride))]
    fn conv3d_k3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize, channels: usize) -> FloatTensor<Self>;
}

fn conv3d_k3_shape(x: &Shape, weight: &Shape, stride: &usize) -> Shape {
    let out = |len: usize| (len - 1) / *stride + 1;
    Shape::new([x[0], weight[1], out(x[2]), out(x[3]), out(x[4])])
}

/// Whether [`conv3d_k3`] computes this convolution: 3×3×3, padding 1, the same stride 1 or 2 on
/// every axis, no dilation or groups, and output channels a multiple of `channels` (one of
/// [`CHANNEL_BLOCKS`]).
pub fn conv3d_k3_fits(weight: [usize; 5], options: &burn::tensor::ops::ConvOptions<3>, channels: usize) -> bool {
    let [o, _, kd, kh, kw] = weight;
    [kd, kh, kw] == [3; 3]
        && options.padding == [(1, 1); 3]
        && (options.stride == [1; 3] || options.stride == [2; 3])
        && options.dilation == [1; 3]
        && options.groups == 1
        && CHANNEL_BLOCKS.contains(&channels)
        && o % channels == 0
}

/// A 3×3×3 convolution by [`LightboxKernels::conv3d_k3`], padding 1, in the weight's dtype;
/// the bias is added after. What the kernel does not cover ([`conv3d_k3_fits`]) goes to burn's
/// convolution, with the same stride and padding.
pub fn conv3d_k3(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    stride: usize,
    channels: usize,
) -> Tensor<5> {
    let options = burn::tensor::ops::ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
    if !conv3d_k3_fits(weight.dims(), &options, channels) {
        return burn::tensor::module::conv3d(x, weight, bias, options);
    }
    let [o, c, _, _, _] = weight.dims();
    let dtype = burn::tensor::FloatDType::from(weight.dtype());
    let x = x.cast(dtype);
    // [O, C, 27] → [C, 27, O] → [C·27, O], one small copy.
    let weight = weight.reshape([o, c * 27]).swap_dims(0, 1);
    let y = Tensor::from_dispatch(<Dispatch as LightboxKernels>::conv3d_k3(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        channels,
    ));
    match bias {
        Some(b) => y + b.cast(dtype).reshape([1, o, 1, 1, 1]),
        None => y,
    }
}

impl LightboxKernels for Flex {
    fn conv3d_k3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        _channels: usize,
    ) -> FloatTensor<Self> {
        let [c27, o] = weight.shape().dims::<2>();
        let weight = Self::float_reshape(Self::float_swap_dims(weight, 0, 1), Shape::new([o, c27 / 27, 3, 3, 3]));
        let options = ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
        <Self as ModuleOps<Self>>::conv3d(x, weight, None, options)
    }
}

impl LightboxKernels for CubeBackend {
    fn conv3d_k3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize, channels: usize) -> FloatTensor<Self> {
        gpu::conv3d_k3(x, weight, stride, channels)
    }
}

mod gpu {

    use burn::backend::TensorMetadata;
    use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
    use cubecl::prelude::*;

    use super::VOXELS;

    /// One thread: output channels `[block·channels, +channels)` of voxels
    /// `[x0, x0 + VOXELS)` of one output row; threads run over (n, z, y, x-run) fastest, then
    /// the channel block.
    #[cube(launch, address_type = "dynamic")]
    fn conv3d_k3_kernel<F: Float>(
        input: &Tensor<F>,
        weight: &Tensor<F>,
        output: &mut Tensor<F>,
        #[comptime] stride: usize,
        #[comptime] channels: usize,
        #[comptime] voxels: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let in_c = input.shape(1);
        let (in_d, in_h, in_w) = (input.shape(2), input.shape(3), input.shape(4));
        let out_c = output.shape(1);
        let (out_d, out_h, out_w) = (output.shape(2), output.shape(3), output.shape(4));
        let runs = out_w.div_ceil(voxels);
        let per_block = output.shape(0) * out_d * out_h * runs;
        let block = ABSOLUTE_POS / per_block;
        if block >= out_c / channels {
            terminate!();
        }
        let mut rest = ABSOLUTE_POS % per_block;
        let run = rest % runs;
        rest /= runs;
        let oy = rest % out_h;
        rest /= out_h;
        let oz = rest % out_d;
        let n = rest / out_d;
        let x0 = run * voxels;

        let mut acc = Array::<f32>::new(channels * voxels);
        let plane = in_h * in_w;
        for ic in 0..in_c {
            let base = (n * in_c + ic) * in_d * plane;
            #[unroll]
            for kz in 0..3usize {
                // Padded coordinates: p = o·stride + k reads input p − 1, inside when 1 ≤ p ≤ len.
                let pz = oz * stride + kz;
                #[unroll]
                for ky in 0..3usize {
                    let py = oy * stride + ky;
                    let row_inside = pz >= 1 && pz <= in_d && py >= 1 && py <= in_h;
                    #[unroll]
                    for kx in 0..3usize {
                        let tap = (kz * 3 + ky) * 3 + kx;
                        let w0 = (ic * 27 + tap) * out_c + block * channels;
                        let mut values = Array::<f32>::new(voxels);
                        #[unroll]
                        for v in 0..voxels {
                            let px = (x0 + v) * stride + kx;
                            values[v] = 0.0f32;
                            if row_inside && px >= 1 && px <= in_w {
                                values[v] = f32::cast_from(input[base + ((pz - 1) * in_h + py - 1) * in_w + px - 1]);
                            }
                        }
                        #[unroll]
                        for j in 0..channels {
                            let w = f32::cast_from(weight[w0 + j]);
                            #[unroll]
                            for v in 0..voxels {
                                acc[j * voxels + v] += w * values[v];
                            }
                        }
                    }
                }
            }
        }
        #[unroll]
        for j in 0..channels {
            let row = ((n * out_c + block * channels + j) * out_d + oz) * out_h * out_w + oy * out_w;
            #[unroll]
            for v in 0..voxels {
                if x0 + v < out_w {
                    output[row + x0 + v] = F::cast_from(acc[j * voxels + v]);
                }
            }
        }
    }

    pub(super) fn conv3d_k3(x: CubeTensor, weight: CubeTensor, stride: usize, channels: usize) -> CubeTensor {
        // The kernel indexes both as contiguous row-major tensors.
        let x = into_contiguous(x);
        let weight = into_contiguous(weight);
        let shape = super::conv3d_k3_shape(&x.shape(), &weight.shape(), &stride);
        let [n, o, d, h, w] = shape.dims::<5>();
        let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
        let threads = n * d * h * w.div_ceil(VOXELS) * (o / channels);
        if threads == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new(&client, threads);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, threads, cube_dim);
        let address = x.required_address_type().max(weight.required_address_type()).max(output.required_address_type());
        let dtype = burn::backend::cubecl::dtype_to_storage_type(x.dtype);
        conv3d_k3_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            stride,
            channels,
            VOXELS,
            dtype,
        );
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;
    use burn::tensor::ops::ConvOptions as Options;
    use burn::tensor::{DeviceKind, Distribution, FloatDType};

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    /// Largest |ours − burn's in f32 on the same values| / (1 + |burn's|) over the cases nnU-Net meets: strides 1 and 2, widths that are
    /// not a multiple of the voxel run, two images, two channel blocks, with and without bias.
    fn worst_difference(device: &Device, dtype: FloatDType, channels: usize) -> f32 {
        let cases =
            [([2, 3, 5, 6, 7], 32, 1), ([1, 5, 7, 6, 9], 16, 2), ([1, 8, 4, 4, 4], 16, 1), ([1, 2, 6, 5, 10], 48, 2)];
        let mut worst = 0.0f32;
        for (i, (shape, out, stride)) in cases.into_iter().enumerate() {
            let x = Tensor::<5>::random(shape, Distribution::Uniform(-1.0, 1.0), device).cast(dtype);
            let weight =
                Tensor::<5>::random([out, shape[1], 3, 3, 3], Distribution::Uniform(-1.0, 1.0), device).cast(dtype);
            let bias =
                (i % 2 == 0).then(|| Tensor::<1>::random([out], Distribution::Uniform(-1.0, 1.0), device).cast(dtype));
            let options = Options::new([stride; 3], [1; 3], [1; 3], 1);
            assert!(conv3d_k3_fits(weight.dims(), &options, channels));
            // The reference sums the same (rounded) values in f32.
            let f32 = |t: Tensor<5>| t.cast(FloatDType::F32);
            let reference = burn::tensor::module::conv3d(
                f32(x.clone()),
                f32(weight.clone()),
                bias.clone().map(|b| b.cast(FloatDType::F32)),
                options,
            );
            let ours = conv3d_k3(x, weight, bias, stride, channels);
            assert_eq!(ours.dims(), reference.dims(), "{shape:?} → {out}, stride {stride}");
            let (ours, reference) = (values(ours), values(reference));
            worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(worst, f32::max);
        }
        worst
    }

    #[test]
    fn fits_only_what_it_computes() {
        let options = |stride: [usize; 3], padding| Options::new(stride, padding, [1; 3], 1);
        let fits = |weight, options, channels| conv3d_k3_fits(weight, &options, channels);
        assert!(fits([32, 64, 3, 3, 3], options([1; 3], [1; 3]), 16));
        assert!(fits([64, 32, 3, 3, 3], options([2; 3], [1; 3]), 8));
        assert!(fits([320, 320, 3, 3, 3], options([1; 3], [1; 3]), 16));
        assert!(!fits([2, 32, 1, 1, 1], options([1; 3], [0; 3]), 8), "nnU-Net's head");
        assert!(!fits([24, 32, 3, 3, 3], options([1; 3], [1; 3]), 16), "channels in blocks of 16");
        assert!(!fits([32, 32, 3, 3, 3], options([1; 3], [1; 3]), 4), "blocks of 8 or 16 only");
        assert!(!fits([32, 32, 3, 3, 3], options([1, 2, 2], [1; 3]), 8), "anisotropic stride");
        assert!(!fits([32, 32, 1, 3, 3], options([1; 3], [0, 1, 1]), 8), "thick-slice kernel");
    }

    /// What the kernel does not cover (a channel count not a multiple of the block) is burn's.
    #[test]
    fn what_does_not_fit_is_burns_convolution() {
        for device in [Device::flex(), Device::wgpu(DeviceKind::DefaultDevice)] {
            let x = Tensor::<5>::random([1, 3, 5, 4, 6], Distribution::Uniform(-1.0, 1.0), &device);
            let weight = Tensor::<5>::random([12, 3, 3, 3, 3], Distribution::Uniform(-1.0, 1.0), &device);
            let options = Options::new([1; 3], [1; 3], [1; 3], 1);
            let reference = values(burn::tensor::module::conv3d(x.clone(), weight.clone(), None, options));
            assert_eq!(values(conv3d_k3(x, weight, None, 1, 8)), reference);
        }
    }

    /// On the CPU the extension is burn's own convolution (flex has no CubeCL kernels).
    #[test]
    fn on_flex_it_is_burns_convolution() {
        assert!(worst_difference(&Device::flex(), FloatDType::F32, 8) < 1e-5);
    }

    /// The CubeCL kernel itself, on whatever GPU adapter opens (lavapipe where there is none):
    /// this test needs one, and fails without.
    #[test]
    fn on_a_gpu_the_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        for channels in CHANNEL_BLOCKS {
            let f32_worst = worst_difference(&device, FloatDType::F32, channels);
            assert!(f32_worst < 1e-5, "f32, {channels} channels a thread: {f32_worst}");
            // f16 values summed in f32: only two roundings to f16 are left (the sum, then the
            // sum plus the bias), 2⁻¹¹ each.
            let f16_worst = worst_difference(&device, FloatDType::F16, channels);
            assert!(f16_worst < 2e-3, "f16, {channels} channels a thread: {f16_worst}");
            eprintln!(
                "{channels} channels a thread, worst differences from burn: f32 {f32_worst:e}, f16 {f16_worst:e}"
            );
        }
    }
}
