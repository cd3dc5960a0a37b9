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

    /// `self ∘ other`: for `a_from_b.compose(&b_from_c)` the result is `a_from_c`.
    pub fn compose(&self, other: &Self) -> Self {
        let mut rows = [[0.0; 4]; 3];
        for (r, row) in rows.iter_mut().enumerate() {
            for (c, out) in row.iter_mut().enumerate() {
                let linear: f64 = (0..3).map(|k| self.rows[r][k] * other.rows[k][c]).sum();
                *out = linear + if c == 3 { self.rows[r][3] } else { 0.0 };
            }
        }
        Self { rows }
    }

    /// The inverse transform, or `None` when the linear part is singular.
    pub fn inverse(&self) -> Option<Self> {
        let m = |r: usize, c: usize| self.rows[r][c];
        let cofactor = |r0: usize, r1: usize, c0: usize, c1: usize| m(r0, c0) * m(r1, c1) - m(r0, c1) * m(r1, c0);
        let det = m(0, 0) * cofactor(1, 2, 1, 2) - m(0, 1) * cofactor(1, 2, 0, 2) + m(0, 2) * cofactor(1, 2, 0, 1);
        if det.abs() < 1e-12 || !det.is_finite() {
            return None;
        }
        let inv = [
            [cofactor(1, 2, 1, 2), -cofactor(0, 2, 1, 2), cofactor(0, 1, 1, 2)],
            [-cofactor(1, 2, 0, 2), cofactor(0, 2, 0, 2), -cofactor(0, 1, 0, 2)],
            [cofactor(1, 2, 0, 1), -cofactor(0, 2, 0, 1), cofactor(0, 1, 0, 1)],
        ]
        .map(|row| row.map(|v| v / det));
        let t = self.translation();
        let rows = inv.map(|r| [r[0], r[1], r[2], -(r[0] * t[0] + r[1] * t[1] + r[2] * t[2])]);
        Some(Self { rows })
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

    #[test]
    fn inverse_undoes_an_oblique_transform() {
        let a = Affine3::from_columns([0.6, 0.8, 0.0], [-0.8, 0.6, 0.1], [0.0, 0.5, 3.0], [10.0, -20.0, 5.0]);
        let inv = a.inverse().expect("invertible");
        let p = [3.5, -2.0, 7.25];
        let back = inv.transform_point(a.transform_point(p));
        assert!(back.iter().zip(p).all(|(x, y)| (x - y).abs() < 1e-12), "{back:?}");
        let id = a.compose(&inv);
        for (r, row) in id.rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "[{r}][{c}] = {v}");
            }
        }
        let flat = Affine3::from_columns([1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0; 3]);
        assert_eq!(flat.inverse(), None);
    }
}
