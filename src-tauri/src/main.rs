//! The Lightbox workstation: a Tauri 2 window around the web UI in `ui/`.
//!
//! Commands are one-line delegations to `lightbox-workflow`; this file only maps to and from
//! JSON (see `dto.rs`).

#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod dto;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use dto::{
    DrainDto, ErrorDto, FileIssueDto, JobDto, MeasurementDto, OutboxRowDto, PacsStatusDto, ProgressDto, PushEventDto,
    ResultDto, SeriesListDto, TransferSummaryDto, WorklistDto, WorklistQueryDto,
};
use lightbox_core::SeriesInstanceUid;
use lightbox_workflow::pacs::{PacsSettings, TransferControl};
use tauri::ipc::Channel;

/// The folder the workstation lists: the first argument, or the bundled demo study.
struct Folder(PathBuf);

/// The local store and the PACS (from `LIGHTBOX_STORE`, `LIGHTBOX_PACS_*`).
struct Site {
    store: PathBuf,
    /// From `LIGHTBOX_PACS_*`, else the settings file; replaced when the settings screen saves.
    pacs: Mutex<Option<PacsSettings>>,
    /// Retrievals running now, by Study Instance UID, so the UI can cancel them.
    retrievals: Mutex<HashMap<String, TransferControl>>,
    /// The C-STORE SCP, when `LIGHTBOX_LISTEN_PORT` is set: "AET on port N".
    listening: Option<String>,
    /// Where pushes are reported (the UI subscribes once it is up).
    push_listeners: std::sync::Arc<Mutex<Vec<Channel<PushEventDto>>>>,
}

/// Starts the C-STORE SCP if `LIGHTBOX_LISTEN_PORT` is set; its events go to the log and to
/// every subscribed UI channel.
fn start_listening(
    store: &std::path::Path,
    listeners: std::sync::Arc<Mutex<Vec<Channel<PushEventDto>>>>,
) -> anyhow::Result<Option<(String, lightbox_workflow::pacs::ScpHandle)>> {
    use lightbox_workflow::pacs::ScpEvent;
    let Some(port) = std::env::var("LIGHTBOX_LISTEN_PORT").ok().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("LIGHTBOX_LISTEN_PORT={port} is not a port number"))?;
    let aet = std::env::var("LIGHTBOX_AET").unwrap_or_else(|_| "LIGHTBOX".into());
    let allow: Vec<String> = std::env::var("LIGHTBOX_LISTEN_ALLOW")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let (sender, events) = std::sync::mpsc::channel();
    let handle = lightbox_workflow::pacs::listen(
        store,
        &aet,
        &allow,
        (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
        Some(sender),
    )?;
    std::thread::spawn(move || {
        let mut counts: HashMap<String, (usize, u64)> = HashMap::new();
        for event in events {
            let dto = match event {
                ScpEvent::Associated { calling_ae, .. } => {
                    counts.insert(calling_ae.clone(), (0, 0));
                    PushEventDto { kind: "associated", calling_ae, instances: 0, bytes: 0, detail: String::new() }
                }
                ScpEvent::Echo { calling_ae } => {
                    PushEventDto { kind: "echo", calling_ae, instances: 0, bytes: 0, detail: String::new() }
                }
                ScpEvent::Stored { calling_ae, bytes, .. } => {
                    let c = counts.entry(calling_ae.clone()).or_default();
                    c.0 += 1;
                    c.1 += bytes;
                    PushEventDto { kind: "stored", calling_ae, instances: c.0, bytes: c.1, detail: String::new() }
                }
                ScpEvent::Failed { calling_ae, detail } => {
                    PushEventDto { kind: "failed", calling_ae, instances: 0, bytes: 0, detail }
                }
                ScpEvent::Released { calling_ae, instances } => {
                    let bytes = counts.remove(&calling_ae).map_or(0, |c| c.1);
                    eprintln!("lightbox-workstation: received {instances} instances from {calling_ae}");
                    PushEventDto { kind: "released", calling_ae, instances, bytes, detail: String::new() }
                }
            };
            if let Ok(listeners) = listeners.lock() {
                for channel in listeners.iter() {
                    let _ = channel.send(dto.clone());
                }
            }
        }
    });
    eprintln!("lightbox-workstation: listening as {aet} on port {}", handle.local_addr().port());
    Ok(Some((format!("{aet} on port {}", handle.local_addr().port()), handle)))
}

/// Starts the workflow engine when `LIGHTBOX_RULES` names a rules file: series that arrive
/// (pushes, retrievals, imports) are analysed as the rules say, shown on the Jobs and Results
/// screens; results wait for sign-off unless a rule says auto_send.
fn start_engine(
    store: &std::path::Path,
    pacs: Option<PacsSettings>,
) -> anyhow::Result<Option<lightbox_workflow::engine::Engine>> {
    let Some(path) = std::env::var_os("LIGHTBOX_RULES").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let rules = lightbox_workflow::pipeline::Rules::load(std::path::Path::new(&path))?;
    eprintln!("lightbox-workstation: analysing arrivals with {} rules from {}", rules.rules.len(), path.display());
    let (events, received) = std::sync::mpsc::channel();
    let engine = lightbox_workflow::engine::Engine::start(
        store,
        rules,
        pacs,
        lightbox_workflow::engine::EngineConfig::from_env(),
        events,
    );
    std::thread::spawn(move || {
        for event in received {
            eprintln!("lightbox-workstation: engine: {event}");
        }
    });
    Ok(Some(engine))
}

/// The UI subscribes to incoming pushes; returns what the SCP listens as, if it does.
#[tauri::command]
fn subscribe_pushes(site: tauri::State<'_, Site>, on_event: Channel<PushEventDto>) -> Option<String> {
    if let Ok(mut listeners) = site.push_listeners.lock() {
        listeners.push(on_event);
    }
    site.listening.clone()
}

impl Site {
    fn pacs(&self) -> Option<PacsSettings> {
        self.pacs.lock().ok().and_then(|p| p.clone())
    }
}

/// The settings screen: what is saved (never the password).
#[tauri::command]
fn get_settings() -> Result<lightbox_workflow::settings::Settings, ErrorDto> {
    Ok(lightbox_workflow::settings::Settings::load(&lightbox_workflow::settings::config_path())?)
}

/// Saves the settings file, the password or token (when given) in the OS keyring, and uses the
/// new PACS from now on.
#[tauri::command]
fn save_settings(
    site: tauri::State<'_, Site>,
    settings: lightbox_workflow::settings::Settings,
    secret: Option<String>,
) -> Result<String, ErrorDto> {
    let path = lightbox_workflow::settings::config_path();
    settings.save(&path)?;
    if let (Some(secret), Some(pacs)) = (secret.filter(|s| !s.is_empty()), &settings.pacs) {
        let name = if pacs.name.is_empty() { "pacs" } else { pacs.name.as_str() };
        let account = if pacs.bearer { "token" } else { pacs.user.as_str() };
        lightbox_workflow::settings::store_secret(name, account, &secret)?;
    }
    if let Ok(mut current) = site.pacs.lock() {
        *current = settings.pacs_settings();
    }
    eprintln!("lightbox-workstation: settings saved to {}", path.display());
    Ok(path.display().to_string())
}

/// Runs PACS work on a blocking thread with its own current-thread runtime: the UI thread never
/// waits, and transfers are not bounced between runtime threads.
async fn off_ui<T: Send + 'static>(
    work: impl FnOnce(&tokio::runtime::Runtime) -> Result<T, ErrorDto> + Send + 'static,
) -> Result<T, ErrorDto> {
    tauri::async_runtime::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ErrorDto::new("runtime", e.to_string()))?;
        work(&runtime)
    })
    .await
    .map_err(|e| ErrorDto::new("internal", e.to_string()))?
}

#[tauri::command]
async fn worklist(site: tauri::State<'_, Site>, query: WorklistQueryDto) -> Result<WorklistDto, ErrorDto> {
    let (store, pacs) = (site.store.clone(), site.pacs());
    off_ui(move |rt| {
        let merged =
            rt.block_on(lightbox_workflow::pacs::worklist_with_pacs(&store, pacs.as_ref(), &query.to_query()))?;
        let on_pacs = merged.entries.iter().filter(|r| r.pacs_instances.is_some()).count();
        eprintln!(
            "lightbox-workstation: worklist: {} rows, {on_pacs} on the PACS{}{}",
            merged.entries.len(),
            if merged.warning.is_some() { " (PACS unreachable)" } else { "" },
            if merged.more { " (more match)" } else { "" }
        );
        Ok(WorklistDto::new(merged, pacs.map(|p| p.name), &store))
    })
    .await
}

#[tauri::command]
async fn retrieve_study(
    site: tauri::State<'_, Site>,
    study_uid: String,
    total: usize,
    on_progress: Channel<ProgressDto>,
) -> Result<TransferSummaryDto, ErrorDto> {
    let Some(pacs) = site.pacs() else {
        return Err(ErrorDto::new("no_pacs", "No PACS is configured (set LIGHTBOX_PACS_URL)."));
    };
    let (sender, receiver) = std::sync::mpsc::channel::<lightbox_workflow::pacs::TransferProgress>();
    let control = TransferControl::with_progress(sender);
    site.retrievals
        .lock()
        .map_err(|e| ErrorDto::new("internal", e.to_string()))?
        .insert(study_uid.clone(), control.clone());
    std::thread::spawn(move || {
        for p in receiver {
            let _ = on_progress.send(ProgressDto { done: p.imported, total, bytes: p.bytes, failed: 0 });
        }
    });
    let store = site.store.clone();
    let uid = study_uid.clone();
    let outcome = off_ui(move |rt| {
        let s = rt.block_on(lightbox_workflow::pacs::pacs_retrieve_with(&store, &pacs, &uid, None, &control))?;
        let failures = if s.failed.is_empty() { String::new() } else { format!("; {} failures", s.failed.len()) };
        eprintln!(
            "lightbox-workstation: retrieved {} instances ({} new){failures}",
            s.imported + s.already_stored,
            s.imported
        );
        Ok(TransferSummaryDto {
            imported: s.imported,
            already_stored: s.already_stored,
            bytes: s.bytes,
            failed: s.failed.iter().map(FileIssueDto::from).collect(),
        })
    })
    .await;
    if let Ok(mut running) = site.retrievals.lock() {
        running.remove(&study_uid);
    }
    outcome
}

#[tauri::command]
fn cancel_retrieve(site: tauri::State<'_, Site>, study_uid: String) {
    if let Some(control) = site.retrievals.lock().ok().and_then(|r| r.get(&study_uid).cloned()) {
        control.cancel();
    }
}

/// Imports the workstation's folder into the store, reporting progress.
#[tauri::command]
async fn import_folder(
    site: tauri::State<'_, Site>,
    folder: tauri::State<'_, Folder>,
    on_progress: Channel<ProgressDto>,
) -> Result<TransferSummaryDto, ErrorDto> {
    let (store, path) = (site.store.clone(), folder.0.clone());
    let (sender, receiver) = std::sync::mpsc::channel::<lightbox_workflow::ImportProgress>();
    std::thread::spawn(move || {
        for p in receiver {
            let _ = on_progress.send(ProgressDto {
                done: p.files_done,
                total: p.files_total,
                bytes: p.bytes,
                failed: p.failed,
            });
        }
    });
    tauri::async_runtime::spawn_blocking(move || {
        let s = lightbox_workflow::import_with_progress(&store, &path, Some(&sender))?;
        Ok(TransferSummaryDto {
            imported: s.imported,
            already_stored: s.already_stored,
            bytes: 0,
            failed: s.failed.iter().map(FileIssueDto::from).collect(),
        })
    })
    .await
    .map_err(|e| ErrorDto::new("internal", e.to_string()))?
}

/// Imports files and folders dropped on the window (or picked), one after the other, reporting
/// progress per item; unreadable files are listed in the summary.
/// The native folder picker; `None` when the user closes it without choosing. Dialogs belong
/// to the UI's main thread: the command asks it to run one and waits off the UI thread.
#[tauri::command]
async fn pick_folder(app: tauri::AppHandle, folder: tauri::State<'_, Folder>) -> Result<Option<String>, ErrorDto> {
    let (sender, answer) = std::sync::mpsc::channel();
    // It opens where the workstation is looking (the folder it was started on).
    let start = folder.0.clone();
    app.run_on_main_thread(move || {
        native_pick_folder(&start, move |picked| {
            let _ = sender.send(picked);
        });
    })
    .map_err(|e| ErrorDto::new("internal", format!("cannot open the folder picker: {e}")))?;
    let picked = tauri::async_runtime::spawn_blocking(move || answer.recv().ok().flatten())
        .await
        .map_err(|e| ErrorDto::new("internal", e.to_string()))?;
    eprintln!(
        "lightbox-workstation: folder picker: {}",
        picked.as_ref().map_or_else(|| "closed".to_owned(), |p| p.display().to_string())
    );
    Ok(picked.map(|p| p.display().to_string()))
}

/// Shows GTK's folder chooser without a nested main loop (Tauri's loop keeps running) and
/// calls `done` with the choice.
#[cfg(target_os = "linux")]
fn native_pick_folder(start: &std::path::Path, done: impl FnOnce(Option<PathBuf>) + 'static) {
    use gtk::prelude::*;
    let dialog = gtk::FileChooserDialog::with_buttons(
        Some("Import a DICOM folder into Lightbox"),
        None::<&gtk::Window>,
        gtk::FileChooserAction::SelectFolder,
        &[("Cancel", gtk::ResponseType::Cancel), ("Import", gtk::ResponseType::Accept)],
    );
    dialog.set_current_folder(start);
    dialog.set_default_response(gtk::ResponseType::Accept); // Enter imports the folder shown
    let done = std::cell::RefCell::new(Some(done));
    dialog.connect_response(move |dialog, response| {
        let chosen = (response == gtk::ResponseType::Accept).then(|| dialog.filename()).flatten();
        if let Some(done) = done.borrow_mut().take() {
            done(chosen);
        }
        dialog.close();
    });
    dialog.show_all();
}

#[cfg(not(target_os = "linux"))]
fn native_pick_folder(start: &std::path::Path, done: impl FnOnce(Option<PathBuf>) + 'static) {
    done(rfd::FileDialog::new().set_title("Import a DICOM folder into Lightbox").set_directory(start).pick_folder());
}

#[tauri::command]
async fn import_paths(
    site: tauri::State<'_, Site>,
    paths: Vec<String>,
    on_progress: Channel<ProgressDto>,
) -> Result<TransferSummaryDto, ErrorDto> {
    let store = site.store.clone();
    tauri::async_runtime::spawn_blocking(move || {
        let mut total = TransferSummaryDto { imported: 0, already_stored: 0, bytes: 0, failed: vec![] };
        for path in paths {
            let (sender, receiver) = std::sync::mpsc::channel::<lightbox_workflow::ImportProgress>();
            let channel = on_progress.clone();
            let forward = std::thread::spawn(move || {
                for p in receiver {
                    let _ = channel.send(ProgressDto {
                        done: p.files_done,
                        total: p.files_total,
                        bytes: p.bytes,
                        failed: p.failed,
                    });
                }
            });
            let s = lightbox_workflow::import_with_progress(&store, std::path::Path::new(&path), Some(&sender))?;
            drop(sender);
            let _ = forward.join();
            total.imported += s.imported;
            total.already_stored += s.already_stored;
            total.failed.extend(s.failed.iter().map(FileIssueDto::from));
        }
        eprintln!("lightbox-workstation: imported {} instances ({} unreadable)", total.imported, total.failed.len());
        Ok(total)
    })
    .await
    .map_err(|e| ErrorDto::new("internal", e.to_string()))?
}

#[tauri::command]
async fn results(site: tauri::State<'_, Site>) -> Result<Vec<ResultDto>, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pipeline::results(&store)?.into_iter().map(ResultDto::from).collect())).await
}

/// The radiologist signs a result: a VERIFIED SR with the SEG goes into the outbox.
#[tauri::command]
async fn sign_result(
    site: tauri::State<'_, Site>,
    job_id: i64,
    radiologist: String,
    review: String,
    volume_ml: Option<f64>,
) -> Result<String, ErrorDto> {
    use lightbox_workflow::pipeline::Review;
    let review = match (review.as_str(), volume_ml) {
        ("accept", _) => Review::Accept,
        ("reject", _) => Review::Reject,
        ("edit", Some(volume_ml)) => Review::Edit { volume_ml },
        _ => return Err(ErrorDto::new("analysis", format!("unknown review {review:?}"))),
    };
    let store = site.store.clone();
    let send_to = site.pacs().map_or_else(|| "pacs".to_owned(), |p| p.name);
    off_ui(move |_| {
        let o = lightbox_workflow::pipeline::sign(&store, job_id, &radiologist, &send_to, review)?;
        eprintln!("lightbox-workstation: job {job_id} signed, SR {}, {} queued", o.sr_uid, o.queued);
        Ok(o.sr_uid)
    })
    .await
}

#[tauri::command]
async fn outbox(site: tauri::State<'_, Site>) -> Result<Vec<OutboxRowDto>, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pacs::outbox_list(&store)?.into_iter().map(OutboxRowDto::from).collect()))
        .await
}

/// Takes a pending or refused row out of the outbox; false when it is being sent or was sent.
#[tauri::command]
async fn cancel_outbox(site: tauri::State<'_, Site>, id: i64) -> Result<bool, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pacs::outbox_cancel(&store, id)?)).await
}

/// Puts a refused or cancelled row back in the outbox.
#[tauri::command]
async fn retry_outbox(site: tauri::State<'_, Site>, id: i64) -> Result<(), ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| match lightbox_workflow::pacs::outbox_retry(&store, id)? {
        true => Ok(()),
        false => Err(ErrorDto::new("outbox_state", format!("outbox item {id} was not refused or cancelled"))),
    })
    .await
}

#[tauri::command]
async fn jobs(site: tauri::State<'_, Site>) -> Result<Vec<JobDto>, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pipeline::job_rows(&store)?.into_iter().map(JobDto::from).collect())).await
}

/// Cancels a queued or running job (a running one stops at its next stage).
#[tauri::command]
async fn cancel_job(site: tauri::State<'_, Site>, id: i64) -> Result<bool, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pipeline::cancel(&store, id)?)).await
}

/// Runs a failed, cancelled or waiting job again, off the UI thread; resolves when it has
/// finished (a waiting one whose input is still incomplete rejects with code `incomplete`).
#[tauri::command]
async fn rerun_job(site: tauri::State<'_, Site>, id: i64) -> Result<(), ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| {
        lightbox_workflow::pipeline::rerun(&store, id)?;
        Ok(())
    })
    .await
}

/// Opens the viewer on a series beside the patient's prior, slices linked; resolves to which
/// prior was chosen and why.
#[tauri::command]
async fn compare_with_prior(site: tauri::State<'_, Site>, series_uid: String) -> Result<String, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| {
        let (prior, mut child) = lightbox_workflow::open_compare_with_prior(&store, &series_uid)?;
        std::thread::spawn(move || child.wait());
        Ok(format!("{} of {} ({})", prior.description, prior.study_date, prior.reason))
    })
    .await
}

/// The radiologist's measurements on a series.
#[tauri::command]
async fn measurements(site: tauri::State<'_, Site>, series_uid: String) -> Result<Vec<MeasurementDto>, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| {
        Ok(lightbox_workflow::pipeline::measurements(&store, &series_uid)?
            .into_iter()
            .map(MeasurementDto::from)
            .collect())
    })
    .await
}

/// Records a measurement; it goes into the report the radiologist signs.
#[tauri::command]
async fn add_measurement(
    site: tauri::State<'_, Site>,
    series_uid: String,
    kind: String,
    label: String,
    value: f64,
    unit: String,
    author: String,
) -> Result<i64, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| {
        Ok(lightbox_workflow::pipeline::add_measurement(&store, &series_uid, &kind, &label, value, &unit, &author)?)
    })
    .await
}

#[tauri::command]
async fn remove_measurement(site: tauri::State<'_, Site>, id: i64) -> Result<bool, ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| Ok(lightbox_workflow::pipeline::remove_measurement(&store, id)?)).await
}

/// Opens the viewer on a result: its series with the segmentation drawn over it.
#[tauri::command]
async fn open_result(
    site: tauri::State<'_, Site>,
    job_id: i64,
    radiologist: Option<String>,
    at: Option<[f64; 3]>,
) -> Result<(), ErrorDto> {
    let store = site.store.clone();
    off_ui(move |_| {
        let mut child = lightbox_workflow::open_result_in_viewer(&store, job_id, radiologist.as_deref(), at)?;
        eprintln!("lightbox-workstation: viewer opened on job {job_id} (pid {})", child.id());
        std::thread::spawn(move || child.wait());
        Ok(())
    })
    .await
}

/// Whether the configured PACS answers, and how fast.
#[tauri::command]
async fn pacs_status(site: tauri::State<'_, Site>) -> Result<PacsStatusDto, ErrorDto> {
    let Some(pacs) = site.pacs() else {
        return Ok(PacsStatusDto {
            configured: false,
            name: String::new(),
            url: String::new(),
            reachable: false,
            millis: 0,
            detail: "No PACS is configured (Settings, or LIGHTBOX_PACS_URL).".into(),
            code: "no_pacs".into(),
        });
    };
    off_ui(move |rt| Ok(rt.block_on(lightbox_workflow::pacs::pacs_status(&pacs)).into())).await
}

#[tauri::command]
async fn drain_outbox(site: tauri::State<'_, Site>) -> Result<DrainDto, ErrorDto> {
    let Some(pacs) = site.pacs() else {
        return Err(ErrorDto::new("no_pacs", "No PACS is configured (set LIGHTBOX_PACS_URL)."));
    };
    let store = site.store.clone();
    off_ui(move |rt| Ok(rt.block_on(lightbox_workflow::pacs::outbox_drain(&store, &pacs))?.into())).await
}

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
    let store = lightbox_workflow::default_store_dir();
    let settings = lightbox_workflow::settings::Settings::load(&lightbox_workflow::settings::config_path())
        .unwrap_or_else(|e| {
            eprintln!("lightbox-workstation: {e}; starting without saved settings");
            Default::default()
        });
    let push_listeners = std::sync::Arc::new(Mutex::new(Vec::new()));
    let scp = start_listening(&store, push_listeners.clone())?;
    let site = Site {
        store,
        pacs: Mutex::new(settings.pacs_settings()),
        retrievals: Mutex::new(HashMap::new()),
        listening: scp.as_ref().map(|(what, _)| what.clone()),
        push_listeners,
    };
    let _scp = scp.map(|(_, handle)| handle); // listens as long as the app runs
    let _engine = start_engine(&site.store, site.pacs())?; // analyses as long as the app runs
    tauri::Builder::default()
        .manage(Folder(folder))
        .manage(site)
        .invoke_handler(tauri::generate_handler![
            list_series,
            open_viewer,
            ui_ready,
            worklist,
            retrieve_study,
            cancel_retrieve,
            import_folder,
            import_paths,
            pick_folder,
            subscribe_pushes,
            results,
            sign_result,
            get_settings,
            save_settings,
            outbox,
            drain_outbox,
            cancel_outbox,
            retry_outbox,
            jobs,
            cancel_job,
            rerun_job,
            open_result,
            compare_with_prior,
            measurements,
            add_measurement,
            remove_measurement,
            pacs_status
        ])
        .run(tauri::generate_context!())?;
    Ok(())
}
