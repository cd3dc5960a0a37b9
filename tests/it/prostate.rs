//! Issue 10: PI-CAI's dynamic lesion extraction, ported, against its reference implementation
//! (report_guided_annotation 0.3.4, "dynamic-v2") on fixed probability maps: separate lesions,
//! an adjacent weaker one and a sharp tiny peak, and more lesions than are extracted. The
//! fixtures come from `scripts/reference/picai_lesions.py`.

use lightbox_analysis::prostate::{ExtractionOptions, extract_lesions};
use lightbox_tests::workspace_root;

#[test]
fn dynamic_lesion_extraction_equals_the_picai_reference() -> anyhow::Result<()> {
    let dir = workspace_root().join("tests/fixtures/picai");
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json"))?)?;
    for name in ["separate", "adjacent", "many"] {
        let shape: Vec<usize> = serde_json::from_value(cases[name]["shape"].clone())?;
        let dims = [shape[0], shape[1], shape[2]];
        let bytes = std::fs::read(dir.join(format!("{name}.f32")))?;
        let map: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let theirs = std::fs::read(dir.join(format!("{name}.labels.u8")))?;
        let (labels, candidates) = extract_lesions(&map, dims, &ExtractionOptions::default())?;
        let expected: Vec<(u8, f32)> = serde_json::from_value::<Vec<(u8, f64)>>(cases[name]["confidences"].clone())?
            .into_iter()
            .map(|(i, c)| (i, c as f32))
            .collect();
        let ours: Vec<(u8, f32)> = candidates.iter().map(|c| (c.index, c.likelihood)).collect();
        assert_eq!(ours, expected, "{name}: candidates differ");
        let differing = labels.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{name}: {differing} voxels labelled differently");
    }
    Ok(())
}
