//! STOW-RS: files sent as `multipart/related` in batches, each instance's outcome read from
//! the response.

use std::path::PathBuf;

use futures_util::StreamExt;
use reqwest::Method;

use crate::json::tags;
use crate::multipart::MultipartWriter;
use crate::{DicomJson, DicomWebClient, PacsError};

/// Most bytes in one STOW request; more go in further requests.
const BATCH_BYTES: u64 = 256 * 1024 * 1024;
const BATCH_FILES: usize = 500;
/// STOW requests in flight at once: a PACS stores the instances of concurrent requests in
/// parallel (bench-pacs: 4 in flight against Orthanc on 2 cores beat 1 in flight).
const IN_FLIGHT: usize = 4;

/// An instance the PACS did not store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StowFailure {
    pub sop_uid: String,
    /// Failure Reason (0008,1197), e.g. 272 (0x0110, processing failure), 290 (0x0122, SOP
    /// class not supported); 0 when the server gave none.
    pub reason: u16,
}

/// What the PACS said about the instances sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StowResult {
    /// SOP Instance UIDs the PACS confirmed (Referenced SOP Sequence).
    pub stored: Vec<String>,
    pub failed: Vec<StowFailure>,
}

impl DicomWebClient {
    /// Sends DICOM files with STOW-RS (to `/studies`, or `/studies/{study}` when all belong to
    /// one study). Requests that fail transiently are retried whole: a PACS keeps one copy per
    /// SOP Instance UID, so a resend stores nothing twice.
    pub async fn store_files(&self, study: Option<&str>, files: &[PathBuf]) -> Result<StowResult, PacsError> {
        let mut sized = Vec::with_capacity(files.len());
        for file in files {
            let size = std::fs::metadata(file).map_err(|source| PacsError::Io { path: file.clone(), source })?.len();
            sized.push((file.clone(), size));
        }
        // Batches of at most BATCH_BYTES / BATCH_FILES; a large send is cut into IN_FLIGHT
        // batches (of at least 50 files or 16 MiB) so the PACS can work on several at once.
        let total: u64 = sized.iter().map(|(_, size)| size).sum();
        let target = (total / IN_FLIGHT as u64).clamp(16 << 20, BATCH_BYTES);
        let per_batch = sized.len().div_ceil(IN_FLIGHT).clamp(50, BATCH_FILES);
        let mut batches: Vec<Vec<(PathBuf, u64)>> = Vec::new();
        let mut batch: Vec<(PathBuf, u64)> = Vec::new();
        let mut batch_bytes = 0;
        for (file, size) in sized {
            if !batch.is_empty() && (batch_bytes + size > target || batch.len() >= per_batch) {
                batches.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push((file, size));
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        // The first batch goes alone: a wrong password or URL fails once, not IN_FLIGHT times
        // (and does not lock an account).
        let mut batches = batches.into_iter();
        let mut result = match batches.next() {
            Some(first) => self.store_batch(study, first).await?,
            None => StowResult::default(),
        };
        let mut results =
            futures_util::stream::iter(batches).map(|batch| self.store_batch(study, batch)).buffer_unordered(IN_FLIGHT);
        while let Some(outcome) = results.next().await {
            let batch = outcome?;
            result.stored.extend(batch.stored);
            result.failed.extend(batch.failed);
        }
        Ok(result)
    }

    async fn store_batch(&self, study: Option<&str>, files: Vec<(PathBuf, u64)>) -> Result<StowResult, PacsError> {
        let url = match study {
            Some(study) => self.url(&format!("/studies/{study}")),
            None => self.url("/studies"),
        };
        let writer = MultipartWriter::new(files);
        let outcome = self
            .send(Method::POST, &url, |r| {
                r.header("Content-Type", writer.content_type())
                    .header("Content-Length", writer.len())
                    .header("Accept", "application/dicom+json")
                    .body(reqwest::Body::wrap_stream(writer.stream()))
            })
            .await;
        let body = match outcome {
            Ok(response) => response.bytes().await.map_err(|e| self.transport_error(&url, &e))?,
            // 409: none stored; the body still says which and why.
            Err(PacsError::Status { status: 409, body, .. }) if body.trim_start().starts_with('{') => {
                body.into_bytes().into()
            }
            Err(e) => return Err(e),
        };
        parse_response(&body).map_err(|detail| PacsError::Malformed { url: url.clone(), detail })
    }
}

impl StowResult {
    /// Reads a STOW-RS response body (one dataset in the DICOM JSON model, or an array of one).
    pub fn from_response_body(body: &[u8]) -> Result<Self, String> {
        parse_response(body)
    }
}

fn parse_response(body: &[u8]) -> Result<StowResult, String> {
    let trimmed = body.trim_ascii();
    let dataset = if trimmed.is_empty() {
        return Ok(StowResult::default());
    } else if trimmed.starts_with(b"[") {
        DicomJson::parse_array(trimmed)?.into_iter().next().unwrap_or_default()
    } else {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(trimmed).map_err(|e| format!("STOW response is not JSON: {e}"))?;
        DicomJson(map)
    };
    let stored = dataset
        .sequence(tags::REFERENCED_SOP_SEQUENCE)
        .iter()
        .filter_map(|item| item.string(tags::REFERENCED_SOP_INSTANCE_UID))
        .collect();
    let failed = dataset
        .sequence(tags::FAILED_SOP_SEQUENCE)
        .iter()
        .map(|item| StowFailure {
            sop_uid: item.string(tags::REFERENCED_SOP_INSTANCE_UID).unwrap_or_default(),
            reason: item.int(tags::FAILURE_REASON).and_then(|r| u16::try_from(r).ok()).unwrap_or(0),
        })
        .collect();
    Ok(StowResult { stored, failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stored_and_failed_instances() -> Result<(), String> {
        let body = br#"{"00081190": {"vr": "UR", "Value": ["http://x/studies/1"]},
            "00081198": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.4"]},
                "00081155": {"vr": "UI", "Value": ["9.9"]}, "00081197": {"vr": "US", "Value": [272]}}]},
            "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.1"]}},
                {"00081155": {"vr": "UI", "Value": ["1.2"]}}]}}"#;
        let result = parse_response(body)?;
        assert_eq!(result.stored, ["1.1", "1.2"]);
        assert_eq!(result.failed, [StowFailure { sop_uid: "9.9".into(), reason: 272 }]);
        Ok(())
    }

    #[test]
    fn empty_failed_sequence_and_garbage() -> Result<(), String> {
        let result = parse_response(br#"{"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ", "Value": []}}"#)?;
        assert_eq!(result, StowResult::default());
        assert!(parse_response(b"<html>oops</html>").is_err());
        Ok(())
    }
}
