//! `lightbox`: the headless Lightbox commands.

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
    /// List studies in the local store. Text filters take * and ? wildcards.
    Worklist {
        #[arg(long)]
        store: Option<PathBuf>,
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
        #[arg(long, default_value = "")]
        study_description: String,
        #[arg(long, default_value = "")]
        series_description: String,
        #[arg(long, default_value_t = 1)]
        series_number: i32,
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
                study_description,
                series_description,
                series_number,
                derivation,
            };
            let files = lightbox_workflow::nifti_to_dicom(&nifti, &out, &series)?;
            println!("{} files in {}", files.len(), out.display());
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
        Commands::Worklist { store, name, id, accession, modality, from, to, limit, offset } => {
            let store = store.unwrap_or_else(lightbox_workflow::default_store_dir);
            let query = lightbox_workflow::WorklistQuery {
                patient_name: name,
                patient_id: id,
                accession_number: accession,
                modality,
                date_from: from,
                date_to: to,
                limit,
                offset,
                ..Default::default()
            };
            for s in lightbox_workflow::worklist(&store, &query)? {
                println!(
                    "{:<10} {:<22} {:<24} {:<8} {:>3} series {:>6} instances  \"{}\"  [{}]",
                    or_dash(&s.date),
                    or_dash(&s.patient_id),
                    or_dash(&s.patient_name),
                    or_dash(&s.modalities),
                    s.series,
                    s.instances,
                    s.description,
                    s.study_uid
                );
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
