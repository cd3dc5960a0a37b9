// The planes and the volume rendering as a compute pass, appended to mpr.wgsl by
// `shaders::planes_compute_for` and `volume_compute_for`: one invocation a pixel in 8 × 8 tiles,
// the same `pixel_colour` as the fragment stage, written straight into the target.
//
// Why a second launch: a data-centre GPU runs pixel shaders on a few of its multiprocessors only
// (NVIDIA's H100 and H200 have graphics units in two of their 66 texture-processing clusters),
// while compute runs on all of them. An H200 took about 100 ms for a volume rendering by the
// fragment stage whatever the work per ray. Desktop GPUs run both alike; the renderer launches
// by compute on every hardware GPU (`lightbox_render::Launch`) and by the fragment stage on
// software rasterisers, where that is faster.

@group(1) @binding(0) var target_image: texture_storage_2d<rgba8unorm, write>;

@compute @workgroup_size(8, 8)
fn cs_main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= u.slab.z || id.y >= u.slab.w) {
        return;
    }
    // The fragment stage's position: the pixel's centre.
    textureStore(target_image, vec2<i32>(id.xy), pixel_colour(vec2<f32>(id.xy) + vec2<f32>(0.5)));
}
