//! Prostate bpMRI before the model (issue 10, item 1): which series are the axial T2W, the ADC
//! map and the high-b DWI; a high-b image computed when the study has none high enough; and the
//! input a PI-CAI-style nnU-Net expects.
//!
//! Series descriptions are not trusted. What decides, per series (see
//! `lightbox_dicom::series_facts` for how the sequence type is read):
//!
//! | what | DICOM attributes |
//! |---|---|
//! | ADC | Image Type (0008,0008) value `ADC` / `ADC_UNSPECIFIED`; else an echo-planar (0018,0020 `EP`) series described as ADC |
//! | DWI and its b-values | Diffusion b-value (0018,9087) per frame (or in the MR Diffusion Sequence (0018,9117)); Image Type `DIFFUSION` / `TRACEW` |
//! | T2W | Repetition Time (0018,0080) ≥ 1500 ms and Echo Time (0018,0081) ≥ 60 ms, no inversion (0018,0082), not echo-planar |
//! | axial | Image Orientation (Patient) (0020,0037): the slice normal within ~25° of the patient's S–I axis |
//!
//! A DWI series with several b-values gives one display set per b-value; the highest is used.
//! When it is below `HIGH_B`, the high-b image is computed from it and the ADC map:
//! S(b′) = S(b) · exp(−(b′ − b) · ADC) (the mono-exponential model PI-CAI's own b = 1400
//! images come from).

use lightbox_core::Volume;

use crate::AnalysisError;

/// The b-value PI-CAI's models take, s/mm².
pub const HIGH_B: f64 = 1400.0;

/// What is known of one series (or one b-value's display set) of a study.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesSummary {
    pub series_uid: String,
    /// Which display set of the series (several for several b-values).
    pub display_set: usize,
    /// `T1`, `T2`, `FLAIR`, `PD`, `DWI`, `ADC` or empty (see `lightbox_dicom::SeriesFacts`).
    pub sequence: String,
    /// `axial`, `sagittal`, `coronal`, `oblique` or empty.
    pub plane: String,
    pub b_value: Option<f64>,
    pub slices: usize,
    pub description: String,
}

/// The chosen inputs, and why each.
#[derive(Clone, Debug, PartialEq)]
pub struct BpmriChoice {
    pub t2w: SeriesSummary,
    pub adc: SeriesSummary,
    /// The highest-b DWI display set (none: the study has no DWI).
    pub dwi: Option<SeriesSummary>,
    /// Whether the high-b image must be computed (the DWI's highest b is below [`HIGH_B`]).
    pub synthesize_high_b: bool,
    pub reasons: Vec<String>,
}

/// Chooses the axial T2W, the ADC map and the highest-b DWI among a study's series.
pub fn choose_bpmri(series: &[SeriesSummary]) -> Result<BpmriChoice, AnalysisError> {
    let mut reasons = Vec::new();
    // Axial first, then the most slices (a full stack over a partial one).
    let best = |kind: &str| -> Option<&SeriesSummary> {
        series
            .iter()
            .filter(|s| s.sequence == kind)
            .max_by_key(|s| (s.plane == "axial", s.slices, s.b_value.map(|b| b as i64).unwrap_or(0)))
    };
    let t2w = best("T2").ok_or_else(|| {
        AnalysisError::Missing("no T2-weighted series (long TR and TE, no inversion) in the study".into())
    })?;
    if t2w.plane != "axial" {
        reasons.push(format!(
            "no axial T2W: the {} one is used",
            if t2w.plane.is_empty() { "unknown-plane" } else { &t2w.plane }
        ));
    }
    reasons
        .push(format!("T2W: series {} ({:?}), {} slices, {}", t2w.series_uid, t2w.description, t2w.slices, t2w.plane));
    let adc = best("ADC").ok_or_else(|| AnalysisError::Missing("no ADC map (Image Type ADC) in the study".into()))?;
    reasons.push(format!("ADC: series {} ({:?})", adc.series_uid, adc.description));
    let dwi = series
        .iter()
        .filter(|s| s.sequence == "DWI" && s.b_value.is_some())
        .max_by(|a, b| a.b_value.unwrap_or(0.0).total_cmp(&b.b_value.unwrap_or(0.0)));
    let synthesize_high_b = dwi.is_some_and(|d| d.b_value.unwrap_or(0.0) < HIGH_B);
    match dwi {
        Some(d) => reasons.push(format!(
            "DWI: series {} display set {}, b = {:.0}{}",
            d.series_uid,
            d.display_set,
            d.b_value.unwrap_or(0.0),
            if synthesize_high_b { format!("; b = {HIGH_B:.0} computed from it and the ADC") } else { String::new() }
        )),
        None => reasons.push("no DWI with b-values: the model gets no high-b channel".into()),
    }
    Ok(BpmriChoice { t2w: t2w.clone(), adc: adc.clone(), dwi: dwi.cloned(), synthesize_high_b, reasons })
}

/// The image at `target_b` from a DWI at `b` and the ADC map on its grid (S(b′) = S(b) ·
/// exp(−(b′ − b) · ADC)). The ADC's unit is found from its values: maps stored in 10⁻⁶ mm²/s
/// (µm²/s, most scanners) have tissue around 1000; in 10⁻³ mm²/s around 1.
pub fn synthesize_high_b(
    dwi: &Volume<f32>,
    b: f64,
    adc: &Volume<f32>,
    target_b: f64,
) -> Result<Volume<f32>, AnalysisError> {
    if dwi.dims() != adc.dims() {
        return Err(AnalysisError::Input("the DWI and the ADC map must be on one grid".into()));
    }
    if target_b <= b || !target_b.is_finite() {
        return Err(AnalysisError::Input(format!("b = {target_b} is not above the acquired b = {b}")));
    }
    let unit = adc_unit_mm2_s(adc)?;
    let voxels = dwi
        .voxels()
        .iter()
        .zip(adc.voxels())
        .map(|(&s, &a)| (f64::from(s) * (-(target_b - b) * f64::from(a.max(0.0)) * unit).exp()) as f32)
        .collect();
    Volume::new(dwi.dims(), voxels, dwi.patient_from_voxel).map_err(|e| AnalysisError::Input(e.to_string()))
}

/// The ADC map (and a DWI on the ADC's grid, acquired with it) registered rigidly onto the T2W
/// by NMI and resampled onto the T2W's grid.
pub fn align_to_t2w(
    t2w: &Volume<f32>,
    adc: &Volume<f32>,
    dwi: Option<&Volume<f32>>,
) -> Result<(Volume<f32>, Option<Volume<f32>>), AnalysisError> {
    let registration = lightbox_imaging::register_rigid(t2w, adc, &Default::default())?;
    let onto = |v: &Volume<f32>| {
        lightbox_imaging::resample_into(v, t2w.dims(), t2w.patient_from_voxel, &registration.moving_from_fixed, 0.0)
    };
    Ok((onto(adc)?, dwi.map(onto).transpose()?))
}

/// The unit of an ADC map's values in mm²/s, found from the values: maps stored in 10⁻⁶ mm²/s
/// (µm²/s, most scanners) have tissue around 1000; in 10⁻³ mm²/s around 1.
pub fn adc_unit_mm2_s(adc: &Volume<f32>) -> Result<f64, AnalysisError> {
    let mut positive: Vec<f32> = adc.voxels().iter().copied().filter(|v| *v > 0.0).collect();
    if positive.is_empty() {
        return Err(AnalysisError::Input("the ADC map has no positive value".into()));
    }
    let mid = positive.len() / 2;
    let median = *positive.select_nth_unstable_by(mid, f32::total_cmp).1;
    Ok(if median > 20.0 { 1e-6 } else { 1e-3 })
}

/// PI-CAI's preprocessing for its nnU-Net baseline: each channel resampled onto one grid of
/// 0.5 × 0.5 × 3.0 mm spanning the T2W's field of view (its orientation, centred on it),
/// `size` voxels (x, y, z; PI-CAI crops 256 × 256 × 20), then each channel clipped to its
/// 0.5th–99.5th percentile and z-scored. `channels[0]` is the T2W.
pub fn picai_preprocess(channels: &[Volume<f32>], size: [usize; 3]) -> Result<Vec<Volume<f32>>, AnalysisError> {
    let t2w = channels.first().ok_or_else(|| AnalysisError::Input("no channels".into()))?;
    let a = &t2w.patient_from_voxel;
    let spacing = [0.5, 0.5, 3.0];
    let t2_spacing = t2w.spacing_mm();
    let [nx, ny, nz] = t2w.dims();
    let centre = a.transform_point([(nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0, (nz as f64 - 1.0) / 2.0]);
    let mut rows = [[0.0; 4]; 3];
    for (r, row) in rows.iter_mut().enumerate() {
        for c in 0..3 {
            row[c] = a.axis(c)[r] / t2_spacing[c].max(1e-9) * spacing[c];
        }
        row[3] = centre[r] - (0..3).map(|c| row[c] * (size[c] as f64 - 1.0) / 2.0).sum::<f64>();
    }
    let grid = lightbox_core::Affine3 { rows };
    channels
        .iter()
        .map(|channel| {
            let resampled =
                lightbox_imaging::resample_into(channel, size, grid, &lightbox_core::Affine3::IDENTITY, 0.0)?;
            let mut sorted = resampled.voxels().to_vec();
            sorted.sort_by(f32::total_cmp);
            let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
            let (lo, hi) = (at(0.005), at(0.995));
            let clipped: Vec<f32> = resampled.voxels().iter().map(|v| v.clamp(lo, hi)).collect();
            let n = clipped.len() as f64;
            let mean = clipped.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let sd = (clipped.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n).sqrt().max(1e-9);
            let scored = clipped.iter().map(|&v| ((f64::from(v) - mean) / sd) as f32).collect();
            Volume::new(size, scored, grid).map_err(|e| AnalysisError::Input(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(uid: &str, sequence: &str, plane: &str, b: Option<f64>, slices: usize) -> SeriesSummary {
        SeriesSummary {
            series_uid: uid.into(),
            sequence: sequence.into(),
            plane: plane.into(),
            b_value: b,
            slices,
            ..Default::default()
        }
    }

    #[test]
    fn the_axial_t2_the_adc_and_the_highest_b_are_chosen() -> Result<(), AnalysisError> {
        let study = [
            s("t2-sag", "T2", "sagittal", None, 24),
            s("t2-ax", "T2", "axial", None, 20),
            s("adc", "ADC", "axial", None, 20),
            s("dwi", "DWI", "axial", Some(50.0), 20),
            s("dwi", "DWI", "axial", Some(800.0), 20),
            s("t1", "T1", "axial", None, 20),
        ];
        let choice = choose_bpmri(&study)?;
        assert_eq!((choice.t2w.series_uid.as_str(), choice.adc.series_uid.as_str()), ("t2-ax", "adc"));
        assert_eq!(choice.dwi.as_ref().and_then(|d| d.b_value), Some(800.0));
        assert!(choice.synthesize_high_b, "{:?}", choice.reasons);
        let with_1500 = [&study[..], &[s("dwi2", "DWI", "axial", Some(1500.0), 20)]].concat();
        assert!(!choose_bpmri(&with_1500)?.synthesize_high_b);
        // What is missing may still arrive: told apart from bad input.
        let err = choose_bpmri(&study[2..]).expect_err("no T2");
        assert!(matches!(&err, AnalysisError::Missing(m) if m.contains("no T2-weighted series")), "{err}");
        let no_adc: Vec<_> = study.iter().filter(|s| s.sequence != "ADC").cloned().collect();
        let err = choose_bpmri(&no_adc).expect_err("no ADC");
        assert!(matches!(&err, AnalysisError::Missing(m) if m.contains("no ADC map")), "{err}");
        Ok(())
    }

    #[test]
    fn the_high_b_image_follows_the_mono_exponential_model_in_either_adc_unit() -> Result<(), AnalysisError> {
        let grid = lightbox_core::Affine3::IDENTITY;
        let dwi =
            Volume::new([2, 1, 1], vec![500.0f32, 300.0], grid).map_err(|e| AnalysisError::Input(e.to_string()))?;
        for (adc, unit) in [(vec![1000.0f32, 2000.0], 1e-6), (vec![1.0f32, 2.0], 1e-3)] {
            let map = Volume::new([2, 1, 1], adc.clone(), grid).map_err(|e| AnalysisError::Input(e.to_string()))?;
            let high = synthesize_high_b(&dwi, 800.0, &map, 1400.0)?;
            for ((s, a), h) in dwi.voxels().iter().zip(&adc).zip(high.voxels()) {
                let expected = f64::from(*s) * (-600.0 * f64::from(*a) * unit).exp();
                assert!((f64::from(*h) - expected).abs() < 1e-3, "{h} vs {expected}");
            }
        }
        assert!(synthesize_high_b(&dwi, 1400.0, &dwi, 800.0).is_err());
        Ok(())
    }
}
