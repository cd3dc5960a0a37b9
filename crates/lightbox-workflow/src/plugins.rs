//! Exporter plugins: plain executables in a plugins folder. Each is started with a JSON manifest
//! of one result on stdin (study, series, job, the result files, the source files), must print a
//! JSON status on stdout and exit 0 on success; it is killed after a timeout. Its stdout and
//! stderr are kept in the job's audit trail.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lightbox_store::Store;

use crate::WorkflowError;

/// What a plugin is told about one result.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Manifest {
    pub job_id: i64,
    pub pipeline: String,
    pub study_uid: String,
    pub series_uid: String,
    /// The result objects (SEG, SR), as stored files.
    pub results: Vec<ManifestFile>,
    /// The analysed series' instances, as stored files.
    pub source_files: Vec<PathBuf>,
    pub volume_mm3: Option<f64>,
    /// What a human-readable export (a PDF, an e-mail) needs, so a plugin reads no DICOM.
    pub summary: Summary,
}

/// The result in words: who, what, the findings and who made each.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub patient_name: String,
    pub patient_id: String,
    /// DICOM DA (YYYYMMDD).
    pub study_date: String,
    pub study_description: String,
    pub series_description: String,
    pub modality: String,
    pub institution: String,
    /// The radiologist who signed it; `None` while it awaits review.
    pub signed_by: Option<String>,
    pub findings: Vec<Finding>,
    /// brain-atrophy with a prior and the patient's age: the rate against the healthy band.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atrophy_plot: Option<AtrophyPlot>,
}

/// What a plot of the patient's brain volume change against age needs: the patient's point, the
/// healthy mean by age with its spread (Hedman 2012, De Stefano 2016) and the pathological
/// cut-off, so a plugin draws it without knowing the norms.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtrophyPlot {
    pub age_years: f64,
    pub rate_percent_per_year: f64,
    /// (age, healthy mean rate %/yr), every 5 years from 20 to 90.
    pub healthy_mean: Vec<[f64; 2]>,
    /// "Healthy" is within this many %/yr of the mean (two SDs).
    pub healthy_band: f64,
    pub cutoff_percent_per_year: f64,
}

impl AtrophyPlot {
    pub fn new(age_years: f64, rate_percent_per_year: f64) -> Self {
        use lightbox_analysis::brain as b;
        Self {
            age_years,
            rate_percent_per_year,
            healthy_mean: (4..=18)
                .map(|k| 5.0 * f64::from(k))
                .map(|age| [age, b::healthy_rate_percent_per_year(age)])
                .collect(),
            healthy_band: 2.0 * b::HEALTHY_SD_PERCENT_PER_YEAR,
            cutoff_percent_per_year: b::PATHOLOGICAL_CUTOFF_PERCENT_PER_YEAR,
        }
    }
}

/// One finding or measurement.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub label: String,
    pub value: f64,
    /// UCUM.
    pub unit: String,
    /// `ai` or `radiologist`.
    pub source: String,
    /// The algorithm (name and version) or the radiologist's name.
    pub made_by: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ManifestFile {
    pub sop_uid: String,
    pub path: PathBuf,
}

/// How one plugin run went.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginRun {
    pub plugin: String,
    /// `None` when it was killed (timeout) or could not start.
    pub exit_code: Option<i32>,
    /// The JSON it printed (`null` when it printed none).
    pub status: serde_json::Value,
    pub stderr: String,
    pub timed_out: bool,
}

impl PluginRun {
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// The plugins folder: `$LIGHTBOX_PLUGINS`, else `plugins/` in the config folder.
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("LIGHTBOX_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::settings::config_path().with_file_name("plugins"))
}

/// The manifest of a finished analysis job.
pub fn manifest(store_dir: &Path, job_id: i64) -> Result<Manifest, WorkflowError> {
    let store = Store::open(store_dir)?;
    let row = crate::pipeline::results(store_dir)?
        .into_iter()
        .find(|r| r.job_id == job_id && r.state == "done")
        .ok_or_else(|| WorkflowError::Analysis(format!("no finished analysis job {job_id}")))?;
    let mut results = Vec::new();
    for uid in [&row.seg_uid, &row.sr_uid].into_iter().flatten() {
        if let Some(path) = store.instance_file(uid)? {
            results.push(ManifestFile { sop_uid: uid.clone(), path });
        }
    }
    let source_files = store.series_files(&row.series_uid)?;
    let record = source_files.first().and_then(|f| lightbox_dicom::read_instance(f).ok());
    let study_uid = record.as_ref().map(|r| r.study_uid.as_str().to_owned()).unwrap_or_default();
    let mut findings = Vec::new();
    let result: serde_json::Value =
        store.job(job_id)?.and_then(|j| j.result).and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default();
    let details = &result["details"];
    let made_by = format!("{} {}", row.pipeline, env!("CARGO_PKG_VERSION"));
    if let Some(rows) = details["findings"].as_array() {
        for r in rows {
            let (Some(label), Some(value), Some(unit)) = (r[0].as_str(), r[1].as_f64(), r[2].as_str()) else {
                continue;
            };
            findings.push(Finding {
                label: label.to_owned(),
                value,
                unit: unit.to_owned(),
                source: "ai".into(),
                made_by: made_by.clone(),
            });
        }
    } else if let Some(volume) = row.volume_mm3 {
        let payload = store.job(job_id)?.map(|j| j.payload).unwrap_or_default();
        let threshold = serde_json::from_str::<serde_json::Value>(&payload)
            .ok()
            .and_then(|p| p["threshold"].as_f64())
            .map_or_else(String::new, |t| format!(" above {t}"));
        findings.push(Finding {
            label: format!("Volume{threshold}"),
            value: volume,
            unit: "mm3".into(),
            source: "ai".into(),
            made_by,
        });
    }
    for m in store.measurements(&row.series_uid)? {
        findings.push(Finding {
            label: format!("{} ({})", m.label, m.kind),
            value: m.value,
            unit: m.unit,
            source: "radiologist".into(),
            made_by: m.author,
        });
    }
    let summary = Summary {
        patient_name: record.as_ref().map(|r| r.patient.name.clone()).unwrap_or_default(),
        patient_id: record.as_ref().map(|r| r.patient.id.clone()).unwrap_or_default(),
        study_date: record.as_ref().map(|r| r.study_date.clone()).unwrap_or_default(),
        study_description: record.as_ref().map(|r| r.study_description.clone()).unwrap_or_default(),
        series_description: record.as_ref().map(|r| r.series_description.clone()).unwrap_or_default(),
        modality: record.as_ref().map(|r| r.modality.clone()).unwrap_or_default(),
        institution: crate::settings::institution(),
        signed_by: row.signed_by.clone(),
        findings,
        atrophy_plot: serde_json::from_value(details["atrophy_plot"].clone()).ok(),
    };
    Ok(Manifest {
        job_id,
        pipeline: row.pipeline,
        study_uid,
        series_uid: row.series_uid,
        results,
        source_files,
        volume_mm3: row.volume_mm3,
        summary,
    })
}

/// Runs the exporter plugins on a finished result and keeps each run (exit code, status,
/// stderr) in the audit log.
pub fn export(store_dir: &Path, job_id: i64, dir: &Path, timeout: Duration) -> Result<Vec<PluginRun>, WorkflowError> {
    let manifest = manifest(store_dir, job_id)?;
    let runs = run_exporters(dir, &manifest, timeout)?;
    let store = Store::open(store_dir)?;
    for run in &runs {
        let mut detail = format!(
            "job {job_id}: exit {}{}, status {}",
            run.exit_code.map_or_else(|| "none".into(), |c| c.to_string()),
            if run.timed_out { " (killed at the timeout)" } else { "" },
            run.status
        );
        if !run.stderr.trim().is_empty() {
            let stderr: String = run.stderr.trim().chars().take(2000).collect();
            detail.push_str(&format!(", stderr: {stderr}"));
        }
        store.audit("lightbox", &format!("export:{}", run.plugin), &manifest.series_uid, &detail)?;
    }
    Ok(runs)
}

/// Runs every executable in `dir` (sorted by name) on the manifest, each at most `timeout`.
pub fn run_exporters(dir: &Path, manifest: &Manifest, timeout: Duration) -> Result<Vec<PluginRun>, WorkflowError> {
    let io = |source| WorkflowError::Io { path: dir.to_owned(), source };
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_executable(p))
        .collect();
    plugins.sort();
    let input = serde_json::to_vec_pretty(manifest).map_err(|e| WorkflowError::Analysis(e.to_string()))?;
    Ok(plugins.iter().map(|plugin| run_one(plugin, &input, timeout)).collect())
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        path.is_file() && std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

fn run_one(plugin: &Path, input: &[u8], timeout: Duration) -> PluginRun {
    let name = plugin.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let failed = |stderr: String| PluginRun {
        plugin: name.clone(),
        exit_code: None,
        status: serde_json::Value::Null,
        stderr,
        timed_out: false,
    };
    let mut command = Command::new(plugin);
    // Plugins find the `lightbox` command (and the binaries beside it) here.
    if std::env::var_os("LIGHTBOX_BIN").is_none()
        && let Some(lightbox) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(format!("lightbox{}", std::env::consts::EXE_SUFFIX))))
            .filter(|p| p.is_file())
    {
        command.env("LIGHTBOX_BIN", lightbox);
    }
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input); // a plugin that ignores its input is not an error
    }
    // Read its output on threads so a chatty plugin cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Readers report through channels: something the plugin started may keep its output open
    // after it is killed, and must not keep us waiting.
    let (out_tx, out) = std::sync::mpsc::channel();
    let (err_tx, err) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.take(1 << 20).read_to_end(&mut s);
        }
        let _ = out_tx.send(s);
    });
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(1 << 20).read_to_end(&mut s);
        }
        let _ = err_tx.send(s);
    });
    let started = Instant::now();
    let (exit_code, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.code(), false),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break (None, false),
        }
    };
    let grace = Duration::from_secs(2);
    let stdout = out.recv_timeout(grace).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.recv_timeout(grace).unwrap_or_default()).into_owned();
    let status = serde_json::from_slice(stdout.trim_ascii()).unwrap_or(serde_json::Value::Null);
    PluginRun { plugin: name, exit_code, status, stderr, timed_out }
}
