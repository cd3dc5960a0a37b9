//! Trilinear sampling and resampling between voxel grids in patient space.

use lightbox_core::{Affine3, Volume};
use rayon::prelude::*;

use crate::ImagingError;

/// The volume's value at continuous voxel coordinates, trilinear between the eight neighbours;
/// `None` outside the grid (beyond the centres of the outermost voxels).
pub fn sample_trilinear(volume: &Volume<f32>, v: [f64; 3]) -> Option<f32> {
    let [nx, ny, nz] = volume.dims();
    let inside = |x: f64, n: usize| x >= 0.0 && x <= (n - 1) as f64;
    if nx == 0 || ny == 0 || nz == 0 || !inside(v[0], nx) || !inside(v[1], ny) || !inside(v[2], nz) {
        return None;
    }
    // The cell's lower corner, kept one below the last voxel so its upper corner exists (a
    // single-voxel axis uses the same voxel twice).
    let corner = |x: f64, n: usize| (x.floor() as usize).min(n.saturating_sub(2));
    let (i, j, k) = (corner(v[0], nx), corner(v[1], ny), corner(v[2], nz));
    let (fx, fy, fz) = ((v[0] - i as f64) as f32, (v[1] - j as f64) as f32, (v[2] - k as f64) as f32);
    let (i1, j1, k1) = ((i + 1).min(nx - 1), (j + 1).min(ny - 1), (k + 1).min(nz - 1));
    let voxels = volume.voxels();
    let at = |i: usize, j: usize, k: usize| voxels[i + nx * (j + ny * k)];
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let c00 = lerp(at(i, j, k), at(i1, j, k), fx);
    let c10 = lerp(at(i, j1, k), at(i1, j1, k), fx);
    let c01 = lerp(at(i, j, k1), at(i1, j, k1), fx);
    let c11 = lerp(at(i, j1, k1), at(i1, j1, k1), fx);
    Some(lerp(lerp(c00, c10, fy), lerp(c01, c11, fy), fz))
}

/// `moving` resampled onto a grid of `dims` voxels placed by `patient_from_voxel`:
/// each output voxel takes the moving volume's value at `moving_from_fixed` of its patient
/// position (trilinear), or `background` outside the moving volume.
pub fn resample_into(
    moving: &Volume<f32>,
    dims: [usize; 3],
    patient_from_voxel: Affine3,
    moving_from_fixed: &Affine3,
    background: f32,
) -> Result<Volume<f32>, ImagingError> {
    let voxel_from_patient =
        moving.patient_from_voxel.inverse().ok_or(ImagingError::DegenerateGeometry { what: "the moving volume" })?;
    let to_moving_voxel = voxel_from_patient.compose(moving_from_fixed).compose(&patient_from_voxel);
    let [nx, ny, _] = dims;
    let mut out = vec![background; dims.iter().product()];
    out.par_chunks_mut((nx * ny).max(1)).enumerate().for_each(|(k, slice)| {
        for (index, value) in slice.iter_mut().enumerate() {
            let (i, j) = (index % nx, index / nx);
            let v = to_moving_voxel.transform_point([i as f64, j as f64, k as f64]);
            if let Some(s) = sample_trilinear(moving, v) {
                *value = s;
            }
        }
    });
    Volume::new(dims, out, patient_from_voxel).map_err(|_| ImagingError::DegenerateGeometry { what: "the output grid" })
}

/// The volume averaged over blocks of `factors` voxels per axis (a factor of 1 keeps that
/// axis). The coarse grid covers the same patient space: its voxel centres sit at the centres
/// of the blocks.
pub fn downsample(volume: &Volume<f32>, factors: [usize; 3]) -> Volume<f32> {
    let factors = factors.map(|f| f.max(1));
    let [nx, ny, nz] = volume.dims();
    let out_dims = [nx.div_ceil(factors[0]), ny.div_ceil(factors[1]), nz.div_ceil(factors[2])];
    let [ox, oy, _] = out_dims;
    let voxels = volume.voxels();
    let mut out = vec![0.0f32; out_dims.iter().product()];
    out.par_chunks_mut((ox * oy).max(1)).enumerate().for_each(|(k, slice)| {
        for (index, value) in slice.iter_mut().enumerate() {
            let (i, j) = (index % ox, index / ox);
            let (mut sum, mut count) = (0.0f64, 0u32);
            for z in k * factors[2]..((k + 1) * factors[2]).min(nz) {
                for y in j * factors[1]..((j + 1) * factors[1]).min(ny) {
                    let row = nx * (y + ny * z);
                    for x in i * factors[0]..((i + 1) * factors[0]).min(nx) {
                        sum += f64::from(voxels[row + x]);
                        count += 1;
                    }
                }
            }
            *value = (sum / f64::from(count.max(1))) as f32;
        }
    });
    let a = &volume.patient_from_voxel;
    let scale = |c: usize| a.axis(c).map(|x| x * factors[c] as f64);
    // Output voxel 0 is the centre of input voxels 0..f-1, at input index (f-1)/2.
    let origin = a.transform_point(factors.map(|f| (f as f64 - 1.0) / 2.0));
    let patient_from_voxel = Affine3::from_columns(scale(0), scale(1), scale(2), origin);
    Volume::new(out_dims, out, patient_from_voxel).unwrap_or_else(|_| unreachable!("dims and voxels agree"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(dims: [usize; 3]) -> Volume<f32> {
        let [nx, ny, nz] = dims;
        let voxels =
            (0..nx * ny * nz).map(|n| (n % nx) as f32 + 10.0 * ((n / nx) % ny) as f32 + 100.0 * (n / (nx * ny)) as f32);
        let affine = Affine3::from_columns([0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0], [-3.0, 4.0, 10.0]);
        Volume::new(dims, voxels.collect(), affine).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn trilinear_is_exact_on_a_linear_ramp_and_none_outside() {
        let v = ramp([5, 4, 3]);
        let s = sample_trilinear(&v, [1.25, 2.5, 1.75]).unwrap_or(f32::NAN);
        assert!((s - (1.25 + 25.0 + 175.0)).abs() < 1e-4, "{s}");
        assert_eq!(sample_trilinear(&v, [4.0, 3.0, 2.0]), Some(4.0 + 30.0 + 200.0));
        assert_eq!(sample_trilinear(&v, [-0.01, 0.0, 0.0]), None);
        assert_eq!(sample_trilinear(&v, [0.0, 3.01, 0.0]), None);
    }

    #[test]
    fn resampling_with_identity_onto_the_same_grid_returns_the_volume() -> Result<(), ImagingError> {
        let v = ramp([6, 5, 4]);
        let out = resample_into(&v, v.dims(), v.patient_from_voxel, &Affine3::IDENTITY, -1.0)?;
        assert_eq!(out.voxels(), v.voxels());
        Ok(())
    }

    #[test]
    fn a_shift_in_patient_space_moves_the_values() -> Result<(), ImagingError> {
        let v = ramp([6, 5, 4]);
        // Moving point = fixed point + 0.5 mm in x: one voxel along i.
        let shift = Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.0]);
        let out = resample_into(&v, v.dims(), v.patient_from_voxel, &shift, -1.0)?;
        assert_eq!(out.get(2, 1, 1), v.get(3, 1, 1));
        assert_eq!(out.get(5, 1, 1), Some(-1.0), "beyond the edge is background");
        Ok(())
    }

    #[test]
    fn downsampling_averages_blocks_and_keeps_their_centres_in_place() {
        let v = ramp([6, 4, 3]);
        let d = downsample(&v, [2, 2, 1]);
        assert_eq!(d.dims(), [3, 2, 3]);
        // Block (0..2, 0..2) on slice 1: values 100 + {0,1,10,11}.
        assert_eq!(d.get(0, 0, 1), Some(105.5));
        let centre = v.patient_from_voxel.transform_point([0.5, 0.5, 1.0]);
        assert_eq!(d.patient_from_voxel.transform_point([0.0, 0.0, 1.0]), centre);
        assert_eq!(d.spacing_mm(), [1.0, 1.0, 2.0]);
    }
}
