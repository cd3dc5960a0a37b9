//! Reading DICOM SEG (binary, fractional, label map) and TID 1500 SR written by others (dcmqi,
//! highdicom, Slicer, AI vendors) or by us: segments, frames placed on their source slices, and
//! measurement groups with their values. Bad objects give errors naming the file, never panics.

use std::path::Path;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use lightbox_core::Volume;

use crate::header::{floats, int, open, text};
use crate::seg::LABEL_MAP_SEGMENTATION_STORAGE;
use crate::{DicomError, DisplaySet};

/// One segment as the SEG describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub number: u16,
    pub label: String,
    /// Segmented property type (code meaning).
    pub property_type: String,
    /// AUTOMATIC, SEMIAUTOMATIC or MANUAL.
    pub algorithm_type: String,
    pub algorithm_name: String,
}

/// One frame: which segment (0 for a label map, which holds them all) and where it lies.
#[derive(Clone, Debug, PartialEq)]
pub struct SegFrame {
    pub segment: u16,
    pub source_sop_uid: Option<String>,
    pub position: Option<[f64; 3]>,
    /// Values per pixel, row by row: 0/1 (binary), 0..max (fractional), segment numbers
    /// (label map).
    pub values: Vec<u16>,
}

/// A Segmentation instance, read.
#[derive(Clone, Debug, PartialEq)]
pub struct SegReading {
    pub sop_uid: String,
    /// BINARY, FRACTIONAL or LABELMAP.
    pub kind: String,
    pub rows: usize,
    pub columns: usize,
    /// For FRACTIONAL: the value meaning 1.0.
    pub max_fractional: u16,
    pub segments: Vec<SegmentInfo>,
    pub frames: Vec<SegFrame>,
    pub referenced_series_uid: String,
}

fn items(obj: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    obj.get(tag).and_then(|e| e.items()).unwrap_or(&[])
}

fn first(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    items(obj, tag).first()
}

fn code_meaning(obj: &InMemDicomObject, tag: Tag) -> String {
    first(obj, tag).and_then(|c| text(c, tags::CODE_MEANING)).unwrap_or_default()
}

/// Reads a SEG file.
pub fn read_seg(path: &Path) -> Result<SegReading, DicomError> {
    let bad = |what: String| DicomError::Unsupported { path: path.to_owned(), what };
    let file = open(path, true)?;
    let sop_class = text(&file, tags::SOP_CLASS_UID).unwrap_or_default();
    if sop_class != dicom_dictionary_std::uids::SEGMENTATION_STORAGE && sop_class != LABEL_MAP_SEGMENTATION_STORAGE {
        return Err(bad(format!("SOP class {sop_class} is not a Segmentation")));
    }
    let ts = file.meta().transfer_syntax().trim_end_matches('\0');
    if !matches!(ts, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.1.99") {
        return Err(bad(format!("a SEG in transfer syntax {ts} (only uncompressed SEGs are read)")));
    }
    let obj: &InMemDicomObject = &file;
    let kind = text(obj, tags::SEGMENTATION_TYPE).unwrap_or_default().to_ascii_uppercase();
    let rows: usize = int::<u32>(obj, tags::ROWS).unwrap_or(0) as usize;
    let columns: usize = int::<u32>(obj, tags::COLUMNS).unwrap_or(0) as usize;
    let frames_n: usize = int::<u32>(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1) as usize;
    let bits: u16 = int(obj, tags::BITS_ALLOCATED).unwrap_or(1);
    if rows == 0 || columns == 0 || rows * columns > 1 << 26 || frames_n > 1 << 16 {
        return Err(bad(format!("{rows}x{columns} pixels in {frames_n} frames")));
    }
    match (kind.as_str(), bits) {
        ("BINARY", 1) | ("FRACTIONAL", 8) | ("LABELMAP", 8 | 16) => {}
        _ => return Err(bad(format!("segmentation type {kind:?} with {bits} bits allocated"))),
    }
    let segments = items(obj, tags::SEGMENT_SEQUENCE)
        .iter()
        .map(|s| SegmentInfo {
            number: int(s, tags::SEGMENT_NUMBER).unwrap_or(0),
            label: text(s, tags::SEGMENT_LABEL).unwrap_or_default(),
            property_type: code_meaning(s, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE),
            algorithm_type: text(s, tags::SEGMENT_ALGORITHM_TYPE).unwrap_or_default(),
            algorithm_name: text(s, tags::SEGMENT_ALGORITHM_NAME).unwrap_or_default(),
        })
        .collect();
    let pixel_bytes = file
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| bad("no pixel data".into()))?
        .to_bytes()
        .map_err(|e| bad(format!("pixel data: {e}")))?;
    let per_frame_pixels = rows * columns;
    let needed = match bits {
        1 => (per_frame_pixels * frames_n).div_ceil(8),
        8 => per_frame_pixels * frames_n,
        _ => per_frame_pixels * frames_n * 2,
    };
    if pixel_bytes.len() < needed {
        return Err(bad(format!(
            "{} bytes of pixel data for {frames_n} frames of {rows}x{columns}",
            pixel_bytes.len()
        )));
    }
    let shared = first(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let group_item = |i: usize, group: Tag| -> Option<&InMemDicomObject> {
        per_frame.get(i).and_then(|f| first(f, group)).or_else(|| shared.and_then(|s| first(s, group)))
    };
    let mut frames = Vec::with_capacity(frames_n);
    for i in 0..frames_n {
        let segment = group_item(i, tags::SEGMENT_IDENTIFICATION_SEQUENCE)
            .and_then(|s| int(s, tags::REFERENCED_SEGMENT_NUMBER))
            .unwrap_or(0);
        let source_sop_uid = group_item(i, tags::DERIVATION_IMAGE_SEQUENCE)
            .and_then(|d| first(d, tags::SOURCE_IMAGE_SEQUENCE))
            .and_then(|s| text(s, tags::REFERENCED_SOP_INSTANCE_UID));
        let position =
            group_item(i, tags::PLANE_POSITION_SEQUENCE).and_then(|p| floats::<3>(p, tags::IMAGE_POSITION_PATIENT));
        let start = i * per_frame_pixels;
        let values: Vec<u16> = match bits {
            1 => (start..start + per_frame_pixels).map(|b| u16::from((pixel_bytes[b / 8] >> (b % 8)) & 1)).collect(),
            8 => pixel_bytes[start..start + per_frame_pixels].iter().map(|&v| u16::from(v)).collect(),
            _ => pixel_bytes[start * 2..(start + per_frame_pixels) * 2]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        };
        frames.push(SegFrame { segment, source_sop_uid, position, values });
    }
    let referenced_series_uid = first(obj, tags::REFERENCED_SERIES_SEQUENCE)
        .and_then(|s| text(s, tags::SERIES_INSTANCE_UID))
        .unwrap_or_default();
    Ok(SegReading {
        sop_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        kind,
        rows,
        columns,
        max_fractional: int(obj, tags::MAXIMUM_FRACTIONAL_VALUE).unwrap_or(255),
        segments,
        frames,
        referenced_series_uid,
    })
}

impl SegReading {
    /// Voxels of segment `number` over all frames (overlaps counted in each segment).
    pub fn segment_voxels(&self, number: u16) -> usize {
        let half = u32::from(self.max_fractional.max(1));
        self.frames
            .iter()
            .map(|f| match self.kind.as_str() {
                "LABELMAP" => f.values.iter().filter(|&&v| v == number).count(),
                "FRACTIONAL" if f.segment == number => f.values.iter().filter(|&&v| u32::from(v) * 2 >= half).count(),
                "BINARY" if f.segment == number => f.values.iter().filter(|&&v| v != 0).count(),
                _ => 0,
            })
            .sum()
    }
}

/// How a SEG landed on a display set.
#[derive(Clone, Debug, PartialEq)]
pub struct SegOverlay {
    /// Segment number per voxel (0: none) on the display set's grid.
    pub labels: Volume<u8>,
    /// Frames placed on a slice, and those whose source or position is not in the display set.
    pub placed: usize,
    pub unplaced: usize,
    /// Voxels claimed by more than one segment (the higher number is kept).
    pub overlapping: usize,
}

/// Places a SEG's frames on time point `t` of `set`: by the source instance each frame names,
/// else by its position (within half a slice). Fractional values count from one half up.
pub fn seg_overlay(set: &DisplaySet, t: u32, seg: &SegReading) -> Result<SegOverlay, DicomError> {
    let (nx, ny, nz) = (set.columns as usize, set.rows as usize, set.slices as usize);
    let bad = |what: String| DicomError::Unsupported { path: std::path::PathBuf::from(&seg.sop_uid), what };
    if seg.columns != nx || seg.rows != ny {
        return Err(bad(format!("a {}x{} SEG on a {nx}x{ny} series", seg.columns, seg.rows)));
    }
    let sources = set.source_slices(t)?;
    let by_uid: std::collections::HashMap<&str, usize> =
        sources.iter().enumerate().map(|(z, s)| (s.header.record.sop_instance_uid.as_str(), z)).collect();
    let a = &set.patient_from_voxel;
    let inverse = a.inverse();
    let mut labels = vec![0u8; nx * ny * nz];
    let (mut placed, mut unplaced, mut overlapping) = (0, 0, 0);
    for frame in &seg.frames {
        let z = frame.source_sop_uid.as_deref().and_then(|uid| by_uid.get(uid).copied()).or_else(|| {
            let p = inverse.as_ref()?.transform_point(frame.position?);
            let k = p[2].round();
            ((p[2] - k).abs() <= 0.5 && k >= 0.0 && (k as usize) < nz).then_some(k as usize)
        });
        let Some(z) = z else {
            unplaced += 1;
            continue;
        };
        placed += 1;
        let slice = &mut labels[z * nx * ny..(z + 1) * nx * ny];
        for (voxel, &v) in slice.iter_mut().zip(&frame.values) {
            let label = match seg.kind.as_str() {
                "LABELMAP" => u8::try_from(v).unwrap_or(u8::MAX),
                "FRACTIONAL" if u32::from(v) * 2 >= u32::from(seg.max_fractional.max(1)) => {
                    u8::try_from(frame.segment).unwrap_or(u8::MAX)
                }
                "BINARY" if v != 0 => u8::try_from(frame.segment).unwrap_or(u8::MAX),
                _ => 0,
            };
            if label != 0 {
                if *voxel != 0 && *voxel != label {
                    overlapping += 1;
                }
                *voxel = (*voxel).max(label);
            }
        }
    }
    let labels = Volume::new([nx, ny, nz], labels, set.patient_from_voxel).map_err(|e| bad(e.to_string()))?;
    Ok(SegOverlay { labels, placed, unplaced, overlapping })
}

/// One measurement group of a TID 1500 report.
#[derive(Clone, Debug, PartialEq)]
pub struct SrGroup {
    pub tracking_id: String,
    pub finding: String,
    pub finding_site: String,
    /// (concept meaning, value, UCUM unit, algorithm name when an algorithm made it).
    pub measurements: Vec<(String, f64, String, Option<String>)>,
    /// A person observer named on the group (a radiologist's own measurements).
    pub person: Option<String>,
    /// The SEG instance and segment the group measures.
    pub segment: Option<(String, u16)>,
    /// Other coded items: qualitative evaluations and the like, as (concept meaning, value
    /// meaning).
    pub qualitative: Vec<(String, String)>,
}

/// A structured report, read.
#[derive(Clone, Debug, PartialEq)]
pub struct SrReading {
    pub sop_uid: String,
    /// Concept meaning of the document title, e.g. "Imaging Measurement Report".
    pub title: String,
    pub verification: String,
    /// The reports this one replaces (Predecessor Documents Sequence: a signed report names
    /// the unsigned one it was made from).
    pub predecessors: Vec<String>,
    pub observers: Vec<String>,
    pub groups: Vec<SrGroup>,
}

fn concept(item: &InMemDicomObject) -> (String, String) {
    let c = first(item, tags::CONCEPT_NAME_CODE_SEQUENCE);
    (
        c.and_then(|c| text(c, tags::CODE_VALUE)).unwrap_or_default(),
        c.and_then(|c| text(c, tags::CODE_MEANING)).unwrap_or_default(),
    )
}

/// Reads a structured report's measurement groups (TID 1500 and the like), wherever they sit
/// in the content tree.
pub fn read_sr(path: &Path) -> Result<SrReading, DicomError> {
    let file = open(path, true)?;
    let obj: &InMemDicomObject = &file;
    if text(obj, tags::MODALITY).as_deref() != Some("SR") {
        return Err(DicomError::Unsupported { path: path.to_owned(), what: "not a structured report".into() });
    }
    let mut observers = Vec::new();
    for item in items(obj, tags::CONTENT_SEQUENCE) {
        match concept(item).0.as_str() {
            "121008" => observers.push(text(item, tags::PERSON_NAME).unwrap_or_default()),
            "121013" => observers.push(text(item, tags::TEXT_VALUE).unwrap_or_default()),
            _ => {}
        }
    }
    let mut groups = Vec::new();
    collect_groups(obj, &mut groups, 0);
    Ok(SrReading {
        sop_uid: text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
        title: concept(obj).1,
        verification: text(obj, tags::VERIFICATION_FLAG).unwrap_or_default(),
        predecessors: items(obj, tags::PREDECESSOR_DOCUMENTS_SEQUENCE)
            .iter()
            .flat_map(|study| items(study, tags::REFERENCED_SERIES_SEQUENCE))
            .flat_map(|series| items(series, tags::REFERENCED_SOP_SEQUENCE))
            .filter_map(|sop| text(sop, tags::REFERENCED_SOP_INSTANCE_UID))
            .collect(),
        observers,
        groups,
    })
}

fn collect_groups(node: &InMemDicomObject, out: &mut Vec<SrGroup>, depth: usize) {
    if depth > 32 {
        return; // a content tree this deep is malformed; stop rather than recurse forever
    }
    for item in items(node, tags::CONTENT_SEQUENCE) {
        if text(item, tags::VALUE_TYPE).as_deref() == Some("CONTAINER") && concept(item).0 == "125007" {
            out.push(read_group(item));
        } else {
            collect_groups(item, out, depth + 1);
        }
    }
}

fn read_group(group: &InMemDicomObject) -> SrGroup {
    let mut g = SrGroup {
        tracking_id: String::new(),
        finding: String::new(),
        finding_site: String::new(),
        measurements: Vec::new(),
        person: None,
        segment: None,
        qualitative: Vec::new(),
    };
    for item in items(group, tags::CONTENT_SEQUENCE) {
        let (code, _) = concept(item);
        let value_type = text(item, tags::VALUE_TYPE).unwrap_or_default();
        match (code.as_str(), value_type.as_str()) {
            ("112039", _) => g.tracking_id = text(item, tags::TEXT_VALUE).unwrap_or_default(),
            ("121071", _) => g.finding = code_meaning(item, tags::CONCEPT_CODE_SEQUENCE),
            ("363698007" | "G-C0E3", _) => g.finding_site = code_meaning(item, tags::CONCEPT_CODE_SEQUENCE),
            ("121008", _) => g.person = text(item, tags::PERSON_NAME),
            ("121191", _) => {
                g.segment = first(item, tags::REFERENCED_SOP_SEQUENCE).and_then(|r| {
                    Some((text(r, tags::REFERENCED_SOP_INSTANCE_UID)?, int(r, tags::REFERENCED_SEGMENT_NUMBER)?))
                });
            }
            (_, "NUM") => {
                let Some(value) = first(item, tags::MEASURED_VALUE_SEQUENCE) else { continue };
                let Some([number]) = floats::<1>(value, tags::NUMERIC_VALUE) else { continue };
                let unit = first(value, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
                    .and_then(|u| text(u, tags::CODE_VALUE))
                    .unwrap_or_default();
                let modifiers = items(item, tags::CONTENT_SEQUENCE);
                let algorithm =
                    modifiers.iter().find(|m| concept(m).0 == "111001").and_then(|m| text(m, tags::TEXT_VALUE));
                // "SUVbw" with Derivation "Mean" is the mean SUV: name it so.
                let name = match modifiers.iter().find(|m| concept(m).0 == "121401") {
                    Some(d) => format!("{} ({})", concept(item).1, code_meaning(d, tags::CONCEPT_CODE_SEQUENCE)),
                    None => concept(item).1,
                };
                g.measurements.push((name, number, unit, algorithm));
            }
            (_, "CODE") => g.qualitative.push((concept(item).1, code_meaning(item, tags::CONCEPT_CODE_SEQUENCE))),
            _ => {}
        }
    }
    g
}
