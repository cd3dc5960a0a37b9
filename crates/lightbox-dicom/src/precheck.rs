//! A walk over a file's element headers before dicom-rs parses it: every declared length must fit
//! in the bytes that remain.
//!
//! dicom-rs reserves an element's declared length before reading its bytes, so a few hundred
//! bytes can make it allocate gigabytes (found by fuzzing; pydicom's `UN_sequence.dcm` does it).
//! This walk reads only tags and lengths and seeks over values, so it costs a few reads per
//! element and never allocates by what the file claims.

use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// Whether the standard dictionary calls `tag` a sequence (dicom-rs then parses its value as
/// one, even when the file says UN or is implicit VR).
fn dictionary_sequence(tag: (u16, u16)) -> bool {
    StandardDataDictionary.by_tag(Tag(tag.0, tag.1)).is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: (u16, u16) = (0xFFFE, 0xE000);
const ITEM_END: (u16, u16) = (0xFFFE, 0xE00D);
const SEQUENCE_END: (u16, u16) = (0xFFFE, 0xE0DD);
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const MAX_DEPTH: u32 = 32;

/// A byte source that can jump forward cheaply: a buffered file keeps its buffer for short
/// skips (`seek_relative`), an in-memory cursor just moves.
pub(crate) trait Source: Read {
    fn jump_to(&mut self, from: u64, to: u64) -> std::io::Result<()>;
}

impl<R: Read + Seek> Source for BufReader<R> {
    fn jump_to(&mut self, from: u64, to: u64) -> std::io::Result<()> {
        match i64::try_from(to).ok().zip(i64::try_from(from).ok()) {
            Some((to, from)) => self.seek_relative(to - from),
            None => self.seek(SeekFrom::Start(to)).map(|_| ()),
        }
    }
}

impl<T: AsRef<[u8]>> Source for Cursor<T> {
    fn jump_to(&mut self, _from: u64, to: u64) -> std::io::Result<()> {
        self.set_position(to);
        Ok(())
    }
}

/// `(group, element)`.
type TagPair = (u16, u16);

#[derive(Clone, Copy)]
struct Encoding {
    implicit: bool,
    big_endian: bool,
}

struct Walker<R> {
    source: R,
    len: u64,
    pos: u64,
    whole_file: bool,
    /// Where the top-level native (defined-length) pixel data's value lies in the file.
    pixel_data: Option<PixelSpan>,
}

/// Byte range of a file's native pixel data value, found by the length walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PixelSpan {
    pub offset: u64,
    pub length: u64,
}

/// `Ok` when every length fits; `Err` says which element claims too much. Files that are not
/// Part 10 or use a deflated data set are left to dicom-rs.
/// With `whole_file` false the walk stops at the top-level pixel data, where a header scan stops.
///
/// Also returns where the top-level pixel data value lies when it is native (defined length) in
/// a little-endian, non-deflated data set: the volume loader reads it from there directly.
pub(crate) fn check_lengths<R: Source>(mut source: R, len: u64, whole_file: bool) -> Result<Option<PixelSpan>, String> {
    let mut head = [0u8; 132];
    if len < 132 || source.read_exact(&mut head).is_err() || &head[128..132] != b"DICM" {
        return Ok(None);
    }
    let mut w = Walker { source, len, pos: 132, whole_file, pixel_data: None };
    let meta = Encoding { implicit: false, big_endian: false };
    let mut transfer_syntax = String::new();
    // File meta group: explicit VR little endian. Like dicom-rs, trust its group length
    // (0002,0000) for where it ends; without one, it ends at the first other group.
    let mut meta_end = None;
    while meta_end.is_none_or(|end| w.pos + 8 <= end) {
        let Some((tag, length)) = w.peek_group(0x0002, meta, meta_end.is_some())? else { break };
        w.fits(tag, length, meta_end.unwrap_or(w.len))?;
        if tag == (0x0002, 0x0000) && length == 4 && meta_end.is_none() {
            let group_length = w.u32(meta)?;
            meta_end = Some(w.pos + u64::from(group_length));
        } else if tag == (0x0002, 0x0010) && length < 128 {
            let mut uid = vec![0u8; length as usize];
            w.read(&mut uid)?;
            transfer_syntax = String::from_utf8_lossy(&uid).trim_end_matches(['\0', ' ']).to_owned();
        } else {
            w.skip(length)?;
        }
    }
    if let Some(end) = meta_end {
        if end > w.len {
            return Err(format!("file meta group claims {} bytes, the file has {}", end - 132, w.len - 132));
        }
        w.goto(end)?;
    }
    let data_set = match transfer_syntax.as_str() {
        "" => return Ok(None), // no transfer syntax: dicom-rs says so better than a guess would
        "1.2.840.10008.1.2" => Encoding { implicit: true, big_endian: false },
        "1.2.840.10008.1.2.2" => Encoding { implicit: false, big_endian: true },
        "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => {
            // Deflated data set: inflate it (no further than dicom-rs's parse budget allows)
            // and walk the result as explicit VR little endian.
            let budget = len.saturating_mul(64).saturating_add(16 << 20);
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(w.source.by_ref().take(len - w.pos))
                .take(budget + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("deflated data set does not inflate: {e}"))?;
            if inflated.len() as u64 > budget {
                return Err(format!("deflated data set inflates past {budget} bytes"));
            }
            let inflated_len = inflated.len() as u64;
            let mut inner =
                Walker { source: Cursor::new(inflated), len: inflated_len, pos: 0, whole_file, pixel_data: None };
            return inner
                .data_set(inflated_len, Encoding { implicit: false, big_endian: false }, 0, true)
                .map(|()| None);
        }
        _ => Encoding { implicit: false, big_endian: false },
    };
    w.data_set(w.len, data_set, 0, true)?;
    Ok(if data_set.big_endian { None } else { w.pixel_data })
}

impl<R: Source> Walker<R> {
    fn goto(&mut self, to: u64) -> Result<(), String> {
        self.source.jump_to(self.pos, to).map_err(|e| e.to_string())?;
        self.pos = to;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.source.read_exact(buf).map_err(|_| format!("file ends inside an element header at byte {}", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip(&mut self, n: u32) -> Result<(), String> {
        self.goto(self.pos + u64::from(n))
    }

    fn u16(&mut self, e: Encoding) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(if e.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    }

    fn u32(&mut self, e: Encoding) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(if e.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    /// Reads the next element header if it belongs to `group` (or, with `any_group`, whatever it
    /// is): tag and length. Rewinds otherwise.
    fn peek_group(&mut self, group: u16, e: Encoding, any_group: bool) -> Result<Option<(TagPair, u32)>, String> {
        if self.pos + 8 > self.len {
            return Ok(None);
        }
        let start = self.pos;
        let g = self.u16(e)?;
        if g != group && !any_group {
            self.goto(start)?;
            return Ok(None);
        }
        let el = self.u16(e)?;
        let (_, length) = self.vr_and_length((g, el), e)?;
        Ok(Some(((g, el), length)))
    }

    fn vr_and_length(&mut self, tag: (u16, u16), e: Encoding) -> Result<([u8; 2], u32), String> {
        if e.implicit || tag.0 == 0xFFFE {
            return Ok((*b"  ", self.u32(e)?));
        }
        let mut vr = [0u8; 2];
        self.read(&mut vr)?;
        let long = matches!(
            &vr,
            b"OB" | b"OD" | b"OF" | b"OL" | b"OV" | b"OW" | b"SQ" | b"SV" | b"UC" | b"UN" | b"UR" | b"UT" | b"UV"
        );
        if long {
            self.skip(2)?;
            Ok((vr, self.u32(e)?))
        } else {
            Ok((vr, u32::from(self.u16(e)?)))
        }
    }

    fn fits(&self, tag: (u16, u16), length: u32, end: u64) -> Result<(), String> {
        if length != UNDEFINED && self.pos + u64::from(length) > end {
            return Err(format!(
                "element ({:04X},{:04X}) declares {length} bytes where {} remain",
                tag.0,
                tag.1,
                end.saturating_sub(self.pos)
            ));
        }
        Ok(())
    }

    /// Elements until `end` (defined length) or an item delimiter (undefined length).
    fn data_set(&mut self, end: u64, e: Encoding, depth: u32, top: bool) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested deeper than {MAX_DEPTH}"));
        }
        while self.pos + 8 <= end {
            let tag = (self.u16(e)?, self.u16(e)?);
            let (vr, length) = self.vr_and_length(tag, e)?;
            if tag == ITEM_END || tag == SEQUENCE_END {
                return Ok(());
            }
            self.fits(tag, length, end)?;
            let sequence = &vr == b"SQ"
                || (&vr == b"UN" && (length == UNDEFINED || dictionary_sequence(tag)))
                || (e.implicit && (length == UNDEFINED || dictionary_sequence(tag)));
            if tag == PIXEL_DATA && top && length != UNDEFINED {
                // Native pixels: remember where they are and walk on over what follows them
                // (seeks only), so a broken tail is found by the header scan too — the volume
                // loader reads these pixels directly and never parses the rest.
                self.pixel_data = Some(PixelSpan { offset: self.pos, length: u64::from(length) });
                self.skip(length)?;
                continue;
            }
            if tag == PIXEL_DATA && top && !self.whole_file {
                return Ok(()); // the header scan stops at encapsulated pixel data
            }
            if sequence || (tag == PIXEL_DATA && length == UNDEFINED) {
                // UN of undefined length holds an implicit little-endian sequence.
                let inner = if &vr == b"UN" { Encoding { implicit: true, big_endian: false } } else { e };
                let item_end = if length == UNDEFINED { end } else { self.pos + u64::from(length) };
                self.items(item_end, inner, depth + 1, tag == PIXEL_DATA)?;
                if length != UNDEFINED {
                    self.goto(item_end)?;
                }
            } else {
                self.skip(length)?;
            }
        }
        Ok(())
    }

    /// Items of a sequence (or, with `fragments`, of encapsulated pixel data) until `end` or the
    /// sequence delimiter.
    fn items(&mut self, end: u64, e: Encoding, depth: u32, fragments: bool) -> Result<(), String> {
        while self.pos + 8 <= end {
            let tag = (self.u16(e)?, self.u16(e)?);
            let length = self.u32(e)?;
            if tag == SEQUENCE_END {
                return Ok(());
            }
            if tag != ITEM {
                return Err(format!("expected an item in a sequence, found ({:04X},{:04X})", tag.0, tag.1));
            }
            self.fits(tag, length, end)?;
            if fragments {
                if length == UNDEFINED {
                    return Err("pixel data fragment of undefined length".into());
                }
                self.skip(length)?;
            } else if length == UNDEFINED {
                self.data_set(end, e, depth, false)?;
            } else {
                let item_end = self.pos + u64::from(length);
                self.data_set(item_end, e, depth, false)?;
                self.goto(item_end)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A Part 10 header with explicit VR little endian, then `body`.
    fn file(body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let ts = b"1.2.840.10008.1.2.1\0";
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I', ts.len() as u8, 0]);
        f.extend_from_slice(ts);
        f.extend_from_slice(body);
        f
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        check_lengths(Cursor::new(bytes), bytes.len() as u64, true).map(|_| ())
    }

    #[test]
    fn finds_native_pixel_data_but_not_encapsulated() -> Result<(), String> {
        // (0028,0010) Rows US 1, then (7FE0,0010) OW of 4 bytes.
        let mut body = vec![0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0, 1, 0];
        body.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4]);
        let native = file(&body);
        let span = check_lengths(Cursor::new(&native), native.len() as u64, false)?.ok_or("no span")?;
        assert_eq!(span.length, 4);
        assert_eq!(&native[span.offset as usize..span.offset as usize + 4], &[1, 2, 3, 4]);
        let mut encapsulated = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        encapsulated.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0, 0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let encapsulated = file(&encapsulated);
        assert_eq!(check_lengths(Cursor::new(&encapsulated), encapsulated.len() as u64, true)?, None);
        Ok(())
    }

    #[test]
    fn lengths_that_fit_pass() {
        // (0010,0010) PN "Doe^J " then a defined-length sequence holding one empty item.
        let mut body = vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 6, 0];
        body.extend_from_slice(b"Doe^J ");
        body.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 8, 0, 0, 0]);
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        assert_eq!(check(&file(&body)), Ok(()));
    }

    #[test]
    fn a_length_beyond_the_file_is_named() {
        let body = [0x08, 0x00, 0x08, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F, 1, 2, 3];
        let err = check(&file(&body)).expect_err("too long");
        assert_eq!(err, "element (0008,0008) declares 2147483647 bytes where 3 remain");
    }

    #[test]
    fn an_item_longer_than_its_sequence_is_named() {
        let mut body = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 8, 0, 0, 0];
        body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0x00, 0x10, 0, 0]);
        let err = check(&file(&body)).expect_err("item too long");
        assert_eq!(err, "element (FFFE,E000) declares 4096 bytes where 0 remain");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut body = Vec::new();
        for _ in 0..40 {
            body.extend_from_slice(&[0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            body.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let err = check(&file(&body)).expect_err("too deep");
        assert_eq!(err, "sequences nested deeper than 32");
    }
}
