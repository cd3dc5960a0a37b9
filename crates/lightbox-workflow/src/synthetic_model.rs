//! `prostate-lesion-synthetic`: a small lesion-detection model that Lightbox trains itself, on
//! the device, from synthetic lesions inserted into a real prostate ADC map
//! (`lightbox_analysis::synthetic`), so the prostate pipeline can be tested end to end with a
//! model that finds something. It is an nnU-Net-style package (PlainConvUNet, ADC only, labels
//! background and lesion) like an imported one, and runs through the same code.
//!
//! It learns "a focal ADC drop in soft tissue": it has never seen a real cancer, a T2W or a
//! DWI. Its model card says so; it is not for clinical use.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lightbox_ai::nnunet::{NnUnet, PackageSpec, PlainConvUNetConfig, write_package};
use lightbox_ai::train::{Random, TrainOptions, TrainingCase};
use lightbox_ai::{AiDevice, DevicePreference};
use lightbox_analysis::prostate::{ExtractionOptions, extract_lesions};
use lightbox_analysis::synthetic::insert_lesions;
use lightbox_core::Volume;

use crate::WorkflowError;

pub const PROSTATE_LESION_SYNTHETIC: &str = "prostate-lesion-synthetic";
/// Bumped whenever the recipe (network, data, training) changes.
pub const RECIPE_VERSION: &str = "1";
/// Training steps of the recipe.
pub const STEPS: usize = 1500;
/// Held-out cases are drawn from seeds at and above this; training never reaches it.
const EVALUATION_SEEDS: u64 = 1 << 40;

/// What training made.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub package: PathBuf,
    pub steps: usize,
    pub seconds: f64,
    /// Mean loss over the first and the last tenth of the steps.
    pub first_loss: f32,
    pub last_loss: f32,
    pub device: String,
}

/// The model on held-out synthetic cases.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub cases: usize,
    pub lesions: usize,
    /// Case level: the case's score is its highest likelihood, positive when it has a lesion.
    pub auroc: f64,
    /// Dice of the candidates (likelihood ≥ 0.5) against the lesions, over all cases.
    pub dice: f64,
    pub seconds_per_case: f64,
    /// Every candidate: its likelihood and whether it hit a lesion (PI-CAI's hit: intersection
    /// over union above 0.1).
    pub candidates: Vec<(f32, bool)>,
    /// Every lesion: the highest likelihood of a candidate that hit it (0 when none did).
    pub lesion_likelihoods: Vec<f32>,
}

impl Evaluation {
    /// Lesion-level sensitivity and false positives per case at a likelihood threshold (a point
    /// of the FROC curve).
    pub fn at(&self, threshold: f32) -> (f64, f64) {
        let found = self.lesion_likelihoods.iter().filter(|&&l| l >= threshold && l > 0.0).count();
        let false_positives = self.candidates.iter().filter(|(l, hit)| *l >= threshold && !hit).count();
        (found as f64 / self.lesions.max(1) as f64, false_positives as f64 / self.cases.max(1) as f64)
    }

    /// Lesions hit by a candidate of likelihood ≥ 0.5, over all lesions.
    pub fn sensitivity(&self) -> f64 {
        self.at(0.5).0
    }

    /// Candidates of likelihood ≥ 0.5 that hit no lesion, per case.
    pub fn false_positives_per_case(&self) -> f64 {
        self.at(0.5).1
    }
}

/// The recipe's network: four stages of 8–64 features on patches of 8 × 64 × 64 voxels at the
/// ADC's own spacing (3 mm slices), in-plane kernels in the first stage as nnU-Net plans them
/// for thick slices.
fn spec(adc: &Volume<f32>) -> PackageSpec {
    let s = adc.spacing_mm();
    PackageSpec {
        name: PROSTATE_LESION_SYNTHETIC.into(),
        version: format!("recipe {RECIPE_VERSION}"),
        description:
            "Focal ADC drops (synthetic lesions in one real prostate ADC map); a test and demonstration model, \
                      not for clinical use"
                .into(),
        licence: "MIT (weights trained by Lightbox; the ADC map is TCIA QIN-PROSTATE-01-0001 via dcmqi)".into(),
        source: "lightbox models train-synthetic".into(),
        arch: PlainConvUNetConfig {
            n_stages: 4,
            features_per_stage: vec![8, 16, 32, 64],
            kernel_sizes: vec![[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
            strides: vec![[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
            n_conv_per_stage: vec![2, 2, 2, 2],
            n_blocks_per_stage: Vec::new(),
            residual: false,
            n_conv_per_stage_decoder: vec![1, 1, 1],
            decoder_kernel_sizes: Vec::new(),
            conv_bias: true,
            input_channels: 1,
            num_classes: 2,
        },
        transpose_forward: vec![0, 1, 2],
        normalization_schemes: vec!["ZScoreNormalization".into()],
        intensity_properties: String::new(),
        use_mask_for_norm: vec![false],
        mirror_axes: Vec::new(),
        softmax_per_window: false,
        folds: Vec::new(),
        sequences: vec!["ADC".into()],
        spacing: vec![s[2], s[1], s[0]],
        patch_size: vec![4, 48, 48],
        labels: vec![(0, "background".into()), (1, "lesion".into())],
    }
}

/// Case `seed`: none to three lesions (a fifth of the cases have none); its labels are 0/1, and
/// the label map with each lesion's number comes beside it.
fn case(adc: &Volume<f32>, seed: u64) -> Result<(TrainingCase, Volume<u8>, usize), WorkflowError> {
    let mut random = Random::new(seed.wrapping_mul(31).wrapping_add(17));
    let count = if random.uniform() < 0.2 { 0 } else { 1 + random.below(3) };
    let synthetic = insert_lesions(adc, count, seed).map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    let (image, numbered, lesions) = (synthetic.adc, synthetic.labels, synthetic.lesions);
    let binary = numbered.voxels().iter().map(|&l| u8::from(l > 0)).collect();
    let labels = Volume::new(numbered.dims(), binary, numbered.patient_from_voxel)
        .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    Ok((TrainingCase { channels: vec![image], labels }, numbered, lesions.len()))
}

/// Trains the model on the ADC series at `adc` (a DICOM folder or NIfTI) for `steps` steps and
/// writes its package to `models/prostate-lesion-synthetic`.
pub fn train(
    adc: &Path,
    models: &Path,
    steps: usize,
    preference: DevicePreference,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<TrainReport, WorkflowError> {
    let started = std::time::Instant::now();
    let adc = crate::ai::read_volume(adc)?;
    let spec = spec(&adc);
    let out = models.join(PROSTATE_LESION_SYNTHETIC);
    write_package(&out, &spec, &spec.arch.initial_tensors(1))?;
    let device = AiDevice::choose(preference)?;
    let description = device.description.clone();
    let mut model = NnUnet::from_package(&out, device)?;
    let options = TrainOptions {
        steps,
        batch_size: 8,
        learning_rate: 3e-3,
        foreground_fraction: 0.33,
        patches_per_case: 4,
        seed: 1,
    };
    let mut losses = Vec::new();
    lightbox_ai::train::train(
        &mut model,
        &options,
        &mut |i| case(&adc, i).map(|c| c.0).map_err(|e| lightbox_ai::AiError::Input(e.to_string())),
        &AtomicBool::new(false),
        &mut |step, loss| {
            losses.push(loss);
            progress(step, loss);
        },
    )?;
    model.save_weights(&out)?;
    let tenth = (losses.len() / 10).max(1);
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len().max(1) as f32;
    Ok(TrainReport {
        package: out,
        steps,
        seconds: started.elapsed().as_secs_f64(),
        first_loss: mean(&losses[..tenth.min(losses.len())]),
        last_loss: mean(&losses[losses.len().saturating_sub(tenth)..]),
        device: description,
    })
}

/// Runs the model package at `package` on `cases` held-out synthetic cases made from the ADC at
/// `adc`, with PI-CAI's lesion extraction, and scores it.
pub fn evaluate(
    package: &Path,
    adc: &Path,
    cases: usize,
    preference: DevicePreference,
) -> Result<Evaluation, WorkflowError> {
    let adc = crate::ai::read_volume(adc)?;
    let model = NnUnet::from_package(package, AiDevice::choose(preference)?)?;
    let started = std::time::Instant::now();
    let mut scores = Vec::new();
    let mut e = Evaluation { cases, ..Evaluation::default() };
    let (mut both, mut either) = (0usize, 0usize);
    for i in 0..cases {
        let (case, numbered, count) = case(&adc, EVALUATION_SEEDS + i as u64)?;
        let probabilities = model.predict_probabilities(&case.channels, &AtomicBool::new(false), &mut |_| {})?;
        let lesion =
            probabilities.get(1).ok_or_else(|| WorkflowError::Analysis("the model has no lesion class".into()))?;
        let [nx, ny, nz] = lesion.dims();
        let (found, candidates) = extract_lesions(lesion.voxels(), [nz, ny, nx], &ExtractionOptions::default())
            .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
        let truth_lesions = numbered.voxels();
        let truth: Vec<bool> = truth_lesions.iter().map(|&l| l > 0).collect();
        // PI-CAI's hit: intersection over union above 0.1.
        let mut lesion_size = vec![0usize; count + 1];
        truth_lesions.iter().for_each(|&l| lesion_size[usize::from(l).min(count)] += 1);
        let mut best = vec![0.0f32; count];
        for c in &candidates {
            let mut overlap = vec![0usize; count + 1];
            let mut size = 0usize;
            for (at, &f) in found.iter().enumerate() {
                if f == c.index {
                    size += 1;
                    overlap[usize::from(truth_lesions[at]).min(count)] += 1;
                }
            }
            let mut matched = false;
            for l in 1..=count {
                if overlap[l] as f64 > 0.1 * (size + lesion_size[l] - overlap[l]) as f64 {
                    best[l - 1] = best[l - 1].max(c.likelihood);
                    matched = true;
                }
            }
            e.candidates.push((c.likelihood, matched));
        }
        e.lesion_likelihoods.extend(best);
        let kept: Vec<u8> = candidates.iter().filter(|c| c.likelihood >= 0.5).map(|c| c.index).collect();
        for (at, &f) in found.iter().enumerate() {
            let predicted = f > 0 && kept.contains(&f);
            both += usize::from(predicted && truth[at]);
            either += usize::from(predicted) + usize::from(truth[at]);
        }
        e.lesions += count;
        let score = candidates.iter().map(|c| c.likelihood).fold(0.0f32, f32::max);
        scores.push((score, count > 0));
    }
    e.dice = 2.0 * both as f64 / either.max(1) as f64;
    e.auroc = auroc(&scores);
    e.seconds_per_case = started.elapsed().as_secs_f64() / cases.max(1) as f64;
    Ok(e)
}

/// The evaluation in words, with points of its FROC curve.
pub fn describe(e: &Evaluation) -> String {
    let froc: Vec<String> = [0.5f32, 0.9, 0.99, 0.999, 0.9999]
        .iter()
        .map(|&t| {
            let (s, fp) = e.at(t);
            format!("≥ {t}: sensitivity {s:.2}, {fp:.2} FP/case")
        })
        .collect();
    format!(
        "held-out synthetic cases: {} cases, {} lesions; case AUROC {:.3}; Dice {:.3} (≥ 0.5); {:.1} s per case\nFROC (lesion hit: IoU > 0.1): {}",
        e.cases,
        e.lesions,
        e.auroc,
        e.dice,
        e.seconds_per_case,
        froc.join("; ")
    )
}

/// The area under the ROC curve of `scores` (score, positive): the chance that a random
/// positive outscores a random negative, ties counting half.
pub fn auroc(scores: &[(f32, bool)]) -> f64 {
    let positives: Vec<f32> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
    let negatives: Vec<f32> = scores.iter().filter(|s| !s.1).map(|s| s.0).collect();
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for p in &positives {
        for n in &negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (positives.len() * negatives.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn froc_points_count_lesions_found_and_false_candidates_above_the_threshold() {
        let e = Evaluation {
            cases: 2,
            lesions: 3,
            candidates: vec![(0.95, true), (0.6, false), (0.4, true), (0.99, false)],
            lesion_likelihoods: vec![0.95, 0.4, 0.0],
            ..Evaluation::default()
        };
        assert_eq!(e.at(0.5), (1.0 / 3.0, 1.0));
        assert_eq!(e.at(0.3), (2.0 / 3.0, 1.0));
        assert_eq!(e.at(0.97), (0.0, 0.5));
    }

    #[test]
    fn auroc_counts_pairs() {
        assert_eq!(auroc(&[(0.9, true), (0.1, false)]), 1.0);
        assert_eq!(auroc(&[(0.1, true), (0.9, false)]), 0.0);
        assert_eq!(auroc(&[(0.5, true), (0.5, false), (0.9, true), (0.2, false)]), 0.875);
        assert!(auroc(&[(0.5, true)]).is_nan());
    }
}
