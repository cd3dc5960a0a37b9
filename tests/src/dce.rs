//! A synthetic breast DCE-MRI series with known lesions and known kinetics (issue 10: "a
//! synthetic DCE series you generate with realistic kinetic curves").
//!
//! One breast (a half-ellipsoid of fat with fibroglandular tissue), the pectoral muscle behind
//! it, and three spherical lesions, each with the two-exponential curve of the empirical
//! mathematical model (Fan et al. 2007), S = S0 (1 + A (1 − e^(−α t)) e^(−β t)), t after contrast
//! arrives:
//! - a washout lesion (type III, fast), r = 6 mm;
//! - a plateau lesion (type II, fast), r = 5 mm;
//! - a persistent lesion (type I, fast), r = 4.5 mm.
//!
//! Glands enhance slowly and persistently, muscle moderately, fat not at all. Phases: one
//! pre-contrast at 0 s, contrast at 30 s, then every 60 s to 360 s; the last phase is taken with
//! the patient moved (a known shift). Every phase is blurred as a scanner's point spread blurs
//! (σ 0.8 voxel in-plane, 0.5 through-plane), then gets Gaussian noise.

use lightbox_core::{Affine3, Volume};

/// A lesion of the phantom: its centre (voxel), radius (mm) and expected curve type.
pub struct DceLesionTruth {
    pub centre_mm: [f64; 3],
    pub radius_mm: f64,
    /// "washout", "plateau" or "persistent".
    pub curve: &'static str,
}

pub struct SyntheticDce {
    pub phases: Vec<Volume<f32>>,
    pub times_s: Vec<f64>,
    pub contrast_s: f64,
    pub lesions: Vec<DceLesionTruth>,
    /// The last phase's shift, mm (patient space).
    pub motion_mm: [f64; 3],
}

/// EMM enhancement (a fraction of S0) `t` seconds after contrast arrives.
fn emm(a: f64, alpha: f64, beta: f64, t: f64) -> f64 {
    if t <= 0.0 { 0.0 } else { a * (1.0 - (-alpha * t).exp()) * (-beta * t).exp() }
}

/// The phantom (128 × 96 × 40 voxels of 1 × 1 × 2 mm, axial).
pub fn synthetic_dce(seed: u64) -> SyntheticDce {
    let dims = [128usize, 96, 40];
    let [nx, ny, nz] = dims;
    let grid = Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0], [-64.0, -20.0, -40.0]);
    let times_s: Vec<f64> = vec![0.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0];
    let contrast_s = 30.0;
    let motion_mm = [1.6, -1.2, 0.0];
    let lesions = vec![
        DceLesionTruth { centre_mm: [-18.0, 30.0, -2.0], radius_mm: 6.0, curve: "washout" },
        DceLesionTruth { centre_mm: [16.0, 40.0, 6.0], radius_mm: 5.0, curve: "plateau" },
        DceLesionTruth { centre_mm: [4.0, 18.0, -12.0], radius_mm: 4.5, curve: "persistent" },
    ];
    // (S0, A, α, β) per tissue.
    let fat = (800.0, 0.0, 0.0, 0.0);
    let gland = (500.0, 0.35, 0.01, 0.0);
    let muscle = (400.0, 0.6, 0.02, 0.0);
    let kinetics = [(600.0, 2.5, 0.05, 0.0015), (550.0, 1.4, 0.05, 0.0002), (520.0, 2.0, 0.012, 0.0)];
    let tissue_at = |p: [f64; 3]| -> (f64, f64, f64, f64) {
        let [x, y, z] = p;
        // The pectoral muscle: a slab behind the breast (posterior is +y in LPS).
        if y > 52.0 && y < 62.0 && x.abs() < 60.0 && z.abs() < 38.0 {
            return muscle;
        }
        // The breast: half an ellipsoid in front of the chest wall (anterior is −y).
        let breast = (x / 58.0).powi(2) + ((y - 52.0) / 60.0).powi(2) + (z / 36.0).powi(2) < 1.0 && y <= 52.0;
        if !breast {
            return (0.0, 0.0, 0.0, 0.0);
        }
        for (lesion, k) in lesions.iter().zip(kinetics) {
            let d2: f64 = (0..3).map(|c| (p[c] - lesion.centre_mm[c]).powi(2)).sum();
            if d2 < lesion.radius_mm.powi(2) {
                return k;
            }
        }
        // Fibroglandular tissue: a lobulated cone towards the nipple.
        let lobes = (x / 30.0).powi(2)
            + ((y - 30.0) / 26.0).powi(2)
            + (z / 20.0).powi(2)
            + 0.15 * ((x * 0.3).sin() * (z * 0.25).cos());
        if lobes < 1.0 { gland } else { fat }
    };
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    let mut gaussian = move || {
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (u, v) = (uniform(), uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let last = times_s.len() - 1;
    let phases = times_s
        .iter()
        .enumerate()
        .map(|(index, &t)| {
            let shift = if index == last { motion_mm } else { [0.0; 3] };
            let mut clean = vec![0.0f64; nx * ny * nz];
            for k in 0..nz {
                for j in 0..ny {
                    for i in 0..nx {
                        let p = grid.transform_point([i as f64, j as f64, k as f64]);
                        // The patient moved by `shift`: what is at p now was at p − shift.
                        let (s0, a, alpha, beta) = tissue_at([p[0] - shift[0], p[1] - shift[1], p[2] - shift[2]]);
                        clean[i + nx * (j + ny * k)] = s0 * (1.0 + emm(a, alpha, beta, t - contrast_s));
                    }
                }
            }
            let blurred = lightbox_imaging::atrophy::gaussian_blur(&clean, dims, [0.8, 0.8, 0.5]);
            let voxels: Vec<f32> = blurred.into_iter().map(|v| (v + 8.0 * gaussian()).max(0.0) as f32).collect();
            Volume::new(dims, voxels, grid).unwrap_or_else(|_| unreachable!("the phantom's own grid"))
        })
        .collect();
    SyntheticDce { phases, times_s, contrast_s, lesions, motion_mm }
}
