// The volume rendering's quick look at a sample through the texture unit's own trilinear filter:
// one fetch instead of eight. `shaders::volume_for` and `volume_compute_for` append this to
// mpr.wgsl (renaming its exact `quick_sample` and turning QUICK_LOOK on) for a volume whose
// texture the GPU can filter (normalised 8/16-bit, or float where the GPU filters r32float) and
// that is not folded. The filter's weights may be coarser than f32 (8 bits on NVIDIA); that only
// decides which samples near the transfer function's lower edge are then sampled exactly.

@group(0) @binding(6) var trilinear: sampler;

fn quick_sample(p: vec3<f32>, inside: ptr<function, bool>) -> f32 {
    let hi = vec3<f32>(u.dims.xyz) - vec3<f32>(1.0);
    if (any(p < vec3<f32>(-EDGE)) || any(p > hi + vec3<f32>(EDGE))) {
        *inside = false;
        return 0.0;
    }
    *inside = true;
    // Voxel centres lie at integer positions, texel centres at (i + 0.5) / size.
    let t = (clamp(p, vec3<f32>(0.0), hi) + vec3<f32>(0.5)) / vec3<f32>(u.dims.xyz);
    let stored = textureSampleLevel(volume, trilinear, t, 0.0).r * u.rescale.z;
    return stored * u.rescale.x + u.rescale.y;
}
