//! On-device AI for the CLI, the workstation and tests: installing model packages and brain
//! extraction. Every result says it is AI output and which device made it.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use lightbox_ai::AiDevice;
pub use lightbox_ai::DevicePreference;
pub use lightbox_analysis::brain::METHOD as ATROPHY_METHOD;
pub use lightbox_analysis::brain::VOLUMES_METHOD;

use crate::WorkflowError;

/// Where model packages live: `LIGHTBOX_MODELS`, else `models/` in the current folder.
pub fn models_dir() -> PathBuf {
    std::env::var_os("LIGHTBOX_MODELS").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

/// Installs a model from its registry package (today: `deepbet`, from its PyPI wheel).
pub fn install_model(name: &str, wheel: &Path, models: &Path) -> Result<(), WorkflowError> {
    match name {
        "deepbet" => Ok(lightbox_ai::deepbet::install(wheel, models)?),
        other => Err(WorkflowError::Analysis(format!("unknown model {other:?} (known: deepbet)"))),
    }
}

/// What a brain extraction made.
#[derive(Clone, Debug)]
pub struct BrainExtraction {
    pub mask: PathBuf,
    pub tiv_ml: f64,
    pub brain_voxels: usize,
    pub seconds: f64,
    /// E.g. "CPU (burn flex, 2 threads)".
    pub device: String,
    /// Set when the result does not look like an adult head's brain.
    pub warning: Option<String>,
}

/// Adult intracranial volumes, mL: outside this the input is probably not a head T1.
pub const ADULT_TIV_ML: (f64, f64) = (900.0, 2200.0);

/// Reads a T1 volume: a NIfTI file, or the largest series of a DICOM file or folder.
pub fn read_volume(input: &Path) -> Result<lightbox_core::Volume<f32>, WorkflowError> {
    let name = input.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii") || name.ends_with(".nii.gz") {
        return Ok(lightbox_nifti::read(input)?.volume(0)?);
    }
    let report = lightbox_dicom::scan_path(input)?;
    let series = report
        .series()
        .map(|(_, s)| s)
        .filter(|s| s.rows > 0)
        .max_by_key(|s| s.voxel_count())
        .ok_or_else(|| WorkflowError::NothingToExport { path: input.to_owned(), issues: String::new() })?;
    let set = report
        .display_sets(series)
        .first()
        .ok_or_else(|| WorkflowError::NothingToExport { path: input.to_owned(), issues: String::new() })?;
    Ok(set.load(0)?)
}

/// Extracts the brain of the T1 at `input` with deepbet from `models` and writes the mask (1 in
/// the brain) as NIfTI to `out`, on the device `preference` picks.
pub fn brain_extract(
    input: &Path,
    out: &Path,
    models: &Path,
    preference: DevicePreference,
) -> Result<BrainExtraction, WorkflowError> {
    check_deepbet(models)?;
    let volume = read_volume(input)?;
    let device = AiDevice::choose(preference)?;
    let description = device.description.clone();
    let net = lightbox_ai::deepbet::Deepbet::from_packages(models, device)?;
    let result = net.extract(&volume, 0.5, &AtomicBool::new(false), &mut |_| {})?;
    let mask = result.mask_f32();
    let brain_voxels = mask.voxels().iter().filter(|v| **v > 0.0).count();
    lightbox_nifti::write(out, &mask)?;
    let warning = (result.tiv_ml < ADULT_TIV_ML.0 || result.tiv_ml > ADULT_TIV_ML.1).then(|| {
        format!(
            "the intracranial volume {:.0} mL is outside the adult range {:.0}–{:.0} mL: is {} a T1-weighted scan of a head?",
            result.tiv_ml,
            ADULT_TIV_ML.0,
            ADULT_TIV_ML.1,
            input.display()
        )
    });
    Ok(BrainExtraction {
        mask: out.to_owned(),
        tiv_ml: result.tiv_ml,
        brain_voxels,
        seconds: result.seconds,
        device: description,
        warning,
    })
}

/// Brain atrophy between two T1s of one patient (NIfTI files, or the largest series of DICOM
/// files or folders), `interval_years` apart, against the healthy norm at `age_years`. Returns
/// the report and the device that ran brain extraction.
pub fn atrophy(
    baseline: &Path,
    followup: &Path,
    interval_years: f64,
    age_years: Option<f64>,
    models: &Path,
    preference: DevicePreference,
) -> Result<(lightbox_analysis::brain::AtrophyReport, String), WorkflowError> {
    lightbox_analysis::brain::check_interval(interval_years).map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    check_deepbet(models)?;
    let read = |path: &Path| {
        read_volume(path).map_err(|e| WorkflowError::Analysis(format!("cannot read {}: {e}", path.display())))
    };
    let (base, follow) = (read(baseline)?, read(followup)?);
    let device = AiDevice::choose(preference)?;
    let description = device.description.clone();
    let net = lightbox_ai::deepbet::Deepbet::from_packages(models, device)?;
    let report = lightbox_analysis::brain::atrophy(&net, &base, &follow, interval_years, age_years)
        .map_err(|e| WorkflowError::Analysis(format!("{} → {}: {e}", baseline.display(), followup.display())))?;
    Ok((report, description))
}

/// Intracranial volume, grey and white matter, CSF and BPF of the T1 at `input`; with the device
/// that ran brain extraction.
pub fn brain_volumes(
    input: &Path,
    models: &Path,
    preference: DevicePreference,
) -> Result<(lightbox_analysis::brain::BrainVolumes, String), WorkflowError> {
    check_deepbet(models)?;
    let t1 =
        read_volume(input).map_err(|e| WorkflowError::Analysis(format!("cannot read {}: {e}", input.display())))?;
    let device = AiDevice::choose(preference)?;
    let description = device.description.clone();
    let net = lightbox_ai::deepbet::Deepbet::from_packages(models, device)?;
    let volumes = lightbox_analysis::brain::volumes(&net, &t1)
        .map_err(|e| WorkflowError::Analysis(format!("{}: {e}", input.display())))?;
    Ok((volumes, description))
}

pub(crate) fn check_deepbet(models: &Path) -> Result<(), WorkflowError> {
    for package in lightbox_ai::deepbet::PACKAGES {
        if !models.join(package).join("model.safetensors").is_file() {
            return Err(WorkflowError::Analysis(format!(
                "deepbet is not installed in {} (run scripts/install-models.sh, or lightbox models install deepbet --wheel …)",
                models.display()
            )));
        }
    }
    Ok(())
}

/// How `import_nnunet` reads a result folder.
#[derive(Clone, Debug)]
pub struct NnUnetImport {
    /// v2: the plan's configuration (a v1 folder is one configuration already).
    pub configuration: String,
    /// The folds, imported as one ensemble (nnU-Net's `-f 0 1 2 3 4`); empty: fold 0.
    pub folds: Vec<usize>,
    /// v1: the checkpoint's name (`model_best`, …); v2 reads `checkpoint_final.pth`.
    pub checkpoint: Option<String>,
    /// v1: each input channel's sequence, overriding the plan's modality names.
    pub channels: Option<Vec<String>>,
}

impl Default for NnUnetImport {
    fn default() -> Self {
        Self { configuration: "3d_fullres".into(), folds: vec![0], checkpoint: None, channels: None }
    }
}

/// What `import_nnunet` made.
#[derive(Clone, Debug)]
pub struct Imported {
    pub dir: PathBuf,
    /// "nnU-Net v1 fold 0 model_best", "nnU-Net v2 3d_fullres folds 0, 1".
    pub what: String,
}

/// Imports a trained nnU-Net result folder, v2 (`plans.json`) or v1 (`plans.pkl`, the PI-CAI
/// baseline's layout), as the model package `models/<name>`.
pub fn import_nnunet(
    folder: &Path,
    options: &NnUnetImport,
    name: &str,
    models: &Path,
) -> Result<Imported, WorkflowError> {
    let out = models.join(name);
    let folds = if options.folds.is_empty() { vec![0] } else { options.folds.clone() };
    if lightbox_ai::nnunet_v1::is_v1_folder(folder) {
        let v1 = lightbox_ai::nnunet_v1::ImportOptions {
            folds,
            checkpoint: options.checkpoint.clone(),
            channels: options.channels.clone(),
        };
        lightbox_ai::nnunet_v1::import(folder, &v1, name, &out)?;
        let manifest = lightbox_ai::ModelPackage::open(&out)?.manifest;
        return Ok(Imported { dir: out, what: format!("nnU-Net v1 {}", manifest.version) });
    }
    if options.checkpoint.is_some() || options.channels.is_some() {
        return Err(WorkflowError::Analysis(format!(
            "{}: --checkpoint and --channels are for nnU-Net v1 folders (plans.pkl); a v2 folder gives \
             checkpoint_final.pth and its dataset.json names the channels",
            folder.display()
        )));
    }
    lightbox_ai::nnunet::import(folder, &options.configuration, &folds, name, &out)?;
    let what = format!("nnU-Net v2 {} {}", options.configuration, lightbox_ai::nnunet::folds_text(&folds));
    Ok(Imported { dir: out, what })
}

/// What a segmentation model made.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub labels: PathBuf,
    /// Voxels per label value (index = label).
    pub counts: Vec<usize>,
    pub seconds: f64,
    pub windows: usize,
    pub device: String,
}

/// Runs the imported nnU-Net model `models/<name>` on `inputs` (one per channel, NIfTI or
/// DICOM, on one grid) and writes its labels as NIfTI to `out`.
pub fn predict(
    name: &str,
    inputs: &[PathBuf],
    out: &Path,
    models: &Path,
    preference: DevicePreference,
) -> Result<Prediction, WorkflowError> {
    let started = std::time::Instant::now();
    let channels = inputs.iter().map(|p| read_volume(p)).collect::<Result<Vec<_>, _>>()?;
    let device = AiDevice::choose(preference)?.with_env_precision()?;
    let description = device.description.clone();
    let model = lightbox_ai::nnunet::NnUnet::from_package(&models.join(name), device)?;
    let mut windows = 0;
    let labels = model.predict(&channels, &AtomicBool::new(false), &mut |p| windows = p.total)?;
    let max = labels.voxels().iter().copied().max().unwrap_or(0) as usize;
    let mut counts = vec![0usize; max + 1];
    labels.voxels().iter().for_each(|&l| counts[l as usize] += 1);
    let as_f32 = lightbox_core::Volume::new(
        labels.dims(),
        labels.voxels().iter().map(|&l| f32::from(l)).collect(),
        labels.patient_from_voxel,
    )
    .map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    lightbox_nifti::write(out, &as_f32)?;
    Ok(Prediction {
        labels: out.to_owned(),
        counts,
        seconds: started.elapsed().as_secs_f64(),
        windows,
        device: description,
    })
}
