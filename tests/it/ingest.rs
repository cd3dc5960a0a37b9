//! Geometry and voxel parity with dcm2niix: every series of `dcm_qa_*` against the NIfTI files
//! dcm2niix made of it (`Ref/`). The voxel grids may be ordered differently (dcm2niix flips rows);
//! what must agree is where every voxel lies in the patient and what value it has.

use std::path::Path;

use anyhow::{Context, bail};
use lightbox_core::Volume;
use lightbox_dicom::DisplaySet;
use lightbox_tests::data;

/// Millimetres for positions and spacing, and the tolerance for direction cosines.
const MM_TOLERANCE: f64 = 1e-3;
const COSINE_TOLERANCE: f64 = 1e-4;

/// How our voxel values must relate to dcm2niix's.
#[derive(Clone, Copy, Debug)]
enum Values {
    /// The same after Rescale Slope/Intercept.
    Identical,
    /// Related by one linear map over the whole volume, for the reason given: dcm2niix applies a
    /// scaling on purpose that we do not.
    Linear(&'static str),
}

/// The deliberate differences, by dataset and series number.
fn expected_values(dataset: &str, series_number: &str) -> Values {
    match (dataset, series_number) {
        ("dcm_qa_enh", "801") => Values::Linear(
            "Philips: dcm2niix applies Philips' private floating-point scaling (MRScaleSlope, 2005,100E) and \
             converts the field map to Hz; Lightbox applies the standard Rescale Slope/Intercept",
        ),
        _ => Values::Identical,
    }
}

/// Checks that `ours` and `reference` place every voxel at the same point, with the same value
/// (or linearly related values, see [`Values`]).
fn assert_same_volume(what: &str, ours: &Volume<f32>, reference: &Volume<f32>, values: Values) -> anyhow::Result<()> {
    let voxel_from_patient = ours.patient_from_voxel.inverse().context("our affine is singular")?;
    let ours_from_ref = voxel_from_patient.compose(&reference.patient_from_voxel);
    // The map between the grids must be a signed permutation plus a whole-voxel shift.
    let mut map = ours_from_ref;
    for row in map.rows.iter_mut() {
        for v in row.iter_mut() {
            *v = v.round();
        }
    }
    let expected = ours.patient_from_voxel.compose(&map);
    for c in 0..4 {
        let (e, r) = (expected.axis(c), reference.patient_from_voxel.axis(c));
        for k in 0..3 {
            let tolerance = if c < 3 {
                COSINE_TOLERANCE * (r[0].powi(2) + r[1].powi(2) + r[2].powi(2)).sqrt().max(1.0)
            } else {
                MM_TOLERANCE
            };
            if (e[k] - r[k]).abs() > tolerance.max(MM_TOLERANCE) {
                bail!("{what}: affine column {c} is {e:?}, dcm2niix has {r:?}");
            }
        }
    }
    let [nx, ny, nz] = reference.dims();
    let mut pairs = Vec::with_capacity(nx * ny * nz);
    for k in 0..nz {
        for j in 0..ny {
            for i in 0..nx {
                let p = map.transform_point([i as f64, j as f64, k as f64]).map(|v| v.round() as i64);
                let dims = ours.dims();
                if p.iter().zip(dims).any(|(&v, d)| v < 0 || v >= d as i64) {
                    bail!("{what}: reference voxel ({i},{j},{k}) maps outside our grid to {p:?}");
                }
                let a = ours.get(p[0] as usize, p[1] as usize, p[2] as usize).context("in range")?;
                let b = reference.get(i, j, k).context("in range")?;
                if matches!(values, Values::Identical) && (a - b).abs() > 1e-3 * b.abs().max(1.0) {
                    bail!("{what}: voxel ({i},{j},{k}) is {a} here, {b} in dcm2niix");
                }
                pairs.push((f64::from(a), f64::from(b)));
            }
        }
    }
    assert_eq!(pairs.len(), ours.voxels().len(), "{what}: grids differ in size");
    if let Values::Linear(reason) = values {
        // Least squares b = slope * a + offset; every voxel must sit on the line.
        let n = pairs.len() as f64;
        let (sa, sb) = pairs.iter().fold((0.0, 0.0), |(x, y), (a, b)| (x + a, y + b));
        let (ma, mb) = (sa / n, sb / n);
        let cov: f64 = pairs.iter().map(|(a, b)| (a - ma) * (b - mb)).sum();
        let var: f64 = pairs.iter().map(|(a, _)| (a - ma).powi(2)).sum();
        let slope = cov / var.max(1e-30);
        let range = pairs.iter().map(|(_, b)| b.abs()).fold(0.0, f64::max).max(1e-9);
        let worst = pairs.iter().map(|(a, b)| (b - (mb + slope * (a - ma))).abs()).fold(0.0, f64::max);
        if var == 0.0 || worst > 1e-3 * range {
            bail!(
                "{what}: values not linearly related to dcm2niix's (worst residual {worst}); expected because {reason}"
            );
        }
    }
    Ok(())
}

fn check_display_set(what: &str, set: &DisplaySet, reference: &Path, values: Values) -> anyhow::Result<()> {
    let image = lightbox_nifti::read(reference)?;
    let dims = [set.columns as usize, set.rows as usize, set.slices as usize, set.time_points as usize];
    let mut sorted_ours = dims;
    let mut sorted_ref = image.dims;
    sorted_ours[..3].sort_unstable();
    sorted_ref[..3].sort_unstable();
    if sorted_ours != sorted_ref {
        bail!("{what}: {dims:?} here, {:?} in dcm2niix ({})", image.dims, reference.display());
    }
    for t in 0..set.time_points {
        let ours = set.load(t)?;
        if t == 0 {
            // The direct read of uncompressed pixels and dicom-pixeldata agree to the bit.
            let decoded = set.load_reference(t)?;
            let differ = ours.voxels().iter().zip(decoded.voxels()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            if differ > 0 {
                bail!("{what}: {differ} voxels differ between the direct read and dicom-pixeldata");
            }
            // The stored-type volume gives the same real values.
            let stored = set.load_stored(t)?;
            let real = stored.to_f32();
            let differ = ours.voxels().iter().zip(real.voxels()).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            if differ > 0 || real.dims() != ours.dims() {
                let first = ours.voxels().iter().zip(real.voxels()).position(|(a, b)| a.to_bits() != b.to_bits());
                bail!(
                    "{what}: {differ} voxels differ between the stored-type volume and the real values \
                     (first at {first:?}: {:?} vs {:?}; stored as {} bytes/voxel, slope {}, intercept {})",
                    first.map(|i| ours.voxels()[i]),
                    first.map(|i| real.voxels()[i]),
                    stored.voxels().bytes_per_voxel(),
                    stored.slope,
                    stored.intercept
                );
            }
        }
        assert_same_volume(&format!("{what} t={t}"), &ours, &image.volume(t as usize)?, values)?;
    }
    Ok(())
}

/// Display sets of every series under `dataset/In`, paired with the `Ref/` file of the same
/// series number (and echo, in label order).
fn check_dataset(dataset: &str) -> anyhow::Result<usize> {
    let root = data(dataset)?;
    let report = lightbox_dicom::scan_path(&root.join("In"))?;
    let refs: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("Ref"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "nii"))
        .collect();
    let mut checked = 0;
    for (_, series) in report.series() {
        let number = series.number.context("series number")?.to_string();
        let mut candidates: Vec<&std::path::PathBuf> = refs
            .iter()
            .filter(|p| {
                let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                !stem.ends_with("_ph")
                    && stem.split('_').rfind(|part| part.bytes().all(|b| b.is_ascii_digit())) == Some(&number)
            })
            .collect();
        candidates.sort();
        let sets = lightbox_dicom::display_sets(series)?;
        // Several series share a number across studies: the reference must match in shape.
        let mut matched = false;
        for reference in &candidates {
            let header = lightbox_nifti::read(reference)?;
            let fitting: Vec<&DisplaySet> = sets
                .iter()
                .filter(|s| {
                    let mut a = [s.columns as usize, s.rows as usize, s.slices as usize];
                    let mut b = [header.dims[0], header.dims[1], header.dims[2]];
                    a.sort_unstable();
                    b.sort_unstable();
                    a == b && s.time_points as usize == header.dims[3]
                })
                .collect();
            let values = expected_values(dataset, &number);
            let Some(set) =
                fitting.iter().find(|s| check_display_set("probe", s, reference, values).is_ok()).or(fitting.first())
            else {
                continue;
            };
            let what = format!("{dataset} series {number} {:?} vs {}", set.label, reference.display());
            check_display_set(&what, set, reference, values)?;
            matched = true;
            checked += 1;
        }
        if !matched {
            bail!("{dataset} series {number}: no reference of the same shape among {candidates:?}");
        }
    }
    Ok(checked)
}

#[test]
fn dcm_qa_nih_geometry_and_voxels_match_dcm2niix() -> anyhow::Result<()> {
    assert_eq!(check_dataset("dcm_qa_nih")?, 8);
    Ok(())
}

#[test]
fn dcm_qa_enh_geometry_and_voxels_match_dcm2niix() -> anyhow::Result<()> {
    assert_eq!(check_dataset("dcm_qa_enh")?, 3);
    Ok(())
}

#[test]
fn dcm_qa_ts_every_transfer_syntax_matches_dcm2niix() -> anyhow::Result<()> {
    let root = data("dcm_qa_ts")?;
    let mut failures = Vec::new();
    for n in 1..=9 {
        let report = lightbox_dicom::scan_path(&root.join(format!("In/{n}.dcm")))?;
        let (_, series) = report.series().next().context("one series")?;
        let sets = lightbox_dicom::display_sets(series)?;
        let set = sets.first().context("one display set")?;
        let what = format!("dcm_qa_ts {n}.dcm ({})", series.transfer_syntaxes.join(", "));
        if let Err(e) = check_display_set(&what, set, &root.join(format!("Ref/{n}.nii")), Values::Identical) {
            failures.push(format!("{e:#}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn exported_nifti_matches_dcm2niix() -> anyhow::Result<()> {
    let root = data("dcm_qa_nih")?;
    let out = tempfile::tempdir()?;
    let listed = lightbox_tests::run_ok(
        std::process::Command::new(lightbox_tests::bin("lightbox")?)
            .args(["export", "--nifti"])
            .arg(out.path())
            .arg(root.join("In")),
    )?;
    let files: Vec<&str> = listed.lines().collect();
    assert_eq!(files.len(), 8, "{listed}");
    // dcm2niix names its files after the protocol, we after the description: pair by series
    // number and shape.
    let mut pairs = 0;
    for file in files {
        let ours = lightbox_nifti::read(Path::new(file))?;
        let number = Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit('_').next())
            .context("number")?;
        let reference = std::fs::read_dir(root.join("Ref"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "nii"))
            .filter(|p| p.file_stem().and_then(|s| s.to_str()).is_some_and(|s| s.ends_with(&format!("_{number}"))))
            .map(|p| lightbox_nifti::read(&p))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|r| r.dims == ours.dims)
            .with_context(|| format!("no Ref of shape {:?} for {file}", ours.dims))?;
        for t in 0..ours.time_points() {
            assert_same_volume(&format!("{file} t={t}"), &ours.volume(t)?, &reference.volume(t)?, Values::Identical)?;
        }
        pairs += 1;
    }
    assert_eq!(pairs, 8);
    Ok(())
}

#[test]
fn nifti_brain_becomes_a_dicom_series_in_the_same_place() -> anyhow::Result<()> {
    let nifti = data("open_ms_longitudinal/raw/patient01/study1_T1W.nii.gz")?;
    let out = tempfile::tempdir()?;
    let printed = lightbox_tests::run_ok(
        std::process::Command::new(lightbox_tests::bin("lightbox")?)
            .arg("to-dicom")
            .arg(&nifti)
            .arg("--out")
            .arg(out.path())
            .args(["--patient-id", "MS-01", "--patient-name", "Open^MS", "--series-description", "T1W"]),
    )?;
    let image = lightbox_nifti::read(&nifti)?;
    assert_eq!(printed.trim(), format!("{} files in {}", image.dims[2], out.path().display()));
    let report = lightbox_dicom::scan_path(out.path())?;
    assert!(report.issues.is_empty(), "{:?}", report.issues);
    let (study, series) = report.series().next().context("a series")?;
    assert_eq!((study.patient.name.as_str(), series.description.as_str()), ("Open^MS", "T1W"));
    let set = &report.display_sets(series)[0];
    let reference = image.volume(0)?;
    // Integer T1 values that fit 16 bits are stored exactly; the grid lies where the NIfTI says.
    assert_same_volume("open_ms T1W as DICOM", &set.load(0)?, &reference, Values::Identical)?;
    Ok(())
}
