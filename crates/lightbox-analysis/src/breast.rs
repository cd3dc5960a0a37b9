//! Breast DCE-MRI kinetics: a time-intensity curve's initial enhancement and its delayed-phase
//! shape, the way BI-RADS MRI describes them.
//!
//! - The initial phase is the first two minutes after contrast arrives; the initial enhancement
//!   is the rise from the pre-contrast signal to the initial phase's peak, in % of the
//!   pre-contrast signal (slow < 50 %, medium 50–100 %, fast > 100 %).
//! - The delayed phase is after it; its change from that peak to the last sample, in %, gives
//!   the curve type: I persistent (a rise of more than 10 %), II plateau (within ±10 %), III
//!   washout (a fall of more than 10 %).

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
    let pre: Vec<f64> = times_s.iter().zip(signal).filter(|(t, _)| **t <= contrast_s).map(|(_, s)| *s).collect();
    let initial: Vec<f64> = times_s
        .iter()
        .zip(signal)
        .filter(|(t, _)| **t > contrast_s && **t <= contrast_s + INITIAL_PHASE_S)
        .map(|(_, s)| *s)
        .collect();
    let last = times_s.iter().zip(signal).rfind(|(t, _)| **t > contrast_s + INITIAL_PHASE_S).map(|(_, s)| *s);
    let (Some(last), false, false) = (last, pre.is_empty(), initial.is_empty()) else {
        return Err(AnalysisError::Input(
            "the series needs a pre-contrast phase, a phase in the first two minutes after contrast and one later"
                .into(),
        ));
    };
    let baseline = pre.iter().sum::<f64>() / pre.len() as f64;
    if baseline <= 0.0 {
        return Err(AnalysisError::Input("the pre-contrast signal is not positive".into()));
    }
    let peak = initial.iter().copied().fold(f64::MIN, f64::max);
    let initial_enhancement_percent = 100.0 * (peak - baseline) / baseline;
    let delayed_change_percent = 100.0 * (last - peak) / peak.max(f64::MIN_POSITIVE);
    Ok(Kinetics {
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
