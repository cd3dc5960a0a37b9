//! The Lightbox workstation: a Tauri 2 window around the web UI in `ui/`.
//!
//! Commands are one-line delegations to `lightbox-workflow`; this file only maps to and from
//! JSON (see `dto.rs`).

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod dto;

use std::path::PathBuf;

use dto::{ErrorDto, SeriesListDto};
use lightbox_core::SeriesInstanceUid;

/// The folder the workstation lists: the first argument, or the bundled demo study.
struct Folder(PathBuf);

#[tauri::command]
async fn list_series(folder: tauri::State<'_, Folder>) -> Result<SeriesListDto, ErrorDto> {
    let report = lightbox_workflow::scan(&folder.0)?;
    eprintln!("lightbox-workstation: list_series: {} series", report.series().count());
    Ok(SeriesListDto::new(&folder.0, &report))
}

#[tauri::command]
async fn open_viewer(folder: tauri::State<'_, Folder>, series_uid: String) -> Result<(), ErrorDto> {
    lightbox_workflow::open_viewer_detached(&folder.0, Some(&SeriesInstanceUid::new(series_uid)))?;
    Ok(())
}

/// The UI calls this once it has drawn the series table: the signal smoke tests wait for.
#[tauri::command]
fn ui_ready(rows: usize) {
    eprintln!("lightbox-workstation: ui ready: {rows} rows");
}

/// Bounds what parsing one DICOM file may allocate (see `lightbox_dicom::ParseGuardAllocator`).
#[global_allocator]
static ALLOC: lightbox_workflow::ParseGuardAllocator = lightbox_workflow::ParseGuardAllocator;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LIGHTBOX_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let folder = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo/prostate-adc"));
    tauri::Builder::default()
        .manage(Folder(folder))
        .invoke_handler(tauri::generate_handler![list_series, open_viewer, ui_ready])
        .run(tauri::generate_context!())?;
    Ok(())
}
