//! A real Orthanc (the reference PACS, with its DICOMweb and GDCM plugins) per test, on free
//! loopback ports with its own storage; see `../shared/docs/ORTHANC.md`.
//!
//! HTTP goes through the `curl` CLI so the harness needs no HTTP or TLS crate. Orthanc listens on
//! all interfaces (it has no bind-address option): tests must only ever connect to 127.0.0.1.
//!
//! HTTPS needs a workaround on Debian 12: Orthanc 1.10.1 uses the system civetweb 1.15, which
//! `dlopen`s `libssl.so` and looks up `SSL_get_peer_certificate`, a symbol OpenSSL 3 no longer
//! exports (it became a macro for `SSL_get1_peer_certificate`). The null function pointer makes
//! Orthanc segfault on the first TLS connection (civetweb/civetweb#1334). [`Orthanc::start_with`]
//! therefore compiles a tiny shim `libssl.so` (with `cc`) that exports the old name and depends on
//! the real `libssl.so.3`, and puts its folder first on Orthanc's `LD_LIBRARY_PATH`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The HTTP user and password Orthanc accepts when authentication is on.
pub const USER: &str = "pacs";
pub const PASSWORD: &str = "pacs-secret";
/// Orthanc's own application entity title.
pub const AET: &str = "ORTHANC";

const PLUGINS: [&str; 2] =
    ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/share/orthanc/plugins/libOrthancGdcm.so"];
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STATUS_MARKER: &str = "\n@@lightbox-http-status@@";

/// How to start an [`Orthanc`].
#[derive(Clone, Debug)]
pub struct OrthancOptions {
    /// HTTPS with client-certificate verification (mutual TLS) using these certificates.
    pub tls: Option<Pki>,
    /// HTTP basic authentication as [`USER`]/[`PASSWORD`] (default on).
    pub auth: bool,
    /// `DicomModalities`: (name, AET, port on 127.0.0.1) of the DICOM peers Orthanc knows.
    pub dicom_aet_peers: Vec<(String, String, u16)>,
}

impl Default for OrthancOptions {
    fn default() -> Self {
        Self { tls: None, auth: true, dicom_aet_peers: Vec::new() }
    }
}

/// A running Orthanc, killed (SIGKILL) on drop.
pub struct Orthanc {
    child: Option<Child>,
    options: OrthancOptions,
    http_port: u16,
    dicom_port: u16,
    /// Config, log, storage and the TLS shim live here.
    dir: tempfile::TempDir,
}

impl Orthanc {
    /// Orthanc over plain HTTP with basic authentication.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(OrthancOptions::default())
    }

    pub fn start_with(options: OrthancOptions) -> anyhow::Result<Self> {
        let mut dir = tempfile::Builder::new().prefix("lightbox-orthanc-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("storage"))?;
        if options.tls.is_some() {
            build_civetweb_shim(&dir.path().join("shim"))?;
        }
        // Ports are free when picked, but another process may take one before Orthanc binds it:
        // then Orthanc exits at once, and a fresh pair is tried.
        let mut last_error = None;
        for _ in 0..3 {
            let (http_port, dicom_port) = (free_port()?, free_port()?);
            if http_port == dicom_port {
                continue;
            }
            let mut orthanc = Self { child: None, options: options.clone(), http_port, dicom_port, dir };
            orthanc.write_config()?;
            match orthanc.spawn_and_wait() {
                Ok(()) => return Ok(orthanc),
                Err(e) if orthanc.exited_early() => {
                    last_error = Some(e);
                    orthanc.kill_child();
                    dir = orthanc.take_dir()?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free port pair found")))
    }

    /// Kills the process with SIGKILL (no clean shutdown), as a crash or power cut would. Storage
    /// and ports stay reserved for [`Orthanc::restart`].
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing Orthanc")?;
            child.wait().context("reaping Orthanc")?;
        }
        Ok(())
    }

    /// Starts a new Orthanc process on the same ports and the same storage (killing the running
    /// one first, if any), and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        // A port may be briefly unbindable after the kill: retry for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return Ok(()),
                Err(e) if self.exited_early() && Instant::now() < deadline => {
                    drop(e);
                    self.kill_child();
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.options.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    pub fn dicomweb_url(&self) -> String {
        format!("{}/dicom-web", self.base_url())
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn dicom_port(&self) -> u16 {
        self.dicom_port
    }

    pub fn user(&self) -> &str {
        USER
    }

    pub fn password(&self) -> &str {
        PASSWORD
    }

    pub fn auth_enabled(&self) -> bool {
        self.options.auth
    }

    pub fn aet(&self) -> &str {
        AET
    }

    /// The certificates, when started with TLS.
    pub fn pki(&self) -> Option<&Pki> {
        self.options.tls.as_ref()
    }

    /// Orthanc's stdout and stderr (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("orthanc.log")
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The curl arguments this server needs: `-sS`, basic auth when on, and with TLS the CA and
    /// the trusted client certificate.
    pub fn curl_args(&self) -> Vec<String> {
        let mut args = vec!["-sS".to_owned()];
        if self.options.auth {
            args.extend(["-u".to_owned(), format!("{USER}:{PASSWORD}")]);
        }
        if let Some(pki) = &self.options.tls {
            args.extend(pki.curl_trust_args());
            args.extend([
                "--cert".to_owned(),
                pki.client_cert.display().to_string(),
                "--key".to_owned(),
                pki.client_key.display().to_string(),
            ]);
        }
        args
    }

    /// Any request through curl: `path` is relative to [`Orthanc::base_url`] (starting with `/`);
    /// `body` is sent as is with `content_type`. Returns the HTTP status and the body; a transport
    /// failure (no connection, TLS refused) is an error.
    pub fn request(&self, method: &str, path: &str, body: Option<(&[u8], &str)>) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut command = Command::new("curl");
        command.args(self.curl_args()).args(["--max-time", "120", "-X", method]);
        if let Some((_, content_type)) = body {
            command.args(["--data-binary", "@-", "-H", &format!("Content-Type: {content_type}"), "-H", "Expect:"]);
        }
        command.arg(format!("{}{path}", self.base_url()));
        curl_status(command, body.map(|(b, _)| b))
    }

    /// GET `path` and parse the JSON answer, failing on a status other than 200.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.request("GET", path, None)?;
        if status != 200 {
            bail!("GET {path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {path}: not JSON"))
    }

    /// Uploads one DICOM file (`POST /instances`) and returns Orthanc's instance ID. A file whose
    /// SOP Instance UID is already stored is not overwritten, and still returns its ID.
    pub fn upload(&self, file: &Path) -> anyhow::Result<String> {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let (status, body) = self.request("POST", "/instances", Some((&bytes, "application/dicom")))?;
        if status != 200 {
            bail!("uploading {}: HTTP {status}: {}", file.display(), String::from_utf8_lossy(&body));
        }
        let answer: Value = serde_json::from_slice(&body)?;
        answer["ID"].as_str().map(str::to_owned).with_context(|| format!("no ID in {answer}"))
    }

    /// `CountInstances` from `GET /statistics`.
    pub fn instance_count(&self) -> anyhow::Result<u64> {
        let stats = self.get_json("/statistics")?;
        stats["CountInstances"].as_u64().with_context(|| format!("no CountInstances in {stats}"))
    }

    /// Every stored SOP Instance UID.
    pub fn sop_instance_uids(&self) -> anyhow::Result<Vec<String>> {
        let instances = self.get_json("/instances?expand")?;
        let list = instances.as_array().with_context(|| format!("/instances is not a list: {instances}"))?;
        list.iter()
            .map(|i| {
                i["MainDicomTags"]["SOPInstanceUID"]
                    .as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("instance without SOPInstanceUID: {i}"))
            })
            .collect()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let storage = self.storage_dir();
        let modalities: serde_json::Map<String, Value> = self
            .options
            .dicom_aet_peers
            .iter()
            .map(|(name, aet, port)| (name.clone(), json!([aet, "127.0.0.1", port])))
            .collect();
        let mut config = json!({
            "Name": "LIGHTBOX-TEST-PACS",
            "StorageDirectory": storage, "IndexDirectory": storage,
            "Plugins": PLUGINS,
            "HttpServerEnabled": true, "HttpPort": self.http_port,
            "RemoteAccessAllowed": false, "AuthenticationEnabled": self.options.auth,
            "RegisteredUsers": { USER: PASSWORD },
            "OrthancExplorerEnabled": false, "WebDavEnabled": false, "HttpDescribeErrors": true,
            "DicomServerEnabled": true, "DicomAet": AET, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": false, "DicomAlwaysAllowEcho": true, "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowFind": true, "DicomAlwaysAllowGet": true, "DicomAlwaysAllowMove": true,
            "UnknownSopClassAccepted": true,
            "DicomModalities": modalities,
            "SaveJobs": false, "StableAge": 2,
            "Gdcm": { "Enable": true, "Throttling": 2,
                "RestrictTransferSyntaxes": [ "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
                                              "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93" ] },
            "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": true, "WadoRoot": "/wado",
                          "Ssl": self.options.tls.is_some() }
        });
        if let Some(pki) = &self.options.tls {
            config["SslEnabled"] = json!(true);
            config["SslCertificate"] = json!(pki.server_pem);
            config["SslVerifyPeers"] = json!(true);
            config["SslTrustedClientCertificates"] = json!(pki.ca_cert);
        }
        std::fs::write(self.config_path(), serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("orthanc.json")
    }

    fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let mut log = OpenOptions::new().create(true).append(true).open(self.log_path())?;
        writeln!(log, "==== lightbox harness: starting Orthanc (HTTP {}, DICOM {})", self.http_port, self.dicom_port)?;
        let mut command = Command::new("Orthanc");
        command.arg(self.config_path()).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if self.options.tls.is_some() {
            let shim = self.dir.path().join("shim");
            let path = match std::env::var_os("LD_LIBRARY_PATH") {
                Some(old) if !old.is_empty() => {
                    let mut p = shim.into_os_string();
                    p.push(":");
                    p.push(old);
                    p
                }
                _ => shim.into_os_string(),
            };
            command.env("LD_LIBRARY_PATH", path);
        }
        self.child = Some(command.spawn().context("starting Orthanc (run scripts/setup-debian.sh)")?);

        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        loop {
            if self.exited_early() {
                bail!("Orthanc exited before answering ({last}); log tail:\n{}", self.log_tail(30));
            }
            let mut probe = Command::new("curl");
            probe.args(self.curl_args()).args(["--max-time", "2"]).arg(format!("{}/system", self.base_url()));
            match curl_status(probe, None) {
                Ok((200, _)) => return Ok(()),
                Ok((status, _)) => last = format!("HTTP {status}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(30);
                self.kill_child();
                bail!("Orthanc did not answer GET /system within {READY_TIMEOUT:?} ({last}); log tail:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exited_early(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Moves the temp dir out (for a retry on other ports), leaving an empty placeholder.
    fn take_dir(mut self) -> anyhow::Result<tempfile::TempDir> {
        let placeholder = tempfile::Builder::new().prefix("lightbox-orthanc-x-").tempdir()?;
        Ok(std::mem::replace(&mut self.dir, placeholder))
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        self.kill_child();
    }
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    // Tests run in parallel in one process: a port handed out once (and perhaps not bound yet by
    // the server it was meant for) is never handed out again, or two servers could race for it
    // and a test would talk to the other test's server.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no unused loopback port after 100 tries")
}

/// Runs a curl command (which must not use `-o` or `-w`) and returns the HTTP status and body.
/// Curl's own failure (exit code other than 0) is an error naming the exit code.
pub fn curl_status(mut command: Command, stdin: Option<&[u8]>) -> anyhow::Result<(u16, Vec<u8>)> {
    command.args(["-w", &format!("{STATUS_MARKER}%{{http_code}}")]);
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().context("running curl")?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || pipe.write_all(&bytes)))
        }
        _ => None,
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut out_pipe = child.stdout.take().context("curl stdout")?;
    let mut err_pipe = child.stderr.take().context("curl stderr")?;
    let err_reader = std::thread::spawn(move || {
        let _ = err_pipe.read_to_end(&mut stderr);
        stderr
    });
    out_pipe.read_to_end(&mut stdout)?;
    let stderr = err_reader.join().map_err(|_| anyhow::anyhow!("curl stderr reader panicked"))?;
    let status = child.wait()?;
    if let Some(writer) = writer {
        // A broken pipe is fine when curl gave up early; its exit code says why.
        let _ = writer.join();
    }
    if !status.success() {
        bail!("curl failed ({status}): {}", String::from_utf8_lossy(&stderr).trim());
    }
    let marker = STATUS_MARKER.as_bytes();
    let at = stdout
        .windows(marker.len())
        .rposition(|w| w == marker)
        .with_context(|| format!("curl output without status: {}", String::from_utf8_lossy(&stdout)))?;
    let code: u16 = std::str::from_utf8(&stdout[at + marker.len()..])?.trim().parse()?;
    stdout.truncate(at);
    Ok((code, stdout))
}

/// Test certificates made with the `openssl` CLI: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate from the same CA, and an "untrusted" client certificate from
/// another, self-signed CA. All keys are unencrypted RSA 2048 (PKCS#8 PEM).
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Server certificate then key, as Orthanc's `SslCertificate` wants.
    pub server_pem: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Client certificate then key in one PEM file.
    pub client_pem: PathBuf,
    pub untrusted_ca_cert: PathBuf,
    pub untrusted_client_cert: PathBuf,
    pub untrusted_client_key: PathBuf,
}

impl Pki {
    /// Writes the certificates into `dir` (which must exist and outlive their use).
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let p = |name: &str| dir.join(name);
        let pki = Self {
            ca_cert: p("ca.crt"),
            ca_key: p("ca.key"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            server_pem: p("server.pem"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            client_pem: p("client.pem"),
            untrusted_ca_cert: p("untrusted-ca.crt"),
            untrusted_client_cert: p("untrusted-client.crt"),
            untrusted_client_key: p("untrusted-client.key"),
        };
        let untrusted_ca_key = p("untrusted-ca.key");
        self_signed_ca(&pki.ca_cert, &pki.ca_key, "Lightbox Test CA")?;
        self_signed_ca(&pki.untrusted_ca_cert, &untrusted_ca_key, "Untrusted Test CA")?;

        let server_ext = p("server.ext");
        std::fs::write(
            &server_ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let client_ext = p("client.ext");
        std::fs::write(
            &client_ext,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        signed_cert(&pki.server_cert, &pki.server_key, "127.0.0.1", &pki.ca_cert, &pki.ca_key, &server_ext)?;
        signed_cert(&pki.client_cert, &pki.client_key, "lightbox-client", &pki.ca_cert, &pki.ca_key, &client_ext)?;
        signed_cert(
            &pki.untrusted_client_cert,
            &pki.untrusted_client_key,
            "lightbox-client",
            &pki.untrusted_ca_cert,
            &untrusted_ca_key,
            &client_ext,
        )?;
        concat(&pki.server_pem, &[&pki.server_cert, &pki.server_key])?;
        concat(&pki.client_pem, &[&pki.client_cert, &pki.client_key])?;
        Ok(pki)
    }

    /// `--cacert <ca>`: what a curl client needs to trust the server.
    pub fn curl_trust_args(&self) -> Vec<String> {
        vec!["--cacert".to_owned(), self.ca_cert.display().to_string()]
    }
}

fn openssl(args: &[&str]) -> anyhow::Result<()> {
    crate::run_ok(Command::new("openssl").args(args).stdin(Stdio::null()))
        .context("openssl (apt-get install openssl)")?;
    Ok(())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("non-UTF-8 path {}", path.display()))
}

fn self_signed_ca(cert: &Path, key: &Path, name: &str) -> anyhow::Result<()> {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path_str(key)?,
        "-out",
        path_str(cert)?,
    ])
}

fn signed_cert(cert: &Path, key: &Path, cn: &str, ca_cert: &Path, ca_key: &Path, ext: &Path) -> anyhow::Result<()> {
    let csr = cert.with_extension("csr");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        path_str(key)?,
        "-out",
        path_str(&csr)?,
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr)?,
        "-CA",
        path_str(ca_cert)?,
        "-CAkey",
        path_str(ca_key)?,
        "-set_serial",
        &format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()),
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        path_str(ext)?,
        "-out",
        path_str(cert)?,
    ])
}

fn concat(out: &Path, parts: &[&Path]) -> anyhow::Result<()> {
    let mut file = File::create(out)?;
    for part in parts {
        file.write_all(&std::fs::read(part)?)?;
    }
    Ok(())
}

/// Compiles the civetweb/OpenSSL 3 shim (see the module docs) into `dir`: a `libssl.so` that
/// exports `SSL_get_peer_certificate` and needs the real `libssl.so.3` (so every other symbol
/// civetweb looks up resolves there), and a `libcrypto.so` that needs `libcrypto.so.3`.
fn build_civetweb_shim(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let source = dir.join("shim.c");
    std::fs::write(
        &source,
        "typedef struct ssl_st SSL;\ntypedef struct x509_st X509;\n\
         extern X509 *SSL_get1_peer_certificate(const SSL *s);\n\
         X509 *SSL_get_peer_certificate(const SSL *s) { return SSL_get1_peer_certificate(s); }\n",
    )?;
    let empty = dir.join("empty.c");
    std::fs::write(&empty, "int lightbox_crypto_shim;\n")?;
    let cc = |src: &Path, out: &str, lib: &str| -> anyhow::Result<()> {
        crate::run_ok(
            Command::new("cc")
                .args(["-shared", "-fPIC", "-o"])
                .arg(dir.join(out))
                .arg(src)
                .args(["-Wl,--no-as-needed", &format!("-l:{lib}")]),
        )
        .context("building the civetweb TLS shim for Orthanc (needs cc and OpenSSL 3)")?;
        Ok(())
    };
    cc(&source, "libssl.so", "libssl.so.3")?;
    cc(&empty, "libcrypto.so", "libcrypto.so.3")
}
