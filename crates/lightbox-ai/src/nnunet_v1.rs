//! nnU-Net v1 models without Python, in the layout the PI-CAI baseline ships:
//!
//! ```text
//! nnUNetTrainerV2_Loss_FL_and_CE_checkpoints__nnUNetPlansv2.1/
//! ├── plans.pkl
//! └── fold_0/model_best.model, model_best.model.pkl   (or model_final_checkpoint.model …)
//! ```
//!
//! `plans.pkl` (a pickle with NumPy arrays) is read by `crate::torch::read_pickle`, the
//! checkpoint's `state_dict` by `crate::torch::read_zip_where`, and the network, nnU-Net v1's
//! `Generic_UNet` as `nnUNetTrainerV2` builds it, becomes the `PlainConvUNet` it is the same
//! computation as: per stage `conv_per_stage` blocks of conv → InstanceNorm (affine) → LeakyReLU
//! 0.01 (the bottleneck's and the decoder's split into two `StackedConvLayers`, the decoder's
//! with the kernel of the stage below, where v2 takes the skip's), transposed
//! convolutions and segmentation heads without a bias (imported as zero biases), features
//! doubling from `base_num_features` up to 320. The package predicts as v1 does: each window's
//! softmax is averaged (v2 averages logits), and v1's normalisation names map onto v2's
//! (`nonCT` → z-score, `CT` → CT with the plan's `sd`, `noNorm` → none).

use std::path::Path;

use burn::prelude::*;
use serde_json::Value;

use crate::AiError;
use crate::nnunet::{PackageSpec, PlainConvUNet, PlainConvUNetConfig, ensemble_name, folds_text, write_package};

/// `Generic_UNet.MAX_NUM_FILTERS_3D`.
const MAX_FEATURES_3D: usize = 320;

/// The checkpoints nnU-Net v1 writes, in the order `import` looks for them when none is named.
pub const CHECKPOINTS: [&str; 3] = ["model_final_checkpoint", "model_best", "model_latest"];

/// Whether `folder` looks like an nnU-Net v1 result folder (it has `plans.pkl`).
pub fn is_v1_folder(folder: &Path) -> bool {
    folder.join("plans.pkl").is_file() && !folder.join("plans.json").is_file()
}

/// What `import` takes besides the folder.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The folds to import, as one ensemble (empty: fold 0). PI-CAI's algorithm runs 0–4.
    pub folds: Vec<usize>,
    /// `model_best`, `model_final_checkpoint`, … (with or without `.model`); the first of
    /// `CHECKPOINTS` present when `None`.
    pub checkpoint: Option<String>,
    /// The sequence each input channel takes, overriding the plan's modality names.
    pub channels: Option<Vec<String>>,
}

fn err(path: &Path, problem: impl Into<String>) -> AiError {
    AiError::Package { path: path.to_owned(), problem: problem.into() }
}

fn read_pickle(path: &Path) -> Result<Value, AiError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    crate::torch::read_pickle(&bytes).map_err(|e| err(path, e))
}

fn sizes(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(|x| x.as_u64().map(|x| x as usize)).collect()
}

fn triples(v: &Value) -> Option<Vec<[usize; 3]>> {
    v.as_array()?.iter().map(|x| sizes(x)?.try_into().ok()).collect()
}

/// A per-channel dictionary of the plan (`{0: …, 1: …}`, keys as text) as a list.
fn per_channel(v: &Value, channels: usize) -> Option<Vec<&Value>> {
    (0..channels).map(|c| v.get(c.to_string())).collect()
}

/// The network's tensors under v2's names, from a v1 `state_dict` (names without the
/// `state_dict.` prefix). Heads and transposed convolutions have no bias in v1: theirs are zero.
/// Every v1 tensor must be used, and every v2 tensor found.
fn rename(
    arch: &PlainConvUNetConfig,
    conv_per_stage: usize,
    mut v1: Vec<crate::torch::NamedTensor>,
) -> Result<Vec<crate::torch::NamedTensor>, String> {
    let last = arch.n_stages - 1;
    // A v2 block prefix (without `.conv`/`.norm`) → its v1 prefix.
    let block = |stage_of: &str, s: usize, i: usize| -> String {
        match stage_of {
            "encoder" if s < last => format!("conv_blocks_context.{s}.blocks.{i}"),
            "encoder" if i + 1 < conv_per_stage => format!("conv_blocks_context.{s}.0.blocks.{i}"),
            "encoder" => format!("conv_blocks_context.{s}.1.blocks.0"),
            _ if i + 1 < conv_per_stage => format!("conv_blocks_localization.{s}.0.blocks.{i}"),
            _ => format!("conv_blocks_localization.{s}.1.blocks.0"),
        }
    };
    let v1_name = |name: &str| -> Option<String> {
        let parts: Vec<&str> = name.split('.').collect();
        let leaf = |kind: &str, what: &str| format!("{}.{what}", if kind == "norm" { "instnorm" } else { "conv" });
        match parts.as_slice() {
            ["encoder", "stages", s, "0", "convs", i, kind, what] => {
                Some(format!("{}.{}", block("encoder", s.parse().ok()?, i.parse().ok()?), leaf(kind, what)))
            }
            ["decoder", "stages", s, "convs", i, kind, what] => {
                Some(format!("{}.{}", block("decoder", s.parse().ok()?, i.parse().ok()?), leaf(kind, what)))
            }
            ["decoder", "transpconvs", s, "weight"] => Some(format!("tu.{s}.weight")),
            ["decoder", "seg_layers", s, "weight"] => Some(format!("seg_outputs.{s}.weight")),
            // No bias in v1.
            ["decoder", "transpconvs" | "seg_layers", _, "bias"] => None,
            _ => Some(format!("unexpected {name}")),
        }
    };
    let mut out = Vec::new();
    for (name, shape) in arch.expected_tensors() {
        match v1_name(&name) {
            None => {
                let n = shape.iter().product();
                out.push((name, shape, vec![0.0; n]));
            }
            Some(from) => {
                let at = v1.iter().position(|(n, ..)| *n == from).ok_or_else(|| {
                    format!("the checkpoint has no {from} (for {name}): the plan and the checkpoint disagree")
                })?;
                let (_, s, values) = v1.swap_remove(at);
                out.push((name, s, values));
            }
        }
    }
    if !v1.is_empty() {
        let mut left: Vec<&str> = v1.iter().map(|(n, ..)| n.as_str()).collect();
        left.sort_unstable();
        return Err(format!(
            "{} tensors the plan does not explain (not a Generic_UNet of this plan?): {}",
            left.len(),
            left.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

/// Imports an nnU-Net v1 result folder (`…/3d_fullres/TaskXXX/Trainer__nnUNetPlansv2.1`) into a
/// model package at `out`, as `crate::nnunet::import` does for v2. Labels and channel names come
/// from a `dataset.json` beside `plans.pkl` when the site puts the task's one there; otherwise
/// from the plan (channels) and as `class k` (labels). PI-CAI's channel names (T2W, "CT" for the
/// ADC so that it is CT-normalised, HBV) are read as T2W, ADC, HBV.
pub fn import(folder: &Path, options: &ImportOptions, name: &str, out: &Path) -> Result<(), AiError> {
    let plans_path = folder.join("plans.pkl");
    let plans = read_pickle(&plans_path)?;
    let bad = |problem: String| err(&plans_path, problem);
    let folds = if options.folds.is_empty() { vec![0] } else { options.folds.clone() };
    let fold_dir = folder.join(format!("fold_{}", folds[0]));
    let checkpoint_name = match &options.checkpoint {
        Some(c) => c.trim_end_matches(".model").to_owned(),
        None => CHECKPOINTS
            .iter()
            .find(|c| fold_dir.join(format!("{c}.model")).is_file())
            .map(|c| (*c).to_owned())
            .ok_or_else(|| err(&fold_dir, format!("no checkpoint ({}.model)", CHECKPOINTS.join(".model, "))))?,
    };
    // The trainer's own record: its class (mirroring) and the stage it trained.
    let info_path = fold_dir.join(format!("{checkpoint_name}.model.pkl"));
    let info = if info_path.is_file() { Some(read_pickle(&info_path)?) } else { None };
    let trainer = info.as_ref().and_then(|i| i["name"].as_str()).unwrap_or("nnUNetTrainerV2").to_owned();
    let stages = plans["plans_per_stage"].as_object().ok_or_else(|| bad("no plans_per_stage".into()))?;
    let stage_key = match info.as_ref().and_then(|i| i["init"].get(5)).and_then(Value::as_u64) {
        Some(s) => s.to_string(),
        // 3d_fullres trains the last stage (the first is 3d_lowres when there are two).
        None => stages.keys().max_by_key(|k| k.parse::<u64>().unwrap_or(0)).cloned().unwrap_or_default(),
    };
    let stage = stages.get(&stage_key).ok_or_else(|| bad(format!("no stage {stage_key} in plans_per_stage")))?;
    let patch = sizes(&stage["patch_size"]).filter(|p| p.len() == 3);
    let spacing: Option<Vec<f64>> = stage["current_spacing"]
        .as_array()
        .and_then(|a| a.iter().map(Value::as_f64).collect())
        .filter(|s: &Vec<f64>| s.len() == 3);
    let (Some(patch), Some(spacing)) = (patch, spacing) else {
        return Err(bad(format!("stage {stage_key}: only 3-D plans (patch_size, current_spacing) are supported")));
    };
    let pools = triples(&stage["pool_op_kernel_sizes"]).ok_or_else(|| bad("no 3-D pool_op_kernel_sizes".into()))?;
    let kernels = triples(&stage["conv_kernel_sizes"]).ok_or_else(|| bad("no 3-D conv_kernel_sizes".into()))?;
    let channels = plans["num_modalities"].as_u64().ok_or_else(|| bad("no num_modalities".into()))? as usize;
    let classes = plans["num_classes"].as_u64().ok_or_else(|| bad("no num_classes".into()))? as usize + 1;
    let base = plans["base_num_features"].as_u64().ok_or_else(|| bad("no base_num_features".into()))? as usize;
    let conv_per_stage = plans.get("conv_per_stage").and_then(Value::as_u64).unwrap_or(2) as usize;
    let n = pools.len() + 1;
    let arch = PlainConvUNetConfig {
        n_stages: n,
        features_per_stage: (0..n).map(|s| (base << s.min(16)).min(MAX_FEATURES_3D)).collect(),
        // Generic_UNet's decoder stage u convolves with the kernel of the stage below it.
        decoder_kernel_sizes: (0..n - 1).map(|u| kernels[n - 1 - u]).collect(),
        kernel_sizes: kernels,
        strides: std::iter::once([1, 1, 1]).chain(pools).collect(),
        n_conv_per_stage: vec![conv_per_stage; n],
        n_blocks_per_stage: Vec::new(),
        residual: false,
        n_conv_per_stage_decoder: vec![conv_per_stage; n - 1],
        conv_bias: true,
        input_channels: channels,
        num_classes: classes,
    };
    // Normalisation, in v2's names.
    let schemes_v1 = per_channel(&plans["normalization_schemes"], channels)
        .ok_or_else(|| bad(format!("normalization_schemes for {channels} channels")))?;
    let mut schemes = Vec::new();
    let mut ct = serde_json::Map::new();
    for (c, scheme) in schemes_v1.iter().enumerate() {
        schemes.push(match scheme.as_str() {
            Some("CT") => {
                let p = &plans["dataset_properties"]["intensityproperties"][c.to_string()];
                let get = |k: &str| p[k].as_f64().ok_or_else(|| bad(format!("channel {c}: CT without {k}")));
                ct.insert(
                    c.to_string(),
                    serde_json::json!({
                        "mean": get("mean")?, "std": get("sd")?,
                        "percentile_00_5": get("percentile_00_5")?, "percentile_99_5": get("percentile_99_5")?,
                    }),
                );
                "CTNormalization"
            }
            Some("noNorm") => "NoNormalization",
            Some("CT2") => return Err(bad(format!("channel {c}: the CT2 normalisation is not supported"))),
            Some(_) => "ZScoreNormalization",
            None => return Err(bad(format!("channel {c}: normalisation {scheme}"))),
        });
    }
    let use_mask_for_norm = match per_channel(&plans["use_mask_for_norm"], channels) {
        Some(v) => v.iter().map(|b| b.as_bool().unwrap_or(false)).collect(),
        None => vec![false; channels],
    };
    let transpose_forward = sizes(&plans["transpose_forward"]).unwrap_or_else(|| vec![0, 1, 2]);
    // Names: the task's dataset.json when the site put it here, else the plan's modalities.
    let dataset_path = folder.join("dataset.json");
    let dataset: Option<Value> = if dataset_path.is_file() {
        let text = std::fs::read_to_string(&dataset_path).map_err(|e| err(&dataset_path, e.to_string()))?;
        Some(serde_json::from_str(&text).map_err(|e| err(&dataset_path, e.to_string()))?)
    } else {
        None
    };
    let mut sequences: Vec<String> = match &options.channels {
        Some(c) if c.len() == channels => c.clone(),
        Some(c) => return Err(bad(format!("{} channel names for a model of {channels} channels", c.len()))),
        None => {
            let modalities = dataset.as_ref().map_or(&plans["modalities"], |d| &d["modality"]);
            (0..channels).map(|c| modalities[c.to_string()].as_str().unwrap_or_default().to_owned()).collect()
        }
    };
    if options.channels.is_none() && sequences == ["T2W", "CT", "HBV"] {
        // PI-CAI names its ADC "CT" to have it CT-normalised.
        sequences[1] = "ADC".into();
    }
    let labels: Vec<(i64, String)> = (0..classes as i64)
        .map(|k| {
            let named = dataset.as_ref().and_then(|d| d["labels"][k.to_string()].as_str()).map(str::to_owned);
            (k, named.unwrap_or_else(|| if k == 0 { "background".into() } else { format!("class {k}") }))
        })
        .collect();
    let mut tensors = Vec::new();
    for (k, fold) in folds.iter().enumerate() {
        let checkpoint = folder.join(format!("fold_{fold}")).join(format!("{checkpoint_name}.model"));
        let bytes = std::fs::read(&checkpoint).map_err(|e| err(&checkpoint, e.to_string()))?;
        if !bytes.starts_with(b"PK") {
            return Err(err(&checkpoint, "not a zip archive: checkpoints saved before PyTorch 1.6 are not supported"));
        }
        let state = crate::torch::read_zip_where(&bytes, &|n| n.starts_with("state_dict."))
            .map_err(|e| err(&checkpoint, e))?
            .into_iter()
            .map(|(n, s, v)| (n.trim_start_matches("state_dict.").to_owned(), s, v))
            .collect();
        let one = rename(&arch, conv_per_stage, state).map_err(|e| err(&checkpoint, e))?;
        // Refuse a checkpoint that does not fit its own plan before writing anything.
        PlainConvUNet::from_tensors(name, arch.clone(), &one, &Device::flex())
            .map_err(|e| err(&checkpoint, e.to_string()))?;
        tensors.extend(one.into_iter().map(|(n, s, v)| (ensemble_name(k, &n), s, v)));
    }
    let spec = PackageSpec {
        name: name.to_owned(),
        version: format!("{} {checkpoint_name}", folds_text(&folds)),
        description: format!("nnU-Net v1 ({trainer}, plans stage {stage_key}), imported from {}", folder.display()),
        licence: "unknown: set by the site that installs it".into(),
        source: folder.display().to_string(),
        arch,
        transpose_forward,
        normalization_schemes: schemes.into_iter().map(str::to_owned).collect(),
        intensity_properties: Value::Object(ct).to_string(),
        use_mask_for_norm,
        // nnUNetTrainerV2 mirrors all three axes at test time; its noMirroring variants none.
        mirror_axes: if trainer.contains("noMirroring") { Vec::new() } else { vec![0, 1, 2] },
        softmax_per_window: true,
        folds: folds.clone(),
        sequences,
        spacing,
        patch_size: patch,
        labels,
    };
    write_package(out, &spec, &tensors)?;
    crate::nnunet::write_card_stub(
        out,
        name,
        &format!(
            "the nnU-Net v1 folder `{}` ({}, {checkpoint_name}, trainer {trainer})",
            folder.display(),
            folds_text(&folds)
        ),
    )
}
