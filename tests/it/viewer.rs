//! The viewer in a real window: Xvfb, Mesa's software Vulkan, a screenshot that is really drawn.

use std::process::Stdio;
use std::time::Duration;

use lightbox_tests::{KillOnDrop, Lines, Rgb, Xvfb, bin, demo_study};

use crate::screenshot_dir;

#[test]
fn viewer_shows_demo_study_in_a_window() -> anyhow::Result<()> {
    let x = Xvfb::start()?;
    let mut child = x
        .command(&bin("lightbox-viewer")?)
        .arg(demo_study())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = Lines::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let stderr = Lines::new(
        child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?,
    );
    let mut child = KillOnDrop(child);

    let ready = stdout.wait_for("first frame presented", Duration::from_secs(120));
    if let Err(e) = ready {
        let _ = child.0.kill();
        let mut stderr = stderr;
        let _ = stderr.wait_for("\u{0}", Duration::from_millis(500));
        anyhow::bail!("{e}\nviewer stderr:\n{}", stderr.seen.join("\n"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let shot = screenshot_dir()?.join("viewer-demo.png");
    x.screenshot(&shot)?;
    assert!(child.0.try_wait()?.is_none(), "viewer exited early");

    let image = Rgb::load(&shot)?;
    // The window is 900x800 at the top left; its centre shows the slice. An MR slice has many grey
    // levels; a black texture, a failed render or an empty panel has one or two.
    let centre = image.crop(350, 300, 200, 200);
    let greys = centre.distinct_greys();
    assert!(
        greys > 100,
        "{}: only {greys} grey levels in the image area",
        shot.display()
    );
    Ok(())
}

#[test]
fn viewer_names_the_folder_when_there_is_nothing_to_show() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("notes.txt"), "not an image")?;
    let output = std::process::Command::new(bin("lightbox-viewer")?)
        .arg(dir.path())
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr.contains(&format!("{}: no image series found", dir.path().display())),
        "stderr: {stderr}"
    );
    Ok(())
}
