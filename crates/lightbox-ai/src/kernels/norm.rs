//! [`crate::norm::instance_norm`] on a GPU in three kernels and two small ones:
//! 1. [`chunks`]-many workgroups per `(n, c)` each add a chunk of its values (f32, whatever the
//!    input's dtype) → per-chunk sums; a thread per `(n, c)` adds those → its mean.
//! 2. The same over the values less their mean: Σd and Σd² → the variance (Σd²/n − (Σd/n)²,
//!    whose second term corrects the mean's rounding) → per `(n, c)` the mean μ and γ/σ.
//! 3. A thread per value: `(x − μ) · γ/σ + β`, activated, written in the input's dtype.
//!
//! Two reads of the input for the statistics and one read and one write for the result, against
//! burn's operations' pass per step; each channel's sums spread over many workgroups, so a
//! full-resolution layer's 32 channels fill the GPU.

use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::prelude::Tensor;
use burn::tensor::{FloatDType, Shape, TensorData};
use burn_cubecl::CubeBackend;

use crate::norm::{Activation, EPS};

/// Threads of a workgroup that sums a chunk.
pub const SUM_THREADS: usize = 256;
// The kernel halves its sums 8 times.
const _: () = assert!(SUM_THREADS == 1 << 8);
/// Values a chunk holds at least (so about 16 per thread), and the most chunks per `(n, c)`.
const CHUNK_VALUES: usize = 16 * SUM_THREADS;
const MOST_CHUNKS: usize = 1024;

/// Chunks a `(n, c)` of `len` values is summed in.
pub fn chunks(len: usize) -> usize {
    (len / CHUNK_VALUES).clamp(1, MOST_CHUNKS)
}

#[backend_extension(Cube, Flex, Fusion)]
pub trait NormKernels: Backend {
    /// `x` `[N, C, D, H, W]`, `gamma` and `beta` `[C]` in f32: [`crate::norm::instance_norm`]
    /// with γ and β, activated (LeakyReLU with `slope`) where `activated` → `x`'s shape and
    /// dtype.
    #[fusion(dtype = x, shape = x.clone())]
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        slope: f32,
        activated: bool,
    ) -> FloatTensor<Self>;
}

/// [`crate::norm::instance_norm`] by [`NormKernels::instance_norm`]: no `affine` is γ = 1,
/// β = 0.
pub fn instance_norm(x: Tensor<5>, affine: Option<(Tensor<1>, Tensor<1>)>, activation: Activation) -> Tensor<5> {
    let (c, device) = (x.dims()[1], x.device());
    let f32 = FloatDType::F32;
    let (gamma, beta) = match affine {
        Some((gamma, beta)) => (gamma.cast(f32), beta.cast(f32)),
        None => (Tensor::<1>::ones([c], &device).cast(f32), Tensor::<1>::zeros([c], &device).cast(f32)),
    };
    Tensor::from_dispatch(<Dispatch as NormKernels>::instance_norm(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        activation.slope().unwrap_or(1.0),
        activation.slope().is_some(),
    ))
}

/// On flex: host loops doing what the kernels do (two passes in f32 per `(n, c)`).
impl NormKernels for Flex {
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        slope: f32,
        activated: bool,
    ) -> FloatTensor<Self> {
        let (shape, dtype) = (x.shape(), x.dtype());
        let [_, c, d, h, w] = shape.dims::<5>();
        let floats = |t: FloatTensor<Self>| t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        let (mut values, gamma, beta) = (floats(x), floats(gamma), floats(beta));
        let len = (d * h * w).max(1);
        for (row, channel) in values.chunks_mut(len).enumerate() {
            let n = channel.len() as f32;
            let mean = channel.iter().sum::<f32>() / n;
            let (s, q) =
                channel.iter().fold((0.0f32, 0.0f32), |(s, q), &v| (s + (v - mean), q + (v - mean) * (v - mean)));
            let var = (q / n - (s / n) * (s / n)).max(0.0);
            let (mean, scale) = (mean + s / n, gamma[row % c] / (var + EPS).sqrt());
            for v in channel.iter_mut() {
                let y = (*v - mean) * scale + beta[row % c];
                *v = if activated && y < 0.0 { y * slope } else { y };
            }
        }
        <Self as burn::backend::ops::FloatTensorOps<Self>>::float_from_data(
            TensorData::new(values, shape).convert_dtype(dtype),
            &Default::default(),
        )
    }
}

impl NormKernels for CubeBackend {
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        slope: f32,
        activated: bool,
    ) -> FloatTensor<Self> {
        let slope = <Self as burn::backend::ops::FloatTensorOps<Self>>::float_from_data(
            TensorData::new(vec![slope], [1]),
            &x.device,
        );
        gpu::instance_norm(x, gamma, beta, slope, activated)
    }
}

mod gpu {
    use burn::backend::TensorMetadata;
    use burn::tensor::DType;
    use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
    use cubecl::prelude::*;

    use super::{SUM_THREADS, Shape};

    /// One workgroup: chunk `k` of `(n, c)` = row `r` (of `partial`'s `[rows, chunks, 2]`):
    /// Σd and Σd² of its values, d = x − `centre[r·2]` where `centred` (else x), in f32.
    #[cube(launch, address_type = "dynamic")]
    fn chunk_sums_kernel<F: Float>(
        input: &Tensor<F>,
        centre: &Tensor<f32>,
        partial: &mut Tensor<f32>,
        #[comptime] centred: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let rows = input.shape(0) * input.shape(1);
        let len = input.shape(2) * input.shape(3) * input.shape(4);
        let chunks = partial.shape(1);
        let cube = CUBE_POS;
        if cube >= rows * chunks {
            terminate!();
        }
        let row = cube / chunks;
        let per_chunk = len.div_ceil(chunks);
        let start = (cube % chunks) * per_chunk;
        let mut end = start + per_chunk;
        if end > len {
            end = len;
        }
        let m = if centred { centre[row * 2] } else { f32::new(0.0) };
        let unit = UNIT_POS as usize;
        let mut s = f32::new(0.0);
        let mut q = f32::new(0.0);
        let mut i = start + unit;
        while i < end {
            let d = f32::cast_from(input[row * len + i]) - m;
            s += d;
            q += d * d;
            i += SUM_THREADS;
        }
        let mut shared = Shared::<[f32]>::new_slice(2 * SUM_THREADS);
        shared[unit] = s;
        shared[SUM_THREADS + unit] = q;
        sync_cube();
        // Halves 128, 64, …, 1 (unrolled: each a constant).
        #[unroll]
        for level in 1..9usize {
            let half = SUM_THREADS >> level;
            if unit < half {
                let (a, b) = (
                    shared[unit] + shared[unit + half],
                    shared[SUM_THREADS + unit] + shared[SUM_THREADS + unit + half],
                );
                shared[unit] = a;
                shared[SUM_THREADS + unit] = b;
            }
            sync_cube();
        }
        if unit == 0 {
            let (total, squares) = (shared[0], shared[SUM_THREADS]);
            partial[cube * 2] = total;
            partial[cube * 2 + 1] = squares;
        }
    }

    /// One thread a row `r`: its chunks' sums added. Not `centred` (the sums of x): `out[r·2]` =
    /// the row's mean. `centred` (Σd and Σd², d = x − `mean[r·2]`): the variance from them;
    /// `out[r·2]` = μ (the mean corrected by Σd/n), `out[r·2 + 1]` = γ/σ.
    #[cube(launch, address_type = "dynamic")]
    fn row_finish_kernel<F: Float>(
        input: &Tensor<F>,
        partial: &Tensor<f32>,
        mean: &Tensor<f32>,
        gamma: &Tensor<f32>,
        out: &mut Tensor<f32>,
        #[comptime] centred: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let row = ABSOLUTE_POS;
        if row >= input.shape(0) * input.shape(1) {
            terminate!();
        }
        let n = f32::cast_from(input.shape(2) * input.shape(3) * input.shape(4));
        let chunks = partial.shape(1);
        let mut s = f32::new(0.0);
        let mut q = f32::new(0.0);
        for k in 0..chunks {
            s += partial[(row * chunks + k) * 2];
            q += partial[(row * chunks + k) * 2 + 1];
        }
        let dm = s / n;
        if centred {
            let var = f32::max(q / n - dm * dm, f32::new(0.0));
            let c = row % gamma.shape(0);
            out[row * 2] = mean[row * 2] + dm;
            out[row * 2 + 1] = gamma[c] / f32::sqrt(var + 1e-5f32);
        } else {
            out[row * 2] = dm;
        }
    }

    /// One thread a value: `(x − params[r·2]) · params[r·2 + 1] + beta[c]` (x − μ first: exact
    /// where x is near μ), below zero times `slope[0]` where `activated`, in the input's dtype.
    #[cube(launch, address_type = "dynamic")]
    fn norm_apply_kernel<F: Float>(
        input: &Tensor<F>,
        params: &Tensor<f32>,
        beta: &Tensor<f32>,
        slope: &Tensor<f32>,
        output: &mut Tensor<F>,
        #[comptime] activated: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        let len = input.shape(2) * input.shape(3) * input.shape(4);
        if i >= input.shape(0) * input.shape(1) * len {
            terminate!();
        }
        let row = i / len;
        let y = (f32::cast_from(input[i]) - params[row * 2]) * params[row * 2 + 1] + beta[row % beta.shape(0)];
        if activated {
            output[i] = F::cast_from(select(y < 0.0f32, y * slope[0], y));
        } else {
            output[i] = F::cast_from(y);
        }
    }

    pub(super) fn instance_norm(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        slope: CubeTensor,
        activated: bool,
    ) -> CubeTensor {
        let (x, gamma, beta) = (into_contiguous(x), into_contiguous(gamma), into_contiguous(beta));
        let [n, c, d, h, w] = x.shape().dims::<5>();
        let (rows, len) = (n * c, d * h * w);
        let client = x.client.clone();
        let empty = |shape: Shape, dtype: DType| empty_device_dtype(client.clone(), x.device.clone(), shape, dtype);
        let output = empty(x.shape(), x.dtype);
        if rows * len == 0 {
            return output;
        }
        let chunks = super::chunks(len);
        let partial = empty(Shape::new([rows, chunks, 2]), DType::F32);
        let means = empty(Shape::new([rows, 2]), DType::F32);
        let params = empty(Shape::new([rows, 2]), DType::F32);
        let address = x.required_address_type().max(output.required_address_type());
        let dtype = burn::backend::cubecl::dtype_to_storage_type(x.dtype);

        let sum_dim = CubeDim::new_1d(SUM_THREADS as u32);
        let sum_count = cubecl::calculate_cube_count_elemwise(&client, rows * chunks * SUM_THREADS, sum_dim);
        let row_dim = CubeDim::new(&client, rows);
        let row_count = cubecl::calculate_cube_count_elemwise(&client, rows, row_dim);
        let sums = |centred: bool| {
            chunk_sums_kernel::launch(
                &client,
                sum_count.clone(),
                sum_dim,
                address,
                x.clone().into_tensor_arg(),
                means.clone().into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                centred,
                dtype,
            )
        };
        let finish = |centred: bool, mean: &CubeTensor, into: &CubeTensor| {
            row_finish_kernel::launch(
                &client,
                row_count.clone(),
                row_dim,
                address,
                x.clone().into_tensor_arg(),
                partial.clone().into_tensor_arg(),
                mean.clone().into_tensor_arg(),
                gamma.clone().into_tensor_arg(),
                into.clone().into_tensor_arg(),
                centred,
                dtype,
            )
        };
        // The first finish reads no mean (γ stands in: a buffer may not be bound twice).
        sums(false);
        finish(false, &gamma, &means);
        sums(true);
        finish(true, &means, &params);
        let threads = rows * len;
        let apply_dim = CubeDim::new(&client, threads);
        let apply_count = cubecl::calculate_cube_count_elemwise(&client, threads, apply_dim);
        norm_apply_kernel::launch(
            &client,
            apply_count,
            apply_dim,
            address,
            x.into_tensor_arg(),
            params.into_tensor_arg(),
            beta.into_tensor_arg(),
            slope.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            activated,
            dtype,
        );
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::Device;
    use burn::tensor::DeviceKind;

    /// Largest |ours − the norm in f64 of the same (rounded) values| / (1 + |the f64 norm|), in
    /// units of each case's bound (so under 1 passes),
    /// over shapes with one and several chunks per channel, one and two images, an offset far
    /// larger than the spread (which the two passes keep from the variance), with and without γ
    /// and β, each activation; burn's operations' worst beside it.
    fn worst_against_f64(
        device: &Device,
        dtype: FloatDType,
        ours: impl Fn(Tensor<5>, Option<(Tensor<1>, Tensor<1>)>, Activation) -> Tensor<5>,
    ) -> (f32, f32) {
        let mut draw = crate::testing::Values::new(1);
        // Each case's bound in f32: an offset of 300 (σ 0.87) costs the f32 mean's rounding,
        // 1.8·10⁻⁵ σ (burn's operations: 3.4·10⁻⁵ there); in f16 the output's rounding, 2.4·10⁻⁴.
        let cases: [([usize; 5], f64, f32); 4] = [
            ([2, 3, 5, 6, 7], 0.0, 1e-5),
            ([1, 2, 40, 40, 40], 0.0, 1e-5),
            ([1, 4, 3, 3, 3], 0.0, 1e-5),
            ([1, 2, 20, 20, 20], 300.0, 4e-5),
        ];
        let floats = |t: Tensor<5>| t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap_or_default();
        let (mut worst, mut burns) = (0.0f32, 0.0f32);
        for (i, (shape, offset, bound)) in cases.into_iter().enumerate() {
            let bound = if dtype == FloatDType::F16 { 1e-3 } else { bound };
            let x = draw.uniform(shape, offset - 1.0, offset + 2.0, device).cast(dtype);
            let values = floats(x.clone());
            let c = shape[1];
            let gamma: Vec<f32> = (0..c).map(|k| 0.5 + 0.4 * k as f32).collect();
            let beta: Vec<f32> = (0..c).map(|k| 0.3 * k as f32 - 0.5).collect();
            let affine = i % 2 == 1;
            let tensors = affine.then(|| {
                (Tensor::<1>::from_floats(gamma.as_slice(), device), Tensor::<1>::from_floats(beta.as_slice(), device))
            });
            for activation in [Activation::None, Activation::Relu, Activation::LeakyRelu(0.01)] {
                let (g, b) = if affine { (&gamma[..], &beta[..]) } else { (&[1.0f32][..], &[0.0f32][..]) };
                let len = shape[2] * shape[3] * shape[4];
                let expected = crate::norm::tests::host_reference(&values, len, g, b, activation.slope());
                let y = ours(x.clone(), tensors.clone(), activation);
                assert_eq!(y.dims(), shape);
                assert_eq!(FloatDType::from(y.dtype()), dtype, "the input's dtype");
                let by_burn = floats(crate::norm::by_tensor_ops(x.clone(), tensors.clone(), activation));
                let ours = floats(y);
                assert_eq!(ours.len(), expected.len());
                for ((p, q), r) in ours.iter().zip(&expected).zip(&by_burn) {
                    worst = worst.max((p - q).abs() / (1.0 + q.abs()) / bound);
                    burns = burns.max((r - q).abs() / (1.0 + q.abs()) / bound);
                }
            }
        }
        (worst, burns)
    }

    #[test]
    fn each_chunk_holds_enough_values_and_there_are_never_too_many() {
        assert_eq!(chunks(1), 1);
        assert_eq!(chunks(64), 1);
        assert_eq!(chunks(128 * 128 * 128), 512);
        assert_eq!(chunks(1 << 30), MOST_CHUNKS);
    }

    #[test]
    fn on_flex_the_host_loops_compute_burns_norm() {
        let device = Device::flex();
        let (worst, _) = worst_against_f64(&device, FloatDType::F32, |x, affine, activation| {
            let (c, device) = (x.dims()[1], x.device());
            let (gamma, beta) = affine.unwrap_or_else(|| (Tensor::ones([c], &device), Tensor::zeros([c], &device)));
            Tensor::from_dispatch(<Dispatch as NormKernels>::instance_norm(
                x.into_dispatch(),
                gamma.into_dispatch(),
                beta.into_dispatch(),
                activation.slope().unwrap_or(1.0),
                activation.slope().is_some(),
            ))
        });
        assert!(worst < 1.0, "{worst} of the bound");
    }

    /// In f32 the norm to rounding; in f16 within the output's rounding to f16 (statistics and
    /// arithmetic in f32).
    #[test]
    fn on_a_gpu_the_norm_kernels_compute_the_norm() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let kernels = |x, affine, activation| crate::norm::instance_norm(x, affine, activation, true);
        let (f32_worst, f32_burns) = worst_against_f64(&device, FloatDType::F32, kernels);
        let (f16_worst, f16_burns) = worst_against_f64(&device, FloatDType::F16, kernels);
        eprintln!(
            "instance norm against f64, in units of each case's bound: Lightbox's kernels f32 {f32_worst:.3}, f16 {f16_worst:.3}; burn's operations f32 {f32_burns:.3}, f16 {f16_burns:.3}"
        );
        assert!(f32_worst < 1.0, "f32: {f32_worst} of the bound");
        assert!(f16_worst < 1.0, "f16: {f16_worst} of the bound");
    }
}
