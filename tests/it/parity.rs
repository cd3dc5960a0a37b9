//! Parity with PyTorch (issue 7). burn runs deepbet's brain network and an nnU-Net v2
//! PlainConvUNet on the inputs PyTorch ran them on, and must agree to 1e-4 (max abs error).
//!
//! The fixtures in `tests/fixtures/parity` come from `scripts/device/pytorch_reference.py`, run
//! on the GPU machine where PyTorch is installed: deepbet 1.0.2's own TorchScript network, and an
//! nnU-Net result folder (plans.json, dataset.json, fold_0/checkpoint_final.pth written by
//! `torch.save`, optimizer state and all) whose network dynamic_network_architectures built from
//! that plan, as nnU-Net v2 does. Both sides generate the inputs exactly alike
//! ([`lightbox_tests::parity_input`]); the fixtures hold PyTorch's outputs on a crop.
//!
//! CI runs them on burn flex (CPU). On the GPU machine `LIGHTBOX_AI_DEVICE=gpu` runs them on
//! burn wgpu, and `LIGHTBOX_PARITY_FIXTURES` points them at fixtures made there and then.

use std::path::PathBuf;

use anyhow::Context;
use lightbox_ai::{
    AiDevice, Convolution, DevicePreference, ModelPackage, Precision, linknet::LinkNet3d, nnunet::NnUnet,
};
use lightbox_tests::{parity_input, workspace_root};

/// The largest difference from PyTorch's output allowed (issue 7).
const TOLERANCE: f64 = 1e-4;

/// In half precision, relative to the largest logit: f16 keeps 11 significant bits (a relative
/// rounding of 4.9e-4 per value), and the error grows through the network's layers.
const HALF_TOLERANCE: f64 = 1e-2;

fn fixtures() -> PathBuf {
    std::env::var_os("LIGHTBOX_PARITY_FIXTURES")
        .map_or_else(|| workspace_root().join("tests/fixtures/parity"), PathBuf::from)
}

fn device() -> anyhow::Result<AiDevice> {
    Ok(AiDevice::choose(DevicePreference::from_env()?)?)
}

fn meta(name: &str) -> anyhow::Result<serde_json::Value> {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn numbers<const N: usize>(value: &serde_json::Value) -> anyhow::Result<[usize; N]> {
    let list: Vec<usize> = serde_json::from_value(value.clone())?;
    list.try_into().map_err(|l: Vec<usize>| anyhow::anyhow!("{l:?} does not have {N} entries"))
}

fn read_f32(name: &str) -> anyhow::Result<Vec<f32>> {
    let path = fixtures().join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(bytes.len() % 4 == 0, "{}: not a whole number of f32", path.display());
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// The input PyTorch ran on, generated here, checked against the sum the fixture recorded.
fn input(meta: &serde_json::Value) -> anyhow::Result<([usize; 3], usize, Vec<f32>)> {
    let dims = numbers::<3>(&meta["input"]["dims"])?;
    let channels = meta["input"]["channels"].as_u64().context("input.channels")? as usize;
    let seed = meta["input"]["seed"].as_u64().context("input.seed")? as u32;
    let values = parity_input(dims, channels, seed);
    let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
    let theirs = meta["input"]["sum"].as_f64().context("input.sum")?;
    anyhow::ensure!(
        (sum - theirs).abs() <= 1e-9 * theirs.abs(),
        "the inputs differ: sum {sum} here, {theirs} in PyTorch"
    );
    Ok((dims, channels, values))
}

/// `[channels, D, H, W]` values of `full` (`[N = 1, C, D, H, W]`) inside the box.
fn crop(full: &[f32], [c, d, h, w]: [usize; 4], channels: &[usize], start: [usize; 3], size: [usize; 3]) -> Vec<f32> {
    assert_eq!(full.len(), c * d * h * w);
    let mut out = Vec::with_capacity(channels.len() * size.iter().product::<usize>());
    for &ch in channels {
        for z in start[0]..start[0] + size[0] {
            for y in start[1]..start[1] + size[1] {
                let row = w * (y + h * (z + d * ch));
                out.extend_from_slice(&full[row + start[2]..row + start[2] + size[2]]);
            }
        }
    }
    out
}

/// [`crop`] to the box the fixture's `crop` names (where PyTorch's values were kept).
fn fixture_crop(
    meta: &serde_json::Value,
    full: &[f32],
    shape: [usize; 4],
    channels: &[usize],
) -> anyhow::Result<Vec<f32>> {
    let start = numbers::<3>(&meta["crop"]["start"])?;
    let size = numbers::<3>(&meta["crop"]["size"])?;
    Ok(crop(full, shape, channels, start, size))
}

/// The largest absolute difference, which must be within [`TOLERANCE`].
fn assert_parity(what: &str, ours: &[f32], torch: &[f32]) -> anyhow::Result<f64> {
    anyhow::ensure!(ours.len() == torch.len(), "{what}: {} values here, {} from PyTorch", ours.len(), torch.len());
    anyhow::ensure!(ours.iter().all(|v| v.is_finite()), "{what}: burn gave a non-finite value");
    let (worst, at) = ours
        .iter()
        .zip(torch)
        .enumerate()
        .map(|(i, (a, b))| ((f64::from(*a) - f64::from(*b)).abs(), i))
        .fold((0.0, 0), |m, x| if x.0 > m.0 { x } else { m });
    eprintln!("{what}: max abs error {worst:.2e} over {} values (tolerance {TOLERANCE:.0e})", ours.len());
    anyhow::ensure!(
        worst <= TOLERANCE,
        "{what}: max abs error {worst:.3e} at value {at} (burn {}, PyTorch {}) exceeds {TOLERANCE:.0e}",
        ours[at],
        torch[at]
    );
    Ok(worst)
}

#[test]
fn deepbet_brain_network_matches_pytorch() -> anyhow::Result<()> {
    let meta = meta("deepbet.json")?;
    let (dims, _, values) = input(&meta)?;
    let device = device()?;
    eprintln!("deepbet parity on {}", device.description);
    let package = ModelPackage::open(&workspace_root().join("models/deepbet"))
        .context("deepbet is not installed: run scripts/install-models.sh (make test does)")?;
    let net =
        LinkNet3d::from_tensors("deepbet", &package.named_tensors(&LinkNet3d::expected_tensors())?, &device.device)?;
    let [d, h, w] = dims;
    let out = net.forward_values(&device, values, [1, 1, d, h, w])?;
    let ours = fixture_crop(&meta, &out, [2, d, h, w], &[1])?;
    let torch = read_f32("deepbet.f32")?;
    // The crop must exercise the network: voxels neither near 0 nor near 1.
    let informative = torch.iter().filter(|&&p| p > 0.05 && p < 0.95).count();
    anyhow::ensure!(informative >= 100, "the fixture's crop has only {informative} informative voxels");
    assert_parity("deepbet brain probability", &ours, &torch)?;
    let n = (d * h * w) as f64;
    let mean = out[d * h * w..].iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let theirs = meta["mean_probability"].as_f64().context("mean_probability")?;
    anyhow::ensure!((mean - theirs).abs() <= 1e-5, "mean brain probability {mean} here, {theirs} in PyTorch");
    Ok(())
}

/// The nnU-Net parity fixture: its folder imported as a package, and the input PyTorch ran on.
struct NnunetFixture {
    meta: serde_json::Value,
    dims: [usize; 3],
    channels: usize,
    values: Vec<f32>,
    package: PathBuf,
    _dir: tempfile::TempDir,
}

impl NnunetFixture {
    fn load() -> anyhow::Result<Self> {
        let meta = meta("nnunet.json")?;
        let (dims, channels, values) = input(&meta)?;
        let dir = tempfile::tempdir()?;
        let package = dir.path().join("parity");
        // The folder as nnU-Net v2 left it: plans.json, dataset.json, fold_0/checkpoint_final.pth.
        lightbox_ai::nnunet::import(&fixtures().join("nnunet"), "3d_fullres", &[0], "parity", &package)?;
        Ok(Self { meta, dims, channels, values, package, _dir: dir })
    }

    /// The PlainConvUNet's logits on the fixture's crop as `device` computes them, and the
    /// device's description.
    fn logits(&self, device: AiDevice) -> anyhow::Result<(String, Vec<f32>)> {
        let model = NnUnet::from_package(&self.package, device)?;
        let [d, h, w] = self.dims;
        let out = model.network().forward_values(&model.device, self.values.clone(), [1, self.channels, d, h, w])?;
        Ok((model.device.description.clone(), fixture_crop(&self.meta, &out, [3, d, h, w], &[0, 1, 2])?))
    }
}

#[test]
fn nnunet_folder_saved_by_pytorch_converts_and_matches_pytorch() -> anyhow::Result<()> {
    let fixture = NnunetFixture::load()?;
    let (meta, dims, channels, values) = (&fixture.meta, fixture.dims, fixture.channels, &fixture.values);
    let model = NnUnet::from_package(&fixture.package, device()?)?;
    eprintln!("nnU-Net parity on {}", model.device.description);
    let [d, h, w] = dims;
    let out = model.network().forward_values(&model.device, values.clone(), [1, channels, d, h, w])?;
    let classes = out.len() / (d * h * w);
    anyhow::ensure!(classes == 3, "{classes} classes, the dataset has 3 labels");
    let ours = fixture_crop(meta, &out, [classes, d, h, w], &[0, 1, 2])?;
    assert_parity("nnU-Net PlainConvUNet logits", &ours, &read_f32("nnunet.f32")?)?;
    let abs_max = out.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
    let theirs = meta["logits_abs_max"].as_f64().context("logits_abs_max")?;
    anyhow::ensure!((abs_max - theirs).abs() <= TOLERANCE, "largest |logit| {abs_max} here, {theirs} in PyTorch");

    // End to end through nnU-Net's inference on a two-channel study on the plan's grid.
    let affine = lightbox_core::Affine3::from_columns([0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 3.0], [0.0; 3]);
    let plane = d * h * w;
    let volumes = (0..channels)
        .map(|c| lightbox_core::Volume::new([w, h, d], values[c * plane..(c + 1) * plane].to_vec(), affine))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = model.predict(&volumes, &std::sync::atomic::AtomicBool::new(false), &mut |_| {})?;
    anyhow::ensure!(labels.dims() == [w, h, d], "labels on {:?}, the input is {:?}", labels.dims(), [w, h, d]);
    anyhow::ensure!(labels.voxels().iter().all(|&l| l < 3), "a label outside the dataset's 0..=2");
    // The class probabilities (what lesion extraction takes): they sum to one, and their argmax
    // is the label map.
    let probabilities =
        model.predict_probabilities(&volumes, &std::sync::atomic::AtomicBool::new(false), &mut |_| {})?;
    anyhow::ensure!(probabilities.len() == 3 && probabilities.iter().all(|p| p.dims() == [w, h, d]));
    for (at, &label) in labels.voxels().iter().enumerate() {
        let p: Vec<f32> = probabilities.iter().map(|v| v.voxels()[at]).collect();
        anyhow::ensure!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4, "voxel {at}: probabilities {p:?}");
        let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0);
        anyhow::ensure!(
            best == usize::from(label) || (p[best] - p[usize::from(label)]).abs() < 1e-6,
            "voxel {at}: {p:?} vs {label}"
        );
    }
    Ok(())
}

/// Half precision (`LIGHTBOX_AI_PRECISION=f16`, nnU-Net's autocast on a GPU): the same network
/// on the same input, its convolutions on f16 inputs and weights (accumulated as burn's kernel
/// does: f32 in its implicit GEMM, f16 in its direct convolution), stays within 1 % of the
/// largest logit of PyTorch's fp32 logits, and is really computed in half precision (it differs
/// from the f32 run).
#[test]
fn nnunet_in_half_precision_stays_within_rounding_of_pytorch() -> anyhow::Result<()> {
    let fixture = NnunetFixture::load()?;
    let mut logits = Vec::new();
    for precision in [Precision::F32, Precision::F16] {
        logits.push(fixture.logits(device()?.with_precision(precision)?)?);
    }
    let torch = read_f32("nnunet.f32")?;
    let (described, half) = &logits[1];
    anyhow::ensure!(described.contains("f16"), "the half-precision run says {described}");
    let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let scale = torch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let from_torch = worst(half, &torch);
    let from_f32 = worst(half, &logits[0].1);
    eprintln!(
        "nnU-Net PlainConvUNet logits in f16 on {described}: max abs error {from_torch:.2e} against PyTorch fp32 \
         (largest |logit| {scale:.2}), {from_f32:.2e} against our f32"
    );
    anyhow::ensure!(half.iter().all(|v| v.is_finite()), "a non-finite logit in f16");
    anyhow::ensure!(from_f32 > 0.0, "the f16 run gave exactly the f32 logits: it did not run in half precision");
    anyhow::ensure!(
        f64::from(from_torch) <= HALF_TOLERANCE * f64::from(scale),
        "f16 logits differ from PyTorch's by {from_torch:.3e}, over {HALF_TOLERANCE} of the largest |logit| {scale:.3}"
    );
    Ok(())
}

/// Convolutions as matrix products (`LIGHTBOX_AI_CONV=gemm`, `ops::conv3d_gemm`), tuned per
/// layer (`tuned`, `ops::conv3d_tuned`: burn's kernels or matrix products, whichever was faster
/// here) and on matrix units (`units`: Lightbox's tensor-core kernel for the f16 layers on a GPU
/// that offers them, burn's kernels elsewhere): the same network matches PyTorch to 1e-4 in f32,
/// and stays within f16's rounding in f16.
#[test]
fn nnunet_with_gemm_tuned_and_matrix_unit_convolutions_matches_pytorch() -> anyhow::Result<()> {
    let fixture = NnunetFixture::load()?;
    let torch = read_f32("nnunet.f32")?;
    let scale = torch.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let ways =
        [(Convolution::GEMM, "GEMM"), (Convolution::TUNED, "tuned per layer"), (Convolution::Units, "matrix units")];
    for (convolution, says) in ways {
        for precision in [Precision::F32, Precision::F16] {
            let (described, ours) =
                fixture.logits(device()?.with_convolution(convolution).with_precision(precision)?)?;
            anyhow::ensure!(described.contains(says), "the run says {described}");
            if precision == Precision::F32 {
                assert_parity(&format!("nnU-Net logits, {says} convolutions on {described}"), &ours, &torch)?;
            } else {
                let worst = ours.iter().zip(&torch).map(|(a, b)| f64::from((a - b).abs())).fold(0.0, f64::max);
                eprintln!("nnU-Net logits, {says} convolutions on {described}: max abs error {worst:.2e}");
                anyhow::ensure!(
                    worst <= HALF_TOLERANCE * scale,
                    "f16 {says} logits off by {worst:.3e} (largest {scale:.3})"
                );
            }
        }
    }
    Ok(())
}

/// nnU-Net v1, as the PI-CAI baseline ships: a result folder written by nnU-Net v1's own code
/// (`plans.pkl`, `fold_0/model_best.model` and `.pkl` from `nnUNetTrainerV2.save_checkpoint`,
/// scripts/reference/nnunet_v1.py) imports without Python, its Generic_UNet matches PyTorch, and
/// the whole prediction (CT normalisation of the ADC, z-scores, sliding window with Gaussian
/// weights, mirroring, softmax averaged per window) matches nnU-Net v1's own.
#[test]
fn nnunet_v1_folder_imports_and_predicts_as_nnunet_v1_does() -> anyhow::Result<()> {
    let meta = meta("nnunet_v1.json")?;
    let dims = numbers::<3>(&meta["input"]["dims"])?;
    let channels = meta["input"]["channels"].as_u64().context("input.channels")? as usize;
    let seed = meta["input"]["seed"].as_u64().context("input.seed")? as u32;
    let values = parity_input(dims, channels, seed);
    let dir = tempfile::tempdir()?;
    let package = dir.path().join("picai-v1");
    let options = lightbox_ai::nnunet_v1::ImportOptions::default();
    lightbox_ai::nnunet_v1::import(&fixtures().join("nnunet_v1"), &options, "picai-v1", &package)?;
    let manifest = ModelPackage::open(&package)?.manifest;
    // PI-CAI's "CT" channel is its ADC; v1 has no label names without the task's dataset.json.
    anyhow::ensure!(manifest.input.sequences == ["T2W", "ADC", "HBV"], "{:?}", manifest.input.sequences);
    anyhow::ensure!(manifest.labels.get("1").map(String::as_str) == Some("class 1"), "{:?}", manifest.labels);
    anyhow::ensure!(manifest.version == "fold 0 model_best", "{}", manifest.version);
    let model = NnUnet::from_package(&package, device()?)?;
    eprintln!("nnU-Net v1 parity on {}", model.device.description);

    // The network alone.
    let [d, h, w] = dims;
    let out = model.network().forward_values(&model.device, values.clone(), [1, channels, d, h, w])?;
    let classes = out.len() / (d * h * w);
    anyhow::ensure!(classes == 2, "{classes} classes, the plan has 2");
    let ours = fixture_crop(&meta, &out, [classes, d, h, w], &[0, 1])?;
    assert_parity("nnU-Net v1 Generic_UNet logits", &ours, &read_f32("nnunet_v1.f32")?)?;

    // The whole prediction, on the study as nnU-Net v1 read it (its ADC in µm²/s).
    let adc = meta["input"]["adc_channel"].as_u64().context("input.adc_channel")? as usize;
    let scale = meta["input"]["adc_scale"].as_f64().context("input.adc_scale")? as f32;
    let plane = d * h * w;
    let mut study = values;
    study[adc * plane..(adc + 1) * plane].iter_mut().for_each(|v| *v *= scale);
    let sum: f64 = study.iter().map(|&v| f64::from(v)).sum();
    let theirs = meta["input"]["sum"].as_f64().context("input.sum")?;
    anyhow::ensure!((sum - theirs).abs() <= 1e-6 * theirs.abs(), "input sum {sum} here, {theirs} in Python");
    let spacing: Vec<f64> = serde_json::from_value(meta["input"]["spacing_zyx"].clone())?;
    let [sz, sy, sx]: [f64; 3] = spacing.try_into().map_err(|s| anyhow::anyhow!("spacing {s:?}"))?;
    let affine = lightbox_core::Affine3::from_columns([sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, sz], [0.0; 3]);
    let volumes = (0..channels)
        .map(|c| lightbox_core::Volume::new([w, h, d], study[c * plane..(c + 1) * plane].to_vec(), affine))
        .collect::<Result<Vec<_>, _>>()?;
    let probabilities =
        model.predict_probabilities(&volumes, &std::sync::atomic::AtomicBool::new(false), &mut |_| {})?;
    anyhow::ensure!(probabilities.len() == 2, "{} classes", probabilities.len());
    let worst = assert_parity(
        "nnU-Net v1 prediction (lesion probability)",
        probabilities[1].voxels(),
        &read_f32("nnunet_v1.softmax.f32")?,
    )?;
    eprintln!("nnU-Net v1 prediction: largest difference from nnU-Net v1's own {worst:.2e}");

    // Folds 0 and 1 as one ensemble, as nnU-Net v1's predict_cases averages them (the fixture
    // records how far the ensemble lies from fold 0 alone: the comparison can tell them apart).
    let apart = meta["ensemble_vs_fold_0_max_abs"].as_f64().context("ensemble_vs_fold_0_max_abs")?;
    anyhow::ensure!(apart > 100.0 * TOLERANCE, "the two folds predict alike ({apart}): not a test of the ensemble");
    let ensemble = dir.path().join("picai-v1-ensemble");
    let options = lightbox_ai::nnunet_v1::ImportOptions { folds: vec![0, 1], ..Default::default() };
    lightbox_ai::nnunet_v1::import(&fixtures().join("nnunet_v1"), &options, "picai-v1-ensemble", &ensemble)?;
    let model = NnUnet::from_package(&ensemble, device()?)?;
    anyhow::ensure!(model.folds() == 2, "{} folds", model.folds());
    let probabilities =
        model.predict_probabilities(&volumes, &std::sync::atomic::AtomicBool::new(false), &mut |_| {})?;
    assert_parity(
        "nnU-Net v1 ensemble of folds 0 and 1 (lesion probability)",
        probabilities[1].voxels(),
        &read_f32("nnunet_v1.ensemble.f32")?,
    )?;
    Ok(())
}
