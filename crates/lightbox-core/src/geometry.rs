/// An affine transform of 3-D points, stored as a row-major 4×4 matrix whose last row is
/// `[0, 0, 0, 1]`. Used as e.g. `patient_from_voxel`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine3 {
    /// Row-major 3×4: the linear part and the translation in the last column.
    pub rows: [[f64; 4]; 3],
}

impl Affine3 {
    pub const IDENTITY: Self = Self { rows: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]] };

    /// Builds the transform that maps `(i, j, k)` to `origin + i*x_axis + j*y_axis + k*z_axis`.
    pub fn from_columns(x_axis: [f64; 3], y_axis: [f64; 3], z_axis: [f64; 3], origin: [f64; 3]) -> Self {
        let mut rows = [[0.0; 4]; 3];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = [x_axis[r], y_axis[r], z_axis[r], origin[r]];
        }
        Self { rows }
    }

    /// The image of the column `c` of the linear part (the step in target space for one unit
    /// along source axis `c`).
    pub fn axis(&self, c: usize) -> [f64; 3] {
        [self.rows[0][c], self.rows[1][c], self.rows[2][c]]
    }

    pub fn translation(&self) -> [f64; 3] {
        self.axis(3)
    }

    pub fn transform_point(&self, p: [f64; 3]) -> [f64; 3] {
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            let row = &self.rows[r];
            *o = row[0] * p[0] + row[1] * p[1] + row[2] * p[2] + row[3];
        }
        out
    }
}

pub(crate) fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_columns_maps_voxel_corners() {
        let a = Affine3::from_columns([0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 3.0], [10.0, -20.0, 5.0]);
        assert_eq!(a.transform_point([0.0, 0.0, 0.0]), [10.0, -20.0, 5.0]);
        assert_eq!(a.transform_point([2.0, 4.0, 1.0]), [11.0, -18.0, 8.0]);
        assert_eq!(a.axis(2), [0.0, 0.0, 3.0]);
    }
}
