//! The 3-D operations burn 0.22 lacks, built from the ones it has, exact by construction:
//! - max pooling (burn #5785): a box maximum is separable, so two 2-D poolings on reshaped views;
//! - trilinear resizing (burn's `interpolate` is 2-D only): bilinear over (H, W), then linear
//!   over D on a view whose second axis keeps its size (the identity there);
//! - transposed convolution with kernel = stride (nnU-Net's upsampling), which burn's GPU
//!   backends run slowly (burn #5792): it writes disjoint blocks, so it is one matrix product
//!   followed by a voxel shuffle;
//! - 3-D convolution as matrix products (im2col, `conv3d_gemm`): where burn's GPU kernels
//!   compile to WGSL, which has no cooperative matrices, its implicit-GEMM convolutions decline
//!   and only its direct convolution runs (issue 7: 0.073× PyTorch on an H200), while its matrix
//!   product has register-tiled kernels that need none;
//! - per layer, the fastest of burn's kernels, the matrix products either way round and, on a
//!   GPU, Lightbox's own kernels and Winograd's algorithms (`crate::kernels`, feature `gpu`;
//!   `crate::winograd`) (`conv3d_tuned`, [`ConvWay`]): with SPIR-V on an H100, burn's implicit GEMM on tensor
//!   cores ran a 32 → 32 channel f16 layer on 128³ in 3.2 ms (its direct kernel 28.8 ms) but
//!   declined layers of 128 channels (a tile over the 48 KiB of shared memory Vulkan grants),
//!   where its direct kernel took 14 ms.

use burn::prelude::*;
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};

use crate::tuning::{Entry, TuningStore};

/// 3-D max pooling of `[N, C, D, H, W]` with a cubic `kernel`, `stride` and `padding` (as
/// PyTorch's `MaxPool3d`, floor mode).
pub fn max_pool3d(x: Tensor<5>, kernel: usize, stride: usize, padding: usize) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    let plane = MaxPoolOptions::new([kernel, kernel]).with_stride([stride, stride]).with_padding([padding, padding]);
    let pooled = max_pool2d(x.reshape([n, c * d, h, w]), plane);
    let [_, _, h2, w2] = pooled.dims();
    let depth = MaxPoolOptions::new([kernel, 1]).with_stride([stride, 1]).with_padding([padding, 0]);
    let pooled = max_pool2d(pooled.reshape([n, c, d, h2 * w2]), depth);
    let [_, _, d2, _] = pooled.dims();
    pooled.reshape([n, c, d2, h2, w2])
}

/// Trilinear resizing of `[N, C, D, H, W]` to `size` (as PyTorch's
/// `interpolate(mode='trilinear', align_corners=…)`).
pub fn resize_trilinear(x: Tensor<5>, size: [usize; 3], align_corners: bool) -> Tensor<5> {
    let [n, c, d, h, w] = x.dims();
    let [d2, h2, w2] = size;
    let options = |out: [usize; 2]| {
        InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(align_corners).with_output_size(out)
    };
    let planes = interpolate(x.reshape([n, c * d, h, w]), options([h2, w2]));
    let depth = interpolate(planes.reshape([n, c, d, h2 * w2]), options([d2, h2 * w2]));
    depth.reshape([n, c, d2, h2, w2])
}

/// `ConvTranspose3d` with kernel = stride = `s` (per axis) and no padding: `x`
/// `[N, I, D, H, W]`, `weight` `[I, O, s₀, s₁, s₂]` (PyTorch's layout), optional `bias` `[O]` →
/// `[N, O, D·s₀, H·s₁, W·s₂]`, in the weight's precision (f16 where the network runs in half
/// precision, as PyTorch's autocast hands the next layer f16; the bias, f16 too there, is added
/// in that precision: one rounding of the exact sum either way).
pub fn conv_transpose3d_stride(x: Tensor<5>, weight: Tensor<5>, bias: Option<Tensor<1>>, s: [usize; 3]) -> Tensor<5> {
    let weight_dtype = weight.dtype();
    let x = x.cast(burn::tensor::FloatDType::from(weight_dtype));
    let [n, i, d, h, w] = x.dims();
    let [_, o, _, _, _] = weight.dims();
    let block = s[0] * s[1] * s[2];
    // Every input voxel writes its own block: out[o, a, b, c] = Σᵢ W[i, o, a, b, c] · x[i].
    let columns = weight.reshape([i, o * block]).transpose().unsqueeze::<3>().expand([n, o * block, i]);
    let blocks = columns.matmul(x.reshape([n, i, d * h * w]));
    let shuffled: Tensor<8> = blocks.reshape([n, o, s[0], s[1], s[2], d, h, w]).permute([0, 1, 5, 2, 6, 3, 7, 4]);
    let out = shuffled.reshape([n, o, d * s[0], h * s[1], w * s[2]]);
    match bias {
        Some(b) => out + b.cast(burn::tensor::FloatDType::from(weight_dtype)).reshape([1, o, 1, 1, 1]),
        None => out,
    }
}

/// A 3-D convolution as matrix products (grouped or dilated ones, which nnU-Net does not use,
/// go to burn's own kernels): for each slab of output
/// depth, the kernel's windows over the zero-padded input (`unfold`, a view) are copied once
/// into columns `[N, C·taps, voxels]` (channel-major, as the weight `[O, C, kd, kh, kw]` is laid
/// out), and the weight as `[O, C·taps]` multiplies them. The same sums as a direct convolution
/// in another order. Computes in the weight's dtype.
///
/// At most `budget` bytes of columns are built at once (at least one slice of output depth), so
/// that a full-resolution layer (e.g. 32 channels × 27 taps × 128³ voxels, 7 GB at once) stays
/// within a GPU's memory and under the largest buffer a shader may bind
/// ([`Convolution::GEMM`](crate::Convolution::GEMM)'s 96 MiB).
pub fn conv3d_gemm(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    budget: usize,
) -> Tensor<5> {
    gemm(x, weight, bias, options, budget, Product::Plain)
}

/// How [`gemm`] multiplies the weight `[O, K]` by the columns `[K, V]` (K = C·taps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    /// `[O, K] · [K, V]`.
    Plain,
    /// `([K, V]ᵀ · [O, K]ᵀ)ᵀ`: [`ConvWay::GemmTransposed`].
    Transposed,
    /// K cut into this many parts by input channel, one product each in a batch, the parts'
    /// sums added after (in f32): [`ConvWay::GemmSplit`].
    Split(usize),
}

fn gemm(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    budget: usize,
    way: Product,
) -> Tensor<5> {
    use burn::tensor::Slice;
    if options.groups != 1 || options.dilation != [1; 3] {
        return burn::tensor::module::conv3d(x, weight, bias, options.clone());
    }
    let [n, c, d, h, w] = x.dims();
    let [o, _, kd, kh, kw] = weight.dims();
    let (stride, padding) = (options.stride, options.padding);
    let x = if padding == [(0, 0); 3] { x } else { x.pad(padding, burn::tensor::ops::PadMode::Constant(0.0)) };
    let out = |len: usize, k: usize, a: usize| (len + padding[a].0 + padding[a].1).saturating_sub(k) / stride[a] + 1;
    let (od, oh, ow) = (out(d, kd, 0), out(h, kh, 1), out(w, kw, 2));
    let taps = kd * kh * kw;
    let plane = oh * ow;
    let bytes = weight.dtype().size();
    let slab = (budget / (n * c * taps * plane * bytes).max(1)).clamp(1, od);
    let weight = weight.reshape([1, o, c * taps]).expand([n, o, c * taps]);
    // The same parts of K for the weight and the columns (channel-major both): [N·S, O, K/S].
    let split = match way {
        Product::Split(parts) if parts > 1 && c.is_multiple_of(parts) => parts,
        _ => 1,
    };
    let k = c * taps / split;
    let split_weight =
        (split > 1).then(|| weight.clone().reshape([n, o, split, k]).swap_dims(1, 2).reshape([n * split, o, k]));
    // [N, O, K] · [N, K, V], or ([N, K, V]ᵀ · [N, O, K]ᵀ)ᵀ, or Σₛ [N·S, O, K/S] · [N·S, K/S, V].
    let product = |columns: Tensor<3>| match (&split_weight, way) {
        (Some(parts), _) => {
            let v = columns.dims()[2];
            let sums = parts.clone().matmul(columns.reshape([n * split, k, v]));
            let dtype = burn::tensor::FloatDType::from(sums.dtype());
            let sums = sums.cast(burn::tensor::FloatDType::F32).reshape([n, split, o, v]);
            sums.sum_dim(1).reshape([n, o, v]).cast(dtype)
        }
        (None, Product::Transposed) => columns.swap_dims(1, 2).matmul(weight.clone().swap_dims(1, 2)).swap_dims(1, 2),
        (None, _) => weight.clone().matmul(columns),
    };
    let add_bias = |y: Tensor<5>| match bias.clone() {
        Some(b) => {
            let dtype = burn::tensor::FloatDType::from(y.dtype());
            y + b.cast(dtype).reshape([1, o, 1, 1, 1])
        }
        None => y,
    };
    if taps == 1 && stride == [1; 3] {
        // A 1×1×1 convolution (nnU-Net's segmentation head): the input already is the columns.
        return add_bias(product(x.reshape([n, c, od * plane])).reshape([n, o, od, oh, ow]));
    }
    let mut slabs = Vec::with_capacity(od.div_ceil(slab));
    for z0 in (0..od).step_by(slab) {
        let depth = slab.min(od - z0);
        // The input slices this slab's windows read.
        let first = z0 * stride[0];
        let rows = x.clone().slice([
            Slice::from(..),
            Slice::from(..),
            Slice::from(first..first + stride[0] * (depth - 1) + kd),
            Slice::from(..),
            Slice::from(..),
        ]);
        // [N, C, depth, oh, ow, kd, kh, kw], then channel and taps first.
        let windows: Tensor<8> =
            rows.unfold::<6, _>(2, kd, stride[0]).unfold::<7, _>(3, kh, stride[1]).unfold::<8, _>(4, kw, stride[2]);
        let columns = windows.permute([0, 1, 5, 6, 7, 2, 3, 4]).reshape([n, c * taps, depth * plane]);
        slabs.push(product(columns).reshape([n, o, depth, oh, ow]));
    }
    add_bias(Tensor::cat(slabs, 2))
}

/// The ways [`conv3d_tuned`] times, with a revision to bump when one's speed may change (a new
/// way or kernel): part of what names a [`TuningStore`] file, so choices made before are
/// timed again.
pub const TUNED_WAYS: &str = "burn, gemm, gemm transposed, gemm split by channel, direct 3x3x3 (8 or 16 channels x 4 voxels a thread), tiled 3x3x3 (3 tilings, stride 1 or 2), pointwise 1x1x1, winograd F(2,3) (and in f32 for f16 layers, and in one kernel) and F(4,3) (with tf32 only) r8";

/// Parts [`ConvWay::GemmSplit`] cuts the sum of a convolution of `input` by `weight` into, by
/// input channel: enough that the parts' products have about 32 768 output columns (voxels)
/// between them, as many as a full-resolution layer's slabs give one product, but at most 64,
/// a power of two dividing the channels, and at least 16 channels a part; 1 where it would not
/// split (a layer of 32³ voxels or more, or of few channels).
pub fn split_parts(input: [usize; 5], weight: [usize; 5], options: &burn::tensor::ops::ConvOptions<3>) -> usize {
    let c = weight[1];
    let voxels: usize = (0..3)
        .map(|a| {
            let (padding, k) = (options.padding[a], weight[2 + a]);
            (input[2 + a] + padding.0 + padding.1).saturating_sub(k) / options.stride[a] + 1
        })
        .product();
    let mut parts = (32768 / voxels.max(1)).next_power_of_two().min(64);
    while parts > 1 && (!c.is_multiple_of(parts) || c / parts < 16) {
        parts /= 2;
    }
    parts
}

/// The ways [`conv3d_tuned`] chooses between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConvWay {
    /// burn's own kernels (autotuned by burn among its own).
    Burn,
    /// [`conv3d_gemm`].
    Gemm,
    /// [`conv3d_gemm`] with each product the other way round: columnsᵀ · weightᵀ, `[voxels, O]`
    /// (both transposes are views), then the result transposed back by one copy of the output.
    /// The same sums; a matrix kernel tiles a product of many rows and few columns differently
    /// from one of few rows (a layer's 32 output channels) and many columns, so which is
    /// faster is the GPU's to say.
    GemmTransposed,
    /// [`conv3d_gemm`] with each product cut into [`split_parts`] by input channel: a batch of
    /// products of a part of the sum each, then added. For the deep layers (8³ voxels × 320
    /// channels: one product of few tiles, each summing 8 640 terms, leaves most of a GPU idle).
    GemmSplit,
    /// Lightbox's own direct kernel ([`crate::kernels::conv3d_k3`]; builds with the `gpu`
    /// feature, on the GPU, for the 3×3×3 convolutions it covers), 8 output channels a thread.
    Direct,
    /// The same, 16 output channels a thread (more sums per value read, more registers).
    DirectWide,
    /// Lightbox's tiled kernel ([`crate::kernels::conv3d_k3_tiled`], stride 1 or 2): input and
    /// weights staged in workgroup memory, 32×16 voxels × 32 channels a workgroup.
    Tiled,
    /// The same, 64 channels a workgroup (each input tile staged once for twice the sums).
    TiledWide,
    /// The same, 32×8 voxels × 32 channels (half the registers a thread).
    TiledShort,
    /// Lightbox's 1×1×1 kernel ([`crate::kernels::conv3d_k1`]): nnU-Net's segmentation head,
    /// one thread a voxel.
    Pointwise,
    /// Winograd's F(2×2×2, 3×3×3) ([`crate::winograd`], stride 1, from 16³ outputs): 3.4 times
    /// fewer multiplications, in one batch of 64 matrix products, its transforms Lightbox's
    /// kernels ([`crate::kernels::conv3d_winograd`]), one pass each (tried on a GPU only).
    WinogradF2,
    /// The same on a GPU, each product the other way round (as [`Self::GemmTransposed`]).
    WinogradF2Transposed,
    /// For a half-precision layer, F(2, 3) with its transforms and products in f32, the result
    /// rounded to f16 once (nnU-Net's autocast sums f16 values in f32; in f16 throughout,
    /// F(2, 3) rounds the transformed inputs and products too, 1.5 % off on lavapipe).
    WinogradF2F32,
    /// Winograd's F(4×4×4, 3×3×3): 8 times fewer, in 216 products, a few bits less accurate.
    WinogradF4,
    /// The same on a GPU, each product the other way round.
    WinogradF4Transposed,
    /// F(2, 3) in one kernel of Lightbox's ([`crate::kernels::conv3d_winograd_fused`]): the
    /// transforms and the products' sums in workgroup memory and registers, none in device
    /// memory (where [`Self::WinogradF2`] moves 8 times the input and the output each way), in
    /// f32 whatever the layer's dtype. On a GPU, for output channels a multiple of 16.
    WinogradF2Fused,
    /// Lightbox's kernel on the GPU's matrix units ([`crate::kernels::mma::conv3d_k3_mma`]: an
    /// implicit GEMM of f16 values with f32 sums on cooperative matrices, i.e. tensor cores),
    /// two runs of 16 voxels a warp, for the 3×3×3 layers it covers (f16 at stride 1 or 2; f32,
    /// each product as three of f16 halves, at stride 2), on a GPU whose driver offers them
    /// (Vulkan through burn's SPIR-V compiler on NVIDIA).
    MatrixUnits,
    /// The same, four runs a warp (stride 1, f16 or f32): each weight fragment serves twice
    /// the products, for twice the accumulators a thread.
    MatrixUnitsFour,
    /// For an f32 layer, the same kernel with one product of f16 halves instead of three
    /// ([`crate::kernels::mma::conv3d_k3_mma_tf32`]): the inputs' 11 leading bits, as TF32
    /// keeps, so only with TF32's accuracy allowed.
    MatrixUnitsTf32,
}

impl ConvWay {
    const ALL: [Self; 19] = [
        Self::Burn,
        Self::Gemm,
        Self::GemmTransposed,
        Self::GemmSplit,
        Self::Direct,
        Self::DirectWide,
        Self::Tiled,
        Self::TiledWide,
        Self::TiledShort,
        Self::Pointwise,
        Self::WinogradF2,
        Self::WinogradF2Transposed,
        Self::WinogradF2F32,
        Self::WinogradF4,
        Self::WinogradF4Transposed,
        Self::WinogradF2Fused,
        Self::MatrixUnits,
        Self::MatrixUnitsFour,
        Self::MatrixUnitsTf32,
    ];

    /// Lightbox's own ways (what [`crate::profile`] times besides burn's and the matrix
    /// products): its kernels and Winograd's algorithms, which the tuner tries on a GPU only.
    pub const OWN: [Self; 15] = [
        Self::Direct,
        Self::DirectWide,
        Self::Tiled,
        Self::TiledWide,
        Self::TiledShort,
        Self::Pointwise,
        Self::WinogradF2,
        Self::WinogradF2Transposed,
        Self::WinogradF2F32,
        Self::WinogradF4,
        Self::WinogradF4Transposed,
        Self::WinogradF2Fused,
        Self::MatrixUnits,
        Self::MatrixUnitsFour,
        Self::MatrixUnitsTf32,
    ];

    /// Whether this way is only as accurate as TF32 ([`crate::Convolution::Tuned`]'s `tf32`):
    /// Winograd's F(4, 3), whose transforms multiply by up to 125 going in and 512 coming out,
    /// and the matrix units' one product of f16 halves.
    pub fn approximate(self) -> bool {
        matches!(self, Self::WinogradF4 | Self::WinogradF4Transposed | Self::MatrixUnitsTf32)
    }

    /// Whether this is one of the ways of Lightbox's kernel on matrix units.
    pub fn on_matrix_units(self) -> bool {
        matches!(self, Self::MatrixUnits | Self::MatrixUnitsFour | Self::MatrixUnitsTf32)
    }

    /// Runs of 16 voxels a warp of the matrix units' kernel computes.
    #[cfg(feature = "gpu")]
    fn runs_a_warp(self) -> usize {
        if self == Self::MatrixUnitsFour { 4 } else { 2 }
    }

    /// The index into [`crate::kernels::TILINGS`] of a tiled way.
    fn tiling(self) -> Option<usize> {
        match self {
            Self::Tiled => Some(0),
            Self::TiledWide => Some(1),
            Self::TiledShort => Some(2),
            _ => None,
        }
    }

    /// Whether this way can compute the convolution of an `input` by a `weight` (dims) on
    /// `device` in `dtype` (and differs from the others there; Winograd's F(4, 3) in f32 only:
    /// its transforms' constants leave f16 nothing of the result).
    pub(crate) fn applies(
        self,
        device: &Device,
        input: [usize; 5],
        weight: [usize; 5],
        options: &burn::tensor::ops::ConvOptions<3>,
        dtype: burn::tensor::DType,
    ) -> bool {
        let f32 = matches!(dtype, burn::tensor::DType::F32 | burn::tensor::DType::F64);
        match self {
            Self::Direct => direct_applies(device, weight, options, 8),
            Self::DirectWide => direct_applies(device, weight, options, 16),
            Self::Tiled | Self::TiledWide | Self::TiledShort => {
                tiled_applies(device, input, weight, options, self.tiling().unwrap_or_default())
            }
            Self::GemmSplit => split_parts(input, weight, options) > 1,
            Self::Pointwise => pointwise_applies(device, weight, options),
            // On a GPU, where Lightbox's transform kernels run: by burn operations (elsewhere)
            // each transform is a dozen passes, 4 to 5 times slower than burn's convolution on
            // the CPU.
            Self::WinogradF2 | Self::WinogradF2Transposed => {
                winograd_kernels_apply(device, input, weight, options)
                    && crate::winograd::applies(input, weight, options, &crate::winograd::F2)
            }
            Self::WinogradF2F32 => {
                !f32 && winograd_kernels_apply(device, input, weight, options)
                    && crate::winograd::applies(input, weight, options, &crate::winograd::F2)
            }
            Self::WinogradF4 | Self::WinogradF4Transposed => {
                f32 && winograd_kernels_apply(device, input, weight, options)
                    && crate::winograd::applies(input, weight, options, &crate::winograd::F4)
            }
            Self::WinogradF2Fused => {
                fused_applies(device, input, weight, options)
                    && crate::winograd::applies(input, weight, options, &crate::winograd::F2)
            }
            Self::MatrixUnits => matrix_units_apply(device, input, weight, options, dtype, 2),
            Self::MatrixUnitsFour => matrix_units_apply(device, input, weight, options, dtype, 4),
            // In f32, by either block that computes the layer.
            Self::MatrixUnitsTf32 => {
                f32 && [2, 4].iter().any(|&p| matrix_units_apply(device, input, weight, options, dtype, p))
            }
            _ => true,
        }
    }

    /// The convolution this way (`budget`: bytes of im2col columns at once).
    pub fn run(
        self,
        x: Tensor<5>,
        weight: Tensor<5>,
        bias: Option<Tensor<1>>,
        options: &burn::tensor::ops::ConvOptions<3>,
        budget: usize,
    ) -> Tensor<5> {
        match self {
            Self::Burn => burn::tensor::module::conv3d(x, weight, bias, options.clone()),
            Self::Gemm => conv3d_gemm(x, weight, bias, options, budget),
            Self::GemmTransposed => gemm(x, weight, bias, options, budget, Product::Transposed),
            Self::GemmSplit => {
                let parts = split_parts(x.dims(), weight.dims(), options);
                gemm(x, weight, bias, options, budget, Product::Split(parts))
            }
            Self::Direct => direct(x, weight, bias, options, 8),
            Self::DirectWide => direct(x, weight, bias, options, 16),
            Self::Tiled | Self::TiledWide | Self::TiledShort => {
                tiled(x, weight, bias, options, self.tiling().unwrap_or_default())
            }
            Self::Pointwise => {
                if pointwise_applies(&x.device(), weight.dims(), options) {
                    #[cfg(feature = "gpu")]
                    return crate::kernels::conv3d_k1(x, weight, bias, options);
                }
                burn::tensor::module::conv3d(x, weight, bias, options.clone())
            }
            Self::WinogradF2 => winograd(x, weight, bias, options, budget, &crate::winograd::F2, false),
            Self::WinogradF2Transposed => winograd(x, weight, bias, options, budget, &crate::winograd::F2, true),
            Self::WinogradF2F32 => {
                let dtype = burn::tensor::FloatDType::from(weight.dtype());
                let f32 = |t: Tensor<5>| t.cast(burn::tensor::FloatDType::F32);
                let bias = bias.map(|b| b.cast(burn::tensor::FloatDType::F32));
                winograd(f32(x), f32(weight), bias, options, budget, &crate::winograd::F2, false).cast(dtype)
            }
            Self::WinogradF4 => winograd(x, weight, bias, options, budget, &crate::winograd::F4, false),
            Self::WinogradF4Transposed => winograd(x, weight, bias, options, budget, &crate::winograd::F4, true),
            Self::WinogradF2Fused => {
                if fused_applies(&x.device(), x.dims(), weight.dims(), options) {
                    #[cfg(feature = "gpu")]
                    return crate::kernels::conv3d_winograd_fused(x, weight, bias, options);
                }
                winograd(x, weight, bias, options, budget, &crate::winograd::F2, false)
            }
            Self::MatrixUnits | Self::MatrixUnitsFour => {
                #[cfg(feature = "gpu")]
                return crate::kernels::mma::conv3d_k3_mma(x, weight, bias, options, self.runs_a_warp());
                #[cfg(not(feature = "gpu"))]
                burn::tensor::module::conv3d(x, weight, bias, options.clone())
            }
            Self::MatrixUnitsTf32 => {
                #[cfg(feature = "gpu")]
                return crate::kernels::mma::conv3d_k3_mma_tf32(x, weight, bias, options);
                #[cfg(not(feature = "gpu"))]
                burn::tensor::module::conv3d(x, weight, bias, options.clone())
            }
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Burn => "burn's kernels",
            Self::Gemm => "matrix products",
            Self::GemmTransposed => "transposed matrix products",
            Self::GemmSplit => "matrix products split by input channel",
            Self::Direct => "Lightbox's direct kernel",
            Self::DirectWide => "Lightbox's direct kernel, 16 channels a thread",
            Self::Pointwise => "Lightbox's 1x1x1 kernel",
            Self::Tiled => "Lightbox's tiled kernel, 32x16 voxels x 32 channels",
            Self::TiledWide => "Lightbox's tiled kernel, 32x16 voxels x 64 channels",
            Self::TiledShort => "Lightbox's tiled kernel, 32x8 voxels x 32 channels",
            Self::WinogradF2 => "Winograd F(2x2x2, 3x3x3)",
            Self::WinogradF2Transposed => "Winograd F(2x2x2, 3x3x3), transposed products",
            Self::WinogradF2F32 => "Winograd F(2x2x2, 3x3x3) in f32",
            Self::WinogradF4 => "Winograd F(4x4x4, 3x3x3)",
            Self::WinogradF4Transposed => "Winograd F(4x4x4, 3x3x3), transposed products",
            Self::WinogradF2Fused => "Winograd F(2x2x2, 3x3x3) in one kernel",
            Self::MatrixUnits => "Lightbox's kernel on matrix units (tensor cores)",
            Self::MatrixUnitsFour => "Lightbox's kernel on matrix units (tensor cores), four runs a warp",
            Self::MatrixUnitsTf32 => "Lightbox's kernel on matrix units (tensor cores), f32 as one f16 product (TF32)",
        }
    }
}

#[cfg(feature = "gpu")]
fn direct_applies(
    device: &Device,
    weight: [usize; 5],
    options: &burn::tensor::ops::ConvOptions<3>,
    channels: usize,
) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && crate::kernels::conv3d_k3_fits(weight, options, channels)
}

#[cfg(not(feature = "gpu"))]
fn direct_applies(_: &Device, _: [usize; 5], _: &burn::tensor::ops::ConvOptions<3>, _: usize) -> bool {
    false
}

#[cfg(feature = "gpu")]
fn tiled_applies(
    device: &Device,
    input: [usize; 5],
    weight: [usize; 5],
    options: &burn::tensor::ops::ConvOptions<3>,
    tiling: usize,
) -> bool {
    // Not where most of a tile's threads along x would idle (outputs under 16 voxels wide:
    // PlainConvUNet's layers of 8³ and less, where it ran 10 to 100 times slower on lavapipe).
    let width = input[4].saturating_sub(1) / options.stride[2].max(1) + 1;
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && width >= crate::kernels::TILE_WIDTH / 2
        && crate::kernels::conv3d_k3_tiled_fits(weight, options, tiling)
}

#[cfg(not(feature = "gpu"))]
fn tiled_applies(_: &Device, _: [usize; 5], _: [usize; 5], _: &burn::tensor::ops::ConvOptions<3>, _: usize) -> bool {
    false
}

#[cfg(feature = "gpu")]
fn pointwise_applies(device: &Device, weight: [usize; 5], options: &burn::tensor::ops::ConvOptions<3>) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && crate::kernels::conv3d_k1_fits(weight, options)
}

#[cfg(not(feature = "gpu"))]
fn pointwise_applies(_: &Device, _: [usize; 5], _: &burn::tensor::ops::ConvOptions<3>) -> bool {
    false
}

#[cfg(feature = "gpu")]
fn winograd_kernels_apply(
    device: &Device,
    input: [usize; 5],
    weight: [usize; 5],
    options: &burn::tensor::ops::ConvOptions<3>,
) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && crate::kernels::winograd_fits(input, weight, options)
}

#[cfg(not(feature = "gpu"))]
fn winograd_kernels_apply(_: &Device, _: [usize; 5], _: [usize; 5], _: &burn::tensor::ops::ConvOptions<3>) -> bool {
    false
}

#[cfg(feature = "gpu")]
fn matrix_units_apply(
    device: &Device,
    input: [usize; 5],
    weight: [usize; 5],
    options: &burn::tensor::ops::ConvOptions<3>,
    dtype: burn::tensor::DType,
    per_warp: usize,
) -> bool {
    crate::kernels::mma::conv3d_k3_mma_fits(input, weight, options, dtype, per_warp)
        && crate::kernels::mma::available(device)
}

#[cfg(not(feature = "gpu"))]
fn matrix_units_apply(
    _: &Device,
    _: [usize; 5],
    _: [usize; 5],
    _: &burn::tensor::ops::ConvOptions<3>,
    _: burn::tensor::DType,
    _: usize,
) -> bool {
    false
}

#[cfg(feature = "gpu")]
fn fused_applies(
    device: &Device,
    input: [usize; 5],
    weight: [usize; 5],
    options: &burn::tensor::ops::ConvOptions<3>,
) -> bool {
    matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
        && crate::kernels::winograd_fused_fits(input, weight, options)
}

#[cfg(not(feature = "gpu"))]
fn fused_applies(_: &Device, _: [usize; 5], _: [usize; 5], _: &burn::tensor::ops::ConvOptions<3>) -> bool {
    false
}

/// Winograd's `transform`: by Lightbox's transform kernels on a GPU, where they apply
/// (`transposed`: each product the other way round), by burn tensor operations elsewhere.
fn winograd(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    budget: usize,
    transform: &crate::winograd::Transform,
    transposed: bool,
) -> Tensor<5> {
    if winograd_kernels_apply(&x.device(), x.dims(), weight.dims(), options) {
        #[cfg(feature = "gpu")]
        return crate::kernels::conv3d_winograd(x, weight, bias, options, budget, transform, transposed);
    }
    let _ = transposed;
    crate::winograd::conv3d_winograd(x, weight, bias, options, budget, transform)
}

/// [`crate::kernels::conv3d_k3_tiled`] where it applies, burn's kernels elsewhere.
fn tiled(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    tiling: usize,
) -> Tensor<5> {
    if tiled_applies(&x.device(), x.dims(), weight.dims(), options, tiling) {
        #[cfg(feature = "gpu")]
        return crate::kernels::conv3d_k3_tiled(x, weight, bias, options.stride[0], tiling);
    }
    burn::tensor::module::conv3d(x, weight, bias, options.clone())
}

/// [`crate::kernels::conv3d_k3`] where it applies, burn's kernels elsewhere (a choice read from
/// a build with the kernel, by one without it).
fn direct(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    channels: usize,
) -> Tensor<5> {
    if direct_applies(&x.device(), weight.dims(), options, channels) {
        #[cfg(feature = "gpu")]
        return crate::kernels::conv3d_k3(x, weight, bias, options.stride[0], channels);
    }
    burn::tensor::module::conv3d(x, weight, bias, options.clone())
}

/// One convolution shape [`conv3d_tuned`] has timed, and what it chose.
#[derive(Clone, Debug, PartialEq)]
pub struct TunedLayer {
    /// Input `[N, C, D, H, W]`, weight `[O, C, kd, kh, kw]`, stride, and the dtype.
    pub shape: String,
    /// Median ms of each way, in [`ConvWay`]'s order (burn's kernels after their own
    /// autotuning).
    pub ms: Vec<(ConvWay, f64)>,
    /// The fastest.
    pub way: ConvWay,
    /// Timed by an earlier process and read from its [`TuningStore`] file, not timed here.
    pub remembered: bool,
}

/// What the tuner tells convolutions apart by (besides the device): input and weight dims,
/// stride, padding, dtype and the slab budget in bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ConvShape {
    input: [usize; 5],
    weight: [usize; 5],
    stride: [usize; 3],
    padding: [(usize, usize); 3],
    dtype: String,
    budget: usize,
    /// Ways as accurate as TF32 allowed ([`crate::Convolution::Tuned`]'s `tf32`).
    #[serde(default)]
    tf32: bool,
}

impl ConvShape {
    pub(crate) fn new(
        input: [usize; 5],
        weight: [usize; 5],
        stride: [usize; 3],
        padding: [(usize, usize); 3],
        dtype: &str,
        budget: usize,
    ) -> Self {
        Self { input, weight, stride, padding, dtype: dtype.to_owned(), budget, tf32: false }
    }

    /// The same shape, tuned with ways as accurate as TF32 allowed.
    pub(crate) fn with_tf32(self, tf32: bool) -> Self {
        Self { tf32, ..self }
    }

    fn describe(&self) -> String {
        let tf32 = if self.tf32 { ", TF32 accuracy allowed" } else { "" };
        format!("{:?} * {:?}, stride {:?}, {}{tf32}", self.input, self.weight, self.stride, self.dtype)
    }
}

/// The device (its `Debug`) and the shape.
type TuneKey = (String, ConvShape);

#[derive(Default)]
struct Tuner {
    layers: std::collections::BTreeMap<TuneKey, TunedLayer>,
    /// Where each device's choices are kept, for devices [`remember_tuning`] was given.
    stores: std::collections::BTreeMap<String, TuningStore>,
}

static TUNER: std::sync::OnceLock<std::sync::Mutex<Tuner>> = std::sync::OnceLock::new();

fn tuner() -> std::sync::MutexGuard<'static, Tuner> {
    // A panic elsewhere while the map was held leaves it whole (inserts are single calls).
    TUNER.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every shape timed so far in this process or read from a [`TuningStore`], in no particular
/// order.
pub fn tuned_layers() -> Vec<TunedLayer> {
    tuner().layers.values().cloned().collect()
}

/// From now on, [`conv3d_tuned`] on `device` starts with the choices `store` holds (shapes it
/// already knows in this process keep theirs) and adds each shape it times to it. An
/// unreadable file is logged with its path and the problem, and rewritten at the next shape.
pub fn remember_tuning(device: &Device, store: TuningStore) {
    let device = format!("{device:?}");
    let entries = store.load().unwrap_or_else(|why| {
        tracing::warn!("convolution tuning starts afresh: {why}");
        Vec::new()
    });
    tracing::info!("convolution tuning: {} layer shapes remembered in {}", entries.len(), store.path().display());
    let mut tuner = tuner();
    for e in entries {
        let layer = TunedLayer { shape: e.shape.describe(), ms: e.ms, way: e.way, remembered: true };
        tuner.layers.entry((device.clone(), e.shape)).or_insert(layer);
    }
    tuner.stores.insert(device, store);
}

#[cfg(test)]
fn forget_tuning(device: &Device) {
    tuner().stores.remove(&format!("{device:?}"));
}

#[cfg(all(test, feature = "gpu"))]
thread_local! {
    /// For tests on a GPU without matrix units: where set, [`conv3d_units`] runs the kernel
    /// emulated on this thread ([`crate::kernels::mma::EMULATED`]) and counts the layers.
    pub(crate) static EMULATED_UNITS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// A 3-D convolution by Lightbox's kernel on the GPU's matrix units where it applies (f16 or
/// f32, 3×3×3, a GPU offering cooperative matrices): two runs a warp ([`ConvWay::MatrixUnits`])
/// where that block computes the layer, else four ([`ConvWay::MatrixUnitsFour`]: f32 at stride
/// 1); burn's kernels elsewhere ([`crate::Convolution::Units`]).
pub fn conv3d_units(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
) -> Tensor<5> {
    #[cfg(all(test, feature = "gpu"))]
    if let Some(layers) = EMULATED_UNITS.get()
        && let Some(per_warp) = crate::kernels::mma::PER_WARP
            .into_iter()
            .find(|&p| crate::kernels::mma::conv3d_k3_mma_fits(x.dims(), weight.dims(), options, weight.dtype(), p))
    {
        EMULATED_UNITS.set(Some(layers + 1));
        return crate::kernels::mma::conv3d_k3_mma_emulated(x, weight, bias, options, per_warp);
    }
    let device = x.device();
    let applies = |way: &ConvWay| way.applies(&device, x.dims(), weight.dims(), options, weight.dtype());
    match [ConvWay::MatrixUnits, ConvWay::MatrixUnitsFour].into_iter().find(applies) {
        Some(way) => way.run(x, weight, bias, options, 0),
        None => burn::tensor::module::conv3d(x, weight, bias, options.clone()),
    }
}

/// A 3-D convolution by whichever of the [`ConvWay`]s that apply is fastest for its shape on its
/// device: burn's kernels ([`burn::tensor::module::conv3d`]), [`conv3d_gemm`] and its variants,
/// and on a GPU Lightbox's own kernels ([`crate::kernels`]). The first convolution of each shape
/// (device, input and weight dims, stride, padding, dtype, slab budget) runs every way once,
/// checked against burn's convolution in f32 (burn's own autotune and each kernel's compilation
/// run there; a way that fails the check is left out), then up to three timed runs each; later
/// ones take the fastest at once. All compute the same sums, in other orders. A device given a [`TuningStore`]
/// ([`remember_tuning`]: every GPU, see [`crate::device`]) starts with the shapes earlier
/// processes timed, and keeps each new one there.
pub fn conv3d_tuned(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &burn::tensor::ops::ConvOptions<3>,
    budget: usize,
    tf32: bool,
) -> Tensor<5> {
    let shape = ConvShape::new(
        x.dims(),
        weight.dims(),
        options.stride,
        options.padding,
        &format!("{:?}", weight.dtype()),
        budget,
    )
    .with_tf32(tf32);
    let key: TuneKey = (format!("{:?}", x.device()), shape);
    let known = tuner().layers.get(&key).map(|t| t.way);
    let way = known.unwrap_or_else(|| {
        let device = x.device();
        let mut ms: Vec<(ConvWay, f64)> = Vec::with_capacity(ConvWay::ALL.len());
        // burn's convolution of the same values in f32, which every way must reproduce before
        // it is timed: a kernel a driver miscompiles is never kept, however fast (and none
        // kept leaves burn's).
        let f32 = |t: Tensor<5>| t.cast(burn::tensor::FloatDType::F32);
        let reference = burn::tensor::module::conv3d(
            f32(x.clone()),
            f32(weight.clone()),
            bias.clone().map(|b| b.cast(burn::tensor::FloatDType::F32)),
            options.clone(),
        );
        let applies = |w: &ConvWay| {
            (tf32 || !w.approximate()) && w.applies(&device, x.dims(), weight.dims(), options, weight.dtype())
        };
        for way in ConvWay::ALL.into_iter().filter(applies) {
            let y = way.run(x.clone(), weight.clone(), bias.clone(), options, budget);
            if let Some(why) = disagreement(&reference, y) {
                tracing::warn!("convolution {}: {} left out: {why}", key.1.describe(), way.describe());
                continue;
            }
            let best = ms.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
            let run = || way.run(x.clone(), weight.clone(), bias.clone(), options, budget);
            ms.push((way, median_ms(&device, run, 2.0 * best)));
        }
        drop(reference);
        let way = ms.iter().min_by(|a, b| a.1.total_cmp(&b.1)).map_or(ConvWay::Burn, |m| m.0);
        let layer = TunedLayer { shape: key.1.describe(), ms, way, remembered: false };
        tracing::info!("convolution {}: {:?}; {} kept", layer.shape, layer.ms, way.describe());
        let mut tuner = tuner();
        tuner.layers.insert(key.clone(), layer);
        if let Some(store) = tuner.stores.get(&key.0) {
            let entries: Vec<Entry> = tuner
                .layers
                .iter()
                .filter(|(k, _)| k.0 == key.0)
                .map(|(k, l)| Entry { shape: k.1.clone(), ms: l.ms.clone(), way: l.way })
                .collect();
            if let Err(why) = store.save(&entries) {
                tracing::warn!("convolution tuning not kept for the next run: {why}");
            }
        }
        way
    });
    way.run(x, weight, bias, options, budget)
}

/// Why `other` is not the same convolution as `reference` (burn's, in f32), if it is not: a
/// value that is not finite, or one further from the reference than the sums' order and
/// `other`'s dtype can explain (relative to the largest |value|: 10⁻³ for an f32 result; 4·10⁻³,
/// eight roundings to f16, for a half-precision one: nnU-Net's autocast sums f16 values in f32,
/// and a kernel that sums in f16 (burn's direct one on WGSL: 0.5 % of the largest value on
/// lavapipe for 216 terms) is left out where it strays further); or the device's error, where
/// computing it failed (a buffer over what the device allocates, say).
pub(crate) fn disagreement(reference: &Tensor<5>, other: Tensor<5>) -> Option<String> {
    let tolerance =
        if matches!(other.dtype(), burn::tensor::DType::F32 | burn::tensor::DType::F64) { 1e-3 } else { 4e-3 };
    let f32 = |t: Tensor<5>| t.cast(burn::tensor::FloatDType::F32);
    let reference = f32(reference.clone());
    let other = f32(other);
    let read = |t: Tensor<1>| t.try_into_scalar::<f32>().map_err(|e| format!("the device failed: {e:?}"));
    let read = || -> Result<[f32; 3], String> {
        Ok([read(reference.clone().abs().max())?, read(other.clone().sum())?, read((other - reference).abs().max())?])
    };
    let [scale, total, worst] = match read() {
        Ok(values) => values,
        Err(why) => return Some(why),
    };
    if !total.is_finite() {
        return Some(format!("a value that is not finite (sum {total})"));
    }
    // A NaN in burn's result compares as neither: refused too.
    let within =
        matches!(worst.partial_cmp(&(tolerance * scale)), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal));
    (!within).then(|| format!("differs from burn's by up to {worst:e}, largest |value| {scale:e}"))
}

/// A batch of runs [`median_ms`] times together lasts about this long (ms), at most
/// [`MOST_BATCHED`] runs.
const BATCH_MS: f64 = 10.0;
/// At most this many runs in one batch.
const MOST_BATCHED: usize = 16;
/// At most this many bytes of results held by one batch.
const MOST_BATCH_BYTES: usize = 256 << 20;

/// The median wall time per run of `run` (the caller has run it once already: its compilation
/// and burn's autotuning are done) over three timings from an idle device until it is idle
/// again; only the first when it took over `give_up_ms` (a way twice as slow as the best so far
/// will not win: the first window's tuning stays short) and is timed alone. A run shorter than
/// [`BATCH_MS`] (never given up on: its first time holds the wait's latency, the best's not) is
/// timed in batches of runs back to back, one wait for the device each, as a network runs its
/// layers: the wait's own latency (about 1 ms on an H200, whatever the layer) would otherwise
/// be in every small layer's time and hide which way's kernels are faster there. Results are
/// held until the device is idle: reading back a part of one (a voxel) would let burn's lazy
/// backends compute that part alone (it timed a 310 ms convolution on lavapipe at 0.11 ms).
fn median_ms(device: &Device, run: impl Fn() -> Tensor<5>, give_up_ms: f64) -> f64 {
    let settle = || {
        if let Err(e) = device.sync() {
            tracing::warn!("timing a convolution: the device failed ({e:?})");
        }
    };
    // ms per run of `runs` back to back, and the bytes of one result.
    let batch = |runs: usize| {
        settle();
        let started = std::time::Instant::now();
        let held: Vec<Tensor<5>> = (0..runs).map(|_| run()).collect();
        settle();
        let ms = started.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        let bytes = held.first().map_or(0, |y| y.shape().num_elements() * y.dtype().size());
        (ms, bytes)
    };
    let (first, bytes) = batch(1);
    let runs = batch_runs(first, bytes);
    if runs == 1 && first > give_up_ms {
        return first;
    }
    let mut times = if runs == 1 { [first, batch(1).0, batch(1).0] } else { [0.0; 3].map(|_| batch(runs).0) };
    times.sort_by(f64::total_cmp);
    times[1]
}

/// How many runs [`median_ms`] times together after a first run of `first_ms` whose result
/// took `bytes`.
fn batch_runs(first_ms: f64, bytes: usize) -> usize {
    let by_time = if first_ms > 0.0 { (BATCH_MS / first_ms).ceil() as usize } else { MOST_BATCHED };
    by_time.clamp(1, MOST_BATCHED).min((MOST_BATCH_BYTES / bytes.max(1)).max(1))
}

/// Runs `network` on plain values (`shape` = `[N, C, D, H, W]`, C order) and waits for the
/// result, for callers that do not handle tensors (parity tests, benchmarks).
pub(crate) fn forward_values(
    device: &crate::AiDevice,
    input: Vec<f32>,
    shape: [usize; 5],
    network: impl FnOnce(Tensor<5>) -> Tensor<5>,
) -> Result<Vec<f32>, crate::AiError> {
    if input.len() != shape.iter().product::<usize>() {
        return Err(crate::AiError::Input(format!("{} values for shape {shape:?}", input.len())));
    }
    let x: Tensor<5> = Tensor::from_data(burn::tensor::TensorData::new(input, shape), &device.device);
    network(x).into_data().try_to_vec::<f32>().map_err(|e| crate::AiError::Input(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn device() -> Device {
        Device::flex()
    }

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    fn close(a: &[f32], b: &[f32], tolerance: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
    }

    #[test]
    fn max_pool3d_equals_a_direct_box_maximum() {
        let mut draw = crate::testing::Values::new(1);
        let x = draw.signed([1, 2, 7, 6, 9], &device());
        let data = values(x.clone());
        let (k, s, p) = (3, 2, 1);
        let out = max_pool3d(x, k, s, p);
        let [_, c, d2, h2, w2] = out.dims();
        assert_eq!([c, d2, h2, w2], [2, 4, 3, 5]);
        let at = |c: usize, z: i64, y: i64, x: i64| -> f32 {
            if z < 0 || y < 0 || x < 0 || z >= 7 || y >= 6 || x >= 9 {
                f32::NEG_INFINITY
            } else {
                data[(((c * 7) + z as usize) * 6 + y as usize) * 9 + x as usize]
            }
        };
        let mut expected = Vec::new();
        for c in 0..2 {
            for z in 0..d2 {
                for y in 0..h2 {
                    for x in 0..w2 {
                        let mut m = f32::NEG_INFINITY;
                        for dz in 0..k {
                            for dy in 0..k {
                                for dx in 0..k {
                                    let o = |i: usize, d: usize| (i * s + d) as i64 - p as i64;
                                    m = m.max(at(c, o(z, dz), o(y, dy), o(x, dx)));
                                }
                            }
                        }
                        expected.push(m);
                    }
                }
            }
        }
        assert_eq!(values(out), expected);
    }

    /// Trilinear with align_corners, directly: each output voxel from its source coordinates.
    fn trilinear_reference(data: &[f32], [d, h, w]: [usize; 3], [d2, h2, w2]: [usize; 3]) -> Vec<f32> {
        let src = |o: usize, n_in: usize, n_out: usize| {
            if n_out > 1 { o as f32 * (n_in - 1) as f32 / (n_out - 1) as f32 } else { 0.0 }
        };
        let at = |z: usize, y: usize, x: usize| data[(z * h + y) * w + x];
        let mut out = Vec::new();
        for z in 0..d2 {
            for y in 0..h2 {
                for x in 0..w2 {
                    let (fz, fy, fx) = (src(z, d, d2), src(y, h, h2), src(x, w, w2));
                    let (z0, y0, x0) = (fz.floor() as usize, fy.floor() as usize, fx.floor() as usize);
                    let (z1, y1, x1) = ((z0 + 1).min(d - 1), (y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                    let (tz, ty, tx) = (fz - z0 as f32, fy - y0 as f32, fx - x0 as f32);
                    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
                    let plane =
                        |z| lerp(lerp(at(z, y0, x0), at(z, y0, x1), tx), lerp(at(z, y1, x0), at(z, y1, x1), tx), ty);
                    out.push(lerp(plane(z0), plane(z1), tz));
                }
            }
        }
        out
    }

    #[test]
    fn trilinear_resize_equals_the_direct_formula() {
        let mut draw = crate::testing::Values::new(2);
        let x = draw.signed([1, 1, 4, 5, 6], &device());
        let data = values(x.clone());
        let out = resize_trilinear(x, [7, 9, 11], true);
        assert!(close(&values(out), &trilinear_reference(&data, [4, 5, 6], [7, 9, 11]), 1e-5));
    }

    #[test]
    fn transposed_convolution_with_kernel_equal_stride_equals_burns_own() {
        use burn::tensor::module::conv_transpose3d;
        use burn::tensor::ops::ConvTransposeOptions;
        let mut draw = crate::testing::Values::new(3);
        // Anisotropic, as nnU-Net plans for thick slices: [1, 2, 2].
        for s in [[2, 2, 2], [1, 2, 2]] {
            let x = draw.signed([2, 3, 4, 3, 5], &device());
            let weight = draw.signed([3, 4, s[0], s[1], s[2]], &device());
            let bias: Tensor<1> = draw.signed([4], &device());
            let ours = conv_transpose3d_stride(x.clone(), weight.clone(), Some(bias.clone()), s);
            let options = ConvTransposeOptions::new(s, [0, 0, 0], [0, 0, 0], [1, 1, 1], 1);
            let reference = conv_transpose3d(x, weight, Some(bias), options);
            assert_eq!(ours.dims(), [2, 4, 4 * s[0], 3 * s[1], 5 * s[2]]);
            assert!(close(&values(ours), &values(reference), 1e-5));
        }
    }

    /// The convolution as matrix products equals burn's own, for nnU-Net's shapes: 3³ kernels
    /// padded by 1, strided by 2 (its downsampling), anisotropic (thick slices), 1×1×1, two
    /// images at once, and in slabs of output depth (forced by a small budget).
    #[test]
    fn convolution_as_matrix_products_equals_burns_own() {
        for way in [ConvWay::Gemm, ConvWay::GemmTransposed] {
            matrix_products_equal_burns_own(way);
        }
    }

    /// Products split by input channel (the sum of the parts' sums) give burn's convolution:
    /// two images, stride 2, slabs of one output slice, eight parts of two channels.
    #[test]
    fn split_products_equal_burns_own() {
        use burn::tensor::ops::ConvOptions;
        let mut draw = crate::testing::Values::new(4);
        for (shape, parts, stride, budget) in [
            ([2, 8, 5, 4, 6], 4, [1; 3], 96 << 20),
            ([1, 6, 6, 5, 4], 2, [2; 3], 96 << 20),
            ([1, 16, 4, 3, 5], 8, [1; 3], 96 << 20),
            ([1, 16, 4, 3, 5], 2, [1; 3], 1),
            ([1, 16, 4, 3, 5], 8, [1; 3], 1),
        ] {
            let x = draw.signed(shape, &device());
            let weight = draw.signed([5, shape[1], 3, 3, 3], &device());
            let bias: Tensor<1> = draw.signed([5], &device());
            let options = ConvOptions::new(stride, [1; 3], [1; 3], 1);
            let ours = gemm(x.clone(), weight.clone(), Some(bias.clone()), &options, budget, Product::Split(parts));
            let reference = burn::tensor::module::conv3d(x, weight, Some(bias), options);
            assert_eq!(ours.dims(), reference.dims(), "{shape:?} in {parts}");
            let (a, b) = (values(ours), values(reference));
            // Sums of 432 terms of ±1 reach ±20: relative to the value, rounding in another order.
            let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f32::max);
            assert!(a.len() == b.len() && worst < 1e-5, "{shape:?} in {parts}: {worst}");
        }
        let parts = |side: usize, weight: [usize; 5], stride| {
            let options = ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
            let input = [1, weight[1], side, side, side];
            let parts = split_parts(input, weight, &options);
            let dtype = burn::tensor::DType::F32;
            assert_eq!(ConvWay::GemmSplit.applies(&device(), input, weight, &options, dtype), parts > 1);
            parts
        };
        // PlainConvUNet's deep layers: 16³, 8³ (and its stride-2 way in), 4³.
        assert_eq!(parts(16, [256, 512, 3, 3, 3], 1), 8);
        assert_eq!(parts(16, [320, 256, 3, 3, 3], 2), 16);
        assert_eq!(parts(8, [320, 640, 3, 3, 3], 1), 32);
        assert_eq!(parts(8, [320, 320, 3, 3, 3], 1), 16);
        assert_eq!(parts(4, [320, 320, 3, 3, 3], 1), 16);
        // Not split: a layer of 32³ voxels, few channels, channels no power of two divides.
        assert_eq!(parts(32, [128, 128, 3, 3, 3], 1), 1);
        assert_eq!(parts(8, [32, 16, 3, 3, 3], 1), 1);
        assert_eq!(parts(8, [32, 33, 3, 3, 3], 1), 1);
    }

    fn matrix_products_equal_burns_own(way: ConvWay) {
        let mut draw = crate::testing::Values::new(5);
        let gemm = |x, w, b, options: &_, budget| way.run(x, w, b, options, budget);
        use burn::tensor::module::conv3d;
        use burn::tensor::ops::ConvOptions;
        let cases = [
            ([1, 3, 6, 5, 7], 4, [3, 3, 3], [1, 1, 1], [1, 1, 1]),
            ([2, 2, 7, 6, 5], 3, [3, 3, 3], [2, 2, 2], [1, 1, 1]),
            ([1, 3, 4, 6, 6], 2, [1, 3, 3], [1, 2, 2], [0, 1, 1]),
            ([1, 5, 3, 4, 5], 6, [1, 1, 1], [1, 1, 1], [0, 0, 0]),
            ([1, 2, 5, 4, 4], 3, [3, 3, 3], [1, 1, 1], [0, 0, 0]),
        ];
        for (shape, out, k, stride, padding) in cases {
            let x = draw.signed(shape, &device());
            let weight = draw.signed([out, shape[1], k[0], k[1], k[2]], &device());
            let bias: Tensor<1> = draw.signed([out], &device());
            let options = ConvOptions::new(stride, padding, [1, 1, 1], 1);
            let ours = gemm(x.clone(), weight.clone(), Some(bias.clone()), &options, 96 << 20);
            let reference = conv3d(x, weight, Some(bias), options);
            assert_eq!(ours.dims(), reference.dims(), "{shape:?} k {k:?} stride {stride:?}");
            assert!(close(&values(ours), &values(reference), 1e-5), "{shape:?} k {k:?} stride {stride:?}");
        }
        // Grouped and dilated convolutions (burn's own kernels) give burn's answer too.
        let x = draw.signed([1, 4, 6, 6, 6], &device());
        for (weight, options) in [
            (draw.signed([4, 2, 3, 3, 3], &device()), ConvOptions::new([1, 1, 1], [1, 1, 1], [1, 1, 1], 2)),
            (draw.signed([3, 4, 3, 3, 3], &device()), ConvOptions::new([1, 1, 1], [2, 2, 2], [2, 2, 2], 1)),
        ] {
            let ours = gemm(x.clone(), weight.clone(), None, &options, 96 << 20);
            let reference = conv3d(x.clone(), weight, None, options);
            assert!(close(&values(ours), &values(reference), 1e-5));
        }
        // Slabs of output depth: 3 slices (one left over at the end), 1 slice, strided.
        let x = draw.signed([1, 4, 10, 6, 5], &device());
        let weight = draw.signed([3, 4, 3, 3, 3], &device());
        let slice_bytes = 4 * 27 * 6 * 5 * 4;
        for (stride, budget) in [([1, 1, 1], 3 * slice_bytes), ([1, 1, 1], 1), ([2, 2, 2], 2 * slice_bytes)] {
            let options = ConvOptions::new(stride, [1, 1, 1], [1, 1, 1], 1);
            let ours = gemm(x.clone(), weight.clone(), None, &options, budget);
            let reference = conv3d(x.clone(), weight.clone(), None, options);
            assert_eq!(ours.dims(), reference.dims());
            assert!(close(&values(ours), &values(reference), 1e-5), "stride {stride:?}, budget {budget}");
        }
    }

    #[test]
    fn tensors_round_trip_through_data() {
        let t: Tensor<5> = Tensor::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 2, 2]), &device());
        assert_eq!(values(t), vec![1.0, 2.0, 3.0, 4.0]);
    }

    /// The tuned convolution computes what burn's does, whichever way it keeps, and times each
    /// shape once: a second call of the same shape adds no entry, a new shape adds one.
    /// The tuner's check of a way against burn's result: the same sums in another order pass; a
    /// kernel off by 1 % in f32 or 10 % in f16, or one that writes a NaN, does not.
    #[test]
    fn a_way_that_computes_something_else_is_refused() {
        let mut draw = crate::testing::Values::new(6);
        let x = draw.signed([1, 3, 6, 5, 4], &device());
        let weight = draw.signed([8, 3, 3, 3, 3], &device());
        let options = burn::tensor::ops::ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
        let burn = burn::tensor::module::conv3d(x.clone(), weight.clone(), None, options.clone());
        let gemm = ConvWay::Gemm.run(x, weight, None, &options, 1 << 20);
        assert_eq!(disagreement(&burn, gemm.clone()), None);
        assert!(disagreement(&burn, gemm.clone() * 1.01).is_some());
        // A half-precision result against burn's in f32: its rounding passes, 10 % off does not.
        let half = |t: Tensor<5>| t.cast(burn::tensor::FloatDType::F16);
        assert_eq!(disagreement(&burn, half(gemm.clone())), None);
        assert!(disagreement(&burn, half(gemm.clone() * 1.1)).is_some());
        let nan = gemm.clone().mask_fill(gemm.clone().greater_elem(0.5), f32::NAN);
        assert!(disagreement(&burn, nan).is_some_and(|why| why.contains("not finite")));
    }

    /// A short run is timed in batches even when a faster way was timed before (its first, lone
    /// time holds the device's latency); a long one slower than the best is timed once.
    #[test]
    fn only_long_runs_are_given_up_on() {
        let device = device();
        let calls = std::cell::Cell::new(0usize);
        let run = |sleep_ms: u64| {
            calls.set(calls.get() + 1);
            std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
            Tensor::<5>::zeros([1, 1, 2, 2, 2], &device)
        };
        median_ms(&device, || run(0), 0.0);
        assert!(calls.get() > 3, "a short run timed in batches: {} runs", calls.get());
        calls.set(0);
        let ms = median_ms(&device, || run(15), 5.0);
        assert_eq!(calls.get(), 1, "a long, slow run timed once");
        assert!(ms >= 15.0, "{ms} ms");
    }

    #[test]
    fn short_runs_are_timed_in_batches_within_their_memory() {
        assert_eq!(batch_runs(20.0, 1 << 20), 1, "a long run alone");
        assert_eq!(batch_runs(10.0, 1 << 20), 1);
        assert_eq!(batch_runs(2.0, 1 << 20), 5, "about 10 ms a batch");
        assert_eq!(batch_runs(0.3, 1 << 20), MOST_BATCHED);
        assert_eq!(batch_runs(0.0, 1 << 20), MOST_BATCHED, "a run too short to time");
        assert_eq!(batch_runs(0.3, 100 << 20), 2, "no more than 256 MiB of results held");
        assert_eq!(batch_runs(0.3, 1 << 30), 1, "one result over that alone");
    }

    #[test]
    fn a_tuned_convolution_equals_burns_and_tunes_each_shape_once() {
        use burn::tensor::ops::ConvOptions;
        let mut draw = crate::testing::Values::new(7);
        let options = ConvOptions::new([2, 1, 1], [1; 3], [1; 3], 1);
        let (x, w) = (draw.signed([1, 3, 9, 7, 8], &device()), draw.signed([5, 3, 3, 3, 3], &device()));
        let bias = draw.signed([5], &device());
        let reference = values(burn::tensor::module::conv3d(x.clone(), w.clone(), Some(bias.clone()), options.clone()));
        let ours = |x: Tensor<5>| values(conv3d_tuned(x, w.clone(), Some(bias.clone()), &options, 1 << 12, false));
        let shape = |l: &TunedLayer| l.shape.starts_with("[1, 3, 9, 7, 8] * [5, 3, 3, 3, 3], stride [2, 1, 1]");
        let wide = |l: &TunedLayer| l.shape.starts_with("[1, 3, 9, 7, 10] * [5, 3, 3, 3, 3], stride [2, 1, 1]");
        // Other tests tune (and remember) shapes of their own meanwhile: count these alone.
        let count = |which: &dyn Fn(&TunedLayer) -> bool| tuned_layers().iter().filter(|l| which(l)).count();
        assert_eq!(count(&shape), 0);
        assert!(close(&ours(x.clone()), &reference, 1e-5));
        let layers = tuned_layers();
        assert_eq!(count(&shape), 1, "{layers:?}");
        let layer = layers.iter().find(|l| shape(l)).cloned();
        let times = layer.as_ref().map(|l| l.ms.clone()).unwrap_or_default();
        // On the CPU, Lightbox's direct kernel (GPU only) is not among them.
        let ways = [ConvWay::Burn, ConvWay::Gemm, ConvWay::GemmTransposed];
        assert_eq!(times.iter().map(|t| t.0).collect::<Vec<_>>(), ways, "{layer:?}");
        assert!(times.iter().all(|t| t.1 > 0.0), "{layer:?}");
        let fastest = times.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
        assert!(layer.as_ref().is_some_and(|l| times.contains(&(l.way, fastest))), "{layer:?}");
        assert!(close(&ours(x.clone()), &reference, 1e-5));
        assert_eq!((count(&shape), count(&wide)), (1, 0));
        let wider = draw.signed([1, 3, 9, 7, 10], &device());
        let expected =
            values(burn::tensor::module::conv3d(wider.clone(), w.clone(), Some(bias.clone()), options.clone()));
        assert!(close(&ours(wider), &expected, 1e-5));
        assert_eq!((count(&shape), count(&wide)), (1, 1));
        assert!(tuned_layers().iter().filter(|l| shape(l) || wide(l)).all(|l| !l.remembered));
    }

    /// A device given a tuning store starts with the choices an earlier process kept there
    /// (timings no run here could produce show that nothing was timed again), still computes
    /// burn's sums, and adds the shapes it times to the file for the next process.
    #[test]
    fn a_remembered_choice_is_taken_without_timing_and_new_ones_are_kept() -> anyhow::Result<()> {
        use burn::tensor::ops::ConvOptions;
        let mut draw = crate::testing::Values::new(8);
        let dir = tempfile::tempdir()?;
        let store = TuningStore::new(dir.path(), "test GPU", "remembered");
        let options = ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
        let budget = 1 << 13;
        let earlier = ConvShape::new([1, 2, 5, 6, 7], [3, 2, 3, 3, 3], [1; 3], [(1, 1); 3], "F32", budget);
        let fake = vec![(ConvWay::Burn, 900.0), (ConvWay::Gemm, 800.0), (ConvWay::GemmTransposed, 0.125)];
        let entry = Entry { shape: earlier.clone(), ms: fake.clone(), way: ConvWay::GemmTransposed };
        store.save(&[entry]).map_err(anyhow::Error::msg)?;
        remember_tuning(&device(), store.clone());

        let (x, w) = (draw.signed([1, 2, 5, 6, 7], &device()), draw.signed([3, 2, 3, 3, 3], &device()));
        let reference = values(burn::tensor::module::conv3d(x.clone(), w.clone(), None, options.clone()));
        assert!(close(&values(conv3d_tuned(x, w, None, &options, budget, false)), &reference, 1e-5));
        let layer = tuned_layers().into_iter().find(|l| l.shape == earlier.describe());
        assert_eq!(layer.as_ref().map(|l| (&l.ms, l.way, l.remembered)), Some((&fake, ConvWay::GemmTransposed, true)));

        // A shape no process has timed: timed here, and on disk for the next one.
        let (x, w) = (draw.signed([1, 2, 5, 6, 9], &device()), draw.signed([3, 2, 3, 3, 3], &device()));
        let reference = values(burn::tensor::module::conv3d(x.clone(), w.clone(), None, options.clone()));
        assert!(close(&values(conv3d_tuned(x, w, None, &options, budget, false)), &reference, 1e-5));
        let new = ConvShape::new([1, 2, 5, 6, 9], [3, 2, 3, 3, 3], [1; 3], [(1, 1); 3], "F32", budget);
        let kept = store.load().map_err(anyhow::Error::msg)?;
        assert!(kept.iter().any(|e| e.shape == earlier && e.ms == fake), "{kept:?}");
        let timed = kept.iter().find(|e| e.shape == new);
        // burn's kernels and the two matrix products (Winograd's algorithms start at 16³).
        assert!(timed.is_some_and(|e| e.ms.len() == 3 && e.ms.iter().all(|m| m.1 > 0.0 && m.1 < 800.0)), "{kept:?}");
        // Other tests' shapes are not written into a directory about to be deleted.
        forget_tuning(&device());
        Ok(())
    }
}
