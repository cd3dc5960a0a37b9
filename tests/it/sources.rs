//! What a user can point `lightbox` at besides a folder: a zip archive and a DICOMDIR.

use std::path::Path;
use std::process::Command;

use lightbox_tests::{bin, data, demo_study, run_ok};

/// Writes a zip with python's zipfile (a writer independent of ours): the demo study plus a
/// zip-slip entry, a nested archive and, optionally, a deflate bomb.
fn make_zip(out: &Path, bomb: bool) -> anyhow::Result<()> {
    let script = r#"
import os, sys, zipfile
out, demo, bomb = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for name in sorted(os.listdir(demo)):
        z.write(os.path.join(demo, name), "study/" + name)
    z.writestr("../../escape.dcm", b"not allowed")
    z.writestr("inner.zip", b"PK\x03\x04 nested")
    if bomb:
        with z.open("bomb.dcm", "w") as f:
            block = bytes(1 << 20)
            for _ in range(300):
                f.write(block)
"#;
    run_ok(Command::new("python3").args(["-c", script]).arg(out).arg(demo_study()).arg(if bomb { "1" } else { "0" }))?;
    Ok(())
}

#[test]
fn zip_archive_is_read_and_imported_with_its_bad_entries_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let archive = dir.path().join("from-the-cd.zip");
    make_zip(&archive, false)?;
    let info = run_ok(Command::new(bin("lightbox")?).arg("info").arg(&archive).env("TMPDIR", tmp.path()))?;
    assert!(info.contains("MR  256x256x20       20 instances"), "{info}");
    assert!(info.contains("entry \"../../escape.dcm\": path leaves the archive; skipped"), "{info}");
    assert!(info.contains("entry \"inner.zip\": an archive inside an archive is not opened"), "{info}");
    assert!(info.ends_with("20 files: 1 patients, 1 studies, 1 series, 2 unreadable\n"), "{info}");
    assert!(!dir.path().parent().unwrap_or(dir.path()).join("escape.dcm").exists());

    // A folder holding the archive: the archive is opened too.
    let imported = run_ok(
        Command::new(bin("lightbox")?)
            .arg("import")
            .arg(dir.path())
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("TMPDIR", tmp.path()),
    )?;
    assert!(imported.contains("imported 20, already stored 0"), "{imported}");
    // The expanded copy is gone once the command ends.
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 0, "temporary expansion left behind");
    Ok(())
}

#[test]
fn zip_bomb_is_stopped_not_expanded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let archive = dir.path().join("bomb.zip");
    make_zip(&archive, true)?;
    assert!(std::fs::metadata(&archive)?.len() < 4 << 20, "the bomb should be small on disk");
    let info = run_ok(Command::new(bin("lightbox")?).arg("info").arg(&archive).env("TMPDIR", tmp.path()))?;
    assert!(info.contains("entry \"bomb.dcm\": expands beyond"), "{info}");
    assert!(info.contains("20 instances"), "the good entries still load: {info}");
    Ok(())
}

#[test]
fn dicomdir_lists_the_files_to_read_even_with_changed_case() -> anyhow::Result<()> {
    let dicomdir = data("pydicom_testfiles/dicomdirtests/DICOMDIR")?;
    let info = run_ok(Command::new(bin("lightbox")?).arg("info").arg(&dicomdir))?;
    assert!(info.ends_with("31 files: 2 patients, 6 studies, 13 series, 0 unreadable\n"), "{info}");

    // The same disc copied by a system that lower-cased every name, and one file lost.
    let copy = tempfile::tempdir()?;
    let source = data("pydicom_testfiles/dicomdirtests")?;
    for entry in walkdir(&source)? {
        let relative = entry.strip_prefix(&source)?;
        let lowered: std::path::PathBuf = if relative == Path::new("DICOMDIR") {
            relative.to_owned()
        } else {
            relative.to_string_lossy().to_lowercase().into()
        };
        let target = copy.path().join(lowered);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&entry, &target)?;
    }
    let lost = copy.path().join("98892003/mr2/4981");
    std::fs::remove_file(&lost)?;
    let info = run_ok(Command::new(bin("lightbox")?).arg("info").arg(copy.path().join("DICOMDIR")))?;
    assert!(info.contains("lists 98892003\\MR2\\4981, which is not on the disc or folder"), "{info}");
    assert!(info.ends_with("30 files: 2 patients, 6 studies, 13 series, 1 unreadable\n"), "{info}");
    Ok(())
}

fn walkdir(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walkdir(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
