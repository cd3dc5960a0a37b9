//! Fuzz target: one file through the whole ingest path a user's folder takes: header scan,
//! grouping into display sets, pixel decoding and volume assembly. Any panic, abort or runaway
//! allocation is a bug; errors are the expected outcome for garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Bounds what parsing one DICOM file may allocate (see `lightbox_dicom::ParseGuardAllocator`).
#[global_allocator]
static ALLOC: lightbox_dicom::ParseGuardAllocator = lightbox_dicom::ParseGuardAllocator;

fuzz_target!(|data: &[u8]| {
    // lightbox-dicom turns codec panics into errors; keep libFuzzer's abort-on-panic hook from
    // counting those. Panics anywhere else still fail the run: the closure itself then panics.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    // The ingest path reads files by name (as it does for a user's folder); tmpfs keeps it fast.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(format!("lightbox-fuzz-{}.dcm", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(report) = lightbox_dicom::scan_path(&path) {
        for (_, series) in report.series() {
            for set in report.display_sets(series) {
                let _ = set.load(0);
            }
        }
    }
});
