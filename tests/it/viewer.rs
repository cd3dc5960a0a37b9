//! The viewer in a real window: Xvfb, Mesa's software Vulkan, screenshots that are really drawn,
//! and a person's input (wheel, drag) that changes what is shown.

use std::process::Stdio;
use std::time::Duration;

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
    x.xdotool(&["mousemove", "450", "400"])?;
    for _ in 0..3 {
        x.xdotool(&["click", "5"])?;
        std::thread::sleep(Duration::from_millis(150));
    }
    std::thread::sleep(Duration::from_millis(500));
    let scrolled = image_area(&x, "viewer-demo-scrolled.png")?;
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
