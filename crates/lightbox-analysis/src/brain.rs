//! Brain atrophy between two T1 scans of one patient, compared with what a healthy person of
//! the patient's age loses.
//!
//! - The percent brain volume change (PBVC) is `lightbox_imaging::atrophy`'s boundary shift
//!   integral in a halfway space, inside deepbet's brain mask of the baseline.
//! - It is annualised by the interval between the two studies.
//! - The healthy rate for the age comes from Hedman et al. 2012 (meta-analysis of 56
//!   longitudinal studies: −0.2 %/yr at 35, −0.5 %/yr at 60, more after 60), continued past 60
//!   to ADNI's healthy elderly (SIENA, −0.65 %/yr, mean age about 76; Cover 2011). Its spread is
//!   De Stefano 2016's healthy SD (0.15 %/yr); "within" means within two SDs of the healthy mean.
//! - The pathological cut-off is De Stefano 2016's −0.37 %/yr (MS against healthy adults).

use std::sync::atomic::AtomicBool;

use lightbox_ai::deepbet::Deepbet;
use lightbox_core::Volume;
use lightbox_imaging::atrophy::{AtrophyOptions, percent_brain_volume_change};
use lightbox_imaging::tissue::{TissueOptions, classify};

use crate::AnalysisError;

/// Healthy whole-brain volume change (%/yr) by age: (age, rate) points, linear between them.
const HEALTHY_RATE: [(f64, f64); 3] = [(35.0, -0.2), (60.0, -0.5), (76.0, -0.65)];
/// The spread of healthy adults' rates, %/yr (De Stefano 2016: −0.27 ± 0.15).
pub const HEALTHY_SD_PERCENT_PER_YEAR: f64 = 0.15;
/// The pathological cut-off, %/yr (De Stefano 2016).
pub const PATHOLOGICAL_CUTOFF_PERCENT_PER_YEAR: f64 = -0.37;
/// The measurement's own error, % (SIENA's, Smith 2002; ours is tested against it).
pub const PBVC_ERROR_PERCENT: f64 = 0.15;
/// What made the numbers, for the report.
pub const METHOD: &str = "Lightbox atrophy 1: deepbet 1.0.2 brain mask, rigid NMI registration, halfway-space boundary shift integral with differential bias correction";

/// The healthy mean rate of whole-brain volume change at `age_years`, %/yr (negative: loss).
/// Younger than 35 keeps the value at 35; older than 76 the value at 76.
pub fn healthy_rate_percent_per_year(age_years: f64) -> f64 {
    let first = HEALTHY_RATE[0];
    let last = HEALTHY_RATE[HEALTHY_RATE.len() - 1];
    if age_years <= first.0 {
        return first.1;
    }
    if age_years >= last.0 {
        return last.1;
    }
    HEALTHY_RATE
        .windows(2)
        .find(|w| age_years <= w[1].0)
        .map_or(last.1, |w| w[0].1 + (w[1].1 - w[0].1) * (age_years - w[0].0) / (w[1].0 - w[0].0))
}

/// How the patient's rate compares with a healthy person's of the same age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Within two SDs of the healthy mean, or losing less.
    WithinHealthy,
    /// Losing more than two SDs beyond the healthy mean.
    BeyondHealthy,
}

#[derive(Clone, Debug)]
pub struct AtrophyReport {
    pub pbvc_percent: f64,
    pub interval_years: f64,
    pub rate_percent_per_year: f64,
    pub age_years: Option<f64>,
    /// The healthy mean rate at the patient's age, %/yr (needs the age).
    pub healthy_rate_percent_per_year: Option<f64>,
    pub comparison: Option<Comparison>,
    pub beyond_pathological_cutoff: bool,
    /// The baseline's brain tissue volume, mL.
    pub brain_ml: f64,
    pub rotation_deg: f64,
    pub seconds: f64,
    /// What makes the number less trustworthy (a brain cut by the field of view, thick slices).
    pub warnings: Vec<String>,
}

impl AtrophyReport {
    /// One line for a person: the numbers and what they mean against the norms.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "brain volume change {:+.2} % over {:.2} years ({:+.2} %/yr; measurement error ±{PBVC_ERROR_PERCENT} %)",
            self.pbvc_percent, self.interval_years, self.rate_percent_per_year
        );
        if let (Some(age), Some(healthy), Some(c)) =
            (self.age_years, self.healthy_rate_percent_per_year, self.comparison)
        {
            let lo = healthy - 2.0 * HEALTHY_SD_PERCENT_PER_YEAR;
            s += &format!(
                "; {} what a healthy person of {age:.0} loses ({healthy:+.2} %/yr, healthy down to {lo:+.2} %/yr, Hedman 2012)",
                match c {
                    Comparison::WithinHealthy => "within",
                    Comparison::BeyondHealthy => "beyond",
                }
            );
        }
        s += &format!(
            "; {} the pathological cut-off {PATHOLOGICAL_CUTOFF_PERCENT_PER_YEAR} %/yr (De Stefano 2016)",
            if self.beyond_pathological_cutoff { "beyond" } else { "not beyond" }
        );
        s
    }
}

/// One time point's volumes, mL.
#[derive(Clone, Debug)]
pub struct BrainVolumes {
    /// The intracranial volume: deepbet's brain mask (brain and the CSF around it).
    pub icv_ml: f64,
    pub grey_ml: f64,
    pub white_ml: f64,
    pub csf_ml: f64,
    /// Brain parenchymal fraction: (grey + white) / intracranial volume.
    pub bpf: f64,
    pub seconds: f64,
    /// Per voxel of the T1's grid, the likeliest tissue: 0 outside the intracranial mask, then
    /// [`TISSUE_LABELS`]. (The volumes above come from partial-volume fractions, so they differ
    /// slightly from counting these labels.)
    pub labels: Volume<u8>,
    /// Per voxel of the T1's grid, its fraction of CSF (0 outside the mask; partial volume).
    pub csf_fraction: Vec<f32>,
}

/// The label values of [`BrainVolumes::labels`], in order: 1, 2, 3.
pub const TISSUE_LABELS: [&str; 3] = lightbox_imaging::tissue::CLASSES;

/// What made the volumes, for the report.
pub const VOLUMES_METHOD: &str = "Lightbox volumes 2: deepbet 1.0.2 brain mask, N3-style bias-field correction inside it, three-class Gaussian mixture with a Potts MRF (ICM) and linear partial-volume mixing at tissue boundaries";

/// Cross-sectional volumes of a T1: intracranial volume, grey and white matter, CSF and the
/// brain parenchymal fraction, after bias-field correction (issue 9, items 1 and 2; regions are
/// [`crate::regions`]).
pub fn volumes(deepbet: &Deepbet, t1: &Volume<f32>) -> Result<BrainVolumes, AnalysisError> {
    let started = std::time::Instant::now();
    let brain = deepbet.extract(t1, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = brain.mask_f32();
    let corrected = lightbox_imaging::bias::correct_bias(t1, &mask, &Default::default())?.corrected;
    let tissues = classify(&corrected, &mask, &TissueOptions::default())?;
    let [csf_ml, grey_ml, white_ml] = tissues.volumes_ml;
    let labels = Volume::new(t1.dims(), tissues.labels, t1.patient_from_voxel)
        .map_err(|e| AnalysisError::Input(format!("tissue labels: {e}")))?;
    let [csf_fraction, _, _] = tissues.fractions;
    Ok(BrainVolumes {
        icv_ml: tissues.mask_ml,
        grey_ml,
        white_ml,
        csf_ml,
        bpf: (grey_ml + white_ml) / tissues.mask_ml.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
        labels,
        csf_fraction,
    })
}

/// The interval between the scans must be positive and finite.
pub fn check_interval(interval_years: f64) -> Result<(), AnalysisError> {
    if interval_years.is_finite() && interval_years > 0.0 {
        Ok(())
    } else {
        Err(AnalysisError::Input(format!(
            "the interval between the scans must be positive (got {interval_years:.2} years): is the follow-up later than the baseline?"
        )))
    }
}

/// A positive interval and, when given, a plausible age (checked before any work is done).
fn check_interval_and_age(interval_years: f64, age_years: Option<f64>) -> Result<(), AnalysisError> {
    check_interval(interval_years)?;
    match age_years.filter(|a| !(0.0..=130.0).contains(a)) {
        Some(age) => Err(AnalysisError::Input(format!("an age of {age} years is not plausible"))),
        None => Ok(()),
    }
}

/// Measures the brain volume change from `baseline` to `followup` (T1s of one head,
/// `interval_years` apart) and compares its yearly rate with the healthy norm at `age_years`.
pub fn atrophy(
    deepbet: &Deepbet,
    baseline: &Volume<f32>,
    followup: &Volume<f32>,
    interval_years: f64,
    age_years: Option<f64>,
) -> Result<AtrophyReport, AnalysisError> {
    check_interval_and_age(interval_years, age_years)?;
    let started = std::time::Instant::now();
    let brain = deepbet.extract(baseline, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mut report = atrophy_in_mask(baseline, followup, &brain.mask_f32(), interval_years, age_years)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// [`atrophy`] with the baseline's brain mask already made (deepbet's, non-zero = brain, on
/// the baseline's grid): a pipeline that has it does not extract the brain again.
pub fn atrophy_in_mask(
    baseline: &Volume<f32>,
    followup: &Volume<f32>,
    brain: &Volume<f32>,
    interval_years: f64,
    age_years: Option<f64>,
) -> Result<AtrophyReport, AnalysisError> {
    check_interval_and_age(interval_years, age_years)?;
    let started = std::time::Instant::now();
    let found = percent_brain_volume_change(baseline, followup, brain, &AtrophyOptions::default())?;
    let rate = found.pbvc_percent / interval_years;
    let healthy = age_years.map(healthy_rate_percent_per_year);
    let comparison = healthy.map(|h| {
        if rate < h - 2.0 * HEALTHY_SD_PERCENT_PER_YEAR { Comparison::BeyondHealthy } else { Comparison::WithinHealthy }
    });
    Ok(AtrophyReport {
        pbvc_percent: found.pbvc_percent,
        interval_years,
        rate_percent_per_year: rate,
        age_years,
        healthy_rate_percent_per_year: healthy,
        comparison,
        beyond_pathological_cutoff: rate < PATHOLOGICAL_CUTOFF_PERCENT_PER_YEAR,
        brain_ml: found.brain_ml,
        rotation_deg: found.rotation_deg,
        seconds: started.elapsed().as_secs_f64(),
        warnings: found.warnings,
    })
}

/// What made the lesion change, for the report.
pub const LESION_CHANGE_METHOD: &str = "Lightbox lesion change 2: deepbet 1.0.2 brain mask on the follow-up FLAIR, rigid NMI registration of the baseline onto it, through-plane resolution matched (the FLAIR with thinner slices blurred along them by the sigma that makes the two most alike), subtraction and threshold (5 robust SD, 1.1 x the brain median, 15 mm3, a rim of about 3 mm through-plane left out); enlarging when 20 % of the lesion was above 1.3 x the median before";

/// New and enlarging lesions between two FLAIRs of one patient, on the follow-up's grid.
#[derive(Clone, Debug)]
pub struct LesionChangeReport {
    pub lesions: Vec<lightbox_imaging::lesion_change::ChangedLesion>,
    /// On the follow-up's grid: 0, 1 where a new lesion is, 2 where an enlarging one is.
    pub labels: Volume<u8>,
    /// On the follow-up's grid: 0, or `k` where `lesions[k - 1]` is.
    pub lesion_of: Vec<u32>,
    /// How far the baseline had moved (rotation, degrees), from the registration.
    pub rotation_deg: f64,
    /// How the two FLAIRs' slice thickness was matched.
    pub matching: lightbox_imaging::lesion_change::Matching,
    pub seconds: f64,
}

impl LesionChangeReport {
    pub fn new_count(&self) -> usize {
        self.lesions.iter().filter(|l| !l.enlarging).count()
    }

    pub fn enlarging_count(&self) -> usize {
        self.lesions.iter().filter(|l| l.enlarging).count()
    }

    /// Total volume of the new (`false`) or enlarging (`true`) lesions, mL.
    pub fn volume_ml(&self, enlarging: bool) -> f64 {
        // + 0.0: an empty sum is -0.0, which would print as "-0.00".
        self.lesions.iter().filter(|l| l.enlarging == enlarging).map(|l| l.volume_ml).sum::<f64>() + 0.0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} new lesion(s) ({:.2} mL) and {} enlarging ({:.2} mL) since the prior FLAIR",
            self.new_count(),
            self.volume_ml(false),
            self.enlarging_count(),
            self.volume_ml(true)
        )
    }
}

/// New and enlarging MS lesions from `baseline` to `followup` (FLAIRs of one head): the
/// baseline is registered onto the follow-up, their through-plane resolution is matched, and
/// the subtraction of `lightbox_imaging::lesion_change` runs inside deepbet's brain mask of the
/// follow-up (`lightbox_imaging::lesion_change::matched_change`).
pub fn lesion_change(
    deepbet: &Deepbet,
    baseline: &Volume<f32>,
    followup: &Volume<f32>,
) -> Result<LesionChangeReport, AnalysisError> {
    use lightbox_imaging::lesion_change::{LesionChangeOptions, Placed, matched_change};
    let started = std::time::Instant::now();
    let brain = deepbet.extract(followup, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let registration = lightbox_imaging::register_rigid(followup, baseline, &Default::default())?;
    let (change, matching) = matched_change(
        Placed { volume: baseline, from_grid: registration.moving_from_fixed },
        Placed { volume: followup, from_grid: lightbox_core::Affine3::IDENTITY },
        &brain.mask_f32(),
        &LesionChangeOptions::default(),
    )?;
    let kinds: Vec<u8> = change
        .lesion_of
        .iter()
        .map(|&k| match k {
            0 => 0,
            k => 1 + u8::from(change.lesions[k as usize - 1].enlarging),
        })
        .collect();
    let labels = Volume::new(followup.dims(), kinds, followup.patient_from_voxel)
        .map_err(|e| AnalysisError::Input(format!("lesion labels: {e}")))?;
    Ok(LesionChangeReport {
        lesions: change.lesions,
        labels,
        lesion_of: change.lesion_of,
        rotation_deg: registration.params.angle_deg(),
        matching,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_healthy_rate_follows_hedman_and_adni() {
        assert_eq!(healthy_rate_percent_per_year(20.0), -0.2);
        assert_eq!(healthy_rate_percent_per_year(35.0), -0.2);
        assert!((healthy_rate_percent_per_year(47.5) + 0.35).abs() < 1e-12);
        assert_eq!(healthy_rate_percent_per_year(60.0), -0.5);
        assert!((healthy_rate_percent_per_year(68.0) + 0.575).abs() < 1e-12);
        assert_eq!(healthy_rate_percent_per_year(90.0), -0.65);
    }
}
