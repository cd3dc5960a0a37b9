//! Which device runs inference: a real GPU through burn's wgpu backend when this build has it
//! (feature `gpu`) and one is present, otherwise burn's `flex` backend on every CPU core.
//! `LIGHTBOX_AI_DEVICE` (auto, cpu, gpu) or the caller overrides; the choice is logged and
//! described for the user beside each result.

use burn::prelude::Device;

use crate::AiError;

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
    /// E.g. "CPU (burn flex, 2 threads)" or "GPU (burn wgpu: NVIDIA H100)".
    pub description: String,
}

impl AiDevice {
    pub fn choose(preference: DevicePreference) -> Result<Self, AiError> {
        let chosen = match preference {
            DevicePreference::Cpu => Self::cpu(),
            DevicePreference::Gpu => gpu().map_err(AiError::NoGpu)?,
            DevicePreference::Auto => gpu().unwrap_or_else(|why| {
                tracing::info!("inference on the CPU: {why}");
                Self::cpu()
            }),
        };
        tracing::info!(device = %chosen.description, "inference device");
        Ok(chosen)
    }

    pub fn cpu() -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { device: Device::flex(), gpu: false, description: format!("CPU (burn flex, {threads} threads)") }
    }
}

#[cfg(feature = "gpu")]
fn gpu() -> Result<AiDevice, String> {
    use burn::prelude::Tensor;
    // burn panics when no adapter opens; probe with a tiny computation and keep the panic here.
    let probe = std::panic::catch_unwind(|| {
        let device = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let sum: f32 = Tensor::<1>::ones([4], &device).sum().into_scalar();
        (device, sum)
    });
    match probe {
        Ok((device, sum)) if (sum - 4.0).abs() < 1e-6 => {
            Ok(AiDevice { device, gpu: true, description: "GPU (burn wgpu)".to_owned() })
        }
        Ok(_) => Err("the GPU computed a wrong result".to_owned()),
        Err(_) => Err("no GPU adapter could be opened".to_owned()),
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Result<AiDevice, String> {
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
