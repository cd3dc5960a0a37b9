//! DICOM SEG and SR writing, checked by others: highdicom reads our segments back voxel for voxel,
//! dciodvfy (dicom3tools) finds no error, and Orthanc stores it and returns it unchanged.

use std::process::Command;

use anyhow::{Context, ensure};
use lightbox_core::Volume;
use lightbox_dicom::{Code, SegSeries, Segment, SegmentAlgorithm, write_seg};
use lightbox_tests::{demo_study, run_ok};

fn python() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("LIGHTBOX_PY_VENV").unwrap_or_else(|_| "/var/tmp/lightbox-py".into()))
        .join("bin/python")
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
    let segments = vec![
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
    ];
    let series = SegSeries {
        series_description: "AI segmentation (research, not for clinical use)".into(),
        series_number: 901,
        content_label: "LIGHTBOX_AI".into(),
        content_description: "AI output: threshold mask and a manual box".into(),
        creator: "Lightbox^AI".into(),
        software_version: env!("CARGO_PKG_VERSION").into(),
        uid_seed: None,
    };
    let written = write_seg(set, 0, &labels, &segments, &series, out)?;
    Ok((labels, written))
}

#[test]
fn seg_is_read_back_by_highdicom_and_passes_dciodvfy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seg = dir.path().join("seg.dcm");
    let (labels, written) = write_demo_seg(&seg)?;
    let uid = written.sop_uid;
    if let Ok(keep) = std::env::var("LIGHTBOX_KEEP_SEG") {
        std::fs::copy(&seg, keep)?;
    }

    // dciodvfy: no errors (warnings about optional attributes are printed, not failed on).
    let output = Command::new("dciodvfy").arg(&seg).output().context("dciodvfy (Debian dicom3tools)")?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    ensure!(errors.is_empty(), "dciodvfy errors:\n{}\n\nfull report:\n{report}", errors.join("\n"));

    // highdicom: each segment's voxels, per source slice, equal ours.
    let script = r#"
import sys, json, highdicom as hd, pydicom, glob, numpy as np
seg = hd.seg.segread(sys.argv[1])
sources = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in glob.glob(sys.argv[2] + "/*")
           if f.endswith(".dcm")}
out = {"uid": seg.SOPInstanceUID, "type": seg.SegmentationType, "segments": {}}
for number in seg.segment_numbers:
    desc = seg.get_segment_description(number)
    counts = {}
    for uid in sources:
        try:
            mask = seg.get_pixels_by_source_instance([uid], segment_numbers=[number])
        except Exception:
            continue
        counts[uid] = int(np.count_nonzero(mask))
    out["segments"][str(number)] = {"label": desc.segment_label, "type": desc.segmented_property_type.meaning,
                                    "algorithm": desc.algorithm_type.value, "counts": counts}
print(json.dumps(out))
"#;
    let printed = run_ok(Command::new(python()).args(["-c", script]).arg(&seg).arg(demo_study()))?;
    let read: serde_json::Value = serde_json::from_str(printed.trim())?;
    ensure!(read["uid"] == uid.as_str() && read["type"] == "BINARY", "{read}");
    let report = lightbox_dicom::scan_path(&demo_study())?;
    let (_, series) = report.series().next().context("no series")?;
    let set = report.display_sets(series).first().context("no display set")?;
    let [nx, ny, _] = labels.dims();
    for (number, label, algorithm) in [(1u8, "ADC above 1500", "AUTOMATIC"), (2, "Region of interest", "MANUAL")] {
        let segment = &read["segments"][number.to_string()];
        ensure!(segment["label"] == label && segment["algorithm"] == algorithm, "{segment}");
        let counts = segment["counts"].as_object().context("no counts")?;
        let total: u64 = counts.values().filter_map(serde_json::Value::as_u64).sum();
        let ours = labels.voxels().iter().filter(|&&v| v == number).count() as u64;
        ensure!(total == ours && ours > 0, "segment {number}: highdicom counts {total}, we wrote {ours}");
        // Per slice too: the source instance of each slice.
        for (z, uid) in set_uids(set)?.iter().enumerate() {
            let here = labels.voxels()[z * nx * ny..(z + 1) * nx * ny].iter().filter(|&&v| v == number).count() as u64;
            let theirs = counts.get(uid).and_then(serde_json::Value::as_u64).unwrap_or(0);
            ensure!(here == theirs, "segment {number}, slice {z}: {theirs} voxels in highdicom, {here} here");
        }
    }
    Ok(())
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
        observer: Observer::Device { name: "Lightbox threshold".into(), uid: lightbox_dicom::new_uid() },
        procedure: Code::new("25056-3", "LN", "MRI unspecified body region"),
        groups: vec![MeasurementGroup {
            tracking_id: "ADC region 1".into(),
            tracking_uid: lightbox_dicom::new_uid(),
            finding: Code::new("52988006", "SCT", "Lesion"),
            finding_site: Some(Code::new("41216001", "SCT", "Prostate")),
            segment: Some(SegmentRef { seg: seg.clone(), number: 1 }),
            measurements: vec![Measurement {
                concept: Code::new("118565006", "SCT", "Volume"),
                value: volume_mm3,
                unit: mm3,
                algorithm: Some(("Lightbox threshold".into(), "0.1".into())),
            }],
            qualitative: vec![],
        }],
        series_description: "AI measurements (research, not for clinical use)".into(),
        series_number: 902,
        verified_by: None,
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
    Ok(())
}
