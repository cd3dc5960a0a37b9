// One axial slice of a volume, window/levelled to grey.
//
// The volume is a 3-D texture in its stored type (the renderer swaps in `<u32>` or `<i32>` for
// 8/16-bit volumes; `<f32>` holds rescaled values) and the shader applies the rescale; each
// output pixel reads the voxel under it (nearest neighbour, no resampling). The window formula is the one
// in `lightbox_core::WindowLevel::apply`; the CPU reference in `lightbox-render` must agree.

struct SliceUniforms {
    slice: u32,
    window_center: f32,
    window_width: f32,
    // stored value -> real value
    slope: f32,
    intercept: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var volume: texture_3d<f32>;
@group(0) @binding(1) var<uniform> params: SliceUniforms;

// The vertex stage (`vs_main`, `VertexOutput`) comes from fullscreen.wgsl.

@fragment
fn fs_main(in: VertexOutput) -> @location(0) vec4<f32> {
    let voxel = vec3<i32>(i32(in.position.x), i32(in.position.y), i32(params.slice));
    let value = f32(textureLoad(volume, voxel, 0).r) * params.slope + params.intercept;
    let width = max(params.window_width, 1e-3);
    let grey = clamp((value - (params.window_center - 0.5 * width)) / width, 0.0, 1.0);
    return vec4<f32>(grey, grey, grey, 1.0);
}
