//! Which device runs inference: a real GPU through burn's wgpu backend when this build has it
//! (feature `gpu`) and one is present, otherwise burn's `flex` backend on every CPU core.
//! `LIGHTBOX_AI_DEVICE` (auto, cpu, gpu) or the caller overrides; the choice is logged and
//! described for the user beside each result.
//!
//! `auto` takes a GPU only when it is a real one: a software Vulkan device (Mesa's lavapipe) is
//! slower than burn's own CPU backend, so it serves only when asked for by name (`gpu`).
//!
//! Precision (`LIGHTBOX_AI_PRECISION`: f32, the default, or f16): f16 runs nnU-Net networks the
//! way nnU-Net itself runs them on a CUDA GPU (PyTorch's autocast): convolutions and matrix
//! products on half-precision inputs and weights; normalisation, softmax and everything after
//! in f32. How a convolution accumulates is burn's kernel's choice: its implicit GEMM on
//! cooperative matrices (tensor cores; feature `gpu-spirv`) accumulates in f32, its direct
//! convolution in f16. On the parity fixture the f16 logits differ from PyTorch's fp32 by
//! 0.27 % of the largest logit on burn flex and 0.89 % on lavapipe's direct kernels.
//!
//! Convolution (`LIGHTBOX_AI_CONV`: burn, gemm, gemm:MiB, tuned or tuned:MiB): how nnU-Net
//! networks convolve. `burn` takes burn's own kernels (autotuned; through WGSL only its direct
//! convolution runs); `gemm` computes each convolution as matrix products over im2col columns
//! (`ops::conv3d_gemm`), which reach burn's register-tiled matrix kernels instead; `tuned` times
//! those, the matrix products the other way round (`ops::ConvWay::GemmTransposed`) and, on a
//! GPU, Lightbox's own direct kernel (`kernels`), the first time a layer of each shape runs and keeps the fastest (`ops::conv3d_tuned`, as
//! PyTorch's `cudnn.benchmark`). The same sums in another order (PlainConvUNet's logits
//! within 1.2e-7 of each other in f32 on an H100).
//!
//! Which is faster depends on the layer and the GPU: on an NVIDIA H100, PlainConvUNet 32…320 on
//! 128³ took 314 ms by GEMM in 96 MiB slabs against 523 ms by burn's kernels in f32 (WGSL), but
//! with burn's SPIR-V compiler in f16 a full-resolution layer took 3.8 ms by burn's implicit
//! GEMM on tensor cores against 12.4 ms by matrix products, while its layers of 128 channels
//! and more fell back to its slow direct kernel. On lavapipe, tuned per layer beat every fixed
//! way (PlainConvUNet on 32³: 2.07 s against 2.65 s by burn's kernels and 3.00 s by GEMM). So
//! unset, a GPU card takes `tuned`; the CPU (and a software rasteriser) take `burn`: tuned won
//! there too (315 ms against 382 ms on 2 cores with flex), but timing three ways costs the
//! first window about ten convolutions per layer, more than a few windows save.
//!
//! A GPU's choices are kept on disk (`tuning::TuningStore`: per GPU model and build, in
//! `LIGHTBOX_AI_TUNING_DIR` or the user's cache; `off` keeps them in memory), so only the first
//! process on a machine pays for timing a shape; later runs, the daemon after a restart and the
//! CLI start with them.

use burn::prelude::Device;

use crate::AiError;

/// The arithmetic nnU-Net networks run in (see the module's documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    /// Half-precision convolution inputs and weights; results, normalisation and all after
    /// in f32.
    F16,
}

impl Precision {
    pub fn parse(value: &str) -> Result<Self, AiError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "f32" | "fp32" => Ok(Self::F32),
            "f16" | "fp16" | "half" => Ok(Self::F16),
            _ => Err(AiError::Precision { value: value.to_owned() }),
        }
    }

    /// From `LIGHTBOX_AI_PRECISION`, f32 when unset.
    pub fn from_env() -> Result<Self, AiError> {
        std::env::var("LIGHTBOX_AI_PRECISION").map_or(Ok(Self::F32), |v| Self::parse(&v))
    }

    /// burn's type for the convolutions' inputs and weights.
    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Self::F32 => burn::tensor::FloatDType::F32,
            Self::F16 => burn::tensor::FloatDType::F16,
        }
    }
}

/// How nnU-Net networks convolve (see the module's documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Convolution {
    /// burn's own convolution kernels.
    #[default]
    Burn,
    /// Matrix products over im2col columns (`ops::conv3d_gemm`), built in slabs of output
    /// depth of at most `column_mib` MiB.
    Gemm { column_mib: usize },
    /// Per layer, whichever is fastest on this device of burn's kernels, the matrix products
    /// and, on a GPU, Lightbox's own ways (`ops::ConvWay`): all are timed the first time a
    /// convolution of that shape runs, and the fastest kept for the process
    /// (`ops::conv3d_tuned`; PyTorch's `cudnn.benchmark` does the same) and, on a GPU, on disk
    /// for the next (`tuning::TuningStore`). `tf32`: also ways as accurate as TF32 and no more
    /// (Winograd's F(4, 3), about 10⁻⁴ of each value in f32), as PyTorch's default on NVIDIA
    /// (`torch.backends.cudnn.allow_tf32`); otherwise each way keeps f32's accuracy.
    Tuned { column_mib: usize, tf32: bool },
    /// Lightbox's convolution on the GPU's matrix units (tensor cores:
    /// [`crate::kernels::mma`]) for every layer it computes (f16, 3×3×3) where the GPU offers
    /// them (a SPIR-V build, `gpu-spirv`), burn's kernels for the rest: one way, nothing timed
    /// first, so a device run measures that kernel in the whole network without the tuner's
    /// first window (which compiles and times every way for every layer shape).
    Units,
}

impl Convolution {
    /// GEMM convolutions in slabs of at most 96 MiB of columns: under the largest buffer a
    /// shader may bind by wgpu's default limits (128 MiB; lavapipe refuses a 216 MiB one). A GPU
    /// that binds more may do better with larger slabs (`gemm:1024`; bench-ai times both).
    pub const GEMM: Self = Self::Gemm { column_mib: 96 };

    /// Per layer, the fastest way, GEMM in 96 MiB slabs.
    pub const TUNED: Self = Self::Tuned { column_mib: 96, tf32: false };

    /// `burn`, `gemm`, `gemm:MiB`, `tuned`, `tuned:MiB`, `tuned-tf32`, `tuned-tf32:MiB` or
    /// `units`.
    pub fn parse(value: &str) -> Result<Self, AiError> {
        let value = value.trim().to_ascii_lowercase();
        let bad = || AiError::Convolution { value: value.clone() };
        let (how, tf32) = match value.strip_prefix("tuned-tf32") {
            Some(rest) => (format!("tuned{rest}"), true),
            None => (value.clone(), false),
        };
        match how.split_once(':') {
            None if ["", "burn", "direct"].contains(&how.as_str()) => Ok(Self::Burn),
            None if how == "gemm" => Ok(Self::GEMM),
            None if how == "tuned" => Ok(Self::Tuned { column_mib: 96, tf32 }),
            None if how == "units" && !tf32 => Ok(Self::Units),
            Some((how @ ("gemm" | "tuned"), mib)) => match mib.trim().parse::<usize>() {
                Ok(column_mib) if column_mib > 0 && how == "gemm" => Ok(Self::Gemm { column_mib }),
                Ok(column_mib) if column_mib > 0 => Ok(Self::Tuned { column_mib, tf32 }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    /// From `LIGHTBOX_AI_CONV`; `None` when unset.
    pub fn from_env() -> Result<Option<Self>, AiError> {
        std::env::var("LIGHTBOX_AI_CONV").ok().map(|v| Self::parse(&v)).transpose()
    }

    /// What runs when `LIGHTBOX_AI_CONV` is unset: on a GPU card each layer's fastest way, timed
    /// there; burn's kernels elsewhere (see the module's documentation for why).
    pub fn default_for(card: bool) -> Self {
        if card { Self::TUNED } else { Self::Burn }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevicePreference {
    /// A GPU when there is one, else the CPU.
    Auto,
    Cpu,
    /// A GPU or an error.
    Gpu,
}

impl DevicePreference {
    pub fn parse(value: &str) -> Result<Self, AiError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            _ => Err(AiError::DevicePreference { value: value.to_owned() }),
        }
    }

    /// From `LIGHTBOX_AI_DEVICE`, `auto` when unset.
    pub fn from_env() -> Result<Self, AiError> {
        std::env::var("LIGHTBOX_AI_DEVICE").map_or(Ok(Self::Auto), |v| Self::parse(&v))
    }
}

/// The device chosen, and how to name it to the user.
#[derive(Clone, Debug)]
pub struct AiDevice {
    pub device: Device,
    pub gpu: bool,
    /// What nnU-Net networks compute in.
    pub precision: Precision,
    /// How nnU-Net networks convolve.
    pub convolution: Convolution,
    /// A GPU card (not the CPU, not a software rasteriser).
    pub card: bool,
    /// E.g. "CPU (burn flex, 2 threads)" or "GPU (burn wgpu: NVIDIA H100, f16)".
    pub description: String,
}

impl AiDevice {
    /// The device `preference` asks for, computing in f32 (see
    /// [`with_env_precision`](Self::with_env_precision) for nnU-Net inference).
    pub fn choose(preference: DevicePreference) -> Result<Self, AiError> {
        let chosen = match preference {
            DevicePreference::Cpu => Self::cpu(),
            DevicePreference::Gpu => gpu(true).map_err(AiError::NoGpu)?,
            DevicePreference::Auto => gpu(false).unwrap_or_else(|why| {
                tracing::info!("inference on the CPU: {why}");
                Self::cpu()
            }),
        };
        tracing::info!(device = %chosen.description, "inference device");
        Ok(chosen)
    }

    /// For nnU-Net inference: the precision `LIGHTBOX_AI_PRECISION` asks for and the
    /// convolution `LIGHTBOX_AI_CONV` asks for (an unknown value is an error; unset, tuned per
    /// layer on a GPU card and burn's kernels elsewhere). A device that
    /// cannot compute in f16 stays in f32, with a warning: a site's setting must not stop its
    /// pipelines. Brain extraction (deepbet) and training stay f32 and on burn's kernels.
    pub fn with_env_precision(self) -> Result<Self, AiError> {
        let convolution = Convolution::from_env()?.unwrap_or(Convolution::default_for(self.card));
        let wanted = Precision::from_env()?;
        let this = self.with_convolution(convolution);
        let fallback = this.clone();
        match this.with_precision(wanted) {
            Ok(device) => Ok(device),
            Err(why) => {
                tracing::warn!("{why}; nnU-Net runs in f32");
                Ok(fallback)
            }
        }
    }

    /// [`choose`](Self::choose) with the preference from `LIGHTBOX_AI_DEVICE`.
    pub fn from_env() -> Result<Self, AiError> {
        Self::choose(DevicePreference::from_env()?)
    }

    /// Whether Lightbox's tensor-core convolution (`kernels::mma`) runs on this device, why, and
    /// what matrix units its driver offers: for a GPU run's log.
    pub fn matrix_units(&self) -> String {
        #[cfg(feature = "gpu")]
        return crate::kernels::mma::matrix_units(&self.device);
        #[cfg(not(feature = "gpu"))]
        "not used: this build has no GPU backend".to_owned()
    }

    pub fn cpu() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            device: Device::flex(),
            gpu: false,
            precision: Precision::F32,
            convolution: Convolution::Burn,
            card: false,
            description: format!("CPU (burn flex, {threads} threads)"),
        }
    }

    /// The same device convolving nnU-Net networks as `convolution` says.
    pub fn with_convolution(mut self, convolution: Convolution) -> Self {
        self.convolution = convolution;
        self.relabel();
        self
    }

    /// The same device computing in `precision`; an error when it cannot (a GPU without
    /// half-precision shaders).
    pub fn with_precision(mut self, precision: Precision) -> Result<Self, AiError> {
        if precision == self.precision {
            return Ok(self);
        }
        if precision == Precision::F16 {
            half_precision_works(&self.device)
                .map_err(|why| AiError::NoHalfPrecision { device: self.description.clone(), why })?;
        }
        self.precision = precision;
        self.relabel();
        Ok(self)
    }

    /// The description with what differs from the defaults at its end: e.g. "GPU (burn wgpu:
    /// NVIDIA H100, f16, GEMM convolutions)".
    fn relabel(&mut self) {
        const MARKS: [&str; 6] = [
            ", f16",
            ", GEMM convolutions",
            ", convolutions tuned per layer",
            ", convolutions tuned per layer to TF32 accuracy",
            ", convolutions on matrix units where they fit",
            ", no matrix units here: burn's convolutions",
        ];
        let mut base = self.description.strip_suffix(')').unwrap_or(&self.description).to_owned();
        while let Some(mark) = MARKS.iter().find(|m| base.ends_with(*m)) {
            base.truncate(base.len() - mark.len());
        }
        let f16 = if self.precision == Precision::F16 { MARKS[0] } else { "" };
        let gemm = match self.convolution {
            Convolution::Burn => "",
            Convolution::Gemm { .. } => MARKS[1],
            Convolution::Tuned { tf32: false, .. } => MARKS[2],
            Convolution::Tuned { tf32: true, .. } => MARKS[3],
            Convolution::Units if matrix_units(&self.device) => MARKS[4],
            Convolution::Units => MARKS[5],
        };
        self.description = format!("{base}{f16}{gemm})");
    }
}

/// Whether Lightbox's convolution on matrix units runs on `device` ([`Convolution::Units`]).
fn matrix_units(device: &Device) -> bool {
    #[cfg(feature = "gpu")]
    return crate::kernels::mma::available(device);
    #[cfg(not(feature = "gpu"))]
    {
        let _ = device;
        false
    }
}

/// A half-precision convolution of small integers has an exact answer in f16 (this checks that
/// f16 works, not how it accumulates); a device without half-precision shaders panics inside
/// burn, kept here.
fn half_precision_works(device: &Device) -> Result<(), String> {
    use burn::prelude::Tensor;
    use burn::tensor::{FloatDType, module::conv3d, ops::ConvOptions};
    let device = device.clone();
    let probe = std::panic::catch_unwind(move || {
        let x = Tensor::<5>::ones([1, 2, 3, 3, 3], &device).cast(FloatDType::F16);
        let w = Tensor::<5>::ones([1, 2, 3, 3, 3], &device).cast(FloatDType::F16);
        let y = conv3d(x, w, None, ConvOptions::new([1; 3], [1; 3], [1; 3], 1));
        y.cast(FloatDType::F32).into_data().try_to_vec::<f32>().ok()
    });
    match probe {
        // The centre sees all 27 neighbours of both channels, a corner 8.
        Ok(Some(v)) if v.len() == 27 && v[13] == 54.0 && v[0] == 16.0 => Ok(()),
        Ok(_) => Err("the device computed a wrong result in half precision".to_owned()),
        Err(_) => Err("the device has no half-precision shaders".to_owned()),
    }
}

/// A GPU through burn's wgpu backend (kernels as WGSL; with `gpu-spirv`, as SPIR-V on Vulkan).
/// `software_too`: accept a software rasteriser (only when the user names the GPU).
#[cfg(feature = "gpu")]
fn gpu(software_too: bool) -> Result<AiDevice, String> {
    use burn::prelude::Tensor;
    // burn panics when no adapter opens; keep the panic here. Who the device is comes first, so
    // that a software rasteriser runs no kernel unless asked for.
    let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let opened = device.clone();
    let identity =
        std::panic::catch_unwind(move || opened.identity()).map_err(|_| "no GPU adapter could be opened".to_owned())?;
    let (name, fingerprint, card) =
        identity.map_or((String::new(), String::new(), true), |i| (i.name, i.fingerprint, i.physical.is_some()));
    if !card && !software_too {
        return Err(format!(
            "the only GPU is a software rasteriser ({name}), slower than the CPU backend; \
             LIGHTBOX_AI_DEVICE=gpu uses it anyway"
        ));
    }
    let probe = device.clone();
    let sum: f32 = std::panic::catch_unwind(move || Tensor::<1>::ones([4], &probe).sum().into_scalar())
        .map_err(|_| format!("the GPU ({name}) failed a first computation"))?;
    if (sum - 4.0).abs() > 1e-6 {
        return Err(format!("the GPU ({name}) computed a wrong result"));
    }
    // What this build compiles kernels to on Vulkan (the GPU's API on Linux).
    let compiler = if cfg!(feature = "gpu-spirv") { ", SPIR-V build" } else { "" };
    let description = if name.is_empty() {
        format!("GPU (burn wgpu{compiler})")
    } else {
        format!("GPU (burn wgpu{compiler}: {name})")
    };
    // The convolution tuner's choices from earlier runs on this GPU model and build.
    if let Some(dir) = crate::tuning::TuningStore::default_dir() {
        let kind = if cfg!(feature = "gpu-spirv") { "SPIR-V" } else { "WGSL" };
        let store = crate::tuning::TuningStore::new(&dir, &name, &format!("{fingerprint} ({kind})"));
        crate::ops::remember_tuning(&device, store);
    }
    Ok(AiDevice { device, gpu: true, precision: Precision::F32, convolution: Convolution::Burn, card, description })
}

#[cfg(not(feature = "gpu"))]
fn gpu(_software_too: bool) -> Result<AiDevice, String> {
    Err("this build has no GPU backend (build lightbox-ai with the `gpu` feature)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(DevicePreference::parse("GPU").ok(), Some(DevicePreference::Gpu));
        assert_eq!(DevicePreference::parse(" cpu ").ok(), Some(DevicePreference::Cpu));
        assert_eq!(DevicePreference::parse("").ok(), Some(DevicePreference::Auto));
        let err = DevicePreference::parse("tpu").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "LIGHTBOX_AI_DEVICE=tpu: expected auto, cpu or gpu");
    }

    #[test]
    fn precisions_parse_and_show_in_the_description() -> Result<(), AiError> {
        assert_eq!(Precision::parse(" FP16").ok(), Some(Precision::F16));
        assert_eq!(Precision::parse("").ok(), Some(Precision::F32));
        let err = Precision::parse("int8").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "LIGHTBOX_AI_PRECISION=int8: expected f32 or f16");
        // burn flex computes in f16 too: the probe passes and the description says so.
        let half = AiDevice::cpu().with_precision(Precision::F16)?;
        assert_eq!(half.precision, Precision::F16);
        assert!(
            half.description.starts_with("CPU (burn flex") && half.description.ends_with(", f16)"),
            "{}",
            half.description
        );
        let back = half.with_precision(Precision::F32)?;
        assert_eq!(back.description, AiDevice::cpu().description);
        Ok(())
    }

    #[test]
    fn convolutions_parse_and_show_in_the_description_beside_the_precision() -> Result<(), AiError> {
        assert_eq!(Convolution::parse(" GEMM").ok(), Some(Convolution::GEMM));
        assert_eq!(Convolution::parse("gemm:1024").ok(), Some(Convolution::Gemm { column_mib: 1024 }));
        assert_eq!(Convolution::parse("Tuned").ok(), Some(Convolution::TUNED));
        assert_eq!(Convolution::parse("tuned:1024").ok(), Some(Convolution::Tuned { column_mib: 1024, tf32: false }));
        assert_eq!(Convolution::parse("tuned-TF32").ok(), Some(Convolution::Tuned { column_mib: 96, tf32: true }));
        assert_eq!(Convolution::parse("tuned-tf32:64").ok(), Some(Convolution::Tuned { column_mib: 64, tf32: true }));
        assert_eq!(Convolution::parse(" Units").ok(), Some(Convolution::Units));
        assert!(Convolution::parse("units:64").is_err() && Convolution::parse("tuned-tf32-units").is_err());
        assert_eq!(Convolution::parse("").ok(), Some(Convolution::Burn));
        for bad in ["winograd", "gemm:0", "gemm:lots", "burn:5", "tuned:0", "tuned-tf32:0", "tuned-tf16"] {
            let err = Convolution::parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(
                err,
                format!(
                    "LIGHTBOX_AI_CONV={bad}: expected burn, gemm, gemm:MiB, tuned, tuned:MiB, tuned-tf32, tuned-tf32:MiB or units"
                )
            );
        }
        let tf32 = AiDevice::cpu().with_convolution(Convolution::parse("tuned-tf32")?);
        assert!(tf32.description.ends_with(", convolutions tuned per layer to TF32 accuracy)"), "{}", tf32.description);
        let back = tf32.with_convolution(Convolution::TUNED);
        let plain = back.description.ends_with(", convolutions tuned per layer)") && !back.description.contains("TF32");
        assert!(plain, "{}", back.description);
        let tuned = AiDevice::cpu().with_convolution(Convolution::TUNED).with_precision(Precision::F16)?;
        assert!(tuned.description.ends_with(", f16, convolutions tuned per layer)"), "{}", tuned.description);
        assert_eq!(tuned.with_convolution(Convolution::GEMM).with_precision(Precision::F32)?.description, {
            AiDevice::cpu().with_convolution(Convolution::GEMM).description
        });
        let both = AiDevice::cpu().with_convolution(Convolution::GEMM).with_precision(Precision::F16)?;
        assert!(both.description.ends_with(", f16, GEMM convolutions)"), "{}", both.description);
        // Either setting undone in any order leaves the other.
        let gemm = both.clone().with_precision(Precision::F32)?;
        assert!(gemm.description.ends_with(" threads, GEMM convolutions)"), "{}", gemm.description);
        let half = both.with_convolution(Convolution::Burn);
        assert!(half.description.ends_with(" threads, f16)"), "{}", half.description);
        assert_eq!(half.with_precision(Precision::F32)?.description, AiDevice::cpu().description);
        // Matrix units asked for where there are none: the label says what ran instead.
        let units = AiDevice::cpu().with_convolution(Convolution::Units).with_precision(Precision::F16)?;
        let says = units.description.ends_with(", f16, no matrix units here: burn's convolutions)");
        assert!(says, "{}", units.description);
        assert_eq!(units.with_convolution(Convolution::Burn).with_precision(Precision::F32)?.description, {
            AiDevice::cpu().description
        });
        Ok(())
    }

    #[test]
    fn unset_a_gpu_card_tunes_its_convolutions_and_the_cpu_takes_burns_kernels() -> Result<(), AiError> {
        assert_eq!(Convolution::default_for(true), Convolution::TUNED);
        assert_eq!(Convolution::default_for(false), Convolution::Burn);
        let cpu = AiDevice::cpu();
        assert!(!cpu.card);
        // What the CPU's nnU-Net runs, unless this process was told otherwise.
        if std::env::var_os("LIGHTBOX_AI_CONV").is_none() {
            assert_eq!(cpu.with_env_precision()?.convolution, Convolution::Burn);
        }
        Ok(())
    }

    #[test]
    fn the_cpu_is_always_there_and_says_so() -> Result<(), AiError> {
        let chosen = AiDevice::choose(DevicePreference::Cpu)?;
        assert!(!chosen.gpu && chosen.description.starts_with("CPU (burn flex"), "{}", chosen.description);
        #[cfg(not(feature = "gpu"))]
        {
            let auto = AiDevice::choose(DevicePreference::Auto)?;
            assert!(!auto.gpu);
            let err = AiDevice::choose(DevicePreference::Gpu).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no GPU backend"), "{err}");
        }
        Ok(())
    }
}
