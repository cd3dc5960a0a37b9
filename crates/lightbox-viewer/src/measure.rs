//! The viewer's measurements, in real units: lengths, angles, and regions of interest (ellipse
//! or freehand) with the mean, standard deviation, area and slab volume of what they enclose.
//!
//! Points are voxel coordinates on one slice (`[i, j, k]`, continuous); every distance and area
//! goes through `patient_from_voxel`, so anisotropic and oblique grids measure correctly.

use lightbox_core::{Affine3, Volume};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Length,
    Angle,
    Ellipse,
    Freehand,
}

impl Tool {
    /// Clicks that finish one measurement (freehand is drawn by dragging instead).
    pub fn clicks(self) -> usize {
        match self {
            Tool::Length | Tool::Ellipse => 2,
            Tool::Angle => 3,
            Tool::Freehand => usize::MAX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tool::Length => "length",
            Tool::Angle => "angle",
            Tool::Ellipse => "ellipse ROI",
            Tool::Freehand => "freehand ROI",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoiStats {
    /// Voxels whose centres lie inside.
    pub voxels: usize,
    pub mean: f64,
    /// Sample standard deviation.
    pub sd: f64,
    pub area_mm2: f64,
    /// The area times the slice thickness: the slab the outline encloses.
    pub volume_ml: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Measurement {
    Length { a: [f64; 3], b: [f64; 3], mm: f64 },
    Angle { a: [f64; 3], vertex: [f64; 3], b: [f64; 3], degrees: f64 },
    Roi { outline: Vec<[f64; 3]>, stats: RoiStats, freehand: bool },
}

impl Measurement {
    pub fn slice(&self) -> u32 {
        let first = match self {
            Measurement::Length { a, .. } | Measurement::Angle { a, .. } => *a,
            Measurement::Roi { outline, .. } => outline.first().copied().unwrap_or_default(),
        };
        first[2].round().max(0.0) as u32
    }

    /// One line for the user: the value(s) with units.
    pub fn text(&self) -> String {
        match self {
            Measurement::Length { mm, .. } => format!("{mm:.1} mm"),
            Measurement::Angle { degrees, .. } => format!("{degrees:.1}°"),
            Measurement::Roi { stats, .. } => format!(
                "mean {:.1} SD {:.1} · {:.1} mm² · {:.3} mL · {} px",
                stats.mean, stats.sd, stats.area_mm2, stats.volume_ml, stats.voxels
            ),
        }
    }
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

pub fn length(patient_from_voxel: &Affine3, a: [f64; 3], b: [f64; 3]) -> Measurement {
    let mm = distance(patient_from_voxel.transform_point(a), patient_from_voxel.transform_point(b));
    Measurement::Length { a, b, mm }
}

/// The angle at `vertex` between the arms to `a` and `b`, in patient space.
pub fn angle(patient_from_voxel: &Affine3, a: [f64; 3], vertex: [f64; 3], b: [f64; 3]) -> Measurement {
    let [pa, pv, pb] = [a, vertex, b].map(|p| patient_from_voxel.transform_point(p));
    let u = [0, 1, 2].map(|c| pa[c] - pv[c]);
    let w = [0, 1, 2].map(|c| pb[c] - pv[c]);
    let dot: f64 = (0..3).map(|c| u[c] * w[c]).sum();
    let norms = distance(pa, pv) * distance(pb, pv);
    let degrees = if norms > 0.0 { (dot / norms).clamp(-1.0, 1.0).acos().to_degrees() } else { 0.0 };
    Measurement::Angle { a, vertex, b, degrees }
}

/// The ellipse inscribed in the box with corners `a` and `b`, as a 72-point outline.
pub fn ellipse_outline(a: [f64; 3], b: [f64; 3]) -> Vec<[f64; 3]> {
    let (cx, cy) = ((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0);
    let (rx, ry) = ((a[0] - b[0]).abs() / 2.0, (a[1] - b[1]).abs() / 2.0);
    (0..72)
        .map(|n| {
            let t = f64::from(n) * std::f64::consts::TAU / 72.0;
            [cx + rx * t.cos(), cy + ry * t.sin(), a[2]]
        })
        .collect()
}

/// The statistics of the slice's voxels inside the closed `outline`; `None` when fewer than
/// three points or no voxel inside.
pub fn roi(volume: &Volume<f32>, outline: Vec<[f64; 3]>, freehand: bool) -> Option<Measurement> {
    if outline.len() < 3 {
        return None;
    }
    let [nx, ny, nz] = volume.dims();
    let k = outline[0][2].round();
    if k < 0.0 || k >= nz as f64 {
        return None;
    }
    let k = k as usize;
    let (min_x, max_x, min_y, max_y) =
        outline.iter().fold((f64::MAX, f64::MIN, f64::MAX, f64::MIN), |(a, b, c, d), p| {
            (a.min(p[0]), b.max(p[0]), c.min(p[1]), d.max(p[1]))
        });
    let clamp = |v: f64, n: usize| v.clamp(0.0, (n - 1) as f64) as usize;
    let (mut n, mut sum, mut sum2) = (0usize, 0.0f64, 0.0f64);
    for j in clamp(min_y.ceil(), ny)..=clamp(max_y.floor(), ny) {
        for i in clamp(min_x.ceil(), nx)..=clamp(max_x.floor(), nx) {
            if inside(&outline, i as f64, j as f64)
                && let Some(v) = volume.get(i, j, k).filter(|v| v.is_finite())
            {
                n += 1;
                sum += f64::from(v);
                sum2 += f64::from(v) * f64::from(v);
            }
        }
    }
    if n == 0 {
        return None;
    }
    let mean = sum / n as f64;
    let sd = if n > 1 { ((sum2 - n as f64 * mean * mean) / (n - 1) as f64).max(0.0).sqrt() } else { 0.0 };
    // The area in the slice's plane: the shoelace formula on the outline's in-plane mm.
    let a = &volume.patient_from_voxel;
    let ez = a.axis(2);
    let (ex, ey) = (a.axis(0), a.axis(1));
    let cross = [ex[1] * ey[2] - ex[2] * ey[1], ex[2] * ey[0] - ex[0] * ey[2], ex[0] * ey[1] - ex[1] * ey[0]];
    let in_plane_area = (cross[0].powi(2) + cross[1].powi(2) + cross[2].powi(2)).sqrt();
    let shoelace: f64 =
        outline.iter().zip(outline.iter().cycle().skip(1)).map(|(p, q)| p[0] * q[1] - q[0] * p[1]).sum::<f64>().abs()
            / 2.0;
    let area_mm2 = shoelace * in_plane_area;
    // The slab's volume: the outline's voxel area times a voxel's volume (|det|), right for
    // tilted grids too (a gantry tilt makes slices thinner than the step between them).
    let voxel_mm3 = (cross[0] * ez[0] + cross[1] * ez[1] + cross[2] * ez[2]).abs();
    let stats = RoiStats { voxels: n, mean, sd, area_mm2, volume_ml: shoelace * voxel_mm3 / 1000.0 };
    Some(Measurement::Roi { outline, stats, freehand })
}

/// Even-odd rule: is (x, y) inside the closed polygon?
fn inside(outline: &[[f64; 3]], x: f64, y: f64) -> bool {
    let mut result = false;
    for (p, q) in outline.iter().zip(outline.iter().cycle().skip(1)) {
        if (p[1] > y) != (q[1] > y) && x < (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]) + p[0] {
            result = !result;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Volume<f32> {
        // 0.5 × 0.8 mm pixels, 3 mm slices; values = column index.
        let (nx, ny, nz) = (40, 30, 3);
        let voxels = (0..nx * ny * nz).map(|n| (n % nx) as f32).collect();
        let affine = Affine3::from_columns([0.5, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 3.0], [0.0; 3]);
        Volume::new([nx, ny, nz], voxels, affine).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn lengths_and_angles_are_in_patient_millimetres() {
        let v = grid();
        let Measurement::Length { mm, .. } = length(&v.patient_from_voxel, [0.0, 0.0, 1.0], [6.0, 5.0, 1.0]) else {
            unreachable!()
        };
        assert!((mm - 5.0).abs() < 1e-9, "3 mm by 4 mm: {mm}");
        // Arms along x (4 voxels = 2 mm) and along y (2.5 voxels = 2 mm): a right angle; a
        // diagonal of equal mm is 45° although its voxel steps differ.
        let right = angle(&v.patient_from_voxel, [4.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 2.5, 1.0]);
        let diagonal = angle(&v.patient_from_voxel, [4.0, 0.0, 1.0], [0.0, 0.0, 1.0], [4.0, 2.5, 1.0]);
        assert!(matches!(right, Measurement::Angle { degrees, .. } if (degrees - 90.0).abs() < 1e-9));
        assert!(matches!(diagonal, Measurement::Angle { degrees, .. } if (degrees - 45.0).abs() < 1e-9));
    }

    #[test]
    fn an_ellipse_encloses_its_area_and_the_right_voxels() {
        let v = grid();
        // Box 10..30 × 5..25 voxels: radii 10 × 10 voxels = 5 × 8 mm.
        let Some(Measurement::Roi { stats, .. }) = roi(&v, ellipse_outline([10.0, 5.0, 2.0], [30.0, 25.0, 2.0]), false)
        else {
            unreachable!("the ellipse holds voxels")
        };
        let exact = std::f64::consts::PI * 5.0 * 8.0;
        assert!((stats.area_mm2 - exact).abs() / exact < 0.005, "{} vs {exact}", stats.area_mm2);
        // The values are the column index, symmetric about the centre column 20 (up to the
        // voxels that lie on the outline itself, which the even-odd rule takes on one side only).
        assert!((stats.mean - 20.0).abs() < 0.1, "{}", stats.mean);
        assert!(stats.sd > 4.0 && stats.sd < 6.0, "{}", stats.sd);
        // About π·10² voxels of 0.4 mm².
        assert!((stats.voxels as f64 - std::f64::consts::PI * 100.0).abs() < 12.0, "{}", stats.voxels);
        assert!((stats.volume_ml - exact * 3.0 / 1000.0).abs() < 0.002);
    }

    #[test]
    fn a_tilted_grid_measures_the_slab_perpendicular_to_its_plane() {
        // 1 mm pixels; slices 2 mm apart along a direction tilted 60° from the normal: the slab
        // is 1 mm thick, the voxel 1 mm³.
        let tilt = 60f64.to_radians();
        let affine = Affine3::from_columns(
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 2.0 * tilt.sin(), 2.0 * tilt.cos()],
            [0.0; 3],
        );
        let v = Volume::new([10, 10, 2], vec![1.0f32; 200], affine).unwrap_or_else(|_| unreachable!());
        let square = vec![[1.5, 1.5, 0.0], [5.5, 1.5, 0.0], [5.5, 5.5, 0.0], [1.5, 5.5, 0.0]];
        let Some(Measurement::Roi { stats, .. }) = roi(&v, square, true) else { unreachable!() };
        assert!((stats.area_mm2 - 16.0).abs() < 1e-9);
        assert!((stats.volume_ml - 0.016).abs() < 1e-9, "{}", stats.volume_ml);
    }

    #[test]
    fn a_freehand_square_counts_its_voxels_and_too_few_points_measure_nothing() {
        let v = grid();
        let square = vec![[1.5, 1.5, 0.0], [5.5, 1.5, 0.0], [5.5, 3.5, 0.0], [1.5, 3.5, 0.0]];
        let Some(Measurement::Roi { stats, .. }) = roi(&v, square, true) else { unreachable!() };
        assert_eq!(stats.voxels, 4 * 2);
        assert!((stats.area_mm2 - 4.0 * 0.5 * 2.0 * 0.8).abs() < 1e-9);
        assert_eq!(stats.mean, 3.5);
        assert!(roi(&v, vec![[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]], true).is_none());
        assert!(roi(&v, vec![[1.0, 1.0, 7.0], [2.0, 2.0, 7.0], [1.0, 2.0, 7.0]], true).is_none());
    }
}
