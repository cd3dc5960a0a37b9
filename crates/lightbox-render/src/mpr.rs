//! Planes for multiplanar reformation: where in the patient (mm, LPS) each output pixel lies,
//! and the same plane in a volume's voxel space, which is what the GPU and the CPU reference
//! sample.

use lightbox_core::Affine3;

/// How a thick slab is projected along the plane's normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlabMode {
    /// The plane itself (a slab of one sample; thicker slabs average).
    Single,
    /// Maximum intensity projection.
    Max,
    /// Minimum intensity projection.
    Min,
    /// Average intensity.
    Mean,
    /// Direct volume rendering through the slab (front to back along the normal): the window is
    /// the transfer function's ramp; gradient shading; early ray termination.
    Volume,
}

impl SlabMode {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Single => 0,
            Self::Max => 1,
            Self::Min => 2,
            Self::Mean => 3,
            Self::Volume => 4,
        }
    }
}

/// How a label map is drawn over the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelStyle {
    /// 0 (invisible) to 1 (opaque), for filled labels.
    pub opacity: f32,
    /// Only the labels' edges, opaque.
    pub outline: bool,
}

/// How a scalar map is drawn: values from `lower` (dark red) to `upper` (white) on the "hot"
/// colour map, below `lower` not at all.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalarStyle {
    pub lower: f32,
    pub upper: f32,
    pub opacity: f32,
}

/// The "hot" colour map as `mpr.wgsl` computes it (black, red, yellow, white over 0..1).
pub fn hot(t: f32) -> [f32; 3] {
    [(3.0 * t).clamp(0.0, 1.0), (3.0 * t - 1.0).clamp(0.0, 1.0), (3.0 * t - 2.0).clamp(0.0, 1.0)]
}

/// The colour of label `label` (golden-angle hues, saturation 0.85, value 1), as `mpr.wgsl`
/// computes it.
pub fn label_colour(label: u32) -> [f32; 3] {
    let h = (label as f32 * 0.618_034).fract() * 6.0;
    let c = 0.85f32;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let rgb = if h < 1.0 {
        [c, x, 0.0]
    } else if h < 2.0 {
        [x, c, 0.0]
    } else if h < 3.0 {
        [0.0, c, x]
    } else if h < 4.0 {
        [0.0, x, c]
    } else if h < 5.0 {
        [x, 0.0, c]
    } else {
        [c, 0.0, x]
    };
    rgb.map(|v| v + 1.0 - c)
}

/// A rectangle in patient space: output pixel `(i, j)` has its centre at
/// `corner + (i + ½)·pixel_mm·right + (j + ½)·pixel_mm·down`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MprPlane {
    /// The top-left corner of pixel (0, 0), mm (LPS).
    pub corner: [f64; 3],
    /// Unit vector along image rows (screen right).
    pub right: [f64; 3],
    /// Unit vector along image columns (screen down).
    pub down: [f64; 3],
    pub pixel_mm: f64,
    pub width: u32,
    pub height: u32,
    /// Slab thickness along `right × down`, mm (0: the plane itself).
    pub slab_mm: f64,
    pub mode: SlabMode,
}

/// The plane in voxel space (voxel centres at integer coordinates), as the shader takes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VoxelPlane {
    pub origin: [f32; 3],
    pub step_x: [f32; 3],
    pub step_y: [f32; 3],
    pub step_z: [f32; 3],
    pub samples: u32,
    /// The length of `step_z` in the patient, mm: the volume rendering's opacities are per mm
    /// of ray, so that a coarser step (a larger volume, or one held at half resolution) draws
    /// the same picture.
    pub step_mm: f32,
}

fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    a.map(|v| v * s)
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn unit(a: [f64; 3]) -> [f64; 3] {
    let n = dot(a, a).sqrt().max(1e-12);
    scale(a, 1.0 / n)
}

/// The eight corners of a volume's voxel-centre box, in patient space.
fn corners(patient_from_voxel: &Affine3, dims: [usize; 3]) -> Vec<[f64; 3]> {
    let far = dims.map(|d| d.saturating_sub(1) as f64);
    (0..8)
        .map(|c| {
            let p = [0, 1, 2].map(|a| if c & (1 << a) != 0 { far[a] } else { 0.0 });
            patient_from_voxel.transform_point(p)
        })
        .collect()
}

impl MprPlane {
    /// The plane through `centre` spanned by `right` and `down`, just covering the volume,
    /// with square pixels of `pixel_mm`.
    pub fn covering(
        patient_from_voxel: &Affine3,
        dims: [usize; 3],
        centre: [f64; 3],
        right: [f64; 3],
        down: [f64; 3],
        pixel_mm: f64,
    ) -> Self {
        let (right, down) = (unit(right), unit(down));
        // The volume's extent along each in-plane direction, measured from the centre.
        let extent = |axis: [f64; 3]| {
            corners(patient_from_voxel, dims)
                .iter()
                .map(|c| dot(axis, [c[0] - centre[0], c[1] - centre[1], c[2] - centre[2]]))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), d| (lo.min(d), hi.max(d)))
        };
        let (x0, x1) = extent(right);
        let (y0, y1) = extent(down);
        let pixel_mm = pixel_mm.max(1e-3);
        // Pixel centres at the extremes: half a pixel of margin on each side.
        let width = (((x1 - x0) / pixel_mm).floor() as u32 + 1).clamp(1, 4096);
        let height = (((y1 - y0) / pixel_mm).floor() as u32 + 1).clamp(1, 4096);
        let corner = add(add(centre, scale(right, x0 - 0.5 * pixel_mm)), scale(down, y0 - 0.5 * pixel_mm));
        Self { corner, right, down, pixel_mm, width, height, slab_mm: 0.0, mode: SlabMode::Single }
    }

    /// Axial, as radiologists read it: patient's right on the screen's left, anterior up.
    pub fn axial(patient_from_voxel: &Affine3, dims: [usize; 3], centre: [f64; 3], pixel_mm: f64) -> Self {
        Self::covering(patient_from_voxel, dims, centre, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], pixel_mm)
    }

    /// Coronal: patient's right on the left, superior up.
    pub fn coronal(patient_from_voxel: &Affine3, dims: [usize; 3], centre: [f64; 3], pixel_mm: f64) -> Self {
        Self::covering(patient_from_voxel, dims, centre, [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], pixel_mm)
    }

    /// Sagittal: anterior on the left, superior up.
    pub fn sagittal(patient_from_voxel: &Affine3, dims: [usize; 3], centre: [f64; 3], pixel_mm: f64) -> Self {
        Self::covering(patient_from_voxel, dims, centre, [0.0, 1.0, 0.0], [0.0, 0.0, -1.0], pixel_mm)
    }

    /// An oblique plane: `right` and `down` need not be orthogonal to each other exactly;
    /// `down` is made orthogonal to `right`.
    pub fn oblique(
        patient_from_voxel: &Affine3,
        dims: [usize; 3],
        centre: [f64; 3],
        right: [f64; 3],
        down: [f64; 3],
        pixel_mm: f64,
    ) -> Self {
        let right = unit(right);
        let down = unit(add(down, scale(right, -dot(down, right))));
        Self::covering(patient_from_voxel, dims, centre, right, down, pixel_mm)
    }

    /// A 3-D view of the whole volume from a direction given by `azimuth` (about the patient's
    /// vertical axis, 0: from the front) and `elevation` (radians): the image plane faces the
    /// viewer and the slab spans the volume's depth.
    pub fn view_3d(
        patient_from_voxel: &Affine3,
        dims: [usize; 3],
        azimuth: f64,
        elevation: f64,
        pixel_mm: f64,
    ) -> Self {
        let centre = patient_from_voxel.transform_point(dims.map(|d| 0.5 * (d as f64 - 1.0)));
        // From the front (anterior) the viewer looks along +y (posterior); patient's right on the
        // screen's left, superior up.
        let (sa, ca, se, ce) = (azimuth.sin(), azimuth.cos(), elevation.sin(), elevation.cos());
        let look = [sa * ce, ca * ce, se];
        // Screen right = up × look (patient's right on the left from the front); screen down =
        // look × right (superior up).
        let right = cross([0.0, 0.0, -1.0], look);
        let right = if dot(right, right) < 1e-6 { [1.0, 0.0, 0.0] } else { unit(right) };
        let down = unit(cross(look, right));
        // A square as wide as the volume's diagonal: the same size from every direction, so a
        // renderer's target fits any rotation.
        let all = corners(patient_from_voxel, dims);
        let radius = all
            .iter()
            .map(|c| {
                dot(
                    [c[0] - centre[0], c[1] - centre[1], c[2] - centre[2]],
                    [c[0] - centre[0], c[1] - centre[1], c[2] - centre[2]],
                )
                .sqrt()
            })
            .fold(0.0, f64::max);
        let pixel_mm = pixel_mm.max(1e-3);
        let side = ((2.0 * radius / pixel_mm).ceil() as u32).clamp(1, 4096);
        let half = 0.5 * f64::from(side) * pixel_mm;
        let corner = add(add(centre, scale(right, -half)), scale(down, -half));
        let mut plane = Self {
            corner,
            right,
            down,
            pixel_mm,
            width: side,
            height: side,
            slab_mm: 2.0 * radius + pixel_mm,
            mode: SlabMode::Volume,
        };
        plane.mode = SlabMode::Volume;
        plane
    }

    /// The same plane as a slab of `slab_mm`, projected by `mode`.
    pub fn with_slab(mut self, slab_mm: f64, mode: SlabMode) -> Self {
        self.slab_mm = slab_mm.max(0.0);
        self.mode = mode;
        self
    }

    pub fn normal(&self) -> [f64; 3] {
        unit(cross(self.right, self.down))
    }

    /// Where the centre of pixel `(i, j)` lies in the patient.
    pub fn patient_point(&self, i: f64, j: f64) -> [f64; 3] {
        add(add(self.corner, scale(self.right, (i + 0.5) * self.pixel_mm)), scale(self.down, (j + 0.5) * self.pixel_mm))
    }

    /// The pixel (fractional, centres at integers) a patient point projects onto.
    pub fn pixel_of(&self, p: [f64; 3]) -> (f64, f64) {
        let d = [p[0] - self.corner[0], p[1] - self.corner[1], p[2] - self.corner[2]];
        (dot(d, self.right) / self.pixel_mm - 0.5, dot(d, self.down) / self.pixel_mm - 0.5)
    }

    /// The plane in the voxel space of a volume; slab samples are one step of the volume's
    /// smallest spacing apart, centred on the plane.
    pub fn in_voxels(&self, patient_from_voxel: &Affine3) -> Option<VoxelPlane> {
        let voxel_from_patient = patient_from_voxel.inverse()?;
        let spacing = [0, 1, 2].map(|c| dot(patient_from_voxel.axis(c), patient_from_voxel.axis(c)).sqrt());
        let step = spacing.iter().copied().fold(f64::INFINITY, f64::min).max(1e-3);
        // A volume rendering takes at most 384 steps through the slab (a ray per pixel).
        let step = if self.mode == SlabMode::Volume { step.max(self.slab_mm / 384.0) } else { step };
        let samples = if self.slab_mm > 0.0 { (self.slab_mm / step).round().max(1.0) as u32 } else { 1 };
        let n = self.normal();
        let first = add(self.patient_point(0.0, 0.0), scale(n, -0.5 * (f64::from(samples) - 1.0) * step));
        let origin = voxel_from_patient.transform_point(first);
        let direction = |v: [f64; 3]| {
            let a = voxel_from_patient.transform_point([0.0; 3]);
            let b = voxel_from_patient.transform_point(v);
            [b[0] - a[0], b[1] - a[1], b[2] - a[2]].map(|x| x as f32)
        };
        Some(VoxelPlane {
            origin: origin.map(|x| x as f32),
            step_x: direction(scale(self.right, self.pixel_mm)),
            step_y: direction(scale(self.down, self.pixel_mm)),
            step_z: direction(scale(n, step)),
            samples,
            step_mm: step as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_and_patient_points_round_trip() {
        let a = Affine3::from_columns([0.8, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 3.0], [-100.0, -90.0, 20.0]);
        let plane = MprPlane::axial(&a, [256, 256, 20], a.transform_point([127.5, 127.5, 10.0]), 0.8);
        assert_eq!((plane.width, plane.height), (256, 256));
        let p = plane.patient_point(17.0, 200.0);
        let (i, j) = plane.pixel_of(p);
        assert!((i - 17.0).abs() < 1e-9 && (j - 200.0).abs() < 1e-9);
        // Pixel (i, j) of the axial plane through slice 10 is voxel (i, j, 10).
        let v = plane.in_voxels(&a).expect("invertible");
        let at = |i: f32, j: f32| [0, 1, 2].map(|c| v.origin[c] + i * v.step_x[c] + j * v.step_y[c]);
        let q = at(17.0, 200.0);
        assert!((q[0] - 17.0).abs() < 1e-3 && (q[1] - 200.0).abs() < 1e-3 && (q[2] - 10.0).abs() < 1e-3, "{q:?}");
        let slab = plane.with_slab(9.0, SlabMode::Max).in_voxels(&a).expect("invertible");
        assert_eq!(slab.samples, 11, "9 mm at the 0.8 mm step");
        // From the front: patient's right on the screen's left, superior up, looking posterior.
        let front = MprPlane::view_3d(&a, [256, 256, 20], 0.0, 0.0, 1.0);
        assert_eq!(front.right.map(f64::round), [1.0, 0.0, 0.0]);
        assert_eq!(front.down.map(f64::round), [0.0, 0.0, -1.0]);
        assert_eq!(front.normal().map(f64::round), [0.0, 1.0, 0.0]);
        assert_eq!(front.width, front.height);
    }
}
