//! Fuzz target: the model files users hand `lightbox models import` and `install`: pickles
//! (nnU-Net v1's plans.pkl and model_*.model.pkl) and PyTorch zip archives (checkpoints,
//! TorchScript). Errors are fine; panics, hangs and runaway memory are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lightbox_ai::torch::read_pickle(data);
    let _ = lightbox_ai::torch::read_zip(data);
    let _ = lightbox_ai::torch::read_zip_entry(data, "inference_allowed_mirroring_axes");
});
