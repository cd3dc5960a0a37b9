//! Reading the attributes Lightbox needs from one DICOM file.

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use lightbox_core::{InstanceRecord, PatientInfo, SeriesInstanceUid, StudyInstanceUid, WindowLevel};

use crate::DicomError;
use crate::precheck::PixelSpan;

/// SOP Class UID of a DICOMDIR (Media Storage Directory Storage).
const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// What one file says about itself, without its pixel data.
#[derive(Clone, Debug)]
pub(crate) struct InstanceHeader {
    pub path: PathBuf,
    /// Who, which study and series, which instance: what the store indexes.
    pub record: InstanceRecord,
    pub acquisition_number: Option<i32>,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub slice_spacing: Option<f64>,
    pub window: Option<WindowLevel>,
    pub mosaic: bool,
    /// Siemens NumberOfImagesInMosaic (0019,100A), when the private tag is there.
    pub mosaic_images: Option<u32>,
    /// What each frame is and where it lies: one entry per frame.
    pub frame_meta: Vec<FrameMeta>,
    /// Set when the pixels can be read straight from the file (see [`NativePixels`]).
    pub native: Option<NativePixels>,
    pub frame_of_reference_uid: String,
    pub study_time: String,
    pub study_id: String,
    pub referring_physician: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
}

/// Uncompressed little-endian monochrome pixels at a known place in the file: the loader reads
/// each frame there and applies the rescale itself (per frame for enhanced multi-frame), with
/// the same arithmetic as dicom-pixeldata (mask to Bits Stored, sign-extend, `slope·v +
/// intercept` in f64), instead of parsing the file a second time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NativePixels {
    pub offset: u64,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub slope: f64,
    pub intercept: f64,
}

/// Per-frame attributes: from the top level of a single-frame instance, or from the shared and
/// per-frame functional groups of an enhanced multi-frame one.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct FrameMeta {
    pub position: Option<[f64; 3]>,
    pub orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    /// Echo time in ms.
    pub echo_ms: Option<f64>,
    pub temporal_index: Option<i64>,
    pub b_value: Option<f64>,
    /// ImageType, or FrameType for enhanced frames.
    pub image_type: String,
    /// Rescale slope and intercept (top level, or PixelValueTransformationSequence).
    pub rescale: Option<(f64, f64)>,
}

/// Why a file was not taken as an instance.
pub(crate) enum Skip {
    /// A DICOMDIR index: not an instance; the files it lists are scanned on their own.
    Directory,
    Error(DicomError),
}

pub(crate) fn open_header(path: &Path) -> Result<InstanceHeader, Skip> {
    let (obj, span) = open_located(path, false).map_err(Skip::Error)?;
    if obj.meta().media_storage_sop_class_uid().trim_end_matches('\0') == MEDIA_STORAGE_DIRECTORY {
        return Err(Skip::Directory);
    }
    let mut header = header_from(path, &obj).map_err(Skip::Error)?;
    header.native = span.and_then(|span| native_pixels(&obj, &header, span));
    Ok(header)
}

/// RescaleSlope/RescaleIntercept of a data set or functional group item, when it has either.
fn rescale_of(obj: &InMemDicomObject) -> Option<(f64, f64)> {
    let slope = floats::<1>(obj, tags::RESCALE_SLOPE).map(|[s]| s);
    let intercept = floats::<1>(obj, tags::RESCALE_INTERCEPT).map(|[i]| i);
    (slope.is_some() || intercept.is_some()).then(|| (slope.unwrap_or(1.0), intercept.unwrap_or(0.0)))
}

/// Whether (and how) this instance's pixels can be read directly.
fn native_pixels(obj: &DefaultDicomObject, h: &InstanceHeader, span: PixelSpan) -> Option<NativePixels> {
    let ts = obj.meta().transfer_syntax().trim_end_matches('\0');
    if !matches!(ts, "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1") {
        return None;
    }
    let samples: u16 = int(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let bits_allocated: u16 = int(obj, tags::BITS_ALLOCATED)?;
    let bits_stored: u16 = int(obj, tags::BITS_STORED).unwrap_or(bits_allocated);
    let signed = int::<u16>(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let needed = u64::from(h.rows) * u64::from(h.columns) * u64::from(bits_allocated / 8) * u64::from(h.frames);
    let usable = samples == 1
        && matches!(photometric.trim(), "MONOCHROME1" | "MONOCHROME2")
        && matches!(bits_allocated, 8 | 16)
        && (1..=bits_allocated).contains(&bits_stored)
        && span.length >= needed
        && needed > 0;
    usable.then(|| NativePixels {
        offset: span.offset,
        bits_allocated,
        bits_stored,
        signed,
        slope: floats::<1>(obj, tags::RESCALE_SLOPE).map_or(1.0, |[s]| s),
        intercept: floats::<1>(obj, tags::RESCALE_INTERCEPT).map_or(0.0, |[i]| i),
    })
}

/// Opens a file; with `pixels` false, stops before the pixel data.
pub(crate) fn open(path: &Path, pixels: bool) -> Result<DefaultDicomObject, DicomError> {
    open_located(path, pixels).map(|(obj, _)| obj)
}

/// [`open`], also telling where native pixel data lies in the file.
pub(crate) fn open_located(path: &Path, pixels: bool) -> Result<(DefaultDicomObject, Option<PixelSpan>), DicomError> {
    let mut options = OpenFileOptions::new();
    if !pixels {
        options = options.read_until(tags::PIXEL_DATA);
    }
    let io = |source| DicomError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let bytes = file.metadata().map_err(io)?.len();
    let span = crate::precheck::check_lengths(std::io::BufReader::with_capacity(64 << 10, file), bytes, pixels)
        .map_err(|reason| DicomError::Parse { path: path.to_owned(), source: reason.into() })?;
    let obj = crate::budget::with_parse_budget(bytes, || options.open_file(path))
        .map_err(|source| classify_open_error(path, source))?;
    Ok((obj, span))
}

/// Files without the `DICM` marker get a short reason instead of a parser message.
fn classify_open_error(path: &Path, source: dicom_object::ReadError) -> DicomError {
    let mut head = [0u8; 132];
    let marker = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head));
    match marker {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DicomError::NotDicom { path: path.to_owned(), reason: "shorter than a DICOM preamble".into() }
        }
        Err(source) => DicomError::Io { path: path.to_owned(), source },
        Ok(()) if &head[128..132] != b"DICM" => DicomError::NotDicom {
            path: path.to_owned(),
            reason: "no Part 10 header: no 'DICM' marker at byte 128".into(),
        },
        Ok(()) => DicomError::Parse { path: path.to_owned(), source: error_chain(&source).into() },
    }
}

/// "outer: inner: innermost": dicom-rs's top-level messages alone ("Could not read data set
/// token") do not say what was wrong.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

fn header_from(path: &Path, obj: &DefaultDicomObject) -> Result<InstanceHeader, DicomError> {
    let required = |tag: Tag, attribute: &'static str| {
        text(obj, tag)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| DicomError::MissingAttribute { path: path.to_owned(), attribute })
    };
    let ts_uid = obj.meta().transfer_syntax().trim_end_matches('\0');
    let transfer_syntax =
        TransferSyntaxRegistry.get(ts_uid).map_or_else(|| format!("unknown ({ts_uid})"), |ts| ts.name().to_owned());
    let image_type = text(obj, tags::IMAGE_TYPE).unwrap_or_default();
    let frames: u32 = int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let top_level = FrameMeta {
        position: floats::<3>(obj, tags::IMAGE_POSITION_PATIENT),
        orientation: floats::<6>(obj, tags::IMAGE_ORIENTATION_PATIENT),
        pixel_spacing: floats::<2>(obj, tags::PIXEL_SPACING),
        echo_ms: floats::<1>(obj, tags::ECHO_TIME).map(|[e]| e),
        temporal_index: int(obj, tags::TEMPORAL_POSITION_IDENTIFIER),
        b_value: floats::<1>(obj, tags::DIFFUSION_B_VALUE).map(|[b]| b),
        image_type: image_type.clone(),
        rescale: rescale_of(obj),
    };
    let frame_meta = functional_group_frames(obj, frames, &top_level);

    Ok(InstanceHeader {
        path: path.to_owned(),
        record: InstanceRecord {
            patient: PatientInfo {
                id: text(obj, tags::PATIENT_ID).unwrap_or_default(),
                name: text(obj, tags::PATIENT_NAME).unwrap_or_default(),
            },
            study_uid: StudyInstanceUid::new(required(tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?),
            study_date: text(obj, tags::STUDY_DATE).unwrap_or_default(),
            study_description: text(obj, tags::STUDY_DESCRIPTION).unwrap_or_default(),
            accession_number: text(obj, tags::ACCESSION_NUMBER).unwrap_or_default(),
            series_uid: SeriesInstanceUid::new(required(tags::SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)")?),
            series_number: int(obj, tags::SERIES_NUMBER),
            series_description: text(obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
            modality: text(obj, tags::MODALITY).unwrap_or_default(),
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?,
            sop_class_uid: text(obj, tags::SOP_CLASS_UID).unwrap_or_default(),
            instance_number: int(obj, tags::INSTANCE_NUMBER),
            transfer_syntax,
        },
        acquisition_number: int(obj, tags::ACQUISITION_NUMBER),
        rows: int(obj, tags::ROWS).unwrap_or(0),
        columns: int(obj, tags::COLUMNS).unwrap_or(0),
        frames,
        slice_spacing: floats::<1>(obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| floats::<1>(obj, tags::SLICE_THICKNESS))
            .map(|[s]| s),
        window: floats::<1>(obj, tags::WINDOW_CENTER)
            .zip(floats::<1>(obj, tags::WINDOW_WIDTH))
            .filter(|(_, [width])| *width > 0.0)
            .map(|([center], [width])| WindowLevel { center: center as f32, width: width as f32 }),
        mosaic: image_type.split('\\').any(|v| v.trim().eq_ignore_ascii_case("MOSAIC")),
        mosaic_images: siemens_mosaic_images(obj),
        frame_meta,
        native: None,
        frame_of_reference_uid: text(obj, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        study_time: text(obj, tags::STUDY_TIME).unwrap_or_default(),
        study_id: text(obj, tags::STUDY_ID).unwrap_or_default(),
        referring_physician: text(obj, tags::REFERRING_PHYSICIAN_NAME).unwrap_or_default(),
        patient_birth_date: text(obj, tags::PATIENT_BIRTH_DATE).unwrap_or_default(),
        patient_sex: text(obj, tags::PATIENT_SEX).unwrap_or_default(),
    })
}

/// Siemens writes NumberOfImagesInMosaic at (0019,xx0A) in the block of private creator
/// "SIEMENS MR HEADER".
fn siemens_mosaic_images(obj: &InMemDicomObject) -> Option<u32> {
    let block = (0x10u16..=0xff)
        .find(|&e| text(obj, Tag(0x0019, e)).is_some_and(|creator| creator.trim() == "SIEMENS MR HEADER"))?;
    let element = obj.get(Tag(0x0019, (block << 8) | 0x0a))?;
    match element.vr() {
        VR::UN | VR::OB => {
            let bytes = element.to_bytes().ok()?;
            (bytes.len() >= 2).then(|| u32::from(u16::from_le_bytes([bytes[0], bytes[1]])))
        }
        _ => element.to_int::<i64>().ok().and_then(|n| u32::try_from(n).ok()),
    }
    .filter(|&n| n > 0)
}

/// One [`FrameMeta`] per frame. Enhanced multi-frame objects keep per-frame values in
/// PerFrameFunctionalGroupsSequence and common ones in SharedFunctionalGroupsSequence; anything
/// found in neither falls back to the top level.
fn functional_group_frames(obj: &InMemDicomObject, frames: u32, top: &FrameMeta) -> Vec<FrameMeta> {
    let shared = first_item(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items());
    if shared.is_none() && per_frame.is_none() {
        return vec![top.clone(); frames as usize];
    }
    // The first item of functional group macro `sequence`: per frame first, then shared.
    fn group<'a>(
        frame: Option<&'a InMemDicomObject>,
        shared: Option<&'a InMemDicomObject>,
        sequence: Tag,
    ) -> Option<&'a InMemDicomObject> {
        frame.and_then(|f| first_item(f, sequence)).or_else(|| shared.and_then(|s| first_item(s, sequence)))
    }
    let lookup = |frame, sequence| group(frame, shared, sequence);
    (0..frames as usize)
        .map(|i| {
            let frame = per_frame.as_ref().and_then(|v| v.get(i));
            let position =
                lookup(frame, tags::PLANE_POSITION_SEQUENCE).and_then(|m| floats::<3>(m, tags::IMAGE_POSITION_PATIENT));
            let orientation = lookup(frame, tags::PLANE_ORIENTATION_SEQUENCE)
                .and_then(|m| floats::<6>(m, tags::IMAGE_ORIENTATION_PATIENT));
            let pixel_spacing =
                lookup(frame, tags::PIXEL_MEASURES_SEQUENCE).and_then(|m| floats::<2>(m, tags::PIXEL_SPACING));
            let echo_ms = lookup(frame, tags::MR_ECHO_SEQUENCE).and_then(|m| floats::<1>(m, tags::EFFECTIVE_ECHO_TIME));
            let temporal_index =
                lookup(frame, tags::FRAME_CONTENT_SEQUENCE).and_then(|m| int(m, tags::TEMPORAL_POSITION_INDEX));
            let b_value =
                lookup(frame, tags::MR_DIFFUSION_SEQUENCE).and_then(|m| floats::<1>(m, tags::DIFFUSION_B_VALUE));
            let image_type = lookup(frame, tags::MR_IMAGE_FRAME_TYPE_SEQUENCE).and_then(|m| text(m, tags::FRAME_TYPE));
            let rescale = lookup(frame, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE).and_then(rescale_of);
            FrameMeta {
                position: position.or(top.position),
                orientation: orientation.or(top.orientation),
                pixel_spacing: pixel_spacing.or(top.pixel_spacing),
                echo_ms: echo_ms.map(|[e]| e).or(top.echo_ms),
                temporal_index: temporal_index.or(top.temporal_index),
                b_value: b_value.map(|[b]| b).or(top.b_value),
                image_type: image_type.unwrap_or_else(|| top.image_type.clone()),
                rescale: rescale.or(top.rescale),
            }
        })
        .collect()
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag)?.items()?.first()
}

pub(crate) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let element = obj.get(tag)?;
    let value = if element.vr() == VR::UN {
        // A text attribute written with VR UN (e.g. implicit VR from an unknown dictionary):
        // its bytes are the text.
        String::from_utf8_lossy(&element.to_bytes().ok()?).into_owned()
    } else {
        element.to_str().ok()?.into_owned()
    };
    Some(value.trim_end_matches(['\0', ' ']).trim_start().to_owned())
}

pub(crate) fn int<T: TryFrom<i64>>(obj: &InMemDicomObject, tag: Tag) -> Option<T> {
    T::try_from(obj.get(tag)?.to_int::<i64>().ok()?).ok()
}

pub(crate) fn floats<const N: usize>(obj: &InMemDicomObject, tag: Tag) -> Option<[f64; N]> {
    let values = obj.get(tag)?.to_multi_float64().ok()?;
    let array: [f64; N] = values.get(..N)?.try_into().ok()?;
    array.iter().all(|v| v.is_finite()).then_some(array)
}

/// The header of one file as the store indexes it.
pub fn read_instance(path: &Path) -> Result<lightbox_core::InstanceRecord, DicomError> {
    let h = match open_header(path) {
        Ok(h) => h,
        Err(Skip::Error(e)) => return Err(e),
        Err(Skip::Directory) => {
            return Err(DicomError::Unsupported { path: path.to_owned(), what: "a DICOMDIR as an instance".into() });
        }
    };
    Ok(h.record)
}
