//! nnU-Net v2 result folders as nnU-Net leaves them, for import tests: `plans.json` (one
//! `3d_fullres` configuration), `dataset.json` and `fold_0/checkpoint_final.pth` (a `torch.save`
//! archive with the weights under `network_weights`).

use std::path::Path;

/// What the folder says besides its weights.
pub struct Plan {
    /// dynamic_network_architectures' class, after `architectures.` (`unet.PlainConvUNet`).
    pub class: String,
    /// The plan's `arch_kwargs` (stages, features, kernels, strides, convolutions per stage);
    /// the torch operators nnU-Net names beside them are added.
    pub arch_kwargs: serde_json::Value,
    pub patch_size: [usize; 3],
    pub spacing: [f64; 3],
    /// One normalisation scheme for every channel.
    pub normalization: String,
    pub use_mask_for_norm: bool,
    pub channels: Vec<String>,
    /// Background first.
    pub labels: Vec<String>,
}

impl Plan {
    /// A PlainConvUNet plan from Lightbox's own configuration of the network.
    pub fn plain(arch: &lightbox_ai::nnunet::PlainConvUNetConfig) -> anyhow::Result<Self> {
        let mut kwargs = serde_json::to_value(arch)?;
        if let Some(k) = kwargs.as_object_mut() {
            // Not arch_kwargs in nnU-Net's plans: the dataset gives channels and classes.
            for key in ["residual", "n_blocks_per_stage", "input_channels", "num_classes", "decoder_kernel_sizes"] {
                k.remove(key);
            }
        }
        Ok(Self {
            class: "unet.PlainConvUNet".into(),
            arch_kwargs: kwargs,
            patch_size: [8, 32, 32],
            spacing: [1.0; 3],
            normalization: "ZScoreNormalization".into(),
            use_mask_for_norm: false,
            channels: Vec::new(),
            labels: Vec::new(),
        })
    }
}

/// Writes the folder at `folder` with `tensors` (the network's, under nnU-Net's names, and any
/// aliases a checkpoint carries). Returns the plans.
pub fn write_v2_folder(
    folder: &Path,
    plan: &Plan,
    tensors: &[lightbox_ai::torch::NamedTensor],
) -> anyhow::Result<serde_json::Value> {
    std::fs::create_dir_all(folder.join("fold_0"))?;
    let mut arch = serde_json::json!({
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": true},
        "dropout_op": null,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": true}
    });
    if let (Some(a), Some(b)) = (arch.as_object_mut(), plan.arch_kwargs.as_object()) {
        a.extend(b.clone());
    }
    let channels = plan.channels.len();
    let plans = serde_json::json!({
        "dataset_name": "Dataset001_Test",
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": {
            "patch_size": plan.patch_size,
            "spacing": plan.spacing,
            "normalization_schemes": vec![plan.normalization.clone(); channels],
            "use_mask_for_norm": vec![plan.use_mask_for_norm; channels],
            "architecture": {
                "network_class_name": format!("dynamic_network_architectures.architectures.{}", plan.class),
                "arch_kwargs": arch,
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]
            }
        }},
        "foreground_intensity_properties_per_channel":
            (0..channels).map(|c| (c.to_string(), serde_json::json!({"mean": 1000.0, "std": 300.0})))
                .collect::<serde_json::Map<_, _>>()
    });
    std::fs::write(folder.join("plans.json"), serde_json::to_string_pretty(&plans)?)?;
    let dataset = serde_json::json!({
        "channel_names": plan.channels.iter().enumerate().map(|(c, n)| (c.to_string(), n.clone().into()))
            .collect::<serde_json::Map<_, _>>(),
        "labels": plan.labels.iter().enumerate().map(|(k, n)| (n.clone(), k.into()))
            .collect::<serde_json::Map<_, _>>(),
        "numTraining": 1,
        "file_ending": ".nii.gz"
    });
    std::fs::write(folder.join("dataset.json"), serde_json::to_string(&dataset)?)?;
    lightbox_ai::torch::write_zip(&folder.join("fold_0/checkpoint_final.pth"), "network_weights", tensors)?;
    Ok(plans)
}
