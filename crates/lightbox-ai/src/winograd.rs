//! 3-D convolution by Winograd's minimal filtering (Lavin and Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016, applied along each of the three axes): for the 3×3×3,
//! stride-1 convolutions that make up most of nnU-Net's work. F(m, 3) computes m outputs of a
//! 3-tap filter from m + 2 inputs with m + 2 multiplications instead of 3m; in 3-D, a tile of
//! m³ outputs takes (m + 2)³ products per input and output channel instead of 27·m³:
//! - F(2, 3): 64 for 216, 3.4 times fewer; the transforms only add and subtract (and halve the
//!   weights), so it is as accurate as the direct sums in f32 and close in f16;
//! - F(4, 3): 216 for 1 728, 8 times fewer; its transforms multiply by up to 8 (25 in 3-D for
//!   the input), so it loses a few bits, which the tuner's check against burn's convolution
//!   measures before it is ever kept.
//!
//! The products are one batch of (m + 2)³ matrix products, `[tiles, C] · [C, O]`, by burn's
//! matrix kernel (tensor cores where burn has them); the transforms are burn tensor operations,
//! so the same code runs on every backend. cuDNN, behind PyTorch's `Conv3d`, has no 3-D
//! Winograd: its 3-D convolutions are implicit GEMMs doing all 27 multiply-adds per tap.

use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::ops::{ConvOptions, PadMode};

/// One Winograd algorithm F(m, 3): its transforms, each row a linear combination.
#[derive(Clone, Copy, Debug)]
pub struct Transform {
    /// Outputs a tile computes along an axis.
    pub m: usize,
    /// Bᵀ, (m + 2) × (m + 2): the input tile's transform.
    input: &'static [&'static [f32]],
    /// G, (m + 2) × 3: the filter's.
    filter: &'static [[f32; 3]],
    /// Aᵀ, m × (m + 2): back from products to outputs.
    output: &'static [&'static [f32]],
}

/// F(2×2×2, 3×3×3).
pub const F2: Transform = Transform {
    m: 2,
    input: &[&[1.0, 0.0, -1.0, 0.0], &[0.0, 1.0, 1.0, 0.0], &[0.0, -1.0, 1.0, 0.0], &[0.0, 1.0, 0.0, -1.0]],
    filter: &[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]],
    output: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

/// F(4×4×4, 3×3×3), interpolating at 0, ±1, ±2 and infinity.
pub const F4: Transform = Transform {
    m: 4,
    input: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    filter: &[
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    output: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

impl Transform {
    /// Inputs (and products) of a tile along an axis: m + 2.
    pub fn alpha(&self) -> usize {
        self.m + 2
    }

    /// [`F2`] for 2, [`F4`] otherwise.
    pub fn of(m: usize) -> Self {
        if m == 2 { F2 } else { F4 }
    }

    /// Bᵀ's rows.
    pub fn input_rows(&self) -> &'static [&'static [f32]] {
        self.input
    }

    /// Aᵀ's rows.
    pub fn output_rows(&self) -> &'static [&'static [f32]] {
        self.output
    }
}

/// Output voxels under which the tuner does not try Winograd's algorithms: PlainConvUNet's
/// layers of 8³ and less, where a convolution is bound by its weights (whose transform is
/// (m + 2)³/27 times their size) and by its launches, not by its multiplications.
pub const LEAST_VOXELS: usize = 16 * 16 * 16;

/// The largest transformed weight, in f32, that [`applies`] takes on: half of what a shader may
/// bind by wgpu's default limits (128 MiB; lavapipe failed to allocate the 169 MiB of F(4, 3)'s
/// for a 640 → 320 layer).
pub const MOST_FILTER_BYTES: usize = 64 << 20;

/// Whether the tuner tries [`conv3d_winograd`] by `transform` on an `input` by a `weight`
/// (dims): [`covers`] it, with at least [`LEAST_VOXELS`] outputs and a transformed weight of at
/// most [`MOST_FILTER_BYTES`].
pub fn applies(input: [usize; 5], weight: [usize; 5], options: &ConvOptions<3>, transform: &Transform) -> bool {
    let voxels: usize =
        (0..3).map(|a| (input[2 + a] + options.padding[a].0 + options.padding[a].1).saturating_sub(2)).product();
    covers(input, weight, options)
        && voxels >= LEAST_VOXELS
        && transform.alpha().pow(3) * weight[0] * weight[1] * 4 <= MOST_FILTER_BYTES
}

/// Whether [`conv3d_winograd`] computes the convolution of an `input` by a `weight` (dims):
/// 3×3×3, stride 1, not dilated or grouped.
pub fn covers(input: [usize; 5], weight: [usize; 5], options: &ConvOptions<3>) -> bool {
    options.groups == 1
        && options.dilation == [1; 3]
        && options.stride == [1; 3]
        && weight[2..] == [3, 3, 3]
        && weight[1] == input[1]
        && (0..3).all(|a| input[2 + a] + options.padding[a].0 + options.padding[a].1 >= 3)
}

/// The convolution of `x` `[N, C, D, H, W]` by `weight` `[O, C, 3, 3, 3]` (plus `bias`) by
/// Winograd's `transform`, computed in the weight's dtype. Tiles are transformed in slabs of
/// output depth of at most `budget` bytes of transformed input (at least one tile deep), as
/// [`crate::ops::conv3d_gemm`] bounds its columns. Convolutions it does not cover
/// ([`covers`]) go to burn's kernels.
pub fn conv3d_winograd(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    budget: usize,
    transform: &Transform,
) -> Tensor<5> {
    if !covers(x.dims(), weight.dims(), options) {
        return burn::tensor::module::conv3d(x, weight, bias, options.clone());
    }
    let m = transform.m;
    by_slabs(x, weight, bias, options, budget, transform, |x, out, tiles| {
        // Zeros around, up to m·(tiles + 1) along each axis: the last tile reads m + 2 inputs
        // from m·(tiles − 1) on, and every tile's m + 2 inputs are two blocks of m.
        let size = [x.dims()[2], x.dims()[3], x.dims()[4]];
        let padding: [(usize, usize); 3] =
            std::array::from_fn(|a| (options.padding[a].0, m * (tiles[a] + 1) - size[a] - options.padding[a].0));
        let x = x.pad(padding, PadMode::Constant(0.0));
        let n = x.dims()[0];
        move |filter: &Tensor<3>, z0: usize, deep: usize| {
            let rows = x.clone().narrow(2, m * z0, m * (deep + 1));
            let slab_tiles = [deep, tiles[1], tiles[2]];
            let products = transformed_input(rows, transform, slab_tiles).matmul(filter.clone());
            let y = outputs(products, transform, n, slab_tiles);
            // Whole tiles: cut to the grid.
            let [_, o, depth, height, width] = y.dims();
            let depth = depth.min(out[0] - m * z0);
            if [depth, height, width] == [m * deep, out[1], out[2]] {
                y
            } else {
                y.slice([0..n, 0..o, 0..depth, 0..out[1].min(height), 0..out[2].min(width)])
            }
        }
    })
}

/// What both implementations of Winograd's convolution share ([`conv3d_winograd`] here, and
/// [`crate::kernels::conv3d_winograd`]'s transform kernels): the layer in the weight's dtype,
/// its transformed weight `[(m + 2)³, C, O]`, and slabs of tile depth of at most `budget`
/// bytes of transformed input (or products), concatenated, the bias added. `prepare` takes
/// the input (in that dtype), the output's size and the tiles along each axis, and gives what
/// computes one slab — from the transformed weight, the first tile deep and the tiles deep —
/// as `[N, O, depth, H', W']`, cut to the output's grid.
pub(crate) fn by_slabs<S: Fn(&Tensor<3>, usize, usize) -> Tensor<5>>(
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Option<Tensor<1>>,
    options: &ConvOptions<3>,
    budget: usize,
    transform: &Transform,
    prepare: impl FnOnce(Tensor<5>, [usize; 3], [usize; 3]) -> S,
) -> Tensor<5> {
    let bytes = weight.dtype().size();
    let dtype = FloatDType::from(weight.dtype());
    let x = x.cast(dtype);
    let [n, c, d, h, w] = x.dims();
    let o = weight.dims()[0];
    let size = [d, h, w];
    let out: [usize; 3] = std::array::from_fn(|a| size[a] + options.padding[a].0 + options.padding[a].1 - 2);
    let tiles: [usize; 3] = std::array::from_fn(|a| out[a].div_ceil(transform.m));
    let filter = transformed_filter(weight, transform).cast(dtype);
    let per_tile_deep = transform.alpha().pow(3) * n * tiles[1] * tiles[2] * c.max(o) * bytes;
    let slab = (budget / per_tile_deep.max(1)).clamp(1, tiles[0]);
    let one = prepare(x, out, tiles);
    let slabs: Vec<Tensor<5>> =
        (0..tiles[0]).step_by(slab).map(|z0| one(&filter, z0, slab.min(tiles[0] - z0))).collect();
    let y = Tensor::cat(slabs, 2);
    match bias {
        Some(b) => y + b.cast(dtype).reshape([1, o, 1, 1, 1]),
        None => y,
    }
}

/// G·g·Gᵀ along each axis of the weight `[O, C, 3, 3, 3]`, in f32: `[α³, C, O]` (one
/// `[C, O]` matrix per product of the tile).
pub(crate) fn transformed_filter(weight: Tensor<5>, transform: &Transform) -> Tensor<3> {
    let [o, c, _, _, _] = weight.dims();
    let alpha = transform.alpha();
    let g = transform.filter;
    // The three axes' G at once: (G ⊗ G ⊗ G), [α³, 27].
    let mut kron = Vec::with_capacity(alpha.pow(3) * 27);
    for a in 0..alpha {
        for b in 0..alpha {
            for e in 0..alpha {
                for i in 0..3 {
                    for j in 0..3 {
                        for k in 0..3 {
                            kron.push(g[a][i] * g[b][j] * g[e][k]);
                        }
                    }
                }
            }
        }
    }
    let device = weight.device();
    let kron = Tensor::<2>::from_data(burn::tensor::TensorData::new(kron, [alpha.pow(3), 27]), &device);
    let weight = weight.cast(FloatDType::F32).reshape([o * c, 27]);
    kron.matmul(weight.transpose()).reshape([alpha.pow(3), o, c]).swap_dims(1, 2)
}

/// Bᵀ·d·B along each axis of every tile of `rows` `[N, C, m·(tiles + 1), …]` (zero-padded):
/// `[α³, N·tiles, C]`, the left operands of the batch of products.
fn transformed_input(rows: Tensor<5>, transform: &Transform, tiles: [usize; 3]) -> Tensor<3> {
    let [n, c, d, h, w] = rows.dims();
    let alpha = transform.alpha();
    let mut u: Tensor<8> = rows.reshape([n, c, d, 1, h, 1, w, 1]);
    for (k, axis) in [2, 4, 6].into_iter().enumerate() {
        u = along_input_axis(u, axis, tiles[k], transform);
    }
    // [N, C, Td, α, Th, α, Tw, α] → [α, α, α, N, Td, Th, Tw, C]
    u.permute([3, 5, 7, 0, 2, 4, 6, 1]).reshape([alpha.pow(3), n * tiles.iter().product::<usize>(), c])
}

/// The input transform along `axis` of `u` (m·(tiles + 1) long there, 1 at `axis + 1`): tiles
/// at `axis`, their α transformed values at `axis + 1`.
fn along_input_axis(u: Tensor<8>, axis: usize, tiles: usize, transform: &Transform) -> Tensor<8> {
    let m = transform.m;
    let mut dims = u.dims();
    dims[axis] = tiles;
    dims[axis + 1] = m;
    // Tile t's input j = q·m + r (q is 0 or 1) is element r of block t + q: two views, each
    // the axis cut into blocks of m.
    let blocks = [0, 1].map(|q| u.clone().narrow(axis, q * m, m * tiles).reshape(dims));
    let input = |j: usize| blocks[j / m].clone().narrow(axis + 1, j % m, 1);
    Tensor::cat(transform.input.iter().map(|row| combination(row, &input)).collect(), axis + 1)
}

/// Aᵀ·M·A along each axis of the products `[α³, N·tiles, O]`: the outputs
/// `[N, O, m·Td, m·Th, m·Tw]`.
fn outputs(products: Tensor<3>, transform: &Transform, n: usize, tiles: [usize; 3]) -> Tensor<5> {
    let [td, th, tw] = tiles;
    let (m, alpha) = (transform.m, transform.alpha());
    let o = products.dims()[2];
    let mut y: Tensor<8> = products.reshape([alpha, alpha, alpha, n, td, th, tw, o]);
    for axis in 0..3 {
        let rows = transform.output.iter().map(|row| combination(row, &|j| y.clone().narrow(axis, j, 1))).collect();
        y = Tensor::cat(rows, axis);
    }
    // [m, m, m, N, Td, Th, Tw, O] → [N, O, Td, m, Th, m, Tw, m]
    y.permute([3, 7, 4, 0, 5, 1, 6, 2]).reshape([n, o, td * m, th * m, tw * m])
}

/// Σⱼ `row[j]`·`term(j)` over the nonzero coefficients (adding and subtracting where they
/// are ±1).
fn combination(row: &[f32], term: &dyn Fn(usize) -> Tensor<8>) -> Tensor<8> {
    let mut sum: Option<Tensor<8>> = None;
    for (j, &k) in row.iter().enumerate().filter(|(_, k)| **k != 0.0) {
        let t = term(j);
        sum = Some(match sum {
            None if k == 1.0 => t,
            None => t.mul_scalar(k),
            Some(s) if k == 1.0 => s + t,
            Some(s) if k == -1.0 => s - t,
            Some(s) => s + t.mul_scalar(k),
        });
    }
    // Every row of the transforms above has a nonzero coefficient.
    sum.unwrap_or_else(|| term(0).zeros_like())
}

#[cfg(test)]
mod tests {
    use burn::tensor::{FloatDType, ops::ConvOptions};

    use super::{F2, F4, Transform};

    /// In one dimension, Aᵀ[(G·g) ⊙ (Bᵀ·d)] is the correlation of d by g, exactly up to
    /// rounding: the transforms' constants are right.
    #[test]
    fn one_axis_is_a_correlation() {
        let g = [0.3f64, -1.7, 2.2];
        for t in [F2, F4] {
            let d: Vec<f64> = (0..t.alpha()).map(|i| ((i * 7 % 5) as f64) - 1.5).collect();
            let gg: Vec<f64> = t.filter.iter().map(|r| (0..3).map(|i| f64::from(r[i]) * g[i]).sum()).collect();
            let bd: Vec<f64> = t.input.iter().map(|r| r.iter().zip(&d).map(|(b, x)| f64::from(*b) * x).sum()).collect();
            for (k, row) in t.output.iter().enumerate() {
                let y: f64 = row.iter().enumerate().map(|(j, a)| f64::from(*a) * gg[j] * bd[j]).sum();
                let direct: f64 = (0..3).map(|i| g[i] * d[k + i]).sum();
                assert!((y - direct).abs() < 1e-6, "F({}, 3) output {k}: {y} against {direct}", t.m);
            }
        }
    }

    fn against_burn(
        t: &Transform,
        input: [usize; 5],
        out_channels: usize,
        padding: usize,
        budget: usize,
        dtype: FloatDType,
    ) -> anyhow::Result<f32> {
        let device = crate::AiDevice::cpu().device;
        let mut draw = crate::testing::Values::new(1);
        let x = draw.signed(input, &device);
        let weight = draw.signed([out_channels, input[1], 3, 3, 3], &device);
        let bias = draw.signed([out_channels], &device);
        let options = ConvOptions::new([1; 3], [padding; 3], [1; 3], 1);
        anyhow::ensure!(super::covers(input, weight.dims(), &options));
        let reference = burn::tensor::module::conv3d(x.clone(), weight.clone(), Some(bias.clone()), options.clone());
        let y = super::conv3d_winograd(x.cast(dtype), weight.cast(dtype), Some(bias.cast(dtype)), &options, budget, t);
        anyhow::ensure!(y.dims() == reference.dims(), "{:?} against {:?}", y.dims(), reference.dims());
        anyhow::ensure!(FloatDType::from(y.dtype()) == dtype, "computed in {:?}", y.dtype());
        let scale: f32 = reference.clone().abs().max().into_scalar();
        let worst: f32 = (y.cast(FloatDType::F32) - reference).abs().max().into_scalar();
        Ok(worst / scale)
    }

    /// Both algorithms give burn's convolution on grids that are not whole tiles, with two
    /// images, a bias, and in several slabs (a budget of one tile deep) or one; with padding 1
    /// (nnU-Net's) and none.
    #[test]
    fn matches_burns_convolution() -> anyhow::Result<()> {
        // F(4, 3): TF32's accuracy, about 10⁻⁴ (its transforms multiply by up to 125 going in
        // and 512 coming out); on random values its worst case went past 2·10⁻⁵ once in CI
        // (2.07·10⁻⁵), so the bound is TF32's. A wrong transform is off by order one.
        for (t, tolerance) in [(F2, 2e-6), (F4, 1e-4)] {
            for (input, padding, budget) in
                [([2, 3, 7, 6, 9], 1, 1), ([1, 5, 10, 11, 8], 1, 1 << 30), ([1, 4, 9, 5, 7], 0, 1)]
            {
                let error = against_burn(&t, input, 6, padding, budget, FloatDType::F32)?;
                assert!(error < tolerance, "F({}, 3) on {input:?}, padding {padding}: {error:e}", t.m);
            }
        }
        Ok(())
    }

    /// In f16, F(2, 3) stays within the tuner's check (4·10⁻³ of the largest value), summing 216
    /// terms of 16 channels.
    #[test]
    fn half_precision_stays_within_the_check() -> anyhow::Result<()> {
        let error = against_burn(&F2, [1, 16, 8, 8, 8], 8, 1, 1 << 30, FloatDType::F16)?;
        assert!(error < 4e-3, "{error:e}");
        Ok(())
    }

    /// Strided, dilated, grouped and other kernel sizes are not Winograd's: burn's kernels.
    #[test]
    fn declines_what_it_does_not_cover() {
        let plain = ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
        assert!(super::covers([1, 4, 8, 8, 8], [4, 4, 3, 3, 3], &plain));
        assert!(!super::covers([1, 4, 8, 8, 8], [4, 4, 3, 3, 3], &ConvOptions::new([2; 3], [1; 3], [1; 3], 1)));
        assert!(!super::covers([1, 4, 8, 8, 8], [4, 4, 3, 3, 3], &ConvOptions::new([1; 3], [1; 3], [2; 3], 1)));
        assert!(!super::covers([1, 4, 8, 8, 8], [4, 2, 3, 3, 3], &ConvOptions::new([1; 3], [1; 3], [1; 3], 2)));
        assert!(!super::covers([1, 4, 8, 8, 8], [4, 4, 1, 1, 1], &plain));
        assert!(!super::covers([1, 4, 1, 8, 8], [4, 4, 3, 3, 3], &ConvOptions::new([1; 3], [0; 3], [1; 3], 1)));
    }

    /// The tuner tries them from 16³ outputs on, while the transformed weight stays under
    /// 64 MiB: PlainConvUNet's 512 → 256 layer at 16³ by F(2, 3) (34 MB) but not F(4, 3)
    /// (113 MB), and nothing at 8³.
    #[test]
    fn the_tuner_tries_them_where_they_may_pay() {
        let plain = ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
        assert!(super::applies([1, 32, 128, 128, 128], [32, 32, 3, 3, 3], &plain, &F4));
        assert!(super::applies([1, 512, 16, 16, 16], [256, 512, 3, 3, 3], &plain, &F2));
        assert!(!super::applies([1, 512, 16, 16, 16], [256, 512, 3, 3, 3], &plain, &F4));
        assert!(!super::applies([1, 320, 8, 8, 8], [320, 320, 3, 3, 3], &plain, &F2));
    }
}
