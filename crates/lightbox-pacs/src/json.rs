//! The DICOM JSON model (PS3.18 F.2) as QIDO-RS and WADO-RS metadata return it.

use serde_json::{Map, Value};

/// One dataset in the DICOM JSON model: `{"0020000D": {"vr": "UI", "Value": ["1.2…"]}, …}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DicomJson(pub Map<String, Value>);

impl DicomJson {
    /// Parses a JSON array of datasets (a QIDO-RS or metadata response).
    pub fn parse_array(bytes: &[u8]) -> Result<Vec<Self>, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Vec::new()); // some servers answer 204 or an empty body for no match
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Array(items) = value else { return Err("expected a JSON array of datasets".into()) };
        items
            .into_iter()
            .map(|item| match item {
                Value::Object(map) => Ok(Self(map)),
                other => Err(format!("expected a dataset object, found {}", kind(&other))),
            })
            .collect()
    }

    fn values(&self, tag: u32) -> Option<&Vec<Value>> {
        self.0.get(&format!("{tag:08X}"))?.get("Value")?.as_array()
    }

    /// The VR the server gave for `tag`.
    pub fn vr(&self, tag: u32) -> Option<&str> {
        self.0.get(&format!("{tag:08X}"))?.get("vr")?.as_str()
    }

    /// The first value of `tag` as text: strings as they are, numbers printed, person names
    /// as their alphabetic group.
    pub fn string(&self, tag: u32) -> Option<String> {
        let first = self.values(tag)?.first()?;
        match first {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Object(pn) => pn.get("Alphabetic").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }

    /// All values of `tag` as text.
    pub fn strings(&self, tag: u32) -> Vec<String> {
        self.values(tag)
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first value of `tag` as an integer.
    pub fn int(&self, tag: u32) -> Option<i64> {
        match self.values(tag)?.first()? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The items of a sequence.
    pub fn sequence(&self, tag: u32) -> Vec<DicomJson> {
        self.values(tag)
            .map(|vs| vs.iter().filter_map(Value::as_object).map(|m| DicomJson(m.clone())).collect())
            .unwrap_or_default()
    }

    /// The bulk data URI of `tag`, when the server sent one instead of the value.
    pub fn bulk_data_uri(&self, tag: u32) -> Option<&str> {
        self.0.get(&format!("{tag:08X}"))?.get("BulkDataURI")?.as_str()
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Tags the client reads, by keyword.
pub mod tags {
    pub const SOP_CLASS_UID: u32 = 0x0008_0016;
    pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
    pub const STUDY_DATE: u32 = 0x0008_0020;
    pub const ACCESSION_NUMBER: u32 = 0x0008_0050;
    pub const MODALITY: u32 = 0x0008_0060;
    pub const MODALITIES_IN_STUDY: u32 = 0x0008_0061;
    pub const STUDY_DESCRIPTION: u32 = 0x0008_1030;
    pub const SERIES_DESCRIPTION: u32 = 0x0008_103E;
    pub const FAILURE_REASON: u32 = 0x0008_1197;
    pub const FAILED_SOP_SEQUENCE: u32 = 0x0008_1198;
    pub const REFERENCED_SOP_SEQUENCE: u32 = 0x0008_1199;
    pub const REFERENCED_SOP_INSTANCE_UID: u32 = 0x0008_1155;
    pub const PATIENT_NAME: u32 = 0x0010_0010;
    pub const PATIENT_ID: u32 = 0x0010_0020;
    pub const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
    pub const SERIES_INSTANCE_UID: u32 = 0x0020_000E;
    pub const SERIES_NUMBER: u32 = 0x0020_0011;
    pub const INSTANCE_NUMBER: u32 = 0x0020_0013;
    pub const NUMBER_OF_STUDY_RELATED_SERIES: u32 = 0x0020_1206;
    pub const NUMBER_OF_STUDY_RELATED_INSTANCES: u32 = 0x0020_1208;
    pub const NUMBER_OF_SERIES_RELATED_INSTANCES: u32 = 0x0020_1209;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strings_names_numbers_and_sequences() -> Result<(), String> {
        let body = br#"[{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
            "00201208": {"vr": "IS", "Value": [42]},
            "00080061": {"vr": "CS", "Value": ["MR", "SR"]},
            "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
            "7FE00010": {"vr": "OW", "BulkDataURI": "http://x/bulk"}}]"#;
        let sets = DicomJson::parse_array(body)?;
        let d = &sets[0];
        assert_eq!(d.string(tags::PATIENT_NAME).as_deref(), Some("Doe^Jane"));
        assert_eq!(d.int(tags::NUMBER_OF_STUDY_RELATED_INSTANCES), Some(42));
        assert_eq!(d.strings(tags::MODALITIES_IN_STUDY), ["MR", "SR"]);
        let refs = d.sequence(tags::REFERENCED_SOP_SEQUENCE);
        assert_eq!(refs[0].string(tags::REFERENCED_SOP_INSTANCE_UID).as_deref(), Some("1.2.3"));
        assert_eq!(d.bulk_data_uri(0x7FE0_0010), Some("http://x/bulk"));
        assert_eq!(d.string(tags::STUDY_DATE), None);
        Ok(())
    }

    #[test]
    fn empty_body_is_no_match_and_garbage_is_an_error() {
        assert_eq!(DicomJson::parse_array(b"  "), Ok(vec![]));
        assert!(DicomJson::parse_array(b"{\"a\":1}").is_err());
        assert!(DicomJson::parse_array(b"[1]").is_err());
        assert!(DicomJson::parse_array(b"<html>").is_err());
    }
}
