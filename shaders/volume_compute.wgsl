// Volume rendering as a compute pass, appended to mpr.wgsl by `shaders::volume_compute_for`: one
// invocation a pixel in 8 × 8 tiles, the same `volume_colour` as the fragment stage, written
// straight into the target. The fragment path's figure on an NVIDIA H200 (about 100 ms a frame
// whatever the work per ray) is unexplained; this is the other way to launch the same rays.

@group(1) @binding(0) var target_image: texture_storage_2d<rgba8unorm, write>;

@compute @workgroup_size(8, 8)
fn cs_main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= u.slab.z || id.y >= u.slab.w) {
        return;
    }
    let colour = volume_colour(vec2<f32>(id.xy) + vec2<f32>(0.5));
    textureStore(target_image, vec2<i32>(id.xy), vec4<f32>(colour, 1.0));
}
