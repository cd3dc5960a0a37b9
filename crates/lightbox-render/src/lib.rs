//! The Lightbox renderer, on wgpu. It draws volumes into textures and owns no window: the viewer
//! shows those textures, tests read them back, the CLI will save them.
//!
//! All WGSL lives in the top-level `shaders/` folder and is embedded at build time
//! ([`shaders::ALL`]). Every GPU path has a CPU reference of the same sampling in [`cpu`], which
//! the golden tests compare against.

pub mod cpu;
mod gpu;
pub mod halving;
pub mod lut;
pub mod mpr;
pub mod occupancy;
pub mod packing;
pub mod shaders;

pub use gpu::{
    GpuContext, GpuLimits, GpuTimer, Launch, MEMORY_BUDGET, MprRenderer, PlaneSource, SliceRenderer, VOLUME_FEATURES,
};
use lightbox_core::WindowLevel;
pub use lut::Lut;
pub use mpr::{LabelStyle, MprPlane, ScalarStyle, SlabMode, hot, label_colour};
/// The wgpu this renderer draws with (for callers that open their own device or check its
/// features).
pub use wgpu;

/// What to draw of a volume.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SliceParams {
    /// Index along the volume's third axis.
    pub slice: u32,
    pub window: WindowLevel,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("no GPU adapter found (tried backends {backends}); install Mesa's lavapipe for software Vulkan")]
    NoAdapter { backends: String },

    #[error("cannot open the GPU device: {0}")]
    Device(String),

    #[error("volume {dims:?} exceeds this GPU's 3-D texture limit of {limit} per axis")]
    VolumeTooLarge { dims: [usize; 3], limit: u32 },

    #[error("the GPU has no memory left for the {what} ({:.1} MB)", *.bytes as f64 / 1e6)]
    OutOfMemory { what: String, bytes: u64 },

    #[error(
        "volume {dims:?} needs {:.1} MB on the GPU even at a quarter of its resolution, over the {:.1} MB allowed (LIGHTBOX_GPU_VOLUME_MB)",
        *.bytes as f64 / 1e6, *.budget as f64 / 1e6
    )]
    OverBudget { dims: [usize; 3], bytes: u64, budget: u64 },

    #[error("slice {slice} is outside the volume's {depth} slices")]
    SliceOutOfRange { slice: u32, depth: u32 },

    #[error("reading the rendered image back failed: {0}")]
    Readback(String),

    #[error("colour table {name}, line {line}: {problem}")]
    Lut { name: String, line: usize, problem: String },
}
