//! Assembling a series into a volume in patient space.

use std::collections::HashSet;
use std::fmt;

use dicom_pixeldata::PixelDecoder;
use lightbox_core::{Affine3, SeriesInfo, Volume};
use rayon::prelude::*;

use crate::DicomError;
use crate::header::{InstanceHeader, int, open, open_header};

/// Something odd about a series that did not stop it from loading. Shown to the user.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadWarning {
    /// Several files carry the same SOP Instance UID; the first (by path) was used.
    DuplicateInstances { files: usize, instances: usize },
    /// Every slice position occurs this often (a 4-D series); only the first time point is loaded.
    TimePoints { count: usize },
    /// No Image Position/Orientation (Patient): slices are in instance-number order, 1 mm apart.
    NoGeometry,
    /// Slice gaps differ; the volume uses the mean gap and is not resampled.
    UnevenSpacing { min_mm: f64, max_mm: f64 },
    /// Siemens mosaic shown as stored (tiles not yet unpacked into slices).
    MosaicNotUnpacked,
    /// Multi-frame instance: frames are stacked in stored order with shared geometry.
    MultiFrameStoredOrder,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateInstances { files, instances } => {
                write!(f, "{files} files hold only {instances} distinct instances; duplicates ignored")
            }
            Self::TimePoints { count } => {
                write!(f, "{count} time points per slice; showing the first")
            }
            Self::NoGeometry => f.write_str("no image position/orientation; slices in instance order, 1 mm apart"),
            Self::UnevenSpacing { min_mm, max_mm } => {
                write!(f, "uneven slice spacing: {min_mm:.3} to {max_mm:.3} mm (not resampled)")
            }
            Self::MosaicNotUnpacked => f.write_str("Siemens mosaic shown as stored (not yet unpacked)"),
            Self::MultiFrameStoredOrder => f.write_str("multi-frame instance: frames in stored order"),
        }
    }
}

/// Loads a series' pixels as rescaled values (Modality LUT applied), slices sorted along the
/// slice normal (never by file name). Values are `f32` for now; native integer types come with
/// the full ingest.
pub fn load_series_volume(series: &SeriesInfo) -> Result<(Volume<f32>, Vec<LoadWarning>), DicomError> {
    let series_error = |reason: String| DicomError::Series { series: series.uid.clone(), reason };
    let mut warnings = Vec::new();

    let mut headers = Vec::with_capacity(series.files.len());
    for path in &series.files {
        match open_header(path) {
            Ok(h) => headers.push(h),
            Err(crate::header::Skip::Error(e)) => return Err(e),
            Err(crate::header::Skip::Directory) => {}
        }
    }
    let mut seen = HashSet::new();
    headers.retain(|h| seen.insert(h.sop_instance_uid.clone()));
    if headers.len() < series.files.len() {
        warnings.push(LoadWarning::DuplicateInstances { files: series.files.len(), instances: headers.len() });
    }
    let headers: Vec<InstanceHeader> = headers.into_iter().filter(|h| h.rows > 0 && h.columns > 0).collect();
    let Some(first) = headers.first() else {
        return Err(series_error("has no image instances".into()));
    };
    let (rows, columns) = (first.rows, first.columns);
    if let Some(odd) = headers.iter().find(|h| (h.rows, h.columns) != (rows, columns)) {
        return Err(series_error(format!(
            "{}: {}x{} differs from the series' {columns}x{rows}",
            odd.path.display(),
            odd.columns,
            odd.rows
        )));
    }
    if headers.iter().any(|h| h.mosaic) {
        warnings.push(LoadWarning::MosaicNotUnpacked);
    }

    let (ordered, patient_from_voxel) = order_slices(headers, &mut warnings);
    if ordered.iter().any(|h| h.frames > 1) {
        warnings.push(LoadWarning::MultiFrameStoredOrder);
    }

    let frame_len = rows as usize * columns as usize;
    let slices: Vec<Vec<f32>> = ordered.par_iter().map(|h| decode(h, frame_len)).collect::<Result<_, _>>()?;
    let voxels: Vec<f32> = slices.concat();
    let depth = voxels.len() / frame_len;
    let volume = Volume::new([columns as usize, rows as usize, depth], voxels, patient_from_voxel)
        .map_err(|e| series_error(e.to_string()))?;
    Ok((volume, warnings))
}

fn decode(h: &InstanceHeader, frame_len: usize) -> Result<Vec<f32>, DicomError> {
    let obj = open(&h.path, true)?;
    let samples: u16 = int(&obj, dicom_dictionary_std::tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 {
        return Err(DicomError::Unsupported { path: h.path.clone(), what: format!("{samples} samples per pixel") });
    }
    let decoded = obj
        .decode_pixel_data()
        .map_err(|source| DicomError::Decode { path: h.path.clone(), source: Box::new(source) })?;
    let values: Vec<f32> =
        decoded.to_vec().map_err(|source| DicomError::Decode { path: h.path.clone(), source: Box::new(source) })?;
    if values.len() != frame_len * h.frames as usize {
        return Err(DicomError::Decode {
            path: h.path.clone(),
            source: format!("{} values decoded, expected {}", values.len(), frame_len * h.frames as usize).into(),
        });
    }
    Ok(values)
}

/// Sorts instances along the slice normal, keeps the first time point of a 4-D series, and
/// derives `patient_from_voxel`.
fn order_slices(mut headers: Vec<InstanceHeader>, warnings: &mut Vec<LoadWarning>) -> (Vec<InstanceHeader>, Affine3) {
    let first = &headers[0];
    let [row_mm, col_mm] = first.pixel_spacing.unwrap_or([1.0, 1.0]);
    let first_spacing = first.slice_spacing.unwrap_or(1.0);
    let geometry = first.image_orientation.zip(first.image_position);
    let Some((iop, _)) = geometry.filter(|_| headers.iter().all(|h| h.image_position.is_some())) else {
        warnings.push(LoadWarning::NoGeometry);
        headers.sort_by_key(|h| h.instance_number);
        let spacing = first_spacing;
        let a = Affine3::from_columns([col_mm, 0.0, 0.0], [0.0, row_mm, 0.0], [0.0, 0.0, spacing], [0.0; 3]);
        return (headers, a);
    };
    let x_dir = [iop[0], iop[1], iop[2]];
    let y_dir = [iop[3], iop[4], iop[5]];
    let normal = cross(x_dir, y_dir);
    let along = |h: &InstanceHeader| h.image_position.map_or(0.0, |p| dot(p, normal));

    headers.sort_by(|a, b| along(a).total_cmp(&along(b)).then_with(|| a.instance_number.cmp(&b.instance_number)));
    // A 4-D series repeats each position: keep the first time point (lowest instance number).
    let before = headers.len();
    let mut kept: Vec<InstanceHeader> = Vec::with_capacity(headers.len());
    for h in headers {
        match kept.last() {
            Some(prev) if (along(prev) - along(&h)).abs() < 1e-3 && h.frames == 1 => {}
            _ => kept.push(h),
        }
    }
    if before > kept.len() {
        warnings.push(LoadWarning::TimePoints { count: before.div_ceil(kept.len()) });
    }

    let origin = kept[0].image_position.unwrap_or([0.0; 3]);
    let z_axis = if kept.len() > 1 {
        let gaps: Vec<f64> = kept.windows(2).map(|w| along(&w[1]) - along(&w[0])).collect();
        let (min, max) = gaps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &g| (lo.min(g), hi.max(g)));
        let mean = (along(&kept[kept.len() - 1]) - along(&kept[0])) / (kept.len() - 1) as f64;
        if max - min > 0.01 * mean.abs().max(1e-6) {
            warnings.push(LoadWarning::UnevenSpacing { min_mm: min, max_mm: max });
        }
        let last = kept[kept.len() - 1].image_position.unwrap_or(origin);
        [0, 1, 2].map(|c| (last[c] - origin[c]) / (kept.len() - 1) as f64)
    } else {
        let spacing = kept[0].slice_spacing.unwrap_or(1.0);
        normal.map(|c| c * spacing)
    };
    let a = Affine3::from_columns(x_dir.map(|c| c * col_mm), y_dir.map(|c| c * row_mm), z_axis, origin);
    (kept, a)
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
