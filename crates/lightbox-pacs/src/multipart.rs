//! `multipart/related` (RFC 2387) as DICOMweb uses it: parsed as a stream (multer), one part's
//! chunk at a time, so a large series is never held in memory; built as a stream of file chunks
//! for STOW-RS, with its length known up front.

use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The `boundary` parameter of a `multipart/*` content type (quoted or not).
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (media, params) = content_type.split_once(';')?;
    if !media.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params_of(params).find(|(k, _)| k.eq_ignore_ascii_case("boundary")).map(|(_, v)| v).filter(|b| !b.is_empty())
}

/// `key=value` parameters of a media type, with quotes removed. A quoted value may contain `;`.
pub(crate) fn params_of(params: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let mut rest = params;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start_matches([';', ' ', '\t']);
            if rest.is_empty() {
                return None;
            }
            let eq = rest.find('=');
            let semi = rest.find(';');
            match (eq, semi) {
                (Some(e), s) if s.is_none_or(|s| e < s) => {
                    let key = rest[..e].trim().to_owned();
                    let after = rest[e + 1..].trim_start();
                    let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
                        match quoted.find('"') {
                            Some(end) => (quoted[..end].to_owned(), &quoted[end + 1..]),
                            None => (quoted.to_owned(), ""),
                        }
                    } else {
                        let end = after.find(';').unwrap_or(after.len());
                        (after[..end].trim().to_owned(), &after[end..])
                    };
                    rest = remaining;
                    return Some((key, value));
                }
                (_, Some(s)) => rest = &rest[s + 1..], // a parameter without '=': skip it
                (_, None) => {
                    rest = "";
                    return None;
                }
            }
        }
    })
}

/// Where the parts of a response go.
pub trait PartSink {
    /// A part starts; `content_type` is its Content-Type header, if any.
    fn begin(&mut self, content_type: Option<&str>) -> std::io::Result<()>;
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    /// The part ended whole.
    fn end(&mut self) -> std::io::Result<()>;
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// A streaming reader of a `multipart/related` body.
pub struct RelatedParts {
    inner: multer::Multipart<'static>,
}

impl RelatedParts {
    pub fn new<S, E>(stream: S, boundary: &str) -> Self
    where
        S: Stream<Item = Result<Bytes, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        Self { inner: multer::Multipart::new(stream, boundary.to_owned()) }
    }

    /// Feeds every part to `sink`, a chunk at a time. Returns the number of whole parts. An
    /// error (a broken stream, a malformed body) leaves the current part un-ended.
    pub async fn copy_to(&mut self, sink: &mut impl PartSink) -> Result<usize, String> {
        let mut parts = 0;
        while let Some(mut field) = self.inner.next_field().await.map_err(|e| e.to_string())? {
            let content_type = field.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
            sink.begin(content_type.as_deref()).map_err(|e| e.to_string())?;
            while let Some(chunk) = field.chunk().await.map_err(|e| e.to_string())? {
                sink.write(&chunk).map_err(|e| e.to_string())?;
            }
            sink.end().map_err(|e| e.to_string())?;
            parts += 1;
        }
        Ok(parts)
    }
}

/// Collects parts in memory (small responses: frames, bulk data).
#[derive(Default)]
pub(crate) struct MemoryParts {
    pub parts: Vec<(Option<String>, Vec<u8>)>,
}

impl PartSink for MemoryParts {
    fn begin(&mut self, content_type: Option<&str>) -> std::io::Result<()> {
        self.parts.push((content_type.map(str::to_owned), Vec::new()));
        Ok(())
    }
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Some((_, bytes)) = self.parts.last_mut() {
            bytes.extend_from_slice(chunk);
        }
        Ok(())
    }
    fn end(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Builds a `multipart/related; type="application/dicom"` body from files, streamed.
pub struct MultipartWriter {
    boundary: String,
    files: Vec<(PathBuf, u64)>,
}

impl MultipartWriter {
    /// `files` with their sizes (the body's length is computed from them).
    pub fn new(files: Vec<(PathBuf, u64)>) -> Self {
        Self { boundary: format!("lightbox-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)), files }
    }

    pub fn content_type(&self) -> String {
        format!("multipart/related; type=\"application/dicom\"; boundary={}", self.boundary)
    }

    fn part_head(&self) -> String {
        format!("--{}\r\nContent-Type: application/dicom\r\n\r\n", self.boundary)
    }

    fn closing(&self) -> String {
        format!("--{}--\r\n", self.boundary)
    }

    /// Exact length of the body in bytes.
    pub fn len(&self) -> u64 {
        let per_part = self.part_head().len() as u64 + 2;
        self.files.iter().map(|(_, size)| size + per_part).sum::<u64>() + self.closing().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The body as a stream of chunks: heads, file contents (read 256 KiB at a time), closing.
    pub fn stream(&self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let head = Bytes::from(self.part_head());
        let closing = Bytes::from(self.closing());
        let parts: Vec<ByteStream> = self
            .files
            .iter()
            .map(|(path, _)| {
                let path = path.clone();
                let head = head.clone();
                let file = futures_util::stream::once(async move {
                    tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
                })
                .map(|opened| match opened {
                    Ok(file) => tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).boxed(),
                    Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                })
                .flatten();
                futures_util::stream::once(async move { Ok(head) })
                    .chain(file)
                    .chain(futures_util::stream::once(async { Ok(Bytes::from_static(b"\r\n")) }))
                    .boxed()
            })
            .collect();
        futures_util::stream::iter(parts).flatten().chain(futures_util::stream::once(async move { Ok(closing) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_quoted_unquoted_and_with_semicolons_in_type() {
        assert_eq!(boundary_of("multipart/related; boundary=abc").as_deref(), Some("abc"));
        assert_eq!(
            boundary_of(r#"multipart/related; type="application/dicom; transfer-syntax=*"; boundary="a b;c""#)
                .as_deref(),
            Some("a b;c")
        );
        assert_eq!(boundary_of("Multipart/Related;Boundary=x").as_deref(), Some("x"));
        assert_eq!(boundary_of("application/json; boundary=abc"), None);
        assert_eq!(boundary_of("multipart/related"), None);
        assert_eq!(boundary_of("multipart/related; boundary="), None);
    }

    #[tokio::test]
    async fn written_body_parses_back_part_by_part_with_its_announced_length() -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut files = Vec::new();
        for (i, content) in [&b"first"[..], &[0u8, 13, 10, 45, 45, 255][..], &vec![7u8; 600_000][..]].iter().enumerate()
        {
            let path = dir.path().join(format!("{i}.dcm"));
            std::fs::write(&path, content).map_err(|e| e.to_string())?;
            files.push((path, content.len() as u64));
        }
        let writer = MultipartWriter::new(files);
        let chunks: Vec<Result<Bytes, std::io::Error>> = writer.stream().collect().await;
        let body: Vec<u8> =
            chunks.into_iter().map(|c| c.map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?.concat();
        assert_eq!(body.len() as u64, writer.len());
        let boundary = boundary_of(&writer.content_type()).ok_or("no boundary")?;
        // Feed it back in small, odd-sized chunks, as a network would.
        let pieces: Vec<Result<Bytes, std::io::Error>> =
            body.chunks(997).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut parts = MemoryParts::default();
        let n = RelatedParts::new(futures_util::stream::iter(pieces), &boundary).copy_to(&mut parts).await?;
        assert_eq!(n, 3);
        assert_eq!(parts.parts[0], (Some("application/dicom".to_owned()), b"first".to_vec()));
        assert_eq!(parts.parts[1].1, [0u8, 13, 10, 45, 45, 255]);
        assert_eq!(parts.parts[2].1.len(), 600_000);
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_file_fails_the_stream_naming_it() {
        let writer = MultipartWriter::new(vec![(PathBuf::from("/nonexistent/x.dcm"), 3)]);
        let chunks: Vec<Result<Bytes, std::io::Error>> = writer.stream().collect().await;
        let error = chunks.into_iter().find_map(Result::err).map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("/nonexistent/x.dcm"), "{error}");
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_not_a_short_success() {
        let body = b"--b\r\nContent-Type: application/dicom\r\n\r\nabcdef".to_vec();
        let mut parts = MemoryParts::default();
        let result = RelatedParts::new(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(body))]), "b")
            .copy_to(&mut parts)
            .await;
        assert!(result.is_err(), "{result:?}");
    }
}
