//! The PACS test harness itself: a real Orthanc per test (plain, restarted, mutual TLS) and the
//! fault-injecting HTTP proxy. If these fail, the PACS tests built on them mean nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use lightbox_tests::orthanc::{Orthanc, OrthancOptions, Pki, curl_status};
use lightbox_tests::proxy::{Fault, FaultProxy};
use lightbox_tests::{data, run_ok};

/// One real DICOM file (explicit VR little endian, 384×384 mosaic, ~375 KiB).
fn sample() -> anyhow::Result<PathBuf> {
    data("dcm_qa_ts/In/1.dcm")
}

/// The SOP Instance UID as dcmtk reads it.
fn sop_uid(file: &Path) -> anyhow::Result<String> {
    let out = run_ok(Command::new("dcmdump").args(["-q", "+P", "SOPInstanceUID"]).arg(file))?;
    let (_, rest) = out.split_once('[').with_context(|| format!("no UID in dcmdump output {out:?}"))?;
    let (uid, _) = rest.split_once(']').with_context(|| format!("no UID in dcmdump output {out:?}"))?;
    Ok(uid.to_owned())
}

/// curl with Orthanc's credentials against any base URL (the proxy's, say).
fn curl(orthanc: &Orthanc, url: &str, extra: &[&str]) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut command = Command::new("curl");
    command.args(orthanc.curl_args()).args(["--max-time", "20"]).args(extra).arg(url);
    curl_status(command, None)
}

/// curl against the mutual-TLS Orthanc with a chosen client identity; returns curl's exit code and
/// the HTTP status it printed ("000" when there was no HTTP answer).
fn curl_tls(orthanc: &Orthanc, pki: &Pki, identity: Option<(&Path, &Path)>) -> anyhow::Result<(i32, String)> {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-u", "pacs:pacs-secret"]);
    command.args(pki.curl_trust_args());
    if let Some((cert, key)) = identity {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    command.arg(format!("{}/system", orthanc.base_url()));
    let out = command.output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn orthanc_starts_and_stores_an_upload() -> anyhow::Result<()> {
    let orthanc = Orthanc::start()?;
    ensure!(orthanc.base_url() == format!("http://127.0.0.1:{}", orthanc.http_port()));
    ensure!(orthanc.dicomweb_url().ends_with("/dicom-web"));
    let system = orthanc.get_json("/system")?;
    ensure!(system["Name"] == "LIGHTBOX-TEST-PACS", "not our Orthanc: {system}");
    ensure!(system["DicomAet"] == orthanc.aet());
    ensure!(system["DicomPort"] == orthanc.dicom_port(), "{system}");
    ensure!(orthanc.instance_count()? == 0, "fresh storage is not empty");

    let file = sample()?;
    let id = orthanc.upload(&file)?;
    ensure!(!id.is_empty());
    ensure!(orthanc.instance_count()? == 1);
    let uid = sop_uid(&file)?;
    let uids = orthanc.sop_instance_uids()?;
    ensure!(uids == vec![uid.clone()], "stored {uids:?}, uploaded {uid}");
    // The same SOP Instance UID again is not a second instance (and keeps its ID).
    ensure!(orthanc.upload(&file)? == id);
    ensure!(orthanc.instance_count()? == 1);
    // DICOMweb sees it too.
    let found = orthanc.get_json(&format!("/dicom-web/instances?SOPInstanceUID={uid}"))?;
    ensure!(found.as_array().is_some_and(|a| a.len() == 1), "QIDO: {found}");
    Ok(())
}

#[test]
fn orthanc_requires_credentials_unless_told_not_to() -> anyhow::Result<()> {
    let with_auth = Orthanc::start()?;
    let mut bare = Command::new("curl");
    bare.args(["-sS", "--max-time", "5"]).arg(format!("{}/system", with_auth.base_url()));
    ensure!(curl_status(bare, None)?.0 == 401, "no credentials must give 401");
    let mut wrong = Command::new("curl");
    wrong.args(["-sS", "--max-time", "5", "-u", "pacs:wrong"]).arg(format!("{}/system", with_auth.base_url()));
    ensure!(curl_status(wrong, None)?.0 == 401, "a wrong password must give 401");

    let open = Orthanc::start_with(OrthancOptions { auth: false, ..OrthancOptions::default() })?;
    ensure!(open.http_port() != with_auth.http_port());
    let mut bare = Command::new("curl");
    bare.args(["-sS", "--max-time", "5"]).arg(format!("{}/system", open.base_url()));
    ensure!(curl_status(bare, None)?.0 == 200, "auth: false must let anyone in");
    Ok(())
}

#[test]
fn orthanc_knows_its_dicom_peers_and_answers_echo() -> anyhow::Result<()> {
    let orthanc = Orthanc::start_with(OrthancOptions {
        dicom_aet_peers: vec![("workstation".into(), "LIGHTBOX".into(), 11112)],
        ..OrthancOptions::default()
    })?;
    let modalities = orthanc.get_json("/modalities?expand")?;
    ensure!(modalities["workstation"]["AET"] == "LIGHTBOX", "{modalities}");
    ensure!(modalities["workstation"]["Port"] == 11112, "{modalities}");
    ensure!(modalities["workstation"]["Host"] == "127.0.0.1", "{modalities}");
    run_ok(
        Command::new("echoscu")
            .args(["-aet", "LIGHTBOX", "-aec"])
            .arg(orthanc.aet())
            .arg("127.0.0.1")
            .arg(orthanc.dicom_port().to_string()),
    )
    .context("C-ECHO to Orthanc's DICOM port")?;
    Ok(())
}

#[test]
fn orthanc_restart_keeps_data_and_ports() -> anyhow::Result<()> {
    let mut orthanc = Orthanc::start()?;
    let file = sample()?;
    orthanc.upload(&file)?;
    let (http, dicom) = (orthanc.http_port(), orthanc.dicom_port());

    orthanc.kill()?;
    ensure!(!orthanc.is_running());
    ensure!(orthanc.get_json("/system").is_err(), "a killed Orthanc still answers");

    let started = Instant::now();
    orthanc.restart()?;
    ensure!(started.elapsed() < Duration::from_secs(15));
    ensure!(orthanc.is_running());
    ensure!((orthanc.http_port(), orthanc.dicom_port()) == (http, dicom), "ports moved");
    ensure!(orthanc.instance_count()? == 1, "the instance did not survive the kill");
    ensure!(orthanc.sop_instance_uids()? == vec![sop_uid(&file)?]);
    // restart() also works on a running server.
    orthanc.restart()?;
    ensure!(orthanc.instance_count()? == 1);
    let log = std::fs::read_to_string(orthanc.log_path())?;
    ensure!(log.matches("==== lightbox harness: starting Orthanc").count() == 3, "log is not appended to");
    Ok(())
}

#[test]
fn orthanc_mutual_tls_accepts_only_the_trusted_client() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let pki = Pki::generate(certs.path())?;
    let orthanc = Orthanc::start_with(OrthancOptions { tls: Some(pki.clone()), ..OrthancOptions::default() })?;
    ensure!(orthanc.base_url().starts_with("https://127.0.0.1:"));

    // The trusted client (the harness's own helpers use it).
    let system = orthanc.get_json("/system")?;
    ensure!(system["Name"] == "LIGHTBOX-TEST-PACS");
    ensure!(curl_tls(&orthanc, &pki, Some((&pki.client_cert, &pki.client_key)))? == (0, "200".into()));
    // The combined PEM works as the certificate and key at once.
    let mut pem = Command::new("curl");
    pem.args(["-sS", "--max-time", "10", "-u", "pacs:pacs-secret"])
        .args(pki.curl_trust_args())
        .arg("--cert")
        .arg(&pki.client_pem)
        .arg(format!("{}/system", orthanc.base_url()));
    ensure!(curl_status(pem, None)?.0 == 200);
    // Basic auth is still enforced behind TLS.
    let mut no_auth = Command::new("curl");
    no_auth
        .args(["-sS", "--max-time", "10"])
        .args(pki.curl_trust_args())
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .arg(format!("{}/system", orthanc.base_url()));
    ensure!(curl_status(no_auth, None)?.0 == 401);

    // No client certificate, or one from another CA: the handshake fails, no HTTP status at all.
    let (code, status) = curl_tls(&orthanc, &pki, None)?;
    ensure!(code != 0 && status == "000", "no client certificate: curl exit {code}, HTTP {status}");
    let (code, status) = curl_tls(&orthanc, &pki, Some((&pki.untrusted_client_cert, &pki.untrusted_client_key)))?;
    ensure!(code != 0 && status == "000", "untrusted client certificate: curl exit {code}, HTTP {status}");
    // Plain HTTP on the TLS port gets nothing useful either.
    let mut plain = Command::new("curl");
    plain
        .args(["-sS", "--max-time", "5", "-u", "pacs:pacs-secret"])
        .arg(format!("http://127.0.0.1:{}/system", orthanc.http_port()));
    ensure!(curl_status(plain, None).map_or(true, |(s, _)| s != 200), "plain HTTP accepted on the TLS port");

    // Orthanc survived the refused handshakes (the unpatched civetweb would have crashed).
    ensure!(curl_tls(&orthanc, &pki, Some((&pki.client_cert, &pki.client_key)))? == (0, "200".into()));
    Ok(())
}

/// An Orthanc behind a fault proxy.
fn proxied() -> anyhow::Result<(Orthanc, FaultProxy)> {
    let orthanc = Orthanc::start()?;
    let proxy = FaultProxy::start(([127, 0, 0, 1], orthanc.http_port()).into())?;
    Ok((orthanc, proxy))
}

#[test]
fn proxy_passes_through_with_connection_close() -> anyhow::Result<()> {
    let (orthanc, proxy) = proxied()?;
    ensure!(proxy.url() == format!("http://127.0.0.1:{}", proxy.addr().port()));
    let (status, body) = curl(&orthanc, &format!("{}/system", proxy.url()), &["-i"])?;
    ensure!(status == 200);
    let text = String::from_utf8_lossy(&body);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    ensure!(head.contains("connection: close"), "response head without Connection: close:\n{head}");
    ensure!(head.matches("connection:").count() == 1, "duplicate Connection headers:\n{head}");
    ensure!(text.contains("LIGHTBOX-TEST-PACS"));
    // Two URLs in one curl run: a keep-alive client still makes one connection per request.
    let url = format!("{}/system", proxy.url());
    let (status, _) = curl(&orthanc, &url, &["-o", "/dev/null", &url])?;
    ensure!(status == 200);
    ensure!(proxy.requests() == 3, "requests() = {}", proxy.requests());
    // An upload (request body) goes through whole.
    let file = sample()?;
    let (status, _) = curl(
        &orthanc,
        &format!("{}/instances", proxy.url()),
        &["--data-binary", &format!("@{}", file.display()), "-H", "Content-Type: application/dicom"],
    )?;
    ensure!(status == 200);
    ensure!(orthanc.instance_count()? == 1);
    Ok(())
}

#[test]
fn proxy_status_fault_answers_then_passes_through() -> anyhow::Result<()> {
    let (orthanc, proxy) = proxied()?;
    proxy.set_fault(Fault::Status { code: 503, times: 2 });
    let url = format!("{}/system", proxy.url());
    let statuses: Vec<u16> =
        (0..3).map(|_| curl(&orthanc, &url, &[]).map(|(s, _)| s)).collect::<anyhow::Result<_>>()?;
    ensure!(statuses == [503, 503, 200], "got {statuses:?}");
    ensure!(proxy.requests() == 3);
    ensure!(proxy.fault() == Fault::None, "the fault was not used up");
    // A faulted upload is answered, not reset, and never reaches upstream.
    proxy.set_fault(Fault::Status { code: 503, times: 1 });
    let file = sample()?;
    let upload = ["--data-binary", &format!("@{}", file.display()), "-H", "Content-Type: application/dicom"];
    let (status, body) = curl(&orthanc, &format!("{}/instances", proxy.url()), &upload)?;
    ensure!(status == 503 && body.is_empty(), "got {status}");
    ensure!(orthanc.instance_count()? == 0);
    Ok(())
}

#[test]
fn proxy_cut_response_breaks_the_transfer_once() -> anyhow::Result<()> {
    let (orthanc, proxy) = proxied()?;
    let file = sample()?;
    let id = orthanc.upload(&file)?;
    let size = std::fs::metadata(&file)?.len();
    let url = format!("{}/instances/{id}/file", proxy.url());

    proxy.set_fault(Fault::CutResponseAfter { bytes: 100_000, times: 1 });
    match curl(&orthanc, &url, &[]) {
        Ok((status, body)) => bail!("cut transfer succeeded: HTTP {status}, {} bytes", body.len()),
        Err(e) => ensure!(format!("{e:#}").contains("exit status: 18"), "expected curl's partial-file error: {e:#}"),
    }
    let (status, body) = curl(&orthanc, &url, &[])?;
    ensure!(status == 200 && body.len() as u64 == size, "HTTP {status}, {} of {size} bytes", body.len());
    ensure!(body == std::fs::read(&file)?, "the file came back different");
    Ok(())
}

#[test]
fn proxy_cut_request_breaks_the_upload_once() -> anyhow::Result<()> {
    let (orthanc, proxy) = proxied()?;
    let file = sample()?;
    let upload = ["--data-binary", &format!("@{}", file.display()), "-H", "Content-Type: application/dicom"];
    let url = format!("{}/instances", proxy.url());
    proxy.set_fault(Fault::CutRequestAfter { bytes: 50_000, times: 1 });
    ensure!(curl(&orthanc, &url, &upload).is_err(), "cut upload succeeded");
    ensure!(orthanc.instance_count()? == 0, "a truncated upload was stored");
    let (status, _) = curl(&orthanc, &url, &upload)?;
    ensure!(status == 200);
    ensure!(orthanc.instance_count()? == 1);
    ensure!(proxy.requests() == 2);
    Ok(())
}

#[test]
fn proxy_delay_is_measurable_and_upstream_loss_is_502() -> anyhow::Result<()> {
    let (mut orthanc, proxy) = proxied()?;
    let url = format!("{}/system", proxy.url());
    let time = |proxy_url: &str| -> anyhow::Result<Duration> {
        let start = Instant::now();
        let (status, _) = curl(&orthanc, proxy_url, &[])?;
        ensure!(status == 200);
        Ok(start.elapsed())
    };
    let fast = time(&url)?;
    proxy.set_fault(Fault::Delay(Duration::from_millis(600)));
    let slow = time(&url)?;
    ensure!(slow >= Duration::from_millis(600), "delayed request took {slow:?}");
    ensure!(fast < slow, "fast {fast:?}, slow {slow:?}");
    proxy.set_fault(Fault::None);
    let again = time(&url)?;
    ensure!(again + Duration::from_millis(300) < slow, "still delayed: {again:?} (delayed: {slow:?})");

    orthanc.kill()?;
    let (status, _) = curl(&orthanc, &url, &[])?;
    ensure!(status == 502, "upstream down gave {status}");
    orthanc.restart()?;
    ensure!(curl(&orthanc, &url, &[])?.0 == 200, "proxy does not reach the restarted Orthanc");
    Ok(())
}
