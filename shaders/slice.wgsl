// One axial slice of a volume, window/levelled to grey.
//
// The volume is a 3-D texture of rescaled values (r32float, not filterable); each output pixel
// reads the voxel under it (nearest neighbour, no resampling yet). The window formula is the one
// in `lightbox_core::WindowLevel::apply`; the CPU reference in `lightbox-render` must agree.

struct SliceUniforms {
    slice: u32,
    window_center: f32,
    window_width: f32,
    _pad: f32,
}

@group(0) @binding(0) var volume: texture_3d<f32>;
@group(0) @binding(1) var<uniform> params: SliceUniforms;

struct VertexOutput {
    @builtin(position) position: vec4<f32>,
}

// A triangle that covers the whole target: no vertex buffer needed.
@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOutput {
    let x = f32((index << 1u) & 2u) * 2.0 - 1.0;
    let y = f32(index & 2u) * 2.0 - 1.0;
    var out: VertexOutput;
    out.position = vec4<f32>(x, y, 0.0, 1.0);
    return out;
}

@fragment
fn fs_main(in: VertexOutput) -> @location(0) vec4<f32> {
    let voxel = vec3<i32>(i32(in.position.x), i32(in.position.y), i32(params.slice));
    let value = textureLoad(volume, voxel, 0).r;
    let width = max(params.window_width, 1e-3);
    let grey = clamp((value - (params.window_center - 0.5 * width)) / width, 0.0, 1.0);
    return vec4<f32>(grey, grey, grey, 1.0);
}
