//! Small builders shared by the SEG and SR writers.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use crate::DicomError;
use crate::seg::Code;

pub(crate) fn sequence(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

pub(crate) fn code_item(code: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(code.value.as_str())));
    item.put(DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from(code.scheme.as_str())));
    item.put(DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(code.meaning.as_str())));
    item
}

pub(crate) fn reference(sop_class: &str, sop_uid: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::REFERENCED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class)));
    item.put(DataElement::new(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_uid)));
    item
}

/// Writes a data set as an explicit-VR-little-endian Part 10 file (creating its folder).
pub(crate) fn write_file(obj: InMemDicomObject, path: &Path) -> Result<(), DicomError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| DicomError::Io { path: dir.to_owned(), source })?;
    }
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|source| DicomError::Write { path: path.to_owned(), source: Box::new(source) })?;
    file.write_to_file(path).map_err(|source| DicomError::Write { path: path.to_owned(), source: Box::new(source) })
}

/// The Patient and General Study modules of a derived object, copied from its source instance.
pub(crate) fn put_patient_and_study(obj: &mut InMemDicomObject, source: &crate::header::InstanceHeader) {
    let r = &source.record;
    for (tag, vr, value) in [
        (tags::STUDY_INSTANCE_UID, VR::UI, r.study_uid.as_str()),
        (tags::PATIENT_NAME, VR::PN, r.patient.name.as_str()),
        (tags::PATIENT_ID, VR::LO, r.patient.id.as_str()),
        (tags::PATIENT_BIRTH_DATE, VR::DA, source.patient_birth_date.as_str()),
        (tags::PATIENT_SEX, VR::CS, source.patient_sex.as_str()),
        (tags::STUDY_DATE, VR::DA, r.study_date.as_str()),
        (tags::STUDY_TIME, VR::TM, source.study_time.as_str()),
        (tags::STUDY_ID, VR::SH, source.study_id.as_str()),
        (tags::STUDY_DESCRIPTION, VR::LO, r.study_description.as_str()),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN, source.referring_physician.as_str()),
        (tags::ACCESSION_NUMBER, VR::SH, r.accession_number.as_str()),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    }
}
