use crate::geometry::{Affine3, norm};

/// A 3-D grid of voxels placed in patient space.
///
/// Voxel `(i, j, k)` is column `i`, row `j` of slice `k`, stored at `i + nx * (j + ny * k)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume<T> {
    dims: [usize; 3],
    voxels: Vec<T>,
    /// Maps voxel indices to LPS millimetres.
    pub patient_from_voxel: Affine3,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    #[error("volume of {}x{}x{} voxels cannot hold {len} values", dims[0], dims[1], dims[2])]
    WrongLength { dims: [usize; 3], len: usize },
}

impl<T: Copy> Volume<T> {
    pub fn new(dims: [usize; 3], voxels: Vec<T>, patient_from_voxel: Affine3) -> Result<Self, VolumeError> {
        let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(voxels.len()) {
            return Err(VolumeError::WrongLength { dims, len: voxels.len() });
        }
        Ok(Self { dims, voxels, patient_from_voxel })
    }

    /// `[columns, rows, slices]`.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    pub fn voxels(&self) -> &[T] {
        &self.voxels
    }

    pub fn get(&self, i: usize, j: usize, k: usize) -> Option<T> {
        let [nx, ny, nz] = self.dims;
        (i < nx && j < ny && k < nz).then(|| self.voxels[i + nx * (j + ny * k)])
    }

    /// The voxels of slice `k`, row-major.
    pub fn slice(&self, k: usize) -> Option<&[T]> {
        let [nx, ny, nz] = self.dims;
        (k < nz).then(|| &self.voxels[k * nx * ny..(k + 1) * nx * ny])
    }

    /// Voxel size along each axis in millimetres.
    pub fn spacing_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|c| norm(self.patient_from_voxel.axis(c)))
    }
}

/// Voxel values in the type the modality stored them in.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredVoxels {
    U8(Vec<u8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    F32(Vec<f32>),
}

impl StoredVoxels {
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per voxel.
    pub fn bytes_per_voxel(&self) -> usize {
        match self {
            Self::U8(_) => 1,
            Self::U16(_) | Self::I16(_) => 2,
            Self::F32(_) => 4,
        }
    }

    /// Stored value `index` as f64.
    fn value(&self, index: usize) -> f64 {
        match self {
            Self::U8(v) => f64::from(v[index]),
            Self::U16(v) => f64::from(v[index]),
            Self::I16(v) => f64::from(v[index]),
            Self::F32(v) => f64::from(v[index]),
        }
    }
}

/// A volume that keeps its voxels in their stored type (half the memory of `f32` for the
/// usual 16-bit MR), with the rescale that gives real values: `slope · stored + intercept`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredVolume {
    dims: [usize; 3],
    voxels: StoredVoxels,
    pub patient_from_voxel: Affine3,
    pub slope: f64,
    pub intercept: f64,
}

impl StoredVolume {
    pub fn new(
        dims: [usize; 3],
        voxels: StoredVoxels,
        patient_from_voxel: Affine3,
        slope: f64,
        intercept: f64,
    ) -> Result<Self, VolumeError> {
        let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(voxels.len()) {
            return Err(VolumeError::WrongLength { dims, len: voxels.len() });
        }
        Ok(Self { dims, voxels, patient_from_voxel, slope, intercept })
    }

    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    pub fn voxels(&self) -> &StoredVoxels {
        &self.voxels
    }

    /// Voxel size along each axis in millimetres.
    pub fn spacing_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|c| norm(self.patient_from_voxel.axis(c)))
    }

    /// Real values (`slope · stored + intercept`, computed in f64, as dicom-pixeldata does).
    pub fn to_f32(&self) -> Volume<f32> {
        let voxels = match (&self.voxels, self.slope == 1.0 && self.intercept == 0.0) {
            (StoredVoxels::F32(v), true) => v.clone(),
            _ => (0..self.voxels.len()).map(|i| (self.slope * self.voxels.value(i) + self.intercept) as f32).collect(),
        };
        Volume { dims: self.dims, voxels, patient_from_voxel: self.patient_from_voxel }
    }
}

impl From<Volume<f32>> for StoredVolume {
    fn from(v: Volume<f32>) -> Self {
        Self {
            dims: v.dims,
            voxels: StoredVoxels::F32(v.voxels),
            patient_from_voxel: v.patient_from_voxel,
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

impl Volume<f32> {
    /// Smallest and largest finite value, or `None` if there is none.
    pub fn value_range(&self) -> Option<(f32, f32)> {
        self.voxels.iter().filter(|v| v.is_finite()).fold(None, |acc, &v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
    }
}

/// A linear VOI window: values at `center - width/2` show black, at `center + width/2` white.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowLevel {
    pub center: f32,
    pub width: f32,
}

impl WindowLevel {
    pub const MIN_WIDTH: f32 = 1e-3;

    /// A window spanning `[lo, hi]`.
    pub fn from_range(lo: f32, hi: f32) -> Self {
        Self { center: 0.5 * (lo + hi), width: (hi - lo).max(Self::MIN_WIDTH) }
    }

    /// Maps a value to display intensity in `[0, 1]`. The GPU shader computes the same formula.
    pub fn apply(&self, value: f32) -> f32 {
        let width = self.width.max(Self::MIN_WIDTH);
        ((value - (self.center - 0.5 * width)) / width).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_buffer_length() {
        let err = Volume::new([2, 2, 2], vec![0.0f32; 7], Affine3::IDENTITY).expect_err("must fail");
        assert_eq!(err.to_string(), "volume of 2x2x2 voxels cannot hold 7 values");
    }

    #[test]
    fn indexes_column_row_slice() -> Result<(), VolumeError> {
        let v = Volume::new([3, 2, 2], (0..12).map(|x| x as f32).collect(), Affine3::IDENTITY)?;
        assert_eq!(v.get(2, 1, 1), Some(11.0));
        assert_eq!(v.get(1, 0, 1), Some(7.0));
        assert_eq!(v.get(3, 0, 0), None);
        assert_eq!(v.slice(1).map(<[f32]>::len), Some(6));
        assert_eq!(v.value_range(), Some((0.0, 11.0)));
        Ok(())
    }

    #[test]
    fn spacing_from_affine() -> Result<(), VolumeError> {
        let a = Affine3::from_columns([0.0, 0.8, 0.0], [0.0, 0.0, -0.8], [3.0, 0.0, 4.0], [0.0; 3]);
        let v = Volume::new([1, 1, 1], vec![0u16], a)?;
        assert_eq!(v.spacing_mm(), [0.8, 0.8, 5.0]);
        Ok(())
    }

    #[test]
    fn window_maps_edges_to_black_and_white() {
        let w = WindowLevel { center: 100.0, width: 200.0 };
        assert_eq!(w.apply(0.0), 0.0);
        assert_eq!(w.apply(100.0), 0.5);
        assert_eq!(w.apply(250.0), 1.0);
        assert_eq!(WindowLevel::from_range(10.0, 30.0), WindowLevel { center: 20.0, width: 20.0 });
    }
}
