//! Writing a volume as a DICOM MR image series (one single-frame instance per slice).
//!
//! Used to turn research volumes (NIfTI) into real DICOM studies for the viewer, the PACS tests and
//! the analysis pipelines. Values are stored as signed 16-bit with Rescale Slope/Intercept chosen
//! so every voxel comes back within half a step (exactly, for integer volumes that fit).

use std::path::{Path, PathBuf};

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use lightbox_core::{PatientInfo, StudyInstanceUid, Volume};

use crate::DicomError;

/// Who and what the new series belongs to; the caller supplies the patient and study.
#[derive(Clone, Debug)]
pub struct NewSeries {
    pub patient: PatientInfo,
    /// Join an existing study, or `None` for a new one.
    pub study_uid: Option<StudyInstanceUid>,
    /// DICOM DA, `YYYYMMDD`.
    pub study_date: String,
    /// DICOM DA, `YYYYMMDD`, or empty when not known (an age-dependent analysis needs it).
    pub patient_birth_date: String,
    pub study_description: String,
    pub series_description: String,
    pub series_number: i32,
    /// How the volume was made, e.g. "converted from NIfTI study1_T1W.nii.gz".
    pub derivation: String,
    /// Derive the series', frame of reference's and instances' UIDs from this name (see
    /// [`uid_from`]) instead of making new ones: a pipeline run again writes the same objects.
    pub uid_seed: Option<String>,
    /// Join this frame of reference (derived images on their source's grid), else a new one.
    pub frame_of_reference_uid: Option<String>,
}

/// A new globally unique UID under the UUID-derived root `2.25`.
pub fn new_uid() -> String {
    format!("2.25.{}", uuid::Uuid::new_v4().as_u128())
}

/// The same UID for the same `name`, every time (a name-based UUID under `2.25`): a pipeline
/// that runs again after a crash writes the same objects, so nothing reaches the PACS twice.
pub fn uid_from(name: &str) -> String {
    format!("2.25.{}", uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).as_u128())
}

/// Writes `volume` as an MR image series into `folder` (created if needed), one file per slice
/// named `IM<slice>.dcm`. Returns the files in slice order.
pub fn write_mr_series(volume: &Volume<f32>, series: &NewSeries, folder: &Path) -> Result<Vec<PathBuf>, DicomError> {
    write_mr_phases(&[(volume, None)], series, folder)
}

/// Writes volumes on one grid as the time points of one MR series (a dynamic series, e.g.
/// DCE), each with its time after the series' start in seconds when given: Temporal Position
/// Identifier, Number of Temporal Positions, Trigger Time (ms) and Acquisition and Content
/// Times (from 08:00:00). Files are `IM<slice>.dcm` for one volume, `IM<phase>_<slice>.dcm` for
/// more. Returns the files, phase by phase in slice order.
pub fn write_mr_phases(
    phases: &[(&Volume<f32>, Option<f64>)],
    series: &NewSeries,
    folder: &Path,
) -> Result<Vec<PathBuf>, DicomError> {
    std::fs::create_dir_all(folder).map_err(|source| DicomError::Io { path: folder.to_owned(), source })?;
    let Some((volume, _)) = phases.first() else {
        return Err(DicomError::Unsupported { path: folder.to_owned(), what: "a series without images".into() });
    };
    if phases.iter().any(|(v, _)| v.dims() != volume.dims() || v.patient_from_voxel != volume.patient_from_voxel) {
        return Err(DicomError::Unsupported { path: folder.to_owned(), what: "time points on different grids".into() });
    }
    let [nx, ny, nz] = volume.dims();
    let (rows, columns) = (u16_dim(folder, ny)?, u16_dim(folder, nx)?);
    let voxels: Vec<&[f32]> = phases.iter().map(|(v, _)| v.voxels()).collect();
    let (slope, intercept) = rescale_over(&voxels);
    let study_uid = series.study_uid.as_ref().map_or_else(new_uid, |u| u.as_str().to_owned());
    let uid = |what: &str| series.uid_seed.as_ref().map_or_else(new_uid, |seed| uid_from(&format!("{seed}/{what}")));
    let series_uid = uid("series");
    let frame_of_reference = series.frame_of_reference_uid.clone().unwrap_or_else(|| uid("frame-of-reference"));
    let a = &volume.patient_from_voxel;
    let [sx, sy, sz] = volume.spacing_mm();
    let unit = |c: usize, s: f64| a.axis(c).map(|v| v / s.max(1e-12));
    let (row_dir, col_dir) = (unit(0, sx), unit(1, sy));
    let (lo, hi) = phases
        .iter()
        .filter_map(|(v, _)| v.value_range())
        .fold((f32::MAX, f32::MIN), |(lo, hi), (a, b)| (lo.min(a), hi.max(b)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };

    let mut files = Vec::with_capacity(nz * phases.len());
    for (t, (volume, time_s)) in phases.iter().enumerate() {
        for k in 0..nz {
            let position = a.transform_point([0.0, 0.0, k as f64]);
            let sop_uid = uid(&format!("instance/{t}/{k}"));
            let mut obj = InMemDicomObject::new_empty();
            let mut put_str = |tag: Tag, vr: VR, value: &str| {
                obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
            };
            put_str(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
            put_str(tags::SOP_CLASS_UID, VR::UI, uids::MR_IMAGE_STORAGE);
            put_str(tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
            put_str(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid);
            put_str(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
            put_str(tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference);
            put_str(tags::MODALITY, VR::CS, "MR");
            put_str(tags::MANUFACTURER, VR::LO, "Lightbox");
            put_str(tags::PATIENT_NAME, VR::PN, &series.patient.name);
            put_str(tags::PATIENT_ID, VR::LO, &series.patient.id);
            put_str(tags::PATIENT_BIRTH_DATE, VR::DA, &series.patient_birth_date);
            put_str(tags::PATIENT_SEX, VR::CS, "");
            put_str(tags::STUDY_DATE, VR::DA, &series.study_date);
            put_str(tags::STUDY_TIME, VR::TM, "");
            put_str(tags::STUDY_DESCRIPTION, VR::LO, &series.study_description);
            put_str(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
            put_str(tags::STUDY_ID, VR::SH, "");
            put_str(tags::ACCESSION_NUMBER, VR::SH, "");
            put_str(tags::SERIES_NUMBER, VR::IS, &series.series_number.to_string());
            put_str(tags::SERIES_DESCRIPTION, VR::LO, &series.series_description);
            put_str(tags::INSTANCE_NUMBER, VR::IS, &(t * nz + k + 1).to_string());
            if phases.len() > 1 {
                put_str(tags::TEMPORAL_POSITION_IDENTIFIER, VR::IS, &(t + 1).to_string());
                put_str(tags::NUMBER_OF_TEMPORAL_POSITIONS, VR::IS, &phases.len().to_string());
            }
            if let Some(s) = time_s {
                put_str(tags::TRIGGER_TIME, VR::DS, &ds(s * 1000.0));
                let clock = 8.0 * 3600.0 + s.max(0.0);
                let tm = format!(
                    "{:02}{:02}{:09.6}",
                    (clock / 3600.0) as u32,
                    ((clock % 3600.0) / 60.0) as u32,
                    clock % 60.0
                );
                put_str(tags::ACQUISITION_TIME, VR::TM, &tm);
                put_str(tags::CONTENT_TIME, VR::TM, &tm);
            }
            put_str(tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY");
            put_str(tags::DERIVATION_DESCRIPTION, VR::ST, &series.derivation);
            put_str(tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
            put_str(tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
            put_str(tags::SCANNING_SEQUENCE, VR::CS, "RM");
            put_str(tags::SEQUENCE_VARIANT, VR::CS, "NONE");
            put_str(tags::SCAN_OPTIONS, VR::CS, "");
            put_str(tags::MR_ACQUISITION_TYPE, VR::CS, "3D");
            put_str(tags::ECHO_TIME, VR::DS, "");
            put_str(tags::REPETITION_TIME, VR::DS, "");
            put_str(tags::ECHO_TRAIN_LENGTH, VR::IS, "");
            put_str(tags::SLICE_THICKNESS, VR::DS, &ds(sz));
            put_str(tags::SPACING_BETWEEN_SLICES, VR::DS, &ds(sz));
            put_str(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
            put_str(tags::RESCALE_INTERCEPT, VR::DS, &ds(intercept));
            put_str(tags::RESCALE_SLOPE, VR::DS, &ds(slope));
            put_str(tags::WINDOW_CENTER, VR::DS, &ds(f64::from(0.5 * (lo + hi))));
            put_str(tags::WINDOW_WIDTH, VR::DS, &ds(f64::from((hi - lo).max(1.0))));
            obj.put(DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                dicom_value!(Strs, [ds(position[0]), ds(position[1]), ds(position[2])]),
            ));
            obj.put(DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                dicom_value!(
                    Strs,
                    [ds(row_dir[0]), ds(row_dir[1]), ds(row_dir[2]), ds(col_dir[0]), ds(col_dir[1]), ds(col_dir[2])]
                ),
            ));
            // PixelSpacing is row spacing (between rows, along the column direction) first.
            obj.put(DataElement::new(tags::PIXEL_SPACING, VR::DS, dicom_value!(Strs, [ds(sy), ds(sx)])));
            for (tag, value) in [
                (tags::SAMPLES_PER_PIXEL, 1),
                (tags::ROWS, rows),
                (tags::COLUMNS, columns),
                (tags::BITS_ALLOCATED, 16),
                (tags::BITS_STORED, 16),
                (tags::HIGH_BIT, 15),
                (tags::PIXEL_REPRESENTATION, 1),
            ] {
                obj.put(DataElement::new(tag, VR::US, dicom_value!(U16, [value])));
            }
            let slice = volume.slice(k).unwrap_or_default();
            let stored: Vec<u8> = slice
                .iter()
                .flat_map(|&v| {
                    let raw =
                        ((f64::from(v) - intercept) / slope).round().clamp(f64::from(i16::MIN), f64::from(i16::MAX));
                    (raw as i16).to_le_bytes()
                })
                .collect();
            obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(stored)));

            let path = if phases.len() > 1 {
                folder.join(format!("IM{:02}_{:04}.dcm", t + 1, k + 1))
            } else {
                folder.join(format!("IM{:04}.dcm", k + 1))
            };
            let file = obj
                .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
                .map_err(|source| DicomError::Write { path: path.clone(), source: Box::new(source) })?;
            file.write_to_file(&path)
                .map_err(|source| DicomError::Write { path: path.clone(), source: Box::new(source) })?;
            files.push(path);
        }
    }
    Ok(files)
}

fn u16_dim(folder: &Path, n: usize) -> Result<u16, DicomError> {
    u16::try_from(n).map_err(|_| DicomError::Unsupported {
        path: folder.to_owned(),
        what: format!("an image dimension of {n} (DICOM allows 65535)"),
    })
}

/// Slope and intercept that map the value range onto i16: identity for integer volumes that fit.
#[cfg(test)]
fn rescale_for(values: &[f32]) -> (f64, f64) {
    rescale_over(&[values])
}

/// [`rescale_for`] over several volumes' voxels at once (the time points of one series).
fn rescale_over(volumes: &[&[f32]]) -> (f64, f64) {
    let values = || volumes.iter().flat_map(|v| v.iter());
    let (lo, hi) = values()
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(f64::from(v)), hi.max(f64::from(v))));
    if lo > hi {
        return (1.0, 0.0);
    }
    let integers = values().all(|v| !v.is_finite() || v.fract() == 0.0);
    if integers && lo >= f64::from(i16::MIN) && hi <= f64::from(i16::MAX) {
        return (1.0, 0.0);
    }
    let slope = ((hi - lo) / 65534.0).max(f64::MIN_POSITIVE);
    // Snap to what a DS string can say, so writer and reader use the same numbers.
    let slope: f64 = ds(slope).parse().unwrap_or(slope);
    let intercept: f64 = ds(lo - f64::from(i16::MIN) * slope).parse().unwrap_or(lo);
    (slope, intercept)
}

/// A decimal string of at most 16 characters (the DS limit).
pub(crate) fn ds(v: f64) -> String {
    let v = if v.abs() < 1e-12 { 0.0 } else { v };
    for precision in (0..=10).rev() {
        let s = format!("{v:.precision$}");
        let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.6e}")
}

/// Today's date and time as DICOM DA and TM (UTC).
pub(crate) fn now_da_tm() -> (String, String) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rest = secs % 86_400;
    (format!("{year:04}{month:02}{day:02}"), format!("{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60))
}

#[cfg(test)]
mod tests {
    use lightbox_core::Affine3;

    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-118.125), "-118.125");
        assert_eq!(ds(1.0 / 3.0), "0.3333333333");
        assert!(ds(123_456_789.123_456).len() <= 16);
        assert_eq!(ds(1e-15), "0");
    }

    #[test]
    fn integer_volumes_are_stored_exactly() {
        assert_eq!(rescale_for(&[0.0, 1200.0, -5.0]), (1.0, 0.0));
        let (slope, _) = rescale_for(&[0.0, 0.25, 1.0]);
        assert!(slope > 0.0 && slope < 1e-4);
    }

    #[test]
    fn written_series_reads_back_in_place() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (s, c) = 20f64.to_radians().sin_cos();
        let a = Affine3::from_columns(
            [0.9 * c, 0.0, -0.9 * s],
            [0.0, 0.8, 0.0],
            [2.5 * s, 0.0, 2.5 * c],
            [-60.0, -80.0, 10.0],
        );
        let voxels: Vec<f32> = (0..5 * 4 * 3).map(|i| (i as f32) * 0.37 - 4.0).collect();
        let volume = Volume::new([5, 4, 3], voxels, a)?;
        let meta = NewSeries {
            patient: PatientInfo { id: "LB-TEST".into(), name: "Test^Writer".into() },
            study_uid: None,
            study_date: "20261125".into(),
            patient_birth_date: "19560412".into(),
            study_description: "writer test".into(),
            series_description: "oblique".into(),
            series_number: 3,
            derivation: "synthetic".into(),
            uid_seed: None,
            frame_of_reference_uid: None,
        };
        let files = write_mr_series(&volume, &meta, dir.path())?;
        assert_eq!(files.len(), 3);

        let report = crate::scan_path(dir.path())?;
        assert!(report.issues.is_empty(), "{:?}", report.issues);
        let (study, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("no series"))?;
        assert_eq!((study.patient.id.as_str(), series.number, series.modality.as_str()), ("LB-TEST", Some(3), "MR"));
        let set = &report.display_sets(series)[0];
        let back = set.load(0)?;
        assert_eq!(back.dims(), [5, 4, 3]);
        for (r, row) in back.patient_from_voxel.rows.iter().enumerate() {
            for (col, v) in row.iter().enumerate() {
                assert!((v - a.rows[r][col]).abs() < 1e-4, "affine [{r}][{col}]: {v} vs {}", a.rows[r][col]);
            }
        }
        let (slope, _) = rescale_for(volume.voxels());
        for (x, y) in back.voxels().iter().zip(volume.voxels()) {
            assert!((x - y).abs() as f64 <= slope, "{x} vs {y}");
        }
        Ok(())
    }
}
