//! CPU reference implementations of what the shaders compute, for golden tests.

use lightbox_core::Volume;

use crate::{RenderError, SliceParams};

/// RGBA8 pixels of one slice, row-major, exactly as `slice.wgsl` draws them.
pub fn slice_rgba(volume: &Volume<f32>, params: SliceParams) -> Result<Vec<u8>, RenderError> {
    let depth = u32::try_from(volume.dims()[2]).unwrap_or(u32::MAX);
    let values =
        volume.slice(params.slice as usize).ok_or(RenderError::SliceOutOfRange { slice: params.slice, depth })?;
    let mut out = Vec::with_capacity(values.len() * 4);
    for &v in values {
        let grey = to_unorm8(params.window.apply(v));
        out.extend_from_slice(&[grey, grey, grey, 255]);
    }
    Ok(out)
}

/// Float to 8-bit unorm as GPUs store it: round to nearest.
pub fn to_unorm8(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

#[cfg(test)]
mod tests {
    use lightbox_core::{Affine3, WindowLevel};

    use super::*;

    #[test]
    fn window_maps_to_grey_levels() -> anyhow::Result<()> {
        let v = Volume::new([3, 1, 2], vec![0.0, 50.0, 100.0, 0.0, 0.0, 0.0], Affine3::IDENTITY)?;
        let params = SliceParams { slice: 0, window: WindowLevel { center: 50.0, width: 100.0 } };
        assert_eq!(slice_rgba(&v, params)?, [0, 0, 0, 255, 128, 128, 128, 255, 255, 255, 255, 255]);
        let err = slice_rgba(&v, SliceParams { slice: 2, ..params }).expect_err("must fail");
        assert_eq!(err.to_string(), "slice 2 is outside the volume's 2 slices");
        Ok(())
    }
}
