//! dcmtk helpers for the PACS tests: copies of real files with fresh UIDs (many test files share
//! SOP Instance UIDs, and a PACS keeps one copy per UID), and the dcmtk network peers.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

use crate::run_ok;

/// A new globally unique UID under the UUID-derived root `2.25` (random 122-bit number).
pub fn new_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut random = 0u128;
    for half in 0..2 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher
            .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        hasher.write_u32(std::process::id());
        random |= u128::from(hasher.finish()) << (64 * half);
    }
    // A version-4 UUID has 122 random bits; keep the same size so UIDs stay under 64 characters.
    format!("2.25.{}", random >> 6)
}

/// Which UIDs the copies get besides a new SOP Instance UID each.
#[derive(Clone, Debug)]
pub enum Uids {
    /// All copies in one series of one study with these UIDs.
    Series { study: String, series: String },
    /// Each copy in a new study and series of its own.
    EachOwnStudy,
    /// Study and series UIDs as they were.
    Keep,
}

impl Uids {
    /// One new series in one new study.
    pub fn new_series() -> Self {
        Self::Series { study: new_uid(), series: new_uid() }
    }
}

/// Copies `files` into `dir` (created if needed) and gives each copy a new SOP Instance UID (and
/// study/series UIDs per `uids`), then sets the `inserts` (`("(0010,0010)", "DOE^JOHN")`, given to
/// `dcmodify -i`). Returns the copies in the order of `files`.
pub fn copy_with_new_uids(
    files: &[PathBuf],
    dir: &Path,
    uids: &Uids,
    inserts: &[(&str, &str)],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut copies = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let name = file.file_name().with_context(|| format!("{} has no file name", file.display()))?;
        let copy = dir.join(format!("{i:05}-{}", name.to_string_lossy()));
        std::fs::copy(file, &copy).with_context(|| format!("copying {}", file.display()))?;
        // The shared data is read-only; the copy must not be.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&copy)?.permissions().mode();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode | 0o200))?;
        }
        copies.push(copy);
    }
    let mut args: Vec<String> = vec!["-nb".into(), "-gin".into()];
    match uids {
        Uids::Series { study, series } => {
            args.extend(["-i".into(), format!("(0020,000d)={study}"), "-i".into(), format!("(0020,000e)={series}")]);
        }
        Uids::EachOwnStudy => args.extend(["-gst".into(), "-gse".into()]),
        Uids::Keep => {}
    }
    for (tag, value) in inserts {
        args.extend(["-i".into(), format!("{tag}={value}")]);
    }
    for chunk in copies.chunks(200) {
        run_ok(Command::new("dcmodify").args(&args).args(chunk)).context("dcmodify (apt-get install dcmtk)")?;
    }
    Ok(copies)
}

/// The DICOM files of a folder (not recursive), sorted by name; files that do not end in `.dcm`
/// are left out.
pub fn dicom_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no .dcm files in {}", dir.display());
    }
    Ok(files)
}

/// `echoscu` to `aet@127.0.0.1:port` as `LIGHTBOX-TEST`.
pub fn echoscu(aet: &str, port: u16) -> anyhow::Result<()> {
    run_ok(Command::new("echoscu").args(["-aet", "LIGHTBOX-TEST", "-aec", aet, "127.0.0.1", &port.to_string()]))?;
    Ok(())
}

/// `storescu` of `files` to `aet@127.0.0.1:port` with extra options (`-xs`, `-xt`…).
pub fn storescu(aet: &str, port: u16, options: &[&str], files: &[PathBuf]) -> anyhow::Result<String> {
    run_ok(
        Command::new("storescu")
            .args(["-aet", "LIGHTBOX-TEST", "-aec", aet])
            .args(options)
            .args(["127.0.0.1", &port.to_string()])
            .args(files),
    )
}
