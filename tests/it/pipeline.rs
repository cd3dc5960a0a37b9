//! Dispatch rules and a real pipeline end to end: a series pushed by dcmtk `storescu` into
//! `lightbox listen` is matched by a rule, analysed once (threshold volume → DICOM SEG + SR),
//! and the results reach a real Orthanc exactly once, also when the series is pushed again.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use lightbox_tests::orthanc::{Orthanc, free_port};
use lightbox_tests::{KillOnDrop, Lines, bin, demo_study, run_ok};

const RULES: &str = r#"
[[rule]]
name = "diffusion maps"
pipeline = "threshold-volume"
modality = "MR"
description = "diffusion"
sequence = ["ADC", "DWI"]
plane = "axial"
body_part = "PROSTATE|PELVIS"
min_instances = 10
threshold = 1500.0
auto_send = true

[[rule]]
name = "CT only"
pipeline = "threshold-volume"
modality = "CT"
"#;

/// A store in `dir` holding the demo study; the demo series' UID.
fn demo_store(dir: &std::path::Path) -> anyhow::Result<(std::path::PathBuf, String)> {
    let store = dir.join("store");
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(demo_study()).arg("--store").arg(&store))?;
    let series = lightbox_dicom::scan_path(&demo_study())?.series().next().context("no series")?.1.uid.to_string();
    Ok((store, series))
}

/// `lightbox <args> --store <store>` with the Orthanc as the configured PACS.
fn with_pacs(store: &std::path::Path, orthanc: &Orthanc, args: &[&str]) -> anyhow::Result<String> {
    run_ok(
        Command::new(bin("lightbox")?)
            .args(args)
            .arg("--store")
            .arg(store)
            .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
            .env("LIGHTBOX_PACS_USER", orthanc.user())
            .env("LIGHTBOX_PACS_PASSWORD", orthanc.password()),
    )
}

/// Our own count of voxels above 1500 in the demo volume, times the voxel volume.
fn expected_volume_mm3() -> anyhow::Result<f64> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().context("no series")?;
    let volume = report.display_sets(series).first().context("no set")?.load(0)?;
    let voxels = volume.voxels().iter().filter(|&&v| v > 1500.0).count();
    Ok(voxels as f64 * volume.spacing_mm().iter().product::<f64>())
}

#[test]
fn rules_check_explains_and_run_happens_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES)?;
    let store = dir.path().join("store");
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(demo_study()).arg("--store").arg(&store))?;

    let check = run_ok(Command::new(bin("lightbox")?).args(["rules", "check"]).arg(&rules).arg("--store").arg(&store))?;
    ensure!(check.contains("MATCH    rule \"diffusion maps\" -> threshold-volume: modality MR is MR"), "{check}");
    ensure!(check.contains("matches /diffusion/") && check.contains("20 instances >= 10"), "{check}");
    ensure!(check.contains("sequence ADC (echo-planar") && check.contains("is one of ADC/DWI"), "{check}");
    ensure!(check.contains("plane axial is axial") && check.contains("body part PROSTATE matches"), "{check}");
    ensure!(check.contains("no match rule \"CT only\" -> threshold-volume: modality MR is not CT"), "{check}");

    let series = lightbox_dicom::scan_path(&demo_study())?.series().next().context("no series")?.1.uid.to_string();
    let run = |extra: &[&str]| {
        run_ok(
            Command::new(bin("lightbox")?)
                .args(["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--store"])
                .arg(&store)
                .args(extra),
        )
    };
    let first = run(&[])?;
    let volume: f64 =
        first.split(", volume ").nth(1).and_then(|v| v.split(' ').next()).context("no volume printed")?.parse()?;
    let expected = expected_volume_mm3()?;
    ensure!((volume - expected).abs() < 0.1, "{volume} vs {expected}: {first}");
    let second = run(&[])?;
    ensure!(second.contains("done before"), "{second}");
    let jobs = run_ok(Command::new(bin("lightbox")?).arg("jobs").arg("--store").arg(&store))?;
    ensure!(jobs.lines().count() == 1 && jobs.contains("done") && jobs.contains("threshold-volume"), "{jobs}");
    // The results are in the store: the study now has the image series, a SEG and an SR.
    let worklist = run_ok(Command::new(bin("lightbox")?).arg("worklist").arg("--store").arg(&store))?;
    ensure!(worklist.contains("MR\\SEG\\SR") && worklist.contains("3 series"), "{worklist}");
    Ok(())
}

#[test]
fn pushed_series_is_analysed_and_results_reach_the_pacs_exactly_once() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES)?;
    let port = free_port()?;
    let mut listener = KillOnDrop(
        Command::new(bin("lightbox")?)
            .args(["listen", "--bind", "127.0.0.1", "--port", &port.to_string(), "--rules"])
            .arg(&rules)
            .arg("--store")
            .arg(dir.path().join("store"))
            .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
            .env("LIGHTBOX_PACS_USER", orthanc.user())
            .env("LIGHTBOX_PACS_PASSWORD", orthanc.password())
            .env("LIGHTBOX_SETTLE_MS", "1500")
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = Lines::new(listener.0.stdout.take().context("no stdout")?);
    lines.wait_for("listening as LIGHTBOX", Duration::from_secs(10))?;

    let push = |files: &[std::path::PathBuf]| {
        run_ok(Command::new("storescu").args(["-aec", "LIGHTBOX", "127.0.0.1", &port.to_string()]).args(files))
    };
    let mut files: Vec<_> = std::fs::read_dir(demo_study())?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    // In two associations, as a modality sending slice by slice does: the series settles
    // first, so it is analysed once, whole.
    let (first_half, second_half) = files.split_at(files.len() / 2);
    push(first_half)?;
    push(second_half)?;
    let done = lines.wait_for("pipeline threshold-volume on", Duration::from_secs(60))?;
    ensure!(done.contains("2 queued for the PACS"), "{done}");
    let queued: Vec<&String> = lines.seen.iter().filter(|l| l.contains(" queued: rule")).collect();
    ensure!(queued.len() == 1, "one job for the whole series, not one per part: {queued:?}");
    let volume: f64 =
        done.split(", volume ").nth(1).and_then(|v| v.split(' ').next()).context("no volume in the line")?.parse()?;
    ensure!((volume - expected_volume_mm3()?).abs() < 0.5, "{volume} is not the whole series' volume");
    let sent = lines.wait_for("outbox:", Duration::from_secs(30))?;
    ensure!(sent.contains("sent 2,"), "{sent}");
    ensure!(orthanc.instance_count()? == 2, "Orthanc has {} instances", orthanc.instance_count()?);
    let modalities: Vec<String> = orthanc
        .get_json("/series?expand")?
        .as_array()
        .context("no series list")?
        .iter()
        .filter_map(|s| s["MainDicomTags"]["Modality"].as_str().map(str::to_owned))
        .collect();
    ensure!(modalities.contains(&"SEG".to_owned()) && modalities.contains(&"SR".to_owned()), "{modalities:?}");

    // The same series again: no second analysis, nothing new on the PACS.
    push(&files)?;
    let again = lines.wait_for("pipeline threshold-volume on", Duration::from_secs(60))?;
    ensure!(again.contains("done before"), "{again}");
    std::thread::sleep(Duration::from_millis(300));
    ensure!(orthanc.instance_count()? == 2);
    Ok(())
}

/// A job cut short after writing its results (the state a kill -9 leaves) runs again on the
/// next request, writes the very same SEG and SR (deterministic UIDs), and nothing reaches
/// the PACS twice.
#[test]
fn a_job_cut_short_runs_again_with_the_same_results_and_sends_nothing_twice() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    let lightbox = |args: &[&str]| with_pacs(&store, &orthanc, args);
    let run = ["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--send-to", "pacs"];
    let first = lightbox(&run)?;
    ensure!(first.contains("2 queued for the PACS"), "{first}");
    ensure!(lightbox(&["pacs", "drain"])?.starts_with("sent 2,"));
    ensure!(orthanc.instance_count()? == 2);

    // The crash: results written and sent, the job never marked done.
    let db = rusqlite::Connection::open(store.join("index.sqlite"))?;
    ensure!(db.execute("UPDATE jobs SET state = 'running'", [])? == 1);
    drop(db);

    let again = lightbox(&run)?;
    ensure!(again.contains("job 1 done") && again.contains("0 queued for the PACS"), "{again}");
    let uids =
        |line: &str| line.split("SEG ").nth(1).map(|rest| rest.split(", ").next().unwrap_or_default().to_owned());
    ensure!(uids(&first) == uids(&again) && uids(&first).is_some(), "{first}\n{again}");
    ensure!(lightbox(&["pacs", "drain"])?.starts_with("sent 0, already on the PACS 0"));
    ensure!(orthanc.instance_count()? == 2, "a result reached the PACS twice");
    let jobs = lightbox(&["jobs"])?;
    ensure!(jobs.lines().count() == 1 && jobs.contains("done"), "{jobs}");
    Ok(())
}

/// A real crash: `lightbox run` is killed (SIGKILL) at the worst moment, its results stored
/// and queued but the job not marked done. While its lease holds nobody else runs the job;
/// once it lapses, `lightbox listen` picks the job up by itself, finishes it with the same
/// UIDs, and the results reach Orthanc exactly once.
#[test]
fn a_job_killed_mid_run_is_finished_once_by_the_next_runner() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    let pacs_env = |c: &mut Command| {
        c.env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
            .env("LIGHTBOX_PACS_USER", orthanc.user())
            .env("LIGHTBOX_PACS_PASSWORD", orthanc.password())
            .env("LIGHTBOX_JOB_LEASE_SECS", "2");
    };
    let mut run = Command::new(bin("lightbox")?);
    run.args(["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--send-to", "pacs", "--store"])
        .arg(&store)
        .env("LIGHTBOX_FAULT_PAUSE", "finishing:60000")
        .stdout(Stdio::null());
    pacs_env(&mut run);
    let mut child = KillOnDrop(run.spawn()?);
    let db = rusqlite::Connection::open(store.join("index.sqlite"))?;
    let stage = || -> rusqlite::Result<(String, String)> {
        db.query_row("SELECT state, stage FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?)))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stage().ok() != Some(("running".into(), "finishing".into())) {
        ensure!(std::time::Instant::now() < deadline, "the job never reached 'finishing': {:?}", stage());
        ensure!(child.0.try_wait()?.is_none(), "lightbox run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.0.kill()?; // SIGKILL: no destructor, no clean-up
    child.0.wait()?;
    let queued: i64 = db.query_row("SELECT count(*) FROM outbox WHERE state = 'pending'", [], |r| r.get(0))?;
    ensure!(queued == 2 && stage()?.0 == "running", "the crash state: {queued} queued, job {:?}", stage()?);

    // While the dead runner's lease holds, a second runner does not take the job.
    let mut again = Command::new(bin("lightbox")?);
    again.args(["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--send-to", "pacs", "--store"]);
    again.arg(&store);
    pacs_env(&mut again);
    let busy = again.output()?;
    let says = String::from_utf8_lossy(&busy.stderr).into_owned();
    ensure!(!busy.status.success() && says.contains("running in another process"), "{says}");

    // The daemon finds the orphan once the lease lapsed, finishes it and sends the results.
    std::thread::sleep(Duration::from_millis(2100));
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES)?;
    let mut listen = Command::new(bin("lightbox")?);
    listen
        .args(["listen", "--bind", "127.0.0.1", "--port", &free_port()?.to_string(), "--rules"])
        .arg(&rules)
        .arg("--store")
        .arg(&store)
        .stdout(Stdio::piped());
    pacs_env(&mut listen);
    let mut listener = KillOnDrop(listen.spawn()?);
    let mut lines = Lines::new(listener.0.stdout.take().context("no stdout")?);
    let done = lines.wait_for("pipeline threshold-volume on", Duration::from_secs(60))?;
    ensure!(done.contains("job 1 done") && done.contains("0 queued for the PACS"), "{done}");
    let sent = lines.wait_for("outbox:", Duration::from_secs(30))?;
    ensure!(sent.contains("sent 2,"), "{sent}");
    ensure!(orthanc.instance_count()? == 2, "Orthanc has {} instances", orthanc.instance_count()?);
    let (state, runs): (String, i64) =
        db.query_row("SELECT state, runs FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    ensure!(state == "done" && runs == 2, "{state}, {runs} runs");
    let jobs: i64 = db.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))?;
    ensure!(jobs == 1, "{jobs} jobs");
    Ok(())
}

/// Without auto_send nothing leaves unsigned; the radiologist signs, and a VERIFIED SR naming
/// them (with the SEG) reaches Orthanc.
#[test]
fn results_wait_for_sign_off_then_a_verified_report_reaches_the_pacs() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    let lightbox = |args: &[&str]| with_pacs(&store, &orthanc, args);
    let ran = lightbox(&["run", "threshold-volume", "--series", &series, "--threshold", "1500"])?;
    ensure!(ran.contains("0 queued for the PACS"), "{ran}");
    let status = run_ok(
        Command::new(bin("lightbox")?)
            .args(["pacs", "status"])
            .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
            .env("LIGHTBOX_PACS_USER", orthanc.user())
            .env("LIGHTBOX_PACS_PASSWORD", orthanc.password()),
    )?;
    ensure!(status.contains("reachable (") && !status.contains("unreachable"), "{status}");
    ensure!(lightbox(&["pacs", "drain"])?.starts_with("sent 0,"));
    ensure!(orthanc.instance_count()? == 0, "an unsigned result left");
    let results = lightbox(&["results"])?;
    ensure!(results.contains("awaiting review") && results.contains("AI volume"), "{results}");
    // Whose images, when, what: the demo's patient, study date and series description.
    let demo = lightbox_dicom::read_instance(&std::fs::read_dir(demo_study())?.next().context("empty demo")??.path())?;
    let whose = format!("{} ({}, {}) {}", demo.patient.name, demo.patient.id, demo.study_date, demo.series_description);
    ensure!(results.contains(&whose), "{whose:?} not in {results}");

    // A result is only signed for the instances it was computed on.
    let extra = tempfile::tempdir()?;
    let first_file = std::fs::read_dir(demo_study())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "dcm"))
        .context("no demo file")?;
    let copies = lightbox_tests::dcmtk::copy_with_new_uids(
        &[first_file],
        extra.path(),
        &lightbox_tests::dcmtk::Uids::Keep,
        &[],
    )?;
    let changed_store = dir.path().join("changed");
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(demo_study()).arg("--store").arg(&changed_store))?;
    let changed = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(bin("lightbox")?).args(args).arg("--store").arg(&changed_store).output()?)
    };
    changed(&["run", "threshold-volume", "--series", &series, "--threshold", "1500"])?;
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(&copies[0]).arg("--store").arg(&changed_store))?;
    let refused = changed(&["sign", "--job", "1", "--as", "Doe^Jane"])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(!refused.status.success() && stderr.contains("changed since job 1 ran"), "{stderr}");

    // The radiologist's own measurement goes into the report they sign, marked as theirs.
    let bad = Command::new(bin("lightbox")?)
        .args(["measure", "add", "--series", &series, "--kind", "girth", "--label", "x", "--value", "1"])
        .args(["--unit", "mm", "--as", "Doe^Jane", "--store"])
        .arg(&store)
        .output()?;
    ensure!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown kind \"girth\""));
    lightbox(&[
        "measure",
        "add",
        "--series",
        &series,
        "--kind",
        "diameter",
        "--label",
        "Lesion 1 long axis",
        "--value",
        "12.5",
        "--unit",
        "mm",
        "--as",
        "Doe^Jane",
    ])?;
    ensure!(lightbox(&["measure", "list", "--series", &series])?.contains("Lesion 1 long axis"));

    let signed = lightbox(&["sign", "--job", "1", "--as", "Doe^Jane"])?;
    ensure!(signed.contains("signed by Doe^Jane") && signed.contains("2 queued for pacs"), "{signed}");
    let sr_uid = signed.split("SR ").nth(1).and_then(|s| s.split(' ').next()).context("no SR UID")?;
    let sr_file = lightbox_store::Store::open(&store)?.instance_file(sr_uid)?.context("the signed SR is not stored")?;
    check_signed_report(&sr_file)?;
    ensure!(lightbox(&["pacs", "drain"])?.starts_with("sent 2,"));
    ensure!(orthanc.instance_count()? == 2);
    let mut verified = Vec::new();
    for id in orthanc.get_json("/instances")?.as_array().context("no instances")? {
        let tags = orthanc.get_json(&format!("/instances/{}/simplified-tags", id.as_str().unwrap_or_default()))?;
        if tags["Modality"] == "SR" {
            verified.push((tags["VerificationFlag"].clone(), tags["SeriesDescription"].clone()));
        }
    }
    ensure!(verified.len() == 1 && verified[0].0 == "VERIFIED", "{verified:?}");
    ensure!(lightbox(&["results"])?.contains("signed by Doe^Jane"));
    // Signing twice changes nothing on the PACS.
    lightbox(&["sign", "--job", "1", "--as", "Doe^Jane"])?;
    ensure!(lightbox(&["pacs", "drain"])?.starts_with("sent 0,"));
    ensure!(orthanc.instance_count()? == 2);
    Ok(())
}

/// Exporter plugins: the shipped `copy-to-folder` copies the SEG and SR and writes the series as
/// NIfTI; a failing plugin and one that hangs are reported (the latter killed at the timeout).
#[test]
fn exporter_plugins_run_with_the_manifest_and_a_timeout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    run_ok(
        Command::new(bin("lightbox")?)
            .args(["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--store"])
            .arg(&store),
    )?;
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    for plugin in ["copy-to-folder", "pdf-summary"] {
        std::fs::copy(lightbox_tests::workspace_root().join("plugins").join(plugin), plugins.join(plugin))?;
    }
    let lightbox_dir = bin("lightbox")?.parent().context("no bin dir")?.to_owned();
    let path = format!("{}:{}", lightbox_dir.display(), std::env::var("PATH").unwrap_or_default());
    let export = dir.path().join("exported");
    let out = run_ok(
        Command::new(bin("lightbox")?)
            .args(["export-results", "--job", "1", "--plugins"])
            .arg(&plugins)
            .arg("--store")
            .arg(&store)
            .env("LIGHTBOX_EXPORT_DIR", &export)
            .env("PATH", &path),
    )?;
    ensure!(out.contains("plugin copy-to-folder: ok"), "{out}");
    ensure!(out.contains("plugin pdf-summary: ok"), "{out}");
    let mut files = Vec::new();
    for study in std::fs::read_dir(&export)? {
        for job in std::fs::read_dir(study?.path())? {
            for f in std::fs::read_dir(job?.path())? {
                files.push(f?.path());
            }
        }
    }
    let named = |suffix: &str| files.iter().filter(|f| f.to_string_lossy().ends_with(suffix)).count();
    ensure!(named(".dcm") == 2 && named(".nii") == 1 && named("summary.pdf") == 1, "{files:?}");

    // The PDF, read by poppler: one page, the AI banner, the patient, the measured volume, and
    // that it awaits review.
    let pdf = files.iter().find(|f| f.ends_with("summary.pdf")).context("no PDF")?;
    let info = run_ok(Command::new("pdfinfo").arg(pdf))?;
    ensure!(info.lines().any(|l| l.starts_with("Pages:") && l.trim_end().ends_with(" 1")), "{info}");
    let text = run_ok(Command::new("pdftotext").args(["-layout"]).arg(pdf).arg("-"))?;
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let patient = report.series().next().context("no series")?.0.patient.id.clone();
    let volume = format!("{:.0}", expected_volume_mm3()?);
    for needle in
        ["AI OUTPUT", "not for clinical use", "not a diagnosis", "Volume above 1500", "AWAITING RADIOLOGIST REVIEW"]
    {
        ensure!(text.contains(needle), "{needle:?} missing from the PDF:\n{text}");
    }
    ensure!(text.contains(&patient) && text.contains(&volume), "patient {patient} or volume {volume} missing:\n{text}");
    let db = rusqlite::Connection::open(store.join("index.sqlite"))?;
    let audited: i64 = db.query_row("SELECT count(*) FROM audit WHERE action LIKE 'export:%'", [], |r| r.get(0))?;
    ensure!(audited == 2, "{audited} plugin runs in the audit log");

    // A plugin that fails and one that hangs.
    let write = |name: &str, body: &str| -> anyhow::Result<()> {
        let p = plugins.join(name);
        std::fs::write(&p, body)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    };
    write("fails", "#!/bin/sh\necho 'no disk space' >&2\necho '{\"status\":\"failed\"}'\nexit 3\n")?;
    write("hangs", "#!/bin/sh\nsleep 30\n")?;
    let started = std::time::Instant::now();
    let output = Command::new(bin("lightbox")?)
        .args(["export-results", "--job", "1", "--timeout-secs", "1", "--plugins"])
        .arg(&plugins)
        .arg("--store")
        .arg(&store)
        .env("LIGHTBOX_EXPORT_DIR", &export)
        .env("PATH", &path)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(!output.status.success(), "{stdout}");
    ensure!(stdout.contains("plugin fails: failed (exit 3)") && stdout.contains("no disk space"), "{stdout}");
    ensure!(stdout.contains("plugin hangs: killed after 1 s"), "{stdout}");
    ensure!(stdout.contains("plugin copy-to-folder: ok"), "{stdout}");
    ensure!(started.elapsed() < Duration::from_secs(20), "the hanging plugin was not killed");
    Ok(())
}

/// The signed report, read by highdicom: the AI's volumetric group carries the algorithm and no
/// person; the radiologist's group carries their name as observer and no algorithm; both are
/// observers of the document; dciodvfy finds no error.
fn check_signed_report(sr: &std::path::Path) -> anyhow::Result<()> {
    let output = Command::new("dciodvfy").arg(sr).output()?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    ensure!(errors.is_empty(), "dciodvfy: {}", errors.join("\n"));
    let script = r#"
import sys, json, highdicom as hd, pydicom
sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sys.argv[1]))
def persons(group):
    return [str(i.PersonName) for i in group[0].ContentSequence
            if i.RelationshipType == "HAS OBS CONTEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121008"]
def algorithms(m):
    num = m[0]  # the NUM item; TID 4019 rides in its content
    items = num.ContentSequence if "ContentSequence" in num else []
    return [i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
out = {"verification": sr.VerificationFlag,
       "observers": [str(o.observer_type.meaning) for o in sr.content.get_observer_contexts()],
       "ai": [], "radiologist": []}
for g in sr.content.get_volumetric_roi_measurement_groups():
    out["ai"].append({"id": g.tracking_identifier, "persons": persons(g),
                      "algorithms": [a for m in g.get_measurements() for a in algorithms(m)]})
for g in sr.content.get_image_measurement_groups():
    out["radiologist"].append({"id": g.tracking_identifier, "persons": [str(p) for p in persons(g)],
        "values": [[m.name.meaning, float(m.value), m.unit.value, algorithms(m)] for m in g.get_measurements()]})
print(json.dumps(out))
"#;
    let python = lightbox_tests::pypeer::python()?;
    let printed = run_ok(Command::new(python).args(["-c", script]).arg(sr))?;
    let read: serde_json::Value = serde_json::from_str(printed.trim())?;
    ensure!(read["verification"] == "VERIFIED", "{read}");
    ensure!(read["observers"] == serde_json::json!(["Person", "Device"]), "{read}");
    let ai = &read["ai"][0];
    ensure!(ai["persons"].as_array().is_some_and(Vec::is_empty), "{read}");
    ensure!(ai["algorithms"][0] == "Lightbox threshold-volume", "{read}");
    let ours = &read["radiologist"][0];
    ensure!(ours["id"] == "Radiologist: Lesion 1 long axis" && ours["persons"][0] == "Doe^Jane", "{read}");
    ensure!(ours["values"][0] == serde_json::json!(["Diameter", 12.5, "mm", []]), "{read}");
    Ok(())
}

/// Series that reach the store by another route than our SCP (an import here; a PACS retrieval
/// writes the same way) are found by the engine's poll and analysed once; the SEG and SR it
/// stores are not taken for new input.
#[test]
fn a_series_imported_while_the_engine_runs_is_analysed_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let env = [("LIGHTBOX_SETTLE_MS", "500"), ("LIGHTBOX_ENGINE_POLL_MS", "300")];
    let (_listener, mut lines) = lightbox_tests::listen_local(RULES, &store, &env)?;
    run_ok(Command::new(bin("lightbox")?).arg("import").arg(demo_study()).arg("--store").arg(&store))?;
    let done = lines.wait_for("pipeline threshold-volume on", Duration::from_secs(60))?;
    ensure!(done.contains("job 1 done"), "{done}");
    // A few more polls: the results (SEG, SR) are not dispatched, nothing runs twice.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = lines.wait_for("\u{0}", Duration::from_millis(100));
    let noise: Vec<&String> = lines.seen.iter().filter(|l| l.contains("failed") || l.starts_with("error")).collect();
    ensure!(noise.is_empty(), "{noise:?}");
    ensure!(lines.seen.iter().filter(|l| l.contains(" queued: rule")).count() == 1, "{:?}", lines.seen);
    Ok(())
}

/// A running job is cancelled from another process: it stops at its next stage and cannot
/// finish; `jobs rerun` runs it again to the end. A PACS that is down says so in `pacs status`.
#[test]
fn a_running_job_is_cancelled_from_outside_and_rerun() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    let mut run = KillOnDrop(
        Command::new(bin("lightbox")?)
            .args(["run", "threshold-volume", "--series", &series, "--threshold", "1500", "--store"])
            .arg(&store)
            .env("LIGHTBOX_FAULT_PAUSE", "segmenting:2000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let jobs = || run_ok(Command::new(bin("lightbox")?).arg("jobs").arg("--store").arg(&store));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !jobs()?.contains("segmenting") {
        ensure!(std::time::Instant::now() < deadline, "the job never reached 'segmenting': {}", jobs()?);
        std::thread::sleep(Duration::from_millis(50));
    }
    let cancelled = run_ok(Command::new(bin("lightbox")?).args(["jobs", "cancel", "1", "--store"]).arg(&store))?;
    ensure!(cancelled.contains("job 1 cancelled"), "{cancelled}");
    let status = run.0.wait()?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.0.stderr.take().context("no stderr")?, &mut stderr)?;
    ensure!(!status.success() && stderr.contains("job 1 was cancelled"), "{stderr}");
    let listed = jobs()?;
    ensure!(listed.contains("cancelled") && !listed.contains(" done "), "{listed}");
    let again = run_ok(Command::new(bin("lightbox")?).args(["jobs", "rerun", "1", "--store"]).arg(&store))?;
    ensure!(again.contains("job 1 done"), "{again}");
    let listed = jobs()?;
    ensure!(listed.contains("done") && listed.contains("runs 2"), "{listed}");
    ensure!(listed.lines().count() == 1, "{listed}");

    // No PACS listening there: the status says unreachable, with the reason, and fails.
    let down = Command::new(bin("lightbox")?)
        .args(["pacs", "status"])
        .env("LIGHTBOX_PACS_URL", format!("http://127.0.0.1:{}/dicom-web", free_port()?))
        .output()?;
    let says = String::from_utf8_lossy(&down.stderr);
    ensure!(!down.status.success() && says.contains("unreachable"), "{says}");
    Ok(())
}

/// The radiologist's verdict on the AI finding shapes the signed report: rejected, it is left out
/// and the segmentation stays home; edited, their value replaces the AI's, as their measurement
/// of the same segment, without the algorithm's name.
#[test]
fn a_rejected_finding_stays_home_and_an_edited_one_becomes_the_radiologists() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, series) = demo_store(dir.path())?;
    let lightbox = |args: &[&str]| run_ok(Command::new(bin("lightbox")?).args(args).arg("--store").arg(&store));
    lightbox(&["run", "threshold-volume", "--series", &series, "--threshold", "1500"])?;
    let sr_of = |line: &str| -> anyhow::Result<lightbox_dicom::SrReading> {
        let uid = line.split("SR ").nth(1).and_then(|s| s.split(' ').next()).context("no SR UID")?;
        let file = lightbox_store::Store::open(&store)?.instance_file(uid)?.context("the SR is not stored")?;
        Ok(lightbox_dicom::read_sr(&file)?)
    };

    let rejected = lightbox(&["sign", "--job", "1", "--as", "Doe^Jane", "--reject"])?;
    ensure!(rejected.contains("AI finding rejected") && rejected.contains("1 queued for pacs"), "{rejected}");
    let sr = sr_of(&rejected)?;
    ensure!(sr.verification == "VERIFIED" && sr.groups.is_empty(), "{sr:?}");
    let queued: Vec<String> = lightbox(&["outbox", "list"])?.lines().map(str::to_owned).collect();
    ensure!(queued.len() == 1, "only the report leaves: {queued:?}");

    let edited = lightbox(&["sign", "--job", "1", "--as", "Doe^Jane", "--volume-ml", "250"])?;
    ensure!(edited.contains("AI finding edited to 250 mL") && edited.contains("2 queued for pacs"), "{edited}");
    let sr = sr_of(&edited)?;
    ensure!(sr.groups.len() == 1, "{sr:?}");
    let g = &sr.groups[0];
    ensure!(g.tracking_id.contains("AI value edited") && g.person.as_deref() == Some("Doe^Jane"), "{g:?}");
    ensure!(g.measurements == [("Volume".to_owned(), 250.0, "mL".to_owned(), None)], "{g:?}");
    ensure!(g.segment.as_ref().is_some_and(|(_, n)| *n == 1), "the edit measures the same segment: {g:?}");
    ensure!(lightbox(&["results"])?.contains("signed by Doe^Jane"));
    Ok(())
}
