//! DICOM Structured Report writing: a Comprehensive 3D SR with the TID 1500 "Imaging
//! Measurement Report" template, one volumetric measurement group (TID 1411) per finding,
//! referencing the SEG segment it measures and its source series. AI-made values carry the
//! algorithm's name and version (TID 4019); values a radiologist made say so.

use std::path::Path;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use crate::build::{code_item, put_patient_and_study, reference, sequence, write_file};
use crate::seg::Code;
use crate::write::{ds, new_uid, now_da_tm, uid_from};
use crate::{DicomError, DisplaySet};

/// Who made the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observer {
    /// A program: its name and a UID for this installation (its version goes with the values
    /// it made, as TID 4019 algorithm identification).
    Device {
        name: String,
        uid: String,
    },
    Person {
        name: String,
    },
}

/// One measured value, e.g. Volume = 1234.5 mm3.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// What is measured, e.g. SCT 118565006 "Volume".
    pub concept: Code,
    pub value: f64,
    /// A UCUM unit, e.g. ("mm3", "UCUM", "cubic millimeter").
    pub unit: Code,
    /// Made by an algorithm rather than by the observer.
    pub algorithm: Option<Algorithm>,
}

/// TID 4019 Algorithm Identification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Algorithm {
    pub name: String,
    pub version: String,
    /// Its parameters, as `name=value` texts.
    pub parameters: Vec<String>,
}

/// A segment of a SEG instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRef {
    pub seg: crate::seg::Written,
    pub number: u16,
}

/// One finding: what it is, where, its segment, its measurements. With a segment it is a
/// volumetric ROI group (TID 1411), without one a plain measurement group (TID 1501).
#[derive(Clone, Debug, PartialEq)]
pub struct MeasurementGroup {
    pub tracking_id: String,
    pub tracking_uid: String,
    /// e.g. SCT 52988006 "Lesion".
    pub finding: Option<Code>,
    /// Who made this group when not the report's observer: a radiologist's own measurements
    /// in an AI report carry their name here (an observation context on the group).
    pub observer: Option<Observer>,
    pub finding_site: Option<Code>,
    /// The SEG segment this group measures.
    pub segment: Option<SegmentRef>,
    pub measurements: Vec<Measurement>,
    /// Coded evaluations: (concept, value).
    pub qualitative: Vec<(Code, Code)>,
}

/// The report.
#[derive(Clone, Debug, PartialEq)]
pub struct MeasurementReport {
    /// Who made the report (TID 1001): the AI device, and the radiologist when the report holds
    /// their measurements.
    pub observers: Vec<Observer>,
    /// e.g. LN 25056-3 "MRI unspecified body region" (TID 1500 "Procedure reported").
    pub procedure: Code,
    pub groups: Vec<MeasurementGroup>,
    pub series_description: String,
    pub series_number: i32,
    /// `VERIFIED` only when a person signed it: their name and organization.
    pub verified_by: Option<String>,
    /// The signer's organization (Verifying Organization is required when signed).
    pub verifying_organization: String,
    /// Derive the instance and series UIDs from this name instead of making new ones.
    pub uid_seed: Option<String>,
}

/// Writes `report` about time point `t` of `set` as a Comprehensive 3D SR to `path`.
/// Returns the new SOP Instance UID.
pub fn write_sr(set: &DisplaySet, t: u32, report: &MeasurementReport, path: &Path) -> Result<String, DicomError> {
    let bad = |what: String| DicomError::Unsupported { path: path.to_owned(), what };
    let sources = set.source_slices(t)?;
    let first = sources.first().map(|s| s.header).ok_or_else(|| bad("an empty display set".into()))?;
    let r = &first.record;
    let (sop_uid, series_uid) = match &report.uid_seed {
        Some(seed) => (uid_from(&format!("{seed}/sr")), uid_from(&format!("{seed}/sr-series"))),
        None => (new_uid(), new_uid()),
    };
    let (date, time) = now_da_tm();
    let mut obj = InMemDicomObject::new_empty();
    let text = |obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    text(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    text(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE3_DSR_STORAGE);
    text(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    text(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, r.study_uid.as_str());
    text(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    text(&mut obj, tags::MODALITY, VR::CS, "SR");
    put_patient_and_study(&mut obj, first);
    text(&mut obj, tags::SERIES_NUMBER, VR::IS, &report.series_number.to_string());
    text(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, &lo(&report.series_description));
    text(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    // General Equipment as IHE AI Results asks: who made it, which model, which version.
    text(&mut obj, tags::MANUFACTURER, VR::LO, "Lightbox");
    text(&mut obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, "Lightbox workstation");
    text(&mut obj, tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION"));
    text(&mut obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, "1");
    text(&mut obj, tags::DEVICE_UID, VR::UI, &uid_from("lightbox/device"));
    text(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    text(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    text(&mut obj, tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000"); // dates and times are UTC
    text(&mut obj, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    match &report.verified_by {
        Some(name) => {
            let organization = report.verifying_organization.trim();
            if organization.is_empty() {
                return Err(bad("a signed report without the signer's organization".into()));
            }
            put_verified(&mut obj, name, organization, &format!("{date}{time}"));
        }
        None => text(&mut obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
    }
    for empty in [tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE] {
        obj.put(DataElement::new(empty, VR::SQ, DataSetSequence::from(Vec::<InMemDicomObject>::new())));
    }

    // Evidence: the source images and the SEG instances referenced.
    let mut seen = std::collections::BTreeSet::new();
    let images: Vec<InMemDicomObject> = sources
        .iter()
        .filter(|s| seen.insert(s.header.record.sop_instance_uid.clone()))
        .map(|s| reference(&s.header.record.sop_class_uid, &s.header.record.sop_instance_uid))
        .collect();
    let mut series_items = vec![series_ref(r.series_uid.as_str(), images)];
    let mut seg_series: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
    for segment in report.groups.iter().filter_map(|g| g.segment.as_ref()) {
        seg_series.entry(&segment.seg.series_uid).or_default().insert(&segment.seg.sop_uid);
    }
    for (series_uid, instances) in seg_series {
        let refs = instances.into_iter().map(|uid| reference(uids::SEGMENTATION_STORAGE, uid)).collect();
        series_items.push(series_ref(series_uid, refs));
    }
    let mut study = InMemDicomObject::new_empty();
    text(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, r.study_uid.as_str());
    sequence(&mut study, tags::REFERENCED_SERIES_SEQUENCE, series_items);
    sequence(&mut obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![study]);

    // The content tree.
    text(&mut obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    sequence(&mut obj, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(&dcm("126000", "Imaging Measurement Report"))]);
    text(&mut obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    let mut template = InMemDicomObject::new_empty();
    text(&mut template, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    text(&mut template, tags::TEMPLATE_IDENTIFIER, VR::CS, "1500");
    sequence(&mut obj, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);

    let mut content = vec![code(
        "HAS CONCEPT MOD",
        &dcm("121049", "Language of Content Item and Descendants"),
        &Code::new("en-US", "RFC5646", "English (United States)"),
    )];
    if report.observers.is_empty() {
        return Err(bad("a report without an observer".into()));
    }
    // TID 1002: persons first, then devices.
    let mut observers: Vec<&Observer> = report.observers.iter().collect();
    observers.sort_by_key(|o| matches!(o, Observer::Device { .. }));
    for observer in observers {
        content.extend(observer_context(observer));
    }
    content.push(code("HAS CONCEPT MOD", &dcm("121058", "Procedure reported"), &report.procedure));
    let mut listed = std::collections::BTreeSet::new();
    let library_images: Vec<InMemDicomObject> = sources
        .iter()
        .filter(|s| listed.insert(s.header.record.sop_instance_uid.clone()))
        .map(|s| image_item("CONTAINS", None, &s.header.record.sop_class_uid, &s.header.record.sop_instance_uid, None))
        .collect();
    let group = container("CONTAINS", &dcm("126200", "Image Library Group"), library_images);
    content.push(container("CONTAINS", &dcm("111028", "Image Library"), vec![group]));

    let groups: Vec<InMemDicomObject> = report.groups.iter().map(|g| group_item(g, r.series_uid.as_str())).collect();
    // TID 1500 has no empty "Imaging Measurements" container: leave it out when there is nothing.
    if !groups.is_empty() {
        content.push(container("CONTAINS", &dcm("126010", "Imaging Measurements"), groups));
    }
    sequence(&mut obj, tags::CONTENT_SEQUENCE, content);

    write_file(obj, path)?;
    Ok(sop_uid)
}

/// One measurement group (TID 1411 when it measures a segment of a SEG made from
/// `source_series`, TID 1501 otherwise) as a content item.
fn group_item(g: &MeasurementGroup, source_series: &str) -> InMemDicomObject {
    let mut items = g.observer.as_ref().map(observer_context).unwrap_or_default();
    items.push(text_item("HAS OBS CONTEXT", &dcm("112039", "Tracking Identifier"), &g.tracking_id));
    items.push(uidref("HAS OBS CONTEXT", &dcm("112040", "Tracking Unique Identifier"), &g.tracking_uid));
    if let Some(finding) = &g.finding {
        items.push(code("CONTAINS", &dcm("121071", "Finding"), finding));
    }
    if let Some(site) = &g.finding_site {
        items.push(code("HAS CONCEPT MOD", &Code::new("363698007", "SCT", "Finding Site"), site));
    }
    if let Some(segment) = &g.segment {
        items.push(image_item(
            "CONTAINS",
            Some(&dcm("121191", "Referenced Segment")),
            uids::SEGMENTATION_STORAGE,
            &segment.seg.sop_uid,
            Some(segment.number),
        ));
        items.push(uidref("CONTAINS", &dcm("121232", "Source series for segmentation"), source_series));
    }
    for m in &g.measurements {
        items.push(num("CONTAINS", m));
    }
    for (concept, value) in &g.qualitative {
        items.push(code("CONTAINS", concept, value));
    }
    let mut group = container("CONTAINS", &dcm("125007", "Measurement Group"), items);
    let mut template = InMemDicomObject::new_empty();
    template.put(DataElement::new(tags::MAPPING_RESOURCE, VR::CS, PrimitiveValue::from("DCMR")));
    let id = if g.segment.is_some() { "1411" } else { "1501" };
    template.put(DataElement::new(tags::TEMPLATE_IDENTIFIER, VR::CS, PrimitiveValue::from(id)));
    sequence(&mut group, tags::CONTENT_TEMPLATE_SEQUENCE, vec![template]);
    group
}

/// VERIFIED by `name` of `organization` at `datetime` (DT): the flag and the Verifying Observer
/// Sequence.
fn put_verified(obj: &mut InMemDicomObject, name: &str, organization: &str, datetime: &str) {
    let text = |obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    text(obj, tags::VERIFICATION_FLAG, VR::CS, "VERIFIED");
    let mut verifier = InMemDicomObject::new_empty();
    text(&mut verifier, tags::VERIFYING_OBSERVER_NAME, VR::PN, name);
    verifier.put(DataElement::new(
        tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(Vec::<InMemDicomObject>::new()),
    ));
    text(&mut verifier, tags::VERIFYING_ORGANIZATION, VR::LO, &lo(organization));
    text(&mut verifier, tags::VERIFICATION_DATE_TIME, VR::DT, datetime);
    sequence(obj, tags::VERIFYING_OBSERVER_SEQUENCE, vec![verifier]);
}

/// TID 1002 Observer Context: a person (TID 1003) or a device (TID 1004).
fn observer_context(observer: &Observer) -> Vec<InMemDicomObject> {
    match observer {
        Observer::Device { name, uid } => vec![
            code("HAS OBS CONTEXT", &dcm("121005", "Observer Type"), &dcm("121007", "Device")),
            uidref("HAS OBS CONTEXT", &dcm("121012", "Device Observer UID"), uid),
            text_item("HAS OBS CONTEXT", &dcm("121013", "Device Observer Name"), name),
            text_item("HAS OBS CONTEXT", &dcm("121014", "Device Observer Manufacturer"), "Lightbox"),
            text_item("HAS OBS CONTEXT", &dcm("121015", "Device Observer Model Name"), "Lightbox"),
        ],
        Observer::Person { name } => vec![
            code("HAS OBS CONTEXT", &dcm("121005", "Observer Type"), &dcm("121006", "Person")),
            pname("HAS OBS CONTEXT", &dcm("121008", "Person Observer Name"), name),
        ],
    }
}

/// An LO value: at most 64 characters.
pub(crate) fn lo(value: &str) -> String {
    value.chars().take(64).collect()
}

fn dcm(value: &str, meaning: &str) -> Code {
    Code::new(value, "DCM", meaning)
}

fn series_ref(series_uid: &str, instances: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series_uid)));
    sequence(&mut item, tags::REFERENCED_SOP_SEQUENCE, instances);
    item
}

/// A content item with its relationship, value type and concept name.
fn item(relationship: &str, value_type: &str, concept: Option<&Code>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::RELATIONSHIP_TYPE, VR::CS, PrimitiveValue::from(relationship)));
    item.put(DataElement::new(tags::VALUE_TYPE, VR::CS, PrimitiveValue::from(value_type)));
    if let Some(concept) = concept {
        sequence(&mut item, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![code_item(concept)]);
    }
    item
}

fn code(relationship: &str, concept: &Code, value: &Code) -> InMemDicomObject {
    let mut i = item(relationship, "CODE", Some(concept));
    sequence(&mut i, tags::CONCEPT_CODE_SEQUENCE, vec![code_item(value)]);
    i
}

fn text_item(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "TEXT", Some(concept));
    i.put(DataElement::new(tags::TEXT_VALUE, VR::UT, PrimitiveValue::from(value)));
    i
}

fn pname(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "PNAME", Some(concept));
    i.put(DataElement::new(tags::PERSON_NAME, VR::PN, PrimitiveValue::from(value)));
    i
}

fn uidref(relationship: &str, concept: &Code, value: &str) -> InMemDicomObject {
    let mut i = item(relationship, "UIDREF", Some(concept));
    i.put(DataElement::new(tags::UID, VR::UI, PrimitiveValue::from(value)));
    i
}

fn image_item(
    relationship: &str,
    concept: Option<&Code>,
    sop_class: &str,
    sop_uid: &str,
    segment: Option<u16>,
) -> InMemDicomObject {
    let mut i = item(relationship, "IMAGE", concept);
    let mut reference = reference(sop_class, sop_uid);
    if let Some(number) = segment {
        reference.put(DataElement::new(tags::REFERENCED_SEGMENT_NUMBER, VR::US, PrimitiveValue::from(number)));
    }
    sequence(&mut i, tags::REFERENCED_SOP_SEQUENCE, vec![reference]);
    i
}

fn container(relationship: &str, concept: &Code, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut i = item(relationship, "CONTAINER", Some(concept));
    i.put(DataElement::new(tags::CONTINUITY_OF_CONTENT, VR::CS, PrimitiveValue::from("SEPARATE")));
    if !children.is_empty() {
        sequence(&mut i, tags::CONTENT_SEQUENCE, children);
    }
    i
}

fn num(relationship: &str, m: &Measurement) -> InMemDicomObject {
    let mut i = item(relationship, "NUM", Some(&m.concept));
    let mut value = InMemDicomObject::new_empty();
    value.put(DataElement::new(tags::NUMERIC_VALUE, VR::DS, PrimitiveValue::from(ds(m.value))));
    sequence(&mut value, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![code_item(&m.unit)]);
    sequence(&mut i, tags::MEASURED_VALUE_SEQUENCE, vec![value]);
    if let Some(a) = &m.algorithm {
        let mut items = vec![
            text_item("HAS CONCEPT MOD", &dcm("111001", "Algorithm Name"), &a.name),
            text_item("HAS CONCEPT MOD", &dcm("111003", "Algorithm Version"), &a.version),
        ];
        for parameter in &a.parameters {
            items.push(text_item("HAS CONCEPT MOD", &dcm("111002", "Algorithm Parameters"), parameter));
        }
        sequence(&mut i, tags::CONTENT_SEQUENCE, items);
    }
    i
}

/// A report signed by [`sign_sr`].
#[derive(Clone, Debug, PartialEq)]
pub struct SignedSr {
    pub sop_uid: String,
    /// The SEG instances its evidence references (what goes to the PACS with it).
    pub seg_uids: Vec<String>,
}

/// Signs an unverified report (`unsigned`, as an AI pipeline wrote it): a new instance at
/// `out`, the same content with `signer` as a person observer (TID 1002, before the devices),
/// the radiologists' own measurement groups `added` after the AI's (each naming its person
/// observer; they measure no segment), `VERIFIED` with the signer and `organization` in the
/// Verifying Observer Sequence, and the unsigned report as its predecessor (Predecessor
/// Documents Sequence). Its instance and series UIDs are derived from `uid_seed`. A report
/// that is already verified, or not an SR, is refused.
pub fn sign_sr(
    unsigned: &Path,
    signer: &str,
    organization: &str,
    added: &[MeasurementGroup],
    uid_seed: &str,
    out: &Path,
) -> Result<SignedSr, DicomError> {
    let bad = |what: String| DicomError::Unsupported { path: unsigned.to_owned(), what };
    let file = crate::header::open(unsigned, true)?;
    let mut obj: InMemDicomObject = (*file).clone();
    let get = |tag: Tag| crate::header::text(&obj, tag).unwrap_or_default();
    if get(tags::MODALITY) != "SR" {
        return Err(bad("not a structured report".into()));
    }
    if get(tags::VERIFICATION_FLAG) == "VERIFIED" {
        return Err(bad("the report is signed already".into()));
    }
    let (signer, organization) = (signer.trim(), organization.trim());
    if signer.is_empty() || organization.is_empty() {
        return Err(bad("a signature needs the signer's name and organization".into()));
    }
    if added.iter().any(|g| g.segment.is_some()) {
        return Err(bad("a radiologist's measurement added at signing that refers to a segment".into()));
    }
    let description = get(tags::SERIES_DESCRIPTION);
    let (old_sop, old_series, study, sop_class) = (
        get(tags::SOP_INSTANCE_UID),
        get(tags::SERIES_INSTANCE_UID),
        get(tags::STUDY_INSTANCE_UID),
        get(tags::SOP_CLASS_UID),
    );
    let sop_uid = uid_from(&format!("{uid_seed}/sr"));
    let text = |obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
    };
    text(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    text(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, &uid_from(&format!("{uid_seed}/sr-series")));
    text(&mut obj, tags::SERIES_DESCRIPTION, VR::LO, &lo(&format!("{description}, signed")));
    let (date, time) = now_da_tm();
    text(&mut obj, tags::CONTENT_DATE, VR::DA, &date);
    text(&mut obj, tags::CONTENT_TIME, VR::TM, &time);
    put_verified(&mut obj, signer, organization, &format!("{date}{time}"));
    // The unsigned report it replaces.
    let mut predecessor = InMemDicomObject::new_empty();
    text(&mut predecessor, tags::STUDY_INSTANCE_UID, VR::UI, &study);
    sequence(
        &mut predecessor,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![series_ref(&old_series, vec![reference(&sop_class, &old_sop)])],
    );
    sequence(&mut obj, tags::PREDECESSOR_DOCUMENTS_SEQUENCE, vec![predecessor]);
    // The signer as an observer, persons before devices (after the language of content).
    let mut content: Vec<InMemDicomObject> =
        obj.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()).map(<[_]>::to_vec).unwrap_or_default();
    let at = content
        .iter()
        .position(|item| {
            item.get(tags::RELATIONSHIP_TYPE)
                .and_then(|e| e.to_str().ok())
                .is_some_and(|r| r.trim() == "HAS OBS CONTEXT")
        })
        .unwrap_or(content.len().min(1));
    for (k, item) in observer_context(&Observer::Person { name: signer.to_owned() }).into_iter().enumerate() {
        content.insert(at + k, item);
    }
    // The radiologists' own measurements, after the AI's in "Imaging Measurements" (added
    // when the AI's report has none).
    if !added.is_empty() {
        let is_measurements = |item: &InMemDicomObject| {
            item.get(tags::CONCEPT_NAME_CODE_SEQUENCE)
                .and_then(|e| e.items())
                .and_then(|codes| codes.first())
                .and_then(|c| crate::header::text(c, tags::CODE_VALUE))
                .is_some_and(|v| v == "126010")
        };
        let groups = added.iter().map(|g| group_item(g, ""));
        match content.iter_mut().find(|item| is_measurements(item)) {
            Some(measurements) => {
                let mut children: Vec<InMemDicomObject> = measurements
                    .get(tags::CONTENT_SEQUENCE)
                    .and_then(|e| e.items())
                    .map(<[_]>::to_vec)
                    .unwrap_or_default();
                children.extend(groups);
                sequence(measurements, tags::CONTENT_SEQUENCE, children);
            }
            None => content.push(container("CONTAINS", &dcm("126010", "Imaging Measurements"), groups.collect())),
        }
    }
    sequence(&mut obj, tags::CONTENT_SEQUENCE, content);
    // The SEG instances among the evidence.
    let mut seg_uids = Vec::new();
    let sequence_items = |obj: &InMemDicomObject, tag: Tag| -> Vec<InMemDicomObject> {
        obj.get(tag).and_then(|e| e.items()).map(<[_]>::to_vec).unwrap_or_default()
    };
    for study in sequence_items(&obj, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE) {
        for series in sequence_items(&study, tags::REFERENCED_SERIES_SEQUENCE) {
            for instance in sequence_items(&series, tags::REFERENCED_SOP_SEQUENCE) {
                let class = crate::header::text(&instance, tags::REFERENCED_SOP_CLASS_UID).unwrap_or_default();
                if class == uids::SEGMENTATION_STORAGE || class == crate::seg::LABEL_MAP_SEGMENTATION_STORAGE {
                    seg_uids.extend(crate::header::text(&instance, tags::REFERENCED_SOP_INSTANCE_UID));
                }
            }
        }
    }
    write_file(obj, out)?;
    Ok(SignedSr { sop_uid, seg_uids })
}
