//! Rigid registration of two scans by normalised mutual information (Studholme's NMI), coarse
//! to fine.
//!
//! The method, as the usual tools do it (FSL FLIRT, ANTs, elastix), kept small:
//! - both volumes are block-averaged to each level's spacing (6, 3, 1.5 mm by default);
//! - the fixed volume is sampled on a regular lattice (at most `max_samples` points), the
//!   moving one trilinearly at the transformed points;
//! - intensities go into `bins` bins, the moving value split between its two nearest bins
//!   (partial-volume binning, which keeps the cost smooth under sub-voxel moves);
//! - a compass search over the six parameters, in millimetres (a rotation counts as the arc it
//!   moves a point 80 mm from the centre), halving its step until `min_step_mm`;
//! - it starts from the two centres of mass, so scans with unrelated coordinates still meet.
//!
//! [`register_affine`] goes on from the rigid result with three scales and three shears (12
//! parameters), as FLIRT does for an atlas or a template of another head.

use lightbox_core::{Affine3, Volume};
use rayon::prelude::*;

use crate::ImagingError;
use crate::resample::{downsample, sample_trilinear};

/// The radius at which a rotation's step is measured, in mm (about a head's).
const LEVER_MM: f64 = 80.0;

/// A rigid motion about a centre: `moving = R·(fixed − centre) + centre + translation`, with
/// `R = Rz·Ry·Rx` (angles in radians about the patient's x, y, z axes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RigidParams {
    pub rotation_rad: [f64; 3],
    pub translation_mm: [f64; 3],
}

impl RigidParams {
    pub fn rotation(&self) -> [[f64; 3]; 3] {
        let [a, b, c] = self.rotation_rad;
        let (sa, ca, sb, cb, sc, cc) = (a.sin(), a.cos(), b.sin(), b.cos(), c.sin(), c.cos());
        // Rz(c) · Ry(b) · Rx(a)
        [
            [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
            [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
            [-sb, cb * sa, cb * ca],
        ]
    }

    /// The transform from fixed to moving patient space.
    pub fn to_affine(&self, centre: [f64; 3]) -> Affine3 {
        let r = self.rotation();
        let mut rows = [[0.0; 4]; 3];
        for (i, row) in rows.iter_mut().enumerate() {
            let rc: f64 = (0..3).map(|k| r[i][k] * centre[k]).sum();
            *row = [r[i][0], r[i][1], r[i][2], centre[i] - rc + self.translation_mm[i]];
        }
        Affine3 { rows }
    }

    /// The whole rotation's angle in degrees.
    pub fn angle_deg(&self) -> f64 {
        let r = self.rotation();
        ((r[0][0] + r[1][1] + r[2][2] - 1.0) / 2.0).clamp(-1.0, 1.0).acos().to_degrees()
    }

    fn to_search(self) -> [f64; 6] {
        let [a, b, c] = self.rotation_rad.map(|x| x * LEVER_MM);
        let [x, y, z] = self.translation_mm;
        [a, b, c, x, y, z]
    }

    fn from_search(p: [f64; 6]) -> Self {
        Self { rotation_rad: [p[0], p[1], p[2]].map(|x| x / LEVER_MM), translation_mm: [p[3], p[4], p[5]] }
    }
}

#[derive(Clone, Debug)]
pub struct RegistrationOptions {
    /// The spacing of each level, coarse to fine, in mm (an axis already coarser keeps its own).
    pub level_spacings_mm: Vec<f64>,
    pub bins: usize,
    /// Fixed-volume points sampled per level.
    pub max_samples: usize,
    /// The search stops when its step falls below this, in mm.
    pub min_step_mm: f64,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self { level_spacings_mm: vec![6.0, 3.0, 1.5], bins: 32, max_samples: 150_000, min_step_mm: 0.05 }
    }
}

#[derive(Clone, Debug)]
pub struct Registration {
    /// Maps a point of the fixed scan to the same anatomy in the moving scan (patient space).
    pub moving_from_fixed: Affine3,
    pub params: RigidParams,
    /// The centre of rotation: the fixed volume's centre of mass.
    pub centre: [f64; 3],
    /// NMI (1 = independent, 2 = identical) at the finest level: with the centres of mass
    /// aligned (where the search started) and where it ended.
    pub nmi_start: f64,
    pub nmi: f64,
    /// Cost evaluations over all levels.
    pub evaluations: usize,
}

/// Registers `moving` onto `fixed` rigidly (see the module's description).
pub fn register_rigid(
    fixed: &Volume<f32>,
    moving: &Volume<f32>,
    options: &RegistrationOptions,
) -> Result<Registration, ImagingError> {
    let fixed_range = intensity_range(fixed).ok_or(ImagingError::NoContrast { what: "the fixed volume" })?;
    let moving_range = intensity_range(moving).ok_or(ImagingError::NoContrast { what: "the moving volume" })?;
    let centre = centre_of_mass(fixed, fixed_range.0).ok_or(ImagingError::NoContrast { what: "the fixed volume" })?;
    let moving_centre =
        centre_of_mass(moving, moving_range.0).ok_or(ImagingError::NoContrast { what: "the moving volume" })?;
    let mut params =
        RigidParams { rotation_rad: [0.0; 3], translation_mm: [0, 1, 2].map(|c| moving_centre[c] - centre[c]) };
    let initial = params;
    let bins = options.bins.clamp(4, 256);
    let (mut evaluations, mut nmi_start, mut nmi) = (0, 0.0, 0.0);
    for &spacing in &options.level_spacings_mm {
        let fixed_level = downsample(fixed, factors_for(fixed, spacing));
        let moving_level = downsample(moving, factors_for(moving, spacing));
        let samples = lattice_samples(&fixed_level, fixed_range, bins, options.max_samples);
        let voxel_from_patient = moving_level
            .patient_from_voxel
            .inverse()
            .ok_or(ImagingError::DegenerateGeometry { what: "the moving volume" })?;
        let cost = |p: [f64; 6]| {
            let to_voxel = voxel_from_patient.compose(&RigidParams::from_search(p).to_affine(centre));
            nmi_of(&samples, &moving_level, &to_voxel, moving_range, bins, false).map_or(f64::INFINITY, |v| -v)
        };
        let start = params.to_search();
        let start_cost = cost(start);
        if !start_cost.is_finite() {
            return Err(ImagingError::NoOverlap);
        }
        nmi_start = -cost(initial.to_search());
        let step0 = 2.0 * spacing;
        let (best, best_cost, n) =
            compass_search(&cost, start, start_cost, step0, options.min_step_mm.max(spacing / 32.0));
        evaluations += n + 1;
        params = RigidParams::from_search(best);
        nmi = -best_cost;
    }
    Ok(Registration { moving_from_fixed: params.to_affine(centre), params, centre, nmi_start, nmi, evaluations })
}

/// A 12-parameter affine motion about a centre: `moving = R·S·H·(fixed − centre) + centre +
/// translation`, with the rigid part's `R`, `S = diag(scale)` and `H` the unit upper-triangular
/// shear `[[1, xy, xz], [0, 1, yz], [0, 0, 1]]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineParams {
    pub rigid: RigidParams,
    pub scale: [f64; 3],
    /// xy, xz, yz.
    pub shear: [f64; 3],
}

impl AffineParams {
    pub fn from_rigid(rigid: RigidParams) -> Self {
        Self { rigid, scale: [1.0; 3], shear: [0.0; 3] }
    }

    /// The linear part, R·S·H.
    fn matrix(&self) -> [[f64; 3]; 3] {
        let r = self.rigid.rotation();
        let [sx, sy, sz] = self.scale;
        let [xy, xz, yz] = self.shear;
        let sh = [[sx, sx * xy, sx * xz], [0.0, sy, sy * yz], [0.0, 0.0, sz]];
        let mut m = [[0.0; 3]; 3];
        for (i, row) in m.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..3).map(|k| r[i][k] * sh[k][j]).sum();
            }
        }
        m
    }

    /// The transform from fixed to moving patient space.
    pub fn to_affine(&self, centre: [f64; 3]) -> Affine3 {
        let m = self.matrix();
        let mut rows = [[0.0; 4]; 3];
        for (i, row) in rows.iter_mut().enumerate() {
            let mc: f64 = (0..3).map(|k| m[i][k] * centre[k]).sum();
            *row = [m[i][0], m[i][1], m[i][2], centre[i] - mc + self.rigid.translation_mm[i]];
        }
        Affine3 { rows }
    }

    /// How much the transform changes volumes: det(S·H) = sx·sy·sz.
    pub fn volume_ratio(&self) -> f64 {
        self.scale.iter().product()
    }

    /// In search units, all millimetres at [`LEVER_MM`]: a scale as ln(s), a shear as itself.
    fn to_search(self) -> [f64; 12] {
        let rigid = self.rigid.to_search();
        let mut p = [0.0; 12];
        p[..6].copy_from_slice(&rigid);
        for c in 0..3 {
            p[6 + c] = self.scale[c].ln() * LEVER_MM;
            p[9 + c] = self.shear[c] * LEVER_MM;
        }
        p
    }

    fn from_search(p: [f64; 12]) -> Self {
        let mut rigid = [0.0; 6];
        rigid.copy_from_slice(&p[..6]);
        Self {
            rigid: RigidParams::from_search(rigid),
            scale: [0, 1, 2].map(|c| (p[6 + c] / LEVER_MM).exp()),
            shear: [0, 1, 2].map(|c| p[9 + c] / LEVER_MM),
        }
    }
}

/// What an affine registration found.
#[derive(Clone, Debug)]
pub struct AffineRegistration {
    /// Maps a point of the fixed scan to the same anatomy in the moving scan (patient space).
    pub moving_from_fixed: Affine3,
    pub params: AffineParams,
    pub centre: [f64; 3],
    /// NMI after the rigid stage and at the end.
    pub nmi_rigid: f64,
    pub nmi: f64,
    pub evaluations: usize,
}

/// Registers `moving` onto `fixed` with an affine transform: first rigidly (all of
/// `options`' levels), then all 12 parameters at the levels of 3 mm and finer (at least the
/// finest level).
pub fn register_affine(
    fixed: &Volume<f32>,
    moving: &Volume<f32>,
    options: &RegistrationOptions,
) -> Result<AffineRegistration, ImagingError> {
    let rigid = register_rigid(fixed, moving, options)?;
    let fixed_range = intensity_range(fixed).ok_or(ImagingError::NoContrast { what: "the fixed volume" })?;
    let moving_range = intensity_range(moving).ok_or(ImagingError::NoContrast { what: "the moving volume" })?;
    let bins = options.bins.clamp(4, 256);
    let centre = rigid.centre;
    let mut params = AffineParams::from_rigid(rigid.params);
    let (mut evaluations, mut nmi) = (rigid.evaluations, rigid.nmi);
    let finest = options.level_spacings_mm.iter().copied().fold(f64::INFINITY, f64::min);
    let levels: Vec<f64> = options.level_spacings_mm.iter().copied().filter(|&s| s <= 3.0 || s <= finest).collect();
    for spacing in levels {
        let fixed_level = downsample(fixed, factors_for(fixed, spacing));
        let moving_level = downsample(moving, factors_for(moving, spacing));
        let samples = lattice_samples(&fixed_level, fixed_range, bins, options.max_samples);
        let voxel_from_patient = moving_level
            .patient_from_voxel
            .inverse()
            .ok_or(ImagingError::DegenerateGeometry { what: "the moving volume" })?;
        let cost = |p: [f64; 12]| {
            let to_voxel = voxel_from_patient.compose(&AffineParams::from_search(p).to_affine(centre));
            nmi_of(&samples, &moving_level, &to_voxel, moving_range, bins, true).map_or(f64::INFINITY, |v| -v)
        };
        let start = params.to_search();
        let start_cost = cost(start);
        if !start_cost.is_finite() {
            return Err(ImagingError::NoOverlap);
        }
        let (best, best_cost, n) =
            compass_search(&cost, start, start_cost, spacing, options.min_step_mm.max(spacing / 32.0));
        evaluations += n + 1;
        params = AffineParams::from_search(best);
        nmi = -best_cost;
    }
    Ok(AffineRegistration {
        moving_from_fixed: params.to_affine(centre),
        params,
        centre,
        nmi_rigid: rigid.nmi,
        nmi,
        evaluations,
    })
}

/// Per-axis block sizes that bring the volume's spacing up to about `spacing` mm.
fn factors_for(volume: &Volume<f32>, spacing: f64) -> [usize; 3] {
    volume.spacing_mm().map(|s| if s > 0.0 { ((spacing / s).floor() as usize).max(1) } else { 1 })
}

/// The range binned: the minimum (background) to the 99.5th percentile (robust to a few hot
/// voxels). `None` when the volume is constant.
fn intensity_range(volume: &Volume<f32>) -> Option<(f32, f32)> {
    let step = (volume.voxels().len() / 500_000).max(1);
    let mut sample: Vec<f32> = volume.voxels().iter().step_by(step).copied().filter(|v| v.is_finite()).collect();
    if sample.is_empty() {
        return None;
    }
    sample.sort_by(f32::total_cmp);
    let lo = sample[0];
    let hi = sample[((sample.len() - 1) as f64 * 0.995) as usize];
    (hi > lo).then_some((lo, hi))
}

/// The intensity-weighted centre of the volume above its background, in patient space.
fn centre_of_mass(volume: &Volume<f32>, background: f32) -> Option<[f64; 3]> {
    let [nx, ny, _] = volume.dims();
    let (mut sum, mut weight) = ([0.0f64; 3], 0.0f64);
    for (n, &v) in volume.voxels().iter().enumerate() {
        let w = f64::from(v - background);
        if w > 0.0 && w.is_finite() {
            let (i, j, k) = (n % nx, (n / nx) % ny, n / (nx * ny));
            sum[0] += w * i as f64;
            sum[1] += w * j as f64;
            sum[2] += w * k as f64;
            weight += w;
        }
    }
    (weight > 0.0).then(|| volume.patient_from_voxel.transform_point(sum.map(|s| s / weight)))
}

struct Sample {
    point: [f64; 3],
    bin: usize,
}

/// Fixed-volume voxels on a regular lattice, with their intensity bins.
fn lattice_samples(volume: &Volume<f32>, (lo, hi): (f32, f32), bins: usize, max_samples: usize) -> Vec<Sample> {
    let [nx, ny, nz] = volume.dims();
    let stride = ((volume.voxels().len() as f64 / max_samples.max(1) as f64).cbrt().ceil() as usize).max(1);
    let mut samples = Vec::new();
    for k in (0..nz).step_by(stride) {
        for j in (0..ny).step_by(stride) {
            for i in (0..nx).step_by(stride) {
                let v = volume.voxels()[i + nx * (j + ny * k)];
                if !v.is_finite() {
                    continue;
                }
                let bin = (((v - lo) / (hi - lo)).clamp(0.0, 1.0) * (bins - 1) as f32).round() as usize;
                let point = volume.patient_from_voxel.transform_point([i as f64, j as f64, k as f64]);
                samples.push(Sample { point, bin });
            }
        }
    }
    samples
}

/// NMI = (H(F) + H(M)) / H(F, M) over the samples that land inside the moving volume; `None`
/// when fewer than a tenth of them do. With `outside_as_background`, samples that land outside
/// count as the moving volume's background instead of being left out: a scaling search would
/// otherwise favour pushing the fixed background out of the moving volume.
fn nmi_of(
    samples: &[Sample],
    moving: &Volume<f32>,
    to_voxel: &Affine3,
    (lo, hi): (f32, f32),
    bins: usize,
    outside_as_background: bool,
) -> Option<f64> {
    let scale = (bins - 1) as f32 / (hi - lo);
    let joint = samples
        .par_chunks(4096)
        .fold(
            || vec![0.0f64; bins * bins],
            |mut hist, chunk| {
                for s in chunk {
                    let value = sample_trilinear(moving, to_voxel.transform_point(s.point))
                        .or(if outside_as_background { Some(lo) } else { None });
                    if let Some(v) = value {
                        let b = ((v - lo) * scale).clamp(0.0, (bins - 1) as f32);
                        let b0 = (b.floor() as usize).min(bins - 2);
                        let frac = f64::from(b - b0 as f32);
                        hist[s.bin * bins + b0] += 1.0 - frac;
                        hist[s.bin * bins + b0 + 1] += frac;
                    }
                }
                hist
            },
        )
        .reduce(
            || vec![0.0f64; bins * bins],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    let total: f64 = joint.iter().sum();
    if total < samples.len() as f64 * 0.1 || total <= 0.0 {
        return None;
    }
    let entropy = |p: &mut dyn Iterator<Item = f64>| -> f64 {
        p.filter(|&c| c > 0.0).map(|c| c / total).map(|q| -q * q.ln()).sum()
    };
    let fixed_entropy = entropy(&mut (0..bins).map(|f| joint[f * bins..(f + 1) * bins].iter().sum::<f64>()));
    let moving_entropy = entropy(&mut (0..bins).map(|m| (0..bins).map(|f| joint[f * bins + m]).sum::<f64>()));
    let joint_entropy = entropy(&mut joint.iter().copied());
    (joint_entropy > 0.0).then(|| (fixed_entropy + moving_entropy) / joint_entropy)
}

/// Compass search: try ± `step` along each parameter, take the first that lowers the cost,
/// halve the step when none does. Returns the best point, its cost and the evaluations made.
fn compass_search<const N: usize>(
    cost: &impl Fn([f64; N]) -> f64,
    start: [f64; N],
    start_cost: f64,
    step0: f64,
    min_step: f64,
) -> ([f64; N], f64, usize) {
    let (mut best, mut best_cost, mut step, mut evaluations) = (start, start_cost, step0, 0);
    while step >= min_step && evaluations < 5_000 {
        let mut improved = false;
        'directions: for d in 0..N {
            for sign in [1.0, -1.0] {
                let mut trial = best;
                trial[d] += sign * step;
                let c = cost(trial);
                evaluations += 1;
                if c < best_cost {
                    (best, best_cost, improved) = (trial, c, true);
                    break 'directions;
                }
            }
        }
        if !improved {
            step /= 2.0;
        }
    }
    (best, best_cost, evaluations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::resample_into;

    /// A head-like phantom: an ellipsoid with a brighter off-centre ellipsoid and a dark one
    /// inside, so that every rotation changes the picture.
    fn phantom() -> Volume<f32> {
        let n = 48;
        let mut voxels = vec![0.0f32; n * n * n];
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let p = [i as f64 - 24.0, j as f64 - 22.0, k as f64 - 25.0];
                    let inside = |c: [f64; 3], r: [f64; 3]| {
                        ((p[0] - c[0]) / r[0]).powi(2) + ((p[1] - c[1]) / r[1]).powi(2) + ((p[2] - c[2]) / r[2]).powi(2)
                            < 1.0
                    };
                    let mut v = 0.0;
                    if inside([0.0, 0.0, 0.0], [18.0, 15.0, 13.0]) {
                        v = 100.0;
                    }
                    if inside([6.0, -4.0, 3.0], [6.0, 4.0, 5.0]) {
                        v = 180.0;
                    }
                    if inside([-7.0, 5.0, -2.0], [4.0, 6.0, 3.0]) {
                        v = 30.0;
                    }
                    voxels[i + n * (j + n * k)] = v;
                }
            }
        }
        let affine = Affine3::from_columns([2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [-48.0, -40.0, -50.0]);
        Volume::new([n; 3], voxels, affine).unwrap_or_else(|_| unreachable!())
    }

    fn max_displacement(a: &Affine3, b: &Affine3) -> f64 {
        let mut worst = 0.0f64;
        for corner in 0..8 {
            let p = [0, 1, 2].map(|c| if corner >> c & 1 == 1 { 40.0 } else { -40.0 });
            let (x, y) = (a.transform_point(p), b.transform_point(p));
            worst = worst.max(((x[0] - y[0]).powi(2) + (x[1] - y[1]).powi(2) + (x[2] - y[2]).powi(2)).sqrt());
        }
        worst
    }

    #[test]
    fn rotation_matrix_is_orthonormal_and_the_angle_is_recovered() {
        let p = RigidParams { rotation_rad: [0.1, -0.05, 0.2], translation_mm: [0.0; 3] };
        let r = p.rotation();
        for a in 0..3 {
            for b in 0..3 {
                let dot: f64 = (0..3).map(|k| r[a][k] * r[b][k]).sum();
                assert!((dot - f64::from(u8::from(a == b))).abs() < 1e-12);
            }
        }
        let single = RigidParams { rotation_rad: [0.0, 0.0, 0.3], translation_mm: [0.0; 3] };
        assert!((single.angle_deg() - 0.3f64.to_degrees()).abs() < 1e-9);
    }

    #[test]
    fn recovers_a_known_rigid_motion() -> Result<(), ImagingError> {
        let fixed = phantom();
        // The moving scan is the fixed one seen through a known motion: its value at m equals
        // the fixed value at truth⁻¹(m), i.e. moving_from_fixed = truth.
        let truth = RigidParams { rotation_rad: [0.08, -0.05, 0.12], translation_mm: [4.0, -3.0, 2.5] }
            .to_affine([0.0, 4.0, 0.0]);
        let fixed_from_moving = truth.inverse().unwrap_or(Affine3::IDENTITY);
        let moving = resample_into(&fixed, fixed.dims(), fixed.patient_from_voxel, &fixed_from_moving, 0.0)?;
        let options = RegistrationOptions { level_spacings_mm: vec![4.0, 2.0], ..Default::default() };
        let found = register_rigid(&fixed, &moving, &options)?;
        let error = max_displacement(&found.moving_from_fixed, &truth);
        assert!(error < 1.0, "registration off by {error:.2} mm (NMI {:.3} from {:.3})", found.nmi, found.nmi_start);
        assert!(found.nmi > found.nmi_start);
        Ok(())
    }

    #[test]
    fn recovers_a_known_affine_motion() -> Result<(), ImagingError> {
        // Smoothed as a scan is: NMI between a crisp picture and a blurred one favours a larger
        // scale (the crisp background moves off the blurred edge).
        let crisp = phantom();
        let smooth = crate::atrophy::gaussian_blur(
            &crisp.voxels().iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            crisp.dims(),
            [1.0; 3],
        );
        let fixed = Volume::new(crisp.dims(), smooth.into_iter().map(|v| v as f32).collect(), crisp.patient_from_voxel)
            .unwrap_or_else(|_| unreachable!());
        let truth = AffineParams {
            rigid: RigidParams { rotation_rad: [0.05, -0.04, 0.08], translation_mm: [3.0, -2.0, 1.5] },
            scale: [1.12, 0.93, 1.05],
            shear: [0.04, -0.03, 0.02],
        };
        let truth_affine = truth.to_affine([0.0, 4.0, 0.0]);
        let fixed_from_moving = truth_affine.inverse().unwrap_or(Affine3::IDENTITY);
        let moving = resample_into(&fixed, fixed.dims(), fixed.patient_from_voxel, &fixed_from_moving, 0.0)?;
        let options = RegistrationOptions { level_spacings_mm: vec![4.0, 2.0], ..Default::default() };
        let found = register_affine(&fixed, &moving, &options)?;
        let error = max_displacement(&found.moving_from_fixed, &truth_affine);
        assert!(error < 2.0, "affine registration off by {error:.2} mm: {:?}", found.params);
        let rigid_error =
            max_displacement(&register_rigid(&fixed, &moving, &options)?.moving_from_fixed, &truth_affine);
        assert!(error < rigid_error / 2.0, "affine {error:.2} mm vs rigid {rigid_error:.2} mm");
        assert!((found.params.volume_ratio() - truth.volume_ratio()).abs() < 0.03, "{:?}", found.params);
        assert!(found.nmi >= found.nmi_rigid);
        Ok(())
    }

    #[test]
    fn a_constant_volume_is_refused() {
        let flat = Volume::new([4, 4, 4], vec![7.0f32; 64], Affine3::IDENTITY).unwrap_or_else(|_| unreachable!());
        let err = register_rigid(&phantom(), &flat, &RegistrationOptions::default());
        assert!(matches!(err, Err(ImagingError::NoContrast { what: "the moving volume" })), "{err:?}");
    }
}
