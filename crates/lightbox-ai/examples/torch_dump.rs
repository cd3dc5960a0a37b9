//! Lists the tensors of a PyTorch archive: `cargo run -p lightbox-ai --example torch_dump FILE`.
fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).ok_or("usage: torch_dump FILE")?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let tensors = lightbox_ai::torch::read_zip(&bytes)?;
    let mut params = 0;
    for (name, shape, values) in &tensors {
        params += values.len();
        println!("{name} {shape:?} first {:?}", values.first());
    }
    println!("{} tensors, {params} values", tensors.len());
    Ok(())
}
