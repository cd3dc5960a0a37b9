//! bench-pacs: WADO-RS and STOW-RS against a local Orthanc, Lightbox vs dicomweb-client vs curl.
fn main() -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
