//! What a dispatch rule can know about a series from one of its headers: modality, body part,
//! plane, 2-D/3-D acquisition, and the MR sequence type (T1, T2, FLAIR, PD, DWI, ADC), which is
//! classified from acquisition parameters and image type, not from the free-text description.

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::DicomError;
use crate::header::{floats, open, text};

/// Facts about a series, from one of its instances.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeriesFacts {
    pub modality: String,
    pub description: String,
    /// Body Part Examined, upper case (often empty).
    pub body_part: String,
    /// `axial`, `sagittal`, `coronal`, `oblique`, or empty when unknown.
    pub plane: String,
    /// MR Acquisition Type: `2D` or `3D` (empty when not given).
    pub acquisition: String,
    /// `T1`, `T2`, `FLAIR`, `PD`, `DWI`, `ADC`, or empty when unknown.
    pub sequence: String,
    pub repetition_ms: Option<f64>,
    pub echo_ms: Option<f64>,
    pub inversion_ms: Option<f64>,
    pub image_type: String,
    /// Why `sequence` was chosen (or why it is unknown).
    pub sequence_reason: String,
    /// Study Date, `YYYYMMDD` (empty when not given).
    pub study_date: String,
    /// Patient's Birth Date, `YYYYMMDD` (often empty or removed by anonymisation).
    pub patient_birth_date: String,
    /// Patient's Age, DICOM AS such as `067Y` (often empty).
    pub patient_age: String,
    pub frame_of_reference_uid: String,
    /// Number of Temporal Positions: how many time points a dynamic series will have.
    pub temporal_positions: Option<u32>,
}

/// Reads the facts of the series `path` belongs to.
pub fn series_facts(path: &Path) -> Result<SeriesFacts, DicomError> {
    let file = open(path, false)?;
    let obj: &InMemDicomObject = &file;
    // Enhanced (multi-frame) objects keep most of this in the shared functional groups.
    let shared = obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).and_then(|i| i.first());
    let per_frame = obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).and_then(|i| i.first());
    let nested = |group: Tag, tag: Tag| -> Option<&InMemDicomObject> {
        [shared, per_frame]
            .into_iter()
            .flatten()
            .filter_map(|g| g.get(group).and_then(|e| e.items()).and_then(|i| i.first()))
            .find(|item| item.get(tag).is_some())
    };
    let number = |tag: Tag, group: Option<Tag>| -> Option<f64> {
        floats::<1>(obj, tag)
            .or_else(|| group.and_then(|g| nested(g, tag)).and_then(|o| floats::<1>(o, tag)))
            .map(|[v]| v)
    };
    let orientation = floats::<6>(obj, tags::IMAGE_ORIENTATION_PATIENT).or_else(|| {
        nested(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT)
            .and_then(|o| floats::<6>(o, tags::IMAGE_ORIENTATION_PATIENT))
    });
    let b_value = number(tags::DIFFUSION_B_VALUE, Some(tags::MR_DIFFUSION_SEQUENCE));
    let mut facts = SeriesFacts {
        modality: text(obj, tags::MODALITY).unwrap_or_default(),
        description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        body_part: text(obj, tags::BODY_PART_EXAMINED).unwrap_or_default().to_ascii_uppercase(),
        plane: orientation.map(plane_of).unwrap_or_default().to_owned(),
        acquisition: text(obj, tags::MR_ACQUISITION_TYPE).unwrap_or_default(),
        repetition_ms: number(tags::REPETITION_TIME, Some(tags::MR_TIMING_AND_RELATED_PARAMETERS_SEQUENCE)),
        echo_ms: number(tags::ECHO_TIME, None)
            .or_else(|| number(tags::EFFECTIVE_ECHO_TIME, Some(tags::MR_ECHO_SEQUENCE))),
        inversion_ms: number(tags::INVERSION_TIME, None)
            .or_else(|| number(tags::INVERSION_TIMES, Some(tags::MR_MODIFIER_SEQUENCE))),
        image_type: text(obj, tags::IMAGE_TYPE).unwrap_or_default().to_ascii_uppercase(),
        study_date: text(obj, tags::STUDY_DATE).unwrap_or_default(),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE).unwrap_or_default(),
        patient_age: text(obj, tags::PATIENT_AGE).unwrap_or_default(),
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        temporal_positions: text(obj, tags::NUMBER_OF_TEMPORAL_POSITIONS).and_then(|n| n.trim().parse().ok()),
        ..SeriesFacts::default()
    };
    let scanning = text(obj, tags::SCANNING_SEQUENCE).unwrap_or_default().to_ascii_uppercase();
    let (sequence, reason) = classify(&facts, &scanning, b_value);
    facts.sequence = sequence.to_owned();
    facts.sequence_reason = reason;
    Ok(facts)
}

/// The plane whose normal is closest to the slice normal (within ~25°), else oblique.
fn plane_of(o: [f64; 6]) -> &'static str {
    let n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
    let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    if len < 1e-6 {
        return "";
    }
    let (axis, value) = n
        .iter()
        .map(|v| (v / len).abs())
        .enumerate()
        .fold((0, 0.0), |best, (i, v)| if v > best.1 { (i, v) } else { best });
    if value < 0.9 {
        return "oblique";
    }
    ["sagittal", "coronal", "axial"][axis]
}

/// The MR weighting from parameters, in the order a radiologist would reason.
fn classify(f: &SeriesFacts, scanning: &str, b_value: Option<f64>) -> (&'static str, String) {
    if f.modality != "MR" {
        return ("", format!("modality {} is not MR", f.modality));
    }
    let words: Vec<&str> = f.image_type.split('\\').collect();
    if words.contains(&"LOCALIZER") || f.description.to_ascii_lowercase().contains("localizer") {
        return ("", "a localizer (scout), not a diagnostic series".into());
    }
    if words.iter().any(|w| *w == "ADC" || *w == "ADC_UNSPECIFIED") {
        return ("ADC", format!("image type {} says ADC", f.image_type));
    }
    if let Some(b) = b_value.filter(|b| *b > 0.0) {
        return ("DWI", format!("diffusion b-value {b}"));
    }
    if words.iter().any(|w| *w == "DIFFUSION" || *w == "TRACEW") {
        return ("DWI", format!("image type {} says diffusion", f.image_type));
    }
    if scanning.split('\\').any(|w| w == "EP") {
        // Echo-planar without a b-value: a derived diffusion map, or something else (BOLD).
        // Only here does the description decide, and the reason says so.
        let d = f.description.to_ascii_lowercase();
        if d.contains("adc") || d.contains("apparent diffusion") {
            return ("ADC", format!("echo-planar ({}) described as {:?}", f.image_type, f.description));
        }
        if d.contains("dwi") || d.contains("diffusion") || d.contains("trace") {
            return ("DWI", format!("echo-planar described as {:?}", f.description));
        }
        return ("", "echo-planar without a b-value or a diffusion description".into());
    }
    let (Some(tr), Some(te)) = (f.repetition_ms, f.echo_ms) else {
        return ("", "no repetition or echo time".into());
    };
    let ti = f.inversion_ms.unwrap_or(0.0);
    let params = format!("TR {tr} ms, TE {te} ms{}", if ti > 0.0 { format!(", TI {ti} ms") } else { String::new() });
    if ti >= 1500.0 && te >= 60.0 {
        return ("FLAIR", format!("{params}: long inversion, long echo"));
    }
    if ti > 0.0 && ti < 1500.0 && te < 30.0 {
        return ("T1", format!("{params}: inversion-prepared, short echo (MPRAGE-like)"));
    }
    if tr <= 900.0 && te < 30.0 {
        return ("T1", format!("{params}: short TR, short TE"));
    }
    if tr >= 1500.0 && te >= 60.0 {
        return ("T2", format!("{params}: long TR, long TE"));
    }
    if tr >= 1500.0 && te < 40.0 && !scanning.contains("GR") {
        return ("PD", format!("{params}: long TR, short TE"));
    }
    ("", format!("{params}: no rule fits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mr(tr: f64, te: f64, ti: Option<f64>) -> SeriesFacts {
        SeriesFacts {
            modality: "MR".into(),
            repetition_ms: Some(tr),
            echo_ms: Some(te),
            inversion_ms: ti,
            ..SeriesFacts::default()
        }
    }

    #[test]
    fn weightings_follow_the_acquisition_parameters() {
        assert_eq!(classify(&mr(2300.0, 2.98, Some(900.0)), "GR\\IR", None).0, "T1"); // MPRAGE
        assert_eq!(classify(&mr(500.0, 12.0, None), "SE", None).0, "T1");
        assert_eq!(classify(&mr(4000.0, 100.0, None), "SE", None).0, "T2");
        assert_eq!(classify(&mr(9000.0, 120.0, Some(2500.0)), "SE\\IR", None).0, "FLAIR");
        assert_eq!(classify(&mr(3000.0, 20.0, None), "SE", None).0, "PD");
        assert_eq!(classify(&mr(3000.0, 80.0, None), "EP", Some(800.0)).0, "DWI");
        let scout = SeriesFacts { image_type: "ORIGINAL\\PRIMARY\\LOCALIZER".into(), ..mr(8.6, 4.0, None) };
        assert_eq!(classify(&scout, "GR", None).0, "");
        let adc = SeriesFacts { image_type: "DERIVED\\PRIMARY\\ADC".into(), ..mr(3000.0, 80.0, None) };
        assert_eq!(classify(&adc, "EP", Some(0.0)).0, "ADC");
        assert_eq!(classify(&SeriesFacts { modality: "CT".into(), ..Default::default() }, "", None).0, "");
        // A derived map from an echo-planar acquisition: long TR and TE, but not a T2.
        let derived = SeriesFacts { description: "Apparent Diffusion Coefficient".into(), ..mr(2500.0, 65.4, None) };
        assert_eq!(classify(&derived, "EP\\SE", None).0, "ADC");
        assert_eq!(
            classify(&SeriesFacts { description: "BOLD rest".into(), ..mr(2000.0, 30.0, None) }, "EP", None).0,
            ""
        );
    }

    #[test]
    fn planes_come_from_the_slice_normal() {
        assert_eq!(plane_of([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), "axial");
        assert_eq!(plane_of([0.0, 1.0, 0.0, 0.0, 0.0, -1.0]), "sagittal");
        assert_eq!(plane_of([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]), "coronal");
        let t = 40f64.to_radians();
        assert_eq!(plane_of([1.0, 0.0, 0.0, 0.0, t.cos(), t.sin()]), "oblique");
    }
}
