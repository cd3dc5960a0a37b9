//! WADO-RS retrieval. Instances stream part by part to files on disk; a series interrupted
//! midway resumes with only the instances still missing.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use lightbox_store::{ImportOutcome, Store};
use reqwest::Method;

use crate::multipart::{MemoryParts, PartSink, RelatedParts, boundary_of, params_of};
use crate::{DicomJson, DicomWebClient, PacsError, QidoQuery};

/// Instances in the encoding the PACS stored them in: no transcoding on either side.
const ACCEPT_INSTANCES: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// What a retrieval brought.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetrieveSummary {
    /// The files written (one per instance).
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// Instances fetched one by one after the series transfer broke.
    pub resumed_instances: usize,
    /// Of `files`, imported into the store now / stored already (only for `*_into` calls).
    pub imported: usize,
    pub already_stored: usize,
    /// What did not arrive, and why: a series or an instance the PACS would not send, or (only
    /// for `*_into` calls) an instance the store refused. The rest was retrieved regardless.
    pub failed: Vec<RetrieveFailure>,
}

/// A part of a study that a retrieval could not bring into the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrieveFailure {
    /// The series it belongs to.
    pub series: String,
    /// Instances lost: those of the series the store lacked when the PACS would not send it
    /// (`None` if the PACS did not say how many it has), or `Some(1)` for one instance.
    pub instances: Option<usize>,
    /// The error, for people.
    pub reason: String,
}

/// The encoding asked for frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameSyntax {
    /// Uncompressed (Explicit VR Little Endian) pixels.
    Uncompressed,
    /// Whatever the PACS stored (JPEG-LS, JPEG 2000, RLE…): no transcoding.
    Stored,
    /// A given transfer syntax UID with its media type, e.g. `("image/jls", "1.2.840.10008.1.2.4.80")`.
    Specific { media_type: String, transfer_syntax: String },
}

impl FrameSyntax {
    fn accept(&self) -> String {
        match self {
            Self::Uncompressed => "multipart/related; type=\"application/octet-stream\"".into(),
            Self::Stored => "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*".into(),
            Self::Specific { media_type, transfer_syntax } => {
                format!("multipart/related; type=\"{media_type}\"; transfer-syntax={transfer_syntax}")
            }
        }
    }
}

/// One frame's bytes as the server sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub number: u32,
    pub content_type: Option<String>,
    /// From the part's or the response's content type, when the server says.
    pub transfer_syntax: Option<String>,
    pub data: Vec<u8>,
}

/// How far a retrieval is. Sent after each instance that arrived whole, and after each import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferProgress {
    /// Instances received whole so far.
    pub instances: usize,
    pub bytes: u64,
    /// Instances imported into the store so far (retrievals into the store only).
    pub imported: usize,
}

/// Progress reporting and cancellation of a transfer, shared with whoever shows it.
#[derive(Clone, Debug, Default)]
pub struct TransferControl {
    cancelled: Arc<AtomicBool>,
    progress: Option<std::sync::mpsc::Sender<TransferProgress>>,
}

impl TransferControl {
    /// Progress goes to `progress` (a dropped receiver is fine).
    pub fn with_progress(progress: std::sync::mpsc::Sender<TransferProgress>) -> Self {
        Self { cancelled: Arc::default(), progress: Some(progress) }
    }

    /// Stops the transfer at the next chunk; it then fails with [`PacsError::Cancelled`] and
    /// leaves no partial file.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn report(&self, progress: &TransferProgress) {
        if let Some(sender) = &self.progress {
            let _ = sender.send(progress.clone());
        }
    }
}

const CANCELLED: &str = "cancelled by the user";

/// Writes each part to its own file in a folder: `.part` while it arrives, renamed to `.dcm`
/// when whole, so a broken transfer never leaves a truncated `.dcm`.
struct DirSink {
    dir: PathBuf,
    prefix: String,
    next: usize,
    current: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    files: Vec<PathBuf>,
    bytes: u64,
    control: TransferControl,
    /// Progress so far, counted across the sinks of one retrieval.
    progress: TransferProgress,
}

impl DirSink {
    fn new(dir: &Path, prefix: &str, control: &TransferControl, progress: &TransferProgress) -> Self {
        Self {
            dir: dir.to_owned(),
            prefix: prefix.to_owned(),
            next: 0,
            current: None,
            files: Vec::new(),
            bytes: 0,
            control: control.clone(),
            progress: progress.clone(),
        }
    }

    fn discard_partial(&mut self) {
        if let Some((path, _)) = self.current.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl PartSink for DirSink {
    fn begin(&mut self, _content_type: Option<&str>) -> std::io::Result<()> {
        self.discard_partial();
        let path = self.dir.join(format!("{}-{:06}.part", self.prefix, self.next));
        self.next += 1;
        let file = std::fs::File::create(&path)?;
        self.current = Some((path, std::io::BufWriter::with_capacity(256 * 1024, file)));
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if self.control.is_cancelled() {
            return Err(std::io::Error::other(CANCELLED));
        }
        if let Some((_, file)) = &mut self.current {
            file.write_all(chunk)?;
            self.bytes += chunk.len() as u64;
            self.progress.bytes += chunk.len() as u64;
        }
        Ok(())
    }

    fn end(&mut self) -> std::io::Result<()> {
        if let Some((path, file)) = self.current.take() {
            file.into_inner().map_err(|e| e.into_error())?;
            let done = path.with_extension("dcm");
            std::fs::rename(&path, &done)?;
            self.files.push(done);
            self.progress.instances += 1;
            self.control.report(&self.progress);
        }
        Ok(())
    }
}

impl DicomWebClient {
    /// Streams the instances at `path` (`/studies/{uid}`, `…/series/{uid}` or
    /// `…/instances/{uid}`) into files in `dir`. Waiting for the response is retried; a stream
    /// that breaks midway is an error (see [`Self::retrieve_series_to_dir`] for resuming).
    async fn stream_instances(&self, path: &str, dir: &Path, sink: &mut DirSink) -> Result<(), PacsError> {
        let url = self.url(path);
        let response = self.send(Method::GET, &url, |r| r.header("Accept", ACCEPT_INSTANCES)).await?;
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let Some(boundary) = boundary_of(content_type) else {
            return Err(PacsError::Malformed {
                url,
                detail: format!("expected multipart/related, got content type {content_type:?}"),
            });
        };
        std::fs::create_dir_all(dir).map_err(|source| PacsError::Io { path: dir.to_owned(), source })?;
        let stream =
            response.bytes_stream().map(|chunk| chunk.map_err(|e| std::io::Error::other(crate::client::chain(&e))));
        let result = RelatedParts::new(stream, &boundary).copy_to(sink).await;
        if let Err(detail) = result {
            sink.discard_partial();
            if sink.control.is_cancelled() {
                return Err(PacsError::Cancelled { url });
            }
            return Err(PacsError::Transfer { url, detail });
        }
        Ok(())
    }

    /// Retrieves one instance into `dir`; returns its file.
    pub async fn retrieve_instance_to_dir(
        &self,
        study: &str,
        series: &str,
        sop: &str,
        dir: &Path,
    ) -> Result<PathBuf, PacsError> {
        self.instance_to_dir(study, series, sop, dir, &TransferControl::default(), &TransferProgress::default()).await
    }

    async fn instance_to_dir(
        &self,
        study: &str,
        series: &str,
        sop: &str,
        dir: &Path,
        control: &TransferControl,
        progress: &TransferProgress,
    ) -> Result<PathBuf, PacsError> {
        let path = format!("/studies/{study}/series/{series}/instances/{sop}");
        let mut retry = 0;
        loop {
            let mut sink = DirSink::new(dir, &format!("i{}", fastrand::u32(..)), control, progress);
            match self.stream_instances(&path, dir, &mut sink).await {
                Ok(()) if sink.files.len() == 1 => return Ok(sink.files.remove(0)),
                Ok(()) => {
                    return Err(PacsError::Malformed {
                        url: self.url(&path),
                        detail: format!("expected one instance, got {}", sink.files.len()),
                    });
                }
                Err(e) if e.is_transient() && retry + 1 < self.retry.attempts => {
                    tokio::time::sleep(self.retry.delay(retry)).await;
                    retry += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Retrieves a whole study into `dir`.
    pub async fn retrieve_study_to_dir(&self, study: &str, dir: &Path) -> Result<RetrieveSummary, PacsError> {
        let mut sink = DirSink::new(dir, "study", &TransferControl::default(), &TransferProgress::default());
        self.stream_instances(&format!("/studies/{study}"), dir, &mut sink).await?;
        Ok(RetrieveSummary { files: sink.files, bytes: sink.bytes, ..Default::default() })
    }

    /// Retrieves a series into `dir` in one request. If the transfer breaks midway, the
    /// instances that arrived whole are kept, the series' instance list is asked with QIDO,
    /// and only the missing ones are fetched, one request each.
    pub async fn retrieve_series_to_dir(
        &self,
        study: &str,
        series: &str,
        dir: &Path,
    ) -> Result<RetrieveSummary, PacsError> {
        let none = HashSet::new();
        self.series_to_dir(study, series, dir, &none, &TransferControl::default(), &TransferProgress::default()).await
    }

    /// One series into `dir`. With none of it stored (`stored` empty), in one request, then as
    /// [`Self::retrieve_series_to_dir`] says if that breaks; with some of it stored, only the
    /// instances the store lacks, one request each (those it has count as `already_stored`).
    /// An instance the PACS refuses on its own is named in `failed`; the others still come.
    async fn series_to_dir(
        &self,
        study: &str,
        series: &str,
        dir: &Path,
        stored: &HashSet<String>,
        control: &TransferControl,
        progress: &TransferProgress,
    ) -> Result<RetrieveSummary, PacsError> {
        let mut summary = RetrieveSummary::default();
        let mut have = HashSet::new();
        if stored.is_empty() {
            let mut sink = DirSink::new(dir, &format!("s{}", fastrand::u32(..)), control, progress);
            let first = self.stream_instances(&format!("/studies/{study}/series/{series}"), dir, &mut sink).await;
            summary.files = std::mem::take(&mut sink.files);
            summary.bytes = sink.bytes;
            match first {
                Ok(()) => return Ok(summary),
                // A broken connection, or a multipart body that stopped making sense midway: the
                // instances can still come one by one.
                Err(e) if e.is_transient() || matches!(e, PacsError::Malformed { .. }) => {
                    tracing::warn!("series transfer broke after {} instances ({e}); resuming", summary.files.len());
                }
                Err(e) => return Err(e),
            }
            // A whole part that is not DICOM is fetched again by itself; the store refuses it.
            have.extend(
                summary.files.iter().filter_map(|f| lightbox_dicom::read_instance(f).ok()).map(|r| r.sop_instance_uid),
            );
        }
        let level = crate::QidoLevel::Instances { study: Some(study.to_owned()), series: Some(series.to_owned()) };
        let listed = self.search_all(&level, &QidoQuery::new()).await?;
        for instance in listed {
            let Some(sop) = instance.string(crate::json::tags::SOP_INSTANCE_UID) else { continue };
            if stored.contains(&sop) {
                summary.already_stored += 1;
                continue;
            }
            if !have.insert(sop.clone()) {
                continue;
            }
            let so_far = TransferProgress {
                instances: progress.instances + summary.files.len(),
                bytes: progress.bytes + summary.bytes,
                imported: progress.imported,
            };
            match self.instance_to_dir(study, series, &sop, dir, control, &so_far).await {
                Ok(file) => {
                    summary.bytes += std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                    summary.files.push(file);
                    if stored.is_empty() {
                        summary.resumed_instances += 1;
                    }
                }
                Err(e) if is_refusal(&e) => {
                    tracing::warn!(%series, %sop, "instance not retrieved: {e}");
                    summary.failed.push(RetrieveFailure {
                        series: series.to_owned(),
                        instances: Some(1),
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(summary)
    }

    /// Retrieves a series (`Some`) or a whole study (`None`) and imports it into the store. The
    /// download goes to a temporary folder inside the store's root, deleted afterwards.
    pub async fn retrieve_into(
        &self,
        store: &mut Store,
        study: &str,
        series: Option<&str>,
    ) -> Result<RetrieveSummary, PacsError> {
        self.retrieve_into_with(store, study, series, &TransferControl::default()).await
    }

    /// [`Self::retrieve_into`] with progress and cancellation. A study is fetched series by
    /// series (each resumable); each series is imported as soon as it is whole, so a cancelled
    /// or failed retrieval keeps the series that completed. Of a series the store already has
    /// in part, only the instances it lacks are fetched, so running a retrieval again after a
    /// failure fetches only what is still missing.
    ///
    /// One series or instance the PACS refuses (gone since it was listed, say) or one instance
    /// the store refuses (not DICOM) does not stop the others: it is named in
    /// [`RetrieveSummary::failed`]. The retrieval fails as a whole when it is cancelled, when
    /// the PACS stops answering or refuses the credentials (the next series would fail the same
    /// way), when the store fails, when a study lists no series, or when nothing at all of what
    /// was asked could be retrieved (the first refusal, the others logged).
    pub async fn retrieve_into_with(
        &self,
        store: &mut Store,
        study: &str,
        series: Option<&str>,
        control: &TransferControl,
    ) -> Result<RetrieveSummary, PacsError> {
        let root = store.root().join("incoming");
        std::fs::create_dir_all(&root).map_err(|source| PacsError::Io { path: root.clone(), source })?;
        sweep_incoming(&root);
        // Each series with its instance count, when the PACS says it.
        let listed: Vec<(String, Option<usize>)> = match series {
            Some(series) => vec![(series.to_owned(), None)],
            None => {
                let level = crate::QidoLevel::Series { study: Some(study.to_owned()) };
                let query = QidoQuery::new().include("NumberOfSeriesRelatedInstances");
                let found: Vec<(String, Option<usize>)> = self
                    .search_all(&level, &query)
                    .await?
                    .iter()
                    .filter_map(|s| {
                        let count = s.int(crate::json::tags::NUMBER_OF_SERIES_RELATED_INSTANCES);
                        Some((s.string(crate::json::tags::SERIES_INSTANCE_UID)?, count.and_then(|n| n.try_into().ok())))
                    })
                    .collect();
                if found.is_empty() {
                    return Err(PacsError::NotFound {
                        url: self.url(&format!("/studies/{study}/series")),
                        what: format!("series of study {study}"),
                    });
                }
                found
            }
        };
        let mut total = RetrieveSummary::default();
        let mut progress = TransferProgress::default();
        let mut first_error = None;
        for (series, count) in listed {
            if control.is_cancelled() {
                return Err(PacsError::Cancelled { url: self.url(&format!("/studies/{study}")) });
            }
            let stored: HashSet<String> = store.series_sop_uids(&series)?.into_iter().collect();
            let temp = tempfile::tempdir_in(&root).map_err(|source| PacsError::Io { path: root.clone(), source })?;
            let summary = match self.series_to_dir(study, &series, temp.path(), &stored, control, &progress).await {
                Ok(summary) => summary,
                // A refusal of this series alone: go on with the others. A PACS that stopped
                // answering, a cancel or a local failure stops the retrieval.
                Err(e) if is_refusal(&e) => {
                    tracing::warn!(%series, "series not retrieved: {e}");
                    let lost = count.map(|n| n.saturating_sub(stored.len()));
                    total.failed.push(RetrieveFailure {
                        series: series.clone(),
                        instances: lost,
                        reason: e.to_string(),
                    });
                    first_error.get_or_insert(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            progress.instances += summary.files.len() + summary.already_stored;
            progress.bytes += summary.bytes;
            progress.imported += summary.already_stored;
            total.already_stored += summary.already_stored;
            total.failed.extend(summary.failed);
            // One transaction for the series: an engine watching the store sees it whole.
            let outcomes = store.import_files(&summary.files, |_| {
                progress.imported += 1;
                control.report(&progress);
            });
            for outcome in outcomes {
                match outcome {
                    Ok(ImportOutcome::Imported) => total.imported += 1,
                    Ok(ImportOutcome::AlreadyStored) => total.already_stored += 1,
                    // A file that is not the DICOM it should be. The store's own failures (disk
                    // full, say), and a file it cannot read back, would meet every file again.
                    Err(lightbox_store::StoreError::Dicom(e)) if is_not_dicom(&e) => {
                        tracing::warn!(%series, "instance refused by the store: {e}");
                        total.failed.push(RetrieveFailure {
                            series: series.clone(),
                            instances: Some(1),
                            reason: e.to_string(),
                        });
                        first_error.get_or_insert(PacsError::Dicom(e));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if summary.files.is_empty() {
                control.report(&progress);
            }
            total.bytes += summary.bytes;
            total.resumed_instances += summary.resumed_instances;
        }
        match first_error {
            Some(e) if total.imported + total.already_stored == 0 => {
                for other in total.failed.iter().skip(1) {
                    tracing::warn!(series = %other.series, "also not retrieved: {}", other.reason);
                }
                Err(e)
            }
            _ => Ok(total),
        }
    }

    /// Study- or series-level metadata (DICOM JSON, bulk data as URIs).
    pub async fn retrieve_metadata(&self, study: &str, series: Option<&str>) -> Result<Vec<DicomJson>, PacsError> {
        let url = match series {
            Some(series) => self.url(&format!("/studies/{study}/series/{series}/metadata")),
            None => self.url(&format!("/studies/{study}/metadata")),
        };
        let (_, body) = self.get_bytes(&url, "application/dicom+json").await?;
        DicomJson::parse_array(&body).map_err(|detail| PacsError::Malformed { url, detail })
    }

    /// Frames of one instance (numbers from 1).
    pub async fn retrieve_frames(
        &self,
        study: &str,
        series: &str,
        sop: &str,
        frames: &[u32],
        syntax: &FrameSyntax,
    ) -> Result<Vec<Frame>, PacsError> {
        let list: Vec<String> = frames.iter().map(u32::to_string).collect();
        let url = self.url(&format!("/studies/{study}/series/{series}/instances/{sop}/frames/{}", list.join(",")));
        let (content_type, body) = self.get_bytes(&url, &syntax.accept()).await?;
        let content_type = content_type.unwrap_or_default();
        let parts = parse_whole(&url, &content_type, body).await?;
        if parts.len() != frames.len() {
            return Err(PacsError::Malformed {
                url,
                detail: format!("asked {} frames, got {}", frames.len(), parts.len()),
            });
        }
        let response_syntax = transfer_syntax_of(&content_type);
        Ok(frames
            .iter()
            .zip(parts)
            .map(|(&number, (part_type, data))| Frame {
                number,
                transfer_syntax: part_type.as_deref().and_then(transfer_syntax_of).or_else(|| response_syntax.clone()),
                content_type: part_type,
                data,
            })
            .collect())
    }

    /// The value behind a `BulkDataURI` from metadata.
    /// Only URIs on this client's own server are fetched (the credentials go with the request).
    pub async fn retrieve_bulk_data(&self, uri: &str) -> Result<Vec<u8>, PacsError> {
        if !same_origin(uri, self.base_url()) {
            return Err(PacsError::Config(format!(
                "bulk data URI {uri} is not on {}: not sending the PACS credentials there",
                self.base_url()
            )));
        }
        let (content_type, body) =
            self.get_bytes(uri, "multipart/related; type=\"application/octet-stream\"; transfer-syntax=*").await?;
        let content_type = content_type.unwrap_or_default();
        if boundary_of(&content_type).is_none() {
            return Ok(body.to_vec());
        }
        let mut parts = parse_whole(uri, &content_type, body).await?;
        if parts.len() != 1 {
            return Err(PacsError::Malformed {
                url: uri.to_owned(),
                detail: format!("expected one part, got {}", parts.len()),
            });
        }
        Ok(parts.remove(0).1)
    }
}

/// The PACS refused one series or instance in a way that says nothing of the next: a 4xx other
/// than an authentication failure, a series it no longer has, or an answer that does not parse.
fn is_refusal(e: &PacsError) -> bool {
    !e.is_transient()
        && matches!(e, PacsError::Status { .. } | PacsError::NotFound { .. } | PacsError::Malformed { .. })
}

/// The file is not the DICOM it should be (as against a file that could not be read).
fn is_not_dicom(e: &lightbox_dicom::DicomError) -> bool {
    use lightbox_dicom::DicomError as E;
    matches!(e, E::NotDicom { .. } | E::Parse { .. } | E::MissingAttribute { .. } | E::Unsupported { .. })
}

/// Scheme, host and port of two URLs are the same.
fn same_origin(a: &str, b: &str) -> bool {
    fn origin(url: &str) -> Option<&str> {
        let (scheme, rest) = url.split_once("://")?;
        let end = rest.find('/').unwrap_or(rest.len());
        Some(&url[..scheme.len() + 3 + end])
    }
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x.eq_ignore_ascii_case(y))
}

/// Removes what killed transfers left in a store's `incoming/` folder (older than an hour, so
/// a transfer running in another process is never touched).
pub(crate) fn sweep_incoming(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < hour_ago);
        if old {
            let path = entry.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if removed.is_ok() {
                tracing::info!("removed leftover {}", path.display());
            }
        }
    }
}

async fn parse_whole(
    url: &str,
    content_type: &str,
    body: bytes::Bytes,
) -> Result<Vec<(Option<String>, Vec<u8>)>, PacsError> {
    let boundary = boundary_of(content_type).ok_or_else(|| PacsError::Malformed {
        url: url.to_owned(),
        detail: format!("expected multipart/related, got content type {content_type:?}"),
    })?;
    let mut parts = MemoryParts::default();
    RelatedParts::new(futures_util::stream::iter([Ok::<_, std::io::Error>(body)]), &boundary)
        .copy_to(&mut parts)
        .await
        .map_err(|detail| PacsError::Malformed { url: url.to_owned(), detail })?;
    Ok(parts.parts)
}

/// The `transfer-syntax` parameter of a content type, also when it hides inside a quoted
/// `type="…; transfer-syntax=…"` parameter (Orthanc does that).
fn transfer_syntax_of(content_type: &str) -> Option<String> {
    let (_, params) = content_type.split_once(';')?;
    for (key, value) in params_of(params) {
        if key.eq_ignore_ascii_case("transfer-syntax") && value != "*" {
            return Some(value);
        }
        if key.eq_ignore_ascii_case("type")
            && let Some(inner) = transfer_syntax_of(&value)
        {
            return Some(inner);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_only_go_to_the_same_origin() {
        let base = "https://pacs.example.org:8443/dicom-web";
        assert!(same_origin("https://pacs.example.org:8443/dicom-web/studies/1/bulk/2", base));
        assert!(!same_origin("https://evil.example.com/dicom-web/bulk", base));
        assert!(!same_origin("http://pacs.example.org:8443/dicom-web/bulk", base));
        assert!(!same_origin("https://pacs.example.org:8443.evil.com/x", base));
        assert!(!same_origin("not a url", base));
    }

    #[test]
    fn transfer_syntax_in_part_or_inside_quoted_type() {
        assert_eq!(
            transfer_syntax_of("image/jls; transfer-syntax=1.2.840.10008.1.2.4.80").as_deref(),
            Some("1.2.840.10008.1.2.4.80")
        );
        assert_eq!(
            transfer_syntax_of(
                "multipart/related; type=\"image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90\"; boundary=x"
            )
            .as_deref(),
            Some("1.2.840.10008.1.2.4.90")
        );
        assert_eq!(transfer_syntax_of("application/octet-stream"), None);
        assert_eq!(transfer_syntax_of("application/octet-stream; transfer-syntax=*"), None);
    }

    #[test]
    fn cancelling_stops_the_next_write_and_progress_counts_whole_parts() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (sender, receiver) = std::sync::mpsc::channel();
        let control = TransferControl::with_progress(sender);
        let mut sink = DirSink::new(dir.path(), "s", &control, &TransferProgress::default());
        sink.begin(None)?;
        sink.write(b"abc")?;
        sink.end()?;
        sink.begin(None)?;
        sink.write(b"de")?;
        control.cancel();
        let error = sink.write(b"f").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(error, CANCELLED);
        sink.discard_partial();
        let progress: Vec<TransferProgress> = receiver.try_iter().collect();
        assert_eq!(progress, [TransferProgress { instances: 1, bytes: 3, imported: 0 }]);
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn dir_sink_never_leaves_a_partial_dcm() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let mut sink = DirSink::new(dir.path(), "s", &TransferControl::default(), &TransferProgress::default());
        sink.begin(None)?;
        sink.write(b"whole")?;
        sink.end()?;
        sink.begin(None)?;
        sink.write(b"half")?;
        sink.discard_partial();
        let names: Vec<String> = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["s-000000.dcm"]);
        assert_eq!(std::fs::read(&sink.files[0])?, b"whole");
        assert_eq!(sink.bytes, 9);
        Ok(())
    }
}
