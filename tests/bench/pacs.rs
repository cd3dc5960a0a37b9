//! bench-pacs: WADO-RS and STOW-RS of one series against a local Orthanc, Lightbox's client vs the
//! Python dicomweb-client vs plain curl. Run with `cargo run -p lightbox-tests --bin bench-pacs`.
//!
//! The series: `LIGHTBOX_BENCH_INSTANCES` (default 240, at least 200) copies of a real 384×384 MR
//! mosaic (`dcm_qa_ts/In/1.dcm`, 375 KiB, explicit VR little endian) with new UIDs, one series.
//! Each measurement is the best of 3 runs after one warm-up. What each client does:
//!
//! - WADO-RS, all three ask `multipart/related; type="application/dicom"; transfer-syntax=*`
//!   (the stored files, no transcoding):
//!   - Lightbox: `retrieve_series_to_dir`, streaming each part to its own file.
//!   - dicomweb-client: `retrieve_series(...)` (parses every part into a pydicom Dataset), then
//!     `ds.save_as(...)` of each into a folder; timed inside Python (interpreter start excluded).
//!   - curl: the whole multipart body into one file.
//! - STOW-RS of the series into `/studies/{uid}`, the study deleted from Orthanc before each run:
//!   - Lightbox: `store_files` (the multipart body streamed from the files).
//!   - dicomweb-client: `pydicom.dcmread` of each file, then `store_instances`; timed inside Python.
//!   - curl: a prebuilt multipart body file (built before timing), `-T body -X POST`.
//!
//! A reference row times writing the same files from memory (no network): the disk's share.
//!
//! Goals: Lightbox at least 3× faster than dicomweb-client, and within 1.2× of curl. A missed goal
//! prints MISSED; only errors make the exit status non-zero.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lightbox_pacs::{Auth, DicomWebClient, DicomWebConfig};
use lightbox_tests::dcmtk::{Uids, copy_with_new_uids, new_uid};
use lightbox_tests::orthanc::Orthanc;
use lightbox_tests::{data, pypeer, run_ok};

const DEFAULT_INSTANCES: usize = 240;
const RUNS: usize = 3;
const ACCEPT: &str = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

const PY_WADO: &str = r#"
study, series, out = args
t0 = time.perf_counter()
dss = client.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
for i, ds in enumerate(dss):
    ds.save_as(os.path.join(out, "%06d.dcm" % i), enforce_file_format=True)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "count": len(dss)}))
"#;

const PY_STOW: &str = r#"
import glob, pydicom
folder, study = args
files = sorted(glob.glob(os.path.join(folder, "*.dcm")))
t0 = time.perf_counter()
result = client.store_instances([pydicom.dcmread(f) for f in files], study_instance_uid=study)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "stored": len(result.get("ReferencedSOPSequence", [])),
                  "failed": len(result.get("FailedSOPSequence", []))}))
"#;

struct Bench {
    orthanc: Orthanc,
    client: DicomWebClient,
    runtime: tokio::runtime::Runtime,
    study: String,
    series: String,
    files: Vec<PathBuf>,
    folder: PathBuf,
    bytes: u64,
    work: PathBuf,
}

/// One row of the table: all runs, warm-up first.
struct Row {
    operation: &'static str,
    client: &'static str,
    runs: Vec<Duration>,
}

impl Row {
    fn best(&self) -> Duration {
        self.runs.iter().skip(1).min().copied().unwrap_or_default()
    }
}

fn main() -> anyhow::Result<()> {
    let instances = match std::env::var("LIGHTBOX_BENCH_INSTANCES") {
        Ok(n) => n.parse().context("LIGHTBOX_BENCH_INSTANCES is not a number")?,
        Err(_) => DEFAULT_INSTANCES,
    };
    ensure!(instances >= 200, "the series must have at least 200 instances");
    pypeer::python()?; // fail early when the venv is missing
    let bench = Bench::prepare(instances)?;

    let mut rows = Vec::new();
    rows.push(Row {
        operation: "WADO-RS",
        client: "lightbox retrieve_series_to_dir",
        runs: bench.repeat(|b, i| b.wado_ours(i))?,
    });
    rows.push(Row {
        operation: "WADO-RS",
        client: "dicomweb-client retrieve_series",
        runs: bench.repeat(|b, i| b.wado_python(i))?,
    });
    rows.push(Row { operation: "WADO-RS", client: "curl", runs: bench.repeat(|b, i| b.wado_curl(i))? });
    let contents = bench.files.iter().map(std::fs::read).collect::<Result<Vec<_>, _>>()?;
    let disk_floor = Row {
        operation: "(disk)",
        client: "write the files from memory",
        runs: bench.repeat(|b, i| b.write_files(i, &contents))?,
    };
    let body = bench.multipart_body()?;
    rows.push(Row { operation: "STOW-RS", client: "lightbox store_files", runs: bench.repeat(|b, _| b.stow_ours())? });
    rows.push(Row {
        operation: "STOW-RS",
        client: "dicomweb-client store_instances",
        runs: bench.repeat(|b, _| b.stow_python())?,
    });
    rows.push(Row { operation: "STOW-RS", client: "curl", runs: bench.repeat(|b, _| b.stow_curl(&body))? });

    let mb = bench.bytes as f64 / 1e6;
    println!();
    println!(
        "bench-pacs: {} instances, {mb:.1} MB, one series; Orthanc {} on 127.0.0.1; best of {RUNS} after 1 warm-up ({} build)",
        bench.files.len(),
        bench.orthanc.get_json("/system")?["Version"].as_str().unwrap_or("?"),
        if cfg!(debug_assertions) { "debug" } else { "release" },
    );
    println!("{:<9} {:<34} {:>8} {:>8}   runs (s, warm-up first)", "operation", "client", "best s", "MB/s");
    let print = |row: &Row, note: &str| {
        let best = row.best().as_secs_f64();
        let runs: Vec<String> = row.runs.iter().map(|d| format!("{:.3}", d.as_secs_f64())).collect();
        println!("{:<9} {:<34} {:>8.3} {:>8.1}   {}{note}", row.operation, row.client, best, mb / best, runs.join(" "));
    };
    rows[..3].iter().for_each(|row| print(row, ""));
    print(&disk_floor, "  (no network: create .part, write, rename, per instance)");
    rows[3..].iter().for_each(|row| print(row, ""));
    println!();
    for (operation, rows) in [("WADO-RS", &rows[0..3]), ("STOW-RS", &rows[3..6])] {
        let (ours, python, curl) =
            (rows[0].best().as_secs_f64(), rows[1].best().as_secs_f64(), rows[2].best().as_secs_f64());
        let speedup = python / ours;
        let vs_curl = ours / curl;
        println!(
            "{operation}: lightbox is {speedup:.2}x faster than dicomweb-client (goal >= 3x): {}",
            if speedup >= 3.0 { "ok" } else { "MISSED" }
        );
        println!(
            "{operation}: lightbox takes {vs_curl:.2}x curl's time (goal <= 1.2x): {}",
            if vs_curl <= 1.2 { "ok" } else { "MISSED" }
        );
    }
    Ok(())
}

impl Bench {
    fn prepare(instances: usize) -> anyhow::Result<Self> {
        let work = std::env::temp_dir().join(format!("lightbox-bench-pacs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let (study, series) = (new_uid(), new_uid());
        let source = data("dcm_qa_ts/In/1.dcm")?;
        eprint!("making {instances} instances with new UIDs... ");
        let folder = work.join("series");
        let files = copy_with_new_uids(
            &vec![source; instances],
            &folder,
            &Uids::Series { study: study.clone(), series: series.clone() },
            &[],
        )?;
        let bytes = files.iter().map(|f| Ok(std::fs::metadata(f)?.len())).sum::<anyhow::Result<u64>>()?;
        eprintln!("{:.1} MB", bytes as f64 / 1e6);
        let orthanc = Orthanc::start()?;
        let mut config = DicomWebConfig::new(orthanc.dicomweb_url());
        config.auth = Auth::Basic { user: orthanc.user().to_owned(), password: orthanc.password().to_owned() };
        let client = DicomWebClient::new(config)?;
        // The runtime `lightbox pacs` runs on. (Driving a transfer with `block_on` on a
        // multi-thread runtime bounces every chunk between the caller and a worker thread:
        // measured here 4x slower for a 2.7 MB series.)
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let bench = Self { orthanc, client, runtime, study, series, files, folder, bytes, work };
        eprint!("uploading the series... ");
        bench.stow_ours()?;
        eprintln!("done");
        Ok(bench)
    }

    /// A warm-up and `RUNS` timed runs.
    fn repeat(&self, run: impl Fn(&Self, usize) -> anyhow::Result<Duration>) -> anyhow::Result<Vec<Duration>> {
        (0..=RUNS).map(|i| run(self, i)).collect()
    }

    fn fresh_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn wado_ours(&self, i: usize) -> anyhow::Result<Duration> {
        let dir = self.fresh_dir(&format!("wado-ours-{i}"))?;
        let started = Instant::now();
        let summary = self.runtime.block_on(self.client.retrieve_series_to_dir(&self.study, &self.series, &dir))?;
        let took = started.elapsed();
        ensure!(summary.files.len() == self.files.len(), "lightbox got {} instances", summary.files.len());
        ensure!(summary.bytes == self.bytes, "lightbox got {} bytes", summary.bytes);
        std::fs::remove_dir_all(&dir)?;
        Ok(took)
    }

    fn python(&self, script: &str, args: &[String]) -> anyhow::Result<(Duration, serde_json::Value)> {
        let out = pypeer::run_client_script(
            &self.orthanc.dicomweb_url(),
            self.orthanc.user(),
            self.orthanc.password(),
            script,
            args,
        )?;
        let answer: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
            .with_context(|| format!("python said {out}"))?;
        let seconds = answer["seconds"].as_f64().with_context(|| format!("no time in {answer}"))?;
        Ok((Duration::from_secs_f64(seconds), answer))
    }

    fn wado_python(&self, i: usize) -> anyhow::Result<Duration> {
        let dir = self.fresh_dir(&format!("wado-py-{i}"))?;
        let (took, answer) =
            self.python(PY_WADO, &[self.study.clone(), self.series.clone(), dir.display().to_string()])?;
        ensure!(answer["count"].as_u64() == Some(self.files.len() as u64), "dicomweb-client: {answer}");
        std::fs::remove_dir_all(&dir)?;
        Ok(took)
    }

    fn curl(&self) -> Command {
        let mut command = Command::new("curl");
        command.args(self.orthanc.curl_args()).args(["--max-time", "300", "-o", "/dev/null", "-w", "%{http_code}"]);
        command
    }

    fn wado_curl(&self, i: usize) -> anyhow::Result<Duration> {
        let dir = self.fresh_dir(&format!("wado-curl-{i}"))?;
        let body = dir.join("body.multipart");
        let mut command = Command::new("curl");
        command
            .args(self.orthanc.curl_args())
            .args(["--max-time", "300", "-w", "%{http_code}", "-H", &format!("Accept: {ACCEPT}"), "-o"])
            .arg(&body)
            .arg(format!("{}/studies/{}/series/{}", self.orthanc.dicomweb_url(), self.study, self.series));
        let started = Instant::now();
        let status = run_ok(&mut command)?;
        let took = started.elapsed();
        ensure!(status.trim() == "200", "curl WADO: HTTP {status}");
        let size = std::fs::metadata(&body)?.len();
        ensure!(size > self.bytes, "curl got {size} bytes, the series has {}", self.bytes);
        std::fs::remove_dir_all(&dir)?;
        Ok(took)
    }

    /// What writing one file per instance costs on this disk, without any network: the floor
    /// under Lightbox's and dicomweb-client's WADO times (curl writes one file).
    fn write_files(&self, i: usize, contents: &[Vec<u8>]) -> anyhow::Result<Duration> {
        let dir = self.fresh_dir(&format!("disk-{i}"))?;
        let started = Instant::now();
        for (n, bytes) in contents.iter().enumerate() {
            let part = dir.join(format!("{n:06}.part"));
            std::fs::write(&part, bytes)?;
            std::fs::rename(&part, part.with_extension("dcm"))?;
        }
        let took = started.elapsed();
        std::fs::remove_dir_all(&dir)?;
        Ok(took)
    }

    /// Removes the study from Orthanc (before a timed STOW), and checks it is gone.
    fn delete_study(&self) -> anyhow::Result<()> {
        let (status, answer) =
            self.orthanc.request("POST", "/tools/lookup", Some((self.study.as_bytes(), "text/plain")))?;
        ensure!(status == 200, "lookup: HTTP {status}");
        let found: serde_json::Value = serde_json::from_slice(&answer)?;
        for item in found.as_array().context("lookup answer is not a list")? {
            if item["Type"] == "Study" {
                let id = item["ID"].as_str().context("no ID")?;
                let (status, _) = self.orthanc.request("DELETE", &format!("/studies/{id}"), None)?;
                ensure!(status == 200, "DELETE /studies/{id}: HTTP {status}");
            }
        }
        ensure!(self.orthanc.instance_count()? == 0, "Orthanc still has instances after the delete");
        Ok(())
    }

    fn ensure_stored(&self, who: &str) -> anyhow::Result<()> {
        let count = self.orthanc.instance_count()?;
        if count != self.files.len() as u64 {
            bail!("{who}: Orthanc has {count} instances after the STOW, expected {}", self.files.len());
        }
        Ok(())
    }

    fn stow_ours(&self) -> anyhow::Result<Duration> {
        self.delete_study()?;
        let started = Instant::now();
        let result = self.runtime.block_on(self.client.store_files(Some(&self.study), &self.files))?;
        let took = started.elapsed();
        ensure!(result.failed.is_empty() && result.stored.len() == self.files.len(), "lightbox STOW: {result:?}");
        self.ensure_stored("lightbox")?;
        Ok(took)
    }

    fn stow_python(&self) -> anyhow::Result<Duration> {
        self.delete_study()?;
        let (took, answer) = self.python(PY_STOW, &[self.folder.display().to_string(), self.study.clone()])?;
        ensure!(
            answer["stored"].as_u64() == Some(self.files.len() as u64) && answer["failed"] == 0,
            "dicomweb-client STOW: {answer}"
        );
        self.ensure_stored("dicomweb-client")?;
        Ok(took)
    }

    /// The series as one `multipart/related` body in a file; returns it and its boundary.
    fn multipart_body(&self) -> anyhow::Result<(PathBuf, String)> {
        let boundary = format!("bench-{}", new_uid().replace('.', ""));
        let path = self.work.join("stow.multipart");
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for file in &self.files {
            write!(out, "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n")?;
            out.write_all(&std::fs::read(file)?)?;
            out.write_all(b"\r\n")?;
        }
        write!(out, "--{boundary}--\r\n")?;
        out.flush()?;
        Ok((path, boundary))
    }

    fn stow_curl(&self, (body, boundary): &(PathBuf, String)) -> anyhow::Result<Duration> {
        self.delete_study()?;
        let mut command = self.curl();
        command
            .args(["-X", "POST", "-H", "Expect:", "-H", "Accept: application/dicom+json", "-H"])
            .arg(format!("Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}"))
            .arg("-T")
            .arg(body)
            .arg(format!("{}/studies/{}", self.orthanc.dicomweb_url(), self.study));
        let started = Instant::now();
        let status = run_ok(&mut command)?;
        let took = started.elapsed();
        ensure!(status.trim() == "200", "curl STOW: HTTP {status}");
        self.ensure_stored("curl")?;
        Ok(took)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
