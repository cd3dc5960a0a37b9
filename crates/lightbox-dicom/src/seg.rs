//! DICOM Segmentation (SEG) writing: a label volume on a display set's own grid, as a binary
//! (bit-packed) multi-frame Segmentation instance that references its source images, with coded
//! segment categories and types, readable by highdicom, OHIF, Slicer and PACS viewers.

use std::path::Path;

use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR, dicom_value};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use lightbox_core::Volume;

use crate::build::{code_item, put_patient_and_study, reference, sequence, write_file};
use crate::write::{ds, new_uid, now_da_tm, uid_from};
use crate::{DicomError, DisplaySet};

/// A coded concept (code value, coding scheme, meaning), e.g. SCT 49755003 "Morphologically
/// abnormal structure".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl Code {
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Self { value: value.into(), scheme: scheme.into(), meaning: meaning.into() }
    }
}

/// The UIDs of an object written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub sop_uid: String,
    pub series_uid: String,
}

/// How a segment was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentAlgorithm {
    /// By a program (an AI model): its name and version.
    Automatic { name: String, version: String },
    /// Drawn by a person.
    Manual,
}

/// One segment: label value `number` in the label volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub label: String,
    pub category: Code,
    pub property_type: Code,
    pub algorithm: SegmentAlgorithm,
}

/// The new SEG series.
#[derive(Clone, Debug)]
pub struct SegSeries {
    pub series_description: String,
    pub series_number: i32,
    /// Content Label (CS: upper case, at most 16 characters).
    pub content_label: String,
    pub content_description: String,
    /// Who made it (a person, or the algorithm's name for AI output).
    pub creator: String,
    pub software_version: String,
    /// Derive the instance and series UIDs from this name (see [`crate::uid_from`]) instead of
    /// making new ones.
    pub uid_seed: Option<String>,
}

/// The Label Map Segmentation Storage SOP class (DICOM 2024, Supplement 243).
pub const LABEL_MAP_SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.7";

/// What a SEG holds, and so how it is encoded.
#[derive(Clone, Copy, Debug)]
pub enum SegPixels<'a> {
    /// Label values (0 = background, `k` = `segments[k - 1]`) as bit-packed binary frames,
    /// one per segment and slice (Segmentation Storage, BINARY). Readable by every SEG reader.
    Binary(&'a Volume<u8>),
    /// Label values as one 8-bit frame per slice whose pixels are segment numbers (Label Map
    /// Segmentation Storage, LABELMAP): compact for many labels (brain regions).
    LabelMap(&'a Volume<u8>),
    /// One probability volume (0 to 1) per segment, as 8-bit FRACTIONAL / PROBABILITY frames
    /// (the maximum, 255, is 1.0).
    Fractional(&'a [Volume<f32>]),
}

/// Writes `labels` (values 0 = background, `k` = `segments[k - 1]`) as a binary SEG of time
/// point `t` of `set` to `path`. The label volume must have the display set's grid. Frames that
/// hold no voxel of a segment are left out. Returns the new instance's and series' UIDs.
pub fn write_seg(
    set: &DisplaySet,
    t: u32,
    labels: &Volume<u8>,
    segments: &[Segment],
    series: &SegSeries,
    path: &Path,
) -> Result<Written, DicomError> {
    write_seg_as(set, t, SegPixels::Binary(labels), segments, series, path)
}

/// Writes a SEG of time point `t` of `set` in any of the three encodings (see [`SegPixels`]).
/// On the display set's grid each frame references its source slice; on another grid (a
/// resampled one) frames carry their own positions and reference the nearest source slice
/// with Spatial Locations Preserved NO. Frames with nothing in them are left out.
pub fn write_seg_as(
    set: &DisplaySet,
    t: u32,
    pixels: SegPixels<'_>,
    segments: &[Segment],
    series: &SegSeries,
    path: &Path,
) -> Result<Written, DicomError> {
    let bad = |what: String| DicomError::Unsupported { path: path.to_owned(), what };
    let grid = [set.columns as usize, set.rows as usize, set.slices as usize];
    let volumes: Vec<([usize; 3], &lightbox_core::Affine3)> = match pixels {
        SegPixels::Binary(v) | SegPixels::LabelMap(v) => vec![(v.dims(), &v.patient_from_voxel)],
        SegPixels::Fractional(vs) => {
            if vs.len() != segments.len() {
                return Err(bad(format!("{} probability volumes for {} segments", vs.len(), segments.len())));
            }
            vs.iter().map(|v| (v.dims(), &v.patient_from_voxel)).collect()
        }
    };
    let ([nx, ny, nz], grid_affine) = *volumes.first().ok_or_else(|| bad("no segmentation volume".into()))?;
    if volumes.iter().any(|(d, a)| *d != [nx, ny, nz] || !same_grid(a, grid_affine, [nx, ny, nz])) {
        return Err(bad("probability volumes on different grids".into()));
    }
    if nx == 0 || ny == 0 || nz == 0 {
        return Err(bad(format!("an empty {nx}x{ny}x{nz} segmentation volume")));
    }
    // On the source grid, each frame lies on its source slice; otherwise (resampled, e.g. at a
    // model's spacing) the frames carry their own plane positions and orientation.
    let on_source_grid = [nx, ny, nz] == grid && same_grid(grid_affine, &set.patient_from_voxel, grid);
    if segments.is_empty() || segments.len() > 255 {
        return Err(bad(format!("{} segments (1 to 255 are possible)", segments.len())));
    }
    let label_map = matches!(pixels, SegPixels::LabelMap(_));
    let (sop_class, seg_type, bits) = match pixels {
        SegPixels::Binary(_) => (uids::SEGMENTATION_STORAGE, "BINARY", 1u16),
        SegPixels::LabelMap(_) => (LABEL_MAP_SEGMENTATION_STORAGE, "LABELMAP", 8),
        SegPixels::Fractional(_) => (uids::SEGMENTATION_STORAGE, "FRACTIONAL", 8),
    };
    let sources = set.source_slices(t)?;
    let first = sources.first().map(|s| s.header).ok_or_else(|| bad("an empty display set".into()))?;
    if first.frame_of_reference_uid.is_empty() {
        return Err(bad("a source series without patient geometry (Frame of Reference, Image Position)".into()));
    }
    let (sop_uid, series_uid) = match &series.uid_seed {
        Some(seed) => (uid_from(&format!("{seed}/seg")), uid_from(&format!("{seed}/seg-series"))),
        None => (new_uid(), new_uid()),
    };
    let a = if on_source_grid { &set.patient_from_voxel } else { grid_affine };
    // Per slice of the segmentation: the source it derives from, where it lies, and whether it
    // lies exactly on that source slice.
    let source_centre = |z: usize| {
        let p = [(f64::from(set.columns) - 1.0) / 2.0, (f64::from(set.rows) - 1.0) / 2.0, z as f64];
        set.patient_from_voxel.transform_point(p)
    };
    let slices: Vec<_> = if on_source_grid {
        sources
            .iter()
            .enumerate()
            .map(|(z, s)| {
                let position = s.position.unwrap_or_else(|| a.transform_point([0.0, 0.0, z as f64]));
                (s.header, s.frame_number, position, true)
            })
            .collect()
    } else {
        (0..nz)
            .map(|z| {
                let centre = a.transform_point([(nx as f64 - 1.0) / 2.0, (ny as f64 - 1.0) / 2.0, z as f64]);
                let nearest = (0..sources.len())
                    .min_by(|&i, &j| distance(source_centre(i), centre).total_cmp(&distance(source_centre(j), centre)))
                    .unwrap_or(0);
                let s = &sources[nearest];
                (s.header, s.frame_number, a.transform_point([0.0, 0.0, z as f64]), false)
            })
            .collect()
    };
    let spacing = [0, 1, 2].map(|c| {
        let v = a.axis(c);
        (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
    });
    let unit = |c: usize| a.axis(c).map(|v| v / spacing[c].max(1e-12));
    let (row_dir, col_dir) = (unit(0), unit(1));

    let mut obj = InMemDicomObject::new_empty();
    let text = |obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    let r = &first.record;
    text(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    text(&mut obj, tags::SOP_CLASS_UID, VR::UI, sop_class);
    text(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    text(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, r.study_uid.as_str());
    text(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    text(&mut obj, tags::FRAME_OF_REFERENCE_UID, VR::UI, &first.frame_of_reference_uid);
    text(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    text(&mut obj, tags::MODALITY, VR::CS, "SEG");
    put_patient_and_study(&mut obj, first);
    text(&mut obj, tags::SERIES_NUMBER, VR::IS, &series.series_number.to_string());
    text(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, &crate::sr::lo(&series.series_description));
    text(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    let (date, time) = now_da_tm();
    text(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    text(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    text(&mut obj, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000"); // dates and times are UTC
    text(&mut obj, tags::MANUFACTURER, VR::LO, "Lightbox");
    text(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "Lightbox workstation");
    text(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "1");
    text(&mut obj, tags::SOFTWARE_VERSIONS, VR::LO, &series.software_version);
    text(&mut obj, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    text(&mut obj, tags::CONTENT_LABEL, VR::CS, &content_label(&series.content_label));
    text(&mut obj, tags::CONTENT_DESCRIPTION, VR::LO, &series.content_description);
    text(&mut obj, tags::CONTENT_CREATOR_NAME, VR::PN, &series.creator);
    text(&mut obj, tags::SEGMENTATION_TYPE, VR::CS, seg_type);
    if let SegPixels::Fractional(_) = pixels {
        text(&mut obj, tags::SEGMENTATION_FRACTIONAL_TYPE, VR::CS, "PROBABILITY");
        obj.put(DataElement::new(tags::MAXIMUM_FRACTIONAL_VALUE, VR::US, dicom_value!(U16, [255])));
    } else {
        // One label per voxel: segments cannot overlap.
        text(&mut obj, tags::SEGMENTS_OVERLAP, VR::CS, "NO");
    }
    text(&mut obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    text(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    for (tag, value) in [
        (tags::SAMPLES_PER_PIXEL, 1u16),
        (tags::ROWS, u16_dim(path, ny)?),
        (tags::COLUMNS, u16_dim(path, nx)?),
        (tags::BITS_ALLOCATED, bits),
        (tags::BITS_STORED, bits),
        (tags::HIGH_BIT, bits - 1),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        obj.put(DataElement::new(tag, VR::US, dicom_value!(U16, [value])));
    }

    // Segments.
    let segment_items: Vec<InMemDicomObject> = segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut item = InMemDicomObject::new_empty();
            item.put(DataElement::new(tags::SEGMENT_NUMBER, VR::US, dicom_value!(U16, [i as u16 + 1])));
            text(&mut item, tags::SEGMENT_LABEL, VR::LO, &s.label);
            sequence(&mut item, tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, vec![code_item(&s.category)]);
            sequence(&mut item, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code_item(&s.property_type)]);
            match &s.algorithm {
                SegmentAlgorithm::Automatic { name, version } => {
                    text(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
                    text(&mut item, tags::SEGMENT_ALGORITHM_NAME, VR::LO, name);
                    let mut algorithm = InMemDicomObject::new_empty();
                    sequence(
                        &mut algorithm,
                        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                        vec![code_item(&Code::new("123110", "DCM", "Artificial Intelligence"))],
                    );
                    text(&mut algorithm, tags::ALGORITHM_NAME, VR::LO, name);
                    text(&mut algorithm, tags::ALGORITHM_VERSION, VR::LO, version);
                    sequence(&mut item, tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE, vec![algorithm]);
                }
                SegmentAlgorithm::Manual => text(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "MANUAL"),
            }
            item
        })
        .collect();
    sequence(&mut obj, tags::SEGMENT_SEQUENCE, segment_items);

    // Dimensions: segment number, then position along the normal.
    let dimension_uid = series.uid_seed.as_ref().map_or_else(new_uid, |seed| uid_from(&format!("{seed}/dimensions")));
    let mut organization = InMemDicomObject::new_empty();
    text(&mut organization, tags::DIMENSION_ORGANIZATION_UID, VR::UI, &dimension_uid);
    sequence(&mut obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![organization]);
    let dimension = |index: Tag, group: Tag, label: &str| {
        let mut item = InMemDicomObject::new_empty();
        item.put(DataElement::new(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            PrimitiveValue::from(dimension_uid.as_str()),
        ));
        item.put(DataElement::new(tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags(vec![index].into())));
        item.put(DataElement::new(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags(vec![group].into())));
        item.put(DataElement::new(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, PrimitiveValue::from(label)));
        item
    };
    let position_dimension =
        dimension(tags::IMAGE_POSITION_PATIENT, tags::PLANE_POSITION_SEQUENCE, "ImagePositionPatient");
    let dimensions = if label_map {
        // A label-map frame holds every segment: only the position varies.
        vec![position_dimension]
    } else {
        vec![
            dimension(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            position_dimension,
        ]
    };
    sequence(&mut obj, tags::DIMENSION_INDEX_SEQUENCE, dimensions);

    // Shared functional groups: the grid.
    let mut measures = InMemDicomObject::new_empty();
    measures.put(DataElement::new(tags::PIXEL_SPACING, VR::DS, dicom_value!(Strs, [ds(spacing[1]), ds(spacing[0])])));
    measures.put(DataElement::new(tags::SLICE_THICKNESS, VR::DS, PrimitiveValue::from(ds(spacing[2]))));
    measures.put(DataElement::new(tags::SPACING_BETWEEN_SLICES, VR::DS, PrimitiveValue::from(ds(spacing[2]))));
    let mut orientation = InMemDicomObject::new_empty();
    orientation.put(DataElement::new(
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        dicom_value!(
            Strs,
            [ds(row_dir[0]), ds(row_dir[1]), ds(row_dir[2]), ds(col_dir[0]), ds(col_dir[1]), ds(col_dir[2])]
        ),
    ));
    let mut shared = InMemDicomObject::new_empty();
    sequence(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    sequence(&mut shared, tags::PLANE_ORIENTATION_SEQUENCE, vec![orientation]);
    sequence(&mut obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    // Frames: for each segment (one pass for a label map), each slice that holds some of it.
    let slice_len = nx * ny;
    let mut per_frame = Vec::new();
    let mut bits: Vec<u8> = Vec::new();
    let mut bit = 0usize;
    let passes: Vec<Option<u8>> = if label_map { vec![None] } else { (1..=segments.len() as u8).map(Some).collect() };
    for segment in passes {
        for (z, &(source, frame_number, position, preserved)) in slices.iter().enumerate() {
            let range = z * slice_len..(z + 1) * slice_len;
            match (pixels, segment) {
                (SegPixels::Binary(labels), Some(value)) => {
                    let slice = &labels.voxels()[range];
                    if !slice.contains(&value) {
                        continue;
                    }
                    bits.resize((bit + slice_len).div_ceil(8), 0);
                    for (i, &v) in slice.iter().enumerate() {
                        if v == value {
                            bits[(bit + i) / 8] |= 1 << ((bit + i) % 8);
                        }
                    }
                    bit += slice_len;
                }
                (SegPixels::LabelMap(labels), _) => {
                    let slice = &labels.voxels()[range];
                    if slice.iter().all(|&v| v == 0 || usize::from(v) > segments.len()) {
                        continue;
                    }
                    // Values with no segment are background.
                    bits.extend(slice.iter().map(|&v| if usize::from(v) > segments.len() { 0 } else { v }));
                }
                (SegPixels::Fractional(volumes), Some(value)) => {
                    let slice = &volumes[usize::from(value) - 1].voxels()[range];
                    let frame: Vec<u8> =
                        slice.iter().map(|&p| (f64::from(p).clamp(0.0, 1.0) * 255.0).round() as u8).collect();
                    if frame.iter().all(|&v| v == 0) {
                        continue;
                    }
                    bits.extend(frame);
                }
                _ => continue,
            }
            // The source slice's own position (exact also where slices are unevenly spaced), or
            // the resampled grid's.
            let mut item = InMemDicomObject::new_empty();
            let mut content = InMemDicomObject::new_empty();
            let index = match segment {
                Some(value) => vec![u32::from(value), z as u32 + 1],
                None => vec![z as u32 + 1],
            };
            content.put(DataElement::new(tags::DIMENSION_INDEX_VALUES, VR::UL, PrimitiveValue::U32(index.into())));
            sequence(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
            let mut plane = InMemDicomObject::new_empty();
            plane.put(DataElement::new(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                dicom_value!(Strs, [ds(position[0]), ds(position[1]), ds(position[2])]),
            ));
            sequence(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![plane]);
            if let Some(value) = segment {
                let mut identification = InMemDicomObject::new_empty();
                identification.put(DataElement::new(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    VR::US,
                    dicom_value!(U16, [u16::from(value)]),
                ));
                sequence(&mut item, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![identification]);
            }
            // Where the frame came from.
            let mut source_item = reference(&source.record.sop_class_uid, &source.record.sop_instance_uid);
            // On the source grid each frame lies exactly on its source slice; resampled, not.
            let preserved = if preserved { "YES" } else { "NO" };
            source_item.put(DataElement::new(
                tags::SPATIAL_LOCATIONS_PRESERVED,
                VR::CS,
                PrimitiveValue::from(preserved),
            ));
            if let Some(n) = frame_number {
                source_item.put(DataElement::new(
                    tags::REFERENCED_FRAME_NUMBER,
                    VR::IS,
                    PrimitiveValue::from(n.to_string()),
                ));
            }
            sequence(
                &mut source_item,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code_item(&Code::new("121322", "DCM", "Source image for image processing operation"))],
            );
            let mut derivation = InMemDicomObject::new_empty();
            sequence(
                &mut derivation,
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code_item(&Code::new("113076", "DCM", "Segmentation"))],
            );
            sequence(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source_item]);
            sequence(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
            per_frame.push(item);
        }
    }
    if per_frame.is_empty() {
        return Err(bad("a segmentation with no voxel in any segment".into()));
    }
    text(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, &per_frame.len().to_string());
    sequence(&mut obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);

    // The source series (Common Instance Reference).
    let mut seen = std::collections::BTreeSet::new();
    let instances: Vec<InMemDicomObject> = sources
        .iter()
        .filter(|s| seen.insert(s.header.record.sop_instance_uid.clone()))
        .map(|s| reference(&s.header.record.sop_class_uid, &s.header.record.sop_instance_uid))
        .collect();
    let mut referenced_series = InMemDicomObject::new_empty();
    text(&mut referenced_series, tags::SERIES_INSTANCE_UID, VR::UI, r.series_uid.as_str());
    sequence(&mut referenced_series, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    sequence(&mut obj, tags::REFERENCED_SERIES_SEQUENCE, vec![referenced_series]);

    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bits)));

    write_file(obj, path)?;
    Ok(Written { sop_uid, series_uid })
}

/// Whether two voxel grids put every voxel in the same place (within a micrometre).
fn same_grid(a: &lightbox_core::Affine3, b: &lightbox_core::Affine3, dims: [usize; 3]) -> bool {
    let far = dims.map(|d| d.saturating_sub(1) as f64);
    [[0.0, 0.0, 0.0], [far[0], 0.0, 0.0], [0.0, far[1], 0.0], [0.0, 0.0, far[2]], far]
        .iter()
        .all(|&p| distance(a.transform_point(p), b.transform_point(p)) < 1e-3)
}

fn distance(p: [f64; 3], q: [f64; 3]) -> f64 {
    ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
}

/// CS: upper case letters, digits, space and underscore, at most 16 characters.
fn content_label(label: &str) -> String {
    let cleaned: String = label
        .to_ascii_uppercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == ' ' || c == '_' { c } else { '_' })
        .take(16)
        .collect();
    if cleaned.is_empty() { "SEGMENTATION".into() } else { cleaned }
}

fn u16_dim(path: &Path, n: usize) -> Result<u16, DicomError> {
    u16::try_from(n)
        .map_err(|_| DicomError::Unsupported { path: path.to_owned(), what: format!("{n} rows or columns") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_labels_are_valid_code_strings() {
        assert_eq!(content_label("Lesions (AI)"), "LESIONS _AI_");
        assert_eq!(content_label("a-very-long-label-indeed"), "A_VERY_LONG_LABE");
        assert_eq!(content_label(""), "SEGMENTATION");
    }

    #[test]
    fn dates_are_plausible() {
        let (date, time) = now_da_tm();
        assert_eq!(date.len(), 8);
        assert!(date.as_str() >= "20250101", "{date}");
        assert_eq!(time.len(), 6);
    }
}
