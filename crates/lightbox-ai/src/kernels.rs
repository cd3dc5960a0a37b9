//! Lightbox's own GPU kernels, written in CubeCL and reached through burn's backend extensions
//! (`#[backend_extension]`: burn's fusion stream, then a kernel on the cubecl backend's tensors;
//! on flex, burn's own operation, or host loops written like the kernel). Built with the `gpu`
//! feature only.
//!
//! Six convolutions, for the layers where burn's kernels and matrix products were slowest on
//! an H200 (issue 7: the few-channel layers at full resolution ran at 2 TFLOPS by burn's direct
//! kernel and 4.4 by matrix products; the 1×1×1 head took 3.3 ms for 0.3 GFLOP):
//! - [`conv3d_k3`], a direct 3×3×3 convolution (padding 1, stride 1 or 2). Each thread keeps a
//!   block of output channels (8 or 16: [`CHANNEL_BLOCKS`]) for a run of voxels along x
//!   ([`VOXELS`]) in registers; weights are laid out `[C·27, O]` so that a block of output
//!   channels is contiguous, and every thread of a workgroup reads the same weights.
//! - [`conv3d_k3_tiled`], the same convolution by output tiles whose input and weights a
//!   workgroup stages in workgroup memory ([`Tiling`], [`TILINGS`]).
//! - [`conv3d_k1`], a 1×1×1 convolution, one thread a voxel.
//! - [`conv3d_winograd`]: Winograd's F(2, 3) or F(4, 3) along each axis
//!   ([`crate::winograd`]), its input and output transforms one kernel pass each (a thread a
//!   tile and channel, the tile, or for F(4, 3) a plane of it at a time, in f32 registers), the
//!   (m + 2)³ products between them burn's batched matrix product, in the layer's dtype.
//! - [`conv3d_winograd_fused`]: F(2, 3) in one kernel, nothing between its steps in device
//!   memory: a workgroup stages a few input channels' transformed tiles and weights in
//!   workgroup memory and sums the 64 products of 16 tiles × 16 output channels in registers
//!   over all input channels, then transforms them back.
//!
//! - [`mma::conv3d_k3_mma`]: a 3×3×3 convolution in f16 on the GPU's matrix units (tensor
//!   cores, through cooperative matrices), an implicit GEMM from a channels-innermost input
//!   block in workgroup memory, two or (at stride 1) four runs of 16 voxels a warp.
//!
//! Sums within a kernel are in f32 whatever the input precision. The convolution tuner
//! ([`crate::ops::conv3d_tuned`]) times each beside burn's ways, after checking its result
//! against burn's, and keeps it only where it is the fastest.

use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, ops::ConvOptions, tensor::FloatTensor,
};
use burn::prelude::Tensor;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;

pub mod mma;
pub mod norm;

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

    /// The same convolution by output tiles staged in workgroup memory ([`TILINGS`]`[tiling]`).
    #[fusion(dtype = x, shape = conv3d_k3_tiled_shape(x, weight, stride, tiling))]
    fn conv3d_k3_tiled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        tiling: usize,
    ) -> FloatTensor<Self>;

    /// `x` `[N, C, D, H, W]` by `weight` `[C, O]`: a 1×1×1 convolution → `[N, O, D, H, W]`, no
    /// bias. `channels`: output channels a thread sums ([`pointwise_channels`]).
    #[fusion(dtype = x, shape = conv3d_k1_shape(x, weight, channels))]
    fn conv3d_k1(x: FloatTensor<Self>, weight: FloatTensor<Self>, channels: usize) -> FloatTensor<Self>;

    /// `x` `[N, C, D, H, W]`, padding 1: the input transform of Winograd's F(m×m×m, 3×3×3)
    /// (`m` 2 or 4, [`crate::winograd::F2`] or [`crate::winograd::F4`]; Bᵀ·d·B along each axis)
    /// of the (m + 2)³-voxel tiles `z0 .. z0 + deep` deep (all of them across) →
    /// `[(m + 2)³, C, N·deep·⌈H/m⌉·⌈W/m⌉]`, tiles in (n, z, y, x) order.
    #[fusion(dtype = x, shape = winograd_input_shape(x, m, z0, deep))]
    fn winograd_input(x: FloatTensor<Self>, m: usize, z0: usize, deep: usize) -> FloatTensor<Self>;

    /// `products` `[(m + 2)³, O, P]` (any strides) of the tiles [`LightboxKernels::winograd_input`] made: the
    /// output transform (Aᵀ·M·A) → `[images, O, depth, height, width]`, cut to that size.
    #[fusion(dtype = products, shape = winograd_output_shape(products, m, images, depth, height, width))]
    fn winograd_output(
        products: FloatTensor<Self>,
        m: usize,
        images: usize,
        depth: usize,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self>;

    /// `x` `[N, C, D, H, W]` by `filter` `[64, C, O]` (F(2, 3)'s transformed weight,
    /// `winograd::transformed_filter`) plus `bias` `[O]`, both in f32 whatever `x`'s
    /// dtype, padding 1, stride 1: the whole convolution by Winograd's F(2, 3) in one pass
    /// ([`conv3d_winograd_fused`]) → `[N, O, D, H, W]`.
    #[fusion(dtype = x, shape = conv3d_winograd_fused_shape(x, filter, bias))]
    fn conv3d_winograd_fused(
        x: FloatTensor<Self>,
        filter: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

fn winograd_input_shape(x: &Shape, m: &usize, _z0: &usize, deep: &usize) -> Shape {
    Shape::new([(m + 2).pow(3), x[1], x[0] * deep * x[3].div_ceil(*m) * x[4].div_ceil(*m)])
}

fn winograd_output_shape(
    products: &Shape,
    _m: &usize,
    images: &usize,
    depth: &usize,
    height: &usize,
    width: &usize,
) -> Shape {
    Shape::new([*images, products[1], *depth, *height, *width])
}

/// Whether [`conv3d_winograd`] computes this convolution by its kernels: 3×3×3, stride 1,
/// padding 1 (nnU-Net's), not dilated or grouped.
pub fn winograd_fits(input: [usize; 5], weight: [usize; 5], options: &ConvOptions<3>) -> bool {
    crate::winograd::covers(input, weight, options) && options.padding == [(1, 1); 3]
}

/// A 3×3×3 convolution (padding 1, stride 1) by Winograd's `transform` (F(2, 3) or F(4, 3) along
/// each axis), its transforms by [`LightboxKernels::winograd_input`] and
/// [`LightboxKernels::winograd_output`] (one pass each), the (m + 2)³ products
/// `[O, C] · [C, tiles]` by burn's matrix kernel; `transposed`: each as
/// `([tiles, C] · [C, O])ᵀ` (views both ways), which a matrix kernel tiles differently. In
/// slabs of output depth of at most `budget` bytes of transformed input; in the weight's dtype,
/// the bias added after. What the kernels do not cover ([`winograd_fits`]) is
/// [`crate::winograd::conv3d_winograd`].
pub fn conv3d_winograd(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    budget: usize,
    transform: &crate::winograd::Transform,
    transposed: bool,
) -> Tensor<5> {
    if !winograd_fits(x.dims(), weight.dims(), options) {
        return crate::winograd::conv3d_winograd(x, weight, bias, options, budget, transform);
    }
    let m = transform.m;
    crate::winograd::by_slabs(x, weight, bias, options, budget, transform, |x, out, _| {
        let n = x.dims()[0];
        move |filter: &Tensor<3>, z0: usize, deep: usize| {
            let u: Tensor<3> = Tensor::from_dispatch(<Dispatch as LightboxKernels>::winograd_input(
                x.clone().into_dispatch(),
                m,
                z0,
                deep,
            ));
            let products = if transposed {
                u.swap_dims(1, 2).matmul(filter.clone()).swap_dims(1, 2)
            } else {
                filter.clone().swap_dims(1, 2).matmul(u)
            };
            // The output kernel cuts to the grid (padding 1: the input's size).
            let depth = (m * deep).min(out[0] - m * z0);
            Tensor::from_dispatch(<Dispatch as LightboxKernels>::winograd_output(
                products.into_dispatch(),
                m,
                n,
                depth,
                out[1],
                out[2],
            ))
        }
    })
}

fn conv3d_winograd_fused_shape(x: &Shape, filter: &Shape, _bias: &Shape) -> Shape {
    Shape::new([x[0], filter[2], x[2], x[3], x[4]])
}

/// F(2, 3) tiles a workgroup of [`conv3d_winograd_fused`] computes.
pub const FUSED_TILES: usize = 16;
/// Output channels it computes (a layer's count must be a multiple).
pub const FUSED_CHANNELS: usize = 16;
/// Input channels it stages in workgroup memory at a time.
pub const FUSED_CHUNK: usize = 4;
/// Its threads: one per product (64) and quarter of its tiles × channels.
pub const FUSED_THREADS: usize = 256;
/// Its workgroup memory: a chunk's transformed input and weights in f32, 32 KiB (lavapipe's
/// limit, so that the CPU tests run what an NVIDIA GPU runs).
pub const FUSED_WORKGROUP_BYTES: usize = 2 * 64 * FUSED_CHUNK * FUSED_TILES * 4;
// The kernel's thread layout: a thread per product and quarter of the 16 × 16 (tile, channel)
// pairs; for staging, a thread per tile, staged channel and row of Bᵀ along z.
const _: () = assert!(
    FUSED_WORKGROUP_BYTES <= TILED_WORKGROUP_BYTES
        && FUSED_TILES == 16
        && FUSED_CHANNELS == 16
        && FUSED_THREADS == 64 * 4
        && FUSED_THREADS == FUSED_TILES * FUSED_CHUNK * 4
);

/// Whether [`conv3d_winograd_fused`] computes this convolution by its kernel: what
/// [`winograd_fits`], with output channels a multiple of [`FUSED_CHANNELS`].
pub fn winograd_fused_fits(input: [usize; 5], weight: [usize; 5], options: &ConvOptions<3>) -> bool {
    winograd_fits(input, weight, options) && weight[0].is_multiple_of(FUSED_CHANNELS)
}

/// A 3×3×3 convolution (padding 1, stride 1) by Winograd's F(2, 3) in one kernel
/// ([`LightboxKernels::conv3d_winograd_fused`]): a workgroup stages a few input channels'
/// transformed input tiles and weights in workgroup memory, sums the 64 products of
/// [`FUSED_TILES`] tiles × [`FUSED_CHANNELS`] output channels in registers over all input
/// channels, and transforms them back to the output. Unlike [`conv3d_winograd`], nothing of
/// its transforms or products goes through device memory (there, 8 times the input and the
/// output each way for F(2, 3)), so it needs no slabs. The weight transformed and the sums in
/// f32 (the transformed weight rounded to f16 left an f16 layer 0.6 % off on lavapipe), the
/// bias added to them as the outputs are written (no pass of its own), the output in the
/// layer's dtype. What the kernel does not
/// cover ([`winograd_fused_fits`]) is [`crate::winograd::conv3d_winograd`] (a GPU without the
/// workgroup memory: [`conv3d_winograd`]'s three steps).
pub fn conv3d_winograd_fused(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
) -> Tensor<5> {
    let transform = &crate::winograd::F2;
    if !winograd_fused_fits(x.dims(), weight.dims(), options) {
        return crate::winograd::conv3d_winograd(x, weight, bias, options, usize::MAX, transform);
    }
    let dtype = burn::tensor::FloatDType::from(weight.dtype());
    let o = weight.dims()[0];
    let f32 = burn::tensor::FloatDType::F32;
    let bias = bias.map_or_else(|| Tensor::<1>::zeros([o], &weight.device()).cast(f32), |b| b.cast(f32));
    let filter = crate::winograd::transformed_filter(weight, transform);
    Tensor::from_dispatch(<Dispatch as LightboxKernels>::conv3d_winograd_fused(
        x.cast(dtype).into_dispatch(),
        filter.into_dispatch(),
        bias.into_dispatch(),
    ))
}

/// [`LightboxKernels::conv3d_winograd_fused`] in [`conv3d_winograd`]'s three steps: the input
/// transform, one batch of products, the output transform; then the bias added.
fn winograd_in_three_steps<B: LightboxKernels>(
    x: FloatTensor<B>,
    filter: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let [n, _, d, h, w] = x.shape().dims::<5>();
    let dtype = x.dtype().into();
    let u = B::winograd_input(x, 2, 0, d.div_ceil(2));
    let products = B::float_matmul(B::float_swap_dims(B::float_cast(filter, dtype), 1, 2), u);
    let y = B::winograd_output(products, 2, n, d, h, w);
    let o = y.shape()[1];
    let bias = B::float_reshape(B::float_cast(bias, dtype), Shape::new([1, o, 1, 1, 1]));
    let shape = y.shape();
    B::float_add(y, B::float_expand(bias, shape))
}

fn conv3d_k1_shape(x: &Shape, weight: &Shape, _channels: &usize) -> Shape {
    Shape::new([x[0], weight[1], x[2], x[3], x[4]])
}

/// Output channels a thread of [`conv3d_k1`] sums for `o` output channels: all of them up to
/// 16 (nnU-Net's segmentation head has one a class), otherwise the largest of 16, 8, 4, 2
/// dividing `o`.
pub fn pointwise_channels(o: usize) -> usize {
    if o <= 16 { o.max(1) } else { [16, 8, 4, 2].into_iter().find(|b| o.is_multiple_of(*b)).unwrap_or(1) }
}

/// Whether [`conv3d_k1`] computes this convolution: 1×1×1, stride 1, no padding, dilation or
/// groups.
pub fn conv3d_k1_fits(weight: [usize; 5], options: &burn::tensor::ops::ConvOptions<3>) -> bool {
    weight[2..] == [1; 3]
        && options.stride == [1; 3]
        && options.padding == [(0, 0); 3]
        && options.dilation == [1; 3]
        && options.groups == 1
}

/// A 1×1×1 convolution by [`LightboxKernels::conv3d_k1`] (one thread a voxel, its output
/// channels in f32 registers, the input read once), in the weight's dtype; the bias is added
/// after. What the kernel does not cover ([`conv3d_k1_fits`]) is burn's convolution.
pub fn conv3d_k1(x: Tensor<5>, weight: Tensor<5>, bias: Option<Tensor<1>>, options: &ConvOptions<3>) -> Tensor<5> {
    if !conv3d_k1_fits(weight.dims(), options) {
        return burn::tensor::module::conv3d(x, weight, bias, options.clone());
    }
    let channels = pointwise_channels(weight.dims()[0]);
    channels_last(x, weight, bias, |x, weight| <Dispatch as LightboxKernels>::conv3d_k1(x, weight, channels))
}

fn conv3d_k3_tiled_shape(x: &Shape, weight: &Shape, stride: &usize, _tiling: &usize) -> Shape {
    conv3d_k3_shape(x, weight, stride)
}

/// Output voxels along x of one tile of [`conv3d_k3_tiled`]: one thread each, a warp's width
/// on NVIDIA (so a warp reads consecutive values of workgroup memory).
pub const TILE_WIDTH: usize = 32;

/// How [`conv3d_k3_tiled`] splits the work. A workgroup computes `block()` output channels of a
/// [`TILE_WIDTH`] × `tile_rows()` tile of one output plane: it stages the tile's input (with its
/// one-voxel border, three planes deep) and the block's weights for `chunk` input channels at a
/// time in workgroup memory, and each thread sums `channels` output channels of `rows`
/// consecutive rows at its x, in f32 registers. Each value read from workgroup memory feeds
/// `channels` (an input) or `rows` (a weight) multiply-adds, and all the threads of a warp read
/// the same weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub rows: usize,
    pub channels: usize,
    pub row_groups: usize,
    pub channel_groups: usize,
    pub chunk: usize,
}

impl Tiling {
    pub const fn tile_rows(&self) -> usize {
        self.rows * self.row_groups
    }

    pub const fn block(&self) -> usize {
        self.channels * self.channel_groups
    }

    pub const fn threads(&self) -> usize {
        TILE_WIDTH * self.row_groups * self.channel_groups
    }

    /// Input channels staged at once: `chunk` at stride 1, one at stride 2 (whose input tile is
    /// four times the size).
    pub const fn chunk(&self, stride: usize) -> usize {
        if stride == 1 { self.chunk } else { 1 }
    }

    /// Bytes of workgroup memory at `stride` for input values of `elem` bytes: the input tile
    /// in the input's dtype, the weights in f32.
    pub const fn workgroup_bytes(&self, stride: usize, elem: usize) -> usize {
        let input = 3 * ((self.tile_rows() - 1) * stride + 3) * ((TILE_WIDTH - 1) * stride + 3);
        self.chunk(stride) * (input * elem + 27 * self.block() * 4)
    }
}

/// The tilings the convolution tuner times (`ConvWay::Tiled*`): 32×16 voxels × 32 channels in
/// 256 threads of 8 rows × 8 channels, 2 input channels staged at a time; the same for 64
/// channels in 512 threads; and 32×8 × 32 in 256 threads of 4 × 8 (fewer registers, more
/// workgroups at once), 4 input channels staged at a time (half the barriers). Workgroup memory
/// in f32 at stride 1: 21.1, 27.8 and 29.4 KiB.
pub const TILINGS: [Tiling; 3] = [
    Tiling { rows: 8, channels: 8, row_groups: 2, channel_groups: 4, chunk: 2 },
    Tiling { rows: 8, channels: 8, row_groups: 2, channel_groups: 8, chunk: 2 },
    Tiling { rows: 4, channels: 8, row_groups: 2, channel_groups: 4, chunk: 4 },
];

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

/// Whether [`conv3d_k3_tiled`] computes this convolution: 3×3×3, padding 1, the same stride 1
/// or 2 on every axis, no dilation or groups, output channels a multiple of the tiling's block,
/// and the tiling's workgroup memory at that stride within [`TILED_WORKGROUP_BYTES`].
pub fn conv3d_k3_tiled_fits(weight: [usize; 5], options: &burn::tensor::ops::ConvOptions<3>, tiling: usize) -> bool {
    conv3d_k3_fits(weight, options, CHANNEL_BLOCKS[0])
        && TILINGS.get(tiling).is_some_and(|t| {
            weight[0].is_multiple_of(t.block()) && t.workgroup_bytes(options.stride[0], 4) <= TILED_WORKGROUP_BYTES
        })
}

/// The most workgroup memory a tiling may take in f32: lavapipe's 32 KiB, so that every tiling
/// the tuner may choose is tested on the CPU (an NVIDIA GPU has 48 KiB).
pub const TILED_WORKGROUP_BYTES: usize = 32 * 1024;

/// A 3×3×3 convolution by [`LightboxKernels::conv3d_k3_tiled`], padding 1, in the weight's
/// dtype; the bias is added after. What the kernel does not cover ([`conv3d_k3_tiled_fits`], or
/// a GPU without the workgroup memory or threads the tiling needs) is burn's convolution.
pub fn conv3d_k3_tiled(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    stride: usize,
    tiling: usize,
) -> Tensor<5> {
    let options = burn::tensor::ops::ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
    if !conv3d_k3_tiled_fits(weight.dims(), &options, tiling) {
        return burn::tensor::module::conv3d(x, weight, bias, options);
    }
    channels_last(x, weight, bias, |x, weight| {
        <Dispatch as LightboxKernels>::conv3d_k3_tiled(x, weight, stride, tiling)
    })
}

/// `kernel` on `x` in the weight's dtype and on the weight `[O, C, kd, kh, kw]` as
/// `[C·kd·kh·kw, O]` (one small copy), then the bias added.
fn channels_last(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    kernel: impl FnOnce(FloatTensor<Dispatch>, FloatTensor<Dispatch>) -> FloatTensor<Dispatch>,
) -> Tensor<5> {
    let [o, c, kd, kh, kw] = weight.dims();
    let dtype = burn::tensor::FloatDType::from(weight.dtype());
    let weight = weight.reshape([o, c * kd * kh * kw]).swap_dims(0, 1);
    let y = Tensor::from_dispatch(kernel(x.cast(dtype).into_dispatch(), weight.into_dispatch()));
    match bias {
        Some(b) => y + b.cast(dtype).reshape([1, o, 1, 1, 1]),
        None => y,
    }
}

/// burn's convolution of `x` by a `[C·27, O]` weight (padding 1), on any backend.
fn burns_conv3d_k3<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, stride: usize) -> FloatTensor<B> {
    let [c27, o] = weight.shape().dims::<2>();
    let weight = B::float_reshape(B::float_swap_dims(weight, 0, 1), Shape::new([o, c27 / 27, 3, 3, 3]));
    B::conv3d(x, weight, None, ConvOptions::new([stride; 3], [1; 3], [1; 3], 1))
}

/// burn's 1×1×1 convolution of `x` by a `[C, O]` weight, on any backend.
fn burns_conv3d_k1<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>) -> FloatTensor<B> {
    let [c, o] = weight.shape().dims::<2>();
    let weight = B::float_reshape(B::float_swap_dims(weight, 0, 1), Shape::new([o, c, 1, 1, 1]));
    B::conv3d(x, weight, None, ConvOptions::new([1; 3], [0; 3], [1; 3], 1))
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
    channels_last(x, weight, bias, |x, weight| <Dispatch as LightboxKernels>::conv3d_k3(x, weight, stride, channels))
}

impl LightboxKernels for Flex {
    fn conv3d_k3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        _channels: usize,
    ) -> FloatTensor<Self> {
        burns_conv3d_k3::<Self>(x, weight, stride)
    }

    fn conv3d_k3_tiled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        _tiling: usize,
    ) -> FloatTensor<Self> {
        burns_conv3d_k3::<Self>(x, weight, stride)
    }

    fn conv3d_k1(x: FloatTensor<Self>, weight: FloatTensor<Self>, _channels: usize) -> FloatTensor<Self> {
        burns_conv3d_k1::<Self>(x, weight)
    }

    fn winograd_input(x: FloatTensor<Self>, m: usize, z0: usize, deep: usize) -> FloatTensor<Self> {
        let (shape, dtype) = (winograd_input_shape(&x.shape(), &m, &z0, &deep), x.dtype());
        let [n, c, d, h, w] = x.shape().dims::<5>();
        let values = x.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        let t = crate::winograd::Transform::of(m);
        let a = t.alpha();
        let (th, tw) = (h.div_ceil(m), w.div_ceil(m));
        let tiles = n * deep * th * tw;
        let mut out = vec![0.0f32; a.pow(3) * c * tiles];
        for ci in 0..c {
            for p in 0..tiles {
                let (tx, ty, tz, ni) = (p % tw, p / tw % th, p / (tw * th) % deep, p / (tw * th * deep));
                // Padded coordinate q = m·t + j reads the input at q − 1.
                let at = |q: usize, len: usize| (1..=len).contains(&q).then(|| q - 1);
                let mut tile: Vec<f32> = (0..a.pow(3))
                    .map(|i| {
                        let (jz, jy, jx) = (i / (a * a), i / a % a, i % a);
                        match (at(m * (z0 + tz) + jz, d), at(m * ty + jy, h), at(m * tx + jx, w)) {
                            (Some(z), Some(y), Some(x)) => values[(((ni * c + ci) * d + z) * h + y) * w + x],
                            _ => 0.0,
                        }
                    })
                    .collect();
                along_axes(&mut tile, a, t.input_rows());
                (0..a.pow(3)).for_each(|k| out[(k * c + ci) * tiles + p] = tile[k]);
            }
        }
        <Self as burn::backend::ops::FloatTensorOps<Self>>::float_from_data(
            burn::tensor::TensorData::new(out, shape).convert_dtype(dtype),
            &Default::default(),
        )
    }

    fn winograd_output(
        products: FloatTensor<Self>,
        m: usize,
        images: usize,
        depth: usize,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        let (shape, dtype) =
            (winograd_output_shape(&products.shape(), &m, &images, &depth, &height, &width), products.dtype());
        let [_, o, tiles] = products.shape().dims::<3>();
        // Its values in [(m + 2)³, O, P] order whatever its strides.
        let values = products.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default();
        let t = crate::winograd::Transform::of(m);
        let a = t.alpha();
        let (th, tw) = (height.div_ceil(m), width.div_ceil(m));
        let deep = tiles / (images * th * tw).max(1);
        let mut out = vec![0.0f32; images * o * depth * height * width];
        for oi in 0..o {
            for p in 0..tiles {
                let (tx, ty, tz, ni) = (p % tw, p / tw % th, p / (tw * th) % deep, p / (tw * th * deep));
                let mut tile: Vec<f32> = (0..a.pow(3)).map(|k| values[(k * o + oi) * tiles + p]).collect();
                along_axes(&mut tile, a, t.output_rows());
                for i in 0..m.pow(3) {
                    let (dz, dy, dx) = (i / (m * m), i / m % m, i % m);
                    let (z, y, x) = (m * tz + dz, m * ty + dy, m * tx + dx);
                    if z < depth && y < height && x < width {
                        out[(((ni * o + oi) * depth + z) * height + y) * width + x] = tile[(dz * a + dy) * a + dx];
                    }
                }
            }
        }
        <Self as burn::backend::ops::FloatTensorOps<Self>>::float_from_data(
            burn::tensor::TensorData::new(out, shape).convert_dtype(dtype),
            &Default::default(),
        )
    }

    fn conv3d_winograd_fused(
        x: FloatTensor<Self>,
        filter: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        winograd_in_three_steps::<Self>(x, filter, bias)
    }
}

/// Each row of `rows` (a transform's matrix, α columns) applied along x, then y, then z of an
/// α³ tile, in place (row k into position k along the axis).
fn along_axes(tile: &mut [f32], a: usize, rows: &[&[f32]]) {
    for step in [1, a, a * a] {
        for first in (0..a.pow(3)).filter(|i| (i / step) % a == 0) {
            let v: Vec<f32> = (0..a).map(|k| tile[first + k * step]).collect();
            for (k, row) in rows.iter().enumerate() {
                tile[first + k * step] = row.iter().zip(&v).map(|(b, x)| b * x).sum();
            }
        }
    }
}

impl LightboxKernels for CubeBackend {
    fn conv3d_k3(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: usize, channels: usize) -> FloatTensor<Self> {
        gpu::conv3d_k3(x, weight, stride, channels)
    }

    fn conv3d_k3_tiled(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        tiling: usize,
    ) -> FloatTensor<Self> {
        let t = TILINGS[tiling];
        let hardware = &x.client.properties().hardware;
        if t.workgroup_bytes(stride, x.dtype.size()) > hardware.max_shared_memory_size
            || t.threads() > hardware.max_units_per_cube as usize
        {
            return burns_conv3d_k3::<Self>(x, weight, stride);
        }
        gpu::conv3d_k3_tiled(x, weight, t, stride)
    }

    fn conv3d_k1(x: FloatTensor<Self>, weight: FloatTensor<Self>, channels: usize) -> FloatTensor<Self> {
        gpu::conv3d_k1(x, weight, channels)
    }

    fn winograd_input(x: FloatTensor<Self>, m: usize, z0: usize, deep: usize) -> FloatTensor<Self> {
        gpu::winograd_input(x, m, z0, deep)
    }

    fn winograd_output(
        products: FloatTensor<Self>,
        m: usize,
        images: usize,
        depth: usize,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        gpu::winograd_output(products, m, images, depth, height, width)
    }

    fn conv3d_winograd_fused(
        x: FloatTensor<Self>,
        filter: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let hardware = &x.client.properties().hardware;
        if FUSED_WORKGROUP_BYTES > hardware.max_shared_memory_size
            || FUSED_THREADS > hardware.max_units_per_cube as usize
        {
            return winograd_in_three_steps::<Self>(x, filter, bias);
        }
        gpu::conv3d_winograd_fused(x, filter, bias)
    }
}

pub(crate) mod gpu {

    use burn::backend::TensorMetadata;
    use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
    use cubecl::prelude::*;

    use super::{FUSED_CHANNELS, FUSED_CHUNK, FUSED_THREADS, FUSED_TILES, Shape, TILE_WIDTH, Tiling, VOXELS};

    /// Whether a padded coordinate `p` (padding 1: it reads input `p − 1`) is inside an axis of
    /// `len` input voxels: 1 ≤ p ≤ len.
    #[cube]
    pub(crate) fn within(p: usize, len: usize) -> bool {
        p >= 1 && p <= len
    }

    /// A kernel's tensors: the input and weight made contiguous (the kernels index them
    /// row-major), an output in the input's dtype, the address width all three need and the
    /// input's element type.
    struct Launch {
        x: CubeTensor,
        weight: CubeTensor,
        output: CubeTensor,
        address: AddressType,
        dtype: ElemType,
    }

    impl Launch {
        fn new(x: CubeTensor, weight: CubeTensor, shape: impl FnOnce(&Shape, &Shape) -> Shape) -> Self {
            let x = into_contiguous(x);
            let weight = into_contiguous(weight);
            let output =
                empty_device_dtype(x.client.clone(), x.device.clone(), shape(&x.shape(), &weight.shape()), x.dtype);
            let address =
                x.required_address_type().max(weight.required_address_type()).max(output.required_address_type());
            let dtype = burn::backend::cubecl::dtype_to_storage_type(x.dtype);
            Self { x, weight, output, address, dtype }
        }
    }

    /// One workgroup: output channels `[block·B, +B)` (B = `channels · channel_groups`) of the
    /// [`TILE_WIDTH`] × `rows · row_groups` tile `(tx, ty)` of output plane `oz` of image `n`,
    /// stride 1 or 2, padding 1 (see [`Tiling`]). Workgroups run over the channel blocks fastest
    /// (they read the same input tile, still in L2), then x, y, z and n.
    #[cube(launch, address_type = "dynamic")]
    fn conv3d_k3_tiled_kernel<F: Float>(
        input: &Tensor<F>,
        weight: &Tensor<F>,
        output: &mut Tensor<F>,
        #[comptime] rows: usize,
        #[comptime] channels: usize,
        #[comptime] row_groups: usize,
        #[comptime] channel_groups: usize,
        #[comptime] chunk: usize,
        #[comptime] stride: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let tile_rows = rows * row_groups;
        let block = channels * channel_groups;
        let threads = TILE_WIDTH * row_groups * channel_groups;
        // The input a tile reads: its voxels `stride` apart, and the kernel's reach.
        let halo_w = (TILE_WIDTH - 1) * stride + 3;
        let halo_h = (tile_rows - 1) * stride + 3;
        // The input values one thread's rows reach at one x.
        let reach = (rows - 1) * stride + 3;
        let in_len = chunk * 3 * halo_h * halo_w;
        // Weights in f32, four output channels a vector (one load for four).
        let w_len = chunk * 27 * block / 4;

        let in_c = input.shape(1);
        let (in_d, in_h, in_w) = (input.shape(2), input.shape(3), input.shape(4));
        let out_c = output.shape(1);
        let (out_d, out_h, out_w) = (output.shape(2), output.shape(3), output.shape(4));
        let tiles_x = out_w.div_ceil(TILE_WIDTH);
        let tiles_y = out_h.div_ceil(tile_rows);
        let blocks = out_c / block;
        let mut cube = CUBE_POS;
        if cube >= output.shape(0) * out_d * tiles_y * tiles_x * blocks {
            terminate!();
        }
        let ob = cube % blocks;
        cube /= blocks;
        let x0 = (cube % tiles_x) * TILE_WIDTH;
        cube /= tiles_x;
        let y0 = (cube % tiles_y) * tile_rows;
        cube /= tiles_y;
        let oz = cube % out_d;
        let n = cube / out_d;

        let unit = UNIT_POS as usize;
        let lx = unit % TILE_WIDTH;
        let group = unit / TILE_WIDTH;
        let gy = group % row_groups;
        let gc = group / row_groups;

        let mut tile_in = Shared::<[F]>::new_slice(in_len);
        let mut tile_w = Shared::<[Vector<f32, Const<4>>]>::new_slice(w_len);
        let mut acc = Array::<f32>::new(rows * channels);
        #[unroll]
        for i in 0..rows * channels {
            acc[i] = 0.0f32;
        }
        let plane = in_h * in_w;
        let mut c0 = 0usize;
        while c0 < in_c {
            // Stage `chunk` input channels: three planes of the tile and its border (zeros
            // outside the image and past the last channel), then their weights for the block.
            let mut i = unit;
            while i < in_len {
                let xx = i % halo_w;
                let mut r = i / halo_w;
                let yy = r % halo_h;
                r /= halo_h;
                let kz = r % 3;
                let c = c0 + r / 3;
                // Padded coordinates: p reads input p − 1, inside when 1 ≤ p ≤ len.
                let (pz, py, px) = (oz * stride + kz, y0 * stride + yy, x0 * stride + xx);
                let mut v = F::new(0.0);
                if c < in_c && within(pz, in_d) && within(py, in_h) && within(px, in_w) {
                    v = input[((n * in_c + c) * in_d + pz - 1) * plane + (py - 1) * in_w + px - 1];
                }
                tile_in[i] = v;
                i += threads;
            }
            let mut i = unit;
            while i < w_len {
                let tap = i / (block / 4);
                let mut v = Vector::<f32, Const<4>>::empty().fill(0.0f32);
                if c0 + tap / 27 < in_c {
                    let at = (c0 * 27 + tap) * out_c + ob * block + (i % (block / 4)) * 4;
                    #[unroll]
                    for e in 0..4usize {
                        v.insert(e, f32::cast_from(weight[at + e]));
                    }
                }
                tile_w[i] = v;
                i += threads;
            }
            sync_cube();
            for c in 0..chunk {
                #[unroll]
                for kz in 0..3usize {
                    #[unroll]
                    for kx in 0..3usize {
                        // The input values at this x that the thread's rows reach.
                        let mut column = Array::<f32>::new(reach);
                        let base = ((c * 3 + kz) * halo_h + gy * rows * stride) * halo_w + lx * stride + kx;
                        #[unroll]
                        for r in 0..reach {
                            column[r] = f32::cast_from(tile_in[base + r * halo_w]);
                        }
                        #[unroll]
                        for ky in 0..3usize {
                            let w0 = ((c * 27 + (kz * 3 + ky) * 3 + kx) * block + gc * channels) / 4;
                            #[unroll]
                            for q in 0..channels / 4 {
                                let w4 = tile_w[w0 + q];
                                #[unroll]
                                for e in 0..4usize {
                                    let w = w4.extract(e);
                                    #[unroll]
                                    for r in 0..rows {
                                        acc[r * channels + q * 4 + e] += w * column[r * stride + ky];
                                    }
                                }
                            }
                        }
                    }
                }
            }
            sync_cube();
            c0 += chunk;
        }
        let x = x0 + lx;
        if x < out_w {
            #[unroll]
            for j in 0..channels {
                let oc = ob * block + gc * channels + j;
                #[unroll]
                for r in 0..rows {
                    let y = y0 + gy * rows + r;
                    if y < out_h {
                        output[((n * out_c + oc) * out_d + oz) * out_h * out_w + y * out_w + x] =
                            F::cast_from(acc[r * channels + j]);
                    }
                }
            }
        }
    }

    /// One thread: output channels `[block·channels, +channels)` of one voxel; threads run
    /// over the voxels (n, then z, y, x) fastest, so a warp reads consecutive input values.
    #[cube(launch, address_type = "dynamic")]
    fn conv3d_k1_kernel<F: Float>(
        input: &Tensor<F>,
        weight: &Tensor<F>,
        output: &mut Tensor<F>,
        #[comptime] channels: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let in_c = input.shape(1);
        let out_c = output.shape(1);
        let voxels = input.shape(2) * input.shape(3) * input.shape(4);
        let per_block = input.shape(0) * voxels;
        let block = ABSOLUTE_POS / per_block;
        if block >= out_c / channels {
            terminate!();
        }
        let rest = ABSOLUTE_POS % per_block;
        let v = rest % voxels;
        let n = rest / voxels;
        let mut acc = Array::<f32>::new(channels);
        #[unroll]
        for j in 0..channels {
            acc[j] = 0.0f32;
        }
        for ic in 0..in_c {
            let value = f32::cast_from(input[(n * in_c + ic) * voxels + v]);
            let w0 = ic * out_c + block * channels;
            #[unroll]
            for j in 0..channels {
                acc[j] += value * f32::cast_from(weight[w0 + j]);
            }
        }
        #[unroll]
        for j in 0..channels {
            output[(n * out_c + block * channels + j) * voxels + v] = F::cast_from(acc[j]);
        }
    }

    pub(super) fn conv3d_k1(x: CubeTensor, weight: CubeTensor, channels: usize) -> CubeTensor {
        let Launch { x, weight, output, address, dtype } =
            Launch::new(x, weight, |x, w| super::conv3d_k1_shape(x, w, &channels));
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let threads = n * d * h * w * (o / channels);
        if threads == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new(&client, threads);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, threads, cube_dim);
        conv3d_k1_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            channels,
            dtype,
        );
        output
    }

    pub(super) fn conv3d_k3_tiled(x: CubeTensor, weight: CubeTensor, t: Tiling, stride: usize) -> CubeTensor {
        let Launch { x, weight, output, address, dtype } =
            Launch::new(x, weight, |x, w| super::conv3d_k3_shape(x, w, &stride));
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let cubes = n * d * h.div_ceil(t.tile_rows()) * w.div_ceil(TILE_WIDTH) * (o / t.block());
        if cubes == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new_1d(t.threads() as u32);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, cubes * t.threads(), cube_dim);
        conv3d_k3_tiled_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            t.rows,
            t.channels,
            t.row_groups,
            t.channel_groups,
            t.chunk(stride),
            stride,
            dtype,
        );
        output
    }

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
                    let row_inside = within(pz, in_d) && within(py, in_h);
                    #[unroll]
                    for kx in 0..3usize {
                        let tap = (kz * 3 + ky) * 3 + kx;
                        let w0 = (ic * 27 + tap) * out_c + block * channels;
                        let mut values = Array::<f32>::new(voxels);
                        #[unroll]
                        for v in 0..voxels {
                            let px = (x0 + v) * stride + kx;
                            values[v] = 0.0f32;
                            if row_inside && within(px, in_w) {
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

    /// Bᵀ of F(2, 3) on `d[first + k·step]`, k = 0..4, in place.
    #[cube]
    fn f2_input_axis(d: &mut Array<f32>, first: usize, step: usize) {
        let a0 = d[first];
        let a1 = d[first + step];
        let a2 = d[first + 2 * step];
        let a3 = d[first + 3 * step];
        d[first] = a0 - a2;
        d[first + step] = a1 + a2;
        d[first + 2 * step] = a2 - a1;
        d[first + 3 * step] = a1 - a3;
    }

    /// Aᵀ of F(2, 3) on `m[first + k·step]`, k = 0..4, into k = 0, 1.
    #[cube]
    fn f2_output_axis(m: &mut Array<f32>, first: usize, step: usize) {
        let a0 = m[first];
        let a1 = m[first + step];
        let a2 = m[first + 2 * step];
        let a3 = m[first + 3 * step];
        m[first] = a0 + a1 + a2;
        m[first + step] = a1 - a2 - a3;
    }

    /// Aᵀ of F(2, 3) along x, y and z of the 4³ tile `m`: its 2³ outputs at `m[dz·16 + dy·4 + dx]`.
    #[cube]
    fn f2_output_tile(m: &mut Array<f32>) {
        #[unroll]
        for a in 0..4usize {
            #[unroll]
            for b in 0..4usize {
                f2_output_axis(m, (a * 4 + b) * 4, 1);
            }
        }
        #[unroll]
        for a in 0..4usize {
            #[unroll]
            for b in 0..2usize {
                f2_output_axis(m, a * 16 + b, 4);
            }
        }
        #[unroll]
        for a in 0..2usize {
            #[unroll]
            for b in 0..2usize {
                f2_output_axis(m, a * 4 + b, 16);
            }
        }
    }

    /// One thread: the (m + 2)³ input tile `p` (from tile depth `z0` on) of channel `c`, padding
    /// 1, transformed along x, y and z in f32 registers, to `output[k, c, p]`; `tile` = m, 2 or 4.
    /// Threads run over the tiles fastest, so a warp writes consecutive values. F(2, 3) keeps
    /// its 64 values in registers; F(4, 3) goes plane by plane of the output's z (36 values and
    /// 36 sums), each the sum of the input planes its row of Bᵀ names, transformed along x and
    /// y (re-read from cache, not kept: 216 values would not fit a thread's registers).
    #[cube(launch, address_type = "dynamic")]
    fn winograd_input_kernel<F: Float>(
        input: &Tensor<F>,
        output: &mut Tensor<F>,
        z0: usize,
        #[comptime] tile: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let (images, in_c) = (input.shape(0), input.shape(1));
        let (in_d, in_h, in_w) = (input.shape(2), input.shape(3), input.shape(4));
        let tiles = output.shape(2);
        if ABSOLUTE_POS >= in_c * tiles {
            terminate!();
        }
        let c = ABSOLUTE_POS / tiles;
        let p = ABSOLUTE_POS % tiles;
        let (th, tw) = (in_h.div_ceil(tile), in_w.div_ceil(tile));
        let deep = tiles / (images * th * tw);
        let tx = p % tw;
        let ty = (p / tw) % th;
        let tz = (p / (tw * th)) % deep;
        let n = p / (tw * th * deep);
        if tile == 2 {
            let base = (n * in_c + c) * in_d * in_h * in_w;
            let mut d = Array::<f32>::new(64usize);
            #[unroll]
            for jz in 0..4usize {
                // Padded coordinates: q = 2·t + j reads input q − 1, inside when 1 ≤ q ≤ len.
                let pz = 2 * (z0 + tz) + jz;
                #[unroll]
                for jy in 0..4usize {
                    let py = 2 * ty + jy;
                    let row_inside = within(pz, in_d) && within(py, in_h);
                    #[unroll]
                    for jx in 0..4usize {
                        let px = 2 * tx + jx;
                        let i = (jz * 4 + jy) * 4 + jx;
                        d[i] = 0.0f32;
                        if row_inside && within(px, in_w) {
                            d[i] = f32::cast_from(input[base + ((pz - 1) * in_h + py - 1) * in_w + px - 1]);
                        }
                    }
                }
            }
            #[unroll]
            for a in 0..4usize {
                #[unroll]
                for b in 0..4usize {
                    f2_input_axis(&mut d, (a * 4 + b) * 4, 1);
                }
            }
            #[unroll]
            for a in 0..4usize {
                #[unroll]
                for b in 0..4usize {
                    f2_input_axis(&mut d, a * 16 + b, 4);
                }
            }
            #[unroll]
            for a in 0..4usize {
                #[unroll]
                for b in 0..4usize {
                    f2_input_axis(&mut d, a * 4 + b, 16);
                }
            }
            #[unroll]
            for k in 0..64usize {
                output[(k * in_c + c) * tiles + p] = F::cast_from(d[k]);
            }
        } else {
            let base = (n * in_c + c) * in_d * in_h * in_w;
            let mut plane = Array::<f32>::new(36usize);
            let mut sums = Array::<f32>::new(36usize);
            #[unroll]
            for kz in 0..6usize {
                #[unroll]
                for i in 0..36usize {
                    sums[i] = 0.0f32;
                }
                #[unroll]
                for jz in 0..6usize {
                    let coefficient = f4_bt(kz, jz);
                    if coefficient != 0.0f32 {
                        // Padded coordinates: q = 4·t + j reads input q − 1, inside when 1 ≤ q ≤ len.
                        let pz = 4 * (z0 + tz) + jz;
                        #[unroll]
                        for jy in 0..6usize {
                            let py = 4 * ty + jy;
                            let row_inside = within(pz, in_d) && within(py, in_h);
                            #[unroll]
                            for jx in 0..6usize {
                                let px = 4 * tx + jx;
                                plane[jy * 6 + jx] = 0.0f32;
                                if row_inside && within(px, in_w) {
                                    plane[jy * 6 + jx] =
                                        f32::cast_from(input[base + ((pz - 1) * in_h + py - 1) * in_w + px - 1]);
                                }
                            }
                        }
                        #[unroll]
                        for r in 0..6usize {
                            f4_input_axis(&mut plane, r * 6, 1);
                        }
                        #[unroll]
                        for r in 0..6usize {
                            f4_input_axis(&mut plane, r, 6);
                        }
                        #[unroll]
                        for i in 0..36usize {
                            sums[i] += coefficient * plane[i];
                        }
                    }
                }
                #[unroll]
                for i in 0..36usize {
                    output[((kz * 36 + i) * in_c + c) * tiles + p] = F::cast_from(sums[i]);
                }
            }
        }
    }

    /// One thread: the (m + 2)³ products of tile `p` for output channel `o` (read by
    /// `products`' strides), transformed back to its m³ outputs, those inside `output` written;
    /// `tile` = m, 2 or 4 (F(4, 3) plane by plane of z, each the sum of the product planes its
    /// row of Aᵀ names).
    #[cube(launch, address_type = "dynamic")]
    fn winograd_output_kernel<F: Float>(
        products: &Tensor<F>,
        output: &mut Tensor<F>,
        #[comptime] channels_fastest: bool,
        #[comptime] tile: usize,
        #[define(F)] _dtype: ElemType,
    ) {
        let (images, out_c) = (output.shape(0), output.shape(1));
        let (out_d, out_h, out_w) = (output.shape(2), output.shape(3), output.shape(4));
        let tiles = products.shape(2);
        if ABSOLUTE_POS >= out_c * tiles {
            terminate!();
        }
        // Threads run over the tiles fastest where the products lie that way (a warp reads
        // consecutive values), over the channels where they were transposed.
        let mut o = ABSOLUTE_POS / tiles;
        let mut p = ABSOLUTE_POS % tiles;
        if channels_fastest {
            o = ABSOLUTE_POS % out_c;
            p = ABSOLUTE_POS / out_c;
        }
        let (th, tw) = (out_h.div_ceil(tile), out_w.div_ceil(tile));
        let deep = tiles / (images * th * tw);
        let tx = p % tw;
        let ty = (p / tw) % th;
        let tz = (p / (tw * th)) % deep;
        let n = p / (tw * th * deep);
        if tile == 2 {
            let at = o * products.stride(1) + p * products.stride(2);
            let step = products.stride(0);
            let mut m = Array::<f32>::new(64usize);
            #[unroll]
            for k in 0..64usize {
                m[k] = f32::cast_from(products[at + k * step]);
            }
            f2_output_tile(&mut m);
            let plane = out_h * out_w;
            let base = (n * out_c + o) * out_d * plane;
            #[unroll]
            for dz in 0..2usize {
                #[unroll]
                for dy in 0..2usize {
                    #[unroll]
                    for dx in 0..2usize {
                        let (z, y, x) = (2 * tz + dz, 2 * ty + dy, 2 * tx + dx);
                        if z < out_d && y < out_h && x < out_w {
                            output[base + z * plane + y * out_w + x] = F::cast_from(m[dz * 16 + dy * 4 + dx]);
                        }
                    }
                }
            }
        } else {
            let at = o * products.stride(1) + p * products.stride(2);
            let step = products.stride(0);
            let plane_size = out_h * out_w;
            let base = (n * out_c + o) * out_d * plane_size;
            let mut plane = Array::<f32>::new(36usize);
            let mut sums = Array::<f32>::new(16usize);
            #[unroll]
            for dz in 0..4usize {
                #[unroll]
                for i in 0..16usize {
                    sums[i] = 0.0f32;
                }
                #[unroll]
                for kz in 0..6usize {
                    let coefficient = f4_at(dz, kz);
                    if coefficient != 0.0f32 {
                        #[unroll]
                        for i in 0..36usize {
                            plane[i] = f32::cast_from(products[at + (kz * 36 + i) * step]);
                        }
                        #[unroll]
                        for r in 0..6usize {
                            f4_output_axis(&mut plane, r * 6, 1);
                        }
                        #[unroll]
                        for r in 0..4usize {
                            f4_output_axis(&mut plane, r, 6);
                        }
                        #[unroll]
                        for dy in 0..4usize {
                            #[unroll]
                            for dx in 0..4usize {
                                sums[dy * 4 + dx] += coefficient * plane[dy * 6 + dx];
                            }
                        }
                    }
                }
                let z = 4 * tz + dz;
                #[unroll]
                for dy in 0..4usize {
                    #[unroll]
                    for dx in 0..4usize {
                        let (y, x) = (4 * ty + dy, 4 * tx + dx);
                        if z < out_d && y < out_h && x < out_w {
                            output[base + z * plane_size + y * out_w + x] = F::cast_from(sums[dy * 4 + dx]);
                        }
                    }
                }
            }
        }
    }

    /// One workgroup of [`FUSED_THREADS`]: Winograd's F(2, 3) for [`FUSED_TILES`] consecutive
    /// tiles `p0 ..` (in (n, z, y, x) order) and output channels `[block·16, +16)`, the whole
    /// convolution (padding 1, stride 1) with nothing between its steps in device memory. For
    /// each [`FUSED_CHUNK`] input channels the workgroup stages their transformed input tiles
    /// `V[α][c][tile]` (a thread per tile, channel and row of Bᵀ along z: the sum of two input
    /// planes, transformed along x and y) and transformed weights `U[α][c][o]` in workgroup
    /// memory; then each thread, one product α of 64 and half the tiles and half the channels,
    /// adds `V[α][c][t]·U[α][c][o]` for its 8 × 8 (tile, channel) pairs in f32 registers. At the
    /// end the 64 products of each (tile, channel) pass through workgroup memory, 8 channels at a
    /// time, to the thread that transforms them back (Aᵀ·M·A) to the tile's 2³ outputs and adds
    /// the bias. Rows of
    /// workgroup memory are rotated by α, so the threads of a warp (8 α) read 16 distinct banks.
    #[cube(launch, address_type = "dynamic")]
    fn winograd_fused_kernel<F: Float, W: Float>(
        input: &Tensor<F>,
        filter: &Tensor<W>,
        bias: &Tensor<W>,
        output: &mut Tensor<F>,
        #[define(F, W)] _dtypes: [ElemType; 2],
    ) {
        let (images, in_c) = (input.shape(0), input.shape(1));
        let (in_d, in_h, in_w) = (input.shape(2), input.shape(3), input.shape(4));
        let out_c = output.shape(1);
        let (td, th, tw) = (in_d.div_ceil(2), in_h.div_ceil(2), in_w.div_ceil(2));
        let tiles = images * td * th * tw;
        let blocks = out_c / FUSED_CHANNELS;
        let cube = CUBE_POS;
        if cube >= tiles.div_ceil(FUSED_TILES) * blocks {
            terminate!();
        }
        // Channel blocks fastest: consecutive workgroups stage the same input (still in L2).
        let ob = cube % blocks;
        let p0 = (cube / blocks) * FUSED_TILES;
        let unit = UNIT_POS as usize;
        // V at 0, U after it; at the end, the products.
        let chunk_len = 64 * FUSED_CHUNK * FUSED_TILES;
        let mut shared = Shared::<[f32]>::new_slice(2 * chunk_len);

        // This thread's sums: product `alpha`, tiles `[half_t·8, +8)`, channels `[half_o·8, +8)`.
        let alpha = unit / 4;
        let half_t = (unit / 2) % 2;
        let half_o = unit % 2;
        let mut acc = Array::<f32>::new(64usize);
        #[unroll]
        for i in 0..64usize {
            acc[i] = 0.0f32;
        }

        // Its part of staging V: tile `st`, channel `sc` of the chunk, row `sz` of Bᵀ along z
        // (rows 0 to 3: d0 − d2, d1 + d2, d2 − d1, d1 − d3).
        let st = unit % FUSED_TILES;
        let sc = (unit / FUSED_TILES) % FUSED_CHUNK;
        let sz = unit / (FUSED_TILES * FUSED_CHUNK);
        let sp = p0 + st;
        let tx = sp % tw;
        let ty = (sp / tw) % th;
        let tz = (sp / (tw * th)) % td;
        let n = sp / (tw * th * td);
        let mut za = 0usize;
        let mut zb = 2usize;
        let mut sign = f32::new(-1.0);
        if sz == 1 {
            za = 1;
            zb = 2;
            sign = f32::new(1.0);
        } else if sz == 2 {
            za = 2;
            zb = 1;
        } else if sz == 3 {
            za = 1;
            zb = 3;
        }
        // Padded coordinates: q = 2·t + j reads input q − 1, inside when 1 ≤ q ≤ len.
        let (pza, pzb) = (2 * tz + za, 2 * tz + zb);
        let inside_a = sp < tiles && within(pza, in_d);
        let inside_b = sp < tiles && within(pzb, in_d);
        let plane_len = in_h * in_w;

        let mut c0 = 0usize;
        while c0 < in_c {
            let c = c0 + sc;
            let mut plane = Array::<f32>::new(16usize);
            let base = (n * in_c + c) * in_d * plane_len;
            #[unroll]
            for jy in 0..4usize {
                let py = 2 * ty + jy;
                let row_inside = c < in_c && within(py, in_h);
                #[unroll]
                for jx in 0..4usize {
                    let px = 2 * tx + jx;
                    let at = base + (py - 1) * in_w + px - 1;
                    let inside = row_inside && within(px, in_w);
                    let mut v = f32::new(0.0);
                    if inside && inside_a {
                        v = f32::cast_from(input[at + (pza - 1) * plane_len]);
                    }
                    if inside && inside_b {
                        v += sign * f32::cast_from(input[at + (pzb - 1) * plane_len]);
                    }
                    plane[jy * 4 + jx] = v;
                }
            }
            #[unroll]
            for r in 0..4usize {
                f2_input_axis(&mut plane, r * 4, 1);
            }
            #[unroll]
            for r in 0..4usize {
                f2_input_axis(&mut plane, r, 4);
            }
            #[unroll]
            for i in 0..16usize {
                let a = sz * 16 + i;
                shared[(a * FUSED_CHUNK + sc) * FUSED_TILES + (st + a) % FUSED_TILES] = plane[i];
            }
            // U: thread `unit` stages channel `uo`, input channel `uc` of the chunk, for α =
            // unit / 64 + 4·k.
            let uo = unit % FUSED_CHANNELS;
            let uc = (unit / FUSED_CHANNELS) % FUSED_CHUNK;
            #[unroll]
            for k in 0..16usize {
                let a = unit / (FUSED_CHANNELS * FUSED_CHUNK) + 4 * k;
                let mut w = f32::new(0.0);
                if c0 + uc < in_c {
                    w = f32::cast_from(filter[(a * in_c + c0 + uc) * out_c + ob * FUSED_CHANNELS + uo]);
                }
                shared[chunk_len + (a * FUSED_CHUNK + uc) * FUSED_CHANNELS + (uo + a) % FUSED_CHANNELS] = w;
            }
            sync_cube();
            #[unroll]
            for cc in 0..FUSED_CHUNK {
                let row = (alpha * FUSED_CHUNK + cc) * FUSED_TILES;
                let mut v = Array::<f32>::new(8usize);
                let mut u = Array::<f32>::new(8usize);
                #[unroll]
                for j in 0..8usize {
                    v[j] = shared[row + (half_t * 8 + j + alpha) % FUSED_TILES];
                    u[j] = shared[chunk_len + row + (half_o * 8 + j + alpha) % FUSED_CHANNELS];
                }
                #[unroll]
                for j in 0..8usize {
                    #[unroll]
                    for k in 0..8usize {
                        acc[j * 8 + k] += v[j] * u[k];
                    }
                }
            }
            sync_cube();
            c0 += FUSED_CHUNK;
        }

        // The products, 8 channels at a time: `shared[(α·8 + k)·16 + t]`.
        let plane_out = in_h * in_w;
        #[unroll]
        for round in 0..2usize {
            if half_o == round {
                #[unroll]
                for j in 0..8usize {
                    #[unroll]
                    for k in 0..8usize {
                        shared[(alpha * 8 + k) * FUSED_TILES + half_t * 8 + j] = acc[j * 8 + k];
                    }
                }
            }
            sync_cube();
            if unit < 8 * FUSED_TILES {
                let t = unit % FUSED_TILES;
                let k = unit / FUSED_TILES;
                let mut m = Array::<f32>::new(64usize);
                #[unroll]
                for a in 0..64usize {
                    m[a] = shared[(a * 8 + k) * FUSED_TILES + t];
                }
                f2_output_tile(&mut m);
                let p = p0 + t;
                if p < tiles {
                    let ox = p % tw;
                    let oy = (p / tw) % th;
                    let oz = (p / (tw * th)) % td;
                    let on = p / (tw * th * td);
                    let o = ob * FUSED_CHANNELS + round * 8 + k;
                    let b = f32::cast_from(bias[o]);
                    let base = (on * out_c + o) * in_d * plane_out;
                    #[unroll]
                    for dz in 0..2usize {
                        #[unroll]
                        for dy in 0..2usize {
                            #[unroll]
                            for dx in 0..2usize {
                                let (z, y, x) = (2 * oz + dz, 2 * oy + dy, 2 * ox + dx);
                                if z < in_d && y < in_h && x < in_w {
                                    output[base + z * plane_out + y * in_w + x] =
                                        F::cast_from(m[dz * 16 + dy * 4 + dx] + b);
                                }
                            }
                        }
                    }
                }
            }
            sync_cube();
        }
    }

    /// Bᵀ of F(4, 3) on `d[first + k·step]`, k = 0..6, in place.
    #[cube]
    fn f4_input_axis(d: &mut Array<f32>, first: usize, step: usize) {
        let d0 = d[first];
        let d1 = d[first + step];
        let d2 = d[first + 2 * step];
        let d3 = d[first + 3 * step];
        let d4 = d[first + 4 * step];
        let d5 = d[first + 5 * step];
        d[first] = 4.0f32 * d0 - 5.0f32 * d2 + d4;
        d[first + step] = d3 + d4 - 4.0f32 * (d1 + d2);
        d[first + 2 * step] = d4 - d3 + 4.0f32 * (d1 - d2);
        d[first + 3 * step] = d4 - d2 + 2.0f32 * (d3 - d1);
        d[first + 4 * step] = d4 - d2 + 2.0f32 * (d1 - d3);
        d[first + 5 * step] = 4.0f32 * d1 - 5.0f32 * d3 + d5;
    }

    /// Aᵀ of F(4, 3) on `m[first + k·step]`, k = 0..6, into k = 0..4.
    #[cube]
    fn f4_output_axis(m: &mut Array<f32>, first: usize, step: usize) {
        let m0 = m[first];
        let m1 = m[first + step];
        let m2 = m[first + 2 * step];
        let m3 = m[first + 3 * step];
        let m4 = m[first + 4 * step];
        let m5 = m[first + 5 * step];
        m[first] = m0 + m1 + m2 + m3 + m4;
        m[first + step] = m1 - m2 + 2.0f32 * (m3 - m4);
        m[first + 2 * step] = m1 + m2 + 4.0f32 * (m3 + m4);
        m[first + 3 * step] = m1 - m2 + 8.0f32 * (m3 - m4) + m5;
    }

    /// Bᵀ`[i][j]` of F(4, 3) (both known when the kernel is compiled: loops unrolled).
    #[cube]
    fn f4_bt(i: usize, j: usize) -> f32 {
        let mut c = 0.0f32;
        if i == 0 {
            if j == 0 {
                c = 4.0f32;
            } else if j == 2 {
                c = -5.0f32;
            } else if j == 4 {
                c = 1.0f32;
            }
        } else if i == 5 {
            if j == 1 {
                c = 4.0f32;
            } else if j == 3 {
                c = -5.0f32;
            } else if j == 5 {
                c = 1.0f32;
            }
        } else if j == 4 {
            c = 1.0f32;
        } else if i == 1 {
            if j == 1 || j == 2 {
                c = -4.0f32;
            } else if j == 3 {
                c = 1.0f32;
            }
        } else if i == 2 {
            if j == 1 {
                c = 4.0f32;
            } else if j == 2 {
                c = -4.0f32;
            } else if j == 3 {
                c = -1.0f32;
            }
        } else if j == 2 {
            c = -1.0f32;
        } else if j == 1 || j == 3 {
            // Rows 3 and 4: −2, 2 and 2, −2.
            c = 2.0f32;
            if (i == 3) == (j == 1) {
                c = -2.0f32;
            }
        }
        c
    }

    /// Aᵀ`[i][j]` of F(4, 3).
    #[cube]
    fn f4_at(i: usize, j: usize) -> f32 {
        let mut c = 0.0f32;
        if i == 0 {
            if j < 5 {
                c = 1.0f32;
            }
        } else if j == 1 {
            c = 1.0f32;
        } else if j == 2 {
            c = 1.0f32;
            if i != 2 {
                c = -1.0f32;
            }
        } else if j == 3 || j == 4 {
            c = 2.0f32;
            if i == 2 {
                c = 4.0f32;
            } else if i == 3 {
                c = 8.0f32;
            }
            if j == 4 && i != 2 {
                c = -c;
            }
        } else if j == 5 && i == 3 {
            c = 1.0f32;
        }
        c
    }

    pub(super) fn winograd_input(x: CubeTensor, m: usize, z0: usize, deep: usize) -> CubeTensor {
        let x = into_contiguous(x);
        let shape = super::winograd_input_shape(&x.shape(), &m, &z0, &deep);
        let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
        let address = x.required_address_type().max(output.required_address_type());
        let dtype = burn::backend::cubecl::dtype_to_storage_type(x.dtype);
        let [_, c, tiles] = output.shape().dims::<3>();
        let threads = c * tiles;
        if threads == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new(&client, threads);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, threads, cube_dim);
        let (x, out) = (x.into_tensor_arg(), output.clone().into_tensor_arg());
        winograd_input_kernel::launch(&client, cube_count, cube_dim, address, x, out, z0, m, dtype);
        output
    }

    pub(super) fn winograd_output(
        products: CubeTensor,
        m: usize,
        images: usize,
        depth: usize,
        height: usize,
        width: usize,
    ) -> CubeTensor {
        // Read by its strides: the transposed products need no copy.
        let shape = super::winograd_output_shape(&products.shape(), &m, &images, &depth, &height, &width);
        let output = empty_device_dtype(products.client.clone(), products.device.clone(), shape, products.dtype);
        let address = products.required_address_type().max(output.required_address_type());
        let dtype = burn::backend::cubecl::dtype_to_storage_type(products.dtype);
        let [_, o, tiles] = products.shape().dims::<3>();
        let threads = o * tiles;
        if threads == 0 {
            return output;
        }
        let client = products.client.clone();
        let cube_dim = CubeDim::new(&client, threads);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, threads, cube_dim);
        let strides = products.meta.strides().clone();
        let channels_fastest = strides[1] == 1 && strides[2] != 1;
        let (products, out) = (products.into_tensor_arg(), output.clone().into_tensor_arg());
        winograd_output_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            products,
            out,
            channels_fastest,
            m,
            dtype,
        );
        output
    }

    pub(super) fn conv3d_winograd_fused(x: CubeTensor, filter: CubeTensor, bias: CubeTensor) -> CubeTensor {
        let bias = into_contiguous(bias);
        let Launch { x, weight: filter, output, address, dtype } =
            Launch::new(x, filter, |x, f| super::conv3d_winograd_fused_shape(x, f, &bias.shape()));
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let tiles = n * d.div_ceil(2) * h.div_ceil(2) * w.div_ceil(2);
        let cubes = tiles.div_ceil(FUSED_TILES) * (o / FUSED_CHANNELS);
        if cubes == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new_1d(FUSED_THREADS as u32);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, cubes * FUSED_THREADS, cube_dim);
        let dtypes = [dtype, burn::backend::cubecl::dtype_to_storage_type(filter.dtype)];
        let (x, filter, out) = (x.into_tensor_arg(), filter.into_tensor_arg(), output.clone().into_tensor_arg());
        let bias = bias.into_tensor_arg();
        winograd_fused_kernel::launch(&client, cube_count, cube_dim, address, x, filter, bias, out, dtypes);
        output
    }

    pub(super) fn conv3d_k3(x: CubeTensor, weight: CubeTensor, stride: usize, channels: usize) -> CubeTensor {
        // The kernel indexes both as contiguous row-major tensors.
        let Launch { x, weight, output, address, dtype } =
            Launch::new(x, weight, |x, w| super::conv3d_k3_shape(x, w, &stride));
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let threads = n * d * h * w.div_ceil(VOXELS) * (o / channels);
        if threads == 0 {
            return output;
        }
        let client = x.client.clone();
        let cube_dim = CubeDim::new(&client, threads);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, threads, cube_dim);
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
    use burn::tensor::{DeviceKind, FloatDType};

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    /// Largest |ours − burn's in f32 on the same values| / (1 + |burn's|) over `cases` (input,
    /// output channels, kernel side, stride; padding half the side), with a bias on every other
    /// case. The reference sums the same (rounded) values in f32.
    fn worst_against_burn(
        device: &Device,
        dtype: FloatDType,
        cases: &[([usize; 5], usize, usize, usize)],
        ours: impl Fn(Tensor<5>, Tensor<5>, Option<Tensor<1>>, &Options<3>) -> Tensor<5>,
    ) -> f32 {
        let mut draw = crate::testing::Values::new(4);
        let mut worst = 0.0f32;
        for (i, &(shape, out, k, stride)) in cases.iter().enumerate() {
            let x = draw.signed(shape, device).cast(dtype);
            let weight = draw.signed([out, shape[1], k, k, k], device).cast(dtype);
            let bias = (i % 2 == 0).then(|| draw.signed([out], device).cast(dtype));
            let options = Options::new([stride; 3], [k / 2; 3], [1; 3], 1);
            let f32 = |t: Tensor<5>| t.cast(FloatDType::F32);
            let reference = burn::tensor::module::conv3d(
                f32(x.clone()),
                f32(weight.clone()),
                bias.clone().map(|b| b.cast(FloatDType::F32)),
                options.clone(),
            );
            let ours = ours(x, weight, bias, &options);
            assert_eq!(ours.dims(), reference.dims(), "{shape:?} → {out}, stride {stride}");
            let (ours, reference) = (values(ours), values(reference));
            worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(worst, f32::max);
        }
        worst
    }

    /// [`conv3d_k3`] over the cases nnU-Net meets: strides 1 and 2, widths that are not a
    /// multiple of the voxel run, two images, two channel blocks, with and without bias.
    fn worst_difference(device: &Device, dtype: FloatDType, channels: usize) -> f32 {
        let cases = [
            ([2, 3, 5, 6, 7], 32, 3, 1),
            ([1, 5, 7, 6, 9], 16, 3, 2),
            ([1, 8, 4, 4, 4], 16, 3, 1),
            ([1, 2, 6, 5, 10], 48, 3, 2),
        ];
        worst_against_burn(device, dtype, &cases, |x, weight, bias, options| {
            assert!(conv3d_k3_fits(weight.dims(), options, channels));
            conv3d_k3(x, weight, bias, options.stride[0], channels)
        })
    }

    /// [`conv3d_k3_tiled`]: tiles cut by the image's edge on x and y, several tiles and planes,
    /// one input channel, channel counts that are not a multiple of the staged chunk, strides 1
    /// and 2, two images, with and without bias.
    fn worst_tiled_difference(device: &Device, dtype: FloatDType, tiling: usize) -> f32 {
        let block = TILINGS[tiling].block();
        let cases = [
            ([2, 3, 3, 6, 7], block, 3, 1),
            ([1, 5, 4, 19, 37], 2 * block, 3, 1),
            ([1, 1, 2, 17, 33], block, 3, 1),
            ([1, 3, 5, 35, 67], block, 3, 2),
            ([2, 2, 4, 6, 8], block, 3, 2),
        ];
        worst_against_burn(device, dtype, &cases, |x, weight, bias, options| {
            assert!(conv3d_k3_tiled_fits(weight.dims(), options, tiling));
            conv3d_k3_tiled(x, weight, bias, options.stride[0], tiling)
        })
    }

    /// [`conv3d_k1`]: the segmentation head's two classes, blocks of 8 and 4 channels a thread,
    /// one and two images, with and without bias.
    fn worst_pointwise_difference(device: &Device, dtype: FloatDType) -> f32 {
        let cases = [([1, 32, 3, 5, 7], 2, 1, 1), ([2, 5, 4, 3, 4], 24, 1, 1), ([1, 3, 2, 3, 4], 20, 1, 1)];
        worst_against_burn(device, dtype, &cases, |x, weight, bias, options| {
            assert!(conv3d_k1_fits(weight.dims(), options));
            conv3d_k1(x, weight, bias, options)
        })
    }

    /// [`conv3d_winograd`] by `transform`, either way round: grids that are not whole tiles
    /// (sizes that are not multiples of m on every axis), one and two images, one input
    /// channel, several slabs (a budget of one tile deep) and one, with and without bias.
    fn worst_winograd_difference(
        device: &Device,
        dtype: FloatDType,
        transform: &crate::winograd::Transform,
        transposed: bool,
        budgets: &[usize],
    ) -> f32 {
        let cases = [([2, 3, 5, 6, 7], 8, 3, 1), ([1, 1, 9, 10, 5], 5, 3, 1), ([1, 16, 6, 6, 6], 16, 3, 1)];
        let mut worst = 0.0f32;
        for &budget in budgets {
            worst = worst.max(worst_against_burn(device, dtype, &cases, |x, weight, bias, options| {
                assert!(winograd_fits(x.dims(), weight.dims(), options));
                conv3d_winograd(x, weight, bias, options, budget, transform, transposed)
            }));
        }
        worst
    }

    /// On flex the transforms are host loops that follow the kernels' arithmetic. F(2, 3) to
    /// f32's rounding, 2·10⁻⁵ of 1 + |value| (random values: 24 runs here at most 7.7·10⁻⁶,
    /// once 1.006·10⁻⁵ in CI against the 10⁻⁵ this was); F(4, 3) to TF32's accuracy.
    #[test]
    fn on_flex_winograd_is_burns_convolution() {
        use crate::winograd::{F2, F4};
        for (transform, tolerance) in [(F2, 2e-5), (F4, 1e-3)] {
            for transposed in [false, true] {
                let worst =
                    worst_winograd_difference(&Device::flex(), FloatDType::F32, &transform, transposed, &[1, 1 << 30]);
                assert!(worst < tolerance, "F({}, 3), transposed {transposed}: {worst:e}", transform.m);
            }
        }
    }

    /// In f32, F(2, 3) gives burn's sums to rounding (5·10⁻⁶ of 1 + |value| here) and F(4, 3)
    /// to TF32's accuracy, 10⁻³ (8·10⁻⁵ to 2.7·10⁻⁴ seen on lavapipe): its transforms multiply
    /// by up to 125 going in and 512 coming out, so it is tuned only where TF32 is allowed
    /// (`LIGHTBOX_AI_CONV=tuned-tf32`). In f16, F(2, 3) loses more than a direct kernel: transformed
    /// inputs and products are rounded to f16, then 27 of them summed with cancellation (on
    /// lavapipe, whose f16 matrix product also sums in f16, 1.5 % of 1 + |value|), and F(4, 3)
    /// is useless (100 %), so it is timed in f32 only. The tuner's check decides per GPU
    /// whether F(2, 3) in f16 is within what nnU-Net's autocast allows (4·10⁻³ of the largest
    /// value). F(4, 3)'s slabs are F(2, 3)'s code: one budget.
    #[test]
    fn on_a_gpu_the_winograd_kernels_compute_burns_sums() {
        use crate::winograd::{F2, F4};
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        for transposed in [false, true] {
            let two = |dtype| worst_winograd_difference(&device, dtype, &F2, transposed, &[1, 1 << 30]);
            let (f32_worst, f16_worst) = (two(FloatDType::F32), two(FloatDType::F16));
            let f4_worst = worst_winograd_difference(&device, FloatDType::F32, &F4, transposed, &[1 << 30]);
            eprintln!(
                "Winograd, transposed {transposed}: worst differences from burn: F(2, 3) f32 {f32_worst:e}, f16 {f16_worst:e}; F(4, 3) f32 {f4_worst:e}"
            );
            assert!(f32_worst < 1e-5, "F(2, 3), f32, transposed {transposed}: {f32_worst}");
            assert!(f16_worst < 3e-2, "F(2, 3), f16, transposed {transposed}: {f16_worst}");
            assert!(f4_worst < 1e-3, "F(4, 3), f32, transposed {transposed}: {f4_worst}");
        }
    }

    /// [`conv3d_winograd_fused`]: grids that are not whole tiles, tile counts that are not a
    /// multiple of a workgroup's, one and two images, one input channel and counts that are not
    /// a multiple of the staged chunk, one and two channel blocks, with and without bias.
    fn worst_fused_difference(device: &Device, dtype: FloatDType) -> f32 {
        let cases = [
            ([2, 3, 5, 6, 7], 16, 3, 1),
            ([1, 1, 9, 10, 5], 32, 3, 1),
            ([1, 16, 6, 6, 6], 16, 3, 1),
            ([1, 6, 3, 17, 9], 48, 3, 1),
        ];
        worst_against_burn(device, dtype, &cases, |x, weight, bias, options| {
            assert!(winograd_fused_fits(x.dims(), weight.dims(), options));
            conv3d_winograd_fused(x, weight, bias, options)
        })
    }

    #[test]
    fn fused_fits_only_what_it_computes() {
        let options = |stride, padding| Options::new([stride; 3], [padding; 3], [1; 3], 1);
        assert!(winograd_fused_fits([1, 3, 8, 8, 8], [32, 3, 3, 3, 3], &options(1, 1)));
        assert!(!winograd_fused_fits([1, 3, 8, 8, 8], [24, 3, 3, 3, 3], &options(1, 1)), "24 channels");
        assert!(!winograd_fused_fits([1, 3, 8, 8, 8], [32, 3, 3, 3, 3], &options(2, 1)), "strided");
        assert!(!winograd_fused_fits([1, 3, 8, 8, 8], [32, 3, 3, 3, 3], &options(1, 0)), "unpadded");
    }

    /// On flex, the three steps of [`conv3d_winograd`] (host loops and a matrix product); a
    /// layer it does not fit is [`crate::winograd::conv3d_winograd`].
    #[test]
    fn on_flex_fused_winograd_is_burns_convolution() {
        let mut draw = crate::testing::Values::new(1);
        let worst = worst_fused_difference(&Device::flex(), FloatDType::F32);
        assert!(worst < 1e-5, "{worst:e}");
        let device = Device::flex();
        let x = draw.signed([1, 2, 4, 5, 6], &device);
        let weight = draw.signed([8, 2, 3, 3, 3], &device);
        let options = Options::new([1; 3], [1; 3], [1; 3], 1);
        let reference = burn::tensor::module::conv3d(x.clone(), weight.clone(), None, options.clone());
        let ours = conv3d_winograd_fused(x, weight, None, &options);
        let worst = values(ours).iter().zip(values(reference)).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "8 output channels, not the kernel's: {worst:e}");
    }

    /// In f32, F(2, 3) in one kernel gives burn's sums to rounding (5.9·10⁻⁶ of 1 + |value| on
    /// lavapipe); in f16 within the output's rounding to f16 (4.2·10⁻⁴; its transformed weight,
    /// sums and bias are in f32; with the weight rounded to f16 it was 5.9·10⁻³), unlike F(2, 3)
    /// in f16 in three steps (1.5 %).
    #[test]
    fn on_a_gpu_the_fused_winograd_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let (f32_worst, f16_worst) =
            (worst_fused_difference(&device, FloatDType::F32), worst_fused_difference(&device, FloatDType::F16));
        eprintln!("Winograd F(2, 3) in one kernel: worst differences from burn: f32 {f32_worst:e}, f16 {f16_worst:e}");
        assert!(f32_worst < 1e-5, "f32: {f32_worst:e}");
        assert!(f16_worst < 2e-3, "f16: {f16_worst:e}");
    }

    #[test]
    fn pointwise_fits_only_what_it_computes() {
        let options = |stride, padding| Options::new([stride; 3], [padding; 3], [1; 3], 1);
        assert!(conv3d_k1_fits([2, 32, 1, 1, 1], &options(1, 0)));
        assert!(!conv3d_k1_fits([2, 32, 1, 1, 1], &options(2, 0)), "strided");
        assert!(!conv3d_k1_fits([2, 32, 1, 1, 1], &options(1, 1)), "padded");
        assert!(!conv3d_k1_fits([2, 32, 3, 3, 3], &options(1, 1)), "3×3×3");
        assert_eq!([2, 16, 24, 20, 320, 17].map(pointwise_channels), [2, 16, 8, 4, 16, 1]);
    }

    #[test]
    fn on_flex_pointwise_is_burns_convolution() {
        assert!(worst_pointwise_difference(&Device::flex(), FloatDType::F32) < 1e-5);
    }

    #[test]
    fn on_a_gpu_the_pointwise_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let f32_worst = worst_pointwise_difference(&device, FloatDType::F32);
        assert!(f32_worst < 1e-5, "f32: {f32_worst}");
        let f16_worst = worst_pointwise_difference(&device, FloatDType::F16);
        assert!(f16_worst < 2e-3, "f16: {f16_worst}");
        eprintln!("1x1x1, worst differences from burn: f32 {f32_worst:e}, f16 {f16_worst:e}");
    }

    #[test]
    fn tiled_fits_only_what_it_computes() {
        let options = |stride: [usize; 3]| Options::new(stride, [1; 3], [1; 3], 1);
        assert!(conv3d_k3_tiled_fits([32, 64, 3, 3, 3], &options([1; 3]), 0));
        assert!(conv3d_k3_tiled_fits([64, 1, 3, 3, 3], &options([1; 3]), 1));
        assert!(!conv3d_k3_tiled_fits([32, 64, 3, 3, 3], &options([1; 3]), 1), "a block of 64 channels");
        assert!(conv3d_k3_tiled_fits([64, 32, 3, 3, 3], &options([2; 3]), 0));
        assert!(!conv3d_k3_tiled_fits([64, 32, 3, 3, 3], &options([1, 2, 2]), 0), "anisotropic stride");
        assert!(!conv3d_k3_tiled_fits([32, 32, 3, 3, 3], &options([1; 3]), TILINGS.len()), "no such tiling");
        for (t, stride) in TILINGS.iter().flat_map(|t| [(t, 1), (t, 2)]) {
            let options = options([stride; 3]);
            assert!(conv3d_k3_tiled_fits([t.block(), 8, 3, 3, 3], &options, 0), "{t:?} at stride {stride}");
        }
        let big = Tiling { rows: 8, channels: 8, row_groups: 4, channel_groups: 4, chunk: 2 };
        assert!(big.workgroup_bytes(2, 4) > TILED_WORKGROUP_BYTES, "a tiling past 32 KiB would be refused");
    }

    #[test]
    fn on_flex_tiled_is_burns_convolution() {
        assert!(worst_tiled_difference(&Device::flex(), FloatDType::F32, 0) < 1e-5);
    }

    /// The tiled kernel on whatever GPU adapter opens (lavapipe where there is none).
    #[test]
    fn on_a_gpu_the_tiled_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        for tiling in 0..TILINGS.len() {
            let f32_worst = worst_tiled_difference(&device, FloatDType::F32, tiling);
            assert!(f32_worst < 1e-5, "f32, tiling {tiling}: {f32_worst}");
            let f16_worst = worst_tiled_difference(&device, FloatDType::F16, tiling);
            assert!(f16_worst < 2e-3, "f16, tiling {tiling}: {f16_worst}");
            eprintln!("tiling {tiling}, worst differences from burn: f32 {f32_worst:e}, f16 {f16_worst:e}");
        }
    }

    /// On a GPU the tuner times Lightbox's kernels and Winograd's algorithms (F(4, 3) only where
    /// TF32's accuracy is allowed, and in f32), and for a deep layer the split products, beside
    /// burn's ways: each passes its check against burn's result (none is left out), and
    /// whichever it keeps computes burn's sums.
    #[test]
    fn on_a_gpu_the_tuner_times_lightboxs_kernels() {
        use crate::ops::ConvWay;
        let mut draw = crate::testing::Values::new(2);
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let k3 = [ConvWay::Direct, ConvWay::DirectWide, ConvWay::Tiled, ConvWay::TiledWide, ConvWay::TiledShort];
        let winograd = [ConvWay::WinogradF2, ConvWay::WinogradF2Transposed, ConvWay::WinogradF2Fused];
        let f4 = [ConvWay::WinogradF4, ConvWay::WinogradF4Transposed];
        let all_winograd = [&winograd[..], &f4[..]].concat();
        let full = [&k3[..], &winograd[..]].concat();
        let tf32 = [&full[..], &f4[..]].concat();
        let deep = [&k3[..], &[ConvWay::GemmSplit]].concat();
        // In half precision the ways that sum f16 values in f32 pass the check too, Winograd's
        // F(2, 3) computed in f32 (in three steps and in one kernel) among them.
        let half =
            [&k3[..], &[ConvWay::Gemm, ConvWay::GemmTransposed, ConvWay::WinogradF2F32, ConvWay::WinogradF2Fused]]
                .concat();
        let tiled = [ConvWay::Tiled, ConvWay::TiledWide, ConvWay::TiledShort];
        // The matrix units' kernel only where the GPU has them (never on lavapipe).
        // (In f16: its one-product f32 way does not apply there.)
        let units = [ConvWay::MatrixUnits, ConvWay::MatrixUnitsFour, ConvWay::MatrixUnitsTf32];
        let (with_units, without_units): (&[ConvWay], &[ConvWay]) =
            if mma::available(&device) { (&units[..2], &units[2..]) } else { (&[], &units) };
        // (input, output channels, kernel side, dtype, TF32 allowed, ways timed, ways not timed)
        for (shape, out, k, dtype, allowed, expected, absent) in [
            (
                [1, 4, 4, 32, 34],
                64,
                3,
                FloatDType::F32,
                false,
                &full[..],
                &[&f4[..], &[ConvWay::WinogradF2F32]].concat()[..],
            ),
            ([1, 4, 4, 32, 36], 64, 3, FloatDType::F32, true, &tf32[..], &[][..]),
            // Deep layers of few voxels: products split by channel, no Winograd.
            ([1, 128, 2, 3, 16], 128, 3, FloatDType::F32, true, &deep[..], &all_winograd[..]),
            // A layer under 16 voxels wide: no tiles (most of their threads would idle).
            ([1, 64, 2, 3, 5], 64, 3, FloatDType::F32, false, &k3[..2], &tiled[..]),
            ([1, 32, 3, 5, 7], 2, 1, FloatDType::F32, false, &[ConvWay::Pointwise][..], &k3[..]),
            (
                [1, 8, 4, 32, 33],
                64,
                3,
                FloatDType::F16,
                true,
                &[&half[..], with_units].concat()[..],
                &[&f4[..], without_units].concat()[..],
            ),
            ([1, 16, 3, 8, 32], 32, 3, FloatDType::F16, false, with_units, without_units),
        ] {
            let x = draw.signed(shape, &device).cast(dtype);
            let weight = draw.signed([out, shape[1], k, k, k], &device).cast(dtype);
            let options = Options::new([1; 3], [k / 2; 3], [1; 3], 1);
            let f32 = |t: Tensor<5>| t.cast(FloatDType::F32);
            let reference =
                values(burn::tensor::module::conv3d(f32(x.clone()), f32(weight.clone()), None, options.clone()));
            let ours = values(crate::ops::conv3d_tuned(x, weight, None, &options, 1 << 20, allowed));
            // Sums of C·27 terms in another order (108 to 3 456 of them) in f32 (to TF32's
            // accuracy where it is allowed); in f16, within the tuner's check (relative to the
            // largest value).
            let worst = if dtype == FloatDType::F32 {
                let tolerance = if allowed { 1e-3 } else { 1e-4 };
                ours.iter().zip(&reference).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0, f32::max)
                    / tolerance
            } else {
                let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / (4e-3 * scale)
            };
            assert!(worst < 1.0, "{shape:?}: {worst} of the tolerance");
            let layer = crate::ops::tuned_layers()
                .into_iter()
                .find(|l| l.shape.starts_with(&format!("{shape:?}")) && l.shape.contains("TF32") == allowed);
            let timed: Vec<ConvWay> = layer.iter().flat_map(|l| l.ms.iter().map(|m| m.0)).collect();
            assert!(expected.iter().all(|w| timed.contains(w)), "{layer:?}");
            assert!(!absent.iter().any(|w| timed.contains(w)), "{layer:?}");
        }
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
        let mut draw = crate::testing::Values::new(3);
        for device in [Device::flex(), Device::wgpu(DeviceKind::DefaultDevice)] {
            let x = draw.signed([1, 3, 5, 4, 6], &device);
            let weight = draw.signed([12, 3, 3, 3, 3], &device);
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
