// Multiplanar reformation: a plane of any orientation through the volume, trilinear sampling in
// voxel space, optionally a thick slab (maximum, minimum or mean intensity projection along the
// plane's normal), window/level to grey.
//
// The plane arrives already mapped to voxel space (by `lightbox_render::mpr`): the voxel position
// of output pixel (i, j) at slab step k is origin + i * step_x + j * step_y + k * step_z, voxel
// centres at integer coordinates. The eight neighbours are read with textureLoad and blended
// here in f32, whatever the texture (integer textures cannot be filtered, and a texture unit's
// filter weights are coarser than f32), so that `cpu::mpr_rgba` computes exactly the same; only
// the volume rendering's quick look goes through the filter (trilinear.wgsl).
//
// A label map (segment numbers, r8uint) can be drawn over the image: each label its own colour
// (golden-angle hues), filled with some opacity or as outlines; labels are read at the nearest
// voxel of the plane itself (the middle of a slab).

struct MprUniforms {
    origin: vec4<f32>,
    step_x: vec4<f32>,
    step_y: vec4<f32>,
    step_z: vec4<f32>,
    dims: vec4<u32>,
    // samples along the normal, mode (0 single, 1 max, 2 min, 3 mean, 4 volume rendering),
    // output width, height
    slab: vec4<u32>,
    window: vec4<f32>,
    // opacity, outline (1) or fill (0), labels present (1), _
    overlay: vec4<f32>,
    // stored value -> real value: slope, intercept (the volume is kept in its stored type); the
    // stored value of a normalised texel at 1; the volume rendering's step, mm
    rescale: vec4<f32>,
    // scalar overlay (e.g. a probability map): lower and upper end of the colour map, opacity,
    // present (1)
    scalar: vec4<f32>,
    // a volume longer than the texture limit along one axis is folded (`lightbox_render::packing`):
    // axis cut, axis along, voxels per piece, shift per piece
    packing: vec4<u32>,
}

// `texture_3d<f32>` here; the renderer swaps in `<u32>` or `<i32>` for 8/16-bit integer textures.
// 8/16-bit volumes may also lie in normalised textures (r8unorm, r16unorm, r16snorm), which the
// texture unit can filter: they read as stored / u.rescale.z, and the renderer swaps in
// `round(textureLoad(..).r * u.rescale.z)` for the `f32(..)` below, which gives the stored value
// back exactly (`shaders::Texels`).
@group(0) @binding(0) var volume: texture_3d<f32>;

fn voxel(c: vec3<i32>) -> f32 {
    return f32(textureLoad(volume, packed(c), 0).r) * u.rescale.x + u.rescale.y;
}

// Whether the volume rendering looks at a sample through the texture unit's own filter first
// (`quick_sample`): the renderer swaps in `true` where it can filter the volume's texture.
const QUICK_LOOK: bool = false;

// Where voxel c lies in the textures. The renderer swaps in `return c;` here for volumes that
// are not folded: even a branch not taken costs software rasterisers dearly on every fetch.
fn packed(c: vec3<i32>) -> vec3<i32> {
    return packed_folded(c);
}

// A folded volume (`lightbox_render::packing`): piece k of the cut axis lies k × shift voxels
// along the other axis.
fn packed_folded(c: vec3<i32>) -> vec3<i32> {
    let axes = vec3<u32>(0u, 1u, 2u);
    let cut = vec3<i32>(axes == vec3<u32>(u.packing.x));
    let along = vec3<i32>(axes == vec3<u32>(u.packing.y));
    let piece = i32(u.packing.z);
    let k = dot(c, cut) / piece;
    return c - cut * (k * piece) + along * (k * i32(u.packing.w));
}
@group(0) @binding(1) var<uniform> u: MprUniforms;
@group(0) @binding(2) var labels: texture_3d<u32>;
@group(0) @binding(3) var scalars: texture_3d<f32>;
// A colour table over the window (`lightbox_render::Lut`), used when u.window.z is 1: the planes'
// colours instead of grey, and the volume rendering's colour and opacity.
@group(0) @binding(4) var<uniform> lut: array<vec4<f32>, 256>;
// The largest value in each brick of BRICK³ voxels (`lightbox_render::occupancy`), for empty-space
// skipping in the volume rendering when u.window.w is 1.
@group(0) @binding(5) var occupancy: texture_3d<f32>;

// Voxels along a brick's side (`lightbox_render::occupancy::BRICK`).
const BRICK: f32 = 16.0;

// The brick of BRICK³ voxels holding p (`bricks`: how many there are along each axis), or
// (-1, -1, -1) when empty-space skipping is off or p is outside the bricks.
fn brick_of(p: vec3<f32>, bricks: vec3<i32>) -> vec3<i32> {
    let b = vec3<i32>(floor(p / BRICK));
    if (u.window.w < 0.5 || any(p < vec3<f32>(0.0)) || any(b >= bricks)) {
        return vec3<i32>(-1);
    }
    return b;
}

// Steps along the ray (step_z per step) from p to where it leaves brick b, which holds nothing
// above the transfer function's lower edge. Per axis at once (no indexing of vectors by a
// variable, which GPUs may do through memory).
fn steps_out_of(p: vec3<f32>, b: vec3<i32>) -> f32 {
    let d = u.step_z.xyz;
    let near = vec3<f32>(b) * BRICK;
    let far = near + vec3<f32>(BRICK);
    let ahead = d > vec3<f32>(1e-9);
    let behind = d < vec3<f32>(-1e-9);
    let safe = select(vec3<f32>(1.0), d, ahead | behind);
    let t = select(vec3<f32>(1e30), (select(near, far, ahead) - p) / safe, ahead | behind);
    return min(min(t.x, t.y), t.z);
}

// The table at t (0..1 over the window), linear between its entries.
fn lut_at(t: f32) -> vec4<f32> {
    let x = clamp(t, 0.0, 1.0) * 255.0;
    let i = min(u32(floor(x)), 254u);
    let f = x - f32(i);
    return mix(lut[i], lut[i + 1u], f);
}

// The scalar at the voxel nearest to p (-1 outside the volume).
fn scalar_at(p: vec3<f32>) -> f32 {
    let hi = vec3<f32>(u.dims.xyz) - vec3<f32>(1.0);
    let r = floor(p + vec3<f32>(0.5));
    if (any(r < vec3<f32>(0.0)) || any(r > hi)) {
        return -1.0;
    }
    return textureLoad(scalars, packed(vec3<i32>(r)), 0).r;
}

// "Hot": black-red-yellow-white over 0..1.
fn hot(t: f32) -> vec3<f32> {
    return clamp(vec3<f32>(3.0 * t, 3.0 * t - 1.0, 3.0 * t - 2.0), vec3<f32>(0.0), vec3<f32>(1.0));
}

// The vertex stage (`vs_main`, `VertexOutput`) comes from fullscreen.wgsl.

const EDGE: f32 = 0.001;

// Trilinear value at voxel position p; `inside` is false outside the volume's voxel centres.
// (The gradient `sample_graded` also gives is dropped, and compiled away.)
fn sample(p: vec3<f32>, inside: ptr<function, bool>) -> f32 {
    var unused = vec3<f32>(0.0);
    return sample_graded(p, inside, &unused);
}

// Trilinear value at p with the gradient of the same trilinear cell (the interpolant's
// derivative, from the eight voxels the value reads: no further fetches), for the volume
// rendering's shading; `inside` is false outside the volume's voxel centres.
fn sample_graded(p: vec3<f32>, inside: ptr<function, bool>, gradient: ptr<function, vec3<f32>>) -> f32 {
    let hi = vec3<f32>(u.dims.xyz) - vec3<f32>(1.0);
    if (any(p < vec3<f32>(-EDGE)) || any(p > hi + vec3<f32>(EDGE))) {
        *inside = false;
        return 0.0;
    }
    *inside = true;
    let q = clamp(p, vec3<f32>(0.0), hi);
    let base = min(floor(q), max(hi - vec3<f32>(1.0), vec3<f32>(0.0)));
    let f = q - base;
    let b = vec3<i32>(base);
    let n = vec3<i32>(u.dims.xyz) - vec3<i32>(1);
    let b1 = min(b + vec3<i32>(1), n);
    let c000 = voxel(vec3<i32>(b.x, b.y, b.z));
    let c100 = voxel(vec3<i32>(b1.x, b.y, b.z));
    let c010 = voxel(vec3<i32>(b.x, b1.y, b.z));
    let c110 = voxel(vec3<i32>(b1.x, b1.y, b.z));
    let c001 = voxel(vec3<i32>(b.x, b.y, b1.z));
    let c101 = voxel(vec3<i32>(b1.x, b.y, b1.z));
    let c011 = voxel(vec3<i32>(b.x, b1.y, b1.z));
    let c111 = voxel(vec3<i32>(b1.x, b1.y, b1.z));
    let c00 = c000 + (c100 - c000) * f.x;
    let c10 = c010 + (c110 - c010) * f.x;
    let c01 = c001 + (c101 - c001) * f.x;
    let c11 = c011 + (c111 - c011) * f.x;
    let c0 = c00 + (c10 - c00) * f.y;
    let c1 = c01 + (c11 - c01) * f.y;
    let dx0 = (c100 - c000) + ((c110 - c010) - (c100 - c000)) * f.y;
    let dx1 = (c101 - c001) + ((c111 - c011) - (c101 - c001)) * f.y;
    let dy0 = (c010 - c000) + ((c110 - c100) - (c010 - c000)) * f.x;
    let dy1 = (c011 - c001) + ((c111 - c101) - (c011 - c001)) * f.x;
    *gradient = vec3<f32>(dx0 + (dx1 - dx0) * f.z, dy0 + (dy1 - dy0) * f.z, c1 - c0);
    return c0 + (c1 - c0) * f.z;
}

// The value at p for the volume rendering's quick look (when QUICK_LOOK): here the exact one;
// trilinear.wgsl replaces it by one filtered fetch where the texture unit can filter the volume.
fn quick_sample(p: vec3<f32>, inside: ptr<function, bool>) -> f32 {
    return sample(p, inside);
}

// The label at the voxel nearest to p (0 outside the volume).
fn label_at(p: vec3<f32>) -> u32 {
    let hi = vec3<f32>(u.dims.xyz) - vec3<f32>(1.0);
    let r = floor(p + vec3<f32>(0.5));
    if (any(r < vec3<f32>(0.0)) || any(r > hi)) {
        return 0u;
    }
    return textureLoad(labels, packed(vec3<i32>(r)), 0).r;
}

// Each label's colour: hue from the golden angle, saturation 0.85, value 1.
fn label_colour(label: u32) -> vec3<f32> {
    let h = fract(f32(label) * 0.618034) * 6.0;
    let c = 0.85;
    let x = c * (1.0 - abs(h % 2.0 - 1.0));
    var rgb = vec3<f32>(0.0);
    if (h < 1.0) { rgb = vec3<f32>(c, x, 0.0); }
    else if (h < 2.0) { rgb = vec3<f32>(x, c, 0.0); }
    else if (h < 3.0) { rgb = vec3<f32>(0.0, c, x); }
    else if (h < 4.0) { rgb = vec3<f32>(0.0, x, c); }
    else if (h < 5.0) { rgb = vec3<f32>(x, 0.0, c); }
    else { rgb = vec3<f32>(c, 0.0, x); }
    return rgb + vec3<f32>(1.0 - c);
}

// The steps k (first, past-last) of the ray start + k * step, k < samples, whose samples can lie
// inside the volume's voxel centres; generous by a hundredth of a voxel and a step at each end
// so that rounding never drops one inside (`cpu::ray_span` is the same).
fn ray_span(start: vec3<f32>, step: vec3<f32>, samples: u32) -> vec2<u32> {
    let margin = 0.011;
    let lo = vec3<f32>(-margin);
    let up = vec3<f32>(u.dims.xyz) - vec3<f32>(1.0) + vec3<f32>(margin);
    let parallel = abs(step) < vec3<f32>(1e-6);
    if (any(parallel & ((start < lo) | (start > up)))) {
        return vec2<u32>(0u);
    }
    let safe = select(step, vec3<f32>(1.0), parallel);
    let ta = (lo - start) / safe;
    let tb = (up - start) / safe;
    let t_in = select(min(ta, tb), vec3<f32>(-1e30), parallel);
    let t_out = select(max(ta, tb), vec3<f32>(1e30), parallel);
    let enter = max(max(max(t_in.x, t_in.y), t_in.z), 0.0);
    let leave = min(min(min(t_out.x, t_out.y), t_out.z), f32(samples));
    if (leave < enter) {
        return vec2<u32>(0u);
    }
    let first = u32(clamp(floor(enter) - 1.0, 0.0, f32(samples)));
    let last = u32(clamp(ceil(leave) + 2.0, 0.0, f32(samples)));
    return vec2<u32>(first, last);
}

// Direct volume rendering along the slab, front (k = 0) to back: the window is the transfer
// function's ramp (opacity and colour rise from its lower to its upper edge), each sample is
// shaded by its gradient against a headlight, and the ray stops once nearly opaque. Samples
// below the ramp are empty space: no compositing, no gradient.
fn volume_colour(position: vec2<f32>) -> vec3<f32> {
    let i = floor(position.x);
    let j = floor(position.y);
    let width = max(u.window.y, 1e-3);
    let lo = u.window.x - 0.5 * width;
    let dir = normalize(u.step_z.xyz);
    var colour = vec3<f32>(0.0);
    var alpha = 0.0;
    // Only the steps that can be inside the volume: no stepping through the space around it.
    let span = ray_span(u.origin.xyz + i * u.step_x.xyz + j * u.step_y.xyz, u.step_z.xyz, max(u.slab.x, 1u));
    var k = span.x;
    var next = span.x;
    // The last brick found to hold something: its steps need no look-up.
    var full = vec3<i32>(-1);
    let bricks = vec3<i32>(textureDimensions(occupancy));
    loop {
        k = next;
        if (k >= span.y) {
            break;
        }
        next = k + 1u;
        let p = u.origin.xyz + i * u.step_x.xyz + j * u.step_y.xyz + f32(k) * u.step_z.xyz;
        // Samples strictly inside an empty brick add nothing: jump past them.
        let b = brick_of(p, bricks);
        if (b.x >= 0 && any(b != full)) {
            if (textureLoad(occupancy, b, 0).r > lo) {
                full = b;
            } else {
                let skip = steps_out_of(p, b);
                if (skip >= 2.0) {
                    next = k + u32(floor(skip));
                    continue;
                }
            }
        }
        var inside = false;
        // Where the texture unit filters the volume, one fetch tells the samples clearly below
        // the ramp (by a hundredth of its width, more than the filter's rounding), which add
        // nothing; the others are sampled exactly, with their gradient.
        if (QUICK_LOOK) {
            let quick = quick_sample(p, &inside);
            if (!inside || quick < lo - 0.01 * width) {
                continue;
            }
        }
        var g = vec3<f32>(0.0);
        let v = sample_graded(p, &inside, &g);
        if (!inside) {
            continue;
        }
        let ramp = clamp((v - lo) / width, 0.0, 1.0);
        if (ramp <= 0.0) {
            continue;
        }
        var shade = 1.0;
        if (length(g) > 1e-6) {
            shade = 0.35 + 0.65 * abs(dot(normalize(g), dir));
        }
        var base = mix(vec3<f32>(0.75, 0.3, 0.2), vec3<f32>(1.0, 0.95, 0.85), ramp);
        var a = ramp * 0.12;
        if (u.window.z > 0.5) {
            let c = lut_at(ramp);
            base = c.rgb;
            a = c.a * 0.12;
        }
        // Opacity per mm of ray: one step of u.rescale.w mm lets through (1 - a) to that power.
        a = 1.0 - pow(1.0 - a, u.rescale.w);
        colour = colour + (1.0 - alpha) * a * base * shade;
        alpha = alpha + (1.0 - alpha) * a;
        if (alpha > 0.98) {
            break;
        }
    }
    return colour;
}

@fragment
fn fs_main(in: VertexOutput) -> @location(0) vec4<f32> {
    return pixel_colour(in.position.xy);
}

// The colour of the pixel centred at `position` (in pixels from the target's top left corner):
// what the fragment stage draws, and the compute pass too (compute.wgsl).
fn pixel_colour(position: vec2<f32>) -> vec4<f32> {
    if (u.slab.y == 4u) {
        return vec4<f32>(volume_colour(position), 1.0);
    }
    let grey = grey_at(position);
    let i = floor(position.x);
    let j = floor(position.y);
    let mid = f32(max(u.slab.x, 1u) / 2u);
    let p = u.origin.xyz + i * u.step_x.xyz + j * u.step_y.xyz + mid * u.step_z.xyz;
    var base = vec3<f32>(grey);
    if (u.window.z > 0.5) {
        base = lut_at(grey).rgb;
    }
    if (u.scalar.w > 0.5) {
        let s = scalar_at(p);
        if (s >= u.scalar.x) {
            let t = clamp((s - u.scalar.x) / max(u.scalar.y - u.scalar.x, 1e-6), 0.0, 1.0);
            base = base * (1.0 - u.scalar.z) + hot(t) * u.scalar.z;
        }
    }
    if (u.overlay.z < 0.5) {
        return vec4<f32>(base, 1.0);
    }
    let label = label_at(p);
    var show = label != 0u;
    if (show && u.overlay.y > 0.5) {
        // Outline: only where a neighbouring pixel has another label.
        let edge = label_at(p + u.step_x.xyz) != label || label_at(p - u.step_x.xyz) != label
            || label_at(p + u.step_y.xyz) != label || label_at(p - u.step_y.xyz) != label;
        show = edge;
    }
    if (!show) {
        return vec4<f32>(base, 1.0);
    }
    let a = select(u.overlay.x, 1.0, u.overlay.y > 0.5);
    let rgb = base * (1.0 - a) + label_colour(label) * a;
    return vec4<f32>(rgb, 1.0);
}

fn grey_at(position: vec2<f32>) -> f32 {
    let i = floor(position.x);
    let j = floor(position.y);
    let samples = max(u.slab.x, 1u);
    let mode = u.slab.y;
    var found = false;
    var acc = 0.0;
    var count = 0.0;
    for (var k = 0u; k < samples; k = k + 1u) {
        let p = u.origin.xyz + i * u.step_x.xyz + j * u.step_y.xyz + f32(k) * u.step_z.xyz;
        var inside = false;
        let v = sample(p, &inside);
        if (!inside) {
            continue;
        }
        if (!found) {
            acc = v;
        } else if (mode == 1u) {
            acc = max(acc, v);
        } else if (mode == 2u) {
            acc = min(acc, v);
        } else {
            acc = acc + v;
        }
        found = true;
        count = count + 1.0;
    }
    if (!found) {
        return 0.0;
    }
    if (mode == 3u || mode == 0u) {
        acc = acc / count;
    }
    let width = max(u.window.y, 1e-3);
    return clamp((acc - (u.window.x - 0.5 * width)) / width, 0.0, 1.0);
}
