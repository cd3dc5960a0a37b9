//! DICOMweb response parsing: the Content-Type header (boundary, parameters), a multipart/related
//! body fed in network-sized chunks, DICOM JSON (QIDO-RS, metadata) and STOW-RS responses.
//! Input: first line = Content-Type, rest = body. Nothing may panic or run away.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lightbox_pacs::{DicomJson, PartSink, RelatedParts, StowResult, boundary_of};

#[derive(Default)]
struct Count {
    parts: usize,
    bytes: usize,
}

impl PartSink for Count {
    fn begin(&mut self, _content_type: Option<&str>) -> std::io::Result<()> {
        self.parts += 1;
        Ok(())
    }
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bytes += chunk.len();
        Ok(())
    }
    fn end(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let header = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    if let Some(boundary) = boundary_of(&header) {
        let chunk = 1 + (body.len() % 13);
        let pieces: Vec<Result<Bytes, std::io::Error>> = body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut count = Count::default();
        let parsed = futures::executor::block_on(RelatedParts::new(futures::stream::iter(pieces), &boundary).copy_to(&mut count));
        if let Ok(parts) = parsed {
            assert!(parts <= count.parts && count.bytes <= body.len());
        }
    }
    let _ = DicomJson::parse_array(body).map(|sets| {
        for set in sets {
            let _ = (set.string(0x0010_0010), set.int(0x0020_1208), set.sequence(0x0008_1199), set.strings(0x0008_0061));
        }
    });
    let _ = StowResult::from_response_body(body);
});
