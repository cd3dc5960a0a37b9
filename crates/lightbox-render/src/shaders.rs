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

/// `mpr.wgsl` for a volume kept in its stored type: `"u32"` (8- and 16-bit unsigned), `"i32"`
/// (16-bit signed) or `"f32"`; `folded` when it lies folded in its texture (see `packing`).
pub fn mpr_for(texel: &str, folded: bool) -> String {
    let source = MPR.replacen("var volume: texture_3d<f32>;", &format!("var volume: texture_3d<{texel}>;"), 1);
    if folded { source } else { source.replacen("    return packed_folded(c);", "    return c;", 1) }
}

/// [`mpr_for`] for the planes and slabs alone: the fragment stage never takes the
/// volume-rendering branch (volume renderings have [`volume_for`]), so the GPU's compiler drops
/// the ray caster's code and the registers it would hold for every plane.
pub fn planes_for(texel: &str, folded: bool) -> String {
    mpr_for(texel, folded).replacen("    if (u.slab.y == 4u) {", "    if (false) {", 1)
}

/// [`mpr_for`] for volume rendering alone: the fragment stage takes the volume-rendering branch
/// unconditionally, so the GPU's compiler drops the planes' code (and its registers).
pub fn volume_for(texel: &str, folded: bool) -> String {
    mpr_for(texel, folded).replacen("    if (u.slab.y == 4u) {", "    if (true) {", 1)
}

/// The volume rendering as a compute pass: `mpr.wgsl` with `volume_compute.wgsl`'s entry point.
pub const VOLUME_COMPUTE: &str = concat!(
    include_str!("../../../shaders/fullscreen.wgsl"),
    include_str!("../../../shaders/mpr.wgsl"),
    include_str!("../../../shaders/volume_compute.wgsl")
);

/// [`VOLUME_COMPUTE`] for a volume kept in its stored type (see [`mpr_for`]).
pub fn volume_compute_for(texel: &str, folded: bool) -> String {
    mpr_for(texel, folded) + include_str!("../../../shaders/volume_compute.wgsl")
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
    ("volume_compute.wgsl", VOLUME_COMPUTE),
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

        let variants: Vec<(String, String)> = ["u32", "i32", "f32"]
            .iter()
            .flat_map(|t| {
                [false, true].into_iter().flat_map(move |folded| {
                    [
                        (format!("mpr.wgsl<{t}, folded {folded}>"), super::mpr_for(t, folded)),
                        (format!("mpr.wgsl volume<{t}, folded {folded}>"), super::volume_for(t, folded)),
                        (format!("mpr.wgsl planes<{t}, folded {folded}>"), super::planes_for(t, folded)),
                        (format!("volume_compute.wgsl<{t}, folded {folded}>"), super::volume_compute_for(t, folded)),
                    ]
                })
            })
            .collect();
        assert!(super::volume_for("u32", false) != super::mpr_for("u32", false), "the volume variant must differ");
        assert!(super::planes_for("u32", false) != super::mpr_for("u32", false), "the planes variant must differ");
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
        let all = super::ALL.iter().map(|(n, s)| ((*n).to_owned(), (*s).to_owned())).chain(variants).chain(slices);
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
