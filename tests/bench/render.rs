//! Benchmark: the GPU renderer, against issue 5's goals and against our CPU reference of the
//! same sampling (a CPU-only MPR, as Weasis draws it). One run prints every figure and ratio.
//! Run with `cargo run -p lightbox-tests --bin bench-render [-- SIZE]` (SIZE³ voxels, default
//! 512). On a workstation without a GPU it runs on Mesa's lavapipe; absolute GPU figures count
//! only from a real GPU (the H100 goals below).

use std::time::{Duration, Instant};

use lightbox_core::{Affine3, StoredVolume, StoredVoxels, WindowLevel};
use lightbox_render::{
    GpuContext, GpuTimer, Launch, MprPlane, MprRenderer, PlaneSource, SliceParams, SliceRenderer, cpu,
};

/// The launch that `launch` is not.
fn other(launch: Launch) -> Launch {
    match launch {
        Launch::Fragment => Launch::Compute,
        Launch::Compute => Launch::Fragment,
    }
}

/// A head-sized phantom: a ball of tissue-like 16-bit values with a fine texture (so that no
/// cache or compression flatters the sampling), air around it. 1 mm voxels.
fn phantom(n: usize, slices: usize) -> StoredVolume {
    let mut voxels = vec![0u16; n * n * slices];
    let (c, cz, r2) = (n as i64 / 2, slices as i64 / 2, (n as i64 * 45 / 100).pow(2));
    for k in 0..slices {
        for j in 0..n {
            let row = n * (j + n * k);
            for i in 0..n {
                let (x, y, z) = (i as i64 - c, j as i64 - c, (k as i64 - cz) * n as i64 / slices.max(1) as i64);
                if x * x + y * y + z * z < r2 {
                    voxels[row + i] =
                        600 + ((i * 7 + j * 13 + k * 3) % 400) as u16 + if (x * x + y * y) < r2 / 9 { 900 } else { 0 };
                }
            }
        }
    }
    let affine = Affine3::from_columns([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-(n as f64) / 2.0; 3]);
    StoredVolume::new([n, n, slices], StoredVoxels::U16(voxels), affine, 1.0, 0.0)
        .unwrap_or_else(|_| unreachable!("dims and voxels agree"))
}

/// Frames per second: renders `plane_at(frame)` until `budget` has passed (at least
/// `min_frames`), waiting for the GPU every 8 frames and at the end.
fn fps(
    gpu: &GpuContext,
    renderer: &MprRenderer,
    window: WindowLevel,
    (budget, min_frames): (Duration, usize),
    plane_at: impl Fn(usize) -> MprPlane,
) -> anyhow::Result<f64> {
    // Warm up: pipelines, first-use allocations.
    if min_frames > 1 {
        renderer.render(&gpu.device, &gpu.queue, &plane_at(0), window, None)?;
        gpu.wait_idle()?;
    }
    let started = Instant::now();
    let mut frames = 0;
    while frames < min_frames || started.elapsed() < budget {
        renderer.render(&gpu.device, &gpu.queue, &plane_at(frames), window, None)?;
        frames += 1;
        if frames % 8 == 0 {
            gpu.wait_idle()?;
        }
    }
    gpu.wait_idle()?;
    Ok(frames as f64 / started.elapsed().as_secs_f64())
}

/// The median GPU time of a draw in ms, read from timestamp queries over `frames` draws (each
/// waited for); `None` where the GPU gives no timestamps.
fn gpu_ms(
    gpu: &GpuContext,
    renderer: &MprRenderer,
    window: WindowLevel,
    frames: usize,
    plane_at: impl Fn(usize) -> MprPlane,
) -> anyhow::Result<Option<f64>> {
    let Some(timer) = GpuTimer::new(&gpu.device, &gpu.queue) else { return Ok(None) };
    let mut times = (0..frames)
        .map(|f| renderer.render_timed(&gpu.device, &gpu.queue, &plane_at(f), window, &timer))
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied())
}

/// "; GPU time 0.123 ms (timestamps)" or nothing.
fn gpu_time_note(ms: Option<f64>) -> String {
    ms.map(|ms| format!("; GPU time {ms:.3} ms a frame (median, timestamps)")).unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(512);
    let gpu = GpuContext::headless()?;
    let real_gpu = !gpu.adapter_name.to_lowercase().contains("llvmpipe");
    println!(
        "bench-render on {} ({}), volume {n}³ 16-bit",
        gpu.adapter_name,
        if real_gpu { "GPU" } else { "software" }
    );
    let budget = (Duration::from_secs(3), 3);
    let launch = Launch::for_device(&gpu.device);
    println!("pixels launched by {launch:?} on this adapter (the other launch is timed beside it below)");
    let window = WindowLevel { center: 1000.0, width: 1600.0 };

    // Open → first pixels for a 300-slice series already in memory: upload, draw, read back. The
    // first thing this process draws, as the first series a user opens (pipelines compiled
    // then), before the figures below fill the GPU's memory with their volumes.
    let series = phantom(512, 300);
    let started = Instant::now();
    let plane = MprPlane::axial(&series.patient_from_voxel, series.dims(), [0.0; 3], 1.0);
    let first = MprRenderer::new_stored(&gpu.device, &gpu.queue, &series, None, plane.width, plane.height)?;
    gpu.wait_idle()?;
    let uploaded_ms = started.elapsed().as_secs_f64() * 1000.0;
    first.render(&gpu.device, &gpu.queue, &plane, window, None)?;
    let pixels = first.read_target(&gpu.device, &gpu.queue)?;
    let mpr_first_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The slice view as the viewer opens it: the volume in its stored 16-bit type.
    let started = Instant::now();
    let slices = SliceRenderer::new_stored(&gpu.device, &gpu.queue, &series)?;
    gpu.wait_idle()?;
    let slice_upload_ms = started.elapsed().as_secs_f64() * 1000.0;
    slices.render(&gpu.device, &gpu.queue, SliceParams { slice: 150, window })?;
    let slice_pixels = slices.read_target(&gpu.device, &gpu.queue)?;
    let slice_first_ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(pixels.iter().any(|&p| p > 0) && slice_pixels.iter().any(|&p| p > 0), "nothing was drawn");
    println!(
        "open → first pixels, 300 slices of 512²: MPR (16-bit) {mpr_first_ms:.0} ms ({uploaded_ms:.0} ms of it upload and pipeline), slice view (16-bit) {slice_first_ms:.0} ms ({slice_upload_ms:.0} ms upload and pipeline); goal < 300 ms: {:.2}x of goal",
        300.0 / mpr_first_ms.max(slice_first_ms)
    );
    let made = Instant::now();
    let volume = phantom(n, n);
    println!("phantom made in {:.1} s ({:.0} MB)", made.elapsed().as_secs_f64(), (n * n * n * 2) as f64 / 1e6);
    let a = volume.patient_from_voxel;
    let dims = volume.dims();
    let centre = [0.0, 0.0, 0.0];

    // MPR at 512² (1 mm pixels through a 512³ volume), the plane moving every frame.
    let axial = |f: usize| MprPlane::axial(&a, dims, [0.0, 0.0, (f % 64) as f64 - 32.0], 1.0);
    let plane = axial(0);
    let mpr = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, plane.width, plane.height)?;
    let gpu_fps = fps(&gpu, &mpr, window, budget, axial)?;
    let tilted = |t: f64| MprPlane::oblique(&a, dims, centre, [t.cos(), 0.0, t.sin()], [0.0, 0.8, 0.6], 1.0);
    let oblique = tilted(0.0);
    // Turning a little every frame; the target keeps the first frame's size.
    let oblique_at = |f: usize| MprPlane { width: oblique.width, height: oblique.height, ..tilted(f as f64 * 0.01) };
    let mpr_oblique = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, oblique.width, oblique.height)?;
    let oblique_fps = fps(&gpu, &mpr_oblique, window, budget, oblique_at)?;
    // The CPU reference of the same sampling: a CPU-only MPR.
    let float = volume.to_f32();
    let cpu_fps = |plane_at: &dyn Fn(usize) -> MprPlane| -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut frames = 0;
        while frames < 2 || started.elapsed() < budget.0 {
            std::hint::black_box(cpu::mpr_rgba(&float, &plane_at(frames), window)?);
            frames += 1;
        }
        Ok(frames as f64 / started.elapsed().as_secs_f64())
    };
    let (cpu_axial, cpu_oblique) = (cpu_fps(&axial)?, cpu_fps(&oblique_at)?);
    for (name, p, gpu_fps, cpu_fps) in
        [("axial", plane, gpu_fps, cpu_axial), ("oblique", oblique, oblique_fps, cpu_oblique)]
    {
        println!(
            "MPR {}x{} {name}: {gpu_fps:.1} fps GPU, {cpu_fps:.1} fps CPU reference (GPU/CPU {:.2}x); goal ≥ 30 fps on lavapipe: {:.2}x of goal",
            p.width,
            p.height,
            gpu_fps / cpu_fps,
            gpu_fps / 30.0
        );
    }

    // What a workstation without a GPU shows: on a software rasteriser the viewer draws the
    // panes on the CPU (`draw_on_cpu`), rows in parallel, and uploads them. At 512²
    // output pixels, axial and oblique (the oblique plane's middle 512 rows).
    let oblique_512 = |f: usize| {
        let mut p = oblique_at(f);
        let skip = f64::from(p.height.saturating_sub(512) / 2) * p.pixel_mm;
        p.corner = [0, 1, 2].map(|c| p.corner[c] + skip * p.down[c]);
        (p.width, p.height) = (512.min(p.width), 512.min(p.height));
        p
    };
    let (w512, h512) = (oblique_512(0).width, oblique_512(0).height);
    let on_cpu = |p: &MprPlane| -> anyhow::Result<MprRenderer> {
        let mut r = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, p.width, p.height)?;
        r.draw_on_cpu(PlaneSource::Stored(&volume), None, None)?;
        Ok(r)
    };
    let shader_512 = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, w512, h512)?;
    let shader_oblique_512 = fps(&gpu, &shader_512, window, budget, oblique_512)?;
    let cpu_path_axial = fps(&gpu, &on_cpu(&axial(0))?, window, budget, axial)?;
    let cpu_path_oblique = fps(&gpu, &on_cpu(&oblique_512(0))?, window, budget, oblique_512)?;
    println!(
        "MPR {w512}x{h512}, planes drawn on the CPU ({} threads) and uploaded, as the viewer draws them on a software rasteriser: axial {cpu_path_axial:.1} fps, oblique {cpu_path_oblique:.1} fps (the shader on this adapter: oblique {shader_oblique_512:.1} fps, {:.2}x); goal ≥ 30 fps without a GPU: {:.2}x (axial), {:.2}x (oblique) of goal",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_path_oblique / shader_oblique_512,
        cpu_path_axial / 30.0,
        cpu_path_oblique / 30.0
    );

    // MPR at 1024² (0.5 mm pixels): the H100 goal is ≤ 0.5 ms a frame.
    let fine = |f: usize| MprPlane::axial(&a, dims, [0.0, 0.0, (f % 64) as f64 - 32.0], 0.5);
    let fine_plane = fine(0);
    let mut mpr_fine =
        MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, fine_plane.width, fine_plane.height)?;
    let fine_wall_ms = 1000.0 / fps(&gpu, &mpr_fine, window, budget, fine)?;
    let fine_gpu_ms = if real_gpu { gpu_ms(&gpu, &mpr_fine, window, 200, fine)? } else { None };
    let fine_ms = fine_gpu_ms.unwrap_or(fine_wall_ms);
    println!(
        "MPR {}x{} ({launch:?}): {fine_wall_ms:.3} ms a frame (throughput){}; H100 goal ≤ 0.5 ms: {:.2}x of goal{}",
        fine_plane.width,
        fine_plane.height,
        gpu_time_note(fine_gpu_ms),
        0.5 / fine_ms,
        if real_gpu { "" } else { " (software: not comparable)" }
    );
    mpr_fine.set_launch(other(launch));
    let other_wall_ms = 1000.0 / fps(&gpu, &mpr_fine, window, budget, fine)?;
    let other_gpu_ms = if real_gpu { gpu_ms(&gpu, &mpr_fine, window, 200, fine)? } else { None };
    let other_ms = other_gpu_ms.unwrap_or(other_wall_ms);
    println!(
        "MPR {}x{} by the other launch ({:?}): {other_ms:.3} ms a frame{}; {:.2}x the time of {launch:?}",
        fine_plane.width,
        fine_plane.height,
        other(launch),
        if real_gpu { " (GPU time)" } else { " (throughput)" },
        other_ms / fine_ms
    );

    // Direct volume rendering at 1920×1080 through the whole volume (on software Vulkan, where a
    // frame takes tens of seconds, one frame at a sixteenth of the pixels).
    let (w, h) = if real_gpu { (1920u32, 1080u32) } else { (480, 270) };
    let view = MprPlane::view_3d(&a, dims, 0.6, 0.3, 1.0);
    let pixel = view.pixel_mm * f64::from(view.height) / 1080.0;
    let dvr_at = |f: usize| {
        let mut p = MprPlane::view_3d(&a, dims, 0.6 + f as f64 * 0.01, 0.3, 1.0);
        let mid = [0, 1, 2].map(|c| p.corner[c] + 0.5 * f64::from(p.width) * p.pixel_mm * (p.right[c] + p.down[c]));
        p.pixel_mm = pixel * 1080.0 / f64::from(h);
        (p.width, p.height) = (w, h);
        let (half_w, half_h) = (0.5 * f64::from(w) * p.pixel_mm, 0.5 * f64::from(h) * p.pixel_mm);
        p.corner = [0, 1, 2].map(|c| mid[c] - half_w * p.right[c] - half_h * p.down[c]);
        p
    };
    let mut dvr = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, w, h)?;
    // On software, three frames after one to warm up (the pipeline is compiled on first use).
    let frames = if real_gpu { budget } else { (Duration::ZERO, 3) };
    let plain_ms = 1000.0 / fps(&gpu, &dvr, window, frames, dvr_at)?;
    let started = Instant::now();
    dvr.skip_empty_space_stored(&gpu.queue, &volume);
    let bricks_ms = started.elapsed().as_secs_f64() * 1000.0;
    let dvr_wall_ms = 1000.0 / fps(&gpu, &dvr, window, frames, dvr_at)?;
    let dvr_gpu_ms = if real_gpu { gpu_ms(&gpu, &dvr, window, 60, dvr_at)? } else { None };
    let dvr_ms = dvr_gpu_ms.unwrap_or(dvr_wall_ms);
    println!(
        "DVR empty-space skipping: {plain_ms:.2} → {dvr_wall_ms:.2} ms a frame ({:.2}x faster; bricks computed in {bricks_ms:.0} ms){}",
        plain_ms / dvr_wall_ms,
        gpu_time_note(dvr_gpu_ms)
    );
    // The quick look at each sample through the texture unit's trilinear filter (one fetch)
    // before the exact sample (eight), against every sample exact: with empty-space skipping,
    // and without (where bricks are too small for skipping to gain, as on the H200).
    if dvr.quick_look() {
        dvr.set_quick_look(false);
        let exact_wall_ms = 1000.0 / fps(&gpu, &dvr, window, frames, dvr_at)?;
        let exact_gpu_ms = if real_gpu { gpu_ms(&gpu, &dvr, window, 60, dvr_at)? } else { None };
        dvr.set_quick_look(true);
        let exact_ms = exact_gpu_ms.unwrap_or(exact_wall_ms);
        let mut no_skip = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, w, h)?;
        let quick_plain_ms = if real_gpu { gpu_ms(&gpu, &no_skip, window, 60, dvr_at)? } else { None };
        let quick_plain_ms = quick_plain_ms.unwrap_or(plain_ms);
        no_skip.set_quick_look(false);
        let exact_plain_wall_ms = 1000.0 / fps(&gpu, &no_skip, window, frames, dvr_at)?;
        let exact_plain_ms = if real_gpu { gpu_ms(&gpu, &no_skip, window, 60, dvr_at)? } else { None };
        let exact_plain_ms = exact_plain_ms.unwrap_or(exact_plain_wall_ms);
        println!(
            "DVR quick look through the texture filter{}: with skipping {exact_ms:.2} ms a frame with every sample exact → {dvr_ms:.2} ms ({:.2}x faster); without skipping {exact_plain_ms:.2} → {quick_plain_ms:.2} ms ({:.2}x)",
            if real_gpu { " (GPU time)" } else { "" },
            exact_ms / dvr_ms,
            exact_plain_ms / quick_plain_ms
        );
    } else {
        println!(
            "DVR quick look through the texture filter: not available (the volume's texture cannot be filtered here)"
        );
    }
    // The same rays launched the other way (a compute pass in 8 × 8 tiles, or one triangle over
    // the target).
    dvr.set_launch(other(launch));
    let other_wall_ms = 1000.0 / fps(&gpu, &dvr, window, frames, dvr_at)?;
    let other_gpu_ms = if real_gpu { gpu_ms(&gpu, &dvr, window, 60, dvr_at)? } else { None };
    dvr.set_launch(launch);
    let other_ms = other_gpu_ms.unwrap_or(other_wall_ms);
    println!(
        "DVR {w}x{h} by the other launch ({:?}): {other_ms:.2} ms a frame{}, {:.2}x the time of {launch:?} ({dvr_ms:.2} ms)",
        other(launch),
        gpu_time_note(other_gpu_ms),
        other_ms / dvr_ms
    );
    if !real_gpu {
        // The CPU's volume rendering of the same view, as the viewer draws it where the only
        // GPU is a software rasteriser (`draw_on_cpu`; no empty-space skipping).
        let started = Instant::now();
        let frames = 2;
        for f in 0..frames {
            std::hint::black_box(cpu::mpr_rgba_stored(&volume, None, None, &dvr_at(f), window, None)?);
        }
        let cpu_ms = started.elapsed().as_secs_f64() * 1000.0 / frames as f64;
        println!(
            "DVR {w}x{h} on the CPU (rows in parallel): {cpu_ms:.0} ms a frame, {:.2}x the shader on this software rasteriser",
            dvr_wall_ms / cpu_ms
        );
    }
    let gbps = mpr.volume_bytes as f64 / (dvr_ms / 1000.0) / 1e9;
    println!(
        "DVR {w}x{h} of {n}³ ({launch:?}): {dvr_ms:.2} ms a frame ({:.1} fps), {gbps:.2} GB/s of volume read; H100 goal (1920x1080) ≤ 4 ms: {:.3}x of goal{}",
        1000.0 / dvr_ms,
        4.0 / dvr_ms,
        if real_gpu { "" } else { " (software: not comparable)" }
    );

    // Where the volume rendering's time goes (a real GPU only): with a transfer function that
    // nothing reaches, every step samples and nothing composites; with skipping, empty bricks
    // are jumped.
    if real_gpu {
        let transparent = WindowLevel { center: 1.0e6, width: 10.0 };
        let no_skip = MprRenderer::new_stored(&gpu.device, &gpu.queue, &volume, None, w, h)?;
        let sampled = gpu_ms(&gpu, &no_skip, transparent, 30, dvr_at)?;
        let skipped = gpu_ms(&gpu, &dvr, transparent, 30, dvr_at)?;
        let shaded = gpu_ms(&gpu, &no_skip, window, 30, dvr_at)?;
        // The view moved a metre sideways: every ray misses the volume and takes no step, which
        // leaves what a frame costs apart from stepping (set-up per pixel, the pass itself).
        let away = |f: usize| {
            let mut p = dvr_at(f);
            p.corner = [0, 1, 2].map(|c| p.corner[c] + 1000.0 * p.right[c]);
            p
        };
        let missed = gpu_ms(&gpu, &dvr, window, 30, away)?;
        if let (Some(sampled), Some(skipped), Some(shaded), Some(missed)) = (sampled, skipped, shaded, missed) {
            println!(
                "DVR diagnostics (GPU time, no skipping unless said): every step sampled, nothing composited {sampled:.2} ms; the same with empty bricks skipped {skipped:.2} ms; the real transfer function {shaded:.2} ms; every ray missing the volume (no steps) {missed:.3} ms"
            );
        }
    }

    Ok(())
}
