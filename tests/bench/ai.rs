//! Benchmark, against issue 7's figures, in one run:
//! - brain extraction (deepbet on burn) of a 1 mm T1, the MNI152 2009a template
//!   (197 × 233 × 189): goal under 60 s on the CPU (2 cores, flex), under 2 s on a GPU;
//! - nnU-Net's PlainConvUNet (features 32…320, 6 stages) forward on 1×1×128³, against PyTorch
//!   2.11 on an H100 (38.5 ms fp32; a CPU run only shows where we stand);
//! - issue 9's longitudinal atrophy pipeline (brain extraction, registration, halfway space,
//!   boundary shift integral) on the MNI152 T1 against a copy with 1 % simulated loss: goal
//!   under 60 s on a GPU (brain extraction is the part the GPU runs);
//! - issue 9's whole brain pipeline for one time point (brain extraction, tissue classes with
//!   partial volumes, the atlas registered and regional volumes): goal under 30 s on a GPU and
//!   under 5 min on 2 CPU cores; and the whole longitudinal one (both time points' volumes and
//!   regions with one atlas placement, and the atrophy): goal under 60 s on a GPU;
//! - the peak memory.
//!
//! Run with `cargo run -p lightbox-tests --bin bench-ai [-- cpu|gpu|auto]` after
//! `scripts/install-models.sh`.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use lightbox_ai::{AiDevice, Convolution, DevicePreference, Precision, deepbet::Deepbet};

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
    // LIGHTBOX_BENCH_UNET_ONLY: the PlainConvUNet figures alone (a second build of this bench,
    // with another kernel compiler, in the same device call).
    if std::env::var_os("LIGHTBOX_BENCH_UNET_ONLY").is_some() {
        return unet(&device);
    }
    // The atlas first: a missing one fails the run here, not after the minutes before issue 9's
    // pipelines.
    let atlas = lightbox_analysis::regions::Atlas::load(&root.join("models/atlas-dk"))?;
    println!("bench-ai: deepbet on {} ({:?} voxels, 1 mm)", device.description, volume.dims());
    let gpu = device.gpu;
    let started = Instant::now();
    let net = Deepbet::from_packages(&root.join("models"), device.clone())?;
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
    println!("peak memory after brain extraction: {:.0} MB", peak_mb());
    // LIGHTBOX_BENCH_PIPELINES_ONLY: brain extraction and issue 9's pipelines, without the
    // PlainConvUNet's minutes.
    if std::env::var_os("LIGHTBOX_BENCH_PIPELINES_ONLY").is_none() {
        unet(&device)?;
        println!("peak memory: {:.0} MB", peak_mb());
    }
    pipelines(preference, volume, &atlas)
}

/// nnU-Net's PlainConvUNet forward, in f32 and (on a GPU) f16, by burn's convolution kernels
/// and as matrix products (`LIGHTBOX_AI_CONV=gemm`), against PyTorch.
fn unet(device: &AiDevice) -> anyhow::Result<()> {
    let gpu = device.gpu;
    // nnU-Net 3d_fullres's usual network, random weights (speed does not depend on them).
    let strides = vec![[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]];
    let config = lightbox_ai::nnunet::PlainConvUNetConfig::plain(vec![32, 64, 128, 256, 320, 320], strides, 1, 2);
    let tensors: Vec<_> = config
        .expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            (name, shape, (0..n).map(|i| ((i % 97) as f32 / 97.0 - 0.5) * 0.05).collect::<Vec<f32>>())
        })
        .collect();
    let side = std::env::var("LIGHTBOX_BENCH_UNET_SIDE").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    if gpu {
        // Said first: where the tensor-core kernel does not apply, its ways are never listed.
        println!(
            "matrix units for Lightbox's tensor-core convolution on {}: {}",
            device.description,
            device.matrix_units()
        );
    }
    let shape = [1, 1, side, side, side];
    // Never time on constants: a fixed pseudo-random head-like input.
    let input = lightbox_tests::parity_input([side; 3], 1, 3);
    // PyTorch on this same machine, timed just before by scripts/device/pytorch_reference.py.
    // PyTorch's figures from the same machine (scripts/device/check.sh): where they could not be
    // made (PyTorch failed there), the timings go on without their ratios.
    let torch: Option<serde_json::Value> = match std::env::var_os("LIGHTBOX_TORCH_BENCH") {
        Some(path) => {
            let read = std::fs::read_to_string(&path).map_err(anyhow::Error::from);
            match read.and_then(|text| Ok(serde_json::from_str(&text)?)) {
                Ok(figures) => Some(figures),
                Err(why) => {
                    println!("PyTorch's figures in {}: not read ({why}); no ratios against them", path.display());
                    None
                }
            }
        }
        None => None,
    };
    // Half precision (nnU-Net's autocast) is timed on a GPU, where it reaches the tensor cores;
    // on the CPU only when LIGHTBOX_AI_PRECISION asks for it.
    let precisions = if gpu { vec![Precision::F32, Precision::F16] } else { vec![device.precision] };
    let mut outputs = Vec::new();
    // GEMM convolutions in slabs of at most 96 MiB of columns (the default), and on a GPU also
    // of 1 GiB: fewer, larger matrix products where the GPU binds them.
    let convolutions: &[Convolution] = if gpu {
        &[Convolution::Burn, Convolution::GEMM, Convolution::Gemm { column_mib: 1024 }]
    } else {
        &[Convolution::Burn, Convolution::GEMM]
    };
    let mut variants: Vec<(Precision, Convolution)> =
        precisions.iter().flat_map(|&p| convolutions.iter().map(move |&c| (p, c))).collect();
    // LIGHTBOX_BENCH_VARIANTS, e.g. "f32:tuned:1024,f16:burn": these alone, in this order (the
    // first is what the others' logits are compared with); empty: none (the layer alone).
    if let Ok(list) = std::env::var("LIGHTBOX_BENCH_VARIANTS") {
        variants = list
            .split(',')
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                let (precision, convolution) = v.split_once(':').unwrap_or((v, ""));
                Ok((Precision::parse(precision)?, Convolution::parse(convolution)?))
            })
            .collect::<Result<_, lightbox_ai::AiError>>()?;
    }
    let mut printed = std::collections::HashSet::new();
    for (precision, convolution) in variants {
        let device = match device.clone().with_convolution(convolution).with_precision(precision) {
            Ok(device) => device,
            Err(why) => {
                println!("PlainConvUNet in {precision:?}: not timed ({why})");
                continue;
            }
        };
        let unet = lightbox_ai::nnunet::PlainConvUNet::from_tensors("bench", config.clone(), &tensors, &device.device)?
            .with_precision(precision)
            .with_convolution(convolution);
        let forward = || unet.forward_values(&device, input.clone(), shape);
        // The first run pays for burn's autotune and, with tuned convolutions, for timing each
        // layer shape this process meets for the first time and no earlier one kept.
        let started = Instant::now();
        outputs.push(((precision, convolution), forward()?));
        let first_ms = started.elapsed().as_secs_f64() * 1000.0;
        // At once, so that a call cut short still says it (the medians come after ten runs).
        let tuned = matches!(convolution, Convolution::Tuned { .. });
        let layers = lightbox_ai::ops::tuned_layers();
        let remembered = layers.iter().filter(|l| l.remembered).count();
        let shapes = format!(
            " (tuned layer shapes so far: {} timed in this process, {remembered} remembered from an earlier one)",
            layers.len() - remembered
        );
        println!(
            "PlainConvUNet 1×1×{side}³ {precision:?}, {convolution:?}: first run in this process {first_ms:.0} ms{}",
            if tuned { shapes.as_str() } else { "" }
        );
        // What the tuned convolutions chose for the shapes this variant met first, at once too.
        if tuned {
            print_new_tuned_layers(&mut printed);
        }
        // Six variants on a GPU (precision × convolution) in one device call: ten runs each.
        let runs = if gpu { 10 } else { 2 };
        let median_ms = |forward: &dyn Fn() -> Result<Vec<f32>, lightbox_ai::AiError>| {
            let mut times = Vec::new();
            for _ in 0..runs {
                let started = Instant::now();
                forward()?;
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            Ok::<f64, lightbox_ai::AiError>(times[times.len() / 2])
        };
        let ms = median_ms(&forward)?;
        // As PyTorch's figure is timed: the input on the device beforehand, the logits left there.
        let resident_ms = unet.resident_median_ms(&device, input.clone(), shape, runs)?;
        println!(
            "  the same without the upload and readback (input on the device, logits left there, as PyTorch is timed): median {resident_ms:.1} ms"
        );
        // PyTorch 2.11 on an H100 (issue 7): fp32, TF32 (what `tuned-tf32` compares with), fp16.
        let (ours, h100) = match (precision, convolution) {
            (Precision::F32, Convolution::Tuned { tf32: true, .. }) => ("tf32", 17.7),
            (Precision::F32, _) => ("fp32", 38.5),
            (Precision::F16, _) => ("fp16", 14.7),
        };
        println!(
            "PlainConvUNet 32…320, 6 stages, 1×1×{side}³ {ours} on {}{} (upload and readback included): median {ms:.1} ms of {runs}; PyTorch 2.11 {ours} on an H100: {h100} ms → {:.3}x PyTorch's speed{}",
            device.description,
            match convolution {
                Convolution::Gemm { column_mib } | Convolution::Tuned { column_mib, .. } =>
                    format!(" in slabs of ≤ {column_mib} MiB"),
                Convolution::Burn | Convolution::Units => String::new(),
            },
            h100 / ms,
            if gpu { "" } else { " (CPU against GPU: not comparable, shown for scale)" }
        );
        // Where a run's time goes, by kind of operation, each timed from an idle device to an
        // idle device (the waits included, so the sum exceeds the median).
        let (profiled, found) = lightbox_ai::profile::sections(forward);
        profiled?;
        let covered: f64 = found.iter().map(|s| s.ms).sum();
        println!(
            "  one run by kind of operation, each alone: {}",
            found.iter().map(|s| format!("{} {:.1} ms ({})", s.what, s.ms, s.count)).collect::<Vec<_>>().join(", ")
        );
        println!("  ({covered:.1} ms in all, against the median {ms:.1} ms unprofiled)");
        // On a GPU, the same network with its instance norms by burn's operations (in f32) instead
        // of Lightbox's kernels (crate lightbox_ai::norm), so that each run says what they save.
        if gpu {
            let by_ops =
                lightbox_ai::nnunet::PlainConvUNet::from_tensors("bench", config.clone(), &tensors, &device.device)?
                    .with_precision(precision)
                    .with_convolution(convolution)
                    .with_norm_kernels(false);
            by_ops.forward_values(&device, input.clone(), shape)?;
            let ops_ms = median_ms(&|| by_ops.forward_values(&device, input.clone(), shape))?;
            println!(
                "  the same with its instance norms by burn's operations: median {ops_ms:.1} ms; by Lightbox's norm kernels {ms:.1} ms ({:.2}x faster)",
                ops_ms / ms
            );
        }
        // The same precision first (the goal), then TF32 for fp32: PyTorch's fp32 default on
        // NVIDIA, which Vulkan does not offer burn. Convolutions tuned to TF32's accuracy
        // (`tuned-tf32`: Winograd's F(4, 3) allowed) are compared with TF32 alone.
        let modes: &[&str] = match (precision, convolution) {
            (Precision::F32, Convolution::Tuned { tf32: true, .. }) => &["tf32"],
            (Precision::F32, _) => &["fp32", "tf32"],
            (Precision::F16, _) => &["fp16"],
        };
        for mode in modes {
            if let Some(theirs) = torch.as_ref().and_then(|t| t[format!("{mode}_ms")].as_f64()) {
                let t = torch.as_ref().map_or(&serde_json::Value::Null, |t| t);
                println!(
                    "  PyTorch {} {mode} on {}: {theirs:.2} ms → burn {ours} at {:.3}x PyTorch {mode}'s speed with the upload and readback, {:.3}x without, as PyTorch is timed (goal ≥ 1.0 at the same precision)",
                    t["torch"].as_str().unwrap_or("?"),
                    t["gpu"].as_str().unwrap_or("?"),
                    theirs / ms,
                    theirs / resident_ms,
                );
            }
        }
    }
    // One full-resolution layer: burn's kernels, the GEMM path, and the GEMM path's matrix
    // products alone, so that a GPU run tells its copies from its arithmetic.
    // LIGHTBOX_BENCH_LAYER_PRECISION (f32 or f16): that precision alone; none: no layer.
    let layer_precisions = match std::env::var("LIGHTBOX_BENCH_LAYER_PRECISION") {
        Ok(p) if p.trim() == "none" => Vec::new(),
        Ok(p) => vec![Precision::parse(&p)?],
        Err(_) => precisions.clone(),
    };
    if gpu || std::env::var_os("LIGHTBOX_BENCH_LAYER").is_some() {
        for &precision in &layer_precisions {
            let Ok(device) = device.clone().with_precision(precision) else { continue };
            let runs = if gpu { 5 } else { 1 };
            // Lightbox's own ways as each is timed (a call cut short still shows them), then
            // burn's and the GEMM path's.
            let gflop = 2.0 * (side * side * side * 32 * 27 * 32) as f64 / 1e9;
            println!(
                "one full-resolution layer (32 → 32 channels, 3³, {side}³, {precision:?}) on {}, Lightbox's own ways first:",
                device.description
            );
            let t = lightbox_ai::profile::convolution_layer(&device, 32, side, (96, runs), |way, ms| match ms {
                Ok(ms) => println!("  the same layer by {}: {ms:.2} ms ({:.3} TFLOPS)", way.describe(), gflop / ms),
                Err(why) => println!("  the same layer by {}: left out, {why}", way.describe()),
            })?;
            // 10⁹ operations a millisecond are 10¹² a second.
            let copies_ms = t.gemm_ms - t.matmul_ms;
            let copies = if copies_ms > 0.05 * t.gemm_ms {
                format!("about {copies_ms:.2} ms ({:.0} GB/s written)", t.column_gb * 1000.0 / copies_ms)
            } else {
                "too little to tell from the products".to_owned()
            };
            println!(
                "one full-resolution layer (32 → 32 channels, 3³, {side}³, {precision:?}) on {}: burn's kernels {:.2} ms ({:.3} TFLOPS); as matrix products in slabs of ≤ 96 MiB {:.2} ms ({:.3} TFLOPS) (transposed: {:.2} ms), of which the products alone {:.2} ms ({:.3} TFLOPS) and the copies into {:.2} GB of columns {copies}",
                device.description,
                t.burn_ms,
                t.gflop / t.burn_ms,
                t.gemm_ms,
                t.gflop / t.gemm_ms,
                t.gemm_transposed_ms,
                t.matmul_ms,
                t.gflop / t.matmul_ms,
                t.column_gb,
            );
            // Read once for the statistics' two passes and once to normalise, written once.
            let bytes = match precision {
                Precision::F32 => 4,
                Precision::F16 => 2,
            };
            let gb = 4.0 * (32 * side * side * side * bytes) as f64 / 1e9;
            let kernels = t.norm_kernels_ms.map_or_else(
                || "Lightbox's norm kernels: not here (a GPU's)".to_owned(),
                |ms| {
                    format!(
                        "by Lightbox's norm kernels {ms:.3} ms ({:.0} GB/s moved; {:.2}x burn's)",
                        gb / ms * 1000.0,
                        t.norm_ops_ms / ms
                    )
                },
            );
            println!("  its instance norm and LeakyReLU: by burn's operations {:.3} ms, {kernels}", t.norm_ops_ms);
        }
    }
    // Every other run must still compute the same network: its logits against f32 by burn's
    // kernels.
    if let Some(((first_precision, first_convolution), f32s)) = outputs.first() {
        let scale = f32s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        // Two classes (the configuration above): class 0's logits, then class 1's.
        let voxels = f32s.len() / 2;
        for ((precision, convolution), other) in &outputs[1..] {
            let worst = f32s.iter().zip(other).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let changed =
                (0..voxels).filter(|&i| (f32s[i] > f32s[i + voxels]) != (other[i] > other[i + voxels])).count();
            println!(
                "  {precision:?} with {convolution:?} convolutions against {first_precision:?} with {first_convolution:?}: max abs difference {worst:.3e} ({:.2} % of the largest |logit|, {scale:.2}); argmax changed in {changed} of {voxels} voxels",
                100.0 * worst / scale
            );
        }
    }
    Ok(())
}

/// What the tuned convolutions chose for each layer shape not in `printed` yet (slowest first),
/// each way's median time beside it; the shapes are added to `printed`.
fn print_new_tuned_layers(printed: &mut std::collections::HashSet<String>) {
    let mut layers: Vec<_> =
        lightbox_ai::ops::tuned_layers().into_iter().filter(|l| !printed.contains(&l.shape)).collect();
    let best = |l: &lightbox_ai::ops::TunedLayer| l.ms.iter().map(|m| m.1).fold(f64::INFINITY, f64::min);
    layers.sort_by(|a, b| best(b).total_cmp(&best(a)));
    for l in layers {
        let times: Vec<String> = l.ms.iter().map(|(way, ms)| format!("{} {ms:.3} ms", way.describe())).collect();
        let whence = if l.remembered { " (remembered from an earlier run)" } else { "" };
        println!("  tuned convolution {}: {} → {}{whence}", l.shape, times.join(", "), l.way.describe());
        printed.insert(l.shape);
    }
}

/// Issue 9's pipelines: longitudinal atrophy and the whole brain pipeline.
fn pipelines(
    preference: DevicePreference,
    volume: lightbox_core::Volume<f32>,
    atlas: &lightbox_analysis::regions::Atlas,
) -> anyhow::Result<()> {
    let root = lightbox_tests::workspace_root();
    // Issue 9: the longitudinal pipeline, end to end, on a known 1 % loss.
    let device = AiDevice::choose(preference)?;
    let gpu = device.gpu;
    let where_ = device.description.clone();
    let net = Deepbet::from_packages(&root.join("models"), device)?;
    let brain = net.extract(&volume, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = brain.mask_f32();
    let motion =
        lightbox_imaging::RigidParams { rotation_rad: [0.02, -0.015, 0.025], translation_mm: [1.3, -0.7, 0.9] };
    let [nx, ny, nz] = volume.dims();
    let centre = volume.patient_from_voxel.transform_point([nx, ny, nz].map(|n| n as f64 / 2.0));
    let followup = lightbox_imaging::atrophy::simulate_atrophy(&volume, &mask, 0.01, &motion.to_affine(centre))?;
    let report = lightbox_analysis::brain::atrophy(&net, &volume, &followup, 1.0, Some(60.0))?;
    let goal = if gpu { 60.0 } else { 300.0 };
    println!(
        "atrophy pipeline, MNI152 T1 against 1 % simulated loss: {:.1} s with brain extraction on {where_} (PBVC {:+.3} %); goal < {goal} s: {:.1}x under it",
        report.seconds,
        report.pbvc_percent,
        goal / report.seconds
    );
    println!("peak memory: {:.0} MB", peak_mb());

    // Issue 9: the whole pipeline as `brain-atrophy` runs it, one time point, then two.
    let started = Instant::now();
    let (now, now_mask) = volumes_and_mask(&net, &volume)?;
    let scan = lightbox_analysis::regions::Scan {
        t1: &volume,
        brain: &now_mask,
        tissues: &now.labels,
        csf_fraction: &now.csf_fraction,
    };
    let regions = lightbox_analysis::regions::regional_volumes(scan, atlas)?;
    let one = started.elapsed().as_secs_f64();
    let goal = if gpu { 30.0 } else { 300.0 };
    println!(
        "brain pipeline, one time point (brain extraction on {where_}, tissues, atlas regions): {one:.1} s ({}); goal < {goal} s: {:.1}x under it",
        regions.summary(),
        goal / one
    );
    let started = Instant::now();
    let (then, then_mask) = volumes_and_mask(&net, &followup)?;
    let (_, now_mask2) = volumes_and_mask(&net, &volume)?;
    let prior = lightbox_analysis::regions::Scan {
        t1: &volume,
        brain: &now_mask2,
        tissues: &now.labels,
        csf_fraction: &now.csf_fraction,
    };
    let follow = lightbox_analysis::regions::Scan {
        t1: &followup,
        brain: &then_mask,
        tissues: &then.labels,
        csf_fraction: &then.csf_fraction,
    };
    lightbox_analysis::regions::regional_change(prior, follow, atlas)?;
    // As brain-atrophy does it: the baseline's mask from its volumes serves the atrophy too.
    let mask = lightbox_core::Volume::new(
        now_mask2.dims(),
        now_mask2.voxels().iter().map(|&m| f32::from(m)).collect(),
        now_mask2.patient_from_voxel,
    )?;
    lightbox_analysis::brain::atrophy_in_mask(&volume, &followup, &mask, 1.0, Some(60.0))?;
    let two = started.elapsed().as_secs_f64();
    let goal = if gpu { 60.0 } else { 600.0 };
    println!(
        "brain pipeline, two time points (both volumes, regions with one atlas placement, atrophy; brain extraction on {where_}): {two:.1} s; goal < {goal} s{}: {:.1}x under it",
        if gpu { "" } else { " (no CPU goal is named: twice the one-time-point goal)" },
        goal / two
    );
    println!("peak memory: {:.0} MB", peak_mb());
    Ok(())
}

/// Volumes of one T1 and its intracranial mask, as the brain-atrophy pipeline makes them.
fn volumes_and_mask(
    net: &Deepbet,
    t1: &lightbox_core::Volume<f32>,
) -> anyhow::Result<(lightbox_analysis::brain::BrainVolumes, lightbox_core::Volume<u8>)> {
    let volumes = lightbox_analysis::brain::volumes(net, t1)?;
    let labels = &volumes.labels;
    let mask = labels.voxels().iter().map(|&l| u8::from(l > 0)).collect();
    let mask = lightbox_core::Volume::new(labels.dims(), mask, labels.patient_from_voxel)?;
    Ok((volumes, mask))
}
