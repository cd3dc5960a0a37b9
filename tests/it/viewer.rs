//! The viewer in a real window: Xvfb, Mesa's software Vulkan, screenshots that are really drawn,
//! and a person's input (wheel, drag) that changes what is shown.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use lightbox_tests::{KillOnDrop, Lines, Rgb, Xvfb, bin, demo_study};

use crate::screenshot_dir;

/// The viewer window is 900x800 at the top left of the screen; this box lies inside the slice.
const IMAGE_BOX: (u32, u32, u32, u32) = (350, 300, 200, 200);

fn image_area(x: &Xvfb, name: &str) -> anyhow::Result<Rgb> {
    let shot = screenshot_dir()?.join(name);
    x.screenshot(&shot)?;
    let (bx, by, bw, bh) = IMAGE_BOX;
    Ok(Rgb::load(&shot)?.crop(bx, by, bw, bh))
}

/// The viewer on the demo study with `args` and `env`, its stdout read by lines (stderr
/// dropped); killed when the second value drops.
fn viewer_on_demo(x: &Xvfb, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(Lines, KillOnDrop)> {
    let mut child = x
        .command(&bin("lightbox-viewer")?)
        .arg(demo_study())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    Ok((stdout, KillOnDrop(child)))
}

/// Three wheel notches down over the image (three slices back), then the image area.
fn three_slices_back(x: &Xvfb, name: &str) -> anyhow::Result<Rgb> {
    x.xdotool(&["mousemove", "450", "400"])?;
    for _ in 0..3 {
        x.xdotool(&["click", "5"])?;
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(500));
    image_area(x, name)
}

#[test]
fn viewer_shows_demo_study_and_follows_wheel_and_drag() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let mut child =
        x.command(&bin("lightbox-viewer")?).arg(demo_study()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let mut stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let mut child = KillOnDrop(child);

    if let Err(e) = stdout.wait_for("first frame presented", Duration::from_secs(120)) {
        let _ = child.0.kill();
        let _ = stderr.wait_for("\u{0}", Duration::from_millis(500));
        anyhow::bail!("{e}\nviewer stderr:\n{}", stderr.seen.join("\n"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let first = image_area(&x, "viewer-demo.png")?;
    assert!(child.0.try_wait()?.is_none(), "viewer exited early");
    // An MR slice has many grey levels; a black texture, a failed render or an empty panel has
    // one or two.
    let greys = first.distinct_greys();
    assert!(greys > 100, "only {greys} grey levels in the image area");

    // Three wheel notches down: three slices back, a different image.
    let scrolled = three_slices_back(&x, "viewer-demo-scrolled.png")?;
    let slice_change = first.mean_abs_diff(&scrolled);
    assert!(slice_change > 5.0, "wheel did not change the slice (diff {slice_change:.2})");

    // Drag right and up: wider window, higher level, so the same slice gets darker overall.
    x.xdotool(&["mousemove", "450", "400", "mousedown", "1"])?;
    for step in 1..=10 {
        let (dx, dy) = (450 + 15 * step, 400 - 10 * step);
        x.xdotool(&["mousemove", &dx.to_string(), &dy.to_string()])?;
        std::thread::sleep(Duration::from_millis(30));
    }
    x.xdotool(&["mouseup", "1"])?;
    std::thread::sleep(Duration::from_millis(500));
    let windowed = image_area(&x, "viewer-demo-windowed.png")?;
    let mean = |img: &Rgb| img.pixels.iter().map(|p| f64::from(p[0])).sum::<f64>() / img.pixels.len() as f64;
    assert!(
        mean(&windowed) < mean(&scrolled) - 5.0,
        "drag did not change window/level: mean grey {:.1} -> {:.1}",
        mean(&scrolled),
        mean(&windowed)
    );
    assert!(child.0.try_wait()?.is_none(), "viewer exited during input");
    Ok(())
}

#[test]
fn viewer_names_the_folder_when_there_is_nothing_to_show() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("notes.txt"), "not an image")?;
    let output = std::process::Command::new(bin("lightbox-viewer")?).arg(dir.path()).output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains(&format!("{}: no image series found", dir.path().display())), "stderr: {stderr}");
    Ok(())
}

/// Colourful pixels (a segment overlay) in the image region below the status bar.
fn coloured_pixels(x: &Xvfb, name: &str) -> anyhow::Result<usize> {
    let shot = screenshot_dir()?.join(name);
    x.screenshot(&shot)?;
    let image = Rgb::load(&shot)?.crop(0, 120, 900, 660);
    Ok(image
        .pixels
        .iter()
        .filter(|p| {
            let (max, min) = (p.iter().max().copied().unwrap_or(0), p.iter().min().copied().unwrap_or(0));
            max - min > 60
        })
        .count())
}

/// A volume the GPU cannot hold (here over `LIGHTBOX_GPU_VOLUME_MB`) still opens in the slice
/// view at full resolution: each slice is drawn on the CPU, and the wheel still pages through
/// them.
#[test]
fn viewer_draws_slices_on_the_cpu_when_the_gpu_cannot_hold_the_volume() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let (mut stdout, mut child) = viewer_on_demo(&x, &[], &[("LIGHTBOX_GPU_VOLUME_MB", "1")])?;
    stdout.wait_for("slices drawn on the CPU", Duration::from_secs(60))?;
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(300));
    let first = image_area(&x, "viewer-slices-on-cpu.png")?;
    let greys = first.distinct_greys();
    assert!(greys > 100, "only {greys} grey levels in the image area");
    let scrolled = three_slices_back(&x, "viewer-slices-on-cpu-scrolled.png")?;
    assert!(first.mean_abs_diff(&scrolled) > 5.0, "the wheel did not change the slice");
    assert!(child.0.try_wait()?.is_none(), "viewer exited");
    Ok(())
}

/// Someone else's SEG (dcmqi's liver, SEMIAUTOMATIC from Slicer) over its three CT slices: the
/// viewer finds the source series from the SEG, draws the segment in colour, and `O` hides it.
#[test]
fn viewer_draws_a_segmentation_over_its_series() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let images = lightbox_tests::data("dcmqi_data/segmentations/ct-3slice")?;
    let seg = lightbox_tests::data("dcmqi_data/segmentations/liver.dcm")?;
    let mut child = x
        .command(&bin("lightbox-viewer")?)
        .arg(&images)
        .arg("--seg")
        .arg(&seg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let mut stderr = Lines::new(child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let mut child = KillOnDrop(child);
    let placed = stdout.wait_for("lightbox-viewer: SEG", Duration::from_secs(60))?;
    assert!(placed.contains("1 segments, 3 frames placed, 0 not on this series"), "{placed}");
    if let Err(e) = stdout.wait_for("first frame presented", Duration::from_secs(120)) {
        let _ = child.0.kill();
        let _ = stderr.wait_for("\u{0}", Duration::from_millis(500));
        anyhow::bail!("{e}\nviewer stderr:\n{}", stderr.seen.join("\n"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let shown = coloured_pixels(&x, "viewer-seg-liver.png")?;
    assert!(shown > 5_000, "only {shown} coloured pixels: the liver is not drawn");
    // There is no window manager: give the viewer the keyboard focus, then press O.
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync"])?;
    x.xdotool(&["key", "o"])?;
    std::thread::sleep(Duration::from_millis(500));
    let hidden = coloured_pixels(&x, "viewer-seg-hidden.png")?;
    assert!(hidden < shown / 20, "O did not hide the segmentation: {shown} -> {hidden} coloured pixels");
    assert!(child.0.try_wait()?.is_none(), "viewer exited");
    Ok(())
}

/// An analysis result opened from the store (`lightbox view --job N`): the viewer shows the
/// analysed series with the result's SEG placed on every slice it covers.
#[test]
fn a_result_opens_in_the_viewer_with_its_segmentation() -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    lightbox_workflow::import(store.path(), &demo_study())?;
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let series = report.series().next().map(|(_, s)| s.uid.to_string()).unwrap_or_default();
    lightbox_workflow::pipeline::run_pipeline(store.path(), "threshold-volume", &series, 1500.0, None)?;
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox")?)
        .args(["view", "--job", "1", "--as", "Doe^Jane", "--store"])
        .arg(store.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let _child = KillOnDrop(child);
    let placed = stdout.wait_for("lightbox-viewer: SEG", Duration::from_secs(60))?;
    assert!(placed.contains("(BINARY): 1 segments") && placed.contains("0 not on this series"), "{placed}");
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(500));
    let shown = coloured_pixels(&x, "viewer-result-seg.png")?;
    assert!(shown > 500, "only {shown} coloured pixels: the result's segmentation is not drawn");
    // A length measured here is saved for the report the radiologist signs.
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync", "key", "m"])?;
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mousemove", "350", "300", "click", "1"])?;
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mousemove", "500", "300", "click", "1"])?;
    let saved = stdout.wait_for("saved for the report", Duration::from_secs(10))?;
    assert!(saved.contains("Length 1 (viewer)"), "{saved}");
    let listed = lightbox_tests::run_ok(
        std::process::Command::new(bin("lightbox")?)
            .args(["measure", "list", "--series", &series, "--store"])
            .arg(store.path()),
    )?;
    assert!(listed.contains("Length 1 (viewer)") && listed.contains("Doe^Jane"), "{listed}");
    drop(_child);

    // At a point (a lesion a result lists): the viewer opens on the slice through it.
    let volume = report.display_sets(report.find_series(&series).context("no series")?)[0].load(0)?;
    let [nx, ny, _] = volume.dims();
    let point = volume.patient_from_voxel.transform_point([nx as f64 / 2.0, ny as f64 / 2.0, 13.0]);
    let mut child = x
        .command(&bin("lightbox")?)
        .args(["view", "--job", "1", "--at", &format!("{},{},{}", point[0], point[1], point[2]), "--store"])
        .arg(store.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let _child = KillOnDrop(child);
    let opened = stdout.wait_for("lightbox-viewer: opened at slice", Duration::from_secs(60))?;
    assert!(opened.contains("opened at slice 13 "), "{opened}");
    Ok(())
}

/// Compare with prior: two FLAIRs of the same MS patient a year apart (the open longitudinal
/// data, made DICOM by `lightbox to-dicom`) are found as current and prior and shown side by
/// side; scrolling the current moves the prior through the same place in the patient.
#[test]
fn compare_with_prior_shows_both_time_points_with_linked_slices() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    let mut current_uid = String::new();
    for (study, date) in [("study1", "20190301"), ("study2", "20200305")] {
        let out = dir.path().join(study);
        let nifti = lightbox_tests::data(&format!("open_ms_longitudinal/raw/patient01/{study}_FLAIR.nii.gz"))?;
        lightbox_tests::run_ok(
            std::process::Command::new(bin("lightbox")?)
                .arg("to-dicom")
                .arg(&nifti)
                .arg("--out")
                .arg(&out)
                .args(["--patient-id", "MS-01", "--patient-name", "Longitudinal^Patient", "--study-date", date])
                .args(["--study-description", "MRI brain", "--series-description", "FLAIR"]),
        )?;
        lightbox_workflow::import(&store, &out)?;
        current_uid =
            lightbox_dicom::scan_path(&out)?.series().next().map(|(_, s)| s.uid.to_string()).unwrap_or_default();
    }
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox")?)
        .args(["compare", "--series", &current_uid, "--store"])
        .arg(&store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let _child = KillOnDrop(child);
    let chosen = stdout.wait_for("comparing with series", Duration::from_secs(60))?;
    assert!(chosen.contains("20190301") && chosen.contains("same description \"FLAIR\""), "{chosen}");
    let linked = stdout.wait_for("lightbox-viewer: compare:", Duration::from_secs(60))?;
    assert!(linked.contains("(20200305) with prior") && linked.contains("(20190301)"), "{linked}");
    // The two visits lie about 7° apart in the scanner (the published alignment); the viewer
    // registers the prior onto the current scan before showing it.
    let registered = stdout.wait_for("registered the prior", Duration::from_secs(120))?;
    let degrees: f64 = registered
        .split("rotation ")
        .nth(1)
        .and_then(|r| r.split('°').next())
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no rotation in {registered}"))?;
    assert!((5.0..10.0).contains(&degrees), "{registered}");
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(500));
    let panes = |name: &str| -> anyhow::Result<(Rgb, Rgb)> {
        let shot = screenshot_dir()?.join(name);
        x.screenshot(&shot)?;
        let image = Rgb::load(&shot)?;
        Ok((image.crop(60, 250, 330, 330), image.crop(510, 250, 330, 330)))
    };
    let (left, right) = panes("viewer-compare.png")?;
    assert!(left.distinct_greys() > 50 && right.distinct_greys() > 50, "both time points must be drawn");
    // Five notches on the current pane: both panes move on.
    x.xdotool(&["mousemove", "225", "400"])?;
    for _ in 0..5 {
        x.xdotool(&["click", "5"])?;
        std::thread::sleep(Duration::from_millis(120));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (left2, right2) = panes("viewer-compare-scrolled.png")?;
    assert!(left.mean_abs_diff(&left2) > 2.0, "the current did not move");
    assert!(right.mean_abs_diff(&right2) > 2.0, "the prior did not follow the current");
    // D: the difference joins as a third pane; the first two narrow to make room for it.
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync", "key", "d"])?;
    stdout.wait_for("difference view shown", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(800));
    let shot = screenshot_dir()?.join("viewer-compare-difference.png");
    x.screenshot(&shot)?;
    let image = Rgb::load(&shot)?;
    let third = image.crop(640, 300, 220, 220);
    assert!(third.distinct_greys() > 30, "the difference pane is empty");
    assert!(third.mean_abs_diff(&right2.crop(0, 0, 220, 220)) > 2.0, "the third pane is not a new image");
    // Ctrl + wheel over the current pane zooms it, and the prior and the difference follow.
    x.xdotool(&["mousemove", "150", "420", "keydown", "ctrl"])?;
    for _ in 0..3 {
        x.xdotool(&["click", "4"])?;
        std::thread::sleep(Duration::from_millis(150));
    }
    x.xdotool(&["keyup", "ctrl"])?;
    let zoomed = stdout.wait_for("lightbox-viewer: zoom ", Duration::from_secs(10))?;
    assert!(zoomed.contains("zoom 1.") || zoomed.contains("zoom 2."), "{zoomed}");
    std::thread::sleep(Duration::from_millis(800));
    let shot = screenshot_dir()?.join("viewer-compare-zoomed.png");
    x.screenshot(&shot)?;
    let after = Rgb::load(&shot)?;
    for (name, x0) in [("current", 40), ("prior", 340), ("difference", 640)] {
        let (a, b) = (image.crop(x0, 300, 220, 220), after.crop(x0, 300, 220, 220));
        assert!(a.mean_abs_diff(&b) > 2.0, "the {name} pane did not zoom");
    }
    x.xdotool(&["key", "z"])?;
    stdout.wait_for("zoom reset", Duration::from_secs(10))?;
    Ok(())
}

/// The 2×2 layout: axial, coronal and sagittal reformations of the (tilted) demo study and a
/// volume rendering, drawn on the GPU; a click in the axial pane moves the crosshair, so the
/// coronal plane moves through it; the wheel over the axial pane moves the axial plane along its
/// normal; a drag in the 3-D pane turns it.
#[test]
fn mpr_layout_links_three_planes_by_a_crosshair() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let (mut stdout, _child) = viewer_on_demo(&x, &["--mpr"], &[])?;
    // Pixels launched by the fragment stage on a software rasteriser (compute on a GPU).
    let launch = stdout.wait_for("launches its pixels by", Duration::from_secs(60))?;
    assert!(launch.contains("by Fragment on llvmpipe"), "{launch}");
    for plane in ["MPR Axial", "MPR Coronal", "MPR Sagittal", "MPR 3D"] {
        let line = stdout.wait_for(plane, Duration::from_secs(60))?;
        // One copy of the volume on the GPU: the first pane uploads it, the others share it.
        assert_eq!(line.contains("(shared)"), plane != "MPR Axial", "{line}");
        // The viewer's device has the features for a filterable volume texture (lavapipe does),
        // so the volume rendering takes its quick look through the filter.
        assert_eq!(line.contains("through the texture filter"), plane == "MPR 3D", "{line}");
    }
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(800));
    // The window is 900×800: axial top left, coronal top right, sagittal bottom left, 3D bottom right.
    let panes = |name: &str| -> anyhow::Result<Vec<Rgb>> {
        let shot = screenshot_dir()?.join(name);
        x.screenshot(&shot)?;
        let image = Rgb::load(&shot)?;
        Ok(vec![
            image.crop(100, 150, 220, 120),
            image.crop(500, 180, 260, 80),
            image.crop(120, 560, 220, 80),
            image.crop(540, 520, 220, 200),
        ])
    };
    let first = panes("viewer-mpr.png")?;
    for (k, pane) in first.iter().take(3).enumerate() {
        assert!(pane.distinct_greys() > 30, "pane {k} shows only {} grey levels", pane.distinct_greys());
    }
    let rendered = first[3].pixels.iter().filter(|p| p[0] > 40).count();
    assert!(rendered > 1000, "the volume rendering is empty ({rendered} lit pixels)");
    // Software Vulkan under a loaded CI machine can take a while per frame: wait for the change.
    let changed = |before: &Rgb, pane: usize, name: &str| -> anyhow::Result<Vec<Rgb>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = panes(name)?;
            if before.mean_abs_diff(&now[pane]) > 2.0 || std::time::Instant::now() > deadline {
                return Ok(now);
            }
        }
    };
    x.xdotool(&["mousemove", "200", "330", "click", "1"])?;
    let clicked = changed(&first[1], 1, "viewer-mpr-clicked.png")?;
    assert!(first[1].mean_abs_diff(&clicked[1]) > 2.0, "the coronal plane did not follow the crosshair");
    x.xdotool(&["mousemove", "200", "250"])?;
    for _ in 0..6 {
        x.xdotool(&["click", "4"])?;
        std::thread::sleep(Duration::from_millis(120));
    }
    let scrolled = changed(&clicked[0], 0, "viewer-mpr-scrolled.png")?;
    assert!(clicked[0].mean_abs_diff(&scrolled[0]) > 2.0, "the wheel did not move the axial plane");
    // Turn the 3-D view by dragging in it.
    // Slowly: a software-rendered frame can take a few hundred milliseconds, and a press, the
    // moves and the release within one frame read as a click.
    x.xdotool(&["mousemove", "650", "620", "mousedown", "1"])?;
    std::thread::sleep(Duration::from_millis(300));
    for step in 1..=10 {
        x.xdotool(&["mousemove", &(650 + 12 * step).to_string(), &(620 - 4 * step).to_string()])?;
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(300));
    x.xdotool(&["mouseup", "1"])?;
    let turned = changed(&scrolled[3], 3, "viewer-mpr-turned.png")?;
    assert!(scrolled[3].mean_abs_diff(&turned[3]) > 2.0, "dragging did not turn the 3-D view");
    // G: the three planes in one row (1×3); the 3-D pane's place at the bottom right empties.
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync", "key", "g"])?;
    let row = changed(&turned[3], 3, "viewer-mpr-1x3.png")?;
    let lit = row[3].pixels.iter().filter(|p| p[0] > 40).count();
    assert!(lit < rendered / 10, "the 3-D pane is still drawn in 1×3 ({lit} lit pixels)");
    // K: the planes through the "hot" colour table.
    let grey = {
        let shot = screenshot_dir()?.join("viewer-mpr-1x3-axial.png");
        x.screenshot(&shot)?;
        Rgb::load(&shot)?.crop(20, 340, 260, 160)
    };
    x.xdotool(&["key", "k"])?;
    stdout.wait_for("colour table hot", Duration::from_secs(10))?;
    // In 1×3 the axial image lies at the left, half way down.
    let axial = |name: &str| -> anyhow::Result<Rgb> {
        let shot = screenshot_dir()?.join(name);
        x.screenshot(&shot)?;
        Ok(Rgb::load(&shot)?.crop(20, 340, 260, 160))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut hot = axial("viewer-mpr-hot.png")?;
    while grey.mean_abs_diff(&hot) < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        hot = axial("viewer-mpr-hot.png")?;
    }
    let coloured = hot.pixels.iter().filter(|p| p[0].abs_diff(p[2]) > 40).count();
    assert!(coloured > 1000, "the hot table is not drawn ({coloured} coloured pixels)");
    Ok(())
}

/// A volume over the GPU memory allowed (`LIGHTBOX_GPU_VOLUME_MB`) still opens in the MPR
/// layout: the GPU holds it at half resolution and the 3-D pane, drawn from it, says so in its
/// title and on stdout; the planes, drawn on the CPU at full resolution on lavapipe, do not.
#[test]
fn mpr_layout_draws_a_volume_over_the_gpu_memory_at_half_resolution() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    // The demo's 2.6 MB of voxels over 1 MB.
    let (mut stdout, _child) = viewer_on_demo(&x, &["--mpr"], &[("LIGHTBOX_GPU_VOLUME_MB", "1")])?;
    // On a GPU every pane is drawn from the GPU's copy; on lavapipe the planes are drawn on the
    // CPU from the full volume.
    let launch = stdout.wait_for("launches its pixels by", Duration::from_secs(60))?;
    let software = launch.contains("llvmpipe");
    for plane in ["MPR Axial", "MPR Coronal", "MPR Sagittal", "MPR 3D"] {
        let line = stdout.wait_for(plane, Duration::from_secs(60))?;
        assert_eq!(line.contains("drawn at 1/2 of its resolution"), plane == "MPR 3D" || !software, "{line}");
        if plane == "MPR Axial" {
            // 128 × 128 × 20 at 2 bytes: the 3 mm slices are not halved.
            assert!(line.contains("volume 0.7 MB on the GPU"), "{line}");
        }
    }
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(800));
    let shot = screenshot_dir()?.join("viewer-mpr-half-resolution.png");
    x.screenshot(&shot)?;
    let pane = Rgb::load(&shot)?.crop(540, 520, 220, 200);
    let lit = pane.pixels.iter().filter(|p| p[0] > 40).count();
    assert!(lit > 1000, "the volume rendering at half resolution is empty ({lit} lit pixels)");
    Ok(())
}

/// The segmentation in the MPR layout is drawn by the GPU in every plane; `O` hides it.
#[test]
fn mpr_layout_draws_the_segmentation_on_the_gpu() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let images = lightbox_tests::data("dcmqi_data/segmentations/ct-3slice")?;
    let seg = lightbox_tests::data("dcmqi_data/segmentations/liver.dcm")?;
    let mut child = x
        .command(&bin("lightbox-viewer")?)
        .arg(&images)
        .arg("--mpr")
        .arg("--seg")
        .arg(&seg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let _child = KillOnDrop(child);
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(600));
    let shown = coloured_pixels(&x, "viewer-mpr-seg.png")?;
    assert!(shown > 2_000, "only {shown} coloured pixels: the liver is not drawn in the MPR panes");
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync"])?;
    x.xdotool(&["key", "o"])?;
    std::thread::sleep(Duration::from_millis(600));
    let hidden = coloured_pixels(&x, "viewer-mpr-seg-hidden.png")?;
    // What stays coloured is the crosshair, the orientation letters and the scale bars.
    assert!(hidden < shown / 4, "O did not hide it: {shown} -> {hidden}");
    Ok(())
}

/// The length tool: M, then two clicks on the image; the viewer prints the length in mm, which
/// is the distance in patient space between the two voxel positions it names. Window presets
/// (keys 1–4) and cine (C) change what is shown.
#[test]
fn lengths_presets_and_cine() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let (mut stdout, _child) = viewer_on_demo(&x, &[], &[])?;
    stdout.wait_for("first frame presented", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(400));
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync"])?;
    x.xdotool(&["key", "m"])?;
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mousemove", "350", "300", "click", "1"])?;
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mousemove", "550", "450", "click", "1"])?;
    let line = stdout.wait_for("lightbox-viewer: length", Duration::from_secs(10))?;
    let numbers: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).filter_map(|t| t.parse().ok()).collect();
    // length, then the two voxel positions (x, y, slice).
    anyhow::ensure!(numbers.len() >= 7, "{line}");
    let (mm, a, b) = (numbers[0], [numbers[1], numbers[2], numbers[3]], [numbers[4], numbers[5], numbers[6]]);
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("no series"))?;
    let volume = report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no set"))?.load(0)?;
    let (pa, pb) = (volume.patient_from_voxel.transform_point(a), volume.patient_from_voxel.transform_point(b));
    let expected = ((pa[0] - pb[0]).powi(2) + (pa[1] - pb[1]).powi(2) + (pa[2] - pb[2]).powi(2)).sqrt();
    anyhow::ensure!((mm - expected).abs() < 0.05 && mm > 20.0, "{line}: expected {expected:.2} mm");
    // 200 x 150 screen points apart: the voxels are too (the image is square and letterboxed).
    anyhow::ensure!(((b[0] - a[0]) / (b[1] - a[1]) - 200.0 / 150.0).abs() < 0.05, "{line}");

    let shot = |name: &str| -> anyhow::Result<Rgb> {
        let path = screenshot_dir()?.join(name);
        x.screenshot(&path)?;
        Ok(Rgb::load(&path)?.crop(150, 200, 300, 300))
    };
    // Under a loaded CI machine a frame can take a while: wait (up to 15 s) for the change.
    let changed = |before: &Rgb, name: &str, by: f64| -> anyhow::Result<Rgb> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = shot(name)?;
            if before.mean_abs_diff(&now) > by || std::time::Instant::now() > deadline {
                return Ok(now);
            }
        }
    };
    let before = shot("viewer-preset-1.png")?;
    x.xdotool(&["key", "4"])?;
    let narrow = changed(&before, "viewer-preset-4.png", 5.0)?;
    anyhow::ensure!(before.mean_abs_diff(&narrow) > 5.0, "the narrow window preset changed nothing");
    x.xdotool(&["key", "c"])?;
    let playing = changed(&narrow, "viewer-cine.png", 2.0)?;
    anyhow::ensure!(narrow.mean_abs_diff(&playing) > 2.0, "cine did not advance the slices");
    Ok(())
}

/// Reads the numbers that follow `key` in a JSON event line, e.g. `"value":12.5`.
fn json_field(line: &str, key: &str) -> anyhow::Result<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_str(line)?;
    value.get(key).cloned().ok_or_else(|| anyhow::anyhow!("no {key} in {line}"))
}

/// Angle, ellipse and freehand ROI tools, and the workstation protocol: commands on stdin move
/// the slice, refuse a layout that does not fit, and close the window; every measurement leaves
/// as a `measurement_added` event, and ROI values are saved for the report.
#[test]
fn roi_and_angle_tools_and_the_message_protocol() -> anyhow::Result<()> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    lightbox_workflow::import(&store, &demo_study())?;
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox-viewer")?)
        .arg(demo_study())
        .args(["--protocol", "--as", "Doe^Jane", "--store"])
        .arg(&store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
    let mut stdout = Lines::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let mut child = KillOnDrop(child);
    let ready = stdout.wait_for(r#"{"event":"ready""#, Duration::from_secs(120))?;
    assert_eq!(json_field(&ready, "layout")?, "1x1", "{ready}");
    let series = json_field(&ready, "series_uid")?;

    writeln!(stdin, r#"{{"cmd":"goto","slice":5}}"#)?;
    let moved = stdout.wait_for(r#""event":"position_changed""#, Duration::from_secs(20))?;
    assert_eq!(json_field(&moved, "slice")?, 5, "{moved}");
    std::thread::sleep(Duration::from_millis(400));

    // Angle: arm end, vertex, arm end, drawn as a right angle on screen. The image keeps its
    // aspect in millimetres, so the angle in the patient is right too.
    x.xdotool(&["search", "--name", "Lightbox viewer", "windowfocus", "--sync", "key", "a"])?;
    for (px, py) in [("300", "300"), ("300", "450"), ("480", "450")] {
        std::thread::sleep(Duration::from_millis(200));
        x.xdotool(&["mousemove", px, py, "click", "1"])?;
    }
    let angle = stdout.wait_for(r#""kind":"angle""#, Duration::from_secs(10))?;
    let degrees = json_field(&angle, "value")?.as_f64().unwrap_or(f64::NAN);
    assert!((degrees - 90.0).abs() < 1.5, "{angle}");
    assert_eq!(json_field(&angle, "slice")?, 5, "{angle}");

    // Ellipse: two corners of its box. Its area must be π·a·b of the box it was drawn in,
    // measured from the outline the event carries (patient mm).
    x.xdotool(&["key", "a", "key", "e"])?;
    for (px, py) in [("320", "320"), ("520", "440")] {
        std::thread::sleep(Duration::from_millis(200));
        x.xdotool(&["mousemove", px, py, "click", "1"])?;
    }
    let area = stdout.wait_for(r#""kind":"area""#, Duration::from_secs(10))?;
    let points: Vec<[f64; 3]> = serde_json::from_value(json_field(&area, "points_mm")?)?;
    let centre = [0, 1, 2].map(|c| points.iter().map(|p| p[c]).sum::<f64>() / points.len() as f64);
    let radius = |n: usize| {
        let p = points[n];
        ((p[0] - centre[0]).powi(2) + (p[1] - centre[1]).powi(2) + (p[2] - centre[2]).powi(2)).sqrt()
    };
    // Outline point 0 lies at the end of one axis, point 18 (a quarter turn) on the other.
    let expected = std::f64::consts::PI * radius(0) * radius(18);
    let value = json_field(&area, "value")?.as_f64().unwrap_or(f64::NAN);
    assert!((value - expected).abs() / expected < 0.01 && value > 100.0, "{area}: expected {expected:.1} mm2");
    assert!(json_field(&area, "saved_as")?.is_i64(), "the ROI area was not saved: {area}");
    let mean = stdout.wait_for(r#""kind":"mean""#, Duration::from_secs(5))?;
    assert_eq!(json_field(&mean, "unit")?, "1", "MR signal has no unit: {mean}");
    stdout.wait_for(r#""kind":"sd""#, Duration::from_secs(5))?;

    // Freehand: press, trace a square, release.
    x.xdotool(&["key", "e", "key", "f", "mousemove", "250", "250", "mousedown", "1"])?;
    std::thread::sleep(Duration::from_millis(200));
    for (px, py) in [("300", "250"), ("350", "250"), ("350", "300"), ("350", "350"), ("300", "350"), ("250", "350")] {
        x.xdotool(&["mousemove", px, py])?;
        std::thread::sleep(Duration::from_millis(120));
    }
    x.xdotool(&["mousemove", "250", "300"])?;
    std::thread::sleep(Duration::from_millis(200));
    x.xdotool(&["mouseup", "1"])?;
    let freehand = stdout.wait_for("freehand ROI on slice 5", Duration::from_secs(10))?;
    assert!(freehand.contains("mean"), "{freehand}");
    std::thread::sleep(Duration::from_millis(300));
    let shot = screenshot_dir()?.join("viewer-measurements.png");
    x.screenshot(&shot)?;

    writeln!(stdin, r#"{{"cmd":"layout","layout":"2x2"}}"#)?;
    let refused = stdout.wait_for(r#""event":"error""#, Duration::from_secs(10))?;
    assert!(refused.contains("does not fit"), "{refused}");
    writeln!(stdin, r#"{{"cmd":"close"}}"#)?;
    stdout.wait_for(r#"{"event":"closed"}"#, Duration::from_secs(10))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.0.try_wait()?.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.0.try_wait()?.is_some_and(|s| s.success()), "the viewer did not close cleanly");

    let listed = lightbox_tests::run_ok(
        std::process::Command::new(bin("lightbox")?)
            .args(["measure", "list", "--series", series.as_str().unwrap_or_default(), "--store"])
            .arg(&store),
    )?;
    for label in ["ROI 2 area (viewer)", "ROI 2 mean (viewer)", "ROI 2 SD (viewer)", "ROI 3 area (viewer)"] {
        assert!(listed.contains(label), "{label} missing from {listed}");
    }
    assert!(!listed.contains("Angle"), "angles are shown, not saved: {listed}");
    Ok(())
}
