//! Fuzz target: the text formats users hand us: ITK transform files (registration results from
//! elastix, ANTs, ITK-SNAP) and colour tables (`--lut`). Errors are fine; panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = lightbox_imaging::itk::parse_affine(&text) {
        let _ = t.inverse();
    }
    if let Ok(lut) = lightbox_render::Lut::parse("fuzz.lut", &text) {
        let _ = lut.at(0.5);
    }
});
