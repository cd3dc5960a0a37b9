//! What a user can point Lightbox at: a file, a folder (recursively), a DICOMDIR (the files it
//! lists, found case-insensitively as on CD-ROMs), or a zip archive (also inside a folder),
//! expanded into a private temporary folder with zip-slip and zip-bomb guards.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use lightbox_core::FileIssue;

use crate::DicomError;

/// Most bytes expanded from one archive: 50 × its size plus 64 MiB. DICOM compresses about
/// 2–4× (sparse label maps more); a deflate bomb expands 1000×.
fn expansion_budget(archive_bytes: u64) -> u64 {
    archive_bytes.saturating_mul(50).saturating_add(64 << 20)
}

/// The files to read, the problems found on the way, and the temporary folders that hold
/// expanded archives (deleted when the last holder drops them).
#[derive(Default)]
pub(crate) struct Sources {
    pub files: Vec<PathBuf>,
    pub issues: Vec<FileIssue>,
    pub keep: Vec<Arc<tempfile::TempDir>>,
}

pub(crate) fn collect(root: &Path) -> Result<Sources, DicomError> {
    let metadata = std::fs::metadata(root).map_err(|source| DicomError::Io { path: root.to_owned(), source })?;
    let mut sources = Sources::default();
    if metadata.is_file() {
        if is_zip(root) {
            expand_zip(root, &mut sources);
        } else if is_dicomdir_name(root) {
            read_dicomdir(root, &mut sources)?;
        } else {
            sources.files.push(root.to_owned());
        }
        return Ok(sources);
    }
    for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name() {
        match entry {
            Ok(e) if e.file_type().is_file() => {
                let path = e.into_path();
                if has_zip_extension(&path) && is_zip(&path) {
                    expand_zip(&path, &mut sources);
                } else {
                    sources.files.push(path);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let path = e.path().unwrap_or(root).to_owned();
                sources.issues.push(FileIssue { path, reason: format!("cannot read: {e}") });
            }
        }
    }
    Ok(sources)
}

fn has_zip_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

fn is_zip(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"PK\x03\x04"
}

fn is_dicomdir_name(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.eq_ignore_ascii_case("DICOMDIR"))
}

/// Expands an archive into a new temporary folder. Problems become issues naming the archive
/// and the entry; what could be expanded is kept.
fn expand_zip(archive: &Path, sources: &mut Sources) {
    let issue = |reason: String| FileIssue { path: archive.to_owned(), reason };
    let opened = std::fs::File::open(archive).map_err(|e| e.to_string()).and_then(|f| {
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        zip::ZipArchive::new(std::io::BufReader::new(f)).map(|z| (z, size)).map_err(|e| e.to_string())
    });
    let (mut zip, archive_bytes) = match opened {
        Ok(z) => z,
        Err(e) => {
            sources.issues.push(issue(format!("unreadable zip archive: {e}")));
            return;
        }
    };
    let temp = match tempfile::Builder::new().prefix("lightbox-zip-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            sources.issues.push(issue(format!("cannot create a folder to expand it: {e}")));
            return;
        }
    };
    let mut budget = expansion_budget(archive_bytes);
    for index in 0..zip.len() {
        let mut entry = match zip.by_index(index) {
            Ok(entry) => entry,
            Err(e) => {
                sources.issues.push(issue(format!("entry {index}: {e}")));
                continue;
            }
        };
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_else(|_| format!("#{index}"));
        let Some(relative) = entry.enclosed_name() else {
            sources.issues.push(issue(format!("entry {name:?}: path leaves the archive; skipped")));
            continue;
        };
        if has_zip_extension(&relative) {
            sources.issues.push(issue(format!("entry {name:?}: an archive inside an archive is not opened")));
            continue;
        }
        let target = temp.path().join(&relative);
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(&target))
            .and_then(|mut out| std::io::copy(&mut (&mut entry).take(budget + 1), &mut out));
        match written {
            Ok(n) if n > budget => {
                let _ = std::fs::remove_file(&target);
                sources.issues.push(issue(format!(
                    "entry {name:?}: expands beyond {} MiB, more than any DICOM archive of this size; the rest is skipped",
                    expansion_budget(archive_bytes) >> 20
                )));
                break;
            }
            Ok(n) => {
                budget -= n;
                sources.files.push(target);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&target);
                sources.issues.push(issue(format!("entry {name:?}: {e}")));
            }
        }
    }
    sources.files.sort();
    sources.keep.push(Arc::new(temp));
}

/// Reads a DICOMDIR and lists the files its records reference.
fn read_dicomdir(path: &Path, sources: &mut Sources) -> Result<(), DicomError> {
    let obj = crate::header::open(path, true)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let records = obj
        .element(tags::DIRECTORY_RECORD_SEQUENCE)
        .map_err(|_| DicomError::MissingAttribute { path: path.to_owned(), attribute: "DirectoryRecordSequence" })?;
    let items = records.items().unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for item in items {
        let Ok(id) = item.element(tags::REFERENCED_FILE_ID) else { continue };
        let Ok(components) = id.to_multi_str() else { continue };
        let components: Vec<String> =
            components.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect();
        let shown = components.join("\\");
        match resolve(base, &components) {
            Some(file) => {
                if seen.insert(file.clone()) {
                    sources.files.push(file);
                }
            }
            None => sources.issues.push(FileIssue {
                path: path.to_owned(),
                reason: format!("lists {shown}, which is not on the disc or folder"),
            }),
        }
    }
    sources.files.sort();
    Ok(())
}

/// Finds `base/c1/c2/…`, matching each component case-insensitively (CD file systems and
/// copies made on other systems change the case). Components that would leave `base` are
/// refused.
fn resolve(base: &Path, components: &[String]) -> Option<PathBuf> {
    let mut current = base.to_owned();
    for component in components {
        if Path::new(component).components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        let exact = current.join(component);
        if exact.exists() {
            current = exact;
            continue;
        }
        let found = std::fs::read_dir(&current)
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_str().is_some_and(|n| n.eq_ignore_ascii_case(component)))?;
        current = found.path();
    }
    current.is_file().then_some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_case_insensitively_and_refuses_escapes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("dicom/st000001"))?;
        std::fs::write(dir.path().join("dicom/st000001/im000001"), b"x")?;
        let found = resolve(dir.path(), &["DICOM".into(), "ST000001".into(), "IM000001".into()]);
        assert_eq!(found, Some(dir.path().join("dicom/st000001/im000001")));
        assert_eq!(resolve(dir.path(), &["..".into(), "etc".into()]), None);
        assert_eq!(resolve(dir.path(), &["/etc/passwd".into()]), None);
        assert_eq!(resolve(dir.path(), &["DICOM".into(), "NOPE".into()]), None);
        Ok(())
    }
}
