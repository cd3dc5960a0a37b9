//! The convolution tuner's choices ([`crate::ops::conv3d_tuned`]), kept on disk per GPU so that
//! a second process (the next CLI run, the daemon after a restart, the workstation tomorrow)
//! starts with them instead of timing every layer shape again, as PyTorch's
//! `cudnn.benchmark` does in each process.
//!
//! One JSON file per GPU model and build: `conv-tuning-<hash>.json` in
//! `LIGHTBOX_AI_TUNING_DIR` (`off`: keep choices in memory only), else
//! `$XDG_CACHE_HOME/lightbox/tuning`, else `~/.cache/lightbox/tuning`. The hash is of what
//! decides which way is fastest and nothing else: the GPU as it names itself, what cubecl
//! compiles for on it (vendor, device id, WGSL or SPIR-V), this crate's version (burn's kernels
//! come with it) and the ways it times, with their revisions (`ops::TUNED_WAYS`). A choice only decides speed: every way computes the same sums, so a stale
//! or hand-edited file costs time, never a result. Delete the file to tune again (after a
//! driver update, say). A file that cannot be read is named in a warning and rewritten.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::ops::{ConvShape, ConvWay};

/// Where one GPU's choices live, and what a file must say to be that GPU's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuningStore {
    path: PathBuf,
    header: Header,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    lightbox_ai: String,
    /// The ways this build times, and their revisions ([`crate::ops::TUNED_WAYS`]): a build
    /// with another way, or a way's kernel changed, tunes afresh.
    ways: String,
    gpu: String,
    fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct TuningFile {
    #[serde(flatten)]
    header: Header,
    layers: Vec<Entry>,
}

/// One layer shape: its timings (ms, median) and the way kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(flatten)]
    pub shape: ConvShape,
    pub ms: Vec<(ConvWay, f64)>,
    pub way: ConvWay,
}

impl TuningStore {
    /// The store for `gpu` (its name) with cubecl's `fingerprint` of it, in `dir`.
    pub fn new(dir: &Path, gpu: &str, fingerprint: &str) -> Self {
        let header = Header {
            lightbox_ai: env!("CARGO_PKG_VERSION").to_owned(),
            ways: crate::ops::TUNED_WAYS.to_owned(),
            gpu: gpu.to_owned(),
            fingerprint: fingerprint.to_owned(),
        };
        let hash = sha2::Sha256::digest(format!(
            "{}\n{}\n{}\n{}",
            header.lightbox_ai, header.ways, header.gpu, header.fingerprint
        ));
        let hex: String = hash.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Self { path: dir.join(format!("conv-tuning-{hex}.json")), header }
    }

    /// The directory `LIGHTBOX_AI_TUNING_DIR` names (`None` for `off`), else the user's cache.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os("LIGHTBOX_AI_TUNING_DIR") {
            Some(dir) if dir == "off" => None,
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|cache| cache.join("lightbox").join("tuning")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The choices on disk; none when there is no file yet. An error names the file and what
    /// is wrong with it.
    pub(crate) fn load(&self) -> Result<Vec<Entry>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        let file: TuningFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: not a tuning file ({e})", self.path.display()))?;
        if file.header != self.header {
            return Err(format!(
                "{}: made for {} ({}, lightbox-ai {}), not {} ({}, lightbox-ai {})",
                self.path.display(),
                file.header.gpu,
                file.header.fingerprint,
                file.header.lightbox_ai,
                self.header.gpu,
                self.header.fingerprint,
                self.header.lightbox_ai
            ));
        }
        Ok(file.layers.into_iter().filter(|e| e.ms.iter().all(|m| m.1.is_finite() && m.1 >= 0.0)).collect())
    }

    /// Writes `layers` merged with what the file holds now (another process may have tuned
    /// other shapes since this one read it; a shape in both keeps `layers`' entry). Written
    /// beside the file and renamed over it, so a reader never sees half a file.
    pub(crate) fn save(&self, layers: &[Entry]) -> Result<(), String> {
        let mut merged: Vec<Entry> = self.load().unwrap_or_default();
        merged.retain(|old| !layers.iter().any(|new| new.shape == old.shape));
        merged.extend(layers.iter().cloned());
        merged.sort_by(|a, b| a.shape.cmp(&b.shape));
        let file = TuningFile { header: self.header.clone(), layers: merged };
        let text = serde_json::to_string_pretty(&file).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let partial = self.path.with_extension(format!("json.{}.partial", std::process::id()));
        std::fs::write(&partial, text).map_err(|e| format!("{}: {e}", partial.display()))?;
        std::fs::rename(&partial, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&partial);
            format!("{}: {e}", self.path.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(width: usize, way: ConvWay) -> Entry {
        Entry {
            shape: ConvShape::new([1, 3, 9, 7, width], [5, 3, 3, 3, 3], [1; 3], [(1, 1); 3], "F32", 1 << 20),
            ms: vec![(ConvWay::Burn, 2.0), (ConvWay::Gemm, 1.0), (ConvWay::GemmTransposed, 1.5)],
            way,
        }
    }

    #[test]
    fn choices_round_trip_and_merge_with_another_process() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = TuningStore::new(dir.path(), "NVIDIA H200", "spirv_4318_8995");
        assert_eq!(store.load(), Ok(Vec::new()), "no file yet: nothing remembered, no error");
        store.save(&[entry(8, ConvWay::Gemm)]).map_err(anyhow::Error::msg)?;
        assert_eq!(store.load(), Ok(vec![entry(8, ConvWay::Gemm)]));
        // Another process tuned another shape, and this one re-tuned the first.
        let other = TuningStore::new(dir.path(), "NVIDIA H200", "spirv_4318_8995");
        other.save(&[entry(10, ConvWay::Burn)]).map_err(anyhow::Error::msg)?;
        store.save(&[entry(8, ConvWay::GemmTransposed)]).map_err(anyhow::Error::msg)?;
        assert_eq!(store.load(), Ok(vec![entry(8, ConvWay::GemmTransposed), entry(10, ConvWay::Burn)]));
        // Nothing left beside the file.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn another_gpu_or_build_has_its_own_file() {
        let dir = Path::new("/cache");
        let h200 = TuningStore::new(dir, "NVIDIA H200", "spirv_4318_8995");
        assert_ne!(h200.path(), TuningStore::new(dir, "NVIDIA H100 80GB HBM3", "spirv_4318_8993").path());
        assert_ne!(h200.path(), TuningStore::new(dir, "NVIDIA H200", "wgsl_4318_8995").path());
        assert_eq!(h200.path(), TuningStore::new(dir, "NVIDIA H200", "spirv_4318_8995").path());
    }

    #[test]
    fn a_broken_or_foreign_file_is_named_and_not_used() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = TuningStore::new(dir.path(), "NVIDIA H200", "spirv_4318_8995");
        std::fs::write(store.path(), "{\"lightbox_ai\": ")?;
        let err = store.load().err().unwrap_or_default();
        assert!(err.starts_with(&store.path().display().to_string()) && err.contains("not a tuning file"), "{err}");
        // Saving over a broken file replaces it.
        store.save(&[entry(8, ConvWay::Gemm)]).map_err(anyhow::Error::msg)?;
        assert_eq!(store.load(), Ok(vec![entry(8, ConvWay::Gemm)]));
        // A file renamed from another GPU's (or edited) says whose it is.
        let text = std::fs::read_to_string(store.path())?.replace("NVIDIA H200", "NVIDIA A100");
        std::fs::write(store.path(), text)?;
        let err = store.load().err().unwrap_or_default();
        assert!(err.contains("made for NVIDIA A100") && err.contains("not NVIDIA H200"), "{err}");
        Ok(())
    }
}
