//! DICOM SEG and SR writing, checked by others: highdicom reads our segments back voxel for voxel,
//! dciodvfy (dicom3tools) finds no error, and Orthanc stores it and returns it unchanged.

use std::process::Command;

use anyhow::{Context, bail, ensure};
use lightbox_core::Volume;
use lightbox_dicom::{Code, SegSeries, Segment, SegmentAlgorithm, write_seg};
use lightbox_tests::{demo_study, run_ok};

fn python() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("LIGHTBOX_PY_VENV").unwrap_or_else(|_| "/var/tmp/lightbox-py".into()))
        .join("bin/python")
}

fn demo_segments() -> Vec<Segment> {
    vec![
        Segment {
            label: "ADC above 1500".into(),
            category: Code::new("91723000", "SCT", "Anatomical Structure"),
            property_type: Code::new("41216001", "SCT", "Prostate"),
            algorithm: SegmentAlgorithm::Automatic { name: "Lightbox threshold".into(), version: "0.1".into() },
        },
        Segment {
            label: "Region of interest".into(),
            category: Code::new("49755003", "SCT", "Morphologically Altered Structure"),
            property_type: Code::new("4147007", "SCT", "Mass"),
            algorithm: SegmentAlgorithm::Manual,
        },
    ]
}

fn demo_series() -> SegSeries {
    SegSeries {
        series_description: "AI segmentation (research, not for clinical use)".into(),
        series_number: 901,
        content_label: "LIGHTBOX_AI".into(),
        content_description: "AI output: threshold mask and a manual box".into(),
        creator: "Lightbox^AI".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        uid_seed: None,
    }
}

/// Two segments on the demo ADC series: a threshold mask (a real computation) and a box.
fn write_demo_seg(out: &std::path::Path) -> anyhow::Result<(Volume<u8>, lightbox_dicom::Written)> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().context("no series")?;
    let set = report.display_sets(series).first().context("no display set")?;
    let volume = set.load(0)?;
    let [nx, ny, nz] = volume.dims();
    let threshold = 1500.0;
    let mut labels: Vec<u8> = volume.voxels().iter().map(|&v| u8::from(v > threshold)).collect();
    for z in 8..12 {
        for y in 100..140 {
            for x in 100..150 {
                labels[x + nx * (y + ny * z)] = 2;
            }
        }
    }
    let labels = Volume::new([nx, ny, nz], labels, volume.patient_from_voxel)?;
    let (segments, series) = (demo_segments(), demo_series());
    let written = write_seg(set, 0, &labels, &segments, &series, out)?;
    Ok((labels, written))
}

/// dciodvfy: no errors (warnings about optional attributes are printed, not failed on).
fn dciodvfy_clean(path: &std::path::Path) -> anyhow::Result<()> {
    let output = Command::new("dciodvfy").arg(path).output().context("dciodvfy (Debian dicom3tools)")?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    ensure!(errors.is_empty(), "dciodvfy errors:\n{}\n\nfull report:\n{report}", errors.join("\n"));
    Ok(())
}

/// highdicom's reading of a SEG: per segment, per source instance, the voxel count and the sum
/// of values (fractional values rescaled to 0..1).
fn highdicom_read(seg: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let script = r#"
import sys, json, highdicom as hd, pydicom, glob, numpy as np
seg = hd.seg.segread(sys.argv[1])
sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in glob.glob(sys.argv[2] + "/*")
           if f.endswith(".dcm")}
out = {"uid": seg.SOPInstanceUID, "type": seg.SegmentationType, "sop_class": seg.SOPClassUID, "segments": {}}
for number in seg.segment_numbers:
    desc = seg.get_segment_description(number)
    counts, sums = {}, {}
    for uid in sources:
        try:
            mask = seg.get_pixels_by_source_instance([uid], segment_numbers=[number])
        except Exception:
            continue
        counts[uid] = int(np.count_nonzero(mask))
        sums[uid] = float(np.sum(mask, dtype=np.float64))
    out["segments"][str(number)] = {"label": desc.segment_label, "type": desc.segmented_property_type.meaning,
                                    "algorithm": desc.algorithm_type.value, "counts": counts, "sums": sums}
print(json.dumps(out))
"#;
    let printed = run_ok(Command::new(python()).args(["-c", script]).arg(seg).arg(demo_study()))?;
    Ok(serde_json::from_str(printed.trim())?)
}

/// Checks highdicom's per-slice reading of segment `number` against `expected(z)` = (count, sum).
fn check_slices(
    read: &serde_json::Value,
    number: u8,
    slices: usize,
    expected: impl Fn(usize) -> (u64, f64),
) -> anyhow::Result<()> {
    let segment = &read["segments"][number.to_string()];
    let (counts, sums) =
        (segment["counts"].as_object().context("no counts")?, segment["sums"].as_object().context("no sums")?);
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().context("no series")?;
    let set = report.display_sets(series).first().context("no display set")?;
    let uids = set_uids(set)?;
    ensure!(uids.len() == slices);
    let mut total = 0;
    for (z, uid) in uids.iter().enumerate() {
        let (count, sum) = expected(z);
        let theirs = counts.get(uid).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let their_sum = sums.get(uid).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        ensure!(count == theirs, "segment {number}, slice {z}: {theirs} voxels in highdicom, {count} here");
        ensure!(
            (sum - their_sum).abs() <= 1e-6 * sum.max(1.0),
            "segment {number}, slice {z}: sum {their_sum} vs {sum}"
        );
        total += count;
    }
    ensure!(total > 0, "segment {number} is empty");
    Ok(())
}

#[test]
fn seg_is_read_back_by_highdicom_and_passes_dciodvfy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seg = dir.path().join("seg.dcm");
    let (labels, written) = write_demo_seg(&seg)?;
    if let Ok(keep) = std::env::var("LIGHTBOX_KEEP_SEG") {
        std::fs::copy(&seg, keep)?;
    }
    dciodvfy_clean(&seg)?;
    let read = highdicom_read(&seg)?;
    ensure!(read["uid"] == written.sop_uid.as_str() && read["type"] == "BINARY", "{read}");
    let [nx, ny, nz] = labels.dims();
    for (number, label, algorithm) in [(1u8, "ADC above 1500", "AUTOMATIC"), (2, "Region of interest", "MANUAL")] {
        let segment = &read["segments"][number.to_string()];
        ensure!(segment["label"] == label && segment["algorithm"] == algorithm, "{segment}");
        check_slices(&read, number, nz, |z| {
            let n = labels.voxels()[z * nx * ny..(z + 1) * nx * ny].iter().filter(|&&v| v == number).count();
            (n as u64, n as f64)
        })?;
    }
    Ok(())
}

/// The same two segments as a Label Map SEG (one 8-bit frame per slice, pixel = segment number):
/// highdicom reads each segment back voxel for voxel.
#[test]
fn label_map_seg_is_read_back_by_highdicom() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("binary.dcm");
    let (labels, _) = write_demo_seg(&binary)?;
    let seg = dir.path().join("labelmap.dcm");
    let (set_report, segments, series) = demo_seg_parts()?;
    let (_, s) = set_report.series().next().context("no series")?;
    let set = set_report.display_sets(s).first().context("no display set")?;
    let written =
        lightbox_dicom::write_seg_as(set, 0, lightbox_dicom::SegPixels::LabelMap(&labels), &segments, &series, &seg)?;
    if let Ok(keep) = std::env::var("LIGHTBOX_KEEP_LABELMAP") {
        std::fs::copy(&seg, keep)?;
    }
    let read = highdicom_read(&seg)?;
    ensure!(read["uid"] == written.sop_uid.as_str() && read["type"] == "LABELMAP", "{read}");
    ensure!(read["sop_class"] == lightbox_dicom::LABEL_MAP_SEGMENTATION_STORAGE, "{read}");
    ensure!(std::fs::metadata(&seg)?.len() > 0);
    let [nx, ny, nz] = labels.dims();
    for number in [1u8, 2] {
        check_slices(&read, number, nz, |z| {
            let n = labels.voxels()[z * nx * ny..(z + 1) * nx * ny].iter().filter(|&&v| v == number).count();
            (n as u64, n as f64)
        })?;
    }
    dciodvfy_label_map(&seg)
}

/// dciodvfy from Debian 12 predates the Label Map SOP class (2024) and says "Information Object
/// Not found". So a copy is checked against the (binary/fractional) Segmentation IOD instead: the
/// only errors allowed are the two differences the Label Map IOD makes (Segmentation Type
/// LABELMAP, no per-frame Segment Identification); every other rule must hold.
fn dciodvfy_label_map(path: &std::path::Path) -> anyhow::Result<()> {
    let copy = path.with_extension("as-seg.dcm");
    std::fs::copy(path, &copy)?;
    run_ok(Command::new("dcmodify").args(["-nb", "-m", "SOPClassUID=1.2.840.10008.5.1.4.1.1.66.4"]).arg(&copy))?;
    let output = Command::new("dciodvfy").arg(&copy).output().context("dciodvfy (Debian dicom3tools)")?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let errors: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("Error"))
        .filter(|l| !l.contains("<LABELMAP> for value 1 of attribute <Segmentation Type>"))
        .filter(|l| !l.contains("Element=<SegmentIdentificationSequence> Module=<SegmentationMacro>"))
        .collect();
    ensure!(errors.is_empty(), "dciodvfy errors:\n{}\n\nfull report:\n{report}", errors.join("\n"));
    ensure!(report.contains("<LABELMAP>"), "dciodvfy did not read the copy as a Segmentation: {report}");
    Ok(())
}

/// A probability map as a FRACTIONAL SEG: highdicom's values equal ours to the 1/255 step.
#[test]
fn fractional_seg_is_read_back_by_highdicom_and_passes_dciodvfy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (report, segments, series) = demo_seg_parts()?;
    let (_, s) = report.series().next().context("no series")?;
    let set = report.display_sets(s).first().context("no display set")?;
    let volume = set.load(0)?;
    // A real probability: a logistic of the ADC value around 1500.
    let probability = |v: f32| 1.0 / (1.0 + (-(f64::from(v) - 1500.0) / 100.0).exp());
    let quantised = |v: f32| (probability(v).clamp(0.0, 1.0) * 255.0).round() / 255.0;
    let p: Vec<f32> = volume.voxels().iter().map(|&v| probability(v) as f32).collect();
    let first = Volume::new(volume.dims(), p, volume.patient_from_voxel)?;
    let second = Volume::new(volume.dims(), vec![0.0f32; first.voxels().len()], volume.patient_from_voxel)?;
    let mut second_voxels = second.voxels().to_vec();
    let [nx, ny, nz] = volume.dims();
    for z in 8..12 {
        for y in 100..140 {
            for x in 100..150 {
                second_voxels[x + nx * (y + ny * z)] = 0.5;
            }
        }
    }
    let second = Volume::new(volume.dims(), second_voxels, volume.patient_from_voxel)?;
    let seg = dir.path().join("fractional.dcm");
    let written = lightbox_dicom::write_seg_as(
        set,
        0,
        lightbox_dicom::SegPixels::Fractional(&[first.clone(), second.clone()]),
        &segments,
        &series,
        &seg,
    )?;
    dciodvfy_clean(&seg)?;
    let read = highdicom_read(&seg)?;
    ensure!(read["uid"] == written.sop_uid.as_str() && read["type"] == "FRACTIONAL", "{read}");
    for (number, v) in [(1u8, &first), (2, &second)] {
        check_slices(&read, number, nz, |z| {
            let slice = &volume.voxels()[z * nx * ny..(z + 1) * nx * ny];
            let ours = &v.voxels()[z * nx * ny..(z + 1) * nx * ny];
            let q: Vec<f64> = if number == 1 {
                slice.iter().map(|&a| quantised(a)).collect()
            } else {
                ours.iter().map(|&p| (f64::from(p) * 255.0).round() / 255.0).collect()
            };
            (q.iter().filter(|&&x| x > 0.0).count() as u64, q.iter().sum())
        })?;
    }
    Ok(())
}

/// The demo study, the two segments and the series description used by the SEG tests.
fn demo_seg_parts() -> anyhow::Result<(lightbox_dicom::ScanReport, Vec<Segment>, SegSeries)> {
    let report = lightbox_dicom::scan_path(&demo_study())?;
    Ok((report, demo_segments(), demo_series()))
}

/// The SOP Instance UID of each slice of the demo study, in slice order (read by dcmdump).
fn set_uids(set: &lightbox_dicom::DisplaySet) -> anyhow::Result<Vec<String>> {
    let volume = set.load(0)?;
    let mut by_position = Vec::new();
    for entry in std::fs::read_dir(demo_study())? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "dcm") {
            continue;
        }
        let out =
            run_ok(Command::new("dcmdump").args(["+P", "SOPInstanceUID", "+P", "ImagePositionPatient"]).arg(&path))?;
        let uid = out
            .lines()
            .find(|l| l.contains("SOPInstanceUID"))
            .and_then(|l| l.split('[').nth(1))
            .and_then(|l| l.split(']').next());
        let pos = out
            .lines()
            .find(|l| l.contains("ImagePositionPatient"))
            .and_then(|l| l.split('[').nth(1))
            .and_then(|l| l.split(']').next())
            .map(|p| p.split('\\').filter_map(|v| v.trim().parse::<f64>().ok()).collect::<Vec<_>>());
        if let (Some(uid), Some(pos)) = (uid, pos) {
            by_position.push((pos, uid.to_owned()));
        }
    }
    // Slice k lies at patient_from_voxel · (0, 0, k).
    let a = volume.patient_from_voxel;
    let mut uids = Vec::new();
    for k in 0..volume.dims()[2] {
        let p = a.transform_point([0.0, 0.0, k as f64]);
        let (_, uid) =
            by_position.iter().min_by(|(x, _), (y, _)| dist(x, &p).total_cmp(&dist(y, &p))).context("no slices")?;
        uids.push(uid.clone());
    }
    Ok(uids)
}

fn dist(a: &[f64], b: &[f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>()
}

#[tokio::test]
async fn seg_goes_to_orthanc_and_comes_back_unchanged() -> anyhow::Result<()> {
    use lightbox_pacs::{Auth, DicomWebClient, DicomWebConfig, QidoQuery};
    let orthanc = lightbox_tests::orthanc::Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let seg = dir.path().join("seg.dcm");
    let uid = write_demo_seg(&seg)?.1.sop_uid;
    let mut config = DicomWebConfig::new(orthanc.dicomweb_url());
    config.auth = Auth::Basic { user: orthanc.user().into(), password: orthanc.password().into() };
    let client = DicomWebClient::new(config)?;
    let stored = client.store_files(None, std::slice::from_ref(&seg)).await?;
    ensure!(stored.stored == [uid.clone()] && stored.failed.is_empty(), "{stored:?}");
    let found = client
        .search(
            &lightbox_pacs::QidoLevel::Instances { study: None, series: None },
            &QidoQuery::new().matching("SOPInstanceUID", &uid),
        )
        .await?;
    ensure!(found.len() == 1);
    let study = found[0].string(lightbox_pacs::tags::STUDY_INSTANCE_UID).context("no study")?;
    let series = found[0].string(lightbox_pacs::tags::SERIES_INSTANCE_UID).context("no series")?;
    let back = client.retrieve_instance_to_dir(&study, &series, &uid, dir.path()).await?;
    ensure!(std::fs::read(&back)? == std::fs::read(&seg)?, "Orthanc changed the SEG");

    // The signed report of the pipeline too: STOW takes it, WADO gives back the same bytes.
    let store = dir.path().join("store");
    let (source, ..) = demo_seg_parts()?;
    let (_, s) = source.series().next().context("no series")?;
    let series_uid = s.uid.to_string();
    lightbox_workflow::import(&store, &demo_study())?;
    let job = lightbox_workflow::pipeline::run_pipeline(&store, "threshold-volume", &series_uid, 1500.0, None)?;
    let signed = lightbox_workflow::pipeline::sign(
        &store,
        job.job_id,
        "Doe^Jane",
        "pacs",
        lightbox_workflow::pipeline::Review::Accept,
    )?;
    let sr = lightbox_store::Store::open(&store)?.instance_file(&signed.sr_uid)?.context("no signed SR")?;
    let stored = client.store_files(None, std::slice::from_ref(&sr)).await?;
    ensure!(stored.stored == [signed.sr_uid.clone()] && stored.failed.is_empty(), "{stored:?}");
    let sr_series = lightbox_dicom::read_instance(&sr)?.series_uid.to_string();
    let out = dir.path().join("back");
    std::fs::create_dir_all(&out)?;
    let back = client.retrieve_instance_to_dir(&study, &sr_series, &signed.sr_uid, &out).await?;
    ensure!(std::fs::read(&back)? == std::fs::read(&sr)?, "Orthanc changed the SR");
    Ok(())
}

/// A TID 1500 measurement report over the SEG: highdicom finds the measurement groups with their
/// tracking identifiers, values, units and the referenced segment; dciodvfy finds no error.
#[test]
fn sr_measurement_report_is_read_back_by_highdicom_and_passes_dciodvfy() -> anyhow::Result<()> {
    use lightbox_dicom::{Measurement, MeasurementGroup, MeasurementReport, Observer, SegmentRef, write_sr};
    let dir = tempfile::tempdir()?;
    let seg_path = dir.path().join("seg.dcm");
    let (labels, seg) = write_demo_seg(&seg_path)?;
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().context("no series")?;
    let set = report.display_sets(series).first().context("no display set")?;
    let voxel_mm3: f64 = set.load(0)?.spacing_mm().iter().product();
    let volume_mm3 = labels.voxels().iter().filter(|&&v| v == 1).count() as f64 * voxel_mm3;
    let mm3 = Code::new("mm3", "UCUM", "cubic millimeter");
    let sr = MeasurementReport {
        observers: vec![Observer::Device { name: "Lightbox threshold".into(), uid: lightbox_dicom::new_uid() }],
        procedure: Code::new("25056-3", "LN", "MRI unspecified body region"),
        groups: vec![MeasurementGroup {
            tracking_id: "ADC region 1".into(),
            tracking_uid: lightbox_dicom::new_uid(),
            finding: Some(Code::new("52988006", "SCT", "Lesion")),
            observer: None,
            finding_site: Some(Code::new("41216001", "SCT", "Prostate")),
            segment: Some(SegmentRef { seg: seg.clone(), number: 1 }),
            measurements: vec![Measurement {
                concept: Code::new("118565006", "SCT", "Volume"),
                value: volume_mm3,
                unit: mm3,
                algorithm: Some(lightbox_dicom::Algorithm {
                    name: "Lightbox threshold".into(),
                    version: "0.1".into(),
                    parameters: vec!["threshold=1500".into()],
                }),
            }],
            qualitative: vec![],
        }],
        series_description: "AI measurements (research, not for clinical use)".into(),
        series_number: 902,
        verified_by: None,
        verifying_organization: String::new(),
        uid_seed: None,
    };
    let sr_path = dir.path().join("sr.dcm");
    let uid = write_sr(set, 0, &sr, &sr_path)?;

    let output = Command::new("dciodvfy").arg(&sr_path).output().context("dciodvfy (Debian dicom3tools)")?;
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let errors: Vec<&str> = printed.lines().filter(|l| l.starts_with("Error")).collect();
    ensure!(errors.is_empty(), "dciodvfy errors:\n{}\n\nfull report:\n{printed}", errors.join("\n"));

    let script = r#"
import sys, json, highdicom as hd, pydicom
sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sys.argv[1]))
groups = sr.content.get_volumetric_roi_measurement_groups()
out = {"uid": sr.SOPInstanceUID, "verification": sr.VerificationFlag, "groups": []}
for g in groups:
    seg = g.referenced_segment
    out["groups"].append({
        "tracking_id": g.tracking_identifier,
        "finding_sites": [s.value.meaning for s in g.finding_sites],
        "measurements": [{"name": m.name.meaning, "value": float(m.value), "unit": m.unit.value} for m in g.get_measurements()],
        "segment": [seg[0].referenced_sop_instance_uid, int(seg[0].referenced_segment_numbers[0])] if seg is not None else None,
    })
out["image_groups"] = [
    {"tracking_id": g.tracking_identifier,
     "measurements": [{"name": m.name.meaning, "value": float(m.value), "unit": m.unit.value} for m in g.get_measurements()]}
    for g in sr.content.get_image_measurement_groups()
]
print(json.dumps(out))
"#;
    let printed = run_ok(Command::new(python()).args(["-c", script]).arg(&sr_path))?;
    let read: serde_json::Value = serde_json::from_str(printed.trim())?;
    ensure!(read["uid"] == uid.as_str() && read["verification"] == "UNVERIFIED", "{read}");
    let groups = read["groups"].as_array().context("no groups")?;
    ensure!(groups.len() == 1, "{read}");
    let g = &groups[0];
    ensure!(g["tracking_id"] == "ADC region 1" && g["finding_sites"][0] == "Prostate", "{g}");
    ensure!(g["segment"][0] == seg.sop_uid.as_str() && g["segment"][1] == 1, "{g}");
    let m = &g["measurements"][0];
    ensure!(m["name"] == "Volume" && m["unit"] == "mm3", "{m}");
    let value = m["value"].as_f64().context("no value")?;
    ensure!((value - volume_mm3).abs() <= volume_mm3 * 1e-6, "{value} vs {volume_mm3}");

    ensure!(read["image_groups"] == serde_json::json!([]), "{read}");

    // The same report signed (how an AI pipeline's report is signed off), with a radiologist's
    // own measurement added: still a valid Comprehensive 3D SR, VERIFIED, with the AI's groups
    // as they were and the radiologist's after them, naming its predecessor.
    let psa = MeasurementGroup {
        tracking_id: "Radiologist: Serum PSA".into(),
        tracking_uid: lightbox_dicom::new_uid(),
        finding: None,
        observer: Some(Observer::Person { name: "Roe^Richard".into() }),
        finding_site: None,
        segment: None,
        measurements: vec![Measurement {
            concept: Code::new("2857-1", "LN", "Prostate specific Ag [Mass/volume] in Serum or Plasma"),
            value: 6.2,
            unit: Code::new("ng/mL", "UCUM", "nanogram per milliliter"),
            algorithm: None,
        }],
        qualitative: vec![],
    };
    let signed_path = dir.path().join("signed.dcm");
    let signed = lightbox_dicom::sign_sr(
        &sr_path,
        "Doe^Jane",
        "Lightbox Test Hospital",
        std::slice::from_ref(&psa),
        "seg-test/signed",
        &signed_path,
    )?;
    ensure!(signed.seg_uids == [seg.sop_uid.clone()], "{signed:?}");
    dciodvfy_clean(&signed_path)?;
    let printed = run_ok(Command::new(python()).args(["-c", script]).arg(&signed_path))?;
    let again: serde_json::Value = serde_json::from_str(printed.trim())?;
    ensure!(again["uid"] == signed.sop_uid.as_str() && again["verification"] == "VERIFIED", "{again}");
    ensure!(again["groups"] == read["groups"], "{again} vs {read}");
    let expected = serde_json::json!([{"tracking_id": "Radiologist: Serum PSA", "measurements": [
        {"name": "Prostate specific Ag [Mass/volume] in Serum or Plasma", "value": 6.2, "unit": "ng/mL"}]}]);
    ensure!(again["image_groups"] == expected, "{again}");
    let reading = lightbox_dicom::read_sr(&signed_path)?;
    ensure!(reading.predecessors == [uid.clone()] && reading.observers.first().map(String::as_str) == Some("Doe^Jane"));
    let [_, own] = reading.groups.as_slice() else { bail!("{:?}", reading.groups) };
    ensure!(own.person.as_deref() == Some("Roe^Richard") && own.segment.is_none(), "{own:?}");
    // A measurement that claims a segment is not the radiologist's to add at signing.
    let claims = MeasurementGroup { segment: Some(SegmentRef { seg: seg.clone(), number: 1 }), ..psa };
    let refused = lightbox_dicom::sign_sr(&sr_path, "Doe^Jane", "H", &[claims], "y", &dir.path().join("y.dcm"));
    ensure!(refused.is_err_and(|e| e.to_string().contains("refers to a segment")));
    // Signing twice is refused.
    let twice = lightbox_dicom::sign_sr(
        &signed_path,
        "Doe^Jane",
        "Lightbox Test Hospital",
        &[],
        "x",
        &dir.path().join("x.dcm"),
    );
    ensure!(twice.is_err_and(|e| e.to_string().contains("signed already")));
    Ok(())
}

fn dcmqi(path: &str) -> anyhow::Result<std::path::PathBuf> {
    lightbox_tests::data(&format!("dcmqi_data/{path}"))
}

/// Our SEG reader against highdicom on the dcmqi examples (binary with overlaps, Label Map with
/// and without a palette, a PET lesion): the same segments, labels and voxels per segment.
#[test]
fn dcmqi_segmentations_read_as_highdicom_reads_them() -> anyhow::Result<()> {
    let script = r#"
import sys, json, highdicom as hd, numpy as np
seg = hd.seg.segread(sys.argv[1])
arr = seg.pixel_array if seg.NumberOfFrames > 1 else seg.pixel_array[None]
frames = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) if "SegmentIdentificationSequence" in f else 0
          for f in seg.PerFrameFunctionalGroupsSequence]
out = {}
for n in seg.segment_numbers:
    d = seg.get_segment_description(n)
    if seg.SegmentationType == "LABELMAP":
        count = int(np.count_nonzero(arr == n))
    else:
        count = sum(int(np.count_nonzero(arr[i])) for i, s in enumerate(frames) if s == n)
    out[str(n)] = {"label": d.segment_label, "count": count}
print(json.dumps(out))
"#;
    for file in [
        "segmentations/liver.dcm",
        "segmentations/partial_overlaps.dcm",
        "segmentations/sparse-labelmap-noppv.dcm",
        "segmentations/sparse-labelmap-ppv5.dcm",
        "sr-example/seg.dcm",
    ] {
        let path = dcmqi(file)?;
        let ours = lightbox_dicom::read_seg(&path)?;
        let theirs: serde_json::Value =
            serde_json::from_str(run_ok(Command::new(python()).args(["-c", script]).arg(&path))?.trim())?;
        let numbers: Vec<u16> = ours.segments.iter().map(|s| s.number).collect();
        let expected: Vec<u16> =
            theirs.as_object().context("no segments")?.keys().filter_map(|k| k.parse().ok()).collect();
        ensure!(
            numbers.iter().all(|n| expected.contains(n)) && numbers.len() == expected.len(),
            "{file}: {numbers:?} vs {expected:?}"
        );
        for s in &ours.segments {
            let t = &theirs[s.number.to_string()];
            ensure!(t["label"] == s.label.as_str(), "{file} segment {}: {:?} vs {}", s.number, s.label, t["label"]);
            let count = ours.segment_voxels(s.number) as u64;
            ensure!(
                t["count"].as_u64() == Some(count),
                "{file} segment {}: {count} voxels, highdicom {}",
                s.number,
                t["count"]
            );
        }
    }
    Ok(())
}

/// A SEG placed on its source series by the instances its frames name: the dcmqi liver on the
/// three CT slices, the label map on its 24x38x3 series.
#[test]
fn dcmqi_segmentations_land_on_their_source_slices() -> anyhow::Result<()> {
    for (file, images) in [
        ("segmentations/liver.dcm", "segmentations/ct-3slice"),
        ("segmentations/sparse-labelmap-ppv5.dcm", "segmentations/24x38x3/image"),
    ] {
        let seg = lightbox_dicom::read_seg(&dcmqi(file)?)?;
        let report = lightbox_dicom::scan_path(&dcmqi(images)?)?;
        let (_, series) = report.series().next().context("no series")?;
        let set = report.display_sets(series).first().context("no display set")?;
        let overlay = lightbox_dicom::seg_overlay(set, 0, &seg)?;
        ensure!(overlay.unplaced == 0 && overlay.placed == seg.frames.len(), "{file}: {overlay:?}");
        for s in seg.segments.iter().filter(|s| s.number > 0) {
            let placed = overlay.labels.voxels().iter().filter(|&&v| u16::from(v) == s.number).count();
            ensure!(placed == seg.segment_voxels(s.number), "{file} segment {}: {placed} placed", s.number);
        }
    }
    Ok(())
}

/// What we write, our reader reads back: binary, label map and fractional, voxel for voxel.
#[test]
fn our_segmentations_round_trip_through_our_reader() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join("binary.dcm");
    let (labels, _) = write_demo_seg(&binary)?;
    let (report, segments, series) = demo_seg_parts()?;
    let (_, s) = report.series().next().context("no series")?;
    let set = report.display_sets(s).first().context("no display set")?;
    let label_map = dir.path().join("labelmap.dcm");
    lightbox_dicom::write_seg_as(set, 0, lightbox_dicom::SegPixels::LabelMap(&labels), &segments, &series, &label_map)?;
    let as_probability = |n: u8| -> anyhow::Result<Volume<f32>> {
        let p = labels.voxels().iter().map(|&v| if v == n { 0.9 } else { 0.1 }).collect();
        Ok(Volume::new(labels.dims(), p, labels.patient_from_voxel)?)
    };
    let fractional = dir.path().join("fractional.dcm");
    let probabilities = [as_probability(1)?, as_probability(2)?];
    lightbox_dicom::write_seg_as(
        set,
        0,
        lightbox_dicom::SegPixels::Fractional(&probabilities),
        &segments,
        &series,
        &fractional,
    )?;
    for path in [&binary, &label_map, &fractional] {
        let seg = lightbox_dicom::read_seg(path)?;
        let overlay = lightbox_dicom::seg_overlay(set, 0, &seg)?;
        ensure!(overlay.unplaced == 0 && overlay.overlapping == 0, "{}: {overlay:?}", path.display());
        ensure!(overlay.labels.voxels() == labels.voxels(), "{} does not read back as written", path.display());
    }
    Ok(())
}

/// The dcmqi TID 1500 example read by us and by highdicom: the same groups and values.
#[test]
fn dcmqi_report_reads_as_highdicom_reads_it() -> anyhow::Result<()> {
    let path = dcmqi("sr-example/sr.dcm")?;
    let ours = lightbox_dicom::read_sr(&path)?;
    let script = r#"
import sys, json, highdicom as hd, pydicom
sr = hd.sr.srread(sys.argv[1])
groups = sr.content.get_volumetric_roi_measurement_groups() + sr.content.get_planar_roi_measurement_groups()
print(json.dumps({g.tracking_identifier: sorted(float(m.value) for m in g.get_measurements()) for g in groups}))
"#;
    let theirs: serde_json::Value =
        serde_json::from_str(run_ok(Command::new(python()).args(["-c", script]).arg(&path))?.trim())?;
    ensure!(ours.title == "Imaging Measurement Report" && !ours.groups.is_empty(), "{ours:?}");
    ensure!(theirs.as_object().map(|o| o.len()) == Some(ours.groups.len()), "{theirs} vs {} groups", ours.groups.len());
    for g in &ours.groups {
        let mut values: Vec<f64> = g.measurements.iter().map(|m| m.1).collect();
        values.sort_by(f64::total_cmp);
        let expected: Vec<f64> = theirs[&g.tracking_id]
            .as_array()
            .with_context(|| format!("highdicom has no group {:?}", g.tracking_id))?
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect();
        ensure!(values == expected, "group {:?}: {values:?} vs {expected:?}", g.tracking_id);
    }
    let volume = ours.groups[0].measurements.iter().find(|m| m.0 == "Volume").context("no volume")?;
    ensure!((volume.1 - 33.5824).abs() < 1e-4 && volume.2 == "ml", "{volume:?}");
    Ok(())
}

/// Replaces what changes from run to run (dates, times, the writer's version) so the rest of a
/// dump can be compared with a checked-in snapshot.
fn normalise(dump: &str) -> String {
    let mut out = Vec::new();
    for line in dump.lines() {
        // The file meta group names the toolkit version; the pixel data is checked elsewhere.
        if line.starts_with("(0002,") || line.contains("PixelData") || line.starts_with("# Dicom-File-Format") {
            continue;
        }
        let mut line = line.to_owned();
        for (from, to) in [
            (r"\d{4}-\d{2}-\d{2}", "YYYY-MM-DD"),
            (r"\d{2}:\d{2}:\d{2}(\.\d+)?", "hh:mm:ss"),
            (r"\[\d{14}(\.\d+)?\]", "[DATETIME]"),
        ] {
            line = regex::Regex::new(from).map(|r| r.replace_all(&line, to).into_owned()).unwrap_or(line);
        }
        for tag in ["ContentDate", "ContentTime", "SoftwareVersions"] {
            if line.contains(tag)
                && let (Some(a), Some(b)) = (line.find('['), line.rfind(']'))
            {
                line.replace_range(a + 1..b, "…");
            }
        }
        out.push(line.trim_end().to_owned());
    }
    out.join("\n") + "\n"
}

/// Compares `actual` with `tests/golden/<name>`; `LIGHTBOX_BLESS=1` writes it instead.
fn golden(name: &str, actual: &str) -> anyhow::Result<()> {
    let path = lightbox_tests::workspace_root().join("tests/golden").join(name);
    if std::env::var_os("LIGHTBOX_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        std::fs::write(&path, actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is missing: run the test with LIGHTBOX_BLESS=1 and review it", path.display()))?;
    if expected != actual {
        let diff: Vec<String> = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .filter(|(_, (e, a))| e != a)
            .take(10)
            .map(|(i, (e, a))| format!("line {}:\n  - {e}\n  + {a}", i + 1))
            .collect();
        anyhow::bail!(
            "{} differs ({} vs {} lines); first differences:\n{}\n(LIGHTBOX_BLESS=1 rewrites it after review)",
            path.display(),
            expected.lines().count(),
            actual.lines().count(),
            diff.join("\n")
        );
    }
    Ok(())
}

/// Golden content trees: the SEG's attributes (dcmtk dcmdump) and the SR's content tree (dcmtk
/// dsrdump) of a deterministic pipeline run are what was reviewed and checked in.
#[test]
fn seg_and_sr_content_trees_match_the_reviewed_snapshots() -> anyhow::Result<()> {
    use lightbox_dicom::{Measurement, MeasurementGroup, MeasurementReport, Observer, SegmentRef, write_sr};
    let dir = tempfile::tempdir()?;
    let (report, segments, mut series) = demo_seg_parts()?;
    series.uid_seed = Some("golden".into());
    let (_, s) = report.series().next().context("no series")?;
    let set = report.display_sets(s).first().context("no display set")?;
    let (labels, _) = write_demo_seg(&dir.path().join("unused.dcm"))?;
    let seg_path = dir.path().join("seg.dcm");
    let seg = lightbox_dicom::write_seg(set, 0, &labels, &segments, &series, &seg_path)?;
    let sr = MeasurementReport {
        observers: vec![
            Observer::Device { name: "Lightbox threshold".into(), uid: lightbox_dicom::uid_from("golden/device") },
            Observer::Person { name: "Doe^Jane".into() },
        ],
        procedure: Code::new("25056-3", "LN", "MRI unspecified body region"),
        groups: vec![
            MeasurementGroup {
                tracking_id: "ADC region 1".into(),
                tracking_uid: lightbox_dicom::uid_from("golden/tracking/1"),
                finding: Some(Code::new("52988006", "SCT", "Lesion")),
                finding_site: Some(Code::new("41216001", "SCT", "Prostate")),
                observer: None,
                segment: Some(SegmentRef { seg, number: 1 }),
                measurements: vec![Measurement {
                    concept: Code::new("118565006", "SCT", "Volume"),
                    value: 1234.5,
                    unit: Code::new("mm3", "UCUM", "cubic millimeter"),
                    algorithm: Some(lightbox_dicom::Algorithm {
                        name: "Lightbox threshold".into(),
                        version: "1".into(),
                        parameters: vec!["threshold=1500".into()],
                    }),
                }],
                qualitative: vec![],
            },
            MeasurementGroup {
                tracking_id: "Radiologist: Lesion 1 long axis".into(),
                tracking_uid: lightbox_dicom::uid_from("golden/tracking/2"),
                finding: None,
                finding_site: None,
                observer: Some(Observer::Person { name: "Doe^Jane".into() }),
                segment: None,
                measurements: vec![Measurement {
                    concept: Code::new("81827009", "SCT", "Diameter"),
                    value: 12.5,
                    unit: Code::new("mm", "UCUM", "millimeter"),
                    algorithm: None,
                }],
                qualitative: vec![],
            },
        ],
        series_description: "AI measurements, signed (research, not for clinical use)".into(),
        series_number: 902,
        verified_by: Some("Doe^Jane".into()),
        verifying_organization: "St. Example Radiology".into(),
        uid_seed: Some("golden".into()),
    };
    let sr_path = dir.path().join("sr.dcm");
    write_sr(set, 0, &sr, &sr_path)?;
    golden("seg.dcmdump.txt", &normalise(&run_ok(Command::new("dcmdump").args(["-q"]).arg(&seg_path))?))?;
    golden("sr.dsrdump.txt", &normalise(&run_ok(Command::new("dsrdump").args(["-q", "+Pc"]).arg(&sr_path))?))?;
    Ok(())
}

/// A segmentation made on another grid (as a model working at its own spacing would): half the
/// in-plane resolution. The SEG carries that grid's own positions and spacing; highdicom
/// rebuilds the same volume from it; dciodvfy finds no error.
#[test]
fn seg_on_a_resampled_grid_keeps_its_own_geometry() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (report, segments, series) = demo_seg_parts()?;
    let (_, s) = report.series().next().context("no series")?;
    let set = report.display_sets(s).first().context("no display set")?;
    let volume = set.load(0)?;
    let [nx, ny, nz] = volume.dims();
    let (mx, my) = (nx / 2, ny / 2);
    let a = volume.patient_from_voxel;
    // Voxel (i, j, k) of the coarse grid is voxel (2i + 0.5, 2j + 0.5, k) of the source.
    let coarse = lightbox_core::Affine3::from_columns(
        a.axis(0).map(|v| 2.0 * v),
        a.axis(1).map(|v| 2.0 * v),
        a.axis(2),
        a.transform_point([0.5, 0.5, 0.0]),
    );
    let mut labels = vec![0u8; mx * my * nz];
    for k in 0..nz {
        for j in 0..my {
            for i in 0..mx {
                let v = volume.voxels()[2 * i + nx * (2 * j + ny * k)];
                labels[i + mx * (j + my * k)] = u8::from(v > 1500.0);
            }
        }
    }
    let labels = Volume::new([mx, my, nz], labels, coarse)?;
    let seg = dir.path().join("coarse.dcm");
    lightbox_dicom::write_seg_as(set, 0, lightbox_dicom::SegPixels::Binary(&labels), &segments[..1], &series, &seg)?;
    dciodvfy_clean(&seg)?;
    let script = r#"
import sys, json, highdicom as hd, numpy as np
seg = hd.seg.segread(sys.argv[1])
vol = seg.get_volume(combine_segments=True)
print(json.dumps({"shape": list(vol.spatial_shape), "affine": vol.affine.tolist(), "count": int(np.count_nonzero(vol.array))}))
"#;
    let read: serde_json::Value =
        serde_json::from_str(run_ok(Command::new(python()).args(["-c", script]).arg(&seg))?.trim())?;
    let ours = labels.voxels().iter().filter(|&&v| v != 0).count() as u64;
    ensure!(read["count"].as_u64() == Some(ours), "highdicom counts {}, we wrote {ours}", read["count"]);
    // highdicom's volume is (slice, row, column) with an affine in LPS: its first column steps
    // along our slice axis, its last along our columns.
    let affine = read["affine"].as_array().context("no affine")?;
    let m = |r: usize, c: usize| affine.get(r).and_then(|row| row.get(c)).and_then(serde_json::Value::as_f64);
    let column_step = [m(0, 2), m(1, 2), m(2, 2)];
    let expected = coarse.axis(0);
    for (got, want) in column_step.iter().zip(expected) {
        ensure!(got.is_some_and(|g| (g - want).abs() < 1e-4), "column step {column_step:?} vs {expected:?}");
    }
    Ok(())
}
