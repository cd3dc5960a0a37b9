//! The PACS commands as a user runs them (`lightbox pacs …`, `lightbox outbox …`,
//! `lightbox listen`), against a real Orthanc, including kill -9 of our own process while the
//! outbox drains.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use lightbox_store::{OutboxState, Store};
use lightbox_tests::orthanc::Orthanc;
use lightbox_tests::proxy::{Fault, FaultProxy};
use lightbox_tests::{KillOnDrop, Lines, bin, demo_study, run_ok};

/// `lightbox` with the PACS settings in the environment, as the README tells a user.
fn lightbox(url: &str, orthanc: &Orthanc) -> anyhow::Result<Command> {
    let mut command = Command::new(bin("lightbox")?);
    command
        .env("LIGHTBOX_PACS_URL", url)
        .env("LIGHTBOX_PACS_USER", orthanc.user())
        .env("LIGHTBOX_PACS_PASSWORD", orthanc.password())
        .env_remove("LIGHTBOX_PACS_TOKEN")
        .env_remove("LIGHTBOX_STORE");
    Ok(command)
}

fn demo_uids() -> anyhow::Result<BTreeSet<String>> {
    let mut uids = BTreeSet::new();
    for entry in std::fs::read_dir(demo_study())? {
        uids.insert(lightbox_dicom::read_instance(&entry?.path())?.sop_instance_uid);
    }
    Ok(uids)
}

fn outbox_states(store: &Path) -> anyhow::Result<Vec<OutboxState>> {
    Ok(Store::open(store)?.outbox(None)?.into_iter().map(|i| i.state).collect())
}

#[test]
fn send_query_retrieve_as_a_user_would() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let url = orthanc.dicomweb_url();
    let (sender, receiver) = (tempfile::tempdir()?, tempfile::tempdir()?);

    let sent =
        run_ok(lightbox(&url, &orthanc)?.args(["pacs", "send"]).arg(demo_study()).arg("--store").arg(sender.path()))?;
    assert!(sent.contains("queued 20, queued before 0"), "{sent}");
    assert!(sent.contains("sent 20, already on the PACS 0"), "{sent}");
    assert_eq!(orthanc.instance_count()?, 20);
    assert_eq!(orthanc.sop_instance_uids()?.into_iter().collect::<BTreeSet<_>>(), demo_uids()?);
    assert!(outbox_states(sender.path())?.iter().all(|s| *s == OutboxState::Sent));
    let listed = run_ok(lightbox(&url, &orthanc)?.args(["pacs", "outbox", "--store"]).arg(sender.path()))?;
    assert_eq!(listed.lines().filter(|l| l.contains(" sent ")).count(), 20, "{listed}");

    // Sending again queues nothing and sends nothing.
    let again =
        run_ok(lightbox(&url, &orthanc)?.args(["pacs", "send"]).arg(demo_study()).arg("--store").arg(sender.path()))?;
    assert!(again.contains("queued 0, queued before 20") && again.contains("sent 0,"), "{again}");

    let studies = run_ok(lightbox(&url, &orthanc)?.args(["pacs", "query", "--id", "QIN-PROSTATE-01-*"]))?;
    let line = studies.lines().next().unwrap_or_default();
    assert!(line.starts_with("19710714   QIN-PROSTATE-01-0001") && line.contains("20 instances"), "{studies}");
    let study_uid = line.rsplit('[').next().unwrap_or_default().trim_end_matches(']').to_owned();
    assert!(run_ok(lightbox(&url, &orthanc)?.args(["pacs", "query", "--id", "NOBODY*"]))?.is_empty());
    let series = run_ok(lightbox(&url, &orthanc)?.args(["pacs", "query", "--study", &study_uid]))?;
    assert!(series.contains("MR     20 instances"), "{series}");

    let retrieved = run_ok(
        lightbox(&url, &orthanc)?.args(["pacs", "retrieve", "--study", &study_uid]).arg("--store").arg(receiver.path()),
    )?;
    assert!(retrieved.contains("retrieved 20 instances") && retrieved.contains("imported 20"), "{retrieved}");
    let worklist = run_ok(Command::new(bin("lightbox")?).arg("worklist").arg("--store").arg(receiver.path()))?;
    assert!(worklist.contains("1 series     20 instances"), "{worklist}");
    let store = Store::open(receiver.path())?;
    assert!(store.verify()?.is_consistent());
    // Retrieved bytes are the sent bytes.
    for entry in std::fs::read_dir(demo_study())? {
        let original = entry?.path();
        let uid = lightbox_dicom::read_instance(&original)?.sop_instance_uid;
        let stored = store.instance_file(&uid)?.ok_or_else(|| anyhow::anyhow!("{uid} not retrieved"))?;
        assert!(std::fs::read(&stored)? == std::fs::read(&original)?, "{uid} differs after the round trip");
    }
    assert!(store.audit_log()?.iter().any(|(_, action, _)| action == "retrieve"));
    Ok(())
}

#[test]
fn wrong_password_and_unreachable_pacs_are_clear_errors() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let output = lightbox(&orthanc.dicomweb_url(), &orthanc)?
        .env("LIGHTBOX_PACS_PASSWORD", "wrong")
        .args(["pacs", "query"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("refused the credentials (HTTP 401)"), "{stderr}");

    let port = lightbox_tests::orthanc::free_port()?;
    let output = lightbox(&format!("http://127.0.0.1:{port}/dicom-web"), &orthanc)?
        .args(["pacs", "query", "--attempts", "2"])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("cannot reach the PACS") && stderr.contains("Connection refused"), "{stderr}");
    Ok(())
}

/// `lightbox pacs retrieve` of a study one of whose series the PACS refuses: the other series
/// lands in the store, the refused one is named on stderr with its instance count, and the
/// command exits non-zero so a script notices. Run again once the PACS sends it, it completes.
#[test]
fn a_study_retrieved_in_part_is_named_and_exits_non_zero() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let work = tempfile::tempdir()?;
    let demo: Vec<_> = std::fs::read_dir(demo_study())?.map(|e| Ok(e?.path())).collect::<anyhow::Result<_>>()?;
    let study = lightbox_dicom::read_instance(&demo[0])?.study_uid.to_string();
    let refused = lightbox_tests::dcmtk::new_uid();
    let uids = lightbox_tests::dcmtk::Uids::Series { study: study.clone(), series: refused.clone() };
    let copies = lightbox_tests::dcmtk::copy_with_new_uids(&demo[..5], &work.path().join("copies"), &uids, &[])?;
    let url = orthanc.dicomweb_url();
    for path in [demo_study(), work.path().join("copies")] {
        run_ok(lightbox(&url, &orthanc)?.args(["pacs", "send"]).arg(path).arg("--store").arg(work.path().join("out")))?;
    }
    assert_eq!(orthanc.instance_count()?, 20 + copies.len() as u64);

    let proxy = FaultProxy::start(format!("127.0.0.1:{}", orthanc.http_port()).parse()?)?;
    proxy.set_fault(Fault::StatusFor { target_contains: format!("/series/{refused}"), code: 404 });
    let proxied = format!("{}/dicom-web", proxy.url());
    let store = work.path().join("store");
    let retrieve = |url: &str| -> anyhow::Result<std::process::Output> {
        Ok(lightbox(url, &orthanc)?
            .args(["pacs", "retrieve", "--study", &study])
            .arg("--store")
            .arg(&store)
            .output()?)
    };
    let output = retrieve(&proxied)?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("retrieved 20 instances") && stdout.contains("imported 20"), "{stdout}");
    assert!(stderr.contains(&format!("not retrieved: series {refused}, 5 instances:")), "{stderr}");
    assert!(stderr.contains("HTTP 404") && stderr.contains("retrieved in part"), "{stderr}");
    assert_eq!(Store::open(&store)?.instance_count()?, 20);
    let audit = Store::open(&store)?.audit_log()?;
    assert!(audit.iter().any(|(_, action, object)| action == "retrieve" && *object == study), "{audit:?}");

    let again =
        run_ok(lightbox(&url, &orthanc)?.args(["pacs", "retrieve", "--study", &study]).arg("--store").arg(&store))?;
    assert!(again.contains("imported 5, already stored 20"), "{again}");
    Ok(())
}

/// The outbox is drained through a slow link and `lightbox` is killed (-9) twice midway. After
/// a final drain, Orthanc holds each result exactly once and every row is marked sent.
#[test]
fn outbox_drain_killed_midway_sends_each_result_exactly_once() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", orthanc.http_port()).parse()?;
    let proxy = FaultProxy::start(upstream)?;
    let slow_url = format!("{}/dicom-web", proxy.url());
    let store = tempfile::tempdir()?;
    let queued = run_ok(
        lightbox(&slow_url, &orthanc)?
            .args(["pacs", "send", "--queue-only"])
            .arg(demo_study())
            .arg("--store")
            .arg(store.path()),
    )?;
    assert!(queued.contains("queued 20"), "{queued}");
    assert_eq!(orthanc.instance_count()?, 0);

    proxy.set_fault(Fault::Delay(Duration::from_millis(120)));
    let mut interrupted = 0;
    for wait_ms in [600u64, 900] {
        let mut child = lightbox(&slow_url, &orthanc)?
            .args(["pacs", "drain"])
            .arg("--store")
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(wait_ms));
        if child.try_wait()?.is_none() {
            interrupted += 1;
        }
        child.kill().ok(); // SIGKILL: no cleanup runs
        child.wait()?;
        let report = Store::open(store.path())?.verify()?;
        assert!(report.is_consistent(), "{report:?}");
    }
    assert_eq!(interrupted, 2, "a drain finished before its kill; the test proved nothing");
    let states = outbox_states(store.path())?;
    let sent_before = states.iter().filter(|s| **s == OutboxState::Sent).count();
    assert!(sent_before > 0 && sent_before < 20, "kills should land midway: {states:?}");

    proxy.set_fault(Fault::None);
    let done = run_ok(lightbox(&slow_url, &orthanc)?.args(["pacs", "drain"]).arg("--store").arg(store.path()))?;
    assert!(done.contains("deferred 0, refused 0"), "{done}");
    assert!(outbox_states(store.path())?.iter().all(|s| *s == OutboxState::Sent), "{done}");
    assert_eq!(orthanc.instance_count()?, 20, "a result was lost or duplicated");
    assert_eq!(orthanc.sop_instance_uids()?.into_iter().collect::<BTreeSet<_>>(), demo_uids()?);
    // A further drain has nothing to do.
    let idle = run_ok(lightbox(&slow_url, &orthanc)?.args(["pacs", "drain"]).arg("--store").arg(store.path()))?;
    assert!(idle.starts_with("sent 0, already on the PACS 0"), "{idle}");
    Ok(())
}

/// While the PACS is down, results wait in the outbox with the reason; when it is back, one
/// drain sends them.
#[test]
fn outbox_waits_while_the_pacs_is_down() -> anyhow::Result<()> {
    let mut orthanc = Orthanc::start()?;
    let url = orthanc.dicomweb_url();
    orthanc.kill()?;
    let store = tempfile::tempdir()?;
    let out = run_ok(
        lightbox(&url, &orthanc)?
            .args(["pacs", "send", "--attempts", "1"])
            .arg(demo_study())
            .arg("--store")
            .arg(store.path()),
    )?;
    assert!(out.contains("sent 0") && out.contains("deferred 20"), "{out}");
    let list = run_ok(Command::new(bin("lightbox")?).args(["outbox", "list", "--store"]).arg(store.path()))?;
    assert_eq!(list.lines().count(), 20);
    assert!(list.lines().all(|l| l.contains("pending")), "{list}");
    assert!(list.contains("last error") && list.contains("cannot reach the PACS"), "{list}");
    // A watching drain started while the PACS is still down sends everything once it is back.
    let mut watcher = KillOnDrop(
        lightbox(&url, &orthanc)?
            .args(["pacs", "drain", "--attempts", "1", "--every", "1"])
            .arg("--store")
            .arg(store.path())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = Lines::new(watcher.0.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    lines.wait_for("deferred 20", Duration::from_secs(10))?;
    orthanc.restart()?;
    lines.wait_for("sent 20,", Duration::from_secs(15))?;
    assert_eq!(orthanc.instance_count()?, 20);
    lines.wait_for("sent 0, already on the PACS 0", Duration::from_secs(5))?;
    assert_eq!(orthanc.instance_count()?, 20);
    Ok(())
}

/// `lightbox listen` receives a dcmtk `storescu` push and Orthanc's own C-STORE.
#[test]
fn listen_receives_pushes_into_the_store() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let port = lightbox_tests::orthanc::free_port()?;
    let mut listener = KillOnDrop(
        Command::new(bin("lightbox")?)
            .args(["listen", "--aet", "LIGHTBOX", "--allow", "STORESCU,ECHOSCU", "--bind", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--store"])
            .arg(store.path())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = listener.0.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = Lines::new(stdout);
    lines.wait_for("listening as LIGHTBOX", Duration::from_secs(10))?;

    // Strangers are refused: a wrong called AE title, or a calling AE title not on the list.
    let wrong_called = Command::new("echoscu").args(["-aec", "SOMEONE", "127.0.0.1", &port.to_string()]).output()?;
    assert!(!wrong_called.status.success(), "an association to another AE title was accepted");
    let stranger = Command::new("storescu")
        .args(["-aet", "INTRUDER", "-aec", "LIGHTBOX", "127.0.0.1", &port.to_string(), "+sd"])
        .arg(demo_study())
        .output()?;
    assert!(!stranger.status.success(), "a calling AE title not on the list could push");
    assert_eq!(Store::open(store.path())?.instance_count()?, 0);
    run_ok(Command::new("echoscu").args(["-aec", "LIGHTBOX", "127.0.0.1", &port.to_string()]))?;
    lines.wait_for("echo from", Duration::from_secs(5))?;
    run_ok(
        Command::new("storescu").args(["-aec", "LIGHTBOX", "127.0.0.1", &port.to_string(), "+sd"]).arg(demo_study()),
    )?;
    lines.wait_for("released by STORESCU: 20 instances", Duration::from_secs(20))?;
    assert_eq!(Store::open(store.path())?.instance_count()?, 20);

    // A second push of the same study stores nothing twice.
    run_ok(
        Command::new("storescu").args(["-aec", "LIGHTBOX", "127.0.0.1", &port.to_string(), "+sd"]).arg(demo_study()),
    )?;
    lines.wait_for("released by STORESCU: 20 instances", Duration::from_secs(20))?;
    let store = Store::open(store.path())?;
    assert_eq!(store.instance_count()?, 20);
    assert!(store.verify()?.is_consistent());
    Ok(())
}
