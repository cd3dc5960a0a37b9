//! `lightbox info` on every folder of the shared test data. Series counts and dimensions are
//! checked against dcm2niix's reference conversions in each dataset's `Ref/` folder.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use lightbox_tests::{bin, data, demo_study, run_ok};

/// One `series` line of `lightbox info`.
#[derive(Debug)]
struct SeriesLine {
    number: String,
    modality: String,
    /// columns, rows, slices, time points
    dims: [u32; 4],
    mosaic: bool,
    instances: usize,
    line: String,
}

fn info(path: &Path) -> anyhow::Result<(Vec<SeriesLine>, String)> {
    let out = run_ok(Command::new(bin("lightbox")?).arg("info").arg(path))?;
    let mut series = Vec::new();
    for line in out.lines().filter(|l| l.trim_start().starts_with("series ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let dims = if words[3] == "no" {
            [0; 4]
        } else {
            let parts: Vec<u32> = words[3].split('x').map(str::parse).collect::<Result<_, _>>()?;
            [parts[0], parts[1], parts[2], parts.get(3).copied().unwrap_or(1)]
        };
        let instances_at = words.iter().position(|w| w.starts_with("instances")).context("no instance count")?;
        series.push(SeriesLine {
            number: words[1].to_owned(),
            modality: words[2].to_owned(),
            dims,
            mosaic: words.contains(&"mosaic"),
            instances: words[instances_at - 1].parse()?,
            line: line.to_owned(),
        });
    }
    let summary = out.lines().last().context("no output")?.to_owned();
    Ok((series, summary))
}

/// `dim[1..=4]` of a NIfTI-1 file (dcm2niix writes little-endian NIfTI-1).
fn nifti_dims(path: &Path) -> anyhow::Result<[u32; 4]> {
    let header = std::fs::read(path)?;
    if header.len() < 348 || i32::from_le_bytes(header[0..4].try_into()?) != 348 {
        bail!("{}: not a little-endian NIfTI-1 file", path.display());
    }
    let dim = |i: usize| i16::from_le_bytes([header[40 + 2 * i], header[41 + 2 * i]]);
    let ndim = dim(0);
    Ok([1, 2, 3, 4].map(|i| if i as i16 <= ndim { dim(i).max(1) as u32 } else { 1 }))
}

/// dcm2niix names outputs `<description>_<series number>[_e<echo>][_<derived>].nii`: the series
/// number is the last all-digit part.
fn ref_series_number(file_stem: &str) -> Option<String> {
    file_stem.rsplit('_').find(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())).map(str::to_owned)
}

fn reference_dims(dataset: &str) -> anyhow::Result<BTreeMap<String, Vec<[u32; 4]>>> {
    let mut refs: BTreeMap<String, Vec<[u32; 4]>> = BTreeMap::new();
    for entry in std::fs::read_dir(data(dataset)?.join("Ref"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "nii") {
            let stem = path.file_stem().and_then(|s| s.to_str()).context("file name")?;
            if stem.ends_with("_ph") {
                continue; // the phase image of a series whose magnitude is listed already
            }
            let number = ref_series_number(stem).context("series number in Ref name")?;
            refs.entry(number).or_default().push(nifti_dims(&path)?);
        }
    }
    Ok(refs)
}

#[test]
fn demo_study_is_one_adc_series() -> anyhow::Result<()> {
    let (series, summary) = info(&demo_study())?;
    assert_eq!(summary, "20 files: 1 patients, 1 studies, 1 series, 0 unreadable");
    assert_eq!(series.len(), 1);
    assert_eq!((series[0].number.as_str(), series[0].modality.as_str()), ("701", "MR"));
    assert_eq!(series[0].dims, [256, 256, 20, 1]);
    Ok(())
}

#[test]
fn dcm_qa_nih_matches_dcm2niix() -> anyhow::Result<()> {
    let (series, summary) = info(&data("dcm_qa_nih")?)?;
    assert!(summary.contains("1 patients, 2 studies, 8 series"), "{summary}");
    // Series numbers repeat across the GE and the Siemens study: each series must match one
    // reference of its number, and every reference must be matched once.
    let mut refs = reference_dims("dcm_qa_nih")?;
    assert_eq!(refs.values().map(Vec::len).sum::<usize>(), 8, "{refs:?}");
    for s in &series {
        let candidates = refs.get_mut(&s.number).with_context(|| format!("no Ref for {}", s.line))?;
        let at = candidates
            .iter()
            .position(|r| *r == s.dims)
            .with_context(|| format!("no Ref of shape {:?} for {}: {candidates:?}", s.dims, s.line))?;
        candidates.remove(at);
        // Single-frame instances: one per slice and time point; mosaics: one per time point.
        let per_instance = if s.mosaic { s.dims[2] } else { 1 };
        assert_eq!(s.instances as u32 * per_instance, s.dims[2] * s.dims[3], "{}", s.line);
    }
    assert!(refs.values().all(Vec::is_empty), "references without a series: {refs:?}");
    Ok(())
}

#[test]
fn dcm_qa_enh_multiframe_matches_dcm2niix() -> anyhow::Result<()> {
    let (series, summary) = info(&data("dcm_qa_enh")?)?;
    assert!(summary.contains("2 patients, 2 studies, 2 series"), "{summary}");
    let refs = reference_dims("dcm_qa_enh")?;
    // Siemens XA10: 4 instances of 6 frames = dcm2niix's 64x64x6x4.
    let siemens = series.iter().find(|s| s.number == "6").context("series 6")?;
    assert_eq!(refs["6"], vec![siemens.dims]);
    // Philips B0: one instance of 64 frames, two display sets (magnitude and field map), as
    // dcm2niix's two 64x64x32 outputs.
    let philips = series.iter().find(|s| s.number == "801").context("series 801")?;
    assert_eq!(refs["801"], vec![philips.dims, philips.dims]);
    assert!(philips.line.contains("+1 sets"), "{}", philips.line);
    Ok(())
}

#[test]
fn dcm_qa_ts_reads_every_transfer_syntax() -> anyhow::Result<()> {
    let dir = data("dcm_qa_ts")?;
    let (series, summary) = info(&dir)?;
    assert!(summary.contains("1 patients, 1 studies, 1 series"), "{summary}");
    let s = &series[0];
    // Nine copies of one 64x64x35 mosaic (as dcm2niix's Ref/N.nii) at the same position: nine
    // time points of one display set.
    assert_eq!((s.instances, s.mosaic), (9, true), "{}", s.line);
    for n in 1..=9 {
        let d = nifti_dims(&dir.join(format!("Ref/{n}.nii")))?;
        assert_eq!(s.dims, [d[0], d[1], d[2], 9], "{}", s.line);
    }
    for ts in [
        "Explicit VR Little Endian",
        "Implicit VR Little Endian",
        "Explicit VR Big Endian",
        "RLE Lossless",
        "JPEG-LS Lossless",
        "JPEG 2000 Image Compression (Lossless Only)",
    ] {
        assert!(s.line.contains(ts), "{ts} missing: {}", s.line);
    }
    Ok(())
}

#[test]
fn dcmqi_data_lists_images_segmentations_and_reports() -> anyhow::Result<()> {
    let (series, summary) = info(&data("dcmqi_data")?)?;
    assert!(summary.contains("4 patients, 4 studies, 11 series"), "{summary}");
    let count = |m: &str| series.iter().filter(|s| s.modality == m).count();
    assert_eq!((count("SEG"), count("SR"), count("CT"), count("MR")), (5, 1, 3, 1));
    let adc = series.iter().find(|s| s.modality == "MR").context("MR")?;
    assert_eq!(adc.dims, [256, 256, 20, 1]);
    Ok(())
}

#[test]
fn pydicom_testfiles_broken_files_get_reasons_not_panics() -> anyhow::Result<()> {
    let dir = data("pydicom_testfiles")?;
    let out = run_ok(Command::new(bin("lightbox")?).arg("info").arg(&dir))?;
    let reason = |file: &str| {
        out.lines().find(|l| l.trim_start().starts_with(&format!("{}: ", dir.join(file).display()))).map(str::to_owned)
    };
    let no_meta = reason("no_meta.dcm").context("no_meta.dcm not listed")?;
    assert!(no_meta.ends_with("no Part 10 header: no 'DICM' marker at byte 128)"), "{no_meta}");
    let truncated = reason("rtplan_truncated.dcm").context("rtplan_truncated.dcm not listed")?;
    assert!(truncated.contains("invalid DICOM"), "{truncated}");
    let dicomdir = reason("dicomdirtests/DICOMDIR").context("DICOMDIR not listed")?;
    assert!(dicomdir.contains("DICOMDIR index"), "{dicomdir}");
    // A well-formed file among the broken ones is still read: CT_small is 128x128.
    assert!(out.lines().any(|l| l.contains(" CT  128x128x1 ")), "CT_small missing");
    Ok(())
}

#[test]
fn nifti_only_folders_list_no_series() -> anyhow::Result<()> {
    for folder in ["nilearn_mni152", "open_ms_longitudinal"] {
        let (series, summary) = info(&data(folder)?)?;
        assert!(series.is_empty(), "{folder}: {series:?}");
        assert!(summary.contains("0 series"), "{folder}: {summary}");
    }
    Ok(())
}

#[test]
fn missing_folder_is_a_clear_error() -> anyhow::Result<()> {
    let output = Command::new(bin("lightbox")?).args(["info", "/nonexistent/studies"]).output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.starts_with("lightbox: error: /nonexistent/studies: cannot read"), "{stderr}");
    Ok(())
}

/// Regression (found by fuzzing): files declaring elements far larger than themselves made
/// dicom-rs reserve gigabytes (3.7 GB for 674 bytes). They must be rejected with a reason, in
/// little memory.
#[test]
fn files_claiming_huge_elements_are_rejected_without_huge_allocations() -> anyhow::Result<()> {
    let fixtures = lightbox_tests::workspace_root().join("tests/fixtures/fuzz");
    let paths = [
        data("pydicom_testfiles/UN_sequence.dcm")?,
        data("pydicom_testfiles/SC_rgb_jpeg.dcm")?,
        fixtures.join("oom-6f9bdca5acebc473c43a63317889e7d3aae5c59b"),
        fixtures.join("crash-46e82bfefa48c1515e537cb9a1e87537a2ba78c6"),
        fixtures.join("crash-1a5de81d64f5208d1b8530dec92fe7bff5b1e1c5"),
        fixtures.join("crash-3f611b425a4ab07fed0aa6fe7072beebc4812690"),
    ];
    for path in paths {
        let file = path.display().to_string();
        let rss = tempfile::NamedTempFile::new()?;
        let out = run_ok(
            Command::new("/usr/bin/time")
                .args(["-f", "%M", "-o"])
                .arg(rss.path())
                .arg(bin("lightbox")?)
                .arg("info")
                .arg(&path),
        )?;
        assert!(out.contains("invalid DICOM"), "{file}: {out}");
        let kb: u64 = std::fs::read_to_string(rss.path())?.trim().lines().last().unwrap_or("0").parse()?;
        assert!(kb < 100 * 1024, "{file}: peak RSS {kb} KB");
    }
    Ok(())
}

/// Export of a fuzz fixture: it must fail with exit code 2 and an error naming the file.
fn export_fails(fixture: &str) -> anyhow::Result<(std::path::PathBuf, String)> {
    let dir = tempfile::tempdir()?;
    let fixture = lightbox_tests::workspace_root().join("tests/fixtures/fuzz").join(fixture);
    let input = dir.path().join("in");
    std::fs::create_dir(&input)?;
    std::fs::copy(&fixture, input.join("fuzzed.dcm"))?;
    let output = Command::new(bin("lightbox")?)
        .args(["export", "--nifti"])
        .arg(dir.path().join("out"))
        .arg(&input)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    Ok((input.join("fuzzed.dcm"), String::from_utf8(output.stderr)?))
}

/// Regression (found by fuzzing): RLE data whose last fragment runs past the end of the file
/// made dicom-rs's RLE decoder panic. The pre-check now stops it before decoding; a codec that
/// still panics is turned into a decode error at the decode boundary.
#[test]
fn malformed_rle_is_an_error_naming_the_file() -> anyhow::Result<()> {
    let (file, stderr) = export_fails("crash-d3d506007228b7ef06180c38c55332f9ce0a370f")?;
    assert!(stderr.contains(&format!("lightbox: error: {}: ", file.display())), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

/// Regression (found by fuzzing): a huge element after the pixel data. The volume loader reads
/// native pixels directly and never parses what follows them, so the header scan walks the tail
/// too: the file is unreadable, and an export with nothing else to export fails naming it.
#[test]
fn a_huge_element_after_the_pixels_is_a_named_error() -> anyhow::Result<()> {
    let (file, stderr) = export_fails("crash-d74fd1c5b45f4d20504c2262abdc6dea11aecd9c")?;
    let expected = format!("{}: invalid DICOM: element (0121,00FB) declares 19202330 bytes", file.display());
    assert!(stderr.contains(&expected), "{stderr}");
    Ok(())
}

/// The README's walkthrough starts with `scripts/demo-pacs.sh`: a local Orthanc holding the demo
/// study that `lightbox pacs` reaches with the settings it prints; stopping the script stops
/// Orthanc and removes its data.
#[test]
fn demo_pacs_script_serves_the_demo_study() -> anyhow::Result<()> {
    use lightbox_tests::orthanc::free_port;
    use std::process::Stdio;
    let (http, dicom) = (free_port()?, free_port()?);
    let mut script = lightbox_tests::KillOnDrop(
        Command::new("bash")
            .arg(lightbox_tests::workspace_root().join("scripts/demo-pacs.sh"))
            .args([http.to_string(), dicom.to_string()])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = lightbox_tests::Lines::new(script.0.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let export = lines.wait_for("export LIGHTBOX_PACS_URL=", std::time::Duration::from_secs(60))?;
    let url =
        export.split("LIGHTBOX_PACS_URL=").nth(1).and_then(|s| s.split(' ').next()).unwrap_or_default().to_owned();
    assert_eq!(url, format!("http://127.0.0.1:{http}/dicom-web"));
    let lightbox = |args: &[&str]| {
        run_ok(
            Command::new(bin("lightbox")?)
                .args(args)
                .env("LIGHTBOX_PACS_URL", &url)
                .env("LIGHTBOX_PACS_USER", "lightbox")
                .env("LIGHTBOX_PACS_PASSWORD", "lightbox"),
        )
    };
    assert!(lightbox(&["pacs", "status"])?.contains("reachable ("));
    let studies = lightbox(&["pacs", "query"])?;
    assert!(studies.contains("20 instances") && studies.contains("QIN-PROSTATE-01-0001"), "{studies}");
    // Stop it (SIGTERM: a background job may have SIGINT ignored): Orthanc goes with it.
    run_ok(Command::new("kill").args(["-TERM", &script.0.id().to_string()]))?;
    script.0.wait()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let gone = Command::new(bin("lightbox")?)
        .args(["pacs", "status"])
        .env("LIGHTBOX_PACS_URL", &url)
        .env("LIGHTBOX_PACS_USER", "lightbox")
        .env("LIGHTBOX_PACS_PASSWORD", "lightbox")
        .output()?;
    assert!(!gone.status.success(), "Orthanc still answers after the script stopped");
    Ok(())
}
