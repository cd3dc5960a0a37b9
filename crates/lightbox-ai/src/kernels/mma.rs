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

    const fn holds(&self) -> bool {
        (self.per_warp == PER_WARP[0] || self.per_warp == PER_WARP[1])
            && (self.runs * self.rows * self.planes).is_multiple_of(self.per_warp)
            // One or two voxels of the block a thread when it is written out.
            && self.voxels().is_multiple_of(self.threads())
            && self.staged_len() <= self.halo_len()
            // Within lavapipe's 32 KiB, so the CPU tests run the kernels an NVIDIA GPU runs.
            && self.halo_len() * 2 <= super::TILED_WORKGROUP_BYTES
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
/// stride 1 only: [`conv3d_k3_mma_fits`]).
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
    /// `x` `[N, C, D, H, W]` in f16, `weight` `[C'·27, O]` (the `[O, C, 3, 3, 3]` weight padded
    /// with zeros to C' input channels, C rounded up to a multiple of [`CHUNK`], its output
    /// channels last, O a multiple of [`TILE_O`]), `bias` `[O]` in f32: the convolution, padding
    /// 1, `stride` 1 or 2, plus the bias → `[N, O, D', H', W']` in f16, `per_warp` runs a warp
    /// (one of [`PER_WARP`]; four at stride 1 only), as `mode` says ([`UNITS`], [`EMULATED`]
    /// or [`FORCED`]). Elsewhere than on a GPU, burn's convolution.
    #[fusion(dtype = x, shape = mma_shape(x, weight, stride))]
    fn conv3d_k3_mma(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        per_warp: usize,
        mode: usize,
    ) -> FloatTensor<Self>;
}

fn mma_shape(x: &Shape, weight: &Shape, stride: &usize) -> Shape {
    let out = |len: usize| (len - 1) / *stride + 1;
    Shape::new([x[0], weight[1], out(x[2]), out(x[3]), out(x[4])])
}

/// Whether [`conv3d_k3_mma`] computes this convolution by its kernel: f16, 3×3×3, padding 1,
/// the same stride 1 or 2 on every axis, no dilation or groups, output channels a multiple of
/// [`TILE_O`] (every 3³ layer of PlainConvUNet 32…320), `per_warp` runs a warp (one of
/// [`PER_WARP`]; four at stride 1 only). Input channels that are not a multiple of [`CHUNK`]
/// are padded with zero weights (the first layer's one channel computes as 16).
pub fn conv3d_k3_mma_fits(
    input: [usize; 5],
    weight: [usize; 5],
    options: &ConvOptions<3>,
    dtype: DType,
    per_warp: usize,
) -> bool {
    let [o, c, kd, kh, kw] = weight;
    let stride_ok = match per_warp {
        2 => options.stride == [1; 3] || options.stride == [2; 3],
        4 => options.stride == [1; 3],
        _ => false,
    };
    dtype == DType::F16
        && stride_ok
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
    run(x, weight, bias, options, per_warp, UNITS)
}

/// The same, the kernel emulated on a GPU without matrix units (tests).
#[cfg(test)]
pub(crate) fn conv3d_k3_mma_emulated(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
) -> Tensor<5> {
    run(x, weight, bias, options, PER_WARP[0], EMULATED)
}

fn run(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    per_warp: usize,
    mode: usize,
) -> Tensor<5> {
    let x = x.cast(FloatDType::from(weight.dtype()));
    if !conv3d_k3_mma_fits(x.dims(), weight.dims(), options, weight.dtype(), per_warp) {
        return burn::tensor::module::conv3d(x, weight, bias, options.clone());
    }
    let [o, c, _, _, _] = weight.dims();
    let f32 = FloatDType::F32;
    let bias = bias.map_or_else(|| Tensor::<1>::zeros([o], &weight.device()).cast(f32), |b| b.cast(f32));
    // Whole chunks of input channels: the kernel reads every weight row of a chunk.
    let padded = c.next_multiple_of(CHUNK);
    let weight = if padded > c {
        let zeros =
            Tensor::<5>::zeros([o, padded - c, 3, 3, 3], &weight.device()).cast(FloatDType::from(weight.dtype()));
        Tensor::cat(vec![weight, zeros], 1)
    } else {
        weight
    };
    let weight = weight.reshape([o, padded * 27]).swap_dims(0, 1);
    Tensor::from_dispatch(<Dispatch as MmaKernels>::conv3d_k3_mma(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options.stride[0],
        per_warp,
        mode,
    ))
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
    ) -> FloatTensor<Self> {
        let width = mma_shape(&x.shape(), &weight.shape(), &stride)[4];
        let tile = tile_for(stride, width, per_warp);
        let hardware = &x.client.properties().hardware;
        let fits = x.dtype == DType::F16
            && weight.dtype == DType::F16
            && tile.halo_len() * 2 <= hardware.max_shared_memory_size
            && tile.threads() <= hardware.max_units_per_cube as usize;
        let units = gpu::supported(&x.client);
        match (fits, mode) {
            (true, _) if units => gpu::conv3d_k3_mma(x, weight, bias, tile, true),
            (true, FORCED) => gpu::conv3d_k3_mma(x, weight, bias, tile, true),
            (true, EMULATED) => gpu::conv3d_k3_mma(x, weight, bias, tile, false),
            _ => by_burn::<Self>(x, weight, bias, stride),
        }
    }
}

mod gpu {
    use burn::backend::TensorMetadata;
    use burn_cubecl::{kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
    use cubecl::client::Client;
    use cubecl::ir::{ElemType, FloatKind, features::MmaConfig};
    use cubecl::prelude::*;

    use super::super::gpu::within;
    use super::{CHUNK, RUN, TILE_O, Tile};

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

    /// Stages input channels `[c0, c0 + CHUNK)` of the block whose first output voxel is
    /// `(oz, y0, x0)` of image `n`, with its border, `halo` `[hz, hy, hx]` voxels at `stride`:
    /// value `(pz, py, px, c)` at `((pz·hy + py)·hx + px)·CHUNK + c`, input voxel
    /// `(oz·stride + pz − 1, …)`, zero outside the image and past its channels.
    ///
    /// A row of the halo (`pz`, `py`) is `hx · CHUNK` values in a row of workgroup memory, and
    /// every thread takes the same places (x, channel), its *slots*, in every row: their
    /// addresses, and whether they are inside the image along x and among its channels, are
    /// worked out once a chunk, and whether a row is inside the image once a row (the same for
    /// every thread), so each value costs a test, a load, an address and a store. A plane's
    /// rows and slots are unrolled (the block's size is known when the kernel is built), so a
    /// thread's loads of a plane are independent of each other and in flight at once. Within a row, two channels, then
    /// x, fastest: a warp reads 16 voxels of an input row in each of two channels (two whole
    /// 32-byte sectors), and its pairs of threads write adjacent values, which halves the bank
    /// conflicts of writes 16 values apart.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn stage_input<F: Float>(
        input: &Tensor<F>,
        halo: &mut Shared<[F]>,
        n: usize,
        c0: usize,
        oz: usize,
        y0: usize,
        x0: usize,
        #[comptime] hz: usize,
        #[comptime] hy: usize,
        #[comptime] hx: usize,
        #[comptime] stride: usize,
        #[comptime] threads: usize,
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
                            v = input[from[s] + row - 1];
                        }
                        halo[at + to[s]] = v;
                    }
                }
            }
        }
    }

    /// One workgroup: output channels `[ob·TILE_O, +TILE_O)` of the block at `(oz, y0, x0)` of
    /// image `n` (`runs`, `rows`, `planes`, `per_warp`: [`Tile`]). Warp `w` computes runs
    /// `per_warp·w` to `per_warp·w + per_warp − 1` of the block (run `q`: row `q / runs`, the
    /// `q % runs`-th along x; rows plane by plane), each by two fragments of 16 channels. `mma`: by cooperative matrices; else each fragment
    /// operation by the warp's threads, reading the same addresses.
    #[cube(launch, address_type = "dynamic")]
    #[allow(clippy::too_many_arguments)]
    fn conv3d_k3_mma_kernel<F: Float>(
        input: &Tensor<F>,
        weight: &Tensor<F>,
        bias: &Tensor<f32>,
        output: &mut Tensor<F>,
        #[comptime] stride: usize,
        #[comptime] runs: usize,
        #[comptime] rows: usize,
        #[comptime] planes: usize,
        #[comptime] per_warp: usize,
        #[comptime] mma: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let width = RUN * runs;
        let blk = width * rows * planes;
        let threads = 32 * runs * rows * planes / per_warp;
        let hz = (planes - 1) * stride + 3;
        let hy = (rows - 1) * stride + 3;
        let hx = (width - 1) * stride + 3;
        let halo_len = hz * hy * hx * CHUNK;
        let staged_len = TILE_O * blk;
        // A run's consecutive voxels, `stride` apart in the halo.
        let a_stride = stride * CHUNK;

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
        // Rows of the weight between consecutive input channels.
        let k_stride = 27 * out_c;
        let mut halo = Shared::<[F]>::new_slice(halo_len);

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
                stage_input::<F>(input, &mut halo, n, c0, oz, y0, x0, hz, hy, hx, stride, threads);
                sync_cube();
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
                        let a = operand::<F>(
                            cmma::MatrixIdent::A,
                            halo.slice(at, at + 15 * a_stride + CHUNK),
                            a_stride as u32,
                        );
                        let (c_0, c_1) = (acc.index(2 * p), acc.index(2 * p + 1));
                        cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &b0, c_0, c_0);
                        cmma::execute::<F, F, f32, f32, cmma::Plane>(&a, &b1, c_1, c_1);
                    }
                }
                c0 += CHUNK;
            }
            sync_cube();
            // Staged as [channel][voxel of the block]: fragment (run p, channels f) column-major
            // from channel 16·f, voxel v_p, stride blk.
            #[unroll]
            for p in 0..per_warp {
                #[unroll]
                for f in 0..2usize {
                    let staged = cmma::cast::<f32, F, cmma::Plane>(acc.index(2 * p + f));
                    let at = 16 * f * blk + v_base[p];
                    cmma::store(halo.slice_mut(at, staged_len), &staged, blk as u32, cmma::MatrixLayout::ColMajor);
                }
            }
        } else {
            // Lane l holds elements (i, j) = ((8·l + e) / 16, (8·l + e) % 16), e < 8, of each
            // of the warp's fragments (run p, channel fragment f) at 8·(2·p + f) + e.
            let held = 16 * per_warp;
            let mut acc = Array::<f32>::new(held);
            #[unroll]
            for e in 0..held {
                acc[e] = 0.0f32;
            }
            let mut c0 = 0usize;
            while c0 < in_c {
                sync_cube();
                stage_input::<F>(input, &mut halo, n, c0, oz, y0, x0, hz, hy, hx, stride, threads);
                sync_cube();
                for tap in 0..27usize {
                    let (kz, ky, kx) = (tap / 9, tap / 3 % 3, tap % 3);
                    let offset = ((kz * hy + ky) * hx + kx) * CHUNK;
                    let b_at = (c0 * 27 + tap) * out_c + ob * TILE_O;
                    // Not unrolled: the emulation's speed does not matter, its shader's size
                    // (lavapipe compiles it) does.
                    for s in 0..held {
                        let (p, f, e) = (s / 16, s / 8 % 2, s % 8);
                        let q = 8 * lane + e;
                        let (i, j) = (q / 16, q % 16);
                        let a_at = a_base[p] + offset;
                        let mut sum = acc[s];
                        for k in 0..16usize {
                            // A (row-major, stride a_stride) from the run's offset; B (row-major,
                            // stride k_stride) from 16·f.
                            let a = f32::cast_from(halo[a_at + i * a_stride + k]);
                            let b = f32::cast_from(weight[b_at + 16 * f + k * k_stride + j]);
                            sum += a * b;
                        }
                        acc[s] = sum;
                    }
                }
                c0 += CHUNK;
            }
            sync_cube();
            for s in 0..held {
                let (p, f, e) = (s / 16, s / 8 % 2, s % 8);
                let q = 8 * lane + e;
                let (i, j) = (q / 16, q % 16);
                // Column-major from (16·f)·blk + v_p, stride blk.
                halo[(16 * f + j) * blk + v_base[p] + i] = F::cast_from(acc[s]);
            }
        }
        sync_cube();
        // The block out with the bias (in f32, rounded once more to f16). A block has one or
        // two voxels a thread: each thread writes its voxels' 32 channels, x fastest across
        // threads, each voxel's place worked out once.
        let volume = d * h * w;
        let first = ob * TILE_O;
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
                    output[at + oc * volume] = F::cast_from(f32::cast_from(halo[oc * blk + v]) + bias[first + oc]);
                }
            }
        }
    }

    /// [`conv3d_k3_mma_kernel`] over the whole output by blocks of `tile` (`mma`: on
    /// cooperative matrices).
    pub(super) fn conv3d_k3_mma(
        x: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        tile: Tile,
        mma: bool,
    ) -> CubeTensor {
        let x = into_contiguous(x);
        let weight = into_contiguous(weight);
        let bias = into_contiguous(bias);
        let shape = super::mma_shape(&x.shape(), &weight.shape(), &tile.stride);
        let output = empty_device_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
        let [n, o, d, h, w] = output.shape().dims::<5>();
        let cubes = n * d.div_ceil(tile.planes) * h.div_ceil(tile.rows) * w.div_ceil(tile.width()) * (o / TILE_O);
        if cubes == 0 {
            return output;
        }
        let address = x.required_address_type().max(weight.required_address_type()).max(output.required_address_type());
        let dtype = burn::backend::cubecl::dtype_to_storage_type(x.dtype);
        let client = x.client.clone();
        let cube_dim = CubeDim::new_1d(tile.threads() as u32);
        let cube_count = cubecl::calculate_cube_count_elemwise(&client, cubes * tile.threads(), cube_dim);
        conv3d_k3_mma_kernel::launch(
            &client,
            cube_count,
            cube_dim,
            address,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            tile.stride,
            tile.runs,
            tile.rows,
            tile.planes,
            tile.per_warp,
            mma,
            dtype,
        );
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DeviceKind, Distribution};

    /// Largest |ours − burn's on the same f16 values| / (1 + |burn's|), over each block of
    /// [`TILES`] (two and four runs a warp) cut by the grid's edge on every axis, several channel chunks and channel
    /// blocks, one and two images, with and without bias. burn's convolution in f32, or where
    /// `reference` is f16 in f16.
    fn worst_difference(device: &Device, mode: usize, reference: FloatDType) -> f32 {
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
        // Four runs a warp at stride 1 only.
        let runs = cases.into_iter().enumerate().flat_map(|(i, case)| {
            PER_WARP.into_iter().filter(move |&p| p == PER_WARP[0] || case.2 == 1).map(move |p| (i, case, p))
        });
        let tiles: Vec<Tile> =
            runs.clone().map(|(_, (shape, _, stride), p)| tile_for(stride, (shape[4] - 1) / stride + 1, p)).collect();
        assert!(TILES.iter().all(|t| tiles.contains(t)), "every block tested");
        let mut worst = 0.0f32;
        for (i, (shape, out, stride), per_warp) in runs {
            let random = |dims: [usize; 5]| Tensor::<5>::random(dims, Distribution::Uniform(-1.0, 1.0), device);
            let x = random(shape).cast(FloatDType::F16);
            let weight = random([out, shape[1], 3, 3, 3]).cast(FloatDType::F16);
            let bias = (i % 2 == 0).then(|| Tensor::<1>::random([out], Distribution::Uniform(-1.0, 1.0), device));
            let options = ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
            assert!(conv3d_k3_mma_fits(x.dims(), weight.dims(), &options, x.dtype(), per_warp));
            let cast = |t: Tensor<5>| t.cast(reference);
            let reference = burn::tensor::module::conv3d(
                cast(x.clone()),
                cast(weight.clone()),
                bias.clone().map(|b| b.cast(reference)),
                options.clone(),
            );
            let ours = run(x, weight, bias, &options, per_warp, mode);
            assert_eq!(ours.dims(), reference.dims());
            assert_eq!(ours.dtype(), DType::F16, "the layer's dtype");
            let floats = |t: Tensor<5>| t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap_or_default();
            let (ours, reference) = (floats(ours), floats(reference));
            assert_eq!(ours.len(), reference.len());
            worst = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(worst, f32::max);
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
    }

    /// On flex, burn's convolution in f16 (which sums in f16 there: 5·10⁻³ from its sums in
    /// f32), the bias added after (one more rounding).
    #[test]
    fn on_flex_it_is_burns_convolution() {
        let device = Device::flex();
        assert!(!available(&device));
        let worst = worst_difference(&device, EMULATED, FloatDType::F16);
        assert!(worst < 1e-3, "{worst:e}");
    }

    /// The kernel emulated on whatever GPU adapter opens (lavapipe where there is none): burn's
    /// sums of the same f16 values to the output's rounding to f16 (twice: the sums, then with
    /// the bias; 2⁻¹¹ of 1 + |value| each).
    #[test]
    fn on_a_gpu_the_kernel_computes_burns_sums() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let worst = worst_difference(&device, EMULATED, FloatDType::F32);
        eprintln!("convolution on matrix units, emulated: worst {worst:e} of 1 + |value|");
        assert!(worst < 1.5e-3, "{worst:e}");
        if available(&device) {
            let worst = worst_difference(&device, UNITS, FloatDType::F32);
            eprintln!("convolution on matrix units: worst {worst:e} of 1 + |value|");
            assert!(worst < 1.5e-3, "{worst:e}");
        }
    }

    /// burn's SPIR-V compiler turns the kernel's cooperative-matrix operations into SPIR-V, and
    /// a GPU whose driver does not offer them (lavapipe) refuses it: an error the tuner reads
    /// as a way to leave out, not a crash. (WGSL has no cooperative matrices at all.)
    #[cfg(feature = "gpu-spirv")]
    #[test]
    fn a_gpu_without_matrix_units_refuses_the_kernel_as_an_error() {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        // Each block of TILES: its cooperative-matrix code is built (expanded) before the
        // device refuses it.
        let blocks = [([1, 16, 2, 4, 32], 1, 2), ([1, 16, 2, 4, 16], 1, 2), ([1, 16, 2, 4, 32], 2, 2)];
        let four = [([1, 16, 2, 4, 32], 1, 4), ([1, 16, 2, 4, 16], 1, 4)];
        for (shape, stride, per_warp) in blocks.into_iter().chain(four) {
            let x = Tensor::<5>::random(shape, Distribution::Uniform(-1.0, 1.0), &device);
            let weight = Tensor::<5>::random([32, 16, 3, 3, 3], Distribution::Uniform(-1.0, 1.0), &device);
            let options = ConvOptions::new([stride; 3], [1; 3], [1; 3], 1);
            let f16 = FloatDType::F16;
            // Read back as it is (burn's reductions crash lavapipe in SPIR-V builds).
            let ours = run(x.cast(f16), weight.cast(f16), None, &options, per_warp, FORCED).try_into_data();
            eprintln!("forced onto matrix units: {:?}", ours.as_ref().map(|d| d.num_elements()));
            assert_eq!(ours.is_ok(), available(&device), "{ours:?}");
        }
    }
}
