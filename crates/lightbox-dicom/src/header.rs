//! Reading the attributes Lightbox needs from one DICOM file.

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use lightbox_core::{PatientInfo, SeriesInstanceUid, StudyInstanceUid, WindowLevel};

use crate::DicomError;

/// SOP Class UID of a DICOMDIR (Media Storage Directory Storage).
const MEDIA_STORAGE_DIRECTORY: &str = "1.2.840.10008.1.3.10";

/// What one file says about itself, without its pixel data.
#[derive(Clone, Debug)]
pub(crate) struct InstanceHeader {
    pub path: PathBuf,
    pub patient: PatientInfo,
    pub study_uid: StudyInstanceUid,
    pub study_date: String,
    pub study_description: String,
    pub accession_number: String,
    pub series_uid: SeriesInstanceUid,
    pub series_number: Option<i32>,
    pub series_description: String,
    pub modality: String,
    pub sop_instance_uid: String,
    pub instance_number: Option<i32>,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub transfer_syntax: String,
    pub image_position: Option<[f64; 3]>,
    pub image_orientation: Option<[f64; 6]>,
    pub pixel_spacing: Option<[f64; 2]>,
    pub slice_spacing: Option<f64>,
    pub window: Option<WindowLevel>,
    pub mosaic: bool,
}

/// Why a file was not taken as an instance.
pub(crate) enum Skip {
    /// A DICOMDIR index: not an instance; the files it lists are scanned on their own.
    Directory,
    Error(DicomError),
}

pub(crate) fn open_header(path: &Path) -> Result<InstanceHeader, Skip> {
    let obj = open(path, false).map_err(Skip::Error)?;
    if obj.meta().media_storage_sop_class_uid().trim_end_matches('\0') == MEDIA_STORAGE_DIRECTORY {
        return Err(Skip::Directory);
    }
    header_from(path, &obj).map_err(Skip::Error)
}

/// Opens a file; with `pixels` false, stops before the pixel data.
pub(crate) fn open(path: &Path, pixels: bool) -> Result<DefaultDicomObject, DicomError> {
    let mut options = OpenFileOptions::new();
    if !pixels {
        options = options.read_until(tags::PIXEL_DATA);
    }
    options.open_file(path).map_err(|source| classify_open_error(path, source))
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
        Ok(()) => DicomError::Parse { path: path.to_owned(), source: Box::new(source) },
    }
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

    Ok(InstanceHeader {
        path: path.to_owned(),
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
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        rows: int(obj, tags::ROWS).unwrap_or(0),
        columns: int(obj, tags::COLUMNS).unwrap_or(0),
        frames: int(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1),
        transfer_syntax,
        image_position: floats::<3>(obj, tags::IMAGE_POSITION_PATIENT),
        image_orientation: floats::<6>(obj, tags::IMAGE_ORIENTATION_PATIENT),
        pixel_spacing: floats::<2>(obj, tags::PIXEL_SPACING),
        slice_spacing: floats::<1>(obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| floats::<1>(obj, tags::SLICE_THICKNESS))
            .map(|[s]| s),
        window: floats::<1>(obj, tags::WINDOW_CENTER)
            .zip(floats::<1>(obj, tags::WINDOW_WIDTH))
            .filter(|(_, [width])| *width > 0.0)
            .map(|([center], [width])| WindowLevel { center: center as f32, width: width as f32 }),
        mosaic: image_type.split('\\').any(|v| v.trim().eq_ignore_ascii_case("MOSAIC")),
    })
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
