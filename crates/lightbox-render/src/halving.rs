//! A volume at half its resolution, for a GPU whose memory cannot hold it whole: each block of
//! 2 voxels along the halved axes becomes one. Only the finest axes are halved (those within
//! 1.5× of the smallest spacing): thick slices stay as they are. Intensities are averaged in
//! their stored type (rounded), label maps keep the highest label of the block (so that a
//! one-voxel finding stays visible), and the geometry places each new voxel at the centre of its
//! block, so that every patient point still lands where it was. On an axis of odd length the
//! last new voxel holds the last voxel alone, and reaches half a voxel beyond the edge.

use lightbox_core::{Affine3, StoredVolume, StoredVoxels, Volume};
use rayon::prelude::*;

use crate::RenderError;

/// A grid: dims and geometry.
type Grid<'a> = ([usize; 3], &'a Affine3);

/// Per axis: 2 where the axis is halved (more than one voxel, and a spacing within 1.5× of the
/// finest such axis), else 1.
fn factors((dims, a): Grid<'_>) -> [usize; 3] {
    let spacing = [0, 1, 2].map(|c| a.axis(c).iter().map(|x| x * x).sum::<f64>().sqrt());
    let finest = (0..3).filter(|&c| dims[c] > 1).map(|c| spacing[c]).fold(f64::INFINITY, f64::min);
    [0, 1, 2].map(|c| if dims[c] > 1 && spacing[c] <= 1.5 * finest { 2 } else { 1 })
}

/// The dims at half resolution.
pub fn halved_dims(grid: Grid<'_>) -> [usize; 3] {
    let f = factors(grid);
    [0, 1, 2].map(|c| grid.0[c].div_ceil(f[c]))
}

/// The geometry at half resolution: voxel `i` of the halved volume lies at the centre of the
/// original voxels `2i` and `2i + 1` along every halved axis.
pub fn halved_affine(grid: Grid<'_>) -> Affine3 {
    let (_, a) = grid;
    let f = factors(grid).map(|f| f as f64);
    let column = |c: usize| a.axis(c).map(|x| x * f[c]);
    let origin = a.transform_point([0, 1, 2].map(|c| 0.5 * (f[c] - 1.0)));
    Affine3::from_columns(column(0), column(1), column(2), origin)
}

/// Each output voxel from the input voxels of its block (1 to 8 of them; fewer at the far edge
/// of an odd axis), slices in parallel.
fn halve<T: Copy + Send + Sync + Default>(voxels: &[T], grid: Grid<'_>, combine: impl Fn(&[T]) -> T + Sync) -> Vec<T> {
    let [nx, ny, nz] = grid.0;
    let f = factors(grid);
    let [hx, hy, hz] = halved_dims(grid);
    let mut out = vec![T::default(); hx * hy * hz];
    out.par_chunks_mut((hx * hy).max(1)).enumerate().for_each(|(k, slice)| {
        let mut block = Vec::with_capacity(8);
        for j in 0..hy {
            for i in 0..hx {
                block.clear();
                for z in k * f[2]..((k + 1) * f[2]).min(nz) {
                    for y in j * f[1]..((j + 1) * f[1]).min(ny) {
                        for x in i * f[0]..((i + 1) * f[0]).min(nx) {
                            block.push(voxels[x + nx * (y + ny * z)]);
                        }
                    }
                }
                slice[i + hx * j] = combine(&block);
            }
        }
    });
    out
}

/// The mean of integer values, rounded to the nearest (halves away from zero).
fn mean_int<T: Copy + Into<i64>>(block: &[T]) -> i64 {
    let sum: i64 = block.iter().map(|&v| v.into()).sum();
    (sum as f64 / block.len().max(1) as f64).round() as i64
}

fn mean_f32(block: &[f32]) -> f32 {
    (block.iter().map(|&v| f64::from(v)).sum::<f64>() / block.len().max(1) as f64) as f32
}

/// A stored volume at half resolution, averaged in its stored type (slope and intercept kept).
pub fn halve_stored(volume: &StoredVolume) -> Result<StoredVolume, RenderError> {
    let grid = (volume.dims(), &volume.patient_from_voxel);
    let voxels = match volume.voxels() {
        StoredVoxels::U8(v) => StoredVoxels::U8(halve(v, grid, |b| mean_int(b) as u8)),
        StoredVoxels::U16(v) => StoredVoxels::U16(halve(v, grid, |b| mean_int(b) as u16)),
        StoredVoxels::I16(v) => StoredVoxels::I16(halve(v, grid, |b| mean_int(b) as i16)),
        StoredVoxels::F32(v) => StoredVoxels::F32(halve(v, grid, mean_f32)),
    };
    StoredVolume::new(halved_dims(grid), voxels, halved_affine(grid), volume.slope, volume.intercept)
        .map_err(|e| RenderError::Device(e.to_string()))
}

/// A volume the renderer draws at half resolution, in its stored type (a float volume as float).
pub fn halve_source(volume: crate::PlaneSource<'_>) -> Result<StoredVolume, RenderError> {
    match volume {
        crate::PlaneSource::Stored(v) => halve_stored(v),
        crate::PlaneSource::Float(v) => {
            let grid = (v.dims(), &v.patient_from_voxel);
            let voxels = StoredVoxels::F32(halve(v.voxels(), grid, mean_f32));
            StoredVolume::new(halved_dims(grid), voxels, halved_affine(grid), 1.0, 0.0)
                .map_err(|e| RenderError::Device(e.to_string()))
        }
    }
}

/// A label map at half resolution: the highest label of each block.
pub fn halve_labels(labels: &Volume<u8>) -> Result<Volume<u8>, RenderError> {
    let grid = (labels.dims(), &labels.patient_from_voxel);
    let voxels = halve(labels.voxels(), grid, |b| b.iter().copied().max().unwrap_or(0));
    Volume::new(halved_dims(grid), voxels, halved_affine(grid)).map_err(|e| RenderError::Device(e.to_string()))
}

/// A scalar map (probabilities, differences) at half resolution: the mean of each block.
pub fn halve_scalars(scalars: &Volume<f32>) -> Result<Volume<f32>, RenderError> {
    let grid = (scalars.dims(), &scalars.patient_from_voxel);
    let voxels = halve(scalars.voxels(), grid, mean_f32);
    Volume::new(halved_dims(grid), voxels, halved_affine(grid)).map_err(|e| RenderError::Device(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voxel i of the halved volume lies midway between voxels 2i and 2i + 1 of the original
    /// along x, y and z; a single slice stays where it was; the values are the blocks' means
    /// (odd edges included), negative ones rounded away from zero; a one-voxel label survives.
    #[test]
    fn halving_keeps_geometry_means_and_small_labels() -> anyhow::Result<()> {
        let a = Affine3::from_columns([0.8, 0.1, 0.0], [0.0, 0.7, 0.2], [0.1, 0.0, 0.9], [-100.0, 20.0, 5.0]);
        let at = |[x, y, z]: [usize; 3], [nx, ny]: [usize; 2]| x + nx * (y + ny * z);
        let dims = [5, 4, 3];
        let values: Vec<i16> = (0..60).map(|v| v as i16 * 10 - 301).collect();
        let volume = StoredVolume::new(dims, StoredVoxels::I16(values.clone()), a, 2.0, -5.0)?;
        let half = halve_stored(&volume)?;
        assert_eq!(half.dims(), [3, 2, 2]);
        assert_eq!((half.slope, half.intercept), (2.0, -5.0));
        let h = half.patient_from_voxel;
        for (i, j, k) in [(0usize, 0usize, 0usize), (1, 1, 0), (2, 0, 1), (1, 0, 1)] {
            let centre = a.transform_point([2.0 * i as f64 + 0.5, 2.0 * j as f64 + 0.5, 2.0 * k as f64 + 0.5]);
            let got = h.transform_point([i as f64, j as f64, k as f64]);
            assert!((0..3).all(|c| (got[c] - centre[c]).abs() < 1e-9), "{got:?} against {centre:?}");
        }
        let StoredVoxels::I16(v) = half.voxels() else { anyhow::bail!("not 16-bit") };
        // Block (0, 0, 0): voxels 0, 1, 5, 6, 20, 21, 25, 26 → mean of 10·that − 301 = 130 − 301.
        assert_eq!(v[0], -171);
        // The odd edges: block (2, 0, 1) holds voxels (4, 0..2, 2): 44 and 49 → 465 − 301.
        assert_eq!(v[at([2, 0, 1], [3, 2])], 164);
        // −0.5 rounds away from zero, as +0.5 does.
        assert_eq!(mean_int(&[-1i16, 0]), -1);
        assert_eq!(mean_int(&[1i16, 0]), 1);
        // Float volumes stay float; a single slice keeps its place.
        let flat = Volume::new([4, 4, 1], (0..16).map(|v| v as f32 * 0.5).collect(), a)?;
        let half_flat = halve_source(crate::PlaneSource::Float(&flat))?;
        assert_eq!(half_flat.dims(), [2, 2, 1]);
        let StoredVoxels::F32(f) = half_flat.voxels() else { anyhow::bail!("not float") };
        assert_eq!(f[0], (0.0 + 0.5 + 2.0 + 2.5) / 4.0);
        let o = half_flat.patient_from_voxel.transform_point([0.0; 3]);
        let expected = a.transform_point([0.5, 0.5, 0.0]);
        assert!((0..3).all(|c| (o[c] - expected[c]).abs() < 1e-9), "{o:?} against {expected:?}");
        let mut labels = vec![0u8; 60];
        labels[at([3, 2, 1], [5, 4])] = 7;
        let half_labels = halve_labels(&Volume::new(dims, labels, a)?)?;
        assert_eq!(half_labels.voxels().iter().filter(|&&l| l == 7).count(), 1, "the one-voxel label stays");
        assert_eq!(half_labels.voxels()[at([1, 1, 0], [3, 2])], 7);
        Ok(())
    }

    /// Thick slices are not halved: only the axes within 1.5× of the finest spacing are.
    #[test]
    fn thick_slices_stay_as_they_are() -> anyhow::Result<()> {
        let a = Affine3::from_columns([0.7, 0.0, 0.0], [0.0, 0.7, 0.0], [0.0, 0.0, 3.0], [0.0; 3]);
        let volume = StoredVolume::new([6, 6, 5], StoredVoxels::U8(vec![9; 180]), a, 1.0, 0.0)?;
        let half = halve_stored(&volume)?;
        assert_eq!(half.dims(), [3, 3, 5]);
        assert_eq!(half.patient_from_voxel.axis(2), [0.0, 0.0, 3.0]);
        assert_eq!(half.patient_from_voxel.transform_point([0.0; 3]), [0.35, 0.35, 0.0]);
        Ok(())
    }
}
