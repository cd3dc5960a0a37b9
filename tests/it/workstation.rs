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
    let mut child = x
        .command(&bin("lightbox-workstation")?)
        .arg(demo_study())
        .env("LIGHTBOX_STORE", store.path())
        .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
        .env("LIGHTBOX_PACS_USER", orthanc.user())
        .env("LIGHTBOX_PACS_PASSWORD", orthanc.password())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let _child = KillOnDrop(child);
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
/// instances land in the store and the header says so.
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
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox-workstation")?)
        .arg(demo_study())
        .env("LIGHTBOX_STORE", store.path())
        .env("LIGHTBOX_LISTEN_PORT", port.to_string())
        .env("LIGHTBOX_AET", "LIGHTBOX")
        .env_remove("LIGHTBOX_PACS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let _child = KillOnDrop(child);
    stderr.wait_for(&format!("listening as LIGHTBOX on port {port}"), Duration::from_secs(120))?;
    stderr.wait_for("ui ready: 1 rows", Duration::from_secs(60))?;

    let body = serde_json::to_vec(&ids)?;
    let (status, answer) =
        orthanc.request("POST", "/modalities/workstation/store", Some((&body, "application/json")))?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    stderr.wait_for("received 20 instances from ORTHANC", Duration::from_secs(30))?;
    let local = lightbox_store::Store::open(store.path())?;
    assert_eq!(local.instance_count()?, 20);
    assert!(local.verify()?.is_consistent());
    std::thread::sleep(Duration::from_millis(500));
    x.screenshot(&screenshot_dir()?.join("workstation-received-push.png"))?;
    Ok(())
}
