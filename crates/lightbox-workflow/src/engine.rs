//! The workflow engine: series arrive (DIMSE push, retrieval, import), are dispatched by the
//! site's rules once they have settled (no new instance for a while, so a series pushed in parts
//! is analysed once, whole), become persisted jobs, and run on their device class: one GPU job at
//! a time, CPU jobs in parallel within a budget. Jobs left queued, or running by a process that
//! died, are picked up again. Results of auto-send rules go to the outbox, which is drained.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lightbox_store::Store;

use crate::WorkflowError;
use crate::pacs::PacsSettings;
use crate::pipeline::{self, PipelineOutcome, Rules};

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A series is dispatched once no instance of it arrived for this long.
    pub settle: Duration,
    /// CPU jobs that may run at once.
    pub cpu_jobs: usize,
    /// GPU jobs that may run at once (one: a second would only compete for the same memory).
    pub gpu_jobs: usize,
    /// How often the store is looked at for series that arrived by other routes (retrieval,
    /// import), and for jobs queued by others or orphaned by a crash.
    pub poll: Duration,
    /// How long a job may wait for the rest of its input (a series never sent, or sent and not
    /// recognised) before it is failed, saying what is missing.
    pub wait_limit: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            settle: Duration::from_secs(5),
            cpu_jobs: (cores / 2).max(1),
            gpu_jobs: 1,
            poll: Duration::from_secs(10),
            wait_limit: Duration::from_secs(12 * 3600),
        }
    }
}

impl EngineConfig {
    /// The defaults, overridden by `LIGHTBOX_SETTLE_MS`, `LIGHTBOX_ENGINE_POLL_MS`,
    /// `LIGHTBOX_CPU_JOBS`, `LIGHTBOX_WAIT_LIMIT_S`.
    pub fn from_env() -> Self {
        let mut config = Self::default();
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        if let Some(ms) = var("LIGHTBOX_SETTLE_MS") {
            config.settle = Duration::from_millis(ms);
        }
        if let Some(ms) = var("LIGHTBOX_ENGINE_POLL_MS") {
            config.poll = Duration::from_millis(ms.max(100));
        }
        if let Some(n) = var("LIGHTBOX_CPU_JOBS") {
            config.cpu_jobs = (n as usize).max(1);
        }
        if let Some(s) = var("LIGHTBOX_WAIT_LIMIT_S") {
            config.wait_limit = Duration::from_secs(s);
        }
        config
    }
}

/// What the engine did, for the CLI or the workstation to show.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    Queued {
        job_id: i64,
        pipeline: String,
        series_uid: String,
        rule: String,
    },
    /// A series settled but no rule matched it.
    Unmatched {
        series_uid: String,
    },
    /// The patient's prior was not in the store and was retrieved from the PACS.
    PriorRetrieved {
        series_uid: String,
        prior_uid: String,
    },
    /// The same input ran before; nothing is done again.
    AlreadyDone {
        job_id: i64,
        pipeline: String,
        series_uid: String,
    },
    Started {
        job_id: i64,
        device: String,
    },
    Finished {
        job_id: i64,
        pipeline: String,
        series_uid: String,
        outcome: PipelineOutcome,
    },
    Failed {
        job_id: i64,
        error: String,
    },
    /// The job's input is incomplete (see [`WorkflowError::Incomplete`]): not a failure.
    Waiting {
        job_id: i64,
        detail: String,
    },
    /// The job's input changed after it was queued (see [`WorkflowError::InputChanged`]).
    Superseded {
        job_id: i64,
        detail: String,
    },
    /// The outbox was drained after results were queued: sent, failed.
    Sent {
        sent: usize,
        failed: usize,
        detail: String,
    },
    /// Dispatching a series failed (its facts could not be read, the store failed…).
    Error {
        detail: String,
    },
}

impl std::fmt::Display for EngineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queued { job_id, pipeline, series_uid, rule } => {
                write!(f, "job {job_id} queued: rule {rule:?} -> {pipeline} on {series_uid}")
            }
            Self::Unmatched { series_uid } => write!(f, "series {series_uid}: no rule matches"),
            Self::PriorRetrieved { series_uid, prior_uid } => {
                write!(f, "series {series_uid}: prior {prior_uid} retrieved from the PACS")
            }
            Self::AlreadyDone { job_id, pipeline, series_uid } => {
                write!(f, "pipeline {pipeline} on {series_uid}: done before (job {job_id}), not run again")
            }
            Self::Started { job_id, device } => write!(f, "job {job_id} started on the {device}"),
            Self::Finished { pipeline, series_uid, outcome, .. } => {
                f.write_str(&outcome.describe(pipeline, series_uid))
            }
            Self::Failed { job_id, error } => write!(f, "job {job_id} failed: {error}"),
            Self::Waiting { job_id, detail } => write!(f, "job {job_id} waiting: {detail}"),
            Self::Superseded { job_id, detail } => write!(f, "job {job_id} superseded: {detail}"),
            Self::Sent { sent, failed, detail } => write!(f, "outbox: sent {sent}, refused {failed} ({detail})"),
            Self::Error { detail } => write!(f, "error: {detail}"),
        }
    }
}

enum Message {
    /// Look for runnable jobs now (one was queued through the API).
    Wake,
    Arrived(Vec<String>),
    /// Found in the store by polling: dispatched like arrivals, but without "done before" or
    /// "no rule matches" chatter.
    Found(Vec<String>),
    Finished(i64),
    Stop,
}

/// A running engine. Dropping it stops dispatching; jobs already running finish.
pub struct Engine {
    tx: Sender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine on a store: it first resumes jobs left queued or orphaned.
    ///
    /// Where the engine starts looking for arrivals is fixed before this returns, so a series
    /// imported the moment after (by another process, while the engine thread is still
    /// starting) is found, not skipped as "before the engine started".
    pub fn start(
        store_dir: &Path,
        rules: Rules,
        pacs: Option<PacsSettings>,
        config: EngineConfig,
        events: Sender<EngineEvent>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let dispatcher = Dispatcher {
            store_dir: store_dir.to_owned(),
            rules,
            pacs: pacs.map(Arc::new),
            slots: Arc::new(Slots::new(config.cpu_jobs, config.gpu_jobs)),
            config,
            events,
            tx: tx.clone(),
            pending: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            // If the store cannot be read now, the thread tries again on its first look.
            watermark: Store::open(store_dir).and_then(|s| starting_point(&s)).ok(),
        };
        let thread = std::thread::Builder::new().name("lightbox-engine".into()).spawn(move || dispatcher.run(rx)).ok();
        Self { tx, thread }
    }

    /// Instances of these series arrived (or the series was imported or retrieved).
    pub fn arrived(&self, series_uids: Vec<String>) {
        let _ = self.tx.send(Message::Arrived(series_uids));
    }

    /// A job was queued (e.g. through the REST API): run it without waiting for the next poll.
    pub fn wake(&self) {
        let _ = self.tx.send(Message::Wake);
    }

    /// Jobs this process is running now (for a graceful shutdown).
    pub fn running(store_dir: &Path) -> Result<usize, WorkflowError> {
        Ok(Store::open(store_dir)?.jobs()?.iter().filter(|j| j.state == "running").count())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Engine state key: the arrival number (see [`Store::last_arrival`]) up to which series have
/// been dispatched.
const WATERMARK: &str = "dispatched_through";

/// Where an engine starting on `store` looks for arrivals from: where the last run finished
/// dispatching, or (the first run on a store) the newest arrival now, saved, so an archive the
/// engine is switched on for is not analysed wholesale.
fn starting_point(store: &Store) -> Result<i64, lightbox_store::StoreError> {
    match store.engine_state(WATERMARK)?.map(|saved| saved.parse::<i64>()) {
        Some(Ok(saved)) => return Ok(saved),
        Some(Err(e)) => tracing::warn!("the saved dispatch point is not a number ({e}); starting from now"),
        None => {}
    }
    let now = store.last_arrival()?;
    store.set_engine_state(WATERMARK, &now.to_string())?;
    Ok(now)
}

/// Engine state key prefix: a series retrieved from the PACS as another series' prior.
const RETRIEVED_PRIOR: &str = "retrieved-prior/";

/// Modalities that are not images to analyse.
pub(crate) const NOT_IMAGES: [&str; 7] = ["SEG", "SR", "PR", "KO", "RWV", "DOC", "REG"];

struct Dispatcher {
    store_dir: PathBuf,
    rules: Rules,
    pacs: Option<Arc<PacsSettings>>,
    slots: Arc<Slots>,
    config: EngineConfig,
    events: Sender<EngineEvent>,
    tx: Sender<Message>,
    /// Series waiting to settle: when their last instance arrived, and whether quietly.
    pending: BTreeMap<String, (Instant, bool)>,
    /// Instances up to this arrival number have been seen.
    watermark: Option<i64>,
    /// Jobs this process has handed to a worker.
    in_flight: BTreeSet<i64>,
}

impl Dispatcher {
    fn run(mut self, rx: Receiver<Message>) {
        self.pick_up_runnable();
        self.find_arrivals();
        let mut last_poll = Instant::now();
        loop {
            let now = Instant::now();
            let next_settle = self.pending.values().map(|(t, _)| *t + self.config.settle).min();
            let wake = next_settle.unwrap_or(now + self.config.poll).min(last_poll + self.config.poll);
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Message::Arrived(series)) => {
                    for uid in series {
                        self.pending.insert(uid, (Instant::now(), false));
                    }
                }
                Ok(Message::Found(series)) => {
                    for uid in series {
                        let entry = self.pending.entry(uid).or_insert((Instant::now(), true));
                        entry.0 = Instant::now();
                    }
                }
                Ok(Message::Finished(id)) => {
                    self.in_flight.remove(&id);
                }
                Ok(Message::Wake) => self.pick_up_runnable(),
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let settled: Vec<String> = self
                .pending
                .iter()
                .filter(|(_, (t, _))| t.elapsed() >= self.config.settle)
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in settled {
                let quiet = self.pending.remove(&uid).is_some_and(|(_, quiet)| quiet);
                if let Err(e) = self.dispatch(&uid, quiet) {
                    self.emit(EngineEvent::Error { detail: format!("dispatching series {uid}: {e}") });
                }
            }
            if self.pending.is_empty() {
                self.save_watermark();
            }
            if last_poll.elapsed() >= self.config.poll {
                last_poll = Instant::now();
                self.expire_waiting();
                self.pick_up_runnable();
                self.find_arrivals();
            }
        }
    }

    fn emit(&self, event: EngineEvent) {
        let _ = self.events.send(event);
    }

    /// Series that received instances since the last look, by any route (a retrieval, an
    /// import, another process's SCP). The first run starts from now; later runs from where
    /// the last one finished dispatching, so nothing that arrived while it was down is missed.
    fn find_arrivals(&mut self) {
        let found = Store::open(&self.store_dir).and_then(|store| {
            let since = match self.watermark {
                Some(w) => w,
                None => starting_point(&store)?,
            };
            let series = store.series_arrived_after(since)?;
            self.watermark = Some(series.last().map_or(since, |(_, at)| *at));
            Ok(series.into_iter().map(|(uid, _)| uid).collect::<Vec<_>>())
        });
        match found {
            // Into `pending` at once, not through the channel: the watermark has moved past
            // them, and it is saved whenever nothing is pending.
            Ok(series) => {
                for uid in series {
                    self.pending.entry(uid).or_insert((Instant::now(), true)).0 = Instant::now();
                }
            }
            Err(e) => self.emit(EngineEvent::Error { detail: format!("looking for new series: {e}") }),
        }
    }

    /// Records how far dispatching got (only when nothing is waiting to settle).
    fn save_watermark(&self) {
        if let Some(w) = self.watermark
            && let Err(e) = Store::open(&self.store_dir).and_then(|s| s.set_engine_state(WATERMARK, &w.to_string()))
        {
            self.emit(EngineEvent::Error { detail: format!("saving the dispatch watermark: {e}") });
        }
    }

    /// Dispatches a settled series, then plans again the study-wide jobs of its study that wait
    /// for a series (a prostate study whose T2W came first: its ADC has arrived now).
    fn dispatch(&mut self, series_uid: &str, quiet: bool) -> Result<(), WorkflowError> {
        self.dispatch_series(series_uid, quiet)?;
        let store = Store::open(&self.store_dir)?;
        let waiting = store.jobs_in_state("waiting")?;
        if waiting.is_empty() {
            return Ok(());
        }
        let study = pipeline::study_of(&store, series_uid)?;
        let mut again = BTreeSet::new();
        for job in waiting {
            let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
            if payload["study"].as_str() == Some(study.as_str())
                && let Some(series) = payload["series"].as_str()
                && series != series_uid
            {
                again.insert(series.to_owned());
            }
        }
        for series in again {
            if let Err(e) = self.dispatch_series(&series, true) {
                self.emit(EngineEvent::Error {
                    detail: format!("planning again series {series}, which waits for the rest of its study: {e}"),
                });
            }
        }
        Ok(())
    }

    /// Matches a settled series against the rules and queues a job per matching rule.
    fn dispatch_series(&mut self, series_uid: &str, quiet: bool) -> Result<(), WorkflowError> {
        let series = pipeline::series_to_match(&self.store_dir, series_uid)?;
        // Results and documents are not analysed (ours would otherwise come back as input).
        if NOT_IMAGES.contains(&series.facts.modality.as_str()) {
            return Ok(());
        }
        let store = Store::open(&self.store_dir)?;
        // A prior retrieved for another series' comparison is not analysed itself (and so never
        // fetches its own prior: no walk through the patient's history).
        if store.engine_state(&format!("{RETRIEVED_PRIOR}{series_uid}"))?.is_some() {
            return Ok(());
        }
        let mut matched = false;
        let mut runnable = Vec::new();
        for (rule, hit, _) in self.rules.explain(&series) {
            if !hit {
                continue;
            }
            matched = true;
            // Pipelines that compare with a prior look for it on the PACS too, before planning.
            if pipeline::needs_prior(&rule.pipeline)
                && let Some(pacs) = &self.pacs
            {
                match crate::pacs::fetch_prior_blocking(&self.store_dir, pacs, series_uid) {
                    Ok(Some(prior)) => {
                        store.set_engine_state(&format!("{RETRIEVED_PRIOR}{prior}"), series_uid)?;
                        self.emit(EngineEvent::PriorRetrieved { series_uid: series_uid.to_owned(), prior_uid: prior });
                    }
                    Ok(None) => {}
                    Err(e) => self.emit(EngineEvent::Error {
                        detail: format!("looking for the prior of {series_uid} on the PACS: {e}"),
                    }),
                }
            }
            let send_to = if rule.auto_send { self.pacs.as_ref().map(|p| p.name.as_str()) } else { None };
            let plan = pipeline::plan(
                &store,
                &rule.pipeline,
                series_uid,
                rule.threshold.unwrap_or(1000.0),
                send_to,
                rule.model.as_deref(),
                rule.zone_model.as_deref(),
            )?;
            let (job_id, state) =
                store.job_enqueue(&plan.key, &plan.pipeline, plan.device, &plan.payload.to_string())?;
            match state.as_str() {
                "queued" => {
                    self.emit(EngineEvent::Queued {
                        job_id,
                        pipeline: plan.pipeline.clone(),
                        series_uid: series_uid.to_owned(),
                        rule: rule.name.clone(),
                    });
                    runnable.push((job_id, plan.device.to_owned()));
                }
                "done" if !quiet => self.emit(EngineEvent::AlreadyDone {
                    job_id,
                    pipeline: plan.pipeline.clone(),
                    series_uid: series_uid.to_owned(),
                }),
                // Running elsewhere, or failed, cancelled or waiting (a re-run is the user's call).
                _ => {}
            }
        }
        if !matched && !quiet {
            self.emit(EngineEvent::Unmatched { series_uid: series_uid.to_owned() });
        }
        for (id, device) in runnable {
            self.spawn(id, device);
        }
        Ok(())
    }

    /// Jobs that waited too long for the rest of their input fail, saying what is missing.
    fn expire_waiting(&self) {
        match Store::open(&self.store_dir).and_then(|s| s.jobs_expire_waiting(self.config.wait_limit.as_secs_f64())) {
            Ok(expired) => {
                for (job_id, error) in expired {
                    self.emit(EngineEvent::Failed { job_id, error });
                }
            }
            Err(e) => self.emit(EngineEvent::Error { detail: format!("looking for jobs that waited too long: {e}") }),
        }
    }

    /// Jobs queued by others or left by a crashed runner.
    fn pick_up_runnable(&mut self) {
        match Store::open(&self.store_dir).and_then(|s| s.jobs_runnable()) {
            Ok(jobs) => {
                for job in jobs {
                    self.spawn(job.id, job.device);
                }
            }
            Err(e) => self.emit(EngineEvent::Error { detail: format!("looking for jobs to run: {e}") }),
        }
    }

    /// Runs a job on a worker thread once its device has a free slot.
    fn spawn(&mut self, id: i64, device: String) {
        if !self.in_flight.insert(id) {
            return;
        }
        let (store_dir, slots, events, tx, pacs) =
            (self.store_dir.clone(), self.slots.clone(), self.events.clone(), self.tx.clone(), self.pacs.clone());
        let worker = move || {
            let gpu = device == "gpu";
            let _slot = slots.acquire(gpu);
            let taken = Store::open(&store_dir).and_then(|s| {
                Ok(if s.job_take(id, pipeline::runner_id(), pipeline::lease_secs())? { s.job(id)? } else { None })
            });
            if let Ok(Some(job)) = taken {
                let series_uid = pipeline::payload_series(&job.payload);
                let _ = events.send(EngineEvent::Started { job_id: id, device: device.clone() });
                match pipeline::execute(&store_dir, id) {
                    Ok(outcome) => {
                        let _ =
                            events.send(EngineEvent::Finished { job_id: id, pipeline: job.kind, series_uid, outcome });
                        // Also when this run queued nothing new: a runner that crashed may have
                        // queued the results and never sent them.
                        let auto_send = serde_json::from_str::<serde_json::Value>(&job.payload)
                            .is_ok_and(|p| p["send_to"].is_string());
                        if auto_send && let Some(pacs) = &pacs {
                            let _ = events.send(drain(&store_dir, pacs));
                        }
                    }
                    Err(e @ WorkflowError::Incomplete { .. }) => {
                        let _ = events.send(EngineEvent::Waiting { job_id: id, detail: e.to_string() });
                        // What it waits for may have arrived while it ran (nothing was waiting
                        // then to plan again): its series is dispatched once more.
                        let _ = tx.send(Message::Found(vec![series_uid]));
                    }
                    Err(e @ WorkflowError::InputChanged { .. }) => {
                        let _ = events.send(EngineEvent::Superseded { job_id: id, detail: e.to_string() });
                    }
                    Err(e) => {
                        let _ = events.send(EngineEvent::Failed { job_id: id, error: e.to_string() });
                    }
                }
            }
            let _ = tx.send(Message::Finished(id));
        };
        if let Err(e) = std::thread::Builder::new().name(format!("lightbox-job-{id}")).spawn(worker) {
            self.in_flight.remove(&id);
            self.emit(EngineEvent::Error { detail: format!("starting job {id}: {e}") });
        }
    }
}

fn drain(store_dir: &Path, pacs: &PacsSettings) -> EngineEvent {
    // One drain at a time in this process: a drain that finds another running leaves the rest
    // to it, and that one may have listed the rows before this job queued its results.
    static DRAINING: Mutex<()> = Mutex::new(());
    let _one = DRAINING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match crate::pacs::outbox_drain_blocking(store_dir, pacs) {
        Ok(report) => EngineEvent::Sent {
            sent: report.sent + report.already_there + report.sent_by_dimse,
            failed: report.failed,
            detail: format!("{report:?}"),
        },
        Err(e) => EngineEvent::Error { detail: format!("sending results: {e}") },
    }
}

/// Per-device job slots: a counting semaphore for the GPU and one for the CPU budget.
pub struct Slots {
    used: Mutex<[usize; 2]>,
    limits: [usize; 2],
    freed: Condvar,
}

/// A held slot; released on drop.
pub struct Slot<'a> {
    slots: &'a Slots,
    gpu: bool,
}

impl Slots {
    pub fn new(cpu: usize, gpu: usize) -> Self {
        Self { used: Mutex::new([0, 0]), limits: [cpu.max(1), gpu.max(1)], freed: Condvar::new() }
    }

    /// Waits for a free slot on the device.
    pub fn acquire(&self, gpu: bool) -> Slot<'_> {
        let i = usize::from(gpu);
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while used[i] >= self.limits[i] {
            used = self.freed.wait(used).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        used[i] += 1;
        Slot { slots: self, gpu }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        used[usize::from(self.gpu)] -= 1;
        self.slots.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `n` jobs of 50 ms on the device and returns the most that ran at once.
    fn most_at_once(slots: &Arc<Slots>, gpu: bool, n: usize) -> usize {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (slots, now, most) = (slots.clone(), now.clone(), most.clone());
                std::thread::spawn(move || {
                    let _slot = slots.acquire(gpu);
                    let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(running, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        most.load(Ordering::SeqCst)
    }

    /// Another process may import the moment the engine is started (the CLI prints "listening"
    /// as soon as `start` returns): where the engine looks from must already be fixed then, or
    /// the thread, starting later, would take "now" after that import and never see it.
    #[test]
    fn where_arrivals_are_looked_for_from_is_fixed_before_start_returns() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../demo/prostate-adc");
        anyhow::ensure!(crate::import(dir.path(), &demo)?.imported == 20);
        let before = Store::open(dir.path())?.last_arrival()?;
        anyhow::ensure!(before == 20, "{before}");
        let (events, _seen) = std::sync::mpsc::channel();
        let engine = Engine::start(dir.path(), Rules::default(), None, EngineConfig::default(), events);
        let from = Store::open(dir.path())?.engine_state(WATERMARK)?;
        drop(engine);
        anyhow::ensure!(from == Some(before.to_string()), "{from:?} (before start: {before})");
        // A restart goes on from the saved point (here: as if it had stopped at arrival 7), so
        // what arrived while the engine was down is looked at.
        Store::open(dir.path())?.set_engine_state(WATERMARK, "7")?;
        let (events, _seen) = std::sync::mpsc::channel();
        let again = Engine::start(dir.path(), Rules::default(), None, EngineConfig::default(), events);
        let from = Store::open(dir.path())?.engine_state(WATERMARK)?;
        drop(again);
        anyhow::ensure!(from.as_deref() == Some("7"), "{from:?}");
        Ok(())
    }

    #[test]
    fn one_gpu_job_at_a_time_and_cpu_jobs_within_the_budget() {
        let slots = Arc::new(Slots::new(3, 1));
        assert_eq!(most_at_once(&slots, true, 4), 1);
        assert_eq!(most_at_once(&slots, false, 8), 3);
        // Both at once: the GPU job does not take a CPU slot.
        let (s1, s2) = (slots.clone(), slots.clone());
        let gpu = std::thread::spawn(move || most_at_once(&s1, true, 3));
        let cpu = std::thread::spawn(move || most_at_once(&s2, false, 6));
        assert_eq!(gpu.join().ok(), Some(1));
        assert_eq!(cpu.join().ok(), Some(3));
    }
}
