//! Model packages: `models/<name>/model.toml` (what the network is, what it expects, where its
//! weights are, their sha256, licence and source), a `README.md` model card, and the weights as
//! safetensors. A package is refused, with the file and the problem named, when its weights'
//! sha256 differs from the manifest's, when the file is not well-formed safetensors, or when its
//! tensors do not fit the network exactly (missing, unused or misshapen tensors).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

use crate::AiError;

/// `model.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The network's architecture, as the runtime names it (e.g. `plain-conv-unet`).
    pub architecture: String,
    /// The architecture's parameters (channels per stage, kernels, strides…).
    #[serde(default)]
    pub parameters: toml::Table,
    pub input: Input,
    /// Output channel → label, e.g. `0 = "background"`, `1 = "brain"`.
    pub labels: BTreeMap<String, String>,
    pub weights: Weights,
    pub licence: String,
    /// Where the weights come from (a registry package, a paper's release).
    pub source: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub channels: usize,
    /// What each channel is (e.g. `["T1"]`, `["T2W", "ADC", "HBV"]`).
    pub sequences: Vec<String>,
    /// Spacing the network was trained at, mm (z, y, x); none: any.
    #[serde(default)]
    pub target_spacing_mm: Option<[f64; 3]>,
    /// `zscore`, `ct`, `quantile`, … as the architecture's preprocessing reads it.
    pub normalisation: String,
    /// The patch (window) size, voxels (z, y, x).
    pub patch_size: [usize; 3],
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    pub file: String,
    pub sha256: String,
}

/// One tensor in a safetensors file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug)]
pub struct ModelPackage {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub weights_path: PathBuf,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The weights as read (and hashed) by `open`: tensors come from these bytes, never from a
    /// file that may have changed since.
    bytes: std::sync::Arc<Vec<u8>>,
}

fn package_error(path: &Path, problem: impl Into<String>) -> AiError {
    AiError::Package { path: path.to_owned(), problem: problem.into() }
}

impl ModelPackage {
    /// Reads `dir/model.toml`, checks the weights' sha256 and reads their tensor table.
    pub fn open(dir: &Path) -> Result<Self, AiError> {
        let manifest_path = dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| package_error(&manifest_path, e.to_string()))?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| package_error(&manifest_path, e.to_string()))?;
        if manifest.input.sequences.len() != manifest.input.channels {
            return Err(package_error(
                &manifest_path,
                format!(
                    "{} input channels but {} sequences named",
                    manifest.input.channels,
                    manifest.input.sequences.len()
                ),
            ));
        }
        let weights_path = dir.join(&manifest.weights.file);
        let bytes = std::fs::read(&weights_path).map_err(|e| package_error(&weights_path, e.to_string()))?;
        let actual = hex(&sha2::Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(manifest.weights.sha256.trim()) {
            return Err(package_error(
                &weights_path,
                format!(
                    "sha256 is {actual}, model.toml says {}: the weights are not the ones it describes",
                    manifest.weights.sha256
                ),
            ));
        }
        let tensors = read_header(&bytes).map_err(|problem| package_error(&weights_path, problem))?;
        Ok(Self { dir: dir.to_owned(), manifest, weights_path, tensors, bytes: std::sync::Arc::new(bytes) })
    }

    /// Refuses weights that do not fit the network exactly: every tensor it expects present with
    /// its shape, and nothing else. All problems are listed at once.
    pub fn check(&self, expected: &[(String, Vec<usize>)]) -> Result<(), AiError> {
        let given: Vec<(&str, &[usize], &str)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t.shape.as_slice(), t.dtype.as_str())).collect();
        check_tensors(&self.manifest.name, expected, &given)
    }

    /// A tensor's values (F32, little-endian).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, AiError> {
        let problem = |p: String| AiError::Weights { model: self.manifest.name.clone(), problem: p };
        let info = self.tensors.get(name).ok_or_else(|| problem(format!("missing {name}")))?;
        if info.dtype != "F32" {
            return Err(problem(format!("{name} is {}, expected F32", info.dtype)));
        }
        let bytes =
            self.bytes.get(info.start..info.end).ok_or_else(|| problem(format!("{name} lies outside the file")))?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// Every tensor, checked against what the network `expected` (see [`check`](Self::check)).
    pub fn named_tensors(&self, expected: &[(String, Vec<usize>)]) -> Result<Vec<crate::torch::NamedTensor>, AiError> {
        self.check(expected)?;
        self.tensors.iter().map(|(name, info)| Ok((name.clone(), info.shape.clone(), self.tensor_f32(name)?))).collect()
    }
}

/// Refuses tensors (name, shape, dtype) that do not fit a network exactly: every tensor it
/// expects present with its shape and as F32, and nothing else. All problems are listed at once.
pub fn check_tensors(
    model: &str,
    expected: &[(String, Vec<usize>)],
    given: &[(&str, &[usize], &str)],
) -> Result<(), AiError> {
    let mut problems = Vec::new();
    for (name, shape) in expected {
        match given.iter().find(|(n, ..)| n == name) {
            None => problems.push(format!("missing {name} {shape:?}")),
            Some((_, s, _)) if s != shape => problems.push(format!("{name} is {s:?}, the network needs {shape:?}")),
            Some((_, _, dtype)) if *dtype != "F32" => problems.push(format!("{name} is {dtype}, expected F32")),
            Some(_) => {}
        }
    }
    for (name, ..) in given {
        if !expected.iter().any(|(n, _)| n == name) {
            problems.push(format!("unused {name}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AiError::Weights { model: model.to_owned(), problem: problems.join("; ") })
    }
}

/// [`check_tensors`] for tensors already read (all F32).
pub fn check_named(
    model: &str,
    expected: &[(String, Vec<usize>)],
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), AiError> {
    let given: Vec<(&str, &[usize], &str)> =
        tensors.iter().map(|(n, s, _)| (n.as_str(), s.as_slice(), "F32")).collect();
    check_tensors(model, expected, &given)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// The tensor table of a safetensors file, every entry checked against the file's size.
pub fn read_header(bytes: &[u8]) -> Result<BTreeMap<String, TensorInfo>, String> {
    let len_bytes: [u8; 8] =
        bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or("shorter than a safetensors header")?;
    let header_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| "header length overflows")?;
    let data_start = 8usize.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or("header runs past the end")?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..data_start]).map_err(|e| format!("header is not JSON: {e}"))?;
    let mut tensors = BTreeMap::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: HeaderEntry = serde_json::from_value(value).map_err(|e| format!("tensor {name}: {e}"))?;
        let size = match entry.dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" => 1,
            other => return Err(format!("tensor {name}: unknown dtype {other}")),
        };
        let [start, end] = entry.data_offsets;
        let count = entry
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(format!("tensor {name}: shape overflows"))?;
        let (start, end) = (data_start.checked_add(start), data_start.checked_add(end));
        let (Some(start), Some(end)) = (start, end) else { return Err(format!("tensor {name}: offsets overflow")) };
        if end < start || end > bytes.len() || end - start != count.saturating_mul(size) {
            return Err(format!(
                "tensor {name}: its bytes {start}..{end} do not hold {:?} {}",
                entry.shape, entry.dtype
            ));
        }
        tensors.insert(name, TensorInfo { dtype: entry.dtype, shape: entry.shape, start, end });
    }
    Ok(tensors)
}

/// Writes F32 tensors as a safetensors file (what the converters produce).
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        let end = offset + data.len() * 4;
        header
            .insert(name.clone(), serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, end] }));
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The data starts 8-byte aligned.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, data) in tensors {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, out)
}

/// The sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(hex(&sha2::Sha256::digest(std::fs::read(path)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], sha: Option<&str>) -> anyhow::Result<()> {
        let weights = dir.join("weights.safetensors");
        write_safetensors(&weights, tensors)?;
        let sha = sha.map_or_else(|| sha256_file(&weights), |s| Ok(s.to_owned()))?;
        std::fs::write(
            dir.join("model.toml"),
            format!(
                r#"name = "tiny"
version = "0.1"
description = "a test network"
architecture = "test"
licence = "Apache-2.0"
source = "made by the test"

[parameters]
features = [2, 4]

[input]
channels = 1
sequences = ["T1"]
normalisation = "zscore"
patch_size = [8, 8, 8]

[labels]
0 = "background"
1 = "brain"

[weights]
file = "weights.safetensors"
sha256 = "{sha}"
"#
            ),
        )?;
        Ok(())
    }

    fn tiny() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        vec![("conv.weight".into(), vec![2, 1, 3], vec![0.5; 6]), ("conv.bias".into(), vec![2], vec![1.0, -1.0])]
    }

    fn expected() -> Vec<(String, Vec<usize>)> {
        vec![("conv.weight".into(), vec![2, 1, 3]), ("conv.bias".into(), vec![2])]
    }

    #[test]
    fn a_good_package_opens_and_its_tensors_read_back() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        package(dir.path(), &tiny(), None)?;
        let p = ModelPackage::open(dir.path())?;
        assert_eq!(p.manifest.labels.get("1").map(String::as_str), Some("brain"));
        assert_eq!(p.manifest.parameters.get("features").map(|v| v.to_string()), Some("[2, 4]".into()));
        p.check(&expected())?;
        assert_eq!(p.tensor_f32("conv.bias")?, vec![1.0, -1.0]);
        Ok(())
    }

    #[test]
    fn wrong_hash_missing_unused_and_misshapen_tensors_are_refused_by_name() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        package(dir.path(), &tiny(), Some("00ff"))?;
        let err = ModelPackage::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("weights.safetensors: sha256 is ") && err.contains("model.toml says 00ff"), "{err}");

        let mut other = tiny();
        other[0].1 = vec![2, 1, 2];
        other[0].2.truncate(4);
        other.push(("extra".into(), vec![1], vec![0.0]));
        package(dir.path(), &other, None)?;
        let mut wanted = expected();
        wanted.push(("conv2.weight".into(), vec![1]));
        let err = ModelPackage::open(dir.path())?.check(&wanted).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err,
            "model tiny: the weights do not fit the network: conv.weight is [2, 1, 2], the network needs [2, 1, 3]; \
             missing conv2.weight [1]; unused extra"
        );
        Ok(())
    }

    #[test]
    fn malformed_safetensors_are_refused_without_panicking() {
        assert!(read_header(b"short").is_err());
        assert!(read_header(&[255, 255, 255, 255, 255, 255, 255, 127, b'{']).is_err());
        let mut bad = 10u64.to_le_bytes().to_vec();
        bad.extend_from_slice(b"not json!!");
        assert!(read_header(&bad).err().unwrap_or_default().contains("not JSON"));
        let mut lying = Vec::new();
        let header = br#"{"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        lying.extend_from_slice(&(header.len() as u64).to_le_bytes());
        lying.extend_from_slice(header);
        lying.extend_from_slice(&[0; 8]);
        assert!(read_header(&lying).err().unwrap_or_default().contains("do not hold [4] F32"));
    }
}
