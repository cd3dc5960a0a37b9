//! CPU implementations of what the shaders compute: the golden tests' reference, and the planes
//! `MprRenderer` draws on the CPU where the only GPU is a software rasteriser.

use lightbox_core::{StoredVolume, Volume, WindowLevel};

use crate::mpr::{LabelStyle, MprPlane, ScalarStyle, SlabMode, hot, label_colour};
use crate::{RenderError, SliceParams};

/// RGBA8 pixels of one slice, row-major, exactly as `slice.wgsl` draws them.
pub fn slice_rgba(volume: &Volume<f32>, params: SliceParams) -> Result<Vec<u8>, RenderError> {
    let depth = u32::try_from(volume.dims()[2]).unwrap_or(u32::MAX);
    let values =
        volume.slice(params.slice as usize).ok_or(RenderError::SliceOutOfRange { slice: params.slice, depth })?;
    let mut out = Vec::with_capacity(values.len() * 4);
    for &v in values {
        let grey = to_unorm8(params.window.apply(v));
        out.extend_from_slice(&[grey, grey, grey, 255]);
    }
    Ok(out)
}

/// [`slice_rgba`] of a volume in its stored type, rescaled per voxel in f32 as `slice.wgsl`
/// does it: what `SliceRenderer` draws where the GPU cannot hold the volume.
pub fn slice_rgba_stored(volume: &StoredVolume, params: SliceParams) -> Result<Vec<u8>, RenderError> {
    use lightbox_core::StoredVoxels as V;
    let [nx, ny, nz] = volume.dims();
    let slice = params.slice as usize;
    if slice >= nz {
        return Err(RenderError::SliceOutOfRange { slice: params.slice, depth: u32::try_from(nz).unwrap_or(u32::MAX) });
    }
    let (slope, intercept) = (volume.slope as f32, volume.intercept as f32);
    let range = slice * nx * ny..(slice + 1) * nx * ny;
    let grey = |value: f32| to_unorm8(params.window.apply(value * slope + intercept));
    let greys: Vec<u8> = match volume.voxels() {
        V::U8(v) => v[range].iter().map(|&x| grey(f32::from(x))).collect(),
        V::U16(v) => v[range].iter().map(|&x| grey(f32::from(x))).collect(),
        V::I16(v) => v[range].iter().map(|&x| grey(f32::from(x))).collect(),
        V::F32(v) => v[range].iter().map(|&x| grey(x)).collect(),
    };
    Ok(greys.into_iter().flat_map(|g| [g, g, g, 255]).collect())
}

/// RGBA8 pixels of a reformatted plane (or slab), exactly as `mpr.wgsl` draws them: trilinear
/// samples in voxel space, projected along the normal by the plane's mode, window/levelled.
pub fn mpr_rgba(volume: &Volume<f32>, plane: &MprPlane, window: WindowLevel) -> Result<Vec<u8>, RenderError> {
    mpr_rgba_with_labels(volume, None, plane, window)
}

/// [`mpr_rgba`] through a colour table (`lut`): the planes' colours, or the volume rendering's
/// transfer function, as `mpr.wgsl` draws them.
pub fn mpr_rgba_lut(
    volume: &Volume<f32>,
    plane: &MprPlane,
    window: WindowLevel,
    lut: &crate::Lut,
) -> Result<Vec<u8>, RenderError> {
    mpr_rgba_full(volume, None, None, plane, window, Some(lut))
}

/// [`mpr_rgba`] with a scalar map drawn over it in `style` ("hot"), as `mpr.wgsl` draws it.
pub fn mpr_rgba_with_scalars(
    volume: &Volume<f32>,
    scalars: &Volume<f32>,
    style: ScalarStyle,
    plane: &MprPlane,
    window: WindowLevel,
) -> Result<Vec<u8>, RenderError> {
    mpr_rgba_full(volume, None, Some((scalars, style)), plane, window, None)
}

/// [`mpr_rgba`] with a label map drawn over it in `style`, exactly as `mpr.wgsl` draws it.
pub fn mpr_rgba_with_labels(
    volume: &Volume<f32>,
    labels: Option<(&Volume<u8>, LabelStyle)>,
    plane: &MprPlane,
    window: WindowLevel,
) -> Result<Vec<u8>, RenderError> {
    mpr_rgba_full(volume, labels, None, plane, window, None)
}

fn mpr_rgba_full(
    volume: &Volume<f32>,
    labels: Option<(&Volume<u8>, LabelStyle)>,
    scalars: Option<(&Volume<f32>, ScalarStyle)>,
    plane: &MprPlane,
    window: WindowLevel,
    lut: Option<&crate::Lut>,
) -> Result<Vec<u8>, RenderError> {
    let voxels = volume.voxels();
    let grid = Grid { dims: volume.dims(), patient_from_voxel: volume.patient_from_voxel };
    mpr_rgba_sampled(|i| voxels[i], grid, Overlays { labels, scalars, lut }, plane, window)
}

/// [`mpr_rgba`] of a volume in its stored type (8/16-bit integers or float, with its rescale),
/// with its overlays: what `MprRenderer` draws on the CPU for a software rasteriser
/// (`MprRenderer::draw_on_cpu`). Rows are drawn in parallel.
pub fn mpr_rgba_stored(
    volume: &StoredVolume,
    labels: Option<(&Volume<u8>, LabelStyle)>,
    scalars: Option<(&Volume<f32>, ScalarStyle)>,
    plane: &MprPlane,
    window: WindowLevel,
    lut: Option<&crate::Lut>,
) -> Result<Vec<u8>, RenderError> {
    use lightbox_core::StoredVoxels as V;
    let grid = Grid { dims: volume.dims(), patient_from_voxel: volume.patient_from_voxel };
    let overlays = Overlays { labels, scalars, lut };
    // The shader's rescale, per voxel before interpolation, in f32 as the shader does it.
    let (slope, intercept) = (volume.slope as f32, volume.intercept as f32);
    match volume.voxels() {
        V::U8(v) => mpr_rgba_sampled(|i| f32::from(v[i]) * slope + intercept, grid, overlays, plane, window),
        V::U16(v) => mpr_rgba_sampled(|i| f32::from(v[i]) * slope + intercept, grid, overlays, plane, window),
        V::I16(v) => mpr_rgba_sampled(|i| f32::from(v[i]) * slope + intercept, grid, overlays, plane, window),
        V::F32(v) => mpr_rgba_sampled(|i| v[i] * slope + intercept, grid, overlays, plane, window),
    }
}

/// A volume's grid: `[columns, rows, slices]` and its geometry.
#[derive(Clone, Copy)]
struct Grid {
    dims: [usize; 3],
    patient_from_voxel: lightbox_core::Affine3,
}

/// What is drawn over the grey (or through the colour table).
#[derive(Clone, Copy)]
struct Overlays<'a> {
    labels: Option<(&'a Volume<u8>, LabelStyle)>,
    scalars: Option<(&'a Volume<f32>, ScalarStyle)>,
    lut: Option<&'a crate::Lut>,
}

/// The planes and the volume rendering as `mpr.wgsl` draws them, from `at` (the real value of
/// voxel `x + nx * (y + ny * z)`); rows in parallel.
fn mpr_rgba_sampled<F: Fn(usize) -> f32 + Sync>(
    at: F,
    Grid { dims, patient_from_voxel }: Grid,
    Overlays { labels, scalars, lut }: Overlays<'_>,
    plane: &MprPlane,
    window: WindowLevel,
) -> Result<Vec<u8>, RenderError> {
    use rayon::prelude::*;
    let v = plane
        .in_voxels(&patient_from_voxel)
        .ok_or(RenderError::Device("the volume's geometry cannot be inverted".into()))?;
    let [nx, ny, nz] = dims;
    let hi = [nx, ny, nz].map(|n| n as f32 - 1.0);
    const EDGE: f32 = 0.001;
    let at = |x: usize, y: usize, z: usize| at(x + nx * (y + ny * z));
    // The trilinear value at p and the gradient of the same cell (the interpolant's derivative,
    // which the volume rendering shades by: mpr.wgsl's `sample_graded`).
    let graded = |p: [f32; 3]| -> Option<(f32, [f32; 3])> {
        if (0..3).any(|c| p[c] < -EDGE || p[c] > hi[c] + EDGE) {
            return None;
        }
        let q = [0, 1, 2].map(|c| p[c].clamp(0.0, hi[c]));
        let base = [0, 1, 2].map(|c| q[c].floor().min((hi[c] - 1.0).max(0.0)));
        let f = [0, 1, 2].map(|c| q[c] - base[c]);
        let b = base.map(|x| x as usize);
        let b1 = [0, 1, 2].map(|c| (b[c] + 1).min(hi[c] as usize));
        let (c000, c100, c010, c110) =
            (at(b[0], b[1], b[2]), at(b1[0], b[1], b[2]), at(b[0], b1[1], b[2]), at(b1[0], b1[1], b[2]));
        let (c001, c101, c011, c111) =
            (at(b[0], b[1], b1[2]), at(b1[0], b[1], b1[2]), at(b[0], b1[1], b1[2]), at(b1[0], b1[1], b1[2]));
        let c00 = c000 + (c100 - c000) * f[0];
        let c10 = c010 + (c110 - c010) * f[0];
        let c01 = c001 + (c101 - c001) * f[0];
        let c11 = c011 + (c111 - c011) * f[0];
        let c0 = c00 + (c10 - c00) * f[1];
        let c1 = c01 + (c11 - c01) * f[1];
        let dx0 = (c100 - c000) + ((c110 - c010) - (c100 - c000)) * f[1];
        let dx1 = (c101 - c001) + ((c111 - c011) - (c101 - c001)) * f[1];
        let dy0 = (c010 - c000) + ((c110 - c100) - (c010 - c000)) * f[0];
        let dy1 = (c011 - c001) + ((c111 - c101) - (c011 - c001)) * f[0];
        Some((c0 + (c1 - c0) * f[2], [dx0 + (dx1 - dx0) * f[2], dy0 + (dy1 - dy0) * f[2], c1 - c0]))
    };
    let sample = |p: [f32; 3]| graded(p).map(|(value, _)| value);
    let point = |fi: f32, fj: f32, k: f32| {
        [0, 1, 2].map(|c| v.origin[c] + fi * v.step_x[c] + fj * v.step_y[c] + k * v.step_z[c])
    };
    // The volume rendering's pixel (i, j).
    let width = window.width.max(1e-3);
    let lo = window.center - 0.5 * width;
    let len = (v.step_z.iter().map(|x| x * x).sum::<f32>()).sqrt().max(1e-12);
    let dir = v.step_z.map(|x| x / len);
    let rendered = |fi: f32, fj: f32| -> [f32; 3] {
        let (mut colour, mut alpha) = ([0.0f32; 3], 0.0f32);
        let start = [0, 1, 2].map(|c| v.origin[c] + fi * v.step_x[c] + fj * v.step_y[c]);
        for k in ray_span(start, v.step_z, hi, v.samples.max(1)) {
            let Some((s, g)) = graded(point(fi, fj, k as f32)) else { continue };
            let ramp = ((s - lo) / width).clamp(0.0, 1.0);
            if ramp <= 0.0 {
                continue;
            }
            let gl = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
            let shade = if gl > 1e-6 {
                0.35 + 0.65 * ((g[0] * dir[0] + g[1] * dir[1] + g[2] * dir[2]) / gl).abs()
            } else {
                1.0
            };
            let (base, a_per_mm) = match lut {
                Some(lut) => {
                    let c = lut.at(ramp);
                    ([c[0], c[1], c[2]], c[3] * 0.12)
                }
                None => {
                    ([0.75 + (1.0 - 0.75) * ramp, 0.3 + (0.95 - 0.3) * ramp, 0.2 + (0.85 - 0.2) * ramp], ramp * 0.12)
                }
            };
            // The opacity of one step of `step_mm` (the shader's `pow`).
            let a = 1.0 - (1.0 - a_per_mm).powf(v.step_mm);
            for c in 0..3 {
                colour[c] += (1.0 - alpha) * a * base[c] * shade;
            }
            alpha += (1.0 - alpha) * a;
            if alpha > 0.98 {
                break;
            }
        }
        colour
    };
    // A plane's (or slab's) pixel (i, j), with its overlays.
    let planar = |fi: f32, fj: f32| -> [f32; 3] {
        let mut acc: Option<(f32, f32)> = None;
        for k in 0..v.samples.max(1) {
            let Some(value) = sample(point(fi, fj, k as f32)) else { continue };
            acc = Some(match (acc, plane.mode) {
                (None, _) => (value, 1.0),
                (Some((a, n)), SlabMode::Max) => (a.max(value), n + 1.0),
                (Some((a, n)), SlabMode::Min) => (a.min(value), n + 1.0),
                (Some((a, n)), _) => (a + value, n + 1.0),
            });
        }
        let grey = match acc {
            None => 0.0,
            Some((a, n)) => {
                let value = if matches!(plane.mode, SlabMode::Mean | SlabMode::Single) { a / n } else { a };
                window.apply(value)
            }
        };
        let mut rgb = match lut {
            Some(lut) => {
                let c = lut.at(grey);
                [c[0], c[1], c[2]]
            }
            None => [grey; 3],
        };
        let p = point(fi, fj, (v.samples.max(1) / 2) as f32);
        if let Some((map, style)) = scalars {
            let r = p.map(|x| (x + 0.5).floor());
            if (0..3).all(|c| r[c] >= 0.0 && r[c] <= hi[c]) {
                let s = map.voxels()[r[0] as usize + nx * (r[1] as usize + ny * r[2] as usize)];
                if s >= style.lower {
                    let t = ((s - style.lower) / (style.upper - style.lower).max(1e-6)).clamp(0.0, 1.0);
                    let colour = hot(t);
                    rgb = [0, 1, 2].map(|c| rgb[c] * (1.0 - style.opacity) + colour[c] * style.opacity);
                }
            }
        }
        if let Some((map, style)) = labels {
            let label_at = |q: [f32; 3]| -> u8 {
                let r = q.map(|x| (x + 0.5).floor());
                if (0..3).any(|c| r[c] < 0.0 || r[c] > hi[c]) {
                    return 0;
                }
                map.voxels()[r[0] as usize + nx * (r[1] as usize + ny * r[2] as usize)]
            };
            let shift = |q: [f32; 3], d: [f32; 3], s: f32| [0, 1, 2].map(|c| q[c] + s * d[c]);
            let label = label_at(p);
            let show = label != 0
                && (!style.outline
                    || label_at(shift(p, v.step_x, 1.0)) != label
                    || label_at(shift(p, v.step_x, -1.0)) != label
                    || label_at(shift(p, v.step_y, 1.0)) != label
                    || label_at(shift(p, v.step_y, -1.0)) != label);
            if show {
                let a = if style.outline { 1.0 } else { style.opacity };
                let colour = label_colour(u32::from(label));
                rgb = [0, 1, 2].map(|c| rgb[c] * (1.0 - a) + colour[c] * a);
            }
        }
        rgb
    };
    let (w, h) = (plane.width as usize, plane.height as usize);
    let mut out = vec![0u8; w * h * 4];
    out.par_chunks_mut((w * 4).max(1)).enumerate().for_each(|(j, row)| {
        for (i, pixel) in row.chunks_exact_mut(4).enumerate() {
            let (fi, fj) = (i as f32, j as f32);
            let rgb = if plane.mode == SlabMode::Volume { rendered(fi, fj) } else { planar(fi, fj) };
            let [r, g, b] = rgb.map(to_unorm8);
            pixel.copy_from_slice(&[r, g, b, 255]);
        }
    });
    Ok(out)
}

/// The steps `k` of a ray `start + k · step` (k < `samples`) whose samples can lie inside the
/// volume's voxel centres `[0, hi]` (mpr.wgsl's `ray_span`): the others are outside, where a
/// volume rendering adds nothing, so rays skip them instead of stepping through empty space
/// around the volume. Generous by a hundredth of a voxel and a step at each end, so rounding
/// never drops a sample that is inside.
pub(crate) fn ray_span(start: [f32; 3], step: [f32; 3], hi: [f32; 3], samples: u32) -> std::ops::Range<u32> {
    const MARGIN: f32 = 0.011;
    let (mut enter, mut leave) = (0.0f32, samples as f32);
    for c in 0..3 {
        let (lo, up) = (-MARGIN, hi[c] + MARGIN);
        if step[c].abs() < 1e-6 {
            if start[c] < lo || start[c] > up {
                return 0..0;
            }
            continue;
        }
        let (ta, tb) = ((lo - start[c]) / step[c], (up - start[c]) / step[c]);
        enter = enter.max(ta.min(tb));
        leave = leave.min(ta.max(tb));
    }
    if leave < enter {
        return 0..0;
    }
    let first = (enter.floor() - 1.0).clamp(0.0, samples as f32) as u32;
    let last = (leave.ceil() + 2.0).clamp(0.0, samples as f32) as u32;
    first..last
}

/// Float to 8-bit unorm as GPUs store it: round to nearest.
pub fn to_unorm8(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use lightbox_core::{Affine3, WindowLevel};

    use super::*;

    /// Every step whose sample is inside the volume lies in the ray's span, for rays from every
    /// side, oblique and axis-parallel, starting inside, outside and beyond; and rays that miss
    /// the volume have no span at all.
    #[test]
    fn a_ray_span_holds_every_sample_inside_the_volume() {
        let hi = [511.0f32, 255.0, 39.0];
        let inside = |p: [f32; 3]| (0..3).all(|c| p[c] >= -0.001 && p[c] <= hi[c] + 0.001);
        let mut state = 7u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32
        };
        let (mut spans, mut skipped, mut empty) = (0, 0u64, 0);
        for n in 0..4000 {
            let start = [0, 1, 2].map(|c| (next() * 1.6 - 0.3) * hi[c]);
            let mut step = [0, 1, 2].map(|_| (next() - 0.5) * 4.0);
            // Some rays parallel to an axis, some with a tiny component.
            if n % 5 == 0 {
                step[n % 3] = 0.0;
            }
            if n % 7 == 0 {
                step[(n + 1) % 3] = 2e-6;
            }
            let samples = 384;
            let span = ray_span(start, step, hi, samples);
            let mut any = false;
            for k in 0..samples {
                let p = [0, 1, 2].map(|c| start[c] + k as f32 * step[c]);
                if inside(p) {
                    any = true;
                    assert!(span.contains(&k), "ray {n}: step {k} at {p:?} is inside but outside {span:?}");
                }
            }
            skipped += u64::from(samples) - span.len() as u64;
            spans += 1;
            empty += usize::from(!any && span.is_empty());
        }
        // The point of it: most rays skip most of their steps, and misses skip them all.
        assert!(skipped as f64 / (spans as f64 * 384.0) > 0.5, "skipped {skipped} of {} steps", spans * 384);
        assert!(empty > 100, "only {empty} misses found empty");
    }

    #[test]
    fn window_maps_to_grey_levels() -> anyhow::Result<()> {
        let v = Volume::new([3, 1, 2], vec![0.0, 50.0, 100.0, 0.0, 0.0, 0.0], Affine3::IDENTITY)?;
        let params = SliceParams { slice: 0, window: WindowLevel { center: 50.0, width: 100.0 } };
        assert_eq!(slice_rgba(&v, params)?, [0, 0, 0, 255, 128, 128, 128, 255, 255, 255, 255, 255]);
        let err = slice_rgba(&v, SliceParams { slice: 2, ..params }).expect_err("must fail");
        assert_eq!(err.to_string(), "slice 2 is outside the volume's 2 slices");
        Ok(())
    }
}
