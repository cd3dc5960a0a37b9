//! From instances to display sets to volumes.
//!
//! Every instance is cut into frames (one per single-frame instance, one per frame of an enhanced
//! multi-frame instance, one per tile of a Siemens mosaic). Frames that differ in what they show
//! (orientation, size, echo, b-value, image type) go to different display sets. Inside a display
//! set, frames are sorted by the projection of their position on the slice normal, never by
//! instance number or file name; a position that repeats makes time points.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use dicom_pixeldata::PixelDecoder;
use lightbox_core::{Affine3, DisplaySetInfo, SeriesInfo, StoredVolume, StoredVoxels, Volume};
use rayon::prelude::*;

use crate::DicomError;
use crate::header::{FrameMeta, InstanceHeader, NativePixels, Skip, int, open, open_header};

/// Something odd about a series that did not stop it from loading. Shown to the user.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadWarning {
    /// Several files carry the same SOP Instance UID; the first (by path) was used.
    DuplicateInstances { files: usize, instances: usize },
    /// No Image Position/Orientation (Patient): slices are in instance-number order, 1 mm apart.
    NoGeometry,
    /// Slice gaps differ; the volume uses the mean gap and is not resampled.
    UnevenSpacing { min_mm: f64, max_mm: f64 },
    /// A gap between slices is much larger than the others: slices are probably missing.
    MissingSlices { largest_gap_mm: f64, usual_gap_mm: f64 },
    /// Slices are stacked off the slice normal (CT gantry tilt); the affine is sheared, the
    /// voxels are not resampled.
    GantryTilt { degrees: f64 },
    /// Positions do not all repeat equally often; only complete time points are kept.
    UnequalTimePoints { positions: usize, frames: usize },
    /// Siemens mosaic without NumberOfImagesInMosaic: shown as stored.
    MosaicNotUnpacked,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateInstances { files, instances } => {
                write!(f, "{files} files hold only {instances} distinct instances; duplicates ignored")
            }
            Self::NoGeometry => f.write_str("no image position/orientation; slices in instance order, 1 mm apart"),
            Self::UnevenSpacing { min_mm, max_mm } => {
                write!(f, "uneven slice spacing: {min_mm:.3} to {max_mm:.3} mm (not resampled)")
            }
            Self::MissingSlices { largest_gap_mm, usual_gap_mm } => {
                write!(f, "slices missing? a gap of {largest_gap_mm:.2} mm where slices are {usual_gap_mm:.2} mm apart")
            }
            Self::GantryTilt { degrees } => write!(f, "gantry tilt of {degrees:.2} degrees (sheared, not resampled)"),
            Self::UnequalTimePoints { positions, frames } => {
                write!(f, "{frames} frames over {positions} positions do not form whole time points")
            }
            Self::MosaicNotUnpacked => f.write_str("Siemens mosaic without NumberOfImagesInMosaic, shown as stored"),
        }
    }
}

/// Where one slice's pixels come from.
#[derive(Clone, Debug)]
struct FrameRef {
    /// Index into [`DisplaySet::instances`].
    instance: usize,
    /// Frame within the file.
    frame: u32,
    /// Mosaic tile `(tiles per side, index)`.
    tile: Option<(u32, u32)>,
}

/// A stack of frames that forms one volume per time point.
#[derive(Clone, Debug)]
pub struct DisplaySet {
    /// What sets it apart from the other display sets of its series ("" when it is the only one).
    pub label: String,
    pub columns: u32,
    pub rows: u32,
    pub slices: u32,
    pub time_points: u32,
    /// Voxel to LPS mm, the same for every time point.
    pub patient_from_voxel: Affine3,
    pub warnings: Vec<LoadWarning>,
    instances: Arc<Vec<InstanceHeader>>,
    /// `time_points * slices` frames, time point by time point, slices in order along the normal.
    frames: Vec<FrameRef>,
}

impl DisplaySet {
    pub fn info(&self) -> DisplaySetInfo {
        DisplaySetInfo {
            label: self.label.clone(),
            columns: self.columns,
            rows: self.rows,
            slices: self.slices,
            time_points: self.time_points,
        }
    }

    /// Decodes time point `t` (rescale slope/intercept applied) into a volume. Uncompressed
    /// instances (single- or multi-frame, per-frame rescale included) are read straight from
    /// the file, each slice into its place in the volume; the others are decoded by
    /// dicom-pixeldata, each file once. Slices and files in parallel.
    pub fn load(&self, t: u32) -> Result<Volume<f32>, DicomError> {
        let wanted = self.time_point(t)?;
        if wanted.iter().all(|f| self.instances[f.instance].native.is_some()) {
            return self.load_native(wanted);
        }
        self.load_decoded(wanted)
    }

    /// Time point `t` in the type the scanner stored (16-bit integers for most MR) with its
    /// rescale, when every slice is uncompressed with one shared rescale; otherwise the real
    /// values as f32 (slope 1, intercept 0). `to_f32()` of the result equals [`Self::load`].
    pub fn load_stored(&self, t: u32) -> Result<StoredVolume, DicomError> {
        let wanted = self.time_point(t)?;
        let natives: Vec<NativePixels> = wanted.iter().filter_map(|f| self.native_frame(f)).collect();
        let shared = natives.first().copied().filter(|first| {
            natives.len() == wanted.len()
                && natives.iter().all(|n| {
                    n.bits_allocated == first.bits_allocated
                        && n.signed == first.signed
                        && n.slope == first.slope
                        && n.intercept == first.intercept
                })
        });
        let Some(first) = shared.filter(|n| n.bits_allocated == 16 || !n.signed) else {
            return Ok(self.load(t)?.into());
        };
        let (columns, rows) = (self.columns as usize, self.rows as usize);
        let count = columns * rows * wanted.len();
        let read = |z: usize| {
            let f = &wanted[z];
            let h = &self.instances[f.instance];
            let native = natives[z];
            read_native_raw(h, &native, f.tile, columns, rows).map(|raw| (native, raw))
        };
        /// Every slice's samples, converted to `T`, each slice read and filled in parallel.
        fn fill<T: Copy + Default + Send>(
            count: usize,
            slice_len: usize,
            read: &(impl Fn(usize) -> Result<(NativePixels, Vec<u8>), DicomError> + Sync),
            convert: fn(i64) -> T,
        ) -> Result<Vec<T>, DicomError> {
            let mut v = vec![T::default(); count];
            v.par_chunks_mut(slice_len).enumerate().try_for_each(|(z, out)| {
                let (native, raw) = read(z)?;
                for (o, s) in out.iter_mut().zip(samples(&native, &raw)) {
                    *o = convert(s);
                }
                Ok::<_, DicomError>(())
            })?;
            Ok(v)
        }
        let slice_len = columns * rows;
        // Samples are already masked to Bits Stored and sign-extended: they fit the type.
        let voxels = match (first.bits_allocated, first.signed) {
            (16, true) => StoredVoxels::I16(fill(count, slice_len, &read, |s| s as i16)?),
            (16, false) => StoredVoxels::U16(fill(count, slice_len, &read, |s| s as u16)?),
            _ => StoredVoxels::U8(fill(count, slice_len, &read, |s| s as u8)?),
        };
        StoredVolume::new([columns, rows, wanted.len()], voxels, self.patient_from_voxel, first.slope, first.intercept)
            .map_err(|e| DicomError::Series {
                series: self.instances[0].record.series_uid.clone(),
                reason: e.to_string(),
            })
    }

    /// [`Self::load`] through dicom-pixeldata for every file, whatever its encoding. The
    /// reference the direct path is tested against.
    #[doc(hidden)]
    pub fn load_reference(&self, t: u32) -> Result<Volume<f32>, DicomError> {
        self.load_decoded(self.time_point(t)?)
    }

    fn time_point(&self, t: u32) -> Result<&[FrameRef], DicomError> {
        let slices = self.slices as usize;
        self.frames.get(t as usize * slices..(t as usize + 1) * slices).ok_or_else(|| DicomError::Series {
            series: self.instances[0].record.series_uid.clone(),
            reason: format!("time point {t} is outside the display set's {}", self.time_points),
        })
    }

    fn volume(&self, voxels: Vec<f32>) -> Result<Volume<f32>, DicomError> {
        Volume::new([self.columns as usize, self.rows as usize, self.slices as usize], voxels, self.patient_from_voxel)
            .map_err(|e| DicomError::Series {
                series: self.instances[0].record.series_uid.clone(),
                reason: e.to_string(),
            })
    }

    /// Each time point's time in seconds after the first: from Trigger Time where it tells the
    /// time points apart (GE and Philips dynamic series), else Acquisition Time, else Content
    /// Time of the time point's first slice. `None` when the headers say nothing usable.
    pub fn phase_times_s(&self) -> Option<Vec<f64>> {
        let firsts: Vec<&InstanceHeader> = (0..self.time_points)
            .map(|t| self.time_point(t).ok().and_then(|f| f.first()).map(|f| &self.instances[f.instance]))
            .collect::<Option<_>>()?;
        let objects: Vec<_> = firsts.iter().map(|h| crate::header::open(&h.path, false).ok()).collect::<Option<_>>()?;
        let read = |tag: dicom_core::Tag, parse: fn(&str) -> Option<f64>| -> Option<Vec<f64>> {
            let values: Vec<f64> =
                objects.iter().map(|o| crate::header::text(o, tag).and_then(|s| parse(&s))).collect::<Option<_>>()?;
            let distinct = values.windows(2).all(|w| w[1] > w[0]);
            (distinct || values.len() == 1).then(|| values.iter().map(|v| v - values[0]).collect())
        };
        read(dicom_dictionary_std::tags::TRIGGER_TIME, |s| s.trim().parse::<f64>().ok().map(|ms| ms / 1000.0))
            .or_else(|| read(dicom_dictionary_std::tags::ACQUISITION_TIME, tm_seconds))
            .or_else(|| read(dicom_dictionary_std::tags::CONTENT_TIME, tm_seconds))
    }

    /// The diffusion b-value of the display set (s/mm²), when its frames carry one.
    pub fn b_value(&self) -> Option<f64> {
        let f = self.frames.first()?;
        self.instances[f.instance].frame_meta.get(f.frame as usize).and_then(|m| m.b_value)
    }

    /// The files behind time point `t`, slice by slice (a multi-frame file once).
    pub fn source_paths(&self, t: u32) -> Result<Vec<std::path::PathBuf>, DicomError> {
        let mut paths: Vec<std::path::PathBuf> = Vec::new();
        for f in self.time_point(t)? {
            let path = &self.instances[f.instance].path;
            if paths.last() != Some(path) {
                paths.push(path.clone());
            }
        }
        Ok(paths)
    }

    /// The instance (and frame, for multi-frame sources) behind each slice of time point `t`,
    /// with the slice's own Image Position (Patient) when the source gives one (not for mosaic
    /// tiles, whose positions come from the grid).
    pub(crate) fn source_slices(&self, t: u32) -> Result<Vec<SourceSlice<'_>>, DicomError> {
        Ok(self
            .time_point(t)?
            .iter()
            .map(|f| {
                let h = &self.instances[f.instance];
                let position =
                    if f.tile.is_some() { None } else { h.frame_meta.get(f.frame as usize).and_then(|m| m.position) };
                SourceSlice { header: h, frame_number: (h.frames > 1).then_some(f.frame + 1), position }
            })
            .collect())
    }

    /// How to read frame `f` directly: its file offset and its own rescale.
    fn native_frame(&self, f: &FrameRef) -> Option<NativePixels> {
        let h = &self.instances[f.instance];
        let mut native = h.native?;
        let frame_bytes = u64::from(h.rows) * u64::from(h.columns) * u64::from(native.bits_allocated / 8);
        native.offset += u64::from(f.frame) * frame_bytes;
        if let Some((slope, intercept)) = h.frame_meta.get(f.frame as usize).and_then(|m| m.rescale) {
            native.slope = slope;
            native.intercept = intercept;
        }
        Some(native)
    }

    /// Reads each slice's pixels from its file into its place in the volume.
    fn load_native(&self, wanted: &[FrameRef]) -> Result<Volume<f32>, DicomError> {
        let (columns, rows) = (self.columns as usize, self.rows as usize);
        let mut voxels = vec![0f32; columns * rows * wanted.len()];
        voxels.par_chunks_mut(columns * rows).zip(wanted.par_iter()).try_for_each(|(slice, f)| {
            let h = &self.instances[f.instance];
            match self.native_frame(f) {
                Some(native) => read_native(h, &native, f.tile, columns, rows, slice),
                None => Err(DicomError::Decode { path: h.path.clone(), source: "not native pixel data".into() }),
            }
        })?;
        self.volume(voxels)
    }

    fn load_decoded(&self, wanted: &[FrameRef]) -> Result<Volume<f32>, DicomError> {
        let slices = self.slices as usize;
        let mut by_instance: BTreeMap<usize, Vec<(usize, &FrameRef)>> = BTreeMap::new();
        for (z, f) in wanted.iter().enumerate() {
            by_instance.entry(f.instance).or_default().push((z, f));
        }
        let (columns, rows) = (self.columns as usize, self.rows as usize);
        let decoded: Vec<Vec<(usize, Vec<f32>)>> = by_instance
            .into_par_iter()
            .map(|(instance, frames)| {
                let h = &self.instances[instance];
                let values = decode(h)?;
                let frame_len = h.rows as usize * h.columns as usize;
                frames
                    .into_iter()
                    .map(|(z, f)| {
                        let frame = &values[f.frame as usize * frame_len..(f.frame as usize + 1) * frame_len];
                        Ok((z, cut_tile(frame, h.columns as usize, f.tile, columns, rows)))
                    })
                    .collect::<Result<Vec<_>, DicomError>>()
            })
            .collect::<Result<_, _>>()?;
        let mut voxels = vec![0f32; columns * rows * slices];
        for (z, slice) in decoded.into_iter().flatten() {
            voxels[z * columns * rows..(z + 1) * columns * rows].copy_from_slice(&slice);
        }
        self.volume(voxels)
    }
}

/// The stored bytes of one slice (a whole frame, or one mosaic tile of it) of native pixels.
fn read_native_raw(
    h: &InstanceHeader,
    native: &NativePixels,
    tile: Option<(u32, u32)>,
    columns: usize,
    rows: usize,
) -> Result<Vec<u8>, DicomError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source: std::io::Error| DicomError::Decode { path: h.path.clone(), source: Box::new(source) };
    let bytes_per = usize::from(native.bits_allocated / 8);
    let frame_columns = h.columns as usize;
    let (first_row, first_column) = match tile {
        None => (0, 0),
        Some((_, index)) => {
            let per_row = frame_columns / columns;
            ((index as usize / per_row) * rows, (index as usize % per_row) * columns)
        }
    };
    let file = std::fs::File::open(&h.path).map_err(io)?;
    let mut raw = vec![0u8; columns * rows * bytes_per];
    if tile.is_none() {
        let mut file = file;
        file.seek(SeekFrom::Start(native.offset)).map_err(io)?;
        file.read_exact(&mut raw).map_err(io)?;
    } else {
        let mut reader = std::io::BufReader::with_capacity(256 << 10, file);
        for (r, chunk) in raw.chunks_exact_mut(columns * bytes_per).enumerate() {
            let at = native.offset + (((first_row + r) * frame_columns + first_column) * bytes_per) as u64;
            reader.seek(SeekFrom::Start(at)).map_err(io)?;
            reader.read_exact(chunk).map_err(io)?;
        }
    }
    Ok(raw)
}

/// Samples of a slice, masked to Bits Stored and sign-extended as dicom-pixeldata does.
fn samples<'a>(native: &NativePixels, raw: &'a [u8]) -> impl Iterator<Item = i64> + 'a {
    let bits = u32::from(native.bits_stored);
    let mask: u32 = if bits >= 32 { u32::MAX } else { (1u32 << bits) - 1 };
    let sign_bit = 1u32 << (bits - 1);
    let signed = native.signed;
    let two = native.bits_allocated == 16;
    let step = if two { 2 } else { 1 };
    raw.chunks_exact(step).map(move |b| {
        let sample = if two { u32::from(u16::from_le_bytes([b[0], b[1]])) } else { u32::from(b[0]) };
        let v = sample & mask;
        if signed && v & sign_bit != 0 { i64::from(v) - i64::from(mask) - 1 } else { i64::from(v) }
    })
}

/// Reads one slice of native pixels into `out` as real values (`slope·v + intercept` in f64).
fn read_native(
    h: &InstanceHeader,
    native: &NativePixels,
    tile: Option<(u32, u32)>,
    columns: usize,
    rows: usize,
    out: &mut [f32],
) -> Result<(), DicomError> {
    let raw = read_native_raw(h, native, tile, columns, rows)?;
    for (o, v) in out.iter_mut().zip(samples(native, &raw)) {
        *o = (native.slope * v as f64 + native.intercept) as f32;
    }
    Ok(())
}

/// The pixels of one frame, or of one mosaic tile of it.
fn cut_tile(frame: &[f32], frame_columns: usize, tile: Option<(u32, u32)>, columns: usize, rows: usize) -> Vec<f32> {
    let Some((_, index)) = tile else {
        return frame.to_vec();
    };
    let per_row = frame_columns / columns;
    let (tile_row, tile_col) = (index as usize / per_row, index as usize % per_row);
    let mut out = Vec::with_capacity(columns * rows);
    for r in 0..rows {
        let start = (tile_row * rows + r) * frame_columns + tile_col * columns;
        out.extend_from_slice(&frame[start..start + columns]);
    }
    out
}

/// Reads the headers of a series' files again and builds its display sets.
pub fn display_sets(series: &SeriesInfo) -> Result<Vec<DisplaySet>, DicomError> {
    let mut headers = Vec::with_capacity(series.files.len());
    for path in &series.files {
        match open_header(path) {
            Ok(h) => headers.push(h),
            Err(Skip::Error(e)) => return Err(e),
            Err(Skip::Directory) => {}
        }
    }
    Ok(build_display_sets(headers))
}

/// Decodes one file's frames. A codec that panics on a malformed stream (dicom-rs's RLE decoder
/// indexes out of bounds on some, found by fuzzing) becomes an error naming the file.
fn decode(h: &InstanceHeader) -> Result<Vec<f32>, DicomError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_unguarded(h))).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Err(DicomError::Decode {
            path: h.path.clone(),
            source: format!("the {} decoder failed on malformed data ({message})", h.record.transfer_syntax).into(),
        })
    })
}

fn decode_unguarded(h: &InstanceHeader) -> Result<Vec<f32>, DicomError> {
    let obj = open(&h.path, true)?;
    let samples: u16 = int(&obj, dicom_dictionary_std::tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 {
        return Err(DicomError::Unsupported { path: h.path.clone(), what: format!("{samples} samples per pixel") });
    }
    let decoded = obj
        .decode_pixel_data()
        .map_err(|source| DicomError::Decode { path: h.path.clone(), source: Box::new(source) })?;
    let values: Vec<f32> =
        decoded.to_vec().map_err(|source| DicomError::Decode { path: h.path.clone(), source: Box::new(source) })?;
    let expected = h.rows as usize * h.columns as usize * h.frames as usize;
    if values.len() != expected {
        return Err(DicomError::Decode {
            path: h.path.clone(),
            source: format!(
                "{} values decoded, {expected} expected ({}x{}x{})",
                values.len(),
                h.columns,
                h.rows,
                h.frames
            )
            .into(),
        });
    }
    Ok(values)
}

/// Where one slice of a display set came from.
pub(crate) struct SourceSlice<'a> {
    pub header: &'a InstanceHeader,
    /// 1-based, for multi-frame sources.
    pub frame_number: Option<u32>,
    pub position: Option<[f64; 3]>,
}

/// A frame before sorting.
struct Candidate {
    frame: FrameRef,
    meta: FrameMeta,
    columns: u32,
    rows: u32,
    /// Ordering of repeats at one position: temporal index, acquisition, instance, frame.
    order: (i64, i64, i64, u32, u32),
}

/// Groups frames into display sets. Also used by the folder scan, from headers alone.
pub(crate) fn build_display_sets(headers: Vec<InstanceHeader>) -> Vec<DisplaySet> {
    let files = headers.len();
    let mut seen = HashSet::new();
    let mut headers: Vec<InstanceHeader> = headers;
    headers.sort_by(|a, b| a.path.cmp(&b.path));
    headers.retain(|h| seen.insert(h.record.sop_instance_uid.clone()));
    let duplicates =
        (headers.len() < files).then_some(LoadWarning::DuplicateInstances { files, instances: headers.len() });
    headers.retain(|h| h.rows > 0 && h.columns > 0);
    let instances = Arc::new(headers);

    let mut groups: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    let mut mosaic_warning = false;
    for (index, h) in instances.iter().enumerate() {
        for candidate in candidates(index, h, &mut mosaic_warning) {
            groups.entry(group_key(&candidate)).or_default().push(candidate);
        }
    }
    let labels = labels(&groups);
    groups
        .into_values()
        .zip(labels)
        .map(|(group, label)| {
            let mut set = stack(group, label, Arc::clone(&instances));
            set.warnings.extend(duplicates.clone());
            if mosaic_warning {
                set.warnings.push(LoadWarning::MosaicNotUnpacked);
            }
            set
        })
        .collect()
}

fn candidates(index: usize, h: &InstanceHeader, mosaic_warning: &mut bool) -> Vec<Candidate> {
    let order = |frame: u32, meta: &FrameMeta| {
        (
            meta.temporal_index.unwrap_or(0),
            i64::from(h.acquisition_number.unwrap_or(0)),
            i64::from(h.record.instance_number.unwrap_or(0)),
            frame,
            0,
        )
    };
    if h.mosaic && h.frames == 1 {
        // A tile count the image cannot hold (a damaged or hostile header) is not unpacked.
        let tiles = h.mosaic_images.filter(|&count| {
            let per_side = (f64::from(count).sqrt().ceil() as u32).max(1);
            count > 0 && count <= per_side * per_side && h.columns / per_side >= 2 && h.rows / per_side >= 2
        });
        if let Some(count) = tiles {
            let per_side = (f64::from(count).sqrt().ceil() as u32).max(1);
            let (columns, rows) = (h.columns / per_side, h.rows / per_side);
            let meta = h.frame_meta.first().cloned().unwrap_or_default();
            let first = mosaic_first_slice(h, &meta, columns, rows);
            return (0..count)
                .map(|k| {
                    let position = first.map(|(p0, step)| [0, 1, 2].map(|c| p0[c] + f64::from(k) * step[c]));
                    let mut order = order(0, &meta);
                    order.4 = k;
                    Candidate {
                        frame: FrameRef { instance: index, frame: 0, tile: Some((per_side, k)) },
                        meta: FrameMeta { position, ..meta.clone() },
                        columns,
                        rows,
                        order,
                    }
                })
                .collect();
        }
        *mosaic_warning = true;
    }
    (0..h.frames)
        .map(|f| {
            let meta = h.frame_meta.get(f as usize).cloned().unwrap_or_default();
            Candidate {
                frame: FrameRef { instance: index, frame: f, tile: None },
                order: order(f, &meta),
                meta,
                columns: h.columns,
                rows: h.rows,
            }
        })
        .collect()
}

/// Position of the first tile of a mosaic and the step to the next one. The mosaic's Image
/// Position is the corner of the whole tiled frame centred on the slice; the slices are
/// SpacingBetweenSlices apart along the normal.
fn mosaic_first_slice(h: &InstanceHeader, meta: &FrameMeta, columns: u32, rows: u32) -> Option<([f64; 3], [f64; 3])> {
    let ipp = meta.position?;
    let iop = meta.orientation?;
    let [row_mm, col_mm] = meta.pixel_spacing.unwrap_or([1.0, 1.0]);
    let (row_dir, col_dir) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let shift_cols = f64::from(h.columns - columns) / 2.0;
    let shift_rows = f64::from(h.rows - rows) / 2.0;
    let p0 = [0, 1, 2].map(|c| ipp[c] + row_dir[c] * col_mm * shift_cols + col_dir[c] * row_mm * shift_rows);
    let spacing = h.slice_spacing.unwrap_or(1.0);
    let normal = cross(row_dir, col_dir);
    Some((p0, normal.map(|c| c * spacing)))
}

fn group_key(c: &Candidate) -> String {
    let orientation = c
        .meta
        .orientation
        .map_or_else(String::new, |o| o.iter().map(|v| format!("{:.3}", v + 0.0)).collect::<Vec<_>>().join(","));
    let echo = c.meta.echo_ms.map_or_else(String::new, |e| format!("{e:012.3}"));
    let b = c.meta.b_value.map_or_else(String::new, |b| format!("{b:09.1}"));
    format!("{}x{}|{echo}|{b}|{}|{orientation}", c.columns, c.rows, c.meta.image_type)
}

/// Names each group by what differs between groups: echo, b-value, image type, orientation, size.
fn labels(groups: &BTreeMap<String, Vec<Candidate>>) -> Vec<String> {
    if groups.len() < 2 {
        return vec![String::new(); groups.len()];
    }
    let parts: Vec<Vec<&str>> = groups.keys().map(|k| k.split('|').collect()).collect();
    let varies = |i: usize| parts.iter().any(|p| p[i] != parts[0][i]);
    groups
        .values()
        .map(|group| {
            let c = &group[0];
            let mut label = Vec::new();
            if varies(1) {
                label.push(c.meta.echo_ms.map_or_else(|| "no TE".into(), |e| format!("TE {e:.1} ms")));
            }
            if varies(2) {
                label.push(c.meta.b_value.map_or_else(|| "no b".into(), |b| format!("b={b:.0}")));
            }
            if varies(3) {
                label.push(c.meta.image_type.clone());
            }
            if varies(4) || varies(0) {
                label.push(format!("{}x{} plane {}", c.columns, c.rows, plane_name(c.meta.orientation)));
            }
            label.join(", ")
        })
        .collect()
}

fn plane_name(orientation: Option<[f64; 6]>) -> &'static str {
    let Some(o) = orientation else { return "unknown" };
    let n = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]).map(f64::abs);
    if n[2] >= n[0] && n[2] >= n[1] {
        "axial"
    } else if n[1] >= n[0] {
        "coronal"
    } else {
        "sagittal"
    }
}

/// Sorts one group along its normal into slices and time points and derives its affine.
fn stack(mut group: Vec<Candidate>, label: String, instances: Arc<Vec<InstanceHeader>>) -> DisplaySet {
    let mut warnings = Vec::new();
    let first = &group[0];
    let (columns, rows) = (first.columns, first.rows);
    let [row_mm, col_mm] = first.meta.pixel_spacing.unwrap_or([1.0, 1.0]);
    let orientation = first.meta.orientation;
    let geometry = orientation.filter(|_| group.iter().all(|c| c.meta.position.is_some()));

    let first_instance = first.frame.instance;
    let Some(iop) = geometry else {
        warnings.push(LoadWarning::NoGeometry);
        group.sort_by_key(|c| c.order);
        let spacing = instances[first_instance].slice_spacing.unwrap_or(1.0);
        let a = Affine3::from_columns([col_mm, 0.0, 0.0], [0.0, row_mm, 0.0], [0.0, 0.0, spacing], [0.0; 3]);
        let slices = group.len() as u32;
        return DisplaySet {
            label,
            columns,
            rows,
            slices,
            time_points: 1,
            patient_from_voxel: a,
            warnings,
            instances,
            frames: group.into_iter().map(|c| c.frame).collect(),
        };
    };
    let (row_dir, col_dir) = ([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
    let normal = cross(row_dir, col_dir);
    let along = |c: &Candidate| c.meta.position.map_or(0.0, |p| dot(p, normal));
    group.sort_by(|a, b| along(a).total_cmp(&along(b)).then(a.order.cmp(&b.order)));

    // Cluster equal positions (within 1/100 mm): each cluster is one slice over time.
    let mut clusters: Vec<Vec<Candidate>> = Vec::new();
    for c in group {
        match clusters.last_mut() {
            Some(last) if (along(&last[0]) - along(&c)).abs() < 0.01 => last.push(c),
            _ => clusters.push(vec![c]),
        }
    }
    for cluster in &mut clusters {
        cluster.sort_by_key(|c| c.order);
    }
    let slices = clusters.len();
    let frames: usize = clusters.iter().map(Vec::len).sum();
    let time_points = clusters.iter().map(Vec::len).min().unwrap_or(1);
    if time_points * slices != frames {
        warnings.push(LoadWarning::UnequalTimePoints { positions: slices, frames });
    }

    let origin = clusters[0][0].meta.position.unwrap_or([0.0; 3]);
    let z_axis = if slices > 1 {
        let distances: Vec<f64> = clusters.iter().map(|c| along(&c[0])).collect();
        let gaps: Vec<f64> = distances.windows(2).map(|w| w[1] - w[0]).collect();
        let (min, max) = gaps.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &g| (lo.min(g), hi.max(g)));
        if max > 1.5 * min {
            warnings.push(LoadWarning::MissingSlices { largest_gap_mm: max, usual_gap_mm: min });
        } else if max - min > 0.01 * min.max(1e-6) {
            warnings.push(LoadWarning::UnevenSpacing { min_mm: min, max_mm: max });
        }
        let last = clusters[slices - 1][0].meta.position.unwrap_or(origin);
        let z = [0, 1, 2].map(|c| (last[c] - origin[c]) / (slices - 1) as f64);
        let cos = dot(z, normal) / (dot(z, z).sqrt() * dot(normal, normal).sqrt()).max(1e-12);
        let degrees = cos.clamp(-1.0, 1.0).acos().to_degrees();
        if degrees > 0.01 {
            warnings.push(LoadWarning::GantryTilt { degrees });
        }
        z
    } else {
        let spacing = instances[clusters[0][0].frame.instance].slice_spacing.unwrap_or(1.0);
        normal.map(|c| c * spacing)
    };
    let patient_from_voxel =
        Affine3::from_columns(row_dir.map(|c| c * col_mm), col_dir.map(|c| c * row_mm), z_axis, origin);

    let mut ordered = Vec::with_capacity(time_points * slices);
    for t in 0..time_points {
        for cluster in &clusters {
            ordered.push(cluster[t].frame.clone());
        }
    }
    DisplaySet {
        label,
        columns,
        rows,
        slices: slices as u32,
        time_points: time_points as u32,
        patient_from_voxel,
        warnings,
        instances,
        frames: ordered,
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Seconds since midnight of a DICOM TM (`HHMMSS.ffffff`, shorter forms, or the old `HH:MM:SS`).
pub(crate) fn tm_seconds(tm: &str) -> Option<f64> {
    let tm = tm.trim().replace(':', "");
    let (whole, fraction) = tm.split_once('.').unwrap_or((&tm, ""));
    if whole.len() < 2 || whole.len() > 6 || whole.len() % 2 == 1 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |i: usize| whole.get(2 * i..2 * i + 2).map_or(Some(0.0), |p| p.parse::<f64>().ok());
    let (h, m, s) = (part(0)?, part(1)?, part(2)?);
    let fraction: f64 = if fraction.is_empty() { 0.0 } else { format!("0.{fraction}").parse().ok()? };
    (h < 24.0 && m < 60.0 && s < 61.0).then_some(h * 3600.0 + m * 60.0 + s + fraction)
}

#[cfg(test)]
mod tm_tests {
    use super::tm_seconds;

    #[test]
    fn times_of_day_parse_in_every_form_dicom_has_had() {
        assert_eq!(tm_seconds("080000"), Some(28_800.0));
        assert_eq!(tm_seconds("0801"), Some(28_860.0));
        assert_eq!(tm_seconds("08"), Some(28_800.0));
        assert_eq!(tm_seconds("08:01:30"), Some(28_890.0));
        assert!(tm_seconds("080130.25").is_some_and(|s| (s - 28_890.25).abs() < 1e-9));
        for bad in ["", "8", "2500", "08a0", "086100"] {
            assert_eq!(tm_seconds(bad), None, "{bad}");
        }
    }
}
