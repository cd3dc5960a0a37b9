//! PACS operations for front ends: search, retrieve into the store, send through the outbox,
//! receive pushes. Every transfer of patient data is written to the audit log.

use std::path::{Path, PathBuf};

pub use lightbox_pacs::dimse::{DimsePeer, ScpConfig, ScpEvent, ScpHandle};
pub use lightbox_pacs::outbox::DrainReport;
use lightbox_pacs::tags;
pub use lightbox_pacs::{
    Auth, DicomWebClient, DicomWebConfig, PacsError, QidoQuery, RetrieveFailure, RetrieveSummary, RetryPolicy,
    TlsOptions, TransferControl, TransferProgress,
};
use lightbox_store::Store;
pub use lightbox_store::{Enqueued, OutboxItem, OutboxState};

use crate::WorkflowError;

/// One configured PACS: its DICOMweb endpoint and, optionally, its DIMSE storage SCP as the
/// outbox's fallback.
#[derive(Clone, Debug)]
pub struct PacsSettings {
    /// Name used for outbox rows and the audit log.
    pub name: String,
    pub web: DicomWebConfig,
    pub dimse: Option<DimsePeer>,
}

impl PacsSettings {
    pub fn client(&self) -> Result<DicomWebClient, WorkflowError> {
        Ok(DicomWebClient::new(self.web.clone())?)
    }

    /// The PACS configured in the environment (`LIGHTBOX_PACS_URL`, `_NAME`, `_USER` +
    /// `_PASSWORD` or `_TOKEN`, `_CA`, `_CERT` + `_KEY`, `_AET` + `_DIMSE_HOST` + `_DIMSE_PORT`,
    /// `LIGHTBOX_AET`), or `None` when no URL is set.
    pub fn from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var("LIGHTBOX_PACS_URL")?;
        let mut web = DicomWebConfig::new(url);
        web.auth = match (var("LIGHTBOX_PACS_USER"), var("LIGHTBOX_PACS_TOKEN")) {
            (Some(user), _) => Auth::Basic { user, password: var("LIGHTBOX_PACS_PASSWORD").unwrap_or_default() },
            (None, Some(token)) => Auth::Bearer(token),
            (None, None) => Auth::None,
        };
        web.tls = TlsOptions {
            ca_file: var("LIGHTBOX_PACS_CA").map(PathBuf::from),
            ca_only: false,
            client_cert: var("LIGHTBOX_PACS_CERT").map(PathBuf::from),
            client_key: var("LIGHTBOX_PACS_KEY").map(PathBuf::from),
        };
        let dimse = var("LIGHTBOX_PACS_AET").map(|ae_title| DimsePeer {
            ae_title,
            host: var("LIGHTBOX_PACS_DIMSE_HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: var("LIGHTBOX_PACS_DIMSE_PORT").and_then(|p| p.parse().ok()).unwrap_or(104),
            calling_ae_title: var("LIGHTBOX_AET").unwrap_or_else(|| "LIGHTBOX".into()),
        });
        Some(Self { name: var("LIGHTBOX_PACS_NAME").unwrap_or_else(|| "pacs".into()), web, dimse })
    }
}

/// A study on the PACS, as its worklist line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteStudy {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub date: String,
    pub description: String,
    pub accession_number: String,
    pub modalities: String,
    pub series: Option<i64>,
    pub instances: Option<i64>,
}

/// A series on the PACS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteSeries {
    pub series_uid: String,
    pub number: Option<i64>,
    pub modality: String,
    pub description: String,
    pub instances: Option<i64>,
}

/// QIDO-RS study search.
pub async fn pacs_search_studies(
    settings: &PacsSettings,
    query: &QidoQuery,
) -> Result<Vec<RemoteStudy>, WorkflowError> {
    let found = settings.client()?.search_studies(query).await?;
    Ok(found
        .iter()
        .map(|d| RemoteStudy {
            study_uid: d.string(tags::STUDY_INSTANCE_UID).unwrap_or_default(),
            patient_id: d.string(tags::PATIENT_ID).unwrap_or_default(),
            patient_name: d.string(tags::PATIENT_NAME).unwrap_or_default(),
            date: d.string(tags::STUDY_DATE).unwrap_or_default(),
            description: d.string(tags::STUDY_DESCRIPTION).unwrap_or_default(),
            accession_number: d.string(tags::ACCESSION_NUMBER).unwrap_or_default(),
            modalities: d.strings(tags::MODALITIES_IN_STUDY).join("\\"),
            series: d.int(tags::NUMBER_OF_STUDY_RELATED_SERIES),
            instances: d.int(tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
        })
        .collect())
}

/// QIDO-RS series of one study.
pub async fn pacs_search_series(settings: &PacsSettings, study_uid: &str) -> Result<Vec<RemoteSeries>, WorkflowError> {
    // Series Description is not in every PACS's default answer (Orthanc leaves it out).
    let query = QidoQuery::new().include("SeriesDescription").include("NumberOfSeriesRelatedInstances");
    let found = settings.client()?.search_series(study_uid, &query).await?;
    Ok(found
        .iter()
        .map(|d| RemoteSeries {
            series_uid: d.string(tags::SERIES_INSTANCE_UID).unwrap_or_default(),
            number: d.int(tags::SERIES_NUMBER),
            modality: d.string(tags::MODALITY).unwrap_or_default(),
            description: d.string(tags::SERIES_DESCRIPTION).unwrap_or_default(),
            instances: d.int(tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
        })
        .collect())
}

/// WADO-RS retrieval of a study (or one series) into the local store.
pub async fn pacs_retrieve(
    store_dir: &Path,
    settings: &PacsSettings,
    study_uid: &str,
    series_uid: Option<&str>,
) -> Result<RetrieveSummary, WorkflowError> {
    pacs_retrieve_with(store_dir, settings, study_uid, series_uid, &TransferControl::default()).await
}

/// [`pacs_retrieve`] with progress (instances, bytes, imported) and cancellation. Series that
/// completed before a cancel stay in the store.
pub async fn pacs_retrieve_with(
    store_dir: &Path,
    settings: &PacsSettings,
    study_uid: &str,
    series_uid: Option<&str>,
    control: &TransferControl,
) -> Result<RetrieveSummary, WorkflowError> {
    let client = settings.client()?;
    let mut store = Store::open(store_dir)?;
    let outcome = client.retrieve_into_with(&mut store, study_uid, series_uid, control).await;
    let detail = match &outcome {
        Ok(s) if s.failed.is_empty() => format!("{}: {} instances", settings.name, s.imported + s.already_stored),
        Ok(s) => {
            let series: std::collections::BTreeSet<&str> = s.failed.iter().map(|f| f.series.as_str()).collect();
            format!(
                "{}: {} instances; not retrieved from {} series: {}",
                settings.name,
                s.imported + s.already_stored,
                series.len(),
                series.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
        Err(e) => format!("{}: {}", settings.name, e.code()),
    };
    store.audit(&actor(), "retrieve", series_uid.unwrap_or(study_uid), &detail)?;
    Ok(outcome?)
}

/// The patient's prior from the PACS: when the store has no earlier study of the patient with a
/// series comparable to `series_uid` (see [`crate::find_prior`]), the PACS's studies of the
/// patient before this one are searched, newest first, for a series of the same modality and
/// description, and the first found is retrieved into the store. Returns its UID, or `None`
/// when the store already has a prior or the PACS has none.
pub async fn fetch_prior(
    store_dir: &Path,
    settings: &PacsSettings,
    series_uid: &str,
) -> Result<Option<String>, WorkflowError> {
    if crate::find_prior(store_dir, series_uid)?.is_some() {
        return Ok(None);
    }
    let files = Store::open(store_dir)?.series_files(series_uid)?;
    let Some(first) = files.first() else { return Ok(None) };
    let record = lightbox_dicom::read_instance(first)?;
    let (patient, date) = (record.patient.id.trim().to_owned(), record.study_date.trim().to_owned());
    if patient.is_empty() || date.len() != 8 {
        return Ok(None);
    }
    let query = QidoQuery::new().matching("PatientID", &patient).matching("StudyDate", &format!("-{date}"));
    let mut studies: Vec<RemoteStudy> = pacs_search_studies(settings, &query)
        .await?
        .into_iter()
        .filter(|s| s.study_uid != record.study_uid.as_str() && s.date.as_str() < date.as_str())
        .collect();
    studies.sort_by(|a, b| b.date.cmp(&a.date));
    let wanted = record.series_description.trim().to_ascii_lowercase();
    for study in studies {
        let series = pacs_search_series(settings, &study.study_uid).await?;
        let Some(found) = series
            .iter()
            .find(|s| s.modality == record.modality && s.description.trim().to_ascii_lowercase() == wanted)
        else {
            continue;
        };
        tracing::info!(prior = %found.series_uid, study = %study.study_uid, date = %study.date, "retrieving the prior from the PACS");
        let summary = pacs_retrieve(store_dir, settings, &study.study_uid, Some(&found.series_uid)).await?;
        // A prior with instances missing would be compared as if whole.
        if let Some(first) = summary.failed.first() {
            return Err(PacsError::Incomplete {
                what: format!("prior series {}", found.series_uid),
                detail: format!("{} failure(s), the first: {}", summary.failed.len(), first.reason),
            }
            .into());
        }
        return Ok(Some(found.series_uid.clone()));
    }
    Ok(None)
}

/// [`fetch_prior`] from synchronous code (the engine's dispatcher): on its own small runtime.
pub fn fetch_prior_blocking(
    store_dir: &Path,
    settings: &PacsSettings,
    series_uid: &str,
) -> Result<Option<String>, WorkflowError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkflowError::Io { path: store_dir.to_owned(), source })?;
    runtime.block_on(fetch_prior(store_dir, settings, series_uid))
}

/// The QIDO-RS study search for worklist filters (same wildcards; dates as a DA range). A space
/// inside a value is sent as `?` (any one character): a URL carries it as `%20`, which Orthanc
/// does not decode, so "VAN DER BERG*" would find nobody there; every PACS takes `?`.
pub fn qido_for(query: &lightbox_store::WorklistQuery) -> QidoQuery {
    let mut qido = QidoQuery::new().limit(query.limit.max(1)).offset(query.offset);
    for (key, value) in [
        ("PatientName", &query.patient_name),
        ("PatientID", &query.patient_id),
        ("AccessionNumber", &query.accession_number),
        ("ModalitiesInStudy", &query.modality),
    ] {
        if let Some(value) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            qido = qido.matching(key, &value.replace(' ', "?"));
        }
    }
    if query.date_from.is_some() || query.date_to.is_some() {
        let range = format!("{}-{}", query.date_from.as_deref().unwrap_or(""), query.date_to.as_deref().unwrap_or(""));
        qido = qido.matching("StudyDate", &range);
    }
    qido
}

/// One line of the workstation's worklist: a study that is local, on the PACS, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorklistEntry {
    pub study_uid: String,
    pub patient_id: String,
    pub patient_name: String,
    pub date: String,
    pub description: String,
    pub accession_number: String,
    pub modalities: String,
    /// Instances in the local store (0 when only on the PACS).
    pub local_instances: u32,
    /// Instances the PACS reports (None when not on the PACS, or not asked).
    pub pacs_instances: Option<i64>,
    /// Results of this study waiting in the outbox.
    pub outbox_pending: usize,
    /// Finished analyses of its series.
    pub analysed: usize,
    /// Signed reports of it among them.
    pub signed: usize,
    /// Objects of it (results, reports) the PACS confirmed.
    pub sent: usize,
}

/// The merged worklist: local and PACS studies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergedWorklist {
    pub entries: Vec<WorklistEntry>,
    /// Why the PACS's studies are missing (it is unreachable), if they are.
    pub warning: Option<String>,
    /// More studies match than the query's limit, in the store or on the PACS: the list is not
    /// all of them, and the search should be narrowed.
    pub more: bool,
}

/// The local store's studies and, when a PACS is configured and reachable, its matching
/// studies, merged by Study Instance UID, newest first. Each side gives at most the query's
/// limit, and says when it has more. An unreachable PACS is not an error: the local list
/// comes back with the reason (offline first).
pub async fn worklist_with_pacs(
    store_dir: &Path,
    settings: Option<&PacsSettings>,
    query: &lightbox_store::WorklistQuery,
) -> Result<MergedWorklist, WorkflowError> {
    // One more than the limit tells whether there are more.
    let limit = query.limit.max(1);
    let wider = lightbox_store::WorklistQuery { limit: limit.saturating_add(1), ..query.clone() };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut more = false;
    let store = Store::open(store_dir)?;
    let pending_uids: Vec<String> = store
        .outbox(None)?
        .into_iter()
        .filter(|i| matches!(i.state, OutboxState::Pending | OutboxState::Sending | OutboxState::Failed))
        .map(|i| i.study_uid)
        .collect();
    let sent_uids: Vec<String> = store.outbox(Some(OutboxState::Sent))?.into_iter().map(|i| i.study_uid).collect();
    // Finished analyses (and how many are signed) per study.
    let mut analysed: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for row in crate::pipeline::results(store_dir)?.into_iter().filter(|r| r.state == "done") {
        if let Some(study) = store.study_of_series(&row.series_uid)? {
            let counts = analysed.entry(study).or_default();
            counts.0 += 1;
            counts.1 += usize::from(row.signed_by.is_some());
        }
    }
    let mut local = store.worklist(&wider)?;
    more |= local.len() > limit;
    local.truncate(limit);
    let mut entries: Vec<WorklistEntry> = local
        .into_iter()
        .map(|s| WorklistEntry {
            outbox_pending: pending_uids.iter().filter(|u| **u == s.study_uid).count(),
            sent: sent_uids.iter().filter(|u| **u == s.study_uid).count(),
            analysed: analysed.get(&s.study_uid).map_or(0, |c| c.0),
            signed: analysed.get(&s.study_uid).map_or(0, |c| c.1),
            study_uid: s.study_uid,
            patient_id: s.patient_id,
            patient_name: s.patient_name,
            date: s.date,
            description: s.description,
            accession_number: s.accession_number,
            modalities: s.modalities,
            local_instances: s.instances,
            pacs_instances: None,
        })
        .collect();
    drop(store);
    let mut warning = None;
    if let Some(settings) = settings {
        let qido = qido_for(&wider);
        match pacs_search_studies(settings, &qido).await {
            Ok(mut remote) => {
                more |= remote.len() > limit;
                remote.truncate(limit);
                for r in remote {
                    match entries.iter_mut().find(|e| e.study_uid == r.study_uid) {
                        Some(e) => e.pacs_instances = r.instances,
                        None => entries.push(WorklistEntry {
                            study_uid: r.study_uid,
                            patient_id: r.patient_id,
                            patient_name: r.patient_name,
                            date: r.date,
                            description: r.description,
                            accession_number: r.accession_number,
                            modalities: r.modalities,
                            local_instances: 0,
                            pacs_instances: r.instances,
                            ..Default::default()
                        }),
                    }
                }
            }
            Err(e) => warning = Some(format!("PACS {} not reachable, showing local studies only: {e}", settings.name)),
        }
    }
    entries.sort_by(|a, b| b.date.cmp(&a.date).then_with(|| a.study_uid.cmp(&b.study_uid)));
    Ok(MergedWorklist { entries, warning, more })
}

/// What [`outbox_enqueue`] queued.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub queued: usize,
    /// Queued (or sent) before: not queued again.
    pub already_queued: usize,
    pub not_dicom: Vec<(PathBuf, String)>,
}

/// Puts DICOM files (a file or a folder, recursively) in the outbox for `settings.name`. Nothing
/// is sent here: [`outbox_drain`] sends.
pub fn outbox_enqueue(store_dir: &Path, settings_name: &str, path: &Path) -> Result<Queued, WorkflowError> {
    let mut store = Store::open(store_dir)?;
    let mut queued = Queued::default();
    for file in files_under(path)? {
        match store.outbox_enqueue(&file, settings_name) {
            Ok(Enqueued::Queued(_)) => queued.queued += 1,
            Ok(Enqueued::AlreadyQueued(_)) => queued.already_queued += 1,
            Err(lightbox_store::StoreError::Dicom(e)) => queued.not_dicom.push((file, e.to_string())),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(queued)
}

/// Sends what is due in the outbox for this PACS.
pub async fn outbox_drain(store_dir: &Path, settings: &PacsSettings) -> Result<DrainReport, WorkflowError> {
    let client = settings.client()?;
    let store = Store::open(store_dir)?;
    let destination = lightbox_pacs::outbox::Destination {
        name: &settings.name,
        web: &client,
        dimse_fallback: settings.dimse.as_ref(),
    };
    Ok(lightbox_pacs::outbox::drain(&store, &destination).await?)
}

/// Outbox rows, oldest first.
pub fn outbox_list(store_dir: &Path) -> Result<Vec<OutboxItem>, WorkflowError> {
    Ok(Store::open(store_dir)?.outbox(None)?)
}

/// Puts a refused (or cancelled) row back in the queue; false when it was in another state.
pub fn outbox_retry(store_dir: &Path, id: i64) -> Result<bool, WorkflowError> {
    let store = Store::open(store_dir)?;
    let requeued = store.outbox_requeue(id)?;
    if requeued {
        store.audit("lightbox", "outbox-retry", &id.to_string(), "queued again")?;
    }
    Ok(requeued)
}

/// [`outbox_drain`] from synchronous code (a worker thread): on its own small runtime.
pub fn outbox_drain_blocking(store_dir: &Path, settings: &PacsSettings) -> Result<DrainReport, WorkflowError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WorkflowError::Io { path: store_dir.to_owned(), source })?;
    runtime.block_on(outbox_drain(store_dir, settings))
}

/// Takes a pending or refused row out of the outbox; false when it is being sent or was sent.
pub fn outbox_cancel(store_dir: &Path, id: i64) -> Result<bool, WorkflowError> {
    let store = Store::open(store_dir)?;
    let cancelled = store.outbox_cancel(id)?;
    if cancelled {
        store.audit("lightbox", "outbox-cancel", &id.to_string(), "taken out of the outbox")?;
    }
    Ok(cancelled)
}

/// Whether the PACS answers, and how fast: one QIDO for at most one study.
#[derive(Clone, Debug, PartialEq)]
pub struct PacsStatus {
    pub name: String,
    pub url: String,
    pub reachable: bool,
    pub millis: u64,
    /// Why not, in words (empty when reachable).
    pub detail: String,
    /// The stable error code when not reachable.
    pub code: String,
}

pub async fn pacs_status(settings: &PacsSettings) -> PacsStatus {
    let started = std::time::Instant::now();
    let result = pacs_search_studies(settings, &QidoQuery::new().limit(1)).await;
    let millis = started.elapsed().as_millis() as u64;
    let (reachable, detail, code) = match result {
        Ok(_) => (true, String::new(), String::new()),
        Err(e) => (false, e.to_string(), e.code().to_owned()),
    };
    PacsStatus { name: settings.name.clone(), url: settings.web.base_url.clone(), reachable, millis, detail, code }
}

/// Starts the C-STORE SCP: pushed instances land in the store at `store_dir`.
/// Only associations calling us by `ae_title` are accepted, and, when `allowed_calling_aets` is
/// not empty, only from those calling AE titles.
pub fn listen(
    store_dir: &Path,
    ae_title: &str,
    allowed_calling_aets: &[String],
    bind: std::net::SocketAddr,
    events: Option<std::sync::mpsc::Sender<ScpEvent>>,
) -> Result<ScpHandle, WorkflowError> {
    let scp = lightbox_pacs::dimse::StoreScp::bind(ScpConfig {
        ae_title: ae_title.to_owned(),
        bind,
        store_root: store_dir.to_owned(),
        check_called_ae: true,
        allowed_calling_aets: allowed_calling_aets.to_vec(),
    })?;
    Ok(scp.spawn(events)?)
}

/// C-ECHO to a DIMSE peer.
pub fn echo(peer: &DimsePeer) -> Result<(), WorkflowError> {
    Ok(lightbox_pacs::dimse::echo(peer)?)
}

fn actor() -> String {
    std::env::var("USER").unwrap_or_else(|_| "lightbox".into())
}

fn files_under(path: &Path) -> Result<Vec<PathBuf>, WorkflowError> {
    let io = |source| WorkflowError::Io { path: path.to_owned(), source };
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?.path();
            if entry.is_dir() {
                dirs.push(entry);
            } else {
                files.push(entry);
            }
        }
    }
    files.sort();
    Ok(files)
}
