//! Breast DCE-MRI kinetics: a time-intensity curve's initial enhancement and its delayed-phase
//! shape, the way BI-RADS MRI describes them.
//!
//! - The initial phase is the first two minutes after contrast arrives; the initial enhancement
//!   is the rise from the pre-contrast signal to the initial phase's peak, in % of the
//!   pre-contrast signal (slow < 50 %, medium 50–100 %, fast > 100 %).
//! - The delayed phase is after it; its change from that peak to the last sample, in %, gives
//!   the curve type: I persistent (a rise of more than 10 %), II plateau (within ±10 %), III
//!   washout (a fall of more than 10 %).

use lightbox_core::Volume;
use rayon::prelude::*;

use crate::AnalysisError;

/// How long after contrast arrives the initial phase lasts, s.
pub const INITIAL_PHASE_S: f64 = 120.0;
/// The change (in % of the initial peak) beyond which the delayed phase rises or falls.
pub const PLATEAU_PERCENT: f64 = 10.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurveType {
    /// Type I: still rising in the delayed phase.
    Persistent,
    /// Type II: flat in the delayed phase.
    Plateau,
    /// Type III: falling in the delayed phase.
    Washout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialRate {
    Slow,
    Medium,
    Fast,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Kinetics {
    pub initial_enhancement_percent: f64,
    pub initial_rate: InitialRate,
    pub delayed_change_percent: f64,
    pub curve_type: CurveType,
}

/// Kinetics of one curve: `times_s` of each phase (increasing), `signal` at each, contrast
/// arriving at `contrast_s`. Needs a pre-contrast phase, one in the initial phase and one after.
pub fn curve_kinetics(times_s: &[f64], signal: &[f64], contrast_s: f64) -> Result<Kinetics, AnalysisError> {
    if times_s.len() != signal.len() || times_s.windows(2).any(|w| w[1] <= w[0]) {
        return Err(AnalysisError::Input(format!(
            "{} times and {} signals: the times must match the signals and increase",
            times_s.len(),
            signal.len()
        )));
    }
    let phases = Phases::of(times_s, contrast_s)?;
    phases.kinetics(|t| signal[t]).ok_or_else(|| AnalysisError::Input("the pre-contrast signal is not positive".into()))
}

/// Which phases are pre-contrast, in the initial two minutes, and the last: found once for a
/// series, then used for every curve of it.
struct Phases {
    pre: Vec<usize>,
    initial: Vec<usize>,
    last: usize,
}

impl Phases {
    fn of(times_s: &[f64], contrast_s: f64) -> Result<Self, AnalysisError> {
        let pre: Vec<usize> = (0..times_s.len()).filter(|&t| times_s[t] <= contrast_s).collect();
        let initial: Vec<usize> = (0..times_s.len())
            .filter(|&t| times_s[t] > contrast_s && times_s[t] <= contrast_s + INITIAL_PHASE_S)
            .collect();
        let last = (0..times_s.len()).rfind(|&t| times_s[t] > contrast_s + INITIAL_PHASE_S);
        match (last, pre.is_empty(), initial.is_empty()) {
            (Some(last), false, false) => Ok(Self { pre, initial, last }),
            _ => Err(AnalysisError::Input(
                "the series needs a pre-contrast phase, a phase in the first two minutes after contrast and one later"
                    .into(),
            )),
        }
    }

    /// The kinetics of the curve `signal(phase)`; `None` when its pre-contrast signal is not
    /// positive.
    fn kinetics(&self, signal: impl Fn(usize) -> f64) -> Option<Kinetics> {
        let baseline = self.pre.iter().map(|&t| signal(t)).sum::<f64>() / self.pre.len() as f64;
        if baseline <= 0.0 {
            return None;
        }
        let peak = self.initial.iter().map(|&t| signal(t)).fold(f64::MIN, f64::max);
        Some(kinetics_of(baseline, peak, signal(self.last)))
    }
}

/// Initial enhancement, its rate, the delayed change and the curve type from the pre-contrast
/// signal, the initial peak and the last sample.
fn kinetics_of(baseline: f64, peak: f64, last: f64) -> Kinetics {
    let initial_enhancement_percent = 100.0 * (peak - baseline) / baseline;
    let delayed_change_percent = 100.0 * (last - peak) / peak.max(f64::MIN_POSITIVE);
    Kinetics {
        initial_enhancement_percent,
        initial_rate: if initial_enhancement_percent < 50.0 {
            InitialRate::Slow
        } else if initial_enhancement_percent <= 100.0 {
            InitialRate::Medium
        } else {
            InitialRate::Fast
        },
        delayed_change_percent,
        curve_type: if delayed_change_percent > PLATEAU_PERCENT {
            CurveType::Persistent
        } else if delayed_change_percent < -PLATEAU_PERCENT {
            CurveType::Washout
        } else {
            CurveType::Plateau
        },
    }
}

/// What made the DCE analysis, for the report.
pub const DCE_METHOD: &str = "Lightbox breast DCE 1: rigid NMI motion correction of each phase onto the first, contrast arrival from the enhancement of the brightest 1 % of the breast, voxel-wise BI-RADS kinetics (initial 2 min, plateau +-10 %), candidates: fast-enhancing (> 100 %) components of at least 50 mm3 grown to half their peak enhancement";

/// Voxels that enhance at least this much initially (%) count as enhancing.
pub const ENHANCING_PERCENT: f64 = 50.0;
/// Lesion candidates enhance faster than this (%): BI-RADS "fast".
pub const CANDIDATE_PERCENT: f64 = 100.0;
/// Smaller candidates are left out (about a 4.5 mm sphere; foci are below 5 mm).
pub const CANDIDATE_MIN_MM3: f64 = 50.0;

/// One lesion candidate.
#[derive(Clone, Debug)]
pub struct DceLesion {
    pub volume_ml: f64,
    /// Its centre, patient (LPS) mm.
    pub centre_mm: [f64; 3],
    /// The longest distance between two of its voxel centres, mm.
    pub max_diameter_mm: f64,
    /// Of its mean time-intensity curve.
    pub kinetics: Kinetics,
    /// Its mean signal at each phase (the time-intensity curve).
    pub curve: Vec<f64>,
    /// The share of its voxels whose own curve washes out.
    pub washout_fraction: f64,
}

#[derive(Clone, Debug)]
pub struct DceAnalysis {
    /// Each phase's time, s after the first.
    pub times_s: Vec<f64>,
    /// When contrast arrived (s), and how many phases were before it.
    pub contrast_s: f64,
    pub pre_phases: usize,
    /// Each phase's motion before correction: how far the middle of the volume moved, mm.
    pub motion_mm: Vec<f64>,
    /// The first post-contrast phase minus the mean pre-contrast, on the first phase's grid.
    pub subtraction: Volume<f32>,
    /// The subtraction's maximum along the slice axis: one slice, at the middle slice's place.
    pub mip: Volume<f32>,
    /// Per voxel: 0 (not enhancing), 1 persistent, 2 plateau, 3 washout.
    pub curve_types: Volume<u8>,
    /// Largest first.
    pub lesions: Vec<DceLesion>,
    /// Per voxel: 0, or `k` where `lesions[k - 1]` is.
    pub lesion_of: Vec<u32>,
}

fn percentile(mut values: Vec<f32>, q: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let at = ((values.len() - 1) as f64 * q) as usize;
    *values.select_nth_unstable_by(at, f32::total_cmp).1
}

/// Analyses a dynamic contrast-enhanced series: `phases` on one grid at `times_s` (s after the
/// first, increasing). `contrast_s`, when the headers say when contrast was given; else it is
/// found from the data (the last phase before the brightest 1 % of the breast rises by 20 %).
pub fn analyse_dce(
    phases: &[Volume<f32>],
    times_s: &[f64],
    contrast_s: Option<f64>,
) -> Result<DceAnalysis, AnalysisError> {
    use lightbox_imaging::{RegistrationOptions, register_rigid, resample_into};
    if phases.len() < 3 || phases.len() != times_s.len() || times_s.windows(2).any(|w| w[1] <= w[0]) {
        return Err(AnalysisError::Input(format!(
            "a DCE series needs at least three phases with increasing times (got {} phases, {} times)",
            phases.len(),
            times_s.len()
        )));
    }
    let first = &phases[0];
    let (dims, grid) = (first.dims(), first.patient_from_voxel);
    if phases.iter().any(|p| p.dims() != dims) {
        return Err(AnalysisError::Input("the phases are not on one grid".into()));
    }
    // Motion correction: every phase rigidly onto the first.
    let mut corrected = vec![first.clone()];
    let mut motion_mm = vec![0.0];
    let [nx, ny, nz] = dims;
    let centre = grid.transform_point([nx, ny, nz].map(|n| n as f64 / 2.0));
    for phase in &phases[1..] {
        let found = register_rigid(
            first,
            phase,
            &RegistrationOptions { level_spacings_mm: vec![4.0, 2.0], ..Default::default() },
        )?;
        let moved = found.moving_from_fixed.transform_point(centre);
        motion_mm.push((0..3).map(|c| (moved[c] - centre[c]).powi(2)).sum::<f64>().sqrt());
        corrected.push(resample_into(phase, dims, grid, &found.moving_from_fixed, 0.0)?);
    }
    // The breast: above a tenth of the first phase's 99th percentile.
    let level = 0.1 * percentile(first.voxels().iter().copied().step_by(7).collect(), 0.99);
    let body: Vec<bool> = first.voxels().iter().map(|&v| v > level).collect();
    let contrast_s = match contrast_s {
        Some(c) => c,
        None => {
            let base = first.voxels();
            let rise = |p: &Volume<f32>| {
                let gains: Vec<f32> = p
                    .voxels()
                    .iter()
                    .zip(base)
                    .zip(&body)
                    .filter(|(_, b)| **b)
                    .map(|((v, b0), _)| (v - b0) / b0.max(1e-6))
                    .collect();
                percentile(gains, 0.99)
            };
            let arrival = corrected.iter().position(|p| rise(p) > 0.2).ok_or_else(|| {
                AnalysisError::Input("no phase enhances: is this a contrast-enhanced dynamic series?".into())
            })?;
            if arrival == 0 {
                return Err(AnalysisError::Input("no pre-contrast phase".into()));
            }
            times_s[arrival - 1]
        }
    };
    let pre: Vec<usize> = (0..phases.len()).filter(|&t| times_s[t] <= contrast_s).collect();
    let first_post = pre.len();
    if pre.is_empty() || first_post >= phases.len() {
        return Err(AnalysisError::Input(format!(
            "contrast at {contrast_s:.0} s leaves no pre- or post-contrast phase"
        )));
    }
    // Voxel-wise kinetics, the phases sorted out once, the voxels in parallel.
    let n = first.voxels().len();
    let split = Phases::of(times_s, contrast_s)?;
    let per_voxel: Vec<(f32, u8)> = (0..n)
        .into_par_iter()
        .map(|at| {
            if !body[at] {
                return (0.0, 0);
            }
            match split.kinetics(|t| f64::from(corrected[t].voxels()[at])) {
                Some(k) => {
                    let kind = if k.initial_enhancement_percent < ENHANCING_PERCENT {
                        0
                    } else {
                        match k.curve_type {
                            CurveType::Persistent => 1,
                            CurveType::Plateau => 2,
                            CurveType::Washout => 3,
                        }
                    };
                    (k.initial_enhancement_percent as f32, kind)
                }
                None => (0.0, 0),
            }
        })
        .collect();
    let (enhancement, types): (Vec<f32>, Vec<u8>) = per_voxel.into_iter().unzip();
    let mean_pre: Vec<f32> =
        (0..n).map(|at| pre.iter().map(|&t| corrected[t].voxels()[at]).sum::<f32>() / pre.len() as f32).collect();
    let subtraction: Vec<f32> = corrected[first_post].voxels().iter().zip(&mean_pre).map(|(a, b)| a - b).collect();
    let mut mip = vec![f32::MIN; nx * ny];
    for (at, &v) in subtraction.iter().enumerate() {
        let m = &mut mip[at % (nx * ny)];
        *m = m.max(v);
    }
    let mid = grid.transform_point([0.0, 0.0, (nz / 2) as f64]);
    let mut mip_grid = grid;
    for (r, m) in mip_grid.rows.iter_mut().zip(mid) {
        r[3] = m;
    }
    // Candidates: fast-enhancing components.
    let fast: Vec<bool> = enhancement.iter().map(|&e| f64::from(e) > CANDIDATE_PERCENT).collect();
    let (labels, sizes) = lightbox_imaging::morphology::components(&fast, [nz, ny, nx], 26);
    let voxel_mm3 = lightbox_imaging::voxel_volume_ml(&grid) * 1000.0;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    for (at, &l) in labels.iter().enumerate() {
        if l > 0 && sizes[l as usize - 1] as f64 * voxel_mm3 >= CANDIDATE_MIN_MM3 {
            members[l as usize - 1].push(at);
        }
    }
    members.retain(|m| !m.is_empty());
    // Each candidate reaches out to half its own peak enhancement (at least "enhancing"): a
    // fixed threshold would cut a weakly enhancing lesion short at its blurred edge.
    let mut taken = vec![false; n];
    for seed in &members {
        seed.iter().for_each(|&at| taken[at] = true);
    }
    for seed in &mut members {
        let peak = seed.iter().map(|&at| enhancement[at]).fold(f32::MIN, f32::max);
        let floor = (0.5 * peak).max(ENHANCING_PERCENT as f32);
        let mut frontier = seed.clone();
        while let Some(at) = frontier.pop() {
            let (i, j, k) = ((at % nx) as isize, ((at / nx) % ny) as isize, (at / (nx * ny)) as isize);
            for (di, dj, dk) in (-1..=1).flat_map(|a| (-1..=1).flat_map(move |b| (-1..=1).map(move |c| (a, b, c)))) {
                let (x, y, z) = (i + di, j + dj, k + dk);
                if x < 0 || y < 0 || z < 0 || x >= nx as isize || y >= ny as isize || z >= nz as isize {
                    continue;
                }
                let next = x as usize + nx * (y as usize + ny * z as usize);
                if !taken[next] && body[next] && enhancement[next] >= floor {
                    taken[next] = true;
                    seed.push(next);
                    frontier.push(next);
                }
            }
        }
    }
    members.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut lesion_of = vec![0u32; n];
    let mut lesions = Vec::new();
    for (index, voxels) in members.iter().enumerate() {
        let positions: Vec<[f64; 3]> = voxels
            .iter()
            .map(|&at| grid.transform_point([(at % nx) as f64, ((at / nx) % ny) as f64, (at / (nx * ny)) as f64]))
            .collect();
        let centre_mm = [0, 1, 2].map(|c| positions.iter().map(|p| p[c]).sum::<f64>() / positions.len() as f64);
        let step = (positions.len() / 2000).max(1);
        let sample: Vec<&[f64; 3]> = positions.iter().step_by(step).collect();
        let mut diameter: f64 = 0.0;
        for (i, a) in sample.iter().enumerate() {
            for b in &sample[i + 1..] {
                diameter = diameter.max((0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f64>().sqrt());
            }
        }
        let curve: Vec<f64> = (0..phases.len())
            .map(|t| voxels.iter().map(|&at| f64::from(corrected[t].voxels()[at])).sum::<f64>() / voxels.len() as f64)
            .collect();
        let kinetics = curve_kinetics(times_s, &curve, contrast_s)?;
        let washout = voxels.iter().filter(|&&at| types[at] == 3).count();
        for &at in voxels {
            lesion_of[at] = index as u32 + 1;
        }
        lesions.push(DceLesion {
            volume_ml: voxels.len() as f64 * voxel_mm3 / 1000.0,
            centre_mm,
            max_diameter_mm: diameter,
            kinetics,
            curve,
            washout_fraction: washout as f64 / voxels.len() as f64,
        });
    }
    let volume = |v: Vec<f32>, d: [usize; 3], g| Volume::new(d, v, g).map_err(|e| AnalysisError::Input(e.to_string()));
    Ok(DceAnalysis {
        times_s: times_s.to_vec(),
        contrast_s,
        pre_phases: pre.len(),
        motion_mm,
        subtraction: volume(subtraction, dims, grid)?,
        mip: volume(mip, [nx, ny, 1], mip_grid)?,
        curve_types: Volume::new(dims, types, grid).map_err(|e| AnalysisError::Input(e.to_string()))?,
        lesions,
        lesion_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A curve from a two-exponential uptake and washout model: S = S0 (1 + A (1 − e^(−a t)) e^(−b t)).
    fn curve(amplitude: f64, uptake: f64, washout: f64) -> (Vec<f64>, Vec<f64>) {
        // Phases every 60 s; contrast arrives at 60 s (one pre-contrast phase at 0, another at 60).
        let times: Vec<f64> = (0..8).map(|i| 60.0 * i as f64).collect();
        let signal = times
            .iter()
            .map(|&t| {
                let s = (t - 60.0).max(0.0);
                100.0 * (1.0 + amplitude * (1.0 - (-uptake * s).exp()) * (-washout * s).exp())
            })
            .collect();
        (times, signal)
    }

    #[test]
    fn synthetic_curves_get_their_known_type_and_rate() {
        // Fast uptake then washout (b > 0), a plateau (b = 0), and slow persistent uptake.
        let cases = [
            ((1.6, 0.05, 0.0025), CurveType::Washout, InitialRate::Fast),
            ((1.2, 0.05, 0.0), CurveType::Plateau, InitialRate::Fast),
            ((0.9, 0.004, 0.0), CurveType::Persistent, InitialRate::Slow),
            ((0.7, 0.05, -0.0015), CurveType::Persistent, InitialRate::Medium),
        ];
        for ((a, up, wash), kind, rate) in cases {
            let (t, s) = curve(a, up, wash);
            let k = curve_kinetics(&t, &s, 60.0).expect("a complete series");
            assert_eq!((k.curve_type, k.initial_rate), (kind, rate), "{a} {up} {wash}: {k:?}");
            // The initial enhancement is the model's at the initial phase's best sample.
            let expected = [60.0, 120.0]
                .map(|s: f64| 100.0 * a * (1.0 - (-up * s).exp()) * (-wash * s).exp())
                .into_iter()
                .fold(f64::MIN, f64::max);
            assert!((k.initial_enhancement_percent - expected).abs() < 1e-9, "{k:?} against {expected}");
        }
    }

    #[test]
    fn an_incomplete_series_is_refused_with_the_reason() {
        let err = curve_kinetics(&[0.0, 90.0], &[100.0, 180.0], 60.0).expect_err("no delayed phase");
        assert!(err.to_string().contains("one later"), "{err}");
        assert!(curve_kinetics(&[0.0, 0.0, 200.0], &[1.0, 2.0, 3.0], 60.0).is_err());
    }
}
