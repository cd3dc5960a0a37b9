//! A minimal reader of a DICOM file's top-level elements, for comparing what a PACS sent back with
//! what went in: the transfer syntax, a few values, and the raw bytes of the Pixel Data value
//! (native pixels, or the encapsulated fragments as they are). Independent of the project's own
//! DICOM code on purpose.

use std::ops::Range;
use std::path::Path;

use anyhow::{Context, bail};

pub const TRANSFER_SYNTAX_UID: u32 = 0x0002_0010;
pub const IMPLEMENTATION_CLASS_UID: u32 = 0x0002_0012;
pub const SOP_CLASS_UID: u32 = 0x0008_0016;
pub const SOP_INSTANCE_UID: u32 = 0x0008_0018;
pub const PATIENT_NAME: u32 = 0x0010_0010;
pub const PATIENT_ID: u32 = 0x0010_0020;
pub const STUDY_INSTANCE_UID: u32 = 0x0020_000D;
pub const SERIES_INSTANCE_UID: u32 = 0x0020_000E;
pub const ROWS: u32 = 0x0028_0010;
pub const COLUMNS: u32 = 0x0028_0011;
pub const BITS_ALLOCATED: u32 = 0x0028_0100;
pub const PIXEL_DATA: u32 = 0x7FE0_0010;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;

/// One top-level element: where its value lies in the file.
#[derive(Clone, Debug)]
struct Element {
    tag: u32,
    value: Range<usize>,
}

/// A parsed DICOM Part 10 file.
pub struct DicomFile {
    bytes: Vec<u8>,
    big_endian: bool,
    /// Where the dataset starts (after the meta group).
    dataset_offset: usize,
    meta: Vec<Element>,
    elements: Vec<Element>,
}

impl DicomFile {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(bytes).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(bytes: Vec<u8>) -> anyhow::Result<Self> {
        if bytes.get(128..132) != Some(b"DICM") {
            bail!("no DICM marker at offset 128");
        }
        let mut meta = Vec::new();
        let mut pos = 132;
        while pos + 4 <= bytes.len() && read_u16(&bytes, pos, false)? == 0x0002 {
            let (element, next) = read_element(&bytes, pos, true, false)?;
            meta.push(element);
            pos = next;
        }
        let mut file = Self { bytes, big_endian: false, dataset_offset: pos, meta, elements: Vec::new() };
        let ts = file.transfer_syntax().context("no transfer syntax in the meta header")?;
        let (explicit, big) = match ts.as_str() {
            "1.2.840.10008.1.2" => (false, false),
            "1.2.840.10008.1.2.2" => (true, true),
            "1.2.840.10008.1.2.1.99" => bail!("deflated datasets are not supported here"),
            _ => (true, false),
        };
        file.big_endian = big;
        while pos < file.bytes.len() {
            let (element, next) = read_element(&file.bytes, pos, explicit, big)?;
            file.elements.push(element);
            pos = next;
        }
        Ok(file)
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The dataset after the meta header, as encoded.
    pub fn dataset(&self) -> &[u8] {
        &self.bytes[self.dataset_offset..]
    }

    pub fn transfer_syntax(&self) -> Option<String> {
        self.meta_string(TRANSFER_SYNTAX_UID)
    }

    /// A text value of the file meta group (0002,xxxx).
    pub fn meta_string(&self, tag: u32) -> Option<String> {
        let element = self.meta.iter().find(|e| e.tag == tag)?;
        Some(trim(&self.bytes[element.value.clone()]))
    }

    /// The raw value of a top-level dataset element.
    pub fn value(&self, tag: u32) -> Option<&[u8]> {
        self.elements.iter().find(|e| e.tag == tag).map(|e| &self.bytes[e.value.clone()])
    }

    /// A text value without its padding.
    pub fn string(&self, tag: u32) -> Option<String> {
        self.value(tag).map(trim)
    }

    pub fn u16(&self, tag: u32) -> Option<u16> {
        let v = self.value(tag)?;
        let b: [u8; 2] = v.get(..2)?.try_into().ok()?;
        Some(if self.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    }

    /// The Pixel Data value as stored: native pixels, or the encapsulated item stream (offset
    /// table, fragments and the sequence delimiter).
    pub fn pixel_data(&self) -> anyhow::Result<&[u8]> {
        self.value(PIXEL_DATA).context("no Pixel Data")
    }

    /// The whole file with its native Pixel Data replaced by `pixels` (the same length).
    pub fn with_pixel_data(&self, pixels: &[u8]) -> anyhow::Result<Vec<u8>> {
        let element = self.elements.iter().find(|e| e.tag == PIXEL_DATA).context("no Pixel Data")?;
        if element.value.len() != pixels.len() {
            bail!("{} bytes of pixels for a Pixel Data of {}", pixels.len(), element.value.len());
        }
        let mut bytes = self.bytes.clone();
        bytes[element.value.clone()].copy_from_slice(pixels);
        Ok(bytes)
    }

    pub fn sop_instance_uid(&self) -> anyhow::Result<String> {
        self.string(SOP_INSTANCE_UID).context("no SOP Instance UID")
    }
}

fn trim(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches(['\0', ' ']).trim_start().to_owned()
}

fn read_u16(bytes: &[u8], pos: usize, big: bool) -> anyhow::Result<u16> {
    let b: [u8; 2] = bytes.get(pos..pos + 2).context("truncated")?.try_into()?;
    Ok(if big { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
}

fn read_u32(bytes: &[u8], pos: usize, big: bool) -> anyhow::Result<u32> {
    let b: [u8; 4] = bytes.get(pos..pos + 4).context("truncated")?.try_into()?;
    Ok(if big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
}

fn read_tag(bytes: &[u8], pos: usize, big: bool) -> anyhow::Result<u32> {
    Ok((u32::from(read_u16(bytes, pos, big)?) << 16) | u32::from(read_u16(bytes, pos + 2, big)?))
}

/// Reads the element at `pos`; returns it and where the next one starts.
fn read_element(bytes: &[u8], pos: usize, explicit: bool, big: bool) -> anyhow::Result<(Element, usize)> {
    let tag = read_tag(bytes, pos, big)?;
    let (header, length, nested_explicit) = if tag >> 16 == 0xFFFE {
        (8, read_u32(bytes, pos + 4, big)?, explicit)
    } else if explicit {
        let vr = bytes.get(pos + 4..pos + 6).context("truncated")?;
        if [&b"OB"[..], b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"]
            .contains(&vr)
        {
            // The content of an undefined-length UN is implicit VR little endian.
            (12, read_u32(bytes, pos + 8, big)?, vr != b"UN")
        } else {
            (8, u32::from(read_u16(bytes, pos + 6, big)?), explicit)
        }
    } else {
        (8, read_u32(bytes, pos + 4, big)?, false)
    };
    let start = pos + header;
    let end =
        if length == UNDEFINED { skip_items(bytes, start, nested_explicit, big)? } else { start + length as usize };
    if end > bytes.len() {
        bail!("element ({:04X},{:04X}) at {pos} runs past the end of the file", tag >> 16, tag & 0xFFFF);
    }
    Ok((Element { tag, value: start..end }, end))
}

/// Skips the items of an undefined-length sequence (or encapsulated pixel data) starting at
/// `pos`; returns the offset after its sequence delimiter.
fn skip_items(bytes: &[u8], mut pos: usize, explicit: bool, big: bool) -> anyhow::Result<usize> {
    loop {
        let tag = read_tag(bytes, pos, big)?;
        let length = read_u32(bytes, pos + 4, big)?;
        match tag {
            SEQUENCE_END => return Ok(pos + 8),
            ITEM if length == UNDEFINED => {
                pos += 8;
                loop {
                    if read_tag(bytes, pos, big)? == ITEM_END {
                        pos += 8;
                        break;
                    }
                    pos = read_element(bytes, pos, explicit, big)?.1;
                }
            }
            ITEM => pos += 8 + length as usize,
            other => bail!("unexpected ({:04X},{:04X}) in a sequence at {pos}", other >> 16, other & 0xFFFF),
        }
        if pos > bytes.len() {
            bail!("sequence runs past the end of the file");
        }
    }
}
