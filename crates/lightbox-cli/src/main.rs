//! `lightbox`: the headless Lightbox commands.

// Doc comments on the arguments are clap's `--help` text, written for a terminal (`<k>`, bare
// URLs), not for rustdoc.
#![allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lightbox_core::SeriesInfo;
use lightbox_workflow::ScanReport;

#[derive(Parser)]
#[command(name = "lightbox", version, about = "Lightbox radiology workstation, headless commands")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Scan a DICOM file or folder and list its patients, studies and series.
    Info {
        /// File or folder (searched recursively).
        path: PathBuf,
    },
    /// Convert image series to NIfTI, one file per display set (4-D with time points).
    Export {
        /// File or folder (searched recursively).
        path: PathBuf,
        /// Output folder for NIfTI files.
        #[arg(long, value_name = "DIR")]
        nifti: PathBuf,
        /// Only this Series Instance UID.
        #[arg(long)]
        series: Option<String>,
        /// Write .nii.gz instead of .nii.
        #[arg(long)]
        gzip: bool,
    },
    /// Import DICOM files into the local store (instances already stored are skipped).
    Import {
        /// File or folder (searched recursively).
        path: PathBuf,
        /// Store folder (default: LIGHTBOX_STORE or ~/.local/share/lightbox/store).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Check the local store: every indexed instance has its file, unchanged. Exits non-zero
    /// when one is missing or damaged. With --repair, first indexes the files interrupted
    /// imports left (whole DICOM files, never deleted) and removes their leftovers.
    Verify {
        #[arg(long)]
        repair: bool,
        /// With --repair: leave alone files younger than this (an import may be writing them).
        #[arg(long, default_value_t = 3600)]
        min_age_s: u64,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// List studies in the local store. Text filters take * and ? wildcards.
    Worklist {
        #[arg(long)]
        store: Option<PathBuf>,
        #[command(flatten)]
        filter: StudyFilter,
    },
    /// Talk to the PACS: query, retrieve, send. Connection settings come from flags or LIGHTBOX_PACS_*.
    Pacs {
        #[command(flatten)]
        pacs: Box<PacsArgs>,
        #[command(subcommand)]
        command: PacsCommand,
    },
    /// The local outbox of results waiting for the PACS.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Run an analysis pipeline on a stored series (once per series, pipeline version and
    /// parameters); the SEG and SR go into the store, and with --send-to into the outbox.
    Run {
        /// The pipeline: threshold-volume, or brain-atrophy (a T1; with the patient's prior T1 in
        /// the store, also the brain volume change against the healthy norm), or ms-lesion-change (a
        /// FLAIR against the patient's prior FLAIR), or breast-dce (a dynamic contrast-enhanced series).
        pipeline: String,
        #[arg(long)]
        series: String,
        #[arg(long, default_value_t = 1000.0)]
        threshold: f64,
        /// Queue the results for this PACS (name as in the outbox).
        #[arg(long)]
        send_to: Option<String>,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Analysis results and whether a radiologist signed them.
    Results {
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// The workflow engine, the DIMSE SCP and the outbox behind a REST API, as one daemon
    /// (see README "lightbox serve"). Loopback only unless --tokens is given.
    Serve {
        /// Address to bind (default 127.0.0.1; `[serve]` in the settings file may set it).
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Port (default 8480).
        #[arg(long)]
        port: Option<u16>,
        /// A file of SHA-256 hashes of the bearer tokens that may call the API, one per line
        /// (`lightbox token-hash` makes one); required for a bind beyond loopback.
        #[arg(long)]
        tokens: Option<PathBuf>,
        /// Dispatch rules (TOML) for what arrives; results go to the PACS only with auto_send.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Also receive DICOM pushes (C-STORE SCP) on this port.
        #[arg(long)]
        listen_port: Option<u16>,
        #[arg(long, default_value = "LIGHTBOX")]
        aet: String,
        /// Requests per second per client, a burst of twice that (default 200).
        #[arg(long)]
        rate: Option<u32>,
        /// Serve HTTPS with this certificate chain (PEM) …
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// … and this private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Mutual TLS: only clients with a certificate signed by this CA (PEM) get a connection.
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Check the configuration, the store and the PACS, then exit.
        #[arg(long)]
        check: bool,
        /// Print the OpenAPI document and exit.
        #[arg(long)]
        openapi: bool,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Print the SHA-256 hash of a bearer token read from stdin (for `serve --tokens`).
    TokenHash,
    /// Open the viewer on a stored series beside the patient's prior (same description or
    /// sequence, newest earlier study), slices linked.
    Compare {
        #[arg(long)]
        series: String,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Open the viewer on an analysis result: its series with the segmentation drawn over it.
    View {
        #[arg(long)]
        job: i64,
        /// Save the lengths you measure (M in the viewer) for the report you sign, as this name.
        #[arg(long = "as")]
        author: Option<String>,
        /// Open at this point, patient (LPS) mm `X,Y,Z` (a lesion of the result).
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        at: Option<Vec<f64>>,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Read a DICOM SEG or SR (ours or anyone's): segments and frames, or measurement groups
    /// and values. With --images, places the SEG on that series and counts voxels per segment.
    Inspect {
        file: PathBuf,
        /// The source series (file or folder) a SEG is drawn on.
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// Your own measurements on a series (length, diameter, area, volume, mean, sd): they go
    /// into the report you sign, marked as yours.
    Measure {
        #[command(subcommand)]
        command: MeasureCommand,
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Sign a result as the reviewing radiologist: a VERIFIED SR naming you, with the SEG,
    /// goes into the outbox (send it with `lightbox pacs drain`).
    Sign {
        /// The job of the result (see `lightbox results`).
        #[arg(long)]
        job: i64,
        /// Your name as it should appear in the report, e.g. 'Doe^Jane'.
        #[arg(long = "as")]
        radiologist: String,
        /// Leave the AI finding out of the report (its segmentation is not sent).
        #[arg(long, conflicts_with = "volume_ml")]
        reject: bool,
        /// Replace the AI volume by your own value, in mL.
        #[arg(long)]
        volume_ml: Option<f64>,
        #[arg(long, default_value = "pacs")]
        send_to: String,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Run the exporter plugins (executables in --plugins, or LIGHTBOX_PLUGINS) on a result.
    ExportResults {
        #[arg(long)]
        job: i64,
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Longest a plugin may run, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Analyses queued, running, done, failed, cancelled, waiting (for the rest of their series)
    /// or superseded, newest first; cancel or re-run one.
    Jobs {
        #[command(subcommand)]
        command: Option<JobsCommand>,
        #[arg(long, global = true)]
        store: Option<PathBuf>,
    },
    /// Dispatch rules: which rule matches which stored series, and why.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Receive DICOM pushes (C-STORE SCP, C-ECHO) into the local store until interrupted.
    Listen {
        /// Dispatch rules (TOML): each received series that a rule matches is analysed; results
        /// of rules with auto_send go to the PACS configured by LIGHTBOX_PACS_*.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Our AE title: associations calling another title are refused.
        #[arg(long, env = "LIGHTBOX_AET", default_value = "LIGHTBOX")]
        aet: String,
        /// Calling AE titles allowed to push (repeat, or comma-separated in LIGHTBOX_LISTEN_ALLOW);
        /// without any, every caller that calls us by our AE title is accepted.
        #[arg(long, env = "LIGHTBOX_LISTEN_ALLOW", value_delimiter = ',')]
        allow: Vec<String>,
        #[arg(long, default_value_t = 11112)]
        port: u16,
        /// Address to listen on (0.0.0.0 for every interface).
        #[arg(long, default_value = "0.0.0.0")]
        bind: std::net::IpAddr,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Convert a NIfTI volume into a DICOM MR series (new UIDs, geometry per slice).
    ToDicom {
        /// NIfTI file (.nii or .nii.gz); its first time point is converted.
        nifti: PathBuf,
        /// Output folder for the series' files.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long)]
        patient_id: String,
        #[arg(long, default_value = "")]
        patient_name: String,
        /// Study date, YYYYMMDD.
        #[arg(long, default_value = "")]
        study_date: String,
        /// The patient's birth date, YYYYMMDD (age-dependent analyses such as atrophy need it).
        #[arg(long)]
        birth_date: Option<String>,
        #[arg(long, default_value = "")]
        study_description: String,
        #[arg(long, default_value = "")]
        series_description: String,
        #[arg(long, default_value_t = 1)]
        series_number: i32,
    },
    /// On-device model packages (models/, or LIGHTBOX_MODELS).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Run an imported segmentation model (nnU-Net v2) on a scan: one input per channel, in the
    /// model's channel order; writes the labels as NIfTI. AI output, not for clinical use.
    Predict {
        /// The model's folder name under the models folder.
        #[arg(long)]
        model: String,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        ai: AiArgs,
    },
    /// Brain volumes of a T1 (NIfTI file, or DICOM file or folder): intracranial volume, grey
    /// and white matter, CSF and the brain parenchymal fraction. Automated measurement (AI brain
    /// extraction), not for clinical use.
    BrainVolumes {
        input: PathBuf,
        #[command(flatten)]
        ai: AiArgs,
    },
    /// Brain atrophy between two T1s of one patient (NIfTI files, or DICOM files or folders):
    /// percent brain volume change, its yearly rate, and how it compares with what a healthy
    /// person of that age loses. Automated measurement (AI brain extraction), not for clinical use.
    Atrophy {
        baseline: PathBuf,
        followup: PathBuf,
        /// Years between the two scans (or give both dates).
        #[arg(long, conflicts_with_all = ["baseline_date", "followup_date"])]
        interval_years: Option<f64>,
        /// The baseline's study date (YYYY-MM-DD or DICOM's YYYYMMDD).
        #[arg(long, requires = "followup_date")]
        baseline_date: Option<String>,
        /// The follow-up's study date.
        #[arg(long, requires = "baseline_date")]
        followup_date: Option<String>,
        /// The patient's age in years at the follow-up, for the healthy norm.
        #[arg(long)]
        age: Option<f64>,
        #[command(flatten)]
        ai: AiArgs,
    },
    /// Brain extraction (deepbet, on this machine): writes the brain mask of a T1 (NIfTI file,
    /// or the largest series of a DICOM file or folder) as NIfTI. AI output, not for clinical use.
    BrainExtract {
        input: PathBuf,
        /// The mask to write (.nii or .nii.gz).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        ai: AiArgs,
    },
}

/// Where the models are and what runs them.
#[derive(clap::Args)]
struct AiArgs {
    /// Where the model packages are (default: LIGHTBOX_MODELS, else ./models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// auto (a GPU when there is one), cpu or gpu (default: LIGHTBOX_AI_DEVICE, else auto).
    #[arg(long)]
    device: Option<String>,
}

impl AiArgs {
    fn resolve(self) -> anyhow::Result<(PathBuf, lightbox_workflow::ai::DevicePreference)> {
        let models = self.models.unwrap_or_else(lightbox_workflow::ai::models_dir);
        let preference = match self.device {
            Some(d) => lightbox_workflow::ai::DevicePreference::parse(&d)?,
            None => lightbox_workflow::ai::DevicePreference::from_env()?,
        };
        Ok((models, preference))
    }
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Install a model from its registry package (scripts/install-models.sh fetches it):
    /// deepbet from its PyPI wheel, converted to safetensors and checked against model.toml.
    Install {
        /// The model: deepbet.
        name: String,
        /// The package file (deepbet-1.0.2-py3-none-any.whl).
        #[arg(long)]
        wheel: PathBuf,
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Import a trained nnU-Net result folder as a model package, with no Python: nnU-Net v2
    /// (plans.json, dataset.json, fold_<k>/checkpoint_final.pth) or v1, as the PI-CAI baseline
    /// ships (plans.pkl, fold_<k>/model_best.model and .model.pkl).
    Import {
        folder: PathBuf,
        /// The package's name (its folder under the models folder).
        #[arg(long)]
        name: String,
        /// The v2 configuration (a v1 folder is one configuration already).
        #[arg(long, default_value = "3d_fullres")]
        configuration: String,
        /// The fold, or several (0,1,2,3,4) imported as one ensemble whose predictions are
        /// averaged as nnU-Net averages its folds'.
        #[arg(long = "fold", value_delimiter = ',', default_value = "0")]
        folds: Vec<usize>,
        /// v1: the checkpoint (model_best, model_final_checkpoint, …); the first present of
        /// model_final_checkpoint, model_best, model_latest by default.
        #[arg(long)]
        checkpoint: Option<String>,
        /// v1: the sequence of each input channel, in order (e.g. T2W,ADC,HBV), when the
        /// plan's modality names are not the sequences.
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<String>>,
        #[arg(long)]
        models: Option<PathBuf>,
    },
    /// Train prostate-lesion-synthetic, a small lesion-detection model for tests and
    /// demonstrations, on synthetic lesions inserted into a real prostate ADC series, then score
    /// it on held-out synthetic cases. Not for clinical use (see its model card).
    TrainSynthetic {
        /// The ADC series (a DICOM folder or NIfTI).
        #[arg(long)]
        adc: PathBuf,
        /// Training steps; 0 scores the installed package without training.
        #[arg(long, default_value_t = synthetic_steps())]
        steps: usize,
        /// Held-out synthetic cases to score it on afterwards (0: none).
        #[arg(long, default_value_t = 20)]
        evaluate: usize,
        #[command(flatten)]
        ai: AiArgs,
    },
}

const fn synthetic_steps() -> usize {
    lightbox_workflow::synthetic_model::STEPS
}

/// Study filters shared by the local worklist and the PACS query.
#[derive(clap::Args)]
struct StudyFilter {
    /// Patient name, e.g. 'DOE*'.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    id: Option<String>,
    #[arg(long)]
    accession: Option<String>,
    #[arg(long)]
    modality: Option<String>,
    /// Earliest study date, YYYYMMDD.
    #[arg(long)]
    from: Option<String>,
    /// Latest study date, YYYYMMDD.
    #[arg(long)]
    to: Option<String>,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long, default_value_t = 0)]
    offset: u32,
}

impl StudyFilter {
    fn worklist_query(self) -> lightbox_workflow::WorklistQuery {
        lightbox_workflow::WorklistQuery {
            patient_name: self.name,
            patient_id: self.id,
            accession_number: self.accession,
            modality: self.modality,
            date_from: self.from,
            date_to: self.to,
            limit: self.limit,
            offset: self.offset,
            ..Default::default()
        }
    }
}

/// How to reach the PACS. Secrets come from the environment only, never from the command line
/// (which other users can see in the process list).
#[derive(clap::Args)]
struct PacsArgs {
    /// DICOMweb root, e.g. https://pacs.example.org/dicom-web
    #[arg(global = true, long, env = "LIGHTBOX_PACS_URL")]
    url: Option<String>,
    /// Name of this PACS in the outbox and the audit log.
    #[arg(global = true, id = "pacs_name", long = "pacs-name", env = "LIGHTBOX_PACS_NAME", default_value = "pacs")]
    name: String,
    /// HTTP basic user; the password is read from LIGHTBOX_PACS_PASSWORD.
    #[arg(global = true, long, env = "LIGHTBOX_PACS_USER")]
    user: Option<String>,
    /// PEM file of CA certificates to trust in addition to the system's.
    #[arg(global = true, long, env = "LIGHTBOX_PACS_CA")]
    ca: Option<PathBuf>,
    /// Trust only --ca, not the system's certificate authorities.
    #[arg(global = true, long)]
    ca_only: bool,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(global = true, long, env = "LIGHTBOX_PACS_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(global = true, long, env = "LIGHTBOX_PACS_KEY", requires = "cert")]
    key: Option<PathBuf>,
    /// DIMSE fallback for sending: the PACS's AE title (with --dimse-host/--dimse-port).
    #[arg(global = true, long, env = "LIGHTBOX_PACS_AET")]
    dimse_aet: Option<String>,
    #[arg(global = true, long, env = "LIGHTBOX_PACS_DIMSE_HOST", default_value = "127.0.0.1")]
    dimse_host: String,
    #[arg(global = true, long, env = "LIGHTBOX_PACS_DIMSE_PORT", default_value_t = 104)]
    dimse_port: u16,
    /// Our AE title.
    #[arg(global = true, long, env = "LIGHTBOX_AET", default_value = "LIGHTBOX")]
    aet: String,
    /// Tries per request (connection errors and 5xx are retried, 4xx never).
    #[arg(global = true, long, default_value_t = 4)]
    attempts: u32,
    /// Longest wait for the PACS to answer or send more bytes, in seconds.
    #[arg(global = true, long, default_value_t = 60)]
    timeout_secs: u64,
}

impl PacsArgs {
    fn settings(&self) -> anyhow::Result<lightbox_workflow::pacs::PacsSettings> {
        use lightbox_workflow::pacs::{Auth, DicomWebConfig, DimsePeer, TlsOptions};
        let auth = match (&self.user, std::env::var("LIGHTBOX_PACS_TOKEN")) {
            (Some(user), _) => Auth::Basic {
                user: user.clone(),
                password: std::env::var("LIGHTBOX_PACS_PASSWORD")
                    .context("--user given but LIGHTBOX_PACS_PASSWORD is not set")?,
            },
            (None, Ok(token)) => Auth::Bearer(token),
            (None, Err(_)) => Auth::None,
        };
        let Some(url) = self.url.clone() else {
            // Nothing on the command line or in the environment: the saved settings.
            let path = lightbox_workflow::settings::config_path();
            let saved = lightbox_workflow::settings::Settings::load(&path)?;
            return saved.pacs_settings().with_context(|| {
                format!("no PACS URL: give --url, set LIGHTBOX_PACS_URL, or save one in {}", path.display())
            });
        };
        let mut web = DicomWebConfig::new(url);
        web.auth = auth;
        web.tls = TlsOptions {
            ca_file: self.ca.clone(),
            ca_only: self.ca_only,
            client_cert: self.cert.clone(),
            client_key: self.key.clone(),
        };
        web.retry.attempts = self.attempts.max(1);
        web.read_timeout = std::time::Duration::from_secs(self.timeout_secs.max(1));
        let dimse = self.dimse_aet.as_ref().map(|aet| DimsePeer {
            ae_title: aet.clone(),
            host: self.dimse_host.clone(),
            port: self.dimse_port,
            calling_ae_title: self.aet.clone(),
        });
        Ok(lightbox_workflow::pacs::PacsSettings { name: self.name.clone(), web, dimse })
    }
}

#[derive(Subcommand)]
enum PacsCommand {
    /// Search the PACS (QIDO-RS). Text filters take * and ? wildcards. With --study, list its series.
    Query {
        #[command(flatten)]
        filter: StudyFilter,
        /// Fuzzy matching of person names (where the PACS supports it).
        #[arg(long)]
        fuzzy: bool,
        /// List the series of this study instead.
        #[arg(long)]
        study: Option<String>,
    },
    /// Retrieve a study or series (WADO-RS) into the local store.
    Retrieve {
        #[arg(long)]
        study: String,
        #[arg(long)]
        series: Option<String>,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Queue DICOM files (a file or folder) in the outbox and send them (STOW-RS, C-STORE fallback).
    Send {
        path: PathBuf,
        #[arg(long)]
        store: Option<PathBuf>,
        /// Only queue; send at the next `outbox drain`.
        #[arg(long)]
        queue_only: bool,
    },
    /// Send what is due in the outbox.
    Drain {
        #[arg(long)]
        store: Option<PathBuf>,
        /// Keep draining every SECS seconds until interrupted (a result queued while the PACS
        /// is down goes out at the first drain after it is back).
        #[arg(long, value_name = "SECS")]
        every: Option<u64>,
    },
    /// The outbox rows for this PACS: state, attempts, last error.
    Outbox {
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// C-ECHO the PACS's DIMSE port (needs --dimse-aet).
    Echo,
    /// Whether the PACS answers DICOMweb, and how fast.
    Status,
}

#[derive(Subcommand)]
enum MeasureCommand {
    /// Record a measurement, e.g. `--kind diameter --label "Lesion 1 long axis" --value 12.5 --unit mm`.
    Add {
        #[arg(long)]
        series: String,
        #[arg(long)]
        kind: String,
        #[arg(long)]
        label: String,
        #[arg(long)]
        value: f64,
        /// UCUM unit: mm, cm, mm2, cm2, mm3, cm3, mL, um2/s, {ratio}.
        #[arg(long)]
        unit: String,
        /// Your name as it should appear in the report, e.g. 'Doe^Jane'.
        #[arg(long = "as")]
        author: String,
    },
    /// List the measurements on a series.
    List {
        #[arg(long)]
        series: String,
    },
    /// Remove one.
    Remove { id: i64 },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Cancel a queued, running or waiting job (a running one stops at its next stage).
    Cancel { id: i64 },
    /// Run a failed, cancelled or waiting job again, now, in this process.
    Rerun { id: i64 },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Explain, for every series in the store, which rule matches and why.
    Check {
        rules: PathBuf,
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List the outbox.
    List {
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Put a refused or cancelled row back in the queue.
    Retry {
        id: i64,
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Take a pending or refused row out of the queue.
    Cancel {
        id: i64,
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

/// Bounds what parsing one DICOM file may allocate (see `lightbox_dicom::ParseGuardAllocator`).
#[global_allocator]
static ALLOC: lightbox_workflow::ParseGuardAllocator = lightbox_workflow::ParseGuardAllocator;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LIGHTBOX_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lightbox: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Info { path } => {
            let report = lightbox_workflow::scan(&path)?;
            let mut out = std::io::stdout().lock();
            print_report(&mut out, &report).context("writing to stdout")?;
        }
        Commands::ToDicom {
            nifti,
            out,
            patient_id,
            patient_name,
            study_date,
            birth_date,
            study_description,
            series_description,
            series_number,
        } => {
            let derivation = format!(
                "converted from NIfTI {}",
                nifti.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            );
            let series = lightbox_workflow::NewSeries {
                patient: lightbox_core::PatientInfo { id: patient_id, name: patient_name },
                study_uid: None,
                study_date,
                patient_birth_date: birth_date.unwrap_or_default(),
                study_description,
                series_description,
                series_number,
                derivation,
                uid_seed: None,
                frame_of_reference_uid: None,
            };
            let files = lightbox_workflow::nifti_to_dicom(&nifti, &out, &series)?;
            println!("{} files in {}", files.len(), out.display());
        }
        Commands::Models { command: ModelsCommand::Install { name, wheel, models } } => {
            let models = models.unwrap_or_else(lightbox_workflow::ai::models_dir);
            lightbox_workflow::ai::install_model(&name, &wheel, &models)?;
            println!("{name} installed in {} (weights checked against model.toml)", models.display());
        }
        Commands::Models {
            command: ModelsCommand::Import { folder, name, configuration, folds, checkpoint, channels, models },
        } => {
            let models = models.unwrap_or_else(lightbox_workflow::ai::models_dir);
            let options = lightbox_workflow::ai::NnUnetImport { configuration, folds, checkpoint, channels };
            let imported = lightbox_workflow::ai::import_nnunet(&folder, &options, &name, &models)?;
            println!(
                "{name}: {} imported into {} (complete its README.md model card)",
                imported.what,
                imported.dir.display()
            );
        }
        Commands::Models { command: ModelsCommand::TrainSynthetic { adc, steps, evaluate, ai } } => {
            use lightbox_workflow::synthetic_model;
            let (models, preference) = ai.resolve()?;
            let mut recent = Vec::new();
            let package = models.join(synthetic_model::PROSTATE_LESION_SYNTHETIC);
            if steps == 0 {
                let e = synthetic_model::evaluate(&package, &adc, evaluate, preference)?;
                println!("{}", synthetic_model::describe(&e));
                return Ok(());
            }
            let report = synthetic_model::train(&adc, &models, steps, preference, &mut |step, loss| {
                recent.push(loss);
                if (step + 1) % 25 == 0 || step + 1 == steps {
                    let mean = recent.iter().sum::<f32>() / recent.len() as f32;
                    eprintln!("steps {}–{step}: mean loss {mean:.4}", step + 1 - recent.len());
                    recent.clear();
                }
            })?;
            println!(
                "{}: trained {} steps in {:.0} s on {} (loss {:.3} → {:.3}), package {}",
                synthetic_model::PROSTATE_LESION_SYNTHETIC,
                report.steps,
                report.seconds,
                report.device,
                report.first_loss,
                report.last_loss,
                report.package.display()
            );
            if evaluate > 0 {
                let e = synthetic_model::evaluate(&report.package, &adc, evaluate, preference)?;
                println!("{}", synthetic_model::describe(&e));
            }
        }
        Commands::Predict { model, inputs, out, ai } => {
            let (models, preference) = ai.resolve()?;
            let p = lightbox_workflow::ai::predict(&model, &inputs, &out, &models, preference)?;
            println!(
                "AI output ({model}, not for clinical use): labels {} — voxels per label {:?}, {} windows, {:.1} s on {}",
                p.labels.display(),
                p.counts,
                p.windows,
                p.seconds,
                p.device
            );
        }
        Commands::BrainVolumes { input, ai } => {
            let (models, preference) = ai.resolve()?;
            let (v, device) = lightbox_workflow::ai::brain_volumes(&input, &models, preference)?;
            println!(
                "AI output (automated measurement, not for clinical use): intracranial volume {:.0} mL, grey matter {:.0} mL, white matter {:.0} mL, CSF {:.0} mL, brain parenchymal fraction {:.3} — {:.1} s (brain extraction on {device})",
                v.icv_ml, v.grey_ml, v.white_ml, v.csf_ml, v.bpf, v.seconds
            );
            println!("method: {}", lightbox_workflow::ai::VOLUMES_METHOD);
        }
        Commands::Atrophy { baseline, followup, interval_years, baseline_date, followup_date, age, ai } => {
            let interval_years = match (interval_years, baseline_date, followup_date) {
                (Some(years), ..) => years,
                (None, Some(a), Some(b)) => (days_since_epoch(&b)? - days_since_epoch(&a)?) as f64 / 365.25,
                _ => anyhow::bail!("give --interval-years, or --baseline-date and --followup-date"),
            };
            let (models, preference) = ai.resolve()?;
            let (r, device) =
                lightbox_workflow::ai::atrophy(&baseline, &followup, interval_years, age, &models, preference)?;
            println!(
                "AI output (automated measurement, not for clinical use): {} — brain {:.0} mL, follow-up turned {:.1}° against the baseline, {:.1} s (brain extraction on {device})",
                r.summary(),
                r.brain_ml,
                r.rotation_deg,
                r.seconds
            );
            println!("method: {}", lightbox_workflow::ai::ATROPHY_METHOD);
            for w in &r.warnings {
                eprintln!("lightbox: warning: {w}");
            }
        }
        Commands::BrainExtract { input, out, ai } => {
            let (models, preference) = ai.resolve()?;
            let r = lightbox_workflow::ai::brain_extract(&input, &out, &models, preference)?;
            println!(
                "AI output (deepbet 1.0.2, not for clinical use): brain mask {} — {} voxels, intracranial volume {:.1} mL, {:.1} s on {}",
                r.mask.display(),
                r.brain_voxels,
                r.tiv_ml,
                r.seconds,
                r.device
            );
            if let Some(w) = &r.warning {
                eprintln!("lightbox: warning: {w}");
            }
        }
        Commands::Import { path, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let summary = lightbox_workflow::import(&store, &path)?;
            for issue in &summary.failed {
                println!("not imported: {}: {}", issue.path.display(), issue.reason);
            }
            println!(
                "imported {}, already stored {}, not imported {} (store {})",
                summary.imported,
                summary.already_stored,
                summary.failed.len(),
                store.display()
            );
        }
        Commands::Verify { repair, min_age_s, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            if repair {
                let done = lightbox_workflow::repair_store(&store, std::time::Duration::from_secs(min_age_s))?;
                for issue in &done.refused {
                    println!("left in place: {}: {}", issue.path.display(), issue.reason);
                }
                println!(
                    "repaired: indexed {} file(s) left by interrupted imports, removed {} temporary file(s); kept {} copy(ies) of stored instances",
                    done.indexed, done.temporary_removed, done.copies_kept
                );
            }
            let report = lightbox_workflow::verify_store(&store)?;
            for uid in &report.missing {
                println!("missing: instance {uid} (its file is gone)");
            }
            for uid in &report.corrupt {
                println!("damaged: instance {uid} (its file no longer matches its hash)");
            }
            println!(
                "store {}: {} instance(s) checked, {} missing, {} damaged",
                store.display(),
                report.instances,
                report.missing.len(),
                report.corrupt.len()
            );
            if !report.unindexed_objects.is_empty() || !report.temporary_files.is_empty() {
                println!(
                    "left by interrupted imports: {} unindexed file(s), {} temporary file(s){}",
                    report.unindexed_objects.len(),
                    report.temporary_files.len(),
                    if repair {
                        " (copies of stored instances, younger than --min-age-s, or refused)"
                    } else {
                        "; `lightbox verify --repair` brings them back"
                    }
                );
            }
            anyhow::ensure!(
                report.is_consistent(),
                "{} stored instance(s) missing or damaged in {}: retrieve their series again from the PACS",
                report.missing.len() + report.corrupt.len(),
                store.display()
            );
        }
        Commands::Worklist { store, filter } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let query = filter.worklist_query();
            for s in lightbox_workflow::worklist(&store, &query)? {
                let (series, instances) = (s.series.to_string(), s.instances.to_string());
                println!(
                    "{}",
                    study_line(
                        &s.date,
                        &s.patient_id,
                        &s.patient_name,
                        &s.modalities,
                        &series,
                        &instances,
                        &s.description,
                        &s.study_uid
                    )
                );
            }
        }
        Commands::Pacs { pacs, command } => pacs_command(&pacs, command)?,
        Commands::Outbox { command } => match command {
            OutboxCommand::List { store } => {
                let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
                print_outbox(lightbox_workflow::pacs::outbox_list(&store)?.into_iter());
            }
            OutboxCommand::Cancel { id, store } => {
                let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
                anyhow::ensure!(
                    lightbox_workflow::pacs::outbox_cancel(&store, id)?,
                    "outbox item {id} is being sent or was sent; it cannot be cancelled"
                );
                println!("outbox item {id} cancelled");
            }
            OutboxCommand::Retry { id, store } => {
                let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
                anyhow::ensure!(
                    lightbox_workflow::pacs::outbox_retry(&store, id)?,
                    "outbox item {id} was not refused or cancelled: nothing to retry (see `lightbox outbox list`)"
                );
                println!("outbox item {id} queued again");
            }
        },
        Commands::Run { pipeline, series, threshold, send_to, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let outcome =
                lightbox_workflow::pipeline::run_pipeline(&store, &pipeline, &series, threshold, send_to.as_deref())?;
            print_outcome(&pipeline, &series, &outcome);
        }
        Commands::Results { store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            for r in lightbox_workflow::pipeline::results(&store)? {
                // Whose images, when and what, before the series UID.
                let whose = if r.series.patient_name.is_empty() && r.series.patient_id.is_empty() {
                    "(not in the store)".to_owned()
                } else {
                    format!(
                        "{} ({}, {}) {}",
                        r.series.patient_name, r.series.patient_id, r.series.study_date, r.series.description
                    )
                };
                println!(
                    "job {:>4}  {:<8} {:<18} {whose}  {}  AI volume {}  {}",
                    r.job_id,
                    r.state,
                    r.pipeline,
                    r.series_uid,
                    r.volume_mm3.map_or_else(|| "-".into(), |v| format!("{v:.1} mm3")),
                    match (&r.signed_by, &r.error) {
                        (Some(who), _) => format!("signed by {who}"),
                        (None, Some(e)) => format!("failed: {e}"),
                        (None, None) if r.state == "done" => "awaiting review".into(),
                        (None, None) => "-".into(),
                    }
                );
            }
        }
        Commands::Inspect { file, images } => inspect(&file, images.as_deref())?,
        Commands::Serve {
            bind,
            port,
            tokens,
            rules,
            listen_port,
            aet,
            rate,
            tls_cert,
            tls_key,
            client_ca,
            check,
            openapi,
            store,
        } => {
            if openapi {
                print!("{}", lightbox_server::openapi_json());
                return Ok(());
            }
            // Flags first, then `[serve]` in the settings file, then the defaults.
            let settings = lightbox_workflow::settings::Settings::load(&lightbox_workflow::settings::config_path())?;
            let file = settings.serve.clone().unwrap_or_default();
            let mut config =
                lightbox_server::ServeConfig::new(store.unwrap_or_else(lightbox_workflow::default_store_dir));
            let bind = match (bind, &file.bind) {
                (Some(b), _) => b,
                (None, Some(b)) => b.parse().with_context(|| format!("[serve] bind {b:?} is not an address"))?,
                (None, None) => config.bind.ip(),
            };
            config.bind = (bind, port.or(file.port).unwrap_or(config.bind.port())).into();
            config.rate_per_second = rate.or(file.rate).unwrap_or(config.rate_per_second);
            if let Some(path) = tokens.or(file.tokens) {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                config.token_hashes = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
            }
            config.rules = rules.or(file.rules).map(|r| lightbox_workflow::pipeline::Rules::load(&r)).transpose()?;
            config.pacs = settings.pacs_settings();
            config.scp = listen_port.or(file.listen_port).map(|p| (aet, p));
            if let (Some(cert), Some(key)) = (tls_cert.or(file.tls_cert), tls_key.or(file.tls_key)) {
                config.tls = Some(lightbox_server::TlsFiles { cert, key, client_ca: client_ca.or(file.client_ca) });
            }
            if check {
                let mut failed = 0;
                for (what, result) in lightbox_server::check_blocking(&config)? {
                    match result {
                        Ok(detail) => println!("ok      {what}: {detail}"),
                        Err(detail) => {
                            failed += 1;
                            println!("FAILED  {what}: {detail}");
                        }
                    }
                }
                anyhow::ensure!(failed == 0, "{failed} checks failed");
                return Ok(());
            }
            let scheme = if config.tls.is_some() { "https" } else { "http" };
            lightbox_server::run_blocking(config, |addr| {
                println!("serving the Lightbox API on {scheme}://{addr} (OpenAPI at /openapi.json)");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            })?;
        }
        Commands::TokenHash => {
            let mut token = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut token).context("reading the token")?;
            anyhow::ensure!(!token.trim().is_empty(), "give the token on stdin");
            println!("{}", lightbox_server::token_hash(token.trim()));
        }
        Commands::Compare { series, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let (prior, mut viewer) = lightbox_workflow::open_compare_with_prior(&store, &series)?;
            println!(
                "comparing with series {} of {} ({:?}; {})",
                prior.series_uid, prior.study_date, prior.description, prior.reason
            );
            let status = viewer.wait().context("waiting for the viewer")?;
            anyhow::ensure!(status.success(), "the viewer ended with {status}");
        }
        Commands::View { job, author, at, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let at = match at.as_deref() {
                None => None,
                Some(a) => Some(
                    <[f64; 3]>::try_from(a)
                        .map_err(|_| anyhow::anyhow!("--at takes three numbers, X,Y,Z in mm (got {})", a.len()))?,
                ),
            };
            let status = lightbox_workflow::open_result_in_viewer(&store, job, author.as_deref(), at)?
                .wait()
                .context("waiting for the viewer")?;
            anyhow::ensure!(status.success(), "the viewer ended with {status}");
        }
        Commands::Measure { command, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            match command {
                MeasureCommand::Add { series, kind, label, value, unit, author } => {
                    let id = lightbox_workflow::pipeline::add_measurement(
                        &store, &series, &kind, &label, value, &unit, &author,
                    )?;
                    println!("measurement {id}: {kind} {label:?} = {value} {unit} by {author}");
                }
                MeasureCommand::List { series } => {
                    for m in lightbox_workflow::pipeline::measurements(&store, &series)? {
                        println!(
                            "{:>4}  {:<8} {:<32} {:>10} {:<6} by {}  {}",
                            m.id, m.kind, m.label, m.value, m.unit, m.author, m.created_at
                        );
                    }
                }
                MeasureCommand::Remove { id } => {
                    anyhow::ensure!(
                        lightbox_workflow::pipeline::remove_measurement(&store, id)?,
                        "no measurement {id}"
                    );
                    println!("measurement {id} removed");
                }
            }
        }
        Commands::Sign { job, radiologist, reject, volume_ml, send_to, store } => {
            use lightbox_workflow::pipeline::Review;
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let review = match (reject, volume_ml) {
                (true, _) => Review::Reject,
                (false, Some(volume_ml)) => Review::Edit { volume_ml },
                (false, None) => Review::Accept,
            };
            let o = lightbox_workflow::pipeline::sign(&store, job, &radiologist, &send_to, review)?;
            println!(
                "job {job} signed by {radiologist}: SR {} (VERIFIED), AI finding {}, {} queued for {send_to}",
                o.sr_uid,
                review.describe(),
                o.queued
            );
        }
        Commands::ExportResults { job, plugins, timeout_secs, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let plugins = plugins.unwrap_or_else(lightbox_workflow::plugins::plugins_dir);
            let runs = lightbox_workflow::plugins::export(
                &store,
                job,
                &plugins,
                std::time::Duration::from_secs(timeout_secs.max(1)),
            )?;
            let mut failed = 0;
            for run in &runs {
                let outcome = match (run.ok(), run.timed_out, run.exit_code) {
                    (true, ..) => "ok".to_owned(),
                    (false, true, _) => format!("killed after {timeout_secs} s"),
                    (false, false, Some(code)) => format!("failed (exit {code})"),
                    (false, false, None) => "could not run".to_owned(),
                };
                failed += usize::from(!run.ok());
                println!("plugin {}: {outcome}: {}", run.plugin, run.status);
                if !run.ok() && !run.stderr.trim().is_empty() {
                    println!("  stderr: {}", run.stderr.trim());
                }
            }
            anyhow::ensure!(failed == 0, "{failed} of {} exporter plugins failed", runs.len());
        }
        Commands::Jobs { command, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            match command {
                None => {
                    for job in lightbox_workflow::jobs(&store)? {
                        println!(
                            "{:>5} {:<10} {:<18} {:<3} {:<16} {:>7}  runs {}  {}{}",
                            job.id,
                            job.state,
                            job.kind,
                            job.device,
                            job.stage,
                            job.seconds.map_or_else(|| "-".into(), |s| format!("{s:.1} s")),
                            job.runs,
                            job.key,
                            job.error.map(|e| format!("  error: {e}")).unwrap_or_default()
                        );
                    }
                }
                Some(JobsCommand::Cancel { id }) => {
                    anyhow::ensure!(
                        lightbox_workflow::pipeline::cancel(&store, id)?,
                        "job {id} is not queued, running or waiting"
                    );
                    println!("job {id} cancelled");
                }
                Some(JobsCommand::Rerun { id }) => {
                    let outcome = lightbox_workflow::pipeline::rerun(&store, id)?;
                    println!("{}", outcome.describe("job", &id.to_string()));
                }
            }
        }
        Commands::Rules { command: RulesCommand::Check { rules, store } } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let rules = lightbox_workflow::pipeline::Rules::load(&rules)?;
            for (uid, ..) in lightbox_workflow::stored_series(&store)? {
                let series = lightbox_workflow::pipeline::series_to_match(&store, &uid)?;
                let f = &series.facts;
                println!(
                    "series {uid} ({}, \"{}\", {} instances; sequence {}, plane {}, body part {}, {})",
                    f.modality,
                    f.description,
                    series.instances,
                    or_dash(&f.sequence),
                    or_dash(&f.plane),
                    or_dash(&f.body_part),
                    or_dash(&f.acquisition)
                );
                for (rule, matched, reasons) in rules.explain(&series) {
                    println!(
                        "  {} rule {:?} -> {}: {}",
                        if matched { "MATCH   " } else { "no match" },
                        rule.name,
                        rule.pipeline,
                        if reasons.is_empty() { "no conditions".to_owned() } else { reasons.join(", ") }
                    );
                }
            }
        }
        Commands::Listen { rules, aet, allow, port, bind, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let rules = rules.map(|r| lightbox_workflow::pipeline::Rules::load(&r)).transpose()?;
            let pacs = lightbox_workflow::pacs::PacsSettings::from_env();
            let (events, received) = std::sync::mpsc::channel();
            let handle = lightbox_workflow::pacs::listen(&store, &aet, &allow, (bind, port).into(), Some(events))?;
            let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
            let say = |out: &std::sync::Mutex<std::io::Stdout>, line: &str| -> anyhow::Result<()> {
                let mut out = out.lock().map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
                writeln!(out, "{line}").and_then(|()| out.flush()).context("writing to stdout")
            };
            // The engine: series settle, match rules, run as jobs, results go out.
            let engine = match rules {
                Some(rules) => {
                    let (tx, engine_events) = std::sync::mpsc::channel();
                    let engine = lightbox_workflow::engine::Engine::start(
                        &store,
                        rules,
                        pacs,
                        lightbox_workflow::engine::EngineConfig::from_env(),
                        tx,
                    );
                    let out = out.clone();
                    std::thread::spawn(move || {
                        for event in engine_events {
                            if say(&out, &event.to_string()).is_err() {
                                break;
                            }
                        }
                    });
                    Some(engine)
                }
                None => None,
            };
            // Only now: a script that waits for this line may import at once, and the engine
            // must already know where to look from.
            say(&out, &format!("listening as {aet} on {} (store {})", handle.local_addr(), store.display()))?;
            let mut stored: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
            for event in received {
                use lightbox_workflow::pacs::ScpEvent;
                let line = match event {
                    ScpEvent::Associated { calling_ae, peer } => format!("association from {calling_ae} ({peer})"),
                    ScpEvent::Echo { calling_ae } => format!("echo from {calling_ae}"),
                    ScpEvent::Stored { sop_uid, already_stored, bytes, .. } => {
                        let line = format!(
                            "stored {sop_uid} ({bytes} bytes{})",
                            if already_stored { ", had it already" } else { "" }
                        );
                        stored.insert(sop_uid);
                        line
                    }
                    ScpEvent::Failed { calling_ae, detail } => format!("failed ({calling_ae}): {detail}"),
                    ScpEvent::Released { calling_ae, instances } => {
                        format!("released by {calling_ae}: {instances} instances")
                    }
                };
                say(&out, &line)?;
                if line.starts_with("released by")
                    && let Some(engine) = &engine
                {
                    let series = lightbox_workflow::series_of_instances(&store, &std::mem::take(&mut stored))?;
                    engine.arrived(series.into_iter().map(|(uid, ..)| uid).collect());
                }
            }
        }
        Commands::Export { path, nifti, series, gzip } => {
            for file in lightbox_workflow::export_nifti(&path, &nifti, series.as_deref(), gzip)? {
                println!("{}", file.display());
            }
        }
    }
    Ok(())
}

fn pacs_command(args: &PacsArgs, command: PacsCommand) -> anyhow::Result<()> {
    use lightbox_workflow::pacs;
    let settings = args.settings()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    match command {
        PacsCommand::Query { filter, fuzzy, study } => {
            if let Some(study) = study {
                for s in runtime.block_on(pacs::pacs_search_series(&settings, &study))? {
                    println!(
                        "series {:>4}  {:<3} {:>5} instances  \"{}\"  [{}]",
                        s.number.map_or_else(|| "-".into(), |n| n.to_string()),
                        or_dash(&s.modality),
                        s.instances.map_or_else(|| "?".into(), |n| n.to_string()),
                        s.description,
                        s.series_uid
                    );
                }
                return Ok(());
            }
            // One more than the limit tells whether there are more.
            let mut wanted = filter.worklist_query();
            let (limit, offset) = (wanted.limit.max(1), wanted.offset);
            wanted.limit = limit.saturating_add(1);
            let mut query = pacs::qido_for(&wanted);
            if fuzzy {
                query = query.fuzzy();
            }
            let found = runtime.block_on(pacs::pacs_search_studies(&settings, &query))?;
            let more = found.len() > limit as usize;
            for s in found.into_iter().take(limit as usize) {
                let count = |n: Option<i64>| n.map_or_else(|| "?".into(), |n| n.to_string());
                let (series, instances) = (count(s.series), count(s.instances));
                println!(
                    "{}",
                    study_line(
                        &s.date,
                        &s.patient_id,
                        &s.patient_name,
                        &s.modalities,
                        &series,
                        &instances,
                        &s.description,
                        &s.study_uid
                    )
                );
            }
            if more {
                eprintln!(
                    "more studies match: narrow the search, or list the next ones with --offset {}",
                    offset.saturating_add(limit)
                );
            }
        }
        PacsCommand::Retrieve { study, series, store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let started = std::time::Instant::now();
            let summary = runtime.block_on(pacs::pacs_retrieve(&store, &settings, &study, series.as_deref()))?;
            println!(
                "retrieved {} instances ({:.1} MB in {:.1} s): imported {}, already stored {}{}",
                summary.imported + summary.already_stored,
                summary.bytes as f64 / 1e6,
                started.elapsed().as_secs_f64(),
                summary.imported,
                summary.already_stored,
                if summary.resumed_instances > 0 {
                    format!(" ({} fetched again after a broken transfer)", summary.resumed_instances)
                } else {
                    String::new()
                }
            );
            if !summary.failed.is_empty() {
                for failure in &summary.failed {
                    let lost = match failure.instances {
                        Some(1) => "1 instance".to_owned(),
                        Some(n) => format!("{n} instances"),
                        None => "its instances".to_owned(),
                    };
                    eprintln!("not retrieved: series {}, {lost}: {}", failure.series, failure.reason);
                }
                anyhow::bail!(
                    "study {study} retrieved in part: {} failure(s) above; the same command run again fetches only what is missing",
                    summary.failed.len()
                );
            }
        }
        PacsCommand::Send { path, store, queue_only } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let queued = pacs::outbox_enqueue(&store, &settings.name, &path)?;
            for (file, reason) in &queued.not_dicom {
                let _ = file;
                println!("not queued: {reason}");
            }
            println!("queued {}, queued before {}", queued.queued, queued.already_queued);
            if !queue_only {
                print_drain(&runtime.block_on(pacs::outbox_drain(&store, &settings))?);
            }
        }
        PacsCommand::Drain { store, every } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            loop {
                print_drain(&runtime.block_on(pacs::outbox_drain(&store, &settings))?);
                let Some(secs) = every else { break };
                std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
            }
        }
        PacsCommand::Outbox { store } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let items = pacs::outbox_list(&store)?;
            print_outbox(items.into_iter().filter(|i| i.destination == settings.name));
        }
        PacsCommand::Status => {
            let status = runtime.block_on(pacs::pacs_status(&settings));
            if status.reachable {
                println!("PACS {} at {}: reachable ({} ms)", status.name, status.url, status.millis);
            } else {
                anyhow::bail!("PACS {} at {}: unreachable: {}", status.name, status.url, status.detail);
            }
        }
        PacsCommand::Echo => {
            let peer = settings.dimse.as_ref().context("C-ECHO needs --dimse-aet (or LIGHTBOX_PACS_AET)")?;
            pacs::echo(peer)?;
            println!("C-ECHO {}@{}:{}: success", peer.ae_title, peer.host, peer.port);
        }
    }
    Ok(())
}

fn inspect(file: &std::path::Path, images: Option<&std::path::Path>) -> anyhow::Result<()> {
    let modality = lightbox_workflow::read_instance(file)?.modality;
    if modality == "SR" {
        let sr = lightbox_workflow::read_sr(file)?;
        println!("SR {} \"{}\" ({}), observers: {}", sr.sop_uid, sr.title, sr.verification, sr.observers.join(", "));
        for g in &sr.groups {
            println!(
                "  group {:?}: finding {}, site {}{}{}",
                g.tracking_id,
                or_dash(&g.finding),
                or_dash(&g.finding_site),
                g.person.as_ref().map(|p| format!(", by {p}")).unwrap_or_default(),
                g.segment.as_ref().map(|(uid, n)| format!(", segment {n} of {uid}")).unwrap_or_default()
            );
            for (name, value, unit, algorithm) in &g.measurements {
                let by = algorithm.as_ref().map(|a| format!("  (AI: {a})")).unwrap_or_default();
                println!("    {name} = {value} {unit}{by}");
            }
        }
        return Ok(());
    }
    let seg = lightbox_workflow::read_seg(file)?;
    println!("SEG {} {}: {} frames of {}x{}", seg.sop_uid, seg.kind, seg.frames.len(), seg.columns, seg.rows);
    let overlay = match images {
        Some(images) => {
            let report = lightbox_workflow::scan(images)?;
            let set = report
                .series()
                .filter(|(_, s)| seg.referenced_series_uid.is_empty() || s.uid.as_str() == seg.referenced_series_uid)
                .find_map(|(_, s)| report.display_sets(s).first())
                .with_context(|| format!("{}: no image series for this SEG", images.display()))?;
            let o = lightbox_workflow::seg_overlay(set, 0, &seg)?;
            println!(
                "  on {}: {} frames placed, {} not in the series, {} overlapping voxels",
                images.display(),
                o.placed,
                o.unplaced,
                o.overlapping
            );
            Some(o)
        }
        None => None,
    };
    for s in &seg.segments {
        let voxels = overlay
            .as_ref()
            .map(|o| format!(", {} voxels", o.labels.voxels().iter().filter(|&&v| u16::from(v) == s.number).count()))
            .unwrap_or_default();
        println!(
            "  segment {} {:?}: {} ({}{}){voxels}",
            s.number,
            s.label,
            or_dash(&s.property_type),
            or_dash(&s.algorithm_type),
            if s.algorithm_name.is_empty() { String::new() } else { format!(" {}", s.algorithm_name) }
        );
    }
    Ok(())
}

fn print_outcome(pipeline: &str, series: &str, o: &lightbox_workflow::pipeline::PipelineOutcome) {
    println!("{}", o.describe(pipeline, series));
}

/// One study as a worklist line, local or on the PACS.
#[allow(clippy::too_many_arguments)]
fn study_line(
    date: &str,
    patient_id: &str,
    patient_name: &str,
    modalities: &str,
    series: &str,
    instances: &str,
    description: &str,
    study_uid: &str,
) -> String {
    format!(
        "{:<10} {:<22} {:<24} {:<8} {series:>3} series {instances:>6} instances  \"{description}\"  [{study_uid}]",
        or_dash(date),
        or_dash(patient_id),
        or_dash(patient_name),
        or_dash(modalities),
    )
}

fn print_outbox(items: impl Iterator<Item = lightbox_workflow::pacs::OutboxItem>) {
    for item in items {
        println!(
            "{:>5} {:<8} {:<10} attempts {:>2}  {}  {}{}",
            item.id,
            item.state.as_str(),
            item.destination,
            item.attempts,
            item.sop_uid,
            item.sent_at.as_deref().unwrap_or(""),
            item.last_error.map(|e| format!("  last error: {e}")).unwrap_or_default()
        );
    }
}

fn print_drain(report: &lightbox_workflow::pacs::DrainReport) {
    println!(
        "sent {}, already on the PACS {}, sent by C-STORE {}, deferred {}, refused {}",
        report.sent, report.already_there, report.sent_by_dimse, report.deferred, report.failed
    );
}

fn print_report(out: &mut impl Write, report: &ScanReport) -> std::io::Result<()> {
    let mut last_patient = None;
    for study in &report.studies {
        if last_patient != Some(&study.patient) {
            writeln!(out, "Patient {} ({})", or_dash(&study.patient.id), or_dash(&study.patient.name))?;
            last_patient = Some(&study.patient);
        }
        writeln!(out, "  Study {} {} [{}]", or_dash(&study.date), quoted(&study.description), study.uid)?;
        for series in &study.series {
            writeln!(out, "    {}", series_line(series))?;
        }
    }
    if !report.issues.is_empty() {
        writeln!(out, "Unreadable ({}):", report.issues.len())?;
        for issue in &report.issues {
            writeln!(out, "  {}: {}", issue.path.display(), issue.reason)?;
        }
    }
    let series_count: usize = report.studies.iter().map(|s| s.series.len()).sum();
    let mut patients: Vec<_> = report.studies.iter().map(|s| &s.patient).collect();
    patients.dedup();
    writeln!(
        out,
        "{} files: {} patients, {} studies, {} series, {} unreadable",
        report.files_scanned,
        patients.len(),
        report.studies.len(),
        series_count,
        report.issues.len()
    )
}

/// One line per series: number, modality, dimensions, instances, transfer syntax, description.
fn series_line(s: &SeriesInfo) -> String {
    let number = s.number.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let dims = if s.rows == 0 {
        "no pixels".to_owned()
    } else {
        let (rows, columns, slices, times) = s.shape();
        let mut d = format!("{columns}x{rows}x{slices}");
        if times > 1 {
            d.push_str(&format!("x{times}"));
        }
        if s.mosaic {
            d.push_str(" mosaic");
        }
        if s.display_sets.len() > 1 {
            d.push_str(&format!(" +{} sets", s.display_sets.len() - 1));
        }
        d
    };
    let mut instances = format!("{} instances", s.instance_count);
    if s.file_count > s.instance_count {
        instances.push_str(&format!(" in {} files", s.file_count));
    }
    if s.frame_count as usize > s.instance_count && s.rows > 0 {
        instances.push_str(&format!(", {} frames", s.frame_count));
    }
    format!(
        "series {number:>4}  {:<3} {dims:<16} {instances:<26} {:<32} {}",
        or_dash(&s.modality),
        s.transfer_syntaxes.join(", "),
        quoted(&s.description),
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

/// Days since 1970-01-01 of a date written YYYY-MM-DD or YYYYMMDD (DICOM's DA).
fn days_since_epoch(date: &str) -> anyhow::Result<i64> {
    let digits: String = date.chars().filter(|c| *c != '-').collect();
    let bad = || anyhow::anyhow!("{date:?} is not a date (YYYY-MM-DD or YYYYMMDD)");
    if digits.len() != 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let (y, m, d): (i64, i64, i64) = (digits[..4].parse()?, digits[4..6].parse()?, digits[6..].parse()?);
    let month_days = [
        31,
        if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] {
        return Err(bad());
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Ok(era * 146_097 + doe - 719_468)
}
