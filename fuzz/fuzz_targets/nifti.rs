//! Fuzz target: NIfTI-1 input (plain or gzipped) through the reader and volume extraction.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = lightbox_nifti::read_bytes(std::path::Path::new("fuzz.nii"), data) {
        let _ = image.volume(0);
    }
});
