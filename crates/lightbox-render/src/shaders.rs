//! WGSL sources from the top-level `shaders/` folder, embedded at build time.

/// The full-target triangle: the vertex stage both passes share.
pub const FULLSCREEN: &str = include_str!("../../../shaders/fullscreen.wgsl");

/// One axial slice with window/level (after the shared vertex stage).
pub const SLICE: &str =
    concat!(include_str!("../../../shaders/fullscreen.wgsl"), include_str!("../../../shaders/slice.wgsl"));

/// Multiplanar reformation at any orientation, with thick-slab projections (after the shared
/// vertex stage).
pub const MPR: &str =
    concat!(include_str!("../../../shaders/fullscreen.wgsl"), include_str!("../../../shaders/mpr.wgsl"));

/// The volume rendering's quick look through the texture unit's filter, appended to `mpr.wgsl`
/// where the volume's texture can be filtered (see [`Texels::filterable`]).
pub const TRILINEAR: &str = include_str!("../../../shaders/trilinear.wgsl");

/// How a volume lies in its texture, which decides how the shaders read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Texels {
    /// The WGSL texel type: `"u32"` (8/16-bit unsigned integers), `"i32"` (16-bit signed) or
    /// `"f32"` (float, and normalised textures).
    pub wgsl: &'static str,
    /// A normalised texture (r8unorm, r16unorm, r16snorm): a texel reads as stored / scale (the
    /// uniform's `rescale.z`), which the shader multiplies back and rounds to the stored value.
    pub normalised: bool,
    /// The texture unit can filter it and the volume is not folded: the volume rendering takes
    /// a quick look at each sample with one filtered fetch (`trilinear.wgsl`).
    pub filterable: bool,
}

impl Texels {
    /// 8- and 16-bit unsigned integers (r8uint, r16uint).
    pub const UINT: Self = Self { wgsl: "u32", normalised: false, filterable: false };
    /// 16-bit signed integers (r16sint).
    pub const SINT: Self = Self { wgsl: "i32", normalised: false, filterable: false };
    /// Float (r32float) that the GPU does not filter.
    pub const FLOAT: Self = Self { wgsl: "f32", normalised: false, filterable: false };
    /// Float that the GPU filters (r32float with `FLOAT32_FILTERABLE`).
    pub const FLOAT_FILTERED: Self = Self { wgsl: "f32", normalised: false, filterable: true };
    /// Normalised 8/16-bit (r8unorm, r16unorm, r16snorm), filtered.
    pub const NORMALISED: Self = Self { wgsl: "f32", normalised: true, filterable: true };
}

/// `mpr.wgsl` for a volume kept in its stored type as `texels` say; `folded` when it lies folded
/// in its texture (see `packing`).
pub fn mpr_for(texels: Texels, folded: bool) -> String {
    let texel = texels.wgsl;
    let mut source = MPR.replacen("var volume: texture_3d<f32>;", &format!("var volume: texture_3d<{texel}>;"), 1);
    if texels.normalised {
        source = source.replacen(
            "f32(textureLoad(volume, packed(c), 0).r)",
            "round(textureLoad(volume, packed(c), 0).r * u.rescale.z)",
            1,
        );
    }
    if folded { source } else { source.replacen("    return packed_folded(c);", "    return c;", 1) }
}

/// [`mpr_for`] for the planes and slabs alone: the fragment stage never takes the
/// volume-rendering branch (volume renderings have [`volume_for`]), so the GPU's compiler drops
/// the ray caster's code and the registers it would hold for every plane.
pub fn planes_for(texels: Texels, folded: bool) -> String {
    mpr_for(texels, folded).replacen("    if (u.slab.y == 4u) {", "    if (false) {", 1)
}

/// [`mpr_for`] for volume rendering alone: the fragment stage takes the volume-rendering branch
/// unconditionally, so the GPU's compiler drops the planes' code (and its registers). Where the
/// texture can be filtered and is not folded, each sample gets a quick look through the filter
/// first (`trilinear.wgsl`).
pub fn volume_for(texels: Texels, folded: bool) -> String {
    quick_look(mpr_for(texels, folded).replacen("    if (u.slab.y == 4u) {", "    if (true) {", 1), texels, folded)
}

/// `source` with the volume rendering's quick look through the texture unit's filter, where
/// `texels` can be filtered and the volume is not folded.
fn quick_look(source: String, texels: Texels, folded: bool) -> String {
    if !texels.filterable || folded {
        return source;
    }
    source.replacen("const QUICK_LOOK: bool = false;", "const QUICK_LOOK: bool = true;", 1).replacen(
        "fn quick_sample(",
        "fn quick_sample_exact(",
        1,
    ) + TRILINEAR
}

/// The compute pass's entry point (`cs_main`), appended to a variant of `mpr.wgsl`.
pub const COMPUTE: &str = include_str!("../../../shaders/compute.wgsl");

/// Planes, slabs and volume rendering as a compute pass: `mpr.wgsl` with `compute.wgsl`'s entry
/// point.
pub const MPR_COMPUTE: &str = concat!(
    include_str!("../../../shaders/fullscreen.wgsl"),
    include_str!("../../../shaders/mpr.wgsl"),
    include_str!("../../../shaders/compute.wgsl")
);

/// [`planes_for`] as a compute pass.
pub fn planes_compute_for(texels: Texels, folded: bool) -> String {
    planes_for(texels, folded) + COMPUTE
}

/// [`volume_for`] as a compute pass.
pub fn volume_compute_for(texels: Texels, folded: bool) -> String {
    volume_for(texels, folded) + COMPUTE
}

/// `slice.wgsl` for a volume kept in its stored type (see [`mpr_for`]).
pub fn slice_for(texel: &str) -> String {
    SLICE.replacen("var volume: texture_3d<f32>;", &format!("var volume: texture_3d<{texel}>;"), 1)
}

/// Every shader, by file name, for validation.
pub const ALL: &[(&str, &str)] = &[
    ("fullscreen.wgsl", FULLSCREEN),
    ("slice.wgsl", SLICE),
    ("mpr.wgsl", MPR),
    ("compute.wgsl", MPR_COMPUTE),
    // A fragment of the volume rendering's variants, validated within them.
    ("trilinear.wgsl", TRILINEAR),
];

#[cfg(test)]
mod tests {
    /// Every embedded shader parses and validates with naga, and every `.wgsl` file in
    /// `shaders/` is embedded (a new shader cannot be forgotten here).
    #[test]
    fn all_shaders_validate_with_naga() -> anyhow::Result<()> {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shaders");
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".wgsl"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::ALL.iter().map(|(name, _)| (*name).to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded, "shaders/ and shaders::ALL disagree");

        use super::Texels;
        let kinds = [Texels::UINT, Texels::SINT, Texels::FLOAT, Texels::FLOAT_FILTERED, Texels::NORMALISED];
        let variants: Vec<(String, String)> = kinds
            .iter()
            .flat_map(|&t| {
                [false, true].into_iter().flat_map(move |folded| {
                    [
                        (format!("mpr.wgsl<{t:?}, folded {folded}>"), super::mpr_for(t, folded)),
                        (format!("mpr.wgsl volume<{t:?}, folded {folded}>"), super::volume_for(t, folded)),
                        (format!("mpr.wgsl planes<{t:?}, folded {folded}>"), super::planes_for(t, folded)),
                        (format!("compute.wgsl planes<{t:?}, folded {folded}>"), super::planes_compute_for(t, folded)),
                        (format!("compute.wgsl volume<{t:?}, folded {folded}>"), super::volume_compute_for(t, folded)),
                    ]
                })
            })
            .collect();
        assert!(
            super::volume_for(Texels::UINT, false) != super::mpr_for(Texels::UINT, false),
            "the volume variant must differ"
        );
        assert!(
            super::planes_for(Texels::UINT, false) != super::mpr_for(Texels::UINT, false),
            "the planes variant must differ"
        );
        // The quick look through the filter: in filterable, unfolded volume renderings only.
        let quick = |s: &str| s.contains("textureSampleLevel") && s.contains("const QUICK_LOOK: bool = true;");
        assert!(quick(&super::volume_for(Texels::NORMALISED, false)));
        assert!(quick(&super::volume_compute_for(Texels::FLOAT_FILTERED, false)));
        assert!(!quick(&super::planes_compute_for(Texels::FLOAT_FILTERED, false)), "planes are sampled exactly");
        // Each compute variant is its fragment variant with the compute entry point.
        assert!(super::planes_compute_for(Texels::UINT, false).starts_with(&super::planes_for(Texels::UINT, false)));
        assert!(super::volume_compute_for(Texels::UINT, true).starts_with(&super::volume_for(Texels::UINT, true)));
        assert!(!quick(&super::volume_for(Texels::NORMALISED, true)), "a folded volume cannot be filtered");
        assert!(!quick(&super::volume_for(Texels::UINT, false)));
        assert!(!quick(&super::planes_for(Texels::NORMALISED, false)), "planes are sampled exactly");
        assert!(super::mpr_for(Texels::NORMALISED, false).contains("round(textureLoad(volume"));
        assert!(
            variants.iter().any(|(_, s)| !s.contains("return packed_folded(c);")),
            "the unfolded variant must differ"
        );
        assert!(
            variants.iter().filter(|(n, _)| !n.contains("f32")).all(|(_, s)| s != super::MPR),
            "the stored-type variants must differ"
        );
        assert!(super::slice_for("u32") != super::SLICE, "the stored-type slice variant must differ");
        let slices = ["u32", "i32"].iter().map(|t| (format!("slice.wgsl<{t}>"), super::slice_for(t)));
        let all = super::ALL
            .iter()
            .filter(|(n, _)| *n != "trilinear.wgsl")
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .chain(variants)
            .chain(slices);
        for (name, source) in all {
            let (name, source) = (name.as_str(), source.as_str());
            let module = naga::front::wgsl::parse_str(source)
                .map_err(|e| anyhow::anyhow!("{name}: {}", e.emit_to_string(source)))?;
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
                .validate(&module)
                .map_err(|e| anyhow::anyhow!("{name}: {}", e.emit_to_string(source)))?;
        }
        Ok(())
    }
}
