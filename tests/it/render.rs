//! Golden test: the GPU slice renderer against its CPU reference, on the demo study.
//! In CI the GPU is Mesa's lavapipe (software Vulkan); on the device machine a real one.

use lightbox_core::WindowLevel;
use lightbox_render::{GpuContext, SliceParams, SliceRenderer, cpu};
use lightbox_tests::demo_study;

/// The one place that owns the tolerance between GPU and CPU images: 8-bit values may differ by
/// one step (float rounding on the GPU), and nothing more.
fn assert_rgba_close(gpu: &[u8], reference: &[u8], what: &str) {
    assert_eq!(gpu.len(), reference.len(), "{what}: image sizes differ");
    let worst = gpu.iter().zip(reference).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    let off_by_one = gpu.iter().zip(reference).filter(|(a, b)| a != b).count();
    assert!(worst <= 1, "{what}: GPU and CPU differ by up to {worst} grey levels");
    assert!(off_by_one * 1000 <= gpu.len(), "{what}: {off_by_one} of {} bytes differ", gpu.len());
}

#[test]
fn gpu_slice_matches_cpu_reference_on_demo_study() -> anyhow::Result<()> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().ok_or_else(|| anyhow::anyhow!("demo study has no series"))?;
    let volume = report.display_sets(series).first().ok_or_else(|| anyhow::anyhow!("no display set"))?.load(0)?;
    let gpu = GpuContext::headless()?;
    eprintln!("render test on {}", gpu.adapter_name);
    let renderer = SliceRenderer::new(&gpu.device, &gpu.queue, &volume)?;

    let windows = [WindowLevel { center: 1300.0, width: 2400.0 }, WindowLevel { center: 500.0, width: 300.0 }];
    for (slice, window) in [(0, windows[0]), (10, windows[0]), (19, windows[1])] {
        let params = SliceParams { slice, window };
        renderer.render(&gpu.device, &gpu.queue, params)?;
        let image = renderer.read_target(&gpu.device, &gpu.queue)?;
        let reference = cpu::slice_rgba(&volume, params)?;
        assert_rgba_close(&image, &reference, &format!("slice {slice}"));
        // The slice is not trivially uniform: the comparison means something.
        let greys: std::collections::HashSet<u8> = reference.chunks(4).map(|p| p[0]).collect();
        assert!(greys.len() > 50, "slice {slice} has only {} grey levels", greys.len());
    }

    let err =
        renderer.render(&gpu.device, &gpu.queue, SliceParams { slice: 20, window: windows[0] }).expect_err("must fail");
    assert_eq!(err.to_string(), "slice 20 is outside the volume's 20 slices");
    Ok(())
}
