//! The Tauri workstation in a real window under Xvfb: the web UI lists the demo study's series
//! through a Tauri command into the engine.

use std::process::Stdio;
use std::time::Duration;

use lightbox_tests::{KillOnDrop, Lines, Rgb, Xvfb, bin, demo_study};

use crate::screenshot_dir;

/// Colours from ui/src/App.svelte: the header bar and the selected row.
const HEADER_BG: [u8; 3] = [0x1b, 0x20, 0x27];
const SELECTED_ROW: [u8; 3] = [0x1f, 0x6f, 0xeb];

#[test]
fn workstation_lists_demo_series_in_a_window() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox-workstation")?)
        .arg(demo_study())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let child = KillOnDrop(child);

    stderr.wait_for("list_series: 1 series", Duration::from_secs(120))?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(1000));
    let shot = screenshot_dir()?.join("workstation-demo.png");
    x.screenshot(&shot)?;

    let image = Rgb::load(&shot)?;
    let header = image.count_near(HEADER_BG, 2);
    let selected = image.count_near(SELECTED_ROW, 2);
    assert!(header > 20_000, "{}: header bar not drawn ({header} px)", shot.display());
    assert!(selected > 5_000, "{}: selected series row not drawn ({selected} px)", shot.display());
    assert!(image.distinct_colours() > 50, "{}: too few colours, text missing?", shot.display());

    // Click "Open in viewer" (below the table, left): the workstation starts the viewer on the
    // selected series; the viewer inherits the workstation's stdout and reports its first frame.
    x.xdotool(&["mousemove", "100", "240", "click", "1"])?;
    stdout.wait_for("lightbox-viewer: first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(500));
    let both = screenshot_dir()?.join("workstation-opened-viewer.png");
    x.screenshot(&both)?;
    let both = Rgb::load(&both)?;
    assert!(both.crop(350, 300, 200, 200).distinct_greys() > 100, "viewer image not on screen");
    // The viewer is the workstation's child; it ends with the X server when `x` drops.
    drop(child);
    Ok(())
}

/// The worklist tab in the real window: the local store (the demo study) and a real Orthanc
/// holding another study, merged into one list.
#[test]
fn workstation_worklist_shows_local_and_pacs_studies() -> anyhow::Result<()> {
    use lightbox_tests::orthanc::Orthanc;
    let orthanc = Orthanc::start()?;
    let ge = lightbox_tests::data("dcm_qa_nih/In/20180918GE/mr_0004")?;
    let mut files: Vec<_> = std::fs::read_dir(&ge)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    for file in files.iter().take(3) {
        orthanc.upload(file)?;
    }
    let store = tempfile::tempdir()?;
    lightbox_workflow::import(store.path(), &demo_study())?;

    let x = Xvfb::start()?;
    let (mut stderr, _child) = workstation(&x, store.path(), Some(&orthanc), &[])?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(120))?;
    // The "Worklist" tab, top left.
    x.xdotool(&["mousemove", "144", "66", "click", "1"])?;
    stderr.wait_for("worklist: 2 rows, 1 on the PACS", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(800));
    let shot = screenshot_dir()?.join("workstation-worklist.png");
    x.screenshot(&shot)?;
    let image = Rgb::load(&shot)?;
    // The green "Retrieve" button of the study that is only on the PACS.
    let green = image.count_near([0x23, 0x86, 0x36], 2);
    assert!(green > 1_500, "{}: no Retrieve/Search buttons drawn ({green} px)", shot.display());

    // "Retrieve" on the first row (the newest study, the one only on the PACS): WADO-RS into
    // the store, then the list is asked again.
    x.xdotool(&["mousemove", "1121", "243", "click", "1"])?;
    stderr.wait_for("retrieved 3 instances (3 new)", Duration::from_secs(30))?;
    stderr.wait_for("worklist: 2 rows, 1 on the PACS", Duration::from_secs(30))?;
    let local = lightbox_store::Store::open(store.path())?;
    assert_eq!(local.instance_count()?, 23);
    assert!(local.verify()?.is_consistent());
    std::thread::sleep(Duration::from_millis(500));
    x.screenshot(&screenshot_dir()?.join("workstation-worklist-retrieved.png"))?;
    Ok(())
}

/// DICOM pushes to the workstation: Orthanc sends the demo study to its C-STORE SCP; the
/// instances land in the store and the header says so. With dispatch rules the workstation
/// analyses the pushed series by itself; the result waits for sign-off.
#[test]
fn workstation_receives_a_push_from_the_pacs() -> anyhow::Result<()> {
    use lightbox_tests::orthanc::{Orthanc, OrthancOptions, free_port};
    let port = free_port()?;
    let orthanc = Orthanc::start_with(OrthancOptions {
        dicom_aet_peers: vec![("workstation".into(), "LIGHTBOX".into(), port)],
        ..Default::default()
    })?;
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(demo_study())? {
        ids.push(orthanc.upload(&entry?.path())?);
    }
    let store = tempfile::tempdir()?;
    let rules = store.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"ADC maps\"\npipeline = \"threshold-volume\"\nsequence = [\"ADC\"]\nthreshold = 1500.0\n",
    )?;
    let x = Xvfb::start()?;
    let (mut stderr, _child) = workstation(
        &x,
        store.path(),
        None,
        &[
            ("LIGHTBOX_LISTEN_PORT", port.to_string()),
            ("LIGHTBOX_AET", "LIGHTBOX".to_owned()),
            ("LIGHTBOX_RULES", rules.display().to_string()),
            ("LIGHTBOX_SETTLE_MS", "500".to_owned()),
            ("LIGHTBOX_ENGINE_POLL_MS", "300".to_owned()),
        ],
    )?;
    stderr.wait_for(&format!("listening as LIGHTBOX on port {port}"), Duration::from_secs(120))?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(60))?;

    let body = serde_json::to_vec(&ids)?;
    let (status, answer) =
        orthanc.request("POST", "/modalities/workstation/store", Some((&body, "application/json")))?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    stderr.wait_for("received 20 instances from ORTHANC", Duration::from_secs(30))?;
    let done = stderr.wait_for("engine: pipeline threshold-volume on", Duration::from_secs(60))?;
    assert!(done.contains("job 1 done") && done.contains("0 queued for the PACS"), "{done}");
    let local = lightbox_store::Store::open(store.path())?;
    // The 20 pushed instances, and the SEG and SR of the analysis, which wait for sign-off.
    assert_eq!(local.instance_count()?, 22);
    assert!(local.verify()?.is_consistent());
    std::thread::sleep(Duration::from_millis(500));
    x.screenshot(&screenshot_dir()?.join("workstation-received-push.png"))?;
    Ok(())
}

/// The sign-off path in the real window: an AI result awaits review, the radiologist types
/// their name and signs, and the VERIFIED report arrives in a real Orthanc.
#[test]
fn workstation_sign_off_sends_the_verified_report_to_the_pacs() -> anyhow::Result<()> {
    use lightbox_tests::orthanc::Orthanc;
    let orthanc = Orthanc::start()?;
    let store = tempfile::tempdir()?;
    lightbox_workflow::import(store.path(), &demo_study())?;
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let series = report.series().next().map(|(_, s)| s.uid.to_string()).unwrap_or_default();
    lightbox_workflow::pipeline::run_pipeline(store.path(), "threshold-volume", &series, 1500.0, None)?;

    let x = Xvfb::start()?;
    let (mut stderr, _child) = workstation(&x, store.path(), Some(&orthanc), &[])?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(120))?;
    // The "Results" tab, then the "Signing as" field, then type the name.
    x.xdotool(&["mousemove", "239", "66", "click", "1"])?;
    std::thread::sleep(Duration::from_millis(700));
    x.xdotool(&["mousemove", "190", "157", "click", "1"])?;
    x.xdotool(&["type", "--delay", "20", "Doe^Jane"])?;
    std::thread::sleep(Duration::from_millis(300));
    let before = screenshot_dir()?.join("workstation-results.png");
    x.screenshot(&before)?;
    // "Sign and send" sits at the right end of the first result row.
    let image = Rgb::load(&before)?;
    let (bx, by) = green_button(&image).ok_or_else(|| anyhow::anyhow!("{}: no Sign button", before.display()))?;
    x.xdotool(&["mousemove", &bx.to_string(), &by.to_string(), "click", "1"])?;
    stderr.wait_for("job 1 signed", Duration::from_secs(30))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while orthanc.instance_count()? < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(orthanc.instance_count()?, 2, "SEG + verified SR in Orthanc");
    std::thread::sleep(Duration::from_millis(500));
    let signed = screenshot_dir()?.join("workstation-signed.png");
    x.screenshot(&signed)?;
    // The header's PACS indicator asked the real Orthanc: green ("reachable").
    let header = Rgb::load(&signed)?.crop(400, 0, 880, 44);
    assert!(count(&header, STATUS_GREEN) > 30, "the PACS indicator is not green: {}", signed.display());

    // The Jobs tab lists the analysis, done (green), on the CPU.
    x.xdotool(&["mousemove", "316", "66", "click", "1"])?;
    std::thread::sleep(Duration::from_millis(800));
    let jobs = screenshot_dir()?.join("workstation-jobs.png");
    x.screenshot(&jobs)?;
    let table = Rgb::load(&jobs)?.crop(0, 100, 1280, 300);
    assert!(count(&table, STATUS_GREEN) > 30, "no finished job shown: {}", jobs.display());
    Ok(())
}

/// The UI's "good" colour (#56d364): reachable PACS, finished jobs, sent items.
const STATUS_GREEN: [u8; 3] = [0x56, 0xd3, 0x64];

fn count(image: &Rgb, colour: [u8; 3]) -> usize {
    image.pixels.iter().filter(|p| p.iter().zip(colour).all(|(a, b)| a.abs_diff(b) < 24)).count()
}

/// Import with the native folder picker: "Choose a folder…" opens GTK's chooser on the folder
/// the workstation shows; Enter imports it into the store.
#[test]
fn workstation_imports_a_folder_chosen_in_the_picker() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let x = Xvfb::start()?;
    let (mut stderr, _child) = workstation(&x, store.path(), None, &[])?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(120))?;
    // "Choose a folder…" is the third button under the series table.
    x.xdotool(&["mousemove", "505", "241", "click", "1"])?;
    std::thread::sleep(Duration::from_millis(1500));
    x.screenshot(&screenshot_dir()?.join("workstation-picker.png"))?;
    x.xdotool(&["search", "--name", "Import a DICOM folder", "windowfocus", "--sync", "key", "Return"])?;
    let picked = stderr.wait_for("folder picker:", Duration::from_secs(30))?;
    assert!(picked.ends_with(&demo_study().display().to_string()), "{picked}");
    stderr.wait_for("imported 20 instances (0 unreadable)", Duration::from_secs(60))?;
    let local = lightbox_store::Store::open(store.path())?;
    assert_eq!(local.instance_count()?, 20);
    Ok(())
}

/// Centre of the green button area below the header (the only green thing on the results tab).
fn green_button(image: &Rgb) -> Option<(u32, u32)> {
    let (mut sx, mut sy, mut n) = (0u64, 0u64, 0u64);
    for y in 200..image.height {
        for x in 0..image.width {
            if image.pixels.get((y * image.width + x) as usize) == Some(&[0x23, 0x86, 0x36]) {
                sx += u64::from(x);
                sy += u64::from(y);
                n += 1;
            }
        }
    }
    (n > 50).then(|| ((sx / n) as u32, (sy / n) as u32))
}

/// The workstation on the demo folder with its own store, settings file and (optionally) PACS,
/// in the X server `x`: its stderr lines, and the process (killed when dropped).
fn workstation(
    x: &Xvfb,
    store: &std::path::Path,
    orthanc: Option<&lightbox_tests::orthanc::Orthanc>,
    env: &[(&str, String)],
) -> anyhow::Result<(Lines, KillOnDrop)> {
    let mut command = x.command(&bin("lightbox-workstation")?);
    command
        .arg(demo_study())
        .env("LIGHTBOX_STORE", store)
        .env("LIGHTBOX_CONFIG", store.join("config.toml"))
        .env_remove("LIGHTBOX_PACS_URL")
        .env_remove("LIGHTBOX_LISTEN_PORT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(orthanc) = orthanc {
        command
            .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
            .env("LIGHTBOX_PACS_USER", orthanc.user())
            .env("LIGHTBOX_PACS_PASSWORD", orthanc.password());
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn()?;
    let stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    Ok((stderr, KillOnDrop(child)))
}
