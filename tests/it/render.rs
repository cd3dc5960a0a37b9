//! Golden test: the GPU slice renderer against its CPU reference, on the demo study.
//! In CI the GPU is Mesa's lavapipe (software Vulkan); on the device machine a real one.

use lightbox_core::WindowLevel;
use lightbox_render::{GpuContext, SliceParams, SliceRenderer, cpu};
use lightbox_tests::demo_study;

/// What an image shows, for the tolerance: planes (slices, slabs, projections) or a volume
/// rendering's rays.
#[derive(Clone, Copy, PartialEq)]
enum Shows {
    Planes,
    Rays,
}

impl Shows {
    fn of(plane: &lightbox_render::MprPlane) -> Self {
        if plane.mode == lightbox_render::SlabMode::Volume { Shows::Rays } else { Shows::Planes }
    }
}

/// The one place that owns the tolerance between GPU and CPU images.
/// - 8-bit values may differ by one step. How many may: on Mesa's lavapipe (CI) at most 0.1 % of
///   the bytes; on a real GPU at most 3 %, since its texture units filter in fixed point and its
///   shaders fuse multiply-adds, so values near a rounding edge fall either way (an NVIDIA H200
///   put up to 1.3 % of the bytes one step off, and none further).
/// - Nothing may differ by more, with one exception: a volume rendering on a real GPU may differ
///   by up to 6 steps in at most 0.1 % of its bytes. Its rays stop once 98 % opaque, so a ray
///   whose opacity comes within rounding of that edge stops one sample earlier or later on the
///   GPU than on the CPU, leaving out or adding that sample's share of the last 2 % (5 steps of
///   255, one more for rounding). An NVIDIA H100 drew the demo's halved volume so.
fn assert_rgba_close(gpu: &GpuContext, image: &[u8], reference: &[u8], what: &str) {
    assert_shows_close(gpu, Shows::Planes, image, reference, what);
}

fn assert_shows_close(gpu: &GpuContext, shows: Shows, image: &[u8], reference: &[u8], what: &str) {
    assert_eq!(image.len(), reference.len(), "{what}: image sizes differ");
    let differences = || image.iter().zip(reference).map(|(a, b)| a.abs_diff(*b));
    let worst = differences().max().unwrap_or(0);
    let off_by_one = differences().filter(|&d| d > 0).count();
    let jumps = differences().filter(|&d| d > 1).count();
    let software = gpu.adapter_name.to_lowercase().contains("llvmpipe");
    let per_mille = if software { 1 } else { 30 };
    let (most, jumps_per_mille) = if shows == Shows::Rays && !software { (6, 1) } else { (1, 0) };
    if jumps > 0 {
        let first = differences().position(|d| d > 1).unwrap_or(0) / 4;
        eprintln!(
            "{what}: {jumps} of {} bytes differ by more than one step (up to {worst}; the first at pixel {first}) on {}",
            image.len(),
            gpu.adapter_name
        );
    }
    assert!(worst <= most, "{what}: GPU and CPU differ by up to {worst} grey levels on {}", gpu.adapter_name);
    assert!(
        jumps * 1000 <= image.len() * jumps_per_mille,
        "{what}: {jumps} of {} bytes differ by more than one step on {} (at most {jumps_per_mille}‰ may)",
        image.len(),
        gpu.adapter_name
    );
    assert!(
        off_by_one * 1000 <= image.len() * per_mille,
        "{what}: {off_by_one} of {} bytes differ by one on {} (at most {per_mille}‰ may)",
        image.len(),
        gpu.adapter_name
    );
}

/// `plane` drawn by `renderer` with each launch (the fragment stage and the compute pass), with
/// its name; the renderer keeps the launch it had.
fn each_launch(
    gpu: &GpuContext,
    renderer: &mut lightbox_render::MprRenderer,
    plane: &lightbox_render::MprPlane,
    window: WindowLevel,
    style: Option<lightbox_render::LabelStyle>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    use lightbox_render::Launch;
    let had = renderer.launch();
    let mut images = Vec::new();
    for launch in [Launch::Fragment, Launch::Compute] {
        renderer.set_launch(launch);
        renderer.render(&gpu.device, &gpu.queue, plane, window, style)?;
        images.push((format!("{launch:?}"), renderer.read_target(&gpu.device, &gpu.queue)?));
    }
    renderer.set_launch(had);
    Ok(images)
}

#[test]
fn gpu_slice_matches_cpu_reference_on_demo_study() -> anyhow::Result<()> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("demo study has no series"))?;
    let set = report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no display set"))?;
    let volume = set.load(0)?;
    let gpu = GpuContext::headless()?;
    eprintln!("render test on {}", gpu.adapter_name);
    let renderer = SliceRenderer::new(&gpu.device, &gpu.queue, &volume)?;
    // The same slices from the voxels in their stored 16-bit type, rescaled by the shader.
    let stored = SliceRenderer::new_stored(&gpu.device, &gpu.queue, &set.load_stored(0)?)?;

    let windows = [WindowLevel { center: 1300.0, width: 2400.0 }, WindowLevel { center: 500.0, width: 300.0 }];
    for (slice, window) in [(0, windows[0]), (10, windows[0]), (19, windows[1])] {
        let params = SliceParams { slice, window };
        renderer.render(&gpu.device, &gpu.queue, params)?;
        let image = renderer.read_target(&gpu.device, &gpu.queue)?;
        let reference = cpu::slice_rgba(&volume, params)?;
        assert_rgba_close(&gpu, &image, &reference, &format!("slice {slice}"));
        stored.render(&gpu.device, &gpu.queue, params)?;
        assert_rgba_close(
            &gpu,
            &stored.read_target(&gpu.device, &gpu.queue)?,
            &reference,
            &format!("stored slice {slice}"),
        );
        // The slice is not trivially uniform: the comparison means something.
        let greys: std::collections::HashSet<u8> = reference.chunks(4).map(|p| p[0]).collect();
        assert!(greys.len() > 50, "slice {slice} has only {} grey levels", greys.len());
    }

    let err =
        renderer.render(&gpu.device, &gpu.queue, SliceParams { slice: 20, window: windows[0] }).expect_err("must fail");
    assert_eq!(err.to_string(), "slice 20 is outside the volume's 20 slices");
    assert!(!renderer.draws_on_cpu() && !stored.draws_on_cpu());

    // Where the GPU cannot hold the volume (over the memory allowed, or longer than one fold of
    // the texture limit holds), each slice is drawn on the CPU at full resolution: the same
    // pixels as the shader.
    let demo = set.load_stored(0)?;
    let limits = lightbox_render::GpuLimits::of(&gpu.device);
    for (why, limits) in [
        ("over the memory allowed", lightbox_render::GpuLimits { volume_bytes: 1000, ..limits }),
        ("beyond the texture limit", lightbox_render::GpuLimits { texture_3d: 100, ..limits }),
    ] {
        let on_cpu = SliceRenderer::new_stored_within(&gpu.device, &gpu.queue, &demo, limits)?;
        assert!(on_cpu.draws_on_cpu(), "{why}");
        assert_eq!(on_cpu.dims(), stored.dims(), "{why}");
        for (slice, window) in [(0, windows[0]), (19, windows[1])] {
            let params = SliceParams { slice, window };
            on_cpu.render(&gpu.device, &gpu.queue, params)?;
            stored.render(&gpu.device, &gpu.queue, params)?;
            assert_rgba_close(
                &gpu,
                &on_cpu.read_target(&gpu.device, &gpu.queue)?,
                &stored.read_target(&gpu.device, &gpu.queue)?,
                &format!("slice {slice} drawn on the CPU, {why}"),
            );
        }
        assert!(on_cpu.render(&gpu.device, &gpu.queue, SliceParams { slice: 20, window: windows[0] }).is_err());
    }
    Ok(())
}

fn demo_volume() -> anyhow::Result<lightbox_core::Volume<f32>> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("demo study has no series"))?;
    Ok(report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no display set"))?.load(0)?)
}

/// The demo study's volume in its stored type (16-bit).
fn demo_stored() -> anyhow::Result<lightbox_core::StoredVolume> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("demo study has no series"))?;
    Ok(report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no display set"))?.load_stored(0)?)
}

/// MPR on the GPU (lavapipe in CI) against the CPU reference: the three standard planes, an
/// oblique one, and thick slabs (MIP, MinIP, average), on the demo study, whose slices are
/// tilted about 10° from axial.
#[test]
fn gpu_mpr_matches_cpu_reference_on_demo_study() -> anyhow::Result<()> {
    use lightbox_render::{MprPlane, MprRenderer, SlabMode};
    let volume = demo_volume()?;
    let (a, dims) = (volume.patient_from_voxel, volume.dims());
    let centre = a.transform_point([0.5 * (dims[0] as f64 - 1.0), 0.5 * (dims[1] as f64 - 1.0), 10.0]);
    let pixel = 1.0;
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let tilt = 30f64.to_radians();
    let planes = [
        ("axial", MprPlane::axial(&a, dims, centre, pixel)),
        ("coronal", MprPlane::coronal(&a, dims, centre, pixel)),
        ("sagittal", MprPlane::sagittal(&a, dims, centre, pixel)),
        ("oblique", MprPlane::oblique(&a, dims, centre, [1.0, 0.0, 0.0], [0.0, tilt.cos(), -tilt.sin()], pixel)),
        ("axial MIP 12 mm", MprPlane::axial(&a, dims, centre, pixel).with_slab(12.0, SlabMode::Max)),
        ("coronal MinIP 20 mm", MprPlane::coronal(&a, dims, centre, pixel).with_slab(20.0, SlabMode::Min)),
        ("sagittal average 8 mm", MprPlane::sagittal(&a, dims, centre, pixel).with_slab(8.0, SlabMode::Mean)),
    ];
    let gpu = GpuContext::headless()?;
    for (name, plane) in planes {
        let mut renderer = MprRenderer::new(&gpu.device, &gpu.queue, &volume, None, plane.width, plane.height)?;
        let reference = cpu::mpr_rgba(&volume, &plane, window)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, None)? {
            assert_rgba_close(&gpu, &image, &reference, &format!("{name} ({launch})"));
        }
        let greys: std::collections::HashSet<u8> = reference.chunks(4).map(|p| p[0]).collect();
        assert!(greys.len() > 40, "{name}: only {} grey levels", greys.len());
    }
    Ok(())
}

/// Geometry: a bright block placed at a known voxel of a volume with the demo study's tilted
/// geometry shows at the pixel where that patient point projects, in an axial, an oblique and a
/// slab MIP view.
#[test]
fn a_known_patient_point_lands_on_its_pixel() -> anyhow::Result<()> {
    use lightbox_render::{MprPlane, MprRenderer, SlabMode};
    let demo = demo_volume()?;
    let (a, dims) = (demo.patient_from_voxel, demo.dims());
    let [nx, ny, _] = dims;
    let marker = [170usize, 90, 12];
    let mut voxels = vec![0.0f32; demo.voxels().len()];
    for z in marker[2] - 1..=marker[2] + 1 {
        for y in marker[1] - 1..=marker[1] + 1 {
            for x in marker[0] - 1..=marker[0] + 1 {
                voxels[x + nx * (y + ny * z)] = 1000.0;
            }
        }
    }
    let volume = lightbox_core::Volume::new(dims, voxels, a)?;
    let point = a.transform_point(marker.map(|v| v as f64));
    let window = WindowLevel { center: 500.0, width: 1000.0 };
    let tilt = 25f64.to_radians();
    let gpu = GpuContext::headless()?;
    for (name, plane) in [
        ("axial", MprPlane::axial(&a, dims, point, 0.5)),
        ("oblique", MprPlane::oblique(&a, dims, point, [tilt.cos(), tilt.sin(), 0.0], [0.0, 0.0, -1.0], 0.5)),
        ("coronal MIP", MprPlane::coronal(&a, dims, point, 0.5).with_slab(30.0, SlabMode::Max)),
    ] {
        let renderer = MprRenderer::new(&gpu.device, &gpu.queue, &volume, None, plane.width, plane.height)?;
        renderer.render(&gpu.device, &gpu.queue, &plane, window, None)?;
        let image = renderer.read_target(&gpu.device, &gpu.queue)?;
        // The brightest pixels' centroid.
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for (k, px) in image.chunks(4).enumerate() {
            if px[0] > 200 {
                sx += (k as u32 % plane.width) as f64;
                sy += (k as u32 / plane.width) as f64;
                n += 1.0;
            }
        }
        anyhow::ensure!(n > 0.0, "{name}: the marker is not visible");
        let (ex, ey) = plane.pixel_of(point);
        let (gx, gy) = (sx / n, sy / n);
        anyhow::ensure!(
            (gx - ex).abs() <= 1.0 && (gy - ey).abs() <= 1.0,
            "{name}: marker at pixel ({gx:.1}, {gy:.1}), expected ({ex:.1}, {ey:.1})"
        );
    }
    Ok(())
}

/// A label map drawn over the MPR on the GPU, filled and as outlines, equals the CPU reference
/// (two segments: the demo's bright voxels, and a box).
#[test]
fn gpu_label_overlay_matches_cpu_reference() -> anyhow::Result<()> {
    use lightbox_render::{LabelStyle, MprPlane, MprRenderer, SlabMode};
    let volume = demo_volume()?;
    let (a, dims) = (volume.patient_from_voxel, volume.dims());
    let [nx, ny, _] = dims;
    let mut labels: Vec<u8> = volume.voxels().iter().map(|&v| u8::from(v > 1500.0)).collect();
    for z in 8..13 {
        for y in 100..150 {
            for x in 90..160 {
                labels[x + nx * (y + ny * z)] = 2;
            }
        }
    }
    let labels = lightbox_core::Volume::new(dims, labels, a)?;
    let centre = a.transform_point([128.0, 125.0, 10.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let gpu = GpuContext::headless()?;
    for (name, plane, style) in [
        ("axial, filled", MprPlane::axial(&a, dims, centre, 1.0), LabelStyle { opacity: 0.4, outline: false }),
        ("coronal, outlines", MprPlane::coronal(&a, dims, centre, 1.0), LabelStyle { opacity: 0.4, outline: true }),
        (
            "sagittal MIP, filled",
            MprPlane::sagittal(&a, dims, centre, 1.0).with_slab(10.0, SlabMode::Max),
            LabelStyle { opacity: 0.6, outline: false },
        ),
    ] {
        let mut renderer =
            MprRenderer::new(&gpu.device, &gpu.queue, &volume, Some(&labels), plane.width, plane.height)?;
        let reference = cpu::mpr_rgba_with_labels(&volume, Some((&labels, style)), &plane, window)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, Some(style))? {
            assert_rgba_close(&gpu, &image, &reference, &format!("{name} ({launch})"));
        }
        let coloured = reference.chunks(4).filter(|p| p[0] != p[1] || p[1] != p[2]).count();
        assert!(coloured > 100, "{name}: only {coloured} coloured pixels");
    }
    Ok(())
}

/// The volume in its stored type on the GPU: the demo's 16-bit voxels take 2 bytes each (half
/// of a float32 copy) and the MPR, rescaled in the shader, equals the CPU reference on the
/// float volume.
#[test]
fn stored_16_bit_volume_renders_like_the_float_one() -> anyhow::Result<()> {
    use lightbox_render::{MprPlane, MprRenderer, SlabMode};
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("no series"))?;
    let set = report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no display set"))?;
    let stored = set.load_stored(0)?;
    let float = set.load(0)?;
    assert_eq!(stored.voxels().bytes_per_voxel(), 2, "the demo study is 16-bit");
    let (a, dims) = (float.patient_from_voxel, float.dims());
    let centre = a.transform_point([128.0, 128.0, 9.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let gpu = GpuContext::headless()?;
    for (name, plane) in [
        ("axial", MprPlane::axial(&a, dims, centre, 1.0)),
        ("coronal MIP", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(15.0, SlabMode::Max)),
    ] {
        let mut renderer = MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, None, plane.width, plane.height)?;
        assert_eq!(renderer.volume_bytes, (float.voxels().len() * 2) as u64);
        let reference = cpu::mpr_rgba(&float, &plane, window)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, None)? {
            assert_rgba_close(&gpu, &image, &reference, &format!("{name} ({launch})"));
        }
    }
    Ok(())
}

/// The panes drawn on the CPU (as the viewer draws them on a software rasteriser), uploaded
/// into the same target, equal the shader's drawing of the stored 16-bit volume: an oblique
/// plane, a MIP slab, labels as outlines and a colour table, and the volume rendering, each
/// within the one tolerance; renderers made by `sharing` draw on the CPU too.
#[test]
fn panes_drawn_on_the_cpu_equal_the_shaders() -> anyhow::Result<()> {
    use lightbox_render::{LabelStyle, Lut, MprPlane, MprRenderer, PlaneSource, SlabMode};
    let stored = demo_stored()?;
    let (a, dims) = (stored.patient_from_voxel, stored.dims());
    let float = stored.to_f32();
    let labels = lightbox_core::Volume::new(
        dims,
        float.voxels().iter().map(|&v| u8::from(v > 1800.0) + u8::from(v > 2400.0)).collect(),
        a,
    )?;
    let centre = a.transform_point([128.0, 128.0, 9.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let gpu = GpuContext::headless()?;
    eprintln!("CPU planes on {} (software: {})", gpu.adapter_name, MprRenderer::is_software(&gpu.device));
    let lut = Lut::preset("hot").ok_or_else(|| anyhow::anyhow!("no hot preset"))?;
    let outline = Some(LabelStyle { opacity: 0.5, outline: true });
    for (name, plane, style, with_lut) in [
        ("oblique", MprPlane::oblique(&a, dims, centre, [0.3, 0.2, 0.93], [0.0, 0.97, -0.2], 1.0), None, false),
        ("coronal MIP", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(15.0, SlabMode::Max), None, false),
        ("axial with outlines and a colour table", MprPlane::axial(&a, dims, centre, 1.0), outline, true),
    ] {
        let mut shader =
            MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, Some(&labels), plane.width, plane.height)?;
        let mut on_cpu =
            MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, Some(&labels), plane.width, plane.height)?;
        on_cpu.draw_on_cpu(PlaneSource::Stored(&stored), Some(&labels), None)?;
        if with_lut {
            shader.set_lut(&gpu.queue, Some(&lut));
            on_cpu.set_lut(&gpu.queue, Some(&lut));
        }
        shader.render(&gpu.device, &gpu.queue, &plane, window, style)?;
        on_cpu.render(&gpu.device, &gpu.queue, &plane, window, style)?;
        let drawn = on_cpu.read_target(&gpu.device, &gpu.queue)?;
        assert_rgba_close(&gpu, &drawn, &shader.read_target(&gpu.device, &gpu.queue)?, name);
        let greys: std::collections::HashSet<u8> = drawn.chunks(4).map(|p| p[0]).collect();
        assert!(greys.len() > 30, "{name}: only {} levels", greys.len());
        // A second pane sharing the renderer's volume draws on the CPU as well.
        let pane = on_cpu.sharing(&gpu.device, plane.width, plane.height);
        pane.render(&gpu.device, &gpu.queue, &plane, window, style)?;
        let shared = pane.read_target(&gpu.device, &gpu.queue)?;
        let expected = if with_lut {
            cpu::mpr_rgba_stored(
                &stored,
                Some((&labels, LabelStyle { opacity: 0.5, outline: true })),
                None,
                &plane,
                window,
                None,
            )?
        } else {
            drawn.clone()
        };
        assert!(shared == expected, "{name}: the sharing pane drew something else");
    }
    // The volume rendering, on the CPU as by the shader.
    let view = MprPlane::view_3d(&a, dims, 0.6, 0.35, 1.5);
    let shader = MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, None, view.width, view.height)?;
    let mut on_cpu = MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, None, view.width, view.height)?;
    on_cpu.draw_on_cpu(PlaneSource::Stored(&stored), None, None)?;
    let tf = WindowLevel { center: 1600.0, width: 1200.0 };
    shader.render(&gpu.device, &gpu.queue, &view, tf, None)?;
    on_cpu.render(&gpu.device, &gpu.queue, &view, tf, None)?;
    let drawn = on_cpu.read_target(&gpu.device, &gpu.queue)?;
    assert_shows_close(&gpu, Shows::Rays, &drawn, &shader.read_target(&gpu.device, &gpu.queue)?, "volume rendering");
    assert!(drawn.chunks(4).filter(|p| p[0] > 20).count() > 500, "the volume rendering is empty");
    // Overlays not on the volume's grid are refused.
    let small = lightbox_core::Volume::new([2, 2, 2], vec![0u8; 8], a)?;
    let mut other = MprRenderer::new_stored(&gpu.device, &gpu.queue, &stored, None, 8, 8)?;
    assert!(other.draw_on_cpu(PlaneSource::Stored(&stored), Some(&small), None).is_err());
    Ok(())
}

/// Direct volume rendering (ray casting with the window as transfer-function ramp, gradient
/// shading, early ray termination) on the GPU equals the CPU reference, from the front and from
/// an oblique direction.
#[test]
fn gpu_volume_rendering_matches_cpu_reference() -> anyhow::Result<()> {
    use lightbox_render::{Launch, MprPlane, MprRenderer};
    let volume = demo_volume()?;
    let (a, dims) = (volume.patient_from_voxel, volume.dims());
    let tf = WindowLevel { center: 1600.0, width: 1200.0 };
    let gpu = GpuContext::headless()?;
    for (name, azimuth, elevation) in [("front", 0.0f64, 0.0f64), ("oblique", 0.6, 0.35)] {
        let plane = MprPlane::view_3d(&a, dims, azimuth, elevation, 1.5);
        let mut renderer = MprRenderer::new(&gpu.device, &gpu.queue, &volume, None, plane.width, plane.height)?;
        // The quick look through the texture filter, wherever the GPU filters float32.
        let filters = gpu.device.features().contains(lightbox_render::wgpu::Features::FLOAT32_FILTERABLE);
        assert_eq!(renderer.quick_look(), filters, "{name}: quick look on {}", gpu.adapter_name);
        // Pixels launched by the fragment stage on a software rasteriser, by compute on a GPU.
        let software = gpu.adapter_name.to_lowercase().contains("llvmpipe");
        let launch = if software { Launch::Fragment } else { Launch::Compute };
        assert_eq!(renderer.launch(), launch, "{name}: launch on {}", gpu.adapter_name);
        renderer.render(&gpu.device, &gpu.queue, &plane, tf, None)?;
        let image = renderer.read_target(&gpu.device, &gpu.queue)?;
        let reference = cpu::mpr_rgba(&volume, &plane, tf)?;
        assert_shows_close(&gpu, Shows::Rays, &image, &reference, &format!("volume rendering, {name}"));
        // Every sample exact (no quick look): the same image within the one tolerance.
        renderer.set_quick_look(false);
        assert!(!renderer.quick_look());
        renderer.render(&gpu.device, &gpu.queue, &plane, tf, None)?;
        let exact = renderer.read_target(&gpu.device, &gpu.queue)?;
        assert_shows_close(
            &gpu,
            Shows::Rays,
            &exact,
            &reference,
            &format!("volume rendering without the quick look, {name}"),
        );
        renderer.set_quick_look(true);
        let lit = reference.chunks(4).filter(|p| p[0] > 20).count();
        assert!(lit > 500, "{name}: only {lit} lit pixels");
        // Empty-space skipping jumps over bricks below the ramp: exactly the same image.
        renderer.skip_empty_space(&gpu.queue, &volume);
        renderer.render(&gpu.device, &gpu.queue, &plane, tf, None)?;
        let skipped = renderer.read_target(&gpu.device, &gpu.queue)?;
        assert!(skipped == image, "{name}: empty-space skipping changed the image");
        // Both launches, with the quick look and skipping: the CPU reference's image.
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, tf, None)? {
            assert_shows_close(&gpu, Shows::Rays, &image, &reference, &format!("volume rendering, {name} ({launch})"));
        }
    }
    Ok(())
}

/// Every stored type the GPU keeps a volume in renders like the CPU reference: 8-bit (in a
/// normalised texture), 16-bit unsigned (normalised where the GPU has 16-bit normalised
/// textures), 16-bit signed (normalised, or integer when −32768 occurs, which r16snorm cannot
/// hold) and float; planes, a MIP slab and the volume rendering, with the quick look through the
/// texture filter exactly where the texture allows it.
#[test]
fn every_stored_type_renders_like_the_cpu_reference() -> anyhow::Result<()> {
    use lightbox_core::{StoredVolume, StoredVoxels};
    use lightbox_render::{MprPlane, MprRenderer, SlabMode};
    let demo = demo_stored()?;
    let (a, dims) = (demo.patient_from_voxel, demo.dims());
    let real = demo.to_f32();
    let values = real.voxels();
    let gpu = GpuContext::headless()?;
    let norm16 = gpu.device.features().contains(lightbox_render::wgpu::Features::TEXTURE_FORMAT_16BIT_NORM);
    let filters_f32 = gpu.device.features().contains(lightbox_render::wgpu::Features::FLOAT32_FILTERABLE);
    let mut signed: Vec<i16> = values.iter().map(|&v| (v - 2000.0).round().clamp(-32000.0, 32000.0) as i16).collect();
    let unsigned: Vec<u16> = values.iter().map(|&v| v.round().clamp(0.0, 65535.0) as u16).collect();
    let bytes: Vec<u8> = values.iter().map(|&v| (v / 16.0).round().clamp(0.0, 255.0) as u8).collect();
    let mut kinds = vec![
        ("8-bit", StoredVolume::new(dims, StoredVoxels::U8(bytes), a, 16.0, 0.0)?, true),
        ("16-bit unsigned", StoredVolume::new(dims, StoredVoxels::U16(unsigned), a, 1.0, 0.0)?, norm16),
        ("16-bit signed", StoredVolume::new(dims, StoredVoxels::I16(signed.clone()), a, 1.0, 2000.0)?, norm16),
        ("float", StoredVolume::new(dims, StoredVoxels::F32(values.to_vec()), a, 1.0, 0.0)?, filters_f32),
    ];
    signed[0] = i16::MIN;
    kinds.push((
        "16-bit signed holding -32768",
        StoredVolume::new(dims, StoredVoxels::I16(signed), a, 1.0, 2000.0)?,
        false,
    ));
    let centre = a.transform_point([128.0, 128.0, 9.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let tf = WindowLevel { center: 1600.0, width: 1200.0 };
    for (kind, stored, quick) in &kinds {
        for (name, plane, window) in [
            ("oblique", MprPlane::oblique(&a, dims, centre, [0.3, 0.2, 0.93], [0.0, 0.97, -0.2], 1.0), window),
            ("coronal MIP", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(15.0, SlabMode::Max), window),
            ("volume rendering", MprPlane::view_3d(&a, dims, 0.6, 0.35, 1.5), tf),
        ] {
            let mut renderer =
                MprRenderer::new_stored(&gpu.device, &gpu.queue, stored, None, plane.width, plane.height)?;
            assert_eq!(renderer.quick_look(), *quick, "{kind}: quick look on {}", gpu.adapter_name);
            let reference = cpu::mpr_rgba_stored(stored, None, None, &plane, window, None)?;
            for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, None)? {
                assert_shows_close(&gpu, Shows::of(&plane), &image, &reference, &format!("{kind}, {name} ({launch})"));
            }
            let lit = reference.chunks(4).filter(|p| p[0] > 20).count();
            assert!(lit > 500, "{kind}, {name}: only {lit} lit pixels");
        }
    }
    Ok(())
}

/// A probability map (the logistic of the ADC around 1500, as a fractional SEG would carry)
/// drawn over the MPR with the "hot" colour map on the GPU equals the CPU reference.
#[test]
fn gpu_scalar_overlay_matches_cpu_reference() -> anyhow::Result<()> {
    use lightbox_render::{MprPlane, MprRenderer, ScalarStyle, SlabMode};
    let volume = demo_volume()?;
    let (a, dims) = (volume.patient_from_voxel, volume.dims());
    let probability: Vec<f32> =
        volume.voxels().iter().map(|&v| (1.0 / (1.0 + (-(f64::from(v) - 1500.0) / 100.0).exp())) as f32).collect();
    let map = lightbox_core::Volume::new(dims, probability, a)?;
    let centre = a.transform_point([128.0, 125.0, 10.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let style = ScalarStyle { lower: 0.5, upper: 1.0, opacity: 0.6 };
    let gpu = GpuContext::headless()?;
    for (name, plane) in [
        ("axial", MprPlane::axial(&a, dims, centre, 1.0)),
        ("coronal MIP", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(10.0, SlabMode::Max)),
    ] {
        let mut renderer =
            MprRenderer::with_scalars(&gpu.device, &gpu.queue, &volume, &map, plane.width, plane.height)?;
        renderer.scalar_style = Some(style);
        let reference = cpu::mpr_rgba_with_scalars(&volume, &map, style, &plane, window)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, None)? {
            assert_rgba_close(&gpu, &image, &reference, &format!("{name} ({launch})"));
        }
        let coloured = reference.chunks(4).filter(|p| p[0] != p[2]).count();
        assert!(coloured > 100, "{name}: only {coloured} coloured pixels");
    }
    Ok(())
}

/// A volume longer than the GPU's 3-D texture limit is folded into one texture and renders the
/// same pixels: 120 rows of the demo study (256 × 120 × 20, 16-bit, and transposed) under a
/// pretended limit of 130 per axis are cut into two pieces along the columns (then the rows),
/// laid along z, and every plane, slab, volume rendering and label overlay equals the unfolded
/// render byte for byte.
#[test]
fn a_volume_beyond_the_texture_limit_renders_folded_exactly_like_unfolded() -> anyhow::Result<()> {
    use lightbox_core::{StoredVolume, StoredVoxels, Volume};
    use lightbox_render::{LabelStyle, MprPlane, MprRenderer, SlabMode};
    let demo = demo_stored()?;
    let [nx, ny, nz] = demo.dims();
    anyhow::ensure!(nx > 130 && ny > 180 && nz < 65, "demo dims {:?}", demo.dims());
    // Rows 60..180 of every slice (the prostate): only the columns exceed the limit. The same
    // voxels transposed make the rows the long axis.
    let (rows, first_row) = (120, 60);
    fn crop<T: Copy + Default>(v: &[T], [nx, ny, nz]: [usize; 3], (rows, first): (usize, usize), swap: bool) -> Vec<T> {
        let mut out = vec![T::default(); nx * rows * nz];
        for z in 0..nz {
            for y in 0..rows {
                for x in 0..nx {
                    let to = if swap { y + rows * (x + nx * z) } else { x + nx * (y + rows * z) };
                    out[to] = v[x + nx * (y + first + ny * z)];
                }
            }
        }
        out
    }
    let cropped = |swap: bool| -> anyhow::Result<StoredVoxels> {
        Ok(match demo.voxels() {
            StoredVoxels::U16(v) => StoredVoxels::U16(crop(v, demo.dims(), (rows, first_row), swap)),
            StoredVoxels::I16(v) => StoredVoxels::I16(crop(v, demo.dims(), (rows, first_row), swap)),
            _ => anyhow::bail!("the demo study is 16-bit"),
        })
    };
    let a = demo.patient_from_voxel;
    let origin = a.transform_point([0.0, first_row as f64, 0.0]);
    let plain = lightbox_core::Affine3::from_columns(a.axis(0), a.axis(1), a.axis(2), origin);
    let swapped = lightbox_core::Affine3::from_columns(a.axis(1), a.axis(0), a.axis(2), origin);
    let volumes = [
        ("long columns", StoredVolume::new([nx, rows, nz], cropped(false)?, plain, demo.slope, demo.intercept)?),
        ("long rows", StoredVolume::new([rows, nx, nz], cropped(true)?, swapped, demo.slope, demo.intercept)?),
    ];
    let gpu = GpuContext::headless()?;
    let within = |texture_3d| lightbox_render::GpuLimits { texture_3d, ..lightbox_render::GpuLimits::of(&gpu.device) };
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    for (what, volume) in &volumes {
        let (a, dims) = (volume.patient_from_voxel, volume.dims());
        let float = volume.to_f32();
        let labels: Vec<u8> = float.voxels().iter().map(|&v| u8::from(v > 1500.0) + u8::from(v > 2200.0)).collect();
        let labels = Volume::new(dims, labels, a)?;
        let centre = a.transform_point([dims[0] as f64 * 0.55, dims[1] as f64 * 0.5, 10.0]);
        let style = Some(LabelStyle { opacity: 0.5, outline: false });
        for (name, plane, style) in [
            ("axial with labels", MprPlane::axial(&a, dims, centre, 1.0), style),
            (
                "coronal outlines",
                MprPlane::coronal(&a, dims, centre, 1.0),
                Some(LabelStyle { opacity: 0.5, outline: true }),
            ),
            ("sagittal MIP", MprPlane::sagittal(&a, dims, centre, 1.0).with_slab(30.0, SlabMode::Max), None),
            ("oblique", MprPlane::oblique(&a, dims, centre, [0.9, 0.3, 0.3], [0.0, 0.6, -0.8], 0.8), style),
            ("volume rendering", MprPlane::view_3d(&a, dims, 0.7, 0.3, 1.5), None),
        ] {
            let size = (plane.width, plane.height);
            let mut whole =
                MprRenderer::new_stored_within(&gpu.device, &gpu.queue, volume, Some(&labels), size, within(4096))?;
            let mut folded =
                MprRenderer::new_stored_within(&gpu.device, &gpu.queue, volume, Some(&labels), size, within(130))?;
            assert_eq!(whole.packing.pieces, 1, "{what}");
            assert_eq!((folded.packing.pieces, folded.packing.along), (2, 2), "{what}: {:?}", folded.packing);
            // Each launch draws the folded volume as the unfolded one.
            let unfolded = each_launch(&gpu, &mut whole, &plane, window, style)?;
            for ((launch, a), (_, b)) in unfolded.iter().zip(each_launch(&gpu, &mut folded, &plane, window, style)?) {
                assert!(*a == b, "{what}, {name}: the folded volume renders differently ({launch})");
            }
            folded.render(&gpu.device, &gpu.queue, &plane, window, style)?;
            let images = [unfolded[0].1.clone(), folded.read_target(&gpu.device, &gpu.queue)?];
            let lit = images[0].chunks(4).filter(|p| p[0] > 20).count();
            assert!(lit > 500, "{what}, {name}: only {lit} lit pixels");
            // A second renderer sharing the folded upload draws the same.
            let shared = folded.sharing(&gpu.device, plane.width, plane.height);
            shared.render(&gpu.device, &gpu.queue, &plane, window, style)?;
            assert!(
                shared.read_target(&gpu.device, &gpu.queue)? == images[1],
                "{what}, {name}: sharing renders differently"
            );
        }
    }
    // Beyond what one fold can hold, the volume is held at half resolution (which fits 100 in
    // two pieces: 128 × 60 × 10); beyond what a quarter of it can, the error names the volume
    // and the limit.
    let halved = MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &volumes[0].1, None, (8, 8), within(100))?;
    assert_eq!((halved.resolution(), halved.packing.pieces), (2, 2));
    let refused = MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &volumes[0].1, None, (8, 8), within(20));
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("exceeds this GPU's 3-D texture limit of 20"), "{message}");
    Ok(())
}

/// A volume over the GPU memory the renderer may use is drawn at half (or a quarter of) its
/// resolution rather than not at all: the demo study with a label map, under a budget of a third
/// of their bytes, draws exactly what the CPU reference draws from the halved volume (voxels
/// averaged, labels by their highest, each new voxel at the centre of its block): planes with
/// labels, a MIP and the volume rendering with empty-space skipping, by both launches. Under a
/// fifteenth it draws at a quarter; a budget that nothing fits is refused with the sizes.
#[test]
fn a_volume_over_the_gpu_memory_budget_renders_at_lower_resolution() -> anyhow::Result<()> {
    use lightbox_render::{GpuLimits, LabelStyle, MprPlane, MprRenderer, SlabMode, halving};
    let demo = demo_stored()?;
    let (a, dims) = (demo.patient_from_voxel, demo.dims());
    let labels: Vec<u8> = demo.to_f32().voxels().iter().map(|&v| u8::from(v > 1500.0) + u8::from(v > 2200.0)).collect();
    let labels = lightbox_core::Volume::new(dims, labels, a)?;
    // 2 bytes a voxel of volume, 1 of labels.
    let bytes = 3 * dims.iter().product::<usize>() as u64;
    let gpu = GpuContext::headless()?;
    let budget = |volume_bytes| GpuLimits { volume_bytes, ..GpuLimits::of(&gpu.device) };
    let (half, half_labels) = (halving::halve_stored(&demo)?, halving::halve_labels(&labels)?);
    let centre = a.transform_point([128.0, 128.0, 9.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let tf = WindowLevel { center: 1600.0, width: 1200.0 };
    let style = LabelStyle { opacity: 0.5, outline: false };
    for (name, plane, window, style) in [
        ("axial with labels", MprPlane::axial(&a, dims, centre, 1.0), window, Some(style)),
        ("oblique", MprPlane::oblique(&a, dims, centre, [0.3, 0.2, 0.93], [0.0, 0.97, -0.2], 1.0), window, None),
        ("coronal MIP", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(15.0, SlabMode::Max), window, None),
        ("volume rendering", MprPlane::view_3d(&a, dims, 0.6, 0.35, 1.5), tf, None),
    ] {
        let size = (plane.width, plane.height);
        let mut renderer =
            MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &demo, Some(&labels), size, budget(bytes / 3))?;
        assert_eq!(renderer.resolution(), 2, "{name}");
        assert_eq!(renderer.volume_bytes, (half.voxels().len() * 2) as u64, "{name}");
        renderer.skip_empty_space_stored(&gpu.queue, &demo);
        assert!(renderer.skips_empty_space(), "{name}: the bricks must be those of the halved volume");
        let reference = cpu::mpr_rgba_stored(&half, style.map(|s| (&half_labels, s)), None, &plane, window, None)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, window, style)? {
            assert_shows_close(
                &gpu,
                Shows::of(&plane),
                &image,
                &reference,
                &format!("{name} at half resolution ({launch})"),
            );
        }
        let lit = reference.chunks(4).filter(|p| p[0] > 20).count();
        assert!(lit > 500, "{name}: only {lit} lit pixels");
    }
    let plane = MprPlane::axial(&a, dims, centre, 1.0);
    let size = (plane.width, plane.height);
    let quarter = MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &demo, None, size, budget(bytes / 15))?;
    assert_eq!(quarter.resolution(), 4);
    let whole = MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &demo, Some(&labels), size, budget(bytes))?;
    assert_eq!(whole.resolution(), 1);
    let refused = MprRenderer::new_stored_within(&gpu.device, &gpu.queue, &demo, None, size, budget(1000));
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("even at a quarter of its resolution, over the 0.0 MB allowed"), "{message}");
    Ok(())
}

/// A colour table (a user's LUT) on the planes and as the volume rendering's transfer function
/// draws the same pixels on the GPU as the CPU reference: the "hot" preset on an axial plane and
/// a MIP, and a table read from text (translucent soft tissue, opaque bright structures) in 3-D.
#[test]
fn colour_tables_match_the_cpu_reference() -> anyhow::Result<()> {
    use lightbox_render::{Lut, MprPlane, MprRenderer, SlabMode};
    let volume = demo_volume()?;
    let (a, dims) = (volume.patient_from_voxel, volume.dims());
    let centre = a.transform_point([128.0, 125.0, 10.0]);
    let window = WindowLevel { center: 1300.0, width: 2400.0 };
    let hot = Lut::preset("hot").ok_or_else(|| anyhow::anyhow!("no hot preset"))?;
    let mine = Lut::parse("tf.lut", "0 0 0 0 0\n0.4 0.2 0.4 0.9 0.02\n0.7 1 0.5 0.2 0.4\n1 1 1 0.8 1\n")?;
    let gpu = GpuContext::headless()?;
    for (name, plane, lut, tf) in [
        ("axial, hot", MprPlane::axial(&a, dims, centre, 1.0), &hot, window),
        ("coronal MIP, hot", MprPlane::coronal(&a, dims, centre, 1.0).with_slab(12.0, SlabMode::Max), &hot, window),
        (
            "3-D, own table",
            MprPlane::view_3d(&a, dims, 0.5, 0.2, 1.5),
            &mine,
            WindowLevel { center: 1600.0, width: 1600.0 },
        ),
    ] {
        let mut renderer = MprRenderer::new(&gpu.device, &gpu.queue, &volume, None, plane.width, plane.height)?;
        renderer.set_lut(&gpu.queue, Some(lut));
        let reference = cpu::mpr_rgba_lut(&volume, &plane, tf, lut)?;
        for (launch, image) in each_launch(&gpu, &mut renderer, &plane, tf, None)? {
            assert_shows_close(&gpu, Shows::of(&plane), &image, &reference, &format!("{name} ({launch})"));
        }
        let coloured = reference.chunks(4).filter(|p| p[0].abs_diff(p[2]) > 30).count();
        assert!(coloured > 500, "{name}: only {coloured} coloured pixels");
        // Without the table the same renderer draws as before.
        renderer.set_lut(&gpu.queue, None);
        renderer.render(&gpu.device, &gpu.queue, &plane, tf, None)?;
        assert_shows_close(
            &gpu,
            Shows::of(&plane),
            &renderer.read_target(&gpu.device, &gpu.queue)?,
            &cpu::mpr_rgba(&volume, &plane, tf)?,
            name,
        );
    }
    Ok(())
}
