//! Lightbox integration tests: one binary, a module per area.
//!
//! They need the workspace binaries built first (`cargo build --workspace --bins`, done by
//! `make test`) and the shared test data beside the project (or `LIGHTBOX_TEST_DATA`).

mod ai;
mod atrophy;
mod brain_pipeline;
mod breast;
mod cli;
mod harness;
mod imaging;
mod ingest;
mod lesions;
mod pacs;
mod pacs_cli;
mod parity;
mod pipeline;
mod prostate;
mod regions;
mod render;
mod seg;
mod serve;
mod sources;
mod store;
mod tissue;
mod viewer;
mod workstation;

/// The ingest tests run under the same allocation guard as the binaries.
#[global_allocator]
static ALLOC: lightbox_dicom::ParseGuardAllocator = lightbox_dicom::ParseGuardAllocator;

/// Where tests leave screenshots for a person to look at.
pub fn screenshot_dir() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).ok_or_else(|| anyhow::anyhow!("no target dir above {}", exe.display()))?;
    let dir = target.join("lightbox-screenshots");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
