//! lightbox-pacs against a real Orthanc (one per test): STOW/QIDO/WADO round trips byte for byte,
//! compressed transfer syntaxes, search edge cases, auth, mutual TLS, DIMSE both ways, the Python
//! dicomweb-client as a peer, and faults (5xx, 4xx, broken transfers, a silent PACS, a PACS killed
//! mid-transfer) including the outbox's exactly-once drain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lightbox_pacs::dimse::{self, DimsePeer, IMPLEMENTATION_CLASS_UID, ScpConfig, ScpEvent, StoreScp};
use lightbox_pacs::outbox::{Destination, DrainReport, drain};
use lightbox_pacs::{
    Auth, DicomWebClient, DicomWebConfig, FrameSyntax, PacsError, QidoQuery, RetryPolicy, TlsOptions, tags,
};
use lightbox_store::{Enqueued, OutboxState, Store};
use lightbox_tests::dcmtk::{self, Uids, copy_with_new_uids, dicom_files};
use lightbox_tests::dicomfile::{self, DicomFile};
use lightbox_tests::orthanc::{Orthanc, OrthancOptions, Pki, free_port};
use lightbox_tests::proxy::{Fault, FaultProxy};
use lightbox_tests::{data, pypeer};

/// A GE EPI series: 150 single-frame 64×64 MR instances, explicit VR little endian, unique UIDs.
const GE_SERIES: &str = "dcm_qa_nih/In/20180918GE/mr_0004";
const GE_SERIES_2: &str = "dcm_qa_nih/In/20180918GE/mr_0005";
/// One 384×384 mosaic in nine files / seven transfer syntaxes.
const TS_FOLDER: &str = "dcm_qa_ts/In";

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";

// ---------------------------------------------------------------------------------------------
// Helpers

/// The first `n` files of a folder of the shared data.
fn first_files(folder: &str, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    let all = dicom_files(&data(folder)?)?;
    ensure!(all.len() >= n, "{folder} has {} files, {n} wanted", all.len());
    Ok(all.into_iter().take(n).collect())
}

/// Short waits: tests must not sleep for the default policy's seconds.
fn quick_retry() -> RetryPolicy {
    RetryPolicy { attempts: 4, base_delay: Duration::from_millis(20), max_delay: Duration::from_millis(200) }
}

/// Long enough to ride out an Orthanc restart (about 1.5 s).
fn patient_retry() -> RetryPolicy {
    RetryPolicy { attempts: 10, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(2) }
}

fn config_for(base_url: &str, orthanc: &Orthanc) -> DicomWebConfig {
    let mut config = DicomWebConfig::new(base_url);
    config.auth = Auth::Basic { user: orthanc.user().to_owned(), password: orthanc.password().to_owned() };
    config.retry = quick_retry();
    config.connect_timeout = Duration::from_secs(5);
    config.read_timeout = Duration::from_secs(30);
    config
}

fn client(orthanc: &Orthanc) -> anyhow::Result<DicomWebClient> {
    Ok(DicomWebClient::new(config_for(&orthanc.dicomweb_url(), orthanc))?)
}

fn proxy_for(orthanc: &Orthanc) -> anyhow::Result<FaultProxy> {
    FaultProxy::start(([127, 0, 0, 1], orthanc.http_port()).into())
}

/// A client whose DICOMweb root is the proxy's.
fn proxied_config(orthanc: &Orthanc, proxy: &FaultProxy) -> DicomWebConfig {
    config_for(&format!("{}/dicom-web", proxy.url()), orthanc)
}

/// Files of one series, by SOP Instance UID.
struct Series {
    study: String,
    series: String,
    files: Vec<PathBuf>,
    by_uid: BTreeMap<String, PathBuf>,
}

impl Series {
    fn of(files: Vec<PathBuf>) -> anyhow::Result<Self> {
        let first = DicomFile::open(files.first().context("no files")?)?;
        let study = first.string(dicomfile::STUDY_INSTANCE_UID).context("no study UID")?;
        let series = first.string(dicomfile::SERIES_INSTANCE_UID).context("no series UID")?;
        let mut by_uid = BTreeMap::new();
        for file in &files {
            let f = DicomFile::open(file)?;
            ensure!(
                f.string(dicomfile::STUDY_INSTANCE_UID).as_deref() == Some(&study),
                "{}: other study",
                file.display()
            );
            ensure!(
                f.string(dicomfile::SERIES_INSTANCE_UID).as_deref() == Some(&series),
                "{}: other series",
                file.display()
            );
            ensure!(by_uid.insert(f.sop_instance_uid()?, file.clone()).is_none(), "{}: duplicate UID", file.display());
        }
        Ok(Self { study, series, files, by_uid })
    }

    /// Copies of `sources` in one new series, each with a new SOP Instance UID.
    fn copy(sources: &[PathBuf], dir: &Path) -> anyhow::Result<Self> {
        Self::of(copy_with_new_uids(sources, dir, &Uids::new_series(), &[])?)
    }

    /// `n` copies of the 375 KiB explicit-little-endian mosaic: a series big enough that a transfer
    /// takes a noticeable time.
    fn big(n: usize, dir: &Path) -> anyhow::Result<Self> {
        let source = data(&format!("{TS_FOLDER}/1.dcm"))?;
        Self::copy(&vec![source; n], dir)
    }

    /// The source file of an instance.
    fn source(&self, uid: &str) -> anyhow::Result<&PathBuf> {
        self.by_uid.get(uid).with_context(|| format!("instance {uid} is not one of the series"))
    }

    fn uids(&self) -> BTreeSet<String> {
        self.by_uid.keys().cloned().collect()
    }

    fn bytes(&self) -> anyhow::Result<u64> {
        self.files.iter().map(|f| Ok(std::fs::metadata(f)?.len())).sum()
    }
}

/// `got` holds exactly the instances of `expected`, each byte-identical to its source.
fn ensure_same_files(got: &[PathBuf], expected: &Series) -> anyhow::Result<()> {
    ensure!(got.len() == expected.files.len(), "got {} files, expected {}", got.len(), expected.files.len());
    let mut seen = BTreeSet::new();
    for file in got {
        let uid = DicomFile::open(file)?.sop_instance_uid()?;
        let source = expected.source(&uid).with_context(|| format!("{}: unexpected instance", file.display()))?;
        ensure!(
            std::fs::read(file)? == std::fs::read(source)?,
            "{} differs from {} (instance {uid})",
            file.display(),
            source.display()
        );
        ensure!(seen.insert(uid.clone()), "instance {uid} came twice");
    }
    Ok(())
}

/// Names in a folder ending in `.part` (a transfer must never leave one behind).
fn partial_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".part") {
            names.push(name);
        }
    }
    Ok(names)
}

fn uid_set(datasets: &[lightbox_pacs::DicomJson], tag: u32) -> BTreeSet<String> {
    datasets.iter().filter_map(|d| d.string(tag)).collect()
}

/// Orthanc's own IDs of its instances, by SOP Instance UID.
fn orthanc_ids(orthanc: &Orthanc) -> anyhow::Result<BTreeMap<String, String>> {
    let list = orthanc.get_json("/instances?expand")?;
    let mut ids = BTreeMap::new();
    for item in list.as_array().context("instances is not a list")? {
        let uid = item["MainDicomTags"]["SOPInstanceUID"].as_str().context("no SOPInstanceUID")?;
        let id = item["ID"].as_str().context("no ID")?;
        ids.insert(uid.to_owned(), id.to_owned());
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------------------------
// 1. STOW → QIDO → WADO

#[tokio::test]
async fn stow_qido_wado_round_trip_is_byte_identical() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let series = Series::of(first_files(GE_SERIES, 40)?)?;
    let client = client(&orthanc)?;

    let result = client.store_files(None, &series.files).await?;
    ensure!(result.failed.is_empty(), "failed: {:?}", result.failed);
    ensure!(result.stored.len() == 40, "stored {} of 40", result.stored.len());
    ensure!(result.stored.iter().cloned().collect::<BTreeSet<_>>() == series.uids(), "stored other UIDs");
    ensure!(orthanc.instance_count()? == 40);

    // QIDO at each level.
    let studies = client.search_studies(&QidoQuery::new().matching("StudyInstanceUID", &series.study)).await?;
    ensure!(studies.len() == 1, "{} studies", studies.len());
    ensure!(studies[0].string(tags::STUDY_INSTANCE_UID).as_deref() == Some(series.study.as_str()));
    ensure!(studies[0].int(tags::NUMBER_OF_STUDY_RELATED_INSTANCES) == Some(40), "{:?}", studies[0]);
    ensure!(studies[0].int(tags::NUMBER_OF_STUDY_RELATED_SERIES) == Some(1));
    let all_series = client.search_series(&series.study, &QidoQuery::new()).await?;
    ensure!(all_series.len() == 1);
    ensure!(all_series[0].string(tags::SERIES_INSTANCE_UID).as_deref() == Some(series.series.as_str()));
    ensure!(all_series[0].int(tags::NUMBER_OF_SERIES_RELATED_INSTANCES) == Some(40));
    ensure!(all_series[0].string(tags::MODALITY).as_deref() == Some("MR"));
    let instances = client.search_instances(&series.study, Some(&series.series), &QidoQuery::new()).await?;
    ensure!(instances.len() == 40);
    ensure!(uid_set(&instances, tags::SOP_INSTANCE_UID) == series.uids());
    let in_study = client.search_instances(&series.study, None, &QidoQuery::new()).await?;
    ensure!(uid_set(&in_study, tags::SOP_INSTANCE_UID) == series.uids());

    // WADO: the series, the study and one instance come back byte for byte (transfer-syntax=*
    // gives the stored file unchanged).
    let out = tempfile::tempdir()?;
    let summary = client.retrieve_series_to_dir(&series.study, &series.series, &out.path().join("series")).await?;
    ensure!(summary.resumed_instances == 0);
    ensure!(summary.bytes == series.bytes()?, "{} bytes, expected {}", summary.bytes, series.bytes()?);
    ensure_same_files(&summary.files, &series)?;
    ensure!(partial_files(&out.path().join("series"))?.is_empty());
    let study = client.retrieve_study_to_dir(&series.study, &out.path().join("study")).await?;
    ensure_same_files(&study.files, &series)?;
    let (uid, source) = series.by_uid.iter().next().context("empty series")?;
    let one = client.retrieve_instance_to_dir(&series.study, &series.series, uid, &out.path().join("one")).await?;
    ensure!(std::fs::read(&one)? == std::fs::read(source)?);

    // Into the store: every instance imported, stored byte-identical; a second retrieval imports
    // nothing and leaves no temporary download behind.
    let store_dir = tempfile::tempdir()?;
    let mut store = Store::open(store_dir.path())?;
    let into = client.retrieve_into(&mut store, &series.study, Some(&series.series)).await?;
    ensure!(into.imported == 40 && into.already_stored == 0 && into.files.is_empty(), "{into:?}");
    ensure!(store.instance_count()? == 40);
    for (uid, source) in &series.by_uid {
        let stored = store.instance_file(uid)?.with_context(|| format!("{uid} not in the store"))?;
        ensure!(std::fs::read(&stored)? == std::fs::read(source)?, "stored {uid} differs");
    }
    let again = client.retrieve_into(&mut store, &series.study, None).await?;
    ensure!(again.imported == 0 && again.already_stored == 40, "{again:?}");
    ensure!(store.instance_count()? == 40);
    ensure!(std::fs::read_dir(store_dir.path().join("incoming"))?.count() == 0, "downloads left in incoming/");

    // Metadata: one dataset per instance, pixel data as a bulk data URI that gives the pixels.
    let metadata = client.retrieve_metadata(&series.study, Some(&series.series)).await?;
    ensure!(metadata.len() == 40, "{} datasets", metadata.len());
    ensure!(uid_set(&metadata, tags::SOP_INSTANCE_UID) == series.uids());
    ensure!(metadata.iter().all(|d| d.int(0x0028_0010) == Some(64)), "Rows missing from metadata");
    ensure!(client.retrieve_metadata(&series.study, None).await?.len() == 40);
    let first = &metadata[0];
    let first_uid = first.string(tags::SOP_INSTANCE_UID).context("no SOP UID in metadata")?;
    let source = DicomFile::open(series.source(&first_uid)?)?;
    let uri = first.bulk_data_uri(dicomfile::PIXEL_DATA).context("pixel data without BulkDataURI")?;
    let bulk = client.retrieve_bulk_data(uri).await?;
    ensure!(bulk == source.pixel_data()?, "bulk pixel data: {} bytes, differs from the file's", bulk.len());

    // Frames, uncompressed: Rows × Columns × BitsAllocated/8 bytes, equal to the file's pixels.
    let expected_len = usize::from(source.u16(dicomfile::ROWS).context("Rows")?)
        * usize::from(source.u16(dicomfile::COLUMNS).context("Columns")?)
        * usize::from(source.u16(dicomfile::BITS_ALLOCATED).context("BitsAllocated")?)
        / 8;
    let frames =
        client.retrieve_frames(&series.study, &series.series, &first_uid, &[1], &FrameSyntax::Uncompressed).await?;
    ensure!(frames.len() == 1 && frames[0].number == 1);
    ensure!(frames[0].data.len() == expected_len, "frame: {} bytes, expected {expected_len}", frames[0].data.len());
    ensure!(frames[0].data == source.pixel_data()?, "frame bytes differ from the file's pixel data");
    ensure!(frames[0].transfer_syntax.as_deref() == Some(EXPLICIT_LE), "{:?}", frames[0].transfer_syntax);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Compressed transfer syntaxes

#[tokio::test]
async fn compressed_transfer_syntaxes_are_kept_and_frames_say_which() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let outcome = compressed_round_trip(&orthanc).await;
    outcome.with_context(|| format!("Orthanc's log:\n{}", orthanc.log_tail(40)))
}

async fn compressed_round_trip(orthanc: &Orthanc) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let series = Series::copy(&dicom_files(&data(TS_FOLDER)?)?, dir.path())?;
    ensure!(series.files.len() == 9);
    let client = client(orthanc)?;
    let result = client.store_files(Some(&series.study), &series.files).await?;
    ensure!(result.failed.is_empty() && result.stored.len() == 9, "{result:?}");

    // transfer-syntax=*: every file back unchanged, big endian included.
    let out = tempfile::tempdir()?;
    let summary = client.retrieve_series_to_dir(&series.study, &series.series, out.path()).await?;
    ensure_same_files(&summary.files, &series)?;

    // The same image nine times: every lossless encoding decodes to the explicit-LE file's pixels.
    let reference = DicomFile::open(&series.files[0])?;
    ensure!(reference.transfer_syntax().as_deref() == Some(EXPLICIT_LE));
    let reference_pixels = reference.pixel_data()?.to_vec();
    let mut seen_syntaxes = BTreeSet::new();
    for (uid, file) in &series.by_uid {
        let source = DicomFile::open(file)?;
        let ts = source.transfer_syntax().context("no transfer syntax")?;
        seen_syntaxes.insert(ts.clone());
        let stored = client.retrieve_frames(&series.study, &series.series, uid, &[1], &FrameSyntax::Stored).await;
        if ts == EXPLICIT_BE {
            // Orthanc cannot serve big-endian frames as stored (HTTP 500, retried as a 5xx).
            match stored {
                Err(PacsError::Status { status: 500, .. }) => {}
                other => bail!("big-endian stored frame: expected HTTP 500 from Orthanc, got {other:?}"),
            }
        } else {
            let frames = stored.with_context(|| format!("stored frame of {}", file.display()))?;
            ensure!(frames.len() == 1);
            ensure!(frames[0].transfer_syntax.as_deref() == Some(ts.as_str()), "{ts}: frame says {:?}", frames[0]);
            let media = match ts.as_str() {
                "1.2.840.10008.1.2.5" => "image/dicom-rle",
                "1.2.840.10008.1.2.4.70" | "1.2.840.10008.1.2.4.57" => "image/jpeg",
                "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => "image/jls",
                "1.2.840.10008.1.2.4.90" => "image/jp2",
                _ => "application/octet-stream",
            };
            let content_type = frames[0].content_type.as_deref().unwrap_or_default();
            ensure!(content_type.starts_with(media), "{ts}: part content type {content_type:?}, expected {media}");
            let data = &frames[0].data;
            if media == "application/octet-stream" {
                ensure!(*data == reference_pixels, "{ts}: native frame differs");
            } else {
                ensure!(data.len() < reference_pixels.len(), "{ts}: frame is not compressed");
                // Each codec's own stream, not a DICOM wrapper: JPEG and JPEG-LS start with SOI,
                // a raw JPEG 2000 codestream with SOC SIZ, RLE with its 64-byte header (2 segments
                // for 16-bit samples).
                let ok = match media {
                    "image/jpeg" | "image/jls" => data.starts_with(&[0xFF, 0xD8]),
                    "image/jp2" => data.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]),
                    _ => data.get(..4) == Some(&2u32.to_le_bytes()[..]),
                };
                ensure!(ok, "{ts}: frame starts with {:02X?}", &data[..data.len().min(8)]);
            }
        }
        // Orthanc decodes JPEG 2000 with GDCM, and GDCM crashes Orthanc on this file now and
        // then (about one request in three: "Encapsulated stream has more bits actually stored on
        // disk", then SIGSEGV). Every other syntax is decoded by Orthanc itself.
        if ts == "1.2.840.10008.1.2.4.90" {
            continue;
        }
        let native =
            client.retrieve_frames(&series.study, &series.series, uid, &[1], &FrameSyntax::Uncompressed).await?;
        ensure!(
            native.len() == 1 && native[0].data == reference_pixels,
            "{ts}: decoded frame differs from the reference"
        );
    }
    let expected: BTreeSet<String> = [
        EXPLICIT_LE,
        IMPLICIT_LE,
        EXPLICIT_BE,
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    ensure!(seen_syntaxes == expected, "the test files' syntaxes changed: {seen_syntaxes:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Search edge cases

#[tokio::test]
async fn qido_wildcards_at_signs_dates_paging_and_spaces() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let sources = first_files(GE_SERIES, 6)?;
    let patients = [
        ("DOE^JOHN", "12343@x", "20200615"),
        ("DOE^JANE", "P-2", "20190101"),
        ("SMITH^ANNA", "P-3", "20201231"),
        ("DOE JOHN", "P-4", "20210101"),
        ("MILLER^MAX", "P-5", "20200101"),
        ("NGUYEN^AN", "P-6", "20170505"),
    ];
    let mut files = Vec::new();
    for (i, (source, (name, id, date))) in sources.iter().zip(patients).enumerate() {
        let inserts = [
            ("(0010,0010)", name),
            ("(0010,0020)", id),
            ("(0008,0020)", date),
            ("(0008,1030)", "QIDO TEST"),
            ("(0020,0010)", "ST1"),
        ];
        let copy = copy_with_new_uids(
            std::slice::from_ref(source),
            &dir.path().join(i.to_string()),
            &Uids::EachOwnStudy,
            &inserts,
        )?;
        files.extend(copy);
    }
    let client = client(&orthanc)?;
    let stored = client.store_files(None, &files).await?;
    ensure!(stored.stored.len() == 6 && stored.failed.is_empty(), "{stored:?}");

    let ids = |found: &[lightbox_pacs::DicomJson]| -> BTreeSet<String> { uid_set(found, tags::PATIENT_ID) };
    let set = |ids: &[&str]| -> BTreeSet<String> { ids.iter().map(|s| (*s).to_owned()).collect() };
    let find = |key: &'static str, value: &'static str| {
        let client = client.clone();
        async move { client.search_studies(&QidoQuery::new().matching(key, value)).await }
    };

    ensure!(ids(&find("PatientName", "DOE*").await?) == set(&["12343@x", "P-2", "P-4"]));
    ensure!(ids(&find("PatientName", "DOE^J*").await?) == set(&["12343@x", "P-2"]));
    ensure!(ids(&find("PatientName", "DOE^JA?E").await?) == set(&["P-2"]));
    ensure!(ids(&find("PatientName", "*ANNA").await?) == set(&["P-3"]));
    // Orthanc matches person names case-insensitively (CaseSensitivePN defaults to false).
    ensure!(ids(&find("PatientName", "doe^john").await?) == set(&["12343@x"]));
    // '@' goes raw: Orthanc does not percent-decode, "%40" would match nothing.
    ensure!(ids(&find("PatientID", "12343@x").await?) == set(&["12343@x"]));
    ensure!(ids(&find("StudyDate", "20200101-20201231").await?) == set(&["12343@x", "P-3", "P-5"]));
    ensure!(ids(&find("StudyDate", "20210101-").await?) == set(&["P-4"]));
    ensure!(ids(&find("StudyDate", "-20191231").await?) == set(&["P-2", "P-6"]));
    ensure!(find("StudyDate", "20220101-20221231").await?.is_empty());

    // Paging: disjoint pages that together are everything.
    let mut union = BTreeSet::new();
    for offset in [0, 2, 4] {
        let page = client.search_studies(&QidoQuery::new().limit(2).offset(offset)).await?;
        ensure!(page.len() == 2, "page at {offset}: {} studies", page.len());
        for uid in uid_set(&page, tags::STUDY_INSTANCE_UID) {
            ensure!(union.insert(uid), "page at {offset} repeats a study");
        }
    }
    ensure!(union.len() == 6);
    ensure!(client.search_studies(&QidoQuery::new().limit(2).offset(6)).await?.is_empty());

    // includefield adds an attribute the default study-level answer lacks.
    let plain = find("PatientID", "P-3").await?;
    ensure!(plain.len() == 1 && plain[0].string(tags::STUDY_DESCRIPTION).is_none(), "{:?}", plain);
    let with = client.search_studies(&QidoQuery::new().matching("PatientID", "P-3").include("00081030")).await?;
    ensure!(with.len() == 1 && with[0].string(tags::STUDY_DESCRIPTION).as_deref() == Some("QIDO TEST"), "{with:?}");
    let all = client.search_studies(&QidoQuery::new().matching("PatientID", "P-3").include("all")).await?;
    ensure!(all.len() == 1);

    // fuzzymatching=true is accepted (Orthanc ignores it: same answer).
    let fuzzy = client.search_studies(&QidoQuery::new().matching("PatientName", "DOE^J*").fuzzy()).await?;
    ensure!(ids(&fuzzy) == set(&["12343@x", "P-2"]));

    // A space must be percent-encoded in a URL, and Orthanc does not decode "%20": a name with a
    // space matches nothing this way. '?' (any one character) finds it.
    ensure!(find("PatientName", "DOE JOHN*").await?.is_empty(), "Orthanc now decodes %20: update this test");
    ensure!(ids(&find("PatientName", "DOE?JOHN*").await?) == set(&["12343@x", "P-4"]));
    // The worklist's search (workstation and `lightbox pacs query --name`) does that for the user.
    let typed =
        lightbox_store::WorklistQuery { patient_name: Some(" DOE JOHN* ".into()), limit: 50, ..Default::default() };
    let found = client.search_studies(&lightbox_workflow::pacs::qido_for(&typed)).await?;
    ensure!(ids(&found) == set(&["12343@x", "P-4"]), "{found:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Auth

#[tokio::test]
async fn wrong_credentials_are_unauthorized_and_never_retried() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;

    let mut config = proxied_config(&orthanc, &proxy);
    config.auth = Auth::Basic { user: orthanc.user().to_owned(), password: "wrong".into() };
    let error = DicomWebClient::new(config)?
        .search_studies(&QidoQuery::new())
        .await
        .err()
        .context("wrong password accepted")?;
    ensure!(matches!(error, PacsError::Unauthorized { status: 401, .. }), "{error:?}");
    ensure!(error.to_string().contains("credentials"), "{error}");
    ensure!(error.code() == "pacs-unauthorized" && !error.is_transient());
    ensure!(proxy.requests() == 1, "a 401 was retried: {} requests", proxy.requests());

    let mut config = proxied_config(&orthanc, &proxy);
    config.auth = Auth::Bearer("not-a-basic-password".into());
    let error =
        DicomWebClient::new(config)?.search_studies(&QidoQuery::new()).await.err().context("bearer accepted")?;
    ensure!(matches!(error, PacsError::Unauthorized { status: 401, .. }), "{error:?}");
    ensure!(proxy.requests() == 2);

    let mut config = proxied_config(&orthanc, &proxy);
    config.auth = Auth::None;
    let error =
        DicomWebClient::new(config)?.search_studies(&QidoQuery::new()).await.err().context("no auth accepted")?;
    ensure!(matches!(error, PacsError::Unauthorized { .. }), "{error:?}");
    ensure!(proxy.requests() == 3);

    // A STOW with the wrong password is refused whole, once; nothing is stored.
    let mut config = proxied_config(&orthanc, &proxy);
    config.auth = Auth::Basic { user: orthanc.user().to_owned(), password: "wrong".into() };
    let files = first_files(GE_SERIES, 3)?;
    let error = DicomWebClient::new(config)?.store_files(None, &files).await.err().context("STOW accepted")?;
    ensure!(matches!(error, PacsError::Unauthorized { .. }), "{error:?}");
    ensure!(proxy.requests() == 4);
    ensure!(orthanc.instance_count()? == 0);

    // The right password through the same proxy works.
    ensure!(DicomWebClient::new(proxied_config(&orthanc, &proxy))?.search_studies(&QidoQuery::new()).await?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. TLS

#[tokio::test]
async fn mutual_tls_needs_our_ca_and_a_trusted_client_certificate() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = Pki::generate(certs.path())?;
    let orthanc = Orthanc::start_with(OrthancOptions { tls: Some(pki.clone()), ..OrthancOptions::default() })?;
    let url = orthanc.dicomweb_url();
    ensure!(url.starts_with("https://"));
    let with_tls = |tls: TlsOptions| -> anyhow::Result<DicomWebClient> {
        let mut config = config_for(&url, &orthanc);
        config.tls = tls;
        config.retry = RetryPolicy { attempts: 2, ..quick_retry() };
        Ok(DicomWebClient::new(config)?)
    };
    let trusted = TlsOptions {
        ca_file: Some(pki.ca_cert.clone()),
        ca_only: true,
        client_cert: Some(pki.client_cert.clone()),
        client_key: Some(pki.client_key.clone()),
    };

    let good = with_tls(trusted.clone())?;
    ensure!(good.search_studies(&QidoQuery::new()).await?.is_empty());
    let file = first_files(GE_SERIES, 1)?;
    let stored = good.store_files(None, &file).await?;
    ensure!(stored.stored.len() == 1 && stored.failed.is_empty());
    ensure!(good.search_studies(&QidoQuery::new()).await?.len() == 1);
    // The system roots plus our CA work too.
    ensure!(
        with_tls(TlsOptions { ca_only: false, ..trusted.clone() })?.search_studies(&QidoQuery::new()).await?.len() == 1
    );

    // No client certificate, or one from another CA: the server ends the handshake. An error, not
    // a panic, and not mistaken for bad credentials.
    for (what, cert, key) in [
        ("no client certificate", None, None),
        (
            "untrusted client certificate",
            Some(pki.untrusted_client_cert.clone()),
            Some(pki.untrusted_client_key.clone()),
        ),
    ] {
        let client = with_tls(TlsOptions { client_cert: cert, client_key: key, ..trusted.clone() })?;
        let error =
            client.search_studies(&QidoQuery::new()).await.err().with_context(|| format!("{what}: accepted"))?;
        ensure!(
            matches!(error, PacsError::TlsHandshake { .. }),
            "{what}: expected a TLS handshake error, got {error:?}"
        );
        ensure!(!error.is_transient(), "{what}: a certificate problem is not retried: {error:?}");
        ensure!(error.to_string().contains("client certificate"), "{what}: {error}");
    }

    // A CA that did not sign the server's certificate: refused, naming the certificate.
    let client = with_tls(TlsOptions { ca_file: Some(pki.untrusted_ca_cert.clone()), ..trusted.clone() })?;
    let error = client.search_studies(&QidoQuery::new()).await.err().context("untrusted server accepted")?;
    ensure!(error.to_string().to_lowercase().contains("certificate"), "{error}");
    ensure!(matches!(error, PacsError::TlsHandshake { .. }) && !error.is_transient(), "{error:?}");

    // Configuration errors are found when the client is made, naming the file.
    let missing = certs.path().join("no-such-ca.pem");
    let mut config = config_for(&url, &orthanc);
    config.tls = TlsOptions { ca_file: Some(missing.clone()), ..trusted.clone() };
    match DicomWebClient::new(config) {
        Err(error @ PacsError::Tls { .. }) => {
            ensure!(error.to_string().contains(&missing.display().to_string()), "{error}");
            ensure!(error.code() == "pacs-tls-config");
        }
        other => bail!("missing CA file: expected PacsError::Tls, got {other:?}"),
    }
    let mut config = config_for(&url, &orthanc);
    config.tls = TlsOptions { ca_file: Some(pki.ca_key.clone()), ..trusted.clone() };
    ensure!(matches!(DicomWebClient::new(config), Err(PacsError::Tls { .. })), "a key file accepted as a CA");
    let mut config = config_for(&url, &orthanc);
    config.tls = TlsOptions { client_key: None, ..trusted.clone() };
    ensure!(matches!(DicomWebClient::new(config), Err(PacsError::Config(_))), "a certificate without its key");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. DIMSE

fn scp(store: &Path) -> anyhow::Result<(dimse::ScpHandle, mpsc::Receiver<ScpEvent>)> {
    let scp = StoreScp::bind(ScpConfig {
        ae_title: "LIGHTBOX".into(),
        bind: ([127, 0, 0, 1], 0).into(),
        store_root: store.to_owned(),
        check_called_ae: false,
        allowed_calling_aets: vec![],
    })?;
    let (tx, rx) = mpsc::channel();
    Ok((scp.spawn(Some(tx))?, rx))
}

/// Waits for `n` `Stored` events.
fn wait_stored(events: &mpsc::Receiver<ScpEvent>, n: usize) -> anyhow::Result<Vec<String>> {
    let mut uids = Vec::new();
    while uids.len() < n {
        match events.recv_timeout(Duration::from_secs(20)).context("waiting for the SCP")? {
            ScpEvent::Stored { sop_uid, .. } => uids.push(sop_uid),
            ScpEvent::Failed { detail, .. } => bail!("SCP failure: {detail}"),
            _ => {}
        }
    }
    Ok(uids)
}

/// Every instance of `sources` is in the store at `root`, in the source's transfer syntax, with
/// the same pixel data and the same dataset bytes after the meta header.
fn ensure_in_store(root: &Path, sources: &[PathBuf]) -> anyhow::Result<()> {
    let store = Store::open(root)?;
    for source in sources {
        let source = DicomFile::open(source)?;
        let uid = source.sop_instance_uid()?;
        let stored = store.instance_file(&uid)?.with_context(|| format!("{uid} not in the store"))?;
        let stored = DicomFile::open(&stored)?;
        ensure!(
            stored.transfer_syntax() == source.transfer_syntax(),
            "{uid}: stored as {:?}, sent as {:?}",
            stored.transfer_syntax(),
            source.transfer_syntax()
        );
        ensure!(stored.pixel_data()? == source.pixel_data()?, "{uid}: pixel data differs");
        ensure!(stored.sop_instance_uid()? == uid);
        // Nothing was transcoded or rewritten on the way: the dataset is the sender's, byte for byte.
        ensure!(stored.dataset() == source.dataset(), "{uid}: the dataset after the meta header differs");
    }
    Ok(())
}

#[test]
fn our_scp_takes_storescu_pushes_plain_and_compressed() -> anyhow::Result<()> {
    let store_dir = tempfile::tempdir()?;
    let (handle, events) = scp(store_dir.path())?;
    let port = handle.local_addr().port();

    dcmtk::echoscu("LIGHTBOX", port)?;
    loop {
        match events.recv_timeout(Duration::from_secs(10)).context("no echo event")? {
            ScpEvent::Echo { calling_ae } => {
                ensure!(calling_ae == "LIGHTBOX-TEST");
                break;
            }
            ScpEvent::Failed { detail, .. } => bail!("{detail}"),
            _ => {}
        }
    }

    let plain = first_files(GE_SERIES, 10)?;
    dcmtk::storescu("LIGHTBOX", port, &[], &plain)?;
    ensure!(wait_stored(&events, 10)?.len() == 10);
    ensure!(Store::open(store_dir.path())?.instance_count()? == 10);
    ensure_in_store(store_dir.path(), &plain)?;
    // The store keeps the file the SCP wrote: our meta header, the sender's dataset.
    let store = Store::open(store_dir.path())?;
    for source in &plain {
        let source = DicomFile::open(source)?;
        let stored = store.instance_file(&source.sop_instance_uid()?)?.context("not stored")?;
        let stored = DicomFile::open(&stored)?;
        ensure!(stored.meta_string(dicomfile::IMPLEMENTATION_CLASS_UID).as_deref() == Some(IMPLEMENTATION_CLASS_UID));
    }

    // Compressed: storescu proposes them only when told; they are stored as sent.
    let dir = tempfile::tempdir()?;
    let ts = dicom_files(&data(TS_FOLDER)?)?;
    let compressed = Series::copy(&ts, dir.path())?;
    let by_name = |n: &str| -> anyhow::Result<PathBuf> {
        compressed
            .files
            .iter()
            .find(|f| f.to_string_lossy().ends_with(&format!("-{n}.dcm")))
            .cloned()
            .context("missing")
    };
    for (option, name) in [("-xr", "4"), ("-xs", "5"), ("-xt", "7"), ("-xv", "9")] {
        let file = by_name(name)?;
        dcmtk::storescu("LIGHTBOX", port, &[option], std::slice::from_ref(&file))?;
        wait_stored(&events, 1)?;
        ensure_in_store(store_dir.path(), std::slice::from_ref(&file)).with_context(|| format!("storescu {option}"))?;
    }
    ensure!(Store::open(store_dir.path())?.instance_count()? == 14);
    handle.stop();
    Ok(())
}

#[test]
fn orthanc_pushes_to_our_scp() -> anyhow::Result<()> {
    let store_dir = tempfile::tempdir()?;
    let (handle, events) = scp(store_dir.path())?;
    let orthanc = Orthanc::start_with(OrthancOptions {
        dicom_aet_peers: vec![("lightbox".into(), "LIGHTBOX".into(), handle.local_addr().port())],
        ..OrthancOptions::default()
    })?;
    let dir = tempfile::tempdir()?;
    let mut files = first_files(GE_SERIES, 8)?;
    let jls = copy_with_new_uids(&[data(&format!("{TS_FOLDER}/7.dcm"))?], dir.path(), &Uids::EachOwnStudy, &[])?;
    files.extend(jls);
    let ids = files.iter().map(|f| orthanc.upload(f)).collect::<anyhow::Result<Vec<_>>>()?;
    let body = serde_json::to_vec(&serde_json::json!({ "Resources": ids, "Synchronous": true }))?;
    let (status, answer) = orthanc.request("POST", "/modalities/lightbox/store", Some((&body, "application/json")))?;
    ensure!(status == 200, "C-STORE push: HTTP {status}: {}", String::from_utf8_lossy(&answer));
    ensure!(wait_stored(&events, files.len())?.len() == files.len());
    ensure!(Store::open(store_dir.path())?.instance_count()? == files.len() as u64);
    ensure_in_store(store_dir.path(), &files)?;
    handle.stop();
    Ok(())
}

#[test]
fn our_store_scu_and_echo_reach_orthanc() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let peer = DimsePeer {
        ae_title: orthanc.aet().to_owned(),
        host: "127.0.0.1".into(),
        port: orthanc.dicom_port(),
        calling_ae_title: "LIGHTBOX".into(),
    };
    dimse::echo(&peer)?;

    let dir = tempfile::tempdir()?;
    let mut files = first_files(GE_SERIES, 10)?;
    files.extend(Series::copy(&dicom_files(&data(TS_FOLDER)?)?, dir.path())?.files);
    let outcomes = dimse::store_scu(&peer, &files)?;
    ensure!(outcomes.len() == files.len());
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.is_success()).collect();
    ensure!(failed.is_empty(), "C-STORE failures: {failed:?}");
    ensure!(orthanc.instance_count()? == files.len() as u64);
    // Orthanc stores what it got: same transfer syntax, same pixel data.
    let ids = orthanc_ids(&orthanc)?;
    for file in &files {
        let source = DicomFile::open(file)?;
        let uid = source.sop_instance_uid()?;
        let id = ids.get(&uid).with_context(|| format!("{uid} not in Orthanc"))?;
        let (status, bytes) = orthanc.request("GET", &format!("/instances/{id}/file"), None)?;
        ensure!(status == 200);
        let stored = DicomFile::parse(bytes)?;
        ensure!(stored.transfer_syntax() == source.transfer_syntax(), "{}: syntax changed", file.display());
        ensure!(stored.pixel_data()? == source.pixel_data()?, "{}: pixel data changed", file.display());
    }

    // Nobody listening: a DIMSE error naming the peer, not a hang.
    let dead = DimsePeer { port: free_port()?, ..peer.clone() };
    match dimse::echo(&dead) {
        Err(error @ PacsError::Dimse { .. }) => ensure!(error.to_string().contains(&dead.port.to_string()), "{error}"),
        other => bail!("echo to a closed port: {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Interop with the Python dicomweb-client

#[tokio::test]
async fn dicomweb_client_reads_what_we_store_and_we_read_what_it_stores() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let client = client(&orthanc)?;
    let dir = tempfile::tempdir()?;
    let ours = Series::copy(&first_files(GE_SERIES, 10)?, &dir.path().join("ours"))?;
    ensure!(client.store_files(None, &ours.files).await?.stored.len() == 10);

    // It retrieves our series (stored encoding) and writes each instance with pydicom.
    let out = dir.path().join("py-out");
    std::fs::create_dir_all(&out)?;
    let script = r#"
study, series, out = args
dss = client.retrieve_series(study, series, media_types=(("application/dicom", "*"),))
for ds in dss:
    ds.save_as(os.path.join(out, ds.SOPInstanceUID + ".dcm"), enforce_file_format=True)
print(json.dumps(sorted(str(ds.SOPInstanceUID) for ds in dss)))
"#;
    let printed = pypeer::run_client_script(
        &orthanc.dicomweb_url(),
        orthanc.user(),
        orthanc.password(),
        script,
        &[ours.study.clone(), ours.series.clone(), out.display().to_string()],
    )?;
    let uids: BTreeSet<String> = serde_json::from_str(printed.trim())?;
    ensure!(uids == ours.uids(), "dicomweb-client got {uids:?}");
    for file in dicom_files(&out)? {
        let got = DicomFile::open(&file)?;
        let source = DicomFile::open(ours.source(&got.sop_instance_uid()?)?)?;
        ensure!(got.pixel_data()? == source.pixel_data()?, "{}: pixel data differs", file.display());
    }

    // It stores another series (pydicom-encoded); we find it and retrieve it.
    let theirs = Series::copy(&first_files(GE_SERIES_2, 10)?, &dir.path().join("theirs"))?;
    let script = r#"
import pydicom
result = client.store_instances([pydicom.dcmread(f) for f in args])
print(json.dumps({"stored": [str(i.ReferencedSOPInstanceUID) for i in result.get("ReferencedSOPSequence", [])],
                  "failed": len(result.get("FailedSOPSequence", []))}))
"#;
    let files: Vec<String> = theirs.files.iter().map(|f| f.display().to_string()).collect();
    let printed =
        pypeer::run_client_script(&orthanc.dicomweb_url(), orthanc.user(), orthanc.password(), script, &files)?;
    let answer: serde_json::Value = serde_json::from_str(printed.trim())?;
    ensure!(answer["failed"] == 0 && answer["stored"].as_array().map(Vec::len) == Some(10), "{answer}");

    let found = client.search_instances(&theirs.study, Some(&theirs.series), &QidoQuery::new()).await?;
    ensure!(uid_set(&found, tags::SOP_INSTANCE_UID) == theirs.uids());
    let back = tempfile::tempdir()?;
    let summary = client.retrieve_series_to_dir(&theirs.study, &theirs.series, back.path()).await?;
    ensure!(summary.files.len() == 10);
    for file in &summary.files {
        let got = DicomFile::open(file)?;
        let source = DicomFile::open(theirs.source(&got.sop_instance_uid()?)?)?;
        ensure!(got.pixel_data()? == source.pixel_data()?, "{}: pixel data differs", file.display());
    }
    ensure!(orthanc.instance_count()? == 20);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. Faults

#[tokio::test]
async fn qido_is_retried_after_503s_and_succeeds() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    client.store_files(None, &first_files(GE_SERIES, 2)?).await?;
    let before = proxy.requests();
    proxy.set_fault(Fault::Status { code: 503, times: 2 });
    let found = client.search_studies(&QidoQuery::new()).await?;
    ensure!(found.len() == 1);
    ensure!(proxy.requests() - before == 3, "{} requests", proxy.requests() - before);

    // More 503s than attempts: the last error is the 503, after exactly `attempts` requests.
    proxy.set_fault(Fault::Status { code: 503, times: 10 });
    let before = proxy.requests();
    let error = client.search_studies(&QidoQuery::new()).await.err().context("succeeded through 503s")?;
    ensure!(matches!(error, PacsError::Status { status: 503, .. }) && error.is_transient(), "{error:?}");
    ensure!(proxy.requests() - before == u64::from(quick_retry().attempts));
    Ok(())
}

#[tokio::test]
async fn client_errors_fail_at_once_without_retries() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    let series = Series::of(first_files(GE_SERIES, 2)?)?;
    client.store_files(None, &series.files).await?;

    for code in [404, 400] {
        proxy.set_fault(Fault::Status { code, times: 3 });
        let before = proxy.requests();
        let error = client.search_studies(&QidoQuery::new()).await.err().context("a 4xx succeeded")?;
        ensure!(matches!(error, PacsError::Status { status, .. } if status == code), "{error:?}");
        ensure!(!error.is_transient());
        ensure!(proxy.requests() - before == 1, "HTTP {code} was retried");
        proxy.set_fault(Fault::None);
    }
    // Real 4xx from Orthanc: an unknown study (404), a frame out of range (400).
    let before = proxy.requests();
    let error = client.retrieve_metadata("1.2.3.4.5.404", None).await.err().context("unknown study found")?;
    ensure!(matches!(error, PacsError::Status { status: 404, .. }), "{error:?}");
    ensure!(proxy.requests() - before == 1);
    let before = proxy.requests();
    let uid = series.by_uid.keys().next().context("empty")?;
    let error = client
        .retrieve_frames(&series.study, &series.series, uid, &[99], &FrameSyntax::Uncompressed)
        .await
        .err()
        .context("frame 99 of a one-frame image")?;
    ensure!(matches!(error, PacsError::Status { status: 400, .. }), "{error:?}");
    ensure!(proxy.requests() - before == 1);
    Ok(())
}

#[tokio::test]
async fn stow_to_another_studys_url_lists_every_instance_as_failed() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    let series = Series::of(first_files(GE_SERIES, 3)?)?;
    // Orthanc answers 409 with a FailedSOPSequence naming each instance (reason 272), once.
    let result = client.store_files(Some("1.2.3.4.5.409"), &series.files).await?;
    ensure!(result.stored.is_empty(), "{result:?}");
    ensure!(result.failed.iter().map(|f| f.sop_uid.clone()).collect::<BTreeSet<_>>() == series.uids(), "{result:?}");
    ensure!(result.failed.iter().all(|f| f.reason == 272), "{result:?}");
    ensure!(proxy.requests() == 1, "a 409 was retried");
    ensure!(orthanc.instance_count()? == 0);
    Ok(())
}

#[tokio::test]
async fn broken_series_transfer_resumes_with_only_the_missing_instances() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let series = Series::of(first_files(GE_SERIES, 40)?)?;
    client(&orthanc)?.store_files(None, &series.files).await?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;

    proxy.set_fault(Fault::CutResponseAfter { bytes: series.bytes()? / 3, times: 1 });
    let out = tempfile::tempdir()?;
    let summary = client.retrieve_series_to_dir(&series.study, &series.series, out.path()).await?;
    ensure_same_files(&summary.files, &series)?;
    ensure!(summary.resumed_instances > 0 && summary.resumed_instances < 40, "resumed {}", summary.resumed_instances);
    // One broken series request, one QIDO, one request per missing instance.
    ensure!(proxy.requests() == 2 + summary.resumed_instances as u64, "{} requests", proxy.requests());
    ensure!(partial_files(out.path())?.is_empty(), "partial files left");
    Ok(())
}

#[tokio::test]
async fn broken_stow_upload_is_resent_and_stored_once() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    let series = Series::of(first_files(GE_SERIES, 40)?)?;
    proxy.set_fault(Fault::CutRequestAfter { bytes: series.bytes()? / 2, times: 1 });
    let result = client.store_files(None, &series.files).await?;
    ensure!(result.failed.is_empty(), "{:?}", result.failed);
    ensure!(result.stored.iter().cloned().collect::<BTreeSet<_>>() == series.uids());
    ensure!(proxy.requests() == 2, "{} requests", proxy.requests());
    ensure!(orthanc.instance_count()? == 40);
    ensure!(orthanc.sop_instance_uids()?.into_iter().collect::<BTreeSet<_>>() == series.uids());
    Ok(())
}

#[tokio::test]
async fn a_silent_pacs_times_out() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let mut config = proxied_config(&orthanc, &proxy);
    config.read_timeout = Duration::from_millis(300);
    config.retry = RetryPolicy { attempts: 2, ..quick_retry() };
    let client = DicomWebClient::new(config)?;
    proxy.set_fault(Fault::Delay(Duration::from_millis(1500)));
    let started = Instant::now();
    let error = client.search_studies(&QidoQuery::new()).await.err().context("a silent PACS answered")?;
    let took = started.elapsed();
    ensure!(matches!(error, PacsError::Timeout { .. }), "{error:?}");
    ensure!(error.code() == "pacs-timeout" && error.is_transient());
    ensure!(error.to_string().contains("did not answer within 0.3 s"), "{error}");
    ensure!(proxy.requests() == 2, "{} requests", proxy.requests());
    ensure!(took < Duration::from_millis(1400), "gave up after {took:?}, not after the read timeout");
    proxy.set_fault(Fault::None);
    ensure!(client.search_studies(&QidoQuery::new()).await?.is_empty());
    Ok(())
}

/// Kills Orthanc once `trigger` says so, keeps it down for `down`, restarts it; returns when it
/// was killed.
fn kill_and_restart(
    orthanc: Arc<Mutex<Orthanc>>,
    trigger: impl Fn() -> bool + Send + 'static,
    down: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Instant>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !trigger() {
            ensure!(Instant::now() < deadline, "the kill trigger never fired");
            std::thread::sleep(Duration::from_millis(1));
        }
        let killed = {
            let mut orthanc = orthanc.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            orthanc.kill()?;
            Instant::now()
        };
        std::thread::sleep(down);
        orthanc.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.restart()?;
        Ok(killed)
    })
}

#[tokio::test]
async fn orthanc_killed_mid_stow_ends_with_every_instance_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let series = Series::big(100, dir.path())?;
    let orthanc = Orthanc::start()?;
    // The proxy only tells when the STOW request has arrived; a killed Orthanc behind it means a
    // cut connection or a 502, both retried.
    let proxy = Arc::new(proxy_for(&orthanc)?);
    let mut config = proxied_config(&orthanc, &proxy);
    config.retry = patient_retry();
    let client = DicomWebClient::new(config)?;
    let orthanc = Arc::new(Mutex::new(orthanc));
    let arrived = Arc::clone(&proxy);
    let since = Arc::new(Mutex::new(None::<Instant>));
    let killer = kill_and_restart(
        Arc::clone(&orthanc),
        move || {
            if arrived.requests() == 0 {
                return false;
            }
            let mut first = since.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(150)
        },
        Duration::from_secs(1),
    );
    let result = client.store_files(None, &series.files).await;
    let finished = Instant::now();
    let killed = killer.join().map_err(|_| anyhow::anyhow!("killer panicked"))??;
    let result = result?;
    ensure!(killed < finished, "the STOW finished before Orthanc was killed: the test proved nothing");
    ensure!(proxy.requests() > 1, "the STOW was not resent");
    ensure!(result.failed.is_empty() && result.stored.iter().cloned().collect::<BTreeSet<_>>() == series.uids());
    let orthanc = orthanc.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(orthanc.instance_count()? == 100, "{} instances", orthanc.instance_count()?);
    ensure!(orthanc.sop_instance_uids()?.into_iter().collect::<BTreeSet<_>>() == series.uids());
    Ok(())
}

#[tokio::test]
async fn orthanc_killed_and_restarted_mid_wado_the_retrieval_completes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let series = Series::big(100, dir.path())?;
    let orthanc = Orthanc::start()?;
    client(&orthanc)?.store_files(None, &series.files).await?;
    let mut config = config_for(&orthanc.dicomweb_url(), &orthanc);
    config.retry = patient_retry();
    let client = DicomWebClient::new(config)?;
    let orthanc = Arc::new(Mutex::new(orthanc));

    let out = tempfile::tempdir()?;
    let watched = out.path().to_owned();
    let killer = kill_and_restart(
        Arc::clone(&orthanc),
        move || std::fs::read_dir(&watched).map(|d| d.count() >= 2).unwrap_or(false),
        Duration::from_secs(1),
    );
    let summary = client.retrieve_series_to_dir(&series.study, &series.series, out.path()).await;
    let finished = Instant::now();
    let killed = killer.join().map_err(|_| anyhow::anyhow!("killer panicked"))??;
    let summary = summary?;
    ensure!(killed < finished, "the retrieval finished before Orthanc was killed");
    ensure_same_files(&summary.files, &series)?;
    ensure!(summary.resumed_instances > 0, "nothing was resumed: the kill came after the last byte");
    ensure!(partial_files(out.path())?.is_empty());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8b. The outbox

fn enqueue_all(store: &mut Store, files: &[PathBuf]) -> anyhow::Result<Vec<i64>> {
    files
        .iter()
        .map(|f| match store.outbox_enqueue(f, "pacs")? {
            Enqueued::Queued(id) => Ok(id),
            Enqueued::AlreadyQueued(id) => bail!("{} already queued as {id}", f.display()),
        })
        .collect()
}

#[tokio::test]
async fn outbox_waits_while_the_pacs_is_down_then_sends_each_instance_once() -> anyhow::Result<()> {
    let mut orthanc = Orthanc::start()?;
    orthanc.kill()?;
    let dir = tempfile::tempdir()?;
    let series = Series::copy(&first_files(GE_SERIES, 5)?, &dir.path().join("files"))?;
    let mut store = Store::open(&dir.path().join("store"))?;
    enqueue_all(&mut store, &series.files)?;
    let mut config = config_for(&orthanc.dicomweb_url(), &orthanc);
    config.retry = RetryPolicy { attempts: 2, ..quick_retry() };
    let client = DicomWebClient::new(config)?;
    let destination = Destination { name: "pacs", web: &client, dimse_fallback: None };

    let report = drain(&store, &destination).await?;
    ensure!(report == DrainReport { deferred: 5, ..DrainReport::default() }, "{report:?}");
    let rows = store.outbox(None)?;
    ensure!(rows.iter().all(|r| r.state == OutboxState::Pending), "{rows:?}");
    let error = rows[0].last_error.as_deref().context("no last_error on the row tried")?;
    ensure!(error.contains("cannot reach"), "{error}");
    // The drain stopped at the first unreachable send: the others were not even tried.
    ensure!(
        rows[1..]
            .iter()
            .all(|r| r.attempts == 0 && r.last_error.as_deref().is_some_and(|e| e.starts_with("not tried: "))),
        "{rows:?}"
    );

    orthanc.restart()?;
    let report = drain(&store, &destination).await?;
    ensure!(report == DrainReport { sent: 5, ..DrainReport::default() }, "{report:?}");
    ensure!(store.outbox(None)?.iter().all(|r| r.state == OutboxState::Sent && r.sent_at.is_some()));
    ensure!(orthanc.instance_count()? == 5);
    ensure!(orthanc.sop_instance_uids()?.into_iter().collect::<BTreeSet<_>>() == series.uids());

    let report = drain(&store, &destination).await?;
    ensure!(report == DrainReport::default(), "{report:?}");
    ensure!(orthanc.instance_count()? == 5);
    Ok(())
}

#[tokio::test]
async fn outbox_after_a_crash_confirms_what_the_pacs_has_and_resends_only_the_rest() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let series = Series::copy(&first_files(GE_SERIES, 2)?, &dir.path().join("files"))?;
    let client = client(&orthanc)?;
    // The first file reached the PACS just before the crash; the second did not.
    client.store_files(None, &series.files[..1]).await?;
    ensure!(orthanc.instance_count()? == 1);
    let mut store = Store::open(&dir.path().join("store"))?;
    let ids = enqueue_all(&mut store, &series.files)?;
    for id in &ids {
        store.outbox_begin(*id)?; // both were marked `sending` when the crash came
    }
    ensure!(store.outbox_due()?.iter().all(|r| r.state == OutboxState::Sending));

    let report = drain(&store, &Destination { name: "pacs", web: &client, dimse_fallback: None }).await?;
    ensure!(report == DrainReport { already_there: 1, sent: 1, ..DrainReport::default() }, "{report:?}");
    ensure!(orthanc.instance_count()? == 2, "{} instances", orthanc.instance_count()?);
    ensure!(store.outbox(Some(OutboxState::Sent))?.len() == 2);
    let audit = store.audit_log()?;
    ensure!(audit.iter().any(|(_, action, _)| action == "confirmed-on-pacs"), "{audit:?}");
    Ok(())
}

#[tokio::test]
async fn outbox_refusals_fail_the_row_and_are_not_retried() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    let destination = Destination { name: "pacs", web: &client, dimse_fallback: None };
    let dir = tempfile::tempdir()?;
    let series = Series::copy(&first_files(GE_SERIES, 3)?, &dir.path().join("files"))?;
    let mut store = Store::open(&dir.path().join("store"))?;
    let ids = enqueue_all(&mut store, &series.files[..2])?;

    // The PACS answers the first STOW with 400: that row fails, the next one is still sent.
    proxy.set_fault(Fault::Status { code: 400, times: 1 });
    let report = drain(&store, &destination).await?;
    ensure!(report == DrainReport { sent: 1, failed: 1, ..DrainReport::default() }, "{report:?}");
    ensure!(proxy.requests() == 2, "{} requests: a 400 was retried", proxy.requests());
    let failed = store.outbox(Some(OutboxState::Failed))?;
    ensure!(failed.len() == 1 && failed[0].id == ids[0], "{failed:?}");
    ensure!(failed[0].last_error.as_deref().is_some_and(|e| e.contains("400")), "{failed:?}");
    // A failed row waits for a person: the next drain does not touch it.
    ensure!(drain(&store, &destination).await? == DrainReport::default());
    ensure!(proxy.requests() == 2);
    ensure!(orthanc.instance_count()? == 1);
    // Re-queued, it is looked up (not there) and sent.
    store.outbox_requeue(ids[0])?;
    ensure!(drain(&store, &destination).await? == DrainReport { sent: 1, ..DrainReport::default() });
    ensure!(orthanc.instance_count()? == 2);

    // Orthanc's own refusal: the queued object is damaged on disk (not DICOM any more).
    let Enqueued::Queued(id) = store.outbox_enqueue(&series.files[2], "pacs")? else { bail!("already queued") };
    let row = store.outbox(None)?.into_iter().find(|r| r.id == id).context("row")?;
    std::fs::write(&row.file, b"this is not DICOM any more")?;
    let before = proxy.requests();
    let report = drain(&store, &destination).await?;
    ensure!(report == DrainReport { failed: 1, ..DrainReport::default() }, "{report:?}");
    ensure!(proxy.requests() - before == 1, "Orthanc's refusal was retried");
    let row = store.outbox(None)?.into_iter().find(|r| r.id == id).context("row")?;
    ensure!(row.state == OutboxState::Failed, "{row:?}");
    ensure!(orthanc.instance_count()? == 2);
    Ok(())
}

#[tokio::test]
async fn outbox_falls_back_to_dimse_when_dicomweb_is_unreachable() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let dir = tempfile::tempdir()?;
    let series = Series::copy(&first_files(GE_SERIES, 3)?, &dir.path().join("files"))?;
    let mut store = Store::open(&dir.path().join("store"))?;
    enqueue_all(&mut store, &series.files)?;
    // DICOMweb on a port where nothing listens; DIMSE to Orthanc.
    let mut config = config_for(&format!("http://127.0.0.1:{}/dicom-web", free_port()?), &orthanc);
    config.retry = RetryPolicy { attempts: 2, ..quick_retry() };
    let client = DicomWebClient::new(config)?;
    let peer = DimsePeer {
        ae_title: orthanc.aet().to_owned(),
        host: "127.0.0.1".into(),
        port: orthanc.dicom_port(),
        calling_ae_title: "LIGHTBOX".into(),
    };
    let report = drain(&store, &Destination { name: "pacs", web: &client, dimse_fallback: Some(&peer) }).await?;
    ensure!(report == DrainReport { sent_by_dimse: 3, ..DrainReport::default() }, "{report:?}");
    ensure!(orthanc.instance_count()? == 3);
    ensure!(store.outbox(Some(OutboxState::Sent))?.len() == 3);
    Ok(())
}

/// A study of two series retrieved into the store with progress: counts only grow, end at the
/// totals, and each series is imported as soon as it is whole. A cancelled retrieval fails
/// with `Cancelled` and leaves no partial file behind.
#[tokio::test]
async fn study_retrieval_reports_progress_and_can_be_cancelled() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    let work = tempfile::tempdir()?;
    let first = Series::of(first_files(GE_SERIES, 12)?)?;
    let second_files = copy_with_new_uids(
        &first_files(GE_SERIES_2, 8)?,
        &work.path().join("b"),
        &Uids::Series { study: first.study.clone(), series: lightbox_tests::dcmtk::new_uid() },
        &[],
    )?;
    let client = client(&orthanc)?;
    client.store_files(None, &first.files).await?;
    client.store_files(None, &second_files).await?;

    // Paged listing: pages of 5 give every instance of the study once.
    let level = lightbox_pacs::QidoLevel::Instances { study: Some(first.study.clone()), series: None };
    let paged = client.search_paged(&level, &QidoQuery::new(), 5).await?;
    ensure!(uid_set(&paged, tags::SOP_INSTANCE_UID).len() == 20 && paged.len() == 20, "{} listed", paged.len());

    let store_dir = work.path().join("store");
    let mut store = Store::open(&store_dir)?;
    let (sender, receiver) = mpsc::channel();
    let control = lightbox_pacs::TransferControl::with_progress(sender);
    let summary = client.retrieve_into_with(&mut store, &first.study, None, &control).await?;
    ensure!(summary.imported == 20, "{summary:?}");
    let steps: Vec<lightbox_pacs::TransferProgress> = receiver.try_iter().collect();
    ensure!(steps.len() >= 20, "{} progress messages", steps.len());
    ensure!(
        steps
            .windows(2)
            .all(|w| w[1].instances >= w[0].instances && w[1].bytes >= w[0].bytes && w[1].imported >= w[0].imported)
    );
    let last = steps.last().context("no progress")?;
    ensure!(last.instances == 20 && last.imported == 20 && last.bytes == summary.bytes, "{last:?} vs {summary:?}");
    // One series (12 or 8 instances, in the PACS's order) was imported before the other arrived.
    ensure!(steps.iter().any(|p| p.imported == p.instances && (p.imported == 12 || p.imported == 8)), "{steps:?}");

    // Cancelled before it starts: an error, nothing imported, nothing left in incoming/.
    let other_store = work.path().join("other");
    let mut other = Store::open(&other_store)?;
    let control = lightbox_pacs::TransferControl::default();
    control.cancel();
    let error =
        client.retrieve_into_with(&mut other, &first.study, None, &control).await.err().context("not cancelled")?;
    ensure!(matches!(error, PacsError::Cancelled { .. }) && !error.is_transient(), "{error:?}");
    ensure!(other.instance_count()? == 0);
    ensure!(partial_files(&other_store.join("incoming"))?.is_empty());
    Ok(())
}

/// A study of two series on a real Orthanc, and a client that reaches it through a proxy.
struct TwoSeriesStudy {
    /// Holds the second series' files and room for stores.
    work: tempfile::TempDir,
    /// `n` instances of a GE series.
    first: Series,
    /// The UID of the second series: `m` instances of another GE series, in `first`'s study.
    second: String,
    second_files: Vec<PathBuf>,
    proxy: FaultProxy,
    client: DicomWebClient,
    /// Bind it (`_orthanc`, not `_` or `..`) to keep Orthanc running.
    _orthanc: Orthanc,
}

async fn two_series_study(n: usize, m: usize) -> anyhow::Result<TwoSeriesStudy> {
    let orthanc = Orthanc::start()?;
    let work = tempfile::tempdir()?;
    let first = Series::of(first_files(GE_SERIES, n)?)?;
    let second = lightbox_tests::dcmtk::new_uid();
    let second_files = copy_with_new_uids(
        &first_files(GE_SERIES_2, m)?,
        &work.path().join("b"),
        &Uids::Series { study: first.study.clone(), series: second.clone() },
        &[],
    )?;
    client(&orthanc)?.store_files(None, &first.files).await?;
    client(&orthanc)?.store_files(None, &second_files).await?;
    let proxy = proxy_for(&orthanc)?;
    let client = DicomWebClient::new(proxied_config(&orthanc, &proxy))?;
    Ok(TwoSeriesStudy { work, first, second, second_files, proxy, client, _orthanc: orthanc })
}

/// A study one of whose series the PACS will not send (404: gone since it was listed): the
/// other series is retrieved and imported, and the summary names the missing one with its
/// instance count. Retrieved again, only what the store lacks is fetched, one instance the PACS
/// refuses is named alone, and a last run completes the study. When the refused series is the
/// only one asked for, or the PACS is down, the retrieval fails; an unknown study fails saying
/// the PACS has no series of it.
#[tokio::test]
async fn a_series_the_pacs_refuses_does_not_stop_the_rest_of_the_study() -> anyhow::Result<()> {
    let TwoSeriesStudy { work, first, second: refused, second_files, proxy, client, _orthanc } =
        two_series_study(6, 4).await?;
    proxy.set_fault(Fault::StatusFor { target_contains: format!("/series/{refused}"), code: 404 });

    let mut store = Store::open(&work.path().join("store"))?;
    let summary = client.retrieve_into(&mut store, &first.study, None).await?;
    ensure!(summary.imported == 6 && summary.already_stored == 0, "{summary:?}");
    ensure!(store.instance_count()? == 6);
    let [failure] = summary.failed.as_slice() else { bail!("{summary:?}") };
    ensure!(failure.series == refused && failure.instances == Some(4), "{failure:?}");
    ensure!(failure.reason.contains("404") && failure.reason.contains(&refused), "{}", failure.reason);

    // The refused series alone: an error, as before.
    let error = client.retrieve_into(&mut store, &first.study, Some(&refused)).await.err().context("retrieved")?;
    ensure!(matches!(error, PacsError::Status { status: 404, .. }), "{error:?}");

    // The store has one instance of that series from elsewhere; the PACS now sends the series
    // but refuses one instance of it. Only the two others are fetched.
    store.import_file(&second_files[0])?;
    let refused_sop = lightbox_dicom::read_instance(&second_files[1])?.sop_instance_uid;
    proxy.set_fault(Fault::StatusFor { target_contains: format!("/instances/{refused_sop}"), code: 404 });
    let again = client.retrieve_into(&mut store, &first.study, None).await?;
    ensure!(again.imported == 2 && again.already_stored == 7 && again.resumed_instances == 0, "{again:?}");
    let fetched: u64 = [&second_files[2], &second_files[3]]
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()))
        .sum::<Result<_, _>>()?;
    ensure!(again.bytes == fetched, "{} bytes fetched, {fetched} missing", again.bytes);
    let [failure] = again.failed.as_slice() else { bail!("{again:?}") };
    ensure!(failure.series == refused && failure.instances == Some(1), "{failure:?}");
    ensure!(failure.reason.contains(&refused_sop) && failure.reason.contains("404"), "{}", failure.reason);

    // Once the PACS sends it, the same call brings the last one.
    proxy.set_fault(Fault::None);
    let last = client.retrieve_into(&mut store, &first.study, None).await?;
    ensure!(last.imported == 1 && last.already_stored == 9 && last.failed.is_empty(), "{last:?}");
    ensure!(store.instance_count()? == 10);

    // Every series refused: the retrieval fails with the PACS's answer.
    let mut other = Store::open(&work.path().join("other"))?;
    proxy.set_fault(Fault::StatusFor { target_contains: "/series/".into(), code: 404 });
    let error = client.retrieve_into(&mut other, &first.study, None).await.err().context("retrieved")?;
    ensure!(matches!(error, PacsError::Status { status: 404, .. }), "{error:?}");
    ensure!(other.instance_count()? == 0);
    // A series failing with 5xx is not skipped over (the next would fail the same way): the
    // retrieval fails, whichever series the PACS lists first.
    proxy.set_fault(Fault::StatusFor { target_contains: format!("/series/{}", first.series), code: 503 });
    let error = client.retrieve_into(&mut other, &first.study, None).await.err().context("retrieved")?;
    ensure!(error.is_transient(), "{error:?}");

    proxy.set_fault(Fault::None);
    let error = client.retrieve_into(&mut other, "1.2.3.4.5.404", None).await.err().context("retrieved")?;
    ensure!(error.code() == "pacs-not-found" && error.to_string().contains("1.2.3.4.5.404"), "{error}");
    Ok(())
}

/// Objects the PACS sends damaged (their "DICM" marker overwritten on the way) are refused by
/// the store one by one and named with their series; the study's other series is imported.
/// When nothing of what was asked is whole, the retrieval fails with the store's reason.
#[tokio::test]
async fn damaged_objects_from_the_pacs_are_named_and_the_rest_imported() -> anyhow::Result<()> {
    let TwoSeriesStudy { work, first, second: damaged, proxy, client, _orthanc, .. } = two_series_study(3, 2).await?;
    proxy.set_fault(Fault::RewriteFor {
        target_contains: format!("/series/{damaged}"),
        find: b"DICM".to_vec(),
        replace: b"DICX".to_vec(),
    });

    let store_dir = work.path().join("store");
    let mut store = Store::open(&store_dir)?;
    let summary = client.retrieve_into(&mut store, &first.study, None).await?;
    ensure!(summary.imported == 3 && store.instance_count()? == 3, "{summary:?}");
    ensure!(summary.failed.len() == 2, "{summary:?}");
    for failure in &summary.failed {
        ensure!(failure.series == damaged && failure.instances == Some(1), "{failure:?}");
        ensure!(failure.reason.contains("DICOM"), "{}", failure.reason);
    }

    let mut other = Store::open(&work.path().join("other"))?;
    let error = client.retrieve_into(&mut other, &first.study, Some(&damaged)).await.err().context("retrieved")?;
    ensure!(error.code() == "dicom" && error.to_string().contains("DICOM"), "{error}");
    ensure!(other.instance_count()? == 0);
    ensure!(partial_files(&store_dir.join("incoming"))?.is_empty());
    Ok(())
}

/// The workstation's worklist: local studies and the PACS's, merged by study; with the PACS
/// down, the local ones and a reason (never an error).
#[tokio::test]
async fn worklist_merges_local_and_pacs_studies_and_survives_an_offline_pacs() -> anyhow::Result<()> {
    use lightbox_workflow::pacs::{PacsSettings, worklist_with_pacs};
    let mut orthanc = Orthanc::start()?;
    let work = tempfile::tempdir()?;
    let both = Series::of(first_files(GE_SERIES, 5)?)?;
    let remote_only = Series::copy(&first_files(GE_SERIES_2, 3)?, &work.path().join("remote"))?;
    let client = client(&orthanc)?;
    client.store_files(None, &both.files).await?;
    client.store_files(None, &remote_only.files).await?;
    let store_dir = work.path().join("store");
    let mut store = Store::open(&store_dir)?;
    for file in &both.files {
        store.import_file(file)?;
    }
    drop(store);

    let settings =
        PacsSettings { name: "orthanc".into(), web: config_for(&orthanc.dicomweb_url(), &orthanc), dimse: None };
    let query = lightbox_store::WorklistQuery { limit: 50, ..Default::default() };
    let merged = worklist_with_pacs(&store_dir, Some(&settings), &query).await?;
    let rows = &merged.entries;
    ensure!(merged.warning.is_none() && !merged.more, "{merged:?}");
    ensure!(rows.len() == 2, "{rows:?}");
    let local = rows.iter().find(|r| r.study_uid == both.study).context("local study missing")?;
    ensure!(local.local_instances == 5 && local.pacs_instances == Some(5), "{local:?}");
    let remote = rows.iter().find(|r| r.study_uid == remote_only.study).context("PACS study missing")?;
    ensure!(remote.local_instances == 0 && remote.pacs_instances == Some(3), "{remote:?}");
    // At a limit of one study per side, the PACS has one more than it lists: said, not hidden.
    let one = lightbox_store::WorklistQuery { limit: 1, ..Default::default() };
    let merged = worklist_with_pacs(&store_dir, Some(&settings), &one).await?;
    ensure!(merged.more && merged.entries.len() <= 2, "{merged:?}");
    let one_local = worklist_with_pacs(&store_dir, None, &one).await?;
    ensure!(!one_local.more && one_local.entries.len() == 1, "the store has one study: {one_local:?}");

    orthanc.kill()?;
    let mut offline = settings.clone();
    offline.web.retry = RetryPolicy { attempts: 1, ..quick_retry() };
    let merged = worklist_with_pacs(&store_dir, Some(&offline), &query).await?;
    let rows = &merged.entries;
    ensure!(rows.len() == 1 && rows[0].study_uid == both.study, "{rows:?}");
    let warning = merged.warning.context("no warning while the PACS is down")?;
    ensure!(warning.contains("not reachable, showing local studies only"), "{warning}");
    Ok(())
}
