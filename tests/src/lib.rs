//! Helpers shared by the integration tests: where the test data and the built binaries are, a
//! private X server, screenshots and their statistics, and waiting for a process to say a line.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

pub mod dce;
pub mod dcmtk;
pub mod dicomfile;
pub mod listener;
pub mod nnunet;
pub mod orthanc;
pub mod proxy;
pub mod pypeer;

/// The workspace root.
/// The workspace root. Cargo sets `CARGO_MANIFEST_DIR` when it runs tests and binaries; the
/// compile-time value is only a fallback (a shared target dir may hold a build from another clone).
pub fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let root = manifest.join("..");
    root.canonicalize().unwrap_or(root)
}

/// `../shared/data` beside the project, or `LIGHTBOX_TEST_DATA`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("LIGHTBOX_TEST_DATA").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("../shared/data"))
}

/// A path under [`data_dir`], which must exist: missing data fails the test, never skips it.
pub fn data(relative: &str) -> anyhow::Result<PathBuf> {
    let path = data_dir().join(relative);
    if !path.exists() {
        bail!("test data {} is missing (set LIGHTBOX_TEST_DATA to the shared data folder)", path.display());
    }
    Ok(path)
}

/// The bundled demo study.
pub fn demo_study() -> PathBuf {
    workspace_root().join("demo/prostate-adc")
}

/// A binary of the workspace, built beside this test binary (`cargo build --workspace --bins`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/it-<hash> or target/<profile>/bench-ingest  ->  target/<profile>/<name>
    let mut profile_dir = exe.parent().context("binary has no folder")?;
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().context("deps has no parent")?;
    }
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!("{} not built; run `cargo build --workspace --bins` first", path.display());
    }
    Ok(path)
}

/// Runs a command to completion and returns its stdout, failing on a non-zero exit.
pub fn run_ok(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// A private X server (Xvfb) on a free display, killed on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
    runtime_dir: tempfile::TempDir,
}

impl Xvfb {
    pub fn start() -> anyhow::Result<Self> {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1280x900x24", "-nolisten", "tcp", "-noreset"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb (run scripts/setup-debian.sh)")?;
        let stdout = child.stdout.take().context("Xvfb stdout")?;
        let line = read_line_within(stdout, Duration::from_secs(20)).context("Xvfb did not report a display")?;
        let runtime_dir = tempfile::Builder::new().prefix("lightbox-xdg-").tempdir()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(runtime_dir.path(), std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { child, display: format!(":{}", line.trim()), runtime_dir })
    }

    /// A command that runs on this display with Mesa's software Vulkan available.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("DISPLAY", &self.display)
            .env("XDG_RUNTIME_DIR", self.runtime_dir.path())
            .env_remove("WAYLAND_DISPLAY")
            .env("LIBGL_ALWAYS_SOFTWARE", "1")
            .env("WEBKIT_DISABLE_DMABUF_RENDERER", "1");
        c
    }

    /// Runs `xdotool` on this display (pointer and keyboard input, as a person would give it).
    pub fn xdotool(&self, args: &[&str]) -> anyhow::Result<()> {
        run_ok(Command::new("xdotool").env("DISPLAY", &self.display).args(args))?;
        Ok(())
    }

    /// Saves the whole screen as PNG (ImageMagick's `import`).
    pub fn screenshot(&self, out: &Path) -> anyhow::Result<()> {
        run_ok(
            Command::new("import")
                .args(["-display", &self.display, "-window", "root"])
                .arg(format!("PNG24:{}", out.display())),
        )?;
        Ok(())
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line_within(stdout: ChildStdout, timeout: Duration) -> anyhow::Result<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(timeout)?;
    if line.is_empty() {
        bail!("stream closed");
    }
    Ok(line)
}

/// Collects a child's output lines in the background, so a test can wait for one of them.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx, seen: Vec::new() }
    }

    /// Waits until a line contains `needle`; fails with everything seen so far. A job's failure
    /// (the engine's "job N failed: …") ends the wait at once, unless `needle` is a failure: a
    /// pipeline that failed never prints what the test waits for. (A series still arriving is
    /// "job N waiting: …", not a failure.)
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                    if !needle.contains("failed") && is_job_failure(&line) {
                        bail!("{line}\nwhile waiting for a line containing {needle:?}; saw:\n{}", self.seen.join("\n"));
                    }
                }
                Err(_) => bail!("no line containing {needle:?} within {timeout:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }
}

/// `lightbox listen` on a free loopback port with the dispatch rules `rules` (TOML text) and
/// the store `store` (the rules' file goes beside it), with `env` added to its environment;
/// returned once it listens, with its output lines.
pub fn listen_local(rules: &str, store: &Path, env: &[(&str, &str)]) -> anyhow::Result<(KillOnDrop, Lines)> {
    let rules_path = store.with_extension("rules.toml");
    std::fs::write(&rules_path, rules)?;
    let mut listener = KillOnDrop(
        Command::new(bin("lightbox")?)
            .args(["listen", "--bind", "127.0.0.1", "--port", &orthanc::free_port()?.to_string(), "--rules"])
            .arg(&rules_path)
            .arg("--store")
            .arg(store)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = Lines::new(listener.0.stdout.take().context("no stdout")?);
    lines.wait_for("listening as LIGHTBOX", Duration::from_secs(10))?;
    Ok((listener, lines))
}

/// Whether `line` is the engine's "job N failed: …".
fn is_job_failure(line: &str) -> bool {
    line.match_indices("job ").any(|(at, _)| {
        let rest = &line[at + 4..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        digits > 0 && rest[digits..].starts_with(" failed: ")
    })
}

/// Kills a child on drop, so a failing test leaves no window behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An RGB image read from a PNG.
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<[u8; 3]>,
}

impl Rgb {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let decoder = png::Decoder::new(BufReader::new(std::fs::File::open(path)?));
        let mut reader = decoder.read_info()?;
        let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
        let info = reader.next_frame(&mut buf)?;
        let channels = info.color_type.samples();
        if info.bit_depth != png::BitDepth::Eight || channels < 3 {
            bail!("{}: expected 8-bit RGB(A), got {:?} {:?}", path.display(), info.bit_depth, info.color_type);
        }
        let pixels = buf[..info.buffer_size()].chunks_exact(channels).map(|p| [p[0], p[1], p[2]]).collect();
        Ok(Self { width: info.width, height: info.height, pixels })
    }

    pub fn distinct_colours(&self) -> usize {
        let set: std::collections::HashSet<[u8; 3]> = self.pixels.iter().copied().collect();
        set.len()
    }

    /// Pixels whose colour is within `tolerance` (per channel) of `colour`.
    pub fn count_near(&self, colour: [u8; 3], tolerance: u8) -> usize {
        self.pixels.iter().filter(|p| (0..3).all(|c| p[c].abs_diff(colour[c]) <= tolerance)).count()
    }

    /// The pixels of a rectangle (clipped to the image).
    pub fn crop(&self, x: u32, y: u32, width: u32, height: u32) -> Self {
        let (x1, y1) = ((x + width).min(self.width), (y + height).min(self.height));
        let mut pixels = Vec::new();
        for row in y.min(y1)..y1 {
            let start = (row * self.width) as usize;
            pixels.extend_from_slice(&self.pixels[start + x.min(x1) as usize..start + x1 as usize]);
        }
        Self { width: x1.saturating_sub(x), height: y1.saturating_sub(y), pixels }
    }

    /// Mean absolute difference per channel between two images of the same size.
    pub fn mean_abs_diff(&self, other: &Self) -> f64 {
        let total: u64 = self
            .pixels
            .iter()
            .zip(&other.pixels)
            .map(|(a, b)| (0..3).map(|c| u64::from(a[c].abs_diff(b[c]))).sum::<u64>())
            .sum();
        total as f64 / (3 * self.pixels.len().max(1)) as f64
    }

    /// Distinct grey levels (r = g = b) among the pixels: an image drawn by the viewer has many.
    pub fn distinct_greys(&self) -> usize {
        let set: std::collections::HashSet<u8> =
            self.pixels.iter().filter(|p| p[0] == p[1] && p[1] == p[2]).map(|p| p[0]).collect();
        set.len()
    }
}

/// The inputs of the PyTorch parity fixtures, generated alike here and by
/// `scripts/device/pytorch_reference.py` (exactly: integer hashing and sums of powers of two):
/// per channel `c`, a hash of each voxel's index (seed `seed + c`) scaled to [0, 0.5), plus 0.5
/// inside a ball at the centre (radius 3/10 of the shortest side). C order, `[channels, D, H, W]`.
pub fn parity_input([d, h, w]: [usize; 3], channels: usize, seed: u32) -> Vec<f32> {
    let r = d.min(h).min(w) as i64 * 3 / 10;
    let centre = [d / 2, h / 2, w / 2].map(|c| c as i64);
    let mut values = Vec::with_capacity(channels * d * h * w);
    for c in 0..channels {
        let seed = seed.wrapping_add(c as u32).wrapping_mul(40_503);
        for z in 0..d {
            for y in 0..h {
                for x in 0..w {
                    let i = (x + w * (y + h * z)) as u32;
                    let mut k = i.wrapping_mul(2_654_435_761).wrapping_add(seed);
                    k ^= k >> 15;
                    k = k.wrapping_mul(2_246_822_519);
                    k ^= k >> 13;
                    let noise = (k >> 9) as f32 / 8_388_608.0 * 0.5;
                    let [dz, dy, dx] = [z as i64 - centre[0], y as i64 - centre[1], x as i64 - centre[2]];
                    let ball = if dz * dz + dy * dy + dx * dx < r * r { 0.5 } else { 0.0 };
                    values.push(noise + ball);
                }
            }
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_at_a_jobs_failure_but_not_at_a_waiting_job() -> anyhow::Result<()> {
        assert!(is_job_failure("job 12 failed: analysis: no voxel is above 1000"));
        assert!(is_job_failure("engine: job 3 failed: deepbet is not installed"));
        assert!(!is_job_failure("job 1 waiting: series 1.2 is incomplete: 4 of its 7 phases have arrived"));
        assert!(!is_job_failure("outbox: sent 3, refused 0 (failed: 0)"));
        assert!(!is_job_failure("job failed: no number"));
        let lines = |text: &'static str| Lines::new(std::io::Cursor::new(text));
        let mut l = lines("job 1 queued\njob 1 waiting: incomplete\njob 2 failed: broken\npipeline x on 1.2\n");
        let e = l.wait_for("pipeline x on", Duration::from_secs(5)).err().context("a failed job ends the wait")?;
        assert!(e.to_string().starts_with("job 2 failed: broken"), "{e}");
        let mut l = lines("job 2 failed: broken\n");
        assert_eq!(l.wait_for("failed", Duration::from_secs(5))?, "job 2 failed: broken");
        Ok(())
    }
}
