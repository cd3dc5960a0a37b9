//! Benchmark: brain extraction (deepbet on burn) of a 1 mm T1, the MNI152 2009a template
//! (197 × 233 × 189), against issue 7's goals: under 60 s on the CPU (2 cores, flex), under 2 s
//! on a GPU. Prints each stage's time, the ratio to the goal and the peak memory, in one run.
//! Run with `cargo run -p lightbox-tests --bin bench-ai [-- cpu|gpu|auto]` after
//! `scripts/install-models.sh`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lightbox_ai::{AiDevice, DevicePreference, deepbet::Deepbet};

/// Peak resident memory of this process (VmHWM), MB.
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let preference = DevicePreference::parse(&std::env::args().nth(1).unwrap_or_else(|| "cpu".into()))?;
    let root = lightbox_tests::workspace_root();
    let t1 = lightbox_tests::data("nilearn_mni152/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")?;
    let volume = lightbox_nifti::read(&t1)?.volume(0)?;
    let device = AiDevice::choose(preference)?;
    println!("bench-ai: deepbet on {} ({:?} voxels, 1 mm)", device.description, volume.dims());
    let gpu = device.gpu;
    let started = Instant::now();
    let net = Deepbet::from_packages(&root.join("models"), device)?;
    let load_s = started.elapsed().as_secs_f64();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let r = net.extract(&volume, 0.5, &AtomicBool::new(false), &mut |_| {})?;
        runs.push(r.seconds);
    }
    runs.sort_by(f64::total_cmp);
    let median = runs[1];
    let goal = if gpu { 2.0 } else { 60.0 };
    println!("load and check both packages: {load_s:.2} s");
    println!(
        "brain extraction: median {median:.2} s of 3 (fastest {:.2} s); goal < {goal} s: {:.1}x faster than the goal",
        runs[0],
        goal / median
    );
    println!("peak memory: {:.0} MB", peak_mb());
    Ok(())
}
