//! Benchmark: DICOM folder -> NIfTI, `lightbox export --nifti` against `dcm2niix`, on every
//! dcm_qa series, side by side in one run. Prints wall time (median of alternating runs), peak
//! RSS, and the ratios. Run with `cargo run -p lightbox-tests --bin bench-ingest`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lightbox_tests::{bin, data};

const RUNS: usize = 7;

struct Sample {
    wall: Duration,
    rss_kb: u64,
}

/// Runs `program args` under `/usr/bin/time` for its peak RSS; times the wall clock here.
fn measure(program: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<Sample> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let start = Instant::now();
    let output = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .arg(program)
        .args(args)
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    let wall = start.elapsed();
    if !output.status.success() {
        bail!("{} failed: {}", program.display(), String::from_utf8_lossy(&output.stderr));
    }
    let rss_kb = std::fs::read_to_string(rss_file.path())?.trim().lines().last().unwrap_or("0").trim().parse()?;
    Ok(Sample { wall, rss_kb })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn nifti_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "nii") {
            total += std::fs::metadata(&path)?.len().saturating_sub(352);
        }
    }
    Ok(total)
}

fn main() -> anyhow::Result<()> {
    let lightbox = bin("lightbox")?;
    let dcm2niix = PathBuf::from("/usr/bin/dcm2niix");
    if !dcm2niix.is_file() {
        bail!("dcm2niix not found (scripts/setup-debian.sh installs Debian's package)");
    }
    let version = Command::new(&dcm2niix).arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    println!("peer: {}", version.lines().last().unwrap_or("dcm2niix").trim());

    let mut cases: Vec<(String, PathBuf)> = Vec::new();
    for dataset in ["dcm_qa_nih", "dcm_qa_enh"] {
        let input = data(dataset)?.join("In");
        for vendor in std::fs::read_dir(&input)? {
            let vendor = vendor?.path();
            let mut series: Vec<PathBuf> =
                std::fs::read_dir(&vendor)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
            series.sort();
            if series.is_empty() {
                series.push(vendor.clone());
            }
            for s in series {
                let name = s.strip_prefix(data(dataset)?)?.display().to_string();
                cases.push((format!("{dataset}/{name}"), s));
            }
        }
    }
    cases.push(("dcm_qa_ts/In (9 syntaxes)".into(), data("dcm_qa_ts")?.join("In")));
    cases.sort();
    // One large series for the memory figure: the MNI152 T1 (197x233x189) written as DICOM by
    // `lightbox to-dicom`.
    let large = tempfile::tempdir()?;
    let mni = data("nilearn_mni152")?.join("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz");
    let written = Command::new(&lightbox)
        .arg("to-dicom")
        .arg(&mni)
        .arg("--out")
        .arg(large.path())
        .args(["--patient-id", "MNI152"])
        .output()?;
    if !written.status.success() {
        bail!("to-dicom failed: {}", String::from_utf8_lossy(&written.stderr));
    }
    cases.push(("MNI152 T1 via to-dicom (189 files)".into(), large.path().to_owned()));
    // What the process holds before it reads anything (code, allocator, thread pool).
    let baseline_kb = measure(&lightbox, &["--version".as_ref()])?.rss_kb;
    println!("lightbox baseline RSS: {:.1} MB (subtracted in the last column)", baseline_kb as f64 / 1024.0);

    println!(
        "{:<44} {:>9} {:>9} {:>6}  {:>8} {:>8} {:>8} {:>14}",
        "series folder", "ours ms", "d2n ms", "ratio", "ours MB", "d2n MB", "vol MB", "(rss-base)/vol"
    );
    let (mut ours_total, mut peer_total) = (Duration::ZERO, Duration::ZERO);
    for (name, folder) in &cases {
        let (mut ours, mut peer) = (Vec::new(), Vec::new());
        let (mut ours_rss, mut peer_rss, mut volume_bytes) = (0, 0, 0);
        for _ in 0..RUNS {
            let out = tempfile::tempdir()?;
            let s = measure(
                &lightbox,
                &["export".as_ref(), "--nifti".as_ref(), out.path().as_os_str(), folder.as_os_str()],
            )?;
            volume_bytes = nifti_bytes(out.path())?;
            ours.push(s.wall);
            ours_rss = ours_rss.max(s.rss_kb);
            let out = tempfile::tempdir()?;
            let args = [
                "-z".as_ref(),
                "n".as_ref(),
                "-v".as_ref(),
                "0".as_ref(),
                "-o".as_ref(),
                out.path().as_os_str(),
                folder.as_os_str(),
            ];
            let s = measure(&dcm2niix, &args)?;
            peer.push(s.wall);
            peer_rss = peer_rss.max(s.rss_kb);
        }
        let (o, p) = (median(ours), median(peer));
        ours_total += o;
        peer_total += p;
        let mb = |kb: u64| kb as f64 / 1024.0;
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>6.2}  {:>8.1} {:>8.1} {:>8.2} {:>14.2}",
            o.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            o.as_secs_f64() / p.as_secs_f64(),
            mb(ours_rss),
            mb(peer_rss),
            volume_bytes as f64 / 1048576.0,
            (ours_rss.saturating_sub(baseline_kb) * 1024) as f64 / volume_bytes.max(1) as f64,
        );
    }
    println!(
        "total: ours {:.1} ms, dcm2niix {:.1} ms, ratio {:.2} (goal <= 0.5; peak RSS goal <= 1.3x the volume)",
        ours_total.as_secs_f64() * 1e3,
        peer_total.as_secs_f64() * 1e3,
        ours_total.as_secs_f64() / peer_total.as_secs_f64()
    );
    Ok(())
}
