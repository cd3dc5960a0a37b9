//! A 3×3×3 convolution (padding 1, stride 1 or 2) in f16 on a GPU's matrix units (NVIDIA's
//! tensor cores, reached through Vulkan's cooperative matrices and CubeCL's `cmma`), sums in
//! f32: an implicit GEMM with no im2col columns anywhere.
//!
//! A workgroup computes [`TILE_O`] output channels of a block of output voxels ([`Tile`]):
//! runs of 16 voxels along x, `runs` a row, `rows` rows, `planes` planes; each warp two runs by
//! two 16-channel fragments (four f32 accumulators), or at stride 1 four runs (eight: each
//! weight fragment then serves four products, not two; the tuner times both). For each [`CHUNK`] of 16 input channels it
//! stages the block's input with its border once in workgroup memory, **channels innermost**.
//! Then, for each of the 27 taps, the A operand of a run (16 voxels × 16 channels) is a plain
//! row-major window of that memory, `stride · 16` values a row, starting at the tap's offset (a
//! whole number of rows, so every load stays 32-byte aligned as cooperative matrices require),
//! and the B operand (16 channels × 16 output channels) a window of the weight `[C·27, O]` read
//! straight from device memory (the same few KiB for every workgroup: cache hits). So every
//! input value is read from device memory once per chunk and workgroup, and fed to the matrix
//! units from workgroup memory for every tap that reaches it. After the last chunk the
//! accumulators are staged as f16 where the input was, and written out with the bias.
//!
//! **In f32** the same kernel computes each product as three of f16 values: every value `v`,
//! scaled so that its tensor's largest |value| is 2¹³ (nothing overflows f16, little reaches
//! its subnormals), is split into `hi = f16(v)` and
//! `lo = f16(v − hi)`, which together hold 22 of its 24 bits; then `x·w ≈ xhi·whi + xhi·wlo +
//! xlo·whi` (the term left out, `xlo·wlo`, is 2⁻²² of the product), summed in f32 on the matrix
//! units, and the sums scaled back. The weights are split once a call; the input is staged twice
//! a chunk, its `hi` halves then its `lo` halves, in the same workgroup memory. The accumulators
//! go out through a small f32 scratch a warp, not the f16 staging. That is about as accurate as
//! f32 sums of f32 products (10⁻⁶ of the largest value, where TF32 is 10⁻³), for three times the
//! f16 products: NVIDIA's tensor cores do f16 products at many times the rate of f32 ones. With
//! one product, of the `hi` halves alone, it is as accurate as TF32 ([`conv3d_k3_mma_tf32`]).
//!
//! Where a GPU offers no cooperative matrices (lavapipe, WGSL), the same kernel runs emulated:
//! each fragment operation done by the warp's 32 threads from the same memory, at the same
//! addresses and strides. That is what the tests check on the CPU: the staging, the tiles'
//! arithmetic and every fragment's address. What they cannot check is a driver's matrix
//! instructions themselves, which the convolution tuner ([`crate::ops::conv3d_tuned`]) compares
//! with burn's convolution on the GPU before it ever keeps this way.

use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, ops::ConvOptions, tensor::FloatTensor,
};
use burn::prelude::{Device, Tensor};
use burn::tensor::{DType, FloatDType, Shape};
use burn_cubecl::CubeBackend;

/// Output channels a workgroup computes: two fragments of 16.
pub const TILE_O: usize = 32;
/// Input channels staged at a time: a fragment's k.
pub const CHUNK: usize = 16;
/// Voxels of a run along x: a fragment's m.
pub const RUN: usize = 16;

/// The block of output voxels a workgroup computes: `runs` runs of [`RUN`] voxels along x a
/// row, `rows` rows, `planes` planes, at `stride`; one warp per `per_warp` runs (2 or 4, one
/// of [`PER_WARP`]: each weight fragment a warp reads serves that many runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub stride: usize,
    pub runs: usize,
    pub rows: usize,
    pub planes: usize,
    pub per_warp: usize,
}

/// Runs a warp may compute: two (four accumulators, the GPU's registers for more warps), or
/// four (eight accumulators: each weight fragment read from device memory serves four runs,
/// a quarter fewer operand reads per product; stride 1 only).
pub const PER_WARP: [usize; 2] = [2, 4];

impl Tile {
    pub const fn width(&self) -> usize {
        RUN * self.runs
    }

    pub const fn voxels(&self) -> usize {
        self.width() * self.rows * self.planes
    }

    pub const fn threads(&self) -> usize {
        32 * self.runs * self.rows * self.planes / self.per_warp
    }

    /// The input the block reads, `[z][y][x]`: its voxels `stride` apart and the kernel's reach.
    pub const fn halo(&self) -> [usize; 3] {
        let s = self.stride;
        [(self.planes - 1) * s + 3, (self.rows - 1) * s + 3, (self.width() - 1) * s + 3]
    }

    /// Values of workgroup memory (f16): the halo, a chunk's channels innermost.
    pub const fn halo_len(&self) -> usize {
        let [z, y, x] = self.halo();
        z * y * x * CHUNK
    }

    /// Output values staged in the same memory after the last chunk.
    pub const fn staged_len(&self) -> usize {
        TILE_O * self.voxels()
    }

    pub const fn warps(&self) -> usize {
        self.threads() / 32
    }

    /// Whether the block computes f32 layers: four runs a warp at stride 1, two at stride 2
    /// (the blocks whose f32 scratch fits beside the halo).
    pub const fn splits(&self) -> bool {
        (self.stride == 1 && self.per_warp == PER_WARP[1]) || (self.stride == 2 && self.per_warp == PER_WARP[0])
    }

    /// Workgroup memory in bytes: the f16 halo, and for an f32 layer ([`Self::splits`]) one
    /// f32 fragment (16 × 16) a warp, through which its sums go out.
    pub const fn bytes(&self, split: bool) -> usize {
        self.halo_len() * 2 + if split { self.warps() * 256 * 4 } else { 0 }
    }

    const fn holds(&self) -> bool {
        (self.per_warp == PER_WARP[0] || self.per_warp == PER_WARP[1])
            && (self.runs * self.rows * self.planes).is_multiple_of(self.per_warp)
            // One or two voxels of the block a thread when it is written out.
            && self.voxels().is_multiple_of(self.threads())
            && self.staged_len() <= self.halo_len()
            // Within lavapipe's 32 KiB, so the CPU tests run the kernels an NVIDIA GPU runs.
            && self.bytes(self.splits()) <= super::TILED_WORKGROUP_BYTES
    }
}

/// The blocks, two runs a warp: stride 1 on grids wider than 16 (32 × 4 × 2 voxels: 25.5 KiB,
/// 8 warps), on narrower ones (16 × 4 × 4, 20.3 KiB, 8 warps: nnU-Net's 16³ and 8³ stages),
/// and stride 2 (16 × 4 × 1, whose input is 33 × 9 × 3: 27.8 KiB, 2 warps); then the two
/// stride-1 blocks with four runs a warp (4 warps each).
pub const TILES: [Tile; 5] = [
    Tile { stride: 1, runs: 2, rows: 4, planes: 2, per_warp: 2 },
    Tile { stride: 1, runs: 1, rows: 4, planes: 4, per_warp: 2 },
    Tile { stride: 2, runs: 1, rows: 4, planes: 1, per_warp: 2 },
    Tile { stride: 1, runs: 2, rows: 4, planes: 2, per_warp: 4 },
    Tile { stride: 1, runs: 1, rows: 4, planes: 4, per_warp: 4 },
];
const _: () = {
    let mut i = 0;
    while i < TILES.len() {
        assert!(TILES[i].holds());
        i += 1;
    }
    assert!(CHUNK.is_multiple_of(2));
};

/// The block for an output `width` voxels wide at `stride`, `per_warp` runs a warp (four at
/// stride 1 only; in f32 four at stride 1 and two at stride 2: [`conv3d_k3_mma_fits`]).
pub fn tile_for(stride: usize, width: usize, per_warp: usize) -> Tile {
    let four = per_warp == PER_WARP[1];
    match (stride, width > RUN) {
        (2, _) => TILES[2],
        (_, true) => TILES[if four { 3 } else { 0 }],
        _ => TILES[if four { 4 } else { 1 }],
    }
}

/// [`MmaKernels::conv3d_k3_mma`]'s `mode`: on matrix units where the GPU offers them, burn's
/// convolution elsewhere.
pub const UNITS: usize = 0;
/// On matrix units where the GPU offers them, the kernel emulated elsewhere (the tests).
pub const EMULATED: usize = 1;
/// On matrix units even where the driver does not offer them (the tests: such a GPU refuses
/// the kernel, which must come back as an error, not a crash).
pub const FORCED: usize = 2;

#[backend_extension(Cube, Flex, Fusion)]
pub trait MmaKernels: Backend {
    /// `x` `[N, C, D, H, W]` and `weight` `[C'·27, O]` (the `[O, C, 3, 3, 3]` weight padded
    /// with zeros to C' input channels, C rounded up to a multiple of [`CHUNK`], its output
    /// channels last, O a multiple of [`TILE_O`]), both in f16 or both in f32, `bias` `[O]` in
    /// f32: the convolution, padding 1, `stride` 1 or 2, plus the bias → `[N, O, D', H', W']` in
    /// `x`'s dtype, `per_warp` runs a warp (one of [`PER_WARP`]; four at stride 1 only, and in
    /// f32 [`Tile::splits`]), as `mode` says ([`UNITS`], [`EMULATED`] or [`FORCED`]); in f32
    /// with `tf32` one product of the `hi` halves (TF32's accuracy) instead of three. Elsewhere
    /// than on a GPU, burn's convolution.
    #[fusion(dtype = x, shape = mma_shape(x, weight, stride))]
    fn conv3d_k3_mma(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        per_warp: usize,
        mode: usize,
        tf32: bool,
    ) -> FloatTensor<Self>;
}

fn mma_shape(x: &Shape, weight: &Shape, stride: &usize) -> Shape {
    let out = |len: usize| (len - 1) / *stride + 1;
    Shape::new([x[0], weight[1], out(x[2]), out(x[3]), out(x[4])])
}

/// Whether [`conv3d_k3_mma`] computes this convolution by its kernel: f16 or f32, 3×3×3,
/// padding 1, the same stride 1 or 2 on every axis, no dilation or groups, output channels a
/// multiple of [`TILE_O`] (every 3³ layer of PlainConvUNet 32…320), `per_warp` runs a warp
/// (one of [`PER_WARP`]; in f16 four at stride 1 only, in f32 four at stride 1 and two at
/// stride 2: [`Tile::splits`]). Input channels that are not a multiple of [`CHUNK`] are padded
/// with zero weights (the first layer's one channel computes as 16).
pub fn conv3d_k3_mma_fits(
    input: [usize; 5],
    weight: [usize; 5],
    options: &ConvOptions<3>,
    dtype: DType,
    per_warp: usize,
) -> bool {
    let [o, c, kd, kh, kw] = weight;
    let (one, two) = (options.stride == [1; 3], options.stride == [2; 3]);
    let stride_ok = match (dtype, per_warp) {
        (DType::F16, 2) => one || two,
        (DType::F16, 4) | (DType::F32, 4) => one,
        (DType::F32, 2) => two,
        _ => false,
    };
    stride_ok
        && input[1] == c
        && c > 0
        && o > 0
        && o.is_multiple_of(TILE_O)
        && [kd, kh, kw] == [3; 3]
        && options.padding == [(1, 1); 3]
        && options.dilation == [1; 3]
        && options.groups == 1
}

/// Whether `device` runs the kernel on matrix units: a GPU whose driver offers 16×16×16
/// cooperative matrices of f16 with f32 sums, on 32-thread warps.
pub fn available(device: &Device) -> bool {
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube) => gpu::supported(&cube.client()),
        _ => false,
    }
}

/// What [`available`] found, in words, for a device run's log: the matrix units the driver
/// offers and its warp widths, and whether the kernel can use them.
pub fn matrix_units(device: &Device) -> String {
    match device.as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube) => gpu::describe(&cube.client()),
        _ => "not a CubeCL device: no matrix units".to_owned(),
    }
}

/// The convolution by [`MmaKernels::conv3d_k3_mma`], `per_warp` runs a warp, where
/// [`conv3d_k3_mma_fits`] and the device has matrix units ([`available`]); burn's convolution
/// elsewhere.
pub fn conv3d_k3_mma(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    per_warp: usize,
) -> Tensor<5> {
    run(x, weight, bias, options, per_warp, UNITS, false)
}

/// The same for an f32 layer to TF32's accuracy: each product one of the `hi` halves (11 of the
/// values' 24 bits, as TF32 keeps, summed in f32), a third of the products and the input staged
/// once; four runs a warp at stride 1, two at stride 2. burn's convolution where it does not
/// apply.
pub fn conv3d_k3_mma_tf32(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
) -> Tensor<5> {
    match tf32_runs_a_warp(x.dims(), weight.dims(), options, weight.dtype()) {
        Some(per_warp) => run(x, weight, bias, options, per_warp, UNITS, true),
        None => burn::tensor::module::conv3d(x, weight, bias, options.clone()),
    }
}

/// The runs a warp of [`conv3d_k3_mma_tf32`]'s block for this f32 layer, if it computes it.
pub fn tf32_runs_a_warp(
    input: [usize; 5],
    weight: [usize; 5],
    options: &ConvOptions<3>,
    dtype: DType,
) -> Option<usize> {
    PER_WARP.into_iter().find(|&p| dtype == DType::F32 && conv3d_k3_mma_fits(input, weight, options, dtype, p))
}

/// The same, the kernel emulated on a GPU without matrix units (tests).
#[cfg(test)]
pub(crate) fn conv3d_k3_mma_emulated(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    per_warp: usize,
) -> Tensor<5> {
    run(x, weight, bias, options, per_warp, EMULATED, false)
}

/// The largest |value| of a tensor scaled to this before it is split into f16 halves: far from
/// f16's largest (65 504), and 2⁻²⁷ of it at f16's smallest normal value.
const SPLIT_TOP: f32 = 8192.0;

fn run(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    per_warp: usize,
    mode: usize,
    tf32: bool,
) -> Tensor<5> {
    let dtype = weight.dtype();
    let x = x.cast(FloatDType::from(dtype));
    let stride = options.stride[0];
    let fits = conv3d_k3_mma_fits(x.dims(), weight.dims(), options, dtype, per_warp);
    let width = x.dims()[4].saturating_sub(1) / stride + 1;
    let split = dtype == DType::F32;
    if !fits || !kernel_runs(&x.device(), tile_for(stride, width, per_warp), split, mode) {
        let bias = bias.map(|b| b.cast(FloatDType::from(dtype)));
        return burn::tensor::module::conv3d(x, weight, bias, options.clone());
    }
    let [o, c, _, _, _] = weight.dims();
    let f32 = FloatDType::F32;
    let device = weight.device();
    let bias = bias.map_or_else(|| Tensor::<1>::zeros([o], &device).cast(f32), |b| b.cast(f32));
    // Whole chunks of input channels: the kernel reads every weight row of a chunk.
    let padded = c.next_multiple_of(CHUNK);
    let weight = if padded > c {
        let zeros = Tensor::<5>::zeros([o, padded - c, 3, 3, 3], &device).cast(FloatDType::from(dtype));
        Tensor::cat(vec![weight, zeros], 1)
    } else {
        weight
    };
    let weight = weight.reshape([o, padded * 27]).swap_dims(0, 1);
    Tensor::from_dispatch(<Dispatch as MmaKernels>::conv3d_k3_mma(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        stride,
        per_warp,
        mode,
        tf32,
    ))
}

/// Whether `device` computes a convolution by [`MmaKernels::conv3d_k3_mma`]'s kernel in
/// `mode` with the block `tile` (`split`: of f32 values): a GPU whose workgroups hold the block,
/// with matrix units, or in [`EMULATED`] or [`FORCED`] mode any.
fn kernel_runs(device: &Device, tile: Tile, split: bool, mode: usize) -> bool {
    let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() else {
        return false;
    };
    let client = cube.client();
    let hardware = &client.properties().hardware;
    let holds = (!split || tile.splits())
        && tile.bytes(split) <= hardware.max_shared_memory_size
        && tile.threads() <= hardware.max_units_per_cube as usize;
    holds && (mode != UNITS || gpu::supported(&client))
}

/// burn's convolution of `x` by a `[C'·27, O]` weight (its first C·27 rows; padding 1) plus
/// `bias`.
fn by_burn<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
    stride: usize,
) -> FloatTensor<B> {
    let dtype = x.dtype().into();
    let rows = 27 * x.shape()[1];
    let weight = B::float_slice(weight, &[burn::tensor::Slice::from(0..rows), burn::tensor::Slice::from(..)]);
    let y = super::burns_conv3d_k3::<B>(x, weight, stride);
    let o = y.shape()[1];
    let bias = B::float_reshape(B::float_cast(bias, dtype), Shape::new([1, o, 1, 1, 1]));
    let shape = y.shape();
    B::float_add(y, B::float_expand(bias, shape))
}

impl MmaKernels for Flex {
    fn conv3d_k3_mma(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        _per_warp: usize,
        _mode: usize,
        _tf32: bool,
    ) -> FloatTensor<Self> {
        by_burn::<Self>(x, weight, bias, stride)
    }
}

impl MmaKernels for CubeBackend {
    fn conv3d_k3_mma(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        per_warp: usize,
        mode: usize,
        tf32: bool,
    ) -> FloatTensor<Self> {
        let width = mma_shape(&x.shape(), &weight.shape(), &stride)[4];
        let tile = tile_for(stride, width, per_warp);
        let split = x.dtype == DType::F32;
        let fits = (x.dtype == DType::F16 || split) && weight.dtype == x.dtype && (!split || tile.splits());
        let units = mode == FORCED || gpu::supported(&x.client);
        if !fits || (mode == UNITS && !units) {
            return by_burn::<Self>(x, weight, bias, stride);
        }
        gpu::conv3d_k3_mma(x, weight, bias, tile, units, !tf32)
    }
}

mod gpu {
    use burn::backend::TensorMetadata;
    use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor};
    use cubecl::client::Client;
    use cubecl::ir::{ElemType, FloatKind, features::MmaConfig};
    use cubecl::prelude::*;

    use super::super::gpu::within;
    use super::{CHUNK, RUN, SPLIT_TOP, TILE_O, Tile};

    /// Threads of a workgroup of [`abs_max_kernel`], values a thread reads at least, and the
    /// most workgroups (65 536 threads, enough to keep the GPU's memory busy).
    const MAX_THREADS: usize = 256;
    const MAX_EACH: usize = 16;
    const MOST_CUBES: usize = 256;

    /// [`stage_input`]'s `part`: the values as they are (f16 layers).
    const PLAIN: u32 = 0;
    /// The f16 `hi` halves of the scaled values (f32 layers).
    const HI: u32 = 1;
    /// Their `lo` halves.
    const LO: u32 = 2;

    /// [`super::matrix_units`]: yes or no, why, and every matrix-unit shape the driver offers.
    pub(super) fn describe(client: &Client) -> String {
        let hardware = &client.properties().hardware;
        let offered: Vec<String> = client
            .features()
            .matmul
            .cmma
            .iter()
            .map(|c| format!("{}x{}x{} {}·{}→{}", c.m, c.n, c.k, c.a_type, c.b_type, c.cd_type))
            .collect();
        let offered = if offered.is_empty() { "none".to_owned() } else { offered.join(", ") };
        let warps = match (hardware.plane_size_min, hardware.plane_size_max) {
            (min, max) if min == max => format!("warps of {min} threads"),
            (min, max) => format!("warps of {min}–{max} threads"),
        };
        let verdict = if supported(client) {
            "used (16x16x16 f16·f16→f32 on 32-thread warps)"
        } else {
            "not used: the kernel needs 16x16x16 f16·f16→f32 on 32-thread warps"
        };
        format!("{verdict}; the driver offers {offered}; {warps}")
    }

    /// Cooperative matrices of 16×16×16 f16 with f32 sums, on 32-thread warps.
    pub(super) fn supported(client: &Client) -> bool {
        let f16 = ElemType::Float(FloatKind::F16);
        let config =
            MmaConfig { a_type: f16, b_type: f16, cd_type: ElemType::Float(FloatKind::F32), m: 16, k: 16, n: 16 };
        let hardware = &client.properties().hardware;
        client.features().matmul.cmma.contains(&config)
            && hardware.plane_size_min == 32
            && hardware.plane_size_max == 32
    }

    /// A 16×16 accumulator of f32, zero.
    #[cube]
    fn zero_accumulator() -> cmma::Matrix<f32> {
        cmma::Matrix::<f32>::from_value(
            cmma::MatrixIdent::Accumulator,
            16usize,
            16usize,
            16usize,
            cmma::MatrixLayout::Undefined,
            0.0,
        )
    }

    /// A 16×16 operand (`ident` A: 16 voxels × 16 channels; B: 16 channels × 16 output
    /// channels) read row-major from `values`, rows `stride` values apart.
    #[cube]
    fn operand<F: Float>(#[comptime] ident: cmma::MatrixIdent, values: &[F], stride: u32) -> cmma::Matrix<F> {
        cmma::Matrix::<F>::from_slice(ident, 16usize, 16usize, 16usize, cmma::MatrixLayout::RowMajor, values, stride)
    }

    /// The scale that brings a largest |value| (its f32 bits, as [`abs_max_kernel`] leaves
    /// them) to [`SPLIT_TOP`]; any finite one for zero.
    #[cube]
    fn scale_of(bits: u32) -> f32 {
        SPLIT_TOP / f32::max(f32::reinterpret(bits), 1e-30f32)
    }

    /// `maxima[slot]` = the largest of itself and every |value| of `values`, as f32 bits
    /// (which order non-negative floats as their values): each thread's values, then one
    /// atomic maximum a thread.
    #[cube(launch, address_type = "dynamic")]
    fn abs_max_kernel<I: Float>(
        values: &Tensor<I>,
        maxima: &mut Tensor<Atomic<u32>>,
        #[comptime] slot: usize,
        #[define(I)] _dtype: ElemType,
    ) {
        let unit = UNIT_POS as usize;
        let step = CUBE_COUNT * MAX_THREADS;
        let mut m = 0.0f32;
        let mut i = CUBE_POS * MAX_THREADS + unit;
        while i < values.len() {
            m = f32::max(m, f32::abs(f32::cast_from(values[i])));
            i += step;
        }
        // One atomic maximum a thread, in device memory, and no workgroup memory: in SPIR-V
        // builds on a driver without VK_KHR_workgroup_memory_explicit_layout (Mesa 22.3's
        // lavapipe, CI's), cubecl-spirv 0.11.3 declares any workgroup array as a variable that
        // holds a pointer to it, and the driver's compiler crashes. There are few threads (at
        // most [`MOST_CUBES`] workgroups).
        maxima[slot].fetch_max(u32::reinterpret(m));
    }

    /// One thread a value of the weight: its f16 halves scaled ([`scale_of`]`(maxima[1])`).
    #[cube(launch, address_type = "dynamic")]
    fn halves_kernel<F: Float>(
        values: &Tensor<f32>,
        maxima: &Tensor<u32>,
        hi: &mut Tensor<F>,
        lo: &mut Tensor<F>,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= values.len() {
            terminate!();
        }
        let scaled = values[i] * scale_of(maxima[1]);
        let high = F::cast_from(scaled);
        hi[i] = high;
        lo[i] = F::cast_from(scaled - f32::cast_from(high));
    }

    /// What workgroup memory holds of input value `x` ([`PLAIN`], [`HI`] or [`LO`]; `scale`:
    /// the input's, for the halves).
    #[cube]
    fn part_of<I: Float, F: Float>(x: I, scale: f32, #[comptime] part: u32) -> F {
        let mut v = F::cast_from(x);
        if part != PLAIN {
            let scaled = f32::cast_from(x) * scale;
            v = F::cast_from(scaled);
            if part == LO {
                v = F::cast_from(scaled - f32::cast_from(v));
            }
        }
        v
    }

    /// Stages input channels `[c0, c0 + CHUNK)` of the block whose first output voxel is
    /// `(oz, y0, x0)` of image `n`, with its border, `halo` `[hz, hy, hx]` voxels at `stride`:
    /// value `(pz, py, px, c)` at `((pz·hy + py)·hx + px)·CHUNK + c`, input voxel
    /// `(oz·stride + pz − 1, …)` as `part` says ([`part_of`]), zero outside the image and past
    /// its channels.
    ///
    /// A row of the halo (`pz`, `py`) is `hx · CHUNK` values in a row of workgroup memory, and
    /// every thread takes the same places (x, channel), its *slots*, in every row: their
    /// addresses, and whether they are inside the image along x and among its channels, are
    /// worked out once a chunk, and whether a row is inside the image once a row (the same for
    /// every thread), so each value costs a test, a load, an address and a store. A plane's
    /// rows and slots are unrolled (the block's size is known when the kernel is built), so a
    /// thread's loads of a plane are independent of each other and in flight at once. Within a
    /// row, two channels, then x, fastest: a warp reads 16 voxels of an input row in each of two
    /// channels (two whole 32-byte sectors), and its pairs of threads write adjacent values,
    /// which halves the bank conflicts of writes 16 values apart.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn stage_input<I: Float, F: Float>(
        input: &Tensor<I>,
        halo: &mut Shared<[F]>,
        n: usize,
        c0: usize,
        oz: usize,
        y0: usize,
        x0: usize,
        scale: f32,
        #[comptime] hz: usize,
        #[comptime] hy: usize,
        #[comptime] hx: usize,
        #[comptime] stride: usize,
        #[comptime] threads: usize,
        #[comptime] part: u32,
    ) {
        let in_c = input.shape(1);
        let (d, h, w) = (input.shape(2), input.shape(3), input.shape(4));
        let volume = d * h * w;
        let row_len = hx * CHUNK;
        let slots = row_len.div_ceil(threads);
        let unit = UNIT_POS as usize;
        // Slot s: place j = unit + s·threads of each row (the last slot's past the row's end
        // for some threads). `from`: its channel's first value, plus its x (1 more than the
        // input's, so never less than 1 where it is read); `to`: its place in a row.
        let mut from = Array::<usize>::new(slots);
        let mut to = Array::<usize>::new(slots);
        let mut reads = Array::<u32>::new(slots);
        let mut owns = Array::<u32>::new(slots);
        #[unroll]
        for s in 0..slots {
            let j = unit + s * threads;
            let px = j / 2 % hx;
            let c = j / (2 * hx) * 2 + j % 2;
            // Padded coordinate: x reads input x − 1, inside when 1 ≤ x ≤ w.
            let x = x0 * stride + px;
            from[s] = (n * in_c + c0 + c) * volume + x;
            to[s] = px * CHUNK + c;
            owns[s] = u32::cast_from(j < row_len);
            reads[s] = u32::cast_from(j < row_len && c0 + c < in_c && within(x, w));
        }
        // Plane by plane, each plane's rows and slots unrolled: as many loads in flight as a
        // plane has, for a fraction of the code of the whole block unrolled.
        for pz in 0..hz {
            let z = oz * stride + pz;
            #[unroll]
            for py in 0..hy {
                let y = y0 * stride + py;
                let inside = within(z, d) && within(y, h);
                // The row's first input voxel less one (x ≥ 1 where read): zero outside.
                let mut row = 0usize;
                if inside {
                    row = ((z - 1) * h + y - 1) * w;
                }
                let at = (pz * hy + py) * row_len;
                #[unroll]
                for s in 0..slots {
                    if owns[s] == 1 {
                        let mut v = F::new(0.0);
                        if inside && reads[s] == 1 {
                            v = part_of::<I, F>(input[from[s] + row - 1], scale, part);
                        }
                        halo[at + to[s]] = v;
                    }
                }
            }
        }
    }

    /// The products of one staged chunk (from input channel `c0`) on cooperative matrices:
    /// for each of the 27 taps, each of the warp's runs (`a_base`) by the weight's two
    /// fragments of output channels from `ob·TILE_O`, into `acc` (accumulator `2·p + f`: run
    /// `p`, fragment `f`); with `lo`, by `weight_lo`'s too.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn products<F: Float>(
        acc: &Sequence<cmma::Matrix<f32>>,
        halo: &Shared<[F]>,
        weight: &Tensor<F>,
        weight_lo: &Tensor<F>,
        a_base: &Array<usize>,
        c0: usize,
        ob: usize,
        out_c: usize,
        #[comptime] hy: usize,
        #[comptime] hx: usize,
        #[comptime] stride: usize,
        #[comptime] per_warp: usize,
        #[comptime] lo: bool,
    ) {
        let a_stride = stride * CHUNK;
        let k_stride = 27 * out_c;
        #[unroll]
        for tap in 0..27usize {
            let (kz, ky, kx) = (tap / 9, tap / 3 % 3, tap % 3);
            let offset = ((kz * hy + ky) * hx + kx) * CHUNK;
            let b_at = (c0 * 27 + tap) * out_c + ob * TILE_O;
            let b_end = b_at + 15 * k_stride + TILE_O;
            let b0 = operand::<F>(cmma::MatrixIdent::B, weight.slice(b_at, b_end), k_stride as u32);
            let b1 = operand::<F>(cmma::MatrixIdent::B, weight.slice(b_at + 16, b_end), k_stride as u32);
            #[unroll]
            for p in 0..per_warp {
                let at = a_base[p] + offset;
                let a = operand::<F>(cmma::MatrixIdent::A, halo.slice(at, at + 15 * a_stride + CHUNK), a_stride as u32);
                let (c_0, c_1) = (acc.index(2 * p), acc.index(2 * p + 1));
                cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &b0, c_0, c_0);
                cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &b1, c_1, c_1);
            }
            if lo {
                let l0 = operand::<F>(cmma::MatrixIdent::B, weight_lo.slice(b_at, b_end), k_stride as u32);
                let l1 = operand::<F>(cmma::MatrixIdent::B, weight_lo.slice(b_at + 16, b_end), k_stride as u32);
                #[unroll]
                for p in 0..per_warp {
                    let at = a_base[p] + offset;
                    let a =
                        operand::<F>(cmma::MatrixIdent::A, halo.slice(at, at + 15 * a_stride + CHUNK), a_stride as u32);
                    let (c_0, c_1) = (acc.index(2 * p), acc.index(2 * p + 1));
                    cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &l0, c_0, c_0);
                    cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &l1, c_1, c_1);
                }
            }
        }
    }

    /// The same products emulated by the warp's threads, at the same addresses: lane `lane`
    /// holds elements (i, j) = ((8·l + e) / 16, (8·l + e) % 16), e < 8, of each of the warp's
    /// fragments (run p, channel fragment f) at `acc[8·(2·p + f) + e]`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn products_emulated<F: Float>(
        acc: &mut Array<f32>,
        halo: &Shared<[F]>,
        weight: &Tensor<F>,
        weight_lo: &Tensor<F>,
        a_base: &Array<usize>,
        lane: usize,
        c0: usize,
        ob: usize,
        out_c: usize,
        #[comptime] hy: usize,
        #[comptime] hx: usize,
        #[comptime] stride: usize,
        #[comptime] per_warp: usize,
        #[comptime] lo: bool,
    ) {
        let a_stride = stride * CHUNK;
        let k_stride = 27 * out_c;
        for tap in 0..27usize {
            let (kz, ky, kx) = (tap / 9, tap / 3 % 3, tap % 3);
            let offset = ((kz * hy + ky) * hx + kx) * CHUNK;
            let b_at = (c0 * 27 + tap) * out_c + ob * TILE_O;
            // Not unrolled: the emulation's speed does not matter, its shader's size
            // (lavapipe compiles it) does.
            for s in 0..16 * per_warp {
                let (p, f, e) = (s / 16, s / 8 % 2, s % 8);
                let q = 8 * lane + e;
                let (i, j) = (q / 16, q % 16);
                let a_at = a_base[p] + offset;
                let mut sum = acc[s];
                for k in 0..16usize {
                    // A (row-major, stride a_stride) from the run's offset; B (row-major,
                    // stride k_stride) from 16·f.
                    let a = f32::cast_from(halo[a_at + i * a_stride + k]);
                    let b_of = b_at + 16 * f + k * k_stride + j;
                    sum += a * f32::cast_from(weight[b_of]);
                    if lo {
                        sum += a * f32::cast_from(weight_lo[b_of]);
                    }
                }
                acc[s] = sum;
            }
        }
    }

    /// Writes one fragment of sums, which warp `warp` has left in its place of `scratch`
    /// (column-major: voxel i, channel j at `256·warp + i + 16·j`), scaled by `inverse` and
    /// plus the bias: voxels from `v` of the block at `(oz, y0, x0)` (`width`, `rows`), output
    /// channels from `first`. Each lane writes one voxel's value of 8 channels (two channels'
    /// 16 voxels a step for the warp: two 64-byte rows).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn write_fragment<I: Float>(
        scratch: &Shared<[f32]>,
        output: &mut Tensor<I>,
        bias: &Tensor<f32>,
        inverse: f32,
        warp: usize,
        lane: usize,
        n: usize,
        v: usize,
        first: usize,
        oz: usize,
        y0: usize,
        x0: usize,
        #[comptime] width: usize,
        #[comptime] rows: usize,
    ) {
        let out_c = output.shape(1);
        let (d, h, w) = (output.shape(2), output.shape(3), output.shape(4));
        let volume = d * h * w;
        let v = v + lane % 16;
        let x = x0 + v % width;
        let y = y0 + v / width % rows;
        let z = oz + v / (width * rows);
        if x < w && y < h && z < d {
            let at = n * out_c * volume + (z * h + y) * w + x;
            #[unroll]
            for e in 0..8usize {
                let k = lane + 32 * e;
                let channel = first + k / 16;
                output[at + channel * volume] = I::cast_from(scratch[256 * warp + k] * inverse + bias[channel]);
            }
        }
    }

    /// One workgroup: output channels `[ob·TILE_O, +TILE_O)` of the block at `(oz, y0, x0)` of
    /// image `n` (`runs`, `rows`, `planes`, `per_warp`: [`Tile`]). Warp `w` computes runs
    /// `per_warp·w` to `per_warp·w + per_warp − 1` of the block (run `q`: row `q / runs`, the
    /// `q % runs`-th along x; rows plane by plane), each by two fragments of 16 channels.
    /// `mma`: by cooperative matrices; else each fragment operation by the warp's threads,
    /// reading the same addresses. `split`: `input` and `output` in f32, each product as three
    /// of f16 halves where `three`, else one of the `hi` halves (the module's documentation; `weight` and `weight_lo` the weight's, scaled;
    /// `maxima` the largest |value| of the input and of the weight: [`abs_max_kernel`]; else
    /// neither `weight_lo` nor `maxima` is read).
    #[cube(launch, address_type = "dynamic", create_dummy_kernel)]
    #[allow(clippy::too_many_arguments)]
    fn conv3d_k3_mma_kernel<F: Float, I: Float>(
        input: &Tensor<I>,
        weight: &Tensor<F>,
        weight_lo: &Tensor<F>,
        bias: &Tensor<f32>,
        maxima: &Tensor<u32>,
        output: &mut Tensor<I>,
        #[comptime] stride: usize,
        #[comptime] runs: usize,
        #[comptime] rows: usize,
        #[comptime] planes: usize,
        #[comptime] per_warp: usize,
        #[comptime] mma: bool,
        #[comptime] split: bool,
        #[comptime] three: bool,
        #[define(F)] _operands: ElemType,
        #[define(I)] _values: ElemType,
    ) {
        let width = RUN * runs;
        let blk = width * rows * planes;
        let threads = 32 * runs * rows * planes / per_warp;
        let hz = (planes - 1) * stride + 3;
        let hy = (rows - 1) * stride + 3;
        let hx = (width - 1) * stride + 3;
        let halo_len = hz * hy * hx * CHUNK;
        let staged_len = TILE_O * blk;

        // The weight's input channels: the input's, padded with zero weights to whole chunks.
        let in_c = weight.shape(0) / 27;
        let out_c = output.shape(1);
        let (d, h, w) = (output.shape(2), output.shape(3), output.shape(4));
        let tiles_x = w.div_ceil(width);
        let tiles_y = h.div_ceil(rows);
        let tiles_z = d.div_ceil(planes);
        let blocks = out_c / TILE_O;
        let mut cube = CUBE_POS;
        if cube >= output.shape(0) * tiles_z * tiles_y * tiles_x * blocks {
            terminate!();
        }
        // Channel blocks fastest: neighbouring workgroups read the same input block.
        let ob = cube % blocks;
        cube /= blocks;
        let x0 = (cube % tiles_x) * width;
        cube /= tiles_x;
        let y0 = (cube % tiles_y) * rows;
        cube /= tiles_y;
        let oz = (cube % tiles_z) * planes;
        let n = cube / tiles_z;

        let unit = UNIT_POS as usize;
        let warp = unit / 32;
        let lane = unit % 32;
        // The warp's runs q = per_warp·warp + p: row (plane-major) and first voxel along x in
        // the block; their first voxels' halo offsets (tap 0) and staged offsets.
        let mut a_base = Array::<usize>::new(per_warp);
        let mut v_base = Array::<usize>::new(per_warp);
        #[unroll]
        for p in 0..per_warp {
            let q = per_warp * warp + p;
            let (row, xr) = (q / runs, q % runs * RUN);
            a_base[p] = (((row / rows) * stride * hy + (row % rows) * stride) * hx + xr * stride) * CHUNK;
            v_base[p] = row * width + xr;
        }
        let mut halo = Shared::<[F]>::new_slice(halo_len);
        // In f32: the input's scale, and the sums' (1 / both scales, as a product of two
        // numbers of order one at most: neither overflows).
        let mut scale = 1.0f32;
        let mut inverse = 1.0f32;
        if split {
            scale = scale_of(maxima[0]);
            inverse = (1.0f32 / scale) * (1.0f32 / scale_of(maxima[1]));
        }
        let first = ob * TILE_O;

        if mma {
            // Accumulator 2·p + f: run p, channels 16·f…
            let mut acc = Sequence::<cmma::Matrix<f32>>::new();
            #[unroll]
            for _ in 0..2 * per_warp {
                acc.push(zero_accumulator());
            }
            let mut c0 = 0usize;
            while c0 < in_c {
                sync_cube();
                if three {
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, HI);
                    sync_cube();
                    products::<F>(
                        &acc, &halo, weight, weight_lo, &a_base, c0, ob, out_c, hy, hx, stride, per_warp, true,
                    );
                    sync_cube();
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, LO);
                } else if split {
                    // One product, of the `hi` halves.
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, HI);
                } else {
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, PLAIN);
                }
                sync_cube();
                products::<F>(&acc, &halo, weight, weight_lo, &a_base, c0, ob, out_c, hy, hx, stride, per_warp, false);
                c0 += CHUNK;
            }
            sync_cube();
            if split {
                // Each fragment through the warp's f32 scratch, column-major, stride 16.
                let mut scratch = Shared::<[f32]>::new_slice(threads / 32 * 256);
                #[unroll]
                for p in 0..per_warp {
                    #[unroll]
                    for f in 0..2usize {
                        cmma::store(
                            scratch.slice_mut(256 * warp, 256 * warp + 256),
                            acc.index(2 * p + f),
                            16,
                            cmma::MatrixLayout::ColMajor,
                        );
                        sync_cube();
                        write_fragment::<I>(
                            &scratch,
                            output,
                            bias,
                            inverse,
                            warp,
                            lane,
                            n,
                            v_base[p],
                            first + 16 * f,
                            oz,
                            y0,
                            x0,
                            width,
                            rows,
                        );
                        sync_cube();
                    }
                }
            } else {
                // Staged as [channel][voxel of the block]: fragment (run p, channels f)
                // column-major from channel 16·f, voxel v_p, stride blk.
                #[unroll]
                for p in 0..per_warp {
                    #[unroll]
                    for f in 0..2usize {
                        let staged = cmma::cast::<f32, F, cmma::Plane>(acc.index(2 * p + f));
                        let at = 16 * f * blk + v_base[p];
                        cmma::store(halo.slice_mut(at, staged_len), &staged, blk as u32, cmma::MatrixLayout::ColMajor);
                    }
                }
            }
        } else {
            let held = 16 * per_warp;
            let mut acc = Array::<f32>::new(held);
            #[unroll]
            for e in 0..held {
                acc[e] = 0.0f32;
            }
            let mut c0 = 0usize;
            while c0 < in_c {
                sync_cube();
                if three {
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, HI);
                    sync_cube();
                    products_emulated::<F>(
                        &mut acc, &halo, weight, weight_lo, &a_base, lane, c0, ob, out_c, hy, hx, stride, per_warp,
                        true,
                    );
                    sync_cube();
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, LO);
                } else if split {
                    // One product, of the `hi` halves.
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, HI);
                } else {
                    stage_input::<I, F>(input, &mut halo, n, c0, oz, y0, x0, scale, hz, hy, hx, stride, threads, PLAIN);
                }
                sync_cube();
                products_emulated::<F>(
                    &mut acc, &halo, weight, weight_lo, &a_base, lane, c0, ob, out_c, hy, hx, stride, per_warp, false,
                );
                c0 += CHUNK;
            }
            sync_cube();
            if split {
                let mut scratch = Shared::<[f32]>::new_slice(threads / 32 * 256);
                for p in 0..per_warp {
                    for f in 0..2usize {
                        for e in 0..8usize {
                            let q = 8 * lane + e;
                            // Column-major: voxel q / 16, channel q % 16.
                            scratch[256 * warp + q / 16 + 16 * (q % 16)] = acc[16 * p + 8 * f + e];
                        }
                        sync_cube();
                        write_fragment::<I>(
                            &scratch,
                            output,
                            bias,
                            inverse,
                            warp,
                            lane,
                            n,
                            v_base[p],
                            first + 16 * f,
                            oz,
                            y0,
                            x0,
                            width,
                            rows,
                        );
                        sync_cube();
                    }
                }
            } else {
                for s in 0..held {
                    let (p, f, e) = (s / 16, s / 8 % 2, s % 8);
                    let q = 8 * lane + e;
                    let (i, j) = (q / 16, q % 16);
                    // Column-major from (16·f)·blk + v_p, stride blk.
                    halo[(16 * f + j) * blk + v_base[p] + i] = F::cast_from(acc[s]);
                }
            }
        }
        if !split {
            sync_cube();
            // The block out with the bias (in f32, rounded once more to f16). A block has one
            // or two voxels a thread: each thread writes its voxels' 32 channels, x fastest
            // across threads, each voxel's place worked out once.
            let volume = d * h * w;
            #[unroll]
            for k in 0..blk / threads {
                let v = unit + k * threads;
                let x = x0 + v % width;
                let y = y0 + v / width % rows;
                let z = oz + v / (width * rows);
                if x < w && y < h && z < d {
                    let at = (n * out_c + first) * volume + (z * h + y) * w + x;
                    #[unroll]
                    for oc in 0..TILE_O {
                        output[at + oc * volume] = I::cast_from(f32::cast_from(halo[oc * blk + v]) + bias[first + oc]);
                    }
                }
            }
        }
    }

    /// `maxima[slot]` (u32, zero before) = the largest |value| of `values`, as its f32 bits.
    fn abs_max(values: &CubeTensor, maxima: &CubeTensor, slot: usize) {
        let len = values.shape().num_elements();
        if len == 0 {
            return;
        }
        let client = &values.client;
        let cubes = len.div_ceil(MAX_THREADS * MAX_EACH).min(MOST_CUBES);
        let dtype = burn::backend::cubecl::dtype_to_storage_type(values.dtype);
        abs_max_kernel::launch(
            client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_1d(MAX_THREADS as u32),
            values.required_address_type(),
            values.clone().into_tensor_arg(),
            maxima.clone().into_tensor_arg(),
            slot,
            dtype,
        );
    }

    /// What burn's SPIR-V compiler makes of [`conv3d_k3_mma_kernel`] on cooperative matrices
    /// (`tile`; `split`: f32 layers, `three` products of halves or one) for a GPU like NVIDIA's,
    /// disassembled; or why it refused the kernel. Built, never run: the properties of `device`
    /// (any GPU, lavapipe in CI) with NVIDIA's matrix units added (16×16×16 f16 with f16 or f32
    /// sums, 32-thread warps), compiled for a Vulkan driver like NVIDIA's (SPIR-V 1.6,
    /// `VK_KHR_workgroup_memory_explicit_layout`, 64-bit integers, float controls 2, integer dot
    /// products, 256 bytes of push constants), which takes another path through the compiler
    /// than lavapipe's. What that driver then does with it is left to the device check.
    #[cfg(all(test, feature = "spirv-compile-test"))]
    pub(super) fn spirv_for_matrix_units(
        device: &super::Device,
        tile: Tile,
        split: bool,
        three: bool,
    ) -> Result<String, String> {
        use burn::tensor::{DType, Shape};
        use burn_cubecl::ops::numeric::empty_device_dtype;
        use cubecl::{Compiler, VulkanCompilationOptions, WgpuCompilationOptions};
        let burn::backend::DispatchDevice::Cube(cube) = device.as_dispatch() else {
            return Err(format!("{device:?} is not a GPU"));
        };
        let client = cube.client();
        let mut properties = client.properties().clone();
        let (f16, f32) = (ElemType::Float(FloatKind::F16), ElemType::Float(FloatKind::F32));
        for cd_type in [f16, f32] {
            let config = MmaConfig { a_type: f16, b_type: f16, cd_type, m: 16, k: 16, n: 16 };
            properties.features.matmul.cmma.insert(config);
        }
        properties.hardware.plane_size_min = 32;
        properties.hardware.plane_size_max = 32;
        let (values, operands) = if split { (DType::F32, DType::F16) } else { (DType::F16, DType::F16) };
        let tensor = |shape: Vec<usize>, dtype: DType| {
            empty_device_dtype(client.clone(), cube.clone(), Shape::from(shape), dtype).into_tensor_arg()
        };
        let storage = burn::backend::cubecl::dtype_to_storage_type;
        let kernel = conv3d_k3_mma_kernel::create_dummy_kernel(
            std::sync::Arc::new(properties),
            client.target_properties_shared(),
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(tile.threads() as u32),
            AddressType::U32,
            tensor(vec![1, CHUNK, 8, 8, 32], values),
            tensor(vec![CHUNK * 27, TILE_O], operands),
            tensor(vec![CHUNK * 27, TILE_O], operands),
            tensor(vec![TILE_O], DType::F32),
            tensor(vec![2], DType::U32),
            tensor(vec![1, TILE_O, 8, 8, 32], values),
            tile.stride,
            tile.runs,
            tile.rows,
            tile.planes,
            tile.per_warp,
            true,
            split,
            split && three,
            storage(operands),
            storage(values),
        );
        let options = WgpuCompilationOptions {
            supports_u64: true,
            supports_vulkan_compiler: true,
            supports_msl_compiler: false,
            vulkan: VulkanCompilationOptions {
                supports_fp_fast_math: true,
                supports_explicit_smem: true,
                supports_uniform_standard_layout: true,
                supports_dp4a: true,
                max_spirv_version: (1, 6),
                max_vector_size: 4,
                push_constant_size: 256,
                ..VulkanCompilationOptions::default()
            },
        };
        cubecl_spirv::SpirvCompiler
            .compile(kernel.define(), &options)
            .map(|spirv| spirv.to_string())
            .map_err(|e| format!("{e}"))
    }

    /// [`conv3d_k3_mma_kernel`] over the whole output by blocks of `tile` (`mma`: on
    /// cooperative matrices), in `x`'s dtype: f16, or f32 in f16 halves (the weight split here,
    /// once a call, after the largest |value| of each; `three` products of them, else one).
    pub(super) fn conv3d_k3_mma(
        x: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        tile: Tile,
        mma: bool,
        three: bool,
    ) -> CubeTensor {
        use burn::tensor::{DType, Shape};
        use burn_cubecl::ops::numeric::{empty_device_dtype, zeros_client};
        let x = into_contiguous(x);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let shape = super::mma_shape(&x.shape(), &weight.shape(), &tile.stride);
        let client = x.client.clone();
        let empty = |shape: Shape, dtype: DType| empty_device_dtype(client.clone(), x.device.clone(), shape, dtype);
        let output = empty(shape, x.dtype);
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let cubes = n * d.div_ceil(tile.planes) * h.div_ceil(tile.rows) * w.div_ceil(tile.width()) * (o / TILE_O);
        if cubes == 0 {
            return output;
        }
        let split = x.dtype == DType::F32;
        let (weight, weight_lo, maxima) = if split {
            let maxima = zeros_client(client.clone(), x.device.clone(), Shape::new([2]), DType::U32);
            abs_max(&x, &maxima, 0);
            abs_max(&weight, &maxima, 1);
            let (hi, lo) = (empty(weight.shape(), DType::F16), empty(weight.shape(), DType::F16));
            let len = weight.shape().num_elements();
            let cube_dim = CubeDim::new_1d(256);
            halves_kernel::launch(
                &client,
                cubecl::calculate_cube_count_elemwise(&client, len, cube_dim),
                cube_dim,
                weight.required_address_type(),
                weight.into_tensor_arg(),
                maxima.clone().into_tensor_arg(),
                hi.clone().into_tensor_arg(),
                lo.clone().into_tensor_arg(),
                burn::backend::cubecl::dtype_to_storage_type(DType::F16),
            );
            (hi, lo, maxima)
        } else {
            // Not read in f16.
            (weight.clone(), weight, empty(Shape::new([2]), DType::U32))
        };
        let address = x.required_address_type().max(weight.required_address_type()).max(output.required_address_type());
        let operands = burn::backend::cubecl::dtype_to_storage_type(weight.dtype);
        let values = burn::backend::cubecl::dtype_to_storage_type(x.dtype);
        let cube_dim = CubeDim::new_1d(tile.threads() as u32);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, cubes * tile.threads(), cube_dim);
        conv3d_k3_mma_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            weight_lo.into_tensor_arg(),
            bias.into_tensor_arg(),
            maxima.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            tile.stride,
            tile.runs,
            tile.rows,
            tile.planes,
            tile.per_warp,
            mma,
            split,
            split && three,
            operands,
            values,
        );
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DeviceKind;

    /// Largest |ours − burn's on the same values| over each block of [`TILES`] that computes
    /// layers in `layer`'s dtype (two and four runs a warp) cut by the grid's edge on every
    /// axis, several channel chunks and channel blocks, one and two images, with and without
    /// bias: in f16 / (1 + |burn's|), in f32 / burn's largest |value| of the case (whose input
    /// is of order 1, 10⁵, past f16's largest value, or 10⁻⁴). burn's convolution in f32, or
    /// where `reference` is f16 in f16. `tf32`: f32 layers by one product of halves.
    fn worst_difference(device: &Device, mode: usize, layer: FloatDType, reference: FloatDType, tf32: bool) -> f32 {
        let mut draw = crate::testing::Values::new(1);
        // (input, output channels, stride). Input channels in one chunk, two, three; one
        // channel and 24 (padded to whole chunks). Outputs wider than 16 (the wide block), of
        // 16 and fewer (the narrow one), and stride 2 (odd and even sizes).
        let cases = [
            ([1, 16, 3, 5, 17], 32, 1),
            ([2, 32, 4, 6, 35], 64, 1),
            ([1, 48, 5, 4, 16], 32, 1),
            ([1, 1, 4, 9, 33], 32, 1),
            ([2, 24, 3, 4, 20], 32, 1),
            ([1, 16, 6, 5, 7], 64, 1),
            ([1, 32, 9, 6, 16], 32, 1),
            ([1, 16, 5, 9, 33], 32, 2),
            ([2, 24, 4, 6, 8], 64, 2),
        ];
        let split = layer == FloatDType::F32;
        let options = |stride: usize| ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
        let dtype = DType::from(layer);
        // Every number of runs a warp that computes the case.
        let runs = cases.into_iter().enumerate().flat_map(|(i, case)| {
            let fits =
                move |&p: &usize| conv3d_k3_mma_fits(case.0, [case.1, case.0[1], 3, 3, 3], &options(case.2), dtype, p);
            PER_WARP.into_iter().filter(fits).map(move |p| (i, case, p))
        });
        let tiles: Vec<Tile> =
            runs.clone().map(|(_, (shape, _, stride), p)| tile_for(stride, (shape[4] - 1) / stride + 1, p)).collect();
        assert!(TILES.iter().filter(|t| !split || t.splits()).all(|t| tiles.contains(t)), "every block tested");
        let mut worst = 0.0f32;
        for (i, (shape, out, stride), per_warp) in runs {
            let magnitude = if split { [1.0, 1e5, 1e-4][i % 3] } else { 1.0 };
            let x = (draw.signed(shape, device) * magnitude).cast(layer);
            let weight = draw.signed([out, shape[1], 3, 3, 3], device).cast(layer);
            let bias = (i % 2 == 0).then(|| draw.signed([out], device));
            let options = options(stride);
            let cast = |t: Tensor<5>| t.cast(reference);
            let reference = burn::tensor::module::conv3d(
                cast(x.clone()),
                cast(weight.clone()),
                bias.clone().map(|b| b.cast(reference)),
                options.clone(),
            );
            let ours = run(x, weight, bias, &options, per_warp, mode, tf32);
            assert_eq!(ours.dims(), reference.dims());
            assert_eq!(ours.dtype(), dtype, "the layer's dtype");
            let floats = |t: Tensor<5>| t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap_or_default();
            let (ours, reference) = (floats(ours), floats(reference));
            assert_eq!(ours.len(), reference.len());
            let largest = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let error = |(a, b): (&f32, &f32)| (a - b).abs() / if split { largest } else { 1.0 + b.abs() };
            worst = ours.iter().zip(&reference).map(error).fold(worst, f32::max);
        }
        worst
    }

    #[test]
    fn fits_only_what_it_computes() {
        let options = |stride: usize, padding: usize| ConvOptions::new([stride; 3], [padding; 3], [1; 3], 1);
        let f16 = DType::F16;
        assert!(conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), f16, 2));
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), DType::F32, 2), "f32");
        assert!(conv3d_k3_mma_fits([1, 1, 8, 8, 8], [32, 1, 3, 3, 3], &options(1, 1), f16, 2), "one channel");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [48, 32, 3, 3, 3], &options(1, 1), f16, 2), "48 outputs");
        assert!(conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(2, 1), f16, 2), "stride 2");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(3, 1), f16, 2), "stride 3");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 0), f16, 2), "no padding");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 1, 1, 1], &options(1, 0), f16, 2), "1×1×1");
        assert!(conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), f16, 4), "four runs a warp");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(2, 1), f16, 4), "four at stride 2");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), f16, 3), "three runs a warp");
        // In f32, the blocks with room for their scratch.
        let f32 = DType::F32;
        assert!(conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), f32, 4), "f32, four");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), f32, 2), "f32, two at 1");
        assert!(conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(2, 1), f32, 2), "f32, stride 2");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(2, 1), f32, 4), "f32, four at 2");
        assert!(!conv3d_k3_mma_fits([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(1, 1), DType::F64, 4), "f64");
        // One product of halves: the same blocks, f32 only.
        let tf32 = |stride, dtype| tf32_runs_a_warp([1, 32, 8, 8, 8], [64, 32, 3, 3, 3], &options(stride, 1), dtype);
        assert_eq!([tf32(1, f32), tf32(2, f32), tf32(1, f16), tf32(3, f32)], [Some(4), Some(2), None, None]);
        let splitting: Vec<Tile> = TILES.into_iter().filter(Tile::splits).collect();
        assert_eq!(splitting, [TILES[2], TILES[3], TILES[4]]);
    }

    /// On flex, burn's convolution in f16 (which sums in f16 there: 5·10⁻³ from its sums in
    /// f32), the bias added after (one more rounding).
    #[test]
    fn on_flex_it_is_burns_convolution() {
        let device = Device::flex();
        assert!(!available(&device));
        assert_eq!(matrix_units(&device), "not a CubeCL device: no matrix units");
        let worst = worst_difference(&device, EMULATED, FloatDType::F16, FloatDType::F16, false);
        assert!(worst < 1e-3, "{worst:e}");
    }

    /// The kernel emulated on whatever GPU adapter opens (lavapipe where there is none): burn's
    /// sums of the same f16 values to the output's rounding to f16 (twice: the sums, then with
    /// the bias; 2⁻¹¹ of 1 + |value| each).
    #[test]
    fn on_a_gpu_the_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        // What a device run logs first: used or not, as `available` says, and the driver's
        // offer (lavapipe: no matrix units, warps of its SIMD width).
        let units = matrix_units(&device);
        eprintln!("matrix units: {units}");
        assert_eq!(units.starts_with("used"), available(&device), "{units}");
        assert!(units.contains("; the driver offers ") && units.contains(" threads"), "{units}");
        let (f16, f32) = (FloatDType::F16, FloatDType::F32);
        let worst = worst_difference(&device, EMULATED, f16, f32, false);
        eprintln!("convolution on matrix units, emulated: worst {worst:e} of 1 + |value|");
        assert!(worst < 1.5e-3, "{worst:e}");
        if available(&device) {
            let worst = worst_difference(&device, UNITS, f16, f32, false);
            eprintln!("convolution on matrix units: worst {worst:e} of 1 + |value|");
            assert!(worst < 1.5e-3, "{worst:e}");
        }
    }

    /// In f32, as three products of f16 halves: burn's f32 sums of the same values to f32's
    /// accuracy (about 10⁻⁶ of the largest |value|, where f16 values or TF32 are 10⁻³), inputs
    /// past f16's largest value and near its smallest included.
    #[test]
    fn on_a_gpu_the_kernel_computes_f32_sums_in_f16_halves() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let f32 = FloatDType::F32;
        let worst = worst_difference(&device, EMULATED, f32, f32, false);
        eprintln!("f32 convolution on matrix units, emulated: worst {worst:e} of the largest |value|");
        assert!(worst < F32_BOUND, "{worst:e}");
        if available(&device) {
            let worst = worst_difference(&device, UNITS, f32, f32, false);
            eprintln!("f32 convolution on matrix units: worst {worst:e} of the largest |value|");
            assert!(worst < F32_BOUND, "{worst:e}");
        }
    }

    /// In f32 to TF32's accuracy, one product of the `hi` halves: within the tuner's bound for
    /// TF32 (10⁻³ of the largest |value|), and further from f32's sums than three products are
    /// (so one product is what ran).
    #[test]
    fn on_a_gpu_the_kernel_computes_f32_sums_to_tf32_accuracy() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let f32 = FloatDType::F32;
        let modes = if available(&device) { vec![EMULATED, UNITS] } else { vec![EMULATED] };
        for mode in modes {
            let worst = worst_difference(&device, mode, f32, f32, true);
            eprintln!(
                "f32 convolution on matrix units, one product (mode {mode}): worst {worst:e} of the largest |value|"
            );
            assert!(worst < 1e-3 && worst > 4.0 * F32_BOUND, "{worst:e}");
        }
    }

    /// What the f32 layers' three products may differ from burn's f32 sums, relative to the
    /// largest |value|.
    const F32_BOUND: f32 = 1e-5;

    /// The tensor-core kernel as burn's SPIR-V compiler builds it for NVIDIA's driver, with no
    /// such GPU here ([`gpu::spirv_for_matrix_units`]), for every block and kind of layer (f16;
    /// f32 by three products of halves, and by one): it compiles, on the path with workgroup
    /// memory laid out explicitly (NVIDIA's, not lavapipe's); its cooperative-matrix
    /// instructions are SPV_KHR_cooperative_matrix's alone (no NVIDIA extension, which a
    /// driver may lack); and it holds one multiply-add for each product the kernel's source
    /// asks for (27 taps × 2 fragments × the warp's runs, three times for three products) and
    /// one store for each accumulator. `LIGHTBOX_SPIRV_DIR` keeps each disassembly there.
    #[cfg(feature = "spirv-compile-test")]
    #[test]
    fn burns_spirv_compiler_builds_the_kernel_for_tensor_cores() -> anyhow::Result<()> {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let f16 = TILES.into_iter().map(|t| (t, false, false));
        let f32 = TILES.into_iter().filter(Tile::splits).flat_map(|t| [(t, true, true), (t, true, false)]);
        let keep = std::env::var_os("LIGHTBOX_SPIRV_DIR").map(std::path::PathBuf::from);
        for (tile, split, three) in f16.chain(f32) {
            let layer = format!(
                "stride{}-{}x{}x{}-{}runs-{}",
                tile.stride,
                tile.width(),
                tile.rows,
                tile.planes,
                tile.per_warp,
                match (split, three) {
                    (false, _) => "f16",
                    (true, true) => "f32",
                    (true, false) => "tf32",
                }
            );
            let text = gpu::spirv_for_matrix_units(&device, tile, split, three)
                .map_err(|why| anyhow::anyhow!("{layer}: burn's SPIR-V compiler refused it: {why}"))?;
            if let Some(dir) = &keep {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("conv3d_k3_mma-{layer}.spvasm")), &text)?;
            }
            let count = |op: &str| text.lines().filter(|l| l.split_whitespace().any(|w| w == op)).count();
            let declared = |what: &str| -> Vec<&str> {
                text.lines().filter_map(|l| l.trim().strip_prefix(what)).map(|l| l.trim().trim_matches('"')).collect()
            };
            let (capabilities, extensions) = (declared("OpCapability "), declared("OpExtension "));
            let products = 27 * 2 * tile.per_warp * if three { 3 } else { 1 };
            eprintln!(
                "{layer}: {} instructions, {} multiply-adds, {} matrix loads; capabilities {capabilities:?}, \
                 extensions {extensions:?}",
                text.lines().count(),
                count("OpCooperativeMatrixMulAddKHR"),
                count("OpCooperativeMatrixLoadKHR"),
            );
            assert_eq!(count("OpCooperativeMatrixMulAddKHR"), products, "{layer}: one multiply-add a product");
            assert_eq!(count("OpCooperativeMatrixStoreKHR"), 2 * tile.per_warp, "{layer}: one store an accumulator");
            for needed in ["CooperativeMatrixKHR", "WorkgroupMemoryExplicitLayoutKHR"] {
                assert!(capabilities.contains(&needed), "{layer}: no {needed} in {capabilities:?}");
            }
            let nvidia = |d: &&str| d.ends_with("NV") || d.starts_with("SPV_NV");
            assert!(!capabilities.iter().chain(&extensions).any(nvidia), "{layer}: {capabilities:?} {extensions:?}");
        }
        Ok(())
    }

    /// burn's SPIR-V compiler turns the kernel's cooperative-matrix operations into SPIR-V, and
    /// a GPU whose driver does not offer them (lavapipe) refuses it: an error the tuner reads
    /// as a way to leave out, not a crash. (WGSL has no cooperative matrices at all.)
    #[cfg(feature = "gpu-spirv")]
    #[test]
    fn a_gpu_without_matrix_units_refuses_the_kernel_as_an_error() {
        let mut draw = crate::testing::Values::new(2);
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        // Each block of TILES: its cooperative-matrix code is built (expanded) before the
        // device refuses it.
        let blocks = [([1, 16, 2, 4, 32], 1, 2), ([1, 16, 2, 4, 16], 1, 2), ([1, 16, 2, 4, 32], 2, 2)];
        let four = [([1, 16, 2, 4, 32], 1, 4), ([1, 16, 2, 4, 16], 1, 4)];
        let f16 = FloatDType::F16;
        let layers = blocks.into_iter().chain(four).map(|b| (b, f16, false));
        // And the f32 layers' blocks, with their scratch and three products, and one block with
        // one product.
        let f32 = FloatDType::F32;
        let split = four.into_iter().chain([blocks[2]]).map(|b| (b, f32, false)).chain([(blocks[2], f32, true)]);
        for ((shape, stride, per_warp), dtype, tf32) in layers.chain(split) {
            let x = draw.signed(shape, &device);
            let weight = draw.signed([32, 16, 3, 3, 3], &device);
            let options = ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
            // Read back as it is (burn's reductions keep sums in workgroup memory, which crashes
            // lavapipe in SPIR-V builds: see `abs_max_kernel`).
            let ours = run(x.cast(dtype), weight.cast(dtype), None, &options, per_warp, FORCED, tf32).try_into_data();
            eprintln!("forced onto matrix units: {:?}", ours.as_ref().map(|d| d.num_elements()));
            assert_eq!(ours.is_ok(), available(&device), "{ours:?}");
        }
    }
}
