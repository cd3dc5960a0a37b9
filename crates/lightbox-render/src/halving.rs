//! A volume at half its resolution, for a GPU whose memory cannot hold it whole: each 2×2×2
//! block of voxels becomes one (an axis of one voxel stays as it is). Intensities are averaged in
//! their stored type (rounded), label maps keep the highest label of the block (so that a
//! one-voxel finding stays visible), and the geometry places each new voxel at the centre of its
//! block, so that every patient point still lands where it was.

use lightbox_core::{Affine3, StoredVolume, StoredVoxels, Volume};
use rayon::prelude::*;

use crate::RenderError;

/// Per axis: 2 where the axis is halved (more than one voxel), else 1.
fn factors(dims: [usize; 3]) -> [usize; 3] {
    dims.map(|d| if d > 1 { 2 } else { 1 })
}

/// The dims at half resolution.
pub fn halved_dims(dims: [usize; 3]) -> [usize; 3] {
    let f = factors(dims);
    [0, 1, 2].map(|a| dims[a].div_ceil(f[a]))
}

/// The geometry at half resolution: voxel `i` of the halved volume lies at the centre of the
/// original voxels `2i` and `2i + 1` along every halved axis.
pub fn halved_affine(a: &Affine3, dims: [usize; 3]) -> Affine3 {
    let f = factors(dims).map(|f| f as f64);
    let column = |c: usize| a.axis(c).map(|x| x * f[c]);
    let origin = a.transform_point([0, 1, 2].map(|c| 0.5 * (f[c] - 1.0)));
    Affine3::from_columns(column(0), column(1), column(2), origin)
}

/// Each output voxel from the input voxels of its block (1 to 8 of them; fewer at the far edge
/// of an odd axis), slices in parallel.
fn halve<T: Copy + Send + Sync + Default>(
    voxels: &[T],
    dims: [usize; 3],
    combine: impl Fn(&[T]) -> T + Sync,
) -> Vec<T> {
    let [nx, ny, nz] = dims;
    let f = factors(dims);
    let [hx, hy, hz] = halved_dims(dims);
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

/// The mean of integer values, rounded to the nearest.
fn mean_int<T: Copy + Into<i64>>(block: &[T]) -> i64 {
    let sum: i64 = block.iter().map(|&v| v.into()).sum();
    (sum as f64 / block.len().max(1) as f64).round() as i64
}

/// A stored volume at half resolution, averaged in its stored type (slope and intercept kept).
pub fn halve_stored(volume: &StoredVolume) -> Result<StoredVolume, RenderError> {
    let dims = volume.dims();
    let voxels = match volume.voxels() {
        StoredVoxels::U8(v) => StoredVoxels::U8(halve(v, dims, |b| mean_int(b) as u8)),
        StoredVoxels::U16(v) => StoredVoxels::U16(halve(v, dims, |b| mean_int(b) as u16)),
        StoredVoxels::I16(v) => StoredVoxels::I16(halve(v, dims, |b| mean_int(b) as i16)),
        StoredVoxels::F32(v) => StoredVoxels::F32(halve(v, dims, mean_f32)),
    };
    StoredVolume::new(
        halved_dims(dims),
        voxels,
        halved_affine(&volume.patient_from_voxel, dims),
        volume.slope,
        volume.intercept,
    )
    .map_err(|e| RenderError::Device(e.to_string()))
}

/// A volume the renderer draws at half resolution, in its stored type (a float volume as float).
pub fn halve_source(volume: crate::PlaneSource<'_>) -> Result<StoredVolume, RenderError> {
    match volume {
        crate::PlaneSource::Stored(v) => halve_stored(v),
        crate::PlaneSource::Float(v) => {
            let dims = v.dims();
            let voxels = StoredVoxels::F32(halve(v.voxels(), dims, mean_f32));
            StoredVolume::new(halved_dims(dims), voxels, halved_affine(&v.patient_from_voxel, dims), 1.0, 0.0)
                .map_err(|e| RenderError::Device(e.to_string()))
        }
    }
}

fn mean_f32(block: &[f32]) -> f32 {
    (block.iter().map(|&v| f64::from(v)).sum::<f64>() / block.len().max(1) as f64) as f32
}

/// A label map at half resolution: the highest label of each block.
pub fn halve_labels(labels: &Volume<u8>) -> Result<Volume<u8>, RenderError> {
    let dims = labels.dims();
    let voxels = halve(labels.voxels(), dims, |b| b.iter().copied().max().unwrap_or(0));
    Volume::new(halved_dims(dims), voxels, halved_affine(&labels.patient_from_voxel, dims))
        .map_err(|e| RenderError::Device(e.to_string()))
}

/// A scalar map (probabilities, differences) at half resolution: the mean of each block.
pub fn halve_scalars(scalars: &Volume<f32>) -> Result<Volume<f32>, RenderError> {
    let dims = scalars.dims();
    let voxels = halve(scalars.voxels(), dims, mean_f32);
    Volume::new(halved_dims(dims), voxels, halved_affine(&scalars.patient_from_voxel, dims))
        .map_err(|e| RenderError::Device(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Voxel i of the halved volume lies midway between voxels 2i and 2i + 1 of the original; a
    /// single slice stays where it was; the values are the blocks' means (odd edges included);
    /// a one-voxel label survives.
    #[test]
    fn halving_keeps_geometry_means_and_small_labels() -> anyhow::Result<()> {
        let a = Affine3::from_columns([0.8, 0.1, 0.0], [0.0, 0.7, 0.2], [0.0, 0.0, 3.0], [-100.0, 20.0, 5.0]);
        let dims = [5, 4, 1];
        let values: Vec<u16> = (0..20).map(|v| v as u16 * 10).collect();
        let volume = StoredVolume::new(dims, StoredVoxels::U16(values), a, 2.0, -5.0)?;
        let half = halve_stored(&volume)?;
        assert_eq!(half.dims(), [3, 2, 1]);
        assert_eq!((half.slope, half.intercept), (2.0, -5.0));
        let h = half.patient_from_voxel;
        for (i, j) in [(0usize, 0usize), (1, 1), (2, 0)] {
            let centre = a.transform_point([2.0 * i as f64 + 0.5, 2.0 * j as f64 + 0.5, 0.0]);
            let got = h.transform_point([i as f64, j as f64, 0.0]);
            assert!((0..3).all(|c| (got[c] - centre[c]).abs() < 1e-9), "{got:?} against {centre:?}");
        }
        let StoredVoxels::U16(v) = half.voxels() else { anyhow::bail!("not 16-bit") };
        // Block (0, 0): voxels 0, 1, 5, 6 → (0 + 10 + 50 + 60) / 4 = 30; the odd edge (2, 0):
        // voxels 4 and 9 → 65.
        assert_eq!((v[0], v[2]), (30, 65));
        let mut labels = vec![0u8; 5 * 4 * 3];
        let at = |[x, y, z]: [usize; 3], [nx, ny]: [usize; 2]| x + nx * (y + ny * z);
        labels[at([3, 2, 1], [5, 4])] = 7;
        let half_labels = halve_labels(&Volume::new([5, 4, 3], labels, a)?)?;
        assert_eq!(half_labels.dims(), [3, 2, 2]);
        assert_eq!(half_labels.voxels().iter().filter(|&&l| l == 7).count(), 1, "the one-voxel label stays");
        assert_eq!(half_labels.voxels()[at([1, 1, 0], [3, 2])], 7);
        Ok(())
    }
}
