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
