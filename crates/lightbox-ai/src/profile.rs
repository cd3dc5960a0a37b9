//! Where a network's time goes, for bench-ai (issue 7): one of nnU-Net's full-resolution
//! convolutions (C → C channels, 3³, padding 1, on a cube of `side` voxels) timed by burn's
//! kernels, as matrix products over im2col columns (`ops::conv3d_gemm`), and as those matrix
//! products alone over columns made beforehand. The last two differ by the copies into columns,
//! so one GPU run tells whether the GEMM path is bound by its arithmetic or by its copies.

use burn::prelude::*;
use burn::tensor::{Distribution, FloatDType, ops::ConvOptions};

use crate::{AiDevice, AiError, Precision};

/// Median times of one layer, ms, and its arithmetic.
#[derive(Clone, Debug)]
pub struct LayerTimes {
    /// burn's `conv3d` (its autotuned kernels).
    pub burn_ms: f64,
    /// `ops::conv3d_gemm` in slabs of `column_mib` MiB of columns.
    pub gemm_ms: f64,
    /// `ops::ConvWay::GemmTransposed`, the same slabs.
    pub gemm_transposed_ms: f64,
    /// `ops::ConvWay::OWN` (Lightbox's own ways: its direct, tiled and 1×1×1 kernels and
    /// Winograd's algorithms), where they run (a GPU, `gpu` builds).
    pub direct_ms: Vec<(crate::ops::ConvWay, f64)>,
    /// Those of them that apply but did not compute burn's convolution (or failed on the
    /// device), and why: left untimed, as the tuner leaves them out.
    pub left_out: Vec<(crate::ops::ConvWay, String)>,
    /// The same matrix products over columns made beforehand (no copies).
    pub matmul_ms: f64,
    /// Multiply-adds × 2 of the layer, in 10⁹.
    pub gflop: f64,
    /// Bytes of columns the GEMM path writes (and the matrix products read), in 10⁹.
    pub column_gb: f64,
    /// The instance norm (affine) and LeakyReLU after the layer, on its output: by burn's
    /// operations, and by Lightbox's kernels where they run (a GPU, `gpu` builds).
    pub norm_ops_ms: f64,
    pub norm_kernels_ms: Option<f64>,
}

/// Times one C → C 3³ convolution on `side`³ voxels (median of `runs`, after one warm-up), in
/// the device's precision. Each run waits until the device is idle.
///
/// Lightbox's own ways come first, its kernel on matrix units first of all, and `each` hears of
/// each of them as soon as it is timed or left out: a run cut short (a device call's time
/// limit; burn's ways autotune and compile their candidates first) still tells what it timed.
pub fn convolution_layer(
    device: &AiDevice,
    channels: usize,
    side: usize,
    (column_mib, runs): (usize, usize),
    mut each: impl FnMut(crate::ops::ConvWay, Result<f64, &str>),
) -> Result<LayerTimes, AiError> {
    if channels == 0 || side < 3 || runs == 0 {
        return Err(AiError::Input(format!("a layer of {channels} channels on {side}³ voxels, {runs} runs")));
    }
    let dtype = match device.precision {
        Precision::F32 => FloatDType::F32,
        Precision::F16 => FloatDType::F16,
    };
    let random =
        |shape: [usize; 5]| Tensor::<5>::random(shape, Distribution::Uniform(-1.0, 1.0), &device.device).cast(dtype);
    let x = random([1, channels, side, side, side]);
    let weight = random([channels, channels, 3, 3, 3]);
    let options = ConvOptions::new([1; 3], [1; 3], [1; 3], 1);
    // The GEMM path's slabs: as many output slices as `column_mib` of columns hold.
    let taps = 27 * channels;
    let bytes = x.dtype().size();
    let slab = ((column_mib << 20) / (taps * side * side * bytes).max(1)).clamp(1, side);
    let slabs = side.div_ceil(slab);
    let columns = Tensor::<3>::random([1, taps, slab * side * side], Distribution::Uniform(-1.0, 1.0), &device.device)
        .cast(dtype);
    let weights = weight.clone().reshape([1, channels, taps]);
    let time = |run: &dyn Fn() -> Vec<Tensor<3>>| idle_to_idle_median_ms(&device.device, runs, run);
    let flat = |y: Tensor<5>| vec![y.flatten::<3>(2, 4)];
    let mut direct_ms = Vec::new();
    let mut left_out = Vec::new();
    let f32 = |t: Tensor<5>| t.cast(FloatDType::F32);
    let reference = burn::tensor::module::conv3d(f32(x.clone()), f32(weight.clone()), None, options.clone());
    let mut own = crate::ops::ConvWay::OWN;
    own.sort_by_key(|way| !way.on_matrix_units());
    for way in own {
        if way.applies(&device.device, x.dims(), weight.dims(), &options, weight.dtype()) {
            let run = || way.run(x.clone(), weight.clone(), None, &options, column_mib << 20);
            // A kernel the driver refused times nothing: checked first, as the tuner does.
            match crate::ops::disagreement(&reference, run()) {
                Some(why) => {
                    each(way, Err(&why));
                    left_out.push((way, why));
                }
                None => {
                    let ms = time(&|| flat(run()))?;
                    each(way, Ok(ms));
                    direct_ms.push((way, ms));
                }
            }
        }
    }
    drop(reference);
    let burn_ms = time(&|| flat(burn::tensor::module::conv3d(x.clone(), weight.clone(), None, options.clone())))?;
    let gemm_ms = time(&|| flat(crate::ops::conv3d_gemm(x.clone(), weight.clone(), None, &options, column_mib << 20)))?;
    let gemm_transposed_ms = time(&|| {
        flat(crate::ops::ConvWay::GemmTransposed.run(x.clone(), weight.clone(), None, &options, column_mib << 20))
    })?;
    let matmul_ms = time(&|| (0..slabs).map(|_| weights.clone().matmul(columns.clone())).collect())?;
    let affine = Some((
        Tensor::<1>::random([channels], Distribution::Uniform(0.5, 2.0), &device.device),
        Tensor::<1>::random([channels], Distribution::Uniform(-1.0, 1.0), &device.device),
    ));
    let activation = crate::norm::Activation::LeakyRelu(0.01);
    let norm =
        |kernels: bool| time(&|| flat(crate::norm::instance_norm(x.clone(), affine.clone(), activation, kernels)));
    let norm_ops_ms = norm(false)?;
    let norm_kernels_ms = if crate::norm::kernels_apply(&device.device) { Some(norm(true)?) } else { None };
    let voxels = (side * side * side) as f64;
    Ok(LayerTimes {
        burn_ms,
        gemm_ms,
        gemm_transposed_ms,
        direct_ms,
        left_out,
        matmul_ms,
        gflop: 2.0 * voxels * (channels * taps) as f64 / 1e9,
        column_gb: voxels * (taps * bytes) as f64 / 1e9,
        norm_ops_ms,
        norm_kernels_ms,
    })
}

/// The median of `runs` runs of `network` (after one to warm up) on `input` (`shape`, C order)
/// uploaded once beforehand, each run until the device is idle, its result left on the device:
/// a forward pass as PyTorch's benchmarks time one (CUDA events around `net(x)`), without the
/// upload and the readback.
pub fn resident_median_ms(
    device: &crate::AiDevice,
    input: Vec<f32>,
    shape: [usize; 5],
    runs: usize,
    network: impl Fn(Tensor<5>) -> Tensor<5>,
) -> Result<f64, AiError> {
    if input.len() != shape.iter().product::<usize>() || runs == 0 {
        return Err(AiError::Input(format!("{} values for shape {shape:?}, {runs} runs", input.len())));
    }
    let x: Tensor<5> = Tensor::from_data(burn::tensor::TensorData::new(input, shape), &device.device);
    idle_to_idle_median_ms(&device.device, runs, || network(x.clone()))
}

/// The median of `runs` runs of `run` after one to warm up (burn's autotune, kernel
/// compilation), each from an idle `device` until the device is idle again, its result held
/// meanwhile (reading back a part of it would let burn's lazy backends compute that part alone).
fn idle_to_idle_median_ms<T>(device: &Device, runs: usize, run: impl Fn() -> T) -> Result<f64, AiError> {
    let settle = || device.sync().map_err(|e| AiError::Input(format!("the device failed: {e:?}")));
    let mut times = Vec::with_capacity(runs);
    for i in 0..=runs {
        settle()?;
        let started = std::time::Instant::now();
        let held = run();
        settle()?;
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        drop(held);
    }
    times.sort_by(f64::total_cmp);
    Ok(times.get(times.len() / 2).copied().unwrap_or(0.0))
}

/// One kind of operation's share of a forward pass ([`sections`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Section {
    pub what: &'static str,
    /// Its operations' times added, ms.
    pub ms: f64,
    /// How many ran.
    pub count: usize,
}

thread_local! {
    static SECTIONS: std::cell::RefCell<Option<Vec<Section>>> = const { std::cell::RefCell::new(None) };
}

/// `f`, and while [`sections`] collects on this thread, its time added to `what`'s: from an
/// idle `device` until the device is idle again (burn's backends are lazy: the waits are what
/// make an operation's time its own).
pub(crate) fn section<T>(what: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
    if !SECTIONS.with(|s| s.borrow().is_some()) {
        return f();
    }
    // A device that fails shows in the result; the time is only a figure.
    let _ = device.sync();
    let started = std::time::Instant::now();
    let out = f();
    let _ = device.sync();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    SECTIONS.with(|s| {
        if let Some(sections) = s.borrow_mut().as_mut() {
            match sections.iter_mut().find(|s| s.what == what) {
                Some(s) => {
                    s.ms += ms;
                    s.count += 1;
                }
                None => sections.push(Section { what, ms, count: 1 }),
            }
        }
    });
    out
}

/// `f` (a forward pass, say) with each section it runs (Lightbox's operations mark theirs) timed alone → its result and the
/// sections in the order first met. What no section covers is the rest of `f`'s time.
pub fn sections<T>(f: impl FnOnce() -> T) -> (T, Vec<Section>) {
    SECTIONS.with(|s| *s.borrow_mut() = Some(Vec::new()));
    let out = f();
    (out, SECTIONS.with(|s| s.borrow_mut().take()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    /// The timings come out positive, and the arithmetic is that of the layer.
    #[test]
    fn a_small_layer_is_timed() -> anyhow::Result<()> {
        let device = crate::AiDevice::cpu();
        // 16³: the least Winograd's algorithms are tried on.
        let mut heard = 0;
        let t = super::convolution_layer(&device, 4, 16, (1, 2), |_, _| heard += 1)?;
        assert_eq!(heard, 0, "no own way on the CPU");
        assert!(t.burn_ms > 0.0 && t.gemm_ms > 0.0 && t.gemm_transposed_ms > 0.0 && t.matmul_ms > 0.0, "{t:?}");
        assert!(t.direct_ms.is_empty(), "Lightbox's own ways are the GPU's: {t:?}");
        assert!(t.norm_ops_ms > 0.0 && t.norm_kernels_ms.is_none(), "{t:?}");
        assert!((t.gflop - 2.0 * 4096.0 * 4.0 * 108.0 / 1e9).abs() < 1e-12, "{t:?}");
        assert!(super::convolution_layer(&device, 4, 2, (1, 2), |_, _| ()).is_err());
        Ok(())
    }

    /// A resident pass is timed; bad input is an error.
    #[test]
    fn a_resident_pass_is_timed() -> anyhow::Result<()> {
        let device = crate::AiDevice::cpu();
        let slow = |x: burn::prelude::Tensor<5>| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            x * 2.0
        };
        let ms = super::resident_median_ms(&device, vec![1.0; 8], [1, 1, 2, 2, 2], 3, slow)?;
        assert!(ms >= 5.0, "{ms}");
        assert!(super::resident_median_ms(&device, vec![1.0; 7], [1, 1, 2, 2, 2], 3, slow).is_err());
        assert!(super::resident_median_ms(&device, vec![1.0; 8], [1, 1, 2, 2, 2], 0, slow).is_err());
        Ok(())
    }

    /// Each kind's operations counted and timed within the pass; nothing collected outside.
    #[test]
    fn sections_time_each_kind_of_operation_within_a_pass() {
        let device = burn::prelude::Device::flex();
        let pass = || {
            let a = super::section("first", &device, || 2);
            let b = super::section("second", &device, || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                4
            });
            let c = super::section("first", &device, || 3);
            a + b + c
        };
        let (sum, found) = super::sections(pass);
        assert_eq!(sum, 9);
        let kinds: Vec<_> = found.iter().map(|s| (s.what, s.count)).collect();
        assert_eq!(kinds, [("first", 2), ("second", 1)]);
        assert!(found[1].ms >= 20.0 && found[0].ms < found[1].ms, "{found:?}");
        let (_, outside) = super::sections(|| ());
        assert!(outside.is_empty());
        assert_eq!(super::section("after", &device, || 7), 7);
        assert!(super::sections(|| ()).1.is_empty(), "a section outside a pass is not kept");
    }
}
