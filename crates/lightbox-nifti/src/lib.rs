//! NIfTI-1 for Lightbox: reading research volumes (`.nii`, `.nii.gz`) and exporting volumes.
//!
//! NIfTI's world space is RAS; Lightbox's patient space is DICOM LPS. The conversion happens here
//! and nowhere else: the first two rows of every affine change sign at this boundary.
//!
//! A small hand-written header codec rather than the `nifti` crate: Lightbox volumes are flat
//! buffers, and the crate's writer goes through `ndarray` (another copy of every voxel).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use lightbox_core::{Affine3, StoredVolume, StoredVoxels, Volume};

const HEADER_BYTES: usize = 348;
const DATA_OFFSET: usize = 352;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NiftiError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a NIfTI-1 file ({reason})")]
    NotNifti { path: PathBuf, reason: String },
    #[error("{path}: data type {datatype} is not supported")]
    UnsupportedType { path: PathBuf, datatype: i16 },
    #[error("{path}: {expected} bytes of voxel data expected after byte {offset}, file has {actual}")]
    Truncated { path: PathBuf, expected: usize, offset: usize, actual: usize },
    #[error("time point {index} is outside the image's {count}")]
    NoSuchTimePoint { index: usize, count: usize },
}

/// A NIfTI image: up to four dimensions, values scaled by `scl_slope`/`scl_inter`.
#[derive(Clone, Debug)]
pub struct NiftiImage {
    /// `[nx, ny, nz, nt]`
    pub dims: [usize; 4],
    /// Voxel to DICOM patient space (LPS mm), converted from the file's RAS affine.
    pub patient_from_voxel: Affine3,
    /// Scaled values, x fastest, then y, z, t.
    pub values: Vec<f32>,
}

impl NiftiImage {
    pub fn time_points(&self) -> usize {
        self.dims[3]
    }

    /// The 3-D volume at time point `t`.
    pub fn volume(&self, t: usize) -> Result<Volume<f32>, NiftiError> {
        let [nx, ny, nz, nt] = self.dims;
        if t >= nt {
            return Err(NiftiError::NoSuchTimePoint { index: t, count: nt });
        }
        let len = nx * ny * nz;
        let voxels = self.values[t * len..(t + 1) * len].to_vec();
        Ok(Volume::new([nx, ny, nz], voxels, self.patient_from_voxel).expect("length checked when read"))
    }
}

/// Reads a `.nii` or `.nii.gz` file.
pub fn read(path: &Path) -> Result<NiftiImage, NiftiError> {
    let raw = std::fs::read(path).map_err(|source| NiftiError::Read { path: path.to_owned(), source })?;
    read_bytes(path, &raw)
}

/// Reads NIfTI-1 from memory (gzipped or not); `path` only names it in errors. A gzipped file is
/// inflated no further than its header says the image needs, so a small file cannot inflate
/// into gigabytes.
pub fn read_bytes(path: &Path, raw: &[u8]) -> Result<NiftiImage, NiftiError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse(path, raw);
    }
    let read_err = |source| NiftiError::Read { path: path.to_owned(), source };
    let mut decoder = flate2::read::MultiGzDecoder::new(raw);
    let mut bytes = Vec::with_capacity(DATA_OFFSET);
    (&mut decoder).take(DATA_OFFSET as u64).read_to_end(&mut bytes).map_err(read_err)?;
    let needed = layout(path, &bytes)?.end;
    (&mut decoder).take(needed.saturating_sub(bytes.len()) as u64).read_to_end(&mut bytes).map_err(read_err)?;
    parse(path, &bytes)
}

/// Where the voxels are and what they are, from the header alone.
struct Layout {
    dims: [usize; 4],
    datatype: i16,
    sample: usize,
    offset: usize,
    expected: usize,
    /// `offset + expected`: how many bytes the file must have.
    end: usize,
}

fn layout(path: &Path, bytes: &[u8]) -> Result<Layout, NiftiError> {
    let not_nifti = |reason: &str| NiftiError::NotNifti { path: path.to_owned(), reason: reason.to_owned() };
    if bytes.len() < HEADER_BYTES {
        return Err(not_nifti("shorter than a NIfTI-1 header"));
    }
    let h = Header::new(bytes).ok_or_else(|| not_nifti("sizeof_hdr is not 348"))?;
    if &bytes[344..347] != b"n+1" && &bytes[344..347] != b"ni1" {
        return Err(not_nifti("no 'n+1' magic"));
    }
    let ndim = h.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(not_nifti(&format!("dim[0] = {ndim}")));
    }
    let dim = |i: usize| if i as i16 <= ndim { usize::try_from(h.i16(40 + 2 * i)).unwrap_or(0).max(1) } else { 1 };
    let too_big = || not_nifti("dimensions too large");
    let time =
        [dim(4), dim(5), dim(6), dim(7)].iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let dims = [dim(1), dim(2), dim(3), time];
    let datatype = h.i16(70);
    let sample: usize = match datatype {
        2 | 256 => 1,
        4 | 512 => 2,
        8 | 16 | 768 => 4,
        64 => 8,
        _ => return Err(NiftiError::UnsupportedType { path: path.to_owned(), datatype }),
    };
    let expected = dims.iter().try_fold(sample, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
    let declared = h.f32(108);
    let offset = if declared.is_finite() && declared >= DATA_OFFSET as f32 { declared as usize } else { DATA_OFFSET };
    let end = offset.checked_add(expected).ok_or_else(too_big)?;
    Ok(Layout { dims, datatype, sample, offset, expected, end })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<NiftiImage, NiftiError> {
    let Layout { dims, datatype, sample, offset, expected, end } = layout(path, bytes)?;
    let h = Header::new(bytes)
        .ok_or_else(|| NiftiError::NotNifti { path: path.to_owned(), reason: "sizeof_hdr is not 348".into() })?;
    let data = bytes.get(offset..end).ok_or(NiftiError::Truncated {
        path: path.to_owned(),
        expected,
        offset,
        actual: bytes.len(),
    })?;
    let (slope, inter) = match (h.f32(112), h.f32(116)) {
        (s, i) if s != 0.0 && s.is_finite() => (s, if i.is_finite() { i } else { 0.0 }),
        _ => (1.0, 0.0),
    };
    let values = data
        .chunks_exact(sample)
        .map(|c| {
            let raw = match datatype {
                2 => f64::from(c[0]),
                256 => f64::from(c[0] as i8),
                4 => f64::from(h.order_i16([c[0], c[1]])),
                512 => f64::from(h.order_i16([c[0], c[1]]) as u16),
                8 => f64::from(h.order_u32([c[0], c[1], c[2], c[3]]) as i32),
                768 => f64::from(h.order_u32([c[0], c[1], c[2], c[3]])),
                16 => f64::from(f32::from_bits(h.order_u32([c[0], c[1], c[2], c[3]]))),
                _ => f64::from_bits(h.order_u64(c)),
            };
            (raw * f64::from(slope) + f64::from(inter)) as f32
        })
        .collect();
    Ok(NiftiImage { dims, patient_from_voxel: lps_from_ras(h.ras_from_voxel()), values })
}

/// Header fields, in the file's byte order.
struct Header<'a> {
    bytes: &'a [u8],
    big_endian: bool,
}

impl<'a> Header<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let size = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if i32::from_le_bytes(size) == HEADER_BYTES as i32 {
            Some(Self { bytes, big_endian: false })
        } else if i32::from_be_bytes(size) == HEADER_BYTES as i32 {
            Some(Self { bytes, big_endian: true })
        } else {
            None
        }
    }

    fn order_i16(&self, b: [u8; 2]) -> i16 {
        if self.big_endian { i16::from_be_bytes(b) } else { i16::from_le_bytes(b) }
    }

    fn order_u32(&self, b: [u8; 4]) -> u32 {
        if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
    }

    fn order_u64(&self, c: &[u8]) -> u64 {
        let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
        if self.big_endian { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) }
    }

    fn i16(&self, at: usize) -> i16 {
        self.order_i16([self.bytes[at], self.bytes[at + 1]])
    }

    fn f32(&self, at: usize) -> f32 {
        f32::from_bits(self.order_u32([self.bytes[at], self.bytes[at + 1], self.bytes[at + 2], self.bytes[at + 3]]))
    }

    /// sform when set, else qform, else plain pixdim scaling (NIfTI "method 1").
    fn ras_from_voxel(&self) -> Affine3 {
        let pixdim = |i: usize| f64::from(self.f32(76 + 4 * i));
        if self.i16(254) > 0 {
            let row = |at: usize| [0, 1, 2, 3].map(|c| f64::from(self.f32(at + 4 * c)));
            return Affine3 { rows: [row(280), row(296), row(312)] };
        }
        let spacing = [pixdim(1), pixdim(2), pixdim(3)].map(|s| if s > 0.0 { s } else { 1.0 });
        if self.i16(252) > 0 {
            let (b, c, d) = (f64::from(self.f32(256)), f64::from(self.f32(260)), f64::from(self.f32(264)));
            let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
            let r = [
                [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
                [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
                [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
            ];
            let qfac = if pixdim(0) < 0.0 { -1.0 } else { 1.0 };
            let offset = [268, 272, 276].map(|at| f64::from(self.f32(at)));
            let mut rows = [[0.0; 4]; 3];
            for (i, row) in rows.iter_mut().enumerate() {
                *row = [r[i][0] * spacing[0], r[i][1] * spacing[1], r[i][2] * spacing[2] * qfac, offset[i]];
            }
            return Affine3 { rows };
        }
        Affine3::from_columns([spacing[0], 0.0, 0.0], [0.0, spacing[1], 0.0], [0.0, 0.0, spacing[2]], [0.0; 3])
    }
}

/// RAS and LPS differ by the sign of x and y; the map is its own inverse.
fn lps_from_ras(a: Affine3) -> Affine3 {
    let mut rows = a.rows;
    for row in rows.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    Affine3 { rows }
}

/// Writes a volume as NIfTI-1 (`float32`, sform and qform both "scanner"), gzipped when the name
/// ends in `.gz`.
pub fn write(path: &Path, volume: &Volume<f32>) -> Result<(), NiftiError> {
    write_time_series(path, std::slice::from_ref(volume))
}

/// Writes time points of one grid as a 4-D NIfTI-1 file (3-D when there is one). The grid and
/// affine of the first volume are used; the others must have the same size.
pub fn write_time_series(path: &Path, volumes: &[Volume<f32>]) -> Result<(), NiftiError> {
    let stored: Vec<StoredVolume> = volumes.iter().cloned().map(StoredVolume::from).collect();
    write_stored_series(path, &stored)
}

/// Writes time points in their stored type (`uint8`, `uint16`, `int16` or `float32`) with the
/// rescale in `scl_slope`/`scl_inter`, as dcm2niix does. Time points of different types or
/// rescales are all written as `float32` real values.
pub fn write_stored_series(path: &Path, volumes: &[StoredVolume]) -> Result<(), NiftiError> {
    let write_err = |source| NiftiError::Write { path: path.to_owned(), source };
    let Some(first) = volumes.first() else {
        return Err(write_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no volume to write")));
    };
    if volumes.iter().any(|v| v.dims() != first.dims()) {
        return Err(write_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "time points differ in size")));
    }
    let uniform = volumes.iter().all(|v| {
        std::mem::discriminant(v.voxels()) == std::mem::discriminant(first.voxels())
            && v.slope == first.slope
            && v.intercept == first.intercept
    });
    if !uniform {
        let real: Vec<StoredVolume> = volumes.iter().map(|v| StoredVolume::from(v.to_f32())).collect();
        return write_stored_series(path, &real);
    }
    // Streamed through a small buffer: the file never sits in memory beside the volumes.
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).map_err(write_err)?);
    if path.extension().is_some_and(|e| e == "gz") {
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        write_body(&mut gz, first, volumes).map_err(write_err)?;
        gz.finish().and_then(|mut f| f.flush()).map_err(write_err)?;
    } else {
        // No fsync: an export is derived data, written again in a moment if lost (dcm2niix
        // does not sync either; it cost several ms per file here).
        let mut file = file;
        write_body(&mut file, first, volumes).and_then(|()| file.flush()).map_err(write_err)?;
    }
    Ok(())
}

fn write_body(out: &mut impl Write, first: &StoredVolume, volumes: &[StoredVolume]) -> std::io::Result<()> {
    out.write_all(&header_bytes(first, volumes.len()))?;
    let mut buffer: Vec<u8> = Vec::with_capacity(256 << 10);
    fn chunked<T: Copy, const N: usize>(
        out: &mut impl Write,
        buffer: &mut Vec<u8>,
        values: &[T],
        bytes: impl Fn(T) -> [u8; N],
    ) -> std::io::Result<()> {
        for chunk in values.chunks(64 << 10) {
            buffer.clear();
            chunk.iter().for_each(|&v| buffer.extend_from_slice(&bytes(v)));
            out.write_all(buffer)?;
        }
        Ok(())
    }
    for volume in volumes {
        match volume.voxels() {
            StoredVoxels::U8(v) => out.write_all(v)?,
            StoredVoxels::U16(v) => chunked(out, &mut buffer, v, u16::to_le_bytes)?,
            StoredVoxels::I16(v) => chunked(out, &mut buffer, v, i16::to_le_bytes)?,
            StoredVoxels::F32(v) => chunked(out, &mut buffer, v, f32::to_le_bytes)?,
        }
    }
    Ok(())
}

fn header_bytes(volume: &StoredVolume, time_points: usize) -> [u8; DATA_OFFSET] {
    let mut h = [0u8; DATA_OFFSET];
    let put = |h: &mut [u8; DATA_OFFSET], at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut h, 0, &(HEADER_BYTES as i32).to_le_bytes());
    let [nx, ny, nz] = volume.dims();
    let ndim = if time_points > 1 { 4 } else { 3 };
    for (i, d) in [ndim, nx, ny, nz, time_points, 1, 1, 1].into_iter().enumerate() {
        put(&mut h, 40 + 2 * i, &(d.min(i16::MAX as usize) as i16).to_le_bytes());
    }
    let (datatype, bitpix): (i16, i16) = match volume.voxels() {
        StoredVoxels::U8(_) => (2, 8),
        StoredVoxels::I16(_) => (4, 16),
        StoredVoxels::U16(_) => (512, 16),
        StoredVoxels::F32(_) => (16, 32),
    };
    put(&mut h, 70, &datatype.to_le_bytes());
    put(&mut h, 72, &bitpix.to_le_bytes());
    let ras = lps_from_ras(volume.patient_from_voxel);
    let spacing = volume.spacing_mm();
    let (quaternion, qfac) = quaternion_of(&ras, spacing);
    for (i, v) in [qfac, spacing[0], spacing[1], spacing[2], 0.0, 0.0, 0.0, 0.0].into_iter().enumerate() {
        put(&mut h, 76 + 4 * i, &(v as f32).to_le_bytes());
    }
    put(&mut h, 108, &(DATA_OFFSET as f32).to_le_bytes());
    put(&mut h, 112, &(volume.slope as f32).to_le_bytes()); // scl_slope
    put(&mut h, 116, &(volume.intercept as f32).to_le_bytes()); // scl_inter
    put(&mut h, 123, &[2 | 8]); // mm, seconds
    put(&mut h, 148, b"Lightbox export");
    put(&mut h, 252, &1i16.to_le_bytes()); // qform: scanner
    put(&mut h, 254, &1i16.to_le_bytes()); // sform: scanner
    for (i, v) in quaternion.into_iter().chain(ras.translation()).enumerate() {
        put(&mut h, 256 + 4 * i, &(v as f32).to_le_bytes());
    }
    for (r, row) in ras.rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put(&mut h, 280 + 16 * r + 4 * c, &(*v as f32).to_le_bytes());
        }
    }
    put(&mut h, 344, b"n+1\0");
    h
}

/// The qform quaternion `(b, c, d)` and `qfac` of an affine's rotation (columns normalised; a
/// left-handed grid gets `qfac = -1`).
fn quaternion_of(a: &Affine3, spacing: [f64; 3]) -> ([f64; 3], f64) {
    let mut r = [[0.0; 3]; 3];
    for (c, s) in spacing.iter().enumerate() {
        let s = if *s > 0.0 { *s } else { 1.0 };
        for (row, out) in r.iter_mut().enumerate() {
            out[c] = a.rows[row][c] / s;
        }
    }
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    for row in r.iter_mut() {
        row[2] *= qfac;
    }
    let trace = r[0][0] + r[1][1] + r[2][2];
    let (a, b, c, d) = if trace > 0.0 {
        let s = 0.5 / (trace + 1.0).sqrt();
        (0.25 / s, (r[2][1] - r[1][2]) * s, (r[0][2] - r[2][0]) * s, (r[1][0] - r[0][1]) * s)
    } else if r[0][0] > r[1][1] && r[0][0] > r[2][2] {
        let s = 2.0 * (1.0 + r[0][0] - r[1][1] - r[2][2]).sqrt();
        ((r[2][1] - r[1][2]) / s, 0.25 * s, (r[0][1] + r[1][0]) / s, (r[0][2] + r[2][0]) / s)
    } else if r[1][1] > r[2][2] {
        let s = 2.0 * (1.0 + r[1][1] - r[0][0] - r[2][2]).sqrt();
        ((r[0][2] - r[2][0]) / s, (r[0][1] + r[1][0]) / s, 0.25 * s, (r[1][2] + r[2][1]) / s)
    } else {
        let s = 2.0 * (1.0 + r[2][2] - r[0][0] - r[1][1]).sqrt();
        ((r[1][0] - r[0][1]) / s, (r[0][2] + r[2][0]) / s, (r[1][2] + r[2][1]) / s, 0.25 * s)
    };
    // NIfTI keeps a >= 0 and stores only (b, c, d).
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    ([b * sign, c * sign, d * sign], qfac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oblique_volume() -> Volume<f32> {
        // 10 degrees about z, a left-handed grid (slices go towards the feet), anisotropic voxels.
        let (s, c) = 10f64.to_radians().sin_cos();
        let a = Affine3::from_columns(
            [0.8 * c, 0.8 * s, 0.0],
            [-0.9 * s, 0.9 * c, 0.0],
            [0.0, 0.0, -3.0],
            [-100.0, 50.0, 20.0],
        );
        Volume::new([4, 3, 2], (0..24).map(|v| v as f32 * 1.5 - 7.0).collect(), a).expect("24 voxels")
    }

    #[test]
    fn write_then_read_keeps_values_and_geometry() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        for name in ["v.nii", "v.nii.gz"] {
            let path = dir.path().join(name);
            let original = oblique_volume();
            write(&path, &original)?;
            let image = read(&path)?;
            assert_eq!(image.dims, [4, 3, 2, 1]);
            let back = image.volume(0)?;
            assert_eq!(back.voxels(), original.voxels());
            for (r, row) in back.patient_from_voxel.rows.iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    assert!((v - original.patient_from_voxel.rows[r][c]).abs() < 1e-4, "{name} [{r}][{c}]");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn time_series_round_trip() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("4d.nii");
        let a = oblique_volume();
        let b = Volume::new(a.dims(), a.voxels().iter().map(|v| v * 2.0).collect(), a.patient_from_voxel)?;
        write_time_series(&path, &[a.clone(), b.clone()])?;
        let image = read(&path)?;
        assert_eq!(image.dims, [4, 3, 2, 2]);
        assert_eq!(image.volume(1)?.voxels(), b.voxels());
        assert!(image.volume(2).is_err());
        Ok(())
    }

    #[test]
    fn qform_alone_gives_the_same_affine_as_sform() -> anyhow::Result<()> {
        let original = oblique_volume();
        let mut bytes = header_bytes(&StoredVolume::from(original.clone()), 1).to_vec();
        bytes[254..256].copy_from_slice(&0i16.to_le_bytes()); // drop the sform
        for v in original.voxels() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let image = parse(Path::new("mem.nii"), &bytes)?;
        for (r, row) in image.patient_from_voxel.rows.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                assert!((v - original.patient_from_voxel.rows[r][c]).abs() < 1e-4, "[{r}][{c}] {v}");
            }
        }
        Ok(())
    }

    #[test]
    fn huge_dimensions_are_an_error_not_an_overflow() {
        let mut bytes = header_bytes(&StoredVolume::from(oblique_volume()), 1).to_vec();
        bytes[40..42].copy_from_slice(&7i16.to_le_bytes());
        for i in 1..=7 {
            bytes[40 + 2 * i..42 + 2 * i].copy_from_slice(&i16::MAX.to_le_bytes());
        }
        let err = parse(Path::new("big.nii"), &bytes).expect_err("too large");
        assert_eq!(err.to_string(), "big.nii: not a NIfTI-1 file (dimensions too large)");
    }

    #[test]
    fn gzipped_image_with_50_mb_of_trailing_bytes_reads_its_voxels() -> anyhow::Result<()> {
        let volume = oblique_volume();
        let mut plain = header_bytes(&StoredVolume::from(volume.clone()), 1).to_vec();
        for v in volume.voxels() {
            plain.extend_from_slice(&v.to_le_bytes());
        }
        plain.extend(std::iter::repeat_n(0u8, 50 << 20)); // 50 MB of trailing zeros
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&plain)?;
        let packed = gz.finish()?;
        assert!(packed.len() < 200_000);
        let image = read_bytes(Path::new("bomb.nii.gz"), &packed)?;
        assert_eq!(image.volume(0)?.voxels(), volume.voxels());
        Ok(())
    }

    #[test]
    fn stored_types_round_trip_with_their_rescale() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let affine = oblique_volume().patient_from_voxel;
        for voxels in [
            StoredVoxels::I16(vec![-300, 0, 7, 32767, -32768, 12, 5, 9]),
            StoredVoxels::U16(vec![0, 1, 65535, 4095, 12, 7, 300, 2]),
            StoredVoxels::U8(vec![0, 1, 255, 128, 3, 4, 5, 6]),
        ] {
            let stored = StoredVolume::new([2, 2, 2], voxels, affine, 0.5, -12.0)?;
            let path = dir.path().join("s.nii.gz");
            write_stored_series(&path, std::slice::from_ref(&stored))?;
            let back = read(&path)?.volume(0)?;
            assert_eq!(back.voxels(), stored.to_f32().voxels());
            let raw = read_bytes(&path, &std::fs::read(&path)?)?;
            assert_eq!(raw.volume(0)?.voxels(), back.voxels());
        }
        Ok(())
    }

    #[test]
    fn bad_files_are_named_errors() {
        let path = Path::new("x.nii");
        let err = parse(path, &[0u8; 10]).expect_err("too short");
        assert_eq!(err.to_string(), "x.nii: not a NIfTI-1 file (shorter than a NIfTI-1 header)");
        let mut bytes = header_bytes(&StoredVolume::from(oblique_volume()), 1).to_vec();
        bytes.extend_from_slice(&[0u8; 10]);
        let err = parse(path, &bytes).expect_err("truncated");
        assert_eq!(err.to_string(), "x.nii: 96 bytes of voxel data expected after byte 352, file has 362");
    }
}
