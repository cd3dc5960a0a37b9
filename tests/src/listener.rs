//! `lightbox listen` as the pipeline end-to-end tests run it: dispatch rules, a store, the
//! results sent to a real Orthanc; studies pushed by dcmtk's `storescu`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::orthanc::{Orthanc, free_port};
use crate::{KillOnDrop, Lines, bin, run_ok};

/// A running `lightbox listen`: its process, its output and its DICOM port.
pub struct Listener {
    pub process: KillOnDrop,
    pub lines: Lines,
    pub port: u16,
}

impl Listener {
    /// Starts it with `rules` (TOML, written to `dir/rules.toml`) and its store in `dir/store`,
    /// models from `models`, sending to `orthanc`; a series settles after `settle_ms`.
    pub fn start(dir: &Path, rules: &str, orthanc: &Orthanc, models: &Path, settle_ms: u32) -> anyhow::Result<Self> {
        let rules_path = dir.join("rules.toml");
        std::fs::write(&rules_path, rules)?;
        let port = free_port()?;
        let mut process = KillOnDrop(
            Command::new(bin("lightbox")?)
                .args(["listen", "--bind", "127.0.0.1", "--port", &port.to_string(), "--rules"])
                .arg(&rules_path)
                .arg("--store")
                .arg(dir.join("store"))
                .env("LIGHTBOX_MODELS", models)
                .env("LIGHTBOX_PACS_URL", orthanc.dicomweb_url())
                .env("LIGHTBOX_PACS_USER", orthanc.user())
                .env("LIGHTBOX_PACS_PASSWORD", orthanc.password())
                .env("LIGHTBOX_SETTLE_MS", settle_ms.to_string())
                .stdout(Stdio::piped())
                .spawn()?,
        );
        let mut lines = Lines::new(process.0.stdout.take().context("no stdout")?);
        lines.wait_for("listening as LIGHTBOX", Duration::from_secs(10))?;
        Ok(Self { process, lines, port })
    }

    /// Pushes every DICOM file under `folder` with `storescu`.
    pub fn push(&self, folder: &Path) -> anyhow::Result<String> {
        run_ok(
            Command::new("storescu").args(["-aec", "LIGHTBOX", "+sd", "127.0.0.1", &self.port.to_string()]).arg(folder),
        )
    }
}
