//! The local store on a real SQLite file: idempotent import, content-addressed files, worklist
//! queries, audit log.

use std::path::Path;

use lightbox_store::{ImportOutcome, Store, WorklistQuery, WorklistSort};
use lightbox_tests::{data, demo_study};

fn import_folder(store: &mut Store, folder: &Path) -> anyhow::Result<(usize, usize)> {
    let (mut imported, mut already) = (0, 0);
    for entry in walk(folder)? {
        match store.import_file(&entry) {
            Ok(ImportOutcome::Imported) => imported += 1,
            Ok(ImportOutcome::AlreadyStored) => already += 1,
            Err(_) => {} // non-DICOM files beside the data
        }
    }
    Ok((imported, already))
}

fn walk(folder: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[test]
fn importing_twice_stores_each_instance_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(dir.path())?;
    assert_eq!(import_folder(&mut store, &demo_study())?, (20, 0));
    drop(store);
    // Reopen: the index is on disk, a second import writes nothing.
    let mut store = Store::open(dir.path())?;
    assert_eq!(import_folder(&mut store, &demo_study())?, (0, 20));
    assert_eq!(store.instance_count()?, 20);

    // The stored file is byte-identical to the source, and no temporary file is left.
    let source = demo_study().join("000007.dcm");
    let record = lightbox_dicom::read_instance(&source)?;
    let stored = store.instance_file(&record.sop_instance_uid)?.ok_or_else(|| anyhow::anyhow!("not stored"))?;
    assert_eq!(std::fs::read(&stored)?, std::fs::read(&source)?);
    let leftovers =
        walk(&dir.path().join("objects"))?.into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).count();
    assert_eq!(leftovers, 0);
    Ok(())
}

/// The files of a series imported together appear in the index all at once: another reader
/// (the engine, deciding whether a series has settled) sees none of them while they are copied,
/// then all. A file among them that is not DICOM is refused by name, a second copy of a file is
/// stored once, and neither stops the rest.
#[test]
fn a_series_imported_together_is_indexed_whole_or_not_at_all() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let mut store = Store::open(&root)?;
    let mut files = walk(&demo_study())?;
    let instances = files.len();
    let junk = dir.path().join("IM0005.dcm");
    std::fs::write(&junk, "not an image")?;
    files.insert(5, junk.clone());
    files.push(files[0].clone());
    let reader = Store::open(&root)?;
    let mut seen_while_copying = Vec::new();
    let outcomes = store.import_files(&files, |_| seen_while_copying.push(reader.instance_count().ok()));
    assert_eq!(seen_while_copying, vec![Some(0); files.len()]);
    assert_eq!(reader.instance_count()?, instances as u64);
    let imported = outcomes.iter().filter(|o| matches!(o, Ok(ImportOutcome::Imported))).count();
    assert_eq!(imported, instances);
    assert!(matches!(outcomes.last(), Some(Ok(ImportOutcome::AlreadyStored))), "{:?}", outcomes.last());
    match &outcomes[5] {
        Err(e) => assert!(e.to_string().starts_with(&format!("{}: not a DICOM file", junk.display())), "{e}"),
        Ok(o) => anyhow::bail!("junk imported: {o:?}"),
    }
    // Again: nothing new, and the index agrees with the objects.
    let again = store.import_files(&files, |_| {});
    assert_eq!(again.iter().filter(|o| matches!(o, Ok(ImportOutcome::AlreadyStored))).count(), instances + 1);
    // Arrivals are numbered 1…n; what the engine would look for after the last is nothing.
    let series = lightbox_dicom::read_instance(&files[0])?.series_uid.to_string();
    assert_eq!(reader.last_arrival()?, instances as i64);
    assert_eq!(reader.series_arrived_after(0)?, [(series, instances as i64)]);
    assert_eq!(reader.series_arrived_after(instances as i64)?, []);
    let report = store.verify()?;
    assert!(report.is_consistent() && report.instances as usize == instances, "{report:?}");
    Ok(())
}

/// What an import cut short leaves (files copied whose index rows never committed, a redundant
/// copy of a stored instance, a half-written temporary file) is found by `lightbox verify`;
/// `--repair` indexes the files, keeps the copy and removes only the temporary file. A
/// damaged instance makes `verify` fail, naming it.
#[test]
fn verify_finds_what_an_interrupted_import_left_and_repair_brings_it_back() -> anyhow::Result<()> {
    use anyhow::{Context, ensure};
    use std::process::Command;

    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let mut store = Store::open(&root)?;
    let files = walk(&demo_study())?;
    ensure!(store.import_files(&files, |_| {}).iter().all(|o| matches!(o, Ok(ImportOutcome::Imported))));
    let uids: Vec<String> = files[..3]
        .iter()
        .map(|f| Ok(lightbox_dicom::read_instance(f)?.sop_instance_uid))
        .collect::<anyhow::Result<_>>()?;
    // The crash: three index rows never committed, a copy of an instance was stored under
    // another name (its first push broke off, and it came again), a write was cut short.
    for uid in &uids {
        store.connection().execute("DELETE FROM instances WHERE sop_uid = ?1", [uid])?;
    }
    store.connection().execute("UPDATE studies SET instances = instances - 3", [])?;
    let copy = root.join("objects/00").join(format!("{}.dcm", "0".repeat(62)));
    std::fs::create_dir_all(copy.parent().context("no folder")?)?;
    std::fs::copy(&files[5], &copy)?;
    std::fs::write(root.join("objects/00/.1234.99.tmp"), b"half")?;
    let verify = |args: &[&str]| {
        let mut command = Command::new(lightbox_tests::bin("lightbox")?);
        command.arg("verify").args(args).arg("--store").arg(&root);
        anyhow::Ok(command)
    };
    let out = lightbox_tests::run_ok(&mut verify(&[])?)?;
    ensure!(out.contains("17 instance(s) checked, 0 missing, 0 damaged"), "{out}");
    ensure!(out.contains("left by interrupted imports: 4 unindexed file(s), 1 temporary file(s)"), "{out}");
    // Files younger than an hour may be an import going on now: left alone.
    let out = lightbox_tests::run_ok(&mut verify(&["--repair"])?)?;
    ensure!(out.contains("indexed 0 file(s)") && out.contains("17 instance(s) checked"), "{out}");
    let out = lightbox_tests::run_ok(&mut verify(&["--repair", "--min-age-s", "0"])?)?;
    ensure!(
        out.contains(
            "indexed 3 file(s) left by interrupted imports, removed 1 temporary file(s); kept 1 copy(ies) of stored instances"
        ),
        "{out}"
    );
    ensure!(out.contains("20 instance(s) checked, 0 missing, 0 damaged"), "{out}");
    ensure!(out.contains("left by interrupted imports: 1 unindexed file(s), 0 temporary file(s) (copies"), "{out}");
    ensure!(copy.exists() && store.instance_count()? == 20);
    ensure!(store.worklist(&WorklistQuery::default())?.first().map(|s| s.instances) == Some(20));
    // A damaged file: verify fails and names the instance.
    let victim = store.instance_file(&uids[1])?.context("not stored")?;
    std::fs::write(&victim, b"damaged")?;
    let out = verify(&[])?.output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(!out.status.success(), "{stdout}");
    ensure!(stdout.contains(&format!("damaged: instance {}", uids[1])), "{stdout}");
    ensure!(stderr.contains("1 stored instance(s) missing or damaged"), "{stderr}");
    Ok(())
}

/// The same files imported twice at once (two processes, or a repair beside an import): the
/// import that indexes second finds them indexed and says "already stored", not an error, and
/// the study counts each instance once.
#[test]
fn the_same_files_imported_twice_at_once_are_stored_once_without_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("store");
    let (mut first, mut second) = (Store::open(&root)?, Store::open(&root)?);
    let files = walk(&demo_study())?;
    let mut raced = Vec::new();
    // After `first` has copied its first file, `second` imports them all.
    let outcomes = first.import_files(&files, |_| {
        if raced.is_empty() {
            raced = files.iter().map(|f| second.import_file(f)).collect();
        }
    });
    assert!(raced.iter().all(|o| matches!(o, Ok(ImportOutcome::Imported))), "{raced:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Ok(ImportOutcome::AlreadyStored))), "{outcomes:?}");
    assert_eq!(first.instance_count()?, files.len() as u64);
    let studies = first.worklist(&WorklistQuery::default())?;
    assert_eq!(studies.iter().map(|s| s.instances as usize).collect::<Vec<_>>(), [files.len()]);
    Ok(())
}

#[test]
fn a_file_that_is_not_dicom_is_refused_by_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(&dir.path().join("store"))?;
    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "not an image")?;
    let err = store.import_file(&junk).expect_err("not DICOM");
    assert!(err.to_string().starts_with(&format!("{}: not a DICOM file", junk.display())), "{err}");
    assert_eq!(store.instance_count()?, 0);
    Ok(())
}

#[test]
fn worklist_filters_sorts_and_pages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut store = Store::open(dir.path())?;
    import_folder(&mut store, &demo_study())?;
    import_folder(&mut store, &data("dcm_qa_nih/In")?)?;

    let all = store.worklist(&WorklistQuery::default())?;
    assert_eq!(all.len(), 3);
    // Newest first: the two 2018 studies, then the 1971 prostate study.
    assert_eq!(all.iter().map(|s| s.date.as_str()).collect::<Vec<_>>(), ["20180918", "20180918", "19710714"]);
    let prostate = &all[2];
    assert_eq!((prostate.patient_id.as_str(), prostate.modalities.as_str()), ("QIN-PROSTATE-01-0001", "MR"));
    assert_eq!((prostate.series, prostate.instances), (1, 20));
    let ge = all.iter().find(|s| s.instances == 600).ok_or_else(|| anyhow::anyhow!("GE study: {all:?}"))?;
    assert_eq!(ge.series, 4);

    // Case-insensitive name wildcard, and `?` for one character.
    let by_name = |pattern: &str| -> anyhow::Result<usize> {
        Ok(store.worklist(&WorklistQuery { patient_name: Some(pattern.into()), ..Default::default() })?.len())
    };
    assert_eq!(by_name("test^*")?, 2);
    assert_eq!(by_name("TEST^REGRESSIO?")?, 2);
    assert_eq!(by_name("nobody*")?, 0);

    let dated = store.worklist(&WorklistQuery {
        date_from: Some("19700101".into()),
        date_to: Some("19791231".into()),
        ..Default::default()
    })?;
    assert_eq!(dated.len(), 1);
    assert_eq!(dated[0].study_uid, prostate.study_uid);

    let id = store.worklist(&WorklistQuery { patient_id: Some("QIN-*".into()), ..Default::default() })?;
    assert_eq!(id.len(), 1);
    let ct = store.worklist(&WorklistQuery { modality: Some("CT".into()), ..Default::default() })?;
    assert!(ct.is_empty());

    let oldest = WorklistQuery { sort: WorklistSort::DateOldestFirst, limit: 1, offset: 1, ..Default::default() };
    let page = store.worklist(&oldest)?;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].date, "20180918");
    Ok(())
}

#[test]
fn audit_log_keeps_who_did_what_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    store.audit("radiologist-1", "open", "1.2.3", "viewer")?;
    store.audit("lightbox", "export", "1.2.4", "nifti")?;
    assert_eq!(
        store.audit_log()?,
        vec![
            ("radiologist-1".to_owned(), "open".to_owned(), "1.2.3".to_owned()),
            ("lightbox".to_owned(), "export".to_owned(), "1.2.4".to_owned())
        ]
    );
    Ok(())
}

#[test]
fn cli_import_then_worklist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lightbox = lightbox_tests::bin("lightbox")?;
    let import = || {
        lightbox_tests::run_ok(
            std::process::Command::new(&lightbox).arg("import").arg(demo_study()).arg("--store").arg(dir.path()),
        )
    };
    let first = import()?;
    assert!(
        first.ends_with(&format!("imported 20, already stored 0, not imported 0 (store {})\n", dir.path().display())),
        "{first}"
    );
    let second = import()?;
    assert!(second.starts_with("imported 0, already stored 20, not imported 0"), "{second}");
    let list = lightbox_tests::run_ok(
        std::process::Command::new(&lightbox).arg("worklist").arg("--store").arg(dir.path()).args(["--id", "QIN-*"]),
    )?;
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 1, "{list}");
    assert!(lines[0].starts_with("19710714   QIN-PROSTATE-01-0001"), "{list}");
    assert!(lines[0].contains("1 series     20 instances"), "{list}");
    Ok(())
}

/// kill -9 of `lightbox import` at several moments, then a restart: every indexed instance has its
/// intact file, and importing again completes the store with nothing duplicated.
#[test]
fn import_killed_midway_leaves_a_consistent_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lightbox = lightbox_tests::bin("lightbox")?;
    let source = data("dcm_qa_nih/In")?;
    let mut interrupted = 0;
    for delay_ms in [40u64, 120, 250, 500] {
        let mut child = std::process::Command::new(&lightbox)
            .arg("import")
            .arg(&source)
            .arg("--store")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait()?.is_none() {
            interrupted += 1;
        }
        child.kill().ok(); // SIGKILL: no cleanup runs
        child.wait()?;
        let store = Store::open(dir.path())?;
        let report = store.verify()?;
        assert!(report.is_consistent(), "after kill at {delay_ms} ms: {report:?}");
    }
    assert!(interrupted > 0, "every import finished before the kill; the test proved nothing");
    // What the kills left unindexed is whole: a repair indexes it, none is refused.
    let mut store = Store::open(dir.path())?;
    let (before, left) = (store.instance_count()?, store.verify()?.unindexed_objects.len());
    let repaired = store.repair(std::time::Duration::ZERO)?;
    assert!(repaired.refused.is_empty() && repaired.indexed + repaired.copies_kept == left, "{repaired:?}");
    assert_eq!(store.instance_count()?, before + repaired.indexed as u64);
    let report = store.verify()?;
    assert!(report.is_consistent() && report.unindexed_objects.is_empty() && report.temporary_files.is_empty());
    drop(store);
    let done = lightbox_tests::run_ok(
        std::process::Command::new(&lightbox).arg("import").arg(&source).arg("--store").arg(dir.path()),
    )?;
    let store = Store::open(dir.path())?;
    assert_eq!(store.instance_count()?, 608, "{done}");
    let report = store.verify()?;
    assert!(report.is_consistent() && report.instances == 608, "{report:?}");
    Ok(())
}
