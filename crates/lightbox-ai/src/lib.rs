//! On-device inference on burn 0.22: one runtime `Device` (a GPU through wgpu when built with
//! `gpu` and one is present, otherwise burn's `flex` backend on every CPU core), model packages
//! from `models/<name>/` checked before use, nnU-Net's sliding-window inference, and the 3-D
//! operations burn lacks (max pooling, trilinear resizing, transposed convolution with kernel =
//! stride) as composites of the ones it has.

// Without `gpu` there is no `kernels` module, which the docs of the ways that use it link to.
#![cfg_attr(not(feature = "gpu"), allow(rustdoc::broken_intra_doc_links))]

pub mod deepbet;
pub mod device;
pub mod job;
#[cfg(feature = "gpu")]
pub mod kernels;
pub mod linknet;
pub mod nnunet;
pub mod nnunet_v1;
pub mod norm;
pub mod ops;
pub mod package;
pub mod profile;
pub mod sliding;
#[cfg(test)]
pub(crate) mod testing;
pub mod torch;
pub mod train;
pub mod tuning;
pub mod winograd;

pub use device::{AiDevice, Convolution, DevicePreference, Precision};
pub use job::InferenceJob;
pub use package::{ModelPackage, TensorInfo};
pub use sliding::{Progress, SlidingWindow};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AiError {
    #[error("{path}: {problem}")]
    Package { path: std::path::PathBuf, problem: String },

    #[error("model {model}: the weights do not fit the network: {problem}")]
    Weights { model: String, problem: String },

    #[error("LIGHTBOX_AI_DEVICE={value}: expected auto, cpu or gpu")]
    DevicePreference { value: String },

    #[error("LIGHTBOX_AI_PRECISION={value}: expected f32 or f16")]
    Precision { value: String },

    #[error(
        "LIGHTBOX_AI_CONV={value}: expected burn, gemm, gemm:MiB, tuned, tuned:MiB, tuned-tf32, tuned-tf32:MiB or units"
    )]
    Convolution { value: String },

    #[error("half precision (f16) does not work on {device}: {why}")]
    NoHalfPrecision { device: String, why: String },

    #[error("no GPU for inference: {0}")]
    NoGpu(String),

    #[error("the input does not fit: {0}")]
    Input(String),

    #[error("cancelled after {done} of {total} windows")]
    Cancelled { done: usize, total: usize },
}
